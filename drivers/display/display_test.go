package display

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/i2c/i2ctest"
)

// initOps returns the transactions of NewI2C for a blank 128×64 panel at
// addr: the controller's set-up, then the first (full) picture, page by page.
func initOps(addr uint16) []i2ctest.IO {
	ops := []i2ctest.IO{{Addr: addr, W: []byte{
		0x00,       // control byte: commands
		0xAE,       // display off
		0xD3, 0x00, // display offset 0
		0x40,       // start line 0
		0xA1,       // segment remap: column 127 is SEG0
		0xC8,       // COM scan from COM[N-1]
		0xDA, 0x12, // COM pins: alternative, no left/right remap
		0x81, 0xFF, // contrast
		0xA4,       // show the memory
		0xA6,       // normal (not inverted)
		0xD5, 0xF0, // clock divide ratio and oscillator frequency
		0x8D, 0x14, // charge pump on
		0xD9, 0xF1, // pre-charge period
		0xDB, 0x40, // VCOMH deselect level
		0x2E,     // scrolling off
		0xA8, 63, // multiplex ratio: 64 lines
		0x20, 0x00, // horizontal addressing
		0x21, 0, 127, // columns 0…127
		0x22, 0, 7, // pages 0…7
		0xAF, // display on
	}}}
	for page := byte(0); page < 8; page++ {
		// Page start address, column 0 (low and high nibbles), then the
		// page's 128 columns, blank.
		ops = append(ops,
			i2ctest.IO{Addr: addr, W: []byte{0x00, 0xB0 | page, 0x00, 0x10}},
			i2ctest.IO{Addr: addr, W: append([]byte{0x40}, make([]byte, 128)...)},
		)
	}
	return ops
}

func TestNewI2CPlayback(t *testing.T) {
	pb := &i2ctest.Playback{Ops: initOps(DefaultAddr)}
	d, err := NewI2C(pb, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := pb.Close(); err != nil {
		t.Fatal(err)
	}
	if got := d.String(); got != "display{ssd1306 128x64 0x3c}" {
		t.Fatalf("String() = %q", got)
	}
	if l, c := d.Size(); l != 8 || c != 21 {
		t.Fatalf("Size() = %d, %d", l, c)
	}
	// Showing the same (blank) picture again sends nothing: Playback would
	// panic on an unexpected transaction.
	if err := d.Show(); err != nil {
		t.Fatal(err)
	}
}

func TestAltAddress(t *testing.T) {
	pb := &i2ctest.Playback{Ops: initOps(AltAddr)}
	d, err := NewI2C(pb, &Opts{Addr: AltAddr})
	if err != nil {
		t.Fatal(err)
	}
	if err := pb.Close(); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(d.String(), " 0x3d}") {
		t.Fatalf("String() = %q", d.String())
	}
	if _, err := NewI2C(pb, &Opts{Addr: 0x50}); err == nil || err.Error() != "display: address 0x50 is not an SSD1306 address" {
		t.Fatalf("NewI2C(0x50) = %v", err)
	}
	// Nothing at 0x3D on the emulated bus.
	_, err = NewI2C(NewSimPanel(), &Opts{Addr: AltAddr})
	if err == nil || !strings.HasPrefix(err.Error(), "display: no panel at SimSSD1306 0x3d: ") {
		t.Fatalf("NewI2C(sim, 0x3d) = %v", err)
	}
}

func TestRotated(t *testing.T) {
	rec := &i2ctest.Record{Bus: NewSimPanel()}
	if _, err := NewI2C(rec, &Opts{Rotated: true}); err != nil {
		t.Fatal(err)
	}
	// Segment remap 0xA0 and COM scan 0xC0 instead of 0xA1 and 0xC8.
	if w := rec.Ops[0].W; w[5] != 0xA0 || w[6] != 0xC0 {
		t.Fatalf("init % x", w)
	}
}

func TestShowText(t *testing.T) {
	d, p, err := NewSim(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !p.On() {
		t.Fatal("panel off after NewI2C")
	}
	lines := StatusLines(Status{StationID: "huayang-xianglong-01", Online: true, Queue: 12, Last: "recorded"})
	if err := d.Show(lines...); err != nil {
		t.Fatal(err)
	}
	want := []string{"huayang-xianglong-01", "online   queue 12", "last: recorded", "", "", "", "", ""}
	if got := p.Lines(); !reflect.DeepEqual(got, want) {
		t.Fatalf("panel shows\n%q\nwant\n%q", got, want)
	}
	if got := d.Lines(); !reflect.DeepEqual(got, want[:3]) {
		t.Fatalf("Lines() = %q", got)
	}
}

func TestGlyphPixels(t *testing.T) {
	d, p, err := NewSim(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Show("", " A"); err != nil {
		t.Fatal(err)
	}
	// 'A' in the second cell of the second line: x 6…10, y 8…15.
	want := []string{
		".###.",
		"#...#",
		"#...#",
		"#...#",
		"#####",
		"#...#",
		"#...#",
		".....",
	}
	for y, row := range want {
		for x, c := range row {
			if p.Pixel(6+x, 8+y) != (c == '#') {
				t.Fatalf("pixel %d,%d: want %c", 6+x, 8+y, c)
			}
		}
	}
	// The cell's spacing column and the first cell stay blank.
	for y := 8; y < 16; y++ {
		for _, x := range []int{0, 1, 2, 3, 4, 5, 11} {
			if p.Pixel(x, y) {
				t.Fatalf("pixel %d,%d lit", x, y)
			}
		}
	}
}

func TestShowSendsOnlyChanges(t *testing.T) {
	d, p, err := NewSim(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Show("online", "queue 3"); err != nil {
		t.Fatal(err)
	}
	n := p.DataBytes()
	if err := d.Show("online", "queue 3"); err != nil {
		t.Fatal(err)
	}
	if p.DataBytes() != n {
		t.Fatal("an unchanged picture was sent again")
	}
	if err := d.Show("online", "queue 4"); err != nil {
		t.Fatal(err)
	}
	// One character changed: a few columns of one page, not a page.
	if sent := p.DataBytes() - n; sent == 0 || sent > 6 {
		t.Fatalf("%d bytes sent for one character", sent)
	}
	if got := p.Lines()[1]; got != "queue 4" {
		t.Fatalf("line 1 %q", got)
	}
}

func TestCutAndOverflow(t *testing.T) {
	d, p, err := NewSim(nil)
	if err != nil {
		t.Fatal(err)
	}
	long := "abcdefghijklmnopqrstuvwxyz"
	lines := []string{long, "2", "3", "4", "5", "6", "7", "8", "9", "10"}
	if err := d.Show(lines...); err != nil {
		t.Fatal(err)
	}
	want := []string{long[:21], "2", "3", "4", "5", "6", "7", "8"}
	if got := d.Lines(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Lines() = %q", got)
	}
	if got := p.Lines(); !reflect.DeepEqual(got, want) {
		t.Fatalf("panel %q", got)
	}
	// Outside printable ASCII: '?'; cutting counts characters, not bytes.
	if err := d.Show("温度 25°C"); err != nil {
		t.Fatal(err)
	}
	if got := p.Lines()[0]; got != "?? 25?C" {
		t.Fatalf("panel %q", got)
	}
	if got := cut("温度温度", 3); got != "温度温" {
		t.Fatalf("cut = %q", got)
	}
}

func TestSmallPanel(t *testing.T) {
	pb := &i2ctest.Record{Bus: NewSimPanel()}
	d, err := NewI2C(pb, &Opts{Width: 128, Height: 32})
	if err != nil {
		t.Fatal(err)
	}
	if l, c := d.Size(); l != 4 || c != 21 {
		t.Fatalf("Size() = %d, %d", l, c)
	}
	if err := d.Show("1", "2", "3", "4", "5"); err != nil {
		t.Fatal(err)
	}
	if got := d.Lines(); len(got) != 4 {
		t.Fatalf("Lines() = %q", got)
	}
}

// flaky is a bus that fails on demand.
type flaky struct {
	i2c.Bus
	fail bool
}

func (f *flaky) Tx(addr uint16, w, r []byte) error {
	if f.fail {
		return errors.New("i2c: remote I/O error")
	}
	return f.Bus.Tx(addr, w, r)
}

func TestHealthHaltClose(t *testing.T) {
	p := NewSimPanel()
	bus := &flaky{Bus: p}
	d, err := NewI2C(bus, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s, r := d.Health(); s != HealthOK || r != "" {
		t.Fatalf("health %s %q", s, r)
	}
	bus.fail = true
	if err := d.Show("x"); err == nil {
		t.Fatal("Show succeeded on a failing bus")
	}
	if s, r := d.Health(); s != HealthDegraded || r != "display: draw: i2c: remote I/O error" {
		t.Fatalf("health %s %q", s, r)
	}
	bus.fail = false
	// The same text again: the panel never got it, so it must be sent in
	// full although the driver's copy of the picture already holds it.
	if err := d.Show("x"); err != nil {
		t.Fatal(err)
	}
	if s, _ := d.Health(); s != HealthOK {
		t.Fatalf("health after recovery %s", s)
	}
	if got := p.Lines()[0]; got != "x" {
		t.Fatalf("panel shows %q after recovery", got)
	}
	if err := d.Halt(); err != nil {
		t.Fatal(err)
	}
	if p.On() {
		t.Fatal("panel on after Halt")
	}
	if err := d.Show("z"); err != nil {
		t.Fatal(err)
	}
	if !p.On() || p.Lines()[0] != "z" {
		t.Fatalf("after Show: on %t, %q", p.On(), p.Lines()[0])
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if p.On() {
		t.Fatal("panel on after Close")
	}
	if err := d.Show("after"); err == nil {
		t.Fatal("Show after Close succeeded")
	}
	if s, _ := d.Health(); s != HealthDown {
		t.Fatalf("health after Close %s", s)
	}
}

func TestOpenUnknownBus(t *testing.T) {
	if _, err := Open("no-such-bus", nil); err == nil || !strings.HasPrefix(err.Error(), `display: i2c bus "no-such-bus": `) {
		t.Fatalf("Open = %v", err)
	}
}

func TestFontGlyphsDistinct(t *testing.T) {
	seen := map[[glyphW]byte]rune{}
	for i, g := range font {
		r := rune(0x20 + i)
		if prev, ok := seen[g]; ok {
			t.Errorf("%q and %q look the same", prev, r)
		}
		seen[g] = r
		for _, col := range g {
			if col&0x80 != 0 {
				t.Errorf("%q uses the cell's spacing row", r)
			}
		}
	}
}
