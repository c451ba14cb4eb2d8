package stationproc

import (
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestParseStatus(t *testing.T) {
	status := "Name:\tstation\nVmPeak:\t  900 kB\nVmRSS:\t   13488 kB\nRssAnon:\t    5000 kB\nRssFile:\t    8000 kB\nRssShmem:\t       0 kB\n"
	m, err := parseStatus(status)
	if err != nil || m != (Memory{RSS: 13488 << 10, Anon: 5000 << 10, File: 8000 << 10}) {
		t.Errorf("parseStatus = %+v, %v", m, err)
	}
	if _, err := parseStatus("VmRSS:\t 1 kB\nRssAnon:\t 1 kB\n"); err == nil {
		t.Error("RssFile missing: no error")
	}
	if v, err := parseKB("   13488 kB"); err != nil || v != 13488 {
		t.Errorf("parseKB = %d, %v", v, err)
	}
	if _, err := parseKB("13488"); err == nil {
		t.Error("parseKB without unit: no error")
	}
}

func TestProcessLogLinesAndStop(t *testing.T) {
	var mu sync.Mutex
	var lines []string
	cmd := exec.Command("sh", "-c", "echo one >&2; echo two; echo three >&2; exec sleep 60")
	p, err := StartProcess("sleeper", cmd, filepath.Join(t.TempDir(), "log"), func(_ time.Time, l string) {
		mu.Lock()
		lines = append(lines, l)
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	err = Poll(context.Background(), p, 10*time.Second, 10*time.Millisecond, func() error {
		if strings.Count(p.Log(), "\n") < 3 {
			return errors.New("fewer than 3 lines logged")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if p.Exited() {
		t.Fatal("exited while sleeping")
	}
	err = p.Stop(10 * time.Second)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
		t.Errorf("Stop = %v, want the exit by SIGTERM", err)
	}
	if err := p.Stop(time.Second); err != nil {
		t.Errorf("second Stop = %v, want nil", err)
	}
	if code := p.ExitCode(); code != -1 {
		t.Errorf("exit status %d after SIGTERM, want -1", code)
	}
	// Stdout and stderr in the one log (stderr through onLine's pipe: the order of the two
	// streams may change); the stderr lines to onLine, once the process is gone.
	got := strings.Split(p.Tail(3), "\n")
	slices.Sort(got)
	if strings.Join(got, ",") != "one,three,two" {
		t.Errorf("Tail(3) = %q", p.Tail(3))
	}
	if got := p.Tail(1); got != "three" && got != "two" {
		t.Errorf("Tail(1) = %q", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(lines, ",") != "one,three" {
		t.Errorf("onLine got %q, want the stderr lines", lines)
	}
}

func TestPollEndsWithTheProcess(t *testing.T) {
	p, err := StartProcess("false", exec.Command("false"), filepath.Join(t.TempDir(), "log"), nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = Poll(context.Background(), p, time.Minute, 10*time.Millisecond, func() error { return errors.New("not yet") })
	if err == nil || !strings.Contains(err.Error(), "false exited") || time.Since(start) > 30*time.Second {
		t.Errorf("Poll on a process that exits = %v after %v", err, time.Since(start))
	}
	if code := p.ExitCode(); code != 1 {
		t.Errorf("exit status %d, want 1", code)
	}
}

func TestParseRecord(t *testing.T) {
	at := time.Now()
	r, err := ParseRecord("p/q/st-1/events", []byte(`{"id":"a","seq":3,"type":"card.tap","card":{"token":"x"}}`), at)
	if err != nil || r.ID != "a" || r.Seq != 3 || r.Type != "card.tap" || r.Card == nil || r.Card.Token != "x" || r.Station != "st-1" || !r.At.Equal(at) {
		t.Errorf("ParseRecord = %+v, %v", r, err)
	}
	if _, err := ParseRecord("p/st-1/events", []byte(`not json`), at); err == nil {
		t.Error("ParseRecord of garbage: no error")
	}
}
