/*
 * migvm's ACPI: the tables a Linux guest reads (checked here as ACPICA
 * checks them: signatures, lengths, checksums, the pointers between them,
 * one enabled LAPIC per vCPU, \_S5_ in the DSDT) and the PM1 registers
 * through which it powers off: only SLP_TYP 5 with SLP_EN ends the VM, at
 * any access width; their state loads only within range (hostile bytes).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "control.pb-c.h"
#include "vm.h"

#define BASE 0xe0000ull

static uint8_t buf[ACPI_TABLES_MAX];
static size_t used;

static uint8_t sum(const uint8_t *p, size_t n)
{
	uint8_t s = 0;

	while (n--)
		s = (uint8_t)(s + *p++);
	return s;
}

static uint32_t get32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return v;
}

static uint64_t get64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, 8);
	return v;
}

/* The table at guest address gpa, checked: signature, length within what
 * was built, checksum. */
static const uint8_t *table(uint64_t gpa, const char *sig)
{
	const uint8_t *t;
	uint32_t len;

	assert_true(gpa >= BASE && gpa + 36 <= BASE + used);
	t = buf + (gpa - BASE);
	assert_memory_equal(t, sig, 4);
	len = get32(t + 4);
	assert_true(len >= 36 && gpa + len <= BASE + used);
	assert_int_equal(sum(t, len), 0);
	assert_memory_equal(t + 10, "MIGVM ", 6);
	return t;
}

static void build(uint32_t ncpus)
{
	mig_error err = { 0 };

	memset(buf, 0xcc, sizeof(buf));
	assert_int_equal(acpi_build(buf, sizeof(buf), BASE, ncpus, &used, &err),
			 0);
	assert_true(used > 0 && used <= sizeof(buf));
}

static void check_tables(uint32_t ncpus)
{
	const uint8_t *xsdt, *fadt, *dsdt, *facs, *madt, *e, *end;
	uint32_t lapics = 0, ioapics = 0;
	uint64_t facs_gpa;

	build(ncpus);
	/* RSDP: revision 2, both checksums, the XSDT. */
	assert_memory_equal(buf, "RSD PTR ", 8);
	assert_int_equal(sum(buf, 20), 0);
	assert_int_equal(buf[15], 2);
	assert_int_equal(get32(buf + 20), 36);
	assert_int_equal(sum(buf, 36), 0);
	xsdt = table(get64(buf + 24), "XSDT");
	assert_int_equal(get32(xsdt + 4), 36 + 16);
	fadt = table(get64(xsdt + 36), "FACP");
	madt = table(get64(xsdt + 44), "APIC");

	/* FADT revision 6: DSDT (both pointers), FACS, PM1 blocks, SCI,
	 * the reset register. */
	assert_int_equal(get32(fadt + 4), 276);
	assert_int_equal(fadt[8], 6);
	assert_int_equal(get64(fadt + 140), get32(fadt + 40));
	dsdt = table(get64(fadt + 140), "DSDT");
	facs_gpa = get64(fadt + 132);
	assert_int_equal(get32(fadt + 36), 0); /* FIRMWARE_CTRL: X_ only */
	assert_int_equal(facs_gpa % 64, 0);
	facs = buf + (facs_gpa - BASE);
	assert_memory_equal(facs, "FACS", 4);
	assert_int_equal(get32(facs + 4), 64);
	assert_int_equal(fadt[46], 9);                   /* SCI_INT */
	assert_int_equal(get32(fadt + 48), 0);           /* SMI_CMD */
	assert_int_equal(get32(fadt + 56), ACPI_PM1_EVT_PORT);
	assert_int_equal(get32(fadt + 64), ACPI_PM1_CNT_PORT);
	assert_int_equal(fadt[88], 4);                   /* PM1_EVT_LEN */
	assert_int_equal(fadt[89], 2);                   /* PM1_CNT_LEN */
	assert_int_equal(get64(fadt + 148 + 4), ACPI_PM1_EVT_PORT);
	assert_int_equal(fadt[148 + 1], 32);
	assert_int_equal(get64(fadt + 172 + 4), ACPI_PM1_CNT_PORT);
	assert_int_equal(fadt[172 + 1], 16);
	assert_true(get32(fadt + 112) & (1u << 10));    /* RESET_REG_SUP */
	assert_false(get32(fadt + 112) & (1u << 20));   /* not HW-reduced */
	assert_int_equal(fadt[116], 1);                  /* reset: I/O */
	assert_int_equal(get64(fadt + 120), ACPI_RESET_PORT);
	assert_int_equal(fadt[128], ACPI_RESET_VALUE);
	assert_false(get32(fadt + 109) & 0x2);          /* no 8042 */

	/* DSDT: Name (\_S5_, Package (4) { 5, 5, 0, 0 }) */
	assert_int_equal(get32(dsdt + 4), 36 + 15);
	assert_memory_equal(dsdt + 36, "\x08\\_S5_\x12\x08\x04\x0a\x05\x0a\x05"
			    "\x00\x00", 15);

	/* MADT: PCAT_COMPAT, one enabled LAPIC per vCPU (id = index), the
	 * IOAPIC (id = vCPU count, GSI base 0), every entry whole. */
	assert_int_equal(get32(madt + 36), 0xfee00000u);
	assert_int_equal(get32(madt + 40), 1);
	end = madt + get32(madt + 4);
	for (e = madt + 44; e < end; e += e[1]) {
		assert_true(e[1] >= 2 && e + e[1] <= end);
		if (e[0] == 0) {
			assert_int_equal(e[1], 8);
			assert_int_equal(e[3], lapics);
			assert_int_equal(get32(e + 4), 1);
			lapics++;
		} else if (e[0] == 1) {
			assert_int_equal(e[2], ncpus);
			assert_int_equal(get32(e + 4), 0xfec00000u);
			assert_int_equal(get32(e + 8), 0);
			ioapics++;
		}
	}
	assert_ptr_equal(e, end);
	assert_int_equal(lapics, ncpus);
	assert_int_equal(ioapics, 1);
}

static void tables_1_2_64(void **st)
{
	(void)st;
	check_tables(1);
	check_tables(2);
	check_tables(64);
}

static void tables_bad_size(void **st)
{
	mig_error err = { 0 };

	(void)st;
	assert_int_equal(acpi_build(buf, sizeof(buf), BASE, 0, &used, &err),
			 -EINVAL);
	assert_int_equal(acpi_build(buf, sizeof(buf), BASE, VM_MAX_VCPUS + 1,
				    &used, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "vCPUs"));
	assert_int_equal(acpi_build(buf, 600, BASE, 64, &used, &err), -E2BIG);
	assert_non_null(strstr(err.msg, "do not fit"));
	/* Below 4 GiB: the FADT's 32-bit pointers must hold them. */
	assert_int_equal(acpi_build(buf, sizeof(buf), 0xffffff00ull, 2, &used,
				    &err), -E2BIG);
}

static struct acpi_pm pm;

static int setup(void **st)
{
	(void)st;
	acpi_pm_init(&pm);
	return 0;
}

static int teardown(void **st)
{
	(void)st;
	acpi_pm_exit(&pm);
	return 0;
}

static enum acpi_event out16(uint16_t port, uint16_t v)
{
	uint8_t d[2] = { (uint8_t)v, (uint8_t)(v >> 8) };

	return acpi_pm_io(&pm, port, true, d, 2);
}

static uint16_t in16(uint16_t port)
{
	uint8_t d[2] = { 0xaa, 0xaa };

	assert_int_equal(acpi_pm_io(&pm, port, false, d, 2), ACPI_EVENT_NONE);
	return (uint16_t)(d[0] | d[1] << 8);
}

static void pm_registers(void **st)
{
	uint8_t d[4] = { 0 };

	(void)st;
	/* Always in ACPI mode (SCI_EN), nothing pending. */
	assert_int_equal(in16(ACPI_PM1_CNT_PORT), 0x0001);
	assert_int_equal(in16(ACPI_PM1_EVT_PORT), 0);
	/* Status is write-1-to-clear and holds nothing; enable keeps what is
	 * written. */
	assert_int_equal(out16(ACPI_PM1_EVT_PORT, 0xffff), ACPI_EVENT_NONE);
	assert_int_equal(in16(ACPI_PM1_EVT_PORT), 0);
	assert_int_equal(out16(ACPI_PM1_EVT_PORT + 2, 0x0120), ACPI_EVENT_NONE);
	assert_int_equal(in16(ACPI_PM1_EVT_PORT + 2), 0x0120);
	/* SLP_TYP alone does nothing and reads back; GBL_RLS does not. */
	assert_int_equal(out16(ACPI_PM1_CNT_PORT, 5 << 10 | 0x0004),
			 ACPI_EVENT_NONE);
	assert_int_equal(in16(ACPI_PM1_CNT_PORT), 5 << 10 | 0x0001);
	/* A sleep type the DSDT does not declare: ignored, SLP_EN not kept. */
	assert_int_equal(out16(ACPI_PM1_CNT_PORT, 3 << 10 | 0x2000),
			 ACPI_EVENT_NONE);
	assert_int_equal(in16(ACPI_PM1_CNT_PORT), 3 << 10 | 0x0001);
	/* Beyond the block: 0xff, and writes go nowhere. */
	assert_int_equal(acpi_pm_io(&pm, ACPI_PM1_CNT_PORT, false, d, 4),
			 ACPI_EVENT_NONE);
	assert_int_equal(d[2], 0xff);
	assert_int_equal(d[3], 0xff);
}

static void pm_power_off(void **st)
{
	uint8_t hi = (uint8_t)((5 << 10 | 0x2000) >> 8);

	(void)st;
	/* As ACPICA does: SLP_TYP, then SLP_TYP | SLP_EN. */
	assert_int_equal(out16(ACPI_PM1_CNT_PORT, 5 << 10), ACPI_EVENT_NONE);
	assert_int_equal(out16(ACPI_PM1_CNT_PORT, 5 << 10 | 0x2000),
			 ACPI_EVENT_POWER_OFF);
	/* A byte write of the high half alone, and a dword write. */
	assert_int_equal(acpi_pm_io(&pm, ACPI_PM1_CNT_PORT + 1, true, &hi, 1),
			 ACPI_EVENT_POWER_OFF);
	uint8_t d[4] = { 0, hi, 0, 0 };
	assert_int_equal(acpi_pm_io(&pm, ACPI_PM1_CNT_PORT, true, d, 4),
			 ACPI_EVENT_POWER_OFF);
	/* SLP_EN through the enable register's bytes does nothing. */
	assert_int_equal(out16(ACPI_PM1_EVT_PORT + 2, 0xffff), ACPI_EVENT_NONE);
}

static void reset_register(void **st)
{
	uint8_t d = ACPI_RESET_VALUE;

	(void)st;
	assert_int_equal(acpi_reset_io(true, &d, 1), ACPI_EVENT_RESET);
	d = 0x02; /* SYS_RST alone: no reset yet */
	assert_int_equal(acpi_reset_io(true, &d, 1), ACPI_EVENT_NONE);
	assert_int_equal(acpi_reset_io(false, &d, 1), ACPI_EVENT_NONE);
	assert_int_equal(d, 0);
}

static void pm_state_round_trip(void **st)
{
	mig_error err = { 0 };
	void *blob;
	size_t len;

	(void)st;
	out16(ACPI_PM1_EVT_PORT + 2, 0x0100);
	out16(ACPI_PM1_CNT_PORT, 5 << 10 | 0x0002);
	assert_int_equal(acpi_pm_save(&pm, &blob, &len, &err), 0);
	acpi_pm_reset(&pm);
	assert_int_equal(in16(ACPI_PM1_EVT_PORT + 2), 0);
	assert_int_equal(acpi_pm_load(&pm, blob, len, &err), 0);
	free(blob);
	assert_int_equal(in16(ACPI_PM1_EVT_PORT + 2), 0x0100);
	assert_int_equal(in16(ACPI_PM1_CNT_PORT), 5 << 10 | 0x0003);
}

static int pack_load(uint32_t en, uint32_t cnt, mig_error *err)
{
	Mig__Ctl__AcpiPmState m = MIG__CTL__ACPI_PM_STATE__INIT;
	uint8_t b[32];
	size_t n;

	m.pm1_enable = en;
	m.pm1_control = cnt;
	n = mig__ctl__acpi_pm_state__pack(&m, b);
	return acpi_pm_load(&pm, b, n, err);
}

static void pm_state_hostile(void **st)
{
	mig_error err = { 0 };
	static const uint8_t garbage[] = { 0xff, 0xff, 0xff, 0xff };

	(void)st;
	out16(ACPI_PM1_EVT_PORT + 2, 0x0020);
	assert_int_equal(acpi_pm_load(&pm, garbage, sizeof(garbage), &err),
			 -EBADMSG);
	assert_int_equal(pack_load(0x10000, 0, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "out of range"));
	/* SLP_EN or SCI_EN in saved state: not a register value. */
	assert_int_equal(pack_load(0, 5 << 10 | 0x2000, &err), -EINVAL);
	assert_int_equal(pack_load(0, 0x0001, &err), -EINVAL);
	/* Refused loads leave the registers as they were. */
	assert_int_equal(in16(ACPI_PM1_EVT_PORT + 2), 0x0020);
	assert_int_equal(pack_load(0xffff, 7 << 10 | 0x0002, &err), 0);
	assert_int_equal(in16(ACPI_PM1_CNT_PORT), 7 << 10 | 0x0003);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(tables_1_2_64),
		cmocka_unit_test(tables_bad_size),
		cmocka_unit_test_setup_teardown(pm_registers, setup, teardown),
		cmocka_unit_test_setup_teardown(pm_power_off, setup, teardown),
		cmocka_unit_test(reset_register),
		cmocka_unit_test_setup_teardown(pm_state_round_trip, setup, teardown),
		cmocka_unit_test_setup_teardown(pm_state_hostile, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
