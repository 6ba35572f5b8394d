#!/usr/bin/env bash
# How a guest ends, with tiny PVH guests assembled here: a triple fault is
# reported with the vCPU's registers (on AMD SVM, that they are lost) and
# exit 1; a status byte written to port 0xf4 becomes migvm's exit code; a
# MISMATCH line with status 0 gives exit 3; a last console line without a
# newline is still written out.
here=$(dirname "$0")
source "$here/test_vm_common.sh"
vm_init "$1" "$2"
command -v cc >/dev/null && command -v ld >/dev/null ||
	{ echo "skip: no cc/ld to assemble the tiny guests"; exit 77; }

# guest NAME BODY: a 32-bit PVH ELF whose entry runs BODY (GNU as).
guest() {
	cat >"$WORK/$1.S" <<ASM
	.section .note.Xen, "a"
	.balign 4
	.long 4, 4, 18
	.asciz "Xen"
	.balign 4
	.long _start
	.text
	.code32
	.globl _start
_start:
	movl \$0x90000, %esp
$2
1:	hlt
	jmp 1b
putc:	/* %al to COM1 */
	movw \$0x3f8, %dx
	outb %al, %dx
	ret
ASM
	cat >"$WORK/guest.ld" <<'LD'
ENTRY(_start)
SECTIONS { . = 0x100000; .text : { *(.text) } .note.Xen : { *(.note.Xen) } }
LD
	cc -m32 -c "$WORK/$1.S" -o "$WORK/$1.o" &&
		ld -m elf_i386 -T "$WORK/guest.ld" -o "$WORK/$1.elf" "$WORK/$1.o" 2>/dev/null ||
		fail "cannot assemble the $1 guest"
}
say() { # assembly that prints STRING on the console
	local s=$1 i
	for ((i = 0; i < ${#s}; i++)); do
		printf '\tmovb $%d, %%al\n\tcall putc\n' "'${s:i:1}"
	done
}

guest crash "	movl \$0x12345678, %eax
	ud2"
timeout -s TERM 60 "$MIGVM" --kernel "$WORK/crash.elf" --mem 16 >"$WORK/crash.out" 2>"$WORK/crash.err"
rc=$?
[ "$rc" = 1 ] || fail "triple fault: exit $rc, expected 1"
grep -q "guest shut down (triple fault, KVM_EXIT_SHUTDOWN)" "$WORK/crash.err" ||
	fail "triple fault not reported: $(cat "$WORK/crash.err")"
# The registers at the fault: on VMX (and PVM) KVM leaves them in place. On
# AMD SVM the hardware shut the guest down and KVM re-initialised the vCPU
# (the VMCB is undefined after a shutdown): they are gone, and the report
# must say so rather than print the INIT state (rip fff0, cs f000) as the
# fault's.
if grep -q "registers at the triple fault are lost: KVM re-initialised" "$WORK/crash.err"; then
	grep -qw svm /proc/cpuinfo ||
		fail "registers reported lost on a host without AMD SVM: $(cat "$WORK/crash.err")"
	grep -q "rip 000000000000fff0" "$WORK/crash.err" &&
		fail "the INIT state is printed as the fault's registers: $(cat "$WORK/crash.err")"
	ok "triple fault: $(grep -m1 'KVM_EXIT_SHUTDOWN' "$WORK/crash.err"); on AMD SVM its registers are lost, and the report says so"
else
	grep -q "rax 0000000012345678" "$WORK/crash.err" ||
		fail "no registers in the report: $(cat "$WORK/crash.err")"
	ok "triple fault: $(grep -m1 'triple' "$WORK/crash.err"), registers reported"
fi

guest status7 "$(say "bye
")
	movw \$0xf4, %dx
	movl \$7, %eax
	outl %eax, %dx"
timeout -s TERM 60 "$MIGVM" --kernel "$WORK/status7.elf" --mem 16 >"$WORK/status7.out" 2>"$WORK/status7.err"
rc=$?
[ "$rc" = 7 ] || fail "status 7: exit $rc"
grep -qx "bye" "$WORK/status7.out" || fail "console output lost: $(cat "$WORK/status7.out")"
grep -q "the guest wrote status 7 to the exit port" "$WORK/status7.err" || fail "$(cat "$WORK/status7.err")"
ok "status byte 7 -> exit 7"

guest mismatch "$(say "MISMATCH page=1 expected=2 got=3
no newline at the end")
	movw \$0xf4, %dx
	xorl %eax, %eax
	outb %al, %dx"
timeout -s TERM 60 "$MIGVM" --kernel "$WORK/mismatch.elf" --mem 16 \
	--console "$WORK/mismatch.con" >/dev/null 2>"$WORK/mismatch.err"
rc=$?
[ "$rc" = 3 ] || fail "MISMATCH with status 0: exit $rc, expected 3"
grep -q "the guest reported: MISMATCH page=1" "$WORK/mismatch.err" || fail "$(cat "$WORK/mismatch.err")"
grep -qx "no newline at the end" "$WORK/mismatch.con" || fail "partial last line lost"
ok "MISMATCH -> exit 3; partial last line written"
