/*
 * The destination against a scripted source on loopback: the message order
 * of stop-and-copy is enforced, and the VM state is loaded exactly once,
 * whatever a confused or hostile peer sends. No KVM: the "VM" is an
 * anonymous mapping and ops that count their calls.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "mig_test.h"
#include "frame.h"
#include "session.h"
#include "migrate/migrate.h"

#define MEM_SIZE (64u << 10)
#define TOKEN "t0ken"
#define EARLY MIG__WIRE__FEATURE__FEATURE_EARLY_STATE
#define XXH3 MIG__WIRE__FEATURE__FEATURE_XXH3

static const uint8_t cpuid[4] = { 1, 2, 3, 4 };

struct fake_vm {
	int load_state, load_item, resume;
	char last_item[64];
};

static int op_pause(void *o, mig_error *e) { (void)o; (void)e; return 0; }
static int op_save(void *o, mig_state *s, mig_error *e)
{
	(void)o; (void)s; (void)e;
	return 0;
}
static int op_resume(void *o, mig_error *e)
{
	(void)e;
	((struct fake_vm *)o)->resume++;
	return 0;
}
static int op_load(void *o, const mig_state *in, mig_error *e)
{
	const void *data;
	size_t len;

	((struct fake_vm *)o)->load_state++;
	if (mig_state_get(in, "dev", &data, &len) < 0)
		return mig__err(e, -ENOENT, "no \"dev\" item");
	return 0;
}
static int op_load_item(void *o, const char *name, const void *data,
			size_t len, mig_error *e)
{
	struct fake_vm *vm = o;

	(void)data; (void)len; (void)e;
	vm->load_item++;
	snprintf(vm->last_item, sizeof(vm->last_item), "%s", name);
	return 0;
}

static const mig_vm_ops ops = {
	.pause = op_pause,
	.resume = op_resume,
	.save_state = op_save,
	.load_state = op_load,
	.load_state_item = op_load_item,
};

struct rig {
	struct fake_vm vm;
	mig_dest *dst;
	void *mem;
	int nullfd, sock, port;
	uint8_t in[1 << 16];
	size_t in_len;
};

/* A TCP connection to the destination's port on loopback from address
 * `from` (NULL: any), reads timing out after 15 s; -errno if refused. */
static int dial_from(const char *from, int port)
{
	struct sockaddr_in sa = { 0 };
	struct timeval tv = { .tv_sec = 15 };
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	assert_true(fd >= 0);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (from) {
		sa.sin_family = AF_INET;
		assert_int_equal(inet_pton(AF_INET, from, &sa.sin_addr), 1);
		assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	}
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	return fd;
}

static int dial(int port)
{
	return dial_from(NULL, port);
}

/* The destination, listening, with no source yet. */
static void rig_start(struct rig *g, int load_early, uint32_t timeout_ms)
{
	mig_dest_config cfg = { 0 };
	mig_region reg = { 0 };
	mig_error err = { 0 };

	memset(g, 0, sizeof(*g));
	g->mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(g->mem != MAP_FAILED);
	g->nullfd = open("/dev/null", O_RDONLY);
	assert_true(g->nullfd >= 0);
	reg.gpa = 0;
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
	cfg.uri = "tcp:127.0.0.1:0";
	cfg.token = TOKEN;
	cfg.timeout_ms = timeout_ms;
	cfg.load_state_early = load_early;
	assert_int_equal(mig_dest_create(&g->dst, &cfg, &err), 0);
	assert_int_equal(mig_dest_start(g->dst, &err), 0);
	g->port = mig_dest_port(g->dst);
	assert_true(g->port > 0);
}

/* A Hello with `token`, for connection 0 of 1 of session 7. */
static void put_hello(mig_buf *b, uint64_t features, const char *token)
{
	uint8_t sid[16] = { 7 };
	Mig__Wire__Hello h = MIG__WIRE__HELLO__INIT;
	Mig__Wire__Envelope e = MIG__WIRE__ENVELOPE__INIT;

	h.version_major = MIG_PROTOCOL_VERSION;
	h.features = features;
	h.token.data = (uint8_t *)token;
	h.token.len = strlen(token);
	h.connection_count = 1;
	h.session_id.data = sid;
	h.session_id.len = sizeof(sid);
	e.msg_case = MIG__WIRE__ENVELOPE__MSG_HELLO;
	e.hello = &h;
	assert_int_equal(mig__msg_pack(&e, b), 0);
}

/* The source's control connection: its Hello, then the VM config. */
static void rig_connect(struct rig *g, uint64_t features)
{
	mig_buf b = { 0 };
	Mig__Wire__Envelope e = MIG__WIRE__ENVELOPE__INIT;

	g->sock = dial(g->port);
	assert_true(g->sock >= 0);
	put_hello(&b, features, TOKEN);
	Mig__Wire__Region wr = MIG__WIRE__REGION__INIT, *wrp = &wr;
	wr.size = MEM_SIZE;
	Mig__Wire__VmConfig vc = MIG__WIRE__VM_CONFIG__INIT;
	vc.n_regions = 1;
	vc.regions = &wrp;
	vc.vcpus = 1;
	vc.page_size = MIG_PAGE_SIZE;
	vc.cpuid.data = (uint8_t *)cpuid;
	vc.cpuid.len = sizeof(cpuid);
	e.msg_case = MIG__WIRE__ENVELOPE__MSG_VM_CONFIG;
	e.vm_config = &vc;
	assert_int_equal(mig__msg_pack(&e, &b), 0);
	assert_int_equal(write(g->sock, b.data, b.len), (ssize_t)b.len);
	mig__buf_free(&b);
}

static void rig_up_late(struct rig *g, int load_early, uint64_t features,
			uint32_t timeout_ms, unsigned late_ms)
{
	rig_start(g, load_early, timeout_ms);
	usleep(late_ms * 1000u); /* the source shows up late */
	rig_connect(g, features);
}

static void rig_up(struct rig *g, int load_early, uint64_t features)
{
	rig_up_late(g, load_early, features, 5000, 0);
}

static void rig_down(struct rig *g)
{
	close(g->sock);
	mig_dest_destroy(g->dst);
	close(g->nullfd);
	munmap(g->mem, MEM_SIZE);
}

/* The next message from the destination, or NULL at EOF. */
static Mig__Wire__Envelope *next_msg(struct rig *g)
{
	for (;;) {
		mig_frame f;
		long n = mig__frame_parse(g->in, g->in_len, &f);
		assert_true(n >= 0);
		if (n > 0) {
			int err = 0;
			Mig__Wire__Envelope *env;

			assert_int_equal(f.type, MIG_FRAME_MSG);
			env = mig__msg_unpack(f.body, f.len, &err);
			assert_non_null(env);
			memmove(g->in, g->in + n, g->in_len - (size_t)n);
			g->in_len -= (size_t)n;
			return env;
		}
		assert_true(g->in_len < sizeof(g->in));
		ssize_t r = read(g->sock, g->in + g->in_len, sizeof(g->in) - g->in_len);
		assert_true(r >= 0); /* a timeout fails the test */
		if (r == 0)
			return NULL;
		g->in_len += (size_t)r;
	}
}

static void expect_msg(struct rig *g, Mig__Wire__Envelope__MsgCase want)
{
	Mig__Wire__Envelope *env = next_msg(g);

	assert_non_null(env);
	if (env->msg_case == MIG__WIRE__ENVELOPE__MSG_ABORT)
		fail_msg("destination aborted: %s", env->abort->reason);
	assert_int_equal(env->msg_case, want);
	if (want == MIG__WIRE__ENVELOPE__MSG_CONFIG_ACK)
		assert_true(env->config_ack->ok);
	if (want == MIG__WIRE__ENVELOPE__MSG_HELLO_ACK)
		assert_true(env->hello_ack->ok);
	mig__msg_free(env);
}

/* Script steps: each appends one message to the outgoing buffer. */
static void put(mig_buf *b, Mig__Wire__Envelope *e)
{
	assert_int_equal(mig__msg_pack(e, b), 0);
}

static void put_switchover(mig_buf *b)
{
	Mig__Wire__Switchover sw = MIG__WIRE__SWITCHOVER__INIT;
	Mig__Wire__Envelope e = MIG__WIRE__ENVELOPE__INIT;
	sw.round = 1;
	e.msg_case = MIG__WIRE__ENVELOPE__MSG_SWITCHOVER;
	e.switchover = &sw;
	put(b, &e);
}

static void put_state(mig_buf *b, const char *name)
{
	Mig__Wire__StateBlob sb = MIG__WIRE__STATE_BLOB__INIT;
	Mig__Wire__Envelope e = MIG__WIRE__ENVELOPE__INIT;
	sb.name = (char *)name;
	sb.data.data = (uint8_t *)"x";
	sb.data.len = 1;
	e.msg_case = MIG__WIRE__ENVELOPE__MSG_STATE;
	e.state = &sb;
	put(b, &e);
}

static void put_state_end(mig_buf *b, uint32_t items)
{
	Mig__Wire__StateEnd se = MIG__WIRE__STATE_END__INIT;
	Mig__Wire__Envelope e = MIG__WIRE__ENVELOPE__INIT;
	se.items = items;
	e.msg_case = MIG__WIRE__ENVELOPE__MSG_STATE_END;
	e.state_end = &se;
	put(b, &e);
}

/* Complete, with `hash` (16 bytes) as its memory hash unless NULL. */
static void put_complete_hash(mig_buf *b, const uint8_t *hash)
{
	Mig__Wire__Complete c = MIG__WIRE__COMPLETE__INIT;
	Mig__Wire__Envelope e = MIG__WIRE__ENVELOPE__INIT;
	if (hash) {
		c.memory_hash.data = (uint8_t *)hash;
		c.memory_hash.len = 16;
	}
	e.msg_case = MIG__WIRE__ENVELOPE__MSG_COMPLETE;
	e.complete = &c;
	put(b, &e);
}

static void put_complete(mig_buf *b)
{
	put_complete_hash(b, NULL);
}

static void put_activate(mig_buf *b)
{
	Mig__Wire__Activate a = MIG__WIRE__ACTIVATE__INIT;
	Mig__Wire__Envelope e = MIG__WIRE__ENVELOPE__INIT;
	e.msg_case = MIG__WIRE__ENVELOPE__MSG_ACTIVATE;
	e.activate = &a;
	put(b, &e);
}

/* A message only the destination sends. */
static void put_commit(mig_buf *b)
{
	Mig__Wire__Commit c = MIG__WIRE__COMMIT__INIT;
	Mig__Wire__Envelope e = MIG__WIRE__ENVELOPE__INIT;
	e.msg_case = MIG__WIRE__ENVELOPE__MSG_COMMIT;
	e.commit = &c;
	put(b, &e);
}

static void send_buf(struct rig *g, mig_buf *b)
{
	assert_int_equal(write(g->sock, b->data, b->len), (ssize_t)b->len);
	mig__buf_free(b);
}

/* The destination ends with error `code` naming `what`, having told the
 * source with an Abort, and never resumes. */
static void expect_error(struct rig *g, int code, const char *what)
{
	mig_error err = { 0 };
	Mig__Wire__Envelope *env;
	int aborted = 0;

	while ((env = next_msg(g))) {
		if (env->msg_case == MIG__WIRE__ENVELOPE__MSG_ABORT) {
			assert_int_equal(env->abort->error, code);
			aborted = 1;
		}
		mig__msg_free(env);
	}
	assert_true(aborted);
	assert_int_equal(mig_dest_wait(g->dst, &err), code);
	if (!strstr(err.msg, what))
		fail_msg("error \"%s\" does not name \"%s\"", err.msg, what);
	assert_non_null(strstr(err.msg, "VM not resumed"));
	assert_int_equal(g->vm.resume, 0);
}

static void expect_protocol_error(struct rig *g, const char *what)
{
	expect_error(g, MIG_E_PROTOCOL, what);
}

static void handshake(struct rig *g)
{
	expect_msg(g, MIG__WIRE__ENVELOPE__MSG_HELLO_ACK);
	expect_msg(g, MIG__WIRE__ENVELOPE__MSG_CONFIG_ACK);
}

/* The well-behaved stop-and-copy up to the destination's Commit: the
 * switchover, one state item, StateEnd when `early`, Complete. */
static void run_to_commit(struct rig *g, int early)
{
	mig_buf b = { 0 };

	handshake(g);
	put_switchover(&b);
	put_state(&b, "dev");
	if (early)
		put_state_end(&b, 1);
	put_complete(&b);
	send_buf(g, &b);
	expect_msg(g, MIG__WIRE__ENVELOPE__MSG_COMMIT);
}

/* The well-behaved early-state order: items load as they arrive, the
 * rest once, then commit and activation. */
static void test_early_state_ok(void **state)
{
	struct rig g;
	mig_buf b = { 0 };
	mig_error err = { 0 };

	(void)state;
	rig_up(&g, 1, EARLY);
	run_to_commit(&g, 1);
	put_activate(&b);
	send_buf(&g, &b);
	expect_msg(&g, MIG__WIRE__ENVELOPE__MSG_ACTIVATED);
	assert_int_equal(mig_dest_wait(g.dst, &err), 0);
	assert_int_equal(g.vm.load_item, 1);
	assert_string_equal(g.vm.last_item, "dev");
	assert_int_equal(g.vm.load_state, 1);
	assert_int_equal(g.vm.resume, 1);
	rig_down(&g);
}

/* The idle timeout starts with the source's hello: a destination that
 * waited for its source longer than the timeout does not give up on it
 * at its first tick. */
static void test_late_source_not_timed_out(void **state)
{
	struct rig g;
	mig_buf b = { 0 };

	(void)state;
	rig_up_late(&g, 0, 0, 1000, 1500);
	handshake(&g);
	usleep(500 * 1000); /* two ticks, well under the timeout */
	put_switchover(&b);
	put_state(&b, "dev");
	put_complete(&b);
	send_buf(&g, &b);
	expect_msg(&g, MIG__WIRE__ENVELOPE__MSG_COMMIT);
	rig_down(&g);
}

/*
 * A script the destination must refuse with a protocol error naming
 * `error`, never resuming: after the handshake (and, with `to_commit`, a
 * well-behaved stop-and-copy up to its Commit), `steps` sends W =
 * Switchover, s = state item "dev", E = StateEnd(1), C = Complete,
 * A = Activate, K = Commit. Then the ops' counters must read `load_item` and
 * `load_state` (-1: not checked).
 */
static void refused(int load_early, uint64_t features, int to_commit,
		    const char *steps, const char *error, int load_item,
		    int load_state)
{
	struct rig g;
	mig_buf b = { 0 };

	rig_up(&g, load_early, features);
	if (to_commit)
		run_to_commit(&g, (features & EARLY) && load_early);
	else
		handshake(&g);
	for (const char *p = steps; *p; p++) {
		switch (*p) {
		case 'W': put_switchover(&b); break;
		case 's': put_state(&b, "dev"); break;
		case 'E': put_state_end(&b, 1); break;
		case 'C': put_complete(&b); break;
		case 'A': put_activate(&b); break;
		case 'K': put_commit(&b); break;
		default: fail_msg("bad step '%c'", *p);
		}
	}
	send_buf(&g, &b);
	expect_protocol_error(&g, error);
	if (load_item >= 0)
		assert_int_equal(g.vm.load_item, load_item);
	if (load_state >= 0)
		assert_int_equal(g.vm.load_state, load_state);
	rig_down(&g);
}

/* State after the commit must not be loaded again. */
static void test_state_after_commit(void **state)
{
	(void)state;
	refused(1, EARLY, 1, "s", "VM state after its end", 1, 1);
}

static void test_state_end_after_commit(void **state)
{
	(void)state;
	refused(1, EARLY, 1, "E", "unexpected end of VM state", -1, 1);
}

/* With early state negotiated, Complete needs StateEnd first. */
static void test_complete_before_state_end(void **state)
{
	(void)state;
	refused(1, EARLY, 0, "WsC", "before the end of VM state", -1, 0);
}

static void test_second_switchover(void **state)
{
	(void)state;
	refused(1, EARLY, 0, "WW", "second switchover", -1, -1);
}

/* A source that did not ask for early state: its items wait for the
 * complete image, and a StateEnd from it is a protocol error. */
static void test_not_negotiated_loads_at_end(void **state)
{
	struct rig g;
	mig_buf b = { 0 };
	mig_error err = { 0 };

	(void)state;
	rig_up(&g, 1, 0);
	run_to_commit(&g, 0);
	put_activate(&b);
	send_buf(&g, &b);
	expect_msg(&g, MIG__WIRE__ENVELOPE__MSG_ACTIVATED);
	assert_int_equal(mig_dest_wait(g.dst, &err), 0);
	/* read once the destination's thread is joined */
	assert_int_equal(g.vm.load_item, 0);
	assert_int_equal(g.vm.load_state, 1);
	rig_down(&g);
}

/* The hello's answer grants what the source asked for and the
 * destination has, nothing more: a source that did not ask for early
 * state (verify) must not be told to send it. */
static void hello_grants(int load_early, uint64_t asked, uint64_t granted)
{
	struct rig g;
	Mig__Wire__Envelope *env;

	rig_up(&g, load_early, asked);
	env = next_msg(&g);
	assert_non_null(env);
	assert_int_equal(env->msg_case, MIG__WIRE__ENVELOPE__MSG_HELLO_ACK);
	assert_true(env->hello_ack->ok);
	assert_int_equal(env->hello_ack->features, granted);
	mig__msg_free(env);
	rig_down(&g);
}

static void test_hello_grants_only_asked(void **state)
{
	const uint64_t zstd = MIG__WIRE__FEATURE__FEATURE_ZSTD;
	(void)state;
	hello_grants(1, 0, 0);
	hello_grants(1, zstd, zstd);
	hello_grants(1, zstd | EARLY, zstd | EARLY);
	hello_grants(0, zstd | EARLY, zstd);
	hello_grants(1, zstd | (1ull << 40), zstd); /* unknown bits dropped */
	hello_grants(0, zstd | XXH3, zstd | XXH3);
}

/* A destination not configured for early state refuses StateEnd even
 * from a source that asked for it. */
static void test_early_not_configured(void **state)
{
	(void)state;
	refused(0, EARLY, 0, "WsE", "unexpected end of VM state", 0, 0);
}

/* The same item twice is refused, not loaded over the first. */
static void test_duplicate_item(void **state)
{
	(void)state;
	refused(1, EARLY, 0, "Wss", "sent twice", 1, 0);
}

/* Without early state, State after the commit is refused too, not
 * stored over what was loaded nor loaded item by item. */
static void test_not_negotiated_state_after_commit(void **state)
{
	(void)state;
	refused(1, 0, 1, "s", "VM state after its end", 0, 1);
}

static void test_not_negotiated_state_end(void **state)
{
	(void)state;
	refused(1, 0, 0, "WsE", "unexpected end of VM state", 0, 0);
}

/* Activate before the image is committed never resumes. */
static void test_activate_before_commit(void **state)
{
	(void)state;
	refused(0, 0, 0, "WA", "activate before commit", -1, -1);
}

/* What only the destination sends is refused from the source, named as
 * such. */
static void test_commit_from_source(void **state)
{
	(void)state;
	refused(1, EARLY, 1, "K", "unexpected Commit from the source", -1, 1);
}

/* verify, late state: the source's Complete carries the hash of its
 * memory at the pause; the destination hashes what it holds (no pages
 * came: all zero, as the source's) and commits with the same hash, or
 * refuses a different one without resuming, or one of a kind it did not
 * negotiate (an older source's). */
static void with_hash(uint64_t features, int good, int code, const char *what)
{
	struct rig g;
	mig_buf b = { 0 };
	uint8_t h[16];
	Mig__Wire__Envelope *env;
	XXH128_canonical_t c;

	/* XXH3-128 of no page at all: memory that is all zero. */
	XXH128_canonicalFromHash(&c, XXH3_128bits(NULL, 0));
	memcpy(h, c.digest, sizeof(h));
	if (!good)
		h[15] ^= 1;
	rig_up(&g, 0, features);
	handshake(&g);
	put_switchover(&b);
	put_state(&b, "dev");
	put_complete_hash(&b, h);
	send_buf(&g, &b);
	if (code) {
		expect_error(&g, code, what);
		assert_int_equal(g.vm.load_state, 0);
		rig_down(&g);
		return;
	}
	env = next_msg(&g);
	assert_non_null(env);
	assert_int_equal(env->msg_case, MIG__WIRE__ENVELOPE__MSG_COMMIT);
	assert_int_equal(env->commit->memory_hash.len, 16);
	assert_memory_equal(env->commit->memory_hash.data, h, 16);
	mig__msg_free(env);
	assert_int_equal(g.vm.load_state, 1);
	rig_down(&g);
}

static void test_hash_matches(void **state)
{
	(void)state;
	with_hash(XXH3, 1, 0, NULL);
}

static void test_hash_differs(void **state)
{
	(void)state;
	with_hash(XXH3, 0, -EIO, "hash mismatch");
}

static void test_hash_not_negotiated(void **state)
{
	(void)state;
	with_hash(0, 1, MIG_E_VERSION, "older kind (no XXH3-128)");
}

/* ---- Strangers: connections that are not (yet) the source's ---- */

/* 1 if the destination closed fd (EOF or reset, after whatever it sent)
 * within `ms`, 0 if fd is still open then. */
static int closed_within(int fd, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	uint8_t buf[4096];

	for (;;) {
		int r = poll(&p, 1, ms);
		assert_true(r >= 0);
		if (r == 0)
			return 0;
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n == 0 || (n < 0 && errno == ECONNRESET))
			return 1;
		assert_true(n > 0);
	}
}

/* The source arrives after the strangers, and its migration runs to the
 * end: Commit, Activate, resumed here. */
static void source_migrates(struct rig *g)
{
	mig_buf b = { 0 };
	mig_error err = { 0 };

	rig_connect(g, 0);
	run_to_commit(g, 0);
	put_activate(&b);
	send_buf(g, &b);
	expect_msg(g, MIG__WIRE__ENVELOPE__MSG_ACTIVATED);
	assert_int_equal(mig_dest_wait(g->dst, &err), 0);
	assert_int_equal(g->vm.resume, 1);
}

/* A hundred wrong tokens and twenty strangers speaking something else
 * (each turned away, told why when it spoke our protocol) do not fail
 * the migration that comes after them: the "64 rejected connections"
 * abort is gone. */
static void test_strangers_never_fail(void **state)
{
	static const char http[] = "GET / HTTP/1.0\r\n\r\n";
	struct rig g;

	(void)state;
	rig_start(&g, 0, 5000);
	for (int i = 0; i < 100; i++) {
		mig_buf b = { 0 };
		struct rig s = { .port = g.port };
		Mig__Wire__Envelope *env;

		s.sock = dial(g.port);
		assert_true(s.sock >= 0);
		put_hello(&b, 0, "wr0ng");
		send_buf(&s, &b);
		env = next_msg(&s);
		assert_non_null(env);
		assert_int_equal(env->msg_case, MIG__WIRE__ENVELOPE__MSG_HELLO_ACK);
		assert_false(env->hello_ack->ok);
		assert_int_equal(env->hello_ack->error, MIG_E_AUTH);
		mig__msg_free(env);
		assert_int_equal(closed_within(s.sock, 5000), 1);
		close(s.sock);
	}
	for (int i = 0; i < 20; i++) {
		int fd = dial(g.port);
		assert_true(fd >= 0);
		assert_int_equal(write(fd, http, sizeof(http) - 1),
				 (ssize_t)sizeof(http) - 1);
		assert_int_equal(closed_within(fd, 5000), 1);
		close(fd);
	}
	source_migrates(&g);
	rig_down(&g);
}

/* Once the session's connections are all here (one, for this source),
 * strangers still waiting are closed and no one else gets in. */
static void test_door_closes_when_all_here(void **state)
{
	struct rig g;
	mig_buf b = { 0 };
	mig_error err = { 0 };
	int idle[3];

	(void)state;
	rig_start(&g, 0, 5000);
	for (int i = 0; i < 3; i++)
		assert_true((idle[i] = dial(g.port)) >= 0);
	rig_connect(&g, 0);
	handshake(&g);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(closed_within(idle[i], 5000), 1);
		close(idle[i]);
	}
	assert_int_equal(dial(g.port), -ECONNREFUSED);
	put_switchover(&b);
	put_state(&b, "dev");
	put_complete(&b);
	send_buf(&g, &b);
	expect_msg(&g, MIG__WIRE__ENVELOPE__MSG_COMMIT);
	put_activate(&b);
	send_buf(&g, &b);
	expect_msg(&g, MIG__WIRE__ENVELOPE__MSG_ACTIVATED);
	assert_int_equal(mig_dest_wait(g.dst, &err), 0);
	rig_down(&g);
}

/* A flood of silent strangers never keeps the source out: 32 may wait
 * from one address and 64 in all, and a newcomer over a limit closes the
 * oldest waiting (from its address, or of all). */
static void test_flood_makes_room(void **state)
{
	struct rig g;
	int a[40], b[40];

	(void)state;
	rig_start(&g, 0, 5000);
	for (int i = 0; i < 40; i++)
		assert_true((a[i] = dial_from("127.0.0.2", g.port)) >= 0);
	/* The 33rd to 40th from 127.0.0.2 closed its 8 oldest. */
	for (int i = 0; i < 40; i++)
		assert_int_equal(closed_within(a[i], i < 8 ? 5000 : 20), i < 8);
	for (int i = 0; i < 40; i++)
		assert_true((b[i] = dial_from("127.0.0.3", g.port)) >= 0);
	/* 127.0.0.3's own 8 oldest made room for its last 8: 64 wait. */
	for (int i = 0; i < 40; i++)
		assert_int_equal(closed_within(b[i], i < 8 ? 5000 : 20), i < 8);
	assert_int_equal(closed_within(a[8], 100), 0);
	/* The source, from a third address, closes the oldest of all. */
	source_migrates(&g);
	for (int i = 0; i < 40; i++) {
		close(a[i]);
		close(b[i]);
	}
	rig_down(&g);
}

/* A stranger that never says hello is closed after 10 s; the destination
 * waits on for its source (there is no deadline before one comes). */
static void test_silent_stranger_closed(void **state)
{
	struct rig g;
	struct timespec t0, t1;
	int fd;

	(void)state;
	rig_start(&g, 0, 5000);
	fd = dial(g.port);
	assert_true(fd >= 0);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	assert_int_equal(closed_within(fd, 15000), 1);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	assert_true(t1.tv_sec - t0.tv_sec >= 9);
	close(fd);
	source_migrates(&g);
	rig_down(&g);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_early_state_ok),
		cmocka_unit_test(test_late_source_not_timed_out),
		cmocka_unit_test(test_state_after_commit),
		cmocka_unit_test(test_state_end_after_commit),
		cmocka_unit_test(test_complete_before_state_end),
		cmocka_unit_test(test_second_switchover),
		cmocka_unit_test(test_not_negotiated_loads_at_end),
		cmocka_unit_test(test_not_negotiated_state_after_commit),
		cmocka_unit_test(test_not_negotiated_state_end),
		cmocka_unit_test(test_activate_before_commit),
		cmocka_unit_test(test_commit_from_source),
		cmocka_unit_test(test_hash_matches),
		cmocka_unit_test(test_hash_differs),
		cmocka_unit_test(test_hash_not_negotiated),
		cmocka_unit_test(test_early_not_configured),
		cmocka_unit_test(test_hello_grants_only_asked),
		cmocka_unit_test(test_duplicate_item),
		cmocka_unit_test(test_strangers_never_fail),
		cmocka_unit_test(test_door_closes_when_all_here),
		cmocka_unit_test(test_flood_makes_room),
		cmocka_unit_test(test_silent_stranger_closed),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
