package main

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strings"
	"time"

	fleetcmd "station.dev/agent/agent/command"
	"station.dev/agent/agent/contract"
	"station.dev/agent/internal/release"
	"station.dev/agent/mqtt/operator"
)

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(s string) error { *l = append(*l, s); return nil }

// Defaults of fleet update.
const (
	defaultUpdateTimeout = 30 * time.Minute
	publishWindow        = 16 // chunk publishes in flight
)

// fleetUpdate publishes a release's artifact where stations fetch it and sends them the signed
// update command; with --wait it follows each station until its update is committed, rolled back
// or failed.
func fleetUpdate(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fleet update", flag.ContinueOnError)
	var f brokerFlags
	f.register(fs)
	relFile := fs.String("release", "", "the signed release `file` (from fleet release)")
	artifact := fs.String("artifact", "", "the artifact `file` the release describes")
	var stations stringList
	fs.Var(&stations, "station", "update this station `id` (repeatable)")
	all := fs.Bool("all", false, "update every station that has a status on the broker")
	percent := fs.Float64("percent", 0, "update this `share` (1 to 100) of the stations, the same ones for the same release")
	keyFile := fs.String("key", "", "sign the command with this Ed25519 private key `file` (the command key)")
	allowDowngrade := fs.Bool("allow-downgrade", false, "let stations install an older version")
	chunk := fs.Int("chunk-size", contract.DefaultChunkSize, "artifact chunk `bytes`")
	expires := fs.Duration("expires", time.Hour, "the command expires this long after it is sent")
	wait := fs.Bool("wait", false, "follow every targeted station until committed, rolled back or failed; exit 0 only if all committed")
	timeout := fs.Duration("timeout", defaultUpdateTimeout, "with --wait: give up after this long")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("unexpected argument %q", pos[0])
	}
	if *relFile == "" || *artifact == "" {
		return usagef("--release and --artifact are required")
	}
	modes := 0
	for _, on := range []bool{len(stations) > 0, *all, *percent != 0} {
		if on {
			modes++
		}
	}
	if modes != 1 {
		return usagef("name the stations: --station ID (repeatable), --all or --percent N")
	}
	if *percent < 0 || *percent > 100 {
		return usagef("--percent: 1 to 100")
	}
	if *chunk <= 0 || *chunk > contract.MaxChunkSize {
		return usagef("--chunk-size: 1 to %d", contract.MaxChunkSize)
	}
	for _, id := range stations {
		if !contract.ValidStationID(id) {
			return usagef("%q is not a station id", id)
		}
	}
	rel, m, err := readRelease(*relFile)
	if err != nil {
		return err
	}
	sum, size, err := release.FileDigest(*artifact)
	if err != nil {
		return fmt.Errorf("artifact: %w", err)
	}
	if sum != m.SHA256 || size != m.Size {
		return fmt.Errorf("artifact %s is not the one release %s describes (sha256 or size differ): pass the right --artifact", *artifact, *relFile)
	}
	var priv ed25519.PrivateKey
	if *keyFile != "" {
		if priv, err = readSigningKey(*keyFile); err != nil {
			return err
		}
	}

	ctx, stop := signalContext()
	defer stop()
	c, prefix, err := f.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()

	targets := []string(stations)
	if len(targets) == 0 {
		list, err := c.ListStatus(ctx, prefix, 0)
		if err != nil {
			return errors.New(trimPkg(err))
		}
		for _, s := range list {
			targets = append(targets, s.ID)
		}
		if *percent != 0 {
			targets = stage(targets, m.SHA256, *percent)
		}
		if len(targets) == 0 {
			return errors.New("no station to update: none has a status on the broker (station fleet ls)")
		}
	}

	start := time.Now()
	src, sent, err := publishArtifact(ctx, c, prefix, *artifact, m, *chunk)
	if err != nil {
		return errors.New(trimPkg(err))
	}
	if !f.json {
		fmt.Fprintf(stderr, "published %s (%d bytes, %d chunks) on %s in %s\n", m.Version, m.Size, (m.Size+int64(*chunk)-1)/int64(*chunk), src.Topic, time.Since(start).Round(time.Millisecond))
	}
	argBytes, _ := json.Marshal(contract.UpdateArgs{Release: rel, Source: src, AllowDowngrade: *allowDowngrade})

	// One command id for every station: each station keeps its own ledger, and the responses
	// are told apart by the topic they come on.
	cmdID := fleetcmd.NewID()
	var watch *updateWatch
	wctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if *wait {
		watch = newUpdateWatch(targets, m.Version, cmdID)
		unsub, err := watch.start(wctx, c, prefix)
		if err != nil {
			return errors.New(trimPkg(err))
		}
		defer unsub()
	}
	for _, id := range targets {
		now := time.Now().UTC()
		cmd := contract.Command{ID: cmdID, Name: contract.CommandUpdate, Target: id, Args: argBytes,
			IssuedAt: now.Format(time.RFC3339Nano), ExpiresAt: now.Add(*expires).Format(time.RFC3339Nano)}
		payload, _ := json.Marshal(cmd)
		if priv != nil {
			if payload, err = fleetcmd.Sign(priv, fleetcmd.KeyID(priv.Public().(ed25519.PublicKey)), payload); err != nil {
				return errors.New(trimPkg(err))
			}
		}
		if err := c.Send(ctx, prefix, id, payload); err != nil {
			return errors.New(trimPkg(err))
		}
		if !f.json {
			fmt.Fprintf(stderr, "sent update %s to %s, command id %s\n", m.Version, id, cmd.ID)
		}
	}
	if watch == nil {
		if f.json {
			return printJSON(stdout, map[string]any{"version": m.Version, "topic": src.Topic, "command_id": cmdID, "stations": targets, "bytes_published": sent})
		}
		return nil
	}
	if err := watch.run(wctx, c.Lost(), stdout, f.json, start); err != nil {
		if ctx.Err() != nil {
			return errors.New("interrupted")
		}
		return err
	}
	return nil
}

// stage picks the share pct of ids: those whose hash with the release's digest is lowest, so the
// same release reaches the same stations first and a larger share adds stations to them.
func stage(ids []string, salt string, pct float64) []string {
	h := func(id string) string { s := sha256.Sum256([]byte(salt + "/" + id)); return hex.EncodeToString(s[:]) }
	sort.Slice(ids, func(i, j int) bool { return h(ids[i]) < h(ids[j]) })
	n := int(math.Ceil(float64(len(ids)) * pct / 100))
	out := append([]string(nil), ids[:n]...)
	sort.Strings(out)
	return out
}

// publishArtifact publishes the index and the chunks retained under the artifact's topic base.
// It returns the source for the command and the payload bytes published.
func publishArtifact(ctx context.Context, c *operator.Client, prefix, path string, m *contract.Manifest, chunkSize int) (*contract.UpdateSource, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	base := contract.UpdateTopicBase(prefix, m.SHA256)
	chunks := int((m.Size + int64(chunkSize) - 1) / int64(chunkSize))
	index := make([]byte, 0, 32*chunks)
	var sent int64
	var inflight []func(context.Context) error
	flush := func(keep int) error {
		for len(inflight) > keep {
			if err := inflight[0](ctx); err != nil {
				return err
			}
			inflight = inflight[1:]
		}
		return nil
	}
	for n := 0; n < chunks; n++ {
		buf := make([]byte, chunkSize)
		k, err := io.ReadFull(f, buf)
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, sent, fmt.Errorf("artifact: %w", err)
		}
		s := sha256.Sum256(buf[:k])
		index = append(index, s[:]...)
		inflight = append(inflight, c.PublishAsync(contract.UpdateChunkTopic(base, n), buf[:k], true))
		sent += int64(k)
		if err := flush(publishWindow); err != nil {
			return nil, sent, err
		}
	}
	if err := flush(0); err != nil {
		return nil, sent, err
	}
	if err := c.Publish(ctx, contract.UpdateIndexTopic(base), index, true); err != nil {
		return nil, sent, err
	}
	sent += int64(len(index))
	is := sha256.Sum256(index)
	return &contract.UpdateSource{Topic: base, ChunkSize: chunkSize, IndexSHA256: hex.EncodeToString(is[:])}, sent, nil
}

// updateWatch follows the targeted stations (their responses, their update records and their
// live status) until each is committed, rolled back or failed.
type updateWatch struct {
	version string
	cmdID   string
	last    map[string]string // station -> last line shown
	done    map[string]string // station -> final state
	msgs    chan updateMsg
}

type updateMsg struct {
	station  string
	kind     string
	payload  []byte
	retained bool
}

func newUpdateWatch(targets []string, version, cmdID string) *updateWatch {
	w := &updateWatch{version: version, cmdID: cmdID, last: map[string]string{}, done: map[string]string{},
		msgs: make(chan updateMsg, operator.WatchBuffer)}
	for _, id := range targets {
		w.last[id] = ""
	}
	return w
}

// start subscribes to responses, events and status before any command goes out.
func (w *updateWatch) start(ctx context.Context, c *operator.Client, prefix string) (func(), error) {
	var unsubs []func()
	stop := func() {
		for _, u := range unsubs {
			u()
		}
	}
	for _, kind := range []string{contract.KindResp, contract.KindEvents, contract.KindStatus} {
		u, err := c.Subscribe(ctx, contract.Topic(prefix, "+", kind), func(topic string, payload []byte, retained bool) {
			id := contract.StationOf(prefix, kind, topic)
			if _, ok := w.last[id]; !ok {
				return
			}
			select {
			case w.msgs <- updateMsg{station: id, kind: kind, payload: payload, retained: retained}:
			default: // a follower far behind loses progress lines; the records and final status come again
			}
		})
		if err != nil {
			stop()
			return nil, err
		}
		unsubs = append(unsubs, u)
	}
	return stop, nil
}

// run prints each station's progress and returns nil only if every station committed.
func (w *updateWatch) run(ctx context.Context, lost <-chan struct{}, stdout io.Writer, jsonOut bool, start time.Time) error {
	show := func(id, state, detail string) {
		line := state + detail
		if w.last[id] == line {
			return
		}
		w.last[id] = line
		el := time.Since(start).Round(time.Millisecond)
		if jsonOut {
			_ = printJSON(stdout, map[string]any{"station": id, "state": state, "detail": strings.TrimPrefix(detail, " "),
				"version": w.version, "elapsed_ms": el.Milliseconds()})
			return
		}
		fmt.Fprintf(stdout, "%-20s %-12s %s%s  (+%s)\n", id, state, w.version, detail, el)
	}
	finish := func(id, state, detail string) {
		if _, ok := w.done[id]; ok {
			return
		}
		w.done[id] = state
		show(id, state, detail)
	}
	for len(w.done) < len(w.last) {
		select {
		case <-ctx.Done():
			var missing []string
			for id := range w.last {
				if _, ok := w.done[id]; !ok {
					missing = append(missing, id)
				}
			}
			sort.Strings(missing)
			return fmt.Errorf("no outcome from %s: the update is still running there or the station is offline (station fleet watch)", strings.Join(missing, ", "))
		case <-lost:
			return errors.New("lost the connection to the broker: follow the stations with station fleet watch")
		case m := <-w.msgs:
			switch m.kind {
			case contract.KindResp:
				var r contract.Response
				if json.Unmarshal(m.payload, &r) != nil || r.ID != w.cmdID {
					continue
				}
				if !r.OK {
					code, msg := "", ""
					if r.Error != nil {
						code, msg = r.Error.Code, r.Error.Message
					}
					finish(m.station, contract.UpdateFailed, " "+code+": "+msg)
					continue
				}
				var res contract.UpdateResult
				_ = json.Unmarshal(r.Result, &res)
				if res.State == contract.UpdateCommitted {
					finish(m.station, contract.UpdateCommitted, " (already running)")
				} else {
					show(m.station, "accepted", "")
				}
			case contract.KindEvents:
				var r contract.Record
				if json.Unmarshal(m.payload, &r) != nil || r.Data["version"] != w.version {
					continue
				}
				switch r.Type {
				case contract.TypeUpdateDone:
					finish(m.station, contract.UpdateCommitted, "")
				case contract.TypeUpdateRolledBack:
					finish(m.station, contract.UpdateRolledBack, fmt.Sprintf(" reason: %v", r.Data["reason"]))
				case contract.TypeUpdateFailed:
					finish(m.station, contract.UpdateFailed, fmt.Sprintf(" %v: %v", r.Data["code"], r.Data["message"]))
				}
			case contract.KindStatus:
				// A retained status predates this update; only live ones tell its progress.
				var s contract.Status
				if m.retained || json.Unmarshal(m.payload, &s) != nil || s.Update == nil || s.Update.Version != w.version {
					continue
				}
				if _, ok := w.done[m.station]; ok {
					continue
				}
				u := s.Update
				switch u.State {
				case contract.UpdateCommitted:
					finish(m.station, u.State, "")
				case contract.UpdateRolledBack:
					finish(m.station, u.State, "")
				case contract.UpdateFailed:
					d := ""
					if u.Error != nil {
						d = " " + u.Error.Code + ": " + u.Error.Message
					}
					finish(m.station, u.State, d)
				default:
					show(m.station, u.State, "")
				}
			}
		}
	}
	failed := 0
	for _, st := range w.done {
		if st != contract.UpdateCommitted {
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d stations did not commit %s", failed, len(w.done), w.version)
	}
	return nil
}

// updateOf renders the update member of a status payload for fleet watch, or "".
func updateOf(payload []byte) string {
	var s struct {
		Update *contract.UpdateStatus `json:"update"`
	}
	if json.Unmarshal(payload, &s) != nil || s.Update == nil || s.Update.State == "" || s.Update.State == contract.UpdateIdle {
		return ""
	}
	out := "update " + s.Update.State
	if s.Update.Version != "" {
		out += " " + s.Update.Version
	}
	if s.Update.Progress != "" {
		out += " " + s.Update.Progress
	}
	return out
}
