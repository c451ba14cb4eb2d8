package pn532

import (
	"context"
	"errors"
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
	// returns its bytes, from the preamble on, possibly followed by padding
	// and possibly invalid: the caller decodes. hint is the expected frame
	// size; unless exact is set a longer frame is fetched whole. The slice
	// is valid until the next call.
	recv(ctx context.Context, deadline time.Time, hint int, exact bool) ([]byte, error)
	// wake wakes the chip from power-down and resynchronises: it aborts
	// the command in progress, if any, and discards what the chip had
	// ready to send.
	wake(ctx context.Context) error
	// wakeMask is the PowerDown WakeUpEnable bit of this interface.
	wakeMask() byte
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
type busLink struct {
	io   busIO
	irq  gpio.PinIn // nil: poll the status
	poll time.Duration
	mask byte
	buf  [maxFrameSize]byte
}

func (l *busLink) String() string { return l.io.String() }

func (l *busLink) wakeMask() byte { return l.mask }

func (l *busLink) send(_ context.Context, f []byte) error { return l.io.write(f) }

// ready reports once whether the chip has something to send.
func (l *busLink) ready() (bool, error) {
	if l.irq != nil {
		return l.irq.Read() == gpio.Low, nil
	}
	return l.io.status()
}

// waitReady waits until the chip has something to send.
func (l *busLink) waitReady(ctx context.Context, deadline time.Time) error {
	for {
		ok, err := l.ready()
		if err != nil {
			return err
		}
		if ok {
			return nil
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

func (l *busLink) recv(ctx context.Context, deadline time.Time, hint int, exact bool) ([]byte, error) {
	n := min(hint, len(l.buf))
	again := false
	direct := l.direct(n)
	for {
		if !direct {
			if err := l.waitReady(ctx, deadline); err != nil {
				return nil, err
			}
		}
		b := l.buf[:n]
		ok, err := l.io.read(b)
		if err != nil {
			return nil, err
		}
		if !ok {
			// Not ready: a read tried at once came too early, or the
			// status byte of the read disagrees with the IRQ line or
			// the status poll. Wait a little and look again.
			direct = false
			if err := l.pause(ctx, deadline); err != nil {
				return nil, err
			}
			continue
		}
		size, err := frameSize(b)
		if err != nil || size <= n || exact || again || size > len(l.buf) {
			return b, nil
		}
		// The frame is longer than expected: the chip sends a frame
		// again when asked with a NACK; read it whole this time.
		if err := l.io.write(nackFrame); err != nil {
			return nil, err
		}
		n, again = size, true
		direct = l.direct(n)
	}
}

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
		ok, err := l.ready()
		if err != nil {
			return err
		}
		if !ok {
			return nil
		}
		if _, err := l.io.read(l.buf[:]); err != nil {
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
	for i := range out {
		out[i] = bits.Reverse8(r[1+i])
	}
	return true, nil
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

func (l *uartLink) recv(ctx context.Context, deadline time.Time, _ int, _ bool) ([]byte, error) {
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

// take returns the next frame in the received bytes, or the garbage before
// it as one piece (which the caller's decoder rejects), and false when more
// bytes are needed.
func (l *uartLink) take() ([]byte, bool) {
	if len(l.in) == 0 {
		return nil, false
	}
	size, err := frameSize(l.in)
	switch {
	case err == nil && size <= len(l.in):
		return l.consume(size), true
	case err == nil || errors.Is(err, errShortFrame):
		return nil, false
	}
	// Not a frame start (or a bad length checksum): return everything up
	// to the next possible start code.
	k := len(l.in)
	for i := 1; i+1 < len(l.in); i++ {
		if l.in[i] == 0x00 && l.in[i+1] == 0xFF {
			k = i
			break
		}
	}
	if k == len(l.in) && l.in[k-1] == 0x00 {
		k-- // may be the start of a start code
		if k == 0 {
			return nil, false
		}
	}
	return l.consume(k), true
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
