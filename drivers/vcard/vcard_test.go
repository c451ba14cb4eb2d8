package vcard

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"station.dev/agent/drivers/emv"
)

// transceiver adapts a Card to emv.Transceiver.
type transceiver struct {
	c    *Card
	sent [][]byte
}

func (t *transceiver) Transmit(ctx context.Context, apdu []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t.sent = append(t.sent, bytes.Clone(apdu))
	return t.c.Transmit(apdu)
}

func readCard(t *testing.T, c *Card) *emv.Card {
	t.Helper()
	opts := &emv.ReadOpts{Now: func() time.Time { return time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC) }}
	card, err := emv.Read(context.Background(), &transceiver{c: c}, opts)
	if err != nil {
		t.Fatalf("emv.Read(%s): %v", c.Name(), err)
	}
	return card
}

func load(t *testing.T, name string) *Profile {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := ParseProfile(b)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestScriptedReads(t *testing.T) {
	tests := []struct {
		file string
		want emv.Card
	}{
		{"track2-only", emv.Card{PAN: "6217000000000014", PSN: "00", Expiry: "2705", AID: "A000000333010101", Scheme: "unionpay"}},  // synthetic
		{"second-sfi", emv.Card{PAN: "6227000000000426", PSN: "02", Expiry: "2906", AID: "A000000333010101", Scheme: "unionpay"}},   // synthetic
		{"two-aids", emv.Card{PAN: "6258880000000001", PSN: "00", Expiry: "2811", AID: "A000000333010102", Scheme: "unionpay"}},     // synthetic
		{"no-pdol", emv.Card{PAN: "622200000009", PSN: "00", Expiry: "3101", AID: "A000000333010101", Scheme: "unionpay"}},          // synthetic
		{"long-lengths", emv.Card{PAN: "6214830000000009", PSN: "03", Expiry: "3002", AID: "A000000333010101", Scheme: "unionpay"}}, // synthetic
		{"format1", emv.Card{PAN: "6217000000000014", PSN: "01", Expiry: "2612", AID: "A000000333010102", Scheme: "unionpay"}},      // synthetic
		{"status-words", emv.Card{PAN: "6227000000000426", PSN: "01", Expiry: "", AID: "A000000333010101", Scheme: "unionpay"}},     // synthetic
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			p := load(t, tt.file)
			if p.Kind != KindScripted {
				t.Fatalf("kind = %q, want %q", p.Kind, KindScripted)
			}
			got := readCard(t, p.Card(0))
			if *got != tt.want {
				t.Errorf("read %+v\nwant %+v", *got, tt.want)
			}
		})
	}
}

func TestScriptedSameCard(t *testing.T) {
	p := load(t, "two-aids")
	a, b := p.Card(0), p.Card(5)
	if !bytes.Equal(a.UID(), b.UID()) || !bytes.Equal(a.UID(), mustHex("04112233445566")) {
		t.Errorf("UIDs % X and % X, want both 04112233445566", a.UID(), b.UID())
	}
	if a.SensRes() != [2]byte{0x00, 0x44} || a.SelRes() != 0x20 || !bytes.Equal(a.ATS(), defaultATS) {
		t.Errorf("target data %X %X %X", a.SensRes(), a.SelRes(), a.ATS())
	}
	if readCard(t, a).PAN != readCard(t, b).PAN {
		t.Error("a scripted profile gave two different cards")
	}
}

func TestScriptedMatching(t *testing.T) {
	p, err := ParseProfile([]byte(`{"name":"m","uid":"01020304","ats":"0678807002AA","apdus":[
		{"c":"00a4040007a0000000031010","r":"6A82"},
		{"c":"00A4*","r":"6F00 9000"},
		{"c":"80ca9f17*","r":"9f170103 9000"},
		{"c":"00B2010C00","r":"7000 9000"}]}`))
	if err == nil {
		t.Fatal("hex with spaces accepted")
	}
	p, err = ParseProfile([]byte(`{"name":"m","uid":"01020304","ats":"0678807002AA","apdus":[
		{"c":"00a4040007a0000000031010","r":"6A82"},
		{"c":"00A4*","r":"6F009000"},
		{"c":"80ca9f17*","r":"9f1701039000"},
		{"c":"00B2010C00","r":"70009000"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	c := p.Card(0)
	if !bytes.Equal(c.ATS(), mustHex("0678807002AA")) {
		t.Errorf("ATS = % X", c.ATS())
	}
	for cmd, want := range map[string]string{
		"00A4040007A0000000031010":   "6A82",         // exact, case-insensitive
		"00A4040007A000000003101000": "6F009000",     // longer: only the prefix matches
		"00A4040000":                 "6F009000",     // prefix
		"80CA9F1700":                 "9F1701039000", // prefix, case-insensitive
		"00B2010C00":                 "70009000",     // exact
		"00B2010C":                   "6D00",         // shorter than the exact command
		"00B2010C0000":               "6D00",         // longer than the exact command
		"00B0000000":                 "6D00",         // nothing matches
	} {
		got, err := c.Transmit(mustHex(cmd))
		if err != nil || !bytes.Equal(got, mustHex(want)) {
			t.Errorf("Transmit(%s) = %X, %v; want %s", cmd, got, err, want)
		}
	}
}

func TestGeneratedBuiltins(t *testing.T) {
	for _, name := range []string{"unionpay-debit", "unionpay-credit", "random-uid"} {
		t.Run(name, func(t *testing.T) {
			p, ok := Builtin(name)
			if !ok {
				t.Fatal("missing")
			}
			seen := map[string]bool{}
			for n := range 4 {
				c := p.Card(n)
				got := readCard(t, c)
				if n == 0 && got.PAN != p.PAN {
					t.Errorf("card 0 read PAN %s***, want the profile's", got.PAN[:6])
				}
				if !strings.HasPrefix(got.PAN, p.PAN[:6]) || len(got.PAN) != len(p.PAN) || !emv.LuhnValid(got.PAN) {
					t.Errorf("card %d: PAN keeps neither BIN nor length nor Luhn", n)
				}
				if seen[got.PAN] {
					t.Errorf("card %d repeats a PAN", n)
				}
				seen[got.PAN] = true
				if got.PSN != p.PSN || got.Expiry != p.Expiry || got.AID != p.AID || got.Scheme != "unionpay" {
					t.Errorf("card %d: %s %s %s %s", n, got.PSN, got.Expiry, got.AID, got.Scheme)
				}
				if c.SelRes() != 0x20 || c.SensRes() != [2]byte{0x00, 0x04} || len(c.ATS()) == 0 {
					t.Errorf("card %d: target data %X %X %X", n, c.SensRes(), c.SelRes(), c.ATS())
				}
			}
		})
	}
}

func TestCardVariants(t *testing.T) {
	p, _ := Builtin("unionpay-debit")
	if got := p.Card(0).UID(); !bytes.Equal(got, mustHex("1A2B3C4D")) {
		t.Errorf("card 0 UID % X", got)
	}
	if got := p.Card(1).UID(); !bytes.Equal(got, mustHex("1A2B3C4E")) {
		t.Errorf("card 1 UID % X", got)
	}
	if got := p.Card(0x1C4).UID(); !bytes.Equal(got, mustHex("1A2B3E11")) {
		t.Errorf("card 0x1C4 UID % X (carry)", got)
	}
	if got := p.Card(-3).UID(); !bytes.Equal(got, mustHex("1A2B3C4D")) {
		t.Errorf("card -3 UID % X", got)
	}
	for _, tt := range []struct {
		pan  string
		n    uint64
		want string
	}{
		{"6228480000031234", 1, "6228480000031242"},       // synthetic
		{"6228480000031234", 0, "6228480000031234"},       // synthetic
		{"6228489999999998", 1, "6228480000000007"},       // synthetic; wraps
		{"6200000000000000003", 7, "6200000000000000075"}, // synthetic; 19 digits
	} {
		if got := varyPAN(tt.pan, tt.n); got != tt.want || !luhnValid(got) {
			t.Errorf("varyPAN(%s, %d) = %s, want %s", tt.pan, tt.n, got, tt.want)
		}
	}
	if got := varyUID(mustHex("04FFFFFFFFFFFF"), 1); !bytes.Equal(got, mustHex("04000000000000")) {
		t.Errorf("varyUID wraps to % X", got)
	}
}

func TestRandomUID(t *testing.T) {
	p, _ := Builtin("random-uid")
	seen := map[string]bool{}
	for range 8 {
		uid := p.Card(0).UID()
		if len(uid) != 4 || uid[0] != 0x08 {
			t.Fatalf("random UID % X is not 08xxxxxx", uid)
		}
		seen[hex.EncodeToString(uid)] = true
	}
	// Eight draws of 24 random bits: all equal with probability 2^-168.
	if len(seen) == 1 {
		t.Error("random UID never changes")
	}
	if !emv.IsRandomUID(p.Card(0).UID()) {
		t.Error("emv does not see the UID as random")
	}
}

func TestUIDTag(t *testing.T) {
	p, ok := Builtin("ntag")
	if !ok || p.Kind != KindUID {
		t.Fatalf("ntag = %+v, %v", p, ok)
	}
	c := p.Card(0)
	if !bytes.Equal(c.UID(), mustHex("04A1B2C3D4E5F6")) || c.SelRes() != 0x00 || c.SensRes() != [2]byte{0x00, 0x44} || c.ATS() != nil {
		t.Errorf("ntag target % X %X %X %X", c.UID(), c.SelRes(), c.SensRes(), c.ATS())
	}
	if _, err := c.Transmit(mustHex("00A404000E325041592E5359532E444446303100")); !errors.Is(err, ErrNotISODEP) {
		t.Errorf("Transmit to a plain tag: %v", err)
	}
	if got := p.Card(2).UID(); !bytes.Equal(got, mustHex("04A1B2C3D4E5F8")) {
		t.Errorf("ntag card 2 UID % X", got)
	}

	u := load(t, "uid-tag")
	if c := u.Card(0); !bytes.Equal(c.UID(), mustHex("C1D2E3F4")) || c.SelRes() != 0x08 || c.SensRes() != [2]byte{0x00, 0x04} {
		t.Errorf("uid-tag target % X %X", c.UID(), c.SelRes())
	}
}

func TestGeneratedCardAnswers(t *testing.T) {
	p := load(t, "generated-emv")
	if p.Kind != KindEMV || p.UID != UIDRandom {
		t.Fatalf("profile %+v", p)
	}
	c := p.Card(0)
	tx := func(cmd string) string {
		r, err := c.Transmit(mustHex(cmd))
		if err != nil {
			t.Fatalf("Transmit(%s): %v", cmd, err)
		}
		return strings.ToUpper(hex.EncodeToString(r))
	}
	sw := func(cmd string) string { r := tx(cmd); return r[len(r)-4:] }
	gpo := "80A80000238321" + strings.Repeat("00", 33) + "00"
	steps := []struct{ cmd, want string }{
		{"00B2010C00", "6985"},                               // nothing selected
		{gpo, "6985"},                                        // GPO before SELECT
		{"00A4040007A000000333010300", "6A82"},               // unknown AID
		{"00A404000E325041592E5359532E444446303100", "9000"}, // PPSE
		{"00A4040005A00000033300", "9000"},                   // partial AID name
		{"80A8000002830000", "6700"},                         // PDOL data missing
		{gpo, "9000"},                                        // GPO
		{"00B2010C00", "9000"},                               // SFI 1 record 1
		{"00B2011400", "9000"},                               // SFI 2 record 1
		{"00B2020C00", "6A83"},                               // no such record
		{"00B2010800", "6A86"},                               // P2 not "SFI in P2"
		{"00A4000C023F00", "6A86"},                           // select by file id
		{"00CA9F1700", "6D00"},                               // unknown instruction
		{"84B2010C00", "6E00"},                               // unknown class
		{"00B2", "6700"},                                     // too short
		{"00C0000010", "6985"},                               // GET RESPONSE with nothing pending
	}
	for _, s := range steps {
		if got := sw(s.cmd); got != s.want {
			t.Errorf("%s: SW %s, want %s", s.cmd, got, s.want)
		}
	}
	// The ATC counts GPOs.
	r1, r2 := tx(gpo), tx(gpo)
	if !strings.Contains(r1, "9F36020002") || !strings.Contains(r2, "9F36020003") {
		t.Errorf("ATC does not count: %s / %s", r1, r2)
	}
}

func TestParseProfileErrors(t *testing.T) {
	tests := map[string]string{
		"not JSON":        `{"name":`,
		"unknown field":   `{"name":"x","kind":"emv","pan":"6217000000000014","expiry":"2909","colour":"red"}`, // synthetic
		"trailing data":   `{"name":"x","kind":"uid","uid":"04A1B2C3D4E5F6"} {}`,
		"no name":         `{"kind":"uid","uid":"04A1B2C3D4E5F6"}`,
		"control in name": `{"name":"a\u0007","kind":"uid","uid":"04A1B2C3D4E5F6"}`,
		"no kind":         `{"name":"x","uid":"04A1B2C3D4E5F6"}`,
		"bad kind":        `{"name":"x","kind":"felica","uid":"04A1B2C3D4E5F6"}`,
		"bad Luhn":        `{"name":"x","kind":"emv","pan":"6217000000000015","expiry":"2909"}`, // synthetic
		"short PAN":       `{"name":"x","kind":"emv","pan":"62170000018","expiry":"2909"}`,      // synthetic
		"PAN not digits":  `{"name":"x","kind":"emv","pan":"62170000000000l4","expiry":"2909"}`, // synthetic
		"no PAN":          `{"name":"x","kind":"emv","expiry":"2909"}`,
		"bad expiry":      `{"name":"x","kind":"emv","pan":"6217000000000014","expiry":"2913"}`,                          // synthetic
		"no expiry":       `{"name":"x","kind":"emv","pan":"6217000000000014"}`,                                          // synthetic
		"bad PSN":         `{"name":"x","kind":"emv","pan":"6217000000000014","expiry":"2909","psn":"1"}`,                // synthetic
		"bad AID":         `{"name":"x","kind":"emv","pan":"6217000000000014","expiry":"2909","aid":"A0000003"}`,         // synthetic
		"AID not hex":     `{"name":"x","kind":"emv","pan":"6217000000000014","expiry":"2909","aid":"A00000033301010G"}`, // synthetic
		"sak on emv":      `{"name":"x","kind":"emv","pan":"6217000000000014","expiry":"2909","sak":"20"}`,               // synthetic
		"apdus on emv":    `{"name":"x","kind":"emv","pan":"6217000000000014","expiry":"2909","apdus":[]}`,               // synthetic
		"UID of 5 bytes":  `{"name":"x","kind":"uid","uid":"0102030405"}`,
		"UID not hex":     `{"name":"x","kind":"uid","uid":"0102030Z"}`,
		"UID cascade tag": `{"name":"x","kind":"uid","uid":"88010203"}`,
		"UID missing":     `{"name":"x","kind":"uid"}`,
		"pan on uid":      `{"name":"x","kind":"uid","uid":"04A1B2C3D4E5F6","pan":"6217000000000014"}`, // synthetic
		"bad SAK":         `{"name":"x","kind":"uid","uid":"04A1B2C3D4E5F6","sak":"0800"}`,
		"SAK too big":     `{"name":"x","kind":"uid","uid":"04A1B2C3D4E5F6","sak":256}`,
		"SAK negative":    `{"name":"x","kind":"uid","uid":"04A1B2C3D4E5F6","sak":-1}`,
		"SAK fraction":    `{"name":"x","kind":"uid","uid":"04A1B2C3D4E5F6","sak":1.5}`,
		"SAK bool":        `{"name":"x","kind":"uid","uid":"04A1B2C3D4E5F6","sak":true}`,
		"ATS on a tag":    `{"name":"x","uid":"01020304","ats":"0578807002","apdus":[]}`,
		"bad command":     `{"name":"x","uid":"01020304","apdus":[{"c":"00A4X","r":"9000"}]}`,
		"short command":   `{"name":"x","uid":"01020304","apdus":[{"c":"00A404","r":"9000"}]}`,
		"empty prefix":    `{"name":"x","uid":"01020304","apdus":[{"c":"*","r":"9000"}]}`,
		"no SW":           `{"name":"x","uid":"01020304","apdus":[{"c":"00A40400","r":"90"}]}`,
		"unknown in APDU": `{"name":"x","uid":"01020304","apdus":[{"c":"00A40400","r":"9000","note":"hi"}]}`,
		"bad ATS length":  `{"name":"x","uid":"01020304","ats":"0578807","apdus":[{"c":"00A40400","r":"9000"}]}`,
		"ATS TL wrong":    `{"name":"x","uid":"01020304","ats":"0678807002","apdus":[{"c":"00A40400","r":"9000"}]}`,
		"pan on scripted": `{"name":"x","uid":"01020304","pan":"6217000000000014","apdus":[{"c":"00A40400","r":"9000"}]}`, // synthetic
	}
	for name, in := range tests {
		p, err := ParseProfile([]byte(in))
		if err == nil {
			t.Errorf("%s: accepted as %+v", name, p)
			continue
		}
		if !strings.HasPrefix(err.Error(), "vcard: profile") {
			t.Errorf("%s: error %q lacks the package prefix", name, err)
		}
		if strings.Contains(err.Error(), "621700000000001") { // synthetic
			t.Errorf("%s: error %q holds the card number", name, err)
		}
	}
}

func TestParseProfileDefaults(t *testing.T) {
	p, err := ParseProfile([]byte(`{"name":"d","kind":"emv","pan":"6217000000000014","expiry":"2909","aid":"a000000333010103"}`)) // synthetic
	if err != nil {
		t.Fatal(err)
	}
	if p.PSN != "00" || p.UID != UIDRandom || p.AID != "A000000333010103" {
		t.Errorf("defaults: %+v", p)
	}
	p, err = ParseProfile([]byte(`{"name":"d","kind":"uid","uid":"04a1b2c3d4e5f6"}`))
	if err != nil || p.SAK != "00" || p.UID != "04A1B2C3D4E5F6" {
		t.Errorf("uid defaults: %+v, %v", p, err)
	}
	p, err = ParseProfile([]byte(`{"name":"d","uid":"random","apdus":[{"c":"00A40400*","r":"6A82"}]}`))
	if err != nil || p.Kind != KindScripted || p.SAK != "20" {
		t.Fatalf("scripted defaults: %+v, %v", p, err)
	}
	if c := p.Card(0); !emv.IsRandomUID(c.UID()) || !bytes.Equal(c.ATS(), defaultATS) {
		t.Errorf("scripted random card % X % X", c.UID(), c.ATS())
	}
}

// TestProfileSAK: sak is one byte, written as hex or as a JSON number.
func TestProfileSAK(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want byte
	}{
		{`{"name":"t","kind":"uid","uid":"04A1B2C3D4E5F6","sak":32}`, 0x20},
		{`{"name":"t","kind":"uid","uid":"04A1B2C3D4E5F6","sak":8}`, 0x08},
		{`{"name":"t","kind":"uid","uid":"04A1B2C3D4E5F6","sak":"20"}`, 0x20},
		{`{"name":"t","kind":"uid","uid":"04A1B2C3D4E5F6","sak":"08"}`, 0x08},
		{`{"name":"t","uid":"01020304","sak":40,"apdus":[{"c":"00A40400*","r":"6A82"}]}`, 0x28},
	} {
		p, err := ParseProfile([]byte(tc.in))
		if err != nil {
			t.Errorf("%s: %v", tc.in, err)
			continue
		}
		if c := p.Card(0); c.SelRes() != tc.want || p.SAK != strings.ToUpper(hex.EncodeToString([]byte{tc.want})) {
			t.Errorf("%s: SAK %q, SEL_RES %02X; want %02X", tc.in, p.SAK, c.SelRes(), tc.want)
		}
	}
}

// TestScriptedTagWithoutAPDUs: a transcript with an empty list of APDUs is a
// tag known by its UID.
func TestScriptedTagWithoutAPDUs(t *testing.T) {
	for _, in := range []string{
		`{"name":"tag","uid":"04A1B2C3D4E5F6","sak":"00","apdus":[]}`,
		`{"name":"tag","kind":"scripted","uid":"04A1B2C3D4E5F6","apdus":[]}`,
		`{"name":"tag","uid":"04A1B2C3D4E5F6","sak":0,"apdus":[]}`,
	} {
		p, err := ParseProfile([]byte(in))
		if err != nil {
			t.Errorf("%s: %v", in, err)
			continue
		}
		c := p.Card(0)
		if p.Kind != KindUID || p.SAK != "00" || c.SelRes() != 0x00 || c.ATS() != nil || !bytes.Equal(c.UID(), mustHex("04A1B2C3D4E5F6")) {
			t.Errorf("%s: %+v, card UID % X SEL_RES %02X ATS % X", in, p, c.UID(), c.SelRes(), c.ATS())
		}
		if _, err := c.Transmit([]byte{0x00, 0xA4, 0x04, 0x00}); !errors.Is(err, ErrNotISODEP) {
			t.Errorf("%s: Transmit = %v, want ErrNotISODEP", in, err)
		}
	}
	// With ISO/IEC 14443-4 it answers every APDU with 6D00 (not an EMV
	// card: a reader identifies it by its UID).
	p, err := ParseProfile([]byte(`{"name":"badge","uid":"04A1B2C3D4E5F6","sak":32,"ats":"0678807002AA","apdus":[]}`))
	if err != nil {
		t.Fatal(err)
	}
	c := p.Card(0)
	if r, err := c.Transmit([]byte{0x00, 0xA4, 0x04, 0x00, 0x00}); err != nil || !bytes.Equal(r, []byte{0x6D, 0x00}) {
		t.Errorf("Transmit = % X, %v; want 6D00", r, err)
	}
	if p.Kind != KindUID || c.SelRes() != 0x20 || !bytes.Equal(c.ATS(), mustHex("0678807002AA")) {
		t.Errorf("%+v, SEL_RES %02X ATS % X", p, c.SelRes(), c.ATS())
	}
}

func TestBuiltinNames(t *testing.T) {
	names := BuiltinNames()
	for _, want := range []string{"unionpay-debit", "unionpay-credit", "random-uid", "ntag"} {
		if !slices.Contains(names, want) {
			t.Errorf("BuiltinNames() = %v lacks %s", names, want)
		}
	}
	if !slices.IsSorted(names) {
		t.Errorf("BuiltinNames() = %v not sorted", names)
	}
	for _, n := range names {
		p, ok := Builtin(n)
		if !ok || p.Name != n {
			t.Errorf("Builtin(%s) = %+v, %v", n, p, ok)
		}
	}
	if _, ok := Builtin("nope"); ok {
		t.Error("Builtin(nope) found")
	}
	// Each call returns a fresh copy.
	a, _ := Builtin("unionpay-debit")
	a.PAN = "0"
	if b, _ := Builtin("unionpay-debit"); b.PAN == "0" {
		t.Error("Builtin shares its profiles")
	}
}

// TestConcurrentTransmit only gives the race detector something to see:
// interleaved commands to one card make no sense, but must be safe.
func TestConcurrentTransmit(t *testing.T) {
	p, _ := Builtin("unionpay-debit")
	c := p.Card(0)
	done := make(chan struct{})
	for range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for range 50 {
				for _, cmd := range []string{"00A404000E325041592E5359532E444446303100", "00A4040008A00000033301010100", "00B2011400"} {
					_, _ = c.Transmit(mustHex(cmd))
				}
			}
		}()
	}
	for range 4 {
		<-done
	}
}
