/*
 * A connection of the source: one libuv thread per TCP connection that
 * writes its queue (encoding chunks as it gets to them) with back-pressure
 * and an optional bandwidth cap, and reads the destination's messages into
 * the engine's mailbox. Connection 0 also answers Commit when the engine
 * has armed it (source_commit.c).
 *
 * The engine may write on an idle connection itself, under s->lock
 * (mig__src_borrow_locked(), source_queue.c): in the stop-and-copy,
 * waking a connection's thread can cost more than the write. Only these
 * two files touch the socket, and under TLS every byte is sealed by
 * whoever writes it (mig__src_seal()), in the order it leaves.
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include "source.h"

#define SRC_HWM (8u << 20)          /* bytes in flight per connection */
#define SRC_COALESCE (64u << 10)    /* small frames joined up to this */

struct wreq {
	uv_write_t req;
	struct src_conn *c;
	mig_buf buf;
};

/* Connection c failed with `code`, said by `msg` (whole). */
static void conn_fail_msg(struct src_conn *c, int code, const char *msg)
{
	mig_source *s = c->s;
	pthread_mutex_lock(&s->lock);
	if (!c->error) {
		c->error = code;
		c->error_us = mig__now_us();
		snprintf(c->errmsg, sizeof(c->errmsg), "%s", msg);
	}
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	uv_read_stop((uv_stream_t *)&c->tcp);
}

static void conn_fail(struct src_conn *c, int code, const char *what)
{
	char msg[sizeof(c->errmsg)];

	snprintf(msg, sizeof(msg), "%s: %s", what, mig_strerror(code));
	conn_fail_msg(c, code, msg);
}

static void pump(struct src_conn *c);

/*
 * The kernel's struct tcp_info goes on past glibc's (which ends with
 * tcpi_total_retrans) and only ever grows: the fields after it, as in
 * <linux/tcp.h>, which cannot be included beside libuv's <netinet/tcp.h>.
 */
struct tcp_info_acked {
	struct tcp_info base;
	uint64_t pacing_rate, max_pacing_rate;
	uint64_t bytes_acked;
};

_Static_assert(offsetof(struct tcp_info_acked, pacing_rate) ==
		       offsetof(struct tcp_info, tcpi_total_retrans) + 4,
	       "tcp_info_acked must follow the kernel's layout");

/* Bytes the peer has acknowledged on a TCP socket so far, 0 if unknown
 * (a kernel before 4.1 returns a shorter struct). */
static uint64_t tcp_acked(int fd)
{
	struct tcp_info_acked ti;
	socklen_t len = sizeof(ti);

	memset(&ti, 0, sizeof(ti));
	if (fd < 0 || getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0 ||
	    len < offsetof(struct tcp_info_acked, bytes_acked) +
			  sizeof(ti.bytes_acked))
		return 0;
	return ti.bytes_acked;
}

static void on_write(uv_write_t *req, int status)
{
	struct wreq *w = (struct wreq *)req;
	struct src_conn *c = w->c;
	mig_source *s = c->s;

	/* Writes were pending since busy_since_us: that time counts, whether
	 * or not the queue drains now (under a slow peer it never does). */
	uint64_t now = mig__now_us();
	c->busy_us += now - c->busy_since_us;
	c->busy_since_us = now;
	c->inflight -= w->buf.len;
	c->busy_bytes += w->buf.len;
	if (c->busy_us > 1000)
		mig__enc_set_link_rate(c->enc, (double)c->busy_bytes * 1e6 /
						       (double)c->busy_us);
	pthread_mutex_lock(&s->lock);
	c->writes--;
	if (status == 0) {
		c->bytes += w->buf.len;
		s->last_progress_us = mig__now_us();
		c->acked = tcp_acked(c->fd);
	}
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	mig__buf_free(&w->buf);
	free(w);
	if (status < 0)
		conn_fail(c, status, "write");
	else
		pump(c);
}

/* Hand `b` to libuv as it is; takes ownership of its memory. */
static int conn_write_raw(struct src_conn *c, mig_buf *b)
{
	struct wreq *w = calloc(1, sizeof(*w));
	uv_buf_t ub;
	int r;

	if (!w) {
		mig__buf_free(b);
		return -ENOMEM;
	}
	w->c = c;
	w->buf = *b;
	memset(b, 0, sizeof(*b));
	ub = uv_buf_init((char *)w->buf.data, (unsigned)w->buf.len);
	pthread_mutex_lock(&c->s->lock);
	c->writes++;
	pthread_mutex_unlock(&c->s->lock);
	if (!c->inflight)
		c->busy_since_us = mig__now_us();
	c->inflight += w->buf.len;
	r = uv_write(&w->req, (uv_stream_t *)&c->tcp, &ub, 1, on_write);
	if (r < 0) {
		c->inflight -= w->buf.len;
		pthread_mutex_lock(&c->s->lock);
		c->writes--;
		pthread_mutex_unlock(&c->s->lock);
		mig__buf_free(&w->buf);
		free(w);
	}
	return r;
}

/* Frames in `b`, sealed under TLS, to libuv; takes b's memory. */
static int conn_write(struct src_conn *c, mig_buf *b)
{
	mig_error e = { 0 };
	int r = mig__src_seal(c, b, &e);

	if (r < 0) {
		mig__buf_free(b);
		conn_fail_msg(c, r, e.msg);
		return r;
	}
	return conn_write_raw(c, b);
}

static void on_timer(uv_timer_t *t)
{
	struct src_conn *c = t->data;
	c->timer_armed = 0;
	pump(c);
}

/* Bandwidth cap: microseconds to wait before `bytes` more may go out. */
static uint64_t bw_delay_us(struct src_conn *c)
{
	/* as it is now: mig_source_set_param() may change it */
	uint64_t cap = __atomic_load_n(&c->s->params.max_bandwidth,
				       __ATOMIC_RELAXED) / c->s->nconns;
	uint64_t now = mig__now_us(), allowed;

	if (!cap)
		return 0;
	if (now - c->bw_t0_us > 1000000u) {
		/* A fresh window each second keeps idle time from banking. */
		c->bw_t0_us = now;
		c->bw_bytes = 0;
	}
	allowed = (now - c->bw_t0_us) * cap / 1000000u + cap / 20;
	if (c->bw_bytes <= allowed)
		return 0;
	return (c->bw_bytes - allowed) * 1000000u / cap + 1;
}

/* Complete for a connection that carried `pages` pages, appended to `out`. */
int mig__src_pack_complete(uint64_t pages, const uint8_t *hash, int has_hash,
			     mig_buf *out)
{
	Mig__Wire__Envelope env = MIG__WIRE__ENVELOPE__INIT;
	Mig__Wire__Complete comp = MIG__WIRE__COMPLETE__INIT;

	comp.pages_total = pages;
	if (has_hash) {
		comp.memory_hash.data = (uint8_t *)hash;
		comp.memory_hash.len = 16;
	}
	env.msg_case = MIG__WIRE__ENVELOPE__MSG_COMPLETE;
	env.complete = &comp;
	return mig__msg_pack(&env, out);
}

static int pack_complete(struct src_conn *c, const struct item *it, mig_buf *out)
{
	struct src_move mv = { MIG_PS_CONFIG, MIG_PS_CONFIG };
	uint64_t pages;
	mig_error err = { 0 };
	int r = 0;

	pthread_mutex_lock(&c->s->lock);
	pages = c->pages;
	/* the control connection's Complete moves the session */
	if (c->index == 0)
		r = mig__src_step_locked(c->s, MIG__WIRE__ENVELOPE__MSG_COMPLETE, 0, 1,
					 &mv, &err);
	if (r < 0)
		mig__src_proto_err_locked(c->s, &err);
	pthread_mutex_unlock(&c->s->lock);
	mig__src_log_move(c->s, &mv);
	if (r < 0)
		return r;
	return mig__src_pack_complete(pages, it->hash, it->has_hash, out);
}

/* Take the next item of c's queue, counted as a write until it is encoded
 * (so a drain waiter never sees an empty queue with work still in hand). */
static struct item *next_item(struct src_conn *c)
{
	mig_source *s = c->s;
	struct item *it;

	pthread_mutex_lock(&s->lock);
	it = c->head;
	if (it && !c->error && !c->closing && c->connected) {
		c->head = it->next;
		if (!c->head)
			c->tail = NULL;
		c->writes++;
	} else {
		it = NULL;
	}
	pthread_mutex_unlock(&s->lock);
	return it;
}

/* Append item `it` to `out`, encoding pages or packing Complete; frees it. */
static int item_out(struct src_conn *c, struct item *it, mig_buf *out)
{
	int r;

	if (it->is_chunk) {
		r = mig__src_encode_chunk(c, it, out);
	} else if (it->is_complete) {
		r = pack_complete(c, it, out);
	} else if (!out->len) {
		mig__buf_free(out);
		*out = it->frame;
		memset(&it->frame, 0, sizeof(it->frame));
		r = 0;
	} else {
		r = mig__buf_append(out, it->frame.data, it->frame.len);
	}
	mig__buf_free(&it->frame);
	free(it);
	return r;
}

static void pump(struct src_conn *c)
{
	mig_source *s = c->s;

	while (c->inflight < SRC_HWM) {
		struct item *it;
		mig_buf out = { 0 };
		unsigned taken = 0;
		uint64_t wait;
		int r = 0;

		/* Aborting: the reason goes out at once, past any cap. */
		wait = __atomic_load_n(&s->aborting, __ATOMIC_RELAXED) ? 0 : bw_delay_us(c);
		if (wait) {
			if (!c->timer_armed) {
				c->timer_armed = 1;
				uv_timer_start(&c->timer, on_timer,
					       (wait + 999) / 1000, 0);
			}
			return;
		}
		/* A cap raised meanwhile (mig_source_set_param): the wait
		 * armed under the old one is over. */
		if (c->timer_armed) {
			uv_timer_stop(&c->timer);
			c->timer_armed = 0;
		}
		/* Small frames queued together go out in one write: in the
		 * stop-and-copy (switchover, state, round end, complete) every
		 * system call is downtime. */
		while (r == 0 && out.len < SRC_COALESCE && (it = next_item(c))) {
			taken++;
			if (it->raw) {
				/* sealed by a borrower: after what is
				 * gathered, as they are */
				mig_buf rec = it->frame;

				free(it);
				if (out.len) {
					c->bw_bytes += out.len;
					r = conn_write(c, &out);
				}
				c->bw_bytes += rec.len;
				if (r == 0)
					r = conn_write_raw(c, &rec);
				mig__buf_free(&rec);
				break;
			}
			r = item_out(c, it, &out);
		}
		if (!taken)
			return;
		if (r == 0 && out.len) {
			c->bw_bytes += out.len;
			r = conn_write(c, &out);
		}
		pthread_mutex_lock(&s->lock);
		c->writes -= taken;
		pthread_cond_broadcast(&s->cond);
		pthread_mutex_unlock(&s->lock);
		mig__buf_free(&out);
		if (r < 0) {
			conn_fail(c, r, "encode/write");
			return;
		}
	}
}

/* Connection 0's thread: the destination committed; activate it now if
 * the engine is waiting for exactly that. */
static void answer_commit(struct src_conn *c)
{
	mig_source *s = c->s;
	Mig__Wire__Envelope env = MIG__WIRE__ENVELOPE__INIT;
	Mig__Wire__Activate act = MIG__WIRE__ACTIVATE__INIT;
	struct src_move mv = { MIG_PS_CONFIG, MIG_PS_CONFIG };
	mig_buf out = { 0 };
	mig_error e = { 0 };
	int armed, r;

	/* Once Activate may be on the wire the flag stays set: a second
	 * Commit (a confused or hostile peer) must not clear it. */
	pthread_mutex_lock(&s->lock);
	armed = s->commit_armed;
	s->commit_armed = 0;
	if (armed && mig__src_step_locked(s, MIG__WIRE__ENVELOPE__MSG_ACTIVATE, 0,
					  1, &mv, &e) < 0) {
		/* the session failed meanwhile: no Activate */
		mig__src_proto_err_locked(s, &e);
		pthread_mutex_unlock(&s->lock);
		return;
	}
	if (armed) {
		s->activate_sent = 1;
		s->activate_sent_us = mig__now_us();
	}
	pthread_mutex_unlock(&s->lock);
	if (!armed)
		return;
	env.msg_case = MIG__WIRE__ENVELOPE__MSG_ACTIVATE;
	env.activate = &act;
	r = mig__msg_pack(&env, &out);
	if (r == 0)
		r = conn_write(c, &out);
	mig__buf_free(&out);
	mig__src_log_move(s, &mv);
	if (r < 0) {
		/* Refused before any byte left (uv_write reports later
		 * errors through its callback): the destination cannot
		 * activate, so the engine may resume this copy. */
		pthread_mutex_lock(&s->lock);
		s->activate_sent = 0;
		pthread_mutex_unlock(&s->lock);
		conn_fail(c, r, "sending activate");
	}
}

/*
 * Whether the protocol table refuses message `msg` read on c now (then
 * the migration fails with s->proto_err). A connection's first HelloAck
 * comes before the table (the engine checks it); every other message the
 * destination sends moves the session's state.
 */
static int refused(struct src_conn *c, int msg)
{
	mig_source *s = c->s;
	struct src_move mv;
	mig_error e = { 0 };
	int r;

	if (!c->hello_acked && msg == MIG__WIRE__ENVELOPE__MSG_HELLO_ACK) {
		c->hello_acked = 1;
		return 0;
	}
	pthread_mutex_lock(&s->lock);
	r = mig__src_step_locked(s, msg, c->index, 0, &mv, &e);
	if (r < 0)
		mig__src_proto_err_locked(s, &e);
	pthread_mutex_unlock(&s->lock);
	mig__src_log_move(s, &mv);
	return r < 0;
}

/* Hand the whole frames in c's reader to the engine; -1 once c failed. */
static int on_frames(struct src_conn *c)
{
	mig_source *s = c->s;
	mig_frame f;
	long n;

	while ((n = mig__reader_next(&c->rd, &f)) > 0) {
		Mig__Wire__Envelope *env;
		struct msg *m;
		int e;

		if (f.type != MIG_FRAME_MSG) {
			conn_fail(c, MIG_E_PROTOCOL, "destination sent pages");
			return -1;
		}
		env = mig__msg_unpack(f.body, f.len, &e);
		if (!env) {
			conn_fail(c, MIG_E_PROTOCOL, "undecodable message");
			return -1;
		}
		if (refused(c, env->msg_case)) {
			mig__msg_free(env);
			uv_read_stop((uv_stream_t *)&c->tcp);
			return -1;
		}
		m = calloc(1, sizeof(*m));
		if (!m) {
			mig__msg_free(env);
			conn_fail(c, -ENOMEM, "read");
			return -1;
		}
		if (c->index == 0 &&
		    env->msg_case == MIG__WIRE__ENVELOPE__MSG_COMMIT)
			answer_commit(c);
		m->conn = c->index;
		m->env = env;
		pthread_mutex_lock(&s->lock);
		s->last_progress_us = mig__now_us();
		if (s->mbox_tail)
			s->mbox_tail->next = m;
		else
			s->mbox_head = m;
		s->mbox_tail = m;
		pthread_cond_broadcast(&s->cond);
		pthread_mutex_unlock(&s->lock);
	}
	if (n < 0) {
		conn_fail(c, MIG_E_PROTOCOL, "bad frame from destination");
		return -1;
	}
	return 0;
}

/* Under TLS: the hello, queued empty, now that the session exists, with
 * the token bound to it (mig__tls_token_proof()). Nothing else can be
 * queued before the hello is answered. */
static int bind_hello(struct src_conn *c)
{
	mig_source *s = c->s;
	uint8_t proof[MIG_TLS_PROOF_LEN];
	mig_error e = { 0 };
	mig_buf b = { 0 };
	int r = mig__tls_token_proof(c->tls, s->token, s->token_len, proof, &e);

	if (r == 0 && (r = mig__src_pack_hello(s, c->index, proof, &b)) < 0)
		mig__err(&e, r, "packing the hello: %s", mig_strerror(r));
	explicit_bzero(proof, sizeof(proof));
	pthread_mutex_lock(&s->lock);
	if (r == 0 && (!c->head || c->head->is_chunk || c->head->frame.len)) {
		r = mig__err(&e, -EPROTO, "the hello is not first in its queue");
	} else if (r == 0) {
		c->head->frame = b;
		memset(&b, 0, sizeof(b));
	}
	pthread_mutex_unlock(&s->lock);
	mig__buf_free(&b);
	if (r < 0)
		conn_fail_msg(c, r, e.msg);
	return r;
}

/* The connection is up (and under TLS, its handshake done): the hello,
 * queued first, goes out now. */
static void conn_up(struct src_conn *c)
{
	mig_source *s = c->s;

	if (c->tls && bind_hello(c) < 0)
		return;
	pthread_mutex_lock(&s->lock);
	c->connected = 1;
	c->connected_us = mig__now_us();
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	pump(c);
}

/* The handshake's next step; 1 once it is done. */
static int tls_step(struct src_conn *c)
{
	mig_error e = { 0 };
	mig_buf out = { 0 };
	int r = mig__tls_handshake(c->tls, &out, &e);

	if (out.len && conn_write_raw(c, &out) < 0 && r >= 0) {
		conn_fail(c, -EPIPE, "TLS handshake");
		return -1;
	}
	mig__buf_free(&out);
	if (r < 0) {
		conn_fail_msg(c, r, e.msg);
		return -1;
	}
	if (r == 1)
		conn_up(c);
	return r;
}

/* TLS: ciphertext read; the handshake, then records into the reader. */
static void on_tls_bytes(struct src_conn *c, const void *p, size_t n)
{
	mig_error e = { 0 };
	mig_buf out = { 0 };
	long k;

	if (mig__tls_feed(c->tls, p, n) < 0) {
		conn_fail(c, -ENOMEM, "TLS read");
		return;
	}
	if (!c->tls->done && tls_step(c) <= 0)
		return;
	for (;;) {
		uint8_t *dst;
		size_t cap;
		int r = mig__reader_space(&c->rd, MIG_TLS_RECORD_MAX, &dst, &cap);

		if (r < 0) {
			conn_fail(c, r, "read buffer");
			return;
		}
		k = mig__tls_recv(c->tls, dst, cap, &out, &e);
		if (out.len)
			(void)conn_write_raw(c, &out);
		mig__buf_free(&out);
		if (k < 0) {
			conn_fail_msg(c, (int)k, e.msg);
			return;
		}
		if (k == 0 || (mig__reader_commit(&c->rd, (size_t)k), on_frames(c) < 0))
			return;
	}
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
	struct src_conn *c = st->data;
	int r;

	if (nread < 0) {
		free(buf->base);
		if (c->tls && !c->tls->done)
			conn_fail_msg(c, MIG_E_TLS, "connection closed during the "
				      "TLS handshake (does the destination speak TLS?)");
		else
			conn_fail(c, nread == UV_EOF ? -ECONNRESET : (int)nread,
				  nread == UV_EOF ? "connection closed by peer" : "read");
		return;
	}
	if (!c->tls && !c->hello_acked && c->rd.len == c->rd.off &&
	    mig__tls_looks_like((const uint8_t *)buf->base, (size_t)nread)) {
		free(buf->base);
		conn_fail_msg(c, MIG_E_TLS, "the destination answered with TLS; "
			      "this source has no TLS credentials");
		return;
	}
	if (c->tls) {
		on_tls_bytes(c, buf->base, (size_t)nread);
		free(buf->base);
		return;
	}
	r = nread ? mig__reader_append(&c->rd, buf->base, (size_t)nread) : 0;
	free(buf->base);
	if (r < 0) {
		conn_fail(c, r, "read buffer");
		return;
	}
	on_frames(c);
}

static void on_connect(uv_connect_t *req, int status)
{
	struct src_conn *c = req->data;
	mig_source *s = c->s;
	uv_os_fd_t fd;

	if (status < 0) {
		conn_fail(c, status, "connect");
		return;
	}
	uv_tcp_nodelay(&c->tcp, 1);
	uv_read_start((uv_stream_t *)&c->tcp, mig__uv_alloc, on_read);
	pthread_mutex_lock(&s->lock);
	if (uv_fileno((uv_handle_t *)&c->tcp, &fd) < 0)
		fd = -1;
	c->fd = fd;
	pthread_mutex_unlock(&s->lock);
	if (c->tls)
		(void)tls_step(c); /* the ClientHello; up once it is done */
	else
		conn_up(c);
}

static void on_async(uv_async_t *a)
{
	struct src_conn *c = a->data;
	int closing;

	pthread_mutex_lock(&c->s->lock);
	closing = c->closing;
	pthread_mutex_unlock(&c->s->lock);
	if (closing) {
		uv_close((uv_handle_t *)&c->tcp, NULL);
		uv_close((uv_handle_t *)&c->async, NULL);
		uv_close((uv_handle_t *)&c->timer, NULL);
		return;
	}
	pump(c);
}

static void *conn_main(void *arg)
{
	struct src_conn *c = arg;
	char name[16];
	int r;

	snprintf(name, sizeof(name), "mig-conn%u", c->index);
	mig__thread_name(name);
	c->creq.data = c;
	r = uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)&c->addr,
			   on_connect);
	if (r < 0)
		conn_fail(c, r, "connect");
	uv_run(&c->loop, UV_RUN_DEFAULT);
	return NULL;
}

int mig__src_conn_start(mig_source *s, uint32_t i,
			const struct sockaddr_storage *ss, mig_buf *first)
{
	struct src_conn *c = &s->conns[i];
	struct item *it = calloc(1, sizeof(*it));
	int r;

	if (!it) {
		mig__buf_free(first);
		return mig__err(&s->result, -ENOMEM, "out of memory");
	}
	it->frame = *first;
	memset(first, 0, sizeof(*first));
	c->s = s;
	c->index = i;
	c->fd = -1;
	c->addr = *ss;
	c->rd.limit = MIG_PREAUTH_FRAME_MAX;
	c->head = c->tail = it; /* freed by mig__src_close_conns() */
	if (s->tls) {
		mig_error e = { 0 };

		if (!(c->tls = malloc(sizeof(*c->tls))))
			return mig__err(&s->result, -ENOMEM, "out of memory");
		if ((r = mig__tls_conn_init(c->tls, s->tls, 0, &e)) < 0) {
			free(c->tls);
			c->tls = NULL;
			return mig__err(&s->result, r, "connection %u: %s", i, e.msg);
		}
	}
	r = mig__enc_create(&c->enc, s->params.compress,
			    s->params.compress_level);
	if (r < 0)
		return mig__err(&s->result, r, "zstd encoder: %s",
				mig_strerror(r));
	if ((r = uv_loop_init(&c->loop)) < 0)
		return mig__err(&s->result, r, "event loop: %s",
				mig_strerror(r));
	uv_tcp_init(&c->loop, &c->tcp);
	uv_async_init(&c->loop, &c->async, on_async);
	uv_timer_init(&c->loop, &c->timer);
	c->loop_ok = 1;
	c->tcp.data = c;
	c->async.data = c;
	c->timer.data = c;
	if (mig__thread_start(&c->thread, conn_main, c) != 0)
		return mig__err(&s->result, -EAGAIN,
				"cannot start connection thread");
	c->thread_ok = 1;
	return 0;
}

/*
 * A write completes once the kernel has taken all of it, so a link slower
 * than one write (up to a batch of 1024 pages) per stall_timeout_ms shows no
 * completed write for that long while it still carries bytes. Whether the
 * peer acknowledged anything since progress was last seen tells a slow link
 * from a dead one (or a peer that stopped reading: its zero window acks no
 * bytes). Lock held; reads the sockets' TCP_INFO, never writes them.
 */
int mig__src_link_moved_locked(mig_source *s)
{
	int moved = 0;

	for (uint32_t i = 0; i < s->nconns; i++) {
		struct src_conn *c = &s->conns[i];
		uint64_t a;

		if (!c->connected || c->closing || c->error || c->fd < 0)
			continue;
		a = tcp_acked(c->fd);
		if (a && a != c->acked) {
			c->acked = a;
			moved = 1;
		}
	}
	return moved;
}

void mig__src_kick_conns_locked(mig_source *s)
{
	for (uint32_t i = 0; i < s->nconns; i++) {
		struct src_conn *c = &s->conns[i];

		/* up and not closing: its async handle is open until a
		 * closing (set under the lock) has reached its thread */
		if (c->connected && !c->closing)
			uv_async_send(&c->async);
	}
}

void mig__src_close_conns(mig_source *s)
{
	for (uint32_t i = 0; i < s->nconns; i++) {
		struct src_conn *c = &s->conns[i];
		if (!c->thread_ok)
			continue;
		pthread_mutex_lock(&s->lock);
		c->closing = 1;
		pthread_mutex_unlock(&s->lock);
		uv_async_send(&c->async);
		pthread_join(c->thread, NULL);
		c->thread_ok = 0;
	}
	for (uint32_t i = 0; i < s->nconns; i++) {
		struct src_conn *c = &s->conns[i];
		if (c->loop_ok) {
			/* A loop whose thread never ran still has its handles. */
			if (!uv_is_closing((uv_handle_t *)&c->async)) {
				uv_close((uv_handle_t *)&c->tcp, NULL);
				uv_close((uv_handle_t *)&c->async, NULL);
				uv_close((uv_handle_t *)&c->timer, NULL);
			}
			uv_run(&c->loop, UV_RUN_DEFAULT);
			uv_loop_close(&c->loop);
			c->loop_ok = 0;
		}
		mig__src_drop_queued(s, c, 1);
		mig__enc_destroy(c->enc);
		c->enc = NULL;
		mig__reader_free(&c->rd);
		if (c->tls) {
			mig__tls_conn_free(c->tls);
			free(c->tls);
			c->tls = NULL;
		}
	}
}
