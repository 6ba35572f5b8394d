/*
 * Test guest, ring 0: boot-time set-up and the rare events (console output
 * for ring 3, exit, exceptions). On our PVM development KVM every ring-0
 * instruction is emulated at about a million per second, so the loops here
 * stay short and the steady work happens in ring 3 (workload.c).
 */
#include "guest.h"

#define MSR_APIC_BASE 0x1b
#define MSR_GS_BASE 0xc0000101
#define APIC_BASE_X2APIC (1u << 10)

#define LAPIC_ID 0x20
#define LAPIC_TPR 0x80
#define LAPIC_SVR 0xf0
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_LVT_LINT1 0x360
#define LAPIC_LVT_ERROR 0x370
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_CUR 0x390
#define LAPIC_TIMER_DIV 0x3e0
#define LVT_MASKED 0x10000
#define LVT_PERIODIC 0x20000
#define ICR_INIT 0x4500
#define ICR_STARTUP 0x4600
#define ICR_BUSY 0x1000

/* KVM's in-kernel LAPIC timer counts at 1 GHz; divide by 16 -> 62.5 MHz. */
#define TIMER_DIV_16 0x3
#define TIMER_HZ_AT_DIV16 62500000u

#define HVM_START_MAGIC 0x336ec578
#define E820_RAM 1
#define MAX_MEMMAP 128
#define TWO_MB (2ull << 20)
#define ONE_GB (1ull << 30)
#define FOUR_GB (4ull << 30)

struct hvm_start_info {
	uint32_t magic;
	uint32_t version;
	uint32_t flags;
	uint32_t nr_modules;
	uint64_t modlist_paddr;
	uint64_t cmdline_paddr;
	uint64_t rsdp_paddr;
	uint64_t memmap_paddr;
	uint32_t memmap_entries;
	uint32_t reserved;
};

struct hvm_memmap_table_entry {
	uint64_t addr;
	uint64_t size;
	uint32_t type;
	uint32_t reserved;
};

/* Pushed by isr_common in entry.S, lowest address first. */
struct frame {
	uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
	uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
	uint64_t vec, err;
	uint64_t rip, cs, rflags, rsp, ss;
};

struct tss {
	uint32_t reserved0;
	uint64_t rsp[3];
	uint64_t reserved1;
	uint64_t ist[7];
	uint64_t reserved2;
	uint16_t reserved3;
	uint16_t iomap_base;
} __attribute__((packed));

struct idt_entry {
	uint16_t off_lo;
	uint16_t sel;
	uint8_t ist;
	uint8_t type;
	uint16_t off_mid;
	uint32_t off_hi;
	uint32_t reserved;
};

struct cpu cpus[MAX_CPUS];
struct params params;
struct region regions[MAX_REGIONS];
uint32_t nregions;
uint64_t data_pages;
uint64_t ram_bytes;
uint64_t tsc_per_ms;

/* Not cleared at boot (see entry.S): nothing here is assumed to be zero. */
#define NOINIT __attribute__((section(".bss.noinit"), aligned(4096)))
NOINIT uint8_t kstacks[MAX_CPUS][KSTACK_SIZE];
NOINIT static uint8_t dfstacks[MAX_CPUS][DFSTACK_SIZE];
NOINIT static uint8_t ustacks[MAX_CPUS][USTACK_SIZE];
NOINIT static uint64_t high_pds[MAX_HIGH_PDS][512];

static struct tss tss[MAX_CPUS] __attribute__((aligned(128)));
static struct idt_entry idt[256] __attribute__((aligned(16)));
static char cmdline[1024];
static struct hvm_memmap_table_entry memmap[MAX_MEMMAP];
static uint32_t nmemmap;
static volatile uint32_t console_lock;
static volatile uint32_t ap_cpu; /* index of the AP being started */
extern uint64_t ap_stack_top;    /* entry.S: read by the AP in 32-bit mode */

void bsp_main(uint32_t start_info);
void ap_main(void);
void trap(struct frame *f);

static inline void outb(uint16_t port, uint8_t v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline void outl(uint16_t port, uint32_t v)
{
	__asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
	uint8_t v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline uint64_t rdmsr(uint32_t msr)
{
	uint32_t lo, hi;
	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
	return ((uint64_t)hi << 32) | lo;
}

static inline void wrmsr(uint32_t msr, uint64_t v)
{
	__asm__ volatile("wrmsr"
			 :
			 : "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)));
}

static inline uint32_t lapic_read(uint32_t reg)
{
	return *(volatile uint32_t *)(uintptr_t)(LAPIC_BASE + reg);
}

static inline void lapic_write(uint32_t reg, uint32_t v)
{
	*(volatile uint32_t *)(uintptr_t)(LAPIC_BASE + reg) = v;
}

static uint32_t uart_burst = 1; /* bytes per THRE poll: FIFO depth */

static void uart_init(void)
{
	outb(PORT_COM1 + 1, 0x00); /* no interrupts: the console is polled */
	outb(PORT_COM1 + 3, 0x80);
	outb(PORT_COM1 + 0, 0x01); /* 115200 baud */
	outb(PORT_COM1 + 1, 0x00);
	outb(PORT_COM1 + 3, 0x03); /* 8N1 */
	outb(PORT_COM1 + 2, 0x07); /* enable and clear the FIFOs */
	outb(PORT_COM1 + 4, 0x03);
	/* Each port access is a VM exit, so with a 16-byte FIFO (IIR bits
	 * 7:6 set) the transmitter is polled once per 16 bytes, not per
	 * byte. A 16450 (no FIFO) or missing UART gets one byte per poll. */
	if ((inb(PORT_COM1 + 2) & 0xc0) == 0xc0)
		uart_burst = 16;
}

/* Writes at most uart_burst bytes of s; returns how many. */
static size_t uart_write_burst(const char *s, size_t n)
{
	size_t i;

	/* A missing UART reads 0xff (THRE set), so this cannot hang. */
	while (!(inb(PORT_COM1 + 5) & 0x20))
		__asm__ volatile("pause");
	for (i = 0; i < n && i < uart_burst; i++)
		outb(PORT_COM1, (uint8_t)s[i]);
	return i;
}

/* Bounded so that an exception taken while the lock is held still gets its
 * report out instead of hanging. */
static void console_lock_acquire(void)
{
	for (uint32_t i = 0; i < 1000000; i++) {
		if (__atomic_exchange_n(&console_lock, 1, __ATOMIC_ACQUIRE) == 0)
			return;
		__asm__ volatile("pause");
	}
}

static void console_lock_release(void)
{
	__atomic_store_n(&console_lock, 0, __ATOMIC_RELEASE);
}

void console_write(const char *s)
{
	size_t n = 0;

	while (n < 4096 && s[n])
		n++;
	console_lock_acquire();
	for (size_t i = 0; i < n;)
		i += uart_write_burst(s + i, n - i);
	console_lock_release();
}

__attribute__((format(printf, 1, 2))) static void kprintf(const char *f, ...)
{
	char buf[256];
	va_list ap;

	va_start(ap, f);
	vfmt(buf, sizeof(buf), f, ap);
	va_end(ap);
	console_write(buf);
}

__attribute__((noreturn)) static void halt_forever(void)
{
	for (;;)
		__asm__ volatile("cli; hlt");
}

__attribute__((noreturn)) void guest_exit(uint32_t status)
{
	outl(PORT_EXIT, status);
	kprintf("testguest: exit port 0x%x did not stop the VM (status %u)\n",
		PORT_EXIT, status);
	halt_forever();
}

static uint32_t this_cpu(void)
{
	uint32_t idx;
	__asm__ volatile("movl %%gs:%c1, %0"
			 : "=r"(idx)
			 : "i"(offsetof(struct cpu, index)));
	return idx;
}

static void syscall(struct frame *f)
{
	switch (f->rax) {
	case SYS_WRITE:
		console_write((const char *)(uintptr_t)f->rdi);
		f->rax = 0;
		break;
	case SYS_EXIT:
		guest_exit((uint32_t)f->rdi);
	case SYS_IDLE:
		/* The tick arrives on this (ring-0) stack; timer_isr only
		 * needs GS, which is the same in both rings. */
		__asm__ volatile("sti; hlt; cli" ::: "memory");
		f->rax = 0;
		break;
	default:
		f->rax = (uint64_t)-1;
		break;
	}
}

void trap(struct frame *f)
{
	if (f->vec == 6 && f->rip == (uintptr_t)sys_trap && (f->cs & 3) == 3) {
		syscall(f);
		f->rip += 2; /* past the ud2, to the ret */
		return;
	}
	if (f->vec == 14) {
		uint64_t cr2;
		__asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
		kprintf("EXCEPTION vec=%lu rip=0x%lx err=0x%lx cpu=%u cr2=0x%lx\n",
			f->vec, f->rip, f->err, this_cpu(), cr2);
	} else {
		kprintf("EXCEPTION vec=%lu rip=0x%lx err=0x%lx cpu=%u\n", f->vec,
			f->rip, f->err, this_cpu());
	}
	halt_forever();
}

static void set_gate(unsigned vec, uintptr_t handler, uint8_t ist)
{
	idt[vec] = (struct idt_entry){
		.off_lo = (uint16_t)handler,
		.sel = GDT_KCODE64,
		.ist = ist,
		.type = 0x8e, /* interrupt gate: handlers run with IF = 0 */
		.off_mid = (uint16_t)(handler >> 16),
		.off_hi = (uint32_t)(handler >> 32),
	};
}

static void idt_build(void)
{
	const uint64_t *entries = (const uint64_t *)isr_table;

	for (unsigned v = 0; v < 32; v++)
		set_gate(v, entries[v], v == 8 ? 1 : 0); /* #DF on its own stack */
	set_gate(TIMER_VECTOR, (uintptr_t)timer_isr, 0);
	set_gate(SPURIOUS_VECTOR, (uintptr_t)spurious_isr, 0);
}

/* Per-CPU descriptor tables and GS base; runs on every CPU. */
static void cpu_setup(uint32_t k)
{
	struct {
		uint16_t limit;
		uint64_t base;
	} __attribute__((packed)) idtr = {sizeof(idt) - 1, (uintptr_t)idt};
	struct tss *t = &tss[k];
	uint64_t base = (uintptr_t)t, limit = sizeof(*t) - 1;
	uint16_t sel = (uint16_t)(GDT_TSS0 + 16 * k);

	t->rsp[0] = (uintptr_t)kstacks[k] + KSTACK_SIZE;
	t->ist[0] = (uintptr_t)dfstacks[k] + DFSTACK_SIZE;
	t->iomap_base = sizeof(*t); /* no I/O bitmap: ring 3 has no ports */
	gdt[sel / 8] = (limit & 0xffff) | ((base & 0xffffff) << 16) |
		       (0x89ull << 40) | (((limit >> 16) & 0xf) << 48) |
		       (((base >> 24) & 0xff) << 56);
	gdt[sel / 8 + 1] = base >> 32;
	__asm__ volatile("lidt %0" : : "m"(idtr));
	__asm__ volatile("ltr %0" : : "r"(sel));
	cpus[k].index = k;
	wrmsr(MSR_GS_BASE, (uintptr_t)&cpus[k]);
}

static void lapic_init(void)
{
	lapic_write(LAPIC_TPR, 0);
	lapic_write(LAPIC_SVR, 0x100 | SPURIOUS_VECTOR);
	/* LINT0 is ExtINT on the BSP after reset: legacy PIC interrupts
	 * would arrive on exception vectors. */
	lapic_write(LAPIC_LVT_LINT0, LVT_MASKED);
	lapic_write(LAPIC_LVT_LINT1, LVT_MASKED);
	lapic_write(LAPIC_LVT_ERROR, LVT_MASKED);
}

static void timer_start(void)
{
	lapic_write(LAPIC_TIMER_DIV, TIMER_DIV_16);
	lapic_write(LAPIC_LVT_TIMER, LVT_PERIODIC | TIMER_VECTOR);
	lapic_write(LAPIC_TIMER_INIT, TIMER_HZ_AT_DIV16 / TICKS_PER_SEC);
}

/* Before the periodic timer runs, the BSP measures time with a masked
 * one-shot countdown (16 ns per count, ~68 s range). */
static void clock_start(void)
{
	lapic_write(LAPIC_TIMER_DIV, TIMER_DIV_16);
	lapic_write(LAPIC_LVT_TIMER, LVT_MASKED);
	lapic_write(LAPIC_TIMER_INIT, 0xffffffff);
}

static uint64_t clock_us(void)
{
	return (0xffffffffull - lapic_read(LAPIC_TIMER_CUR)) * 16 / 1000;
}

static void delay_us(uint64_t us)
{
	uint64_t end = clock_us() + us;
	while (clock_us() < end)
		__asm__ volatile("pause");
}

/*
 * Ring 3 keeps time with the TSC: timer ticks are coalesced when a vCPU is
 * not scheduled for a while (seen as a few % lost on a loaded 2-CPU host),
 * which would skew the rate and the heartbeat. The LAPIC count register is
 * computed from host time, so 50 ms of it calibrates the TSC to ~1e-4.
 * 0 = could not calibrate (the LAPIC timer does not count).
 */
static uint64_t calibrate_tsc(void)
{
	const uint32_t span = TIMER_HZ_AT_DIV16 / 20;
	uint32_t c0 = lapic_read(LAPIC_TIMER_CUR), c1;
	uint64_t t0 = rdtsc(), t1;

	for (uint32_t i = 0; i < 10000000; i++) {
		c1 = lapic_read(LAPIC_TIMER_CUR);
		t1 = rdtsc();
		if (c0 - c1 >= span)
			return (t1 - t0) * (TIMER_HZ_AT_DIV16 / 1000) / (c0 - c1);
	}
	return 0;
}

static void send_ipi(uint32_t apic_id, uint32_t icr)
{
	lapic_write(LAPIC_ICR_HI, apic_id << 24);
	lapic_write(LAPIC_ICR_LO, icr);
	for (int i = 0; i < 1000 && (lapic_read(LAPIC_ICR_LO) & ICR_BUSY); i++)
		__asm__ volatile("pause");
}

/* INIT-SIPI-SIPI, one AP at a time: they share ap_stack_top and ap_cpu. */
static int start_ap(uint32_t k, uint32_t apic_id)
{
	cpus[k].apic_id = apic_id;
	ap_cpu = k;
	ap_stack_top = (uintptr_t)kstacks[k] + KSTACK_SIZE;
	__atomic_thread_fence(__ATOMIC_SEQ_CST);

	send_ipi(apic_id, ICR_INIT);
	delay_us(10000);
	send_ipi(apic_id, ICR_STARTUP | (TRAMPOLINE_PA >> 12));
	delay_us(200);
	if (!cpus[k].started)
		send_ipi(apic_id, ICR_STARTUP | (TRAMPOLINE_PA >> 12));
	uint64_t end = clock_us() + 1000000;
	while (!cpus[k].started && clock_us() < end)
		__asm__ volatile("pause");
	return cpus[k].started ? 0 : -1;
}

__attribute__((noreturn)) static void to_ring3(uint32_t k)
{
	/* - 8: user_main starts as if called (rsp + 8 is 16-aligned). */
	enter_user((uintptr_t)user_main,
		   (uintptr_t)ustacks[k] + USTACK_SIZE - 8, (uintptr_t)&cpus[k]);
}

void ap_main(void)
{
	uint32_t k = ap_cpu;

	cpu_setup(k);
	lapic_init();
	timer_start();
	__atomic_store_n(&cpus[k].started, 1, __ATOMIC_RELEASE);
	to_ring3(k);
}

static void copy_boot_info(const struct hvm_start_info *si)
{
	const char *cl = (const char *)(uintptr_t)si->cmdline_paddr;
	const struct hvm_memmap_table_entry *mm =
		(const void *)(uintptr_t)si->memmap_paddr;
	size_t i;

	for (i = 0; si->cmdline_paddr && cl[i] && i < sizeof(cmdline) - 1; i++)
		cmdline[i] = cl[i];
	cmdline[i] = 0;
	if (si->version >= 1 && si->memmap_paddr) {
		nmemmap = si->memmap_entries < MAX_MEMMAP ? si->memmap_entries
							  : MAX_MEMMAP;
		for (i = 0; i < nmemmap; i++)
			memmap[i] = mm[i];
	}
}

/* Adds 2 MiB identity mappings for RAM above 4 GiB (the first 4 GiB are
 * static, see entry.S). Returns the end of what could be mapped. */
static uint64_t map_high_ram(void)
{
	uint64_t limit = FOUR_GB + (uint64_t)MAX_HIGH_PDS * ONE_GB;
	uint32_t used = 0;

	for (uint32_t i = 0; i < nmemmap; i++) {
		uint64_t a = memmap[i].addr & ~(TWO_MB - 1);
		uint64_t end = memmap[i].addr + memmap[i].size;

		if (memmap[i].type != E820_RAM)
			continue;
		if (a < FOUR_GB)
			a = FOUR_GB;
		if (end > limit)
			end = limit;
		for (; a < end; a += TWO_MB) {
			uint64_t *pde = &pdpt[a >> 30];
			if (!*pde) {
				uint64_t *pd = high_pds[used++];
				memset(pd, 0, PAGE_SIZE);
				*pde = (uintptr_t)pd | 0x7; /* P RW US */
			}
			uint64_t *pd = (uint64_t *)(uintptr_t)(*pde & ~0xfffull);
			pd[(a >> 21) & 511] = a | 0x87; /* P RW US PS */
		}
	}
	__asm__ volatile("mov %%cr3, %%rax; mov %%rax, %%cr3" ::: "rax", "memory");
	return limit;
}

/* The data region: RAM at and above DATA_BASE, in address order. */
static void build_regions(uint64_t map_limit)
{
	/* Insertion sort: loaders normally hand a sorted map, but it is
	 * not promised. */
	for (uint32_t i = 1; i < nmemmap; i++) {
		struct hvm_memmap_table_entry e = memmap[i];
		uint32_t j = i;
		for (; j > 0 && memmap[j - 1].addr > e.addr; j--)
			memmap[j] = memmap[j - 1];
		memmap[j] = e;
	}
	for (uint32_t i = 0; i < nmemmap; i++) {
		uint64_t a = memmap[i].addr, end = a + memmap[i].size;

		if (memmap[i].type != E820_RAM)
			continue;
		ram_bytes += memmap[i].size;
		if (a < DATA_BASE)
			a = DATA_BASE;
		if (end > map_limit)
			end = map_limit;
		a = (a + PAGE_SIZE - 1) & ~(uint64_t)(PAGE_SIZE - 1);
		end &= ~(uint64_t)(PAGE_SIZE - 1);
		if (end <= a)
			continue;
		struct region *prev = nregions ? &regions[nregions - 1] : NULL;
		if (prev && prev->gpa + prev->pages * PAGE_SIZE == a) {
			prev->pages += (end - a) / PAGE_SIZE;
		} else if (nregions < MAX_REGIONS) {
			regions[nregions++] = (struct region){
				.gpa = a, .first = data_pages,
				.pages = (end - a) / PAGE_SIZE};
		} else {
			break;
		}
		data_pages += (end - a) / PAGE_SIZE;
	}
}

void bsp_main(uint32_t start_info)
{
	const struct hvm_start_info *si =
		(const void *)(uintptr_t)start_info;
	char err[160];

	uart_init();
	/* Mask the legacy PICs; the LAPIC timer is the only interrupt. */
	outb(0x21, 0xff);
	outb(0xa1, 0xff);
	idt_build();
	cpu_setup(0);
	if (si->magic != HVM_START_MAGIC) {
		kprintf("testguest: bad PVH start info magic 0x%x at 0x%x\n",
			si->magic, start_info);
		guest_exit(3);
	}
	copy_boot_info(si);
	if (!nmemmap) {
		kprintf("testguest: no memory map in PVH start info (version %u)\n",
			si->version);
		guest_exit(3);
	}
	if (rdmsr(MSR_APIC_BASE) & APIC_BASE_X2APIC) {
		kprintf("testguest: LAPIC is in x2APIC mode, xAPIC needed\n");
		guest_exit(3);
	}
	build_regions(map_high_ram());

	if (parse_cmdline(cmdline, &params, err, sizeof(err)) < 0) {
		kprintf("BADARG %s\n", err);
		guest_exit(2);
	}
	if (params.touch_pages > data_pages) {
		kprintf("testguest: not enough RAM: touch=%luM needs %lu data "
			"pages, RAM above %uM has %lu (%luM)\n",
			params.touch_pages / 256, params.touch_pages,
			DATA_BASE >> 20, data_pages, data_pages / 256);
		guest_exit(3);
	}

	lapic_init();
	cpus[0].apic_id = lapic_read(LAPIC_ID) >> 24;
	clock_start();
	tsc_per_ms = calibrate_tsc();
	if (params.ncpus > 1) {
		memcpy((void *)TRAMPOLINE_PA, tramp_start,
		       (size_t)(tramp_end - tramp_start));
		/* APIC ids are assumed to be 0..N-1, as QEMU and migvm
		 * assign them; the BSP's own id is skipped. */
		uint32_t id = 0;
		for (uint32_t k = 1; k < params.ncpus; k++, id++) {
			if (id == cpus[0].apic_id)
				id++;
			if (start_ap(k, id) < 0) {
				kprintf("testguest: cpu %u (apic id %u) did not "
					"start; does the VM have cpus=%u vCPUs?\n",
					k, id, params.ncpus);
				guest_exit(4);
			}
		}
	}
	cpus[0].started = 1;
	timer_start();
	to_ring3(0);
}
