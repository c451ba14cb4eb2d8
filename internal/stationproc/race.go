//go:build race

package stationproc

const raceEnabled = true
