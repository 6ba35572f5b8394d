/* Pieces shared by the source and destination sessions. */
#ifndef MIG_SESSION_H
#define MIG_SESSION_H

#include <pthread.h>

#include "frame.h"
#include "internal.h"

/* Pages per chunk: the unit of work queued to a connection. A page always
 * travels on connection (page / MIG_CHUNK_PAGES + region) % connections.
 * A multiple of 64, so that connection threads never share a word of the
 * engine's bitmaps. */
#define MIG_CHUNK_PAGES 1024u
_Static_assert(MIG_CHUNK_PAGES % 64 == 0, "chunks cover whole bitmap words");

/* Before the hello is authenticated a peer may send only small frames. */
#define MIG_PREAUTH_FRAME_MAX (64u << 10)

/* Features this library implements. */
#define MIG_FEATURES_SUPPORTED \
	(MIG__WIRE__FEATURE__FEATURE_ZSTD | MIG__WIRE__FEATURE__FEATURE_MULTICONN | \
	 MIG__WIRE__FEATURE__FEATURE_PREFAULT | MIG__WIRE__FEATURE__FEATURE_EARLY_STATE | \
	 MIG__WIRE__FEATURE__FEATURE_XXH3)

/* Bitmap bytes in one MemoryHint: 4M pages, 16 GiB of guest memory. */
#define MIG_HINT_BITMAP_MAX (512u << 10)

/* A private copy of the mig_vm a handle was created with. */
typedef struct mig_vm_copy {
	mig_vm vm;            /* pointers below point into this copy */
	mig_region *regions;
	int *vcpu_fds;
	void *cpuid;
	uint64_t total_pages;
} mig_vm_copy;

int mig__vm_copy(mig_vm_copy *dst, const mig_vm *src, mig_error *err);
void mig__vm_copy_free(mig_vm_copy *c);

/* Log through the embedder's callback, if any. */
void mig__log(const mig_callbacks *cb, void *opaque, mig_log_level lvl,
	      const char *fmt, ...) MIG_PRINTF(4, 5);

/* An absolute CLOCK_REALTIME deadline `ms` (or `us`) from now, for cond
 * waits. */
void mig__deadline(struct timespec *ts, uint64_t ms);
void mig__deadline_us(struct timespec *ts, uint64_t us);

/* Bits set in w. Bitmaps here are mostly zero words, and without
 * -mpopcnt the builtin is a library call: skip those first. */
static inline uint64_t mig__popcount(uint64_t w)
{
	return w ? (uint64_t)__builtin_popcountll(w) : 0;
}

/* Bitmap helpers over 64-bit words. */
static inline int mig__test_bit(const uint64_t *bm, uint64_t i)
{
	return (bm[i / 64] >> (i % 64)) & 1;
}

#endif /* MIG_SESSION_H */
