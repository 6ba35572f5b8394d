/*
 * Dirty page tracking (private). The migration engine asks "which guest pages
 * changed since I last asked?" through mig__dirty_*; a backend answers with
 * one of KVM's mechanisms:
 *
 *   bitmap  KVM_GET_DIRTY_LOG: fetch-and-clear, KVM re-protects at fetch.
 *   clear   KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: the fetch leaves KVM's bits
 *           set; mig__dirty_rearm() clears and re-protects just the pages
 *           about to be sent (KVM_CLEAR_DIRTY_LOG), so a page written between
 *           the fetch and its sending is still caught, and the
 *           write-protection cost is spread over the round. With
 *           KVM_DIRTY_LOG_INITIALLY_SET nothing is write-protected at start.
 *   ring    KVM_CAP_DIRTY_LOG_RING: each vCPU pushes the pages it dirties into
 *           its own ring; cost grows with pages dirtied, not with guest size.
 *
 * A backend is one file (dirty_<name>.c) exporting a mig__dirty_ops; dirty.c
 * lists them in AUTO order and does what they share: validating regions,
 * turning KVM_MEM_LOG_DIRTY_PAGES on and off, the first-sync rule below.
 *
 * Contract for the engine (all calls from one thread, the migration thread,
 * except mig_dirty_ring_full(), which vCPU threads call, and
 * mig__dirty_rearm(), which several threads may call at once, each for its
 * own pages: the engine's connection threads rearm the chunks they send):
 *
 *  1. create, then start: KVM logs writes from that moment on.
 *  2. The FIRST sync after start reports every page of every region: all of
 *     memory counts as dirty to a tracker that just started. Round 1 is that
 *     sync's result. (The clear backend with INITIALLY_SET depends on this:
 *     its pages are write-protected only as round 1 rearms them.)
 *  3. Later syncs report pages written since the previous sync. False
 *     positives are possible, false negatives are not, provided that:
 *  4. a page is read for sending only AFTER the sync that reported it and,
 *     in clear mode, after mig__dirty_rearm() covered it; a reported page
 *     stays in the engine's to-send set until it has been read after its
 *     rearm (rearm only re-protects pages a sync reported, so calling it on a
 *     wider range loses nothing).
 *  5. The last sync (mig__dirty_sync_final) happens with every vCPU out of
 *     KVM_RUN. Pages the VMM itself writes are not seen by KVM: the engine
 *     adds them (mig_mark_dirty()).
 *
 * What the VMM must have done: registered each region with
 * KVM_SET_USER_MEMORY_REGION exactly as given ({slot, gpa, size, hva}) and
 * flags 0. Logging is switched by registering the same slot again with
 * KVM_MEM_LOG_DIRTY_PAGES (as QEMU does) and back to flags 0 at stop; a slot
 * registered KVM_MEM_READONLY makes start fail with -EINVAL (KVM refuses to
 * change that flag), and a wrong gpa would MOVE the slot, so the regions must
 * be exact. While a tracker runs the VMM must not change these slots.
 */
#ifndef MIG_DIRTY_H
#define MIG_DIRTY_H

#include <stdbool.h>
#include <stdint.h>

#include "internal.h"

typedef struct mig_dirty mig_dirty;

/* Largest number of regions one tracker takes (KVM's slot limit is ~32k). */
#define MIG_DIRTY_MAX_REGIONS 4096u

/* 64-bit words in a bitmap of n pages. */
static inline uint64_t mig__bitmap_words(uint64_t npages)
{
	return (npages + 63) / 64;
}

/*
 * Choose the backend (AUTO = ring if enabled on this VM, else clear if KVM
 * offers MANUAL_DIRTY_LOG_PROTECT2, else bitmap), validate the regions and
 * copy them. vcpu_fds must list every vCPU in ring mode (they are mmapped);
 * the others ignore them. Nothing is changed in KVM until start.
 * Errors: -EINVAL (bad region or argument: err names it), -ENOTSUP (the mode
 * cannot work on this VM: err says why), -EBADF, -ENOMEM.
 */
int mig__dirty_create(mig_dirty **out, mig_dirty_log mode, int vm_fd,
		      const mig_region *regions, uint32_t nr,
		      const int *vcpu_fds, uint32_t nr_vcpus, mig_error *err);

/* "bitmap", "clear" or "ring". */
const char *mig__dirty_name(const mig_dirty *d);
/* The mode chosen (never AUTO). */
mig_dirty_log mig__dirty_mode(const mig_dirty *d);

/*
 * Enable logging on every region. From now on every guest write is tracked.
 * -EBUSY if another tracker is started on the same VM, -EALREADY if this one
 * is. On failure nothing stays enabled.
 */
int mig__dirty_start(mig_dirty *d, mig_error *err);

/*
 * OR the pages dirtied since the previous sync (the first one: all pages)
 * into bitmaps[r], one bit per page of region r in 64-bit words, bit i of
 * word w = page 64*w + i. Returns the number of bits newly set, or a negative
 * errno. In ring mode this also harvests what vCPU threads collected through
 * mig_dirty_ring_full().
 */
long mig__dirty_sync(mig_dirty *d, uint64_t *const *bitmaps, mig_error *err);

/*
 * The last sync of a migration, with every vCPU out of KVM_RUN
 * (stop-and-copy): the same result as mig__dirty_sync(), minus the work of
 * re-protecting pages, which only matters if the guest runs on, and would
 * be paid inside the downtime (ring: no KVM_RESET_DIRTY_RINGS; bitmap:
 * KVM_GET_DIRTY_LOG cannot skip it; clear: the engine should skip rearm now).
 * Afterwards sync/sync_final fail with -EINVAL until stop and start again.
 */
long mig__dirty_sync_final(mig_dirty *d, uint64_t *const *bitmaps,
			   mig_error *err);

/*
 * The engine is about to read pages [first_page, first_page + npages) of
 * region r to send them: re-arm tracking for those of them that a sync has
 * reported (clear mode: KVM_CLEAR_DIRTY_LOG, widened to KVM's 64-page
 * alignment with a mask, so only the pages asked for are touched). A no-op in
 * the other modes. -EINVAL for a range outside the region.
 */
int mig__dirty_rearm(mig_dirty *d, uint32_t region, uint64_t first_page,
		     uint64_t npages, mig_error *err);

/* Disable logging (source resumed, or migration done). Safe to call twice;
 * start may be called again afterwards. Returns 0 or the first error. */
int mig__dirty_stop(mig_dirty *d);

/* Stop if needed and free. Accepts NULL. */
void mig__dirty_destroy(mig_dirty *d);

/*
 * Which pages of [first_page, first_page + npages) of region r hold anything
 * at all, without reading them: bit (page index within the region) set in
 * `bitmap` (same layout as the sync bitmaps; other bits are left alone) for
 * each page that is resident (mincore) or may be swapped out. A page left
 * clear reads as zeros. Returns the number of pages of the range whose bit
 * is set on return, or a negative errno (-EFAULT: part of the range is not
 * mapped).
 *
 * Exact for anonymous (private or shared), memfd and /dev/shm mappings while
 * no swap is in use; when the host has swap in use, or the region maps a
 * regular file, every page is marked (the answer would not be reliable).
 *
 * Race rule: a page found empty may be filled right after the call; that is
 * only safe if tracking already covers it, so call this after start, and in
 * clear mode only for pages already rearmed (e.g. round 1: rearm a chunk,
 * then ask about that chunk, then send its resident pages).
 *
 * absent_is_zero: the caller has asked mig__mem_absent_is_zero() about this
 * region and got 1, so the call skips judging the mappings, which reads
 * /proc/self/maps (about 50 us here). Pass false to judge them each call.
 */
long mig__mem_resident(const mig_region *r, uint64_t first_page,
		       uint64_t npages, bool absent_is_zero, uint64_t *bitmap,
		       mig_error *err);

/*
 * Does every page of region r lie in a mapping where a page that is not
 * resident reads as zeros (anonymous, memfd, /dev/shm)? 1 yes, 0 no (a
 * regular file, or no /proc to tell), -EFAULT if part of it is not mapped.
 * The answer holds while the VMM keeps the region's mapping, which it must
 * for the whole migration anyway.
 */
int mig__mem_absent_is_zero(const mig_region *r, mig_error *err);

/* ---- Backends (dirty_<name>.c) ---------------------------------------- */

/* One region as the tracker keeps it. */
struct mig__dirty_region {
	mig_region r;
	uint64_t npages;
	uint64_t nwords;  /* mig__bitmap_words(npages) */
};

struct mig_dirty {
	const struct mig__dirty_ops *ops;
	int vm_fd;
	uint32_t nr;
	struct mig__dirty_region *regs;
	uint64_t max_words;     /* largest nwords over regions */
	bool started;
	bool first_sync;        /* next sync reports everything */
	bool finished;          /* sync_final done: no more syncs */
	struct mig_dirty *next_started; /* registry of started trackers */
	void *priv;             /* the backend's */
};

struct mig__dirty_ops {
	const char *name;
	mig_dirty_log mode;
	/* Tracks writes without KVM_MEM_LOG_DIRTY_PAGES (the tests' backend):
	 * start and stop leave the slots alone. */
	bool no_slots;
	/*
	 * Can this backend work on vm_fd? 0, or -ENOTSUP with err saying why.
	 * `explicit` is false when probing for AUTO (keep it cheap, no side
	 * effects).
	 */
	int (*probe)(int vm_fd, bool explicit_mode, mig_error *err);
	/* Allocate priv; d->regs are set. */
	int (*init)(mig_dirty *d, const int *vcpu_fds, uint32_t nr_vcpus,
		    mig_error *err);
	/* Before the slots get KVM_MEM_LOG_DIRTY_PAGES (may be NULL). */
	int (*start)(mig_dirty *d, mig_error *err);
	/* OR newly dirtied pages into bitmaps; count of new bits. `final`:
	 * the vCPUs are paused for good, re-protecting can be skipped. */
	long (*sync)(mig_dirty *d, uint64_t *const *bitmaps, bool final,
		     mig_error *err);
	/* May be NULL (no-op). Range is checked by the caller. */
	int (*rearm)(mig_dirty *d, uint32_t region, uint64_t first_page,
		     uint64_t npages, mig_error *err);
	/* After the slots lost KVM_MEM_LOG_DIRTY_PAGES (may be NULL). */
	void (*stop)(mig_dirty *d);
	/* Free priv (may be NULL). */
	void (*fini)(mig_dirty *d);
};

extern const struct mig__dirty_ops mig__dirty_bitmap_ops;
extern const struct mig__dirty_ops mig__dirty_clear_ops;
extern const struct mig__dirty_ops mig__dirty_ring_ops;

/*
 * Tests only: every tracker created from now on uses `ops`, whatever the
 * mode and VM fd (NULL: KVM's backends again), so that the engine runs
 * against a scripted peer where there is no KVM. Not exported from the
 * shared library; the unit tests link the static one.
 */
void mig__dirty_set_test_backend(const struct mig__dirty_ops *ops);

/* Shared helpers for the backends (dirty_kvm.c). */

/* dst |= src over n words; returns the number of bits newly set in dst. */
uint64_t mig__bitmap_or(uint64_t *dst, const uint64_t *src, uint64_t n);
/* ioctl(fd, req, arg) retried on EINTR; -errno on failure. */
int mig__kvm_ioctl(int fd, unsigned long req, void *arg);
/* KVM_CHECK_EXTENSION on the VM fd; 0 when absent or on error. */
int mig__kvm_check(int vm_fd, long cap);
/*
 * Is the dirty ring enabled on vm_fd? KVM refuses KVM_GET_DIRTY_LOG with
 * ENXIO before it even looks at the slot when it is; asked with an invalid
 * slot, so nothing else happens. 1 yes, 0 no, or -errno (e.g. -EBADF).
 */
int mig__kvm_ring_enabled(int vm_fd);

/* dirty_ring.c: the registry behind mig_dirty_ring_enable(). Entries of the
 * ring enabled on vm_fd through the public API, 0 if none is known. */
uint32_t mig__dirty_ring_known(int vm_fd);

#endif /* MIG_DIRTY_H */
