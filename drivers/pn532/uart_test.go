package pn532

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"
)

// uartStep is what the driver writes and what the port then delivers, one
// chunk per Read.
type uartStep struct {
	w []byte
	r [][]byte
}

// fakeUART is a serial port configured with VMIN=0: a Read with nothing to
// deliver returns io.EOF at once, as *os.File does when VTIME elapses.
type fakeUART struct {
	t       *testing.T
	steps   []uartStep
	pending []byte
	reads   [][]byte
	// written and delivered count the bytes that went each way.
	written, delivered int
}

func (f *fakeUART) Write(b []byte) (int, error) {
	f.written += len(b)
	f.pending = append(f.pending, b...)
	for len(f.steps) > 0 && len(f.pending) >= len(f.steps[0].w) {
		st := f.steps[0]
		if !bytes.Equal(f.pending[:len(st.w)], st.w) {
			f.t.Errorf("port got % X, want % X", f.pending[:len(st.w)], st.w)
			return 0, errors.New("unexpected write")
		}
		f.pending = f.pending[len(st.w):]
		f.reads = append(f.reads, st.r...)
		f.steps = f.steps[1:]
	}
	if len(f.steps) == 0 && len(f.pending) > 0 {
		f.t.Errorf("unexpected write % X", f.pending)
		return 0, errors.New("unexpected write")
	}
	return len(b), nil
}

func (f *fakeUART) Read(b []byte) (int, error) {
	if len(f.reads) == 0 {
		return 0, io.EOF
	}
	n := copy(b, f.reads[0])
	f.delivered += n
	if n < len(f.reads[0]) {
		f.reads[0] = f.reads[0][n:]
	} else {
		f.reads = f.reads[1:]
	}
	return n, nil
}

func (f *fakeUART) done(t *testing.T) {
	t.Helper()
	if len(f.steps) != 0 || len(f.pending) != 0 {
		t.Errorf("%d steps left, % X written but not matched", len(f.steps), f.pending)
	}
	if len(f.reads) != 0 {
		t.Errorf("%d chunks left unread", len(f.reads))
	}
}

// bytewise splits b into one-byte chunks.
func bytewise(b []byte) [][]byte {
	var c [][]byte
	for i := range b {
		c = append(c, b[i:i+1])
	}
	return c
}

var hsuWake = []byte{0x55, 0x55, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

var initUART = []uartStep{
	{w: hsuWake},                             // 55 55 00…: wake-up preamble
	{w: fACK},                                // ACK: abort anything in progress
	{w: fSAM, r: [][]byte{cat(fACK, fSAMr)}}, // SAMConfiguration first, as HSU wants; ACK and answer in one read
	{w: fFW, r: [][]byte{fACK, fFWr}},        // GetFirmwareVersion
	{w: fRF, r: [][]byte{fACK, fRFr}},        // RFConfiguration MaxRetries
}

func newUART(t *testing.T, opts *Opts, steps ...uartStep) (*Dev, *fakeUART) {
	t.Helper()
	port := &fakeUART{t: t, steps: append(append([]uartStep(nil), initUART...), steps...)}
	d, err := NewUART(port, opts)
	if err != nil {
		t.Fatalf("NewUART: %v", err)
	}
	return d, port
}

func TestUART(t *testing.T) {
	useFakeTime(t)
	d, port := newUART(t, nil,
		// Answer in single bytes, as a slow port delivers it.
		uartStep{w: fFW, r: bytewise(cat(fACK, fFWr))},
		// Noise on the line before the ACK, answer in one piece.
		uartStep{w: fList, r: [][]byte{{0xA5, 0x5A}, cat(fACK, fListATS)}},
	)
	ctx := context.Background()
	fw, err := d.GetFirmwareVersion(ctx)
	if err != nil || fw != (Firmware{0x32, 1, 6, 7}) {
		t.Fatalf("GetFirmwareVersion = %+v, %v", fw, err)
	}
	tg, err := d.InListPassiveTarget(ctx)
	if err != nil || tg == nil || !bytes.Equal(tg.ATS, []byte{0x78, 0x80, 0x70, 0x02}) {
		t.Fatalf("InListPassiveTarget = %v, %v", tg, err)
	}
	port.done(t)
	if h := d.Health(); h.Errors != 1 {
		t.Errorf("noise not counted: %+v", h)
	}
	if d.String() != "PN532{uart}" {
		t.Errorf("String() = %q", d)
	}
}

func TestUARTChecksumAndNACK(t *testing.T) {
	useFakeTime(t)
	bad := append([]byte(nil), fFWr...)
	bad[9] ^= 0x40 // data byte: DCS no longer matches
	d, port := newUART(t, nil,
		uartStep{w: fFW, r: [][]byte{fACK, bad}},  // answer damaged on the line
		uartStep{w: fNACK, r: [][]byte{fFWr}},     // NACK: sent again
		uartStep{w: fFW, r: [][]byte{fNACK}},      // the chip refuses a command
		uartStep{w: fFW, r: [][]byte{fACK, fFWr}}, // sent again
	)
	ctx := context.Background()
	for i := range 2 {
		if _, err := d.GetFirmwareVersion(ctx); err != nil {
			t.Fatalf("GetFirmwareVersion %d: %v", i, err)
		}
	}
	port.done(t)
	if h := d.Health(); h.Errors != 2 || h.Checksum != 1 {
		t.Errorf("Health() = %+v", h)
	}
}

func TestUARTTimeoutThenResync(t *testing.T) {
	clk := useFakeTime(t)
	opts := DefaultOpts
	opts.Timeout = 50 * time.Millisecond
	d, port := newUART(t, &opts,
		uartStep{w: fFW},     // no ACK at all
		uartStep{w: hsuWake}, // after 50 ms: resync with the wake-up preamble
		uartStep{w: fACK},    // and an ACK to abort
		uartStep{w: fFW},     // sent again: no ACK
		uartStep{w: hsuWake}, // resync
		uartStep{w: fACK},
		uartStep{w: fFW},     // the third and last time: no ACK
		uartStep{w: hsuWake}, // the command failed: resync
		uartStep{w: fACK},
		uartStep{w: fFW, r: [][]byte{fACK, fFWr}},
	)
	ctx := context.Background()
	start := clk.Now()
	if _, err := d.GetFirmwareVersion(ctx); !errors.Is(err, ErrTimeout) {
		t.Fatalf("GetFirmwareVersion = %v, want ErrTimeout", err)
	}
	// Three sends, each waited for Timeout (less than ackWait), with
	// resyncs (two waits for the wake-up each) between and after them.
	want := 3*opts.Timeout + 3*2*wakeDelay
	if waited := clk.Now().Sub(start); waited < want || waited > want+3*opts.PollInterval {
		t.Errorf("gave up after %v, want about %v", waited, want)
	}
	if _, err := d.GetFirmwareVersion(ctx); err != nil {
		t.Fatal(err)
	}
	port.done(t)
	if h := d.Health(); h.Timeouts != 3 || h.State != "degraded" {
		t.Errorf("Health() = %+v", h)
	}
}

func TestUARTPowerDown(t *testing.T) {
	useFakeTime(t)
	pd := tframe(0xD4, 0x16, 0x10) // PowerDown, wake-up on HSU
	pdr := tframe(0xD5, 0x17, 0x00)
	steps := []uartStep{{w: pd, r: [][]byte{fACK, pdr}}}
	steps = append(steps, initUART...) // the next command wakes it: 55 55 00… then SAMConfiguration
	steps = append(steps, uartStep{w: fList, r: [][]byte{fACK, fListNone}})
	d, port := newUART(t, nil, steps...)
	ctx := context.Background()
	if err := d.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	if tg, err := d.InListPassiveTarget(ctx); tg != nil || err != nil {
		t.Fatalf("InListPassiveTarget = %v, %v", tg, err)
	}
	port.done(t)
}

// deadlinePort is a port that supports read deadlines and never delivers:
// a Read blocks until the deadline.
type deadlinePort struct {
	clk       *fakeClock
	deadlines []time.Time
	reads     int
}

func (p *deadlinePort) Write(b []byte) (int, error) { return len(b), nil }

func (p *deadlinePort) Read([]byte) (int, error) {
	p.reads++
	if p.reads > 1000 {
		panic("read loop does not end")
	}
	dl := p.deadlines[len(p.deadlines)-1]
	if now := p.clk.Now(); dl.After(now) {
		p.clk.advance(dl.Sub(now))
	}
	return 0, errDeadline{}
}

func (p *deadlinePort) SetReadDeadline(t time.Time) error {
	p.deadlines = append(p.deadlines, t)
	return nil
}

type errDeadline struct{}

func (errDeadline) Error() string { return "i/o timeout" }
func (errDeadline) Timeout() bool { return true }

func TestUARTReadDeadlines(t *testing.T) {
	clk := useFakeTime(t)
	port := &deadlinePort{clk: clk}
	opts := DefaultOpts
	opts.Timeout = 20 * time.Millisecond
	_, err := NewUART(port, &opts)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("NewUART = %v, want ErrTimeout", err)
	}
	if len(port.deadlines) == 0 {
		t.Fatal("no read deadline set")
	}
	// Reads are bounded by maxReadWait and by the command's deadline.
	prev := time.Time{}
	for _, dl := range port.deadlines {
		if !prev.IsZero() && dl.Sub(prev) > maxReadWait {
			t.Errorf("deadline %v more than %v after the previous one", dl, maxReadWait)
		}
		prev = dl
	}
}
