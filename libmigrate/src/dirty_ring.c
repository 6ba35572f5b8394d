/*
 * Dirty tracking backend "ring": KVM_CAP_DIRTY_LOG_RING[_ACQ_REL].
 *
 * Each vCPU has a ring of struct kvm_dirty_gfn, mmapped from its fd at
 * KVM_DIRTY_LOG_PAGE_OFFSET. KVM publishes an entry {slot, offset} with
 * flags = DIRTY when the vCPU first writes a write-protected page; we read
 * entries from our index (acquire), mark them RESET (release), and
 * KVM_RESET_DIRTY_RINGS re-protects those pages and frees the entries. A
 * write between our harvest and the reset is not lost: the page was harvested
 * and is read for sending only after the reset (dirty.h rule 4). Cost grows
 * with the entries, not with guest size.
 *
 * When a ring is nearly full KVM stops its vCPU with KVM_EXIT_DIRTY_RING_FULL
 * and will not run it again until the ring is reset; the VMM's vCPU thread
 * calls mig_dirty_ring_full(), which harvests that ring into the started
 * tracker's pending set (or discards it when none is started). So this file
 * keeps a registry: vm_fd -> struct ring_vm, made by mig_dirty_ring_enable().
 *
 * Locking: reg_lock guards the registry list and reference counts only.
 * ring_vm.lock guards everything about one VM: its vCPU records (fetch
 * indexes, mappings), which tracker owns/is active, and that tracker's
 * pending set. Harvest, reset and draining pending into the engine's
 * bitmaps all happen under it, so the migration thread's sync and vCPU
 * threads' ring_full calls serialize; a vCPU waits at most for one sync's
 * harvest. Never take reg_lock while holding a ring_vm.lock.
 *
 * The fetch index of each ring lives in the registry, not in the tracker: KVM
 * keeps its ring positions for the life of the vCPU, across trackers.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <linux/kvm.h>

#include "dirty.h"

#define RING_DEFAULT_ENTRIES 4096u
#define RING_ENTRY_SIZE ((uint32_t)sizeof(struct kvm_dirty_gfn))

struct ring_vcpu {
	int fd;
	uint32_t fetch;              /* next entry to look at, free running */
	struct kvm_dirty_gfn *gfns;  /* mapping, or NULL */
};

struct ring_vm {
	struct ring_vm *next;        /* registry list (reg_lock) */
	int vm_fd;
	uint32_t entries;            /* per ring, power of two */
	unsigned refs;               /* list's + users' (reg_lock) */

	pthread_mutex_t lock;
	struct ring_vcpu *vcpus;
	uint32_t nr_vcpus, cap_vcpus;
	mig_dirty *owner;            /* tracker created on this VM: keeps the
	                                rings mapped until its destroy */
	mig_dirty *active;           /* started tracker collecting, or NULL */
	uint64_t full_exits;         /* mig_dirty_ring_full calls */
	uint64_t marked;             /* entries marked RESET, not reset yet */
	/* Resets that KVM cut short since the active tracker started, and
	 * the entries the first one had done: see reset_rings(). */
	uint32_t cut_short;
	int cut_after;
	uint64_t cut_of;
};

struct slot_idx {
	uint32_t slot;
	uint32_t region;
};

struct ring_priv {
	struct ring_vm *vm;          /* one reference held */
	struct slot_idx *slots;      /* sorted by slot */
	/* Pages harvested since the last sync (ring_vm.lock): a bit per page
	 * to deduplicate, and the list of set bits so that sync costs what
	 * was dirtied. If the list cannot grow, `overflow` makes sync scan
	 * the bitmaps instead. */
	uint64_t **pend;
	uint64_t *list;              /* region << 48 | page */
	size_t len, cap;
	bool overflow;
	uint64_t foreign;            /* entries of slots not ours, dropped */
};

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ring_vm *reg_list;

/* ---- Registry -------------------------------------------------------- */

static struct ring_vm *vm_get(int vm_fd)
{
	struct ring_vm *vm;

	pthread_mutex_lock(&reg_lock);
	for (vm = reg_list; vm; vm = vm->next)
		if (vm->vm_fd == vm_fd) {
			vm->refs++;
			break;
		}
	pthread_mutex_unlock(&reg_lock);
	return vm;
}

static size_t ring_bytes(const struct ring_vm *vm)
{
	return (size_t)vm->entries * RING_ENTRY_SIZE;
}

static void vm_free(struct ring_vm *vm)
{
	for (uint32_t i = 0; i < vm->nr_vcpus; i++)
		if (vm->vcpus[i].gfns)
			munmap(vm->vcpus[i].gfns, ring_bytes(vm));
	free(vm->vcpus);
	pthread_mutex_destroy(&vm->lock);
	free(vm);
}

static void vm_put(struct ring_vm *vm)
{
	bool last;

	if (!vm)
		return;
	pthread_mutex_lock(&reg_lock);
	last = --vm->refs == 0;
	pthread_mutex_unlock(&reg_lock);
	if (last)
		vm_free(vm);
}

/* Drop vm_fd's entry from the list (its users keep their references). */
static void vm_unlist(int vm_fd)
{
	struct ring_vm *gone = NULL;

	pthread_mutex_lock(&reg_lock);
	for (struct ring_vm **p = &reg_list; *p; p = &(*p)->next)
		if ((*p)->vm_fd == vm_fd) {
			gone = *p;
			*p = gone->next;
			break;
		}
	pthread_mutex_unlock(&reg_lock);
	vm_put(gone);
}

uint32_t mig__dirty_ring_known(int vm_fd)
{
	struct ring_vm *vm = vm_get(vm_fd);
	uint32_t n = vm ? vm->entries : 0;

	vm_put(vm);
	return n;
}

/* ---- Rings (ring_vm.lock held) ---------------------------------------- */

static struct ring_vcpu *vcpu_find(struct ring_vm *vm, int fd, bool add)
{
	for (uint32_t i = 0; i < vm->nr_vcpus; i++)
		if (vm->vcpus[i].fd == fd)
			return &vm->vcpus[i];
	if (!add)
		return NULL;
	if (vm->nr_vcpus == vm->cap_vcpus) {
		uint32_t cap = vm->cap_vcpus ? 2 * vm->cap_vcpus : 8;
		struct ring_vcpu *v = realloc(vm->vcpus, cap * sizeof(*v));
		if (!v)
			return NULL;
		vm->vcpus = v;
		vm->cap_vcpus = cap;
	}
	/* KVM starts every ring at index 0, and the ring was enabled
	 * before any vCPU existed, so 0 is right for a vCPU first seen. */
	vm->vcpus[vm->nr_vcpus] = (struct ring_vcpu){ .fd = fd };
	return &vm->vcpus[vm->nr_vcpus++];
}

static int ring_map(struct ring_vm *vm, int fd, struct kvm_dirty_gfn **out)
{
	long page = sysconf(_SC_PAGESIZE);
	void *p = mmap(NULL, ring_bytes(vm), PROT_READ | PROT_WRITE,
		       MAP_SHARED, fd, (off_t)KVM_DIRTY_LOG_PAGE_OFFSET * page);

	if (p == MAP_FAILED)
		return errno == ENODEV ? -EBADF : -errno;
#ifdef MADV_POPULATE_READ
	/* KVM maps any offset and raises SIGBUS on touching one past the
	 * ring: fault it in now, where a bad fd (not a vCPU of this VM, or
	 * a ring smaller than we think) is an error instead of a crash.
	 * Kernels before 5.14 say EINVAL and we go on trusting the fd. */
	if (madvise(p, ring_bytes(vm), MADV_POPULATE_READ) != 0 &&
	    errno != EINVAL) {
		int e = errno == EFAULT ? -ENXIO : -errno;
		munmap(p, ring_bytes(vm));
		return e;
	}
#endif
	*out = p;
	return 0;
}

static int slot_cmp(const void *a, const void *b)
{
	uint32_t x = ((const struct slot_idx *)a)->slot;
	uint32_t y = ((const struct slot_idx *)b)->slot;
	return x < y ? -1 : x > y;
}

/* Note page `offset` of `slot` as dirty in tracker d's pending set. */
static void pending_add(mig_dirty *d, uint32_t slot, uint64_t offset)
{
	struct ring_priv *p = d->priv;
	struct slot_idx key = { .slot = slot }, *s;
	uint64_t bit, *word;

	s = bsearch(&key, p->slots, d->nr, sizeof(*s), slot_cmp);
	if (!s || offset >= d->regs[s->region].npages) {
		p->foreign++;
		return;
	}
	word = &p->pend[s->region][offset / 64];
	bit = UINT64_C(1) << (offset % 64);
	if (*word & bit)
		return;
	*word |= bit;
	if (p->overflow)
		return;
	if (p->len == p->cap) {
		size_t cap = p->cap ? 2 * p->cap : 4096;
		uint64_t *l = realloc(p->list, cap * sizeof(*l));
		if (!l) {
			p->overflow = true;
			return;
		}
		p->list = l;
		p->cap = cap;
	}
	p->list[p->len++] = (uint64_t)s->region << 48 | offset;
}

/*
 * Take the published entries of one ring, into d's pending set (or nowhere
 * when d is NULL), and mark them for KVM_RESET_DIRTY_RINGS. Returns how many.
 */
static uint32_t harvest(struct ring_vm *vm, struct ring_vcpu *v, mig_dirty *d)
{
	uint32_t n = 0, mask = vm->entries - 1;

	while (n < vm->entries) {
		struct kvm_dirty_gfn *e = &v->gfns[v->fetch & mask];
		uint32_t flags = __atomic_load_n(&e->flags, __ATOMIC_ACQUIRE);

		if (!(flags & KVM_DIRTY_GFN_F_DIRTY))
			break;
		if (d)
			pending_add(d, e->slot, e->offset);
		__atomic_store_n(&e->flags, KVM_DIRTY_GFN_F_RESET,
				 __ATOMIC_RELEASE);
		v->fetch++;
		n++;
	}
	vm->marked += n;
	return n;
}

/*
 * KVM_RESET_DIRTY_RINGS: re-protect the pages of every entry marked RESET.
 *
 * Since Linux 6.16 KVM stops early when the calling thread has a signal
 * pending, returns the count done so far (not -EINTR), and drops the batch
 * it was gathering: up to 64 nearby pages whose entries are consumed but
 * which stay writable, so the guest's next writes to them are never logged
 * and the destination keeps an older copy. A vCPU thread in
 * mig_dirty_ring_full() is exactly where signals land (a VMM kicks its
 * vCPUs to pause or throttle them), and we saw it happen there. So every
 * signal is blocked for the call. One that cannot be blocked (SIGSTOP, the
 * freezer) still cuts it short: the count shows it, the rest is reset by
 * calling again, and the active tracker's next sync fails (ring_sync), as
 * pages may now change unseen. A call that did nothing dropped nothing
 * either: what it left is reset by the next one.
 */
static int reset_rings(struct ring_vm *vm)
{
	sigset_t all, old;
	int r;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	for (;;) {
		r = mig__kvm_ioctl(vm->vm_fd, KVM_RESET_DIRTY_RINGS, NULL);
		if (r <= 0 || (uint64_t)r >= vm->marked) {
			if (r >= 0)
				vm->marked = 0;
			break;
		}
		if (vm->cut_short++ == 0) {
			vm->cut_after = r;
			vm->cut_of = vm->marked;
		}
		vm->marked -= (uint64_t)r; /* > 0 left, and each call does some */
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return r < 0 ? r : 0;
}

/* Harvest every mapped ring of vm into d (NULL: discard), then reset. */
static int harvest_all(struct ring_vm *vm, mig_dirty *d, bool reset)
{
	uint32_t n = 0;

	for (uint32_t i = 0; i < vm->nr_vcpus; i++)
		if (vm->vcpus[i].gfns)
			n += harvest(vm, &vm->vcpus[i], d);
	/* Also what an earlier reset left (cut short, or a final sync's). */
	return (n || vm->marked) && reset ? reset_rings(vm) : 0;
}

static void pending_clear(mig_dirty *d)
{
	struct ring_priv *p = d->priv;

	if (p->overflow) {
		for (uint32_t i = 0; i < d->nr; i++)
			memset(p->pend[i], 0, d->regs[i].nwords * sizeof(uint64_t));
	} else {
		for (size_t k = 0; k < p->len; k++) {
			uint64_t page = p->list[k] & ((UINT64_C(1) << 48) - 1);
			p->pend[p->list[k] >> 48][page / 64] = 0;
		}
	}
	p->len = 0;
	p->overflow = false;
}

/* ---- Backend ----------------------------------------------------------- */

static int ring_probe(int vm_fd, bool explicit_mode, mig_error *err)
{
	int on = mig__kvm_ring_enabled(vm_fd);

	if (on < 0)
		return mig__err(err, on, "fd %d is not a KVM VM fd: %s",
				vm_fd, mig_strerror(on));
	if (!on) {
		if (!mig__kvm_check(vm_fd, KVM_CAP_DIRTY_LOG_RING) &&
		    !mig__kvm_check(vm_fd, KVM_CAP_DIRTY_LOG_RING_ACQ_REL))
			return mig__err(err, -ENOTSUP,
					"KVM on this host has no dirty ring (KVM_CAP_DIRTY_LOG_RING)");
		return mig__err(err, -ENOTSUP,
				"the dirty ring is not enabled on this VM: the VMM must call mig_dirty_ring_enable() after KVM_CREATE_VM and before creating vCPUs");
	}
	if (!mig__dirty_ring_known(vm_fd))
		return mig__err(err, -ENOTSUP,
				"the dirty ring was enabled on this VM without mig_dirty_ring_enable(), so libmigrate does not know its size");
	return 0;
}

static void ring_fini(mig_dirty *d)
{
	struct ring_priv *p = d->priv;
	struct ring_vm *vm;

	if (!p)
		return;
	vm = p->vm;
	if (vm) {
		pthread_mutex_lock(&vm->lock);
		if (vm->active == d)
			vm->active = NULL;
		if (vm->owner == d) {
			for (uint32_t i = 0; i < vm->nr_vcpus; i++)
				if (vm->vcpus[i].gfns) {
					munmap(vm->vcpus[i].gfns, ring_bytes(vm));
					vm->vcpus[i].gfns = NULL;
				}
			vm->owner = NULL;
		}
		pthread_mutex_unlock(&vm->lock);
		vm_put(vm);
	}
	if (p->pend)
		for (uint32_t i = 0; i < d->nr; i++)
			free(p->pend[i]);
	free(p->pend);
	free(p->list);
	free(p->slots);
	free(p);
	d->priv = NULL;
}

static int ring_init(mig_dirty *d, const int *vcpu_fds, uint32_t nr_vcpus,
		     mig_error *err)
{
	struct ring_priv *p;
	struct ring_vm *vm;
	int r = 0;

	if (!nr_vcpus)
		return mig__err(err, -EINVAL,
				"ring mode needs the fds of every vCPU (none given)");
	p = calloc(1, sizeof(*p));
	if (!p)
		return mig__err(err, -ENOMEM, "out of memory");
	d->priv = p;
	p->slots = calloc(d->nr, sizeof(*p->slots));
	p->pend = calloc(d->nr, sizeof(*p->pend));
	if (!p->slots || !p->pend)
		goto nomem;
	for (uint32_t i = 0; i < d->nr; i++) {
		p->slots[i] = (struct slot_idx){ d->regs[i].r.slot, i };
		p->pend[i] = calloc(d->regs[i].nwords, sizeof(uint64_t));
		if (!p->pend[i])
			goto nomem;
	}
	qsort(p->slots, d->nr, sizeof(*p->slots), slot_cmp);

	vm = p->vm = vm_get(d->vm_fd);
	if (!vm) {
		r = mig__err(err, -ENOTSUP,
			     "the dirty ring is not enabled on this VM (mig_dirty_ring_enable)");
		goto fail;
	}
	pthread_mutex_lock(&vm->lock);
	if (vm->owner) {
		pthread_mutex_unlock(&vm->lock);
		r = mig__err(err, -EBUSY,
			     "another ring tracker exists for VM fd %d",
			     d->vm_fd);
		goto fail;
	}
	vm->owner = d;
	for (uint32_t i = 0; i < nr_vcpus && r == 0; i++) {
		bool known = vcpu_find(vm, vcpu_fds[i], false) != NULL;
		struct ring_vcpu *v = vcpu_find(vm, vcpu_fds[i], true);

		if (!v) {
			r = mig__err(err, -ENOMEM, "out of memory");
		} else if (!v->gfns && (r = ring_map(vm, v->fd, &v->gfns)) < 0) {
			if (!known)
				vm->nr_vcpus--; /* not a vCPU to remember */
			r = mig__err(err, r,
				     "vCPU fd %d: mapping its dirty ring (%u entries): %s%s",
				     vcpu_fds[i], vm->entries, mig_strerror(r),
				     r == -ENXIO || r == -EBADF ? " (not a vCPU of this VM?)" : "");
		}
	}
	pthread_mutex_unlock(&vm->lock);
	if (r < 0)
		goto fail; /* ring_fini unmaps what was mapped */
	return 0;
nomem:
	r = mig__err(err, -ENOMEM, "out of memory");
fail:
	ring_fini(d);
	return r;
}

static int ring_start(mig_dirty *d, mig_error *err)
{
	struct ring_priv *p = d->priv;
	struct ring_vm *vm = p->vm;
	int r;

	pthread_mutex_lock(&vm->lock);
	/* Entries left from an earlier tracking session are stale: logging
	 * starts now, and the first sync reports everything anyway. */
	harvest_all(vm, NULL, false);
	r = reset_rings(vm); /* also what a final sync left marked */
	/* Pages left writable by a reset cut short are protected again when
	 * logging is switched on for the slots, right after this. */
	vm->cut_short = 0;
	pending_clear(d);
	if (r == 0)
		vm->active = d;
	pthread_mutex_unlock(&vm->lock);
	if (r < 0)
		return mig__err(err, r, "KVM_RESET_DIRTY_RINGS: %s",
				mig_strerror(r));
	return 0;
}

static long ring_sync(mig_dirty *d, uint64_t *const *bitmaps, bool final,
		      mig_error *err)
{
	struct ring_priv *p = d->priv;
	struct ring_vm *vm = p->vm;
	long n = 0;
	int r;

	pthread_mutex_lock(&vm->lock);
	/* Final: the entries stay marked RESET, and whoever resets next
	 * (start, mig_dirty_ring_full) frees them. */
	r = harvest_all(vm, d, !final);
	if (r < 0) {
		/* Pending stays: the next sync reports it. */
		pthread_mutex_unlock(&vm->lock);
		return mig__err(err, r, "KVM_RESET_DIRTY_RINGS: %s",
				mig_strerror(r));
	}
	if (vm->cut_short) {
		r = mig__err(err, -EIO,
			     "KVM_RESET_DIRTY_RINGS was cut short by a signal that could not be blocked (after %d of %llu entries, %u time(s)): KVM then leaves up to 64 pages writable without logging their writes, so the dirty ring cannot be trusted until tracking restarts",
			     vm->cut_after, (unsigned long long)vm->cut_of,
			     vm->cut_short);
		pthread_mutex_unlock(&vm->lock);
		return r;
	}
	if (p->overflow) {
		for (uint32_t i = 0; i < d->nr; i++)
			n += (long)mig__bitmap_or(bitmaps[i], p->pend[i],
						  d->regs[i].nwords);
	} else {
		for (size_t k = 0; k < p->len; k++) {
			uint64_t page = p->list[k] & ((UINT64_C(1) << 48) - 1);
			uint64_t *w = &bitmaps[p->list[k] >> 48][page / 64];
			uint64_t bit = UINT64_C(1) << (page % 64);
			if (!(*w & bit)) {
				*w |= bit;
				n++;
			}
		}
	}
	pending_clear(d);
	pthread_mutex_unlock(&vm->lock);
	return n;
}

static void ring_stop(mig_dirty *d)
{
	struct ring_priv *p = d->priv;
	struct ring_vm *vm = p->vm;

	/* Entries still in the rings are left to the next start or to
	 * mig_dirty_ring_full(), which drop them. */
	pthread_mutex_lock(&vm->lock);
	vm->active = NULL;
	pending_clear(d);
	pthread_mutex_unlock(&vm->lock);
}

const struct mig__dirty_ops mig__dirty_ring_ops = {
	.name = "ring",
	.mode = MIG_DIRTY_LOG_RING,
	.probe = ring_probe,
	.init = ring_init,
	.start = ring_start,
	.sync = ring_sync,
	.stop = ring_stop,
	.fini = ring_fini,
};

/* ---- Public API ---------------------------------------------------------- */

MIG_API int mig_dirty_ring_enable(int vm_fd, uint32_t entries, mig_error *err)
{
	long cap = KVM_CAP_DIRTY_LOG_RING_ACQ_REL;
	int max = mig__kvm_check(vm_fd, cap);
	uint64_t bytes, asked;
	struct kvm_enable_cap ec;
	struct ring_vm *vm;
	int on, r;

	on = mig__kvm_ring_enabled(vm_fd);
	if (on < 0)
		return mig__err(err, on, "dirty ring: fd %d is not a KVM VM fd: %s", vm_fd,
				mig_strerror(on));
	if (on) {
		uint32_t known = mig__dirty_ring_known(vm_fd);
		if (known)
			return (int)known;
		return mig__err(err, -EEXIST,
				"dirty ring: already enabled on VM fd %d, not by libmigrate (its size is unknown)",
				vm_fd);
	}
	if (max <= 0) {
		cap = KVM_CAP_DIRTY_LOG_RING;
		max = mig__kvm_check(vm_fd, cap);
	}
	if (max <= 0)
		return mig__err(err, -ENOTSUP,
				"dirty ring: KVM on this host has no KVM_CAP_DIRTY_LOG_RING");
	if (!entries)
		entries = RING_DEFAULT_ENTRIES;
	bytes = 4096;
	while (bytes < (uint64_t)entries * RING_ENTRY_SIZE && bytes < (uint64_t)max)
		bytes *= 2;
	bytes = asked = MIG_MIN(bytes, (uint64_t)max);

	/* KVM also wants room for its reserved entries (more with PML), which
	 * it does not tell: double a too small ring up to the maximum. */
	for (;;) {
		ec = (struct kvm_enable_cap){ .cap = (uint32_t)cap,
					      .args = { bytes } };
		r = mig__kvm_ioctl(vm_fd, KVM_ENABLE_CAP, &ec);
		if (r == 0 || r != -EINVAL || bytes >= (uint64_t)max)
			break;
		bytes *= 2;
	}
	if (r < 0)
		return mig__err(err, r,
				"dirty ring: KVM_ENABLE_CAP(%s, %llu bytes): %s%s",
				cap == KVM_CAP_DIRTY_LOG_RING ? "DIRTY_LOG_RING" : "DIRTY_LOG_RING_ACQ_REL",
				(unsigned long long)asked, mig_strerror(r),
				r == -EINVAL ? " (it must be enabled before the first vCPU is created)" : "");

	vm = calloc(1, sizeof(*vm));
	if (!vm)
		return mig__err(err, -ENOMEM, "dirty ring: out of memory");
	vm->vm_fd = vm_fd;
	vm->entries = (uint32_t)(bytes / RING_ENTRY_SIZE);
	vm->refs = 1;
	pthread_mutex_init(&vm->lock, NULL);
	/* A stale entry means the fd number was reused for this new VM. */
	vm_unlist(vm_fd);
	pthread_mutex_lock(&reg_lock);
	vm->next = reg_list;
	reg_list = vm;
	pthread_mutex_unlock(&reg_lock);
	return (int)vm->entries;
}

MIG_API int mig_dirty_ring_full(int vm_fd, int vcpu_fd)
{
	struct ring_vm *vm = vm_get(vm_fd);
	struct ring_vcpu *v;
	bool known, temp = false;
	int r = 0;

	if (!vm)
		return -ENOENT;
	pthread_mutex_lock(&vm->lock);
	vm->full_exits++;
	known = vcpu_find(vm, vcpu_fd, false) != NULL;
	/* Without a record its fetch index would be lost: fail instead. */
	v = vcpu_find(vm, vcpu_fd, true);
	if (!v) {
		r = -ENOMEM;
	} else if (!v->gfns) {
		r = ring_map(vm, vcpu_fd, &v->gfns);
		if (r < 0 && !known)
			vm->nr_vcpus--;
		/* Keep the mapping while a tracker owns the VM (its destroy
		 * unmaps), else drop it when done. */
		temp = r == 0 && !vm->owner;
	}
	if (r == 0) {
		/* Reset even if nothing new: a final sync may have left the
		 * ring full of harvested entries. */
		harvest(vm, v, vm->active);
		r = reset_rings(vm);
		if (temp) {
			munmap(v->gfns, ring_bytes(vm));
			v->gfns = NULL;
		}
	}
	pthread_mutex_unlock(&vm->lock);
	vm_put(vm);
	return r;
}

MIG_API void mig_dirty_ring_forget(int vm_fd)
{
	vm_unlist(vm_fd);
}
