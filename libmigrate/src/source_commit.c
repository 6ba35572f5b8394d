/*
 * Stop-and-copy and commitment (Clark et al.'s stages 3 and 4): pause, the
 * VM state, the last pages, Complete; then the destination's Commit, which
 * connection 0's thread answers with Activate (source_conn.c), and the
 * downtime measured from the pause to the destination's resume.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "source.h"
#include "state.h"

/* Stop-and-copy: up to this many last pages are encoded by the engine
 * itself (finish_conn()): a few pages cost less than waking a connection
 * thread, which on a busy CPU can take 100 us. */
#define FINAL_INLINE_PAGES 64u
/* Early VM state: what has gathered goes out once it is this big, and
 * the rest at the end. Small items (a config, a UART) then ride with the
 * next instead of costing a system call each, while every vCPU or VM
 * item goes at once, for the destination to load while this thread saves
 * the next. (In one side-by-side run of 10 idle-4G migrations each: 4
 * KiB, which holds the VM item back until the first vCPU's is saved, a
 * 0.73 ms median downtime; every item alone 0.69 ms; 1 KiB 0.59 ms.) */
#define STATE_SEND_MIN 1024u
#define COMMIT_TIMEOUT_MS 30000u
#define ACTIVATED_TIMEOUT_MS 10000u

/* Encode a chunk into `opaque` (a struct chunk_out) with its connection's
 * encoder, from the engine thread. */
struct chunk_out {
	struct src_conn *c;
	mig_buf *out;
};

static int chunk_to_buf(mig_source *s, struct item *it, void *opaque)
{
	struct chunk_out *o = opaque;
	int r;

	(void)s;
	r = mig__src_encode_chunk(o->c, it, o->out);
	free(it);
	return r;
}

/*
 * The stop-and-copy round ends on connection `conn` with its last pages
 * (with `pages`: the caller did not queue them), RoundEnd and Complete.
 * When the connection has written everything else, this thread does its
 * thread's work: encodes those pages and writes them with both messages,
 * in one write, its page count final (as write_now() in source_conn.c).
 * Otherwise they are queued, and its thread packs Complete once it has
 * counted the pages before it.
 */
static int finish_conn(mig_source *s, uint32_t conn, int pages,
		       const uint8_t *hash, int has_hash)
{
	struct src_conn *c = &s->conns[conn];
	Mig__Wire__RoundEnd re = MIG__WIRE__ROUND_END__INIT;
	struct chunk_out co = { c, NULL };
	struct src_move mv = { MIG_PS_CONFIG, MIG_PS_CONFIG };
	mig_error step_err = { 0 };
	mig_buf b = { 0 };
	size_t done = 0;
	int idle, raw = 0, r = 0;

	pthread_mutex_lock(&s->lock);
	idle = mig__src_borrow_locked(c);
	pthread_mutex_unlock(&s->lock);
	if (!idle) {
		if (pages)
			(void)mig__src_queue_round(s, conn, &r);
		if (r < 0)
			return mig__err(&s->result, r, "out of memory queueing pages");
	} else if (pages) {
		co.out = &b;
		(void)mig__src_for_marked(s, conn, chunk_to_buf, &co, &r);
	}
	re.round = s->round;
	if (r == 0)
		r = mig__src_pack_simple(&b, MIG__WIRE__ENVELOPE__MSG_ROUND_END, &re);
	if (idle) {
		pthread_mutex_lock(&s->lock);
		if (r == 0)
			r = conn ? 0 : mig__src_step_locked(s, MIG__WIRE__ENVELOPE__MSG_COMPLETE,
							 0, 1, &mv, &step_err);
		if (r == 0)
			r = mig__src_pack_complete(c->pages, hash, has_hash, &b);
		if (r == 0)
			done = mig__src_borrowed_write_locked(s, c, &b, &raw);
		mig__src_give_back_locked(s, c);
		pthread_mutex_unlock(&s->lock);
		mig__src_log_move(s, &mv);
	}
	if (r < 0) {
		mig__buf_free(&b);
		if (step_err.code)
			return mig__err(&s->result, r, "%s", step_err.msg);
		return mig__err(&s->result, r, "connection %u: last pages, round end "
				"and completion: %s", conn, mig_strerror(r));
	}
	if ((r = mig__src_queue_rest(s, conn, &b, done, raw)) == 0 && !idle) {
		struct item *it = calloc(1, sizeof(*it));
		if (!it)
			return mig__err(&s->result, -ENOMEM, "queueing completion");
		it->is_complete = 1;
		it->has_hash = has_hash;
		memcpy(it->hash, hash, sizeof(it->hash));
		r = mig__src_queue(s, conn, it);
	}
	if (r < 0)
		return mig__err(&s->result, r, "queueing completion");
	return 0;
}

/* Where the VM state goes while the VMM saves it. */
struct state_out {
	mig_source *s;
	mig_buf *b;        /* frames not sent yet */
	int stream;        /* send items as they are added */
	uint32_t n;        /* items */
};

static int state_item_out(void *opaque, const struct mig_state_item *it)
{
	struct state_out *o = opaque;
	Mig__Wire__StateBlob sb = MIG__WIRE__STATE_BLOB__INIT;
	int r;

	sb.name = (char *)it->name;
	sb.data.data = it->data;
	sb.data.len = it->len;
	r = mig__src_pack_simple(o->b, MIG__WIRE__ENVELOPE__MSG_STATE, &sb);
	if (r == 0 && o->stream && o->b->len >= STATE_SEND_MIN)
		r = mig__src_send_frames(o->s, 0, o->b, 1);
	if (r == 0)
		o->n++;
	return r;
}

/*
 * Have the VMM save the VM state into frames after those already in `b`.
 * With FEATURE_EARLY_STATE the items go out as the VMM adds them, small
 * ones together with the next (every system call is downtime), so that
 * the destination loads the first vCPU while this thread saves the next;
 * the last ones and StateEnd stay in `b` for the caller to send. Without
 * it, everything stays in `b`.
 */
static int put_state(mig_source *s, mig_buf *b)
{
	int early = (s->features & MIG__WIRE__FEATURE__FEATURE_EARLY_STATE) != 0;
	struct state_out o = { s, b, early, 0 };
	mig_state st;
	int r;

	mig__state_init(&st);
	st.on_add = state_item_out;
	st.on_add_opaque = &o;
	r = s->vm.vm.ops->save_state(s->vm.vm.opaque, &st, &s->result);
	mig__state_clear(&st);
	if (r < 0) {
		mig__err_prefix(&s->result, "saving VM state: ");
		return r;
	}
	if (early) {
		Mig__Wire__StateEnd se = MIG__WIRE__STATE_END__INIT;
		se.items = o.n;
		r = mig__src_sent(s, MIG__WIRE__ENVELOPE__MSG_STATE_END);
		if (r < 0)
			return r;
		r = mig__src_pack_simple(b, MIG__WIRE__ENVELOPE__MSG_STATE_END, &se);
	}
	if (r < 0)
		return mig__err(&s->result, r, "sending VM state");
	return 0;
}

/* Disarm the commit answer; returns whether Activate already went out
 * (then the destination owns the VM and this copy must never run again). */
int mig__src_activation_went_out(mig_source *s)
{
	int sent;

	pthread_mutex_lock(&s->lock);
	s->commit_armed = 0;
	sent = s->activate_sent;
	pthread_mutex_unlock(&s->lock);
	return sent;
}

/*
 * A Commit came and no Activate went out for it. The protocol table lets
 * a Commit through only after this side's own Complete, which is armed
 * to answer it, so Activate could not be written, or the session failed
 * just before (the answer was refused), or, a bug here, the answer was
 * not armed. Either way the destination must not run the VM and this
 * copy still is the VM: an error, and the failure path resumes it.
 */
static int commit_unanswered(mig_source *s)
{
	char why[sizeof(s->proto_err.msg)] = "";
	int code = 0;

	pthread_mutex_lock(&s->lock);
	if (s->proto_err.code) {
		code = s->proto_err.code;
		snprintf(why, sizeof(why), "%s", s->proto_err.msg);
	} else if (s->conns[0].error) {
		code = s->conns[0].error;
		snprintf(why, sizeof(why), "%s", s->conns[0].errmsg);
	}
	pthread_mutex_unlock(&s->lock);
	if (code)
		return mig__err(&s->result, code,
				"destination committed; activating it failed: %s", why);
	return mig__err(&s->result, MIG_E_PROTOCOL,
			"destination committed, and Activate was not armed");
}

/*
 * Clark's stop-and-copy: pause, the VM state, the last pages, Complete.
 * Nothing waits for anything else until the commit: each connection keeps
 * its order. With FEATURE_EARLY_STATE the state goes first, written from
 * this thread as the VMM saves it, and the destination loads it while the
 * rest follows; otherwise the connection threads encode and send the last
 * pages while this thread saves the state, which the destination loads at
 * the end. A few last pages (an idle guest's) this thread encodes itself
 * and writes with each connection's end, so no other thread has to wake
 * up; they then follow the state (and the verify hash) in either case.
 */
int mig__src_stop_and_copy(mig_source *s)
{
	int early = (s->features & MIG__WIRE__FEATURE__FEATURE_EARLY_STATE) != 0;
	Mig__Wire__Switchover sw = MIG__WIRE__SWITCHOVER__INIT;
	struct round_mark m;
	mig_buf b = { 0 };
	int r, inline_pages;
	long d;

	mig__src_set_phase(s, MIG_PHASE_STOPCOPY);
	/* The switchover goes out while the VM still runs: the destination
	 * wakes up to it (and then polls) during the pause, not after. Should
	 * the pause fail, the failure path aborts the destination as usual. */
	sw.round = s->round + 1;
	sw.paused_at_ns = mig__now_us() * 1000;
	if ((r = mig__src_sent(s, MIG__WIRE__ENVELOPE__MSG_SWITCHOVER)) < 0)
		return r;
	r = mig__src_send_simple(s, 0, MIG__WIRE__ENVELOPE__MSG_SWITCHOVER, &sw, 1);
	if (r < 0)
		return mig__err(&s->result, r, "queueing switchover");

	/* The downtime starts here: the vCPUs stop as they are kicked. */
	uint64_t t_pause = mig__now_us();
	mig__log(&s->cb, s->vm.vm.opaque, MIG_LOG_DEBUG, "stop-and-copy: pausing the VM");
	r = s->vm.vm.ops->pause(s->vm.vm.opaque, &s->result);
	if (r < 0) {
		mig__err_prefix(&s->result, "pausing the VM: ");
		return r;
	}
	s->paused = 1;
	mig__log(&s->cb, s->vm.vm.opaque, MIG_LOG_DEBUG, "stop-and-copy: VM paused");
	pthread_mutex_lock(&s->lock);
	s->stats->downtime_us = 0;
	pthread_mutex_unlock(&s->lock);

	if (early && (r = put_state(s, &b)) < 0) {
		mig__buf_free(&b);
		return r;
	}
	/* The last look at the dirty log, with every vCPU out of KVM_RUN,
	 * and at what the VMM marked (its devices are quiet now too). */
	d = mig__dirty_sync_final(s->dirty, s->send_bm, &s->result);
	if (d < 0) {
		mig__buf_free(&b);
		mig__err_prefix(&s->result, "dirty log (%s): ",
				mig__dirty_name(s->dirty));
		return (int)d;
	}
	d += mig__src_merge_marked(s, 1);
	/* The rest of the state goes with the round's start, in one write. */
	if ((r = mig__src_round_begin(s, &m, &b)) < 0) {
		mig__buf_free(&b);
		return r;
	}
	if ((r = mig__src_send_frames(s, 0, &b, 1)) < 0)
		return mig__err(&s->result, r, "queueing VM state");
	/* A few last pages (an idle guest's timer ticks) this thread encodes
	 * itself with the round's end (finish_conn()); more are the
	 * connection threads' work, in parallel. */
	inline_pages = mig__src_count_marked_upto(s, FINAL_INLINE_PAGES + 1) <= FINAL_INLINE_PAGES;
	if (!inline_pages) {
		(void)mig__src_queue_round(s, -1, &r);
		if (r < 0)
			return mig__err(&s->result, r, "out of memory queueing pages");
	}
	if (!early) {
		if ((r = put_state(s, &b)) < 0) {
			mig__buf_free(&b);
			return r;
		}
		if ((r = mig__src_send_frames(s, 0, &b, 0)) < 0)
			return mig__err(&s->result, r, "queueing VM state");
	}
	mig__log(&s->cb, s->vm.vm.opaque, MIG_LOG_DEBUG, "stop-and-copy: state sent, last pages counted");

	uint8_t hash[16] = { 0 };
	int has_hash = 0;
	if (s->params.verify) {
		r = mig__hash_regions(s->vm.regions, s->vm.vm.nr_regions, hash,
				      &s->result);
		if (r < 0)
			return r;
		has_hash = 1;
	}
	pthread_mutex_lock(&s->lock);
	s->commit_armed = 1;
	pthread_mutex_unlock(&s->lock);
	for (uint32_t i = 0; i < s->nconns; i++)
		if ((r = finish_conn(s, i, inline_pages, hash, has_hash)) < 0)
			return r;
	if ((r = mig__src_wait_drained(s)) < 0) {
		if (!mig__src_activation_went_out(s))
			return r;
		/* While this thread slept, connection 0's thread answered the
		 * commit and the destination resumed and hung up: committed. */
		memset(&s->result, 0, sizeof(s->result));
		r = 0;
	}
	mig__src_round_record(s, &m, 0);
	mig__log(&s->cb, s->vm.vm.opaque, MIG_LOG_DEBUG, "stop-and-copy: all sent, waiting for commit");

	/* Commitment: once Commit is read, this copy must never run again.
	 * Connection 0's thread answers it with Activate unless this thread
	 * has given up first (disarmed under the lock). */
	mig__src_set_phase(s, MIG_PHASE_COMMIT);
	Mig__Wire__Envelope *env;
	int activated;
	r = mig__src_wait_msg(s, 0, MIG__WIRE__ENVELOPE__MSG_COMMIT, COMMIT_TIMEOUT_MS, &env);
	uint64_t t_sent;
	activated = mig__src_activation_went_out(s);
	pthread_mutex_lock(&s->lock);
	t_sent = s->activate_sent_us;
	pthread_mutex_unlock(&s->lock);
	if (r == 0) {
		mig__msg_free(env);
		if (!activated)
			return commit_unanswered(s);
	}
	if (r < 0 && !activated)
		return r;
	if (r < 0) {
		/* Activate went out before this thread saw the error (a
		 * cancel, or the connection failing after it): committed. */
		mig__log(&s->cb, s->vm.vm.opaque, MIG_LOG_WARN,
			 "destination committed; after that: %s", s->result.msg);
		memset(&s->result, 0, sizeof(s->result));
		r = 0;
	}
	s->committed = 1;
	mig__log(&s->cb, s->vm.vm.opaque, MIG_LOG_DEBUG, "committed");

	uint64_t t_act = mig__now_us();
	uint64_t resume_us = 0;
	r = mig__src_wait_msg(s, 0, MIG__WIRE__ENVELOPE__MSG_ACTIVATED,
			      ACTIVATED_TIMEOUT_MS, &env);
	if (r < 0) {
		/* Committed: the image is the destination's now. Say that the
		 * activation was not confirmed, but never resume here. */
		mig__log(&s->cb, s->vm.vm.opaque, MIG_LOG_WARN,
			 "destination committed but did not confirm activation: %s",
			 s->result.msg);
		memset(&s->result, 0, sizeof(s->result));
		t_act = mig__now_us();
	} else {
		resume_us = env->activated->resume_us;
		t_act = mig__now_us();
		mig__msg_free(env);
	}
	/* Downtime: pause until the destination's vCPUs run, on two clocks
	 * that need not agree. The resume happened after Activate left plus
	 * the destination's resume time, and before Activated came back; the
	 * two trips are taken as equally long, so the error is at most half
	 * the round trip's transit (plus wake-ups) either way. */
	if (t_sent < t_pause)
		t_sent = t_pause;
	if (t_act < t_sent)
		t_act = t_sent;
	uint64_t lo = t_sent - t_pause + resume_us;
	uint64_t hi = t_act - t_pause;
	uint64_t down = lo < hi ? lo + (hi - lo) / 2 : hi;
	pthread_mutex_lock(&s->lock);
	s->stats->downtime_us = down;
	pthread_mutex_unlock(&s->lock);
	return 0;
}
