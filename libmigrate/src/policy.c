/* The pre-copy policy; see policy.h. */
#include "policy.h"

enum mig_decision mig__policy_decide(mig_policy *p, const mig_round_obs *o,
				     uint64_t *expect_us)
{
	double tput = o->throughput < 1 ? 1 : o->throughput;

	/* Clark et al.: the last round's cost is what is still dirty over
	 * the rate the link really carried. */
	*expect_us = (uint64_t)((double)o->remaining * o->bytes_per_page * 1e6 /
				tput) + p->fixed_us;
	if (o->round >= p->max_rounds)
		return MIG_SWITCH;
	/* The fixed part alone over the target (round trips on a slow link):
	 * no round can shorten it, so the copy is what rounds work on, and
	 * once it is a small share of the target, one more round cannot take
	 * off enough to pay for itself (as below). Going on would only run
	 * empty rounds, the guest throttled ever harder, to max_rounds. */
	if (p->fixed_us >= p->target_us &&
	    *expect_us - p->fixed_us <= p->target_us / MIG_SWITCH_FRACTION)
		return MIG_SWITCH;
	/* Under the target, one more round is still worth it while it shrinks
	 * the dirty set by a quarter or more: each costs little (it is short)
	 * and takes downtime off (the target is a ceiling, not a goal). After
	 * round 1 the set to compare with is what that round sent. Shrinking
	 * by a quarter each time, the extra rounds are few and ever shorter;
	 * they end when the copy is a tiny share of the target anyway. */
	if (*expect_us <= p->target_us) {
		uint64_t before = p->prev_remaining ? p->prev_remaining : o->sent;
		uint64_t copy_us = *expect_us - p->fixed_us;
		if (copy_us <= p->target_us / MIG_SWITCH_FRACTION || !before)
			return MIG_SWITCH;
		int shrinking = o->remaining * 4 <= before * 3;
		p->stalled = 0;
		p->prev_remaining = o->remaining;
		/* A guest that dirties pages at least half as fast as the link
		 * carries them would make the rounds below the target shrink
		 * slowly, each costing total time for little downtime: run
		 * them with the vCPUs at half speed, which halves what they
		 * dirty and gives the copy their CPU. Should the set still
		 * not shrink at that speed (a small working set rewritten
		 * faster than half the link), one more round at a fifth. */
		if (p->can_throttle && o->dirty_bps * 2 >= tput) {
			if (p->throttle_pct < MIG_THROTTLE_FINISH) {
				p->throttle_pct = MIG_THROTTLE_FINISH;
				return MIG_THROTTLE;
			}
			if (!shrinking && p->throttle_pct < MIG_THROTTLE_LAST) {
				p->throttle_pct = MIG_THROTTLE_LAST;
				return MIG_THROTTLE;
			}
		}
		return shrinking ? MIG_CONTINUE : MIG_SWITCH;
	}
	/* Progress means the dirty set shrinks by a tenth round over round. */
	if (p->prev_remaining && o->remaining * 10 > p->prev_remaining * 9)
		p->stalled++;
	else
		p->stalled = 0;
	p->prev_remaining = o->remaining;
	/* Two flat rounds start the throttle; once it runs, every flat round
	 * tightens it, by twice the step while the guest still dirties
	 * faster than the link carries (QEMU's auto-converge steps by 10 every
	 * other round and so needs many more rounds). */
	if (p->stalled < (p->throttle_pct ? 1u : 2u))
		return MIG_CONTINUE;
	if (!p->can_throttle)
		return MIG_SWITCH; /* no way to do better: stop and copy now */
	if (p->throttle_pct >= MIG_THROTTLE_MAX)
		return MIG_CONTINUE; /* max_rounds ends it */
	unsigned step = o->dirty_bps > tput ? 2 * MIG_THROTTLE_STEP
					    : MIG_THROTTLE_STEP;
	unsigned pct = p->throttle_pct ? p->throttle_pct + step
				       : MIG_THROTTLE_INITIAL;
	p->throttle_pct = MIG_MIN(pct, MIG_THROTTLE_MAX);
	p->stalled = 0;
	return MIG_THROTTLE;
}
