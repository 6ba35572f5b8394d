/* The pre-copy policy on simulated rounds. */
#include "mig_test.h"
#include "policy.h"

static mig_policy policy(int can_throttle)
{
	mig_policy p = { 0 };
	p.target_us = 300000;
	p.max_rounds = 30;
	p.can_throttle = can_throttle;
	p.fixed_us = 2000;
	return p;
}

static mig_round_obs obs(uint32_t round, uint64_t remaining, double tput,
			 double dirty_bps)
{
	mig_round_obs o = { round, remaining, 0, 4096, tput, dirty_bps };
	return o;
}

/* Few dirty pages on a fast link: switch at once, with the right estimate. */
static void test_switch_when_under_target(void **state)
{
	mig_policy p = policy(1);
	mig_round_obs o = obs(1, 1000, 100e6, 1e6); /* 4 MB at 100 MB/s */
	uint64_t e;
	(void)state;
	assert_int_equal(mig__policy_decide(&p, &o, &e), MIG_SWITCH);
	assert_true(e > 40000 && e < 44000); /* 41 ms + 2 ms fixed */
}

/* Under the target but still shrinking fast: one more round; once it
 * stops shrinking by a quarter, switch. */
static void test_goes_below_target_while_shrinking(void **state)
{
	mig_policy p = policy(1);
	uint64_t e;
	(void)state;
	mig_round_obs o1 = obs(1, 100000, 100e6, 10e6);  /* 4 s: go on */
	mig_round_obs o2 = obs(2, 5000, 100e6, 10e6);    /* 205 ms, shrank 95% */
	mig_round_obs o3 = obs(3, 4000, 100e6, 10e6);    /* 166 ms, shrank 20% */
	assert_int_equal(mig__policy_decide(&p, &o1, &e), MIG_CONTINUE);
	assert_int_equal(mig__policy_decide(&p, &o2, &e), MIG_CONTINUE);
	assert_true(e <= p.target_us);
	assert_int_equal(mig__policy_decide(&p, &o3, &e), MIG_SWITCH);
	assert_true(e <= p.target_us);
}

/* A shrinking dirty set: keep going until it fits. */
static void test_converging_guest(void **state)
{
	mig_policy p = policy(1);
	uint64_t e, remaining = 1000000;
	uint32_t round = 1;
	(void)state;
	for (;; round++) {
		mig_round_obs o = obs(round, remaining, 100e6, 10e6);
		enum mig_decision d = mig__policy_decide(&p, &o, &e);
		if (d == MIG_SWITCH)
			break;
		assert_int_equal(d, MIG_CONTINUE);
		remaining /= 2;
	}
	/* Halving every round, it goes on until the copy is a small share of
	 * the target (40 s of copy halved 12 times: under 18.75 ms). */
	assert_true(e - p.fixed_us <= p.target_us / MIG_SWITCH_FRACTION);
	assert_int_equal(p.throttle_pct, 0);
	assert_true(round <= 14);
}

/* After round 1, what it sent is the set to compare with: a working set
 * rewritten at full speed leaves a dirty set far smaller than round 1's
 * copy, so pre-copy goes on while that set still shrinks, even though the
 * first estimate is already under the target. */
static void test_round1_compares_with_what_it_sent(void **state)
{
	mig_policy p = policy(1);
	uint64_t e;
	(void)state;
	mig_round_obs o1 = obs(1, 16390, 1e9, 0.3e9); /* 67 ms of copy */
	o1.sent = 132096;
	assert_int_equal(mig__policy_decide(&p, &o1, &e), MIG_CONTINUE);
	assert_true(e <= p.target_us);
	mig_round_obs o2 = obs(2, 8000, 1e9, 0.3e9); /* shrank by half */
	o2.sent = 16390;
	assert_int_equal(mig__policy_decide(&p, &o2, &e), MIG_CONTINUE);
	mig_round_obs o3 = obs(3, 7000, 1e9, 0.3e9); /* by 12%: stop */
	o3.sent = 8000;
	assert_int_equal(mig__policy_decide(&p, &o3, &e), MIG_SWITCH);
	/* and a tiny set switches whatever round 1 sent */
	mig_policy q = policy(1);
	mig_round_obs t = obs(1, 100, 1e9, 1e9);
	t.sent = 200000;
	assert_int_equal(mig__policy_decide(&q, &t, &e), MIG_SWITCH);
}

/* Under the target, a guest that dirties pages at least half as fast as
 * the link carries them: the rounds left run at half speed
 * (MIG_THROTTLE_FINISH), and one more at MIG_THROTTLE_LAST if the set
 * still does not shrink; they go on while the set shrinks by a quarter. Without a throttle, or with a slow dirtier, no throttle; a copy
 * already tiny switches whatever the guest does. */
static void test_finishing_throttle(void **state)
{
	mig_policy p = policy(1);
	uint64_t e;
	(void)state;
	mig_round_obs o2 = obs(2, 65542, 1e9, 0.8e9);  /* 268 ms of copy */
	o2.sent = 132096;
	assert_int_equal(mig__policy_decide(&p, &o2, &e), MIG_THROTTLE);
	assert_int_equal(p.throttle_pct, MIG_THROTTLE_FINISH);
	mig_round_obs o3 = obs(3, 25000, 1.2e9, 0.4e9); /* throttled: -62% */
	assert_int_equal(mig__policy_decide(&p, &o3, &e), MIG_CONTINUE);
	assert_int_equal(p.throttle_pct, MIG_THROTTLE_FINISH);
	mig_round_obs o4 = obs(4, 22000, 1.2e9, 0.6e9); /* flat, still fast */
	assert_int_equal(mig__policy_decide(&p, &o4, &e), MIG_THROTTLE);
	assert_int_equal(p.throttle_pct, MIG_THROTTLE_LAST);
	mig_round_obs o5 = obs(5, 20000, 1.2e9, 0.6e9); /* flat again: stop */
	assert_int_equal(mig__policy_decide(&p, &o5, &e), MIG_SWITCH);
	assert_int_equal(p.throttle_pct, MIG_THROTTLE_LAST);
	/* at half speed and slow enough now: no second step */
	mig_policy h = policy(1);
	h.throttle_pct = MIG_THROTTLE_FINISH;
	h.prev_remaining = 25000;
	mig_round_obs calm = obs(4, 22000, 1.2e9, 0.3e9);
	assert_int_equal(mig__policy_decide(&h, &calm, &e), MIG_SWITCH);
	assert_int_equal(h.throttle_pct, MIG_THROTTLE_FINISH);

	mig_policy q = policy(0);                       /* cannot throttle */
	q.prev_remaining = 65542;
	mig_round_obs flat = obs(3, 55000, 1e9, 0.8e9); /* shrank 16% */
	assert_int_equal(mig__policy_decide(&q, &flat, &e), MIG_SWITCH);
	mig_policy r = policy(1);                       /* slow dirtier */
	r.prev_remaining = 65542;
	mig_round_obs slow = obs(3, 55000, 1e9, 0.1e9);
	assert_int_equal(mig__policy_decide(&r, &slow, &e), MIG_SWITCH);
	assert_int_equal(r.throttle_pct, 0);
	mig_policy t = policy(1);                       /* copy already tiny */
	t.prev_remaining = 8000;
	mig_round_obs tiny = obs(3, 2000, 1e9, 1e9);    /* 8 ms < 300 / 16 */
	assert_int_equal(mig__policy_decide(&t, &tiny, &e), MIG_SWITCH);
	assert_int_equal(t.throttle_pct, 0);
	/* Either side of target / 16 (18.75 ms), the set shrinking by a
	 * quarter: 15 ms of copy is not worth another round, 24.6 ms is. */
	mig_policy u = policy(0);
	u.prev_remaining = 8000;
	mig_round_obs small = obs(3, 3662, 1e9, 0.1e9);
	assert_int_equal(mig__policy_decide(&u, &small, &e), MIG_SWITCH);
	u.prev_remaining = 8000;
	mig_round_obs larger = obs(3, 6000, 1e9, 0.1e9);
	assert_int_equal(mig__policy_decide(&u, &larger, &e), MIG_CONTINUE);
}

/* A guest dirtying faster than the link: after two flat rounds the
 * throttle starts, then tightens every flat round, faster while dirtying
 * outpaces the link; once the guest slows enough it switches. */
static void test_throttles_fast_dirtier(void **state)
{
	mig_policy p = policy(1);
	uint64_t e;
	unsigned last = 0, throttles = 0;
	(void)state;
	for (uint32_t round = 1; round <= 30; round++) {
		/* the guest dirties in proportion to its unthrottled share */
		double share = (100.0 - p.throttle_pct) / 100.0;
		uint64_t remaining = (uint64_t)(200000 * share) + 100;
		mig_round_obs o = obs(round, remaining, 50e6, 400e6 * share);
		enum mig_decision d = mig__policy_decide(&p, &o, &e);
		if (d == MIG_SWITCH) {
			assert_true(e <= p.target_us);
			assert_true(throttles >= 3);
			assert_true(round < 20); /* QEMU's 10-step needs ~20 */
			return;
		}
		if (d == MIG_THROTTLE) {
			throttles++;
			assert_true(p.throttle_pct > last);
			assert_true(p.throttle_pct <= MIG_THROTTLE_MAX);
			if (last == 0)
				assert_int_equal(p.throttle_pct, MIG_THROTTLE_INITIAL);
			else if (p.throttle_pct != MIG_THROTTLE_MAX)
				assert_int_equal(p.throttle_pct - last, 2 * MIG_THROTTLE_STEP);
			last = p.throttle_pct;
		}
	}
	fail_msg("never converged");
}

/* Without a way to throttle, flat rounds end pre-copy instead. */
static void test_no_throttle_switches_when_flat(void **state)
{
	mig_policy p = policy(0);
	uint64_t e;
	(void)state;
	mig_round_obs o1 = obs(1, 500000, 50e6, 400e6);
	mig_round_obs o2 = obs(2, 499000, 50e6, 400e6);
	mig_round_obs o3 = obs(3, 498000, 50e6, 400e6);
	assert_int_equal(mig__policy_decide(&p, &o1, &e), MIG_CONTINUE);
	assert_int_equal(mig__policy_decide(&p, &o2, &e), MIG_CONTINUE);
	assert_int_equal(mig__policy_decide(&p, &o3, &e), MIG_SWITCH);
	assert_true(e > p.target_us); /* forced, not within target */
}

/* max_rounds ends it whatever the rates. */
static void test_max_rounds(void **state)
{
	mig_policy p = policy(1);
	uint64_t e;
	(void)state;
	p.max_rounds = 3;
	p.throttle_pct = MIG_THROTTLE_MAX;
	mig_round_obs o = obs(3, 1u << 30, 1e6, 1e9);
	assert_int_equal(mig__policy_decide(&p, &o, &e), MIG_SWITCH);
}

/* The fixed part alone over the target (a slow link's round trips): no
 * round can reach the target, so a copy already a small share of it
 * switches at once instead of throttling flat rounds to max_rounds. */
static void test_fixed_over_target(void **state)
{
	mig_policy p = policy(1);
	uint64_t e;
	(void)state;
	p.fixed_us = 400000;
	mig_round_obs o = obs(1, 300, 100e6, 100e6); /* 12 ms of copy */
	assert_int_equal(mig__policy_decide(&p, &o, &e), MIG_SWITCH);
	assert_true(e > p.target_us);
}

/* The fixed part just under the target: a converging guest still gets
 * the round that brings the downtime under it (the target is a ceiling). */
static void test_fixed_just_under_target(void **state)
{
	mig_policy p = policy(1);
	uint64_t e;
	(void)state;
	p.fixed_us = 295000;
	mig_round_obs o1 = obs(1, 400, 100e6, 1e6); /* 16 ms: 311 ms */
	mig_round_obs o2 = obs(2, 100, 100e6, 1e6); /* 4 ms: 299 ms */
	assert_int_equal(mig__policy_decide(&p, &o1, &e), MIG_CONTINUE);
	assert_true(e > p.target_us);
	assert_int_equal(mig__policy_decide(&p, &o2, &e), MIG_SWITCH);
	assert_true(e <= p.target_us);
}

/* A zero throughput (nothing measured) does not divide by zero. */
static void test_zero_throughput(void **state)
{
	mig_policy p = policy(1);
	uint64_t e;
	(void)state;
	mig_round_obs o = obs(1, 10, 0, 0);
	assert_int_equal(mig__policy_decide(&p, &o, &e), MIG_CONTINUE);
	assert_true(e > p.target_us);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_switch_when_under_target),
		cmocka_unit_test(test_converging_guest),
		cmocka_unit_test(test_round1_compares_with_what_it_sent),
		cmocka_unit_test(test_goes_below_target_while_shrinking),
		cmocka_unit_test(test_finishing_throttle),
		cmocka_unit_test(test_throttles_fast_dirtier),
		cmocka_unit_test(test_no_throttle_switches_when_flat),
		cmocka_unit_test(test_max_rounds),
		cmocka_unit_test(test_zero_throughput),
		cmocka_unit_test(test_fixed_over_target),
		cmocka_unit_test(test_fixed_just_under_target),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
