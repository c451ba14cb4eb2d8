package localapi

import "testing"

func TestUnitFromCgroup(t *testing.T) {
	for in, want := range map[string]string{
		"0::/system.slice/kiosk.service\n":                                         "kiosk.service",
		"0::/system.slice/kiosk.service/worker\n":                                  "kiosk.service",
		"0::/user.slice/user-1000.slice/session-3.scope\n":                         "session-3.scope",
		"0::/user.slice/user-1000.slice/user@1000.service/app.slice/kiosk.service": "kiosk.service",
		"12:pids:/\n1:name=systemd:/system.slice/kiosk.service\n0::/\n":            "kiosk.service",
		"12:pids:/\n1:name=systemd:/system.slice/kiosk.service\n":                  "kiosk.service",
		"0::/\n": "",
		"":       "",
	} {
		if got := unitFromCgroup(in); got != want {
			t.Errorf("unitFromCgroup(%q) = %q, want %q", in, got, want)
		}
	}
}
