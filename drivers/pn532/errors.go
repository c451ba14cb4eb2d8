package pn532

import (
	"errors"
	"strings"
)

// Errors of the host link. Functions wrap them with the operation, so test
// with errors.Is.
var (
	// ErrTimeout: the chip did not acknowledge or answer a command in time.
	ErrTimeout = errors.New("pn532: timeout waiting for the chip")
	// ErrNACK: the chip asked for the command again and kept doing so.
	ErrNACK = errors.New("pn532: the chip did not accept the command (NACK)")
	// ErrChecksum: a frame from the chip had a wrong length or data
	// checksum, also after asking for it again.
	ErrChecksum = errors.New("pn532: bad frame checksum")
	// ErrFrame: the chip sent bytes that are no valid frame, or a frame
	// that does not answer the command.
	ErrFrame = errors.New("pn532: malformed frame")
	// ErrSyntax: the chip answered with the application error frame: it
	// does not know the command or its parameters are wrong.
	ErrSyntax = errors.New("pn532: the chip rejected the command (syntax error frame)")
	// ErrDown: the chip is down (re-initialisation failed) and the next
	// attempt to recover it is not due yet.
	ErrDown = errors.New("pn532: the chip is down")
	// ErrHalted: Halt interrupted the command.
	ErrHalted = errors.New("pn532: halted")
	// ErrCardRemoved matches (with errors.Is) every *StatusError whose
	// code means that the card stopped answering: in practice, that it
	// left the field.
	ErrCardRemoved = errors.New("pn532: card removed")
)

// StatusError is a non-zero status byte the chip returned for a command that
// talks to a card (InDataExchange, InRelease, …): the chip works, the card
// exchange failed.
//
// Codes that mean the card is gone (CardRemoved reports true, and
// errors.Is(err, ErrCardRemoved) holds): 0x01 the card did not answer in time,
// 0x02 CRC error, 0x03 parity error, 0x05 framing error, 0x0A RF field of the
// counterpart not switched on in time, 0x0B RF protocol error, 0x13 ISO 14443-4
// block format error (often a half-received frame as the card leaves), 0x29
// the target was released, 0x2B the previously activated card disappeared.
// These are the normal outcome of a card pulled away too early.
//
// Other useful codes: 0x14 MIFARE authentication error, 0x27 command not
// acceptable in the current context (e.g. no card activated), 0x10 invalid
// parameter, 0x0E internal buffer overflow.
type StatusError struct {
	Code byte // low 6 bits of the status byte
}

// Error implements error.
func (e *StatusError) Error() string {
	s := "pn532: card exchange failed: status 0x" + hex2(e.Code)
	if d := statusText(e.Code); d != "" {
		s += " (" + d + ")"
	}
	return s
}

// CardRemoved reports whether the code means that the card stopped answering.
func (e *StatusError) CardRemoved() bool {
	switch e.Code {
	case 0x01, 0x02, 0x03, 0x05, 0x0A, 0x0B, 0x13, 0x29, 0x2B:
		return true
	}
	return false
}

// Is makes errors.Is(err, ErrCardRemoved) true for card-removed codes.
func (e *StatusError) Is(target error) bool {
	return target == ErrCardRemoved && e.CardRemoved()
}

func statusText(c byte) string {
	switch c {
	case 0x01:
		return "timeout: the card did not answer"
	case 0x02:
		return "CRC error"
	case 0x03:
		return "parity error"
	case 0x04:
		return "wrong bit count during anticollision"
	case 0x05:
		return "framing error"
	case 0x06:
		return "bit collision during anticollision"
	case 0x07:
		return "communication buffer too small"
	case 0x09:
		return "RF buffer overflow"
	case 0x0A:
		return "RF field not switched on in time"
	case 0x0B:
		return "RF protocol error"
	case 0x0D:
		return "temperature error"
	case 0x0E:
		return "internal buffer overflow"
	case 0x10:
		return "invalid parameter"
	case 0x12:
		return "command not supported by the target"
	case 0x13:
		return "data format error"
	case 0x14:
		return "authentication error"
	case 0x23:
		return "wrong UID check byte"
	case 0x25:
		return "invalid device state"
	case 0x26:
		return "operation not allowed in this configuration"
	case 0x27:
		return "command not acceptable in this context"
	case 0x29:
		return "target released"
	case 0x2A:
		return "card ID does not match"
	case 0x2B:
		return "card disappeared"
	case 0x2C:
		return "NFCID3 mismatch"
	case 0x2D:
		return "over-current"
	case 0x2E:
		return "NAD missing"
	}
	return ""
}

// opError prefixes an error with the operation that failed without
// repeating the package name.
type opError struct {
	op  string
	err error
}

func (e *opError) Error() string {
	return "pn532: " + e.op + ": " + strings.TrimPrefix(e.err.Error(), "pn532: ")
}

func (e *opError) Unwrap() error { return e.err }

func wrapOp(op string, err error) error {
	if err == nil {
		return nil
	}
	return &opError{op: op, err: err}
}

func hex2(b byte) string {
	const digits = "0123456789ABCDEF"
	return string([]byte{digits[b>>4], digits[b&0x0F]})
}
