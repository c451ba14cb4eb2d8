package envsensor

import (
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestThresholdHysteresis(t *testing.T) {
	high := Threshold{Quantity: TempHigh, Limit: 40, Hysteresis: 2}
	low := Threshold{Quantity: TempLow, Limit: 0, Hysteresis: 1.5}
	for _, tc := range []struct {
		th     Threshold
		raised bool
		v      float64
		want   bool
	}{
		{high, false, 39.9, false},
		{high, false, 40, false}, // at the limit: not above it
		{high, false, 40.1, true},
		{high, true, 39, true}, // within the hysteresis band: stays raised
		{high, true, 38, true},
		{high, true, 37.9, false},
		{high, true, math.NaN(), true},
		{high, false, math.NaN(), false},
		{low, false, 0, false},
		{low, false, -0.1, true},
		{low, true, 1.5, true},
		{low, true, 1.6, false},
	} {
		if got := tc.th.Next(tc.raised, tc.v); got != tc.want {
			t.Errorf("%s limit %v: Next(%t, %v) = %t", tc.th.Quantity, tc.th.Limit, tc.raised, tc.v, got)
		}
	}
}

// TestNoFlapping feeds values wobbling around the limit: one raise, and one
// clear only once the value falls below the band.
func TestNoFlapping(t *testing.T) {
	m, err := NewMonitor(Threshold{Quantity: HumidityHigh, Limit: 85, Hysteresis: 3})
	if err != nil {
		t.Fatal(err)
	}
	var got []Transition
	at := t0
	for i := 0; i < 50; i++ {
		v := 84.8
		if i%2 == 1 {
			v = 85.2
		}
		at = at.Add(time.Minute)
		got = append(got, m.Observe(Reading{Humidity: v, At: at})...)
	}
	for _, v := range []float64{83, 82.1, 81.9, 84.9, 83} {
		at = at.Add(time.Minute)
		got = append(got, m.Observe(Reading{Humidity: v, At: at})...)
	}
	want := []Transition{
		{Quantity: HumidityHigh, Raised: true, Value: 85.2, Limit: 85, At: t0.Add(2 * time.Minute)},
		{Quantity: HumidityHigh, Raised: false, Value: 81.9, Limit: 85, At: t0.Add(53 * time.Minute)},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("transitions\n got %+v\nwant %+v", got, want)
	}
}

func TestMonitorTransitions(t *testing.T) {
	m, err := NewMonitor(
		Threshold{Quantity: TempHigh, Limit: 45, Hysteresis: 2},
		Threshold{Quantity: TempLow, Limit: -5, Hysteresis: 2},
		Threshold{Quantity: HumidityHigh, Limit: 90, Hysteresis: 5},
	)
	if err != nil {
		t.Fatal(err)
	}
	at := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Minute) }
	steps := []struct {
		r    Reading
		want []Transition
	}{
		{Reading{TempC: 25, Humidity: 50, At: at(0)}, nil},
		{Reading{TempC: 46, Humidity: 95, At: at(1)}, []Transition{
			{Quantity: TempHigh, Raised: true, Value: 46, Limit: 45, At: at(1)},
			{Quantity: HumidityHigh, Raised: true, Value: 95, Limit: 90, At: at(1)},
		}},
		// A BMP280-style reading: humidity unknown, its alarm stays.
		{Reading{TempC: 44, Humidity: math.NaN(), At: at(2)}, nil},
		{Reading{TempC: 42, Humidity: math.NaN(), At: at(3)}, []Transition{
			{Quantity: TempHigh, Raised: false, Value: 42, Limit: 45, At: at(3)},
		}},
		{Reading{TempC: -6, Humidity: 84, At: at(4)}, []Transition{
			{Quantity: TempLow, Raised: true, Value: -6, Limit: -5, At: at(4)},
			{Quantity: HumidityHigh, Raised: false, Value: 84, Limit: 90, At: at(4)},
		}},
	}
	for i, s := range steps {
		if got := m.Observe(s.r); !reflect.DeepEqual(got, s.want) {
			t.Fatalf("step %d:\n got %+v\nwant %+v", i, got, s.want)
		}
	}
	if got := m.Raised(); !reflect.DeepEqual(got, []Quantity{TempLow}) {
		t.Fatalf("raised %v", got)
	}
}

func TestNewMonitorErrors(t *testing.T) {
	for _, tc := range []struct {
		ts   []Threshold
		want string
	}{
		{[]Threshold{{Quantity: "dew_point", Limit: 1}}, `envsensor: threshold: unknown quantity "dew_point"`},
		{[]Threshold{{Quantity: TempHigh, Limit: math.NaN()}}, "envsensor: threshold: temp_high: limit NaN is not a number"},
		{[]Threshold{{Quantity: TempHigh, Limit: 40, Hysteresis: -1}}, "envsensor: threshold: temp_high: hysteresis -1 must be zero or positive"},
		{[]Threshold{{Quantity: TempHigh, Limit: 40}, {Quantity: TempHigh, Limit: 50}}, "envsensor: threshold: temp_high given twice"},
		{[]Threshold{{Quantity: TempHigh, Limit: 10}, {Quantity: TempLow, Limit: 10}}, "envsensor: threshold: temp_low limit must be below temp_high limit"},
	} {
		if _, err := NewMonitor(tc.ts...); err == nil || err.Error() != tc.want {
			t.Errorf("NewMonitor(%+v) = %v, want %q", tc.ts, err, tc.want)
		}
	}
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCPUTemp(t *testing.T) {
	for _, tc := range []struct {
		content string
		want    float64
	}{
		{"48312\n", 48.312},
		{"-5000\n", -5},
		{"0", 0},
	} {
		c, ok, err := Host{ThermalPath: writeFile(t, tc.content)}.CPUTemp()
		if err != nil || !ok || !near(c, tc.want, eps) {
			t.Errorf("CPUTemp(%q) = %v, %t, %v", tc.content, c, ok, err)
		}
	}
	// Absent: not reported, not an error.
	if c, ok, err := (Host{ThermalPath: filepath.Join(t.TempDir(), "none")}).CPUTemp(); ok || err != nil || c != 0 {
		t.Errorf("absent: %v, %t, %v", c, ok, err)
	}
	if _, ok, err := (Host{ThermalPath: writeFile(t, "hot\n")}).CPUTemp(); ok || err == nil || !strings.HasPrefix(err.Error(), "envsensor: cpu temperature in ") {
		t.Errorf("garbage: %t, %v", ok, err)
	}
}

func TestThrottled(t *testing.T) {
	th, ok, err := Host{ThrottledPath: writeFile(t, "50005\n")}.Throttled()
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	want := Throttled{Raw: 0x50005, UnderVoltage: true, Throttled: true, UnderVoltageOccurred: true, ThrottledOccurred: true}
	if th != want {
		t.Fatalf("got %+v", th)
	}
	if got := th.String(); got != "under-voltage, throttled (since boot: under-voltage, throttled)" {
		t.Fatalf("String() = %q", got)
	}
	th, ok, err = Host{ThrottledPath: writeFile(t, "0x0\n")}.Throttled()
	if err != nil || !ok || th != (Throttled{}) || th.String() != "ok" {
		t.Fatalf("0x0: %+v %t %v", th, ok, err)
	}
	if got := ParseThrottled(0xA0000).String(); got != "ok (since boot: frequency capped, soft temperature limit)" {
		t.Fatalf("String() = %q", got)
	}
	if _, ok, err := (Host{ThrottledPath: filepath.Join(t.TempDir(), "none")}).Throttled(); ok || err != nil {
		t.Fatalf("absent: %t %v", ok, err)
	}
	if _, ok, err := (Host{ThrottledPath: writeFile(t, "zz")}).Throttled(); ok || err == nil {
		t.Fatalf("garbage: %t %v", ok, err)
	}
}
