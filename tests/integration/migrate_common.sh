#!/usr/bin/env bash
# Helpers for the live-migration tests, on top of test_vm_common.sh.
#
#   start_dest NAME ARGS...     migvm --incoming on a free loopback port;
#                               sets DEST_PID and DEST_PORT
#   run_source NAME ARGS...     migvm --migrate-to the destination, in the
#                               foreground; $WORK/NAME.out holds its JSON
#   check_json FILE             the JSON is well-formed and its stats agree
#   check_continues SRC DEST    the guest's heartbeats go on after the move
#                               (sequence and ticks), with no mismatch
here=$(dirname "${BASH_SOURCE[0]}")
# shellcheck source=test_vm_common.sh
source "$here/test_vm_common.sh"

TOKEN=tok-$$-$RANDOM

start_dest() {
	local name=$1 i
	shift
	start_vm "$name" --incoming tcp:127.0.0.1:0 --token "$TOKEN" \
		--console "$WORK/$name.con" "$@"
	DEST_PID=$VM_PID
	DEST_PORT=
	for i in $(seq 300); do # --prealloc: 1-6 s per GiB here
		DEST_PORT=$(sed -n 's/.*incoming migration on port \([0-9]*\).*/\1/p' \
			"$WORK/$name.err" 2>/dev/null)
		[ -n "$DEST_PORT" ] && return 0
		kill -0 "$DEST_PID" 2>/dev/null || break
		sleep 0.1
	done
	fail "destination $name did not listen"
}

run_source() {
	local name=$1
	shift
	timeout -s TERM 240 "$MIGVM" --migrate-to "tcp:127.0.0.1:$DEST_PORT" \
		--token "$TOKEN" --console "$WORK/$name.con" "$@" \
		>"$WORK/$name.out" 2>"$WORK/$name.err"
	RC=$?
}

check_json() {
	python3 - "$1" <<'PY' || fail "bad migration result in $1: $(cat "$1")"
import json, sys
lines = [l for l in open(sys.argv[1]) if l.startswith('{')]
assert len(lines) == 1, "expected one JSON object, got %d" % len(lines)
j = json.loads(lines[0])
for k in ("status", "total_time_ms", "downtime_ms", "setup_time_ms", "rounds",
          "bytes_on_wire", "pages_sent", "zero_pages", "per_round"):
    assert k in j, "missing " + k
assert j["status"] == "ok", j.get("error")
assert j["rounds"] >= 2 and len(j["per_round"]) == j["rounds"], j["rounds"]
assert 0 < j["downtime_ms"] < j["total_time_ms"], (j["downtime_ms"], j["total_time_ms"])
assert j["setup_time_ms"] < j["total_time_ms"]
assert sum(r["pages"] for r in j["per_round"]) == j["pages_sent"]
assert sum(r["zero_pages"] for r in j["per_round"]) == j["zero_pages"]
assert sum(r["bytes"] for r in j["per_round"]) <= j["bytes_on_wire"]
# Bytes on the wire agree with the pages and the compression ratio.
assert abs(j["raw_bytes"] - 4096 * j["pages_sent"]) == 0
if j["bytes_on_wire"]:
    assert abs(j["compression_ratio"] - j["raw_bytes"] / j["bytes_on_wire"]) < 0.01
print("migrated: %d rounds, %d pages, %.1f MB on the wire, downtime %.1f ms, total %.1f ms"
      % (j["rounds"], j["pages_sent"], j["bytes_on_wire"] / 1e6, j["downtime_ms"],
         j["total_time_ms"]))
PY
}

# The last heartbeat on the source and the first ones on the destination.
check_continues() {
	local src=$1 dst=$2 s_seq d_seq t1 t2
	s_seq=$(grep '^hb ' "$src" | tail -n1 | sed 's/.*seq=\([0-9]*\).*/\1/')
	d_seq=$(grep -m1 '^hb ' "$dst" | sed 's/.*seq=\([0-9]*\).*/\1/')
	[ -n "$s_seq" ] || fail "no heartbeat on the source console"
	[ -n "$d_seq" ] || fail "no heartbeat on the destination console"
	# The heartbeat being printed at the pause is finished on the
	# destination (the UART's line state moves with the VM), so the first
	# sequence there is the source's last, or the next one; never lower,
	# never a gap.
	[ "$d_seq" -ge "$s_seq" ] && [ "$d_seq" -le $((s_seq + 1)) ] ||
		fail "heartbeats do not continue: source ended at $s_seq, destination began at $d_seq"
	t1=$(grep -m1 '^hb ' "$dst" | sed 's/.*ticks=\([0-9]*\).*/\1/')
	t2=$(grep '^hb ' "$dst" | tail -n1 | sed 's/.*ticks=\([0-9]*\).*/\1/')
	[ "$(grep -c '^hb ' "$dst")" -ge 2 ] || fail "fewer than 2 heartbeats after the move"
	[ "$t2" -gt "$t1" ] || fail "timer ticks stopped on the destination ($t1 -> $t2)"
	grep -q MISMATCH "$src" "$dst" && fail "the guest reported a MISMATCH"
	grep -q 'mismatches=[1-9]' "$dst" && fail "the guest counted mismatches"
	ok "guest continues on the destination: hb $s_seq -> $d_seq, ticks $t1 -> $t2, no mismatch"
}
