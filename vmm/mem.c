/*
 * Guest RAM: one memfd (default) or shared anonymous mapping of the whole
 * size, MAP_NORESERVE so that untouched memory costs nothing, split into KVM
 * slots around the 32-bit PCI hole: slot 0 = [0, min(mem, 3 GiB)),
 * slot 1 = [4 GiB, 4 GiB + the rest).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/sysinfo.h>
#include <unistd.h>
#include <linux/kvm.h>

#include "vm.h"

/* MemAvailable + SwapFree in bytes, or 0 when /proc/meminfo is unreadable. */
static uint64_t host_mem_available(void)
{
	unsigned long long avail = 0, swap = 0, v;
	char line[256];
	FILE *f = fopen("/proc/meminfo", "re");

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "MemAvailable: %llu kB", &v) == 1)
			avail = v;
		else if (sscanf(line, "SwapFree: %llu kB", &v) == 1)
			swap = v;
	}
	fclose(f);
	return (avail + swap) * 1024ull;
}

uint32_t mem_layout(uint64_t mem_mib, mig_region out[VM_MAX_REGIONS])
{
	uint64_t size = mem_mib << 20;
	uint64_t low = size < VM_LOW_MEM_MAX ? size : VM_LOW_MEM_MAX;
	uint32_t n = 0;

	out[n++] = (mig_region){ .slot = 0, .gpa = 0, .size = low };
	if (size > low)
		out[n++] = (mig_region){ .slot = 1, .gpa = VM_HIGH_MEM_BASE,
					 .size = size - low };
	return n;
}

int mem_check_host(uint64_t mem_mib, mig_error *err)
{
	uint64_t avail = host_mem_available();

	if (avail && (mem_mib << 20) > avail)
		return vmm_err(err, -ENOMEM, "--mem %llu MiB: more than the "
			       "host can give (MemAvailable + SwapFree = %llu "
			       "MiB)", (unsigned long long)mem_mib,
			       (unsigned long long)(avail >> 20));
	return 0;
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

struct prealloc_part {
	uint8_t *start;
	size_t len;
	int err;
	pthread_t thread;
};

static void *prealloc_part(void *arg)
{
	struct prealloc_part *p = arg;

	if (madvise(p->start, p->len, MADV_POPULATE_WRITE) == 0)
		return NULL;
	p->err = errno;
	if (p->err != EINVAL)
		return NULL;
	/* Before Linux 5.14: a write to each page (RAM is all zero yet). */
	p->err = 0;
	for (size_t off = 0; off < p->len; off += 4096)
		((volatile uint8_t *)p->start)[off] = 0;
	return NULL;
}

/*
 * --prealloc: back all of guest RAM now, as QEMU's -mem-prealloc does, a
 * thread per CPU (up to 8). Allocation is paid before the VM runs or an
 * incoming migration is announced, not while pages arrive, and a host
 * without the memory says so now instead of killing the VM later.
 */
static int mem_prealloc(struct vm *vm, mig_error *err)
{
	struct prealloc_part parts[8];
	int n = get_nprocs();
	size_t chunk, off = 0;
	int i, started = 0, r = 0;

	n = n < 1 ? 1 : n > 8 ? 8 : n;
	chunk = (vm->mem_size / (size_t)n + (2u << 20) - 1) & ~((size_t)(2u << 20) - 1);
	for (i = 0; i < n && off < vm->mem_size; i++) {
		parts[i].start = vm->mem + off;
		parts[i].len = vm->mem_size - off < chunk ? vm->mem_size - off
							  : chunk;
		parts[i].err = 0;
		off += parts[i].len;
		if (pthread_create(&parts[i].thread, NULL, prealloc_part,
				   &parts[i]) != 0) {
			prealloc_part(&parts[i]);
			parts[i].thread = 0;
		}
		started++;
	}
	for (i = 0; i < started; i++) {
		if (parts[i].thread)
			pthread_join(parts[i].thread, NULL);
		if (parts[i].err && !r)
			r = -parts[i].err;
	}
	if (r)
		return vmm_err(err, r, "--prealloc: cannot back %llu MiB of "
			       "guest RAM: %s", (unsigned long long)vm->cfg.mem_mib,
			       strerror(-r));
	return 0;
}

int mem_init(struct vm *vm, mig_error *err)
{
	uint64_t size = vm->cfg.mem_mib << 20;
	uint64_t off = 0;
	int r;

	vm->mem_fd = -1;
	vm->mem = MAP_FAILED;
	if (vm->cfg.backend == MEM_BACKEND_MEMFD) {
		vm->mem_fd = memfd_create("migvm-ram", MFD_CLOEXEC);
		if (vm->mem_fd < 0)
			return vmm_err(err, -errno, "memfd_create: %s",
				       strerror(errno));
		if (ftruncate(vm->mem_fd, (off_t)size) < 0) {
			r = -errno;
			vmm_err(err, r, "guest RAM of %llu MiB: ftruncate: %s",
				(unsigned long long)vm->cfg.mem_mib,
				strerror(-r));
			goto fail;
		}
		vm->mem = mmap(NULL, size, PROT_READ | PROT_WRITE,
			       MAP_SHARED | MAP_NORESERVE, vm->mem_fd, 0);
	} else if (vm->cfg.backend == MEM_BACKEND_ANON) {
		vm->mem = mmap(NULL, size, PROT_READ | PROT_WRITE,
			       MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	} else {
		vm->mem = mmap(NULL, size, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		/* Huge pages where the host allows them ("madvise" mode):
		 * fewer faults when the guest fills RAM. Not yet when an
		 * incoming migration or a restore is to fill it: on the
		 * nested hosts we test on, free 2 MiB blocks go back to the
		 * outer host, so a huge page costs its outer faults (2.0-2.2
		 * s per GiB), while base pages come first from free memory
		 * fragmented below 2 MiB, still backed (0.3 s per GiB; ~0.5
		 * GiB of it here, 1.8-1.9 s past it). A migration's round 1
		 * took 30-40% of the time, a 512 MiB restore 0.33 s instead
		 * of 1.1-1.2. mem_filled() gives the RAM to THP again, for
		 * khugepaged and for the pages the guest touches later. */
		if (vm->mem != MAP_FAILED)
			madvise(vm->mem, size, vm->cfg.fill_base_pages
				? MADV_NOHUGEPAGE : MADV_HUGEPAGE);
	}
	if (vm->mem == MAP_FAILED) {
		r = -errno;
		vmm_err(err, r, "guest RAM of %llu MiB: mmap: %s",
			(unsigned long long)vm->cfg.mem_mib, strerror(-r));
		goto fail;
	}
	vm->mem_size = size;
	/* Guest RAM in a core dump would be huge and is rarely useful. */
	madvise(vm->mem, size, MADV_DONTDUMP);
	if (vm->cfg.prealloc && (r = mem_prealloc(vm, err)) < 0)
		goto fail;

	vm->nr_regions = mem_layout(vm->cfg.mem_mib, vm->regions);
	for (uint32_t i = 0; i < vm->nr_regions; i++) {
		mig_region *rg = &vm->regions[i];
		struct kvm_userspace_memory_region kr = {
			.slot = rg->slot,
			.guest_phys_addr = rg->gpa,
			.memory_size = rg->size,
			.userspace_addr = (uint64_t)(uintptr_t)(vm->mem + off),
		};
		rg->hva = vm->mem + off;
		off += rg->size;
		if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &kr) < 0) {
			r = -errno;
			vmm_err(err, r, "KVM_SET_USER_MEMORY_REGION (slot %u, "
				"%llu MiB at 0x%llx): %s", rg->slot,
				(unsigned long long)(rg->size >> 20),
				(unsigned long long)rg->gpa, strerror(-r));
			goto fail;
		}
	}
	return 0;
fail:
	mem_exit(vm);
	return r;
}

void mem_exit(struct vm *vm)
{
	if (vm->mem && vm->mem != MAP_FAILED)
		munmap(vm->mem, vm->mem_size ? vm->mem_size
			       : vm->cfg.mem_mib << 20);
	vm->mem = NULL;
	vm->mem_size = 0;
	vm->nr_regions = 0;
	if (vm->mem_fd >= 0)
		close(vm->mem_fd);
	vm->mem_fd = -1;
}

void mem_filled(struct vm *vm)
{
	if (vm->cfg.backend != MEM_BACKEND_PRIVATE || !vm->cfg.fill_base_pages ||
	    !vm->mem_size)
		return;
	/* Only a hint: a host without THP refuses, and nothing is lost. */
	madvise(vm->mem, vm->mem_size, MADV_HUGEPAGE);
	vm->cfg.fill_base_pages = false;
}

void *mem_gpa_to_hva(struct vm *vm, uint64_t gpa, uint64_t len)
{
	for (uint32_t i = 0; i < vm->nr_regions; i++) {
		mig_region *rg = &vm->regions[i];
		if (gpa >= rg->gpa && gpa - rg->gpa <= rg->size &&
		    len <= rg->size - (gpa - rg->gpa))
			return (uint8_t *)rg->hva + (gpa - rg->gpa);
	}
	return NULL;
}

uint32_t vm_regions(struct vm *vm, const mig_region **out)
{
	*out = vm->regions;
	return vm->nr_regions;
}
