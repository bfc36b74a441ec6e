#!/bin/sh
# install-libvirt.sh: install what the libvirt lab (bench/virtlab) needs on Debian 12 (bookworm), as root.
#
# Idempotent: it asks dpkg which packages are missing and runs apt-get only for those; when everything is present it
# changes nothing and touches no network. The lab starts its own libvirtd in each lab host's namespaces, so this
# script makes sure no system libvirtd is started or enabled, and that the system never creates libvirt's default
# network (virbr0): nothing here runs a daemon.
#
#   libvirt-daemon              the monolithic libvirtd (9.0 on bookworm; Debian 12 ships no virtqemud)
#   libvirt-daemon-driver-qemu  its QEMU driver
#   libvirt-clients             virsh, which scatter/virt drives
#
# The user libvirt-qemu must exist even when qemu.conf says user = "root": the QEMU driver resolves its built-in
# default user before it reads qemu.conf, and only libvirt-daemon-system's postinst (not installed) would create it.
set -eu

PACKAGES="libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients"

. "$(dirname "$0")/lib.sh"
require_root install-libvirt.sh
missing=$(missing_packages $PACKAGES)

if [ -n "$missing" ]; then
	echo "install-libvirt.sh: installing:$missing"
	export DEBIAN_FRONTEND=noninteractive
	# No maintainer script may start a service while we install (invoke-rc.d honours policy-rc.d's exit 101).
	policy=/usr/sbin/policy-rc.d
	made_policy=0
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod 0755 "$policy"
		made_policy=1
	fi
	apt-get update -q
	# shellcheck disable=SC2086 # word splitting of the package list is intended
	if ! apt-get install -y -q --no-install-recommends $missing; then
		[ "$made_policy" -eq 1 ] && rm -f "$policy"
		exit 1
	fi
	[ "$made_policy" -eq 1 ] && rm -f "$policy"
fi

if ! getent passwd libvirt-qemu >/dev/null 2>&1; then
	useradd --system --no-create-home --home-dir /var/lib/libvirt --shell /usr/sbin/nologin \
		--comment "libvirt QEMU (vmscatter lab)" libvirt-qemu
fi

# No system libvirtd: the lab runs one per lab host, in that host's namespaces.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
	for u in libvirtd.service libvirtd.socket libvirtd-ro.socket libvirtd-admin.socket \
		virtlogd.service virtlogd.socket virtlockd.service virtlockd.socket; do
		systemctl disable --now "$u" >/dev/null 2>&1 || true
	done
fi
# The default network's autostart link would make a libvirtd create virbr0; the lab's libvirtds use private
# /etc/libvirt directories, but a system one must not find it either.
rm -f /etc/libvirt/qemu/networks/autostart/default.xml

for b in libvirtd virsh; do
	if ! command -v "$b" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$b" ]; then
		echo "install-libvirt.sh: $b still missing after install" >&2
		exit 1
	fi
done
