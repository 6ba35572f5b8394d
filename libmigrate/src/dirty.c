/*
 * Dirty tracking, the common part: choosing a backend, validating regions,
 * switching KVM_MEM_LOG_DIRTY_PAGES, the first-sync rule. See dirty.h.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <linux/kvm.h>

#include "dirty.h"

/* AUTO tries them in this order; a new backend adds itself here. */
static const struct mig__dirty_ops *const backends[] = {
	&mig__dirty_ring_ops,
	&mig__dirty_clear_ops,
	&mig__dirty_bitmap_ops,
};

/* mig__dirty_set_test_backend(): NULL outside the unit tests. */
static const struct mig__dirty_ops *test_backend;

void mig__dirty_set_test_backend(const struct mig__dirty_ops *ops)
{
	__atomic_store_n(&test_backend, ops, __ATOMIC_RELEASE);
}

/* Started trackers, so that two never fight over one VM's dirty log. */
static pthread_mutex_t started_lock = PTHREAD_MUTEX_INITIALIZER;
static mig_dirty *started_list;

static int check_regions(const mig_region *regions, uint32_t nr,
			 mig_error *err)
{
	if (!regions || nr == 0)
		return mig__err(err, -EINVAL, "dirty tracking: no memory regions");
	if (nr > MIG_DIRTY_MAX_REGIONS)
		return mig__err(err, -EINVAL,
				"dirty tracking: %u regions, at most %u", nr,
				MIG_DIRTY_MAX_REGIONS);
	for (uint32_t i = 0; i < nr; i++) {
		const mig_region *a = &regions[i];
		uintptr_t hva = (uintptr_t)a->hva;

		if (a->size == 0 || a->size % MIG_PAGE_SIZE)
			return mig__err(err, -EINVAL,
					"region %u (slot %u): size %#llx is not a positive multiple of 4096",
					i, a->slot, (unsigned long long)a->size);
		if (a->gpa % MIG_PAGE_SIZE || a->gpa + a->size < a->gpa)
			return mig__err(err, -EINVAL,
					"region %u (slot %u): gpa %#llx is not page aligned or wraps",
					i, a->slot, (unsigned long long)a->gpa);
		if (!hva || hva % MIG_PAGE_SIZE || hva + a->size < hva)
			return mig__err(err, -EINVAL,
					"region %u (slot %u): hva %p is NULL, unaligned or wraps",
					i, a->slot, a->hva);
		if ((a->slot & 0xffff) >= 0x8000)
			return mig__err(err, -EINVAL,
					"region %u: slot id %#x is out of KVM's range",
					i, a->slot);
		for (uint32_t j = 0; j < i; j++) {
			const mig_region *b = &regions[j];
			if (b->slot == a->slot)
				return mig__err(err, -EINVAL,
						"regions %u and %u: both are slot %u",
						j, i, a->slot);
			/* Guest physical ranges only clash within one
			 * address space (slot bits 16..31). */
			if ((b->slot >> 16) == (a->slot >> 16) &&
			    a->gpa < b->gpa + b->size &&
			    b->gpa < a->gpa + a->size)
				return mig__err(err, -EINVAL,
						"regions %u and %u (slots %u, %u) overlap in guest physical memory",
						j, i, b->slot, a->slot);
		}
	}
	return 0;
}

static const struct mig__dirty_ops *find_ops(mig_dirty_log mode)
{
	for (size_t i = 0; i < MIG_ARRAY_SIZE(backends); i++)
		if (backends[i]->mode == mode)
			return backends[i];
	return NULL;
}

static int choose(mig_dirty_log mode, int vm_fd,
		  const struct mig__dirty_ops **out, mig_error *err)
{
	const struct mig__dirty_ops *test = __atomic_load_n(&test_backend,
							    __ATOMIC_ACQUIRE);
	int r;

	if (test) {
		*out = test;
		return 0;
	}
	if (mode != MIG_DIRTY_LOG_AUTO) {
		const struct mig__dirty_ops *ops = find_ops(mode);
		if (!ops)
			return mig__err(err, -EINVAL,
					"dirty_log mode %d is unknown", (int)mode);
		r = ops->probe(vm_fd, true, err);
		if (r < 0) {
			mig__err_prefix(err, "dirty_log=%s: ", ops->name);
			return r;
		}
		*out = ops;
		return 0;
	}
	for (size_t i = 0; i < MIG_ARRAY_SIZE(backends); i++) {
		mig_error why = { 0 };
		r = backends[i]->probe(vm_fd, false, &why);
		if (r == 0) {
			*out = backends[i];
			return 0;
		}
		/* The bitmap backend is the last resort: its reason is the
		 * one to give (ring enabled without the library, bad fd). */
		if (i + 1 == MIG_ARRAY_SIZE(backends)) {
			if (err)
				*err = why;
			mig__err_prefix(err, "dirty_log=auto: ");
			return r;
		}
	}
	return mig__err(err, -ENOTSUP, "no dirty tracking backend");
}

int mig__dirty_create(mig_dirty **out, mig_dirty_log mode, int vm_fd,
		      const mig_region *regions, uint32_t nr,
		      const int *vcpu_fds, uint32_t nr_vcpus, mig_error *err)
{
	const struct mig__dirty_ops *ops = NULL;
	mig_dirty *d;
	int r;

	if (!out)
		return mig__err(err, -EINVAL, "dirty tracking: out is NULL");
	*out = NULL;
	if (vm_fd < 0)
		return mig__err(err, -EBADF, "dirty tracking: VM fd %d", vm_fd);
	if (nr_vcpus && !vcpu_fds)
		return mig__err(err, -EINVAL,
				"dirty tracking: %u vCPUs but vcpu_fds is NULL",
				nr_vcpus);
	r = check_regions(regions, nr, err);
	if (r < 0)
		return r;
	r = choose(mode, vm_fd, &ops, err);
	if (r < 0)
		return r;

	d = calloc(1, sizeof(*d));
	if (!d)
		return mig__err(err, -ENOMEM, "dirty tracking: out of memory");
	d->regs = calloc(nr, sizeof(*d->regs));
	if (!d->regs) {
		free(d);
		return mig__err(err, -ENOMEM, "dirty tracking: out of memory");
	}
	d->ops = ops;
	d->vm_fd = vm_fd;
	d->nr = nr;
	for (uint32_t i = 0; i < nr; i++) {
		d->regs[i].r = regions[i];
		d->regs[i].npages = regions[i].size / MIG_PAGE_SIZE;
		d->regs[i].nwords = mig__bitmap_words(d->regs[i].npages);
		d->max_words = MIG_MAX(d->max_words, d->regs[i].nwords);
	}
	r = ops->init(d, vcpu_fds, nr_vcpus, err);
	if (r < 0) {
		mig__err_prefix(err, "dirty_log=%s: ", ops->name);
		free(d->regs);
		free(d);
		return r;
	}
	*out = d;
	return 0;
}

const char *mig__dirty_name(const mig_dirty *d)
{
	return d->ops->name;
}

mig_dirty_log mig__dirty_mode(const mig_dirty *d)
{
	return d->ops->mode;
}

/* Register region i's slot again, with or without the dirty log flag. */
static int set_log(mig_dirty *d, uint32_t i, bool on, mig_error *err)
{
	const mig_region *g = &d->regs[i].r;
	struct kvm_userspace_memory_region m = {
		.slot = g->slot,
		.flags = on ? KVM_MEM_LOG_DIRTY_PAGES : 0,
		.guest_phys_addr = g->gpa,
		.memory_size = g->size,
		.userspace_addr = (uintptr_t)g->hva,
	};
	int r;

	if (d->ops->no_slots)
		return 0;
	r = mig__kvm_ioctl(d->vm_fd, KVM_SET_USER_MEMORY_REGION, &m);
	if (r < 0)
		return mig__err(err, r,
				"slot %u (gpa %#llx, %llu bytes): KVM_SET_USER_MEMORY_REGION to %s dirty logging: %s%s",
				g->slot, (unsigned long long)g->gpa,
				(unsigned long long)g->size,
				on ? "enable" : "disable", mig_strerror(r),
				r == -EINVAL ? " (the slot must be registered exactly as given, with flags 0, not KVM_MEM_READONLY)" : "");
	return 0;
}

static void unregister_started(mig_dirty *d)
{
	pthread_mutex_lock(&started_lock);
	for (mig_dirty **p = &started_list; *p; p = &(*p)->next_started)
		if (*p == d) {
			*p = d->next_started;
			break;
		}
	d->next_started = NULL;
	pthread_mutex_unlock(&started_lock);
}

int mig__dirty_start(mig_dirty *d, mig_error *err)
{
	uint32_t i;
	int r;

	if (d->started)
		return mig__err(err, -EALREADY, "dirty tracking already started");
	pthread_mutex_lock(&started_lock);
	for (mig_dirty *o = started_list; o; o = o->next_started)
		if (o->vm_fd == d->vm_fd) {
			pthread_mutex_unlock(&started_lock);
			return mig__err(err, -EBUSY,
					"another dirty tracker is running on VM fd %d",
					d->vm_fd);
		}
	d->next_started = started_list;
	started_list = d;
	pthread_mutex_unlock(&started_lock);

	if (d->ops->start) {
		r = d->ops->start(d, err);
		if (r < 0)
			goto fail_registered;
	}
	for (i = 0; i < d->nr; i++) {
		r = set_log(d, i, true, err);
		if (r < 0)
			goto fail_slots;
	}
	d->started = true;
	d->first_sync = true;
	d->finished = false;
	return 0;

fail_slots:
	while (i-- > 0)
		set_log(d, i, false, NULL);
	if (d->ops->stop)
		d->ops->stop(d);
fail_registered:
	unregister_started(d);
	return r;
}

static long sync(mig_dirty *d, uint64_t *const *bitmaps, bool final,
		 mig_error *err)
{
	long n;

	if (!d->started)
		return mig__err(err, -EINVAL, "dirty tracking is not started");
	if (d->finished)
		return mig__err(err, -EINVAL,
				"dirty sync after the final one (stop and start first)");
	if (!bitmaps)
		return mig__err(err, -EINVAL, "dirty sync: bitmaps is NULL");
	n = d->ops->sync(d, bitmaps, final, err);
	if (n >= 0 && final)
		d->finished = true;
	if (n < 0 || !d->first_sync)
		return n;

	/* Everything counts as dirty to a tracker that just started. */
	for (uint32_t i = 0; i < d->nr; i++) {
		const struct mig__dirty_region *g = &d->regs[i];
		uint64_t *b = bitmaps[i];
		uint64_t last = g->npages % 64;

		for (uint64_t w = 0; w < g->nwords; w++) {
			uint64_t all = (w + 1 == g->nwords && last) ?
				(UINT64_C(1) << last) - 1 : ~UINT64_C(0);
			n += __builtin_popcountll(all & ~b[w]);
			b[w] |= all;
		}
	}
	d->first_sync = false;
	return n;
}

long mig__dirty_sync(mig_dirty *d, uint64_t *const *bitmaps, mig_error *err)
{
	return sync(d, bitmaps, false, err);
}

long mig__dirty_sync_final(mig_dirty *d, uint64_t *const *bitmaps,
			   mig_error *err)
{
	return sync(d, bitmaps, true, err);
}

int mig__dirty_rearm(mig_dirty *d, uint32_t region, uint64_t first_page,
		     uint64_t npages, mig_error *err)
{
	if (region >= d->nr)
		return mig__err(err, -EINVAL, "rearm: region %u of %u", region,
				d->nr);
	if (first_page > d->regs[region].npages ||
	    npages > d->regs[region].npages - first_page)
		return mig__err(err, -EINVAL,
				"rearm: pages %llu+%llu outside region %u (%llu pages)",
				(unsigned long long)first_page,
				(unsigned long long)npages, region,
				(unsigned long long)d->regs[region].npages);
	if (!d->started || !npages || !d->ops->rearm)
		return 0;
	return d->ops->rearm(d, region, first_page, npages, err);
}

int mig__dirty_stop(mig_dirty *d)
{
	int first = 0;

	if (!d->started)
		return 0;
	for (uint32_t i = 0; i < d->nr; i++) {
		int r = set_log(d, i, false, NULL);
		if (r < 0 && !first)
			first = r;
	}
	if (d->ops->stop)
		d->ops->stop(d);
	d->started = false;
	unregister_started(d);
	return first;
}

void mig__dirty_destroy(mig_dirty *d)
{
	if (!d)
		return;
	mig__dirty_stop(d);
	if (d->ops->fini)
		d->ops->fini(d);
	free(d->regs);
	free(d);
}
