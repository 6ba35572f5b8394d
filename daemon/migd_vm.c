/*
 * migd's VM records and the migvm processes they supervise: claiming a
 * record, its config file in the state dir, spawning, watching (or taking
 * back) and killing its migvm, its log lines and what its events (proto
 * VmEvent, on its --events-fd) mean. Calls only migd_host.c; what the
 * peer side waits for (an incoming migvm's port, or its end) it learns
 * through vm->reserve_done.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "migd.h"

/* migvm's events (VmEvent frames: a u32 little-endian length, the body)
 * are small: a result with a 512-byte message at most. */
#define EVENT_MAX 4096

struct child {
	uv_process_t proc;
	uv_pipe_t out, err;
	uv_pipe_t ev;             /* its --events-fd */
	uint8_t evbuf[4 + EVENT_MAX];
	size_t evlen;
	/* A migvm taken back after a restart of migd: not our child, so no
	 * exit status; its pidfd says when it ends. */
	bool adopted;
	int pidfd;
	uv_poll_t pidw;
	int open;                 /* handles not yet closed */
	struct vmrec *vm;         /* NULL once the process exited */
	char obuf[8192], ebuf[8192];
	size_t olen, elen;
	int log_fd;
};

const char *vm_state_name(enum vm_state s)
{
	switch (s) {
	case VM_RUNNING: return "running";
	case VM_INCOMING: return "incoming";
	case VM_MIGRATING: return "migrating";
	case VM_MIGRATED: return "migrated";
	case VM_EXITED: return "exited";
	case VM_RELEASED: return "released";
	}
	return "unknown";
}

bool vm_active(const struct vmrec *vm)
{
	return vm->child || vm->thread_running || vm->state == VM_RUNNING ||
	       vm->state == VM_INCOMING || vm->state == VM_MIGRATING;
}

struct vmrec *vm_find(const char *name)
{
	for (struct vmrec *v = g.vms; v; v = v->next)
		if (!strcmp(v->name, name))
			return v;
	return NULL;
}

struct vmrec *vm_claim(const char *name, int *err)
{
	struct vmrec *v = vm_find(name);

	if (v && vm_active(v)) {
		*err = -EEXIST;
		return NULL;
	}
	if (!v) {
		v = calloc(1, sizeof(*v));
		if (!v) {
			*err = -ENOMEM;
			return NULL;
		}
		v->next = g.vms;
		g.vms = v;
	} else {
		/* Reuse an ended record; its history goes. */
		struct vmrec *next = v->next;
		uint64_t in = v->migrations_in, out = v->migrations_out;
		free(v->kernel);
		free(v->cmdline);
		free(v->initrd);
		free(v->last_result);
		memset(v, 0, sizeof(*v));
		v->next = next;
		v->migrations_in = in;
		v->migrations_out = out;
	}
	snprintf(v->name, sizeof(v->name), "%s", name);
	snprintf(v->ctl_path, sizeof(v->ctl_path), "%s/%s.sock", g.state_dir,
		 name);
	snprintf(v->console, sizeof(v->console), "%s/%s.console", g.state_dir,
		 name);
	snprintf(v->log_path, sizeof(v->log_path), "%s/%s.log", g.state_dir,
		 name);
	v->pid = -1;
	return v;
}

uint64_t mem_used_mib(void)
{
	uint64_t used = 0;
	for (struct vmrec *v = g.vms; v; v = v->next)
		if (v->child || v->state == VM_INCOMING)
			used += v->mem_mib;
	return used;
}

/* A string of the config file, escaped as migd_adopt.c's reader expects. */
static void config_str(FILE *f, const char *s)
{
	for (; s && *s; s++)
		fprintf(f, *s == '"' || *s == '\\' ? "\\%c" : "%c", *s);
}

/* The config as a small JSON file in the state dir (and the pid). */
void vm_save_config(struct vmrec *vm)
{
	char path[PATH_MAX + 16], tmp[PATH_MAX + 32];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s.json", g.state_dir, vm->name);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	f = fopen(tmp, "we");
	if (!f) {
		mlog(LOG_WARN, vm, "cannot write %s: %s", tmp, strerror(errno));
		return;
	}
	fprintf(f, "{\"name\":\"%s\",\"mem_mib\":%llu,\"cpus\":%u,"
		"\"state\":\"%s\",\"pid\":%d,\"kernel\":\"", vm->name,
		(unsigned long long)vm->mem_mib, vm->cpus,
		vm_state_name(vm->state), vm->pid);
	config_str(f, vm->kernel);
	fprintf(f, "\",\"cmdline\":\"");
	config_str(f, vm->cmdline);
	fprintf(f, "\",\"initrd\":\"");
	config_str(f, vm->initrd);
	fprintf(f, "\"}\n");
	if (fclose(f) == 0)
		rename(tmp, path);
	snprintf(path, sizeof(path), "%s/%s.pid", g.state_dir, vm->name);
	if (vm->child) {
		f = fopen(path, "we");
		if (f) {
			fprintf(f, "%d\n", vm->pid);
			fclose(f);
		}
	} else {
		unlink(path);
	}
}

void vm_remove_config(struct vmrec *vm)
{
	char path[PATH_MAX + 16];

	snprintf(path, sizeof(path), "%s/%s.json", g.state_dir, vm->name);
	unlink(path);
	snprintf(path, sizeof(path), "%s/%s.pid", g.state_dir, vm->name);
	unlink(path);
}

static void child_closed(uv_handle_t *h)
{
	struct child *c = h->data;
	if (--c->open == 0) {
		if (c->log_fd >= 0)
			close(c->log_fd);
		if (c->adopted)
			close(c->pidfd);
		free(c);
	}
}

/* A line from migvm: stdout has its JSON results; stderr its messages,
 * for the log only: the guest's words and a peer's reasons reach stderr
 * too, and never steer this daemon (migvm's events do, below). */
static void child_line(struct child *c, bool is_err, char *line)
{
	struct vmrec *vm = c->vm;

	if (c->log_fd >= 0) {
		dprintf(c->log_fd, "%s%s\n", is_err ? "" : "stdout: ", line);
	}
	if (!vm)
		return;
	pthread_mutex_lock(&g.lock);
	if (!is_err && line[0] == '{') {
		free(vm->last_result);
		vm->last_result = strdup(line);
	} else if (is_err) {
		snprintf(vm->last_stderr, sizeof(vm->last_stderr), "%s", line);
	}
	pthread_mutex_unlock(&g.lock);
	if (!is_err)
		return;
	/* What migvm warns of (a TSC rate it cannot keep, ...) is for the
	 * operator, not only for debugging. */
	mlog(strncmp(line, "migvm: warning: ", 16) ? LOG_DEBUG : LOG_WARN, vm,
	     "migvm: %s", line);
}

/* An event from migvm (--events-fd, proto VmEvent): what moves an incoming
 * VM on, taken only in the state where it can come (waiting for the VM,
 * or just committed by the source's migd, whose Commit may come first). */
static void child_event(struct child *c, const Mig__Ctl__VmEvent *ev)
{
	struct vmrec *vm = c->vm;

	if (!vm || vm->activated ||
	    !(vm->state == VM_INCOMING ||
	      (vm->state == VM_RUNNING && vm->committed))) {
		mlog(LOG_WARN, vm, "migvm event %d out of place: ignored",
		     (int)ev->ev_case);
		return;
	}
	switch (ev->ev_case) {
	case MIG__CTL__VM_EVENT__EV_INCOMING_PORT:
		if (vm->state != VM_INCOMING || vm->incoming_port ||
		    ev->incoming_port < 1 || ev->incoming_port > 65535) {
			mlog(LOG_WARN, vm, "migvm announced port %u: ignored",
			     ev->incoming_port);
			return;
		}
		vm->incoming_port = (int)ev->incoming_port;
		if (vm->reserve_done)
			vm->reserve_done(vm, NULL);
		break;
	case MIG__CTL__VM_EVENT__EV_INCOMING_DONE:
		if (!ev->incoming_done || !ev->incoming_done->incoming) {
			mlog(LOG_WARN, vm, "migvm's end of an incoming migration "
			     "carries no incoming result: ignored");
			return;
		}
		pthread_mutex_lock(&g.lock);
		vm_set_last_migration(vm, ev->incoming_done);
		pthread_mutex_unlock(&g.lock);
		if (!ev->incoming_done->ok)
			return; /* migvm exits: vm_ended() says why */
		vm->activated = true;
		vm->state = VM_RUNNING;
		vm->migrations_in++;
		g.n_in_ok++;
		mlog(LOG_INFO, vm, "incoming migration done: the VM runs here "
		     "(from %s)", vm->peer);
		vm_save_config(vm);
		break;
	default:
		mlog(LOG_WARN, vm, "migvm event %d unknown: ignored",
		     (int)ev->ev_case);
		break;
	}
}

static void child_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	struct child *c = h->data;
	bool is_err = (uv_pipe_t *)h == &c->err;
	char *b = is_err ? c->ebuf : c->obuf;
	size_t len = is_err ? c->elen : c->olen;
	(void)hint;
	*buf = uv_buf_init(b + len, (unsigned int)(sizeof(c->obuf) - 1 - len));
}

static void child_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct child *c = s->data;
	bool is_err = (uv_pipe_t *)s == &c->err;
	char *b = is_err ? c->ebuf : c->obuf;
	size_t *len = is_err ? &c->elen : &c->olen;
	char *nl;
	(void)buf;

	if (n < 0) {
		if (*len) {
			b[*len] = '\0';
			child_line(c, is_err, b);
			*len = 0;
		}
		uv_close((uv_handle_t *)s, child_closed);
		return;
	}
	*len += (size_t)n;
	b[*len] = '\0';
	while ((nl = strchr(b, '\n'))) {
		*nl = '\0';
		child_line(c, is_err, b);
		*len -= (size_t)(nl + 1 - b);
		memmove(b, nl + 1, *len + 1);
	}
	if (*len >= sizeof(c->obuf) - 1) { /* an endless line: cut it */
		child_line(c, is_err, b);
		*len = 0;
	}
}

static void event_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	struct child *c = h->data;
	(void)hint;
	*buf = uv_buf_init((char *)c->evbuf + c->evlen,
			   (unsigned int)(sizeof(c->evbuf) - c->evlen));
}

static void event_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct child *c = s->data;
	size_t off = 0;
	(void)buf;

	if (n < 0) {
		uv_close((uv_handle_t *)s, child_closed);
		return;
	}
	c->evlen += (size_t)n;
	for (;;) {
		const uint8_t *body;
		size_t len;
		long used = msgio_frame_next(c->evbuf + off, c->evlen - off,
					     EVENT_MAX, &body, &len);
		Mig__Ctl__VmEvent *ev;

		if (used < 0) {
			mlog(LOG_ERR, c->vm, "migvm sent an event over %d "
			     "bytes: its events are no longer read", EVENT_MAX);
			uv_close((uv_handle_t *)s, child_closed);
			return;
		}
		if (used == 0)
			break;
		ev = mig__ctl__vm_event__unpack(NULL, len, body);
		if (ev) {
			child_event(c, ev);
			mig__ctl__vm_event__free_unpacked(ev, NULL);
		} else {
			mlog(LOG_WARN, c->vm, "migvm sent an event that does "
			     "not decode (%zu bytes): ignored", len);
		}
		off += (size_t)used;
	}
	memmove(c->evbuf, c->evbuf + off, c->evlen - off);
	c->evlen -= off;
}

/* How a migvm ended, for messages: "status 1", "signal 9", or for an
 * adopted one (not our child) "an unknown status". */
static const char *exit_text(const struct vmrec *vm, char *buf, size_t len)
{
	if (vm->exit_unknown)
		snprintf(buf, len, "an unknown status: adopted after a migd "
			 "restart");
	else if (vm->exit_status < 0)
		snprintf(buf, len, "signal %d", -vm->exit_status);
	else
		snprintf(buf, len, "status %d", vm->exit_status);
	return buf;
}

static void vm_ended(struct child *c, int64_t status, int sig, bool unknown)
{
	struct vmrec *vm = c->vm;
	char how[80];

	if (!vm)
		return;
	pthread_mutex_lock(&g.lock);
	vm->child = NULL;
	c->vm = NULL;
	vm->exit_status = sig ? -sig : (int)status;
	vm->exit_unknown = unknown;
	pthread_mutex_unlock(&g.lock);
	exit_text(vm, how, sizeof(how));
	if (vm->state == VM_MIGRATING) {
		/* migd_migrate.c decides: exit 0 is a handed-over VM. */
		mlog(status == 0 && !sig ? LOG_INFO : LOG_ERR, vm,
		     "migvm (pid %d) exited during migration: %s", vm->pid,
		     how);
		if (status || sig)
			g.n_crashes++;
	} else if (vm->state == VM_INCOMING) {
		snprintf(vm->last_error, sizeof(vm->last_error),
			 "incoming migvm exited (%s): %s", how,
			 vm->last_stderr);
		mlog(LOG_WARN, vm, "%s", vm->last_error);
		vm->state = VM_RELEASED;
		if (!vm->committed)
			g.n_in_failed++;
		if (vm->reserve_done)
			vm->reserve_done(vm, vm->last_error);
		vm_remove_config(vm);
	} else if (vm->state == VM_RUNNING) {
		vm->state = VM_EXITED;
		if (vm->stop_requested) {
			snprintf(vm->last_error, sizeof(vm->last_error),
				 "stopped on request");
			mlog(LOG_INFO, vm, "stopped (migvm pid %d)", vm->pid);
		} else {
			/* Reported, never restarted behind the user's back. */
			snprintf(vm->last_error, sizeof(vm->last_error),
				 "migvm (pid %d) exited (%s): %s", vm->pid,
				 how, vm->last_stderr);
			mlog(status == 0 && !sig ? LOG_INFO : LOG_ERR, vm,
			     "%s", vm->last_error);
			if (status || sig)
				g.n_crashes++;
		}
		vm_remove_config(vm);
	}
}

static void child_exit(uv_process_t *p, int64_t status, int sig)
{
	struct child *c = p->data;

	uv_close((uv_handle_t *)p, child_closed);
	vm_ended(c, status, sig, false);
}

static void adopted_exit(uv_poll_t *w, int status, int events)
{
	struct child *c = w->data;
	(void)status;
	(void)events;

	uv_close((uv_handle_t *)w, child_closed);
	vm_ended(c, 0, 0, true);
}

int vm_adopt(struct vmrec *vm, int pid, char *errbuf, size_t errlen)
{
	struct child *c = calloc(1, sizeof(*c));
	int fd, r;

	if (!c) {
		snprintf(errbuf, errlen, "out of memory");
		return -ENOMEM;
	}
	fd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (fd < 0) {
		r = -errno;
		snprintf(errbuf, errlen, "pidfd_open(%d): %s", pid,
			 strerror(errno));
		free(c);
		return r;
	}
	r = uv_poll_init(g.loop, &c->pidw, fd);
	if (r < 0) {
		snprintf(errbuf, errlen, "watching pid %d: %s", pid,
			 uv_strerror(r));
		close(fd);
		free(c);
		return r;
	}
	c->adopted = true;
	c->pidfd = fd;
	c->log_fd = -1;
	c->open = 1;
	c->vm = vm;
	c->pidw.data = c;
	uv_poll_start(&c->pidw, UV_READABLE, adopted_exit);
	vm->child = c;
	vm->pid = pid;
	vm->last_stderr[0] = '\0';
	return 0;
}

/* A pipe holding `len` bytes of a secret, its write end closed: the read
 * end (for a child's descriptor) in *rd. The secret fits a pipe's buffer
 * many times over, so the write never blocks. */
static int secret_pipe(const void *data, size_t len, int *rd)
{
	int p[2];

	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	errno = 0;
	if (write(p[1], data, len) != (ssize_t)len) {
		int r = errno ? -errno : -EIO; /* a short write sets none */
		close(p[0]);
		close(p[1]);
		return r;
	}
	close(p[1]);
	*rd = p[0];
	return 0;
}

int vm_spawn(struct vmrec *vm, bool incoming, char *errbuf, size_t errlen)
{
	uv_process_options_t o = { 0 };
	uv_stdio_container_t stdio[6];
	int tok = -1, key = -1;
	char mem[32], cpus[16], uri[300], tokline[sizeof(vm->token) + 1];
	const char *args[40];
	struct child *c;
	int n = 0, r;

	c = calloc(1, sizeof(*c));
	if (!c) {
		snprintf(errbuf, errlen, "out of memory");
		return -ENOMEM;
	}
	snprintf(mem, sizeof(mem), "%llu", (unsigned long long)vm->mem_mib);
	snprintf(cpus, sizeof(cpus), "%u", vm->cpus);
	args[n++] = g.migvm;
	args[n++] = "--mem";
	args[n++] = mem;
	args[n++] = "--cpus";
	args[n++] = cpus;
	args[n++] = "--control";
	args[n++] = vm->ctl_path;
	args[n++] = "--console";
	args[n++] = vm->console;
	if (incoming) {
		snprintf(uri, sizeof(uri), "tcp:%s:0", g.listen_host);
		args[n++] = "--incoming";
		args[n++] = uri;
		args[n++] = "--token-fd"; /* not on the command line */
		args[n++] = "3";
		args[n++] = "--events-fd";
		args[n++] = "4";
		if (!g.plain_data) { /* the key, as the token: never in argv */
			args[n++] = "--tls-psk-file";
			args[n++] = "/dev/fd/5";
			args[n++] = "--tls-identity";
			args[n++] = MIGD_TLS_IDENTITY;
		}
	} else {
		if (vm->kernel && vm->kernel[0]) {
			args[n++] = "--kernel";
			args[n++] = vm->kernel;
		}
		if (vm->cmdline && vm->cmdline[0]) {
			args[n++] = "--cmdline";
			args[n++] = vm->cmdline;
		}
		if (vm->initrd && vm->initrd[0]) {
			args[n++] = "--initrd";
			args[n++] = vm->initrd;
		}
	}
	args[n] = NULL;
	uv_pipe_init(g.loop, &c->out, 0);
	uv_pipe_init(g.loop, &c->err, 0);
	uv_pipe_init(g.loop, &c->ev, 0);
	c->out.data = c->err.data = c->ev.data = c->proc.data = c;
	stdio[0].flags = UV_IGNORE;
	stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
	stdio[1].data.stream = (uv_stream_t *)&c->out;
	stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
	stdio[2].data.stream = (uv_stream_t *)&c->err;
	o.file = g.migvm;
	o.args = (char **)args;
	o.exit_cb = child_exit;
	o.stdio = stdio;
	o.stdio_count = 3;
	if (incoming) {
		/* The token through a pipe on migvm's descriptor 3 and the
		 * TLS key on 5, each written whole and closed before migvm
		 * reads it. */
		snprintf(tokline, sizeof(tokline), "%s\n", vm->token);
		r = secret_pipe(tokline, strlen(tokline), &tok);
		if (r == 0 && !g.plain_data)
			r = secret_pipe(vm->data_key, sizeof(vm->data_key), &key);
		if (r < 0) {
			snprintf(errbuf, errlen, "secret pipe: %s", strerror(-r));
			if (tok >= 0)
				close(tok);
			c->log_fd = -1;
			c->open = 3;
			uv_close((uv_handle_t *)&c->out, child_closed);
			uv_close((uv_handle_t *)&c->err, child_closed);
			uv_close((uv_handle_t *)&c->ev, child_closed);
			return r;
		}
		stdio[3].flags = UV_INHERIT_FD;
		stdio[3].data.fd = tok;
		/* Its events on descriptor 4 (only an incoming migvm has
		 * any so far). */
		stdio[4].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
		stdio[4].data.stream = (uv_stream_t *)&c->ev;
		o.stdio_count = 5;
		if (key >= 0) {
			stdio[5].flags = UV_INHERIT_FD;
			stdio[5].data.fd = key;
			o.stdio_count = 6;
		}
	}
	c->log_fd = open(vm->log_path, O_WRONLY | O_CREAT | O_APPEND |
			 O_CLOEXEC, 0600);
	r = uv_spawn(g.loop, &c->proc, &o);
	if (tok >= 0)
		close(tok);
	if (key >= 0)
		close(key);
	if (r < 0) {
		snprintf(errbuf, errlen, "cannot run %s: %s", g.migvm,
			 uv_strerror(r));
		c->open = 3;
		uv_close((uv_handle_t *)&c->out, child_closed);
		uv_close((uv_handle_t *)&c->err, child_closed);
		uv_close((uv_handle_t *)&c->ev, child_closed);
		return r;
	}
	c->open = 4;
	c->vm = vm;
	vm->child = c;
	vm->pid = c->proc.pid;
	vm->last_stderr[0] = '\0';
	uv_read_start((uv_stream_t *)&c->out, child_alloc, child_read);
	uv_read_start((uv_stream_t *)&c->err, child_alloc, child_read);
	if (incoming)
		uv_read_start((uv_stream_t *)&c->ev, event_alloc, event_read);
	else
		uv_close((uv_handle_t *)&c->ev, child_closed);
	mlog(LOG_INFO, vm, "started migvm pid %d (%s%llu MiB, %u vCPUs)",
	     vm->pid, incoming ? "incoming, " : "",
	     (unsigned long long)vm->mem_mib, vm->cpus);
	return 0;
}

void vm_kill(struct vmrec *vm, int sig)
{
	if (vm->child && vm->child->adopted)
		syscall(SYS_pidfd_send_signal, vm->child->pidfd, sig, NULL, 0);
	else if (vm->child)
		uv_process_kill(&vm->child->proc, sig);
}

void vm_set_last_migration(struct vmrec *vm, const Mig__Ctl__MigrationResult *r)
{
	mig__d__last_migration__init(&vm->last_mig);
	vm->last_mig_set = true;
	vm->last_mig.incoming = r->incoming;
	vm->last_mig.ok = r->ok;
	vm->last_mig.error = r->error;
	vm->last_mig.rounds = r->rounds;
	vm->last_mig.downtime_us = r->downtime_us;
	vm->last_mig.total_time_us = r->total_time_us;
}

void vm_fill_info(struct vmrec *vm, Mig__D__VmInfo *info,
		  Mig__D__VmConfig *cfg, Mig__D__Progress *pr,
		  Mig__D__LastMigration *lm)
{
	info->name = vm->name;
	info->state = (char *)vm_state_name(vm->state);
	cfg->name = vm->name;
	cfg->mem_mib = vm->mem_mib;
	cfg->cpus = vm->cpus;
	cfg->kernel = vm->kernel ? vm->kernel : (char *)"";
	cfg->cmdline = vm->cmdline ? vm->cmdline : (char *)"";
	cfg->initrd = vm->initrd ? vm->initrd : (char *)"";
	info->config = cfg;
	info->pid = vm->child ? vm->pid : 0;
	info->control = vm->ctl_path;
	info->console = vm->console;
	info->last_error = vm->last_error;
	info->migration_id = vm->mig_id;
	info->peer = vm->peer;
	info->last_result = vm->last_result ? vm->last_result : (char *)"";
	info->exit_status = vm->exit_status;
	if (vm->last_mig_set) {
		*lm = vm->last_mig;
		info->last_migration = lm;
	}
	if (vm->state == VM_MIGRATING && vm->progress.phase[0]) {
		pr->phase = vm->progress.phase;
		pr->rounds = vm->progress.rounds;
		pr->pages_sent = vm->progress.pages_sent;
		pr->bytes_on_wire = vm->progress.bytes_on_wire;
		pr->expected_downtime_us = vm->progress.expected_downtime_us;
		pr->throughput = vm->progress.throughput;
		pr->dirty_rate = vm->progress.dirty_rate;
		pr->guest_pages = vm->progress.guest_pages;
		pr->throttle_pct = vm->progress.throttle_pct;
		info->progress = pr;
	}
}
