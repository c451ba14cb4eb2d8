package mqtt_test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"station.dev/agent/mqtt"
	"station.dev/agent/mqtt/brokertest"
	"station.dev/agent/mqtt/internal/mqtttest"
)

// rabbit is a RabbitMQ node of the test's own (Debian's rabbitmq-server with its MQTT plugin):
// every port free and on loopback (AMQP, MQTT, Erlang distribution, and an epmd of its own), its
// files in the test's directory. It takes about 10 s to start.
type rabbit struct {
	t        *testing.T
	dir      string
	env      []string
	mqttAddr string
	epmdPort int
	cmd      *exec.Cmd
}

const rabbitBin = "/usr/lib/rabbitmq/bin/"

func freeLoopbackPort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func startRabbit(t *testing.T) *rabbit {
	t.Helper()
	if testing.Short() {
		t.Skip("RabbitMQ takes its time to start: not under -short")
	}
	if _, err := os.Stat(rabbitBin + "rabbitmq-server"); err != nil {
		t.Skip("needs RabbitMQ (apt-get install rabbitmq-server): ", err)
	}
	r := &rabbit{t: t, dir: t.TempDir(), epmdPort: freeLoopbackPort(t)}
	amqp, mq, dist := freeLoopbackPort(t), freeLoopbackPort(t), freeLoopbackPort(t)
	r.mqttAddr = fmt.Sprintf("127.0.0.1:%d", mq)
	conf := fmt.Sprintf("listeners.tcp.default = 127.0.0.1:%d\nmqtt.listeners.tcp.default = 127.0.0.1:%d\n"+
		"mqtt.allow_anonymous = false\nloopback_users = none\n", amqp, mq)
	if err := os.WriteFile(filepath.Join(r.dir, "rabbitmq.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(r.dir, "enabled_plugins"), []byte("[rabbitmq_mqtt].\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	node := fmt.Sprintf("stationtest%d@localhost", os.Getpid())
	r.env = append(os.Environ(),
		"HOME="+r.dir, // its Erlang cookie
		"RABBITMQ_NODENAME="+node,
		fmt.Sprintf("RABBITMQ_NODE_PORT=%d", amqp),
		fmt.Sprintf("RABBITMQ_DIST_PORT=%d", dist),
		fmt.Sprintf("ERL_EPMD_PORT=%d", r.epmdPort),
		"ERL_EPMD_ADDRESS=127.0.0.1",
		"RABBITMQ_CONFIG_FILE="+filepath.Join(r.dir, "rabbitmq.conf"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(r.dir, "enabled_plugins"),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(r.dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(r.dir, "log"),
		"RABBITMQ_PID_FILE="+filepath.Join(r.dir, "rabbit.pid"),
	)
	log, err := os.Create(filepath.Join(r.dir, "server.out"))
	if err != nil {
		t.Fatal(err)
	}
	r.cmd = exec.Command(rabbitBin + "rabbitmq-server")
	r.cmd.Env, r.cmd.Stdout, r.cmd.Stderr = r.env, log, log
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.ctl("stop") // the node and its Erlang VM
		r.cmd.Process.Kill()
		r.cmd.Wait()
		// The epmd of this node's port, started by the VM.
		exec.Command("epmd", "-port", fmt.Sprint(r.epmdPort), "-kill").Run()
		log.Close()
		if t.Failed() {
			b, _ := os.ReadFile(log.Name())
			t.Logf("rabbitmq-server output (last 3000 bytes):\n%s", b[max(0, len(b)-3000):])
		}
	})
	// await_startup fails at once while the node is not registered yet: poll it.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		out, err := r.ctlErr("await_startup", "--timeout", "60")
		if err == nil {
			return r
		}
		if time.Now().After(deadline) || r.cmd.ProcessState != nil {
			t.Fatalf("rabbitmq did not start: %v: %s", err, out)
		}
		time.Sleep(500 * time.Millisecond) // polling another process: nothing to wait on
	}
}

func (r *rabbit) ctlErr(args ...string) (string, error) {
	cmd := exec.Command(rabbitBin+"rabbitmqctl", args...)
	cmd.Env = r.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (r *rabbit) ctl(args ...string) {
	if out, err := r.ctlErr(args...); err != nil {
		r.t.Errorf("rabbitmqctl %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// TestRabbitMQRefusedPublishesStay: the same proof as on Mosquitto, against RabbitMQ's MQTT
// plugin with a topic permission that denies the station's events: nothing is deleted, and the
// records arrive once the permission is granted.
func TestRabbitMQRefusedPublishesStay(t *testing.T) {
	r := startRabbit(t)
	station := "station-" + brokertest.UniquePrefix(t)
	prefix := "stations/" + station
	key := strings.ReplaceAll(prefix, "/", `\.`) // MQTT topics are routing keys with dots
	for _, u := range []string{station, "observer"} {
		r.ctl("add_user", u, "pw-"+u)
		r.ctl("set_permissions", "-p", "/", u, ".*", ".*", ".*")
	}
	r.ctl("set_topic_permissions", "-p", "/", station, "amq.topic", "^"+key+`\.status$`, ".*")

	obs := brokertest.Connect(t, "tcp://"+r.mqttAddr, &brokertest.ClientOptions{Username: "observer", Password: "pw-observer"})
	obs.Subscribe(prefix + "/events")

	out := mqtttest.NewMemOutbox()
	out.Add(events, 5, func(seq uint64) []byte { return mqtttest.Payload(seq, 200) })
	cfg := mqtt.Config{
		Broker: "tcp://" + r.mqttAddr, ClientID: station, Username: station, Password: "pw-" + station,
		KeepAlive: 2 * time.Second, ConnectTimeout: 5 * time.Second,
		BackoffMin: 50 * time.Millisecond, BackoffMax: 500 * time.Millisecond,
		Streams: []mqtt.Stream{{Name: events, Topic: prefix + "/events", QoS: 1}},
	}
	l, _ := run(t, cfg, out)
	st := mqtttest.WaitStats(t, l, "two attempts at publishing", func(s mqtt.Stats) bool {
		return s.Published >= 10 && (s.Failures >= 2 || s.Alarm != "")
	})
	t.Logf("while denied: %+v", st)
	if n := out.Len(events); n != 5 {
		t.Fatalf("%d of 5 items left while RabbitMQ denied them", n)
	}

	r.ctl("set_topic_permissions", "-p", "/", station, "amq.topic", ".*", ".*")
	out.WaitEmpty(t)
	for want := uint64(1); want <= 5; want++ {
		m := obs.Next(t, mqtttest.Timeout)
		if got, _ := mqtttest.SeqOf(m.Payload); got != want {
			t.Fatalf("observer got seq %d, want %d", got, want)
		}
	}
}
