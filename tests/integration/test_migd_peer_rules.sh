#!/usr/bin/env bash
# migd's peer port, spoken to directly (tests/integration/migd_peer.py,
# TLS 1.3 with the pre-shared key through tls_psk_pipe): a wrong key or
# identity fails the handshake and migd says so; a peer message in the
# clear is never heard (the connection closes); and a reservation is
# committed or released only on the connection that made it: another
# peer holding the same key, the VM's name and the migration id can
# neither take nor kill it. The incoming migvm is a stand-in that
# announces a port and waits: no KVM needed. Its stderr says another port
# and that the VM runs: migd takes neither (only migvm's events count).
# TLS on the data connections is migd's default: a Reserve that does not
# ask for it is refused; each reservation gets a key of its own (in the
# Reply, sealed on the peer link), which the incoming migvm gets on a
# pipe (--tls-psk-file /dev/fd/5): never the daemons' own key.
# ctest-timeout: 120
here=$(dirname "$0")
source "$here/test_vm_common.sh"
# shellcheck source=migd_common.sh
source "$here/migd_common.sh"
vm_init "$1" "$2" nokvm
migd_init
test_deadline 100

fake_migvm "$WORK/fake-migvm"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/psk"
start_migd a "$WORK/psk" --migvm "$WORK/fake-migvm"

head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/wrong"
timeout -s KILL 90 python3 - "$here" "$PORT_a" "$WORK/psk" "$MIGCTL" "$WORK/a.sock" \
	"$BUILD/tests/tls_psk_pipe" "$WORK/wrong" <<'PY' ||
import json, os, subprocess, sys
sys.path.insert(0, sys.argv[1])
from migd_peer import Peer, enc, raw_closed, RESERVE, COMMIT, RELEASE
port, keyfile = int(sys.argv[2]), sys.argv[3]
migctl, sock, pipe, wrong = sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7]

def ok(msg):
    print("ok: " + msg, flush=True)

def state(name):
    """vm NAME's state on A, None if A has no such VM."""
    out = subprocess.run([migctl, "--socket", sock, "--json", "status", name],
                         capture_output=True, text=True, timeout=60).stdout
    try:
        return json.loads(out).get("state")
    except ValueError:
        return None

# A wrong key, and the right key under another identity: the handshake
# fails, the client is told (an alert), migd closes.
for kf, ident in ((wrong, "migd-peer"), (keyfile, "someone")):
    p = Peer(pipe, port, kf, identity=ident)
    refused, why = p.refused()
    assert refused, "a TLS handshake with %s/%s: %s" % (kf, ident, why)
    ok("wrong key or identity (%s): %s" % (ident, why.strip()))

# A peer message in the clear (a Reserve frame, as before TLS): never
# heard, the connection closed.
frame = enc([(RESERVE, enc([(1, "m-0"), (2, enc([(1, "vm0"), (2, 64), (3, 1)])), (3, 1)]))])
assert raw_closed(port, len(frame).to_bytes(4, "little") + frame), \
    "a Reserve in the clear left the connection open"
assert state("vm0") is None, "a Reserve in the clear was taken"
ok("a Reserve in the clear: connection closed, nothing reserved")

a = Peer(pipe, port, keyfile)
# A source in clear (--no-tls, or older) is refused: this host takes
# migrations over TLS only.
vm = enc([(1, "vm1"), (2, 64), (3, 1)])
good, msg, rep = a.call(RESERVE, [(1, "mig-0"), (2, vm)])
assert not good and "TLS only" in msg, msg
ok("a Reserve without TLS refused: '%s'" % msg)

# A reserves vm1 (TLS); B, with the same key, knows the name and the id.
good, msg, rep = a.call(RESERVE, [(1, "mig-1"), (2, vm), (3, 1)])
assert good and rep.get(3) == 4444 and len(rep.get(4, b"")) == 64, (msg, rep)
got = open(os.path.join(os.path.dirname(keyfile), "key.got"), "rb").read()
psk = open(keyfile, "rb").read().strip()
assert len(rep.get(6, b"")) == 32 and rep[6] == got, (rep.get(6), got)
assert got != psk[:32] and psk not in got, "the incoming migvm got the daemons' key"
ok("the migration's own TLS key: in the Reply and on the incoming migvm's fd 5, "
   "not the daemons' key")
assert state("vm1") == "incoming", state("vm1")
ok("reserved on connection A: port %d (the event's, not stderr's 5555), "
   "still incoming after stderr said it runs" % rep[3])
b = Peer(pipe, port, keyfile)
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
[ "$(grep -c "peer 127.0.0.1: authentication failed" "$WORK/migd-a.err")" -ge 3 ] ||
	fail "migd did not log the three failed handshakes: $(grep peer "$WORK/migd-a.err")"
ok "migd logged the refusals"
