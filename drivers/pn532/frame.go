package pn532

import "errors"

// This file is the pure frame codec of the PN532 host protocol (user manual
// UM0701-02 §6.2). It does no I/O.
//
//	normal      00 00 FF LEN LCS TFI PD0…PDn DCS 00       LEN = 1+n+1 ≤ 255
//	extended    00 00 FF FF FF LENm LENl LCS TFI PD0…PDn DCS 00
//	ACK         00 00 FF 00 FF 00
//	NACK        00 00 FF FF 00 00
//	error       00 00 FF 01 FF 7F 81 00   (application level: syntax error)
//
// LEN counts TFI and the data bytes; LEN+LCS ≡ 0 and TFI+PD0+…+PDn+DCS ≡ 0
// (mod 256). The leading 00 is the preamble; decodeFrame accepts any number of
// preamble bytes (at least the 00 of the start code) and nothing else before
// the start code. scanFrame, which the driver reads frames with, also skips
// noise before the start code and tolerates a missing postamble.

const (
	// tfiHost is the frame identifier of frames from the host to the chip.
	tfiHost = 0xD4
	// tfiChip is the frame identifier of frames from the chip to the host.
	tfiChip = 0xD5
	// tfiError is the frame identifier of the application error frame.
	tfiError = 0x7F

	// maxLen is the largest LEN (TFI plus data) the PN532 handles: its
	// buffer holds 265 bytes, e.g. TFI, 0x40, Tg and 262 bytes of DataOut.
	maxLen = 265
	// maxNormalLen is the largest LEN that fits a normal frame.
	maxNormalLen = 255
	// maxPreamble bounds the preamble bytes the decoder skips.
	maxPreamble = 8
	// maxFrameSize is the largest encoded frame the decoder accepts:
	// preamble, start code 00 FF, extended header, TFI and data, DCS and
	// postamble.
	maxFrameSize = maxPreamble + 2 + 5 + maxLen + 2
)

var (
	ackFrame  = []byte{0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00}
	nackFrame = []byte{0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00}
)

// errShortFrame reports that the buffer ends before the frame does.
var errShortFrame = errors.New("pn532: frame truncated")

// frameKind tells the four kinds of frame apart.
type frameKind uint8

const (
	kindInfo  frameKind = iota + 1 // normal or extended information frame
	kindACK                        // acknowledge
	kindNACK                       // not acknowledge: resend the last frame
	kindError                      // application error frame (syntax error)
)

// frame is a decoded frame.
type frame struct {
	kind frameKind
	tfi  byte
	// data holds PD0…PDn (command or response code first) of an
	// information frame. It aliases the decoded buffer.
	data []byte
}

// appendFrame appends to dst the information frame carrying tfi and data,
// as a normal frame when it fits and as an extended frame otherwise.
func appendFrame(dst []byte, tfi byte, data []byte) ([]byte, error) {
	n := len(data) + 1
	if n > maxLen {
		return dst, errors.New("pn532: frame data too long")
	}
	dst = append(dst, 0x00, 0x00, 0xFF)
	if n <= maxNormalLen {
		dst = append(dst, byte(n), -byte(n))
	} else {
		hi, lo := byte(n>>8), byte(n)
		dst = append(dst, 0xFF, 0xFF, hi, lo, -(hi + lo))
	}
	sum := tfi
	dst = append(dst, tfi)
	for _, b := range data {
		sum += b
	}
	dst = append(dst, data...)
	return append(dst, -sum, 0x00), nil
}

// frameSize returns how many bytes of b the frame starting at b[0] takes,
// preamble and postamble included, as soon as its header is in b. It returns
// errShortFrame when b ends within the header, ErrFrame when b does not start
// like a frame and ErrChecksum when a length checksum is wrong.
func frameSize(b []byte) (int, error) {
	i := 0
	for i < len(b) && b[i] == 0x00 {
		i++
		if i > maxPreamble+1 {
			return 0, ErrFrame
		}
	}
	if i == len(b) {
		return 0, errShortFrame
	}
	if i == 0 || b[i] != 0xFF {
		return 0, ErrFrame
	}
	p := i + 1 // LEN
	if len(b) < p+2 {
		return 0, errShortFrame
	}
	ln, lcs := b[p], b[p+1]
	switch {
	case ln == 0x00 && lcs == 0xFF: // ACK
		return p + 3, nil
	case ln == 0xFF && lcs == 0x00: // NACK
		return p + 3, nil
	case ln == 0xFF && lcs == 0xFF: // extended
		if len(b) < p+5 {
			return 0, errShortFrame
		}
		hi, lo, cs := b[p+2], b[p+3], b[p+4]
		if hi+lo+cs != 0 {
			return 0, ErrChecksum
		}
		n := int(hi)<<8 | int(lo)
		if n == 0 || n > maxLen {
			return 0, ErrFrame
		}
		return p + 5 + n + 2, nil
	default:
		if ln+lcs != 0 {
			return 0, ErrChecksum
		}
		if ln == 0 { // LEN counts TFI at least
			return 0, ErrFrame
		}
		return p + 2 + int(ln) + 2, nil
	}
}

// decodeFrame decodes the frame at the start of b and returns it with the
// number of bytes it takes. It is the strict decoder, the reference the tests
// hold scanFrame (which the driver reads with) to. Bytes after the frame are left alone. It never
// reads outside b; errors are errShortFrame (b ends within the frame),
// ErrChecksum and ErrFrame.
func decodeFrame(b []byte) (frame, int, error) {
	size, err := frameSize(b)
	if err != nil {
		return frame{}, 0, err
	}
	if len(b) < size {
		return frame{}, 0, errShortFrame
	}
	if b[size-1] != 0x00 { // postamble
		return frame{}, 0, ErrFrame
	}
	i := 0
	for b[i] == 0x00 {
		i++
	}
	p := i + 1 // LEN
	switch {
	case b[p] == 0x00 && b[p+1] == 0xFF:
		return frame{kind: kindACK}, size, nil
	case b[p] == 0xFF && b[p+1] == 0x00:
		return frame{kind: kindNACK}, size, nil
	}
	q := p + 2 // TFI of a normal frame
	if b[p] == 0xFF && b[p+1] == 0xFF {
		q = p + 5
	}
	body := b[q : size-1] // TFI, data, DCS
	var sum byte
	for _, c := range body {
		sum += c
	}
	if sum != 0 {
		return frame{}, 0, ErrChecksum
	}
	f := frame{kind: kindInfo, tfi: body[0], data: body[1 : len(body)-1]}
	switch f.tfi {
	case tfiHost, tfiChip:
	case tfiError:
		if len(f.data) != 0 {
			return frame{}, 0, ErrFrame
		}
		f.kind = kindError
	default:
		return frame{}, 0, ErrFrame
	}
	return f, size, nil
}

// scan is what scanFrame found in a buffer.
type scan struct {
	f frame // the frame, when err is nil
	// start is the offset of the frame's start code 00 FF: the bytes before
	// it are preamble or noise. Without a frame it is len(b), or the offset
	// of a trailing 00 that may begin a start code.
	start int
	// end is the offset just after the frame; a postamble cut off by the
	// end of the buffer is not waited for.
	end int
	// size is the frame's length on the wire with one preamble byte and
	// its postamble, once its header is known.
	size int
	// need, with errShortFrame, is how many bytes the buffer must hold for
	// the whole frame (postamble included); 0 until the header is in.
	need int
	// found reports a frame header: a start code followed by a length
	// that checks (an ACK, a NACK or the header of an information frame,
	// or the FF FF that starts an extended one). f.kind is then kindACK,
	// kindNACK, or kindInfo (kindError once decoded) even when err is set.
	found bool
	// noise reports bytes other than preamble zeros before the frame, or
	// anywhere in a buffer without a frame.
	noise bool
	// err is nil for a valid frame, errShortFrame when the buffer ends
	// before the frame does, ErrChecksum when the header checks but the
	// data checksum does not (or, found unset, when the only start code
	// had a bad length checksum: a damaged header), and ErrFrame for a
	// buffer without a frame header or a frame that checks but breaks the
	// rules (unknown TFI).
	err error
}

// scanFrame finds the first frame in b. Unlike decodeFrame it resynchronises:
// it skips any bytes before a start code 00 FF, and a start code whose
// length checksum is wrong (noise that looks like one, or a header damaged on
// the way) is skipped too. The postamble carries nothing and may be missing
// or damaged. It never reads outside b.
func scanFrame(b []byte) scan {
	var s scan
	damaged := false // a start code with a bad length checksum was skipped
	for i := 0; ; {
		j := startCode(b, i)
		if j < 0 {
			s.noise = s.noise || nonZero(b[i:])
			s.start, s.end, s.err = len(b), len(b), ErrFrame
			switch {
			case damaged:
				s.err = ErrChecksum
			case len(b) > i && b[len(b)-1] == 0x00:
				// Perhaps the first byte of a start code.
				s.start, s.end, s.err = len(b)-1, len(b)-1, errShortFrame
			}
			return s
		}
		s.noise = s.noise || nonZero(b[i:j])
		s.start, s.end = j, j
		p := j + 2 // LEN
		if len(b) < p+2 {
			s.err = errShortFrame
			return s
		}
		ln, lcs := b[p], b[p+1]
		var n, q int // LEN, offset of TFI
		switch {
		case ln == 0x00 && lcs == 0xFF, ln == 0xFF && lcs == 0x00:
			s.f = frame{kind: kindACK}
			if ln == 0xFF {
				s.f.kind = kindNACK
			}
			s.found, s.size, s.end = true, 6, min(p+3, len(b))
			return s
		case ln == 0xFF && lcs == 0xFF:
			if len(b) < p+5 {
				// An extended frame, its length not in b yet.
				s.found, s.f.kind, s.err = true, kindInfo, errShortFrame
				return s
			}
			hi, lo, cs := b[p+2], b[p+3], b[p+4]
			n, q = int(hi)<<8|int(lo), p+5
			if hi+lo+cs != 0 || n == 0 || n > maxLen {
				i, damaged = j+1, true // not a frame after all: look further
				continue
			}
		default:
			n, q = int(ln), p+2
			if ln+lcs != 0 || ln == 0 {
				i, damaged = j+1, true
				continue
			}
		}
		s.found, s.f.kind = true, kindInfo
		full := q + n + 2 // after TFI, data, DCS and postamble
		s.size = full - j + 1
		if len(b) < full-1 { // up to DCS at least
			s.need, s.err = full, errShortFrame
			return s
		}
		s.end = min(full, len(b))
		body := b[q : q+n+1] // TFI, data, DCS
		var sum byte
		for _, c := range body {
			sum += c
		}
		if sum != 0 {
			s.err = ErrChecksum
			return s
		}
		s.f = frame{kind: kindInfo, tfi: body[0], data: body[1 : len(body)-1]}
		switch s.f.tfi {
		case tfiHost, tfiChip:
		case tfiError:
			if len(s.f.data) != 0 {
				s.err = ErrFrame
			}
			s.f.kind = kindError
		default:
			s.err = ErrFrame
		}
		return s
	}
}

// startCode returns the offset of the first start code 00 FF in b at or
// after i, or -1.
func startCode(b []byte, i int) int {
	for ; i+1 < len(b); i++ {
		if b[i] == 0x00 && b[i+1] == 0xFF {
			return i
		}
	}
	return -1
}

func nonZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return true
		}
	}
	return false
}
