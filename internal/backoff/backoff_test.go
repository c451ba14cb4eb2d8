package backoff

import (
	"math"
	"testing"
	"time"
)

func TestDelayIsCappedExponentialWithFullJitter(t *testing.T) {
	const lo, hi = time.Second, 2 * time.Minute
	for _, c := range []struct {
		failures int
		r        float64
		want     time.Duration
	}{
		{0, 0, 0}, // full jitter reaches down to zero
		{0, 0.5, 500 * time.Millisecond},
		{0, 0.999, 999 * time.Millisecond},
		{1, 0.5, time.Second},
		{3, 0.5, 4 * time.Second},
		{3, 0.25, 2 * time.Second},
		{6, 0.5, 32 * time.Second},
		{7, 0.5, 60 * time.Second}, // 128s capped at 2m
		{7, 0.999, 119880 * time.Millisecond},
		{1000, 0.5, 60 * time.Second}, // no overflow
	} {
		if got := Delay(c.failures, lo, hi, c.r); got != c.want {
			t.Errorf("Delay(%d, r=%v) = %v, want %v", c.failures, c.r, got, c.want)
		}
	}
	// A huge cap does not overflow either.
	if got := Delay(200, time.Nanosecond, math.MaxInt64, 0.5); got <= 0 {
		t.Errorf("Delay with a huge cap = %v", got)
	}
	// A broken jitter source neither stalls nor spins.
	for _, r := range []float64{math.NaN(), -1, 1, 7} {
		if got := Delay(0, lo, hi, r); got != 500*time.Millisecond {
			t.Errorf("Delay(r=%v) = %v, want the midpoint", r, got)
		}
	}
}

func TestBackoffGrowsAndResets(t *testing.T) {
	b := Backoff{Min: time.Second, Max: 8 * time.Second, Rand: func() float64 { return 0.5 }}
	var got []time.Duration
	for range 5 {
		got = append(got, b.Next())
	}
	want := []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("waits %v, want %v", got, want)
		}
	}
	if b.Failures() != 5 {
		t.Fatalf("Failures() = %d, want 5", b.Failures())
	}
	b.Reset()
	if d := b.Next(); d != 500*time.Millisecond {
		t.Fatalf("after Reset: %v, want 500ms", d)
	}
	zero := Backoff{Min: time.Second, Max: time.Second, Rand: func() float64 { return 0 }}
	if d := zero.Next(); d != time.Millisecond {
		t.Fatalf("a zero draw gives %v, want the 1ms floor", d)
	}
}
