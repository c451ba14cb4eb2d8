package localapi

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"station.dev/agent/internal/jsonlimit"
)

// serve runs Serve on a fresh socket with h until the test ends, and returns the socket path.
func serve(t *testing.T, h http.Handler) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, h) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return path
}

func setLimits(t *testing.T, idle time.Duration, conns int) {
	oi, oc := idleTimeout, maxConns
	idleTimeout, maxConns = idle, conns
	t.Cleanup(func() { idleTimeout, maxConns = oi, oc })
}

func get(t *testing.T, c net.Conn) string {
	t.Helper()
	if _, err := io.WriteString(c, "GET /x HTTP/1.1\r\nHost: s\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// A connection that says nothing more is closed once idle, so idle clients cannot pile up.
func TestIdleConnectionIsClosed(t *testing.T) {
	setLimits(t, 100*time.Millisecond, 32)
	path := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := get(t, c); got != "ok" {
		t.Fatalf("response %q", got)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("read on an idle connection: %v, want EOF (closed by the server)", err)
	}
}

// At most maxConns connections are served at once: one more waits until one closes.
func TestConnectionLimit(t *testing.T) {
	setLimits(t, time.Minute, 2)
	path := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		get(t, c) // accepted and served
		held = append(held, c)
	}
	third, err := net.Dial("unix", path) // the kernel's backlog takes it
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	if _, err := io.WriteString(third, "GET /x HTTP/1.1\r\nHost: s\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = third.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	var ne net.Error
	if _, err := third.Read(make([]byte, 1)); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("a connection over the limit was served: %v", err)
	}
	held[0].Close()
	_ = third.SetReadDeadline(time.Time{})
	resp, err := http.ReadResponse(bufio.NewReader(third), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("after a connection closed: %v %v", resp, err)
	}
}

// A request body nested too deeply fails to decode before the decoder recurses.
func TestDeepBodyRefused(t *testing.T) {
	path := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var v any
		if err := json.NewDecoder(r.Body).Decode(&v); errors.Is(err, jsonlimit.ErrTooDeep) {
			http.Error(w, "too deep", http.StatusBadRequest)
			return
		}
		io.WriteString(w, "ok")
	}))
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}}
	deep := strings.Repeat(`{"a":`, 3000) + "1" + strings.Repeat("}", 3000)
	resp, err := c.Post("http://s/x", "application/json", strings.NewReader(deep))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("deep body: status %d", resp.StatusCode)
	}
	resp, err = c.Post("http://s/x", "application/json", strings.NewReader(`{"a":[1,{"b":2}]}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("shallow body: status %d", resp.StatusCode)
	}
}
