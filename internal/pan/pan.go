// Package pan finds card numbers (PANs) in values decoded from JSON, so that they can be refused
// before they are stored: a PAN never leaves the reader code (DESIGN §3.4).
//
// A value reads as a PAN when it holds a run of 13 to 19 digits, alone or grouped by up to three
// spaces or dashes ("6228 4800 0000 0007", "6228-4800-…"), that passes the Luhn check. Runs
// are looked for anywhere in a string ("paid with 6228480000000007"), and a run of groups is
// tried group by group, so a number followed by other digits ("6228 4800 0000 0007 12") is found
// too; digits glued to more digits are one number, and a longer number is not a PAN.
package pan

import (
	"encoding/json"
	"sort"
	"strconv"
	"strings"

	"station.dev/agent/drivers/emv"
)

// Lengths of a PAN, in digits.
const (
	MinDigits = 13
	MaxDigits = 19
)

// Find walks v (a value decoded by encoding/json, with or without UseNumber) and returns the
// path of the first value, or object key, that reads as a PAN: "data.items[2].note", with root
// as the path of v itself. Object keys are visited in sorted order, so the answer is stable.
func Find(v any, root string) (path string, found bool) {
	switch v := v.(type) {
	case string:
		return root, In(v)
	case json.Number:
		if f, err := v.Float64(); err == nil && strings.ContainsAny(string(v), "eE") {
			// 6.228480000000007e15 is the number 6228480000000007.
			return root, In(string(v)) || In(strconv.FormatFloat(f, 'f', -1, 64))
		}
		return root, In(string(v))
	case float64:
		return root, In(strconv.FormatFloat(v, 'f', -1, 64))
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			p := root + "." + k
			if In(k) {
				return p, true
			}
			if p, ok := Find(v[k], p); ok {
				return p, true
			}
		}
	case []any:
		for i, e := range v {
			if p, ok := Find(e, root+"["+strconv.Itoa(i)+"]"); ok {
				return p, true
			}
		}
	}
	return "", false
}

// In reports whether s holds a PAN.
func In(s string) bool {
	for i := 0; i < len(s); {
		if !isDigit(s[i]) {
			i++
			continue
		}
		// A run: groups of digits joined by up to three spaces or dashes.
		var groups []string
		j := i
		for {
			k := j
			for k < len(s) && isDigit(s[k]) {
				k++
			}
			groups = append(groups, s[j:k])
			// Up to three separators join groups ("6228 4800", "6228 - 4800").
			sep := k
			for sep < len(s) && sep-k < 3 && (s[sep] == ' ' || s[sep] == '-') {
				sep++
			}
			if sep > k && sep-k <= 3 && sep < len(s) && isDigit(s[sep]) {
				j = sep
				continue
			}
			j = k
			break
		}
		if runHasPAN(groups) {
			return true
		}
		i = j
	}
	return false
}

// runHasPAN tries every span of consecutive groups of a run.
func runHasPAN(groups []string) bool {
	for a := range groups {
		var digits []byte
		for b := a; b < len(groups); b++ {
			digits = append(digits, groups[b]...)
			if len(digits) > MaxDigits {
				break
			}
			if len(digits) >= MinDigits && emv.LuhnValid(string(digits)) {
				return true
			}
		}
	}
	return false
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
