package agent

import (
	"sync"

	"station.dev/agent/agent/contract"
	"station.dev/agent/drivers/pn532"
)

// readerSlot holds the open card reader, or why there is none.
type readerSlot struct {
	mu      sync.Mutex
	r       Reader
	lastErr string
}

func (s *readerSlot) get() Reader {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.r
}

func (s *readerSlot) set(r Reader) {
	s.mu.Lock()
	s.r, s.lastErr = r, ""
	s.mu.Unlock()
}

// down forgets the reader: the reader loop opens it again.
func (s *readerSlot) down(err error) {
	s.mu.Lock()
	s.r, s.lastErr = nil, err.Error()
	s.mu.Unlock()
}

// readerHealth is the card reader's health for status, telemetry and self-test.
func (a *Agent) readerHealth() contract.ComponentHealth {
	if a.hw.Reader == nil {
		return contract.ComponentHealth{State: contract.HealthAbsent}
	}
	a.reader.mu.Lock()
	r, lastErr := a.reader.r, a.reader.lastErr
	a.reader.mu.Unlock()
	if r == nil {
		if lastErr == "" {
			lastErr = "starting"
		}
		return contract.ComponentHealth{State: contract.HealthDown, Detail: lastErr}
	}
	return pn532Health(r.Health())
}

func pn532Health(hl pn532.Health) contract.ComponentHealth {
	return contract.ComponentHealth{
		State: hl.State, Firmware: hl.Firmware, LastError: hl.LastError,
		Counters: map[string]uint64{"errors": hl.Errors, "timeouts": hl.Timeouts, "checksum": hl.Checksum, "resets": hl.Resets},
	}
}
