/*
 * TLS 1.3 through GnuTLS, sans I/O (tls.h). GnuTLS reads through pull(),
 * which hands it what the connection fed, and writes through push(), which
 * appends to the caller's buffer: no call here blocks or touches a socket.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "tls.h"

enum { TLS_PSK = 1, TLS_X509 = 2 };

struct mig_tls {
	int refs;
	int kind;
	char *identity;                   /* PSK */
	gnutls_datum_t key;               /* PSK, raw bytes */
	gnutls_psk_client_credentials_t pskc;
	gnutls_psk_server_credentials_t psks;
	gnutls_certificate_credentials_t x509;
	char *peer_name;                  /* x509, may be NULL */
};

/* TLS 1.3 only. PSK: key exchange with (EC)DHE on top of the key, so
 * that the key alone never decrypts a recorded migration. */
/* AES-GCM first, by name: GnuTLS's NORMAL may settle on ChaCha20-Poly1305
 * (it did here, on a CPU with AES-NI: 0.26 GB/s against AES-128-GCM's 3.8
 * in gnutls-cli --benchmark-ciphers), which made a migration over TLS 2-3
 * times slower than in clear (test_tls_migrate --bench). ChaCha20 stays,
 * last, for a peer without AES. */
#define PRIO_CIPHERS ":-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:+CHACHA20-POLY1305"
#define PRIO_X509 "NORMAL:-VERS-ALL:+VERS-TLS1.3" PRIO_CIPHERS
#define PRIO_PSK "NORMAL:-VERS-ALL:+VERS-TLS1.3:-KX-ALL:+ECDHE-PSK:+DHE-PSK" \
	PRIO_CIPHERS

mig_tls *mig__tls_ref(mig_tls *t)
{
	if (t)
		__atomic_add_fetch(&t->refs, 1, __ATOMIC_RELAXED);
	return t;
}

void mig__tls_unref(mig_tls *t)
{
	if (!t || __atomic_sub_fetch(&t->refs, 1, __ATOMIC_ACQ_REL) != 0)
		return;
	if (t->pskc)
		gnutls_psk_free_client_credentials(t->pskc);
	if (t->psks)
		gnutls_psk_free_server_credentials(t->psks);
	if (t->x509)
		gnutls_certificate_free_credentials(t->x509);
	if (t->key.data) {
		explicit_bzero(t->key.data, t->key.size);
		free(t->key.data);
	}
	free(t->identity);
	free(t->peer_name);
	free(t);
}

void mig_tls_free(mig_tls *tls)
{
	mig__tls_unref(tls);
}

const char *mig__tls_kind(const mig_tls *t)
{
	return !t ? "none" : t->kind == TLS_PSK ? "psk" : "x509";
}

/* A name fit for a PSK identity or a certificate's host name: 1..255
 * bytes of printable ASCII, no space. */
static int name_ok(const char *s)
{
	size_t n = s ? strnlen(s, MIG_TLS_NAME_MAX + 1) : 0;

	if (n == 0 || n > MIG_TLS_NAME_MAX)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (s[i] <= 0x20 || s[i] >= 0x7f)
			return 0;
	return 1;
}

static int tls_fail(mig_error *err, int code, const char *what, int gerr)
{
	return mig__err(err, code, "%s: %s", what, gnutls_strerror(gerr));
}

/* The server's lookup of a client's identity: only ours is known. */
static int psk_lookup(gnutls_session_t session, const char *username,
		      gnutls_datum_t *key)
{
	mig_tls_conn *c = gnutls_session_get_ptr(session);
	const mig_tls *t = c ? c->creds : NULL;

	if (!t || !username || strcmp(username, t->identity) != 0)
		return -1;
	key->data = gnutls_malloc(t->key.size);
	if (!key->data)
		return -1;
	memcpy(key->data, t->key.data, t->key.size);
	key->size = t->key.size;
	return 0;
}

static mig_tls *tls_alloc(int kind, mig_error *err)
{
	mig_tls *t = calloc(1, sizeof(*t));

	if (!t) {
		mig__err(err, -ENOMEM, "TLS credentials: out of memory");
		return NULL;
	}
	t->refs = 1;
	t->kind = kind;
	return t;
}

int mig_tls_psk(mig_tls **out, const char *identity, const void *key,
		size_t key_len, mig_error *err)
{
	mig_tls *t;
	int g;

	if (!out)
		return mig__err(err, -EINVAL, "TLS PSK: no handle to fill");
	*out = NULL;
	if (!name_ok(identity))
		return mig__err(err, -EINVAL,
				"TLS PSK: the identity must be 1..%u printable "
				"ASCII bytes without spaces", MIG_TLS_NAME_MAX);
	if (!key || key_len < MIG_TLS_PSK_MIN || key_len > MIG_TLS_PSK_MAX)
		return mig__err(err, -EINVAL,
				"TLS PSK: the key has %zu bytes, it must have "
				"%u..%u", key ? key_len : 0, MIG_TLS_PSK_MIN,
				MIG_TLS_PSK_MAX);
	if (!(t = tls_alloc(TLS_PSK, err)))
		return -ENOMEM;
	t->identity = strdup(identity);
	t->key.data = malloc(key_len);
	if (!t->identity || !t->key.data) {
		mig__tls_unref(t);
		return mig__err(err, -ENOMEM, "TLS PSK: out of memory");
	}
	memcpy(t->key.data, key, key_len);
	t->key.size = (unsigned)key_len;
	if ((g = gnutls_psk_allocate_client_credentials(&t->pskc)) < 0 ||
	    (g = gnutls_psk_set_client_credentials(t->pskc, identity, &t->key,
						   GNUTLS_PSK_KEY_RAW)) < 0 ||
	    (g = gnutls_psk_allocate_server_credentials(&t->psks)) < 0) {
		mig__tls_unref(t);
		return tls_fail(err, -ENOMEM, "TLS PSK credentials", g);
	}
	gnutls_psk_set_server_credentials_function(t->psks, psk_lookup);
	*out = t;
	return 0;
}

static int pem_datum(const char *pem, gnutls_datum_t *d)
{
	if (!pem || !*pem)
		return 0;
	d->data = (unsigned char *)pem;
	d->size = (unsigned)strnlen(pem, 1u << 20);
	return d->size < (1u << 20);
}

int mig_tls_x509(mig_tls **out, const char *ca_pem, const char *cert_pem,
		 const char *key_pem, const char *peer_name, mig_error *err)
{
	gnutls_datum_t ca, cert, key;
	mig_tls *t;
	int g;

	if (!out)
		return mig__err(err, -EINVAL, "TLS x509: no handle to fill");
	*out = NULL;
	if (!pem_datum(ca_pem, &ca) || !pem_datum(cert_pem, &cert) ||
	    !pem_datum(key_pem, &key))
		return mig__err(err, -EINVAL,
				"TLS x509: the CA, the certificate and its key "
				"are all needed, as PEM text under 1 MiB");
	if (peer_name && !name_ok(peer_name))
		return mig__err(err, -EINVAL,
				"TLS x509: the peer's name must be 1..%u "
				"printable ASCII bytes without spaces",
				MIG_TLS_NAME_MAX);
	if (!(t = tls_alloc(TLS_X509, err)))
		return -ENOMEM;
	if (peer_name && !(t->peer_name = strdup(peer_name))) {
		mig__tls_unref(t);
		return mig__err(err, -ENOMEM, "TLS x509: out of memory");
	}
	if ((g = gnutls_certificate_allocate_credentials(&t->x509)) < 0) {
		mig__tls_unref(t);
		return tls_fail(err, -ENOMEM, "TLS x509 credentials", g);
	}
	g = gnutls_certificate_set_x509_trust_mem(t->x509, &ca,
						  GNUTLS_X509_FMT_PEM);
	if (g <= 0) {
		mig__tls_unref(t);
		if (g == 0)
			return mig__err(err, -EINVAL,
					"TLS x509: no CA certificate in the CA PEM");
		return tls_fail(err, -EINVAL, "TLS x509: CA certificate", g);
	}
	g = gnutls_certificate_set_x509_key_mem2(t->x509, &cert, &key,
						 GNUTLS_X509_FMT_PEM, NULL, 0);
	if (g < 0) {
		mig__tls_unref(t);
		if (g == GNUTLS_E_CERTIFICATE_KEY_MISMATCH)
			return mig__err(err, -EINVAL, "TLS x509: the key does "
					"not match the certificate");
		return tls_fail(err, -EINVAL, "TLS x509: certificate or key", g);
	}
	*out = t;
	return 0;
}

/*
 * Where GnuTLS's output goes during a call of ours: per thread, as the
 * source's connection thread may read (open/recv) on a session while the
 * engine's thread seals on it (GnuTLS allows one sender and one receiver
 * at a time), and each call must keep what it produced.
 */
static __thread mig_buf *tls_out;
static __thread int tls_out_err;

mig_buf *mig__tls_sink(mig_buf *out)
{
	mig_buf *old = tls_out;

	tls_out = out;
	tls_out_err = 0;
	return old;
}

static ssize_t push(gnutls_transport_ptr_t p, const void *data, size_t n)
{
	mig_tls_conn *c = p;

	if (!tls_out) { /* outside a call of ours: nothing may be written */
		gnutls_transport_set_errno(c->session, EAGAIN);
		return -1;
	}
	if (mig__buf_append(tls_out, data, n) < 0) {
		tls_out_err = -ENOMEM;
		gnutls_transport_set_errno(c->session, ENOMEM);
		return -1;
	}
	return (ssize_t)n;
}

static ssize_t pull(gnutls_transport_ptr_t p, void *data, size_t n)
{
	mig_tls_conn *c = p;
	size_t avail = c->in.len - c->in_off;

	if (!avail) {
		gnutls_transport_set_errno(c->session, EAGAIN);
		return -1;
	}
	n = MIG_MIN(n, avail);
	memcpy(data, c->in.data + c->in_off, n);
	c->in_off += n;
	if (c->in_off == c->in.len)
		c->in.len = c->in_off = 0;
	return (ssize_t)n;
}

int mig__tls_conn_init(mig_tls_conn *c, const mig_tls *creds, int server,
		       mig_error *err)
{
	gnutls_session_t s;
	const char *where = NULL;
	int g;

	memset(c, 0, sizeof(*c));
	if (!creds)
		return mig__err(err, -EINVAL, "TLS: no credentials");
	g = gnutls_init(&s, (server ? GNUTLS_SERVER : GNUTLS_CLIENT) |
				    GNUTLS_NO_TICKETS);
	if (g < 0)
		return tls_fail(err, -ENOMEM, "TLS session", g);
	c->session = s;
	c->creds = mig__tls_ref((mig_tls *)creds);
	c->server = server;
	gnutls_session_set_ptr(s, c);
	gnutls_transport_set_ptr(s, c);
	gnutls_transport_set_push_function(s, push);
	gnutls_transport_set_pull_function(s, pull);
	gnutls_handshake_set_timeout(s, 0); /* the connection has deadlines */
	if (creds->kind == TLS_PSK) {
		g = gnutls_priority_set_direct(s, PRIO_PSK, &where);
		if (g >= 0)
			g = server ? gnutls_credentials_set(s, GNUTLS_CRD_PSK,
							    creds->psks)
				   : gnutls_credentials_set(s, GNUTLS_CRD_PSK,
							    creds->pskc);
	} else {
		g = gnutls_priority_set_direct(s, PRIO_X509, &where);
		if (g >= 0)
			g = gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE,
						   creds->x509);
		if (g >= 0 && server)
			gnutls_certificate_server_set_request(s, GNUTLS_CERT_REQUIRE);
		if (g >= 0 && !server && creds->peer_name)
			g = gnutls_server_name_set(s, GNUTLS_NAME_DNS,
						   creds->peer_name,
						   strlen(creds->peer_name));
		/* the peer's chain against the CA, its name if given, and
		 * its purpose: a server's certificate from the source's
		 * point of view, a client's from the destination's (one
		 * without the extension may serve either) */
		if (g >= 0) {
			gnutls_typed_vdata_st *v = calloc(2, sizeof(*v));

			c->verify = v;
			if (!v) {
				mig__tls_conn_free(c);
				return mig__err(err, -ENOMEM, "TLS: out of memory");
			}
			v[0].type = GNUTLS_DT_KEY_PURPOSE_OID;
			v[0].data = (unsigned char *)(server
				? GNUTLS_KP_TLS_WWW_CLIENT : GNUTLS_KP_TLS_WWW_SERVER);
			v[1].type = GNUTLS_DT_DNS_HOSTNAME;
			v[1].data = (unsigned char *)creds->peer_name;
			gnutls_session_set_verify_cert2(s, v,
							creds->peer_name ? 2 : 1, 0);
		}
	}
	if (g < 0) {
		mig__tls_conn_free(c);
		return tls_fail(err, -EINVAL, "TLS session setup", g);
	}
	return 0;
}

void mig__tls_conn_free(mig_tls_conn *c)
{
	if (c->session)
		gnutls_deinit(c->session);
	free(c->verify);
	mig__tls_unref((mig_tls *)c->creds);
	mig__buf_free(&c->in);
	memset(c, 0, sizeof(*c));
}

int mig__tls_feed(mig_tls_conn *c, const void *p, size_t n)
{
	if (c->failed)
		return -EPIPE; /* nothing more is read from it */
	if (c->in_off) {
		memmove(c->in.data, c->in.data + c->in_off, c->in.len - c->in_off);
		c->in.len -= c->in_off;
		c->in_off = 0;
	}
	return mig__buf_append(&c->in, p, n);
}

/* Alerts that say the peer refused who we are (or we refused it). */
static int alert_is_auth(gnutls_alert_description_t a)
{
	switch (a) {
	case GNUTLS_A_BAD_CERTIFICATE:
	case GNUTLS_A_UNSUPPORTED_CERTIFICATE:
	case GNUTLS_A_CERTIFICATE_REVOKED:
	case GNUTLS_A_CERTIFICATE_EXPIRED:
	case GNUTLS_A_CERTIFICATE_UNKNOWN:
	case GNUTLS_A_UNKNOWN_CA:
	case GNUTLS_A_ACCESS_DENIED:
	case GNUTLS_A_DECRYPT_ERROR:
	case GNUTLS_A_UNKNOWN_PSK_IDENTITY:
	case GNUTLS_A_CERTIFICATE_REQUIRED:
		return 1;
	default:
		return 0;
	}
}

/* A failed handshake as an error: who refused what. */
static int handshake_error(mig_tls_conn *c, int g, mig_error *err)
{
	gnutls_session_t s = c->session;
	gnutls_alert_description_t a;
	gnutls_datum_t txt = { NULL, 0 };
	const char *peer = c->server ? "source" : "destination";
	int r;

	c->failed = 1;
	switch (g) {
	case GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR:
		if (gnutls_certificate_verification_status_print(
			    gnutls_session_get_verify_cert_status(s),
			    GNUTLS_CRT_X509, &txt, 0) < 0)
			txt.data = NULL;
		/* GnuTLS ends each sentence with ". " */
		for (size_t k = txt.data ? strlen((char *)txt.data) : 0;
		     k && (txt.data[k - 1] == ' ' || txt.data[k - 1] == '.');)
			txt.data[--k] = '\0';
		if (c->creds->peer_name)
			r = mig__err(err, MIG_E_AUTH,
				     "TLS: the %s's certificate was refused "
				     "(expected name %s): %s", peer,
				     c->creds->peer_name,
				     txt.data ? (char *)txt.data : "not trusted");
		else
			r = mig__err(err, MIG_E_AUTH,
				     "TLS: the %s's certificate was refused: %s",
				     peer, txt.data ? (char *)txt.data : "not trusted");
		gnutls_free(txt.data);
		break;
	case GNUTLS_E_FATAL_ALERT_RECEIVED:
		a = gnutls_alert_get(s);
		/* A wrong PSK shows as a binder the server cannot check. */
		if (c->creds->kind == TLS_PSK &&
		    (a == GNUTLS_A_ILLEGAL_PARAMETER || a == GNUTLS_A_INTERNAL_ERROR))
			r = mig__err(err, MIG_E_AUTH,
				     "TLS: the %s refused our pre-shared key "
				     "(a different key or identity?): %s", peer,
				     gnutls_alert_get_name(a));
		else
			r = mig__err(err, alert_is_auth(a) ? MIG_E_AUTH : MIG_E_TLS,
				     "TLS: the %s refused the handshake: %s",
				     peer, gnutls_alert_get_name(a));
		break;
	case GNUTLS_E_RECEIVED_ILLEGAL_PARAMETER:
	case GNUTLS_E_SRP_PWD_ERROR:
		if (c->creds->kind == TLS_PSK) {
			r = mig__err(err, MIG_E_AUTH,
				     "TLS: the %s's pre-shared key does not match "
				     "ours (a different key or identity)", peer);
			break;
		}
		r = mig__err(err, MIG_E_TLS, "TLS handshake with the %s: %s",
			     peer, gnutls_strerror(g));
		break;
	case GNUTLS_E_DECRYPTION_FAILED:
	case GNUTLS_E_INSUFFICIENT_CREDENTIALS:
	case GNUTLS_E_NO_CERTIFICATE_FOUND:
	case GNUTLS_E_CERTIFICATE_REQUIRED:
	case GNUTLS_E_CERTIFICATE_ERROR:
	case GNUTLS_E_PK_SIG_VERIFY_FAILED:
	case GNUTLS_E_KEY_USAGE_VIOLATION:
		r = mig__err(err, MIG_E_AUTH,
			     "TLS: the %s's credentials were refused: %s", peer,
			     gnutls_strerror(g));
		break;
	default:
		r = mig__err(err, MIG_E_TLS, "TLS handshake with the %s: %s",
			     peer, gnutls_strerror(g));
		break;
	}
	/* Tell the peer why, if it can still hear it. */
	if (g != GNUTLS_E_FATAL_ALERT_RECEIVED)
		(void)gnutls_alert_send_appropriate(s, g);
	return r;
}

/* Non-fatal returns (a warning alert) in a row before giving up. */
#define TLS_SOFT_MAX 16

int mig__tls_handshake(mig_tls_conn *c, mig_buf *out, mig_error *err)
{
	int g, soft = 0;

	if (c->failed)
		return mig__err(err, MIG_E_TLS, "TLS: the session has failed");
	if (c->done)
		return 1;
	tls_out = out;
	tls_out_err = 0;
	do {
		g = gnutls_handshake(c->session);
	} while ((g == GNUTLS_E_INTERRUPTED ||
		  (g < 0 && g != GNUTLS_E_AGAIN && !gnutls_error_is_fatal(g))) &&
		 !tls_out_err && ++soft < TLS_SOFT_MAX);
	if (tls_out_err) {
		tls_out = NULL;
		c->failed = 1;
		return mig__err(err, tls_out_err, "TLS handshake: out of memory");
	}
	if (g == 0) {
		c->done = 1;
		tls_out = NULL;
		return 1;
	}
	if (g == GNUTLS_E_AGAIN) {
		tls_out = NULL;
		return 0;
	}
	g = handshake_error(c, g, err);
	tls_out = NULL;
	return g;
}

int mig__tls_seal(mig_tls_conn *c, const void *p, size_t n, mig_buf *out,
		  mig_error *err)
{
	const uint8_t *b = p;
	int r = 0;

	if (!c->done || c->failed)
		return mig__err(err, MIG_E_TLS, "TLS: no session to write on");
	/* a record per 16 KiB, each with its header and tag */
	if (mig__buf_reserve(out, n + (n / 16384 + 1) * 64) < 0)
		return mig__err(err, -ENOMEM, "TLS: out of memory");
	tls_out = out;
	tls_out_err = 0;
	while (n) {
		ssize_t g = gnutls_record_send(c->session, b, n);

		if (g == GNUTLS_E_INTERRUPTED)
			continue;
		if (g <= 0 || tls_out_err) {
			c->failed = 1;
			r = tls_out_err ? mig__err(err, tls_out_err, "TLS: out of memory")
				       : tls_fail(err, MIG_E_TLS, "TLS write", (int)g);
			break;
		}
		b += g;
		n -= (size_t)g;
	}
	tls_out = NULL;
	return r;
}

long mig__tls_recv(mig_tls_conn *c, void *dst, size_t cap, mig_buf *out,
		   mig_error *err)
{
	long r = 0;
	int soft = 0;

	if (!c->done || c->failed)
		return mig__err(err, MIG_E_TLS, "TLS: no session to read on");
	tls_out = out;
	tls_out_err = 0;
	for (;;) {
		ssize_t g;

		if (c->in.len == c->in_off &&
		    !gnutls_record_check_pending(c->session))
			break;
		g = gnutls_record_recv(c->session, dst, cap);
		if (g > 0) {
			r = (long)g;
			break;
		}
		if (g == 0) { /* close_notify: nothing more will come */
			c->in.len = c->in_off = 0;
			c->peer_closed = 1;
			break;
		}
		if (g == GNUTLS_E_AGAIN)
			break;
		if ((g == GNUTLS_E_INTERRUPTED || !gnutls_error_is_fatal((int)g)) &&
		    ++soft < TLS_SOFT_MAX)
			continue;
		c->failed = 1;
		/* Tell the source (bad_record_mac for a record that fails
		 * its check), so that it knows tampering from a cut link. The
		 * source itself sends nothing here: its engine may be sealing
		 * on this session from another thread (one sender only). */
		if (g != GNUTLS_E_FATAL_ALERT_RECEIVED && c->server)
			(void)gnutls_alert_send_appropriate(c->session, (int)g);
		if (g == GNUTLS_E_FATAL_ALERT_RECEIVED) {
			/* TLS 1.3: a client hears that its certificate was
			 * refused only after its handshake ended */
			gnutls_alert_description_t a = gnutls_alert_get(c->session);

			r = mig__err(err, alert_is_auth(a) ? MIG_E_AUTH : MIG_E_TLS,
				     "TLS: the %s sent alert %s",
				     c->server ? "source" : "destination",
				     gnutls_alert_get_name(a));
		}
		else
			r = tls_fail(err, MIG_E_TLS, "TLS read", (int)g);
		break;
	}
	if (r >= 0 && tls_out_err) {
		c->failed = 1;
		r = mig__err(err, tls_out_err, "TLS: out of memory");
	}
	tls_out = NULL;
	return r;
}

int mig__tls_token_proof(mig_tls_conn *c, const uint8_t *token, size_t len,
			 uint8_t proof[MIG_TLS_PROOF_LEN], mig_error *err)
{
	static const char label[] = "EXPORTER-libmigrate-token";
	uint8_t ekm[32];
	int g;

	if (!c->done || c->failed)
		return mig__err(err, MIG_E_TLS, "TLS: no session to bind the token to");
	g = gnutls_prf_rfc5705(c->session, sizeof(label) - 1, label, 0, NULL,
			       sizeof(ekm), (char *)ekm);
	if (g == 0)
		g = gnutls_hmac_fast(GNUTLS_MAC_SHA256, token, len, ekm,
				     sizeof(ekm), proof);
	explicit_bzero(ekm, sizeof(ekm));
	if (g < 0)
		return tls_fail(err, MIG_E_TLS, "TLS: binding the token", g);
	return 0;
}

int mig__tls_looks_like(const uint8_t *p, size_t n)
{
	/* ContentType handshake (22) or alert (21), legacy version 3.x */
	return n >= 3 && (p[0] == 22 || p[0] == 21) && p[1] == 3 && p[2] <= 4;
}

int mig__tls_peer_closed(const mig_tls_conn *c)
{
	return c->peer_closed;
}
