/*
 * Save and load the standard KVM x86 VM state, and what the vCPU code
 * (kvm_x86_vcpu.c) shares: ioctls, the host's capabilities and MSR list,
 * packing and the checks of a blob (kvm_x86.h, kvm_x86_int.h).
 *
 * Each KVM uapi struct is stored as its raw bytes in a protobuf message
 * (proto/vmstate.proto). Loading decodes and checks the whole blob first,
 * then applies it in the order KVM needs; a bad blob never reaches KVM.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "kvm_x86_int.h"

MIG_API void mig_free(void *p)
{
	free(p);
}

int mig__x86_ioctl(int fd, unsigned long req, void *arg)
{
	int r;

	do
		r = ioctl(fd, req, arg);
	while (r < 0 && errno == EINTR);
	return r < 0 ? -errno : r;
}

int mig__x86_ioctl_err(mig_error *err, int r, const char *what)
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

int mig__x86_host_cap(int kvm_fd, long cap)
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
	r = mig__x86_ioctl(kvm_fd, KVM_CHECK_EXTENSION, (void *)cap);
	if (r >= 0 && i < sizeof(host_caps) / sizeof(host_caps[0]))
		__atomic_store_n(&host_cap_value[i], r + 1, __ATOMIC_RELAXED);
	return r;
}

/* ---- MSR list -------------------------------------------------------- */

static pthread_mutex_t msr_list_lock = PTHREAD_MUTEX_INITIALIZER;
static struct kvm_msr_list *msr_list_cache;

/* KVM_GET_MSR_INDEX_LIST (asked once per process), malloc'd into *out. */
int mig__x86_msr_index_list(int kvm_fd, struct kvm_msr_list **out,
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

	r = mig__x86_ioctl(kvm_fd, KVM_GET_MSR_INDEX_LIST, &probe);
	if (r < 0 && r != -E2BIG)
		return mig__x86_ioctl_err(err, r, "KVM_GET_MSR_INDEX_LIST");
	if (probe.nmsrs > X86_MSRS_MAX)
		return mig__err(err, -ERANGE,
				"KVM_GET_MSR_INDEX_LIST: %u MSRs, more than %u",
				probe.nmsrs, X86_MSRS_MAX);
	l = calloc(1, sizeof(*l) + (probe.nmsrs + 1) * sizeof(l->indices[0]));
	if (!l)
		return mig__err(err, -ENOMEM, "MSR list: out of memory");
	l->nmsrs = probe.nmsrs;
	r = mig__x86_ioctl(kvm_fd, KVM_GET_MSR_INDEX_LIST, l);
	if (r < 0) {
		free(l);
		return mig__x86_ioctl_err(err, r, "KVM_GET_MSR_INDEX_LIST");
	}
	size = sizeof(*l) + (l->nmsrs + 1) * sizeof(l->indices[0]);
	pthread_mutex_lock(&msr_list_lock);
	if (!msr_list_cache && (msr_list_cache = malloc(size)) != NULL)
		memcpy(msr_list_cache, l, size);
	pthread_mutex_unlock(&msr_list_lock);
	*out = l;
	return 0;
}

struct kvm_msrs *mig__x86_msrs_alloc(size_t n)
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
int mig__x86_msrs_read(int kvm_fd, int vcpu_fd, struct kvm_msrs **out,
		       mig_error *err)
{
	struct kvm_msr_list *list = NULL;
	struct kvm_msrs *all, *one;
	uint32_t n = 0;
	int r;

	r = mig__x86_msr_index_list(kvm_fd, &list, err);
	if (r < 0)
		return r;
	all = mig__x86_msrs_alloc(list->nmsrs);
	one = mig__x86_msrs_alloc(list->nmsrs);
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
		r = mig__x86_ioctl(vcpu_fd, KVM_GET_MSRS, one);
		if (r < 0) {
			r = mig__x86_ioctl_err(err, r, "KVM_GET_MSRS");
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
		(void)mig__x86_host_cap(kvm_fd, host_caps[i]);
	r = mig__x86_msrs_read(kvm_fd, vcpu_fd, &m, err);
	if (r < 0)
		return r;
	for (uint32_t i = 0; i < m->nmsrs && i < max; i++)
		out[i] = m->entries[i].index;
	r = (int)m->nmsrs;
	free(m);
	return r;
}

/* ---- Packing --------------------------------------------------------- */

int mig__x86_pack(const ProtobufCMessage *msg, void **blob, size_t *len,
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

/* Check that an item has exactly the size of its KVM struct. */
int mig__x86_check_item(const ProtobufCBinaryData *d, size_t want, bool required,
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

int mig__x86_check_version(uint32_t v, const char *blob, mig_error *err)
{
	if (v == 0 || v > MIG_X86_STATE_VERSION)
		return mig__err(err, -EINVAL, "%s state: version %u, this "
				"library reads 1..%d", blob, v,
				MIG_X86_STATE_VERSION);
	return 0;
}

/* The checks every blob passes before it is decoded. */
int mig__x86_check_blob(const void *blob, size_t len, const char *what,
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
		r = mig__x86_ioctl(vm_fd, KVM_GET_IRQCHIP, &chips[i]);
		if (r == -ENXIO && i == 0)
			break; /* no in-kernel irqchip */
		if (r < 0)
			return mig__err(err, r, "KVM_GET_IRQCHIP (chip %d): %s",
					i, mig_strerror(r));
		BYTES(*dst[i], &chips[i], sizeof(chips[i]));
	}
	memset(&pit, 0, sizeof(pit));
	r = mig__x86_ioctl(vm_fd, KVM_GET_PIT2, &pit);
	if (r == 0)
		BYTES(m.pit, &pit, sizeof(pit));
	else if (r != -ENXIO)
		return mig__x86_ioctl_err(err, r, "KVM_GET_PIT2");
	memset(&clock, 0, sizeof(clock));
	if ((r = mig__x86_ioctl(vm_fd, KVM_GET_CLOCK, &clock)) < 0)
		return mig__x86_ioctl_err(err, r, "KVM_GET_CLOCK");
	BYTES(m.clock, &clock, sizeof(clock));
	return mig__x86_pack(&m.base, blob, len, err);
}

int mig__x86_vm_decode(const void *blob, size_t len, Mig__State__X86Vm **out,
		       mig_error *err)
{
	const ProtobufCBinaryData *chip[3];
	Mig__State__X86Vm *m;
	int r;

	*out = NULL;
	if ((r = mig__x86_check_blob(blob, len, "VM", err)) < 0)
		return r;
	m = mig__state__x86_vm__unpack(NULL, len, blob);
	if (!m)
		return mig__err(err, -EBADMSG, "VM state: %zu bytes that do "
				"not decode (truncated or corrupted)", len);
	chip[0] = &m->pic_master;
	chip[1] = &m->pic_slave;
	chip[2] = &m->ioapic;
	if ((r = mig__x86_check_version(m->version, "VM", err)) < 0 ||
	    (r = mig__x86_check_item(&m->pic_master, sizeof(struct kvm_irqchip), false,
				     "pic_master", "VM", err)) < 0 ||
	    (r = mig__x86_check_item(&m->pic_slave, sizeof(struct kvm_irqchip), false,
				     "pic_slave", "VM", err)) < 0 ||
	    (r = mig__x86_check_item(&m->ioapic, sizeof(struct kvm_irqchip), false,
				     "ioapic", "VM", err)) < 0 ||
	    (r = mig__x86_check_item(&m->pit, sizeof(struct kvm_pit_state2), false,
				     "pit", "VM", err)) < 0 ||
	    (r = mig__x86_check_item(&m->clock, sizeof(struct kvm_clock_data), true,
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

	r = mig__x86_vm_decode(blob, len, &m, err);
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
		if ((r = mig__x86_ioctl(vm_fd, KVM_SET_IRQCHIP, &c)) < 0) {
			mig__err(err, r, "KVM_SET_IRQCHIP (chip %d): %s", i,
				 mig_strerror(r));
			goto out;
		}
	}
	if (m->pit.len) {
		struct kvm_pit_state2 pit;
		memcpy(&pit, m->pit.data, sizeof(pit));
		if ((r = mig__x86_ioctl(vm_fd, KVM_SET_PIT2, &pit)) < 0) {
			mig__x86_ioctl_err(err, r, "KVM_SET_PIT2");
			goto out;
		}
	}
	memcpy(&clock, m->clock.data, sizeof(clock));
	/* Only the clock value: the saved host TSC / realtime stamps belong
	 * to the source host and must not be applied here. */
	clock.flags = 0;
	memset(clock.pad, 0, sizeof(clock.pad));
	if ((r = mig__x86_ioctl(vm_fd, KVM_SET_CLOCK, &clock)) < 0) {
		mig__x86_ioctl_err(err, r, "KVM_SET_CLOCK");
		goto out;
	}
	r = 0;
out:
	mig__state__x86_vm__free_unpacked(m, NULL);
	return r;
}
