package pn532

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"periph.io/x/conn/v3"
	"periph.io/x/conn/v3/conntest"
	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/i2c/i2ctest"
	"periph.io/x/conn/v3/physic"
	"periph.io/x/conn/v3/spi"
)

// Transient faults, one test per kind, each on every bus: I²C and SPI, with
// status polls and with the IRQ line, and UART. A fault must not fail the
// command: the driver resends what the chip cannot have acted on, asks for a
// frame again with a NACK where it has, and resynchronises on the start code.
// Each test logs the latency the fault adds: the bus time of the extra
// transactions (I²C at 100 kHz, SPI at 1 MHz, UART at 115200 baud) plus the
// waits, from the fake clock.
//
// The I²C and SPI scripts are written once, as the host's transactions, and
// rendered for each bus: see op.

// Behaviour the scripts depend on, as documented (Opts, package doc).
const (
	tACKWait  = 100 * time.Millisecond // the ACK is waited for this long before the command is sent again
	tPoll     = 5 * time.Millisecond   // DefaultOpts.PollInterval
	tEdgeWait = 50 * time.Millisecond  // one wait for the IRQ edge
)

// busCfg is a way to wire the chip.
type busCfg int

const (
	cfgI2C    busCfg = iota // I²C, status polls
	cfgI2CIRQ               // I²C with the IRQ line
	cfgSPI                  // SPI, status polls
	cfgSPIIRQ               // SPI with the IRQ line
)

var busCfgs = []busCfg{cfgI2C, cfgI2CIRQ, cfgSPI, cfgSPIIRQ}

func (c busCfg) String() string {
	return [...]string{"I2C", "I2C+IRQ", "SPI", "SPI+IRQ"}[c]
}

func (c busCfg) spi() bool { return c == cfgSPI || c == cfgSPIIRQ }
func (c busCfg) irq() bool { return c == cfgI2CIRQ || c == cfgSPIIRQ }

// op is one step of a bus-neutral script: a transaction of the host, or a
// wait. render turns it into the transactions (and IRQ levels) of a bus:
//
//   - W: a write. I²C: one write; SPI: 01 and the frame.
//   - R: a read of n frame bytes; the chip hands f over (zero padded). With
//     IRQ the line is low first; SPI without IRQ polls the status (ready)
//     first; I²C without IRQ reads at once when n ≤ 16 (the status byte
//     comes with the read) and polls the status first otherwise.
//   - Busy: a read, prepared as R is, that finds the chip not ready (I²C
//     status byte 0, SPI all zeros): nothing is handed over.
//   - Idle: one readiness check that says nothing is ready (IRQ high, or a
//     status poll).
//   - Wait: the chip has nothing for d, and the driver gives up waiting:
//     the checks it makes meanwhile, for a read of n bytes.
//   - Fail: the transaction fails on the bus (I²C: address not
//     acknowledged); the chip never sees it.
type op struct {
	kind opKind
	f    []byte
	n    int
	d    time.Duration
	fail bool
	poll bool // Fail(R) only: the status poll before the read fails, not the read
}

type opKind int

const (
	opWrite opKind = iota + 1
	opRead
	opBusy
	opIdle
	opWait
)

func W(f []byte) op                  { return op{kind: opWrite, f: f} }
func R(n int, f []byte) op           { return op{kind: opRead, n: n, f: f} }
func Busy(n int) op                  { return op{kind: opBusy, n: n} }
func Idle() op                       { return op{kind: opIdle} }
func Wait(n int, d time.Duration) op { return op{kind: opWait, n: n, d: d} }
func Fail(o op) op                   { o.fail = true; return o }

// FailPoll is a read whose status poll fails first (buses without IRQ).
func FailPoll(n int, f []byte) op { return op{kind: opRead, n: n, f: f, fail: true, poll: true} }

// initScript is the initialisation of a chip that answers at once.
var initScript = []op{
	W(fACK), Idle(), // wake-up: ACK frame; nothing to discard
	W(fSAM), R(6, fACK), R(9, fSAMr), // SAMConfiguration
	W(fFW), R(6, fACK), R(13, fFWr), // GetFirmwareVersion
	W(fRF), R(6, fACK), R(9, fRFr), // RFConfiguration MaxRetries
}

// fwScript is GetFirmwareVersion without faults.
var fwScript = []op{W(fFW), R(6, fACK), R(13, fFWr)}

// rendered is a script for one bus.
type rendered struct {
	i2c    []i2ctest.IO
	spi    []conntest.IO
	fails  map[int]bool // transactions that fail
	levels []gpio.Level // IRQ line, one per read of it
}

func (r *rendered) tx(i i2ctest.IO, s conntest.IO, fail bool) {
	if fail {
		r.fails[len(r.i2c)+len(r.spi)] = true
	}
	if s.W != nil {
		r.spi = append(r.spi, s)
	} else {
		r.i2c = append(r.i2c, i)
	}
}

func render(c busCfg, script []op) rendered {
	r := rendered{fails: map[int]bool{}}
	var none i2ctest.IO
	var snone conntest.IO
	write := func(f []byte, fail bool) {
		if c.spi() {
			r.tx(none, sw(f), fail)
		} else {
			r.tx(iw(f), snone, fail)
		}
	}
	status := func(ready, fail bool) {
		if c.spi() {
			r.tx(none, sst(ready), fail)
		} else {
			r.tx(ist(ready), snone, fail)
		}
	}
	read := func(n int, f []byte, ready, fail bool) {
		switch {
		case c.spi():
			r.tx(none, srd(n, f), fail) // zeros when f is nil: not ready
		case ready:
			r.tx(ird(n, f), snone, fail)
		default:
			r.tx(inr(n), snone, fail)
		}
	}
	// direct: the next read of a wait is tried without a status poll (I²C
	// without IRQ): true at the start of each wait, false once a read
	// found the chip busy.
	// A failed read is tried again as it was prepared.
	direct := true
	prepare := func(n int, pollFails bool) {
		switch {
		case c.irq():
			r.levels = append(r.levels, gpio.Low)
		case c == cfgI2C && direct && n <= 16:
		default:
			status(true, pollFails)
			if pollFails {
				status(true, false) // polled again
			}
		}
	}
	for _, o := range script {
		switch o.kind {
		case opWrite:
			write(o.f, o.fail)
			direct = true
		case opRead:
			prepare(o.n, o.fail && o.poll)
			read(o.n, o.f, true, o.fail && !o.poll)
			if !o.fail || o.poll {
				direct = true // the next read starts another wait
			}
		case opBusy:
			prepare(o.n, false)
			read(o.n, nil, false, false)
			direct = false
		case opIdle:
			if c.irq() {
				r.levels = append(r.levels, gpio.High)
			} else {
				status(false, false)
			}
		case opWait:
			t := time.Duration(0)
			if c == cfgI2C && direct && o.n <= 16 {
				read(o.n, nil, false, false)
				t = min(tPoll, o.d)
			}
			for {
				if c.irq() {
					r.levels = append(r.levels, gpio.High)
				} else {
					status(false, false)
				}
				if t >= o.d {
					break
				}
				if c.irq() {
					t += min(tEdgeWait, o.d-t)
				} else {
					t += min(tPoll, o.d-t)
				}
			}
			direct = false
		}
	}
	return r
}

// levelPin is an IRQ line that follows a script of levels, one per Read.
// WaitForEdge returns at once when the next level is low, and otherwise
// lets the fake clock run for its timeout: no edge came.
type levelPin struct {
	fakePin
	t      *testing.T
	clk    *fakeClock
	levels []gpio.Level
}

func (p *levelPin) In(gpio.Pull, gpio.Edge) error { return nil }

func (p *levelPin) Read() gpio.Level {
	if len(p.levels) == 0 {
		p.t.Error("IRQ line read more often than scripted")
		return gpio.High
	}
	l := p.levels[0]
	p.levels = p.levels[1:]
	return l
}

func (p *levelPin) WaitForEdge(d time.Duration) bool {
	if len(p.levels) > 0 && p.levels[0] == gpio.Low {
		return true
	}
	p.clk.advance(d)
	return false
}

// errBus is what a failing transaction returns.
var errBus = errors.New("remote I/O error (address not acknowledged)")

// busMeter counts the bus time of the transactions after start.
type busMeter struct {
	on   bool
	time time.Duration
}

// faultI2C is a playback whose marked transactions fail after they were
// checked against the script.
type faultI2C struct {
	*i2ctest.Playback
	fails map[int]bool
	m     *busMeter
}

func (b *faultI2C) Tx(addr uint16, w, r []byte) error {
	b.Playback.Lock()
	n := b.Playback.Count
	b.Playback.Unlock()
	if b.m.on { // START, address, bytes with their ACK bits, STOP at 100 kHz
		b.m.time += time.Duration(9*(1+len(w)+len(r))+2) * 10 * time.Microsecond
	}
	if err := b.Playback.Tx(addr, w, r); err != nil {
		return err
	}
	if b.fails[n] {
		clear(r)
		return errBus
	}
	return nil
}

// faultSPI is the same for SPI.
type faultSPI struct {
	conntest.Playback
	fails map[int]bool
	m     *busMeter
}

func (p *faultSPI) String() string                                            { return "playback" }
func (p *faultSPI) LimitSpeed(physic.Frequency) error                         { return nil }
func (p *faultSPI) Duplex() conn.Duplex                                       { return conn.Full }
func (p *faultSPI) TxPackets(pk []spi.Packet) error                           { return errors.New("not used") }
func (p *faultSPI) Connect(physic.Frequency, spi.Mode, int) (spi.Conn, error) { return p, nil }

func (p *faultSPI) Tx(w, r []byte) error {
	p.Playback.Lock()
	n := p.Playback.Count
	p.Playback.Unlock()
	if p.m.on { // 1 MHz
		p.m.time += time.Duration(8*len(w)) * time.Microsecond
	}
	if err := p.Playback.Tx(w, r); err != nil {
		return err
	}
	if p.fails[n] {
		clear(r)
		return errBus
	}
	return nil
}

// faultRun is the outcome of running a script.
type faultRun struct {
	err    error
	waited time.Duration // fake clock time
	bus    time.Duration // bus time
	health Health
}

func (r faultRun) total() time.Duration { return r.waited + r.bus }

// runScript initialises a chip on bus c, then runs fn against script and
// checks that the script was used up.
func runScript(t *testing.T, c busCfg, tweak func(*Opts), script []op, fn func(context.Context, *Dev) error) faultRun {
	t.Helper()
	clk := useFakeTime(t)
	whole := render(c, append(append([]op(nil), initScript...), script...))
	opts := DefaultOpts
	var pin *levelPin
	if c.irq() {
		pin = &levelPin{t: t, clk: clk, levels: whole.levels}
		opts.IRQ = pin
	}
	if tweak != nil {
		tweak(&opts)
	}
	m := &busMeter{}
	var closer interface{ Close() error }
	var d *Dev
	var err error
	if c.spi() {
		p := &faultSPI{Playback: conntest.Playback{Ops: whole.spi, DontPanic: true}, fails: whole.fails, m: m}
		closer = p
		d, err = NewSPI(p, &opts)
	} else {
		p := &faultI2C{Playback: &i2ctest.Playback{Ops: whole.i2c, DontPanic: true}, fails: whole.fails, m: m}
		closer = p
		d, err = NewI2C(p, 0x24, &opts)
	}
	if err != nil {
		t.Fatalf("%s: initialisation: %v", c, err)
	}
	start := clk.Now()
	m.on = true
	err = fn(context.Background(), d)
	run := faultRun{err: err, waited: clk.Now().Sub(start), bus: m.time, health: d.Health()}
	if cerr := closer.Close(); cerr != nil {
		t.Errorf("%s: %v", c, cerr)
	}
	if pin != nil && len(pin.levels) != 0 {
		t.Errorf("%s: %d IRQ levels left", c, len(pin.levels))
	}
	return run
}

func getFW(ctx context.Context, d *Dev) error {
	fw, err := d.GetFirmwareVersion(ctx)
	if err == nil && fw != (Firmware{0x32, 1, 6, 7}) {
		err = fmt.Errorf("firmware %+v", fw)
	}
	return err
}

// faultCase is a fault on the buses it applies to.
type faultCase struct {
	name   string
	buses  []busCfg // nil: all four
	script []op
	// base is the same exchange without the fault; nil: fwScript.
	base []op
	// fn is the command; nil: GetFirmwareVersion.
	fn func(context.Context, *Dev) error
	// errors is how many anomalies Health counts afterwards.
	errors uint64
	// within bounds the latency the fault adds.
	within time.Duration
}

// runFaults runs GetFirmwareVersion through each case on each bus and checks
// that the fault costs nothing but a little time.
func runFaults(t *testing.T, cases []faultCase) {
	t.Helper()
	for _, fc := range cases {
		buses := fc.buses
		if buses == nil {
			buses = busCfgs
		}
		for _, c := range buses {
			t.Run(fc.name+"/"+c.String(), func(t *testing.T) {
				clean := fc.base
				if clean == nil {
					clean = fwScript
				}
				fn := fc.fn
				if fn == nil {
					fn = getFW
				}
				base := runScript(t, c, nil, clean, fn)
				if base.err != nil {
					t.Fatalf("without the fault: %v", base.err)
				}
				got := runScript(t, c, nil, fc.script, fn)
				if got.err != nil {
					t.Fatalf("%v: the fault cost the command", got.err)
				}
				added := got.total() - base.total()
				t.Logf("%s on %s: recovered, +%.1f ms (bus +%.2f ms, waits +%.1f ms)", fc.name, c,
					ms(added), ms(got.bus-base.bus), ms(got.waited-base.waited))
				if added > fc.within {
					t.Errorf("the fault added %v, want at most %v", added, fc.within)
				}
				if got.health.Errors != fc.errors {
					t.Errorf("Health() = %+v, want %d anomalies counted", got.health, fc.errors)
				}
			})
		}
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// TestFaultLostACK: the chip skips the ACK and answers at once. On I²C and
// SPI the read meant for the ACK cuts the answer: it is asked for again.
func TestFaultLostACK(t *testing.T) {
	runFaults(t, []faultCase{{
		name: "lost ACK",
		script: []op{
			W(fFW),         // GetFirmwareVersion
			R(6, fFWr[:6]), // the ACK read gets the start of the answer: D5 …
			W(fNACK),       // NACK: send the answer again
			R(13, fFWr),    // D5 03 32 01 06 07, whole
		},
		errors: 1, within: 5 * time.Millisecond,
	}, {
		name: "lost ACK, extended answer",
		script: []op{
			W(longCmd),                     // D4 40 01 00 B0 01 2C: READ BINARY of 300 bytes
			R(6, longAnswer[:6]),           // 00 00 FF FF FF 01: an extended answer, its length cut off
			W(fNACK),                       // NACK: send the answer again
			R(64, longAnswer[:64]),         // read as an answer of unknown size: cut
			W(fNACK),                       // NACK
			R(len(longAnswer), longAnswer), // whole
		},
		base:   []op{W(longCmd), R(6, fACK), R(64, longAnswer[:64]), W(fNACK), R(len(longAnswer), longAnswer)},
		fn:     readLong,
		errors: 1, within: 5 * time.Millisecond,
	}})
}

// longCmd and longAnswer are an exchange whose answer needs an extended
// frame: READ BINARY of 256 bytes, answered with 256 bytes and 90 00.
var (
	longCmd    = tframe(0xD4, 0x40, 0x01, 0x00, 0xB0, 0x00, 0x00)
	longData   = append(seq(256, 0x20), 0x90, 0x00)
	longAnswer = tframe(0xD5, cat([]byte{0x41, 0x00}, longData)...)
)

func readLong(ctx context.Context, d *Dev) error {
	got, err := d.InDataExchange(ctx, 1, []byte{0x00, 0xB0, 0x00, 0x00})
	if err == nil && !bytes.Equal(got, longData) {
		err = fmt.Errorf("answer of %d bytes", len(got))
	}
	return err
}

// TestFaultGarbledACK: the ACK arrives damaged; the answer follows.
func TestFaultGarbledACK(t *testing.T) {
	runFaults(t, []faultCase{{
		name: "garbled ACK",
		script: []op{
			W(fFW), // GetFirmwareVersion
			R(6, []byte{0x00, 0x00, 0xFF, 0x00, 0xF7, 0x00}), // ACK with a damaged LCS
			R(13, fFWr), // D5 03 32 01 06 07
		},
		errors: 1, within: time.Millisecond,
	}})
}

// TestFaultBusError: one transaction fails (the address is not acknowledged,
// or the bus errs): it is tried again.
func TestFaultBusError(t *testing.T) {
	irq := []busCfg{cfgI2CIRQ, cfgSPIIRQ}
	runFaults(t, []faultCase{{
		name: "write fails",
		script: []op{
			Fail(W(fFW)), // GetFirmwareVersion: the chip never saw it
			W(fFW),       // sent again 1 ms later
			R(6, fACK), R(13, fFWr),
		},
		errors: 1, within: 3 * time.Millisecond,
	}, {
		name: "read fails",
		script: []op{
			W(fFW), R(6, fACK),
			Fail(R(13, nil)), // the answer: the read fails, the chip keeps the frame
			R(13, fFWr),      // read again 1 ms later
		},
		errors: 1, within: 3 * time.Millisecond,
	}, {
		name:  "status poll fails",
		buses: []busCfg{cfgI2C},
		script: []op{
			W(fFW), R(6, fACK),
			Busy(13),           // the answer, read at once: not ready yet
			FailPoll(13, fFWr), // 5 ms later the status poll fails; polled again 1 ms later
		},
		base:   []op{W(fFW), R(6, fACK), Busy(13), R(13, fFWr)},
		errors: 1, within: 3 * time.Millisecond,
	}, {
		name:  "status poll fails",
		buses: []busCfg{cfgSPI},
		script: []op{
			W(fFW), R(6, fACK),
			FailPoll(13, fFWr), // the status poll before the answer fails; polled again 1 ms later
		},
		errors: 1, within: 3 * time.Millisecond,
	}, {
		name:  "read fails after the chip handed the frame over",
		buses: irq,
		script: []op{
			W(fFW), R(6, fACK),
			Fail(R(13, nil)), // the answer: the read fails half-way
			Idle(),           // the chip has nothing more: the frame is lost
			W(fNACK),         // NACK: send it again
			R(13, fFWr),
		},
		errors: 1, within: 4 * time.Millisecond,
	}, {
		name:  "read fails after the chip handed the frame over",
		buses: []busCfg{cfgI2C, cfgSPI}, // the status poll said it was ready
		script: []op{
			W(fList), R(6, fACK), // InListPassiveTarget, ACK
			Fail(R(32, nil)), // the answer: the read fails half-way
			Idle(),           // the status poll: nothing more, the frame is lost
			W(fNACK),         // NACK: send it again
			R(32, fListNone), // D5 4B 00
		},
		base:   []op{W(fList), R(6, fACK), R(32, fListNone)},
		fn:     emptyPoll,
		errors: 1, within: 6 * time.Millisecond,
	}})
}

func emptyPoll(ctx context.Context, d *Dev) error {
	tg, err := d.InListPassiveTarget(ctx)
	if err == nil && tg != nil {
		err = errors.New("a target in an empty field")
	}
	return err
}

// TestFaultCorruptedFrame: the answer arrives with a bad checksum: it is asked
// for again with a NACK, also when it came where the ACK was expected.
func TestFaultCorruptedFrame(t *testing.T) {
	bad := append([]byte(nil), fFWr...)
	bad[9] ^= 0x04 // a data byte: the DCS no longer matches
	runFaults(t, []faultCase{{
		name: "bad checksum",
		script: []op{
			W(fFW), R(6, fACK),
			R(13, bad),  // D5 03 32 01 02 07: DCS wrong
			W(fNACK),    // NACK: send it again
			R(13, fFWr), // D5 03 32 01 06 07
		},
		errors: 1, within: 3 * time.Millisecond,
	}, {
		name: "lost ACK, then a bad checksum",
		script: []op{
			W(fFW),
			R(6, bad[:6]), // the ACK read gets the start of the answer
			W(fNACK),      // NACK: send it again
			R(13, bad),    // whole, but damaged
			W(fNACK),      // NACK
			R(13, fFWr),   // D5 03 32 01 06 07
		},
		errors: 2, within: 6 * time.Millisecond,
	}})
}

// TestFaultNotReady: the IRQ line or the status poll says a frame is ready,
// but the read finds the chip not ready (I²C: status byte 0; SPI: all zeros),
// a few times: the driver waits and reads again, and never NACKs a frame it
// did not get (a NACK makes the chip start its answer again).
func TestFaultNotReady(t *testing.T) {
	runFaults(t, []faultCase{{
		name: "not-ready reads",
		script: []op{
			W(fFW), R(6, fACK),
			Busy(13), // the answer: not ready after all
			Busy(13), // 5 ms later: still not
			R(13, fFWr),
		},
		errors: 0, within: 2*tPoll + 4*time.Millisecond,
	}})
}

// TestFaultNotReadyAtInit: opening a reader on SPI with IRQ whose chip is slow
// to hand its first answers over.
func TestFaultNotReadyAtInit(t *testing.T) {
	for _, c := range []busCfg{cfgSPI, cfgSPIIRQ} {
		t.Run(c.String(), func(t *testing.T) {
			clk := useFakeTime(t)
			script := []op{
				W(fACK), Idle(),
				W(fSAM), R(6, fACK), Busy(9), Busy(9), Busy(9), R(9, fSAMr),
				W(fFW), R(6, fACK), R(13, fFWr),
				W(fRF), R(6, fACK), R(9, fRFr),
			}
			r := render(c, script)
			opts := DefaultOpts
			if c.irq() {
				opts.IRQ = &levelPin{t: t, clk: clk, levels: r.levels}
			}
			p := &faultSPI{Playback: conntest.Playback{Ops: r.spi, DontPanic: true}, fails: r.fails, m: &busMeter{}}
			if _, err := NewSPI(p, &opts); err != nil {
				t.Fatalf("NewSPI: %v", err)
			}
			closePlayback(t, p)
		})
	}
}

// TestFaultAsleep: the chip is briefly asleep. On I²C it does not acknowledge
// its address until it is awake; on SPI chip select wakes it and the frame is
// lost.
func TestFaultAsleep(t *testing.T) {
	runFaults(t, []faultCase{{
		name:  "asleep",
		buses: []busCfg{cfgI2C, cfgI2CIRQ},
		script: []op{
			Fail(W(fFW)), // GetFirmwareVersion: address not acknowledged, the chip wakes up
			Fail(W(fFW)), // 1 ms later: still waking up
			W(fFW),       // 5 ms later
			R(6, fACK), R(13, fFWr),
		},
		errors: 2, within: 8 * time.Millisecond,
	}, {
		name:  "asleep",
		buses: []busCfg{cfgSPI, cfgSPIIRQ},
		script: []op{
			W(fFW),            // chip select wakes the chip: the frame is lost
			Wait(6, tACKWait), // no ACK
			W(fACK), Idle(),   // resynchronise: ACK frame, nothing to discard
			W(fFW), // sent again
			R(6, fACK), R(13, fFWr),
		},
		errors: 1, within: tACKWait + wakeDelay + 2*time.Millisecond,
	}})
}

// TestFaultLostCommand: the chip ignores a command (a frame damaged on the
// way fails its checksum): no ACK comes, and it is sent again.
func TestFaultLostCommand(t *testing.T) {
	runFaults(t, []faultCase{{
		name: "lost command",
		script: []op{
			W(fFW),            // GetFirmwareVersion: lost
			Wait(6, tACKWait), // no ACK
			W(fACK), Idle(),   // resynchronise: ACK frame, nothing to discard
			W(fFW), // sent again
			R(6, fACK), R(13, fFWr),
		},
		errors: 1, within: tACKWait + wakeDelay + 8*time.Millisecond, // with the status polls while waiting
	}})
}

// noise is a burst of line noise: no start code in it.
var noise = []byte{0xA5, 0x5A, 0x13, 0x37}

// TestFaultNoise: noise before a frame. The frame is found behind it; a read
// the noise made too short asks for the frame again and reads it whole.
func TestFaultNoise(t *testing.T) {
	noisy := cat(noise, fFWr)
	runFaults(t, []faultCase{{
		name: "noise before the answer",
		script: []op{
			W(fFW), R(6, fACK),
			R(13, noisy[:13]), // noise, then the answer, cut by the read
			W(fNACK),          // NACK: send it again
			R(21, noisy),      // noise again, then the whole answer
		},
		errors: 1, within: 5 * time.Millisecond,
	}, {
		name: "noise before the ACK and the answer",
		script: []op{
			W(fFW),
			R(6, cat(noise[:1], fACK)),  // 5A 00 00 FF 00 FF: ACK, postamble cut
			R(13, cat(noise[:1], fFWr)), // 5A 00 00 FF 06 FA D5 03 32 01 06 07 E8: postamble cut
		},
		errors: 2, within: time.Millisecond,
	}})
}

// TestFaultExtraPreamble: the chip sends one preamble byte more than usual.
// Nothing is read twice and nothing counts as an error.
func TestFaultExtraPreamble(t *testing.T) {
	runFaults(t, []faultCase{{
		name: "extra preamble byte",
		script: []op{
			W(fFW),
			R(6, cat([]byte{0x00}, fACK)),  // 00 00 00 FF 00 FF: the read cuts the postamble
			R(13, cat([]byte{0x00}, fFWr)), // the answer, its postamble cut
		},
		errors: 0, within: 0,
	}})
}

// uartBase is GetFirmwareVersion on UART without faults.
var uartBase = []uartStep{{w: fFW, r: [][]byte{fACK, fFWr}}}

// runUART runs GetFirmwareVersion against steps after the initialisation
// and returns what it cost: fake clock time plus the bytes on the line at
// 115200 baud.
func runUART(t *testing.T, steps []uartStep) faultRun {
	t.Helper()
	clk := useFakeTime(t)
	d, port := newUART(t, nil)
	port.steps = append(port.steps, steps...)
	start := clk.Now()
	bytes0 := uartBytes(port)
	err := getFW(context.Background(), d)
	port.done(t)
	return faultRun{err: err, waited: clk.Now().Sub(start), bus: time.Duration(uartBytes(port)-bytes0) * 86806 * time.Nanosecond, health: d.Health()}
}

// uartBytes counts the bytes of the steps the port played so far, both ways.
func uartBytes(p *fakeUART) int { return p.written + p.delivered }

// TestFaultUART runs the faults that apply to a byte stream.
func TestFaultUART(t *testing.T) {
	garbledACK := []byte{0x00, 0x00, 0xFF, 0x00, 0xF7, 0x00}
	for _, tc := range []struct {
		name   string
		steps  []uartStep
		errors uint64
		within time.Duration
	}{
		{"lost ACK", []uartStep{{w: fFW, r: [][]byte{fFWr}}}, 1, 0},
		{"garbled ACK", []uartStep{{w: fFW, r: [][]byte{garbledACK, fFWr}}}, 1, 0},
		{"noise", []uartStep{{w: fFW, r: [][]byte{noise, fACK, noise, noise, fFWr}}}, 2, 2 * time.Millisecond},
		{"extra preamble byte", []uartStep{{w: fFW, r: [][]byte{cat([]byte{0x00}, fACK), cat([]byte{0x00}, fFWr)}}}, 0, time.Millisecond},
		{"asleep", []uartStep{
			{w: fFW},                          // without the wake-up preamble the chip does not hear it
			{w: hsuWake},                      // no ACK: resynchronise with the wake-up preamble
			{w: fACK},                         // and an ACK frame
			{w: fFW, r: [][]byte{fACK, fFWr}}, // sent again
		}, 1, tACKWait + 2*wakeDelay + 5*time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := runUART(t, uartBase)
			got := runUART(t, tc.steps)
			if got.err != nil {
				t.Fatalf("GetFirmwareVersion = %v: the fault cost the command", got.err)
			}
			added := got.total() - base.total()
			t.Logf("%s on UART: recovered, +%.1f ms (line +%.2f ms, waits +%.1f ms)", tc.name, ms(added), ms(got.bus-base.bus), ms(got.waited-base.waited))
			if added > tc.within {
				t.Errorf("the fault added %v, want at most %v", added, tc.within)
			}
			if got.health.Errors != tc.errors {
				t.Errorf("Health() = %+v, want %d anomalies counted", got.health, tc.errors)
			}
		})
	}
}

// TestIdlePollBusShare measures what polling an empty field costs on the bus:
// one InListPassiveTarget per [reader] poll_interval (100 ms by default),
// with the chip taking chipTime to give up on the field. The answer is read
// for a target (32 bytes), so that a card's answer is not read twice.
func TestIdlePollBusShare(t *testing.T) {
	const interval = 100 * time.Millisecond
	for _, chipTime := range []time.Duration{0, 30 * time.Millisecond, 150 * time.Millisecond} {
		for _, c := range busCfgs {
			script := []op{W(fList), R(6, fACK)} // InListPassiveTarget, ACK
			if !c.irq() {
				for range chipTime / tPoll {
					script = append(script, Idle()) // status polls while the chip polls the field
				}
			}
			script = append(script, R(32, fListNone)) // D5 4B 00, read for a target
			r := runScript(t, c, nil, script, emptyPoll)
			if r.err != nil {
				t.Fatalf("%s: %v", c, r.err)
			}
			share := float64(r.bus) / float64(max(interval, chipTime+r.bus))
			t.Logf("empty poll, chip %v, %s: %.2f ms of bus per poll, %.1f%% of the bus at one poll per %v",
				chipTime, c, ms(r.bus), 100*share, interval)
			limit := 0.05 // with IRQ
			if !c.irq() {
				limit = 0.07 // status polls every 5 ms while the chip polls the field
			}
			if share > limit {
				t.Errorf("%s: idle polling takes %.1f%% of the bus, want at most %.0f%%", c, 100*share, 100*limit)
			}
		}
	}
}
