/*
 * mig__mem_resident(): which guest pages hold anything, without reading
 * them, so that round 1 can skip memory the guest never touched.
 *
 * mincore() answers for the page cache of shared anonymous (shmem), memfd
 * and /dev/shm mappings and for the page tables of private anonymous ones,
 * whether or not this process has the page mapped. A page it calls absent
 * reads as zeros unless it was swapped out, or the mapping is a regular file
 * (absent from the cache is not empty there): in those cases we answer
 * "everything holds data", which costs only the optimization.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sysinfo.h>

#include "dirty.h"

#define CHUNK_PAGES 65536u

static bool swap_in_use(void)
{
	struct sysinfo si;

	if (sysinfo(&si) != 0)
		return true;
	return si.totalswap != si.freeswap;
}

static void set_range(uint64_t *bitmap, uint64_t from, uint64_t to)
{
	for (uint64_t p = from; p < to; p++)
		bitmap[p / 64] |= UINT64_C(1) << (p % 64);
}

/* Is a mapping with this /proc/self/maps path and inode one where
 * "not resident" means "zero"? */
static bool zero_when_absent(unsigned long inode, const char *path)
{
	if (inode == 0)
		return true; /* private anonymous, [heap], [stack] */
	return !strncmp(path, "/dev/zero", 9) || /* shared anonymous */
	       !strncmp(path, "/memfd:", 7) ||
	       !strncmp(path, "/dev/shm/", 9) ||
	       !strncmp(path, "/SYSV", 5);
}

/*
 * Mark [lo, hi) (addresses) pages of mappings we cannot judge in `bitmap`
 * (page indexes relative to `base`; NULL: only tell). Returns 1 if there
 * were any, 0 if not, -EFAULT if part of the range is not mapped.
 */
static int mark_unjudgeable(uintptr_t base, uintptr_t lo, uintptr_t hi,
			    uint64_t *bitmap, mig_error *err)
{
	FILE *f = fopen("/proc/self/maps", "re");
	char *line = NULL;
	size_t cap = 0;
	uintptr_t covered = lo;
	int found = 0;

	if (!f) {
		/* No /proc: we cannot tell, so everything may hold data. */
		if (bitmap)
			set_range(bitmap, (lo - base) / MIG_PAGE_SIZE,
				  (hi - base) / MIG_PAGE_SIZE);
		return 1;
	}
	while (covered < hi && getline(&line, &cap, f) > 0) {
		unsigned long start, end, inode;
		int path_at = 0;
		char *path;

		if (sscanf(line, "%lx-%lx %*s %*s %*s %lu %n", &start, &end,
			   &inode, &path_at) < 3)
			continue;
		if (end <= covered || start >= hi)
			continue;
		if (start > covered)
			break; /* a hole */
		path = line + path_at;
		path[strcspn(path, "\n")] = '\0';
		end = MIG_MIN(end, hi);
		if (!zero_when_absent(inode, path)) {
			found = 1;
			if (bitmap)
				set_range(bitmap, (covered - base) / MIG_PAGE_SIZE,
					  (end - base) / MIG_PAGE_SIZE);
		}
		covered = end;
	}
	free(line);
	fclose(f);
	if (covered < hi)
		return mig__err(err, -EFAULT,
				"guest memory at %#lx is not mapped in this process",
				(unsigned long)covered);
	return found;
}

static int check_region(const mig_region *r, mig_error *err)
{
	if (!r->hva || (uintptr_t)r->hva % MIG_PAGE_SIZE ||
	    r->size % MIG_PAGE_SIZE)
		return mig__err(err, -EINVAL, "slot %u: bad region", r->slot);
	return 0;
}

int mig__mem_absent_is_zero(const mig_region *r, mig_error *err)
{
	uintptr_t base = (uintptr_t)r->hva;
	int rc = check_region(r, err);

	if (rc < 0)
		return rc;
	rc = mark_unjudgeable(base, base, base + r->size, NULL, err);
	return rc < 0 ? rc : !rc;
}

long mig__mem_resident(const mig_region *r, uint64_t first_page,
		       uint64_t npages, bool absent_is_zero, uint64_t *bitmap,
		       mig_error *err)
{
	uint64_t total = r->size / MIG_PAGE_SIZE, end = first_page + npages;
	uintptr_t base = (uintptr_t)r->hva;
	unsigned char *vec;
	long count = 0;
	int rc;

	if ((rc = check_region(r, err)) < 0)
		return rc;
	if (first_page > total || npages > total - first_page)
		return mig__err(err, -EINVAL,
				"slot %u: pages %llu+%llu outside the region (%llu pages)",
				r->slot, (unsigned long long)first_page,
				(unsigned long long)npages,
				(unsigned long long)total);
	if (!npages)
		return 0;

	vec = malloc(MIG_MIN(npages, (uint64_t)CHUNK_PAGES));
	if (!vec)
		return mig__err(err, -ENOMEM, "out of memory");
	for (uint64_t p = first_page; p < end; p += CHUNK_PAGES) {
		uint64_t n = MIG_MIN((uint64_t)CHUNK_PAGES, end - p);

		if (mincore((void *)(base + p * MIG_PAGE_SIZE),
			    n * MIG_PAGE_SIZE, vec) != 0) {
			rc = -errno;
			free(vec);
			if (rc == -ENOMEM)
				rc = -EFAULT;
			return mig__err(err, rc,
					"slot %u: mincore(pages %llu+%llu): %s",
					r->slot, (unsigned long long)p,
					(unsigned long long)n, mig_strerror(rc));
		}
		for (uint64_t i = 0; i < n; i++)
			if (vec[i] & 1)
				bitmap[(p + i) / 64] |= UINT64_C(1) << ((p + i) % 64);
	}
	free(vec);

	/* Checked after mincore: a page swapped out before it was looked at
	 * shows up as swap in use now. */
	if (swap_in_use()) {
		set_range(bitmap, first_page, end);
	} else if (!absent_is_zero) {
		rc = mark_unjudgeable(base, base + first_page * MIG_PAGE_SIZE,
				      base + end * MIG_PAGE_SIZE, bitmap, err);
		if (rc < 0)
			return rc;
	}
	for (uint64_t w = first_page / 64; w < mig__bitmap_words(end); w++) {
		uint64_t m = bitmap[w];
		if (w == first_page / 64 && first_page % 64)
			m &= ~UINT64_C(0) << (first_page % 64);
		if (w == (end - 1) / 64 && end % 64)
			m &= (UINT64_C(1) << (end % 64)) - 1;
		count += __builtin_popcountll(m);
	}
	return count;
}
