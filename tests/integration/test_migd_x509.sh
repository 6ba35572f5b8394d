#!/usr/bin/env bash
# migd's peer link with certificates (--tls-x509-dir, QEMU's file layout)
# instead of a pre-shared key, without KVM (migvm is a stand-in:
# fake_migvm). At the start, a bad directory is refused with the file and
# the cause named. On migd's peer port (tests/integration/migd_peer.py,
# Python's ssl): a client with a certificate the CA signed reserves a VM
# and gets the migration's own TLS key; one with no certificate, one from
# another CA, and one with the pre-shared key are refused, and migd logs
# each. As a client: B reaches A through the link (its reservation is made
# on A), also by a name whose first address (IPv6) answers nothing; B
# refuses a daemon whose certificate does not name the host it dialled,
# one whose CA it does not know, and one whose certificate is for TLS
# clients only, with the reason in the VM's status; the VM stays on B.
# (A VM moved between two migd with certificates: test_migd, at its end.)
# ctest-timeout: 120
here=$(dirname "$0")
source "$here/test_vm_common.sh"
# shellcheck source=migd_common.sh
source "$here/migd_common.sh"
vm_init "$1" "$2" nokvm
migd_init
test_deadline 100

pki_ca "$WORK/ca"
pki_ca "$WORK/rogue"
migd_pki "$WORK/x-a" "$WORK/ca" a IP:127.0.0.1,DNS:a.test
migd_pki "$WORK/x-b" "$WORK/ca" b IP:127.0.0.1,DNS:b.test
migd_pki "$WORK/x-d" "$WORK/ca" d DNS:d.test
migd_pki "$WORK/x-r" "$WORK/rogue" r IP:127.0.0.1
# P's certificate is the CA's, for TLS clients only (extended key usage)
migd_pki "$WORK/x-p" "$WORK/ca" p IP:127.0.0.1 extendedKeyUsage=clientAuth
ok "a CA, a rogue CA and their certificates"

# ---- refused at the start
bad_start() { # WANT ARGS...
	local want=$1 out
	shift
	out=$(bounded 30 "$MIGD" --state-dir "$WORK/bad" --control "$WORK/bad.sock" \
		--listen 127.0.0.1:0 "$@" 2>&1) && fail "migd ran with $*"
	grep -qF -- "$want" <<<"$out" || fail "unclear error for $*: $out"
}
head -c 32 /dev/urandom | base64 >"$WORK/psk"
bad_start "--psk-file and --tls-x509-dir: one or the other" \
	--psk-file "$WORK/psk" --tls-x509-dir "$WORK/x-a"
mkdir -p "$WORK/x-bad"
cp "$WORK/x-a/"* "$WORK/x-bad/"
rm "$WORK/x-bad/server-key.pem"
bad_start "$WORK/x-bad/server-key.pem: No such file" --tls-x509-dir "$WORK/x-bad"
cp "$WORK/x-b/server-key.pem" "$WORK/x-bad/server-key.pem"
bad_start "the key does not match the certificate" --tls-x509-dir "$WORK/x-bad"
cp "$WORK/x-a/server-key.pem" "$WORK/x-bad/"
printf 'not a certificate\n' >"$WORK/x-bad/ca-cert.pem"
bad_start "$WORK/x-bad/ca-cert.pem: " --tls-x509-dir "$WORK/x-bad"
ok "a key with another certificate, a missing file, a CA file with no CA, both kinds of key: refused at the start"

fake_migvm "$WORK/fake-migvm"
# B sees a.test as ::1 first, then 127.0.0.1 (an /etc/hosts of its own, in
# a mount namespace): A listens on 127.0.0.1 only, as a daemon on an IPv4
# address whose name also has an IPv6 one.
printf '127.0.0.1 localhost\n::1 a.test\n127.0.0.1 a.test\n' >"$WORK/hosts"
for d in a b d r p; do
	MIGD_WRAP=()
	# (not root: a user namespace of its own lets it mount)
	[ "$d" = b ] && MIGD_WRAP=(unshare $([ "$(id -u)" = 0 ] || echo -r) -m sh -c \
		'mount --bind "$0" /etc/hosts && exec "$@"' "$WORK/hosts")
	start_migd "$d" "" --tls-x509-dir "$WORK/x-$d" --migvm "$WORK/fake-migvm"
done
MIGD_WRAP=()
grep -q "peer link TLS 1.3 with certificates" "$WORK/migd-a.err" ||
	fail "A does not say how peers authenticate: $(cat "$WORK/migd-a.err")"

# ---- A as the server
timeout -s KILL 60 python3 - "$here" "$PORT_a" "$WORK" "$BUILD/tests/tls_psk_pipe" <<'PY' ||
import os, sys
sys.path.insert(0, sys.argv[1])
from migd_peer import Peer, PeerX509, x509_context, enc, RESERVE, RELEASE
port, work, pipe = int(sys.argv[2]), sys.argv[3], sys.argv[4]

def ok(msg):
    print("ok: " + msg, flush=True)

def ctx(ca, who=None):
    if who is None:
        return x509_context(ca)
    return x509_context(ca, os.path.join(work, who, "client-cert.pem"),
                        os.path.join(work, who, "client-key.pem"))

ca = os.path.join(work, "ca", "ca-cert.pem")
vm = enc([(1, "vm1"), (2, 64), (3, 1)])

# A client that shows B's certificate (the CA's): a reservation, with
# the migration's own key in the Reply.
p = PeerX509(ctx(ca, "x-b"), port)
good, msg, rep = p.call(RESERVE, [(1, "mig-1"), (2, vm), (3, 1)])
assert good and rep.get(3) == 4444 and len(rep.get(6, b"")) == 32, (msg, rep)
got = open(os.path.join(work, "key.got"), "rb").read()
assert got == rep[6], "the incoming migvm got another key"
good, msg, _ = p.call(RELEASE, [(1, "mig-1"), (2, "vm1"), (3, "test")])
assert good, msg
p.close()
ok("a client with a certificate the CA signed: reserved (port %d, its key "
   "on the migvm's pipe), released" % rep[3])

# No certificate, a certificate of another CA: refused.
for name, c in (("no certificate", ctx(ca)),
                ("another CA's certificate", ctx(ca, "x-r"))):
    try:
        p = PeerX509(c, port)
        p.send(RESERVE, [(1, "mig-2"), (2, vm), (3, 1)])
        refused, why = p.refused()
    except OSError as e:  # the alert may come during the handshake
        refused, why = True, str(e)
    assert refused, "%s: %s" % (name, why)
    ok("%s: refused (%s)" % (name, why))

# The daemons' way with a pre-shared key: not this migd's.
p = Peer(pipe, port, os.path.join(work, "psk"))
refused, why = p.refused()
assert refused, "a PSK client: " + why
ok("a pre-shared key: refused (%s)" % why.strip())
PY
	fail "A as a TLS server with certificates: $(tail -n 20 "$WORK/migd-a.err")"
three_failed() { [ "$(grep -c "peer 127.0.0.1: authentication failed" "$WORK/migd-a.err")" -ge 3 ]; }
poll_until 20 three_failed ||
	fail "A did not log 3 failed handshakes: $(grep peer "$WORK/migd-a.err")"
grep -q "peer 127.0.0.1 authenticated (TLS 1.3, certificate CN=b)" "$WORK/migd-a.err" ||
	fail "A did not log who B is: $(grep peer "$WORK/migd-a.err")"
grep -q "peer 127.0.0.1: authentication failed: TLS handshake failed: the peer showed no certificate" "$WORK/migd-a.err" &&
	grep -q "peer 127.0.0.1: authentication failed: the peer's certificate was refused: .*issuer is unknown" "$WORK/migd-a.err" ||
	fail "A does not say a certificate was missing or refused: $(grep peer "$WORK/migd-a.err")"
ok "A logged the refusals"

# ---- B as the client: a VM (the stand-in: it runs, it cannot migrate)
mc b start vm1 --mem 64 --cpus 1 >/dev/null || fail "start vm1 on B"
wait_vm_state b vm1 30 running

# A: the reservation is made over the link (then the stand-in cannot
# migrate: B releases it).
mc_to "$WORK/out" b migrate vm1 --to "127.0.0.1:$PORT_a"
out=$(<"$WORK/out")
[ "$MC_RC" != 0 ] || fail "the stand-in migrated: $out"
grep -q "reserved on 127.0.0.1:$PORT_a" "$WORK/migd-b.err" ||
	fail "B did not reserve on A: $out; $(tail -n 5 "$WORK/migd-b.err")"
grep -q "vm1.*reserved for 127.0.0.1" "$WORK/migd-a.err" ||
	fail "A did not log the reservation: $(tail -n 5 "$WORK/migd-a.err")"
wait_vm_state b vm1 60 running
ok "B reached A with its certificate, checked A's, and reserved"

# By name: a.test is ::1 first for B, where nothing listens; B goes on to
# 127.0.0.1, and A's certificate names a.test.
n0=$(grep -c "reserved for 127.0.0.1" "$WORK/migd-a.err")
mc_to "$WORK/out" b migrate vm1 --to "a.test:$PORT_a"
out=$(<"$WORK/out")
grep -q "reserved on a.test:$PORT_a" "$WORK/migd-b.err" ||
	fail "B did not reach A as a.test: $out; $(tail -n 5 "$WORK/migd-b.err")"
[ "$(grep -c "reserved for 127.0.0.1" "$WORK/migd-a.err")" -gt "$n0" ] ||
	fail "A did not log a second reservation"
wait_vm_state b vm1 60 running
ok "B reached A as a.test (::1 refused, then 127.0.0.1), its certificate checked for that name"

# D's certificate names d.test, not 127.0.0.1; R's CA is not B's; P's is
# for clients, not servers.
for t in "d:expected name 127.0.0.1" "r:issuer is unknown" "p:intended purpose"; do
	h=${t%%:*} want=${t#*:}
	port=PORT_$h
	out=$(mc b migrate vm1 --to "127.0.0.1:${!port}" 2>&1) && fail "B migrated to $h"
	grep -q "authentication failed: the peer's certificate was refused.*$want" <<<"$out" ||
		fail "unclear refusal of $h: $out"
	wait_vm_state b vm1 60 running
	grep -q "$want" <<<"$(jfield "$S" last_error)" || fail "status does not say why: $S"
	ok "$h refused by B: $out"
done
grep -q "vm1" "$WORK/migd-d.err" "$WORK/migd-r.err" "$WORK/migd-p.err" &&
	fail "D, R or P reserved vm1"
ok "nothing reserved on D, R or P"
