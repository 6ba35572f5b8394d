/*
 * Dirty tracking backend "clear": KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2.
 *
 * KVM_GET_DIRTY_LOG then only copies KVM's bitmap; a page stays dirty in KVM
 * (and writable for the guest) until KVM_CLEAR_DIRTY_LOG clears and
 * re-protects it, which mig__dirty_rearm() does just before the engine reads
 * the page. A write that lands between the sync and the rearm is therefore in
 * the copy that is sent, and a write after the rearm faults and is logged
 * again: nothing is lost, and the re-protection cost is spread over the round
 * instead of paid in one sync. With KVM_DIRTY_LOG_INITIALLY_SET, KVM also
 * skips write-protecting the whole guest when logging starts (every bit
 * starts set; round 1's rearms protect the pages as they are sent).
 *
 * Only pages that a sync reported are cleared (`reported`), so a rearm wider
 * than what the engine sends never drops a bit the engine has not seen.
 *
 * Each connection thread rearms its own chunks, so rearms (and a sync) may
 * run at once: `lock` guards the scratch bitmap and `reported`. KVM takes
 * its slots lock for KVM_CLEAR_DIRTY_LOG anyway, so holding ours across
 * the ioctl serializes nothing that was parallel.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <linux/kvm.h>

#include "dirty.h"

struct clear_priv {
	pthread_mutex_t lock;
	uint64_t **reported; /* per region: reported by sync, not rearmed */
	uint64_t *scratch;   /* max_words */
	uint64_t caps;       /* what KVM_CHECK_EXTENSION offered */
};

static int clear_probe(int vm_fd, bool explicit_mode, mig_error *err)
{
	int caps, ring = mig__kvm_ring_enabled(vm_fd);

	if (ring < 0)
		return mig__err(err, ring, "fd %d is not a KVM VM fd: %s", vm_fd,
				mig_strerror(ring));
	if (ring)
		return mig__err(err, -ENOTSUP,
				"KVM_GET_DIRTY_LOG is unavailable because the dirty ring is enabled on this VM (use dirty_log=ring or auto)");
	caps = mig__kvm_check(vm_fd, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
	if (!(caps & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE))
		return mig__err(err, -ENOTSUP,
				"KVM on this host lacks KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 (KVM_CLEAR_DIRTY_LOG)");
	return 0;
}

static void clear_fini(mig_dirty *d)
{
	struct clear_priv *p = d->priv;

	if (!p)
		return;
	if (p->reported)
		for (uint32_t i = 0; i < d->nr; i++)
			free(p->reported[i]);
	free(p->reported);
	free(p->scratch);
	pthread_mutex_destroy(&p->lock);
	free(p);
	d->priv = NULL;
}

static int clear_init(mig_dirty *d, const int *vcpu_fds, uint32_t nr_vcpus,
		      mig_error *err)
{
	struct clear_priv *p = calloc(1, sizeof(*p));

	d->priv = p;
	if (!p)
		goto nomem;
	pthread_mutex_init(&p->lock, NULL);
	p->caps = (uint64_t)mig__kvm_check(d->vm_fd,
					   KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
	p->scratch = calloc(d->max_words, sizeof(uint64_t));
	p->reported = calloc(d->nr, sizeof(*p->reported));
	if (!p->scratch || !p->reported)
		goto nomem;
	for (uint32_t i = 0; i < d->nr; i++) {
		p->reported[i] = calloc(d->regs[i].nwords, sizeof(uint64_t));
		if (!p->reported[i])
			goto nomem;
	}
	return 0;
nomem:
	clear_fini(d);
	return mig__err(err, -ENOMEM, "out of memory");
}

static int set_manual(mig_dirty *d, uint64_t flags, mig_error *err)
{
	struct kvm_enable_cap cap = {
		.cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
		.args = { flags },
	};
	int r = mig__kvm_ioctl(d->vm_fd, KVM_ENABLE_CAP, &cap);

	if (r < 0)
		return mig__err(err, r,
				"KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2, %#llx): %s",
				(unsigned long long)flags, mig_strerror(r));
	return 0;
}

static int clear_start(mig_dirty *d, mig_error *err)
{
	struct clear_priv *p = d->priv;
	uint64_t flags = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE |
		(p->caps & KVM_DIRTY_LOG_INITIALLY_SET);

	for (uint32_t i = 0; i < d->nr; i++)
		memset(p->reported[i], 0, d->regs[i].nwords * sizeof(uint64_t));
	/* Before the slots get the log flag: INITIALLY_SET acts then. */
	return set_manual(d, flags, err);
}

static long clear_sync_locked(mig_dirty *d, uint64_t *const *bitmaps,
			      mig_error *err)
{
	struct clear_priv *p = d->priv;
	long n = 0;

	for (uint32_t i = 0; i < d->nr; i++) {
		struct kvm_dirty_log log = {
			.slot = d->regs[i].r.slot,
			.dirty_bitmap = p->scratch,
		};
		uint64_t *rep = p->reported[i];
		int r = mig__kvm_ioctl(d->vm_fd, KVM_GET_DIRTY_LOG, &log);

		if (r < 0)
			return mig__err(err, r, "slot %u: KVM_GET_DIRTY_LOG: %s",
					log.slot, mig_strerror(r));
		for (uint64_t w = 0; w < d->regs[i].nwords; w++) {
			uint64_t s = p->scratch[w], fresh;
			if (!s)
				continue;
			rep[w] |= s;
			fresh = s & ~bitmaps[i][w];
			bitmaps[i][w] |= fresh;
			n += __builtin_popcountll(fresh);
		}
	}
	return n;
}

static long clear_sync(mig_dirty *d, uint64_t *const *bitmaps, bool final,
			mig_error *err)
{
	struct clear_priv *p = d->priv;
	long n;

	(void)final;
	pthread_mutex_lock(&p->lock);
	n = clear_sync_locked(d, bitmaps, err);
	pthread_mutex_unlock(&p->lock);
	return n;
}

static int clear_rearm_locked(mig_dirty *d, uint32_t region,
			      uint64_t first_page, uint64_t npages,
			      mig_error *err)
{
	struct clear_priv *p = d->priv;
	const struct mig__dirty_region *g = &d->regs[region];
	uint64_t *rep = p->reported[region];
	uint64_t end = first_page + npages;
	/* KVM wants first_page 64-aligned and num_pages a multiple of 64
	 * unless the range ends at the end of the slot. */
	uint64_t lo = first_page & ~UINT64_C(63);
	uint64_t hi = MIG_MIN((end + 63) & ~UINT64_C(63), g->npages);
	uint64_t w0 = lo / 64, nw = mig__bitmap_words(hi - lo), any = 0;
	struct kvm_clear_dirty_log clr;
	int r;

	/* num_pages is 32 bits: ranges over 2^31 pages (8 TiB) take several
	 * calls. */
	if (hi - lo > (UINT64_C(1) << 31)) {
		uint64_t mid = lo + (UINT64_C(1) << 30);
		r = clear_rearm_locked(d, region, first_page, mid - first_page,
				       err);
		return r < 0 ? r : clear_rearm_locked(d, region, mid, end - mid,
						      err);
	}
	for (uint64_t w = 0; w < nw; w++) {
		uint64_t base = lo + 64 * w, m = rep[w0 + w];
		if (base < first_page)
			m &= ~UINT64_C(0) << (first_page - base);
		if (base + 64 > end)
			m &= (UINT64_C(1) << (end - base)) - 1;
		p->scratch[w] = m;
		any |= m;
	}
	if (!any)
		return 0;
	clr = (struct kvm_clear_dirty_log){
		.slot = g->r.slot,
		.num_pages = (uint32_t)(hi - lo),
		.first_page = lo,
		.dirty_bitmap = p->scratch,
	};
	r = mig__kvm_ioctl(d->vm_fd, KVM_CLEAR_DIRTY_LOG, &clr);
	if (r < 0)
		return mig__err(err, r,
				"slot %u: KVM_CLEAR_DIRTY_LOG(pages %llu+%llu): %s",
				g->r.slot, (unsigned long long)lo,
				(unsigned long long)(hi - lo), mig_strerror(r));
	for (uint64_t w = 0; w < nw; w++)
		rep[w0 + w] &= ~p->scratch[w];
	return 0;
}

static int clear_rearm(mig_dirty *d, uint32_t region, uint64_t first_page,
		       uint64_t npages, mig_error *err)
{
	struct clear_priv *p = d->priv;
	int r;

	pthread_mutex_lock(&p->lock);
	r = clear_rearm_locked(d, region, first_page, npages, err);
	pthread_mutex_unlock(&p->lock);
	return r;
}

static void clear_stop(mig_dirty *d)
{
	/* Leave the VM's KVM_GET_DIRTY_LOG as we found it. */
	set_manual(d, 0, NULL);
}

const struct mig__dirty_ops mig__dirty_clear_ops = {
	.name = "clear",
	.mode = MIG_DIRTY_LOG_CLEAR,
	.probe = clear_probe,
	.init = clear_init,
	.start = clear_start,
	.sync = clear_sync,
	.rearm = clear_rearm,
	.stop = clear_stop,
	.fini = clear_fini,
};
