#!/usr/bin/env bash
# The test guest boots with 1 and 2 vCPUs: heartbeats and timer ticks go up
# over 2 s, no page mismatches, it ends itself with status 0, and its dirty
# rate at rate=max (from the heartbeat counters) is well over 100,000 pages/s.
here=$(dirname "$0")
source "$here/test_vm_common.sh"
vm_init "$1" "$2"
need_testguest

for cpus in 1 2; do
	sock=$WORK/boot$cpus.sock
	start_vm boot$cpus --cpus "$cpus" --mem 512 --control "$sock" \
		--cmdline "touch=64M wss=16M rate=max hb=200 duration=5"
	pid=$VM_PID
	wait_sock "$sock"
	wait_hb "$sock" 2
	status "$sock"
	t1=$(date +%s.%N)
	seq1=$(field hb_seq) ticks1=$(field ticks) w1=$(field written)
	v1=$(field verified)
	sleep 2
	status "$sock"
	t2=$(date +%s.%N)
	seq2=$(field hb_seq) ticks2=$(field ticks) w2=$(field written)
	v2=$(field verified)
	[ "$(field cpus)" = "$cpus" ] || fail "status says $(field cpus) vCPUs"
	[ "$seq2" -gt "$seq1" ] || fail "$cpus vCPU(s): heartbeat stuck at $seq1"
	[ "$ticks2" -gt "$ticks1" ] || fail "$cpus vCPU(s): ticks stuck at $ticks1"
	[ "$w2" -gt "$w1" ] || fail "$cpus vCPU(s): written stuck at $w1"
	[ "$v2" -gt "$v1" ] || fail "$cpus vCPU(s): verified stuck at $v1"
	[ "$(field mismatches)" = 0 ] || fail "mismatches: $STATUS"
	rate=$(awk -v a="$w1" -v b="$w2" -v s="$t1" -v e="$t2" \
		'BEGIN { printf "%d", (b - a) / (e - s) }')
	tick_hz=$(awk -v a="$ticks1" -v b="$ticks2" -v s="$t1" -v e="$t2" \
		'BEGIN { printf "%.1f", (b - a) / (e - s) }')
	echo "$cpus vCPU(s): dirty rate at rate=max: $rate pages/s;" \
		"timer ticks: $tick_hz /s; heartbeats $seq1 -> $seq2"
	[ "$rate" -gt 100000 ] ||
		fail "$cpus vCPU(s): dirty rate $rate pages/s, expected > 100000"
	wait_exit "$pid" 60
	[ "$RC" = 0 ] || fail "$cpus vCPU(s): migvm exited $RC, expected 0"
	out=$WORK/boot$cpus.out
	grep -q "MISMATCH" "$out" && fail "the guest reported a MISMATCH"
	n=$(grep -c '^hb ' "$out")
	[ "$n" -ge 5 ] || fail "only $n heartbeat lines on the console"
	grep -q "mismatches=[1-9]" "$out" && fail "a heartbeat counted mismatches"
	[ -e "$sock" ] && fail "control socket $sock left behind"
	ok "$cpus vCPU(s): $n heartbeats, exit 0"
done
