/*
 * Iterative pre-copy (Clark et al.'s stage 2): rounds of the pages marked
 * since the last, each acknowledged by the destination, their stats, and
 * the policy's choice to go on, throttle, or switch over.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"
#include "source.h"

/* A round's acknowledgement may take as long as the round's data needs to
 * cross a slow link: no fixed limit is right, so this is generous and
 * params.timeout_ms takes over when set. */
#define ROUND_ACK_TIMEOUT_MS 600000u

void mig__src_set_phase(mig_source *s, mig_phase ph)
{
	pthread_mutex_lock(&s->lock);
	s->stats->phase = ph;
	pthread_mutex_unlock(&s->lock);
}

static int chunk_to_queue(mig_source *s, struct item *it, void *opaque)
{
	(void)opaque;
	return mig__src_queue(s, mig__src_chunk_conn(s, it->region, it->first), it);
}

/* Queue every marked chunk of the send bitmaps (on connection `conn`
 * only, or all if -1). Returns pages queued. */
uint64_t mig__src_queue_round(mig_source *s, long conn, int *err)
{
	return mig__src_for_marked(s, conn, chunk_to_queue, NULL, err);
}

int mig__src_set_throttle(mig_source *s, unsigned pct)
{
	mig_error e = { 0 };
	int r;

	if (!s->vm.vm.ops->throttle || pct == s->throttle_pct)
		return 0;
	r = s->vm.vm.ops->throttle(s->vm.vm.opaque, pct, &e);
	if (r < 0) {
		mig__log(&s->cb, s->vm.vm.opaque, MIG_LOG_WARN,
			 "throttle to %u%% failed: %s", pct, e.msg);
		return r;
	}
	s->throttle_pct = pct;
	pthread_mutex_lock(&s->lock);
	s->stats->throttle_pct = pct;
	pthread_mutex_unlock(&s->lock);
	return 0;
}

static void report_progress(mig_source *s)
{
	if (!s->cb.progress)
		return;
	mig_stats *copy = malloc(sizeof(*copy));
	if (!copy)
		return;
	pthread_mutex_lock(&s->lock);
	*copy = *s->stats;
	pthread_mutex_unlock(&s->lock);
	s->cb.progress(copy, s->vm.vm.opaque);
	free(copy);
}

/* Start a round: its mark, and RoundStart appended to `b`, for the caller
 * to send on connection 0 before the round's pages. */
int mig__src_round_begin(mig_source *s, struct round_mark *m, mig_buf *b)
{
	Mig__Wire__RoundStart rs = MIG__WIRE__ROUND_START__INIT;
	int r;

	m->t0 = mig__now_us();
	s->round++;
	mig__src_counters(s, &m->bytes, &m->pages, &m->zero, &m->raw);
	rs.round = s->round;
	r = mig__src_pack_simple(b, MIG__WIRE__ENVELOPE__MSG_ROUND_START, &rs);
	if (r < 0)
		return mig__err(&s->result, r, "queueing round start");
	return 0;
}

/* Start a round: RoundStart, then every marked chunk, queued. */
static int round_queue(mig_source *s, struct round_mark *m)
{
	mig_buf b = { 0 };
	int r;

	if ((r = mig__src_round_begin(s, m, &b)) < 0) {
		mig__buf_free(&b);
		return r;
	}
	if ((r = mig__src_send_frames(s, 0, &b, 0)) < 0)
		return mig__err(&s->result, r, "queueing round start");
	(void)mig__src_queue_round(s, -1, &r);
	if (r < 0)
		return mig__err(&s->result, r, "out of memory queueing pages");
	return 0;
}

/* A round ends on every connection, queued after its pages. */
static int round_end_queue(mig_source *s)
{
	Mig__Wire__RoundEnd re = MIG__WIRE__ROUND_END__INIT;
	int r = 0;

	re.round = s->round;
	for (uint32_t i = 0; i < s->nconns && r == 0; i++)
		r = mig__src_send_simple(s, i, MIG__WIRE__ENVELOPE__MSG_ROUND_END, &re, 0);
	if (r < 0)
		return mig__err(&s->result, r, "queueing round end");
	return 0;
}

/* The round's stats, once its pages are on the wire. */
void mig__src_round_record(mig_source *s, const struct round_mark *m, uint64_t d)
{
	uint64_t b1, p1, z1, raw1, b0 = m->bytes, p0 = m->pages, z0 = m->zero;

	mig__src_counters(s, &b1, &p1, &z1, &raw1);
	uint64_t dur = mig__now_us() - m->t0;
	pthread_mutex_lock(&s->lock);
	mig_stats *st = s->stats;
	st->rounds = s->round;
	st->pages_sent = p1;
	st->zero_pages = z1;
	st->raw_bytes = p1 * MIG_PAGE_SIZE;
	st->bytes_on_wire = b1;
	if (st->nr_round_stats < MIG_MAX_ROUNDS_STATS) {
		mig_round_stats *rs2 = &st->round[st->nr_round_stats++];
		rs2->round = s->round;
		rs2->pages = p1 - p0;
		rs2->zero_pages = z1 - z0;
		rs2->bytes = b1 - b0;
		rs2->raw_bytes = (p1 - p0) * MIG_PAGE_SIZE;
		rs2->dirty_pages = (uint64_t)d;
		rs2->duration_us = dur;
		rs2->dirty_rate = dur ? (double)d * 1e6 / (double)dur : 0;
		rs2->throughput = dur ? (double)(b1 - b0) * 1e6 / (double)dur : 0;
	}
	pthread_mutex_unlock(&s->lock);
}

/*
 * One pre-copy round: queue everything marked, wait until it is on the
 * wire and the destination has written it (its acknowledgement, so the
 * next decision sees the real end-to-end rate and no backlog is left in
 * socket buffers to lengthen the downtime), then collect what the guest
 * dirtied meanwhile. Fills the round's stats.
 */
static int run_round(mig_source *s, uint64_t *dirtied)
{
	struct round_mark m;
	Mig__Wire__Envelope *ack;
	int r;
	long d;

	if ((r = round_queue(s, &m)) < 0 || (r = mig__src_wait_drained(s)) < 0)
		return r;
	uint64_t t_end = mig__now_us();
	if ((r = round_end_queue(s)) < 0)
		return r;
	uint64_t limit = s->params.timeout_ms ? s->params.timeout_ms
					      : ROUND_ACK_TIMEOUT_MS;
	r = mig__src_wait_msg(s, 0, MIG__WIRE__ENVELOPE__MSG_STATS, limit, &ack);
	if (r < 0)
		return r;
	if (ack->stats->round != s->round) {
		r = mig__err(&s->result, MIG_E_PROTOCOL,
			     "destination acknowledged round %u during round %u",
			     ack->stats->round, s->round);
		mig__msg_free(ack);
		return r;
	}
	mig__msg_free(ack);
	/* The acknowledgement comes one round trip or more after the round's
	 * end went out (the destination answers once it has the round's
	 * pages): each round measures the round trip again. The hello's
	 * alone, the first exchange, with the destination's set-up in it, can
	 * overstate it many times on a loaded host, and with it the fixed
	 * part of every expected downtime (mig__src_precopy()). The smallest is the
	 * best estimate. */
	uint64_t rtt = mig__now_us() - t_end;
	pthread_mutex_lock(&s->lock);
	if (rtt < s->rtt_us)
		s->rtt_us = rtt;
	pthread_mutex_unlock(&s->lock);
	d = mig__src_sync_dirty(s);
	if (d < 0)
		return (int)d;
	*dirtied = (uint64_t)d;
	mig__src_round_record(s, &m, *dirtied);
	return 0;
}

/*
 * Tell the destination which pages round 1 will bring, so that it can fault
 * its memory in while the stream runs instead of page by page as it
 * arrives (on hosts where first touch is slow, that is what bounds round 1).
 * A hint only: a page that fills or empties meanwhile is still sent right.
 */
static int send_hints(mig_source *s)
{
	if (!(s->features & MIG__WIRE__FEATURE__FEATURE_PREFAULT))
		return 0;
	for (uint32_t r = 0; r < s->vm.vm.nr_regions; r++) {
		uint64_t npages = s->vm.regions[r].size / MIG_PAGE_SIZE;
		uint64_t words = mig__bitmap_words(npages);
		uint64_t per = MIG_HINT_BITMAP_MAX / 8;
		long k = mig__mem_resident(&s->vm.regions[r], 0, npages,
					   s->absent_is_zero[r],
					   s->resident_bm[r], &s->result);
		if (k < 0)
			return (int)k;
		for (uint64_t w = 0; w < words; w += per) {
			uint64_t nw = MIG_MIN(per, words - w), any = 0;
			for (uint64_t i = 0; i < nw; i++)
				any |= s->resident_bm[r][w + i];
			if (!any)
				continue;
			Mig__Wire__MemoryHint h = MIG__WIRE__MEMORY_HINT__INIT;
			h.region = r;
			h.first_page = w * 64;
			/* Words are little endian on the wire, as on x86. */
			h.bitmap.data = (uint8_t *)&s->resident_bm[r][w];
			h.bitmap.len = nw * 8;
			int e = mig__src_send_simple(s, 0, MIG__WIRE__ENVELOPE__MSG_HINT, &h, 0);
			if (e < 0)
				return mig__err(&s->result, e, "queueing memory hints");
		}
	}
	return 0;
}

int mig__src_precopy(mig_source *s)
{
	uint64_t dirtied = 0, expect_us;
	mig_policy pol = { 0 };
	int r;

	pol.max_rounds = s->params.max_rounds;
	pol.can_throttle = s->params.throttle && s->vm.vm.ops->throttle;
	r = mig__dirty_create(&s->dirty, s->params.dirty_log, s->vm.vm.vm_fd,
			      s->vm.regions, s->vm.vm.nr_regions, s->vm.vcpu_fds,
			      s->vm.vm.nr_vcpus, &s->result);
	if (r < 0)
		return r;
	s->send_bm = mig__src_alloc_bitmaps(s);
	s->resident_bm = mig__src_alloc_bitmaps(s);
	s->absent_is_zero = calloc(s->vm.vm.nr_regions, sizeof(bool));
	uint64_t **marked = mig__src_alloc_bitmaps(s);
	if (!s->send_bm || !s->resident_bm || !s->absent_is_zero || !marked) {
		mig__src_free_bitmaps(s, marked);
		return mig__err(&s->result, -ENOMEM, "out of memory for dirty bitmaps");
	}
	/* From here on mig_mark_dirty() keeps what it is told: round 1 has
	 * not read anything yet. */
	pthread_mutex_lock(&s->lock);
	s->marked_bm = marked;
	pthread_mutex_unlock(&s->lock);
	/* Judge each region's mapping once, not per chunk of round 1. */
	for (uint32_t i = 0; i < s->vm.vm.nr_regions; i++) {
		r = mig__mem_absent_is_zero(&s->vm.regions[i], &s->result);
		if (r < 0)
			return r;
		s->absent_is_zero[i] = r;
	}
	/* Start logging before reading anything: a write from now on is seen.
	 * The first sync reports all of memory: that is round 1. */
	if ((r = mig__dirty_start(s->dirty, &s->result)) < 0)
		return r;
	long n = mig__src_sync_dirty(s);
	if (n < 0)
		return (int)n;
	if ((r = send_hints(s)) < 0)
		return r;
	pthread_mutex_lock(&s->lock);
	s->stats->setup_time_us = mig__now_us() - s->t_start_us;
	s->stats->phase = MIG_PHASE_PRECOPY;
	pthread_mutex_unlock(&s->lock);

	for (;;) {
		if ((r = run_round(s, &dirtied)) < 0)
			return r;
		mig_round_stats last;
		pthread_mutex_lock(&s->lock);
		last = s->stats->round[s->stats->nr_round_stats - 1];
		pthread_mutex_unlock(&s->lock);
		mig_round_obs obs = {
			.round = s->round,
			.remaining = mig__src_count_marked(s),
			.sent = last.pages,
			.bytes_per_page = last.pages ? (double)last.bytes / (double)last.pages
						     : MIG_PAGE_SIZE,
			.throughput = last.throughput,
		};
		obs.dirty_bps = last.dirty_rate * obs.bytes_per_page;
		/* State and the commit handshake: a few round trips. */
		pol.fixed_us = 3 * s->rtt_us + 2000;
		/* The target as it is now: mig_source_set_param() may change
		 * it while the migration runs. */
		pol.target_us = (uint64_t)__atomic_load_n(&s->params.downtime_ms,
							  __ATOMIC_RELAXED) * 1000;
		enum mig_decision dec = mig__policy_decide(&pol, &obs, &expect_us);
		pthread_mutex_lock(&s->lock);
		s->stats->expected_downtime_us = expect_us;
		pthread_mutex_unlock(&s->lock);
		report_progress(s);
		if (dec == MIG_SWITCH)
			break;
		if (dec == MIG_THROTTLE && mig__src_set_throttle(s, pol.throttle_pct) < 0)
			pol.can_throttle = 0; /* the VMM refused: stop asking */
	}
	return 0;
}
