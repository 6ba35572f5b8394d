/*
 * Writes the seed corpus of the fuzz targets: valid frames and streams made
 * by the library itself, which the fuzzer then mutates (random bytes seldom
 * reach a valid zstd stream on their own).
 *
 *   fuzz_seeds DIR  ->  DIR/fuzz_frame/seed-*  DIR/fuzz_codec/seed-*
 *                       DIR/fuzz_vmm/seed-*  DIR/fuzz_protocol/seed-*
 *                       DIR/fuzz_state/seed-*
 *
 * Deterministic: the same seeds on every run.
 */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include <linux/kvm.h>

#include "control.pb-c.h"
#include "delta.h"
#include "fuzz_common.h"
#include "kvm_x86_int.h"

#define PG MIG_PAGE_SIZE

static const char *outdir;
static uint64_t rng = 0x5eed;

static uint64_t next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng * 0x2545f4914f6cdd1dull;
}

static void put(const char *target, const char *name, const void *p, size_t n)
{
	char path[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s/seed-%s", outdir, target, name);
	f = fopen(path, "wb");
	FUZZ_CHECK(f);
	FUZZ_CHECK(fwrite(p, 1, n, f) == n);
	FUZZ_CHECK(fclose(f) == 0);
}

/* kind 0 zero, 1 random, 2 text, 3 sparse */
static void fill(uint8_t *p, int kind)
{
	static const char *const words[] = { "page ", "dirty ", "round ", "the ",
					     "migration ", "of ", "kvm\n", "guest " };
	size_t o = 0;
	memset(p, 0, PG);
	if (kind == 1) {
		for (size_t i = 0; i < PG; i += 8) {
			uint64_t v = next();
			memcpy(p + i, &v, 8);
		}
	} else if (kind == 2) {
		while (o < PG) {
			const char *w = words[next() % 8];
			size_t k = strlen(w) < PG - o ? strlen(w) : PG - o;
			memcpy(p + o, w, k);
			o += k;
		}
	} else if (kind == 3) {
		p[next() % PG] = 1;
	}
}

/* Append `batches` PAGES frames from one encoder to *out: batches of 1..npages
 * pages of the fake guest, of the kinds given. */
static void stream(mig_buf *out, mig_compress mode, int batches, size_t npages,
		   const int *kinds, size_t nkinds)
{
	static uint8_t pages[FUZZ_PAGES][PG];
	const uint8_t *data[FUZZ_PAGES];
	uint64_t idx[FUZZ_PAGES];
	mig_enc *e;
	mig_enc_stats st = { 0 };

	FUZZ_CHECK(mig__enc_create(&e, mode, 1) == 0);
	for (int b = 0; b < batches; b++) {
		size_t n = 1 + next() % npages;
		for (size_t i = 0; i < n; i++) {
			idx[i] = next() % FUZZ_PAGES;
			fill(pages[i], kinds[next() % nkinds]);
			data[i] = pages[i];
		}
		FUZZ_CHECK(mig__enc_batch(e, (uint32_t)(next() % FUZZ_REGIONS), idx,
					  data, n, out, &st) == 0);
	}
	mig__enc_destroy(e);
}

static void msg(mig_buf *out, Mig__Wire__Envelope *env)
{
	FUZZ_CHECK(mig__msg_pack(env, out) == 0);
}

static void frame_seeds(void)
{
	Mig__Wire__Envelope env = MIG__WIRE__ENVELOPE__INIT;
	Mig__Wire__Hello hello = MIG__WIRE__HELLO__INIT;
	Mig__Wire__VmConfig cfg = MIG__WIRE__VM_CONFIG__INIT;
	Mig__Wire__Region reg = MIG__WIRE__REGION__INIT, *regs[1] = { &reg };
	Mig__Wire__RoundEnd end = MIG__WIRE__ROUND_END__INIT;
	mig_buf all = { 0 }, b = { 0 };
	static const int text[] = { 2 }, zero[] = { 0 }, mixed[] = { 0, 1, 2, 3 };

	hello.version_major = 1;
	hello.features = 7;
	hello.token.data = (uint8_t *)"one-time-token";
	hello.token.len = 14;
	env.msg_case = MIG__WIRE__ENVELOPE__MSG_HELLO;
	env.hello = &hello;
	msg(&b, &env);
	put("fuzz_frame", "hello", b.data, b.len);
	mig__buf_append(&all, b.data, b.len);

	b.len = 0;
	reg.slot = 1;
	reg.gpa = 1ull << 32;
	reg.size = 1ull << 30;
	cfg.n_regions = 1;
	cfg.regions = regs;
	cfg.vcpus = 2;
	cfg.page_size = PG;
	env.msg_case = MIG__WIRE__ENVELOPE__MSG_VM_CONFIG;
	env.vm_config = &cfg;
	msg(&b, &env);
	put("fuzz_frame", "config", b.data, b.len);
	mig__buf_append(&all, b.data, b.len);

	b.len = 0;
	end.round = 3;
	end.pages = 1000;
	env.msg_case = MIG__WIRE__ENVELOPE__MSG_ROUND_END;
	env.round_end = &end;
	msg(&b, &env);
	put("fuzz_frame", "round_end", b.data, b.len);

	b.len = 0;
	stream(&b, MIG_COMPRESS_OFF, 1, 2, mixed, 4);
	put("fuzz_frame", "pages_raw", b.data, b.len);
	mig__buf_append(&all, b.data, b.len);
	b.len = 0;
	stream(&b, MIG_COMPRESS_ON, 1, 4, text, 1);
	put("fuzz_frame", "pages_zstd", b.data, b.len);
	mig__buf_append(&all, b.data, b.len);
	b.len = 0;
	stream(&b, MIG_COMPRESS_ON, 1, FUZZ_PAGES, zero, 1);
	put("fuzz_frame", "pages_zero", b.data, b.len);
	mig__buf_append(&all, b.data, b.len);
	put("fuzz_frame", "stream", all.data, all.len);
	mig__buf_free(&all);
	mig__buf_free(&b);
}

static void codec_seeds(void)
{
	static const int text[] = { 2 }, mixed[] = { 0, 1, 2, 3 }, sparse[] = { 0, 3 };
	static const struct {
		const char *name;
		mig_compress mode;
		int batches;
		size_t npages;
		const int *kinds;
		size_t nkinds;
	} s[] = {
		{ "dec_zstd_text", MIG_COMPRESS_ON, 4, 4, text, 1 },
		{ "dec_zstd_mixed", MIG_COMPRESS_ON, 3, 3, mixed, 4 },
		{ "dec_raw_mixed", MIG_COMPRESS_OFF, 3, 2, mixed, 4 },
		{ "dec_auto_sparse", MIG_COMPRESS_AUTO, 6, FUZZ_PAGES, sparse, 2 },
	};
	for (size_t i = 0; i < sizeof(s) / sizeof(s[0]); i++) {
		mig_buf b = { 0 };
		uint8_t op = FUZZ_OP_DECODE;
		mig__buf_append(&b, &op, 1);
		stream(&b, s[i].mode, s[i].batches, s[i].npages, s[i].kinds, s[i].nkinds);
		put("fuzz_codec", s[i].name, b.data, b.len);
		mig__buf_free(&b);
	}
	/* Round-trip recipes: op, mode, level, then batches. */
	for (int i = 0; i < 8; i++) {
		uint8_t r[1 + 2 + 8 * (3 + 3 * FUZZ_PAGES)];
		size_t n = 0;
		char name[32];
		r[n++] = FUZZ_OP_ROUNDTRIP;
		r[n++] = (uint8_t)(i % 3);
		r[n++] = 0;
		for (int b = 0; b < 8; b++) {
			size_t np = 1 + next() % FUZZ_PAGES;
			r[n++] = (uint8_t)next();
			r[n++] = (uint8_t)(np - 1);
			r[n++] = (uint8_t)next();
			for (size_t p = 0; p < np; p++) {
				r[n++] = (uint8_t)next();
				r[n++] = (uint8_t)(i < 4 ? 2 : next());
				r[n++] = (uint8_t)next();
			}
		}
		snprintf(name, sizeof(name), "roundtrip_%d", i);
		put("fuzz_codec", name, r, n);
	}
}

static void le(uint8_t *p, uint64_t v, int n)
{
	for (int i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* fuzz_vmm: a bzImage header as Linux 6.1 writes it (protocol 2.15) for a
 * VM of 513 MiB, and a UART state with a partial line and input pending. */
static void vmm_seeds(void)
{
	static uint8_t b[4 + 0x3000];
	uint8_t *img = b + 4;
	Mig__Ctl__SerialState m = MIG__CTL__SERIAL_STATE__INIT;
	static uint8_t st[1 + 256];
	size_t n;

	b[0] = 0;                 /* op: bzImage */
	b[1] = 0x00;
	b[2] = 0x02;              /* RAM: 513 MiB */
	b[3] = 0x10;              /* command line: 256 bytes */
	img[0x1f1] = 7;           /* setup_sects */
	le(img + 0x1f4, 0x2000 / 16, 4);
	le(img + 0x1fe, 0xaa55, 2);
	img[0x200] = 0xeb;
	img[0x201] = 0x66;        /* the header ends at 0x268 */
	memcpy(img + 0x202, "HdrS", 4);
	le(img + 0x206, 0x020f, 2);
	img[0x211] = 0x01;        /* LOADED_HIGH */
	le(img + 0x22c, 0x7fffffff, 4);
	le(img + 0x230, 0x200000, 4);
	img[0x234] = 1;           /* relocatable */
	le(img + 0x236, 0x7f, 2); /* xloadflags */
	le(img + 0x238, 2047, 4);
	le(img + 0x258, 0x1000000, 8);
	le(img + 0x260, 0x2000000, 4);
	put("fuzz_vmm", "bzimage", b, sizeof(b));

	m.ier = 3;
	m.lcr = 3;
	m.fcr = 1;
	m.thri_pending = 1;
	m.partial_line.data = (uint8_t *)"half a li";
	m.partial_line.len = 9;
	m.rx_pending.data = (uint8_t *)"ls -l\n";
	m.rx_pending.len = 6;
	n = mig__ctl__serial_state__get_packed_size(&m);
	FUZZ_CHECK(n < sizeof(st));
	st[0] = 1;                /* op: serial state */
	mig__ctl__serial_state__pack(&m, st + 1);
	put("fuzz_vmm", "serial", st, 1 + n);

	Mig__Ctl__AcpiPmState pm = MIG__CTL__ACPI_PM_STATE__INIT;
	pm.pm1_enable = 0x0100;
	pm.pm1_control = 5 << 10;
	st[0] = 2;                /* op: ACPI PM state */
	n = mig__ctl__acpi_pm_state__pack(&pm, st + 1);
	put("fuzz_vmm", "acpi_pm", st, 1 + n);
}

/* Pack `m` after the op byte into DIR/fuzz_state/seed-NAME. */
static void state_put(const char *name, uint8_t op, const ProtobufCMessage *m)
{
	size_t n = protobuf_c_message_get_packed_size(m);
	uint8_t *b = malloc(1 + n);

	FUZZ_CHECK(b);
	b[0] = op;
	protobuf_c_message_pack(m, b + 1);
	put("fuzz_state", name, b, 1 + n);
	free(b);
}

#define ITEM(f, v) do { (f).data = (uint8_t *)&(v); (f).len = sizeof(v); } while (0)

/* fuzz_state: VM blobs with and without the in-kernel irqchips and PIT
 * (zeroed KVM structs, chip ids set). */
static void state_vm_seeds(void)
{
	static struct kvm_irqchip chips[3];
	static struct kvm_pit_state2 pit;
	static struct kvm_clock_data clock;
	Mig__State__X86Vm vm = MIG__STATE__X86_VM__INIT;

	for (uint32_t i = 0; i < 3; i++)
		chips[i].chip_id = i;
	clock.clock = 123456789;
	vm.version = MIG_X86_STATE_VERSION;
	ITEM(vm.clock, clock);
	state_put("vm_clock", 0, &vm.base);
	ITEM(vm.pic_master, chips[0]);
	ITEM(vm.pic_slave, chips[1]);
	ITEM(vm.ioapic, chips[2]);
	state_put("vm_irqchip", 0, &vm.base);
	ITEM(vm.pit, pit);
	state_put("vm_all", 0, &vm.base);
}

/* fuzz_state: vCPU blobs as a host with and without XSAVE, SREGS2, XSAVE2
 * (AMX's 11 KiB area) and an in-kernel LAPIC would save them (zeroed KVM
 * structs, a few MSRs with TSC_DEADLINE among them), and one at the limits. */
static void state_vcpu_seeds(void)
{
	static struct kvm_regs regs;
	static struct kvm_sregs sregs;
	static struct kvm_sregs2 sregs2;
	static struct kvm_fpu fpu;
	static uint8_t xsave[11008];
	static struct kvm_xcrs xcrs;
	static struct kvm_lapic_state lapic;
	static struct kvm_mp_state mp;
	static struct kvm_vcpu_events events;
	static struct kvm_debugregs dregs;
	static const uint32_t idx[] = { 0x10, 0x3b, 0x6e0, 0x174, 0xc0000080,
					0x4b564d00 };
	Mig__State__Msr msr[MIG_ARRAY_SIZE(idx)], *msrp[MIG_ARRAY_SIZE(idx)];
	Mig__State__Msr *many, **manyp;
	Mig__State__X86Vcpu vc = MIG__STATE__X86_VCPU__INIT;

	for (size_t i = 0; i < MIG_ARRAY_SIZE(idx); i++) {
		mig__state__msr__init(&msr[i]);
		msr[i].index = idx[i];
		msr[i].value = next();
		msrp[i] = &msr[i];
	}
	regs.rip = 0xfff0;
	regs.rflags = 2;
	xcrs.nr_xcrs = 1;
	xcrs.xcrs[0].value = 3;
	vc.version = MIG_X86_STATE_VERSION;
	ITEM(vc.regs, regs);
	ITEM(vc.sregs, sregs);
	ITEM(vc.fpu, fpu);
	ITEM(vc.mp_state, mp);
	ITEM(vc.events, events);
	state_put("vcpu_fpu", 1, &vc.base);
	vc.fpu.len = 0;
	vc.xsave.data = xsave;
	vc.xsave.len = sizeof(struct kvm_xsave);
	ITEM(vc.xcrs, xcrs);
	ITEM(vc.lapic, lapic);
	ITEM(vc.debugregs, dregs);
	vc.n_msrs = MIG_ARRAY_SIZE(idx);
	vc.msrs = msrp;
	vc.tsc_khz = 2999999;
	state_put("vcpu_xsave", 1, &vc.base);
	ITEM(vc.sregs2, sregs2);
	vc.xsave.len = sizeof(xsave);
	state_put("vcpu_xsave2", 3, &vc.base); /* op 3: TSC policy "host" */

	/* As many MSRs and as fast a TSC as a blob may have: one more, or
	 * one kHz more, is refused. */
	many = calloc(X86_MSRS_MAX, sizeof(*many));
	manyp = calloc(X86_MSRS_MAX, sizeof(*manyp));
	FUZZ_CHECK(many && manyp);
	for (uint32_t i = 0; i < X86_MSRS_MAX; i++) {
		mig__state__msr__init(&many[i]);
		many[i].index = 0xc0010000u + i;
		manyp[i] = &many[i];
	}
	vc.n_msrs = X86_MSRS_MAX;
	vc.msrs = manyp;
	vc.xsave.len = sizeof(struct kvm_xsave);
	vc.tsc_khz = UINT32_MAX;
	state_put("vcpu_limits", 1, &vc.base);
	free(manyp);
	free(many);
}

/* fuzz_protocol: the two well-behaved runs of tests/unit/test_protocol.c,
 * as [early] then [message index, connection + 3 if the destination sent
 * it] (the indexes of `known` in fuzz_protocol.c). */
static void protocol_seeds(void)
{
	static const uint8_t early[] = {
		1, 2, 0, 3, 3, 4, 0, 5, 0, 6, 0, 6, 1, 7, 1, 7, 0, 8, 3, 9, 0,
		10, 0, 11, 0, 5, 0, 6, 0, 7, 0, 12, 0, 6, 1, 7, 1, 12, 1, 13, 3,
		14, 0, 15, 3,
	};
	static const uint8_t late[] = {
		0, 2, 0, 3, 3, 5, 0, 6, 1, 7, 0, 7, 1, 12, 1, 8, 3, 9, 0, 5, 0,
		6, 0, 10, 0, 7, 0, 12, 0, 13, 3, 14, 0, 15, 3,
	};

	put("fuzz_protocol", "early", early, sizeof(early));
	put("fuzz_protocol", "late", late, sizeof(late));
}

/* Deltas the encoder made (op 0) and recipes of edits (op 1). */
static void delta_seeds(void)
{
	static uint8_t old[MIG_PAGE_SIZE], cur[MIG_PAGE_SIZE], txt[MIG_PAGE_SIZE];
	static uint8_t out[1 + 2 * MIG_PAGE_SIZE];
	static const uint8_t recipe[] = { 1, 0x00, 0x20, 0x10, 0x00, 8, 0xab,
					  0xf0, 0x0f, 64, 0x00, 0, 0, 1, 7 };
	long n;

	fill(old, 1);
	memcpy(cur, old, sizeof(cur));
	fill(txt, 2);
	memcpy(cur + 100, txt, 200); /* some text over part of it */
	cur[4095] ^= 1;
	out[0] = 0;
	n = mig__delta_encode(old, cur, out + 1, sizeof(out) - 1);
	FUZZ_CHECK(n > 0);
	put("fuzz_delta", "runs", out, (size_t)n + 1);
	fill(cur, 1);         /* another random page: one long run */
	n = mig__delta_encode(old, cur, out + 1, sizeof(out) - 1);
	FUZZ_CHECK(n > 0);
	put("fuzz_delta", "whole", out, (size_t)n + 1);
	put("fuzz_delta", "recipe", recipe, sizeof(recipe));
}

int main(int argc, char **argv)
{
	char path[4096];

	if (argc != 2) {
		fprintf(stderr, "usage: %s DIR\n", argv[0]);
		return 2;
	}
	outdir = argv[1];
	mkdir(outdir, 0777);
	snprintf(path, sizeof(path), "%s/fuzz_frame", outdir);
	mkdir(path, 0777);
	snprintf(path, sizeof(path), "%s/fuzz_codec", outdir);
	mkdir(path, 0777);
	snprintf(path, sizeof(path), "%s/fuzz_vmm", outdir);
	mkdir(path, 0777);
	snprintf(path, sizeof(path), "%s/fuzz_protocol", outdir);
	mkdir(path, 0777);
	snprintf(path, sizeof(path), "%s/fuzz_state", outdir);
	mkdir(path, 0777);
	snprintf(path, sizeof(path), "%s/fuzz_delta", outdir);
	mkdir(path, 0777);
	frame_seeds();
	codec_seeds();
	vmm_seeds();
	protocol_seeds();
	state_vm_seeds();
	state_vcpu_seeds();
	delta_seeds();
	return 0;
}
