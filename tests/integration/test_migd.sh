#!/usr/bin/env bash
# migd + migctl on one machine: two daemons on loopback (own ports, state
# dirs, control sockets) share a pre-shared key. A test-guest VM started on
# A moves to B and back through `migctl migrate`, and keeps running with no
# mismatch; then the failures: a wrong key, a reservation refused for lack
# of memory, the destination daemon killed during pre-copy. In each the VM
# keeps running on A and `migctl status` says why. Last, migd restarts: a
# running VM is taken back (and migrates), one that ended meanwhile is
# reported.
here=$(dirname "$0")
source "$here/test_vm_common.sh"
# shellcheck source=migd_common.sh
source "$here/migd_common.sh"
vm_init "$1" "$2"
need_testguest
MIGD=$BUILD/daemon/migd
MIGCTL=$BUILD/daemon/migctl
[ -x "$MIGD" ] && [ -x "$MIGCTL" ] || fail "migd/migctl not built"

D_PIDS=()
cleanup_migd() {
	local p f
	for p in "${D_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
	# migvm processes outlive their daemon by design: end them by pid.
	for f in "$WORK"/*/*.pid; do
		[ -f "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null
	done
	sleep 0.5
	for p in "${D_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
	for f in "$WORK"/*/*.pid; do
		[ -f "$f" ] && kill -KILL "$(cat "$f")" 2>/dev/null
	done
	cleanup
}
trap cleanup_migd EXIT

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_migd NAME PSKFILE [ARGS...]: sets PORT_<NAME>
start_migd() {
	local name=$1 psk=$2 port
	shift 2
	port=$(free_port)
	# Not under timeout(1): $! must be migd itself (the test kills it).
	"$MIGD" --state-dir "$WORK/$name" \
		--control "$WORK/$name.sock" --listen "127.0.0.1:$port" \
		--psk-file "$psk" --log-level debug "$@" \
		>"$WORK/migd-$name.out" 2>"$WORK/migd-$name.err" &
	D_PIDS+=($!)
	eval "PORT_$name=$port PID_$name=$!"
	wait_migd_ready "$name"
}

head -c 32 /dev/urandom | base64 >"$WORK/psk"
head -c 32 /dev/urandom | base64 >"$WORK/wrong"
chmod 600 "$WORK/psk" "$WORK/wrong"

"$MIGD" --self-test >/dev/null || fail "HMAC-SHA256 self-test"
out=$("$MIGD" --help) || fail "migd --help exited non-zero"
grep -q -- --psk-file <<<"$out" || fail "migd --help: $out"
out=$("$MIGCTL" --help) || fail "migctl --help exited non-zero"
grep -q migrate <<<"$out" || fail "migctl --help: $out"
out=$("$MIGCTL" --socket "$WORK/none.sock" list 2>&1) && fail "list without migd"
grep -q "migd is not running" <<<"$out" || fail "unclear error without migd: $out"
ok "help, self-test, no daemon"

start_migd a "$WORK/psk"
start_migd b "$WORK/psk"
[ "$(stat -c %a "$WORK/a.sock")" = 600 ] || fail "control socket mode is not 0600"

mc a start vm1 --mem 512 --cpus 1 --cmdline "touch=64M wss=16M hb=300" >/dev/null ||
	fail "start vm1"
wait_vm_hb a vm1 2
out=$(mc a start vm1 --mem 512 --cpus 1 2>&1) && fail "a second vm1 started"
grep -q "exists" <<<"$out" || fail "unclear error for a duplicate: $out"
out=$(mc a status nosuch 2>&1) && fail "status of a VM that does not exist"
grep -q "no VM named nosuch" <<<"$out" || fail "unclear error: $out"
ok "vm1 runs on A"

# A -> B
res=$(mc a --json migrate vm1 --to "127.0.0.1:$PORT_b") || fail "migrate A->B: $res"
[ "$(jfield "$res" state)" = migrated ] || fail "A says $res"
python3 - "$res" <<'PY' || fail "bad result: $res"
import json, sys
r = json.loads(sys.argv[1])["last_result"]
assert r["status"] == "ok" and r["rounds"] >= 1 and 0 < r["downtime_ms"] < r["total_time_ms"], r
print("A->B: downtime %.1f ms, total %.1f ms, %d rounds" % (r["downtime_ms"], r["total_time_ms"], r["rounds"]))
PY
s=$(mc b --json status vm1) || fail "vm1 not on B"
[ "$(jfield "$s" state)" = running ] || fail "B says $s"
hb=$(jfield "$s" hb_lines)
wait_vm_hb b vm1 $((hb + 2))
s=$(mc b --json status vm1)
[ "$(jfield "$s" mismatches)" = 0 ] || fail "mismatch on B: $s"
grep -q MISMATCH "$WORK"/b/vm1.console && fail "MISMATCH on B's console"
grep -q "vm1 *migrated" <<<"$(mc a list)" || fail "A does not list vm1 as migrated"
ok "vm1 moved to B and keeps running"

# B -> A (plain output, as a person sees it)
out=$(mc b migrate vm1 --to "127.0.0.1:$PORT_a") || fail "migrate B->A: $out"
grep -q "migrated to .*downtime .* ms, total .* ms" <<<"$out" || fail "B->A said: $out"
s=$(mc a --json status vm1)
[ "$(jfield "$s" state)" = running ] || fail "A says $s"
wait_vm_hb a vm1 $(($(jfield "$s" hb_lines) + 2))
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
wait_vm_hb a vm1 $(($(jfield "$s" hb_lines) + 1))
ok "wrong key refused: $out"

# Reservation refused: D may give VMs 256 MiB only.
start_migd d "$WORK/psk" --max-mem 256
out=$(mc a migrate vm1 --to "127.0.0.1:$PORT_d" 2>&1) && fail "D accepted 512 MiB"
grep -q "not enough memory" <<<"$out" || fail "unclear refusal: $out"
s=$(mc a --json status vm1)
[ "$(jfield "$s" state)" = running ] || fail "vm1 not running on A: $s"
ok "reservation refused: $out"

# The destination daemon dies during pre-copy (4 MiB/s: 64 MiB take ~16 s).
mc a --json migrate vm1 --to "127.0.0.1:$PORT_b" --max-bandwidth 4M --no-wait >/dev/null ||
	fail "migrate to B did not start"
for _ in $(seq 100); do
	s=$(mc a --json status vm1)
	grep -q '"phase":"precopy"' <<<"$s" && break
	sleep 0.1
done
grep -q '"phase":"precopy"' <<<"$s" || fail "no pre-copy progress: $s"
kill -KILL "$PID_b"
for _ in $(seq 300); do
	s=$(mc a --json status vm1)
	[ "$(jfield "$s" state)" != migrating ] && break
	sleep 0.1
done
[ "$(jfield "$s" state)" = running ] || fail "vm1 not running on A after B died: $s"
grep -qi "destination\|peer" <<<"$(jfield "$s" last_error)" || fail "status does not say why: $s"
wait_vm_hb a vm1 $(($(jfield "$s" hb_lines) + 2))
s=$(mc a --json status vm1)
[ "$(jfield "$s" mismatches)" = 0 ] || fail "mismatch on A: $s"
ok "destination killed during pre-copy: $(jfield "$s" last_error)"

# migd A crashes: vm1's migvm runs on. A second migd cannot take A's state
# dir while the first runs; a restarted A takes vm1 back (no restart of
# the VM), reports it, and still migrates it.
vpid=$(cat "$WORK/a/vm1.pid")
out=$("$MIGD" --state-dir "$WORK/a" --control "$WORK/a2.sock" 2>&1) && fail "two migd on one state dir"
grep -q "another migd (pid $PID_a) uses --state-dir" <<<"$out" || fail "unclear error: $out"
kill -KILL "$PID_a"
sleep 0.3
kill -0 "$vpid" || fail "vm1's migvm died with its daemon"
rm -f "$WORK/a.sock"
start_migd a "$WORK/psk"
s=$(mc a --json status vm1) || fail "restarted A does not know vm1: $s"
[ "$(jfield "$s" state)" = running ] && [ "$(jfield "$s" pid)" = "$vpid" ] ||
	fail "restarted A: $s"
grep -q "taken back after a migd restart: migvm pid $vpid" "$WORK/migd-a.err" ||
	fail "A did not log the take-back"
wait_vm_hb a vm1 $(($(jfield "$s" hb_lines) + 2))
start_migd b "$WORK/psk"
res=$(mc a --json migrate vm1 --to "127.0.0.1:$PORT_b") || fail "migrate an adopted VM: $res"
[ "$(jfield "$res" state)" = migrated ] || fail "A says $res"
s=$(mc b --json status vm1)
[ "$(jfield "$s" state)" = running ] || fail "B says $s"
wait_vm_hb b vm1 $(($(jfield "$s" hb_lines) + 2))
ok "migd restarted: vm1 (pid $vpid) taken back, then migrated to B"
# B is killed: its VM's migvm dies while B is down; restarted, B says so.
vpid=$(cat "$WORK/b/vm1.pid")
kill -KILL "$PID_b"
kill -KILL "$vpid"
rm -f "$WORK/b.sock"
start_migd b "$WORK/psk"
s=$(mc b --json status vm1) || fail "restarted B does not know vm1: $s"
[ "$(jfield "$s" state)" = exited ] || fail "restarted B: $s"
grep -q "ended while migd was not running" <<<"$(jfield "$s" last_error)" || fail "B does not say why: $s"
[ -e "$WORK/b/vm1.json" ] && fail "B kept the config of an ended VM"
ok "a VM that ended while its migd was down: $(jfield "$s" last_error)"
mc b start vm1 --mem 512 --cpus 1 --cmdline "touch=64M wss=16M hb=300" >/dev/null ||
	fail "start vm1 again on B"
wait_vm_hb b vm1 2
mc b stop vm1 >/dev/null || fail "stop"
for _ in $(seq 100); do
	s=$(mc b --json status vm1)
	[ "$(jfield "$s" state)" = exited ] && break
	sleep 0.1
done
[ "$(jfield "$s" state)" = exited ] || fail "vm1 did not stop: $s"
ok "stopped: $(jfield "$s" last_error)"
