/*
 * tls_psk_pipe HOST PORT IDENTITY KEYFILE: a TLS 1.3 PSK client (GnuTLS,
 * as migd's peer link speaks it) that relays its stdin to the connection
 * and the connection to its stdout, for tests that speak the peer
 * protocol from a script (migd_peer.py: Python's ssl has no PSK).
 * A refused handshake: its reason on stderr, exit 3. Either side's end
 * (stdin's EOF, the peer closing) ends it, exit 0. Bounded: 120 s.
 */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <gnutls/gnutls.h>

#define PRIO "NORMAL:-VERS-ALL:+VERS-TLS1.3:-KX-ALL:+ECDHE-PSK:+DHE-PSK"

static int dial(const char *host, const char *port)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai;
	int fd, r = getaddrinfo(host, port, &hints, &ai);

	if (r) {
		fprintf(stderr, "tls_psk_pipe: %s: %s\n", host, gai_strerror(r));
		return -1;
	}
	fd = socket(ai->ai_family, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
		fprintf(stderr, "tls_psk_pipe: connect: %s\n", strerror(errno));
		freeaddrinfo(ai);
		return -1;
	}
	freeaddrinfo(ai);
	return fd;
}

int main(int argc, char **argv)
{
	gnutls_psk_client_credentials_t cred;
	gnutls_session_t s;
	gnutls_datum_t key;
	unsigned char kbuf[300];
	char buf[65536];
	time_t end = time(NULL) + 120;
	FILE *f;
	size_t n;
	int fd, r;

	if (argc != 5) {
		fprintf(stderr, "usage: tls_psk_pipe HOST PORT IDENTITY KEYFILE\n");
		return 2;
	}
	f = fopen(argv[4], "rb");
	if (!f) {
		fprintf(stderr, "tls_psk_pipe: %s: %s\n", argv[4], strerror(errno));
		return 2;
	}
	n = fread(kbuf, 1, sizeof(kbuf), f);
	fclose(f);
	while (n && (kbuf[n - 1] == '\n' || kbuf[n - 1] == '\r'))
		n--; /* as migd reads its key file */
	key.data = kbuf;
	key.size = (unsigned)n;
	if ((fd = dial(argv[1], argv[2])) < 0)
		return 1;
	if (gnutls_psk_allocate_client_credentials(&cred) < 0 ||
	    gnutls_psk_set_client_credentials(cred, argv[3], &key,
					      GNUTLS_PSK_KEY_RAW) < 0 ||
	    gnutls_init(&s, GNUTLS_CLIENT) < 0 ||
	    gnutls_priority_set_direct(s, PRIO, NULL) < 0 ||
	    gnutls_credentials_set(s, GNUTLS_CRD_PSK, cred) < 0) {
		fprintf(stderr, "tls_psk_pipe: cannot set up TLS\n");
		return 1;
	}
	gnutls_transport_set_int(s, fd);
	gnutls_handshake_set_timeout(s, 20000);
	do {
		r = gnutls_handshake(s);
	} while (r < 0 && !gnutls_error_is_fatal(r));
	if (r < 0) {
		fprintf(stderr, "tls_psk_pipe: handshake: %s%s%s\n",
			gnutls_strerror(r),
			r == GNUTLS_E_FATAL_ALERT_RECEIVED ? ": " : "",
			r == GNUTLS_E_FATAL_ALERT_RECEIVED
				? gnutls_alert_get_name(gnutls_alert_get(s)) : "");
		return 3;
	}
	while (time(NULL) < end) {
		struct pollfd p[2] = { { 0, POLLIN, 0 }, { fd, POLLIN, 0 } };

		if (!gnutls_record_check_pending(s) && poll(p, 2, 1000) <= 0)
			continue;
		if (p[0].revents) {
			ssize_t k = read(0, buf, sizeof(buf)), off = 0;
			if (k <= 0)
				break;
			while (off < k) { /* a record holds 16 KiB at most */
				ssize_t w = gnutls_record_send(s, buf + off,
							       (size_t)(k - off));
				if (w <= 0)
					goto out;
				off += w;
			}
		}
		if (p[1].revents || gnutls_record_check_pending(s)) {
			ssize_t k = gnutls_record_recv(s, buf, sizeof(buf));
			if (k == GNUTLS_E_AGAIN || k == GNUTLS_E_INTERRUPTED)
				continue;
			if (k <= 0)
				break;
			if (write(1, buf, (size_t)k) != k)
				break;
		}
	}
out:
	gnutls_deinit(s);
	gnutls_psk_free_client_credentials(cred);
	close(fd);
	return 0;
}
