/*
 * A dirty log for tests that run a real source without KVM: the pages
 * test_dirty_mark() marked since the last sync, handed to the source
 * through mig__dirty_set_test_backend(&test_dirty). The including file
 * defines PAGES (a multiple of 64), the guest's size in pages, which may
 * be a variable; TEST_DIRTY_MAX_PAGES, if it defines it, bounds that.
 */
#ifndef MIG_TEST_DIRTY_LOG_H
#define MIG_TEST_DIRTY_LOG_H

#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#include "dirty.h"

static pthread_mutex_t dirty_lock = PTHREAD_MUTEX_INITIALIZER;
#ifndef TEST_DIRTY_MAX_PAGES
#define TEST_DIRTY_MAX_PAGES PAGES
#endif
static uint64_t dirty_bits[TEST_DIRTY_MAX_PAGES / 64];

static int td_probe(int vm_fd, bool explicit_mode, mig_error *err)
{
	(void)vm_fd; (void)explicit_mode; (void)err;
	return 0;
}

static int td_init(mig_dirty *d, const int *fds, uint32_t n, mig_error *err)
{
	(void)d; (void)fds; (void)n; (void)err;
	return 0;
}

static long td_sync(mig_dirty *d, uint64_t *const *bitmaps, bool final,
		    mig_error *err)
{
	long n;

	(void)d; (void)final; (void)err;
	pthread_mutex_lock(&dirty_lock);
	n = (long)mig__bitmap_or(bitmaps[0], dirty_bits, PAGES / 64);
	memset(dirty_bits, 0, PAGES / 64 * sizeof(dirty_bits[0]));
	pthread_mutex_unlock(&dirty_lock);
	return n;
}

static const struct mig__dirty_ops test_dirty = {
	.name = "test",
	.mode = MIG_DIRTY_LOG_BITMAP,
	.no_slots = true,
	.probe = td_probe,
	.init = td_init,
	.sync = td_sync,
};

/* The guest wrote page p (after writing it). */
static inline void test_dirty_mark(uint32_t p)
{
	pthread_mutex_lock(&dirty_lock);
	dirty_bits[p / 64] |= UINT64_C(1) << (p % 64);
	pthread_mutex_unlock(&dirty_lock);
}

/* Nothing marked (a test's start). */
static inline void test_dirty_reset(void)
{
	pthread_mutex_lock(&dirty_lock);
	memset(dirty_bits, 0, PAGES / 64 * sizeof(dirty_bits[0]));
	pthread_mutex_unlock(&dirty_lock);
}

#endif /* MIG_TEST_DIRTY_LOG_H */
