/*
 * The peer protocol between daemons (daemon.proto PeerMsg, u32 length
 * framing) inside TLS 1.3 keyed with the pre-shared key (migd_tls.c):
 * the handshake proves to each side that the other holds the key, so a
 * daemon neither takes a VM from nor hands one to an impostor, and every
 * message after it is sealed. Until the handshake is done nothing else is
 * read, within the gate's deadline (migd_gate.h).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "migd.h"
#include "migd_gate.h"

/* ---- server --------------------------------------------------------- */

struct peer_conn {
	uv_tcp_t tcp;
	struct gate_entry gate;     /* until it authenticates */
	struct tls_srv *tls;
	bool heard;                 /* something came: a handshake began */
	bool authed, closing;
	char addr[128];
	uint8_t *buf;               /* plaintext, not yet whole frames */
	size_t len, cap;
};

/* Ciphertext as libuv reads it, handed to the connection's TLS at once. */
static uint8_t peer_rbuf[65536];

static uv_tcp_t peer_server;
/* Strangers on the peer port: 10 s to authenticate, 16 from one address,
 * 64 in all (a daemon's peers use one connection per migration, and
 * authenticate in a round trip). */
static struct gate peer_gate = {
	.what = "peer", .max = 64, .per_addr = 16, .deadline_ms = 10000,
};

static void conn_closed(uv_handle_t *h)
{
	struct peer_conn *c = h->data;
	tls_srv_free(c->tls);
	free(c->buf);
	free(c);
}

static void conn_close(struct peer_conn *c)
{
	if (c->closing)
		return;
	c->closing = true;
	gate_leave(&c->gate);
	/* A reservation of this connection that was never committed goes:
	 * unless the VM already runs here (then the source gave it up). */
	for (struct vmrec *v = g.vms; v; v = v->next) {
		if (v->reserver == c)
			v->reserver = NULL;
		if (v->owner != c)
			continue;
		v->owner = NULL;
		if (v->state == VM_INCOMING && !v->activated && v->child) {
			snprintf(v->last_error, sizeof(v->last_error),
				 "the source daemon %s went away before the "
				 "commit", c->addr);
			mlog(LOG_WARN, v, "%s: releasing", v->last_error);
			vm_kill(v, SIGTERM);
		}
	}
	uv_close((uv_handle_t *)&c->tcp, conn_closed);
}

static void send_peer(struct peer_conn *c, Mig__D__PeerMsg *m)
{
	size_t n = mig__d__peer_msg__get_packed_size(m);
	uint8_t *buf = malloc(n + 4);

	if (!buf || c->closing) {
		free(buf);
		return;
	}
	buf[0] = (uint8_t)n;
	buf[1] = (uint8_t)(n >> 8);
	buf[2] = (uint8_t)(n >> 16);
	buf[3] = (uint8_t)(n >> 24);
	mig__d__peer_msg__pack(m, buf + 4);
	if (tls_srv_write(c->tls, buf, n + 4) < 0)
		mlog(LOG_WARN, NULL, "peer %s: a reply could not be sent",
		     c->addr);
	free(buf);
}

static void reply_why(struct peer_conn *c, bool ok, Mig__D__Refusal why,
		      const char *msg, int port, const char *token)
{
	Mig__D__PeerMsg m = MIG__D__PEER_MSG__INIT;
	Mig__D__Reply r = MIG__D__REPLY__INIT;

	r.ok = ok;
	r.refusal = ok ? MIG__D__REFUSAL__REFUSAL_NONE : why;
	r.message = (char *)(msg ? msg : "");
	r.port = (uint32_t)(port > 0 ? port : 0);
	r.token = (char *)(token ? token : "");
	m.msg_case = MIG__D__PEER_MSG__MSG_REPLY;
	m.reply = &r;
	send_peer(c, &m);
}

static void reply(struct peer_conn *c, bool ok, const char *msg, int port,
		  const char *token)
{
	reply_why(c, ok, MIG__D__REFUSAL__REFUSAL_OTHER, msg, port, token);
}

/* vm->reserve_done: the incoming migvm printed its port, or ended. */
static void reserve_done(struct vmrec *vm, const char *error)
{
	struct peer_conn *c = vm->reserver;

	if (!c)
		return;
	vm->reserver = NULL;
	if (error) {
		reply(c, false, error, 0, NULL);
		return;
	}
	mlog(LOG_INFO, vm, "reserved for %s: incoming migvm on port %d",
	     vm->peer, vm->incoming_port);
	{
		Mig__D__PeerMsg m = MIG__D__PEER_MSG__INIT;
		Mig__D__Reply r = MIG__D__REPLY__INIT;

		r.ok = true;
		r.message = (char *)"";
		r.port = (uint32_t)vm->incoming_port;
		r.token = vm->token;
		if (!g.plain_data) {
			r.tls_key.data = vm->data_key;
			r.tls_key.len = sizeof(vm->data_key);
		}
		m.msg_case = MIG__D__PEER_MSG__MSG_REPLY;
		m.reply = &r;
		send_peer(c, &m);
	}
	/* the incoming migvm and the source have it: no one else needs it */
	explicit_bzero(vm->data_key, sizeof(vm->data_key));
}

static void handle_reserve(struct peer_conn *c, Mig__D__Reserve *r)
{
	Mig__D__VmConfig *cfg = r->config;
	char msg[512];
	uint64_t avail = mem_available_mib(), room;
	struct vmrec *vm;
	int err;

	if (!cfg || !cfg->name || !name_valid(cfg->name) || cfg->mem_mib < 2 ||
	    cfg->cpus < 1 || cfg->cpus > 64 || !r->migration_id ||
	    strlen(r->migration_id) >= sizeof(vm->mig_id)) {
		reply(c, false, "bad reservation (name, mem, cpus)", 0, NULL);
		return;
	}
	if (r->tls == g.plain_data) {
		snprintf(msg, sizeof(msg), r->tls
			 ? "this host migrates in clear (--no-tls), the source "
			   "with TLS: both daemons alike"
			 : "this host takes migrations over TLS only; the "
			   "source runs with --no-tls");
		g.n_reserve_refused++;
		mlog(LOG_WARN, NULL, "reservation from %s refused: %s", c->addr,
		     msg);
		reply(c, false, msg, 0, NULL);
		return;
	}
	room = avail;
	if (g.max_mem_mib) {
		uint64_t used = mem_used_mib();
		uint64_t cap = g.max_mem_mib > used ? g.max_mem_mib - used : 0;
		if (cap < room)
			room = cap;
	}
	if (cfg->mem_mib > room) {
		snprintf(msg, sizeof(msg), "not enough memory for %s: %llu MiB "
			 "asked, %llu MiB available", cfg->name,
			 (unsigned long long)cfg->mem_mib,
			 (unsigned long long)room);
		g.n_reserve_refused++;
		mlog(LOG_WARN, NULL, "reservation from %s refused: %s", c->addr,
		     msg);
		reply(c, false, msg, 0, NULL);
		return;
	}
	pthread_mutex_lock(&g.lock);
	vm = vm_claim(cfg->name, &err);
	if (!vm) {
		pthread_mutex_unlock(&g.lock);
		snprintf(msg, sizeof(msg), "%s: %s", cfg->name,
			 err == -EEXIST ? "a VM of that name exists on the "
					  "destination" : strerror(-err));
		g.n_reserve_refused++;
		mlog(LOG_WARN, NULL, "reservation from %s refused: %s", c->addr,
		     msg);
		reply(c, false, msg, 0, NULL);
		return;
	}
	vm->mem_mib = cfg->mem_mib;
	vm->cpus = cfg->cpus;
	vm->kernel = strdup(cfg->kernel ? cfg->kernel : "");
	vm->cmdline = strdup(cfg->cmdline ? cfg->cmdline : "");
	vm->initrd = strdup(cfg->initrd ? cfg->initrd : "");
	vm->state = VM_INCOMING;
	snprintf(vm->mig_id, sizeof(vm->mig_id), "%s", r->migration_id);
	snprintf(vm->peer, sizeof(vm->peer), "%s", c->addr);
	random_hex(vm->token, 32);
	random_bytes(vm->data_key, sizeof(vm->data_key));
	vm->reserver = c;
	vm->reserve_done = reserve_done;
	vm->owner = c;
	if (vm_spawn(vm, true, msg, sizeof(msg)) < 0) {
		vm->state = VM_RELEASED;
		vm->reserver = NULL;
		snprintf(vm->last_error, sizeof(vm->last_error), "%s", msg);
		pthread_mutex_unlock(&g.lock);
		reply(c, false, msg, 0, NULL);
		return;
	}
	vm_save_config(vm);
	pthread_mutex_unlock(&g.lock);
	/* The reply waits for the port line of the incoming migvm. */
}

static struct vmrec *find_mig(const char *name, const char *id)
{
	struct vmrec *v = name ? vm_find(name) : NULL;
	return v && id && !strcmp(v->mig_id, id) ? v : NULL;
}

/* A reservation is committed or released only on the connection that
 * made it: another peer that learnt its name and id (authenticated with
 * the same key, or a replay) cannot take or kill the VM. */
static bool owned_by(struct peer_conn *c, struct vmrec *vm, const char *what)
{
	if (vm->owner == c)
		return true;
	mlog(LOG_WARN, vm, "%s from %s refused: the reservation was made on "
	     "another connection (by %s)", what, c->addr, vm->peer);
	reply_why(c, false, MIG__D__REFUSAL__REFUSAL_OTHER, "the reservation "
		  "was made on another connection", 0, NULL);
	return false;
}

static void handle(struct peer_conn *c, const uint8_t *data, size_t len)
{
	Mig__D__PeerMsg *m = mig__d__peer_msg__unpack(NULL, len, data);
	struct vmrec *vm;

	if (!m) {
		mlog(LOG_WARN, NULL, "peer %s: a message that does not decode",
		     c->addr);
		conn_close(c);
		return;
	}
	switch (m->msg_case) {
	case MIG__D__PEER_MSG__MSG_RESERVE:
		handle_reserve(c, m->reserve);
		break;
	case MIG__D__PEER_MSG__MSG_COMMIT:
		vm = find_mig(m->commit->name, m->commit->migration_id);
		if (!vm) {
			reply(c, false, "no such reservation", 0, NULL);
			break;
		}
		if (!owned_by(c, vm, "commit"))
			break;
		vm->committed = true;
		if (vm->child) {
			vm->state = VM_RUNNING;
			vm_save_config(vm);
		}
		mlog(LOG_INFO, vm, "committed by %s: the VM is ours (%s)",
		     c->addr, vm->child ? "running" : "but its migvm ended");
		reply(c, vm->child != NULL, vm->child ? NULL
		      : "the incoming migvm is gone", 0, NULL);
		break;
	case MIG__D__PEER_MSG__MSG_RELEASE:
		vm = find_mig(m->release->name, m->release->migration_id);
		if (!vm) {
			reply(c, true, "nothing to release", 0, NULL);
			break;
		}
		if (!owned_by(c, vm, "release"))
			break;
		if (vm->activated) {
			/* Never kill a VM that runs: the source committed. */
			mlog(LOG_ERR, vm, "release from %s refused: the VM "
			     "already runs here", c->addr);
			reply_why(c, false, MIG__D__REFUSAL__REFUSAL_ACTIVATED,
				  "the VM already runs on the destination", 0,
				  NULL);
			break;
		}
		snprintf(vm->last_error, sizeof(vm->last_error),
			 "released by the source: %s",
			 m->release->reason ? m->release->reason : "");
		mlog(LOG_WARN, vm, "%s", vm->last_error);
		if (vm->child)
			vm_kill(vm, SIGTERM);
		else
			vm->state = VM_RELEASED;
		reply(c, true, NULL, 0, NULL);
		break;
	default:
		reply(c, false, "unexpected message", 0, NULL);
		break;
	}
	mig__d__peer_msg__free_unpacked(m, NULL);
}

static void peer_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	(void)h;
	(void)hint;
	*buf = uv_buf_init((char *)peer_rbuf, sizeof(peer_rbuf));
}

/* Handle the whole frames in c->buf; false once c is closing. */
static bool frames(struct peer_conn *c)
{
	size_t off = 0;

	while (!c->closing) {
		const uint8_t *body;
		size_t n;
		long used = msgio_frame_next(c->buf + off, c->len - off,
					     MIGD_FRAME_MAX, &body, &n);
		if (used < 0) {
			mlog(LOG_WARN, NULL, "peer %s: a frame over %u bytes "
			     "refused", c->addr, MIGD_FRAME_MAX);
			conn_close(c);
			return false;
		}
		if (used == 0)
			break;
		handle(c, body, n);
		off += (size_t)used;
	}
	if (c->closing)
		return false;
	memmove(c->buf, c->buf + off, c->len - off);
	c->len -= off;
	return true;
}

static void peer_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	struct peer_conn *c = s->data;
	char why[256];
	int r;

	if (nread < 0) {
		if (!c->authed && c->heard) {
			/* e.g. a client that did not like what it was offered:
			 * a daemon with the other kind of key */
			g.n_auth_failed++;
			mlog(LOG_WARN, NULL, "peer %s: authentication failed: it "
			     "left during the TLS handshake (%s)", c->addr,
			     g.x509 ? "no certificate to show?"
				    : "no pre-shared key?");
		}
		conn_close(c);
		return;
	}
	c->heard = true;
	r = tls_srv_input(c->tls, buf->base, (size_t)nread, why, sizeof(why));
	if (r < 0) {
		if (!c->authed) {
			g.n_auth_failed++;
			mlog(LOG_WARN, NULL, "peer %s: authentication failed: %s",
			     c->addr, why);
		} else {
			mlog(LOG_WARN, NULL, "peer %s: %s", c->addr, why);
		}
		conn_close(c);
		return;
	}
	if (r == 0)
		return;
	if (!c->authed) {
		char who[300];

		c->authed = true;
		gate_leave(&c->gate);
		tls_srv_who(c->tls, who, sizeof(who));
		text_printable(who); /* a DN may hold any byte */
		mlog(LOG_INFO, NULL, "peer %s authenticated (TLS 1.3, %s)",
		     c->addr, who);
	}
	for (;;) {
		long k;

		if (c->cap - c->len < 16384) {
			size_t cap = c->cap ? c->cap * 2 : 65536;
			uint8_t *p = cap <= 2 * ((size_t)MIGD_FRAME_MAX + 65536)
					     ? realloc(c->buf, cap) : NULL;
			if (!p) {
				mlog(LOG_WARN, NULL, "peer %s: out of buffer",
				     c->addr);
				conn_close(c);
				return;
			}
			c->buf = p;
			c->cap = cap;
		}
		k = tls_srv_read(c->tls, c->buf + c->len, c->cap - c->len, why,
				 sizeof(why));
		if (k < 0) {
			mlog(LOG_DEBUG, NULL, "peer %s: %s", c->addr, why);
			conn_close(c);
			return;
		}
		if (k == 0)
			return;
		c->len += (size_t)k;
		if (!frames(c))
			return;
	}
}

static void peer_turned_away(struct gate_entry *e, const char *why)
{
	struct peer_conn *c = (struct peer_conn *)((char *)e -
		offsetof(struct peer_conn, gate));

	g.n_turned_away++;
	/* Logged while few; then one line in a hundred, with the count. */
	if (peer_gate.turned_away <= 16 || peer_gate.turned_away % 100 == 0)
		mlog(LOG_WARN, NULL, "peer %s: %s: closed (%llu turned away)",
		     c->addr, why, (unsigned long long)peer_gate.turned_away);
	conn_close(c);
}

static void peer_connection(uv_stream_t *server, int status)
{
	struct sockaddr_storage sa;
	int salen = sizeof(sa);
	struct peer_conn *c;

	if (status < 0 || !(c = calloc(1, sizeof(*c))))
		return;
	uv_tcp_init(g.loop, &c->tcp);
	c->tcp.data = c;
	if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0 ||
	    !(c->tls = tls_srv_new(&c->tcp))) {
		c->closing = true;
		uv_close((uv_handle_t *)&c->tcp, conn_closed);
		return;
	}
	{
		uv_os_fd_t ofd;
		if (uv_fileno((uv_handle_t *)&c->tcp, &ofd) == 0)
			peer_keepalive(ofd);
	}
	if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&sa, &salen) == 0)
		uv_ip_name((struct sockaddr *)&sa, c->addr, sizeof(c->addr));
	c->gate.turn_away = peer_turned_away;
	gate_enter(&peer_gate, &c->gate, c->addr);
	uv_read_start((uv_stream_t *)&c->tcp, peer_alloc, peer_read);
}

int peer_listen(char *errbuf, size_t errlen)
{
	struct sockaddr_storage sa;
	int r = uv_ip4_addr(g.listen_host, g.listen_port,
			    (struct sockaddr_in *)&sa);

	if (r < 0)
		r = uv_ip6_addr(g.listen_host, g.listen_port,
				(struct sockaddr_in6 *)&sa);
	uv_tcp_init(g.loop, &peer_server);
	if (r == 0)
		r = gate_init(&peer_gate, g.loop);
	if (r == 0)
		r = uv_tcp_bind(&peer_server, (struct sockaddr *)&sa, 0);
	if (r == 0)
		r = uv_listen((uv_stream_t *)&peer_server, 16, peer_connection);
	if (r < 0) {
		snprintf(errbuf, errlen, "--listen %s:%d: %s", g.listen_host,
			 g.listen_port, uv_strerror(r));
		return r;
	}
	return 0;
}

/* ---- client (blocking, from a migration thread) --------------------- */

static Mig__D__PeerMsg *recv_peer(struct tls_cli *t, int timeout_ms, int *err)
{
	Mig__D__PeerMsg *m;

	*err = tls_cli_recv(t, &mig__d__peer_msg__descriptor, timeout_ms,
			    (ProtobufCMessage **)&m);
	/* A peer's words reach our log, a VM's last_error and migctl's
	 * terminal. */
	if (m && m->msg_case == MIG__D__PEER_MSG__MSG_REPLY)
		text_printable(m->reply->message);
	return m;
}

/* A TCP connection to one address within timeout_ms: the descriptor
 * (non-blocking), or -errno. */
static int dial(const struct addrinfo *a, int timeout_ms)
{
	int fd = socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK,
			0), r = 0, so = 0;
	socklen_t sl = sizeof(so);

	if (fd < 0)
		return -errno;
	if (connect(fd, a->ai_addr, a->ai_addrlen) < 0) {
		struct pollfd p = { fd, POLLOUT, 0 };

		if (errno != EINPROGRESS) {
			r = -errno;
		} else {
			do {
				r = poll(&p, 1, timeout_ms);
			} while (r < 0 && errno == EINTR);
			if (r < 0)
				r = -errno;
			else if (r == 0)
				r = -ETIMEDOUT;
			else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &sl) < 0)
				r = -errno;
			else
				r = -so;
		}
	}
	if (r < 0) {
		close(fd);
		return r;
	}
	return fd;
}

struct tls_cli *peer_connect(const char *host, int port, char *errbuf,
			     size_t errlen)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai = NULL, *a;
	struct tls_cli *t;
	char portstr[16], why[256];
	int fd = -1, r, n = 0;

	snprintf(portstr, sizeof(portstr), "%d", port);
	r = getaddrinfo(host, portstr, &hints, &ai);
	if (r) {
		snprintf(errbuf, errlen, "peer %s: %s", host, gai_strerror(r));
		return NULL;
	}
	/* A name may have several addresses (IPv6 and IPv4): the first that
	 * takes a connection, in getaddrinfo's order. */
	for (a = ai; a && fd < 0; a = a->ai_next, n++)
		fd = dial(a, 5000);
	freeaddrinfo(ai);
	if (fd < 0) {
		snprintf(errbuf, errlen, "cannot reach the peer daemon at "
			 "%s:%d%s: %s", host, port,
			 n > 1 ? " (at any of its addresses)" : "",
			 strerror(-fd));
		return NULL;
	}
	peer_keepalive(fd);
	t = tls_cli_open(fd, host, 10000, why, sizeof(why));
	if (!t) {
		snprintf(errbuf, errlen, "peer %s:%d: authentication failed: %s",
			 host, port, why);
		close(fd);
	}
	return t;
}

int peer_call(struct tls_cli *t, Mig__D__PeerMsg *msg, Mig__D__Reply **out,
	      int timeout_ms, char *errbuf, size_t errlen)
{
	Mig__D__PeerMsg *in;
	int r = tls_cli_send(t, &msg->base, 10000);

	*out = NULL;
	if (r < 0) {
		snprintf(errbuf, errlen, "the peer daemon went away (%s)",
			 strerror(-r));
		return r;
	}
	in = recv_peer(t, timeout_ms, &r);
	if (!in) {
		snprintf(errbuf, errlen, "no answer from the peer daemon (%s)",
			 strerror(-r));
		return r;
	}
	if (in->msg_case != MIG__D__PEER_MSG__MSG_REPLY) {
		mig__d__peer_msg__free_unpacked(in, NULL);
		snprintf(errbuf, errlen, "the peer daemon answered nonsense");
		return -EBADMSG;
	}
	/* Detach the reply from its envelope for the caller. */
	*out = in->reply;
	in->reply = NULL;
	in->msg_case = MIG__D__PEER_MSG__MSG__NOT_SET;
	mig__d__peer_msg__free_unpacked(in, NULL);
	return 0;
}
