/*
 * TLS 1.3 on the daemons' peer link, keyed with their pre-shared key
 * (identity "migd-peer", ECDHE-PSK) or with X.509 certificates (QEMU's
 * file layout; both sides show one the CA signed, and the client checks
 * the server's against the host it dialled): the handshake proves to each
 * side who the other is, and every message after it is sealed.
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
#include <arpa/inet.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "migd.h"

#define PEER_IDENTITY "migd-peer"
#define PRIO_PSK "NORMAL:-VERS-ALL:+VERS-TLS1.3:-KX-ALL:+ECDHE-PSK:+DHE-PSK"
#define PRIO_X509 "NORMAL:-VERS-ALL:+VERS-TLS1.3"

static gnutls_psk_client_credentials_t cli_creds;
static gnutls_psk_server_credentials_t srv_creds;
static gnutls_datum_t psk;
/* X.509 instead: the client's pair and the server's, one CA for both */
static gnutls_certificate_credentials_t cli_x509, srv_x509;

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

int tls_init_psk(const uint8_t *key, size_t len, char *errbuf,
		 size_t errlen)
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

/* One side's credentials: DIR/ca-cert.pem to check the other side with,
 * DIR/<side>-cert.pem and DIR/<side>-key.pem to show. */
static int x509_load(gnutls_certificate_credentials_t *c, const char *dir,
		     const char *side, char *errbuf, size_t errlen)
{
	char ca[PATH_MAX], cert[PATH_MAX], key[PATH_MAX];
	const char *f = ca;
	int e;

	if (snprintf(ca, sizeof(ca), "%s/ca-cert.pem", dir) >= (int)sizeof(ca) ||
	    snprintf(cert, sizeof(cert), "%s/%s-cert.pem", dir, side) >=
		    (int)sizeof(cert) ||
	    snprintf(key, sizeof(key), "%s/%s-key.pem", dir, side) >=
		    (int)sizeof(key)) {
		snprintf(errbuf, errlen, "--tls-x509-dir %s: path too long", dir);
		return -ENAMETOOLONG;
	}
	for (int i = 0; i < 3; i++) {
		f = i == 0 ? ca : i == 1 ? cert : key;
		if (access(f, R_OK) < 0) {
			int e2 = errno;

			snprintf(errbuf, errlen, "--tls-x509-dir: %s: %s", f,
				 strerror(e2));
			return -e2;
		}
	}
	if ((e = gnutls_certificate_allocate_credentials(c)) < 0) {
		snprintf(errbuf, errlen, "TLS credentials: %s",
			 gnutls_strerror(e));
		return -ENOMEM;
	}
	e = gnutls_certificate_set_x509_trust_file(*c, ca, GNUTLS_X509_FMT_PEM);
	if (e <= 0) {
		snprintf(errbuf, errlen, "--tls-x509-dir: %s: %s", ca,
			 e == 0 ? "no CA certificate in it" : gnutls_strerror(e));
		return -EINVAL;
	}
	e = gnutls_certificate_set_x509_key_file2(*c, cert, key,
						  GNUTLS_X509_FMT_PEM, NULL, 0);
	if (e < 0) {
		snprintf(errbuf, errlen, "--tls-x509-dir: %s with %s: %s", cert,
			 key, e == GNUTLS_E_CERTIFICATE_KEY_MISMATCH
				      ? "the key does not match the certificate"
				      : gnutls_strerror(e));
		return -EINVAL;
	}
	return 0;
}

int tls_init_x509(const char *dir, bool server, char *errbuf, size_t errlen)
{
	int r = x509_load(&cli_x509, dir, "client", errbuf, errlen);

	if (r == 0 && server)
		r = x509_load(&srv_x509, dir, "server", errbuf, errlen);
	return r;
}

static bool is_ip_literal(const char *host)
{
	unsigned char a[16];

	return inet_pton(AF_INET, host, a) == 1 ||
	       inet_pton(AF_INET6, host, a) == 1;
}

/* A session, server or client (then `host` is the name the server's
 * certificate must carry, under X.509; it and v[2], where what the peer's
 * certificate must be goes, live as long as the session). */
static int session_new(gnutls_session_t *s, bool server, const char *host,
		       gnutls_typed_vdata_st *v)
{
	bool x509 = server ? srv_x509 != NULL : cli_x509 != NULL;
	int e = gnutls_init(s, (server ? GNUTLS_SERVER : GNUTLS_CLIENT) |
			       GNUTLS_NO_TICKETS | GNUTLS_NONBLOCK);

	if (e < 0)
		return e;
	e = gnutls_priority_set_direct(*s, x509 ? PRIO_X509 : PRIO_PSK, NULL);
	if (e >= 0 && x509) {
		e = gnutls_credentials_set(*s, GNUTLS_CRD_CERTIFICATE,
					   server ? srv_x509 : cli_x509);
		if (server)
			gnutls_certificate_server_set_request(*s,
							      GNUTLS_CERT_REQUIRE);
		/* SNI carries a DNS name, never an address (RFC 6066) */
		if (e >= 0 && !server && !is_ip_literal(host))
			e = gnutls_server_name_set(*s, GNUTLS_NAME_DNS, host,
						   strlen(host));
		/* the chain against the CA; its purpose (a client's
		 * certificate on the server, a server's on the client: one
		 * without the extension may serve either); on the client,
		 * the name too. GnuTLS reads v during the handshake. */
		if (e >= 0) {
			v[0].type = GNUTLS_DT_KEY_PURPOSE_OID;
			v[0].data = (unsigned char *)(server
				? GNUTLS_KP_TLS_WWW_CLIENT : GNUTLS_KP_TLS_WWW_SERVER);
			v[1].type = GNUTLS_DT_DNS_HOSTNAME;
			v[1].data = (unsigned char *)host;
			gnutls_session_set_verify_cert2(*s, v, server ? 1 : 2, 0);
		}
	} else if (e >= 0) {
		e = gnutls_credentials_set(*s, GNUTLS_CRD_PSK,
					   server ? (void *)srv_creds
						  : (void *)cli_creds);
	}
	gnutls_handshake_set_timeout(*s, 0); /* the callers have deadlines */
	if (e < 0)
		gnutls_deinit(*s);
	return e;
}

/* Why a handshake failed, for a log line or an error (a wrong key shows
 * as a refused binder on the server and as its alert on the client; a
 * certificate refused here names what was wrong with it). */
static void handshake_why(gnutls_session_t s, int e, const char *host,
			  char *why, size_t wl)
{
	bool x509 = cli_x509 != NULL;
	const char *hint = x509 ? "" : " (wrong pre-shared key?)";
	gnutls_datum_t txt = { NULL, 0 };

	if (e == GNUTLS_E_FATAL_ALERT_RECEIVED) {
		snprintf(why, wl, "TLS refused by the peer: %s%s",
			 gnutls_alert_get_name(gnutls_alert_get(s)), hint);
		return;
	}
	if (e == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR &&
	    gnutls_certificate_verification_status_print(
		    gnutls_session_get_verify_cert_status(s), GNUTLS_CRT_X509,
		    &txt, 0) >= 0 && txt.data) {
		size_t k = strlen((char *)txt.data);

		while (k && (txt.data[k - 1] == ' ' || txt.data[k - 1] == '.'))
			txt.data[--k] = '\0';
		snprintf(why, wl, "the peer's certificate was refused%s%s%s: %s",
			 host ? " (expected name " : "", host ? host : "",
			 host ? ")" : "", (char *)txt.data);
	}
	else if (e == GNUTLS_E_NO_CERTIFICATE_FOUND ||
		 e == GNUTLS_E_CERTIFICATE_REQUIRED)
		snprintf(why, wl, "TLS handshake failed: the peer showed no "
			 "certificate");
	else
		snprintf(why, wl, "TLS handshake failed: %s%s", gnutls_strerror(e),
			 x509 ? " (not a migd with certificates?)"
			      : " (wrong pre-shared key, or not a migd?)");
	gnutls_free(txt.data);
	(void)gnutls_alert_send_appropriate(s, e);
}

/* ---- server, on the loop -------------------------------------------- */

struct tls_srv {
	gnutls_session_t s;
	gnutls_typed_vdata_st verify[2];
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
	if (session_new(&t->s, true, NULL, t->verify) < 0) {
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
		handshake_why(t->s, e, NULL, why, wl);
		t->failed = true;
		return -1;
	}
	t->done = true;
	return 1;
}

void tls_srv_who(struct tls_srv *t, char *out, size_t n)
{
	const gnutls_datum_t *der;
	gnutls_x509_crt_t crt;
	gnutls_datum_t dn = { NULL, 0 };
	unsigned cnt = 0;

	snprintf(out, n, "the pre-shared key");
	if (!srv_x509)
		return;
	snprintf(out, n, "a certificate");
	der = gnutls_certificate_get_peers(t->s, &cnt);
	if (!der || !cnt || gnutls_x509_crt_init(&crt) < 0)
		return;
	if (gnutls_x509_crt_import(crt, &der[0], GNUTLS_X509_FMT_DER) >= 0 &&
	    gnutls_x509_crt_get_dn3(crt, &dn, 0) >= 0 && dn.data)
		snprintf(out, n, "certificate %.*s", (int)dn.size,
			 (const char *)dn.data);
	gnutls_free(dn.data);
	gnutls_x509_crt_deinit(crt);
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
	gnutls_typed_vdata_st verify[2];
	char host[256];         /* the name its certificate must carry */
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
struct tls_cli *tls_cli_open(int fd, const char *host, int timeout_ms,
			     char *why, size_t wl)
{
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
	struct tls_cli *t = calloc(1, sizeof(*t));
	int e, r;

	if (t)
		snprintf(t->host, sizeof(t->host), "%s", host);
	if (!t || session_new(&t->s, false, t->host, t->verify) < 0) {
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
			handshake_why(t->s, e, host, why, wl);
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
