/*
 * migvm's bzImage loader (vmm/bzimage.c): the setup header of a kernel file
 * is hostile until checked. A well-formed header gives the load address,
 * the memory the kernel needs and a zero page with the loader's fields; each
 * malformed one is refused with a message naming the fault; random damage
 * never reads outside the file (run under ASan in CI) and never yields a
 * placement outside guest RAM.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "vm.h"

#define FILE_SIZE 0x3000u    /* 7 setup sectors + the header's, 8 KiB kernel */
#define RAM_TOP (512ull << 20)
#define PREF 0x1000000ull
#define INIT_SIZE 0x2000000u

static uint8_t img[FILE_SIZE];

static void p16(size_t off, uint16_t v) { memcpy(img + off, &v, 2); }
static void p32(size_t off, uint32_t v) { memcpy(img + off, &v, 4); }
static void p64(size_t off, uint64_t v) { memcpy(img + off, &v, 8); }

/* A bzImage header as Linux 6.1 writes it (protocol 2.15). */
static void good_image(void)
{
	memset(img, 0, sizeof(img));
	img[0x1f1] = 7;                      /* setup_sects */
	p32(0x1f4, (FILE_SIZE - 0x1000) / 16); /* syssize */
	p16(0x1fe, 0xaa55);
	img[0x200] = 0xeb;
	img[0x201] = 0x66;                   /* the header ends at 0x268 */
	memcpy(img + 0x202, "HdrS", 4);
	p16(0x206, 0x020f);
	img[0x211] = 0x01;                   /* LOADED_HIGH */
	p32(0x22c, 0x7fffffff);              /* initrd_addr_max */
	p32(0x230, 0x200000);                /* kernel_alignment */
	img[0x234] = 1;                      /* relocatable */
	p16(0x236, 0x7f);                    /* xloadflags: 64-bit entry... */
	p32(0x238, 2047);                    /* cmdline_size */
	p64(0x258, PREF);
	p32(0x260, INIT_SIZE);
	for (size_t i = 0x1000; i < FILE_SIZE; i++)
		img[i] = (uint8_t)i;
}

static int parse(size_t n, uint64_t ram_top, size_t cmdline_len,
		 struct bz_info *bi, mig_error *err)
{
	memset(err, 0, sizeof(*err));
	return bz_parse("k", img, n, ram_top, cmdline_len, bi, err);
}

static void expect_refused(size_t n, uint64_t ram_top, size_t cmdline_len,
			   int code, const char *what)
{
	struct bz_info bi;
	mig_error err;

	assert_int_equal(parse(n, ram_top, cmdline_len, &bi, &err), code);
	if (!strstr(err.msg, what))
		fail_msg("error \"%s\" does not say \"%s\"", err.msg, what);
	if (!strstr(err.msg, "kernel k"))
		fail_msg("error \"%s\" does not name the file", err.msg);
}

static void test_good(void **st)
{
	struct bz_info bi;
	mig_error err;

	(void)st;
	good_image();
	assert_true(bz_probe(img, sizeof(img)));
	assert_int_equal(parse(sizeof(img), RAM_TOP, 100, &bi, &err), 0);
	assert_int_equal(bi.version, 0x020f);
	assert_int_equal(bi.hdr_end, 0x268);
	assert_int_equal(bi.kernel_off, 0x1000);
	assert_int_equal(bi.kernel_size, FILE_SIZE - 0x1000);
	assert_int_equal(bi.load_addr, PREF);
	assert_int_equal(bi.mem_end, PREF + INIT_SIZE);
	assert_int_equal(bi.cmdline_max, 2047);
	/* setup_sects 0 means 4 */
	img[0x1f1] = 0;
	assert_int_equal(parse(sizeof(img), RAM_TOP, 0, &bi, &err), 0);
	assert_int_equal(bi.kernel_off, 5 * 512);
}

static void test_refused(void **st)
{
	(void)st;
	good_image();
	memcpy(img + 0x202, "HdrX", 4);
	assert_false(bz_probe(img, sizeof(img)));
	expect_refused(sizeof(img), RAM_TOP, 0, -ENOEXEC, "not a bzImage");
	good_image();
	p16(0x1fe, 0);
	expect_refused(sizeof(img), RAM_TOP, 0, -ENOEXEC, "not a bzImage");
	good_image();
	expect_refused(0x210, RAM_TOP, 0, -ENOEXEC, "not a bzImage");
	expect_refused(0x400, RAM_TOP, 0, -ENOEXEC, "truncated");
	expect_refused(0x2000, RAM_TOP, 0, -ENOEXEC, "truncated"); /* syssize */
	good_image();
	p16(0x206, 0x020b);
	expect_refused(sizeof(img), RAM_TOP, 0, -ENOEXEC, "2.12 or later");
	good_image();
	img[0x201] = 0xff;
	expect_refused(sizeof(img), RAM_TOP, 0, -ENOEXEC, "setup header ends");
	good_image();
	img[0x201] = 0x10;
	expect_refused(sizeof(img), RAM_TOP, 0, -ENOEXEC, "setup header ends");
	good_image();
	img[0x211] = 0;
	expect_refused(sizeof(img), RAM_TOP, 0, -ENOEXEC, "zImage");
	good_image();
	p16(0x236, 0x7e);
	expect_refused(sizeof(img), RAM_TOP, 0, -ENOEXEC, "no 64-bit entry");
	good_image();
	p32(0x260, 0x100);
	expect_refused(sizeof(img), RAM_TOP, 0, -ENOEXEC, "init_size");
	good_image();
	p64(0x258, 0x8000);
	expect_refused(sizeof(img), RAM_TOP, 0, -ENOEXEC, "preferred address");
	p64(0x258, PREF + 0x1000);
	expect_refused(sizeof(img), RAM_TOP, 0, -ENOEXEC, "preferred address");
	p64(0x258, RAM_TOP);
	expect_refused(sizeof(img), RAM_TOP, 0, -ENOEXEC, "preferred address");
	p64(0x258, UINT64_MAX - 0x1fffff);
	expect_refused(sizeof(img), RAM_TOP, 0, -ENOEXEC, "preferred address");
	good_image();
	expect_refused(sizeof(img), PREF + INIT_SIZE - 1, 0, -ENOSPC, "more --mem");
	expect_refused(sizeof(img), RAM_TOP, 2048, -E2BIG, "at most 2047");
}

static void test_initrd(void **st)
{
	struct bz_info bi;
	mig_error err = { 0 };
	uint64_t gpa = 0;

	(void)st;
	good_image();
	assert_int_equal(parse(sizeof(img), RAM_TOP, 0, &bi, &err), 0);
	assert_int_equal(bz_place_initrd("i", &bi, RAM_TOP, 10000, &gpa, &err), 0);
	assert_int_equal(gpa, (RAM_TOP - 10000) & ~0xfffull);
	/* the kernel's own limit wins over the end of RAM */
	bi.initrd_addr_max = 0x7ffffff;
	assert_int_equal(bz_place_initrd("i", &bi, RAM_TOP, 4096, &gpa, &err), 0);
	assert_int_equal(gpa, 0x8000000 - 4096);
	assert_int_equal(bz_place_initrd("i", &bi, RAM_TOP, 0, &gpa, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "initrd i: an empty file"));
	assert_int_equal(bz_place_initrd("i", &bi, RAM_TOP, 0x8000000 - bi.mem_end + 1,
					 &gpa, &err), -ENOSPC);
	assert_non_null(strstr(err.msg, "more --mem"));
	bi.initrd_addr_max = (uint32_t)bi.mem_end - 1;
	assert_int_equal(bz_place_initrd("i", &bi, RAM_TOP, 1, &gpa, &err), -ENOSPC);
	/* exactly what fits */
	bi.initrd_addr_max = 0x7fffffff;
	assert_int_equal(bz_place_initrd("i", &bi, RAM_TOP, RAM_TOP - bi.mem_end,
					 &gpa, &err), 0);
	assert_int_equal(gpa, bi.mem_end);
}

static void test_zero_page(void **st)
{
	static uint8_t zp[4096];
	struct boot_e820 map[130] = {
		{ 0, 0x9fc00, 1 }, { 0x9fc00, 0x60400, 2 }, { 0x100000, RAM_TOP - 0x100000, 1 },
	};
	struct bz_info bi;
	mig_error err = { 0 };
	uint32_t v;
	uint64_t q;

	(void)st;
	good_image();
	assert_int_equal(parse(sizeof(img), RAM_TOP, 0, &bi, &err), 0);
	memset(zp, 0xcc, sizeof(zp));
	assert_int_equal(bz_zero_page(zp, img, &bi, 0x7000, 0x1f000000, 12345,
				      0xe0000, map, 3, &err), 0);
	assert_memory_equal(zp + 0x202, "HdrS", 4);
	assert_int_equal(zp[0x1f1], 7);
	assert_int_equal(zp[0x210], 0xff);
	memcpy(&v, zp + 0x228, 4);
	assert_int_equal(v, 0x7000);
	memcpy(&v, zp + 0x218, 4);
	assert_int_equal(v, 0x1f000000);
	memcpy(&v, zp + 0x21c, 4);
	assert_int_equal(v, 12345);
	assert_int_equal(zp[0x1e8], 3);
	memcpy(&q, zp + 0x070, 8); /* acpi_rsdp_addr */
	assert_int_equal(q, 0xe0000);
	memcpy(&q, zp + 0x2d0 + 2 * 20 + 8, 8);
	assert_int_equal(q, RAM_TOP - 0x100000);
	memcpy(&v, zp + 0x2d0 + 1 * 20 + 16, 4);
	assert_int_equal(v, 2);
	assert_int_equal(zp[0x268], 0); /* nothing past the header */
	/* what the loader fills, whatever the file says */
	p32(0x23c, 3);          /* hardware_subarch */
	p64(0x240, 0x1234);     /* hardware_subarch_data */
	p64(0x250, 0x7fff000);  /* setup_data */
	assert_int_equal(bz_zero_page(zp, img, &bi, 0x7000, 0, 0, 0xe0000, map,
				      3, &err), 0);
	for (int i = 0x23c; i < 0x248; i++)
		assert_int_equal(zp[i], 0);
	for (int i = 0x250; i < 0x258; i++)
		assert_int_equal(zp[i], 0);
	assert_int_equal(zp[0x258 + 3], 0x01); /* pref_address kept */
	assert_int_equal(zp[0x1000 - 1], 0);
	/* no initrd: no ramdisk fields */
	assert_int_equal(bz_zero_page(zp, img, &bi, 0x7000, 0, 0, 0xe0000, map,
				      3, &err), 0);
	memcpy(&v, zp + 0x218, 4);
	assert_int_equal(v, 0);
	assert_int_equal(bz_zero_page(zp, img, &bi, 0x7000, 0, 0, 0xe0000, map,
				      129, &err), -E2BIG);
}

/* Random damage to the header: refused, or placed inside guest RAM. */
static void test_damage(void **st)
{
	struct bz_info bi;
	mig_error err;
	unsigned seed = 12345;
	int ok = 0;

	(void)st;
	for (int i = 0; i < 200000; i++) {
		good_image();
		int flips = 1 + (int)(rand_r(&seed) % 4);
		for (int k = 0; k < flips; k++)
			img[0x1f1 + rand_r(&seed) % (0x268 - 0x1f1)] = (uint8_t)rand_r(&seed);
		size_t n = sizeof(img) - (rand_r(&seed) % 4 ? 0 : rand_r(&seed) % sizeof(img));
		if (parse(n, RAM_TOP, 100, &bi, &err) < 0) {
			assert_true(err.msg[0] != 0);
			continue;
		}
		ok++;
		assert_true(bi.kernel_off + bi.kernel_size == n);
		assert_true(bi.hdr_end <= bi.kernel_off);
		assert_true(bi.load_addr >= 0x100000);
		assert_true(bi.load_addr + bi.kernel_size <= bi.mem_end);
		assert_true(bi.mem_end <= RAM_TOP);
	}
	assert_true(ok > 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_good),
		cmocka_unit_test(test_refused),
		cmocka_unit_test(test_initrd),
		cmocka_unit_test(test_zero_page),
		cmocka_unit_test(test_damage),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
