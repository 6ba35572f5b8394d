/*
 * Framed protobuf messages over a blocking socket, for the project's
 * programs (migctl, migd, migvm): a u32 little-endian length, then the
 * packed message (proto/README.md). Every call has a deadline and returns 0
 * or a negative errno: -ETIMEDOUT, -ECONNRESET (the peer closed), -EMSGSIZE
 * (a frame over the caller's limit: nothing of it is read), -EBADMSG (a body
 * that does not decode), -ENOMEM, or the socket's own error.
 * Not part of libmigrate: the library speaks its own protocol (frame.c).
 */
#ifndef MIG_MSGIO_H
#define MIG_MSGIO_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <protobuf-c/protobuf-c.h>

/* One frame: LEN bytes of BUF after their length, within TIMEOUT_MS. */
int msgio_write(int fd, const void *buf, size_t len, int timeout_ms);
/* One frame of at most MAX bytes into *BUF (malloc'd, the caller frees) and
 * *LEN, within TIMEOUT_MS for the whole of it. */
int msgio_read(int fd, size_t max, int timeout_ms, uint8_t **buf,
	       size_t *len);
/* M packed and written as one frame. */
int msgio_send(int fd, const ProtobufCMessage *m, int timeout_ms);
/* One frame decoded as a D message (*OUT: free it with
 * protobuf_c_message_free_unpacked). */
int msgio_recv(int fd, const ProtobufCMessageDescriptor *d, size_t max,
	       int timeout_ms, ProtobufCMessage **out);
/* For a reader that gathers bytes as they come (an event loop's): the
 * first whole frame among the LEN bytes of BUF, its body in *BODY and
 * *BODY_LEN, and the bytes it takes (length and body) returned; 0 when
 * more must come first; -EMSGSIZE when its length says more than MAX
 * (known from the length alone). */
long msgio_frame_next(const uint8_t *buf, size_t len, size_t max,
		      const uint8_t **body, size_t *body_len);
/* A connected unix stream socket (close-on-exec), or a negative errno
 * (-ENAMETOOLONG for a path that does not fit sun_path). */
int msgio_connect_unix(const char *path);
/* REQ to the server at PATH, its one answer decoded as RD within
 * TIMEOUT_MS; connection closed after. */
int msgio_call_unix(const char *path, const ProtobufCMessage *req,
		    const ProtobufCMessageDescriptor *rd, size_t max,
		    int timeout_ms, ProtobufCMessage **resp);

/* S as a JSON string, quoted, to F: '"', '\' and every control character
 * escaped (so guest or peer text cannot break the document or a terminal).
 * The one JSON string writer of migctl and migvm. */
void json_string(FILE *f, const char *s);

/* S made printable in place: every byte outside printable ASCII becomes
 * '?'. For a guest's or a peer's words before they reach a log, a stderr
 * line another program reads, or a terminal. */
void text_printable(char *s);

#endif
