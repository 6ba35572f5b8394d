/*
 * Every wire message survives pack -> frame -> parse -> unpack with its
 * fields intact (checked by field, and by re-packing to identical bytes).
 */
#include <errno.h>
#include <string.h>

#include "mig_test.h"
#include "frame.h"
#include "vmstate.pb-c.h"
#include "control.pb-c.h"

static Mig__Wire__Envelope *roundtrip(const Mig__Wire__Envelope *env)
{
	mig_buf a = { 0 }, b = { 0 };
	mig_frame f;
	int err;
	Mig__Wire__Envelope *got;

	assert_int_equal(mig__msg_pack(env, &a), 0);
	assert_int_equal(mig__frame_parse(a.data, a.len, &f), (long)a.len);
	got = mig__msg_unpack(f.body, f.len, &err);
	assert_non_null(got);
	assert_int_equal(got->msg_case, env->msg_case);
	assert_int_equal(mig__msg_pack(got, &b), 0);
	assert_int_equal(a.len, b.len);
	assert_memory_equal(a.data, b.data, a.len);
	mig__buf_free(&a);
	mig__buf_free(&b);
	return got;
}

#define ENV(field, CASE, ptr)                                          \
	do {                                                           \
		Mig__Wire__Envelope e = MIG__WIRE__ENVELOPE__INIT;     \
		e.msg_case = MIG__WIRE__ENVELOPE__MSG_##CASE;          \
		e.field = (ptr);                                       \
		got = roundtrip(&e);                                   \
	} while (0)

static ProtobufCBinaryData bin(const char *s)
{
	ProtobufCBinaryData d = { strlen(s), (uint8_t *)s };
	return d;
}

static void test_every_message(void **state)
{
	Mig__Wire__Envelope *got;
	(void)state;

	Mig__Wire__Hello hello = MIG__WIRE__HELLO__INIT;
	hello.version_major = 1; hello.version_minor = 2;
	hello.features = MIG__WIRE__FEATURE__FEATURE_ZSTD;
	hello.token = bin("tok"); hello.connection_index = 3;
	hello.connection_count = 4; hello.session_id = bin("sess");
	ENV(hello, HELLO, &hello);
	assert_int_equal(got->hello->connection_count, 4);
	assert_memory_equal(got->hello->session_id.data, "sess", 4);
	mig__msg_free(got);

	Mig__Wire__HelloAck ack = MIG__WIRE__HELLO_ACK__INIT;
	ack.ok = 0; ack.error = MIG_E_AUTH; ack.message = "bad token";
	ENV(hello_ack, HELLO_ACK, &ack);
	assert_int_equal(got->hello_ack->error, MIG_E_AUTH);
	assert_string_equal(got->hello_ack->message, "bad token");
	mig__msg_free(got);

	Mig__Wire__Region r0 = MIG__WIRE__REGION__INIT, r1 = MIG__WIRE__REGION__INIT;
	Mig__Wire__Region *regs[2] = { &r0, &r1 };
	r0.slot = 0; r0.gpa = 0; r0.size = 3ull << 30;
	r1.slot = 1; r1.gpa = 4ull << 30; r1.size = 1ull << 30;
	Mig__Wire__VmConfig cfg = MIG__WIRE__VM_CONFIG__INIT;
	cfg.n_regions = 2; cfg.regions = regs; cfg.vcpus = 2;
	cfg.page_size = 4096; cfg.cpuid = bin("cpuidfp"); cfg.vmm = "migvm";
	ENV(vm_config, VM_CONFIG, &cfg);
	assert_int_equal(got->vm_config->n_regions, 2);
	assert_int_equal(got->vm_config->regions[1]->gpa, 4ull << 30);
	mig__msg_free(got);

	Mig__Wire__ConfigAck cack = MIG__WIRE__CONFIG_ACK__INIT;
	cack.ok = 1;
	ENV(config_ack, CONFIG_ACK, &cack);
	assert_true(got->config_ack->ok);
	mig__msg_free(got);

	Mig__Wire__RoundStart rs = MIG__WIRE__ROUND_START__INIT;
	rs.round = 7; rs.pages = 12345;
	ENV(round_start, ROUND_START, &rs);
	assert_int_equal(got->round_start->pages, 12345);
	mig__msg_free(got);

	Mig__Wire__RoundEnd re = MIG__WIRE__ROUND_END__INIT;
	re.round = 7; re.pages = 99; re.bytes = 1ull << 40;
	ENV(round_end, ROUND_END, &re);
	assert_int_equal(got->round_end->bytes, 1ull << 40);
	mig__msg_free(got);

	Mig__Wire__Switchover sw = MIG__WIRE__SWITCHOVER__INIT;
	sw.round = 8; sw.paused_at_ns = 123456789;
	ENV(switchover, SWITCHOVER, &sw);
	assert_int_equal(got->switchover->paused_at_ns, 123456789);
	mig__msg_free(got);

	Mig__Wire__StateBlob blob = MIG__WIRE__STATE_BLOB__INIT;
	blob.name = "x86.vcpu.0"; blob.data = bin("\x01\x02\x03");
	ENV(state, STATE, &blob);
	assert_string_equal(got->state->name, "x86.vcpu.0");
	assert_int_equal(got->state->data.len, 3);
	mig__msg_free(got);

	Mig__Wire__Complete comp = MIG__WIRE__COMPLETE__INIT;
	comp.pages_total = 262144; comp.memory_hash = bin("hash");
	ENV(complete, COMPLETE, &comp);
	assert_int_equal(got->complete->pages_total, 262144);
	mig__msg_free(got);

	Mig__Wire__Commit commit = MIG__WIRE__COMMIT__INIT;
	commit.memory_hash = bin("hash");
	ENV(commit, COMMIT, &commit);
	assert_int_equal(got->commit->memory_hash.len, 4);
	mig__msg_free(got);

	Mig__Wire__Abort ab = MIG__WIRE__ABORT__INIT;
	ab.error = -ECONNRESET; ab.reason = "source canceled";
	ENV(abort, ABORT, &ab);
	assert_int_equal(got->abort->error, -ECONNRESET);
	assert_string_equal(got->abort->reason, "source canceled");
	mig__msg_free(got);

	Mig__Wire__RoundStats st = MIG__WIRE__ROUND_STATS__INIT;
	st.round = 2; st.pages = 10; st.zero_pages = 3; st.bytes = 4000;
	st.duration_us = 55; st.dirty_pages = 9;
	ENV(stats, STATS, &st);
	assert_int_equal(got->stats->dirty_pages, 9);
	mig__msg_free(got);

	Mig__Wire__Activate act = MIG__WIRE__ACTIVATE__INIT;
	ENV(activate, ACTIVATE, &act);
	mig__msg_free(got);

	Mig__Wire__MemoryHint hint = MIG__WIRE__MEMORY_HINT__INIT;
	hint.region = 1; hint.first_page = 128; hint.bitmap = bin("\xff\x01");
	ENV(hint, HINT, &hint);
	assert_int_equal(got->hint->first_page, 128);
	assert_int_equal(got->hint->bitmap.len, 2);
	mig__msg_free(got);

	Mig__Wire__Activated acd = MIG__WIRE__ACTIVATED__INIT;
	acd.resume_us = 77;
	ENV(activated, ACTIVATED, &acd);
	assert_int_equal(got->activated->resume_us, 77);
	mig__msg_free(got);

	Mig__Wire__StateEnd se = MIG__WIRE__STATE_END__INIT;
	se.items = 9;
	ENV(state_end, STATE_END, &se);
	assert_int_equal(got->state_end->items, 9);
	mig__msg_free(got);
}

/* Every case of the oneof was exercised above: catch new ones added later. */
static void test_oneof_covered(void **state)
{
	(void)state;
	assert_int_equal(mig__wire__envelope__descriptor.n_fields, 16);
}

static void test_vmstate_roundtrip(void **state)
{
	uint8_t buf[256];
	size_t n;
	(void)state;
	Mig__State__Msr m0 = MIG__STATE__MSR__INIT, m1 = MIG__STATE__MSR__INIT;
	Mig__State__Msr *msrs[2] = { &m0, &m1 };
	m0.index = 0x10; m0.value = 0xdeadbeefcafeull;
	m1.index = 0x4b564d01; m1.value = 1;
	Mig__State__X86Vcpu v = MIG__STATE__X86_VCPU__INIT;
	v.version = 1; v.regs = bin("regs"); v.n_msrs = 2; v.msrs = msrs;
	v.tsc_khz = 2000000;
	n = mig__state__x86_vcpu__get_packed_size(&v);
	assert_true(n < sizeof(buf));
	mig__state__x86_vcpu__pack(&v, buf);
	Mig__State__X86Vcpu *g = mig__state__x86_vcpu__unpack(NULL, n, buf);
	assert_non_null(g);
	assert_int_equal(g->n_msrs, 2);
	assert_int_equal(g->msrs[0]->value, 0xdeadbeefcafeull);
	assert_int_equal(g->tsc_khz, 2000000);
	mig__state__x86_vcpu__free_unpacked(g, NULL);

	Mig__State__X86Vm vm = MIG__STATE__X86_VM__INIT;
	vm.version = 1; vm.pit = bin("pit"); vm.clock = bin("clock");
	n = mig__state__x86_vm__get_packed_size(&vm);
	mig__state__x86_vm__pack(&vm, buf);
	Mig__State__X86Vm *gv = mig__state__x86_vm__unpack(NULL, n, buf);
	assert_non_null(gv);
	assert_memory_equal(gv->clock.data, "clock", 5);
	mig__state__x86_vm__free_unpacked(gv, NULL);
}

/* Truncated encodings of a message never decode into garbage silently. */
static void test_truncated_messages(void **state)
{
	mig_buf a = { 0 };
	mig_frame f;
	int err;
	(void)state;
	Mig__Wire__Abort ab = MIG__WIRE__ABORT__INIT;
	ab.error = -EIO; ab.reason = "a reason long enough to be cut";
	Mig__Wire__Envelope e = MIG__WIRE__ENVELOPE__INIT;
	e.msg_case = MIG__WIRE__ENVELOPE__MSG_ABORT;
	e.abort = &ab;
	assert_int_equal(mig__msg_pack(&e, &a), 0);
	assert_true(mig__frame_parse(a.data, a.len, &f) > 0);
	for (uint32_t n = 1; n < f.len; n++)
		assert_null(mig__msg_unpack(f.body, n, &err));
	mig__buf_free(&a);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_message),
		cmocka_unit_test(test_oneof_covered),
		cmocka_unit_test(test_vmstate_roundtrip),
		cmocka_unit_test(test_truncated_messages),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
