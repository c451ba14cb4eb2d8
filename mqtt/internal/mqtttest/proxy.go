package mqtttest

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
)

// Dir is the direction of a packet through the proxy.
type Dir int

const (
	Up   Dir = iota // client to broker
	Down            // broker to client
)

// MQTT control packet types.
const (
	CONNECT   = 1
	CONNACK   = 2
	PUBLISH   = 3
	PUBACK    = 4
	SUBSCRIBE = 8
	SUBACK    = 9
	PINGREQ   = 12
	DISCONN   = 14
)

// Packet is one MQTT control packet seen by the proxy.
type Packet struct {
	Conn  int // index of the proxied connection, from 0
	Dir   Dir
	Type  byte
	Flags byte
	Body  []byte // variable header and payload
}

// ID returns the packet identifier of a PUBACK, SUBACK and the like.
func (p Packet) ID() uint16 {
	if len(p.Body) < 2 {
		return 0
	}
	return binary.BigEndian.Uint16(p.Body)
}

// Publish decodes a PUBLISH packet (MQTT 3.1.1).
func (p Packet) Publish() (topic string, qos byte, id uint16, payload []byte, ok bool) {
	if p.Type != PUBLISH || len(p.Body) < 2 {
		return "", 0, 0, nil, false
	}
	n := int(binary.BigEndian.Uint16(p.Body))
	rest := p.Body[2:]
	if len(rest) < n {
		return "", 0, 0, nil, false
	}
	topic, rest = string(rest[:n]), rest[n:]
	qos = (p.Flags >> 1) & 3
	if qos > 0 {
		if len(rest) < 2 {
			return "", 0, 0, nil, false
		}
		id, rest = binary.BigEndian.Uint16(rest), rest[2:]
	}
	return topic, qos, id, rest, true
}

// Proxy forwards TCP connections to a broker one MQTT packet at a time.
// A hook sees every packet and may drop it; the proxy can refuse new
// connections (broker "down") and cut the current ones abruptly (no
// DISCONNECT: the broker publishes the client's last will).
type Proxy struct {
	t      testing.TB
	ln     net.Listener
	target string

	mu    sync.Mutex
	hook  func(Packet) bool
	down  bool
	hole  chan struct{} // non-nil: black hole, closed when it ends
	next  int
	conns map[int]*pconn
	wg    sync.WaitGroup
}

type pconn struct {
	client, broker net.Conn
	once           sync.Once
}

func (c *pconn) close() {
	c.once.Do(func() {
		c.client.Close()
		c.broker.Close()
	})
}

// NewProxy starts a proxy on 127.0.0.1:0 to target (host:port), closed
// when the test ends.
func NewProxy(t testing.TB, target string) *Proxy {
	return newProxy(t, target, nil)
}

// NewTLSProxy is NewProxy with TLS terminated at the proxy.
func NewTLSProxy(t testing.TB, target string, cfg *tls.Config) *Proxy {
	return newProxy(t, target, cfg)
}

func newProxy(t testing.TB, target string, cfg *tls.Config) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if cfg != nil {
		ln = tls.NewListener(ln, cfg)
	}
	p := &Proxy{t: t, ln: ln, target: target, conns: make(map[int]*pconn)}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Addr returns the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// URL returns tcp://Addr (use tls:// for a TLS proxy).
func (p *Proxy) URL() string { return "tcp://" + p.Addr() }

// SetHook installs fn, called for every packet before it is forwarded;
// returning false drops the packet. fn runs on the connection's
// goroutines, concurrently.
func (p *Proxy) SetHook(fn func(Packet) bool) {
	p.mu.Lock()
	p.hook = fn
	p.mu.Unlock()
}

// SetDown makes the proxy close new connections at once (down) or
// forward them again.
func (p *Proxy) SetDown(down bool) {
	p.mu.Lock()
	p.down = down
	p.mu.Unlock()
}

// SetBlackhole makes the current and new connections a black hole (on) or
// forwards again (off): every packet is dropped both ways, and a side that
// closes is not closed on the other side until the black hole ends. The
// client sees a half-open connection: its socket stays up, nothing comes.
func (p *Proxy) SetBlackhole(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case on && p.hole == nil:
		p.hole = make(chan struct{})
	case !on && p.hole != nil:
		close(p.hole)
		p.hole = nil
	}
}

// blackhole returns the channel closed when the current black hole ends,
// nil if there is none.
func (p *Proxy) blackhole() chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.hole
}

// Cut closes all current connections on both sides, abruptly.
func (p *Proxy) Cut() {
	p.mu.Lock()
	conns := make([]*pconn, 0, len(p.conns))
	for _, c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		c.close()
	}
}

// Conns returns the number of connections forwarded so far.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.next
}

// Close stops the proxy and waits for its goroutines.
func (p *Proxy) Close() {
	p.SetBlackhole(false)
	p.ln.Close()
	p.Cut()
	p.wg.Wait()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		down := p.down
		p.mu.Unlock()
		if down {
			client.Close()
			continue
		}
		p.wg.Add(1)
		go p.serve(client)
	}
}

// serve connects one accepted client to the broker.
func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	if tc, ok := client.(*tls.Conn); ok {
		if err := tc.Handshake(); err != nil {
			client.Close()
			return
		}
	}
	broker, err := net.Dial("tcp", p.target)
	if err != nil {
		client.Close()
		return
	}
	c := &pconn{client: client, broker: broker}
	p.mu.Lock()
	id := p.next
	p.next++
	p.conns[id] = c
	p.mu.Unlock()
	p.wg.Add(2)
	go p.pump(c, id, Up, client, broker)
	go p.pump(c, id, Down, broker, client)
}

func (p *Proxy) pump(c *pconn, id int, dir Dir, src, dst net.Conn) {
	defer p.wg.Done()
	defer func() {
		c.close()
		p.mu.Lock()
		delete(p.conns, id)
		p.mu.Unlock()
	}()
	br := bufio.NewReaderSize(src, 64<<10)
	for {
		pk, raw, err := readPacket(br)
		if err != nil {
			if hole := p.blackhole(); hole != nil {
				<-hole // the other side must not notice
			}
			return
		}
		pk.Conn, pk.Dir = id, dir
		p.mu.Lock()
		hook, hole := p.hook, p.hole
		p.mu.Unlock()
		if hole != nil || (hook != nil && !hook(pk)) {
			continue
		}
		if _, err := dst.Write(raw); err != nil {
			return
		}
	}
}

// readPacket reads one MQTT control packet; raw is its full encoding.
func readPacket(r *bufio.Reader) (pk Packet, raw []byte, err error) {
	b0, err := r.ReadByte()
	if err != nil {
		return pk, nil, err
	}
	raw = append(raw, b0)
	length, mult := 0, 1
	for i := 0; ; i++ {
		if i == 4 {
			return pk, nil, errors.New("mqtttest: malformed remaining length")
		}
		b, err := r.ReadByte()
		if err != nil {
			return pk, nil, err
		}
		raw = append(raw, b)
		length += int(b&127) * mult
		mult *= 128
		if b&128 == 0 {
			break
		}
	}
	head := len(raw)
	raw = append(raw, make([]byte, length)...)
	if _, err := io.ReadFull(r, raw[head:]); err != nil {
		return pk, nil, fmt.Errorf("mqtttest: short packet: %w", err)
	}
	return Packet{Type: b0 >> 4, Flags: b0 & 15, Body: raw[head:]}, raw, nil
}
