/*
 * TLS without I/O (tls.c): a client (the source) and a server (the
 * destination) talk through memory, each one's output fed to the other.
 * PSK and X.509 handshakes, data both ways, wrong keys, names, dates and
 * CAs, downgrades, tampered, replayed and dribbled records, key update and
 * close_notify, bad credentials, and the credentials' reference count.
 * Certificates are made at start-up (tls_certs.h).
 */
#define _GNU_SOURCE /* memmem */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mig_test.h"
#include "tls.h"
#include "tls_certs.h"

#if defined(__SANITIZE_ADDRESS__)
#define TLS_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TLS_TEST_ASAN 1
#endif
#endif
#ifdef TLS_TEST_ASAN
/*
 * GnuTLS 3.7 leaks a certificate when gnutls_certificate_set_x509_key_mem2
 * fails to parse a PEM certificate after a good key (test_x509_bad_creds
 * does that on purpose): not tls.c's leak. The suppression needs whole
 * stacks through GnuTLS, which has no frame pointers.
 */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
	return "fast_unwind_on_malloc=0";
}
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
	return "leak:gnutls_certificate_set_x509_key_mem2\n";
}
#endif

/* One end: its connection, its last handshake result, its error. */
typedef struct side {
	mig_tls_conn conn;
	mig_error err;
	int rc;
} side;

/* Certificates shared by the tests (group setup). */
static struct {
	tc_ca ca;               /* signs everything below but `alien` */
	tc_ca other;            /* an unrelated CA */
	char *srv_cert, *srv_key;       /* dest.example */
	char *cli_cert, *cli_key;       /* source.example */
	char *old_cert, *old_key;       /* dest.example, expired an hour ago */
	char *alien_cert, *alien_key;   /* source.example, signed by other */
	char *wp_srv_cert, *wp_srv_key; /* dest.example, for TLS clients only */
	char *wp_cli_cert, *wp_cli_key; /* source.example, for servers only */
} K;

static const uint8_t key_a[32] = "0123456789abcdef0123456789abcdef";
static const uint8_t key_b[32] = "0123456789abcdef0123456789abcdeF";

/* 64 bytes that would stand out in a capture. */
static const char marker[65] =
	"<<MIGRATION-PLAINTEXT-MARKER-this-must-never-cross-the-wire!!!>>";

/*
 * Decrypt every whole record fed so far, appending the plaintext to
 * `plain`: mig__tls_recv() in a loop, as the connections call it record
 * by record. Returns 0 or its error.
 */
static int open_all(mig_tls_conn *c, mig_buf *plain, mig_buf *out,
		    mig_error *err)
{
	long n;

	do {
		if (mig__buf_reserve(plain, MIG_TLS_RECORD_MAX) < 0)
			return mig__err(err, -ENOMEM, "TLS: out of memory");
		n = mig__tls_recv(c, plain->data + plain->len,
				  plain->cap - plain->len, out, err);
		if (n > 0)
			plain->len += (size_t)n;
	} while (n > 0);
	return n < 0 ? (int)n : 0;
}

static mig_tls *psk(const char *id, const uint8_t *key, size_t n)
{
	mig_tls *t = NULL;
	mig_error err = { 0 };
	int rc = mig_tls_psk(&t, id, key, n, &err);
	if (rc)
		fail_msg("mig_tls_psk: %d %s", rc, err.msg);
	assert_non_null(t);
	return t;
}

static mig_tls *x509(const char *ca, const char *cert, const char *key,
		     const char *peer)
{
	mig_tls *t = NULL;
	mig_error err = { 0 };
	int rc = mig_tls_x509(&t, ca, cert, key, peer, &err);
	if (rc)
		fail_msg("mig_tls_x509: %d %s", rc, err.msg);
	assert_non_null(t);
	return t;
}

/* Start a connection on `creds` and drop the caller's reference at once,
 * as the library's users may. */
static void side_init(side *x, mig_tls *creds, int server)
{
	int rc;
	memset(x, 0, sizeof(*x));
	rc = mig__tls_conn_init(&x->conn, creds, server, &x->err);
	if (rc)
		fail_msg("mig__tls_conn_init: %d %s", rc, x->err.msg);
	mig_tls_free(creds);
}

static void pair_init(side *c, mig_tls *cc, side *s, mig_tls *sc)
{
	side_init(c, cc, 0);
	side_init(s, sc, 1);
}

static void pair_free(side *c, side *s)
{
	mig__tls_conn_free(&c->conn);
	mig__tls_conn_free(&s->conn);
}

/* Hand what `out` holds to `to`; a side that failed may refuse it. */
static size_t ship(side *to, mig_buf *out)
{
	size_t n = out->len;
	if (n) {
		int rc = mig__tls_feed(&to->conn, out->data, n);
		if (to->rc >= 0)
			assert_int_equal(rc, 0);
		out->len = 0;
	}
	return n;
}

/*
 * Drive both handshakes in turns, each one's records fed to the other,
 * until both are done, or both have stopped (one failed and the other
 * has nothing more to hear), or 20 steps. The results are left in c->rc
 * and s->rc; returns 1 when both handshakes completed.
 */
static int pump_handshake(side *c, side *s)
{
	mig_buf out = { 0 };
	for (int step = 0; step < 20; step++) {
		size_t moved = 0;
		if (c->rc == 0)
			c->rc = mig__tls_handshake(&c->conn, &out, &c->err);
		moved += ship(s, &out);
		if (s->rc == 0)
			s->rc = mig__tls_handshake(&s->conn, &out, &s->err);
		moved += ship(c, &out);
		if (c->rc != 0 && s->rc != 0)
			break;
		if (!moved)
			break;
	}
	mig__buf_free(&out);
	return c->rc == 1 && s->rc == 1;
}

static int pump_ok(side *c, side *s)
{
	int ok = pump_handshake(c, s);
	if (!ok)
		fail_msg("handshake: client %d \"%s\", server %d \"%s\"",
			 c->rc, c->err.msg, s->rc, s->err.msg);
	assert_true(c->conn.done && s->conn.done);
	assert_false(c->conn.failed || s->conn.failed);
	return ok;
}

/* `x`'s handshake failed as a refusal should: MIG_E_TLS or MIG_E_AUTH,
 * said in err, and the connection marked dead. */
static void assert_refused(const side *x)
{
	if (x->rc != MIG_E_TLS && x->rc != MIG_E_AUTH)
		fail_msg("%s: handshake gave %d \"%s\", want MIG_E_TLS/AUTH",
			 x->conn.server ? "server" : "client", x->rc,
			 x->err.msg);
	assert_int_equal(x->err.code, x->rc);
	assert_true(x->err.msg[0] != '\0');
	assert_true(x->conn.failed);
}

/* Neither end believes it is talking securely, and one said why. */
static void assert_no_session(const side *c, const side *s)
{
	if (c->rc == 1 || s->rc == 1)
		fail_msg("handshake succeeded on one side: client %d \"%s\", "
			 "server %d \"%s\"", c->rc, c->err.msg, s->rc,
			 s->err.msg);
	assert_true(c->rc < 0 || s->rc < 0);
	if (c->rc < 0)
		assert_refused(c);
	if (s->rc < 0)
		assert_refused(s);
}

/* A peer that finished its handshake while the other end refused (TLS
 * 1.3's client is done before the server has checked its certificate)
 * gets nothing into the refusing end: what it seals there never comes
 * out as plaintext. */
static void assert_takes_nothing(side *from, side *to)
{
	mig_buf out = { 0 }, plain = { 0 }, back = { 0 };
	mig_error err = { 0 };
	int rc;
	if (from->rc != 1)
		return;
	if (mig__tls_seal(&from->conn, "hello", 5, &out, &err) == 0) {
		(void)mig__tls_feed(&to->conn, out.data, out.len);
		rc = open_all(&to->conn, &plain, &back, &err);
		assert_true(rc < 0);
		assert_int_equal(plain.len, 0);
	}
	mig__buf_free(&out);
	mig__buf_free(&plain);
	mig__buf_free(&back);
}

/* The end that finished while its peer refused hears the peer's alert
 * (pump_handshake fed it): its next open fails and says so. */
static void assert_told(side *x)
{
	mig_buf plain = { 0 }, back = { 0 };
	mig_error err = { 0 };
	int rc;
	if (x->rc != 1)
		return;
	rc = open_all(&x->conn, &plain, &back, &err);
	if (rc != MIG_E_TLS && rc != MIG_E_AUTH)
		fail_msg("open after the peer refused gave %d \"%s\"", rc,
			 err.msg);
	assert_true(err.msg[0] != '\0');
	assert_true(x->conn.failed);
	assert_int_equal(plain.len, 0);
	mig__buf_free(&plain);
	mig__buf_free(&back);
}

static void fill_random(uint8_t *p, size_t n, uint64_t seed)
{
	uint64_t x = seed | 1;
	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = (uint8_t)(x >> 24);
	}
}

/*
 * Seal n bytes of p on `from` in pieces of the sizes in cuts[] (cycled),
 * feed each piece's records to `to`, open there after every other piece
 * (so that several records at once are opened too) and at the end. The
 * plaintext is appended to `plain`, the ciphertext to `wire` if not NULL.
 */
static void transfer(side *from, side *to, const uint8_t *p, size_t n,
		     const size_t *cuts, size_t ncuts, mig_buf *plain,
		     mig_buf *wire)
{
	mig_buf out = { 0 }, back = { 0 };
	size_t off = 0, i = 0;
	int rc;
	while (off < n) {
		size_t k = MIG_MIN(cuts[i % ncuts], n - off);
		rc = mig__tls_seal(&from->conn, p + off, k, &out, &from->err);
		if (rc)
			fail_msg("seal %zu: %d %s", k, rc, from->err.msg);
		/* every byte went out, with a header and a tag per record */
		assert_true(out.len > k);
		if (wire)
			assert_int_equal(mig__buf_append(wire, out.data,
							 out.len), 0);
		assert_int_equal(mig__tls_feed(&to->conn, out.data, out.len),
				 0);
		out.len = 0;
		off += k;
		i++;
		if (i % 2 == 0 || off == n) {
			rc = open_all(&to->conn, plain, &back, &to->err);
			if (rc)
				fail_msg("open: %d %s", rc, to->err.msg);
			if (back.len) {
				assert_int_equal(mig__tls_feed(&from->conn,
						back.data, back.len), 0);
				back.len = 0;
			}
		}
	}
	mig__buf_free(&out);
	mig__buf_free(&back);
}

/* A short message each way, for tests about something else. */
static void exchange_small(side *c, side *s)
{
	static const size_t cut[] = { 1000 };
	uint8_t data[3000];
	mig_buf plain = { 0 };
	fill_random(data, sizeof(data), 7);
	transfer(c, s, data, sizeof(data), cut, 1, &plain, NULL);
	assert_int_equal(plain.len, sizeof(data));
	assert_memory_equal(plain.data, data, sizeof(data));
	plain.len = 0;
	transfer(s, c, data, sizeof(data), cut, 1, &plain, NULL);
	assert_int_equal(plain.len, sizeof(data));
	assert_memory_equal(plain.data, data, sizeof(data));
	mig__buf_free(&plain);
}

static void assert_tls13(const side *x)
{
	gnutls_session_t ss = x->conn.session;
	assert_non_null(ss);
	assert_int_equal(gnutls_protocol_get_version(ss), GNUTLS_TLS1_3);
}

/*
 * PSK: the handshake completes in TLS 1.3 with an ephemeral (EC)DHE
 * exchange (forward secrecy, as migrate.h promises); 1 MiB in pieces
 * from 1 byte to well over a record (16 KiB) arrives intact both ways,
 * and a 64-byte marker planted in it never appears on the wire.
 */
static void test_psk_roundtrip(void **state)
{
	static const size_t cuts[] = { 1, 16385, 7, 65537, 3, 16384, 200003,
				       4095, 1, 16383 };
	const size_t n = 1u << 20;
	uint8_t *data = malloc(n);
	mig_buf plain = { 0 }, wire = { 0 }, out = { 0 };
	side c, s;
	gnutls_kx_algorithm_t kx;
	(void)state;

	assert_non_null(data);
	fill_random(data, n, 42);
	memcpy(data, marker, 64);
	memcpy(data + 12345, marker, 64);
	memcpy(data + n / 2 + 3, marker, 64);
	memcpy(data + n - 64, marker, 64);

	pair_init(&c, psk("source-1", key_a, sizeof(key_a)), &s,
		  psk("source-1", key_a, sizeof(key_a)));
	assert_string_equal(mig__tls_kind(c.conn.creds), "psk");
	/* A server with nothing fed waits and says nothing. */
	assert_int_equal(mig__tls_handshake(&s.conn, &out, &s.err), 0);
	assert_int_equal(out.len, 0);
	mig__buf_free(&out);

	pump_ok(&c, &s);
	assert_tls13(&c);
	assert_tls13(&s);
	kx = gnutls_kx_get(c.conn.session);
	if (kx != GNUTLS_KX_ECDHE_PSK && kx != GNUTLS_KX_DHE_PSK)
		fail_msg("key exchange %s, want (EC)DHE-PSK",
			 gnutls_kx_get_name(kx));

	/* source -> destination */
	transfer(&c, &s, data, n, cuts, MIG_ARRAY_SIZE(cuts), &plain, &wire);
	assert_int_equal(plain.len, n);
	assert_memory_equal(plain.data, data, n);
	assert_non_null(memmem(plain.data, plain.len, marker, 64));
	assert_true(wire.len > n);
	assert_null(memmem(wire.data, wire.len, marker, 64));

	/* destination -> source, cut differently */
	plain.len = wire.len = 0;
	transfer(&s, &c, data, n, cuts + 3, MIG_ARRAY_SIZE(cuts) - 3, &plain,
		 &wire);
	assert_int_equal(plain.len, n);
	assert_memory_equal(plain.data, data, n);
	assert_null(memmem(wire.data, wire.len, marker, 64));

	mig__buf_free(&plain);
	mig__buf_free(&wire);
	pair_free(&c, &s);
	free(data);
}

/* PSK with a different key on each side, then with a different identity:
 * no session, and the side that refused says why. */
static void test_psk_mismatch(void **state)
{
	side c, s;
	(void)state;

	pair_init(&c, psk("source-1", key_a, sizeof(key_a)), &s,
		  psk("source-1", key_b, sizeof(key_b)));
	assert_false(pump_handshake(&c, &s));
	assert_no_session(&c, &s);
	pair_free(&c, &s);

	pair_init(&c, psk("source-1", key_a, sizeof(key_a)), &s,
		  psk("source-2", key_a, sizeof(key_a)));
	assert_false(pump_handshake(&c, &s));
	assert_no_session(&c, &s);
	pair_free(&c, &s);
}

/* A client that offers only what `prio` allows (a GnuTLS priority
 * string set over the one tls.c chose) against tls.c's server. */
static void weak_client(const char *prio, side *c, side *s)
{
	const char *where = NULL;
	pair_init(c, psk("source-1", key_a, 32), s,
		  psk("source-1", key_a, 32));
	assert_int_equal(gnutls_priority_set_direct(c->conn.session, prio,
						    &where), 0);
	assert_false(pump_handshake(c, s));
	assert_no_session(c, s);
	pair_free(c, s);
}

/* The destination takes TLS 1.3 with (EC)DHE only: a peer offering TLS
 * 1.2, or PSK without a Diffie-Hellman exchange (no forward secrecy), is
 * refused. */
static void test_psk_downgrade(void **state)
{
	side c, s;
	(void)state;
	weak_client("NORMAL:-VERS-ALL:+VERS-TLS1.2:-KX-ALL:+ECDHE-PSK", &c,
		    &s);
	weak_client("NORMAL:-VERS-ALL:+VERS-TLS1.3:-KX-ALL:+PSK", &c, &s);
}

static void assert_psk_einval(const char *id, const void *key, size_t n)
{
	mig_tls *t = NULL;
	mig_error err = { 0 };
	int rc = mig_tls_psk(&t, id, key, n, &err);
	if (rc != -EINVAL) {
		if (rc == 0)
			mig_tls_free(t);
		fail_msg("mig_tls_psk(%s, %zu bytes) gave %d, want -EINVAL",
			 id ? id : "NULL", n, rc);
	}
	assert_true(err.msg[0] != '\0');
}

/* Key lengths 16..256 and identities of 1..255 printable ASCII bytes are
 * taken; one byte less or more, an empty, absent or control-character
 * identity, or no key, are refused with -EINVAL and a message. */
static void test_psk_limits(void **state)
{
	uint8_t key[300];
	char id[300];
	(void)state;

	fill_random(key, sizeof(key), 3);
	assert_psk_einval("id", key, 15);
	assert_psk_einval("id", key, 257);
	assert_psk_einval("id", key, 0);
	assert_psk_einval("id", NULL, 32);
	mig_tls_free(psk("id", key, 16));
	mig_tls_free(psk("id", key, 256));

	assert_psk_einval("", key, 32);
	assert_psk_einval(NULL, key, 32);
	assert_psk_einval("a\nb", key, 32);
	assert_psk_einval("a\x7f", key, 32);
	assert_psk_einval("caf\xc3\xa9", key, 32);
	memset(id, 'a', sizeof(id));
	id[255] = '\0';
	mig_tls_free(psk(id, key, 32));
	id[255] = 'a';
	id[256] = '\0';
	assert_psk_einval(id, key, 32);
	mig_tls_free(psk("a", key, 32));
	mig_tls_free(psk("host-a.example:migration-7", key, 32));
}

/* The source's Finished and its first record in one segment, as a
 * source that writes at once after its handshake sends them: the
 * destination's handshake completes and the record waits for open. */
static void test_data_after_finished(void **state)
{
	mig_buf out = { 0 }, plain = { 0 }, back = { 0 };
	side c, s;
	(void)state;

	pair_init(&c, psk("source-1", key_a, 32), &s,
		  psk("source-1", key_a, 32));
	for (int step = 0; step < 20 && c.rc == 0; step++) {
		c.rc = mig__tls_handshake(&c.conn, &out, &c.err);
		if (c.rc == 1)
			break;
		ship(&s, &out);
		s.rc = mig__tls_handshake(&s.conn, &out, &s.err);
		assert_int_equal(s.rc, 0);
		ship(&c, &out);
	}
	if (c.rc != 1)
		fail_msg("client handshake: %d %s", c.rc, c.err.msg);
	assert_int_equal(mig__tls_seal(&c.conn, "first", 5, &out, &c.err), 0);
	ship(&s, &out);
	s.rc = mig__tls_handshake(&s.conn, &out, &s.err);
	if (s.rc != 1)
		fail_msg("server handshake: %d %s", s.rc, s.err.msg);
	ship(&c, &out);
	assert_int_equal(open_all(&s.conn, &plain, &back, &s.err), 0);
	assert_int_equal(plain.len, 5);
	assert_memory_equal(plain.data, "first", 5);

	mig__buf_free(&out);
	mig__buf_free(&plain);
	mig__buf_free(&back);
	pair_free(&c, &s);
}

/* Hand `out` to `to` a byte at a time, driving its handshake after each
 * byte; what it answers goes to `back`. */
static void dribble_handshake(side *to, mig_buf *out, mig_buf *back)
{
	for (size_t i = 0; i < out->len && to->rc == 0; i++) {
		assert_int_equal(mig__tls_feed(&to->conn, out->data + i, 1), 0);
		to->rc = mig__tls_handshake(&to->conn, back, &to->err);
	}
	out->len = 0;
}

/* Handshake records arriving a byte at a time (X.509, the longest
 * flights): each side waits for whole messages and completes. */
static void test_dribble_handshake(void **state)
{
	mig_buf a = { 0 }, b = { 0 };
	side c, s;
	(void)state;

	pair_init(&c, x509(K.ca.pem, K.cli_cert, K.cli_key, "dest.example"),
		  &s, x509(K.ca.pem, K.srv_cert, K.srv_key, "source.example"));
	c.rc = mig__tls_handshake(&c.conn, &a, &c.err);
	assert_int_equal(c.rc, 0);
	for (int step = 0; step < 10 && !(c.rc == 1 && s.rc == 1); step++) {
		dribble_handshake(&s, &a, &b);
		if (s.rc < 0)
			fail_msg("server: %d %s", s.rc, s.err.msg);
		dribble_handshake(&c, &b, &a);
		if (c.rc < 0)
			fail_msg("client: %d %s", c.rc, c.err.msg);
		if (c.rc == 1 && a.len)
			dribble_handshake(&s, &a, &b);
	}
	assert_int_equal(c.rc, 1);
	assert_int_equal(s.rc, 1);
	exchange_small(&c, &s);

	mig__buf_free(&a);
	mig__buf_free(&b);
	pair_free(&c, &s);
}

/* One byte flipped in the middle of a record: open refuses it with
 * MIG_E_TLS, yields no plaintext, and the connection is dead: a good
 * record afterwards is refused too. */
static void test_tamper(void **state)
{
	uint8_t data[1000];
	mig_buf out = { 0 }, plain = { 0 }, back = { 0 };
	side c, s;
	int rc;
	(void)state;

	fill_random(data, sizeof(data), 5);
	pair_init(&c, psk("source-1", key_a, 32), &s,
		  psk("source-1", key_a, 32));
	pump_ok(&c, &s);

	assert_int_equal(mig__tls_seal(&c.conn, data, sizeof(data), &out,
				       &c.err), 0);
	assert_true(out.len > sizeof(data));
	out.data[out.len / 2] ^= 0x01;
	assert_int_equal(mig__tls_feed(&s.conn, out.data, out.len), 0);
	rc = open_all(&s.conn, &plain, &back, &s.err);
	assert_int_equal(rc, MIG_E_TLS);
	assert_int_equal(s.err.code, MIG_E_TLS);
	assert_true(s.err.msg[0] != '\0');
	assert_int_equal(plain.len, 0);
	assert_true(s.conn.failed);

	/* A genuine record after that is not taken either. */
	out.len = 0;
	assert_int_equal(mig__tls_seal(&c.conn, data, sizeof(data), &out,
				       &c.err), 0);
	(void)mig__tls_feed(&s.conn, out.data, out.len);
	memset(&s.err, 0, sizeof(s.err));
	rc = open_all(&s.conn, &plain, &back, &s.err);
	assert_true(rc < 0);
	assert_int_equal(plain.len, 0);

	mig__buf_free(&out);
	mig__buf_free(&plain);
	mig__buf_free(&back);
	pair_free(&c, &s);
}

/* A record replayed (fed a second time) fails its check: records are
 * bound to their place in the stream. */
static void test_replay(void **state)
{
	uint8_t data[500];
	mig_buf out = { 0 }, plain = { 0 }, back = { 0 };
	side c, s;
	(void)state;

	fill_random(data, sizeof(data), 6);
	pair_init(&c, psk("source-1", key_a, 32), &s,
		  psk("source-1", key_a, 32));
	pump_ok(&c, &s);
	assert_int_equal(mig__tls_seal(&c.conn, data, sizeof(data), &out,
				       &c.err), 0);
	assert_int_equal(mig__tls_feed(&s.conn, out.data, out.len), 0);
	assert_int_equal(open_all(&s.conn, &plain, &back, &s.err), 0);
	assert_int_equal(plain.len, sizeof(data));
	assert_int_equal(mig__tls_feed(&s.conn, out.data, out.len), 0);
	assert_int_equal(open_all(&s.conn, &plain, &back, &s.err),
			 MIG_E_TLS);
	assert_int_equal(plain.len, sizeof(data));
	assert_true(s.conn.failed);

	mig__buf_free(&out);
	mig__buf_free(&plain);
	mig__buf_free(&back);
	pair_free(&c, &s);
}

/* Ciphertext fed one byte at a time, open called after each: partial
 * records wait, whole ones come out, and the plaintext is the input. */
static void test_dribble(void **state)
{
	const size_t n = 40000;
	uint8_t *data = malloc(n + 1);
	mig_buf out = { 0 }, plain = { 0 }, back = { 0 };
	side c, s;
	int rc;
	(void)state;

	assert_non_null(data);
	fill_random(data, n + 1, 8);
	pair_init(&c, psk("source-1", key_a, 32), &s,
		  psk("source-1", key_a, 32));
	pump_ok(&c, &s);
	assert_int_equal(mig__tls_seal(&c.conn, data, n, &out, &c.err), 0);
	assert_int_equal(mig__tls_seal(&c.conn, data + n, 1, &out, &c.err), 0);
	for (size_t i = 0; i < out.len; i++) {
		assert_int_equal(mig__tls_feed(&s.conn, out.data + i, 1), 0);
		rc = open_all(&s.conn, &plain, &back, &s.err);
		if (rc)
			fail_msg("open after byte %zu of %zu: %d %s", i,
				 out.len, rc, s.err.msg);
		/* nothing comes out before the first record is whole */
		if (i < 16 * 1024)
			assert_int_equal(plain.len, 0);
	}
	assert_int_equal(plain.len, n + 1);
	assert_memory_equal(plain.data, data, n + 1);

	mig__buf_free(&out);
	mig__buf_free(&plain);
	mig__buf_free(&back);
	pair_free(&c, &s);
	free(data);
}

/* mig__tls_recv hands out one record at a time into a buffer of
 * MIG_TLS_RECORD_MAX, then 0 when no whole record is left. */
static void test_recv_records(void **state)
{
	const size_t n = 40000;
	uint8_t *data = malloc(n), *dst = malloc(MIG_TLS_RECORD_MAX);
	mig_buf out = { 0 }, back = { 0 }, plain = { 0 };
	side c, s;
	long got;
	int records = 0;
	(void)state;

	assert_non_null(data);
	assert_non_null(dst);
	fill_random(data, n, 10);
	pair_init(&c, psk("source-1", key_a, 32), &s,
		  psk("source-1", key_a, 32));
	pump_ok(&c, &s);
	assert_int_equal(mig__tls_seal(&c.conn, data, n, &out, &c.err), 0);
	/* all but the last byte: the last record stays incomplete */
	assert_int_equal(mig__tls_feed(&s.conn, out.data, out.len - 1), 0);
	while ((got = mig__tls_recv(&s.conn, dst, MIG_TLS_RECORD_MAX, &back,
				    &s.err)) > 0) {
		assert_true((size_t)got <= MIG_TLS_RECORD_MAX);
		assert_int_equal(mig__buf_append(&plain, dst, (size_t)got), 0);
		records++;
	}
	assert_int_equal(got, 0);
	assert_true(records >= 2);
	assert_true(plain.len < n);
	assert_int_equal(mig__tls_feed(&s.conn, out.data + out.len - 1, 1), 0);
	while ((got = mig__tls_recv(&s.conn, dst, MIG_TLS_RECORD_MAX, &back,
				    &s.err)) > 0)
		assert_int_equal(mig__buf_append(&plain, dst, (size_t)got), 0);
	assert_int_equal(got, 0);
	assert_int_equal(plain.len, n);
	assert_memory_equal(plain.data, data, n);

	mig__buf_free(&out);
	mig__buf_free(&back);
	mig__buf_free(&plain);
	pair_free(&c, &s);
	free(data);
	free(dst);
}

/*
 * The source asks for a key update (as GnuTLS may on a long migration):
 * the destination takes it and answers with its own (GnuTLS queues the
 * answer for its next record), and data keeps flowing both ways under the
 * new keys. tls.c has no call for it, so the
 * test lets GnuTLS write into a buffer by hand, as push() would.
 */
static void test_key_update(void **state)
{
	mig_buf ku = { 0 }, plain = { 0 }, back = { 0 };
	side c, s;
	(void)state;

	pair_init(&c, psk("source-1", key_a, 32), &s,
		  psk("source-1", key_a, 32));
	pump_ok(&c, &s);
	mig__tls_sink(&ku);
	assert_int_equal(gnutls_session_key_update(c.conn.session,
						   GNUTLS_KU_PEER), 0);
	mig__tls_sink(NULL);
	assert_true(ku.len > 0);
	assert_int_equal(mig__tls_feed(&s.conn, ku.data, ku.len), 0);
	assert_int_equal(open_all(&s.conn, &plain, &back, &s.err), 0);
	assert_int_equal(plain.len, 0);
	/* GnuTLS may answer at once or with the destination's next record */
	if (back.len) {
		assert_int_equal(mig__tls_feed(&c.conn, back.data, back.len),
				 0);
		back.len = 0;
		assert_int_equal(open_all(&c.conn, &plain, &back,
					       &c.err), 0);
		assert_int_equal(plain.len, 0);
	}
	exchange_small(&c, &s);
	exchange_small(&c, &s);

	mig__buf_free(&ku);
	mig__buf_free(&plain);
	mig__buf_free(&back);
	pair_free(&c, &s);
}

/* The source's data then its close_notify, fed at once: open returns
 * the data, then peer_closed says the stream ended cleanly. */
static void test_peer_closed(void **state)
{
	mig_buf out = { 0 }, plain = { 0 }, back = { 0 };
	side c, s;
	(void)state;

	pair_init(&c, psk("source-1", key_a, 32), &s,
		  psk("source-1", key_a, 32));
	pump_ok(&c, &s);
	assert_int_equal(mig__tls_seal(&c.conn, "last words", 10, &out,
				       &c.err), 0);
	mig__tls_sink(&out);
	assert_int_equal(gnutls_bye(c.conn.session, GNUTLS_SHUT_WR), 0);
	mig__tls_sink(NULL);
	assert_false(mig__tls_peer_closed(&s.conn));
	assert_int_equal(mig__tls_feed(&s.conn, out.data, out.len), 0);
	assert_int_equal(open_all(&s.conn, &plain, &back, &s.err), 0);
	assert_int_equal(plain.len, 10);
	assert_memory_equal(plain.data, "last words", 10);
	assert_true(mig__tls_peer_closed(&s.conn));
	assert_false(s.conn.failed);

	mig__buf_free(&out);
	mig__buf_free(&plain);
	mig__buf_free(&back);
	pair_free(&c, &s);
}

/* X.509 both ways: each side proves itself with a certificate of the
 * shared CA carrying the name the other expects; data flows. */
static void test_x509_mutual(void **state)
{
	static const size_t cuts[] = { 1, 20000, 4096, 33 };
	const size_t n = 100000;
	uint8_t *data = malloc(n);
	mig_buf plain = { 0 };
	side c, s;
	(void)state;

	assert_non_null(data);
	fill_random(data, n, 9);
	pair_init(&c, x509(K.ca.pem, K.cli_cert, K.cli_key, "dest.example"),
		  &s, x509(K.ca.pem, K.srv_cert, K.srv_key, "source.example"));
	assert_string_equal(mig__tls_kind(s.conn.creds), "x509");
	pump_ok(&c, &s);
	assert_tls13(&c);
	assert_tls13(&s);
	/* the server did see the client's certificate */
	assert_non_null(gnutls_certificate_get_peers(s.conn.session, NULL));

	transfer(&c, &s, data, n, cuts, MIG_ARRAY_SIZE(cuts), &plain, NULL);
	assert_int_equal(plain.len, n);
	assert_memory_equal(plain.data, data, n);
	plain.len = 0;
	transfer(&s, &c, data, n, cuts, MIG_ARRAY_SIZE(cuts), &plain, NULL);
	assert_int_equal(plain.len, n);
	assert_memory_equal(plain.data, data, n);

	mig__buf_free(&plain);
	pair_free(&c, &s);
	free(data);
}

/* Without a peer name the destination takes any certificate its CA
 * signed. */
static void test_x509_any_name(void **state)
{
	side c, s;
	(void)state;
	pair_init(&c, x509(K.ca.pem, K.cli_cert, K.cli_key, "dest.example"),
		  &s, x509(K.ca.pem, K.srv_cert, K.srv_key, NULL));
	pump_ok(&c, &s);
	exchange_small(&c, &s);
	pair_free(&c, &s);
}

/* The source expects another host than the certificate names: refused
 * with MIG_E_AUTH, saying so; the destination never completes. */
static void test_x509_wrong_name(void **state)
{
	side c, s;
	(void)state;
	pair_init(&c, x509(K.ca.pem, K.cli_cert, K.cli_key, "other.example"),
		  &s, x509(K.ca.pem, K.srv_cert, K.srv_key, "source.example"));
	assert_false(pump_handshake(&c, &s));
	assert_no_session(&c, &s);
	assert_int_equal(c.rc, MIG_E_AUTH);
	if (!strstr(c.err.msg, "other.example") && !strstr(c.err.msg, "name"))
		fail_msg("message does not tell the name: \"%s\"", c.err.msg);
	pair_free(&c, &s);
}

/* The destination checks the source's name too: a CA-signed client
 * certificate for another host is refused there, and nothing the source
 * sends gets through. */
static void test_x509_wrong_client_name(void **state)
{
	side c, s;
	(void)state;
	pair_init(&c, x509(K.ca.pem, K.cli_cert, K.cli_key, "dest.example"),
		  &s, x509(K.ca.pem, K.srv_cert, K.srv_key, "wrong.example"));
	assert_false(pump_handshake(&c, &s));
	assert_int_equal(s.rc, MIG_E_AUTH);
	assert_refused(&s);
	assert_takes_nothing(&c, &s);
	assert_told(&c);
	pair_free(&c, &s);
}

/* An expired server certificate: MIG_E_AUTH, and the message says
 * "expired". */
static void test_x509_expired(void **state)
{
	side c, s;
	(void)state;
	pair_init(&c, x509(K.ca.pem, K.cli_cert, K.cli_key, "dest.example"),
		  &s, x509(K.ca.pem, K.old_cert, K.old_key, "source.example"));
	assert_false(pump_handshake(&c, &s));
	assert_no_session(&c, &s);
	assert_int_equal(c.rc, MIG_E_AUTH);
	if (!strstr(c.err.msg, "expired"))
		fail_msg("message does not say expired: \"%s\"", c.err.msg);
	pair_free(&c, &s);
}

/* A certificate the CA signed for the other role (its extended key usage
 * says TLS client where a server's is needed, or the reverse) is refused,
 * on either side: MIG_E_AUTH. A CA shared with other services (QEMU's,
 * libvirt's) signs both kinds. */
static void test_x509_wrong_purpose(void **state)
{
	side c, s;
	(void)state;
	pair_init(&c, x509(K.ca.pem, K.cli_cert, K.cli_key, "dest.example"),
		  &s, x509(K.ca.pem, K.wp_srv_cert, K.wp_srv_key, "source.example"));
	assert_false(pump_handshake(&c, &s));
	assert_no_session(&c, &s);
	assert_int_equal(c.rc, MIG_E_AUTH);
	if (!strstr(c.err.msg, "purpose"))
		fail_msg("message does not say purpose: \"%s\"", c.err.msg);
	pair_free(&c, &s);
	/* the client, in TLS 1.3, is done before the server has checked its
	 * certificate: the refusal is the server's, and nothing gets in */
	pair_init(&c, x509(K.ca.pem, K.wp_cli_cert, K.wp_cli_key, "dest.example"),
		  &s, x509(K.ca.pem, K.srv_cert, K.srv_key, "source.example"));
	assert_false(pump_handshake(&c, &s));
	assert_int_equal(s.rc, MIG_E_AUTH);
	if (!strstr(s.err.msg, "purpose"))
		fail_msg("message does not say purpose: \"%s\"", s.err.msg);
	assert_takes_nothing(&c, &s);
	assert_told(&c);
	pair_free(&c, &s);
}

/* The source trusts another CA than the one that signed the destination's
 * certificate: MIG_E_AUTH. */
static void test_x509_unknown_ca(void **state)
{
	side c, s;
	(void)state;
	pair_init(&c, x509(K.other.pem, K.cli_cert, K.cli_key, "dest.example"),
		  &s, x509(K.ca.pem, K.srv_cert, K.srv_key, "source.example"));
	assert_false(pump_handshake(&c, &s));
	assert_no_session(&c, &s);
	assert_int_equal(c.rc, MIG_E_AUTH);
	pair_free(&c, &s);
}

/* The destination requires a client certificate from its CA: one from
 * another CA (with the right name) is refused there, and nothing the
 * source sends gets through. */
static void test_x509_client_unknown_ca(void **state)
{
	side c, s;
	(void)state;
	pair_init(&c, x509(K.ca.pem, K.alien_cert, K.alien_key,
			   "dest.example"),
		  &s, x509(K.ca.pem, K.srv_cert, K.srv_key, "source.example"));
	assert_false(pump_handshake(&c, &s));
	assert_true(s.rc < 0);
	assert_refused(&s);
	assert_takes_nothing(&c, &s);
	assert_told(&c);
	pair_free(&c, &s);
}

static void assert_x509_fails(const char *ca, const char *cert,
			      const char *key, int want, const char *what)
{
	mig_tls *t = NULL;
	mig_error err = { 0 };
	int rc = mig_tls_x509(&t, ca, cert, key, NULL, &err);
	if (rc >= 0 || (want && rc != want)) {
		if (rc == 0)
			mig_tls_free(t);
		fail_msg("%s: mig_tls_x509 gave %d \"%s\"", what, rc, err.msg);
	}
	if (!err.msg[0])
		fail_msg("%s: no message", what);
}

/* Bad X.509 credentials are refused when made, with a message: a key
 * that is not the certificate's, garbage or truncated PEM, a missing
 * part. */
static void test_x509_bad_creds(void **state)
{
	static const char junk_crt[] = "-----BEGIN CERTIFICATE-----\n"
		"bm90IGEgY2VydGlmaWNhdGUgYXQgYWxs\n"
		"-----END CERTIFICATE-----\n";
	static const char junk_key[] = "-----BEGIN PRIVATE KEY-----\n"
		"bm90IGEga2V5\n"
		"-----END PRIVATE KEY-----\n";
	char *cut;
	(void)state;

	assert_x509_fails(K.ca.pem, K.srv_cert, K.cli_key, 0, "wrong key");
	assert_x509_fails(K.ca.pem, K.srv_cert, K.ca.pem, 0, "cert as key");
	assert_x509_fails("garbage", K.srv_cert, K.srv_key, -EINVAL,
			  "garbage CA");
	assert_x509_fails(junk_crt, K.srv_cert, K.srv_key, -EINVAL,
			  "junk CA");
	assert_x509_fails(K.ca.pem, "garbage", K.srv_key, -EINVAL,
			  "garbage cert");
	assert_x509_fails(K.ca.pem, junk_crt, K.srv_key, -EINVAL,
			  "junk cert");
	assert_x509_fails(K.ca.pem, K.srv_cert, "garbage", -EINVAL,
			  "garbage key");
	assert_x509_fails(K.ca.pem, K.srv_cert, junk_key, -EINVAL,
			  "junk key");
	assert_x509_fails(NULL, K.srv_cert, K.srv_key, -EINVAL, "NULL CA");
	assert_x509_fails(K.ca.pem, NULL, K.srv_key, -EINVAL, "NULL cert");
	assert_x509_fails(K.ca.pem, K.srv_cert, NULL, -EINVAL, "NULL key");

	cut = strdup(K.srv_cert);
	assert_non_null(cut);
	cut[strlen(cut) / 2] = '\0';
	assert_x509_fails(K.ca.pem, cut, K.srv_key, -EINVAL, "half a cert");
	free(cut);
}

/* A PSK source against an X.509 destination, and the reverse: no
 * session either way, no crash. */
static void test_kind_mismatch(void **state)
{
	side c, s;
	(void)state;

	pair_init(&c, psk("source-1", key_a, 32), &s,
		  x509(K.ca.pem, K.srv_cert, K.srv_key, "source.example"));
	assert_false(pump_handshake(&c, &s));
	assert_no_session(&c, &s);
	pair_free(&c, &s);

	pair_init(&c, x509(K.ca.pem, K.cli_cert, K.cli_key, "dest.example"),
		  &s, psk("source-1", key_a, 32));
	assert_false(pump_handshake(&c, &s));
	assert_no_session(&c, &s);
	pair_free(&c, &s);
}

/*
 * Credentials outlive the caller's handle: one PSK handle serves both
 * ends and is dropped before the handshake, X.509 ones likewise (pair_init
 * drops them too); mig__tls_ref adds a reference that keeps a handle
 * alive past mig_tls_free. Under ASan or valgrind this also shows that
 * mig__tls_conn_free releases the last reference.
 */
static void test_refcount(void **state)
{
	mig_tls *t = psk("source-1", key_a, 32), *r;
	side c, s;
	(void)state;

	memset(&c, 0, sizeof(c));
	memset(&s, 0, sizeof(s));
	assert_int_equal(mig__tls_conn_init(&c.conn, t, 0, &c.err), 0);
	assert_int_equal(mig__tls_conn_init(&s.conn, t, 1, &s.err), 0);
	mig_tls_free(t);
	pump_ok(&c, &s);
	exchange_small(&c, &s);
	pair_free(&c, &s);

	pair_init(&c, x509(K.ca.pem, K.cli_cert, K.cli_key, "dest.example"),
		  &s, x509(K.ca.pem, K.srv_cert, K.srv_key, "source.example"));
	pump_ok(&c, &s);
	exchange_small(&c, &s);
	pair_free(&c, &s);

	t = psk("source-1", key_a, 32);
	r = mig__tls_ref(t);
	assert_ptr_equal(r, t);
	mig_tls_free(t);
	assert_string_equal(mig__tls_kind(r), "psk");
	pair_init(&c, mig__tls_ref(r), &s, mig__tls_ref(r));
	mig__tls_unref(r);
	pump_ok(&c, &s);
	pair_free(&c, &s);

	assert_null(mig__tls_ref(NULL));
	mig__tls_unref(NULL);
	mig_tls_free(NULL);
}

static int certs_make(void **state)
{
	time_t now = time(NULL);
	(void)state;
	tc_ca_make(&K.ca, "Migration Test CA");
	tc_ca_make(&K.other, "Another CA");
	tc_leaf_make(&K.ca, "dest.example", TC_SERVER, now - 3600, now + 3600,
		     &K.srv_cert, &K.srv_key);
	tc_leaf_make(&K.ca, "source.example", TC_CLIENT, now - 3600,
		     now + 3600, &K.cli_cert, &K.cli_key);
	tc_leaf_make(&K.ca, "dest.example", TC_SERVER, now - 7200, now - 3600,
		     &K.old_cert, &K.old_key);
	tc_leaf_make(&K.other, "source.example", TC_CLIENT, now - 3600,
		     now + 3600, &K.alien_cert, &K.alien_key);
	tc_leaf_make(&K.ca, "dest.example", TC_CLIENT, now - 3600, now + 3600,
		     &K.wp_srv_cert, &K.wp_srv_key);
	tc_leaf_make(&K.ca, "source.example", TC_SERVER, now - 3600,
		     now + 3600, &K.wp_cli_cert, &K.wp_cli_key);
	return 0;
}

static int certs_free(void **state)
{
	(void)state;
	tc_ca_free(&K.ca);
	tc_ca_free(&K.other);
	free(K.srv_cert);
	free(K.srv_key);
	free(K.cli_cert);
	free(K.cli_key);
	free(K.old_cert);
	free(K.old_key);
	free(K.alien_cert);
	free(K.alien_key);
	free(K.wp_srv_cert);
	free(K.wp_srv_key);
	free(K.wp_cli_cert);
	free(K.wp_cli_key);
	return 0;
}

/*
 * The token as the hello carries it under TLS: both ends of one session
 * compute the same proof; another session over the same credentials, or
 * another token, gives another one (a proof taken from one session is
 * worth nothing in the next); none is possible before the handshake.
 */
static void test_token_proof(void **state)
{
	static const uint8_t tok[] = "one-time-token";
	uint8_t pc[MIG_TLS_PROOF_LEN], ps[MIG_TLS_PROOF_LEN];
	uint8_t p2[MIG_TLS_PROOF_LEN], pt[MIG_TLS_PROOF_LEN];
	mig_error err = { 0 };
	side c, s;
	(void)state;

	pair_init(&c, psk("source-1", key_a, sizeof(key_a)), &s,
		  psk("source-1", key_a, sizeof(key_a)));
	assert_int_equal(mig__tls_token_proof(&c.conn, tok, sizeof(tok) - 1, pc,
					      &err), MIG_E_TLS);
	pump_ok(&c, &s);
	assert_int_equal(mig__tls_token_proof(&c.conn, tok, sizeof(tok) - 1, pc,
					      &err), 0);
	assert_int_equal(mig__tls_token_proof(&s.conn, tok, sizeof(tok) - 1, ps,
					      &err), 0);
	assert_memory_equal(pc, ps, sizeof(pc));
	assert_int_equal(mig__tls_token_proof(&s.conn, tok, sizeof(tok) - 2, pt,
					      &err), 0);
	assert_memory_not_equal(pc, pt, sizeof(pc));
	pair_free(&c, &s);

	pair_init(&c, psk("source-1", key_a, sizeof(key_a)), &s,
		  psk("source-1", key_a, sizeof(key_a)));
	pump_ok(&c, &s);
	assert_int_equal(mig__tls_token_proof(&c.conn, tok, sizeof(tok) - 1, p2,
					      &err), 0);
	assert_memory_not_equal(pc, p2, sizeof(pc));
	assert_null(memmem(pc, sizeof(pc), tok, 4));
	pair_free(&c, &s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_psk_roundtrip),
		cmocka_unit_test(test_psk_mismatch),
		cmocka_unit_test(test_psk_downgrade),
		cmocka_unit_test(test_psk_limits),
		cmocka_unit_test(test_data_after_finished),
		cmocka_unit_test(test_dribble_handshake),
		cmocka_unit_test(test_tamper),
		cmocka_unit_test(test_replay),
		cmocka_unit_test(test_dribble),
		cmocka_unit_test(test_recv_records),
		cmocka_unit_test(test_key_update),
		cmocka_unit_test(test_peer_closed),
		cmocka_unit_test(test_x509_mutual),
		cmocka_unit_test(test_x509_any_name),
		cmocka_unit_test(test_x509_wrong_name),
		cmocka_unit_test(test_x509_wrong_client_name),
		cmocka_unit_test(test_x509_expired),
		cmocka_unit_test(test_x509_unknown_ca),
		cmocka_unit_test(test_x509_wrong_purpose),
		cmocka_unit_test(test_x509_client_unknown_ca),
		cmocka_unit_test(test_x509_bad_creds),
		cmocka_unit_test(test_kind_mismatch),
		cmocka_unit_test(test_refcount),
		cmocka_unit_test(test_token_proof),
	};
	int rc;
	if (gnutls_global_init() < 0)
		return 1;
	rc = cmocka_run_group_tests(tests, certs_make, certs_free);
	gnutls_global_deinit();
	return rc;
}
