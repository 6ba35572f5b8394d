/*
 * libFuzzer target: page deltas (libmigrate/src/delta.c).
 *
 * Input: one op byte, then
 *   op even: a delta from the network, applied to a page (of exactly a
 *     page, so ASan sees a write past it). Properties: no crash; check and
 *     apply agree; a refused delta leaves the page as it was; an accepted
 *     one changes no byte that its runs do not cover.
 *   op odd: a recipe: two bytes of room for the encoder, then edits
 *     [offset lo, offset hi, length, byte] made to a random page. The
 *     delta must turn the old page into the new one within the room, or
 *     say -ENOSPC only when the room is less than the delta it makes with
 *     room to spare.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "delta.h"
#include "fuzz_common.h"
#include "internal.h"

#define PG MIG_PAGE_SIZE

static void fill(uint8_t *p, uint64_t s)
{
	for (size_t i = 0; i < PG; i++) {
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		p[i] = (uint8_t)s;
	}
}

/* Which bytes the runs of a checked delta cover. */
static void covered(const uint8_t *d, size_t len, uint8_t *mask)
{
	size_t pos = 0, off = 0;

	memset(mask, 0, PG);
	while (pos < len) {
		size_t v[2];

		for (int k = 0; k < 2; k++) {
			v[k] = d[pos] & 0x7f;
			if (d[pos++] & 0x80)
				v[k] |= (size_t)d[pos++] << 7;
		}
		off += v[0];
		memset(mask + off, 1, v[1]);
		off += v[1];
		pos += v[1];
	}
}

static void apply_hostile(const uint8_t *d, size_t len)
{
	uint8_t *page = malloc(PG), before[PG], mask[PG];
	uint8_t *copy = malloc(len ? len : 1); /* exactly len: reads past it show */
	int c, r;

	FUZZ_CHECK(page && copy);
	memcpy(copy, d, len);
	fill(page, 0x1234567);
	memcpy(before, page, PG);
	c = mig__delta_check(copy, len);
	r = mig__delta_apply(page, copy, len);
	FUZZ_CHECK(c == r && (r == 0 || r == -EBADMSG));
	if (r < 0) {
		FUZZ_CHECK(memcmp(page, before, PG) == 0);
	} else {
		covered(copy, len, mask);
		for (size_t i = 0; i < PG; i++)
			FUZZ_CHECK(mask[i] || page[i] == before[i]);
	}
	free(copy);
	free(page);
}

static void roundtrip(const uint8_t *d, size_t len)
{
	static uint8_t old[PG], cur[PG], page[PG], out[2 * PG], big[2 * PG];
	size_t room, i = 2;
	long n, need;

	if (len < 2)
		return;
	room = ((size_t)d[0] | (size_t)d[1] << 8) % (sizeof(out) + 1);
	fill(old, 0x9e3779b97f4a7c15ull ^ len);
	memcpy(cur, old, PG);
	for (; i + 4 <= len; i += 4) {
		size_t off = ((size_t)d[i] | (size_t)d[i + 1] << 8) % PG;
		size_t n_ = d[i + 2];

		if (n_ > PG - off)
			n_ = PG - off;
		memset(cur + off, d[i + 3], n_);
	}
	need = mig__delta_encode(old, cur, big, sizeof(big));
	FUZZ_CHECK(need >= 0 && (size_t)need <= sizeof(big));
	n = mig__delta_encode(old, cur, out, room);
	if (n == -ENOSPC) {
		FUZZ_CHECK((size_t)need > room);
		return;
	}
	FUZZ_CHECK(n == need && memcmp(out, big, (size_t)n) == 0);
	memcpy(page, old, PG);
	FUZZ_CHECK(mig__delta_apply(page, out, (size_t)n) == 0);
	FUZZ_CHECK(memcmp(page, cur, PG) == 0);
	FUZZ_CHECK(n > 0 || memcmp(old, cur, PG) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!size)
		return 0;
	if (data[0] & 1)
		roundtrip(data + 1, size - 1);
	else
		apply_hostile(data + 1, size - 1);
	return 0;
}
