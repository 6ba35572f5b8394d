/*
 * The source engine's waits: for a message, for every queue to drain. A
 * wait ends at the first failure, and this file decides which one is
 * reported: a cancel, the destination's Abort, a connection's error (a
 * data connection's only after a grace for connection 0 to bring the
 * destination's reason), a timeout, a stalled link.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include "source.h"

/*
 * A destination that gives up sends its reason (Abort) on connection 0 and
 * closes them all; a connection still bringing pages is reset at once, and
 * that reset can be seen here before the Abort is read. So a data
 * connection's error waits this long past two round trips for connection
 * 0 to bring the reason, which is what the user needs to read.
 */
#define PEER_REASON_GRACE_US 20000

/* When data connection c's error, if connection 0 brings no Abort, is
 * reported. */
static uint64_t grace_end_us(const mig_source *s, const struct src_conn *c)
{
	return c->error_us + PEER_REASON_GRACE_US + 2 * s->rtt_us;
}

/* The destination's Abort `env`, as the error in s->result. */
static int peer_aborted(mig_source *s, const Mig__Wire__Envelope *env)
{
	char why[MIG_PEER_TEXT_MAX];

	return mig__err(&s->result, MIG_E_PEER, "destination aborted: %s",
			mig__peer_text(env->abort->reason, why, sizeof(why)));
}

static int check_failed_locked(mig_source *s)
{
	if (s->cancel)
		return mig__err(&s->result, MIG_E_CANCELED, "canceled");
	if (s->proto_err.code)
		return mig__err(&s->result, s->proto_err.code, "%s", s->proto_err.msg);
	for (struct msg *m = s->mbox_head; m; m = m->next)
		if (m->env->msg_case == MIG__WIRE__ENVELOPE__MSG_ABORT)
			return peer_aborted(s, m->env);
	uint64_t now = mig__now_us();
	for (uint32_t i = 0; i < s->nconns; i++) {
		struct src_conn *c = &s->conns[i];
		/* Once Activate is out, the destination owns the VM and hangs
		 * up: only connection 0 has anything left to say (Activated),
		 * and the others closing first is no failure. */
		if (!c->error || (i && s->activate_sent))
			continue;
		if (i && !s->conns[0].error && now < grace_end_us(s, c))
			continue;
		return mig__err(&s->result, c->error, "connection %u: %s",
				i, c->errmsg);
	}
	if (s->params.timeout_ms &&
	    now - s->t_start_us > (uint64_t)s->params.timeout_ms * 1000)
		return mig__err(&s->result, -ETIMEDOUT,
				"took longer than timeout_ms %" PRIu32,
				s->params.timeout_ms);
	/* A link cut without a reset shows as nothing moving at all. */
	if (s->last_progress_us &&
	    now - s->last_progress_us > (uint64_t)s->params.stall_timeout_ms * 1000) {
		if (mig__src_link_moved_locked(s)) {
			s->last_progress_us = now;
			return 0;
		}
		return mig__err(&s->result, -ETIMEDOUT,
				"no progress on the connection for %" PRIu32 " ms (link down?)",
				s->params.stall_timeout_ms);
	}
	return 0;
}

/* Sleep on s->cond for up to `ms`, or until the first data connection
 * error waiting out its grace (check_failed_locked()) is due, so that it
 * is reported on time. Called with s->lock held. */
static void wait_cond_locked(mig_source *s, uint64_t ms)
{
	uint64_t now = mig__now_us(), wait_us = ms * 1000;
	struct timespec ts;

	for (uint32_t i = 1; i < s->nconns && !s->conns[0].error; i++) {
		const struct src_conn *c = &s->conns[i];
		uint64_t due = grace_end_us(s, c);
		if (c->error && !s->activate_sent)
			wait_us = MIG_MIN(wait_us, due > now ? due - now : 0);
	}
	mig__deadline_us(&ts, wait_us + 1); /* past the due time */
	pthread_cond_timedwait(&s->cond, &s->lock, &ts);
}

/* Wait until every connection has written all it was given. */
int mig__src_wait_drained(mig_source *s)
{
	int r = 0;

	pthread_mutex_lock(&s->lock);
	for (;;) {
		int busy = 0;
		if ((r = check_failed_locked(s)) < 0)
			break;
		for (uint32_t i = 0; i < s->nconns; i++)
			busy |= s->conns[i].head != NULL || s->conns[i].writes;
		if (!busy)
			break;
		wait_cond_locked(s, 100);
	}
	pthread_mutex_unlock(&s->lock);
	return r;
}

/*
 * Wait for a message of kind `want` from connection `conn`. An Abort from the
 * destination, any other message, a connection error, cancel or the
 * timeout ends the wait with an error in s->result.
 */
int mig__src_wait_msg(mig_source *s, uint32_t conn,
		    Mig__Wire__Envelope__MsgCase want, uint64_t timeout_ms,
		    Mig__Wire__Envelope **out)
{
	uint64_t until = mig__now_us() + timeout_ms * 1000;
	int r = 0;

	*out = NULL;
	pthread_mutex_lock(&s->lock);
	for (;;) {
		/* The first message from `conn`, or an Abort from any: hellos
		 * of several connections may be answered in any order. */
		struct msg *m, *prev = NULL;
		for (m = s->mbox_head; m; prev = m, m = m->next)
			if (m->conn == conn ||
			    m->env->msg_case == MIG__WIRE__ENVELOPE__MSG_ABORT)
				break;
		if (m) {
			if (prev)
				prev->next = m->next;
			else
				s->mbox_head = m->next;
			if (s->mbox_tail == m)
				s->mbox_tail = prev;
			pthread_mutex_unlock(&s->lock);
			Mig__Wire__Envelope *env = m->env;
			uint32_t from = m->conn;
			free(m);
			if (env->msg_case == MIG__WIRE__ENVELOPE__MSG_ABORT) {
				r = peer_aborted(s, env);
				mig__msg_free(env);
				return r;
			}
			if (env->msg_case != want || from != conn) {
				r = mig__err(&s->result, MIG_E_PROTOCOL,
					     "unexpected message %d on connection %u",
					     (int)env->msg_case, from);
				mig__msg_free(env);
				return r;
			}
			*out = env;
			return 0;
		}
		if ((r = check_failed_locked(s)) < 0)
			break;
		if (mig__now_us() > until) {
			r = mig__err(&s->result, -ETIMEDOUT,
				     "no answer from the destination in %" PRIu64 " ms",
				     timeout_ms);
			break;
		}
		wait_cond_locked(s, 50);
	}
	pthread_mutex_unlock(&s->lock);
	return r;
}
