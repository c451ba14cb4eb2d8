package agent

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"station.dev/agent/agent/contract"
	"station.dev/agent/internal/atomicfile"
	"station.dev/agent/internal/release"
	"station.dev/agent/store"
)

// Over-the-air updates (issue 16; the flow is explained in agent/contract/update.go).
//
// The update command is checked at once (signature, manifest, arch, expiry, downgrade, room)
// and answered; the download runs in the update loop, which also records how the previous
// update ended and, when this process is the pending version, runs the health gate that
// commits it or sends it back. The launcher in `station run` (cmd/station) picks the version
// to start from the version state (internal/release).

// ChunkFetcher fetches the artifact's messages: Fetch returns the payload of the (retained)
// message on topic. The assembly dials one over MQTT (mqtt/operator).
type ChunkFetcher interface {
	Fetch(ctx context.Context, topic string) ([]byte, error)
	Close() error
}

// maxChunks bounds an artifact's chunk count, and so the index a download keeps in memory
// (32 bytes a chunk: 1 MiB).
const maxChunks = 1 << 15

// gateGrace is how long past its window a pending version may take to become healthy (at least
// three windows in all) before it is sent back.
var gateGrace = 5 * time.Minute

// updater is the agent's update state.
type updater struct {
	keys []ed25519.PublicKey

	mu     sync.Mutex
	status contract.UpdateStatus
	gating bool          // this process is the pending version, on trial
	wake   chan struct{} // a new download job
}

func newUpdater(keys []string) (*updater, error) {
	k, err := release.ParseKeys(keys)
	if err != nil {
		return nil, fmt.Errorf("update.public_keys: %w", err)
	}
	return &updater{keys: k, status: contract.UpdateStatus{State: contract.UpdateIdle}, wake: make(chan struct{}, 1)}, nil
}

// updateStatus is the update member of the status.
func (a *Agent) updateStatus() *contract.UpdateStatus {
	a.upd.mu.Lock()
	defer a.upd.mu.Unlock()
	s := a.upd.status
	return &s
}

// setUpdate changes the update status and republishes the retained status when the state
// changed.
func (a *Agent) setUpdate(s contract.UpdateStatus) {
	a.upd.mu.Lock()
	changed := a.upd.status.State != s.State || a.upd.status.Version != s.Version
	a.upd.status = s
	a.upd.mu.Unlock()
	if changed {
		a.link.UpdateStatus()
	}
}

// downloadDir holds the download in progress: job.json (the accepted command's args), index,
// artifact.part.
func (a *Agent) downloadDir() string { return filepath.Join(release.Dir(a.cfg.DataDir), "download") }

// updateJob is an accepted update: what job.json holds.
type updateJob struct {
	Args     contract.UpdateArgs `json:"args"`
	Manifest contract.Manifest   `json:"manifest"`
}

// cmdUpdate checks an update and starts its download.
func (a *Agent) cmdUpdate(_ context.Context, raw json.RawMessage) (any, func(), *commandError) {
	var args contract.UpdateArgs
	if e := decodeArgs(raw, &args); e != nil {
		a.updateFailed("", e)
		return nil, nil, e
	}
	m, e := a.checkUpdate(args)
	if e != nil {
		v := ""
		if m != nil {
			v = m.Version
		}
		a.updateFailed(v, e)
		return nil, nil, e
	}
	if m.Version == a.opts.Version {
		return contract.UpdateResult{State: contract.UpdateCommitted, Version: m.Version}, nil, nil
	}
	job := updateJob{Args: args, Manifest: *m}
	if e := a.startJob(job); e != nil {
		a.updateFailed(m.Version, e)
		return nil, nil, e
	}
	return contract.UpdateResult{State: contract.UpdateDownloading, Version: m.Version}, nil, nil
}

// checkUpdate runs every check that needs no download. The manifest is returned when it could
// be read, for the version in the failure record.
func (a *Agent) checkUpdate(args contract.UpdateArgs) (*contract.Manifest, *commandError) {
	m, err := release.Open(args.Release, a.upd.keys)
	switch {
	case errors.Is(err, release.ErrUnauthorized):
		return nil, cmdErr(contract.CodeUnauthorized, "%v", err)
	case err != nil:
		return nil, cmdErr(contract.CodeBadRequest, "%v", err)
	}
	if m.Arch != runtime.GOARCH {
		return m, cmdErr(contract.CodeBadRequest, "release %s is for %s; this station runs %s", m.Version, m.Arch, runtime.GOARCH)
	}
	if now, _ := a.trust.Now(); release.Expired(m, now) {
		return m, cmdErr(contract.CodeExpired, "release %s expired at %s", m.Version, m.ExpiresAt)
	}
	if release.Compare(m.Version, a.opts.Version) < 0 && !args.AllowDowngrade {
		return m, cmdErr(contract.CodeDowngrade, "release %s is older than the running %s: send it with allow_downgrade", m.Version, a.opts.Version)
	}
	src := args.Source
	if src == nil || src.Topic == "" {
		return m, cmdErr(contract.CodeBadRequest, "source: the artifact's topic is missing")
	}
	if src.ChunkSize <= 0 || src.ChunkSize > contract.MaxChunkSize {
		return m, cmdErr(contract.CodeBadRequest, "source.chunk_size %d: want 1 to %d", src.ChunkSize, contract.MaxChunkSize)
	}
	if chunks := (m.Size + int64(src.ChunkSize) - 1) / int64(src.ChunkSize); chunks > maxChunks {
		return m, cmdErr(contract.CodeBadRequest, "%d chunks of %d bytes: at most %d chunks (the index is kept in memory)", chunks, src.ChunkSize, maxChunks)
	}
	if len(src.IndexSHA256) != 64 {
		return m, cmdErr(contract.CodeBadRequest, "source.index_sha256: want 64 hex digits")
	}
	a.upd.mu.Lock()
	gating := a.upd.gating
	a.upd.mu.Unlock()
	if gating {
		return m, cmdErr(contract.CodeFailed, "version %s is still on trial: send the update again once it is committed", a.opts.Version)
	}
	if e := a.checkRoom(m.Size); e != nil {
		return m, e
	}
	return m, nil
}

// checkRoom refuses an artifact that does not fit in the update budget ([update] max_bytes,
// with the versions that must stay) or on the disk, after the room the store may still grow
// into (store.max_bytes): update bytes never take the room card records need.
func (a *Agent) checkRoom(size int64) *commandError {
	st, _ := release.ReadState(a.cfg.DataDir)
	var kept int64
	for _, v := range []string{st.Committed, a.opts.Version} {
		if fi, err := os.Stat(release.BinaryPath(a.cfg.DataDir, v)); err == nil && v != "" {
			kept += fi.Size()
		}
	}
	budget := int64(a.cfg.Update.MaxBytes)
	if kept+size > budget {
		return cmdErr(contract.CodeFailed, "the release needs %d bytes and the kept versions %d: more than update.max_bytes (%d): raise it", size, kept, budget)
	}
	free, ok := diskFree(a.cfg.DataDir)
	if !ok {
		return nil
	}
	var have int64
	if fi, err := os.Stat(filepath.Join(a.downloadDir(), "artifact.part")); err == nil {
		have = fi.Size()
	}
	reserve := int64(a.cfg.Store.MaxBytes)
	if fi, err := os.Stat(filepath.Join(a.cfg.DataDir, "station.db")); err == nil {
		reserve -= fi.Size()
	}
	reserve = max(reserve, 0) + 1<<20
	if need := size - have + reserve; free < need {
		return cmdErr(contract.CodeFailed, "not enough disk in %s: %d bytes free, the release needs %d and the store keeps %d: free some space", a.cfg.DataDir, free, size-have, reserve)
	}
	return nil
}

// startJob makes job the download in progress (replacing another one) and wakes the loop.
func (a *Agent) startJob(job updateJob) *commandError {
	dir := a.downloadDir()
	if old, err := readJob(dir); err == nil && old.Manifest.SHA256 != job.Manifest.SHA256 {
		_ = os.RemoveAll(dir)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return cmdErr(contract.CodeFailed, "download directory: %v", err)
	}
	b, _ := json.Marshal(job)
	if err := atomicfile.Write(filepath.Join(dir, "job.json"), b, 0o640); err != nil {
		return cmdErr(contract.CodeFailed, "download directory: %v", err)
	}
	a.setUpdate(contract.UpdateStatus{State: contract.UpdateDownloading, Version: job.Manifest.Version, Previous: a.opts.Version})
	select {
	case a.upd.wake <- struct{}{}:
	default:
	}
	return nil
}

func readJob(dir string) (*updateJob, error) {
	b, err := os.ReadFile(filepath.Join(dir, "job.json"))
	if err != nil {
		return nil, err
	}
	var j updateJob
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, err
	}
	return &j, nil
}

// updateFailed records a refused or broken update and shows it in the status.
func (a *Agent) updateFailed(version string, e *commandError) {
	r := a.newRecord(contract.TypeUpdateFailed)
	r.Data = map[string]any{"code": e.Code, "message": e.Message, "version": version}
	if _, err := a.appendRecord(r, store.Critical); err != nil {
		a.log.Error("writing update.failed record", "err", err)
	}
	a.log.Warn("update failed", "version", version, "code", e.Code, "reason", e.Message)
	a.setUpdate(contract.UpdateStatus{State: contract.UpdateFailed, Version: version, Previous: a.opts.Version, Error: e})
}

// updateLoop records how the last update ended, runs the health gate when this process is the
// pending version, and runs downloads.
func (a *Agent) updateLoop(ctx context.Context) error {
	st, err := release.ReadState(a.cfg.DataDir)
	if err != nil {
		a.log.Error("reading the version state", "err", err)
	}
	a.recordOutcome(st)
	if st.Pending != "" && st.Pending == a.opts.Version {
		if !a.healthGate(ctx, st) {
			return nil
		}
	}
	for {
		if job, err := readJob(a.downloadDir()); err == nil {
			a.download(ctx, job)
		}
		if ctx.Err() != nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-a.upd.wake:
		}
	}
}

// recordOutcome writes the record of an update that ended (committed, or rolled back by the
// launcher) and not yet recorded, and shows it in the status.
func (a *Agent) recordOutcome(st release.State) {
	o := st.Outcome
	if o == nil {
		return
	}
	a.setUpdate(contract.UpdateStatus{State: o.State, Version: o.Version, Previous: st.Previous})
	if o.Recorded {
		return
	}
	typ := contract.TypeUpdateDone
	data := map[string]any{"version": o.Version, "previous": st.Previous}
	if o.State == contract.UpdateRolledBack {
		typ = contract.TypeUpdateRolledBack
		data["reason"] = o.Reason
		a.log.Error("update rolled back", "version", o.Version, "reason", o.Reason, "running", a.opts.Version)
	} else {
		a.log.Info("update committed", "version", o.Version, "previous", st.Previous)
	}
	r := a.newRecord(typ)
	r.Data = data
	if _, err := a.appendRecord(r, store.Critical); err != nil {
		a.log.Error("writing the update record", "type", typ, "err", err)
		return
	}
	o.Recorded = true
	if err := release.WriteState(a.cfg.DataDir, st); err != nil {
		a.log.Error("writing the version state", "err", err)
	}
}

// healthGate keeps the pending version on trial until it has been healthy for the health
// window, then commits it. A version that does not become healthy in time is sent back: the
// state names the rollback and the agent stops for a restart, which starts the previous
// version. It returns false when the agent is stopping.
func (a *Agent) healthGate(ctx context.Context, st release.State) bool {
	window := a.cfg.Update.HealthWindow.D()
	a.upd.mu.Lock()
	a.upd.gating = true
	a.upd.mu.Unlock()
	defer func() {
		a.upd.mu.Lock()
		a.upd.gating = false
		a.upd.mu.Unlock()
	}()
	a.setUpdate(contract.UpdateStatus{State: contract.UpdatePending, Version: a.opts.Version, Previous: st.Previous})
	a.log.Info("new version on trial", "version", a.opts.Version, "health_window", window, "attempt", st.Attempts)
	tick := min(window/4, time.Second)
	limit := max(3*window, window+gateGrace)
	deadline := a.clk.Monotonic() + limit
	var since time.Duration = -1
	var why string
	for a.sleep(ctx, tick) {
		now := a.clk.Monotonic()
		if why = a.unhealthy(st); why != "" {
			since = -1
		} else if since < 0 {
			since = now
		} else if now-since >= window {
			a.commit()
			return true
		}
		if now > deadline {
			a.rollBack("not healthy for " + window.String() + " within " + limit.String() + ": " + why)
			return false
		}
	}
	return false
}

// unhealthy says what keeps the pending version from being healthy, or "".
func (a *Agent) unhealthy(st release.State) string {
	if st.BrokerRequired {
		ls := a.link.Stats()
		if !ls.Connected {
			return "not connected to the broker"
		}
		if ls.Connects == 0 {
			return "status not published"
		}
	}
	if a.opts.Stuck != nil {
		if s := a.opts.Stuck(); len(s) > 0 {
			return fmt.Sprintf("main loops stuck: %v", s)
		}
	}
	return ""
}

// commit makes the pending version the committed one.
func (a *Agent) commit() {
	next, err := release.ReadState(a.cfg.DataDir)
	if err != nil || next.Pending != a.opts.Version {
		a.log.Error("version state changed during the trial: not committing", "err", err)
		return
	}
	next.Committed, next.Pending, next.Attempts = a.opts.Version, "", 0
	next.Outcome = &release.Outcome{Version: a.opts.Version, State: contract.UpdateCommitted}
	if err := release.WriteState(a.cfg.DataDir, next); err != nil {
		a.log.Error("committing the new version", "err", err)
		return
	}
	a.recordOutcome(next)
	a.pruneVersions(next)
}

// rollBack ends the trial of the running pending version and stops for a restart.
func (a *Agent) rollBack(reason string) {
	next, err := release.ReadState(a.cfg.DataDir)
	if err == nil && next.Pending == a.opts.Version {
		next.Pending, next.Attempts = "", 0
		next.Outcome = &release.Outcome{Version: a.opts.Version, State: contract.UpdateRolledBack, Reason: reason}
		err = release.WriteState(a.cfg.DataDir, next)
	}
	if err != nil {
		a.log.Error("rolling back", "err", err)
	}
	a.log.Error("new version failed its health window: restarting into the previous version", "reason", reason)
	a.stop(ErrRestart)
}

// pruneVersions removes installed versions other than the committed one and the previous one.
func (a *Agent) pruneVersions(st release.State) {
	ents, err := os.ReadDir(release.Dir(a.cfg.DataDir))
	if err != nil {
		return
	}
	for _, e := range ents {
		n := e.Name()
		if !e.IsDir() || n == "download" || n == st.Committed || n == st.Previous || n == st.Pending || n == a.opts.Version {
			continue
		}
		if err := os.RemoveAll(filepath.Join(release.Dir(a.cfg.DataDir), n)); err != nil {
			a.log.Warn("removing an old version", "version", n, "err", err)
		}
	}
}
