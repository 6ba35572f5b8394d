/*
 * The page codec: a batch of guest pages <-> one PAGES frame.
 *
 * Zero pages travel as markers without payload; the other pages form the
 * payload, raw or compressed with the connection's zstd stream. The stream
 * is flushed (ZSTD_e_flush) at the end of every batch, so each frame can be
 * decoded as soon as it arrives while the compression window carries across
 * batches of one connection. Hence the one ordering rule: the frames of a
 * connection are decoded in the order they were encoded, by one decoder.
 *
 * Pure functions over buffers (no sockets, no KVM): unit-tested and fuzzed.
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

/* Level is zstd's (1..19). Returns 0, -EINVAL, or -ENOMEM. */
int mig__enc_create(mig_enc **out, mig_compress mode, int level);
void mig__enc_destroy(mig_enc *e);
/* The link's throughput in bytes/s (0 = unknown), for MIG_COMPRESS_AUTO. */
void mig__enc_set_link_rate(mig_enc *e, double bytes_per_s);
/*
 * Encode n pages (1..MIG_BATCH_MAX_PAGES; data[i] holds page idx[i] of
 * `region`) as one PAGES frame appended to `out`; adds to *st.
 * Returns 0 or a negative errno (-EINVAL, -ENOMEM, -EIO from zstd).
 */
int mig__enc_batch(mig_enc *e, uint32_t region, const uint64_t *idx,
		   const uint8_t *const *data, size_t n, mig_buf *out,
		   mig_enc_stats *st);

typedef struct mig_dec mig_dec;

int mig__dec_create(mig_dec **out);
void mig__dec_destroy(mig_dec *d);

/* Where page `idx` of `region` goes (MIG_PAGE_SIZE bytes), NULL if out of
 * range. */
typedef uint8_t *(*mig_page_sink)(void *opaque, uint32_t region, uint64_t idx);

/*
 * Decode one PAGES frame body. Every page is checked against the sink
 * before anything is written; the payload must decode to exactly
 * payload_raw_len bytes. Returns the pages written, or -EBADMSG (malformed
 * or lying batch), -ERANGE (a page the sink refuses), -ENOMEM, with err
 * saying which. After an error the decoder's stream is unusable.
 */
long mig__dec_batch(mig_dec *d, const uint8_t *body, size_t len,
		    mig_page_sink sink, void *opaque, mig_error *err);

/* True if the MIG_PAGE_SIZE bytes at `page` are all zero. */
int mig__page_is_zero(const uint8_t *page);

#endif /* MIG_CODEC_H */
