package emv

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// Identity is what leaves the driver layer for a card: a keyed token in
// place of the card number or UID, and what may be shown to people.
type Identity struct {
	// Kind is "emv" for a payment card read by Read, "uid" for a tag known
	// only by its UID.
	Kind string `json:"kind"`
	// Token is the lower-case hex HMAC-SHA-256 of the card, keyed with the
	// fleet card key; see EMVIdentity and UIDIdentity for the exact input.
	Token string `json:"token"`
	// Masked is the card number with all but the first 6 and last 4 digits
	// replaced by '*' ("622848******1234"); empty for UID tags.
	Masked string `json:"masked,omitempty"`
	// Scheme is the card's payment scheme (see Card.Scheme); empty for UID
	// tags.
	Scheme string `json:"scheme,omitempty"`
	// AID is the application read, upper-case hex; empty for UID tags.
	AID string `json:"aid,omitempty"`
	// RandomUID is set when the UID is one the card makes up afresh for
	// every presentation (a 4-byte NFCID1 starting with 0x08): its token
	// identifies nothing.
	RandomUID bool `json:"random_uid,omitempty"`
}

// EMVIdentity tokenises a card read by Read. The token is
//
//	lower-hex( HMAC-SHA-256( key, "emv:" + PAN + ":" + PSN ) )
//
// with PAN as its decimal digits and PSN as two decimal digits ("00" when
// the card has no PAN sequence number), all ASCII; for example
// "emv:6228480000001234:01" (a synthetic number). c must not be nil.
func EMVIdentity(key []byte, c *Card) Identity {
	return Identity{
		Kind:   "emv",
		Token:  token(key, "emv:"+c.PAN+":"+c.PSN),
		Masked: Mask(c.PAN),
		Scheme: c.Scheme,
		AID:    strings.ToUpper(c.AID),
	}
}

// UIDIdentity tokenises a tag by its UID. The token is
//
//	lower-hex( HMAC-SHA-256( key, "uid:" + UPPER-HEX(uid) ) )
//
// all ASCII; for example "uid:04A1B2C3D4E5F6" for a 7-byte UID.
// RandomUID is set for a 4-byte UID whose first byte is 0x08.
func UIDIdentity(key []byte, uid []byte) Identity {
	return Identity{
		Kind:      "uid",
		Token:     token(key, "uid:"+strings.ToUpper(hex.EncodeToString(uid))),
		RandomUID: IsRandomUID(uid),
	}
}

// IsRandomUID reports whether uid is an ISO/IEC 14443-3 random ID: a
// single-size (4-byte) NFCID1 whose first byte is 0x08. Such a UID changes
// with every presentation and identifies nothing.
func IsRandomUID(uid []byte) bool {
	return len(uid) == 4 && uid[0] == 0x08
}

// Mask keeps the first 6 and last 4 digits of a card number and replaces
// the others with '*'. A number of 10 digits or fewer keeps only its last
// 4 digits, and one of 4 digits or fewer is masked whole.
func Mask(pan string) string {
	switch {
	case len(pan) > 10:
		return pan[:6] + strings.Repeat("*", len(pan)-10) + pan[len(pan)-4:]
	case len(pan) > 4:
		return strings.Repeat("*", len(pan)-4) + pan[len(pan)-4:]
	default:
		return strings.Repeat("*", len(pan))
	}
}

func token(key []byte, msg string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return hex.EncodeToString(m.Sum(nil))
}
