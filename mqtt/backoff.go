package mqtt

import "time"

// backoff returns the wait before the connect attempt that follows
// failures consecutive failures (0 for the first retry): a uniformly random
// duration in [0, min(hi, lo·2^failures)) ("full jitter"), where r in [0,1)
// is the random draw. Full jitter spreads a fleet that lost its broker at
// the same moment over the whole interval instead of reconnecting in
// lockstep.
func backoff(failures int, lo, hi time.Duration, r float64) time.Duration {
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
	if r < 0 || r >= 1 || r != r { // a broken jitter source must not stall or spin
		r = 0.5
	}
	return time.Duration(r * float64(ceil))
}
