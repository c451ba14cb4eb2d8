package localapi

import (
	"context"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"

	"station.dev/agent/agent/contract"
)

// peer is the kernel's word on who opened a connection: the credentials of the socket's peer
// (SO_PEERCRED) when it connected.
type peer struct {
	ok       bool
	uid, pid int
}

type peerKey struct{}

// connContext stores the peer of c in the context of the connection's requests. Serve sets it as
// the server's ConnContext.
func connContext(ctx context.Context, c net.Conn) context.Context {
	if lc, ok := c.(*limitConn); ok { // the connection limit's wrapper (server.go)
		c = lc.Conn
	}
	return context.WithValue(ctx, peerKey{}, peerOf(c))
}

// sourceOf says which local program sent r: uid and pid from the socket, and the systemd unit
// the pid runs in, if any. Without credentials (not a unix socket) the uid is -1.
func sourceOf(r *http.Request) contract.Source {
	p, _ := r.Context().Value(peerKey{}).(peer)
	if !p.ok {
		return contract.Source{UID: -1}
	}
	return contract.Source{UID: p.uid, PID: p.pid, Unit: unitOf(p.pid)}
}

// unitOf returns the systemd unit process pid runs in, from its cgroup, or "".
func unitOf(pid int) string {
	if pid <= 0 {
		return ""
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return ""
	}
	return unitFromCgroup(string(b))
}

// unitFromCgroup picks the unit out of /proc/PID/cgroup: the last .service or .scope in the
// path of the unified hierarchy ("0::/system.slice/kiosk.service" is kiosk.service), or else of
// systemd's own v1 hierarchy (hybrid setups).
func unitFromCgroup(s string) string {
	var unified, v1 string
	for _, line := range strings.Split(s, "\n") {
		h, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		ctrl, p, ok := strings.Cut(rest, ":")
		switch {
		case !ok:
		case h == "0" && ctrl == "":
			unified = p
		case ctrl == "name=systemd":
			v1 = p
		}
	}
	if u := unitInPath(unified); u != "" {
		return u
	}
	return unitInPath(v1)
}

func unitInPath(path string) string {
	parts := strings.Split(path, "/")
	for i := len(parts) - 1; i >= 0; i-- {
		if strings.HasSuffix(parts[i], ".service") || strings.HasSuffix(parts[i], ".scope") {
			return parts[i]
		}
	}
	return ""
}
