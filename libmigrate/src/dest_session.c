/*
 * The destination's session: each message from the source, once the
 * protocol table (mig__dst_step()) allows it now, and what it carries:
 * the VM's configuration, rounds, the state, completion, the commit and
 * the activation; and the pages, written into guest memory.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dest.h"

static void on_config(mig_dest *d, const Mig__Wire__VmConfig *cfg)
{
	Mig__Wire__ConfigAck ack = MIG__WIRE__CONFIG_ACK__INIT;
	char why[200] = "";

	if (cfg->page_size != MIG_PAGE_SIZE)
		snprintf(why, sizeof(why), "page size %u, expected %u",
			 cfg->page_size, MIG_PAGE_SIZE);
	else if (cfg->vcpus != d->vm.vm.nr_vcpus)
		snprintf(why, sizeof(why), "source has %u vCPUs, destination %u",
			 cfg->vcpus, d->vm.vm.nr_vcpus);
	else if (cfg->n_regions != d->vm.vm.nr_regions)
		snprintf(why, sizeof(why), "source has %zu memory regions, destination %u",
			 cfg->n_regions, d->vm.vm.nr_regions);
	else if (cfg->cpuid.len != d->vm.vm.cpuid_len ||
		 (cfg->cpuid.len && memcmp(cfg->cpuid.data, d->vm.cpuid, cfg->cpuid.len)))
		snprintf(why, sizeof(why), "CPUID differs between source and destination");
	for (size_t i = 0; !why[0] && i < cfg->n_regions; i++) {
		const Mig__Wire__Region *r = cfg->regions[i];
		const mig_region *m = &d->vm.regions[i];
		if (r->gpa != m->gpa || r->size != m->size)
			snprintf(why, sizeof(why),
				 "memory region %zu: source gpa 0x%" PRIx64 " size 0x%" PRIx64
				 ", destination gpa 0x%" PRIx64 " size 0x%" PRIx64,
				 i, r->gpa, r->size, m->gpa, m->size);
	}
	ack.ok = !why[0];
	ack.error = why[0] ? MIG_E_INCOMPAT : 0;
	ack.message = why;
	if (why[0]) {
		mig__dst_send(d->by_index[0], MIG__WIRE__ENVELOPE__MSG_CONFIG_ACK, &ack);
		d->ps = MIG_PS_FAILED;
		/* The source learns why from the ack; no Abort on top. */
		d->result.code = MIG_E_INCOMPAT;
		snprintf(d->result.msg, sizeof(d->result.msg),
			 "incompatible VM: %s; VM not resumed", why);
		mig__dst_finish(d);
		return;
	}
	if (mig__dst_session_send(d, MIG__WIRE__ENVELOPE__MSG_CONFIG_ACK, &ack) < 0)
		return;
	pthread_mutex_lock(&d->lock);
	d->stats->setup_time_us = mig__now_us() - d->t_start_us;
	d->stats->phase = MIG_PHASE_PRECOPY;
	pthread_mutex_unlock(&d->lock);
}

static uint8_t *page_sink(void *opaque, uint32_t region, uint64_t idx)
{
	mig_dest *d = opaque;
	if (region >= d->vm.vm.nr_regions ||
	    idx >= d->vm.regions[region].size / MIG_PAGE_SIZE)
		return NULL;
	return (uint8_t *)d->vm.regions[region].hva + idx * MIG_PAGE_SIZE;
}

/* The VMM loads the state: at StateEnd (load_state_early) or once the
 * image is complete. */
static int load_state(mig_dest *d)
{
	mig_error e = { 0 };
	int r;

	r = d->vm.vm.ops->load_state(d->vm.vm.opaque, &d->state, &e);
	if (r < 0) {
		mig__dst_fail(d, r, "loading VM state: %s", e.msg[0] ? e.msg : mig_strerror(r));
		return r;
	}
	d->state_loaded = 1;
	mig__log(&d->cb, d->vm.vm.opaque, MIG_LOG_DEBUG, "state loaded");
	return 0;
}

/* Every connection has said Complete: check, load, commit. */
static void image_complete(mig_dest *d)
{
	mig_error e = { 0 };
	int r;

	mig__log(&d->cb, d->vm.vm.opaque, MIG_LOG_DEBUG, "image complete");
	if (d->have_hash) {
		uint8_t h[16];
		r = mig__hash_regions(d->vm.regions, d->vm.vm.nr_regions, h, &e);
		if (r < 0) {
			mig__dst_fail(d, r, "memory hash: %s", e.msg);
			return;
		}
		if (memcmp(h, d->src_hash, sizeof(h))) {
			mig__dst_fail(d, -EIO,
				  "memory differs from the source's at pause (hash mismatch)");
			return;
		}
	}
	if (!d->state_loaded && load_state(d) < 0)
		return;
	Mig__Wire__Commit commit = MIG__WIRE__COMMIT__INIT;
	if (d->have_hash) {
		commit.memory_hash.data = d->src_hash;
		commit.memory_hash.len = sizeof(d->src_hash);
	}
	if ((r = mig__dst_session_send(d, MIG__WIRE__ENVELOPE__MSG_COMMIT, &commit)) < 0) {
		mig__dst_fail(d, r, "sending commit: %s", mig_strerror(r));
		return;
	}
	mig__log(&d->cb, d->vm.vm.opaque, MIG_LOG_DEBUG, "commit sent");
	pthread_mutex_lock(&d->lock);
	d->stats->phase = MIG_PHASE_COMMIT;
	pthread_mutex_unlock(&d->lock);
}

static void on_activate(mig_dest *d)
{
	mig_error e = { 0 };
	uint64_t t0 = mig__now_us();
	int r;

	mig__log(&d->cb, d->vm.vm.opaque, MIG_LOG_DEBUG, "activating: resuming the VM");
	r = d->vm.vm.ops->resume(d->vm.vm.opaque, &e);
	if (r < 0) {
		/* The source has committed: the image is ours alone. */
		mig__err(&d->result, r, "resuming the migrated VM failed: %.200s",
			 e.msg);
		mig__dst_finish(d);
		return;
	}
	uint64_t t1 = mig__now_us();
	mig__log(&d->cb, d->vm.vm.opaque, MIG_LOG_DEBUG, "activated: VM resumed");
	Mig__Wire__Activated a = MIG__WIRE__ACTIVATED__INIT;
	a.resume_us = t1 - t0;
	mig__dst_session_send(d, MIG__WIRE__ENVELOPE__MSG_ACTIVATED, &a);
	pthread_mutex_lock(&d->lock);
	d->stats->downtime_us = t1 - d->t_switch_us;
	pthread_mutex_unlock(&d->lock);
	mig__dst_finish(d);
}

/* A round is over when every connection has said so; before the switchover
 * the source waits for this acknowledgement. */
static void on_round_end(struct dst_conn *c, const Mig__Wire__RoundEnd *re)
{
	mig_dest *d = c->d;

	if (re->round != c->round + 1) {
		mig__dst_fail(d, MIG_E_PROTOCOL, "connection %u: round %u ends after round %u",
			  c->index, re->round, c->round);
		return;
	}
	c->round = re->round;
	for (uint32_t i = 0; i < d->expected; i++)
		if (!d->by_index[i] || d->by_index[i]->round < re->round)
			return;
	if (d->t_switch_us)
		return; /* the stop-and-copy round: Complete follows */
	Mig__Wire__RoundStats ack = MIG__WIRE__ROUND_STATS__INIT;
	ack.round = re->round;
	pthread_mutex_lock(&d->lock);
	ack.pages = d->stats->pages_sent;
	ack.bytes = d->bytes;
	pthread_mutex_unlock(&d->lock);
	mig__dst_session_send(d, MIG__WIRE__ENVELOPE__MSG_STATS, &ack);
}

/* A VM state item. Each once: a second copy would replace the first, or
 * be loaded over it. (The table ends the state at StateEnd or at the
 * control connection's Complete: it is loaded once.) */
static void on_state(mig_dest *d, const Mig__Wire__StateBlob *sb)
{
	const void *seen;
	size_t seen_len;
	int r;

	if (mig_state_get(&d->state, sb->name, &seen, &seen_len) == 0) {
		char name[72];
		mig__dst_fail(d, MIG_E_PROTOCOL, "state item '%s' sent twice",
			      mig__peer_text(sb->name, name, sizeof(name)));
		return;
	}
	d->state_items++;
	r = mig_state_add(&d->state, sb->name, sb->data.data, sb->data.len);
	if (r < 0) {
		char name[72];
		mig__dst_fail(d, MIG_E_PROTOCOL, "state item '%s' refused: %s",
			      mig__peer_text(sb->name, name, sizeof(name)),
			      mig_strerror(r));
		return;
	}
	if (d->early_state && d->vm.vm.ops->load_state_item) {
		mig_error e = { 0 };
		r = d->vm.vm.ops->load_state_item(d->vm.vm.opaque, sb->name,
						  sb->data.data, sb->data.len, &e);
		if (r < 0)
			mig__dst_fail(d, r, "loading VM state item '%.64s': %s",
				  sb->name, e.msg[0] ? e.msg : mig_strerror(r));
	}
}

/*
 * A message from the source on an authenticated connection. The protocol
 * table (mig__dst_step()) decides whether it may come now; what is left here is
 * what it carries, and the rules the table cannot see: per connection
 * (Complete once), per item (each state item once) and counts.
 */
void mig__dst_on_msg(struct dst_conn *c, Mig__Wire__Envelope *env)
{
	mig_dest *d = c->d;

	if (env->msg_case == MIG__WIRE__ENVELOPE__MSG_COMPLETE && c->complete) {
		mig__dst_fail(d, MIG_E_PROTOCOL, "connection %u completed twice", c->index);
		return;
	}
	if (mig__dst_step(d, env->msg_case, MIG_PDIR_TO_DEST, c->index) < 0)
		return;
	switch (env->msg_case) {
	case MIG__WIRE__ENVELOPE__MSG_ABORT: {
		char why[MIG_PEER_TEXT_MAX];
		mig__dst_fail(d, MIG_E_PEER, "source aborted: %s",
			      mig__peer_text(env->abort->reason, why, sizeof(why)));
		break;
	}
	case MIG__WIRE__ENVELOPE__MSG_VM_CONFIG:
		on_config(d, env->vm_config);
		break;
	case MIG__WIRE__ENVELOPE__MSG_ROUND_START:
		pthread_mutex_lock(&d->lock);
		d->stats->rounds = env->round_start->round;
		pthread_mutex_unlock(&d->lock);
		break;
	case MIG__WIRE__ENVELOPE__MSG_ROUND_END:
		on_round_end(c, env->round_end);
		break;
	case MIG__WIRE__ENVELOPE__MSG_HINT:
		mig__dst_on_hint(d, env->hint);
		break;
	case MIG__WIRE__ENVELOPE__MSG_SWITCHOVER:
		mig__log(&d->cb, d->vm.vm.opaque, MIG_LOG_DEBUG, "switchover");
		/* The source sends this just before it pauses the VM, so the
		 * downtime measured here (to the resume) includes the pause. */
		d->t_switch_us = mig__now_us();
		/* The VM is down until it resumes here: poll rather than sleep,
		 * so that no wake-up latency adds to the downtime. */
		uv_idle_start(&d->spin, mig__dst_on_spin);
		d->last_activity_us = mig__now_us();
		pthread_mutex_lock(&d->lock);
		d->stats->phase = MIG_PHASE_STOPCOPY;
		/* Round 1's hints are long done; never compete with the
		 * last pages for a CPU. */
		d->prefault_stop = 1;
		pthread_mutex_unlock(&d->lock);
		break;
	case MIG__WIRE__ENVELOPE__MSG_STATE:
		on_state(d, env->state);
		break;
	case MIG__WIRE__ENVELOPE__MSG_STATE_END:
		if (env->state_end->items != d->state_items) {
			mig__dst_fail(d, MIG_E_PROTOCOL, "source sent %u state items, %u arrived",
				  env->state_end->items, d->state_items);
			break;
		}
		(void)load_state(d);
		break;
	case MIG__WIRE__ENVELOPE__MSG_COMPLETE:
		if (env->complete->pages_total != c->pages) {
			mig__dst_fail(d, MIG_E_PROTOCOL,
				  "connection %u: source sent %" PRIu64 " pages, %" PRIu64 " arrived",
				  c->index, env->complete->pages_total, c->pages);
			break;
		}
		if (c->index == 0 && env->complete->memory_hash.len) {
			if (!d->xxh3) {
				mig__dst_fail(d, MIG_E_VERSION, "the source sent a memory "
					      "hash of an older kind (no XXH3-128): cannot "
					      "verify; migrate without verify, or upgrade it");
				break;
			}
			if (env->complete->memory_hash.len != sizeof(d->src_hash)) {
				mig__dst_fail(d, MIG_E_PROTOCOL, "bad memory hash length");
				break;
			}
			memcpy(d->src_hash, env->complete->memory_hash.data,
			       sizeof(d->src_hash));
			d->have_hash = 1;
		}
		c->complete = 1;
		if (++d->ncomplete == d->expected)
			image_complete(d);
		break;
	case MIG__WIRE__ENVELOPE__MSG_ACTIVATE:
		on_activate(d);
		break;
	default:
		/* the table lets no other message through */
		mig__dst_fail(d, MIG_E_PROTOCOL, "unexpected message %d from the source",
			  (int)env->msg_case);
		break;
	}
}

void mig__dst_on_pages(struct dst_conn *c, const mig_frame *f)
{
	mig_dest *d = c->d;
	mig_error e = { 0 };
	long n;

	if (c->complete) {
		mig__dst_fail(d, MIG_E_PROTOCOL, "pages after connection %u completed",
			  c->index);
		return;
	}
	if (mig__dst_step(d, MIG_PMSG_PAGES, MIG_PDIR_TO_DEST, c->index) < 0)
		return;
	n = mig__dec_batch(c->dec, f->body, f->len, page_sink, d, &e);
	if (n < 0) {
		mig__dst_fail(d, (int)n == -ERANGE || (int)n == -EBADMSG ? MIG_E_PROTOCOL : (int)n,
			  "connection %u: bad page batch: %s", c->index, e.msg);
		return;
	}
	c->pages += (uint64_t)n;
	pthread_mutex_lock(&d->lock);
	d->stats->pages_sent += (uint64_t)n;
	d->stats->raw_bytes += (uint64_t)n * MIG_PAGE_SIZE;
	pthread_mutex_unlock(&d->lock);
}
