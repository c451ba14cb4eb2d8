// Package systemd connects the station agent to the service manager that runs it: the
// sd_notify protocol (readiness, status line, stop and reload notices, watchdog pings) and a
// watchdog that pings only while every main loop of the agent makes progress.
//
// Everything here is a no-op when the agent does not run under systemd ($NOTIFY_SOCKET unset),
// so the same code path serves `station run --sim` on a laptop. Nothing here logs: errors are
// returned, or handed to a callback the caller supplies.
//
// The files next to this package (station.service, station.sysusers, station.tmpfiles,
// station-reboot.rules, station.toml) are what the Debian package installs; cross-build.sh
// builds it.
package systemd

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultTimeout bounds how long one notification may wait for room in the service manager's
// socket queue. systemd reads its notification socket promptly; a full queue means it is
// stuck, and the agent must not get stuck with it.
const DefaultTimeout = time.Second

// Notifier sends sd_notify(3) messages to the service manager. The zero value and a nil
// *Notifier are valid and send nothing, like a Notifier made where $NOTIFY_SOCKET is unset.
// A Notifier is safe for concurrent use.
type Notifier struct {
	addr    *net.UnixAddr // nil: notifications disabled
	timeout time.Duration

	mu         sync.Mutex
	lastStatus string // the last STATUS= sent through Status, for Watchdog to restore
}

// NewNotifier returns a Notifier for the socket named by $NOTIFY_SOCKET. When the variable is
// unset or empty the Notifier is disabled and every method returns nil at once. An error means
// the variable holds something this package cannot use (a relative path, a vsock address); the
// returned Notifier is then disabled but still usable.
func NewNotifier() (*Notifier, error) {
	return NewNotifierAt(os.Getenv("NOTIFY_SOCKET"), 0)
}

// NewNotifierAt returns a Notifier for an explicit socket: an absolute path of a unix datagram
// socket, or an abstract socket name starting with '@'. An empty socket gives a disabled
// Notifier. timeout bounds each send; zero means DefaultTimeout.
func NewNotifierAt(socket string, timeout time.Duration) (*Notifier, error) {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	n := &Notifier{timeout: timeout}
	switch {
	case socket == "":
		return n, nil
	case socket[0] == '/' || socket[0] == '@':
		// net maps a leading '@' to the abstract namespace on Linux.
		n.addr = &net.UnixAddr{Name: socket, Net: "unixgram"}
		return n, nil
	default:
		return n, fmt.Errorf("systemd: NOTIFY_SOCKET %q: want an absolute path or @name", socket)
	}
}

// Enabled reports whether notifications are sent anywhere.
func (n *Notifier) Enabled() bool { return n != nil && n.addr != nil }

// Send sends the given assignments ("READY=1", "STATUS=…") as one notification. A disabled
// Notifier returns nil. No value may contain a newline.
func (n *Notifier) Send(assignments ...string) error {
	if !n.Enabled() || len(assignments) == 0 {
		return nil
	}
	for _, a := range assignments {
		if !strings.Contains(a, "=") || strings.ContainsRune(a, '\n') {
			return fmt.Errorf("systemd: notify: bad assignment %q", a)
		}
	}
	msg := strings.Join(assignments, "\n")
	// A fresh socket per message: the service manager may have re-created its socket
	// (daemon-reexec) and a connected datagram socket would then point at nothing. At most a
	// few messages a minute are sent, so the extra system calls cost nothing.
	c, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("systemd: notify: %w", err)
	}
	defer c.Close()
	if err := c.SetWriteDeadline(time.Now().Add(n.timeout)); err != nil {
		return fmt.Errorf("systemd: notify: %w", err)
	}
	if _, err := c.Write([]byte(msg)); err != nil {
		return fmt.Errorf("systemd: notify %s: %w", firstKey(msg), err)
	}
	return nil
}

// firstKey names a message in an error by its first key, never by its values.
func firstKey(msg string) string {
	k, _, _ := strings.Cut(msg, "=")
	return k
}

// Ready tells the service manager that start-up is complete (READY=1). With Type=notify,
// systemd considers the service started, and starts its watchdog, only now.
func (n *Notifier) Ready() error { return n.Send("READY=1") }

// Status sets the one-line status shown by `systemctl status` (STATUS=…). Newlines in s are
// replaced by spaces.
func (n *Notifier) Status(s string) error {
	if !n.Enabled() {
		return nil
	}
	s = strings.ReplaceAll(s, "\n", " ")
	n.mu.Lock()
	n.lastStatus = s
	n.mu.Unlock()
	return n.Send("STATUS=" + s)
}

// Stopping tells the service manager that the agent is shutting down (STOPPING=1).
func (n *Notifier) Stopping() error { return n.Send("STOPPING=1") }

// Reloading tells the service manager that the agent is reloading its configuration
// (RELOADING=1). Call Ready when the reload is done.
func (n *Notifier) Reloading() error { return n.Send("RELOADING=1") }

// Watchdog sends one keep-alive ping (WATCHDOG=1). Call it only from proof of progress; the
// Watchdog type does that.
func (n *Notifier) Watchdog() error { return n.Send("WATCHDOG=1") }

// ExtendTimeout asks the service manager for d more time to finish starting or stopping
// (EXTEND_TIMEOUT_USEC), for a slow store recovery or compaction at start-up.
func (n *Notifier) ExtendTimeout(d time.Duration) error {
	if d <= 0 {
		return nil
	}
	return n.Send("EXTEND_TIMEOUT_USEC=" + strconv.FormatInt(d.Microseconds(), 10))
}

// restoreStatus re-sends the last status set through Status; with none set, it clears the
// status line.
func (n *Notifier) restoreStatus() error {
	if !n.Enabled() {
		return nil
	}
	n.mu.Lock()
	s := n.lastStatus
	n.mu.Unlock()
	return n.Send("STATUS=" + s)
}

// WatchdogInterval returns the watchdog timeout the service manager enforces ($WATCHDOG_USEC,
// from WatchdogSec= in the unit), or 0 when no watchdog is configured for this process: the
// variable is unset, or $WATCHDOG_PID names another process. Pings are due every half of it.
func WatchdogInterval() (time.Duration, error) {
	return watchdogInterval(os.Getenv("WATCHDOG_USEC"), os.Getenv("WATCHDOG_PID"), os.Getpid())
}

func watchdogInterval(usec, pid string, self int) (time.Duration, error) {
	if usec == "" {
		return 0, nil
	}
	if pid != "" {
		p, err := strconv.Atoi(pid)
		if err != nil || p <= 0 {
			return 0, fmt.Errorf("systemd: WATCHDOG_PID %q: not a process id", pid)
		}
		if p != self {
			return 0, nil
		}
	}
	u, err := strconv.ParseUint(usec, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("systemd: WATCHDOG_USEC %q: %w", usec, errors.Unwrap(err))
	}
	if u == 0 {
		return 0, fmt.Errorf("systemd: WATCHDOG_USEC is 0")
	}
	const maxUsec = uint64(1<<63-1) / uint64(time.Microsecond)
	if u > maxUsec {
		return 0, fmt.Errorf("systemd: WATCHDOG_USEC %q: too large", usec)
	}
	return time.Duration(u) * time.Microsecond, nil
}
