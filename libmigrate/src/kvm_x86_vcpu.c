/*
 * Save and load a KVM x86 vCPU's state (kvm_x86.h): every struct KVM
 * offers, MSRs and XSAVE included; loading checks the whole blob first,
 * then applies it in the order KVM needs, the TSC as the policy says.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "kvm_x86_int.h"

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
	if ((r = mig__x86_ioctl(vcpu_fd, KVM_GET_MP_STATE, &b->mp)) < 0) {
		mig__x86_ioctl_err(err, r, "KVM_GET_MP_STATE");
		goto fail;
	}
	BYTES(m.mp_state, &b->mp, sizeof(b->mp));
	if ((r = mig__x86_ioctl(vcpu_fd, KVM_GET_VCPU_EVENTS, &b->events)) < 0) {
		mig__x86_ioctl_err(err, r, "KVM_GET_VCPU_EVENTS");
		goto fail;
	}
	BYTES(m.events, &b->events, sizeof(b->events));
	if ((r = mig__x86_ioctl(vcpu_fd, KVM_GET_REGS, &b->regs)) < 0) {
		mig__x86_ioctl_err(err, r, "KVM_GET_REGS");
		goto fail;
	}
	BYTES(m.regs, &b->regs, sizeof(b->regs));
	if (mig__x86_host_cap(kvm_fd, KVM_CAP_SREGS2) > 0) {
		/* "sregs" follows from these and the events, below. */
		if ((r = mig__x86_ioctl(vcpu_fd, KVM_GET_SREGS2, &b->sregs2)) < 0) {
			mig__x86_ioctl_err(err, r, "KVM_GET_SREGS2");
			goto fail;
		}
		BYTES(m.sregs2, &b->sregs2, sizeof(b->sregs2));
	} else if ((r = mig__x86_ioctl(vcpu_fd, KVM_GET_SREGS, &b->sregs)) < 0) {
		mig__x86_ioctl_err(err, r, "KVM_GET_SREGS");
		goto fail;
	}
	BYTES(m.sregs, &b->sregs, sizeof(b->sregs));

	xsave_size = mig__x86_host_cap(kvm_fd, KVM_CAP_XSAVE2);
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
		if ((r = mig__x86_ioctl(vcpu_fd, KVM_GET_XSAVE2, b->xsave)) < 0) {
			mig__x86_ioctl_err(err, r, "KVM_GET_XSAVE2");
			goto fail;
		}
		BYTES(m.xsave, b->xsave, (size_t)xsave_size);
	} else if (mig__x86_host_cap(kvm_fd, KVM_CAP_XSAVE) > 0) {
		b->xsave = calloc(1, sizeof(struct kvm_xsave));
		if (!b->xsave)
			goto fail_nomem;
		if ((r = mig__x86_ioctl(vcpu_fd, KVM_GET_XSAVE, b->xsave)) < 0) {
			mig__x86_ioctl_err(err, r, "KVM_GET_XSAVE");
			goto fail;
		}
		BYTES(m.xsave, b->xsave, sizeof(struct kvm_xsave));
	} else {
		if ((r = mig__x86_ioctl(vcpu_fd, KVM_GET_FPU, &b->fpu)) < 0) {
			mig__x86_ioctl_err(err, r, "KVM_GET_FPU");
			goto fail;
		}
		BYTES(m.fpu, &b->fpu, sizeof(b->fpu));
	}
	if (mig__x86_host_cap(kvm_fd, KVM_CAP_XCRS) > 0) {
		if ((r = mig__x86_ioctl(vcpu_fd, KVM_GET_XCRS, &b->xcrs)) < 0) {
			mig__x86_ioctl_err(err, r, "KVM_GET_XCRS");
			goto fail;
		}
		BYTES(m.xcrs, &b->xcrs, sizeof(b->xcrs));
	}

	r = mig__x86_msrs_read(kvm_fd, vcpu_fd, &b->msrs, err);
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

	r = mig__x86_ioctl(vcpu_fd, KVM_GET_LAPIC, &b->lapic);
	if (r == 0) {
		BYTES(m.lapic, &b->lapic, sizeof(b->lapic));
	} else if (r != -ENXIO) { /* ENXIO: no in-kernel LAPIC */
		mig__x86_ioctl_err(err, r, "KVM_GET_LAPIC");
		goto fail;
	}
	if (m.sregs2.len)
		sregs_from_sregs2(&b->sregs, &b->sregs2, &b->events);
	if ((r = mig__x86_ioctl(vcpu_fd, KVM_GET_DEBUGREGS, &b->dregs)) < 0) {
		mig__x86_ioctl_err(err, r, "KVM_GET_DEBUGREGS");
		goto fail;
	}
	BYTES(m.debugregs, &b->dregs, sizeof(b->dregs));
	r = mig__x86_ioctl(vcpu_fd, KVM_GET_TSC_KHZ, NULL);
	m.tsc_khz = r > 0 ? (uint64_t)r : 0; /* 0: unknown, not set on load */

	r = mig__x86_pack(&m.base, blob, len, err);
	vcpu_bufs_free(b);
	return r;

fail_nomem:
	r = mig__err(err, -ENOMEM, "vCPU state: out of memory");
fail:
	vcpu_bufs_free(b);
	return r;
}

/* ---- vCPU load ------------------------------------------------------- */

static int u32_cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return (x > y) - (x < y);
}

int mig__x86_vcpu_decode(const void *blob, size_t len,
			 Mig__State__X86Vcpu **out, mig_error *err)
{
	/* Sorted, so that a blob at the limit costs n log n to check for an
	 * MSR given twice, not the n^2 / 2 (half a million) of pairs. */
	uint32_t idx[X86_MSRS_MAX];
	Mig__State__X86Vcpu *m;
	int r;

	*out = NULL;
	if ((r = mig__x86_check_blob(blob, len, "vCPU", err)) < 0)
		return r;
	m = mig__state__x86_vcpu__unpack(NULL, len, blob);
	if (!m)
		return mig__err(err, -EBADMSG, "vCPU state: %zu bytes that do "
				"not decode (truncated or corrupted)", len);
	if ((r = mig__x86_check_version(m->version, "vCPU", err)) < 0 ||
	    (r = mig__x86_check_item(&m->regs, sizeof(struct kvm_regs), true, "regs",
				     "vCPU", err)) < 0 ||
	    (r = mig__x86_check_item(&m->sregs, sizeof(struct kvm_sregs), true, "sregs",
				     "vCPU", err)) < 0 ||
	    (r = mig__x86_check_item(&m->sregs2, sizeof(struct kvm_sregs2), false,
				     "sregs2", "vCPU", err)) < 0 ||
	    (r = mig__x86_check_item(&m->fpu, sizeof(struct kvm_fpu), false, "fpu",
				     "vCPU", err)) < 0 ||
	    (r = mig__x86_check_item(&m->xcrs, sizeof(struct kvm_xcrs), false, "xcrs",
				     "vCPU", err)) < 0 ||
	    (r = mig__x86_check_item(&m->lapic, sizeof(struct kvm_lapic_state), false,
				     "lapic", "vCPU", err)) < 0 ||
	    (r = mig__x86_check_item(&m->mp_state, sizeof(struct kvm_mp_state), true,
				     "mp_state", "vCPU", err)) < 0 ||
	    (r = mig__x86_check_item(&m->events, sizeof(struct kvm_vcpu_events), true,
				     "events", "vCPU", err)) < 0 ||
	    (r = mig__x86_check_item(&m->debugregs, sizeof(struct kvm_debugregs), false,
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
		struct kvm_xcrs tmp;
		memcpy(&tmp, m->xcrs.data, sizeof(tmp)); /* may be unaligned */
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
	for (size_t i = 0; i < m->n_msrs; i++) /* at most X86_MSRS_MAX */
		idx[i] = m->msrs[i]->index;
	qsort(idx, m->n_msrs, sizeof(idx[0]), u32_cmp);
	for (size_t i = 1; i < m->n_msrs; i++)
		if (idx[i] == idx[i - 1]) {
			r = mig__err(err, -EINVAL, "vCPU state: MSR 0x%x "
				     "appears twice", idx[i]);
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
	r = mig__x86_msr_index_list(kvm_fd, &list, err);
	if (r < 0)
		return r;
	msrs = mig__x86_msrs_alloc(m->n_msrs);
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
	chunk = mig__x86_msrs_alloc(MIG_MIN(total, X86_MSRS_PER_IOCTL));
	if (!chunk)
		return mig__err(err, -ENOMEM, "MSRs: out of memory");
	for (uint32_t i = 0; i < total && r == 0;) {
		uint32_t n = MIG_MIN(total - i, X86_MSRS_PER_IOCTL);
		chunk->nmsrs = n;
		memcpy(chunk->entries, &msrs->entries[i],
		       n * sizeof(chunk->entries[0]));
		r = mig__x86_ioctl(vcpu_fd, KVM_SET_MSRS, chunk);
		if (r < 0) {
			mig__x86_ioctl_err(err, r, "KVM_SET_MSRS");
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
	int host = mig__x86_host_cap(kvm_fd, KVM_CAP_XSAVE2);
	size_t size;
	void *buf;
	int r;

	if (host <= 0) {
		if (mig__x86_host_cap(kvm_fd, KVM_CAP_XSAVE) <= 0)
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
	r = mig__x86_ioctl(vcpu_fd, KVM_SET_XSAVE, buf);
	free(buf);
	return r < 0 ? mig__x86_ioctl_err(err, r, "KVM_SET_XSAVE") : 0;
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
	if ((cur = mig__x86_ioctl(vcpu_fd, KVM_GET_TSC_KHZ, NULL)) < 0)
		return mig__x86_ioctl_err(err, cur, "KVM_GET_TSC_KHZ");
	if (tsc)
		tsc->khz = (uint32_t)cur;
	if ((uint64_t)cur == saved)
		return 0;
	r = mig__x86_ioctl(vcpu_fd, KVM_SET_TSC_KHZ, (void *)(unsigned long)saved);
	if (r == 0) {
		if (tsc)
			tsc->khz = (uint32_t)saved;
		return 0;
	}
	(void)mig__x86_ioctl(vcpu_fd, KVM_SET_TSC_KHZ, (void *)(unsigned long)cur);
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
	r = mig__x86_vcpu_decode(blob, len, &m, err);
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
	    mig__x86_host_cap(kvm_fd, KVM_CAP_SREGS2) > 0) {
		if ((r = mig__x86_ioctl(vcpu_fd, KVM_SET_SREGS2, &sregs2)) < 0) {
			mig__x86_ioctl_err(err, r, "KVM_SET_SREGS2");
			goto out;
		}
	} else if ((r = mig__x86_ioctl(vcpu_fd, KVM_SET_SREGS, &sregs)) < 0) {
		mig__x86_ioctl_err(err, r, "KVM_SET_SREGS");
		goto out;
	}
	if ((r = mig__x86_ioctl(vcpu_fd, KVM_SET_REGS, &regs)) < 0) {
		mig__x86_ioctl_err(err, r, "KVM_SET_REGS");
		goto out;
	}
	if (m->xcrs.len && (r = mig__x86_ioctl(vcpu_fd, KVM_SET_XCRS, &xcrs)) < 0) {
		mig__x86_ioctl_err(err, r, "KVM_SET_XCRS");
		goto out;
	}
	if (m->xsave.len) {
		if ((r = load_xsave(kvm_fd, vcpu_fd, &m->xsave, err)) < 0)
			goto out;
	} else if ((r = mig__x86_ioctl(vcpu_fd, KVM_SET_FPU, &fpu)) < 0) {
		mig__x86_ioctl_err(err, r, "KVM_SET_FPU");
		goto out;
	}
	if (m->lapic.len && (r = mig__x86_ioctl(vcpu_fd, KVM_SET_LAPIC, &lapic)) < 0) {
		mig__x86_ioctl_err(err, r, "KVM_SET_LAPIC");
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
	if ((r = mig__x86_ioctl(vcpu_fd, KVM_SET_VCPU_EVENTS, &events)) < 0) {
		mig__x86_ioctl_err(err, r, "KVM_SET_VCPU_EVENTS");
		goto out;
	}
	if ((r = mig__x86_ioctl(vcpu_fd, KVM_SET_MP_STATE, &mp)) < 0) {
		mig__x86_ioctl_err(err, r, "KVM_SET_MP_STATE");
		goto out;
	}
	if (m->debugregs.len &&
	    (r = mig__x86_ioctl(vcpu_fd, KVM_SET_DEBUGREGS, &dregs)) < 0) {
		mig__x86_ioctl_err(err, r, "KVM_SET_DEBUGREGS");
		goto out;
	}
	/* The guest was stopped (since the source paused it): a kvmclock
	 * guest learns so at its next entry (PVCLOCK_GUEST_STOPPED) and its
	 * soft-lockup watchdog does not count the pause, as QEMU does it.
	 * Advisory: EINVAL when the guest has not enabled kvmclock. */
	(void)mig__x86_ioctl(vcpu_fd, KVM_KVMCLOCK_CTRL, 0);
	r = 0;
out:
	free(msrs);
	mig__state__x86_vcpu__free_unpacked(m, NULL);
	return r;
}
