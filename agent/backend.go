package agent

import (
	"station.dev/agent/agent/contract"
	"station.dev/agent/agent/localapi"
)

// The agent is the local API's backend (localapi.Backend).
var _ localapi.Backend = (*Agent)(nil)

// Status is the full status for the local API: link and indicator included.
func (a *Agent) Status() contract.Status { return a.status(contract.StateOnline, "") }

// Recent returns up to n of the most recent records, oldest first.
func (a *Agent) Recent(n int) [][]byte { return a.recent.last(n) }

// Follow streams the records written from now on.
func (a *Agent) Follow() (<-chan []byte, func()) {
	ch := a.recent.follow()
	return ch, func() { a.recent.unfollow(ch) }
}

// SelfTest checks every component.
func (a *Agent) SelfTest() contract.SelfTest { return a.selfTest() }

func conflict(format string, args ...any) error {
	return localapi.Errorf(localapi.StatusConflict, format, args...)
}

func badRequest(format string, args ...any) error {
	return localapi.Errorf(localapi.StatusBadRequest, format, args...)
}
