/*
 * Blocking framed I/O with deadlines, for the migration threads (and the
 * loop's short calls to a migvm): u32 little-endian length, then the body.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "migd.h"

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * A peer daemon that vanishes without a reset (link down, host gone) must
 * not hold a reservation or a migration thread forever: keepalive probes
 * after 10 s of silence, 3 unanswered 5 s apart end the connection, and so
 * does data left unacknowledged for 25 s.
 */
void peer_keepalive(int fd)
{
	int on = 1, idle = 10, intvl = 5, cnt = 3;
	unsigned int user_timeout_ms = 25000;

	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
	setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms,
		   sizeof(user_timeout_ms));
}

int send_frame(int fd, const void *buf, size_t len)
{
	uint8_t hdr[4] = { (uint8_t)len, (uint8_t)(len >> 8),
			   (uint8_t)(len >> 16), (uint8_t)(len >> 24) };
	const uint8_t *parts[2] = { hdr, buf };
	size_t lens[2] = { 4, len };

	for (int i = 0; i < 2; i++) {
		size_t off = 0;
		while (off < lens[i]) {
			ssize_t w = send(fd, parts[i] + off, lens[i] - off,
					 MSG_NOSIGNAL);
			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0 && errno == EAGAIN) {
				struct pollfd p = { fd, POLLOUT, 0 };
				if (poll(&p, 1, 5000) <= 0)
					return -ETIMEDOUT;
				continue;
			}
			if (w < 0)
				return -errno;
			off += (size_t)w;
		}
	}
	return 0;
}

static int recv_full(int fd, uint8_t *p, size_t len, int64_t deadline)
{
	while (len) {
		struct pollfd pf = { fd, POLLIN, 0 };
		int64_t left = deadline - now_ms();
		ssize_t n;
		int r;

		if (left <= 0)
			return -ETIMEDOUT;
		r = poll(&pf, 1, (int)left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -ETIMEDOUT;
		n = recv(fd, p, len, 0);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -ECONNRESET;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int recv_frame(int fd, uint8_t **buf, size_t *len, size_t max, int timeout_ms)
{
	int64_t deadline = now_ms() + timeout_ms;
	uint8_t hdr[4];
	uint32_t n;
	int r = recv_full(fd, hdr, 4, deadline);

	if (r < 0)
		return r;
	n = (uint32_t)hdr[0] | (uint32_t)hdr[1] << 8 | (uint32_t)hdr[2] << 16 |
	    (uint32_t)hdr[3] << 24;
	if (n > max)
		return -EMSGSIZE;
	*buf = malloc(n ? n : 1);
	if (!*buf)
		return -ENOMEM;
	r = recv_full(fd, *buf, n, deadline);
	if (r < 0) {
		free(*buf);
		*buf = NULL;
		return r;
	}
	*len = n;
	return 0;
}

int vmctl_call(const char *sock, Mig__Ctl__Request *req,
	       Mig__Ctl__Response **resp, int timeout_ms)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	size_t n = mig__ctl__request__get_packed_size(req), rlen;
	uint8_t *buf;
	int fd, r;

	*resp = NULL;
	if (strlen(sock) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, sock, strlen(sock) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	buf = malloc(n ? n : 1);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	mig__ctl__request__pack(req, buf);
	r = send_frame(fd, buf, n);
	free(buf);
	if (r == 0)
		r = recv_frame(fd, &buf, &rlen, MIGD_FRAME_MAX, timeout_ms);
	close(fd);
	if (r < 0)
		return r;
	*resp = mig__ctl__response__unpack(NULL, rlen, buf);
	free(buf);
	return *resp ? 0 : -EBADMSG;
}

int vmctl_status(const char *sock, Mig__Ctl__Response **resp)
{
	Mig__Ctl__Request req = MIG__CTL__REQUEST__INIT;
	Mig__Ctl__Empty empty = MIG__CTL__EMPTY__INIT;

	req.req_case = MIG__CTL__REQUEST__REQ_STATUS;
	req.status = &empty;
	return vmctl_call(sock, &req, resp, 2000);
}
