#!/usr/bin/env bash
# A Linux VM in migvm: Debian's kernel, booted PVH with an initramfs of
# busybox and our workload (vmm/linuxguest: the test guest's stamp, rewrite
# and verify, in a Linux process, a thread per vCPU, with a clock check).
#   1. It boots to its heartbeats and ends by itself, migvm with status 0:
#      the ELF vmlinux through PVH with 1 vCPU, powered off through ACPI
#      (S5), after reading a line typed through the control channel
#      (`migvm ctl SOCK input`: the UART's receive side); Debian's bzImage
#      (/boot/vmlinuz) through the 64-bit boot protocol with 2, rebooted
#      through ACPI's reset register, and again with acpi=off (the MP
#      table lists the CPUs), rebooted through the i8042.
#   2. A running 2-vCPU Linux VM moves live, one hop per dirty-log backend
#      (MIG_LINUX_HOPS, default "clear bitmap ring"), each with --verify (the
#      memory hashes at the pause must agree): on each destination its
#      heartbeats go on, no mismatch, its clock never back and no step of
#      it longer than the downtime plus a second.
#   3. The last one is saved to a file and restored, paused, in a new
#      process, and resumed half a minute later: it goes on from its last
#      heartbeat, no mismatch, its clock never back, and no soft lockup
#      (the restore tells kvmclock the guest was stopped, KVM_KVMCLOCK_CTRL,
#      as QEMU does); then it quits with status 0.
#   4. The same VM (bzImage, initramfs, parameters) boots under QEMU
#      (microvm, -accel kvm, its own ACPI tables) to its
#      heartbeats and status 0: the guest for comparing the two
#      (experiments/compare.sh --linux).
# Run by tests/nested/test_linux.sh (a nested host of its own, one vCPU).
# The daemons move the same VM between two nested hosts in
# tests/nested/test_two_hosts_linux.sh.
# Every console is checked for what the kernel logged at warning level or
# worse (the workload passes it on as "kmsg:" lines): nothing about
# clocksources, the APIC or MSRs, no WARNING, no lockup or stall.
here=$(dirname "$0")
source "$here/../integration/migrate_common.sh"
vm_init "$1" "$2"
test_deadline 500 # 1000 s in a nested host (nested.linux gives it 1100)

source "$SRC/tests/linux/linux_common.sh"
linux_init

# The clock across a move: never back, and no step across it longer than
# the downtime plus this machine's own noise: the longest step the guest saw
# on the source before it, the heartbeats after its own move in left out
# (at least 1 s; an emulated host stalls its guests now and then). The workload reads CLOCK_MONOTONIC every 10 ms; gap_ms is
# the longest step since its previous heartbeat, so the first two
# heartbeats on the destination cover the pause.
clock_ok() { # JSON SRC-CONSOLE DEST-CONSOLE
	local down noise gap g k
	down=$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["downtime_ms"]))' "$1") ||
		fail "no downtime in $1"
	console_hbs "$2"
	noise=1000 # whole heartbeats only: the pause may cut the last one
	for ((k = 2; k < ${#HBS[@]}; k++)); do
		if [[ ${HBS[k]} =~ (^| )gap_ms=([0-9]+)\ back= ]] &&
			[ "${BASH_REMATCH[2]}" -gt "$noise" ]; then
			noise=${BASH_REMATCH[2]}
		fi
	done
	console_hbs "$3"
	hb_field "${HBS[-1]}" back
	[ "$FIELD" = 0 ] || fail "the guest's clock went back $FIELD times: ${HBS[-1]}"
	gap=0
	for g in "${HBS[0]}" "${HBS[1]}"; do
		hb_field "$g" gap_ms
		[ "$FIELD" -gt "$gap" ] && gap=$FIELD
	done
	[ "$gap" -le $((down + noise)) ] ||
		fail "the guest's clock stepped $gap ms across the move, more than the downtime ($down ms) plus $noise ms (its longest step before)"
	CLOCK="clock steps $gap ms across it (downtime $down ms, noise before $noise ms), never back"
}

# 1. Boot to heartbeats; the guest ends by itself, migvm with status 0
# saying why: (1) PVH with 1 vCPU and ACPI, powered off (ACPI S5), after
# reading a line typed on its console through the control channel (serial
# input, its receive interrupt); (2) the bzImage with 2 vCPUs and ACPI,
# rebooted (ACPI's reset register); (3) the same with acpi=off, the MP table
# listing its CPUs, rebooted through the i8042.
for n in 1 2 3; do
	c=$WORK/boot$n.con
	case $n in
	1) k=$LK cpus=1 how="PVH, ACPI" args="$KARGS linuxguest.read=1 linuxguest.end=poweroff"
	   ctl_args=(--control "$WORK/boot$n.sock")
	   want="the guest powered off (ACPI S5)" ;;
	2) k=$LZ cpus=2 how="bzImage, ACPI" args="$KARGS linuxguest.end=reboot" ctl_args=()
	   want="the guest reset the machine (ACPI reset register 0xcf9): VM ended, not restarted" ;;
	3) k=$LZ cpus=2 how="bzImage, acpi=off, MP table" args="$KARGS acpi=off linuxguest.end=reboot"
	   want="the guest reset the machine (i8042 reset line): VM ended, not restarted" ;;
	esac
	start_vm "boot$n" --mem 384 --cpus "$cpus" --kernel "$k" --initrd "$LI" \
		--cmdline "$args -- touch=16M wss=2M rate=500 hb=300 duration=3" \
		--console "$c" "${ctl_args[@]}"
	if [ "$n" = 1 ]; then
		poll_until 300 grep -qs "^linux-guest: reading a line" "$c" ||
			fail "Linux ($how): does not wait for console input: $(tail -n3 "$c")"
		ctl "$WORK/boot$n.sock" input 'hello from the host\x21\n' >/dev/null ||
			fail "Linux ($how): console input refused"
	fi
	wait_exit "$VM_PID" 300
	[ "$RC" = 0 ] || fail "Linux ($how): migvm exited $RC: $(tail -n3 "$WORK/boot$n.err"); console: $(tail -n5 "$c")"
	if [ "$n" = 1 ]; then
		grep -q "^linux-guest: read: hello from the host!$" "$c" ||
			fail "Linux ($how): the console input did not reach the guest: $(tail -n3 "$c")"
		how+=", read a line typed on its console"
	fi
	grep -q "^linux-guest: \(rebooting\|powering off\)" "$c" && grep -qx "migvm: vCPU [0-9]*: $want" "$WORK/boot$n.err" ||
		fail "Linux ($how): not ended as \"$want\": $(tail -n3 "$WORK/boot$n.err"); console: $(tail -n3 "$c")"
	how+=", ${want%%:*}"
	grep -q "^linux-guest: kernel .*, $cpus cpus, clocksource kvm-clock$" "$c" ||
		fail "Linux ($how): not $cpus CPUs with kvm-clock: $(grep -m1 '^linux-guest' "$c")"
	grep -q "^ready .* cpus=$cpus$" "$c" || fail "Linux ($how): the workload did not start"
	console_hbs_at_least "$c" 2 || fail "Linux ($how): fewer than 2 heartbeats"
	grep -q "^done .* mismatches=0 status=0$" "$c" || fail "Linux ($how): $(grep '^done' "$c")"
	linux_ok "$c"
	ok "Linux ($how) boots with $cpus vCPU(s) to ${#HBS[@]} heartbeats and ends with status 0 ($(grep -m1 '^linux-guest' "$c"))"
done

# 2. A running Linux VM moves on and on, one dirty-log backend per hop.
read -ra hops <<<"${MIG_LINUX_HOPS-clear bitmap ring}"
[ ${#hops[@]} -gt 0 ] || fail "MIG_LINUX_HOPS is empty: name at least one dirty-log backend"
guest="$KARGS -- touch=64M wss=8M rate=1000 hb=300"
start_source h0 --mem 512 --cpus 2 --kernel "$LK" --initrd "$LI" --cmdline "$guest" \
	--dirty-log "${hops[0]}"
poll_until 120 console_hbs_at_least "$WORK/h0.con" 3 || fail "h0: fewer than 3 heartbeats"
from=h0 from_sock=$WORK/h0.sock from_pid=$SRC_PID
for ((i = 0; i < ${#hops[@]}; i++)); do
	to=h$((i + 1)) mode=${hops[$i]}
	# The ring must be enabled before the vCPUs exist: each VM is made
	# with the backend it will migrate with.
	start_dest "$to" --mem 512 --cpus 2 --control "$WORK/$to.sock" \
		--dirty-log "${hops[$((i + 1))]:-auto}"
	to_pid=$DEST_PID
	migrate_committed "$from" "$from_sock" "$from_pid" dirty-log="$mode" verify=on
	poll_until 60 grep -q "incoming migration done" "$WORK/$to.err" ||
		fail "$from -> $to: the destination did not say the migration was done"
	poll_until 120 console_hbs_at_least "$WORK/$to.con" 3 ||
		fail "$from -> $to: fewer than 3 heartbeats there"
	check_continues "$WORK/$from.con" "$WORK/$to.con"
	clock_ok "$WORK/$from.json" "$WORK/$from.con" "$WORK/$to.con"
	linux_ok "$WORK/$to.con"
	ok "$from -> $to (dirty log: $mode): the Linux VM runs on, no mismatch, $CLOCK"
	from=$to from_sock=$WORK/$to.sock from_pid=$to_pid
done

# 3. Saved to a file, restored in a new process.
state=$WORK/linux.state
ctl "$from_sock" save "$state" >/dev/null || fail "$from: save refused"
wait_exit "$from_pid" 120
[ "$RC" = 0 ] || fail "$from: migvm exited $RC after save: $(tail -n3 "$WORK/$from.err")"
launch_vm r --restore "$state" --paused --control "$WORK/r.sock" --console "$WORK/r.con"
r_pid=$VM_PID
wait_sock "$WORK/r.sock"
# Longer than the soft-lockup threshold (2 x watchdog_thresh, 20 s): the
# guest's clock runs meanwhile (it is set at the load, issue 18 notes).
sleep 30
ctl "$WORK/r.sock" resume >/dev/null || fail "restored: resume refused"
# 30 heartbeats of 300 ms: past two periods of the soft-lockup watchdog
# (4 s), which reports, if it does, at its first check after the resume.
poll_until 240 console_hbs_at_least "$WORK/r.con" 30 ||
	fail "restored: fewer than 30 heartbeats: $(tail -n3 "$WORK/r.con")"
check_continues "$WORK/$from.con" "$WORK/r.con"
hb_field "${HBS[-1]}" back
[ "$FIELD" = 0 ] || fail "restored: the guest's clock went back $FIELD times: ${HBS[-1]}"
linux_ok "$WORK/r.con"
ok "$from saved, restored paused and resumed 30 s later: the Linux VM runs on, no mismatch, no lockup, its clock never back"
ctl "$WORK/r.sock" quit >/dev/null || fail "restored: quit refused"
wait_exit "$r_pid" 60
[ "$RC" = 0 ] || fail "restored: migvm exited $RC: $(tail -n3 "$WORK/r.err")"
ok "the Linux VM quit after its restore, exit 0"

# 4. The same VM under QEMU (microvm, -accel kvm): it boots to its
# heartbeats and ends through isa-debug-exit (QEMU exits (status << 1) | 1).
qemu=$(command -v qemu-system-x86_64) || fail "no qemu-system-x86_64 (scripts/setup.sh installs it)"
timeout -s KILL 600 "$qemu" -M microvm -accel kvm -cpu host,-arch-capabilities,-vmx,-svm \
	-m 384M -smp 2 -nodefaults -no-user-config -nographic -serial "file:$WORK/qemu.con" \
	-device isa-debug-exit,iobase=0xf4,iosize=4 -kernel "$LZ" -initrd "$LI" \
	-append "$KARGS -- touch=16M wss=2M rate=500 hb=300 duration=3" \
	>"$WORK/qemu.out" 2>"$WORK/qemu.err" </dev/null
rc=$?
[ "$rc" = 1 ] || fail "QEMU exited $rc, expected 1 (guest status 0): $(tail -n3 "$WORK/qemu.err"); console: $(tail -n5 "$WORK/qemu.con")"
grep -q "^linux-guest: kernel .*, 2 cpus, clocksource kvm-clock$" "$WORK/qemu.con" ||
	fail "QEMU: not 2 CPUs with kvm-clock: $(grep -m1 '^linux-guest' "$WORK/qemu.con")"
console_hbs_at_least "$WORK/qemu.con" 2 || fail "QEMU: fewer than 2 heartbeats"
grep -q "^done .* mismatches=0 status=0$" "$WORK/qemu.con" || fail "QEMU: $(grep '^done' "$WORK/qemu.con")"
linux_ok "$WORK/qemu.con"
ok "the same Linux VM under QEMU (microvm): ${#HBS[@]} heartbeats, status 0"
