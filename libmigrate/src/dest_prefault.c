/*
 * Memory hints: the pages round 1 will bring, faulted in by two threads
 * ahead of the stream.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "dest.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/*
 * Fault in the pages the source said round 1 will bring, ahead of the
 * stream and on other cores: MADV_POPULATE_WRITE allocates without
 * writing, so racing the decoder on the same page is harmless. Where the
 * kernel lacks it (before 5.14) the hint is simply dropped.
 *
 * Under d->lock: the next run of hinted pages (at most PREFAULT_RUN), or
 * 0 when every hint has been handed out. */
static uint64_t next_run(mig_dest *d, uint8_t **addr)
{
	struct hint *h;

	while ((h = d->hints)) {
		uint64_t n = h->nwords * 64, i = h->pos, j;

		while (i < n && !(h->words[i / 64] >> (i % 64) & 1))
			i = (h->words[i / 64] >> (i % 64)) ? i + 1 : (i | 63) + 1;
		if (i >= n) {
			d->hints = h->next;
			free(h);
			continue;
		}
		for (j = i; j < n && j - i < PREFAULT_RUN &&
			    (h->words[j / 64] >> (j % 64) & 1); j++)
			;
		h->pos = j;
		*addr = (uint8_t *)d->vm.regions[h->region].hva +
			(h->first_page + i) * MIG_PAGE_SIZE;
		return j - i;
	}
	return 0;
}

static void *prefault_main(void *arg)
{
	mig_dest *d = arg;

	mig__thread_name("mig-prefault");
	for (;;) {
		uint8_t *addr = NULL;
		uint64_t n = 0;

		pthread_mutex_lock(&d->lock);
		if (!d->prefault_stop)
			n = next_run(d, &addr);
		if (!n)
			d->prefault_running--;
		pthread_mutex_unlock(&d->lock);
		if (!n)
			return NULL;
		if (madvise(addr, n * MIG_PAGE_SIZE, MADV_POPULATE_WRITE) < 0 &&
		    (errno == EINVAL || errno == ENOMEM)) {
			/* Unsupported, or out of memory: no more hints. */
			pthread_mutex_lock(&d->lock);
			d->prefault_stop = 1;
			pthread_mutex_unlock(&d->lock);
		}
	}
}

/* Loop thread: wait for prefault threads that have run out of work. */
void mig__dst_prefault_join(mig_dest *d)
{
	for (int i = 0; i < PREFAULT_THREADS; i++) {
		if (d->prefault_thread_ok[i]) {
			pthread_join(d->prefault_thread[i], NULL);
			d->prefault_thread_ok[i] = 0;
		}
	}
}

void mig__dst_on_hint(mig_dest *d, const Mig__Wire__MemoryHint *m)
{
	uint64_t npages, nwords = m->bitmap.len / 8;
	struct hint *h;

	if (m->region >= d->vm.vm.nr_regions || m->first_page % 64 ||
	    m->bitmap.len % 8 || m->bitmap.len > MIG_HINT_BITMAP_MAX) {
		mig__dst_fail(d, MIG_E_PROTOCOL, "malformed memory hint");
		return;
	}
	npages = d->vm.regions[m->region].size / MIG_PAGE_SIZE;
	if (m->first_page >= npages || nwords * 64 > npages - m->first_page + 63) {
		mig__dst_fail(d, MIG_E_PROTOCOL, "memory hint beyond region %u", m->region);
		return;
	}
	h = malloc(sizeof(*h) + nwords * 8);
	if (!h)
		return; /* only a hint */
	h->next = NULL;
	h->region = m->region;
	h->first_page = m->first_page;
	h->nwords = nwords;
	h->pos = 0;
	memcpy(h->words, m->bitmap.data, nwords * 8);
	/* The last word may reach past the region: drop those bits. */
	if ((m->first_page + nwords * 64) > npages) {
		uint64_t keep = npages - m->first_page - (nwords - 1) * 64;
		h->words[nwords - 1] &= keep >= 64 ? ~0ull : (1ull << keep) - 1;
	}
	pthread_mutex_lock(&d->lock);
	struct hint **pp = &d->hints;
	while (*pp)
		pp = &(*pp)->next;
	*pp = h;
	/* Threads still running take the new hint; once all have run out
	 * of work (and so are exiting), start a new set. */
	int start = !d->prefault_running && !d->prefault_stop;
	if (start)
		d->prefault_running = PREFAULT_THREADS;
	pthread_mutex_unlock(&d->lock);
	if (!start)
		return;
	mig__dst_prefault_join(d);
	for (int i = 0; i < PREFAULT_THREADS; i++) {
		d->prefault_thread_ok[i] = mig__thread_start(&d->prefault_thread[i], prefault_main, d) == 0;
		if (!d->prefault_thread_ok[i]) {
			pthread_mutex_lock(&d->lock);
			d->prefault_running--;
			pthread_mutex_unlock(&d->lock);
		}
	}
}
