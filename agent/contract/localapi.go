package contract

import "encoding/json"

// The local API (DESIGN §3.6): HTTP over the agent's unix socket. Errors are APIError bodies with
// a fitting HTTP status.
const (
	PathStatus   = "/api/v0/status"   // GET: Status
	PathQueue    = "/api/v0/queue"    // GET: QueueStatus
	PathEvents   = "/api/v0/events"   // GET ?n=N[&follow=1]: recent Records; ?after=SEQ&type=T: FeedEvents (JSON lines)
	PathRecords  = "/api/v0/records"  // POST SubmitRequest: SubmitResult (kiosk.go)
	PathTap      = "/api/v0/tap"      // POST TapRequest: TapResult per presentation, JSON lines (--sim)
	PathSelfTest = "/api/v0/selftest" // GET: SelfTest
	PathSimDoor  = "/api/v0/sim/door" // POST SimDoorRequest (--sim)
	PathSimEnv   = "/api/v0/sim/env"  // POST SimEnvRequest (--sim)
)

// APIError is the body of every local API error.
type APIError struct {
	Error string `json:"error"`
	Code  string `json:"code,omitempty"`  // for submissions: Code* (kiosk.go)
	Field string `json:"field,omitempty"` // the path of the offending value in a submitted record
}

// SubmitRequest is a typed record from other station software (ValidSubmittedType, and not
// ReservedType). Key is its idempotency key, unless the Idempotency-Key header carries it.
type SubmitRequest struct {
	Key  string         `json:"key,omitempty"`
	Type string         `json:"type"`
	Data map[string]any `json:"data,omitempty"`
}

// MaxSubmitBytes is the largest SubmitRequest body.
const MaxSubmitBytes = 16 << 10

// TapRequest presents virtual cards to the emulated reader (simulation only).
type TapRequest struct {
	Card    string          `json:"card,omitempty"`    // a built-in profile name
	Profile json.RawMessage `json:"profile,omitempty"` // or a profile (DESIGN §3.7)
	Count   int             `json:"count,omitempty"`   // presentations; default 1
	Same    bool            `json:"same,omitempty"`    // present the same card each time
}

// MaxTapCount bounds TapRequest.Count.
const MaxTapCount = 100000

// TapResult is the outcome of one presentation or submission.
type TapResult struct {
	OK    bool   `json:"ok"`
	ID    string `json:"id,omitempty"`
	Seq   uint64 `json:"seq,omitempty"`
	Type  string `json:"type,omitempty"`
	Error string `json:"error,omitempty"`
}

// SelfTest is the self-test result: OK is false if any configured component failed.
type SelfTest struct {
	OK     bool    `json:"ok"`
	Checks []Check `json:"checks"`
}

// Check is one line of the self-test.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

// SimDoorRequest sets the emulated door switch.
type SimDoorRequest struct {
	Open bool `json:"open"`
}

// SimEnvRequest sets the emulated cabinet sensor.
type SimEnvRequest struct {
	TempC    float64  `json:"temp_c"`
	Humidity *float64 `json:"humidity,omitempty"`
}
