package agent

import (
	"context"
	"encoding/json"
	"log/slog"
	"os/exec"
	"strings"
	"time"
	"unicode/utf8"

	"station.dev/agent/agent/command"
	"station.dev/agent/agent/config"
	"station.dev/agent/agent/contract"
	"station.dev/agent/drivers/indicator"
	"station.dev/agent/store"
)

type noArgs struct{}

func (a *Agent) handlers() map[string]handler {
	return map[string]handler{
		"ping":        a.cmdPing,
		"status":      a.cmdStatus,
		"queue.stats": a.cmdQueueStats,
		"config.get":  a.cmdConfigGet,
		"config.set":  a.cmdConfigSet,
		"restart":     a.cmdRestart,
		"reboot":      a.cmdReboot,
		"selftest":    a.cmdSelftest,
		"feedback":    a.cmdFeedback,
		"locate":      a.cmdLocate,
		"log.level":   a.cmdLogLevel,
		"logs.tail":   a.cmdLogsTail,
		"keys.set":    a.cmdKeysSet,
		"update":      a.cmdUpdate,
	}
}

func (a *Agent) cmdPing(_ context.Context, args json.RawMessage) (any, func(), *commandError) {
	if e := decodeArgs(args, &noArgs{}); e != nil {
		return nil, nil, e
	}
	return map[string]any{"pong": true, "version": a.opts.Version, "boot_id": a.bootID}, nil, nil
}

func (a *Agent) cmdStatus(_ context.Context, args json.RawMessage) (any, func(), *commandError) {
	if e := decodeArgs(args, &noArgs{}); e != nil {
		return nil, nil, e
	}
	s := a.status(contract.StateOnline, "")
	s.Indicator = nil
	return s, nil, nil
}

func (a *Agent) cmdQueueStats(_ context.Context, args json.RawMessage) (any, func(), *commandError) {
	if e := decodeArgs(args, &noArgs{}); e != nil {
		return nil, nil, e
	}
	return a.Queue(), nil, nil
}

func (a *Agent) cmdSelftest(_ context.Context, args json.RawMessage) (any, func(), *commandError) {
	if e := decodeArgs(args, &noArgs{}); e != nil {
		return nil, nil, e
	}
	return a.selfTest(), nil, nil
}

func (a *Agent) cmdConfigGet(_ context.Context, args json.RawMessage) (any, func(), *commandError) {
	if e := decodeArgs(args, &noArgs{}); e != nil {
		return nil, nil, e
	}
	b, err := a.cfg.TOML()
	if err != nil {
		return nil, nil, cmdErr(contract.CodeFailed, "%v", err)
	}
	ov, err := config.ReadOverrides(a.overridesPath())
	if err != nil {
		return nil, nil, cmdErr(contract.CodeFailed, "%v", err)
	}
	return map[string]any{"toml": string(b), "overrides": ov}, nil, nil
}

// cmdConfigSet merges a partial configuration (an object in the TOML schema) into the stored
// overrides, after checking that every key is one the fleet may set (config.RemoteKeys, matched
// exactly) and that the result is a valid configuration. An invalid one changes nothing.
func (a *Agent) cmdConfigSet(_ context.Context, args json.RawMessage) (any, func(), *commandError) {
	var patch config.Overrides
	if err := json.Unmarshal(args, &patch); err != nil || len(patch) == 0 {
		return nil, nil, cmdErr(contract.CodeBadRequest, "args: want a non-empty object of configuration keys")
	}
	if err := patch.CheckRemote(); err != nil {
		return nil, nil, cmdErr(contract.CodeBadRequest, "%s", strings.TrimPrefix(err.Error(), "config: "))
	}
	ov, err := config.ReadOverrides(a.overridesPath())
	if err != nil {
		return nil, nil, cmdErr(contract.CodeFailed, "%v", err)
	}
	ov, _ = ov.Remote() // keys an earlier version let in are dropped now
	merged := ov.Merge(patch)
	if _, err := merged.Apply(a.base, a.opts.Flags); err != nil {
		return nil, nil, cmdErr(contract.CodeBadRequest, "%v", err)
	}
	if err := config.WriteOverrides(a.overridesPath(), merged); err != nil {
		return nil, nil, cmdErr(contract.CodeFailed, "saving: %v", err)
	}
	keys := patch.Keys()
	restart := false
	for _, k := range keys {
		if !config.Live(k) {
			restart = true
		}
	}
	if lvl, ok := patch["log_level"].(string); ok && a.opts.LogLevel != nil {
		_ = a.opts.LogLevel.UnmarshalText([]byte(lvl))
	}
	r := a.newRecord(contract.TypeConfigChanged)
	r.Data = map[string]any{"keys": keys, "restart_required": restart, "source": "fleet"}
	if _, err := a.appendRecord(r, store.Critical); err != nil {
		a.log.Error("writing config.changed record", "err", err)
	}
	return map[string]any{"applied": keys, "restart_required": restart}, nil, nil
}

// overridesPath is where config.set keeps the fleet's overrides.
func (a *Agent) overridesPath() string { return config.OverridesPath(a.cfg.DataDir) }

func (a *Agent) cmdRestart(_ context.Context, args json.RawMessage) (any, func(), *commandError) {
	if e := decodeArgs(args, &noArgs{}); e != nil {
		return nil, nil, e
	}
	return map[string]any{"restarting": true}, func() { a.stop(ErrRestart) }, nil
}

// rebootCommand asks systemd-logind to reboot; the polkit rule installed with the package allows
// the station user to do so (see systemd/).
var rebootCommand = []string{"systemctl", "reboot"}

func (a *Agent) cmdReboot(_ context.Context, args json.RawMessage) (any, func(), *commandError) {
	if e := decodeArgs(args, &noArgs{}); e != nil {
		return nil, nil, e
	}
	if a.cfg.Sim {
		return nil, nil, cmdErr(contract.CodeFailed, "a simulated station does not reboot its host")
	}
	return map[string]any{"rebooting": true}, func() {
		out, err := exec.Command(rebootCommand[0], rebootCommand[1:]...).CombinedOutput()
		if err != nil {
			a.log.Error("reboot failed", "err", err, "output", strings.TrimSpace(string(out)))
		}
	}, nil
}

func (a *Agent) cmdFeedback(_ context.Context, args json.RawMessage) (any, func(), *commandError) {
	var req struct {
		Pattern string `json:"pattern"`
		Text    string `json:"text"`
	}
	if e := decodeArgs(args, &req); e != nil {
		return nil, nil, e
	}
	if _, ok := indicator.DefaultPrograms()[indicator.Pattern(req.Pattern)]; !ok || req.Pattern == string(indicator.Idle) {
		return nil, nil, cmdErr(contract.CodeBadRequest, "pattern %q: want recorded, recorded_offline, refused, error or locate", req.Pattern)
	}
	if len(req.Text) > 64 {
		return nil, nil, cmdErr(contract.CodeBadRequest, "text: at most 64 characters")
	}
	a.indicate(indicator.Pattern(req.Pattern))
	if req.Text != "" {
		a.periph.mu.Lock()
		a.periph.last = req.Text
		a.periph.mu.Unlock()
	}
	return map[string]any{"shown": req.Pattern}, nil, nil
}

func (a *Agent) cmdLocate(_ context.Context, args json.RawMessage) (any, func(), *commandError) {
	req := struct {
		Seconds int `json:"seconds"`
	}{Seconds: 60}
	if e := decodeArgs(args, &req); e != nil {
		return nil, nil, e
	}
	if req.Seconds < 0 || req.Seconds > 3600 {
		return nil, nil, cmdErr(contract.CodeBadRequest, "seconds: 0 (stop) to 3600")
	}
	if a.hw.Indicator == nil {
		return nil, nil, cmdErr(contract.CodeFailed, "no indicator configured")
	}
	ind := a.periph.indicator()
	if ind == nil {
		return nil, nil, cmdErr(contract.CodeFailed, "the indicator is down")
	}
	var err error
	if req.Seconds == 0 {
		err = ind.Clear(indicator.Locate)
	} else {
		err = ind.Locate(time.Duration(req.Seconds) * time.Second)
	}
	if err != nil {
		return nil, nil, cmdErr(contract.CodeFailed, "%v", err)
	}
	return map[string]any{"locate_seconds": req.Seconds}, nil, nil
}

func (a *Agent) cmdLogLevel(_ context.Context, args json.RawMessage) (any, func(), *commandError) {
	var req struct {
		Level string `json:"level"`
	}
	if e := decodeArgs(args, &req); e != nil {
		return nil, nil, e
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(req.Level)); err != nil {
		return nil, nil, cmdErr(contract.CodeBadRequest, "level %q: want debug, info, warn or error", req.Level)
	}
	if a.opts.LogLevel == nil {
		return nil, nil, cmdErr(contract.CodeFailed, "the log level is fixed in this build")
	}
	a.opts.LogLevel.Set(l)
	return map[string]any{"level": strings.ToLower(l.String())}, nil, nil
}

func (a *Agent) cmdLogsTail(_ context.Context, args json.RawMessage) (any, func(), *commandError) {
	req := struct {
		Lines int `json:"lines"`
	}{Lines: 100}
	if e := decodeArgs(args, &req); e != nil {
		return nil, nil, e
	}
	if req.Lines < 1 || req.Lines > 500 {
		return nil, nil, cmdErr(contract.CodeBadRequest, "lines: 1 to 500")
	}
	if a.opts.Logs == nil {
		return map[string]any{"lines": []string{}}, nil, nil
	}
	lines, omitted := fitLines(a.opts.Logs.Tail(req.Lines), logsTailBudget, maxTailLine)
	out := map[string]any{"lines": lines}
	if omitted > 0 {
		out["truncated"] = true
		out["omitted_lines"] = omitted
	}
	return out, nil, nil
}

// logsTailBudget is what the lines of a logs.tail response may take, under maxResponseBytes
// with room for the envelope and JSON escaping.
const logsTailBudget = maxResponseBytes / 2

// maxTailLine is the longest line logs.tail sends; a longer one is cut and marked.
const maxTailLine = 1024

// fitLines keeps the newest lines whose total length fits budget, each cut to maxLine bytes,
// and returns them oldest first with the number of older lines left out.
func fitLines(lines []string, budget, maxLine int) ([]string, int) {
	total := 0
	i := len(lines)
	for i > 0 {
		l := lines[i-1]
		if len(l) > maxLine {
			l = cutUTF8(l, maxLine) + "…[cut]"
		}
		n := jsonLen(l)
		if total+n > budget {
			break
		}
		total += n
		i--
		lines[i] = l
	}
	return lines[i:], i
}

// jsonLen is the length of s as a JSON string: control characters take six bytes each.
func jsonLen(s string) int {
	b, _ := json.Marshal(s)
	return len(b) + 1 // and a comma
}

// cutUTF8 returns at most n bytes of s, not splitting a character.
func cutUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// cmdKeysSet replaces the fleet command keys: a signed command only (verified by a key trusted
// now), the new set atomically, never empty. The set is kept in the data directory and wins
// over [commands] public_keys of the file from then on; it takes effect for the next command.
func (a *Agent) cmdKeysSet(_ context.Context, args json.RawMessage) (any, func(), *commandError) {
	var req struct {
		PublicKeys []string `json:"public_keys"`
	}
	if e := decodeArgs(args, &req); e != nil {
		return nil, nil, e
	}
	if a.keys().Len() == 0 {
		return nil, nil, cmdErr(contract.CodeUnauthorized, "this station has no command keys: set [commands] public_keys in its configuration file")
	}
	if len(req.PublicKeys) == 0 || len(req.PublicKeys) > 16 {
		return nil, nil, cmdErr(contract.CodeBadRequest, "public_keys: want 1 to 16 keys")
	}
	keys, err := command.ParseKeys(req.PublicKeys)
	if err != nil {
		return nil, nil, cmdErr(contract.CodeBadRequest, "%s", strings.TrimPrefix(err.Error(), "command: "))
	}
	if err := config.WriteKeys(config.KeysPath(a.cfg.DataDir), req.PublicKeys); err != nil {
		return nil, nil, cmdErr(contract.CodeFailed, "%v", err)
	}
	a.cmds.keys.Store(keys)
	a.keySource = config.KeysPath(a.cfg.DataDir) + " (set by keys.set)"
	a.log.Warn("fleet command keys replaced by keys.set", "kids", keys.IDs())
	return map[string]any{"kids": keys.IDs()}, nil, nil
}
