/*
 * The source's send bitmaps: what the dirty log and the VMM's marks add,
 * chunks of marked pages for the connections, and encoding a chunk.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "source.h"

/* Encode the pages of a chunk that are still marked in the send bitmap. */
int mig__src_encode_chunk(struct src_conn *c, const struct item *it, mig_buf *out)
{
	mig_source *s = c->s;
	const mig_region *r = &s->vm.regions[it->region];
	uint64_t *bm = s->send_bm[it->region];
	uint64_t idx[MIG_CHUNK_PAGES];
	const uint8_t *data[MIG_CHUNK_PAGES];
	size_t n = 0;
	mig_enc_stats st = { 0 };
	mig_error err = { 0 };
	int ret;

	/* Re-arm write tracking just before reading, so a write that lands
	 * after this point is seen by the next sync (clear-log mode). */
	if (!it->final) {
		ret = mig__dirty_rearm(s->dirty, it->region, it->first, it->count,
				       &err);
		if (ret < 0)
			return ret;
	}
	if (it->resident_only) {
		/* Round 1: memory the guest never touched reads as zeros; skip
		 * it without reading (reading would allocate it). */
		long k = mig__mem_resident(r, it->first, it->count,
					   s->absent_is_zero[it->region],
					   s->resident_bm[it->region], &err);
		if (k < 0)
			return (int)k;
	}
	for (uint64_t p = it->first; p < it->first + it->count; p++) {
		if (!mig__test_bit(bm, p))
			continue;
		bm[p / 64] &= ~(1ull << (p % 64));
		if (it->resident_only && !mig__test_bit(s->resident_bm[it->region], p))
			continue;
		idx[n] = p;
		data[n] = (const uint8_t *)r->hva + p * MIG_PAGE_SIZE;
		n++;
	}
	if (!n)
		return 0;
	ret = mig__enc_batch(c->enc, it->region, idx, data, n, out, &st);
	if (ret < 0)
		return ret;
	pthread_mutex_lock(&s->lock);
	c->pages += st.pages;
	c->zero_pages += st.zero_pages;
	c->raw_bytes += st.raw_bytes;
	pthread_mutex_unlock(&s->lock);
	return 0;
}

/* The connection that carries the chunk at page `first` of region `r`:
 * a page always goes on the same one, so a newer copy can never overtake
 * an older one. */
uint32_t mig__src_chunk_conn(const mig_source *s, uint32_t r, uint64_t first)
{
	return (uint32_t)((first / MIG_CHUNK_PAGES + r) % s->nconns);
}

/*
 * Call fn(s, it, opaque) with an item for every chunk of the send bitmaps
 * that has pages marked, on connection `conn` only (or all, if -1); fn
 * takes the item's memory. Stops at fn's first error. Returns the pages
 * marked in those chunks.
 */
uint64_t mig__src_for_marked(mig_source *s, long conn,
				  int (*fn)(mig_source *, struct item *, void *),
				  void *opaque, int *err)
{
	uint64_t marked_total = 0;

	*err = 0;
	for (uint32_t r = 0; r < s->vm.vm.nr_regions; r++) {
		uint64_t npages = s->vm.regions[r].size / MIG_PAGE_SIZE;
		uint64_t *bm = s->send_bm[r];
		for (uint64_t first = 0; first < npages; first += MIG_CHUNK_PAGES) {
			uint32_t count = (uint32_t)MIG_MIN(MIG_CHUNK_PAGES, npages - first);
			uint64_t marked = 0;
			if (conn >= 0 && mig__src_chunk_conn(s, r, first) != (uint32_t)conn)
				continue;
			for (uint64_t w = first / 64; w < (first + count + 63) / 64; w++)
				marked += mig__popcount(bm[w]);
			if (!marked)
				continue;
			struct item *it = calloc(1, sizeof(*it));
			if (!it) {
				*err = -ENOMEM;
				return marked_total;
			}
			it->is_chunk = 1;
			it->resident_only = s->round == 1;
			it->final = s->paused;
			it->region = r;
			it->first = first;
			it->count = count;
			if ((*err = fn(s, it, opaque)) < 0)
				return marked_total;
			marked_total += marked;
		}
	}
	return marked_total;
}

/* Move what mig_mark_dirty() collected into the send bitmaps; returns the
 * pages not marked there already. `last`: no mark is taken after this. */
long mig__src_merge_marked(mig_source *s, int last)
{
	long n = 0;

	pthread_mutex_lock(&s->lock);
	/* Most VMMs mark nothing: two passes over every bitmap for nothing
	 * would cost ~30 us per 4 GiB, in the downtime too. */
	for (uint32_t r = 0; s->marks_new && r < s->vm.vm.nr_regions; r++) {
		uint64_t words = mig__bitmap_words(s->vm.regions[r].size / MIG_PAGE_SIZE);
		n += (long)mig__bitmap_or(s->send_bm[r], s->marked_bm[r], words);
		memset(s->marked_bm[r], 0, words * sizeof(uint64_t));
	}
	s->marks_new = 0;
	if (last)
		s->marks_closed = 1;
	pthread_mutex_unlock(&s->lock);
	return n;
}

/* Sync the dirty log, and the VMM's marks, into the send bitmaps; returns
 * pages newly marked. */
long mig__src_sync_dirty(mig_source *s)
{
	long n = mig__dirty_sync(s->dirty, s->send_bm, &s->result);
	if (n < 0)
		mig__err_prefix(&s->result, "dirty log (%s): ",
				mig__dirty_name(s->dirty));
	else
		n += mig__src_merge_marked(s, 0);
	return n;
}

MIG_API int mig_mark_dirty(mig_source *s, uint64_t gpa, uint64_t len)
{
	uint64_t end = gpa + len;
	int r = 0;

	if (!s || !len || end < gpa)
		return -EINVAL;
	/* Every page of the range must be guest RAM: walk it region by
	 * region (regions do not overlap). */
	for (uint64_t at = gpa; at < end;) {
		const mig_region *g = NULL;
		for (uint32_t i = 0; i < s->vm.vm.nr_regions && !g; i++)
			if (at >= s->vm.regions[i].gpa &&
			    at - s->vm.regions[i].gpa < s->vm.regions[i].size)
				g = &s->vm.regions[i];
		if (!g)
			return -EINVAL;
		at = MIG_MIN(end, g->gpa + g->size);
	}
	pthread_mutex_lock(&s->lock);
	if (s->marks_closed) {
		r = -EBUSY;
	} else if (s->marked_bm) {
		for (uint32_t i = 0; i < s->vm.vm.nr_regions; i++) {
			const mig_region *g = &s->vm.regions[i];
			uint64_t lo = MIG_MAX(gpa, g->gpa);
			uint64_t hi = MIG_MIN(end, g->gpa + g->size);
			for (uint64_t a = lo; a < hi;
			     a = (a & ~(uint64_t)(MIG_PAGE_SIZE - 1)) + MIG_PAGE_SIZE) {
				uint64_t p = (a - g->gpa) / MIG_PAGE_SIZE;
				s->marked_bm[i][p / 64] |= UINT64_C(1) << (p % 64);
			}
		}
		s->marks_new = 1;
	}
	pthread_mutex_unlock(&s->lock);
	return r;
}

/* Pages marked in the send bitmaps; past `limit`, some number above it. */
uint64_t mig__src_count_marked_upto(mig_source *s, uint64_t limit)
{
	uint64_t n = 0;
	for (uint32_t r = 0; r < s->vm.vm.nr_regions && n <= limit; r++) {
		uint64_t words = mig__bitmap_words(s->vm.regions[r].size / MIG_PAGE_SIZE);
		for (uint64_t w = 0; w < words && n <= limit; w++)
			n += mig__popcount(s->send_bm[r][w]);
	}
	return n;
}

uint64_t mig__src_count_marked(mig_source *s)
{
	return mig__src_count_marked_upto(s, UINT64_MAX);
}

void mig__src_free_bitmaps(mig_source *s, uint64_t **bms)
{
	if (!bms)
		return;
	for (uint32_t r = 0; r < s->vm.vm.nr_regions; r++)
		free(bms[r]);
	free(bms);
}

uint64_t **mig__src_alloc_bitmaps(mig_source *s)
{
	uint64_t **bms = calloc(s->vm.vm.nr_regions, sizeof(*bms));
	if (!bms)
		return NULL;
	for (uint32_t r = 0; r < s->vm.vm.nr_regions; r++) {
		bms[r] = calloc(mig__bitmap_words(s->vm.regions[r].size / MIG_PAGE_SIZE), 8);
		if (!bms[r]) {
			mig__src_free_bitmaps(s, bms);
			return NULL;
		}
	}
	return bms;
}
