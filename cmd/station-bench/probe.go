package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"station.dev/agent/internal/stationproc"
)

// probeEnv, set in its environment, makes the probe binary (this package's test binary) run
// the probe named by its first argument instead of the tests; see baseline_test.go.
const probeEnv = "STATION_BENCH_PROBE"

// probeCmd returns a command running one probe.
func (b *bench) probeCmd(args ...string) *exec.Cmd {
	cmd := exec.Command(b.probe, args...)
	cmd.Env = append(os.Environ(), probeEnv+"=1")
	return cmd
}

// subMsg is one message the subscriber probe received.
type subMsg struct {
	At       int64 // CLOCK_MONOTONIC when it arrived, ns
	Topic    string
	QoS      byte // as published: the subscription is QoS 1
	Retained bool
	Len      int    // payload bytes
	ID       string // a record's id; "" otherwise
	Seq      uint64 // a record's seq; 0 otherwise
	State    string // a status's state; "" otherwise
	BootID   string // the boot_id member, if any
	TS       string // the ts member, if any
}

// formatSubMsg is the probe's output line for m (see parseSubMsg): space-separated fields, "-"
// for an empty string.
func formatSubMsg(m subMsg) string {
	dash := func(s string) string {
		s = strings.Join(strings.Fields(s), "_") // one field whatever it holds
		if s == "" {
			return "-"
		}
		return s
	}
	r := 0
	if m.Retained {
		r = 1
	}
	return fmt.Sprintf("m %d %s %d %d %d %s %d %s %s %s", m.At, dash(m.Topic), m.QoS, r, m.Len, dash(m.ID), m.Seq,
		dash(m.State), dash(m.BootID), dash(m.TS))
}

// parseSubMsg parses a line written by formatSubMsg.
func parseSubMsg(line string) (subMsg, error) {
	f := strings.Fields(line)
	bad := fmt.Errorf("bad subscriber line %q", line)
	if len(f) != 11 || f[0] != "m" {
		return subMsg{}, bad
	}
	undash := func(s string) string {
		if s == "-" {
			return ""
		}
		return s
	}
	at, err1 := strconv.ParseInt(f[1], 10, 64)
	qos, err2 := strconv.ParseUint(f[3], 10, 8)
	n, err3 := strconv.Atoi(f[5])
	seq, err4 := strconv.ParseUint(f[7], 10, 64)
	if errors.Join(err1, err2, err3, err4) != nil || qos > 2 || n < 0 || (f[4] != "0" && f[4] != "1") {
		return subMsg{}, bad
	}
	return subMsg{At: at, Topic: undash(f[2]), QoS: byte(qos), Retained: f[4] == "1", Len: n, ID: undash(f[6]),
		Seq: seq, State: undash(f[8]), BootID: undash(f[9]), TS: undash(f[10])}, nil
}

// wireBytes is the size of the MQTT 3.1.1 PUBLISH packet that carried m: fixed header,
// remaining length, topic, packet id (QoS 1 and 2) and payload.
func (m subMsg) wireBytes() int64 {
	rem := 2 + len(m.Topic) + m.Len
	if m.QoS > 0 {
		rem += 2
	}
	lenBytes := 1
	for r := rem; r >= 128; r >>= 7 {
		lenBytes++
	}
	return int64(1 + lenBytes + rem)
}

// subscriber is a running subscriber probe: an MQTT client (QoS 1) on the benchmark's broker.
type subscriber struct {
	p     *stationproc.Process
	stdin *os.File      // closing it ends the probe
	msgs  chan subMsg   // what it received, in order; closed when its output ends
	quit  chan struct{} // closed by close, so the reader never blocks on msgs
	err   error         // why the output ended early; set before msgs is closed
}

// subscribe starts a subscriber probe on filter and returns once the broker has acknowledged
// the subscription.
func (b *bench) subscribe(ctx context.Context, filter string) (*subscriber, error) {
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, errors.Join(err, outR.Close(), outW.Close())
	}
	cmd := b.probeCmd("sub", b.broker, filter)
	cmd.Stdout, cmd.Stdin = outW, inR
	p, err := b.startProc(b.uniqueID("sub"), cmd)
	// The child has its own copies of its ends.
	_ = outW.Close()
	_ = inR.Close()
	if err != nil {
		return nil, errors.Join(err, outR.Close(), inW.Close())
	}
	s := &subscriber{p: p, stdin: inW, msgs: make(chan subMsg, 1<<16), quit: make(chan struct{})}
	ready := make(chan error, 1)
	go s.read(outR, ready)
	t := time.NewTimer(15 * time.Second)
	defer t.Stop()
	select {
	case err = <-ready:
	case <-ctx.Done():
		err = ctx.Err()
	case <-t.C:
		err = errors.New("no subscription after 15s")
	}
	if err != nil {
		return nil, errors.Join(fmt.Errorf("subscriber: %w\n%s", err, p.Tail(5)), b.closeSub(s))
	}
	return s, nil
}

// read parses the probe's output: "ready", then one line per message.
func (s *subscriber) read(r *os.File, ready chan<- error) {
	defer r.Close()
	defer close(s.msgs)
	sc := bufio.NewScanner(r)
	if !sc.Scan() || sc.Text() != "ready" {
		s.err = errors.New("the subscriber probe did not subscribe")
		ready <- s.err
		return
	}
	ready <- nil
	for sc.Scan() {
		m, err := parseSubMsg(sc.Text())
		if err != nil {
			s.err = err
			return
		}
		select {
		case s.msgs <- m:
		case <-s.quit:
			return
		}
	}
	if err := sc.Err(); err != nil {
		s.err = err
	} else {
		s.err = errors.New("the subscriber probe ended")
	}
}

// next returns the next message, waiting at most timeout.
func (s *subscriber) next(ctx context.Context, timeout time.Duration) (subMsg, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case m, ok := <-s.msgs:
		if !ok {
			return subMsg{}, fmt.Errorf("subscriber: %w\n%s", s.err, s.p.Tail(5))
		}
		return m, nil
	case <-ctx.Done():
		return subMsg{}, ctx.Err()
	case <-t.C:
		return subMsg{}, fmt.Errorf("subscriber: nothing received for %v", timeout)
	}
}

// closeSub ends the subscriber probe: it disconnects and exits when its stdin closes.
func (b *bench) closeSub(s *subscriber) error {
	close(s.quit)
	_ = s.stdin.Close()
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-s.p.Done():
	case <-t.C: // stopProc terminates it
	}
	if err := b.stopProc(s.p); err != nil {
		return fmt.Errorf("subscriber: %w\n%s", err, s.p.Tail(5))
	}
	return nil
}

// pahoResult is what the publisher probe reports.
type pahoResult struct {
	First int64 `json:"first"` // CLOCK_MONOTONIC when the first publish was issued, ns
	Last  int64 `json:"last"`  // when the last PUBACK had come
	N     int   `json:"n"`
	// CPUus is the CPU time the publisher used from the first publish to the last PUBACK, µs.
	CPUus float64 `json:"cpu_us"`
}

// appendResult is what the append probe reports: latencies of a durable store.Append and of a
// bare bbolt Update of the same payload, interleaved.
type appendResult struct {
	N           int     `json:"n"`
	PayloadLen  int     `json:"payload_len"`
	AppendP50us float64 `json:"append_p50_us"`
	AppendP99us float64 `json:"append_p99_us"`
	BareP50us   float64 `json:"bare_p50_us"`
	BareP99us   float64 `json:"bare_p99_us"`
	// RatioP50 is the median of the per-pair ratios append/bare: the steadiest figure when
	// fsync times drift during the run.
	RatioP50 float64 `json:"ratio_p50"`
}

// runProbe runs a probe to its end and decodes the JSON object it prints last into v.
func (b *bench) runProbe(ctx context.Context, name string, timeout time.Duration, v any, args ...string) error {
	var out bytes.Buffer
	cmd := b.probeCmd(args...)
	cmd.Stdout = &out
	p, err := b.startProc(b.uniqueID(name), cmd)
	if err != nil {
		return err
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.Done():
	case <-ctx.Done():
		return errors.Join(ctx.Err(), b.stopProc(p))
	case <-t.C:
		return errors.Join(fmt.Errorf("%s probe took longer than %v", name, timeout), b.stopProc(p))
	}
	if err := b.stopProc(p); err != nil {
		return fmt.Errorf("%s probe: %w\n%s", name, err, p.Tail(5))
	}
	// Wait has returned: the copy into out is complete.
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), v); err != nil {
		return fmt.Errorf("%s probe output: %w", name, err)
	}
	return nil
}
