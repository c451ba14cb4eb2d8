// Package vcard provides virtual contactless cards for simulation: card
// profiles (DESIGN §3.7) and the cards they describe, which answer
// C-APDUs the way real cards do.
//
// A profile is a small JSON object of one of three kinds:
//
//   - generated EMV ("kind":"emv"): a UnionPay-style qUICS card built from a
//     card number, PAN sequence number, expiry and AID;
//   - scripted (no kind, or "kind":"scripted"): a card that replays a
//     transcript of C-APDU/R-APDU pairs taken from a real card;
//   - plain UID tag ("kind":"uid"): an NTAG/MIFARE-style tag known only by
//     its UID. A transcript with an empty list of APDUs is one too.
//
// sak is one byte, in hex ("20") or as a JSON number (32).
//
// Card numbers in profiles are simulation data and must be synthetic.
package vcard

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode"
)

// Kinds of profile, as found in Profile.Kind after ParseProfile.
const (
	KindEMV      = "emv"
	KindUID      = "uid"
	KindScripted = "scripted"
)

// UIDRandom as a profile's uid asks for a fresh random UID (08 xx xx xx) on
// every presentation, as many bank cards do.
const UIDRandom = "random"

// Limits on profile contents.
const (
	maxNameLen   = 64
	maxExchanges = 256
	maxCommand   = 261 // 4-byte header, Lc, 255 data bytes, Le
	maxResponse  = 258 // 256 data bytes and SW1 SW2
	defaultAID   = "A000000333010101"
)

// Profile describes a virtual card. Build one with ParseProfile or
// Builtin; a Profile built by hand is not valid until it went through
// ParseProfile.
type Profile struct {
	// Name names the profile (what `station tap --card` takes).
	Name string `json:"name"`
	// Kind is "emv", "uid" or "scripted". ParseProfile fills in "scripted"
	// for a transcript profile that gives no kind.
	Kind string `json:"kind,omitempty"`

	// PAN is the card number of a generated EMV card: 12 to 19 digits,
	// Luhn-valid, synthetic.
	PAN string `json:"pan,omitempty"`
	// PSN is the PAN sequence number of a generated EMV card, two digits;
	// default "00".
	PSN string `json:"psn,omitempty"`
	// Expiry is the expiry date of a generated EMV card as YYMM.
	Expiry string `json:"expiry,omitempty"`
	// AID is the application of a generated EMV card, hex; default
	// A000000333010101 (UnionPay debit).
	AID string `json:"aid,omitempty"`

	// UID is the card's UID as hex (4, 7 or 10 bytes) or "random". Default
	// "random" for generated EMV cards; required for the other kinds.
	UID string `json:"uid,omitempty"`
	// SAK is the SEL_RES byte as hex: default "00" for UID tags and "20"
	// (ISO/IEC 14443-4) for scripted cards. Generated EMV cards always use
	// 20 and take no sak. In a profile's JSON it may also be a number
	// (32 for 20); ParseProfile turns it into hex.
	SAK string `json:"sak,omitempty"`
	// ATS is the answer to select of a scripted card, or of a UID tag with
	// ISO/IEC 14443-4 (sak bit 0x20), hex, starting with its length byte
	// TL. Default 05 78 80 70 02.
	ATS string `json:"ats,omitempty"`
	// APDUs is the transcript of a scripted card.
	APDUs []Exchange `json:"apdus,omitempty"`

	uid       []byte // nil when random
	sak       byte
	ats       []byte
	aid       []byte
	exchanges []exchange
}

// Exchange is one command and its answer in a scripted card's transcript.
type Exchange struct {
	// C is the C-APDU in hex. A trailing "*" makes it a prefix: any command
	// that starts with these bytes matches. Case does not matter.
	C string `json:"c"`
	// R is the R-APDU in hex, including SW1 SW2.
	R string `json:"r"`
}

type exchange struct {
	c      []byte
	prefix bool
	r      []byte
}

var defaultATS = []byte{0x05, 0x78, 0x80, 0x70, 0x02}

// ParseProfile decodes and checks a profile. It is strict: unknown fields,
// fields that do not belong to the profile's kind, bad hex, a card number
// that fails the Luhn check and trailing data are all errors.
func ParseProfile(b []byte) (*Profile, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	// As written, sak may be a number: it shadows Profile.SAK.
	var doc struct {
		Profile
		SAK json.RawMessage `json:"sak,omitempty"`
	}
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("vcard: profile: %w", err)
	}
	if _, err := dec.Token(); err == nil {
		return nil, errors.New("vcard: profile: data after the JSON object")
	}
	p := doc.Profile
	var err error
	if p.SAK, err = sakText(doc.SAK); err != nil {
		return nil, fmt.Errorf("vcard: profile: %w", err)
	}
	if err := p.check(); err != nil {
		if p.Name != "" && validName(p.Name) {
			return nil, fmt.Errorf("vcard: profile %q: %w", p.Name, err)
		}
		return nil, fmt.Errorf("vcard: profile: %w", err)
	}
	return &p, nil
}

var errSAK = errors.New(`sak must be one byte: hex like "20", or a number like 32`)

// sakText returns the sak of a profile as hex: it is written as a JSON string
// of hex or as a number from 0 to 255.
func sakText(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var n int
	if err := json.Unmarshal(raw, &n); err != nil || n < 0 || n > 0xFF {
		return "", errSAK
	}
	return fmt.Sprintf("%02X", n), nil
}

func validName(s string) bool {
	if s == "" || len(s) > maxNameLen {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// check validates p and fills in its defaults and decoded fields.
func (p *Profile) check() error {
	if !validName(p.Name) {
		return fmt.Errorf("name must be 1 to %d printable characters", maxNameLen)
	}
	if p.Kind == "" && p.APDUs != nil {
		p.Kind = KindScripted
	}
	if p.Kind == KindScripted && len(p.APDUs) == 0 {
		// A transcript without APDUs: a tag known by its UID.
		p.Kind, p.APDUs = KindUID, nil
	}
	switch p.Kind {
	case KindEMV:
		return p.checkEMV()
	case KindUID:
		return p.checkUID()
	case KindScripted:
		return p.checkScripted()
	case "":
		return errors.New(`kind missing: "emv", "uid", or a scripted profile with apdus`)
	default:
		return fmt.Errorf("unknown kind %q", p.Kind)
	}
}

// unused reports the first of the named fields that is set.
func unused(kind string, fields map[string]bool) error {
	for _, name := range []string{"pan", "psn", "expiry", "aid", "sak", "ats", "apdus"} {
		if fields[name] {
			return fmt.Errorf("field %q is not used by a %s profile", name, kind)
		}
	}
	return nil
}

func (p *Profile) checkEMV() error {
	if err := unused("emv", map[string]bool{"sak": p.SAK != "", "ats": p.ATS != "", "apdus": p.APDUs != nil}); err != nil {
		return err
	}
	if len(p.PAN) < 12 || len(p.PAN) > 19 || !allDigits(p.PAN) {
		return errors.New("pan must be 12 to 19 digits")
	}
	if !luhnValid(p.PAN) {
		return errors.New("pan fails the Luhn check")
	}
	if p.PSN == "" {
		p.PSN = "00"
	}
	if len(p.PSN) != 2 || !allDigits(p.PSN) {
		return errors.New("psn must be two digits")
	}
	if !validYYMM(p.Expiry) {
		return errors.New("expiry must be YYMM")
	}
	if p.AID == "" {
		p.AID = defaultAID
	}
	aid, err := hex.DecodeString(p.AID)
	if err != nil || len(aid) < 5 || len(aid) > 16 {
		return errors.New("aid must be 5 to 16 bytes of hex")
	}
	p.AID = strings.ToUpper(p.AID)
	p.aid = aid
	if p.UID == "" {
		p.UID = UIDRandom
	}
	if err := p.checkUIDField(); err != nil {
		return err
	}
	p.sak = 0x20
	p.ats = defaultATS
	return nil
}

func (p *Profile) checkUID() error {
	if err := unused("uid", map[string]bool{"pan": p.PAN != "", "psn": p.PSN != "", "expiry": p.Expiry != "",
		"aid": p.AID != "", "apdus": p.APDUs != nil}); err != nil {
		return err
	}
	if p.UID == "" {
		return errors.New("uid missing")
	}
	if err := p.checkUIDField(); err != nil {
		return err
	}
	if p.SAK == "" {
		p.SAK = "00"
	}
	if err := p.checkSAK(); err != nil {
		return err
	}
	if p.sak&0x20 == 0 {
		if p.ATS != "" {
			return errors.New(`field "ats" is not used by a uid profile without ISO/IEC 14443-4 (sak bit 0x20)`)
		}
		return nil
	}
	return p.checkATS()
}

// checkATS decodes the ATS, or takes the default.
func (p *Profile) checkATS() error {
	p.ats = defaultATS
	if p.ATS != "" {
		ats, err := hex.DecodeString(p.ATS)
		if err != nil || len(ats) < 1 || int(ats[0]) != len(ats) {
			return errors.New("ats must be hex starting with its own length (TL)")
		}
		p.ATS = strings.ToUpper(p.ATS)
		p.ats = ats
	}
	return nil
}

func (p *Profile) checkScripted() error {
	if err := unused("scripted", map[string]bool{"pan": p.PAN != "", "psn": p.PSN != "", "expiry": p.Expiry != "",
		"aid": p.AID != ""}); err != nil {
		return err
	}
	if p.UID == "" {
		return errors.New("uid missing")
	}
	if err := p.checkUIDField(); err != nil {
		return err
	}
	if p.SAK == "" {
		p.SAK = "20"
	}
	if err := p.checkSAK(); err != nil {
		return err
	}
	if err := p.checkATS(); err != nil {
		return err
	}
	if len(p.APDUs) == 0 || len(p.APDUs) > maxExchanges {
		return fmt.Errorf("apdus must hold 1 to %d exchanges", maxExchanges)
	}
	p.exchanges = make([]exchange, 0, len(p.APDUs))
	for i, x := range p.APDUs {
		var e exchange
		c := x.C
		if e.prefix = strings.HasSuffix(c, "*"); e.prefix {
			c = c[:len(c)-1]
		}
		var err error
		e.c, err = hex.DecodeString(c)
		if err != nil || len(e.c) > maxCommand || (!e.prefix && len(e.c) < 4) || len(e.c) == 0 {
			return fmt.Errorf("apdus[%d].c must be a C-APDU in hex (at least 4 bytes), or a prefix ending in *", i)
		}
		e.r, err = hex.DecodeString(x.R)
		if err != nil || len(e.r) < 2 || len(e.r) > maxResponse {
			return fmt.Errorf("apdus[%d].r must be an R-APDU in hex with its status word (2 to %d bytes)", i, maxResponse)
		}
		p.exchanges = append(p.exchanges, e)
	}
	return nil
}

func (p *Profile) checkUIDField() error {
	if p.UID == UIDRandom {
		p.uid = nil
		return nil
	}
	uid, err := hex.DecodeString(p.UID)
	if err != nil || (len(uid) != 4 && len(uid) != 7 && len(uid) != 10) {
		return errors.New(`uid must be "random" or 4, 7 or 10 bytes of hex`)
	}
	if uid[0] == 0x88 {
		return errors.New("uid must not start with the cascade tag 88")
	}
	p.UID = strings.ToUpper(p.UID)
	p.uid = uid
	return nil
}

func (p *Profile) checkSAK() error {
	sak, err := hex.DecodeString(p.SAK)
	if err != nil || len(sak) != 1 {
		return errSAK
	}
	p.SAK = strings.ToUpper(p.SAK)
	p.sak = sak[0]
	return nil
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

func validYYMM(s string) bool {
	if len(s) != 4 || !allDigits(s) {
		return false
	}
	m := (s[2]-'0')*10 + s[3] - '0'
	return m >= 1 && m <= 12
}

// luhnValid reports whether the digit string s has a right check digit.
func luhnValid(s string) bool {
	return allDigits(s) && luhnSum(s, false)%10 == 0
}

// luhnCheckDigit returns the check digit to append to the digit string s.
func luhnCheckDigit(s string) byte {
	return byte('0' + (10-luhnSum(s, true)%10)%10)
}

// luhnSum is the Luhn sum of s; double says whether the last digit of s
// is doubled (true when s lacks its check digit).
func luhnSum(s string, double bool) int {
	sum := 0
	for i := len(s) - 1; i >= 0; i-- {
		d := int(s[i] - '0')
		if double {
			if d *= 2; d > 9 {
				d -= 9
			}
		}
		sum += d
		double = !double
	}
	return sum
}
