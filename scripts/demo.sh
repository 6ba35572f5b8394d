#!/usr/bin/env bash
# The main job: set up, build, boot a test VM and live-migrate it between
# two local daemons, printing downtime and total time.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$here/build}
"$here/scripts/setup.sh"
cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc)" >/dev/null
echo "libmigrate $(cd "$build" && ctest -L unit 2>&1 | grep 'tests passed')"
echo "demo: live migration is not implemented yet; nothing was migrated." >&2
exit 1
