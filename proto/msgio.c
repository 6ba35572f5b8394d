/* Framed protobuf messages over blocking sockets; see msgio.h. */
#define _GNU_SOURCE
#include "msgio.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait for EVENTS on FD until DEADLINE: 0, -ETIMEDOUT or -errno. */
static int wait_fd(int fd, short events, int64_t deadline)
{
	for (;;) {
		struct pollfd p = { .fd = fd, .events = events };
		int64_t left = deadline - now_ms();
		int r;

		if (left <= 0)
			return -ETIMEDOUT;
		r = poll(&p, 1, left > 60000 ? 60000 : (int)left);
		if (r > 0)
			return 0;
		if (r < 0 && errno != EINTR)
			return -errno;
	}
}

static int io_full(int fd, uint8_t *p, size_t len, int wr, int64_t deadline)
{
	while (len) {
		ssize_t n;
		int r = wait_fd(fd, wr ? POLLOUT : POLLIN, deadline);

		if (r < 0)
			return r;
		n = wr ? send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT)
		       : recv(fd, p, len, MSG_DONTWAIT);
		/* A pipe (an inherited event descriptor): plain write/read
		 * after the poll said it would not block (SIGPIPE is the
		 * caller's to ignore). */
		if (n < 0 && errno == ENOTSOCK)
			n = wr ? write(fd, p, len) : read(fd, p, len);
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

/* FRAME holds 4 free bytes, then LEN bytes of body: the length goes in
 * front and the whole goes in one write where the socket takes it, so a
 * peer that answers and hangs up after the first bytes sees one message. */
static int write_frame(int fd, uint8_t *frame, size_t len, int timeout_ms)
{
	if (len > UINT32_MAX)
		return -EMSGSIZE;
	frame[0] = (uint8_t)len;
	frame[1] = (uint8_t)(len >> 8);
	frame[2] = (uint8_t)(len >> 16);
	frame[3] = (uint8_t)(len >> 24);
	return io_full(fd, frame, 4 + len, 1, now_ms() + timeout_ms);
}

long msgio_frame_next(const uint8_t *buf, size_t len, size_t max,
		      const uint8_t **body, size_t *body_len)
{
	uint32_t n;

	if (len < 4)
		return 0;
	n = (uint32_t)buf[0] | (uint32_t)buf[1] << 8 | (uint32_t)buf[2] << 16 |
	    (uint32_t)buf[3] << 24;
	if (n > max)
		return -EMSGSIZE;
	if (len - 4 < n)
		return 0;
	*body = buf + 4;
	*body_len = n;
	return 4 + (long)n;
}

int msgio_write(int fd, const void *buf, size_t len, int timeout_ms)
{
	uint8_t *frame = malloc(4 + len);
	int r;

	if (!frame)
		return -ENOMEM;
	memcpy(frame + 4, buf, len);
	r = write_frame(fd, frame, len, timeout_ms);
	free(frame);
	return r;
}

int msgio_read(int fd, size_t max, int timeout_ms, uint8_t **buf,
	       size_t *len)
{
	int64_t deadline = now_ms() + timeout_ms;
	uint8_t hdr[4];
	uint32_t n;
	int r = io_full(fd, hdr, 4, 0, deadline);

	*buf = NULL;
	if (r < 0)
		return r;
	n = (uint32_t)hdr[0] | (uint32_t)hdr[1] << 8 | (uint32_t)hdr[2] << 16 |
	    (uint32_t)hdr[3] << 24;
	if (n > max)
		return -EMSGSIZE;
	*buf = malloc(n ? n : 1);
	if (!*buf)
		return -ENOMEM;
	r = io_full(fd, *buf, n, 0, deadline);
	if (r < 0) {
		free(*buf);
		*buf = NULL;
		return r;
	}
	*len = n;
	return 0;
}

int msgio_send(int fd, const ProtobufCMessage *m, int timeout_ms)
{
	size_t n = protobuf_c_message_get_packed_size(m);
	uint8_t *frame = malloc(4 + n);
	int r;

	if (!frame)
		return -ENOMEM;
	protobuf_c_message_pack(m, frame + 4);
	r = write_frame(fd, frame, n, timeout_ms);
	free(frame);
	return r;
}

int msgio_recv(int fd, const ProtobufCMessageDescriptor *d, size_t max,
	       int timeout_ms, ProtobufCMessage **out)
{
	uint8_t *buf;
	size_t len = 0;
	int r = msgio_read(fd, max, timeout_ms, &buf, &len);

	*out = NULL;
	if (r < 0)
		return r;
	*out = protobuf_c_message_unpack(d, NULL, len, buf);
	free(buf);
	return *out ? 0 : -EBADMSG;
}

int msgio_connect_unix(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	size_t n = strlen(path);
	int fd, r;

	if (n >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, path, n + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	return fd;
}

int msgio_call_unix(const char *path, const ProtobufCMessage *req,
		    const ProtobufCMessageDescriptor *rd, size_t max,
		    int timeout_ms, ProtobufCMessage **resp)
{
	int64_t deadline = now_ms() + timeout_ms;
	int fd = msgio_connect_unix(path), r;

	*resp = NULL;
	if (fd < 0)
		return fd;
	r = msgio_send(fd, req, timeout_ms);
	if (r == 0) {
		int64_t left = deadline - now_ms();
		r = left > 0 ? msgio_recv(fd, rd, max, (int)left, resp)
			     : -ETIMEDOUT;
	}
	close(fd);
	return r;
}

void json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; s && *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20 || c == 0x7f)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

void text_printable(char *s)
{
	for (; s && *s; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
			*s = '?';
}
