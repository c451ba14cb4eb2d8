package agent

import (
	"crypto/rand"
	"encoding/hex"
	"time"

	"station.dev/agent/agent/contract"
	"station.dev/agent/drivers/emv"
)

// newID returns a random 128-bit identifier in hex.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux (Go 1.24+ panics rather than return an error)
	return hex.EncodeToString(b[:])
}

// rfc3339 formats wall time the way every payload does: RFC 3339, nanoseconds, UTC.
func rfc3339(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// cardOf is the record's view of a card identity read by the reader.
func cardOf(id *emv.Identity) *contract.Card {
	if id == nil {
		return nil
	}
	return &contract.Card{Kind: id.Kind, Token: id.Token, Masked: id.Masked, Scheme: id.Scheme, AID: id.AID, RandomUID: id.RandomUID}
}
