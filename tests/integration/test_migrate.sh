#!/usr/bin/env bash
# Live migration between two migvm processes over loopback: the test guest
# (2 vCPUs, 1 GiB, dirtying 64 MiB as fast as it can) moves, goes on running
# on the destination with its timer ticking and no stamp mismatch, and the
# memory hash at the source's pause equals the destination's before resume
# (--verify: the destination refuses to commit otherwise). Once with each
# dirty-tracking backend (over the default two connections), and once over
# a single connection with zstd on (and the destination's RAM preallocated).
# The destination fills guest RAM with base pages and gives it to THP once
# the VM runs there; with --incoming-huge-pages (the bitmap run), THP all
# along.
here=$(dirname "$0")
source "$here/migrate_common.sh"
vm_init "$1" "$2"
need_testguest

guest="touch=128M wss=64M rate=max hb=500 duration=10"
for mode in clear bitmap ring conn1; do
	extra=(--dirty-log "$mode")
	[ "$mode" = conn1 ] && extra=(--connections 1 --compress on)
	if [ "$mode" = conn1 ]; then
		# --prealloc: all guest RAM backed before the port is announced
		start_dest dst-$mode --mem 1024 --cpus 2 --prealloc
		rss=$(awk '/^VmRSS/ {print $2}' "/proc/$(pgrep -P "$DEST_PID" migvm)/status")
		[ "${rss:-0}" -ge $((1000 * 1024)) ] ||
			fail "--prealloc: the destination's RSS is ${rss:-?} KiB, not 1 GiB"
		ok "--prealloc: destination RSS ${rss} KiB before the migration"
	elif [ "$mode" = bitmap ]; then
		start_dest dst-$mode --mem 1024 --cpus 2 --incoming-huge-pages
	else
		start_dest dst-$mode --mem 1024 --cpus 2
	fi
	want=base
	[ "$mode" = bitmap ] && want=huge
	if [ -n "$(thp_mode)" ]; then
		ram_info "$DEST_PID" 1024
		[ "$RAM_THP" = "$want" ] || fail "$mode: the destination's RAM waits for the migration with $RAM_THP pages, not $want"
	fi
	run_source src-$mode --mem 1024 --cpus 2 --cmdline "$guest" \
		--migrate-after 2.5 "${extra[@]}" --verify
	[ "$RC" = 0 ] || fail "$mode: source exited $RC: $(cat "$WORK/src-$mode.out")"
	check_json "$WORK/src-$mode.out"
	for _ in $(seq 100); do
		grep -q "incoming migration done" "$WORK/dst-$mode.err" && break
		sleep 0.05
	done
	grep -q "incoming migration done" "$WORK/dst-$mode.err" ||
		fail "$mode: the destination did not say the migration was done"
	if [ -n "$(thp_mode)" ]; then
		ram_info "$DEST_PID" 1024
		[ "$RAM_THP" = huge ] || fail "$mode: the VM runs on the destination and its RAM is still $RAM_THP pages"
		ok "$mode: destination RAM filled with $want pages, then given to THP"
	fi
	# The destination hangs up all connections once it runs the VM; the
	# source must still read Activated (and with it the resume time).
	grep -q "did not confirm activation" "$WORK/src-$mode.err" &&
		fail "$mode: $(cat "$WORK/src-$mode.err")"
	wait_exit "$DEST_PID" 60
	[ "$RC" = 0 ] || fail "$mode: destination exited $RC (the guest's status)"
	check_continues "$WORK/src-$mode.con" "$WORK/dst-$mode.con"
	grep -q "done .*mismatches=0 status=0" "$WORK/dst-$mode.con" ||
		fail "$mode: the guest did not end cleanly on the destination"
	ok "$mode: migrated and the guest ended itself with status 0"
done

# An idle guest: its few last pages (timer ticks, heartbeats; at most 64)
# are encoded by the migration thread itself and written with each
# connection's end, no connection thread woken. --verify checks the memory
# they leave on the destination.
start_dest dst-idle --mem 1024 --cpus 2
run_source src-idle --mem 1024 --cpus 2 --migrate-after 2.5 --verify \
	--cmdline "touch=16M wss=0 rate=0 idle=halt hb=200 duration=6"
[ "$RC" = 0 ] || fail "idle: source exited $RC: $(cat "$WORK/src-idle.out")"
check_json "$WORK/src-idle.out"
python3 - "$WORK/src-idle.out" <<'PY' || fail "idle: $(cat "$WORK/src-idle.out")"
import json, sys
j = json.loads(next(l for l in open(sys.argv[1]) if l.startswith('{')))
last = j["per_round"][-1]["pages"]
assert 1 <= last <= 64, "the stop-and-copy round sent %d pages, not 1-64" % last
print("idle: the stop-and-copy round sent %d pages" % last)
PY
wait_exit "$DEST_PID" 60
[ "$RC" = 0 ] || fail "idle: destination exited $RC (the guest's status)"
check_continues "$WORK/src-idle.con" "$WORK/dst-idle.con"
grep -q "done .*mismatches=0 status=0" "$WORK/dst-idle.con" ||
	fail "idle: the guest did not end cleanly on the destination"
ok "idle: migrated with the last pages written by the migration thread"
