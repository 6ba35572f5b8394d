/*
 * Direct kernel boot, two ways.
 *
 * PVH for ELF guests (Xen's x86/HVM direct boot ABI, as QEMU, Firecracker
 * and cloud-hypervisor use it): load the PT_LOAD segments at their physical
 * addresses, find the XEN_ELFNOTE_PHYS32_ENTRY note, write hvm_start_info
 * with the command line, an e820-style memory map and, given an initrd, one
 * module (Linux takes the first as its initrd), and start the BSP in 32-bit
 * protected mode with paging off, flat segments, %ebx = start info.
 *
 * A bzImage (a distribution's /boot/vmlinuz) through the Linux/x86 64-bit
 * boot protocol (bzimage.c checks it): the protected-mode kernel at its
 * preferred address, boot_params (the zero page) with the same memory map,
 * the command line and the initrd, and the BSP in 64-bit mode at the load
 * address + 0x200 with the first 4 GiB identity-mapped, %rsi = zero page.
 */
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <linux/kvm.h>

#include "vm.h"

#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define HVM_START_MAGIC 0x336ec578u

#define E820_RAM 1
#define E820_RESERVED 2

/* Boot data in low memory, below the test guest's AP trampoline (0x8000). */
#define BOOT_GDT_ADDR 0x500ull
#define START_INFO_ADDR 0x6000ull
#define MEMMAP_ADDR 0x6040ull
#define MEMMAP_MAX 8
#define MODLIST_ADDR 0x6100ull /* after the memory map's 8 entries */
#define CMDLINE_ADDR 0x7000ull
#define CMDLINE_MAX 0x1000ull
#define BOOT_DATA_END 0x8000ull
/* The 64-bit boot protocol's zero page, and page tables mapping 4 GiB with
 * 2 MiB pages (PML4, PDPT, 4 PDs), below the MP table. */
#define ZERO_PAGE_ADDR 0x1000ull
#define PML4_ADDR 0x9000ull
#define PDPT_ADDR 0xa000ull
#define PD_ADDR 0xb000ull
#define EBDA_START 0x9fc00ull
#define HIGH_RAM_START 0x100000ull

#define ELF_MAX_SIZE (512ull << 20)
#define ELF_MAX_PHDRS 64

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

struct hvm_modlist_entry {
	uint64_t paddr;
	uint64_t size;
	uint64_t cmdline_paddr;
	uint64_t reserved;
};

struct hvm_memmap_table_entry {
	uint64_t addr;
	uint64_t size;
	uint32_t type;
	uint32_t reserved;
};

/* One program header, whatever the ELF class. */
struct phdr {
	uint32_t type;
	uint64_t offset, paddr, filesz, memsz;
};

struct pvh_image {
	char *path;
	bool bz;               /* a bzImage, bi says where things go */
	struct bz_info bi;
	uint32_t entry;
	uint8_t *data;
	size_t size;
	bool is64;
	uint32_t phnum;
	struct phdr ph[ELF_MAX_PHDRS];
	/* An initrd: a file, and where it goes in guest RAM. */
	uint8_t *initrd;
	size_t initrd_size;
	uint64_t initrd_gpa;
};

/* The whole of a regular file of at most `max` bytes ("kernel" or "initrd"
 * in messages). */
static int read_file(const char *what, const char *path, uint64_t max,
		     uint8_t **data, size_t *size, mig_error *err)
{
	struct stat st;
	int fd, r;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return vmm_err(err, -errno, "%s %s: %s", what, path,
			       strerror(errno));
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return vmm_err(err, -EINVAL, "%s %s: not a regular file", what,
			       path);
	}
	if ((uint64_t)st.st_size > max) {
		close(fd);
		return vmm_err(err, -EFBIG, "%s %s: %lld bytes, more than "
			       "%llu MiB", what, path, (long long)st.st_size,
			       (unsigned long long)(max >> 20));
	}
	*size = (size_t)st.st_size;
	*data = malloc(*size ? *size : 1);
	if (!*data) {
		close(fd);
		return vmm_err(err, -ENOMEM, "%s %s: out of memory", what, path);
	}
	r = read_full(fd, *data, *size);
	close(fd);
	if (r < 0) {
		free(*data);
		*data = NULL;
		return vmm_err(err, r, "%s %s: read: %s", what, path,
			       strerror(-r));
	}
	return 0;
}

static int parse_headers(struct pvh_image *e, mig_error *err)
{
	const uint8_t *id = e->data;
	uint64_t phoff;
	uint32_t phentsize;

	if (e->size < EI_NIDENT || memcmp(id, ELFMAG, SELFMAG))
		return vmm_err(err, -ENOEXEC, "kernel %s: not an ELF file "
			       "(PVH) nor a bzImage", e->path);
	if (id[EI_DATA] != ELFDATA2LSB)
		return vmm_err(err, -ENOEXEC, "kernel %s: not a little-endian "
			       "ELF", e->path);
	if (id[EI_CLASS] == ELFCLASS64) {
		Elf64_Ehdr h;
		if (e->size < sizeof(h))
			return vmm_err(err, -ENOEXEC, "kernel %s: truncated "
				       "ELF header", e->path);
		memcpy(&h, e->data, sizeof(h));
		if (h.e_machine != EM_X86_64)
			return vmm_err(err, -ENOEXEC, "kernel %s: ELF64 for "
				       "machine %u, not x86-64 (%u)", e->path,
				       h.e_machine, EM_X86_64);
		e->is64 = true;
		phoff = h.e_phoff;
		phentsize = h.e_phentsize;
		e->phnum = h.e_phnum;
		if (phentsize != sizeof(Elf64_Phdr) && e->phnum)
			return vmm_err(err, -ENOEXEC, "kernel %s: program "
				       "header size %u", e->path, phentsize);
	} else if (id[EI_CLASS] == ELFCLASS32) {
		Elf32_Ehdr h;
		if (e->size < sizeof(h))
			return vmm_err(err, -ENOEXEC, "kernel %s: truncated "
				       "ELF header", e->path);
		memcpy(&h, e->data, sizeof(h));
		if (h.e_machine != EM_386)
			return vmm_err(err, -ENOEXEC, "kernel %s: ELF32 for "
				       "machine %u, not i386 (%u)", e->path,
				       h.e_machine, EM_386);
		phoff = h.e_phoff;
		phentsize = h.e_phentsize;
		e->phnum = h.e_phnum;
		if (phentsize != sizeof(Elf32_Phdr) && e->phnum)
			return vmm_err(err, -ENOEXEC, "kernel %s: program "
				       "header size %u", e->path, phentsize);
	} else {
		return vmm_err(err, -ENOEXEC, "kernel %s: unknown ELF class %u",
			       e->path, id[EI_CLASS]);
	}
	if (e->phnum == 0 || e->phnum > ELF_MAX_PHDRS)
		return vmm_err(err, -ENOEXEC, "kernel %s: %u program headers "
			       "(1..%d)", e->path, e->phnum, ELF_MAX_PHDRS);
	if (phoff > e->size || (uint64_t)e->phnum * phentsize > e->size - phoff)
		return vmm_err(err, -ENOEXEC, "kernel %s: program headers lie "
			       "outside the file (truncated?)", e->path);
	for (uint32_t i = 0; i < e->phnum; i++) {
		const uint8_t *p = e->data + phoff + (uint64_t)i * phentsize;
		struct phdr *ph = &e->ph[i];
		if (e->is64) {
			Elf64_Phdr h;
			memcpy(&h, p, sizeof(h));
			*ph = (struct phdr){ h.p_type, h.p_offset, h.p_paddr,
					     h.p_filesz, h.p_memsz };
		} else {
			Elf32_Phdr h;
			memcpy(&h, p, sizeof(h));
			*ph = (struct phdr){ h.p_type, h.p_offset, h.p_paddr,
					     h.p_filesz, h.p_memsz };
		}
		if (ph->type != PT_LOAD && ph->type != PT_NOTE)
			continue;
		if (ph->offset > e->size || ph->filesz > e->size - ph->offset)
			return vmm_err(err, -ENOEXEC, "kernel %s: segment %u "
				       "lies outside the file (truncated?)",
				       e->path, i);
		if (ph->type == PT_LOAD && ph->filesz > ph->memsz)
			return vmm_err(err, -ENOEXEC, "kernel %s: segment %u "
				       "has filesz > memsz", e->path, i);
	}
	return 0;
}

/* The PVH entry point from a XEN_ELFNOTE_PHYS32_ENTRY note. */
static int find_entry(struct pvh_image *e, uint32_t *entry, mig_error *err)
{
	for (uint32_t i = 0; i < e->phnum; i++) {
		const struct phdr *ph = &e->ph[i];
		uint64_t off = 0;

		if (ph->type != PT_NOTE)
			continue;
		while (ph->filesz - off >= 12) {
			const uint8_t *n = e->data + ph->offset + off;
			uint32_t namesz, descsz, type;
			uint64_t name_al, desc_al;

			memcpy(&namesz, n, 4);
			memcpy(&descsz, n + 4, 4);
			memcpy(&type, n + 8, 4);
			name_al = ((uint64_t)namesz + 3) & ~3ull;
			desc_al = ((uint64_t)descsz + 3) & ~3ull;
			if (name_al + desc_al > ph->filesz - off - 12)
				break; /* malformed note: stop looking */
			if (type == XEN_ELFNOTE_PHYS32_ENTRY && namesz == 4 &&
			    !memcmp(n + 12, "Xen", 4) &&
			    (descsz == 4 || descsz == 8)) {
				uint64_t v = 0;
				memcpy(&v, n + 12 + name_al, descsz);
				if (v > UINT32_MAX)
					return vmm_err(err, -ENOEXEC, "kernel "
						       "%s: PVH entry 0x%llx "
						       "above 4 GiB", e->path,
						       (unsigned long long)v);
				*entry = (uint32_t)v;
				return 0;
			}
			off += 12 + name_al + desc_al;
		}
	}
	return vmm_err(err, -ENOEXEC, "kernel %s: no PVH entry point (ELF note "
		       "\"Xen\" type %d, XEN_ELFNOTE_PHYS32_ENTRY)", e->path,
		       XEN_ELFNOTE_PHYS32_ENTRY);
}

/* Every PT_LOAD must lie in guest RAM (of the layout mem_layout() gives)
 * above the boot data, and the entry inside one of them. */
static int check_segments(struct pvh_image *e, uint64_t mem_mib,
			  mig_error *err)
{
	mig_region rg[VM_MAX_REGIONS];
	uint32_t nr = mem_layout(mem_mib, rg);
	bool entry_loaded = false;

	for (uint32_t i = 0; i < e->phnum; i++) {
		const struct phdr *ph = &e->ph[i];
		bool inside = false;

		if (ph->type != PT_LOAD || ph->memsz == 0)
			continue;
		if (ph->paddr < BOOT_DATA_END)
			return vmm_err(err, -ENOEXEC, "kernel %s: segment %u "
				       "at 0x%llx overlaps the boot data below "
				       "0x%llx", e->path, i,
				       (unsigned long long)ph->paddr,
				       BOOT_DATA_END);
		for (uint32_t k = 0; k < nr && !inside; k++)
			inside = ph->paddr >= rg[k].gpa &&
				 ph->paddr - rg[k].gpa < rg[k].size &&
				 ph->memsz <= rg[k].size - (ph->paddr - rg[k].gpa);
		if (!inside)
			return vmm_err(err, -ENOEXEC, "kernel %s: segment %u "
				       "[0x%llx, +0x%llx) lies outside guest RAM "
				       "(%llu MiB)", e->path, i,
				       (unsigned long long)ph->paddr,
				       (unsigned long long)ph->memsz,
				       (unsigned long long)mem_mib);
		if (e->entry >= ph->paddr && e->entry - ph->paddr < ph->memsz)
			entry_loaded = true;
	}
	if (!entry_loaded)
		return vmm_err(err, -ENOEXEC, "kernel %s: PVH entry 0x%x is not "
			       "inside a loaded segment", e->path, e->entry);
	return 0;
}

/*
 * The initrd goes at the top of the RAM below 4 GiB (region 0), page
 * aligned, as other loaders put it: above the kernel's segments, which it
 * must not touch, and where the kernel's early allocations are not.
 */
static int place_initrd(struct pvh_image *e, const char *path,
			uint64_t mem_mib, mig_error *err)
{
	mig_region rg[VM_MAX_REGIONS];
	uint64_t kend = HIGH_RAM_START, top;

	if (!e->initrd_size)
		return vmm_err(err, -EINVAL, "initrd %s: an empty file", path);
	mem_layout(mem_mib, rg);
	top = rg[0].gpa + rg[0].size;
	for (uint32_t i = 0; i < e->phnum; i++) {
		const struct phdr *ph = &e->ph[i];
		if (ph->type == PT_LOAD && ph->memsz &&
		    ph->paddr < top && ph->paddr + ph->memsz > kend)
			kend = ph->paddr + ph->memsz;
	}
	kend = (kend + 0xfff) & ~0xfffull;
	if (e->initrd_size > top - kend)
		return vmm_err(err, -ENOSPC, "initrd %s: %zu bytes do not fit "
			       "in guest RAM between the kernel's end (0x%llx) "
			       "and 0x%llx; give the VM more --mem", path,
			       e->initrd_size, (unsigned long long)kend,
			       (unsigned long long)top);
	e->initrd_gpa = (top - e->initrd_size) & ~0xfffull;
	return 0;
}

static void load_segments(struct vm *vm, struct pvh_image *e)
{
	for (uint32_t i = 0; i < e->phnum; i++) {
		const struct phdr *ph = &e->ph[i];
		uint8_t *dst;

		if (ph->type != PT_LOAD || ph->memsz == 0)
			continue;
		dst = mem_gpa_to_hva(vm, ph->paddr, ph->memsz);
		memcpy(dst, e->data + ph->offset, ph->filesz);
		memset(dst + ph->filesz, 0, ph->memsz - ph->filesz);
	}
	if (e->initrd_size)
		memcpy(mem_gpa_to_hva(vm, e->initrd_gpa, e->initrd_size),
		       e->initrd, e->initrd_size);
}

/* The memory map both boot ABIs give: low RAM, the reserved EBDA and BIOS
 * area, and the RAM of every region above 1 MiB. */
static uint32_t memory_map(struct vm *vm, struct boot_e820 map[MEMMAP_MAX])
{
	uint32_t n = 0;

	map[n++] = (struct boot_e820){ 0, EBDA_START, E820_RAM };
	map[n++] = (struct boot_e820){ EBDA_START, HIGH_RAM_START - EBDA_START,
				       E820_RESERVED };
	for (uint32_t i = 0; i < vm->nr_regions && n < MEMMAP_MAX; i++) {
		const mig_region *rg = &vm->regions[i];
		uint64_t start = rg->gpa < HIGH_RAM_START ? HIGH_RAM_START
							  : rg->gpa;
		if (rg->gpa + rg->size > start)
			map[n++] = (struct boot_e820){
				start, rg->gpa + rg->size - start, E820_RAM };
	}
	return n;
}

static int write_start_info(struct vm *vm, const struct pvh_image *e,
			    const char *cmdline, mig_error *err)
{
	struct hvm_memmap_table_entry map[MEMMAP_MAX];
	struct boot_e820 m[MEMMAP_MAX];
	struct hvm_start_info si;
	size_t clen = strlen(cmdline);
	uint32_t n = memory_map(vm, m);

	if (clen >= CMDLINE_MAX)
		return vmm_err(err, -E2BIG, "command line of %zu bytes, at most "
			       "%llu", clen, CMDLINE_MAX - 1);
	for (uint32_t i = 0; i < n; i++)
		map[i] = (struct hvm_memmap_table_entry){ m[i].addr, m[i].size,
							  m[i].type, 0 };
	memset(&si, 0, sizeof(si));
	si.magic = HVM_START_MAGIC;
	si.version = 1;
	si.cmdline_paddr = CMDLINE_ADDR;
	si.memmap_paddr = MEMMAP_ADDR;
	si.memmap_entries = n;
	si.rsdp_paddr = ACPI_TABLES_ADDR;
	if (e->initrd_size) {
		struct hvm_modlist_entry mod = {
			.paddr = e->initrd_gpa, .size = e->initrd_size };
		si.nr_modules = 1;
		si.modlist_paddr = MODLIST_ADDR;
		memcpy(mem_gpa_to_hva(vm, MODLIST_ADDR, sizeof(mod)), &mod,
		       sizeof(mod));
	}
	memcpy(mem_gpa_to_hva(vm, START_INFO_ADDR, sizeof(si)), &si, sizeof(si));
	memcpy(mem_gpa_to_hva(vm, MEMMAP_ADDR, n * sizeof(map[0])), map,
	       n * sizeof(map[0]));
	memcpy(mem_gpa_to_hva(vm, CMDLINE_ADDR, clen + 1), cmdline, clen + 1);
	return 0;
}

static void flat_seg(struct kvm_segment *s, uint16_t sel, uint8_t type)
{
	memset(s, 0, sizeof(*s));
	s->base = 0;
	s->limit = 0xffffffff;
	s->selector = sel;
	s->type = type;
	s->present = 1;
	s->dpl = 0;
	s->db = 1;
	s->s = 1;
	s->g = 1;
}

/* BSP: 32-bit protected mode, paging off, flat segments (PVH ABI). */
static int setup_bsp(struct vm *vm, uint32_t entry, mig_error *err)
{
	static const uint64_t gdt[4] = {
		0,
		0x00cf9b000000ffffull, /* 0x08: code, 4 GiB, 32-bit */
		0x00cf93000000ffffull, /* 0x10: data */
		0x00008b0000000067ull, /* 0x18: 32-bit TSS, busy */
	};
	struct vcpu *v = &vm->vcpus[0];
	struct kvm_sregs s;
	struct kvm_regs r;

	memcpy(mem_gpa_to_hva(vm, BOOT_GDT_ADDR, sizeof(gdt)), gdt, sizeof(gdt));
	if (ioctl(v->fd, KVM_GET_SREGS, &s) < 0)
		return vmm_err(err, -errno, "KVM_GET_SREGS: %s", strerror(errno));
	flat_seg(&s.cs, 0x08, 0xb);
	flat_seg(&s.ds, 0x10, 0x3);
	s.es = s.fs = s.gs = s.ss = s.ds;
	memset(&s.tr, 0, sizeof(s.tr));
	s.tr.selector = 0x18;
	s.tr.limit = 0x67;
	s.tr.type = 0xb;
	s.tr.present = 1;
	s.gdt.base = BOOT_GDT_ADDR;
	s.gdt.limit = sizeof(gdt) - 1;
	s.idt.base = 0;
	s.idt.limit = 0;
	s.cr0 = 0x11; /* PE | ET */
	s.cr3 = 0;
	s.cr4 = 0;
	s.efer = 0;
	if (ioctl(v->fd, KVM_SET_SREGS, &s) < 0)
		return vmm_err(err, -errno, "KVM_SET_SREGS: %s", strerror(errno));
	memset(&r, 0, sizeof(r));
	r.rflags = 0x2;
	r.rip = entry;
	r.rbx = START_INFO_ADDR;
	if (ioctl(v->fd, KVM_SET_REGS, &r) < 0)
		return vmm_err(err, -errno, "KVM_SET_REGS: %s", strerror(errno));
	return 0;
}

/* The 64-bit boot protocol: long mode, the first 4 GiB identity-mapped
 * with 2 MiB pages, __BOOT_CS (0x10) and __BOOT_DS (0x18), %rsi = the zero
 * page, interrupts off. */
static int setup_bsp64(struct vm *vm, uint64_t entry, mig_error *err)
{
	static const uint64_t gdt[4] = {
		0,
		0,
		0x00af9b000000ffffull, /* 0x10: code, 64-bit */
		0x00cf93000000ffffull, /* 0x18: data */
	};
	struct vcpu *v = &vm->vcpus[0];
	uint64_t *pml4, *pdpt, *pd;
	struct kvm_sregs s;
	struct kvm_regs r;

	pml4 = mem_gpa_to_hva(vm, PML4_ADDR, 0x1000);
	pdpt = mem_gpa_to_hva(vm, PDPT_ADDR, 0x1000);
	pd = mem_gpa_to_hva(vm, PD_ADDR, 4 * 0x1000);
	memset(pml4, 0, 0x1000);
	memset(pdpt, 0, 0x1000);
	pml4[0] = PDPT_ADDR | 0x3; /* present, writable */
	for (uint64_t i = 0; i < 4; i++)
		pdpt[i] = (PD_ADDR + i * 0x1000) | 0x3;
	for (uint64_t i = 0; i < 4 * 512; i++)
		pd[i] = (i << 21) | 0x83; /* present, writable, 2 MiB */
	memcpy(mem_gpa_to_hva(vm, BOOT_GDT_ADDR, sizeof(gdt)), gdt, sizeof(gdt));

	if (ioctl(v->fd, KVM_GET_SREGS, &s) < 0)
		return vmm_err(err, -errno, "KVM_GET_SREGS: %s", strerror(errno));
	flat_seg(&s.cs, 0x10, 0xb);
	s.cs.l = 1;
	s.cs.db = 0;
	flat_seg(&s.ds, 0x18, 0x3);
	s.es = s.fs = s.gs = s.ss = s.ds;
	memset(&s.tr, 0, sizeof(s.tr));
	s.tr.limit = 0x67;
	s.tr.type = 0xb; /* 64-bit TSS, busy */
	s.tr.present = 1;
	s.gdt.base = BOOT_GDT_ADDR;
	s.gdt.limit = sizeof(gdt) - 1;
	s.idt.base = 0;
	s.idt.limit = 0;
	s.cr3 = PML4_ADDR;
	s.cr4 = 0x20;         /* PAE */
	s.efer = 0x500;       /* LME | LMA */
	s.cr0 = 0x80000011;   /* PG | ET | PE */
	if (ioctl(v->fd, KVM_SET_SREGS, &s) < 0)
		return vmm_err(err, -errno, "KVM_SET_SREGS: %s", strerror(errno));
	memset(&r, 0, sizeof(r));
	r.rflags = 0x2;
	r.rip = entry;
	r.rsi = ZERO_PAGE_ADDR;
	if (ioctl(v->fd, KVM_SET_REGS, &r) < 0)
		return vmm_err(err, -errno, "KVM_SET_REGS: %s", strerror(errno));
	return 0;
}

/* What firmware would leave for the guest to find its CPUs, IOAPIC and
 * power control: the MP table (acpi=off) and the ACPI tables. */
static int firmware_tables(struct vm *vm, mig_error *err)
{
	uint8_t *acpi = mem_gpa_to_hva(vm, ACPI_TABLES_ADDR, ACPI_TABLES_MAX);
	size_t used;
	int r = mptable_write(vm, vm->cfg.cpus, err);

	if (r < 0)
		return r;
	if (!acpi)
		return vmm_err(err, -EINVAL, "ACPI tables: no RAM at 0x%llx",
			       (unsigned long long)ACPI_TABLES_ADDR);
	return acpi_build(acpi, ACPI_TABLES_MAX, ACPI_TABLES_ADDR,
			  vm->cfg.cpus, &used, err);
}

static int bz_load(struct vm *vm, struct pvh_image *e, const char *cmdline,
		   mig_error *err)
{
	struct boot_e820 map[MEMMAP_MAX];
	size_t clen = strlen(cmdline);
	uint32_t n = memory_map(vm, map);
	int r;

	memcpy(mem_gpa_to_hva(vm, e->bi.load_addr, e->bi.kernel_size),
	       e->data + e->bi.kernel_off, e->bi.kernel_size);
	if (e->initrd_size)
		memcpy(mem_gpa_to_hva(vm, e->initrd_gpa, e->initrd_size),
		       e->initrd, e->initrd_size);
	memcpy(mem_gpa_to_hva(vm, CMDLINE_ADDR, clen + 1), cmdline, clen + 1);
	r = bz_zero_page(mem_gpa_to_hva(vm, ZERO_PAGE_ADDR, 4096), e->data,
			 &e->bi, CMDLINE_ADDR, e->initrd_gpa, e->initrd_size,
			 ACPI_TABLES_ADDR, map, n, err);
	if (r < 0 || (r = firmware_tables(vm, err)) < 0)
		return r;
	return setup_bsp64(vm, e->bi.load_addr + 0x200, err);
}

void pvh_close(struct pvh_image *img)
{
	if (!img)
		return;
	free(img->data);
	free(img->initrd);
	free(img->path);
	free(img);
}

int pvh_open(const char *path, uint64_t mem_mib, const char *cmdline,
	     const char *initrd, struct pvh_image **out, mig_error *err)
{
	mig_region rg[VM_MAX_REGIONS];
	struct pvh_image *e;
	uint64_t top;
	int r;

	*out = NULL;
	if (strlen(cmdline) >= CMDLINE_MAX)
		return vmm_err(err, -E2BIG, "command line of %zu bytes, at most "
			       "%llu", strlen(cmdline), CMDLINE_MAX - 1);
	if ((mem_mib << 20) < HIGH_RAM_START * 2)
		return vmm_err(err, -EINVAL, "direct kernel boot needs at "
			       "least 2 MiB of RAM");
	e = calloc(1, sizeof(*e));
	if (!e || !(e->path = strdup(path))) {
		free(e);
		return vmm_err(err, -ENOMEM, "out of memory");
	}
	mem_layout(mem_mib, rg);
	top = rg[0].gpa + rg[0].size;
	if ((r = read_file("kernel", path, ELF_MAX_SIZE, &e->data, &e->size,
			   err)) == 0) {
		e->bz = bz_probe(e->data, e->size);
		if (e->bz)
			r = bz_parse(path, e->data, e->size, top,
				     strlen(cmdline), &e->bi, err);
		else if ((r = parse_headers(e, err)) == 0 &&
			 (r = find_entry(e, &e->entry, err)) == 0)
			r = check_segments(e, mem_mib, err);
	}
	if (r == 0 && initrd &&
	    (r = read_file("initrd", initrd, mem_mib << 20, &e->initrd,
			   &e->initrd_size, err)) == 0)
		r = e->bz ? bz_place_initrd(initrd, &e->bi, top, e->initrd_size,
					    &e->initrd_gpa, err)
			  : place_initrd(e, initrd, mem_mib, err);
	if (r < 0) {
		pvh_close(e);
		return r;
	}
	*out = e;
	return 0;
}

int pvh_load(struct vm *vm, struct pvh_image *img, const char *cmdline,
	     mig_error *err)
{
	int r;

	if (img->bz)
		return bz_load(vm, img, cmdline, err);
	load_segments(vm, img);
	r = write_start_info(vm, img, cmdline, err);
	if (r < 0 || (r = firmware_tables(vm, err)) < 0)
		return r;
	return setup_bsp(vm, img->entry, err);
}
