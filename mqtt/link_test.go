package mqtt_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"station.dev/agent/mqtt"
	"station.dev/agent/mqtt/brokertest"
	"station.dev/agent/mqtt/internal/mqtttest"
)

// env is one test's world: a broker, a proxy in front of it that tracks
// the outbox publishes, and an in-memory outbox whose Delete fails the
// test for any item the proxy did not see PUBACKed.
type env struct {
	t      *testing.T
	broker *brokertest.Broker
	proxy  *mqtttest.Proxy
	tr     *mqtttest.Tracker
	out    *mqtttest.MemOutbox
	prefix string // topic prefix unique to the test
}

const (
	events    = "events"
	telemetry = "telemetry"
)

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, broker: brokertest.New(t), out: mqtttest.NewMemOutbox()}
	e.prefix = "stations-test/" + brokertest.UniquePrefix(t)
	e.proxy = mqtttest.NewProxy(t, e.broker.Addr())
	e.tr = mqtttest.NewTracker(e.prefix + "/")
	e.proxy.SetHook(e.tr.Hook)
	e.out.BeforeDelete = func(stream string, seqs []uint64) error {
		if stream != events { // only the QoS 1 stream has PUBACKs to check
			return nil
		}
		if err := e.tr.CheckAcked(stream, seqs); err != nil {
			t.Error(err)
			return err
		}
		return nil
	}
	return e
}

func (e *env) config() mqtt.Config {
	return mqtt.Config{
		Broker:         e.proxy.URL(),
		ClientID:       brokertest.UniquePrefix(e.t),
		ConnectTimeout: 5 * time.Second,
		AckTimeout:     5 * time.Second,
		BackoffMin:     5 * time.Millisecond,
		BackoffMax:     50 * time.Millisecond,
		Streams:        []mqtt.Stream{{Name: events, Topic: e.prefix + "/events", QoS: 1}},
	}
}

func (e *env) add(stream string, n int) uint64 {
	return e.out.Add(stream, n, func(seq uint64) []byte { return mqtttest.Payload(seq, 300) })
}

// run starts the link; the returned stop cancels it and checks that Run
// returned nil. stop also runs at cleanup.
func run(t *testing.T, cfg mqtt.Config, out mqtt.Outbox) (*mqtt.Link, func()) {
	t.Helper()
	l, err := mqtt.New(cfg, out)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	stopped := false
	stop := func() {
		t.Helper()
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v, want nil on cancellation", err)
			}
		case <-time.After(mqtttest.Timeout):
			t.Fatal("Run did not return after cancellation")
		}
	}
	t.Cleanup(stop)
	return l, stop
}

func seqs(from, to uint64) []uint64 {
	var s []uint64
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}

// checkConsecutive checks that each connection sent a run of consecutive
// seqs, that connection 0 started at 1, that every connection started at
// or before the point where the previous one stopped, and that the last
// seq reached last.
func checkConsecutive(t *testing.T, sent map[int][]uint64, last uint64) {
	t.Helper()
	var conns []int
	for c := range sent {
		conns = append(conns, c)
	}
	slices.Sort(conns)
	var reached uint64
	for _, c := range conns {
		s := sent[c]
		if len(s) == 0 {
			continue
		}
		if s[0] > reached+1 {
			t.Fatalf("connection %d started at seq %d after seq %d: a gap", c, s[0], reached)
		}
		for i := 1; i < len(s); i++ {
			if s[i] != s[i-1]+1 {
				t.Fatalf("connection %d sent seq %d after %d: not in order", c, s[i], s[i-1])
			}
		}
		reached = max(reached, s[len(s)-1])
	}
	if reached != last {
		t.Fatalf("highest seq sent %d, want %d", reached, last)
	}
}

func TestDrainInOrderDeletesOnlyAfterPuback(t *testing.T) {
	e := newEnv(t)
	cfg := e.config()
	cfg.Streams = append(cfg.Streams, mqtt.Stream{Name: telemetry, Topic: e.prefix + "/telemetry", QoS: 0})
	obs := brokertest.Subscribe(t, e.broker.URL(), e.prefix+"/events", 4096)
	e.add(events, 500)
	e.add(telemetry, 20)

	l, stop := run(t, cfg, e.out)
	e.out.WaitEmpty(t)
	for want := uint64(1); want <= 500; want++ {
		m := obs.Next(t, mqtttest.Timeout)
		if got, _ := mqtttest.SeqOf(m.Payload); got != want {
			t.Fatalf("subscriber got seq %d, want %d", got, want)
		}
	}

	// New items wake the link (Changed), no polling.
	e.add(events, 10)
	e.out.WaitEmpty(t)
	for want := uint64(501); want <= 510; want++ {
		m := obs.Next(t, mqtttest.Timeout)
		if got, _ := mqtttest.SeqOf(m.Payload); got != want {
			t.Fatalf("subscriber got seq %d, want %d", got, want)
		}
	}
	if sent := e.tr.Sent(); len(sent) != 1 || !slices.Equal(sent[0], seqs(1, 510)) {
		t.Fatalf("sent per connection = %v, want one connection sending 1..510 once", len(sent))
	}

	stop()
	st := l.Stats()
	if st.Connected || st.Connects != 1 || st.Failures != 0 {
		t.Errorf("stats after stop = %+v, want 1 connect, 0 failures, not connected", st)
	}
	if st.Acked != 530 || st.Published != 530 || st.InFlight != 0 {
		t.Errorf("stats = %+v, want 530 published and acked, none in flight", st)
	}
	if reads, deletes := e.out.Counts(); deletes >= 530/2 || reads >= 530/2 {
		t.Errorf("%d reads and %d deletes for 530 items: not batched", reads, deletes)
	}
}

func TestBrokerDownAtStartIsRetried(t *testing.T) {
	e := newEnv(t)
	e.proxy.SetDown(true)
	e.add(events, 100)

	l, _ := run(t, e.config(), e.out)
	st := mqtttest.WaitStats(t, l, "3 failed attempts", func(s mqtt.Stats) bool { return s.Failures >= 3 })
	if st.Connected || st.Connects != 0 || !strings.HasPrefix(st.LastError, "mqtt: connect to ") {
		t.Fatalf("stats while the broker is down = %+v", st)
	}
	if e.out.Len(events) != 100 {
		t.Fatal("items deleted while the broker was down")
	}

	e.proxy.SetDown(false)
	e.out.WaitEmpty(t)
	st = mqtttest.WaitStats(t, l, "connected", func(s mqtt.Stats) bool { return s.Connected })
	if st.Connects != 1 {
		t.Fatalf("connects = %d, want 1", st.Connects)
	}
	checkConsecutive(t, e.tr.Sent(), 100)
}

func TestBrokerRestartMidDrain(t *testing.T) {
	e := newEnv(t)
	const n = 3000
	e.add(events, n)
	l, _ := run(t, e.config(), e.out)

	select {
	case <-e.tr.AcksReached(n / 3):
	case <-time.After(mqtttest.Timeout):
		t.Fatal("drain did not start")
	}
	f0 := l.Stats().Failures
	e.proxy.SetDown(true)
	e.proxy.Cut()
	if e.broker.InProcess() {
		e.broker.Restart(t) // sessions and all: a real broker restart
	}
	// Lost, then at least one failed attempt while down.
	mqtttest.WaitStats(t, l, "a failed reconnect", func(s mqtt.Stats) bool { return s.Failures >= f0+2 && !s.Connected })
	if left := e.out.Len(events); left == 0 || left == n {
		t.Fatalf("%d items left: the cut did not happen mid-drain", left)
	}
	e.proxy.SetDown(false)
	e.out.WaitEmpty(t)

	sent := e.tr.Sent()
	if len(sent) < 2 {
		t.Fatalf("%d connections, want a reconnect", len(sent))
	}
	checkConsecutive(t, sent, n)
	if l.Stats().Connects < 2 {
		t.Fatalf("stats %+v: want 2 connects", l.Stats())
	}
}

func TestNoPubackWithinAckTimeoutReconnects(t *testing.T) {
	e := newEnv(t)
	acks := 0
	// The broker stops acknowledging on the first connection after 10
	// PUBACKs, while the TCP connection stays up.
	e.tr.Drop(func(pk mqtttest.Packet) bool {
		if pk.Conn != 0 || pk.Dir != mqtttest.Down || pk.Type != mqtttest.PUBACK {
			return false
		}
		acks++
		return acks > 10
	})
	e.add(events, 200)
	cfg := e.config()
	cfg.AckTimeout = 300 * time.Millisecond
	// A slow store: the Delete of items 1..10 finishes only once the link
	// has connected again. It must still happen before the outbox is read
	// on the new connection.
	links := make(chan *mqtt.Link, 1)
	check := e.out.BeforeDelete
	e.out.BeforeDelete = func(stream string, seqs []uint64) error {
		if seqs[0] == 1 {
			l := <-links
			links <- l
			mqtttest.WaitStats(t, l, "second connect", func(s mqtt.Stats) bool { return s.Connects >= 2 })
		}
		return check(stream, seqs)
	}

	l, _ := run(t, cfg, e.out)
	links <- l
	e.out.WaitEmpty(t)
	st := l.Stats()
	if st.Connects < 2 || st.Failures < 1 || !strings.Contains(st.LastError, "no PUBACK within 300ms") {
		t.Fatalf("stats = %+v: want a reconnect after an ack timeout", st)
	}
	sent := e.tr.Sent()
	// Items 1..10 were acknowledged, and deleted before the outbox was
	// read again: the second connection starts at 11.
	if len(sent[1]) == 0 || sent[1][0] != 11 {
		t.Fatalf("second connection started with %v, want seq 11", sent[1][:min(3, len(sent[1]))])
	}
	checkConsecutive(t, sent, 200)
}

func TestWindowBoundsUnacknowledgedPublishes(t *testing.T) {
	e := newEnv(t)
	e.add(events, 1000)
	cfg := e.config()
	cfg.Window = 8
	run(t, cfg, e.out)
	e.out.WaitEmpty(t)
	// Counted at the proxy: a publish is outstanding from when it passes
	// towards the broker until its PUBACK passes back.
	if got := e.tr.MaxOutstanding(); got > 8 {
		t.Fatalf("%d publishes awaited their PUBACK at once, window is 8", got)
	} else if got < 2 {
		t.Fatalf("at most %d publish in flight: the window is not used", got)
	}
}

func statusConfig(e *env) mqtt.Config {
	cfg := e.config()
	cfg.StatusTopic = e.prefix + "/status"
	cfg.Status = func() []byte { return []byte(`{"state":"online"}`) }
	cfg.WillPayload = []byte(`{"state":"offline","reason":"lost"}`)
	cfg.ShutdownStatus = func() []byte { return []byte(`{"state":"offline","reason":"shutdown"}`) }
	return cfg
}

func TestLastWillRetainedWhenConnectionDropsAbruptly(t *testing.T) {
	e := newEnv(t)
	cfg := statusConfig(e)
	obs := brokertest.Subscribe(t, e.broker.URL(), cfg.StatusTopic, 4096)
	l, stop := run(t, cfg, e.out)
	obs.NextWith(t, mqtttest.Timeout, `{"state":"online"}`)

	e.proxy.SetDown(true)
	e.proxy.Cut() // TCP closed without DISCONNECT
	obs.NextWith(t, mqtttest.Timeout, `{"state":"offline","reason":"lost"}`)
	mqtttest.WaitStats(t, l, "disconnected", func(s mqtt.Stats) bool { return !s.Connected })

	late := brokertest.Subscribe(t, e.broker.URL(), cfg.StatusTopic, 4096)
	if m := late.Next(t, mqtttest.Timeout); !m.Retained || string(m.Payload) != `{"state":"offline","reason":"lost"}` {
		t.Fatalf("retained status = %+v, want the last will", m)
	}
	stop() // not connected: returns at once
}

func TestCleanStopLeavesShutdownStatusRetained(t *testing.T) {
	e := newEnv(t)
	cfg := statusConfig(e)
	obs := brokertest.Subscribe(t, e.broker.URL(), cfg.StatusTopic, 4096)
	l, stop := run(t, cfg, e.out)
	obs.NextWith(t, mqtttest.Timeout, `{"state":"online"}`)

	stop()
	obs.NextWith(t, mqtttest.Timeout, `{"state":"offline","reason":"shutdown"}`)
	late := brokertest.Subscribe(t, e.broker.URL(), cfg.StatusTopic, 4096)
	if m := late.Next(t, mqtttest.Timeout); !m.Retained || string(m.Payload) != `{"state":"offline","reason":"shutdown"}` {
		t.Fatalf("retained status = %+v, want the shutdown status", m)
	}
	if l.Stats().Connected {
		t.Fatal("still connected after Run returned")
	}
}

func TestUpdateStatusAndPublishNow(t *testing.T) {
	e := newEnv(t)
	cfg := statusConfig(e)
	state := make(chan string, 1)
	state <- "one"
	cfg.Status = func() []byte {
		s := <-state
		state <- s
		return []byte(`{"state":"online","n":"` + s + `"}`)
	}
	obs := brokertest.Subscribe(t, e.broker.URL(), e.prefix+"/#", 4096)
	l, err := mqtt.New(cfg, e.out)
	if err != nil {
		t.Fatal(err)
	}
	if l.PublishNow(e.prefix+"/telemetry", []byte("x")) {
		t.Fatal("PublishNow reported success before Run")
	}
	l, _ = run(t, cfg, e.out)
	obs.NextWith(t, mqtttest.Timeout, `{"state":"online","n":"one"}`)

	<-state
	state <- "two"
	l.UpdateStatus()
	obs.NextWith(t, mqtttest.Timeout, `{"state":"online","n":"two"}`)

	if !l.PublishNow(e.prefix+"/telemetry", []byte(`{"t":1}`)) {
		t.Fatal("PublishNow failed while connected")
	}
	if m := obs.NextWith(t, mqtttest.Timeout, `{"t":1}`); m.Topic != e.prefix+"/telemetry" {
		t.Fatalf("PublishNow delivered on %s", m.Topic)
	}
	if l.PublishNow(e.prefix+"/+", nil) {
		t.Fatal("PublishNow accepted a wildcard topic")
	}
}

func TestSubscriptionKeepsMessagesWhileAwayAndAckControlsRedelivery(t *testing.T) {
	e := newEnv(t)
	cfg := e.config()
	cmd := e.prefix + "/cmd"
	cfg.Subscriptions = []string{cmd}
	got := make(chan mqtt.Message, 16)
	cfg.OnMessage = func(m mqtt.Message) { got <- m }
	l, _ := run(t, cfg, e.out)

	next := func(want string) mqtt.Message {
		t.Helper()
		select {
		case m := <-got:
			if m.Topic != cmd || string(m.Payload) != want {
				t.Fatalf("got %s %q, want %s %q", m.Topic, m.Payload, cmd, want)
			}
			return m
		case <-time.After(mqtttest.Timeout):
			t.Fatalf("no message %q", want)
			return mqtt.Message{}
		}
	}
	acked := 0
	ack := func(m mqtt.Message) {
		t.Helper()
		m.Ack()
		acked++
		select {
		case <-e.tr.ClientAcksReached(acked):
		case <-time.After(mqtttest.Timeout):
			t.Fatal("Ack sent no PUBACK")
		}
		// The broker handles a connection's packets in order: once an
		// item published after the PUBACK is acknowledged, the broker
		// has processed the PUBACK too.
		e.add(events, 1)
		e.out.WaitEmpty(t)
	}
	// away takes the link off the broker, runs fn, and lets it back.
	away := func(fn func()) {
		t.Helper()
		f0 := l.Stats().Failures
		e.proxy.SetDown(true)
		e.proxy.Cut()
		mqtttest.WaitStats(t, l, "disconnected", func(s mqtt.Stats) bool { return s.Failures > f0 && !s.Connected })
		fn()
		e.proxy.SetDown(false)
	}

	select {
	case <-e.tr.SubacksReached(1):
	case <-time.After(mqtttest.Timeout):
		t.Fatal("no SUBACK")
	}
	brokertest.Publish(t, e.broker.URL(), cmd, []byte("probe"), false)
	ack(next("probe"))

	// Published while the link is away: delivered after it reconnects.
	away(func() { brokertest.Publish(t, e.broker.URL(), cmd, []byte("cmd-1"), false) })
	next("cmd-1") // not acknowledged

	// Not acknowledged: delivered again on the next connection.
	away(func() {})
	ack(next("cmd-1"))

	// Acknowledged: not delivered again; the next message is the new one.
	away(func() { brokertest.Publish(t, e.broker.URL(), cmd, []byte("cmd-2"), false) })
	ack(next("cmd-2"))
}

func TestRunStopsAllGoroutines(t *testing.T) {
	before := goroutineIDs()
	e := newEnv(t)
	e.add(events, 50)
	cfg := statusConfig(e)
	cfg.Subscriptions = []string{e.prefix + "/cmd"}
	cfg.OnMessage = func(m mqtt.Message) { m.Ack() }
	_, stop := run(t, cfg, e.out)
	e.out.WaitEmpty(t)
	stop()

	// paho winds down its goroutines after Disconnect returns: poll.
	deadline := time.Now().Add(mqtttest.Timeout)
	for {
		leaks := linkGoroutines(before)
		if len(leaks) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("goroutines left after Run returned:\n%s", strings.Join(leaks, "\n\n"))
		}
		time.Sleep(10 * time.Millisecond) // polling with a deadline: nothing to wait on
	}
}

// goroutines returns the stacks of all goroutines by id.
func goroutines() map[string]string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	out := make(map[string]string)
	for _, g := range strings.Split(string(buf), "\n\n") {
		if id, _, ok := strings.Cut(strings.TrimPrefix(g, "goroutine "), " "); ok {
			out[id] = g
		}
	}
	return out
}

func goroutineIDs() map[string]bool {
	ids := make(map[string]bool)
	for id := range goroutines() {
		ids[id] = true
	}
	return ids
}

// linkGoroutines returns the stacks of goroutines of the link or of paho
// started since before was taken. The test has no other paho client.
func linkGoroutines(before map[string]bool) []string {
	var out []string
	for id, g := range goroutines() {
		if before[id] {
			continue
		}
		if strings.Contains(g, "eclipse/paho.mqtt.golang") || strings.Contains(g, "station.dev/agent/mqtt.") {
			out = append(out, g)
		}
	}
	return out
}

func TestRunTwiceFails(t *testing.T) {
	e := newEnv(t)
	l, _ := run(t, e.config(), e.out)
	mqtttest.WaitStats(t, l, "connected", func(s mqtt.Stats) bool { return s.Connected })
	if err := l.Run(context.Background()); err == nil || !strings.HasPrefix(err.Error(), "mqtt: ") {
		t.Fatalf("second Run: %v", err)
	}
}

func TestOutboxReadErrorIsRetriedOnTheSameConnection(t *testing.T) {
	e := newEnv(t)
	e.add(events, 20)
	fo := &failingOutbox{MemOutbox: e.out, fail: 2}
	l, _ := run(t, e.config(), fo)
	e.out.WaitEmpty(t)
	st := l.Stats()
	if st.Failures != 0 || st.Connects != 1 || st.LastError != `mqtt: read outbox stream "events": disk on fire` {
		t.Fatalf("stats = %+v: want the read error reported and the connection kept", st)
	}
	checkConsecutive(t, e.tr.Sent(), 20)
}

// failingOutbox fails its first Reads.
type failingOutbox struct {
	*mqtttest.MemOutbox
	fail int
	n    int
}

func (f *failingOutbox) Read(stream string, after uint64, max int) ([]mqtt.Item, error) {
	f.n++ // Read is called from Run's goroutine only
	if f.n <= f.fail {
		return nil, errors.New("disk on fire")
	}
	return f.MemOutbox.Read(stream, after, max)
}

func ExampleLink() {
	out := mqtttest.NewMemOutbox() // the agent passes its store here
	l, err := mqtt.New(mqtt.Config{
		Broker:         "tls://broker.example:8883",
		ClientID:       "huayang-xianglong-01",
		StatusTopic:    "stations/huayang-xianglong-01/status",
		Status:         func() []byte { return []byte(`{"state":"online"}`) },
		WillPayload:    []byte(`{"state":"offline","reason":"lost"}`),
		ShutdownStatus: func() []byte { return []byte(`{"state":"offline","reason":"shutdown"}`) },
		Streams:        []mqtt.Stream{{Name: "events", Topic: "stations/huayang-xianglong-01/events", QoS: 1}},
		Subscriptions:  []string{"stations/huayang-xianglong-01/cmd", "stations/_fleet/cmd"},
		OnMessage:      func(m mqtt.Message) { /* store the command, then */ m.Ack() },
	}, out)
	fmt.Println(err)
	_ = l // go l.Run(ctx)
	// Output: <nil>
}

func TestProgressReportedWhileRetryingAndConnected(t *testing.T) {
	e := newEnv(t)
	e.proxy.SetDown(true)
	beats := make(chan struct{}, 1000)
	cfg := e.config()
	cfg.Progress = func() {
		select {
		case beats <- struct{}{}:
		default:
		}
	}
	run(t, cfg, e.out)
	for i := 0; i < 3; i++ { // one per connect attempt while the broker is down
		select {
		case <-beats:
		case <-time.After(mqtttest.Timeout):
			t.Fatalf("no progress while retrying (%d beats)", i)
		}
	}
	e.proxy.SetDown(false)
	e.add(events, 10)
	e.out.WaitEmpty(t)
	select {
	case <-beats:
	case <-time.After(mqtttest.Timeout):
		t.Fatal("no progress while connected")
	}
}
