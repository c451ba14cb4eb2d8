#!/usr/bin/env bash
# The fault-injection suite and the fleet simulation (faulttest/, build tag "faults"): the station
# binary killed with SIGKILL in the middle of tap bursts, broker restarts, long outages, full
# stores and file systems, broken store files, brokers that never answer, random command payloads,
# a failing card reader, over-the-air updates under a shell supervisor loop, and a fleet of agents
# reconnecting to one Mosquitto. Then the network
# faults (faulttest/network_test.go, TestNet*): Mosquitto in a network namespace behind veth pairs
# and the suite's own packet forwarder: half-open idle and mid-drain, 10 % and 30 % loss with
# 200 ms ± 50 ms delay, the link flapping every 3 s for 60 s while tapping 10/s, a soak of
# half-open cycles. They need root and `ip netns` (they skip themselves otherwise), use only
# 10.213.N.0/24 fenced with an unreachable route, and remove every namespace, veth and route
# they made.
#
# Usage: .ci/faults.sh [--full]
#
#   (default)  the bounded suite (go test -short): about 2 minutes on two cores, 20 agents;
#              then the network faults, about 75 s (run in parallel)
#   --full     the whole suite: 20 kills, a 50k-record backlog, 200 agents (about 5 minutes);
#              network faults with longer windows and 11 soak cycles (about 3 minutes)
#
# The tests start what they need themselves: their own Mosquitto on free loopback ports, embedded
# brokers, and the agents. Mosquitto must be installed (installed here with apt-get when missing
# and run as root); the tiny-file-system scenario mounts a tmpfs and skips itself without root.
# The power cuts (TestPowerCuts: 5 cuts bounded, 100 with --full) and the fsync faults put the data
# directory on faulttest/lazyfs, a FUSE file system that loses what was not fsynced: they need root
# and /dev/fuse and skip themselves, saying why, without.
# Measured figures are printed at the end, one "name value unit" a line.
set -euo pipefail
cd "$(dirname "$0")/.."

short=(-short)
timeout=8m
case ${1:-} in
"") ;;
--full)
	short=()
	timeout=60m
	;;
*)
	echo "usage: $0 [--full]" >&2
	exit 2
	;;
esac

if ! command -v mosquitto >/dev/null; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "faults.sh: mosquitto is not installed: apt-get install mosquitto" >&2
		exit 1
	fi
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

go vet -tags faults ./faulttest/
GOARCH=arm GOARM=6 go vet -tags faults ./faulttest/

echo "=== fault-injection suite ${short[*]:-(full)}"
start=$SECONDS
rc=0
STATION_FAULTS_FIGURES="$work/figures" \
	go test -tags faults "${short[@]}" -count=1 -parallel 4 -timeout "$timeout" -skip '^TestNet' -v ./faulttest/ || rc=$?
echo "=== fault-injection suite: exit status $rc in $((SECONDS - start))s"

echo "=== network faults ${short[*]:-(full)}"
start=$SECONDS
STATION_FAULTS_FIGURES="$work/figures" \
	go test -tags faults "${short[@]}" -count=1 -parallel 6 -timeout "$timeout" -run '^TestNet' -v ./faulttest/ || rc=$?
echo "=== network faults: exit status $rc in $((SECONDS - start))s"
if [ -s "$work/figures" ]; then
	echo "=== figures (name value unit)"
	cat "$work/figures"
fi
exit "$rc"
