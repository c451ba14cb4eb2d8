package agent

import (
	"encoding/binary"
	"sync"
	"time"

	"station.dev/agent/store"
)

// Trusted time (DESIGN §3.5). A station may boot with a clock at 1970 or anywhere else until NTP
// synchronises it, and expiry is what bounds the replay of a captured signed command. The
// trusted time is therefore the greatest of:
//
//   - the wall clock, while the kernel says it is synchronised;
//   - a persisted floor that never goes back: the build time, the last synchronised wall time
//     seen (saved at most every floorSaveEvery), and the newest issued_at of a verified command.
//
// A command that expired before the trusted time is refused, synchronised or not.
//
// The window that remains: while the clock is not synchronised, a captured command that has
// not expired by the floor can run once on a station that has never seen it (a new station, or
// one whose store was lost); a station that has seen it has it in its ledger until it expires.
// The floor may lag the real time by up to floorSaveEvery plus the time the station was off.

// floorKey is the store setting that keeps the floor.
const floorKey = "trusted_time_floor"

// floorSaveEvery bounds the writes of the floor from the synchronised wall clock.
const floorSaveEvery = 10 * time.Minute

type trustedTime struct {
	mu     sync.Mutex
	floor  time.Time
	saved  time.Time // the floor last written
	now    func() time.Time
	synced func() bool
	st     *store.Store
}

func newTrustedTime(st *store.Store, now func() time.Time, synced func() bool, build time.Time) (*trustedTime, error) {
	t := &trustedTime{now: now, synced: synced, st: st, floor: build.UTC()}
	v, err := st.GetSetting(floorKey)
	if err != nil {
		return nil, err
	}
	if len(v) == 8 {
		if f := time.Unix(0, int64(binary.BigEndian.Uint64(v))).UTC(); f.After(t.floor) {
			t.floor = f
		}
		t.saved = t.floor
	}
	return t, nil
}

// Now returns the trusted time and whether the wall clock is synchronised.
func (t *trustedTime) Now() (time.Time, bool) {
	wall, synced := t.now().UTC(), t.synced()
	t.mu.Lock()
	defer t.mu.Unlock()
	if synced && wall.After(t.floor) {
		t.floor = wall
	}
	return t.floor, synced
}

// Raise lifts the floor to at (the issued_at of a verified command) and saves it.
func (t *trustedTime) Raise(at time.Time) error {
	t.mu.Lock()
	if at.After(t.floor) {
		t.floor = at.UTC()
	}
	t.mu.Unlock()
	return t.save(true)
}

// Tick saves the floor from the synchronised wall clock, at most every floorSaveEvery.
func (t *trustedTime) Tick() error {
	t.Now()
	return t.save(false)
}

func (t *trustedTime) save(force bool) error {
	t.mu.Lock()
	f := t.floor
	due := f.After(t.saved) && (force || f.Sub(t.saved) >= floorSaveEvery)
	t.mu.Unlock()
	if !due {
		return nil
	}
	if err := t.st.PutSetting(floorKey, binary.BigEndian.AppendUint64(nil, uint64(f.UnixNano()))); err != nil {
		return err
	}
	t.mu.Lock()
	if f.After(t.saved) {
		t.saved = f
	}
	t.mu.Unlock()
	return nil
}
