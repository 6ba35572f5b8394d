#!/usr/bin/env bash
# Bad command lines: unknown options, missing or bad values, options that do
# not go together, bad `migvm ctl` use. Each: a message naming the thing,
# exit 2 (usage) or 1 (an error), never a crash. No KVM needed.
here=$(dirname "$0")
source "$here/test_vm_common.sh"
vm_init "$1" "$2" nokvm

expect() { # CODE PATTERN ARGS...
	local code=$1 pat=$2
	shift 2
	timeout -s KILL 10 "$MIGVM" "$@" >"$WORK/o.out" 2>"$WORK/o.err"
	local rc=$?
	[ "$rc" = "$code" ] || fail "migvm $*: exit $rc, expected $code: $(cat "$WORK/o.err")"
	grep -q -- "$pat" "$WORK/o.err" ||
		fail "migvm $*: stderr lacks '$pat': $(cat "$WORK/o.err")"
	ok "migvm $*: $(head -n1 "$WORK/o.err")"
}

expect 2 "unknown option --bogus" --bogus
expect 2 "unknown option -x" -x
expect 2 "option --mem needs a value" --mem
expect 2 "option --kernel needs a value" --kernel
expect 2 "unexpected argument stray" stray
expect 2 "--cpus 0: not a number between 1 and 64" --cpus 0
expect 2 "--cpus 65: not a number between 1 and 64" --cpus 65
expect 2 "--cpus two: not a number" --cpus two
expect 2 "--mem-backend hugepages: expected private, memfd or anon" --mem-backend hugepages
expect 2 "--corrupt-gpa needs --restore" --corrupt-gpa 0x1000
expect 2 "--incoming-huge-pages needs --incoming or --restore" --incoming-huge-pages
expect 2 "--strict-tsc needs --incoming or --restore" --strict-tsc
expect 2 "--corrupt-gpa zz: not an address" --corrupt-gpa zz --restore x
expect 2 "--restore takes the VM's memory" --restore x --mem 64
expect 2 "--restore takes the VM's memory" --restore x --kernel y
expect 2 "a unix socket path must be shorter than 108 bytes" \
	--control "$WORK/$(head -c 200 /dev/zero | tr '\0' s)"
expect 2 "--initrd goes with --kernel" --initrd x
expect 2 "--paused needs --control" --paused
expect 2 "--initrd: a VM that is restored or migrated in" --initrd x --kernel y --incoming tcp:127.0.0.1:0 --token t
# --token-fd: the token from a descriptor, read to its end, checked.
expect 2 "--token-fd x: not a descriptor" --incoming tcp:127.0.0.1:0 --token-fd x
expect 2 "--token-fd 9: Bad file descriptor" --incoming tcp:127.0.0.1:0 --token-fd 9 9<&-
: >"$WORK/token.empty"
exec 7<"$WORK/token.empty"
expect 2 "--token-fd 7: no token" --incoming tcp:127.0.0.1:0 --token-fd 7
exec 7<&-
head -c 300 /dev/zero | tr '\0' t >"$WORK/token.long"
exec 7<"$WORK/token.long"
expect 2 "--token-fd 7: longer than 256 bytes" --incoming tcp:127.0.0.1:0 --token-fd 7
exec 7<&-
# --events-fd: a descriptor of 3 or more, open for writing.
expect 2 "--events-fd x: not a descriptor (3 or more)" --events-fd x
expect 2 "--events-fd 1: not a descriptor (3 or more)" --events-fd 1
expect 2 "--events-fd 9: Bad file descriptor" --events-fd 9 9<&-
exec 7<"$WORK/token.empty"
expect 2 "--events-fd 7: not open for writing" --events-fd 7
exec 7<&-
# With a kernel that passes its own checks (the test guest):
[ -r "$TG" ] || fail "the test guest was not built ($TG)"
expect 1 "initrd $WORK/none: No such file or directory" --kernel "$TG" --initrd "$WORK/none"
: >"$WORK/empty"
expect 1 "initrd $WORK/empty: an empty file" --kernel "$TG" --initrd "$WORK/empty"
head -c $((9 << 20)) /dev/zero >"$WORK/big"
expect 1 "initrd $WORK/big: 9437184 bytes, more than 8 MiB" --mem 8 --kernel "$TG" --initrd "$WORK/big"
head -c $((7 << 20)) /dev/zero >"$WORK/big"
expect 1 "initrd $WORK/big: 7340032 bytes do not fit in guest RAM" --mem 8 --kernel "$TG" --initrd "$WORK/big"
expect 2 "unknown command or wrong arguments: frobnicate" ctl "$WORK/s" frobnicate
expect 2 "unknown command or wrong arguments: save" ctl "$WORK/s" save
expect 2 "raw: an even number of hex digits" ctl "$WORK/s" raw abc
expect 2 "input: a bad escape" ctl "$WORK/s" input 'a\q'
expect 2 "input: a bad escape" ctl "$WORK/s" input '\x4'
expect 2 "input: no bytes" ctl "$WORK/s" input ''
expect 1 "cannot connect to $WORK/none.sock" ctl "$WORK/none.sock" status
# --tls-*: credentials checked before any VM exists; a key is never cut.
head -c 15 /dev/urandom >"$WORK/k15"
head -c 257 /dev/urandom >"$WORK/k257"
head -c 32 /dev/urandom >"$WORK/k32"
mkdir -p "$WORK/x509"
echo "not a certificate" >"$WORK/x509/ca-cert.pem"
cp "$WORK/x509/ca-cert.pem" "$WORK/x509/server-cert.pem"
cp "$WORK/x509/ca-cert.pem" "$WORK/x509/server-key.pem"
expect 1 "--tls-psk-file: $WORK/none: No such file or directory" --tls-psk-file "$WORK/none"
expect 1 "the key has 15 bytes, it must have 16..256" --tls-psk-file "$WORK/k15"
expect 1 "--tls-psk-file: $WORK/k257: longer than 256 bytes" --tls-psk-file "$WORK/k257"
expect 1 "one kind of credentials, not both" --tls-psk-file "$WORK/k32" --tls-x509-dir "$WORK/x509"
expect 1 "--tls-identity goes with --tls-psk-file" --tls-identity me
expect 1 "--tls-hostname goes with --tls-x509-dir" --tls-hostname hostb
expect 1 "the identity must be 1..255 printable" --tls-psk-file "$WORK/k32" --tls-identity "a b"
expect 1 "--tls-x509-dir: $WORK/none/ca-cert.pem: No such file" --tls-x509-dir "$WORK/none"
expect 1 "no CA certificate in the CA PEM" --tls-x509-dir "$WORK/x509" --incoming tcp:127.0.0.1:0 --token t
