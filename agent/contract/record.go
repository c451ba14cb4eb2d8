package contract

import "strings"

// Record is one entry of the events stream (DESIGN §3.4). ID is assigned once, before the record
// is stored, so every redelivery carries the same id; Seq counts the station's records 1, 2, 3 …
// with no gap and no reuse.
type Record struct {
	ID          string `json:"id"`
	Seq         uint64 `json:"seq"`
	Type        string `json:"type"`
	TS          string `json:"ts"`
	ClockSynced bool   `json:"clock_synced"`
	BootID      string `json:"boot_id"`
	UptimeMS    int64  `json:"uptime_ms"`
	// Sim marks a record of a simulated station (--sim): its card tokens are made with the
	// development key and identify no real card.
	Sim    bool           `json:"sim,omitempty"`
	Card   *Card          `json:"card,omitempty"`
	Error  *RecordError   `json:"error,omitempty"`
	Data   map[string]any `json:"data,omitempty"`
	Source *Source        `json:"source,omitempty"` // submitted records: the program that sent it
	Key    string         `json:"key,omitempty"`    // submitted records: the client's idempotency key
}

// Card is a card's identity as records carry it: never the card number, track data or raw UID.
type Card struct {
	// Kind is CardEMV or CardUID.
	Kind string `json:"kind"`
	// Token is the lower-case hex HMAC-SHA-256 of the card, keyed with the fleet's card key.
	Token string `json:"token"`
	// Masked is the card number with all but the first 6 and last 4 digits replaced by '*'.
	Masked string `json:"masked,omitempty"`
	// Scheme is the payment scheme ("unionpay", …).
	Scheme string `json:"scheme,omitempty"`
	// AID is the application read, upper-case hex.
	AID string `json:"aid,omitempty"`
	// RandomUID marks a UID the card makes up afresh for every presentation: its token
	// identifies nothing.
	RandomUID bool `json:"random_uid,omitempty"`
}

// Card kinds.
const (
	CardEMV = "emv" // a payment card, identified by its card number and sequence number
	CardUID = "uid" // a tag known only by its UID
)

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
	TypeEnvAlarm       = "env.alarm"
	TypeEnvOK          = "env.ok"
)

// Codes of RecordError for alarms.
const (
	ErrStoreFull   = "store_full"   // store.full: the store is at its cap
	ErrDiskFull    = "disk_full"    // store.full: the disk holding the store is full
	ErrStoreBroken = "store_broken" // store.recovered: the store file was broken and replaced
)

// ValidSubmittedType reports whether t may be the type of a record submitted by other station
// software through the local API: dotted lower-case words, at least two (kiosk.receipt), not
// starting with a word the station's own types use (ReservedType).
func ValidSubmittedType(t string) bool { return submittedTypeSyntax(t) && !ReservedType(t) }

// submittedTypeSyntax: [a-z][a-z0-9_]{0,31}(\.[a-z0-9_]{1,32}){1,3}.
func submittedTypeSyntax(t string) bool {
	words := strings.Split(t, ".")
	if len(words) < 2 || len(words) > 4 || len(words[0]) > 32 || words[0] == "" || words[0][0] < 'a' || words[0][0] > 'z' {
		return false
	}
	for _, w := range words {
		if len(w) < 1 || len(w) > 32 {
			return false
		}
		for i := 0; i < len(w); i++ {
			if c := w[i]; !isLowerOrDigit(c) && c != '_' {
				return false
			}
		}
	}
	return true
}
