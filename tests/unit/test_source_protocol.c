/*
 * The source against a scripted destination on loopback (the mirror of
 * test_dest_protocol.c): the order in which it sends, and what each
 * misbehaviour of the destination costs it: a clear error, a VM that kept
 * running or is resumed, never a source that resumes once Activate may
 * have gone out, and never Activate for what the destination cannot have.
 * No KVM: the "VM" is an anonymous mapping, its ops count their calls, and
 * the dirty log is this file's own backend (mig__dirty_set_test_backend()),
 * fed by guest_write().
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "mig_test.h"
#include "codec.h"
#include "dirty.h"
#include "frame.h"
#include "session.h"
#include "migrate/migrate.h"

#define PAGES 256u
#define MEM_SIZE ((size_t)PAGES * MIG_PAGE_SIZE)
#define GPA 0x100000u /* where the guest's memory starts */
#define TOKEN "t0ken"
#define EARLY MIG__WIRE__FEATURE__FEATURE_EARLY_STATE
#define ZSTD MIG__WIRE__FEATURE__FEATURE_ZSTD
#define XXH3 MIG__WIRE__FEATURE__FEATURE_XXH3
#define IN_MAX (4u << 20)

/* the dirty log: test_dirty_log.h */
#include "test_dirty_log.h"

/* ---- the VM ---- */

static const uint8_t cpuid[4] = { 1, 2, 3, 4 };

struct fake_vm {
	int pause, resume, save;
	/* save_state waits for this (set by the script) when `hold` is set */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int hold, release;
};

static int op_pause(void *o, mig_error *e)
{
	(void)e;
	__atomic_add_fetch(&((struct fake_vm *)o)->pause, 1, __ATOMIC_SEQ_CST);
	return 0;
}

static int op_resume(void *o, mig_error *e)
{
	(void)e;
	__atomic_add_fetch(&((struct fake_vm *)o)->resume, 1, __ATOMIC_SEQ_CST);
	return 0;
}

static int op_save(void *o, mig_state *st, mig_error *e)
{
	struct fake_vm *vm = o;

	(void)e;
	pthread_mutex_lock(&vm->lock);
	vm->save++;
	while (vm->hold && !vm->release)
		pthread_cond_wait(&vm->cond, &vm->lock);
	pthread_mutex_unlock(&vm->lock);
	return mig_state_add(st, "dev", "state", 5);
}

/* Required of every VM, never called on a source. */
static int op_load(void *o, const mig_state *in, mig_error *e)
{
	(void)o; (void)in;
	return mig__err(e, -EPERM, "load_state on the source");
}

static const mig_vm_ops ops = {
	.pause = op_pause,
	.resume = op_resume,
	.save_state = op_save,
	.load_state = op_load,
};

/* ---- the rig: a source, and the test thread as its destination ---- */

struct rig {
	struct fake_vm vm;
	mig_source *src;
	uint8_t *mem;       /* the source's guest memory */
	uint8_t *peer_mem;  /* what the scripted destination decoded */
	mig_dec *dec;
	uint64_t pages_in;  /* pages decoded */
	int state_items;
	int nullfd, sock;
	uint8_t *in;
	size_t in_len;
};

/* The guest writes page p: new contents, and the dirty log sees it. */
static void guest_write(struct rig *g, uint32_t p, uint8_t v)
{
	memset(g->mem + (size_t)p * MIG_PAGE_SIZE, v, MIG_PAGE_SIZE);
	test_dirty_mark(p);
}

/* A source with `verify` (a memory hash at pause) or without. */
static void rig_up_verify(struct rig *g, int verify)
{
	mig_source_config cfg = { 0 };
	mig_region reg = { 0 };
	mig_error err = { 0 };
	struct sockaddr_in sa = { 0 };
	socklen_t sl = sizeof(sa);
	struct timeval tv = { .tv_sec = 10 };
	char uri[64];
	int ls;

	memset(g, 0, sizeof(*g));
	pthread_mutex_init(&g->vm.lock, NULL);
	pthread_cond_init(&g->vm.cond, NULL);
	test_dirty_reset();
	g->mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	g->peer_mem = calloc(1, MEM_SIZE);
	g->in = malloc(IN_MAX);
	assert_true(g->mem != MAP_FAILED);
	assert_non_null(g->peer_mem);
	assert_non_null(g->in);
	assert_int_equal(mig__dec_create(&g->dec), 0);
	/* Three pages in four hold data; the fourth was never touched. */
	for (uint32_t p = 0; p < PAGES; p++)
		if (p % 4 != 3)
			memset(g->mem + (size_t)p * MIG_PAGE_SIZE,
			       (int)(p * 7 + 1), MIG_PAGE_SIZE);
	g->nullfd = open("/dev/null", O_RDONLY);
	assert_true(g->nullfd >= 0);

	ls = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(ls >= 0);
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(ls, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(ls, 4), 0);
	assert_int_equal(getsockname(ls, (struct sockaddr *)&sa, &sl), 0);
	setsockopt(ls, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	snprintf(uri, sizeof(uri), "tcp:127.0.0.1:%u", ntohs(sa.sin_port));

	reg.gpa = GPA;
	reg.size = MEM_SIZE;
	reg.hva = g->mem;
	cfg.vm.vm_fd = g->nullfd;
	cfg.vm.regions = &reg;
	cfg.vm.nr_regions = 1;
	cfg.vm.vcpu_fds = &g->nullfd;
	cfg.vm.nr_vcpus = 1;
	cfg.vm.cpuid = cpuid;
	cfg.vm.cpuid_len = sizeof(cpuid);
	cfg.vm.ops = &ops;
	cfg.vm.opaque = &g->vm;
	mig_params_init(&cfg.params);
	cfg.params.connections = 1;
	cfg.params.stall_timeout_ms = 10000;
	cfg.params.verify = verify;
	cfg.uri = uri;
	cfg.token = TOKEN;
	mig__dirty_set_test_backend(&test_dirty);
	if (mig_source_create(&g->src, &cfg, &err) < 0 ||
	    mig_source_start(g->src, &err) < 0)
		fail_msg("source: %s", err.msg);
	g->sock = accept(ls, NULL, NULL);
	assert_true(g->sock >= 0);
	close(ls);
	setsockopt(g->sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

static void rig_up(struct rig *g)
{
	rig_up_verify(g, 0);
}

static void rig_down(struct rig *g)
{
	if (g->sock >= 0)
		close(g->sock);
	mig_source_destroy(g->src);
	mig__dirty_set_test_backend(NULL);
	mig__dec_destroy(g->dec);
	close(g->nullfd);
	munmap(g->mem, MEM_SIZE);
	free(g->peer_mem);
	free(g->in);
	pthread_mutex_destroy(&g->vm.lock);
	pthread_cond_destroy(&g->vm.cond);
}

static uint8_t *sink(void *opaque, uint32_t region, uint64_t idx)
{
	struct rig *g = opaque;

	if (region != 0 || idx >= PAGES)
		return NULL;
	return g->peer_mem + idx * MIG_PAGE_SIZE;
}

/* The next message from the source, the page frames before it decoded
 * into peer_mem; NULL once the source has hung up. */
static Mig__Wire__Envelope *next_msg(struct rig *g)
{
	for (;;) {
		mig_frame f;
		long n = mig__frame_parse(g->in, g->in_len, &f);
		Mig__Wire__Envelope *env = NULL;
		mig_error err = { 0 };

		assert_true(n >= 0);
		if (n > 0 && f.type == MIG_FRAME_PAGES) {
			long k = mig__dec_batch(g->dec, f.body, f.len, sink, g, &err);
			if (k < 0)
				fail_msg("page frame: %s", err.msg);
			g->pages_in += (uint64_t)k;
		} else if (n > 0) {
			int e = 0;
			assert_int_equal(f.type, MIG_FRAME_MSG);
			env = mig__msg_unpack(f.body, f.len, &e);
			assert_non_null(env);
		}
		if (n > 0) {
			memmove(g->in, g->in + n, g->in_len - (size_t)n);
			g->in_len -= (size_t)n;
			if (env)
				return env;
			continue;
		}
		assert_true(g->in_len < IN_MAX);
		ssize_t r = read(g->sock, g->in + g->in_len, IN_MAX - g->in_len);
		if (r < 0 && errno == ECONNRESET)
			return NULL;
		assert_true(r >= 0); /* a timeout fails the test */
		if (r == 0)
			return NULL;
		g->in_len += (size_t)r;
	}
}

/* The next message, which must be of kind `want`; the caller frees it. */
static Mig__Wire__Envelope *expect(struct rig *g, Mig__Wire__Envelope__MsgCase want)
{
	Mig__Wire__Envelope *env = next_msg(g);

	if (!env)
		fail_msg("the source hung up while message %d was due", (int)want);
	if (env->msg_case == MIG__WIRE__ENVELOPE__MSG_ABORT && want != env->msg_case)
		fail_msg("the source aborted: %s", env->abort->reason);
	assert_int_equal(env->msg_case, want);
	return env;
}

static void expect_free(struct rig *g, Mig__Wire__Envelope__MsgCase want)
{
	mig__msg_free(expect(g, want));
}

/* One message to the source; `msg` is the member of the oneof. */
static void reply(struct rig *g, Mig__Wire__Envelope__MsgCase kind, void *msg)
{
	Mig__Wire__Envelope env = MIG__WIRE__ENVELOPE__INIT;
	mig_buf b = { 0 };

	env.msg_case = kind;
	env.hello = msg; /* every member of the oneof sits at the same place */
	assert_int_equal(mig__msg_pack(&env, &b), 0);
	assert_int_equal(write(g->sock, b.data, b.len), (ssize_t)b.len);
	mig__buf_free(&b);
}

/* Read the hello and answer it; returns the features it asked for. */
static uint64_t send_hello_ack(struct rig *g, int ok, int error, uint32_t major,
			       uint64_t features)
{
	Mig__Wire__HelloAck a = MIG__WIRE__HELLO_ACK__INIT;
	Mig__Wire__Envelope *h = expect(g, MIG__WIRE__ENVELOPE__MSG_HELLO);
	uint64_t asked = h->hello->features;

	assert_int_equal(h->hello->version_major, MIG_PROTOCOL_VERSION);
	assert_int_equal(h->hello->connection_index, 0);
	assert_int_equal(h->hello->connection_count, 1);
	assert_int_equal(h->hello->token.len, strlen(TOKEN));
	assert_memory_equal(h->hello->token.data, TOKEN, strlen(TOKEN));
	assert_int_equal(h->hello->session_id.len, 16);
	mig__msg_free(h);
	a.ok = ok;
	a.error = error;
	a.message = ok ? "" : "bad token";
	a.version_major = major;
	a.features = features;
	reply(g, MIG__WIRE__ENVELOPE__MSG_HELLO_ACK, &a);
	return asked;
}

static void send_stats(struct rig *g, uint32_t round)
{
	Mig__Wire__RoundStats st = MIG__WIRE__ROUND_STATS__INIT;

	st.round = round;
	reply(g, MIG__WIRE__ENVELOPE__MSG_STATS, &st);
}

static void send_simple(struct rig *g, Mig__Wire__Envelope__MsgCase kind)
{
	/* Commit, Activated: no field the source needs */
	Mig__Wire__Commit c = MIG__WIRE__COMMIT__INIT;
	Mig__Wire__Activated a = MIG__WIRE__ACTIVATED__INIT;

	reply(g, kind, kind == MIG__WIRE__ENVELOPE__MSG_COMMIT ? (void *)&c
								: (void *)&a);
}

static void send_abort(struct rig *g, const char *reason)
{
	Mig__Wire__Abort ab = MIG__WIRE__ABORT__INIT;

	ab.error = -ENOSPC;
	ab.reason = (char *)reason;
	reply(g, MIG__WIRE__ENVELOPE__MSG_ABORT, &ab);
}

/* Hello (with `features` accepted), then the VM config; returns the
 * features the hello asked for. */
static uint64_t handshake_with(struct rig *g, uint64_t features)
{
	Mig__Wire__ConfigAck ca = MIG__WIRE__CONFIG_ACK__INIT;
	Mig__Wire__Envelope *env;
	uint64_t asked = send_hello_ack(g, 1, 0, MIG_PROTOCOL_VERSION, features);

	env = expect(g, MIG__WIRE__ENVELOPE__MSG_VM_CONFIG);
	assert_int_equal(env->vm_config->n_regions, 1);
	assert_int_equal(env->vm_config->regions[0]->size, MEM_SIZE);
	assert_int_equal(env->vm_config->vcpus, 1);
	assert_int_equal(env->vm_config->page_size, MIG_PAGE_SIZE);
	mig__msg_free(env);
	ca.ok = 1;
	reply(g, MIG__WIRE__ENVELOPE__MSG_CONFIG_ACK, &ca);
	return asked;
}

/* Hello (features: ZSTD and EARLY_STATE accepted), then the VM config. */
static void handshake(struct rig *g)
{
	(void)handshake_with(g, ZSTD | EARLY);
}

/* Round 1 up to its end, its pages decoded; not acknowledged. */
static void round1(struct rig *g)
{
	Mig__Wire__Envelope *env;

	handshake(g);
	env = expect(g, MIG__WIRE__ENVELOPE__MSG_ROUND_START);
	assert_int_equal(env->round_start->round, 1);
	mig__msg_free(env);
	env = expect(g, MIG__WIRE__ENVELOPE__MSG_ROUND_END);
	assert_int_equal(env->round_end->round, 1);
	mig__msg_free(env);
	assert_int_equal(g->vm.pause, 0);
}

/*
 * A well-behaved destination up to the source's Switchover: round 1, the
 * guest writes two pages (one it had never touched) before the
 * acknowledgement, then every further round the source runs. Returns the
 * rounds acknowledged.
 */
static uint32_t to_switchover(struct rig *g)
{
	uint32_t round = 1;

	round1(g);
	guest_write(g, 5, 0xa5);
	guest_write(g, 7, 0x5a);
	send_stats(g, 1);
	for (;;) {
		Mig__Wire__Envelope *env = next_msg(g);

		assert_non_null(env);
		if (env->msg_case == MIG__WIRE__ENVELOPE__MSG_SWITCHOVER) {
			assert_int_equal(env->switchover->round, round + 1);
			mig__msg_free(env);
			return round;
		}
		assert_int_equal(env->msg_case, MIG__WIRE__ENVELOPE__MSG_ROUND_START);
		assert_int_equal(env->round_start->round, ++round);
		mig__msg_free(env);
		expect_free(g, MIG__WIRE__ENVELOPE__MSG_ROUND_END);
		send_stats(g, round);
	}
}

/* The stop-and-copy after the Switchover, with early state: the state,
 * StateEnd, the last round's pages and end, Complete. */
static void after_switchover(struct rig *g)
{
	Mig__Wire__Envelope *env = expect(g, MIG__WIRE__ENVELOPE__MSG_STATE);

	assert_string_equal(env->state->name, "dev");
	assert_int_equal(env->state->data.len, 5);
	assert_memory_equal(env->state->data.data, "state", 5);
	g->state_items++;
	mig__msg_free(env);
	env = expect(g, MIG__WIRE__ENVELOPE__MSG_STATE_END);
	assert_int_equal(env->state_end->items, 1);
	mig__msg_free(env);
	expect_free(g, MIG__WIRE__ENVELOPE__MSG_ROUND_START);
	expect_free(g, MIG__WIRE__ENVELOPE__MSG_ROUND_END);
	env = expect(g, MIG__WIRE__ENVELOPE__MSG_COMPLETE);
	assert_int_equal(env->complete->pages_total, g->pages_in);
	mig__msg_free(env);
	assert_int_equal(g->vm.pause, 1);
	assert_int_equal(g->state_items, 1);
}

/* Everything up to the source's Complete; returns the pre-copy rounds. */
static uint32_t to_complete(struct rig *g)
{
	uint32_t rounds = to_switchover(g);

	after_switchover(g);
	return rounds;
}

/* Let save_state (held with vm.hold) go on, once what the script sent
 * meanwhile has long been read by the source's connection thread. */
static void release_save(struct rig *g)
{
	usleep(300 * 1000);
	pthread_mutex_lock(&g->vm.lock);
	g->vm.release = 1;
	pthread_cond_broadcast(&g->vm.cond);
	pthread_mutex_unlock(&g->vm.lock);
}

/* Read until the source hangs up; returns the Activates seen, and checks
 * whether an Abort with `abort_code` came (0: none may come). */
static int drain(struct rig *g, int abort_code)
{
	Mig__Wire__Envelope *env;
	int activates = 0, aborted = 0;

	while ((env = next_msg(g))) {
		if (env->msg_case == MIG__WIRE__ENVELOPE__MSG_ACTIVATE)
			activates++;
		if (env->msg_case == MIG__WIRE__ENVELOPE__MSG_ABORT) {
			assert_int_equal(env->abort->error, abort_code);
			aborted = 1;
		}
		mig__msg_free(env);
	}
	assert_int_equal(aborted, abort_code != 0);
	return activates;
}

/* The source failed with `code`, its message naming `what` and how the
 * VM was left (`left`: "kept running" or "resumed"). */
static void expect_failed(struct rig *g, int code, const char *what,
			  const char *left)
{
	mig_error err = { 0 };
	mig_stats st;

	assert_int_equal(mig_source_wait(g->src, &err), code);
	if (!strstr(err.msg, what) || !strstr(err.msg, left))
		fail_msg("error \"%s\" does not name \"%s\" and \"%s\"",
			 err.msg, what, left);
	assert_int_equal(mig_source_stats(g->src, &st), 0);
	assert_int_equal(st.phase, MIG_PHASE_FAILED);
	assert_int_equal(st.status, code);
	assert_int_equal(g->vm.resume, g->vm.pause);
}

/* ---- the tests ---- */

/* The whole migration: every page arrives as the guest left it, the
 * stats agree with what the destination decoded, and the VM is the
 * destination's: paused once, never resumed here. */
static void test_migrates(void **state)
{
	struct rig g;
	Mig__Wire__Activated act = MIG__WIRE__ACTIVATED__INIT;
	mig_error err = { 0 };
	mig_stats st;
	uint32_t rounds;

	(void)state;
	rig_up(&g);
	rounds = to_complete(&g);
	send_simple(&g, MIG__WIRE__ENVELOPE__MSG_COMMIT);
	expect_free(&g, MIG__WIRE__ENVELOPE__MSG_ACTIVATE);
	act.resume_us = 100;
	reply(&g, MIG__WIRE__ENVELOPE__MSG_ACTIVATED, &act);
	assert_int_equal(drain(&g, 0), 0);
	assert_int_equal(mig_source_wait(g.src, &err), 0);
	assert_memory_equal(g.mem, g.peer_mem, MEM_SIZE);
	assert_int_equal(mig_source_stats(g.src, &st), 0);
	assert_int_equal(st.phase, MIG_PHASE_DONE);
	assert_int_equal(st.status, 0);
	assert_int_equal(st.rounds, rounds + 1);
	assert_int_equal(st.pages_sent, g.pages_in);
	/* round 1: the 192 pages that hold data; then the two written */
	assert_true(st.round[0].pages == PAGES / 4 * 3);
	assert_true(st.downtime_us > 0 && st.downtime_us <= st.total_time_us);
	assert_int_equal(g.vm.pause, 1);
	assert_int_equal(g.vm.resume, 0);
	rig_down(&g);
}

static void test_hello_refused(void **state)
{
	struct rig g;

	(void)state;
	rig_up(&g);
	send_hello_ack(&g, 0, MIG_E_AUTH, MIG_PROTOCOL_VERSION, 0);
	drain(&g, MIG_E_AUTH);
	expect_failed(&g, MIG_E_AUTH, "destination refused hello: bad token",
		      "during set-up");
	rig_down(&g);
}

static void test_other_version(void **state)
{
	struct rig g;

	(void)state;
	rig_up(&g);
	send_hello_ack(&g, 1, 0, MIG_PROTOCOL_VERSION + 1, ZSTD);
	drain(&g, MIG_E_VERSION);
	expect_failed(&g, MIG_E_VERSION, "destination speaks protocol",
		      "kept running");
	rig_down(&g);
}

static void test_config_refused(void **state)
{
	struct rig g;
	Mig__Wire__ConfigAck ca = MIG__WIRE__CONFIG_ACK__INIT;

	(void)state;
	rig_up(&g);
	send_hello_ack(&g, 1, 0, MIG_PROTOCOL_VERSION, ZSTD);
	expect_free(&g, MIG__WIRE__ENVELOPE__MSG_VM_CONFIG);
	ca.message = "4 vCPUs here";
	reply(&g, MIG__WIRE__ENVELOPE__MSG_CONFIG_ACK, &ca);
	drain(&g, MIG_E_INCOMPAT);
	expect_failed(&g, MIG_E_INCOMPAT,
		      "refused the VM configuration: 4 vCPUs here", "kept running");
	rig_down(&g);
}

/* The destination gives up during pre-copy: its reason is the error. */
static void test_abort_in_round(void **state)
{
	struct rig g;

	(void)state;
	rig_up(&g);
	round1(&g);
	send_abort(&g, "disk full");
	drain(&g, MIG_E_PEER);
	expect_failed(&g, MIG_E_PEER, "destination aborted: disk full",
		      "source VM kept running");
	assert_int_equal(g.vm.pause, 0);
	rig_down(&g);
}

/* A reason is the peer's text: a newline or an escape sequence in it must
 * not start a line of its own in a log (a daemon that reads its VMM's lines
 * must not take it for the VMM's), nor reach a terminal. */
static void test_abort_reason_escaped(void **state)
{
	struct rig g;
	mig_error err = { 0 };

	(void)state;
	rig_up(&g);
	round1(&g);
	send_abort(&g, "full\nmigvm: incoming migration done\x1b[2J\xff");
	drain(&g, MIG_E_PEER);
	assert_int_equal(mig_source_wait(g.src, &err), MIG_E_PEER);
	assert_non_null(strstr(err.msg, "destination aborted: full\\x0amigvm: "
			       "incoming migration done\\x1b[2J\\xff"));
	for (const char *p = err.msg; *p; p++)
		assert_true(*p >= 0x20 && *p < 0x7f);
	rig_down(&g);
}

/* A round acknowledged with the wrong number. */
static void test_wrong_round_ack(void **state)
{
	struct rig g;

	(void)state;
	rig_up(&g);
	round1(&g);
	send_stats(&g, 7);
	drain(&g, MIG_E_PROTOCOL);
	expect_failed(&g, MIG_E_PROTOCOL, "acknowledged round 7 during round 1",
		      "kept running");
	rig_down(&g);
}

/* A Commit where the round's acknowledgement is due. */
static void test_commit_in_precopy(void **state)
{
	struct rig g;

	(void)state;
	rig_up(&g);
	round1(&g);
	send_simple(&g, MIG__WIRE__ENVELOPE__MSG_COMMIT);
	assert_int_equal(drain(&g, MIG_E_PROTOCOL), 0);
	expect_failed(&g, MIG_E_PROTOCOL, "unexpected Commit during pre-copy",
		      "kept running");
	assert_int_equal(g.vm.pause, 0);
	rig_down(&g);
}

/* A second HelloAck where the round's acknowledgement is due: the hellos
 * are over once answered. */
static void test_hello_ack_again(void **state)
{
	struct rig g;
	Mig__Wire__HelloAck a = MIG__WIRE__HELLO_ACK__INIT;

	(void)state;
	rig_up(&g);
	round1(&g);
	a.ok = 1;
	a.version_major = MIG_PROTOCOL_VERSION;
	reply(&g, MIG__WIRE__ENVELOPE__MSG_HELLO_ACK, &a);
	drain(&g, MIG_E_PROTOCOL);
	expect_failed(&g, MIG_E_PROTOCOL, "unexpected HelloAck during pre-copy",
		      "kept running");
	rig_down(&g);
}

/* A message only the source sends, from the destination: refused, even
 * the Complete that would let a Commit through before the source's own. */
static void test_complete_from_destination(void **state)
{
	struct rig g;
	Mig__Wire__Complete c = MIG__WIRE__COMPLETE__INIT;

	(void)state;
	rig_up(&g);
	g.vm.hold = 1;
	to_switchover(&g);
	reply(&g, MIG__WIRE__ENVELOPE__MSG_COMPLETE, &c);
	send_simple(&g, MIG__WIRE__ENVELOPE__MSG_COMMIT);
	release_save(&g);
	assert_int_equal(drain(&g, MIG_E_PROTOCOL), 0);
	expect_failed(&g, MIG_E_PROTOCOL, "unexpected Complete from the destination",
		      "source VM resumed");
	rig_down(&g);
}

/* Page frames, or bytes that are no frame at all, from the destination. */
static void garbage(const uint8_t *bytes, size_t len, const char *what)
{
	struct rig g;

	rig_up(&g);
	round1(&g);
	assert_int_equal(write(g.sock, bytes, len), (ssize_t)len);
	drain(&g, 0); /* the connection that would carry an Abort failed */
	expect_failed(&g, MIG_E_PROTOCOL, what, "kept running");
	rig_down(&g);
}

static void test_pages_from_destination(void **state)
{
	uint8_t hdr[MIG_FRAME_HDR];

	(void)state;
	mig__frame_header(hdr, MIG_FRAME_PAGES, 0);
	garbage(hdr, sizeof(hdr), "destination sent pages");
}

static void test_bad_frame(void **state)
{
	uint8_t junk[MIG_FRAME_HDR];

	(void)state;
	memset(junk, 0xff, sizeof(junk));
	garbage(junk, sizeof(junk), "bad frame from destination");
}

/* The destination hangs up once it has everything, without committing:
 * the source VM runs again. */
static void test_hangup_before_commit(void **state)
{
	struct rig g;

	(void)state;
	rig_up(&g);
	to_complete(&g);
	close(g.sock);
	g.sock = -1;
	expect_failed(&g, -ECONNRESET, "connection closed by peer",
		      "source VM resumed");
	assert_int_equal(g.vm.pause, 1);
	rig_down(&g);
}

/* The destination aborts instead of committing: resumed, its reason told. */
static void test_abort_instead_of_commit(void **state)
{
	struct rig g;

	(void)state;
	rig_up(&g);
	to_complete(&g);
	send_abort(&g, "state did not load");
	assert_int_equal(drain(&g, MIG_E_PEER), 0);
	expect_failed(&g, MIG_E_PEER, "destination aborted: state did not load",
		      "source VM resumed");
	rig_down(&g);
}

/*
 * A Commit read before the source's Complete went out (while the VM state
 * is being saved) is for an image the destination cannot have: no
 * Activate, a protocol error, the VM resumed here.
 */
static void test_commit_before_complete(void **state)
{
	struct rig g;

	(void)state;
	rig_up(&g);
	g.vm.hold = 1;
	to_switchover(&g);
	send_simple(&g, MIG__WIRE__ENVELOPE__MSG_COMMIT);
	release_save(&g);
	assert_int_equal(drain(&g, MIG_E_PROTOCOL), 0);
	expect_failed(&g, MIG_E_PROTOCOL, "unexpected Commit during stop-and-copy",
		      "source VM resumed");
	assert_int_equal(g.vm.pause, 1);
	rig_down(&g);
}

/* Committed, then the destination hangs up without confirming: the VM is
 * the destination's, so the source reports success and never resumes. */
static void test_commit_then_hangup(void **state)
{
	struct rig g;
	mig_error err = { 0 };

	(void)state;
	rig_up(&g);
	to_complete(&g);
	send_simple(&g, MIG__WIRE__ENVELOPE__MSG_COMMIT);
	expect_free(&g, MIG__WIRE__ENVELOPE__MSG_ACTIVATE);
	close(g.sock);
	g.sock = -1;
	assert_int_equal(mig_source_wait(g.src, &err), 0);
	assert_int_equal(g.vm.pause, 1);
	assert_int_equal(g.vm.resume, 0);
	rig_down(&g);
}

/* A second Commit gets no second Activate, and does not undo the first. */
static void test_commit_twice(void **state)
{
	struct rig g;
	mig_error err = { 0 };

	(void)state;
	rig_up(&g);
	to_complete(&g);
	send_simple(&g, MIG__WIRE__ENVELOPE__MSG_COMMIT);
	send_simple(&g, MIG__WIRE__ENVELOPE__MSG_COMMIT);
	assert_int_equal(drain(&g, 0), 1);
	assert_int_equal(mig_source_wait(g.src, &err), 0);
	assert_int_equal(g.vm.resume, 0);
	rig_down(&g);
}

/* proto/migrate.proto's memory hash, computed here from its definition
 * (with xxhash's portable code, not the library's dispatched one): the
 * XXH3-128 of the digests of the non-zero pages, each page's XXH3-128
 * seeded with its page number (its guest-physical address / 4096). */
static void reference_hash(const uint8_t *mem, uint8_t out[16])
{
	XXH128_canonical_t *d = calloc(PAGES, sizeof(*d)), c;
	size_t n = 0;

	assert_non_null(d);
	for (uint64_t p = 0; p < PAGES; p++) {
		const uint8_t *page = mem + p * MIG_PAGE_SIZE;
		size_t i = 0;

		while (i < MIG_PAGE_SIZE && !page[i])
			i++;
		if (i < MIG_PAGE_SIZE)
			XXH128_canonicalFromHash(&d[n++],
				XXH3_128bits_withSeed(page, MIG_PAGE_SIZE,
						      GPA / MIG_PAGE_SIZE + p));
	}
	XXH128_canonicalFromHash(&c, XXH3_128bits(d, n * sizeof(*d)));
	memcpy(out, c.digest, 16);
	free(d);
}

/* verify: the source asks for XXH3 and no early state, sends the state
 * and the last pages, then Complete with the hash of its memory at the
 * pause, which is what the destination decoded; committed with it. */
static void test_verify_hash(void **state)
{
	struct rig g;
	Mig__Wire__Activated act = MIG__WIRE__ACTIVATED__INIT;
	Mig__Wire__Commit cm = MIG__WIRE__COMMIT__INIT;
	Mig__Wire__Envelope *env;
	mig_error err = { 0 };
	uint8_t want[16];
	uint32_t round = 1;
	uint64_t asked;

	(void)state;
	rig_up_verify(&g, 1);
	asked = handshake_with(&g, ZSTD | XXH3);
	assert_true(asked & XXH3);
	assert_false(asked & EARLY);
	expect_free(&g, MIG__WIRE__ENVELOPE__MSG_ROUND_START);
	expect_free(&g, MIG__WIRE__ENVELOPE__MSG_ROUND_END);
	guest_write(&g, 3, 0x33);
	send_stats(&g, 1);
	for (;;) {
		env = next_msg(&g);
		assert_non_null(env);
		if (env->msg_case == MIG__WIRE__ENVELOPE__MSG_SWITCHOVER)
			break;
		assert_int_equal(env->msg_case, MIG__WIRE__ENVELOPE__MSG_ROUND_START);
		mig__msg_free(env);
		expect_free(&g, MIG__WIRE__ENVELOPE__MSG_ROUND_END);
		send_stats(&g, ++round);
	}
	mig__msg_free(env);
	/* Without early state: the state, the last pages, Complete. */
	while ((env = next_msg(&g)) &&
	       env->msg_case != MIG__WIRE__ENVELOPE__MSG_COMPLETE) {
		assert_true(env->msg_case == MIG__WIRE__ENVELOPE__MSG_STATE ||
			    env->msg_case == MIG__WIRE__ENVELOPE__MSG_ROUND_START ||
			    env->msg_case == MIG__WIRE__ENVELOPE__MSG_ROUND_END);
		mig__msg_free(env);
	}
	assert_non_null(env);
	assert_int_equal(env->complete->pages_total, g.pages_in);
	assert_int_equal(env->complete->memory_hash.len, 16);
	assert_memory_equal(g.mem, g.peer_mem, MEM_SIZE);
	reference_hash(g.peer_mem, want);
	assert_memory_equal(env->complete->memory_hash.data, want, 16);
	mig__msg_free(env);
	cm.memory_hash.data = want;
	cm.memory_hash.len = sizeof(want);
	reply(&g, MIG__WIRE__ENVELOPE__MSG_COMMIT, &cm);
	expect_free(&g, MIG__WIRE__ENVELOPE__MSG_ACTIVATE);
	reply(&g, MIG__WIRE__ENVELOPE__MSG_ACTIVATED, &act);
	assert_int_equal(drain(&g, 0), 0);
	assert_int_equal(mig_source_wait(g.src, &err), 0);
	assert_int_equal(g.vm.resume, 0);
	rig_down(&g);
}

/* verify against a destination without XXH3 (an older one): refused at
 * the hello, before anything else, and said why. */
static void test_verify_needs_xxh3(void **state)
{
	struct rig g;

	(void)state;
	rig_up_verify(&g, 1);
	send_hello_ack(&g, 1, 0, MIG_PROTOCOL_VERSION, ZSTD);
	drain(&g, MIG_E_VERSION);
	expect_failed(&g, MIG_E_VERSION, "no XXH3-128 memory hash", "during set-up");
	assert_int_equal(g.vm.pause, 0);
	rig_down(&g);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_migrates),
		cmocka_unit_test(test_hello_refused),
		cmocka_unit_test(test_other_version),
		cmocka_unit_test(test_config_refused),
		cmocka_unit_test(test_abort_in_round),
		cmocka_unit_test(test_abort_reason_escaped),
		cmocka_unit_test(test_wrong_round_ack),
		cmocka_unit_test(test_commit_in_precopy),
		cmocka_unit_test(test_hello_ack_again),
		cmocka_unit_test(test_complete_from_destination),
		cmocka_unit_test(test_pages_from_destination),
		cmocka_unit_test(test_bad_frame),
		cmocka_unit_test(test_hangup_before_commit),
		cmocka_unit_test(test_abort_instead_of_commit),
		cmocka_unit_test(test_commit_before_complete),
		cmocka_unit_test(test_commit_then_hangup),
		cmocka_unit_test(test_commit_twice),
		cmocka_unit_test(test_verify_hash),
		cmocka_unit_test(test_verify_needs_xxh3),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
