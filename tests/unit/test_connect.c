/*
 * The source's choice of address (mig__resolve_reachable, libmigrate/src/
 * net.c): a name with several addresses, IPv6 first as getaddrinfo sorts
 * them, where the destination listens on IPv4 only, is reached on the
 * address that answers; an address literal is taken without a probe; a
 * name that answers nowhere or does not resolve says so.
 *
 * The names come from an /etc/hosts of the test's own, bind-mounted in a
 * mount namespace of its own (root only: elsewhere the test is skipped,
 * and says why).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

#include "mig_test.h"
#include "net.h"

#define NAME "duo.migrate.test"
static char hosts[64] = "/tmp/mig-hosts.XXXXXX";

/* A listener on 127.0.0.1, its port in *port. */
static int listen_v4(int *port)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t l = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(fd, 4), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &l), 0);
	*port = ntohs(a.sin_port);
	return fd;
}

/* The test's premise: NAME resolves to two addresses, ::1 first. */
static void test_premise(void **st)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res, *a;
	int n = 0;

	(void)st;
	assert_int_equal(getaddrinfo(NAME, "80", &hints, &res), 0);
	assert_int_equal(res->ai_family, AF_INET6);
	for (a = res; a; a = a->ai_next)
		n++;
	assert_int_equal(n, 2);
	freeaddrinfo(res);
}

static void test_second_address(void **st)
{
	struct sockaddr_storage ss;
	struct sockaddr_in *in = (struct sockaddr_in *)&ss;
	mig_error err = { 0 };
	int port, fd = listen_v4(&port);

	(void)st;
	memset(&ss, 0, sizeof(ss));
	assert_int_equal(mig__resolve_reachable(NAME, port, &ss, 2000, &err), 0);
	assert_int_equal(ss.ss_family, AF_INET);
	assert_int_equal(ntohs(in->sin_port), port);
	assert_int_equal(ntohl(in->sin_addr.s_addr), INADDR_LOOPBACK);
	/* and mig__resolve, which does not probe, takes ::1 */
	assert_int_equal(mig__resolve(NAME, port, &ss, &err), 0);
	assert_int_equal(ss.ss_family, AF_INET6);
	close(fd);
}

static void test_nowhere(void **st)
{
	struct sockaddr_storage ss;
	mig_error err = { 0 };
	int port, fd = listen_v4(&port);
	int r;

	(void)st;
	close(fd); /* nothing listens there any more */
	r = mig__resolve_reachable(NAME, port, &ss, 2000, &err);
	assert_int_equal(r, -ECONNREFUSED);
	assert_int_equal(err.code, -ECONNREFUSED);
	assert_non_null(strstr(err.msg, "at any of its 2 addresses"));
	assert_non_null(strstr(err.msg, NAME));
	r = mig__resolve_reachable("no-such-host.migrate.test", port, &ss, 2000, &err);
	assert_int_equal(r, -EHOSTUNREACH);
	assert_non_null(strstr(err.msg, "cannot resolve 'no-such-host.migrate.test'"));
}

/* One address: no probe (nothing listens, and it is still the answer). */
static void test_literal(void **st)
{
	struct sockaddr_storage ss;
	mig_error err = { 0 };

	(void)st;
	assert_int_equal(mig__resolve_reachable("127.0.0.1", 9, &ss, 2000, &err), 0);
	assert_int_equal(ss.ss_family, AF_INET);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_premise),
		cmocka_unit_test(test_second_address),
		cmocka_unit_test(test_nowhere),
		cmocka_unit_test(test_literal),
	};
	FILE *f;
	int fd;

	if (geteuid() != 0) {
		printf("skipped: a mount namespace for /etc/hosts needs root\n");
		return 77;
	}
	if (unshare(CLONE_NEWNS) < 0 ||
	    mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) {
		printf("skipped: no mount namespace here: %s\n", strerror(errno));
		return 77;
	}
	fd = mkstemp(hosts);
	if (fd < 0 || !(f = fdopen(fd, "w"))) {
		perror("hosts file");
		return 1;
	}
	fprintf(f, "127.0.0.1 localhost\n::1 " NAME "\n127.0.0.1 " NAME "\n");
	fclose(f);
	if (mount(hosts, "/etc/hosts", NULL, MS_BIND, NULL) < 0) {
		fprintf(stderr, "bind-mounting %s on /etc/hosts: %s\n", hosts,
			strerror(errno));
		unlink(hosts);
		return 1;
	}
	unlink(hosts); /* the mount keeps it */
	return cmocka_run_group_tests(tests, NULL, NULL);
}
