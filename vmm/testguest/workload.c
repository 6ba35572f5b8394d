/*
 * Test guest, ring 3: the workload. Runs natively even where ring 0 is
 * emulated, so all steady work is here; ring 0 is entered only for console
 * lines, idling and exit (sys_trap), and for the 100 Hz tick.
 *
 * Each CPU owns a contiguous share of the data pages and is the only one to
 * write or verify them, so the expected generation of every page is known
 * exactly from the owner's (pass, cursor) without any synchronisation.
 */
#include "guest.h"

#define WRITE_BATCH 32
#define VERIFY_BATCH 16      /* per write batch: sweeps 512M in ~1 s */
#define IDLE_VERIFY_BATCH 64 /* when ahead of the rate */
#define MISMATCH_LINES 20

static volatile uint32_t touch_done;
static volatile uint32_t mismatch_lines;

static inline long sys(long nr, long arg)
{
	long r = nr;
	__asm__ volatile("call sys_trap" : "+a"(r) : "D"(arg) : "memory", "cc");
	return r;
}

__attribute__((format(printf, 1, 2))) static void uprintf(const char *f, ...)
{
	char buf[256];
	va_list ap;

	va_start(ap, f);
	vfmt(buf, sizeof(buf), f, ap);
	va_end(ap);
	sys(SYS_WRITE, (long)buf);
}

__attribute__((noreturn)) static void uexit(uint32_t status)
{
	sys(SYS_EXIT, status);
	for (;;)
		__asm__ volatile("pause");
}

static inline uint64_t *page_ptr(uint64_t n)
{
	for (uint32_t i = 0; i < nregions; i++) {
		const struct region *r = &regions[i];
		if (n - r->first < r->pages)
			return (uint64_t *)(uintptr_t)(r->gpa +
						       (n - r->first) * PAGE_SIZE);
	}
	return NULL; /* the kernel checked touch_pages <= data_pages */
}

static void share_of(uint32_t k, uint64_t *first, uint64_t *npages,
		     uint64_t *nwss)
{
	uint64_t t = params.touch_pages, w = params.wss_pages, n = params.ncpus;

	*first = t * k / n;
	*npages = t * (k + 1) / n - *first;
	*nwss = w * (k + 1) / n - w * k / n;
	if (*nwss > *npages)
		*nwss = *npages;
}

static inline uint64_t expected_gen(const struct cpu *me, uint64_t i)
{
	if (i >= me->nwss)
		return 1;
	return i < me->cursor ? me->pass + 1 : me->pass;
}

static void report(struct cpu *me, uint64_t page, uint64_t expected,
		   const uint64_t *p, int page_ok, int sum_ok)
{
	uint32_t line;
	char reason[64] = "";

	me->mismatches++;
	line = __atomic_fetch_add(&mismatch_lines, 1, __ATOMIC_RELAXED);
	if (line == MISMATCH_LINES)
		uprintf("mismatch-limit: %u lines printed, further mismatches "
			"are only counted\n", MISMATCH_LINES);
	if (line >= MISMATCH_LINES)
		return;
	if (!page_ok)
		fmt(reason, sizeof(reason), " reason=page%s stamped=%lu",
		    sum_ok ? "" : ",checksum", p[0]);
	else if (!sum_ok)
		fmt(reason, sizeof(reason), " reason=checksum");
	uprintf("MISMATCH page=%lu expected=%lu got=%lu%s cpu=%u\n", page,
		expected, p[1], reason, me->index);
}

/* Returns 1 if the page is as expected. */
static int check_page(struct cpu *me, uint64_t *p, uint64_t n, uint64_t gen)
{
	int page_ok = p[0] == n, sum_ok = stamp_checksum_ok(p);

	if (page_ok && sum_ok && p[1] == gen)
		return 1;
	report(me, n, gen, p, page_ok, sum_ok);
	return 0;
}

/*
 * Rewrites the next n pages of the wss slice. Each page is checked first:
 * a stale page (a dirty page lost by a migration) would otherwise be
 * overwritten before the sweep finds it.
 */
static void write_batch(struct cpu *me, uint64_t n)
{
	uint64_t pass = me->pass, cursor = me->cursor;

	for (uint64_t j = 0; j < n; j++) {
		uint64_t page = me->first + cursor;
		uint64_t *p = page_ptr(page);

		check_page(me, p, page, pass);
		stamp_write(p, params.seed, page, pass + 1, params.fill);
		if (++cursor == me->nwss) {
			cursor = 0;
			pass++;
			me->pass = pass;
		}
		me->cursor = cursor;
	}
	me->written += n;
}

/* A bad page is rewritten as expected, so each fault is counted once. */
static void verify_batch(struct cpu *me, uint64_t n)
{
	uint64_t v = me->vcursor;

	for (uint64_t j = 0; j < n; j++) {
		uint64_t page = me->first + v, gen = expected_gen(me, v);
		uint64_t *p = page_ptr(page);

		if (!check_page(me, p, page, gen))
			stamp_write(p, params.seed, page, gen, params.fill);
		if (++v == me->npages)
			v = 0;
	}
	me->vcursor = v;
	me->verified += n;
}

static const char *size_str(char *buf, size_t len, uint64_t pages)
{
	if (pages % 256 == 0)
		fmt(buf, len, "%luM", pages / 256);
	else
		fmt(buf, len, "%luK", pages * 4);
	return buf;
}

static void print_banner(void)
{
	static const char *const fills[] = {"random", "text", "sparse"};
	char touch[24], wss[24], rate[24];

	if (params.rate == RATE_MAX)
		fmt(rate, sizeof(rate), "max");
	else
		fmt(rate, sizeof(rate), "%lu", params.rate);
	uprintf("testguest: cpus=%u touch=%s wss=%s rate=%s fill=%s seed=%lu "
		"hb=%u duration=%u idle=%s ram=%luM tsc_khz=%lu\n",
		params.ncpus, size_str(touch, sizeof(touch), params.touch_pages),
		size_str(wss, sizeof(wss), params.wss_pages), rate,
		fills[params.fill], params.seed, params.hb_ms, params.duration_s,
		params.idle_halt ? "halt" : "verify", ram_bytes >> 20, tsc_per_ms);
	for (uint32_t i = 0; i < nregions; i++)
		uprintf("region %u gpa=0x%lx pages=%lu first=%lu\n", i,
			regions[i].gpa, regions[i].pages, regions[i].first);
	for (uint32_t k = 0; k < params.ncpus; k++) {
		uint64_t first, n, w;
		share_of(k, &first, &n, &w);
		uprintf("cpu %u first=%lu pages=%lu wss=%lu\n", k, first, n, w);
	}
}

static void totals(uint64_t *written, uint64_t *verified, uint64_t *bad)
{
	*written = *verified = *bad = 0;
	for (uint32_t k = 0; k < params.ncpus; k++) {
		*written += cpus[k].written;
		*verified += cpus[k].verified;
		*bad += cpus[k].mismatches;
	}
}

/* Guest time in ms: the TSC when ring 0 could calibrate it, else ticks. */
static uint64_t now_ms(const struct cpu *me)
{
	if (tsc_per_ms)
		return rdtsc() / tsc_per_ms;
	return me->ticks * (1000 / TICKS_PER_SEC);
}

/*
 * Pages this CPU may write next under `rate`. A long stall (vCPU not
 * scheduled, VM paused) may bank at most 100 ms of writes, so the guest
 * does not burst to catch up afterwards.
 */
static uint64_t paced_batch(struct cpu *me, uint64_t *base_ms)
{
	const uint64_t rate = params.rate, n = params.ncpus;
	uint64_t now = now_ms(me), cap = rate / n / 10, allowed;

	if (cap < WRITE_BATCH)
		cap = WRITE_BATCH;
	if (rate == 0)
		return 0;
	allowed = rate * (now - *base_ms) / 1000 / n;
	if (allowed > me->written + cap) {
		*base_ms = now - (me->written + cap) * 1000 * n / rate;
		allowed = me->written + cap;
	}
	if (allowed <= me->written)
		return 0;
	return allowed - me->written < WRITE_BATCH ? allowed - me->written
						   : WRITE_BATCH;
}

__attribute__((noreturn)) static void run(struct cpu *me)
{
	const uint64_t start = now_ms(me);
	const uint64_t end = start + (uint64_t)params.duration_s * 1000;
	uint64_t base_ms = start, next_hb = start + params.hb_ms, seq = 0;

	for (;;) {
		uint64_t n = 0;

		if (me->nwss) {
			n = params.rate == RATE_MAX ? WRITE_BATCH
						    : paced_batch(me, &base_ms);
			write_batch(me, n);
		}
		if (n == 0 && params.idle_halt)
			sys(SYS_IDLE, 0);
		else if (me->npages)
			verify_batch(me, n ? VERIFY_BATCH : IDLE_VERIFY_BATCH);
		else
			__asm__ volatile("pause");

		if (me->index != 0)
			continue;
		uint64_t t = now_ms(me), w, v, bad;
		if (params.hb_ms && t >= next_hb) {
			totals(&w, &v, &bad);
			uprintf("hb seq=%lu ticks=%lu written=%lu verified=%lu "
				"mismatches=%lu pass=%lu tsc=%lu\n",
				++seq, me->ticks, w, v, bad, me->pass, rdtsc());
			next_hb += params.hb_ms;
			if (next_hb <= t) /* e.g. after a long pause */
				next_hb = t + params.hb_ms;
		}
		if (params.duration_s && t >= end) {
			totals(&w, &v, &bad);
			uprintf("done ticks=%lu written=%lu verified=%lu "
				"mismatches=%lu status=%u\n",
				me->ticks, w, v, bad, bad ? 1u : 0u);
			uexit(bad ? 1 : 0);
		}
	}
}

void user_main(struct cpu *me)
{
	uint64_t t0 = now_ms(me);

	share_of(me->index, &me->first, &me->npages, &me->nwss);
	if (me->index == 0)
		print_banner();
	for (uint64_t i = 0; i < me->npages; i++)
		stamp_write(page_ptr(me->first + i), params.seed, me->first + i,
			    1, params.fill);
	me->pass = 1;
	me->cursor = 0;
	me->vcursor = 0;
	__atomic_fetch_add(&touch_done, 1, __ATOMIC_RELEASE);
	while (__atomic_load_n(&touch_done, __ATOMIC_ACQUIRE) < params.ncpus)
		__asm__ volatile("pause");
	if (me->index == 0)
		uprintf("ready touched=%lu ms=%lu\n", params.touch_pages,
			now_ms(me) - t0);
	run(me);
}
