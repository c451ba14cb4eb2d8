package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// leafPages returns the leaf pages of stream st's tree in the newest
// snapshot of the closed or open file at path, in key order.
func leafPages(t *testing.T, path string, st Stream) []uint64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size, err := fileSize(f)
	if err != nil {
		t.Fatal(err)
	}
	metas, err := readMetas(f, size)
	if err != nil {
		t.Fatal(err)
	}
	r := openPages(f, size, metas[0])
	w := newWalker(r)
	var root uint64
	w.tree(metas[0].root, func(e leafElem) {
		if bytes.Equal(e.key, recordBucketName(st)) {
			root = leU64(e.value)
		}
	})
	if root == 0 {
		t.Fatalf("stream %s has no tree of its own (inline or missing)", st)
	}
	var leaves []uint64
	var visit func(id uint64)
	visit = func(id uint64) {
		p, err := r.page(id)
		if err != nil {
			t.Fatal(err)
		}
		if p[8]&flagLeaf != 0 {
			leaves = append(leaves, id)
			return
		}
		elems, err := parseBranch(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range elems {
			visit(e.pgid)
		}
	}
	visit(root)
	return leaves
}

func leU64(b []byte) uint64 {
	var v uint64
	for i := 7; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}

// clearPageFlags damages page id of the file at path as the issue found it:
// its flags cleared, so it is neither a branch nor a leaf. It returns how
// many elements the page held.
func clearPageFlags(t *testing.T, path string, id uint64) int {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	hdr := make([]byte, pageHeaderLen)
	if _, err := f.ReadAt(hdr, int64(id)*4096); err != nil {
		t.Fatal(err)
	}
	n := int(hdr[10]) | int(hdr[11])<<8
	if _, err := f.WriteAt([]byte{0, 0}, int64(id)*4096+8); err != nil {
		t.Fatal(err)
	}
	return n
}

// alarmPayload is the test's store.recovered alarm.
func alarmPayload(r Recovery, seq uint64) ([]byte, error) {
	return json.Marshal(map[string]any{"type": "store.recovered", "seq": seq, "salvaged": r.Salvaged, "lost": r.Lost})
}

// A leaf in the middle of a store past the open check's old size limit,
// its flags cleared: Open used to succeed, and then every read of that page
// panicked (a crash loop under Restart=always). Now Open finds it, salvages
// every other record with its seq, and the sequence continues.
func TestDamagedMiddleLeafSalvagedAtOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := Open(path, &Options{CheckMaxBytes: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	const n = 3000
	fill(t, s, Events, n, make([]byte, 300))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	leaves := leafPages(t, path, Events)
	lost := clearPageFlags(t, path, leaves[len(leaves)/2])

	s = openStore(t, path, &Options{CheckMaxBytes: 64 << 10, RecoveryAlarm: alarmPayload})
	rec := s.Recovered()
	if rec == nil {
		t.Fatal("a damaged leaf was not found at open")
	}
	if rec.Salvaged != n-lost || rec.Lost != lost || rec.SeqRestarted {
		t.Fatalf("recovery %+v, want %d salvaged and %d lost, seq continued", rec, n-lost, lost)
	}
	got := readAll(t, s, Events)
	if len(got) != n-lost+1 {
		t.Fatalf("%d records after the salvage, want %d and the alarm", len(got), n-lost)
	}
	if last := got[len(got)-1]; last.Seq != n+1 || rec.AlarmSeq != n+1 || !strings.Contains(string(last.Payload), "store.recovered") {
		t.Fatalf("last record %d %q (alarm seq %d), want the alarm at seq %d", last.Seq, last.Payload, rec.AlarmSeq, n+1)
	}
	if r := mustAppend(t, s, Events, Normal, 20); r.Seq != n+2 {
		t.Fatalf("next seq %d, want %d", r.Seq, n+2)
	}
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
}

// The same damage met while the store is open: the read that meets it is
// contained (no panic), the store is salvaged and reopened with the alarm,
// and the agent's next append works.
func TestCorruptionAtRunTimeContained(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s := openStore(t, path, &Options{RecoveryAlarm: alarmPayload})
	const n = 3000
	fill(t, s, Events, n, make([]byte, 300))
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
	leaves := leafPages(t, path, Events)
	lost := clearPageFlags(t, path, leaves[len(leaves)/2]) // the map shares the page: bbolt sees it

	got := readAll(t, s, Events)
	rec := s.Recovered()
	if rec == nil {
		t.Fatal("no recovery after reading a damaged page")
	}
	if rec.Lost != lost || len(got) != n-lost+1 || got[len(got)-1].Seq != n+1 {
		t.Fatalf("recovery %+v, %d records read (last %d); want %d lost and the alarm at %d", rec, len(got), got[len(got)-1].Seq, lost, n+1)
	}
	if r := mustAppend(t, s, Events, Normal, 20); r.Seq != n+2 {
		t.Fatalf("next seq %d, want %d", r.Seq, n+2)
	}
	if st, err := s.Stats(); err != nil || st.Recoveries != 1 {
		t.Fatalf("stats %+v, %v: want one recovery", st, err)
	}
	if files, _ := s.BrokenFiles(); len(files) != 1 || files[0].Bytes == 0 {
		t.Fatalf("broken files %+v, want the damaged one", files)
	}
}

// The alarm is in the transaction that completes the new store: a process
// that ends right after Open (before anything else could write it) leaves
// it in the store.
func TestRecoveryAlarmInNewStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	if err := os.WriteFile(path, bytes.Repeat([]byte{0xAB}, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Open(path, &Options{RecoveryAlarm: alarmPayload})
	if err != nil {
		t.Fatal(err)
	}
	// What a crash right after Open leaves: no Close, the lock released.
	s.db.Close()
	s2 := openStore(t, path, nil)
	if s2.Recovered() != nil {
		t.Fatal("the new store was salvaged again")
	}
	got := readAll(t, s2, Events)
	if len(got) != 1 || got[0].Seq != 1 || !strings.Contains(string(got[0].Payload), "store.recovered") {
		t.Fatalf("records after the salvage: %+v, want the alarm at seq 1", got)
	}
}

// Under an address-space limit too low to map the file, Open used to take
// the healthy file for broken and start an empty store at seq 1. Now it
// fails with the system's error and leaves the file alone. The open runs in
// a child process whose RLIMIT_AS is set just above what it uses.
func TestNoMemoryLeavesFile(t *testing.T) {
	if p := os.Getenv("STORE_TEST_ENOMEM_PATH"); p != "" {
		openUnderAddressLimit(p)
		return
	}
	if raceEnabled {
		t.Skip("the race detector's shadow memory makes an address-space limit meaningless")
	}
	if os.Getenv("STATION_TEST_QEMU") != "" {
		t.Skip("under qemu user emulation the address-space limit applies to the emulator, not to the store's map")
	}
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	fill(t, s, Events, 1200, make([]byte, 30<<10)) // ~40 MiB: a 64 MiB map
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestNoMemoryLeavesFile$")
	cmd.Env = append(os.Environ(), "STORE_TEST_ENOMEM_PATH="+path)
	out, err := cmd.CombinedOutput()
	t.Logf("child: %s", out)
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	if !strings.Contains(string(out), "open failed:") || !strings.Contains(string(out), "cannot allocate memory") {
		t.Fatalf("Open under the limit did not fail with ENOMEM")
	}
	if m, _ := filepath.Glob(path + ".broken-*"); len(m) != 0 {
		t.Fatalf("a healthy file was taken for broken: %v", m)
	}
	after, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(before, after) {
		t.Fatalf("the file changed (%v)", err)
	}
	s = openStore(t, path, nil)
	if st, err := s.Stats(); err != nil || st.Streams[Events].Depth != 1200 {
		t.Fatalf("after the limit is gone: %+v, %v", st.Streams[Events], err)
	}
}

func openUnderAddressLimit(path string) {
	// Reserve heap address space first and free it: the open's own allocations (its check reads
	// every page) reuse it instead of asking for a new 64 MiB heap arena under the limit.
	ballast := make([]byte, 48<<20)
	ballast[len(ballast)-1] = 1
	runtime.KeepAlive(ballast)
	ballast = nil
	runtime.GC()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		fmt.Println("status:", err)
		return
	}
	var vm int64
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmSize:" {
			vm, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	// Room for a little more, but not for the 64 MiB map; a low GC target keeps the heap
	// within what was reserved.
	debug.SetGCPercent(10)
	lim := uint64(vm<<10) + 32<<20
	if err := syscall.Setrlimit(syscall.RLIMIT_AS, &syscall.Rlimit{Cur: lim, Max: lim}); err != nil {
		fmt.Println("setrlimit:", err)
		return
	}
	s, err := Open(path, nil)
	if err != nil {
		fmt.Println("open failed:", err)
		return
	}
	fmt.Println("open succeeded; recovered:", s.Recovered() != nil)
	s.Close()
}
