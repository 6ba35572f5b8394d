#!/usr/bin/env bash
# Bad state files for --restore: missing, not a state file, empty,
# truncated, corrupted header / snapshot / memory (CRC32C), trailing
# garbage, an unknown state item, a --corrupt-gpa outside RAM. Each: exit 1, a message naming the
# file and the cause, no crash, no VM left running.
here=$(dirname "$0")
source "$here/test_vm_common.sh"
vm_init "$1" "$2"
need_testguest

state=$WORK/vm.state
sock=$WORK/src.sock
start_vm src --mem 128 --control "$sock" --cmdline "touch=16M wss=4M hb=200"
wait_sock "$sock"
wait_hb "$sock" 1
ctl "$sock" save "$state" >/dev/null || fail "save failed"
wait_exit "$VM_PID" 30
[ "$RC" = 0 ] || fail "migvm exited $RC after save"
size=$(stat -c %s "$state")

expect_err() {
	local name=$1 pat=$2
	shift 2
	timeout -s KILL 60 "$MIGVM" --console "$WORK/$name.out" "$@" 2>"$WORK/$name.err"
	local rc=$?
	[ "$rc" = 1 ] || { cat "$WORK/$name.err"; fail "$name: exit $rc, expected 1"; }
	grep -q -- "$pat" "$WORK/$name.err" ||
		fail "$name: stderr lacks '$pat': $(cat "$WORK/$name.err")"
	[ -s "$WORK/$name.out" ] && fail "$name: the guest ran"
	ok "$name: $(head -n1 "$WORK/$name.err")"
}
poke() { # FILE OFFSET: flip the bits of one byte
	local f=$1 off=$2 b
	b=$(od -An -t u1 -j "$off" -N 1 "$f" | tr -d ' ')
	printf "\\x$(printf %02x $((b ^ 0xff)))" |
		dd of="$f" bs=1 seek="$off" conv=notrunc status=none
}
variant() { cp "$state" "$WORK/$1.state"; echo "$WORK/$1.state"; }

expect_err missing "state file $WORK/nope.state: No such file" --restore "$WORK/nope.state"
: >"$WORK/empty.state"
expect_err empty "truncated (ends inside the header)" --restore "$WORK/empty.state"
head -c 4096 "$TG" >"$WORK/elf.state"
expect_err not-state "not a migvm state file (bad magic)" --restore "$WORK/elf.state"
for cut in 40 1000 $((size / 2)) $((size - 1)); do
	head -c "$cut" "$state" >"$WORK/cut.state"
	expect_err "truncated-$cut" "truncated" --restore "$WORK/cut.state"
done
f=$(variant header)
poke "$f" 30
expect_err bad-header "header checksum mismatch (corrupted)" --restore "$f"
f=$(variant snapshot)
poke "$f" 200
expect_err bad-snapshot "snapshot checksum mismatch (corrupted)" --restore "$f"
f=$(variant memory)
poke "$f" $((size - 16 - 8 - 5000))
expect_err bad-memory "region 0 checksum mismatch (corrupted memory contents)" --restore "$f"
f=$(variant trailer)
poke "$f" $((size - 3))
expect_err bad-trailer "trailer is corrupted" --restore "$f"
f=$(variant garbage)
printf 'garbage' >>"$f"
expect_err trailing-garbage "trailing garbage" --restore "$f"
# A state item this migvm does not know (a newer migvm's device; a vCPU
# the VM does not have) is refused, not dropped: the item renamed in the
# snapshot, its checksums made right again.
rename_item() { # FILE OLD NEW (same length)
	python3 - "$@" <<'PY'
import struct, sys
path, old, new = sys.argv[1], sys.argv[2].encode(), sys.argv[3].encode()
assert len(old) == len(new)
def crc32c(b):
    c = 0xffffffff
    for x in b:
        c ^= x
        for _ in range(8):
            c = (c >> 1) ^ (0x82f63b78 & -(c & 1))
    return c ^ 0xffffffff
d = bytearray(open(path, "rb").read())
hsize, = struct.unpack_from("<I", d, 12)
slen, = struct.unpack_from("<Q", d, 24)
snap = bytes(d[hsize:hsize + slen])
assert snap.count(old) == 1, "item %s not found once" % old
d[hsize:hsize + slen] = snap.replace(old, new)
struct.pack_into("<I", d, 48, crc32c(bytes(d[hsize:hsize + slen])))
struct.pack_into("<I", d, 60, crc32c(bytes(d[:60])))
open(path, "wb").write(d)
PY
}
f=$(variant unknown-item)
rename_item "$f" acpi.pm acpi.zz || fail "cannot rename a state item"
expect_err unknown-item 'state item "acpi.zz" is not one this migvm knows' --restore "$f"
f=$(variant extra-vcpu)
rename_item "$f" x86.vcpu.0 x86.vcpu.7 || fail "cannot rename a state item"
expect_err extra-vcpu 'state item "x86.vcpu.7" is not one this migvm knows' --restore "$f"
expect_err corrupt-outside "--corrupt-gpa 0x40000000: not guest RAM" \
	--restore "$state" --corrupt-gpa 0x40000000

# The good file still restores.
start_vm good --restore "$state" --control "$WORK/good.sock"
wait_sock "$WORK/good.sock"
ctl "$WORK/good.sock" quit >/dev/null
wait_exit "$VM_PID" 30
[ "$RC" = 0 ] || fail "good restore exited $RC"
ok "the intact state file restores"
