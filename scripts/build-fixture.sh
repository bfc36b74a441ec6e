#!/bin/sh
# build-fixture.sh: install the test rig's packages, then build the guest fixture (kernel + initramfs) into
# $VMSCATTER_CACHE or ~/.cache/vmscatter/fixture. Extra arguments go to the build-fixture command
# (-boot boots one guest under TCG and shows its console).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
sh "$root/scripts/install-deps.sh"
export PATH="$PATH:/usr/local/go/bin"
cd "$root"
exec go run ./bench/fixture/cmd/build-fixture "$@"
