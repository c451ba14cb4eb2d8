package agent

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"station.dev/agent/store"
)

// TestStoreUnavailableEndsRun: once the store says its file cannot be used any more (a failing
// disk), Run ends with that error, for systemd to restart the process; other store errors (a
// full store, a refused record) do not end it.
func TestStoreUnavailableEndsRun(t *testing.T) {
	h := startHarness(t, harnessOpts{})
	h.a.storeFailed(fmt.Errorf("store: append events: %w", store.ErrFull))
	select {
	case <-h.ended:
		t.Fatal("Run ended on a full store")
	default:
	}
	h.a.storeFailed(fmt.Errorf("store: read: %w", store.ErrUnavailable))
	<-h.ended
	err := h.stop()
	if !errors.Is(err, store.ErrUnavailable) || !strings.Contains(err.Error(), "unavailable") {
		t.Fatalf("Run returned %v, want the store's ErrUnavailable", err)
	}
}
