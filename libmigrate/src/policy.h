/*
 * The pre-copy policy: after each round, go on, throttle the guest, or stop
 * and copy. A pure function of what the rounds measured, so it is
 * unit-tested on simulated rates (tests/unit/test_policy.c).
 */
#ifndef MIG_POLICY_H
#define MIG_POLICY_H

#include "internal.h"

#define MIG_THROTTLE_INITIAL 20u
#define MIG_THROTTLE_STEP 10u
#define MIG_THROTTLE_MAX 99u
/* Under target / MIG_SWITCH_FRACTION of expected copy time (about 19 ms
 * for the default 300), one more round cannot take off enough to pay for
 * itself: it would cost the guest about that much total time again (and,
 * for a busy guest, a throttled round) to save a fraction of it in
 * downtime. At 32 the rounds went on to about 9 ms and cost busy guests
 * 30-80 ms of total time for a few ms of downtime. */
#define MIG_SWITCH_FRACTION 16u
/* Under the target, the rounds left run at this throttle when the guest
 * dirties pages at least half as fast as the link carries them, and at
 * MIG_THROTTLE_LAST for one more round if the set still does not shrink. */
#define MIG_THROTTLE_FINISH 50u
#define MIG_THROTTLE_LAST 80u

typedef struct mig_policy {
	/* set once */
	uint64_t target_us;      /* downtime target */
	uint32_t max_rounds;
	int can_throttle;        /* params.throttle and ops->throttle */
	uint64_t fixed_us;       /* state transfer and commit handshake */
	/* kept between rounds */
	uint64_t prev_remaining;
	unsigned stalled;
	unsigned throttle_pct;
} mig_policy;

typedef struct mig_round_obs {
	uint32_t round;          /* the round that just ended, 1-based */
	uint64_t remaining;      /* pages dirty now, to send next */
	uint64_t sent;           /* pages the round sent (0: unknown) */
	double bytes_per_page;   /* on the wire, as the last round measured */
	double throughput;       /* wire bytes/s of the last round */
	double dirty_bps;        /* bytes/s the guest dirtied in that round */
} mig_round_obs;

enum mig_decision {
	MIG_CONTINUE = 0,
	MIG_SWITCH,              /* stop and copy now */
	MIG_THROTTLE,            /* set the throttle to p->throttle_pct, go on */
};

/* Decide after a round; *expect_us gets the expected downtime if the
 * switch happened now. */
enum mig_decision mig__policy_decide(mig_policy *p, const mig_round_obs *o,
				     uint64_t *expect_us);

#endif /* MIG_POLICY_H */
