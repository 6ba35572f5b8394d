/*
 * The protocol table (libmigrate/src/protocol.c): the well-behaved runs
 * go through it to the end, each misordering is refused with its name,
 * the table is deterministic and has no dead state, and docs/protocol.md
 * shows it as it is. `test_protocol --print-table` prints the Markdown
 * table for the doc.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mig_test.h"
#include "frame.h"
#include "protocol.h"

#define M(x) MIG__WIRE__ENVELOPE__MSG_##x

struct step {
	int msg;
	uint32_t conn;
};

/* The side that reads `msg` (for Abort, and messages nobody sends: the
 * destination). */
static unsigned reader(int msg)
{
	return mig__proto_dir(msg) == MIG_PDIR_TO_SOURCE ? MIG_PDIR_TO_SOURCE
							 : MIG_PDIR_TO_DEST;
}

/* Run `steps` from CONFIG; returns the state reached, or fails. */
static mig_pstate run(const struct step *steps, size_t n, int early)
{
	mig_pstate s = MIG_PS_CONFIG;

	for (size_t i = 0; i < n; i++) {
		mig_error err = { 0 };
		mig_pstate to;
		if (mig__proto_step(s, steps[i].msg, reader(steps[i].msg),
				    steps[i].conn, early, &to, &err) != 0)
			fail_msg("step %zu: %s", i, err.msg);
		s = to;
	}
	return s;
}

/* A migration with two connections, as the source sends it: early state
 * (state first, StateEnd, the last pages) or not (pages, then state). */
static void test_runs(void **state)
{
	static const struct step early[] = {
		{ M(VM_CONFIG), 0 }, { M(CONFIG_ACK), 0 },
		{ M(HINT), 0 }, { M(ROUND_START), 0 }, { MIG_PMSG_PAGES, 0 },
		{ MIG_PMSG_PAGES, 1 }, { M(ROUND_END), 1 }, { M(ROUND_END), 0 },
		{ M(STATS), 0 }, { M(SWITCHOVER), 0 }, { M(STATE), 0 },
		{ M(STATE), 0 }, { M(STATE_END), 0 }, { M(ROUND_START), 0 },
		{ MIG_PMSG_PAGES, 0 }, { M(ROUND_END), 0 }, { M(COMPLETE), 0 },
		{ MIG_PMSG_PAGES, 1 }, { M(ROUND_END), 1 }, { M(COMPLETE), 1 },
		{ M(COMMIT), 0 }, { M(ACTIVATE), 0 }, { M(ACTIVATED), 0 },
	};
	static const struct step late[] = {
		{ M(VM_CONFIG), 0 }, { M(CONFIG_ACK), 0 },
		{ M(ROUND_START), 0 }, { MIG_PMSG_PAGES, 1 }, { M(ROUND_END), 0 },
		/* data connection 1 ends before the Switchover is read */
		{ M(ROUND_END), 1 }, { M(COMPLETE), 1 },
		{ M(STATS), 0 }, { M(SWITCHOVER), 0 }, { M(ROUND_START), 0 },
		{ MIG_PMSG_PAGES, 0 }, { M(STATE), 0 }, { M(ROUND_END), 0 },
		{ M(COMPLETE), 0 }, { M(COMMIT), 0 }, { M(ACTIVATE), 0 },
		{ M(ACTIVATED), 0 },
	};

	(void)state;
	assert_int_equal(run(early, MIG_ARRAY_SIZE(early), 1), MIG_PS_DONE);
	assert_int_equal(run(late, MIG_ARRAY_SIZE(late), 0), MIG_PS_DONE);
}

/* Message `msg` on `conn` in state `from`, read by `dir`'s side, is
 * refused, naming `what`. */
static void refused_dir(mig_pstate from, int msg, unsigned dir, uint32_t conn,
			int early, const char *what)
{
	mig_error err = { 0 };
	mig_pstate to = MIG_PS_PRECOPY;

	assert_int_equal(mig__proto_step(from, msg, dir, conn, early, &to, &err),
			 MIG_E_PROTOCOL);
	assert_int_equal(to, MIG_PS_FAILED);
	if (!strstr(err.msg, what))
		fail_msg("\"%s\" does not name \"%s\"", err.msg, what);
}

/* ... read by the side it is meant for. */
static void refused(mig_pstate from, int msg, uint32_t conn, int early,
		    const char *what)
{
	refused_dir(from, msg, reader(msg), conn, early, what);
}

static void test_refusals(void **state)
{
	(void)state;
	refused(MIG_PS_CONFIG, M(ROUND_START), 0, 1, "RoundStart before the VM config");
	refused(MIG_PS_PRECOPY, M(VM_CONFIG), 0, 1, "second VM config");
	refused(MIG_PS_PRECOPY, M(COMMIT), 0, 1, "unexpected Commit during pre-copy");
	refused(MIG_PS_PRECOPY, M(STATE), 0, 1, "VM state before the switchover");
	refused(MIG_PS_PRECOPY, M(ACTIVATE), 0, 1, "activate before commit");
	refused(MIG_PS_PRECOPY, M(SWITCHOVER), 2, 1, "Switchover on data connection 2");
	refused(MIG_PS_SWITCHOVER, M(SWITCHOVER), 0, 1, "second switchover");
	refused(MIG_PS_SWITCHOVER, M(HINT), 0, 1, "memory hint after the switchover");
	refused(MIG_PS_SWITCHOVER, M(COMPLETE), 0, 1,
		"stream completed before the end of VM state");
	refused(MIG_PS_SWITCHOVER, M(STATE_END), 0, 0, "unexpected end of VM state");
	refused(MIG_PS_SWITCHOVER, M(COMMIT), 0, 1, "unexpected Commit during stop-and-copy");
	refused(MIG_PS_LAST_PAGES, M(STATE), 0, 1, "VM state after its end");
	refused(MIG_PS_LAST_PAGES, M(STATE_END), 0, 1, "unexpected end of VM state");
	refused(MIG_PS_COMPLETE, MIG_PMSG_PAGES, 0, 1, "unexpected pages after the stream completed");
	refused(MIG_PS_COMMITTED, M(STATE), 0, 0, "VM state after its end");
	refused(MIG_PS_COMMITTED, MIG_PMSG_PAGES, 1, 0, "unexpected pages on connection 1 after the commit");
	refused(MIG_PS_DONE, M(ABORT), 0, 0, "unexpected Abort after the migration ended");
	refused(MIG_PS_PRECOPY, M(HELLO), 0, 0, "unexpected Hello during pre-copy");
	refused(MIG_PS_PRECOPY, 77, 0, 0, "unexpected message 77");
	refused(MIG_PS_COUNT, M(STATS), 0, 0, "protocol state");
	/* each message comes from one side only */
	refused_dir(MIG_PS_SWITCHOVER, M(COMPLETE), MIG_PDIR_TO_SOURCE, 0, 0,
		    "unexpected Complete from the destination");
	refused_dir(MIG_PS_COMPLETE, M(COMMIT), MIG_PDIR_TO_DEST, 0, 0,
		    "unexpected Commit from the source");
	refused_dir(MIG_PS_PRECOPY, M(STATS), MIG_PDIR_TO_DEST, 0, 0,
		    "unexpected RoundStats from the source");
	refused_dir(MIG_PS_PRECOPY, M(STATS), 0, 0, 0, "protocol direction");
}

/* Abort ends every state but the last. */
static void test_abort(void **state)
{
	(void)state;
	for (int s = 0; s < MIG_PS_DONE; s++) {
		mig_error err = { 0 };
		mig_pstate to = MIG_PS_PRECOPY;
		assert_int_equal(mig__proto_step((mig_pstate)s, M(ABORT), MIG_PDIR_TO_DEST,
						 1, 0, &to, &err), 0);
		assert_int_equal(to, MIG_PS_FAILED);
		assert_int_equal(mig__proto_step((mig_pstate)s, M(ABORT), MIG_PDIR_TO_SOURCE,
						 0, 0, &to, &err), 0);
		assert_int_equal(to, MIG_PS_FAILED);
	}
}

/* One answer per (state, message, connection, mode); every message goes
 * one way; every state but DONE and FAILED moves on, in either mode, and
 * every state is reached from CONFIG. */
static void test_table_shape(void **state)
{
	int reach[2][MIG_PS_COUNT] = { { 0 } };

	(void)state;
	for (size_t i = 0; i < mig__proto_table_len; i++) {
		const struct mig_ptrans *a = &mig__proto_table[i];
		unsigned dir = mig__proto_dir(a->msg);
		assert_true(dir == MIG_PDIR_TO_DEST || dir == MIG_PDIR_TO_SOURCE);
		/* the destination sends on the control connection only */
		assert_true(dir == MIG_PDIR_TO_DEST || a->conns == MIG_PCONN_CONTROL);
		for (size_t j = i + 1; j < mig__proto_table_len; j++) {
			const struct mig_ptrans *b = &mig__proto_table[j];
			if (a->from == b->from && a->msg == b->msg &&
			    (a->conns & b->conns) &&
			    (a->mode == MIG_PMODE_ANY || b->mode == MIG_PMODE_ANY ||
			     a->mode == b->mode))
				fail_msg("rows %zu and %zu overlap", i, j);
		}
	}
	for (int early = 0; early < 2; early++) {
		int changed = 1;
		reach[early][MIG_PS_CONFIG] = 1;
		while (changed) {
			changed = 0;
			for (size_t i = 0; i < mig__proto_table_len; i++) {
				const struct mig_ptrans *t = &mig__proto_table[i];
				if (reach[early][t->from] && !reach[early][t->to] &&
				    (t->mode == MIG_PMODE_ANY ||
				     t->mode == (early ? MIG_PMODE_EARLY : MIG_PMODE_LATE)))
					reach[early][t->to] = changed = 1;
			}
		}
		for (int s = 0; s < MIG_PS_DONE; s++) {
			int out = 0;
			if (s == MIG_PS_LAST_PAGES && !early)
				continue; /* only with early state */
			if (!reach[early][s])
				fail_msg("state %s unreachable (early %d)",
					 mig__proto_state_name((mig_pstate)s), early);
			for (size_t i = 0; i < mig__proto_table_len; i++)
				out |= (int)mig__proto_table[i].from == s &&
				       (int)mig__proto_table[i].to != s;
			if (!out)
				fail_msg("no way out of %s",
					 mig__proto_state_name((mig_pstate)s));
		}
		assert_true(reach[early][MIG_PS_DONE]);
	}
}

static char *table_md(void)
{
	size_t n = mig__proto_markdown(NULL, 0);
	char *buf = malloc(n + 1);

	assert_non_null(buf);
	assert_int_equal(mig__proto_markdown(buf, n + 1), n);
	assert_int_equal(strlen(buf), n);
	return buf;
}

/* docs/protocol.md holds the table as generated. */
static void test_doc(void **state)
{
	char path[512], *doc, *md = table_md();
	FILE *f;
	long len;

	(void)state;
	snprintf(path, sizeof(path), "%s/docs/protocol.md", MIG_SOURCE_DIR);
	f = fopen(path, "r");
	assert_non_null(f);
	fseek(f, 0, SEEK_END);
	len = ftell(f);
	rewind(f);
	doc = calloc(1, (size_t)len + 1);
	assert_non_null(doc);
	assert_int_equal(fread(doc, 1, (size_t)len, f), (size_t)len);
	fclose(f);
	if (!strstr(doc, md))
		fail_msg("docs/protocol.md does not hold the table as protocol.c "
			 "has it; `test_protocol --print-table` prints it:\n%s", md);
	free(doc);
	free(md);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_runs),
		cmocka_unit_test(test_refusals),
		cmocka_unit_test(test_abort),
		cmocka_unit_test(test_table_shape),
		cmocka_unit_test(test_doc),
	};

	if (argc == 2 && !strcmp(argv[1], "--print-table")) {
		char *md = table_md();
		fputs(md, stdout);
		free(md);
		return 0;
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
