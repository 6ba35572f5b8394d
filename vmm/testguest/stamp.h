/*
 * Test guest: the page stamp. Pure functions over one 4 KiB page, usable by
 * the guest (freestanding) and by host-side tests that want to check or
 * forge a page in guest memory.
 *
 * Layout, as 512 little-endian u64 words:
 *   word 0  data page number (index in the data region, not an address)
 *   word 1  generation (1 after the initial touch, +1 per rewrite)
 *   word 2  checksum = stamp_hash() of the page with this word taken as 0
 *   3..511  content = f(seed, page, generation, fill)
 */
#ifndef TESTGUEST_STAMP_H
#define TESTGUEST_STAMP_H

#include <stdint.h>

#define STAMP_PAGE_SIZE 4096
#define STAMP_WORDS 512
#define STAMP_HDR_WORDS 3

enum stamp_fill {
	STAMP_FILL_RANDOM, /* xorshift64 words: incompressible */
	STAMP_FILL_TEXT,   /* words, spaces, newlines: ~3x with zstd */
	STAMP_FILL_SPARSE, /* a few words, the rest zero */
};

/* A small dictionary, each word padded with spaces to one u64 slot, so the
 * text fill is a sequence of aligned stores. The last byte is always a
 * space (words have at most 7 letters); the fill turns some into '\n'. */
#define STAMP_DICT_WORDS 128
static const char stamp_dict[STAMP_DICT_WORDS][8] = {
	"the     ", "of      ", "and     ", "to      ", "in      ",
	"is      ", "you     ", "that    ", "it      ", "he      ",
	"was     ", "for     ", "on      ", "are     ", "as      ",
	"with    ", "his     ", "they    ", "at      ", "be      ",
	"this    ", "have    ", "from    ", "or      ", "one     ",
	"had     ", "by      ", "word    ", "but     ", "not     ",
	"what    ", "all     ", "were    ", "we      ", "when    ",
	"your    ", "can     ", "said    ", "there   ", "use     ",
	"an      ", "each    ", "which   ", "she     ", "do      ",
	"how     ", "their   ", "if      ", "will    ", "up      ",
	"other   ", "about   ", "out     ", "many    ", "then    ",
	"them    ", "these   ", "so      ", "some    ", "her     ",
	"would   ", "make    ", "like    ", "him     ", "into    ",
	"time    ", "has     ", "look    ", "two     ", "more    ",
	"write   ", "go      ", "see     ", "number  ", "no      ",
	"way     ", "could   ", "people  ", "my      ", "than    ",
	"first   ", "water   ", "been    ", "call    ", "who     ",
	"oil     ", "its     ", "now     ", "find    ", "long    ",
	"down    ", "day     ", "did     ", "get     ", "come    ",
	"made    ", "may     ", "part    ", "over    ", "new     ",
	"sound   ", "take    ", "only    ", "little  ", "work    ",
	"know    ", "place   ", "year    ", "live    ", "me      ",
	"back    ", "give    ", "most    ", "very    ", "after   ",
	"thing   ", "our     ", "just    ", "name    ", "good    ",
	"man     ", "think   ", "say     ", "great   ", "where   ",
	"help    ", "through ", "much    ",
};

static inline uint64_t stamp_mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	x ^= x >> 31;
	return x;
}

static inline uint64_t stamp_rotl(uint64_t x, unsigned r)
{
	return (x << r) | (x >> (64 - r));
}

static inline uint64_t stamp_rng_init(uint64_t seed, uint64_t page,
				      uint64_t gen)
{
	uint64_t s = stamp_mix64(stamp_mix64(seed ^ 0x9e3779b97f4a7c15ull) ^
				 stamp_mix64(page + 0x632be59bd9b4e019ull) ^
				 stamp_rotl(stamp_mix64(gen), 32));
	return s ? s : 0x2545f4914f6cdd1dull; /* xorshift state must be != 0 */
}

static inline uint64_t stamp_rng(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x;
}

/*
 * Four independent lanes keep the multiply chains short (this runs for
 * every page written and verified). Each step is a bijection of the lane
 * state, so any change confined to one word always changes the result.
 */
static inline uint64_t stamp_hash(const uint64_t *w)
{
	const uint64_t k = 0x9e3779b97f4a7c15ull;
	uint64_t h0 = 0x736f6d6570736575ull, h1 = 0x646f72616e646f6dull;
	uint64_t h2 = 0x6c7967656e657261ull, h3 = 0x7465646279746573ull;

	h0 = (h0 ^ w[0]) * k;
	h1 = (h1 ^ w[1]) * k;
	h2 = h2 * k; /* w[2], the checksum, counts as 0 */
	h3 = (h3 ^ w[3]) * k;
	for (unsigned i = 4; i < STAMP_WORDS; i += 4) {
		h0 = (h0 ^ w[i]) * k;
		h1 = (h1 ^ w[i + 1]) * k;
		h2 = (h2 ^ w[i + 2]) * k;
		h3 = (h3 ^ w[i + 3]) * k;
	}
	return stamp_mix64(h0 ^ stamp_rotl(h1, 16) ^ stamp_rotl(h2, 32) ^
			   stamp_rotl(h3, 48));
}

static inline uint64_t stamp_dict_word(uint64_t i)
{
	uint64_t w;
	__builtin_memcpy(&w, stamp_dict[i % STAMP_DICT_WORDS], 8);
	return w;
}

/*
 * The generators keep their state in locals (a store into the page could
 * alias state reached through a pointer and force a reload per word) and
 * interleave independent xorshift streams, whose serial dependency chain
 * is otherwise the bottleneck. Branch-free: newline choices are random.
 */
static inline void stamp_fill_random(uint64_t *p, uint64_t rng)
{
	uint64_t a = rng, b = stamp_mix64(rng + 1) | 1;
	uint64_t c = stamp_mix64(rng + 2) | 1, d = stamp_mix64(rng + 3) | 1;
	unsigned i = STAMP_HDR_WORDS;

	for (; i + 4 <= STAMP_WORDS; i += 4) {
		p[i] = stamp_rng(&a);
		p[i + 1] = stamp_rng(&b);
		p[i + 2] = stamp_rng(&c);
		p[i + 3] = stamp_rng(&d);
	}
	for (; i < STAMP_WORDS; i++)
		p[i] = stamp_rng(&a);
}

/* One word per u64, a newline instead of the last space 1 time in 16:
 * about 3.4x with zstd -1 on a single page. */
static inline uint64_t stamp_text_word(uint64_t r)
{
	const uint64_t to_newline = (uint64_t)(' ' ^ '\n') << 56;

	return stamp_dict_word(r) ^ (to_newline * (((r >> 8) & 15) == 0));
}

static inline void stamp_fill_text(uint64_t *p, uint64_t rng)
{
	uint64_t a = rng, b = stamp_mix64(rng + 1) | 1;
	unsigned i = STAMP_HDR_WORDS;

	for (; i + 2 <= STAMP_WORDS; i += 2) {
		p[i] = stamp_text_word(stamp_rng(&a));
		p[i + 1] = stamp_text_word(stamp_rng(&b));
	}
	for (; i < STAMP_WORDS; i++)
		p[i] = stamp_text_word(stamp_rng(&a));
}

/* Four words at random slots, the rest zero. */
static inline void stamp_fill_sparse(uint64_t *p, uint64_t rng)
{
	for (unsigned i = STAMP_HDR_WORDS; i < STAMP_WORDS; i++)
		p[i] = 0;
	for (unsigned n = 0; n < 4; n++) {
		uint64_t r = stamp_rng(&rng);
		unsigned slot = STAMP_HDR_WORDS +
				(unsigned)(r % (STAMP_WORDS - STAMP_HDR_WORDS));
		p[slot] = stamp_dict_word(r >> 32);
	}
}

/* Writes the whole page: header, content, checksum. */
static inline void stamp_write(uint64_t *p, uint64_t seed, uint64_t page,
			       uint64_t gen, enum stamp_fill fill)
{
	uint64_t rng = stamp_rng_init(seed, page, gen);

	p[0] = page;
	p[1] = gen;
	p[2] = 0;
	if (fill == STAMP_FILL_TEXT)
		stamp_fill_text(p, rng);
	else if (fill == STAMP_FILL_SPARSE)
		stamp_fill_sparse(p, rng);
	else
		stamp_fill_random(p, rng);
	p[2] = stamp_hash(p);
}

/* 1 if the checksum matches the rest of the page. */
static inline int stamp_checksum_ok(const uint64_t *p)
{
	return stamp_hash(p) == p[2];
}

#endif
