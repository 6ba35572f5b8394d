#!/usr/bin/env bash
# A guest that dirties memory faster than a capped link can carry still
# converges: the source throttles its vCPUs (auto-converge) until the
# expected downtime is under the target, and the guest runs at full speed
# again on the destination.
here=$(dirname "$0")
source "$here/migrate_common.sh"
vm_init "$1" "$2"
need_testguest

start_dest dst --mem 512 --cpus 1
run_source src --mem 512 --cpus 1 --cmdline "touch=24M wss=8M rate=max hb=300 duration=14" \
	--migrate-after 1 --max-bandwidth 16M --downtime-ms 100
[ "$RC" = 0 ] || fail "source exited $RC: $(cat "$WORK/src.out")"
check_json "$WORK/src.out"
python3 - "$WORK/src.out" <<'PY' || fail "did not converge through the throttle"
import json, sys
j = json.loads(next(l for l in open(sys.argv[1]) if l.startswith('{')))
r = j["per_round"]
# Unthrottled, the guest rewrites all 2048 pages of its working set in every
# round at 16 MB/s; it only converged because the throttle slowed it.
assert j["throttle_pct"] > 0, "no throttle was applied"
assert r[1]["dirty_pages"] >= 1500, r[1]
assert j["expected_downtime_ms"] <= 100, j["expected_downtime_ms"]
print("converged after %d rounds with the vCPUs throttled to %d%%; downtime %.1f ms"
      % (j["rounds"], j["throttle_pct"], j["downtime_ms"]))
PY
wait_exit "$DEST_PID" 60
[ "$RC" = 0 ] || fail "destination exited $RC"
check_continues "$WORK/src.con" "$WORK/dst.con"
