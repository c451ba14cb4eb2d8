package contract

import (
	"encoding/json"
	"errors"
	"time"
)

// Command is a plain fleet command (DESIGN §3.5), published on {p}/{id}/cmd or {p}/_fleet/cmd.
type Command struct {
	ID        string          `json:"id"`
	Name      string          `json:"name"`
	Args      json.RawMessage `json:"args,omitempty"`
	IssuedAt  string          `json:"issued_at,omitempty"`  // RFC 3339
	ExpiresAt string          `json:"expires_at,omitempty"` // RFC 3339
	Target    string          `json:"target"`               // a station id or FleetTarget
}

// Signed is the signed envelope of a command: Signed holds the plain command's exact bytes and
// Sig their Ed25519 signature, both base64url without padding; Kid optionally names the key.
type Signed struct {
	Signed string `json:"signed"`
	Sig    string `json:"sig"`
	Kid    string `json:"kid,omitempty"`
}

// Response is a station's answer to a command, published on {p}/{id}/resp.
type Response struct {
	ID     string          `json:"id"`
	OK     bool            `json:"ok"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  *Error          `json:"error,omitempty"`
	TS     string          `json:"ts"` // when the station handled the command, RFC 3339 UTC
}

// Error is the error of a refused or failed command. Its Message never holds card data.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error implements the error interface.
func (e *Error) Error() string { return "command: " + e.Code + ": " + e.Message }

// Error codes of a Response.
const (
	CodeBadRequest     = "bad_request"     // malformed: not JSON, too large, missing fields, wrong types
	CodeUnknownCommand = "unknown_command" // the station has no such command
	CodeExpired        = "expired"         // expires_at has passed
	CodeReplayed       = "replayed"        // the id was already used for another command
	CodeUnauthorized   = "unauthorized"    // unsigned with keys configured, or a bad signature
	CodeWrongTarget    = "wrong_target"    // addressed to another station
	CodeFailed         = "failed"          // the command ran and failed
)

// MaxCommandBytes is the largest command payload (the whole envelope) a station accepts.
const MaxCommandBytes = 64 << 10

// MaxCommandID is the longest command id, in bytes (an id is printable ASCII).
const MaxCommandID = 64

// Expired reports whether the command has expired at now: true from the instant expires_at names.
// A command without expires_at never expires. The error reports an unreadable expires_at.
func (c *Command) Expired(now time.Time) (bool, error) {
	if c.ExpiresAt == "" {
		return false, nil
	}
	t, err := time.Parse(time.RFC3339Nano, c.ExpiresAt)
	if err != nil {
		return false, errors.New("command: expires_at is not an RFC 3339 time")
	}
	return !now.Before(t), nil
}

// For reports whether the command is addressed to the station with the given id, by its id or to
// every station (FleetTarget).
func (c *Command) For(stationID string) bool {
	return c.Target == FleetTarget || (c.Target != "" && c.Target == stationID)
}
