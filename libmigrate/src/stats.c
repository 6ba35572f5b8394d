/* Statistics as JSON, for scripts and the experiments. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>

#include "internal.h"

MIG_API const char *mig_phase_name(mig_phase p)
{
	switch (p) {
	case MIG_PHASE_NONE: return "none";
	case MIG_PHASE_SETUP: return "setup";
	case MIG_PHASE_PRECOPY: return "precopy";
	case MIG_PHASE_STOPCOPY: return "stopcopy";
	case MIG_PHASE_COMMIT: return "commit";
	case MIG_PHASE_DONE: return "done";
	case MIG_PHASE_FAILED: return "failed";
	}
	return "unknown";
}

/* snprintf into a window that may already be full; counts what it needs. */
struct jw {
	char *buf;
	size_t len;
	size_t pos;
};

static void MIG_PRINTF(2, 3) jw_printf(struct jw *w, const char *fmt, ...)
{
	va_list ap;
	int n;
	char *dst = w->pos < w->len ? w->buf + w->pos : NULL;
	size_t room = w->pos < w->len ? w->len - w->pos : 0;

	va_start(ap, fmt);
	n = vsnprintf(dst, room, fmt, ap);
	va_end(ap);
	if (n > 0)
		w->pos += (size_t)n;
}

static void jw_string(struct jw *w, const char *s)
{
	jw_printf(w, "\"");
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			jw_printf(w, "\\%c", c);
		else if (c < 0x20)
			jw_printf(w, "\\u%04x", c);
		else
			jw_printf(w, "%c", c);
	}
	jw_printf(w, "\"");
}

static double ms(uint64_t us)
{
	return (double)us / 1000.0;
}

MIG_API int mig_stats_json(const mig_stats *st, const mig_error *err,
			   char *buf, size_t len)
{
	struct jw w = { buf, len, 0 };
	double ratio;

	if (!st || (!buf && len))
		return -EINVAL;
	if (buf && len)
		buf[0] = '\0';
	ratio = st->bytes_on_wire ? (double)st->raw_bytes / (double)st->bytes_on_wire : 0.0;
	jw_printf(&w, "{");
	if (err) {
		jw_printf(&w, "\"status\":\"%s\",", err->code ? "failed" : "ok");
		if (err->code) {
			jw_printf(&w, "\"error\":");
			jw_string(&w, err->msg[0] ? err->msg : mig_strerror(err->code));
			jw_printf(&w, ",\"error_code\":");
			jw_string(&w, mig_err_name(err->code));
			jw_printf(&w, ",");
		}
	}
	jw_printf(&w,
		  "\"phase\":\"%s\",\"total_time_ms\":%.3f,\"downtime_ms\":%.3f,"
		  "\"setup_time_ms\":%.3f,\"rounds\":%" PRIu32 ","
		  "\"bytes_on_wire\":%" PRIu64 ",\"raw_bytes\":%" PRIu64 ","
		  "\"pages_sent\":%" PRIu64 ",\"zero_pages\":%" PRIu64 ","
		  "\"compression_ratio\":%.3f,\"expected_downtime_ms\":%.3f,"
		  "\"throttle_pct\":%" PRIu32 ",\"per_round\":[",
		  mig_phase_name(st->phase), ms(st->total_time_us), ms(st->downtime_us),
		  ms(st->setup_time_us), st->rounds, st->bytes_on_wire,
		  st->raw_bytes, st->pages_sent, st->zero_pages, ratio,
		  ms(st->expected_downtime_us), st->throttle_pct);
	for (uint32_t i = 0; i < st->nr_round_stats && i < MIG_MAX_ROUNDS_STATS; i++) {
		const mig_round_stats *r = &st->round[i];
		jw_printf(&w,
			  "%s{\"round\":%" PRIu32 ",\"pages\":%" PRIu64
			  ",\"zero_pages\":%" PRIu64 ",\"bytes\":%" PRIu64
			  ",\"raw_bytes\":%" PRIu64 ",\"dirty_pages\":%" PRIu64
			  ",\"duration_ms\":%.3f,\"dirty_rate\":%.1f"
			  ",\"throughput\":%.1f}",
			  i ? "," : "", r->round, r->pages, r->zero_pages, r->bytes,
			  r->raw_bytes, r->dirty_pages, ms(r->duration_us),
			  r->dirty_rate, r->throughput);
	}
	jw_printf(&w, "]}");
	return w.pos > INT32_MAX ? -EOVERFLOW : (int)w.pos;
}
