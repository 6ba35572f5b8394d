/*
 * What dirty tracking costs, per backend, on a guest of SIZE MiB (default
 * 1024) that has touched all its memory and then dirties a few pages per
 * round:
 *
 *   kvm_bench_dirty [SIZE_MIB [DIRTY_PAGES]]    (--smoke: 64 MiB, quick)
 *
 * Columns: start (enable logging), sync 1 (the first sync: all pages),
 * rearm 1 (clear mode: round 1's rearm of every page, in 1024-page chunks),
 * then medians over 15 rounds of: sync with DIRTY_PAGES (default 100) pages
 * dirtied, the rearm of the chunks holding them, and a sync with nothing
 * dirtied; then one final sync (stop-and-copy) after DIRTY_PAGES more.
 * Compare modes within one run; absolute numbers depend on the machine.
 * Exit 77 without /dev/kvm.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "dirty.h"
#include "tvm.h"

#define ROUNDS 15
#define MAX_CHUNKS 1024 /* enough for 1 GiB in 1024-page chunks */

static uint64_t chunks[MAX_CHUNKS];

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static double median_us(uint64_t *ns, int n)
{
	qsort(ns, (size_t)n, sizeof(*ns), cmp_u64);
	return (double)ns[n / 2] / 1000.0;
}

static int bench(mig_dirty_log mode, uint64_t pages, uint32_t dirty)
{
	struct tvm_opts o = { .area_pages = pages, .writes_per_iter = 1,
			      .ring_entries = mode == MIG_DIRTY_LOG_RING ? 4096 : 0 };
	uint64_t t0, start_ns, sync1_ns, rearm1_ns = 0, final_ns;
	uint64_t sync_ns[ROUNDS], rearm_ns[ROUNDS], idle_ns[ROUNDS];
	long reported = 0;
	size_t nchunks;
	char why[256] = "";
	mig_error err = { 0 };
	uint64_t *bits[2];
	struct tvm t;
	mig_dirty *d = NULL;
	int r;

	r = tvm_create(&t, &o, why, sizeof(why));
	if (r == 77)
		return 77;
	if (r != 0) {
		fprintf(stderr, "tvm_create: %s\n", why);
		return 1;
	}
	/* The guest touches all of its memory once, untracked. */
	if (tvm_set_workload(&t, 0, (uint32_t)pages, true) < 0 ||
	    tvm_step(&t, 0) < 0 ||
	    tvm_set_workload(&t, 0, dirty, false) < 0) {
		fprintf(stderr, "guest: %s\n", t.vcpu[0].why);
		goto fail;
	}
	for (int i = 0; i < 2; i++) {
		bits[i] = calloc(mig__bitmap_words(t.regions[i].size / 4096), 8);
		if (!bits[i])
			goto fail;
	}
	if (mig__dirty_create(&d, mode, t.vm_fd, t.regions, 2, t.vcpu_fds,
			      t.nr_vcpus, &err) < 0)
		goto fail_err;

	t0 = mig__now_ns();
	if (mig__dirty_start(d, &err) < 0)
		goto fail_err;
	start_ns = mig__now_ns() - t0;
	t0 = mig__now_ns();
	if (mig__dirty_sync(d, bits, &err) < 0)
		goto fail_err;
	sync1_ns = mig__now_ns() - t0;
	for (int i = 0; i < 2; i++) {
		uint64_t np = t.regions[i].size / 4096;
		t0 = mig__now_ns();
		for (uint64_t p = 0; p < np; p += 1024)
			if (mig__dirty_rearm(d, (uint32_t)i, p,
					     MIG_MIN(1024, np - p), &err) < 0)
				goto fail_err;
		rearm1_ns += mig__now_ns() - t0;
		memset(bits[i], 0, mig__bitmap_words(np) * 8);
	}

	for (int k = 0; k < ROUNDS; k++) {
		long n;

		if (tvm_step(&t, 0) < 0) {
			fprintf(stderr, "guest: %s\n", t.vcpu[0].why);
			goto fail;
		}
		t0 = mig__now_ns();
		n = mig__dirty_sync(d, bits, &err);
		if (n < 0)
			goto fail_err;
		sync_ns[k] = mig__now_ns() - t0;
		reported += n;
		/* What an engine would rearm: the 1024-page chunks that hold
		 * reported pages (found first, untimed). */
		nchunks = 0;
		for (int i = 0; i < 2; i++) {
			uint64_t np = t.regions[i].size / 4096;
			for (uint64_t p = 0; p < np; p += 1024) {
				bool any = false;
				for (uint64_t w = p / 64; w < mig__bitmap_words(MIG_MIN(p + 1024, np)); w++)
					any |= bits[i][w] != 0;
				if (any && nchunks < MAX_CHUNKS)
					chunks[nchunks++] = (uint64_t)i << 48 | p;
			}
		}
		t0 = mig__now_ns();
		for (size_t c = 0; c < nchunks; c++) {
			uint32_t i = (uint32_t)(chunks[c] >> 48);
			uint64_t p = chunks[c] & ((UINT64_C(1) << 48) - 1);
			uint64_t np = t.regions[i].size / 4096;
			if (mig__dirty_rearm(d, i, p, MIG_MIN(1024, np - p),
					     &err) < 0)
				goto fail_err;
		}
		rearm_ns[k] = mig__now_ns() - t0;
		for (int i = 0; i < 2; i++)
			memset(bits[i], 0,
			       mig__bitmap_words(t.regions[i].size / 4096) * 8);
		t0 = mig__now_ns();
		if (mig__dirty_sync(d, bits, &err) < 0)
			goto fail_err;
		idle_ns[k] = mig__now_ns() - t0;
		for (int i = 0; i < 2; i++)
			memset(bits[i], 0,
			       mig__bitmap_words(t.regions[i].size / 4096) * 8);
	}
	/* Stop-and-copy: one more round, then the final sync. */
	if (tvm_step(&t, 0) < 0) {
		fprintf(stderr, "guest: %s\n", t.vcpu[0].why);
		goto fail;
	}
	t0 = mig__now_ns();
	if (mig__dirty_sync_final(d, bits, &err) < 0)
		goto fail_err;
	final_ns = mig__now_ns() - t0;
	printf("%-7s %9.2f %9.2f %9.2f %11.1f %9.1f %9.1f %9.1f %9.1f\n",
	       mig__dirty_name(d), (double)start_ns / 1e6,
	       (double)sync1_ns / 1e6, (double)rearm1_ns / 1e6,
	       median_us(sync_ns, ROUNDS), median_us(rearm_ns, ROUNDS),
	       median_us(idle_ns, ROUNDS), (double)final_ns / 1e3,
	       (double)reported / ROUNDS);
	mig__dirty_destroy(d);
	free(bits[0]);
	free(bits[1]);
	tvm_destroy(&t);
	return 0;

fail_err:
	fprintf(stderr, "%s\n", err.msg);
fail:
	mig__dirty_destroy(d);
	tvm_destroy(&t);
	return 1;
}

/* mig__mem_resident on a shared anonymous mapping, half of it touched:
 * the whole range in one call, and in 1024-page calls judging the mapping
 * each time (as round 1 did) or once. */
static int bench_resident(uint64_t pages)
{
	uint8_t *mem = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE,
			    MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	uint64_t *bm = calloc(mig__bitmap_words(pages), 8);
	mig_region r = { .slot = 1, .size = pages * 4096, .hva = mem };
	mig_error err = { 0 };
	uint64_t t0, whole, chunked, judged;
	long n = 0, m = 0, j = 0;

	if (mem == MAP_FAILED || !bm)
		return 1;
	for (uint64_t p = 0; p < pages; p += 2)
		mem[p * 4096] = 1;
	t0 = mig__now_ns();
	n = mig__mem_resident(&r, 0, pages, false, bm, &err);
	whole = mig__now_ns() - t0;
	memset(bm, 0, mig__bitmap_words(pages) * 8);
	t0 = mig__now_ns();
	for (uint64_t p = 0; p < pages && m >= 0; p += 1024) {
		long k = mig__mem_resident(&r, p, MIG_MIN(1024, pages - p),
					   false, bm, &err);
		m = k < 0 ? k : m + k;
	}
	chunked = mig__now_ns() - t0;
	memset(bm, 0, mig__bitmap_words(pages) * 8);
	t0 = mig__now_ns();
	j = mig__mem_absent_is_zero(&r, &err) == 1 ? 0 : -1;
	for (uint64_t p = 0; p < pages && j >= 0; p += 1024) {
		long k = mig__mem_resident(&r, p, MIG_MIN(1024, pages - p),
					   true, bm, &err);
		j = k < 0 ? k : j + k;
	}
	judged = mig__now_ns() - t0;
	printf("mem_resident, %llu MiB, half touched: %.2f ms in one call, %.2f ms in 1024-page calls, %.2f ms judging the mapping once (%ld/%ld/%ld pages)\n",
	       (unsigned long long)(pages / 256), (double)whole / 1e6,
	       (double)chunked / 1e6, (double)judged / 1e6, n, m, j);
	munmap(mem, pages * 4096);
	free(bm);
	if (n < 0 || m < 0 || j < 0)
		fprintf(stderr, "%s\n", err.msg);
	return n < 0 || m < 0 || j != n;
}

int main(int argc, char **argv)
{
	static const mig_dirty_log modes[] = {
		MIG_DIRTY_LOG_BITMAP, MIG_DIRTY_LOG_CLEAR, MIG_DIRTY_LOG_RING,
	};
	uint64_t mib = 1024;
	uint32_t dirty = 100;
	int rc = 0;

	if (argc > 1 && !strcmp(argv[1], "--smoke"))
		mib = 64;
	else if (argc > 1)
		mib = strtoull(argv[1], NULL, 0);
	if (argc > 2)
		dirty = (uint32_t)strtoul(argv[2], NULL, 0);
	if (!tvm_available()) {
		fprintf(stderr, "no usable /dev/kvm: skipped\n");
		return 77;
	}
	if (!mib || (mib & (mib - 1)) || mib > 1024) {
		fprintf(stderr, "size: a power of two up to 1024 MiB\n");
		return 2;
	}
	printf("guest area %llu MiB (+2 MiB low), %u pages dirtied per round; ms for the first three columns, us for the rest\n",
	       (unsigned long long)mib, dirty);
	printf("%-7s %9s %9s %9s %11s %9s %9s %9s %9s\n", "mode", "start",
	       "sync 1", "rearm 1", "sync dirty", "rearm", "sync idle",
	       "final", "reported");
	for (size_t i = 0; i < MIG_ARRAY_SIZE(modes) && rc == 0; i++)
		rc = bench(modes[i], mib * 256, dirty);
	if (rc == 0)
		rc = bench_resident(mib * 256);
	return rc;
}
