/*
 * Page deltas (libmigrate/src/delta.c): round trips over the kinds of
 * change a guest makes, the size a delta costs, the room the caller gives
 * it, and a decoder that trusts nothing (a refused delta leaves the page
 * as it was). Each test seeds its own generator.
 *
 * `test_delta --bench` compares the encodings a delta could use, page by
 * page, over the same kinds of change (a measurement, not a test): ours
 * (runs of new bytes), the same runs through zstd, the XOR of the pages
 * through zstd, and zstd with the old page as its prefix.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zstd.h>

#include "mig_test.h"
#include "delta.h"
#include "internal.h"

#define PG MIG_PAGE_SIZE

static uint64_t rng = 1;

static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static void fill_random(uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)rnd();
}

/* Encode cur against old with room cap, apply it to a copy of old: the
 * copy must equal cur. Returns the delta's length. */
static long roundtrip(const uint8_t *old, const uint8_t *cur, size_t cap)
{
	uint8_t *out = malloc(cap ? cap : 1), page[PG];
	long n;

	assert_non_null(out);
	n = mig__delta_encode(old, cur, out, cap);

	assert_true(n >= 0);
	assert_true((size_t)n <= cap);
	memcpy(page, old, PG);
	assert_int_equal(mig__delta_apply(page, out, (size_t)n), 0);
	assert_memory_equal(page, cur, PG);
	free(out);
	return n;
}

static void test_equal_pages(void **st)
{
	uint8_t old[PG], page[PG];

	(void)st;
	rng = 11;
	fill_random(old, PG);
	assert_int_equal(roundtrip(old, old, 16), 0);
	/* an empty delta: the page stays */
	memcpy(page, old, PG);
	assert_int_equal(mig__delta_apply(page, NULL, 0), 0);
	assert_memory_equal(page, old, PG);
}

/* The changes a guest makes, as kinds: a counter in a header, a field, a
 * scattered few bytes, a block, every 8th word, both ends; text with a few
 * words changed, 10% of the bytes, a page rewritten whole. */
#define KINDS 9
static const char *const kind_name[KINDS] = {
	"3 header words", "a 64-byte field", "1% of the bytes", "a 1 KiB block",
	"every 8th word", "first and last byte", "text, 10 words",
	"10% of the bytes", "all new (random)",
};

static void make_change(int kind, uint8_t *old, uint8_t *cur)
{
	static const char text[] = "the of and to in is you that it was for ";
	size_t o;

	fill_random(old, PG);
	if (kind == 6)
		for (size_t i = 0; i < PG; i++)
			old[i] = (uint8_t)text[rnd() % (sizeof(text) - 1)];
	memcpy(cur, old, PG);
	switch (kind) {
	case 0:
		fill_random(cur, 24);
		break;
	case 1:
		o = rnd() % (PG - 64);
		fill_random(cur + o, 64);
		break;
	case 2:
	case 7:
		for (int k = 0; k < (kind == 2 ? 41 : 410); k++)
			cur[rnd() % PG] ^= (uint8_t)(rnd() | 1);
		break;
	case 3:
		o = rnd() % (PG - 1024);
		fill_random(cur + o, 1024);
		break;
	case 4:
		for (size_t w = 0; w < PG; w += 64)
			fill_random(cur + w, 8);
		break;
	case 5:
		cur[0] ^= 0x5a;
		cur[PG - 1] ^= 0xa5;
		break;
	case 6:
		for (int k = 0; k < 10; k++)
			memcpy(cur + rnd() % (PG - 8), "changed ", 8);
		break;
	case 8:
		fill_random(cur, PG);
		break;
	}
}

static void test_roundtrip_patterns(void **st)
{
	uint8_t old[PG], cur[PG];

	(void)st;
	rng = 12;
	for (int pat = 0; pat < KINDS; pat++) {
		long most = 0;

		for (int it = 0; it < 300; it++) {
			long n;

			make_change(pat, old, cur);
			n = roundtrip(old, cur, 2 * PG);
			if (n > most)
				most = n;
		}
		/* what each costs at most: the bytes changed and two varints
		 * a run (a random byte equals the old one 1 time in 256,
		 * which can split a run: a few bytes more) */
		switch (pat) {
		case 0: assert_true(most <= 24 + 2 + 4); break;
		case 1: assert_true(most <= 64 + 3 + 4); break;
		case 2: assert_true(most <= 41 * 4); break;
		case 3: assert_true(most <= 1024 + 4 + 8); break;
		case 4: assert_true(most <= 64 * (8 + 2) + 8); break;
		case 5: assert_true(most == 2 + 1 + 2 + 1 + 1); break;
		case 6: assert_true(most <= 10 * (8 + 4)); break;
		case 8: assert_true(most <= PG + 3 + 64); break;
		}
	}
}

/* A page rewritten whole costs more than the page: -ENOSPC below it, and
 * the exact room a delta needs is enough, a byte less is not. */
static void test_room(void **st)
{
	uint8_t old[PG], cur[PG], out[PG + 16];
	long n;

	(void)st;
	rng = 13;
	fill_random(old, PG);
	fill_random(cur, PG);
	assert_int_equal(mig__delta_encode(old, cur, out, PG - 1), -ENOSPC);
	n = roundtrip(old, cur, sizeof(out));
	assert_true(n > PG);
	memcpy(cur, old, PG);
	fill_random(cur + 100, 50);
	cur[100] = (uint8_t)~old[100];
	cur[149] = (uint8_t)~old[149];
	n = roundtrip(old, cur, 60);
	assert_int_equal(n, 1 + 1 + 50);
	assert_int_equal(mig__delta_encode(old, cur, out, (size_t)n - 1), -ENOSPC);
	assert_int_equal(mig__delta_encode(old, cur, out, 0), -ENOSPC);
}

/* Equal gaps of up to two bytes stay inside a run; three split it. */
static void test_gap_merge(void **st)
{
	uint8_t old[PG], cur[PG], out[64];

	(void)st;
	memset(old, 0, PG);
	memcpy(cur, old, PG);
	cur[10] = 1;
	cur[13] = 1; /* two equal bytes between */
	assert_int_equal(mig__delta_encode(old, cur, out, sizeof(out)), 2 + 4);
	assert_int_equal(out[0], 10);
	assert_int_equal(out[1], 4);
	cur[13] = 0;
	cur[14] = 1; /* three */
	assert_int_equal(mig__delta_encode(old, cur, out, sizeof(out)),
			 2 + 1 + 2 + 1);
	assert_int_equal(out[0], 10);
	assert_int_equal(out[1], 1);
	assert_int_equal(out[3], 3); /* skip 3 after the first run */
	assert_int_equal(out[4], 1);
	/* a far offset takes a two-byte varint */
	memcpy(cur, old, PG);
	cur[4000] = 7;
	assert_int_equal(mig__delta_encode(old, cur, out, sizeof(out)), 2 + 1 + 1);
	assert_int_equal(out[0], (4000 & 0x7f) | 0x80);
	assert_int_equal(out[1], 4000 >> 7);
}

/* A running guest writes the page while it is encoded: a thread flips a
 * byte all the time. Every delta must still be well formed (no empty
 * run) and every call end. */
static uint8_t race_page[PG];
static volatile int race_stop;

static void *flipper(void *arg)
{
	(void)arg;
	while (!race_stop)
		__atomic_fetch_xor(&race_page[100], 0xff, __ATOMIC_RELAXED);
	return NULL;
}

static void test_racing_page(void **st)
{
	uint8_t old[PG], out[2 * PG];
	pthread_t t;

	(void)st;
	memset(old, 0, PG);
	memset(race_page, 0, PG);
	race_stop = 0;
	assert_int_equal(pthread_create(&t, NULL, flipper, NULL), 0);
	for (int it = 0; it < 1000000; it++) {
		long n = mig__delta_encode(old, race_page, out, sizeof(out));

		assert_true(n >= 0);
		if (mig__delta_check(out, (size_t)n) != 0) {
			race_stop = 1;
			pthread_join(t, NULL);
			fail_msg("malformed delta at try %d (%ld bytes)", it, n);
		}
	}
	race_stop = 1;
	pthread_join(t, NULL);
}

/* Hostile deltas: each refused, the page untouched. */
static void test_refused(void **st)
{
	static const struct {
		const char *what;
		uint8_t d[8];
		size_t len;
	} bad[] = {
		{ "a run of 0 bytes", { 0, 0 }, 2 },
		{ "skip past the page", { 0x81, 0x20, 1, 9 }, 4 },  /* 4097 */
		{ "a run past the page", { 0xff, 0x1f, 2, 1, 2 }, 5 },
		{ "an unfinished varint", { 0x80 }, 1 },
		{ "a varint written long", { 0x85, 0x00, 1, 9 }, 4 },
		{ "a three-byte varint", { 0x80, 0x80, 0x01, 1, 9 }, 5 },
		{ "bytes missing", { 0, 4, 1, 2, 3 }, 5 },
		{ "a skip with no length", { 5 }, 1 },
		{ "a length over the page", { 0, 0x81, 0x20 }, 3 },
	};
	uint8_t page[PG], want[PG];

	(void)st;
	rng = 14;
	fill_random(want, PG);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memcpy(page, want, PG);
		if (mig__delta_apply(page, bad[i].d, bad[i].len) != -EBADMSG)
			fail_msg("accepted: %s", bad[i].what);
		assert_int_equal(mig__delta_check(bad[i].d, bad[i].len), -EBADMSG);
		assert_memory_equal(page, want, PG);
	}
}

/* The largest legal deltas: the whole page as one run; a run ending on
 * the page's last byte after a skip. */
static void test_limits(void **st)
{
	uint8_t *d = malloc(PG + 4), page[PG], want[PG];

	(void)st;
	assert_non_null(d);
	rng = 15;
	d[0] = 0;
	d[1] = (PG & 0x7f) | 0x80;
	d[2] = PG >> 7;
	fill_random(d + 3, PG);
	fill_random(page, PG);
	assert_int_equal(mig__delta_apply(page, d, PG + 3), 0);
	assert_memory_equal(page, d + 3, PG);
	/* one byte short of its run */
	assert_int_equal(mig__delta_check(d, PG + 2), -EBADMSG);
	/* and one too many */
	d[PG + 3] = 0;
	assert_int_equal(mig__delta_check(d, PG + 4), -EBADMSG);
	memcpy(want, page, PG);
	want[PG - 1] = 0x42;
	d[0] = ((PG - 1) & 0x7f) | 0x80;
	d[1] = (PG - 1) >> 7;
	d[2] = 1;
	d[3] = 0x42;
	assert_int_equal(mig__delta_apply(page, d, 4), 0);
	assert_memory_equal(page, want, PG);
	free(d);
}

static double now_s(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* Bytes and time a page, per kind of change, for each way to encode. */
static int bench(void)
{
	enum { N = 4000, WAYS = 4 };
	static const char *const way[WAYS] = { "runs (ours)", "runs+zstd",
					       "xor+zstd", "zstd prefix" };
	uint8_t *old = malloc((size_t)N * PG), *cur = malloc((size_t)N * PG);
	uint8_t out[2 * PG + 64], tmp[2 * PG + 64];
	ZSTD_CCtx *cc = ZSTD_createCCtx();

	if (!old || !cur || !cc)
		return 1;
	printf("# test_delta --bench: %d pages per kind, one page at a time "
	       "(zstd level 1, a fresh frame each), bytes and ns a page\n", N);
	printf("%-20s", "kind");
	for (int w = 0; w < WAYS; w++)
		printf(" | %18s", way[w]);
	printf("\n");
	rng = 99;
	for (int k = 0; k < KINDS; k++) {
		printf("%-20s", kind_name[k]);
		for (int i = 0; i < N; i++)
			make_change(k, old + (size_t)i * PG, cur + (size_t)i * PG);
		for (int w = 0; w < WAYS; w++) {
			double bytes = 0, t0 = now_s();

			for (int i = 0; i < N; i++) {
				const uint8_t *o = old + (size_t)i * PG;
				const uint8_t *c = cur + (size_t)i * PG;
				size_t n = 0;
				long r;

				switch (w) {
				case 0:
					n = (size_t)mig__delta_encode(o, c, out, sizeof(out));
					break;
				case 1:
					r = mig__delta_encode(o, c, tmp, sizeof(tmp));
					n = ZSTD_compressCCtx(cc, out, sizeof(out), tmp,
							      (size_t)r, 1);
					break;
				case 2:
					for (size_t j = 0; j < PG; j++)
						tmp[j] = o[j] ^ c[j];
					n = ZSTD_compressCCtx(cc, out, sizeof(out), tmp,
							      PG, 1);
					break;
				case 3:
					ZSTD_CCtx_reset(cc, ZSTD_reset_session_and_parameters);
					ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, 1);
					ZSTD_CCtx_refPrefix(cc, o, PG);
					n = ZSTD_compress2(cc, out, sizeof(out), c, PG);
					break;
				}
				bytes += (double)n;
			}
			printf(" | %7.0f B %5.0f ns", bytes / N,
			       (now_s() - t0) / N * 1e9);
		}
		printf("\n");
	}
	ZSTD_freeCCtx(cc);
	free(old);
	free(cur);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "--bench") == 0)
		return bench();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_equal_pages),
		cmocka_unit_test(test_roundtrip_patterns),
		cmocka_unit_test(test_room),
		cmocka_unit_test(test_gap_merge),
		cmocka_unit_test(test_racing_page),
		cmocka_unit_test(test_refused),
		cmocka_unit_test(test_limits),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
