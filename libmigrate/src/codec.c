/* The page codec; see codec.h. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <zstd.h>

#include "codec.h"

/*
 * The decoder never accepts a larger zstd window than this, whatever a peer
 * claims, so a connection's decoder holds at most 8 MiB of window plus its
 * block buffers. The encoder's levels are capped so that their default
 * window fits (zstd levels 1..19 use at most 2^23 with an unknown source
 * size; 20..22 need up to 2^27).
 */
#define DEC_WINDOW_LOG_MAX 23
/* While AUTO is not compressing, it still compresses one batch in this many,
 * so that a change of content or link is noticed. */
#define AUTO_PROBE_EVERY 64
/* Exponential moving averages give the newest sample this weight. */
#define EWMA_W 0.2
/* Room past ZSTD_compressBound() for the frame header (first batch) and the
 * flush's last block header: a batch never needs more than this. */
#define ZSTD_SLACK 64

struct mig_enc {
	ZSTD_CCtx *cctx;
	mig_compress mode;
	int level;
	int broken;              /* zstd failed mid-stream: the peer can't follow */
	double link_rate;        /* wire bytes/s, 0 = unknown */
	double zstd_speed;       /* raw bytes per second spent compressing */
	double zstd_ratio;       /* raw / compressed */
	uint64_t batches;
	/* The batch header's arrays, kept here so a batch allocates nothing. */
	uint64_t idx[MIG_BATCH_MAX_PAGES];
	uint32_t enc[MIG_BATCH_MAX_PAGES];
};

struct mig_dec {
	ZSTD_DCtx *dctx;
	int broken;
	uint8_t *dst[MIG_BATCH_MAX_PAGES]; /* this batch's pages, from the sink */
};

/* 16 bytes (SSE2 on x86-64, NEON on arm64) that may alias anything and sit
 * anywhere: guest pages are aligned, but nothing depends on it. */
typedef uint64_t mig_v2 __attribute__((vector_size(16), may_alias, aligned(1)));

int mig__page_is_zero(const uint8_t *page)
{
	const mig_v2 *v = (const mig_v2 *)page;
	uint64_t first;

	/* Most non-zero pages differ from zero in their first bytes: one load
	 * settles them. Then OR four cache lines together per branch: 1.6x the
	 * speed of 8-byte words on pages in cache; out of cache, memory
	 * bandwidth decides either way. */
	memcpy(&first, page, sizeof(first));
	if (first)
		return 0;
	for (size_t i = 0; i < MIG_PAGE_SIZE / 16; i += 16) {
		mig_v2 a = v[i] | v[i + 1] | v[i + 2] | v[i + 3];
		mig_v2 b = v[i + 4] | v[i + 5] | v[i + 6] | v[i + 7];
		mig_v2 c = v[i + 8] | v[i + 9] | v[i + 10] | v[i + 11];
		mig_v2 d = v[i + 12] | v[i + 13] | v[i + 14] | v[i + 15];
		a |= b | c | d;
		if (a[0] | a[1])
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
	if (level < MIG_ZSTD_LEVEL_MIN || level > MIG_ZSTD_LEVEL_MAX)
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
 * AUTO: compress when compressing and then sending the smaller payload
 * takes less time than sending it raw: B/speed + B/(ratio*L) < B/L. The
 * model counts the two in sequence although the socket drains while the
 * next batch is compressed: that errs towards sending raw, which also
 * spares the CPU the guest is competing for, and the destination's
 * decompression, which the model does not count. Unknown link or no
 * estimate yet: compress (that is how estimates are made), and so does one
 * batch in AUTO_PROBE_EVERY, so that estimates follow the content.
 */
static int auto_wants_zstd(const mig_enc *e)
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

/*
 * Compress the non-zero pages into dst[0..cap) as one flushed piece of the
 * connection's stream; *len gets its size. cap >= ZSTD_compressBound() of
 * the input, so zstd always has room; the checks below only keep a broken
 * library from looping forever.
 *
 * The result is sent even when it is not smaller than the raw pages. A
 * flushed block cannot be taken back: the encoder's window now holds these
 * pages, and its next blocks may refer to them, so a decoder that had been
 * sent the raw bytes instead could not follow. The alternative, ending the
 * zstd frame and starting a new one on both sides after every such batch,
 * needs a rule on the wire and throws away the window for nothing: zstd
 * already stores a block it cannot shrink as a raw block, so an
 * incompressible batch costs 3 bytes per 128 KiB more than raw (plus the
 * frame header once per connection). AUTO learns the ratio of ~1 from such a
 * batch and stops compressing until a probe finds that it pays again.
 */
static int compress_pages(mig_enc *e, const uint8_t *const *data, size_t n,
			  size_t with_data, uint8_t *dst, size_t cap, size_t *len)
{
	ZSTD_outBuffer ob = { dst, cap, 0 };
	size_t left = with_data;

	for (size_t i = 0; i < n; i++) {
		if (e->enc[i] == MIG__WIRE__PAGE_ENCODING__PAGE_ZERO)
			continue;
		ZSTD_inBuffer ib = { data[i], MIG_PAGE_SIZE, 0 };
		ZSTD_EndDirective how = --left ? ZSTD_e_continue : ZSTD_e_flush;
		for (;;) {
			size_t rem = ZSTD_compressStream2(e->cctx, &ob, &ib, how);
			if (ZSTD_isError(rem))
				return -EIO;
			if (ib.pos == ib.size && (how == ZSTD_e_continue || !rem))
				break;
			if (ob.pos == ob.size)
				return -EIO;
		}
	}
	*len = ob.pos;
	return 0;
}

int mig__enc_batch(mig_enc *e, uint32_t region, const uint64_t *idx,
		   const uint8_t *const *data, size_t n, mig_buf *out,
		   mig_enc_stats *st)
{
	Mig__Wire__PageBatch h = MIG__WIRE__PAGE_BATCH__INIT;
	size_t with_data = 0, hlen, payload_max, start, payload = 0;
	int zstd = 0, r;
	uint8_t *p, *pl;

	if (!n || n > MIG_BATCH_MAX_PAGES || !idx || !data)
		return -EINVAL;
	if (e->broken)
		return -EIO;
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
	payload_max = zstd ? ZSTD_compressBound(h.payload_raw_len) + ZSTD_SLACK
			   : h.payload_raw_len;
	/* 1024 pages: header <= 1024 * (10 + 1) + 20 bytes, payload <= 4 MiB
	 * + zstd's bound: far below both limits, checked all the same. */
	if (hlen > MIG_PAGEHDR_MAX || 4 + hlen + payload_max > MIG_FRAME_MAX)
		return -EMSGSIZE;
	/*
	 * The frame is built in place rather than through mig__pages_pack():
	 * the same bytes (the unit test holds the two to it), without copying
	 * a payload of up to 4 MiB once more.
	 */
	r = mig__buf_reserve(out, MIG_FRAME_HDR + 4 + hlen + payload_max);
	if (r < 0)
		return r;
	start = out->len;
	p = out->data + start;
	put_le32(p + MIG_FRAME_HDR, (uint32_t)hlen);
	mig__wire__page_batch__pack(&h, p + MIG_FRAME_HDR + 4);
	pl = p + MIG_FRAME_HDR + 4 + hlen;

	if (zstd) {
		/* Wall-clock time: cheap to read (vDSO) and what the transfer
		 * time is made of; the EWMA smooths out preemptions. */
		uint64_t t0 = mig__now_ns();
		r = compress_pages(e, data, n, with_data, pl, payload_max, &payload);
		if (r < 0) {
			e->broken = 1;
			return r;
		}
		uint64_t dt = mig__now_ns() - t0;
		if (dt)
			e->zstd_speed = ewma(e->zstd_speed,
					     (double)h.payload_raw_len * 1e9 / (double)dt);
		if (payload)
			e->zstd_ratio = ewma(e->zstd_ratio,
					     (double)h.payload_raw_len / (double)payload);
	} else {
		for (size_t i = 0; i < n; i++) {
			if (e->enc[i] == MIG__WIRE__PAGE_ENCODING__PAGE_ZERO)
				continue;
			memcpy(pl + payload, data[i], MIG_PAGE_SIZE);
			payload += MIG_PAGE_SIZE;
		}
	}
	size_t blen = 4 + hlen + payload;
	mig__frame_header(p, MIG_FRAME_PAGES, (uint32_t)blen);
	out->len = start + MIG_FRAME_HDR + blen;
	if (st) {
		if (zstd)
			st->compressed_batches++;
		else
			st->raw_batches++;
		st->pages += n;
		st->zero_pages += n - with_data;
		st->raw_bytes += n * MIG_PAGE_SIZE;
		st->wire_bytes += MIG_FRAME_HDR + blen;
	}
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

/*
 * Decompress exactly raw_len bytes from the payload into the batch's data
 * pages. Output is bounded by each page's ZSTD_outBuffer, so nothing is ever
 * written past a page whatever the payload says.
 *
 * What "exactly" can mean: the payload must yield every byte of every page,
 * and once they are out it must be used up and yield nothing more (zstd
 * emits a block's bytes only once the whole block is in, so one more output
 * byte means one more block). Bytes that do not complete a block at the end
 * are taken in by zstd without output; they would only spoil the next
 * batch of this connection, which then fails in turn. Telling them apart
 * would need zstd's undocumented next-input-size hint, which a zstd update
 * could change under a running fleet; no write goes astray either way.
 */
static int decompress_pages(mig_dec *d, const Mig__Wire__PageBatch *h,
			    const uint8_t *pl, size_t pl_len, mig_error *err)
{
	ZSTD_inBuffer ib = { pl, pl_len, 0 };
	size_t rr;

	for (size_t i = 0; i < h->n_pages; i++) {
		if (h->encoding[i] == MIG__WIRE__PAGE_ENCODING__PAGE_ZERO)
			continue;
		ZSTD_outBuffer ob = { d->dst[i], MIG_PAGE_SIZE, 0 };
		while (ob.pos < ob.size) {
			size_t in0 = ib.pos, out0 = ob.pos;
			rr = ZSTD_decompressStream(d->dctx, &ob, &ib);
			if (ZSTD_isError(rr))
				return mig__err(err, -EBADMSG,
						"zstd payload of page %llu: %s",
						(unsigned long long)h->pages[i],
						ZSTD_getErrorName(rr));
			/* zstd flushes all it can per call: no input left and
			 * room left means no more output will come. */
			if (ob.pos < ob.size &&
			    (ib.pos == ib.size || (ib.pos == in0 && ob.pos == out0)))
				return mig__err(err, -EBADMSG,
						"zstd payload (%zu bytes) ends before its %u bytes",
						pl_len, h->payload_raw_len);
		}
	}
	uint8_t extra;
	ZSTD_outBuffer ob = { &extra, 1, 0 };
	rr = ZSTD_decompressStream(d->dctx, &ob, &ib);
	if (ZSTD_isError(rr) || ob.pos || ib.pos != ib.size)
		return mig__err(err, -EBADMSG,
				"zstd payload (%zu bytes) is longer than its %u bytes",
				pl_len, h->payload_raw_len);
	return 0;
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
		return mig__err(err, -EBADMSG,
				"page stream already broken by an earlier batch");
	/* Checks every count against the hard limits (frame.h): at most
	 * MIG_BATCH_MAX_PAGES pages, payload_raw_len = pages with data * page
	 * size, a raw payload exactly that long. */
	r = mig__pages_unpack(body, len, &h, &pl, &pl_len);
	if (r < 0) {
		d->broken = 1;
		return mig__err(err, r, "malformed page batch (%zu bytes)", len);
	}
	/* Check every destination before writing any page. */
	for (size_t i = 0; i < h->n_pages; i++) {
		if (h->encoding[i] == MIG__WIRE__PAGE_ENCODING__PAGE_DELTA) {
			ret = mig__err(err, -EBADMSG,
				       "page %llu of region %u is a delta, which was not negotiated",
				       (unsigned long long)h->pages[i], h->region);
			goto fail;
		}
		d->dst[i] = sink(opaque, h->region, h->pages[i]);
		if (!d->dst[i]) {
			ret = mig__err(err, -ERANGE,
				       "page %llu of region %u is outside guest memory",
				       (unsigned long long)h->pages[i], h->region);
			goto fail;
		}
	}
	for (size_t i = 0; i < h->n_pages; i++) {
		if (h->encoding[i] == MIG__WIRE__PAGE_ENCODING__PAGE_ZERO)
			memset(d->dst[i], 0, MIG_PAGE_SIZE);
	}
	if (h->payload_codec == MIG__WIRE__PAYLOAD_CODEC__PAYLOAD_ZSTD) {
		r = decompress_pages(d, h, pl, pl_len, err);
		if (r < 0) {
			ret = r;
			goto fail;
		}
	} else {
		for (size_t i = 0; i < h->n_pages; i++) {
			if (h->encoding[i] == MIG__WIRE__PAGE_ENCODING__PAGE_ZERO)
				continue;
			/* mig__pages_unpack checked pl_len == payload_raw_len. */
			memcpy(d->dst[i], pl + off, MIG_PAGE_SIZE);
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
