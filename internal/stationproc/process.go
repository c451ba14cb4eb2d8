package stationproc

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Process is a child process whose output goes to a log file. It runs in a process group of its
// own, so that a Ctrl-C in the terminal reaches the parent only (which then stops its children in
// order), and it is killed should the parent die first.
type Process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed once the process has ended and been reaped
	err  error         // Wait's error, set before done is closed
	stop sync.Once
}

// StartProcess starts cmd. Its stderr, and its stdout unless cmd has one already, are appended to
// the file at logPath. onLine, if not nil, is also called with each line of its stderr and the
// time it was read, from one goroutine. name names the process in errors.
func StartProcess(name string, cmd *exec.Cmd, logPath string, onLine func(at time.Time, line string)) (*Process, error) {
	lf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd.Stderr = lf
	if onLine != nil {
		// exec.Cmd copies the child's stderr into it from a goroutine of its own, which Wait
		// waits for; lf stays open until then.
		cmd.Stderr = &lineWriter{w: lf, fn: onLine}
	}
	if cmd.Stdout == nil {
		cmd.Stdout = lf
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &Process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		lf.Close() // the child had its own descriptor
		close(p.done)
	}()
	return p, nil
}

// lineWriter passes what it is given to w, and each whole line to fn.
type lineWriter struct {
	w    io.Writer
	fn   func(time.Time, string)
	part []byte
}

func (l *lineWriter) Write(p []byte) (int, error) {
	at := time.Now()
	n, err := l.w.Write(p)
	l.part = append(l.part, p...)
	for {
		i := bytes.IndexByte(l.part, '\n')
		if i < 0 {
			break
		}
		l.fn(at, string(l.part[:i]))
		l.part = l.part[i+1:]
	}
	return n, err
}

// Name returns the name the process was started with.
func (p *Process) Name() string { return p.name }

// Pid returns the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed once the process has ended and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err returns Wait's error once the process has ended: nil for exit status 0.
func (p *Process) Err() error {
	<-p.done
	return p.err
}

// ExitCode waits for the process to end and returns its exit status; -1 if a signal ended it.
func (p *Process) ExitCode() int {
	<-p.done
	return p.cmd.ProcessState.ExitCode()
}

// Signal sends sig to the process, unless it has ended.
func (p *Process) Signal(sig os.Signal) error {
	if p.Exited() {
		return nil
	}
	return p.cmd.Process.Signal(sig)
}

// Wait waits at most timeout for the process to end and reports whether it has.
func (p *Process) Wait(timeout time.Duration) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
		return true
	case <-t.C:
		return false
	}
}

// Kill kills the process with SIGKILL and waits until it is reaped.
func (p *Process) Kill() {
	_ = p.Signal(syscall.SIGKILL)
	<-p.done
}

// ErrKilled is the error (wrapped) of a Stop that had to kill the process.
var ErrKilled = errors.New("killed")

// Stop asks the process to end with SIGTERM and kills it if it has not ended within grace. It
// returns Wait's error (nil for exit status 0), or an error wrapping ErrKilled if it had to kill
// it. Only the first call stops the process; later calls return nil.
func (p *Process) Stop(grace time.Duration) error {
	var err error
	p.stop.Do(func() {
		_ = p.Signal(syscall.SIGTERM)
		if p.Wait(grace) {
			err = p.err
			return
		}
		p.Kill()
		err = fmt.Errorf("%s did not stop within %v of SIGTERM: %w", p.name, grace, ErrKilled)
	})
	return err
}

// LogPath returns the path of the log file.
func (p *Process) LogPath() string { return p.log }

// Log returns what the process has logged so far.
func (p *Process) Log() string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return fmt.Sprintf("(log of %s: %v)", p.name, err)
	}
	return string(b)
}

// Tail returns the last n lines of the log, for error messages.
func (p *Process) Tail(n int) string {
	lines := strings.Split(strings.TrimRight(p.Log(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Poll calls try every interval until it returns nil, and returns nil then. It gives up with an
// error when p (if not nil) ends, when ctx ends or when timeout has passed, whichever comes
// first. Polling is the only way to learn when another program is ready; the deadline bounds it.
func Poll(ctx context.Context, p *Process, timeout, interval time.Duration, try func() error) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		err := try()
		if err == nil {
			return nil
		}
		var done <-chan struct{}
		if p != nil {
			done = p.done
		}
		select {
		case <-done:
			return fmt.Errorf("%s exited (%v): %w", p.name, p.err, err)
		case <-ctx.Done():
			return errors.Join(ctx.Err(), err)
		case <-deadline.C:
			return fmt.Errorf("not within %v: %w", timeout, err)
		case <-tick.C:
		}
	}
}

// scanLines calls fn with each line of r until r ends or fn returns false.
func scanLines(r io.Reader, fn func([]byte) bool) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() && fn(sc.Bytes()) {
	}
}
