#!/usr/bin/env bash
# Checks the release build and the Debian packages:
#
#   1. shellcheck on the build scripts and the packages' maintainer scripts;
#   2. cross-build.sh twice, the second time with an empty Go build cache, and the two SHA256SUMS
#      compared (binaries and .debs must be bit for bit the same);
#   3. each .deb: dpkg-deb -f fields, dpkg-deb -c contents and modes, conffiles, maintainer
#      scripts, the binary's architecture (armhf: GOARM=6, for the Pi 1 and Zero);
#   4. systemd-analyze verify on the unit, with ExecStart pointed at the freshly built binary
#      (a temporary copy of the unit: /usr/bin/station need not exist on the CI machine);
#   5. the sysusers and tmpfiles files applied to a scratch root; the example config checked by
#      the binary itself (as shipped it must be refused, filled in it must pass); the polkit
#      rule evaluated with node, when node is installed;
#   6. as root, where mount namespaces and overlayfs are allowed: the host architecture's .deb
#      installed, reinstalled, removed and purged in a throwaway overlay of / (the real system
#      is not touched).
#
# PACKAGE_CHECK_WARM=1 keeps the Go build cache for the second build (faster, weaker check).
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$SECONDS
step() { printf '\n=== %s\n' "$*"; }
fail() {
	echo "package-check: $*" >&2
	exit 1
}

step "shellcheck"
shellcheck cross-build.sh .ci/arm-tests.sh .ci/package-check.sh
shellcheck -s sh systemd/deb/postinst systemd/deb/prerm systemd/deb/postrm

step "cross-build.sh twice"
t=$SECONDS
DIST=$work/a ./cross-build.sh
echo "first build: $((SECONDS - t))s"
t=$SECONDS
if [ "${PACKAGE_CHECK_WARM:-}" = 1 ]; then
	DIST=$work/b ./cross-build.sh >/dev/null
else
	GOCACHE=$work/gocache DIST=$work/b ./cross-build.sh >/dev/null
fi
echo "second build: $((SECONDS - t))s"
if ! diff -u "$work/a/SHA256SUMS" "$work/b/SHA256SUMS"; then
	fail "two builds of the same tree differ"
fi
echo "SHA256SUMS identical"
dist=$work/a
(cd "$dist" && sha256sum -c --quiet SHA256SUMS)

# The station binary stays lean: the stripped arm64 release at most 10 MiB.
size=$(stat -c %s "$dist/station-linux-arm64")
echo "arm64 binary: $size bytes"
[ "$size" -le $((10 << 20)) ] || fail "the arm64 binary is $size bytes, more than 10 MiB"

step "packages"
shopt -s nullglob
debs=("$dist"/*.deb)
shopt -u nullglob
[ ${#debs[@]} -eq 3 ] || fail "want 3 .deb files, have ${#debs[@]}"
for arch in armhf arm64 amd64; do
	deb=$(printf '%s\n' "${debs[@]}" | grep "_${arch}\.deb\$") || fail "no $arch package"
	echo "--- $(basename "$deb")"
	for f in Package Version Architecture Maintainer Installed-Size Depends Description; do
		[ -n "$(dpkg-deb -f "$deb" "$f")" ] || fail "$deb: no $f field"
	done
	[ "$(dpkg-deb -f "$deb" Package)" = station ] || fail "$deb: Package is not station"
	[ "$(dpkg-deb -f "$deb" Architecture)" = "$arch" ] || fail "$deb: Architecture is not $arch"

	dpkg-deb -c "$deb" | awk '{ print $1, $2, $6 }' >"$work/contents"
	while read -r mode owner path; do
		grep -qxF -- "$mode $owner $path" "$work/contents" || {
			cat "$work/contents"
			fail "$deb: missing $mode $owner $path"
		}
	done <<-EOF
		-rwxr-xr-x root/root ./usr/bin/station
		-rw-r--r-- root/root ./usr/lib/systemd/system/station.service
		-rw-r--r-- root/root ./usr/lib/sysusers.d/station.conf
		-rw-r--r-- root/root ./usr/lib/tmpfiles.d/station.conf
		-rw-r--r-- root/root ./usr/share/polkit-1/rules.d/station-reboot.rules
		drwxr-x--- root/root ./etc/station/
		-rw-r----- root/root ./etc/station/station.toml
	EOF
	files=$(grep -v '^d' "$work/contents" | awk '{ print $3 }' | sort | tr '\n' ' ')
	want="./etc/station/station.toml ./usr/bin/station ./usr/lib/systemd/system/station.service ./usr/lib/sysusers.d/station.conf ./usr/lib/tmpfiles.d/station.conf ./usr/share/polkit-1/rules.d/station-reboot.rules "
	[ "$files" = "$want" ] || fail "$deb: files $files, want $want"

	rm -rf "$work/control"
	dpkg-deb -e "$deb" "$work/control"
	[ "$(cat "$work/control/conffiles")" = /etc/station/station.toml ] || fail "$deb: conffiles"
	for s in postinst prerm postrm; do
		[ -x "$work/control/$s" ] || fail "$deb: no executable $s"
		cmp -s "$work/control/$s" "systemd/deb/$s" || fail "$deb: $s differs from systemd/deb/$s"
	done
	shellcheck -s sh "$work/control/postinst" "$work/control/prerm" "$work/control/postrm"
	(cd "$work" && rm -rf root && mkdir root && dpkg-deb -x "$deb" root &&
		cd root && md5sum --quiet -c ../control/md5sums) || fail "$deb: md5sums"

	bin=$work/root/usr/bin/station
	machine=$(od -An -tx1 -j18 -N2 "$bin" | tr -d ' ')
	case $arch in
	armhf) want=2800 release=armv6 ;;
	arm64) want=b700 release=arm64 ;;
	amd64) want=3e00 release=amd64 ;;
	esac
	[ "$machine" = "$want" ] || fail "$deb: ELF machine $machine, want $want"
	info=$(go version -m "$bin")
	grep -q 'CGO_ENABLED=0' <<<"$info" || fail "$deb: binary not built with CGO_ENABLED=0"
	grep -q -- '-trimpath=true' <<<"$info" || fail "$deb: binary not built with -trimpath"
	if [ "$arch" = armhf ]; then
		grep -q 'GOARM=6' <<<"$info" || fail "$deb: armhf binary is not GOARM=6"
	fi
	cmp -s "$bin" "$dist/station-linux-$release" || fail "$deb: /usr/bin/station is not station-linux-$release"
	echo ok
done

host=$(go env GOHOSTARCH)
hostbin=$dist/station-linux-$host
if [ ! -x "$hostbin" ]; then
	hostbin=
fi

step "systemd-analyze verify"
mkdir -p "$work/unit"
if [ -n "$hostbin" ]; then
	cp "$hostbin" "$work/unit/station"
else
	cp /bin/true "$work/unit/station"
fi
grep -q '^ExecStart=/usr/bin/station run --config /etc/station/station.toml$' systemd/station.service ||
	fail "station.service: unexpected ExecStart"
sed "s|^ExecStart=/usr/bin/station |ExecStart=$work/unit/station |" systemd/station.service >"$work/unit/station.service"
systemd-analyze verify --man=no "$work/unit/station.service"
echo ok

step "sysusers and tmpfiles"
r=$work/sysroot
mkdir -p "$r/etc"
for f in passwd group shadow gshadow; do
	cp "/etc/$f" "$r/etc/" 2>/dev/null || true
done
systemd-sysusers --root="$r" "$PWD/systemd/station.sysusers"
grep -q '^station:x:[0-9]*:[0-9]*:station agent:/var/lib/station:/usr/sbin/nologin$' "$r/etc/passwd" ||
	fail "sysusers: no station user"
for g in gpio i2c spi dialout; do
	grep -Eq "^$g:x:[0-9]+:(.*,)?station(,.*)?\$" "$r/etc/group" || fail "sysusers: station not in $g"
done
mkdir -p "$r/etc/station"
touch "$r/etc/station/station.toml"
if [ "$(id -u)" = 0 ]; then
	systemd-tmpfiles --root="$r" --create "$PWD/systemd/station.tmpfiles"
	gid=$(awk -F: '$1 == "station" { print $3 }' "$r/etc/group")
	[ "$(stat -c '%a %u %g' "$r/etc/station")" = "750 0 $gid" ] || fail "tmpfiles: /etc/station"
	[ "$(stat -c '%a %u %g' "$r/etc/station/station.toml")" = "640 0 $gid" ] || fail "tmpfiles: station.toml"
else
	echo "(not root: tmpfiles ownership not checked)"
fi
echo ok

step "example config"
if [ -n "$hostbin" ]; then
	if out=$("$hostbin" config check systemd/station.toml 2>&1); then
		fail "the example config as shipped passes the check; it must not run unedited"
	fi
	grep -q station_id <<<"$out" || fail "the example config as shipped fails for another reason: $out"
	# Filled in, with every commented default switched on: no unknown key, no bad value.
	sed -e 's|^station_id = ""|station_id = "ci-check-01"|' \
		-e 's|^broker = ""|broker = "tls://broker.example:8883"|' \
		-e 's|^#\([a-z_]* *=\)|\1|' systemd/station.toml >"$work/filled.toml"
	"$hostbin" config check "$work/filled.toml"
	echo ok
else
	echo "(no binary for $host: skipped)"
fi

step "polkit rule"
if command -v node >/dev/null; then
	node - "$PWD/systemd/station-reboot.rules" <<-'EOF'
		const fs = require("fs");
		const rules = [];
		const polkit = { Result: { YES: "yes", NO: "no", NOT_HANDLED: null }, addRule: (f) => rules.push(f) };
		new Function("polkit", fs.readFileSync(process.argv[2], "utf8"))(polkit);
		if (rules.length !== 1) throw new Error("want one rule, have " + rules.length);
		const check = (user, id, want) => {
			const got = rules[0]({ id }, { user });
			if (got !== want) throw new Error(`${user} ${id}: ${got}, want ${want}`);
		};
		for (const id of ["reboot", "reboot-multiple-sessions", "reboot-ignore-inhibit"]) {
			check("station", "org.freedesktop.login1." + id, "yes");
			check("pi", "org.freedesktop.login1." + id, null);
		}
		for (const id of ["org.freedesktop.login1.power-off", "org.freedesktop.login1.suspend",
			"org.freedesktop.systemd1.manage-units", "org.freedesktop.login1.set-reboot-parameter"]) {
			check("station", id, null);
		}
		console.log("ok");
	EOF
else
	echo "(node not installed: skipped)"
fi

step "install, upgrade, remove, purge in a throwaway overlay of /"
hostdeb=$(printf '%s\n' "${debs[@]}" | grep "_$(dpkg --print-architecture)\.deb\$" || true)
if [ "$(id -u)" != 0 ] || [ -z "$hostdeb" ]; then
	echo "(needs root and a package for this architecture: skipped)"
elif ! unshare -m --propagation private true 2>/dev/null; then
	echo "(no mount namespaces here: skipped)"
else
	mkdir -p "$work/ov"
	cat >"$work/ov/inside.sh" <<-'EOF'
		set -eu
		deb=$1
		check() {
			if ! sh -c "$1"; then
				echo "install test: failed: $1" >&2
				exit 1
			fi
		}
		dpkg -i "$deb" >/dev/null
		for g in station gpio i2c spi dialout; do
			check "id -nG station | tr ' ' '\n' | grep -qx $g"
		done
		check '[ "$(stat -c "%a %U %G" /etc/station)" = "750 root station" ]'
		check '[ "$(stat -c "%a %U %G" /etc/station/station.toml)" = "640 root station" ]'
		check 'station version >/dev/null'
		echo "# edited" >>/etc/station/station.toml
		dpkg -i "$deb" >/dev/null
		check 'tail -n 1 /etc/station/station.toml | grep -qx "# edited"'
		check '[ "$(stat -c "%a %U %G" /etc/station/station.toml)" = "640 root station" ]'
		dpkg -r station >/dev/null
		check '[ ! -e /usr/bin/station ]'
		check '[ -e /etc/station/station.toml ]'
		dpkg -P station >/dev/null
		check '[ ! -e /etc/station ]'
		echo ok
	EOF
	rc=0
	# shellcheck disable=SC2016 # expanded by the inner shell
	unshare -m --propagation private sh -c '
		set -e
		w=$1 deb=$2
		mkdir -p "$w/upper" "$w/work" "$w/root"
		mount -t tmpfs tmpfs "$w/upper"
		mkdir -p "$w/upper/u" "$w/upper/w"
		mount -t overlay overlay -o "lowerdir=/,upperdir=$w/upper/u,workdir=$w/upper/w" "$w/root" || exit 3
		mount --bind /proc "$w/root/proc"
		mount --rbind /dev "$w/root/dev"
		mkdir -p "$w/root/tmp/pkgcheck"
		cp "$deb" "$w/ov/inside.sh" "$w/root/tmp/pkgcheck/"
		chroot "$w/root" sh /tmp/pkgcheck/inside.sh "/tmp/pkgcheck/$(basename "$deb")"
	' sh "$work" "$hostdeb" || rc=$?
	case $rc in
	0) ;;
	3) echo "(overlayfs not available: skipped)" ;;
	*) fail "install test failed" ;;
	esac
fi

step "package-check passed in $((SECONDS - start))s"
