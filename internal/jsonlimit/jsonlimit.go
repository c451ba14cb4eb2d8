// Package jsonlimit bounds the nesting depth of JSON input before it reaches a decoder.
//
// encoding/json recurses once per nesting level and keeps a frame per level: a few kilobytes of
// "[[[[…" make it allocate hundreds of megabytes. Depth scans the bytes once, without decoding
// them, and NewReader does the same on a stream, so hostile input is refused before any decoder
// sees it.
package jsonlimit

import (
	"errors"
	"fmt"
	"io"
)

// DefaultMaxDepth is the nesting depth station input is held to: far more than any command, record
// or configuration needs.
const DefaultMaxDepth = 32

// ErrTooDeep is returned for input nested deeper than allowed.
var ErrTooDeep = errors.New("jsonlimit: JSON nested too deeply")

// scanner follows just enough of the JSON grammar to count nesting: strings (with escapes) and
// brackets. It does not validate; the decoder that follows does.
type scanner struct {
	max      int
	depth    int
	inString bool
	escaped  bool
}

func (s *scanner) feed(b []byte) error {
	for _, c := range b {
		if s.inString {
			switch {
			case s.escaped:
				s.escaped = false
			case c == '\\':
				s.escaped = true
			case c == '"':
				s.inString = false
			}
			continue
		}
		switch c {
		case '"':
			s.inString = true
		case '{', '[':
			s.depth++
			if s.depth > s.max {
				return fmt.Errorf("%w: more than %d levels", ErrTooDeep, s.max)
			}
		case '}', ']':
			if s.depth > 0 {
				s.depth--
			}
		}
	}
	return nil
}

// Check returns ErrTooDeep (wrapped) if b nests objects and arrays more than max levels deep.
func Check(b []byte, max int) error {
	s := scanner{max: max}
	return s.feed(b)
}

// NewReader returns a reader of r that fails with ErrTooDeep (wrapped) as soon as the JSON it
// carries nests more than max levels deep: a decoder reading from it stops there.
func NewReader(r io.Reader, max int) io.Reader {
	return &reader{r: r, s: scanner{max: max}}
}

type reader struct {
	r   io.Reader
	s   scanner
	err error
}

func (d *reader) Read(p []byte) (int, error) {
	if d.err != nil {
		return 0, d.err
	}
	n, err := d.r.Read(p)
	if e := d.s.feed(p[:n]); e != nil {
		d.err = e
		return 0, e
	}
	return n, err
}
