/*
 * The destination: listening, the hellos that authenticate connections,
 * reading frames, the idle timer, the loop thread and the public
 * mig_dest_* API. See dest.h for the files that do the rest.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dest.h"

#define DEST_DEFAULT_TIMEOUT_MS 30000u
#define DEST_TICK_MS 200u
/*
 * Strangers: a connection is one until its hello is accepted. They may
 * cost the destination a descriptor and a small read buffer each, for a
 * short time, and nothing else: each is closed if its hello did not come
 * within DEST_HELLO_MS; at most DEST_PREAUTH_PER_ADDR wait from one
 * address (the source's own connections, up to 16, fit twice) and
 * DEST_PREAUTH_MAX in all, and a newcomer over either limit makes room by
 * closing the oldest one waiting (from its address, or of all), so that a
 * flood can delay the source only by as long as its hello takes to come.
 * However many are turned away, the migration goes on: they never fail
 * it. Once the session's connections are all here the destination stops
 * listening.
 */
#define DEST_PREAUTH_MAX 64u
#define DEST_PREAUTH_PER_ADDR 32u
#define DEST_HELLO_MS 10000u
#define DEST_TLS_RBUF 65536u

static void reject(struct dst_conn *c, const char *why)
{
	mig_dest *d = c->d;
	d->rejects++;
	snprintf(d->last_reject, sizeof(d->last_reject), "%s from %s", why,
		 c->peer);
	/* Logged while few; then one line in a hundred, with the count. */
	if (d->rejects <= 16 || d->rejects % 100 == 0)
		mig__log(&d->cb, d->vm.vm.opaque, MIG_LOG_WARN,
			 "rejected connection %u: %s", d->rejects, d->last_reject);
	mig__dst_conn_close(c);
}

/* All the session's connections are here: no one else is let in. */
static void close_door(mig_dest *d)
{
	struct dst_conn *c, *next;

	if (!uv_is_closing((uv_handle_t *)&d->listener))
		uv_close((uv_handle_t *)&d->listener, NULL);
	for (c = d->conns; c; c = next) {
		next = c->next;
		if (!c->authed)
			reject(c, "the session's connections are all here");
	}
}

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
	mig__dst_send(c, MIG__WIRE__ENVELOPE__MSG_HELLO_ACK, &ack);
}

/* The hello's token: under TLS, the proof bound to this connection's
 * session (mig__tls_token_proof()), else the token itself. */
static int token_ok(struct dst_conn *c, const Mig__Wire__Hello *h)
{
	uint8_t want[MIG_TLS_PROOF_LEN];
	int ok;

	if (!c->tls)
		return mig__secret_eq(h->token.data, h->token.len, c->d->token,
				      c->d->token_len);
	if (mig__tls_token_proof(c->tls, c->d->token, c->d->token_len, want,
				 NULL) < 0)
		return 0;
	ok = mig__secret_eq(h->token.data, h->token.len, want, sizeof(want));
	explicit_bzero(want, sizeof(want));
	return ok;
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
	if (!token_ok(c, h)) {
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
			mig__dst_fail(d, -ENOMEM, "out of memory");
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
	if (h->connection_index == 0) {
		d->early_state = d->load_early &&
			(h->features & MIG__WIRE__FEATURE__FEATURE_EARLY_STATE);
		d->xxh3 = (h->features & MIG__WIRE__FEATURE__FEATURE_XXH3) != 0;
	}
	/* The source's hello is its first activity: the silence before it
	 * (a destination waiting for its source, as long as it takes) must
	 * not count towards the idle timeout, which starts with the session.
	 * on_dread() saw these bytes while the connection was not yet
	 * authenticated, so it did not count them. */
	d->last_activity_us = mig__now_us();
	/* A decoder (a zstd context) only for the source's connections. */
	if (mig__dec_create(&c->dec) < 0) {
		mig__dst_fail(d, -ENOMEM, "connection %u: out of memory",
			      h->connection_index);
		return;
	}
	c->authed = 1;
	c->index = h->connection_index;
	c->rd.limit = MIG_FRAME_MAX;
	d->by_index[c->index] = c;
	hello_reply(c, h, 1, 0, "");
	uint32_t here = 0;
	for (uint32_t i = 0; i < d->expected; i++)
		here += d->by_index[i] != NULL;
	if (here == d->expected)
		close_door(d);
}

/* libuv reads straight into the connection's frame buffer: pages are
 * copied once, from there into guest memory. Under TLS it reads into the
 * loop's one ciphertext buffer, decrypted at once into the frame buffer. */
static void on_dalloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	struct dst_conn *c = h->data;
	uint8_t *p;
	size_t n;

	(void)suggested;
	if (c->tls) {
		*buf = uv_buf_init((char *)c->d->tls_rbuf, DEST_TLS_RBUF);
		return;
	}
	if (mig__reader_space(&c->rd, 65536, &p, &n) < 0) {
		*buf = uv_buf_init(NULL, 0); /* read_cb gets UV_ENOBUFS */
		return;
	}
	*buf = uv_buf_init((char *)p, (unsigned)MIG_MIN(n, (size_t)UINT32_MAX));
}

static void too_large(struct dst_conn *c)
{
	if (c->authed)
		mig__dst_fail(c->d, MIG_E_PROTOCOL, "connection %u: frame too large",
			      c->index);
	else
		reject(c, "oversized frame before hello");
}

/* Handle the whole frames in c's reader; -1 once c or the session ended. */
static int on_frames(struct dst_conn *c)
{
	mig_dest *d = c->d;
	mig_frame f;
	long n;

	while (!c->closing && !d->finished && (n = mig__reader_next(&c->rd, &f)) != 0) {
		if (n < 0) {
			if (c->authed)
				mig__dst_fail(d, MIG_E_PROTOCOL,
					  "connection %u: malformed frame (%s)",
					  c->index, mig_strerror((int)n));
			else
				reject(c, "malformed frame before hello");
			return -1;
		}
		if (f.type == MIG_FRAME_PAGES) {
			if (!c->authed) {
				reject(c, "pages before hello");
				return -1;
			}
			mig__dst_on_pages(c, &f);
			continue;
		}
		int e;
		Mig__Wire__Envelope *env = mig__msg_unpack(f.body, f.len, &e);
		if (!env) {
			if (c->authed)
				mig__dst_fail(d, MIG_E_PROTOCOL,
					  "connection %u: undecodable message", c->index);
			else
				reject(c, "undecodable hello");
			return -1;
		}
		if (c->authed)
			mig__dst_on_msg(c, env);
		else if (env->msg_case != MIG__WIRE__ENVELOPE__MSG_HELLO)
			reject(c, "first message is not a hello");
		else
			on_hello(c, env->hello);
		mig__msg_free(env);
	}
	return c->closing || d->finished ? -1 : 0;
}

/* A TLS error on c: a stranger is turned away, the source's own
 * connection fails the migration. */
static void tls_error(struct dst_conn *c, const mig_error *e)
{
	if (c->authed)
		mig__dst_fail(c->d, e->code, "connection %u from %s: %s", c->index,
			      c->peer, e->msg);
	else
		reject(c, e->msg);
}

/* TLS: n bytes of ciphertext in the loop's buffer. The handshake first
 * (before the hello, within the same deadline), then records, each
 * decrypted into the frame reader and its frames handled before the next,
 * so the reader holds no more than in the clear. */
static void on_tls_bytes(struct dst_conn *c, size_t n)
{
	mig_error e = { 0 };
	mig_buf out = { 0 };
	long k;

	if ((k = mig__tls_feed(c->tls, c->d->tls_rbuf, n)) < 0) {
		mig__err(&e, (int)k, "TLS: %s", k == -ENOMEM ? "out of memory"
				: "the session has failed");
		tls_error(c, &e);
		return;
	}
	if (!c->tls->done) {
		k = mig__tls_handshake(c->tls, &out, &e);
		mig__dst_write_raw(c, &out); /* its records, or an alert */
		if (k <= 0) {
			if (k < 0)
				tls_error(c, &e);
			return;
		}
		mig__log(&c->d->cb, c->d->vm.vm.opaque, MIG_LOG_DEBUG,
			 "TLS (%s) with %s", mig__tls_kind(c->d->tls), c->peer);
	}
	for (;;) {
		uint8_t *p;
		size_t cap;

		if (mig__reader_space(&c->rd, MIG_TLS_RECORD_MAX, &p, &cap) < 0) {
			too_large(c);
			return;
		}
		k = mig__tls_recv(c->tls, p, cap, &out, &e);
		mig__dst_write_raw(c, &out);
		if (k < 0) {
			tls_error(c, &e);
			return;
		}
		if (k == 0)
			return;
		mig__reader_commit(&c->rd, (size_t)k);
		if (on_frames(c) < 0)
			return;
	}
}

static void on_dread(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
	struct dst_conn *c = st->data;
	mig_dest *d = c->d;

	(void)buf;
	if (nread == UV_ENOBUFS) {
		too_large(c);
		return;
	}
	if (nread < 0) {
		if (!c->authed) {
			mig__dst_conn_close(c);
			return;
		}
		if (!d->finished)
			mig__dst_fail(d, nread == UV_EOF ? -ECONNRESET : (int)nread,
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
			uv_idle_start(&d->spin, mig__dst_on_spin); /* the source is back */
	}
	d->bytes += (uint64_t)nread;
	if (c->tls) {
		on_tls_bytes(c, (size_t)nread);
	} else {
		if (!c->authed && c->rd.len == c->rd.off &&
		    mig__tls_looks_like(c->rd.buf + c->rd.len, (size_t)nread)) {
			reject(c, "a TLS client, and this destination has no TLS "
			       "credentials");
			return;
		}
		mig__reader_commit(&c->rd, (size_t)nread);
		on_frames(c);
	}
	pthread_mutex_lock(&d->lock);
	d->stats->bytes_on_wire = d->bytes;
	pthread_mutex_unlock(&d->lock);
}

/* Before a stranger from `addr` is let in: over a limit, the oldest
 * waiting (the list is newest first) makes room. */
static void make_room(mig_dest *d, const char *addr)
{
	struct dst_conn *c, *oldest = NULL, *oldest_here = NULL;
	uint32_t all = 0, here = 0;

	for (c = d->conns; c; c = c->next) {
		/* A connection past its TLS handshake holds our credentials:
		 * the source's, waiting for its hello's answer; a flood of
		 * strangers never evicts it (the hello deadline still holds). */
		if (c->authed || (c->tls && c->tls->done))
			continue;
		all++;
		oldest = c;
		if (!strcmp(c->addr, addr)) {
			here++;
			oldest_here = c;
		}
	}
	if (here >= DEST_PREAUTH_PER_ADDR)
		reject(oldest_here, "too many connections from one address "
		       "waiting for their hello");
	else if (all >= DEST_PREAUTH_MAX)
		reject(oldest, "too many connections waiting for their hello");
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
	if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
		mig__dst_conn_discard(c);
		return;
	}
	c->accepted_us = mig__now_us();
	snprintf(c->peer, sizeof(c->peer), "?");
	snprintf(c->addr, sizeof(c->addr), "?");
	if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
		if (ss.ss_family == AF_INET) {
			struct sockaddr_in *a = (struct sockaddr_in *)&ss;
			uv_ip4_name(a, c->addr, sizeof(c->addr));
			snprintf(c->peer, sizeof(c->peer), "%s:%d", c->addr,
				 ntohs(a->sin_port));
		} else if (ss.ss_family == AF_INET6) {
			struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
			uv_ip6_name(a, c->addr, sizeof(c->addr));
			snprintf(c->peer, sizeof(c->peer), "[%s]:%d", c->addr,
				 ntohs(a->sin6_port));
		}
	}
	if (d->tls) {
		mig_error e = { 0 };

		c->tls = malloc(sizeof(*c->tls));
		if (!c->tls || mig__tls_conn_init(c->tls, d->tls, 1, &e) < 0) {
			free(c->tls);
			c->tls = NULL;
			mig__dst_conn_discard(c);
			return;
		}
	}
	make_room(d, c->addr);
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
		mig__dst_fail(d, MIG_E_CANCELED, "canceled on the destination");
}

static void on_dtimer(uv_timer_t *t)
{
	mig_dest *d = t->data;
	struct dst_conn *c, *next;
	uint64_t now = mig__now_us();

	if (d->finished)
		return;
	for (c = d->conns; c; c = next) {
		next = c->next;
		if (!c->authed && now - c->accepted_us > DEST_HELLO_MS * 1000ull)
			reject(c, "no hello in time");
	}
	/* Before a source shows up there is no deadline (like an incoming
	 * QEMU); once one has, silence longer than the timeout ends it. */
	if (!d->have_session)
		return;
	if (now - d->last_activity_us > (uint64_t)d->timeout_ms * 1000)
		mig__dst_fail(d, -ETIMEDOUT, "no data from the source for %u ms%s",
			  d->timeout_ms, d->ps == MIG_PS_COMMITTED ? " (waiting for activation)" : "");
}

static void *dest_main(void *arg)
{
	mig_dest *d = arg;

	mig__thread_name("mig-dest");
	d->last_activity_us = mig__now_us();
	uv_timer_start(&d->timer, on_dtimer, DEST_TICK_MS, DEST_TICK_MS);
	uv_run(&d->loop, UV_RUN_DEFAULT);
	mig__dst_prefault_join(d);
	if (d->cb.done)
		d->cb.done(&d->result, d->vm.vm.opaque);
	return NULL;
}

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

MIG_API int mig_dest_set_tls(mig_dest *d, mig_tls *tls, mig_error *err)
{
	if (!d)
		return mig__err(err, -EINVAL, "destination: NULL");
	if (d->started)
		return mig__err(err, -EBUSY, "destination: TLS is set before start");
	if (tls && !d->tls_rbuf && !(d->tls_rbuf = malloc(DEST_TLS_RBUF)))
		return mig__err(err, -ENOMEM, "destination: out of memory");
	mig__tls_unref(d->tls);
	d->tls = mig__tls_ref(tls);
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
	mig__tls_unref(d->tls);
	free(d->tls_rbuf);
	mig__vm_copy_free(&d->vm);
	pthread_mutex_destroy(&d->lock);
	free(d);
}
