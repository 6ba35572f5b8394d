/*
 * TLS 1.3 for a migration's connections, through GnuTLS, without I/O of
 * its own: bytes from the socket are fed in, bytes for the socket come
 * out in a mig_buf, so that a connection object keeps owning its socket
 * (and libuv's loop its descriptor) and this file is testable with two
 * sessions talking through memory (tests/unit/test_tls.c).
 *
 * Threads: as GnuTLS allows, one thread may seal on a session while
 * another opens (the source's engine and its connection's thread); no two
 * seal, nor two open, at once.
 *
 * Credentials (struct mig_tls, the public mig_tls of migrate.h) are
 * reference counted: a session and every connection hold one, so the
 * embedder may free its handle as soon as it has handed it over.
 */
#ifndef MIG_TLS_H
#define MIG_TLS_H

#include "internal.h"

/* PSK key sizes accepted (bytes): below the minimum a key is guessable,
 * above the maximum it is refused rather than silently cut. */
#define MIG_TLS_PSK_MIN 16u
#define MIG_TLS_PSK_MAX 256u
#define MIG_TLS_NAME_MAX 255u
/* The most plaintext one record holds. */
#define MIG_TLS_RECORD_MAX 16384u

typedef struct mig_tls_conn {
	void *session;          /* gnutls_session_t */
	const mig_tls *creds;   /* referenced */
	int server;
	int done;               /* handshake finished */
	int failed;             /* a fatal error was seen: nothing more */
	int peer_closed;        /* close_notify received */
	void *verify;           /* X.509: what the peer's certificate must
				   be (gnutls_typed_vdata_st[2]); GnuTLS
				   reads it during the handshake */
	/* ciphertext fed and not yet consumed by GnuTLS */
	mig_buf in;
	size_t in_off;
} mig_tls_conn;

/* Where GnuTLS writes in this thread until the next call here (the calls
 * below set it themselves; for tests that call GnuTLS directly). Returns
 * the previous one. */
mig_buf *mig__tls_sink(mig_buf *out);

/* Take / drop a reference on credentials (NULL is accepted by both). */
mig_tls *mig__tls_ref(mig_tls *t);
void mig__tls_unref(mig_tls *t);
/* "psk" or "x509", for logs. */
const char *mig__tls_kind(const mig_tls *t);

/*
 * Start a TLS session on a new connection: the client (the source) or the
 * server (the destination). Returns 0 or a negative errno with err filled.
 */
int mig__tls_conn_init(mig_tls_conn *c, const mig_tls *creds, int server,
		       mig_error *err);
void mig__tls_conn_free(mig_tls_conn *c);

/* Ciphertext read from the socket, kept until GnuTLS asks for it. */
int mig__tls_feed(mig_tls_conn *c, const void *p, size_t n);

/*
 * Drive the handshake with what has been fed so far; records to send are
 * appended to `out`. Returns 1 once it is done, 0 when it waits for the
 * peer, or MIG_E_TLS / MIG_E_AUTH (credentials refused either way) / a
 * negative errno, with err saying why ("certificate of hostb expired").
 */
int mig__tls_handshake(mig_tls_conn *c, mig_buf *out, mig_error *err);

/* Encrypt n bytes of p after the handshake, appending records to out. */
int mig__tls_seal(mig_tls_conn *c, const void *p, size_t n, mig_buf *out,
		  mig_error *err);

/*
 * Decrypt the next whole record fed so far into dst[0..cap) (cap >=
 * MIG_TLS_RECORD_MAX: a record fits): > 0 the bytes written, 0 when no
 * whole record is left. `out` takes whatever GnuTLS writes meanwhile (it
 * may be nothing, as GnuTLS sends a key update's answer with the next
 * seal). MIG_E_TLS when a record fails its integrity check or the peer
 * sent a fatal alert (MIG_E_AUTH when the alert refuses our credentials:
 * under TLS 1.3 the client learns so only here): the connection cannot
 * continue.
 */
long mig__tls_recv(mig_tls_conn *c, void *dst, size_t cap, mig_buf *out,
		   mig_error *err);

/*
 * The token as the hello carries it under TLS: HMAC-SHA256 keyed with the
 * token over 32 bytes exported from this session (RFC 5705/8446 exporter,
 * label "EXPORTER-libmigrate-token"). Only the two ends of this session
 * can make it, so the token never crosses the network, even sealed, and a
 * proof taken from one session (by a relay that terminates TLS with a
 * certificate it should not have) is worthless in any other.
 */
#define MIG_TLS_PROOF_LEN 32u
int mig__tls_token_proof(mig_tls_conn *c, const uint8_t *token, size_t len,
			 uint8_t proof[MIG_TLS_PROOF_LEN], mig_error *err);

/* Whether bytes read in the clear begin like a TLS record (a peer that
 * speaks TLS to one that does not): for an error that says so. */
int mig__tls_looks_like(const uint8_t *p, size_t n);

/* The peer closed its side with a close_notify alert (seen by open). */
int mig__tls_peer_closed(const mig_tls_conn *c);

#endif /* MIG_TLS_H */
