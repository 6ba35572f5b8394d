#!/usr/bin/env bash
# Live migration over TLS 1.3 between two migvm processes (--tls-*), with
# X.509, both sides checked: a CA of the test's own signs the destination's
# certificate (dest.test) and the source's (source.test). A source that
# expects another host name (wrong.test) is refused with the name in its
# error and keeps running its VM, and the destination, to which that
# source was only a stranger, goes on waiting: the right source then
# migrates to it (--verify: memory hashes equal), and the guest runs on
# there with no mismatch (and is not migrated on with the credentials
# that took it in).
# (A pre-shared key: test_migd, where migd migrates over TLS by default,
# its key on a pipe; a wrong key, tests/unit/test_tls_migrate.c.)
# That no page, state or token can be read or changed on the path is shown
# byte by byte by tests/unit/test_tls_migrate.c (a relay that reads and
# tampers); here the real VMs, KVM and their pages over TLS.
# ctest-timeout: 240
here=$(dirname "$0")
source "$here/migrate_common.sh"
vm_init "$1" "$2"
need_testguest

guest="touch=16M wss=8M rate=max hb=300"
MEM=128

# ---- a CA and two certificates (openssl; ECDSA P-256, valid for a day)
pki=$WORK/pki
mkdir -p "$pki/src" "$pki/dst"
pki_ca "$pki/ca"
pki_cert "$pki/ca" dest DNS:dest.test
pki_cert "$pki/ca" source DNS:source.test
cp "$pki/ca/ca-cert.pem" "$pki/src/"
cp "$pki/ca/ca-cert.pem" "$pki/dst/"
cp "$pki/ca/dest-cert.pem" "$pki/dst/server-cert.pem"
cp "$pki/ca/dest-key.pem" "$pki/dst/server-key.pem"
cp "$pki/ca/source-cert.pem" "$pki/src/client-cert.pem"
cp "$pki/ca/source-key.pem" "$pki/src/client-key.pem"
ok "a CA, the destination's certificate (dest.test) and the source's (source.test)"

# A source refused: its JSON names the cause ($2), its VM still runs.
refused() { # NAME PATTERN
	local name=$1
	migrate_source "$name"
	[ "$RC" = 1 ] || fail "$name: migrated, or no result: $(cat "$WORK/$name.out")"
	python3 - "$WORK/$name.out" "$2" <<'PY' || fail "$name: $(cat "$WORK/$name.out")"
import json, re, sys
j = json.loads(next(l for l in open(sys.argv[1]) if l.startswith('{')))
assert j["status"] == "failed", j
assert re.search(sys.argv[2], j["error"]), "error %r lacks %r" % (j["error"], sys.argv[2])
print("refused as expected: " + j["error"])
PY
	status "$WORK/$name.sock"
	[ "$(field run_state)" = running ] || fail "$name: the VM is $(field run_state) after the refusal"
	local s1
	s1=$(field hb_seq)
	poll_until 120 eval "status '$WORK/$name.sock'; [ \"\$(field hb_seq)\" -gt $s1 ]" ||
		fail "$name: the guest stopped beating after the refusal"
	ctl "$WORK/$name.sock" quit >/dev/null
	wait_exit "$SRC_PID" 60
	ok "$name: refused, its VM ran on until told to quit"
	pid_gone "$DEST_PID" && fail "the destination ended after a stranger's refusal: $(cat "$WORK/$DEST_NAME.err")"
	ok "the destination still waits for its source"
}

# A source that moves: JSON checked, the guest runs on at the destination.
moves() { # NAME
	local name=$1
	migrate_source "$name" verify=on
	[ "$RC" = 0 ] || fail "$name: source exited $RC: $(cat "$WORK/$name.out") $(tail -n 5 "$WORK/$name.err")"
	check_json "$WORK/$name.out"
	poll_until 120 grep -q "incoming migration done" "$WORK/$DEST_NAME.err"
	# Its X.509 credentials took the VM in (a server certificate, the
	# source's name): migrating it on needs credentials of its own.
	local out
	out=$(ctl "$WORK/$DEST_NAME.sock" migrate tcp:127.0.0.1:9 "$TOKEN" 2>&1) &&
		fail "$DEST_NAME: migrating on with the incoming side's certificate was accepted"
	grep -q "credentials took it in" <<<"$out" || fail "$DEST_NAME: unclear refusal: $out"
	ok "migrating on with the incoming side's X.509 credentials refused: $out"
	dest_runs "$DEST_NAME" 3
	[ "$RC" = 0 ] || fail "$DEST_NAME: exited $RC (a mismatch, or an error)"
	check_continues "$WORK/$name.con" "$WORK/$DEST_NAME.con"
}

# ---- 1. X.509
DEST_NAME=dst-x509
start_dest $DEST_NAME --mem $MEM --cpus 1 --control "$WORK/$DEST_NAME.sock" \
	--tls-x509-dir "$pki/dst" --tls-hostname source.test
start_source src-wrongname --mem $MEM --cpus 1 --cmdline "$guest" \
	--tls-x509-dir "$pki/src" --tls-hostname wrong.test
refused src-wrongname "expected name wrong.test"
start_source src-x509 --mem $MEM --cpus 1 --cmdline "$guest" \
	--tls-x509-dir "$pki/src" --tls-hostname dest.test
moves src-x509
ok "X.509: migrated over TLS after a source with the wrong host name was refused"
