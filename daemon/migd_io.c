/*
 * Blocking calls with deadlines, for the migration threads (and the loop's
 * short calls to a migvm), through proto/msgio.c; the peer link's socket
 * options.
 */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "migd.h"

/*
 * A peer daemon that vanishes without a reset (link down, host gone) must
 * not hold a reservation or a migration thread forever: keepalive probes
 * after 10 s of silence, 3 unanswered 5 s apart end the connection, and so
 * does data left unacknowledged for 25 s.
 */
void peer_keepalive(int fd)
{
	int on = 1, idle = 10, intvl = 5, cnt = 3;
	unsigned int user_timeout_ms = 25000;

	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
	setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms,
		   sizeof(user_timeout_ms));
}

int vmctl_call(const char *sock, Mig__Ctl__Request *req,
	       Mig__Ctl__Response **resp, int timeout_ms)
{
	return msgio_call_unix(sock, &req->base,
			       &mig__ctl__response__descriptor, MIGD_FRAME_MAX,
			       timeout_ms, (ProtobufCMessage **)resp);
}

int vmctl_status(const char *sock, Mig__Ctl__Response **resp)
{
	Mig__Ctl__Request req = MIG__CTL__REQUEST__INIT;
	Mig__Ctl__Empty empty = MIG__CTL__EMPTY__INIT;

	req.req_case = MIG__CTL__REQUEST__REQ_STATUS;
	req.status = &empty;
	return vmctl_call(sock, &req, resp, 2000);
}
