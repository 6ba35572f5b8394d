/* Framing: whole, truncated, oversized and malformed frames. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "mig_test.h"
#include "frame.h"

static void pack_hello(mig_buf *out)
{
	Mig__Wire__Envelope env = MIG__WIRE__ENVELOPE__INIT;
	Mig__Wire__Hello h = MIG__WIRE__HELLO__INIT;
	h.version_major = 1;
	h.token.data = (uint8_t *)"secret";
	h.token.len = 6;
	env.msg_case = MIG__WIRE__ENVELOPE__MSG_HELLO;
	env.hello = &h;
	assert_int_equal(mig__msg_pack(&env, out), 0);
}

static void test_msg_roundtrip(void **state)
{
	mig_buf b = { 0 };
	mig_frame f;
	int err;
	(void)state;
	pack_hello(&b);
	assert_int_equal(mig__frame_parse(b.data, b.len, &f), (long)b.len);
	assert_int_equal(f.type, MIG_FRAME_MSG);
	Mig__Wire__Envelope *env = mig__msg_unpack(f.body, f.len, &err);
	assert_non_null(env);
	assert_int_equal(env->msg_case, MIG__WIRE__ENVELOPE__MSG_HELLO);
	assert_memory_equal(env->hello->token.data, "secret", 6);
	mig__msg_free(env);
	mig__buf_free(&b);
}

/* Every prefix of a frame asks for more bytes and never reads past it. */
static void test_truncated(void **state)
{
	mig_buf b = { 0 };
	mig_frame f;
	(void)state;
	pack_hello(&b);
	for (size_t n = 0; n < b.len; n++) {
		uint8_t *copy = malloc(n ? n : 1); /* ASan catches overreads */
		memcpy(copy, b.data, n);
		assert_int_equal(mig__frame_parse(copy, n, &f), 0);
		free(copy);
	}
	mig__buf_free(&b);
}

/* An oversized length is refused from the header alone. */
static void test_oversized(void **state)
{
	uint8_t hdr[MIG_FRAME_HDR];
	mig_frame f;
	(void)state;
	mig__frame_header(hdr, MIG_FRAME_MSG, MIG_FRAME_MAX + 1);
	assert_int_equal(mig__frame_parse(hdr, sizeof(hdr), &f), -EMSGSIZE);
	mig__frame_header(hdr, MIG_FRAME_MSG, 0xffffffffu);
	assert_int_equal(mig__frame_parse(hdr, sizeof(hdr), &f), -EMSGSIZE);
	mig__frame_header(hdr, MIG_FRAME_MSG, MIG_FRAME_MAX);
	assert_int_equal(mig__frame_parse(hdr, sizeof(hdr), &f), 0);
}

static void test_bad_header(void **state)
{
	uint8_t hdr[MIG_FRAME_HDR];
	mig_frame f;
	(void)state;
	mig__frame_header(hdr, 9, 0);
	assert_int_equal(mig__frame_parse(hdr, sizeof(hdr), &f), -EBADMSG);
	mig__frame_header(hdr, MIG_FRAME_MSG, 0);
	hdr[7] = 1;
	assert_int_equal(mig__frame_parse(hdr, sizeof(hdr), &f), -EBADMSG);
}

/* Two frames back to back parse one at a time. */
static void test_stream_of_frames(void **state)
{
	mig_buf b = { 0 };
	mig_frame f;
	long n1, n2;
	(void)state;
	pack_hello(&b);
	pack_hello(&b);
	n1 = mig__frame_parse(b.data, b.len, &f);
	assert_true(n1 > 0 && (size_t)n1 < b.len);
	n2 = mig__frame_parse(b.data + n1, b.len - (size_t)n1, &f);
	assert_int_equal(n1 + n2, (long)b.len);
	mig__buf_free(&b);
}

static void test_msg_garbage(void **state)
{
	static const uint8_t junk[] = { 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01 };
	int err;
	(void)state;
	assert_null(mig__msg_unpack(junk, sizeof(junk), &err));
	assert_int_equal(err, -EBADMSG);
	/* An empty envelope decodes but carries nothing: refused too. */
	assert_null(mig__msg_unpack(junk, 0, &err));
	assert_int_equal(err, -EBADMSG);
}

static void make_batch(Mig__Wire__PageBatch *h, uint64_t *pages,
		       uint32_t *enc, size_t n)
{
	mig__wire__page_batch__init(h);
	h->n_pages = h->n_encoding = n;
	h->pages = pages;
	h->encoding = enc;
}

static void test_pages_roundtrip(void **state)
{
	uint64_t pages[3] = { 1, 5, 9 };
	uint32_t enc[3] = { MIG__WIRE__PAGE_ENCODING__PAGE_ZERO,
			    MIG__WIRE__PAGE_ENCODING__PAGE_RAW,
			    MIG__WIRE__PAGE_ENCODING__PAGE_RAW };
	static uint8_t payload[2 * MIG_PAGE_SIZE];
	Mig__Wire__PageBatch h, *got;
	const uint8_t *pl;
	size_t pl_len;
	mig_buf b = { 0 };
	mig_frame f;
	(void)state;
	memset(payload, 0xab, sizeof(payload));
	make_batch(&h, pages, enc, 3);
	h.payload_raw_len = sizeof(payload);
	assert_int_equal(mig__pages_pack(&h, payload, sizeof(payload), &b), 0);
	assert_int_equal(mig__frame_parse(b.data, b.len, &f), (long)b.len);
	assert_int_equal(f.type, MIG_FRAME_PAGES);
	assert_int_equal(mig__pages_unpack(f.body, f.len, &got, &pl, &pl_len), 0);
	assert_int_equal(got->n_pages, 3);
	assert_int_equal(got->pages[2], 9);
	assert_int_equal(pl_len, sizeof(payload));
	assert_memory_equal(pl, payload, pl_len);
	mig__pages_free(got);
	mig__buf_free(&b);
}

/* Headers whose counts disagree with each other or the payload. */
static void test_pages_inconsistent(void **state)
{
	uint64_t pages[2] = { 1, 2 };
	uint32_t enc[2] = { MIG__WIRE__PAGE_ENCODING__PAGE_RAW, 77 };
	static uint8_t payload[2 * MIG_PAGE_SIZE];
	Mig__Wire__PageBatch h, *got;
	const uint8_t *pl;
	size_t pl_len;
	mig_frame f;
	(void)state;

	struct { int n_enc; uint32_t e1; uint32_t raw; size_t plen; uint32_t codec; } c[] = {
		{ 2, 77, 2 * MIG_PAGE_SIZE, 2 * MIG_PAGE_SIZE, 0 }, /* bad encoding */
		{ 1, 1, MIG_PAGE_SIZE, MIG_PAGE_SIZE, 0 },        /* count mismatch */
		{ 2, 1, MIG_PAGE_SIZE, MIG_PAGE_SIZE, 0 },        /* raw_len wrong */
		{ 2, 1, 2 * MIG_PAGE_SIZE, MIG_PAGE_SIZE, 0 },    /* short payload */
		{ 2, 1, 2 * MIG_PAGE_SIZE, 2 * MIG_PAGE_SIZE, 5 },/* bad codec */
	};
	for (size_t i = 0; i < MIG_ARRAY_SIZE(c); i++) {
		mig_buf b = { 0 };
		make_batch(&h, pages, enc, 2);
		h.n_encoding = (size_t)c[i].n_enc;
		enc[1] = c[i].e1;
		h.payload_raw_len = c[i].raw;
		h.payload_codec = c[i].codec;
		assert_int_equal(mig__pages_pack(&h, payload, c[i].plen, &b), 0);
		assert_true(mig__frame_parse(b.data, b.len, &f) > 0);
		assert_int_equal(mig__pages_unpack(f.body, f.len, &got, &pl, &pl_len),
				 -EBADMSG);
		assert_null(got);
		mig__buf_free(&b);
	}
	/* A header length pointing past the body. */
	uint8_t body[8] = { 0xff, 0, 0, 0, 1, 2, 3, 4 };
	assert_int_equal(mig__pages_unpack(body, sizeof(body), &got, &pl, &pl_len),
			 -EBADMSG);
	assert_int_equal(mig__pages_unpack(body, 3, &got, &pl, &pl_len), -EBADMSG);
}

/* Too many pages in one batch are refused by the decoder. */
static void test_pages_too_many(void **state)
{
	size_t n = MIG_BATCH_MAX_PAGES + 1;
	uint64_t *pages = calloc(n, sizeof(*pages));
	uint32_t *enc = calloc(n, sizeof(*enc)); /* all PAGE_ZERO */
	Mig__Wire__PageBatch h, *got;
	const uint8_t *pl;
	size_t pl_len;
	mig_buf b = { 0 };
	mig_frame f;
	(void)state;
	make_batch(&h, pages, enc, n);
	assert_int_equal(mig__pages_pack(&h, NULL, 0, &b), 0);
	assert_true(mig__frame_parse(b.data, b.len, &f) > 0);
	assert_int_equal(mig__pages_unpack(f.body, f.len, &got, &pl, &pl_len), -EBADMSG);
	mig__buf_free(&b);
	free(pages);
	free(enc);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_msg_roundtrip),
		cmocka_unit_test(test_truncated),
		cmocka_unit_test(test_oversized),
		cmocka_unit_test(test_bad_header),
		cmocka_unit_test(test_stream_of_frames),
		cmocka_unit_test(test_msg_garbage),
		cmocka_unit_test(test_pages_roundtrip),
		cmocka_unit_test(test_pages_inconsistent),
		cmocka_unit_test(test_pages_too_many),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
