#!/usr/bin/env bash
# Strangers on migd's TCP ports (issue 19: 400 idle connections on the peer
# port exhausted migd's descriptors and were still held 20 s later; the
# metrics port had no limit either). Here 400 idle connections from ten
# addresses: migd holds at most 64 of them at once (16 from one address),
# `migctl list` answers all the while, and after the 10 s deadline none is
# left. Then 100 idle connections on the metrics port: a GET still gets its
# answer, which counts the strangers turned away. No VM: no KVM needed.
# ctest-timeout: 120
here=$(dirname "$0")
source "$here/test_vm_common.sh"
# shellcheck source=migd_common.sh
source "$here/migd_common.sh"
vm_init "$1" "$2" nokvm
migd_init
test_deadline 100

head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/psk"
pick_port
mport=$PORT
start_migd a "$WORK/psk" --metrics "127.0.0.1:$mport"
fds_of() { local f=(/proc/"$1"/fd/*); echo "${#f[@]}"; }
base=$(fds_of "$PID_a")

# The flood, held open by python while the shell looks at migd; python
# reports on fd 3 and waits for a line on its stdin between the steps.
mkfifo "$WORK/to_py" "$WORK/from_py"
cat >"$WORK/flood.py" <<'PY'
import os, select, socket, sys, time
port, mport = int(sys.argv[1]), int(sys.argv[2])
out = os.fdopen(3, "w", buffering=1)
stdin = sys.stdin

def dial(addr, p):
    s = socket.socket()
    s.bind((addr, 0))
    s.connect(("127.0.0.1", p))
    return s

def is_open(s):
    """False once migd closed it (EOF or reset); drains what it sent."""
    while True:
        r, _, _ = select.select([s], [], [], 0)
        if not r:
            return True
        try:
            if not s.recv(65536):
                return False
        except ConnectionResetError:
            return False

socks = [dial("127.0.0.%d" % (2 + i % 10), port) for i in range(400)]
time.sleep(1.0)
out.write("open %d\n" % sum(is_open(s) for s in socks))
stdin.readline()
t0 = time.monotonic()
while time.monotonic() - t0 < 20 and any(is_open(s) for s in socks):
    time.sleep(0.2)
out.write("open %d after %.1f s\n" % (sum(is_open(s) for s in socks),
                                      time.monotonic() - t0))
stdin.readline()
idle = [dial("127.0.0.%d" % (2 + i % 10), mport) for i in range(100)]
time.sleep(0.5)
g = dial("127.0.0.1", mport)
g.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
g.settimeout(10)
body = b""
while True:
    b = g.recv(65536)
    if not b:
        break
    body += b
out.write("metrics open %d\n" % sum(is_open(s) for s in idle))
for l in body.decode().splitlines():
    if l.startswith("migd_strangers_turned_away_total"):
        out.write(l + "\n")
out.write("end\n")
PY
timeout -s KILL 90 python3 "$WORK/flood.py" "$PORT_a" "$mport" \
	<"$WORK/to_py" 3>"$WORK/from_py" &
py=$!
exec 4>"$WORK/to_py" 5<"$WORK/from_py"

read -r -t 60 line <&5 || fail "the flood did not start"
[[ $line =~ ^open\ ([0-9]+)$ ]] || fail "python: $line"
held=${BASH_REMATCH[1]}
[ "$held" -le 64 ] || fail "migd holds $held of 400 idle connections (at most 64)"
[ "$held" -ge 16 ] || fail "migd holds only $held of 400 idle connections: closed too eagerly"
n=$(fds_of "$PID_a")
[ "$n" -le $((base + 64)) ] || fail "migd has $n descriptors ($base before the flood)"
out=$(mc a list 2>&1) || fail "migctl list during the flood: $out"
ok "400 idle connections: migd holds $held ($n descriptors, $base before), migctl list answers"

echo go >&4
read -r -t 60 line <&5 || fail "no report after the deadline"
[[ $line =~ ^open\ 0\ after ]] || fail "strangers still held: $line"
n=$(fds_of "$PID_a")
[ "$n" -le $((base + 2)) ] || fail "migd has $n descriptors after the deadline ($base before)"
ok "after the deadline: $line; migd back to $n descriptors"

echo go >&4
read -r -t 60 line <&5 || fail "no metrics answer"
[[ $line =~ ^metrics\ open\ ([0-9]+)$ ]] || fail "python: $line"
[ "${BASH_REMATCH[1]}" -le 16 ] || fail "metrics: ${BASH_REMATCH[1]} idle connections held (at most 16)"
mapfile -t -u 5 rest
[ "${rest[-1]}" = end ] || fail "python: ${rest[*]}"
peer=$(printf '%s\n' "${rest[@]}" | sed -n 's/.*port="peer"} \([0-9]*\)$/\1/p')
met=$(printf '%s\n' "${rest[@]}" | sed -n 's/.*port="metrics"} \([0-9]*\)$/\1/p')
[ "${peer:-0}" -eq 400 ] || fail "peer strangers turned away: '$peer', expected 400: ${rest[*]}"
[ "${met:-0}" -ge 84 ] || fail "metrics strangers turned away: '$met', expected >= 84: ${rest[*]}"
wait "$py" || fail "python exited $?"
out=$(mc a list 2>&1) || fail "migctl list after: $out"
ok "metrics answered beside 100 idle connections; turned away: peer $peer, metrics $met"
