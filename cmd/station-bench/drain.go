package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"station.dev/agent/agent/contract"
	"station.dev/agent/internal/stationproc"
	"station.dev/agent/store"
)

// fill appends n card records (cardRecord(source, 1…n)) to the events stream of a new store in
// dataDir, as the agent would have while offline. Concurrent appends share commits, which keeps
// the set-up short; the store is the agent's own format, opened with the agent's cap.
func fill(ctx context.Context, dataDir, source string, n int, maxBytes int64) error {
	if err := mkdir(dataDir); err != nil {
		return err
	}
	s, err := store.Open(filepath.Join(dataDir, "station.db"), &store.Options{MaxBytes: maxBytes})
	if err != nil {
		return err
	}
	const workers = 128 // two full commit groups of 64 waiting at any time
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, workers)
	build := func(seq uint64) ([]byte, error) { return cardRecord(source, seq), nil }
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				if ctx.Err() != nil {
					errs[w] = ctx.Err()
					return
				}
				if _, err := s.Append(store.Events, store.Normal, build); err != nil {
					errs[w] = err
					return
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errors.Join(errs...), s.Close())
}

// drainTime polls the agent's status every interval until its queue is empty, and returns the
// time from the connection of its link (Link.Since, stamped by the agent) to the first poll that
// found the queue empty: publishing, PUBACKs and the deletes. It also returns the CPU time the
// agent used from the first poll that found it connected to the end. A drain the link had to
// reconnect for is an error: the figure would mean something else.
func (a *agentProc) drainTime(ctx context.Context, interval, timeout time.Duration) (time.Duration, time.Duration, error) {
	deadline := time.Now().Add(timeout)
	t := time.NewTicker(interval)
	defer t.Stop()
	cpu0 := time.Duration(-1)
	for {
		var st contract.Status
		err := a.get(ctx, contract.PathStatus, &st)
		now := time.Now()
		connected := err == nil && st.Link != nil && st.Link.Connected
		if connected && cpu0 < 0 {
			if cpu0, err = readCPU(a.Pid()); err != nil {
				return 0, 0, err
			}
		}
		if connected && st.Queue.Depth == 0 {
			cpu1, err := readCPU(a.Pid())
			if err != nil {
				return 0, 0, err
			}
			since, err := time.Parse(time.RFC3339Nano, st.Link.Since)
			if err != nil {
				return 0, 0, fmt.Errorf("link since %q: %w", st.Link.Since, err)
			}
			if st.Link.Connects != 1 {
				return 0, 0, fmt.Errorf("the link connected %d times during the drain", st.Link.Connects)
			}
			return now.Sub(since), cpu1 - cpu0, nil
		}
		if a.Exited() {
			return 0, 0, fmt.Errorf("agent %s exited: %v\n%s", a.spec.id, a.Err(), a.Tail(5))
		}
		if now.After(deadline) {
			return 0, 0, fmt.Errorf("agent %s: queue not empty after %v (depth %d, err %v)", a.spec.id, timeout, st.Queue.Depth, err)
		}
		select {
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		case <-t.C:
		}
	}
}

// drainRound is the outcome of one drain, agent or paho.
type drainRound struct {
	rate      float64 // records per second
	cpuPerRec float64 // CPU time of the publishing process per record, µs
}

// drainPaho is one bare paho round: the publisher probe sends n records with at most 32
// awaiting their PUBACK; the rate is from its first publish to its last PUBACK.
func (b *bench) drainPaho(ctx context.Context, n int) (drainRound, error) {
	topic := contract.Topic(contract.DefaultTopicPrefix, b.uniqueID("paho"), contract.KindEvents)
	var res pahoResult
	if err := b.runProbe(ctx, "pub", 5*time.Minute, &res, "pub", b.broker, topic, "drain", fmt.Sprint(n), "32"); err != nil {
		return drainRound{}, err
	}
	if res.N != n || res.Last <= res.First {
		return drainRound{}, fmt.Errorf("publisher probe: bad result %+v", res)
	}
	return drainRound{rate: float64(n) / (float64(res.Last-res.First) / 1e9), cpuPerRec: res.CPUus / float64(n)}, nil
}

// drainAgent is one agent round: n records in a store, the agent started on it with the same
// window of 32, timed from its connection to its empty queue.
func (b *bench) drainAgent(ctx context.Context, n int) (drainRound, error) {
	id := b.uniqueID("drain")
	dataDir := filepath.Join(b.work, id+".data")
	t0 := time.Now()
	if err := fill(ctx, dataDir, "drain", n, 0); err != nil {
		return drainRound{}, err
	}
	b.progress("   filled %d records in %.1fs", n, time.Since(t0).Seconds())
	a, err := b.startAgent(agentSpec{id: id, broker: b.broker, dataDir: dataDir})
	if err != nil {
		return drainRound{}, err
	}
	d, cpu, err := a.drainTime(ctx, 10*time.Millisecond, 5*time.Minute)
	if err := errors.Join(err, b.stopAgent(a)); err != nil {
		return drainRound{}, err
	}
	// n+1: the agent's own station.boot record went out too.
	return drainRound{rate: float64(n+1) / d.Seconds(), cpuPerRec: float64(cpu.Microseconds()) / float64(n+1)}, nil
}

// drainVsPaho compares the agent draining a backlog with bare paho publishing the same payloads
// with the same window against the same broker, in alternating rounds.
func (b *bench) drainVsPaho(ctx context.Context) error {
	n := pick(b, 100000, 30000)
	rounds := pick(b, 5, 3)
	var agentRates, pahoRates, ratios, agentCPU, pahoCPU []float64
	for r := range rounds {
		var ar, pr drainRound
		var err error
		if r%2 == 0 {
			if pr, err = b.drainPaho(ctx, n); err == nil {
				ar, err = b.drainAgent(ctx, n)
			}
		} else {
			if ar, err = b.drainAgent(ctx, n); err == nil {
				pr, err = b.drainPaho(ctx, n)
			}
		}
		if err != nil {
			return err
		}
		b.progress("   round %d: agent %.0f/s (CPU %.1f µs/record), paho %.0f/s (CPU %.1f µs/record): ratio %.3f",
			r+1, ar.rate, ar.cpuPerRec, pr.rate, pr.cpuPerRec, ar.rate/pr.rate)
		agentRates = append(agentRates, ar.rate)
		pahoRates = append(pahoRates, pr.rate)
		ratios = append(ratios, ar.rate/pr.rate)
		agentCPU = append(agentCPU, ar.cpuPerRec)
		pahoCPU = append(pahoCPU, pr.cpuPerRec)
	}
	b.emit("drain_vs_paho_ratio", median(ratios), "x")
	b.emit("drain_rate_per_s", median(agentRates), "records/s")
	b.emit("paho_rate_per_s", median(pahoRates), "records/s")
	b.emit("drain_cpu_us_per_record", median(agentCPU), "µs")
	b.emit("paho_cpu_us_per_record", median(pahoCPU), "µs")
	return nil
}

// backlog fills a store with 1,000,000 records (100,000 with -quick), starts the agent on it
// and samples its resident memory until the queue is empty.
func (b *bench) backlog(ctx context.Context) (err error) {
	n := pick(b, 1_000_000, 100_000)
	name := pick(b, "1m", "100k")
	const maxBytes = 1 << 30 // the largest cap; 1M records of ~390 accounted bytes need it
	id := b.uniqueID("backlog")
	dataDir := filepath.Join(b.work, id+".data")
	t0 := time.Now()
	if err := fill(ctx, dataDir, "backlog", n, maxBytes); err != nil {
		return err
	}
	b.progress("   filled %d records in %.1fs", n, time.Since(t0).Seconds())
	a, err := b.startAgent(agentSpec{id: id, broker: b.broker, dataDir: dataDir, maxBytes: "1GiB"})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, b.stopAgent(a)) }()

	sampler := stationproc.SampleMemory(a.Pid(), 100*time.Millisecond)
	elapsed, _, werr := a.drainTime(ctx, 250*time.Millisecond, pick(b, 8*time.Minute, 90*time.Second))
	peak, samples, serr := sampler.Stop()
	if err := errors.Join(werr, serr); err != nil {
		return err
	}
	b.progress("   drained %d records in %.1fs (%.0f/s); %d samples; peak VmRSS %.1f MiB, RssAnon %.1f MiB, RssFile %.1f MiB (each its highest sample)",
		n, elapsed.Seconds(), float64(n)/elapsed.Seconds(), samples, mib(peak.RSS), mib(peak.Anon), mib(peak.File))
	b.emit("rss_backlog_"+name+"_mib", mib(peak.RSS), "MiB")
	b.emit("rss_backlog_"+name+"_anon_mib", mib(peak.Anon), "MiB")
	b.emit("drain_backlog_"+name+"_rate_per_s", float64(n)/elapsed.Seconds(), "records/s")
	return nil
}
