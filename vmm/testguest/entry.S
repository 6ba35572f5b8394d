/*
 * Test guest: PVH entry, switch to long mode, AP trampoline, interrupt
 * entry points, the ring-3 system-call trap, static GDT and page tables.
 *
 * Ring-0 code is emulated (slowly) on our PVM development KVM, so what can be
 * computed at build time is: the page tables for the first 4 GiB and the GDT
 * are initialized data, and the hot interrupt path is a handful of
 * instructions.
 */
#include "guest.h"

#define CR0_PE 0x1
#define CR0_MP 0x2
#define CR0_EM 0x4
#define CR0_TS 0x8
#define CR0_NE 0x20
#define CR0_NW 0x20000000
#define CR0_CD 0x40000000
#define CR0_PG 0x80000000
#define CR4_PAE 0x20
#define CR4_OSFXSR 0x200
#define CR4_OSXMMEXCPT 0x400
#define MSR_EFER 0xc0000080
#define EFER_LME 0x100

#define PTE_P 0x1
#define PTE_RW 0x2
#define PTE_US 0x4
#define PTE_PWT 0x8
#define PTE_PCD 0x10
#define PTE_PS 0x80

/* Xen ELF note: PVH loaders (QEMU, migvm) look for the 32-bit entry here.
 * QEMU reads an 8-byte value for ELF64 and aligns the name to the segment's
 * p_align, so the note is 4-aligned with a .quad descriptor (as Linux). */
	.section .note.Xen, "a", @note
	.balign 4
	.long 4			/* namesz */
	.long 8			/* descsz */
	.long 18		/* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.balign 4
	.quad _start32

	.section .text.entry, "ax"
	.code32
/* PVH: 32-bit protected mode, paging off, %ebx = struct hvm_start_info. */
	.globl _start32
_start32:
	cli
	cld
	movl %ebx, %esi
	lgdt gdt_ptr
	ljmp $GDT_KCODE32, $1f
1:	movl $GDT_KDATA, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	/* Only the small .bss is cleared: stacks and spare page directories
	 * live in .noinit and are never assumed to be zero. */
	movl $__bss_start, %edi
	movl $__bss_end, %ecx
	subl %edi, %ecx
	shrl $2, %ecx
	xorl %eax, %eax
	rep stosl
	movl $(kstacks + KSTACK_SIZE), %esp
	xorl %edi, %edi
	jmp to_long

/* APs arrive here from the trampoline, in protected mode, one at a time. */
	.globl ap_entry32
ap_entry32:
	movl $GDT_KDATA, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	movl ap_stack_top, %esp
	movl $1, %edi

/* %edi = 0 on the BSP (with %esi = start info), 1 on an AP. */
to_long:
	movl %cr4, %eax
	orl $(CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT), %eax
	movl %eax, %cr4
	movl $pml4, %eax
	movl %eax, %cr3
	movl $MSR_EFER, %ecx
	rdmsr
	orl $EFER_LME, %eax
	wrmsr
	/* An AP comes from reset with caching disabled (CD, NW). */
	movl %cr0, %eax
	andl $~(CR0_EM | CR0_TS | CR0_NW | CR0_CD), %eax
	orl $(CR0_PG | CR0_PE | CR0_MP | CR0_NE), %eax
	movl %eax, %cr0
	ljmp $GDT_KCODE64, $long64

	.code64
long64:
	/* Null DS/ES/FS/GS before GS base is set: iretq to ring 3 would
	 * null a DPL-0 selector anyway, and on some CPUs loading a null
	 * selector clears the base. */
	xorl %eax, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %fs
	movl %eax, %gs
	movl $GDT_KDATA, %eax
	movl %eax, %ss
	testl %edi, %edi
	jnz 1f
	movl %esi, %edi
	call bsp_main
	jmp 2f
1:	call ap_main
2:	cli			/* neither returns */
	hlt
	jmp 2b

/* enter_user(rip, rsp, arg): drop to ring 3 with interrupts on, IOPL 0. */
	.globl enter_user
enter_user:
	pushq $(GDT_UDATA | 3)
	pushq %rsi
	pushq $0x202
	pushq $(GDT_UCODE | 3)
	pushq %rdi
	movq %rdx, %rdi
	xorl %eax, %eax
	xorl %ebx, %ebx
	xorl %ecx, %ecx
	xorl %edx, %edx
	xorl %esi, %esi
	xorl %ebp, %ebp
	xorl %r8d, %r8d
	xorl %r9d, %r9d
	xorl %r10d, %r10d
	xorl %r11d, %r11d
	iretq

/*
 * The only way ring 3 talks to ring 0: rax = call number, rdi = argument.
 * The #UD handler recognises this exact ud2, does the work and resumes at
 * the ret. Port I/O from ring 3 and int/syscall misbehave on PVM.
 */
	.globl sys_trap
sys_trap:
	ud2
	ret

/* 100 Hz tick: every instruction here is emulated on PVM, so it is kept to
 * the counter and the EOI. GS base = this CPU's struct cpu in both rings. */
	.globl timer_isr
timer_isr:
	incq %gs:CPU_TICKS
	pushq %rax
	movl $(LAPIC_BASE + LAPIC_EOI), %eax
	movl %eax, (%rax)
	popq %rax
	iretq

	.globl spurious_isr
spurious_isr:
	iretq

/* Exceptions: a uniform frame (struct frame in kernel.c) for trap(). */
.macro EXC vec, has_err
	.balign 16
exc\vec:
	.if \has_err == 0
	pushq $0
	.endif
	pushq $\vec
	jmp isr_common
.endm

	.balign 16
exc_entries:
	EXC 0, 0
	EXC 1, 0
	EXC 2, 0
	EXC 3, 0
	EXC 4, 0
	EXC 5, 0
	EXC 6, 0
	EXC 7, 0
	EXC 8, 1
	EXC 9, 0
	EXC 10, 1
	EXC 11, 1
	EXC 12, 1
	EXC 13, 1
	EXC 14, 1
	EXC 15, 0
	EXC 16, 0
	EXC 17, 1
	EXC 18, 0
	EXC 19, 0
	EXC 20, 0
	EXC 21, 1
	EXC 22, 0
	EXC 23, 0
	EXC 24, 0
	EXC 25, 0
	EXC 26, 0
	EXC 27, 0
	EXC 28, 0
	EXC 29, 1
	EXC 30, 1
	EXC 31, 0

isr_common:
	pushq %rax
	pushq %rbx
	pushq %rcx
	pushq %rdx
	pushq %rsi
	pushq %rdi
	pushq %rbp
	pushq %r8
	pushq %r9
	pushq %r10
	pushq %r11
	pushq %r12
	pushq %r13
	pushq %r14
	pushq %r15
	movq %rsp, %rdi
	cld
	call trap
	popq %r15
	popq %r14
	popq %r13
	popq %r12
	popq %r11
	popq %r10
	popq %r9
	popq %r8
	popq %rbp
	popq %rdi
	popq %rsi
	popq %rdx
	popq %rcx
	popq %rbx
	popq %rax
	addq $16, %rsp
	iretq

/* Freestanding gcc may still emit calls to these. */
	.globl memset
memset:
	movq %rdi, %r9
	movl %esi, %eax
	movq %rdx, %rcx
	rep stosb
	movq %r9, %rax
	ret

	.globl memcpy
memcpy:
	movq %rdi, %rax
	movq %rdx, %rcx
	rep movsb
	ret

/*
 * AP start-up: copied to TRAMPOLINE_PA; the SIPI starts it in real mode at
 * CS = TRAMPOLINE_PA >> 4, IP = 0. It only loads the GDT and enters
 * protected mode; the rest is shared with the BSP (ap_entry32, to_long).
 */
	.section .rodata
	.code16
	.globl tramp_start, tramp_end
tramp_start:
	cli
	cld
	movw %cs, %ax
	movw %ax, %ds
	lgdtl (tramp_gdtr - tramp_start)
	movl %cr0, %eax
	orl $CR0_PE, %eax
	movl %eax, %cr0
	ljmpl $GDT_KCODE32, $ap_entry32
	.balign 4
tramp_gdtr:
	.word gdt_end - gdt - 1
	.long gdt
tramp_end:
	.code64

	.section .data
	.balign 16
	.globl gdt
gdt:
	.quad 0
	.quad 0x00cf9a000000ffff	/* GDT_KCODE32 */
	.quad 0x00af9a000000ffff	/* GDT_KCODE64 */
	.quad 0x00cf92000000ffff	/* GDT_KDATA */
	.quad 0x00cff2000000ffff	/* GDT_UDATA, DPL 3 */
	.quad 0x00affa000000ffff	/* GDT_UCODE, DPL 3, 64-bit */
	.fill MAX_CPUS * 2, 8, 0	/* TSS descriptors, set per CPU */
gdt_end:
	.balign 8
gdt_ptr:
	.word gdt_end - gdt - 1
	.quad gdt

	.globl isr_table
isr_table:
	.set i, 0
	.rept 32
	.quad exc_entries + i * 16
	.set i, i + 1
	.endr

	.globl ap_stack_top
ap_stack_top:
	.quad 0

/*
 * Identity map of the first 4 GiB with 2 MiB pages, user-accessible so that
 * ring 3 can use the data region, except the LAPIC page (ring 0, uncached).
 * kernel.c adds directories for RAM above 4 GiB.
 */
	.section .data.pagetables, "aw"
	.balign 4096
	.globl pml4, pdpt
pml4:
	.quad pdpt + (PTE_P | PTE_RW | PTE_US)
	.fill 511, 8, 0
pdpt:
	.quad pd_low + 0x0000 + (PTE_P | PTE_RW | PTE_US)
	.quad pd_low + 0x1000 + (PTE_P | PTE_RW | PTE_US)
	.quad pd_low + 0x2000 + (PTE_P | PTE_RW | PTE_US)
	.quad pd_low + 0x3000 + (PTE_P | PTE_RW | PTE_US)
	.fill 508, 8, 0
pd_low:
	.set i, 0
	.rept 2048
	.if i == (LAPIC_BASE >> 21)
	.quad (i << 21) | (PTE_P | PTE_RW | PTE_PWT | PTE_PCD | PTE_PS)
	.else
	.quad (i << 21) | (PTE_P | PTE_RW | PTE_US | PTE_PS)
	.endif
	.set i, i + 1
	.endr

	.section .note.GNU-stack, "", @progbits
