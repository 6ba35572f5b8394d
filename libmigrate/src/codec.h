/*
 * The page codec: a batch of guest pages <-> one PAGES frame.
 *
 * Zero pages travel as markers without payload; the other pages form the
 * payload, raw or compressed with the connection's zstd stream. The stream
 * is flushed (ZSTD_e_flush) at the end of every batch and never ended, so
 * each frame can be decoded as soon as it arrives while the compression
 * window carries across batches of one connection. Hence the ordering rule:
 * the frames of a connection are decoded in the order they were encoded, by
 * one decoder, and every frame an encoder produced is sent (a dropped or
 * reordered ZSTD frame breaks the rest of the stream; raw frames may sit in
 * between, they do not touch the stream).
 *
 * An encoder or a decoder is used by one thread at a time. Neither keeps a
 * pointer to the caller's memory after a call returns.
 *
 * Pure functions over buffers (no sockets, no KVM): unit-tested and fuzzed
 * (tests/unit/test_codec.c, tests/fuzz/fuzz_codec.c).
 */
#ifndef MIG_CODEC_H
#define MIG_CODEC_H

#include "frame.h"
#include "internal.h"

typedef struct mig_enc mig_enc;

typedef struct mig_enc_stats {
	uint64_t pages;              /* pages encoded, zero pages included */
	uint64_t zero_pages;
	uint64_t raw_bytes;          /* pages * page size */
	uint64_t wire_bytes;         /* frame bytes appended */
	uint64_t compressed_batches;
	uint64_t raw_batches;
} mig_enc_stats;

/* zstd levels an encoder accepts: those whose window the decoder accepts. */
#define MIG_ZSTD_LEVEL_MIN 1
#define MIG_ZSTD_LEVEL_MAX 19

/*
 * An encoder for one data connection. `level` is zstd's
 * (MIG_ZSTD_LEVEL_MIN..MAX), checked even when mode is OFF. Memory: 12 KiB,
 * plus zstd's context unless OFF (measured with zstd 1.5: 1.3 MiB at level
 * 1, 3.5 MiB at 3, 17 MiB at 9, 90 MiB at 19).
 * Returns 0, -EINVAL, or -ENOMEM.
 */
int mig__enc_create(mig_enc **out, mig_compress mode, int level);
void mig__enc_destroy(mig_enc *e);
/* The link's throughput in wire bytes/s as the sender measures it
 * (0 = unknown), for MIG_COMPRESS_AUTO; call it as often as it changes. */
void mig__enc_set_link_rate(mig_enc *e, double bytes_per_s);
/*
 * Encode n pages (1..MIG_BATCH_MAX_PAGES; data[i] holds the MIG_PAGE_SIZE
 * bytes of page idx[i] of `region`) as one PAGES frame appended to `out`
 * (which grows by at most MIG_CODEC_FRAME_MAX(n) bytes); adds to *st
 * unless it is NULL. The pages may change while they are read (a running
 * guest): each is read once for the zero check and once for the payload,
 * and zstd copies its input before it looks at it, so the frame is always
 * well formed; a page written meanwhile must be sent again anyway.
 * Returns 0 or a negative errno: -EINVAL, -ENOMEM (nothing appended, the
 * encoder still usable), -EIO (zstd failed: the encoder is unusable, as is
 * its connection's stream).
 */
int mig__enc_batch(mig_enc *e, uint32_t region, const uint64_t *idx,
		   const uint8_t *const *data, size_t n, mig_buf *out,
		   mig_enc_stats *st);

/* The most one mig__enc_batch() of n pages appends to its buffer: frame
 * header, batch header (<= 11 bytes a page), the pages, and room for zstd's
 * block headers on incompressible data. */
#define MIG_CODEC_FRAME_MAX(n) \
	(MIG_FRAME_HDR + 4u + 32u + (n) * (11u + MIG_PAGE_SIZE + 16u) + 4096u)

typedef struct mig_dec mig_dec;

/* A decoder for one data connection: 8 KiB, plus zstd's context, which
 * grows with the window the stream declares, up to about 8.5 MiB (2^23
 * window, level 19) whatever a peer claims (1 MiB at level 1).
 * Returns 0 or -ENOMEM. */
int mig__dec_create(mig_dec **out);
void mig__dec_destroy(mig_dec *d);

/* Where page `idx` of `region` goes (MIG_PAGE_SIZE bytes), NULL if out of
 * range. */
typedef uint8_t *(*mig_page_sink)(void *opaque, uint32_t region, uint64_t idx);

/*
 * Decode one PAGES frame body (as found by mig__frame_parse()). The header
 * is checked by mig__pages_unpack(); then every page is checked against the
 * sink (called once per page) before anything is written; PAGE_ZERO pages
 * are cleared, the others filled from the payload, which must decode to
 * exactly payload_raw_len bytes and is never written past. Returns the
 * pages written, or -EBADMSG (malformed or lying batch; PAGE_DELTA, which
 * this decoder does not take), -ERANGE (a page the sink refuses), with err
 * naming region and page or the length at fault. After an error some pages
 * may have been written and the decoder refuses every further batch.
 */
long mig__dec_batch(mig_dec *d, const uint8_t *body, size_t len,
		    mig_page_sink sink, void *opaque, mig_error *err);

/* True if the MIG_PAGE_SIZE bytes at `page` are all zero. Looks at the
 * first word, then 256 bytes per branch (16-byte vectors). */
int mig__page_is_zero(const uint8_t *page);

#endif /* MIG_CODEC_H */
