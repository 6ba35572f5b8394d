/*
 * ACPI for Linux guests: the tables that describe the machine (RSDP, XSDT,
 * FADT, FACS, DSDT, MADT) and the PM1 registers through which a guest
 * powers the machine off (S5), as QEMU's PIIX4 PM does. A full ACPI FADT,
 * not a hardware-reduced one: the guest keeps the legacy PIC, PIT and ISA
 * IRQs it uses without ACPI (acpi=off, the MP table), so turning ACPI on
 * changes how it finds its CPUs and how it ends, nothing else.
 *
 *   RSDP  at 0xe0000, in the BIOS area Linux scans (and given in PVH's
 *         start_info and the bzImage's boot_params), reserved in the
 *         memory map; the tables follow it
 *   FADT  SCI on IRQ 9 (never raised: no fixed or GPE events), always in
 *         ACPI mode (SMI_CMD 0), PM1a event block at 0x600 (status,
 *         enable), PM1a control at 0x604, no PM timer; no 8042, VGA or
 *         CMOS RTC; the reset register is 0xcf9 (value 6), as QEMU's
 *   DSDT  \_S5_ (SLP_TYP 5) and nothing else
 *   MADT  one enabled LAPIC per vCPU (id = index), the IOAPIC at
 *         0xfec00000 (id = vCPU count, GSI base 0: ISA IRQs on pins
 *         0-15 as KVM routes them), SCI IRQ 9 level/high, NMI on LINT1
 *
 * Writing SLP_TYP 5 with SLP_EN to PM1a control powers the VM off;
 * 0xcf9 with bit 2 resets it (both end migvm, see cpu.c). The PM1 enable
 * and control registers travel in the "acpi.pm" state item.
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "control.pb-c.h"
#include "vm.h"

#define ACPI_OEM_ID "MIGVM "       /* 6 bytes */
#define ACPI_OEM_TABLE_ID "MIGVM   " /* 8 bytes */
#define ACPI_CREATOR_ID "MIGV"
#define APIC_DEFAULT_BASE 0xfee00000u
#define IOAPIC_DEFAULT_BASE 0xfec00000u
#define SCI_IRQ 9

/* FADT flags (ACPI 6.4, table 5.10) */
#define FADT_WBINVD (1u << 0)
#define FADT_PROC_C1 (1u << 2)
#define FADT_PWR_BUTTON (1u << 4) /* no fixed power button */
#define FADT_SLP_BUTTON (1u << 5) /* no fixed sleep button */
#define FADT_FIX_RTC (1u << 6)    /* no RTC wake status */
#define FADT_RESET_REG_SUP (1u << 10)
/* IA-PC boot architecture flags */
#define BOOT_LEGACY_DEVICES (1u << 0) /* COM1 on the ISA bus */
#define BOOT_VGA_NOT_PRESENT (1u << 2)
#define BOOT_CMOS_RTC_NOT_PRESENT (1u << 5)
/* Generic address structure: address spaces, access sizes */
#define GAS_SYSTEM_IO 1
#define GAS_BYTE 1

/* PM1 control (ACPI 6.4, table 4.13) */
#define PM1_SCI_EN 0x0001
#define PM1_SLP_TYP_SHIFT 10
#define PM1_SLP_TYP_MASK (7u << PM1_SLP_TYP_SHIFT)
#define PM1_SLP_EN 0x2000
/* Bits the guest can read back: BM_RLD and SLP_TYP (SCI_EN is fixed,
 * GBL_RLS and SLP_EN are write-only). */
#define PM1_CNT_RW (0x0002 | PM1_SLP_TYP_MASK)

#define RESET_CPU 0x04 /* 0xcf9 bit 2: reset the CPU */

struct acpi_header {
	char signature[4];
	uint32_t length;
	uint8_t revision;
	uint8_t checksum;
	char oem_id[6];
	char oem_table_id[8];
	uint32_t oem_revision;
	char creator_id[4];
	uint32_t creator_revision;
} __attribute__((packed));

struct acpi_rsdp {
	char signature[8]; /* "RSD PTR " */
	uint8_t checksum;  /* of the first 20 bytes */
	char oem_id[6];
	uint8_t revision;  /* 2: XSDT */
	uint32_t rsdt_address;
	uint32_t length;
	uint64_t xsdt_address;
	uint8_t ext_checksum; /* of all 36 bytes */
	uint8_t reserved[3];
} __attribute__((packed));

struct acpi_gas {
	uint8_t space_id, bit_width, bit_offset, access_size;
	uint64_t address;
} __attribute__((packed));

struct acpi_fadt { /* revision 6 */
	struct acpi_header h;
	uint32_t firmware_ctrl, dsdt;
	uint8_t reserved0, preferred_pm_profile;
	uint16_t sci_int;
	uint32_t smi_cmd;
	uint8_t acpi_enable, acpi_disable, s4bios_req, pstate_cnt;
	uint32_t pm1a_evt_blk, pm1b_evt_blk, pm1a_cnt_blk, pm1b_cnt_blk;
	uint32_t pm2_cnt_blk, pm_tmr_blk, gpe0_blk, gpe1_blk;
	uint8_t pm1_evt_len, pm1_cnt_len, pm2_cnt_len, pm_tmr_len;
	uint8_t gpe0_blk_len, gpe1_blk_len, gpe1_base, cst_cnt;
	uint16_t p_lvl2_lat, p_lvl3_lat, flush_size, flush_stride;
	uint8_t duty_offset, duty_width, day_alrm, mon_alrm, century;
	uint16_t iapc_boot_arch;
	uint8_t reserved1;
	uint32_t flags;
	struct acpi_gas reset_reg;
	uint8_t reset_value;
	uint16_t arm_boot_arch;
	uint8_t minor_version;
	uint64_t x_firmware_ctrl, x_dsdt;
	struct acpi_gas x_pm1a_evt_blk, x_pm1b_evt_blk, x_pm1a_cnt_blk;
	struct acpi_gas x_pm1b_cnt_blk, x_pm2_cnt_blk, x_pm_tmr_blk;
	struct acpi_gas x_gpe0_blk, x_gpe1_blk;
	struct acpi_gas sleep_control_reg, sleep_status_reg;
	uint64_t hypervisor_vendor_id;
} __attribute__((packed));

struct acpi_facs {
	char signature[4];
	uint32_t length;
	uint32_t hardware_signature;
	uint32_t firmware_waking_vector;
	uint32_t global_lock;
	uint32_t flags;
	uint64_t x_firmware_waking_vector;
	uint8_t version;
	uint8_t reserved[3];
	uint32_t ospm_flags;
	uint8_t reserved2[24];
} __attribute__((packed));

struct madt_lapic {
	uint8_t type, length, processor_uid, apic_id;
	uint32_t flags;
} __attribute__((packed));

struct madt_ioapic {
	uint8_t type, length, id, reserved;
	uint32_t address, gsi_base;
} __attribute__((packed));

struct madt_iso {
	uint8_t type, length, bus, source;
	uint32_t gsi;
	uint16_t flags;
} __attribute__((packed));

struct madt_lapic_nmi {
	uint8_t type, length, processor_uid;
	uint16_t flags;
	uint8_t lint;
} __attribute__((packed));

_Static_assert(sizeof(struct acpi_header) == 36, "ACPI table header");
_Static_assert(sizeof(struct acpi_rsdp) == 36, "RSDP");
_Static_assert(sizeof(struct acpi_fadt) == 276, "FADT revision 6");
_Static_assert(sizeof(struct acpi_facs) == 64, "FACS");
_Static_assert(offsetof(struct acpi_fadt, reset_reg) == 116, "FADT");
_Static_assert(offsetof(struct acpi_fadt, x_dsdt) == 140, "FADT");
_Static_assert(offsetof(struct acpi_fadt, sleep_control_reg) == 244, "FADT");

/*
 * The DSDT's AML: Name (\_S5, Package (4) { 5, 5, 0, 0 }), the sleep type
 * values that PM1 control takes for S5 (SLP_TYPa, SLP_TYPb, reserved).
 */
static const uint8_t dsdt_aml[] = {
	0x08, '\\', '_', 'S', '5', '_', /* NameOp, \_S5_ */
	0x12, 0x08, 0x04,               /* PackageOp, PkgLength 8, 4 elements */
	0x0a, ACPI_SLP_TYP_S5,          /* BytePrefix 5 */
	0x0a, ACPI_SLP_TYP_S5,
	0x00, 0x00,                     /* ZeroOp, ZeroOp */
};

uint8_t acpi_checksum(const void *p, size_t n)
{
	const uint8_t *b = p;
	uint8_t sum = 0;

	while (n--)
		sum = (uint8_t)(sum + *b++);
	return (uint8_t)(0u - sum);
}

/* A bump allocator over the tables' buffer. */
struct acpi_buf {
	uint8_t *p;
	size_t size, used;
	uint64_t base; /* guest-physical address of p[0] */
};

/* `len` bytes aligned to `align` (a power of two), zeroed; NULL when they
 * do not fit. *gpa gets their guest-physical address. */
static void *take(struct acpi_buf *b, size_t len, size_t align, uint64_t *gpa)
{
	size_t at = (b->used + align - 1) & ~(align - 1);

	if (at > b->size || len > b->size - at)
		return NULL;
	b->used = at + len;
	*gpa = b->base + at;
	memset(b->p + at, 0, len);
	return b->p + at;
}

static void header(struct acpi_header *h, const char *sig, uint32_t len,
		   uint8_t rev)
{
	memcpy(h->signature, sig, 4);
	h->length = len;
	h->revision = rev;
	memcpy(h->oem_id, ACPI_OEM_ID, 6);
	memcpy(h->oem_table_id, ACPI_OEM_TABLE_ID, 8);
	h->oem_revision = 1;
	memcpy(h->creator_id, ACPI_CREATOR_ID, 4);
	h->creator_revision = 1;
}

static void seal(struct acpi_header *h)
{
	h->checksum = 0;
	h->checksum = acpi_checksum(h, h->length);
}

static struct acpi_gas io_gas(uint16_t port, uint8_t bits)
{
	return (struct acpi_gas){ .space_id = GAS_SYSTEM_IO,
				  .bit_width = bits, .address = port };
}

static void fill_fadt(struct acpi_fadt *f, uint64_t facs, uint64_t dsdt)
{
	header(&f->h, "FACP", sizeof(*f), 6);
	/* The FACS only in the 64-bit field (the spec wants the other 0 then;
	 * Linux would install it twice), the DSDT in both. */
	f->dsdt = (uint32_t)dsdt;
	f->x_firmware_ctrl = facs;
	f->x_dsdt = dsdt;
	f->sci_int = SCI_IRQ;
	f->pm1a_evt_blk = ACPI_PM1_EVT_PORT;
	f->pm1a_cnt_blk = ACPI_PM1_CNT_PORT;
	f->pm1_evt_len = 4;
	f->pm1_cnt_len = 2;
	f->x_pm1a_evt_blk = io_gas(ACPI_PM1_EVT_PORT, 32);
	f->x_pm1a_cnt_blk = io_gas(ACPI_PM1_CNT_PORT, 16);
	f->p_lvl2_lat = 0x0fff; /* > 100: no C2 */
	f->p_lvl3_lat = 0x0fff; /* > 1000: no C3 */
	f->iapc_boot_arch = BOOT_LEGACY_DEVICES | BOOT_VGA_NOT_PRESENT |
			    BOOT_CMOS_RTC_NOT_PRESENT;
	f->flags = FADT_WBINVD | FADT_PROC_C1 | FADT_PWR_BUTTON |
		   FADT_SLP_BUTTON | FADT_FIX_RTC | FADT_RESET_REG_SUP;
	f->reset_reg = io_gas(ACPI_RESET_PORT, 8);
	f->reset_reg.access_size = GAS_BYTE;
	f->reset_value = ACPI_RESET_VALUE;
	memcpy(&f->hypervisor_vendor_id, "MIGVM\0\0\0", 8);
	seal(&f->h);
}

static int fill_madt(struct acpi_buf *b, uint32_t ncpus, uint64_t *gpa)
{
	size_t len = sizeof(struct acpi_header) + 8 +
		     ncpus * sizeof(struct madt_lapic) +
		     sizeof(struct madt_ioapic) + sizeof(struct madt_iso) +
		     sizeof(struct madt_lapic_nmi);
	struct acpi_header *h = take(b, len, 16, gpa);
	uint8_t *p;
	uint32_t lapic = APIC_DEFAULT_BASE, flags = 1; /* PCAT_COMPAT */

	if (!h)
		return -1;
	header(h, "APIC", (uint32_t)len, 5);
	p = (uint8_t *)(h + 1);
	memcpy(p, &lapic, 4);
	memcpy(p + 4, &flags, 4);
	p += 8;
	for (uint32_t i = 0; i < ncpus; i++) {
		struct madt_lapic e = { 0, sizeof(e), (uint8_t)i, (uint8_t)i,
					1 /* enabled */ };
		memcpy(p, &e, sizeof(e));
		p += sizeof(e);
	}
	struct madt_ioapic io = { 1, sizeof(io), (uint8_t)ncpus, 0,
				  IOAPIC_DEFAULT_BASE, 0 };
	memcpy(p, &io, sizeof(io));
	p += sizeof(io);
	/* The SCI as ACPI wants it, level-triggered (active high: KVM's
	 * IOAPIC takes the logical level). */
	struct madt_iso iso = { 2, sizeof(iso), 0, SCI_IRQ, SCI_IRQ,
				0x0001 | 0x000c };
	memcpy(p, &iso, sizeof(iso));
	p += sizeof(iso);
	struct madt_lapic_nmi nmi = { 4, sizeof(nmi), 0xff /* all */, 0, 1 };
	memcpy(p, &nmi, sizeof(nmi));
	seal(h);
	return 0;
}

int acpi_build(uint8_t *buf, size_t size, uint64_t base, uint32_t ncpus,
	       size_t *used, mig_error *err)
{
	struct acpi_buf b = { buf, size, 0, base };
	struct acpi_rsdp *rsdp;
	struct acpi_header *xsdt, *dsdt;
	struct acpi_fadt *fadt;
	struct acpi_facs *facs;
	uint64_t rsdp_gpa, xsdt_gpa, fadt_gpa, facs_gpa, dsdt_gpa, madt_gpa;
	uint32_t xsdt_len = sizeof(*xsdt) + 2 * 8;

	if (ncpus == 0 || ncpus > VM_MAX_VCPUS)
		return vmm_err(err, -EINVAL, "ACPI tables: %u vCPUs, 1 to %d",
			       ncpus, VM_MAX_VCPUS);
	memset(buf, 0, size);
	if (!(rsdp = take(&b, sizeof(*rsdp), 16, &rsdp_gpa)) ||
	    !(xsdt = take(&b, xsdt_len, 16, &xsdt_gpa)) ||
	    !(fadt = take(&b, sizeof(*fadt), 16, &fadt_gpa)) ||
	    !(facs = take(&b, sizeof(*facs), 64, &facs_gpa)) ||
	    !(dsdt = take(&b, sizeof(*dsdt) + sizeof(dsdt_aml), 16,
			  &dsdt_gpa)) ||
	    fill_madt(&b, ncpus, &madt_gpa) < 0 ||
	    base + b.used > (uint64_t)UINT32_MAX + 1)
		return vmm_err(err, -E2BIG, "ACPI tables for %u vCPUs do not "
			       "fit in %zu bytes below 4 GiB", ncpus, size);

	header(dsdt, "DSDT", (uint32_t)(sizeof(*dsdt) + sizeof(dsdt_aml)), 2);
	memcpy(dsdt + 1, dsdt_aml, sizeof(dsdt_aml));
	seal(dsdt);

	memcpy(facs->signature, "FACS", 4);
	facs->length = sizeof(*facs);
	facs->version = 2;

	fill_fadt(fadt, facs_gpa, dsdt_gpa);

	header(xsdt, "XSDT", xsdt_len, 1);
	memcpy((uint8_t *)(xsdt + 1), &fadt_gpa, 8);
	memcpy((uint8_t *)(xsdt + 1) + 8, &madt_gpa, 8);
	seal(xsdt);

	memcpy(rsdp->signature, "RSD PTR ", 8);
	memcpy(rsdp->oem_id, ACPI_OEM_ID, 6);
	rsdp->revision = 2;
	rsdp->length = sizeof(*rsdp);
	rsdp->xsdt_address = xsdt_gpa;
	rsdp->checksum = acpi_checksum(rsdp, 20);
	rsdp->ext_checksum = acpi_checksum(rsdp, sizeof(*rsdp));
	*used = b.used;
	return 0;
}

/* ---- the PM1 registers --------------------------------------------- */

void acpi_pm_init(struct acpi_pm *pm)
{
	memset(pm, 0, sizeof(*pm));
	pthread_mutex_init(&pm->lock, NULL);
}

void acpi_pm_reset(struct acpi_pm *pm)
{
	pthread_mutex_lock(&pm->lock);
	pm->en = pm->cnt = 0;
	pthread_mutex_unlock(&pm->lock);
}

void acpi_pm_exit(struct acpi_pm *pm)
{
	pthread_mutex_destroy(&pm->lock);
}

/* Byte `off` of the block [0x600, 0x606): status (never set: no events),
 * enable, control. */
static uint8_t pm_read(const struct acpi_pm *pm, unsigned int off)
{
	uint16_t cnt = (uint16_t)((pm->cnt & PM1_CNT_RW) | PM1_SCI_EN);

	switch (off) {
	case 2: return (uint8_t)pm->en;
	case 3: return (uint8_t)(pm->en >> 8);
	case 4: return (uint8_t)cnt;
	case 5: return (uint8_t)(cnt >> 8);
	default: return 0;
	}
}

enum acpi_event acpi_pm_io(struct acpi_pm *pm, uint16_t port, bool write,
			   uint8_t *data, uint32_t size)
{
	enum acpi_event ev = ACPI_EVENT_NONE;

	pthread_mutex_lock(&pm->lock);
	for (uint32_t i = 0; i < size; i++) {
		uint32_t off = (uint32_t)port + i - ACPI_PM1_EVT_PORT;

		if (off >= ACPI_PM_PORTS) { /* beyond the block */
			if (!write)
				data[i] = 0xff;
			continue;
		}
		if (!write) {
			data[i] = pm_read(pm, off);
			continue;
		}
		switch (off) { /* 0, 1: status, write-1-to-clear, all 0 */
		case 2: pm->en = (uint16_t)((pm->en & 0xff00) | data[i]); break;
		case 3: pm->en = (uint16_t)((pm->en & 0x00ff) | data[i] << 8); break;
		case 4: pm->cnt = (uint16_t)((pm->cnt & 0xff00) | data[i]); break;
		case 5: pm->cnt = (uint16_t)((pm->cnt & 0x00ff) | data[i] << 8); break;
		}
		/* SLP_EN is in the high byte, with SLP_TYP: a write of it
		 * starts the sleep. Only S5 is declared (\_S5_); another
		 * sleep type is ignored, as a machine without that state. */
		if (off == 5 && (pm->cnt & PM1_SLP_EN)) {
			if (((pm->cnt & PM1_SLP_TYP_MASK) >> PM1_SLP_TYP_SHIFT) ==
			    ACPI_SLP_TYP_S5)
				ev = ACPI_EVENT_POWER_OFF;
			pm->cnt &= (uint16_t)~PM1_SLP_EN;
		}
	}
	pthread_mutex_unlock(&pm->lock);
	return ev;
}

enum acpi_event acpi_reset_io(bool write, uint8_t *data, uint32_t size)
{
	if (!write) {
		memset(data, 0, size);
		return ACPI_EVENT_NONE;
	}
	return size >= 1 && (data[0] & RESET_CPU) ? ACPI_EVENT_RESET
						   : ACPI_EVENT_NONE;
}

int acpi_pm_save(struct acpi_pm *pm, void **blob, size_t *len,
		 mig_error *err)
{
	Mig__Ctl__AcpiPmState m = MIG__CTL__ACPI_PM_STATE__INIT;
	uint8_t *buf;
	size_t n;

	pthread_mutex_lock(&pm->lock);
	m.pm1_enable = pm->en;
	m.pm1_control = pm->cnt & PM1_CNT_RW;
	pthread_mutex_unlock(&pm->lock);
	n = mig__ctl__acpi_pm_state__get_packed_size(&m);
	buf = malloc(n ? n : 1);
	if (!buf)
		return vmm_err(err, -ENOMEM, "ACPI PM state: out of memory");
	mig__ctl__acpi_pm_state__pack(&m, buf);
	*blob = buf;
	*len = n;
	return 0;
}

int acpi_pm_load(struct acpi_pm *pm, const void *blob, size_t len,
		 mig_error *err)
{
	Mig__Ctl__AcpiPmState *m;

	m = mig__ctl__acpi_pm_state__unpack(NULL, len, blob);
	if (!m)
		return vmm_err(err, -EBADMSG, "ACPI PM state: %zu bytes that "
			       "do not decode", len);
	if (m->pm1_enable > 0xffff || (m->pm1_control & ~PM1_CNT_RW)) {
		int r = vmm_err(err, -EINVAL, "ACPI PM state: PM1 enable 0x%x "
				"or control 0x%x out of range (control: only "
				"BM_RLD and SLP_TYP, 0x%x)", m->pm1_enable,
				m->pm1_control, PM1_CNT_RW);
		mig__ctl__acpi_pm_state__free_unpacked(m, NULL);
		return r;
	}
	pthread_mutex_lock(&pm->lock);
	pm->en = (uint16_t)m->pm1_enable;
	pm->cnt = (uint16_t)m->pm1_control;
	pthread_mutex_unlock(&pm->lock);
	mig__ctl__acpi_pm_state__free_unpacked(m, NULL);
	return 0;
}
