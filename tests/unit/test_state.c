/* mig_state (state blobs) and the stats JSON writer. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mig_test.h"
#include "state.h"

static void test_add_get_replace(void **state)
{
	mig_state st;
	const void *d;
	size_t n;
	(void)state;
	mig__state_init(&st);
	assert_int_equal(mig_state_add(&st, "serial", "abc", 3), 0);
	assert_int_equal(mig_state_add(&st, "x86.vm", "", 0), 0);
	assert_int_equal(mig_state_get(&st, "serial", &d, &n), 0);
	assert_int_equal(n, 3);
	assert_memory_equal(d, "abc", 3);
	assert_int_equal(mig_state_add(&st, "serial", "wxyz", 4), 0);
	assert_int_equal(mig_state_get(&st, "serial", &d, &n), 0);
	assert_int_equal(n, 4);
	assert_int_equal(st.nr_items, 2);
	assert_int_equal(st.total, 4);
	assert_int_equal(mig_state_get(&st, "x86.vm", &d, &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(mig_state_get(&st, "nope", &d, &n), -ENOENT);
	mig__state_clear(&st);
}

static void test_add_limits(void **state)
{
	mig_state st;
	char name[100];
	(void)state;
	mig__state_init(&st);
	memset(name, 'n', sizeof(name) - 1);
	name[sizeof(name) - 1] = 0;
	assert_int_equal(mig_state_add(&st, name, "a", 1), -EINVAL);
	assert_int_equal(mig_state_add(&st, "", "a", 1), -EINVAL);
	assert_int_equal(mig_state_add(&st, "x", NULL, 1), -EINVAL);
	assert_int_equal(mig_state_add(NULL, "x", "a", 1), -EINVAL);
	void *big = calloc(1, MIG_STATE_ITEM_MAX + 1);
	assert_int_equal(mig_state_add(&st, "big", big, MIG_STATE_ITEM_MAX + 1),
			 -EMSGSIZE);
	free(big);
	assert_int_equal(st.nr_items, 0);
	mig__state_clear(&st);
}

static void test_stats_json(void **state)
{
	mig_stats *st = calloc(1, sizeof(*st));
	mig_error e = { 0 };
	char buf[4096];
	int n;
	(void)state;
	st->phase = MIG_PHASE_DONE;
	st->rounds = 2;
	st->total_time_us = 1500;
	st->downtime_us = 250;
	st->bytes_on_wire = 100;
	st->raw_bytes = 400;
	st->nr_round_stats = 2;
	st->round[0].round = 1;
	st->round[1].round = 2;
	n = mig_stats_json(st, &e, buf, sizeof(buf));
	assert_true(n > 0 && n < (int)sizeof(buf));
	assert_int_equal((int)strlen(buf), n);
	assert_non_null(strstr(buf, "\"status\":\"ok\""));
	assert_non_null(strstr(buf, "\"total_time_ms\":1.500"));
	assert_non_null(strstr(buf, "\"downtime_ms\":0.250"));
	assert_non_null(strstr(buf, "\"compression_ratio\":4.000"));
	assert_non_null(strstr(buf, "{\"round\":2,"));

	/* An error message with quotes and control bytes stays valid JSON. */
	e.code = -ECONNRESET;
	snprintf(e.msg, sizeof(e.msg), "peer \"b\"\nsaid\\no");
	n = mig_stats_json(st, &e, buf, sizeof(buf));
	assert_non_null(strstr(buf, "\"status\":\"failed\""));
	assert_non_null(strstr(buf, "\"error\":\"peer \\\"b\\\"\\u000asaid\\\\no\""));
	assert_non_null(strstr(buf, "\"error_code\":\"ECONNRESET\""));

	assert_string_equal(mig_phase_name(MIG_PHASE_PRECOPY), "precopy");
	assert_string_equal(mig_phase_name((mig_phase)99), "unknown");

	/* Too small a buffer: truncated, NUL-terminated, needed length back. */
	char small[16];
	int need = mig_stats_json(st, &e, small, sizeof(small));
	assert_int_equal(need, n);
	assert_int_equal(strlen(small), sizeof(small) - 1);
	assert_int_equal(mig_stats_json(st, NULL, NULL, 0) > 0, 1);
	free(st);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_add_get_replace),
		cmocka_unit_test(test_add_limits),
		cmocka_unit_test(test_stats_json),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
