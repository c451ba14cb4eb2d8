package main

// The probe processes of station-bench. The benchmark builds this package's test binary
// (`go test -c`) and runs it with STATION_BENCH_PROBE set; TestMain then runs one probe
// instead of the tests:
//
//	sub URL FILTER                      subscribe (QoS 1), print "ready", then one line per message
//	pub URL TOPIC SOURCE N WINDOW        bare paho: publish cardRecord(SOURCE, 1…N) at QoS 1 with
//	                                    at most WINDOW unacknowledged, print a pahoResult
//	append DIR N                        N durable store.Append and N bare bbolt Updates of the
//	                                    same payload, interleaved, print an appendResult
//
// They live in a _test.go file because only store/ may import bbolt and only mqtt/ may import
// paho in the module's non-test code (cmd/station's TestDependencies checks it); a measurement
// of the bare libraries has to import them.

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"go.etcd.io/bbolt"

	"station.dev/agent/store"
)

func TestMain(m *testing.M) {
	if os.Getenv(probeEnv) != "" {
		if err := probeMain(os.Args[1:]); err != nil {
			fmt.Fprintln(os.Stderr, "station-bench probe:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func probeMain(args []string) error {
	if len(args) == 0 {
		return errors.New("no probe named")
	}
	atoi := func(s string) int {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			return 0
		}
		return n
	}
	switch {
	case args[0] == "sub" && len(args) == 3:
		return probeSub(args[1], args[2])
	case args[0] == "pub" && len(args) == 6 && atoi(args[4]) > 0 && atoi(args[5]) > 0:
		return probePub(args[1], args[2], args[3], atoi(args[4]), atoi(args[5]))
	case args[0] == "append" && len(args) == 3 && atoi(args[2]) > 0:
		return probeAppend(args[1], atoi(args[2]))
	}
	return fmt.Errorf("bad probe arguments %q", args)
}

func randomClientID(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + "-" + hex.EncodeToString(b[:])
}

// connect connects a paho client with the options of the agent's link (mqtt/link.go) that
// matter for throughput: MQTT 3.1.1, in-memory store, ordered handlers, no auto-reconnect.
func connect(url, clientID string, clean bool, onLost func(error)) (paho.Client, error) {
	o := paho.NewClientOptions().AddBroker(url).SetClientID(clientID).
		SetProtocolVersion(4).SetCleanSession(clean).SetAutoReconnect(false).SetConnectRetry(false).
		SetOrderMatters(true).SetStore(paho.NewMemoryStore()).SetConnectTimeout(10 * time.Second)
	if onLost != nil {
		o.SetConnectionLostHandler(func(_ paho.Client, err error) { onLost(err) })
	}
	c := paho.NewClient(o)
	tok := c.Connect()
	select {
	case <-tok.Done():
	case <-time.After(15 * time.Second):
		return nil, errors.New("connect: no CONNACK in 15s")
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return c, nil
}

// probeSub subscribes to filter and prints every message until its stdin ends.
func probeSub(url, filter string) error {
	lost := make(chan error, 1)
	c, err := connect(url, randomClientID("bench-sub"), true, func(err error) {
		select {
		case lost <- err:
		default:
		}
	})
	if err != nil {
		return err
	}
	defer c.Disconnect(100)
	lines := make(chan subMsg, 1<<16)
	tok := c.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) {
		at := monoNow()
		var f struct {
			ID     string `json:"id"`
			Seq    uint64 `json:"seq"`
			State  string `json:"state"`
			BootID string `json:"boot_id"`
			TS     string `json:"ts"`
		}
		_ = json.Unmarshal(m.Payload(), &f) // a payload that is not a record prints as "-"
		lines <- subMsg{At: at, Topic: m.Topic(), QoS: m.Qos(), Retained: m.Retained(), Len: len(m.Payload()), ID: f.ID, Seq: f.Seq,
			State: f.State, BootID: f.BootID, TS: f.TS}
	})
	select {
	case <-tok.Done():
	case <-time.After(15 * time.Second):
		return errors.New("subscribe: no SUBACK in 15s")
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	if st, ok := tok.(*paho.SubscribeToken); ok && st.Result()[filter] == 0x80 {
		return errors.New("subscribe: refused by the broker")
	}
	w := bufio.NewWriterSize(os.Stdout, 64<<10)
	if _, err := w.WriteString("ready\n"); err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		return err
	}
	eof := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(eof)
	}()
	for {
		select {
		case m := <-lines:
			if _, err := w.WriteString(formatSubMsg(m) + "\n"); err != nil {
				return err
			}
			if len(lines) == 0 {
				if err := w.Flush(); err != nil {
					return err
				}
			}
		case err := <-lost:
			return fmt.Errorf("connection lost: %w", err)
		case <-eof:
			return w.Flush()
		}
	}
}

// probePub is the bare paho baseline of the drain: n payloads at QoS 1, at most window
// awaiting their PUBACK, as mqtt's BenchmarkBarePaho does.
func probePub(url, topic, source string, n, window int) error {
	payloads := make([][]byte, n)
	for i := range payloads {
		payloads[i] = cardRecord(source, uint64(i+1))
	}
	c, err := connect(url, randomClientID("bench-pub"), false, nil)
	if err != nil {
		return err
	}
	defer c.Disconnect(250)
	ring := make([]paho.Token, window)
	// No timeout per token, as in BenchmarkBarePaho: a timer per publish would cost the
	// baseline CPU the agent does not spend. The benchmark kills a probe that hangs.
	wait := func(t paho.Token) error {
		if t == nil {
			return nil
		}
		<-t.Done()
		return t.Error()
	}
	cpu0, err := readCPU(os.Getpid())
	if err != nil {
		return err
	}
	first := monoNow()
	for i, p := range payloads {
		if err := wait(ring[i%window]); err != nil {
			return err
		}
		ring[i%window] = c.Publish(topic, 1, false, p)
	}
	for _, t := range ring {
		if err := wait(t); err != nil {
			return err
		}
	}
	last := monoNow()
	cpu1, err := readCPU(os.Getpid())
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(pahoResult{First: first, Last: last, N: n,
		CPUus: float64((cpu1 - cpu0).Microseconds())})
}

// probeAppend measures store.Append against a bare bbolt Update with one Put of the same
// payload, files in the same directory, alternating which goes first so that neither always
// follows the other's fsync.
func probeAppend(dir string, n int) error {
	s, err := store.Open(filepath.Join(dir, "station.db"), nil)
	if err != nil {
		return err
	}
	defer s.Close()
	db, err := bbolt.Open(filepath.Join(dir, "bare.db"), 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		return err
	}
	defer db.Close()
	bucket := []byte("bench")
	if err := db.Update(func(tx *bbolt.Tx) error { _, err := tx.CreateBucketIfNotExists(bucket); return err }); err != nil {
		return err
	}
	var payloadLen int
	appendOne := func() (time.Duration, error) {
		t0 := time.Now()
		rec, err := s.Append(store.Events, store.Normal, func(seq uint64) ([]byte, error) {
			return cardRecord("append", seq), nil
		})
		payloadLen = len(rec.Payload)
		return time.Since(t0), err
	}
	var key uint64
	bareOne := func() (time.Duration, error) {
		key++
		p := cardRecord("append", key)
		t0 := time.Now()
		err := db.Update(func(tx *bbolt.Tx) error {
			var k [8]byte
			binary.BigEndian.PutUint64(k[:], key)
			return tx.Bucket(bucket).Put(k[:], p)
		})
		return time.Since(t0), err
	}
	const warmup = 20
	var app, bare, ratio []float64
	for i := range n + warmup {
		var ta, tb time.Duration
		var errA, errB error
		if i%2 == 0 {
			ta, errA = appendOne()
			tb, errB = bareOne()
		} else {
			tb, errB = bareOne()
			ta, errA = appendOne()
		}
		if err := errors.Join(errA, errB); err != nil {
			return err
		}
		if i < warmup {
			continue
		}
		app = append(app, float64(ta.Nanoseconds())/1e3)
		bare = append(bare, float64(tb.Nanoseconds())/1e3)
		ratio = append(ratio, float64(ta)/float64(tb))
	}
	r := appendResult{N: n, PayloadLen: payloadLen,
		AppendP50us: percentile(app, 50), AppendP99us: percentile(app, 99),
		BareP50us: percentile(bare, 50), BareP99us: percentile(bare, 99),
		RatioP50: median(ratio)}
	return json.NewEncoder(os.Stdout).Encode(r)
}
