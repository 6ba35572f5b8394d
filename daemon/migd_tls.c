/*
 * TLS 1.3 on the daemons' peer link, keyed with their pre-shared key
 * (identity "migd-peer", ECDHE-PSK): the handshake proves to each side
 * that the other holds the key, and every message after it is sealed.
 * The server side runs on migd's loop (ciphertext fed in as libuv reads
 * it, records handed to uv_write); the client side on the non-blocking
 * descriptor of a migration thread, with a deadline per call. GnuTLS does
 * the cryptography: nothing here implements any. A leaf: calls no other
 * file of migd.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <gnutls/gnutls.h>

#include "migd.h"

#define PEER_IDENTITY "migd-peer"
#define PRIO "NORMAL:-VERS-ALL:+VERS-TLS1.3:-KX-ALL:+ECDHE-PSK:+DHE-PSK"

static gnutls_psk_client_credentials_t cli_creds;
static gnutls_psk_server_credentials_t srv_creds;
static gnutls_datum_t psk;

static int psk_lookup(gnutls_session_t s, const char *user, gnutls_datum_t *key)
{
	(void)s;
	if (!user || strcmp(user, PEER_IDENTITY) != 0)
		return -1;
	key->data = gnutls_malloc(psk.size);
	if (!key->data)
		return -1;
	memcpy(key->data, psk.data, psk.size);
	key->size = psk.size;
	return 0;
}

int tls_init(const uint8_t *key, size_t len, char *errbuf, size_t errlen)
{
	int e;

	psk.data = malloc(len);
	if (!psk.data) {
		snprintf(errbuf, errlen, "out of memory");
		return -ENOMEM;
	}
	memcpy(psk.data, key, len);
	psk.size = (unsigned)len;
	if ((e = gnutls_psk_allocate_client_credentials(&cli_creds)) < 0 ||
	    (e = gnutls_psk_set_client_credentials(cli_creds, PEER_IDENTITY,
						   &psk, GNUTLS_PSK_KEY_RAW)) < 0 ||
	    (e = gnutls_psk_allocate_server_credentials(&srv_creds)) < 0) {
		snprintf(errbuf, errlen, "TLS credentials: %s", gnutls_strerror(e));
		return -EINVAL;
	}
	gnutls_psk_set_server_credentials_function(srv_creds, psk_lookup);
	return 0;
}

static int session_new(gnutls_session_t *s, bool server)
{
	int e = gnutls_init(s, (server ? GNUTLS_SERVER : GNUTLS_CLIENT) |
			       GNUTLS_NO_TICKETS | GNUTLS_NONBLOCK);

	if (e < 0)
		return e;
	e = gnutls_priority_set_direct(*s, PRIO, NULL);
	if (e >= 0)
		e = server ? gnutls_credentials_set(*s, GNUTLS_CRD_PSK, srv_creds)
			   : gnutls_credentials_set(*s, GNUTLS_CRD_PSK, cli_creds);
	gnutls_handshake_set_timeout(*s, 0); /* the callers have deadlines */
	if (e < 0)
		gnutls_deinit(*s);
	return e;
}

/* Why a handshake failed, for a log line or an error (a wrong key shows
 * as a refused binder on the server and as its alert on the client). */
static void handshake_why(gnutls_session_t s, int e, char *why, size_t wl)
{
	if (e == GNUTLS_E_FATAL_ALERT_RECEIVED)
		snprintf(why, wl, "TLS refused by the peer: %s (wrong pre-shared "
			 "key?)", gnutls_alert_get_name(gnutls_alert_get(s)));
	else
		snprintf(why, wl, "TLS handshake failed: %s (wrong pre-shared "
			 "key, or not a migd?)", gnutls_strerror(e));
	if (e != GNUTLS_E_FATAL_ALERT_RECEIVED)
		(void)gnutls_alert_send_appropriate(s, e);
}

/* ---- server, on the loop -------------------------------------------- */

struct tls_srv {
	gnutls_session_t s;
	uv_tcp_t *tcp;
	uint8_t *in;            /* ciphertext read, not yet taken */
	size_t in_len, in_off, in_cap;
	bool done, failed;
};

static void srv_written(uv_write_t *w, int status)
{
	(void)status; /* a failed write shows as a read error too */
	free(w->data);
	free(w);
}

static ssize_t srv_push(gnutls_transport_ptr_t p, const void *data, size_t n)
{
	struct tls_srv *t = p;
	uv_write_t *w = malloc(sizeof(*w));
	void *copy = malloc(n);
	uv_buf_t b;

	if (!w || !copy || uv_is_closing((uv_handle_t *)t->tcp)) {
		free(w);
		free(copy);
		gnutls_transport_set_errno(t->s, EPIPE);
		return -1;
	}
	memcpy(copy, data, n);
	w->data = copy;
	b = uv_buf_init(copy, (unsigned)n);
	if (uv_write(w, (uv_stream_t *)t->tcp, &b, 1, srv_written) < 0) {
		free(copy);
		free(w);
		gnutls_transport_set_errno(t->s, EPIPE);
		return -1;
	}
	return (ssize_t)n;
}

static ssize_t srv_pull(gnutls_transport_ptr_t p, void *data, size_t n)
{
	struct tls_srv *t = p;
	size_t avail = t->in_len - t->in_off;

	if (!avail) {
		gnutls_transport_set_errno(t->s, EAGAIN);
		return -1;
	}
	if (n > avail)
		n = avail;
	memcpy(data, t->in + t->in_off, n);
	t->in_off += n;
	if (t->in_off == t->in_len)
		t->in_len = t->in_off = 0;
	return (ssize_t)n;
}

struct tls_srv *tls_srv_new(uv_tcp_t *tcp)
{
	struct tls_srv *t = calloc(1, sizeof(*t));

	if (!t)
		return NULL;
	if (session_new(&t->s, true) < 0) {
		free(t);
		return NULL;
	}
	t->tcp = tcp;
	gnutls_transport_set_ptr(t->s, t);
	gnutls_transport_set_push_function(t->s, srv_push);
	gnutls_transport_set_pull_function(t->s, srv_pull);
	return t;
}

void tls_srv_free(struct tls_srv *t)
{
	if (!t)
		return;
	gnutls_deinit(t->s);
	free(t->in);
	free(t);
}

int tls_srv_input(struct tls_srv *t, const void *p, size_t n, char *why,
		  size_t wl)
{
	int e;

	if (t->failed)
		return -1;
	if (t->in_off) {
		memmove(t->in, t->in + t->in_off, t->in_len - t->in_off);
		t->in_len -= t->in_off;
		t->in_off = 0;
	}
	if (t->in_len + n > t->in_cap) {
		/* GnuTLS takes ciphertext as it comes: what waits is a
		 * record's worth, 64 KiB at most before the handshake (a
		 * stranger holds no more) */
		size_t cap = t->in_len + n + 4096;
		uint8_t *b = cap <= (t->done ? MIGD_FRAME_MAX + 65536u : 65536u)
				     ? realloc(t->in, cap) : NULL;
		if (!b) {
			snprintf(why, wl, "TLS: too much unread input");
			t->failed = true;
			return -1;
		}
		t->in = b;
		t->in_cap = cap;
	}
	memcpy(t->in + t->in_len, p, n);
	t->in_len += n;
	if (t->done)
		return 1;
	do {
		e = gnutls_handshake(t->s);
	} while (e == GNUTLS_E_INTERRUPTED);
	if (e == GNUTLS_E_AGAIN)
		return 0;
	if (e < 0) {
		handshake_why(t->s, e, why, wl);
		t->failed = true;
		return -1;
	}
	t->done = true;
	return 1;
}

long tls_srv_read(struct tls_srv *t, void *dst, size_t cap, char *why,
		  size_t wl)
{
	for (int soft = 0; soft < 16; soft++) {
		ssize_t e;

		if (t->in_len == t->in_off &&
		    !gnutls_record_check_pending(t->s))
			return 0;
		e = gnutls_record_recv(t->s, dst, cap);
		if (e > 0)
			return (long)e;
		if (e == 0) {
			snprintf(why, wl, "closed by the peer");
			return -1;
		}
		if (e == GNUTLS_E_AGAIN)
			return 0;
		if (e != GNUTLS_E_INTERRUPTED && gnutls_error_is_fatal((int)e)) {
			snprintf(why, wl, "TLS: %s", gnutls_strerror((int)e));
			(void)gnutls_alert_send_appropriate(t->s, (int)e);
			t->failed = true;
			return -1;
		}
	}
	snprintf(why, wl, "TLS: too many warnings");
	t->failed = true;
	return -1;
}

int tls_srv_write(struct tls_srv *t, const void *p, size_t n)
{
	const uint8_t *b = p;

	if (!t->done || t->failed)
		return -1;
	while (n) {
		ssize_t e = gnutls_record_send(t->s, b, n);

		if (e == GNUTLS_E_INTERRUPTED)
			continue;
		if (e <= 0) {
			t->failed = true;
			return -1;
		}
		b += e;
		n -= (size_t)e;
	}
	return 0;
}

/* ---- client, in a migration thread ---------------------------------- */

struct tls_cli {
	gnutls_session_t s;
	int fd;
	uint8_t *buf;           /* plaintext read, not yet a whole frame */
	size_t len, cap;
};

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Wait until the socket can go on with what GnuTLS was doing; -ETIMEDOUT
 * past the deadline. */
static int cli_wait(struct tls_cli *t, uint64_t deadline)
{
	struct pollfd p = { t->fd, gnutls_record_get_direction(t->s)
				   ? POLLOUT : POLLIN, 0 };
	uint64_t now = now_ms();
	int r;

	if (now >= deadline)
		return -ETIMEDOUT;
	do {
		r = poll(&p, 1, (int)(deadline - now));
	} while (r < 0 && errno == EINTR);
	if (r < 0)
		return -errno;
	return r ? 0 : -ETIMEDOUT;
}

/* On failure the descriptor is the caller's still. */
struct tls_cli *tls_cli_open(int fd, int timeout_ms, char *why, size_t wl)
{
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
	struct tls_cli *t = calloc(1, sizeof(*t));
	int e, r;

	if (!t || session_new(&t->s, false) < 0) {
		snprintf(why, wl, "TLS: cannot start a session");
		free(t);
		return NULL;
	}
	t->fd = fd;
	gnutls_transport_set_int(t->s, fd);
	for (;;) {
		e = gnutls_handshake(t->s);
		if (e == 0)
			return t;
		if (e != GNUTLS_E_AGAIN && e != GNUTLS_E_INTERRUPTED) {
			handshake_why(t->s, e, why, wl);
			break;
		}
		if ((r = cli_wait(t, deadline)) < 0) {
			snprintf(why, wl, "TLS handshake: %s", strerror(-r));
			break;
		}
	}
	gnutls_deinit(t->s);
	free(t);
	return NULL;
}

void tls_cli_close(struct tls_cli *t)
{
	if (!t)
		return;
	gnutls_deinit(t->s);
	close(t->fd);
	free(t->buf);
	free(t);
}

int tls_cli_fd(const struct tls_cli *t)
{
	return t->fd;
}

int tls_cli_send(struct tls_cli *t, const ProtobufCMessage *m, int timeout_ms)
{
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
	size_t n = protobuf_c_message_get_packed_size(m), off = 0;
	uint8_t *b;
	int r = 0;

	if (n > MIGD_FRAME_MAX)
		return -EMSGSIZE;
	if (!(b = malloc(n + 4)))
		return -ENOMEM;
	for (int i = 0; i < 4; i++)
		b[i] = (uint8_t)(n >> (8 * i));
	protobuf_c_message_pack(m, b + 4);
	while (off < n + 4) {
		ssize_t e = gnutls_record_send(t->s, b + off, n + 4 - off);

		if (e > 0) {
			off += (size_t)e;
			continue;
		}
		if (e != GNUTLS_E_AGAIN && e != GNUTLS_E_INTERRUPTED) {
			r = -ECONNRESET;
			break;
		}
		if ((r = cli_wait(t, deadline)) < 0)
			break;
	}
	free(b);
	return r;
}

int tls_cli_recv(struct tls_cli *t, const ProtobufCMessageDescriptor *d,
		 int timeout_ms, ProtobufCMessage **out)
{
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
	const uint8_t *body;
	size_t blen;
	long used;
	int r, soft = 0;

	*out = NULL;
	while ((used = msgio_frame_next(t->buf, t->len, MIGD_FRAME_MAX, &body,
					&blen)) == 0) {
		ssize_t e;

		if (t->cap - t->len < 16384) {
			size_t cap = t->cap ? t->cap * 2 : 65536;
			uint8_t *nb = cap <= 2 * (MIGD_FRAME_MAX + 65536)
					      ? realloc(t->buf, cap) : NULL;
			if (!nb)
				return -ENOMEM;
			t->buf = nb;
			t->cap = cap;
		}
		e = gnutls_record_recv(t->s, t->buf + t->len, t->cap - t->len);
		if (e > 0) {
			t->len += (size_t)e;
			continue;
		}
		if (e == 0)
			return -ECONNRESET;
		if (e == GNUTLS_E_INTERRUPTED ||
		    (e != GNUTLS_E_AGAIN && !gnutls_error_is_fatal((int)e) &&
		     ++soft < 16))
			continue;
		if (e != GNUTLS_E_AGAIN)
			return -EPROTO; /* a record that fails its check */
		if ((r = cli_wait(t, deadline)) < 0)
			return r;
	}
	if (used < 0)
		return -EMSGSIZE;
	*out = protobuf_c_message_unpack(d, NULL, blen, body);
	memmove(t->buf, t->buf + used, t->len - (size_t)used);
	t->len -= (size_t)used;
	return *out ? 0 : -EBADMSG;
}
