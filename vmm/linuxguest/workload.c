/*
 * The test guest's work as a Linux program, for the Linux test VM (init
 * runs it with the kernel command line's words after "--"): one thread per
 * CPU stamps its share of a working set (vmm/testguest/stamp.h: page number,
 * generation, checksum, content from seed/page/generation), rewrites its
 * wss slice at the chosen rate and verifies every page it owns against the
 * generation it expects, so that a page lost or left stale by a migration is
 * found. The output has the test guest's format, so migvm's console scanner
 * and the tests read both alike:
 *
 *   ready touched=N ms=T
 *   hb seq=N ticks=T written=W verified=V mismatches=M pass=P maxgap_ms=G gap_ms=g back=B
 *   MISMATCH page=N expected=G got=G [reason=...] cpu=C
 *   kmsg: LEVEL TEXT        (a kernel message of level warning or worse)
 *   done ticks=T written=W verified=V mismatches=M status=S
 *
 * It also checks time: CLOCK_MONOTONIC, read every 10 ms, never goes back
 * (back= counts it, and a MISMATCH line says so); maxgap_ms is the
 * longest step seen, gap_ms the longest since the last heartbeat: a test
 * compares the steps across a migration with its downtime, and the steps
 * before it with the machine's own noise.
 * ticks are CLOCK_MONOTONIC in 10 ms units since start (the test guest's
 * 100 Hz timer ticks).
 *
 * Parameters: vmm/testguest/README.md (touch wss rate fill seed cpus hb
 * duration idle); cpus= is the number of threads (default: online CPUs).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "guest.h"

#define MISMATCH_LINES_MAX 20
#define CLOCK_STEP_NS 10000000ull /* the clock check's period */

struct worker {
	pthread_t thread;
	uint32_t cpu;
	uint64_t first, pages, wss; /* data pages [first, first+pages) */
	_Atomic uint64_t written, verified, mismatches, pass;
};

static struct params P;
static uint8_t *data;       /* touch_pages pages */
static uint64_t *expected;  /* generation per data page */
static struct worker *workers;
static uint64_t t0_ns;
static atomic_bool stop;
static _Atomic uint64_t mismatch_lines;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

/* cmdline.c's formatter (the test guest has its own; here, libc's). */
int fmt(char *buf, size_t size, const char *f, ...)
{
	va_list ap;
	int n;

	va_start(ap, f);
	n = vsnprintf(buf, size, f, ap);
	va_end(ap);
	return n;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* One line, written whole: lines of several threads never mix. */
static void say(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(buf))
		n = sizeof(buf) - 1;
	pthread_mutex_lock(&out_lock);
	for (int off = 0; off < n;) {
		ssize_t w = write(STDOUT_FILENO, buf + off, (size_t)(n - off));
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		off += (int)w;
	}
	pthread_mutex_unlock(&out_lock);
}

static uint64_t *page_at(uint64_t page)
{
	return (uint64_t *)(data + page * PAGE_SIZE);
}

static void stamp(struct worker *w, uint64_t page)
{
	uint64_t gen = expected[page] + 1;

	stamp_write(page_at(page), P.seed, page, gen, P.fill);
	expected[page] = gen;
	atomic_fetch_add_explicit(&w->written, 1, memory_order_relaxed);
}

static void verify(struct worker *w, uint64_t page)
{
	const uint64_t *p = page_at(page);
	int bad_sum = !stamp_checksum_ok(p), bad_page = p[0] != page;

	atomic_fetch_add_explicit(&w->verified, 1, memory_order_relaxed);
	if (!bad_sum && !bad_page && p[1] == expected[page])
		return;
	atomic_fetch_add_explicit(&w->mismatches, 1, memory_order_relaxed);
	if (atomic_fetch_add(&mismatch_lines, 1) < MISMATCH_LINES_MAX)
		say("MISMATCH page=%llu expected=%llu got=%llu%s%s%s cpu=%u\n",
		    (unsigned long long)page,
		    (unsigned long long)expected[page],
		    (unsigned long long)p[1],
		    bad_sum || bad_page ? " reason=" : "",
		    bad_page ? "page" : "",
		    bad_sum ? (bad_page ? ",checksum" : "checksum") : "",
		    w->cpu);
	else if (atomic_load(&mismatch_lines) == MISMATCH_LINES_MAX + 1)
		say("mismatch-limit: %d lines printed, further mismatches are "
		    "only counted\n", MISMATCH_LINES_MAX);
	/* Rewrite it as expected: one fault is counted once. */
	stamp_write(page_at(page), P.seed, page, expected[page], P.fill);
}

static void *work(void *arg)
{
	struct worker *w = arg;
	uint64_t rate = P.rate == RATE_MAX ? 0 : P.rate / P.ncpus;
	uint64_t next_w = 0, next_v = 0, start = now_ns();

	if (P.rate != RATE_MAX && P.rate && !rate)
		rate = 1;
	while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
		/* Pages this thread may have rewritten by now. */
		uint64_t budget = P.rate == RATE_MAX ? UINT64_MAX
			: (now_ns() - start) / 1000000 * rate / 1000;
		uint64_t done = atomic_load_explicit(&w->written,
						     memory_order_relaxed);

		if (w->wss && done < budget) {
			for (int i = 0; i < 64 && done + (uint64_t)i < budget; i++) {
				stamp(w, w->first + next_w);
				next_w = (next_w + 1) % w->wss;
			}
			continue;
		}
		if (P.idle_halt) {
			usleep(1000);
			continue;
		}
		for (int i = 0; i < 64; i++) {
			verify(w, w->first + next_v);
			if (++next_v == w->pages) {
				next_v = 0;
				atomic_fetch_add_explicit(&w->pass, 1,
							  memory_order_relaxed);
			}
		}
	}
	return NULL;
}

/* The kernel's messages of level warning (4) or worse, as "kmsg:" lines:
 * what the boot said, then anything new. */
static void *kmsg(void *arg)
{
	char rec[1024];
	int fd = open("/dev/kmsg", O_RDONLY | O_CLOEXEC);

	(void)arg;
	if (fd < 0) {
		say("kmsg: - cannot read /dev/kmsg: %s\n", strerror(errno));
		return NULL;
	}
	for (;;) {
		ssize_t n = read(fd, rec, sizeof(rec) - 1);
		char *text, *end;
		unsigned long prio;

		if (n < 0 && (errno == EINTR || errno == EPIPE))
			continue; /* EPIPE: records overwritten meanwhile */
		if (n <= 0)
			break;
		rec[n] = '\0';
		prio = strtoul(rec, NULL, 10);
		text = strchr(rec, ';');
		if (!text || (prio & 7) > 4)
			continue;
		text++;
		end = strchr(text, '\n');
		if (end)
			*end = '\0';
		say("kmsg: %lu %s\n", prio & 7, text);
	}
	close(fd);
	return NULL;
}

static void totals(uint64_t *wr, uint64_t *ve, uint64_t *mm, uint64_t *pass)
{
	*wr = *ve = *mm = 0;
	*pass = atomic_load(&workers[0].pass);
	for (uint32_t i = 0; i < P.ncpus; i++) {
		*wr += atomic_load(&workers[i].written);
		*ve += atomic_load(&workers[i].verified);
		*mm += atomic_load(&workers[i].mismatches);
	}
}

static int setup(int argc, char **argv)
{
	char line[1024] = "", err[160];
	long online = sysconf(_SC_NPROCESSORS_ONLN);
	size_t len = 0;

	for (int i = 1; i < argc; i++) {
		int n = snprintf(line + len, sizeof(line) - len, "%s%s",
				 len ? " " : "", argv[i]);
		if (n < 0 || (size_t)n >= sizeof(line) - len) {
			say("BADARG %s: the parameters are too long\n", argv[i]);
			return -1;
		}
		len += (size_t)n;
	}
	if (parse_cmdline(line, &P, err, sizeof(err)) < 0) {
		say("BADARG %s\n", err);
		return -1;
	}
	if (!strstr(line, "cpus="))
		P.ncpus = online > 0 && online <= MAX_CPUS ? (uint32_t)online : 1;
	data = mmap(NULL, P.touch_pages * PAGE_SIZE, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	expected = calloc(P.touch_pages, sizeof(*expected));
	workers = calloc(P.ncpus, sizeof(*workers));
	if (data == MAP_FAILED || !expected || !workers) {
		say("workload: %llu pages: out of memory\n",
		    (unsigned long long)P.touch_pages);
		return -1;
	}
	for (uint32_t i = 0; i < P.ncpus; i++) {
		struct worker *w = &workers[i];
		w->cpu = i;
		w->first = P.touch_pages * i / P.ncpus;
		w->pages = P.touch_pages * (i + 1) / P.ncpus - w->first;
		w->wss = P.wss_pages * (i + 1) / P.ncpus -
			 P.wss_pages * i / P.ncpus;
		if (w->wss > w->pages)
			w->wss = w->pages;
	}
	return 0;
}

int main(int argc, char **argv)
{
	uint64_t seq = 0, last, next_hb, maxgap = 0, gap = 0, back = 0, end_ns = 0;
	uint64_t wr, ve, mm, pass;
	pthread_t km;

	t0_ns = now_ns();
	if (setup(argc, argv) < 0)
		return 2;
	pthread_create(&km, NULL, kmsg, NULL);
	pthread_detach(km);
	/* The first touch: every page stamped once (generation 1). */
	for (uint64_t pg = 0; pg < P.touch_pages; pg++)
		stamp(&workers[pg * P.ncpus / P.touch_pages], pg);
	for (uint32_t i = 0; i < P.ncpus; i++)
		atomic_store(&workers[i].written, 0); /* counted from ready */
	say("ready touched=%llu ms=%llu cpus=%u\n",
	    (unsigned long long)P.touch_pages,
	    (unsigned long long)((now_ns() - t0_ns) / 1000000), P.ncpus);
	for (uint32_t i = 0; i < P.ncpus; i++) {
		cpu_set_t set;
		pthread_attr_t a;

		pthread_attr_init(&a);
		CPU_ZERO(&set);
		CPU_SET(i % CPU_SETSIZE, &set);
		pthread_attr_setaffinity_np(&a, sizeof(set), &set);
		if (pthread_create(&workers[i].thread, &a, work, &workers[i])) {
			say("workload: cannot start thread %u\n", i);
			return 1;
		}
		pthread_attr_destroy(&a);
	}
	last = now_ns();
	next_hb = last + (uint64_t)P.hb_ms * 1000000ull;
	if (P.duration_s)
		end_ns = last + (uint64_t)P.duration_s * 1000000000ull;
	for (;;) {
		struct timespec ts = { 0, CLOCK_STEP_NS };
		uint64_t t;

		nanosleep(&ts, NULL);
		t = now_ns();
		if (t < last) {
			back++;
			say("MISMATCH clock went back by %llu ns\n",
			    (unsigned long long)(last - t));
		} else {
			if (t - last > maxgap)
				maxgap = t - last;
			if (t - last > gap)
				gap = t - last;
		}
		last = t;
		if (P.hb_ms && t >= next_hb) {
			totals(&wr, &ve, &mm, &pass);
			say("hb seq=%llu ticks=%llu written=%llu verified=%llu "
			    "mismatches=%llu pass=%llu maxgap_ms=%llu gap_ms=%llu "
			    "back=%llu\n",
			    (unsigned long long)++seq,
			    (unsigned long long)((t - t0_ns) / 10000000ull),
			    (unsigned long long)wr, (unsigned long long)ve,
			    (unsigned long long)(mm + back),
			    (unsigned long long)pass,
			    (unsigned long long)(maxgap / 1000000ull),
			    (unsigned long long)(gap / 1000000ull),
			    (unsigned long long)back);
			gap = 0;
			next_hb += (uint64_t)P.hb_ms * 1000000ull;
			if (next_hb < t)
				next_hb = t + (uint64_t)P.hb_ms * 1000000ull;
		}
		if (end_ns && t >= end_ns)
			break;
	}
	atomic_store(&stop, true);
	for (uint32_t i = 0; i < P.ncpus; i++)
		pthread_join(workers[i].thread, NULL);
	totals(&wr, &ve, &mm, &pass);
	say("done ticks=%llu written=%llu verified=%llu mismatches=%llu "
	    "status=%d\n", (unsigned long long)((now_ns() - t0_ns) / 10000000ull),
	    (unsigned long long)wr, (unsigned long long)ve,
	    (unsigned long long)(mm + back), mm + back ? 1 : 0);
	return mm + back ? 1 : 0;
}
