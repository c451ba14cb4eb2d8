package pn532

import (
	"bytes"
	"errors"
	"testing"
)

// Frames from the PN532 user manual (UM0701-02) and their decoding.
var datasheetFrames = []struct {
	name string
	b    []byte
	kind frameKind
	tfi  byte
	data []byte
}{
	{"GetFirmwareVersion", []byte{0x00, 0x00, 0xFF, 0x02, 0xFE, 0xD4, 0x02, 0x2A, 0x00}, kindInfo, 0xD4, []byte{0x02}},
	{"GetFirmwareVersion response", []byte{0x00, 0x00, 0xFF, 0x06, 0xFA, 0xD5, 0x03, 0x32, 0x01, 0x06, 0x07, 0xE8, 0x00}, kindInfo, 0xD5, []byte{0x03, 0x32, 0x01, 0x06, 0x07}},
	{"SAMConfiguration", []byte{0x00, 0x00, 0xFF, 0x05, 0xFB, 0xD4, 0x14, 0x01, 0x14, 0x01, 0x02, 0x00}, kindInfo, 0xD4, []byte{0x14, 0x01, 0x14, 0x01}},
	{"SAMConfiguration response", []byte{0x00, 0x00, 0xFF, 0x02, 0xFE, 0xD5, 0x15, 0x16, 0x00}, kindInfo, 0xD5, []byte{0x15}},
	{"ACK", []byte{0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00}, kindACK, 0, nil},
	{"NACK", []byte{0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00}, kindNACK, 0, nil},
	{"error frame", []byte{0x00, 0x00, 0xFF, 0x01, 0xFF, 0x7F, 0x81, 0x00}, kindError, 0x7F, []byte{}},
	{"short preamble", []byte{0x00, 0xFF, 0x02, 0xFE, 0xD4, 0x02, 0x2A, 0x00}, kindInfo, 0xD4, []byte{0x02}},
	{"long preamble", []byte{0x00, 0x00, 0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00}, kindACK, 0, nil},
	{"extended GetFirmwareVersion", []byte{0x00, 0x00, 0xFF, 0xFF, 0xFF, 0x00, 0x02, 0xFE, 0xD4, 0x02, 0x2A, 0x00}, kindInfo, 0xD4, []byte{0x02}},
}

func TestDecodeDatasheetFrames(t *testing.T) {
	for _, tc := range datasheetFrames {
		t.Run(tc.name, func(t *testing.T) {
			// Trailing bytes (I²C padding) are left alone.
			in := append(append([]byte{}, tc.b...), 0x00, 0x00, 0x00)
			f, n, err := decodeFrame(in)
			if err != nil {
				t.Fatalf("decodeFrame: %v", err)
			}
			if n != len(tc.b) {
				t.Errorf("n = %d, want %d", n, len(tc.b))
			}
			if f.kind != tc.kind || f.tfi != tc.tfi || !bytes.Equal(f.data, tc.data) {
				t.Errorf("got kind %d tfi %#x data % X; want kind %d tfi %#x data % X", f.kind, f.tfi, f.data, tc.kind, tc.tfi, tc.data)
			}
			if sz, err := frameSize(tc.b); err != nil || sz != len(tc.b) {
				t.Errorf("frameSize = %d, %v; want %d", sz, err, len(tc.b))
			}
		})
	}
}

func TestAppendFrameDatasheet(t *testing.T) {
	got, err := appendFrame(nil, tfiHost, []byte{0x02})
	if err != nil {
		t.Fatal(err)
	}
	if want := []byte{0x00, 0x00, 0xFF, 0x02, 0xFE, 0xD4, 0x02, 0x2A, 0x00}; !bytes.Equal(got, want) {
		t.Errorf("GetFirmwareVersion frame % X, want % X", got, want)
	}
	got, err = appendFrame(nil, tfiHost, []byte{0x14, 0x01, 0x14, 0x01})
	if err != nil {
		t.Fatal(err)
	}
	if want := []byte{0x00, 0x00, 0xFF, 0x05, 0xFB, 0xD4, 0x14, 0x01, 0x14, 0x01, 0x02, 0x00}; !bytes.Equal(got, want) {
		t.Errorf("SAMConfiguration frame % X, want % X", got, want)
	}
}

func TestAppendFrameSizes(t *testing.T) {
	for _, n := range []int{0, 1, 253, 254, 255, 264} {
		data := make([]byte, n)
		for i := range data {
			data[i] = byte(i * 7)
		}
		b, err := appendFrame(nil, tfiChip, data)
		if err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		extended := n+1 > 255
		if got := b[3] == 0xFF && b[4] == 0xFF; got != extended {
			t.Errorf("%d bytes: extended = %t, want %t", n, got, extended)
		}
		wantLen := n + 1 + 7
		if extended {
			wantLen += 3
		}
		if len(b) != wantLen {
			t.Errorf("%d bytes: frame of %d bytes, want %d", n, len(b), wantLen)
		}
		f, m, err := decodeFrame(b)
		if err != nil || m != len(b) || f.tfi != tfiChip || !bytes.Equal(f.data, data) {
			t.Errorf("%d bytes: round trip gave %v, n %d, tfi %#x", n, err, m, f.tfi)
		}
	}
	if _, err := appendFrame(nil, tfiHost, make([]byte, maxLen)); err == nil {
		t.Error("appendFrame accepted a frame longer than the chip's buffer")
	}
}

func TestDecodeFrameErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, errShortFrame},
		{"zeros", []byte{0x00, 0x00}, errShortFrame},
		{"header cut", []byte{0x00, 0x00, 0xFF, 0x02}, errShortFrame},
		{"data cut", []byte{0x00, 0x00, 0xFF, 0x02, 0xFE, 0xD4, 0x02}, errShortFrame},
		{"postamble cut", []byte{0x00, 0x00, 0xFF, 0x02, 0xFE, 0xD4, 0x02, 0x2A}, errShortFrame},
		{"extended header cut", []byte{0x00, 0x00, 0xFF, 0xFF, 0xFF, 0x01}, errShortFrame},
		{"garbage", []byte{0xA5, 0x5A, 0xFF, 0x13}, ErrFrame},
		{"no start code", []byte{0x00, 0x00, 0xFE, 0x02}, ErrFrame},
		{"preamble too long", bytes.Repeat([]byte{0x00}, 20), ErrFrame},
		{"bad LCS", []byte{0x00, 0x00, 0xFF, 0x02, 0xFD, 0xD4, 0x02, 0x2A, 0x00}, ErrChecksum},
		{"bad DCS", []byte{0x00, 0x00, 0xFF, 0x02, 0xFE, 0xD4, 0x02, 0x2B, 0x00}, ErrChecksum},
		{"bad extended LCS", []byte{0x00, 0x00, 0xFF, 0xFF, 0xFF, 0x00, 0x02, 0xFD, 0xD4, 0x02, 0x2A, 0x00}, ErrChecksum},
		{"extended too long", []byte{0x00, 0x00, 0xFF, 0xFF, 0xFF, 0x01, 0x0A, 0xF5}, ErrFrame},
		{"extended empty", []byte{0x00, 0x00, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00}, ErrFrame},
		{"bad postamble", []byte{0x00, 0x00, 0xFF, 0x02, 0xFE, 0xD4, 0x02, 0x2A, 0x01}, ErrFrame},
		{"unknown TFI", []byte{0x00, 0x00, 0xFF, 0x02, 0xFE, 0xD6, 0x02, 0x28, 0x00}, ErrFrame},
		{"zero LEN", []byte{0x00, 0xFF, 0x00, 0x00, 0x00, 0x00}, ErrFrame},
		{"long error frame", []byte{0x00, 0x00, 0xFF, 0x02, 0xFE, 0x7F, 0x00, 0x81, 0x00}, ErrFrame},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.b[:len(tc.b):len(tc.b)]
			if _, _, err := decodeFrame(b); !errors.Is(err, tc.want) {
				t.Errorf("decodeFrame(% X) = %v, want %v", tc.b, err, tc.want)
			}
		})
	}
}

// FuzzDecodeFrame checks that the decoder never panics or reads outside its
// input, that what it accepts re-encodes to a frame it decodes the same way,
// and that every encodable frame round-trips.
func FuzzDecodeFrame(f *testing.F) {
	for _, tc := range datasheetFrames {
		f.Add(tc.b)
	}
	f.Add([]byte{0x00, 0x00, 0xFF, 0xFF, 0xFF, 0x01, 0x09, 0xF6})
	f.Add([]byte{0xA5, 0x5A, 0xFF, 0x13, 0x37})
	f.Fuzz(func(t *testing.T, b []byte) {
		in := b[:len(b):len(b)] // no spare capacity to read into
		fr, n, err := decodeFrame(in)
		sz, serr := frameSize(in)
		if err == nil {
			if n <= 0 || n > len(in) {
				t.Fatalf("n = %d for %d bytes", n, len(in))
			}
			if serr != nil || sz != n {
				t.Fatalf("frameSize = %d, %v; decodeFrame took %d", sz, serr, n)
			}
			if fr.kind == kindInfo {
				enc, err := appendFrame(nil, fr.tfi, fr.data)
				if err != nil {
					t.Fatalf("re-encoding a decoded frame: %v", err)
				}
				fr2, n2, err := decodeFrame(enc)
				if err != nil || n2 != len(enc) || fr2.tfi != fr.tfi || !bytes.Equal(fr2.data, fr.data) {
					t.Fatalf("re-encoded frame % X decodes differently: %v", enc, err)
				}
			}
		} else if !errors.Is(err, errShortFrame) && !errors.Is(err, ErrFrame) && !errors.Is(err, ErrChecksum) {
			t.Fatalf("unexpected error %v", err)
		}
		data := b
		if len(data) > maxLen-1 {
			data = data[:maxLen-1]
		}
		enc, err := appendFrame(nil, tfiHost, data)
		if err != nil {
			t.Fatal(err)
		}
		fr, n, err = decodeFrame(enc[:len(enc):len(enc)])
		if err != nil || n != len(enc) || fr.kind != kindInfo || fr.tfi != tfiHost || !bytes.Equal(fr.data, data) {
			t.Fatalf("round trip of % X failed: %v", data, err)
		}
	})
}
