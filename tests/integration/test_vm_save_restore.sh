#!/usr/bin/env bash
# Save a running 2-vCPU test guest through the control channel, restore it
# in a new process: its counters continue from where they stopped (the first
# heartbeat after restore follows the last one before the save), timer ticks
# keep coming, no page mismatches. The state file of a 1 GiB guest that
# touched 64 MiB holds about 64 MiB (no zero pages). (Saving and restoring
# cost in proportion to what the guest touched, which a slow host, such as
# a nested one under emulation, feels.)
here=$(dirname "$0")
source "$here/test_vm_common.sh"
vm_init "$1" "$2"
need_testguest
test_deadline 270 # CTest gives it 300 s (600 in a nested host)

TOUCH_MIB=64
state=$WORK/vm.state
sock=$WORK/src.sock
start_vm src --cpus 2 --mem 1024 --control "$sock" \
	--cmdline "touch=${TOUCH_MIB}M wss=16M rate=max hb=200"
src=$VM_PID
wait_sock "$sock"
wait_hb "$sock" 3
status "$sock"
seq1=$(field hb_seq) ticks1=$(field ticks) w1=$(field written)

t0=$(date +%s.%N)
ctl "$sock" save "$state" >/dev/null || fail "save failed"
t1=$(date +%s.%N)
wait_exit "$src" 120
[ "$RC" = 0 ] || fail "migvm exited $RC after save, expected 0"
[ -e "$sock" ] && fail "control socket left behind after save"
[ -e "$state.tmp" ] && fail "temporary state file left behind"
size=$(stat -c %s "$state")
# A save can land while the guest prints a heartbeat (one byte per VM exit:
# the slower the machine, the likelier): migvm writes out the part it has
# when it exits, and the restored guest prints the whole line (the line so
# far is part of the saved state). Then the first heartbeat after restore
# starts with the source's last one, and follows the one before.
hb_seq() { sed -n 's/^hb seq=\([0-9]*\).*/\1/p' <<<"$1"; }
src_last=$(grep '^hb ' "$WORK/src.out" | tail -n1)
src_prev=$(grep '^hb ' "$WORK/src.out" | tail -n2 | head -n1)
last_seq=$(hb_seq "$src_last")
[ -n "$src_last" ] || fail "no heartbeat before the save"
echo "saved after heartbeat $last_seq: $size bytes in" \
	"$(awk -v s="$t0" -v e="$t1" 'BEGIN { printf "%.2f", e - s }') s"
[ "$size" -gt $((TOUCH_MIB << 20)) ] || fail "state file of $size bytes is too small"
[ "$size" -lt $((TOUCH_MIB * 3 / 2 << 20)) ] ||
	fail "state file of $size bytes: zero pages were stored"

# The private backend (the default) is filled with base pages and given to
# THP once restored; with --incoming-huge-pages (private-huge) it takes huge
# pages all along (where the host's THP mode lets it have any). Either way
# it asks for THP afterwards. Without THP in the kernel, nothing to check.
thp=$(thp_mode)
ticks_past() { # SOCK TICKS: the guest's timer ticks went past TICKS
	status "$1"
	[ "$(field ticks)" -gt "$2" ]
}
for backend in memfd anon private private-huge; do
	dsock=$WORK/dst-$backend.sock
	extra=(--mem-backend "${backend%-huge}")
	[ "$backend" = private-huge ] && extra+=(--incoming-huge-pages)
	t0=$(date +%s.%N)
	start_vm dst-$backend --restore "$state" "${extra[@]}" --control "$dsock"
	dst=$VM_PID
	wait_sock "$dsock"
	t1=$(date +%s.%N)
	if [ "${backend%-huge}" = private ] && [ -n "$thp" ]; then
		ram_info "$dst" 1024
		[ "$RAM_THP" = huge ] ||
			fail "$backend: restored RAM left with $RAM_THP pages, not given to THP"
		if [ "$backend" = private ]; then
			[ "$RAM_HUGE_KB" -lt $((TOUCH_MIB / 2 << 10)) ] ||
				fail "$backend: restored into $RAM_HUGE_KB KiB of huge pages, not base pages"
		elif [ "$thp" != never ]; then
			[ "$RAM_HUGE_KB" -ge $((TOUCH_MIB / 2 << 10)) ] ||
				fail "$backend: only $RAM_HUGE_KB KiB of huge pages with --incoming-huge-pages"
		fi
		ok "$backend: restored RAM holds $RAM_HUGE_KB KiB in huge pages, THP asked for after"
	fi
	status "$dsock"
	hb0=$(field hb_lines)
	[ "$(field cpus)" = 2 ] || fail "restored VM has $(field cpus) vCPUs"
	[ "$(field mem_mib)" = 1024 ] || fail "restored VM has $(field mem_mib) MiB"
	wait_hb "$dsock" $((hb0 + 3))
	status "$dsock"
	seq2=$(field hb_seq) ticks2=$(field ticks) w2=$(field written)
	[ "$seq2" -gt "$seq1" ] || fail "hb seq $seq2 after restore, $seq1 before"
	[ "$ticks2" -gt "$ticks1" ] || fail "ticks $ticks2 after restore, $ticks1 before"
	[ "$w2" -gt "$w1" ] || fail "written $w2 after restore, $w1 before"
	first_line=$(grep -m1 '^hb ' "$WORK/dst-$backend.out")
	first=$(hb_seq "$first_line")
	if [[ $first_line == "$src_last"* ]]; then
		# cut by the save (src_prev is src_last when it is the only one)
		want=$(($([ "$src_prev" = "$src_last" ] && echo 0 || hb_seq "$src_prev") + 1))
	else
		want=$((last_seq + 1))
	fi
	[ "$first" = "$want" ] ||
		fail "first heartbeat after restore is '$first_line', expected seq $want (before the save: '$src_prev', '$src_last')"
	poll_until 60 ticks_past "$dsock" "$ticks2" ||
		fail "ticks stopped after restore: $ticks2, 60 s later $(field ticks)"
	[ "$(field mismatches)" = 0 ] || fail "mismatches after restore: $STATUS"
	grep -q MISMATCH "$WORK/dst-$backend.out" && fail "the guest reported a MISMATCH"
	ctl "$dsock" quit >/dev/null || fail "quit failed"
	wait_exit "$dst" 120
	[ "$RC" = 0 ] || fail "restored migvm exited $RC, expected 0"
	[ -e "$dsock" ] && fail "control socket left behind after quit"
	ok "restore ($backend, ready in $(awk -v s="$t0" -v e="$t1" \
		'BEGIN { printf "%.2f", e - s }') s): heartbeat $first follows" \
		"$((want - 1)), seq $seq1 -> $seq2, ticks $ticks1 -> $ticks2"
done

# A save in the middle of boot (ring-0 set-up, APs coming up through
# INIT-SIPI-SIPI) restores too: the guest gets to its heartbeats.
for delay in 0.05 0.2; do
	esock=$WORK/early.sock
	start_vm early --cpus 2 --mem 256 --control "$esock" \
		--cmdline "touch=32M wss=8M hb=100"
	pid=$VM_PID
	wait_sock "$esock"
	sleep "$delay"
	# A file per run: save never overwrites one.
	ctl "$esock" save "$WORK/early-$delay.state" >/dev/null || fail "early save failed"
	wait_exit "$pid" 120
	[ "$RC" = 0 ] || fail "early save: exit $RC"
	before=$(grep -c '^hb ' "$WORK/early.out")
	start_vm early2 --restore "$WORK/early-$delay.state" --control "$esock"
	pid=$VM_PID
	wait_sock "$esock"
	wait_hb "$esock" $((before + 5))
	status "$esock"
	[ "$(field mismatches)" = 0 ] || fail "mismatch after an early restore: $STATUS"
	ctl "$esock" quit >/dev/null
	wait_exit "$pid" 120
	[ "$RC" = 0 ] || fail "early restore: exit $RC"
	ok "saved $delay s into boot ($before heartbeats), restored: $(field hb_lines) heartbeats"
done
