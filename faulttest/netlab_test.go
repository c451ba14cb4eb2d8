//go:build faults

package faulttest

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// netLab is a network of the test's own: the broker in a network namespace, reached from the
// station (in the root namespace) over veth pairs through a packet forwarder of this package,
// which drops and delays Ethernet frames per direction. Observers reach the broker over a second
// veth pair that bypasses the forwarder.
//
//	root ns: <p>s 10.213.N.1/25  ──veth──  <p>m ns: <p>a ═ forwarder ═ <p>z  ──veth──  <p>b ns: <p>y 10.213.N.2/25 (Mosquitto)
//	root ns: <p>o 10.213.N.129/25 ───────────────────veth──────────────────────  <p>b ns: <p>q 10.213.N.130/25
//
// Nothing leaves the machine: the addresses are private, and before any link may go down the
// whole 10.213.N.0/24 is fenced in the root namespace with an unreachable route (metric 4000,
// above the veths' connected routes), so a packet for a vanished veth cannot fall through to the
// default route. Every namespace, veth and route it makes carries its unique prefix and is
// removed when the test ends; the forwarder and Mosquitto are stopped by their own handles.
type netLab struct {
	t                   testing.TB
	prefix              string // "sf" + 6 hex digits: interface names are at most 15 bytes
	net                 string // 10.213.N
	nsM, nsB            string
	StationIP, BrokerIP string // the faulty path
	ObserverIP          string // the broker's address on the clean path
	Port                int
	fwd                 *forwarder
	mosq                *exec.Cmd
	mosqLog             string
}

// needNetLab skips the test unless it runs as root with `ip netns`.
func needNetLab(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network-fault scenarios need root (network namespaces and veth pairs)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("network-fault scenarios need iproute2's ip: ", err)
	}
	if out, err := exec.Command("ip", "netns", "list").CombinedOutput(); err != nil {
		t.Skipf("ip netns is unavailable here: %v: %s", err, out)
	}
	if _, err := exec.LookPath("mosquitto"); err != nil {
		t.Skip("network-fault scenarios need mosquitto: ", err)
	}
}

var labNets sync.Mutex

// newNetLab builds the network and starts Mosquitto in the broker's namespace.
func newNetLab(t testing.TB) *netLab {
	t.Helper()
	needNetLab(t)
	var b [3]byte
	rand.Read(b[:])
	l := &netLab{t: t, prefix: "sf" + hex.EncodeToString(b[:]), Port: 20000 + int(binary.BigEndian.Uint16(b[1:])%20000)}
	l.nsM, l.nsB = l.prefix+"m", l.prefix+"b"
	labNets.Lock()
	l.net = l.freeSubnet()
	labNets.Unlock()
	l.StationIP, l.BrokerIP, l.ObserverIP = l.net+".1", l.net+".2", l.net+".130"
	t.Cleanup(l.teardown)

	p := l.prefix
	// The fence first: from here on, nothing for 10.213.N.0/24 can reach the default route.
	l.ip("route", "add", "unreachable", l.net+".0/24", "metric", "4000")
	l.ip("netns", "add", l.nsM)
	l.ip("netns", "add", l.nsB)
	l.ip("link", "add", p+"s", "type", "veth", "peer", "name", p+"a", "netns", l.nsM)
	l.ip("-n", l.nsM, "link", "add", p+"z", "type", "veth", "peer", "name", p+"y", "netns", l.nsB)
	l.ip("link", "add", p+"o", "type", "veth", "peer", "name", p+"q", "netns", l.nsB)
	l.ip("addr", "add", l.StationIP+"/25", "dev", p+"s")
	l.ip("addr", "add", l.net+".129/25", "dev", p+"o")
	l.ip("-n", l.nsB, "addr", "add", l.BrokerIP+"/25", "dev", p+"y")
	l.ip("-n", l.nsB, "addr", "add", l.ObserverIP+"/25", "dev", p+"q")
	// The forwarder copies whole frames: the endpoints must hand it finished ones (no checksum
	// left to the hardware, no segmentation offload).
	inNS("", func() error { return noOffload(p + "s") })
	inNS(l.nsB, func() error { return noOffload(p + "y") })
	for _, a := range [][]string{
		{"link", "set", p + "s", "up"}, {"link", "set", p + "o", "up"},
		{"-n", l.nsM, "link", "set", p + "a", "up"}, {"-n", l.nsM, "link", "set", p + "z", "up"},
		{"-n", l.nsB, "link", "set", "lo", "up"}, {"-n", l.nsB, "link", "set", p + "y", "up"},
		{"-n", l.nsB, "link", "set", p + "q", "up"},
	} {
		l.ip(a...)
	}
	var err error
	if l.fwd, err = startForwarder(l.nsM, p+"a", p+"z"); err != nil {
		t.Fatalf("netlab: forwarder: %v", err)
	}
	l.startMosquitto()
	return l
}

// freeSubnet picks 10.213.N.0/24 with N unused by any address or route here.
func (l *netLab) freeSubnet() string {
	addrs, _ := exec.Command("ip", "-4", "addr").Output()
	routes, _ := exec.Command("ip", "-4", "route", "show", "table", "all").Output()
	for range 200 {
		var b [1]byte
		rand.Read(b[:])
		n := fmt.Sprintf("10.213.%d", b[0])
		if !strings.Contains(string(addrs), n+".") && !strings.Contains(string(routes), n+".") {
			return n
		}
	}
	l.t.Fatal("netlab: no free 10.213.N.0/24")
	return ""
}

func (l *netLab) ip(args ...string) {
	l.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.t.Fatalf("netlab: ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// teardown stops what the lab started and removes what it made, by name.
func (l *netLab) teardown() {
	if l.mosq != nil && l.mosq.Process != nil {
		l.mosq.Process.Kill()
		l.mosq.Wait()
		if l.t.Failed() {
			b, _ := os.ReadFile(l.mosqLog)
			l.t.Logf("mosquitto log (last 3000 bytes):\n%s", b[max(0, len(b)-3000):])
		}
	}
	if l.fwd != nil {
		l.fwd.close()
	}
	// Deleting a namespace deletes its veths, and with them their peers in the root namespace.
	for _, a := range [][]string{
		{"link", "del", l.prefix + "s"}, {"link", "del", l.prefix + "o"},
		{"netns", "del", l.nsM}, {"netns", "del", l.nsB},
	} {
		exec.Command("ip", a...).Run() // may be gone already
	}
	if l.net != "" {
		exec.Command("ip", "route", "del", "unreachable", l.net+".0/24", "metric", "4000").Run()
	}
}

// startMosquitto runs Mosquitto in the broker's namespace, on the lab's port on both its
// addresses.
func (l *netLab) startMosquitto() {
	dir := l.t.TempDir()
	l.mosqLog = filepath.Join(dir, "mosquitto.log")
	conf := fmt.Sprintf("listener %d\nallow_anonymous true\npersistence false\nuser root\n"+
		"max_queued_messages 1000000\nmax_inflight_messages 0\nlog_dest file %s\nlog_type all\n", l.Port, l.mosqLog)
	cf := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
		l.t.Fatal(err)
	}
	// ip netns exec execs Mosquitto itself: the PID is Mosquitto's.
	l.mosq = exec.Command("ip", "netns", "exec", l.nsB, "mosquitto", "-c", cf)
	if err := l.mosq.Start(); err != nil {
		l.t.Fatalf("netlab: mosquitto: %v", err)
	}
	if !eventually(20*time.Second, 20*time.Millisecond, func() bool {
		c, err := net.DialTimeout("tcp", l.ObserverAddr(), time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}) {
		l.t.Fatal("netlab: mosquitto does not listen")
	}
}

// BrokerURL is the broker as the station reaches it: through the forwarder.
func (l *netLab) BrokerURL() string { return fmt.Sprintf("tcp://%s:%d", l.BrokerIP, l.Port) }

// ObserverURL is the broker on the clean path.
func (l *netLab) ObserverURL() string { return "tcp://" + l.ObserverAddr() }

func (l *netLab) ObserverAddr() string { return fmt.Sprintf("%s:%d", l.ObserverIP, l.Port) }

// SetLink takes the station's veth down or up (the fence catches its traffic meanwhile).
func (l *netLab) SetLink(up bool) {
	state := "down"
	if up {
		state = "up"
	}
	l.ip("link", "set", l.prefix+"s", state)
}

// Shape sets the forwarder's behaviour, both directions alike.
func (l *netLab) Shape(s shape) { l.fwd.set(s, s) }

// mosquittoLogged counts the lines of Mosquitto's log containing s.
func (l *netLab) mosquittoLogged(s string) int {
	b, _ := os.ReadFile(l.mosqLog)
	return strings.Count(string(b), s)
}

// inNS runs fn on an OS thread inside the named network namespace ("" for the current one). The
// thread is discarded afterwards, never reused in the wrong namespace.
func inNS(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // not unlocked: the thread ends with the goroutine
		if ns != "" {
			f, err := os.Open("/run/netns/" + ns)
			if err != nil {
				errc <- err
				return
			}
			defer f.Close()
			if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
				errc <- fmt.Errorf("setns %s: %w", ns, err)
				return
			}
		}
		errc <- fn()
	}()
	return <-errc
}

// noOffload turns off checksum offload and segmentation on an interface (ethtool's legacy
// ioctls: the machine has no ethtool).
func noOffload(ifname string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	const (
		ethtoolSTXCSUM = 0x17
		ethtoolSTSO    = 0x1f
		ethtoolSGSO    = 0x24
		ethtoolSGRO    = 0x2c
	)
	for _, cmd := range []uint32{ethtoolSTSO, ethtoolSGSO, ethtoolSGRO, ethtoolSTXCSUM} {
		v := struct{ cmd, data uint32 }{cmd, 0}
		var ifr struct {
			name [unix.IFNAMSIZ]byte
			data uintptr
			_    [16]byte
		}
		copy(ifr.name[:], ifname)
		ifr.data = uintptr(unsafe.Pointer(&v))
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); e != 0 {
			return fmt.Errorf("ethtool %#x on %s: %w", cmd, ifname, e)
		}
		runtime.KeepAlive(&v)
	}
	return nil
}

// shape is what the forwarder does to the frames of one direction.
type shape struct {
	Drop   bool          // drop everything (a black hole: half-open TCP connections)
	Loss   float64       // probability of dropping a frame
	Delay  time.Duration // added delay
	Jitter time.Duration // ± uniformly around Delay
}

// forwarder copies Ethernet frames between two interfaces of one namespace (AF_PACKET), and
// drops or delays them per direction.
type forwarder struct {
	fds    [2]int
	shapes [2]atomic.Pointer[shape]
	stop   atomic.Bool
	wg     sync.WaitGroup
	// Counted per direction (0: station to broker, 1: broker to station).
	passed, dropped [2]atomic.Uint64
}

func startForwarder(ns, a, z string) (*forwarder, error) {
	f := &forwarder{fds: [2]int{-1, -1}}
	for i := range f.shapes {
		f.shapes[i].Store(&shape{})
	}
	err := inNS(ns, func() error {
		for i, name := range []string{a, z} {
			ifi, err := net.InterfaceByName(name)
			if err != nil {
				return err
			}
			proto := htons(unix.ETH_P_ALL)
			fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto))
			if err != nil {
				return err
			}
			f.fds[i] = fd
			if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
				return err
			}
			// Wake up regularly to notice close.
			tv := unix.NsecToTimeval(int64(100 * time.Millisecond))
			if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		f.closeFDs()
		return nil, err
	}
	f.wg.Add(2)
	go f.pump(0)
	go f.pump(1)
	return f, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (f *forwarder) set(up, down shape) {
	f.shapes[0].Store(&up)
	f.shapes[1].Store(&down)
}

// pump forwards the frames arriving on fds[dir] to the other interface.
func (f *forwarder) pump(dir int) {
	defer f.wg.Done()
	in, out := f.fds[dir], f.fds[1-dir]
	rng := mrand.New(mrand.NewPCG(uint64(time.Now().UnixNano()), uint64(dir)))
	buf := make([]byte, 65536)
	for !f.stop.Load() {
		n, from, err := unix.Recvfrom(in, buf, 0)
		if err != nil {
			continue // the receive timeout, or an interrupted call
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue // what this forwarder itself sent
		}
		s := f.shapes[dir].Load()
		if s.Drop || (s.Loss > 0 && rng.Float64() < s.Loss) {
			f.dropped[dir].Add(1)
			continue
		}
		f.passed[dir].Add(1)
		frame := append([]byte(nil), buf[:n]...)
		d := s.Delay
		if s.Jitter > 0 {
			d += time.Duration((rng.Float64()*2 - 1) * float64(s.Jitter))
		}
		if d <= 0 {
			unix.Write(out, frame)
			continue
		}
		f.wg.Add(1)
		time.AfterFunc(d, func() {
			defer f.wg.Done()
			if !f.stop.Load() {
				unix.Write(out, frame)
			}
		})
	}
}

func (f *forwarder) close() {
	f.stop.Store(true)
	f.wg.Wait()
	f.closeFDs()
}

func (f *forwarder) closeFDs() {
	for _, fd := range f.fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}
