/*
 * A real source (mig_source_*) against a real destination (mig_dest_*) on
 * loopback, through this file's own man-in-the-middle relay, with and
 * without TLS: what crosses the wire is readable only without it, a byte
 * changed on the way fails the migration (the source's VM runs on, the
 * destination's is never resumed), and a peer with other credentials, or
 * none, never completes a migration nor fails the destination's.
 *
 * No KVM: each "VM" is an anonymous mapping, the ops count their calls,
 * and the source's dirty log is this file's backend
 * (mig__dirty_set_test_backend(), global, used only by the source: the
 * destination tracks nothing), fed by guest_write().
 *
 * The relay (one thread) listens on loopback; the source's uri points at
 * it; each connection it accepts it joins to the destination's port and
 * forwards both ways, recording the source-to-destination bytes and, if
 * asked, changing one of them.
 *
 * Set TLS_MIGRATE_VERBOSE=1 to see the library's log as it happens; a
 * failed test prints it anyway.
 *
 * `test_tls_migrate --bench [MiB] [reps]` (default 512 and 3) measures
 * what TLS costs instead (a measurement, not a test): the same migration
 * straight to the destination (no relay) in clear and with a pre-shared
 * key, alternately, with one and two connections, and GnuTLS's AES-GCM
 * on one core for comparison.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem, accept4, pipe2 */
#endif
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "mig_test.h"
#include <gnutls/crypto.h>

#include "tls_certs.h"
#include "dirty.h"
#include "internal.h"
#include "migrate/migrate.h"

static uint32_t n_pages = 2048u;          /* 8 MiB of guest memory */
#define PAGES n_pages
#define TEST_DIRTY_MAX_PAGES (16384u * 256u) /* --bench: 16 GiB at most */
#define MEM_SIZE ((size_t)PAGES * MIG_PAGE_SIZE)
#define GPA 0x100000u
#define TOKEN "tok-SECRET-7f3a9c21e5-never-in-clear"
#define PSK_ID "migration-test"
#define CAP_MAX (64u << 20)
#define RELAY_DEADLINE_MS 30000u
#define RELAY_MAX_PAIRS 8
#define WAIT_MS 20000u                    /* per side, per test */
#define TAMPER_AT (200u << 10)            /* mid round 1 */

/* 64 bytes that stand out in a capture. */
static const char MARKER[65] =
	"<<LIBMIGRATE-TLS-MIGRATE-MARKER: readable guest page content!!>>";

static const uint8_t key_a[32] = "0123456789abcdef0123456789abcdef";
static const uint8_t key_b[32] = "0123456789abcdef0123456789abcdeX";
static const uint8_t cpuid[4] = { 1, 2, 3, 4 };

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* the dirty log: test_dirty_log.h */
#include "test_dirty_log.h"

/* ---- the world: two VMs, the relay, the log ---- */

struct world;

/* One side's VM: its ops' counters, and its done callback. */
struct side {
	const char *name;                 /* "src" / "dst" */
	struct world *w;
	int pause, resume, save, load, load_ok, progress;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int done;
	mig_error result;
};

struct pair {
	int s, d;             /* the source's end, the destination's end */
	size_t s2d;           /* bytes forwarded from s */
	int s_eof, d_eof;     /* that end's reads are over */
};

struct relay {
	int lfd, port, dst_port;
	int stop[2];
	pthread_t thr;
	int running;
	uint8_t *cap;
	size_t cap_len;
	size_t s2d, d2s;          /* bytes forwarded each way */
	long long flip_at;        /* s2d offset to change, -1: none */
	int flip_conn;            /* flip_at counts in this connection's
				     stream (in the order accepted: the
				     source's connection index), -1: in
				     all of them together */
	struct side *flip_after_pause; /* change the first chunk after this
					  VM's pause */
	int flip_d2s;             /* ... of the destination-to-source way */
	int flipped;
	size_t flipped_off;
	size_t d2s_at_flip;       /* d2s when the source-to-destination
				     byte was changed */
	int accepted;
	int timed_out;
	struct pair p[RELAY_MAX_PAIRS];
	int np;
};

struct world {
	struct side s, d;
	uint8_t *smem, *dmem;
	int nullfd;
	mig_source *src;
	mig_dest *dst;
	struct relay relay;
	char uri[64];
	const char *token;          /* the source's (NULL: TOKEN) */
	pthread_mutex_t loglock;
	char *log;
	size_t log_len;
	int verbose;
	int passed;
	int direct;           /* the source dials the destination, no relay */
	int compress;         /* the source's compress (default OFF) */
	uint64_t t0;
	int fds0;             /* open fds before the test */
};

#define LOG_MAX (256u << 10)

static void log_add(struct world *w, const char *who, const char *lvl,
		    const char *msg)
{
	char line[600];
	int n = snprintf(line, sizeof(line), "%6llu ms [%s] %s: %s\n",
			 (unsigned long long)(now_ms() - w->t0), who, lvl, msg);

	if (n < 0)
		return;
	if ((size_t)n >= sizeof(line))
		n = sizeof(line) - 1;
	pthread_mutex_lock(&w->loglock);
	if (w->log_len + (size_t)n < LOG_MAX) {
		memcpy(w->log + w->log_len, line, (size_t)n);
		w->log_len += (size_t)n;
		w->log[w->log_len] = '\0';
	}
	pthread_mutex_unlock(&w->loglock);
	if (w->verbose)
		fputs(line, stderr);
}

static void on_log(mig_log_level lvl, const char *msg, void *opaque)
{
	static const char *const names[] = { "ERROR", "WARN", "INFO", "DEBUG" };
	struct side *x = opaque;

	log_add(x->w, x->name, (unsigned)lvl < 4 ? names[lvl] : "?", msg);
}

static int log_has(struct world *w, const char *what)
{
	int r;

	pthread_mutex_lock(&w->loglock);
	r = strstr(w->log, what) != NULL;
	pthread_mutex_unlock(&w->loglock);
	return r;
}

static void on_done(const mig_error *err, void *opaque)
{
	struct side *x = opaque;
	char msg[400];

	snprintf(msg, sizeof(msg), "done: %d (%s) %s", err->code,
		 mig_err_name(err->code), err->msg);
	log_add(x->w, x->name, "TEST", msg);
	pthread_mutex_lock(&x->lock);
	x->result = *err;
	x->done = 1;
	pthread_cond_broadcast(&x->cond);
	pthread_mutex_unlock(&x->lock);
}

/* Has side x ended? Waits up to ms for it. */
static int side_wait_done(struct side *x, unsigned ms)
{
	struct timespec ts;
	int done;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000u;
	ts.tv_nsec += (long)(ms % 1000u) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&x->lock);
	while (!x->done &&
	       pthread_cond_timedwait(&x->cond, &x->lock, &ts) != ETIMEDOUT)
		;
	done = x->done;
	pthread_mutex_unlock(&x->lock);
	return done;
}

static int side_is_done(struct side *x)
{
	int d;

	pthread_mutex_lock(&x->lock);
	d = x->done;
	pthread_mutex_unlock(&x->lock);
	return d;
}

/* ---- the VMs' ops ---- */

static int op_pause(void *o, mig_error *e)
{
	struct side *x = o;

	(void)e;
	__atomic_add_fetch(&x->pause, 1, __ATOMIC_SEQ_CST);
	log_add(x->w, x->name, "TEST", "VM paused");
	return 0;
}

static int op_resume(void *o, mig_error *e)
{
	struct side *x = o;

	(void)e;
	__atomic_add_fetch(&x->resume, 1, __ATOMIC_SEQ_CST);
	log_add(x->w, x->name, "TEST", "VM resumed");
	return 0;
}

static int op_save(void *o, mig_state *st, mig_error *e)
{
	struct side *x = o;

	(void)e;
	__atomic_add_fetch(&x->save, 1, __ATOMIC_SEQ_CST);
	return mig_state_add(st, "dev", "device-state", 12);
}

static int op_load(void *o, const mig_state *in, mig_error *e)
{
	struct side *x = o;
	const void *data;
	size_t len;

	__atomic_add_fetch(&x->load, 1, __ATOMIC_SEQ_CST);
	if (mig_state_get(in, "dev", &data, &len) < 0)
		return mig__err(e, -ENOENT, "no \"dev\" item");
	if (len != 12 || memcmp(data, "device-state", 12) != 0)
		return mig__err(e, -EINVAL, "\"dev\" item garbled");
	__atomic_add_fetch(&x->load_ok, 1, __ATOMIC_SEQ_CST);
	return 0;
}

static const mig_vm_ops ops = {
	.pause = op_pause,
	.resume = op_resume,
	.save_state = op_save,
	.load_state = op_load,
};

/* ---- guest memory ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
	uint64_t x = rng_state;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return rng_state = x;
}

/* Page p as version v: the marker over and over with the page and version
 * at its start (compressible but marked), one page in eight random with
 * the marker at its start, one in sixteen never touched (zero). */
static void fill_page(uint8_t *mem, uint32_t p, uint32_t v)
{
	uint8_t *pg = mem + (size_t)p * MIG_PAGE_SIZE;

	if (p % 16 == 15 && v == 0)
		return;
	if (p % 8 == 3) {
		for (size_t i = 0; i < MIG_PAGE_SIZE; i += 8) {
			uint64_t r = rnd();
			memcpy(pg + i, &r, 8);
		}
		memcpy(pg + 64, MARKER, 64);
	} else {
		for (size_t i = 0; i < MIG_PAGE_SIZE; i += 64)
			memcpy(pg + i, MARKER, 64);
	}
	memcpy(pg, &p, 4);
	memcpy(pg + 4, &v, 4);
}

/* The guest writes page p: new contents, and the dirty log sees it. */
static void guest_write(struct world *w, uint32_t p, uint32_t v)
{
	fill_page(w->smem, p, v);
	test_dirty_mark(p);
}

/* After each of the first three rounds (pre-copy, the VM running: the
 * engine pauses it only after this returns), the guest writes some pages,
 * so that later rounds and stop-and-copy carry pages too. */
static void on_progress(const mig_stats *st, void *opaque)
{
	struct side *x = opaque;
	int n = __atomic_add_fetch(&x->progress, 1, __ATOMIC_SEQ_CST);

	(void)st;
	if (n > 3)
		return;
	for (uint32_t i = 0; i < 24; i++)
		guest_write(x->w, (i * 83u + (uint32_t)n * 7u) % PAGES,
			    (uint32_t)n);
}

/* ---- the relay ---- */

static void pair_close(struct pair *p)
{
	if (p->s >= 0)
		close(p->s);
	if (p->d >= 0)
		close(p->d);
	p->s = p->d = -1;
}

static int relay_stopping(struct relay *r)
{
	struct pollfd pf = { .fd = r->stop[0], .events = POLLIN };

	return poll(&pf, 1, 0) > 0;
}

/* All of buf to fd (non-blocking), bounded by the deadline; 0 or -1. */
static int write_all(struct relay *r, int fd, const uint8_t *buf, size_t n,
		     uint64_t deadline)
{
	while (n) {
		ssize_t k = send(fd, buf, n, MSG_NOSIGNAL);

		if (k > 0) {
			buf += k;
			n -= (size_t)k;
			continue;
		}
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			struct pollfd pf[2] = {
				{ .fd = fd, .events = POLLOUT },
				{ .fd = r->stop[0], .events = POLLIN },
			};
			if (now_ms() > deadline) {
				r->timed_out = 1;
				return -1;
			}
			if (poll(pf, 2, 100) > 0 && (pf[1].revents & POLLIN))
				return -1;
			continue;
		}
		return -1;
	}
	return 0;
}

/* Source to destination: recorded, perhaps changed, forwarded. */
static void s2d_chunk(struct relay *r, struct pair *p, uint8_t *buf, size_t n)
{
	size_t base = r->flip_conn < 0 ? r->s2d : p->s2d;

	if (!r->flipped && r->flip_at >= 0 &&
	    (r->flip_conn < 0 || p == &r->p[r->flip_conn]) &&
	    (size_t)r->flip_at >= base && (size_t)r->flip_at < base + n) {
		buf[(size_t)r->flip_at - base] ^= 0x5a;
		r->flipped = 1;
		r->flipped_off = (size_t)r->flip_at;
	}
	if (!r->flipped && r->flip_after_pause && !r->flip_d2s &&
	    __atomic_load_n(&r->flip_after_pause->pause, __ATOMIC_SEQ_CST) > 0) {
		buf[n - 1] ^= 0x5a;
		r->flipped = 1;
		r->flipped_off = r->s2d + n - 1;
	}
	if (r->flipped && !r->d2s_at_flip)
		r->d2s_at_flip = r->d2s;
	if (r->cap_len < CAP_MAX) {
		size_t k = MIG_MIN(n, (size_t)CAP_MAX - r->cap_len);
		memcpy(r->cap + r->cap_len, buf, k);
		r->cap_len += k;
	}
	r->s2d += n;
	p->s2d += n;
}

static int dial(int port)
{
	struct sockaddr_in sa = { 0 };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static void *relay_main(void *arg)
{
	struct relay *r = arg;
	uint64_t deadline = now_ms() + RELAY_DEADLINE_MS;
	uint8_t *buf = malloc(65536);

	if (!buf)
		return NULL;

	for (;;) {
		struct pollfd pf[2 + 2 * RELAY_MAX_PAIRS];
		int who[2 + 2 * RELAY_MAX_PAIRS]; /* pair*2 + (0: s, 1: d) */
		int n = 0;
		uint64_t now = now_ms();

		if (now >= deadline) {
			r->timed_out = 1;
			break;
		}
		pf[n].fd = r->stop[0];
		pf[n].events = POLLIN;
		who[n++] = -2;
		if (r->np < RELAY_MAX_PAIRS) {
			pf[n].fd = r->lfd;
			pf[n].events = POLLIN;
			who[n++] = -1;
		}
		for (int i = 0; i < r->np; i++) {
			struct pair *p = &r->p[i];
			if (p->s < 0)
				continue;
			if (!p->s_eof) {
				pf[n].fd = p->s;
				pf[n].events = POLLIN;
				who[n++] = i * 2;
			}
			if (!p->d_eof) {
				pf[n].fd = p->d;
				pf[n].events = POLLIN;
				who[n++] = i * 2 + 1;
			}
		}
		if (poll(pf, (nfds_t)n, 100) <= 0)
			continue;
		if (pf[0].revents)
			break;
		for (int k = 1; k < n; k++) {
			if (!pf[k].revents)
				continue;
			if (who[k] == -1) {
				int a = accept4(r->lfd, NULL, NULL, SOCK_CLOEXEC);
				int d, one = 1;

				if (a < 0)
					continue;
				d = dial(r->dst_port);
				if (d < 0) { /* nobody there: hang up */
					close(a);
					continue;
				}
				setsockopt(a, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
				setsockopt(d, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
				fcntl(a, F_SETFL, fcntl(a, F_GETFL) | O_NONBLOCK);
				fcntl(d, F_SETFL, fcntl(d, F_GETFL) | O_NONBLOCK);
				r->p[r->np++] = (struct pair){ .s = a, .d = d };
				r->accepted++;
				continue;
			}
			struct pair *p = &r->p[who[k] / 2];
			int from_s = who[k] % 2 == 0;
			int in = from_s ? p->s : p->d, out = from_s ? p->d : p->s;
			ssize_t got;

			if (p->s < 0)
				continue;
			got = read(in, buf, 65536);
			if (got < 0 && (errno == EAGAIN || errno == EINTR))
				continue;
			if (got < 0) { /* reset: both ends go */
				pair_close(p);
				continue;
			}
			if (got == 0) {
				shutdown(out, SHUT_WR);
				if (from_s)
					p->s_eof = 1;
				else
					p->d_eof = 1;
				if (p->s_eof && p->d_eof)
					pair_close(p);
				continue;
			}
			if (from_s) {
				s2d_chunk(r, p, buf, (size_t)got);
			} else {
				if (!r->flipped && r->flip_d2s &&
				    __atomic_load_n(&r->flip_after_pause->pause,
						    __ATOMIC_SEQ_CST) > 0) {
					buf[got - 1] ^= 0x5a;
					r->flipped = 1;
					r->flipped_off = r->d2s + (size_t)got - 1;
				}
				r->d2s += (size_t)got;
			}
			if (write_all(r, out, buf, (size_t)got, deadline) < 0)
				pair_close(p);
		}
		if (relay_stopping(r))
			break;
	}
	for (int i = 0; i < r->np; i++)
		pair_close(&r->p[i]);
	free(buf);
	return NULL;
}

static void relay_start(struct relay *r, int dst_port)
{
	struct sockaddr_in sa = { 0 };
	socklen_t sl = sizeof(sa);

	r->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(r->lfd >= 0);
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(r->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(r->lfd, 16), 0);
	assert_int_equal(getsockname(r->lfd, (struct sockaddr *)&sa, &sl), 0);
	r->port = ntohs(sa.sin_port);
	r->dst_port = dst_port;
	assert_int_equal(pipe2(r->stop, O_CLOEXEC), 0);
	r->cap = malloc(CAP_MAX);
	assert_non_null(r->cap);
	assert_int_equal(pthread_create(&r->thr, NULL, relay_main, r), 0);
	r->running = 1;
}

static void relay_stop(struct relay *r)
{
	if (!r->running)
		return;
	assert_int_equal(write(r->stop[1], "x", 1), 1);
	pthread_join(r->thr, NULL);
	r->running = 0;
	close(r->stop[0]);
	close(r->stop[1]);
	close(r->lfd);
}

/* ---- set-up and tear-down ---- */

/* Entries in a /proc/self directory: open fds, or threads (the
 * directory's own fd not counted). */
static int count_entries(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return strcmp(dir, "/proc/self/fd") == 0 ? n - 1 : n;
}

static void dump_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;

	if (!d)
		return;
	while ((e = readdir(d))) {
		char path[300], target[300];
		ssize_t n;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
		n = readlink(path, target, sizeof(target) - 1);
		target[n > 0 ? n : 0] = '\0';
		fprintf(stderr, "  fd %s -> %s\n", e->d_name, target);
	}
	closedir(d);
}

static int setup(void **state)
{
	struct world *w = calloc(1, sizeof(*w));
	const char *v = getenv("TLS_MIGRATE_VERBOSE");

	assert_non_null(w);
	w->fds0 = count_entries("/proc/self/fd");
	w->t0 = now_ms();
	w->verbose = v && *v && *v != '0';
	pthread_mutex_init(&w->loglock, NULL);
	w->log = calloc(1, LOG_MAX + 1);
	assert_non_null(w->log);
	w->s.name = "src";
	w->d.name = "dst";
	w->s.w = w->d.w = w;
	pthread_mutex_init(&w->s.lock, NULL);
	pthread_cond_init(&w->s.cond, NULL);
	pthread_mutex_init(&w->d.lock, NULL);
	pthread_cond_init(&w->d.cond, NULL);
	w->relay.flip_at = -1;
	w->relay.flip_conn = -1;
	w->relay.lfd = -1;
	w->smem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	w->dmem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(w->smem != MAP_FAILED);
	assert_true(w->dmem != MAP_FAILED);
	for (uint32_t p = 0; p < PAGES; p++)
		fill_page(w->smem, p, 0);
	test_dirty_reset();
	w->nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	assert_true(w->nullfd >= 0);
	mig__dirty_set_test_backend(&test_dirty);
	*state = w;
	return 0;
}

static int teardown(void **state)
{
	struct world *w = *state;
	int fds, threads, rc = 0;

	/* a test that failed half-way may leave either side running:
	 * destroy cancels and joins */
	mig_source_destroy(w->src);
	mig_dest_destroy(w->dst);
	relay_stop(&w->relay);
	mig__dirty_set_test_backend(NULL);
	if (!w->passed) {
		fprintf(stderr, "---- log of the failed test ----\n%s"
			"---- relay: accepted %d, s->d %zu, d->s %zu, flipped %d at %zu, timed out %d ----\n",
			w->log, w->relay.accepted, w->relay.s2d, w->relay.d2s,
			w->relay.flipped, w->relay.flipped_off,
			w->relay.timed_out);
	} else if (w->verbose) {
		fprintf(stderr, "relay: accepted %d, s->d %zu, d->s %zu\n",
			w->relay.accepted, w->relay.s2d, w->relay.d2s);
	}
	free(w->relay.cap);
	close(w->nullfd);
	munmap(w->smem, MEM_SIZE);
	munmap(w->dmem, MEM_SIZE);
	pthread_mutex_destroy(&w->s.lock);
	pthread_cond_destroy(&w->s.cond);
	pthread_mutex_destroy(&w->d.lock);
	pthread_cond_destroy(&w->d.cond);
	pthread_mutex_destroy(&w->loglock);
	free(w->log);
	/* nothing left behind: every fd closed, every thread joined */
	fds = count_entries("/proc/self/fd");
	threads = count_entries("/proc/self/task");
	if (fds != w->fds0 || threads != 1) {
		fprintf(stderr, "LEFT BEHIND: %d fds (%d before), %d threads\n",
			fds, w->fds0, threads);
		dump_fds();
		rc = -1;
	}
	free(w);
	return rc;
}

static void vm_of(struct world *w, struct side *x, uint8_t *mem, mig_vm *vm,
		  mig_region *reg)
{
	reg->slot = 0;
	reg->gpa = GPA;
	reg->size = MEM_SIZE;
	reg->hva = mem;
	vm->vm_fd = w->nullfd;
	vm->regions = reg;
	vm->nr_regions = 1;
	vm->vcpu_fds = &w->nullfd;
	vm->nr_vcpus = 1;
	vm->cpuid = cpuid;
	vm->cpuid_len = sizeof(cpuid);
	vm->ops = &ops;
	vm->opaque = x;
}

/* The destination, listening (on loopback, any port), started. `tls` is
 * set and the caller's reference dropped at once (the library keeps its
 * own). */
static void dest_up(struct world *w, mig_tls *tls)
{
	mig_dest_config cfg = { 0 };
	mig_region reg;
	mig_error err = { 0 };

	vm_of(w, &w->d, w->dmem, &cfg.vm, &reg);
	cfg.uri = "tcp:127.0.0.1:0";
	cfg.token = TOKEN;
	cfg.timeout_ms = 10000;
	cfg.cb.log = on_log;
	cfg.cb.done = on_done;
	if (mig_dest_create(&w->dst, &cfg, &err) < 0)
		fail_msg("mig_dest_create: %s", err.msg);
	if (mig_dest_set_tls(w->dst, tls, &err) < 0)
		fail_msg("mig_dest_set_tls: %s", err.msg);
	mig_tls_free(tls);
	if (mig_dest_start(w->dst, &err) < 0)
		fail_msg("mig_dest_start: %s", err.msg);
	assert_true(mig_dest_port(w->dst) > 0);
}

/* The relay in front of the destination, and a source aimed at the relay
 * with `conns` connections and compression off (so that pages cross as
 * they are in memory). Not started. */
static void source_make(struct world *w, uint32_t conns, mig_tls *tls)
{
	mig_source_config cfg = { 0 };
	mig_region reg;
	mig_error err = { 0 };

	if (!w->direct)
		relay_start(&w->relay, mig_dest_port(w->dst));
	snprintf(w->uri, sizeof(w->uri), "tcp:127.0.0.1:%d",
		 w->direct ? mig_dest_port(w->dst) : w->relay.port);
	vm_of(w, &w->s, w->smem, &cfg.vm, &reg);
	mig_params_init(&cfg.params);
	cfg.params.connections = conns;
	cfg.params.compress = w->compress ? (mig_compress)w->compress
					  : MIG_COMPRESS_OFF;
	cfg.params.stall_timeout_ms = 10000;
	cfg.uri = w->uri;
	cfg.token = w->token ? w->token : TOKEN;
	cfg.cb.log = on_log;
	cfg.cb.done = on_done;
	cfg.cb.progress = on_progress;
	if (mig_source_create(&w->src, &cfg, &err) < 0)
		fail_msg("mig_source_create: %s", err.msg);
	if (mig_source_set_tls(w->src, tls, &err) < 0)
		fail_msg("mig_source_set_tls: %s", err.msg);
	mig_tls_free(tls);
}

static void source_start(struct world *w)
{
	mig_error err = { 0 };

	if (mig_source_start(w->src, &err) < 0)
		fail_msg("mig_source_start: %s", err.msg);
}

/* Side x ends within WAIT_MS, or the test fails as a hang (after
 * canceling both sides, so that tear-down can join them). */
static void must_end(struct world *w, struct side *x, const char *what)
{
	if (side_wait_done(x, WAIT_MS))
		return;
	mig_source_cancel(w->src);
	if (w->dst)
		mig_dest_cancel(w->dst);
	fail_msg("HANG: %s: the %s did not end within %u ms", what, x->name,
		 WAIT_MS);
}

static int source_result(struct world *w, mig_error *err)
{
	must_end(w, &w->s, "source");
	return mig_source_wait(w->src, err);
}

static int dest_result(struct world *w, mig_error *err)
{
	must_end(w, &w->d, "destination");
	return mig_dest_wait(w->dst, err);
}

/* The destination is still waiting for its source: not ended, no
 * session, nothing loaded, never resumed. Then cancel it: it ends with
 * MIG_E_CANCELED. */
static void dest_still_waiting_then_cancel(struct world *w)
{
	mig_error err = { 0 };
	mig_stats st;
	int rc;

	usleep(200 * 1000); /* a failure would have shown by now */
	assert_false(side_is_done(&w->d));
	assert_int_equal(mig_dest_stats(w->dst, &st), 0);
	assert_int_equal(st.status, 0);
	assert_int_equal(w->d.load, 0);
	assert_int_equal(w->d.resume, 0);
	assert_int_equal(mig_dest_cancel(w->dst), 0);
	rc = dest_result(w, &err);
	if (rc != MIG_E_CANCELED)
		fail_msg("destination after cancel: %d (%s) %s", rc,
			 mig_err_name(rc), err.msg);
	assert_int_equal(w->d.resume, 0);
}

/* Both sides succeeded and the destination's memory is the source's. */
static void expect_success(struct world *w)
{
	mig_error serr = { 0 }, derr = { 0 };
	int rs = source_result(w, &serr);
	int rd = dest_result(w, &derr);

	if (rs != 0 || rd != 0)
		fail_msg("source %d (%s) \"%s\", destination %d (%s) \"%s\"",
			 rs, mig_err_name(rs), serr.msg, rd, mig_err_name(rd),
			 derr.msg);
	assert_int_equal(w->s.pause, 1);
	assert_int_equal(w->s.resume, 0);
	assert_int_equal(w->s.save, 1);
	assert_int_equal(w->d.load_ok, 1);
	assert_int_equal(w->d.resume, 1);
	assert_true(w->s.progress >= 1);
	if (memcmp(w->smem, w->dmem, MEM_SIZE) != 0) {
		size_t i = 0;
		while (w->smem[i] == w->dmem[i])
			i++;
		fail_msg("destination memory differs from the source's from byte %zu (page %zu)",
			 i, i / MIG_PAGE_SIZE);
	}
}

static int cap_has(struct world *w, const void *what, size_t n)
{
	return memmem(w->relay.cap, w->relay.cap_len, what, n) != NULL;
}

static mig_tls *psk(const uint8_t *key)
{
	mig_tls *t = NULL;
	mig_error err = { 0 };

	if (mig_tls_psk(&t, PSK_ID, key, 32, &err) < 0)
		fail_msg("mig_tls_psk: %s", err.msg);
	return t;
}

/* A source error that a broken connection may give. */
static int is_conn_error(int rc)
{
	return rc == -ECONNRESET || rc == -EPIPE || rc == -ECONNABORTED ||
	       rc == -ENOTCONN || rc == -ECONNREFUSED;
}

/* ---- the tests ---- */

/*
 * Control: without TLS the migration works through the relay, and the
 * capture holds the guest's pages and the token as they are. Shows that
 * the relay sees (and would let us find) plaintext, so the TLS tests'
 * "not in the capture" means something.
 */
static void plain_is_readable(void **state)
{
	struct world *w = *state;

	dest_up(w, NULL);
	source_make(w, 1, NULL);
	source_start(w);
	expect_success(w);
	relay_stop(&w->relay);
	assert_int_equal(w->relay.accepted, 1);
	assert_true(w->relay.s2d > MEM_SIZE / 2);
	assert_true(cap_has(w, MARKER, 64));
	assert_true(cap_has(w, TOKEN, strlen(TOKEN)));
	w->passed = 1;
}

/*
 * PSK on both sides, two connections: the migration succeeds, the
 * destination's memory is the source's, and nothing of the guest (the
 * marker) nor the token can be read in what crossed the relay, which
 * starts with a TLS handshake record.
 */
static void psk_migrates_unreadable(void **state)
{
	struct world *w = *state;

	dest_up(w, psk(key_a));
	source_make(w, 2, psk(key_a));
	source_start(w);
	expect_success(w);
	relay_stop(&w->relay);
	assert_int_equal(w->relay.accepted, 2);
	assert_true(w->relay.s2d > MEM_SIZE / 2);
	assert_int_equal(w->relay.cap[0], 0x16); /* TLS handshake record */
	assert_false(cap_has(w, MARKER, 64));
	assert_false(cap_has(w, MARKER + 8, 32)); /* not even a piece */
	assert_false(cap_has(w, TOKEN, strlen(TOKEN)));
	assert_false(cap_has(w, "device-state", 12));
	w->passed = 1;
}

/* The source failed, its VM runs on (resumed iff it was paused), the
 * destination failed too and never resumed its VM. */
static void expect_tamper_failure(struct world *w, int want_paused)
{
	mig_error serr = { 0 }, derr = { 0 };
	uint64_t t = now_ms();
	int rs = source_result(w, &serr);
	int rd = dest_result(w, &derr);

	print_message("    source: %d (%s) %s\n    destination: %d (%s) %s\n"
		      "    ended within %llu ms; flipped byte at s->d offset %zu;"
		      " d->s bytes after the flip: %zu\n",
		      rs, mig_err_name(rs), serr.msg, rd, mig_err_name(rd),
		      derr.msg, (unsigned long long)(now_ms() - t),
		      w->relay.flipped_off, w->relay.d2s - w->relay.d2s_at_flip);
	assert_true(w->relay.flipped);
	assert_true(rs < 0);
	assert_true(rd < 0);
	/* the destination sees the bad record itself */
	if (rd != MIG_E_TLS)
		fail_msg("destination: want MIG_E_TLS, got %d (%s) %s", rd,
			 mig_err_name(rd), derr.msg);
	if (rs != MIG_E_TLS && rs != MIG_E_PEER && !is_conn_error(rs))
		fail_msg("source: want MIG_E_TLS, MIG_E_PEER or a connection error, got %d (%s) %s",
			 rs, mig_err_name(rs), serr.msg);
	assert_int_equal(w->s.pause, want_paused);
	assert_int_equal(w->s.resume, w->s.pause);
	assert_int_equal(w->d.resume, 0);
}

/*
 * PSK, two connections, one byte changed mid pre-copy (200 KiB into the
 * control connection, index 0): the destination's record layer refuses it
 * (MIG_E_TLS), the migration fails on both sides without a hang, the
 * source's VM was never paused (so not resumed either) and the
 * destination's never resumed.
 */
static void psk_tamper(void **state)
{
	struct world *w = *state;

	dest_up(w, psk(key_a));
	source_make(w, 2, psk(key_a));
	w->relay.flip_at = TAMPER_AT;
	w->relay.flip_conn = 0;
	source_start(w);
	expect_tamper_failure(w, 0);
	w->passed = 1;
}

/*
 * PSK, two connections, one byte changed 200 KiB into the data
 * connection (index 1) while the control connection stays intact: the
 * destination fails with MIG_E_TLS and can tell the source why on the
 * control connection (MIG_E_PEER), or the source sees the data
 * connection go; either way no hang, its VM never paused, the
 * destination's never resumed.
 */
static void psk_tamper_data_conn(void **state)
{
	struct world *w = *state;

	dest_up(w, psk(key_a));
	source_make(w, 2, psk(key_a));
	w->relay.flip_at = TAMPER_AT;
	w->relay.flip_conn = 1;
	source_start(w);
	expect_tamper_failure(w, 0);
	w->passed = 1;
}

/*
 * PSK, one byte changed in the first bytes forwarded after the source
 * paused its VM (stop-and-copy): the same failure, and the source resumes
 * its paused VM exactly once.
 */
static void psk_tamper_stopcopy(void **state)
{
	struct world *w = *state;

	dest_up(w, psk(key_a));
	source_make(w, 1, psk(key_a));
	w->relay.flip_after_pause = &w->s;
	source_start(w);
	expect_tamper_failure(w, 1);
	w->passed = 1;
}

/*
 * PSK with another key on the source: the handshake fails, the source
 * ends promptly (long before its 10 s hello timeout) with MIG_E_AUTH or
 * MIG_E_TLS, its VM untouched; the destination turns the stranger away
 * and keeps waiting (a stranger never fails a migration) until canceled.
 */
static void psk_wrong_key(void **state)
{
	struct world *w = *state;
	mig_error err = { 0 };
	uint64_t t;
	int rc;

	dest_up(w, psk(key_a));
	source_make(w, 1, psk(key_b));
	t = now_ms();
	source_start(w);
	rc = source_result(w, &err);
	t = now_ms() - t;
	print_message("    source: %d (%s) %s, after %llu ms\n", rc,
		      mig_err_name(rc), err.msg, (unsigned long long)t);
	if (rc != MIG_E_AUTH && rc != MIG_E_TLS)
		fail_msg("source: want MIG_E_AUTH or MIG_E_TLS, got %d (%s) %s",
			 rc, mig_err_name(rc), err.msg);
	assert_true(t < 5000);
	assert_int_equal(w->s.pause, 0);
	assert_int_equal(w->s.resume, 0);
	assert_int_equal(w->s.save, 0);
	assert_false(cap_has(w, TOKEN, strlen(TOKEN)));
	dest_still_waiting_then_cancel(w);
	assert_true(log_has(w, "rejected connection"));
	w->passed = 1;
}

/*
 * PSK, the right key, another token: under TLS the hello carries the
 * token bound to the session, which the destination checks against its
 * own: refused (MIG_E_AUTH, "wrong token"), the source's VM untouched, the
 * destination still waiting for its real source.
 */
static void psk_wrong_token(void **state)
{
	struct world *w = *state;
	mig_error err = { 0 };
	int rc;

	dest_up(w, psk(key_a));
	w->token = "not-the-token";
	source_make(w, 1, psk(key_a));
	source_start(w);
	rc = source_result(w, &err);
	print_message("    source: %d (%s) %s\n", rc, mig_err_name(rc), err.msg);
	assert_int_equal(rc, MIG_E_AUTH);
	assert_non_null(strstr(err.msg, "wrong token"));
	assert_int_equal(w->s.pause, 0);
	dest_still_waiting_then_cancel(w);
	assert_true(log_has(w, "wrong token"));
	w->passed = 1;
}

/*
 * PSK with the right key under another identity: refused like a wrong
 * key (MIG_E_AUTH or MIG_E_TLS, at once), the destination keeps waiting.
 */
static void psk_wrong_identity(void **state)
{
	struct world *w = *state;
	mig_error err = { 0 };
	mig_tls *t = NULL;
	int rc;

	dest_up(w, psk(key_a));
	if (mig_tls_psk(&t, "someone-else", key_a, 32, &err) < 0)
		fail_msg("mig_tls_psk: %s", err.msg);
	source_make(w, 1, t);
	source_start(w);
	rc = source_result(w, &err);
	print_message("    source: %d (%s) %s\n", rc, mig_err_name(rc), err.msg);
	if (rc != MIG_E_AUTH && rc != MIG_E_TLS)
		fail_msg("source: want MIG_E_AUTH or MIG_E_TLS, got %d (%s) %s",
			 rc, mig_err_name(rc), err.msg);
	assert_int_equal(w->s.pause, 0);
	assert_int_equal(w->s.resume, 0);
	dest_still_waiting_then_cancel(w);
	w->passed = 1;
}

/*
 * PSK, one byte changed in the first bytes the destination sends after
 * the source paused (its last round's statistics or its Commit): the
 * source's record layer refuses it (MIG_E_TLS), so it never sends
 * Activate and resumes its own VM; the destination, which may have
 * committed, never resumes (no split brain).
 */
static void psk_tamper_commit(void **state)
{
	struct world *w = *state;
	mig_error serr = { 0 }, derr = { 0 };
	int rs, rd;

	dest_up(w, psk(key_a));
	source_make(w, 1, psk(key_a));
	w->relay.flip_after_pause = &w->s;
	w->relay.flip_d2s = 1;
	source_start(w);
	rs = source_result(w, &serr);
	rd = dest_result(w, &derr);
	print_message("    source: %d (%s) %s\n    destination: %d (%s) %s\n"
		      "    flipped byte at d->s offset %zu\n",
		      rs, mig_err_name(rs), serr.msg, rd, mig_err_name(rd),
		      derr.msg, w->relay.flipped_off);
	assert_true(w->relay.flipped);
	if (rs != MIG_E_TLS)
		fail_msg("source: want MIG_E_TLS, got %d (%s) %s", rs,
			 mig_err_name(rs), serr.msg);
	assert_true(rd < 0);
	assert_int_equal(w->s.pause, 1);
	assert_int_equal(w->s.resume, 1);
	assert_int_equal(w->d.resume, 0);
	w->passed = 1;
}

/* A source that cannot talk to the destination fails by itself, with its
 * VM untouched, and within the time given; returns its error. */
static int source_fails_alone(struct world *w, unsigned max_ms,
			      const char *want)
{
	mig_error err = { 0 };
	uint64_t t = now_ms();
	int rc;

	source_start(w);
	rc = source_result(w, &err);
	t = now_ms() - t;
	print_message("    source: %d (%s) %s, after %llu ms\n", rc,
		      mig_err_name(rc), err.msg, (unsigned long long)t);
	assert_true(rc < 0);
	assert_int_not_equal(rc, MIG_E_CANCELED);
	assert_true(t < max_ms);
	assert_int_equal(w->s.pause, 0);
	assert_int_equal(w->s.resume, 0);
	assert_int_equal(rc, MIG_E_TLS);
	if (!strstr(err.msg, want))
		fail_msg("the source's error '%s' does not say '%s'", err.msg, want);
	return rc;
}

/*
 * The source speaks TLS, the destination plain TCP: the destination sees
 * a ClientHello where a frame should be and turns the connection away,
 * saying so; the source fails (no hang; under its hello timeout) with an
 * error that asks whether the destination speaks TLS, the destination
 * keeps waiting until canceled. No token crosses in the clear.
 */
static void tls_source_plain_dest(void **state)
{
	struct world *w = *state;

	dest_up(w, NULL);
	source_make(w, 1, psk(key_a));
	(void)source_fails_alone(w, 9000, "does the destination speak TLS?");
	assert_true(log_has(w, "a TLS client, and this destination has no TLS"));
	assert_false(cap_has(w, TOKEN, strlen(TOKEN)));
	dest_still_waiting_then_cancel(w);
	w->passed = 1;
}

/*
 * The source speaks plain TCP, the destination TLS: the destination's
 * TLS layer sees a frame where a ClientHello should be and answers with
 * an alert; the source, reading a TLS record where a frame should be,
 * fails saying so (no hang), the destination keeps waiting until
 * canceled.
 */
static void plain_source_tls_dest(void **state)
{
	struct world *w = *state;

	dest_up(w, psk(key_a));
	source_make(w, 1, NULL);
	(void)source_fails_alone(w, 9000, "the destination answered with TLS");
	dest_still_waiting_then_cancel(w);
	w->passed = 1;
}

/* Certificates for one test: a CA, the destination's and the source's. */
struct certs {
	tc_ca ca;
	char *dcert, *dkey, *scert, *skey;
};

static void certs_make(struct certs *c)
{
	time_t now = time(NULL);

	memset(c, 0, sizeof(*c));
	tc_ca_make(&c->ca, "Migration Test CA");
	tc_leaf_make(&c->ca, "dest.example", TC_SERVER, now - 3600, now + 3600,
		     &c->dcert, &c->dkey);
	tc_leaf_make(&c->ca, "source.example", TC_CLIENT, now - 3600,
		     now + 3600, &c->scert, &c->skey);
}

static void certs_free(struct certs *c)
{
	tc_ca_free(&c->ca);
	free(c->dcert);
	free(c->dkey);
	free(c->scert);
	free(c->skey);
}

static mig_tls *x509(const struct certs *c, int dest, const char *peer)
{
	mig_tls *t = NULL;
	mig_error err = { 0 };

	if (mig_tls_x509(&t, c->ca.pem, dest ? c->dcert : c->scert,
			 dest ? c->dkey : c->skey, peer, &err) < 0)
		fail_msg("mig_tls_x509: %s", err.msg);
	return t;
}

/*
 * X.509 with mutual authentication, each side naming the other's host:
 * the migration (two connections) succeeds, memories equal, nothing
 * readable in the capture.
 */
static void x509_migrates(void **state)
{
	struct world *w = *state;
	struct certs c;

	certs_make(&c);
	dest_up(w, x509(&c, 1, "source.example"));
	source_make(w, 2, x509(&c, 0, "dest.example"));
	certs_free(&c);
	source_start(w);
	expect_success(w);
	relay_stop(&w->relay);
	assert_int_equal(w->relay.accepted, 2);
	assert_false(cap_has(w, MARKER, 64));
	assert_false(cap_has(w, TOKEN, strlen(TOKEN)));
	w->passed = 1;
}

/*
 * X.509, the source expecting another host name than the destination's
 * certificate carries: the source refuses it (MIG_E_AUTH, the message
 * naming the name it expected) at once, its VM untouched; the destination
 * keeps waiting until canceled.
 */
static void x509_wrong_name(void **state)
{
	struct world *w = *state;
	struct certs c;
	mig_error err = { 0 };
	int rc;

	certs_make(&c);
	dest_up(w, x509(&c, 1, "source.example"));
	source_make(w, 1, x509(&c, 0, "other-host.example"));
	certs_free(&c);
	source_start(w);
	rc = source_result(w, &err);
	print_message("    source: %d (%s) %s\n", rc, mig_err_name(rc), err.msg);
	if (rc != MIG_E_AUTH)
		fail_msg("source: want MIG_E_AUTH, got %d (%s) %s", rc,
			 mig_err_name(rc), err.msg);
	assert_non_null(strstr(err.msg, "other-host.example"));
	assert_int_equal(w->s.pause, 0);
	assert_int_equal(w->s.resume, 0);
	assert_false(cap_has(w, TOKEN, strlen(TOKEN)));
	dest_still_waiting_then_cancel(w);
	w->passed = 1;
}

/*
 * X.509, the destination expecting another name on the source's
 * certificate: it turns the source away (a stranger to it: it keeps
 * waiting until canceled); the source, whose own handshake may already
 * be done in TLS 1.3 when the destination checks its certificate, fails
 * promptly with MIG_E_AUTH or MIG_E_TLS, its VM untouched.
 */
static void x509_dest_wrong_name(void **state)
{
	struct world *w = *state;
	struct certs c;
	mig_error err = { 0 };
	uint64_t t;
	int rc;

	certs_make(&c);
	dest_up(w, x509(&c, 1, "other-source.example"));
	source_make(w, 1, x509(&c, 0, "dest.example"));
	certs_free(&c);
	t = now_ms();
	source_start(w);
	rc = source_result(w, &err);
	t = now_ms() - t;
	print_message("    source: %d (%s) %s, after %llu ms\n", rc,
		      mig_err_name(rc), err.msg, (unsigned long long)t);
	if (rc != MIG_E_AUTH && rc != MIG_E_TLS)
		fail_msg("source: want MIG_E_AUTH or MIG_E_TLS, got %d (%s) %s",
			 rc, mig_err_name(rc), err.msg);
	assert_true(t < 5000);
	assert_int_equal(w->s.pause, 0);
	assert_int_equal(w->s.resume, 0);
	dest_still_waiting_then_cancel(w);
	assert_true(log_has(w, "rejected connection"));
	w->passed = 1;
}

/*
 * TLS is set before start only: set_tls(NULL) and set_tls(creds) before
 * start are accepted; after start both sides answer -EBUSY (for NULL too)
 * and keep the credentials they had: the PSK migration then succeeds.
 */
static void set_tls_after_start(void **state)
{
	struct world *w = *state;
	mig_error err = { 0 };
	mig_tls *t = psk(key_a), *other = psk(key_b);

	dest_up(w, psk(key_a));
	source_make(w, 1, NULL);
	assert_int_equal(mig_source_set_tls(w->src, NULL, &err), 0);
	assert_int_equal(mig_source_set_tls(w->src, t, &err), 0);
	source_start(w);
	assert_int_equal(mig_source_set_tls(w->src, other, &err), -EBUSY);
	assert_int_equal(err.code, -EBUSY);
	assert_int_equal(mig_source_set_tls(w->src, NULL, &err), -EBUSY);
	memset(&err, 0, sizeof(err));
	assert_int_equal(mig_dest_set_tls(w->dst, other, &err), -EBUSY);
	assert_int_equal(err.code, -EBUSY);
	assert_int_equal(mig_dest_set_tls(w->dst, NULL, &err), -EBUSY);
	mig_tls_free(t);
	mig_tls_free(other);
	expect_success(w);
	relay_stop(&w->relay);
	assert_false(cap_has(w, MARKER, 64));
	w->passed = 1;
}

/*
 * Not TLS, but this file's real source and destination: parameters set on
 * a source by name (mig_source_set_param). Before the start any but the
 * connections; while it runs the rate cap and the downtime target, and
 * nothing else. A migration capped at 1 MiB/s, which would need 7 s or
 * more for the 7.5 MiB it carries, is uncapped 0.3 s in: it ends in less
 * than half that, and the destination's memory is the source's.
 */
static void params_live(void **state)
{
	struct world *w = *state;
	mig_error err = { 0 };
	uint64_t t0, floor_ms;

	dest_up(w, NULL);
	source_make(w, 1, NULL);
	assert_int_equal(mig_source_set_param(w->src, "connections", "2", &err),
			 -EBUSY);
	assert_non_null(strstr(err.msg, "fixed when the source is made"));
	assert_int_equal(mig_source_set_param(w->src, "no_such", "1", &err),
			 -ENOENT);
	assert_int_equal(mig_source_set_param(w->src, "max-bandwidth", "1", &err),
			 -EINVAL); /* under the minimum, 1 MiB/s */
	assert_int_equal(mig_source_set_param(w->src, "max-bandwidth", "1M", &err), 0);
	assert_int_equal(mig_source_set_param(w->src, "throttle", "off", &err), 0);
	t0 = now_ms();
	source_start(w);
	usleep(300 * 1000);
	assert_false(side_is_done(&w->s));
	assert_int_equal(mig_source_set_param(w->src, "compress", "on", &err),
			 -EBUSY);
	assert_non_null(strstr(err.msg, "cannot change once the migration runs"));
	assert_int_equal(mig_source_set_param(w->src, "downtime_ms", "0", &err),
			 -EINVAL);
	assert_int_equal(mig_source_set_param(w->src, "downtime_ms", "500", &err), 0);
	assert_int_equal(mig_source_set_param(w->src, "max_bandwidth", "0", &err), 0);
	expect_success(w);
	/* what the cap alone lets through: non-zero pages at 1 MiB/s */
	floor_ms = (uint64_t)PAGES * 15 / 16 * MIG_PAGE_SIZE * 1000 / (1u << 20);
	if (now_ms() - t0 >= floor_ms / 2)
		fail_msg("the raised cap did not take: %llu ms, the 1 MiB/s cap "
			 "alone needs %llu", (unsigned long long)(now_ms() - t0),
			 (unsigned long long)floor_ms);
	w->passed = 1;
}

/* One migration of the bench: its total time in ms, or -1. */
static double bench_one(int tls, uint32_t conns, int compress,
			uint64_t *wire)
{
	void *state;
	struct world *w;
	mig_stats *st = calloc(1, sizeof(*st));
	mig_error serr = { 0 }, derr = { 0 };
	double ms = -1;

	if (!st || setup(&state) != 0)
		return -1;
	w = state;
	w->direct = 1;
	w->verbose = 0;
	w->compress = compress;
	dest_up(w, tls ? psk(key_a) : NULL);
	source_make(w, conns, tls ? psk(key_a) : NULL);
	source_start(w);
	if (source_result(w, &serr) == 0 && dest_result(w, &derr) == 0 &&
	    memcmp(w->smem, w->dmem, MEM_SIZE) == 0 &&
	    mig_source_stats(w->src, st) == 0) {
		ms = (double)st->total_time_us / 1000.0;
		*wire = st->bytes_on_wire;
		w->passed = 1;
	} else {
		fprintf(stderr, "bench: failed: %s / %s\n", serr.msg, derr.msg);
	}
	teardown(&state);
	free(st);
	return ms;
}

/* GnuTLS's AES-128-GCM on one core, 16 KiB records: MB/s. */
static double bench_aead(void)
{
	gnutls_aead_cipher_hd_t h;
	uint8_t key[16] = { 1 }, nonce[12] = { 0 }, *in = calloc(1, 16384),
		*out = malloc(16384 + 16);
	gnutls_datum_t k = { key, sizeof(key) };
	uint64_t t0 = now_ms(), n = 0;
	size_t ol;

	if (!in || !out ||
	    gnutls_aead_cipher_init(&h, GNUTLS_CIPHER_AES_128_GCM, &k) < 0)
		return 0;
	while (now_ms() - t0 < 500) {
		for (int i = 0; i < 256; i++, n++) {
			memcpy(nonce, &n, sizeof(n));
			ol = 16384 + 16;
			gnutls_aead_cipher_encrypt(h, nonce, sizeof(nonce), NULL,
						   0, 16, in, 16384, out, &ol);
		}
	}
	gnutls_aead_cipher_deinit(h);
	free(in);
	free(out);
	return (double)n * 16384 / 1e6 / ((double)(now_ms() - t0) / 1000.0);
}

static int bench(int argc, char **argv)
{
	unsigned mib = argc > 2 ? (unsigned)atoi(argv[2]) : 512;
	int reps = argc > 3 ? atoi(argv[3]) : 3;
	static const struct { uint32_t conns; int compress; const char *what; }
	cases[] = {
		{ 1, MIG_COMPRESS_OFF, "1 connection, no compression" },
		{ 2, MIG_COMPRESS_OFF, "2 connections, no compression" },
		{ 2, MIG_COMPRESS_AUTO, "2 connections, compress auto" },
	};

	if (mib < 8 || mib > 16384 || reps < 1 || reps > 50) {
		fprintf(stderr, "usage: test_tls_migrate --bench [MiB 8..16384] "
			"[reps 1..50]\n");
		return 2;
	}
	n_pages = mib * 256;
	printf("# test_tls_migrate --bench: %u MiB (1/16 zero, 1/8 random, the "
	       "rest repeated text), loopback, in clear and TLS 1.3 with a "
	       "pre-shared key (AES-128-GCM), alternately, %d reps; median "
	       "total time\n", mib, reps);
	printf("# GnuTLS AES-128-GCM, one core, 16 KiB records: %.0f MB/s\n",
	       bench_aead());
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		double t[2][50];
		uint64_t wire[2] = { 0, 0 };

		for (int r = 0; r < reps; r++)
			for (int tls = 0; tls < 2; tls++) {
				t[tls][r] = bench_one(tls, cases[c].conns,
						      cases[c].compress, &wire[tls]);
				if (t[tls][r] < 0)
					return 1;
			}
		for (int tls = 0; tls < 2; tls++) /* sort for the median */
			for (int i = 1; i < reps; i++)
				for (int j = i; j > 0 && t[tls][j] < t[tls][j - 1]; j--) {
					double x = t[tls][j];
					t[tls][j] = t[tls][j - 1];
					t[tls][j - 1] = x;
				}
		printf("%-32s clear %7.0f ms (%5.0f MB/s on the wire)  TLS %7.0f ms "
		       "(%5.0f MB/s)  TLS/clear %.2f\n", cases[c].what,
		       t[0][reps / 2], (double)wire[0] / 1e3 / t[0][reps / 2],
		       t[1][reps / 2], (double)wire[1] / 1e3 / t[1][reps / 2],
		       t[1][reps / 2] / t[0][reps / 2]);
	}
	return 0;
}

int main(int argc, char **argv)
{
	uv_loop_t loop;

	/* libuv's first loop opens a pipe for the whole process (its signal
	 * lock), never closed: open it now, so that tear-down's count of fds
	 * finds only what a test left behind. */
	if (uv_loop_init(&loop) == 0)
		uv_loop_close(&loop);
	if (argc > 1 && strcmp(argv[1], "--bench") == 0)
		return bench(argc, argv);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(plain_is_readable, setup, teardown),
		cmocka_unit_test_setup_teardown(psk_migrates_unreadable, setup, teardown),
		cmocka_unit_test_setup_teardown(psk_tamper, setup, teardown),
		cmocka_unit_test_setup_teardown(psk_tamper_data_conn, setup, teardown),
		cmocka_unit_test_setup_teardown(psk_tamper_stopcopy, setup, teardown),
		cmocka_unit_test_setup_teardown(psk_tamper_commit, setup, teardown),
		cmocka_unit_test_setup_teardown(psk_wrong_key, setup, teardown),
		cmocka_unit_test_setup_teardown(psk_wrong_identity, setup, teardown),
		cmocka_unit_test_setup_teardown(psk_wrong_token, setup, teardown),
		cmocka_unit_test_setup_teardown(tls_source_plain_dest, setup, teardown),
		cmocka_unit_test_setup_teardown(plain_source_tls_dest, setup, teardown),
		cmocka_unit_test_setup_teardown(x509_migrates, setup, teardown),
		cmocka_unit_test_setup_teardown(x509_wrong_name, setup, teardown),
		cmocka_unit_test_setup_teardown(x509_dest_wrong_name, setup, teardown),
		cmocka_unit_test_setup_teardown(set_tls_after_start, setup, teardown),
		cmocka_unit_test_setup_teardown(params_live, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
