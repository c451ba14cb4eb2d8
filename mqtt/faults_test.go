package mqtt_test

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"station.dev/agent/mqtt"
	"station.dev/agent/mqtt/brokertest"
	"station.dev/agent/mqtt/internal/mqtttest"
)

// Tests of issue 13: each reproduces a finding (refused publishes deleted,
// slow return after short outages, "online" left retained at a clean stop,
// a slow command store dropping the connection, half-open connections
// noticed late) and checks its fix.

// aclMosquitto is a Mosquitto of the test's own, on a free loopback port,
// with an ACL file the test rewrites and reloads (SIGHUP).
type aclMosquitto struct {
	t    *testing.T
	dir  string
	addr string
	cmd  *exec.Cmd
	log  *os.File
}

func startACLMosquitto(t *testing.T, acl string) *aclMosquitto {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		t.Skip("needs Mosquitto (apt-get install mosquitto): ", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, port, _ := net.SplitHostPort(addr)
	m := &aclMosquitto{t: t, dir: t.TempDir(), addr: addr}
	// Run as root, Mosquitto drops to the mosquitto user unless told to
	// stay: the test's directory is private.
	user := ""
	if os.Geteuid() == 0 {
		user = "user root\n"
	}
	conf := fmt.Sprintf("listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n%sacl_file %s\nlog_dest file %s\nlog_type all\n",
		port, user, filepath.Join(m.dir, "acl"), filepath.Join(m.dir, "broker.log"))
	if err := os.WriteFile(filepath.Join(m.dir, "mosquitto.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	m.setACL(acl)
	if m.log, err = os.Create(filepath.Join(m.dir, "mosquitto.log")); err != nil {
		t.Fatal(err)
	}
	m.cmd = exec.Command(bin, "-c", filepath.Join(m.dir, "mosquitto.conf"))
	m.cmd.Stdout, m.cmd.Stderr = m.log, m.log
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.cmd.Process.Kill() // the PID this test started
		m.cmd.Wait()
		m.log.Close()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(m.dir, "broker.log"))
			t.Logf("mosquitto log:\n%s", b)
		}
	})
	deadline := time.Now().Add(mqtttest.Timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("mosquitto does not listen on %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond) // polling a port: nothing to wait on
	}
}

func (m *aclMosquitto) URL() string { return "tcp://" + m.addr }

// setACL writes the ACL file; reload makes Mosquitto read it again.
func (m *aclMosquitto) setACL(acl string) {
	if err := os.WriteFile(filepath.Join(m.dir, "acl"), []byte(acl), 0o644); err != nil {
		m.t.Fatal(err)
	}
}

func (m *aclMosquitto) reload() {
	if err := m.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		m.t.Fatal(err)
	}
}

// logged counts the lines of Mosquitto's log that contain s.
func (m *aclMosquitto) logged(s string) int {
	f, err := os.Open(filepath.Join(m.dir, "broker.log"))
	if err != nil {
		return 0
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.Contains(sc.Text(), s) {
			n++
		}
	}
	return n
}

// TestPublishesTheBrokerDropsStayInTheOutbox: Mosquitto under MQTT 3.1.1
// acknowledges a publish its ACL denies and drops it. Nothing may be
// deleted then; the link says why, and delivers once the ACL is fixed.
func TestPublishesTheBrokerDropsStayInTheOutbox(t *testing.T) {
	const user = "station-acl"
	prefix := "stations/" + brokertest.UniquePrefix(t)
	denied := fmt.Sprintf("topic read %[1]s/#\n\nuser %[2]s\ntopic read %[1]s/events\ntopic readwrite %[1]s/status\n", prefix, user)
	allowed := fmt.Sprintf("topic read %[1]s/#\n\nuser %[2]s\ntopic readwrite %[1]s/#\n", prefix, user)
	m := startACLMosquitto(t, denied)
	obs := brokertest.Subscribe(t, m.URL(), prefix+"/events", 64)

	out := mqtttest.NewMemOutbox()
	out.Add(events, 5, func(seq uint64) []byte { return mqtttest.Payload(seq, 200) })
	cfg := mqtt.Config{
		Broker: m.URL(), ClientID: brokertest.UniquePrefix(t), Username: user,
		KeepAlive: 2 * time.Second, ConnectTimeout: 2 * time.Second, AckTimeout: 2 * time.Second,
		BackoffMin: 50 * time.Millisecond, BackoffMax: 500 * time.Millisecond,
		Streams: []mqtt.Stream{{Name: events, Topic: prefix + "/events", QoS: 1}},
	}
	l, _ := run(t, cfg, out)
	st := mqtttest.WaitStats(t, l, "an alarm about undelivered publishes", func(s mqtt.Stats) bool {
		return strings.Contains(s.LastError, "not delivered")
	})
	if n := out.Len(events); n != 5 {
		t.Fatalf("%d of 5 items left after the broker dropped them (stats %+v)", n, st)
	}
	if m.logged("Denied PUBLISH") == 0 {
		t.Fatal("Mosquitto logged no denied publish: the test did not test anything")
	}
	t.Logf("alarm: %s", st.LastError)

	m.setACL(allowed)
	m.reload()
	out.WaitEmpty(t)
	for want := uint64(1); want <= 5; want++ {
		msg := obs.Next(t, mqtttest.Timeout)
		if got, _ := mqtttest.SeqOf(msg.Payload); got != want {
			t.Fatalf("subscriber got seq %d, want %d", got, want)
		}
	}
}

// TestBackAtOnceAfterShortOutages: the broker goes away five times at
// short intervals (scaled: every second instead of every 10 s), each
// connection carrying acknowledged traffic, then is away for 100 ms. The
// link must be back within a few BackoffMin, not after a backoff that grew
// over connections that worked.
func TestBackAtOnceAfterShortOutages(t *testing.T) {
	e := newEnv(t)
	cfg := e.config()
	cfg.BackoffMin, cfg.BackoffMax = 100*time.Millisecond, 30*time.Second
	cfg.Rand = func() float64 { return 0.9 } // near the worst case, every time
	l, _ := run(t, cfg, e.out)
	for i := 0; i < 6; i++ {
		mqtttest.WaitStats(t, l, "connected", func(s mqtt.Stats) bool { return s.Connected })
		e.add(events, 3)
		e.out.WaitEmpty(t) // acknowledged traffic on this connection
		if i == 5 {
			break
		}
		down := 300 * time.Millisecond
		if i == 4 {
			down = 100 * time.Millisecond
		}
		time.Sleep(time.Second - 0) // the connection's lifetime: elapsed time is the point
		e.proxy.SetDown(true)
		e.proxy.Cut()
		mqtttest.WaitStats(t, l, "disconnected", func(s mqtt.Stats) bool { return !s.Connected })
		time.Sleep(down) // the outage itself
		back := time.Now()
		e.proxy.SetDown(false)
		mqtttest.WaitStats(t, l, "reconnected", func(s mqtt.Stats) bool { return s.Connected })
		d := time.Since(back)
		t.Logf("outage %d of %v: back %v after the broker returned", i+1, down, d.Round(time.Millisecond))
		if i == 4 && d > time.Second {
			t.Fatalf("reconnected %v after the broker returned from a %v outage: want < 1s (10×BackoffMin)", d, down)
		}
	}
}

// TestUnacknowledgedShutdownStatusLeavesTheWill: the shutdown status never
// reaches the broker (a relay that swallows it at stop). The link must not
// send DISCONNECT then, so the broker publishes the will: "online" must
// not stay retained.
func TestUnacknowledgedShutdownStatusLeavesTheWill(t *testing.T) {
	e := newEnv(t)
	cfg := statusConfig(e)
	e.tr.Drop(func(pk mqtttest.Packet) bool {
		topic, _, _, payload, ok := pk.Publish()
		return ok && pk.Dir == mqtttest.Up && topic == cfg.StatusTopic && strings.Contains(string(payload), "shutdown")
	})
	obs := brokertest.Subscribe(t, e.broker.URL(), cfg.StatusTopic, 64)
	_, stop := run(t, cfg, e.out)
	obs.NextWith(t, mqtttest.Timeout, `{"state":"online"}`)
	stop()
	m := obs.NextMatch(t, mqtttest.Timeout, "a status other than online", func(m brokertest.Message) bool {
		return string(m.Payload) != `{"state":"online"}`
	})
	if string(m.Payload) != `{"state":"offline","reason":"lost"}` {
		t.Fatalf("after the stop the status topic got %q, want the last will", m.Payload)
	}
	late := brokertest.Subscribe(t, e.broker.URL(), cfg.StatusTopic, 4)
	if m := late.Next(t, mqtttest.Timeout); string(m.Payload) != `{"state":"offline","reason":"lost"}` {
		t.Fatalf("retained status after the stop = %q, want the last will", m.Payload)
	}
}

// TestSlowCommandStoreKeepsTheConnection: OnMessage stalls (a worn SD
// card) for longer than keepalive plus ping timeout. The connection must
// stay up: pings are answered whatever the receiver does.
func TestSlowCommandStoreKeepsTheConnection(t *testing.T) {
	e := newEnv(t)
	cfg := e.config()
	cfg.KeepAlive, cfg.ConnectTimeout = time.Second, time.Second
	// No write check: its subscriptions would make the first SUBACK below someone else's.
	cfg.SkipWriteCheck = true
	cmd := e.prefix + "/cmd"
	cfg.Subscriptions = []string{cmd}
	handled := make(chan struct{})
	var once sync.Once
	cfg.OnMessage = func(m mqtt.Message) {
		time.Sleep(3500 * time.Millisecond) // the stalled append: elapsed time is the point
		m.Ack()
		once.Do(func() { close(handled) })
	}
	l, _ := run(t, cfg, e.out)
	select {
	case <-e.tr.SubacksReached(1):
	case <-time.After(mqtttest.Timeout):
		t.Fatal("no SUBACK")
	}
	brokertest.Publish(t, e.broker.URL(), cmd, []byte("slow"), false)
	select {
	case <-handled:
	case <-time.After(mqtttest.Timeout):
		t.Fatal("the command never reached the receiver")
	}
	select {
	case <-e.tr.ClientAcksReached(1):
	case <-time.After(mqtttest.Timeout):
		t.Fatal("the command was never acknowledged")
	}
	if st := l.Stats(); st.Connects != 1 || st.Failures != 0 {
		t.Fatalf("stats %+v: the slow receiver cost the connection", st)
	}
}

// TestHalfOpenDetectedWithinKeepalive: the network silently drops all
// traffic both ways, idle and with publishes in flight. The link must
// notice within 1.5 × keepalive (the broker fires the will after 1.5 ×
// keepalive without a packet).
func TestHalfOpenDetectedWithinKeepalive(t *testing.T) {
	for _, busy := range []bool{false, true} {
		t.Run(map[bool]string{false: "idle", true: "busy"}[busy], func(t *testing.T) {
			e := newEnv(t)
			cfg := e.config()
			cfg.KeepAlive = 2 * time.Second
			cfg.ConnectTimeout = 5 * time.Second
			cfg.AckTimeout = 0 // the default
			will := brokertest.Subscribe(t, e.broker.URL(), e.prefix+"/status", 16)
			cfg.StatusTopic = e.prefix + "/status"
			cfg.WillPayload = []byte("lost")
			l, _ := run(t, cfg, e.out)
			mqtttest.WaitStats(t, l, "connected", func(s mqtt.Stats) bool { return s.Connected })
			e.add(events, 5)
			e.out.WaitEmpty(t)
			e.proxy.SetBlackhole(true)
			defer e.proxy.SetBlackhole(false)
			start := time.Now()
			if busy {
				e.add(events, 100)
			}
			mqtttest.WaitStats(t, l, "disconnected", func(s mqtt.Stats) bool { return !s.Connected })
			d := time.Since(start)
			will.NextWith(t, mqtttest.Timeout, "lost")
			t.Logf("half-open noticed after %v, the broker's will after %v (keepalive %v)",
				d.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), cfg.KeepAlive)
			if d > 3*cfg.KeepAlive/2 {
				t.Fatalf("half-open connection noticed after %v, want within 1.5 × keepalive = %v", d, 3*cfg.KeepAlive/2)
			}
		})
	}
}

// TestRetryDelayAfterShortOutages: with the defaults (1s..2m), a broker
// that is back within 10 s is found again within 5 s (p95), and the waits
// still spread over the whole interval (full jitter) and reach the cap.
func TestRetryDelayAfterShortOutages(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const connectTime = 5 * time.Millisecond // a refused connect on a LAN
	var back []time.Duration
	for range 20000 {
		outage := time.Duration(rng.Float64() * float64(10*time.Second))
		// Attempts from the loss on; the broker is back at outage.
		now, failures := time.Duration(0), 0
		for {
			now += connectTime
			if now >= outage {
				back = append(back, now-outage)
				break
			}
			now += mqtt.RetryDelay(failures, now, time.Second, 2*time.Minute, rng.Float64())
			failures++
		}
	}
	slices.Sort(back)
	p95 := back[len(back)*95/100]
	t.Logf("reconnect after outages of 0–10 s: p50 %v, p95 %v, max %v", back[len(back)/2].Round(time.Millisecond),
		p95.Round(time.Millisecond), back[len(back)-1].Round(time.Millisecond))
	if p95 > 5*time.Second {
		t.Fatalf("p95 %v, want ≤ 5s", p95)
	}
	// A long outage reaches the cap, jittered.
	if d := mqtt.RetryDelay(30, time.Hour, time.Second, 2*time.Minute, 0.999); d < 110*time.Second {
		t.Fatalf("after an hour's outage the wait is at most %v, want about the 2m cap", d)
	}
	if d := mqtt.RetryDelay(30, time.Hour, time.Second, 2*time.Minute, 0); d > time.Millisecond {
		t.Fatalf("full jitter: the shortest wait is %v, want ~0", d)
	}
}

// TestAcksLeaveInReceiveOrderAndNackRedelivers: the receiver acknowledges
// the second message first; the PUBACKs still leave in receive order. A
// message it cannot handle (Nack) is delivered again at once, on a new
// connection.
func TestAcksLeaveInReceiveOrderAndNackRedelivers(t *testing.T) {
	e := newEnv(t)
	cfg := e.config()
	cmd := e.prefix + "/cmd"
	cfg.Subscriptions = []string{cmd}
	var mu sync.Mutex
	var order []string // "in <id>" for PUBLISH down, "ack <id>" for PUBACK up
	e.tr.Drop(func(pk mqtttest.Packet) bool {
		if topic, _, id, _, ok := pk.Publish(); ok && pk.Dir == mqtttest.Down && topic == cmd {
			mu.Lock()
			order = append(order, fmt.Sprintf("in %d", id))
			mu.Unlock()
		} else if pk.Dir == mqtttest.Up && pk.Type == mqtttest.PUBACK {
			mu.Lock()
			order = append(order, fmt.Sprintf("ack %d", pk.ID()))
			mu.Unlock()
		}
		return false
	})
	got := make(chan mqtt.Message, 16)
	cfg.OnMessage = func(m mqtt.Message) { got <- m }
	l, _ := run(t, cfg, e.out)
	select {
	case <-e.tr.SubacksReached(2):
	case <-time.After(mqtttest.Timeout):
		t.Fatal("no SUBACK")
	}
	next := func() mqtt.Message {
		t.Helper()
		select {
		case m := <-got:
			return m
		case <-time.After(mqtttest.Timeout):
			t.Fatal("no message")
			return mqtt.Message{}
		}
	}
	brokertest.Publish(t, e.broker.URL(), cmd, []byte("a"), false)
	brokertest.Publish(t, e.broker.URL(), cmd, []byte("b"), false)
	a, b := next(), next()
	if string(a.Payload) != "a" || string(b.Payload) != "b" {
		t.Fatalf("got %q, %q: not in receive order", a.Payload, b.Payload)
	}
	b.Ack()
	a.Ack()
	select {
	case <-e.tr.ClientAcksReached(2):
	case <-time.After(mqtttest.Timeout):
		t.Fatal("no PUBACKs")
	}
	mu.Lock()
	if len(order) != 4 || order[0][3:] != order[2][4:] || order[1][3:] != order[3][4:] {
		t.Fatalf("packets %q: want the PUBACKs in receive order", order)
	}
	mu.Unlock()

	brokertest.Publish(t, e.broker.URL(), cmd, []byte("c"), false)
	c := next()
	start := time.Now()
	c.Nack()
	c2 := next()
	if string(c2.Payload) != "c" {
		t.Fatalf("after a Nack got %q, want c again", c2.Payload)
	}
	c2.Ack()
	t.Logf("redelivered %v after the Nack", time.Since(start).Round(time.Millisecond))
	if st := l.Stats(); st.Connects != 2 {
		t.Fatalf("stats %+v: want one reconnect", st)
	}
}

// TestPublishNowIntoADeadSocketIsHandedBack: on a half-open connection a
// PublishNow message goes into the socket and nowhere else: it must come
// back through OnUndelivered, not count as sent.
func TestPublishNowIntoADeadSocketIsHandedBack(t *testing.T) {
	e := newEnv(t)
	cfg := e.config()
	cfg.KeepAlive = time.Second
	back := make(chan string, 16)
	cfg.OnUndelivered = func(topic string, payload []byte) { back <- string(payload) }
	l, _ := run(t, cfg, e.out)
	mqtttest.WaitStats(t, l, "connected", func(s mqtt.Stats) bool { return s.Connected })
	e.proxy.SetBlackhole(true)
	defer e.proxy.SetBlackhole(false)
	for i := range 3 {
		if !l.PublishNow(e.prefix+"/telemetry", []byte(fmt.Sprint(i))) {
			t.Fatal("PublishNow refused while connected")
		}
	}
	for i := range 3 {
		select {
		case p := <-back:
			if p != fmt.Sprint(i) {
				t.Fatalf("handed back %q, want %d", p, i)
			}
		case <-time.After(mqtttest.Timeout):
			t.Fatalf("message %d sent into a dead socket was not handed back", i)
		}
	}
}
