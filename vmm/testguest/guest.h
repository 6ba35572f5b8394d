/*
 * Test guest: definitions shared by the ring-0 kernel (entry.S, kernel.c,
 * cmdline.c) and the ring-3 workload (workload.c). Everything runs in one
 * identity-mapped address space; ring 3 may read (and write) any of it.
 */
#ifndef TESTGUEST_GUEST_H
#define TESTGUEST_GUEST_H

/* GDT selectors; the TSS descriptors (16 bytes each) follow GDT_TSS0. */
#define GDT_KCODE32 0x08
#define GDT_KCODE64 0x10
#define GDT_KDATA 0x18
#define GDT_UDATA 0x20
#define GDT_UCODE 0x28
#define GDT_TSS0 0x30

#define MAX_CPUS 64
#define KSTACK_SIZE 8192
#define DFSTACK_SIZE 4096
#define USTACK_SIZE 16384

#define TIMER_VECTOR 0x40
#define SPURIOUS_VECTOR 0xff
#define LAPIC_BASE 0xfee00000
#define LAPIC_EOI 0xb0

/* Real-mode AP start-up code; SIPI vector = TRAMPOLINE_PA >> 12. */
#define TRAMPOLINE_PA 0x8000

/*
 * The data region is RAM at and above 16 MiB, so a host can compute the
 * address of a data page from the memory map alone, whatever the size of
 * the image (the linker script asserts that the image ends below it).
 */
#define DATA_BASE 0x1000000

/* Page directories beyond the four static ones (first 4 GiB). */
#define MAX_HIGH_PDS 64

#define PORT_COM1 0x3f8
#define PORT_EXIT 0xf4

/* Ring-3 "system calls": rax = number, rdi = argument (see sys_trap). */
#define SYS_WRITE 1 /* rdi = NUL-terminated string */
#define SYS_EXIT 2  /* rdi = status, written to the exit port */
#define SYS_IDLE 3  /* wait for the next interrupt (timer tick) */

/* struct cpu offset of the tick counter: timer_isr does incq %gs:0. */
#define CPU_TICKS 0

#ifndef __ASSEMBLER__
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "stamp.h"

#define TICKS_PER_SEC 100
#define PAGE_SIZE 4096
#define MAX_REGIONS 32
#define RATE_MAX UINT64_MAX

/* Set by ring 0 from the command line before any CPU enters ring 3. */
struct params {
	uint64_t touch_pages; /* max(touch, wss) in pages */
	uint64_t wss_pages;
	uint64_t rate;        /* pages per second, all CPUs; RATE_MAX = max */
	uint64_t seed;
	uint32_t fill;        /* enum stamp_fill */
	uint32_t ncpus;
	uint32_t hb_ms;       /* 0 = no heartbeat */
	uint32_t duration_s;  /* 0 = run forever */
	uint32_t idle_halt;   /* when ahead of the rate: 1 = hlt, 0 = verify */
};

/* A run of consecutive data pages in guest-physical memory. */
struct region {
	uint64_t gpa;
	uint64_t first; /* data page number of the page at gpa */
	uint64_t pages;
};

/*
 * Per-CPU state. GS base points here in both rings. Each field after
 * `ticks` is written only by its own CPU; CPU 0 reads the counters for the
 * heartbeat (aligned 64-bit loads are atomic on x86).
 */
struct cpu {
	volatile uint64_t ticks; /* CPU_TICKS: incremented by timer_isr */
	uint32_t index;
	uint32_t apic_id;
	volatile uint32_t started; /* AP reached C code; BSP waits on it */
	uint32_t pad;
	/* This CPU's share: data pages [first, first + npages); the first
	 * nwss of them are rewritten continuously. */
	uint64_t first;
	uint64_t npages;
	uint64_t nwss;
	/* Page first + i holds generation pass + 1 if i < cursor, pass if
	 * cursor <= i < nwss, and 1 if i >= nwss. */
	volatile uint64_t pass;
	volatile uint64_t cursor;
	volatile uint64_t vcursor; /* next page to verify (sweep) */
	volatile uint64_t written;
	volatile uint64_t verified;
	volatile uint64_t mismatches;
} __attribute__((aligned(128)));

extern struct cpu cpus[MAX_CPUS];
extern struct params params;
extern struct region regions[MAX_REGIONS];
extern uint32_t nregions;
extern uint64_t data_pages;
extern uint64_t ram_bytes;
extern uint64_t tsc_per_ms; /* 0: unknown, ring 3 falls back to ticks */

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

/* entry.S */
extern char tramp_start[], tramp_end[];
extern uint64_t gdt[];
extern uint64_t pml4[], pdpt[];
extern char isr_table[]; /* addresses of the 32 exception entry points */
void timer_isr(void);
void spurious_isr(void);
void sys_trap(void);
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
__attribute__((noreturn)) void enter_user(uint64_t rip, uint64_t rsp,
					   uint64_t arg);

/* kernel.c */
void console_write(const char *s);
__attribute__((noreturn)) void guest_exit(uint32_t status);

/* cmdline.c: 0, or -1 with a message in err. */
int parse_cmdline(const char *cmdline, struct params *p, char *err,
		  size_t errlen);

/* fmt.c: vsnprintf subset (%s %c %d %u %x, l/ll/z, '0', width). */
int vfmt(char *buf, size_t size, const char *fmt, va_list ap);
__attribute__((format(printf, 3, 4))) int fmt(char *buf, size_t size,
					      const char *f, ...);

/* workload.c */
__attribute__((noreturn)) void user_main(struct cpu *me);

#endif /* __ASSEMBLER__ */
#endif
