package emv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"
)

// Errors returned by Read. A read error wraps exactly one of them, or the
// transport's own error (a card that left the field, a chip failure, a
// cancelled context), which is passed through unchanged for errors.Is.
// No error text ever contains a card number or track data.
var (
	// ErrUnsupported means the card offers nothing this package can read:
	// no PPSE, no application that answers, or processing refused.
	ErrUnsupported = errors.New("emv: unsupported card")
	// ErrMalformed means the card answered with data that breaks the rules:
	// bad BER-TLV, a bad AFL, no card number, a card number that fails the
	// Luhn check.
	ErrMalformed = errors.New("emv: malformed card data")
)

// Transceiver sends a C-APDU to the card and returns the R-APDU, including
// the status word SW1 SW2.
type Transceiver interface {
	Transmit(ctx context.Context, apdu []byte) ([]byte, error)
}

// Card is what Read learns about a card. It holds the card number and must
// not leave the driver layer: turn it into an Identity with EMVIdentity.
// Never log it or put it in an error.
type Card struct {
	// PAN is the primary account number, decimal digits, Luhn-valid.
	PAN string
	// PSN is the PAN sequence number (tag 5F34) as two digits, "00" when the
	// card has none.
	PSN string
	// Expiry is the expiry date as YYMM, "" when the card gives none.
	Expiry string
	// AID is the selected application identifier in upper-case hex.
	AID string
	// Scheme is the payment scheme named by the AID's registered
	// application provider identifier: "unionpay", "visa", "mastercard" or
	// "unknown".
	Scheme string
}

// ReadOpts tunes Read. The zero value (or nil) is valid and uses the
// defaults given with each field.
type ReadOpts struct {
	// Now gives the transaction date and time sent to the card (tags 9A and
	// 9F21). Default time.Now. The card only uses it for its own risk
	// checks; a wrong clock does not change the identity read.
	Now func() time.Time
	// Rand supplies the unpredictable number (tag 9F37). Default
	// crypto/rand.Reader.
	Rand io.Reader
	// TTQ is the terminal transaction qualifiers (tag 9F66). Default
	// 36 00 40 00: qVSDC/qUICS, contact chip, online PIN and signature
	// supported, consumer device CVM supported. The zero value selects the
	// default.
	TTQ [4]byte
	// Country is the terminal country code (tag 9F1A) and Currency the
	// transaction currency code (tag 5F2A), as packed BCD. Default 01 56
	// (China, renminbi) for both. The zero value selects the default.
	Country, Currency [2]byte
	// FallbackAIDs lists applications (hex) to try by direct SELECT when the
	// card has no usable PPSE. Default none.
	FallbackAIDs []string
}

// Limits that keep a hostile or broken card from making Read loop or grow
// without bound.
const (
	maxCandidates    = 8    // applications tried per card
	maxRecords       = 48   // READ RECORD commands per application
	maxResponseBytes = 4096 // one R-APDU after GET RESPONSE chaining
	maxChained       = 16   // GET RESPONSE commands per C-APDU
	maxPDOLData      = 252  // fits 83 81 LL … in a short APDU
)

var (
	ppseName   = []byte("2PAY.SYS.DDF01")
	defaultTTQ = [4]byte{0x36, 0x00, 0x40, 0x00}
	defaultCC  = [2]byte{0x01, 0x56}
)

// Read runs the EMV contactless identity read: SELECT PPSE, choose the
// application by priority, SELECT it, GET PROCESSING OPTIONS with the PDOL
// data, and READ RECORD over the AFL when the card number was not in the
// GPO response. It sends no command that changes the card or asks for a
// cryptogram beyond what GPO returns, and needs no PIN.
//
// If an application fails (refused, malformed), the next one by priority is
// tried; transport errors end the read at once and are returned as they are.
func Read(ctx context.Context, t Transceiver, opts *ReadOpts) (*Card, error) {
	r := reader{t: t}
	if opts != nil {
		r.opts = *opts
	}
	if r.opts.Now == nil {
		r.opts.Now = time.Now
	}
	if r.opts.Rand == nil {
		r.opts.Rand = rand.Reader
	}
	if r.opts.TTQ == [4]byte{} {
		r.opts.TTQ = defaultTTQ
	}
	if r.opts.Country == [2]byte{} {
		r.opts.Country = defaultCC
	}
	if r.opts.Currency == [2]byte{} {
		r.opts.Currency = defaultCC
	}
	return r.read(ctx)
}

type reader struct {
	t    Transceiver
	opts ReadOpts
}

// candidate is one application from the PPSE directory.
type candidate struct {
	aid      []byte
	priority int // 1 highest … 15 lowest, 16 when absent
}

func (r *reader) read(ctx context.Context) (*Card, error) {
	cands, err := r.selectPPSE(ctx)
	if err != nil && !errors.Is(err, ErrUnsupported) {
		return nil, err
	}
	if len(cands) == 0 {
		for _, s := range r.opts.FallbackAIDs {
			aid, herr := hex.DecodeString(s)
			if herr != nil || len(aid) < 5 || len(aid) > 16 {
				return nil, fmt.Errorf("emv: fallback AID %q is not 5 to 16 bytes of hex", s)
			}
			cands = append(cands, candidate{aid: aid, priority: 16})
		}
	}
	if len(cands) == 0 {
		if err == nil {
			err = fmt.Errorf("%w: PPSE lists no application", ErrUnsupported)
		}
		return nil, err
	}
	var firstErr, firstMalformed error
	for i, c := range cands {
		if i == maxCandidates {
			break
		}
		card, err := r.readApp(ctx, c.aid)
		if err == nil {
			return card, nil
		}
		if !errors.Is(err, ErrUnsupported) && !errors.Is(err, ErrMalformed) {
			return nil, err
		}
		if firstErr == nil {
			firstErr = err
		}
		if firstMalformed == nil && errors.Is(err, ErrMalformed) {
			firstMalformed = err
		}
	}
	if firstMalformed != nil {
		return nil, firstMalformed
	}
	return nil, firstErr
}

// selectPPSE selects the proximity payment system environment and returns
// the applications it lists, best first.
func (r *reader) selectPPSE(ctx context.Context) ([]candidate, error) {
	resp, err := r.command(ctx, "select PPSE", selectAPDU(ppseName))
	if err != nil {
		return nil, err
	}
	tlvs, err := parseResp("select PPSE", resp)
	if errors.Is(err, ErrMalformed) {
		// A PPSE that cannot be parsed is no PPSE this package can use:
		// the card is not an EMV card rather than a broken one.
		return nil, fmt.Errorf("%w: select PPSE: unreadable directory", ErrUnsupported)
	}
	if err != nil {
		return nil, err
	}
	var cands []candidate
	for _, e := range findAll(nil, tlvs, 0x61) {
		aid, ok := Find(e.Children, 0x4F)
		if !ok || len(aid.Value) < 5 || len(aid.Value) > 16 {
			continue
		}
		if slices.ContainsFunc(cands, func(c candidate) bool { return bytes.Equal(c.aid, aid.Value) }) {
			continue
		}
		c := candidate{aid: bytes.Clone(aid.Value), priority: 16}
		if p, ok := Find(e.Children, 0x87); ok && len(p.Value) == 1 && p.Value[0]&0x0F != 0 {
			c.priority = int(p.Value[0] & 0x0F)
		}
		cands = append(cands, c)
	}
	sort.SliceStable(cands, func(i, j int) bool { return cands[i].priority < cands[j].priority })
	return cands, nil
}

// appData collects what an application reveals on the way.
type appData struct {
	pan, track2, psn, expiry             []byte
	hasPAN, hasTrack2, hasPSN, hasExpiry bool
}

func (d *appData) collect(tlvs []TLV) {
	if t, ok := Find(tlvs, 0x5A); ok && !d.hasPAN {
		d.pan, d.hasPAN = t.Value, true
	}
	if t, ok := Find(tlvs, 0x57); ok && !d.hasTrack2 {
		d.track2, d.hasTrack2 = t.Value, true
	}
	if t, ok := Find(tlvs, 0x5F34); ok && !d.hasPSN {
		d.psn, d.hasPSN = t.Value, true
	}
	if t, ok := Find(tlvs, 0x5F24); ok && !d.hasExpiry {
		d.expiry, d.hasExpiry = t.Value, true
	}
}

// readApp selects one application and reads its identity data.
func (r *reader) readApp(ctx context.Context, aid []byte) (*Card, error) {
	resp, err := r.command(ctx, "select AID", selectAPDU(aid))
	if err != nil {
		return nil, err
	}
	fci, err := parseResp("select AID", resp)
	if err != nil {
		return nil, err
	}
	var pdol []byte
	if t, ok := Find(fci, 0x9F38); ok {
		pdol = t.Value
	}
	gpo, err := r.gpoAPDU(pdol)
	if err != nil {
		return nil, err
	}
	resp, err = r.command(ctx, "GPO", gpo)
	if err != nil {
		return nil, err
	}
	gpoTLV, err := parseResp("GPO", resp)
	if err != nil {
		return nil, err
	}
	var afl []byte
	var d appData
	if len(gpoTLV) == 1 && gpoTLV[0].Tag == 0x80 {
		// Format 1: AIP (2 bytes) then the AFL.
		v := gpoTLV[0].Value
		if len(v) < 2 {
			return nil, fmt.Errorf("%w: GPO format 1 response too short", ErrMalformed)
		}
		afl = v[2:]
	} else if len(gpoTLV) == 1 && gpoTLV[0].Tag == 0x77 {
		inner := gpoTLV[0].Children
		if t, ok := Find(inner, 0x94); ok {
			afl = t.Value
		}
		d.collect(inner)
	} else {
		return nil, fmt.Errorf("%w: GPO response is neither format 1 nor format 2", ErrMalformed)
	}
	if !d.hasPAN && !d.hasTrack2 {
		if err := r.readRecords(ctx, afl, &d); err != nil {
			return nil, err
		}
	}
	card, err := d.card()
	if err != nil {
		return nil, err
	}
	card.AID = strings.ToUpper(hex.EncodeToString(aid))
	card.Scheme = Scheme(card.AID)
	return card, nil
}

// readRecords reads every record the AFL names, collecting identity data.
func (r *reader) readRecords(ctx context.Context, afl []byte, d *appData) error {
	if len(afl) == 0 || len(afl)%4 != 0 {
		return fmt.Errorf("%w: AFL of %d bytes is not a list of 4-byte entries", ErrMalformed, len(afl))
	}
	n := 0
	for i := 0; i < len(afl); i += 4 {
		sfi, first, last := afl[i]>>3, afl[i+1], afl[i+2]
		if afl[i]&0x07 != 0 || sfi == 0 || sfi > 30 || first == 0 || last < first {
			return fmt.Errorf("%w: bad AFL entry % X", ErrMalformed, afl[i:i+3])
		}
		for rec := int(first); rec <= int(last); rec++ {
			if n++; n > maxRecords {
				return fmt.Errorf("%w: AFL names more than %d records", ErrMalformed, maxRecords)
			}
			resp, err := r.command(ctx, "read record", []byte{0x00, 0xB2, byte(rec), sfi<<3 | 4, 0x00})
			if err != nil {
				return err
			}
			tlvs, err := parseResp("read record", resp)
			if err != nil {
				return err
			}
			if len(tlvs) != 1 || tlvs[0].Tag != 0x70 {
				return fmt.Errorf("%w: record %d of SFI %d is not a 70 template", ErrMalformed, rec, sfi)
			}
			d.collect(tlvs[0].Children)
		}
	}
	return nil
}

// card turns the collected data into a Card, checking it on the way.
func (d *appData) card() (*Card, error) {
	c := &Card{PSN: "00"}
	var trackPAN, trackExp string
	if d.hasTrack2 {
		var ok bool
		trackPAN, trackExp, ok = parseTrack2(d.track2)
		if !ok {
			return nil, fmt.Errorf("%w: bad track 2 equivalent data", ErrMalformed)
		}
	}
	switch {
	case d.hasPAN:
		pan, ok := digits(d.pan)
		if !ok {
			return nil, fmt.Errorf("%w: card number (5A) is not decimal", ErrMalformed)
		}
		c.PAN = pan
	case d.hasTrack2:
		c.PAN = trackPAN
	default:
		return nil, fmt.Errorf("%w: no card number", ErrMalformed)
	}
	if len(c.PAN) < 12 || len(c.PAN) > 19 {
		return nil, fmt.Errorf("%w: card number of %d digits", ErrMalformed, len(c.PAN))
	}
	if !LuhnValid(c.PAN) {
		return nil, fmt.Errorf("%w: card number fails the Luhn check", ErrMalformed)
	}
	if d.hasPSN {
		if len(d.psn) != 1 || d.psn[0]>>4 > 9 || d.psn[0]&0x0F > 9 {
			return nil, fmt.Errorf("%w: bad PAN sequence number", ErrMalformed)
		}
		c.PSN = fmt.Sprintf("%02X", d.psn[0])
	}
	switch {
	case d.hasExpiry:
		exp, ok := digits(d.expiry)
		if !ok || len(exp) != 6 || !validYYMM(exp[:4]) {
			return nil, fmt.Errorf("%w: bad expiry date (5F24)", ErrMalformed)
		}
		c.Expiry = exp[:4]
	case d.hasTrack2:
		c.Expiry = trackExp
	}
	return c, nil
}

// parseTrack2 splits Track 2 equivalent data (PAN, separator D, YYMM,
// service code, discretionary data, F padding) into the PAN and expiry.
func parseTrack2(b []byte) (pan, expiry string, ok bool) {
	s := strings.ToUpper(hex.EncodeToString(b))
	s = strings.TrimRight(s, "F")
	sep := strings.IndexByte(s, 'D')
	if sep <= 0 {
		return "", "", false
	}
	pan, rest := s[:sep], s[sep+1:]
	if !allDigits(pan) || len(rest) < 4 || !allDigits(rest) || !validYYMM(rest[:4]) {
		return "", "", false
	}
	return pan, rest[:4], true
}

// digits decodes a compressed numeric (cn) value: BCD digits, trailing F
// padding.
func digits(b []byte) (string, bool) {
	s := strings.TrimRight(strings.ToUpper(hex.EncodeToString(b)), "F")
	if s == "" || !allDigits(s) {
		return "", false
	}
	return s, true
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func validYYMM(s string) bool {
	if len(s) != 4 || !allDigits(s) {
		return false
	}
	m := (s[2]-'0')*10 + s[3] - '0'
	return m >= 1 && m <= 12
}

// LuhnValid reports whether s is a non-empty string of decimal digits whose
// Luhn (mod 10) check digit is right.
func LuhnValid(s string) bool {
	if s == "" {
		return false
	}
	sum := 0
	double := false
	for i := len(s) - 1; i >= 0; i-- {
		c := s[i]
		if c < '0' || c > '9' {
			return false
		}
		d := int(c - '0')
		if double {
			d *= 2
			if d > 9 {
				d -= 9
			}
		}
		sum += d
		double = !double
	}
	return sum%10 == 0
}

// Scheme names the payment scheme of an AID given in hex (either case) by
// its registered application provider identifier: "unionpay", "visa",
// "mastercard", or "unknown".
func Scheme(aid string) string {
	switch rid := strings.ToUpper(aid); {
	case strings.HasPrefix(rid, "A000000333"):
		return "unionpay"
	case strings.HasPrefix(rid, "A000000003"):
		return "visa"
	case strings.HasPrefix(rid, "A000000004"):
		return "mastercard"
	default:
		return "unknown"
	}
}

func selectAPDU(name []byte) []byte {
	apdu := make([]byte, 0, 6+len(name))
	apdu = append(apdu, 0x00, 0xA4, 0x04, 0x00, byte(len(name)))
	apdu = append(apdu, name...)
	return append(apdu, 0x00)
}

// command sends one C-APDU, follows 61xx (GET RESPONSE) and 6Cxx (resend
// with the right Le), and returns the data with its status word.
func (r *reader) command(ctx context.Context, step string, apdu []byte) ([]byte, error) {
	var data []byte
	cur := apdu
	for i := 0; ; i++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		out, err := r.t.Transmit(ctx, cur)
		if err != nil {
			return nil, fmt.Errorf("emv: %s: %w", step, err)
		}
		if len(out) < 2 {
			return nil, fmt.Errorf("%w: %s: response of %d bytes has no status word", ErrMalformed, step, len(out))
		}
		sw1, sw2 := out[len(out)-2], out[len(out)-1]
		if len(data)+len(out)-2 > maxResponseBytes {
			return nil, fmt.Errorf("%w: %s: response longer than %d bytes", ErrMalformed, step, maxResponseBytes)
		}
		data = append(data, out[:len(out)-2]...)
		var next []byte
		switch {
		case sw1 == 0x61:
			next = []byte{0x00, 0xC0, 0x00, 0x00, sw2}
		case sw1 == 0x6C && len(cur) >= 5 && len(data) == 0:
			next = append(bytes.Clone(cur[:len(cur)-1]), sw2)
		default:
			return append(data, sw1, sw2), nil
		}
		if i == maxChained {
			return nil, fmt.Errorf("%w: %s: more than %d chained responses", ErrMalformed, step, maxChained)
		}
		cur = next
	}
}

// parseResp checks the status word and parses the data.
func parseResp(step string, resp []byte) ([]TLV, error) {
	sw := uint16(resp[len(resp)-2])<<8 | uint16(resp[len(resp)-1])
	if sw != 0x9000 {
		return nil, fmt.Errorf("%w: %s: status %04X", ErrUnsupported, step, sw)
	}
	tlvs, err := parse(resp[:len(resp)-2], 0)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrMalformed, step, err)
	}
	if len(tlvs) == 0 {
		return nil, fmt.Errorf("%w: %s: empty response", ErrMalformed, step)
	}
	return tlvs, nil
}

// gpoAPDU builds GET PROCESSING OPTIONS with the data the PDOL asks for.
func (r *reader) gpoAPDU(pdol []byte) ([]byte, error) {
	var data []byte
	for i := 0; i < len(pdol); {
		tag, n, err := readTag(pdol[i:])
		if err != nil {
			return nil, fmt.Errorf("%w: PDOL: %w", ErrMalformed, err)
		}
		i += n
		l, n, err := readLength(pdol[i:])
		if err != nil {
			return nil, fmt.Errorf("%w: PDOL: %w", ErrMalformed, err)
		}
		i += n
		if len(data)+l > maxPDOLData {
			return nil, fmt.Errorf("%w: PDOL asks for more than %d bytes", ErrMalformed, maxPDOLData)
		}
		v, err := r.terminalValue(tag)
		if err != nil {
			return nil, err
		}
		data = append(data, fit(tag, v, l)...)
	}
	apdu := []byte{0x80, 0xA8, 0x00, 0x00}
	var tl []byte
	if len(data) < 0x80 {
		tl = []byte{0x83, byte(len(data))}
	} else {
		tl = []byte{0x83, 0x81, byte(len(data))}
	}
	apdu = append(apdu, byte(len(tl)+len(data)))
	apdu = append(apdu, tl...)
	apdu = append(apdu, data...)
	return append(apdu, 0x00), nil
}

// terminalValue returns the terminal's value for a PDOL tag, or nil for
// tags the station has no value for (they are sent as zeros).
func (r *reader) terminalValue(tag uint32) ([]byte, error) {
	switch tag {
	case 0x9F66: // terminal transaction qualifiers
		return r.opts.TTQ[:], nil
	case 0x9F02, 0x9F03: // amount authorised, amount other
		return make([]byte, 6), nil
	case 0x9F1A: // terminal country code
		return r.opts.Country[:], nil
	case 0x5F2A: // transaction currency code
		return r.opts.Currency[:], nil
	case 0x9A: // transaction date YYMMDD
		t := r.opts.Now()
		return []byte{bcd(t.Year() % 100), bcd(int(t.Month())), bcd(t.Day())}, nil
	case 0x9F21: // transaction time HHMMSS
		t := r.opts.Now()
		return []byte{bcd(t.Hour()), bcd(t.Minute()), bcd(t.Second())}, nil
	case 0x9C: // transaction type: goods and services
		return []byte{0x00}, nil
	case 0x9F37: // unpredictable number
		un := make([]byte, 4)
		if _, err := io.ReadFull(r.opts.Rand, un); err != nil {
			return nil, fmt.Errorf("emv: unpredictable number: %w", err)
		}
		return un, nil
	case 0x95: // terminal verification results
		return make([]byte, 5), nil
	case 0x9F35: // terminal type 22: merchant, attended, offline with online capability
		return []byte{0x22}, nil
	}
	return nil, nil
}

// numericTags are PDOL tags of format n (BCD, right-aligned): they are
// padded and truncated on the left; the others on the right.
var numericTags = map[uint32]bool{0x9F02: true, 0x9F03: true, 0x9F1A: true, 0x5F2A: true, 0x9A: true, 0x9F21: true, 0x9C: true}

// fit returns v resized to l bytes as EMV Book 3 §5.4 asks: numeric values
// keep their right end, others their left end; missing bytes are zeros.
func fit(tag uint32, v []byte, l int) []byte {
	out := make([]byte, l)
	if numericTags[tag] {
		if len(v) > l {
			v = v[len(v)-l:]
		}
		copy(out[l-len(v):], v)
		return out
	}
	copy(out, v)
	return out
}

func bcd(n int) byte {
	return byte((n/10)%10<<4 | n%10)
}
