/*
 * Page deltas: a page that was sent before and dirtied again, as the runs
 * of bytes that changed since (in the manner of QEMU's XBZRLE, after Svärd
 * et al., VEE 2011). The page travels in the connection's zstd stream like
 * any payload, so the runs are compressed there: nothing here compresses.
 *
 * Why this encoding (`test_delta --bench`, numbers in experiments/
 * README.md): against the XOR of the pages through zstd and zstd with the
 * old page as its prefix, one page at a time, the runs came out smaller
 * for changes of a few places (3 header words: 26 B against 42 and 43; a
 * 64-byte field: 67 against 89 and 87), within 15% for changes scattered
 * over the page (every 8th word: 639 against 616 and 574), and 3 to 10
 * times faster to make (no zstd context a page). The prefix won on text
 * (76 B against 103) and scattered bytes, which the connection's stream
 * then compresses too (runs through zstd: 67 B).
 *
 * Format: pairs (skip, len) as LEB128 varints, each followed by len new
 * bytes: skip bytes stay as they were, the next len bytes are replaced.
 * len >= 1; skip + len summed over the pairs <= MIG_PAGE_SIZE; bytes after
 * the last run stay. An empty delta: the page did not change.
 *
 * Pure functions over buffers: unit-tested and fuzzed (tests/unit/
 * test_delta.c, tests/fuzz/fuzz_delta.c).
 */
#ifndef MIG_DELTA_H
#define MIG_DELTA_H

#include <stddef.h>
#include <stdint.h>

/*
 * The delta that turns `old` into `cur` (MIG_PAGE_SIZE bytes each) into
 * out[0..cap). `cur` may be a running guest's page: the delta is well
 * formed and the call ends however it changes meanwhile, but its bytes
 * are read more than once (to compare, to copy), so a caller that must
 * know what the delta holds (a cache of what the destination will have)
 * passes a copy. Returns the delta's length (0: the
 * pages are equal), or -ENOSPC when it would not fit in cap bytes: then
 * the page is better sent whole.
 */
long mig__delta_encode(const uint8_t *old, const uint8_t *cur, uint8_t *out,
		       size_t cap);

/*
 * Check the len bytes at d as a delta: 0, or -EBADMSG (a varint too long
 * or unfinished, a run of 0 bytes, runs past the page, bytes missing or
 * left over).
 */
int mig__delta_check(const uint8_t *d, size_t len);

/*
 * Apply the delta at d to `page` (MIG_PAGE_SIZE bytes, the old contents).
 * Checked first: on -EBADMSG the page is untouched.
 */
int mig__delta_apply(uint8_t *page, const uint8_t *d, size_t len);

#endif
