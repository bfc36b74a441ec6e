#!/bin/sh
# fetch-qemu.sh VERSION: fetch Debian's build of QEMU VERSION (10.0 or 11.1) into a cache directory, without
# installing anything into the system, for the tests that migrate between QEMU versions (qemu/qemutest.Binary).
#
#   10.0  qemu-system-x86 from bookworm-backports (10.0.2 when written): on a bookworm host it runs with the host's
#         libraries, so only what the host lacks is unpacked (the QEMU packages and seabios).
#   11.1  qemu-system-x86 from trixie-backports (11.1.3 when written): it needs trixie's libraries, so its whole
#         no-recommends dependency closure, resolved against an empty dpkg status (about 90 packages), is unpacked,
#         and the binary's interpreter and rpath are pointed at the unpacked loader and libraries (patchelf).
#
# As bench/fixture fetches the guest kernel: `apt-get download` and `dpkg-deb -x`. apt reads a temporary sources
# list (the Debian mirror this machine's apt already uses, other suites) and keeps its lists and state in a temporary
# directory; /etc/apt, /var/lib/apt and /var/lib/dpkg are only read. The one system change it may make is
# `apt-get install patchelf` when patchelf is needed and missing.
#
# Result, in ${XDG_CACHE_HOME:-$HOME/.cache}/vmscatter/qemu/VERSION/:
#   root/                 the unpacked packages
#   qemu-system-x86_64    a wrapper that runs root/usr/bin/qemu-system-x86_64 with -L for the unpacked firmware
#                         (Debian's QEMU is not relocatable: it would read the host's /usr/share/qemu and seabios)
#                         and QEMU_MODULE_DIR for its modules; it execs, so its PID is QEMU's
#   stamp                 what was fetched; written last. While it exists a run is a no-op.
#
# Environment: VMSCATTER_DEBIAN_MIRROR overrides the mirror URI (default: the one /etc/apt serves the host's release
# from). Must run as root (apt-get download as another user works too, but patchelf may need installing).
set -eu

prog=fetch-qemu.sh
say() { echo "$prog: $*"; }
die() {
	echo "$prog: error: $*" >&2
	exit 1
}

if [ $# -ne 1 ]; then
	echo "usage: $prog VERSION   (VERSION: 10.0 or 11.1)" >&2
	exit 2
fi
version=$1
case $version in
10.0) release=bookworm ;;
11.1) release=trixie ;;
*) die "unsupported QEMU version '$version': this script fetches 10.0 (bookworm-backports) or 11.1 (trixie-backports); 7.2 is the system's (scripts/install-deps.sh)" ;;
esac
suite=$release-backports

cache=${XDG_CACHE_HOME:-${HOME:?HOME is not set}/.cache}/vmscatter/qemu
dir=$cache/$version
wrapper=$dir/qemu-system-x86_64

# A second run is a no-op: the stamp is written last, after the wrapper ran.
if [ -f "$dir/stamp" ] && [ -x "$wrapper" ]; then
	say "QEMU $version already in $dir ($(sed -n 's/^qemu=//p' "$dir/stamp"))"
	exit 0
fi

for tool in apt-get dpkg-deb flock; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool not found (this script needs Debian's apt, dpkg and util-linux)"
done

mkdir -p "$cache"
# One fetch per version at a time (tests in several packages may ask at once); the others wait, then find the stamp.
exec 9>"$cache/.lock-$version"
flock 9
if [ -f "$dir/stamp" ] && [ -x "$wrapper" ]; then
	say "QEMU $version already in $dir ($(sed -n 's/^qemu=//p' "$dir/stamp"))"
	exit 0
fi

# The host's release and the Debian mirror its apt uses (one-line .list or deb822 .sources entries).
host_release=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release 2>/dev/null || true)
find_mirror() {
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -f "$f" ] || continue
		awk -v want="$1" '
			$1 == "deb" {
				i = 2
				if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
				if ($(i + 1) == want) { print $i; exit }
			}' "$f"
	done
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		awk -v want="$1" '
			BEGIN { RS = ""; FS = "\n" }
			{
				types = ""; uris = ""; suites = ""; enabled = "yes"
				for (i = 1; i <= NF; i++) {
					if ($i ~ /^[ \t]*#/ || index($i, ":") == 0) continue
					key = tolower(substr($i, 1, index($i, ":") - 1))
					val = " " substr($i, index($i, ":") + 1) " "
					if (key == "types") types = val
					else if (key == "uris") uris = val
					else if (key == "suites") suites = val
					else if (key == "enabled") enabled = val
				}
				if (types ~ / deb / && suites ~ (" " want " ") && enabled !~ /no/) {
					split(uris, u, " "); print u[1]; exit
				}
			}' "$f"
	done
}
mirror=${VMSCATTER_DEBIAN_MIRROR:-}
if [ -n "$mirror" ]; then
	say "Debian mirror (from \$VMSCATTER_DEBIAN_MIRROR): $mirror"
else
	[ -n "$host_release" ] && mirror=$(find_mirror "$host_release" | head -n 1)
	if [ -z "$mirror" ]; then
		mirror=http://deb.debian.org/debian
		say "no Debian mirror found in /etc/apt for '${host_release:-?}': using $mirror"
	else
		say "Debian mirror (from this machine's apt configuration): $mirror"
	fi
fi
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$keyring" ] || die "$keyring missing (package debian-archive-keyring)"

work=$(mktemp -d "$cache/.fetch-$version.XXXXXX")
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

# apt with a temporary sources list and state; the host's apt.conf.d (proxies, validity checks) still applies.
mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/apt/etc/sources.list.d" \
	"$work/apt/etc/preferences.d" "$work/debs"
cat >"$work/apt/etc/sources.list" <<EOF
deb [signed-by=$keyring target=Packages] $mirror $release main
deb [signed-by=$keyring target=Packages] $mirror $suite main
EOF
# On the host's own release, resolve against the host's dpkg status: only what the host lacks is unpacked and the
# host's libraries serve the rest. On another release, resolve against an empty status: the whole closure.
if [ "$host_release" = "$release" ]; then
	status=/var/lib/dpkg/status
	say "host runs $release: unpacking only what it lacks, the host's libraries serve the rest"
else
	status=$work/apt/status
	: >"$status"
	say "host runs ${host_release:-an unknown release}, QEMU $version needs $release's libraries: unpacking its whole dependency closure"
fi
aptq() {
	"$@" -q -o Dir::Etc::SourceList="$work/apt/etc/sources.list" \
		-o Dir::Etc::SourceParts="$work/apt/etc/sources.list.d" \
		-o Dir::Etc::Preferences="$work/apt/etc/preferences" \
		-o Dir::Etc::PreferencesParts="$work/apt/etc/preferences.d" \
		-o Dir::State="$work/apt" -o Dir::State::Lists="$work/apt/lists" -o Dir::State::status="$status" \
		-o Dir::Cache="$work/apt/cache" -o Debug::NoLocking=1 -o APT::Sandbox::User=root \
		-o Acquire::Languages=none
}

say "apt-get update: $release and $suite from $mirror (temporary lists)"
# apt-get update only warns when an index cannot be fetched; without both indexes nothing below can work.
if ! aptq apt-get update >"$work/update.log" 2>&1 || grep -q '^W: \(Failed to fetch\|Some index files failed\)' "$work/update.log"; then
	cat "$work/update.log" >&2
	die "apt-get update could not fetch the $release and $suite indexes from $mirror"
fi
grep '^W:' "$work/update.log" >&2 || true

# The QEMU packages are named so that they come from $suite even when the host has some installed.
say "resolving qemu-system-x86 from $suite (no recommends)"
if ! aptq apt-get -s install --reinstall --no-install-recommends -t "$suite" \
	qemu-system-x86 qemu-system-common qemu-system-data seabios >"$work/resolve.log" 2>&1; then
	cat "$work/resolve.log" >&2
	die "apt cannot resolve qemu-system-x86 from $suite"
fi
sed -n 's/^Inst \([^ ]*\) \(\[[^]]*\] \)\{0,1\}(\([^ ]*\) .*/\1=\3/p' "$work/resolve.log" >"$work/packages"
count=$(wc -l <"$work/packages")
qemu_pkg=$(grep '^qemu-system-x86=' "$work/packages" || true)
[ -n "$qemu_pkg" ] || die "apt's plan installs no qemu-system-x86 (see: apt-get -s install -t $suite qemu-system-x86)"
case ${qemu_pkg#*=} in
*:$version.*) ;;
*) die "$suite offers $qemu_pkg, not QEMU $version" ;;
esac
say "downloading $count packages ($qemu_pkg)"
# shellcheck disable=SC2046 # one word per package
if ! (cd "$work/debs" && aptq apt-get download $(cat "$work/packages")) >"$work/download.log" 2>&1; then
	cat "$work/download.log" >&2
	die "apt-get download failed"
fi

rm -rf "$dir"
mkdir -p "$dir"
# Everything below builds the final tree in place (patchelf writes absolute paths); the stamp comes last.
root=$dir/root
say "unpacking into $root"
for deb in "$work"/debs/*.deb; do
	dpkg-deb -x "$deb" "$root" || die "dpkg-deb -x $deb failed"
done
bin=$root/usr/bin/qemu-system-x86_64
[ -x "$bin" ] || die "$bin missing after unpacking"

# The unpacked loader and libraries, if the closure brought any.
loader=$(find "$root" -name 'ld-linux-x86-64.so.2' \( -type f -o -type l \) | sort | head -n 1)
libdirs=""
for d in usr/lib/x86_64-linux-gnu lib/x86_64-linux-gnu; do
	if [ -d "$root/$d" ] && [ -n "$(find "$root/$d" -maxdepth 1 -name 'lib*.so*' | head -n 1)" ]; then
		libdirs=${libdirs:+$libdirs:}$root/$d
	fi
done
if [ -n "$loader" ] || [ -n "$libdirs" ]; then
	if ! command -v patchelf >/dev/null 2>&1; then
		say "installing patchelf (apt-get install patchelf)"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends patchelf >"$work/patchelf.log" 2>&1 || {
			cat "$work/patchelf.log" >&2
			die "patchelf is missing and apt-get install patchelf failed"
		}
	fi
	if [ -n "$loader" ]; then
		say "patchelf --set-interpreter $loader"
		patchelf --set-interpreter "$loader" "$bin" || die "patchelf --set-interpreter failed"
	fi
	if [ -n "$libdirs" ]; then
		say "patchelf --force-rpath --set-rpath $libdirs"
		patchelf --force-rpath --set-rpath "$libdirs" "$bin" || die "patchelf --set-rpath failed"
	fi
fi

# Firmware: the unpacked data directories first, then QEMU's built-in ones (the host's) for anything not unpacked.
lflags=""
for d in usr/share/qemu usr/share/seabios usr/lib/ipxe/qemu; do
	[ -d "$root/$d" ] && lflags="$lflags -L $root/$d"
done
cat >"$wrapper.tmp" <<EOF
#!/bin/sh
# Written by scripts/fetch-qemu.sh: Debian's qemu-system-x86 ${qemu_pkg#*=} from $suite, unpacked under $root.
# It execs QEMU (same PID) with the unpacked firmware and modules.
QEMU_MODULE_DIR=$root/usr/lib/x86_64-linux-gnu/qemu
export QEMU_MODULE_DIR
exec $bin$lflags "\$@"
EOF
chmod +x "$wrapper.tmp"
mv "$wrapper.tmp" "$wrapper"

if ! out=$("$wrapper" --version 2>&1); then
	echo "$out" >&2
	die "the unpacked QEMU does not run"
fi
got=$(echo "$out" | sed -n 's/^QEMU emulator version \([^ ]*\).*/\1/p')
case $got in
"$version".*) ;;
*) die "the unpacked QEMU says '$got', want $version.x" ;;
esac

{
	echo "qemu=$got"
	echo "package=$qemu_pkg"
	echo "suite=$suite"
	echo "mirror=$mirror"
	echo "packages=$count"
	echo "fetched=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$dir/stamp.tmp"
mv "$dir/stamp.tmp" "$dir/stamp"
say "QEMU $got ready: $wrapper"
