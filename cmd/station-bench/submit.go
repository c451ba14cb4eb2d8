package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"station.dev/agent/agent/contract"
)

// submit measures what a kiosk application sees: the latency of POST /api/v0/records (one
// record, keyed, answered once committed and fsynced) and of records:batch with 100 records,
// against store_append_p50_ms (the bare store append of the append phase).
func (b *bench) submit(ctx context.Context) (err error) {
	singles := pick(b, 400, 150)
	batches := pick(b, 40, 15)
	id := b.uniqueID("submit")
	a, err := b.startAgent(agentSpec{id: id, broker: b.broker, unlimited: true})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, b.stopAgent(a)) }()
	if err := a.waitReady(ctx, 15*time.Second); err != nil {
		return err
	}
	// A receipt of about 300 bytes of data, like a kiosk's.
	data := map[string]any{"amount": "12.50", "service": "subsidy.confirm", "counter": "3",
		"citizen_ref": "R/1234", "lines": []any{map[string]any{"sku": "A1", "qty": 2, "price": "6.25"}}}
	post := func(path, key string, body []byte) error {
		req, err := http.NewRequestWithContext(ctx, "POST", "http://station"+path, bytes.NewReader(body))
		if err != nil {
			return err
		}
		if key != "" {
			req.Header.Set(contract.HeaderIdempotencyKey, key)
		}
		resp, err := a.http.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		out, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("%s: %d %s", path, resp.StatusCode, out)
		}
		return err
	}
	single, err := json.Marshal(map[string]any{"type": "kiosk.receipt", "data": data})
	if err != nil {
		return err
	}
	var one []float64
	for i := range singles {
		t0 := time.Now()
		if err := post(contract.PathRecords, fmt.Sprintf("bench-%d", i), single); err != nil {
			return err
		}
		one = append(one, ms(time.Since(t0)))
	}
	var batch []float64
	for j := range batches {
		var body bytes.Buffer
		for i := range contract.MaxBatchRecords {
			line, err := json.Marshal(map[string]any{"key": fmt.Sprintf("bench-b%d-%d", j, i),
				"type": "kiosk.receipt.line", "data": data})
			if err != nil {
				return err
			}
			body.Write(append(line, '\n'))
		}
		t0 := time.Now()
		if err := post(contract.PathRecordsBatch, "", body.Bytes()); err != nil {
			return err
		}
		batch = append(batch, ms(time.Since(t0)))
	}
	p50 := percentile(one, 50)
	b.emit("submit_p50_ms", p50, "ms")
	b.emit("submit_p99_ms", percentile(one, 99), "ms")
	b.emit("submit_batch100_p50_ms", percentile(batch, 50), "ms")
	b.emit("submit_batch100_p99_ms", percentile(batch, 99), "ms")
	b.emit("submit_batch100_per_record_p50_ms", percentile(batch, 50)/contract.MaxBatchRecords, "ms")
	if b.appendP50ms > 0 {
		b.emit("submit_vs_store_append_ratio", p50/b.appendP50ms, "x")
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
