/* Parameter defaults, validation and setting from text. */
#include <errno.h>
#include <string.h>

#include "mig_test.h"
#include "internal.h"

static void test_defaults_valid(void **state)
{
	mig_params p;
	mig_error e = { 0 };
	(void)state;
	mig_params_init(&p);
	assert_int_equal(p.downtime_ms, 300);
	assert_int_equal(p.compress, MIG_COMPRESS_AUTO);
	assert_int_equal(p.connections, 2);
	assert_int_equal(p.dirty_log, MIG_DIRTY_LOG_AUTO);
	assert_int_equal(mig_params_validate(&p, &e), 0);
	assert_int_equal(e.code, 0);
}

/* Each field out of range is refused, and the message names the field. */
static const char *break_field(mig_params *p, int i)
{
	switch (i) {
	case 0: p->downtime_ms = 0; return "downtime_ms";
	case 1: p->downtime_ms = 60001; return "downtime_ms";
	case 2: p->max_bandwidth = 1000; return "max_bandwidth";
	case 3: p->compress = (mig_compress)7; return "compress";
	case 4: p->compress_level = 0; return "compress_level";
	case 5: p->compress_level = 20; return "compress_level";
	case 6: p->connections = 0; return "connections";
	case 7: p->connections = 17; return "connections";
	case 8: p->max_rounds = 0; return "max_rounds";
	case 9: p->timeout_ms = 100; return "timeout_ms";
	case 10: p->throttle = 2; return "throttle";
	case 11: p->dirty_log = (mig_dirty_log)9; return "dirty_log";
	case 12: p->verify = 3; return "verify";
	case 13: p->stall_timeout_ms = 5; return "stall_timeout_ms";
	}
	return NULL;
}

static void test_validate_ranges(void **state)
{
	const char *field;
	(void)state;
	for (int i = 0;; i++) {
		mig_params p;
		mig_error e = { 0 };
		mig_params_init(&p);
		field = break_field(&p, i);
		if (!field)
			break;
		assert_int_equal(mig_params_validate(&p, &e), -EINVAL);
		assert_int_equal(e.code, -EINVAL);
		assert_non_null(strstr(e.msg, field));
	}
	assert_int_equal(mig_params_validate(NULL, NULL), -EINVAL);
}

static void test_set_from_text(void **state)
{
	mig_params p;
	mig_error e = { 0 };
	(void)state;
	mig_params_init(&p);
	assert_int_equal(mig_params_set(&p, "downtime-ms", "50", &e), 0);
	assert_int_equal(p.downtime_ms, 50);
	assert_int_equal(mig_params_set(&p, "max_bandwidth", "125M", &e), 0);
	assert_int_equal(p.max_bandwidth, 125u << 20);
	assert_int_equal(mig_params_set(&p, "compress", "ON", &e), 0);
	assert_int_equal(p.compress, MIG_COMPRESS_ON);
	assert_int_equal(mig_params_set(&p, "dirty-log", "ring", &e), 0);
	assert_int_equal(p.dirty_log, MIG_DIRTY_LOG_RING);
	assert_int_equal(mig_params_set(&p, "throttle", "off", &e), 0);
	assert_int_equal(p.throttle, 0);
	assert_int_equal(mig_params_set(&p, "connections", "4", &e), 0);
	assert_int_equal(p.connections, 4);
	assert_int_equal(mig_params_set(&p, "max_bandwidth", "0", &e), 0);
	assert_int_equal(p.max_bandwidth, 0);
	assert_int_equal(mig_params_set(&p, "verify", "on", &e), 0);
	assert_int_equal(p.verify, 1);
}

/* A refused value names itself and leaves the parameters untouched. */
static void test_set_rejects(void **state)
{
	static const char *bad[][2] = {
		{ "downtime_ms", "" }, { "downtime_ms", "-5" },
		{ "downtime_ms", "12ms" }, { "downtime_ms", "4M" },
		{ "downtime_ms", "99999999999" }, { "downtime_ms", "0" },
		{ "compress", "maybe" }, { "dirty_log", "rings" },
		{ "throttle", "2" }, { "connections", "0" },
		{ "compress_level", "100000" }, { "max_bandwidth", "1Q" },
		{ "max_bandwidth", "100" }, { "max_bandwidth", "99999999999999G" },
	};
	(void)state;
	for (size_t i = 0; i < MIG_ARRAY_SIZE(bad); i++) {
		mig_params p, orig;
		mig_error e = { 0 };
		mig_params_init(&p);
		orig = p;
		assert_int_equal(mig_params_set(&p, bad[i][0], bad[i][1], &e), -EINVAL);
		assert_memory_equal(&p, &orig, sizeof(p));
		assert_true(strlen(e.msg) > 0);
	}
}

static void test_set_unknown(void **state)
{
	mig_params p;
	mig_error e = { 0 };
	(void)state;
	mig_params_init(&p);
	assert_int_equal(mig_params_set(&p, "speed", "1", &e), -ENOENT);
	assert_non_null(strstr(e.msg, "speed"));
	assert_int_equal(mig_params_set(NULL, "speed", "1", &e), -EINVAL);
}

static void test_parse_size(void **state)
{
	uint64_t v;
	(void)state;
	assert_int_equal(mig__parse_size("4096", &v), 0);
	assert_int_equal(v, 4096);
	assert_int_equal(mig__parse_size("64K", &v), 0);
	assert_int_equal(v, 65536);
	assert_int_equal(mig__parse_size("2g", &v), 0);
	assert_int_equal(v, 2ull << 30);
	assert_int_equal(mig__parse_size("1T", &v), 0);
	assert_int_equal(mig__parse_size("", &v), -EINVAL);
	assert_int_equal(mig__parse_size("K", &v), -EINVAL);
	assert_int_equal(mig__parse_size("1KB", &v), -EINVAL);
	assert_int_equal(mig__parse_size(" 1", &v), -EINVAL);
	assert_int_equal(mig__parse_size("-1", &v), -EINVAL);
	assert_int_equal(mig__parse_size("17179869184G", &v), -ERANGE);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults_valid),
		cmocka_unit_test(test_validate_ranges),
		cmocka_unit_test(test_set_from_text),
		cmocka_unit_test(test_set_rejects),
		cmocka_unit_test(test_set_unknown),
		cmocka_unit_test(test_parse_size),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
