/* Page deltas; see delta.h. */
#include <errno.h>
#include <string.h>

#include "delta.h"
#include "internal.h"

/* An equal gap this short inside a run is sent with it: splitting there
 * would cost two varint bytes at least to save it. */
#define GAP_MERGE 2
/* Offsets and lengths are at most MIG_PAGE_SIZE: two varint bytes. */
#define VARINT_MAX 2

static uint64_t load64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

static size_t varint_len(size_t v)
{
	return v < 0x80 ? 1 : 2;
}

static size_t put_varint(uint8_t *o, size_t v)
{
	if (v < 0x80) {
		o[0] = (uint8_t)v;
		return 1;
	}
	o[0] = (uint8_t)(v | 0x80);
	o[1] = (uint8_t)(v >> 7);
	return 2;
}

long mig__delta_encode(const uint8_t *old, const uint8_t *cur, uint8_t *out,
		       size_t cap)
{
	size_t i = 0, k = 0, done = 0;

	while (i < MIG_PAGE_SIZE) {
		size_t start, end, need;

		while (i + 8 <= MIG_PAGE_SIZE && load64(old + i) == load64(cur + i))
			i += 8;
		while (i < MIG_PAGE_SIZE && old[i] == cur[i])
			i++;
		if (i == MIG_PAGE_SIZE)
			break;
		/* Each byte is read again below, and a running guest may have
		 * changed it since: whatever a byte reads as, the run starts
		 * here and every step moves on, so a run is never empty and
		 * the loop always ends. */
		start = i;
		end = ++i;
		while (i < MIG_PAGE_SIZE) {
			size_t g = i;

			if (old[i] != cur[i]) {
				end = ++i;
				continue;
			}
			while (g < MIG_PAGE_SIZE && g - i <= GAP_MERGE &&
			       old[g] == cur[g])
				g++;
			if (g == MIG_PAGE_SIZE || g - i > GAP_MERGE)
				break;
			if (g == i) { /* changed between the two reads */
				end = ++i;
				continue;
			}
			i = g; /* a short gap, then a changed byte: go on */
		}
		need = varint_len(start - done) + varint_len(end - start) +
		       (end - start);
		if (need > cap - k)
			return -ENOSPC;
		k += put_varint(out + k, start - done);
		k += put_varint(out + k, end - start);
		memcpy(out + k, cur + start, end - start);
		k += end - start;
		done = end;
		i = end;
	}
	return (long)k;
}

/* A canonical varint of at most VARINT_MAX bytes at d[*pos..len). */
static int get_varint(const uint8_t *d, size_t len, size_t *pos, size_t *v)
{
	size_t p = *pos;

	if (p >= len)
		return -EBADMSG;
	if (!(d[p] & 0x80)) {
		*v = d[p];
		*pos = p + 1;
		return 0;
	}
	/* two bytes: the second ends it and is not 0 (that would be a
	 * one-byte value written long) */
	if (p + 1 >= len || (d[p + 1] & 0x80) || !d[p + 1])
		return -EBADMSG;
	*v = (size_t)(d[p] & 0x7f) | (size_t)d[p + 1] << 7;
	*pos = p + VARINT_MAX;
	return 0;
}

int mig__delta_check(const uint8_t *d, size_t len)
{
	size_t pos = 0, off = 0;

	while (pos < len) {
		size_t skip, n;

		if (get_varint(d, len, &pos, &skip) < 0 ||
		    get_varint(d, len, &pos, &n) < 0 || n == 0 ||
		    skip > MIG_PAGE_SIZE - off || n > MIG_PAGE_SIZE - off - skip ||
		    n > len - pos)
			return -EBADMSG;
		off += skip + n;
		pos += n;
	}
	return 0;
}

int mig__delta_apply(uint8_t *page, const uint8_t *d, size_t len)
{
	size_t pos = 0, off = 0;

	if (mig__delta_check(d, len) < 0)
		return -EBADMSG;
	while (pos < len) {
		size_t skip = 0, n = 0;

		(void)get_varint(d, len, &pos, &skip);
		(void)get_varint(d, len, &pos, &n);
		off += skip;
		memcpy(page + off, d + pos, n);
		off += n;
		pos += n;
	}
	return 0;
}
