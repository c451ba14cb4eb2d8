//go:build !linux

package hw

import (
	"errors"
	"os"
)

// openSerial is only implemented on Linux, where the stations run.
func openSerial(path string) (*os.File, error) {
	return nil, errors.New("serial ports are only supported on Linux")
}
