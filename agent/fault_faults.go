//go:build faults

package agent

import (
	"os"
	"syscall"
)

// EnvFault names the fault point at which a test build of the agent kills itself with SIGKILL,
// as a power cut would stop it there. Only binaries built with the tag faults (the
// fault-injection suite, faulttest) read it; production binaries have no such variable.
const EnvFault = "STATION_TEST_FAULT"

// faultPoint kills the process when EnvFault names point.
func faultPoint(point string) {
	if os.Getenv(EnvFault) == point {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // SIGKILL is not delivered synchronously: never answer
	}
}
