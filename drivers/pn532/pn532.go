package pn532

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/physic"
	"periph.io/x/conn/v3/spi"
)

// Command codes (host to chip; the response code is the command code + 1)
// and their parameters.
const (
	cmdGetFirmwareVersion  = 0x02
	cmdSAMConfiguration    = 0x14
	cmdPowerDown           = 0x16
	cmdRFConfiguration     = 0x32
	cmdInDataExchange      = 0x40
	cmdInListPassiveTarget = 0x4A
	cmdInRelease           = 0x52

	rfItemField      = 0x01
	rfItemMaxRetries = 0x05
	statusMI         = 0x40 // InDataExchange status and Tg: more information follows
	statusErrMask    = 0x3F
	maxDataOut       = 262 // InDataExchange data bytes per frame
	maxResponse      = 65536 + 2
	icPN532          = 0x32
)

// Driver behaviour.
const (
	readAhead       = 64  // bytes read for an InDataExchange answer of unknown size
	listAhead       = 32  // bytes read for an InListPassiveTarget answer: a target with a 4-byte UID and a 13-byte ATS, or a 7-byte UID and a 10-byte ATS
	maxSizes        = 256 // response sizes remembered
	maxResend       = 3   // NACKs sent for one response; sends of a command the chip NACKs
	recoverAfter    = 3   // consecutive failed commands before Recover runs
	recentWindow    = time.Minute
	downRetry       = time.Second // between recovery attempts while down
	listRetryBudget = 100 * time.Millisecond
	ackWait         = 100 * time.Millisecond // for the ACK, before the command is sent again (the chip ACKs within a few ms)
	resetPulse      = 20 * time.Millisecond
	resetBoot       = 50 * time.Millisecond
	forever         = 1000 * time.Hour
	spiSpeed        = physic.MegaHertz

	defaultTimeout       = time.Second
	defaultPollInterval  = 5 * time.Millisecond
	defaultMaxRetries    = 0x02
	defaultMaxRetriesATR = 0xFF
	defaultMaxRetriesPSL = 0x01
	defaultI2CAddr       = 0x24
)

// Opts configures a Dev. The zero Timeout and PollInterval take their
// defaults; every other field is used as given.
type Opts struct {
	// IRQ is the chip's P70_IRQ line, optional. When set, the driver waits
	// for its falling edge (the chip has a frame ready) instead of polling
	// the status: no bus traffic while waiting and no added latency. Wire
	// it where possible: the Raspberry Pi's I²C controller mishandles the
	// clock stretching the PN532 uses, and fewer status polls mean fewer
	// chances to hit that. NewI2C and NewSPI configure it as an input with
	// pull-up, falling edge. Not used over UART.
	IRQ gpio.PinIn
	// Reset is the chip's RSTPDN line (active low), optional. When set,
	// Recover pulses it to reset the chip before re-initialising it.
	Reset gpio.PinOut
	// Timeout bounds the wait for each answer. The acknowledgement has
	// to come within 100 ms (or Timeout, if shorter) of the command, which
	// is otherwise sent again, three times at most. InListPassiveTarget
	// allows its answer Timeout plus 100 ms per passive activation retry,
	// and waits until its context ends when MaxRetries is 0xFF. Default
	// 1 s.
	Timeout time.Duration
	// PollInterval is the pause between status polls when IRQ is not
	// wired, between reads that find the chip not ready, and between reads
	// of a UART that returns at once with no bytes. Each poll is a short
	// bus transaction (on a 100 kHz I²C bus about 0.2 ms, so 4% of the bus
	// while a command is pending with the default 5 ms); the interval is
	// also the latency it may add to each command. Default 5 ms.
	PollInterval time.Duration
	// MaxRetries is MxRtyPassiveActivation (RFConfiguration item 0x05):
	// how many times InListPassiveTarget retries the activation before it
	// reports that no card is there. 0 makes one attempt, 0xFF retries
	// forever (the chip's own default, which blocks until a card comes).
	// DefaultOpts has 0x02 so that a poll returns quickly.
	MaxRetries byte
	// Logger receives the driver's rare reports (recovery, resets) at
	// Warn and Info and protocol anomalies at Debug. Nil is quiet. Card
	// data and UIDs are never logged.
	Logger *slog.Logger
}

// DefaultOpts is the configuration used when nil Opts are given.
var DefaultOpts = Opts{
	Timeout:      defaultTimeout,
	PollInterval: defaultPollInterval,
	MaxRetries:   defaultMaxRetries,
}

// Firmware is the answer to GetFirmwareVersion.
type Firmware struct {
	IC      byte // 0x32 for the PN532
	Ver     byte // firmware version
	Rev     byte // firmware revision
	Support byte // bit 0 ISO 14443 type A, bit 1 type B, bit 2 ISO 18092
}

// String returns e.g. "PN532 v1.6".
func (f Firmware) String() string {
	if f == (Firmware{}) {
		return ""
	}
	return fmt.Sprintf("PN5%02X v%d.%d", f.IC, f.Ver, f.Rev)
}

// Target is a card the chip activated.
type Target struct {
	Tg      byte    // logical number the chip gave the card, used by InDataExchange and InRelease
	SensRes [2]byte // SENS_RES (ATQA) as sent on the air
	SelRes  byte    // SEL_RES (SAK)
	UID     []byte  // NFCID1: 4, 7 or 10 bytes; never log it
	ATS     []byte  // answer to select without its length byte TL; nil unless ISO 14443-4
}

// ISO14443_4 reports whether the card speaks ISO 14443-4 (SEL_RES bit 0x20),
// i.e. takes APDUs through InDataExchange.
func (t *Target) ISO14443_4() bool { return t.SelRes&0x20 != 0 }

// RandomUID reports whether the UID is a random ID (4 bytes, first byte
// 0x08) that changes on every activation and identifies nothing.
func (t *Target) RandomUID() bool { return len(t.UID) == 4 && t.UID[0] == 0x08 }

// String describes the target without its UID, so that printing it (with
// any verb) leaks nothing.
func (t Target) String() string {
	return fmt.Sprintf("Tg %d SENS_RES %02X%02X SEL_RES %02X UID(%d bytes) ATS(%d bytes)",
		t.Tg, t.SensRes[0], t.SensRes[1], t.SelRes, len(t.UID), len(t.ATS))
}

// GoString is String, so that %#v leaks nothing either.
func (t Target) GoString() string { return t.String() }

// Health is the driver's view of the chip.
type Health struct {
	// State is "ok", "degraded" (an error in the last minute, the chip
	// answers) or "down" (re-initialisation failed; commands try again,
	// at most once a second, and fail with ErrDown in between). A
	// successful command after "down" gives "degraded", which turns "ok"
	// a minute after the last error.
	State    string
	Firmware string // e.g. "PN532 v1.6"; empty until the chip answered
	// Errors counts anomalies on the host link: timeouts, bad checksums,
	// garbage, NACKs, error frames, bus errors, including those recovered
	// transparently. Card status errors (a card pulled away) do not count.
	Errors uint64
	// Timeouts counts missing acknowledgements and answers.
	Timeouts uint64
	// Checksum counts frames with a bad checksum.
	Checksum uint64
	// Resets counts recoveries (hard reset if wired, re-initialisation).
	Resets uint64
	// LastError describes the last anomaly; it never holds card data.
	LastError string
}

// Dev is a PN532 on I²C, SPI or UART. Its methods may be called from several
// goroutines; they run one at a time.
type Dev struct {
	opts Opts
	link link
	log  *slog.Logger

	mu          sync.Mutex     // serialises everything below and the chip I/O
	retries     [3]byte        // RFConfiguration item 0x05: ATR, PSL, passive activation
	asleep      bool           // after PowerDown: wake up and re-initialise first
	needInit    bool           // after Halt: re-initialise first
	consecutive int            // consecutive commands that failed on the link
	nextTry     time.Time      // while down: no recovery attempt before
	data        []byte         // command code and parameters of the frame being sent
	wframe      []byte         // frame being sent
	params      []byte         // InDataExchange parameters
	sizes       map[uint64]int // size of the last answer, by command and first parameters (sizeKey)

	cmu    sync.Mutex
	cancel context.CancelCauseFunc // of the command running, for Halt

	errors, timeouts, checksum, resets atomic.Uint64

	hmu       sync.Mutex
	fw        Firmware
	down      bool
	lastErrAt time.Time
	lastErr   string
}

// NewI2C returns the PN532 at addr (0x24; 0 means 0x24) on the I²C bus b. It
// wakes the chip up, configures it (SAMConfiguration: normal mode, IRQ line
// driven; RFConfiguration: MaxRetries) and checks its firmware, so a missing
// chip fails here with a clear error. opts may be nil for DefaultOpts. The
// bus is the caller's: the Dev never closes it.
//
// Run the bus slowly (100 kHz or less, dtparam=i2c_arm_baudrate on a Pi):
// the PN532 stretches the clock, which the Pi's controller mishandles at
// speed. The driver does not change the bus speed, which on Linux would
// affect every bus.
func NewI2C(b i2c.Bus, addr uint16, opts *Opts) (*Dev, error) {
	if addr == 0 {
		addr = defaultI2CAddr
	}
	o := resolveOpts(opts)
	l := &busLink{io: &i2cIO{d: i2c.Dev{Bus: b, Addr: addr}}, irq: o.IRQ, poll: o.PollInterval, mask: 0x80}
	return newDev(l, o)
}

// NewSPI returns the PN532 on the SPI port p (mode 0 at 1 MHz; the chip's
// least-significant-bit-first order is done in software). See NewI2C for the
// rest. The port is the caller's: the Dev never closes it.
func NewSPI(p spi.Port, opts *Opts) (*Dev, error) {
	c, err := p.Connect(spiSpeed, spi.Mode0, 8)
	if err != nil {
		return nil, fmt.Errorf("pn532: connecting to %s: %w", p, err)
	}
	o := resolveOpts(opts)
	l := &busLink{io: &spiIO{c: c}, irq: o.IRQ, poll: o.PollInterval, mask: 0x20}
	return newDev(l, o)
}

// NewUART returns the PN532 on a serial port in HSU mode (115200 baud, 8
// data bits, no parity, one stop bit, no flow control). The caller opens and
// configures the port and closes it after Halt; see the package
// documentation for how to do that without cgo. A port that can bound a
// blocking read (SetReadDeadline, as *os.File opened with O_NONBLOCK) lets
// timeouts and cancellation act promptly; otherwise configure VMIN=0 and a
// VTIME of 1 (0.1 s). Opts.IRQ is not used. See NewI2C for the rest.
func NewUART(rw io.ReadWriter, opts *Opts) (*Dev, error) {
	o := resolveOpts(opts)
	o.IRQ = nil
	return newDev(newUARTLink(rw, o.PollInterval), o)
}

func resolveOpts(opts *Opts) Opts {
	if opts == nil {
		opts = &DefaultOpts
	}
	o := *opts
	if o.Timeout <= 0 {
		o.Timeout = defaultTimeout
	}
	if o.PollInterval <= 0 {
		o.PollInterval = defaultPollInterval
	}
	return o
}

func newDev(l link, o Opts) (*Dev, error) {
	d := &Dev{
		opts:    o,
		link:    l,
		log:     o.Logger,
		retries: [3]byte{defaultMaxRetriesATR, defaultMaxRetriesPSL, o.MaxRetries},
		data:    make([]byte, 0, maxLen),
		wframe:  make([]byte, 0, maxFrameSize),
		params:  make([]byte, 0, 1+maxDataOut),
		sizes:   make(map[uint64]int),
	}
	l.setNote(d.note)
	if o.IRQ != nil {
		if err := o.IRQ.In(gpio.PullUp, gpio.FallingEdge); err != nil {
			return nil, fmt.Errorf("pn532: IRQ pin %s: %w", o.IRQ, err)
		}
	}
	if o.Reset != nil {
		if err := o.Reset.Out(gpio.High); err != nil {
			return nil, fmt.Errorf("pn532: reset pin %s: %w", o.Reset, err)
		}
	}
	ctx := context.Background()
	d.mu.Lock()
	defer d.mu.Unlock()
	err := d.initLocked(ctx)
	if err != nil && o.Reset != nil {
		d.debug("init failed, resetting the chip", "err", err)
		if err = d.hardReset(ctx); err == nil {
			d.resets.Add(1)
			err = d.initLocked(ctx)
		}
	}
	if err != nil {
		if errors.Is(err, errNotPN532) {
			return nil, fmt.Errorf("pn532: on %s: %w", l, err)
		}
		return nil, fmt.Errorf("pn532: no PN532 answering on %s: %w", l, err)
	}
	d.consecutive = 0
	d.info("PN532 ready", "bus", l.String(), "firmware", d.fw.String())
	return d, nil
}

var (
	errNotPN532 = errors.New("pn532: the chip is not a PN532")
	errNoACK    = fmt.Errorf("%w (no acknowledgement)", ErrTimeout)
	errNoAnswer = fmt.Errorf("%w (no answer)", ErrTimeout)
	errACKLost  = fmt.Errorf("%w: the answer came where the ACK was expected (ACK lost or garbled)", ErrFrame)
	errNoise    = fmt.Errorf("%w: noise before the start code", ErrFrame)
)

// String returns e.g. "PN532{playback(36)}".
func (d *Dev) String() string { return "PN532{" + d.link.String() + "}" }

// Firmware returns the firmware version read when the chip was last
// (re)initialised.
func (d *Dev) Firmware() Firmware {
	d.hmu.Lock()
	defer d.hmu.Unlock()
	return d.fw
}

// Health returns the chip's state and error counters.
func (d *Dev) Health() Health {
	d.hmu.Lock()
	defer d.hmu.Unlock()
	h := Health{
		State:     "ok",
		Firmware:  d.fw.String(),
		Errors:    d.errors.Load(),
		Timeouts:  d.timeouts.Load(),
		Checksum:  d.checksum.Load(),
		Resets:    d.resets.Load(),
		LastError: d.lastErr,
	}
	switch {
	case d.down:
		h.State = "down"
	case !d.lastErrAt.IsZero() && timeNow().Sub(d.lastErrAt) < recentWindow:
		h.State = "degraded"
	}
	return h
}

// GetFirmwareVersion asks the chip for its firmware version.
func (d *Dev) GetFirmwareVersion(ctx context.Context) (Firmware, error) {
	var fw Firmware
	err := d.run(ctx, "GetFirmwareVersion", func(ctx context.Context) (err error) {
		fw, err = d.getFirmwareVersion(ctx)
		return err
	})
	return fw, err
}

// SAMConfiguration puts the chip in normal mode (no secure access module)
// with the IRQ line driven. The driver does it when it initialises the chip.
func (d *Dev) SAMConfiguration(ctx context.Context) error {
	return d.run(ctx, "SAMConfiguration", d.samConfiguration)
}

// RFConfiguration sets the configuration item to data (user manual §7.3.1):
// 0x01 RF field, 0x02 timings, 0x04 MaxRtyCOM, 0x05 max retries (see
// SetMaxRetries, which is kept across re-initialisations), …
func (d *Dev) RFConfiguration(ctx context.Context, item byte, data []byte) error {
	return d.run(ctx, "RFConfiguration", func(ctx context.Context) error {
		if err := d.rfConfiguration(ctx, item, data); err != nil {
			return err
		}
		if item == rfItemMaxRetries && len(data) == 3 {
			d.retries = [3]byte(data)
		}
		return nil
	})
}

// SetMaxRetries sets RFConfiguration item 0x05: the retries of ATR_REQ (atr,
// chip default 0xFF), of PSL_REQ (psl, default 0x01) and of the passive
// activation InListPassiveTarget makes (passive; 0xFF = forever). The values
// are restored whenever the driver re-initialises the chip.
func (d *Dev) SetMaxRetries(ctx context.Context, atr, psl, passive byte) error {
	return d.RFConfiguration(ctx, rfItemMaxRetries, []byte{atr, psl, passive})
}

// InListPassiveTarget looks for one ISO 14443 type A card at 106 kbps and
// activates it (anticollision, select and, for ISO 14443-4 cards, RATS).
// It returns (nil, nil) when no card answered within the configured retries.
func (d *Dev) InListPassiveTarget(ctx context.Context) (*Target, error) {
	var t *Target
	err := d.run(ctx, "InListPassiveTarget", func(ctx context.Context) error {
		wait := forever
		if p := d.retries[2]; p != 0xFF {
			wait = d.opts.Timeout + time.Duration(p)*listRetryBudget
		}
		resp, err := d.exchange(ctx, cmdInListPassiveTarget, []byte{0x01, 0x00}, listAhead, wait)
		if err != nil {
			return err
		}
		t, err = parseTarget(resp)
		if err != nil {
			d.note(err)
		}
		return err
	})
	return t, err
}

// parseTarget decodes the InListPassiveTarget answer for one type A target:
// NbTg, Tg, SENS_RES(2), SEL_RES, NFCIDLength, NFCID, and then, for ISO
// 14443-4 cards, the ATS starting with its length byte.
func parseTarget(b []byte) (*Target, error) {
	if len(b) < 1 {
		return nil, ErrFrame
	}
	if b[0] == 0 {
		return nil, nil
	}
	b = b[1:]
	if len(b) < 5 {
		return nil, ErrFrame
	}
	t := &Target{Tg: b[0], SensRes: [2]byte{b[1], b[2]}, SelRes: b[3]}
	n := int(b[4])
	b = b[5:]
	if n == 0 || n > 10 || len(b) < n {
		return nil, ErrFrame
	}
	t.UID = append([]byte(nil), b[:n]...)
	b = b[n:]
	if len(b) > 0 {
		tl := int(b[0])
		if tl < 1 || tl != len(b) {
			return nil, ErrFrame
		}
		t.ATS = append([]byte{}, b[1:]...)
	}
	return t, nil
}

// InDataExchange sends data to the activated target tg (an APDU for an ISO
// 14443-4 card) and returns its answer. Data longer than a frame holds is
// sent in several frames with the MI bit, and an answer the chip delivers in
// parts (MI bit in the status) is fetched and joined. A card-side failure is
// a *StatusError; errors.Is(err, ErrCardRemoved) tells a card that left.
func (d *Dev) InDataExchange(ctx context.Context, tg byte, data []byte) ([]byte, error) {
	var out []byte
	tg &= statusErrMask
	err := d.run(ctx, "InDataExchange", func(ctx context.Context) error {
		rest := data
		for {
			n := min(len(rest), maxDataOut)
			t := tg
			if n < len(rest) {
				t |= statusMI
			}
			d.params = append(append(d.params[:0], t), rest[:n]...)
			resp, err := d.exchange(ctx, cmdInDataExchange, d.params, readAhead, d.opts.Timeout)
			if err != nil {
				return err
			}
			if err := exchangeStatus(resp); err != nil {
				return err
			}
			rest = rest[n:]
			if len(rest) > 0 {
				continue
			}
			out = append([]byte(nil), resp[1:]...)
			for resp[0]&statusMI != 0 {
				d.params = append(d.params[:0], tg)
				if resp, err = d.exchange(ctx, cmdInDataExchange, d.params, readAhead, d.opts.Timeout); err != nil {
					return err
				}
				if err := exchangeStatus(resp); err != nil {
					return err
				}
				if len(out)+len(resp)-1 > maxResponse {
					return errors.New("pn532: card answer too long")
				}
				out = append(out, resp[1:]...)
			}
			return nil
		}
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func exchangeStatus(resp []byte) error {
	if len(resp) < 1 {
		return ErrFrame
	}
	if c := resp[0] & statusErrMask; c != 0 {
		return &StatusError{Code: c}
	}
	return nil
}

// InRelease releases target tg (0: all targets): an ISO 14443-4 card is
// deselected, the chip forgets it. The card stays in the field.
func (d *Dev) InRelease(ctx context.Context, tg byte) error {
	return d.run(ctx, "InRelease", func(ctx context.Context) error {
		resp, err := d.exchange(ctx, cmdInRelease, []byte{tg}, 10, d.opts.Timeout)
		if err != nil {
			return err
		}
		return exchangeStatus(resp)
	})
}

// PowerDown puts the chip in power-down mode (about 1 µA; RF field off,
// targets released), to wake up on its host interface only. The next command
// wakes it up (I²C: address match, SPI: chip select, UART: the 0x55 preamble)
// and re-initialises it (SAMConfiguration, RFConfiguration) before it runs,
// which costs a few milliseconds. A station that polls for cards keeps the
// chip awake; PowerDown is for long idle periods and shutdown.
func (d *Dev) PowerDown(ctx context.Context) error {
	return d.run(ctx, "PowerDown", func(ctx context.Context) error {
		resp, err := d.exchange(ctx, cmdPowerDown, []byte{d.link.wakeMask()}, 10, d.opts.Timeout)
		if err != nil {
			return err
		}
		if err := exchangeStatus(resp); err != nil {
			return err
		}
		d.asleep = true
		return nil
	})
}

// Recover resynchronises with the chip (an ACK frame aborts the command in
// progress, pending frames are discarded), resets it when Opts.Reset is
// wired and initialises it again. The driver calls it by itself after
// repeated failures; Health tells the outcome.
func (d *Dev) Recover(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	ctx, done := d.begin(ctx)
	defer done()
	return wrapOp("Recover", d.recoverLocked(ctx))
}

// Halt interrupts the command in progress, if any, and switches the RF field
// off. The Dev stays usable: the next command initialises the chip again. It
// never closes the bus.
func (d *Dev) Halt() error {
	d.cmu.Lock()
	if d.cancel != nil {
		d.cancel(ErrHalted)
	}
	d.cmu.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.needInit = true
	if d.asleep || d.isDown() {
		return nil // the field is off already, or the chip cannot hear us
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*d.opts.Timeout)
	defer cancel()
	if err := d.link.wake(ctx); err != nil {
		return wrapOp("Halt", err)
	}
	return wrapOp("Halt", d.rfConfiguration(ctx, rfItemField, []byte{0x00}))
}

// run runs one public operation: serialised, interruptible by Halt,
// initialising the chip first when needed, with failures counted and
// recovered from.
func (d *Dev) run(ctx context.Context, op string, fn func(context.Context) error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	ctx, done := d.begin(ctx)
	defer done()
	if d.isDown() {
		// Try again, but not in a tight loop if the caller does not
		// pace itself.
		if now := timeNow(); now.Before(d.nextTry) {
			return wrapOp(op, d.downErr())
		}
		if err := d.recoverLocked(ctx); err != nil {
			return wrapOp(op, err)
		}
	} else if d.asleep || d.needInit {
		if err := d.initLocked(ctx); err != nil {
			return wrapOp(op, d.failed(ctx, err))
		}
	}
	err := fn(ctx)
	var se *StatusError
	if err == nil || errors.As(err, &se) || errors.Is(err, ErrSyntax) {
		// The chip did its part (a card may have failed, or the
		// command may have been wrong).
		d.consecutive = 0
		d.setUp()
		return wrapOp(op, err)
	}
	return wrapOp(op, d.failed(ctx, err))
}

// failed handles a failed command: it resynchronises with the chip, and after
// repeated failures recovers it. It returns err, or the cancellation cause.
func (d *Dev) failed(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		// Cancelled (or halted) while the chip may be busy: abort
		// the command so that the next one starts clean.
		actx, cancel := context.WithTimeout(context.Background(), d.opts.Timeout)
		_ = d.link.wake(actx)
		cancel()
		return context.Cause(ctx)
	}
	d.consecutive++
	if d.consecutive >= recoverAfter {
		if rerr := d.recoverLocked(ctx); rerr != nil {
			d.debug("recovery failed", "err", rerr)
		}
		return err
	}
	if werr := d.link.wake(ctx); werr != nil {
		d.debug("resync failed", "err", werr)
	}
	return err
}

// begin makes ctx cancellable by Halt for the duration of one operation.
func (d *Dev) begin(ctx context.Context) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	d.cmu.Lock()
	d.cancel = cancel
	d.cmu.Unlock()
	return ctx, func() {
		d.cmu.Lock()
		d.cancel = nil
		d.cmu.Unlock()
		cancel(nil)
	}
}

// recoverLocked is Recover with d.mu held.
func (d *Dev) recoverLocked(ctx context.Context) error {
	d.resets.Add(1)
	if !d.isDown() {
		d.warn("recovering the chip", "consecutive_failures", d.consecutive, "hard_reset", d.opts.Reset != nil)
	}
	if d.opts.Reset != nil {
		if err := d.hardReset(ctx); err != nil {
			if ctx.Err() == nil {
				d.setDown(err)
			}
			return err
		}
	}
	if err := d.initLocked(ctx); err != nil {
		if ctx.Err() == nil {
			if !d.isDown() {
				d.warn("the chip does not answer", "err", err)
			}
			d.setDown(err)
		}
		return err
	}
	d.consecutive = 0
	d.setUp()
	d.info("chip recovered", "firmware", d.Firmware().String())
	return nil
}

// hardReset pulses RSTPDN low and waits for the chip to boot.
func (d *Dev) hardReset(ctx context.Context) error {
	if err := d.opts.Reset.Out(gpio.Low); err != nil {
		return fmt.Errorf("pn532: reset pin: %w", err)
	}
	if err := doSleep(ctx, resetPulse); err != nil {
		_ = d.opts.Reset.Out(gpio.High)
		return err
	}
	if err := d.opts.Reset.Out(gpio.High); err != nil {
		return fmt.Errorf("pn532: reset pin: %w", err)
	}
	return doSleep(ctx, resetBoot)
}

// initLocked wakes the chip up and configures it: SAMConfiguration first
// (over HSU it must be the first command after the wake-up), then the firmware
// check and the retries.
func (d *Dev) initLocked(ctx context.Context) error {
	if err := d.link.wake(ctx); err != nil {
		return wrapOp("wake-up", err)
	}
	d.asleep, d.needInit = false, false
	if err := d.samConfiguration(ctx); err != nil {
		d.needInit = true
		return wrapOp("SAMConfiguration", err)
	}
	fw, err := d.getFirmwareVersion(ctx)
	if err != nil {
		d.needInit = true
		return wrapOp("GetFirmwareVersion", err)
	}
	if fw.IC != icPN532 {
		d.needInit = true
		return fmt.Errorf("%w (IC 0x%02X)", errNotPN532, fw.IC)
	}
	if err := d.rfConfiguration(ctx, rfItemMaxRetries, d.retries[:]); err != nil {
		d.needInit = true
		return wrapOp("RFConfiguration", err)
	}
	return nil
}

func (d *Dev) getFirmwareVersion(ctx context.Context) (Firmware, error) {
	resp, err := d.exchange(ctx, cmdGetFirmwareVersion, nil, 13, d.opts.Timeout)
	if err != nil {
		return Firmware{}, err
	}
	if len(resp) != 4 {
		d.note(ErrFrame)
		return Firmware{}, ErrFrame
	}
	fw := Firmware{IC: resp[0], Ver: resp[1], Rev: resp[2], Support: resp[3]}
	d.hmu.Lock()
	d.fw = fw
	d.hmu.Unlock()
	return fw, nil
}

func (d *Dev) samConfiguration(ctx context.Context) error {
	// Normal mode, virtual card timeout 1 s (unused), IRQ line driven.
	_, err := d.exchange(ctx, cmdSAMConfiguration, []byte{0x01, 0x14, 0x01}, 9, d.opts.Timeout)
	return err
}

func (d *Dev) rfConfiguration(ctx context.Context, item byte, data []byte) error {
	if len(data) > 16 {
		return errors.New("pn532: RFConfiguration data too long")
	}
	var p [17]byte
	p[0] = item
	n := copy(p[1:], data)
	_, err := d.exchange(ctx, cmdRFConfiguration, p[:1+n], 9, d.opts.Timeout)
	return err
}

// exchange sends one command frame, waits for its acknowledgement and returns
// the parameters of its response (after the response code). The result
// aliases the link's buffer. Anomalies are counted, and recovered from where
// one transient fault explains them:
//
//   - no ACK within ackWait: the chip did not get the command (it was
//     asleep, or the frame was damaged on the way and failed its checksum):
//     resynchronise (an ACK frame aborts whatever the chip was doing) and
//     send the command again;
//   - a NACK instead of the ACK: the chip asks for the command again;
//   - the response where the ACK was expected: the ACK was lost; the link
//     fetches a response its read cut short again;
//   - anything else unreadable where the ACK was expected: most likely the
//     ACK, garbled. The chip has the command, and resending it could run
//     it twice: wait for the answer;
//   - a damaged response, or one a failed read took: ask for it again with
//     a NACK;
//   - noise before a frame: skipped.
func (d *Dev) exchange(ctx context.Context, cmd byte, params []byte, hint int, respTimeout time.Duration) ([]byte, error) {
	d.data = append(append(d.data[:0], cmd), params...)
	key := sizeKey(cmd, params)
	if n, ok := d.sizes[key]; ok {
		hint = n
	}
	var err error
	if d.wframe, err = appendFrame(d.wframe[:0], tfiHost, d.data); err != nil {
		return nil, err
	}
	var (
		sends, nacks int
		resend       = true
		acked        bool
		deadline     time.Time
		lastErr      error // why the command is sent again
	)
	answer := func() { acked, deadline = true, timeNow().Add(respTimeout) }
	for {
		if resend {
			if sends == maxResend {
				return nil, lastErr // counted already
			}
			if errors.Is(lastErr, errNoACK) {
				if err := d.link.wake(ctx); err != nil {
					return nil, d.linkErr(ctx, err)
				}
			}
			if err := d.link.send(ctx, d.wframe); err != nil {
				return nil, d.linkErr(ctx, err)
			}
			sends++
			resend, acked = false, false
			deadline = timeNow().Add(min(ackWait, d.opts.Timeout))
		}
		n := len(ackFrame)
		if acked {
			if !timeNow().Before(deadline) { // stale frames kept coming
				return nil, d.linkErr(ctx, errNoAnswer)
			}
			n = hint
		}
		b, err := d.link.recv(ctx, deadline, n)
		switch {
		case err == nil:
		case errors.Is(err, ErrTimeout) && !acked:
			if ctx.Err() != nil {
				return nil, context.Cause(ctx)
			}
			d.note(errNoACK)
			lastErr, resend = errNoACK, true
			continue
		case errors.Is(err, ErrTimeout):
			return nil, d.linkErr(ctx, errNoAnswer)
		case errors.Is(err, errFrameLost) && !acked:
			answer() // the ACK, most likely (the bus error is counted)
			continue
		case errors.Is(err, errFrameLost):
			if nacks == maxResend {
				return nil, d.linkErr(ctx, err)
			}
			nacks++
			if err := d.link.send(ctx, nackFrame); err != nil {
				return nil, d.linkErr(ctx, err)
			}
			continue
		default:
			return nil, d.linkErr(ctx, err)
		}
		sc := scanFrame(b)
		if sc.err == nil {
			f := sc.f
			switch {
			case f.kind == kindACK:
				if sc.noise {
					d.note(errNoise)
				}
				if !acked {
					answer()
				}
				// Else the ACK, late: the answer follows.
				continue
			case f.kind == kindNACK && !acked:
				d.note(ErrNACK)
				lastErr, resend = ErrNACK, true
				continue
			case f.kind == kindError:
				d.noteOnce(acked, sc.noise)
				d.note(ErrSyntax)
				return nil, ErrSyntax
			case f.kind == kindInfo && f.tfi == tfiChip && len(f.data) > 0 && f.data[0] == cmd+1:
				d.noteOnce(acked, sc.noise)
				d.learn(key, cmd, f.data, sc.size)
				return f.data[1:], nil
			case f.kind == kindInfo && f.tfi == tfiChip && len(f.data) > 0:
				// The late answer to an earlier command: drop it.
				d.note(fmt.Errorf("%w: stale response 0x%02X to command 0x%02X", ErrFrame, f.data[0], cmd))
				continue
			}
			sc.err = ErrFrame // not a frame the chip answers with
		}
		err = frameErr(sc.err)
		if !acked && !(sc.found && (sc.f.kind == kindInfo || sc.f.kind == kindError)) {
			// Not the header of an answer: most likely the ACK,
			// garbled. The chip has the command; resending it could
			// run it twice: wait for the answer instead.
			d.note(err)
			answer()
			continue
		}
		// A damaged answer, also where the ACK was expected: then the ACK
		// was lost, and the answer may just be cut short by a read sized
		// for the ACK.
		if acked || !errors.Is(sc.err, errShortFrame) {
			d.note(err)
		}
		if !acked {
			d.note(errACKLost)
			answer()
		}
		if nacks == maxResend {
			return nil, err
		}
		nacks++
		if err := d.link.send(ctx, nackFrame); err != nil {
			return nil, d.linkErr(ctx, err)
		}
	}
}

// noteOnce counts the anomaly of an answer that came whole: it came where
// the ACK was expected (the ACK was lost), or behind noise.
func (d *Dev) noteOnce(acked, noise bool) {
	switch {
	case !acked:
		d.note(errACKLost)
	case noise:
		d.note(errNoise)
	}
}

// sizeKey identifies a kind of command for the size of its answer: the
// command code and its first six parameter bytes (for InDataExchange: Tg and
// the APDU's CLA, INS, P1, P2 and Lc).
func sizeKey(cmd byte, params []byte) uint64 {
	n := min(len(params), 6)
	k := uint64(n)<<56 | uint64(cmd)
	for i, b := range params[:n] {
		k |= uint64(b) << (8 * (i + 1))
	}
	return k
}

// learn remembers the size of an answer, so that the next answer to the same
// kind of command is read in one transaction. An empty field does not count for
// InListPassiveTarget: its answer fits any read, and the next poll is read for
// a target.
func (d *Dev) learn(key uint64, cmd byte, data []byte, size int) {
	if cmd == cmdInListPassiveTarget && (len(data) < 2 || data[1] == 0) {
		return
	}
	if len(d.sizes) >= maxSizes {
		clear(d.sizes)
	}
	d.sizes[key] = size
}

func frameErr(err error) error {
	if err == nil || errors.Is(err, errShortFrame) {
		return ErrFrame
	}
	return err
}

// linkErr counts a link error unless it is the context's.
func (d *Dev) linkErr(ctx context.Context, err error) error {
	if ctx.Err() == nil {
		d.note(err)
	}
	return err
}

// note counts an anomaly and records it for Health.
func (d *Dev) note(err error) {
	d.errors.Add(1)
	switch {
	case errors.Is(err, ErrTimeout):
		d.timeouts.Add(1)
	case errors.Is(err, ErrChecksum):
		d.checksum.Add(1)
	}
	d.debug("link anomaly", "err", err)
	d.hmu.Lock()
	d.lastErrAt = timeNow()
	d.lastErr = err.Error()
	d.hmu.Unlock()
}

func (d *Dev) isDown() bool {
	d.hmu.Lock()
	defer d.hmu.Unlock()
	return d.down
}

func (d *Dev) setDown(err error) {
	d.nextTry = timeNow().Add(downRetry)
	d.hmu.Lock()
	defer d.hmu.Unlock()
	d.down = true
	d.lastErrAt = timeNow()
	d.lastErr = err.Error()
}

// downErr is the error of a command refused while the chip is down.
func (d *Dev) downErr() error {
	d.hmu.Lock()
	defer d.hmu.Unlock()
	return fmt.Errorf("%w (last error: %s)", ErrDown, d.lastErr)
}

func (d *Dev) setUp() {
	d.hmu.Lock()
	defer d.hmu.Unlock()
	d.down = false
}

func (d *Dev) debug(msg string, args ...any) {
	if d.log != nil {
		d.log.Debug(msg, args...)
	}
}

func (d *Dev) info(msg string, args ...any) {
	if d.log != nil {
		d.log.Info(msg, args...)
	}
}

func (d *Dev) warn(msg string, args ...any) {
	if d.log != nil {
		d.log.Warn(msg, args...)
	}
}
