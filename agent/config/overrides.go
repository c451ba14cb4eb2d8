package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"station.dev/agent/internal/atomicfile"
)

// Overrides is the fleet's remote configuration (the config.set command): a partial
// configuration in the file's schema, as JSON objects, laid over the file and under the
// command-line flags. It is kept in its own small file in the data directory, so it is known
// before the store is opened.
type Overrides map[string]any

// OverridesFile is the name of the overrides file in the data directory.
const OverridesFile = "overrides.json"

// OverridesPath returns where the overrides of a data directory are kept.
func OverridesPath(dataDir string) string { return filepath.Join(dataDir, OverridesFile) }

// ReadOverrides reads the overrides file at path. A missing file means no overrides.
func ReadOverrides(path string) (Overrides, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Overrides{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("config: overrides: %w", err)
	}
	var ov Overrides
	if err := json.Unmarshal(b, &ov); err != nil {
		return nil, fmt.Errorf("config: overrides %s: %w", path, err)
	}
	if ov == nil {
		ov = Overrides{}
	}
	return ov, nil
}

// WriteOverrides replaces the overrides file at path atomically: a power cut leaves either the
// old file or the new one, never a mix.
func WriteOverrides(path string, ov Overrides) error {
	b, err := json.Marshal(ov)
	if err != nil {
		return fmt.Errorf("config: overrides: %w", err)
	}
	if err := atomicfile.Write(path, b, 0o600); err != nil {
		return fmt.Errorf("config: overrides: %w", err)
	}
	return nil
}

// RemoteKeys are the keys the fleet may set remotely (config.set), by their dotted names,
// matched exactly, case included: operational tuning only. Identity, paths and trust
// (station_id, data_dir, socket, card.key_file, [commands], the broker and its TLS files, the
// reader's driver and bus) are file-only: a remote mistake there could not be undone remotely,
// and an attacker who can publish on the broker must not gain the station by it.
var RemoteKeys = map[string]bool{
	"log_level":                 true,
	"telemetry.interval":        true,
	"reader.poll_interval":      true,
	"mqtt.window":               true,
	"mqtt.keepalive":            true,
	"mqtt.backoff_max":          true,
	"store.max_bytes":           true,
	"card.min_interval":         true,
	"door.debounce":             true,
	"environment.interval":      true,
	"environment.temp_high":     true,
	"environment.temp_low":      true,
	"environment.humidity_high": true,
	"environment.hysteresis":    true,
}

// liveRemoteKeys take effect without a restart.
var liveRemoteKeys = map[string]bool{"log_level": true}

// Live reports whether the remote key takes effect without a restart.
func Live(key string) bool { return liveRemoteKeys[key] }

// CheckRemote returns an error naming the first key of ov (dotted, sorted) that the fleet may
// not set remotely, or nil. A table the allow-list does not name, even empty, is such a key.
func (ov Overrides) CheckRemote() error {
	if bad := ov.notRemote(); len(bad) > 0 {
		return fmt.Errorf("config: %s cannot be changed remotely: it is set in the configuration file only", bad[0])
	}
	return nil
}

// Remote returns the part of ov the fleet may set remotely, and the dotted names of the keys
// left out (an overrides file written by an earlier version may hold them).
func (ov Overrides) Remote() (Overrides, []string) {
	bad := ov.notRemote()
	if len(bad) == 0 {
		return ov, nil
	}
	out := Overrides{}
	for _, k := range ov.Keys() {
		if !RemoteKeys[k] {
			continue
		}
		out = out.Merge(ov.only(k))
	}
	return out, bad
}

// only returns the override of one dotted key of ov, as a nested map.
func (ov Overrides) only(dotted string) Overrides {
	parts := strings.Split(dotted, ".")
	var v any = map[string]any(ov)
	for _, p := range parts {
		m, ok := v.(map[string]any)
		if !ok {
			return Overrides{}
		}
		v = m[p]
	}
	for i := len(parts) - 1; i >= 0; i-- {
		v = map[string]any{parts[i]: v}
	}
	return Overrides(v.(map[string]any))
}

// notRemote lists the dotted keys of ov outside RemoteKeys, sorted; an empty table counts as
// its own name.
func (ov Overrides) notRemote() []string {
	var bad []string
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			name := prefix + k
			if sub, ok := v.(map[string]any); ok && len(sub) > 0 && !RemoteKeys[name] {
				walk(name+".", sub)
				continue
			}
			if !RemoteKeys[name] {
				bad = append(bad, name)
			} else if _, isTable := v.(map[string]any); isTable {
				bad = append(bad, name) // a value wanted, a table given
			}
		}
	}
	walk("", ov)
	sort.Strings(bad)
	return bad
}

// Merge returns ov with patch laid over it, table by table. Neither is modified.
func (ov Overrides) Merge(patch Overrides) Overrides {
	return mergeMaps(ov, patch)
}

func mergeMaps(base, patch map[string]any) map[string]any {
	out := make(map[string]any, len(base)+len(patch))
	for k, v := range base {
		out[k] = v
	}
	for k, v := range patch {
		if pm, ok := v.(map[string]any); ok {
			if bm, ok := out[k].(map[string]any); ok {
				out[k] = mergeMaps(bm, pm)
				continue
			}
		}
		out[k] = v
	}
	return out
}

// Keys returns the dotted names of the keys set ("mqtt.window"), sorted.
func (ov Overrides) Keys() []string {
	return flatKeys("", ov)
}

func flatKeys(prefix string, m map[string]any) []string {
	var keys []string
	for k, v := range m {
		if sub, ok := v.(map[string]any); ok {
			keys = append(keys, flatKeys(prefix+k+".", sub)...)
			continue
		}
		keys = append(keys, prefix+k)
	}
	sort.Strings(keys)
	return keys
}

// Apply returns base with ov laid over it and then flags (the command line, which wins over
// both), normalised. base is not modified; an error names the offending key. Keys the fleet may
// not set (see RemoteKeys) are an error: call Remote first to leave them out.
func (ov Overrides) Apply(base *Config, flags func(*Config)) (*Config, error) {
	if err := ov.CheckRemote(); err != nil {
		return nil, err
	}
	b, err := base.TOML()
	if err != nil {
		return nil, err
	}
	ovTOML, err := EncodeTOML(integralFloats(map[string]any(ov)))
	if err != nil {
		return nil, err
	}
	c, err := ParseOver(b, ovTOML)
	if err != nil {
		return nil, err
	}
	c.Sim = base.Sim
	if flags != nil {
		flags(c)
	}
	if err := c.Normalize(); err != nil {
		return nil, err
	}
	return c, nil
}

// integralFloats turns JSON numbers that are whole into integers, so that TOML integer keys
// (window, address) accept them.
func integralFloats(v any) any {
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, x := range t {
			out[k] = integralFloats(x)
		}
		return out
	case []any:
		out := make([]any, len(t))
		for i, x := range t {
			out[i] = integralFloats(x)
		}
		return out
	case float64:
		if t == float64(int64(t)) {
			return int64(t)
		}
	}
	return v
}

// KeysFile is the name, in the data directory, of the fleet command keys set by the keys.set
// command. When it exists it replaces [commands] public_keys of the file; `station config reset
// commands.public_keys` removes it.
const KeysFile = "command-keys.json"

// KeysPath returns where keys.set keeps the command keys of a data directory.
func KeysPath(dataDir string) string { return filepath.Join(dataDir, KeysFile) }

// ReadKeys reads the command keys set by keys.set; ok is false when there are none.
func ReadKeys(path string) (keys []string, ok bool, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("config: command keys: %w", err)
	}
	var doc struct {
		PublicKeys []string `json:"public_keys"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, false, fmt.Errorf("config: command keys %s: %w", path, err)
	}
	if len(doc.PublicKeys) == 0 {
		return nil, false, fmt.Errorf("config: command keys %s: empty; remove the file (station config reset commands.public_keys)", path)
	}
	for i, k := range doc.PublicKeys {
		if err := checkPublicKey(k); err != nil {
			return nil, false, fmt.Errorf("config: command keys %s: key %d: %w", path, i+1, err)
		}
	}
	return doc.PublicKeys, true, nil
}

// WriteKeys replaces the command keys file at path atomically. An empty set is refused: a
// station without keys would accept unsigned commands.
func WriteKeys(path string, keys []string) error {
	if len(keys) == 0 {
		return errors.New("config: command keys: refusing an empty set")
	}
	b, err := json.Marshal(map[string]any{"public_keys": keys})
	if err != nil {
		return fmt.Errorf("config: command keys: %w", err)
	}
	if err := atomicfile.Write(path, b, 0o600); err != nil {
		return fmt.Errorf("config: command keys: %w", err)
	}
	return nil
}

// Lookup returns the JSON of the value of a dotted key ("mqtt.window"), and whether it is set.
func (ov Overrides) Lookup(dotted string) (string, bool) {
	var v any = map[string]any(ov)
	for _, p := range strings.Split(dotted, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return "", false
		}
		if v, ok = m[p]; !ok {
			return "", false
		}
	}
	b, err := json.Marshal(v)
	if err != nil {
		return "", false
	}
	return string(b), true
}

// Without returns ov without a dotted key (and without tables it leaves empty). ov is not
// modified.
func (ov Overrides) Without(dotted string) Overrides {
	return without(ov, strings.Split(dotted, "."))
}

func without(m map[string]any, path []string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		if k != path[0] {
			out[k] = v
			continue
		}
		if len(path) == 1 {
			continue
		}
		sub, ok := v.(map[string]any)
		if !ok {
			out[k] = v
			continue
		}
		if rest := without(sub, path[1:]); len(rest) > 0 {
			out[k] = rest
		}
	}
	return out
}
