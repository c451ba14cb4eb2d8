package emv

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

// h decodes hex written with optional spaces; it panics on bad input so
// test tables stay short.
func h(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

// enc encodes one BER-TLV object with the shortest length form.
func enc(tag uint32, parts ...[]byte) []byte {
	var v []byte
	for _, p := range parts {
		v = append(v, p...)
	}
	var out []byte
	switch {
	case tag > 0xFFFFFF:
		out = append(out, byte(tag>>24), byte(tag>>16), byte(tag>>8), byte(tag))
	case tag > 0xFFFF:
		out = append(out, byte(tag>>16), byte(tag>>8), byte(tag))
	case tag > 0xFF:
		out = append(out, byte(tag>>8), byte(tag))
	default:
		out = append(out, byte(tag))
	}
	switch l := len(v); {
	case l < 0x80:
		out = append(out, byte(l))
	case l < 0x100:
		out = append(out, 0x81, byte(l))
	default:
		out = append(out, 0x82, byte(l>>8), byte(l))
	}
	return append(out, v...)
}

func TestParseNested(t *testing.T) {
	b := h("6F 1E 84 0E 325041592E5359532E4444463031 A5 0C BF0C 09 61 07 4F 05 A000000333")
	tlvs, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(tlvs) != 1 || tlvs[0].Tag != 0x6F || !tlvs[0].Constructed() {
		t.Fatalf("top level = %+v, want one constructed 6F", tlvs)
	}
	fci := tlvs[0].Children
	if len(fci) != 2 || fci[0].Tag != 0x84 || string(fci[0].Value) != "2PAY.SYS.DDF01" {
		t.Fatalf("6F children = %+v", fci)
	}
	if fci[0].Children != nil || fci[0].Constructed() {
		t.Errorf("84 is primitive but has children %v", fci[0].Children)
	}
	bf, ok := Find(tlvs, 0xBF0C)
	if !ok || !bf.Constructed() || len(bf.Children) != 1 {
		t.Fatalf("Find(BF0C) = %+v, %v", bf, ok)
	}
	aid, ok := Find(tlvs, 0x4F)
	if !ok || !bytes.Equal(aid.Value, h("A000000333")) {
		t.Fatalf("Find(4F) = %X, %v", aid.Value, ok)
	}
	if _, ok := Find(tlvs, 0x9F38); ok {
		t.Error("Find(9F38) found a tag that is not there")
	}
}

func TestParseMultiByteTags(t *testing.T) {
	tests := []struct {
		in  string
		tag uint32
	}{
		{"9F38 01 AA", 0x9F38},
		{"5F34 01 AA", 0x5F34},
		{"DF8120 01 AA", 0xDF8120},
		{"1F01 01 AA", 0x1F01}, // low 5 bits set: the next byte belongs to the tag
	}
	for _, tt := range tests {
		tlvs, err := Parse(h(tt.in))
		if err != nil {
			t.Errorf("Parse(%s): %v", tt.in, err)
			continue
		}
		if len(tlvs) != 1 || tlvs[0].Tag != tt.tag || !bytes.Equal(tlvs[0].Value, []byte{0xAA}) {
			t.Errorf("Parse(%s) = %+v, want tag %X value AA", tt.in, tlvs, tt.tag)
		}
	}
}

func TestParseLongLengths(t *testing.T) {
	v200 := bytes.Repeat([]byte{0x11}, 200)
	v300 := bytes.Repeat([]byte{0x22}, 300)
	b := append(append([]byte{0x50, 0x81, 200}, v200...), append([]byte{0x50, 0x82, 0x01, 0x2C}, v300...)...)
	tlvs, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(tlvs) != 2 || !bytes.Equal(tlvs[0].Value, v200) || !bytes.Equal(tlvs[1].Value, v300) {
		t.Fatalf("got %d objects with value lengths %d, %d", len(tlvs), len(tlvs[0].Value), len(tlvs[len(tlvs)-1].Value))
	}
	// A long form may also encode a short length.
	tlvs, err = Parse(h("5A 81 02 1234"))
	if err != nil || len(tlvs) != 1 || !bytes.Equal(tlvs[0].Value, h("1234")) {
		t.Fatalf("Parse(5A 81 02 1234) = %+v, %v", tlvs, err)
	}
}

func TestParsePadding(t *testing.T) {
	tlvs, err := Parse(h("00 00 5A 01 12 FF FF 00 5F34 01 01 00 FF"))
	if err != nil {
		t.Fatal(err)
	}
	if len(tlvs) != 2 || tlvs[0].Tag != 0x5A || tlvs[1].Tag != 0x5F34 {
		t.Fatalf("got %+v, want 5A and 5F34", tlvs)
	}
	tlvs, err = Parse(h("70 06 00 5A 01 12 FF 00"))
	if err != nil || len(tlvs[0].Children) != 1 || tlvs[0].Children[0].Tag != 0x5A {
		t.Fatalf("padding inside a template: %+v, %v", tlvs, err)
	}
	tlvs, err = Parse(h("0000FF"))
	if err != nil || len(tlvs) != 0 {
		t.Fatalf("padding only: %+v, %v", tlvs, err)
	}
}

func TestParseErrors(t *testing.T) {
	deep := []byte{0x5A, 0x00}
	for range MaxDepth {
		deep = enc(0x70, deep)
	}
	tests := []struct {
		name string
		in   []byte
	}{
		{"truncated multi-byte tag", h("9F")},
		{"unterminated tag", h("9F 81 82")},
		{"five-byte tag", h("9F 81 82 83 04 01 AA")},
		{"missing length", h("5A")},
		{"indefinite length", h("70 80 5A 01 12 00 00")},
		{"length form 83", h("5A 83 00 00 01 12")},
		{"length form 84", h("5A 84 00 00 00 01 12")},
		{"truncated 81", h("5A 81")},
		{"truncated 82", h("5A 82 01")},
		{"length past end", h("5A 05 1234")},
		{"82 length past end", h("5A 82 FF FF 12")},
		{"bad child", h("70 03 5A 05 12")},
		{"too deep", deep},
	}
	for _, tt := range tests {
		tlvs, err := Parse(tt.in)
		if err == nil {
			t.Errorf("%s: Parse(% X) = %+v, want an error", tt.name, tt.in, tlvs)
			continue
		}
		if !errors.Is(err, errTLV) || !strings.HasPrefix(err.Error(), "emv: ") {
			t.Errorf("%s: error %q does not wrap errTLV with the package prefix", tt.name, err)
		}
	}
	// One level less than the limit is fine.
	ok := []byte{0x5A, 0x00}
	for range MaxDepth - 1 {
		ok = enc(0x70, ok)
	}
	if _, err := Parse(ok); err != nil {
		t.Errorf("nesting %d deep: %v", MaxDepth, err)
	}
}

func TestFindDepthFirst(t *testing.T) {
	// The 5A inside the first template comes before the top-level 5A that
	// follows it.
	tlvs, err := Parse(h("70 07 A5 03 5A 01 11 5A 00 5A 01 22"))
	if err != nil {
		t.Fatal(err)
	}
	got, ok := Find(tlvs, 0x5A)
	if !ok || !bytes.Equal(got.Value, []byte{0x11}) {
		t.Fatalf("Find = %X, %v; want 11", got.Value, ok)
	}
	all := findAll(nil, tlvs, 0x5A)
	if len(all) != 3 {
		t.Fatalf("findAll found %d, want 3", len(all))
	}
	if got, ok := Find(tlvs, 0x70); !ok || len(got.Children) != 2 {
		t.Fatalf("Find(70) = %+v", got)
	}
}

func TestParseValuesStayInside(t *testing.T) {
	b := h("70 05 5A 03 123456 9F38 00")
	tlvs, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	// Appending to a value must not overwrite the bytes after it.
	v := tlvs[0].Children[0].Value
	_ = append(v, 0xEE)
	if !bytes.Equal(b, h("70 05 5A 03 123456 9F38 00")) {
		t.Fatalf("append through a value changed the input: % X", b)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"6F 1E 84 0E 325041592E5359532E4444463031 A5 0C BF0C 09 61 07 4F 05 A000000333",
		"00 5A 81 02 1234 FF",
		"70 82 00 03 5A 01 12",
		"9F 81 82 01 AA",
		"77 0A 82 02 7C00 94 04 08010100",
	} {
		f.Add(h(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		tlvs, err := Parse(b)
		if err != nil {
			if tlvs != nil {
				t.Fatalf("Parse returned objects with an error")
			}
			return
		}
		var check func([]TLV, int)
		check = func(ts []TLV, depth int) {
			if depth > MaxDepth {
				t.Fatalf("depth %d beyond the limit", depth)
			}
			for _, x := range ts {
				if len(x.Value) > len(b) {
					t.Fatalf("value of %d bytes from %d bytes of input", len(x.Value), len(b))
				}
				if x.Constructed() != (x.Children != nil) {
					t.Fatalf("tag %X: constructed %v but children %v", x.Tag, x.Constructed(), x.Children)
				}
				check(x.Children, depth+1)
			}
		}
		check(tlvs, 1)
	})
}
