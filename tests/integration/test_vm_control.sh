#!/usr/bin/env bash
# The control channel: pause stops the guest (no heartbeat while paused) and
# resume continues it, 50 quick pause/resume cycles of a 2-vCPU guest (as
# many as fit in 60 s where the host is slow, 10 at least) leave it
# consistent; throttle slows the guest down; bad requests (oversized frame,
# undecodable, empty, resume when running, save to a bad path, console
# input that does not fit or to an incoming VM, save over a file or through
# a planted link, a client of another user) get an error and the VM runs on; a second migvm cannot take a live socket but replaces
# a stale one; SIGTERM and SIGINT stop the VM cleanly and remove the socket.
here=$(dirname "$0")
source "$here/test_vm_common.sh"
vm_init "$1" "$2"
need_testguest
test_deadline 270 # CTest gives it 300 s (600 in a nested host)

sock=$WORK/vm.sock
start_vm vm --cpus 2 --mem 256 --control "$sock" --cmdline "touch=32M wss=8M hb=100"
pid=$VM_PID
wait_sock "$sock"
wait_hb "$sock" 2

ctl_err() { # PATTERN ARGS...: the request fails with PATTERN
	local pat=$1
	shift
	local what="$*"
	[ ${#what} -le 60 ] || what="${what:0:57}..."
	ctl "$sock" "$@" >/dev/null 2>"$WORK/ctl.err" && fail "ctl $what succeeded"
	grep -q -- "$pat" "$WORK/ctl.err" || fail "ctl $what: $(cat "$WORK/ctl.err")"
	ok "ctl $what: $(cat "$WORK/ctl.err")"
}

ctl "$sock" pause >/dev/null || fail "pause failed"
ctl "$sock" pause >/dev/null || fail "a second pause failed"
status "$sock"
[ "$(field run_state)" = paused ] || fail "run_state after pause: $STATUS"
n1=$(field hb_lines) t1=$(field ticks)
sleep 1
status "$sock"
[ "$(field hb_lines)" = "$n1" ] || fail "heartbeats while paused: $n1 -> $(field hb_lines)"
ctl "$sock" resume >/dev/null || fail "resume failed"
wait_hb "$sock" $((n1 + 3))
status "$sock"
[ "$(field run_state)" = running ] || fail "run_state after resume: $STATUS"
[ "$(field ticks)" -gt "$t1" ] || fail "ticks did not go on after resume"
ok "pause holds the guest (hb $n1 for 1 s), resume continues it"

# 50 cycles; where each `migvm ctl` takes a second or more (a loaded nested
# host), as many as 60 s allow, 10 at least.
t0=$SECONDS
for ((i = 1; i <= 50; i++)); do
	ctl "$sock" pause >/dev/null || fail "pause $i failed"
	ctl "$sock" resume >/dev/null || fail "resume $i failed"
	[ "$i" -ge 10 ] && [ $((SECONDS - t0)) -ge 60 ] && break
done
cycles=$((i > 50 ? 50 : i))
status "$sock"
n2=$(field hb_lines)
wait_hb "$sock" $((n2 + 2))
[ "$(field mismatches)" = 0 ] || fail "mismatches after pause/resume cycles: $STATUS"
ok "$cycles pause/resume cycles in $((SECONDS - t0)) s, guest consistent: $STATUS"

# Throttling (auto-converge for migration): at 90% the guest dirties far
# slower than unthrottled, before and after, measured in the same run (the
# rate of a 2-vCPU guest on a 2-CPU host varies, hence the wide margin).
# Rates are in guest time, from the heartbeats on the console (written,
# tsc): however slow the host is to answer, the span is the guest's own.
rate() { # RATE: pages written per guest second, 20 heartbeats (2 s) from now
	local n khz
	console_hbs "$WORK/vm.out"
	n=${#HBS[@]}
	poll_until 120 console_hbs_at_least "$WORK/vm.out" $((n + 21)) || fail "no 20 heartbeats in 120 s"
	khz=$(grep -m1 -o 'tsc_khz=[0-9]*' "$WORK/vm.out")
	RATE=$(awk -v khz="${khz#tsc_khz=}" -v a="${HBS[n]}" -v b="${HBS[n + 20]}" '
		function val(line, k,   m, f, i) {
			m = split(line, f, " ")
			for (i = 1; i <= m; i++)
				if (index(f[i], k "=") == 1)
					return substr(f[i], length(k) + 2) + 0
		}
		BEGIN {
			s = khz > 0 ? (val(b, "tsc") - val(a, "tsc")) / (khz * 1000) \
				: (val(b, "ticks") - val(a, "ticks")) / 100
			printf "%d", (s > 0 ? (val(b, "written") - val(a, "written")) / s : 0)
		}')
	[ "$RATE" -gt 0 ] 2>/dev/null || fail "no dirty rate from '${HBS[n]}' .. '${HBS[n + 20]}'"
}
rate
full=$RATE
ctl "$sock" throttle 90 >/dev/null || fail "throttle 90 failed"
rate
slow=$RATE
ctl "$sock" throttle 0 >/dev/null || fail "throttle 0 failed"
rate
again=$RATE
echo "dirty rate: $full pages/s, throttled 90%: $slow, unthrottled again: $again"
ref=$((full > again ? full : again))
[ $((slow * 2)) -lt "$ref" ] || fail "throttle 90% did not slow the guest"
ctl_err "throttle 100: a percentage 0..99" throttle 100

ctl_err "resume: the VM is not paused (EINVAL)" resume
ctl_err "request frame of 2097152 bytes, more than the 1048576 allowed (EMSGSIZE)" raw 00002000
ctl_err "request of 5 bytes does not decode (EBADMSG)" raw 05000000ffffffffff
ctl_err "empty or unknown request (EINVAL)" raw 00000000
ctl_err "state file /nonexistent/dir/x.state.tmp: No such file" save /nonexistent/dir/x.state
# save never overwrites, nor writes through a link planted where it writes.
echo keep >"$WORK/exists.state"
ctl_err "state file $WORK/exists.state: File exists (migvm does not overwrite a file)" save "$WORK/exists.state"
[ "$(cat "$WORK/exists.state")" = keep ] || fail "save changed a file that was there"
[ ! -e "$WORK/exists.state.tmp" ] || fail "save left exists.state.tmp"
echo target >"$WORK/target"
ln -s "$WORK/target" "$WORK/link.state.tmp"
ctl_err "state file $WORK/link.state.tmp: File exists (left by a save that failed, or another's: remove it)" save "$WORK/link.state"
[ "$(cat "$WORK/target")" = target ] || fail "save wrote through a symlink"
[ ! -e "$WORK/link.state" ] || fail "save made link.state"
# The socket is 0600, and a client of another user is turned away even
# where the file lets it connect.
[ "$(stat -c %a "$sock")" = 600 ] || fail "control socket mode $(stat -c %a "$sock"), not 600"
chmod 666 "$sock"
chmod 711 "$WORK"
# An empty request: its owner gets an answer ("empty or unknown request"),
# another user only the end of the connection. (Debian's python3: root's
# may be in a place other users cannot reach.)
peer_says() { # [setpriv ARGS...]: what the server sends back, as hex
	"$@" /usr/bin/python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(20)
s.connect(sys.argv[1])
data = b""
try:
    s.sendall(b"\0\0\0\0")
except (BrokenPipeError, ConnectionResetError):
    print("eof")   # turned away as soon as it connected
    sys.exit(0)
while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "little"):
    try:
        b = s.recv(4096)
    except ConnectionResetError:
        break
    if not b:
        break
    data += b
print(data.hex() or "eof")' "$sock"
}
mine=$(peer_says) || fail "the owner cannot talk to the control socket"
[ "$mine" != eof ] || fail "the control socket said nothing to its owner"
theirs=$(peer_says setpriv --reuid=65534 --regid=65534 --clear-groups) ||
	fail "another user could not even connect (with the socket 0666)"
chmod 700 "$WORK"
chmod 600 "$sock"
[ "$theirs" = eof ] || fail "another user's request got an answer: $theirs"
ok "control socket 0600; another user's client turned away (its owner is answered)"
ctl_err "input: no bytes to send (EINVAL)" raw 020000004a00
# Console input waits in the UART's queue (this guest does not read it):
# what does not fit in the rest is refused whole.
ctl "$sock" input 'x\n' >/dev/null || fail "console input refused"
ctl_err "console input: 4095 bytes do not fit, 4094 of 4096 free" input "$(printf 'y%.0s' {1..4095})"
status "$sock"
n3=$(field hb_lines)
wait_hb "$sock" $((n3 + 2))
[ "$(field run_state)" = running ] || fail "VM not running after bad requests"
ok "the VM runs on after bad requests"

# An incoming VM (nothing loaded yet) takes no console input.
start_vm inc --mem 64 --incoming tcp:127.0.0.1:0 --token t0 --control "$WORK/inc.sock"
inc=$VM_PID
wait_sock "$WORK/inc.sock"
sock=$WORK/inc.sock ctl_err "input: the VM is paused for a migration, a load or its exit" input 'z'
kill -TERM "$inc"
wait_exit "$inc" 60

# A live socket is not taken over.
timeout -s KILL 60 "$MIGVM" --mem 64 --control "$sock" --cmdline "touch=4M wss=1M" \
	>"$WORK/second.out" 2>"$WORK/second.err"
rc=$?
[ "$rc" = 1 ] || fail "second migvm on a live socket: exit $rc"
grep -q "control socket $sock: in use" "$WORK/second.err" || fail "$(cat "$WORK/second.err")"
ctl "$sock" status >/dev/null || fail "the first VM lost its socket"
ok "$(cat "$WORK/second.err")"

kill -TERM "$pid"
wait_exit "$pid" 120
[ "$RC" = 0 ] || fail "SIGTERM: exit $RC, expected 0"
[ -e "$sock" ] && fail "SIGTERM left the socket behind"
ok "SIGTERM: exit 0, socket removed"

# SIGKILL leaves a stale socket file: the next migvm replaces it.
# (Not through start_vm: SIGKILL must reach migvm, not `timeout`.)
"$MIGVM" --mem 64 --control "$sock" --cmdline "touch=4M wss=1M" \
	>"$WORK/killed.out" 2>"$WORK/killed.err" &
kpid=$!
VM_PIDS+=("$kpid")
wait_sock "$sock"
kill -KILL "$kpid"
wait "$kpid" 2>/dev/null
[ -S "$sock" ] || fail "no stale socket after SIGKILL"
start_vm again --mem 64 --control "$sock" --cmdline "touch=4M wss=1M hb=100"
pid=$VM_PID
wait_sock "$sock"
wait_hb "$sock" 1
kill -INT "$pid"
wait_exit "$pid" 120
[ "$RC" = 0 ] || fail "SIGINT: exit $RC, expected 0"
[ -e "$sock" ] && fail "SIGINT left the socket behind"
ok "a stale socket is replaced; SIGINT: exit 0, socket removed"
