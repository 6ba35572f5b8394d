/* mig_strerror, mig_err_name, mig_error helpers and the version query. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "mig_test.h"
#include "internal.h"

static void test_known_errors(void **state)
{
	(void)state;
	assert_string_equal(mig_strerror(0), "success");
	assert_string_equal(mig_strerror(-ECONNRESET), "connection reset by peer");
	assert_string_equal(mig_err_name(-ECONNRESET), "ECONNRESET");
	assert_string_equal(mig_strerror(MIG_E_AUTH), "authentication token rejected");
	assert_string_equal(mig_err_name(MIG_E_PROTOCOL), "MIG_E_PROTOCOL");
	assert_string_equal(mig_strerror(-ETIMEDOUT), "timed out");
}

static void test_unknown_errors(void **state)
{
	(void)state;
	assert_string_equal(mig_strerror(-99999), "unknown error");
	assert_string_equal(mig_strerror(12345), "unknown error");
	assert_string_equal(mig_err_name(-99999), "UNKNOWN");
}

/* Every code the library defines has a distinct name and text. */
static void test_mig_codes_distinct(void **state)
{
	int codes[] = { MIG_E_PROTOCOL, MIG_E_VERSION, MIG_E_AUTH, MIG_E_INCOMPAT,
			MIG_E_CANCELED, MIG_E_PEER, MIG_E_NOCONVERGE,
			MIG_E_TLS };
	(void)state;
	for (size_t i = 0; i < MIG_ARRAY_SIZE(codes); i++) {
		assert_string_not_equal(mig_strerror(codes[i]), "unknown error");
		for (size_t j = i + 1; j < MIG_ARRAY_SIZE(codes); j++)
			assert_string_not_equal(mig_err_name(codes[i]),
						mig_err_name(codes[j]));
	}
}

static void test_err_helpers(void **state)
{
	mig_error e = { 0 };
	(void)state;
	assert_int_equal(mig__err(&e, -EPIPE, "to %s:%d", "hostb", 4444), -EPIPE);
	assert_int_equal(e.code, -EPIPE);
	assert_string_equal(e.msg, "to hostb:4444");
	mig__err_prefix(&e, "round %d: ", 3);
	assert_string_equal(e.msg, "round 3: to hostb:4444");
	/* NULL error pointers are allowed everywhere. */
	assert_int_equal(mig__err(NULL, -EIO, "x"), -EIO);
	mig__err_prefix(NULL, "y");
}

static void test_err_truncates(void **state)
{
	mig_error e = { 0 };
	char longs[1000];
	(void)state;
	memset(longs, 'a', sizeof(longs) - 1);
	longs[sizeof(longs) - 1] = 0;
	mig__err(&e, -EINVAL, "%s", longs);
	assert_int_equal(strlen(e.msg), MIG_ERROR_MSG_MAX - 1);
	mig__err_prefix(&e, "%s", longs);
	assert_int_equal(strlen(e.msg), MIG_ERROR_MSG_MAX - 1);
}

static void test_version(void **state)
{
	char want[32];
	(void)state;
	assert_int_equal(mig_version(), MIG_VERSION_HEX);
	snprintf(want, sizeof(want), "%d.%d.%d", MIG_VERSION_MAJOR,
		 MIG_VERSION_MINOR, MIG_VERSION_PATCH);
	assert_string_equal(mig_version_string(), want);
}

/* Peer text: printable ASCII kept, every other byte as \xHH, an escape
 * never cut in half, the result always terminated. */
static void test_peer_text(void **state)
{
	char out[16];
	(void)state;

	assert_string_equal(mig__peer_text("disk full", out, sizeof(out)),
			    "disk full");
	assert_string_equal(mig__peer_text("a\nb\x1b\x7f", out, sizeof(out)),
			    "a\\x0ab\\x1b\\x7f");
	/* 16 bytes hold "abcdefghijk\x0a" and its NUL; 15 do not: no half
	 * escape then. */
	assert_string_equal(mig__peer_text("abcdefghijk\n", out, 16),
			    "abcdefghijk\\x0a");
	assert_string_equal(mig__peer_text("abcdefghijk\n", out, 15),
			    "abcdefghijk");
	assert_string_equal(mig__peer_text(NULL, out, sizeof(out)), "");
	assert_string_equal(mig__peer_text("x", out, 1), "");
	assert_string_equal(mig__peer_text("xyz", out, 0), "");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_known_errors),
		cmocka_unit_test(test_unknown_errors),
		cmocka_unit_test(test_mig_codes_distinct),
		cmocka_unit_test(test_err_helpers),
		cmocka_unit_test(test_err_truncates),
		cmocka_unit_test(test_peer_text),
		cmocka_unit_test(test_version),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
