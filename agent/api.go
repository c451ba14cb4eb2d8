package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"station.dev/agent/agent/contract"
	"station.dev/agent/store"
)

// The local API (DESIGN §3.6): HTTP over the unix socket, paths under /api/v0/. The CLI is a thin
// client of it. Errors are JSON objects {"error":"…"} with a fitting HTTP status.

type apiServer struct {
	a   *Agent
	ln  net.Listener
	srv *http.Server
}

func newAPIServer(a *Agent, ln net.Listener) *apiServer {
	s := &apiServer{a: a, ln: ln}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+contract.PathStatus, s.status)
	mux.HandleFunc("GET "+contract.PathQueue, s.queue)
	mux.HandleFunc("GET "+contract.PathEvents, s.events)
	mux.HandleFunc("POST "+contract.PathRecords, s.submit)
	mux.HandleFunc("POST "+contract.PathTap, s.tap)
	mux.HandleFunc("GET "+contract.PathSelfTest, s.selftest)
	mux.HandleFunc("POST "+contract.PathSimDoor, s.simDoor)
	mux.HandleFunc("POST "+contract.PathSimEnv, s.simEnv)
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return s
}

func (s *apiServer) serve(ctx context.Context) error {
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = s.srv.Shutdown(sctx) // closes the listener, which removes the socket file
		_ = s.srv.Close()
	}()
	s.srv.BaseContext = func(net.Listener) context.Context { return ctx }
	if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

func (s *apiServer) status(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.a.status(contract.StateOnline, ""))
}

func (s *apiServer) queue(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.a.queueStatus())
}

// events writes recent records as JSON lines; with follow=1 it keeps the response open and
// streams new records as they are written.
func (s *apiServer) events(w http.ResponseWriter, r *http.Request) {
	n, _ := strconv.Atoi(r.URL.Query().Get("n"))
	if n <= 0 {
		n = 20
	}
	follow := r.URL.Query().Get("follow") == "1"
	var ch chan []byte
	if follow {
		ch = s.a.recent.follow()
		defer s.a.recent.unfollow(ch)
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	flusher, _ := w.(http.Flusher)
	for _, b := range s.a.recent.last(n) {
		_, _ = w.Write(append(b[:len(b):len(b)], '\n'))
	}
	if !follow {
		return
	}
	if flusher != nil {
		flusher.Flush()
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case b, ok := <-ch:
			if !ok {
				return // fell behind; the client reconnects if it wants more
			}
			if _, err := w.Write(append(b[:len(b):len(b)], '\n')); err != nil {
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
	}
}

func (s *apiServer) submit(w http.ResponseWriter, r *http.Request) {
	var req contract.SubmitRequest
	if err := decodeBody(r, contract.MaxSubmitBytes, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if !contract.ValidSubmittedType(req.Type) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("bad record type %q: want dotted lower-case words like kiosk.receipt", req.Type))
		return
	}
	rec := s.a.newRecord(req.Type)
	rec.Data = req.Data
	saved, err := s.a.appendRecord(rec, store.Normal)
	if noRoom(err) {
		s.a.storeFull(err)
		writeError(w, http.StatusInsufficientStorage, refusal(err))
		return
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, "not recorded: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, contract.TapResult{OK: true, ID: saved.ID, Seq: saved.Seq, Type: saved.Type})
}

// tap streams one contract.TapResult per presentation as JSON lines, each once its record is durable.
func (s *apiServer) tap(w http.ResponseWriter, r *http.Request) {
	if s.a.sim == nil {
		writeError(w, http.StatusConflict, "tap needs an agent started with --sim")
		return
	}
	var req contract.TapRequest
	if err := decodeBody(r, 1<<20, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.Count == 0 {
		req.Count = 1
	}
	if req.Count < 0 || req.Count > contract.MaxTapCount {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("count must be 1 to %d", contract.MaxTapCount))
		return
	}
	prof, err := s.a.sim.profile(req.Card, req.Profile)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	for i := 0; i < req.Count; i++ {
		res, err := s.a.sim.tap(r.Context(), prof, req.Same)
		if err != nil {
			res = contract.TapResult{Error: err.Error()}
		}
		if enc.Encode(res) != nil {
			return
		}
		if flusher != nil {
			flusher.Flush()
		}
		if r.Context().Err() != nil {
			return
		}
	}
}

func (s *apiServer) selftest(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.a.selfTest())
}

func (s *apiServer) simDoor(w http.ResponseWriter, r *http.Request) {
	var req contract.SimDoorRequest
	if err := decodeBody(r, 64<<10, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := s.a.simDoor(req.Open); err != nil {
		writeError(w, http.StatusConflict, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
}

func (s *apiServer) simEnv(w http.ResponseWriter, r *http.Request) {
	var req contract.SimEnvRequest
	if err := decodeBody(r, 64<<10, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.TempC < -40 || req.TempC > 85 || req.Humidity != nil && (*req.Humidity < 0 || *req.Humidity > 100) {
		writeError(w, http.StatusBadRequest, "out of the sensor's range: -40 to 85 °C, 0 to 100 % humidity")
		return
	}
	if err := s.a.simEnv(req.TempC, req.Humidity); err != nil {
		writeError(w, http.StatusConflict, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
}

// decodeBody reads a JSON request body of at most limit bytes into v; unknown fields are errors.
func decodeBody(r *http.Request, limit int64, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, limit))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("bad request body: %w", err)
	}
	return nil
}
