package stationproc

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// Record is a record as it arrives on a station's events topic: the members the tests read.
type Record struct {
	ID          string         `json:"id"`
	Seq         uint64         `json:"seq"`
	Type        string         `json:"type"`
	TS          string         `json:"ts"`
	ClockSynced bool           `json:"clock_synced"`
	BootID      string         `json:"boot_id"`
	Data        map[string]any `json:"data"`
	Error       *struct {
		Code   string `json:"code"`
		Detail string `json:"detail"`
	} `json:"error"`
	Card *struct {
		Kind   string `json:"kind"`
		Token  string `json:"token"`
		Masked string `json:"masked"`
	} `json:"card"`

	Station string    `json:"-"` // from the topic
	At      time.Time `json:"-"` // when it was received
}

// ParseRecord decodes a message that arrived at at on topic {prefix}/{station}/events.
func ParseRecord(topic string, payload []byte, at time.Time) (Record, error) {
	var r Record
	if err := json.Unmarshal(payload, &r); err != nil {
		return Record{}, err
	}
	if parts := strings.Split(topic, "/"); len(parts) >= 2 {
		r.Station = parts[len(parts)-2]
	}
	r.At = at
	return r, nil
}

// CheckSeq checks the records of one station as they arrived, duplicates included: seq covers
// 1..max without gaps, a seq seen twice always carries the same id, and an id always the same
// seq (duplicates only by redelivery). It returns max.
func CheckSeq(t testing.TB, recs []Record) uint64 {
	t.Helper()
	bySeq := map[uint64]string{}
	byID := map[string]uint64{}
	var maxSeq uint64
	for _, r := range recs {
		if id, ok := bySeq[r.Seq]; ok && id != r.ID {
			t.Fatalf("station %s: seq %d carried two ids: %s and %s", r.Station, r.Seq, id, r.ID)
		}
		if s, ok := byID[r.ID]; ok && s != r.Seq {
			t.Fatalf("station %s: id %s came with seq %d and %d", r.Station, r.ID, s, r.Seq)
		}
		bySeq[r.Seq], byID[r.ID] = r.ID, r.Seq
		maxSeq = max(maxSeq, r.Seq)
	}
	var missing []uint64
	for s := uint64(1); s <= maxSeq; s++ {
		if _, ok := bySeq[s]; !ok {
			missing = append(missing, s)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("seq gap in the events stream (max %d): %d missing, first %v", maxSeq, len(missing), missing[:min(10, len(missing))])
	}
	return maxSeq
}
