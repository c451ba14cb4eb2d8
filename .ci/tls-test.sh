#!/usr/bin/env bash
# TLS and ACL test of the fleet setup described in docs/fleet.md, against a real Mosquitto.
#
# Usage: .ci/tls-test.sh PATH_TO_STATION_BINARY
#
# It makes a CA, a broker certificate, one certificate per station (CN = station id) and an
# operator certificate with openssl; starts Mosquitto with a TLS listener on a free loopback port
# (require_certificate, use_identity_as_username, an ACL confining each station to its own
# topics); and proves:
#   1. station A (`station run --sim` over tls://) comes online: the operator sees its retained
#      status with `station fleet ls`;
#   2. `station fleet send A ping` gets an ok response through TLS;
#   3. A's certificate cannot read B's command topic;
#   4. A's certificate cannot publish on B's topics.
# It cleans up after itself and exits non-zero, saying why, on any failure.
set -euo pipefail

if [ $# -ne 1 ]; then
	echo "usage: $0 PATH_TO_STATION_BINARY" >&2
	exit 2
fi
station=$(realpath "$1")
[ -x "$station" ] || {
	echo "tls-test: $1 is not an executable" >&2
	exit 2
}
for tool in openssl mosquitto mosquitto_sub mosquitto_pub python3 stdbuf; do
	command -v "$tool" >/dev/null || {
		echo "tls-test: $tool is not installed" >&2
		exit 1
	}
done

work=$(mktemp -d)
pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT

fail() {
	echo "tls-test: FAIL: $*" >&2
	local f
	for f in "$work"/mosquitto.log "$work"/a/agent.log; do
		if [ -s "$f" ]; then
			echo "--- last lines of $f" >&2
			tail -n 30 "$f" >&2
		fi
	done
	exit 1
}
step() { printf 'tls-test: %s\n' "$*"; }

# wait_for SECONDS DESCRIPTION COMMAND...: retries COMMAND until it succeeds or time runs out.
wait_for() {
	local deadline=$((SECONDS + $1)) what=$2
	shift 2
	until "$@"; do
		[ "$SECONDS" -lt "$deadline" ] || fail "timed out waiting for $what"
		sleep 0.2
	done
}

A="station-a"
B="station-b"
prefix=stations
pki="$work/pki"
mkdir -p "$pki" "$work/a"
# Mosquitto drops to the mosquitto user when started as root: it must be able to read its files.
chmod 0755 "$work" "$pki"

step "certificates"
cat >"$pki/ca.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = station test CA
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
EOF
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$pki/ca.key" 2>/dev/null
openssl req -x509 -new -key "$pki/ca.key" -config "$pki/ca.cnf" -extensions v3_ca -days 2 -out "$pki/ca.pem"

# issue NAME CN EXTENSIONS: a key and a certificate signed by the CA.
issue() {
	local name=$1 cn=$2 ext=$3
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$pki/$name.key" 2>/dev/null
	openssl req -new -key "$pki/$name.key" -subj "/CN=$cn" -out "$pki/$name.csr"
	printf '%s\n' "$ext" >"$pki/$name.ext"
	openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial \
		-days 2 -extfile "$pki/$name.ext" -out "$pki/$name.pem" 2>/dev/null
}
client_ext='basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth'
issue broker localhost 'basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost'
issue "$A" "$A" "$client_ext"
issue "$B" "$B" "$client_ext"
issue operator operator "$client_ext"
chmod 0644 "$pki"/*.pem "$pki/broker.key"

step "mosquitto with a TLS listener"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/acl" <<EOF
# Every station reads and writes its own topics (the certificate's CN is the user name) and
# reads the fleet-wide command topic.
pattern readwrite $prefix/%u/#
pattern read $prefix/_fleet/cmd
pattern read $prefix/_fleet/update/#

# The operator reads everything and writes commands.
user operator
topic read $prefix/#
topic write $prefix/+/cmd
topic write $prefix/_fleet/cmd
topic write $prefix/_fleet/update/#
EOF
cat >"$work/mosquitto.conf" <<EOF
per_listener_settings false
persistence false
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
listener $port 127.0.0.1
cafile $pki/ca.pem
certfile $pki/broker.pem
keyfile $pki/broker.key
require_certificate true
use_identity_as_username true
acl_file $work/acl
EOF
chmod 0644 "$work/acl" "$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=($!)
broker="tls://127.0.0.1:$port"

# tls_opts NAME: mosquitto_sub/pub options to connect with NAME's certificate.
tls_opts() {
	printf '%s\n' -h 127.0.0.1 -p "$port" --cafile "$pki/ca.pem" --cert "$pki/$1.pem" --key "$pki/$1.key"
}
mapfile -t op_tls < <(tls_opts operator)
mapfile -t a_tls < <(tls_opts "$A")
mapfile -t b_tls < <(tls_opts "$B")
fleet_flags=(--broker "$broker" --ca-file "$pki/ca.pem" --cert-file "$pki/operator.pem" --key-file "$pki/operator.key")

broker_up() { mosquitto_pub "${op_tls[@]}" -i tls-test-ready -t "$prefix/_fleet/cmd" -q 1 -n 2>/dev/null; }
wait_for 10 "mosquitto to accept TLS connections" broker_up

step "station $A over TLS"
cat >"$work/a/station.toml" <<EOF
station_id = "$A"
data_dir = "$work/a/data"
[mqtt]
broker = "$broker"
topic_prefix = "$prefix"
ca_file = "$pki/ca.pem"
cert_file = "$pki/$A.pem"
key_file = "$pki/$A.key"
[clock]
assume_synced = true
EOF
"$station" run --sim --config "$work/a/station.toml" --socket "$work/a/station.sock" >"$work/a/agent.log" 2>&1 &
agent=$!
pids+=("$agent")

a_online() {
	kill -0 "$agent" 2>/dev/null || fail "station $A exited"
	"$station" fleet ls --json --wait 300ms "${fleet_flags[@]}" 2>/dev/null | python3 -c '
import json, sys
sys.exit(0 if any(l.get("station") == sys.argv[1] and (l.get("status") or {}).get("state") == "online"
                  for l in map(json.loads, sys.stdin)) else 1)' "$A"
}
wait_for 30 "station $A's retained online status" a_online
"$station" fleet ls "${fleet_flags[@]}" --wait 300ms
step "ok: the operator sees $A online"

step "fleet send $A ping"
if ! out=$("$station" fleet send "$A" ping --wait 20s "${fleet_flags[@]}" 2>&1); then
	fail "fleet send $A ping: $out"
fi
printf '%s\n' "$out"
grep -Eq "^$A +ok" <<<"$out" || fail "no ok response from $A: $out"
step "ok: $A answered through TLS"

step "$A's certificate cannot read $B's command topic"
# A subscriber with A's certificate on B's cmd topic and on a topic of A's own, and a control
# subscriber with B's certificate on B's cmd topic. stdbuf: their -d output shows the SUBACK as
# it comes, not when they exit.
stdbuf -oL mosquitto_sub "${a_tls[@]}" -i "$A-probe" -d -C 1 -W 30 -F 'MSG %t %p' \
	-t "$prefix/$B/cmd" -t "$prefix/$A/probe" >"$work/a-sub.out" 2>&1 &
a_sub=$!
pids+=("$a_sub")
stdbuf -oL mosquitto_sub "${b_tls[@]}" -i "$B-probe" -d -C 1 -W 30 -F 'MSG %t %p' \
	-t "$prefix/$B/cmd" >"$work/b-sub.out" 2>&1 &
b_sub=$!
pids+=("$b_sub")
subscribed() { grep -q 'received SUBACK' "$1"; }
wait_for 10 "the probes' subscriptions" subscribed "$work/a-sub.out"
wait_for 10 "the control's subscription" subscribed "$work/b-sub.out"
# The operator publishes on B's cmd topic (QoS 1: acknowledged once the broker has routed it),
# then A publishes a marker on its own topic. A's probe stops at the first message it gets: if it
# could read B's topic that would be the command, otherwise it is the marker.
"$station" fleet send "$B" ping --wait 0 "${fleet_flags[@]}" >/dev/null || fail "the operator cannot publish to $B's cmd topic"
mosquitto_pub "${a_tls[@]}" -i "$A-marker" -q 1 -t "$prefix/$A/probe" -m marker || fail "$A cannot publish on its own topic"
wait "$b_sub" || fail "the control subscriber (B's certificate) got no command: $(cat "$work/b-sub.out")"
grep -q "^MSG $prefix/$B/cmd " "$work/b-sub.out" || fail "the control subscriber got no command"
wait "$a_sub" || fail "A's probe got nothing, not even its own marker: $(cat "$work/a-sub.out")"
if grep -q "^MSG $prefix/$B/cmd" "$work/a-sub.out"; then
	fail "$A's certificate read a command for $B"
fi
grep -q "^MSG $prefix/$A/probe marker" "$work/a-sub.out" || fail "A's probe did not see its marker: $(cat "$work/a-sub.out")"
step "ok: $A cannot read $B's commands"

step "$A's certificate cannot publish on $B's topics"
stdbuf -oL mosquitto_sub "${op_tls[@]}" -i operator-probe -d -C 1 -W 30 -F 'MSG %t %p' \
	-t "$prefix/$B/events" >"$work/op-sub.out" 2>&1 &
op_sub=$!
pids+=("$op_sub")
wait_for 10 "the operator's subscription" subscribed "$work/op-sub.out"
# A's publish is acknowledged whether or not the ACL let it through (MQTT 3.1.1); B's comes after
# it. The operator's subscriber stops at the first message: it must be B's.
mosquitto_pub "${a_tls[@]}" -i "$A-forger" -q 1 -t "$prefix/$B/events" -m '{"forged":true}' || true
mosquitto_pub "${b_tls[@]}" -i "$B-real" -q 1 -t "$prefix/$B/events" -m '{"genuine":true}' || fail "$B cannot publish on its own topic"
wait "$op_sub" || fail "the operator's subscriber got nothing: $(cat "$work/op-sub.out")"
if grep -q 'forged' "$work/op-sub.out"; then
	fail "$A's certificate published on $B's events topic"
fi
grep -q '^MSG .*genuine' "$work/op-sub.out" || fail "the operator did not see B's own event"
step "ok: $A cannot publish on $B's topics"

kill -TERM "$agent"
wait "$agent" || fail "station $A did not stop cleanly"
echo "tls-test: passed"
