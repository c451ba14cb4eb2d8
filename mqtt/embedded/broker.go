// Package embedded runs an in-process MQTT broker (mochi-mqtt) for
// simulation, development and tests: `station run --broker embedded`.
//
// The broker listens on plain TCP, allows every client and topic (bind it
// to loopback), keeps retained messages and persistent sessions in memory
// and publishes QoS 0, 1 and 2. Nothing survives Close.
package embedded

import (
	"bytes"
	"fmt"
	"log/slog"
	"sync"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// sessionExpiry bounds how long the broker keeps the session (subscriptions
// and queued messages) of a client that went away, in seconds, so that
// memory stays bounded in a long-running process.
const sessionExpiry = 7 * 24 * 60 * 60

// Broker is a running embedded broker.
type Broker struct {
	srv  *mochi.Server
	addr string

	closeOnce sync.Once
}

// Start starts a broker listening on addr (host:port; port 0 picks a free
// port, see Addr). The listener is bound when Start returns. logger
// receives the broker's own log; nil means quiet.
func Start(addr string, logger *slog.Logger) (*Broker, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	// Change the defaults rather than fill a Capabilities from scratch: a
	// partial struct leaves MaximumQos at 0 and silently downgrades QoS.
	caps := mochi.NewDefaultServerCapabilities()
	caps.MaximumSessionExpiryInterval = sessionExpiry
	srv := mochi.New(&mochi.Options{
		Capabilities:           caps,
		Logger:                 logger,
		InlineClient:           false,
		SysTopicResendInterval: 60,
	})
	// The default hook set denies everyone.
	if err := srv.AddHook(new(allowHook), nil); err != nil {
		return nil, fmt.Errorf("embedded: add auth hook: %w", err)
	}
	if err := srv.AddHook(new(retainGuard), nil); err != nil {
		return nil, fmt.Errorf("embedded: add retain guard: %w", err)
	}
	tcp := listeners.NewTCP(listeners.Config{ID: "tcp", Address: addr})
	if err := srv.AddListener(tcp); err != nil { // binds now
		return nil, fmt.Errorf("embedded: listen on %s: %w", addr, err)
	}
	b := &Broker{srv: srv, addr: tcp.Address()}
	if err := srv.Serve(); err != nil {
		_ = b.Close()
		return nil, fmt.Errorf("embedded: serve: %w", err)
	}
	return b, nil
}

// Addr returns the host:port the broker listens on.
func (b *Broker) Addr() string { return b.addr }

// URL returns the broker URL for clients: "tcp://" + Addr().
func (b *Broker) URL() string { return "tcp://" + b.addr }

// Close disconnects all clients, releases the port and stops the broker.
// It waits for the client connections to end. Calling it again is a no-op.
func (b *Broker) Close() error {
	var err error
	b.closeOnce.Do(func() {
		err = b.srv.Close()
		if err != nil {
			err = fmt.Errorf("embedded: close: %w", err)
		}
	})
	return err
}

// allowHook lets every client connect and use every topic. It is mochi's
// auth.AllowHook: that package also holds the YAML/JSON ledger and would
// pull a YAML parser into the binary for nothing.
type allowHook struct {
	mochi.HookBase
}

// ID returns the hook's id.
func (h *allowHook) ID() string { return "allow-all-auth" }

// Provides reports the hook methods implemented.
func (h *allowHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mochi.OnConnectAuthenticate, mochi.OnACLCheck}, []byte{b})
}

// OnConnectAuthenticate allows every client.
func (h *allowHook) OnConnectAuthenticate(*mochi.Client, packets.Packet) bool { return true }

// OnACLCheck allows every topic, for reading and writing.
func (h *allowHook) OnACLCheck(*mochi.Client, string, bool) bool { return true }

// retainGuard keeps mochi from reading a retained-message index entry while another client
// writes it: mochi v2.7.9 scans the index for a new subscription without the locks that
// RetainMessage takes (mochi-mqtt/server issue 200; the race detector reports it when a station
// publishes its retained status while a client subscribes with a wildcard). It serialises the
// two: a subscription holds mu from OnSubscribe until the packet is processed (after the retained
// messages were sent), a retained publish or will from just before the message is retained until
// OnRetainMessage, which mochi calls right after. Both run on the client's goroutine.
type retainGuard struct {
	mochi.HookBase
	mu sync.Mutex
}

// ID returns the hook's id.
func (h *retainGuard) ID() string { return "retain-guard" }

// Provides reports the hook methods implemented.
func (h *retainGuard) Provides(b byte) bool {
	return bytes.Contains([]byte{mochi.OnSubscribe, mochi.OnPacketProcessed, mochi.OnPublish,
		mochi.OnWill, mochi.OnRetainMessage}, []byte{b})
}

// OnSubscribe takes the lock for the subscription's processing.
func (h *retainGuard) OnSubscribe(_ *mochi.Client, pk packets.Packet) packets.Packet {
	h.mu.Lock()
	return pk
}

// OnPacketProcessed releases the lock a subscription took.
func (h *retainGuard) OnPacketProcessed(_ *mochi.Client, pk packets.Packet, _ error) {
	if pk.FixedHeader.Type == packets.Subscribe {
		h.mu.Unlock()
	}
}

// OnPublish takes the lock for a retained publish; mochi retains it next and calls
// OnRetainMessage.
func (h *retainGuard) OnPublish(_ *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Retain {
		h.mu.Lock()
	}
	return pk, nil
}

// OnWill takes the lock for a retained will sent at once (MQTT 3.1.1 has no will delay).
func (h *retainGuard) OnWill(_ *mochi.Client, w mochi.Will) (mochi.Will, error) {
	if w.Retain && w.WillDelayInterval == 0 {
		h.mu.Lock()
	}
	return w, nil
}

// OnRetainMessage releases the lock a retained publish or will took.
func (h *retainGuard) OnRetainMessage(*mochi.Client, packets.Packet, int64) {
	h.mu.Unlock()
}
