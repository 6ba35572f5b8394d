/*
 * mig_x86_* state blobs: every malformed blob is refused with -EBADMSG /
 * -EINVAL (or -EMSGSIZE) and a message naming the item, before any ioctl,
 * and never crashes (truncations and seeded random corruption). A round trip
 * through a real vCPU runs where /dev/kvm exists and is skipped elsewhere;
 * it also checks that the "sregs" a save derives from SREGS2 and the events
 * are what KVM_GET_SREGS returns, pending interrupt included.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <linux/kvm.h>

#include "mig_test.h"
#include "kvm_x86_int.h" /* X86_MSRS_MAX */
#include "migrate/migrate.h"

/* A well-formed vCPU blob (zeroed structs of the right sizes). */
struct vcpu_parts {
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	struct kvm_sregs2 sregs2;
	uint8_t xsave[4096];
	struct kvm_xcrs xcrs;
	struct kvm_lapic_state lapic;
	struct kvm_mp_state mp;
	struct kvm_vcpu_events events;
	struct kvm_debugregs dregs;
	Mig__State__Msr msr[3];
	Mig__State__Msr *msrp[3];
};

static void vcpu_msg(Mig__State__X86Vcpu *m, struct vcpu_parts *p)
{
	static const uint32_t idx[3] = { 0x10, 0x3b, 0x6e0 };

	memset(p, 0, sizeof(*p));
	mig__state__x86_vcpu__init(m);
	m->version = MIG_X86_STATE_VERSION;
#define SET(f, v) do { m->f.data = (uint8_t *)&(v); m->f.len = sizeof(v); } while (0)
	SET(regs, p->regs);
	SET(sregs, p->sregs);
	SET(sregs2, p->sregs2);
	SET(xsave, p->xsave);
	SET(xcrs, p->xcrs);
	SET(lapic, p->lapic);
	SET(mp_state, p->mp);
	SET(events, p->events);
	SET(debugregs, p->dregs);
#undef SET
	for (int i = 0; i < 3; i++) {
		mig__state__msr__init(&p->msr[i]);
		p->msr[i].index = idx[i];
		p->msr[i].value = 1000u + (unsigned)i;
		p->msrp[i] = &p->msr[i];
	}
	m->n_msrs = 3;
	m->msrs = p->msrp;
}

static uint8_t *pack_vcpu(Mig__State__X86Vcpu *m, size_t *len)
{
	uint8_t *buf;
	*len = mig__state__x86_vcpu__get_packed_size(m);
	buf = malloc(*len ? *len : 1);
	assert_non_null(buf);
	mig__state__x86_vcpu__pack(m, buf);
	return buf;
}

/* Load `m` into no vCPU at all (fds -1): only validation can answer. */
static int load_vcpu_msg(Mig__State__X86Vcpu *m, mig_error *e)
{
	size_t len;
	uint8_t *buf = pack_vcpu(m, &len);
	int r;

	memset(e, 0, sizeof(*e));
	r = mig_x86_vcpu_load(-1, -1, buf, len, e);
	free(buf);
	return r;
}

static void test_vcpu_valid_reaches_kvm(void **state)
{
	Mig__State__X86Vcpu m;
	struct vcpu_parts p;
	mig_error e;
	(void)state;
	vcpu_msg(&m, &p);
	/* Everything checks out, so the first ioctl (on fd -1) fails. */
	assert_int_equal(load_vcpu_msg(&m, &e), -EBADF);
}

static void test_vcpu_garbage(void **state)
{
	static const uint8_t junk[] = { 0xff, 0xff, 0xff, 0xff, 0x0f, 0x12 };
	mig_error e = { 0 };
	(void)state;
	assert_int_equal(mig_x86_vcpu_load(-1, -1, junk, sizeof(junk), &e),
			 -EBADMSG);
	assert_non_null(strstr(e.msg, "vCPU state"));
	assert_int_equal(mig_x86_vcpu_load(-1, -1, junk, 0, &e), -EBADMSG);
	assert_int_equal(mig_x86_vcpu_load(-1, -1, NULL, 5, &e), -EINVAL);
	assert_int_equal(mig_x86_vcpu_load(-1, -1, junk,
					   MIG_X86_BLOB_MAX + 1, &e),
			 -EMSGSIZE);
	/* A NULL error pointer is allowed. */
	assert_int_equal(mig_x86_vcpu_load(-1, -1, junk, sizeof(junk), NULL),
			 -EBADMSG);
}

static void expect_item(Mig__State__X86Vcpu *m, const char *item)
{
	mig_error e;
	int r = load_vcpu_msg(m, &e);
	assert_int_equal(r, -EINVAL);
	if (!strstr(e.msg, item))
		fail_msg("message \"%s\" does not name \"%s\"", e.msg, item);
}

static void test_vcpu_bad_items(void **state)
{
	Mig__State__X86Vcpu m;
	struct vcpu_parts p;
	Mig__State__Msr *dup[2];
	(void)state;

	vcpu_msg(&m, &p);
	m.regs.len -= 1;
	expect_item(&m, "\"regs\"");

	vcpu_msg(&m, &p);
	m.sregs.len = 0;
	expect_item(&m, "\"sregs\" is missing");

	vcpu_msg(&m, &p);
	m.lapic.len = 100;
	expect_item(&m, "\"lapic\" has 100 bytes");

	vcpu_msg(&m, &p);
	m.mp_state.len = 3;
	expect_item(&m, "\"mp_state\"");

	vcpu_msg(&m, &p);
	m.xsave.len = 100;
	expect_item(&m, "\"xsave\"");

	vcpu_msg(&m, &p);
	m.xsave.len = 0;
	expect_item(&m, "neither \"xsave\" nor \"fpu\"");

	vcpu_msg(&m, &p);
	p.xcrs.nr_xcrs = 1000;
	expect_item(&m, "\"xcrs\"");

	vcpu_msg(&m, &p);
	m.version = 0;
	expect_item(&m, "version");
	m.version = MIG_X86_STATE_VERSION + 1;
	expect_item(&m, "version");

	vcpu_msg(&m, &p);
	dup[0] = &p.msr[0];
	dup[1] = &p.msr[0];
	m.msrs = dup;
	m.n_msrs = 2;
	expect_item(&m, "MSR 0x10 appears twice");

	vcpu_msg(&m, &p);
	m.tsc_khz = 1ull << 40;
	expect_item(&m, "tsc_khz");
}

/* Up to X86_MSRS_MAX MSRs, each index once, wherever the second one is. */
static void test_vcpu_many_msrs(void **state)
{
	Mig__State__X86Vcpu m;
	struct vcpu_parts p;
	Mig__State__Msr *msr = calloc(X86_MSRS_MAX + 1, sizeof(*msr));
	Mig__State__Msr **msrp = calloc(X86_MSRS_MAX + 1, sizeof(*msrp));
	mig_error e;
	(void)state;

	assert_true(msr && msrp);
	for (uint32_t i = 0; i <= X86_MSRS_MAX; i++) {
		mig__state__msr__init(&msr[i]);
		msr[i].index = X86_MSRS_MAX - i; /* unsorted */
		msrp[i] = &msr[i];
	}
	vcpu_msg(&m, &p);
	m.msrs = msrp;
	m.n_msrs = X86_MSRS_MAX;
	assert_int_equal(load_vcpu_msg(&m, &e), -EBADF);
	m.n_msrs = X86_MSRS_MAX + 1;
	expect_item(&m, "at most 1024");
	m.n_msrs = X86_MSRS_MAX;
	msr[X86_MSRS_MAX - 1].index = msr[0].index;
	expect_item(&m, "MSR 0x400 appears twice");
	free(msrp);
	free(msr);
}

/* Every truncation and many seeded corruptions: an error, never a crash. */
static void test_vcpu_truncated_and_corrupted(void **state)
{
	Mig__State__X86Vcpu m;
	struct vcpu_parts p;
	size_t len;
	uint8_t *good, *buf;
	uint32_t seed = 12345;
	mig_error e;
	(void)state;

	vcpu_msg(&m, &p);
	good = pack_vcpu(&m, &len);
	buf = malloc(len);
	assert_non_null(buf);
	for (size_t n = 0; n < len; n++) {
		memcpy(buf, good, n);
		int r = mig_x86_vcpu_load(-1, -1, buf, n, &e);
		/* A cut at a field boundary may decode; then an item is
		 * missing (-EINVAL), else -EBADMSG. Only cuts that drop
		 * optional trailing items (debugregs, TSC kHz, sregs2) leave
		 * a valid blob, which then reaches KVM (-EBADF on fd -1). */
		assert_true(r == -EBADMSG || r == -EINVAL ||
			    (r == -EBADF && n > len / 2));
	}
	for (int i = 0; i < 2000; i++) {
		memcpy(buf, good, len);
		for (int k = 0; k < 4; k++) {
			seed = seed * 1103515245u + 12345u;
			buf[(seed >> 8) % len] ^= (uint8_t)(1u << (seed % 8));
		}
		int r = mig_x86_vcpu_load(-1, -1, buf, len, &e);
		/* Corruption inside a struct's bytes keeps it well-formed:
		 * then KVM (fd -1 here) is the judge. */
		assert_true(r == -EBADMSG || r == -EINVAL || r == -EBADF);
	}
	free(buf);
	free(good);
}

static uint8_t *pack_vm(Mig__State__X86Vm *m, size_t *len)
{
	uint8_t *buf;
	*len = mig__state__x86_vm__get_packed_size(m);
	buf = malloc(*len ? *len : 1);
	assert_non_null(buf);
	mig__state__x86_vm__pack(m, buf);
	return buf;
}

static void test_vm_blob(void **state)
{
	struct kvm_irqchip chips[3];
	struct kvm_pit_state2 pit;
	struct kvm_clock_data clock;
	Mig__State__X86Vm m;
	mig_error e = { 0 };
	size_t len;
	uint8_t *buf;
	(void)state;

	memset(chips, 0, sizeof(chips));
	memset(&pit, 0, sizeof(pit));
	memset(&clock, 0, sizeof(clock));
	for (int i = 0; i < 3; i++)
		chips[i].chip_id = (uint32_t)i;
	mig__state__x86_vm__init(&m);
	m.version = 1;
	m.pic_master.data = (uint8_t *)&chips[0];
	m.pic_master.len = sizeof(chips[0]);
	m.pic_slave.data = (uint8_t *)&chips[1];
	m.pic_slave.len = sizeof(chips[1]);
	m.ioapic.data = (uint8_t *)&chips[2];
	m.ioapic.len = sizeof(chips[2]);
	m.pit.data = (uint8_t *)&pit;
	m.pit.len = sizeof(pit);
	m.clock.data = (uint8_t *)&clock;
	m.clock.len = sizeof(clock);

	buf = pack_vm(&m, &len);
	assert_int_equal(mig_x86_vm_load(-1, buf, len, &e), -EBADF);
	for (size_t n = 0; n < len; n++) {
		int r = mig_x86_vm_load(-1, buf, n, &e);
		assert_true(r == -EBADMSG || r == -EINVAL);
	}
	free(buf);

	chips[1].chip_id = 2;
	buf = pack_vm(&m, &len);
	assert_int_equal(mig_x86_vm_load(-1, buf, len, &e), -EINVAL);
	assert_non_null(strstr(e.msg, "chip_id"));
	free(buf);
	chips[1].chip_id = 1;

	m.ioapic.len = 0;
	buf = pack_vm(&m, &len);
	assert_int_equal(mig_x86_vm_load(-1, buf, len, &e), -EINVAL);
	assert_non_null(strstr(e.msg, "ioapic"));
	free(buf);
	m.ioapic.len = sizeof(chips[2]);

	m.pit.len = 7;
	buf = pack_vm(&m, &len);
	assert_int_equal(mig_x86_vm_load(-1, buf, len, &e), -EINVAL);
	assert_non_null(strstr(e.msg, "\"pit\""));
	free(buf);
	m.pit.len = sizeof(pit);

	m.clock.len = 0;
	buf = pack_vm(&m, &len);
	assert_int_equal(mig_x86_vm_load(-1, buf, len, &e), -EINVAL);
	assert_non_null(strstr(e.msg, "\"clock\" is missing"));
	free(buf);

	assert_int_equal(mig_x86_vm_load(-1, "\xff\xff", 2, &e), -EBADMSG);
	assert_non_null(strstr(e.msg, "VM state"));
	mig_free(NULL);
}

/* ---- with KVM -------------------------------------------------------- */

struct kvm_env {
	int kvm, vm, vcpu;
};

static int kvm_env_open(struct kvm_env *k)
{
	k->vm = k->vcpu = -1;
	k->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (k->kvm < 0)
		return -1;
	k->vm = ioctl(k->kvm, KVM_CREATE_VM, 0);
	assert_true(k->vm >= 0);
	assert_int_equal(ioctl(k->vm, KVM_CREATE_IRQCHIP, 0), 0);
	struct kvm_pit_config pit = { .flags = 0 };
	assert_int_equal(ioctl(k->vm, KVM_CREATE_PIT2, &pit), 0);
	k->vcpu = ioctl(k->vm, KVM_CREATE_VCPU, 0);
	assert_true(k->vcpu >= 0);
	return 0;
}

/* The cases that need KVM skip without it, except where the caller says
 * that KVM is there (CTest's kvm.* run of this file, natively or in the
 * nested host): then a missing KVM is a failure, not a skip. */
static void need_kvm(struct kvm_env *k)
{
	if (kvm_env_open(k) == 0)
		return;
	if (getenv("MIG_REQUIRE_KVM"))
		fail_msg("no usable /dev/kvm, and MIG_REQUIRE_KVM is set");
	skip();
}

static void kvm_env_close(struct kvm_env *k)
{
	close(k->vcpu);
	close(k->vm);
	close(k->kvm);
}

/* a's VM state, then the vCPU blob saved from a, into b. */
static void move_state(struct kvm_env *a, struct kvm_env *b, const void *blob,
		       size_t len)
{
	void *vmblob = NULL;
	size_t vmlen = 0;
	mig_error e = { 0 };

	assert_int_equal(mig_x86_vm_save(a->vm, &vmblob, &vmlen, &e), 0);
	if (mig_x86_vm_load(b->vm, vmblob, vmlen, &e) < 0)
		fail_msg("vm load: %s", e.msg);
	if (mig_x86_vcpu_load(b->kvm, b->vcpu, blob, len, &e) < 0)
		fail_msg("vcpu load: %s", e.msg);
	mig_free(vmblob);
}

static void test_kvm_round_trip(void **state)
{
	struct kvm_env a, b;
	struct kvm_regs ra, rb;
	void *blob = NULL;
	size_t len = 0;
	uint32_t msrs[512];
	mig_error e = { 0 };
	int n;
	(void)state;

	need_kvm(&a);
	assert_int_equal(kvm_env_open(&b), 0);

	assert_int_equal(ioctl(a.vcpu, KVM_GET_REGS, &ra), 0);
	ra.rax = 0x1122334455667788ull;
	ra.rip = 0xfff0;
	ra.rflags = 0x2;
	assert_int_equal(ioctl(a.vcpu, KVM_SET_REGS, &ra), 0);

	n = mig_x86_msr_list(a.kvm, a.vcpu, msrs, 512, &e);
	assert_true(n > 0);
	/* This KVM may list IA32_ARCH_CAPABILITIES and refuse it: the list
	 * holds only MSRs that KVM_GET_MSRS really reads. */
	for (int i = 0; i < n && i < 512; i++) {
		struct { struct kvm_msrs h; struct kvm_msr_entry e; } one;
		memset(&one, 0, sizeof(one));
		one.h.nmsrs = 1;
		one.e.index = msrs[i];
		assert_int_equal(ioctl(a.vcpu, KVM_GET_MSRS, &one), 1);
	}

	/* An external interrupt KVM has injected shows in both the events
	 * and KVM_GET_SREGS's interrupt bitmap. */
	struct kvm_vcpu_events ev;
	struct kvm_sregs sr;
	assert_int_equal(ioctl(a.vcpu, KVM_GET_VCPU_EVENTS, &ev), 0);
	ev.interrupt.injected = 1;
	ev.interrupt.nr = 0x71;
	ev.interrupt.soft = 0;
	assert_int_equal(ioctl(a.vcpu, KVM_SET_VCPU_EVENTS, &ev), 0);
	assert_int_equal(ioctl(a.vcpu, KVM_GET_SREGS, &sr), 0);
	assert_int_equal(sr.interrupt_bitmap[1], UINT64_C(1) << (0x71 - 64));

	assert_int_equal(mig_x86_vcpu_save(a.kvm, a.vcpu, &blob, &len, &e), 0);
	assert_true(len > 0 && len <= MIG_X86_BLOB_MAX);
	Mig__State__X86Vcpu *m = mig__state__x86_vcpu__unpack(NULL, len, blob);
	assert_non_null(m);
	assert_int_equal(m->sregs.len, sizeof(sr));
	assert_memory_equal(m->sregs.data, &sr, sizeof(sr));
	mig__state__x86_vcpu__free_unpacked(m, NULL);
	move_state(&a, &b, blob, len);
	assert_int_equal(ioctl(b.vcpu, KVM_GET_REGS, &rb), 0);
	assert_int_equal(rb.rax, ra.rax);
	assert_int_equal(rb.rip, ra.rip);

	mig_free(blob);
	kvm_env_close(&a);
	kvm_env_close(&b);
}

static uint64_t get_msr(int vcpu, uint32_t index)
{
	struct { struct kvm_msrs h; struct kvm_msr_entry e; } one;

	memset(&one, 0, sizeof(one));
	one.h.nmsrs = 1;
	one.e.index = index;
	assert_int_equal(ioctl(vcpu, KVM_GET_MSRS, &one), 1);
	return one.e.data;
}

static void set_msr(int vcpu, uint32_t index, uint64_t value)
{
	struct { struct kvm_msrs h; struct kvm_msr_entry e; } one;

	memset(&one, 0, sizeof(one));
	one.h.nmsrs = 1;
	one.e.index = index;
	one.e.data = value;
	assert_int_equal(ioctl(vcpu, KVM_SET_MSRS, &one), 1);
}

/* The host's supported CPUID on the vCPU; 1 if it has a TSC-deadline
 * LAPIC timer (leaf 1 ECX bit 24), which KVM offers the guest only then. */
static int cpuid_with_deadline(struct kvm_env *k)
{
	struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + 256 * sizeof(c->entries[0]));
	int has = 0;

	assert_non_null(c);
	c->nent = 256;
	assert_int_equal(ioctl(k->kvm, KVM_GET_SUPPORTED_CPUID, c), 0);
	for (uint32_t i = 0; i < c->nent; i++)
		if (c->entries[i].function == 1)
			has = (c->entries[i].ecx >> 24) & 1;
	assert_int_equal(ioctl(k->vcpu, KVM_SET_CPUID2, c), 0);
	free(c);
	return has;
}

/*
 * A TSC-deadline timer survives a save and a load: the deadline MSR goes
 * in after the LAPIC (KVM ignores it unless the timer is in TSC-deadline
 * mode) and after the TSC it counts against.
 */
/* b's vCPU loads a's blob with its TSC rate replaced by `khz`. */
static int load_at_rate(struct kvm_env *b, const void *blob, size_t len,
			uint32_t khz, mig_x86_tsc_policy policy,
			mig_x86_tsc_info *tsc, mig_error *e)
{
	Mig__State__X86Vcpu *m = mig__state__x86_vcpu__unpack(NULL, len, blob);
	uint8_t *buf;
	size_t n;
	int r;

	assert_non_null(m);
	m->tsc_khz = khz;
	n = mig__state__x86_vcpu__get_packed_size(m);
	buf = malloc(n);
	assert_non_null(buf);
	mig__state__x86_vcpu__pack(m, buf);
	r = mig_x86_vcpu_load_tsc(b->kvm, b->vcpu, buf, n, policy, tsc, e);
	free(buf);
	mig__state__x86_vcpu__free_unpacked(m, NULL);
	return r;
}

/*
 * A saved TSC rate 10% below the vCPU's: KVM with TSC scaling runs it;
 * without, the strict policy refuses and leaves the vCPU's rate as it was
 * (KVM records a refused rate), the host policy goes on at the vCPU's own
 * rate and says so. A faster saved rate always loads (scaling or KVM's
 * catch-up).
 */
static void test_kvm_tsc_policy(void **state)
{
	struct kvm_env a, b;
	mig_x86_tsc_info tsc;
	mig_error e = { 0 };
	void *blob = NULL;
	size_t len = 0;
	int cur, r;
	(void)state;

	need_kvm(&a);
	assert_int_equal(kvm_env_open(&b), 0);
	assert_int_equal(mig_x86_vcpu_save(a.kvm, a.vcpu, &blob, &len, &e), 0);
	cur = ioctl(b.vcpu, KVM_GET_TSC_KHZ, 0);
	assert_true(cur > 1000);
	uint32_t slow = (uint32_t)cur / 10 * 9, fast = (uint32_t)cur / 10 * 11;

	assert_int_equal(load_at_rate(&b, blob, len, slow, (mig_x86_tsc_policy)7,
				      &tsc, &e), -EINVAL);
	assert_non_null(strstr(e.msg, "TSC policy"));

	r = load_at_rate(&b, blob, len, slow, MIG_X86_TSC_STRICT, &tsc, &e);
	print_message("vCPU at %d kHz, saved %u kHz: KVM %s\n", cur, slow,
		      r == 0 ? "scales it" : "cannot run it (no TSC scaling)");
	assert_int_equal(tsc.saved_khz, slow);
	if (r == 0) { /* TSC scaling */
		assert_int_equal(tsc.khz, slow);
		assert_int_equal(ioctl(b.vcpu, KVM_GET_TSC_KHZ, 0), (int)slow);
		assert_int_equal(ioctl(b.vcpu, KVM_SET_TSC_KHZ, cur), 0);
	} else {
		assert_int_equal(r, -ENOTSUP);
		assert_non_null(strstr(e.msg, "KVM_SET_TSC_KHZ"));
		assert_int_equal(tsc.khz, (uint32_t)cur);
		assert_int_equal(ioctl(b.vcpu, KVM_GET_TSC_KHZ, 0), cur);
		memset(&tsc, 0xff, sizeof(tsc));
		r = load_at_rate(&b, blob, len, slow, MIG_X86_TSC_HOST, &tsc,
				 &e);
		if (r < 0)
			fail_msg("host policy: %s", e.msg);
		assert_int_equal(tsc.saved_khz, slow);
		assert_int_equal(tsc.khz, (uint32_t)cur);
		assert_int_equal(ioctl(b.vcpu, KVM_GET_TSC_KHZ, 0), cur);
	}
	r = load_at_rate(&b, blob, len, fast, MIG_X86_TSC_STRICT, &tsc, &e);
	if (r < 0)
		fail_msg("faster rate: %s", e.msg);
	assert_int_equal(tsc.saved_khz, fast);
	assert_int_equal(tsc.khz, fast);
	assert_int_equal(ioctl(b.vcpu, KVM_GET_TSC_KHZ, 0), (int)fast);

	mig_free(blob);
	kvm_env_close(&a);
	kvm_env_close(&b);
}

static void test_kvm_tsc_deadline(void **state)
{
	const uint32_t msr_tsc = 0x10, msr_deadline = 0x6e0;
	struct kvm_env a, b;
	struct kvm_lapic_state lapic;
	void *blob = NULL;
	size_t len = 0;
	mig_error e = { 0 };
	uint64_t deadline;
	uint32_t v;
	(void)state;

	need_kvm(&a);
	assert_int_equal(kvm_env_open(&b), 0);
	if (!cpuid_with_deadline(&a) || !cpuid_with_deadline(&b)) {
		kvm_env_close(&a);
		kvm_env_close(&b);
		skip();
	}
	/* LAPIC software-enabled, its timer in TSC-deadline mode. */
	assert_int_equal(ioctl(a.vcpu, KVM_GET_LAPIC, &lapic), 0);
	memcpy(&v, &lapic.regs[0xf0], 4);
	v |= 1u << 8;
	memcpy(&lapic.regs[0xf0], &v, 4);
	v = (2u << 17) | 0x40;
	memcpy(&lapic.regs[0x320], &v, 4);
	assert_int_equal(ioctl(a.vcpu, KVM_SET_LAPIC, &lapic), 0);
	deadline = get_msr(a.vcpu, msr_tsc) + (UINT64_C(1) << 40);
	set_msr(a.vcpu, msr_deadline, deadline);
	assert_int_equal(get_msr(a.vcpu, msr_deadline), deadline);

	assert_int_equal(mig_x86_vcpu_save(a.kvm, a.vcpu, &blob, &len, &e), 0);
	move_state(&a, &b, blob, len);
	assert_int_equal(ioctl(b.vcpu, KVM_GET_LAPIC, &lapic), 0);
	memcpy(&v, &lapic.regs[0x320], 4);
	assert_int_equal(v & (3u << 17), 2u << 17);
	assert_int_equal(get_msr(b.vcpu, msr_deadline), deadline);

	mig_free(blob);
	kvm_env_close(&a);
	kvm_env_close(&b);
}

/*
 * A vCPU with an INIT pending when it is saved: KVM_GET_MP_STATE delivers
 * the INIT (resetting the registers) before it answers, so the save must
 * read the registers after it, or the blob holds the registers from before
 * the INIT with the MP state from after it, and the INIT is lost. Loaded
 * elsewhere, the vCPU must be where the saved one is now.
 */
static void test_kvm_pending_init(void **state)
{
	struct kvm_env a, b;
	struct kvm_regs ra, rb;
	struct kvm_sregs sa, sb;
	struct kvm_vcpu_events ev;
	struct kvm_mp_state mp;
	void *blob = NULL;
	size_t len = 0;
	mig_error e = { 0 };
	(void)state;

	need_kvm(&a);
	assert_int_equal(kvm_env_open(&b), 0);
	assert_int_equal(ioctl(a.vcpu, KVM_GET_REGS, &ra), 0);
	ra.rip = 0x1234;
	ra.rax = 0x55;
	assert_int_equal(ioctl(a.vcpu, KVM_SET_REGS, &ra), 0);
	/* The INIT as KVM holds it: latched in the LAPIC (what another
	 * vCPU's INIT IPI leaves until this one runs again). */
	assert_int_equal(ioctl(a.vcpu, KVM_GET_VCPU_EVENTS, &ev), 0);
	ev.flags |= KVM_VCPUEVENT_VALID_SMM;
	ev.smi.latched_init = 1;
	if (ioctl(a.vcpu, KVM_SET_VCPU_EVENTS, &ev) < 0) {
		kvm_env_close(&a);
		kvm_env_close(&b);
		skip(); /* a KVM that latches no INIT here */
	}

	assert_int_equal(mig_x86_vcpu_save(a.kvm, a.vcpu, &blob, &len, &e), 0);
	move_state(&a, &b, blob, len);
	/* Both as they would enter the guest: any INIT delivered. */
	assert_int_equal(ioctl(a.vcpu, KVM_GET_MP_STATE, &mp), 0);
	assert_int_equal(ioctl(b.vcpu, KVM_GET_MP_STATE, &mp), 0);
	assert_int_equal(ioctl(a.vcpu, KVM_GET_REGS, &ra), 0);
	assert_int_equal(ioctl(b.vcpu, KVM_GET_REGS, &rb), 0);
	assert_int_equal(ioctl(a.vcpu, KVM_GET_SREGS, &sa), 0);
	assert_int_equal(ioctl(b.vcpu, KVM_GET_SREGS, &sb), 0);
	assert_int_equal(ra.rip, 0xfff0); /* the INIT reset a */
	assert_int_equal(rb.rip, ra.rip);
	assert_int_equal(rb.rax, ra.rax);
	assert_int_equal(sb.cs.selector, sa.cs.selector);
	assert_int_equal(sb.cs.base, sa.cs.base);
	assert_int_equal(sb.cr0, sa.cr0);

	mig_free(blob);
	kvm_env_close(&a);
	kvm_env_close(&b);
}

/*
 * An AP with an INIT and a SIPI pending when it is saved (the start-up
 * IPIs of its BSP, not yet taken): the save delivers both, and the AP must
 * come out of the load started at the SIPI's vector, not back in "wait for
 * SIPI" (the INIT again, its SIPI gone), nor at its old registers.
 */
static void test_kvm_ap_init_sipi(void **state)
{
	struct kvm_env a, b;
	struct kvm_regs ra, rb;
	struct kvm_sregs sa, sb;
	struct kvm_vcpu_events ev;
	struct kvm_mp_state mp = { KVM_MP_STATE_SIPI_RECEIVED }, mpa, mpb;
	void *blob = NULL;
	size_t len = 0;
	mig_error e = { 0 };
	int ap_a, ap_b;
	(void)state;

	need_kvm(&a);
	assert_int_equal(kvm_env_open(&b), 0);
	ap_a = ioctl(a.vm, KVM_CREATE_VCPU, 1);
	ap_b = ioctl(b.vm, KVM_CREATE_VCPU, 1);
	assert_true(ap_a >= 0 && ap_b >= 0);
	assert_int_equal(ioctl(ap_a, KVM_GET_VCPU_EVENTS, &ev), 0);
	ev.flags |= KVM_VCPUEVENT_VALID_SMM | KVM_VCPUEVENT_VALID_SIPI_VECTOR;
	ev.smi.latched_init = 1;
	ev.sipi_vector = 0x12;
	if (ioctl(ap_a, KVM_SET_VCPU_EVENTS, &ev) < 0 ||
	    ioctl(ap_a, KVM_SET_MP_STATE, &mp) < 0) {
		close(ap_a);
		close(ap_b);
		kvm_env_close(&a);
		kvm_env_close(&b);
		skip(); /* a KVM that latches no INIT or SIPI here */
	}

	assert_int_equal(mig_x86_vcpu_save(a.kvm, ap_a, &blob, &len, &e), 0);
	if (mig_x86_vcpu_load(b.kvm, ap_b, blob, len, &e) < 0)
		fail_msg("vcpu load: %s", e.msg);
	assert_int_equal(ioctl(ap_a, KVM_GET_MP_STATE, &mpa), 0);
	assert_int_equal(ioctl(ap_b, KVM_GET_MP_STATE, &mpb), 0);
	assert_int_equal(ioctl(ap_a, KVM_GET_REGS, &ra), 0);
	assert_int_equal(ioctl(ap_b, KVM_GET_REGS, &rb), 0);
	assert_int_equal(ioctl(ap_a, KVM_GET_SREGS, &sa), 0);
	assert_int_equal(ioctl(ap_b, KVM_GET_SREGS, &sb), 0);
	assert_int_equal(mpa.mp_state, KVM_MP_STATE_RUNNABLE);
	assert_int_equal(sa.cs.selector, 0x1200); /* started at the vector */
	assert_int_equal(mpb.mp_state, mpa.mp_state);
	assert_int_equal(sb.cs.selector, sa.cs.selector);
	assert_int_equal(sb.cs.base, sa.cs.base);
	assert_int_equal(rb.rip, ra.rip);

	mig_free(blob);
	close(ap_a);
	close(ap_b);
	kvm_env_close(&a);
	kvm_env_close(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_vcpu_valid_reaches_kvm),
		cmocka_unit_test(test_vcpu_garbage),
		cmocka_unit_test(test_vcpu_bad_items),
		cmocka_unit_test(test_vcpu_many_msrs),
		cmocka_unit_test(test_vcpu_truncated_and_corrupted),
		cmocka_unit_test(test_vm_blob),
		cmocka_unit_test(test_kvm_round_trip),
		cmocka_unit_test(test_kvm_tsc_policy),
		cmocka_unit_test(test_kvm_tsc_deadline),
		cmocka_unit_test(test_kvm_pending_init),
		cmocka_unit_test(test_kvm_ap_init_sipi),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
