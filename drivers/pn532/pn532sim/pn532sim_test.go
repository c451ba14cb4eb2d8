package pn532sim

import (
	"bytes"
	"errors"
	"math/bits"
	"testing"
	"time"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/physic"
	"periph.io/x/conn/v3/spi"
)

// Host frames from the PN532 user manual.
var (
	ack   = []byte{0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00}
	nack  = []byte{0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00}
	fw    = []byte{0x00, 0x00, 0xFF, 0x02, 0xFE, 0xD4, 0x02, 0x2A, 0x00}
	fwr   = []byte{0x00, 0x00, 0xFF, 0x06, 0xFA, 0xD5, 0x03, 0x32, 0x01, 0x06, 0x07, 0xE8, 0x00}
	errFr = []byte{0x00, 0x00, 0xFF, 0x01, 0xFF, 0x7F, 0x81, 0x00}
)

// host drives the chip over I²C, byte for byte.
type host struct {
	t *testing.T
	c *Chip
}

func (h host) write(f []byte) {
	h.t.Helper()
	if err := h.c.I2C().Tx(Address, f, nil); err != nil {
		h.t.Fatal(err)
	}
}

func (h host) status() byte {
	h.t.Helper()
	var r [1]byte
	if err := h.c.I2C().Tx(Address, nil, r[:]); err != nil {
		h.t.Fatal(err)
	}
	return r[0]
}

// read reads n bytes after the status byte and checks them against want.
func (h host) read(n int, want []byte) {
	h.t.Helper()
	r := make([]byte, 1+n)
	if err := h.c.I2C().Tx(Address, nil, r); err != nil {
		h.t.Fatal(err)
	}
	if r[0] != 0x01 {
		h.t.Fatalf("status byte %#x, want ready", r[0])
	}
	if !bytes.Equal(r[1:1+len(want)], want) {
		h.t.Fatalf("read % X, want % X", r[1:], want)
	}
}

func TestI2CFirmwareVersion(t *testing.T) {
	h := host{t, New(nil)}
	if h.status() != 0x00 {
		t.Fatal("ready before any command")
	}
	h.write(fw)
	if h.status() != 0x01 || h.status() != 0x01 {
		t.Fatal("status reads must not take the frame")
	}
	h.read(6, ack)
	h.read(20, fwr) // longer read: padded
	if h.status() != 0x00 {
		t.Fatal("still ready after the answer")
	}
	h.write(nack) // again, please
	h.read(13, fwr)
	if err := h.c.I2C().Tx(0x48, fw, nil); err == nil {
		t.Error("a device answered at 0x48")
	}
	s := h.c.Stats()
	if s.Commands != 1 || s.NACKs != 1 || s.Frames != 2 {
		t.Errorf("stats %+v", s)
	}
}

func TestI2CPartialReadHandsOver(t *testing.T) {
	h := host{t, New(nil)}
	h.write(fw)
	h.read(6, ack)
	h.read(8, fwr[:8]) // too short: the frame is handed over anyway
	if h.status() != 0x00 {
		t.Fatal("frame still pending after a partial read")
	}
	h.write(nack)
	h.read(13, fwr)
}

func TestBadFramesIgnored(t *testing.T) {
	h := host{t, New(nil)}
	bad := append([]byte(nil), fw...)
	bad[7]++ // DCS
	h.write(bad)
	h.write([]byte{0x12, 0x34})
	if h.status() != 0x00 {
		t.Fatal("the chip answered a frame with a bad checksum")
	}
	h.write([]byte{0x00, 0x00, 0xFF, 0x02, 0xFE, 0xD4, 0x60, 0xCC, 0x00}) // unknown command 0x60
	h.read(6, ack)
	h.read(8, errFr)
}

func TestSPIRules(t *testing.T) {
	c := New(nil)
	if _, err := c.SPI().Connect(physic.MegaHertz, spi.Mode0|spi.LSBFirst, 8); err == nil {
		t.Error("LSB-first mode accepted")
	}
	if _, err := c.SPI().Connect(physic.MegaHertz, spi.Mode3, 8); err == nil {
		t.Error("mode 3 accepted")
	}
	conn, err := c.SPI().Connect(physic.MegaHertz, spi.Mode0, 8)
	if err != nil {
		t.Fatal(err)
	}
	w := []byte{bits.Reverse8(0x02), 0x00}
	if err := conn.Tx(w, make([]byte, 1)); err == nil {
		t.Error("Tx with unequal buffers accepted")
	}
	// Write GetFirmwareVersion, bits reversed.
	w = []byte{bits.Reverse8(0x01)}
	for _, b := range fw {
		w = append(w, bits.Reverse8(b))
	}
	if err := conn.Tx(w, make([]byte, len(w))); err != nil {
		t.Fatal(err)
	}
	r := make([]byte, 2)
	if err := conn.Tx([]byte{bits.Reverse8(0x02), 0}, r); err != nil || r[1] != 0x80 {
		t.Fatalf("status % X, %v", r, err)
	}
	r = make([]byte, 7)
	if err := conn.Tx(append([]byte{bits.Reverse8(0x03)}, make([]byte, 6)...), r); err != nil {
		t.Fatal(err)
	}
	for i := range 6 {
		r[1+i] = bits.Reverse8(r[1+i])
	}
	if !bytes.Equal(r[1:], ack) {
		t.Errorf("read % X, want the ACK", r[1:])
	}
}

func TestIRQEdges(t *testing.T) {
	c := New(nil)
	h := host{t, c}
	irq := c.IRQ()
	if err := irq.In(gpio.PullUp, gpio.FallingEdge); err != nil {
		t.Fatal(err)
	}
	if irq.Read() != gpio.High || irq.WaitForEdge(0) {
		t.Fatal("IRQ active with nothing to send")
	}
	h.write(fw)
	if !irq.WaitForEdge(time.Second) || irq.Read() != gpio.Low {
		t.Fatal("no falling edge for the ACK")
	}
	h.read(6, ack)
	// The answer was ready at once: the line went high and low again.
	if !irq.WaitForEdge(time.Second) || irq.Read() != gpio.Low {
		t.Fatal("no falling edge for the answer")
	}
	h.read(13, fwr)
	if irq.Read() != gpio.High {
		t.Fatal("IRQ still low")
	}
}

// tag is a card without ISO 14443-4.
type tag struct{}

func (tag) UID() []byte                     { return []byte{0x04, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06} }
func (tag) SensRes() [2]byte                { return [2]byte{0x00, 0x44} }
func (tag) SelRes() byte                    { return 0x00 }
func (tag) ATS() []byte                     { return nil }
func (tag) Transmit([]byte) ([]byte, error) { return nil, errors.New("no APDUs") }

var (
	list     = []byte{0x00, 0x00, 0xFF, 0x04, 0xFC, 0xD4, 0x4A, 0x01, 0x00, 0xE1, 0x00}
	listNone = []byte{0x00, 0x00, 0xFF, 0x03, 0xFD, 0xD5, 0x4B, 0x00, 0xE0, 0x00}
	// RFConfiguration item 5: retry forever.
	retryForever = []byte{0x00, 0x00, 0xFF, 0x06, 0xFA, 0xD4, 0x32, 0x05, 0xFF, 0x01, 0xFF, 0xF6, 0x00}
	rfr          = []byte{0x00, 0x00, 0xFF, 0x02, 0xFE, 0xD5, 0x33, 0xF8, 0x00}
)

func TestListWaitsForCardAndAbort(t *testing.T) {
	c := New(&Opts{RetryTime: time.Hour})
	h := host{t, c}
	h.write(retryForever)
	h.read(6, ack)
	h.read(9, rfr)
	h.write(list)
	h.read(6, ack)
	if h.status() != 0x00 {
		t.Fatal("answered with no card and infinite retries")
	}
	h.write(ack) // abort
	gone := c.Present(tag{})
	if h.status() != 0x00 {
		t.Fatal("an aborted poll answered")
	}
	h.write(list)
	h.read(6, ack)
	want := []byte{0x00, 0x00, 0xFF, 0x0F, 0xF1, 0xD5, 0x4B, 0x01, 0x01, 0x00, 0x44, 0x00, 0x07, 0x04, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06}
	h.read(len(want), want)
	c.Remove()
	<-gone
	if s := c.Stats(); s.Presentations != 1 || s.Aborts != 1 || s.Activations != 1 {
		t.Errorf("stats %+v", s)
	}
}

func TestEmptyPollAnswersAfterRetries(t *testing.T) {
	c := New(&Opts{RetryTime: time.Millisecond})
	h := host{t, c}
	irq := c.IRQ()
	h.write(list) // the power-on default is to retry forever: set it first
	h.read(6, ack)
	h.write(ack)
	h.write([]byte{0x00, 0x00, 0xFF, 0x06, 0xFA, 0xD4, 0x32, 0x05, 0xFF, 0x01, 0x02, 0xF3, 0x00})
	h.read(6, ack)
	h.read(9, rfr)
	h.write(list)
	h.read(6, ack)
	// Edges seen earlier are queued: the level tells.
	for irq.Read() != gpio.Low {
		if !irq.WaitForEdge(5 * time.Second) {
			t.Fatal("no answer after the retries")
		}
	}
	h.read(len(listNone), listNone)
	if s := c.Stats(); s.EmptyPolls != 1 {
		t.Errorf("stats %+v", s)
	}
}

func TestResetPin(t *testing.T) {
	c := New(nil)
	h := host{t, c}
	c.Inject(Fault{Kind: Hang})
	if err := c.I2C().Tx(Address, fw, nil); err == nil {
		t.Fatal("a hung chip acknowledged")
	}
	rst := c.ResetPin()
	_ = rst.Out(gpio.Low)
	if err := c.I2C().Tx(Address, fw, nil); err == nil {
		t.Fatal("a chip in reset acknowledged")
	}
	_ = rst.Out(gpio.High)
	h.write(fw)
	h.read(6, ack)
	h.read(13, fwr)
	if s := c.Stats(); s.Resets != 1 {
		t.Errorf("stats %+v", s)
	}
}

func TestFaultKinds(t *testing.T) {
	t.Run("LostACK", func(t *testing.T) {
		c := New(nil)
		h := host{t, c}
		c.Inject(Fault{Kind: LostACK, Count: 1})
		h.write(fw)
		h.read(13, fwr) // no ACK: the answer at once
		h.write(fw)
		h.read(6, ack) // the next command is acknowledged
		h.read(13, fwr)
	})
	t.Run("Noise and ExtraPreamble", func(t *testing.T) {
		c := New(nil)
		h := host{t, c}
		c.Inject(Fault{Kind: Noise, Count: 1})
		c.Inject(Fault{Kind: ExtraPreamble, Count: 2})
		h.write(fw)
		h.read(12, append(append([]byte(nil), noiseBurst...), append([]byte{0x00}, ack...)...))
		h.read(14, append([]byte{0x00}, fwr...))
		h.write(nack)
		h.read(13, fwr)
	})
	t.Run("NotReady", func(t *testing.T) {
		c := New(nil)
		h := host{t, c}
		c.Inject(Fault{Kind: NotReady, Count: 1})
		h.write(fw)
		if h.status() != 0x01 {
			t.Fatal("status poll not ready")
		}
		r := make([]byte, 7)
		if err := c.I2C().Tx(Address, nil, r); err != nil || r[0] != 0x00 {
			t.Fatalf("read % X, %v; want not ready", r, err)
		}
		h.read(6, ack) // it was kept
		h.read(13, fwr)
	})
	t.Run("BrokenRead", func(t *testing.T) {
		c := New(nil)
		h := host{t, c}
		h.write(fw)
		h.read(6, ack)
		c.Inject(Fault{Kind: BrokenRead, Count: 1})
		if err := c.I2C().Tx(Address, nil, make([]byte, 14)); err == nil {
			t.Fatal("broken read reported no error")
		}
		if h.status() != 0x00 {
			t.Fatal("the frame is still there after the broken read")
		}
		h.write(nack)
		h.read(13, fwr)
	})
	t.Run("Doze", func(t *testing.T) {
		c := New(nil)
		h := host{t, c}
		c.Inject(Fault{Kind: Doze})
		if err := c.I2C().Tx(Address, fw, nil); err == nil {
			t.Fatal("a dozing chip acknowledged")
		}
		h.write(fw) // awake now
		h.read(6, ack)
		h.read(13, fwr)
		c.Inject(Fault{Kind: Doze})
		conn, err := c.SPI().Connect(physic.MegaHertz, spi.Mode0, 8)
		if err != nil {
			t.Fatal(err)
		}
		w := []byte{bits.Reverse8(0x01)}
		for _, b := range fw {
			w = append(w, bits.Reverse8(b))
		}
		if err := conn.Tx(w, make([]byte, len(w))); err != nil {
			t.Fatal(err)
		}
		if h.status() != 0x00 {
			t.Fatal("a dozing chip took a command over SPI")
		}
	})
}
