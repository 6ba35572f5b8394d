#!/usr/bin/env bash
# Faults during live migration: a wrong token, garbage sent to the
# destination's port, a destination killed in the middle of pre-copy, a
# link that goes silent, and one data connection reset alone. Each time the
# source VM keeps running with no mismatch, the source's JSON says what
# happened, and the destination ends with a clear error (or, for strangers,
# keeps waiting for the real source).
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

# Migrate source NAME (capped at 16 MB/s, so round 1 lasts seconds)
# through the proxy whose port is in PORTFILE: it fails with an error
# matching PAT and keeps its VM; destination DST exits non-zero saying DPAT.
through_proxy() {
	local name=$1 portfile=$2 pat=$3 dst=$4 dpat=$5 pport
	shift 5
	for _ in $(seq 50); do [ -s "$portfile" ] && break; sleep 0.1; done
	pport=$(cat "$portfile")
	src_start "$name" --migrate-to "tcp:127.0.0.1:$pport" --token "$TOKEN" \
		--migrate-after 1 --max-bandwidth 16M "$@"
	src_failed "$name" "$pat"
	src_alive "$name"
	wait_exit "$DEST_PID" 30
	[ "$RC" != 0 ] || fail "$dst exited 0 after a failed migration"
	grep -Eq "$dpat" "$WORK/$dst.err" ||
		fail "$dst did not say why: $(cat "$WORK/$dst.err")"
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
through_proxy src4 "$WORK/proxy.port" "no progress" dst4 "no data from the source" \
	--stall-timeout-ms 2000
ok "silent link: both sides timed out with a clear error"

# 5. One data connection is reset on the source's side alone; the control
# connection (0) keeps working and the destination sends no Abort. The
# source waits its grace period (20 ms plus two round trips) for a reason
# from the destination, then reports the reset itself, tells the
# destination (Abort on connection 0) and resumes its VM.
start_dest dst5 --mem 512 --cpus 1
python3 - "$DEST_PORT" "$WORK/proxy5.times" >"$WORK/proxy5.port" \
	2>"$WORK/proxy5.err" <<'PY' &
import select, socket, struct, sys, time
dst_port, times = int(sys.argv[1]), sys.argv[2]
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", 0))
ls.listen(8)
print(ls.getsockname()[1], flush=True)
peer = {}   # socket -> the one it forwards to
src = {}    # source side -> its frames so far: connection index, buffer
held = []   # the cut connection's destination side: open, silent

def varint(b, i):
    v = sh = 0
    while True:
        x = b[i]
        i += 1
        v |= (x & 0x7F) << sh
        sh += 7
        if x < 0x80:
            return v, i

def fields(b):   # protobuf: (field, value) of varint and bytes fields
    i = 0
    while i < len(b):
        k, i = varint(b, i)
        wt, v = k & 7, None
        if wt == 0:
            v, i = varint(b, i)
        elif wt == 2:
            n, i = varint(b, i)
            v, i = b[i:i + n], i + n
        else:
            i += 8 if wt == 1 else 4
        yield k >> 3, v

def frames(st, data):   # whole frames: u32 body length, u8 type, 3 bytes
    st["buf"] += data
    b = st["buf"]
    while len(b) >= 8:
        n = struct.unpack_from("<I", b)[0]
        if len(b) < 8 + n:
            return
        yield b[4], bytes(b[8:8 + n])
        del b[:8 + n]

cut_at = cut_t = None
end = time.monotonic() + 60
while time.monotonic() < end:
    rs = select.select([ls] + list(peer), [], [], 0.02)[0]
    if cut_at and cut_t is None and time.monotonic() >= cut_at:
        c = next(k for k, st in src.items() if st["idx"] == 1)
        u = peer.pop(c)
        del peer[u]
        held.append(u)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()   # a reset, at once
        cut_t = time.monotonic()
        continue
    for s in rs:
        if s is ls:
            c = ls.accept()[0]
            u = socket.create_connection(("127.0.0.1", dst_port))
            peer[c], peer[u] = u, c
            src[c] = {"buf": bytearray(), "idx": None}
            continue
        if s not in peer:
            continue
        try:
            d = s.recv(1 << 16)
        except OSError:
            d = b""
        if not d:
            o = peer.pop(s)
            peer.pop(o, None)
            o.close()
            continue
        peer[s].sendall(d)
        st = src.get(s)
        for typ, body in frames(st, d) if st else ():
            if st["idx"] is None:   # the hello: Envelope.hello (1) .connection_index (5)
                hello = dict(fields(body)).get(1, b"")
                st["idx"] = dict(fields(hello)).get(5, 0)
                if st["idx"] == 1:
                    cut_at = time.monotonic() + 2
            elif st["idx"] == 0 and cut_t and typ == 1 and body[:1] == b"\x5a":
                # Envelope.abort (field 11, bytes): the source gave up
                with open(times, "w") as f:
                    f.write("%.6f %.6f\n" % (cut_t, time.monotonic()))
PY
PROXY_PID=$!
VM_PIDS+=("$PROXY_PID")
through_proxy src5 "$WORK/proxy5.port" "connection 1: .*(reset|broken pipe)" \
	dst5 "source aborted: .*connection 1" --connections 2
for _ in $(seq 50); do [ -s "$WORK/proxy5.times" ] && break; sleep 0.1; done
python3 - "$WORK/proxy5.times" <<'PY' || fail "abort timing: $(cat "$WORK/proxy5.times" 2>&1)"
import sys
cut, abort = map(float, open(sys.argv[1]).read().split())
# The grace period is 20 ms plus two round trips (well under a
# millisecond here): no report before it, and none much after it.
assert 0.020 <= abort - cut < 0.090, "Abort %.1f ms after the reset" % ((abort - cut) * 1e3)
print("Abort on connection 0 came %.1f ms after connection 1's reset" % ((abort - cut) * 1e3))
PY
kill "$PROXY_PID" 2>/dev/null
ok "one data connection reset: the source waited for a reason, then reported it and kept its VM"
