//go:build !faults

package agent

// faultPoint marks a moment a test build (build tag faults, fault_faults.go) can die at. In every
// other build it does nothing and reads nothing.
func faultPoint(string) {}
