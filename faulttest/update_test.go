//go:build faults

package faulttest

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"station.dev/agent/agent/contract"
	"station.dev/agent/internal/stationproc"
	"station.dev/agent/mqtt/brokertest"
)

// Over-the-air updates end to end (issue 16): a station under a shell supervisor loop (no
// systemd), its packaged binary in a writable directory, on a Mosquitto over TCP, updated by
// `station fleet update` with two builds of the binary stamped with different versions.

// buildVersions builds the station binary stamped 1.0.0 and 1.1.0.
func buildVersions(t *testing.T) (v1, v2 string) {
	t.Helper()
	if os.Getenv(stationproc.EnvQEMU) != "" {
		t.Skip("the launcher execs the installed version directly; under user-mode emulation it cannot")
	}
	dir := t.TempDir()
	for _, v := range []struct {
		ver string
		out *string
	}{{"1.0.0", &v1}, {"1.1.0", &v2}} {
		*v.out = filepath.Join(dir, "station-"+v.ver)
		cmd := exec.Command("go", "build", "-tags", "faults", "-ldflags", "-s -w -X main.version="+v.ver,
			"-o", *v.out, "station.dev/agent/cmd/station")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", v.ver, err, out)
		}
	}
	return v1, v2
}

// supervised is a station run by `while :; do station run …; done`.
type supervised struct {
	t              *testing.T
	id, prefix     string
	dir, bin, sock string
	broker         string
	p              *stationproc.Process
}

func (s *supervised) cli(args ...string) (string, string, int) {
	cmd := exec.Command(s.bin, args...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
	}
	return out.String(), errb.String(), code
}

// updateDoc is the part of the status the tests read.
type updateDoc struct {
	Version string                `json:"version"`
	Update  contract.UpdateStatus `json:"update"`
}

func (s *supervised) status() (updateDoc, error) {
	var d updateDoc
	out, errs, code := s.cli("status", "--json", "--socket", s.sock)
	if code != 0 {
		return d, fmt.Errorf("status: %d %s", code, errs)
	}
	return d, json.Unmarshal([]byte(out), &d)
}

// waitStatus polls the local API (another process's state) until cond holds.
func (s *supervised) waitStatus(what string, timeout time.Duration, cond func(updateDoc) bool) updateDoc {
	s.t.Helper()
	var last updateDoc
	if !eventually(timeout, 50*time.Millisecond, func() bool {
		d, err := s.status()
		if err == nil {
			last = d
		}
		return err == nil && cond(d)
	}) {
		s.t.Fatalf("%s: not within %v; last status %+v\n%s", what, timeout, last, s.p.Tail(60))
	}
	return last
}

// fleet runs a `station fleet` subcommand against the station's broker and prefix.
func (s *supervised) fleet(args ...string) (string, string, int) {
	return s.cli(append([]string{"fleet"}, append(args, "--broker", s.broker, "--topic-prefix", s.prefix)...)...)
}

func TestUpdateOverTheAir(t *testing.T) {
	v1, v2 := buildVersions(t)
	mq := startMosquitto(t, nil)
	dir := t.TempDir()
	s := &supervised{t: t, id: "st-update-1", prefix: brokertest.UniquePrefix(t), dir: dir,
		bin: filepath.Join(dir, "bin", "station"), sock: filepath.Join(dir, "station.sock"), broker: mq.URL()}
	must(t, os.MkdirAll(filepath.Dir(s.bin), 0o755))
	copyFile(t, v1, s.bin, 0o755)

	// Keys: one for commands, one for releases, one the station does not trust.
	keys := filepath.Join(dir, "keys")
	must(t, os.MkdirAll(keys, 0o700))
	pub := map[string]string{}
	for _, k := range []string{"command", "release", "rogue"} {
		out, errs, code := s.cli("fleet", "keygen", "--out", filepath.Join(keys, k+".key"), "--json")
		if code != 0 {
			t.Fatalf("keygen: %s", errs)
		}
		var r struct {
			PublicKey string `json:"public_key"`
		}
		must(t, json.Unmarshal([]byte(out), &r))
		pub[k] = r.PublicKey
	}
	sign := func(file, version string, extra ...string) string {
		t.Helper()
		args := append([]string{"fleet", "release", "--key", filepath.Join(keys, "release.key"), "--version", version}, extra...)
		if _, errs, code := s.cli(append(args, file)...); code != 0 {
			t.Fatalf("fleet release %s: %s", version, errs)
		}
		return file + ".release"
	}

	conf := filepath.Join(dir, "station.toml")
	must(t, os.WriteFile(conf, []byte(fmt.Sprintf(`[mqtt]
topic_prefix = %q
backoff_max = "1s"
[reader]
poll_interval = "1ms"
[clock]
assume_synced = true
[commands]
public_keys = [%q]
[update]
public_keys = [%q]
health_window = "1s"
`, s.prefix, pub["command"], pub["release"])), 0o600))

	events := brokertest.Subscribe(t, s.broker, s.prefix+"/"+s.id+"/events", 100000)

	// The supervisor: restart whatever exits, as systemd's Restart=always would. The agent dies
	// at chunk 3 of its first download (the fault point), like a kill -9, and must resume.
	loop := fmt.Sprintf(`while :; do %q run --sim --config %q --broker %q --data-dir %q --socket %q --station-id %q --log-level info; echo "supervisor: station exited with status $?" >&2; sleep 0.2; done`,
		s.bin, conf, s.broker, filepath.Join(dir, "data"), s.sock, s.id)
	cmd := exec.Command("sh", "-c", loop)
	cmd.Env = append(os.Environ(), "STATION_TEST_FAULT=update.chunk.3")
	p, err := stationproc.StartProcess("supervisor", cmd, filepath.Join(t.TempDir(), "supervisor.log"), nil)
	must(t, err)
	s.p = p
	t.Cleanup(func() {
		_ = syscall.Kill(-p.Pid(), syscall.SIGKILL) // the loop and the station it runs
		p.Kill()
		if t.Failed() {
			t.Logf("supervisor log (last lines):\n%s", p.Tail(200))
		}
	})
	s.waitStatus("v1 online", 30*time.Second, func(d updateDoc) bool { return d.Version == "1.0.0" })

	// Taps all along: one a tick; those answered "recorded" must all reach the broker.
	tapCtx, stopTaps := context.WithCancel(context.Background())
	var tapped []string
	tapsDone := make(chan struct{})
	go func() {
		defer close(tapsDone)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-tapCtx.Done():
				return
			case <-tick.C:
			}
			out, _, _ := s.cli("tap", "--count", "1", "--json", "--socket", s.sock)
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				var r struct {
					OK bool   `json:"ok"`
					ID string `json:"id"`
				}
				if json.Unmarshal([]byte(line), &r) == nil && r.OK {
					tapped = append(tapped, r.ID)
				}
			}
		}
	}()

	update := func(rel, artifact string, extra ...string) (lines []map[string]any, code int, took time.Duration) {
		t.Helper()
		start := time.Now()
		args := append([]string{"update", "--release", rel, "--artifact", artifact, "--station", s.id,
			"--key", filepath.Join(keys, "command.key"), "--wait", "--timeout", "2m", "--json"}, extra...)
		out, errs, code := s.fleet(args...)
		took = time.Since(start)
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil {
				lines = append(lines, m)
			}
		}
		t.Logf("fleet update %s: exit %d in %v\n%s%s", filepath.Base(rel), code, took.Round(time.Millisecond), out, errs)
		return lines, code, took
	}
	final := func(lines []map[string]any) map[string]any {
		if len(lines) == 0 {
			return map[string]any{}
		}
		return lines[len(lines)-1]
	}

	// 1. A good update, killed once in the middle of its download, committed after its window.
	art2 := filepath.Join(dir, "station-1.1.0")
	copyFile(t, v2, art2, 0o755)
	lines, code, took := update(sign(art2, "1.1.0"), art2, "--chunk-size", "65536")
	if code != 0 || final(lines)["state"] != contract.UpdateCommitted {
		t.Fatalf("good update: exit %d, %v", code, final(lines))
	}
	figure(t, "update_to_committed_seconds", took.Seconds(), "s")
	fi, _ := os.Stat(art2)
	chunks := (fi.Size() + 65535) / 65536
	figure(t, "update_payload_bytes_per_station", float64(fi.Size()+32*chunks), "bytes")
	d := s.waitStatus("1.1.0 committed", 10*time.Second, func(d updateDoc) bool { return d.Version == "1.1.0" })
	if d.Update.State != contract.UpdateCommitted || d.Update.Previous != "1.0.0" {
		t.Errorf("after the update: %+v", d.Update)
	}
	if !strings.Contains(p.Log(), "status 137") {
		t.Errorf("the station never died at the fault point in the download:\n%s", p.Tail(40))
	}
	if want := fmt.Sprintf("bytes=%d", 4*65536); !strings.Contains(p.Log(), "resuming the update download") || !strings.Contains(p.Log(), want) {
		t.Errorf("the download did not resume after chunk 3 (%s):\n%s", want, p.Tail(40))
	}

	// 2. A new "version" that exits at once: three failed starts, then 1.1.0 again.
	bad := filepath.Join(dir, "station-1.2.0")
	must(t, os.WriteFile(bad, []byte("#!/bin/sh\nexit 1\n"), 0o755))
	lines, code, took = update(sign(bad, "1.2.0", "--arch", runtime.GOARCH), bad)
	if code == 0 || final(lines)["state"] != contract.UpdateRolledBack {
		t.Fatalf("broken update: exit %d, %v", code, final(lines))
	}
	figure(t, "update_to_rolled_back_seconds", took.Seconds(), "s")
	d = s.waitStatus("back on 1.1.0", 10*time.Second, func(d updateDoc) bool { return d.Version == "1.1.0" })
	if d.Update.State != contract.UpdateRolledBack || d.Update.Version != "1.2.0" {
		t.Errorf("after the rollback: %+v", d.Update)
	}

	// 3. Refusals, each with its code.
	rogue := filepath.Join(dir, "station-1.3.0")
	copyFile(t, v2, rogue, 0o755)
	if _, errs, code := s.cli("fleet", "release", "--key", filepath.Join(keys, "rogue.key"), "--version", "1.3.0", rogue); code != 0 {
		t.Fatal(errs)
	}
	old := filepath.Join(dir, "station-1.0.0")
	copyFile(t, v1, old, 0o755)
	stale := filepath.Join(dir, "station-1.4.0")
	copyFile(t, v2, stale, 0o755)
	for _, c := range []struct {
		name, rel, art, code string
	}{
		{"bad signature", rogue + ".release", rogue, contract.CodeUnauthorized},
		{"downgrade", sign(old, "1.0.0"), old, contract.CodeDowngrade},
		{"expired", sign(stale, "1.4.0", "--expires", "1ms"), stale, contract.CodeExpired},
	} {
		lines, code, _ := update(c.rel, c.art)
		f := final(lines)
		if code == 0 || f["state"] != contract.UpdateFailed || !strings.HasPrefix(fmt.Sprint(f["detail"]), c.code+":") {
			t.Errorf("%s: exit %d, %v; want failed with %s", c.name, code, f, c.code)
		}
	}

	// 4. A corrupted chunk: the artifact is published, one retained chunk is replaced, then the
	// command goes out (as `fleet update` would send it).
	corrupt := filepath.Join(dir, "station-1.5.0")
	copyFile(t, v2, corrupt, 0o755)
	rel := sign(corrupt, "1.5.0")
	if _, errs, code := s.fleet("update", "--release", rel, "--artifact", corrupt, "--station", "nobody-here",
		"--chunk-size", "65536"); code != 0 {
		t.Fatalf("publishing: %s", errs)
	}
	sum, index := fileIndex(t, corrupt, 65536)
	base := contract.UpdateTopicBase(s.prefix, sum)
	brokertest.Publish(t, s.broker, contract.UpdateChunkTopic(base, 2), []byte("not the chunk that was signed"), true)
	var r contract.Release
	b, _ := os.ReadFile(rel)
	must(t, json.Unmarshal(b, &r))
	is := sha256.Sum256(index)
	args, _ := json.Marshal(contract.UpdateArgs{Release: r, Source: &contract.UpdateSource{Topic: base, ChunkSize: 65536, IndexSHA256: hex.EncodeToString(is[:])}})
	out, errs, code := s.fleet("send", s.id, "update", string(args), "--key", filepath.Join(keys, "command.key"), "--expires", "1h", "--json")
	if code != 0 {
		t.Fatalf("sending the update: %d %s %s", code, out, errs)
	}
	d = s.waitStatus("corrupted chunk refused", 30*time.Second, func(d updateDoc) bool {
		return d.Update.State == contract.UpdateFailed && d.Update.Version == "1.5.0"
	})
	if d.Update.Error == nil || d.Update.Error.Code != contract.CodeFailed || !strings.Contains(d.Update.Error.Message, "chunk 2") {
		t.Errorf("corrupted chunk: %+v", d.Update.Error)
	}
	if d.Version != "1.1.0" {
		t.Errorf("running %s after the refusals, want 1.1.0", d.Version)
	}

	// Every tap answered "recorded" reached the broker, and the records have no gap.
	stopTaps()
	<-tapsDone
	if len(tapped) < 10 {
		t.Errorf("only %d taps were recorded during the updates", len(tapped))
	}
	want := map[string]bool{}
	for _, id := range tapped {
		want[id] = true
	}
	var recs []stationproc.Record
	types := map[string]int{}
	deadline := time.After(30 * time.Second)
	for len(want) > 0 {
		select {
		case m := <-events.C:
			rec, err := stationproc.ParseRecord(m.Topic, m.Payload, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			recs = append(recs, rec)
			types[rec.Type]++
			delete(want, rec.ID)
		case <-deadline:
			t.Fatalf("%d of %d recorded taps never reached the broker", len(want), len(tapped))
		}
	}
	stationproc.CheckSeq(t, recs)
	for _, typ := range []string{contract.TypeUpdateDone, contract.TypeUpdateRolledBack, contract.TypeUpdateFailed} {
		if types[typ] == 0 {
			t.Errorf("no %s record among %v", typ, types)
		}
	}
	t.Logf("%d taps recorded and delivered; records by type %v", len(tapped), types)
}

// fileIndex returns a file's SHA-256 and its chunk index (the SHA-256 of each chunk).
func fileIndex(t *testing.T, path string, chunk int) (string, []byte) {
	t.Helper()
	f, err := os.Open(path)
	must(t, err)
	defer f.Close()
	whole := sha256.New()
	var index []byte
	r := bufio.NewReader(f)
	buf := make([]byte, chunk)
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			s := sha256.Sum256(buf[:n])
			index = append(index, s[:]...)
			whole.Write(buf[:n])
		}
		if err != nil {
			break
		}
	}
	return hex.EncodeToString(whole.Sum(nil)), index
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	must(t, err)
	must(t, os.WriteFile(dst, b, mode))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
