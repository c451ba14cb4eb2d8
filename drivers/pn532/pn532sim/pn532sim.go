// Package pn532sim is a software PN532: it speaks the chip's host protocol
// byte for byte over an emulated I²C bus or SPI port, with the IRQ and RSTPDN
// lines, so that simulation and tests run the very driver code
// (station.dev/agent/drivers/pn532) that runs on a station.
//
// The emulated field holds virtual cards (Card). Cards are presented one at a
// time, in order (Present), or left on the reader (Hold), and taken away at
// any moment (Remove), also in the middle of an exchange, which then fails
// with the status the real chip gives (0x01, the card did not answer).
//
// What it emulates: GetFirmwareVersion, GetGeneralStatus, SAMConfiguration,
// RFConfiguration (items 0x01, 0x02, 0x04, 0x05 checked, others accepted),
// InListPassiveTarget (one type A target at 106 kbps, honouring
// MxRtyPassiveActivation), InDataExchange (chaining both ways with the MI
// bit), InRelease, InDeselect and PowerDown; ACK (abort), NACK (send the
// last response again) and the error frame for any other command. Frames with
// a bad checksum are ignored, as the chip does. Card exchanges take no
// emulated time, so hundreds of presentations run per second; a poll with no
// card answers after (MxRtyPassiveActivation+1) × Opts.RetryTime, or as soon
// as a card is presented.
//
// Faults (Inject) make the chip misbehave for tests of the driver's recovery:
// garbled, lost, damaged or noisy frames, NACKs, lost commands, reads that
// find the chip not ready or break half-way, bus errors, a dozing chip and a
// hung one.
package pn532sim

import (
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"sync"
	"time"

	"periph.io/x/conn/v3"
	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/physic"
	"periph.io/x/conn/v3/pin"
	"periph.io/x/conn/v3/spi"
)

// Card is what the emulated chip holds in its field. UID, SensRes, SelRes and
// ATS are called once per activation, with the chip locked: they must not
// call the Chip. Transmit is called without the lock, so Remove may run while
// a card computes its answer.
type Card interface {
	// UID is the NFCID1: 4, 7 or 10 bytes.
	UID() []byte
	// SensRes is SENS_RES (ATQA) as sent on the air.
	SensRes() [2]byte
	// SelRes is SEL_RES (SAK); bit 0x20 set means ISO 14443-4: APDUs go
	// through Transmit.
	SelRes() byte
	// ATS is the answer to select without its length byte TL; nil for
	// tags that are not ISO 14443-4.
	ATS() []byte
	// Transmit answers a command (a C-APDU for ISO 14443-4 cards) with
	// its response. An error means the card left the field mid-exchange.
	Transmit(apdu []byte) ([]byte, error)
}

// Opts configures a Chip. Zero fields take the DefaultOpts values.
type Opts struct {
	// IC, Ver, Rev and Support are the GetFirmwareVersion answer; with a
	// zero IC all four keep their defaults.
	IC, Ver, Rev, Support byte
	// RetryTime is the emulated duration of one passive activation
	// attempt: a poll with no card in the field answers "no target" after
	// (MxRtyPassiveActivation+1) × RetryTime unless a card comes first,
	// and never with 0xFF (the power-on value). The default, 50 ms, makes
	// an empty poll with the driver's default of 2 retries take 150 ms,
	// so that an idle reader costs next to nothing.
	RetryTime time.Duration
	// Logger receives a Debug line per command. Nil is quiet.
	Logger *slog.Logger
}

// DefaultOpts is what New uses for nil or zero fields: a PN532 v1.6.
var DefaultOpts = Opts{IC: 0x32, Ver: 1, Rev: 6, Support: 0x07, RetryTime: 50 * time.Millisecond}

// Address is the chip's I²C address.
const Address = 0x24

// FaultKind is a way for the emulated chip to misbehave.
type FaultKind int

// Faults. Count says how many frames (or transactions) each affects.
const (
	// Garbage replaces the next Count frames the chip sends (ACK or
	// response, also sent again after a NACK) with bytes that are no
	// frame. Once Count is used up, a NACK gets the good response.
	Garbage FaultKind = iota + 1
	// NACK makes the chip answer the next Count command frames with a
	// NACK instead of an ACK, without running them.
	NACK
	// BadChecksum corrupts the data checksum of the next Count response
	// frames (also those sent again after a NACK). Once Count is used
	// up, a NACK gets the good frame.
	BadChecksum
	// NoResponse makes the chip ignore the next Count command frames
	// entirely: the host times out.
	NoResponse
	// BusError makes the next Count bus transactions fail, as a bus with
	// a loose wire does.
	BusError
	// Hang makes the chip stop answering until its RSTPDN line is pulsed
	// (ResetPin). Count is not used.
	Hang
	// LostACK makes the chip skip the ACK of the next Count commands: the
	// response comes where the host expects the ACK.
	LostACK
	// Noise puts a burst of line noise (bytes without a start code) before
	// the next Count frames the chip sends, also those sent again after a
	// NACK. On I²C and SPI a read sized for the frame then cuts it.
	Noise
	// ExtraPreamble puts one more preamble byte (00) before the next Count
	// frames the chip sends.
	ExtraPreamble
	// NotReady makes the next Count reads of a frame find the chip not
	// ready (I²C status byte 0, SPI all zeros) and take nothing, although
	// the IRQ line and status polls say a frame is ready: a chip slow to
	// hand its frame over.
	NotReady
	// Doze makes the chip stop listening, as in power-down but keeping its
	// state, until the next bus transaction wakes it; that transaction is
	// lost (I²C: not acknowledged; SPI: ignored). Count is not used.
	Doze
	// BrokenRead makes the next Count reads of a frame fail with a bus
	// error after the chip handed the frame over, as a transfer broken
	// half-way: the frame is gone until a NACK asks for it again.
	BrokenRead
)

// noiseBurst is what Noise puts before a frame: no 00 FF start code in it.
var noiseBurst = []byte{0xA5, 0x5A, 0x13, 0x37, 0xC3}

func (k FaultKind) String() string {
	switch k {
	case Garbage:
		return "Garbage"
	case NACK:
		return "NACK"
	case BadChecksum:
		return "BadChecksum"
	case NoResponse:
		return "NoResponse"
	case BusError:
		return "BusError"
	case Hang:
		return "Hang"
	case LostACK:
		return "LostACK"
	case Noise:
		return "Noise"
	case ExtraPreamble:
		return "ExtraPreamble"
	case NotReady:
		return "NotReady"
	case Doze:
		return "Doze"
	case BrokenRead:
		return "BrokenRead"
	}
	return fmt.Sprintf("FaultKind(%d)", int(k))
}

// Fault is a misbehaviour to inject.
type Fault struct {
	Kind  FaultKind
	Count int
}

// Stats counts what the chip saw.
type Stats struct {
	BusTx         uint64 // bus transactions
	Frames        uint64 // valid frames from the host: commands, ACK, NACK
	Commands      uint64 // command frames run
	Aborts        uint64 // ACK frames from the host
	NACKs         uint64 // NACK frames from the host
	Polls         uint64 // InListPassiveTarget commands
	EmptyPolls    uint64 // polls answered "no target"
	Activations   uint64 // cards activated
	Exchanges     uint64 // InDataExchange commands
	Presentations uint64 // presentations over (the card left the field)
	Resets        uint64 // pulses on RSTPDN
	Wakeups       uint64 // wake-ups from power-down
}

// presentation is one card presented to the reader.
type presentation struct {
	card      Card
	done      chan struct{}
	activated bool
}

// activation is the card the reader activated.
type activation struct {
	card Card
	p    *presentation // nil for a held card
	gen  uint64        // fieldGen when activated: stale after a removal
}

// Chip is an emulated PN532. It is safe for concurrent use.
type Chip struct {
	opts Opts
	irq  *irqPin
	rst  *resetPin

	mu sync.Mutex
	// Host protocol.
	ackOut      []byte // the frame in the ACK slot (ACK, NACK or garbage); nil: none
	resp        []byte // the response, readable once the ACK slot is empty
	last        []byte // last good response, for NACK
	lastInfo    bool   // last is an information frame (not the error frame)
	listPending bool   // InListPassiveTarget waits for a card
	listGen     uint64
	listTimer   *time.Timer
	sleepAfter  bool // PowerDown answered: sleep once the answer is read
	asleep      bool
	inReset     bool // RSTPDN held low
	irqLow      bool
	faults      map[FaultKind]int
	// Configuration.
	retries [3]byte
	rfOn    bool
	// Field.
	queue    []*presentation
	gap      bool // a presentation just ended: the next poll answers an empty field
	held     Card
	active   *activation
	fieldGen uint64
	chainOut []byte // rest of a card answer the host fetches with MI
	chainIn  []byte // command data the host sends in parts
	stats    Stats
	scratch  []byte
}

// New returns an emulated PN532, awake, with its power-on configuration.
// opts may be nil.
func New(opts *Opts) *Chip {
	o := DefaultOpts
	if opts != nil {
		if opts.IC != 0 {
			o.IC, o.Ver, o.Rev, o.Support = opts.IC, opts.Ver, opts.Rev, opts.Support
		}
		if opts.RetryTime > 0 {
			o.RetryTime = opts.RetryTime
		}
		o.Logger = opts.Logger
	}
	c := &Chip{opts: o, faults: map[FaultKind]int{}}
	c.irq = &irqPin{c: c, edges: make(chan struct{}, 1)}
	c.rst = &resetPin{c: c}
	c.powerOn()
	return c
}

// powerOn sets the state of a chip that just booted.
func (c *Chip) powerOn() {
	c.ackOut, c.resp, c.last = nil, nil, nil
	c.stopList()
	c.sleepAfter, c.asleep = false, false
	c.retries = [3]byte{0xFF, 0x01, 0xFF}
	c.rfOn = false
	c.active = nil
	c.chainOut, c.chainIn = nil, nil
}

// I2C returns a bus on which the chip answers at address 0x24. Like the real
// chip, every read starts with the status byte (bit 0: a frame is ready); a
// read longer than the status byte hands the ready frame over, even when it
// is too short to hold all of it (a NACK gets it again). The first
// transaction after PowerDown wakes the chip up and is not acknowledged.
func (c *Chip) I2C() i2c.Bus { return &i2cBus{c: c} }

// SPI returns a port whose connection speaks the PN532 SPI protocol: 0x01
// data write, 0x02 status read, 0x03 data read, least significant bit first
// on the wire (the host reverses bits itself, since like the Raspberry Pi the
// port refuses spi.LSBFirst). Tx wants write and read buffers of equal length.
// The first transaction after PowerDown only wakes the chip up.
func (c *Chip) SPI() spi.Port { return &spiPort{c: c} }

// IRQ returns the chip's P70_IRQ line: low while a frame is ready for the
// host; each new frame makes a falling edge.
func (c *Chip) IRQ() gpio.PinIn { return c.irq }

// ResetPin returns the chip's RSTPDN line: low holds the chip in reset (it
// does not answer), back to high reboots it with its power-on configuration.
func (c *Chip) ResetPin() gpio.PinOut { return c.rst }

// Present queues a presentation of card. Presentations are served one at a
// time, in order: the card enters the field when the ones before it have
// left. The returned channel is closed when the card has left the field: the
// reader released or deselected it, or polled again after activating it, or
// Remove took it away, or its Transmit failed.
func (c *Chip) Present(card Card) <-chan struct{} {
	p := &presentation{card: card, done: make(chan struct{})}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.queue = append(c.queue, p)
	if c.held == nil && len(c.queue) == 1 {
		c.cardArrived()
	}
	return p.done
}

// Hold puts card in the field and keeps it there until Remove, as a card
// left on the reader: it is detected again after each release. The card in
// the field before, if any, is removed first; queued presentations wait.
func (c *Chip) Hold(card Card) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.removeLocked()
	c.held = card
	c.cardArrived()
}

// Remove takes the card in the field away: the held card, or else the
// presentation being served. An exchange in progress with it fails with
// status 0x01, as on hardware.
func (c *Chip) Remove() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.removeLocked()
	c.cardArrived() // the next presentation, if any, enters the field
}

// Inject makes the chip misbehave: faults of the same kind add up.
func (c *Chip) Inject(f Fault) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case f.Kind == Hang:
		c.faults[Hang] = 1
	case f.Kind == Doze:
		c.asleep = true
	case f.Count > 0:
		c.faults[f.Kind] += f.Count
	}
}

// Stats returns what the chip saw so far.
func (c *Chip) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

// Queued returns the number of presentations not over yet.
func (c *Chip) Queued() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue)
}

// fault consumes one occurrence of the fault k, if injected.
func (c *Chip) fault(k FaultKind) bool {
	if c.faults[k] > 0 {
		c.faults[k]--
		return true
	}
	return false
}

func (c *Chip) hung() bool { return c.faults[Hang] > 0 || c.inReset }

// fieldCard returns the card in the field and its presentation (nil for the
// held card).
func (c *Chip) fieldCard() (Card, *presentation) {
	if c.held != nil {
		return c.held, nil
	}
	if len(c.queue) > 0 {
		return c.queue[0].card, c.queue[0]
	}
	return nil, nil
}

// removeLocked takes the field card away.
func (c *Chip) removeLocked() {
	switch {
	case c.held != nil:
		c.held = nil
	case len(c.queue) > 0:
		c.finish(c.queue[0])
	default:
		return
	}
	c.fieldGen++
}

// finish ends the presentation p, which must be the first in the queue.
func (c *Chip) finish(p *presentation) {
	if len(c.queue) == 0 || c.queue[0] != p {
		return
	}
	c.queue[0] = nil
	c.queue = c.queue[1:]
	if len(c.queue) == 0 {
		c.queue = nil // let the backing array go
	}
	close(p.done)
	c.stats.Presentations++
	// The card has left: the next poll finds the field empty, as when a person takes a card
	// away before the next tap, so a reader can tell two presentations of the same card apart.
	c.gap = true
}

// deactivate forgets the activated card; a presentation whose card was
// activated is over.
func (c *Chip) deactivate() {
	if a := c.active; a != nil {
		c.active = nil
		if a.p != nil && a.gen == c.fieldGen {
			c.finish(a.p)
		}
	}
	c.chainOut, c.chainIn = nil, nil
}

// cardArrived answers a waiting poll if a card is in the field.
func (c *Chip) cardArrived() {
	if card, _ := c.fieldCard(); card != nil && c.listPending && !c.gap {
		c.stopList()
		c.respond(c.activate())
	}
}

func (c *Chip) stopList() {
	c.listPending = false
	c.listGen++
	if c.listTimer != nil {
		c.listTimer.Stop()
		c.listTimer = nil
	}
}

// activate activates the field card and returns the InListPassiveTarget
// answer: one target, or none when the field is empty.
func (c *Chip) activate() []byte {
	card, p := c.fieldCard()
	if card == nil {
		c.stats.EmptyPolls++
		return []byte{0x4B, 0x00}
	}
	uid, ats := card.UID(), card.ATS()
	sr := card.SensRes()
	r := make([]byte, 0, 8+len(uid)+len(ats))
	r = append(r, 0x4B, 0x01, 0x01, sr[0], sr[1], card.SelRes(), byte(len(uid)))
	r = append(r, uid...)
	if ats != nil {
		r = append(r, byte(len(ats)+1))
		r = append(r, ats...)
	}
	c.active = &activation{card: card, p: p, gen: c.fieldGen}
	if p != nil {
		p.activated = true
	}
	c.stats.Activations++
	return r
}

// ready reports whether the chip has a frame for the host.
func (c *Chip) ready() bool { return c.ackOut != nil || c.resp != nil }

// updateIRQ drives the IRQ line from the chip state.
func (c *Chip) updateIRQ() {
	low := c.ready()
	if low && !c.irqLow {
		select {
		case c.irq.edges <- struct{}{}:
		default:
		}
	}
	c.irqLow = low
}

// respond makes the response carrying data (response code first) ready
// after the ACK.
func (c *Chip) respond(data []byte) {
	f := encodeFrame(0xD5, data)
	c.last, c.lastInfo = f, true
	c.resp = c.damage(f, true)
	c.updateIRQ()
}

// respondError answers with the application error frame (syntax error).
func (c *Chip) respondError() {
	f := []byte{0x00, 0x00, 0xFF, 0x01, 0xFF, 0x7F, 0x81, 0x00}
	c.last, c.lastInfo = f, false
	c.resp = c.damage(f, false)
	c.updateIRQ()
}

// damage applies the output faults to a frame about to be sent.
func (c *Chip) damage(f []byte, info bool) []byte {
	if c.fault(Garbage) {
		return []byte{0xA5, 0x5A, 0xFF, 0x13, 0x37, 0xC3, 0x3C, 0x00}
	}
	if info && c.fault(BadChecksum) {
		g := append([]byte(nil), f...)
		g[len(g)-2]++
		f = g
	}
	if c.fault(ExtraPreamble) {
		f = append([]byte{0x00}, f...)
	}
	if c.fault(Noise) {
		f = append(append([]byte(nil), noiseBurst...), f...)
	}
	return f
}

var (
	ackFrame  = []byte{0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00}
	nackFrame = []byte{0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00}
)

// hostWrite handles the bytes of one write transaction from the host. It
// may unlock c.mu while a card computes its answer.
func (c *Chip) hostWrite(b []byte) {
	kind, data, ok := parseHostFrame(b)
	if !ok {
		return // as the chip does: no ACK for a frame it cannot read
	}
	c.stats.Frames++
	switch kind {
	case frameACK:
		c.stats.Aborts++
		c.abort()
		c.chainIn = nil
	case frameNACK:
		c.stats.NACKs++
		if c.last != nil {
			c.ackOut = nil
			c.resp = c.damage(c.last, c.lastInfo)
		}
	case frameInfo:
		if c.fault(NoResponse) {
			return
		}
		if c.fault(NACK) {
			c.ackOut = nackFrame
			c.updateIRQ()
			return
		}
		c.abort()
		if !c.fault(LostACK) {
			c.ackOut = c.damage(ackFrame, false)
		}
		c.command(data)
	}
	c.updateIRQ()
}

// abort drops the command in progress and what the chip had to send.
func (c *Chip) abort() {
	c.stopList()
	c.ackOut, c.resp = nil, nil
}

// command runs one command; data starts with the command code.
func (c *Chip) command(data []byte) {
	c.stats.Commands++
	cmd, p := data[0], data[1:]
	if c.opts.Logger != nil {
		c.opts.Logger.Debug("pn532sim: command", "code", fmt.Sprintf("0x%02X", cmd), "len", len(p))
	}
	switch cmd {
	case 0x02: // GetFirmwareVersion
		c.respond([]byte{0x03, c.opts.IC, c.opts.Ver, c.opts.Rev, c.opts.Support})
	case 0x04: // GetGeneralStatus
		r := []byte{0x05, 0x00, 0x00, 0x00}
		if c.rfOn {
			r[2] = 0x01
		}
		if c.active != nil {
			r[3] = 0x01
			r = append(r, 0x01, 0x00, 0x00, 0x00)
		}
		c.respond(append(r, 0x00))
	case 0x14: // SAMConfiguration
		if len(p) < 1 || p[0] < 0x01 || p[0] > 0x04 {
			c.respondError()
			return
		}
		c.respond([]byte{0x15})
	case 0x16: // PowerDown
		if len(p) < 1 {
			c.respondError()
			return
		}
		c.respond([]byte{0x17, 0x00})
		c.sleepAfter = true
	case 0x32: // RFConfiguration
		c.rfConfiguration(p)
	case 0x40: // InDataExchange
		c.inDataExchange(p)
	case 0x44, 0x52: // InDeselect, InRelease
		if len(p) != 1 {
			c.respondError()
			return
		}
		st := byte(0x00)
		switch {
		case p[0] > 2:
			st = 0x27
		case c.active != nil:
			c.deactivate()
		case p[0] != 0:
			st = 0x27
		}
		c.respond([]byte{cmd + 1, st})
	case 0x4A: // InListPassiveTarget
		c.inListPassiveTarget(p)
	default:
		c.respondError()
	}
}

func (c *Chip) rfConfiguration(p []byte) {
	if len(p) < 1 {
		c.respondError()
		return
	}
	want := map[byte]int{0x01: 1, 0x02: 3, 0x04: 1, 0x05: 3}
	if n, ok := want[p[0]]; ok && len(p)-1 != n {
		c.respondError()
		return
	}
	switch p[0] {
	case 0x01:
		c.rfOn = p[1]&0x01 != 0
		if !c.rfOn {
			c.deactivate()
		}
	case 0x05:
		c.retries = [3]byte(p[1:4])
	}
	c.respond([]byte{0x33})
}

func (c *Chip) inListPassiveTarget(p []byte) {
	c.stats.Polls++
	if len(p) < 2 || p[0] < 1 || p[0] > 2 {
		c.respondError()
		return
	}
	// Polling again ends the presentation of a card the reader activated:
	// the card is taken away once the reader is done with it.
	c.deactivate()
	c.rfOn = true
	if p[1] != 0x00 {
		c.respond(c.emptyPoll()) // no emulated card speaks another modulation
		return
	}
	if c.gap {
		c.gap = false
		c.respond(c.emptyPoll())
		return
	}
	if card, _ := c.fieldCard(); card != nil {
		c.respond(c.activate())
		return
	}
	c.listPending = true
	gen := c.listGen
	if r := c.retries[2]; r != 0xFF {
		c.listTimer = time.AfterFunc(time.Duration(int(r)+1)*c.opts.RetryTime, func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			if c.listPending && c.listGen == gen {
				c.listPending = false
				c.listTimer = nil
				c.respond(c.emptyPoll())
			}
		})
	}
}

func (c *Chip) emptyPoll() []byte {
	c.stats.EmptyPolls++
	return []byte{0x4B, 0x00}
}

// maxDataIn is what the chip hands over per InDataExchange answer.
const maxDataIn = 262

func (c *Chip) inDataExchange(p []byte) {
	c.stats.Exchanges++
	if len(p) < 1 {
		c.respondError()
		return
	}
	tg, mi, payload := p[0]&0x3F, p[0]&0x40 != 0, p[1:]
	a := c.active
	if a == nil || tg != 1 {
		c.respond([]byte{0x41, 0x27})
		return
	}
	if c.chainOut != nil && !mi && len(payload) == 0 {
		c.sendChunk()
		return
	}
	c.chainOut = nil
	if mi {
		c.chainIn = append(c.chainIn, payload...)
		c.respond([]byte{0x41, 0x00})
		return
	}
	apdu := append(c.chainIn, payload...)
	c.chainIn = nil
	if a.gen != c.fieldGen {
		c.respond([]byte{0x41, 0x01}) // the card is gone: it does not answer
		return
	}
	// The card computes its answer without the chip lock, so that Remove
	// can take it away meanwhile.
	gen := c.fieldGen
	c.mu.Unlock()
	r, err := a.card.Transmit(apdu)
	c.mu.Lock()
	if c.active != a {
		return // the chip was reset or released the card meanwhile
	}
	if err != nil || gen != c.fieldGen {
		if err != nil && gen == c.fieldGen {
			c.removeLocked() // the card left the field mid-exchange
		}
		c.respond([]byte{0x41, 0x01})
		return
	}
	c.chainOut = r
	c.sendChunk()
}

// sendChunk answers with the next part of the card's answer.
func (c *Chip) sendChunk() {
	r := c.chainOut
	st := byte(0x00)
	if len(r) > maxDataIn {
		c.chainOut = r[maxDataIn:]
		r = r[:maxDataIn]
		st = 0x40
	} else {
		c.chainOut = nil
	}
	c.respond(append([]byte{0x41, st}, r...))
}

// hostRead fills r with the ready frame (padded with zeros) and hands it over.
func (c *Chip) hostRead(r []byte) {
	var f []byte
	if c.ackOut != nil {
		f, c.ackOut = c.ackOut, nil
	} else {
		f, c.resp = c.resp, nil
		if c.sleepAfter && f != nil {
			c.sleep()
		}
	}
	clear(r[copy(r, f):])
	// The line goes high once the frame is read, and low again if another
	// one is ready: a new falling edge.
	c.irqLow = false
	c.updateIRQ()
}

// sleep enters power-down: RF off, targets released.
func (c *Chip) sleep() {
	c.sleepAfter = false
	c.asleep = true
	c.rfOn = false
	c.deactivate()
}

// wake leaves power-down.
func (c *Chip) wake() {
	c.asleep = false
	c.stats.Wakeups++
}

// busTx is the common start of every bus transaction; it returns an error
// to give the host, and whether the transaction is to be ignored.
func (c *Chip) busTx() (ignore bool, err error) {
	c.stats.BusTx++
	if c.fault(BusError) {
		return true, errors.New("pn532sim: bus error (injected)")
	}
	return c.hung(), nil
}

// parseHostFrame decodes one frame written by the host: the preamble zeros,
// the start code, then an ACK, a NACK or an information frame with TFI 0xD4
// and correct checksums. It returns the command code and parameters of an
// information frame.
func parseHostFrame(b []byte) (frameKind, []byte, bool) {
	i := 0
	for i < len(b) && b[i] == 0x00 {
		i++
	}
	if i == 0 || i+2 >= len(b) || b[i] != 0xFF {
		return 0, nil, false
	}
	p := i + 1
	ln, lcs := b[p], b[p+1]
	switch {
	case ln == 0x00 && lcs == 0xFF:
		return frameACK, nil, true
	case ln == 0xFF && lcs == 0x00:
		return frameNACK, nil, true
	}
	n, q := int(ln), p+2
	if ln == 0xFF && lcs == 0xFF {
		if len(b) < p+5 || b[p+2]+b[p+3]+b[p+4] != 0 {
			return 0, nil, false
		}
		n, q = int(b[p+2])<<8|int(b[p+3]), p+5
	} else if ln+lcs != 0 {
		return 0, nil, false
	}
	if n < 2 || n > 265 || len(b) < q+n+1 {
		return 0, nil, false
	}
	var sum byte
	for _, x := range b[q : q+n+1] {
		sum += x
	}
	if sum != 0 || b[q] != 0xD4 {
		return 0, nil, false
	}
	return frameInfo, b[q+1 : q+n], true
}

type frameKind int

const (
	frameInfo frameKind = iota + 1
	frameACK
	frameNACK
)

// encodeFrame returns the normal or extended information frame carrying tfi
// and data.
func encodeFrame(tfi byte, data []byte) []byte {
	n := len(data) + 1
	f := make([]byte, 0, n+10)
	f = append(f, 0x00, 0x00, 0xFF)
	if n <= 255 {
		f = append(f, byte(n), byte(-n))
	} else {
		hi, lo := byte(n>>8), byte(n)
		f = append(f, 0xFF, 0xFF, hi, lo, -(hi + lo))
	}
	sum := tfi
	for _, x := range data {
		sum += x
	}
	f = append(f, tfi)
	f = append(f, data...)
	return append(f, -sum, 0x00)
}

// i2cBus is the emulated I²C bus with the chip at Address.
type i2cBus struct{ c *Chip }

func (b *i2cBus) String() string { return "pn532sim-i2c" }

func (b *i2cBus) SetSpeed(physic.Frequency) error { return nil }

func (b *i2cBus) Tx(addr uint16, w, r []byte) error {
	if addr != Address {
		return fmt.Errorf("pn532sim: no device at I2C address 0x%02X", addr)
	}
	c := b.c
	c.mu.Lock()
	defer c.mu.Unlock()
	ignore, err := c.busTx()
	if err != nil {
		return err
	}
	if ignore {
		return errors.New("pn532sim: I2C address not acknowledged")
	}
	if c.asleep {
		c.wake()
		return errors.New("pn532sim: I2C address not acknowledged (waking up)")
	}
	if len(w) > 0 {
		c.hostWrite(w)
	}
	if len(r) > 0 {
		if !c.ready() || len(r) > 1 && c.fault(NotReady) {
			clear(r)
			return nil
		}
		r[0] = 0x01
		if len(r) > 1 {
			c.hostRead(r[1:])
			if c.fault(BrokenRead) {
				clear(r)
				return errors.New("pn532sim: bus error during the read (injected)")
			}
		}
	}
	return nil
}

// spiPort is the emulated SPI port.
type spiPort struct{ c *Chip }

func (p *spiPort) String() string { return "pn532sim-spi" }

func (p *spiPort) Connect(f physic.Frequency, mode spi.Mode, nbits int) (spi.Conn, error) {
	if mode&spi.LSBFirst != 0 {
		return nil, errors.New("pn532sim: LSB-first mode not supported (as on the Raspberry Pi): reverse the bits in software")
	}
	if mode&^spi.LSBFirst != spi.Mode0 {
		return nil, fmt.Errorf("pn532sim: the PN532 wants SPI mode 0, not %s", mode)
	}
	if nbits != 8 {
		return nil, fmt.Errorf("pn532sim: the PN532 wants 8 bits per word, not %d", nbits)
	}
	if f > 5*physic.MegaHertz {
		return nil, fmt.Errorf("pn532sim: %s is above the PN532's 5 MHz", f)
	}
	return &spiConn{c: p.c}, nil
}

// spiConn is a connection to the emulated SPI chip.
type spiConn struct{ c *Chip }

func (s *spiConn) String() string { return "pn532sim-spi" }

func (s *spiConn) Duplex() conn.Duplex { return conn.Full }

func (s *spiConn) TxPackets(p []spi.Packet) error {
	for _, pk := range p {
		if err := s.Tx(pk.W, pk.R); err != nil {
			return err
		}
	}
	return nil
}

func (s *spiConn) Tx(w, r []byte) error {
	if len(w) == 0 {
		return errors.New("pn532sim: SPI Tx without data")
	}
	if r != nil && len(r) != len(w) {
		return fmt.Errorf("pn532sim: SPI Tx with %d bytes to write and %d to read: they must be equal", len(w), len(r))
	}
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	ignore, err := c.busTx()
	if err != nil {
		return err
	}
	clear(r)
	if ignore {
		return nil
	}
	if c.asleep {
		c.wake() // chip select wakes the chip; this transaction is lost
		return nil
	}
	switch bits.Reverse8(w[0]) {
	case 0x01:
		c.scratch = append(c.scratch[:0], w[1:]...)
		for i, x := range c.scratch {
			c.scratch[i] = bits.Reverse8(x)
		}
		c.hostWrite(c.scratch)
	case 0x02:
		if len(r) > 1 && c.ready() {
			r[1] = bits.Reverse8(0x01)
		}
	case 0x03:
		if len(r) > 1 && c.ready() && !c.fault(NotReady) {
			c.hostRead(r[1:])
			if c.fault(BrokenRead) {
				clear(r)
				return errors.New("pn532sim: bus error during the read (injected)")
			}
			for i := 1; i < len(r); i++ {
				r[i] = bits.Reverse8(r[i])
			}
		}
	default:
		return fmt.Errorf("pn532sim: unknown SPI operation 0x%02X", bits.Reverse8(w[0]))
	}
	return nil
}

// irqPin is the P70_IRQ line.
type irqPin struct {
	c     *Chip
	edges chan struct{}
}

func (p *irqPin) String() string             { return "pn532sim-IRQ" }
func (p *irqPin) Halt() error                { return nil }
func (p *irqPin) Name() string               { return "P70_IRQ" }
func (p *irqPin) Number() int                { return -1 }
func (p *irqPin) Function() string           { return "In/High" }
func (p *irqPin) Pull() gpio.Pull            { return gpio.PullUp }
func (p *irqPin) DefaultPull() gpio.Pull     { return gpio.PullUp }
func (p *irqPin) Func() pin.Func             { return gpio.IN }
func (p *irqPin) SupportedFuncs() []pin.Func { return []pin.Func{gpio.IN} }
func (p *irqPin) SetFunc(f pin.Func) error   { return errors.New("pn532sim: IRQ is an input") }
func (p *irqPin) PWM(gpio.Duty, physic.Frequency) error {
	return errors.New("pn532sim: IRQ is an input")
}

// In accepts any pull and edge; it forgets edges seen so far.
func (p *irqPin) In(gpio.Pull, gpio.Edge) error {
	select {
	case <-p.edges:
	default:
	}
	return nil
}

// Read returns Low while the chip has a frame ready.
func (p *irqPin) Read() gpio.Level {
	p.c.mu.Lock()
	defer p.c.mu.Unlock()
	if p.c.irqLow {
		return gpio.Low
	}
	return gpio.High
}

// WaitForEdge waits for a falling edge (one seen since the last call
// counts); a negative timeout waits forever.
func (p *irqPin) WaitForEdge(timeout time.Duration) bool {
	if timeout < 0 {
		<-p.edges
		return true
	}
	select {
	case <-p.edges:
		return true
	default:
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.edges:
		return true
	case <-t.C:
		return false
	}
}

// resetPin is the RSTPDN line.
type resetPin struct{ c *Chip }

func (p *resetPin) String() string   { return "pn532sim-RSTPDN" }
func (p *resetPin) Halt() error      { return nil }
func (p *resetPin) Name() string     { return "RSTPDN" }
func (p *resetPin) Number() int      { return -1 }
func (p *resetPin) Function() string { return "Out" }
func (p *resetPin) PWM(gpio.Duty, physic.Frequency) error {
	return errors.New("pn532sim: RSTPDN has no PWM")
}

// Out drives RSTPDN: low holds the chip in reset, high lets it boot.
func (p *resetPin) Out(l gpio.Level) error {
	c := p.c
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case l == gpio.Low && !c.inReset:
		c.inReset = true
		c.stats.Resets++
		c.powerOn()
		delete(c.faults, Hang)
		c.updateIRQ()
	case l == gpio.High && c.inReset:
		c.inReset = false
	}
	return nil
}

var (
	_ i2c.Bus     = (*i2cBus)(nil)
	_ spi.Port    = (*spiPort)(nil)
	_ spi.Conn    = (*spiConn)(nil)
	_ gpio.PinIn  = (*irqPin)(nil)
	_ gpio.PinOut = (*resetPin)(nil)
	_ pin.PinFunc = (*irqPin)(nil)
)
