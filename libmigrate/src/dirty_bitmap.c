/*
 * Dirty tracking backend "bitmap": KVM_GET_DIRTY_LOG, which hands over and
 * clears KVM's bitmap of a slot and write-protects the pages it reported, in
 * one call. Works on every KVM; costs a pass over the whole bitmap per slot
 * and sync, and all the re-protection happens inside that call.
 */
#include <errno.h>
#include <stdlib.h>

#include <linux/kvm.h>

#include "dirty.h"

struct bitmap_priv {
	uint64_t *scratch; /* max_words: what KVM_GET_DIRTY_LOG writes */
};

static int bitmap_probe(int vm_fd, bool explicit_mode, mig_error *err)
{
	int ring = mig__kvm_ring_enabled(vm_fd);

	if (ring < 0)
		return mig__err(err, ring, "fd %d is not a KVM VM fd: %s", vm_fd,
				mig_strerror(ring));
	if (ring)
		return mig__err(err, -ENOTSUP,
				"KVM_GET_DIRTY_LOG is unavailable because the dirty ring is enabled on this VM%s",
				mig__dirty_ring_known(vm_fd) ? " (use dirty_log=ring or auto)" :
				" without mig_dirty_ring_enable(), so libmigrate does not know its size");
	return 0;
}

static int bitmap_init(mig_dirty *d, const int *vcpu_fds, uint32_t nr_vcpus,
		       mig_error *err)
{
	struct bitmap_priv *p = calloc(1, sizeof(*p));

	if (p)
		p->scratch = calloc(d->max_words, sizeof(uint64_t));
	if (!p || !p->scratch) {
		free(p);
		return mig__err(err, -ENOMEM, "out of memory");
	}
	d->priv = p;
	return 0;
}

static int bitmap_start(mig_dirty *d, mig_error *err)
{
	/* A clear-mode tracker may have left manual protection on, which
	 * would make KVM_GET_DIRTY_LOG stop clearing: turn it off. Fails
	 * harmlessly where the capability does not exist. */
	if (mig__kvm_check(d->vm_fd, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)) {
		struct kvm_enable_cap cap = {
			.cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
		};
		mig__kvm_ioctl(d->vm_fd, KVM_ENABLE_CAP, &cap);
	}
	return 0;
}

static long bitmap_sync(mig_dirty *d, uint64_t *const *bitmaps, bool final,
			mig_error *err)
{
	struct bitmap_priv *p = d->priv;
	long n = 0;

	for (uint32_t i = 0; i < d->nr; i++) {
		struct kvm_dirty_log log = {
			.slot = d->regs[i].r.slot,
			.dirty_bitmap = p->scratch,
		};
		int r = mig__kvm_ioctl(d->vm_fd, KVM_GET_DIRTY_LOG, &log);

		if (r < 0)
			return mig__err(err, r, "slot %u: KVM_GET_DIRTY_LOG: %s",
					log.slot, mig_strerror(r));
		n += (long)mig__bitmap_or(bitmaps[i], p->scratch,
					  d->regs[i].nwords);
	}
	return n;
}

static void bitmap_fini(mig_dirty *d)
{
	struct bitmap_priv *p = d->priv;

	if (p)
		free(p->scratch);
	free(p);
	d->priv = NULL;
}

const struct mig__dirty_ops mig__dirty_bitmap_ops = {
	.name = "bitmap",
	.mode = MIG_DIRTY_LOG_BITMAP,
	.probe = bitmap_probe,
	.init = bitmap_init,
	.start = bitmap_start,
	.sync = bitmap_sync,
	.fini = bitmap_fini,
};
