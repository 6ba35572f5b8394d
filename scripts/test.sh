#!/usr/bin/env bash
# Set up, build and run every test: the README's test command.
#   scripts/test.sh [build-dir]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$here/build}
"$here/scripts/setup.sh"
cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	-DMIG_WERROR=ON >/dev/null
cmake --build "$build" -j"$(nproc)"
cd "$build"
# Without /dev/kvm the KVM tests run emulated in nested hosts, one core
# each: two lanes side by side (tests/CMakeLists.txt). With /dev/kvm, one
# test at a time, so that no test's timing competes with another's.
jobs=2
[ -e /dev/kvm ] && [ -z "${MIG_FORCE_NESTED:-}" ] && jobs=1
ctest --output-on-failure --timeout 600 -j"$jobs"
