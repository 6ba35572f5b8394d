/*
 * Save and load the standard KVM x86 vCPU and VM state (kvm_x86.h).
 *
 * Each KVM uapi struct is stored as its raw bytes in a protobuf message
 * (proto/vmstate.proto). Loading decodes and checks the whole blob first,
 * then applies it in the order KVM needs; a bad blob never reaches KVM.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/kvm.h>

#include "internal.h"
#include "vmstate.pb-c.h"

#define MSR_IA32_TSC 0x00000010u
#define MSR_IA32_TSC_ADJUST 0x0000003bu
#define MSR_IA32_TSC_DEADLINE 0x000006e0u

/* More MSRs than any KVM lists; a blob with more is refused. */
#define X86_MSRS_MAX 1024u
/* KVM_GET_MSRS / KVM_SET_MSRS take fewer than 256 at a time (MAX_IO_MSRS). */
#define X86_MSRS_PER_IOCTL 255u
/* XSAVE areas are 4 KiB today and grow with AMX (11 KiB); leave room. */
#define X86_XSAVE_MAX (64u << 10)

MIG_API void mig_free(void *p)
{
	free(p);
}

static int xioctl(int fd, unsigned long req, void *arg)
{
	int r;

	do
		r = ioctl(fd, req, arg);
	while (r < 0 && errno == EINTR);
	return r < 0 ? -errno : r;
}

static int ioctl_err(mig_error *err, int r, const char *what)
{
	return mig__err(err, r, "%s: %s", what, mig_strerror(r));
}

/*
 * What the host's KVM offers does not change while it is loaded, and the
 * answers are asked for every vCPU on both sides of the downtime: these
 * system-wide questions are asked once per process. KVM_CAP_XSAVE2 is not
 * among them (its size follows the process's guest XSAVE permissions, which
 * arch_prctl may widen at any time), nor is a failed answer.
 */
static const long host_caps[] = { KVM_CAP_SREGS2, KVM_CAP_XSAVE, KVM_CAP_XCRS };
static int host_cap_value[sizeof(host_caps) / sizeof(host_caps[0])]; /* + 1 */

static int host_cap(int kvm_fd, long cap)
{
	size_t i;
	int r;

	for (i = 0; i < sizeof(host_caps) / sizeof(host_caps[0]); i++)
		if (host_caps[i] == cap)
			break;
	if (i < sizeof(host_caps) / sizeof(host_caps[0])) {
		r = __atomic_load_n(&host_cap_value[i], __ATOMIC_RELAXED);
		if (r > 0)
			return r - 1;
	}
	r = xioctl(kvm_fd, KVM_CHECK_EXTENSION, (void *)cap);
	if (r >= 0 && i < sizeof(host_caps) / sizeof(host_caps[0]))
		__atomic_store_n(&host_cap_value[i], r + 1, __ATOMIC_RELAXED);
	return r;
}

/* ---- MSR list -------------------------------------------------------- */

static pthread_mutex_t msr_list_lock = PTHREAD_MUTEX_INITIALIZER;
static struct kvm_msr_list *msr_list_cache;

/* KVM_GET_MSR_INDEX_LIST (asked once per process), malloc'd into *out. */
static int msr_index_list(int kvm_fd, struct kvm_msr_list **out,
			  mig_error *err)
{
	struct kvm_msr_list probe = { .nmsrs = 0 };
	struct kvm_msr_list *l;
	size_t size;
	int r;

	pthread_mutex_lock(&msr_list_lock);
	if (msr_list_cache) {
		size = sizeof(*l) + (msr_list_cache->nmsrs + 1) * sizeof(l->indices[0]);
		l = malloc(size);
		if (l)
			memcpy(l, msr_list_cache, size);
		pthread_mutex_unlock(&msr_list_lock);
		if (!l)
			return mig__err(err, -ENOMEM, "MSR list: out of memory");
		*out = l;
		return 0;
	}
	pthread_mutex_unlock(&msr_list_lock);

	r = xioctl(kvm_fd, KVM_GET_MSR_INDEX_LIST, &probe);
	if (r < 0 && r != -E2BIG)
		return ioctl_err(err, r, "KVM_GET_MSR_INDEX_LIST");
	if (probe.nmsrs > X86_MSRS_MAX)
		return mig__err(err, -ERANGE,
				"KVM_GET_MSR_INDEX_LIST: %u MSRs, more than %u",
				probe.nmsrs, X86_MSRS_MAX);
	l = calloc(1, sizeof(*l) + (probe.nmsrs + 1) * sizeof(l->indices[0]));
	if (!l)
		return mig__err(err, -ENOMEM, "MSR list: out of memory");
	l->nmsrs = probe.nmsrs;
	r = xioctl(kvm_fd, KVM_GET_MSR_INDEX_LIST, l);
	if (r < 0) {
		free(l);
		return ioctl_err(err, r, "KVM_GET_MSR_INDEX_LIST");
	}
	size = sizeof(*l) + (l->nmsrs + 1) * sizeof(l->indices[0]);
	pthread_mutex_lock(&msr_list_lock);
	if (!msr_list_cache && (msr_list_cache = malloc(size)) != NULL)
		memcpy(msr_list_cache, l, size);
	pthread_mutex_unlock(&msr_list_lock);
	*out = l;
	return 0;
}

static struct kvm_msrs *msrs_alloc(size_t n)
{
	struct kvm_msrs *m = calloc(1, sizeof(*m) + (n + 1) * sizeof(m->entries[0]));
	if (m)
		m->nmsrs = (uint32_t)n;
	return m;
}

/*
 * Read the listed MSRs that this vCPU accepts: KVM_GET_MSRS stops at the
 * first MSR it refuses and returns how many it read, so skip that one and go
 * on from the next. Returns a malloc'd kvm_msrs with only the readable ones.
 */
static int msrs_read(int kvm_fd, int vcpu_fd, struct kvm_msrs **out,
		     mig_error *err)
{
	struct kvm_msr_list *list = NULL;
	struct kvm_msrs *all, *one;
	uint32_t n = 0;
	int r;

	r = msr_index_list(kvm_fd, &list, err);
	if (r < 0)
		return r;
	all = msrs_alloc(list->nmsrs);
	one = msrs_alloc(list->nmsrs);
	if (!all || !one) {
		r = mig__err(err, -ENOMEM, "MSRs: out of memory");
		goto out;
	}
	for (uint32_t i = 0; i < list->nmsrs;) {
		uint32_t left = MIG_MIN(list->nmsrs - i, X86_MSRS_PER_IOCTL);
		one->nmsrs = left;
		for (uint32_t j = 0; j < left; j++) {
			one->entries[j].index = list->indices[i + j];
			one->entries[j].data = 0;
		}
		r = xioctl(vcpu_fd, KVM_GET_MSRS, one);
		if (r < 0) {
			r = ioctl_err(err, r, "KVM_GET_MSRS");
			goto out;
		}
		if ((uint32_t)r > left) {
			r = mig__err(err, -EPROTO, "KVM_GET_MSRS: read %d of %u",
				     r, left);
			goto out;
		}
		memcpy(&all->entries[n], one->entries,
		       (size_t)r * sizeof(one->entries[0]));
		n += (uint32_t)r;
		i += (uint32_t)r;
		if ((uint32_t)r < left)
			i++; /* skip the one KVM refused */
	}
	all->nmsrs = n;
	*out = all;
	all = NULL;
	r = 0;
out:
	free(list);
	free(all);
	free(one);
	return r;
}

MIG_API int mig_x86_msr_list(int kvm_fd, int vcpu_fd, uint32_t *out,
			     size_t max, mig_error *err)
{
	struct kvm_msrs *m = NULL;
	int r;

	if (!out && max)
		return mig__err(err, -EINVAL, "mig_x86_msr_list: out is NULL");
	/* The host's answers are cached on first use: ask them now too, so
	 * that a caller preparing a migration keeps them out of its
	 * downtime (kvm_x86.h). */
	for (size_t i = 0; i < sizeof(host_caps) / sizeof(host_caps[0]); i++)
		(void)host_cap(kvm_fd, host_caps[i]);
	r = msrs_read(kvm_fd, vcpu_fd, &m, err);
	if (r < 0)
		return r;
	for (uint32_t i = 0; i < m->nmsrs && i < max; i++)
		out[i] = m->entries[i].index;
	r = (int)m->nmsrs;
	free(m);
	return r;
}

/* ---- Packing --------------------------------------------------------- */

static int pack_out(const ProtobufCMessage *msg, void **blob, size_t *len,
		    mig_error *err)
{
	size_t n = protobuf_c_message_get_packed_size(msg);
	uint8_t *buf;

	if (n > MIG_X86_BLOB_MAX)
		return mig__err(err, -EMSGSIZE, "state blob of %zu bytes, more "
				"than %u", n, MIG_X86_BLOB_MAX);
	buf = malloc(n ? n : 1);
	if (!buf)
		return mig__err(err, -ENOMEM, "state blob: out of memory");
	protobuf_c_message_pack(msg, buf);
	*blob = buf;
	*len = n;
	return 0;
}

#define BYTES(field, ptr, size) do {                    \
		(field).data = (uint8_t *)(ptr);        \
		(field).len = (size);                   \
	} while (0)

/* ---- vCPU save ------------------------------------------------------- */

struct vcpu_bufs {
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	struct kvm_sregs2 sregs2;
	struct kvm_fpu fpu;
	struct kvm_xcrs xcrs;
	struct kvm_lapic_state lapic;
	struct kvm_mp_state mp;
	struct kvm_vcpu_events events;
	struct kvm_debugregs dregs;
	void *xsave;
	struct kvm_msrs *msrs;
	Mig__State__Msr *msr_items;
	Mig__State__Msr **msr_ptrs;
};

/*
 * KVM_GET_SREGS without the ioctl, when KVM_GET_SREGS2 was read: KVM fills
 * both from one function and they share their layout up to apic_base; the
 * interrupt bitmap holds the external interrupt KVM has injected, if any,
 * which KVM_GET_VCPU_EVENTS reports as well. One vCPU ioctl less in the
 * downtime, and the blob still loads where KVM has no SREGS2.
 */
_Static_assert(offsetof(struct kvm_sregs, interrupt_bitmap) ==
	       offsetof(struct kvm_sregs2, flags),
	       "kvm_sregs and kvm_sregs2 share their first fields");

static void sregs_from_sregs2(struct kvm_sregs *s, const struct kvm_sregs2 *s2,
			      const struct kvm_vcpu_events *ev)
{
	memset(s, 0, sizeof(*s));
	memcpy(s, s2, offsetof(struct kvm_sregs, interrupt_bitmap));
	if (ev->interrupt.injected && !ev->interrupt.soft)
		s->interrupt_bitmap[ev->interrupt.nr / 64] |=
			UINT64_C(1) << (ev->interrupt.nr % 64);
}

static void vcpu_bufs_free(struct vcpu_bufs *b)
{
	free(b->xsave);
	free(b->msrs);
	free(b->msr_items);
	free(b->msr_ptrs);
	free(b);
}

MIG_API int mig_x86_vcpu_save(int kvm_fd, int vcpu_fd, void **blob,
			      size_t *len, mig_error *err)
{
	Mig__State__X86Vcpu m = MIG__STATE__X86_VCPU__INIT;
	struct vcpu_bufs *b;
	int r, xsave_size;

	if (!blob || !len)
		return mig__err(err, -EINVAL, "mig_x86_vcpu_save: NULL output");
	*blob = NULL;
	*len = 0;
	b = calloc(1, sizeof(*b));
	if (!b)
		return mig__err(err, -ENOMEM, "vCPU state: out of memory");
	m.version = MIG_X86_STATE_VERSION;

	/*
	 * The MP state before anything else: KVM_GET_MP_STATE first delivers
	 * a pending INIT or SIPI (kvm_apic_accept_events), and an INIT resets
	 * the registers, segments, control registers and pending events, a
	 * SIPI sets CS:IP. Registers read before it would be those from
	 * before an INIT that the MP state read after them includes: the
	 * INIT lost, or an AP "running" at the reset vector (rip fff0, cs
	 * f000) instead of at its SIPI vector. The events come next, so that
	 * latched_init carries only an INIT that KVM still holds back (SMM,
	 * GIF clear on SVM). Read before the MP state (QEMU's order, chosen
	 * for nested guests, whose state these helpers do not save), an INIT
	 * and SIPI delivered here would come back as a bare INIT where the
	 * blob is loaded, and the AP would wait for a SIPI that never comes.
	 */
	if ((r = xioctl(vcpu_fd, KVM_GET_MP_STATE, &b->mp)) < 0) {
		ioctl_err(err, r, "KVM_GET_MP_STATE");
		goto fail;
	}
	BYTES(m.mp_state, &b->mp, sizeof(b->mp));
	if ((r = xioctl(vcpu_fd, KVM_GET_VCPU_EVENTS, &b->events)) < 0) {
		ioctl_err(err, r, "KVM_GET_VCPU_EVENTS");
		goto fail;
	}
	BYTES(m.events, &b->events, sizeof(b->events));
	if ((r = xioctl(vcpu_fd, KVM_GET_REGS, &b->regs)) < 0) {
		ioctl_err(err, r, "KVM_GET_REGS");
		goto fail;
	}
	BYTES(m.regs, &b->regs, sizeof(b->regs));
	if (host_cap(kvm_fd, KVM_CAP_SREGS2) > 0) {
		/* "sregs" follows from these and the events, below. */
		if ((r = xioctl(vcpu_fd, KVM_GET_SREGS2, &b->sregs2)) < 0) {
			ioctl_err(err, r, "KVM_GET_SREGS2");
			goto fail;
		}
		BYTES(m.sregs2, &b->sregs2, sizeof(b->sregs2));
	} else if ((r = xioctl(vcpu_fd, KVM_GET_SREGS, &b->sregs)) < 0) {
		ioctl_err(err, r, "KVM_GET_SREGS");
		goto fail;
	}
	BYTES(m.sregs, &b->sregs, sizeof(b->sregs));

	xsave_size = host_cap(kvm_fd, KVM_CAP_XSAVE2);
	if (xsave_size > 0) {
		if ((size_t)xsave_size < sizeof(struct kvm_xsave) ||
		    xsave_size > (int)X86_XSAVE_MAX) {
			r = mig__err(err, -ERANGE, "KVM_CAP_XSAVE2: size %d",
				     xsave_size);
			goto fail;
		}
		b->xsave = calloc(1, (size_t)xsave_size);
		if (!b->xsave)
			goto fail_nomem;
		if ((r = xioctl(vcpu_fd, KVM_GET_XSAVE2, b->xsave)) < 0) {
			ioctl_err(err, r, "KVM_GET_XSAVE2");
			goto fail;
		}
		BYTES(m.xsave, b->xsave, (size_t)xsave_size);
	} else if (host_cap(kvm_fd, KVM_CAP_XSAVE) > 0) {
		b->xsave = calloc(1, sizeof(struct kvm_xsave));
		if (!b->xsave)
			goto fail_nomem;
		if ((r = xioctl(vcpu_fd, KVM_GET_XSAVE, b->xsave)) < 0) {
			ioctl_err(err, r, "KVM_GET_XSAVE");
			goto fail;
		}
		BYTES(m.xsave, b->xsave, sizeof(struct kvm_xsave));
	} else {
		if ((r = xioctl(vcpu_fd, KVM_GET_FPU, &b->fpu)) < 0) {
			ioctl_err(err, r, "KVM_GET_FPU");
			goto fail;
		}
		BYTES(m.fpu, &b->fpu, sizeof(b->fpu));
	}
	if (host_cap(kvm_fd, KVM_CAP_XCRS) > 0) {
		if ((r = xioctl(vcpu_fd, KVM_GET_XCRS, &b->xcrs)) < 0) {
			ioctl_err(err, r, "KVM_GET_XCRS");
			goto fail;
		}
		BYTES(m.xcrs, &b->xcrs, sizeof(b->xcrs));
	}

	r = msrs_read(kvm_fd, vcpu_fd, &b->msrs, err);
	if (r < 0)
		goto fail;
	b->msr_items = calloc(b->msrs->nmsrs + 1, sizeof(*b->msr_items));
	b->msr_ptrs = calloc(b->msrs->nmsrs + 1, sizeof(*b->msr_ptrs));
	if (!b->msr_items || !b->msr_ptrs)
		goto fail_nomem;
	for (uint32_t i = 0; i < b->msrs->nmsrs; i++) {
		mig__state__msr__init(&b->msr_items[i]);
		b->msr_items[i].index = b->msrs->entries[i].index;
		b->msr_items[i].value = b->msrs->entries[i].data;
		b->msr_ptrs[i] = &b->msr_items[i];
	}
	m.n_msrs = b->msrs->nmsrs;
	m.msrs = b->msr_ptrs;

	r = xioctl(vcpu_fd, KVM_GET_LAPIC, &b->lapic);
	if (r == 0) {
		BYTES(m.lapic, &b->lapic, sizeof(b->lapic));
	} else if (r != -ENXIO) { /* ENXIO: no in-kernel LAPIC */
		ioctl_err(err, r, "KVM_GET_LAPIC");
		goto fail;
	}
	if (m.sregs2.len)
		sregs_from_sregs2(&b->sregs, &b->sregs2, &b->events);
	if ((r = xioctl(vcpu_fd, KVM_GET_DEBUGREGS, &b->dregs)) < 0) {
		ioctl_err(err, r, "KVM_GET_DEBUGREGS");
		goto fail;
	}
	BYTES(m.debugregs, &b->dregs, sizeof(b->dregs));
	r = xioctl(vcpu_fd, KVM_GET_TSC_KHZ, NULL);
	m.tsc_khz = r > 0 ? (uint64_t)r : 0; /* 0: unknown, not set on load */

	r = pack_out(&m.base, blob, len, err);
	vcpu_bufs_free(b);
	return r;

fail_nomem:
	r = mig__err(err, -ENOMEM, "vCPU state: out of memory");
fail:
	vcpu_bufs_free(b);
	return r;
}

/* ---- vCPU load ------------------------------------------------------- */

/* Check that an item has exactly the size of its KVM struct. */
static int check_item(const ProtobufCBinaryData *d, size_t want, bool required,
		      const char *what, const char *blob, mig_error *err)
{
	if (d->len == 0 && !required)
		return 0;
	if (d->len == 0)
		return mig__err(err, -EINVAL, "%s state: item \"%s\" is missing",
				blob, what);
	if (d->len != want)
		return mig__err(err, -EINVAL, "%s state: item \"%s\" has %zu "
				"bytes, expected %zu", blob, what, d->len, want);
	return 0;
}

static int check_version(uint32_t v, const char *blob, mig_error *err)
{
	if (v == 0 || v > MIG_X86_STATE_VERSION)
		return mig__err(err, -EINVAL, "%s state: version %u, this "
				"library reads 1..%d", blob, v,
				MIG_X86_STATE_VERSION);
	return 0;
}

/* The checks every blob passes before it is decoded. */
static int check_blob(const void *blob, size_t len, const char *what,
		      mig_error *err)
{
	if (!blob && len)
		return mig__err(err, -EINVAL, "%s state: NULL blob", what);
	if (len == 0)
		return mig__err(err, -EBADMSG, "%s state: empty blob", what);
	if (len > MIG_X86_BLOB_MAX)
		return mig__err(err, -EMSGSIZE, "%s state: %zu bytes, more "
				"than %u", what, len, MIG_X86_BLOB_MAX);
	return 0;
}

/* Decode and check a vCPU blob; nothing touches KVM. */
static int vcpu_decode(const void *blob, size_t len, Mig__State__X86Vcpu **out,
		       mig_error *err)
{
	Mig__State__X86Vcpu *m;
	int r;

	*out = NULL;
	if ((r = check_blob(blob, len, "vCPU", err)) < 0)
		return r;
	m = mig__state__x86_vcpu__unpack(NULL, len, blob);
	if (!m)
		return mig__err(err, -EBADMSG, "vCPU state: %zu bytes that do "
				"not decode (truncated or corrupted)", len);
	if ((r = check_version(m->version, "vCPU", err)) < 0 ||
	    (r = check_item(&m->regs, sizeof(struct kvm_regs), true, "regs",
			    "vCPU", err)) < 0 ||
	    (r = check_item(&m->sregs, sizeof(struct kvm_sregs), true, "sregs",
			    "vCPU", err)) < 0 ||
	    (r = check_item(&m->sregs2, sizeof(struct kvm_sregs2), false,
			    "sregs2", "vCPU", err)) < 0 ||
	    (r = check_item(&m->fpu, sizeof(struct kvm_fpu), false, "fpu",
			    "vCPU", err)) < 0 ||
	    (r = check_item(&m->xcrs, sizeof(struct kvm_xcrs), false, "xcrs",
			    "vCPU", err)) < 0 ||
	    (r = check_item(&m->lapic, sizeof(struct kvm_lapic_state), false,
			    "lapic", "vCPU", err)) < 0 ||
	    (r = check_item(&m->mp_state, sizeof(struct kvm_mp_state), true,
			    "mp_state", "vCPU", err)) < 0 ||
	    (r = check_item(&m->events, sizeof(struct kvm_vcpu_events), true,
			    "events", "vCPU", err)) < 0 ||
	    (r = check_item(&m->debugregs, sizeof(struct kvm_debugregs), false,
			    "debugregs", "vCPU", err)) < 0)
		goto fail;
	if (m->xsave.len == 0 && m->fpu.len == 0) {
		r = mig__err(err, -EINVAL, "vCPU state: neither \"xsave\" nor "
			     "\"fpu\" is present");
		goto fail;
	}
	if (m->xsave.len && (m->xsave.len < sizeof(struct kvm_xsave) ||
			     m->xsave.len > X86_XSAVE_MAX)) {
		r = mig__err(err, -EINVAL, "vCPU state: item \"xsave\" has %zu "
			     "bytes, expected %zu..%u", m->xsave.len,
			     sizeof(struct kvm_xsave), X86_XSAVE_MAX);
		goto fail;
	}
	if (m->xcrs.len) {
		const struct kvm_xcrs *x = (const void *)m->xcrs.data;
		struct kvm_xcrs tmp;
		memcpy(&tmp, x, sizeof(tmp));
		if (tmp.nr_xcrs > KVM_MAX_XCRS) {
			r = mig__err(err, -EINVAL, "vCPU state: item \"xcrs\" "
				     "has %u registers, at most %d", tmp.nr_xcrs,
				     KVM_MAX_XCRS);
			goto fail;
		}
	}
	if (m->n_msrs > X86_MSRS_MAX) {
		r = mig__err(err, -EINVAL, "vCPU state: item \"msrs\" has %zu "
			     "entries, at most %u", m->n_msrs, X86_MSRS_MAX);
		goto fail;
	}
	for (size_t i = 0; i < m->n_msrs; i++)
		for (size_t j = 0; j < i; j++)
			if (m->msrs[i]->index == m->msrs[j]->index) {
				r = mig__err(err, -EINVAL, "vCPU state: MSR "
					     "0x%x appears twice",
					     m->msrs[i]->index);
				goto fail;
			}
	if (m->tsc_khz > UINT32_MAX) {
		r = mig__err(err, -EINVAL, "vCPU state: tsc_khz %llu out of "
			     "range", (unsigned long long)m->tsc_khz);
		goto fail;
	}
	*out = m;
	return 0;
fail:
	mig__state__x86_vcpu__free_unpacked(m, NULL);
	return r;
}

/* The MSRs of the blob in load order; TSC_DEADLINE apart (set last). */
static int msrs_for_load(int kvm_fd, const Mig__State__X86Vcpu *m,
			 struct kvm_msrs **out, bool *has_deadline,
			 uint64_t *deadline, mig_error *err)
{
	struct kvm_msr_list *list = NULL;
	struct kvm_msrs *msrs;
	uint32_t n = 0;
	int r;

	*has_deadline = false;
	r = msr_index_list(kvm_fd, &list, err);
	if (r < 0)
		return r;
	msrs = msrs_alloc(m->n_msrs);
	if (!msrs) {
		free(list);
		return mig__err(err, -ENOMEM, "MSRs: out of memory");
	}
	/* TSC_ADJUST before TSC (as QEMU does): a guest-visible write of the
	 * TSC would otherwise be folded into TSC_ADJUST by older kernels. */
	for (int pass = 0; pass < 2; pass++) {
		for (size_t i = 0; i < m->n_msrs; i++) {
			uint32_t idx = m->msrs[i]->index;
			bool known = false;
			if ((pass == 0) != (idx == MSR_IA32_TSC_ADJUST))
				continue;
			if (idx == MSR_IA32_TSC_DEADLINE) {
				*has_deadline = true;
				*deadline = m->msrs[i]->value;
				continue;
			}
			for (uint32_t k = 0; k < list->nmsrs && !known; k++)
				known = list->indices[k] == idx;
			if (!known) {
				free(list);
				free(msrs);
				return mig__err(err, -ENOTSUP, "vCPU state: "
						"MSR 0x%x is not supported by "
						"this KVM", idx);
			}
			msrs->entries[n].index = idx;
			msrs->entries[n].data = m->msrs[i]->value;
			n++;
		}
	}
	msrs->nmsrs = n;
	free(list);
	*out = msrs;
	return 0;
}

static int set_msrs(int vcpu_fd, struct kvm_msrs *msrs, mig_error *err)
{
	uint32_t total = msrs->nmsrs;
	struct kvm_msrs *chunk;
	int r = 0;

	if (total == 0)
		return 0;
	chunk = msrs_alloc(MIG_MIN(total, X86_MSRS_PER_IOCTL));
	if (!chunk)
		return mig__err(err, -ENOMEM, "MSRs: out of memory");
	for (uint32_t i = 0; i < total && r == 0;) {
		uint32_t n = MIG_MIN(total - i, X86_MSRS_PER_IOCTL);
		chunk->nmsrs = n;
		memcpy(chunk->entries, &msrs->entries[i],
		       n * sizeof(chunk->entries[0]));
		r = xioctl(vcpu_fd, KVM_SET_MSRS, chunk);
		if (r < 0) {
			ioctl_err(err, r, "KVM_SET_MSRS");
		} else if ((uint32_t)r < n) {
			r = mig__err(err, -EINVAL, "KVM_SET_MSRS: KVM refused "
				     "MSR 0x%x = 0x%llx",
				     chunk->entries[r].index,
				     (unsigned long long)chunk->entries[r].data);
		} else {
			r = 0;
			i += n;
		}
	}
	free(chunk);
	return r;
}

static int load_xsave(int kvm_fd, int vcpu_fd, const ProtobufCBinaryData *x,
		      mig_error *err)
{
	int host = host_cap(kvm_fd, KVM_CAP_XSAVE2);
	size_t size;
	void *buf;
	int r;

	if (host <= 0) {
		if (host_cap(kvm_fd, KVM_CAP_XSAVE) <= 0)
			return mig__err(err, -ENOTSUP, "vCPU state: item "
					"\"xsave\" but this KVM has no XSAVE");
		host = (int)sizeof(struct kvm_xsave);
	}
	if ((size_t)host < sizeof(struct kvm_xsave) || host > (int)X86_XSAVE_MAX)
		return mig__err(err, -ERANGE, "KVM_CAP_XSAVE2: size %d", host);
	/* A larger area than this host's may only carry zeroes past its end
	 * (state components the source had but never used). */
	for (size_t i = (size_t)host; i < x->len; i++)
		if (x->data[i])
			return mig__err(err, -ENOTSUP, "vCPU state: XSAVE area "
					"of %zu bytes uses state past this "
					"host's %d bytes", x->len, host);
	size = (size_t)host;
	buf = calloc(1, size);
	if (!buf)
		return mig__err(err, -ENOMEM, "XSAVE: out of memory");
	memcpy(buf, x->data, MIG_MIN(size, x->len));
	r = xioctl(vcpu_fd, KVM_SET_XSAVE, buf);
	free(buf);
	return r < 0 ? ioctl_err(err, r, "KVM_SET_XSAVE") : 0;
}

/*
 * Run the vCPU at the saved TSC rate. Without TSC scaling KVM can emulate
 * a faster TSC (catch-up) but not a slower one; there, by policy, either
 * refuse (-ENOTSUP) or go on at the vCPU's own rate, as QEMU does unless
 * the rate was asked for explicitly. A refused KVM_SET_TSC_KHZ has already
 * recorded the rate as the vCPU's virtual TSC rate (which KVM uses to
 * match TSC writes across vCPUs): set the vCPU's own rate back.
 */
static int load_tsc_khz(int vcpu_fd, uint64_t saved, mig_x86_tsc_policy policy,
			mig_x86_tsc_info *tsc, mig_error *err)
{
	int cur, r;

	if (!saved)
		return 0; /* unknown at the source: nothing to match */
	if ((cur = xioctl(vcpu_fd, KVM_GET_TSC_KHZ, NULL)) < 0)
		return ioctl_err(err, cur, "KVM_GET_TSC_KHZ");
	if (tsc)
		tsc->khz = (uint32_t)cur;
	if ((uint64_t)cur == saved)
		return 0;
	r = xioctl(vcpu_fd, KVM_SET_TSC_KHZ, (void *)(unsigned long)saved);
	if (r == 0) {
		if (tsc)
			tsc->khz = (uint32_t)saved;
		return 0;
	}
	(void)xioctl(vcpu_fd, KVM_SET_TSC_KHZ, (void *)(unsigned long)cur);
	if (policy == MIG_X86_TSC_HOST)
		return 0;
	return mig__err(err, -ENOTSUP, "KVM_SET_TSC_KHZ: cannot run the saved "
			"TSC at %llu kHz here (vCPU has %d kHz, and KVM cannot "
			"scale it down): %s", (unsigned long long)saved, cur,
			mig_strerror(r));
}

MIG_API int mig_x86_vcpu_load(int kvm_fd, int vcpu_fd, const void *blob,
			      size_t len, mig_error *err)
{
	return mig_x86_vcpu_load_tsc(kvm_fd, vcpu_fd, blob, len,
				     MIG_X86_TSC_STRICT, NULL, err);
}

MIG_API int mig_x86_vcpu_load_tsc(int kvm_fd, int vcpu_fd, const void *blob,
				  size_t len, mig_x86_tsc_policy policy,
				  mig_x86_tsc_info *tsc, mig_error *err)
{
	Mig__State__X86Vcpu *m;
	struct kvm_msrs *msrs = NULL;
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	struct kvm_sregs2 sregs2;
	struct kvm_fpu fpu;
	struct kvm_xcrs xcrs;
	struct kvm_lapic_state lapic;
	struct kvm_mp_state mp;
	struct kvm_vcpu_events events;
	struct kvm_debugregs dregs;
	bool has_deadline;
	uint64_t deadline = 0;
	int r;

	if (tsc)
		memset(tsc, 0, sizeof(*tsc));
	if (policy != MIG_X86_TSC_STRICT && policy != MIG_X86_TSC_HOST)
		return mig__err(err, -EINVAL, "mig_x86_vcpu_load_tsc: unknown "
				"TSC policy %d", (int)policy);
	r = vcpu_decode(blob, len, &m, err);
	if (r < 0)
		return r;
	if (tsc)
		tsc->saved_khz = (uint32_t)m->tsc_khz; /* checked <= UINT32_MAX */
	/* Copy out of the (unaligned) protobuf buffers. */
	memcpy(&regs, m->regs.data, sizeof(regs));
	memcpy(&sregs, m->sregs.data, sizeof(sregs));
	if (m->sregs2.len)
		memcpy(&sregs2, m->sregs2.data, sizeof(sregs2));
	if (m->fpu.len)
		memcpy(&fpu, m->fpu.data, sizeof(fpu));
	if (m->xcrs.len)
		memcpy(&xcrs, m->xcrs.data, sizeof(xcrs));
	if (m->lapic.len)
		memcpy(&lapic, m->lapic.data, sizeof(lapic));
	memcpy(&mp, m->mp_state.data, sizeof(mp));
	memcpy(&events, m->events.data, sizeof(events));
	if (m->debugregs.len)
		memcpy(&dregs, m->debugregs.data, sizeof(dregs));

	if ((r = load_tsc_khz(vcpu_fd, m->tsc_khz, policy, tsc, err)) < 0)
		goto out;
	r = msrs_for_load(kvm_fd, m, &msrs, &has_deadline, &deadline, err);
	if (r < 0)
		goto out;

	if (m->sregs2.len &&
	    host_cap(kvm_fd, KVM_CAP_SREGS2) > 0) {
		if ((r = xioctl(vcpu_fd, KVM_SET_SREGS2, &sregs2)) < 0) {
			ioctl_err(err, r, "KVM_SET_SREGS2");
			goto out;
		}
	} else if ((r = xioctl(vcpu_fd, KVM_SET_SREGS, &sregs)) < 0) {
		ioctl_err(err, r, "KVM_SET_SREGS");
		goto out;
	}
	if ((r = xioctl(vcpu_fd, KVM_SET_REGS, &regs)) < 0) {
		ioctl_err(err, r, "KVM_SET_REGS");
		goto out;
	}
	if (m->xcrs.len && (r = xioctl(vcpu_fd, KVM_SET_XCRS, &xcrs)) < 0) {
		ioctl_err(err, r, "KVM_SET_XCRS");
		goto out;
	}
	if (m->xsave.len) {
		if ((r = load_xsave(kvm_fd, vcpu_fd, &m->xsave, err)) < 0)
			goto out;
	} else if ((r = xioctl(vcpu_fd, KVM_SET_FPU, &fpu)) < 0) {
		ioctl_err(err, r, "KVM_SET_FPU");
		goto out;
	}
	if (m->lapic.len && (r = xioctl(vcpu_fd, KVM_SET_LAPIC, &lapic)) < 0) {
		ioctl_err(err, r, "KVM_SET_LAPIC");
		goto out;
	}
	if (has_deadline) {
		/* Last, so after the LAPIC (KVM drops the write unless the
		 * timer is in TSC-deadline mode) and after the TSC it is
		 * relative to: KVM sets the MSRs in array order. msrs has a
		 * slot for it (msrs_for_load left it out). */
		msrs->entries[msrs->nmsrs].index = MSR_IA32_TSC_DEADLINE;
		msrs->entries[msrs->nmsrs].data = deadline;
		msrs->nmsrs++;
	}
	if ((r = set_msrs(vcpu_fd, msrs, err)) < 0)
		goto out;
	/* GET does not mark these valid, but they are part of the state. */
	events.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING |
			KVM_VCPUEVENT_VALID_SIPI_VECTOR;
	if ((r = xioctl(vcpu_fd, KVM_SET_VCPU_EVENTS, &events)) < 0) {
		ioctl_err(err, r, "KVM_SET_VCPU_EVENTS");
		goto out;
	}
	if ((r = xioctl(vcpu_fd, KVM_SET_MP_STATE, &mp)) < 0) {
		ioctl_err(err, r, "KVM_SET_MP_STATE");
		goto out;
	}
	if (m->debugregs.len &&
	    (r = xioctl(vcpu_fd, KVM_SET_DEBUGREGS, &dregs)) < 0) {
		ioctl_err(err, r, "KVM_SET_DEBUGREGS");
		goto out;
	}
	/* The guest was stopped (since the source paused it): a kvmclock
	 * guest learns so at its next entry (PVCLOCK_GUEST_STOPPED) and its
	 * soft-lockup watchdog does not count the pause, as QEMU does it.
	 * Advisory: EINVAL when the guest has not enabled kvmclock. */
	(void)xioctl(vcpu_fd, KVM_KVMCLOCK_CTRL, 0);
	r = 0;
out:
	free(msrs);
	mig__state__x86_vcpu__free_unpacked(m, NULL);
	return r;
}

/* ---- VM -------------------------------------------------------------- */

MIG_API int mig_x86_vm_save(int vm_fd, void **blob, size_t *len,
			    mig_error *err)
{
	Mig__State__X86Vm m = MIG__STATE__X86_VM__INIT;
	struct kvm_irqchip chips[3];
	struct kvm_pit_state2 pit;
	struct kvm_clock_data clock;
	ProtobufCBinaryData *dst[3] = { &m.pic_master, &m.pic_slave, &m.ioapic };
	int r;

	if (!blob || !len)
		return mig__err(err, -EINVAL, "mig_x86_vm_save: NULL output");
	*blob = NULL;
	*len = 0;
	m.version = MIG_X86_STATE_VERSION;
	memset(chips, 0, sizeof(chips));
	for (int i = 0; i < 3; i++) {
		chips[i].chip_id = (uint32_t)i;
		r = xioctl(vm_fd, KVM_GET_IRQCHIP, &chips[i]);
		if (r == -ENXIO && i == 0)
			break; /* no in-kernel irqchip */
		if (r < 0)
			return mig__err(err, r, "KVM_GET_IRQCHIP (chip %d): %s",
					i, mig_strerror(r));
		BYTES(*dst[i], &chips[i], sizeof(chips[i]));
	}
	memset(&pit, 0, sizeof(pit));
	r = xioctl(vm_fd, KVM_GET_PIT2, &pit);
	if (r == 0)
		BYTES(m.pit, &pit, sizeof(pit));
	else if (r != -ENXIO)
		return ioctl_err(err, r, "KVM_GET_PIT2");
	memset(&clock, 0, sizeof(clock));
	if ((r = xioctl(vm_fd, KVM_GET_CLOCK, &clock)) < 0)
		return ioctl_err(err, r, "KVM_GET_CLOCK");
	BYTES(m.clock, &clock, sizeof(clock));
	return pack_out(&m.base, blob, len, err);
}

static int vm_decode(const void *blob, size_t len, Mig__State__X86Vm **out,
		     mig_error *err)
{
	const ProtobufCBinaryData *chip[3];
	Mig__State__X86Vm *m;
	int r;

	*out = NULL;
	if ((r = check_blob(blob, len, "VM", err)) < 0)
		return r;
	m = mig__state__x86_vm__unpack(NULL, len, blob);
	if (!m)
		return mig__err(err, -EBADMSG, "VM state: %zu bytes that do "
				"not decode (truncated or corrupted)", len);
	chip[0] = &m->pic_master;
	chip[1] = &m->pic_slave;
	chip[2] = &m->ioapic;
	if ((r = check_version(m->version, "VM", err)) < 0 ||
	    (r = check_item(&m->pic_master, sizeof(struct kvm_irqchip), false,
			    "pic_master", "VM", err)) < 0 ||
	    (r = check_item(&m->pic_slave, sizeof(struct kvm_irqchip), false,
			    "pic_slave", "VM", err)) < 0 ||
	    (r = check_item(&m->ioapic, sizeof(struct kvm_irqchip), false,
			    "ioapic", "VM", err)) < 0 ||
	    (r = check_item(&m->pit, sizeof(struct kvm_pit_state2), false,
			    "pit", "VM", err)) < 0 ||
	    (r = check_item(&m->clock, sizeof(struct kvm_clock_data), true,
			    "clock", "VM", err)) < 0)
		goto fail;
	if (!m->pic_master.len != !m->pic_slave.len ||
	    !m->pic_master.len != !m->ioapic.len) {
		r = mig__err(err, -EINVAL, "VM state: irqchip items "
			     "\"pic_master\", \"pic_slave\", \"ioapic\" must "
			     "come together");
		goto fail;
	}
	for (uint32_t i = 0; i < 3; i++) {
		struct kvm_irqchip c;
		if (!chip[i]->len)
			continue;
		memcpy(&c, chip[i]->data, sizeof(c));
		if (c.chip_id != i) {
			r = mig__err(err, -EINVAL, "VM state: irqchip item %u "
				     "has chip_id %u", i, c.chip_id);
			goto fail;
		}
	}
	*out = m;
	return 0;
fail:
	mig__state__x86_vm__free_unpacked(m, NULL);
	return r;
}

MIG_API int mig_x86_vm_load(int vm_fd, const void *blob, size_t len,
			    mig_error *err)
{
	const ProtobufCBinaryData *chip[3];
	Mig__State__X86Vm *m;
	struct kvm_clock_data clock;
	int r;

	r = vm_decode(blob, len, &m, err);
	if (r < 0)
		return r;
	chip[0] = &m->pic_master;
	chip[1] = &m->pic_slave;
	chip[2] = &m->ioapic;
	for (int i = 0; i < 3; i++) {
		struct kvm_irqchip c;
		if (!chip[i]->len)
			continue;
		memcpy(&c, chip[i]->data, sizeof(c));
		if ((r = xioctl(vm_fd, KVM_SET_IRQCHIP, &c)) < 0) {
			mig__err(err, r, "KVM_SET_IRQCHIP (chip %d): %s", i,
				 mig_strerror(r));
			goto out;
		}
	}
	if (m->pit.len) {
		struct kvm_pit_state2 pit;
		memcpy(&pit, m->pit.data, sizeof(pit));
		if ((r = xioctl(vm_fd, KVM_SET_PIT2, &pit)) < 0) {
			ioctl_err(err, r, "KVM_SET_PIT2");
			goto out;
		}
	}
	memcpy(&clock, m->clock.data, sizeof(clock));
	/* Only the clock value: the saved host TSC / realtime stamps belong
	 * to the source host and must not be applied here. */
	clock.flags = 0;
	memset(clock.pad, 0, sizeof(clock.pad));
	if ((r = xioctl(vm_fd, KVM_SET_CLOCK, &clock)) < 0) {
		ioctl_err(err, r, "KVM_SET_CLOCK");
		goto out;
	}
	r = 0;
out:
	mig__state__x86_vm__free_unpacked(m, NULL);
	return r;
}
