package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"station.dev/agent/agent/contract"
	"station.dev/agent/internal/atomicfile"
	"station.dev/agent/internal/backoff"
	"station.dev/agent/internal/release"
)

// Download timing: how long one message may take, and how long a download may go without any
// progress (across reconnects) before it fails as broken.
const (
	fetchTimeout     = 30 * time.Second
	downloadStallMax = 10 * time.Minute
	chunkRetries     = 3
)

// errBroken is a download that cannot succeed as published: a wrong index or chunk.
var errBroken = errors.New("broken download")

// download runs job until it is installed, fails or ctx ends (then it resumes at the next
// start). Memory stays at one chunk and the index; the artifact goes to disk chunk by chunk.
func (a *Agent) download(ctx context.Context, job *updateJob) {
	m := job.Manifest
	a.setUpdate(contract.UpdateStatus{State: contract.UpdateDownloading, Version: m.Version, Previous: a.opts.Version})
	if a.fetcher == nil {
		a.failDownload(m.Version, cmdErr(contract.CodeFailed, "this station cannot fetch updates over MQTT"))
		return
	}
	bo := &backoff.Backoff{Min: 500 * time.Millisecond, Max: 30 * time.Second}
	lastProgress := a.clk.Monotonic()
	var got int64 = -1
	for ctx.Err() == nil {
		n, err := a.fetchOnce(ctx, job)
		if err == nil {
			a.install(job)
			return
		}
		if errors.Is(err, errBroken) {
			a.failDownload(m.Version, cmdErr(contract.CodeFailed, "%v", err))
			return
		}
		if ctx.Err() != nil {
			return
		}
		if n > got {
			got, lastProgress = n, a.clk.Monotonic()
			bo.Reset()
		}
		if a.clk.Monotonic()-lastProgress > downloadStallMax {
			a.failDownload(m.Version, cmdErr(contract.CodeFailed, "download of %s made no progress for %v: %v", m.Version, downloadStallMax, err))
			return
		}
		a.log.Warn("update download interrupted; resuming", "version", m.Version, "bytes", n, "err", err)
		if !a.sleep(ctx, bo.Next()) {
			return
		}
	}
}

// fetchOnce connects and fetches what is missing; it returns the bytes on disk.
func (a *Agent) fetchOnce(ctx context.Context, job *updateJob) (int64, error) {
	m, src := job.Manifest, job.Args.Source
	dir := a.downloadDir()
	chunks := int((m.Size + int64(src.ChunkSize) - 1) / int64(src.ChunkSize))
	f, err := os.OpenFile(filepath.Join(dir, "artifact.part"), os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return 0, fmt.Errorf("%w: %v", errBroken, err)
	}
	defer f.Close()

	index, _ := os.ReadFile(filepath.Join(dir, "index"))
	if !digestIs(index, src.IndexSHA256) {
		index = nil
	}
	// What is on disk is checked against the index again: a power cut may have left a chunk
	// half written.
	have := 0
	if index != nil {
		have = verifiedChunks(f, index, src.ChunkSize, chunks, m.Size)
	}
	off := int64(have) * int64(src.ChunkSize)
	if have > 0 {
		a.log.Info("resuming the update download", "version", m.Version, "bytes", off, "size", m.Size)
	}
	if err := f.Truncate(off); err != nil {
		return 0, fmt.Errorf("%w: %v", errBroken, err)
	}
	if have == chunks {
		return off, a.checkWhole(f, m)
	}

	conn, err := a.fetcher(ctx)
	if err != nil {
		return off, err
	}
	defer conn.Close()
	if index == nil {
		if index, err = fetch(ctx, conn, contract.UpdateIndexTopic(src.Topic)); err != nil {
			return off, err
		}
		if !digestIs(index, src.IndexSHA256) || len(index) != 32*chunks {
			return off, fmt.Errorf("%w: the chunk index on %s does not match the command: publish the release again", errBroken, src.Topic)
		}
		if err := atomicfile.Write(filepath.Join(dir, "index"), index, 0o640); err != nil {
			return off, fmt.Errorf("%w: %v", errBroken, err)
		}
	}
	lastShown := -1
	for n := have; n < chunks; n++ {
		want := int64(src.ChunkSize)
		if rest := m.Size - int64(n)*want; rest < want {
			want = rest
		}
		var data []byte
		for try := 0; ; try++ {
			if data, err = fetch(ctx, conn, contract.UpdateChunkTopic(src.Topic, n)); err != nil {
				return off, err
			}
			sum := sha256.Sum256(data)
			if int64(len(data)) == want && bytes.Equal(sum[:], index[32*n:32*n+32]) {
				break
			}
			if try+1 >= chunkRetries {
				return off, fmt.Errorf("%w: chunk %d of %s does not match its index: publish the release again", errBroken, n, m.Version)
			}
		}
		if _, err := f.WriteAt(data, off); err != nil {
			return off, fmt.Errorf("%w: writing the download: %v", errBroken, err)
		}
		off += int64(len(data))
		faultPoint("update.chunk." + strconv.Itoa(n)) // the fault-injection suite dies here to test resuming
		if pct := int(off * 10 / m.Size); pct != lastShown {
			lastShown = pct
			a.setUpdate(contract.UpdateStatus{State: contract.UpdateDownloading, Version: m.Version, Previous: a.opts.Version,
				Progress: fmt.Sprintf("%d/%d", off, m.Size)})
		}
	}
	return off, a.checkWhole(f, m)
}

// fetch is one message, bounded by fetchTimeout.
func fetch(ctx context.Context, conn ChunkFetcher, topic string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	return conn.Fetch(ctx, topic)
}

func digestIs(b []byte, hexSum string) bool {
	if b == nil {
		return false
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:]) == hexSum
}

// verifiedChunks counts the chunks at the start of f that match the index.
func verifiedChunks(f *os.File, index []byte, chunkSize, chunks int, size int64) int {
	buf := make([]byte, chunkSize)
	for n := 0; n < chunks; n++ {
		want := int64(chunkSize)
		if rest := size - int64(n)*want; rest < want {
			want = rest
		}
		k, err := f.ReadAt(buf[:want], int64(n)*int64(chunkSize))
		if int64(k) != want || (err != nil && !errors.Is(err, io.EOF)) {
			return n
		}
		if s := sha256.Sum256(buf[:k]); !bytes.Equal(s[:], index[32*n:32*n+32]) {
			return n
		}
	}
	return chunks
}

// checkWhole checks the complete file against the signed manifest.
func (a *Agent) checkWhole(f *os.File, m contract.Manifest) error {
	if err := f.Sync(); err != nil {
		return fmt.Errorf("%w: %v", errBroken, err)
	}
	h := sha256.New()
	n, err := io.Copy(h, io.NewSectionReader(f, 0, m.Size+1))
	if err != nil {
		return fmt.Errorf("%w: %v", errBroken, err)
	}
	if n != m.Size || hex.EncodeToString(h.Sum(nil)) != m.SHA256 {
		_ = f.Truncate(0)
		return fmt.Errorf("%w: the artifact does not match the signed manifest of %s (sha256)", errBroken, m.Version)
	}
	return nil
}

// failDownload ends a download that cannot succeed.
func (a *Agent) failDownload(version string, e *commandError) {
	_ = os.RemoveAll(a.downloadDir())
	a.updateFailed(version, e)
}

// install moves the checked artifact to versions/<V>/station, makes it the pending version and
// stops the agent for a restart, which the launcher turns into a start of the new version.
func (a *Agent) install(job *updateJob) {
	m := job.Manifest
	dir := a.downloadDir()
	part := filepath.Join(dir, "artifact.part")
	dst := release.BinaryPath(a.cfg.DataDir, m.Version)
	fail := func(err error) {
		a.failDownload(m.Version, cmdErr(contract.CodeFailed, "installing %s: %v", m.Version, err))
	}
	if err := os.Chmod(part, 0o755); err != nil {
		fail(err)
		return
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o750); err != nil {
		fail(err)
		return
	}
	if err := atomicfile.Commit(part, dst); err != nil {
		fail(err)
		return
	}
	st, err := release.ReadState(a.cfg.DataDir)
	if err != nil {
		fail(err)
		return
	}
	st.Pending, st.Attempts, st.Outcome = m.Version, 0, nil
	st.Previous = a.opts.Version
	st.BrokerRequired = a.link.Stats().Connected
	if err := release.WriteState(a.cfg.DataDir, st); err != nil {
		fail(err)
		return
	}
	_ = os.RemoveAll(dir)
	_ = atomicfile.SyncDir(release.Dir(a.cfg.DataDir))
	a.log.Info("update installed: restarting into it", "version", m.Version, "previous", a.opts.Version)
	a.setUpdate(contract.UpdateStatus{State: contract.UpdatePending, Version: m.Version, Previous: a.opts.Version})
	a.stop(ErrRestart)
}

// diskFree returns the bytes free for an unprivileged user on dir's file system.
func diskFree(dir string) (int64, bool) {
	var fs unix.Statfs_t
	if unix.Statfs(dir, &fs) != nil {
		return 0, false
	}
	return int64(fs.Bavail) * int64(fs.Bsize), true
}
