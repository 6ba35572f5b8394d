#!/usr/bin/env bash
# Without KVM, migvm says so and exits 1 (MIGVM_KVM_DEVICE points migvm at
# a device node that does not exist, or one that is not KVM).
here=$(dirname "$0")
source "$here/test_vm_common.sh"
vm_init "$1" "$2" nokvm
need_testguest

MIGVM_KVM_DEVICE=$WORK/kvm timeout -s KILL 30 "$MIGVM" --mem 64 \
	>"$WORK/nokvm.out" 2>"$WORK/nokvm.err"
rc=$?
[ "$rc" = 1 ] || fail "no KVM: exit $rc, expected 1"
grep -q "$WORK/kvm does not exist: KVM is not available on this host" "$WORK/nokvm.err" ||
	fail "no KVM: $(cat "$WORK/nokvm.err")"
ok "$(cat "$WORK/nokvm.err")"

MIGVM_KVM_DEVICE=/dev/null timeout -s KILL 30 "$MIGVM" --mem 64 \
	>"$WORK/null.out" 2>"$WORK/null.err"
rc=$?
[ "$rc" = 1 ] || fail "/dev/null as KVM: exit $rc, expected 1"
grep -q "/dev/null is not a KVM device" "$WORK/null.err" ||
	fail "/dev/null as KVM: $(cat "$WORK/null.err")"
ok "$(cat "$WORK/null.err")"
