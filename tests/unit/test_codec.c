/* The page codec: round trips, modes, and a decoder that trusts nothing. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "mig_test.h"
#include "codec.h"

#define NPAGES 64

static uint8_t src[NPAGES][MIG_PAGE_SIZE];
static uint8_t dst[NPAGES][MIG_PAGE_SIZE];

static uint64_t rng = 0x1234567;
static uint64_t next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

/* kind 0 zero, 1 random, 2 text-like */
static void fill(uint8_t *p, int kind)
{
	static const char *words[] = { "migration ", "page ", "dirty ", "round ",
				       "the ", "of ", "kvm ", "\n" };
	memset(p, 0, MIG_PAGE_SIZE);
	if (kind == 1) {
		for (size_t i = 0; i < MIG_PAGE_SIZE; i += 8) {
			uint64_t v = next();
			memcpy(p + i, &v, 8);
		}
	} else if (kind == 2) {
		size_t o = 0;
		while (o + 16 < MIG_PAGE_SIZE) {
			const char *w = words[next() % 8];
			memcpy(p + o, w, strlen(w));
			o += strlen(w);
		}
	}
}

static uint8_t *sink(void *opaque, uint32_t region, uint64_t idx)
{
	(void)opaque;
	if (region != 0 || idx >= NPAGES)
		return NULL;
	return dst[idx];
}

static long roundtrip(mig_enc *e, mig_dec *d, size_t n, mig_enc_stats *st)
{
	uint64_t idx[NPAGES];
	const uint8_t *data[NPAGES];
	mig_buf b = { 0 };
	mig_frame f;
	mig_error err = { 0 };
	long r;

	for (size_t i = 0; i < n; i++) {
		idx[i] = i;
		data[i] = src[i];
	}
	assert_int_equal(mig__enc_batch(e, 0, idx, data, n, &b, st), 0);
	assert_int_equal(mig__frame_parse(b.data, b.len, &f), (long)b.len);
	memset(dst, 0xee, sizeof(dst));
	r = mig__dec_batch(d, f.body, f.len, sink, NULL, &err);
	mig__buf_free(&b);
	return r;
}

static void check_mode(mig_compress mode)
{
	mig_enc *e;
	mig_dec *d;
	mig_enc_stats st = { 0 };

	assert_int_equal(mig__enc_create(&e, mode, 1), 0);
	assert_int_equal(mig__dec_create(&d), 0);
	/* Several batches on one stream: the zstd window spans them. */
	for (int round = 0; round < 5; round++) {
		for (int i = 0; i < NPAGES; i++)
			fill(src[i], (i + round) % 3);
		assert_int_equal(roundtrip(e, d, NPAGES, &st), NPAGES);
		assert_memory_equal(src, dst, sizeof(src));
	}
	assert_int_equal(st.pages, 5 * NPAGES);
	assert_true(st.zero_pages >= 5 * (NPAGES / 3));
	if (mode == MIG_COMPRESS_OFF)
		assert_int_equal(st.compressed_batches, 0);
	if (mode == MIG_COMPRESS_ON)
		assert_int_equal(st.raw_batches, 0);
	mig__enc_destroy(e);
	mig__dec_destroy(d);
}

static void test_roundtrip_off(void **s) { (void)s; check_mode(MIG_COMPRESS_OFF); }
static void test_roundtrip_on(void **s) { (void)s; check_mode(MIG_COMPRESS_ON); }
static void test_roundtrip_auto(void **s) { (void)s; check_mode(MIG_COMPRESS_AUTO); }

/* Zero pages cost a marker, not a page. */
static void test_zero_pages_small(void **state)
{
	mig_enc *e;
	mig_dec *d;
	mig_enc_stats st = { 0 };
	(void)state;
	memset(src, 0, sizeof(src));
	assert_int_equal(mig__enc_create(&e, MIG_COMPRESS_OFF, 1), 0);
	assert_int_equal(mig__dec_create(&d), 0);
	assert_int_equal(roundtrip(e, d, NPAGES, &st), NPAGES);
	assert_memory_equal(src, dst, sizeof(src));
	assert_int_equal(st.zero_pages, NPAGES);
	assert_true(st.wire_bytes < 200);
	mig__enc_destroy(e);
	mig__dec_destroy(d);
}

/* AUTO stops compressing incompressible pages on a fast link, and keeps
 * compressing text on a slow one. */
static void test_auto_policy(void **state)
{
	mig_enc *e;
	mig_dec *d;
	(void)state;
	assert_int_equal(mig__dec_create(&d), 0);
	assert_int_equal(mig__enc_create(&e, MIG_COMPRESS_AUTO, 1), 0);
	mig__enc_set_link_rate(e, 10e9);
	mig_enc_stats st = { 0 };
	for (int round = 0; round < 40; round++) {
		for (int i = 0; i < NPAGES; i++)
			fill(src[i], 1);
		assert_int_equal(roundtrip(e, d, NPAGES, &st), NPAGES);
		assert_memory_equal(src, dst, sizeof(src));
	}
	assert_true(st.raw_batches > st.compressed_batches);
	mig__enc_destroy(e);
	/* A new stream needs a new decoder. */
	mig__dec_destroy(d);
	assert_int_equal(mig__dec_create(&d), 0);

	assert_int_equal(mig__enc_create(&e, MIG_COMPRESS_AUTO, 1), 0);
	mig__enc_set_link_rate(e, 10e6);
	memset(&st, 0, sizeof(st));
	for (int round = 0; round < 40; round++) {
		for (int i = 0; i < NPAGES; i++)
			fill(src[i], 2);
		assert_int_equal(roundtrip(e, d, NPAGES, &st), NPAGES);
		assert_memory_equal(src, dst, sizeof(src));
	}
	assert_int_equal(st.raw_batches, 0);
	assert_true(st.wire_bytes * 2 < st.raw_bytes);
	mig__enc_destroy(e);
	mig__dec_destroy(d);
}

/* Encode one zstd batch of text pages into *b (fresh stream each time). */
static void zstd_frame(mig_buf *b, size_t n)
{
	mig_enc *e;
	mig_enc_stats st = { 0 };
	uint64_t idx[NPAGES];
	const uint8_t *data[NPAGES];
	for (size_t i = 0; i < n; i++) {
		fill(src[i], 2);
		idx[i] = i;
		data[i] = src[i];
	}
	assert_int_equal(mig__enc_create(&e, MIG_COMPRESS_ON, 1), 0);
	assert_int_equal(mig__enc_batch(e, 0, idx, data, n, b, &st), 0);
	mig__enc_destroy(e);
}

static long decode_fresh(const uint8_t *body, size_t len, mig_error *err)
{
	mig_dec *d;
	long r;
	assert_int_equal(mig__dec_create(&d), 0);
	r = mig__dec_batch(d, body, len, sink, NULL, err);
	mig__dec_destroy(d);
	return r;
}

/* Cut the compressed payload short, or lie about its decoded size. */
static void test_dec_lying_payload(void **state)
{
	mig_buf b = { 0 };
	mig_frame f;
	mig_error err = { 0 };
	(void)state;
	zstd_frame(&b, 8);
	assert_true(mig__frame_parse(b.data, b.len, &f) > 0);
	assert_int_equal(decode_fresh(f.body, f.len, &err), 8);
	assert_memory_equal(src, dst, 8 * MIG_PAGE_SIZE);
	/* Truncated payload: every length short of the whole. */
	for (size_t cut = 1; cut < 40; cut++) {
		memset(&err, 0, sizeof(err));
		assert_int_equal(decode_fresh(f.body, f.len - cut, &err), -EBADMSG);
		assert_true(strlen(err.msg) > 0);
	}
	/* The same payload declared as one page fewer: it decodes to more. */
	Mig__Wire__PageBatch *h;
	const uint8_t *pl;
	size_t pl_len;
	assert_int_equal(mig__pages_unpack(f.body, f.len, &h, &pl, &pl_len), 0);
	h->n_pages = h->n_encoding = 7;
	h->payload_raw_len = 7 * MIG_PAGE_SIZE;
	mig_buf b2 = { 0 };
	assert_int_equal(mig__pages_pack(h, pl, pl_len, &b2), 0);
	assert_true(mig__frame_parse(b2.data, b2.len, &f) > 0);
	assert_int_equal(decode_fresh(f.body, f.len, &err), -EBADMSG);
	assert_non_null(strstr(err.msg, "longer"));
	mig__pages_free(h);
	mig__buf_free(&b);
	mig__buf_free(&b2);
}

/* A page outside guest memory is refused before anything is written. */
static void test_dec_out_of_range(void **state)
{
	mig_enc *e;
	mig_enc_stats st = { 0 };
	uint64_t idx[2] = { 3, NPAGES + 5 };
	const uint8_t *data[2] = { src[0], src[1] };
	mig_buf b = { 0 };
	mig_frame f;
	mig_error err = { 0 };
	(void)state;
	fill(src[0], 1);
	fill(src[1], 1);
	assert_int_equal(mig__enc_create(&e, MIG_COMPRESS_OFF, 1), 0);
	assert_int_equal(mig__enc_batch(e, 0, idx, data, 2, &b, &st), 0);
	assert_true(mig__frame_parse(b.data, b.len, &f) > 0);
	memset(dst, 0xee, sizeof(dst));
	assert_int_equal(decode_fresh(f.body, f.len, &err), -ERANGE);
	assert_non_null(strstr(err.msg, "outside"));
	assert_int_equal(dst[3][0], 0xee); /* nothing written */
	mig__enc_destroy(e);
	mig__buf_free(&b);
}

/* Random bytes never crash the decoder; seeded, so reproducible. */
static void test_dec_garbage(void **state)
{
	uint8_t junk[9000];
	mig_error err;
	(void)state;
	for (int i = 0; i < 2000; i++) {
		size_t n = next() % sizeof(junk);
		for (size_t j = 0; j < n; j++)
			junk[j] = (uint8_t)next();
		assert_true(decode_fresh(junk, n, &err) < 0);
	}
	/* A valid header followed by garbage zstd. */
	mig_buf b = { 0 };
	mig_frame f;
	zstd_frame(&b, 4);
	assert_true(mig__frame_parse(b.data, b.len, &f) > 0);
	uint8_t *body = malloc(f.len);
	for (int i = 0; i < 500; i++) {
		memcpy(body, f.body, f.len);
		body[f.len - 1 - next() % 64] ^= (uint8_t)(1 + next() % 255);
		long r = decode_fresh(body, f.len, &err);
		assert_true(r == 4 || r < 0); /* a flip may land in a literal */
	}
	free(body);
	mig__buf_free(&b);
}

/* The decoder refuses to go on after an error. */
static void test_dec_broken_stays_broken(void **state)
{
	mig_dec *d;
	mig_error err = { 0 };
	uint8_t junk[4] = { 1, 2, 3, 4 };
	mig_buf b = { 0 };
	mig_frame f;
	(void)state;
	zstd_frame(&b, 2);
	assert_true(mig__frame_parse(b.data, b.len, &f) > 0);
	assert_int_equal(mig__dec_create(&d), 0);
	assert_true(mig__dec_batch(d, junk, sizeof(junk), sink, NULL, &err) < 0);
	assert_true(mig__dec_batch(d, f.body, f.len, sink, NULL, &err) < 0);
	mig__dec_destroy(d);
	mig__buf_free(&b);
}

static void test_enc_args(void **state)
{
	mig_enc *e;
	mig_enc_stats st = { 0 };
	mig_buf b = { 0 };
	(void)state;
	assert_int_equal(mig__enc_create(&e, (mig_compress)9, 1), -EINVAL);
	assert_int_equal(mig__enc_create(&e, MIG_COMPRESS_ON, 0), -EINVAL);
	assert_int_equal(mig__enc_create(&e, MIG_COMPRESS_ON, 1), 0);
	assert_int_equal(mig__enc_batch(e, 0, NULL, NULL, 0, &b, &st), -EINVAL);
	assert_int_equal(mig__enc_batch(e, 0, NULL, NULL, MIG_BATCH_MAX_PAGES + 1,
					&b, &st), -EINVAL);
	mig__enc_destroy(e);
	mig__enc_destroy(NULL);
	mig__dec_destroy(NULL);
}

static void test_is_zero(void **state)
{
	(void)state;
	memset(src[0], 0, MIG_PAGE_SIZE);
	assert_true(mig__page_is_zero(src[0]));
	for (size_t at = 0; at < MIG_PAGE_SIZE; at += 511) {
		src[0][at] = 1;
		assert_false(mig__page_is_zero(src[0]));
		src[0][at] = 0;
	}
	src[0][MIG_PAGE_SIZE - 1] = 0x80;
	assert_false(mig__page_is_zero(src[0]));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_roundtrip_off),
		cmocka_unit_test(test_roundtrip_on),
		cmocka_unit_test(test_roundtrip_auto),
		cmocka_unit_test(test_zero_pages_small),
		cmocka_unit_test(test_auto_policy),
		cmocka_unit_test(test_dec_lying_payload),
		cmocka_unit_test(test_dec_out_of_range),
		cmocka_unit_test(test_dec_garbage),
		cmocka_unit_test(test_dec_broken_stays_broken),
		cmocka_unit_test(test_enc_args),
		cmocka_unit_test(test_is_zero),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
