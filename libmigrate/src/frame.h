/*
 * Framing of the migration stream (proto/README.md is the specification).
 *
 *   frame  = header body
 *   header = u32 body_len (little endian) | u8 type | u8 flags | u16 zero
 *   body   = body_len bytes, body_len <= MIG_FRAME_MAX
 *
 *   type MSG:   body is one mig.wire.Envelope
 *   type PAGES: body is u32 hdr_len (LE) | mig.wire.PageBatch (hdr_len
 *               bytes) | payload (the rest)
 *
 * Pure functions over buffers: no sockets, testable and fuzzable.
 */
#ifndef MIG_FRAME_H
#define MIG_FRAME_H

#include "internal.h"
#include "migrate.pb-c.h"

#define MIG_FRAME_HDR 8u
#define MIG_FRAME_MAX (16u << 20)
/* Pages in one PAGES frame: bounds what a decoder allocates for one. */
#define MIG_BATCH_MAX_PAGES 1024u
#define MIG_PAGEHDR_MAX (64u << 10)

enum mig_frame_type {
	MIG_FRAME_MSG = 1,
	MIG_FRAME_PAGES = 2,
};

typedef struct mig_frame {
	uint8_t type;
	uint8_t flags;
	uint32_t len;
	const uint8_t *body; /* points into the parsed buffer */
} mig_frame;

void mig__frame_header(uint8_t hdr[MIG_FRAME_HDR], uint8_t type, uint32_t len);

/*
 * Look for one whole frame at the start of buf[0..len). Returns the bytes it
 * takes (header + body) and fills *f; 0 if more bytes are needed; or
 * -EMSGSIZE (body over MIG_FRAME_MAX) / -EBADMSG (unknown type, reserved bits
 * set). A negative result is final: the stream cannot be resynchronized.
 */
long mig__frame_parse(const uint8_t *buf, size_t len, mig_frame *f);

/* Append a MSG frame holding `env` to `out`. */
int mig__msg_pack(const Mig__Wire__Envelope *env, mig_buf *out);
/*
 * Decode a MSG frame body. Returns the envelope (free with
 * mig__msg_free()) or NULL with *errp = -EBADMSG when it does not decode or
 * has no message set.
 */
Mig__Wire__Envelope *mig__msg_unpack(const uint8_t *body, size_t len, int *errp);
void mig__msg_free(Mig__Wire__Envelope *env);

/* Append a PAGES frame: the header message and `payload_len` bytes. */
int mig__pages_pack(const Mig__Wire__PageBatch *hdr, const void *payload,
		    size_t payload_len, mig_buf *out);
/*
 * Split a PAGES body into its header (free with mig__pages_free()) and
 * payload, checking the header's counts against hard limits and each other:
 * pages == encodings, <= MIG_BATCH_MAX_PAGES, known encodings and codec,
 * payload_raw_len == pages needing data * page size.
 */
int mig__pages_unpack(const uint8_t *body, size_t len,
		      Mig__Wire__PageBatch **hdr, const uint8_t **payload,
		      size_t *payload_len);
void mig__pages_free(Mig__Wire__PageBatch *hdr);

#endif /* MIG_FRAME_H */
