/* Migration parameters: defaults, validation, setting from text. */
#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <strings.h>

#include "codec.h"
#include "internal.h"

/* Bounds, in one place so validation and the docs agree. */
#define DOWNTIME_MIN 1u
#define DOWNTIME_MAX 60000u
#define LEVEL_MIN MIG_ZSTD_LEVEL_MIN
#define LEVEL_MAX MIG_ZSTD_LEVEL_MAX
#define CONN_MIN 1u
#define CONN_MAX 16u
#define ROUNDS_MIN 1u
#define ROUNDS_MAX 1000u
/* 1 MiB/s: below that even an idle guest's state does not move in time. */
#define BANDWIDTH_MIN (1u << 20)

MIG_API void mig_params_init(mig_params *p)
{
	memset(p, 0, sizeof(*p));
	p->downtime_ms = 300;	/* QEMU's default too */
	p->max_bandwidth = 0;
	p->compress = MIG_COMPRESS_AUTO;
	p->compress_level = 1;
	p->connections = 2;	/* QEMU's multifd default too */
	p->max_rounds = 30;
	p->timeout_ms = 0;
	p->throttle = 1;
	p->dirty_log = MIG_DIRTY_LOG_AUTO;
	p->stall_timeout_ms = 10000;
}

MIG_API int mig_params_validate(const mig_params *p, mig_error *err)
{
	if (!p)
		return mig__err(err, -EINVAL, "parameters: NULL");
	if (p->downtime_ms < DOWNTIME_MIN || p->downtime_ms > DOWNTIME_MAX)
		return mig__err(err, -EINVAL,
				"downtime_ms %" PRIu32 " out of range %u..%u",
				p->downtime_ms, DOWNTIME_MIN, DOWNTIME_MAX);
	if (p->max_bandwidth != 0 && p->max_bandwidth < BANDWIDTH_MIN)
		return mig__err(err, -EINVAL,
				"max_bandwidth %" PRIu64 " bytes/s below the minimum %u (0 = unlimited)",
				p->max_bandwidth, BANDWIDTH_MIN);
	if (p->compress != MIG_COMPRESS_OFF && p->compress != MIG_COMPRESS_ON &&
	    p->compress != MIG_COMPRESS_AUTO)
		return mig__err(err, -EINVAL,
				"compress %d is not off (0), on (1) or auto (2)",
				(int)p->compress);
	if (p->compress_level < LEVEL_MIN || p->compress_level > LEVEL_MAX)
		return mig__err(err, -EINVAL, "compress_level %d out of range %d..%d",
				p->compress_level, LEVEL_MIN, LEVEL_MAX);
	if (p->connections < CONN_MIN || p->connections > CONN_MAX)
		return mig__err(err, -EINVAL,
				"connections %" PRIu32 " out of range %u..%u",
				p->connections, CONN_MIN, CONN_MAX);
	if (p->max_rounds < ROUNDS_MIN || p->max_rounds > ROUNDS_MAX)
		return mig__err(err, -EINVAL,
				"max_rounds %" PRIu32 " out of range %u..%u",
				p->max_rounds, ROUNDS_MIN, ROUNDS_MAX);
	if (p->timeout_ms != 0 && p->timeout_ms < p->downtime_ms)
		return mig__err(err, -EINVAL,
				"timeout_ms %" PRIu32 " is shorter than downtime_ms %" PRIu32,
				p->timeout_ms, p->downtime_ms);
	if (p->throttle != 0 && p->throttle != 1)
		return mig__err(err, -EINVAL, "throttle %d is not 0 or 1",
				p->throttle);
	if (p->stall_timeout_ms < 100 || p->stall_timeout_ms > 3600000)
		return mig__err(err, -EINVAL,
				"stall_timeout_ms %" PRIu32 " out of range 100..3600000",
				p->stall_timeout_ms);
	if (p->verify != 0 && p->verify != 1)
		return mig__err(err, -EINVAL, "verify %d is not 0 or 1", p->verify);
	if (p->dirty_log < MIG_DIRTY_LOG_AUTO || p->dirty_log > MIG_DIRTY_LOG_RING)
		return mig__err(err, -EINVAL,
				"dirty_log %d is not auto, bitmap, clear or ring",
				(int)p->dirty_log);
	if (err)
		memset(err, 0, sizeof(*err));
	return 0;
}

static int parse_u64(const char *s, uint64_t *out)
{
	return mig__parse_size(s, out);
}

static int parse_bool(const char *s, int *out)
{
	if (!strcasecmp(s, "1") || !strcasecmp(s, "on") || !strcasecmp(s, "yes") ||
	    !strcasecmp(s, "true"))
		*out = 1;
	else if (!strcasecmp(s, "0") || !strcasecmp(s, "off") ||
		 !strcasecmp(s, "no") || !strcasecmp(s, "false"))
		*out = 0;
	else
		return -EINVAL;
	return 0;
}

static int parse_enum(const char *s, const char *const *names, int n, int *out)
{
	for (int i = 0; i < n; i++) {
		if (!strcasecmp(s, names[i])) {
			*out = i;
			return 0;
		}
	}
	return -EINVAL;
}

static const char *const compress_names[] = { "off", "on", "auto" };
static const char *const dirty_names[] = { "auto", "bitmap", "clear", "ring" };

/* Names compare with '-' and '_' as equal, so "--downtime-ms" maps. */
static int name_eq(const char *a, const char *b)
{
	for (; *a && *b; a++, b++) {
		char ca = *a == '-' ? '_' : *a, cb = *b == '-' ? '_' : *b;
		if (ca != cb)
			return 0;
	}
	return *a == *b;
}

int mig__param_when(const char *name)
{
	if (name && (name_eq(name, "max_bandwidth") ||
		     name_eq(name, "downtime_ms")))
		return MIG__PARAM_LIVE;
	if (name && name_eq(name, "connections"))
		return MIG__PARAM_CREATE;
	return MIG__PARAM_START;
}

MIG_API int mig_params_set(mig_params *p, const char *name, const char *value,
			   mig_error *err)
{
	mig_params t;
	uint64_t u;
	int i, r = 0;

	if (!p || !name || !value)
		return mig__err(err, -EINVAL, "parameter: NULL argument");
	t = *p;
	if (name_eq(name, "downtime_ms") || name_eq(name, "max_rounds") ||
	    name_eq(name, "timeout_ms") || name_eq(name, "connections") ||
	    name_eq(name, "stall_timeout_ms") ||
	    name_eq(name, "compress_level")) {
		/* Plain counts: a size suffix here would be a user mistake. */
		if (strpbrk(value, "kKmMgGtT") || (r = parse_u64(value, &u)) < 0 ||
		    u > UINT32_MAX)
			return mig__err(err, -EINVAL,
					"%s: '%s' is not a whole number", name, value);
		if (name_eq(name, "downtime_ms"))
			t.downtime_ms = (uint32_t)u;
		else if (name_eq(name, "max_rounds"))
			t.max_rounds = (uint32_t)u;
		else if (name_eq(name, "timeout_ms"))
			t.timeout_ms = (uint32_t)u;
		else if (name_eq(name, "stall_timeout_ms"))
			t.stall_timeout_ms = (uint32_t)u;
		else if (name_eq(name, "connections"))
			t.connections = (uint32_t)u;
		else
			t.compress_level = u > 1000 ? 1000 : (int)u;
	} else if (name_eq(name, "max_bandwidth")) {
		if (parse_u64(value, &u) < 0)
			return mig__err(err, -EINVAL,
					"max_bandwidth: '%s' is not a size in bytes/s (e.g. 125M)",
					value);
		t.max_bandwidth = u;
	} else if (name_eq(name, "compress")) {
		if (parse_enum(value, compress_names, 3, &i) < 0)
			return mig__err(err, -EINVAL,
					"compress: '%s' is not off, on or auto", value);
		t.compress = (mig_compress)i;
	} else if (name_eq(name, "throttle") || name_eq(name, "verify")) {
		if (parse_bool(value, &i) < 0)
			return mig__err(err, -EINVAL,
					"%s: '%s' is not on or off", name, value);
		if (name_eq(name, "throttle"))
			t.throttle = i;
		else
			t.verify = i;
	} else if (name_eq(name, "dirty_log")) {
		if (parse_enum(value, dirty_names, 4, &i) < 0)
			return mig__err(err, -EINVAL,
					"dirty_log: '%s' is not auto, bitmap, clear or ring",
					value);
		t.dirty_log = (mig_dirty_log)i;
	} else {
		return mig__err(err, -ENOENT, "unknown migration parameter '%s'",
				name);
	}
	r = mig_params_validate(&t, err);
	if (r < 0)
		return r;
	*p = t;
	return 0;
}
