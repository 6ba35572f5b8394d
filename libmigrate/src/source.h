/*
 * The source side of a migration (private): Clark et al.'s stages in one
 * engine thread, and one libuv thread per TCP connection that encodes and
 * writes the pages queued to it, with back-pressure and an optional
 * bandwidth cap. Split by concern, each file calling only those listed
 * before it:
 *
 *   source_pages.c   the send bitmaps: dirty-log syncs, the VMM's marks,
 *                    chunks of marked pages, encoding a chunk
 *   source_queue.c   the hello, protocol steps of what is sent, TLS sealing, the
 *                    connections' queues, the stop-and-copy's borrowed
 *                    writes from the engine's thread
 *   source_conn.c    a connection: its thread, writes and reads (TLS
 *                    handshake and records), the mailbox of messages
 *                    read, the answer to Commit
 *   source_wait.c    waiting for a message or a drained queue, and which
 *                    error a failure reports (grace for the peer's reason)
 *   source_round.c   pre-copy: rounds, their stats, the policy's decision
 *   source_commit.c  stop-and-copy and the commitment
 *   source.c         set-up, failure clean-up, the engine thread, the API
 *
 * Locking: s->lock protects every field marked "locked" below, the
 * connections' queues and counters, and the mailbox. The engine thread owns
 * the bitmaps between rounds; during a round each connection thread owns
 * the chunks queued to it (chunks never overlap).
 */
#ifndef MIG_SOURCE_H
#define MIG_SOURCE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "codec.h"
#include "dirty.h"
#include "frame.h"
#include "net.h"
#include "protocol.h"
#include "session.h"
#include "tls.h"

/* An item of a connection's queue: a chunk of pages to encode, or frames. */
struct item {
	struct item *next;
	int is_chunk;
	int resident_only;
	int final;          /* stop-and-copy: the log is closed, no rearm */
	/* Complete, packed by the connection thread when it gets there, so
	 * that it counts every page encoded before it on this connection. */
	int is_complete;
	/* The rest of a frame whose start another thread wrote
	 * (mig__src_queue_rest()): never dropped, or the stream would lose
	 * its framing. */
	int remainder;
	/* TLS records sealed already (by a borrowed write): they go out as
	 * they are, never sealed twice nor joined to other frames. */
	int raw;
	int has_hash;
	uint8_t hash[16];
	uint32_t region;
	uint64_t first;
	uint32_t count;
	mig_buf frame;
};

struct msg {
	struct msg *next;
	uint32_t conn;
	Mig__Wire__Envelope *env;
};

struct src_conn;

/* One TCP connection to the destination (source_conn.c). */
struct src_conn {
	mig_source *s;
	uint32_t index;
	pthread_t thread;
	int thread_ok;
	uv_loop_t loop;
	uv_tcp_t tcp;
	uv_connect_t creq;
	uv_async_t async;
	uv_timer_t timer;
	mig_enc *enc;
	mig_reader rd;
	/* NULL: plain TCP. Sealed by whoever writes (the connection's thread,
	 * or a borrower), so records leave in the order they were sealed. */
	mig_tls_conn *tls;
	int hello_acked;        /* connection thread: its HelloAck read */
	struct sockaddr_storage addr;
	int loop_ok;
	/* locked */
	struct item *head, *tail;
	unsigned writes;        /* uv_write requests outstanding */
	int connected;
	uint64_t connected_us;  /* when the hello went out */
	int closing;
	int error;
	char errmsg[MIG_ERROR_MSG_MAX];
	uint64_t error_us;   /* when `error` was set */
	uint64_t bytes, pages, zero_pages, raw_bytes;
	/* The socket (valid while connected and not closing: only this
	 * connection's thread closes it, once `closing` is set) and its
	 * TCP_INFO bytes_acked when progress was last seen. */
	int fd;
	uint64_t acked;
	/* connection thread only */
	size_t inflight;
	/* Link rate for MIG_COMPRESS_AUTO: bytes the kernel took over the
	 * time a write was pending. A fast link drains at once and looks
	 * fast; a slow one keeps writes pending and shows its real rate. */
	uint64_t busy_since_us, busy_us, busy_bytes;
	uint64_t bw_t0_us, bw_bytes;
	int timer_armed;
};

struct mig_source {
	mig_vm_copy vm;
	mig_params params;
	mig_callbacks cb;
	char uri[300];
	char host[256];
	int port;
	uint8_t *token;
	size_t token_len;
	uint8_t session_id[16];
	mig_tls *tls;              /* referenced; NULL: plain TCP */

	pthread_t thread;
	int started;
	int joined;

	pthread_mutex_t lock;
	pthread_cond_t cond;
	/* locked */
	int cancel;
	int aborting;              /* sending the Abort: pump() reads it
				    * without the lock, so set atomically */
	int finished;
	uint64_t last_progress_us;  /* a write completed or a message came */
	/* Commitment, decided on connection 0's thread: while armed, the
	 * Commit it reads is answered with Activate at once (no hand-off to
	 * the engine thread and back inside the downtime). The engine disarms
	 * before it gives up, so exactly one of the two happens. */
	int commit_armed;
	mig_pstate ps;             /* the session's state (protocol.h) */
	/* The first message a connection thread refused (the protocol
	 * table): the migration fails with it, the connection still up to
	 * carry the Abort. */
	mig_error proto_err;
	int activate_sent;
	uint64_t activate_sent_us;
	mig_stats *stats;
	struct msg *mbox_head, *mbox_tail;

	/* engine thread */
	struct src_conn *conns;
	uint32_t nconns;
	mig_dirty *dirty;
	uint64_t **send_bm;
	uint64_t **resident_bm;     /* round 1 only */
	/* mig_mark_dirty(): pages the VMM wrote, merged into send_bm at each
	 * sync; set (and `marks_closed` at the final sync) under the lock. */
	uint64_t **marked_bm;
	int marks_closed;
	int marks_new;       /* a bit was set in marked_bm since the merge */
	bool *absent_is_zero;       /* per region: mig__mem_absent_is_zero() */
	uint32_t round;
	int paused;
	int committed;
	unsigned throttle_pct;
	uint64_t rtt_us;
	uint64_t features;          /* what the destination accepted */
	mig_error result;
	uint64_t t_start_us;
};

/* Where a round started: its time and the connections' counters. */
struct round_mark {
	uint64_t t0, bytes, pages, zero, raw;
};

/* ---- source_pages.c ---- */

/* Encode the pages of chunk `it` still marked in the send bitmap onto
 * `out` with c's encoder (clearing their bits), counted in c's counters. */
int mig__src_encode_chunk(struct src_conn *c, const struct item *it, mig_buf *out);
/* The connection that carries the chunk at page `first` of region `r`. */
uint32_t mig__src_chunk_conn(const mig_source *s, uint32_t r, uint64_t first);
/* Call fn(s, it, opaque) with an item for every chunk of the send bitmaps
 * that has pages marked, on connection `conn` only (or all, if -1); fn
 * takes the item. Stops at fn's first error (*err). Returns pages marked. */
uint64_t mig__src_for_marked(mig_source *s, long conn,
			     int (*fn)(mig_source *, struct item *, void *),
			     void *opaque, int *err);
long mig__src_merge_marked(mig_source *s, int last);
long mig__src_sync_dirty(mig_source *s);
uint64_t mig__src_count_marked_upto(mig_source *s, uint64_t limit);
uint64_t mig__src_count_marked(mig_source *s);
uint64_t **mig__src_alloc_bitmaps(mig_source *s);
void mig__src_free_bitmaps(mig_source *s, uint64_t **bms);

/* ---- source_conn.c ---- */

/* Set up connection i to `ss` and start its thread, which connects and
 * writes `first` (the hello; its memory is taken) before anything else. */
int mig__src_conn_start(mig_source *s, uint32_t i,
			const struct sockaddr_storage *ss, mig_buf *first);
/* Seal b in place into TLS records (nothing to do in the clear). A
 * failure leaves the session unusable: the connection fails. */
int mig__src_seal(struct src_conn *c, mig_buf *b, mig_error *e);
/* Append `it` to connection conn's queue (takes it) and wake its thread. */
int mig__src_queue(mig_source *s, uint32_t conn, struct item *it);
int mig__src_send_msg(mig_source *s, uint32_t conn, Mig__Wire__Envelope *env);
/* Queue the frames in `b` on connection `conn` as one item (one write);
 * takes b's memory. With `now`, first try to write them from this
 * thread when the connection is idle (see source_conn.c). */
int mig__src_send_frames(mig_source *s, uint32_t conn, mig_buf *b, int now);
int mig__src_send_simple(mig_source *s, uint32_t conn,
			 Mig__Wire__Envelope__MsgCase kind, void *msg, int now);
/* Queue what was not written of `b` (from byte `done` on); takes b.
 * `raw`: b holds sealed TLS records (mig__src_borrowed_write_locked()). */
int mig__src_queue_rest(mig_source *s, uint32_t conn, mig_buf *b, size_t done,
			int raw);
/* Append one message of kind `kind` to `b`. */
int mig__src_pack_simple(mig_buf *b, Mig__Wire__Envelope__MsgCase kind, void *msg);
/* The features the source asks for in its hellos. */
uint64_t mig__src_wanted_features(const mig_source *s);
/* Connection i's hello; `proof`: under TLS, the token bound to the
 * connection's session (MIG_TLS_PROOF_LEN bytes), else NULL. */
int mig__src_pack_hello(mig_source *s, uint32_t i, const uint8_t *proof,
			mig_buf *out);
/* Append Complete for a connection that carried `pages` pages to `out`. */
int mig__src_pack_complete(uint64_t pages, const uint8_t *hash, int has_hash,
			   mig_buf *out);
/* The shortcut of the stop-and-copy (source_conn.c): lock held, borrow
 * connection c when it is up with nothing queued or in flight (its thread
 * starts no write until it is given back), write on it without blocking
 * (bytes written; 0 once it is down), give it back. Under TLS the write
 * seals b in place first (*raw = 1: b now holds the records). */
int mig__src_borrow_locked(struct src_conn *c);
size_t mig__src_borrowed_write_locked(mig_source *s, struct src_conn *c,
				      mig_buf *b, int *raw);
void mig__src_give_back_locked(mig_source *s, struct src_conn *c);
/* A move of the session's state, to log once the lock is dropped. */
struct src_move {
	mig_pstate from, to;
};

/*
 * Lock held: move the session's state for message `msg` on connection
 * `conn`, read from the destination or (with `sent`) sent to it
 * (mig__proto_step()); *mv says from where to where. Refused:
 * MIG_E_PROTOCOL with err saying why, and the state is failed. Once it is
 * failed, what this side still sends moves nothing and is no error
 * (whoever failed it reports why), but Activate and what it reads are
 * refused.
 */
int mig__src_step_locked(mig_source *s, int msg, uint32_t conn, int sent,
			 struct src_move *mv, mig_error *err);
/* Lock not held: log a move at debug level (the embedder's callback may
 * take the lock). */
void mig__src_log_move(mig_source *s, const struct src_move *mv);
/* Lock held: keep the first refusal of a connection thread for the engine
 * to report (s->proto_err). */
void mig__src_proto_err_locked(mig_source *s, const mig_error *e);
/* The engine sends `msg` on the control connection: the state moves (an
 * error in s->result if the table refuses: a bug on this side). */
int mig__src_sent(mig_source *s, int msg);
/* Lock held: whether any connection's peer acknowledged bytes since the
 * last look. */
int mig__src_link_moved_locked(mig_source *s);
void mig__src_counters(mig_source *s, uint64_t *bytes, uint64_t *pages,
		       uint64_t *zero, uint64_t *raw);
void mig__src_drop_queued(mig_source *s, struct src_conn *c, int all);
/* Wake every connection that is up to look at its queue and its rate cap
 * again (a parameter changed); s->lock held. */
void mig__src_kick_conns_locked(mig_source *s);
void mig__src_close_conns(mig_source *s);

/* ---- source_wait.c ---- */

int mig__src_wait_drained(mig_source *s);
int mig__src_wait_msg(mig_source *s, uint32_t conn,
		      Mig__Wire__Envelope__MsgCase want, uint64_t timeout_ms,
		      Mig__Wire__Envelope **out);

/* ---- source_round.c ---- */

void mig__src_set_phase(mig_source *s, mig_phase ph);
int mig__src_set_throttle(mig_source *s, unsigned pct);
uint64_t mig__src_queue_round(mig_source *s, long conn, int *err);
int mig__src_round_begin(mig_source *s, struct round_mark *m, mig_buf *b);
void mig__src_round_record(mig_source *s, const struct round_mark *m, uint64_t d);
/* Iterative pre-copy until the policy switches over. */
int mig__src_precopy(mig_source *s);

/* ---- source_commit.c ---- */

/* Disarm the commit answer; whether Activate already went out. */
int mig__src_activation_went_out(mig_source *s);
/* Stop-and-copy and commitment. */
int mig__src_stop_and_copy(mig_source *s);

#endif
