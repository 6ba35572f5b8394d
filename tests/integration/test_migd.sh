#!/usr/bin/env bash
# migd + migctl on one machine: two daemons on loopback (own ports, state
# dirs, control sockets) share a pre-shared key. A test-guest VM started on
# A moves to B and back through `migctl migrate`, and keeps running with no
# mismatch; then the failures: a wrong key, a reservation refused for lack
# of memory, the destination daemon killed during pre-copy. In each the VM
# keeps running on A and `migctl status` says why. Last, migd restarts: a
# running VM is taken back (and migrates), one that ended meanwhile is
# reported. The restarted daemons authenticate with certificates
# (--tls-x509-dir) instead of the key: the adopted VM moves over that
# link. (Refusals of certificates: test_migd_x509, without KVM.)
here=$(dirname "$0")
source "$here/test_vm_common.sh"
# shellcheck source=migd_common.sh
source "$here/migd_common.sh"
vm_init "$1" "$2"
need_testguest
MIGD=$BUILD/daemon/migd
MIGCTL=$BUILD/daemon/migctl
[ -x "$MIGD" ] && [ -x "$MIGCTL" ] || fail "migd/migctl not built"

test_deadline 270 # CTest gives it 300 s (600 in a nested host)

# The guest rewrites 500 pages/s (idle=halt: it sleeps in between) and
# checks each page before it rewrites it: what is tested here is the
# daemons' part, not how a migration keeps up with a guest that takes all
# the CPU it can (test_migrate_throttle), which would make every migration
# here a throttling one where the machine is slow.
GUEST="touch=32M wss=8M rate=500 idle=halt hb=300"

cleanup_migd() {
	end_daemons
	cleanup
}
trap cleanup_migd EXIT

# runs_on HOST [N]: vm1 runs there and goes on (N, 2, more heartbeats), no
# mismatch. The counts come from a status that has the guest's (migd leaves
# them out, zero, when its migvm does not answer it in time).
runs_on() {
	local s
	s=$(mc "$1" --json status vm1) || fail "vm1 not on $1: $s"
	[ "$(jfield "$s" state)" = running ] || fail "$1 says $s"
	wait_vm_hb "$1" vm1 1
	wait_vm_hb "$1" vm1 $(($(jfield "$S" hb_lines) + ${2:-2}))
	[ "$(jfield "$S" mismatches)" = 0 ] || fail "mismatch on $1: $S"
	grep -q MISMATCH "$WORK/$1/vm1.console" && fail "MISMATCH on $1's console"
	return 0
}

in_precopy() { # HOST NAME
	S=$(mc "$1" --json status "$2") || return 1
	[ "$(jfield "$S" progress.phase)" = precopy ]
}

head -c 32 /dev/urandom | base64 >"$WORK/psk"
head -c 32 /dev/urandom | base64 >"$WORK/wrong"
chmod 600 "$WORK/psk" "$WORK/wrong"

out=$("$MIGD" --help) || fail "migd --help exited non-zero"
grep -q -- --psk-file <<<"$out" || fail "migd --help: $out"
out=$("$MIGCTL" --help) || fail "migctl --help exited non-zero"
grep -q migrate <<<"$out" || fail "migctl --help: $out"
out=$("$MIGCTL" --socket "$WORK/none.sock" list 2>&1) && fail "list without migd"
grep -q "migd is not running" <<<"$out" || fail "unclear error without migd: $out"
ok "help, no daemon"
# A pre-shared key too short to be one, or too long to be used whole: refused
# at the start, never cut.
printf 'short\n' >"$WORK/short"
head -c 300 /dev/zero | tr '\0' k >"$WORK/long"
for k in short long; do
	out=$("$MIGD" --state-dir "$WORK/psk-$k" --control "$WORK/psk-$k.sock" \
		--listen 127.0.0.1:0 --psk-file "$WORK/$k" 2>&1) && fail "migd ran with the $k key"
	case $k in
	short) want="5 bytes: a key needs 16 at least" ;;
	long) want="longer than 256 bytes" ;;
	esac
	grep -q "psk-file $WORK/$k: $want" <<<"$out" || fail "unclear error for the $k key: $out"
done
ok "a 5-byte key and a 300-byte key refused at the start"

start_migd a "$WORK/psk"
start_migd b "$WORK/psk"
[ "$(stat -c %a "$WORK/a.sock")" = 600 ] || fail "control socket mode is not 0600"

mc a start vm1 --mem 512 --cpus 1 --cmdline "$GUEST" >/dev/null ||
	fail "start vm1"
wait_vm_hb a vm1 2
out=$(mc a start vm1 --mem 512 --cpus 1 2>&1) && fail "a second vm1 started"
grep -q "exists" <<<"$out" || fail "unclear error for a duplicate: $out"
out=$(mc a start vm2 --mem 64 --cpus 1 --initrd "$TG" 2>&1) && fail "an initrd without a kernel started"
grep -q "initrd goes with --kernel" <<<"$out" || fail "unclear error for --initrd alone: $out"
out=$(mc a start vm2 --mem 64 --cpus 1 --kernel "$WORK/nope" 2>&1) && fail "a missing kernel started"
grep -q "kernel $WORK/nope: No such file" <<<"$out" || fail "unclear error for a missing kernel: $out"
out=$(mc a status nosuch 2>&1) && fail "status of a VM that does not exist"
grep -q "no VM named nosuch" <<<"$out" || fail "unclear error: $out"
ok "vm1 runs on A"

# A -> B
mc_to "$WORK/res" a --json migrate vm1 --to "127.0.0.1:$PORT_b"
res=$(<"$WORK/res")
[ "$MC_RC" = 0 ] || fail "migrate A->B: $res"
[ "$(jfield "$res" state)" = migrated ] || fail "A says $res"
check_result "$res"
echo "A->B: $RESULT"
runs_on b
grep -q "vm1 *migrated" <<<"$(mc a list)" || fail "A does not list vm1 as migrated"
ok "vm1 moved to B and keeps running"
# Over TLS, migd's default: both migvms said so.
grep -q "migrating to .* over TLS 1.3" "$WORK/a/vm1.log" ||
	fail "A's migvm did not migrate over TLS: $(grep migvm: "$WORK/a/vm1.log")"
grep -q "incoming migration over TLS 1.3" "$WORK/b/vm1.log" ||
	fail "B's migvm did not take the migration over TLS: $(grep migvm: "$WORK/b/vm1.log")"
ok "the migration ran over TLS 1.3"

# B -> A (plain output, as a person sees it)
mc_to "$WORK/out" b migrate vm1 --to "127.0.0.1:$PORT_a"
out=$(<"$WORK/out")
[ "$MC_RC" = 0 ] || fail "migrate B->A: $out"
grep -q "migrated to .*downtime .* ms, total .* ms" <<<"$out" || fail "B->A said: $out"
runs_on a
ok "and back to A: $out"

# Wrong pre-shared key: refused, the VM stays on A.
start_migd c "$WORK/wrong"
out=$(mc a migrate vm1 --to "127.0.0.1:$PORT_c" 2>&1) && fail "migrated with a wrong key"
grep -q "authentication failed" <<<"$out" || fail "unclear wrong-key error: $out"
s=$(mc a --json status vm1)
[ "$(jfield "$s" state)" = running ] || fail "vm1 not running on A after the wrong key: $s"
grep -q "authentication failed" <<<"$(jfield "$s" last_error)" || fail "status does not say why: $s"
grep -q "authentication failed" "$WORK/migd-c.err" || fail "C did not log the refusal"
out=$(mc c --json list) || fail "list on C failed: $out"
grep -q vm1 <<<"$out" && fail "C holds a vm1"
runs_on a 1
ok "wrong key refused: $out"

# Reservation refused: D may give VMs 256 MiB only.
start_migd d "$WORK/psk" --max-mem 256
out=$(mc a migrate vm1 --to "127.0.0.1:$PORT_d" 2>&1) && fail "D accepted 512 MiB"
grep -q "not enough memory" <<<"$out" || fail "unclear refusal: $out"
s=$(mc a --json status vm1)
[ "$(jfield "$s" state)" = running ] || fail "vm1 not running on A: $s"
ok "reservation refused: $out"

# A daemon that migrates in clear (--no-tls) and one that does not never
# pair: the destination refuses, says why, and the VM stays where it is.
start_migd e "$WORK/psk" --no-tls
grep -q -- "--no-tls: migrations cross the network in clear" "$WORK/migd-e.err" ||
	fail "E did not warn about --no-tls: $(cat "$WORK/migd-e.err")"
out=$(mc a migrate vm1 --to "127.0.0.1:$PORT_e" 2>&1) && fail "A (TLS) migrated to E (--no-tls)"
grep -q "this host migrates in clear (--no-tls), the source with TLS" <<<"$out" ||
	fail "unclear TLS mismatch: $out"
s=$(mc a --json status vm1)
[ "$(jfield "$s" state)" = running ] || fail "vm1 not running on A: $s"
ok "TLS and --no-tls do not pair: $out"

# The destination daemon dies during pre-copy. At 1 MiB/s the 32 MiB the
# guest touched take 32 s or more, however fast the machine: B is killed
# as soon as A reports pre-copy.
mc a --json migrate vm1 --to "127.0.0.1:$PORT_b" --max-bandwidth 1M --no-wait >/dev/null ||
	fail "migrate to B did not start"
poll_until 120 in_precopy a vm1 || fail "no pre-copy progress: $S"
# B's incoming migvm got its one-time token through a pipe, not on its
# command line (which any local user reads in /proc).
ipid=$(jfield "$(mc b --json status vm1)" pid)
[ "${ipid:-0}" -gt 0 ] || fail "no incoming migvm on B: $(mc b --json status vm1)"
args=$(tr '\0' ' ' <"/proc/$ipid/cmdline")
grep -q -- "--token-fd 3" <<<"$args" && ! grep -q -- "--token " <<<"$args" ||
	fail "the incoming migvm's command line: $args"
grep -q -- "--tls-psk-file /dev/fd/5" <<<"$args" &&
	! grep -qF -- "$(head -c 16 "$WORK/psk")" <<<"$args" ||
	fail "the TLS key is not passed on a pipe: $args"
ok "neither the token nor the TLS key is on the incoming migvm's command line: $args"
kill -KILL "$PID_b"
wait "$PID_b" 2>/dev/null
wait_vm_state a vm1 120 running exited migrated
s=$S
[ "$(jfield "$s" state)" = running ] || fail "vm1 not running on A after B died: $s"
grep -qi "destination\|peer" <<<"$(jfield "$s" last_error)" || fail "status does not say why: $s"
runs_on a
ok "destination killed during pre-copy: $(jfield "$s" last_error)"

# migd A crashes: vm1's migvm runs on. A second migd cannot take A's state
# dir while the first runs; a restarted A takes vm1 back (no restart of
# the VM), reports it, and still migrates it.
vpid=$(cat "$WORK/a/vm1.pid")
out=$(timeout -s KILL 60 "$MIGD" --state-dir "$WORK/a" --control "$WORK/a2.sock" 2>&1) &&
	fail "two migd on one state dir"
grep -q "another migd (pid $PID_a) uses --state-dir" <<<"$out" || fail "unclear error: $out"
kill -KILL "$PID_a"
wait "$PID_a" 2>/dev/null
rm -f "$WORK/a.sock"
pki_ca "$WORK/ca"
migd_pki "$WORK/x-a" "$WORK/ca" a IP:127.0.0.1
migd_pki "$WORK/x-b" "$WORK/ca" b IP:127.0.0.1
start_migd a "" --tls-x509-dir "$WORK/x-a"
! pid_gone "$vpid" || fail "vm1's migvm died with its daemon"
s=$(mc a --json status vm1) || fail "restarted A does not know vm1: $s"
[ "$(jfield "$s" state)" = running ] && [ "$(jfield "$s" pid)" = "$vpid" ] ||
	fail "restarted A: $s"
grep -q "taken back after a migd restart: migvm pid $vpid" "$WORK/migd-a.err" ||
	fail "A did not log the take-back"
runs_on a
start_migd b "" --tls-x509-dir "$WORK/x-b"
mc_to "$WORK/res" a --json migrate vm1 --to "127.0.0.1:$PORT_b"
res=$(<"$WORK/res")
[ "$MC_RC" = 0 ] || fail "migrate an adopted VM: $res"
[ "$(jfield "$res" state)" = migrated ] || fail "A says $res"
# An adopted migvm may end before its daemon reads its result (the
# destination then says it committed): a result, if any, says ok.
if [ -n "$(jfield "$res" last_result)" ]; then
	check_result "$res"
	echo "A->B (adopted): $RESULT"
fi
runs_on b
grep -q "peer 127.0.0.1 authenticated (TLS 1.3, certificate CN=a)" "$WORK/migd-b.err" ||
	fail "B did not take A by its certificate: $(grep peer "$WORK/migd-b.err")"
ok "migd restarted: vm1 (pid $vpid) taken back, then migrated to B (the daemons authenticated with certificates)"
# B is killed: its VM's migvm dies while B is down; restarted, B says so.
vpid=$(cat "$WORK/b/vm1.pid")
kill -KILL "$PID_b"
kill -KILL "$vpid"
wait "$PID_b" 2>/dev/null
poll_until 60 pid_gone "$vpid" || fail "migvm $vpid survived SIGKILL"
rm -f "$WORK/b.sock"
start_migd b "" --tls-x509-dir "$WORK/x-b"
s=$(mc b --json status vm1) || fail "restarted B does not know vm1: $s"
[ "$(jfield "$s" state)" = exited ] || fail "restarted B: $s"
grep -q "ended while migd was not running" <<<"$(jfield "$s" last_error)" || fail "B does not say why: $s"
[ -e "$WORK/b/vm1.json" ] && fail "B kept the config of an ended VM"
ok "a VM that ended while its migd was down: $(jfield "$s" last_error)"
mc b start vm1 --mem 512 --cpus 1 --cmdline "$GUEST" >/dev/null ||
	fail "start vm1 again on B"
wait_vm_hb b vm1 2
mc b stop vm1 >/dev/null || fail "stop"
wait_vm_state b vm1 120 exited
ok "stopped: $(jfield "$S" last_error)"
