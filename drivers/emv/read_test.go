package emv

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// Synthetic, Luhn-valid card numbers: never real ones.
const (
	testPAN  = "6228480000001237" // synthetic
	testPAN2 = "6250000000000004" // synthetic
)

// fakeCard answers C-APDUs from a table keyed by upper-case hex; unknown
// commands get 6D00. It records what it was sent.
type fakeCard struct {
	resp map[string][]byte
	sent []string
	// failAt, when > 0, makes the failAt-th command fail with failErr.
	failAt  int
	failErr error
}

func (c *fakeCard) Transmit(ctx context.Context, apdu []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cmd := strings.ToUpper(hex.EncodeToString(apdu))
	c.sent = append(c.sent, cmd)
	if c.failAt > 0 && len(c.sent) == c.failAt {
		return nil, c.failErr
	}
	if r, ok := c.resp[cmd]; ok {
		return bytes.Clone(r), nil
	}
	return []byte{0x6D, 0x00}, nil
}

func (c *fakeCard) on(cmd string, resp ...[]byte) {
	var r []byte
	for _, p := range resp {
		r = append(r, p...)
	}
	c.resp[strings.ToUpper(strings.ReplaceAll(cmd, " ", ""))] = r
}

var (
	sw9000     = h("9000")
	selectPPSE = "00A404000E325041592E5359532E444446303100"
	aidDebit   = "A000000333010101"
	aidCredit  = "A000000333010102"
	// The UnionPay qUICS PDOL and the data the reader must send for it with
	// testOpts.
	upPDOL    = h("9F66 04 9F02 06 9F03 06 9F1A 02 95 05 5F2A 02 9A 03 9C 01 9F37 04")
	upGPO     = "80A80000 23 8321 36004000 000000000000 000000000000 0156 0000000000 0156 250307 00 DEADBEEF 00"
	testClock = time.Date(2025, 3, 7, 14, 5, 9, 0, time.UTC)
)

func testOpts() *ReadOpts {
	return &ReadOpts{
		Now:  func() time.Time { return testClock },
		Rand: bytes.NewReader(h("DEADBEEF")),
	}
}

func selectCmd(aid string) string {
	return fmt.Sprintf("00A40400%02X%s00", len(aid)/2, aid)
}

// ppse builds a PPSE FCI listing the given AIDs with their priorities
// (0: no 87 tag).
func ppse(entries ...any) []byte {
	var dir []byte
	for i := 0; i < len(entries); i += 2 {
		e := enc(0x4F, h(entries[i].(string)))
		e = append(e, enc(0x50, []byte("UnionPay"))...)
		if p := entries[i+1].(int); p != 0 {
			e = append(e, enc(0x87, []byte{byte(p)})...)
		}
		dir = append(dir, enc(0x61, e)...)
	}
	return append(enc(0x6F, enc(0x84, []byte("2PAY.SYS.DDF01")), enc(0xA5, enc(0xBF0C, dir))), sw9000...)
}

func appFCI(aid string, pdol []byte) []byte {
	a5 := enc(0x50, []byte("UnionPay Debit"))
	if pdol != nil {
		a5 = append(a5, enc(0x9F38, pdol)...)
	}
	return append(enc(0x6F, enc(0x84, h(aid)), enc(0xA5, a5)), sw9000...)
}

// bcdPAN encodes a PAN as compressed numeric (F padded).
func bcdPAN(pan string) []byte {
	if len(pan)%2 == 1 {
		pan += "F"
	}
	return h(pan)
}

func track2(pan, yymm string) []byte {
	s := pan + "D" + yymm + "2201000000000"
	if len(s)%2 == 1 {
		s += "F"
	}
	return h(s)
}

// unionPayCard is a UnionPay debit card: GPO format 2 with the AFL, track 2
// in SFI 1 record 1, PAN, PSN and expiry in SFI 2 record 1.
func unionPayCard() *fakeCard {
	c := &fakeCard{resp: map[string][]byte{}}
	c.on(selectPPSE, ppse(aidDebit, 1))
	c.on(selectCmd(aidDebit), appFCI(aidDebit, upPDOL))
	c.on(upGPO, enc(0x77, enc(0x82, h("7C00")), enc(0x94, h("08010100 10010100")), enc(0x9F36, h("0001"))), sw9000)
	c.on("00B2010C00", enc(0x70, enc(0x57, track2(testPAN, "3012")), enc(0x5F20, []byte("SYNTHETIC/CARD"))), sw9000)
	c.on("00B2011400", enc(0x70, enc(0x5A, bcdPAN(testPAN)), enc(0x5F34, h("01")), enc(0x5F24, h("301231"))), sw9000)
	return c
}

func TestReadUnionPay(t *testing.T) {
	c := unionPayCard()
	card, err := Read(context.Background(), c, testOpts())
	if err != nil {
		t.Fatal(err)
	}
	want := Card{PAN: testPAN, PSN: "01", Expiry: "3012", AID: aidDebit, Scheme: "unionpay"}
	if *card != want {
		t.Errorf("card = %+v, want %+v", *card, want)
	}
	wantSent := []string{selectPPSE, selectCmd(aidDebit), strings.ReplaceAll(upGPO, " ", ""), "00B2010C00", "00B2011400"}
	if strings.Join(c.sent, ",") != strings.Join(wantSent, ",") {
		t.Errorf("sent\n%s\nwant\n%s", strings.Join(c.sent, "\n"), strings.Join(wantSent, "\n"))
	}
}

func TestReadTrack2InGPO(t *testing.T) {
	c := &fakeCard{resp: map[string][]byte{}}
	c.on(selectPPSE, ppse(aidDebit, 1))
	c.on(selectCmd(aidDebit), appFCI(aidDebit, upPDOL))
	c.on(upGPO, enc(0x77, enc(0x82, h("0000")), enc(0x94, h("08010100")), enc(0x57, track2(testPAN2, "2908")), enc(0x5F34, h("02"))), sw9000)
	card, err := Read(context.Background(), c, testOpts())
	if err != nil {
		t.Fatal(err)
	}
	want := Card{PAN: testPAN2, PSN: "02", Expiry: "2908", AID: aidDebit, Scheme: "unionpay"}
	if *card != want {
		t.Errorf("card = %+v, want %+v", *card, want)
	}
	if len(c.sent) != 3 {
		t.Errorf("sent %d commands, want 3 (no READ RECORD when GPO has the PAN)", len(c.sent))
	}
}

func TestReadPriority(t *testing.T) {
	c := &fakeCard{resp: map[string][]byte{}}
	// Listed first but lower priority; the credit application must win. A
	// third entry without 87 ranks last.
	c.on(selectPPSE, ppse("A0000000031010", 0, aidDebit, 2, aidCredit, 1))
	c.on(selectCmd(aidDebit), appFCI(aidDebit, nil))
	c.on(selectCmd(aidCredit), appFCI(aidCredit, nil))
	gpo := enc(0x77, enc(0x82, h("0000")), enc(0x57, track2(testPAN, "3012")))
	c.on("80A8000002830000", gpo, sw9000)
	card, err := Read(context.Background(), c, testOpts())
	if err != nil {
		t.Fatal(err)
	}
	if card.AID != aidCredit {
		t.Fatalf("AID = %s, want %s", card.AID, aidCredit)
	}

	// When the best application fails, the next is used.
	c.on(selectCmd(aidCredit), h("6A82"))
	c.sent = nil
	card, err = Read(context.Background(), c, testOpts())
	if err != nil {
		t.Fatal(err)
	}
	if card.AID != aidDebit {
		t.Fatalf("AID = %s, want the fallback %s", card.AID, aidDebit)
	}
	if c.sent[1] != selectCmd(aidCredit) || c.sent[2] != selectCmd(aidDebit) {
		t.Errorf("selects in order %v", c.sent)
	}

	// Both UnionPay applications refuse GPO: the Visa one is tried last.
	c.on("80A8000002830000", h("6985"))
	c.on(selectCmd(aidCredit), appFCI(aidCredit, nil))
	c.sent = nil
	_, err = Read(context.Background(), c, testOpts())
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("err = %v, want ErrUnsupported", err)
	}
	if last := c.sent[len(c.sent)-1]; last != selectCmd("A0000000031010") {
		t.Errorf("last command %s, want SELECT of the Visa AID", last)
	}
}

func TestReadFormat1NoPDOL(t *testing.T) {
	c := &fakeCard{resp: map[string][]byte{}}
	c.on(selectPPSE, ppse("A0000000041010", 1))
	c.on(selectCmd("A0000000041010"), appFCI("A0000000041010", nil))
	c.on("80A8000002830000", enc(0x80, h("1980 08010200 10010100")), sw9000)
	c.on("00B2010C00", enc(0x70, enc(0x9F42, h("0156"))), sw9000)
	c.on("00B2020C00", enc(0x70, enc(0x5A, bcdPAN("6212340000000019")) /* synthetic */), sw9000)
	c.on("00B2011400", enc(0x70, enc(0x5F24, h("281130"))), sw9000)
	card, err := Read(context.Background(), c, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Card{PAN: "6212340000000019" /* synthetic */, PSN: "00", Expiry: "2811", AID: "A0000000041010", Scheme: "mastercard"}
	if *card != want {
		t.Errorf("card = %+v, want %+v", *card, want)
	}
}

func TestReadStatusWords(t *testing.T) {
	c := unionPayCard()
	// The PPSE FCI comes in two parts through GET RESPONSE.
	full := ppse(aidDebit, 1)
	body := full[:len(full)-2]
	c.on(selectPPSE, body[:10], h("61"), []byte{byte(len(body) - 10)})
	c.on(fmt.Sprintf("00C00000%02X", len(body)-10), body[10:], sw9000)
	// The first record needs the right Le (6Cxx).
	rec := enc(0x70, enc(0x57, track2(testPAN, "3012")))
	c.on("00B2010C00", h("6C"), []byte{byte(len(rec))})
	c.on(fmt.Sprintf("00B2010C%02X", len(rec)), rec, sw9000)
	card, err := Read(context.Background(), c, testOpts())
	if err != nil {
		t.Fatalf("%v (sent %v)", err, c.sent)
	}
	if card.PAN != testPAN || card.PSN != "01" {
		t.Errorf("card = %+v", card)
	}
}

func TestReadEndlessGetResponse(t *testing.T) {
	c := &fakeCard{resp: map[string][]byte{}}
	c.on(selectPPSE, h("6101"))
	c.on("00C0000001", h("AA 6101"))
	_, err := Read(context.Background(), c, nil)
	if !errors.Is(err, ErrUnsupported) && !errors.Is(err, ErrMalformed) {
		t.Fatalf("err = %v", err)
	}
	if len(c.sent) > maxChained+1 {
		t.Errorf("sent %d commands", len(c.sent))
	}
}

func TestReadFallbackAIDs(t *testing.T) {
	c := unionPayCard()
	c.on(selectPPSE, h("6A82"))
	opts := testOpts()
	opts.FallbackAIDs = []string{aidDebit}
	card, err := Read(context.Background(), c, opts)
	if err != nil {
		t.Fatal(err)
	}
	if card.PAN != testPAN {
		t.Errorf("card = %+v", card)
	}
}

func TestReadErrors(t *testing.T) {
	errGone := errors.New("target gone")
	tests := []struct {
		name  string
		setup func(c *fakeCard)
		want  error
	}{
		{"no PPSE", func(c *fakeCard) { c.on(selectPPSE, h("6A82")) }, ErrUnsupported},
		{"PPSE not TLV", func(c *fakeCard) { c.on(selectPPSE, h("0102 9000")) }, ErrUnsupported},
		{"empty directory", func(c *fakeCard) { c.on(selectPPSE, enc(0x6F, enc(0x84, ppseName)), sw9000) }, ErrUnsupported},
		{"AID refuses", func(c *fakeCard) { c.on(selectCmd(aidDebit), h("6A81")) }, ErrUnsupported},
		{"GPO refused", func(c *fakeCard) { c.on(upGPO, h("6985")) }, ErrUnsupported},
		{"short response", func(c *fakeCard) { c.on(upGPO, h("90")) }, ErrMalformed},
		{"bad FCI", func(c *fakeCard) { c.on(selectCmd(aidDebit), h("6F 05 84 01"), sw9000) }, ErrMalformed},
		{"GPO wrong template", func(c *fakeCard) { c.on(upGPO, enc(0x70, enc(0x82, h("0000"))), sw9000) }, ErrMalformed},
		{"bad AFL length", func(c *fakeCard) { c.on(upGPO, enc(0x77, enc(0x94, h("080101"))), sw9000) }, ErrMalformed},
		{"AFL SFI 0", func(c *fakeCard) { c.on(upGPO, enc(0x77, enc(0x94, h("00010100"))), sw9000) }, ErrMalformed},
		{"AFL last before first", func(c *fakeCard) { c.on(upGPO, enc(0x77, enc(0x94, h("08030100"))), sw9000) }, ErrMalformed},
		{"record missing", func(c *fakeCard) { c.on("00B2011400", h("6A83")) }, ErrUnsupported},
		{"no PAN", func(c *fakeCard) {
			c.on("00B2010C00", enc(0x70, enc(0x5F20, []byte("X"))), sw9000)
			c.on("00B2011400", enc(0x70, enc(0x5F34, h("01"))), sw9000)
		}, ErrMalformed},
		{"bad Luhn", func(c *fakeCard) {
			c.on("00B2011400", enc(0x70, enc(0x5A, bcdPAN("6228480000001238"))), sw9000) // synthetic
		}, ErrMalformed},
		{"PAN not decimal", func(c *fakeCard) {
			c.on("00B2011400", enc(0x70, enc(0x5A, h("62284800000A1237"))), sw9000)
		}, ErrMalformed},
		{"bad track 2", func(c *fakeCard) {
			c.on("00B2010C00", enc(0x70, enc(0x57, h("6228480000001237"))), sw9000) // synthetic
		}, ErrMalformed},
		{"bad PSN", func(c *fakeCard) {
			c.on("00B2011400", enc(0x70, enc(0x5A, bcdPAN(testPAN)), enc(0x5F34, h("1A"))), sw9000)
		}, ErrMalformed},
		{"bad expiry", func(c *fakeCard) {
			c.on("00B2011400", enc(0x70, enc(0x5A, bcdPAN(testPAN)), enc(0x5F24, h("301331"))), sw9000)
		}, ErrMalformed},
		{"removed", func(c *fakeCard) { c.failAt, c.failErr = 4, errGone }, errGone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := unionPayCard()
			tt.setup(c)
			card, err := Read(context.Background(), c, testOpts())
			if !errors.Is(err, tt.want) {
				t.Fatalf("Read = %+v, %v; want %v", card, err, tt.want)
			}
			if card != nil {
				t.Errorf("card %+v returned with an error", card)
			}
			assertNoCardData(t, err.Error())
		})
	}
}

func TestReadContextCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	c := unionPayCard()
	c.failAt, c.failErr = 2, context.Canceled
	cancel()
	_, err := Read(ctx, c, testOpts())
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if len(c.sent) != 0 {
		t.Errorf("sent %d commands on a cancelled context", len(c.sent))
	}
}

// assertNoCardData fails if s holds the digits of a test card number.
func assertNoCardData(t *testing.T, s string) {
	t.Helper()
	for _, pan := range []string{testPAN, testPAN2, "6228480000001238", "62284800000A1237", "622848000000123"} { // synthetic
		if strings.Contains(strings.ToUpper(s), pan) {
			t.Errorf("%q holds card data", s)
		}
	}
}

func TestPDOLData(t *testing.T) {
	r := reader{opts: *testOpts()}
	r.opts.TTQ = [4]byte{0x26, 0x00, 0x00, 0x80}
	r.opts.Country, r.opts.Currency = [2]byte{0x08, 0x40}, [2]byte{0x09, 0x78}
	// Amount in 4 bytes (right end kept), TTQ in 6 (zero-padded right),
	// date in 4 (zero-padded left), an unknown tag zero-filled, time.
	pdol := h("9F02 04 9F66 06 9A 04 DF60 02 9F1A 02 5F2A 02 9F21 03 9F35 01 95 05 9C 01")
	apdu, err := r.gpoAPDU(pdol)
	if err != nil {
		t.Fatal(err)
	}
	want := h("80A80000 20 831E 00000000 260000800000 00250307 0000 0840 0978 140509 22 0000000000 00 00")
	if !bytes.Equal(apdu, want) {
		t.Errorf("GPO\n% X\nwant\n% X", apdu, want)
	}

	// A PDOL asking for more than fits in one APDU is malformed.
	if _, err := r.gpoAPDU(h("DF01 81 FF")); !errors.Is(err, ErrMalformed) {
		t.Errorf("huge PDOL: err = %v", err)
	}
	// Long PDOL data uses the 81 length form.
	apdu, err = r.gpoAPDU(h("DF01 81 90"))
	if err != nil || len(apdu) != 5+3+0x90+1 || !bytes.Equal(apdu[4:8], h("93 83 81 90")) {
		t.Errorf("long PDOL: % X, %v", apdu[:8], err)
	}
	if _, err := r.gpoAPDU(h("9F")); !errors.Is(err, ErrMalformed) {
		t.Errorf("truncated PDOL: err = %v", err)
	}
}

func TestLuhn(t *testing.T) {
	for _, s := range []string{testPAN, testPAN2, "0", "18", "79927398713"} {
		if !LuhnValid(s) {
			t.Errorf("LuhnValid(%s) = false", s)
		}
	}
	for _, s := range []string{"", "6228480000001238", "79927398710", "12a4", " 0"} { // synthetic
		if LuhnValid(s) {
			t.Errorf("LuhnValid(%q) = true", s)
		}
	}
}

func TestScheme(t *testing.T) {
	for aid, want := range map[string]string{
		"A000000333010101": "unionpay",
		"a000000333010102": "unionpay",
		"A0000000031010":   "visa",
		"A0000000041010":   "mastercard",
		"A0000000651010":   "unknown",
		"":                 "unknown",
	} {
		if got := Scheme(aid); got != want {
			t.Errorf("Scheme(%s) = %s, want %s", aid, got, want)
		}
	}
}

func BenchmarkRead(b *testing.B) {
	c := unionPayCard()
	opts := testOpts()
	for b.Loop() {
		c.sent = c.sent[:0]
		opts.Rand = bytes.NewReader(h("DEADBEEF"))
		if _, err := Read(context.Background(), c, opts); err != nil {
			b.Fatal(err)
		}
	}
}
