/*
 * libmigrate internals shared between the library's modules. Nothing here
 * is part of the public API: names are mig__*, visibility hidden.
 */
#ifndef MIG_INTERNAL_H
#define MIG_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>
#include <pthread.h>
#include <stdint.h>

#include "migrate/migrate.h"

#define MIG_PAGE_SIZE 4096u
#define MIG_PAGE_SHIFT 12

#define MIG_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MIG_MIN(a, b) ((a) < (b) ? (a) : (b))
#define MIG_MAX(a, b) ((a) > (b) ? (a) : (b))

#if defined(__GNUC__)
#define MIG_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define MIG_PRINTF(f, a)
#endif

/*
 * Record `code` and a formatted message in `err` (which may be NULL) and
 * return `code`, so that failures read `return mig__err(err, -EINVAL, ...)`.
 */
int mig__err(mig_error *err, int code, const char *fmt, ...) MIG_PRINTF(3, 4);
/* Text a peer sent (an abort's reason, a refusal, a state item's name), fit
 * for a message: every byte outside printable ASCII as \xHH, so that no
 * newline, escape sequence or invalid UTF-8 from the wire reaches a log, a
 * terminal or a program that reads the message line by line; cut to fit the
 * N bytes of OUT. Returns OUT. */
#define MIG_PEER_TEXT_MAX 160
const char *mig__peer_text(const char *s, char *out, size_t n);
/* Prefix err->msg with more context ("round 3: " + old message). */
void mig__err_prefix(mig_error *err, const char *fmt, ...) MIG_PRINTF(2, 3);

/* A growable byte buffer. Zero-initialized is empty and valid. */
typedef struct mig_buf {
	uint8_t *data;
	size_t len;
	size_t cap;
} mig_buf;

int mig__buf_reserve(mig_buf *b, size_t extra);
int mig__buf_append(mig_buf *b, const void *p, size_t n);
void mig__buf_free(mig_buf *b);

/* CLOCK_MONOTONIC in microseconds / nanoseconds. */
uint64_t mig__now_us(void);
uint64_t mig__now_ns(void);
/* Name the calling thread (top, perf, gdb show it); at most 15 chars. */
void mig__thread_name(const char *name);
/* pthread_create() with every signal but the faults' (SIGSEGV, SIGBUS,
 * ...) blocked in the new thread: the
 * embedder's signals go to its own threads, and a write to a peer that
 * hung up fails with EPIPE there instead of killing the process with a
 * SIGPIPE it did not ignore. Returns 0 or a positive errno. */
int mig__thread_start(pthread_t *t, void *(*fn)(void *), void *arg);

/* When a source's parameter `name` (as mig_params_set() takes it) may
 * still change: MIG__PARAM_CREATE only in mig_source_config (connections:
 * they are made with the source), MIG__PARAM_START until
 * mig_source_start(), MIG__PARAM_LIVE while it runs too (max_bandwidth,
 * downtime_ms). */
enum { MIG__PARAM_CREATE, MIG__PARAM_START, MIG__PARAM_LIVE };
int mig__param_when(const char *name);
/* Parse "123", "64K", "1M", "2G" (powers of 1024) into *out. */
int mig__parse_size(const char *s, uint64_t *out);

#endif /* MIG_INTERNAL_H */
