//go:build faults

package faulttest

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"station.dev/agent/internal/stationproc"
)

// freePort returns a loopback TCP port nothing listens on (at the time of asking).
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// mosquitto is a Mosquitto broker the test runs on a loopback port, with persistence, so that a
// restart keeps the MQTT sessions (subscriptions and queued messages) of clients with a
// persistent session.
type mosquitto struct {
	t      testing.TB
	bin    string
	dir    string
	port   int
	onLine func(at time.Time, line string) // called for every log line, from one goroutine

	mu    sync.Mutex
	p     *stationproc.Process
	ready time.Time // when the running broker said it runs
}

// startMosquitto starts a Mosquitto; onLine, if not nil, sees every line it logs.
func startMosquitto(t testing.TB, onLine func(time.Time, string)) *mosquitto {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		t.Fatalf("this scenario needs a Mosquitto it can restart: apt-get install mosquitto (%v)", err)
	}
	m := &mosquitto{t: t, bin: bin, dir: t.TempDir(), port: freePort(t), onLine: onLine}
	conf := fmt.Sprintf(`listener %d 127.0.0.1
allow_anonymous true
persistence true
persistence_location %s/
autosave_interval 0
max_queued_messages 0
max_inflight_messages 0
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
`, m.port, m.dir)
	if os.Geteuid() == 0 {
		// Run as root, it drops to the mosquitto user, which cannot write the test's directory.
		conf += "user root\n"
	}
	if err := os.WriteFile(filepath.Join(m.dir, "mosquitto.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.mu.Lock()
		p := m.p
		m.mu.Unlock()
		if p == nil {
			return
		}
		p.Kill()
		if t.Failed() {
			t.Logf("mosquitto log (last lines):\n%s", p.Tail(200))
		}
	})
	m.start()
	return m
}

// URL is the broker's URL.
func (m *mosquitto) URL() string { return fmt.Sprintf("tcp://127.0.0.1:%d", m.port) }

// start starts the broker (again) and waits until it runs.
func (m *mosquitto) start() {
	m.t.Helper()
	running := make(chan time.Time, 1)
	onLine := func(at time.Time, line string) {
		if strings.Contains(line, " running") && strings.Contains(line, "mosquitto version") {
			select {
			case running <- at:
			default:
			}
		}
		if m.onLine != nil {
			m.onLine(at, line)
		}
	}
	cmd := exec.Command(m.bin, "-c", filepath.Join(m.dir, "mosquitto.conf"))
	p, err := stationproc.StartProcess("mosquitto", cmd, filepath.Join(m.dir, "mosquitto.log"), onLine)
	if err != nil {
		m.t.Fatal(err)
	}
	m.mu.Lock()
	m.p = p
	m.mu.Unlock()
	select {
	case at := <-running:
		m.mu.Lock()
		m.ready = at
		m.mu.Unlock()
	case <-p.Done():
		m.t.Fatalf("mosquitto exited at start:\n%s", p.Tail(200))
	case <-time.After(20 * time.Second):
		m.t.Fatalf("mosquitto not running after 20s:\n%s", p.Tail(200))
	}
}

// readyAt is when the running broker said it runs.
func (m *mosquitto) readyAt() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ready
}

// stop stops the broker cleanly (it saves its persistence file) and waits for it.
func (m *mosquitto) stop() {
	m.mu.Lock()
	p := m.p
	m.mu.Unlock()
	if err := p.Stop(20 * time.Second); errors.Is(err, stationproc.ErrKilled) {
		m.t.Error(err)
	}
}

// restart stops and starts the broker.
func (m *mosquitto) restart() {
	m.t.Helper()
	m.stop()
	m.start()
}

// Broker behaviours of a switchboard.
const (
	modeRefuse   int32 = iota // close every connection at once: the broker is unreachable
	modeForward               // pass connections through to the real broker
	modeSilent                // accept the connection, read everything, never answer
	modeNoPuback              // answer CONNACK, SUBACK and PINGRESP, never PUBACK
	modeStall                 // pass through, but let only the first stallAfter PUBACKs back
)

// stallAfter is how many PUBACKs a stalling broker lets through on each connection.
const stallAfter = 10

// switchboard is a TCP endpoint the agent connects to as its broker. Its mode decides what a
// connection meets: nothing (outage), the real broker behind it, or a broker that misbehaves.
// Changing the mode cuts the connections open at the time.
type switchboard struct {
	t      testing.TB
	ln     net.Listener
	target string // host:port of the real broker
	mode   atomic.Int32

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup

	accepted   atomic.Uint64 // connections accepted
	connects   atomic.Uint64 // CONNECT packets seen by the misbehaving modes
	publishes  atomic.Uint64 // PUBLISH packets seen by the misbehaving modes
	maxPending atomic.Int64  // most PUBLISH packets on one connection (none acknowledged)
}

// newSwitchboard listens on a free loopback port in mode, in front of the broker at target
// (host:port; used in modeForward).
func newSwitchboard(t testing.TB, target string, mode int32) *switchboard {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &switchboard{t: t, ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	s.mode.Store(mode)
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(s.close)
	return s
}

// URL is the broker URL the agent uses.
func (s *switchboard) URL() string { return "tcp://" + s.ln.Addr().String() }

// setMode switches the behaviour and cuts the open connections.
func (s *switchboard) setMode(mode int32) {
	s.mode.Store(mode)
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
}

func (s *switchboard) close() {
	s.ln.Close()
	s.setMode(modeRefuse)
	s.wg.Wait()
}

func (s *switchboard) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns == nil {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *switchboard) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
}

func (s *switchboard) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.accepted.Add(1)
		mode := s.mode.Load()
		if mode == modeRefuse || !s.track(c) {
			c.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.untrack(c)
			switch mode {
			case modeForward:
				s.forward(c)
			case modeSilent:
				_, _ = io.Copy(io.Discard, c)
			case modeNoPuback:
				s.noPuback(c)
			case modeStall:
				s.stall(c)
			}
		}()
	}
}

// forward passes the connection through to the real broker until either side ends it.
func (s *switchboard) forward(c net.Conn) {
	copyTo := func(dst, src net.Conn) { _, _ = io.Copy(dst, src) }
	s.relay(c, copyTo, copyTo)
}

// relay connects c to the real broker and runs the two directions, toBroker(up, c) and
// toStation(c, up), until either ends; then both connections are closed.
func (s *switchboard) relay(c net.Conn, toBroker, toStation func(dst, src net.Conn)) {
	up, err := net.DialTimeout("tcp", s.target, 5*time.Second)
	if err != nil {
		return
	}
	if !s.track(up) {
		up.Close()
		return
	}
	defer s.untrack(up)
	done := make(chan struct{}, 2)
	go func() { toBroker(up, c); done <- struct{}{} }()
	go func() { toStation(c, up); done <- struct{}{} }()
	<-done
	c.Close()
	up.Close()
	<-done
}

// stall passes the connection through to the real broker, but after stallAfter PUBACKs it
// swallows every further PUBACK: a broker that takes publishes and stops acknowledging them.
func (s *switchboard) stall(c net.Conn) {
	var pending atomic.Int64
	toBroker := func(up, c net.Conn) {
		r := bufio.NewReader(c)
		for {
			typ, body, err := readPacket(r, 1<<20)
			if err != nil {
				return
			}
			switch typ >> 4 {
			case pktConnect:
				s.connects.Add(1)
			case pktPublish:
				s.publishes.Add(1)
				if typ&0x06 != 0 { // QoS 1 or 2: awaits an acknowledgement
					s.notePending(pending.Add(1))
				}
			}
			if _, err := up.Write(packet(typ, body)); err != nil {
				return
			}
		}
	}
	toStation := func(c, up net.Conn) {
		r := bufio.NewReader(up)
		acks := 0
		for {
			typ, body, err := readPacket(r, 1<<20)
			if err != nil {
				return
			}
			if typ>>4 == pktPuback {
				if acks == stallAfter {
					continue
				}
				acks++
				pending.Add(-1)
			}
			if _, err := c.Write(packet(typ, body)); err != nil {
				return
			}
		}
	}
	s.relay(c, toBroker, toStation)
}

// notePending records n publishes awaiting their acknowledgement on one connection.
func (s *switchboard) notePending(n int64) {
	for {
		old := s.maxPending.Load()
		if n <= old || s.maxPending.CompareAndSwap(old, n) {
			return
		}
	}
}

// packet encodes a control packet from its first byte and body.
func packet(typ byte, body []byte) []byte {
	b := append([]byte{typ}, remainingLength(len(body))...)
	return append(b, body...)
}

// noPuback plays a broker that accepts the MQTT session and the subscriptions, answers pings, takes
// every PUBLISH and never acknowledges one.
func (s *switchboard) noPuback(c net.Conn) {
	r := bufio.NewReader(c)
	var pending int64
	for {
		typ, body, err := readPacket(r, 1<<20)
		if err != nil {
			return
		}
		switch typ >> 4 {
		case pktConnect:
			s.connects.Add(1)
			if _, err := c.Write([]byte{pktConnack << 4, 2, 0, 0}); err != nil {
				return
			}
		case pktSubscribe:
			if len(body) < 2 {
				return
			}
			// SUBACK: the packet id, then QoS 1 granted for each filter.
			n := 0
			for p := 2; p+2 <= len(body); {
				l := int(binary.BigEndian.Uint16(body[p:]))
				p += 2 + l + 1
				n++
			}
			ack := append([]byte{pktSuback << 4}, remainingLength(2+n)...)
			ack = append(ack, body[0], body[1])
			for i := 0; i < n; i++ {
				ack = append(ack, 1)
			}
			if _, err := c.Write(ack); err != nil {
				return
			}
		case pktPingreq:
			if _, err := c.Write([]byte{pktPingresp << 4, 0}); err != nil {
				return
			}
		case pktPublish:
			s.publishes.Add(1)
			pending++
			s.notePending(pending)
		case pktDisconnect:
			return
		}
	}
}

// MQTT 3.1.1 control packet types.
const (
	pktConnect    = 1
	pktConnack    = 2
	pktPublish    = 3
	pktPuback     = 4
	pktSubscribe  = 8
	pktSuback     = 9
	pktPingreq    = 12
	pktPingresp   = 13
	pktDisconnect = 14
)

// readPacket reads one MQTT control packet: its first byte and its body. Bodies longer than max
// are an error.
func readPacket(r *bufio.Reader, max int) (byte, []byte, error) {
	typ, err := r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, mult := 0, 1
	for i := 0; ; i++ {
		b, err := r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n += int(b&0x7f) * mult
		if b&0x80 == 0 {
			break
		}
		if i == 3 {
			return 0, nil, errors.New("mqtt: malformed remaining length")
		}
		mult *= 128
	}
	if n > max {
		return 0, nil, fmt.Errorf("mqtt: packet of %d bytes", n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, err
	}
	return typ, body, nil
}

// remainingLength encodes an MQTT remaining length.
func remainingLength(n int) []byte {
	var b []byte
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if n == 0 {
			return b
		}
	}
}

func mqttString(s string) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(len(s)))
	return append(b, s...)
}

// rawPublisher is a minimal MQTT 3.1.1 client that publishes at QoS 1 with a window of
// unacknowledged messages. It sends whatever payload it is given, byte for byte.
type rawPublisher struct {
	c      net.Conn
	slots  chan struct{} // one per message in flight
	mu     sync.Mutex
	nextID uint16
	wmu    sync.Mutex
	done   chan struct{} // closed when the reader ends
	err    error
}

// dialPublisher connects to the broker at addr (host:port) with a clean MQTT session.
func dialPublisher(addr, clientID string, window int) (*rawPublisher, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	vh := append(mqttString("MQTT"), 4, 0x02, 0, 60) // level 4, clean MQTT session, keepalive 60s
	body := append(vh, mqttString(clientID)...)
	pkt := append([]byte{pktConnect << 4}, remainingLength(len(body))...)
	if _, err := c.Write(append(pkt, body...)); err != nil {
		c.Close()
		return nil, err
	}
	r := bufio.NewReader(c)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	typ, ack, err := readPacket(r, 16)
	if err != nil || typ>>4 != pktConnack || len(ack) != 2 || ack[1] != 0 {
		c.Close()
		return nil, fmt.Errorf("mqtt: no CONNACK accepting the connection (%x %x %v)", typ, ack, err)
	}
	_ = c.SetReadDeadline(time.Time{})
	p := &rawPublisher{c: c, slots: make(chan struct{}, window), done: make(chan struct{})}
	go p.read(r)
	return p, nil
}

func (p *rawPublisher) read(r *bufio.Reader) {
	defer close(p.done)
	for {
		typ, _, err := readPacket(r, 1<<10)
		if err != nil {
			p.err = err
			return
		}
		if typ>>4 == pktPuback {
			<-p.slots
		}
	}
}

// publish sends payload on topic at QoS 1, waiting while the window is full.
func (p *rawPublisher) publish(topic string, payload []byte) error {
	select {
	case p.slots <- struct{}{}:
	case <-p.done:
		return fmt.Errorf("mqtt: publisher connection ended: %v", p.err)
	}
	p.mu.Lock()
	p.nextID++
	if p.nextID == 0 {
		p.nextID = 1
	}
	id := p.nextID
	p.mu.Unlock()
	body := append(mqttString(topic), byte(id>>8), byte(id))
	hdr := append([]byte{pktPublish<<4 | 0x02}, remainingLength(len(body)+len(payload))...)
	p.wmu.Lock()
	defer p.wmu.Unlock()
	_ = p.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if _, err := p.c.Write(append(hdr, body...)); err != nil {
		return err
	}
	_, err := p.c.Write(payload)
	return err
}

// flush waits until every message published was acknowledged.
func (p *rawPublisher) flush(timeout time.Duration) error {
	deadline := time.After(timeout)
	for i := 0; i < cap(p.slots); i++ {
		select {
		case p.slots <- struct{}{}:
		case <-p.done:
			return fmt.Errorf("mqtt: publisher connection ended: %v", p.err)
		case <-deadline:
			return errors.New("mqtt: publishes not acknowledged in time")
		}
	}
	for i := 0; i < cap(p.slots); i++ {
		<-p.slots
	}
	return nil
}

func (p *rawPublisher) close() {
	p.wmu.Lock()
	_, _ = p.c.Write([]byte{pktDisconnect << 4, 0})
	p.wmu.Unlock()
	p.c.Close()
	<-p.done
}
