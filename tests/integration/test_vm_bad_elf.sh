#!/usr/bin/env bash
# Bad kernels: missing, not a file, empty, not ELF, wrong class or machine,
# truncated, no PVH note, a segment outside guest RAM, a command line too
# long; bzImages that are truncated, too old, 32-bit only, too big for the
# RAM or given a command line longer than they take (tests/vmm/test_bzimage
# tries every rule of the header; this shows migvm acting on them). Each
# gets exit 1 and a message naming the file and the cause. No KVM needed:
# migvm checks the kernel before it makes the VM.
here=$(dirname "$0")
source "$here/test_vm_common.sh"
vm_init "$1" "$2" nokvm
need_testguest

# expect_err NAME PATTERN ARGS...: exit 1, PATTERN on stderr, no crash.
expect_err() {
	local name=$1 pat=$2
	shift 2
	timeout -s KILL 30 "$MIGVM" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err"
	local rc=$?
	[ "$rc" = 1 ] || { cat "$WORK/$name.err"; fail "$name: exit $rc, expected 1"; }
	grep -q -- "$pat" "$WORK/$name.err" ||
		fail "$name: stderr lacks '$pat': $(cat "$WORK/$name.err")"
	ok "$name: $(head -n1 "$WORK/$name.err")"
}

# Little-endian fields of a file, and patching bytes in place.
u16() { od -An -t u2 -j "$2" -N 2 "$1" | tr -d ' '; }
u32() { od -An -t u4 -j "$2" -N 4 "$1" | tr -d ' '; }
u64() { od -An -t u8 -j "$2" -N 8 "$1" | tr -d ' '; }
poke() { # FILE OFFSET HEXBYTES...
	local f=$1 off=$2 hex="" b
	shift 2
	for b in "$@"; do hex+="\\x$b"; done
	printf "$hex" | dd of="$f" bs=1 seek="$off" conv=notrunc status=none
}
copy() { cp "$TG" "$WORK/$1.elf"; echo "$WORK/$1.elf"; }

[ "$(od -An -t u1 -j 4 -N 1 "$TG" | tr -d ' ')" = 2 ] || fail "test guest is not ELF64"
phoff=$(u64 "$TG" 32)
phnum=$(u16 "$TG" 56)
load=-1 note=-1
for i in $(seq 0 $((phnum - 1))); do
	t=$(u32 "$TG" $((phoff + i * 56)))
	[ "$t" = 1 ] && [ "$load" = -1 ] && load=$i
	[ "$t" = 4 ] && note=$i
done
[ "$load" -ge 0 ] && [ "$note" -ge 0 ] || fail "test guest lacks PT_LOAD or PT_NOTE"

expect_err missing "kernel $WORK/nope.elf: No such file" --kernel "$WORK/nope.elf"
expect_err directory "not a regular file" --kernel "$WORK"
: >"$WORK/empty.elf"
expect_err empty "not an ELF file" --kernel "$WORK/empty.elf"
printf 'hello, I am not an ELF file at all\n' >"$WORK/text.elf"
expect_err not-elf "not an ELF file" --kernel "$WORK/text.elf"

f=$(copy machine)
poke "$f" 18 b7 00 # EM_AARCH64
expect_err wrong-machine "ELF64 for machine 183, not x86-64" --kernel "$f"
f=$(copy class32)
poke "$f" 4 01 # ELFCLASS32 with an x86-64 machine
expect_err wrong-class "ELF32 for machine 62, not i386" --kernel "$f"
f=$(copy class3)
poke "$f" 4 03
expect_err bad-class "unknown ELF class 3" --kernel "$f"
f=$(copy bigendian)
poke "$f" 5 02
expect_err big-endian "not a little-endian ELF" --kernel "$f"

head -c 100 "$TG" >"$WORK/trunc-hdr.elf"
expect_err truncated-phdrs "program headers lie outside the file" --kernel "$WORK/trunc-hdr.elf"
off=$(u64 "$TG" $((phoff + load * 56 + 8)))
head -c $((off + 16)) "$TG" >"$WORK/trunc-seg.elf"
expect_err truncated-segment "segment $load lies outside the file" --kernel "$WORK/trunc-seg.elf"

f=$(copy nonote)
poke "$f" $((phoff + note * 56)) 00 00 00 00 # PT_NOTE -> PT_NULL
expect_err no-pvh-note "no PVH entry point" --kernel "$f"
expect_err host-binary "no PVH entry point" --kernel "$(readlink -f /bin/true)"

f=$(copy outside)
poke "$f" $((phoff + load * 56 + 24)) 00 00 00 7f 00 00 00 00 # p_paddr 2 GiB - 16 MiB
expect_err outside-ram "segment $load .* lies outside guest RAM (64 MiB)" --kernel "$f" --mem 64
expect_err small-ram "lies outside guest RAM (2 MiB)" --kernel "$TG" --mem 2

long=$(head -c 5000 /dev/zero | tr '\0' 'x')
expect_err long-cmdline "command line of 5000 bytes" --kernel "$TG" --cmdline "$long"

# A bzImage's setup header (protocol 2.15, 64-bit entry, at 16 MiB, needing
# 32 MiB from there), then a kernel of 8 KiB: 12 KiB in all.
bz() {
	local f=$WORK/$1.bz
	head -c 12288 /dev/zero >"$f"
	poke "$f" $((0x1f1)) 07            # setup sectors
	poke "$f" $((0x1f4)) 00 02 00 00   # syssize: 8 KiB / 16
	poke "$f" $((0x1fe)) 55 aa 00 66 48 64 72 53 0f 02 # boot flag, jump, HdrS, 2.15
	poke "$f" $((0x211)) 01            # LOADED_HIGH
	poke "$f" $((0x22c)) ff ff ff 7f 00 00 20 00 01 00 7f 00 ff 07 00 00
	poke "$f" $((0x258)) 00 00 00 01 00 00 00 00 00 00 00 02 # pref, init_size
	echo "$f"
}
f=$(bz small)
expect_err bz-small-ram "kernel $f: needs RAM up to 0x3000000 .* more --mem" --kernel "$f" --mem 40
head -c 6000 "$f" >"$WORK/trunc.bz"
expect_err bz-truncated "kernel $WORK/trunc.bz: .*(truncated?)" --kernel "$WORK/trunc.bz" --mem 64
f=$(bz old)
poke "$f" $((0x206)) 0a 02
expect_err bz-old "kernel $f: boot protocol 2.10, 2.12 or later" --kernel "$f" --mem 64
f=$(bz no64)
poke "$f" $((0x236)) 00
expect_err bz-32bit "kernel $f: no 64-bit entry point" --kernel "$f" --mem 64
f=$(bz cmdline)
expect_err bz-cmdline "kernel $f: command line of 2100 bytes, the kernel takes at most 2047" \
	--kernel "$f" --mem 64 --cmdline "$(head -c 2100 /dev/zero | tr '\0' 'x')"
: >"$WORK/empty.img"
expect_err bz-initrd-empty "initrd $WORK/empty.img: an empty file" --kernel "$(bz ok)" --mem 64 --initrd "$WORK/empty.img"
head -c $((40 << 20)) /dev/zero >"$WORK/big.img"
expect_err bz-initrd-big "initrd $WORK/big.img: .* do not fit .* more --mem" --kernel "$(bz ok)" --mem 64 --initrd "$WORK/big.img"
