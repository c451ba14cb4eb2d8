package main

// `station fleet`: the operator's side of fleet management (DESIGN §3.5). It talks to the broker,
// not to a local agent: keygen makes the command signing key, ls lists the stations' retained
// status, send sends a command and prints the responses, watch follows status and events.

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	fleetcmd "station.dev/agent/agent/command"
	"station.dev/agent/agent/config"
	"station.dev/agent/agent/contract"
	"station.dev/agent/mqtt/operator"
)

const (
	defaultFleetBroker = "tcp://127.0.0.1:1883"
	defaultKeyFile     = "fleet-command.key"
	defaultSendWait    = 10 * time.Second
)

func cmdFleet(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usagef("want: station fleet keygen|ls|send|watch|release|update")
	}
	// Stations are not trusted to send harmless text: whatever they put in a status, a record
	// or a response is printed with terminal control sequences made visible.
	stdout, stderr = termSafe(stdout), termSafe(stderr)
	switch args[0] {
	case "keygen":
		return fleetKeygen(args[1:], stdout)
	case "ls":
		return fleetLs(args[1:], stdout, stderr)
	case "send":
		return fleetSend(args[1:], stdout, stderr)
	case "watch":
		return fleetWatch(args[1:], stdout, stderr)
	case "release":
		return fleetRelease(args[1:], stdout)
	case "update":
		return fleetUpdate(args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprintln(stderr, "usage: station fleet keygen|ls|send|watch|release|update [flags]")
		fmt.Fprintln(stderr)
		fmt.Fprintln(stderr, "  keygen [--out FILE]                       make an Ed25519 command signing key")
		fmt.Fprintln(stderr, "  ls [--json]                               the retained status of every station")
		fmt.Fprintln(stderr, "  send ID|--all NAME [ARGS_JSON] [--key FILE] [--wait D] [--expires D] [--json]")
		fmt.Fprintln(stderr, "                                            send a command, print the responses")
		fmt.Fprintln(stderr, "  watch [ID] [-n N] [--json]                follow status and events")
		fmt.Fprintln(stderr, "  release --key KEY --version V [--arch A] [--expires D] FILE")
		fmt.Fprintln(stderr, "                                            sign a release: writes FILE.release")
		fmt.Fprintln(stderr, "  update --release R --artifact F --station ID...|--all|--percent N [--key KEY] [--wait]")
		fmt.Fprintln(stderr, "                                            publish a release and update stations")
		fmt.Fprintln(stderr)
		fmt.Fprintln(stderr, "'station fleet <subcommand> -h' shows its flags.")
		return flag.ErrHelp
	}
	return usagef("unknown fleet subcommand %q: want keygen, ls, send, watch, release or update", args[0])
}

// defaultExpires is how long a command sent by `station fleet send` lives without --expires.
const defaultExpires = time.Hour

// termSafe wraps w so that control characters (C0 but tab and newline, DEL, C1) and the
// bidirectional overrides are written as visible escapes (\x1b, \u202e) instead of reaching
// the terminal.
func termSafe(w io.Writer) io.Writer {
	if _, ok := w.(safeWriter); ok {
		return w
	}
	return safeWriter{w}
}

type safeWriter struct{ w io.Writer }

func (s safeWriter) Write(p []byte) (int, error) {
	if clean(p) {
		return s.w.Write(p)
	}
	total := len(p)
	var b bytes.Buffer
	for len(p) > 0 {
		r, n := utf8.DecodeRune(p)
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, "\\x%02x", p[0])
		case r == '\n' || r == '\t':
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, "\\x%02x", r)
		case r >= 0x80 && r <= 0x9f, r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069, r == 0x200e, r == 0x200f:
			fmt.Fprintf(&b, "\\u%04x", r)
		default:
			b.Write(p[:n])
		}
		p = p[n:]
	}
	if _, err := s.w.Write(b.Bytes()); err != nil {
		return 0, err
	}
	return total, nil
}

// clean reports whether p is plain printable ASCII, tabs and newlines: the usual case.
func clean(p []byte) bool {
	for _, c := range p {
		if (c < 0x20 && c != '\n' && c != '\t') || c >= 0x7f {
			return false
		}
	}
	return true
}

// brokerFlags are the connection flags of every fleet subcommand that talks to the broker.
type brokerFlags struct {
	config, broker, prefix    string
	caFile, certFile, keyFile string
	username, passwordFile    string
	json                      bool
}

func (f *brokerFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.config, "config", "", "take the broker settings from this station configuration `file` ([mqtt] table); flags override it")
	fs.StringVar(&f.broker, "broker", "", "broker `URL`: tcp://host:port or tls://host:port (default "+defaultFleetBroker+")")
	fs.StringVar(&f.prefix, "topic-prefix", "", "topic `prefix` (default "+config.DefaultTopicPrefix+")")
	fs.StringVar(&f.caFile, "ca-file", "", "CA certificate `file` that verifies the broker (tls://)")
	fs.StringVar(&f.certFile, "cert-file", "", "client certificate `file` (tls://)")
	fs.StringVar(&f.keyFile, "key-file", "", "client certificate key `file` (tls://)")
	fs.StringVar(&f.username, "username", "", "broker `user` name")
	fs.StringVar(&f.passwordFile, "password-file", "", "`file` holding the broker password")
	fs.BoolVar(&f.json, "json", false, "print JSON (one object per line)")
}

// resolve merges the config file (if any), the flags and the defaults.
func (f *brokerFlags) resolve() (operator.Options, string, error) {
	var m config.MQTT
	if f.config != "" {
		c, err := config.Load(f.config)
		if err != nil {
			return operator.Options{}, "", err
		}
		m = c.MQTT
	}
	for _, o := range []struct{ v, dst *string }{
		{&f.broker, &m.Broker}, {&f.prefix, &m.TopicPrefix}, {&f.caFile, &m.CAFile}, {&f.certFile, &m.CertFile},
		{&f.keyFile, &m.KeyFile}, {&f.username, &m.Username}, {&f.passwordFile, &m.PasswordFile},
	} {
		if *o.v != "" {
			*o.dst = *o.v
		}
	}
	if m.Broker == "" || m.Broker == config.Embedded {
		m.Broker = defaultFleetBroker // what `station run --broker embedded` listens on
	}
	if m.TopicPrefix == "" {
		m.TopicPrefix = config.DefaultTopicPrefix
	}
	opts := operator.Options{
		Broker: m.Broker, Username: m.Username,
		CAFile: m.CAFile, CertFile: m.CertFile, KeyFile: m.KeyFile,
	}
	if m.PasswordFile != "" {
		b, err := os.ReadFile(m.PasswordFile)
		if err != nil {
			return operator.Options{}, "", fmt.Errorf("password file: %w", err)
		}
		opts.Password = strings.TrimRight(string(b), "\r\n")
	}
	return opts, m.TopicPrefix, nil
}

// connect dials the broker; the error says what to check.
func (f *brokerFlags) connect(ctx context.Context) (*operator.Client, string, error) {
	opts, prefix, err := f.resolve()
	if err != nil {
		return nil, "", err
	}
	c, err := operator.Dial(ctx, opts)
	if err != nil {
		if ctx.Err() != nil {
			return nil, "", ctx.Err()
		}
		return nil, "", fmt.Errorf("cannot reach the broker: %s (check --broker and the TLS flags, or pass --config)", trimPkg(err))
	}
	return c, prefix, nil
}

// trimPkg drops the library's package prefix from an error shown to the operator.
func trimPkg(err error) string {
	s := err.Error()
	for _, p := range []string{"operator: ", "command: "} {
		s = strings.TrimPrefix(s, p)
	}
	return s
}

// signalContext is cancelled by SIGINT or SIGTERM: the normal way to stop watch or a long send.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// --- keygen

func fleetKeygen(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("fleet keygen", flag.ContinueOnError)
	out := fs.String("out", defaultKeyFile, "private key `file` (PEM PKCS#8, mode 0600); the public key goes to FILE.pub")
	jsonOut := fs.Bool("json", false, "print JSON")
	if err := noArgs(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return usagef("--out must name a file")
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return fmt.Errorf("generating the key: %w", err)
	}
	privDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return err
	}
	pubFile := *out + ".pub"
	for _, p := range []string{*out, pubFile} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("%s already exists: not overwriting a key; choose another --out", p)
		}
	}
	if err := writeNew(*out, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER}), 0o600); err != nil {
		return err
	}
	if err := writeNew(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
		os.Remove(*out)
		return err
	}
	b64 := base64.StdEncoding.EncodeToString(pub)
	kid := fleetcmd.KeyID(pub)
	if *jsonOut {
		return printJSON(stdout, map[string]string{
			"private_key_file": *out, "public_key_file": pubFile, "public_key": b64, "kid": kid,
		})
	}
	fmt.Fprintf(stdout, "private key  %s  (keep it secret: it signs fleet commands; use with send --key)\n", *out)
	fmt.Fprintf(stdout, "public key   %s\n", pubFile)
	fmt.Fprintf(stdout, "kid          %s\n", kid)
	fmt.Fprintln(stdout, "\nPut this in every station's configuration, in the [commands] table:")
	fmt.Fprintf(stdout, "public_keys = [%q]\n", b64)
	return nil
}

// writeNew creates path (refusing to replace anything), writes data and syncs it.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%s already exists: not overwriting a key; choose another --out", path)
		}
		return err
	}
	err = f.Chmod(mode) // exactly mode, whatever the umask
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// readSigningKey reads an Ed25519 private key in PEM PKCS#8 (what keygen and
// `openssl genpkey -algorithm ed25519` write).
func readSigningKey(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			return nil, fmt.Errorf("signing key %s: no PEM \"PRIVATE KEY\" block (make one with station fleet keygen)", path)
		}
		if blk.Type != "PRIVATE KEY" {
			continue
		}
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("signing key %s: %w", path, err)
		}
		priv, ok := k.(ed25519.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("signing key %s: a %T, not an Ed25519 key", path, k)
		}
		return priv, nil
	}
}

// --- ls

func fleetLs(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fleet ls", flag.ContinueOnError)
	var f brokerFlags
	f.register(fs)
	wait := fs.Duration("wait", operator.DefaultListWait, "stop collecting after this long with no new status")
	if err := noArgs(fs, args); err != nil {
		return err
	}
	if *wait <= 0 {
		return usagef("--wait must be positive")
	}
	ctx, stop := signalContext()
	defer stop()
	c, prefix, err := f.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	list, err := c.ListStatus(ctx, prefix, *wait)
	if err != nil {
		return errors.New(trimPkg(err))
	}
	if f.json {
		for _, st := range list {
			v := map[string]any{"station": st.ID, "status": st.Payload}
			if st.Unreadable {
				v = map[string]any{"station": st.ID, "error": "the retained status is not a JSON object"}
			}
			if err := printJSON(stdout, v); err != nil {
				return err
			}
		}
		return nil
	}
	if len(list) == 0 {
		fmt.Fprintf(stderr, "no station has a status under %s/: is --topic-prefix right?\n", prefix)
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STATION\tSTATE\tREASON\tVERSION\tQUEUE\tREADER\tSINCE")
	for _, st := range list {
		if st.Unreadable {
			fmt.Fprintf(tw, "%s\tunreadable\t-\t-\t-\t-\t-\n", st.ID)
			continue
		}
		queue, since := "-", dash(st.TS)
		if st.State == "online" {
			queue = fmt.Sprint(st.QueueDepth)
			if st.QueueFull {
				queue += " FULL"
			}
			since = dash(st.Since)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", st.ID, dash(st.State), dash(st.Reason), dash(st.Version), queue, dash(st.Reader), since)
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// --- send

func fleetSend(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fleet send", flag.ContinueOnError)
	var f brokerFlags
	f.register(fs)
	all := fs.Bool("all", false, "send to every station (target \"*\")")
	keyFile := fs.String("key", "", "sign with this Ed25519 private key `file` (PEM PKCS#8, from fleet keygen)")
	wait := fs.Duration("wait", defaultSendWait, "how long to wait for responses (0: do not wait); with --all the whole time")
	expires := fs.Duration("expires", defaultExpires, "the command expires this long after it is sent (at most the stations' [commands] max_lifetime, default 7 days)")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	target := contract.FleetTarget
	if !*all {
		if len(pos) == 0 {
			return usagef("want: station fleet send ID|--all NAME [ARGS_JSON]")
		}
		target, pos = pos[0], pos[1:]
		if !contract.ValidStationID(target) {
			return usagef("%q is not a station id ([a-z0-9][a-z0-9._-]{0,63}); use --all for every station", target)
		}
	}
	if len(pos) == 0 || len(pos) > 2 {
		return usagef("want: station fleet send ID|--all NAME [ARGS_JSON]")
	}
	if *wait < 0 || *expires <= 0 {
		return usagef("--wait must not be negative and --expires must be positive (a command that never expires could be replayed for ever)")
	}
	cmd := contract.Command{ID: fleetcmd.NewID(), Name: pos[0], Target: target}
	if len(pos) == 2 {
		a := bytes.TrimSpace([]byte(pos[1]))
		if len(a) == 0 || a[0] != '{' || !json.Valid(a) {
			return usagef("ARGS_JSON must be a JSON object, e.g. '{\"seconds\":5}'")
		}
		cmd.Args = a
	}
	now := time.Now().UTC()
	cmd.IssuedAt = now.Format(time.RFC3339Nano)
	cmd.ExpiresAt = now.Add(*expires).Format(time.RFC3339Nano)
	plain, err := json.Marshal(cmd)
	if err != nil {
		return err
	}
	if _, _, derr := fleetcmd.Decode(plain, nil); derr != nil {
		return usagef("%s", trimPkg(derr))
	}
	payload := plain
	if *keyFile != "" {
		priv, err := readSigningKey(*keyFile)
		if err != nil {
			return err
		}
		if payload, err = fleetcmd.Sign(priv, fleetcmd.KeyID(priv.Public().(ed25519.PublicKey)), plain); err != nil {
			return errors.New(trimPkg(err))
		}
	}

	ctx, stop := signalContext()
	defer stop()
	c, prefix, err := f.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()

	var ids []string
	if !*all {
		ids = []string{target}
	}
	got, failed := 0, 0
	var printErr error
	show := func(r operator.Response) {
		got++
		ok, line := responseLine(r, f.json)
		if !ok {
			failed++
		}
		if _, err := fmt.Fprintln(stdout, line); err != nil && printErr == nil {
			printErr = err
		}
	}
	var resps *operator.Responses
	if *wait > 0 {
		// Subscribed before the command goes out, so no response can slip past.
		if resps, err = c.WaitResponses(ctx, prefix, ids, cmd.ID, show); err != nil {
			return errors.New(trimPkg(err))
		}
		defer resps.Close()
	}
	if err := c.Send(ctx, prefix, target, payload); err != nil {
		return errors.New(trimPkg(err))
	}
	who := target
	if *all {
		who = "every station"
	}
	if *wait == 0 {
		if f.json {
			return printJSON(stdout, map[string]string{"id": cmd.ID, "name": cmd.Name, "target": target})
		}
		fmt.Fprintf(stdout, "sent %s to %s, command id %s\n", cmd.Name, who, cmd.ID)
		return nil
	}
	if !f.json {
		fmt.Fprintf(stderr, "sent %s to %s, command id %s; waiting up to %s\n", cmd.Name, who, cmd.ID, *wait)
	}
	wctx, cancel := context.WithTimeout(ctx, *wait)
	defer cancel()
	missing, err := resps.Wait(wctx)
	switch {
	case err != nil:
		return errors.New(trimPkg(err))
	case ctx.Err() != nil:
		return errors.New("interrupted")
	case printErr != nil:
		return printErr
	case len(missing) > 0:
		return fmt.Errorf("no response from %s within %s: is it online? (station fleet ls)", strings.Join(missing, ", "), *wait)
	case *all && got == 0:
		return fmt.Errorf("no station answered within %s: are any online? (station fleet ls)", *wait)
	case failed > 0:
		return errSilent
	}
	return nil
}

// responseLine renders one response; ok is false unless it is a readable response with ok true.
func responseLine(r operator.Response, jsonOut bool) (ok bool, line string) {
	var resp contract.Response
	readable := json.Unmarshal(r.Payload, &resp) == nil
	ok = readable && resp.OK
	if jsonOut {
		v := map[string]any{"station": r.Station, "response": r.Payload}
		if !readable {
			v = map[string]any{"station": r.Station, "error": "the response is not a JSON object"}
		}
		b, _ := json.Marshal(v)
		return ok, string(b)
	}
	switch {
	case !readable:
		return false, fmt.Sprintf("%-20s unreadable response", r.Station)
	case resp.OK:
		res := ""
		if len(resp.Result) > 0 {
			var buf bytes.Buffer
			if json.Compact(&buf, resp.Result) == nil {
				res = "  " + buf.String()
			}
		}
		return true, fmt.Sprintf("%-20s ok%s", r.Station, res)
	case resp.Error != nil:
		return false, fmt.Sprintf("%-20s FAILED  %s: %s", r.Station, resp.Error.Code, oneLine(resp.Error.Message))
	default:
		return false, fmt.Sprintf("%-20s FAILED", r.Station)
	}
}

// --- watch

func fleetWatch(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fleet watch", flag.ContinueOnError)
	var f brokerFlags
	f.register(fs)
	count := fs.Int("n", 0, "stop after this many messages (0: follow until interrupted)")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	station := ""
	switch {
	case len(pos) > 1:
		return usagef("want: station fleet watch [ID]")
	case len(pos) == 1:
		station = pos[0]
		if !contract.ValidStationID(station) {
			return usagef("%q is not a station id", station)
		}
	}
	if *count < 0 {
		return usagef("-n must not be negative")
	}
	ctx, stop := signalContext()
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	c, prefix, err := f.connect(ctx)
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return nil
		}
		return err
	}
	seen := 0
	var printErr error
	fn := func(m operator.Message) {
		if m.Dropped > 0 {
			fmt.Fprintf(stderr, "station: %d messages dropped: the output does not keep up\n", m.Dropped)
		}
		if _, err := fmt.Fprintln(stdout, watchLine(m, f.json)); err != nil {
			printErr = err
			cancel()
			return
		}
		seen++
		if *count > 0 && seen >= *count {
			cancel()
		}
	}
	// The watch outlives broker restarts and network loss: it dials again, with capped
	// exponential backoff and full jitter; the backoff starts over after a minute connected.
	failures := 0
	for {
		up := time.Now()
		err := c.Watch(ctx, prefix, station, fn)
		c.Close()
		if printErr != nil {
			return printErr
		}
		if err == nil || ctx.Err() != nil {
			return nil
		}
		if time.Since(up) > time.Minute {
			failures = 0
		}
		fmt.Fprintf(stderr, "station: %s; reconnecting\n", trimPkg(err))
		for {
			failures++
			d := min(30*time.Second, time.Second<<min(failures-1, 5))
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Duration(mrand.Float64() * float64(d))):
			}
			if c, _, err = f.connect(ctx); err == nil {
				break
			}
			if ctx.Err() != nil {
				return nil
			}
			fmt.Fprintf(stderr, "station: %s\n", err)
		}
	}
}

// watchLine renders one watched message.
func watchLine(m operator.Message, jsonOut bool) string {
	if jsonOut {
		v := map[string]any{"station": m.Station, "kind": m.Kind, "retained": m.Retained, "message": m.Payload}
		if !json.Valid(m.Payload) {
			v["message"] = nil
			v["error"] = "the payload is not JSON"
		}
		b, _ := json.Marshal(v)
		return string(b)
	}
	switch m.Kind {
	case contract.KindStatus:
		st := operator.ParseStatus(m.Station, m.Payload)
		if st.Unreadable {
			return fmt.Sprintf("%-20s status  unreadable", m.Station)
		}
		s := fmt.Sprintf("%-20s status  %s", m.Station, dash(st.State))
		var detail []string
		if st.Reason != "" {
			detail = append(detail, st.Reason)
		}
		if st.Version != "" {
			detail = append(detail, "version "+st.Version)
		}
		if u := updateOf(m.Payload); u != "" {
			detail = append(detail, u)
		}
		if st.State == "online" {
			q := fmt.Sprintf("queue %d", st.QueueDepth)
			if st.QueueFull {
				q += " FULL"
			}
			detail = append(detail, q)
			if st.Reader != "" {
				detail = append(detail, "reader "+st.Reader)
			}
		}
		if len(detail) > 0 {
			s += " (" + strings.Join(detail, ", ") + ")"
		}
		switch {
		case m.Retained:
			s += "  retained, " + dash(st.TS)
		case st.TS != "":
			s += "  " + st.TS
		}
		return s
	default:
		var r contract.Record
		if json.Unmarshal(m.Payload, &r) != nil {
			return fmt.Sprintf("%-20s event   unreadable", m.Station)
		}
		return fmt.Sprintf("%-20s event %s", m.Station, eventLine(&r))
	}
}
