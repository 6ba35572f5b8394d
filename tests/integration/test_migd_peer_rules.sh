#!/usr/bin/env bash
# migd's peer port, spoken to directly (tests/integration/migd_peer.py):
# a wrong key is refused and the connection closed; nothing but Auth is
# heard before it; an Auth recorded from one session and replayed in
# another is refused (each side's nonce is fresh); and a reservation is
# committed or released only on the connection that made it: another
# peer holding the same key, the VM's name and the migration id can
# neither take nor kill it. The incoming migvm is a stand-in that
# announces a port and waits: no KVM needed. Its stderr says another port
# and that the VM runs: migd takes neither (only migvm's events count).
# TLS on the data connections is migd's default: a Reserve that does not
# ask for it is refused, and the incoming migvm gets the key on a pipe
# (--tls-psk-file /dev/fd/5), never on its command line.
# ctest-timeout: 120
here=$(dirname "$0")
source "$here/test_vm_common.sh"
# shellcheck source=migd_common.sh
source "$here/migd_common.sh"
vm_init "$1" "$2" nokvm
migd_init
test_deadline 100

cat >"$WORK/fake-migvm" <<'SH'
#!/bin/bash
# An incoming migvm as far as a reservation goes: its port as an event
# (VmEvent{incoming_port: 4444}, framed, on --events-fd 4), then waiting.
# Before it, stderr lines that once steered migd (and that a guest's
# console or a peer's reason could forge): they must not.
[[ " $* " == *" --events-fd 4 "* ]] || { echo "no --events-fd 4: $*" >&2; exit 2; }
[[ " $* " == *" --tls-psk-file /dev/fd/5 --tls-identity migd "* ]] ||
	{ echo "no --tls-psk-file /dev/fd/5: $*" >&2; exit 2; }
cmp -s /dev/fd/5 "$(dirname "$0")/psk" || { echo "fd 5 is not the key" >&2; exit 2; }
[[ "$*" != *"$(cat "$(dirname "$0")/psk")"* ]] || { echo "the key in argv" >&2; exit 2; }
echo "migvm: incoming migration on port 5555" >&2
echo "migvm: incoming migration done; the VM runs here" >&2
sleep 0.5
printf '\x03\x00\x00\x00\x08\xdc\x22' >&4
exec sleep 200
SH
chmod +x "$WORK/fake-migvm"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/psk"
start_migd a "$WORK/psk" --migvm "$WORK/fake-migvm"

timeout -s KILL 90 python3 - "$here" "$PORT_a" "$WORK/psk" "$MIGCTL" "$WORK/a.sock" <<'PY' ||
import json, subprocess, sys
sys.path.insert(0, sys.argv[1])
from migd_peer import Peer, enc, RESERVE, COMMIT, RELEASE
port, psk = int(sys.argv[2]), open(sys.argv[3], "rb").read().strip()
migctl, sock = sys.argv[4], sys.argv[5]

def ok(msg):
    print("ok: " + msg, flush=True)

def state(name):
    out = subprocess.run([migctl, "--socket", sock, "--json", "status", name],
                         capture_output=True, text=True, timeout=60).stdout
    return json.loads(out)["state"]

# A wrong key: refused, told why, closed.
p = Peer(port)
good, msg, _ = p.auth(b"not the key, but long enough to be one")
assert not good and "wrong pre-shared key" in msg, msg
assert p.closed(), "the connection stayed open after a failed Auth"
ok("wrong key: '%s', connection closed" % msg)

# Before Auth nothing else is heard.
p = Peer(port)
p.recv()  # the challenge
p.send(RESERVE, [(1, "m-0"), (2, enc([(1, "vm0"), (2, 64), (3, 1)]))])
case, ar = p.recv()
assert case == 3 and not ar.get(1) and b"authenticate first" in ar.get(2, b""), ar
assert p.closed()
ok("a Reserve before Auth: '%s', connection closed" % ar[2].decode())

# A recorded Auth replayed on another connection: the server's nonce
# differs, the proof does not hold.
a = Peer(port)
good, msg, recorded = a.auth(psk)
assert good, msg
r = Peer(port)
good, msg, _ = r.auth(psk, replay=recorded)
assert not good, "a replayed Auth was accepted"
assert r.closed()
ok("a replayed Auth refused: '%s'" % msg)

# A source in clear (--no-tls, or older) is refused: this host takes
# migrations over TLS only.
vm = enc([(1, "vm1"), (2, 64), (3, 1)])
good, msg, rep = a.call(RESERVE, [(1, "mig-0"), (2, vm)])
assert not good and "TLS only" in msg, msg
ok("a Reserve without TLS refused: '%s'" % msg)

# A reserves vm1 (TLS); B, with the same key, knows the name and the id.
good, msg, rep = a.call(RESERVE, [(1, "mig-1"), (2, vm), (3, 1)])
assert good and rep.get(3) == 4444 and len(rep.get(4, b"")) == 64, (msg, rep)
assert state("vm1") == "incoming", state("vm1")
ok("reserved on connection A: port %d (the event's, not stderr's 5555), "
   "still incoming after stderr said it runs" % rep[3])
b = Peer(port)
good, msg, _ = b.auth(psk)
assert good, msg
good, msg, _ = b.call(COMMIT, [(1, "mig-1"), (2, "vm1")])
assert not good and "another connection" in msg, msg
good, msg, _ = b.call(RELEASE, [(1, "mig-1"), (2, "vm1"), (3, "stolen")])
assert not good and "another connection" in msg, msg
assert state("vm1") == "incoming", state("vm1")
ok("B's Commit and Release refused: '%s'; vm1 still incoming" % msg)

# The owner commits; B still cannot release it.
good, msg, _ = a.call(COMMIT, [(1, "mig-1"), (2, "vm1")])
assert good, msg
assert state("vm1") == "running", state("vm1")
good, msg, _ = b.call(RELEASE, [(1, "mig-1"), (2, "vm1"), (3, "stolen")])
assert not good, msg
assert state("vm1") == "running", state("vm1")
ok("A's Commit taken: vm1 runs here; B's Release after it refused")
PY
	fail "the peer protocol checks failed: $(tail -n 20 "$WORK/migd-a.err")"
grep -q "commit from 127.0.0.1 refused: the reservation was made on another connection" \
	"$WORK/migd-a.err" || fail "migd did not log the refused commit"
ok "migd logged the refusals"
