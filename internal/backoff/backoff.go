// Package backoff is the one retry delay of the station: exponential with full jitter and a cap.
// Full jitter spreads a fleet that lost its broker (or a part) at the same moment over the whole
// interval instead of retrying in lockstep.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Delay returns the wait before the retry that follows failures consecutive failures (0 for the
// first retry): a uniformly random duration in [0, min(hi, lo·2^failures)), where r in [0,1) is
// the random draw. A draw outside [0,1) (a broken jitter source) counts as 0.5, so it neither
// stalls nor spins.
func Delay(failures int, lo, hi time.Duration, r float64) time.Duration {
	ceil := lo
	for i := 0; i < failures && ceil < hi; i++ {
		if ceil > hi/2 {
			ceil = hi
			break
		}
		ceil *= 2
	}
	if ceil > hi {
		ceil = hi
	}
	if r < 0 || r >= 1 || r != r {
		r = 0.5
	}
	return time.Duration(r * float64(ceil))
}

// Backoff counts consecutive failures and gives the next wait. The zero value is not usable: set
// Min and Max. It is not safe for concurrent use.
type Backoff struct {
	Min, Max time.Duration
	// Rand is the jitter source, a draw in [0,1); nil means math/rand/v2.
	Rand func() float64

	failures int
}

// Next returns the wait before the next attempt and counts a failure. The wait is at least 1ms,
// so a retry loop never spins.
func (b *Backoff) Next() time.Duration {
	r := rand.Float64
	if b.Rand != nil {
		r = b.Rand
	}
	d := Delay(b.failures, b.Min, b.Max, r())
	b.failures++
	return max(d, time.Millisecond)
}

// Reset forgets the failures: the next wait is short again.
func (b *Backoff) Reset() { b.failures = 0 }

// Failures returns the consecutive failures counted since the last Reset.
func (b *Backoff) Failures() int { return b.failures }
