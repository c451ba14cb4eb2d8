//go:build faults

package faulttest

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"station.dev/agent/agent/contract"
)

// TestBrokerDropsRecords: an ACL mistake denies the station's events while everything else works
// (Mosquitto under MQTT 3.1.1 acknowledges the denied publishes and drops them). The station keeps
// its records, says so in its local status, the log and its retained status, and delivers them
// all by itself once the ACL is fixed.
func TestBrokerDropsRecords(t *testing.T) {
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		t.Skip("needs mosquitto: ", err)
	}
	dir := t.TempDir()
	port := freePort(t)
	url := fmt.Sprintf("tcp://127.0.0.1:%d", port)
	s := newSpec(t, url)
	s.TOML = fmt.Sprintf("keepalive = \"5s\"\nusername = %q\n", s.StationID)
	base := s.Prefix + "/" + s.StationID
	acl := func(events string) string {
		return fmt.Sprintf("topic read %[1]s/#\n\nuser %[2]s\ntopic %[3]s %[4]s/events\ntopic readwrite %[4]s/status\n"+
			"topic readwrite %[4]s/telemetry\ntopic readwrite %[4]s/resp\ntopic read %[4]s/cmd\ntopic read %[1]s/_fleet/cmd\n",
			s.Prefix, s.StationID, events, base)
	}
	aclFile := filepath.Join(dir, "acl")
	if err := os.WriteFile(aclFile, []byte(acl("read")), 0o644); err != nil {
		t.Fatal(err)
	}
	user := ""
	if os.Geteuid() == 0 {
		user = "user root\n"
	}
	conf := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n%sacl_file %s\nlog_dest file %s\nlog_type all\n",
		port, user, aclFile, filepath.Join(dir, "broker.log"))
	if err := os.WriteFile(filepath.Join(dir, "mosquitto.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	mq := exec.Command(bin, "-c", filepath.Join(dir, "mosquitto.conf"))
	if err := mq.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		mq.Process.Kill() // the PID this test started
		mq.Wait()
	})
	if !eventually(20*time.Second, 20*time.Millisecond, func() bool {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}) {
		t.Fatal("mosquitto does not listen")
	}

	events := observe(t, url, base+"/events")
	status := observe(t, url, base+"/status")
	a := startAgent(t, s)
	want := map[string]bool{}
	for _, l := range a.MustTap("--count", "5") {
		want[l.ID] = true
	}

	var st contract.Status
	if !eventually(time.Minute, 200*time.Millisecond, func() bool {
		out, _, code := a.CLI("status", "--json")
		st = contract.Status{}
		return code == 0 && json.Unmarshal([]byte(out), &st) == nil && st.Link != nil && st.Link.Alarm != ""
	}) {
		t.Fatal("no alarm in `station status` while the broker drops the records")
	}
	t.Logf("local status: link.alarm = %q, queue depth %d", st.Link.Alarm, st.Queue.Depth)
	if st.Queue.Depth < 5 {
		t.Fatalf("queue depth %d while the broker dropped the records: they were deleted", st.Queue.Depth)
	}
	if !strings.Contains(a.Log(), "ALARM") {
		t.Error("the log does not raise the alarm")
	}
	status.waitFor(time.Minute, "the retained status carrying the alarm", func(msgs []observed) bool {
		for _, m := range msgs {
			if strings.Contains(string(m.Payload), `"broker_link"`) {
				return true
			}
		}
		return false
	})
	b, _ := os.ReadFile(filepath.Join(dir, "broker.log"))
	if !strings.Contains(string(b), "Denied PUBLISH") {
		t.Fatal("Mosquitto denied nothing: the test tested nothing")
	}

	// The ACL is fixed: delivery resumes by itself.
	if err := os.WriteFile(aclFile, []byte(acl("readwrite")), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := mq.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	events.waitIDs(want, 2*time.Minute)
	if !eventually(time.Minute, 200*time.Millisecond, func() bool {
		out, _, code := a.CLI("status", "--json")
		st = contract.Status{}
		return code == 0 && json.Unmarshal([]byte(out), &st) == nil && st.Link != nil && st.Link.Alarm == "" && st.Queue.Depth == 0
	}) {
		t.Fatalf("after the ACL was fixed: alarm %q, queue depth %d", st.Link.Alarm, st.Queue.Depth)
	}
}
