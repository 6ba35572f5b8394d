#!/usr/bin/env bash
# Memory the host cannot give: more than MemAvailable + swap is refused up
# front with a clear message; a mapping the kernel refuses (address-space
# limit) fails cleanly; out-of-range sizes are usage errors. Then the
# largest case that must work: a 16 GiB guest, split around the PCI hole
# (where the host can give that much; skipped, saying so, where not).
# Every size here comes from the host's memory, read when it is used.
here=$(dirname "$0")
source "$here/test_vm_common.sh"
vm_init "$1" "$2"

host_avail() { # MemAvailable + SwapFree in MiB, as migvm counts them
	awk '/^MemAvailable:/ { a = $2 } /^SwapFree:/ { s = $2 } END { print int((a + s) / 1024) }' /proc/meminfo
}
avail=$(host_avail)
[ "$avail" -gt 0 ] 2>/dev/null || fail "cannot read MemAvailable from /proc/meminfo"
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

# The rest runs guests: vm_init made sure /dev/kvm is here (77 otherwise).
[ -c /dev/kvm ] || fail "/dev/kvm is absent"
need_testguest
if grep -q libasan <<<"$(ldd "$MIGVM")"; then
	echo "skip: the address-space limit case (AddressSanitizer needs terabytes of it)"
else
	# Guest RAM the host can give (half of what it has, at most 8 GiB) in
	# half as much address space: the up-front check lets it through and
	# mmap fails, cleanly. (migvm needs less than 64 MiB of address space
	# before it maps guest RAM.)
	avail=$(host_avail)
	as_mib=$((avail / 2 > 8192 ? 8192 : avail / 2))
	limit_mib=$((as_mib / 2))
	[ "$limit_mib" -ge 64 ] ||
		fail "the host has $avail MiB available: too little for the address-space limit case"
	(
		ulimit -v $((limit_mib * 1024)) || exit 99
		exec timeout -s KILL 60 "$MIGVM" --mem "$as_mib" >"$WORK/as.out" 2>"$WORK/as.err"
	)
	rc=$?
	[ "$rc" = 1 ] || fail "--mem $as_mib under ulimit -v $((limit_mib * 1024)) (host: $avail MiB available): exit $rc, expected 1: $(cat "$WORK/as.err")"
	grep -q "guest RAM of $as_mib MiB: mmap: Cannot allocate memory" "$WORK/as.err" ||
		fail "mmap failure: $(cat "$WORK/as.err")"
	ok "address-space limit of $limit_mib MiB, host $avail MiB available: $(cat "$WORK/as.err")"
fi

avail=$(host_avail)
if [ "$avail" -lt 17000 ]; then
	echo "skip: the 16 GiB guest case needs 17000 MiB of MemAvailable + SwapFree, the host has $avail MiB"
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
