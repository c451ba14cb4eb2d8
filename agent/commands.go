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
	"station.dev/agent/internal/backoff"
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
	keys  atomic.Pointer[command.Keys]
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
	if m.Retained {
		// A command left retained on a command topic would run again for every new
		// subscription (each reconnect with a clean session, each new station): never run it.
		a.cmds.stats.dropped.Add(1)
		a.hostile.Warn("ignored a retained command: commands must be published without retain", "topic", m.Topic)
		m.Ack()
		return
	}
	item := inboxItem{Topic: m.Topic, Size: len(m.Payload), Received: a.clk.Now().UTC()}
	switch {
	case len(m.Payload) > maxReadableCommand:
		a.cmds.stats.dropped.Add(1)
		a.hostile.Warn("dropped a command too large to read", "topic", m.Topic, "bytes", len(m.Payload))
		m.Ack()
		return
	case len(m.Payload) > contract.MaxCommandBytes:
		if cmd, _, _ := command.Decode(m.Payload, a.keys()); cmd != nil {
			item.ID = cmd.ID
		}
	default:
		item.Payload = m.Payload
	}
	b, err := json.Marshal(item)
	if err == nil && !a.inboxHasRoom(len(b)) {
		a.cmds.stats.dropped.Add(1)
		a.hostile.Warn("dropped a command: the command inbox is full", "topic", m.Topic, "bytes", len(m.Payload))
		m.Ack()
		return
	}
	if err == nil {
		_, err = a.store.Append(store.Inbox, store.Critical, func(uint64) ([]byte, error) { return b, nil })
	}
	if err != nil {
		// Not acknowledged: the broker delivers it again after the next reconnect.
		a.hostile.Warn("could not store a received command; it will be delivered again", "err", err)
		m.Nack() // the link reconnects: the broker delivers it again now, not days later
		return
	}
	m.Ack()
	select {
	case a.cmds.wake <- struct{}{}:
	default:
	}
}

// The command inbox has its own budget, far below the store's: a flood of commands waits in
// the broker or is dropped, and never fills the room card records need.
const (
	maxInboxMessages = 256
	maxInboxBytes    = 1 << 20
)

// inboxHasRoom reports whether a message of n bytes fits in the inbox's budget.
func (a *Agent) inboxHasRoom(n int) bool {
	st, err := a.store.Stats()
	if err != nil {
		return true // the append reports the store's trouble
	}
	in := st.Streams[store.Inbox]
	return in.Depth < maxInboxMessages && in.Bytes+int64(n)+store.RecordOverhead <= maxInboxBytes
}

// commandLoop executes stored commands in order. An entry it cannot get out of the inbox (the
// store failing) makes it back off, so no message makes it spin.
func (a *Agent) commandLoop(ctx context.Context) error {
	beat := a.heartbeat("commands")
	bo := backoff.Backoff{Min: time.Second, Max: 5 * time.Minute}
	for {
		beat()
		if err := a.trust.Tick(); err != nil {
			a.log.Error("saving the trusted time floor", "err", err)
		}
		items, err := a.store.Read(store.Inbox, 0, 16)
		if err != nil {
			a.log.Error("reading the command inbox", "err", err)
		}
		stuck := err != nil
		for _, it := range items {
			if ctx.Err() != nil {
				return nil
			}
			if !a.handleInbox(ctx, it) {
				stuck = true
				break
			}
		}
		wait := commandPoll
		switch {
		case stuck:
			wait = bo.Next()
		case len(items) > 0:
			bo.Reset()
			continue
		default:
			bo.Reset()
		}
		t := a.clk.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-a.cmds.wake:
			t.Stop()
			if stuck {
				// Woken by a new message while backing off: keep the back-off, unless it
				// was short.
				t2 := a.clk.NewTimer(min(wait, time.Second))
				select {
				case <-ctx.Done():
					t2.Stop()
					return nil
				case <-t2.C():
				}
			}
		case <-t.C():
		}
	}
}

// commandPoll is how often the command loop looks at the inbox without being woken.
const commandPoll = 10 * time.Second

// maxResponseBytes is the budget of a response's payload. A result that does not fit becomes a
// short failed response; logs.tail cuts its lines to fit and says so.
const maxResponseBytes = 32 << 10

// commandError is an error with a response code.
type commandError = contract.Error

func cmdErr(code, format string, args ...any) *commandError {
	return &commandError{Code: code, Message: fmt.Sprintf(format, args...)}
}

// readOnly are the commands without side effects: they need no mark before they run.
var readOnly = map[string]bool{"ping": true, "status": true, "queue.stats": true, "config.get": true, "selftest": true, "logs.tail": true}

// handleInbox answers one inbox entry and removes it from the inbox. It returns false only when
// the entry could not be removed (the store failing): the caller backs off.
//
// What enters the ledger: only executed commands. A refused command is answered without a
// ledger entry, so refused junk can never push an executed command out; an executed command
// that was verified (signed, with keys configured) is kept in the ledger until it expires by the
// trusted time. A command with side effects is marked started in the ledger before it runs:
// after a crash it is answered failed ("interrupted"), never run again.
func (a *Agent) handleInbox(ctx context.Context, rec store.Record) bool {
	var item inboxItem
	if err := json.Unmarshal(rec.Payload, &item); err != nil {
		a.hostile.Warn("unreadable inbox entry dropped", "seq", rec.Seq, "err", err)
		return a.dropInbox(rec.Seq)
	}
	var (
		cmd   *contract.Command
		inner []byte
		cerr  *commandError
	)
	if item.Payload == nil {
		cmd = idOnly(item.ID)
		cerr = cmdErr(contract.CodeBadRequest, "command of %d bytes: the limit is %d", item.Size, contract.MaxCommandBytes)
	} else {
		cmd, inner, cerr = command.Decode(item.Payload, a.keys())
	}
	if cmd == nil || cmd.ID == "" {
		a.cmds.stats.dropped.Add(1)
		reason := "no id"
		if cerr != nil {
			reason = cerr.Message
		}
		a.hostile.Warn("dropped a command without a readable id", "topic", item.Topic, "reason", reason)
		return a.dropInbox(rec.Seq)
	}
	if inner == nil {
		inner = item.Payload
	}
	digest := sha256.Sum256(inner)
	verified := cerr == nil && a.keys().Len() > 0

	if cerr == nil {
		if prev, err := a.store.Ledger(cmd.ID); err != nil {
			a.log.Error("reading the command ledger", "err", err)
			return false
		} else if prev != nil {
			if string(prev.Digest) == string(digest[:]) {
				// A redelivery (or a command interrupted by a crash): the stored answer again,
				// not a second execution.
				return a.answer(rec.Seq, cmd, prev.Response, "command already executed: response sent again")
			}
			cerr = cmdErr(contract.CodeReplayed, "command id %s was already used for another command", cmd.ID)
		}
	}
	var keep time.Time
	if cerr == nil {
		keep, cerr = a.admit(cmd, verified)
	}
	resp := contract.Response{ID: cmd.ID}
	if cerr != nil {
		resp.Error = cerr
		a.cmds.stats.refused.Add(1)
		a.hostile.Info("command refused", "id", cmd.ID, "name", cmd.Name, "code", cerr.Code, "reason", cerr.Message)
		resp.TS = rfc3339(a.clk.Now())
		b, err := json.Marshal(resp)
		if err != nil {
			b = shortFailure(cmd.ID, a.clk.Now(), "response: "+err.Error())
		}
		return a.answer(rec.Seq, cmd, b, "")
	}

	now, _ := a.trust.Now()
	entry := store.LedgerEntry{ID: cmd.ID, Digest: digest[:], At: now, Keep: keep}
	if !readOnly[cmd.Name] {
		mark := entry
		mark.Response = shortFailure(cmd.ID, a.clk.Now(), "interrupted: the station stopped while running "+cmd.Name+"; check its state before sending it again with a new id")
		if err := a.store.MarkStarted(mark); err != nil {
			a.log.Error("marking a command started; it is not run", "id", cmd.ID, "err", err)
			return false
		}
	}
	result, after, xerr := a.execute(ctx, cmd)
	if xerr != nil {
		resp.Error = xerr
		a.cmds.stats.refused.Add(1)
		a.log.Info("command failed", "id", cmd.ID, "name", cmd.Name, "code", xerr.Code, "reason", xerr.Message)
	} else {
		b, err := json.Marshal(result)
		if err != nil {
			resp.Error = cmdErr(contract.CodeFailed, "result: %v", err)
		} else {
			resp.OK, resp.Result = true, b
		}
		a.cmds.stats.executed.Add(1)
		a.log.Info("command executed", "id", cmd.ID, "name", cmd.Name)
	}
	resp.TS = rfc3339(a.clk.Now())
	payload, err := json.Marshal(resp)
	if err != nil || len(payload) > maxResponseBytes {
		payload = shortFailure(cmd.ID, a.clk.Now(), fmt.Sprintf("the response of %d bytes is larger than the %d a station sends", len(payload), maxResponseBytes))
		after = nil
	}
	if _, err := a.store.Respond(rec.Seq, entry, func(uint64) ([]byte, error) { return payload, nil }); err != nil {
		a.log.Error("storing a command response", "id", cmd.ID, "err", err)
		short := shortFailure(cmd.ID, a.clk.Now(), "the response could not be stored")
		if _, err := a.store.Respond(rec.Seq, entry, func(uint64) ([]byte, error) { return short, nil }); err != nil {
			a.log.Error("storing a short failed response", "id", cmd.ID, "err", err)
			return false // the started mark answers it after the store recovers
		}
		return true
	}
	if after != nil {
		after() // restart, reboot: only once the response is durable
	}
	return true
}

// admit checks what Decode cannot: the target, the expiry by the trusted time and, for a
// verified command, its lifetime. It returns how long the command's ledger entry must be kept
// (zero for one that was not verified) and raises the trusted time to a verified command's
// issued_at.
func (a *Agent) admit(cmd *contract.Command, verified bool) (keep time.Time, cerr *commandError) {
	if !cmd.For(a.cfg.StationID) {
		return keep, cmdErr(contract.CodeWrongTarget, "command for %q reached station %q", cmd.Target, a.cfg.StationID)
	}
	var issued, expires time.Time
	if cmd.IssuedAt != "" {
		issued, _ = time.Parse(time.RFC3339Nano, cmd.IssuedAt) // checked by Decode
	}
	if cmd.ExpiresAt != "" {
		expires, _ = time.Parse(time.RFC3339Nano, cmd.ExpiresAt)
	}
	if verified {
		if max := a.cfg.Commands.MaxLifetime.D(); expires.Sub(issued) > max {
			return keep, cmdErr(contract.CodeBadRequest, "expires_at is %s after issued_at: the limit is %s ([commands] max_lifetime)", expires.Sub(issued), max)
		}
		if err := a.trust.Raise(issued); err != nil {
			a.log.Error("saving the trusted time floor", "err", err)
		}
		keep = expires
	}
	if !expires.IsZero() {
		now, synced := a.trust.Now()
		if !now.Before(expires) {
			how := "by the station's clock"
			if !synced {
				how = "by the station's trusted time (its clock is not synchronised)"
			}
			return time.Time{}, cmdErr(contract.CodeExpired, "expired at %s %s", cmd.ExpiresAt, how)
		}
	}
	return keep, nil
}

// answer stores a response that is not an execution (a refusal, or a stored response sent
// again) and removes the inbox entry; the ledger is left alone. A payload the store refuses is
// replaced by a short failed response.
func (a *Agent) answer(inboxSeq uint64, cmd *contract.Command, payload []byte, note string) bool {
	if len(payload) > maxResponseBytes {
		payload = shortFailure(cmd.ID, a.clk.Now(), "the response is too large")
	}
	if _, err := a.store.Answer(inboxSeq, func(uint64) ([]byte, error) { return payload, nil }); err != nil {
		short := shortFailure(cmd.ID, a.clk.Now(), "the response could not be stored")
		if _, err2 := a.store.Answer(inboxSeq, func(uint64) ([]byte, error) { return short, nil }); err2 != nil {
			a.log.Error("storing a command response", "id", cmd.ID, "err", err)
			return false
		}
	}
	if note != "" {
		a.hostile.Info(note, "id", cmd.ID)
	}
	return true
}

// dropInbox removes an inbox entry that gets no response.
func (a *Agent) dropInbox(seq uint64) bool {
	if err := a.store.DropInbox(seq); err != nil {
		a.log.Error("removing an inbox entry", "seq", seq, "err", err)
		return false
	}
	return true
}

// shortFailure is a failed response small enough to store whatever went wrong with the real one.
func shortFailure(id string, now time.Time, msg string) []byte {
	b, _ := json.Marshal(contract.Response{ID: id, Error: &commandError{Code: contract.CodeFailed, Message: msg}, TS: rfc3339(now)})
	return b
}

func idOnly(id string) *contract.Command {
	if !command.ValidID(id) {
		return nil
	}
	return &contract.Command{ID: id}
}

// keys returns the fleet command keys in force.
func (a *Agent) keys() *command.Keys { return a.cmds.keys.Load() }

// execute runs the handler. A panic becomes a failed response.
func (a *Agent) execute(ctx context.Context, cmd *contract.Command) (result any, after func(), cerr *commandError) {
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
