#!/usr/bin/env bash
# There and back: the test guest moves A -> B (`--migrate-to`), then the VM
# that was itself migrated in moves on B -> A' over B's control channel, and
# goes on at A' with its own check passing: all its pages verified again
# there, no MISMATCH, exit 0. The second hop saves vCPUs that libmigrate
# loaded, not ones that booted: what a load leaves behind in KVM (a latched
# INIT, an MP state, a pending event, ...) reaches a destination only this
# way. MIG_TEST_CPUS, MIG_TEST_MEM and MIG_TEST_GUEST change the VM.
here=$(dirname "$0")
source "$here/migrate_common.sh"
vm_init "$1" "$2"
need_testguest
test_deadline 280 # CTest gives it 300 s (600 in a nested host)

CPUS=${MIG_TEST_CPUS:-2}
MEM=${MIG_TEST_MEM:-256}
# Slow enough dirtying that pre-copy converges on an emulated nested host;
# the guest runs until A' is told to quit.
guest="cpus=$CPUS ${MIG_TEST_GUEST:-touch=16M wss=2M rate=500 hb=300}"

# Progress is read from the consoles, not the control channels: every
# `migvm ctl` costs a process, a second or more in a nested host.
hb_lines() { grep -c '^hb ' "$WORK/$1.con" 2>/dev/null; }
has_hb() { [ "$(hb_lines "$1")" -ge "$2" ]; }
said() { grep -q "$2" "$WORK/$1.err"; }
pass_of() { sed -n 's/.* pass=\([0-9]*\).*/\1/p' | tail -n1; }
first_pass() { P0=$(grep '^hb ' "$WORK/a2.con" | head -n1 | pass_of); [ -n "$P0" ]; }
passes_after() { # N: the guest at A' finished N verify passes since P0
	P=$(grep '^hb ' "$WORK/a2.con" | pass_of)
	[ "${P:-0}" -ge $((P0 + $1)) ] || pid_gone "$A2_PID"
}

# B: the first destination, with a control channel to send the VM on.
SB=$WORK/b.sock
start_dest b --mem "$MEM" --cpus "$CPUS" --control "$SB"
B_PID=$DEST_PID

# A -> B, then B runs the guest a while.
run_source a --mem "$MEM" --cpus "$CPUS" --cmdline "$guest" --migrate-after 1 --verify
[ "$RC" = 0 ] || fail "A -> B: source exited $RC: $(cat "$WORK/a.out")"
check_json "$WORK/a.out"
poll_until 30 said b "incoming migration done" ||
	fail "A -> B: the destination did not say the migration was done"
poll_until 60 has_hb b $(($(hb_lines b) + 2)) ||
	fail "A -> B: no heartbeats on B after the move"
ok "A -> B"

# B -> A'.
SA=$WORK/a2.sock
start_dest a2 --mem "$MEM" --cpus "$CPUS" --control "$SA"
A2_PID=$DEST_PID
migrate_committed b "$SB" "$B_PID" verify=1
poll_until 30 said a2 "incoming migration done" ||
	fail "B -> A': the destination did not say the migration was done"
ok "B -> A': migrated"

# The guest at A' checks all its pages again, twice over (two more verify
# passes in its heartbeats), and counts no mismatch.
poll_until 60 first_pass ||
	fail "A': no heartbeat after the move: $(tail -n3 "$WORK/a2.con")"
poll_until 120 passes_after 2
! pid_gone "$A2_PID" || {
	wait_exit "$A2_PID" 1
	fail "A' ended by itself with $RC: $(tail -n3 "$WORK/a2.err")"
}
[ "${P:-0}" -ge $((P0 + 2)) ] ||
	fail "A': the guest did not verify its pages again (pass $P0 -> ${P:-?})"
check_continues "$WORK/b.con" "$WORK/a2.con"
ctl "$SA" quit >/dev/null || fail "A': quit failed"
wait_exit "$A2_PID" 30
[ "$RC" = 0 ] || fail "A': exited $RC"
ok "there and back: at A' the guest verified all its pages $((P - P0)) more times, no mismatch, exit 0"
