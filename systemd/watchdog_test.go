package systemd

import (
	"context"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"
)

// fakeTicker hands ticks from the test to Run. Run asks for the tick channel each time it
// waits for a tick, that is once per check done; C leaves a token in waiting then, so tick
// knows when the check it caused is over.
type fakeTicker struct {
	c       chan time.Time
	waiting chan struct{}
	period  time.Duration
	stopped chan struct{}
}

func (f *fakeTicker) C() <-chan time.Time {
	select {
	case f.waiting <- struct{}{}:
	default:
	}
	return f.c
}

func (f *fakeTicker) Stop() { close(f.stopped) }

// tick delivers one tick and returns once Run has done the check and waits again.
func (f *fakeTicker) tick(now time.Time) {
	f.c <- now
	<-f.waiting
}

// tickers makes fakeTickers and passes each one made to the test once Run waits on it.
func tickers() (func(time.Duration) Ticker, <-chan *fakeTicker) {
	made := make(chan *fakeTicker, 1)
	return func(d time.Duration) Ticker {
		f := &fakeTicker{c: make(chan time.Time), waiting: make(chan struct{}, 1), period: d, stopped: make(chan struct{})}
		made <- f
		return f
	}, made
}

var t0 = time.Date(2026, 11, 26, 9, 30, 0, 0, time.UTC)

func TestWatchdogOptions(t *testing.T) {
	tests := []struct {
		interval, maxAge    time.Duration
		wantPeriod, wantMax time.Duration
		wantEnabled         bool
	}{
		{30 * time.Second, 0, 15 * time.Second, 30 * time.Second, true},
		{30 * time.Second, 15 * time.Second, 15 * time.Second, 15 * time.Second, true},
		{30 * time.Second, 20 * time.Second, 15 * time.Second, 30 * time.Second, true}, // rounded up
		{30 * time.Second, time.Second, 15 * time.Second, 15 * time.Second, true},
		{30 * time.Second, 2 * time.Minute, 15 * time.Second, 2 * time.Minute, true},
		{0, time.Minute, 0, 0, false},
		{1, 0, 0, 0, false},
	}
	for _, tt := range tests {
		w := NewWatchdog(nil, &WatchdogOptions{Interval: tt.interval, MaxAge: tt.maxAge})
		if w.Period() != tt.wantPeriod || w.MaxAge() != tt.wantMax || w.Enabled() != tt.wantEnabled {
			t.Errorf("interval %v max age %v: period %v, max age %v, enabled %v; want %v, %v, %v",
				tt.interval, tt.maxAge, w.Period(), w.MaxAge(), w.Enabled(), tt.wantPeriod, tt.wantMax, tt.wantEnabled)
		}
	}
	if NewWatchdog(nil, nil).Enabled() {
		t.Error("NewWatchdog(nil, nil) is enabled")
	}
}

// TestWatchdogStopsPingingWhenALoopIsStuck is the whole story through Run and a fake
// NOTIFY_SOCKET: pings while both loops beat, none while one is stuck (with a status line
// naming it), and pings again with the old status once it recovers.
func TestWatchdogStopsPingingWhenALoopIsStuck(t *testing.T) {
	m := newManager(t)
	n := m.notifier()
	newTicker, made := tickers()
	stuckc := make(chan []string, 4)
	w := NewWatchdog(n, &WatchdogOptions{
		Interval:  30 * time.Second,
		MaxAge:    15 * time.Second, // stuck after one check without a beat
		NewTicker: newTicker,
		OnStuck:   func(s []string) { stuckc <- s },
		OnError:   func(err error) { t.Errorf("OnError: %v", err) },
	})
	reader := w.Register("reader")
	link := w.Register("link")

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	tk := <-made
	<-tk.waiting
	if tk.period != 15*time.Second {
		t.Fatalf("ticker period %v, want 15s", tk.period)
	}
	if err := n.Status("serving"); err != nil {
		t.Fatal(err)
	}
	m.expect("STATUS=serving")
	if err := n.Ready(); err != nil {
		t.Fatal(err)
	}
	m.expect("READY=1")

	// First check: registering counts as a beat.
	tk.tick(t0)
	m.expect("WATCHDOG=1")

	reader.Beat()
	link.Beat()
	tk.tick(t0.Add(15 * time.Second))
	m.expect("WATCHDOG=1")

	// The reader loop stops; the link goes on.
	link.Beat()
	tk.tick(t0.Add(30 * time.Second))
	if got := <-stuckc; !slices.Equal(got, []string{"reader"}) {
		t.Fatalf("OnStuck(%q), want [reader]", got)
	}
	m.expect("STATUS=watchdog: stuck: reader (no progress for 15s); not pinging")
	if got := w.Stuck(); !slices.Equal(got, []string{"reader"}) {
		t.Errorf("Stuck() = %q", got)
	}

	link.Beat()
	tk.tick(t0.Add(45 * time.Second)) // still stuck: no ping, no new report
	m.expectNone()
	if len(stuckc) != 0 {
		t.Errorf("OnStuck(%q) while nothing changed", <-stuckc)
	}

	// The reader comes back before systemd acted.
	reader.Beat()
	link.Beat()
	tk.tick(t0.Add(60 * time.Second))
	if got := <-stuckc; got != nil {
		t.Fatalf("OnStuck(%q), want nil", got)
	}
	// Datagrams arrive in order: nothing was sent between the stuck status and this one,
	// so no ping went out while the reader was stuck.
	m.expect("STATUS=serving")
	m.expect("WATCHDOG=1")
	if got := w.Stuck(); got != nil {
		t.Errorf("Stuck() = %q, want nil", got)
	}

	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	select {
	case <-tk.stopped:
	default:
		t.Error("Run returned without stopping its ticker")
	}
	m.expectNone()
}

// TestWatchdogMaxAge drives the checks directly: with the default MaxAge (the interval, two
// checks) one quiet check is tolerated and the second is not.
func TestWatchdogMaxAge(t *testing.T) {
	m := newManager(t)
	var reports [][]string
	w := NewWatchdog(m.notifier(), &WatchdogOptions{
		Interval: 30 * time.Second,
		OnStuck:  func(s []string) { reports = append(reports, s) },
	})
	hb := w.Register("store")
	w.check(t0)
	m.expect("WATCHDOG=1")
	w.check(t0.Add(15 * time.Second)) // one quiet check: fine
	m.expect("WATCHDOG=1")
	w.check(t0.Add(30 * time.Second)) // two: stuck
	m.expect("STATUS=watchdog: stuck: store (no progress for 30s); not pinging")
	w.check(t0.Add(45 * time.Second))
	m.expectNone()
	hb.Beat()
	w.check(t0.Add(60 * time.Second))
	m.expect("STATUS=") // no status was ever set: the line is cleared
	m.expect("WATCHDOG=1")
	if want := [][]string{{"store"}, nil}; !slices.EqualFunc(reports, want, slices.Equal[[]string]) {
		t.Errorf("reports %q, want %q", reports, want)
	}
}

func TestWatchdogSeveralStuck(t *testing.T) {
	m := newManager(t)
	var last []string
	w := NewWatchdog(m.notifier(), &WatchdogOptions{
		Interval: 2 * time.Second,
		MaxAge:   time.Second,
		OnStuck:  func(s []string) { last = s },
	})
	w.Register("telemetry")
	w.Register("link")
	ok := w.Register("reader")
	w.check(t0)
	m.expect("WATCHDOG=1")
	ok.Beat()
	w.check(t0.Add(time.Second))
	if !slices.Equal(last, []string{"link", "telemetry"}) {
		t.Errorf("OnStuck(%q), want [link telemetry]", last)
	}
	m.expect("STATUS=watchdog: stuck: link (no progress for 1s), telemetry (no progress for 1s); not pinging")
	m.expectNone()
}

func TestHeartbeatStop(t *testing.T) {
	m := newManager(t)
	w := NewWatchdog(m.notifier(), &WatchdogOptions{Interval: 2 * time.Second, MaxAge: time.Second})
	done := w.Register("import")
	live := w.Register("reader")
	if done.Name() != "import" {
		t.Errorf("Name() = %q", done.Name())
	}
	w.check(t0)
	m.expect("WATCHDOG=1")
	done.Stop() // the loop finished its work: it no longer holds the pings back
	done.Stop() // twice is harmless
	live.Beat()
	w.check(t0.Add(time.Second))
	m.expect("WATCHDOG=1")
	if got := w.Stuck(); got != nil {
		t.Errorf("Stuck() = %q", got)
	}
}

// TestWatchdogNoHeartbeats: with nothing registered, every check pings.
func TestWatchdogNoHeartbeats(t *testing.T) {
	m := newManager(t)
	w := NewWatchdog(m.notifier(), &WatchdogOptions{Interval: time.Second})
	w.check(t0)
	w.check(t0.Add(time.Second / 2))
	m.expect("WATCHDOG=1")
	m.expect("WATCHDOG=1")
}

func TestWatchdogDisabledRunReturns(t *testing.T) {
	newTicker, made := tickers()
	for _, opts := range []*WatchdogOptions{nil, {NewTicker: newTicker}, {Interval: 1, NewTicker: newTicker}} {
		w := NewWatchdog(nil, opts)
		w.Register("reader")
		if err := w.Run(context.Background()); err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	select {
	case <-made:
		t.Error("a disabled Watchdog made a ticker")
	default:
	}
}

// TestWatchdogPingError: a ping that cannot be sent is reported, and the checks go on.
func TestWatchdogPingError(t *testing.T) {
	m := newManager(t)
	var errs []error
	w := NewWatchdog(m.notifier(), &WatchdogOptions{
		Interval: time.Second,
		OnError:  func(err error) { errs = append(errs, err) },
	})
	m.conn.Close() // the manager has gone away
	w.check(t0)
	w.check(t0.Add(time.Second / 2))
	if len(errs) != 2 {
		t.Fatalf("%d errors reported, want 2: %v", len(errs), errs)
	}
}

// TestWatchdogConcurrentBeats runs beats, registration and checks at once for the race
// detector, and checks no loop that beats all along is reported.
func TestWatchdogConcurrentBeats(t *testing.T) {
	m := newManager(t)
	var mu sync.Mutex
	var reports [][]string
	w := NewWatchdog(m.notifier(), &WatchdogOptions{
		Interval: 2 * time.Second,
		MaxAge:   time.Second,
		OnStuck: func(s []string) {
			mu.Lock()
			reports = append(reports, s)
			mu.Unlock()
		},
	})
	const loops = 3
	var wg sync.WaitGroup
	stop := make(chan struct{})
	started := make(chan *Heartbeat, loops)
	for i := range loops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hb := w.Register("loop" + string(rune('a'+i)))
			hb.Beat()
			started <- hb
			for {
				select {
				case <-stop:
					return
				default:
					hb.Beat()
					runtime.Gosched()
				}
			}
		}()
	}
	hbs := make([]*Heartbeat, 0, loops)
	for range loops {
		hbs = append(hbs, <-started)
	}
	now := t0
	for range 20 {
		// Each check must see a new beat from every loop: wait until each has beaten again.
		seen := make([]uint64, loops)
		for i, hb := range hbs {
			seen[i] = hb.count.Load()
		}
		for i, hb := range hbs {
			for hb.count.Load() == seen[i] {
				runtime.Gosched()
			}
		}
		w.check(now)
		m.expect("WATCHDOG=1")
		_ = w.Stuck()
		now = now.Add(time.Second)
	}
	close(stop)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(reports) != 0 {
		t.Errorf("loops reported stuck while beating: %q", reports)
	}
}
