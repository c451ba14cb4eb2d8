package localapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"station.dev/agent/internal/jsonlimit"
)

// Listen listens on the unix socket at path, mode 0660 (root and the station group). A socket
// file left by a dead agent is replaced; one a live agent answers on is refused, so a second
// agent never steals the first one's socket.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("local API socket directory: %w", err)
	}
	if _, err := os.Lstat(path); err == nil {
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("another agent is already serving %s: stop it first (systemctl stop station)", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("removing stale socket %s: %w", path, err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("local API socket: %w", err)
	}
	// Root and the station group only. The directory (RuntimeDirectory=) is 0750 too.
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("local API socket: %w", err)
	}
	return ln, nil
}

// Limits of the local API server. Its clients are local programs (the CLI, kiosk software), but
// a stuck or hostile one must not hold the agent's resources: every connection gets deadlines,
// and there are at most maxConns at a time (further ones wait in the socket's backlog).
var (
	readTimeout  = 30 * time.Second // the whole request, body included
	writeTimeout = 30 * time.Second // each write of a response (follow streams write for long)
	idleTimeout  = 60 * time.Second // between requests on a kept-alive connection
	maxConns     = 32
)

// Serve serves h on ln until ctx ends, then shuts down (closing ln, which removes the socket
// file) and returns nil. Requests see ctx as their parent context. Request bodies nested more
// than jsonlimit.DefaultMaxDepth levels fail to decode before the decoder goes deep.
func Serve(ctx context.Context, ln net.Listener, h http.Handler) error {
	ln = &limitListener{Listener: ln, sem: make(chan struct{}, maxConns)}
	srv := &http.Server{
		Handler:           guard(h),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       readTimeout,
		IdleTimeout:       idleTimeout,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ConnContext:       connContext, // who is calling: SO_PEERCRED (peer.go)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err // the goroutine above ends with ctx, which the caller cancels on this error
	}
	<-done
	return nil
}

// guard gives each request a depth-limited body and a write deadline renewed before each write.
func guard(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil {
			r.Body = struct {
				io.Reader
				io.Closer
			}{jsonlimit.NewReader(r.Body, jsonlimit.DefaultMaxDepth), r.Body}
		}
		h.ServeHTTP(&deadlineWriter{ResponseWriter: w, rc: http.NewResponseController(w)}, r)
	})
}

// deadlineWriter sets the connection's write deadline before each write, so a client that stops
// reading is dropped after writeTimeout while a follow stream that writes now and then lives on.
type deadlineWriter struct {
	http.ResponseWriter
	rc *http.ResponseController
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	_ = d.rc.SetWriteDeadline(time.Now().Add(writeTimeout))
	return d.ResponseWriter.Write(p)
}

func (d *deadlineWriter) WriteHeader(code int) {
	_ = d.rc.SetWriteDeadline(time.Now().Add(writeTimeout))
	d.ResponseWriter.WriteHeader(code)
}

func (d *deadlineWriter) Flush() {
	_ = d.rc.SetWriteDeadline(time.Now().Add(writeTimeout))
	_ = d.rc.Flush()
}

// Unwrap lets http.ResponseController reach the server's writer.
func (d *deadlineWriter) Unwrap() http.ResponseWriter { return d.ResponseWriter }

// limitListener accepts at most cap(sem) connections at a time.
type limitListener struct {
	net.Listener
	sem chan struct{}
}

func (l *limitListener) Accept() (net.Conn, error) {
	l.sem <- struct{}{}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	return &limitConn{Conn: c, release: func() { <-l.sem }}, nil
}

type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
