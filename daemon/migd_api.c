/*
 * The control API for migctl: a unix socket (mode 0600, peers checked with
 * SO_PEERCRED: root or this daemon's uid), u32 length + Request, answered
 * by u32 length + Response. Also the Prometheus metrics endpoint.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "migd.h"
#include "migd_gate.h"

struct api_conn {
	uv_pipe_t pipe;
	uint8_t *buf;
	size_t len, cap;
};

static uv_pipe_t api_server;

static void conn_closed(uv_handle_t *h)
{
	struct api_conn *c = h->data;
	free(c->buf);
	free(c);
}

static void write_done(uv_write_t *w, int status)
{
	(void)status;
	free(w->data);
	free(w);
}

static void send_msg(uv_stream_t *s, size_t n, uint8_t *buf /* 4 + n */)
{
	uv_write_t *w = malloc(sizeof(*w));
	uv_buf_t b = uv_buf_init((char *)buf, (unsigned int)(n + 4));

	buf[0] = (uint8_t)n;
	buf[1] = (uint8_t)(n >> 8);
	buf[2] = (uint8_t)(n >> 16);
	buf[3] = (uint8_t)(n >> 24);
	if (!w) {
		free(buf);
		return;
	}
	w->data = buf;
	if (uv_write(w, s, &b, 1, write_done) < 0) {
		free(buf);
		free(w);
	}
}

static void send_response(struct api_conn *c, Mig__D__Response *r)
{
	size_t n = mig__d__response__get_packed_size(r);
	uint8_t *buf = malloc(n + 4);

	if (!buf)
		return;
	mig__d__response__pack(r, buf + 4);
	send_msg((uv_stream_t *)&c->pipe, n, buf);
}

static int err_resp(Mig__D__Response *r, char *msg, size_t len, int code,
		    const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static int err_resp(Mig__D__Response *r, char *msg, size_t len, int code,
		    const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, len, fmt, ap);
	va_end(ap);
	r->ok = false;
	r->error = code;
	r->message = msg;
	return code;
}

/* Fold what migvm says about its guest into the info. */
static void live_status(struct vmrec *vm, Mig__D__VmInfo *info,
			Mig__Ctl__Response **keep)
{
	Mig__Ctl__Response *st;

	*keep = NULL;
	if (!vm->child || vmctl_status(vm->ctl_path, &st) < 0)
		return;
	if (st->ok && st->status) {
		info->run_state = st->status->run_state;
		info->hb_lines = st->status->hb_lines;
		info->hb_seq = st->status->hb_seq;
		info->mismatches = st->status->mismatches;
		info->mismatch_lines = st->status->mismatch_lines;
	}
	*keep = st;
}

static void handle(struct api_conn *c, const uint8_t *data, size_t len)
{
	Mig__D__Response resp = MIG__D__RESPONSE__INIT;
	Mig__D__Request *req = mig__d__request__unpack(NULL, len, data);
	Mig__D__VmInfo infos[64], *pinfos[64];
	Mig__D__VmConfig cfgs[64];
	Mig__D__Progress prs[64];
	Mig__D__LastMigration lms[64];
	Mig__Ctl__Response *keep[64] = { 0 };
	struct vmrec *sel[64];
	char msg[1024];
	struct vmrec *vm = NULL;
	const char *name = NULL;
	int n = 0, r;

	resp.ok = true;
	if (!req) {
		err_resp(&resp, msg, sizeof(msg), -EBADMSG, "request does not "
			 "decode");
		send_response(c, &resp);
		return;
	}
	switch (req->req_case) {
	case MIG__D__REQUEST__REQ_STATUS: name = req->status->name; break;
	case MIG__D__REQUEST__REQ_STATS: name = req->stats->name; break;
	case MIG__D__REQUEST__REQ_STOP: name = req->stop->name; break;
	case MIG__D__REQUEST__REQ_CANCEL: name = req->cancel->name; break;
	case MIG__D__REQUEST__REQ_MIGRATE: name = req->migrate->name; break;
	default: break;
	}
	if (name) {
		vm = vm_find(name);
		if (!vm) {
			err_resp(&resp, msg, sizeof(msg), -ENOENT, "no VM "
				 "named %s on this host", name);
			goto out;
		}
	}
	pthread_mutex_lock(&g.lock);
	switch (req->req_case) {
	case MIG__D__REQUEST__REQ_START: {
		Mig__D__VmConfig *cfg = req->start;
		if (!cfg->name || !name_valid(cfg->name)) {
			err_resp(&resp, msg, sizeof(msg), -EINVAL, "bad VM name "
				 "(1..63 of A-Z a-z 0-9 _ . -)");
			break;
		}
		if (cfg->initrd && cfg->initrd[0] &&
		    !(cfg->kernel && cfg->kernel[0])) {
			err_resp(&resp, msg, sizeof(msg), -EINVAL, "--initrd "
				 "goes with --kernel");
			break;
		}
		if (cfg->mem_mib < 2 || cfg->cpus < 1 || cfg->cpus > 64) {
			err_resp(&resp, msg, sizeof(msg), -EINVAL, "--mem MIB "
				 "(>= 2) and --cpus N (1..64) are needed");
			break;
		}
		if (g.max_mem_mib &&
		    mem_used_mib() + cfg->mem_mib > g.max_mem_mib) {
			err_resp(&resp, msg, sizeof(msg), -ENOMEM, "%llu MiB "
				 "asked, %llu of --max-mem %llu MiB free",
				 (unsigned long long)cfg->mem_mib,
				 (unsigned long long)(g.max_mem_mib -
						      mem_used_mib()),
				 (unsigned long long)g.max_mem_mib);
			break;
		}
		vm = vm_claim(cfg->name, &r);
		if (!vm) {
			err_resp(&resp, msg, sizeof(msg), r, "%s: %s", cfg->name,
				 r == -EEXIST ? "a VM of that name exists here"
					      : strerror(-r));
			break;
		}
		vm->mem_mib = cfg->mem_mib;
		vm->cpus = cfg->cpus;
		vm->kernel = strdup(cfg->kernel ? cfg->kernel : "");
		vm->cmdline = strdup(cfg->cmdline ? cfg->cmdline : "");
		vm->initrd = strdup(cfg->initrd ? cfg->initrd : "");
		vm->state = VM_RUNNING;
		if (vm_spawn(vm, false, msg, sizeof(msg)) < 0) {
			vm->state = VM_EXITED;
			snprintf(vm->last_error, sizeof(vm->last_error), "%s",
				 msg);
			err_resp(&resp, msg, sizeof(msg), -EIO, "%s",
				 vm->last_error);
			break;
		}
		g.n_started++;
		vm_save_config(vm);
		break;
	}
	case MIG__D__REQUEST__REQ_MIGRATE: {
		struct mig_args *a;
		char *host = NULL, *to = req->migrate->to;
		const char *colon = to ? strrchr(to, ':') : NULL;
		if (vm->state != VM_RUNNING || !vm->child) {
			err_resp(&resp, msg, sizeof(msg), -EINVAL, "%s is %s, "
				 "not running here", vm->name,
				 vm_state_name(vm->state));
			break;
		}
		if (vm->thread_running) {
			err_resp(&resp, msg, sizeof(msg), -EBUSY, "a migration "
				 "of %s is still ending", vm->name);
			break;
		}
		if (!g.psk_len && !g.x509) {
			err_resp(&resp, msg, sizeof(msg), -EPERM, "this migd has "
				 "neither --psk-file nor --tls-x509-dir: it "
				 "cannot authenticate to a peer");
			break;
		}
		if (!to || !to[0]) {
			err_resp(&resp, msg, sizeof(msg), -EINVAL, "--to "
				 "HOST[:PORT] is needed");
			break;
		}
		a = calloc(1, sizeof(*a));
		if (!a)
			break;
		a->vm = vm;
		a->port = MIGD_DEFAULT_PORT;
		if (colon && !strchr(colon + 1, ']')) {
			host = strndup(to, (size_t)(colon - to));
			a->port = atoi(colon + 1);
		} else {
			host = strdup(to);
		}
		snprintf(a->host, sizeof(a->host), "%s", host ? host : "");
		free(host);
		a->n_params = req->migrate->n_params;
		a->keys = calloc(a->n_params + 1, sizeof(char *));
		a->values = calloc(a->n_params + 1, sizeof(char *));
		for (size_t i = 0; a->keys && a->values && i < a->n_params;
		     i++) {
			a->keys[i] = strdup(req->migrate->params[i]->key);
			a->values[i] = strdup(req->migrate->params[i]->value);
		}
		random_hex(vm->mig_id, 8);
		snprintf(vm->peer, sizeof(vm->peer), "%s:%d", a->host, a->port);
		vm->last_error[0] = '\0';
		memset(&vm->progress, 0, sizeof(vm->progress));
		vm->cancel_req = false;
		vm->state = VM_MIGRATING;
		vm->thread_running = true;
		if (migrate_spawn(a, msg, sizeof(msg)) < 0) {
			vm->state = VM_RUNNING;
			vm->thread_running = false;
			err_resp(&resp, msg, sizeof(msg), -EAGAIN, "%s",
				 "cannot start the migration thread");
			break;
		}
		mlog(LOG_INFO, vm, "migration to %s requested", vm->peer);
		break;
	}
	case MIG__D__REQUEST__REQ_CANCEL:
		if (vm->state != VM_MIGRATING) {
			err_resp(&resp, msg, sizeof(msg), -ENOENT, "%s is not "
				 "migrating", vm->name);
			break;
		}
		vm->cancel_req = true;
		mlog(LOG_INFO, vm, "cancel requested");
		break;
	case MIG__D__REQUEST__REQ_STOP:
		if (vm->state == VM_MIGRATING) {
			err_resp(&resp, msg, sizeof(msg), -EBUSY, "%s is "
				 "migrating: cancel first", vm->name);
			break;
		}
		if (!vm->child) {
			err_resp(&resp, msg, sizeof(msg), -ENOENT, "%s is not "
				 "running (%s)", vm->name,
				 vm_state_name(vm->state));
			break;
		}
		vm->stop_requested = true;
		vm_kill(vm, SIGTERM);
		break;
	case MIG__D__REQUEST__REQ_LIST:
	case MIG__D__REQUEST__REQ_STATUS:
	case MIG__D__REQUEST__REQ_STATS:
		break;
	default:
		err_resp(&resp, msg, sizeof(msg), -EINVAL, "empty or unknown "
			 "request");
		break;
	}
	pthread_mutex_unlock(&g.lock);
	if (!resp.ok)
		goto out;
	/* Every answer carries the VMs it is about. What migvm says comes
	 * first, without the lock (a call to each migvm); then the records'
	 * own fields, filled and packed under the lock: they point at the
	 * records' strings, which a migration thread rewrites (last_error,
	 * progress) or frees (last_result) meanwhile. The list itself changes
	 * only on this loop. */
	for (struct vmrec *v = g.vms; v && n < 64; v = v->next) {
		if (vm && v != vm)
			continue;
		if (req->req_case == MIG__D__REQUEST__REQ_START && v != vm)
			continue;
		sel[n] = v;
		mig__d__vm_info__init(&infos[n]);
		mig__d__vm_config__init(&cfgs[n]);
		mig__d__progress__init(&prs[n]);
		mig__d__last_migration__init(&lms[n]);
		if (req->req_case != MIG__D__REQUEST__REQ_START &&
		    req->req_case != MIG__D__REQUEST__REQ_STOP &&
		    v->state != VM_MIGRATING)
			live_status(v, &infos[n], &keep[n]);
		pinfos[n] = &infos[n];
		n++;
	}
	resp.n_vms = (size_t)n;
	resp.vms = pinfos;
	pthread_mutex_lock(&g.lock);
	for (int i = 0; i < n; i++)
		vm_fill_info(sel[i], &infos[i], &cfgs[i], &prs[i], &lms[i]);
	send_response(c, &resp);
	pthread_mutex_unlock(&g.lock);
	goto done;
out:
	send_response(c, &resp);
done:
	for (int i = 0; i < n; i++)
		if (keep[i])
			mig__ctl__response__free_unpacked(keep[i], NULL);
	mig__d__request__free_unpacked(req, NULL);
}

static void api_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	struct api_conn *c = h->data;
	(void)hint;
	if (c->cap - c->len < 65536) {
		size_t cap = c->cap ? c->cap * 2 : 65536;
		uint8_t *p = cap <= MIGD_FRAME_MAX + 65536 * 2
			? realloc(c->buf, cap) : NULL;
		if (!p) {
			*buf = uv_buf_init(NULL, 0);
			return;
		}
		c->buf = p;
		c->cap = cap;
	}
	*buf = uv_buf_init((char *)c->buf + c->len,
			   (unsigned int)(c->cap - c->len));
}

static void api_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	struct api_conn *c = s->data;
	size_t off = 0;
	(void)buf;

	if (nread < 0) {
		uv_close((uv_handle_t *)s, conn_closed);
		return;
	}
	c->len += (size_t)nread;
	for (;;) {
		const uint8_t *body;
		size_t n;
		long used = msgio_frame_next(c->buf + off, c->len - off,
					     MIGD_FRAME_MAX, &body, &n);
		if (used < 0) {
			uv_close((uv_handle_t *)s, conn_closed);
			return;
		}
		if (used == 0)
			break;
		handle(c, body, n);
		off += (size_t)used;
	}
	memmove(c->buf, c->buf + off, c->len - off);
	c->len -= off;
}

static void api_connection(uv_stream_t *server, int status)
{
	struct api_conn *c;
	struct ucred cred;
	socklen_t clen = sizeof(cred);
	uv_os_fd_t fd;

	if (status < 0)
		return;
	c = calloc(1, sizeof(*c));
	if (!c)
		return;
	uv_pipe_init(g.loop, &c->pipe, 0);
	c->pipe.data = c;
	if (uv_accept(server, (uv_stream_t *)&c->pipe) < 0) {
		uv_close((uv_handle_t *)&c->pipe, conn_closed);
		return;
	}
	/* The socket's mode already keeps others out; check anyway, so that
	 * a permissive umask or a moved socket cannot open the daemon. */
	if (uv_fileno((uv_handle_t *)&c->pipe, &fd) < 0 ||
	    getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) < 0 ||
	    (cred.uid != 0 && cred.uid != getuid())) {
		mlog(LOG_WARN, NULL, "control: refused a client (uid %d)",
		     clen == sizeof(cred) ? (int)cred.uid : -1);
		uv_close((uv_handle_t *)&c->pipe, conn_closed);
		return;
	}
	uv_read_start((uv_stream_t *)&c->pipe, api_alloc, api_read);
}

int api_listen(const char *path, char *errbuf, size_t errlen)
{
	mode_t old;
	int r;

	/* A socket file left by a dead migd goes; a live one stays. */
	if (access(path, F_OK) == 0) {
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
		if (fd >= 0 && connect(fd, (struct sockaddr *)&sa,
				       sizeof(sa)) == 0) {
			close(fd);
			snprintf(errbuf, errlen, "--control %s: another migd "
				 "answers there", path);
			return -EADDRINUSE;
		}
		if (fd >= 0)
			close(fd);
		unlink(path);
	}
	uv_pipe_init(g.loop, &api_server, 0);
	old = umask(0077);
	r = uv_pipe_bind(&api_server, path);
	umask(old);
	if (r == 0)
		r = chmod(path, 0600) < 0 ? -errno : 0;
	if (r == 0)
		r = uv_listen((uv_stream_t *)&api_server, 16, api_connection);
	if (r < 0) {
		snprintf(errbuf, errlen, "--control %s: %s", path,
			 uv_strerror(r));
		return r;
	}
	return 0;
}

/* ---- metrics: Prometheus text format over HTTP ---------------------- */

static uv_tcp_t metrics_server;
/* Every metrics connection is a stranger, for its whole life: 5 s to ask
 * and take its answer, 4 from one address, 16 in all. */
static struct gate metrics_gate = {
	.what = "metrics", .max = 16, .per_addr = 4, .deadline_ms = 5000,
};

struct metrics_conn {
	uv_tcp_t tcp;               /* first: the handle is the connection */
	struct gate_entry gate;
};

static void metrics_closed(uv_handle_t *h)
{
	free(h);
}

static void metrics_close(uv_stream_t *s)
{
	struct metrics_conn *c = (struct metrics_conn *)s;

	gate_leave(&c->gate);
	if (!uv_is_closing((uv_handle_t *)s))
		uv_close((uv_handle_t *)s, metrics_closed);
}

static void metrics_turned_away(struct gate_entry *e, const char *why)
{
	struct metrics_conn *c = (struct metrics_conn *)((char *)e -
		offsetof(struct metrics_conn, gate));

	(void)why;
	g.n_metrics_turned_away++;
	metrics_close((uv_stream_t *)&c->tcp);
}

static void metrics_write_done(uv_write_t *w, int status)
{
	(void)status;
	metrics_close(w->handle);
	free(w->data);
	free(w);
}

static char *metrics_text(void)
{
	char *out = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&out, &len);

	if (!f)
		return NULL;
	pthread_mutex_lock(&g.lock);
	fprintf(f, "# HELP migd_migrations_total Outgoing migrations by "
		"result.\n# TYPE migd_migrations_total counter\n"
		"migd_migrations_total{result=\"ok\"} %llu\n"
		"migd_migrations_total{result=\"failed\"} %llu\n",
		(unsigned long long)g.n_mig_ok,
		(unsigned long long)g.n_mig_failed);
	fprintf(f, "# HELP migd_incoming_total Incoming migrations by "
		"result.\n# TYPE migd_incoming_total counter\n"
		"migd_incoming_total{result=\"ok\"} %llu\n"
		"migd_incoming_total{result=\"failed\"} %llu\n",
		(unsigned long long)g.n_in_ok,
		(unsigned long long)g.n_in_failed);
	fprintf(f, "# TYPE migd_peer_auth_failures_total counter\n"
		"migd_peer_auth_failures_total %llu\n"
		"# TYPE migd_reservations_refused_total counter\n"
		"migd_reservations_refused_total %llu\n"
		"# TYPE migd_vm_crashes_total counter\n"
		"migd_vm_crashes_total %llu\n"
		"# TYPE migd_vms_started_total counter\n"
		"migd_vms_started_total %llu\n",
		(unsigned long long)g.n_auth_failed,
		(unsigned long long)g.n_reserve_refused,
		(unsigned long long)g.n_crashes,
		(unsigned long long)g.n_started);
	fprintf(f, "# HELP migd_strangers_turned_away_total Unauthenticated "
		"connections closed (too slow, or too many).\n"
		"# TYPE migd_strangers_turned_away_total counter\n"
		"migd_strangers_turned_away_total{port=\"peer\"} %llu\n"
		"migd_strangers_turned_away_total{port=\"metrics\"} %llu\n",
		(unsigned long long)g.n_turned_away,
		(unsigned long long)g.n_metrics_turned_away);
	fprintf(f, "# HELP migd_vm_up 1 when the VM runs here.\n"
		"# TYPE migd_vm_up gauge\n");
	for (struct vmrec *v = g.vms; v; v = v->next)
		fprintf(f, "migd_vm_up{vm=\"%s\",state=\"%s\"} %d\n", v->name,
			vm_state_name(v->state), v->child ? 1 : 0);
	fprintf(f, "# TYPE migd_migration_rounds gauge\n"
		"# TYPE migd_migration_pages_sent gauge\n"
		"# TYPE migd_migration_bytes_on_wire gauge\n"
		"# TYPE migd_migration_expected_downtime_seconds gauge\n");
	for (struct vmrec *v = g.vms; v; v = v->next) {
		if (v->state != VM_MIGRATING)
			continue;
		fprintf(f, "migd_migration_rounds{vm=\"%s\",mig=\"%s\"} %u\n"
			"migd_migration_pages_sent{vm=\"%s\",mig=\"%s\"} %llu\n"
			"migd_migration_bytes_on_wire{vm=\"%s\",mig=\"%s\"} "
			"%llu\n"
			"migd_migration_expected_downtime_seconds{vm=\"%s\","
			"mig=\"%s\"} %.6f\n",
			v->name, v->mig_id, v->progress.rounds, v->name,
			v->mig_id, (unsigned long long)v->progress.pages_sent,
			v->name, v->mig_id,
			(unsigned long long)v->progress.bytes_on_wire, v->name,
			v->mig_id, v->progress.expected_downtime_us / 1e6);
	}
	/* The last finished migration of each VM (typed, from its migvm). */
	fprintf(f, "# HELP migd_last_migration_downtime_seconds From the "
		"last result.\n# TYPE migd_last_migration_downtime_seconds "
		"gauge\n# TYPE migd_last_migration_total_seconds gauge\n");
	for (struct vmrec *v = g.vms; v; v = v->next) {
		if (!v->last_mig_set)
			continue;
		fprintf(f, "migd_last_migration_downtime_seconds{vm=\"%s\"} "
			"%.6f\n", v->name, v->last_mig.downtime_us / 1e6);
		fprintf(f, "migd_last_migration_total_seconds{vm=\"%s\"} "
			"%.6f\n", v->name, v->last_mig.total_time_us / 1e6);
	}
	pthread_mutex_unlock(&g.lock);
	fclose(f);
	return out;
}

static void metrics_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	static char scratch[4096];
	(void)h;
	(void)hint;
	*buf = uv_buf_init(scratch, sizeof(scratch));
}

static void metrics_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	char *body, *out;
	uv_write_t *w;
	uv_buf_t b;
	int len;
	(void)buf;

	if (n == 0)
		return;
	uv_read_stop(s);
	if (n < 0 || !(body = metrics_text())) {
		metrics_close(s);
		return;
	}
	/* Whatever the request, the answer is the metrics (one GET). */
	len = asprintf(&out, "HTTP/1.0 200 OK\r\nContent-Type: text/plain; "
		       "version=0.0.4\r\nContent-Length: %zu\r\nConnection: "
		       "close\r\n\r\n%s", strlen(body), body);
	free(body);
	w = malloc(sizeof(*w));
	if (len < 0 || !w) {
		free(w);
		free(len < 0 ? NULL : out);
		metrics_close(s);
		return;
	}
	w->data = out;
	b = uv_buf_init(out, (unsigned int)len);
	if (uv_write(w, s, &b, 1, metrics_write_done) < 0) {
		free(out);
		free(w);
		metrics_close(s);
	}
}

static void metrics_connection(uv_stream_t *server, int status)
{
	struct metrics_conn *c;
	struct sockaddr_storage sa;
	int salen = sizeof(sa);
	char addr[64] = "?";

	if (status < 0 || !(c = calloc(1, sizeof(*c))))
		return;
	uv_tcp_init(g.loop, &c->tcp);
	if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
		uv_close((uv_handle_t *)&c->tcp, metrics_closed);
		return;
	}
	if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&sa, &salen) == 0)
		uv_ip_name((struct sockaddr *)&sa, addr, sizeof(addr));
	c->gate.turn_away = metrics_turned_away;
	gate_enter(&metrics_gate, &c->gate, addr);
	uv_read_start((uv_stream_t *)&c->tcp, metrics_alloc, metrics_read);
}

int metrics_listen(const char *hostport, char *errbuf, size_t errlen)
{
	const char *colon = strrchr(hostport, ':');
	struct sockaddr_storage sa;
	char host[256];
	int r;

	if (!colon || (size_t)(colon - hostport) >= sizeof(host)) {
		snprintf(errbuf, errlen, "--metrics %s: expected HOST:PORT",
			 hostport);
		return -EINVAL;
	}
	snprintf(host, sizeof(host), "%.*s", (int)(colon - hostport),
		 hostport);
	r = uv_ip4_addr(host, atoi(colon + 1), (struct sockaddr_in *)&sa);
	if (r < 0)
		r = uv_ip6_addr(host, atoi(colon + 1),
				(struct sockaddr_in6 *)&sa);
	uv_tcp_init(g.loop, &metrics_server);
	if (r == 0)
		r = gate_init(&metrics_gate, g.loop);
	if (r == 0)
		r = uv_tcp_bind(&metrics_server, (struct sockaddr *)&sa, 0);
	if (r == 0)
		r = uv_listen((uv_stream_t *)&metrics_server, 16,
			      metrics_connection);
	if (r < 0) {
		snprintf(errbuf, errlen, "--metrics %s: %s", hostport,
			 uv_strerror(r));
		return r;
	}
	return 0;
}
