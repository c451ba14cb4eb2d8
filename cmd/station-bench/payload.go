package main

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"

	"station.dev/agent/agent/contract"
)

// payloadEpoch is the timestamp of the first synthetic record.
var payloadEpoch = time.Date(2026, 1, 5, 8, 0, 0, 0, time.UTC)

// cardRecord returns the events payload the benchmark stores (for the agent to drain) and
// publishes (bare paho) for seq: a card.tap record shaped exactly as the agent writes one, about
// 360 bytes. Everything in it is derived from source and seq, so both sides send the same bytes.
// The card is synthetic: a keyed-token look-alike and a masked number, never a card number.
func cardRecord(source string, seq uint64) []byte {
	var in [8]byte
	binary.BigEndian.PutUint64(in[:], seq)
	h := sha256.Sum256(append([]byte(source+"/"), in[:]...))
	boot := sha256.Sum256([]byte(source))
	r := contract.Record{
		ID:          hex.EncodeToString(h[:16]),
		Seq:         seq,
		Type:        contract.TypeCardTap,
		TS:          payloadEpoch.Add(time.Duration(seq) * time.Second).Format(time.RFC3339Nano),
		ClockSynced: true,
		BootID:      hex.EncodeToString(boot[:16]),
		UptimeMS:    int64(seq) * 1000,
		Card: &contract.Card{
			Kind:   contract.CardEMV,
			Token:  hex.EncodeToString(h[:]),
			Masked: "622848******1234", // synthetic
			Scheme: "unionpay",
			AID:    "A000000333010101",
		},
	}
	b, err := json.Marshal(r)
	if err != nil {
		panic(err) // a fixed struct of strings and numbers always marshals
	}
	return b
}

// percentile returns the p-th percentile (0 < p ≤ 100) of xs by the nearest-rank method, or
// NaN for no samples. xs is sorted in place.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	slices.Sort(xs)
	rank := int(math.Ceil(p / 100 * float64(len(xs))))
	return xs[min(max(rank, 1), len(xs))-1]
}

// median returns the median of xs (the mean of the two middle values for an even count), or NaN.
// xs is sorted in place.
func median(xs []float64) float64 {
	n := len(xs)
	if n == 0 {
		return math.NaN()
	}
	slices.Sort(xs)
	if n%2 == 1 {
		return xs[n/2]
	}
	return (xs[n/2-1] + xs[n/2]) / 2
}

// mib converts bytes to MiB.
func mib(b int64) float64 { return float64(b) / (1 << 20) }

// figure is one line of the report: `name value unit`.
type figure struct {
	Name  string
	Value float64
	Unit  string
}

// String formats the figure with a precision that fits its size.
func (f figure) String() string {
	return f.Name + " " + formatValue(f.Value) + " " + f.Unit
}

// formatValue prints v with three significant digits, at most two decimals for values of 1 or
// more, and no exponent.
func formatValue(v float64) string {
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0):
		return "NaN"
	case v == math.Trunc(v) && math.Abs(v) < 1e15:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case math.Abs(v) >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case math.Abs(v) >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	case v == 0:
		return "0"
	}
	// Below 1: three significant digits.
	digits := 2 - int(math.Floor(math.Log10(math.Abs(v))))
	return strconv.FormatFloat(v, 'f', digits, 64)
}

// target is a goal from the issue a figure is checked against.
type target struct {
	Name   string
	Limit  float64
	AtMost bool // the figure must be ≤ Limit; otherwise ≥ Limit
}

// targets are the goals ("Proof under faults and load").
var targets = []target{
	{"drain_vs_paho_ratio", 0.8, false},
	{"append_vs_bbolt_ratio", 1.3, true},
	{"rss_idle_mib", 15, true},
	{"rss_backlog_1m_mib", 25, true},
	{"rss_backlog_100k_mib", 25, true},
	{"cpu_idle_percent", 1, true},
	{"disk_bytes_per_card_record", 8 << 10, true},
	{"disk_bytes_per_telemetry_record", 1 << 10, true},
	{"binary_arm64_mib", 15, true},
}

// verdict says whether f meets its target, and the target as text; ok is true and text empty
// when the figure has no target.
func verdict(f figure) (ok bool, text string) {
	for _, t := range targets {
		if t.Name != f.Name {
			continue
		}
		if t.AtMost {
			return f.Value <= t.Limit, fmt.Sprintf("≤ %s", formatValue(t.Limit))
		}
		return f.Value >= t.Limit, fmt.Sprintf("≥ %s", formatValue(t.Limit))
	}
	return true, ""
}
