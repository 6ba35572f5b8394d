/*
 * What the engine hands the connections (source_conn.c): the hello, the
 * protocol steps of what is sent, TLS sealing, the queues, and the
 * stop-and-copy's shortcut of borrowing an idle connection to write on it
 * from the engine's thread (sealed first under TLS, the records queued
 * raw if the socket takes only part of them).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "source.h"

/* What the source asks for in its hello. verify compares guest memory as
 * it was at the pause, so the destination must hash it before the VMM
 * loads the state: loading may write guest memory (KVM writes a Linux
 * guest's kvmclock wall clock as MSR_KVM_WALL_CLOCK_NEW is set). Without
 * early state the destination loads it after the check. */
uint64_t mig__src_wanted_features(const mig_source *s)
{
	uint64_t f = MIG_FEATURES_SUPPORTED;
	if (s->params.verify)
		f &= ~(uint64_t)MIG__WIRE__FEATURE__FEATURE_EARLY_STATE;
	return f;
}

int mig__src_pack_hello(mig_source *s, uint32_t i, const uint8_t *proof,
			mig_buf *out)
{
	Mig__Wire__Hello h = MIG__WIRE__HELLO__INIT;

	h.version_major = MIG_PROTOCOL_VERSION;
	h.version_minor = 0;
	h.features = mig__src_wanted_features(s);
	/* under TLS the session's proof of the token, never the token */
	h.token.data = proof ? (uint8_t *)proof : s->token;
	h.token.len = proof ? MIG_TLS_PROOF_LEN : s->token_len;
	h.connection_index = i;
	h.connection_count = s->nconns;
	h.session_id.data = s->session_id;
	h.session_id.len = sizeof(s->session_id);
	return mig__src_pack_simple(out, MIG__WIRE__ENVELOPE__MSG_HELLO, &h);
}

int mig__src_seal(struct src_conn *c, mig_buf *b, mig_error *e)
{
	mig_buf rec = { 0 };
	int r;

	if (!c->tls)
		return 0;
	r = mig__tls_seal(c->tls, b->data, b->len, &rec, e);
	mig__buf_free(b);
	*b = rec;
	return r;
}

int mig__src_step_locked(mig_source *s, int msg, uint32_t conn, int sent,
			 struct src_move *mv, mig_error *err)
{
	int early = (s->features & MIG__WIRE__FEATURE__FEATURE_EARLY_STATE) != 0;
	int r;

	mv->from = mv->to = s->ps;
	if (sent && s->ps == MIG_PS_FAILED && msg != MIG__WIRE__ENVELOPE__MSG_ACTIVATE)
		return 0;
	r = mig__proto_step(s->ps, msg, sent ? MIG_PDIR_TO_DEST : MIG_PDIR_TO_SOURCE,
			    conn, early, &mv->to, err);
	s->ps = mv->to;
	return r;
}

void mig__src_log_move(mig_source *s, const struct src_move *mv)
{
	if (mv->from != mv->to)
		mig__log(&s->cb, s->vm.vm.opaque, MIG_LOG_DEBUG, "protocol: %s -> %s",
			 mig__proto_state_name(mv->from), mig__proto_state_name(mv->to));
}

void mig__src_proto_err_locked(mig_source *s, const mig_error *e)
{
	if (!s->proto_err.code)
		s->proto_err = *e;
	pthread_cond_broadcast(&s->cond);
}

int mig__src_sent(mig_source *s, int msg)
{
	struct src_move mv;
	mig_error e = { 0 };
	int r;

	pthread_mutex_lock(&s->lock);
	r = mig__src_step_locked(s, msg, 0, 1, &mv, &e);
	pthread_mutex_unlock(&s->lock);
	mig__src_log_move(s, &mv);
	if (r < 0)
		return mig__err(&s->result, r, "%s", e.msg);
	return 0;
}

static void conn_kick(struct src_conn *c)
{
	uv_async_send(&c->async);
}

int mig__src_queue(mig_source *s, uint32_t conn, struct item *it)
{
	struct src_conn *c = &s->conns[conn];
	pthread_mutex_lock(&s->lock);
	if (c->tail)
		c->tail->next = it;
	else
		c->head = it;
	c->tail = it;
	pthread_mutex_unlock(&s->lock);
	conn_kick(c);
	return 0;
}

int mig__src_send_msg(mig_source *s, uint32_t conn, Mig__Wire__Envelope *env)
{
	struct item *it = calloc(1, sizeof(*it));
	int r;

	if (!it)
		return -ENOMEM;
	r = mig__msg_pack(env, &it->frame);
	if (r < 0) {
		mig__buf_free(&it->frame);
		free(it);
		return r;
	}
	return mig__src_queue(s, conn, it);
}

void mig__src_counters(mig_source *s, uint64_t *bytes, uint64_t *pages,
			  uint64_t *zero, uint64_t *raw)
{
	*bytes = *pages = *zero = *raw = 0;
	pthread_mutex_lock(&s->lock);
	for (uint32_t i = 0; i < s->nconns; i++) {
		*bytes += s->conns[i].bytes;
		*pages += s->conns[i].pages;
		*zero += s->conns[i].zero_pages;
		*raw += s->conns[i].raw_bytes;
	}
	pthread_mutex_unlock(&s->lock);
}

/* Whether connection c is up, with its socket in *fd. Called with s->lock
 * held. */
static int open_locked(struct src_conn *c, uv_os_fd_t *fd)
{
	return c->connected && !c->error && !c->closing &&
	       uv_fileno((uv_handle_t *)&c->tcp, fd) == 0;
}

/* Borrow connection c when it is up with nothing queued or in flight: its
 * thread starts no write until mig__src_give_back_locked(), so another
 * thread may write on it, in order. Called with s->lock held. */
int mig__src_borrow_locked(struct src_conn *c)
{
	uv_os_fd_t fd;

	if (c->head || c->writes || !open_locked(c, &fd))
		return 0;
	c->writes++; /* the borrower's, until given back */
	return 1;
}

void mig__src_give_back_locked(mig_source *s, struct src_conn *c)
{
	c->writes--;
	pthread_cond_broadcast(&s->cond);
}

/* Write `b` on borrowed connection c's socket without blocking; returns
 * the bytes written (0 once the connection is down: its thread has seen
 * why, or will). Called with s->lock held. */
size_t mig__src_borrowed_write_locked(mig_source *s, struct src_conn *c,
				      mig_buf *b, int *raw)
{
	mig_error e = { 0 };
	size_t done = 0;
	uv_os_fd_t fd;

	*raw = 0;
	if (!open_locked(c, &fd))
		return 0;
	if (c->tls) {
		*raw = 1;
		int r = mig__src_seal(c, b, &e);

		if (r < 0) { /* the connection is done: its thread stops */
			c->tls->failed = 1;
			if (!c->error) {
				c->error = r;
				c->error_us = mig__now_us();
				snprintf(c->errmsg, sizeof(c->errmsg), "%s", e.msg);
			}
			pthread_cond_broadcast(&s->cond);
			return 0;
		}
	}
	while (done < b->len) {
		ssize_t n = send(fd, b->data + done, b->len - done,
				 MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		done += (size_t)n;
	}
	c->bytes += done;
	if (done)
		s->last_progress_us = mig__now_us();
	return done;
}

/*
 * Stop-and-copy: when connection `conn` has nothing queued or in flight,
 * write `b` from this thread at once instead of waking the connection's
 * thread (on an idle CPU that wake-up alone can take 100 us, all of it
 * downtime). Returns the bytes written; the caller queues the rest (a full
 * socket buffer, an error that the connection's thread will then see).
 */
static size_t write_now(mig_source *s, uint32_t conn, mig_buf *b, int *raw)
{
	struct src_conn *c = &s->conns[conn];
	size_t done = 0;

	*raw = 0;
	pthread_mutex_lock(&s->lock);
	if (mig__src_borrow_locked(c)) {
		done = mig__src_borrowed_write_locked(s, c, b, raw);
		mig__src_give_back_locked(s, c);
	}
	pthread_mutex_unlock(&s->lock);
	return done;
}

/* Queue what write_now() left of `b` (from byte `done` on) on connection
 * `conn`, as one item. Takes b's memory. */
int mig__src_queue_rest(mig_source *s, uint32_t conn, mig_buf *b, size_t done,
			int raw)
{
	if (done == b->len) {
		mig__buf_free(b);
		return 0;
	}
	if (done) {
		memmove(b->data, b->data + done, b->len - done);
		b->len -= done;
	}
	struct item *it = calloc(1, sizeof(*it));

	if (!it) {
		mig__buf_free(b);
		return -ENOMEM;
	}
	it->frame = *b;
	it->remainder = done != 0 || raw; /* sealed records are never dropped */
	it->raw = raw;
	memset(b, 0, sizeof(*b));
	return mig__src_queue(s, conn, it);
}

/* Queue the frames in `b` (one or more messages) on connection `conn`,
 * as one item: they go out in one write. Takes b's memory. With `now`,
 * first try to write them from this thread (write_now()). */
int mig__src_send_frames(mig_source *s, uint32_t conn, mig_buf *b, int now)
{
	int raw = 0;
	size_t done = now ? write_now(s, conn, b, &raw) : 0;

	return mig__src_queue_rest(s, conn, b, done, raw);
}

int mig__src_pack_simple(mig_buf *b, Mig__Wire__Envelope__MsgCase kind, void *msg)
{
	Mig__Wire__Envelope env = MIG__WIRE__ENVELOPE__INIT;
	env.msg_case = kind;
	env.hello = msg; /* every member of the oneof sits at the same place */
	return mig__msg_pack(&env, b);
}

/* One message on connection `conn`, as mig__src_send_frames() (with `now`). */
int mig__src_send_simple(mig_source *s, uint32_t conn,
		       Mig__Wire__Envelope__MsgCase kind, void *msg, int now)
{
	mig_buf b = { 0 };
	int r = mig__src_pack_simple(&b, kind, msg);

	if (r < 0) {
		mig__buf_free(&b);
		return r;
	}
	return mig__src_send_frames(s, conn, &b, now);
}

/* Free the items of connection c's queue that its thread has not taken,
 * but the rest of a frame already begun (with `all`, that too: the
 * connection is closed). */
void mig__src_drop_queued(mig_source *s, struct src_conn *c, int all)
{
	struct item *it, *next;

	pthread_mutex_lock(&s->lock);
	it = c->head;
	if (it && it->remainder && !all) {
		c->tail = it;
		it = it->next;
		c->tail->next = NULL;
	} else {
		c->head = c->tail = NULL;
	}
	pthread_mutex_unlock(&s->lock);
	for (; it; it = next) {
		next = it->next;
		mig__buf_free(&it->frame);
		free(it);
	}
}

