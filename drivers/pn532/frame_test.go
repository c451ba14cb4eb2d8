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

func TestScanFrame(t *testing.T) {
	fw := []byte{0x00, 0x00, 0xFF, 0x06, 0xFA, 0xD5, 0x03, 0x32, 0x01, 0x06, 0x07, 0xE8, 0x00}
	for _, tc := range []struct {
		name       string
		b          []byte
		kind       frameKind
		start, end int
		need       int
		noise      bool
		err        error
	}{
		{name: "ACK", b: []byte{0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00}, kind: kindACK, start: 1, end: 6},
		{name: "ACK, extra preamble byte, postamble cut by the read", b: []byte{0x00, 0x00, 0x00, 0xFF, 0x00, 0xFF}, kind: kindACK, start: 2, end: 6},
		{name: "NACK after noise", b: []byte{0xA5, 0x5A, 0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00}, kind: kindNACK, start: 3, end: 8, noise: true},
		{name: "response", b: fw, kind: kindInfo, start: 1, end: 13},
		{name: "response after a burst of noise", b: cat([]byte{0x13, 0x37, 0xFF, 0x42}, fw, []byte{0x00, 0x00}), kind: kindInfo, start: 5, end: 17, noise: true},
		{name: "response after noise with a false start code", b: cat([]byte{0x00, 0xFF, 0x12, 0x34}, fw), kind: kindInfo, start: 5, end: 17, noise: true},
		{name: "response, postamble cut", b: fw[:12], kind: kindInfo, start: 1, end: 12},
		{name: "response, DCS cut", b: fw[:11], start: 1, end: 1, need: 13, err: errShortFrame},
		{name: "response cut after noise", b: cat([]byte{0x5A, 0xA5}, fw[:8]), start: 3, end: 3, need: 15, noise: true, err: errShortFrame},
		{name: "header cut", b: []byte{0x00, 0x00, 0xFF, 0x06}, start: 1, end: 1, err: errShortFrame},
		{name: "zeros: not ready on SPI", b: make([]byte, 7), start: 6, end: 6, err: errShortFrame},
		{name: "noise only", b: []byte{0xA5, 0x5A, 0xFF, 0x13, 0x37, 0xC3}, start: 6, end: 6, noise: true, err: ErrFrame},
		{name: "bad DCS", b: cat(fw[:11], []byte{0xE9, 0x00}), start: 1, end: 13, err: ErrChecksum},
		{name: "error frame", b: []byte{0x00, 0x00, 0xFF, 0x01, 0xFF, 0x7F, 0x81, 0x00}, kind: kindError, start: 1, end: 8},
		{name: "unknown TFI", b: []byte{0x00, 0x00, 0xFF, 0x02, 0xFE, 0xD6, 0x02, 0x28, 0x00}, start: 1, end: 9, err: ErrFrame},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := scanFrame(tc.b[:len(tc.b):len(tc.b)])
			if !errors.Is(s.err, tc.err) && !(s.err == nil && tc.err == nil) {
				t.Fatalf("err = %v, want %v", s.err, tc.err)
			}
			if s.start != tc.start || s.end != tc.end || s.need != tc.need || s.noise != tc.noise {
				t.Errorf("start %d end %d need %d noise %t; want %d %d %d %t", s.start, s.end, s.need, s.noise, tc.start, tc.end, tc.need, tc.noise)
			}
			if tc.err == nil && s.f.kind != tc.kind {
				t.Errorf("kind %d, want %d", s.f.kind, tc.kind)
			}
		})
	}
}

// FuzzScanFrame checks the resynchronising frame reader: it never panics or
// reads outside its input, it agrees with decodeFrame on what decodeFrame
// accepts, it finds a valid frame behind any noise that holds no start code,
// and a frame cut short asks for exactly the bytes it lacks.
func FuzzScanFrame(f *testing.F) {
	for _, tc := range datasheetFrames {
		f.Add(tc.b, []byte{0xA5, 0x5A}, 0)
	}
	f.Add([]byte{0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00}, []byte{0x00, 0x00}, 3)
	f.Add([]byte{0x00, 0xFF, 0x12, 0x34, 0x00}, []byte{}, 1)
	f.Fuzz(func(t *testing.T, b, noise []byte, cut int) {
		in := b[:len(b):len(b)]
		s := scanFrame(in)
		if s.start < 0 || s.start > s.end || s.end > len(in) {
			t.Fatalf("start %d end %d for %d bytes", s.start, s.end, len(in))
		}
		if s.err == nil {
			if s.f.kind == kindInfo {
				enc, err := appendFrame(nil, s.f.tfi, s.f.data)
				if err != nil || len(enc) != s.size && len(enc)+3 != s.size { // normal or extended
					t.Fatalf("re-encoding: %d bytes, %v; size %d", len(enc), err, s.size)
				}
			}
		} else if !errors.Is(s.err, errShortFrame) && !errors.Is(s.err, ErrFrame) && !errors.Is(s.err, ErrChecksum) {
			t.Fatalf("unexpected error %v", s.err)
		}
		if fr, n, err := decodeFrame(in); err == nil {
			if s.err != nil || s.end != n || s.f.kind != fr.kind || s.f.tfi != fr.tfi || !bytes.Equal(s.f.data, fr.data) {
				t.Fatalf("decodeFrame took %d bytes, scanFrame: %+v", n, s)
			}
		}

		// A frame behind noise without a start code (no FF byte), with
		// anything after it.
		data := b
		if len(data) > maxLen-1 {
			data = data[:maxLen-1]
		}
		frame, err := appendFrame(nil, tfiChip, data)
		if err != nil {
			t.Fatal(err)
		}
		nz := bytes.ReplaceAll(noise, []byte{0xFF}, []byte{0xFE})
		buf := cat(nz, frame, b)
		s = scanFrame(buf[:len(buf):len(buf)])
		if s.err != nil || s.start != len(nz)+1 || s.f.kind != kindInfo || !bytes.Equal(s.f.data, data) || s.size != len(frame) || s.noise != nonZero(nz) {
			t.Fatalf("frame behind % X not found: %+v", nz, s)
		}
		// The same, cut short: all but the postamble is enough; less asks
		// for the whole frame once its header is in.
		if cut < 0 {
			cut = -cut
		}
		k := 1 + cut%(len(frame)-2) // 1 … len(frame)-2
		buf = cat(nz, frame[:k])
		s = scanFrame(buf[:len(buf):len(buf)])
		if !errors.Is(s.err, errShortFrame) || s.need != 0 && s.need != len(nz)+len(frame) {
			t.Fatalf("frame cut to %d of %d bytes: %+v", k, len(frame), s)
		}
		buf = cat(nz, frame[:len(frame)-1])
		if s = scanFrame(buf[:len(buf):len(buf)]); s.err != nil || !bytes.Equal(s.f.data, data) {
			t.Fatalf("frame without postamble: %+v", s)
		}
	})
}
