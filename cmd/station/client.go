package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"station.dev/agent/agent/config"
	"station.dev/agent/agent/contract"
)

// client talks to a running agent's local API over its unix socket.
type client struct {
	socket string
	hc     *http.Client
}

func newClient(socket string) *client {
	if socket == "" {
		socket = config.ClientSocket()
	}
	return &client{socket: socket, hc: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}}
}

// do sends a request and returns the response body of a 2xx answer.
func (c *client) do(method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://station"+path, rd)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var ne *net.OpError
		if errors.As(err, &ne) {
			if errors.Is(err, os.ErrPermission) {
				return nil, fmt.Errorf("no permission to use the agent's socket %s: run as root or a member of the station group", c.socket)
			}
			return nil, fmt.Errorf("cannot reach the agent at %s: is it running? (systemctl status station, or pass --socket)", c.socket)
		}
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		var e struct {
			Error string `json:"error"`
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return nil, errors.New(e.Error)
		}
		return nil, fmt.Errorf("the agent answered %s", resp.Status)
	}
	return resp, nil
}

func (c *client) getJSON(path string, v any) error {
	resp, err := c.do("GET", path, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	return enc.Encode(v)
}

// clientFlags are the flags every client command has.
type clientFlags struct {
	socket string
	json   bool
}

func (f *clientFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.socket, "socket", "", "local API socket `path` (default: the running agent's)")
	fs.BoolVar(&f.json, "json", false, "print JSON")
}

func noArgs(fs *flag.FlagSet, args []string) error {
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("unexpected argument %q", pos[0])
	}
	return nil
}

func cmdStatus(args []string, stdout, _ io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	var f clientFlags
	f.register(fs)
	if err := noArgs(fs, args); err != nil {
		return err
	}
	var raw json.RawMessage
	if err := newClient(f.socket).getJSON(contract.PathStatus, &raw); err != nil {
		return err
	}
	if f.json {
		_, err := fmt.Fprintf(stdout, "%s\n", bytes.TrimSpace(raw))
		return err
	}
	var s contract.Status
	if err := json.Unmarshal(raw, &s); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	mode := ""
	if s.Sim {
		mode = " (simulation)"
	}
	fmt.Fprintf(tw, "station\t%s%s\tversion %s, up %s\n", s.StationID, mode, s.Version, (time.Duration(s.UptimeMS) * time.Millisecond).Round(time.Second))
	for _, w := range s.Insecure {
		fmt.Fprintf(tw, "INSECURE\t%s\t\n", w)
	}
	if s.Link != nil {
		state := "offline"
		if s.Link.Connected {
			state = "connected"
		}
		detail := fmt.Sprintf("%d connects, %d failures", s.Link.Connects, s.Link.Failures)
		if !s.Link.Connected && s.Link.LastError != "" {
			detail = s.Link.LastError
		}
		fmt.Fprintf(tw, "broker\t%s %s\t%s\n", s.Link.Broker, state, detail)
	}
	fmt.Fprintf(tw, "reader\t%s\t%s\n", s.Reader.State, healthDetail(s.Reader))
	for _, name := range []string{"indicator", "door", "environment", "display"} {
		c, ok := s.Components[name]
		if !ok {
			continue
		}
		detail := healthDetail(c)
		switch {
		case name == "indicator" && s.Indicator != nil:
			detail = joinNonEmpty(detail, fmt.Sprintf("showing %s (leds %s, buzzer %s)", s.Indicator.Pattern, s.Indicator.LEDs, onOff(s.Indicator.Buzzer)))
		case name == "door" && s.Door != nil:
			detail = joinNonEmpty(detail, map[bool]string{true: "OPEN", false: "closed"}[s.Door.Open])
		case name == "environment" && len(s.Environment) > 0:
			if t, ok := s.Environment["temp_c"]; ok {
				detail = joinNonEmpty(detail, fmt.Sprintf("%.1f°C", t))
			}
			if h, ok := s.Environment["humidity"]; ok {
				detail = joinNonEmpty(detail, fmt.Sprintf("%.0f%% RH", h))
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", name, c.State, detail)
	}
	q := s.Queue
	full := ""
	if q.Full {
		full = "  FULL: card records refused"
	}
	fmt.Fprintf(tw, "queue\t%d waiting\toldest %s, %s of %s%s\n", q.Depth,
		(time.Duration(q.OldestAgeS * float64(time.Second))).Round(time.Second), config.Size(q.Bytes).Human(), config.Size(q.MaxBytes).Human(), full)
	clock := "synchronised"
	if !s.ClockSynced {
		clock = "NOT synchronised (timestamps may be wrong)"
	}
	fmt.Fprintf(tw, "clock\t%s\t%s\n", clock, s.TS)
	return tw.Flush()
}

func healthDetail(h contract.ComponentHealth) string {
	var parts []string
	if h.Firmware != "" {
		parts = append(parts, "firmware "+h.Firmware)
	}
	if h.Detail != "" {
		parts = append(parts, h.Detail)
	}
	if h.LastError != "" && h.State != contract.HealthOK {
		parts = append(parts, "last error: "+h.LastError)
	}
	return strings.Join(parts, ", ")
}

func joinNonEmpty(a, b string) string {
	if a == "" {
		return b
	}
	return a + ", " + b
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func cmdQueue(args []string, stdout, _ io.Writer) error {
	fs := flag.NewFlagSet("queue", flag.ContinueOnError)
	var f clientFlags
	f.register(fs)
	if err := noArgs(fs, args); err != nil {
		return err
	}
	var q contract.QueueStatus
	if err := newClient(f.socket).getJSON(contract.PathQueue, &q); err != nil {
		return err
	}
	if f.json {
		return printJSON(stdout, q)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STREAM\tWAITING\tBYTES\tOLDEST\tLAST SEQ")
	for _, name := range []string{"events", "resp", "telemetry"} {
		s := q.Streams[name]
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\n", name, s.Depth, config.Size(s.Bytes).Human(),
			(time.Duration(s.OldestAgeS * float64(time.Second))).Round(time.Second), s.LastSeq)
	}
	fmt.Fprintf(tw, "total\t%d\t%s of %s\t\t(file %s, refused %d, evicted %d)\n", q.Depth, config.Size(q.Bytes).Human(), config.Size(q.MaxBytes).Human(), config.Size(q.FileBytes).Human(), q.Refused, q.Evicted)
	return tw.Flush()
}

func cmdEvents(args []string, stdout, _ io.Writer) error {
	fs := flag.NewFlagSet("events", flag.ContinueOnError)
	var f clientFlags
	f.register(fs)
	follow := fs.Bool("f", false, "follow: keep printing new records")
	n := fs.Int("n", 20, "how many recent records")
	if err := noArgs(fs, args); err != nil {
		return err
	}
	path := fmt.Sprintf("%s?n=%d", contract.PathEvents, *n)
	if *follow {
		path += "&follow=1"
	}
	resp, err := newClient(f.socket).do("GET", path, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if f.json {
			fmt.Fprintf(stdout, "%s\n", line)
			continue
		}
		var r contract.Record
		if json.Unmarshal(line, &r) != nil {
			continue
		}
		fmt.Fprintln(stdout, eventLine(&r))
	}
	return sc.Err()
}

func eventLine(r *contract.Record) string {
	s := fmt.Sprintf("%6d  %s  %-12s %s", r.Seq, r.TS, r.Type, r.ID)
	if r.Card != nil {
		who := r.Card.Masked
		if who == "" {
			who = r.Card.Kind + " " + r.Card.Token[:min(12, len(r.Card.Token))]
		}
		s += "  " + who
	}
	if r.Error != nil {
		s += "  " + r.Error.Code
	}
	return s
}

func cmdTap(args []string, stdout, _ io.Writer) error {
	fs := flag.NewFlagSet("tap", flag.ContinueOnError)
	var f clientFlags
	f.register(fs)
	card := fs.String("card", "", "built-in card `name` (unionpay-debit, unionpay-credit, random-uid, ntag)")
	cardFile := fs.String("card-file", "", "card profile `file` (JSON)")
	count := fs.Int("count", 1, "presentations")
	same := fs.Bool("same", false, "present the same card each time")
	if err := noArgs(fs, args); err != nil {
		return err
	}
	if *count < 1 {
		return usagef("--count must be at least 1")
	}
	req := contract.TapRequest{Card: *card, Count: *count, Same: *same}
	if *cardFile != "" {
		if *card != "" {
			return usagef("--card and --card-file do not go together")
		}
		b, err := os.ReadFile(*cardFile)
		if err != nil {
			return err
		}
		req.Profile = b
	}
	resp, err := newClient(f.socket).do("POST", contract.PathTap, req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	got, failed := 0, 0
	for {
		var r contract.TapResult
		if err := dec.Decode(&r); err == io.EOF {
			break
		} else if err != nil {
			return fmt.Errorf("reading the agent's answer: %w", err)
		}
		got++
		if !r.OK {
			failed++
		}
		if f.json {
			out := map[string]any{"ok": r.OK}
			if r.ID != "" {
				out["id"], out["seq"] = r.ID, r.Seq
			}
			if r.Error != "" {
				out["error"] = r.Error
			}
			if err := printJSON(stdout, out); err != nil {
				return err
			}
			continue
		}
		if r.OK {
			fmt.Fprintf(stdout, "recorded  seq %d  id %s\n", r.Seq, r.ID)
		} else if r.ID != "" {
			fmt.Fprintf(stdout, "%s  seq %d  id %s\n", r.Error, r.Seq, r.ID)
		} else {
			fmt.Fprintf(stdout, "%s\n", r.Error)
		}
	}
	if got < *count {
		return fmt.Errorf("the agent answered %d of %d presentations", got, *count)
	}
	if failed > 0 {
		return errSilent
	}
	return nil
}

func cmdConfig(args []string, stdout, _ io.Writer) error {
	fs := flag.NewFlagSet("config", flag.ContinueOnError)
	var rf runFlags
	rf.register(fs)
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	const usage = "want: station config show|check [FILE] | overrides | reset [KEY...]"
	if len(pos) == 0 {
		return usagef(usage)
	}
	switch pos[0] {
	case "show", "check":
		if len(pos) > 2 {
			return usagef(usage)
		}
		if len(pos) == 2 {
			if rf.config != "" && rf.config != pos[1] {
				return usagef("two config files given")
			}
			rf.config = pos[1]
		}
	case "overrides":
		if len(pos) != 1 {
			return usagef(usage)
		}
	case "reset":
	default:
		return usagef(usage)
	}
	cfg, err := rf.loadConfig()
	if err != nil {
		return err
	}
	switch pos[0] {
	case "check":
		fmt.Fprintf(stdout, "ok: station %s, broker %s, data in %s\n", cfg.StationID, cfg.MQTT.Broker, cfg.DataDir)
		for _, w := range cfg.Insecure(configuredKeys(cfg)) {
			fmt.Fprintf(stdout, "INSECURE: %s\n", w)
		}
		return nil
	case "overrides":
		return showOverrides(cfg, stdout)
	case "reset":
		return resetOverrides(cfg, pos[1:], stdout)
	}
	b, err := cfg.TOML()
	if err != nil {
		return err
	}
	_, err = stdout.Write(b)
	return err
}

// configuredKeys is the number of command keys a station with cfg runs with: those set by
// keys.set if any, else the file's.
func configuredKeys(cfg *config.Config) int {
	if keys, ok, err := config.ReadKeys(config.KeysPath(cfg.DataDir)); err == nil && ok {
		return len(keys)
	}
	return len(cfg.Commands.PublicKeys)
}

// keysKey names the keys set by keys.set for `station config reset`.
const keysKey = "commands.public_keys"

// showOverrides prints what the fleet changed remotely: the overrides of config.set and the
// command keys of keys.set, with the keys a station ignores marked.
func showOverrides(cfg *config.Config, stdout io.Writer) error {
	path := config.OverridesPath(cfg.DataDir)
	ov, err := config.ReadOverrides(path)
	if err != nil {
		return err
	}
	_, ignored := ov.Remote()
	bad := map[string]bool{}
	for _, k := range ignored {
		bad[k] = true
	}
	n := 0
	for _, k := range ov.Keys() {
		v, _ := ov.Lookup(k)
		note := ""
		if bad[k] {
			note = "   # ignored: not settable remotely"
		}
		fmt.Fprintf(stdout, "%s = %s%s\n", k, v, note)
		n++
	}
	if keys, ok, err := config.ReadKeys(config.KeysPath(cfg.DataDir)); err != nil {
		fmt.Fprintf(stdout, "%s: %v\n", keysKey, err)
		n++
	} else if ok {
		b, _ := json.Marshal(keys)
		fmt.Fprintf(stdout, "%s = %s   # set by keys.set, replaces the file's\n", keysKey, b)
		n++
	}
	if n == 0 {
		fmt.Fprintf(stdout, "no remote overrides (%s)\n", path)
	}
	return nil
}

// resetOverrides clears the fleet's overrides: the keys named, or all of them. It edits the
// files in the data directory; a running agent uses the result after its next restart.
func resetOverrides(cfg *config.Config, keys []string, stdout io.Writer) error {
	path := config.OverridesPath(cfg.DataDir)
	ov, err := config.ReadOverrides(path)
	if err != nil {
		return err
	}
	all := len(keys) == 0
	var cleared []string
	for _, k := range keys {
		if k == keysKey {
			continue
		}
		if _, ok := ov.Lookup(k); !ok {
			return fmt.Errorf("%s is not overridden: see station config overrides", k)
		}
	}
	if all {
		cleared = ov.Keys()
		ov = config.Overrides{}
	} else {
		for _, k := range keys {
			if k != keysKey {
				ov = ov.Without(k)
				cleared = append(cleared, k)
			}
		}
	}
	if len(cleared) > 0 {
		if err := config.WriteOverrides(path, ov); err != nil {
			return fmt.Errorf("%w: run it as root or the station user", err)
		}
	}
	if all || slices.Contains(keys, keysKey) {
		kp := config.KeysPath(cfg.DataDir)
		if err := os.Remove(kp); err == nil {
			cleared = append(cleared, keysKey)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("removing %s: %w: run it as root or the station user", kp, err)
		}
	}
	if len(cleared) == 0 {
		fmt.Fprintln(stdout, "no remote overrides to clear")
		return nil
	}
	fmt.Fprintf(stdout, "cleared %s; restart the agent to apply (systemctl restart station)\n", strings.Join(cleared, ", "))
	return nil
}
