/*
 * libFuzzer target: libmigrate's decoders of the saved KVM x86 state
 * (kvm_x86.h), blobs that come from a migration stream or a state file.
 *
 * Input: one op byte, then a blob; op % 2
 *   0: a VM blob (irqchips, PIT, kvmclock) for mig__x86_vm_decode();
 *   1: a vCPU blob for mig__x86_vcpu_decode(), and (op / 2) % 2 picks the
 *     TSC policy that mig_x86_vcpu_load_tsc() is called with.
 * The decoder either refuses the blob with its documented errno and a
 * message, or what it accepts has all that kvm_x86_int.h promises (each
 * item present where required and of exactly its KVM struct's size, the
 * bounds), and it packs to a blob that is accepted again and packs back to
 * the same bytes. The public loader, on fds -1, gives the decoder's refusal
 * or, for a blob the decoder accepts, -EBADF from its first ioctl: never a
 * crash, never an error without a message.
 */
#include <errno.h>
#include <string.h>

#include "fuzz_common.h"
#include "kvm_x86_int.h"

#define FUZZ_OP_VM 0
#define FUZZ_OP_VCPU 1

static void check_refusal(int r, const mig_error *err)
{
	FUZZ_CHECK(r == -EBADMSG || r == -EINVAL || r == -EMSGSIZE);
	FUZZ_CHECK(err->code == r && err->msg[0]);
}

/* What the public loader gave, after the decoder gave `r` and `msg`. */
static void check_load(int load, const mig_error *lerr, int r, const char *msg)
{
	FUZZ_CHECK(lerr->code == load && lerr->msg[0]);
	if (r < 0)
		FUZZ_CHECK(load == r && !strcmp(lerr->msg, msg));
	else
		FUZZ_CHECK(load == -EBADF);
}

/* An item the decoder accepted: absent (if it may be) or exactly `size`. */
static void check_item(const ProtobufCBinaryData *d, size_t size, bool required)
{
	FUZZ_CHECK(d->len == size || (d->len == 0 && !required));
	FUZZ_CHECK(d->len == 0 || d->data);
}

/* pack(m) decodes again, and the message it decodes to packs to the same
 * bytes: what was accepted once is accepted in its canonical form too. */
static void check_repack(const ProtobufCMessage *m, bool vcpu)
{
	size_t n = protobuf_c_message_get_packed_size(m);
	uint8_t *buf = malloc(n ? n : 1), *buf2;
	Mig__State__X86Vcpu *vc = NULL;
	Mig__State__X86Vm *vm = NULL;
	const ProtobufCMessage *again;
	mig_error err = { 0 };
	int r;

	FUZZ_CHECK(buf);
	FUZZ_CHECK(protobuf_c_message_pack(m, buf) == n);
	if (vcpu)
		r = mig__x86_vcpu_decode(buf, n, &vc, &err);
	else
		r = mig__x86_vm_decode(buf, n, &vm, &err);
	if (r < 0)
		fprintf(stderr, "re-packed blob refused: %s\n", err.msg);
	FUZZ_CHECK(r == 0);
	again = vcpu ? &vc->base : &vm->base;
	FUZZ_CHECK(protobuf_c_message_get_packed_size(again) == n);
	buf2 = malloc(n ? n : 1);
	FUZZ_CHECK(buf2);
	protobuf_c_message_pack(again, buf2);
	FUZZ_CHECK(!memcmp(buf, buf2, n));
	if (vcpu)
		mig__state__x86_vcpu__free_unpacked(vc, NULL);
	else
		mig__state__x86_vm__free_unpacked(vm, NULL);
	free(buf2);
	free(buf);
}

static void fuzz_vm(const uint8_t *d, size_t n)
{
	Mig__State__X86Vm *m = (void *)1;
	const ProtobufCBinaryData *chip[3];
	mig_error err = { 0 }, lerr = { 0 };
	int r;

	r = mig__x86_vm_decode(d, n, &m, &err);
	check_load(mig_x86_vm_load(-1, d, n, &lerr), &lerr, r, err.msg);
	if (r < 0) {
		check_refusal(r, &err);
		FUZZ_CHECK(m == NULL);
		return;
	}
	FUZZ_CHECK(r == 0 && m);
	FUZZ_CHECK(m->version >= 1 && m->version <= MIG_X86_STATE_VERSION);
	check_item(&m->clock, sizeof(struct kvm_clock_data), true);
	check_item(&m->pit, sizeof(struct kvm_pit_state2), false);
	chip[0] = &m->pic_master;
	chip[1] = &m->pic_slave;
	chip[2] = &m->ioapic;
	for (uint32_t i = 0; i < 3; i++) {
		struct kvm_irqchip c;
		check_item(chip[i], sizeof(c), false);
		FUZZ_CHECK(chip[i]->len == chip[0]->len);
		if (!chip[i]->len)
			continue;
		memcpy(&c, chip[i]->data, sizeof(c));
		FUZZ_CHECK(c.chip_id == i);
	}
	check_repack(&m->base, false);
	mig__state__x86_vm__free_unpacked(m, NULL);
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return (x > y) - (x < y);
}

static void fuzz_vcpu(const uint8_t *d, size_t n, mig_x86_tsc_policy policy)
{
	Mig__State__X86Vcpu *m = (void *)1;
	mig_error err = { 0 }, lerr = { 0 };
	mig_x86_tsc_info tsc;
	uint32_t idx[X86_MSRS_MAX];
	int r;

	r = mig__x86_vcpu_decode(d, n, &m, &err);
	memset(&tsc, 0xa5, sizeof(tsc));
	check_load(mig_x86_vcpu_load_tsc(-1, -1, d, n, policy, &tsc, &lerr),
		   &lerr, r, err.msg);
	FUZZ_CHECK(tsc.khz == 0);
	if (r < 0) {
		check_refusal(r, &err);
		FUZZ_CHECK(m == NULL && tsc.saved_khz == 0);
		return;
	}
	FUZZ_CHECK(r == 0 && m);
	FUZZ_CHECK(m->version >= 1 && m->version <= MIG_X86_STATE_VERSION);
	check_item(&m->regs, sizeof(struct kvm_regs), true);
	check_item(&m->sregs, sizeof(struct kvm_sregs), true);
	check_item(&m->mp_state, sizeof(struct kvm_mp_state), true);
	check_item(&m->events, sizeof(struct kvm_vcpu_events), true);
	check_item(&m->sregs2, sizeof(struct kvm_sregs2), false);
	check_item(&m->fpu, sizeof(struct kvm_fpu), false);
	check_item(&m->xcrs, sizeof(struct kvm_xcrs), false);
	check_item(&m->lapic, sizeof(struct kvm_lapic_state), false);
	check_item(&m->debugregs, sizeof(struct kvm_debugregs), false);
	FUZZ_CHECK(m->xsave.len || m->fpu.len);
	FUZZ_CHECK(m->xsave.len == 0 ||
		   (m->xsave.len >= sizeof(struct kvm_xsave) &&
		    m->xsave.len <= X86_XSAVE_MAX && m->xsave.data));
	if (m->xcrs.len) {
		struct kvm_xcrs x;
		memcpy(&x, m->xcrs.data, sizeof(x));
		FUZZ_CHECK(x.nr_xcrs <= KVM_MAX_XCRS);
	}
	FUZZ_CHECK(m->n_msrs <= X86_MSRS_MAX);
	FUZZ_CHECK(m->n_msrs == 0 || m->msrs);
	for (size_t i = 0; i < m->n_msrs; i++) {
		FUZZ_CHECK(m->msrs[i]);
		idx[i] = m->msrs[i]->index;
	}
	qsort(idx, m->n_msrs, sizeof(idx[0]), cmp_u32);
	for (size_t i = 1; i < m->n_msrs; i++)
		FUZZ_CHECK(idx[i - 1] != idx[i]);
	FUZZ_CHECK(m->tsc_khz <= UINT32_MAX);
	/* The loader read the saved rate before its first ioctl failed. */
	FUZZ_CHECK(tsc.saved_khz == m->tsc_khz);
	check_repack(&m->base, true);
	mig__state__x86_vcpu__free_unpacked(m, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
	if (n < 1)
		return 0;
	switch (d[0] % 2) {
	case FUZZ_OP_VM:
		fuzz_vm(d + 1, n - 1);
		break;
	case FUZZ_OP_VCPU:
		fuzz_vcpu(d + 1, n - 1, (d[0] / 2) % 2 ? MIG_X86_TSC_HOST :
			  MIG_X86_TSC_STRICT);
		break;
	}
	return 0;
}
