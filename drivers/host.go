// Package drivers holds the station's hardware drivers, one package each, all through periph.io.
// This package itself only loads periph's host drivers, which every driver's Open needs.
package drivers

import (
	"sync"

	"periph.io/x/host/v3"
)

var (
	hostOnce sync.Once
	hostErr  error
)

// HostInit loads periph's host drivers (GPIO, I²C, SPI registries) once per process.
func HostInit() error {
	hostOnce.Do(func() { _, hostErr = host.Init() })
	return hostErr
}
