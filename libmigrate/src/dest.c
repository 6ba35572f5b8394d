/*
 * The destination side: one thread running a libuv loop that listens,
 * authenticates the source's connections, writes pages into guest memory,
 * collects the VM state, and commits and resumes the VM only once the
 * image is complete. It never resumes a partial image: any failure before
 * Activate leaves the VM unresumed and the error in mig_dest_wait().
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mman.h>

#include "codec.h"
#include "frame.h"
#include "net.h"
#include "protocol.h"
#include "session.h"
#include "state.h"

#define DEST_DEFAULT_TIMEOUT_MS 30000u
#define DEST_TICK_MS 200u
#define DEST_MAX_REJECTS 64u
#define SPIN_IDLE_US 20000u         /* see on_spin() */

struct dst_conn {
	mig_dest *d;
	struct dst_conn *next;
	uv_tcp_t tcp;
	uv_shutdown_t shut;
	mig_reader rd;
	mig_dec *dec;
	char peer[64];
	int authed;
	int closing;
	uint32_t index;
	int complete;
	uint32_t round;     /* last round this connection ended */
	uint64_t pages;
};

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/* A MemoryHint waiting for the prefault threads; `pos` is the next page
 * to hand out (under the lock). */
struct hint {
	struct hint *next;
	uint32_t region;
	uint64_t first_page;
	uint64_t nwords;
	uint64_t pos;
	uint64_t words[];
};

/* Threads that fault in hinted pages: two, so that populating RAM (which
 * costs page zeroing and, in a nested VM, the outer host's faults) runs
 * on both cores beside the decoder. */
#define PREFAULT_THREADS 2
/* Pages per madvise: 2 MiB, one huge page, so a stop is noticed soon. */
#define PREFAULT_RUN 512u

struct dwreq {
	uv_write_t req;
	mig_buf buf;
};

struct mig_dest {
	mig_vm_copy vm;
	mig_callbacks cb;
	uint8_t *token;
	size_t token_len;
	uint32_t timeout_ms;

	uv_loop_t loop;
	uv_tcp_t listener;
	uv_async_t async;
	uv_timer_t timer;
	uv_idle_t spin;             /* active: the loop polls, never sleeps */
	int port;
	char host[256];
	int loop_ok;

	pthread_t thread;
	int started;
	int joined;

	pthread_mutex_t lock;
	/* locked */
	int cancel;
	mig_stats *stats;
	struct hint *hints;         /* for the prefault threads */
	int prefault_stop;
	pthread_t prefault_thread[PREFAULT_THREADS];
	int prefault_running;       /* threads not yet out of work */
	int prefault_thread_ok[PREFAULT_THREADS]; /* joined by the loop thread */

	/* loop thread */
	struct dst_conn *conns;
	int have_session;
	uint8_t session_id[16];
	uint32_t expected;
	struct dst_conn **by_index;
	mig_pstate ps;              /* the session's state (protocol.h) */
	uint32_t ncomplete;
	mig_state state;
	uint8_t src_hash[16];
	int have_hash;
	int load_early;             /* config: load_state_early */
	int early_state;            /* negotiated: state streamed, then StateEnd */
	uint32_t state_items;       /* StateBlobs since the switchover */
	int state_loaded;           /* load_state done */
	int finished;
	uint64_t last_activity_us;
	uint64_t t_switch_us;
	uint64_t t_start_us;
	uint64_t bytes;
	uint32_t rejects;
	char last_reject[160];
	mig_error result;
};

static void conn_close(struct dst_conn *c);
static void finish(mig_dest *d);

/* ---- writing ------------------------------------------------------------- */

static void on_dwrite(uv_write_t *req, int status)
{
	struct dwreq *w = (struct dwreq *)req;
	(void)status; /* a failed write shows up as a read error too */
	mig__buf_free(&w->buf);
	free(w);
}

static int send_env(struct dst_conn *c, Mig__Wire__Envelope__MsgCase kind,
		    void *msg)
{
	Mig__Wire__Envelope env = MIG__WIRE__ENVELOPE__INIT;
	struct dwreq *w;
	uv_buf_t ub;
	int r;

	if (c->closing)
		return -ENOTCONN;
	w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	env.msg_case = kind;
	env.hello = msg; /* the oneof members share one place */
	r = mig__msg_pack(&env, &w->buf);
	if (r < 0) {
		free(w);
		return r;
	}
	ub = uv_buf_init((char *)w->buf.data, (unsigned)w->buf.len);
	r = uv_write(&w->req, (uv_stream_t *)&c->tcp, &ub, 1, on_dwrite);
	if (r < 0) {
		mig__buf_free(&w->buf);
		free(w);
	}
	return r;
}

/* ---- failure and completion --------------------------------------------- */

/* End the migration with `code`: tell the source, never resume. */
static void MIG_PRINTF(3, 4) dest_fail(mig_dest *d, int code, const char *fmt, ...)
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
		send_env(d->by_index[0], MIG__WIRE__ENVELOPE__MSG_ABORT, &ab);
	}
	size_t n = strlen(d->result.msg);
	snprintf(d->result.msg + n, sizeof(d->result.msg) - n,
		 "; VM not resumed");
	finish(d);
}

/* The session's state moves for message `msg` on connection `conn`, read
 * (MIG_PDIR_TO_DEST) or sent (MIG_PDIR_TO_SOURCE) (protocol.h); refused:
 * the migration fails. */
static int step(mig_dest *d, int msg, unsigned dir, uint32_t conn)
{
	mig_error e = { 0 };
	mig_pstate to;

	if (mig__proto_step(d->ps, msg, dir, conn, d->early_state, &to, &e) < 0) {
		dest_fail(d, e.code, "%s", e.msg);
		return e.code;
	}
	if (to != d->ps)
		mig__log(&d->cb, d->vm.vm.opaque, MIG_LOG_DEBUG, "protocol: %s -> %s",
			 mig__proto_state_name(d->ps), mig__proto_state_name(to));
	d->ps = to;
	return 0;
}

/* A message of the session to the source, on the control connection. */
static int session_send(mig_dest *d, Mig__Wire__Envelope__MsgCase kind, void *msg)
{
	int r = step(d, kind, MIG_PDIR_TO_SOURCE, 0);

	return r < 0 ? r : send_env(d->by_index[0], kind, msg);
}

static void on_conn_closed(uv_handle_t *h)
{
	struct dst_conn *c = h->data;
	mig__reader_free(&c->rd);
	mig__dec_destroy(c->dec);
	free(c);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
	struct dst_conn *c = req->data;
	(void)status;
	uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

/* Close after what was queued is written (an Abort, Activated). */
static void conn_close(struct dst_conn *c)
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
static void on_spin(uv_idle_t *h)
{
	mig_dest *d = h->data;

	/* A source that went quiet (a slow save, a stalled link) is waited
	 * for asleep: spin only while data came in the last SPIN_IDLE_US. */
	if (mig__now_us() - d->last_activity_us > SPIN_IDLE_US)
		uv_idle_stop(h);
	else
		sched_yield();
}

static void finish(mig_dest *d)
{
	if (d->finished)
		return;
	d->finished = 1;
	pthread_mutex_lock(&d->lock);
	d->prefault_stop = 1;
	pthread_mutex_unlock(&d->lock);
	while (d->conns)
		conn_close(d->conns);
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

static void reject(struct dst_conn *c, const char *why)
{
	mig_dest *d = c->d;
	d->rejects++;
	snprintf(d->last_reject, sizeof(d->last_reject), "%s from %s", why,
		 c->peer);
	mig__log(&d->cb, d->vm.vm.opaque, MIG_LOG_WARN,
		 "rejected connection: %s", d->last_reject);
	conn_close(c);
	if (d->rejects >= DEST_MAX_REJECTS)
		dest_fail(d, MIG_E_PROTOCOL, "too many rejected connections (last: %s)",
			  d->last_reject);
}

/* ---- protocol ------------------------------------------------------------ */

/* The features granted: those the source asked for that we have. */
static void hello_reply(struct dst_conn *c, const Mig__Wire__Hello *h, int ok,
			int code, const char *msg)
{
	Mig__Wire__HelloAck ack = MIG__WIRE__HELLO_ACK__INIT;
	ack.version_major = MIG_PROTOCOL_VERSION;
	ack.features = h->features & MIG_FEATURES_SUPPORTED;
	/* The state before the last pages only if the VMM can load it so. */
	if (!c->d->load_early)
		ack.features &= ~(uint64_t)MIG__WIRE__FEATURE__FEATURE_EARLY_STATE;
	ack.ok = ok;
	ack.error = code;
	ack.message = (char *)msg;
	send_env(c, MIG__WIRE__ENVELOPE__MSG_HELLO_ACK, &ack);
}

static void on_hello(struct dst_conn *c, const Mig__Wire__Hello *h)
{
	mig_dest *d = c->d;
	char why[128];

	if (h->version_major != MIG_PROTOCOL_VERSION) {
		snprintf(why, sizeof(why), "protocol version %u, we speak %u",
			 h->version_major, MIG_PROTOCOL_VERSION);
		hello_reply(c, h, 0, MIG_E_VERSION, why);
		reject(c, why);
		return;
	}
	if (!mig__secret_eq(h->token.data, h->token.len, d->token, d->token_len)) {
		hello_reply(c, h, 0, MIG_E_AUTH, "wrong token");
		reject(c, "wrong token");
		return;
	}
	if (h->session_id.len != sizeof(d->session_id) || h->connection_count == 0 ||
	    h->connection_count > 16 || h->connection_index >= h->connection_count) {
		hello_reply(c, h, 0, MIG_E_PROTOCOL, "bad session or connection index");
		reject(c, "bad session or connection index");
		return;
	}
	if (!d->have_session) {
		if (h->connection_index != 0) {
			hello_reply(c, h, 0, MIG_E_PROTOCOL, "connection 0 must come first");
			reject(c, "data connection before the control connection");
			return;
		}
		d->by_index = calloc(h->connection_count, sizeof(*d->by_index));
		if (!d->by_index) {
			dest_fail(d, -ENOMEM, "out of memory");
			return;
		}
		memcpy(d->session_id, h->session_id.data, sizeof(d->session_id));
		d->expected = h->connection_count;
		d->have_session = 1;
		d->t_start_us = mig__now_us();
		pthread_mutex_lock(&d->lock);
		d->stats->phase = MIG_PHASE_SETUP;
		pthread_mutex_unlock(&d->lock);
		/* One migration per handle: stop accepting strangers. */
	} else if (memcmp(h->session_id.data, d->session_id, sizeof(d->session_id)) ||
		   h->connection_count != d->expected ||
		   d->by_index[h->connection_index]) {
		hello_reply(c, h, 0, MIG_E_PROTOCOL, "a migration is already in progress");
		reject(c, "connection for another or duplicate session");
		return;
	}
	/* The source streams its state before the last pages only if both
	 * sides said so in the control connection's hello. */
	if (h->connection_index == 0)
		d->early_state = d->load_early &&
			(h->features & MIG__WIRE__FEATURE__FEATURE_EARLY_STATE);
	/* The source's hello is its first activity: the silence before it
	 * (a destination waiting for its source, as long as it takes) must
	 * not count towards the idle timeout, which starts with the session.
	 * on_dread() saw these bytes while the connection was not yet
	 * authenticated, so it did not count them. */
	d->last_activity_us = mig__now_us();
	c->authed = 1;
	c->index = h->connection_index;
	c->rd.limit = MIG_FRAME_MAX;
	d->by_index[c->index] = c;
	hello_reply(c, h, 1, 0, "");
}

static void on_config(mig_dest *d, const Mig__Wire__VmConfig *cfg)
{
	Mig__Wire__ConfigAck ack = MIG__WIRE__CONFIG_ACK__INIT;
	char why[200] = "";

	if (cfg->page_size != MIG_PAGE_SIZE)
		snprintf(why, sizeof(why), "page size %u, expected %u",
			 cfg->page_size, MIG_PAGE_SIZE);
	else if (cfg->vcpus != d->vm.vm.nr_vcpus)
		snprintf(why, sizeof(why), "source has %u vCPUs, destination %u",
			 cfg->vcpus, d->vm.vm.nr_vcpus);
	else if (cfg->n_regions != d->vm.vm.nr_regions)
		snprintf(why, sizeof(why), "source has %zu memory regions, destination %u",
			 cfg->n_regions, d->vm.vm.nr_regions);
	else if (cfg->cpuid.len != d->vm.vm.cpuid_len ||
		 (cfg->cpuid.len && memcmp(cfg->cpuid.data, d->vm.cpuid, cfg->cpuid.len)))
		snprintf(why, sizeof(why), "CPUID differs between source and destination");
	for (size_t i = 0; !why[0] && i < cfg->n_regions; i++) {
		const Mig__Wire__Region *r = cfg->regions[i];
		const mig_region *m = &d->vm.regions[i];
		if (r->gpa != m->gpa || r->size != m->size)
			snprintf(why, sizeof(why),
				 "memory region %zu: source gpa 0x%" PRIx64 " size 0x%" PRIx64
				 ", destination gpa 0x%" PRIx64 " size 0x%" PRIx64,
				 i, r->gpa, r->size, m->gpa, m->size);
	}
	ack.ok = !why[0];
	ack.error = why[0] ? MIG_E_INCOMPAT : 0;
	ack.message = why;
	if (why[0]) {
		send_env(d->by_index[0], MIG__WIRE__ENVELOPE__MSG_CONFIG_ACK, &ack);
		d->ps = MIG_PS_FAILED;
		/* The source learns why from the ack; no Abort on top. */
		d->result.code = MIG_E_INCOMPAT;
		snprintf(d->result.msg, sizeof(d->result.msg),
			 "incompatible VM: %s; VM not resumed", why);
		finish(d);
		return;
	}
	if (session_send(d, MIG__WIRE__ENVELOPE__MSG_CONFIG_ACK, &ack) < 0)
		return;
	pthread_mutex_lock(&d->lock);
	d->stats->setup_time_us = mig__now_us() - d->t_start_us;
	d->stats->phase = MIG_PHASE_PRECOPY;
	pthread_mutex_unlock(&d->lock);
}

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
static void prefault_join(mig_dest *d)
{
	for (int i = 0; i < PREFAULT_THREADS; i++) {
		if (d->prefault_thread_ok[i]) {
			pthread_join(d->prefault_thread[i], NULL);
			d->prefault_thread_ok[i] = 0;
		}
	}
}

static void on_hint(mig_dest *d, const Mig__Wire__MemoryHint *m)
{
	uint64_t npages, nwords = m->bitmap.len / 8;
	struct hint *h;

	if (m->region >= d->vm.vm.nr_regions || m->first_page % 64 ||
	    m->bitmap.len % 8 || m->bitmap.len > MIG_HINT_BITMAP_MAX) {
		dest_fail(d, MIG_E_PROTOCOL, "malformed memory hint");
		return;
	}
	npages = d->vm.regions[m->region].size / MIG_PAGE_SIZE;
	if (m->first_page >= npages || nwords * 64 > npages - m->first_page + 63) {
		dest_fail(d, MIG_E_PROTOCOL, "memory hint beyond region %u", m->region);
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
	prefault_join(d);
	for (int i = 0; i < PREFAULT_THREADS; i++) {
		d->prefault_thread_ok[i] = mig__thread_start(&d->prefault_thread[i], prefault_main, d) == 0;
		if (!d->prefault_thread_ok[i]) {
			pthread_mutex_lock(&d->lock);
			d->prefault_running--;
			pthread_mutex_unlock(&d->lock);
		}
	}
}

static uint8_t *page_sink(void *opaque, uint32_t region, uint64_t idx)
{
	mig_dest *d = opaque;
	if (region >= d->vm.vm.nr_regions ||
	    idx >= d->vm.regions[region].size / MIG_PAGE_SIZE)
		return NULL;
	return (uint8_t *)d->vm.regions[region].hva + idx * MIG_PAGE_SIZE;
}

/* The VMM loads the state: at StateEnd (load_state_early) or once the
 * image is complete. */
static int load_state(mig_dest *d)
{
	mig_error e = { 0 };
	int r;

	r = d->vm.vm.ops->load_state(d->vm.vm.opaque, &d->state, &e);
	if (r < 0) {
		dest_fail(d, r, "loading VM state: %s", e.msg[0] ? e.msg : mig_strerror(r));
		return r;
	}
	d->state_loaded = 1;
	mig__log(&d->cb, d->vm.vm.opaque, MIG_LOG_DEBUG, "state loaded");
	return 0;
}

/* Every connection has said Complete: check, load, commit. */
static void image_complete(mig_dest *d)
{
	mig_error e = { 0 };
	int r;

	mig__log(&d->cb, d->vm.vm.opaque, MIG_LOG_DEBUG, "image complete");
	if (d->have_hash) {
		uint8_t h[16];
		r = mig__hash_regions(d->vm.regions, d->vm.vm.nr_regions, h, &e);
		if (r < 0) {
			dest_fail(d, r, "memory hash: %s", e.msg);
			return;
		}
		if (memcmp(h, d->src_hash, sizeof(h))) {
			dest_fail(d, -EIO,
				  "memory differs from the source's at pause (hash mismatch)");
			return;
		}
	}
	if (!d->state_loaded && load_state(d) < 0)
		return;
	Mig__Wire__Commit commit = MIG__WIRE__COMMIT__INIT;
	if (d->have_hash) {
		commit.memory_hash.data = d->src_hash;
		commit.memory_hash.len = sizeof(d->src_hash);
	}
	if ((r = session_send(d, MIG__WIRE__ENVELOPE__MSG_COMMIT, &commit)) < 0) {
		dest_fail(d, r, "sending commit: %s", mig_strerror(r));
		return;
	}
	mig__log(&d->cb, d->vm.vm.opaque, MIG_LOG_DEBUG, "commit sent");
	pthread_mutex_lock(&d->lock);
	d->stats->phase = MIG_PHASE_COMMIT;
	pthread_mutex_unlock(&d->lock);
}

static void on_activate(mig_dest *d)
{
	mig_error e = { 0 };
	uint64_t t0 = mig__now_us();
	int r;

	mig__log(&d->cb, d->vm.vm.opaque, MIG_LOG_DEBUG, "activating: resuming the VM");
	r = d->vm.vm.ops->resume(d->vm.vm.opaque, &e);
	if (r < 0) {
		/* The source has committed: the image is ours alone. */
		mig__err(&d->result, r, "resuming the migrated VM failed: %.200s",
			 e.msg);
		finish(d);
		return;
	}
	uint64_t t1 = mig__now_us();
	mig__log(&d->cb, d->vm.vm.opaque, MIG_LOG_DEBUG, "activated: VM resumed");
	Mig__Wire__Activated a = MIG__WIRE__ACTIVATED__INIT;
	a.resume_us = t1 - t0;
	session_send(d, MIG__WIRE__ENVELOPE__MSG_ACTIVATED, &a);
	pthread_mutex_lock(&d->lock);
	d->stats->downtime_us = t1 - d->t_switch_us;
	pthread_mutex_unlock(&d->lock);
	finish(d);
}

/* A round is over when every connection has said so; before the switchover
 * the source waits for this acknowledgement. */
static void on_round_end(struct dst_conn *c, const Mig__Wire__RoundEnd *re)
{
	mig_dest *d = c->d;

	if (re->round != c->round + 1) {
		dest_fail(d, MIG_E_PROTOCOL, "connection %u: round %u ends after round %u",
			  c->index, re->round, c->round);
		return;
	}
	c->round = re->round;
	for (uint32_t i = 0; i < d->expected; i++)
		if (!d->by_index[i] || d->by_index[i]->round < re->round)
			return;
	if (d->t_switch_us)
		return; /* the stop-and-copy round: Complete follows */
	Mig__Wire__RoundStats ack = MIG__WIRE__ROUND_STATS__INIT;
	ack.round = re->round;
	pthread_mutex_lock(&d->lock);
	ack.pages = d->stats->pages_sent;
	ack.bytes = d->bytes;
	pthread_mutex_unlock(&d->lock);
	session_send(d, MIG__WIRE__ENVELOPE__MSG_STATS, &ack);
}

/* A VM state item. Each once: a second copy would replace the first, or
 * be loaded over it. (The table ends the state at StateEnd or at the
 * control connection's Complete: it is loaded once.) */
static void on_state(mig_dest *d, const Mig__Wire__StateBlob *sb)
{
	const void *seen;
	size_t seen_len;
	int r;

	if (mig_state_get(&d->state, sb->name, &seen, &seen_len) == 0) {
		dest_fail(d, MIG_E_PROTOCOL, "state item '%.64s' sent twice", sb->name);
		return;
	}
	d->state_items++;
	r = mig_state_add(&d->state, sb->name, sb->data.data, sb->data.len);
	if (r < 0) {
		dest_fail(d, MIG_E_PROTOCOL, "state item '%.64s' refused: %s",
			  sb->name, mig_strerror(r));
		return;
	}
	if (d->early_state && d->vm.vm.ops->load_state_item) {
		mig_error e = { 0 };
		r = d->vm.vm.ops->load_state_item(d->vm.vm.opaque, sb->name,
						  sb->data.data, sb->data.len, &e);
		if (r < 0)
			dest_fail(d, r, "loading VM state item '%.64s': %s",
				  sb->name, e.msg[0] ? e.msg : mig_strerror(r));
	}
}

/*
 * A message from the source on an authenticated connection. The protocol
 * table (step()) decides whether it may come now; what is left here is
 * what it carries, and the rules the table cannot see: per connection
 * (Complete once), per item (each state item once) and counts.
 */
static void on_msg(struct dst_conn *c, Mig__Wire__Envelope *env)
{
	mig_dest *d = c->d;

	if (!c->authed) {
		if (env->msg_case != MIG__WIRE__ENVELOPE__MSG_HELLO)
			reject(c, "first message is not a hello");
		else
			on_hello(c, env->hello);
		return;
	}
	if (env->msg_case == MIG__WIRE__ENVELOPE__MSG_COMPLETE && c->complete) {
		dest_fail(d, MIG_E_PROTOCOL, "connection %u completed twice", c->index);
		return;
	}
	if (step(d, env->msg_case, MIG_PDIR_TO_DEST, c->index) < 0)
		return;
	switch (env->msg_case) {
	case MIG__WIRE__ENVELOPE__MSG_ABORT:
		dest_fail(d, MIG_E_PEER, "source aborted: %s", env->abort->reason);
		break;
	case MIG__WIRE__ENVELOPE__MSG_VM_CONFIG:
		on_config(d, env->vm_config);
		break;
	case MIG__WIRE__ENVELOPE__MSG_ROUND_START:
		pthread_mutex_lock(&d->lock);
		d->stats->rounds = env->round_start->round;
		pthread_mutex_unlock(&d->lock);
		break;
	case MIG__WIRE__ENVELOPE__MSG_ROUND_END:
		on_round_end(c, env->round_end);
		break;
	case MIG__WIRE__ENVELOPE__MSG_HINT:
		on_hint(d, env->hint);
		break;
	case MIG__WIRE__ENVELOPE__MSG_SWITCHOVER:
		mig__log(&d->cb, d->vm.vm.opaque, MIG_LOG_DEBUG, "switchover");
		/* The source sends this just before it pauses the VM, so the
		 * downtime measured here (to the resume) includes the pause. */
		d->t_switch_us = mig__now_us();
		/* The VM is down until it resumes here: poll rather than sleep,
		 * so that no wake-up latency adds to the downtime. */
		uv_idle_start(&d->spin, on_spin);
		d->last_activity_us = mig__now_us();
		pthread_mutex_lock(&d->lock);
		d->stats->phase = MIG_PHASE_STOPCOPY;
		/* Round 1's hints are long done; never compete with the
		 * last pages for a CPU. */
		d->prefault_stop = 1;
		pthread_mutex_unlock(&d->lock);
		break;
	case MIG__WIRE__ENVELOPE__MSG_STATE:
		on_state(d, env->state);
		break;
	case MIG__WIRE__ENVELOPE__MSG_STATE_END:
		if (env->state_end->items != d->state_items) {
			dest_fail(d, MIG_E_PROTOCOL, "source sent %u state items, %u arrived",
				  env->state_end->items, d->state_items);
			break;
		}
		(void)load_state(d);
		break;
	case MIG__WIRE__ENVELOPE__MSG_COMPLETE:
		if (env->complete->pages_total != c->pages) {
			dest_fail(d, MIG_E_PROTOCOL,
				  "connection %u: source sent %" PRIu64 " pages, %" PRIu64 " arrived",
				  c->index, env->complete->pages_total, c->pages);
			break;
		}
		if (c->index == 0 && env->complete->memory_hash.len) {
			if (env->complete->memory_hash.len != sizeof(d->src_hash)) {
				dest_fail(d, MIG_E_PROTOCOL, "bad memory hash length");
				break;
			}
			memcpy(d->src_hash, env->complete->memory_hash.data,
			       sizeof(d->src_hash));
			d->have_hash = 1;
		}
		c->complete = 1;
		if (++d->ncomplete == d->expected)
			image_complete(d);
		break;
	case MIG__WIRE__ENVELOPE__MSG_ACTIVATE:
		on_activate(d);
		break;
	default:
		/* the table lets no other message through */
		dest_fail(d, MIG_E_PROTOCOL, "unexpected message %d from the source",
			  (int)env->msg_case);
		break;
	}
}

static void on_pages(struct dst_conn *c, const mig_frame *f)
{
	mig_dest *d = c->d;
	mig_error e = { 0 };
	long n;

	if (!c->authed) {
		reject(c, "pages before hello");
		return;
	}
	if (c->complete) {
		dest_fail(d, MIG_E_PROTOCOL, "pages after connection %u completed",
			  c->index);
		return;
	}
	if (step(d, MIG_PMSG_PAGES, MIG_PDIR_TO_DEST, c->index) < 0)
		return;
	n = mig__dec_batch(c->dec, f->body, f->len, page_sink, d, &e);
	if (n < 0) {
		dest_fail(d, (int)n == -ERANGE || (int)n == -EBADMSG ? MIG_E_PROTOCOL : (int)n,
			  "connection %u: bad page batch: %s", c->index, e.msg);
		return;
	}
	c->pages += (uint64_t)n;
	pthread_mutex_lock(&d->lock);
	d->stats->pages_sent += (uint64_t)n;
	d->stats->raw_bytes += (uint64_t)n * MIG_PAGE_SIZE;
	pthread_mutex_unlock(&d->lock);
}

/* libuv reads straight into the connection's frame buffer: pages are
 * copied once, from there into guest memory. */
static void on_dalloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	struct dst_conn *c = h->data;
	uint8_t *p;
	size_t n;

	(void)suggested;
	if (mig__reader_space(&c->rd, 65536, &p, &n) < 0) {
		*buf = uv_buf_init(NULL, 0); /* read_cb gets UV_ENOBUFS */
		return;
	}
	*buf = uv_buf_init((char *)p, (unsigned)MIG_MIN(n, (size_t)UINT32_MAX));
}

static void on_dread(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
	struct dst_conn *c = st->data;
	mig_dest *d = c->d;
	mig_frame f;
	long n;

	(void)buf;
	if (nread == UV_ENOBUFS) {
		if (c->authed)
			dest_fail(d, MIG_E_PROTOCOL, "connection %u: frame too large",
				  c->index);
		else
			reject(c, "oversized frame before hello");
		return;
	}
	if (nread < 0) {
		if (!c->authed) {
			conn_close(c);
			return;
		}
		if (!d->finished)
			dest_fail(d, nread == UV_EOF ? -ECONNRESET : (int)nread,
				  "connection %u from %s lost: %s", c->index, c->peer,
				  nread == UV_EOF ? "closed by the source"
						  : mig_strerror((int)nread));
		return;
	}
	/* Only the source's own connections count as activity: a stranger
	 * trickling bytes must not hold off the idle timeout (nor keep the
	 * loop polling). */
	if (c->authed) {
		d->last_activity_us = mig__now_us();
		if (d->t_switch_us && !d->finished &&
		    !uv_is_active((uv_handle_t *)&d->spin))
			uv_idle_start(&d->spin, on_spin); /* the source is back */
	}
	d->bytes += (uint64_t)nread;
	mig__reader_commit(&c->rd, (size_t)nread);
	while (!c->closing && !d->finished && (n = mig__reader_next(&c->rd, &f)) != 0) {
		if (n < 0) {
			if (c->authed)
				dest_fail(d, MIG_E_PROTOCOL,
					  "connection %u: malformed frame (%s)",
					  c->index, mig_strerror((int)n));
			else
				reject(c, "malformed frame before hello");
			return;
		}
		if (f.type == MIG_FRAME_PAGES) {
			on_pages(c, &f);
			continue;
		}
		int e;
		Mig__Wire__Envelope *env = mig__msg_unpack(f.body, f.len, &e);
		if (!env) {
			if (c->authed)
				dest_fail(d, MIG_E_PROTOCOL,
					  "connection %u: undecodable message", c->index);
			else
				reject(c, "undecodable hello");
			return;
		}
		on_msg(c, env);
		mig__msg_free(env);
	}
	pthread_mutex_lock(&d->lock);
	d->stats->bytes_on_wire = d->bytes;
	pthread_mutex_unlock(&d->lock);
}

static void on_connection(uv_stream_t *server, int status)
{
	mig_dest *d = server->data;
	struct dst_conn *c;
	struct sockaddr_storage ss;
	int len = sizeof(ss);

	if (status < 0 || d->finished)
		return;
	c = calloc(1, sizeof(*c));
	if (!c)
		return;
	c->d = d;
	c->rd.limit = MIG_PREAUTH_FRAME_MAX;
	uv_tcp_init(&d->loop, &c->tcp);
	c->tcp.data = c;
	if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0 ||
	    mig__dec_create(&c->dec) < 0) {
		c->closing = 1;
		uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
		return;
	}
	snprintf(c->peer, sizeof(c->peer), "?");
	if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
		char ip[INET6_ADDRSTRLEN] = "?";
		if (ss.ss_family == AF_INET) {
			struct sockaddr_in *a = (struct sockaddr_in *)&ss;
			uv_ip4_name(a, ip, sizeof(ip));
			snprintf(c->peer, sizeof(c->peer), "%s:%d", ip, ntohs(a->sin_port));
		} else if (ss.ss_family == AF_INET6) {
			struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
			uv_ip6_name(a, ip, sizeof(ip));
			snprintf(c->peer, sizeof(c->peer), "[%s]:%d", ip,
				 ntohs(a->sin6_port));
		}
	}
	c->next = d->conns;
	d->conns = c;
	uv_tcp_nodelay(&c->tcp, 1);
	uv_read_start((uv_stream_t *)&c->tcp, on_dalloc, on_dread);
}

static void on_dasync(uv_async_t *a)
{
	mig_dest *d = a->data;
	int cancel;

	pthread_mutex_lock(&d->lock);
	cancel = d->cancel;
	pthread_mutex_unlock(&d->lock);
	if (cancel && !d->finished)
		dest_fail(d, MIG_E_CANCELED, "canceled on the destination");
}

static void on_dtimer(uv_timer_t *t)
{
	mig_dest *d = t->data;

	/* Before a source shows up there is no deadline (like an incoming
	 * QEMU); once one has, silence longer than the timeout ends it. */
	if (d->finished || !d->have_session)
		return;
	if (mig__now_us() - d->last_activity_us > (uint64_t)d->timeout_ms * 1000)
		dest_fail(d, -ETIMEDOUT, "no data from the source for %u ms%s",
			  d->timeout_ms, d->ps == MIG_PS_COMMITTED ? " (waiting for activation)" : "");
}

static void *dest_main(void *arg)
{
	mig_dest *d = arg;

	mig__thread_name("mig-dest");
	d->last_activity_us = mig__now_us();
	uv_timer_start(&d->timer, on_dtimer, DEST_TICK_MS, DEST_TICK_MS);
	uv_run(&d->loop, UV_RUN_DEFAULT);
	prefault_join(d);
	if (d->cb.done)
		d->cb.done(&d->result, d->vm.vm.opaque);
	return NULL;
}

/* ---- public API ---------------------------------------------------------- */

MIG_API int mig_dest_create(mig_dest **out, const mig_dest_config *cfg,
			    mig_error *err)
{
	struct sockaddr_storage ss;
	mig_dest *d;
	int r;

	if (!out || !cfg)
		return mig__err(err, -EINVAL, "destination: NULL argument");
	*out = NULL;
	if (!cfg->token || !*cfg->token || strlen(cfg->token) > 256)
		return mig__err(err, -EINVAL,
				"destination: a token of 1..256 bytes is required");
	d = calloc(1, sizeof(*d));
	if (!d)
		return mig__err(err, -ENOMEM, "destination: out of memory");
	pthread_mutex_init(&d->lock, NULL);
	mig__state_init(&d->state);
	d->stats = calloc(1, sizeof(*d->stats));
	d->token = (uint8_t *)strdup(cfg->token);
	if (!d->stats || !d->token) {
		mig_dest_destroy(d);
		return mig__err(err, -ENOMEM, "destination: out of memory");
	}
	d->token_len = strlen(cfg->token);
	d->cb = cfg->cb;
	d->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : DEST_DEFAULT_TIMEOUT_MS;
	d->load_early = cfg->load_state_early != 0;
	if ((r = mig__vm_copy(&d->vm, &cfg->vm, err)) < 0 ||
	    (r = mig__parse_uri(cfg->uri, d->host, sizeof(d->host), &d->port, err)) < 0 ||
	    (r = mig__resolve(d->host, d->port, &ss, err)) < 0) {
		mig_dest_destroy(d);
		return r;
	}
	if ((r = uv_loop_init(&d->loop)) < 0) {
		mig_dest_destroy(d);
		return mig__err(err, r, "destination: event loop: %s", mig_strerror(r));
	}
	uv_tcp_init(&d->loop, &d->listener);
	uv_async_init(&d->loop, &d->async, on_dasync);
	uv_timer_init(&d->loop, &d->timer);
	uv_idle_init(&d->loop, &d->spin);
	d->spin.data = d;
	d->loop_ok = 1;
	d->listener.data = d;
	d->async.data = d;
	d->timer.data = d;
	if ((r = uv_tcp_bind(&d->listener, (struct sockaddr *)&ss, 0)) < 0 ||
	    (r = uv_listen((uv_stream_t *)&d->listener, 16, on_connection)) < 0) {
		mig__err(err, r, "cannot listen on %s: %s", cfg->uri, mig_strerror(r));
		mig_dest_destroy(d);
		return r;
	}
	struct sockaddr_storage bound;
	int blen = sizeof(bound);
	if (uv_tcp_getsockname(&d->listener, (struct sockaddr *)&bound, &blen) == 0)
		d->port = ntohs(bound.ss_family == AF_INET6
					? ((struct sockaddr_in6 *)&bound)->sin6_port
					: ((struct sockaddr_in *)&bound)->sin_port);
	*out = d;
	return 0;
}

MIG_API int mig_dest_port(const mig_dest *d)
{
	return d ? d->port : -EINVAL;
}

MIG_API int mig_dest_start(mig_dest *d, mig_error *err)
{
	if (!d)
		return mig__err(err, -EINVAL, "destination: NULL");
	if (d->started)
		return mig__err(err, -EALREADY, "destination: already started");
	if (mig__thread_start(&d->thread, dest_main, d) != 0)
		return mig__err(err, -EAGAIN, "destination: cannot create thread");
	d->started = 1;
	return 0;
}

MIG_API int mig_dest_wait(mig_dest *d, mig_error *err)
{
	if (!d)
		return mig__err(err, -EINVAL, "destination: NULL");
	if (!d->started)
		return mig__err(err, -EINVAL, "destination: not started");
	if (!d->joined) {
		pthread_join(d->thread, NULL);
		d->joined = 1;
	}
	if (err)
		*err = d->result;
	return d->result.code;
}

MIG_API int mig_dest_cancel(mig_dest *d)
{
	if (!d)
		return -EINVAL;
	pthread_mutex_lock(&d->lock);
	d->cancel = 1;
	pthread_mutex_unlock(&d->lock);
	if (d->started && !d->joined)
		uv_async_send(&d->async);
	return 0;
}

MIG_API int mig_dest_stats(mig_dest *d, mig_stats *out)
{
	if (!d || !out)
		return -EINVAL;
	pthread_mutex_lock(&d->lock);
	*out = *d->stats;
	pthread_mutex_unlock(&d->lock);
	return 0;
}

MIG_API void mig_dest_destroy(mig_dest *d)
{
	if (!d)
		return;
	if (d->started && !d->joined) {
		mig_dest_cancel(d);
		pthread_join(d->thread, NULL);
		d->joined = 1;
	}
	if (d->loop_ok) {
		/* Never started: close what create opened. */
		if (!d->started) {
			uv_close((uv_handle_t *)&d->listener, NULL);
			uv_close((uv_handle_t *)&d->async, NULL);
			uv_close((uv_handle_t *)&d->timer, NULL);
			uv_close((uv_handle_t *)&d->spin, NULL);
		}
		uv_run(&d->loop, UV_RUN_DEFAULT);
		uv_loop_close(&d->loop);
	}
	while (d->hints) {
		struct hint *h = d->hints;
		d->hints = h->next;
		free(h);
	}
	free(d->by_index);
	mig__state_clear(&d->state);
	if (d->token) {
		memset(d->token, 0, d->token_len);
		free(d->token);
	}
	free(d->stats);
	mig__vm_copy_free(&d->vm);
	pthread_mutex_destroy(&d->lock);
	free(d);
}
