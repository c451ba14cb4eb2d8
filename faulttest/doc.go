// Package faulttest proves the station agent under faults and load: it runs the real station
// binary (emulated hardware, `station run --sim`) as separate processes against real MQTT brokers
// (the embedded one, or a Mosquitto it starts itself) and breaks things on purpose: kill -9 in the
// middle of tap bursts, broker restarts, long outages, a full store, a full file system, broken
// store files, brokers that never answer, random bytes on the command topics, a failing card
// reader, over-the-air updates under a shell supervisor loop (a good one committed, a broken one
// rolled back, refusals, a download killed in the middle); and it runs a fleet of agents against one broker to measure how they reconnect and
// drain after a broker restart.
//
// The tests are guarded by the build tag faults, so `go test ./...` does not run them:
//
//	go test -tags faults -v -parallel 4 ./faulttest/          # the full suite (about 5 minutes)
//	go test -tags faults -v -parallel 4 -short ./faulttest/   # the bounded suite (.ci/faults.sh)
//
// Environment:
//
//	STATION_FAULTS_SEED     seed of the random choices (default: the clock); each test logs it
//	STATION_FAULTS_FIGURES  file to append measured figures to, one "name value unit" a line
//	STATION_FAULTS_RACE     1: build the station binary with the race detector
//
// The scenarios that restart a broker with persistent MQTT sessions need mosquitto in PATH; the
// tiny file system needs root (mount -t tmpfs) and skips itself without.
package faulttest
