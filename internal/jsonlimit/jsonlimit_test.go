package jsonlimit_test

import (
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"

	"station.dev/agent/internal/jsonlimit"
)

func TestCheck(t *testing.T) {
	cases := []struct {
		in   string
		max  int
		deep bool
	}{
		{`{}`, 1, false},
		{`{"a":[1,{"b":2}]}`, 3, false},
		{`{"a":[1,{"b":2}]}`, 2, true},
		{`{"a":"[[[[[[[[[[[[[[["}`, 1, false},            // brackets in strings do not count
		{`{"a":"\"[[[[[[[[[[[[[[","b":{}}`, 2, false},    // nor after an escaped quote
		{`{"a":"\\"}` + strings.Repeat("[", 5), 3, true}, // an escaped backslash ends the escape
		{strings.Repeat("[", 33) + strings.Repeat("]", 33), 32, true},
		{strings.Repeat("[", 32) + strings.Repeat("]", 32), 32, false},
		{`]]]]]]{`, 1, false}, // stray closers do not go below zero
	}
	for _, c := range cases {
		err := jsonlimit.Check([]byte(c.in), c.max)
		if (err != nil) != c.deep {
			t.Errorf("Check(%q, %d) = %v, want deep %v", c.in, c.max, err, c.deep)
		}
		if err != nil && !errors.Is(err, jsonlimit.ErrTooDeep) {
			t.Errorf("Check(%q) = %v, not ErrTooDeep", c.in, err)
		}
	}
}

func TestReaderStopsTheDecoder(t *testing.T) {
	deep := strings.Repeat(`{"a":`, 100000) + "1" + strings.Repeat("}", 100000)
	var v any
	err := json.NewDecoder(jsonlimit.NewReader(strings.NewReader(deep), 32)).Decode(&v)
	if !errors.Is(err, jsonlimit.ErrTooDeep) {
		t.Fatalf("Decode = %v, want ErrTooDeep", err)
	}
	ok := `{"a":{"b":[1,2,3]}}`
	b, err := io.ReadAll(jsonlimit.NewReader(strings.NewReader(ok), 32))
	if err != nil || string(b) != ok {
		t.Fatalf("ReadAll = %q, %v", b, err)
	}
}
