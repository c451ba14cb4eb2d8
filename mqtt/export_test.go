package mqtt

import "time"

// RetryDelay is Link.retryDelay for a link with the given backoff bounds
// and jitter draw.
func RetryDelay(failures int, outage, lo, hi time.Duration, r float64) time.Duration {
	l := &Link{cfg: Config{BackoffMin: lo, BackoffMax: hi}, rand: func() float64 { return r }}
	return l.retryDelay(failures, outage)
}
