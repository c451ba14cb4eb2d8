package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
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
	if err := writeFileSync(path, b, 0o600); err != nil {
		return fmt.Errorf("config: overrides: %w", err)
	}
	return nil
}

// writeFileSync writes b to a temporary file beside path, syncs it, renames it over path and syncs
// the directory.
func writeFileSync(path string, b []byte, mode fs.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename there is nothing left to remove
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
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
// both), normalised. base is not modified; an error names the offending key.
func (ov Overrides) Apply(base *Config, flags func(*Config)) (*Config, error) {
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
