/*
 * The source side of a migration: Clark et al.'s stages in one engine
 * thread (set-up, iterative pre-copy, stop-and-copy, commitment), and one
 * libuv thread per TCP connection that encodes and writes the pages queued
 * to it, with back-pressure and an optional bandwidth cap.
 *
 * Locking: s->lock protects every field marked "locked" below, the
 * connections' queues and counters, and the mailbox. The engine thread owns
 * the bitmaps between rounds; during a round each connection thread owns
 * the chunks queued to it (chunks never overlap).
 */
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include "codec.h"
#include "dirty.h"
#include "frame.h"
#include "net.h"
#include "policy.h"
#include "session.h"
#include "state.h"

#define SRC_HWM (8u << 20)          /* bytes in flight per connection */
#define SRC_COALESCE (64u << 10)    /* small frames joined up to this */
#define HELLO_TIMEOUT_MS 10000u
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
/* A round's acknowledgement may take as long as the round's data needs to
 * cross a slow link: no fixed limit is right, so this is generous and
 * params.timeout_ms takes over when set. */
#define ROUND_ACK_TIMEOUT_MS 600000u

struct item {
	struct item *next;
	int is_chunk;
	int resident_only;
	int final;          /* stop-and-copy: the log is closed, no rearm */
	/* Complete, packed by the connection thread when it gets there, so
	 * that it counts every page encoded before it on this connection. */
	int is_complete;
	/* The rest of a frame whose start another thread wrote (queue_rest):
	 * never dropped, or the stream would lose its framing. */
	int remainder;
	int has_hash;
	uint8_t hash[16];
	uint32_t region;
	uint64_t first;
	uint32_t count;
	mig_buf frame;
};

struct msg {
	struct msg *next;
	uint32_t conn;
	Mig__Wire__Envelope *env;
};

struct src_conn;

struct wreq {
	uv_write_t req;
	struct src_conn *c;
	mig_buf buf;
};

struct src_conn {
	mig_source *s;
	uint32_t index;
	pthread_t thread;
	int thread_ok;
	uv_loop_t loop;
	uv_tcp_t tcp;
	uv_connect_t creq;
	uv_async_t async;
	uv_timer_t timer;
	mig_enc *enc;
	mig_reader rd;
	struct sockaddr_storage addr;
	int loop_ok;
	/* locked */
	struct item *head, *tail;
	unsigned writes;        /* uv_write requests outstanding */
	int connected;
	uint64_t connected_us;  /* when the hello went out */
	int closing;
	int error;
	char errmsg[160];
	uint64_t error_us;   /* when `error` was set */
	uint64_t bytes, pages, zero_pages, raw_bytes;
	/* The socket (valid while connected and not closing: only this
	 * connection's thread closes it, once `closing` is set) and its
	 * TCP_INFO bytes_acked when progress was last seen. */
	int fd;
	uint64_t acked;
	/* connection thread only */
	size_t inflight;
	/* Link rate for MIG_COMPRESS_AUTO: bytes the kernel took over the
	 * time a write was pending. A fast link drains at once and looks
	 * fast; a slow one keeps writes pending and shows its real rate. */
	uint64_t busy_since_us, busy_us, busy_bytes;
	uint64_t bw_t0_us, bw_bytes;
	int timer_armed;
};

struct mig_source {
	mig_vm_copy vm;
	mig_params params;
	mig_callbacks cb;
	char uri[300];
	char host[256];
	int port;
	uint8_t *token;
	size_t token_len;
	uint8_t session_id[16];

	pthread_t thread;
	int started;
	int joined;

	pthread_mutex_t lock;
	pthread_cond_t cond;
	/* locked */
	int cancel;
	int aborting;              /* sending the Abort: pump() reads it
				    * without the lock, so set atomically */
	int finished;
	uint64_t last_progress_us;  /* a write completed or a message came */
	/* Commitment, decided on connection 0's thread: while armed, the
	 * Commit it reads is answered with Activate at once (no hand-off to
	 * the engine thread and back inside the downtime). The engine disarms
	 * before it gives up, so exactly one of the two happens. */
	int commit_armed;
	int activate_sent;
	uint64_t activate_sent_us;
	mig_stats *stats;
	struct msg *mbox_head, *mbox_tail;

	/* engine thread */
	struct src_conn *conns;
	uint32_t nconns;
	mig_dirty *dirty;
	uint64_t **send_bm;
	uint64_t **resident_bm;     /* round 1 only */
	/* mig_mark_dirty(): pages the VMM wrote, merged into send_bm at each
	 * sync; set (and `marks_closed` at the final sync) under the lock. */
	uint64_t **marked_bm;
	int marks_closed;
	int marks_new;       /* a bit was set in marked_bm since the merge */
	bool *absent_is_zero;       /* per region: mig__mem_absent_is_zero() */
	uint32_t round;
	int paused;
	int committed;
	unsigned throttle_pct;
	uint64_t rtt_us;
	uint64_t features;          /* what the destination accepted */
	mig_error result;
	uint64_t t_start_us;
};

/* ---- connection thread -------------------------------------------------- */

static void conn_fail(struct src_conn *c, int code, const char *what)
{
	mig_source *s = c->s;
	pthread_mutex_lock(&s->lock);
	if (!c->error) {
		c->error = code;
		c->error_us = mig__now_us();
		snprintf(c->errmsg, sizeof(c->errmsg), "%s: %s", what,
			 mig_strerror(code));
	}
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	uv_read_stop((uv_stream_t *)&c->tcp);
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

/* Hand `b` to libuv; takes ownership of its memory. */
static int conn_write(struct src_conn *c, mig_buf *b)
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

/* Encode the pages of a chunk that are still marked in the send bitmap. */
static int encode_chunk(struct src_conn *c, const struct item *it, mig_buf *out)
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

static void on_timer(uv_timer_t *t)
{
	struct src_conn *c = t->data;
	c->timer_armed = 0;
	pump(c);
}

/* Bandwidth cap: microseconds to wait before `bytes` more may go out. */
static uint64_t bw_delay_us(struct src_conn *c)
{
	uint64_t cap = c->s->params.max_bandwidth / c->s->nconns;
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
static int pack_complete_msg(uint64_t pages, const uint8_t *hash, int has_hash,
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
	uint64_t pages;

	pthread_mutex_lock(&c->s->lock);
	pages = c->pages;
	pthread_mutex_unlock(&c->s->lock);
	return pack_complete_msg(pages, it->hash, it->has_hash, out);
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
		r = encode_chunk(c, it, out);
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
		/* Small frames queued together go out in one write: in the
		 * stop-and-copy (switchover, state, round end, complete) every
		 * system call is downtime. */
		while (r == 0 && out.len < SRC_COALESCE && (it = next_item(c))) {
			taken++;
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
	mig_buf out = { 0 };
	int armed, r;

	/* Once Activate may be on the wire the flag stays set: a second
	 * Commit (a confused or hostile peer) must not clear it. */
	pthread_mutex_lock(&s->lock);
	armed = s->commit_armed;
	s->commit_armed = 0;
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

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
	struct src_conn *c = st->data;
	mig_source *s = c->s;
	mig_frame f;
	long n;
	int r;

	if (nread < 0) {
		free(buf->base);
		conn_fail(c, nread == UV_EOF ? -ECONNRESET : (int)nread,
			  nread == UV_EOF ? "connection closed by peer" : "read");
		return;
	}
	r = nread ? mig__reader_append(&c->rd, buf->base, (size_t)nread) : 0;
	free(buf->base);
	if (r < 0) {
		conn_fail(c, r, "read buffer");
		return;
	}
	while ((n = mig__reader_next(&c->rd, &f)) > 0) {
		Mig__Wire__Envelope *env;
		struct msg *m;
		int e;

		if (f.type != MIG_FRAME_MSG) {
			conn_fail(c, MIG_E_PROTOCOL, "destination sent pages");
			return;
		}
		env = mig__msg_unpack(f.body, f.len, &e);
		if (!env) {
			conn_fail(c, MIG_E_PROTOCOL, "undecodable message");
			return;
		}
		m = calloc(1, sizeof(*m));
		if (!m) {
			mig__msg_free(env);
			conn_fail(c, -ENOMEM, "read");
			return;
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
	if (n < 0)
		conn_fail(c, MIG_E_PROTOCOL, "bad frame from destination");
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
	c->connected = 1;
	c->connected_us = mig__now_us();
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	pump(c);
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

/* ---- engine helpers ----------------------------------------------------- */

static void conn_kick(struct src_conn *c)
{
	uv_async_send(&c->async);
}

static int queue_item(mig_source *s, uint32_t conn, struct item *it)
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

static int send_msg(mig_source *s, uint32_t conn, Mig__Wire__Envelope *env)
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
	return queue_item(s, conn, it);
}

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
	return mig__err(&s->result, MIG_E_PEER, "destination aborted: %s",
			env->abort->reason);
}

/* A connection error or cancel, as an error code with s->result filled.
 * Called with s->lock held. */
/*
 * A write completes once the kernel has taken all of it, so a link slower
 * than one write (up to a batch of 1024 pages) per stall_timeout_ms shows no
 * completed write for that long while it still carries bytes. Whether the
 * peer acknowledged anything since progress was last seen tells a slow link
 * from a dead one (or a peer that stopped reading: its zero window acks no
 * bytes). Lock held; reads the sockets' TCP_INFO, never writes them.
 */
static int link_moved_locked(mig_source *s)
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

static int check_failed_locked(mig_source *s)
{
	if (s->cancel)
		return mig__err(&s->result, MIG_E_CANCELED, "canceled");
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
		if (link_moved_locked(s)) {
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
static int wait_drained(mig_source *s)
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
static int wait_msg(mig_source *s, uint32_t conn,
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

static void set_phase(mig_source *s, mig_phase ph)
{
	pthread_mutex_lock(&s->lock);
	s->stats->phase = ph;
	pthread_mutex_unlock(&s->lock);
}

static void conn_counters(mig_source *s, uint64_t *bytes, uint64_t *pages,
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

/* The connection that carries the chunk at page `first` of region `r`:
 * a page always goes on the same one, so a newer copy can never overtake
 * an older one. */
static uint32_t chunk_conn(const mig_source *s, uint32_t r, uint64_t first)
{
	return (uint32_t)((first / MIG_CHUNK_PAGES + r) % s->nconns);
}

/*
 * Call fn(s, it, opaque) with an item for every chunk of the send bitmaps
 * that has pages marked, on connection `conn` only (or all, if -1); fn
 * takes the item's memory. Stops at fn's first error. Returns the pages
 * marked in those chunks.
 */
static uint64_t for_marked_chunks(mig_source *s, long conn,
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
			if (conn >= 0 && chunk_conn(s, r, first) != (uint32_t)conn)
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

static int chunk_to_queue(mig_source *s, struct item *it, void *opaque)
{
	(void)opaque;
	return queue_item(s, chunk_conn(s, it->region, it->first), it);
}

/* Queue every marked chunk of the send bitmaps (on connection `conn`
 * only, or all if -1). Returns pages queued. */
static uint64_t queue_round(mig_source *s, long conn, int *err)
{
	return for_marked_chunks(s, conn, chunk_to_queue, NULL, err);
}

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
	r = encode_chunk(o->c, it, o->out);
	free(it);
	return r;
}

/* What the source asks for in its hello. verify compares guest memory as
 * it was at the pause, so the destination must hash it before the VMM
 * loads the state: loading may write guest memory (KVM writes a Linux
 * guest's kvmclock wall clock as MSR_KVM_WALL_CLOCK_NEW is set). Without
 * early state the destination loads it after the check. */
static uint64_t wanted_features(const mig_source *s)
{
	uint64_t f = MIG_FEATURES_SUPPORTED;
	if (s->params.verify)
		f &= ~(uint64_t)MIG__WIRE__FEATURE__FEATURE_EARLY_STATE;
	return f;
}

/* Set up connection i and start its thread, which connects and sends the
 * hello. */
static int open_conn(mig_source *s, uint32_t i, const struct sockaddr_storage *ss)
{
	int r;

	struct src_conn *c = &s->conns[i];
	c->s = s;
	c->index = i;
	c->fd = -1;
	c->addr = *ss;
	c->rd.limit = MIG_PREAUTH_FRAME_MAX;
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

	Mig__Wire__Hello h = MIG__WIRE__HELLO__INIT;
	Mig__Wire__Envelope env = MIG__WIRE__ENVELOPE__INIT;
	h.version_major = MIG_PROTOCOL_VERSION;
	h.version_minor = 0;
	h.features = wanted_features(s);
	h.token.data = s->token;
	h.token.len = s->token_len;
	h.connection_index = i;
	h.connection_count = s->nconns;
	h.session_id.data = s->session_id;
	h.session_id.len = sizeof(s->session_id);
	env.msg_case = MIG__WIRE__ENVELOPE__MSG_HELLO;
	env.hello = &h;
	struct item *it = calloc(1, sizeof(*it));
	if (!it || mig__msg_pack(&env, &it->frame) < 0) {
		free(it);
		return mig__err(&s->result, -ENOMEM, "out of memory");
	}
	c->head = c->tail = it;
	if (mig__thread_start(&c->thread, conn_main, c) != 0)
		return mig__err(&s->result, -EAGAIN,
				"cannot start connection thread");
	c->thread_ok = 1;
	return 0;
}

/* Wait for connection i's hello to be answered. */
static int await_hello(mig_source *s, uint32_t i)
{
	int r;

	Mig__Wire__Envelope *env;
	r = wait_msg(s, i, MIG__WIRE__ENVELOPE__MSG_HELLO_ACK,
		     HELLO_TIMEOUT_MS, &env);
	if (r < 0)
		return r;
	if (i == 0) {
		/* One round trip: the hello left when the connection was up. */
		pthread_mutex_lock(&s->lock);
		s->rtt_us = mig__now_us() - s->conns[0].connected_us;
		pthread_mutex_unlock(&s->lock);
		s->features = env->hello_ack->features & wanted_features(s);
	}
	if (!env->hello_ack->ok) {
		int code = env->hello_ack->error;
		if (code != MIG_E_AUTH && code != MIG_E_VERSION)
			code = MIG_E_PEER;
		r = mig__err(&s->result, code, "destination refused hello: %s",
			     env->hello_ack->message);
		mig__msg_free(env);
		return r;
	}
	if (env->hello_ack->version_major != MIG_PROTOCOL_VERSION) {
		mig__msg_free(env);
		return mig__err(&s->result, MIG_E_VERSION,
				"destination speaks protocol %u, we speak %u",
				env->hello_ack->version_major,
				MIG_PROTOCOL_VERSION);
	}
	mig__msg_free(env);
	/* Authenticated: full-size frames from now on. */
	pthread_mutex_lock(&s->lock);
	s->conns[i].rd.limit = MIG_FRAME_MAX;
	pthread_mutex_unlock(&s->lock);
	return 0;
}

static int connect_all(mig_source *s)
{
	struct sockaddr_storage ss;
	int r;

	r = mig__resolve(s->host, s->port, &ss, &s->result);
	if (r < 0)
		return r;
	/* The control connection first: the destination opens the session on
	 * it and refuses data connections for a session it does not know. */
	if ((r = open_conn(s, 0, &ss)) < 0 || (r = await_hello(s, 0)) < 0)
		return r;
	for (uint32_t i = 1; i < s->nconns; i++)
		if ((r = open_conn(s, i, &ss)) < 0)
			return r;
	for (uint32_t i = 1; i < s->nconns; i++)
		if ((r = await_hello(s, i)) < 0)
			return r;
	return 0;
}

static int send_config(mig_source *s)
{
	Mig__Wire__Envelope env = MIG__WIRE__ENVELOPE__INIT, *ack;
	Mig__Wire__VmConfig cfg = MIG__WIRE__VM_CONFIG__INIT;
	Mig__Wire__Region *regs, **rp;
	uint32_t n = s->vm.vm.nr_regions;
	int r;

	regs = calloc(n, sizeof(*regs));
	rp = calloc(n, sizeof(*rp));
	if (!regs || !rp) {
		free(regs);
		free(rp);
		return mig__err(&s->result, -ENOMEM, "out of memory");
	}
	for (uint32_t i = 0; i < n; i++) {
		mig__wire__region__init(&regs[i]);
		regs[i].slot = s->vm.regions[i].slot;
		regs[i].gpa = s->vm.regions[i].gpa;
		regs[i].size = s->vm.regions[i].size;
		rp[i] = &regs[i];
	}
	cfg.n_regions = n;
	cfg.regions = rp;
	cfg.vcpus = s->vm.vm.nr_vcpus;
	cfg.page_size = MIG_PAGE_SIZE;
	cfg.cpuid.data = s->vm.cpuid;
	cfg.cpuid.len = s->vm.vm.cpuid_len;
	cfg.vmm = "libmigrate";
	env.msg_case = MIG__WIRE__ENVELOPE__MSG_VM_CONFIG;
	env.vm_config = &cfg;
	r = send_msg(s, 0, &env);
	free(regs);
	free(rp);
	if (r < 0)
		return mig__err(&s->result, r, "sending VM config");
	r = wait_msg(s, 0, MIG__WIRE__ENVELOPE__MSG_CONFIG_ACK, HELLO_TIMEOUT_MS,
		     &ack);
	if (r < 0)
		return r;
	if (!ack->config_ack->ok) {
		r = mig__err(&s->result, MIG_E_INCOMPAT,
			     "destination refused the VM configuration: %s",
			     ack->config_ack->message);
		mig__msg_free(ack);
		return r;
	}
	mig__msg_free(ack);
	return 0;
}

/* Whether connection c is up, with its socket in *fd. Called with s->lock
 * held. */
static int conn_open_locked(struct src_conn *c, uv_os_fd_t *fd)
{
	return c->connected && !c->error && !c->closing &&
	       uv_fileno((uv_handle_t *)&c->tcp, fd) == 0;
}

/* Whether connection c is up with nothing queued or in flight, so that
 * another thread may write on it. Called with s->lock held. */
static int conn_idle_locked(struct src_conn *c, uv_os_fd_t *fd)
{
	return !c->head && !c->writes && conn_open_locked(c, fd);
}

/* Write `b` on idle connection c's socket without blocking; returns the
 * bytes written. Called with s->lock held, which keeps c's thread from
 * starting a write meanwhile, so the stream stays in order. */
static size_t write_locked(mig_source *s, struct src_conn *c, uv_os_fd_t fd,
			   const mig_buf *b)
{
	size_t done = 0;

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
static size_t write_now(mig_source *s, uint32_t conn, const mig_buf *b)
{
	struct src_conn *c = &s->conns[conn];
	uv_os_fd_t fd;
	size_t done = 0;

	pthread_mutex_lock(&s->lock);
	if (conn_idle_locked(c, &fd))
		done = write_locked(s, c, fd, b);
	pthread_mutex_unlock(&s->lock);
	return done;
}

/* Queue what write_now() left of `b` (from byte `done` on) on connection
 * `conn`, as one item. Takes b's memory. */
static int queue_rest(mig_source *s, uint32_t conn, mig_buf *b, size_t done)
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
	it->remainder = done != 0;
	memset(b, 0, sizeof(*b));
	return queue_item(s, conn, it);
}

/* Queue the frames in `b` (one or more messages) on connection `conn`,
 * as one item: they go out in one write. Takes b's memory. With `now`,
 * first try to write them from this thread (write_now()). */
static int send_frames(mig_source *s, uint32_t conn, mig_buf *b, int now)
{
	return queue_rest(s, conn, b, now ? write_now(s, conn, b) : 0);
}

static int pack_simple(mig_buf *b, Mig__Wire__Envelope__MsgCase kind, void *msg)
{
	Mig__Wire__Envelope env = MIG__WIRE__ENVELOPE__INIT;
	env.msg_case = kind;
	env.hello = msg; /* every member of the oneof sits at the same place */
	return mig__msg_pack(&env, b);
}

/* One message on connection `conn`, as send_frames() (with `now`). */
static int send_simple(mig_source *s, uint32_t conn,
		       Mig__Wire__Envelope__MsgCase kind, void *msg, int now)
{
	mig_buf b = { 0 };
	int r = pack_simple(&b, kind, msg);

	if (r < 0) {
		mig__buf_free(&b);
		return r;
	}
	return send_frames(s, conn, &b, now);
}

static int set_throttle(mig_source *s, unsigned pct)
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

/* Move what mig_mark_dirty() collected into the send bitmaps; returns the
 * pages not marked there already. `last`: no mark is taken after this. */
static long merge_marked(mig_source *s, int last)
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
static long sync_dirty(mig_source *s)
{
	long n = mig__dirty_sync(s->dirty, s->send_bm, &s->result);
	if (n < 0)
		mig__err_prefix(&s->result, "dirty log (%s): ",
				mig__dirty_name(s->dirty));
	else
		n += merge_marked(s, 0);
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

/* Where a round started: its time and the connections' counters. */
struct round_mark {
	uint64_t t0, bytes, pages, zero, raw;
};

/* Start a round: its mark, and RoundStart appended to `b`, for the caller
 * to send on connection 0 before the round's pages. */
static int round_begin(mig_source *s, struct round_mark *m, mig_buf *b)
{
	Mig__Wire__RoundStart rs = MIG__WIRE__ROUND_START__INIT;
	int r;

	m->t0 = mig__now_us();
	s->round++;
	conn_counters(s, &m->bytes, &m->pages, &m->zero, &m->raw);
	rs.round = s->round;
	r = pack_simple(b, MIG__WIRE__ENVELOPE__MSG_ROUND_START, &rs);
	if (r < 0)
		return mig__err(&s->result, r, "queueing round start");
	return 0;
}

/* Start a round: RoundStart, then every marked chunk, queued. */
static int round_queue(mig_source *s, struct round_mark *m)
{
	mig_buf b = { 0 };
	int r;

	if ((r = round_begin(s, m, &b)) < 0) {
		mig__buf_free(&b);
		return r;
	}
	if ((r = send_frames(s, 0, &b, 0)) < 0)
		return mig__err(&s->result, r, "queueing round start");
	(void)queue_round(s, -1, &r);
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
		r = send_simple(s, i, MIG__WIRE__ENVELOPE__MSG_ROUND_END, &re, 0);
	if (r < 0)
		return mig__err(&s->result, r, "queueing round end");
	return 0;
}

/*
 * The stop-and-copy round ends on connection `conn` with its last pages
 * (with `pages`: the caller did not queue them), RoundEnd and Complete.
 * When the connection has written everything else, this thread does its
 * thread's work: encodes those pages and writes them with both messages,
 * in one write, its page count final (see write_now()). Otherwise they are
 * queued, and its thread packs Complete once it has counted the pages
 * before it.
 */
static int finish_conn(mig_source *s, uint32_t conn, int pages,
		       const uint8_t *hash, int has_hash)
{
	struct src_conn *c = &s->conns[conn];
	Mig__Wire__RoundEnd re = MIG__WIRE__ROUND_END__INIT;
	struct chunk_out co = { c, NULL };
	mig_buf b = { 0 };
	size_t done = 0;
	uv_os_fd_t fd;
	int idle, r = 0;

	pthread_mutex_lock(&s->lock);
	idle = conn_idle_locked(c, &fd);
	if (idle)
		c->writes++; /* this thread's, until written */
	pthread_mutex_unlock(&s->lock);
	if (!idle) {
		if (pages)
			(void)queue_round(s, conn, &r);
		if (r < 0)
			return mig__err(&s->result, r, "out of memory queueing pages");
	} else if (pages) {
		co.out = &b;
		(void)for_marked_chunks(s, conn, chunk_to_buf, &co, &r);
	}
	re.round = s->round;
	if (r == 0)
		r = pack_simple(&b, MIG__WIRE__ENVELOPE__MSG_ROUND_END, &re);
	if (idle) {
		pthread_mutex_lock(&s->lock);
		if (r == 0)
			r = pack_complete_msg(c->pages, hash, has_hash, &b);
		if (r == 0 && conn_open_locked(c, &fd))
			done = write_locked(s, c, fd, &b);
		c->writes--;
		pthread_cond_broadcast(&s->cond);
		pthread_mutex_unlock(&s->lock);
	}
	if (r < 0) {
		mig__buf_free(&b);
		return mig__err(&s->result, r, "connection %u: last pages, round end "
				"and completion: %s", conn, mig_strerror(r));
	}
	if ((r = queue_rest(s, conn, &b, done)) == 0 && !idle) {
		struct item *it = calloc(1, sizeof(*it));
		if (!it)
			return mig__err(&s->result, -ENOMEM, "queueing completion");
		it->is_complete = 1;
		it->has_hash = has_hash;
		memcpy(it->hash, hash, sizeof(it->hash));
		r = queue_item(s, conn, it);
	}
	if (r < 0)
		return mig__err(&s->result, r, "queueing completion");
	return 0;
}

/* The round's stats, once its pages are on the wire. */
static void round_record(mig_source *s, const struct round_mark *m, uint64_t d)
{
	uint64_t b1, p1, z1, raw1, b0 = m->bytes, p0 = m->pages, z0 = m->zero;

	conn_counters(s, &b1, &p1, &z1, &raw1);
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

	if ((r = round_queue(s, &m)) < 0 || (r = wait_drained(s)) < 0)
		return r;
	uint64_t t_end = mig__now_us();
	if ((r = round_end_queue(s)) < 0)
		return r;
	uint64_t limit = s->params.timeout_ms ? s->params.timeout_ms
					      : ROUND_ACK_TIMEOUT_MS;
	r = wait_msg(s, 0, MIG__WIRE__ENVELOPE__MSG_STATS, limit, &ack);
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
	 * part of every expected downtime (precopy()). The smallest is the
	 * best estimate. */
	uint64_t rtt = mig__now_us() - t_end;
	pthread_mutex_lock(&s->lock);
	if (rtt < s->rtt_us)
		s->rtt_us = rtt;
	pthread_mutex_unlock(&s->lock);
	d = sync_dirty(s);
	if (d < 0)
		return (int)d;
	*dirtied = (uint64_t)d;
	round_record(s, &m, *dirtied);
	return 0;
}

/* Pages marked in the send bitmaps; past `limit`, some number above it. */
static uint64_t count_marked_upto(mig_source *s, uint64_t limit)
{
	uint64_t n = 0;
	for (uint32_t r = 0; r < s->vm.vm.nr_regions && n <= limit; r++) {
		uint64_t words = mig__bitmap_words(s->vm.regions[r].size / MIG_PAGE_SIZE);
		for (uint64_t w = 0; w < words && n <= limit; w++)
			n += mig__popcount(s->send_bm[r][w]);
	}
	return n;
}

static uint64_t count_marked(mig_source *s)
{
	return count_marked_upto(s, UINT64_MAX);
}

/* ---- the engine ---------------------------------------------------------- */

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
	r = pack_simple(o->b, MIG__WIRE__ENVELOPE__MSG_STATE, &sb);
	if (r == 0 && o->stream && o->b->len >= STATE_SEND_MIN)
		r = send_frames(o->s, 0, o->b, 1);
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
		r = pack_simple(b, MIG__WIRE__ENVELOPE__MSG_STATE_END, &se);
	}
	if (r < 0)
		return mig__err(&s->result, r, "sending VM state");
	return 0;
}

/* Disarm the commit answer; returns whether Activate already went out
 * (then the destination owns the VM and this copy must never run again). */
static int activation_went_out(mig_source *s)
{
	int sent;

	pthread_mutex_lock(&s->lock);
	s->commit_armed = 0;
	sent = s->activate_sent;
	pthread_mutex_unlock(&s->lock);
	return sent;
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
static int stop_and_copy(mig_source *s)
{
	int early = (s->features & MIG__WIRE__FEATURE__FEATURE_EARLY_STATE) != 0;
	Mig__Wire__Switchover sw = MIG__WIRE__SWITCHOVER__INIT;
	struct round_mark m;
	mig_buf b = { 0 };
	int r, inline_pages;
	long d;

	set_phase(s, MIG_PHASE_STOPCOPY);
	/* The switchover goes out while the VM still runs: the destination
	 * wakes up to it (and then polls) during the pause, not after. Should
	 * the pause fail, the failure path aborts the destination as usual. */
	sw.round = s->round + 1;
	sw.paused_at_ns = mig__now_us() * 1000;
	r = send_simple(s, 0, MIG__WIRE__ENVELOPE__MSG_SWITCHOVER, &sw, 1);
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
	d += merge_marked(s, 1);
	/* The rest of the state goes with the round's start, in one write. */
	if ((r = round_begin(s, &m, &b)) < 0) {
		mig__buf_free(&b);
		return r;
	}
	if ((r = send_frames(s, 0, &b, 1)) < 0)
		return mig__err(&s->result, r, "queueing VM state");
	/* A few last pages (an idle guest's timer ticks) this thread encodes
	 * itself with the round's end (finish_conn()); more are the
	 * connection threads' work, in parallel. */
	inline_pages = count_marked_upto(s, FINAL_INLINE_PAGES + 1) <= FINAL_INLINE_PAGES;
	if (!inline_pages) {
		(void)queue_round(s, -1, &r);
		if (r < 0)
			return mig__err(&s->result, r, "out of memory queueing pages");
	}
	if (!early) {
		if ((r = put_state(s, &b)) < 0) {
			mig__buf_free(&b);
			return r;
		}
		if ((r = send_frames(s, 0, &b, 0)) < 0)
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
	if ((r = wait_drained(s)) < 0) {
		if (!activation_went_out(s))
			return r;
		/* While this thread slept, connection 0's thread answered the
		 * commit and the destination resumed and hung up: committed. */
		memset(&s->result, 0, sizeof(s->result));
		r = 0;
	}
	round_record(s, &m, 0);
	mig__log(&s->cb, s->vm.vm.opaque, MIG_LOG_DEBUG, "stop-and-copy: all sent, waiting for commit");

	/* Commitment: once Commit is read, this copy must never run again.
	 * Connection 0's thread answers it with Activate unless this thread
	 * has given up first (disarmed under the lock). */
	set_phase(s, MIG_PHASE_COMMIT);
	Mig__Wire__Envelope *env;
	int activated;
	r = wait_msg(s, 0, MIG__WIRE__ENVELOPE__MSG_COMMIT, COMMIT_TIMEOUT_MS, &env);
	uint64_t t_sent;
	activated = activation_went_out(s);
	pthread_mutex_lock(&s->lock);
	t_sent = s->activate_sent_us;
	pthread_mutex_unlock(&s->lock);
	if (r == 0)
		mig__msg_free(env);
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

	if (!activated) {
		/* Commit came before the arming (cannot happen: the
		 * destination commits only after Complete). */
		Mig__Wire__Activate act = MIG__WIRE__ACTIVATE__INIT;
		r = send_simple(s, 0, MIG__WIRE__ENVELOPE__MSG_ACTIVATE, &act, 0);
		t_sent = mig__now_us();
	}
	uint64_t t_act = mig__now_us();
	uint64_t resume_us = 0;
	if (r == 0)
		r = wait_msg(s, 0, MIG__WIRE__ENVELOPE__MSG_ACTIVATED,
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

static void free_bitmaps(mig_source *s, uint64_t **bms)
{
	if (!bms)
		return;
	for (uint32_t r = 0; r < s->vm.vm.nr_regions; r++)
		free(bms[r]);
	free(bms);
}

static uint64_t **alloc_bitmaps(mig_source *s)
{
	uint64_t **bms = calloc(s->vm.vm.nr_regions, sizeof(*bms));
	if (!bms)
		return NULL;
	for (uint32_t r = 0; r < s->vm.vm.nr_regions; r++) {
		bms[r] = calloc(mig__bitmap_words(s->vm.regions[r].size / MIG_PAGE_SIZE), 8);
		if (!bms[r]) {
			free_bitmaps(s, bms);
			return NULL;
		}
	}
	return bms;
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
			int e = send_simple(s, 0, MIG__WIRE__ENVELOPE__MSG_HINT, &h, 0);
			if (e < 0)
				return mig__err(&s->result, e, "queueing memory hints");
		}
	}
	return 0;
}

static int precopy(mig_source *s)
{
	uint64_t dirtied = 0, expect_us;
	mig_policy pol = { 0 };
	int r;

	pol.target_us = (uint64_t)s->params.downtime_ms * 1000;
	pol.max_rounds = s->params.max_rounds;
	pol.can_throttle = s->params.throttle && s->vm.vm.ops->throttle;
	r = mig__dirty_create(&s->dirty, s->params.dirty_log, s->vm.vm.vm_fd,
			      s->vm.regions, s->vm.vm.nr_regions, s->vm.vcpu_fds,
			      s->vm.vm.nr_vcpus, &s->result);
	if (r < 0)
		return r;
	s->send_bm = alloc_bitmaps(s);
	s->resident_bm = alloc_bitmaps(s);
	s->absent_is_zero = calloc(s->vm.vm.nr_regions, sizeof(bool));
	uint64_t **marked = alloc_bitmaps(s);
	if (!s->send_bm || !s->resident_bm || !s->absent_is_zero || !marked) {
		free_bitmaps(s, marked);
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
	long n = sync_dirty(s);
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
			.remaining = count_marked(s),
			.sent = last.pages,
			.bytes_per_page = last.pages ? (double)last.bytes / (double)last.pages
						     : MIG_PAGE_SIZE,
			.throughput = last.throughput,
		};
		obs.dirty_bps = last.dirty_rate * obs.bytes_per_page;
		/* State and the commit handshake: a few round trips. */
		pol.fixed_us = 3 * s->rtt_us + 2000;
		enum mig_decision dec = mig__policy_decide(&pol, &obs, &expect_us);
		pthread_mutex_lock(&s->lock);
		s->stats->expected_downtime_us = expect_us;
		pthread_mutex_unlock(&s->lock);
		report_progress(s);
		if (dec == MIG_SWITCH)
			break;
		if (dec == MIG_THROTTLE && set_throttle(s, pol.throttle_pct) < 0)
			pol.can_throttle = 0; /* the VMM refused: stop asking */
	}
	return 0;
}

/* Free the items of connection c's queue that its thread has not taken,
 * but the rest of a frame already begun (with `all`, that too: the
 * connection is closed). */
static void drop_queued(mig_source *s, struct src_conn *c, int all)
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

static void close_conns(mig_source *s)
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
		drop_queued(s, c, 1);
		mig__enc_destroy(c->enc);
		c->enc = NULL;
		mig__reader_free(&c->rd);
	}
}

static void fail_cleanup(mig_source *s)
{
	mig_error e = { 0 };
	int was_paused = s->paused;

	/* Tell the destination why, if the control connection still works:
	 * at once, not after the pages still queued, which are moot now, nor
	 * after a bandwidth cap's pause (either could hold the reason back
	 * for seconds): from this thread if nothing is in flight there. */
	if (s->nconns && s->conns[0].thread_ok && s->conns[0].connected &&
	    !s->conns[0].error) {
		Mig__Wire__Abort ab = MIG__WIRE__ABORT__INIT;

		__atomic_store_n(&s->aborting, 1, __ATOMIC_RELAXED);
		drop_queued(s, &s->conns[0], 0);
		ab.error = s->result.code;
		ab.reason = s->result.msg;
		if (send_simple(s, 0, MIG__WIRE__ENVELOPE__MSG_ABORT, &ab, 1) == 0) {
			struct timespec ts;
			/* Until it is written, not just taken: closing the
			 * connection cancels the writes still pending. A
			 * paused VM waits for this (it resumes after it), so
			 * 200 ms at most then; a running one loses nothing by
			 * waiting, and a slow or loaded host (a nested one
			 * under emulation) may need seconds to get to it. */
			mig__deadline(&ts, was_paused ? 200 : 3000);
			pthread_mutex_lock(&s->lock);
			while ((s->conns[0].head || s->conns[0].writes) &&
			       !s->conns[0].error &&
			       pthread_cond_timedwait(&s->cond, &s->lock, &ts) == 0)
				;
			pthread_mutex_unlock(&s->lock);
		}
	}
	/* The connection threads may still be encoding queued chunks, which
	 * rearms them in the dirty log: stop them before the log goes. */
	close_conns(s);
	mig__dirty_destroy(s->dirty);
	s->dirty = NULL;
	set_throttle(s, 0);
	if (s->paused) {
		if (s->vm.vm.ops->resume(s->vm.vm.opaque, &e) < 0) {
			mig__err_prefix(&s->result, "%s", "");
			snprintf(s->result.msg + strlen(s->result.msg),
				 sizeof(s->result.msg) - strlen(s->result.msg),
				 "; resuming the source VM FAILED: %s", e.msg);
			return;
		}
		s->paused = 0;
	}
	size_t n = strlen(s->result.msg);
	snprintf(s->result.msg + n, sizeof(s->result.msg) - n,
		 "; source VM %s", was_paused ? "resumed" : "kept running");
}

static void *engine_main(void *arg)
{
	mig_source *s = arg;
	int r;

	mig__thread_name("mig-source");
	s->t_start_us = mig__now_us();
	pthread_mutex_lock(&s->lock);
	s->last_progress_us = s->t_start_us;
	pthread_mutex_unlock(&s->lock);
	set_phase(s, MIG_PHASE_SETUP);
	r = connect_all(s);
	if (r == 0)
		r = send_config(s);
	if (r == 0)
		r = precopy(s);
	if (r == 0)
		r = stop_and_copy(s);

	if (r < 0 && !s->committed && activation_went_out(s)) {
		/* Never resume a VM the destination may be running. */
		mig__log(&s->cb, s->vm.vm.opaque, MIG_LOG_WARN,
			 "destination committed and was told to resume; after that: %s",
			 s->result.msg);
		memset(&s->result, 0, sizeof(s->result));
		s->committed = 1;
		r = 0;
	}
	if (r < 0 && !s->committed) {
		/* "migration to hostb:4444 failed in round 3: ..." */
		char where[64];
		if (s->round)
			snprintf(where, sizeof(where), " in round %u", s->round);
		else
			snprintf(where, sizeof(where), " during set-up");
		mig__err_prefix(&s->result, "migration to %s:%d failed%s: ",
				s->host, s->port, where);
		fail_cleanup(s);
	} else {
		mig__dirty_destroy(s->dirty);
		s->dirty = NULL;
	}
	close_conns(s);

	pthread_mutex_lock(&s->lock);
	s->stats->total_time_us = mig__now_us() - s->t_start_us;
	s->stats->phase = s->result.code ? MIG_PHASE_FAILED : MIG_PHASE_DONE;
	s->stats->status = s->result.code;
	s->stats->throttle_pct = s->throttle_pct;
	s->finished = 1;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	if (s->cb.done)
		s->cb.done(&s->result, s->vm.vm.opaque);
	return NULL;
}

/* ---- public API ---------------------------------------------------------- */

MIG_API int mig_source_create(mig_source **out, const mig_source_config *cfg,
			      mig_error *err)
{
	mig_source *s;
	int r;

	if (!out || !cfg)
		return mig__err(err, -EINVAL, "source: NULL argument");
	*out = NULL;
	if ((r = mig_params_validate(&cfg->params, err)) < 0)
		return r;
	if (!cfg->token || !*cfg->token || strlen(cfg->token) > 256)
		return mig__err(err, -EINVAL,
				"source: a token of 1..256 bytes is required");
	s = calloc(1, sizeof(*s));
	if (!s)
		return mig__err(err, -ENOMEM, "source: out of memory");
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	s->stats = calloc(1, sizeof(*s->stats));
	if (!s->stats) {
		mig_source_destroy(s);
		return mig__err(err, -ENOMEM, "source: out of memory");
	}
	if ((r = mig__parse_uri(cfg->uri, s->host, sizeof(s->host), &s->port,
				err)) < 0 ||
	    (r = mig__vm_copy(&s->vm, &cfg->vm, err)) < 0) {
		mig_source_destroy(s);
		return r;
	}
	if (s->port == 0) {
		mig_source_destroy(s);
		return mig__err(err, -EINVAL, "address '%s': port 0", cfg->uri);
	}
	snprintf(s->uri, sizeof(s->uri), "%s", cfg->uri);
	s->params = cfg->params;
	s->cb = cfg->cb;
	s->token_len = strlen(cfg->token);
	s->token = (uint8_t *)strdup(cfg->token);
	s->nconns = s->params.connections;
	s->conns = calloc(s->nconns, sizeof(*s->conns));
	if (!s->token || !s->conns ||
	    getrandom(s->session_id, sizeof(s->session_id), 0) !=
		    (ssize_t)sizeof(s->session_id)) {
		mig_source_destroy(s);
		return mig__err(err, -ENOMEM, "source: out of memory");
	}
	*out = s;
	return 0;
}

MIG_API int mig_source_start(mig_source *s, mig_error *err)
{
	if (!s)
		return mig__err(err, -EINVAL, "source: NULL");
	if (s->started)
		return mig__err(err, -EALREADY, "source: already started");
	if (mig__thread_start(&s->thread, engine_main, s) != 0)
		return mig__err(err, -EAGAIN, "source: cannot create thread");
	s->started = 1;
	return 0;
}

MIG_API int mig_source_wait(mig_source *s, mig_error *err)
{
	if (!s)
		return mig__err(err, -EINVAL, "source: NULL");
	if (!s->started)
		return mig__err(err, -EINVAL, "source: not started");
	if (!s->joined) {
		pthread_join(s->thread, NULL);
		s->joined = 1;
	}
	if (err)
		*err = s->result;
	return s->result.code;
}

MIG_API int mig_source_cancel(mig_source *s)
{
	if (!s)
		return -EINVAL;
	pthread_mutex_lock(&s->lock);
	s->cancel = 1;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	return 0;
}

MIG_API int mig_source_stats(mig_source *s, mig_stats *out)
{
	if (!s || !out)
		return -EINVAL;
	pthread_mutex_lock(&s->lock);
	*out = *s->stats;
	pthread_mutex_unlock(&s->lock);
	return 0;
}

MIG_API void mig_source_destroy(mig_source *s)
{
	if (!s)
		return;
	if (s->started && !s->joined) {
		mig_source_cancel(s);
		pthread_join(s->thread, NULL);
		s->joined = 1;
	}
	while (s->mbox_head) {
		struct msg *m = s->mbox_head;
		s->mbox_head = m->next;
		mig__msg_free(m->env);
		free(m);
	}
	free_bitmaps(s, s->send_bm);
	free_bitmaps(s, s->resident_bm);
	free_bitmaps(s, s->marked_bm);
	free(s->absent_is_zero);
	if (s->token) {
		memset(s->token, 0, s->token_len);
		free(s->token);
	}
	free(s->conns);
	free(s->stats);
	mig__vm_copy_free(&s->vm);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->cond);
	free(s);
}
