#!/usr/bin/env bash
# Helpers for the live-migration tests, on top of test_vm_common.sh.
#
#   launch_vm NAME ARGS...      start_vm, under a longer bound (MIG_VM_SECS,
#                               900 s): a migration test's VMs live through
#                               several steps, each as slow as the machine
#   start_dest NAME ARGS...     migvm --incoming on a free loopback port;
#                               sets DEST_PID and DEST_PORT
#   run_source NAME ARGS...     migvm --migrate-to the destination, in the
#                               foreground; $WORK/NAME.out holds its JSON
#   start_source NAME ARGS...   migvm to be migrated later through its control
#                               socket $WORK/NAME.sock; returns once its guest
#                               runs its workload (a heartbeat: touching
#                               memory is done, however long it took); sets
#                               SRC_PID
#   migrate_source NAME K=V...  `ctl migrate` NAME to the destination with
#                               these parameters; waits for its JSON result
#                               and, once it migrated, for it to exit; RC is
#                               its exit status (1 if the migration failed:
#                               the VM is left running there)
#   dest_runs NAME N            the destination NAME (started with --control
#                               $WORK/NAME.sock) runs the guest on: N
#                               heartbeats on its console, no mismatch; then
#                               it is told to quit; RC is its exit status
#   check_json FILE             the JSON is well-formed and its stats agree
#   migrate_committed NAME SOCK PID K=V...
#                               `ctl SOCK migrate` (a VM named NAME, whose
#                               migvm is PID) to the destination with these
#                               parameters: the source exits 0 and its JSON
#                               ($WORK/NAME.out, copied to NAME.json) checks
#   check_continues SRC DEST    the guest's heartbeats go on after the move
#                               (sequence and ticks), with no mismatch
#
# Every wait is for a condition (poll_until), its bound in seconds only
# ending a test that is stuck: the tests also run where the machine is many
# times slower (a nested KVM host under emulation, tests/nested), so none
# may assume how long booting, touching memory or migrating takes.
here=$(dirname "${BASH_SOURCE[0]}")
# shellcheck source=test_vm_common.sh
source "$here/test_vm_common.sh"

TOKEN=tok-$$-$RANDOM
MIG_VM_SECS=${MIG_VM_SECS:-900}

launch_vm() {
	local name=$1
	shift
	timeout -s TERM "$MIG_VM_SECS" "$MIGVM" "$@" >"$WORK/$name.out" \
		2>"$WORK/$name.err" &
	VM_PID=$!
	VM_PIDS+=("$VM_PID")
}

start_dest() {
	local name=$1
	shift
	launch_vm "$name" --incoming tcp:127.0.0.1:0 --token "$TOKEN" \
		--console "$WORK/$name.con" "$@"
	DEST_PID=$VM_PID
	DEST_PORT=
	# --prealloc: 1-6 s per GiB natively
	poll_until 600 dest_listens "$name" ||
		fail "destination $name did not listen"
}

dest_listens() { # NAME: sets DEST_PORT once the port is announced
	local line
	[ -e "$WORK/$1.err" ] || return 1
	while read -r line; do
		case $line in
		*"incoming migration on port "*)
			DEST_PORT=${line##*port }
			DEST_PORT=${DEST_PORT%%[!0-9]*}
			return 0 ;;
		esac
	done <"$WORK/$1.err"
	! pid_gone "$DEST_PID" || fail "destination $1 exited: $(cat "$WORK/$1.err")"
	return 1
}

run_source() {
	local name=$1
	shift
	timeout -s TERM "$MIG_VM_SECS" "$MIGVM" --migrate-to "tcp:127.0.0.1:$DEST_PORT" \
		--token "$TOKEN" --console "$WORK/$name.con" "$@" \
		>"$WORK/$name.out" 2>"$WORK/$name.err"
	RC=$?
}

start_source() {
	local name=$1
	shift
	launch_vm "$name" --control "$WORK/$name.sock" \
		--console "$WORK/$name.con" "$@"
	SRC_PID=$VM_PID
	wait_sock "$WORK/$name.sock"
	wait_hb "$WORK/$name.sock" 1 200
}

# Its JSON result is out (migvm prints nothing else on stdout), or it ended.
result_out() { # NAME
	[ -s "$WORK/$1.out" ] || pid_gone "$SRC_PID"
}

migrate_source() {
	local name=$1
	shift
	ctl "$WORK/$name.sock" migrate "tcp:127.0.0.1:$DEST_PORT" "$TOKEN" "$@" \
		>/dev/null || fail "$name: migvm ctl migrate refused the migration"
	poll_until 600 result_out "$name" ||
		fail "$name: no migration result after 600 s"
	if grep -q '^{"status":"ok"' "$WORK/$name.out"; then
		# It migrated: it exits by itself. If not, say where it waits.
		poll_until 120 pid_gone "$SRC_PID" || {
			local p t
			p=$(pgrep -P "$SRC_PID" -x migvm)
			for t in /proc/${p:-$SRC_PID}/task/*; do
				echo "$name: thread $(cat "$t/comm" 2>/dev/null)" \
					"state $(cut -d' ' -f3 "$t/stat" 2>/dev/null)" \
					"wchan $(cat "$t/wchan" 2>/dev/null)"
				cat "$t/stack" 2>/dev/null
			done >&2
			command -v gdb >/dev/null && timeout 60 gdb -q -batch \
				-p "${p:-$SRC_PID}" -ex "thread apply all bt 12" 2>&1 |
				grep -E '^(Thread|#)' >&2
		}
		wait_exit "$SRC_PID" 1
	else
		RC=1
	fi
}

# The destination's console shows N heartbeats (printed there), or it ended.
dest_beats() { # NAME N
	[ "$(grep -c '^hb ' "$WORK/$1.con")" -ge "$2" ] || pid_gone "$DEST_PID"
}

dest_runs() {
	local name=$1 n=$2
	poll_until 300 dest_beats "$name" "$n" &&
		[ "$(grep -c '^hb ' "$WORK/$name.con")" -ge "$n" ] ||
		fail "$name: fewer than $n heartbeats on the destination"
	status "$WORK/$name.sock"
	[ "$(field run_state)" = running ] || fail "$name: the VM is $(field run_state)"
	[ "$(field mismatches)" = 0 ] || fail "$name: guest mismatches: $STATUS"
	ctl "$WORK/$name.sock" quit >/dev/null || fail "$name: quit refused"
	wait_exit "$DEST_PID" 120
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
import os
print("migrated: %d rounds, %d pages, %.1f MB on the wire, downtime %.1f ms, total %.1f ms%s"
      % (j["rounds"], j["pages_sent"], j["bytes_on_wire"] / 1e6, j["downtime_ms"],
         j["total_time_ms"],
         " (in a nested KVM host, emulated: no benchmark)" if os.environ.get("MIG_IN_NESTED") else ""))
PY
}

migrate_committed() { # NAME SOCK PID K=V...
	local name=$1 sock=$2 pid=$3
	shift 3
	ctl "$sock" migrate "tcp:127.0.0.1:$DEST_PORT" "$TOKEN" "$@" >/dev/null ||
		fail "$name: migrate did not start"
	wait_exit "$pid" 120
	[ "$RC" = 0 ] || fail "$name: the source exited $RC after the migration"
	grep '^{' "$WORK/$name.out" | tail -n1 >"$WORK/$name.json"
	check_json "$WORK/$name.json"
}

# A number KEY=N of a heartbeat line, into $FIELD.
hb_field() { # LINE KEY
	local re="(^| )$2=([0-9]+)( |$)"
	[[ $1 =~ $re ]] || fail "no $2= in the heartbeat line '$1'"
	FIELD=${BASH_REMATCH[2]}
}

# The last heartbeat on the source and the first ones on the destination.
# A line being printed at the pause is ended on the source when it exits
# (the console is flushed) and printed again, whole, on the destination
# (the UART's partial line moves with the VM): then the source's last line
# begins the destination's first, and both are one heartbeat. Otherwise
# the destination goes on with the next one: never a gap, never a repeat.
check_continues() {
	local src=$1 dst=$2 last first s_seq d_seq t1 t2
	console_hbs "$src"
	[ "${#HBS[@]}" -ge 1 ] || fail "no heartbeat on the source console $src"
	last=${HBS[-1]}
	console_hbs "$dst"
	[ "${#HBS[@]}" -ge 2 ] || fail "fewer than 2 heartbeats after the move on $dst"
	first=${HBS[0]}
	hb_field "$first" seq
	d_seq=$FIELD
	if [[ $first == "$last"* ]]; then
		s_seq=$d_seq
	else
		hb_field "$last" seq
		s_seq=$FIELD
		[ "$d_seq" = $((s_seq + 1)) ] ||
			fail "heartbeats do not continue: the source's last is '$last', the destination's first '$first'"
	fi
	hb_field "${HBS[0]}" ticks
	t1=$FIELD
	# The destination's last line may be one its quit cut short (the
	# console is flushed at exit: 'hb seq=226 t'): the ticks come from the
	# last line that holds the whole field (a space after its digits).
	local i re='(^| )ticks=([0-9]+) '
	for ((i = ${#HBS[@]} - 1; i > 0; i--)); do
		[[ ${HBS[i]} =~ $re ]] && break
	done
	[ "$i" -gt 0 ] || fail "no whole heartbeat after the first on $dst: ${HBS[*]}"
	hb_field "${HBS[i]}" ticks
	t2=$FIELD
	[ "$t2" -gt "$t1" ] || fail "timer ticks stopped on the destination ($t1 -> $t2)"
	grep -q MISMATCH "$src" "$dst" && fail "the guest reported a MISMATCH"
	grep -q 'mismatches=[1-9]' "$dst" && fail "the guest counted mismatches"
	ok "guest continues on the destination: hb $s_seq -> $d_seq, ticks $t1 -> $t2, no mismatch"
}
