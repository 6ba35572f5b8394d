#!/usr/bin/env bash
# The Linux test VM for the tests (sourced after test_vm_common.sh's
# vm_init, which sets SRC, BUILD and fail):
#   linux_init      LK (the ELF vmlinux, PVH), LZ (Debian's bzImage), LI
#                   (our initramfs) and KARGS (the kernel arguments migvm
#                   needs); fails if a file is missing
#   linux_ok FILE   the console FILE shows no kernel complaint of the kinds
#                   that matter (the workload passes the kernel's warnings
#                   on as "kmsg:" lines) and no MISMATCH

linux_init() {
	local cache k
	cache=$(bash "$SRC/tests/nested/nested" cache)
	LK=$cache/vmlinux LZ=$cache/vmlinuz
	LI=$BUILD/vmm/linuxguest/initrd.cpio.gz
	for k in "$LK" "$LZ"; do
		[ -s "$k" ] || fail "no Linux kernel at $k: scripts/setup.sh (tests/nested/fetch.sh) unpacks Debian's"
	done
	[ -s "$LI" ] || fail "no Linux initramfs at $LI: scripts/setup.sh, then the build (target linuxguest)"
	# ACPI (migvm's tables: CPUs, IOAPIC, power-off); no PCI (there is
	# none).
	KARGS="console=ttyS0 quiet pci=off"
	if [ -n "${MIG_IN_NESTED:-}" ]; then
		# The nested host's emulated SVM (QEMU 7.2 TCG) lets the guest's
		# XSETBV through without an exit to KVM, so KVM never learns the
		# guest's XCR0: CPUID 0xD keeps the size for x87+SSE and Linux
		# warns "XSAVE consistency problem". Hardware SVM and VMX always
		# exit on XSETBV; here the guest does without XSAVE.
		KARGS+=" clearcpuid=xsave"
	fi
}

linux_ok() { # CONSOLE
	local bad
	bad=$(grep -E '^kmsg: [0-4] .*(WARNING|BUG|Oops|Call Trace|panic|clocksource|APIC|apic|ACPI|MSR|msr|lockup|stall|XSAVE|high resolution)' "$1" | head -n 5)
	[ -z "$bad" ] || fail "the Linux kernel complained ($1): $bad"
	! grep -q MISMATCH "$1" || fail "the workload reported: $(grep -m3 MISMATCH "$1")"
}
