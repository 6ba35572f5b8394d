/*
 * The control channel: a unix stream socket; each message is a u32
 * little-endian length (at most 1 MiB) followed by a control.proto Request
 * (client -> migvm) or Response (migvm -> client). Any number of requests
 * per connection, answered in order. Served from the main loop, so a
 * request never races another.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "control.pb-c.h"
#include "msgio.h"
#include "events.h"
#include "vm.h"

#define CTL_FRAME_MAX (1u << 20)
#define CTL_MAX_CLIENTS 8

struct client {
	int fd;
	uint8_t *buf;
	size_t len, cap;
};

struct control {
	int fd;
	char *path;
	struct vm *vm;
	bool user_paused;          /* a `pause` not yet `resume`d */
	struct client clients[CTL_MAX_CLIENTS];
};


static int bind_socket(const char *path, mig_error *err)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd, r;

	if (strlen(path) >= sizeof(sa.sun_path))
		return vmm_err(err, -ENAMETOOLONG, "control socket %s: path "
			       "longer than %zu bytes", path,
			       sizeof(sa.sun_path) - 1);
	memcpy(sa.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return vmm_err(err, -errno, "socket: %s", strerror(errno));
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 &&
	    errno == EADDRINUSE) {
		/* A socket file left by a dead migvm may go; a live one not. */
		int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		struct stat st;
		r = probe >= 0 ? connect(probe, (struct sockaddr *)&sa,
					 sizeof(sa)) : -1;
		if (probe >= 0)
			close(probe);
		if (r == 0 || lstat(path, &st) < 0 || !S_ISSOCK(st.st_mode)) {
			close(fd);
			return vmm_err(err, -EADDRINUSE, "control socket %s: "
				       "in use (another migvm, or not a "
				       "socket)", path);
		}
		unlink(path);
		errno = 0;
		if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			goto bound;
	}
	if (errno) {
		r = -errno;
		close(fd);
		return vmm_err(err, r, "control socket %s: bind: %s", path,
			       strerror(-r));
	}
bound:
	/* 0600 before anyone can connect (peer_allowed checks each client
	 * too, for the moment between bind and chmod). */
	if (chmod(path, 0600) < 0 || listen(fd, 8) < 0) {
		r = -errno;
		close(fd);
		unlink(path);
		return vmm_err(err, r, "control socket %s: chmod/listen: %s",
			       path, strerror(-r));
	}
	return fd;
}

int control_open(struct control **out, const char *path, struct vm *vm,
		 mig_error *err)
{
	struct control *c = calloc(1, sizeof(*c));

	if (!c)
		return vmm_err(err, -ENOMEM, "out of memory");
	c->vm = vm;
	for (int i = 0; i < CTL_MAX_CLIENTS; i++)
		c->clients[i].fd = -1;
	c->path = strdup(path);
	if (!c->path) {
		free(c);
		return vmm_err(err, -ENOMEM, "out of memory");
	}
	errno = 0;
	c->fd = bind_socket(path, err);
	if (c->fd < 0) {
		int r = c->fd;
		free(c->path);
		free(c);
		return r;
	}
	*out = c;
	return 0;
}

void control_paused_by_user(struct control *c)
{
	c->user_paused = true;
}

static void client_close(struct client *cl)
{
	if (cl->fd >= 0)
		close(cl->fd);
	free(cl->buf);
	memset(cl, 0, sizeof(*cl));
	cl->fd = -1;
}

void control_close(struct control *c)
{
	if (!c)
		return;
	for (int i = 0; i < CTL_MAX_CLIENTS; i++)
		client_close(&c->clients[i]);
	close(c->fd);
	unlink(c->path);
	free(c->path);
	free(c);
}

int control_pollfds(struct control *c, struct pollfd *fds, int max)
{
	int n = 0;

	if (!c || max < 1)
		return 0;
	fds[n++] = (struct pollfd){ .fd = c->fd, .events = POLLIN };
	for (int i = 0; i < CTL_MAX_CLIENTS && n < max; i++)
		if (c->clients[i].fd >= 0)
			fds[n++] = (struct pollfd){ .fd = c->clients[i].fd,
						    .events = POLLIN };
	return n;
}

/* Responses are small; wait for room (2 s at most) rather than drop one. */
static int send_response(struct client *cl, Mig__Ctl__Response *resp)
{
	return msgio_send(cl->fd, &resp->base, 2000);
}

static const char *run_state_name(enum run_state s)
{
	switch (s) {
	case RUN_STARTING: return "starting";
	case RUN_RUNNING: return "running";
	case RUN_PAUSED: return "paused";
	case RUN_STOPPING: return "stopping";
	}
	return "unknown";
}

static void fail(Mig__Ctl__Response *resp, mig_error *e)
{
	resp->ok = false;
	resp->error = e->code ? e->code : -EINVAL;
	resp->message = e->msg;
}

/*
 * Start an outgoing migration. The main loop reports its end (and ends
 * migvm when the destination committed); `status` shows the result, which
 * migrate.c keeps.
 */
static int start_migration(struct control *c, const Mig__Ctl__Migrate *m,
			   mig_error *e)
{
	mig_params params;
	mig_tls *tls = NULL;
	bool over_tls;
	int r;

	if (!m || !m->uri || !m->uri[0] || !m->token || !m->token[0])
		return vmm_err(e, -EINVAL, "migrate: needs a uri and a token");
	mig_params_init(&params);
	for (size_t i = 0; i < m->n_params; i++) {
		const Mig__Ctl__Param *p = m->params[i];
		if (!p->key || !p->value)
			return vmm_err(e, -EINVAL, "migrate: a parameter "
				       "without a name or value");
		r = mig_params_set(&params, p->key, p->value, e);
		if (r < 0) {
			vmm_err_prefix(e, "migrate: %s", p->key);
			return r;
		}
	}
	if (m->hold_result_ms > 30000)
		return vmm_err(e, -EINVAL, "migrate: hold_result_ms %u: at "
			       "most 30000", m->hold_result_ms);
	if (m->tls_psk.len) {
		r = mig_tls_psk(&tls, m->tls_identity && m->tls_identity[0]
					      ? m->tls_identity : "migrate",
				m->tls_psk.data, m->tls_psk.len, e);
		if (r < 0) {
			vmm_err_prefix(e, "migrate: tls_psk: ");
			return r;
		}
	}
	if (!tls && c->vm->tls_in_only)
		return vmm_err(e, -EINVAL, "migrate: this VM's --tls-x509-dir "
			       "credentials took it in (a server certificate, "
			       "the source's name): the request must bring its "
			       "own (tls_psk)");
	over_tls = tls || c->vm->tls;
	r = migrate_out_start(c->vm, m->uri, m->token, &params,
			      tls ? tls : c->vm->tls, e);
	mig_tls_free(tls); /* the migration holds its own reference */
	if (m->tls_psk.len) /* the request's copy of the key goes now */
		explicit_bzero(m->tls_psk.data, m->tls_psk.len);
	if (r == 0)
		c->vm->hold_result_ms = m->hold_result_ms;
	if (r == 0)
		fprintf(stderr, "migvm: migrating to %s (control channel, %s)\n",
			m->uri, over_tls ? "over TLS 1.3" : "in clear");
	return r;
}

static void fill_progress(Mig__Ctl__MigrationProgress *pr, mig_stats *ms)
{
	const mig_round_stats *last;

	pr->phase = (char *)mig_phase_name(ms->phase);
	pr->rounds = ms->rounds;
	pr->pages_sent = ms->pages_sent;
	pr->bytes_on_wire = ms->bytes_on_wire;
	pr->expected_downtime_us = ms->expected_downtime_us;
	pr->throttle_pct = ms->throttle_pct;
	pr->total_time_us = ms->total_time_us;
	if (ms->nr_round_stats) {
		last = &ms->round[ms->nr_round_stats - 1];
		pr->throughput = last->throughput;
		pr->dirty_rate = last->dirty_rate;
	}
}

/* Handle one request. Returns true when the connection should close. */
static bool handle(struct control *c, struct client *cl,
		   const uint8_t *data, size_t len)
{
	Mig__Ctl__Response resp = MIG__CTL__RESPONSE__INIT;
	Mig__Ctl__Status st = MIG__CTL__STATUS__INIT;
	Mig__Ctl__MigrationProgress pr = MIG__CTL__MIGRATION_PROGRESS__INIT;
	Mig__Ctl__MigrationResult res = MIG__CTL__MIGRATION_RESULT__INIT;
	mig_stats *ms = NULL;
	Mig__Ctl__Request *req;
	struct console_stats cs;
	struct vm *vm = c->vm;
	mig_error e = { 0 };
	bool exit_after = false, saved = false;
	enum run_state rs;
	char path_copy[4096];

	req = mig__ctl__request__unpack(NULL, len, data);
	if (!req) {
		vmm_err(&e, -EBADMSG, "request of %zu bytes does not decode",
			len);
		fail(&resp, &e);
		send_response(cl, &resp);
		return true;
	}
	resp.ok = true;
	if (vm->exit_at_ns && req->req_case != MIG__CTL__REQUEST__REQ_STATUS) {
		/* Committed: the VM is the destination's now; it must never
		 * run, be saved or be migrated here again. */
		vmm_err(&e, -ESRCH, "the VM has migrated: migvm is exiting");
		fail(&resp, &e);
		send_response(cl, &resp);
		mig__ctl__request__free_unpacked(req, NULL);
		return true;
	}
	switch (req->req_case) {
	case MIG__CTL__REQUEST__REQ_PAUSE:
		if (!c->user_paused) {
			if (vm_pause(vm, &e) < 0)
				fail(&resp, &e);
			else
				c->user_paused = true;
		}
		break;
	case MIG__CTL__REQUEST__REQ_RESUME:
		if (!c->user_paused) {
			vmm_err(&e, -EINVAL, "resume: the VM is not paused");
			fail(&resp, &e);
		} else if (vm_resume(vm, &e) < 0) {
			fail(&resp, &e);
		} else {
			c->user_paused = false;
		}
		break;
	case MIG__CTL__REQUEST__REQ_STATUS:
		serial_get_stats(&vm->serial, &cs);
		st.run_state = (char *)run_state_name(vm_run_state(vm));
		st.hb_seq = cs.hb_seq;
		st.ticks = cs.ticks;
		st.written = cs.written;
		st.verified = cs.verified;
		st.mismatches = cs.mismatches;
		st.hb_lines = cs.hb_lines;
		st.mismatch_lines = cs.mismatch_lines;
		st.cpus = vm->cfg.cpus;
		st.mem_mib = vm->cfg.mem_mib;
		st.guest_pages = vm->mem_size / VM_PAGE_SIZE;
		st.migration = c->vm->migration_result ? c->vm->migration_result
						       : (char *)"";
		if (vm->last_migration.seq) {
			migration_result_fill(&res, &vm->last_migration);
			st.result = &res;
			vm->result_served = true;
		}
		if (vm->migration && (ms = calloc(1, sizeof(*ms))) &&
		    migrate_stats(vm, ms) == 0) {
			fill_progress(&pr, ms);
			st.progress = &pr;
		}
		resp.status = &st;
		break;
	case MIG__CTL__REQUEST__REQ_MIGRATE:
		if (start_migration(c, req->migrate, &e) < 0)
			fail(&resp, &e);
		break;
	case MIG__CTL__REQUEST__REQ_CANCEL:
		if (migrate_cancel(vm) < 0) {
			vmm_err(&e, -ENOENT, "cancel: no migration in progress");
			fail(&resp, &e);
		}
		break;
	case MIG__CTL__REQUEST__REQ_SAVE:
		if (!req->save || !req->save->path || !req->save->path[0] ||
		    strlen(req->save->path) >= sizeof(path_copy)) {
			vmm_err(&e, -EINVAL, "save: no (or too long a) path");
			fail(&resp, &e);
			break;
		}
		snprintf(path_copy, sizeof(path_copy), "%s", req->save->path);
		if (vm_pause(vm, &e) < 0) {
			fail(&resp, &e);
			break;
		}
		if (snapfile_save(vm, path_copy, &e) < 0) {
			mig_error e2 = { 0 };
			fail(&resp, &e);
			vm_resume(vm, &e2); /* the VM goes on */
			break;
		}
		exit_after = saved = true; /* stays paused until it exits */
		break;
	case MIG__CTL__REQUEST__REQ_SET_PARAM:
		if (!req->set_param || !req->set_param->key ||
		    !req->set_param->value) {
			vmm_err(&e, -EINVAL, "set: a parameter's name and value");
			fail(&resp, &e);
		} else if (migrate_set_param(vm, req->set_param->key,
					     req->set_param->value, &e) < 0) {
			fail(&resp, &e);
		}
		break;
	case MIG__CTL__REQUEST__REQ_THROTTLE:
		if (vm_set_throttle(vm, req->throttle ? req->throttle->pct : 0,
				    &e) < 0)
			fail(&resp, &e);
		break;
	case MIG__CTL__REQUEST__REQ_INPUT:
		rs = vm_run_state(vm);
		if (!req->input || !req->input->data.len) {
			vmm_err(&e, -EINVAL, "input: no bytes to send");
			fail(&resp, &e);
		} else if (rs == RUN_STARTING || rs == RUN_STOPPING ||
			   (rs == RUN_PAUSED &&
			    (!c->user_paused || vm->migration))) {
			/* Its state may be saved already (a migration's
			 * last round) or not loaded yet (incoming): input
			 * now could be lost. */
			vmm_err(&e, -EBUSY, "input: the VM is %s for a "
				"migration, a load or its exit: input now could "
				"be lost", run_state_name(rs));
			fail(&resp, &e);
		} else if (serial_input(vm, req->input->data.data,
					req->input->data.len, &e) < 0) {
			fail(&resp, &e);
		}
		break;
	case MIG__CTL__REQUEST__REQ_QUIT:
		exit_after = true;
		break;
	default:
		vmm_err(&e, -EINVAL, "empty or unknown request");
		fail(&resp, &e);
		break;
	}
	send_response(cl, &resp);
	free(ms);
	mig__ctl__request__free_unpacked(req, NULL);
	if (exit_after) {
		if (saved)
			vm_request_exit(vm, MIGVM_EXIT_OK, "saved the VM to "
					"%s", path_copy);
		else
			vm_request_exit(vm, MIGVM_EXIT_OK, "quit on request "
					"of the control channel");
	}
	return false;
}

/* Read what is there; handle every complete frame. */
static void client_read(struct control *c, struct client *cl)
{
	for (;;) {
		ssize_t n;
		size_t off = 0;

		if (cl->cap - cl->len < 4096) {
			size_t cap = cl->cap ? cl->cap * 2 : 8192;
			uint8_t *p;
			if (cap > CTL_FRAME_MAX + 4 + 8192)
				cap = CTL_FRAME_MAX + 4 + 8192;
			if (cap <= cl->len) /* cannot happen: frames are capped */
				goto close;
			p = realloc(cl->buf, cap);
			if (!p)
				goto close;
			cl->buf = p;
			cl->cap = cap;
		}
		n = recv(cl->fd, cl->buf + cl->len, cl->cap - cl->len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (n <= 0)
			goto close;
		cl->len += (size_t)n;
		while (cl->len - off >= 4) {
			const uint8_t *b = cl->buf + off;
			uint32_t flen = (uint32_t)b[0] | (uint32_t)b[1] << 8 |
					(uint32_t)b[2] << 16 |
					(uint32_t)b[3] << 24;
			if (flen > CTL_FRAME_MAX) {
				Mig__Ctl__Response resp =
					MIG__CTL__RESPONSE__INIT;
				mig_error e = { 0 };
				vmm_err(&e, -EMSGSIZE, "request frame of %u "
					"bytes, more than the %u allowed",
					flen, CTL_FRAME_MAX);
				fail(&resp, &e);
				send_response(cl, &resp);
				goto close;
			}
			if (cl->len - off - 4 < flen)
				break;
			if (handle(c, cl, b + 4, flen))
				goto close;
			off += 4 + (size_t)flen;
		}
		memmove(cl->buf, cl->buf + off, cl->len - off);
		cl->len -= off;
	}
close:
	client_close(cl);
}

/* The control channel pauses, saves and migrates the VM: only this
 * process's user and root may use it (the socket file is 0600 as well). */
static bool peer_allowed(int fd)
{
	struct ucred cr;
	socklen_t len = sizeof(cr);

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0)
		return false;
	return cr.uid == 0 || cr.uid == getuid();
}

static void accept_clients(struct control *c)
{
	for (;;) {
		int fd = accept4(c->fd, NULL, NULL,
				 SOCK_CLOEXEC | SOCK_NONBLOCK);
		int i;

		if (fd < 0)
			return;
		if (!peer_allowed(fd)) {
			close(fd); /* another user: the client sees EOF */
			continue;
		}
		for (i = 0; i < CTL_MAX_CLIENTS; i++)
			if (c->clients[i].fd < 0)
				break;
		if (i == CTL_MAX_CLIENTS) {
			close(fd); /* busy: the client sees EOF */
			continue;
		}
		c->clients[i].fd = fd;
	}
}

void control_dispatch(struct control *c, const struct pollfd *fds, int n)
{
	if (!c)
		return;
	for (int k = 0; k < n; k++) {
		if (!fds[k].revents)
			continue;
		if (fds[k].fd == c->fd) {
			accept_clients(c);
			continue;
		}
		for (int i = 0; i < CTL_MAX_CLIENTS; i++)
			if (c->clients[i].fd == fds[k].fd) {
				client_read(c, &c->clients[i]);
				break;
			}
	}
}
