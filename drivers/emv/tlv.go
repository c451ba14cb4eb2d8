package emv

import (
	"errors"
	"fmt"
)

// MaxDepth is how deeply constructed objects may nest before Parse gives
// up. EMV templates nest at most four levels (6F > A5 > BF0C > 61 > 4F);
// the limit leaves room for that and stops a hostile card from driving the
// parser into deep recursion.
const MaxDepth = 8

// maxTagBytes is the longest tag Parse accepts. Tag numbers are kept in a
// uint32, so a tag may use at most four bytes.
const maxTagBytes = 4

// TLV is one BER-TLV data object.
type TLV struct {
	// Tag is the tag with all its bytes, big-endian: 0x5A, 0x9F38, 0xBF0C.
	Tag uint32
	// Value is the object's value. For a constructed object it holds the
	// encoded children. Parse returns values that share the input's memory.
	Value []byte
	// Children holds the parsed objects inside a constructed object, and is
	// nil for a primitive one.
	Children []TLV
}

// Constructed reports whether the tag marks a constructed object (bit 0x20
// of the tag's first byte).
func (t TLV) Constructed() bool {
	return tagConstructed(t.Tag)
}

func tagConstructed(tag uint32) bool {
	first := tag
	for first > 0xFF {
		first >>= 8
	}
	return first&0x20 != 0
}

// errTLV is wrapped by every Parse error so that callers inside the package
// can classify them as malformed card data.
var errTLV = errors.New("bad BER-TLV")

// Parse decodes a sequence of BER-TLV objects as found in EMV responses.
//
// Tags may span several bytes (first byte with its low five bits set, then
// bytes while bit 0x80 is set, at most four bytes in all). Lengths use the
// short form or the long forms 81 xx and 82 xx xx; longer and indefinite
// forms are rejected. 00 and FF bytes between objects are padding and are
// skipped. Constructed objects are parsed recursively, at most MaxDepth
// levels deep. Parse never reads outside b; values in the result alias b.
func Parse(b []byte) ([]TLV, error) {
	tlvs, err := parse(b, 0)
	if err != nil {
		return nil, fmt.Errorf("emv: %w", err)
	}
	return tlvs, nil
}

func parse(b []byte, depth int) ([]TLV, error) {
	if depth >= MaxDepth {
		return nil, fmt.Errorf("%w: nested deeper than %d levels", errTLV, MaxDepth)
	}
	var out []TLV
	i := 0
	for i < len(b) {
		if b[i] == 0x00 || b[i] == 0xFF {
			i++
			continue
		}
		tag, n, err := readTag(b[i:])
		if err != nil {
			return nil, fmt.Errorf("%w at offset %d", err, i)
		}
		i += n
		l, n, err := readLength(b[i:])
		if err != nil {
			return nil, fmt.Errorf("%w for tag %X", err, tag)
		}
		i += n
		if l > len(b)-i {
			return nil, fmt.Errorf("%w: tag %X length %d exceeds the %d bytes left", errTLV, tag, l, len(b)-i)
		}
		t := TLV{Tag: tag, Value: b[i : i+l : i+l]}
		i += l
		if tagConstructed(tag) {
			children, err := parse(t.Value, depth+1)
			if err != nil {
				return nil, err
			}
			if children == nil {
				children = []TLV{}
			}
			t.Children = children
		}
		out = append(out, t)
	}
	return out, nil
}

// readTag decodes the tag at the start of b and returns it with the number
// of bytes it used.
func readTag(b []byte) (uint32, int, error) {
	if len(b) == 0 {
		return 0, 0, fmt.Errorf("%w: missing tag", errTLV)
	}
	tag := uint32(b[0])
	if b[0]&0x1F != 0x1F {
		return tag, 1, nil
	}
	for n := 1; ; n++ {
		if n >= len(b) {
			return 0, 0, fmt.Errorf("%w: truncated tag", errTLV)
		}
		if n >= maxTagBytes {
			return 0, 0, fmt.Errorf("%w: tag longer than %d bytes", errTLV, maxTagBytes)
		}
		tag = tag<<8 | uint32(b[n])
		if b[n]&0x80 == 0 {
			return tag, n + 1, nil
		}
	}
}

// readLength decodes the length at the start of b and returns it with the
// number of bytes it used.
func readLength(b []byte) (int, int, error) {
	if len(b) == 0 {
		return 0, 0, fmt.Errorf("%w: missing length", errTLV)
	}
	switch first := b[0]; {
	case first < 0x80:
		return int(first), 1, nil
	case first == 0x81:
		if len(b) < 2 {
			return 0, 0, fmt.Errorf("%w: truncated length", errTLV)
		}
		return int(b[1]), 2, nil
	case first == 0x82:
		if len(b) < 3 {
			return 0, 0, fmt.Errorf("%w: truncated length", errTLV)
		}
		return int(b[1])<<8 | int(b[2]), 3, nil
	case first == 0x80:
		return 0, 0, fmt.Errorf("%w: indefinite length", errTLV)
	default:
		return 0, 0, fmt.Errorf("%w: length form %02X not supported", errTLV, first)
	}
}

// Find returns the first object with the given tag, searching depth-first
// in document order (an object before its children, its children before
// its next sibling).
func Find(tlvs []TLV, tag uint32) (TLV, bool) {
	for _, t := range tlvs {
		if t.Tag == tag {
			return t, true
		}
		if found, ok := Find(t.Children, tag); ok {
			return found, true
		}
	}
	return TLV{}, false
}

// findAll appends to dst every object with the given tag, depth-first in
// document order; it does not look inside a match.
func findAll(dst []TLV, tlvs []TLV, tag uint32) []TLV {
	for _, t := range tlvs {
		if t.Tag == tag {
			dst = append(dst, t)
			continue
		}
		dst = findAll(dst, t.Children, tag)
	}
	return dst
}
