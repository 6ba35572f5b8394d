/*
 * libFuzzer target: the protocol table (mig__proto_step) over arbitrary
 * message sequences, as either side steps them.
 *
 * Input: byte 0 bit 0 = early state negotiated; then two bytes a step:
 * the message (an index into the known messages, or past them a raw
 * message number), and the connection (byte % 3) with the side that sent
 * it (byte / 3 odd: the destination). A sequence runs from
 * `config` until a step is refused. Properties: a refusal names itself
 * and leaves `failed`; Abort ends every state but `done`, which nothing
 * leaves; `failed` and `done` take nothing else; and the VM can only run
 * on the destination after a whole stop-and-copy: the destination
 * activates (state `activated`) only after VmConfig, ConfigAck, the
 * Switchover, StateEnd (with early state), the control connection's
 * Complete and the Commit, in that order, each on the control connection.
 */
#include <string.h>

#include "fuzz_common.h"
#include "protocol.h"

#define M(x) MIG__WIRE__ENVELOPE__MSG_##x

static const int known[] = {
	M(HELLO), M(HELLO_ACK), M(VM_CONFIG), M(CONFIG_ACK), M(HINT),
	M(ROUND_START), MIG_PMSG_PAGES, M(ROUND_END), M(STATS), M(SWITCHOVER),
	M(STATE), M(STATE_END), M(COMPLETE), M(COMMIT), M(ACTIVATE),
	M(ACTIVATED), M(ABORT),
};

/* The milestones, in the order they must be passed. */
static int milestone(int msg, uint32_t conn, int early)
{
	static const int order[] = { M(VM_CONFIG), M(CONFIG_ACK), M(SWITCHOVER),
				     M(STATE_END), M(COMPLETE), M(COMMIT),
				     M(ACTIVATE) };
	if (conn)
		return -1;
	for (int i = 0; i < (int)(sizeof(order) / sizeof(order[0])); i++)
		if (order[i] == msg)
			return (!early && msg == M(STATE_END)) ? -1 : i;
	return -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
	mig_pstate s = MIG_PS_CONFIG;
	int early, next = 0;

	if (n < 1)
		return 0;
	early = d[0] & 1;
	for (size_t i = 1; i + 1 < n; i += 2) {
		size_t k = d[i];
		int msg = k < sizeof(known) / sizeof(known[0]) ? known[k] : (int)k;
		uint32_t conn = d[i + 1] % 3;
		unsigned dir = (d[i + 1] / 3) % 2 ? MIG_PDIR_TO_SOURCE : MIG_PDIR_TO_DEST;
		mig_error err = { 0 };
		mig_pstate to = MIG_PS_PRECOPY, again = MIG_PS_PRECOPY;
		int r = mig__proto_step(s, msg, dir, conn, early, &to, &err);
		mig_error err2 = { 0 };

		/* a pure function */
		FUZZ_CHECK(mig__proto_step(s, msg, dir, conn, early, &again, &err2) == r);
		FUZZ_CHECK(again == to);
		FUZZ_CHECK(to < MIG_PS_COUNT);
		if (r != 0) {
			FUZZ_CHECK(r == MIG_E_PROTOCOL && err.code == r);
			FUZZ_CHECK(err.msg[0] != 0);
			FUZZ_CHECK(to == MIG_PS_FAILED);
			return 0;
		}
		FUZZ_CHECK(err.code == 0);
		/* only from the side that sends it */
		FUZZ_CHECK(mig__proto_dir(msg) & dir);
		if (msg == M(ABORT)) {
			FUZZ_CHECK(s != MIG_PS_DONE && to == MIG_PS_FAILED);
			return 0;
		}
		FUZZ_CHECK(s != MIG_PS_FAILED && s != MIG_PS_DONE);
		/* data connections never move the session */
		FUZZ_CHECK(!conn || to == s);
		int m = milestone(msg, conn, early);
		if (to != s) {
			/* every change of state is the next milestone (the
			 * last one, Activated, ends it) */
			if (msg == M(ACTIVATED)) {
				FUZZ_CHECK(s == MIG_PS_ACTIVATED && to == MIG_PS_DONE);
				continue;
			}
			FUZZ_CHECK(m >= 0);
			if (!early && next == 3)
				next = 4; /* no StateEnd without early state */
			FUZZ_CHECK(m == next);
			next++;
		} else {
			FUZZ_CHECK(m < 0);
		}
		if (to == MIG_PS_ACTIVATED)
			FUZZ_CHECK(next == 7);
		s = to;
	}
	return 0;
}
