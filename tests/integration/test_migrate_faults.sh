#!/usr/bin/env bash
# Faults during live migration: a wrong token, garbage sent to the
# destination's port, a destination killed in the middle of pre-copy, and a
# link that goes silent. Each time the source VM keeps running with no
# mismatch, the source's JSON says what happened, and the destination ends
# with a clear error (or, for strangers, keeps waiting for the real source).
here=$(dirname "$0")
source "$here/migrate_common.sh"
vm_init "$1" "$2"
need_testguest

guest="touch=128M wss=32M rate=max hb=300"

# Start a source VM with a control socket; migrate it later through flags.
src_start() {
	local name=$1
	shift
	start_vm "$name" --mem 512 --cpus 1 --control "$WORK/$name.sock" \
		--console "$WORK/$name.con" --cmdline "$guest" "$@"
	SRC_PID=$VM_PID
	wait_sock "$WORK/$name.sock"
}

# The source must still run its guest: heartbeats go on, no mismatch.
src_alive() {
	local name=$1 s1 s2
	status "$WORK/$name.sock"
	[ "$(field run_state)" = running ] || fail "$name: source VM is $(field run_state)"
	s1=$(field hb_seq)
	sleep 1.2
	status "$WORK/$name.sock"
	s2=$(field hb_seq)
	[ "$s2" -gt "$s1" ] || fail "$name: the guest stopped beating ($s1 -> $s2)"
	[ "$(field mismatches)" = 0 ] || fail "$name: guest mismatches: $STATUS"
	grep -q MISMATCH "$WORK/$name.con" && fail "$name: MISMATCH on the console"
	ok "$name: source VM still running (hb $s1 -> $s2), no mismatch"
	ctl "$WORK/$name.sock" quit >/dev/null
	wait_exit "$SRC_PID" 30
}

# The JSON the source printed: failed, with an error matching $2.
src_failed() {
	local name=$1 pattern=$2
	for _ in $(seq 600); do
		grep -q '^{' "$WORK/$name.out" && break
		sleep 0.1
	done
	python3 - "$WORK/$name.out" "$pattern" <<'PY' || fail "$name: $(cat "$WORK/$name.out")"
import json, re, sys
j = json.loads(next(l for l in open(sys.argv[1]) if l.startswith('{')))
assert j["status"] == "failed", j
assert re.search(sys.argv[2], j["error"]), "error %r does not match %r" % (j["error"], sys.argv[2])
assert "source VM" in j["error"], j["error"]
print("source reported:", j["error"])
PY
}

# 1. Wrong token: refused at the hello; the destination keeps waiting.
start_dest dst1 --mem 512 --cpus 1
src_start src1 --migrate-to "tcp:127.0.0.1:$DEST_PORT" --token wrong-token \
	--migrate-after 1
src_failed src1 "token"
src_alive src1
grep -q "wrong token" "$WORK/dst1.err" || fail "destination did not log the refused token"
kill -0 "$DEST_PID" || fail "destination died on a wrong token"
ok "wrong token refused; destination still waiting"

# 2. Garbage to the destination's port, then the real source on the same
# destination: strangers are dropped, the migration still happens.
python3 - "$DEST_PORT" <<'PY'
import os, socket, sys
port = int(sys.argv[1])
for payload in (os.urandom(5000), b"\xff\xff\xff\x7f" + b"A" * 64, b"GET / HTTP/1.0\r\n\r\n", b""):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(payload)
    s.settimeout(5)
    try:
        s.recv(100)   # the destination answers or closes; it must not hang
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
PY
kill -0 "$DEST_PID" || fail "destination died on garbage"
run_source src2 --mem 512 --cpus 1 --cmdline "$guest duration=4" --migrate-after 1.5
[ "$RC" = 0 ] || fail "migration after garbage failed: $(cat "$WORK/src2.out")"
check_json "$WORK/src2.out"
wait_exit "$DEST_PID" 60
[ "$RC" = 0 ] || fail "destination exited $RC after the migration"
check_continues "$WORK/src2.con" "$WORK/dst1.con"
ok "garbage dropped, then migrated"

# 3. The destination is killed in the middle of pre-copy (a 16 MB/s cap
# makes round 1 last seconds).
start_dest dst3 --mem 512 --cpus 1
src_start src3 --migrate-to "tcp:127.0.0.1:$DEST_PORT" --token "$TOKEN" \
	--migrate-after 1 --max-bandwidth 16M
sleep 3
# DEST_PID is the timeout(1) wrapper: kill the migvm under it.
pkill -KILL -P "$DEST_PID"
kill -KILL "$DEST_PID" 2>/dev/null
src_failed src3 "round 1"
src_alive src3
ok "destination killed mid-round: source kept its VM"

# 4. The link goes silent (a proxy that stops forwarding without closing):
# the source gives up after its stall timeout, the destination after its own.
start_dest dst4 --mem 512 --cpus 1 --incoming-timeout 3000
python3 - "$DEST_PORT" >"$WORK/proxy.port" 2>"$WORK/proxy.err" <<'PY' &
import socket, sys, threading, time
dst = int(sys.argv[1])
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", 0)); ls.listen(4)
print(ls.getsockname()[1], flush=True)
cut_at = None
def pump(a, b):
    global cut_at
    while True:
        d = a.recv(65536)
        if not d:
            return
        if cut_at is None:
            cut_at = time.time() + 2.5
        if time.time() > cut_at:
            time.sleep(60)   # silent: neither forward nor close
            return
        b.sendall(d)
def serve():
    while True:   # every connection of the migration goes through
        c, _ = ls.accept()
        u = socket.create_connection(("127.0.0.1", dst))
        threading.Thread(target=pump, args=(c, u), daemon=True).start()
        threading.Thread(target=pump, args=(u, c), daemon=True).start()
threading.Thread(target=serve, daemon=True).start()
time.sleep(40)
PY
PROXY_PID=$!
VM_PIDS+=("$PROXY_PID")
for _ in $(seq 50); do [ -s "$WORK/proxy.port" ] && break; sleep 0.1; done
pport=$(cat "$WORK/proxy.port")
src_start src4 --migrate-to "tcp:127.0.0.1:$pport" --token "$TOKEN" \
	--migrate-after 1 --max-bandwidth 16M --stall-timeout-ms 2000
src_failed src4 "no progress"
src_alive src4
wait_exit "$DEST_PID" 30
[ "$RC" != 0 ] || fail "destination exited 0 after a silent link"
grep -q "no data from the source" "$WORK/dst4.err" ||
	fail "destination did not say why: $(cat "$WORK/dst4.err")"
ok "silent link: both sides timed out with a clear error"
