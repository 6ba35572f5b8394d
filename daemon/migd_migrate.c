/*
 * One outgoing migration, Clark's stages, in its own thread (it blocks on
 * the peer and on migvm; the loop never waits for it):
 *   0 pre-migration: connect to the destination daemon, authenticate
 *   1 reservation:   Reserve{name, mem, cpus} -> port and one-time token of
 *                    an incoming migvm there
 *   2 pre-copy / 3 stop-and-copy: `migrate` to our migvm, which streams
 *                    straight to the destination migvm; we poll its status
 *   4 commitment:    our migvm exits 0 once the destination committed;
 *                    we tell the destination daemon: Commit
 *   5 activation:    the destination migvm resumes the VM; its record is
 *                    the destination daemon's now
 * On any failure before 4 the source VM keeps running (libmigrate's
 * promise), we send Release and record why on both sides.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "migd.h"

#define POLL_MS 200

static void args_free(struct mig_args *a)
{
	for (size_t i = 0; i < a->n_params; i++) {
		if (a->keys)
			free(a->keys[i]);
		if (a->values)
			free(a->values[i]);
	}
	free(a->keys);
	free(a->values);
	free(a);
}

static void set_phase(struct vmrec *vm, const char *phase)
{
	pthread_mutex_lock(&g.lock);
	snprintf(vm->progress.phase, sizeof(vm->progress.phase), "%s", phase);
	pthread_mutex_unlock(&g.lock);
}

/* Has the peer closed its end? (It only speaks when spoken to; a TLS
 * alert it sent before closing may wait unread, so the hang-up itself is
 * what counts.) */
static bool peer_gone(int fd)
{
	struct pollfd p = { fd, POLLRDHUP, 0 };

	if (poll(&p, 1, 0) <= 0)
		return false;
	return (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

static int vm_request(struct vmrec *vm, Mig__Ctl__Request *req, char *err,
		      size_t errlen)
{
	Mig__Ctl__Response *resp;
	int r = vmctl_call(vm->ctl_path, req, &resp, 10000);

	if (r < 0) {
		snprintf(err, errlen, "migvm control socket: %s", strerror(-r));
		return r;
	}
	if (!resp->ok) {
		snprintf(err, errlen, "%s", resp->message);
		r = resp->error ? resp->error : -EIO;
	}
	mig__ctl__response__free_unpacked(resp, NULL);
	return r;
}

static void vm_cancel(struct vmrec *vm)
{
	Mig__Ctl__Request req = MIG__CTL__REQUEST__INIT;
	Mig__Ctl__Empty empty = MIG__CTL__EMPTY__INIT;
	char err[256];

	req.req_case = MIG__CTL__REQUEST__REQ_CANCEL;
	req.cancel = &empty;
	vm_request(vm, &req, err, sizeof(err));
}

static void *migrate_thread(void *arg)
{
	struct mig_args *a = arg;
	struct vmrec *vm = a->vm;
	Mig__D__PeerMsg m = MIG__D__PEER_MSG__INIT;
	Mig__D__Reserve res = MIG__D__RESERVE__INIT;
	Mig__D__VmConfig cfg = MIG__D__VM_CONFIG__INIT;
	Mig__D__Reply *rep = NULL;
	Mig__Ctl__Request req = MIG__CTL__REQUEST__INIT;
	Mig__Ctl__Migrate mreq = MIG__CTL__MIGRATE__INIT;
	Mig__Ctl__Param *params = NULL, **pp = NULL;
	char err[1024] = "", uri[300];
	uint64_t prev_seq = 0; /* migrations the migvm had ended before this */
	bool ok = false, reserved = false, cancelled = false, committed = false;
	bool result_ok = false, ended_unknown = false;
	char *prev_json = NULL; /* an older migvm's last result (see below) */
	struct tls_cli *link = NULL;
	int exit_status = 0, r;

	/* Stage 0: the destination daemon, authenticated both ways. */
	set_phase(vm, "connect");
	link = peer_connect(a->host, a->port, err, sizeof(err));
	if (!link)
		goto done;
	/* Stage 1: reservation. */
	set_phase(vm, "reserve");
	pthread_mutex_lock(&g.lock);
	cfg.name = vm->name;
	cfg.mem_mib = vm->mem_mib;
	cfg.cpus = vm->cpus;
	cfg.kernel = vm->kernel;
	cfg.cmdline = vm->cmdline;
	cfg.initrd = vm->initrd;
	res.migration_id = vm->mig_id;
	res.tls = !g.plain_data;
	pthread_mutex_unlock(&g.lock);
	res.config = &cfg;
	m.msg_case = MIG__D__PEER_MSG__MSG_RESERVE;
	m.reserve = &res;
	if (peer_call(link, &m, &rep, 60000, err, sizeof(err)) < 0)
		goto done;
	if (!rep->ok) {
		snprintf(err, sizeof(err), "peer refused the reservation: %s",
			 rep->message);
		goto done;
	}
	reserved = true;
	snprintf(uri, sizeof(uri), strchr(a->host, ':') ? "tcp:[%s]:%u"
		 : "tcp:%s:%u", a->host, rep->port);
	mlog(LOG_INFO, vm, "reserved on %s:%d, data to %s", a->host, a->port,
	     uri);
	/* Stage 2: pre-copy, by our migvm straight to theirs. */
	params = calloc(a->n_params + 1, sizeof(*params));
	pp = calloc(a->n_params + 1, sizeof(*pp));
	for (size_t i = 0; params && pp && i < a->n_params; i++) {
		mig__ctl__param__init(&params[i]);
		params[i].key = a->keys[i];
		params[i].value = a->values[i];
		pp[i] = &params[i];
	}
	mreq.uri = uri;
	/* Once committed, migvm waits (at most this long) for our next
	 * status poll to read the typed result before it exits. */
	mreq.hold_result_ms = 10 * POLL_MS;
	mreq.token = rep->token;
	if (!g.plain_data) { /* TLS, with the key made for this migration */
		if (rep->tls_key.len != MIGD_DATA_KEY_LEN) {
			snprintf(err, sizeof(err), "the peer daemon sent no key "
				 "for the migration's TLS sessions");
			goto done;
		}
		mreq.tls_psk = rep->tls_key;
		mreq.tls_identity = MIGD_TLS_IDENTITY;
	}
	mreq.n_params = params && pp ? a->n_params : 0;
	mreq.params = pp;
	req.req_case = MIG__CTL__REQUEST__REQ_MIGRATE;
	req.migrate = &mreq;
	{
		Mig__Ctl__Response *st;
		if (vmctl_status(vm->ctl_path, &st) == 0) {
			if (st->status && st->status->result)
				prev_seq = st->status->result->seq;
			if (st->status && st->status->migration)
				prev_json = strdup(st->status->migration);
			mig__ctl__response__free_unpacked(st, NULL);
		}
	}
	pthread_mutex_lock(&g.lock);
	cancelled = vm->cancel_req;
	vm->last_mig_set = false; /* this migration's, once it has one */
	pthread_mutex_unlock(&g.lock);
	if (cancelled) {
		snprintf(err, sizeof(err), "cancelled before the copy began");
		goto done;
	}
	r = vm_request(vm, &req, err, sizeof(err));
	if (rep->tls_key.len) /* our migvm has it: our copy goes at once */
		explicit_bzero(rep->tls_key.data, rep->tls_key.len);
	if (r < 0) {
		char tmp[sizeof(err)];
		memcpy(tmp, err, sizeof(tmp));
		snprintf(err, sizeof(err), "migvm refused to migrate: %.900s",
			 tmp);
		goto done;
	}
	set_phase(vm, "setup");
	/* Wait for the end: our migvm exits 0 (committed) or reports. */
	for (;;) {
		Mig__Ctl__Response *st = NULL;
		bool alive, want_cancel, unknown;

		pthread_mutex_lock(&g.lock);
		alive = vm->child != NULL;
		exit_status = vm->exit_status;
		unknown = vm->exit_unknown;
		want_cancel = vm->cancel_req && !cancelled;
		pthread_mutex_unlock(&g.lock);
		if (!alive) {
			/* An adopted migvm's exit status is unknown: its
			 * result said whether the destination committed. */
			if (unknown ? result_ok : exit_status == 0) {
				committed = true;
				ok = true;
			} else if (unknown) {
				/* The destination knows: see the release. */
				ended_unknown = true;
				snprintf(err, sizeof(err), "migvm ended during "
					 "the migration without a result");
			} else {
				snprintf(err, sizeof(err), "migvm died during "
					 "the migration (%s %d): %s",
					 exit_status < 0 ? "signal" : "status",
					 exit_status < 0 ? -exit_status
							 : exit_status,
					 vm->last_stderr);
			}
			break;
		}
		if (want_cancel) {
			cancelled = true;
			mlog(LOG_INFO, vm, "cancelling");
			snprintf(err, sizeof(err), "cancelled");
			vm_cancel(vm);
		}
		if (!cancelled && peer_gone(tls_cli_fd(link))) {
			cancelled = true;
			snprintf(err, sizeof(err), "the destination daemon "
				 "went away during the migration");
			mlog(LOG_WARN, vm, "%s: cancelling", err);
			vm_cancel(vm);
		}
		if (vmctl_status(vm->ctl_path, &st) == 0 && st->ok &&
		    st->status) {
			Mig__Ctl__Status *s = st->status;
			const Mig__Ctl__MigrationResult *end = s->result;
			pthread_mutex_lock(&g.lock);
			if (s->progress) {
				struct progress *p = &vm->progress;
				snprintf(p->phase, sizeof(p->phase), "%s",
					 s->progress->phase);
				p->rounds = s->progress->rounds;
				p->pages_sent = s->progress->pages_sent;
				p->bytes_on_wire = s->progress->bytes_on_wire;
				p->expected_downtime_us =
					s->progress->expected_downtime_us;
				p->throughput = s->progress->throughput;
				p->dirty_rate = s->progress->dirty_rate;
				p->throttle_pct = s->progress->throttle_pct;
			}
			vm->progress.guest_pages = s->guest_pages;
			pthread_mutex_unlock(&g.lock);
			if (!s->progress && !end && s->migration &&
			    s->migration[0] == '{' &&
			    strcmp(s->migration, prev_json ? prev_json : "") &&
			    !strstr(s->migration, "\"status\":\"ok\"")) {
				/* A migvm from before typed results (taken back
				 * across an upgrade of migd) reports only JSON,
				 * and stays alive when its migration failed:
				 * compatibility only, the outcome is typed now. */
				snprintf(err, sizeof(err), "migration failed "
					 "(an older migvm: its log says why)");
				mig__ctl__response__free_unpacked(st, NULL);
				break;
			}
			if (!s->progress && end && end->seq > prev_seq &&
			    !end->incoming) {
				/* Over. ok means committed: wait for the exit. */
				result_ok = end->ok;
				pthread_mutex_lock(&g.lock);
				vm_set_last_migration(vm, end);
				pthread_mutex_unlock(&g.lock);
				if (!result_ok) {
					const char *why = end->message[0]
						? end->message : "migration failed";
					if (!cancelled)
						snprintf(err, sizeof(err), "%s",
							 why);
					else
						snprintf(err + strlen(err),
							 sizeof(err) -
							 strlen(err), " (%s)",
							 why);
					pthread_mutex_lock(&g.lock);
					free(vm->last_result);
					vm->last_result = s->migration &&
						s->migration[0] == '{'
						? strdup(s->migration) : NULL;
					pthread_mutex_unlock(&g.lock);
					mig__ctl__response__free_unpacked(st,
									  NULL);
					break;
				}
			}
		}
		if (st)
			mig__ctl__response__free_unpacked(st, NULL);
		usleep(POLL_MS * 1000);
	}
done:
	/* Stage 4/5, or the release. */
	if (link && reserved) {
		Mig__D__PeerMsg cm = MIG__D__PEER_MSG__INIT;
		Mig__D__Commit c = MIG__D__COMMIT__INIT;
		Mig__D__Release rl = MIG__D__RELEASE__INIT;
		Mig__D__Reply *r2 = NULL;
		char err2[512];

		if (committed) {
			c.migration_id = vm->mig_id;
			c.name = vm->name;
			cm.msg_case = MIG__D__PEER_MSG__MSG_COMMIT;
			cm.commit = &c;
		} else {
			rl.migration_id = vm->mig_id;
			rl.name = vm->name;
			rl.reason = err;
			cm.msg_case = MIG__D__PEER_MSG__MSG_RELEASE;
			cm.release = &rl;
		}
		if (peer_call(link, &cm, &r2, 10000, err2, sizeof(err2)) < 0)
			mlog(committed ? LOG_WARN : LOG_INFO, vm, "%s: %s",
			     committed ? "commit not confirmed" : "release not "
			     "confirmed", err2);
		else if (!r2->ok && ended_unknown && !committed &&
			 (r2->refusal == MIG__D__REFUSAL__REFUSAL_ACTIVATED ||
			  /* a destination migd from before Reply.refusal */
			  (r2->refusal == MIG__D__REFUSAL__REFUSAL_NONE &&
			   strstr(r2->message, "already runs on the "
				  "destination")))) {
			/* An adopted migvm (exit status unknown) ended before
			 * we saw its result: the destination, which refuses to
			 * release a VM it activated, says it committed. */
			committed = ok = true;
			mlog(LOG_INFO, vm, "the destination runs the VM: the "
			     "migration committed");
		} else if (!r2->ok)
			mlog(LOG_WARN, vm, "the destination says: %s",
			     r2->message);
		if (r2)
			mig__d__reply__free_unpacked(r2, NULL);
	}
	tls_cli_close(link);
	pthread_mutex_lock(&g.lock);
	if (ok) {
		vm->state = VM_MIGRATED;
		vm->migrations_out++;
		g.n_mig_ok++;
		vm->last_error[0] = '\0';
	} else {
		vm->state = vm->child ? VM_RUNNING : VM_EXITED;
		g.n_mig_failed++;
		snprintf(vm->last_error, sizeof(vm->last_error),
			 "migration to %.200s failed: %.700s", vm->peer, err);
	}
	memset(&vm->progress, 0, sizeof(vm->progress));
	vm->thread_running = false;
	pthread_mutex_unlock(&g.lock);
	if (ok) {
		mlog(LOG_INFO, vm, "migrated to %s: the VM runs there now",
		     vm->peer);
		vm_remove_config(vm);
	} else {
		mlog(LOG_ERR, vm, "%s; the VM %s here", vm->last_error,
		     vm->child ? "keeps running" : "is gone");
	}
	if (rep && rep->tls_key.len) /* the migration's key: our copy goes */
		explicit_bzero(rep->tls_key.data, rep->tls_key.len);
	if (rep)
		mig__d__reply__free_unpacked(rep, NULL);
	free(params);
	free(pp);
	free(prev_json);
	args_free(a);
	return NULL;
}

int migrate_spawn(struct mig_args *a, char *errbuf, size_t errlen)
{
	pthread_attr_t attr;
	pthread_t t;
	int r;

	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	r = pthread_create(&t, &attr, migrate_thread, a);
	pthread_attr_destroy(&attr);
	if (r) {
		snprintf(errbuf, errlen, "pthread_create: %s", strerror(r));
		args_free(a);
		return -r;
	}
	return 0;
}
