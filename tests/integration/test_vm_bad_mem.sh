#!/usr/bin/env bash
# Memory the host cannot give: more than MemAvailable + swap is refused up
# front with a clear message; a mapping the kernel refuses (address-space
# limit) fails cleanly; out-of-range sizes are usage errors. Then the
# largest case that must work: a 16 GiB guest, split around the PCI hole.
here=$(dirname "$0")
source "$here/test_vm_common.sh"
vm_init "$1" "$2" nokvm

avail=$(awk '/MemAvailable/ { a = $2 } /SwapFree/ { s = $2 } END { print int((a + s) / 1024) }' /proc/meminfo)
too_much=$((avail * 2 + 1024))
timeout -s KILL 30 "$MIGVM" --mem "$too_much" >"$WORK/big.out" 2>"$WORK/big.err"
rc=$?
[ "$rc" = 1 ] || fail "--mem $too_much: exit $rc, expected 1"
grep -q "more than the host can give" "$WORK/big.err" || fail "--mem $too_much: $(cat "$WORK/big.err")"
ok "--mem $too_much: $(cat "$WORK/big.err")"

for bad in 0 1 abc -5 99999999999 1M; do
	timeout -s KILL 10 "$MIGVM" --mem "$bad" >/dev/null 2>"$WORK/usage.err"
	rc=$?
	[ "$rc" = 2 ] || fail "--mem $bad: exit $rc, expected 2"
	grep -q -- "--mem $bad: not a size in MiB" "$WORK/usage.err" || fail "--mem $bad: $(cat "$WORK/usage.err")"
done
ok "bad --mem values are usage errors"

if [ ! -c /dev/kvm ]; then
	echo "skip: the rest needs /dev/kvm"
	exit 0
fi
need_testguest
if grep -q libasan <<<"$(ldd "$MIGVM")"; then
	echo "skip: the address-space limit case (AddressSanitizer needs terabytes of it)"
else
# 4 GiB of address space for 8 GiB of guest RAM: mmap fails, cleanly.
(ulimit -v 4194304; timeout -s KILL 30 "$MIGVM" --mem 8192 \
	>"$WORK/as.out" 2>"$WORK/as.err")
rc=$?
[ "$rc" = 1 ] || fail "--mem 8192 under ulimit -v: exit $rc, expected 1"
grep -q "guest RAM of 8192 MiB: mmap: Cannot allocate memory" "$WORK/as.err" ||
	fail "mmap failure: $(cat "$WORK/as.err")"
ok "address-space limit: $(cat "$WORK/as.err")"
fi

if [ "$avail" -lt 17000 ]; then
	echo "skip: 16 GiB guest needs more host memory than $avail MiB"
	exit 0
fi
for backend in memfd anon; do
	timeout -s TERM 120 "$MIGVM" --mem 16384 --mem-backend "$backend" \
		--cmdline "touch=64M wss=16M duration=1 hb=200" \
		>"$WORK/16g-$backend.out" 2>"$WORK/16g-$backend.err"
	rc=$?
	[ "$rc" = 0 ] || fail "16 GiB guest ($backend): exit $rc"
	grep -q MISMATCH "$WORK/16g-$backend.out" && fail "16 GiB guest: MISMATCH"
	grep -q '^hb ' "$WORK/16g-$backend.out" || fail "16 GiB guest: no heartbeat"
	# RAM above the PCI hole: 13 GiB from 4 GiB (3407872 pages).
	grep -q "gpa=0x100000000 pages=3407872" "$WORK/16g-$backend.out" ||
		fail "16 GiB guest: no memory at 4 GiB in its map"
	ok "16 GiB guest ($backend) ran: $(grep -m1 '^testguest' "$WORK/16g-$backend.out")"
done
