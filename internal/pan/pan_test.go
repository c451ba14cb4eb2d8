package pan

import (
	"encoding/json"
	"strings"
	"testing"

	"station.dev/agent/drivers/emv"
)

// Synthetic card numbers that pass Luhn; none is a real card.
const (
	unionpay = "6228480000000007" // 16 digits
	visa13   = "4000000000006"    // 13 digits
	long19   = "6212340000000000004"
)

func TestLuhnNumbersAreSynthetic(t *testing.T) {
	for _, n := range []string{unionpay, visa13, long19} {
		if !emv.LuhnValid(n) {
			t.Fatalf("%s fails Luhn: fix the test data", n)
		}
	}
	if emv.LuhnValid("6228480000000008") {
		t.Fatal("Luhn accepts a wrong check digit")
	}
}

func TestIn(t *testing.T) {
	for s, want := range map[string]bool{
		unionpay:                         true,
		visa13:                           true,
		long19:                           true,
		"6228 4800 0000 0007":            true, // split by spaces
		"6228-4800-0000-0007":            true, // by dashes
		"paid with 6228480000000007 ok":  true,
		"card:6228480000000007;":         true,
		"6228 4800 0000 0007 12":         true, // followed by other digits
		"ref 99 6228 4800 0000 0007":     true,
		"6228480000000008":               false, // fails Luhn
		"62284800000000070":              false, // 17 glued digits failing Luhn
		"000000000000000000000000000000": false, // 30 digits: not a PAN, whatever Luhn says
		"6228  4800  0000  0007":         true,
		"6228 - 4800 - 0000 - 0007":      true,
		"6228    4800    0000    0007":   false, // four spaces: four short numbers
		"13800138000":                    false, // a phone number
		"2025-03-01":                     false,
		"":                               false,
	} {
		if got := In(s); got != want {
			t.Errorf("In(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestFind(t *testing.T) {
	for body, want := range map[string]string{
		`{"note":"6228 4800 0000 0007"}`:                        "data.note",
		`{"amount":6228480000000007}`:                           "data.amount", // a JSON number
		`{"amount":6.228480000000007e15}`:                       "data.amount",
		`{"items":[{"sku":"a"},{"sku":"6228-4800-0000-0007"}]}`: "data.items[1].sku",
		`{"6228480000000007":"x"}`:                              "data.6228480000000007",
		`{"deep":{"er":[[["4000000000006"]]]}}`:                 "data.deep.er[0][0][0]",
		`{"amount":1234,"phone":"13800138000","ok":true}`:       "",
	} {
		dec := json.NewDecoder(strings.NewReader(body))
		dec.UseNumber()
		var v map[string]any
		if err := dec.Decode(&v); err != nil {
			t.Fatal(err)
		}
		got, _ := Find(v, "data")
		if got != want {
			t.Errorf("Find(%s) = %q, want %q", body, got, want)
		}
	}
}
