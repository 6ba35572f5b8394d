#!/usr/bin/env bash
# Live migration between two migvm processes over loopback: the test guest
# (2 vCPUs, 1 GiB, dirtying 64 MiB as fast as it can) moves, goes on running
# on the destination with its timer ticking and no stamp mismatch, and the
# memory hash at the source's pause equals the destination's before resume
# (--verify: the destination refuses to commit otherwise). Once with each
# dirty-tracking backend (bitmap and ring in a nested host; below) over
# the default two connections, and once over
# a single connection with zstd on (and the destination's RAM preallocated).
# The destination fills guest RAM with base pages and gives it to THP once
# the VM runs there; with --incoming-huge-pages (the bitmap run), THP all
# along.
#
# No step assumes how fast the machine is: the destination starts, and the
# migration with it, once the guest runs its workload (a heartbeat on the
# control channel), and the guest has no duration: it runs on the
# destination until the test, having looked at the destination's memory and
# seen heartbeats there, tells it to quit (with no mismatch, migvm exits 0).
# Five 1 GiB migrations with --verify (512 MiB in a nested host, where CI
# saw 508-668 s for 1 GiB), so it gets more than 300 s.
# ctest-timeout: 450
here=$(dirname "$0")
source "$here/migrate_common.sh"
vm_init "$1" "$2"
need_testguest

guest="touch=128M wss=64M rate=max hb=500"
MEM=1024
# In a nested host, emulated, half of it (the five runs took 508-668 s of
# their 900 there; 522 s with half the memory: the fixed costs of a run
# dominate).
# And no clear-log run there: nested.linux moves its Linux VM with that
# backend, and kvm.test_dirty's *_clear cases check it page by page.
modes=(clear bitmap ring conn1)
[ -z "${MIG_IN_NESTED:-}" ] || { guest="touch=64M wss=32M rate=max hb=500"; MEM=512; modes=(bitmap ring conn1); }
for mode in "${modes[@]}"; do
	# The dirty-log backend on the command line too: the ring must be
	# enabled before the vCPUs exist.
	params=(dirty-log="$mode")
	sopts=(--dirty-log "$mode")
	[ "$mode" = conn1 ] && params=(connections=1 compress=on) && sopts=()
	dctl=(--control "$WORK/dst-$mode.sock")
	start_source src-$mode --mem $MEM --cpus 2 --cmdline "$guest" "${sopts[@]}"
	if [ "$mode" = conn1 ]; then
		# --prealloc: all guest RAM backed before the port is announced
		start_dest dst-$mode --mem $MEM --cpus 2 --prealloc "${dctl[@]}"
		rss=$(awk '/^VmRSS/ {print $2}' "/proc/$(pgrep -P "$DEST_PID" migvm)/status")
		[ "${rss:-0}" -ge $((MEM * 1000)) ] ||
			fail "--prealloc: the destination's RSS is ${rss:-?} KiB, not $MEM MiB"
		ok "--prealloc: destination RSS ${rss} KiB before the migration"
	elif [ "$mode" = bitmap ]; then
		start_dest dst-$mode --mem $MEM --cpus 2 --incoming-huge-pages "${dctl[@]}"
	else
		start_dest dst-$mode --mem $MEM --cpus 2 "${dctl[@]}"
	fi
	want=base
	[ "$mode" = bitmap ] && want=huge
	if [ -n "$(thp_mode)" ]; then
		ram_info "$DEST_PID" $MEM
		[ "$RAM_THP" = "$want" ] || fail "$mode: the destination's RAM waits for the migration with $RAM_THP pages, not $want"
	fi
	migrate_source src-$mode "${params[@]}" verify=on
	[ "$RC" = 0 ] || fail "$mode: source exited $RC: $(cat "$WORK/src-$mode.out")"
	check_json "$WORK/src-$mode.out"
	poll_until 120 grep -q "incoming migration done" "$WORK/dst-$mode.err"
	grep -q "incoming migration done" "$WORK/dst-$mode.err" ||
		fail "$mode: the destination did not say the migration was done"
	if [ -n "$(thp_mode)" ]; then
		ram_info "$DEST_PID" $MEM
		[ "$RAM_THP" = huge ] || fail "$mode: the VM runs on the destination and its RAM is still $RAM_THP pages"
		ok "$mode: destination RAM filled with $want pages, then given to THP"
	fi
	# The destination hangs up all connections once it runs the VM; the
	# source must still read Activated (and with it the resume time).
	grep -q "did not confirm activation" "$WORK/src-$mode.err" &&
		fail "$mode: $(cat "$WORK/src-$mode.err")"
	dest_runs dst-$mode 3
	[ "$RC" = 0 ] || fail "$mode: destination exited $RC (a mismatch, or an error)"
	check_continues "$WORK/src-$mode.con" "$WORK/dst-$mode.con"
	ok "$mode: migrated and the guest runs on with no mismatch"
done

# An idle guest: its few last pages (timer ticks, heartbeats; at most 64)
# are encoded by the migration thread itself and written with each
# connection's end, no connection thread woken. --verify checks the memory
# they leave on the destination.
start_source src-idle --mem $MEM --cpus 2 \
	--cmdline "touch=16M wss=0 rate=0 idle=halt hb=200"
start_dest dst-idle --mem $MEM --cpus 2 --control "$WORK/dst-idle.sock"
migrate_source src-idle verify=on
[ "$RC" = 0 ] || fail "idle: source exited $RC: $(cat "$WORK/src-idle.out")"
check_json "$WORK/src-idle.out"
python3 - "$WORK/src-idle.out" <<'PY' || fail "idle: $(cat "$WORK/src-idle.out")"
import json, sys
j = json.loads(next(l for l in open(sys.argv[1]) if l.startswith('{')))
last = j["per_round"][-1]["pages"]
assert 1 <= last <= 64, "the stop-and-copy round sent %d pages, not 1-64" % last
print("idle: the stop-and-copy round sent %d pages" % last)
PY
dest_runs dst-idle 3
[ "$RC" = 0 ] || fail "idle: destination exited $RC (a mismatch, or an error)"
check_continues "$WORK/src-idle.con" "$WORK/dst-idle.con"
ok "idle: migrated with the last pages written by the migration thread"
