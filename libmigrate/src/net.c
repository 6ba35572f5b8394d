/* URI parsing, name resolution, frame reassembly, memory hash. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xxh_x86dispatch.h> /* XXH3 with the widest vectors this CPU has */
#endif

#include "codec.h"
#include "dirty.h"
#include "net.h"

static int reader_reserve(mig_reader *r, size_t n);

int mig__parse_uri(const char *uri, char *host, size_t hostlen, int *port,
		   mig_error *err)
{
	const char *h, *colon, *end;
	char *pend;
	long p;
	size_t n;

	if (!uri || strncmp(uri, "tcp:", 4) != 0)
		return mig__err(err, -EINVAL,
				"address '%s': expected tcp:HOST:PORT",
				uri ? uri : "(null)");
	h = uri + 4;
	if (*h == '[') {
		end = strchr(h, ']');
		if (!end || end[1] != ':')
			return mig__err(err, -EINVAL,
					"address '%s': bad [IPv6]:PORT", uri);
		h++;
		n = (size_t)(end - h);
		colon = end + 1;
	} else {
		colon = strrchr(h, ':');
		if (!colon)
			return mig__err(err, -EINVAL,
					"address '%s': no port (tcp:HOST:PORT)", uri);
		n = (size_t)(colon - h);
	}
	if (n == 0 || n >= hostlen)
		return mig__err(err, -EINVAL, "address '%s': bad host", uri);
	memcpy(host, h, n);
	host[n] = '\0';
	errno = 0;
	p = strtol(colon + 1, &pend, 10);
	if (errno || *pend || pend == colon + 1 || p < 0 || p > 65535)
		return mig__err(err, -EINVAL, "address '%s': bad port", uri);
	*port = (int)p;
	return 0;
}

static int lookup(const char *host, int port, struct addrinfo **res,
		  mig_error *err)
{
	struct addrinfo hints;
	char ports[16];
	int r;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	snprintf(ports, sizeof(ports), "%d", port);
	*res = NULL;
	r = getaddrinfo(host, ports, &hints, res);
	if (r != 0 || !*res)
		return mig__err(err, -EHOSTUNREACH, "cannot resolve '%s': %s",
				host, gai_strerror(r));
	return 0;
}

int mig__resolve(const char *host, int port, struct sockaddr_storage *ss,
		 mig_error *err)
{
	struct addrinfo *res;
	int r = lookup(host, port, &res, err);

	if (r < 0)
		return r;
	memcpy(ss, res->ai_addr, res->ai_addrlen);
	freeaddrinfo(res);
	return 0;
}

/* Connect to one address within timeout_ms: 0, or a negative errno. */
static int try_connect(const struct addrinfo *a, int timeout_ms)
{
	int fd = socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK,
			0), r = 0, so = 0;
	socklen_t sl = sizeof(so);
	struct pollfd p;

	if (fd < 0)
		return -errno;
	if (connect(fd, a->ai_addr, a->ai_addrlen) < 0) {
		if (errno != EINPROGRESS) {
			r = -errno;
		} else {
			p.fd = fd;
			p.events = POLLOUT;
			do {
				r = poll(&p, 1, timeout_ms);
			} while (r < 0 && errno == EINTR);
			if (r < 0)
				r = -errno;
			else if (r == 0)
				r = -ETIMEDOUT;
			else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &sl) < 0)
				r = -errno;
			else
				r = -so;
		}
	}
	close(fd);
	return r;
}

int mig__resolve_reachable(const char *host, int port,
			   struct sockaddr_storage *ss, int timeout_ms,
			   mig_error *err)
{
	struct addrinfo *res, *a;
	int r = lookup(host, port, &res, err), n = 0, last = 0;

	if (r < 0)
		return r;
	/* One address: the connection itself tells whether it is there. */
	if (!res->ai_next) {
		memcpy(ss, res->ai_addr, res->ai_addrlen);
		freeaddrinfo(res);
		return 0;
	}
	/* Several (a name with IPv6 and IPv4 addresses, say, where the
	 * destination listens on one family): the first that takes a
	 * connection, in getaddrinfo's order of preference. The probe is
	 * closed at once; to the destination it is a stranger, which never
	 * fails a migration. */
	for (a = res; a; a = a->ai_next) {
		n++;
		last = try_connect(a, timeout_ms);
		if (last == 0) {
			memcpy(ss, a->ai_addr, a->ai_addrlen);
			freeaddrinfo(res);
			return 0;
		}
	}
	freeaddrinfo(res);
	return mig__err(err, last, "cannot reach %s:%d at any of its %d "
			"addresses: the last said %s", host, port, n,
			mig_strerror(last));
}

int mig__reader_space(mig_reader *r, size_t want, uint8_t **p, size_t *n)
{
	int e = reader_reserve(r, want);
	if (e < 0)
		return e;
	*p = r->buf + r->len;
	*n = r->cap - r->len;
	return 0;
}

void mig__reader_commit(mig_reader *r, size_t n)
{
	r->len += n;
}

int mig__reader_append(mig_reader *r, const void *p, size_t n)
{
	int e = reader_reserve(r, n);
	if (e < 0)
		return e;
	memcpy(r->buf + r->len, p, n);
	r->len += n;
	return 0;
}

/* Room for n more bytes at the tail: compact first, grow only as far as a
 * frame under the limit (plus one read) can need. */
static int reader_reserve(mig_reader *r, size_t n)
{
	if (r->off && r->off == r->len)
		r->off = r->len = 0;
	if (r->len + n > r->cap) {
		/* Compact first; grow only by what a frame may need. */
		if (r->off) {
			memmove(r->buf, r->buf + r->off, r->len - r->off);
			r->len -= r->off;
			r->off = 0;
		}
		if (r->len + n > r->cap) {
			size_t cap = r->cap ? r->cap : 65536;
			while (cap < r->len + n)
				cap *= 2;
			if (cap > (size_t)r->limit + MIG_FRAME_HDR + 65536 &&
			    r->len + n > (size_t)r->limit + MIG_FRAME_HDR + 65536)
				return -EMSGSIZE;
			uint8_t *b = realloc(r->buf, cap);
			if (!b)
				return -ENOMEM;
			r->buf = b;
			r->cap = cap;
		}
	}
	return 0;
}

long mig__reader_next(mig_reader *r, mig_frame *f)
{
	long n;
	const uint8_t *p = r->buf + r->off;
	size_t avail = r->len - r->off;

	if (avail >= 4) {
		uint32_t blen = (uint32_t)p[0] | (uint32_t)p[1] << 8 |
				(uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
		if (blen > r->limit)
			return -EMSGSIZE;
	}
	n = mig__frame_parse(p, avail, f);
	if (n > 0)
		r->off += (size_t)n;
	return n;
}

void mig__reader_free(mig_reader *r)
{
	free(r->buf);
	memset(r, 0, sizeof(*r));
}

void mig__uv_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	(void)h;
	(void)suggested;
	buf->base = malloc(65536);
	buf->len = buf->base ? 65536 : 0;
}

int mig__hash_regions(const mig_region *regions, uint32_t nr, uint8_t out[16],
		      mig_error *err)
{
	/*
	 * FEATURE_XXH3 (proto/migrate.proto): each non-zero page's XXH3-128
	 * seeded with its page number (guest-physical address / 4096), and the
	 * XXH3-128 of those digests in the order of the regions. Only resident pages are read (mincore),
	 * so untouched memory is neither read nor allocated, and a page that
	 * is absent on one side and zero on the other hashes the same. A
	 * consistency check between two copies, not cryptography: the link's
	 * integrity is TLS's. (Hashing each page at once, not streaming page
	 * after page, keeps XXH3 on its fast path.)
	 */
	XXH3_state_t *st = XXH3_createState();
	XXH128_canonical_t c;

	if (!st)
		return mig__err(err, -ENOMEM, "memory hash: out of memory");
	(void)XXH3_128bits_reset(st);
	for (uint32_t i = 0; i < nr; i++) {
		uint64_t npages = regions[i].size / MIG_PAGE_SIZE;
		uint64_t *bm = calloc((npages + 63) / 64, 8);
		long r;

		if (!bm) {
			XXH3_freeState(st);
			return mig__err(err, -ENOMEM, "memory hash: out of memory");
		}
		r = mig__mem_resident(&regions[i], 0, npages, false, bm, err);
		if (r < 0) {
			free(bm);
			XXH3_freeState(st);
			return (int)r;
		}
		for (uint64_t p = 0; p < npages; p++) {
			if (!(bm[p / 64] & (1ull << (p % 64))))
				continue;
			const uint8_t *page = (const uint8_t *)regions[i].hva +
					      p * MIG_PAGE_SIZE;
			if (mig__page_is_zero(page))
				continue;
			uint64_t id = (regions[i].gpa >> MIG_PAGE_SHIFT) + p;
			XXH128_canonicalFromHash(&c, XXH3_128bits_withSeed(page,
						 MIG_PAGE_SIZE, id));
			(void)XXH3_128bits_update(st, &c, sizeof(c));
		}
		free(bm);
	}
	XXH128_canonicalFromHash(&c, XXH3_128bits_digest(st));
	XXH3_freeState(st);
	memcpy(out, c.digest, 16);
	return 0;
}

int mig__secret_eq(const void *a, size_t alen, const void *b, size_t blen)
{
	const uint8_t *x = a, *y = b;
	uint8_t d = alen != blen;
	size_t n = alen < blen ? alen : blen;

	for (size_t i = 0; i < n; i++)
		d |= x[i] ^ y[i];
	return d == 0;
}
