package displaysim_test

import (
	"strings"
	"testing"

	"station.dev/agent/drivers/display"
	"station.dev/agent/drivers/display/displaysim"
)

// TestReadsBackEveryCharacter draws all of printable ASCII with the real
// driver and reads it back.
func TestReadsBackEveryCharacter(t *testing.T) {
	p := displaysim.New()
	if p.On() || p.DataBytes() != 0 {
		t.Fatal("a new panel is not off and blank")
	}
	d, err := display.NewI2C(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	var all []string
	for c := 0x20; c < 0x7F; c += 21 {
		var b strings.Builder
		for i := c; i < c+21 && i < 0x7F; i++ {
			b.WriteByte(byte(i))
		}
		all = append(all, b.String())
	}
	if err := d.Show(all...); err != nil {
		t.Fatal(err)
	}
	got := p.Lines()
	for i, l := range all {
		if want := strings.TrimRight(l, " "); got[i] != want {
			t.Errorf("line %d: %q, want %q", i, got[i], want)
		}
	}
}

func TestRefusesOtherTransactions(t *testing.T) {
	p := displaysim.New()
	for _, tc := range []struct {
		addr uint16
		w, r []byte
		want string
	}{
		{0x3D, []byte{0x00, 0xAF}, nil, "displaysim: no device answers at 0x3d"},
		{0x3C, []byte{0x00}, make([]byte, 1), "displaysim: unsupported transaction (write 1, read 1 bytes)"},
		{0x3C, []byte{0x80, 0xAF}, nil, "displaysim: unknown control byte 0x80"},
		{0x3C, []byte{0x00, 0x81}, nil, "displaysim: command 0x81 lacks arguments"},
	} {
		if err := p.Tx(tc.addr, tc.w, tc.r); err == nil || err.Error() != tc.want {
			t.Errorf("Tx(0x%02x, % x) = %v, want %q", tc.addr, tc.w, err, tc.want)
		}
	}
	if p.On() {
		t.Fatal("a refused command turned the panel on")
	}
}
