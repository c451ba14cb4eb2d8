#!/usr/bin/env bash
# Runs the unit test suite for the Raspberry Pi architectures under qemu user emulation:
#
#   GOARCH=arm GOARM=6 go test -exec qemu-arm-static ./...     (as on a Pi 1 / Zero: ARM1176)
#   GOARCH=arm64       go test -exec qemu-aarch64-static ./... (as on a Pi 3 / Zero 2 W: Cortex-A53)
#
# Usage: .ci/arm-tests.sh [--full] [arm|arm64]...   (default: both architectures, -short)
#
#   --full   run without -short (tests that check testing.Short() are skipped otherwise)
#
# Environment: ARM_TEST_TIMEOUT (go test -timeout per package, default 15m), ARM_TEST_TOTAL
# (bound on each architecture's whole run, default 45m), ARM_TEST_PKGS (default ./...).
#
# Tests see STATION_TEST_QEMU set to the emulator command (e.g. qemu-arm-static). A test that
# runs a binary it built for the target (GOARCH is inherited by `go build`) must start it through
# that command: this machine has no binfmt_misc registration for ARM, so exec'ing an ARM binary
# directly fails with "exec format error". A test that cannot work emulated skips itself when
# STATION_TEST_QEMU is set, and says why. The race detector is not used: it is far too slow
# under emulation (and absent on 32-bit ARM).
set -euo pipefail
cd "$(dirname "$0")/.."

short=(-short)
arches=()
for a in "$@"; do
	case $a in
	--full) short=() ;;
	arm | arm64) arches+=("$a") ;;
	*)
		echo "usage: $0 [--full] [arm|arm64]..." >&2
		exit 2
		;;
	esac
done
if [ ${#arches[@]} -eq 0 ]; then
	arches=(arm arm64)
fi
per_pkg=${ARM_TEST_TIMEOUT:-15m}
total=${ARM_TEST_TOTAL:-45m}
read -r -a pkgs <<<"${ARM_TEST_PKGS:-./...}"

# emulator NAME: the qemu user-mode emulator for NAME (arm, aarch64); Debian's qemu-user-static
# installs qemu-NAME-static, qemu-user installs qemu-NAME.
emulator() {
	local n
	for n in "qemu-$1-static" "qemu-$1"; do
		if command -v "$n" >/dev/null; then
			echo "$n"
			return
		fi
	done
	echo "arm-tests.sh: no qemu-$1-static or qemu-$1: apt-get install qemu-user-static" >&2
	return 1
}

status=0
for arch in "${arches[@]}"; do
	case $arch in
	arm)
		qemu=$(emulator arm)
		envs=(GOARCH=arm GOARM=6 QEMU_CPU=arm1176)
		;;
	arm64)
		qemu=$(emulator aarch64)
		envs=(GOARCH=arm64 QEMU_CPU=cortex-a53)
		;;
	esac
	echo "=== go test ${short[*]:-(full)} under $qemu (${envs[*]})"
	start=$SECONDS
	rc=0
	env "${envs[@]}" CGO_ENABLED=0 STATION_TEST_QEMU="$qemu" \
		timeout --kill-after=30s "$total" \
		go test -exec "$qemu" "${short[@]}" -count=1 -timeout "$per_pkg" "${pkgs[@]}" || rc=$?
	echo "=== $arch: exit status $rc in $((SECONDS - start))s"
	if [ "$rc" -ne 0 ]; then
		status=1
	fi
done
exit "$status"
