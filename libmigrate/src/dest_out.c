/*
 * The destination's writes to the source, its failure (the source told
 * why, the VM never resumed) and its end, and the protocol steps of what
 * it sends.
 */
#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dest.h"

static void on_dwrite(uv_write_t *req, int status)
{
	struct dwreq *w = (struct dwreq *)req;
	(void)status; /* a failed write shows up as a read error too */
	mig__buf_free(&w->buf);
	free(w);
}

int mig__dst_write_raw(struct dst_conn *c, mig_buf *b)
{
	struct dwreq *w;
	uv_buf_t ub;
	int r;

	if (c->closing || !b->len) {
		mig__buf_free(b);
		return c->closing ? -ENOTCONN : 0;
	}
	w = calloc(1, sizeof(*w));
	if (!w) {
		mig__buf_free(b);
		return -ENOMEM;
	}
	w->buf = *b;
	memset(b, 0, sizeof(*b));
	ub = uv_buf_init((char *)w->buf.data, (unsigned)w->buf.len);
	r = uv_write(&w->req, (uv_stream_t *)&c->tcp, &ub, 1, on_dwrite);
	if (r < 0) {
		mig__buf_free(&w->buf);
		free(w);
	}
	return r;
}

int mig__dst_send(struct dst_conn *c, Mig__Wire__Envelope__MsgCase kind,
		    void *msg)
{
	Mig__Wire__Envelope env = MIG__WIRE__ENVELOPE__INIT;
	mig_buf plain = { 0 }, sealed = { 0 };
	int r;

	if (c->closing)
		return -ENOTCONN;
	env.msg_case = kind;
	env.hello = msg; /* the oneof members share one place */
	r = mig__msg_pack(&env, &plain);
	if (r == 0 && c->tls) {
		/* a failure shows up on the next read too: the peer gets
		 * nothing it could take for this message */
		r = mig__tls_seal(c->tls, plain.data, plain.len, &sealed, NULL);
		mig__buf_free(&plain);
		plain = sealed;
	}
	if (r < 0) {
		mig__buf_free(&plain);
		return r;
	}
	return mig__dst_write_raw(c, &plain);
}

/* End the migration with `code`: tell the source, never resume. */
void MIG_PRINTF(3, 4) mig__dst_fail(mig_dest *d, int code, const char *fmt, ...)
{
	va_list ap;

	if (d->finished)
		return;
	d->ps = MIG_PS_FAILED;
	d->result.code = code;
	va_start(ap, fmt);
	vsnprintf(d->result.msg, sizeof(d->result.msg), fmt, ap);
	va_end(ap);
	if (d->by_index && d->by_index[0] && !d->by_index[0]->closing) {
		Mig__Wire__Abort ab = MIG__WIRE__ABORT__INIT;
		ab.error = code;
		ab.reason = d->result.msg;
		mig__dst_send(d->by_index[0], MIG__WIRE__ENVELOPE__MSG_ABORT, &ab);
	}
	size_t n = strlen(d->result.msg);
	snprintf(d->result.msg + n, sizeof(d->result.msg) - n,
		 "; VM not resumed");
	mig__dst_finish(d);
}

/* The session's state moves for message `msg` on connection `conn`, read
 * (MIG_PDIR_TO_DEST) or sent (MIG_PDIR_TO_SOURCE) (protocol.h); refused:
 * the migration fails. */
int mig__dst_step(mig_dest *d, int msg, unsigned dir, uint32_t conn)
{
	mig_error e = { 0 };
	mig_pstate to;

	if (mig__proto_step(d->ps, msg, dir, conn, d->early_state, &to, &e) < 0) {
		mig__dst_fail(d, e.code, "%s", e.msg);
		return e.code;
	}
	if (to != d->ps)
		mig__log(&d->cb, d->vm.vm.opaque, MIG_LOG_DEBUG, "protocol: %s -> %s",
			 mig__proto_state_name(d->ps), mig__proto_state_name(to));
	d->ps = to;
	return 0;
}

/* A message of the session to the source, on the control connection. */
int mig__dst_session_send(mig_dest *d, Mig__Wire__Envelope__MsgCase kind, void *msg)
{
	int r = mig__dst_step(d, kind, MIG_PDIR_TO_SOURCE, 0);

	return r < 0 ? r : mig__dst_send(d->by_index[0], kind, msg);
}

static void on_conn_closed(uv_handle_t *h)
{
	struct dst_conn *c = h->data;
	mig__reader_free(&c->rd);
	mig__dec_destroy(c->dec);
	if (c->tls) {
		mig__tls_conn_free(c->tls);
		free(c->tls);
	}
	free(c);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
	struct dst_conn *c = req->data;
	(void)status;
	uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

void mig__dst_conn_discard(struct dst_conn *c)
{
	c->closing = 1;
	uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

/* Close after what was queued is written (an Abort, Activated). */
void mig__dst_conn_close(struct dst_conn *c)
{
	mig_dest *d = c->d;
	struct dst_conn **pp;

	if (c->closing)
		return;
	c->closing = 1;
	for (pp = &d->conns; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	if (d->by_index && c->authed && c->index < d->expected &&
	    d->by_index[c->index] == c)
		d->by_index[c->index] = NULL;
	uv_read_stop((uv_stream_t *)&c->tcp);
	c->shut.data = c;
	if (uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, on_shutdown) < 0)
		uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

/*
 * From the switchover until the end, the loop never sleeps in epoll: a
 * thread woken by loopback data is often queued behind its waker on the
 * same busy CPU (a synchronous wake-up) for as long as the waker runs,
 * which during stop-and-copy is the source saving the VM state. Spinning,
 * it stays on its own CPU, reads each message as it lands, and yields to
 * anything else runnable there.
 */
void mig__dst_on_spin(uv_idle_t *h)
{
	mig_dest *d = h->data;

	/* A source that went quiet (a slow save, a stalled link) is waited
	 * for asleep: spin only while data came in the last SPIN_IDLE_US. */
	if (mig__now_us() - d->last_activity_us > SPIN_IDLE_US)
		uv_idle_stop(h);
	else
		sched_yield();
}

void mig__dst_finish(mig_dest *d)
{
	if (d->finished)
		return;
	d->finished = 1;
	pthread_mutex_lock(&d->lock);
	d->prefault_stop = 1;
	pthread_mutex_unlock(&d->lock);
	while (d->conns)
		mig__dst_conn_close(d->conns);
	if (!uv_is_closing((uv_handle_t *)&d->listener))
		uv_close((uv_handle_t *)&d->listener, NULL);
	uv_close((uv_handle_t *)&d->async, NULL);
	uv_close((uv_handle_t *)&d->timer, NULL);
	uv_close((uv_handle_t *)&d->spin, NULL);
	pthread_mutex_lock(&d->lock);
	d->stats->phase = d->result.code ? MIG_PHASE_FAILED : MIG_PHASE_DONE;
	d->stats->status = d->result.code;
	d->stats->total_time_us = d->t_start_us ? mig__now_us() - d->t_start_us : 0;
	pthread_mutex_unlock(&d->lock);
}
