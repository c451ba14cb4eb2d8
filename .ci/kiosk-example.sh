#!/usr/bin/env bash
# Runs the kiosk developers' Python example (docs/examples/kiosk_client.py) against a running
# `station run --sim` agent, after a few emulated taps so that the tap feed has something to show.
#
# Usage: .ci/kiosk-example.sh STATION_BINARY SOCKET
set -euo pipefail
cd "$(dirname "$0")/.."
station=$1
sock=$2
"$station" tap --socket "$sock" --count 2 >/dev/null
python3 docs/examples/kiosk_client.py "$sock"
