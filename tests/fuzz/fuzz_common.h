/*
 * Shared by the fuzz targets and the seed generator: the fake guest the
 * codec target decodes into, and the layout of its inputs.
 *
 * fuzz_codec input: one op byte, then
 *   op even (FUZZ_OP_DECODE): a stream of frames (as on a data connection),
 *     each PAGES body fed to one decoder;
 *   op odd (FUZZ_OP_ROUNDTRIP): a recipe: mode, level, then batches of
 *     [region, npages, link] and per page [index, kind, arg]; the pages are
 *     made from it, encoded by one encoder, decoded by one decoder, and must
 *     come back. A recipe cut short ends where it is cut.
 */
#ifndef MIG_FUZZ_COMMON_H
#define MIG_FUZZ_COMMON_H

#include <stdio.h>
#include <stdlib.h>

#include "codec.h"

#define FUZZ_OP_DECODE 0
#define FUZZ_OP_ROUNDTRIP 1

#define FUZZ_REGIONS 2u
#define FUZZ_PAGES 16u       /* per region */
#define FUZZ_MAX_BATCHES 64

#define FUZZ_CHECK(c)                                                      \
	do {                                                               \
		if (!(c)) {                                                \
			fprintf(stderr, "%s:%d: check failed: %s\n",       \
				__FILE__, __LINE__, #c);                   \
			abort();                                           \
		}                                                          \
	} while (0)

#endif /* MIG_FUZZ_COMMON_H */
