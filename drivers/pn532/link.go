package pn532

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"time"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/spi"
)

// Time is injected so that tests neither sleep nor depend on the wall clock.
var (
	// doSleep waits for d or until ctx ends, whichever comes first.
	doSleep = sleepCtx
	// timeNow tells the time deadlines are measured with.
	timeNow = time.Now
)

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

const (
	// wakeDelay is how long the chip takes to wake up from power-down
	// once its interface saw traffic (a few ms on hardware).
	wakeDelay = 5 * time.Millisecond
	// maxEdgeWait bounds one wait for the IRQ edge, so a cancelled
	// context or Halt is noticed even though WaitForEdge cannot be
	// interrupted.
	maxEdgeWait = 50 * time.Millisecond
	// maxReadWait bounds one blocking UART read for the same reason.
	maxReadWait = 50 * time.Millisecond
	// maxDirectRead is the longest read (frame bytes after the status
	// byte) tried on I²C without polling the status first: the ACK and the
	// answers of the configuration commands.
	maxDirectRead = 16
)

// link is the host interface the chip is wired to: it moves whole frames.
type link interface {
	String() string
	// send writes one frame to the chip.
	send(ctx context.Context, f []byte) error
	// recv waits until deadline for the next frame from the chip and
	// returns its bytes, possibly with noise before and padding after, and
	// possibly invalid: the caller finds the frame with scanFrame. hint is
	// the expected frame size: a read of a longer frame is done again,
	// whole. The slice is valid until the next call. errFrameLost means
	// that the chip handed a frame over to a read that failed.
	recv(ctx context.Context, deadline time.Time, hint int) ([]byte, error)
	// wake wakes the chip from power-down and resynchronises: it aborts
	// the command in progress, if any, and discards what the chip had
	// ready to send.
	wake(ctx context.Context) error
	// wakeMask is the PowerDown WakeUpEnable bit of this interface.
	wakeMask() byte
	// setNote sets the function the link reports recovered anomalies to.
	setNote(func(error))
}

// busIO is one I²C or SPI transaction of each kind the protocol uses.
type busIO interface {
	String() string
	// write sends a frame.
	write(f []byte) error
	// status reports whether the chip has a frame ready.
	status() (bool, error)
	// read reads len(r) bytes of the ready frame into r. It returns false
	// when the chip turned out not to be ready after all.
	read(r []byte) (bool, error)
	// statusInRead reports whether read tells readiness itself (the I²C
	// status byte), so that it may be tried without polling first.
	statusInRead() bool
}

// busLink is the link over I²C or SPI: readiness comes from the IRQ line or
// from status polls, then the frame is read in one transaction.
//
// A transaction that fails on the bus (an address not acknowledged, a chip
// still waking up) is tried again, busTries times in all. The chip never saw a
// failed write or status poll, so repeating them is safe; a failed read may
// have taken the frame, which is then asked for again (errFrameLost).
type busLink struct {
	io   busIO
	irq  gpio.PinIn // nil: poll the status
	poll time.Duration
	mask byte
	note func(error) // counts a bus error that was recovered
	buf  [maxFrameSize]byte
}

// Bus error retries.
var (
	// busRetryDelays are the pauses before the second and third tries of
	// a transaction: a glitch passes at once, a chip waking up from
	// power-down needs a few milliseconds.
	busRetryDelays = [...]time.Duration{time.Millisecond, wakeDelay}
	// errFrameLost: a read failed after the chip had said a frame was
	// ready, and then the chip had nothing: the failed read took it.
	errFrameLost = errors.New("pn532: frame lost in a failed read")
)

// busTries is how many times a transaction is tried.
const busTries = len(busRetryDelays) + 1

// rereadSlack is added to the size of a frame read again after noise cut it,
// so that a little more noise the second time does not cut it again.
const rereadSlack = 4

func (l *busLink) String() string { return l.io.String() }

func (l *busLink) wakeMask() byte { return l.mask }

func (l *busLink) setNote(f func(error)) { l.note = f }

// retry runs a bus transaction, again after a bus error.
func (l *busLink) retry(ctx context.Context, tx func() error) error {
	for try := 0; ; try++ {
		err := tx()
		if err == nil || try == len(busRetryDelays) {
			return err
		}
		l.noteErr(err)
		if err := doSleep(ctx, busRetryDelays[try]); err != nil {
			return err
		}
	}
}

func (l *busLink) noteErr(err error) {
	if l.note != nil {
		l.note(fmt.Errorf("pn532: bus error, tried again: %w", err))
	}
}

func (l *busLink) send(ctx context.Context, f []byte) error {
	return l.retry(ctx, func() error { return l.io.write(f) })
}

// ready reports once whether the chip has something to send.
func (l *busLink) ready(ctx context.Context) (bool, error) {
	if l.irq != nil {
		return l.irq.Read() == gpio.Low, nil
	}
	var ok bool
	err := l.retry(ctx, func() (err error) {
		ok, err = l.io.status()
		return err
	})
	return ok, err
}

// waitReady waits until the chip has something to send. After a failed
// read (lost set), a chip with nothing to send has handed its frame over to
// that read: errFrameLost.
func (l *busLink) waitReady(ctx context.Context, deadline time.Time, lost bool) error {
	for {
		ok, err := l.ready(ctx)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if lost {
			return errFrameLost
		}
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		rem := deadline.Sub(timeNow())
		if rem <= 0 {
			return ErrTimeout
		}
		if l.irq != nil {
			// The level is checked again at the top: an edge queued
			// earlier makes WaitForEdge return at once, harmlessly.
			l.irq.WaitForEdge(min(rem, maxEdgeWait))
			continue
		}
		if err := doSleep(ctx, min(rem, l.poll)); err != nil {
			return err
		}
	}
}

// recv reads the next frame. A read that finds the chip not ready (the IRQ
// line or the status poll was early, or glitched) is never answered with a
// NACK: that would make the chip start its answer again. A frame the read
// cut short (a longer answer than expected, or noise before it) is asked for
// again with a NACK and read whole.
func (l *busLink) recv(ctx context.Context, deadline time.Time, hint int) ([]byte, error) {
	n := min(max(hint, len(ackFrame)), len(l.buf))
	direct := l.direct(n)
	rereads, fails := 0, 0
	failed := false // a read failed after the chip said a frame was ready
	for {
		if !direct {
			if err := l.waitReady(ctx, deadline, failed); err != nil {
				return nil, err
			}
		}
		b := l.buf[:n]
		ok, err := l.io.read(b)
		if err != nil {
			if fails++; fails == busTries {
				return nil, err
			}
			l.noteErr(err)
			failed = failed || !direct
			if err := doSleep(ctx, busRetryDelays[fails-1]); err != nil {
				return nil, err
			}
			continue
		}
		if !ok {
			if failed {
				return nil, errFrameLost
			}
			// Not ready: a read tried at once came too early, or the
			// read disagrees with the IRQ line or the status poll.
			// Wait a little and look again.
			direct = false
			if err := l.pause(ctx, deadline); err != nil {
				return nil, err
			}
			continue
		}
		failed, fails = false, 0
		sc := scanFrame(b)
		if !errors.Is(sc.err, errShortFrame) || sc.need <= n || rereads == maxRereads {
			return b, nil
		}
		// The frame is longer than the read: the chip sends it again
		// when asked with a NACK; read it whole this time.
		if err := l.send(ctx, nackFrame); err != nil {
			return nil, err
		}
		rereads++
		n = sc.need
		if sc.noise {
			n += rereadSlack
		}
		n = min(n, len(l.buf))
		direct = l.direct(n)
	}
}

// maxRereads bounds the NACKs recv sends for frames its reads cut short.
const maxRereads = 2

// direct reports whether a read of n frame bytes is tried without waiting
// for the chip to say it is ready. Without IRQ, a read that carries the status
// byte (I²C) costs little more than a status poll when it is short, and saves
// that poll when the frame is ready, as the ACK and short answers usually are.
func (l *busLink) direct(n int) bool {
	return l.irq == nil && l.io.statusInRead() && n <= maxDirectRead
}

// pause waits one PollInterval, or until the deadline; past it, it returns
// ErrTimeout.
func (l *busLink) pause(ctx context.Context, deadline time.Time) error {
	rem := deadline.Sub(timeNow())
	if rem <= 0 {
		return ErrTimeout
	}
	return doSleep(ctx, min(rem, l.poll))
}

func (l *busLink) wake(ctx context.Context) error {
	// Bus traffic wakes the chip (I²C address match, SPI chip select);
	// on I²C a sleeping chip may not acknowledge this first transaction,
	// so its error is expected. The ACK frame aborts a command in
	// progress and is ignored by an idle chip.
	_ = l.io.write(ackFrame)
	if err := doSleep(ctx, wakeDelay); err != nil {
		return err
	}
	// Discard what the chip had ready (a late response, say). Two frames
	// at most: an ACK and a response.
	for range 2 {
		ok, err := l.ready(ctx)
		if err != nil {
			return err
		}
		if !ok {
			return nil
		}
		if err := l.retry(ctx, func() error { _, err := l.io.read(l.buf[:]); return err }); err != nil {
			return err
		}
	}
	return nil
}

// i2cIO speaks the PN532 I²C protocol: every read starts with the status byte.
type i2cIO struct {
	d  i2c.Dev
	st [1]byte
	rb [1 + maxFrameSize]byte
}

func (c *i2cIO) String() string { return c.d.String() }

func (c *i2cIO) write(f []byte) error { return c.d.Tx(f, nil) }

func (c *i2cIO) statusInRead() bool { return true }

func (c *i2cIO) status() (bool, error) {
	if err := c.d.Tx(nil, c.st[:]); err != nil {
		return false, err
	}
	return c.st[0]&0x01 != 0, nil
}

func (c *i2cIO) read(r []byte) (bool, error) {
	b := c.rb[:1+len(r)]
	if err := c.d.Tx(nil, b); err != nil {
		return false, err
	}
	if b[0]&0x01 == 0 {
		return false, nil
	}
	copy(r, b[1:])
	return true, nil
}

// SPI operation bytes, sent first in every transaction.
const (
	spiDataWrite  = 0x01
	spiStatusRead = 0x02
	spiDataRead   = 0x03
)

// spiIO speaks the PN532 SPI protocol. The chip wants the least significant
// bit first; the Raspberry Pi's SPI driver refuses that mode, so every byte is
// bit-reversed here and the bus runs in plain mode 0. Transactions write and
// read the same number of bytes, as periph's Tx expects.
type spiIO struct {
	c    spi.Conn
	w, r [1 + maxFrameSize]byte
}

func (c *spiIO) String() string { return c.c.String() }

func (c *spiIO) statusInRead() bool { return false }

func (c *spiIO) write(f []byte) error {
	n := 1 + len(f)
	w, r := c.w[:n], c.r[:n]
	w[0] = bits.Reverse8(spiDataWrite)
	for i, b := range f {
		w[1+i] = bits.Reverse8(b)
	}
	return c.c.Tx(w, r)
}

func (c *spiIO) status() (bool, error) {
	w, r := c.w[:2], c.r[:2]
	w[0], w[1] = bits.Reverse8(spiStatusRead), 0
	if err := c.c.Tx(w, r); err != nil {
		return false, err
	}
	return bits.Reverse8(r[1])&0x01 != 0, nil
}

func (c *spiIO) read(out []byte) (bool, error) {
	n := 1 + len(out)
	w, r := c.w[:n], c.r[:n]
	w[0] = bits.Reverse8(spiDataRead)
	clear(w[1:])
	if err := c.c.Tx(w, r); err != nil {
		return false, err
	}
	ready := false
	for i := range out {
		out[i] = bits.Reverse8(r[1+i])
		ready = ready || out[i] != 0
	}
	// A chip with nothing to send clocks out zeros: that is no frame (every
	// frame has its start code 00 FF), and no reason to NACK.
	return ready, nil
}

// wakePreamble wakes a PN532 on HSU from power-down (or from its low-power
// state after power-on): 0x55 0x55 then zeros for the oscillator to start.
var wakePreamble = []byte{0x55, 0x55, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

// readDeadliner is implemented by ports that can bound a blocking read, e.g.
// an *os.File opened with O_NONBLOCK.
type readDeadliner interface {
	SetReadDeadline(t time.Time) error
}

// uartLink is the link over HSU (the PN532's UART): a byte stream that may
// hold several frames, or garbage, in one read.
type uartLink struct {
	rw    io.ReadWriter
	dl    readDeadliner // nil: the port bounds its reads itself (VTIME)
	poll  time.Duration
	in    []byte // received and not yet returned
	out   []byte // the frame recv returned last
	chunk [256]byte
}

func newUARTLink(rw io.ReadWriter, poll time.Duration) *uartLink {
	l := &uartLink{rw: rw, poll: poll, in: make([]byte, 0, 2*maxFrameSize), out: make([]byte, 0, maxFrameSize)}
	if d, ok := rw.(readDeadliner); ok {
		l.dl = d
	}
	return l
}

func (l *uartLink) String() string {
	if s, ok := l.rw.(interface{ String() string }); ok {
		return "uart " + s.String()
	}
	if f, ok := l.rw.(interface{ Name() string }); ok {
		return "uart " + f.Name()
	}
	return "uart"
}

func (l *uartLink) wakeMask() byte { return 0x10 }

func (l *uartLink) setNote(func(error)) {}

func (l *uartLink) send(_ context.Context, f []byte) error {
	for len(f) > 0 {
		n, err := l.rw.Write(f)
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrShortWrite
		}
		f = f[n:]
	}
	return nil
}

func (l *uartLink) wake(ctx context.Context) error {
	if err := l.send(ctx, wakePreamble); err != nil {
		return err
	}
	if err := l.send(ctx, ackFrame); err != nil {
		return err
	}
	if err := doSleep(ctx, wakeDelay); err != nil {
		return err
	}
	// Drop what arrived so far, then what is still on its way.
	l.in = l.in[:0]
	deadline := timeNow().Add(wakeDelay)
	for range 4 {
		got, err := l.fill(ctx, deadline)
		if err != nil {
			return err
		}
		l.in = l.in[:0]
		if !got {
			return nil
		}
	}
	return nil
}

func (l *uartLink) recv(ctx context.Context, deadline time.Time, _ int) ([]byte, error) {
	for {
		if b, ok := l.take(); ok {
			return b, nil
		}
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		if !timeNow().Before(deadline) {
			return nil, ErrTimeout
		}
		if _, err := l.fill(ctx, deadline); err != nil {
			return nil, err
		}
	}
}

// take returns the next frame in the received bytes, with whatever came
// before it (noise, which the caller notices), and false when more bytes are
// needed. A frame whose header checks is returned even when its data does not
// (the caller asks for it again); bytes without such a header wait for the
// frame after them, within the bounds fill keeps.
func (l *uartLink) take() ([]byte, bool) {
	if len(l.in) == 0 {
		return nil, false
	}
	sc := scanFrame(l.in)
	if !sc.found || errors.Is(sc.err, errShortFrame) {
		return nil, false
	}
	return l.consume(sc.end), true
}

func (l *uartLink) consume(n int) []byte {
	l.out = append(l.out[:0], l.in[:n]...)
	l.in = l.in[:copy(l.in, l.in[n:])]
	return l.out
}

// fill reads once from the port, for at most maxReadWait, and reports
// whether bytes came.
func (l *uartLink) fill(ctx context.Context, deadline time.Time) (bool, error) {
	if l.dl != nil {
		until := timeNow().Add(maxReadWait)
		if deadline.Before(until) {
			until = deadline
		}
		if err := l.dl.SetReadDeadline(until); err != nil {
			l.dl = nil // not supported by this port (os.ErrNoDeadline)
		}
	}
	n, err := l.rw.Read(l.chunk[:])
	if n > 0 {
		if len(l.in)+n > cap(l.in) {
			// Keep memory bounded: a peer that floods the line loses
			// its oldest bytes, which cannot belong to a valid frame.
			drop := len(l.in) + n - cap(l.in)
			l.in = l.in[:copy(l.in, l.in[min(drop, len(l.in)):])]
		}
		l.in = append(l.in, l.chunk[:n]...)
	}
	switch {
	case err == nil:
	case errors.Is(err, os.ErrDeadlineExceeded) || isTimeout(err):
		return n > 0, nil // the read waited until its deadline
	case errors.Is(err, io.EOF):
		// A port configured with VMIN=0 returns no bytes when its VTIME
		// elapses; os.File reports that as io.EOF.
	default:
		return n > 0, err
	}
	if n == 0 {
		// Some readers return at once with nothing: do not spin.
		if err := doSleep(ctx, min(l.poll, max(deadline.Sub(timeNow()), 0))); err != nil {
			return false, err
		}
	}
	return n > 0, nil
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}
