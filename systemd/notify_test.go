package systemd

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// recvTimeout bounds how long a test waits for a notification that must come. It is generous
// because the suite also runs under qemu user emulation; a passing test never waits for it.
const recvTimeout = 20 * time.Second

// fakeManager is the service manager's end of $NOTIFY_SOCKET: a unix datagram socket.
type fakeManager struct {
	t    *testing.T
	conn *net.UnixConn
	addr string
}

func listenManager(t *testing.T, name string) *fakeManager {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &fakeManager{t: t, conn: c, addr: name}
}

// newManager listens on a socket file in t.TempDir().
func newManager(t *testing.T) *fakeManager {
	return listenManager(t, filepath.Join(t.TempDir(), "notify.sock"))
}

// recv returns the next notification; it fails the test if none comes.
func (m *fakeManager) recv() string {
	m.t.Helper()
	buf := make([]byte, 4096)
	if err := m.conn.SetReadDeadline(time.Now().Add(recvTimeout)); err != nil {
		m.t.Fatal(err)
	}
	n, err := m.conn.Read(buf)
	if err != nil {
		m.t.Fatalf("no notification: %v", err)
	}
	return string(buf[:n])
}

// expect fails the test unless the next notification is want.
func (m *fakeManager) expect(want string) {
	m.t.Helper()
	if got := m.recv(); got != want {
		m.t.Fatalf("notification %q, want %q", got, want)
	}
}

// expectNone fails the test if a notification is queued. A datagram is in the receive queue
// once the sender's write has returned, so this needs no waiting.
func (m *fakeManager) expectNone() {
	m.t.Helper()
	buf := make([]byte, 4096)
	if err := m.conn.SetReadDeadline(time.Now()); err != nil {
		m.t.Fatal(err)
	}
	n, err := m.conn.Read(buf)
	if err == nil {
		m.t.Fatalf("unexpected notification %q", buf[:n])
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		m.t.Fatal(err)
	}
}

func (m *fakeManager) notifier() *Notifier {
	m.t.Helper()
	n, err := NewNotifierAt(m.addr, 0)
	if err != nil {
		m.t.Fatal(err)
	}
	if !n.Enabled() {
		m.t.Fatal("Notifier for a socket is not enabled")
	}
	return n
}

func TestNotifierMessages(t *testing.T) {
	m := newManager(t)
	t.Setenv("NOTIFY_SOCKET", m.addr)
	n, err := NewNotifier()
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		send func() error
		want string
	}{
		{n.Ready, "READY=1"},
		{func() error { return n.Status("queue 3, broker online") }, "STATUS=queue 3, broker online"},
		{func() error { return n.Status("two\nlines") }, "STATUS=two lines"},
		{n.Watchdog, "WATCHDOG=1"},
		{n.Reloading, "RELOADING=1"},
		{func() error { return n.ExtendTimeout(90 * time.Second) }, "EXTEND_TIMEOUT_USEC=90000000"},
		{func() error { return n.Send("READY=1", "STATUS=ok") }, "READY=1\nSTATUS=ok"},
		{n.Stopping, "STOPPING=1"},
	}
	for _, s := range steps {
		if err := s.send(); err != nil {
			t.Fatalf("sending %q: %v", s.want, err)
		}
		m.expect(s.want)
	}
	m.expectNone()
}

func TestNotifierAbstractSocket(t *testing.T) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	m := listenManager(t, "@station-notify-test-"+hex.EncodeToString(b))
	n := m.notifier()
	if err := n.Ready(); err != nil {
		t.Fatal(err)
	}
	m.expect("READY=1")
}

func TestNotifierDisabled(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	n, err := NewNotifier()
	if err != nil {
		t.Fatal(err)
	}
	var nilNotifier *Notifier
	for name, n := range map[string]*Notifier{"unset": n, "zero": {}, "nil": nilNotifier} {
		if n.Enabled() {
			t.Errorf("%s: Enabled", name)
		}
		for _, err := range []error{n.Ready(), n.Status("x"), n.Watchdog(), n.Stopping(),
			n.Reloading(), n.ExtendTimeout(time.Second), n.Send("A=1")} {
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
	}
}

func TestNotifierBadSocket(t *testing.T) {
	for _, s := range []string{"relative/notify.sock", "vsock:2:1234"} {
		t.Setenv("NOTIFY_SOCKET", s)
		n, err := NewNotifier()
		if err == nil || !strings.HasPrefix(err.Error(), "systemd: ") {
			t.Errorf("%q: err %v, want a systemd: error", s, err)
		}
		if n == nil || n.Enabled() {
			t.Errorf("%q: want a disabled Notifier", s)
		}
		if err := n.Ready(); err != nil {
			t.Errorf("%q: Ready on the disabled Notifier: %v", s, err)
		}
	}
}

func TestNotifierErrors(t *testing.T) {
	m := newManager(t)
	n := m.notifier()
	for _, a := range []string{"READY", "STATUS=a\nb"} {
		if err := n.Send(a); err == nil {
			t.Errorf("Send(%q): no error", a)
		}
	}
	m.expectNone()

	// No one listens: the error says so and names the message, not its value.
	gone, err := NewNotifierAt(filepath.Join(t.TempDir(), "missing.sock"), 0)
	if err != nil {
		t.Fatal(err)
	}
	err = gone.Status("secret value")
	if err == nil {
		t.Fatal("Status to a missing socket: no error")
	}
	if !strings.HasPrefix(err.Error(), "systemd: notify") || strings.Contains(err.Error(), "secret") {
		t.Errorf("error %q", err)
	}
}

// TestNotifierDoesNotBlock fills the manager's queue (it never reads): sends must fail with a
// timeout rather than block.
func TestNotifierDoesNotBlock(t *testing.T) {
	m := newManager(t)
	n, err := NewNotifierAt(m.addr, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 1_000_000; i++ {
		err = n.Watchdog()
		if err != nil {
			break
		}
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("err %v, want a deadline error once the queue is full", err)
	}
}

func TestWatchdogInterval(t *testing.T) {
	const self = 4242
	tests := []struct {
		usec, pid string
		want      time.Duration
		err       bool
	}{
		{"", "", 0, false},
		{"30000000", "", 30 * time.Second, false},
		{"30000000", "4242", 30 * time.Second, false},
		{"30000000", "1", 0, false}, // meant for another process
		{"30000000", "x", 0, true},
		{"abc", "", 0, true},
		{"-5", "", 0, true},
		{"0", "", 0, true},
		{"99999999999999999999", "", 0, true},
		{"18446744073709551", "", 0, true}, // overflows time.Duration
	}
	for _, tt := range tests {
		got, err := watchdogInterval(tt.usec, tt.pid, self)
		if got != tt.want || (err != nil) != tt.err {
			t.Errorf("watchdogInterval(%q, %q) = %v, %v; want %v, error %v", tt.usec, tt.pid, got, err, tt.want, tt.err)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "systemd: ") {
			t.Errorf("error %q lacks the package prefix", err)
		}
	}

	t.Setenv("WATCHDOG_USEC", "2000000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	if d, err := WatchdogInterval(); d != 2*time.Second || err != nil {
		t.Errorf("WatchdogInterval() = %v, %v; want 2s", d, err)
	}
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()+1))
	if d, err := WatchdogInterval(); d != 0 || err != nil {
		t.Errorf("WatchdogInterval() for another pid = %v, %v; want 0", d, err)
	}
}
