#!/usr/bin/env bash
# The oracle: restore a saved test guest with one touched page corrupted by
# the host (--corrupt-gpa). The guest's verifier must catch it: a MISMATCH
# line naming that page, and migvm's exit status is non-zero (3). Without
# the corruption the same state file restores clean.
here=$(dirname "$0")
source "$here/test_vm_common.sh"
vm_init "$1" "$2"
need_testguest
test_deadline 270 # CTest gives it 300 s (600 in a nested host)

state=$WORK/vm.state
sock=$WORK/src.sock
# One vCPU, 16384 data pages from 16 MiB (DATA_BASE); the first 4096 are
# rewritten all the time, the rest hold generation 1 and are only verified.
start_vm src --mem 256 --control "$sock" \
	--cmdline "touch=64M wss=16M rate=max hb=200"
wait_sock "$sock"
wait_hb "$sock" 2
ctl "$sock" save "$state" >/dev/null || fail "save failed"
wait_exit "$VM_PID" 120
[ "$RC" = 0 ] || fail "migvm exited $RC after save"

page=12000
gpa=$(printf '0x%x' $((0x1000000 + page * 4096)))

# Control: restored untouched, it runs clean.
dsock=$WORK/clean.sock
start_vm clean --restore "$state" --control "$dsock"
wait_sock "$dsock"
status "$dsock"
wait_hb "$dsock" $(($(field hb_lines) + 5))
ctl "$dsock" quit >/dev/null
wait_exit "$VM_PID" 120
[ "$RC" = 0 ] || fail "clean restore exited $RC"
grep -q MISMATCH "$WORK/clean.out" && fail "clean restore reported a MISMATCH"
ok "clean restore: no mismatch"

dsock=$WORK/bad.sock
start_vm bad --restore "$state" --control "$dsock" --corrupt-gpa "$gpa"
pid=$VM_PID
wait_sock "$dsock"
# The guest's verify sweep finds it within a pass over its 64 MiB.
poll_until 120 grep -q MISMATCH "$WORK/bad.out"
grep -q "MISMATCH page=$page" "$WORK/bad.out" ||
	fail "no MISMATCH for page $page in 120 s: $(grep -m3 MISMATCH "$WORK/bad.out")"
grep -q "corrupted the guest page at $gpa" "$WORK/bad.err" ||
	fail "migvm did not report the corruption"
kill -TERM "$pid"
wait_exit "$pid" 120
[ "$RC" = 3 ] || fail "migvm exited $RC after a MISMATCH, expected 3"
grep -q "the guest reported.*MISMATCH" "$WORK/bad.err" ||
	fail "migvm did not report the MISMATCH on stderr"
ok "corrupted page $page ($gpa): $(grep -m1 MISMATCH "$WORK/bad.out"); exit $RC"
