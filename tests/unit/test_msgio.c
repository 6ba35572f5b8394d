/* proto/msgio.c: framed protobuf messages between the project's programs
 * (migctl, migd, migvm), over a socketpair: a whole message, one over the
 * limit, one cut short, one that does not decode, silence past the
 * deadline, bad unix paths; and the JSON string writer's escapes. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "mig_test.h"
#include "control.pb-c.h"
#include "msgio.h"

static void pair(int sv[2])
{
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
}

static void test_roundtrip(void **state)
{
	Mig__Ctl__Request req = MIG__CTL__REQUEST__INIT, *got;
	Mig__Ctl__SaveState save = MIG__CTL__SAVE_STATE__INIT;
	int sv[2];
	(void)state;

	pair(sv);
	save.path = (char *)"/tmp/vm.state";
	req.req_case = MIG__CTL__REQUEST__REQ_SAVE;
	req.save = &save;
	assert_int_equal(msgio_send(sv[0], &req.base, 1000), 0);
	assert_int_equal(msgio_recv(sv[1], &mig__ctl__request__descriptor,
				    1024, 1000, (ProtobufCMessage **)&got), 0);
	assert_int_equal(got->req_case, MIG__CTL__REQUEST__REQ_SAVE);
	assert_string_equal(got->save->path, "/tmp/vm.state");
	mig__ctl__request__free_unpacked(got, NULL);
	close(sv[0]);
	close(sv[1]);
}

/* A pipe (migvm's inherited event descriptor): the same frames. */
static void test_pipe(void **state)
{
	Mig__Ctl__VmEvent ev = MIG__CTL__VM_EVENT__INIT, *got;
	int p[2];
	(void)state;

	assert_int_equal(pipe(p), 0);
	ev.ev_case = MIG__CTL__VM_EVENT__EV_INCOMING_PORT;
	ev.incoming_port = 4444;
	assert_int_equal(msgio_send(p[1], &ev.base, 1000), 0);
	assert_int_equal(msgio_recv(p[0], &mig__ctl__vm_event__descriptor,
				    1024, 1000, (ProtobufCMessage **)&got), 0);
	assert_int_equal(got->ev_case, MIG__CTL__VM_EVENT__EV_INCOMING_PORT);
	assert_int_equal(got->incoming_port, 4444);
	mig__ctl__vm_event__free_unpacked(got, NULL);
	close(p[1]);
	assert_int_equal(msgio_recv(p[0], &mig__ctl__vm_event__descriptor,
				    1024, 1000, (ProtobufCMessage **)&got),
			 -ECONNRESET);
	close(p[0]);
}

/* An event loop's reader: frames found among the bytes as they come. */
static void test_frame_next(void **state)
{
	const uint8_t two[] = { 2, 0, 0, 0, 'h', 'i', 0, 0, 0, 0, 5, 0 };
	const uint8_t big[] = { 0, 0, 1, 0 }; /* 65536 */
	const uint8_t *body = NULL;
	size_t n = 99;
	(void)state;

	for (size_t len = 0; len < 6; len++)
		assert_int_equal(msgio_frame_next(two, len, 16, &body, &n), 0);
	assert_int_equal(msgio_frame_next(two, 6, 16, &body, &n), 6);
	assert_ptr_equal(body, two + 4);
	assert_int_equal(n, 2);
	/* An empty body is a frame. */
	assert_int_equal(msgio_frame_next(two + 6, 4, 16, &body, &n), 4);
	assert_int_equal(n, 0);
	/* Two bytes of the next length: more must come. */
	assert_int_equal(msgio_frame_next(two + 10, 2, 16, &body, &n), 0);
	assert_int_equal(msgio_frame_next(big, 4, 65535, &body, &n), -EMSGSIZE);
	assert_int_equal(msgio_frame_next(big, 4, 65536, &body, &n), 0);
}

/* A frame over the reader's limit is refused from its length alone. */
static void test_over_limit(void **state)
{
	uint8_t body[100] = { 0 }, *buf = (uint8_t *)"x";
	size_t len = 0;
	int sv[2];
	(void)state;

	pair(sv);
	assert_int_equal(msgio_write(sv[0], body, sizeof(body), 1000), 0);
	assert_int_equal(msgio_read(sv[1], 99, 1000, &buf, &len), -EMSGSIZE);
	assert_null(buf);
	close(sv[0]);
	close(sv[1]);
}

/* The writer goes away mid-frame: a reset, not a short message. */
static void test_cut_short(void **state)
{
	uint8_t part[6] = { 10, 0, 0, 0, 'a', 'b' }, *buf;
	size_t len = 0;
	int sv[2];
	(void)state;

	pair(sv);
	assert_int_equal(write(sv[0], part, sizeof(part)), (ssize_t)sizeof(part));
	close(sv[0]);
	assert_int_equal(msgio_read(sv[1], 1024, 1000, &buf, &len),
			 -ECONNRESET);
	assert_null(buf);
	close(sv[1]);
}

static void test_garbage_body(void **state)
{
	uint8_t junk[5] = { 0xff, 0xff, 0xff, 0xff, 0xff };
	ProtobufCMessage *m = (ProtobufCMessage *)1;
	int sv[2];
	(void)state;

	pair(sv);
	assert_int_equal(msgio_write(sv[0], junk, sizeof(junk), 1000), 0);
	assert_int_equal(msgio_recv(sv[1], &mig__ctl__response__descriptor,
				    1024, 1000, &m), -EBADMSG);
	assert_null(m);
	close(sv[0]);
	close(sv[1]);
}

/* Half a header, then nothing: the deadline holds for the whole frame. */
static void test_deadline(void **state)
{
	uint8_t half[2] = { 4, 0 }, *buf;
	struct timespec a, b;
	size_t len = 0;
	long ms;
	int sv[2];
	(void)state;

	pair(sv);
	assert_int_equal(write(sv[0], half, 2), 2);
	clock_gettime(CLOCK_MONOTONIC, &a);
	assert_int_equal(msgio_read(sv[1], 1024, 200, &buf, &len), -ETIMEDOUT);
	clock_gettime(CLOCK_MONOTONIC, &b);
	ms = (b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000;
	assert_true(ms >= 150 && ms < 5000);
	close(sv[0]);
	close(sv[1]);
}

static void test_unix_paths(void **state)
{
	char longp[200];
	ProtobufCMessage *resp = (ProtobufCMessage *)1;
	Mig__Ctl__Request req = MIG__CTL__REQUEST__INIT;
	(void)state;

	memset(longp, 'a', sizeof(longp) - 1);
	longp[0] = '/';
	longp[sizeof(longp) - 1] = '\0';
	assert_int_equal(msgio_connect_unix(longp), -ENAMETOOLONG);
	assert_int_equal(msgio_call_unix("/nonexistent/migvm.sock", &req.base,
					 &mig__ctl__response__descriptor, 1024,
					 1000, &resp), -ENOENT);
	assert_null(resp);
}

static void test_json_string(void **state)
{
	char *out = NULL;
	size_t n = 0;
	FILE *f = open_memstream(&out, &n);
	(void)state;

	assert_non_null(f);
	json_string(f, "a\"b\\c\n\x1b[2J\x7f" "é");
	json_string(f, NULL);
	fclose(f);
	assert_string_equal(out, "\"a\\\"b\\\\c\\u000a\\u001b[2J\\u007f"
			    "é\"\"\"");
	free(out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_roundtrip),
		cmocka_unit_test(test_pipe),
		cmocka_unit_test(test_frame_next),
		cmocka_unit_test(test_over_limit),
		cmocka_unit_test(test_cut_short),
		cmocka_unit_test(test_garbage_body),
		cmocka_unit_test(test_deadline),
		cmocka_unit_test(test_unix_paths),
		cmocka_unit_test(test_json_string),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
