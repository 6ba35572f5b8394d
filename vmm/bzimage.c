/*
 * The Linux/x86 boot protocol for a bzImage (Documentation/arch/x86/boot.rst),
 * its 64-bit entry, as Cloud Hypervisor and kvmtool use it: check the setup
 * header, say where the protected-mode kernel and the initrd go, and build
 * the zero page (struct boot_params). Pure code on the file's bytes, which
 * are hostile until checked: every offset and size is checked against the
 * file and against guest RAM before pvh.c copies anything.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "vm.h"

/* Offsets into the file, which are also offsets into boot_params. */
#define BZ_SETUP_SECTS 0x1f1  /* u8, 0 means 4 */
#define BZ_SYSSIZE 0x1f4      /* u32, protected-mode size in 16-byte units */
#define BZ_BOOT_FLAG 0x1fe    /* u16, 0xaa55 */
#define BZ_JUMP_LEN 0x201     /* u8: the header ends at 0x202 + this */
#define BZ_HEADER 0x202       /* "HdrS" */
#define BZ_VERSION 0x206      /* u16 */
#define BZ_TYPE_OF_LOADER 0x210
#define BZ_LOADFLAGS 0x211
#define BZ_RAMDISK_IMAGE 0x218
#define BZ_RAMDISK_SIZE 0x21c
#define BZ_CMD_LINE_PTR 0x228
#define BZ_INITRD_ADDR_MAX 0x22c
#define BZ_KERNEL_ALIGNMENT 0x230
#define BZ_RELOCATABLE 0x234
#define BZ_XLOADFLAGS 0x236
#define BZ_CMDLINE_SIZE 0x238
#define BZ_HARDWARE_SUBARCH 0x23c      /* u32, 0: a PC */
#define BZ_HARDWARE_SUBARCH_DATA 0x240 /* u64 */
#define BZ_SETUP_DATA 0x250            /* u64, the loader's list */
#define BZ_PREF_ADDRESS 0x258 /* u64 */
#define BZ_INIT_SIZE 0x260    /* u32 */
#define BZ_HEADER_MIN_END 0x264 /* through init_size: protocol 2.12 */
#define BZ_HEADER_MAX_END 0x290 /* struct setup_header ends here */
#define BZ_ACPI_RSDP_ADDR 0x070 /* u64, read from protocol 2.14 */
#define BZ_E820_ENTRIES 0x1e8 /* u8 */
#define BZ_E820_TABLE 0x2d0   /* 128 entries of 20 bytes */
#define BZ_E820_MAX 128

#define LOADED_HIGH 0x01
#define XLF_KERNEL_64 0x01
#define BZ_MIN_VERSION 0x020c /* 2.12: xloadflags, the 64-bit entry */

static uint16_t get16(const uint8_t *p, size_t off)
{
	return (uint16_t)(p[off] | p[off + 1] << 8);
}

static uint32_t get32(const uint8_t *p, size_t off)
{
	uint32_t v;
	memcpy(&v, p + off, 4);
	return v;
}

static uint64_t get64(const uint8_t *p, size_t off)
{
	uint64_t v;
	memcpy(&v, p + off, 8);
	return v;
}

static void put32(uint8_t *p, size_t off, uint32_t v)
{
	memcpy(p + off, &v, 4);
}

bool bz_probe(const uint8_t *d, size_t n)
{
	return n >= BZ_HEADER + 4 && !memcmp(d + BZ_HEADER, "HdrS", 4);
}

int bz_parse(const char *path, const uint8_t *d, size_t n, uint64_t ram_top,
	     size_t cmdline_len, struct bz_info *bi, mig_error *err)
{
	uint32_t sects, syssize, init_size, align;
	uint64_t pref, need;

	memset(bi, 0, sizeof(*bi));
	if (!bz_probe(d, n) || n < BZ_HEADER_MIN_END ||
	    get16(d, BZ_BOOT_FLAG) != 0xaa55)
		return vmm_err(err, -ENOEXEC, "kernel %s: not a bzImage (no "
			       "\"HdrS\" setup header and 0xaa55 boot flag)",
			       path);
	bi->version = get16(d, BZ_VERSION);
	if (bi->version < BZ_MIN_VERSION)
		return vmm_err(err, -ENOEXEC, "kernel %s: boot protocol %u.%02u, "
			       "2.12 or later needed for the 64-bit entry",
			       path, bi->version >> 8, bi->version & 0xff);
	bi->hdr_end = BZ_HEADER + d[BZ_JUMP_LEN];
	if (bi->hdr_end < BZ_HEADER_MIN_END || bi->hdr_end > BZ_HEADER_MAX_END)
		return vmm_err(err, -ENOEXEC, "kernel %s: setup header ends at "
			       "0x%x, not in [0x%x, 0x%x]", path, bi->hdr_end,
			       BZ_HEADER_MIN_END, BZ_HEADER_MAX_END);
	if (!(d[BZ_LOADFLAGS] & LOADED_HIGH))
		return vmm_err(err, -ENOEXEC, "kernel %s: a zImage (loads below "
			       "1 MiB), not a bzImage", path);
	if (!(get16(d, BZ_XLOADFLAGS) & XLF_KERNEL_64))
		return vmm_err(err, -ENOEXEC, "kernel %s: no 64-bit entry point "
			       "(xloadflags 0x%x)", path, get16(d, BZ_XLOADFLAGS));
	sects = d[BZ_SETUP_SECTS] ? d[BZ_SETUP_SECTS] : 4;
	bi->kernel_off = (uint64_t)(sects + 1) * 512;
	if (bi->kernel_off < bi->hdr_end || bi->kernel_off >= n)
		return vmm_err(err, -ENOEXEC, "kernel %s: %u setup sectors, the "
			       "file has %zu bytes (truncated?)", path, sects, n);
	bi->kernel_size = n - bi->kernel_off;
	syssize = get32(d, BZ_SYSSIZE);
	if ((uint64_t)syssize * 16 > bi->kernel_size)
		return vmm_err(err, -ENOEXEC, "kernel %s: the header says %llu "
			       "bytes of kernel, the file holds %llu (truncated?)",
			       path, (unsigned long long)syssize * 16,
			       (unsigned long long)bi->kernel_size);
	init_size = get32(d, BZ_INIT_SIZE);
	pref = get64(d, BZ_PREF_ADDRESS);
	align = get32(d, BZ_KERNEL_ALIGNMENT);
	if (init_size < bi->kernel_size)
		return vmm_err(err, -ENOEXEC, "kernel %s: init_size %u is "
			       "smaller than the kernel's %llu bytes", path,
			       init_size, (unsigned long long)bi->kernel_size);
	/* The kernel runs (and decompresses itself) at pref_address, where a
	 * non-relocatable one must be loaded and a relocatable one goes no
	 * lower: so it is loaded there, and needs init_size bytes from it. */
	if (pref < BZ_HIGH_RAM_START || pref >= ram_top ||
	    (d[BZ_RELOCATABLE] && align && (align & (align - 1))) ||
	    (d[BZ_RELOCATABLE] && align && pref % align))
		return vmm_err(err, -ENOEXEC, "kernel %s: preferred address "
			       "0x%llx (alignment 0x%x) is not a place in guest "
			       "RAM above 1 MiB", path, (unsigned long long)pref,
			       align);
	bi->load_addr = pref;
	need = pref + init_size;
	if (need > ram_top)
		return vmm_err(err, -ENOSPC, "kernel %s: needs RAM up to 0x%llx "
			       "to boot, the VM has 0x%llx below 4 GiB; give it "
			       "more --mem", path, (unsigned long long)need,
			       (unsigned long long)ram_top);
	bi->mem_end = (need + 0xfff) & ~0xfffull;
	bi->cmdline_max = get32(d, BZ_CMDLINE_SIZE);
	if (cmdline_len > bi->cmdline_max)
		return vmm_err(err, -E2BIG, "kernel %s: command line of %zu "
			       "bytes, the kernel takes at most %u", path,
			       cmdline_len, bi->cmdline_max);
	bi->initrd_addr_max = get32(d, BZ_INITRD_ADDR_MAX);
	return 0;
}

int bz_place_initrd(const char *path, const struct bz_info *bi,
		    uint64_t ram_top, size_t size, uint64_t *gpa,
		    mig_error *err)
{
	uint64_t top = ram_top;

	if (!size)
		return vmm_err(err, -EINVAL, "initrd %s: an empty file", path);
	if ((uint64_t)bi->initrd_addr_max + 1 < top)
		top = (uint64_t)bi->initrd_addr_max + 1;
	if (top < bi->mem_end || size > top - bi->mem_end ||
	    ((top - size) & ~0xfffull) < bi->mem_end)
		return vmm_err(err, -ENOSPC, "initrd %s: %zu bytes do not fit "
			       "between the kernel's end (0x%llx) and 0x%llx; "
			       "give the VM more --mem", path, size,
			       (unsigned long long)bi->mem_end,
			       (unsigned long long)top);
	*gpa = (top - size) & ~0xfffull;
	return 0;
}

int bz_zero_page(uint8_t zp[4096], const uint8_t *d, const struct bz_info *bi,
		 uint32_t cmdline_gpa, uint64_t initrd_gpa, size_t initrd_size,
		 uint64_t rsdp_gpa, const struct boot_e820 *map, uint32_t nmap,
		 mig_error *err)
{
	if (nmap > BZ_E820_MAX)
		return vmm_err(err, -E2BIG, "%u memory map entries, at most %d",
			       nmap, BZ_E820_MAX);
	if (initrd_gpa + initrd_size > UINT32_MAX)
		return vmm_err(err, -EINVAL, "initrd above 4 GiB");
	memset(zp, 0, 4096);
	/* The setup header as the kernel wrote it, then what the loader says. */
	memcpy(zp + BZ_SETUP_SECTS, d + BZ_SETUP_SECTS,
	       bi->hdr_end - BZ_SETUP_SECTS);
	zp[BZ_TYPE_OF_LOADER] = 0xff; /* undefined loader */
	/* The loader's to fill, whatever the file holds: a PC, no
	 * setup_data list (a pointer from the file would lead the kernel
	 * into whatever guest memory holds there). */
	memset(zp + BZ_HARDWARE_SUBARCH, 0, 4 + 8);
	memset(zp + BZ_SETUP_DATA, 0, 8);
	put32(zp, BZ_CMD_LINE_PTR, cmdline_gpa);
	put32(zp, BZ_RAMDISK_IMAGE, initrd_size ? (uint32_t)initrd_gpa : 0);
	put32(zp, BZ_RAMDISK_SIZE, (uint32_t)initrd_size);
	memcpy(zp + BZ_ACPI_RSDP_ADDR, &rsdp_gpa, 8);
	zp[BZ_E820_ENTRIES] = (uint8_t)nmap;
	for (uint32_t i = 0; i < nmap; i++) {
		uint8_t *e = zp + BZ_E820_TABLE + i * 20;
		memcpy(e, &map[i].addr, 8);
		memcpy(e + 8, &map[i].size, 8);
		memcpy(e + 16, &map[i].type, 4);
	}
	return 0;
}
