package display_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/i2c/i2ctest"

	"station.dev/agent/drivers/display"
	"station.dev/agent/drivers/display/displaysim"
)

// The driver against the emulated panel: the same code that runs on a
// station.

// newSim returns a Display over a new emulated panel, and the panel.
func newSim(t *testing.T) (*display.Display, *displaysim.Panel) {
	t.Helper()
	p := displaysim.New()
	d, err := display.NewI2C(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	return d, p
}

func TestNoPanelAtAltAddress(t *testing.T) {
	// Nothing at 0x3D on the emulated bus.
	_, err := display.NewI2C(displaysim.New(), &display.Opts{Addr: display.AltAddr})
	if err == nil || !strings.HasPrefix(err.Error(), "display: no panel at SimSSD1306 0x3d: ") {
		t.Fatalf("display.NewI2C(sim, 0x3d) = %v", err)
	}
}

func TestRotated(t *testing.T) {
	rec := &i2ctest.Record{Bus: displaysim.New()}
	if _, err := display.NewI2C(rec, &display.Opts{Rotated: true}); err != nil {
		t.Fatal(err)
	}
	// Segment remap 0xA0 and COM scan 0xC0 instead of 0xA1 and 0xC8.
	if w := rec.Ops[0].W; w[5] != 0xA0 || w[6] != 0xC0 {
		t.Fatalf("init % x", w)
	}
}

func TestShowText(t *testing.T) {
	d, p := newSim(t)
	if !p.On() {
		t.Fatal("panel off after NewI2C")
	}
	lines := display.StatusLines(display.Status{StationID: "huayang-xianglong-01", Online: true, Queue: 12, Last: "recorded"})
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
	d, p := newSim(t)
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
	d, p := newSim(t)
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
	d, p := newSim(t)
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
}

func TestSmallPanel(t *testing.T) {
	pb := &i2ctest.Record{Bus: displaysim.New()}
	d, err := display.NewI2C(pb, &display.Opts{Width: 128, Height: 32})
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

// flaky is a bus that fails on demand. Its Close is counted: the Display
// must never close a bus it was given.
type flaky struct {
	i2c.Bus
	fail   bool
	closed int
}

func (f *flaky) Close() error { f.closed++; return nil }

func (f *flaky) Tx(addr uint16, w, r []byte) error {
	if f.fail {
		return errors.New("i2c: remote I/O error")
	}
	return f.Bus.Tx(addr, w, r)
}

func TestHealthHaltClose(t *testing.T) {
	p := displaysim.New()
	bus := &flaky{Bus: p}
	d, err := display.NewI2C(bus, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s, r := d.Health(); s != display.HealthOK || r != "" {
		t.Fatalf("health %s %q", s, r)
	}
	bus.fail = true
	if err := d.Show("x"); err == nil {
		t.Fatal("Show succeeded on a failing bus")
	}
	if s, r := d.Health(); s != display.HealthDegraded || r != "display: draw: i2c: remote I/O error" {
		t.Fatalf("health %s %q", s, r)
	}
	bus.fail = false
	// The same text again: the panel never got it, so it must be sent in
	// full although the driver's copy of the picture already holds it.
	if err := d.Show("x"); err != nil {
		t.Fatal(err)
	}
	if s, _ := d.Health(); s != display.HealthOK {
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
	if bus.closed != 0 {
		t.Fatal("the display closed a bus it did not open")
	}
	if err := d.Show("after"); err == nil {
		t.Fatal("Show after Close succeeded")
	}
	if s, _ := d.Health(); s != display.HealthDown {
		t.Fatalf("health after Close %s", s)
	}
}
