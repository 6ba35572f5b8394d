/*
 * libFuzzer target: the page codec (see fuzz_common.h for the input).
 *
 * Decode: arbitrary frames into one decoder whose sink is a small fake
 * guest between guard pages. Properties: no crash, no read outside the
 * body (each is copied to a buffer of its exact size), no write outside
 * the guest's pages (guards), a result that is a page count or the
 * documented errno with a message, and a decoder that stays broken.
 *
 * Round trip: pages made from a recipe, through one encoder and one
 * decoder (so the zstd window spans batches, in every mode, with raw and
 * compressed batches mixed by AUTO): the guest must equal the model after
 * every batch.
 */
#include <errno.h>
#include <string.h>

#include "fuzz_common.h"

#define PG MIG_PAGE_SIZE
#define GUARD 0xa5

static uint8_t *guest, *model;
static uint8_t guard_page[PG];

static size_t mem_size(void)
{
	return (FUZZ_REGIONS * (FUZZ_PAGES + 1) + 1) * PG;
}

static size_t page_off(uint32_t region, uint64_t idx)
{
	return (1 + region * (FUZZ_PAGES + 1) + idx) * PG;
}

static uint8_t *sink(void *opaque, uint32_t region, uint64_t idx)
{
	(void)opaque;
	if (region >= FUZZ_REGIONS || idx >= FUZZ_PAGES)
		return NULL;
	return guest + page_off(region, idx);
}

static void reset(void)
{
	memset(guest, 0, mem_size());
	for (uint32_t r = 0; r <= FUZZ_REGIONS; r++)
		memset(guest + r * (FUZZ_PAGES + 1) * PG, GUARD, PG);
	memcpy(model, guest, mem_size());
}

static void guards_intact(void)
{
	/* memcmp, not a loop: the fuzzer's comparison tracing of 12 KiB a
	 * run would cost more than the decoding. */
	for (uint32_t r = 0; r <= FUZZ_REGIONS; r++)
		FUZZ_CHECK(!memcmp(guest + r * (FUZZ_PAGES + 1) * PG, guard_page, PG));
}

int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	memset(guard_page, GUARD, PG);
	guest = aligned_alloc(PG, mem_size());
	model = aligned_alloc(PG, mem_size());
	FUZZ_CHECK(guest && model);
	reset();
	return 0;
}

static void decode_stream(const uint8_t *data, size_t size)
{
	mig_dec *d;
	size_t off = 0;

	FUZZ_CHECK(mig__dec_create(&d) == 0);
	while (off < size) {
		mig_frame f;
		mig_error err = { 0 };
		long n = mig__frame_parse(data + off, size - off, &f);
		if (n <= 0)
			break;
		off += (size_t)n;
		if (f.type != MIG_FRAME_PAGES)
			continue;
		uint8_t *body = malloc(f.len ? f.len : 1);
		FUZZ_CHECK(body);
		memcpy(body, f.body, f.len);
		long r = mig__dec_batch(d, body, f.len, sink, NULL, &err);
		if (r >= 0) {
			FUZZ_CHECK(r >= 1 && r <= (long)MIG_BATCH_MAX_PAGES);
			FUZZ_CHECK(err.code == 0);
		} else {
			FUZZ_CHECK(r == -EBADMSG || r == -ERANGE);
			FUZZ_CHECK(err.code == r && err.msg[0]);
			/* Broken for good: the same body is refused now. */
			FUZZ_CHECK(mig__dec_batch(d, body, f.len, sink, NULL, &err) == -EBADMSG);
		}
		free(body);
		if (r < 0)
			break;
	}
	mig__dec_destroy(d);
	guards_intact();
}

struct cursor {
	const uint8_t *p;
	size_t n;
};

static int more(const struct cursor *c)
{
	return c->n > 0;
}

static uint8_t take(struct cursor *c)
{
	if (!c->n)
		return 0;
	c->n--;
	return *c->p++;
}

static uint64_t xorshift(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s * 0x2545f4914f6cdd1dull;
}

/* Page content from a kind and a byte: zero, random, text, a copy of
 * another model page (matches for the zstd window), or sparse. Not
 * instrumented: its loops are the harness's, and tracing them cost more
 * than the code under test. */
__attribute__((noinline, no_sanitize("coverage")))
static void make_page(uint8_t *p, unsigned kind, uint8_t arg, uint64_t salt)
{
	static const char *const words[] = { "page ", "dirty ", "round ", "the ",
					     "migration ", "of ", "kvm\n", "guest " };
	static const size_t lens[] = { 5, 6, 6, 4, 10, 3, 4, 6 };
	uint64_t s = (salt << 8 | arg) * 0x9e3779b97f4a7c15ull + 1;
	size_t o = 0;

	switch (kind % 5) {
	case 0:
		memset(p, 0, PG);
		break;
	case 1:
		for (size_t i = 0; i < PG; i += 8) {
			uint64_t v = xorshift(&s);
			memcpy(p + i, &v, 8);
		}
		break;
	case 2:
		while (o < PG) {
			size_t w = xorshift(&s) % 8;
			size_t k = lens[w] < PG - o ? lens[w] : PG - o;
			memcpy(p + o, words[w], k);
			o += k;
		}
		break;
	case 3: {
		uint32_t r = arg % FUZZ_REGIONS;
		uint64_t i = (arg / FUZZ_REGIONS) % FUZZ_PAGES;
		memmove(p, model + page_off(r, i), PG);
		break;
	}
	default:
		memset(p, 0, PG);
		p[(size_t)arg * 16 % PG] = (uint8_t)(arg | 1);
		break;
	}
}

static void roundtrip(const uint8_t *data, size_t size)
{
	static const double links[] = { 0, 1e6, 1e9, 1e12 };
	struct cursor c = { data, size };
	mig_enc *e;
	mig_dec *d;
	mig_enc_stats st = { 0 };
	mig_buf b = { 0 };
	uint64_t idx[FUZZ_PAGES];
	const uint8_t *pages[FUZZ_PAGES];
	uint64_t salt = 0;

	mig_compress mode = (mig_compress)(take(&c) % 3);
	int level = 1 + take(&c) % 3;
	reset();
	FUZZ_CHECK(mig__enc_create(&e, mode, level) == 0);
	FUZZ_CHECK(mig__dec_create(&d) == 0);
	for (int batch = 0; batch < FUZZ_MAX_BATCHES && more(&c); batch++) {
		uint32_t region = take(&c) % FUZZ_REGIONS;
		size_t n = 1 + take(&c) % FUZZ_PAGES;
		mig__enc_set_link_rate(e, links[take(&c) % 4]);
		for (size_t i = 0; i < n; i++) {
			idx[i] = take(&c) % FUZZ_PAGES;
			unsigned kind = take(&c);
			make_page(model + page_off(region, idx[i]), kind, take(&c), salt++);
			pages[i] = model + page_off(region, idx[i]);
		}
		b.len = 0;
		FUZZ_CHECK(mig__enc_batch(e, region, idx, pages, n, &b, &st) == 0);
		FUZZ_CHECK(b.len <= MIG_CODEC_FRAME_MAX(n));

		mig_frame f;
		mig_error err = { 0 };
		FUZZ_CHECK(mig__frame_parse(b.data, b.len, &f) == (long)b.len);
		long r = mig__dec_batch(d, f.body, f.len, sink, NULL, &err);
		if (r != (long)n)
			fprintf(stderr, "decode: %ld: %s\n", r, err.msg);
		FUZZ_CHECK(r == (long)n);
		for (size_t i = 0; i < n; i++)
			FUZZ_CHECK(!memcmp(guest + page_off(region, idx[i]),
					   model + page_off(region, idx[i]), PG));
	}
	FUZZ_CHECK(!memcmp(guest, model, mem_size()));
	if (mode == MIG_COMPRESS_OFF)
		FUZZ_CHECK(st.compressed_batches == 0);
	mig__buf_free(&b);
	mig__enc_destroy(e);
	mig__dec_destroy(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!size)
		return 0;
	if (data[0] % 2 == FUZZ_OP_DECODE)
		decode_stream(data + 1, size - 1);
	else
		roundtrip(data + 1, size - 1);
	return 0;
}
