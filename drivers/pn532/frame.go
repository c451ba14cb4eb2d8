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
// (mod 256). The leading 00 is the preamble; the decoder accepts any number of
// preamble bytes (at least the 00 of the start code) and nothing else before
// the start code.

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
// number of bytes it takes. Bytes after the frame are left alone. It never
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
