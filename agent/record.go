package agent

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"regexp"
	"time"

	"station.dev/agent/drivers/emv"
)

// Record is one entry of the events stream (DESIGN §3.4). The id is assigned once, before the
// record is stored, so every redelivery carries the same id; seq is assigned by the store in the
// same transaction that makes the record durable.
type Record struct {
	ID          string         `json:"id"`
	Seq         uint64         `json:"seq"`
	Type        string         `json:"type"`
	TS          string         `json:"ts"`
	ClockSynced bool           `json:"clock_synced"`
	BootID      string         `json:"boot_id"`
	UptimeMS    int64          `json:"uptime_ms"`
	Card        *emv.Identity  `json:"card,omitempty"`
	Error       *RecordError   `json:"error,omitempty"`
	Data        map[string]any `json:"data,omitempty"`
}

// RecordError says why a card read failed (card.error) or what an alarm is about.
type RecordError struct {
	Code   string `json:"code"`
	Detail string `json:"detail,omitempty"`
}

// Record types written by the agent itself.
const (
	TypeCardTap        = "card.tap"
	TypeCardError      = "card.error"
	TypeBoot           = "station.boot"
	TypeConfigChanged  = "config.changed"
	TypeStoreRecovered = "store.recovered"
	TypeStoreFull      = "store.full"
	TypeDoorOpen       = "door.open"
	TypeDoorClose      = "door.close"
	TypeClockJump      = "clock.jump"
)

// submittedTypeRE is what other station software may use as a record type through the local API:
// dotted lower-case words, at least two.
var submittedTypeRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,31}(\.[a-z0-9_]{1,32}){1,3}$`)

// newID returns a random 128-bit identifier in hex.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux (Go 1.24+ panics rather than return an error)
	return hex.EncodeToString(b[:])
}

// rfc3339 formats wall time the way every payload does: RFC 3339, nanoseconds, UTC.
func rfc3339(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

func (r *Record) marshal() ([]byte, error) { return json.Marshal(r) }
