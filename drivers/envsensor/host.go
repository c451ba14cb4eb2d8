package envsensor

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
)

// Default paths of the host readings.
const (
	DefaultThermalPath   = "/sys/class/thermal/thermal_zone0/temp"
	DefaultThrottledPath = "/sys/devices/platform/soc/soc:firmware/get_throttled"
)

// Host reads the computer's own CPU temperature and, on a Raspberry Pi, its
// throttling state. A file that does not exist means the reading is not
// available there: it is reported as absent, not as an error.
type Host struct {
	// ThermalPath holds the CPU temperature in m°C; empty means
	// DefaultThermalPath.
	ThermalPath string
	// ThrottledPath holds the firmware's throttling flags in hexadecimal;
	// empty means DefaultThrottledPath.
	ThrottledPath string
}

// CPUTemp returns the CPU temperature in °C; ok is false where the host does
// not report it.
func (h Host) CPUTemp() (c float64, ok bool, err error) {
	path := h.ThermalPath
	if path == "" {
		path = DefaultThermalPath
	}
	s, ok, err := readSmall(path)
	if !ok || err != nil {
		return 0, false, err
	}
	m, err := strconv.ParseInt(s, 10, 32)
	if err != nil {
		return 0, false, fmt.Errorf("envsensor: cpu temperature in %s: %w", path, err)
	}
	return float64(m) / 1000, true, nil
}

// Throttled is the Raspberry Pi firmware's throttling state
// (vcgencmd get_throttled).
type Throttled struct {
	// Raw is the firmware's bit field.
	Raw uint32 `json:"raw"`
	// Now: the conditions present at the time of reading.
	UnderVoltage  bool `json:"under_voltage"`
	FreqCapped    bool `json:"freq_capped"`
	Throttled     bool `json:"throttled"`
	SoftTempLimit bool `json:"soft_temp_limit"`
	// Since boot: the conditions that have occurred.
	UnderVoltageOccurred  bool `json:"under_voltage_occurred"`
	FreqCappedOccurred    bool `json:"freq_capped_occurred"`
	ThrottledOccurred     bool `json:"throttled_occurred"`
	SoftTempLimitOccurred bool `json:"soft_temp_limit_occurred"`
}

// ParseThrottled decodes the firmware's bit field.
func ParseThrottled(raw uint32) Throttled {
	bit := func(n uint) bool { return raw&(1<<n) != 0 }
	return Throttled{
		Raw:                   raw,
		UnderVoltage:          bit(0),
		FreqCapped:            bit(1),
		Throttled:             bit(2),
		SoftTempLimit:         bit(3),
		UnderVoltageOccurred:  bit(16),
		FreqCappedOccurred:    bit(17),
		ThrottledOccurred:     bit(18),
		SoftTempLimitOccurred: bit(19),
	}
}

// String summarises the state, e.g. "under-voltage, throttled (since boot:
// under-voltage)" or "ok".
func (t Throttled) String() string {
	list := func(a, b, c, d bool) []string {
		var s []string
		for i, on := range []bool{a, b, c, d} {
			if on {
				s = append(s, [...]string{"under-voltage", "frequency capped", "throttled", "soft temperature limit"}[i])
			}
		}
		return s
	}
	now := list(t.UnderVoltage, t.FreqCapped, t.Throttled, t.SoftTempLimit)
	past := list(t.UnderVoltageOccurred, t.FreqCappedOccurred, t.ThrottledOccurred, t.SoftTempLimitOccurred)
	s := "ok"
	if len(now) > 0 {
		s = strings.Join(now, ", ")
	}
	if len(past) > 0 {
		s += " (since boot: " + strings.Join(past, ", ") + ")"
	}
	return s
}

// Throttled returns the throttling state; ok is false where the host does
// not report it (not a Raspberry Pi, or an older kernel).
func (h Host) Throttled() (t Throttled, ok bool, err error) {
	path := h.ThrottledPath
	if path == "" {
		path = DefaultThrottledPath
	}
	s, ok, err := readSmall(path)
	if !ok || err != nil {
		return Throttled{}, false, err
	}
	v, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimPrefix(s, "0x"), "0X"), 16, 32)
	if err != nil {
		return Throttled{}, false, fmt.Errorf("envsensor: throttling state in %s: %w", path, err)
	}
	return ParseThrottled(uint32(v)), true, nil
}

// readSmall reads a short sysfs file and trims it; ok is false when the file
// does not exist.
func readSmall(path string) (string, bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("envsensor: %w", err)
	}
	defer f.Close()
	var buf [64]byte
	n, err := f.Read(buf[:])
	if err != nil && n == 0 {
		return "", false, fmt.Errorf("envsensor: read %s: %w", path, err)
	}
	return strings.TrimSpace(string(buf[:n])), true, nil
}
