/*
 * The page codec: round trips, OFF/ON/AUTO, the zstd window across batches,
 * and a decoder that trusts nothing. Every test seeds its own generator, so
 * each runs alone and reproduces.
 *
 * `test_codec --bench [MiB]` (default 128) measures encode and decode throughput instead
 * (a measurement, not a test: nothing is compared with a fixed number);
 * `test_codec PATTERN` runs only the tests whose names match.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zstd.h>

#include "mig_test.h"
#include "codec.h"

#define PG MIG_PAGE_SIZE
#define BATCH MIG_BATCH_MAX_PAGES
#define NREGIONS 2u
#define GUEST_PAGES 2048u /* per region */
#define GUARD 0xa5

/*
 * The destination guest: NREGIONS regions of GUEST_PAGES pages in one
 * allocation, each region between guard pages, so that a write past a page
 * (which ASan cannot see inside one allocation) shows as a changed guard.
 * `model` has the same layout and holds what the guest must end up as.
 */
static uint8_t *guest, *model;
static int sink_calls;

static size_t page_off(uint32_t region, uint64_t idx)
{
	return (1 + region * (GUEST_PAGES + 1) + idx) * PG;
}

static size_t mem_size(void)
{
	return (NREGIONS * (GUEST_PAGES + 1) + 1) * PG;
}

static uint8_t *sink(void *opaque, uint32_t region, uint64_t idx)
{
	uint8_t *base = opaque ? opaque : guest;
	sink_calls++;
	if (region >= NREGIONS || idx >= GUEST_PAGES)
		return NULL;
	return base + page_off(region, idx);
}

static uint8_t *gpage(uint32_t region, uint64_t idx)
{
	return guest + page_off(region, idx);
}

static uint8_t *mpage(uint32_t region, uint64_t idx)
{
	return model + page_off(region, idx);
}

static void guards_intact(void)
{
	for (uint32_t r = 0; r <= NREGIONS; r++) {
		const uint8_t *g = guest + r * (GUEST_PAGES + 1) * PG;
		for (size_t i = 0; i < PG; i++)
			assert_int_equal(g[i], GUARD);
	}
}

/* Guest and model alike: guards, pages 0xee (never a codec's output). */
static void reset_memory(void)
{
	memset(guest, 0xee, mem_size());
	for (uint32_t r = 0; r <= NREGIONS; r++)
		memset(guest + r * (GUEST_PAGES + 1) * PG, GUARD, PG);
	memcpy(model, guest, mem_size());
}

static int setup(void **state)
{
	(void)state;
	guest = aligned_alloc(PG, mem_size());
	model = aligned_alloc(PG, mem_size());
	if (!guest || !model)
		return -1;
	reset_memory();
	return 0;
}

static int per_test(void **state)
{
	(void)state;
	reset_memory();
	sink_calls = 0;
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	free(guest);
	free(model);
	return 0;
}

/* ---- seeded content -------------------------------------------------- */

static uint64_t rng;

static void seed(uint64_t s)
{
	rng = s * 0x9e3779b97f4a7c15ull + 1;
}

static uint64_t next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng * 0x2545f4914f6cdd1dull;
}

enum kind { K_ZERO, K_RANDOM, K_TEXT, K_SPARSE, K_LASTBYTE, K_NKINDS };

static const char *const kind_name[] = { "zero", "random", "text", "sparse",
					 "lastbyte" };

/* Words, spaces, newlines and numbers: about 3x with zstd -1, like the
 * test guest's text fill. */
static void fill_text(uint8_t *p)
{
	static const char *const words[] = {
		"the", "of", "and", "to", "in", "is", "page", "dirty", "round",
		"migration", "guest", "memory", "kvm", "vcpu", "zstd", "frame",
		"batch", "link", "rate", "source", "destination", "commit",
		"downtime", "copy", "pre", "stop", "live", "machine", "virtual",
		"state", "device", "timer", "clock", "error", "value", "return",
	};
	static size_t lens[MIG_ARRAY_SIZE(words)];
	size_t o = 0;

	if (!lens[0])
		for (size_t i = 0; i < MIG_ARRAY_SIZE(words); i++)
			lens[i] = strlen(words[i]);
	while (o < PG) {
		uint64_t r = next();
		char w[32];
		size_t n = 0;
		if ((r & 15) == 0) {
			for (unsigned v = (unsigned)(r >> 40) % 100000 + 1; v; v /= 10)
				w[n++] = (char)('0' + v % 10);
		} else {
			size_t i = (r >> 8) % MIG_ARRAY_SIZE(words);
			memcpy(w, words[i], lens[i]);
			n = lens[i];
		}
		w[n++] = (r >> 20) % 12 ? ' ' : '\n';
		size_t k = MIG_MIN(n, PG - o);
		memcpy(p + o, w, k);
		o += k;
	}
}

static void fill(uint8_t *p, enum kind k)
{
	memset(p, 0, PG);
	switch (k) {
	case K_ZERO:
		break;
	case K_RANDOM:
		for (size_t i = 0; i < PG; i += 8) {
			uint64_t v = next();
			memcpy(p + i, &v, 8);
		}
		break;
	case K_TEXT:
		fill_text(p);
		break;
	case K_SPARSE:
		for (int i = 0; i < 4; i++)
			p[next() % PG] = (uint8_t)(1 + next() % 255);
		break;
	case K_LASTBYTE:
		p[PG - 1] = 1;
		break;
	default:
		break;
	}
}

/* ---- one batch through encoder and decoder --------------------------- */

/*
 * Encode pages idx[0..n) of `region` as they are in the model, check the
 * frame (whole, PAGES, within MIG_CODEC_FRAME_MAX, the very bytes
 * mig__pages_pack() makes of it, counted in *st), and leave it in *b.
 */
static void encode(mig_enc *e, uint32_t region, const uint64_t *idx, size_t n,
		   mig_buf *b, mig_enc_stats *st)
{
	const uint8_t *data[BATCH];
	mig_enc_stats before = *st;
	mig_frame f;

	for (size_t i = 0; i < n; i++)
		data[i] = mpage(region, idx[i]);
	b->len = 0;
	assert_int_equal(mig__enc_batch(e, region, idx, data, n, b, st), 0);
	assert_true(b->len <= MIG_CODEC_FRAME_MAX(n));
	assert_int_equal(mig__frame_parse(b->data, b->len, &f), (long)b->len);
	assert_int_equal(f.type, MIG_FRAME_PAGES);
	assert_int_equal(st->pages - before.pages, n);
	assert_int_equal(st->raw_bytes - before.raw_bytes, n * PG);
	assert_int_equal(st->wire_bytes - before.wire_bytes, b->len);
	assert_int_equal(st->compressed_batches + st->raw_batches,
			 before.compressed_batches + before.raw_batches + 1);

	Mig__Wire__PageBatch *h;
	const uint8_t *pl;
	size_t pl_len, zeros = 0;
	mig_buf again = { 0 };
	assert_int_equal(mig__pages_unpack(f.body, f.len, &h, &pl, &pl_len), 0);
	assert_int_equal(h->region, region);
	assert_int_equal(h->n_pages, n);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(h->pages[i], idx[i]);
		int z = mig__page_is_zero(data[i]);
		zeros += (size_t)z;
		assert_int_equal(h->encoding[i],
				 z ? MIG__WIRE__PAGE_ENCODING__PAGE_ZERO
				   : MIG__WIRE__PAGE_ENCODING__PAGE_RAW);
	}
	assert_int_equal(st->zero_pages - before.zero_pages, zeros);
	assert_int_equal(h->payload_codec == MIG__WIRE__PAYLOAD_CODEC__PAYLOAD_ZSTD,
			 st->compressed_batches > before.compressed_batches);
	assert_int_equal(mig__pages_pack(h, pl, pl_len, &again), 0);
	assert_int_equal(again.len, b->len);
	assert_memory_equal(again.data, b->data, b->len);
	mig__buf_free(&again);
	mig__pages_free(h);
}

static long decode(mig_dec *d, const mig_buf *b, mig_error *err)
{
	mig_frame f;
	assert_int_equal(mig__frame_parse(b->data, b->len, &f), (long)b->len);
	memset(err, 0, sizeof(*err));
	return mig__dec_batch(d, f.body, f.len, sink, NULL, err);
}

/* Encode, decode, and check the guest equals the model everywhere. */
static void xfer(mig_enc *e, mig_dec *d, uint32_t region, const uint64_t *idx,
		 size_t n, mig_enc_stats *st)
{
	mig_buf b = { 0 };
	mig_error err;

	encode(e, region, idx, n, &b, st);
	long r = decode(d, &b, &err);
	if (r < 0)
		fail_msg("decode: %ld %s", r, err.msg);
	assert_int_equal(r, (long)n);
	mig__buf_free(&b);
}

static void guest_matches_model(void)
{
	assert_memory_equal(guest, model, mem_size());
}

static void seq_idx(uint64_t *idx, size_t n, uint64_t first)
{
	for (size_t i = 0; i < n; i++)
		idx[i] = first + i;
}

/* ---- tests ----------------------------------------------------------- */

static void test_is_zero(void **state)
{
	uint8_t *p = model + PG;
	(void)state;
	memset(p, 0, PG);
	assert_true(mig__page_is_zero(p));
	for (size_t at = 0; at < PG; at++) {
		p[at] = 1;
		assert_false(mig__page_is_zero(p));
		p[at] = 0x80;
		assert_false(mig__page_is_zero(p));
		p[at] = 0;
	}
	assert_true(mig__page_is_zero(p));
}

/* Every kind of page in every mode, alone in a batch and all mixed. */
static void test_roundtrip_kinds(void **state)
{
	static const mig_compress modes[] = { MIG_COMPRESS_OFF, MIG_COMPRESS_ON,
					      MIG_COMPRESS_AUTO };
	uint64_t idx[64];
	(void)state;
	seed(1);
	for (size_t m = 0; m < MIG_ARRAY_SIZE(modes); m++) {
		mig_enc *e;
		mig_dec *d;
		mig_enc_stats st = { 0 };
		assert_int_equal(mig__enc_create(&e, modes[m], 1), 0);
		assert_int_equal(mig__dec_create(&d), 0);
		for (int k = 0; k < K_NKINDS; k++) {
			for (size_t i = 0; i < 64; i++)
				fill(mpage(0, i), (enum kind)k);
			seq_idx(idx, 64, 0);
			xfer(e, d, 0, idx, 64, &st);
			guest_matches_model();
		}
		/* All kinds in one batch, in region 1, in a random order. */
		for (size_t i = 0; i < 64; i++) {
			idx[i] = next() % GUEST_PAGES;
			fill(mpage(1, idx[i]), (enum kind)(next() % K_NKINDS));
		}
		xfer(e, d, 1, idx, 64, &st);
		guest_matches_model();
		assert_int_equal(st.pages, 64 * (K_NKINDS + 1));
		if (modes[m] == MIG_COMPRESS_OFF)
			assert_int_equal(st.compressed_batches, 0);
		if (modes[m] == MIG_COMPRESS_ON) /* the zero batch has no payload */
			assert_int_equal(st.raw_batches, 1);
		mig__enc_destroy(e);
		mig__dec_destroy(d);
	}
	guards_intact();
}

/* Zero pages cost a marker, not a page: 64 of them in under 200 bytes. */
static void test_zero_pages_small(void **state)
{
	mig_enc *e;
	mig_dec *d;
	mig_enc_stats st = { 0 };
	uint64_t idx[BATCH];
	(void)state;
	for (size_t i = 0; i < BATCH; i++)
		memset(mpage(0, i), 0, PG);
	seq_idx(idx, BATCH, 0);
	assert_int_equal(mig__enc_create(&e, MIG_COMPRESS_ON, 1), 0);
	assert_int_equal(mig__dec_create(&d), 0);
	xfer(e, d, 0, idx, 64, &st);
	assert_int_equal(st.zero_pages, 64);
	assert_true(st.wire_bytes < 200);
	xfer(e, d, 0, idx, BATCH, &st);
	assert_true(st.wire_bytes < 200 + 3 * BATCH); /* ~3 bytes a page */
	guest_matches_model();
	mig__enc_destroy(e);
	mig__dec_destroy(d);
}

/*
 * Many batches of random sizes, regions, pages and contents on one stream
 * per mode and level, with pages sent again after they changed: the guest
 * ends up equal to the model.
 */
static void test_roundtrip_many(void **state)
{
	static const struct { mig_compress mode; int level; int batches; } runs[] = {
		{ MIG_COMPRESS_OFF, 1, 200 }, { MIG_COMPRESS_ON, 1, 200 },
		{ MIG_COMPRESS_ON, 3, 100 },  { MIG_COMPRESS_AUTO, 1, 200 },
		{ MIG_COMPRESS_ON, 19, 6 },
	};
	uint64_t idx[BATCH];
	(void)state;
	seed(2);
	for (size_t r = 0; r < MIG_ARRAY_SIZE(runs); r++) {
		mig_enc *e;
		mig_dec *d;
		mig_enc_stats st = { 0 };
		reset_memory();
		assert_int_equal(mig__enc_create(&e, runs[r].mode, runs[r].level), 0);
		assert_int_equal(mig__dec_create(&d), 0);
		for (int b = 0; b < runs[r].batches; b++) {
			uint32_t region = (uint32_t)(next() % NREGIONS);
			size_t n = next() % 4 ? 1 + next() % 64 : 1 + next() % BATCH;
			enum kind k = (enum kind)(next() % K_NKINDS);
			uint64_t first = next() % (GUEST_PAGES - n + 1);
			int scattered = next() % 2;
			if (runs[r].mode == MIG_COMPRESS_AUTO)
				mig__enc_set_link_rate(e, (double)(next() % 3) * 1e8);
			for (size_t i = 0; i < n; i++) {
				idx[i] = scattered ? next() % GUEST_PAGES : first + i;
				fill(mpage(region, idx[i]),
				     next() % 4 ? k : (enum kind)(next() % K_NKINDS));
			}
			xfer(e, d, region, idx, n, &st);
		}
		guest_matches_model();
		guards_intact();
		mig__enc_destroy(e);
		mig__dec_destroy(d);
	}
}

/*
 * The zstd window spans the batches of a connection: pages sent again
 * shrink to almost nothing. Hence the ordering rule: a later batch cannot
 * be decoded without the earlier ones.
 */
static void test_window_spans_batches(void **state)
{
	mig_enc *e;
	mig_dec *d;
	mig_enc_stats st = { 0 };
	mig_buf first = { 0 }, second = { 0 };
	mig_error err;
	uint64_t idx[64];
	(void)state;
	seed(3);
	for (size_t i = 0; i < 64; i++)
		fill(mpage(0, i), K_RANDOM); /* 256 KiB, within level 1's window */
	seq_idx(idx, 64, 0);
	assert_int_equal(mig__enc_create(&e, MIG_COMPRESS_ON, 1), 0);
	encode(e, 0, idx, 64, &first, &st);
	encode(e, 0, idx, 64, &second, &st);
	assert_true(first.len > 64 * PG);
	assert_true(second.len * 20 < first.len);

	assert_int_equal(mig__dec_create(&d), 0);
	assert_int_equal(decode(d, &second, &err), -EBADMSG);
	mig__dec_destroy(d);

	assert_int_equal(mig__dec_create(&d), 0);
	assert_int_equal(decode(d, &first, &err), 64);
	memset(guest + page_off(0, 0), 0xee, 64 * PG);
	assert_int_equal(decode(d, &second, &err), 64);
	guest_matches_model();
	mig__dec_destroy(d);
	mig__enc_destroy(e);
	mig__buf_free(&first);
	mig__buf_free(&second);
}

/* Raw batches between compressed ones leave the zstd stream alone. */
static void test_raw_between_zstd(void **state)
{
	mig_enc *on, *off;
	mig_dec *d;
	mig_enc_stats st = { 0 };
	uint64_t idx[32];
	(void)state;
	seed(4);
	assert_int_equal(mig__enc_create(&on, MIG_COMPRESS_ON, 1), 0);
	assert_int_equal(mig__enc_create(&off, MIG_COMPRESS_OFF, 1), 0);
	assert_int_equal(mig__dec_create(&d), 0);
	for (int b = 0; b < 30; b++) {
		seq_idx(idx, 32, (uint64_t)(b % 8) * 32);
		for (size_t i = 0; i < 32; i++)
			fill(mpage(0, idx[i]), b % 5 ? K_TEXT : K_RANDOM);
		xfer(b % 3 ? on : off, d, 0, idx, 32, &st);
	}
	assert_true(st.compressed_batches > 0 && st.raw_batches > 0);
	guest_matches_model();
	mig__enc_destroy(on);
	mig__enc_destroy(off);
	mig__dec_destroy(d);
}

/*
 * A batch that does not compress is sent compressed all the same (see
 * compress_pages()): it costs zstd's block headers, 3 bytes per 128 KiB,
 * and the frame header once.
 */
static void test_incompressible_costs_little(void **state)
{
	mig_enc *e;
	mig_dec *d;
	mig_enc_stats st = { 0 }, raw = { 0 };
	mig_enc *off;
	uint64_t idx[BATCH];
	(void)state;
	seed(5);
	for (size_t i = 0; i < BATCH; i++)
		fill(mpage(0, i), K_RANDOM);
	seq_idx(idx, BATCH, 0);
	assert_int_equal(mig__enc_create(&e, MIG_COMPRESS_ON, 1), 0);
	assert_int_equal(mig__enc_create(&off, MIG_COMPRESS_OFF, 1), 0);
	assert_int_equal(mig__dec_create(&d), 0);
	for (int b = 0; b < 3; b++) {
		xfer(e, d, 0, idx, BATCH, &st);
		xfer(off, d, 0, idx, BATCH, &raw);
	}
	assert_int_equal(st.compressed_batches, 3);
	printf("# 3 x 4 MiB random: zstd %llu bytes, raw %llu bytes\n",
	       (unsigned long long)st.wire_bytes, (unsigned long long)raw.wire_bytes);
	assert_true(st.wire_bytes <= raw.wire_bytes + 3 * (3 * (BATCH * PG / 131072 + 1)) + 32);
	guest_matches_model();
	mig__enc_destroy(e);
	mig__enc_destroy(off);
	mig__dec_destroy(d);
}

/* Run `batches` batches of 64 pages of kind k through an AUTO encoder. */
static void auto_run(mig_enc *e, mig_dec *d, enum kind k, int batches,
		     mig_enc_stats *st)
{
	uint64_t idx[64];
	for (int b = 0; b < batches; b++) {
		seq_idx(idx, 64, (uint64_t)(b % 16) * 64);
		for (size_t i = 0; i < 64; i++)
			fill(mpage(0, idx[i]), k);
		xfer(e, d, 0, idx, 64, st);
	}
}

/* AUTO with an unknown link compresses (that is how it learns). */
static void test_auto_unknown_link(void **state)
{
	mig_enc *e;
	mig_dec *d;
	mig_enc_stats st = { 0 };
	(void)state;
	seed(6);
	assert_int_equal(mig__enc_create(&e, MIG_COMPRESS_AUTO, 1), 0);
	assert_int_equal(mig__dec_create(&d), 0);
	auto_run(e, d, K_RANDOM, 10, &st);
	assert_int_equal(st.raw_batches, 0);
	mig__enc_destroy(e);
	mig__dec_destroy(d);
}

/* Incompressible pages on a fast link: AUTO stops compressing, but for a
 * probe now and then. */
static void test_auto_incompressible_fast_link(void **state)
{
	mig_enc *e;
	mig_dec *d;
	mig_enc_stats st = { 0 };
	(void)state;
	seed(7);
	assert_int_equal(mig__enc_create(&e, MIG_COMPRESS_AUTO, 1), 0);
	assert_int_equal(mig__dec_create(&d), 0);
	mig__enc_set_link_rate(e, 10e9);
	auto_run(e, d, K_RANDOM, 200, &st);
	assert_true(st.compressed_batches >= 2);  /* the first, and probes */
	assert_true(st.compressed_batches <= 2 + 200 / 64);
	guest_matches_model();
	mig__enc_destroy(e);
	mig__dec_destroy(d);
}

/* Text on a slow link: AUTO compresses every batch and saves half or more. */
static void test_auto_text_slow_link(void **state)
{
	mig_enc *e;
	mig_dec *d;
	mig_enc_stats st = { 0 };
	(void)state;
	seed(8);
	assert_int_equal(mig__enc_create(&e, MIG_COMPRESS_AUTO, 1), 0);
	assert_int_equal(mig__dec_create(&d), 0);
	mig__enc_set_link_rate(e, 10e6);
	auto_run(e, d, K_TEXT, 100, &st);
	assert_int_equal(st.raw_batches, 0);
	assert_true(st.wire_bytes * 2 < st.raw_bytes);
	guest_matches_model();
	mig__enc_destroy(e);
	mig__dec_destroy(d);
}

/*
 * AUTO follows changes: text on a link far faster than zstd is sent raw;
 * when the link slows down, compression resumes at once. Random pages on a
 * slow link are sent raw; when the content turns to text, a probe notices
 * and compression resumes.
 */
static void test_auto_follows_changes(void **state)
{
	mig_enc *e;
	mig_dec *d;
	mig_enc_stats a = { 0 }, b = { 0 }, c = { 0 }, x = { 0 };
	(void)state;
	seed(9);
	assert_int_equal(mig__enc_create(&e, MIG_COMPRESS_AUTO, 1), 0);
	assert_int_equal(mig__dec_create(&d), 0);
	mig__enc_set_link_rate(e, 1e12);
	auto_run(e, d, K_TEXT, 130, &a);
	assert_true(a.compressed_batches <= 2 + 130 / 64);
	mig__enc_set_link_rate(e, 1e6);
	auto_run(e, d, K_TEXT, 20, &b);
	assert_int_equal(b.raw_batches, 0);

	/* The ratio's average takes a few dozen batches to fall from text's
	 * ~3 to where compressing random pages stops paying even on a slow
	 * link; from then on only probes compress. */
	auto_run(e, d, K_RANDOM, 100, &c);
	memset(&c, 0, sizeof(c));
	auto_run(e, d, K_RANDOM, 128, &c);
	assert_true(c.compressed_batches <= 2);
	auto_run(e, d, K_TEXT, 64, &x);       /* a probe comes within 64 */
	assert_true(x.compressed_batches >= 32);
	guest_matches_model();
	mig__enc_destroy(e);
	mig__dec_destroy(d);
}

/* A zstd batch of n text pages 0..n-1 of region 0, on a fresh stream. */
static void zstd_frame(mig_buf *b, size_t n)
{
	mig_enc *e;
	mig_enc_stats st = { 0 };
	uint64_t idx[BATCH];
	seq_idx(idx, n, 0);
	for (size_t i = 0; i < n; i++)
		fill(mpage(0, i), K_TEXT);
	assert_int_equal(mig__enc_create(&e, MIG_COMPRESS_ON, 1), 0);
	encode(e, 0, idx, n, b, &st);
	assert_int_equal(st.compressed_batches, 1);
	mig__enc_destroy(e);
}

static long decode_fresh(const uint8_t *body, size_t len, mig_error *err)
{
	mig_dec *d;
	long r;
	assert_int_equal(mig__dec_create(&d), 0);
	memset(err, 0, sizeof(*err));
	r = mig__dec_batch(d, body, len, sink, NULL, err);
	mig__dec_destroy(d);
	if (r < 0) {
		assert_int_equal(err->code, (int)r);
		assert_true(strlen(err->msg) > 0);
	}
	return r;
}

/*
 * Re-make the frame in b with a changed header (on a copy whose arrays have
 * room for one more page) and, if given, another payload.
 */
static void rebatch(const mig_buf *b, mig_buf *out,
		    void (*change)(Mig__Wire__PageBatch *h), const uint8_t *payload,
		    size_t payload_len)
{
	Mig__Wire__PageBatch *h, c;
	uint64_t pages[BATCH + 1];
	uint32_t enc[BATCH + 1];
	const uint8_t *pl;
	size_t pl_len;
	mig_frame f;
	assert_true(mig__frame_parse(b->data, b->len, &f) > 0);
	assert_int_equal(mig__pages_unpack(f.body, f.len, &h, &pl, &pl_len), 0);
	c = *h;
	memcpy(pages, h->pages, h->n_pages * sizeof(*pages));
	memcpy(enc, h->encoding, h->n_encoding * sizeof(*enc));
	c.pages = pages;
	c.encoding = enc;
	change(&c);
	out->len = 0;
	assert_int_equal(mig__pages_pack(&c, payload ? payload : pl,
					 payload ? payload_len : pl_len, out), 0);
	mig__pages_free(h);
}

static long decode_buf_fresh(const mig_buf *b, mig_error *err)
{
	mig_frame f;
	assert_true(mig__frame_parse(b->data, b->len, &f) > 0);
	return decode_fresh(f.body, f.len, err);
}

/* Every truncation of a compressed or raw payload is refused. */
static void test_dec_truncated(void **state)
{
	mig_buf b = { 0 };
	mig_frame f;
	mig_error err;
	(void)state;
	seed(10);
	zstd_frame(&b, 8);
	assert_true(mig__frame_parse(b.data, b.len, &f) > 0);
	assert_int_equal(decode_fresh(f.body, f.len, &err), 8);
	guest_matches_model();
	Mig__Wire__PageBatch *h;
	const uint8_t *pl;
	size_t pl_len;
	assert_int_equal(mig__pages_unpack(f.body, f.len, &h, &pl, &pl_len), 0);
	mig__pages_free(h);
	/* Every cut near either end of the payload, and some between. */
	for (size_t cut = 1; cut <= f.len; cut += cut < 64 || cut + 64 > pl_len ? 1 : 7) {
		/* A copy of exactly the remaining length: ASan sees overreads. */
		uint8_t *body = malloc(f.len - cut + 1);
		memcpy(body, f.body, f.len - cut);
		assert_int_equal(decode_fresh(body, f.len - cut, &err), -EBADMSG);
		if (cut <= pl_len)
			assert_non_null(strstr(err.msg, "ends before"));
		free(body);
	}

	/* Raw payloads are checked against their declared length up front. */
	mig_enc *e;
	mig_enc_stats st = { 0 };
	uint64_t idx[4] = { 0, 1, 2, 3 };
	assert_int_equal(mig__enc_create(&e, MIG_COMPRESS_OFF, 1), 0);
	encode(e, 0, idx, 4, &b, &st);
	assert_true(mig__frame_parse(b.data, b.len, &f) > 0);
	for (size_t cut = 1; cut < f.len; cut += 97)
		assert_int_equal(decode_fresh(f.body, f.len - cut, &err), -EBADMSG);
	mig__enc_destroy(e);
	guards_intact();
	mig__buf_free(&b);
}

static void one_page_fewer(Mig__Wire__PageBatch *h)
{
	h->n_pages = h->n_encoding = h->n_pages - 1;
	h->payload_raw_len -= PG;
}

static void one_page_more(Mig__Wire__PageBatch *h)
{
	h->pages[h->n_pages] = h->n_pages;
	h->encoding[h->n_pages] = MIG__WIRE__PAGE_ENCODING__PAGE_RAW;
	h->n_pages = h->n_encoding = h->n_pages + 1;
	h->payload_raw_len += PG;
}

/* A payload that decodes to more or to fewer bytes than declared. */
static void test_dec_wrong_length(void **state)
{
	mig_buf b = { 0 }, lie = { 0 };
	mig_error err;
	(void)state;
	seed(11);
	zstd_frame(&b, 8);
	rebatch(&b, &lie, one_page_fewer, NULL, 0);
	assert_int_equal(decode_buf_fresh(&lie, &err), -EBADMSG);
	assert_non_null(strstr(err.msg, "longer"));
	rebatch(&b, &lie, one_page_more, NULL, 0);
	assert_int_equal(decode_buf_fresh(&lie, &err), -EBADMSG);
	assert_non_null(strstr(err.msg, "ends before"));
	guards_intact();
	mig__buf_free(&b);
	mig__buf_free(&lie);
}

static void one_page(Mig__Wire__PageBatch *h)
{
	h->n_pages = h->n_encoding = 1;
	h->pages[0] = GUEST_PAGES - 1; /* last page before a guard */
	h->payload_raw_len = PG;
}

/*
 * A small payload that decompresses to 64 MiB, declared as one page: the
 * decoder writes that page, refuses the batch, and touches nothing else.
 */
static void test_dec_bomb(void **state)
{
	mig_buf b = { 0 }, bomb = { 0 };
	mig_error err;
	ZSTD_CCtx *cc = ZSTD_createCCtx();
	uint8_t *zeros = calloc(1, 1 << 20), *z = malloc(1 << 20);
	ZSTD_outBuffer ob = { z, 1 << 20, 0 };
	(void)state;
	seed(12);
	assert_non_null(cc);
	for (int i = 0; i < 64; i++) {
		ZSTD_inBuffer ib = { zeros, 1 << 20, 0 };
		size_t rem;
		do {
			rem = ZSTD_compressStream2(cc, &ob, &ib,
						   i == 63 ? ZSTD_e_flush : ZSTD_e_continue);
			assert_false(ZSTD_isError(rem));
		} while (ib.pos < ib.size || (i == 63 && rem));
	}
	assert_true(ob.pos < 64 * 1024);
	zstd_frame(&b, 1);
	rebatch(&b, &bomb, one_page, z, ob.pos);
	assert_int_equal(decode_buf_fresh(&bomb, &err), -EBADMSG);
	assert_non_null(strstr(err.msg, "longer"));
	assert_true(mig__page_is_zero(gpage(0, GUEST_PAGES - 1)));
	guards_intact();
	ZSTD_freeCCtx(cc);
	free(zeros);
	free(z);
	mig__buf_free(&b);
	mig__buf_free(&bomb);
}

/* A zstd stream asking for a 128 MiB window is refused, not obeyed. */
static void test_dec_window_too_large(void **state)
{
	mig_buf b = { 0 }, big = { 0 };
	mig_error err;
	ZSTD_CCtx *cc = ZSTD_createCCtx();
	uint8_t z[8192];
	ZSTD_outBuffer ob = { z, sizeof(z), 0 };
	ZSTD_inBuffer ib;
	(void)state;
	seed(13);
	zstd_frame(&b, 1);
	ib = (ZSTD_inBuffer){ mpage(0, 0), PG, 0 };
	assert_false(ZSTD_isError(ZSTD_CCtx_setParameter(cc, ZSTD_c_windowLog, 27)));
	size_t rem;
	do {
		rem = ZSTD_compressStream2(cc, &ob, &ib, ZSTD_e_flush);
		assert_false(ZSTD_isError(rem));
	} while (rem);
	rebatch(&b, &big, one_page, z, ob.pos);
	assert_int_equal(decode_buf_fresh(&big, &err), -EBADMSG);
	assert_non_null(strstr(err.msg, "zstd"));
	ZSTD_freeCCtx(cc);
	mig__buf_free(&b);
	mig__buf_free(&big);
}

static void bad_region(Mig__Wire__PageBatch *h) { h->region = NREGIONS; }
static void bad_last_page(Mig__Wire__PageBatch *h)
{
	h->pages[h->n_pages - 1] = GUEST_PAGES;
}
static void huge_page(Mig__Wire__PageBatch *h) { h->pages[0] = UINT64_MAX; }

/* A page outside guest memory is refused before any page is written. */
static void test_dec_out_of_range(void **state)
{
	static void (*const lies[])(Mig__Wire__PageBatch *) = {
		bad_region, bad_last_page, huge_page,
	};
	static const char *const says[] = {
		"page 0 of region 2 ", "page 2048 of region 0 ",
		"page 18446744073709551615 of region 0 ",
	};
	mig_buf b = { 0 }, lie = { 0 };
	mig_error err;
	(void)state;
	seed(14);
	for (int raw = 0; raw < 2; raw++) {
		mig_enc *e;
		mig_enc_stats st = { 0 };
		uint64_t idx[8];
		seq_idx(idx, 8, 0);
		for (size_t i = 0; i < 8; i++)
			fill(mpage(0, i), i % 2 ? K_TEXT : K_ZERO);
		assert_int_equal(mig__enc_create(&e, raw ? MIG_COMPRESS_OFF
							 : MIG_COMPRESS_ON, 1), 0);
		encode(e, 0, idx, 8, &b, &st);
		mig__enc_destroy(e);
		for (size_t l = 0; l < MIG_ARRAY_SIZE(lies); l++) {
			memset(guest + page_off(0, 0), 0xee, 8 * PG);
			rebatch(&b, &lie, lies[l], NULL, 0);
			assert_int_equal(decode_buf_fresh(&lie, &err), -ERANGE);
			assert_non_null(strstr(err.msg, says[l]));
			for (size_t i = 0; i < 8; i++)  /* nothing written */
				assert_int_equal(gpage(0, i)[0], 0xee);
		}
	}
	guards_intact();
	mig__buf_free(&b);
	mig__buf_free(&lie);
}

static void first_is_delta(Mig__Wire__PageBatch *h)
{
	h->encoding[0] = MIG__WIRE__PAGE_ENCODING__PAGE_DELTA;
}

/* PAGE_DELTA is not spoken here: refused, not guessed at. */
static void test_dec_delta_refused(void **state)
{
	mig_buf b = { 0 }, lie = { 0 };
	mig_error err;
	(void)state;
	seed(15);
	zstd_frame(&b, 2);
	rebatch(&b, &lie, first_is_delta, NULL, 0);
	assert_int_equal(decode_buf_fresh(&lie, &err), -EBADMSG);
	assert_non_null(strstr(err.msg, "delta"));
	mig__buf_free(&b);
	mig__buf_free(&lie);
}

/*
 * Random bytes, and valid frames with bytes flipped, cut or spliced, never
 * crash the decoder nor write outside guest pages; a decoder after an
 * error refuses the rest.
 */
static void test_dec_garbage(void **state)
{
	uint8_t junk[9000];
	mig_error err;
	mig_buf b = { 0 };
	mig_frame f;
	(void)state;
	seed(16);
	for (int i = 0; i < 3000; i++) {
		size_t n = next() % sizeof(junk);
		for (size_t j = 0; j < n; j++)
			junk[j] = (uint8_t)next();
		assert_true(decode_fresh(junk, n, &err) < 0);
	}
	zstd_frame(&b, 4);
	assert_true(mig__frame_parse(b.data, b.len, &f) > 0);
	uint8_t *body = malloc(f.len + 64);
	for (int i = 0; i < 3000; i++) {
		size_t len = f.len;
		memcpy(body, f.body, f.len);
		switch (next() % 4) {
		case 0: /* flip a byte of the payload */
			body[f.len - 1 - next() % 256] ^= (uint8_t)(1 + next() % 255);
			break;
		case 1: /* flip a byte anywhere */
			body[next() % f.len] ^= (uint8_t)(1 + next() % 255);
			break;
		case 2: /* cut */
			len = next() % f.len;
			break;
		default: /* append junk */
			for (size_t j = 0; j < 64; j++)
				body[f.len + j] = (uint8_t)next();
			len = f.len + 1 + next() % 64;
			break;
		}
		long r = decode_fresh(body, len, &err);
		assert_true(r == 4 || r < 0); /* a flip may land in a literal */
	}
	free(body);
	guards_intact();
	mig__buf_free(&b);
}

static void test_dec_broken_stays_broken(void **state)
{
	mig_dec *d;
	mig_error err = { 0 };
	uint8_t junk[4] = { 1, 2, 3, 4 };
	mig_buf b = { 0 };
	mig_frame f;
	(void)state;
	seed(17);
	zstd_frame(&b, 2);
	assert_true(mig__frame_parse(b.data, b.len, &f) > 0);
	assert_int_equal(mig__dec_create(&d), 0);
	assert_int_equal(mig__dec_batch(d, junk, sizeof(junk), sink, NULL, &err),
			 -EBADMSG);
	sink_calls = 0;
	assert_int_equal(mig__dec_batch(d, f.body, f.len, sink, NULL, &err), -EBADMSG);
	assert_non_null(strstr(err.msg, "broken"));
	assert_int_equal(sink_calls, 0);
	mig__dec_destroy(d);
	mig__buf_free(&b);
}

static void test_enc_args(void **state)
{
	mig_enc *e;
	mig_enc_stats st = { 0 };
	mig_buf b = { 0 };
	uint64_t idx[1] = { 0 };
	const uint8_t *data[1];
	(void)state;
	data[0] = mpage(0, 0);
	memset(mpage(0, 0), 7, PG);
	assert_int_equal(mig__enc_create(&e, (mig_compress)9, 1), -EINVAL);
	assert_null(e);
	assert_int_equal(mig__enc_create(&e, MIG_COMPRESS_ON, 0), -EINVAL);
	assert_int_equal(mig__enc_create(&e, MIG_COMPRESS_ON, MIG_ZSTD_LEVEL_MAX + 1),
			 -EINVAL);
	assert_int_equal(mig__enc_create(&e, MIG_COMPRESS_OFF, 99), -EINVAL);
	assert_int_equal(mig__enc_create(&e, MIG_COMPRESS_ON, 1), 0);
	assert_int_equal(mig__enc_batch(e, 0, idx, data, 0, &b, &st), -EINVAL);
	assert_int_equal(mig__enc_batch(e, 0, idx, data, BATCH + 1, &b, &st), -EINVAL);
	assert_int_equal(mig__enc_batch(e, 0, NULL, data, 1, &b, &st), -EINVAL);
	assert_int_equal(b.len, 0);
	assert_int_equal(mig__enc_batch(e, 0, idx, data, 1, &b, NULL), 0);
	assert_true(b.len > 0);
	mig__enc_set_link_rate(e, -5);
	mig__enc_destroy(e);
	mig__enc_destroy(NULL);
	mig__dec_destroy(NULL);
	mig__buf_free(&b);
}

/* ---- bench ----------------------------------------------------------- */

#define CHECK(c)                                                           \
	do {                                                               \
		if (!(c)) {                                                \
			fprintf(stderr, "bench: %s:%d: %s\n", __FILE__,     \
				__LINE__, #c);                             \
			abort();                                           \
		}                                                          \
	} while (0)

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint8_t *bench_dst;
static uint8_t *bench_sink(void *opaque, uint32_t region, uint64_t idx)
{
	(void)opaque;
	(void)region;
	return bench_dst + idx * PG;
}

/*
 * Encode `mib` MiB of pages of each kind in batches of 1024 (what the
 * engine sends), from memory larger than the caches, then decode them:
 * best of 3 runs, in MiB/s of guest memory.
 */
static int bench(size_t mib)
{
	static const struct { const char *name; mig_compress mode; int level; } cfg[] = {
		{ "off", MIG_COMPRESS_OFF, 1 },
		{ "zstd-1", MIG_COMPRESS_ON, 1 },
		{ "zstd-3", MIG_COMPRESS_ON, 3 },
	};
	size_t npages = mib * 256, nb = npages / BATCH;
	uint8_t *mem = aligned_alloc(PG, npages * PG);
	mig_buf *frames = calloc(nb, sizeof(*frames));
	const uint8_t **data = malloc(BATCH * sizeof(*data));
	uint64_t idx[BATCH];

	bench_dst = aligned_alloc(PG, npages * PG);
	if (!mem || !frames || !data || !bench_dst || !nb)
		return 1;
	memset(bench_dst, 0, npages * PG); /* no page faults in the timing */
	printf("%-8s %-7s %10s %10s %7s\n", "pages", "codec", "enc MiB/s",
	       "dec MiB/s", "ratio");
	seed(42);
	for (int k = K_ZERO; k <= K_TEXT; k++) {
		for (size_t p = 0; p < npages; p++)
			fill(mem + p * PG, (enum kind)k);
		double best = 1e9, t;
		for (int rep = 0; rep < 3; rep++) {
			size_t z = 0;
			t = now_s();
			for (size_t p = 0; p < npages; p++)
				z += (size_t)mig__page_is_zero(mem + p * PG);
			t = now_s() - t;
			best = MIG_MIN(best, t);
			CHECK(z == (k == K_ZERO ? npages : 0));
		}
		printf("%-8s %-7s %10.0f %10s %7s\n", kind_name[k], "is_zero",
		       (double)mib / best, "-", "-");
		for (size_t c = 0; c < MIG_ARRAY_SIZE(cfg); c++) {
			double enc = 1e9, dec = 1e9;
			uint64_t wire = 0;
			for (int rep = 0; rep < 3; rep++) {
				mig_enc *e;
				mig_dec *d;
				mig_enc_stats st = { 0 };
				mig_error err;
				CHECK(mig__enc_create(&e, cfg[c].mode, cfg[c].level) == 0);
				CHECK(mig__dec_create(&d) == 0);
				for (size_t b = 0; b < nb; b++) /* allocate outside timing */
					CHECK(mig__buf_reserve(&frames[b],
						MIG_CODEC_FRAME_MAX(BATCH) + ZSTD_compressBound(BATCH * PG)) == 0);
				t = now_s();
				for (size_t b = 0; b < nb; b++) {
					for (size_t i = 0; i < BATCH; i++) {
						idx[i] = b * BATCH + i;
						data[i] = mem + idx[i] * PG;
					}
					frames[b].len = 0;
					CHECK(mig__enc_batch(e, 0, idx, data, BATCH,
							     &frames[b], &st) == 0);
				}
				enc = MIG_MIN(enc, now_s() - t);
				wire = st.wire_bytes;
				t = now_s();
				for (size_t b = 0; b < nb; b++) {
					mig_frame f;
					CHECK(mig__frame_parse(frames[b].data, frames[b].len, &f) > 0);
					CHECK(mig__dec_batch(d, f.body, f.len, bench_sink, NULL,
							     &err) == (long)BATCH);
				}
				dec = MIG_MIN(dec, now_s() - t);
				mig__enc_destroy(e);
				mig__dec_destroy(d);
			}
			CHECK(!memcmp(mem, bench_dst, nb * BATCH * PG));
			printf("%-8s %-7s %10.0f %10.0f %7.2f\n", kind_name[k], cfg[c].name,
			       (double)mib / enc, (double)mib / dec,
			       (double)(nb * BATCH * PG) / (double)wire);
		}
	}
	for (size_t b = 0; b < nb; b++)
		mig__buf_free(&frames[b]);
	free(frames);
	free(data);
	free(mem);
	free(bench_dst);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc > 1 && !strcmp(argv[1], "--bench"))
		return bench(argc > 2 ? (size_t)atoi(argv[2]) : 128);
	if (argc > 1) /* `test_codec test_dec_*`: only those */
		cmocka_set_test_filter(argv[1]);
#define T(t) cmocka_unit_test_setup(t, per_test)
	const struct CMUnitTest tests[] = {
		T(test_is_zero),
		T(test_roundtrip_kinds),
		T(test_zero_pages_small),
		T(test_roundtrip_many),
		T(test_window_spans_batches),
		T(test_raw_between_zstd),
		T(test_incompressible_costs_little),
		T(test_auto_unknown_link),
		T(test_auto_incompressible_fast_link),
		T(test_auto_text_slow_link),
		T(test_auto_follows_changes),
		T(test_dec_truncated),
		T(test_dec_wrong_length),
		T(test_dec_bomb),
		T(test_dec_window_too_large),
		T(test_dec_out_of_range),
		T(test_dec_delta_refused),
		T(test_dec_garbage),
		T(test_dec_broken_stays_broken),
		T(test_enc_args),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
