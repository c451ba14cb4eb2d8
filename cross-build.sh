#!/usr/bin/env bash
# Release builds of the station agent, reproducible from a commit.
#
#   ./cross-build.sh            builds into dist/
#   DIST=/tmp/out ./cross-build.sh
#
# Writes, in $DIST (default dist/, emptied first):
#   station-linux-armv6   GOARM=6: Raspberry Pi 1 and Zero, and every 32-bit Raspberry Pi OS
#   station-linux-armv7   GOARM=7: a 32-bit OS on Pi 2/3/4 (faster floating point; not packaged)
#   station-linux-arm64   Pi 3/4/5 and Zero 2 W with a 64-bit OS
#   station-linux-amd64   PCs, for tests and simulation
#   station_VERSION_armhf.deb (from armv6: Raspberry Pi OS armhf must run on the Pi 1 and Zero),
#   station_VERSION_arm64.deb, station_VERSION_amd64.deb
#   SHA256SUMS            of all of the above
#
# Environment: VERSION (default: git describe --tags --always --dirty), COMMIT (default:
# git rev-parse HEAD), SOURCE_DATE_EPOCH (default: the commit time), MAINTAINER (the .deb
# Maintainer field), DIST. Two runs on the same commit with the same Go toolchain give the same
# SHA256SUMS: static binaries without build ids, file times set to SOURCE_DATE_EPOCH, packages
# built by dpkg-deb with root ownership and a fixed file order.
set -euo pipefail
cd "$(dirname "$0")"
umask 022
# GIT_OPTIONAL_LOCKS=0: Go's VCS stamping (git status) reads the repository without refreshing,
# and so locking, its index while others may be using it.
export LC_ALL=C TZ=UTC GIT_OPTIONAL_LOCKS=0

DIST=${DIST:-dist}
MAINTAINER=${MAINTAINER:-station agent maintainers <station@station.dev>}

for tool in go dpkg-deb sha256sum md5sum; do
	if ! command -v "$tool" >/dev/null; then
		echo "cross-build.sh: $tool is missing" >&2
		exit 1
	fi
done

start=$SECONDS
have_commit=false
if git rev-parse --verify -q HEAD >/dev/null 2>&1; then
	have_commit=true
fi
if [ -z "${VERSION:-}" ]; then
	VERSION=$(git describe --tags --always --dirty 2>/dev/null || echo 0.0.0-dev)
fi
if [ -z "${COMMIT:-}" ]; then
	COMMIT=unknown
	if $have_commit; then
		COMMIT=$(git rev-parse HEAD)
	fi
fi
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
	if $have_commit; then
		SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)
	else
		echo "cross-build.sh: no commit: file times set to 1970 (SOURCE_DATE_EPOCH=0)" >&2
		SOURCE_DATE_EPOCH=0
	fi
fi
export SOURCE_DATE_EPOCH
case $VERSION in
*dirty*) echo "cross-build.sh: the tree has uncommitted changes: this build is not reproducible from a commit" >&2 ;;
esac

# deb_version turns a git describe string into a Debian version: v1.2.3 -> 1.2.3,
# v1.2.3-4-gabc1234 -> 1.2.3+4.gabc1234, v1.2.3-rc1 -> 1.2.3~rc1, abc1234 -> 0.0.0+git.abc1234.
deb_version() {
	local v=${1#v}
	if [[ ! $v =~ ^[0-9] ]]; then
		v=0.0.0+git.$v
	fi
	if [[ $v =~ ^([0-9][0-9.]*)-((rc|alpha|beta|pre)[0-9.]*)(.*)$ ]]; then
		v=${BASH_REMATCH[1]}~${BASH_REMATCH[2]}${BASH_REMATCH[4]}
	fi
	v=${v/-/+}
	v=${v//-/.}
	v=${v//[^A-Za-z0-9.+~]/.}
	printf '%s\n' "$v"
}
debver=$(deb_version "$VERSION")

# Without a commit Go cannot stamp VCS information and refuses to build with the default
# -buildvcs=auto; with one, the stamp (revision, time, modified) is part of the reproducible
# output and `go version -m station` shows it.
buildvcs=auto
if ! $have_commit; then
	buildvcs=false
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

rm -rf "$DIST"
mkdir -p "$DIST"

ldflags="-s -w -buildid= -X main.version=$VERSION -X main.commit=$COMMIT"

# build NAME GOARCH [VAR=VALUE ...]
build() {
	local name=$1 arch=$2
	shift 2
	env -u GOARM -u GOARM64 -u GOAMD64 GOOS=linux GOARCH="$arch" CGO_ENABLED=0 GOFLAGS=-mod=readonly "$@" \
		go build -trimpath -buildvcs="$buildvcs" -ldflags "$ldflags" -o "$DIST/station-linux-$name" ./cmd/station
}

echo "cross-build.sh: station $VERSION ($COMMIT), $(go version)"
build armv6 arm GOARM=6
build armv7 arm GOARM=7
build arm64 arm64 GOARM64=v8.0
build amd64 amd64 GOAMD64=v1

# deb BINARY DEBARCH
deb() {
	local bin=$1 arch=$2
	local root=$work/$arch
	mkdir -p "$root/DEBIAN"
	install -D -m 0755 "$DIST/station-linux-$bin" "$root/usr/bin/station"
	install -D -m 0644 systemd/station.service "$root/usr/lib/systemd/system/station.service"
	install -D -m 0644 systemd/station.sysusers "$root/usr/lib/sysusers.d/station.conf"
	install -D -m 0644 systemd/station.tmpfiles "$root/usr/lib/tmpfiles.d/station.conf"
	install -D -m 0644 systemd/station-reboot.rules "$root/usr/share/polkit-1/rules.d/station-reboot.rules"
	install -D -m 0640 systemd/station.toml "$root/etc/station/station.toml"
	find "$root" -type d -exec chmod 0755 {} +
	chmod 0750 "$root/etc/station"

	# Installed-Size as dpkg-gencontrol counts it: KiB per file, rounded up, plus one per directory.
	local size
	size=$(find "$root" -path "$root/DEBIAN" -prune -o \( -type f -printf '%s\n' \) -o \( -type d -printf '0\n' \) |
		awk '{ s += ($1 == 0) ? 1 : int(($1 + 1023) / 1024) } END { print s }')
	cat >"$root/DEBIAN/control" <<CONTROL
Package: station
Version: $debver
Architecture: $arch
Maintainer: $MAINTAINER
Installed-Size: $size
Depends: systemd (>= 247)
Recommends: polkitd | policykit-1
Section: misc
Priority: optional
Description: station agent for community service stations
 The one program on an unattended service station: it reads the contactless
 card reader (PN532), records every card presentation durably on the station,
 and forwards the records, status and telemetry in order and at least once to
 the central MQTT broker. It runs as the systemd service station.service under
 the unprivileged user station; edit /etc/station/station.toml, then
 systemctl enable --now station.
CONTROL
	echo /etc/station/station.toml >"$root/DEBIAN/conffiles"
	(cd "$root" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -print | sed 's|^\./||' | sort |
		xargs md5sum) >"$root/DEBIAN/md5sums"
	local s
	for s in postinst prerm postrm; do
		install -m 0755 "systemd/deb/$s" "$root/DEBIAN/$s"
	done
	chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"
	find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
	dpkg-deb --root-owner-group -Zxz --build "$root" "$DIST/station_${debver}_${arch}.deb" >/dev/null
}

deb armv6 armhf
deb arm64 arm64
deb amd64 amd64

(cd "$DIST" && sha256sum station-linux-* ./*.deb | sed 's|  \./|  |' >SHA256SUMS)
cat "$DIST/SHA256SUMS"
echo "cross-build.sh: done in $((SECONDS - start))s"
