/*
 * The migration protocol as data (private): one table of the session's
 * states and the messages that move it, shared by the source (source_*.c)
 * and the destination (dest.c), which each keep a mig_pstate and move it
 * only through mig__proto_step(), and by the tests and fuzzers.
 *
 * A session starts once the control connection's hello is answered (the
 * hellos authenticate connections; they are not part of the table). Each
 * side steps on every message it receives, and on those it sends that
 * change the state (VmConfig, ConfigAck, Switchover, StateEnd, the
 * control connection's Complete, Commit, Activate, Activated). Pages
 * travel in PAGES frames, here the message MIG_PMSG_PAGES. Data
 * connections carry only pages, RoundEnd and Complete; their stream runs
 * independently of the control connection's, so their messages are
 * allowed in every state the source may still send them in. Abort, in
 * either direction and on any connection, ends any state but DONE.
 *
 * Pure (no I/O, no locks): the caller serialises the steps of a session.
 * docs/protocol.md is generated from the table (mig__proto_markdown());
 * tests/unit/test_protocol.c checks that it is.
 */
#ifndef MIG_PROTOCOL_H
#define MIG_PROTOCOL_H

#include <stddef.h>

#include "internal.h"

typedef enum mig_pstate {
	MIG_PS_CONFIG = 0,   /* authenticated: the VM's configuration next */
	MIG_PS_CONFIG_ACK,   /* VmConfig sent: the destination's answer next */
	MIG_PS_PRECOPY,      /* rounds of pages, memory hints */
	MIG_PS_SWITCHOVER,   /* the VM paused: its state and the last pages */
	MIG_PS_LAST_PAGES,   /* StateEnd (early state): the last pages only */
	MIG_PS_COMPLETE,     /* the control connection completed: Commit next */
	MIG_PS_COMMITTED,    /* Commit: Activate next */
	MIG_PS_ACTIVATED,    /* Activate: Activated next */
	MIG_PS_DONE,         /* Activated: the VM runs on the destination */
	MIG_PS_FAILED,       /* Abort, either way, or an error on either side */
	MIG_PS_COUNT
} mig_pstate;

/* A PAGES frame, beside the Envelope's message cases. */
#define MIG_PMSG_PAGES 100

/* Which side sends a message. */
enum mig_pdir { MIG_PDIR_TO_DEST = 1, MIG_PDIR_TO_SOURCE = 2 };

/* Connections a row applies to. */
#define MIG_PCONN_CONTROL 1u
#define MIG_PCONN_DATA 2u
#define MIG_PCONN_ANY (MIG_PCONN_CONTROL | MIG_PCONN_DATA)

/* Rows that hold only with, or only without, FEATURE_EARLY_STATE. */
#define MIG_PMODE_ANY 0u
#define MIG_PMODE_EARLY 1u
#define MIG_PMODE_LATE 2u

struct mig_ptrans {
	mig_pstate from;
	int msg;             /* Mig__Wire__Envelope__MsgCase or MIG_PMSG_PAGES */
	unsigned conns;      /* MIG_PCONN_* */
	unsigned mode;       /* MIG_PMODE_* */
	mig_pstate to;
};

extern const struct mig_ptrans mig__proto_table[];
extern const size_t mig__proto_table_len;

/*
 * Message `msg` sent by `dir`'s other side (MIG_PDIR_TO_DEST: by the
 * source) on connection `conn` (0 = control) in state `from`, with early
 * state negotiated or not: 0 and the next state in *to, or MIG_E_PROTOCOL
 * with err naming the message and what was due (*to is then
 * MIG_PS_FAILED). A message from the side that does not send it is
 * refused. Abort gives 0 and MIG_PS_FAILED (but in DONE).
 */
int mig__proto_step(mig_pstate from, int msg, unsigned dir, uint32_t conn,
		    int early, mig_pstate *to, mig_error *err);

/* Which side sends `msg` (MIG_PDIR_*; both for Abort, 0 if unknown). */
unsigned mig__proto_dir(int msg);

const char *mig__proto_state_name(mig_pstate s);
/* "Hello", "RoundEnd", "pages", ...; "message N" for others (`buf`). */
const char *mig__proto_msg_name(int msg, char buf[24]);

/*
 * The table as docs/protocol.md's Markdown, into `buf` (NUL-terminated,
 * cut at `size`); returns the length it needs, as snprintf does.
 */
size_t mig__proto_markdown(char *buf, size_t size);

#endif /* MIG_PROTOCOL_H */
