/*
 * libFuzzer target: migvm's decoders of hostile files and streams.
 *
 * Input: one op byte, then (op % 3)
 *   0: a bzImage header check. Two bytes give the VM's RAM below
 *     4 GiB (1..4096 MiB, capped at 3 GiB as migvm does), one the command
 *     line's length (x16), the rest is the kernel file: bz_parse() either
 *     refuses it with its documented errno and a message, or what it
 *     accepts fits the VM (loaded above 1 MiB, what it needs to boot within
 *     RAM, the setup header inside the setup sectors), and the zero page
 *     and initrd placement made from it stay within their bounds;
 *   1: a serial state (SerialState, from a snapshot or a migration)
 *     for serial_load(): refused with -EBADMSG / -EINVAL, or loaded, and
 *     then the UART takes guest output, console input and reads of all
 *     it holds without leaving its buffers (ASan), and saves and loads
 *     back the same;
 *   2: ACPI's PM1 state (AcpiPmState) for acpi_pm_load(): refused with
 *     -EBADMSG / -EINVAL leaving the registers as they were, or loaded,
 *     and what it loaded saves and loads back the same and never holds a
 *     started sleep (SLP_EN).
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_common.h"
#include "vm.h"

static void fuzz_bzimage(const uint8_t *d, size_t n)
{
	struct bz_info bi;
	mig_error err = { 0 };
	uint64_t ram_top, gpa = 0;
	size_t cmdline_len;
	uint8_t *img, zp[4096];
	int r;

	if (n < 3)
		return;
	ram_top = ((uint64_t)(d[0] | d[1] << 8) % 4096 + 1) << 20;
	if (ram_top > 3ull << 30)
		ram_top = 3ull << 30;
	cmdline_len = (size_t)d[2] * 16;
	n -= 3;
	img = malloc(n ? n : 1); /* exact size: ASan sees every overread */
	FUZZ_CHECK(img);
	memcpy(img, d + 3, n);
	r = bz_parse("fuzz", img, n, ram_top, cmdline_len, &bi, &err);
	if (r < 0) {
		FUZZ_CHECK(r == -ENOEXEC || r == -ENOSPC || r == -E2BIG);
		FUZZ_CHECK(err.code == r && err.msg[0]);
		free(img);
		return;
	}
	FUZZ_CHECK(bi.load_addr >= BZ_HIGH_RAM_START && bi.load_addr < ram_top);
	FUZZ_CHECK(bi.mem_end <= ((ram_top + 0xfff) & ~0xfffull));
	FUZZ_CHECK(bi.mem_end > bi.load_addr);
	FUZZ_CHECK(bi.hdr_end <= bi.kernel_off && bi.kernel_off < n);
	FUZZ_CHECK(bi.kernel_off + bi.kernel_size == n);
	FUZZ_CHECK(cmdline_len <= bi.cmdline_max);

	struct boot_e820 map[2] = {
		{ 0, 0x9fc00, 1 },
		{ BZ_HIGH_RAM_START, ram_top - BZ_HIGH_RAM_START, 1 },
	};
	size_t isize = (size_t)(d[0] ^ d[2]) << 12 | 1;
	r = bz_place_initrd("fuzz", &bi, ram_top, isize, &gpa, &err);
	if (r == 0) {
		uint64_t top = ram_top;
		if ((uint64_t)bi.initrd_addr_max + 1 < top)
			top = (uint64_t)bi.initrd_addr_max + 1;
		FUZZ_CHECK(gpa >= bi.mem_end && gpa + isize <= top);
		FUZZ_CHECK(gpa % 4096 == 0);
	} else {
		FUZZ_CHECK(r == -ENOSPC);
		gpa = 0;
		isize = 0;
	}
	r = bz_zero_page(zp, img, &bi, 0x7000, gpa, isize, 0xe0000, map, 2, &err);
	FUZZ_CHECK(r == 0);
	free(img);
}

static struct vm vm;

static void uart(uint16_t off, bool write, uint8_t *v)
{
	serial_io(&vm, (uint16_t)(0x3f8 + off), write, v);
	FUZZ_CHECK(vm.serial.line_len <= SERIAL_PARTIAL_MAX);
	FUZZ_CHECK(vm.serial.rx_len <= SERIAL_RX_MAX);
}

static void fuzz_serial(const uint8_t *d, size_t n)
{
	static const char out[] = "hb seq=1 ticks=2\nMISMATCH x\nlong line ";
	mig_error err = { 0 };
	uint8_t *blob, v;
	void *saved = NULL;
	size_t len, rx;
	int r;

	memset(&vm, 0, sizeof(vm));
	vm.vm_fd = -1; /* KVM_IRQ_LINE fails harmlessly */
	serial_init(&vm.serial, open("/dev/null", O_WRONLY | O_CLOEXEC));
	blob = malloc(n ? n : 1);
	FUZZ_CHECK(blob);
	memcpy(blob, d, n);
	r = serial_load(&vm.serial, blob, n, &err);
	free(blob);
	if (r < 0) {
		FUZZ_CHECK(r == -EBADMSG || r == -EINVAL);
		FUZZ_CHECK(vm.serial.line_len == 0 && vm.serial.rx_len == 0);
		goto out;
	}
	rx = vm.serial.rx_len;
	FUZZ_CHECK(vm.serial.line_len <= SERIAL_PARTIAL_MAX && rx <= SERIAL_RX_MAX);
	FUZZ_CHECK(serial_save(&vm.serial, &saved, &len, &err) == 0);
	FUZZ_CHECK(serial_load(&vm.serial, saved, len, &err) == 0);
	FUZZ_CHECK(vm.serial.rx_len == rx);
	free(saved);
	v = 0; /* DLAB off, so that RBR and THR are the data port */
	uart(3, true, &v);
	for (size_t i = 0; i < 3 * SERIAL_LINE_MAX; i++) {
		v = (uint8_t)out[i % (sizeof(out) - 1)];
		uart(0, true, &v);
	}
	r = serial_input(&vm, (const uint8_t *)out, sizeof(out), &err);
	FUZZ_CHECK(r == 0 || (r == -ENOSPC && rx + sizeof(out) > SERIAL_RX_MAX));
	for (size_t i = 0; i <= SERIAL_RX_MAX; i++) {
		uart(5, false, &v);
		if (!(v & 0x01))
			break;
		uart(2, false, &v);
		uart(0, false, &v);
	}
	FUZZ_CHECK(vm.serial.rx_len == 0);
	serial_flush(&vm.serial);
out:
	close(vm.serial.out_fd);
	serial_exit(&vm.serial);
}

static void fuzz_acpi_pm(const uint8_t *d, size_t n)
{
	struct acpi_pm pm;
	mig_error err = { 0 };
	uint8_t *blob, v[2];
	void *saved = NULL;
	size_t len;
	uint16_t en, cnt;
	int r;

	acpi_pm_init(&pm);
	pm.en = 0x1234;
	blob = malloc(n ? n : 1);
	FUZZ_CHECK(blob);
	memcpy(blob, d, n);
	r = acpi_pm_load(&pm, blob, n, &err);
	free(blob);
	if (r < 0) {
		FUZZ_CHECK(r == -EBADMSG || r == -EINVAL);
		FUZZ_CHECK(err.code == r && err.msg[0]);
		FUZZ_CHECK(pm.en == 0x1234 && pm.cnt == 0);
		goto out;
	}
	FUZZ_CHECK(!(pm.cnt & 0x2000));
	en = pm.en;
	cnt = pm.cnt;
	FUZZ_CHECK(acpi_pm_save(&pm, &saved, &len, &err) == 0);
	acpi_pm_reset(&pm);
	FUZZ_CHECK(acpi_pm_load(&pm, saved, len, &err) == 0);
	FUZZ_CHECK(pm.en == en && pm.cnt == cnt);
	free(saved);
	/* What the guest reads back: SCI_EN and what was loaded. */
	FUZZ_CHECK(acpi_pm_io(&pm, ACPI_PM1_CNT_PORT, false, v, 2) ==
		   ACPI_EVENT_NONE);
	FUZZ_CHECK((v[0] | v[1] << 8) == (cnt | 1));
out:
	acpi_pm_exit(&pm);
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
	if (n < 1)
		return 0;
	switch (d[0] % 3) {
	case 0: fuzz_bzimage(d + 1, n - 1); break;
	case 1: fuzz_serial(d + 1, n - 1); break;
	default: fuzz_acpi_pm(d + 1, n - 1); break;
	}
	return 0;
}
