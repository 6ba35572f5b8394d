/*
 * The destination side of a migration (private): one thread running a
 * libuv loop that listens, authenticates the source's connections, writes
 * pages into guest memory, collects the VM state, and commits and resumes
 * the VM only once the image is complete. It never resumes a partial
 * image: any failure before Activate leaves the VM unresumed and the
 * error in mig_dest_wait(). Split by concern, each file calling only
 * those listed before it:
 *
 *   dest_out.c       writing to the source, failing, closing, ending
 *   dest_prefault.c  memory hints and the threads that fault them in
 *   dest_session.c   the session's messages, stepped through the protocol
 *                    table (protocol.h), and the pages
 *   dest.c           listening, hellos, reading, timers, the API
 *
 * Everything here belongs to the loop thread, but the fields marked
 * "locked", which the API and the prefault threads share under d->lock.
 */
#ifndef MIG_DEST_H
#define MIG_DEST_H

#include <pthread.h>
#include <stdint.h>

#include "codec.h"
#include "frame.h"
#include "net.h"
#include "protocol.h"
#include "session.h"
#include "state.h"
#include "tls.h"

#define SPIN_IDLE_US 20000u         /* see mig__dst_on_spin() */

/* A connection from the source (or a stranger, until its hello). */
struct dst_conn {
	mig_dest *d;
	struct dst_conn *next;
	uv_tcp_t tcp;
	uv_shutdown_t shut;
	mig_reader rd;
	mig_dec *dec;
	mig_tls_conn *tls;  /* NULL: plain TCP */
	char peer[64];
	char addr[48];      /* the peer's address without the port */
	uint64_t accepted_us;
	int authed;
	int closing;
	uint32_t index;
	int complete;
	uint32_t round;     /* last round this connection ended */
	uint64_t pages;
};

/* A MemoryHint waiting for the prefault threads; `pos` is the next page
 * to hand out (under the lock). */
struct hint {
	struct hint *next;
	uint32_t region;
	uint64_t first_page;
	uint64_t nwords;
	uint64_t pos;
	uint64_t words[];
};

/* Threads that fault in hinted pages: two, so that populating RAM (which
 * costs page zeroing and, in a nested VM, the outer host's faults) runs
 * on both cores beside the decoder. */
#define PREFAULT_THREADS 2
/* Pages per madvise: 2 MiB, one huge page, so a stop is noticed soon. */
#define PREFAULT_RUN 512u

struct dwreq {
	uv_write_t req;
	mig_buf buf;
};

struct mig_dest {
	mig_vm_copy vm;
	mig_callbacks cb;
	uint8_t *token;
	size_t token_len;
	uint32_t timeout_ms;
	mig_tls *tls;               /* referenced; NULL: plain TCP */
	uint8_t *tls_rbuf;          /* ciphertext as read, before decryption */

	uv_loop_t loop;
	uv_tcp_t listener;
	uv_async_t async;
	uv_timer_t timer;
	uv_idle_t spin;             /* active: the loop polls, never sleeps */
	int port;
	char host[256];
	int loop_ok;

	pthread_t thread;
	int started;
	int joined;

	pthread_mutex_t lock;
	/* locked */
	int cancel;
	mig_stats *stats;
	struct hint *hints;         /* for the prefault threads */
	int prefault_stop;
	pthread_t prefault_thread[PREFAULT_THREADS];
	int prefault_running;       /* threads not yet out of work */
	int prefault_thread_ok[PREFAULT_THREADS]; /* joined by the loop thread */

	/* loop thread */
	struct dst_conn *conns;
	int have_session;
	uint8_t session_id[16];
	uint32_t expected;
	struct dst_conn **by_index;
	mig_pstate ps;              /* the session's state (protocol.h) */
	uint32_t ncomplete;
	mig_state state;
	uint8_t src_hash[16];
	int have_hash;
	int load_early;             /* config: load_state_early */
	int early_state;            /* negotiated: state streamed, then StateEnd */
	int xxh3;                   /* negotiated: memory_hash is XXH3-128 */
	uint32_t state_items;       /* StateBlobs since the switchover */
	int state_loaded;           /* load_state done */
	int finished;
	uint64_t last_activity_us;
	uint64_t t_switch_us;
	uint64_t t_start_us;
	uint64_t bytes;
	uint32_t rejects;           /* strangers turned away (logged) */
	char last_reject[160];
	mig_error result;
};

/* ---- dest_out.c ---- */

/* Queue message `kind` on c (closing: -ENOTCONN). */
int mig__dst_send(struct dst_conn *c, Mig__Wire__Envelope__MsgCase kind, void *msg);
/* Queue bytes as they are for the socket (TLS records); takes b's memory. */
int mig__dst_write_raw(struct dst_conn *c, mig_buf *b);
/* End the migration with `code`: tell the source, never resume. */
void mig__dst_fail(mig_dest *d, int code, const char *fmt, ...) MIG_PRINTF(3, 4);
/* Move the session's state for message `msg` on connection `conn`, read
 * (MIG_PDIR_TO_DEST) or sent (MIG_PDIR_TO_SOURCE); refused: the
 * migration fails and the error is returned. */
int mig__dst_step(mig_dest *d, int msg, unsigned dir, uint32_t conn);
/* Step, then send on the control connection. */
int mig__dst_session_send(mig_dest *d, Mig__Wire__Envelope__MsgCase kind, void *msg);
/* Close c after what was queued on it is written; discard: at once, for a
 * connection never set up. */
void mig__dst_conn_close(struct dst_conn *c);
void mig__dst_conn_discard(struct dst_conn *c);
/* The loop's idle handle: poll instead of sleeping during stop-and-copy. */
void mig__dst_on_spin(uv_idle_t *h);
/* Close everything; the loop then ends. */
void mig__dst_finish(mig_dest *d);

/* ---- dest_prefault.c ---- */

void mig__dst_on_hint(mig_dest *d, const Mig__Wire__MemoryHint *m);
void mig__dst_prefault_join(mig_dest *d);

/* ---- dest_session.c ---- */

/* A message (pages) from the source on an authenticated connection. */
void mig__dst_on_msg(struct dst_conn *c, Mig__Wire__Envelope *env);
void mig__dst_on_pages(struct dst_conn *c, const mig_frame *f);

#endif /* MIG_DEST_H */
