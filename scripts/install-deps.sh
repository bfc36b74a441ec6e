#!/bin/sh
# install-deps.sh: install what the vmscatter test rig needs on Debian 12 (bookworm), as root.
#
# Idempotent and quick: it asks dpkg which packages are missing and runs apt-get only for those. When everything is
# present it changes nothing and touches no network. It never needs /dev/net/tun: the lab uses veth pairs and bridges
# inside network namespaces, and test guests run with `-nic none`.
#
#   qemu-system-x86  qemu-system-x86_64 (QEMU 7.2 on bookworm), runs test guests under TCG or KVM
#   qemu-utils       qemu-img
#   busybox-static   the guest initramfs userland (must be the static build)
#   iproute2         ip, tc, bridge: the namespace lab
#   cpio xz-utils zstd  inspecting and unpacking initramfs images and kernel packages
#   kmod             modprobe, for sch_netem / bridge on stock kernels
#   ca-certificates  apt over https mirrors
#   patchelf         points the unpacked QEMU 11.1 at its own libraries (scripts/fetch-qemu.sh)
set -eu

PACKAGES="qemu-system-x86 qemu-utils busybox-static iproute2 cpio xz-utils zstd kmod ca-certificates patchelf"

. "$(dirname "$0")/lib.sh"
require_root install-deps.sh
missing=$(missing_packages $PACKAGES)

if [ -n "$missing" ]; then
	echo "install-deps.sh: installing:$missing"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	# shellcheck disable=SC2086 # word splitting of the package list is intended
	apt-get install -y -q --no-install-recommends $missing
fi

# Kernel modules the lab may need on a stock kernel. Built-in on some kernels, absent on others: never fatal.
if command -v modprobe >/dev/null 2>&1; then
	for m in veth bridge sch_netem sch_htb cls_bpf; do
		modprobe -q "$m" 2>/dev/null || true
	done
fi

for b in qemu-system-x86_64 busybox ip tc; do
	if ! command -v "$b" >/dev/null 2>&1; then
		echo "install-deps.sh: $b still missing after install" >&2
		exit 1
	fi
done
