package vcard

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrNotISODEP is returned by Card.Transmit for a card that does not speak
// ISO/IEC 14443-4 (its SEL_RES lacks bit 0x20), such as a plain NTAG.
var ErrNotISODEP = errors.New("vcard: card does not support ISO/IEC 14443-4")

// Card is one virtual card in the field. Its methods are safe for
// concurrent use.
type Card struct {
	name    string
	uid     []byte
	sensRes [2]byte
	selRes  byte
	ats     []byte

	mu       sync.Mutex
	emv      *emvApp    // generated EMV card, or nil
	exchange []exchange // scripted card, or nil
}

// Card returns the n-th distinct card of the profile; n = 0 is the card as
// written, and a negative n counts as 0.
//
// A generated EMV card's n-th card keeps the 6-digit BIN of the PAN, adds n
// to the digits between the BIN and the check digit (wrapping around), and
// recomputes the check digit. A fixed UID keeps its first byte and adds n
// to the rest, read as one big-endian number. A random UID is drawn afresh
// (08 and three random bytes) on every call, whatever the kind and n. A
// scripted card is the same card for every n.
func (p *Profile) Card(n int) *Card {
	if n < 0 {
		n = 0
	}
	c := &Card{name: p.Name, selRes: p.sak}
	if p.sak&0x20 != 0 {
		c.ats = bytes.Clone(p.ats)
	}
	switch {
	case p.uid == nil:
		c.uid = randomUID()
	case p.Kind == KindScripted:
		c.uid = bytes.Clone(p.uid)
	default:
		c.uid = varyUID(p.uid, uint64(n))
	}
	switch len(c.uid) {
	case 4:
		c.sensRes = [2]byte{0x00, 0x04}
	case 7:
		c.sensRes = [2]byte{0x00, 0x44}
	default:
		c.sensRes = [2]byte{0x00, 0x84}
	}
	switch p.Kind {
	case KindEMV:
		c.emv = newEMVApp(varyPAN(p.PAN, uint64(n)), p.PSN, p.Expiry, p.aid)
	case KindScripted:
		c.exchange = p.exchanges
	}
	return c
}

func randomUID() []byte {
	uid := make([]byte, 4)
	_, _ = rand.Read(uid) // crypto/rand.Read never fails (Go 1.24+)
	uid[0] = 0x08
	return uid
}

// varyUID adds n to all but the first byte of uid, big-endian, wrapping.
func varyUID(uid []byte, n uint64) []byte {
	out := bytes.Clone(uid)
	for i := len(out) - 1; i >= 1 && n > 0; i-- {
		s := uint64(out[i]) + n&0xFF
		out[i] = byte(s)
		n = n>>8 + s>>8
	}
	return out
}

// varyPAN adds n to the account digits of pan (between the 6-digit BIN and
// the check digit), wrapping, and recomputes the check digit.
func varyPAN(pan string, n uint64) string {
	if n == 0 {
		return pan
	}
	body := pan[6 : len(pan)-1]
	mod := uint64(1)
	for range len(body) {
		mod *= 10
	}
	v, _ := strconv.ParseUint(body, 10, 64) // at most 12 digits: fits
	v = (v + n%mod) % mod
	s := pan[:6] + fmt.Sprintf("%0*d", len(body), v)
	return s + string(luhnCheckDigit(s))
}

// Name returns the name of the profile the card came from.
func (c *Card) Name() string { return c.name }

// UID returns the card's UID (NFCID1).
func (c *Card) UID() []byte { return bytes.Clone(c.uid) }

// SensRes returns the card's SENS_RES (ATQA), as the PN532 reports it.
func (c *Card) SensRes() [2]byte { return c.sensRes }

// SelRes returns the card's SEL_RES (SAK); bit 0x20 means ISO/IEC 14443-4.
func (c *Card) SelRes() byte { return c.selRes }

// ATS returns the card's answer to select, starting with its length byte,
// or nil for a card without ISO/IEC 14443-4.
func (c *Card) ATS() []byte { return bytes.Clone(c.ats) }

// Transmit answers one C-APDU with an R-APDU (data and SW1 SW2). It returns
// ErrNotISODEP for a card without ISO/IEC 14443-4; card-level failures are
// status words, never errors.
func (c *Card) Transmit(apdu []byte) ([]byte, error) {
	if c.selRes&0x20 == 0 {
		return nil, ErrNotISODEP
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.emv != nil:
		return c.emv.transmit(apdu), nil
	case c.exchange != nil:
		return scripted(c.exchange, apdu), nil
	}
	return sw(0x6D00), nil
}

func scripted(xs []exchange, apdu []byte) []byte {
	for _, x := range xs {
		if x.prefix && bytes.HasPrefix(apdu, x.c) || !x.prefix && bytes.Equal(apdu, x.c) {
			return bytes.Clone(x.r)
		}
	}
	return sw(0x6D00)
}

func sw(w uint16) []byte { return []byte{byte(w >> 8), byte(w)} }

// emvApp is a generated UnionPay qUICS-style card.
type emvApp struct {
	aid      []byte
	fciPPSE  []byte
	fciApp   []byte
	records  map[uint16][]byte // SFI<<8 | record -> record template
	afl      []byte
	selected int // 0 nothing, 1 the PPSE, 2 the application
	atc      uint16
}

const (
	selNone = iota
	selPPSE
	selApp
)

var (
	ppseName = []byte("2PAY.SYS.DDF01")
	// upPDOL is the PDOL of UnionPay qUICS cards: TTQ, amount, other
	// amount, country, TVR, currency, date, type, unpredictable number.
	upPDOL    = mustHex("9F66049F02069F03069F1A0295055F2A029A039C019F3704")
	upPDOLLen = 4 + 6 + 6 + 2 + 5 + 2 + 3 + 1 + 4
)

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func newEMVApp(pan, psn, expiry string, aid []byte) *emvApp {
	label := []byte(appLabel(aid))
	a := &emvApp{aid: aid}
	a.fciPPSE = tlv(0x6F,
		tlv(0x84, ppseName),
		tlv(0xA5, tlv(0xBF0C, tlv(0x61,
			tlv(0x4F, aid),
			tlv(0x50, label),
			tlv(0x87, []byte{0x01}),
		))),
	)
	a.fciApp = tlv(0x6F,
		tlv(0x84, aid),
		tlv(0xA5,
			tlv(0x50, label),
			tlv(0x87, []byte{0x01}),
			tlv(0x9F38, upPDOL),
			tlv(0x5F2D, []byte("zhen")),
			tlv(0xBF0C, tlv(0x9F4D, []byte{0x0B, 0x0A})),
		),
	)
	yy, _ := strconv.Atoi(expiry[:2])
	mm, _ := strconv.Atoi(expiry[2:])
	last := time.Date(2000+yy, time.Month(mm)+1, 0, 0, 0, 0, 0, time.UTC).Day()
	track2 := pan + "D" + expiry + "220" + "1000000000000"
	if len(track2)%2 == 1 {
		track2 += "F"
	}
	cnPAN := pan
	if len(cnPAN)%2 == 1 {
		cnPAN += "F"
	}
	a.afl = []byte{1 << 3, 1, 1, 0, 2 << 3, 1, 1, 0}
	a.records = map[uint16][]byte{
		1<<8 | 1: tlv(0x70,
			tlv(0x57, mustHex(track2)),
			tlv(0x9F1F, []byte("0000000000")),
		),
		2<<8 | 1: tlv(0x70,
			tlv(0x5A, mustHex(cnPAN)),
			tlv(0x5F34, mustHex(psn)),
			tlv(0x5F24, mustHex(fmt.Sprintf("%s%02d", expiry, last))),
			tlv(0x5F25, mustHex(fmt.Sprintf("%02d%s01", (yy+90)%100, expiry[2:]))),
			tlv(0x5F28, []byte{0x01, 0x56}),
			tlv(0x9F07, []byte{0xFF, 0x00}),
			tlv(0x8E, mustHex("000000000000000042031E031F00")),
		),
	}
	return a
}

// appLabel returns the application label (tag 50) for an AID.
func appLabel(aid []byte) string {
	switch strings.ToUpper(hex.EncodeToString(aid)) {
	case "A000000333010101":
		return "UnionPay Debit"
	case "A000000333010102":
		return "UnionPay Credit"
	case "A000000333010103":
		return "UnionPay QuasiCredit"
	}
	if bytes.HasPrefix(aid, []byte{0xA0, 0x00, 0x00, 0x03, 0x33}) {
		return "UnionPay"
	}
	return "Payment"
}

// transmit answers one C-APDU the way a UnionPay qUICS card does.
func (a *emvApp) transmit(apdu []byte) []byte {
	if len(apdu) < 4 {
		return sw(0x6700)
	}
	cla, ins, p1, p2 := apdu[0], apdu[1], apdu[2], apdu[3]
	if cla != 0x00 && cla != 0x80 {
		return sw(0x6E00)
	}
	switch {
	case cla == 0x00 && ins == 0xA4:
		if p1 != 0x04 || p2 != 0x00 {
			return sw(0x6A86)
		}
		name, ok := commandData(apdu)
		if !ok {
			return sw(0x6700)
		}
		switch {
		case bytes.Equal(name, ppseName):
			a.selected = selPPSE
			return ok9000(a.fciPPSE)
		case len(name) >= 5 && bytes.HasPrefix(a.aid, name):
			a.selected = selApp
			return ok9000(a.fciApp)
		}
		a.selected = selNone
		return sw(0x6A82)
	case cla == 0x80 && ins == 0xA8:
		if p1 != 0x00 || p2 != 0x00 {
			return sw(0x6A86)
		}
		if a.selected != selApp {
			return sw(0x6985)
		}
		data, ok := commandData(apdu)
		if !ok || len(data) != 2+upPDOLLen || data[0] != 0x83 || int(data[1]) != upPDOLLen {
			return sw(0x6700)
		}
		a.atc++
		ac := make([]byte, 8)
		_, _ = rand.Read(ac)
		return ok9000(tlv(0x77,
			tlv(0x82, []byte{0x7C, 0x00}),
			tlv(0x94, a.afl),
			tlv(0x9F36, []byte{byte(a.atc >> 8), byte(a.atc)}),
			tlv(0x9F26, ac),
			tlv(0x9F27, []byte{0x80}),
			tlv(0x9F10, mustHex("07010103A00000010A010000000000")),
		))
	case cla == 0x00 && ins == 0xB2:
		if p2&0x07 != 0x04 {
			return sw(0x6A86)
		}
		if a.selected != selApp {
			return sw(0x6985)
		}
		rec, ok := a.records[uint16(p2>>3)<<8|uint16(p1)]
		if !ok {
			return sw(0x6A83)
		}
		return ok9000(rec)
	case cla == 0x00 && ins == 0xC0:
		return sw(0x6985) // nothing pending: every answer fits at once
	}
	return sw(0x6D00)
}

// commandData returns the data field of a short case 3 or 4 C-APDU.
func commandData(apdu []byte) ([]byte, bool) {
	if len(apdu) < 5 {
		return nil, false
	}
	lc := int(apdu[4])
	if lc == 0 || (len(apdu) != 5+lc && len(apdu) != 6+lc) {
		return nil, false
	}
	return apdu[5 : 5+lc], true
}

func ok9000(data []byte) []byte {
	return append(bytes.Clone(data), 0x90, 0x00)
}

// tlv encodes one BER-TLV object; the tag is given with all its bytes.
func tlv(tag uint32, parts ...[]byte) []byte {
	var v []byte
	for _, p := range parts {
		v = append(v, p...)
	}
	var out []byte
	for shift := 24; shift > 0; shift -= 8 {
		if b := byte(tag >> shift); b != 0 || len(out) > 0 {
			out = append(out, b)
		}
	}
	out = append(out, byte(tag))
	switch l := len(v); {
	case l < 0x80:
		out = append(out, byte(l))
	case l <= 0xFF:
		out = append(out, 0x81, byte(l))
	default:
		out = append(out, 0x82, byte(l>>8), byte(l))
	}
	return append(out, v...)
}
