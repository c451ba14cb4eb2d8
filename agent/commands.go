package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"runtime/debug"
	"sync/atomic"
	"time"

	"station.dev/agent/agent/command"
	"station.dev/agent/agent/contract"
	"station.dev/agent/mqtt"
	"station.dev/agent/store"
)

// Fleet commands (DESIGN §3.5). A command is stored in the inbox before the broker gets its
// PUBACK, executed in order by one worker, and answered through the outbox; the response and the
// ledger entry that stops a second execution are written in one transaction with the removal
// from the inbox, so a power cut at any point neither loses a command nor runs it twice.

// maxCommandBytes is the largest payload kept whole. A larger one is still read for its id so the
// sender learns why it was refused; past maxReadableCommand it is dropped and counted.
const maxReadableCommand = 4 << 20

// inboxItem is how a received message waits in the inbox.
type inboxItem struct {
	Topic    string    `json:"topic"`
	Payload  []byte    `json:"payload,omitempty"`
	Size     int       `json:"size"`
	ID       string    `json:"id,omitempty"` // for an oversize payload: the id it claims
	Received time.Time `json:"received"`
}

// commandState is the fleet command intake: the trusted keys, the worker's wake-up and counters.
type commandState struct {
	keys  *command.Keys
	wake  chan struct{}
	stats commandStats
}

// commandStats counts what happened to commands since start.
type commandStats struct {
	received, executed, refused, dropped atomic.Uint64
}

func (c *commandStats) snapshot() contract.CommandStats {
	return contract.CommandStats{Received: c.received.Load(), Executed: c.executed.Load(), Refused: c.refused.Load(), Dropped: c.dropped.Load()}
}

// onMessage runs on the link's receiver goroutine (off paho's receive path), one message at a
// time: store, acknowledge, wake the worker.
func (a *Agent) onMessage(m mqtt.Message) {
	a.cmds.stats.received.Add(1)
	item := inboxItem{Topic: m.Topic, Size: len(m.Payload), Received: a.clk.Now().UTC()}
	switch {
	case len(m.Payload) > maxReadableCommand:
		a.cmds.stats.dropped.Add(1)
		a.log.Warn("dropped a command too large to read", "topic", m.Topic, "bytes", len(m.Payload))
		m.Ack()
		return
	case len(m.Payload) > contract.MaxCommandBytes:
		if cmd, _, _ := command.Decode(m.Payload, a.cmds.keys); cmd != nil {
			item.ID = cmd.ID
		}
	default:
		item.Payload = m.Payload
	}
	b, err := json.Marshal(item)
	if err == nil {
		_, err = a.store.Append(store.Inbox, store.Critical, func(uint64) ([]byte, error) { return b, nil })
	}
	if err != nil {
		// Not acknowledged: the broker delivers it again after the next reconnect.
		a.log.Error("could not store a received command; it will be delivered again", "err", err)
		m.Nack() // the link reconnects: the broker delivers it again now, not days later
		return
	}
	m.Ack()
	select {
	case a.cmds.wake <- struct{}{}:
	default:
	}
}

// commandLoop executes stored commands in order.
func (a *Agent) commandLoop(ctx context.Context) error {
	beat := a.heartbeat("commands")
	for {
		beat()
		items, err := a.store.Read(store.Inbox, 0, 16)
		if err != nil {
			a.log.Error("reading the command inbox", "err", err)
		}
		for _, it := range items {
			if ctx.Err() != nil {
				return nil
			}
			a.handleInbox(ctx, it)
		}
		if len(items) > 0 && err == nil {
			continue
		}
		t := a.clk.NewTimer(commandPoll) // also retries after a store error
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-a.cmds.wake:
			t.Stop()
		case <-t.C():
		}
	}
}

// commandPoll is how often the command loop looks at the inbox without being woken.
const commandPoll = 10 * time.Second

// commandError is an error with a response code.
type commandError = contract.Error

func cmdErr(code, format string, args ...any) *commandError {
	return &commandError{Code: code, Message: fmt.Sprintf(format, args...)}
}

func (a *Agent) handleInbox(ctx context.Context, rec store.Record) {
	var item inboxItem
	if err := json.Unmarshal(rec.Payload, &item); err != nil {
		a.log.Error("unreadable inbox entry dropped", "seq", rec.Seq, "err", err)
		_ = a.store.Delete(store.Inbox, rec.Seq)
		return
	}
	var (
		cmd   *contract.Command
		inner []byte
		cerr  *commandError
	)
	if item.Payload == nil {
		cmd = &contract.Command{ID: item.ID}
		cerr = cmdErr(contract.CodeBadRequest, "command of %d bytes: the limit is %d", item.Size, contract.MaxCommandBytes)
	} else {
		cmd, inner, cerr = command.Decode(item.Payload, a.cmds.keys)
	}
	if cmd == nil || cmd.ID == "" {
		a.cmds.stats.dropped.Add(1)
		reason := "no id"
		if cerr != nil {
			reason = cerr.Message
		}
		a.log.Warn("dropped a command without a readable id", "topic", item.Topic, "reason", reason)
		_ = a.store.Delete(store.Inbox, rec.Seq)
		return
	}
	if inner == nil {
		inner = item.Payload
	}
	digest := sha256.Sum256(inner)

	if prev, err := a.store.Ledger(cmd.ID); err != nil {
		a.log.Error("reading the command ledger", "err", err)
	} else if prev != nil {
		if string(prev.Digest) == string(digest[:]) {
			// A redelivery: the same answer again, not a second execution.
			a.respondRaw(rec.Seq, *prev)
			return
		}
		cerr = cmdErr(contract.CodeReplayed, "command id %s was already used for another command", cmd.ID)
	}

	resp := contract.Response{ID: cmd.ID}
	var after func()
	if cerr == nil {
		var result any
		result, after, cerr = a.execute(ctx, cmd)
		if cerr == nil {
			b, err := json.Marshal(result)
			if err != nil {
				cerr = cmdErr(contract.CodeFailed, "result: %v", err)
			} else {
				resp.OK, resp.Result = true, b
			}
		}
	}
	if cerr != nil {
		resp.Error = cerr
		a.cmds.stats.refused.Add(1)
		a.log.Info("command refused", "id", cmd.ID, "name", cmd.Name, "code", cerr.Code, "reason", cerr.Message)
	} else {
		a.cmds.stats.executed.Add(1)
		a.log.Info("command executed", "id", cmd.ID, "name", cmd.Name)
	}
	resp.TS = rfc3339(a.clk.Now())
	entry := store.LedgerEntry{ID: cmd.ID, Digest: digest[:], At: a.clk.Now()}
	if _, err := a.store.Respond(rec.Seq, entry, func(uint64) ([]byte, error) { return json.Marshal(resp) }); err != nil {
		a.log.Error("storing a command response", "id", cmd.ID, "err", err)
		return
	}
	if after != nil {
		after() // restart, reboot: only once the response is durable
	}
}

// respondRaw sends a stored response again.
func (a *Agent) respondRaw(inboxSeq uint64, prev store.LedgerEntry) {
	if _, err := a.store.Respond(inboxSeq, prev, func(uint64) ([]byte, error) { return prev.Response, nil }); err != nil {
		a.log.Error("re-sending a command response", "id", prev.ID, "err", err)
	}
	a.log.Info("command already executed: response sent again", "id", prev.ID)
}

// execute checks target and expiry, then runs the handler. A panic becomes a failed response.
func (a *Agent) execute(ctx context.Context, cmd *contract.Command) (result any, after func(), cerr *commandError) {
	if !cmd.For(a.cfg.StationID) {
		return nil, nil, cmdErr(contract.CodeWrongTarget, "command for %q reached station %q", cmd.Target, a.cfg.StationID)
	}
	if a.synced() {
		expired, err := cmd.Expired(a.clk.Now())
		if err != nil {
			return nil, nil, cmdErr(contract.CodeBadRequest, "expires_at: %v", err)
		}
		if expired {
			return nil, nil, cmdErr(contract.CodeExpired, "expired at %s", cmd.ExpiresAt)
		}
	}
	h, ok := a.handlers()[cmd.Name]
	if !ok {
		return nil, nil, cmdErr(contract.CodeUnknownCommand, "no command %q", cmd.Name)
	}
	defer func() {
		if p := recover(); p != nil {
			a.log.Error("command handler panicked", "name", cmd.Name, "panic", p, "stack", string(debug.Stack()))
			result, after, cerr = nil, nil, cmdErr(contract.CodeFailed, "internal error in %s", cmd.Name)
		}
	}()
	args := cmd.Args
	if len(args) == 0 {
		args = json.RawMessage("{}")
	}
	return h(ctx, args)
}

// handler runs one command. It returns the result, an optional action to run once the response
// is durable, or an error with its code.
type handler func(ctx context.Context, args json.RawMessage) (any, func(), *commandError)

// decodeArgs reads a command's args strictly into v.
func decodeArgs(args json.RawMessage, v any) *commandError {
	dec := json.NewDecoder(bytes.NewReader(args))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return cmdErr(contract.CodeBadRequest, "args: %v", err)
	}
	return nil
}
