package pn532

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/bits"
	"strings"
	"sync"
	"testing"
	"time"

	"periph.io/x/conn/v3/conntest"
	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/i2c/i2ctest"
	"periph.io/x/conn/v3/physic"
	"periph.io/x/conn/v3/pin"
	"periph.io/x/conn/v3/spi"
	"periph.io/x/conn/v3/spi/spitest"
)

// Frames from the PN532 user manual (UM0701-02), as they go on the wire.
var (
	fACK  = []byte{0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00}
	fNACK = []byte{0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00}
	// SAMConfiguration: normal mode, timeout 0x14, IRQ used.
	fSAM  = []byte{0x00, 0x00, 0xFF, 0x05, 0xFB, 0xD4, 0x14, 0x01, 0x14, 0x01, 0x02, 0x00}
	fSAMr = []byte{0x00, 0x00, 0xFF, 0x02, 0xFE, 0xD5, 0x15, 0x16, 0x00}
	// GetFirmwareVersion: PN532 (0x32) v1.6, supports 14443A, 14443B, 18092.
	fFW  = []byte{0x00, 0x00, 0xFF, 0x02, 0xFE, 0xD4, 0x02, 0x2A, 0x00}
	fFWr = []byte{0x00, 0x00, 0xFF, 0x06, 0xFA, 0xD5, 0x03, 0x32, 0x01, 0x06, 0x07, 0xE8, 0x00}
	// RFConfiguration item 0x05 (MaxRetries): ATR 0xFF, PSL 0x01, passive 0x02.
	fRF  = []byte{0x00, 0x00, 0xFF, 0x06, 0xFA, 0xD4, 0x32, 0x05, 0xFF, 0x01, 0x02, 0xF3, 0x00}
	fRF5 = []byte{0x00, 0x00, 0xFF, 0x06, 0xFA, 0xD4, 0x32, 0x05, 0xFF, 0x01, 0x05, 0xF0, 0x00}
	fRFr = []byte{0x00, 0x00, 0xFF, 0x02, 0xFE, 0xD5, 0x33, 0xF8, 0x00}
	// RFConfiguration item 0x01: RF field off.
	fRFOff = []byte{0x00, 0x00, 0xFF, 0x04, 0xFC, 0xD4, 0x32, 0x01, 0x00, 0xF9, 0x00}
	// InListPassiveTarget: one target, 106 kbps type A.
	fList = []byte{0x00, 0x00, 0xFF, 0x04, 0xFC, 0xD4, 0x4A, 0x01, 0x00, 0xE1, 0x00}
	// No target.
	fListNone = []byte{0x00, 0x00, 0xFF, 0x03, 0xFD, 0xD5, 0x4B, 0x00, 0xE0, 0x00}
	// One target: Tg 1, SENS_RES 00 44, SEL_RES 20 (ISO 14443-4), 7-byte
	// synthetic UID 04 A1 B2 C3 D4 E5 F6, ATS TL 05: 78 80 70 02.
	fListATS = []byte{0x00, 0x00, 0xFF, 0x14, 0xEC, 0xD5, 0x4B, 0x01, 0x01, 0x00, 0x44, 0x20, 0x07,
		0x04, 0xA1, 0xB2, 0xC3, 0xD4, 0xE5, 0xF6, 0x05, 0x78, 0x80, 0x70, 0x02, 0x3B, 0x00}
	// InRelease target 1, and its answer (status 00).
	fRel  = []byte{0x00, 0x00, 0xFF, 0x03, 0xFD, 0xD4, 0x52, 0x01, 0xD9, 0x00}
	fRelr = []byte{0x00, 0x00, 0xFF, 0x03, 0xFD, 0xD5, 0x53, 0x00, 0xD8, 0x00}
	// PowerDown, wake-up on I²C (0x80), and its answer (status 00).
	fPD  = []byte{0x00, 0x00, 0xFF, 0x03, 0xFD, 0xD4, 0x16, 0x80, 0x96, 0x00}
	fPDr = []byte{0x00, 0x00, 0xFF, 0x03, 0xFD, 0xD5, 0x17, 0x00, 0x14, 0x00}
	// InDataExchange answer with status 0x01: the card did not answer.
	fDXTimeout = []byte{0x00, 0x00, 0xFF, 0x03, 0xFD, 0xD5, 0x41, 0x01, 0xE9, 0x00}
)

// tframe builds an information frame for the test scripts, independently of
// the codec under test.
func tframe(tfi byte, data ...byte) []byte {
	n := len(data) + 1
	f := []byte{0x00, 0x00, 0xFF}
	if n <= 255 {
		f = append(f, byte(n), byte(256-n))
	} else {
		hi, lo := byte(n>>8), byte(n)
		f = append(f, 0xFF, 0xFF, hi, lo, byte(0x100-int(hi+lo)&0xFF))
	}
	sum := int(tfi)
	for _, b := range data {
		sum += int(b)
	}
	f = append(f, tfi)
	f = append(f, data...)
	return append(f, byte(-sum), 0x00)
}

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

func seq(n int, start byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = start + byte(i)
	}
	return b
}

// I²C transactions at address 0x24.
const addr = 0x24

func iw(f []byte) i2ctest.IO { return i2ctest.IO{Addr: addr, W: f} }

// ist is a one-byte status read.
func ist(ready bool) i2ctest.IO {
	if ready {
		return i2ctest.IO{Addr: addr, R: []byte{0x01}}
	}
	return i2ctest.IO{Addr: addr, R: []byte{0x00}}
}

// ird is a read of n frame bytes after the status byte; the frame f is
// padded with zeros.
func ird(n int, f []byte) i2ctest.IO {
	r := make([]byte, 1+n)
	r[0] = 0x01
	copy(r[1:], f)
	return i2ctest.IO{Addr: addr, R: r}
}

// inr is a read of n frame bytes that finds the chip not ready: status byte
// 00, nothing handed over.
func inr(n int) i2ctest.IO { return i2ctest.IO{Addr: addr, R: make([]byte, 1+n)} }

func ops(groups ...[]i2ctest.IO) []i2ctest.IO {
	var o []i2ctest.IO
	for _, g := range groups {
		o = append(o, g...)
	}
	return o
}

// initI2C is the initialisation of a chip that answers at once.
var initI2C = []i2ctest.IO{
	iw(fACK),      // wake-up: ACK frame, aborts a command in progress
	ist(false),    // status: nothing left to discard
	iw(fSAM),      // SAMConfiguration 01 14 01
	ird(6, fACK),  // ACK
	ird(9, fSAMr), // D5 15
	iw(fFW),       // GetFirmwareVersion
	ird(6, fACK),  // ACK
	ird(13, fFWr), // D5 03 32 01 06 07: PN532 v1.6
	iw(fRF),       // RFConfiguration 05 FF 01 02: MaxRetries
	ird(6, fACK),  // ACK
	ird(9, fRFr),  // D5 33
}

// fakeClock replaces the time the driver measures and sleeps with.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	sleeps []time.Duration
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func (c *fakeClock) slept() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.sleeps...)
}

func useFakeTime(t *testing.T) *fakeClock {
	c := &fakeClock{now: time.Date(2025, 6, 1, 8, 0, 0, 0, time.UTC)}
	oldSleep, oldNow := doSleep, timeNow
	doSleep = func(ctx context.Context, d time.Duration) error {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		c.mu.Lock()
		c.now = c.now.Add(d)
		c.sleeps = append(c.sleeps, d)
		c.mu.Unlock()
		return nil
	}
	timeNow = c.Now
	t.Cleanup(func() { doSleep, timeNow = oldSleep, oldNow })
	return c
}

// newPlayback returns a device initialised over a playback of init followed
// by script.
func newPlayback(t *testing.T, opts *Opts, script ...[]i2ctest.IO) (*Dev, *i2ctest.Playback) {
	t.Helper()
	bus := &i2ctest.Playback{Ops: ops(append([][]i2ctest.IO{initI2C}, script...)...), DontPanic: true}
	d, err := NewI2C(bus, 0x24, opts)
	if err != nil {
		t.Fatalf("NewI2C: %v", err)
	}
	return d, bus
}

func closePlayback(t *testing.T, p interface{ Close() error }) {
	t.Helper()
	if err := p.Close(); err != nil {
		t.Error(err)
	}
}

func TestNewI2C(t *testing.T) {
	useFakeTime(t)
	d, bus := newPlayback(t, nil)
	closePlayback(t, bus)
	if got, want := d.Firmware(), (Firmware{IC: 0x32, Ver: 1, Rev: 6, Support: 7}); got != want {
		t.Errorf("Firmware() = %+v, want %+v", got, want)
	}
	if got, want := d.String(), "PN532{playback(36)}"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	h := d.Health()
	if h.State != "ok" || h.Firmware != "PN532 v1.6" || h.Errors != 0 || h.Resets != 0 {
		t.Errorf("Health() = %+v", h)
	}
}

// deadBus is an I²C bus where nothing answers.
type deadBus struct{ n int }

func (b *deadBus) String() string                  { return "dead" }
func (b *deadBus) SetSpeed(physic.Frequency) error { return nil }
func (b *deadBus) Tx(uint16, []byte, []byte) error {
	b.n++
	return errors.New("i2c: remote I/O error")
}

func TestNewI2CNoChip(t *testing.T) {
	clk := useFakeTime(t)
	bus := &deadBus{}
	rst := &fakePin{name: "RST"}
	_, err := NewI2C(bus, 0x24, &Opts{Reset: rst})
	if err == nil {
		t.Fatal("NewI2C succeeded without a chip")
	}
	if !strings.Contains(err.Error(), "no PN532 answering on dead(36)") || !strings.Contains(err.Error(), "remote I/O error") {
		t.Errorf("error %q does not say what is wrong", err)
	}
	// Wake-up (its error is expected from a sleeping chip), status, tried
	// three times in all; once more after the reset pulse.
	if bus.n != 8 {
		t.Errorf("%d transactions, want 8", bus.n)
	}
	if rst.Read() != gpio.High || rst.pulses != 1 {
		t.Errorf("reset line %s after %d pulses, want High after 1", rst.Read(), rst.pulses)
	}
	// No timeout was waited for: a bus error fails once it was tried
	// three times, 1 ms and 5 ms apart.
	var total time.Duration
	for _, s := range clk.slept() {
		total += s
	}
	if want := 2*(wakeDelay+busRetryDelays[0]+busRetryDelays[1]) + resetPulse + resetBoot; total != want {
		t.Errorf("slept %v, want %v", total, want)
	}
}

func TestNewI2CNotPN532(t *testing.T) {
	useFakeTime(t)
	script := append([]i2ctest.IO(nil), initI2C[:7]...)
	script = append(script, ird(13, tframe(0xD5, 0x03, 0x33, 0x01, 0x06, 0x07))) // IC 0x33
	bus := &i2ctest.Playback{Ops: script, DontPanic: true}
	_, err := NewI2C(bus, 0x24, nil)
	if !errors.Is(err, errNotPN532) || !strings.Contains(err.Error(), "IC 0x33") {
		t.Errorf("NewI2C = %v, want a not-a-PN532 error", err)
	}
	closePlayback(t, bus)
}

func TestGetFirmwareVersion(t *testing.T) {
	clk := useFakeTime(t)
	d, bus := newPlayback(t, nil, []i2ctest.IO{
		iw(fFW),       // 00 00 FF 02 FE D4 02 2A 00
		inr(6),        // read at once: status busy, nothing handed over
		ist(true),     // status: ready
		ird(6, fACK),  // 00 00 FF 00 FF 00
		inr(13),       // read at once: busy
		ist(false),    // status: busy
		ist(true),     // status: ready
		ird(13, fFWr), // 00 00 FF 06 FA D5 03 32 01 06 07 E8 00
	})
	before := len(clk.slept())
	fw, err := d.GetFirmwareVersion(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	closePlayback(t, bus)
	if fw != (Firmware{0x32, 1, 6, 7}) || fw.String() != "PN532 v1.6" {
		t.Errorf("firmware %+v %q", fw, fw)
	}
	// One PollInterval pause per busy read or status.
	if got := clk.slept()[before:]; len(got) != 3 || got[0] != DefaultOpts.PollInterval {
		t.Errorf("slept %v, want 3 × %v", got, DefaultOpts.PollInterval)
	}
}

func TestSAMConfiguration(t *testing.T) {
	useFakeTime(t)
	d, bus := newPlayback(t, nil, []i2ctest.IO{
		iw(fSAM),      // D4 14 01 14 01
		ird(6, fACK),  // ACK
		ird(9, fSAMr), // D5 15
	})
	if err := d.SAMConfiguration(context.Background()); err != nil {
		t.Fatal(err)
	}
	closePlayback(t, bus)
}

func TestSetMaxRetries(t *testing.T) {
	useFakeTime(t)
	d, bus := newPlayback(t, nil, []i2ctest.IO{
		iw(fRF5),     // D4 32 05 FF 01 05
		ird(6, fACK), // ACK
		ird(9, fRFr), // D5 33
		// Recover restores the new value: wake-up, SAM, firmware, RF.
		iw(fACK), ist(false),
		iw(fSAM), ird(6, fACK), ird(9, fSAMr),
		iw(fFW), ird(6, fACK), ird(13, fFWr),
		iw(fRF5),     // D4 32 05 FF 01 05 again
		ird(6, fACK), // ACK
		ird(9, fRFr), // D5 33
	})
	ctx := context.Background()
	if err := d.SetMaxRetries(ctx, 0xFF, 0x01, 0x05); err != nil {
		t.Fatal(err)
	}
	if err := d.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	closePlayback(t, bus)
	if h := d.Health(); h.Resets != 1 || h.State != "ok" {
		t.Errorf("Health() = %+v", h)
	}
}

func TestInListPassiveTarget(t *testing.T) {
	useFakeTime(t)
	d, bus := newPlayback(t, nil, []i2ctest.IO{
		iw(fList),         // D4 4A 01 00: one target, 106 kbps type A
		ird(6, fACK),      // ACK
		ist(true),         // status: ready
		ird(32, fListATS), // D5 4B 01 | 01 0044 20 07 <UID> 05 78807002
	})
	tg, err := d.InListPassiveTarget(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	closePlayback(t, bus)
	if tg == nil {
		t.Fatal("no target")
	}
	if tg.Tg != 1 || tg.SensRes != [2]byte{0x00, 0x44} || tg.SelRes != 0x20 || !tg.ISO14443_4() || tg.RandomUID() {
		t.Errorf("target %v", tg)
	}
	if !bytes.Equal(tg.UID, []byte{0x04, 0xA1, 0xB2, 0xC3, 0xD4, 0xE5, 0xF6}) {
		t.Errorf("UID % X", tg.UID)
	}
	if !bytes.Equal(tg.ATS, []byte{0x78, 0x80, 0x70, 0x02}) {
		t.Errorf("ATS % X", tg.ATS)
	}
	s := fmt.Sprintf("%v %+v %#v %s %v %+v %#v", tg, tg, tg, tg, *tg, *tg, *tg)
	if strings.Contains(strings.ToUpper(s), "A1") || strings.Contains(s, "161") {
		t.Errorf("printing a target shows its UID: %s", s)
	}
}

func TestInListPassiveTargetNone(t *testing.T) {
	useFakeTime(t)
	d, bus := newPlayback(t, nil, []i2ctest.IO{
		iw(fList),          // D4 4A 01 00
		ird(6, fACK),       // ACK
		ist(true),          // status: ready
		ird(32, fListNone), // D5 4B 00: no target
	})
	tg, err := d.InListPassiveTarget(context.Background())
	if tg != nil || err != nil {
		t.Fatalf("InListPassiveTarget = %v, %v; want nil, nil", tg, err)
	}
	closePlayback(t, bus)
}

func TestParseTarget(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
		ok   bool
	}{
		{"MIFARE Classic, random UID", []byte{0x01, 0x01, 0x00, 0x04, 0x08, 0x04, 0x08, 0x11, 0x22, 0x33}, true},
		{"UID cut", []byte{0x01, 0x01, 0x00, 0x04, 0x08, 0x04, 0x08, 0x11}, false},
		{"UID length 0", []byte{0x01, 0x01, 0x00, 0x04, 0x08, 0x00}, false},
		{"UID length 11", append([]byte{0x01, 0x01, 0x00, 0x04, 0x08, 0x0B}, seq(11, 1)...), false},
		{"ATS cut", []byte{0x01, 0x01, 0x00, 0x44, 0x20, 0x04, 0x08, 0x11, 0x22, 0x33, 0x05, 0x78}, false},
		{"ATS TL 0", []byte{0x01, 0x01, 0x00, 0x44, 0x20, 0x04, 0x08, 0x11, 0x22, 0x33, 0x00}, false},
		{"header cut", []byte{0x01, 0x01, 0x00}, false},
		{"empty", nil, false},
	} {
		tg, err := parseTarget(tc.b)
		if (err == nil) != tc.ok {
			t.Errorf("%s: parseTarget = %v, %v", tc.name, tg, err)
		}
		if tc.ok && (!tg.RandomUID() || tg.ISO14443_4() || tg.ATS != nil) {
			t.Errorf("%s: target %v", tc.name, tg)
		}
	}
}

// selectPPSE is SELECT 2PAY.SYS.DDF01.
var selectPPSE = []byte{0x00, 0xA4, 0x04, 0x00, 0x0E, 0x32, 0x50, 0x41, 0x59, 0x2E, 0x53, 0x59, 0x53, 0x2E, 0x44, 0x44, 0x46, 0x30, 0x31, 0x00}

func TestInDataExchangeChainedAnswer(t *testing.T) {
	useFakeTime(t)
	part1 := seq(100, 0x10)
	part2 := append(seq(20, 0x80), 0x90, 0x00)
	f1 := tframe(0xD5, cat([]byte{0x41, 0x40}, part1)...) // status MI: more to come
	f2 := tframe(0xD5, cat([]byte{0x41, 0x00}, part2)...)
	d, bus := newPlayback(t, nil, []i2ctest.IO{
		iw(tframe(0xD4, cat([]byte{0x40, 0x01}, selectPPSE)...)), // D4 40 01 <SELECT PPSE>
		ird(6, fACK),                 // ACK
		ist(true),                    // status: ready
		ird(64, f1[:64]),             // first 64 bytes of a 110-byte frame
		iw(fNACK),                    // NACK: send that frame again
		ist(true),                    // status: ready
		ird(len(f1), f1),             // D5 41 40 <100 bytes>, whole
		iw(tframe(0xD4, 0x40, 0x01)), // D4 40 01: the rest, please
		ird(6, fACK),                 // ACK
		ist(true),                    // status: ready
		ird(64, f2),                  // D5 41 00 <20 bytes> 90 00
	})
	got, err := d.InDataExchange(context.Background(), 1, selectPPSE)
	if err != nil {
		t.Fatal(err)
	}
	closePlayback(t, bus)
	if want := cat(part1, part2); !bytes.Equal(got, want) {
		t.Errorf("answer % X, want % X", got, want)
	}
	if h := d.Health(); h.Errors != 0 || h.State != "ok" {
		t.Errorf("re-reading a long frame counted as an error: %+v", h)
	}
}

// TestAnswerSizeLearned checks that answers are read in one transaction once
// their size is known: the second answer to the same kind of command is not
// read twice, and idle polls are read for a target.
func TestAnswerSizeLearned(t *testing.T) {
	useFakeTime(t)
	answer := append(seq(100, 0x10), 0x90, 0x00)
	f := tframe(0xD5, cat([]byte{0x41, 0x00}, answer)...) // 111 bytes
	cmd := iw(tframe(0xD4, cat([]byte{0x40, 0x01}, selectPPSE)...))
	d, bus := newPlayback(t, nil, []i2ctest.IO{
		cmd,                // D4 40 01 <SELECT PPSE>
		ird(6, fACK),       // ACK
		ist(true),          // status: ready
		ird(64, f[:64]),    // unknown size: 64 bytes of a 111-byte frame
		iw(fNACK),          // NACK: send that frame again
		ist(true),          // status: ready
		ird(len(f), f),     // whole
		cmd,                // the same command again
		ird(6, fACK),       // ACK
		ist(true),          // status: ready
		ird(len(f), f),     // read whole at once
		iw(fList),          // InListPassiveTarget
		ird(6, fACK),       // ACK
		ist(true),          // status: ready
		ird(32, fListATS),  // read for a target: 27-byte answer
		iw(fRel),           // InRelease 1
		ird(6, fACK),       // ACK
		ird(10, fRelr),     // D5 53 00
		iw(fList),          // InListPassiveTarget
		ird(6, fACK),       // ACK
		ist(true),          // status: ready
		ird(27, fListNone), // read for a target like the last one; the field is empty
		iw(fList),          // InListPassiveTarget
		ird(6, fACK),       // ACK
		ist(true),          // status: ready
		ird(27, fListNone), // an empty field changes nothing
	})
	ctx := context.Background()
	for i := range 2 {
		got, err := d.InDataExchange(ctx, 1, selectPPSE)
		if err != nil || !bytes.Equal(got, answer) {
			t.Fatalf("exchange %d: % X, %v", i, got, err)
		}
	}
	tg, err := d.InListPassiveTarget(ctx)
	if err != nil || tg == nil {
		t.Fatalf("InListPassiveTarget = %v, %v", tg, err)
	}
	if err := d.InRelease(ctx, tg.Tg); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if tg, err := d.InListPassiveTarget(ctx); tg != nil || err != nil {
			t.Fatalf("InListPassiveTarget = %v, %v", tg, err)
		}
	}
	closePlayback(t, bus)
}

func TestInDataExchangeChainedCommand(t *testing.T) {
	useFakeTime(t)
	apdu := cat([]byte{0x00, 0xD6, 0x00, 0x00, 0x00, 0x01, 0x27}, seq(295, 0)) // 302 bytes
	first := tframe(0xD4, cat([]byte{0x40, 0x41}, apdu[:262])...)              // Tg 1 | MI
	if first[3] != 0xFF || first[4] != 0xFF || first[5] != 0x01 || first[6] != 0x09 {
		t.Fatalf("test frame is not extended: % X", first[:8])
	}
	d, bus := newPlayback(t, nil, []i2ctest.IO{
		iw(first),                         // 00 00 FF FF FF 01 09 F6 D4 40 41 <262 bytes>: extended frame
		ird(6, fACK),                      // ACK
		ist(true),                         // status: ready
		ird(64, tframe(0xD5, 0x41, 0x00)), // D5 41 00: go on
		iw(tframe(0xD4, cat([]byte{0x40, 0x01}, apdu[262:])...)), // D4 40 01 <40 bytes>
		ird(6, fACK), // ACK
		ist(true),    // status: ready
		ird(64, tframe(0xD5, 0x41, 0x00, 0x90, 0x00)), // D5 41 00 90 00
	})
	got, err := d.InDataExchange(context.Background(), 1, apdu)
	if err != nil {
		t.Fatal(err)
	}
	closePlayback(t, bus)
	if !bytes.Equal(got, []byte{0x90, 0x00}) {
		t.Errorf("answer % X", got)
	}
}

func TestInDataExchangeCardGone(t *testing.T) {
	useFakeTime(t)
	d, bus := newPlayback(t, nil, []i2ctest.IO{
		iw(tframe(0xD4, cat([]byte{0x40, 0x01}, selectPPSE)...)), // D4 40 01 <SELECT PPSE>
		ird(6, fACK),        // ACK
		ist(true),           // status: ready
		ird(64, fDXTimeout), // D5 41 01: the card did not answer
	})
	_, err := d.InDataExchange(context.Background(), 1, selectPPSE)
	var se *StatusError
	if !errors.As(err, &se) || se.Code != 0x01 || !errors.Is(err, ErrCardRemoved) {
		t.Fatalf("InDataExchange = %v, want status 0x01 (card removed)", err)
	}
	if !strings.HasPrefix(err.Error(), "pn532: InDataExchange: ") {
		t.Errorf("error %q", err)
	}
	// A card that left is no fault of the chip: no resync, no error.
	closePlayback(t, bus)
	if h := d.Health(); h.State != "ok" || h.Errors != 0 {
		t.Errorf("Health() = %+v", h)
	}
	if (&StatusError{Code: 0x14}).CardRemoved() || errors.Is(&StatusError{Code: 0x27}, ErrCardRemoved) {
		t.Error("authentication or context errors reported as a removed card")
	}
}

func TestInRelease(t *testing.T) {
	useFakeTime(t)
	d, bus := newPlayback(t, nil, []i2ctest.IO{
		iw(fRel),       // D4 52 01
		ird(6, fACK),   // ACK
		ird(10, fRelr), // D5 53 00
	})
	if err := d.InRelease(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	closePlayback(t, bus)
}

func TestNACKThenResend(t *testing.T) {
	useFakeTime(t)
	d, bus := newPlayback(t, nil, []i2ctest.IO{
		iw(fFW),       // GetFirmwareVersion
		ird(6, fNACK), // NACK: the chip wants the command again
		iw(fFW),       // GetFirmwareVersion, again
		ird(6, fACK),  // ACK
		ird(13, fFWr), // D5 03 32 01 06 07
	})
	if _, err := d.GetFirmwareVersion(context.Background()); err != nil {
		t.Fatal(err)
	}
	closePlayback(t, bus)
	if h := d.Health(); h.Errors != 1 || h.State != "degraded" || !strings.Contains(h.LastError, "NACK") {
		t.Errorf("Health() = %+v", h)
	}
}

func TestChecksumThenNACK(t *testing.T) {
	clk := useFakeTime(t)
	bad := append([]byte(nil), fFWr...)
	bad[11] ^= 0x01 // DCS
	d, bus := newPlayback(t, nil, []i2ctest.IO{
		iw(fFW),       // GetFirmwareVersion
		ird(6, fACK),  // ACK
		ird(13, bad),  // D5 03 32 01 06 07 with a wrong DCS
		iw(fNACK),     // NACK: send it again
		ird(13, fFWr), // D5 03 32 01 06 07
	})
	if _, err := d.GetFirmwareVersion(context.Background()); err != nil {
		t.Fatal(err)
	}
	closePlayback(t, bus)
	h := d.Health()
	if h.Checksum != 1 || h.Errors != 1 || h.State != "degraded" {
		t.Errorf("Health() = %+v", h)
	}
	clk.advance(recentWindow)
	if h := d.Health(); h.State != "ok" || h.Checksum != 1 {
		t.Errorf("a minute later: Health() = %+v", h)
	}
}

func TestGarbageThenNACK(t *testing.T) {
	useFakeTime(t)
	d, bus := newPlayback(t, nil, []i2ctest.IO{
		iw(fList),    // InListPassiveTarget
		ird(6, fACK), // ACK
		ist(true),    // status: ready
		ird(32, []byte{0xA5, 0x5A, 0xFF, 0x13, 0x37, 0xC3}), // noise
		iw(fNACK),          // NACK: send it again
		ist(true),          // status: ready
		ird(32, fListNone), // D5 4B 00
	})
	tg, err := d.InListPassiveTarget(context.Background())
	if tg != nil || err != nil {
		t.Fatalf("InListPassiveTarget = %v, %v", tg, err)
	}
	closePlayback(t, bus)
	if h := d.Health(); h.Errors != 1 || h.Checksum != 0 || h.State != "degraded" {
		t.Errorf("Health() = %+v", h)
	}
}

func TestSyntaxErrorFrame(t *testing.T) {
	useFakeTime(t)
	d, bus := newPlayback(t, nil, []i2ctest.IO{
		iw(tframe(0xD4, 0x32, 0x05, 0xFF)), // RFConfiguration with a missing byte
		ird(6, fACK),                       // ACK
		ird(9, []byte{0x00, 0x00, 0xFF, 0x01, 0xFF, 0x7F, 0x81, 0x00}), // error frame
	})
	err := d.RFConfiguration(context.Background(), 0x05, []byte{0xFF})
	if !errors.Is(err, ErrSyntax) {
		t.Fatalf("RFConfiguration = %v, want ErrSyntax", err)
	}
	closePlayback(t, bus)
}

func TestTimeoutThenRecover(t *testing.T) {
	useFakeTime(t)
	rst := &fakePin{name: "RST"}
	opts := DefaultOpts
	opts.Timeout = 10 * time.Millisecond
	opts.Reset = rst
	d, bus := newPlayback(t, &opts, []i2ctest.IO{
		iw(fFW),      // GetFirmwareVersion
		ird(6, fACK), // ACK
		inr(13),      // t=0: the answer, read at once: busy
		ist(false),   // t=5ms: busy
		ist(false),   // t=10ms: busy; timeout
		iw(fACK),     // resync: ACK aborts the command
		ist(false),   // status: nothing to discard
	}, initI2C) // Recover: reset pulse, then initialisation
	_, err := d.GetFirmwareVersion(context.Background())
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("GetFirmwareVersion = %v, want ErrTimeout", err)
	}
	if h := d.Health(); h.Timeouts != 1 || h.Errors != 1 || h.State != "degraded" {
		t.Errorf("Health() = %+v", h)
	}
	if err := d.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	closePlayback(t, bus)
	if rst.Read() != gpio.High || rst.pulses != 1 {
		t.Errorf("reset line %s after %d pulses, want High after 1", rst.Read(), rst.pulses)
	}
	if h := d.Health(); h.Resets != 1 || h.State != "degraded" {
		t.Errorf("Health() = %+v", h)
	}
}

func TestPowerDownThenWake(t *testing.T) {
	useFakeTime(t)
	d, bus := newPlayback(t, nil, []i2ctest.IO{
		iw(fPD),       // PowerDown, wake-up on I²C
		ird(6, fACK),  // ACK
		ird(10, fPDr), // D5 17 00
	}, initI2C, // the next command wakes the chip and initialises it again
		[]i2ctest.IO{
			iw(fFW),       // GetFirmwareVersion
			ird(6, fACK),  // ACK
			ird(13, fFWr), // D5 03 32 01 06 07
		})
	ctx := context.Background()
	if err := d.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := d.GetFirmwareVersion(ctx); err != nil {
		t.Fatal(err)
	}
	closePlayback(t, bus)
	if h := d.Health(); h.State != "ok" || h.Resets != 0 {
		t.Errorf("Health() = %+v", h)
	}
}

func TestHalt(t *testing.T) {
	useFakeTime(t)
	d, bus := newPlayback(t, nil, []i2ctest.IO{
		iw(fACK),     // ACK: abort whatever runs
		ist(false),   // status: nothing to discard
		iw(fRFOff),   // RFConfiguration 01 00: field off
		ird(6, fACK), // ACK
		ird(9, fRFr), // D5 33
	}, initI2C, // the next command initialises the chip again
		[]i2ctest.IO{
			iw(fList),          // InListPassiveTarget
			ird(6, fACK),       // ACK
			ist(true),          // status: ready
			ird(32, fListNone), // D5 4B 00
		})
	if err := d.Halt(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.InListPassiveTarget(context.Background()); err != nil {
		t.Fatal(err)
	}
	closePlayback(t, bus)
}

// fakePin is a GPIO line for tests (periph's gpiotest would add a
// dependency).
type fakePin struct {
	mu     sync.Mutex
	name   string
	level  gpio.Level
	pulses int // high-to-low transitions driven
}

func (p *fakePin) String() string                        { return p.name }
func (p *fakePin) Halt() error                           { return nil }
func (p *fakePin) Name() string                          { return p.name }
func (p *fakePin) Number() int                           { return -1 }
func (p *fakePin) Function() string                      { return "" }
func (p *fakePin) In(gpio.Pull, gpio.Edge) error         { return nil }
func (p *fakePin) WaitForEdge(time.Duration) bool        { return false }
func (p *fakePin) Pull() gpio.Pull                       { return gpio.PullNoChange }
func (p *fakePin) DefaultPull() gpio.Pull                { return gpio.PullNoChange }
func (p *fakePin) PWM(gpio.Duty, physic.Frequency) error { return errors.New("no PWM") }

func (p *fakePin) Read() gpio.Level {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.level
}

func (p *fakePin) Out(l gpio.Level) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.level == gpio.High && l == gpio.Low {
		p.pulses++
	}
	p.level = l
	return nil
}

var _ gpio.PinIO = (*fakePin)(nil)
var _ pin.Pin = (*fakePin)(nil)

// scriptPin is an IRQ line whose levels follow a script, one per Read.
type scriptPin struct {
	fakePin
	t      *testing.T
	levels []gpio.Level
	waits  int
}

func (p *scriptPin) In(gpio.Pull, gpio.Edge) error { return nil }

func (p *scriptPin) Read() gpio.Level {
	if len(p.levels) == 0 {
		p.t.Error("IRQ line read more often than scripted")
		return gpio.High
	}
	l := p.levels[0]
	p.levels = p.levels[1:]
	return l
}

func (p *scriptPin) WaitForEdge(time.Duration) bool {
	p.waits++
	return true
}

func TestI2CWithIRQ(t *testing.T) {
	useFakeTime(t)
	H, L := gpio.High, gpio.Low
	irq := &scriptPin{t: t, levels: []gpio.Level{
		H,    // after the wake-up: nothing to discard
		L, L, // SAMConfiguration: ACK, answer
		L, L, // GetFirmwareVersion
		L, L, // RFConfiguration
		H, L, // GetFirmwareVersion: ACK after one edge
		H, H, L, // answer after a stale edge and a real one
	}}
	bus := &i2ctest.Playback{DontPanic: true, Ops: []i2ctest.IO{
		iw(fACK),      // wake-up: ACK frame
		iw(fSAM),      // SAMConfiguration
		ird(6, fACK),  // ACK (no status polls: the IRQ line says when)
		ird(9, fSAMr), // D5 15
		iw(fFW),       // GetFirmwareVersion
		ird(6, fACK),  // ACK
		ird(13, fFWr), // D5 03 32 01 06 07
		iw(fRF),       // RFConfiguration MaxRetries
		ird(6, fACK),  // ACK
		ird(9, fRFr),  // D5 33
		iw(fFW),       // GetFirmwareVersion
		ird(6, fACK),  // ACK
		ird(13, fFWr), // D5 03 32 01 06 07
	}}
	opts := DefaultOpts
	opts.IRQ = irq
	d, err := NewI2C(bus, 0x24, &opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.GetFirmwareVersion(context.Background()); err != nil {
		t.Fatal(err)
	}
	closePlayback(t, bus)
	if len(irq.levels) != 0 || irq.waits != 3 {
		t.Errorf("%d IRQ levels left, %d waits for an edge (want 0, 3)", len(irq.levels), irq.waits)
	}
}

// SPI transactions: operation byte, then the bytes least significant bit
// first, written and read with buffers of equal length.
func rev(b []byte) []byte {
	r := make([]byte, len(b))
	for i, x := range b {
		r[i] = bits.Reverse8(x)
	}
	return r
}

func sw(f []byte) conntest.IO {
	w := append([]byte{0x80}, rev(f)...) // 0x01 data write, reversed
	return conntest.IO{W: w, R: make([]byte, len(w))}
}

func sst(ready bool) conntest.IO {
	io := conntest.IO{W: []byte{0x40, 0x00}, R: []byte{0x00, 0x00}} // 0x02 status read
	if ready {
		io.R[1] = 0x80 // 0x01, reversed
	}
	return io
}

func srd(n int, f []byte) conntest.IO {
	w := make([]byte, 1+n)
	w[0] = 0xC0 // 0x03 data read, reversed
	r := make([]byte, 1+n)
	copy(r[1:], rev(f))
	return conntest.IO{W: w, R: r}
}

var initSPI = []conntest.IO{
	sw(fACK), sst(false), // wake-up, nothing to discard
	sw(fSAM), sst(true), srd(6, fACK), sst(true), srd(9, fSAMr), // SAMConfiguration
	sw(fFW), sst(true), srd(6, fACK), sst(true), srd(13, fFWr), // GetFirmwareVersion
	sw(fRF), sst(true), srd(6, fACK), sst(true), srd(9, fRFr), // RFConfiguration
}

// modePort records how the driver connects.
type modePort struct {
	*spitest.Playback
	f    physic.Frequency
	mode spi.Mode
	bits int
}

func (p *modePort) Connect(f physic.Frequency, mode spi.Mode, bits int) (spi.Conn, error) {
	p.f, p.mode, p.bits = f, mode, bits
	return p.Playback.Connect(f, mode, bits)
}

func TestSPI(t *testing.T) {
	useFakeTime(t)
	pb := &spitest.Playback{Playback: conntest.Playback{DontPanic: true, Ops: append(append([]conntest.IO(nil), initSPI...),
		// GetFirmwareVersion, byte for byte on the wire:
		conntest.IO{ // 01 | 00 00 FF 02 FE D4 02 2A 00, each byte reversed
			W: []byte{0x80, 0x00, 0x00, 0xFF, 0x40, 0x7F, 0x2B, 0x40, 0x54, 0x00},
			R: make([]byte, 10),
		},
		conntest.IO{W: []byte{0x40, 0x00}, R: []byte{0x00, 0x00}}, // 02: busy
		conntest.IO{W: []byte{0x40, 0x00}, R: []byte{0x00, 0x80}}, // 02: ready
		conntest.IO{ // 03 | ACK 00 00 FF 00 FF 00
			W: []byte{0xC0, 0, 0, 0, 0, 0, 0},
			R: []byte{0x00, 0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00},
		},
		conntest.IO{W: []byte{0x40, 0x00}, R: []byte{0x00, 0x80}}, // 02: ready
		conntest.IO{ // 03 | 00 00 FF 06 FA D5 03 32 01 06 07 E8 00, reversed
			W: []byte{0xC0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
			R: []byte{0x00, 0x00, 0x00, 0xFF, 0x60, 0x5F, 0xAB, 0xC0, 0x4C, 0x80, 0x60, 0xE0, 0x17, 0x00},
		},
	)}}
	port := &modePort{Playback: pb}
	d, err := NewSPI(port, nil)
	if err != nil {
		t.Fatal(err)
	}
	if port.mode != spi.Mode0 || port.bits != 8 || port.f != physic.MegaHertz {
		t.Errorf("Connect(%s, %s, %d), want 1MHz, Mode0, 8", port.f, port.mode, port.bits)
	}
	fw, err := d.GetFirmwareVersion(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if fw != (Firmware{0x32, 1, 6, 7}) {
		t.Errorf("firmware %+v", fw)
	}
	closePlayback(t, pb)
}

func TestSPIChecksumRecovery(t *testing.T) {
	useFakeTime(t)
	bad := append([]byte(nil), fListATS...)
	bad[4]++ // LCS
	pb := &spitest.Playback{Playback: conntest.Playback{DontPanic: true, Ops: append(append([]conntest.IO(nil), initSPI...),
		sw(fList),         // InListPassiveTarget
		sst(true),         // ready
		srd(6, fACK),      // ACK
		sst(true),         // ready
		srd(32, bad),      // target data with a wrong LCS
		sw(fNACK),         // NACK: again
		sst(true),         // ready
		srd(32, fListATS), // target data
		sw(fRel),          // InRelease 1
		sst(true),         // ready
		srd(6, fACK),      // ACK
		sst(true),         // ready
		srd(10, fRelr),    // D5 53 00
	)}}
	d, err := NewSPI(pb, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tg, err := d.InListPassiveTarget(ctx)
	if err != nil || tg == nil || len(tg.UID) != 7 {
		t.Fatalf("InListPassiveTarget = %v, %v", tg, err)
	}
	if err := d.InRelease(ctx, tg.Tg); err != nil {
		t.Fatal(err)
	}
	closePlayback(t, pb)
	if h := d.Health(); h.Checksum != 1 || h.Errors != 1 {
		t.Errorf("Health() = %+v", h)
	}
}
