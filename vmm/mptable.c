/*
 * An Intel MultiProcessor Specification 1.4 table, so that a guest without
 * ACPI (Linux with acpi=off) finds its CPUs and the IOAPIC, as Firecracker
 * and kvmtool boot Linux: a floating pointer and a configuration table at
 * the start of the EBDA (0x9fc00, reserved in the memory map, where Linux
 * looks: the last KiB of base memory), listing one processor per vCPU (LAPIC
 * id = vCPU index), an ISA bus, the in-kernel IOAPIC at 0xfec00000 (id =
 * vCPU count) with ISA IRQs 0-15 on its pins 0-15 (KVM's default routing),
 * and ExtINT / NMI on every LAPIC's LINT0 / LINT1.
 */
#include <errno.h>
#include <string.h>

#include "vm.h"

#define MPTABLE_ADDR 0x9fc00ull
/* The floating pointer must lie in the EBDA's first KiB, where Linux looks;
 * the configuration table after it may run on (220 bytes + 20 per vCPU:
 * 1500 for 64), still inside the reserved [0x9fc00, 1 MiB). */
#define MPTABLE_MAX 0x1000ull
#define APIC_DEFAULT_BASE 0xfee00000u
#define IOAPIC_DEFAULT_BASE 0xfec00000u
#define APIC_VERSION 0x14
#define IOAPIC_VERSION 0x11
#define ISA_IRQS 16

struct mpf_intel {
	char signature[4]; /* "_MP_" */
	uint32_t physptr;
	uint8_t length;    /* in 16-byte units: 1 */
	uint8_t specification;
	uint8_t checksum;
	uint8_t feature1;  /* 0: a configuration table follows */
	uint8_t feature2;
	uint8_t feature3, feature4, feature5;
} __attribute__((packed));

struct mpc_table {
	char signature[4]; /* "PCMP" */
	uint16_t length;
	uint8_t spec;
	uint8_t checksum;
	char oem[8];
	char productid[12];
	uint32_t oemptr;
	uint16_t oemsize;
	uint16_t oemcount; /* entries */
	uint32_t lapic;
	uint16_t reserved;
	uint8_t ext_checksum, reserved2;
} __attribute__((packed));

struct mpc_cpu {
	uint8_t type; /* 0 */
	uint8_t apicid, apicver, cpuflag;
	uint32_t cpufeature, featureflag;
	uint32_t reserved[2];
} __attribute__((packed));

struct mpc_bus {
	uint8_t type; /* 1 */
	uint8_t busid;
	char bustype[6];
} __attribute__((packed));

struct mpc_ioapic {
	uint8_t type; /* 2 */
	uint8_t apicid, apicver, flags;
	uint32_t apicaddr;
} __attribute__((packed));

struct mpc_intsrc { /* 3: I/O interrupt, 4: local interrupt */
	uint8_t type, irqtype;
	uint16_t irqflag;
	uint8_t srcbus, srcbusirq, dstapic, dstirq;
} __attribute__((packed));

#define CPU_ENABLED 1
#define CPU_BOOTPROCESSOR 2
#define MPC_APIC_USABLE 1
#define MP_INT 0
#define MP_NMI 1
#define MP_EXTINT 3

static uint8_t checksum(const void *p, size_t n)
{
	const uint8_t *b = p;
	uint8_t sum = 0;

	while (n--)
		sum += *b++;
	return (uint8_t)-sum;
}

int mptable_write(struct vm *vm, uint32_t ncpus, mig_error *err)
{
	size_t size = sizeof(struct mpf_intel) + sizeof(struct mpc_table) +
		      ncpus * sizeof(struct mpc_cpu) + sizeof(struct mpc_bus) +
		      sizeof(struct mpc_ioapic) +
		      (ISA_IRQS + 2) * sizeof(struct mpc_intsrc);
	uint8_t *base, *p;
	struct mpf_intel mpf;
	struct mpc_table mpc;
	uint8_t ioapic_id = (uint8_t)ncpus;
	uint16_t entries = 0;

	if (ncpus == 0 || ncpus > 254 || size > MPTABLE_MAX)
		return vmm_err(err, -E2BIG, "MP table: %u vCPUs do not fit "
			       "in %llu bytes", ncpus, MPTABLE_MAX);
	base = mem_gpa_to_hva(vm, MPTABLE_ADDR, size);
	if (!base)
		return vmm_err(err, -ENOSPC, "MP table: no guest RAM at 0x%llx",
			       MPTABLE_ADDR);
	memset(base, 0, size);
	p = base + sizeof(mpf) + sizeof(mpc);
	for (uint32_t i = 0; i < ncpus; i++, entries++) {
		struct mpc_cpu c = {
			.type = 0, .apicid = (uint8_t)i, .apicver = APIC_VERSION,
			.cpuflag = CPU_ENABLED | (i == 0 ? CPU_BOOTPROCESSOR : 0),
			.cpufeature = 0x600,          /* family 6 */
			.featureflag = 0x201,         /* FPU, APIC */
		};
		memcpy(p, &c, sizeof(c));
		p += sizeof(c);
	}
	{
		struct mpc_bus b = { .type = 1, .busid = 0 };
		memcpy(b.bustype, "ISA   ", 6);
		memcpy(p, &b, sizeof(b));
		p += sizeof(b);
		entries++;
	}
	{
		struct mpc_ioapic io = {
			.type = 2, .apicid = ioapic_id, .apicver = IOAPIC_VERSION,
			.flags = MPC_APIC_USABLE, .apicaddr = IOAPIC_DEFAULT_BASE,
		};
		memcpy(p, &io, sizeof(io));
		p += sizeof(io);
		entries++;
	}
	for (uint8_t irq = 0; irq < ISA_IRQS; irq++, entries++) {
		struct mpc_intsrc s = {
			.type = 3, .irqtype = MP_INT, .srcbus = 0,
			.srcbusirq = irq, .dstapic = ioapic_id, .dstirq = irq,
		};
		memcpy(p, &s, sizeof(s));
		p += sizeof(s);
	}
	{
		/* Every LAPIC (0xff): LINT0 ExtINT (the PIC), LINT1 NMI. */
		struct mpc_intsrc l0 = { .type = 4, .irqtype = MP_EXTINT,
					 .dstapic = 0xff, .dstirq = 0 };
		struct mpc_intsrc l1 = { .type = 4, .irqtype = MP_NMI,
					 .dstapic = 0xff, .dstirq = 1 };
		memcpy(p, &l0, sizeof(l0));
		p += sizeof(l0);
		memcpy(p, &l1, sizeof(l1));
		p += sizeof(l1);
		entries += 2;
	}
	memset(&mpc, 0, sizeof(mpc));
	memcpy(mpc.signature, "PCMP", 4);
	mpc.length = (uint16_t)(p - base - sizeof(mpf));
	mpc.spec = 4;
	memcpy(mpc.oem, "MIGVM   ", 8);
	memcpy(mpc.productid, "libmigrate  ", 12);
	mpc.oemcount = entries;
	mpc.lapic = APIC_DEFAULT_BASE;
	memcpy(base + sizeof(mpf), &mpc, sizeof(mpc));
	/* The checksum covers the header and every entry. */
	base[sizeof(mpf) + offsetof(struct mpc_table, checksum)] =
		checksum(base + sizeof(mpf), mpc.length);

	memset(&mpf, 0, sizeof(mpf));
	memcpy(mpf.signature, "_MP_", 4);
	mpf.physptr = (uint32_t)(MPTABLE_ADDR + sizeof(mpf));
	mpf.length = 1;
	mpf.specification = 4;
	mpf.checksum = checksum(&mpf, sizeof(mpf));
	memcpy(base, &mpf, sizeof(mpf));
	return 0;
}
