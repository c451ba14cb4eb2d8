package contract

import "strings"

// Records submitted by the kiosk's own software (docs/kiosk.md): POST PathRecords with one
// SubmitRequest, or POST PathRecordsBatch with up to MaxBatchRecords of them as JSON lines.
const (
	// PathRecordsBatch takes SubmitRequests as JSON lines, committed in one transaction, all or
	// nothing, and answers one SubmitResult line per record.
	PathRecordsBatch = "/api/v0/records:batch"
	// HeaderIdempotencyKey carries the client's key of a single submission (or SubmitRequest.Key).
	HeaderIdempotencyKey = "Idempotency-Key"
	// HeaderRetryAfter says, in whole seconds, when a refused submission may be tried again.
	HeaderRetryAfter = "Retry-After"
)

// Limits of submissions.
const (
	// MaxKeyLen is the longest idempotency key: 1 to 128 printable ASCII bytes.
	MaxKeyLen = 128
	// MaxSubmitDepth is the deepest nesting of data: data itself is level 1.
	MaxSubmitDepth = 16
	// MaxBatchRecords is the most records of one batch.
	MaxBatchRecords = 100
	// KeyRetentionDays is how long a key is remembered at least (and in any case until its
	// record has been acknowledged by the broker).
	KeyRetentionDays = 7
)

// ReservedTypeWords are the first words of the station's own record types. A submitted type
// starting with one of them (card.tap, door.close, station.boot …) is refused: nobody else
// writes the station's own records.
var ReservedTypeWords = []string{"card", "door", "env", "station", "store", "config", "clock", "update", "cmd"}

// ReservedType reports whether t starts with a reserved word (its first dotted word, or the
// word followed by anything, like "cards.x" or "station_boot.x", so that look-alikes are
// refused too).
func ReservedType(t string) bool {
	for _, w := range ReservedTypeWords {
		if strings.HasPrefix(t, w) {
			return true
		}
	}
	return false
}

// ValidKey reports whether k may be an idempotency key: 1 to MaxKeyLen printable ASCII bytes
// (0x20 to 0x7e).
func ValidKey(k string) bool {
	if len(k) == 0 || len(k) > MaxKeyLen {
		return false
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x20 || k[i] > 0x7e {
			return false
		}
	}
	return true
}

// Source says which local program submitted a record, from the kernel's credentials of the
// socket's peer (SO_PEERCRED) at connection time.
type Source struct {
	UID  int    `json:"uid"`
	PID  int    `json:"pid,omitempty"`
	Unit string `json:"unit,omitempty"` // the systemd unit of the process, if any ("kiosk.service")
}

// SubmitResult answers one submitted record.
type SubmitResult struct {
	OK     bool   `json:"ok"`
	Key    string `json:"key,omitempty"`
	ID     string `json:"id,omitempty"`
	Seq    uint64 `json:"seq,omitempty"`
	Type   string `json:"type,omitempty"`
	Repeat bool   `json:"repeat,omitempty"` // the key was seen before: this is the record it made then
	// Error, Code and Field as in APIError, for a record of a refused batch.
	Error string `json:"error,omitempty"`
	Code  string `json:"code,omitempty"`
	Field string `json:"field,omitempty"`
}

// Codes of APIError and SubmitResult, beside CodeBadRequest (400: malformed JSON, unknown
// field, bad type syntax).
const (
	CodeKeyRequired  = "key_required"  // 400: no idempotency key, or a malformed one
	CodeTooLarge     = "too_large"     // 413: a record over MaxSubmitBytes, a batch over MaxBatchRecords
	CodeKeyConflict  = "key_conflict"  // 409: the key was used for a different record
	CodeReservedType = "reserved_type" // 422: the type belongs to the station
	CodeCardNumber   = "card_number"   // 422: a value reads as a card number; Field names it
	CodeInvalid      = "invalid"       // 422: nesting too deep, data not an object
	CodeRateLimited  = "rate_limited"  // 429: over the client's rate; Retry-After
	CodeStoreBusy    = "unavailable"   // 503: the store is recovering or closing; Retry-After
	CodeStoreFull    = "store_full"    // 507: the store is full; Retry-After
	CodeNotRecorded  = "not_recorded"  // 500, or a batch's other records when one was refused
)

// FeedEvent is one line of the tap feed (GET PathEvents with after= or type=): the fields of
// a record a kiosk screen may see. A card carries only its token, masked number and scheme.
type FeedEvent struct {
	Seq    uint64    `json:"seq,omitempty"`
	ID     string    `json:"id,omitempty"`
	Type   string    `json:"type,omitempty"`
	TS     string    `json:"ts,omitempty"`
	Card   *FeedCard `json:"card,omitempty"`
	Missed *Missed   `json:"missed,omitempty"`
}

// FeedCard is a card as the feed shows it.
type FeedCard struct {
	Token  string `json:"token"`
	Masked string `json:"masked,omitempty"`
	Scheme string `json:"scheme,omitempty"`
}

// Missed is a feed line saying that records From to To (seqs, inclusive) are no longer available
// (they left the station once the broker had them), so some of them may have matched. A
// restarted sequence (the store was rebuilt) is a Missed line with Restarted set: ask again with
// after=0.
type Missed struct {
	From      uint64 `json:"from"`
	To        uint64 `json:"to"`
	Restarted bool   `json:"restarted,omitempty"`
	Detail    string `json:"detail"`
}
