package agent

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"station.dev/agent/agent/config"
	"station.dev/agent/agent/contract"
	"station.dev/agent/internal/release"
)

// fakeTopics serves update artifacts as retained messages would: a Fetch returns the payload of
// its topic. failAt makes the first connection break when it reaches that topic.
type fakeTopics struct {
	mu      sync.Mutex
	msgs    map[string][]byte
	failAt  string
	dials   int
	fetches int
}

type fakeConn struct{ f *fakeTopics }

func (c fakeConn) Fetch(_ context.Context, topic string) ([]byte, error) {
	c.f.mu.Lock()
	defer c.f.mu.Unlock()
	c.f.fetches++
	if topic == c.f.failAt {
		c.f.failAt = ""
		return nil, errors.New("connection lost")
	}
	b, ok := c.f.msgs[topic]
	if !ok {
		return nil, errors.New("nothing on " + topic)
	}
	return b, nil
}

func (fakeConn) Close() error { return nil }

func (f *fakeTopics) dial(context.Context) (ChunkFetcher, error) {
	f.mu.Lock()
	f.dials++
	f.mu.Unlock()
	return fakeConn{f}, nil
}

// testRelease is an artifact published in chunks and its signed update args.
type testRelease struct {
	artifact []byte
	args     contract.UpdateArgs
	topics   *fakeTopics
}

func newTestRelease(t *testing.T, key ed25519.PrivateKey, version string, size, chunk int, expires time.Duration) *testRelease {
	t.Helper()
	art := make([]byte, size)
	_, _ = rand.Read(art)
	sum := sha256.Sum256(art)
	now := time.Now().UTC()
	m := contract.Manifest{Version: version, Arch: runtime.GOARCH, SHA256: hex.EncodeToString(sum[:]), Size: int64(size),
		IssuedAt: now.Add(-time.Minute).Format(time.RFC3339Nano), ExpiresAt: now.Add(expires).Format(time.RFC3339Nano)}
	rel, err := release.Sign(m, key)
	if err != nil {
		t.Fatal(err)
	}
	base := contract.UpdateTopicBase("stations", m.SHA256)
	f := &fakeTopics{msgs: map[string][]byte{}}
	var index []byte
	for n := 0; n*chunk < size; n++ {
		c := art[n*chunk : min((n+1)*chunk, size)]
		s := sha256.Sum256(c)
		index = append(index, s[:]...)
		f.msgs[contract.UpdateChunkTopic(base, n)] = c
	}
	f.msgs[contract.UpdateIndexTopic(base)] = index
	is := sha256.Sum256(index)
	return &testRelease{artifact: art, topics: f, args: contract.UpdateArgs{Release: rel,
		Source: &contract.UpdateSource{Topic: base, ChunkSize: chunk, IndexSHA256: hex.EncodeToString(is[:])}}}
}

func updateHarness(t *testing.T, version string, fetch func(context.Context) (ChunkFetcher, error)) (*harness, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	h := startHarness(t, harnessOpts{
		noRun: true,
		config: func(c *config.Config) {
			c.Update.PublicKeys = []string{base64.StdEncoding.EncodeToString(pub)}
			c.Update.HealthWindow = config.Duration(time.Second)
		},
		options: func(o *Options) { o.Version = version },
		parts: func(p *Parts) {
			p.Updates = fetch
			p.ClockSynced = func() bool { return true }
		},
	})
	return h, priv
}

func TestUpdateRefusals(t *testing.T) {
	h, key := updateHarness(t, "1.5.0", nil)
	_, rogue, _ := ed25519.GenerateKey(rand.Reader)
	good := newTestRelease(t, key, "1.6.0", 100, 64, time.Hour).args

	wrongArch := good
	m, _ := release.Peek(good.Release)
	m.Arch = "s390x"
	wrongArch.Release, _ = release.Sign(*m, key)

	for _, c := range []struct {
		name string
		args any
		code string
	}{
		{"bad signature", newTestRelease(t, rogue, "1.6.0", 100, 64, time.Hour).args, contract.CodeUnauthorized},
		{"wrong arch", wrongArch, contract.CodeBadRequest},
		{"malformed", map[string]any{"release": map[string]string{"manifest": "!!", "sig": "x"}}, contract.CodeBadRequest},
		{"unknown field", map[string]any{"release": good.Release, "url": 1}, contract.CodeBadRequest},
		{"downgrade", newTestRelease(t, key, "1.4.0", 100, 64, time.Hour).args, contract.CodeDowngrade},
		{"expired", newTestRelease(t, key, "1.7.0", 100, 64, -time.Second).args, contract.CodeExpired},
		{"too large", newTestRelease(t, key, "1.8.0", 65<<20, 1<<20, time.Hour).args, contract.CodeFailed},
	} {
		raw, _ := json.Marshal(c.args)
		_, _, e := h.a.cmdUpdate(context.Background(), raw)
		if e == nil || e.Code != c.code {
			t.Errorf("%s: %v, want code %s", c.name, e, c.code)
		}
	}
	if n := len(recordsOfType(t, h.a, contract.TypeUpdateFailed)); n != 7 {
		t.Errorf("%d update.failed records, want 7", n)
	}
	if s := h.a.updateStatus(); s.State != contract.UpdateFailed || s.Error == nil {
		t.Errorf("status after refusals: %+v", s)
	}
	// The running version: nothing to do.
	raw, _ := json.Marshal(newTestRelease(t, key, "1.5.0", 100, 64, time.Hour).args)
	if res, _, e := h.a.cmdUpdate(context.Background(), raw); e != nil || res.(contract.UpdateResult).State != contract.UpdateCommitted {
		t.Errorf("same version: %v %v", res, e)
	}
}

func TestUpdateDownloadResumesAndInstalls(t *testing.T) {
	var topics *fakeTopics
	h, key := updateHarness(t, "1.5.0", func(ctx context.Context) (ChunkFetcher, error) { return topics.dial(ctx) })
	rel := newTestRelease(t, key, "1.6.0", 10_000, 1000, time.Hour)
	topics = rel.topics
	topics.failAt = contract.UpdateChunkTopic(rel.args.Source.Topic, 4)
	raw, _ := json.Marshal(rel.args)
	if _, _, e := h.a.cmdUpdate(context.Background(), raw); e != nil {
		t.Fatal(e)
	}
	job, err := readJob(h.a.downloadDir())
	if err != nil {
		t.Fatal(err)
	}
	h.a.download(context.Background(), job)
	got, err := os.ReadFile(release.BinaryPath(h.a.cfg.DataDir, "1.6.0"))
	if err != nil || !bytes.Equal(got, rel.artifact) {
		t.Fatalf("installed file: %v (%d bytes)", err, len(got))
	}
	if topics.dials != 2 || topics.fetches != 1+10+1 {
		t.Errorf("%d connections and %d fetches; want 2 and 12 (the index, 10 chunks, one broken fetch)", topics.dials, topics.fetches)
	}
	st, err := release.ReadState(h.a.cfg.DataDir)
	if err != nil || st.Pending != "1.6.0" || st.Previous != "1.5.0" || st.Attempts != 0 {
		t.Errorf("state %+v %v", st, err)
	}
	if s := h.a.updateStatus(); s.State != contract.UpdatePending {
		t.Errorf("status %+v", s)
	}
	if _, err := os.Stat(h.a.downloadDir()); !os.IsNotExist(err) {
		t.Errorf("download directory left: %v", err)
	}
}

func TestUpdateResumesFromDisk(t *testing.T) {
	var topics *fakeTopics
	h, key := updateHarness(t, "1.5.0", func(ctx context.Context) (ChunkFetcher, error) { return topics.dial(ctx) })
	rel := newTestRelease(t, key, "1.6.0", 10_000, 1000, time.Hour)
	topics = rel.topics
	raw, _ := json.Marshal(rel.args)
	if _, _, e := h.a.cmdUpdate(context.Background(), raw); e != nil {
		t.Fatal(e)
	}
	// A previous run got the index and six chunks, the last of them torn by a power cut.
	dir := h.a.downloadDir()
	if err := os.WriteFile(dir+"/index", topics.msgs[contract.UpdateIndexTopic(rel.args.Source.Topic)], 0o600); err != nil {
		t.Fatal(err)
	}
	part := append([]byte(nil), rel.artifact[:6000]...)
	part[5500] ^= 0xff
	if err := os.WriteFile(dir+"/artifact.part", part, 0o600); err != nil {
		t.Fatal(err)
	}
	job, _ := readJob(dir)
	h.a.download(context.Background(), job)
	if got, _ := os.ReadFile(release.BinaryPath(h.a.cfg.DataDir, "1.6.0")); !bytes.Equal(got, rel.artifact) {
		t.Fatal("installed file differs from the artifact")
	}
	if topics.fetches != 5 {
		t.Errorf("%d fetches, want 5 (chunks 5 to 9)", topics.fetches)
	}
}

func TestUpdateCorruptChunkFails(t *testing.T) {
	var topics *fakeTopics
	h, key := updateHarness(t, "1.5.0", func(ctx context.Context) (ChunkFetcher, error) { return topics.dial(ctx) })
	rel := newTestRelease(t, key, "1.6.0", 5000, 1000, time.Hour)
	topics = rel.topics
	topics.msgs[contract.UpdateChunkTopic(rel.args.Source.Topic, 2)] = bytes.Repeat([]byte{1}, 1000)
	raw, _ := json.Marshal(rel.args)
	if _, _, e := h.a.cmdUpdate(context.Background(), raw); e != nil {
		t.Fatal(e)
	}
	job, _ := readJob(h.a.downloadDir())
	h.a.download(context.Background(), job)
	s := h.a.updateStatus()
	if s.State != contract.UpdateFailed || s.Error == nil || s.Error.Code != contract.CodeFailed {
		t.Fatalf("status %+v", s)
	}
	recs := recordsOfType(t, h.a, contract.TypeUpdateFailed)
	if len(recs) != 1 || recs[0].Data["code"] != contract.CodeFailed {
		t.Errorf("records %+v", recs)
	}
	if _, err := os.Stat(release.BinaryPath(h.a.cfg.DataDir, "1.6.0")); !os.IsNotExist(err) {
		t.Error("a broken artifact was installed")
	}
}

func TestHealthGateCommits(t *testing.T) {
	h, _ := updateHarness(t, "1.6.0", nil)
	dd := h.a.cfg.DataDir
	if err := release.WriteState(dd, release.State{Committed: "1.5.0", Pending: "1.6.0", Previous: "1.5.0", Attempts: 1}); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"1.4.0", "1.5.0", "1.6.0"} {
		os.MkdirAll(dd+"/versions/"+v, 0o700)
		os.WriteFile(release.BinaryPath(dd, v), []byte(v), 0o700)
	}
	runLoop(t, h.a.updateLoop)
	// Committed, recorded, pruned: the last step removes the old version.
	waitFor(t, func() bool { _, err := os.Stat(dd + "/versions/1.4.0"); return os.IsNotExist(err) })
	if s := h.a.updateStatus(); s.State != contract.UpdateCommitted || s.Version != "1.6.0" || s.Previous != "1.5.0" {
		t.Errorf("status %+v", s)
	}
	st, _ := release.ReadState(dd)
	if st.Committed != "1.6.0" || st.Pending != "" || st.Outcome == nil || !st.Outcome.Recorded {
		t.Errorf("state %+v", st)
	}
	if recs := recordsOfType(t, h.a, contract.TypeUpdateDone); len(recs) != 1 || recs[0].Data["version"] != "1.6.0" {
		t.Errorf("update.done records %+v", recs)
	}
	if _, err := os.Stat(release.BinaryPath(dd, "1.5.0")); err != nil {
		t.Error("the previous version was removed")
	}
}

func TestHealthGateRollsBackAnUnhealthyVersion(t *testing.T) {
	defer func(g time.Duration) { gateGrace = g }(gateGrace)
	gateGrace = 0 // three windows: 3s
	h, _ := updateHarness(t, "1.6.0", nil)
	dd := h.a.cfg.DataDir
	// The previous version was connected; this one's broker is a closed port.
	if err := release.WriteState(dd, release.State{Committed: "1.5.0", Pending: "1.6.0", Previous: "1.5.0", Attempts: 1, BrokerRequired: true}); err != nil {
		t.Fatal(err)
	}
	runLoop(t, h.a.updateLoop)
	waitFor(t, func() bool { st, _ := release.ReadState(dd); return st.Pending == "" })
	st, _ := release.ReadState(dd)
	if st.Committed != "1.5.0" || st.Outcome == nil || st.Outcome.State != contract.UpdateRolledBack ||
		!bytes.Contains([]byte(st.Outcome.Reason), []byte("not connected to the broker")) {
		t.Errorf("state %+v, outcome %+v", st, st.Outcome)
	}
}
