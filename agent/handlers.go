package agent

import (
	"context"
	"encoding/json"
	"log/slog"
	"os/exec"
	"strings"
	"time"

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

// remoteForbidden are keys a remote command may not change: they decide where the agent keeps its
// data and who it is, and a mistake there cannot be undone remotely.
var remoteForbidden = map[string]bool{"station_id": true, "data_dir": true, "socket": true, "update": true}

// liveKeys take effect without a restart.
var liveKeys = map[string]bool{"log_level": true}

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
// overrides, after checking that the result is a valid configuration. An invalid one changes
// nothing.
func (a *Agent) cmdConfigSet(_ context.Context, args json.RawMessage) (any, func(), *commandError) {
	var patch config.Overrides
	if err := json.Unmarshal(args, &patch); err != nil || len(patch) == 0 {
		return nil, nil, cmdErr(contract.CodeBadRequest, "args: want a non-empty object of configuration keys")
	}
	for k := range patch {
		if remoteForbidden[k] {
			return nil, nil, cmdErr(contract.CodeBadRequest, "%s cannot be changed remotely", k)
		}
	}
	ov, err := config.ReadOverrides(a.overridesPath())
	if err != nil {
		return nil, nil, cmdErr(contract.CodeFailed, "%v", err)
	}
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
		if !liveKeys[k] {
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
	return map[string]any{"lines": a.opts.Logs.Tail(req.Lines)}, nil, nil
}
