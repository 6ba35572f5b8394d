/*
 * libFuzzer target: the framing and the message decoders over arbitrary
 * bytes (mig__frame_parse, mig__msg_unpack, mig__pages_unpack).
 *
 * The input is read as a receiver reads a connection: frame after frame
 * until one is incomplete or refused. Every body is also handed to both
 * unpackers whatever its type, and so is the whole input, so that the
 * fuzzer reaches them without first learning the framing. Properties:
 * nothing reads outside what it was given (each body is copied to a
 * buffer of its exact size for ASan); a refusal is the documented errno;
 * what is accepted obeys the limits of frame.h and packs back into
 * something that reads the same.
 */
#include <errno.h>
#include <string.h>

#include "fuzz_common.h"

static void check_msg(const uint8_t *body, size_t len)
{
	int err = 1;
	Mig__Wire__Envelope *env = mig__msg_unpack(body, len, &err);
	if (!env) {
		FUZZ_CHECK(err == -EBADMSG);
		return;
	}
	FUZZ_CHECK(err == 0);
	FUZZ_CHECK(env->msg_case != MIG__WIRE__ENVELOPE__MSG__NOT_SET);

	/*
	 * Accepted: packs again. Reading that back may fail, but only because
	 * of protobuf-c (1.4.1), not of us: it takes an unknown field numbered
	 * 0 when the tag is an overlong varint (80 80 00), keeps it, writes it
	 * back as 00 and refuses that. Harmless (unknown fields are ignored and
	 * nothing forwards a received message), so only a message that does
	 * read back must be the same.
	 */
	mig_buf b = { 0 };
	mig_frame f;
	FUZZ_CHECK(mig__msg_pack(env, &b) == 0);
	FUZZ_CHECK(mig__frame_parse(b.data, b.len, &f) == (long)b.len);
	FUZZ_CHECK(f.type == MIG_FRAME_MSG);
	Mig__Wire__Envelope *again = mig__msg_unpack(f.body, f.len, &err);
	if (again) {
		FUZZ_CHECK(again->msg_case == env->msg_case);
		FUZZ_CHECK(mig__wire__envelope__get_packed_size(again) == f.len);
	} else {
		FUZZ_CHECK(err == -EBADMSG);
	}
	mig__msg_free(again);
	mig__msg_free(env);
	mig__buf_free(&b);
}

static void check_pages(const uint8_t *body, size_t len)
{
	Mig__Wire__PageBatch *h = (Mig__Wire__PageBatch *)1;
	const uint8_t *pl = NULL;
	size_t pl_len = 0;
	uint64_t with_data = 0;

	int r = mig__pages_unpack(body, len, &h, &pl, &pl_len);
	if (r < 0) {
		FUZZ_CHECK(r == -EBADMSG);
		FUZZ_CHECK(h == NULL);
		return;
	}
	FUZZ_CHECK(r == 0 && h);
	FUZZ_CHECK(h->n_pages >= 1 && h->n_pages <= MIG_BATCH_MAX_PAGES);
	FUZZ_CHECK(h->n_encoding == h->n_pages);
	FUZZ_CHECK(pl >= body + 4 && pl <= body + len && pl_len == (size_t)(body + len - pl));
	for (size_t i = 0; i < h->n_encoding; i++) {
		FUZZ_CHECK(h->encoding[i] <= MIG__WIRE__PAGE_ENCODING__PAGE_DELTA);
		with_data += h->encoding[i] != MIG__WIRE__PAGE_ENCODING__PAGE_ZERO;
	}
	FUZZ_CHECK(h->payload_raw_len == with_data * MIG_PAGE_SIZE);
	if (h->payload_codec == MIG__WIRE__PAYLOAD_CODEC__PAYLOAD_RAW)
		FUZZ_CHECK(pl_len == h->payload_raw_len);
	else
		FUZZ_CHECK(h->payload_codec == MIG__WIRE__PAYLOAD_CODEC__PAYLOAD_ZSTD);

	/* Accepted: packs again, and reads back the same (unless it carried
	 * unknown fields: see check_msg()). */
	mig_buf b = { 0 };
	mig_frame f;
	Mig__Wire__PageBatch *h2;
	const uint8_t *pl2;
	size_t pl2_len;
	FUZZ_CHECK(mig__pages_pack(h, pl, pl_len, &b) == 0);
	FUZZ_CHECK(mig__frame_parse(b.data, b.len, &f) == (long)b.len);
	FUZZ_CHECK(f.type == MIG_FRAME_PAGES);
	r = mig__pages_unpack(f.body, f.len, &h2, &pl2, &pl2_len);
	if (r < 0) { /* see check_msg() */
		FUZZ_CHECK(h->base.n_unknown_fields > 0);
		mig__pages_free(h);
		mig__buf_free(&b);
		return;
	}
	FUZZ_CHECK(h2->region == h->region && h2->n_pages == h->n_pages);
	FUZZ_CHECK(h2->payload_codec == h->payload_codec);
	FUZZ_CHECK(h2->payload_raw_len == h->payload_raw_len);
	FUZZ_CHECK(!memcmp(h2->pages, h->pages, h->n_pages * sizeof(*h->pages)));
	FUZZ_CHECK(!memcmp(h2->encoding, h->encoding, h->n_pages * sizeof(*h->encoding)));
	FUZZ_CHECK(pl2_len == pl_len && !memcmp(pl2, pl, pl_len));
	mig__pages_free(h2);
	mig__pages_free(h);
	mig__buf_free(&b);
}

/* Both unpackers on a copy of exactly len bytes. */
static void check_body(const uint8_t *body, size_t len)
{
	uint8_t *copy = malloc(len ? len : 1);
	FUZZ_CHECK(copy);
	if (len)
		memcpy(copy, body, len);
	check_msg(copy, len);
	check_pages(copy, len);
	free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t off = 0;

	while (off < size) {
		mig_frame f, g;
		long n = mig__frame_parse(data + off, size - off, &f);
		if (n < 0) {
			FUZZ_CHECK(n == -EMSGSIZE || n == -EBADMSG);
			break;
		}
		if (n == 0) /* the rest is a partial frame */
			break;
		FUZZ_CHECK((size_t)n <= size - off && (size_t)n == MIG_FRAME_HDR + f.len);
		FUZZ_CHECK(f.len <= MIG_FRAME_MAX);
		FUZZ_CHECK(f.body == data + off + MIG_FRAME_HDR);
		FUZZ_CHECK(f.type == MIG_FRAME_MSG || f.type == MIG_FRAME_PAGES);
		/* Any prefix of a whole frame asks for more. */
		FUZZ_CHECK(mig__frame_parse(data + off, (size_t)n - 1, &g) == 0);
		check_body(f.body, f.len);
		off += (size_t)n;
	}
	check_body(data, size);
	return 0;
}
