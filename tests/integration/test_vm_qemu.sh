#!/usr/bin/env bash
# The test guest boots under QEMU (microvm, PVH) with the same heartbeat
# output as under migvm, and ends itself through isa-debug-exit (QEMU exits
# with (status << 1) | 1, so 1 means the guest said 0).
here=$(dirname "$0")
source "$here/test_vm_common.sh"
vm_init "$1" "$2"
need_testguest
qemu=$(command -v qemu-system-x86_64) || { echo "skip: no qemu-system-x86_64"; exit 77; }

timeout -s KILL 120 "$qemu" -M microvm -accel kvm -cpu host,-arch-capabilities \
	-m 1G -smp 2 -nodefaults -no-user-config -nographic -serial stdio \
	-device isa-debug-exit,iobase=0xf4,iosize=4 -kernel "$TG" \
	-append "cpus=2 duration=2 hb=200 touch=64M wss=16M" \
	>"$WORK/qemu.out" 2>"$WORK/qemu.err" </dev/null
rc=$?
[ "$rc" = 1 ] || { cat "$WORK/qemu.out" "$WORK/qemu.err"; fail "qemu exited $rc, expected 1 (guest status 0)"; }
n=$(grep -c '^hb seq=[0-9]* ticks=[0-9]* written=[0-9]* verified=[0-9]* mismatches=0' "$WORK/qemu.out")
[ "$n" -ge 3 ] || { cat "$WORK/qemu.out"; fail "only $n heartbeat lines under QEMU"; }
grep -q MISMATCH "$WORK/qemu.out" && fail "MISMATCH under QEMU"
first=$(grep -m1 '^hb ' "$WORK/qemu.out")
last=$(grep '^hb ' "$WORK/qemu.out" | tail -n1)
s1=$(sed 's/.*seq=\([0-9]*\).*/\1/' <<<"$first")
s2=$(sed 's/.*seq=\([0-9]*\).*/\1/' <<<"$last")
[ "$s2" -gt "$s1" ] || fail "heartbeat did not advance under QEMU"

# The same guest and parameters under migvm print the same kind of lines.
timeout -s TERM 120 "$MIGVM" --cpus 2 --mem 1024 \
	--cmdline "cpus=2 duration=2 hb=200 touch=64M wss=16M" \
	>"$WORK/migvm.out" 2>"$WORK/migvm.err"
rc=$?
[ "$rc" = 0 ] || fail "migvm exited $rc"
keys() { grep -m1 '^hb ' "$1" | grep -o '[a-z_]*=' | tr -d '\n'; }
[ "$(keys "$WORK/qemu.out")" = "$(keys "$WORK/migvm.out")" ] ||
	fail "heartbeat fields differ: QEMU '$(keys "$WORK/qemu.out")'," \
		"migvm '$(keys "$WORK/migvm.out")'"
ok "QEMU: $n heartbeats ($first ... $last), same fields as under migvm"
