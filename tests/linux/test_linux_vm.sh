#!/usr/bin/env bash
# A Linux VM in migvm: Debian's kernel, booted PVH with an initramfs of
# busybox and our workload (vmm/linuxguest: the test guest's stamp, rewrite
# and verify, in a Linux process, a thread per vCPU, with a clock check).
#   1. It boots with 1 and with 2 vCPUs (the MP table lists them) to its
#      heartbeats, and ends by itself (exit port) with status 0.
#   2. With MIG_LINUX_HOPS="clear bitmap" (dirty-log backends, one per
#      hop), a running 2-vCPU Linux VM moves live (--verify: the memory
#      hashes at the pause must agree), goes on on the destination with its
#      heartbeats, no mismatch, its clock never back and no step of it
#      longer than the downtime plus a second; and back; then it quits.
#      Not run by default yet: the first hop fails its --verify, "memory
#      differs from the source's at pause" (issue 18: some page a Linux
#      guest's KVM state writes, kvmclock, steal time or PV EOI, is not
#      sent after the last dirty sync). This is its reproducer.
# Run by tests/nested/test_linux.sh (a nested host of its own, one vCPU).
# Every console is checked for what the kernel logged at warning level or
# worse (the workload passes it on as "kmsg:" lines): nothing about
# clocksources, the APIC or MSRs, no WARNING, no lockup or stall.
here=$(dirname "$0")
source "$here/../integration/migrate_common.sh"
vm_init "$1" "$2"
test_deadline 290 # 580 s in a nested host (nested.linux gives it 800)

LK=$(bash "$SRC/tests/nested/nested" cache)/vmlinux
LI=$BUILD/vmm/linuxguest/initrd.cpio.gz
[ -s "$LK" ] || fail "no Linux kernel at $LK: scripts/setup.sh (tests/nested/fetch.sh) unpacks Debian's"
[ -s "$LI" ] || fail "no Linux initramfs at $LI: scripts/setup.sh, then the build (target linuxguest)"
# No ACPI (the MP table describes the machine), no PCI (there is none).
KARGS="console=ttyS0 quiet acpi=off pci=off"
if [ -n "${MIG_IN_NESTED:-}" ]; then
	# The nested host's emulated SVM (QEMU 7.2 TCG) lets the guest's
	# XSETBV through without an exit to KVM, so KVM never learns the
	# guest's XCR0: CPUID 0xD keeps the size for x87+SSE and Linux warns
	# "XSAVE consistency problem". Hardware SVM and VMX always exit on
	# XSETBV; here the guest does without XSAVE.
	KARGS+=" clearcpuid=xsave"
fi

linux_ok() { # CONSOLE: no kernel complaint of the kinds that matter
	local bad
	bad=$(grep -E '^kmsg: [0-4] .*(WARNING|BUG|Oops|Call Trace|panic|clocksource|APIC|apic|MSR|msr|lockup|stall|XSAVE|high resolution)' "$1" | head -n 5)
	[ -z "$bad" ] || fail "the Linux kernel complained ($1): $bad"
	! grep -q MISMATCH "$1" || fail "the workload reported: $(grep -m3 MISMATCH "$1")"
}

# The clock across a move: never back, no step longer than the downtime
# plus a second (the workload reads CLOCK_MONOTONIC every 10 ms).
clock_ok() { # JSON DEST-CONSOLE
	local down gap
	down=$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["downtime_ms"]))' "$1") ||
		fail "no downtime in $1"
	console_hbs "$2"
	hb_field "${HBS[-1]}" back
	[ "$FIELD" = 0 ] || fail "the guest's clock went back $FIELD times: ${HBS[-1]}"
	hb_field "${HBS[-1]}" maxgap_ms
	gap=$FIELD
	[ "$gap" -le $((down + 1000)) ] ||
		fail "the guest's clock stepped $gap ms, more than the downtime ($down ms) plus 1 s"
	CLOCK="clock steps at most $gap ms (downtime $down ms), never back"
}

# 1. Boot to heartbeats, 1 and 2 vCPUs; the guest ends by itself.
for n in 1 2; do
	c=$WORK/boot$n.con
	timeout -s TERM 600 "$MIGVM" --mem 384 --cpus "$n" --kernel "$LK" --initrd "$LI" \
		--cmdline "$KARGS -- touch=16M wss=2M rate=500 hb=300 duration=3" \
		--console "$c" >"$WORK/boot$n.out" 2>"$WORK/boot$n.err"
	RC=$?
	[ "$RC" = 0 ] || fail "Linux, $n vCPU(s): migvm exited $RC: $(tail -n3 "$WORK/boot$n.err"); console: $(tail -n5 "$c")"
	grep -q "^linux-guest: kernel .*, $n cpus, clocksource kvm-clock$" "$c" ||
		fail "Linux, $n vCPU(s): not $n CPUs with kvm-clock: $(grep -m1 '^linux-guest' "$c")"
	grep -q "^ready .* cpus=$n$" "$c" || fail "Linux, $n vCPU(s): the workload did not start"
	console_hbs_at_least "$c" 2 || fail "Linux, $n vCPU(s): fewer than 2 heartbeats"
	grep -q "^done .* mismatches=0 status=0$" "$c" || fail "Linux, $n vCPU(s): $(grep '^done' "$c")"
	linux_ok "$c"
	ok "Linux boots with $n vCPU(s) to ${#HBS[@]} heartbeats and ends with status 0 ($(grep -m1 '^linux-guest' "$c"))"
done

# 2. A running Linux VM moves there and back, one dirty-log backend per hop.
read -ra hops <<<"${MIG_LINUX_HOPS:-}"
[ ${#hops[@]} -gt 0 ] || exit 0
guest="$KARGS -- touch=64M wss=8M rate=1000 hb=300"
start_source h0 --mem 512 --cpus 2 --kernel "$LK" --initrd "$LI" --cmdline "$guest" \
	--dirty-log "${hops[0]}"
poll_until 120 console_hbs_at_least "$WORK/h0.con" 3 || fail "h0: fewer than 3 heartbeats"
from=h0 from_sock=$WORK/h0.sock from_pid=$SRC_PID
for ((i = 0; i < ${#hops[@]}; i++)); do
	to=h$((i + 1)) mode=${hops[$i]}
	start_dest "$to" --mem 512 --cpus 2 --control "$WORK/$to.sock"
	to_pid=$DEST_PID
	migrate_committed "$from" "$from_sock" "$from_pid" dirty-log="$mode" verify=on
	poll_until 60 grep -q "incoming migration done" "$WORK/$to.err" ||
		fail "$from -> $to: the destination did not say the migration was done"
	poll_until 120 console_hbs_at_least "$WORK/$to.con" 3 ||
		fail "$from -> $to: fewer than 3 heartbeats there"
	check_continues "$WORK/$from.con" "$WORK/$to.con"
	clock_ok "$WORK/$from.json" "$WORK/$to.con"
	linux_ok "$WORK/$to.con"
	ok "$from -> $to (dirty log: $mode): the Linux VM runs on, no mismatch, $CLOCK"
	from=$to from_sock=$WORK/$to.sock from_pid=$to_pid
done
ctl "$from_sock" quit >/dev/null || fail "$from: quit refused"
wait_exit "$from_pid" 60
[ "$RC" = 0 ] || fail "$from: migvm exited $RC: $(tail -n3 "$WORK/$from.err")"
ok "the Linux VM quit on $from, exit 0"
