/*
 * Test guest: command-line parameters, e.g.
 *   touch=512M wss=64M rate=max fill=random seed=1 cpus=1 hb=1000 duration=0
 * Runs once in ring 0 on the BSP (the AP count is needed before ring 3).
 */
#include "guest.h"

static int streq(const char *a, size_t alen, const char *b)
{
	size_t i = 0;

	for (; i < alen && b[i]; i++)
		if (a[i] != b[i])
			return 0;
	return i == alen && !b[i];
}

/* Decimal, or hex with 0x; with sizes a K/M/G suffix. No overflow. */
static int parse_u64(const char *s, size_t n, int size_suffix, uint64_t *out)
{
	uint64_t v = 0, mult = 1, base = 10;
	size_t i = 0;

	if (n > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		i = 2;
	}
	if (size_suffix && n > i) {
		switch (s[n - 1]) {
		case 'k': case 'K': mult = 1ull << 10; n--; break;
		case 'm': case 'M': mult = 1ull << 20; n--; break;
		case 'g': case 'G': mult = 1ull << 30; n--; break;
		}
	}
	if (i == n)
		return -1;
	for (; i < n; i++) {
		char c = s[i];
		uint64_t d;

		if (c >= '0' && c <= '9')
			d = (uint64_t)(c - '0');
		else if (base == 16 && c >= 'a' && c <= 'f')
			d = (uint64_t)(c - 'a' + 10);
		else if (base == 16 && c >= 'A' && c <= 'F')
			d = (uint64_t)(c - 'A' + 10);
		else
			return -1;
		if (v > (UINT64_MAX - d) / base)
			return -1;
		v = v * base + d;
	}
	if (v > UINT64_MAX / mult)
		return -1;
	*out = v * mult;
	return 0;
}

int parse_cmdline(const char *s, struct params *p, char *err, size_t errlen)
{
	uint64_t touch = 512ull << 20, wss = 64ull << 20;

	*p = (struct params){
		.rate = RATE_MAX,
		.seed = 1,
		.fill = STAMP_FILL_RANDOM,
		.ncpus = 1,
		.hb_ms = 1000,
	};
	while (*s) {
		const char *tok, *eq = NULL, *val;
		size_t klen, vlen, tlen;
		uint64_t v = 0;
		int bad = 0;

		while (*s == ' ' || *s == '\t' || *s == '\n')
			s++;
		if (!*s)
			break;
		tok = s;
		while (*s && *s != ' ' && *s != '\t' && *s != '\n') {
			if (*s == '=' && !eq)
				eq = s;
			s++;
		}
		tlen = (size_t)(s - tok);
		if (!eq) {
			fmt(err, errlen, "%.*s: expected key=value", (int)tlen, tok);
			return -1;
		}
		klen = (size_t)(eq - tok);
		val = eq + 1;
		vlen = (size_t)(s - val);

		if (streq(tok, klen, "touch") || streq(tok, klen, "wss")) {
			bad = parse_u64(val, vlen, 1, &v);
			if (tok[0] == 't')
				touch = v;
			else
				wss = v;
		} else if (streq(tok, klen, "rate")) {
			if (streq(val, vlen, "max"))
				v = RATE_MAX;
			else
				bad = parse_u64(val, vlen, 0, &v) || v > 1000000000;
			p->rate = v;
		} else if (streq(tok, klen, "fill")) {
			if (streq(val, vlen, "random"))
				p->fill = STAMP_FILL_RANDOM;
			else if (streq(val, vlen, "text"))
				p->fill = STAMP_FILL_TEXT;
			else if (streq(val, vlen, "sparse"))
				p->fill = STAMP_FILL_SPARSE;
			else
				bad = 1;
		} else if (streq(tok, klen, "seed")) {
			bad = parse_u64(val, vlen, 0, &p->seed);
		} else if (streq(tok, klen, "cpus")) {
			bad = parse_u64(val, vlen, 0, &v) || v < 1 || v > MAX_CPUS;
			p->ncpus = (uint32_t)v;
		} else if (streq(tok, klen, "hb")) {
			/* Heartbeats are counted in 10 ms ticks. */
			bad = parse_u64(val, vlen, 0, &v) || v > 86400000 ||
			      (v && v < 1000 / TICKS_PER_SEC);
			p->hb_ms = (uint32_t)v;
		} else if (streq(tok, klen, "duration")) {
			bad = parse_u64(val, vlen, 0, &v) || v > 100000000;
			p->duration_s = (uint32_t)v;
		} else if (streq(tok, klen, "idle")) {
			if (streq(val, vlen, "verify"))
				p->idle_halt = 0;
			else if (streq(val, vlen, "halt"))
				p->idle_halt = 1;
			else
				bad = 1;
		} else {
			fmt(err, errlen, "%.*s: unknown parameter", (int)tlen, tok);
			return -1;
		}
		if (bad) {
			fmt(err, errlen, "%.*s: bad value", (int)tlen, tok);
			return -1;
		}
	}
	/* Rounded up: touch=1 still stamps one page. Bounded so that the
	 * page counts below cannot overflow anything. */
	if (touch > (1ull << 50) || wss > (1ull << 50)) {
		fmt(err, errlen, "touch/wss: too large");
		return -1;
	}
	p->wss_pages = (wss + PAGE_SIZE - 1) / PAGE_SIZE;
	p->touch_pages = (touch + PAGE_SIZE - 1) / PAGE_SIZE;
	if (p->touch_pages < p->wss_pages)
		p->touch_pages = p->wss_pages;
	return 0;
}
