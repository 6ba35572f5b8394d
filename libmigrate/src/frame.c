/* Framing of the migration stream; see frame.h. */
#include <errno.h>
#include <string.h>

#include "frame.h"

static void put_le32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static uint32_t get_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

void mig__frame_header(uint8_t hdr[MIG_FRAME_HDR], uint8_t type, uint32_t len)
{
	put_le32(hdr, len);
	hdr[4] = type;
	hdr[5] = 0;
	hdr[6] = 0;
	hdr[7] = 0;
}

long mig__frame_parse(const uint8_t *buf, size_t len, mig_frame *f)
{
	uint32_t blen;

	if (len < MIG_FRAME_HDR)
		return 0;
	blen = get_le32(buf);
	/* Judge the header before waiting for a body we would never accept. */
	if (blen > MIG_FRAME_MAX)
		return -EMSGSIZE;
	if ((buf[4] != MIG_FRAME_MSG && buf[4] != MIG_FRAME_PAGES) ||
	    buf[5] || buf[6] || buf[7])
		return -EBADMSG;
	if (len - MIG_FRAME_HDR < blen)
		return 0;
	f->type = buf[4];
	f->flags = buf[5];
	f->len = blen;
	f->body = buf + MIG_FRAME_HDR;
	return (long)(MIG_FRAME_HDR + blen);
}

int mig__msg_pack(const Mig__Wire__Envelope *env, mig_buf *out)
{
	size_t n = mig__wire__envelope__get_packed_size(env);
	int r;

	if (n > MIG_FRAME_MAX)
		return -EMSGSIZE;
	r = mig__buf_reserve(out, MIG_FRAME_HDR + n);
	if (r < 0)
		return r;
	mig__frame_header(out->data + out->len, MIG_FRAME_MSG, (uint32_t)n);
	mig__wire__envelope__pack(env, out->data + out->len + MIG_FRAME_HDR);
	out->len += MIG_FRAME_HDR + n;
	return 0;
}

Mig__Wire__Envelope *mig__msg_unpack(const uint8_t *body, size_t len, int *errp)
{
	Mig__Wire__Envelope *env;

	*errp = 0;
	env = mig__wire__envelope__unpack(NULL, len, body);
	if (!env) {
		*errp = -EBADMSG;
		return NULL;
	}
	if (env->msg_case == MIG__WIRE__ENVELOPE__MSG__NOT_SET) {
		mig__wire__envelope__free_unpacked(env, NULL);
		*errp = -EBADMSG;
		return NULL;
	}
	return env;
}

void mig__msg_free(Mig__Wire__Envelope *env)
{
	if (env)
		mig__wire__envelope__free_unpacked(env, NULL);
}

int mig__pages_pack(const Mig__Wire__PageBatch *hdr, const void *payload,
		    size_t payload_len, mig_buf *out)
{
	size_t hlen = mig__wire__page_batch__get_packed_size(hdr);
	size_t blen = 4 + hlen + payload_len;
	uint8_t *p;
	int r;

	if (hlen > MIG_PAGEHDR_MAX || blen > MIG_FRAME_MAX)
		return -EMSGSIZE;
	r = mig__buf_reserve(out, MIG_FRAME_HDR + blen);
	if (r < 0)
		return r;
	p = out->data + out->len;
	mig__frame_header(p, MIG_FRAME_PAGES, (uint32_t)blen);
	put_le32(p + MIG_FRAME_HDR, (uint32_t)hlen);
	mig__wire__page_batch__pack(hdr, p + MIG_FRAME_HDR + 4);
	if (payload_len)
		memcpy(p + MIG_FRAME_HDR + 4 + hlen, payload, payload_len);
	out->len += MIG_FRAME_HDR + blen;
	return 0;
}

int mig__pages_unpack(const uint8_t *body, size_t len,
		      Mig__Wire__PageBatch **hdrp, const uint8_t **payload,
		      size_t *payload_len)
{
	Mig__Wire__PageBatch *h;
	uint32_t hlen;
	uint64_t with_data = 0;

	*hdrp = NULL;
	if (len < 4)
		return -EBADMSG;
	hlen = get_le32(body);
	if (hlen > MIG_PAGEHDR_MAX || hlen > len - 4)
		return -EBADMSG;
	h = mig__wire__page_batch__unpack(NULL, hlen, body + 4);
	if (!h)
		return -EBADMSG;
	if (h->n_pages == 0 || h->n_pages > MIG_BATCH_MAX_PAGES ||
	    h->n_encoding != h->n_pages)
		goto bad;
	for (size_t i = 0; i < h->n_encoding; i++) {
		switch (h->encoding[i]) {
		case MIG__WIRE__PAGE_ENCODING__PAGE_ZERO:
			break;
		case MIG__WIRE__PAGE_ENCODING__PAGE_RAW:
		case MIG__WIRE__PAGE_ENCODING__PAGE_DELTA:
			with_data++;
			break;
		default:
			goto bad;
		}
	}
	if (h->payload_raw_len != with_data * MIG_PAGE_SIZE)
		goto bad;
	if (h->payload_codec != MIG__WIRE__PAYLOAD_CODEC__PAYLOAD_RAW &&
	    h->payload_codec != MIG__WIRE__PAYLOAD_CODEC__PAYLOAD_ZSTD)
		goto bad;
	*payload = body + 4 + hlen;
	*payload_len = len - 4 - hlen;
	if (h->payload_codec == MIG__WIRE__PAYLOAD_CODEC__PAYLOAD_RAW &&
	    *payload_len != h->payload_raw_len)
		goto bad;
	*hdrp = h;
	return 0;
bad:
	mig__wire__page_batch__free_unpacked(h, NULL);
	return -EBADMSG;
}

void mig__pages_free(Mig__Wire__PageBatch *hdr)
{
	if (hdr)
		mig__wire__page_batch__free_unpacked(hdr, NULL);
}
