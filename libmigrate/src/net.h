/* Transport helpers shared by the source and the destination. */
#ifndef MIG_NET_H
#define MIG_NET_H

#include <netinet/in.h>
#include <sys/socket.h>

#include <uv.h>

#include "frame.h"

/* "tcp:HOST:PORT" (HOST may be a name, an IPv4 or a [bracketed] IPv6). */
int mig__parse_uri(const char *uri, char *host, size_t hostlen, int *port,
		   mig_error *err);
/* Resolve host:port (blocking, getaddrinfo) into *ss: its first address. */
int mig__resolve(const char *host, int port, struct sockaddr_storage *ss,
		 mig_error *err);
/* The address of host:port to connect to: the only one, or, when a name
 * has several, the first that takes a TCP connection within timeout_ms
 * (tried one by one; the probe closed at once). -EHOSTUNREACH when the
 * name does not resolve; when none answers, the last one's errno, with
 * err naming the host and how many addresses were tried. */
int mig__resolve_reachable(const char *host, int port,
			   struct sockaddr_storage *ss, int timeout_ms,
			   mig_error *err);

/*
 * Accumulates bytes read from a stream and hands out whole frames. `limit`
 * caps the body size it accepts (MIG_FRAME_MAX once authenticated, smaller
 * before), so a peer cannot make it buffer more than that.
 */
typedef struct mig_reader {
	uint8_t *buf;
	size_t len;   /* bytes held */
	size_t off;   /* start of unconsumed bytes */
	size_t cap;
	uint32_t limit;
} mig_reader;

int mig__reader_append(mig_reader *r, const void *p, size_t n);
/*
 * Zero-copy reading: room for at least `want` more bytes at the tail
 * (*p, *n) for the socket to read into, then mig__reader_commit() with what
 * it read. -EMSGSIZE past the reader's limit, -ENOMEM.
 */
int mig__reader_space(mig_reader *r, size_t want, uint8_t **p, size_t *n);
void mig__reader_commit(mig_reader *r, size_t n);
/*
 * Next whole frame: > 0 with *f valid until the next call, 0 when more bytes
 * are needed, or a negative errno (oversized / malformed: final).
 */
long mig__reader_next(mig_reader *r, mig_frame *f);
void mig__reader_free(mig_reader *r);

/* libuv read buffer allocator for mig_reader users (64 KiB chunks). */
void mig__uv_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);

/* A 128-bit hash of the guest's non-zero pages, for params.verify. */
int mig__hash_regions(const mig_region *regions, uint32_t nr, uint8_t out[16],
		      mig_error *err);

/* Constant-time comparison of secrets. */
int mig__secret_eq(const void *a, size_t alen, const void *b, size_t blen);

#endif /* MIG_NET_H */
