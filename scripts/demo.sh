#!/usr/bin/env bash
# The main job: set up, build, boot the self-checking test guest and
# live-migrate it between two local migvm processes over loopback, then
# print downtime, total time and rounds, and check that the guest goes on
# running on the destination with no lost or stale page.
#
#   scripts/demo.sh [--mem MIB] [--cpus N] [--wss SIZE] [--touch SIZE]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$here/build}
mem=1024 cpus=2 wss=64M touch=256M
while [ $# -gt 0 ]; do
	case $1 in
	--mem) mem=$2; shift 2 ;;
	--cpus) cpus=$2; shift 2 ;;
	--wss) wss=$2; shift 2 ;;
	--touch) touch=$2; shift 2 ;;
	*) echo "usage: $0 [--mem MIB] [--cpus N] [--wss SIZE] [--touch SIZE]" >&2; exit 2 ;;
	esac
done

"$here/scripts/setup.sh"
cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc)" --target migvm >/dev/null
[ -c /dev/kvm ] || { echo "demo: /dev/kvm is needed to run VMs" >&2; exit 1; }

migvm=$build/vmm/migvm
work=$(mktemp -d /tmp/migdemo.XXXXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')

echo "== destination: migvm --incoming (waiting for the VM)"
timeout 300 "$migvm" --mem "$mem" --cpus "$cpus" --incoming tcp:127.0.0.1:0 \
	--token "$token" --console "$work/dst.console" >"$work/dst.json" 2>"$work/dst.err" &
pids+=($!)
for _ in $(seq 100); do
	port=$(sed -n 's/.*incoming migration on port \([0-9]*\).*/\1/p' "$work/dst.err")
	[ -n "$port" ] && break
	sleep 0.1
done
[ -n "${port:-}" ] || { cat "$work/dst.err"; exit 1; }

guest="touch=$touch wss=$wss rate=max hb=500 duration=12"
echo "== source: test guest with $cpus vCPUs, $mem MiB, '$guest'; migrating after 4 s"
timeout 300 "$migvm" --mem "$mem" --cpus "$cpus" --cmdline "$guest" \
	--console "$work/src.console" --migrate-to "tcp:127.0.0.1:$port" \
	--token "$token" --migrate-after 4 >"$work/result.json" 2>"$work/src.err" ||
	{ cat "$work/src.err" "$work/result.json"; exit 1; }

python3 - "$work/result.json" <<'PY'
import json, sys
j = json.loads(open(sys.argv[1]).read())
print("== result: %s" % j["status"])
print("   downtime   %8.1f ms" % j["downtime_ms"])
print("   total time %8.1f ms   (set-up %.1f ms)" % (j["total_time_ms"], j["setup_time_ms"]))
print("   rounds     %8d" % j["rounds"])
print("   sent       %8.1f MB on the wire for %d pages (%d zero)"
      % (j["bytes_on_wire"] / 1e6, j["pages_sent"], j["zero_pages"]))
for r in j["per_round"]:
    print("   round %2d: %7d pages %8.1f MB in %7.1f ms, dirtied meanwhile %d"
          % (r["round"], r["pages"], r["bytes"] / 1e6, r["duration_ms"], r["dirty_pages"]))
PY
echo "== the guest on the destination:"
wait "${pids[0]}" && rc=0 || rc=$?
grep '^hb ' "$work/src.console" | tail -n 1 | sed 's/^/   source, last: /'
grep '^hb ' "$work/dst.console" | head -n 1 | sed 's/^/   dest, first:  /'
grep '^done' "$work/dst.console" | sed 's/^/   dest, end:    /'
if [ "$rc" = 0 ] && ! grep -q MISMATCH "$work/dst.console"; then
	echo "== ok: the guest ran on at the destination with no lost or stale page"
else
	echo "== FAILED: destination exit $rc"; cat "$work/dst.err"; exit 1
fi
