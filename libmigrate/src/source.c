/*
 * The source side of a migration: set-up (connections, hellos, the VM's
 * configuration), the engine thread that runs pre-copy and stop-and-copy,
 * the clean-up after a failure (the destination told why, the VM
 * resumed), and the public mig_source_* API. See source.h for the files
 * that do each part.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "source.h"

#define HELLO_TIMEOUT_MS 10000u
/* Per address, when a name has several (mig__resolve_reachable). */
#define PROBE_TIMEOUT_MS 5000

/* Start connection i: its thread connects and sends the hello first (under
 * TLS it packs it anew once the session exists: see conn_up()). */
static int open_conn(mig_source *s, uint32_t i, const struct sockaddr_storage *ss)
{
	mig_buf hello = { 0 };
	int r = s->tls ? 0 : mig__src_pack_hello(s, i, NULL, &hello);

	if (r < 0) {
		mig__buf_free(&hello);
		return mig__err(&s->result, r, "connection %u: packing the hello: %s",
				i, mig_strerror(r));
	}
	return mig__src_conn_start(s, i, ss, &hello);
}

/* Wait for connection i's hello to be answered. */
static int await_hello(mig_source *s, uint32_t i)
{
	int r;

	Mig__Wire__Envelope *env;
	r = mig__src_wait_msg(s, i, MIG__WIRE__ENVELOPE__MSG_HELLO_ACK,
		     HELLO_TIMEOUT_MS, &env);
	if (r < 0)
		return r;
	if (i == 0) {
		/* One round trip: the hello left when the connection was up. */
		pthread_mutex_lock(&s->lock);
		s->rtt_us = mig__now_us() - s->conns[0].connected_us;
		pthread_mutex_unlock(&s->lock);
		s->features = env->hello_ack->features & mig__src_wanted_features(s);
	}
	if (!env->hello_ack->ok) {
		int code = env->hello_ack->error;
		if (code != MIG_E_AUTH && code != MIG_E_VERSION)
			code = MIG_E_PEER;
		char why[MIG_PEER_TEXT_MAX];
		r = mig__err(&s->result, code, "destination refused hello: %s",
			     mig__peer_text(env->hello_ack->message, why,
					    sizeof(why)));
		mig__msg_free(env);
		return r;
	}
	uint32_t major = env->hello_ack->version_major;
	mig__msg_free(env);
	if (major != MIG_PROTOCOL_VERSION)
		return mig__err(&s->result, MIG_E_VERSION,
				"destination speaks protocol %u, we speak %u",
				major, MIG_PROTOCOL_VERSION);
	/* verify needs the destination to hash memory as we do; one that
	 * predates XXH3-128 would refuse a good image (or pass a bad one). */
	if (i == 0 && s->params.verify && !(s->features & MIG__WIRE__FEATURE__FEATURE_XXH3))
		return mig__err(&s->result, MIG_E_VERSION,
				"destination cannot verify memory: it has no XXH3-128 "
				"memory hash (an older libmigrate); upgrade it, or "
				"migrate without verify");
	/* Authenticated: full-size frames from now on. */
	pthread_mutex_lock(&s->lock);
	s->conns[i].rd.limit = MIG_FRAME_MAX;
	pthread_mutex_unlock(&s->lock);
	return 0;
}

static int connect_all(mig_source *s)
{
	struct sockaddr_storage ss;
	int r;

	r = mig__resolve_reachable(s->host, s->port, &ss, PROBE_TIMEOUT_MS,
				   &s->result);
	if (r < 0)
		return r;
	/* The control connection first: the destination opens the session on
	 * it and refuses data connections for a session it does not know. */
	if ((r = open_conn(s, 0, &ss)) < 0 || (r = await_hello(s, 0)) < 0)
		return r;
	for (uint32_t i = 1; i < s->nconns; i++)
		if ((r = open_conn(s, i, &ss)) < 0)
			return r;
	for (uint32_t i = 1; i < s->nconns; i++)
		if ((r = await_hello(s, i)) < 0)
			return r;
	return 0;
}

static int send_config(mig_source *s)
{
	Mig__Wire__Envelope env = MIG__WIRE__ENVELOPE__INIT, *ack;
	Mig__Wire__VmConfig cfg = MIG__WIRE__VM_CONFIG__INIT;
	Mig__Wire__Region *regs, **rp;
	uint32_t n = s->vm.vm.nr_regions;
	int r;

	regs = calloc(n, sizeof(*regs));
	rp = calloc(n, sizeof(*rp));
	if (!regs || !rp) {
		free(regs);
		free(rp);
		return mig__err(&s->result, -ENOMEM, "out of memory");
	}
	for (uint32_t i = 0; i < n; i++) {
		mig__wire__region__init(&regs[i]);
		regs[i].slot = s->vm.regions[i].slot;
		regs[i].gpa = s->vm.regions[i].gpa;
		regs[i].size = s->vm.regions[i].size;
		rp[i] = &regs[i];
	}
	cfg.n_regions = n;
	cfg.regions = rp;
	cfg.vcpus = s->vm.vm.nr_vcpus;
	cfg.page_size = MIG_PAGE_SIZE;
	cfg.cpuid.data = s->vm.cpuid;
	cfg.cpuid.len = s->vm.vm.cpuid_len;
	cfg.vmm = "libmigrate";
	env.msg_case = MIG__WIRE__ENVELOPE__MSG_VM_CONFIG;
	env.vm_config = &cfg;
	r = mig__src_sent(s, MIG__WIRE__ENVELOPE__MSG_VM_CONFIG);
	if (r < 0) {
		free(regs);
		free(rp);
		return r;
	}
	r = mig__src_send_msg(s, 0, &env);
	free(regs);
	free(rp);
	if (r < 0)
		return mig__err(&s->result, r, "sending VM config");
	r = mig__src_wait_msg(s, 0, MIG__WIRE__ENVELOPE__MSG_CONFIG_ACK, HELLO_TIMEOUT_MS,
		     &ack);
	if (r < 0)
		return r;
	if (!ack->config_ack->ok) {
		r = mig__err(&s->result, MIG_E_INCOMPAT,
			     "destination refused the VM configuration: %s",
			     ack->config_ack->message);
		mig__msg_free(ack);
		return r;
	}
	mig__msg_free(ack);
	return 0;
}

static void fail_cleanup(mig_source *s)
{
	mig_error e = { 0 };
	int was_paused = s->paused;

	pthread_mutex_lock(&s->lock);
	s->ps = MIG_PS_FAILED;
	pthread_mutex_unlock(&s->lock);

	/* Tell the destination why, if the control connection still works:
	 * at once, not after the pages still queued, which are moot now, nor
	 * after a bandwidth cap's pause (either could hold the reason back
	 * for seconds): from this thread if nothing is in flight there. */
	if (s->nconns && s->conns[0].thread_ok && s->conns[0].connected &&
	    !s->conns[0].error) {
		Mig__Wire__Abort ab = MIG__WIRE__ABORT__INIT;

		__atomic_store_n(&s->aborting, 1, __ATOMIC_RELAXED);
		mig__src_drop_queued(s, &s->conns[0], 0);
		ab.error = s->result.code;
		ab.reason = s->result.msg;
		if (mig__src_send_simple(s, 0, MIG__WIRE__ENVELOPE__MSG_ABORT, &ab, 1) == 0) {
			struct timespec ts;
			/* Until it is written, not just taken: closing the
			 * connection cancels the writes still pending. A
			 * paused VM waits for this (it resumes after it), so
			 * 200 ms at most then; a running one loses nothing by
			 * waiting, and a slow or loaded host (a nested one
			 * under emulation) may need seconds to get to it (5
			 * seen). */
			mig__deadline(&ts, was_paused ? 200 : 10000);
			pthread_mutex_lock(&s->lock);
			while ((s->conns[0].head || s->conns[0].writes) &&
			       !s->conns[0].error &&
			       pthread_cond_timedwait(&s->cond, &s->lock, &ts) == 0)
				;
			pthread_mutex_unlock(&s->lock);
		}
	}
	/* The connection threads may still be encoding queued chunks, which
	 * rearms them in the dirty log: stop them before the log goes. */
	mig__src_close_conns(s);
	mig__dirty_destroy(s->dirty);
	s->dirty = NULL;
	mig__src_set_throttle(s, 0);
	if (s->paused) {
		if (s->vm.vm.ops->resume(s->vm.vm.opaque, &e) < 0) {
			mig__err_prefix(&s->result, "%s", "");
			snprintf(s->result.msg + strlen(s->result.msg),
				 sizeof(s->result.msg) - strlen(s->result.msg),
				 "; resuming the source VM FAILED: %s", e.msg);
			return;
		}
		s->paused = 0;
	}
	size_t n = strlen(s->result.msg);
	snprintf(s->result.msg + n, sizeof(s->result.msg) - n,
		 "; source VM %s", was_paused ? "resumed" : "kept running");
}

static void *engine_main(void *arg)
{
	mig_source *s = arg;
	int r;

	mig__thread_name("mig-source");
	s->t_start_us = mig__now_us();
	pthread_mutex_lock(&s->lock);
	s->last_progress_us = s->t_start_us;
	pthread_mutex_unlock(&s->lock);
	mig__src_set_phase(s, MIG_PHASE_SETUP);
	r = connect_all(s);
	if (r == 0)
		r = send_config(s);
	if (r == 0)
		r = mig__src_precopy(s);
	if (r == 0)
		r = mig__src_stop_and_copy(s);

	if (r < 0 && !s->committed && mig__src_activation_went_out(s)) {
		/* Never resume a VM the destination may be running. */
		mig__log(&s->cb, s->vm.vm.opaque, MIG_LOG_WARN,
			 "destination committed and was told to resume; after that: %s",
			 s->result.msg);
		memset(&s->result, 0, sizeof(s->result));
		s->committed = 1;
		r = 0;
	}
	if (r < 0 && !s->committed) {
		/* "migration to hostb:4444 failed in round 3: ..." */
		char where[64];
		if (s->round)
			snprintf(where, sizeof(where), " in round %u", s->round);
		else
			snprintf(where, sizeof(where), " during set-up");
		mig__err_prefix(&s->result, "migration to %s:%d failed%s: ",
				s->host, s->port, where);
		fail_cleanup(s);
	} else {
		mig__dirty_destroy(s->dirty);
		s->dirty = NULL;
	}
	mig__src_close_conns(s);

	pthread_mutex_lock(&s->lock);
	s->stats->total_time_us = mig__now_us() - s->t_start_us;
	s->stats->phase = s->result.code ? MIG_PHASE_FAILED : MIG_PHASE_DONE;
	s->stats->status = s->result.code;
	s->stats->throttle_pct = s->throttle_pct;
	s->finished = 1;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	if (s->cb.done)
		s->cb.done(&s->result, s->vm.vm.opaque);
	return NULL;
}

MIG_API int mig_source_create(mig_source **out, const mig_source_config *cfg,
			      mig_error *err)
{
	mig_source *s;
	int r;

	if (!out || !cfg)
		return mig__err(err, -EINVAL, "source: NULL argument");
	*out = NULL;
	if ((r = mig_params_validate(&cfg->params, err)) < 0)
		return r;
	if (!cfg->token || !*cfg->token || strlen(cfg->token) > 256)
		return mig__err(err, -EINVAL,
				"source: a token of 1..256 bytes is required");
	s = calloc(1, sizeof(*s));
	if (!s)
		return mig__err(err, -ENOMEM, "source: out of memory");
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	s->stats = calloc(1, sizeof(*s->stats));
	if (!s->stats) {
		mig_source_destroy(s);
		return mig__err(err, -ENOMEM, "source: out of memory");
	}
	if ((r = mig__parse_uri(cfg->uri, s->host, sizeof(s->host), &s->port,
				err)) < 0 ||
	    (r = mig__vm_copy(&s->vm, &cfg->vm, err)) < 0) {
		mig_source_destroy(s);
		return r;
	}
	if (s->port == 0) {
		mig_source_destroy(s);
		return mig__err(err, -EINVAL, "address '%s': port 0", cfg->uri);
	}
	snprintf(s->uri, sizeof(s->uri), "%s", cfg->uri);
	s->params = cfg->params;
	s->cb = cfg->cb;
	s->token_len = strlen(cfg->token);
	s->token = (uint8_t *)strdup(cfg->token);
	s->nconns = s->params.connections;
	s->conns = calloc(s->nconns, sizeof(*s->conns));
	if (!s->token || !s->conns ||
	    getrandom(s->session_id, sizeof(s->session_id), 0) !=
		    (ssize_t)sizeof(s->session_id)) {
		mig_source_destroy(s);
		return mig__err(err, -ENOMEM, "source: out of memory");
	}
	*out = s;
	return 0;
}

MIG_API int mig_source_set_tls(mig_source *s, mig_tls *tls, mig_error *err)
{
	if (!s)
		return mig__err(err, -EINVAL, "source: NULL");
	if (s->started)
		return mig__err(err, -EBUSY, "source: TLS is set before start");
	mig__tls_unref(s->tls);
	s->tls = mig__tls_ref(tls);
	return 0;
}

MIG_API int mig_source_set_param(mig_source *s, const char *name,
				 const char *value, mig_error *err)
{
	mig_params p;
	int r, when;

	if (!s)
		return mig__err(err, -EINVAL, "source: NULL");
	pthread_mutex_lock(&s->lock);
	p = s->params;
	r = mig_params_set(&p, name, value, err);
	if (r < 0) {
		pthread_mutex_unlock(&s->lock);
		return r;
	}
	when = mig__param_when(name);
	if (when == MIG__PARAM_CREATE ||
	    (s->started && when != MIG__PARAM_LIVE)) {
		pthread_mutex_unlock(&s->lock);
		if (when == MIG__PARAM_CREATE)
			return mig__err(err, -EBUSY, "parameter '%s' is fixed "
					"when the source is made (in "
					"mig_source_config.params)", name);
		return mig__err(err, -EBUSY, "parameter '%s' cannot change once "
				"the migration runs (max_bandwidth and "
				"downtime_ms can)", name);
	}
	if (!s->started) {
		s->params = p; /* the engine reads none yet */
	} else {
		/* read atomically by the connections and before each
		 * round's decision */
		__atomic_store_n(&s->params.max_bandwidth, p.max_bandwidth,
				 __ATOMIC_RELAXED);
		__atomic_store_n(&s->params.downtime_ms, p.downtime_ms,
				 __ATOMIC_RELAXED);
		mig__src_kick_conns_locked(s);
	}
	pthread_mutex_unlock(&s->lock);
	return 0;
}

MIG_API int mig_source_start(mig_source *s, mig_error *err)
{
	if (!s)
		return mig__err(err, -EINVAL, "source: NULL");
	if (s->started)
		return mig__err(err, -EALREADY, "source: already started");
	/* Started before the engine runs: mig_source_set_param() on another
	 * thread must not change what the engine reads. */
	pthread_mutex_lock(&s->lock);
	s->started = 1;
	pthread_mutex_unlock(&s->lock);
	if (mig__thread_start(&s->thread, engine_main, s) != 0) {
		pthread_mutex_lock(&s->lock);
		s->started = 0;
		pthread_mutex_unlock(&s->lock);
		return mig__err(err, -EAGAIN, "source: cannot create thread");
	}
	return 0;
}

MIG_API int mig_source_wait(mig_source *s, mig_error *err)
{
	if (!s)
		return mig__err(err, -EINVAL, "source: NULL");
	if (!s->started)
		return mig__err(err, -EINVAL, "source: not started");
	if (!s->joined) {
		pthread_join(s->thread, NULL);
		s->joined = 1;
	}
	if (err)
		*err = s->result;
	return s->result.code;
}

MIG_API int mig_source_cancel(mig_source *s)
{
	if (!s)
		return -EINVAL;
	pthread_mutex_lock(&s->lock);
	s->cancel = 1;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	return 0;
}

MIG_API int mig_source_stats(mig_source *s, mig_stats *out)
{
	if (!s || !out)
		return -EINVAL;
	pthread_mutex_lock(&s->lock);
	*out = *s->stats;
	pthread_mutex_unlock(&s->lock);
	return 0;
}

MIG_API void mig_source_destroy(mig_source *s)
{
	if (!s)
		return;
	if (s->started && !s->joined) {
		mig_source_cancel(s);
		pthread_join(s->thread, NULL);
		s->joined = 1;
	}
	while (s->mbox_head) {
		struct msg *m = s->mbox_head;
		s->mbox_head = m->next;
		mig__msg_free(m->env);
		free(m);
	}
	mig__src_free_bitmaps(s, s->send_bm);
	mig__src_free_bitmaps(s, s->resident_bm);
	mig__src_free_bitmaps(s, s->marked_bm);
	free(s->absent_is_zero);
	if (s->token) {
		memset(s->token, 0, s->token_len);
		free(s->token);
	}
	free(s->conns);
	free(s->stats);
	mig__tls_unref(s->tls);
	mig__vm_copy_free(&s->vm);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->cond);
	free(s);
}
