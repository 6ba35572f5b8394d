/* The page codec; see codec.h. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <zstd.h>

#include "codec.h"

/* Pages a batch may carry data for, and so the most a payload decodes to. */
#define MAX_RAW (MIG_BATCH_MAX_PAGES * MIG_PAGE_SIZE)
/* The decoder never accepts a larger zstd window than this (bounds its
 * memory whatever a peer claims). Level 19 streams need 8 MiB. */
#define DEC_WINDOW_LOG_MAX 24
/* While AUTO is not compressing, still compress one batch in this many, so
 * a change of content or link is noticed. */
#define AUTO_PROBE_EVERY 64
/* Exponential moving averages give the newest batch this weight. */
#define EWMA_W 0.2

struct mig_enc {
	ZSTD_CCtx *cctx;
	mig_compress mode;
	int level;
	double link_rate;        /* bytes/s, 0 = unknown */
	double zstd_speed;       /* raw bytes per second of compression */
	double zstd_ratio;       /* raw / compressed */
	uint64_t batches;
	uint64_t idx[MIG_BATCH_MAX_PAGES];
	uint32_t enc[MIG_BATCH_MAX_PAGES];
};

struct mig_dec {
	ZSTD_DCtx *dctx;
	int broken;
};

int mig__page_is_zero(const uint8_t *page)
{
	const uint64_t *w = (const uint64_t *)page;

	/* OR 64 bytes at a time: one branch per cache line, early exit on the
	 * first non-zero line (most non-zero pages differ in their first). */
	for (size_t i = 0; i < MIG_PAGE_SIZE / 8; i += 8) {
		if (w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] |
		    w[i + 6] | w[i + 7])
			return 0;
	}
	return 1;
}

int mig__enc_create(mig_enc **out, mig_compress mode, int level)
{
	mig_enc *e;

	*out = NULL;
	if (mode != MIG_COMPRESS_OFF && mode != MIG_COMPRESS_ON &&
	    mode != MIG_COMPRESS_AUTO)
		return -EINVAL;
	if (level < 1 || level > ZSTD_maxCLevel())
		return -EINVAL;
	e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	e->mode = mode;
	e->level = level;
	if (mode != MIG_COMPRESS_OFF) {
		e->cctx = ZSTD_createCCtx();
		if (!e->cctx ||
		    ZSTD_isError(ZSTD_CCtx_setParameter(e->cctx,
							ZSTD_c_compressionLevel,
							level))) {
			mig__enc_destroy(e);
			return -ENOMEM;
		}
	}
	*out = e;
	return 0;
}

void mig__enc_destroy(mig_enc *e)
{
	if (!e)
		return;
	ZSTD_freeCCtx(e->cctx);
	free(e);
}

void mig__enc_set_link_rate(mig_enc *e, double bytes_per_s)
{
	e->link_rate = bytes_per_s > 0 ? bytes_per_s : 0;
}

/*
 * AUTO: compress when compressing and sending the smaller payload takes
 * less time than sending it raw: B/speed + B/(ratio*L) < B/L. Unknown link
 * or no estimate yet: compress (that is how estimates are made).
 */
static int auto_wants_zstd(mig_enc *e)
{
	if (e->link_rate <= 0 || e->zstd_speed <= 0 || e->zstd_ratio <= 0)
		return 1;
	if (e->batches % AUTO_PROBE_EVERY == 0)
		return 1;
	double with = 1.0 / e->zstd_speed + 1.0 / (e->zstd_ratio * e->link_rate);
	return with < 1.0 / e->link_rate;
}

static void put_le32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static double ewma(double old, double v)
{
	return old > 0 ? old * (1 - EWMA_W) + v * EWMA_W : v;
}

int mig__enc_batch(mig_enc *e, uint32_t region, const uint64_t *idx,
		   const uint8_t *const *data, size_t n, mig_buf *out,
		   mig_enc_stats *st)
{
	Mig__Wire__PageBatch h = MIG__WIRE__PAGE_BATCH__INIT;
	size_t with_data = 0, hlen, payload_max, start, payload = 0;
	int zstd = 0, r;
	uint8_t *p;

	if (!n || n > MIG_BATCH_MAX_PAGES)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		e->idx[i] = idx[i];
		if (mig__page_is_zero(data[i])) {
			e->enc[i] = MIG__WIRE__PAGE_ENCODING__PAGE_ZERO;
		} else {
			e->enc[i] = MIG__WIRE__PAGE_ENCODING__PAGE_RAW;
			with_data++;
		}
	}
	if (with_data && e->mode == MIG_COMPRESS_ON)
		zstd = 1;
	else if (with_data && e->mode == MIG_COMPRESS_AUTO)
		zstd = auto_wants_zstd(e);
	e->batches++;

	h.region = region;
	h.n_pages = h.n_encoding = n;
	h.pages = e->idx;
	h.encoding = e->enc;
	h.payload_codec = zstd ? MIG__WIRE__PAYLOAD_CODEC__PAYLOAD_ZSTD
			       : MIG__WIRE__PAYLOAD_CODEC__PAYLOAD_RAW;
	h.payload_raw_len = (uint32_t)(with_data * MIG_PAGE_SIZE);
	hlen = mig__wire__page_batch__get_packed_size(&h);
	payload_max = zstd ? ZSTD_compressBound(h.payload_raw_len) + 64
			   : h.payload_raw_len;
	if (hlen > MIG_PAGEHDR_MAX || MIG_FRAME_HDR + 4 + hlen + payload_max >
					      MIG_FRAME_HDR + (size_t)MIG_FRAME_MAX)
		return -EMSGSIZE;
	r = mig__buf_reserve(out, MIG_FRAME_HDR + 4 + hlen + payload_max);
	if (r < 0)
		return r;
	start = out->len;
	p = out->data + start;
	put_le32(p + MIG_FRAME_HDR, (uint32_t)hlen);
	mig__wire__page_batch__pack(&h, p + MIG_FRAME_HDR + 4);
	uint8_t *pl = p + MIG_FRAME_HDR + 4 + hlen;

	if (zstd) {
		uint64_t t0 = mig__now_ns();
		ZSTD_outBuffer ob = { pl, payload_max, 0 };
		size_t left = with_data;
		for (size_t i = 0; i < n; i++) {
			if (e->enc[i] == MIG__WIRE__PAGE_ENCODING__PAGE_ZERO)
				continue;
			ZSTD_inBuffer ib = { data[i], MIG_PAGE_SIZE, 0 };
			ZSTD_EndDirective mode = --left ? ZSTD_e_continue : ZSTD_e_flush;
			size_t rem;
			do {
				rem = ZSTD_compressStream2(e->cctx, &ob, &ib, mode);
				if (ZSTD_isError(rem))
					return -EIO;
			} while (ib.pos < ib.size || (mode == ZSTD_e_flush && rem));
		}
		payload = ob.pos;
		uint64_t dt = mig__now_ns() - t0;
		if (dt)
			e->zstd_speed = ewma(e->zstd_speed,
					     (double)h.payload_raw_len * 1e9 / (double)dt);
		if (payload)
			e->zstd_ratio = ewma(e->zstd_ratio,
					     (double)h.payload_raw_len / (double)payload);
		st->compressed_batches++;
	} else {
		for (size_t i = 0; i < n; i++) {
			if (e->enc[i] == MIG__WIRE__PAGE_ENCODING__PAGE_ZERO)
				continue;
			memcpy(pl + payload, data[i], MIG_PAGE_SIZE);
			payload += MIG_PAGE_SIZE;
		}
		st->raw_batches++;
	}
	size_t blen = 4 + hlen + payload;
	mig__frame_header(p, MIG_FRAME_PAGES, (uint32_t)blen);
	out->len = start + MIG_FRAME_HDR + blen;
	st->pages += n;
	st->zero_pages += n - with_data;
	st->raw_bytes += n * MIG_PAGE_SIZE;
	st->wire_bytes += MIG_FRAME_HDR + blen;
	return 0;
}

int mig__dec_create(mig_dec **out)
{
	mig_dec *d = calloc(1, sizeof(*d));

	*out = NULL;
	if (!d)
		return -ENOMEM;
	d->dctx = ZSTD_createDCtx();
	if (!d->dctx ||
	    ZSTD_isError(ZSTD_DCtx_setParameter(d->dctx, ZSTD_d_windowLogMax,
						DEC_WINDOW_LOG_MAX))) {
		mig__dec_destroy(d);
		return -ENOMEM;
	}
	*out = d;
	return 0;
}

void mig__dec_destroy(mig_dec *d)
{
	if (!d)
		return;
	ZSTD_freeDCtx(d->dctx);
	free(d);
}

long mig__dec_batch(mig_dec *d, const uint8_t *body, size_t len,
		    mig_page_sink sink, void *opaque, mig_error *err)
{
	Mig__Wire__PageBatch *h = NULL;
	const uint8_t *pl;
	size_t pl_len, off = 0;
	long ret;
	int r;

	if (d->broken)
		return mig__err(err, -EBADMSG, "page stream already broken");
	r = mig__pages_unpack(body, len, &h, &pl, &pl_len);
	if (r < 0) {
		d->broken = 1;
		return mig__err(err, r, "malformed page batch");
	}
	/* Check every destination before writing any page. */
	for (size_t i = 0; i < h->n_pages; i++) {
		if (h->encoding[i] == MIG__WIRE__PAGE_ENCODING__PAGE_DELTA) {
			ret = mig__err(err, -EBADMSG,
				       "delta page without the delta feature");
			goto fail;
		}
		if (!sink(opaque, h->region, h->pages[i])) {
			ret = mig__err(err, -ERANGE,
				       "page %llu of region %u is outside guest memory",
				       (unsigned long long)h->pages[i], h->region);
			goto fail;
		}
	}
	if (h->payload_codec == MIG__WIRE__PAYLOAD_CODEC__PAYLOAD_ZSTD) {
		ZSTD_inBuffer ib = { pl, pl_len, 0 };
		for (size_t i = 0; i < h->n_pages; i++) {
			uint8_t *dst = sink(opaque, h->region, h->pages[i]);
			if (h->encoding[i] == MIG__WIRE__PAGE_ENCODING__PAGE_ZERO) {
				memset(dst, 0, MIG_PAGE_SIZE);
				continue;
			}
			ZSTD_outBuffer ob = { dst, MIG_PAGE_SIZE, 0 };
			while (ob.pos < ob.size) {
				size_t rr = ZSTD_decompressStream(d->dctx, &ob, &ib);
				if (ZSTD_isError(rr)) {
					ret = mig__err(err, -EBADMSG, "zstd: %s",
						       ZSTD_getErrorName(rr));
					goto fail;
				}
				if (ob.pos < ob.size && ib.pos == ib.size) {
					ret = mig__err(err, -EBADMSG,
						       "compressed payload ends before its %u bytes",
						       h->payload_raw_len);
					goto fail;
				}
			}
		}
		/* Nothing may be left: no more input, and no more output. */
		uint8_t extra;
		ZSTD_outBuffer ob = { &extra, 1, 0 };
		size_t rr = ZSTD_decompressStream(d->dctx, &ob, &ib);
		if (ZSTD_isError(rr) || ob.pos || ib.pos != ib.size) {
			ret = mig__err(err, -EBADMSG,
				       "compressed payload longer than its %u bytes",
				       h->payload_raw_len);
			goto fail;
		}
	} else {
		for (size_t i = 0; i < h->n_pages; i++) {
			uint8_t *dst = sink(opaque, h->region, h->pages[i]);
			if (h->encoding[i] == MIG__WIRE__PAGE_ENCODING__PAGE_ZERO) {
				memset(dst, 0, MIG_PAGE_SIZE);
				continue;
			}
			/* mig__pages_unpack checked pl_len == payload_raw_len. */
			memcpy(dst, pl + off, MIG_PAGE_SIZE);
			off += MIG_PAGE_SIZE;
		}
	}
	ret = (long)h->n_pages;
	mig__pages_free(h);
	return ret;
fail:
	d->broken = 1;
	mig__pages_free(h);
	return ret;
}
