#!/usr/bin/env bash
# The Linux test VM (tests/linux/test_linux_vm.sh) in a nested host of its
# own with one vCPU. A nested host with two vCPUs on one TCG thread finds
# its TSCs unsynchronized ("Marking TSC unstable"), and a Linux guest in it
# then stops at boot, its timers never firing (the test guest, which
# counts LAPIC ticks, does not mind): so not in the fixture's host. Runs
# wherever a nested host can, /dev/kvm or not (hardware-virtualised KVM).
#   test_linux.sh BUILD SRC
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "${1:-$here/../../build}" && pwd)
src=$(cd "${2:-$here/../..}" && pwd)
why=$("$here/nested" check) || { echo "skip: no nested host can run here: $why"; exit 77; }
# Two hops here, the dirty ring and clear-log (the bitmap backend moves the
# test guest in integration.test_migrate): each hop costs a minute or two
# of CI under emulation.
exec "$here/nested" run --mem 3072 --cpus 1 --build "$build" --timeout 1100 -- \
	env MIG_LINUX_HOPS="${MIG_LINUX_HOPS:-clear ring}" \
	bash "$src/tests/linux/test_linux_vm.sh" "$build" "$src"
