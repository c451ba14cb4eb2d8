package hw

import (
	"errors"
	"testing"
)

func TestResolve(t *testing.T) {
	numbered := []busRef{
		{name: "I2C20", number: 20},
		{name: "FT232H", number: -1},
		{name: "I2C1", aliases: []string{"/dev/i2c-1"}, number: 1},
	}
	unnumbered := []busRef{{name: "USB-B", number: -1}, {name: "USB-A", number: -1}}
	for _, tc := range []struct {
		name string
		refs []busRef
		want string
		ok   bool
	}{
		{"", numbered, "I2C1", true}, // the lowest number
		{"", unnumbered, "USB-A", true},
		{"", nil, "", false},
		{"I2C1", numbered, "I2C1", true},
		{"/dev/i2c-1", numbered, "I2C1", true},
		{"1", numbered, "I2C1", true},
		{"20", numbered, "I2C20", true},
		{"FT232H", numbered, "FT232H", true},
		{"-1", numbered, "", false},
		{"2", numbered, "", false},
		{"i2c1", numbered, "", false},
	} {
		got, ok := resolve(tc.name, tc.refs)
		if got != tc.want || ok != tc.ok {
			t.Errorf("resolve(%q) = %q, %t; want %q, %t", tc.name, got, ok, tc.want, tc.ok)
		}
	}
}

// TestHostError: when periph's host drivers failed to load, each Open says
// so (New keeps the error).
func TestHostError(t *testing.T) {
	s := New(Config{Display: Display{Enabled: true}})
	s.hostErr = errors.New("bcm283x: permission denied")
	defer s.Close()
	_, err := s.OpenDisplay()
	if err == nil || err.Error() != "hw: display: loading periph's host drivers: bcm283x: permission denied" {
		t.Fatalf("OpenDisplay = %v", err)
	}
}
