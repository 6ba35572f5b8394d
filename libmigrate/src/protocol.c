/* The migration protocol's table and its one transition function. See
 * protocol.h. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "frame.h"
#include "protocol.h"

#define M(x) MIG__WIRE__ENVELOPE__MSG_##x
#define C MIG_PCONN_CONTROL
#define D MIG_PCONN_DATA
#define A MIG_PCONN_ANY

/* Every move a session can make, by state; a (state, message) that is not
 * here is a protocol error. */
const struct mig_ptrans mig__proto_table[] = {
	{ MIG_PS_CONFIG, M(VM_CONFIG), C, MIG_PMODE_ANY, MIG_PS_CONFIG_ACK },
	{ MIG_PS_CONFIG_ACK, M(CONFIG_ACK), C, MIG_PMODE_ANY, MIG_PS_PRECOPY },

	{ MIG_PS_PRECOPY, M(HINT), C, MIG_PMODE_ANY, MIG_PS_PRECOPY },
	{ MIG_PS_PRECOPY, M(ROUND_START), C, MIG_PMODE_ANY, MIG_PS_PRECOPY },
	{ MIG_PS_PRECOPY, MIG_PMSG_PAGES, A, MIG_PMODE_ANY, MIG_PS_PRECOPY },
	{ MIG_PS_PRECOPY, M(ROUND_END), A, MIG_PMODE_ANY, MIG_PS_PRECOPY },
	{ MIG_PS_PRECOPY, M(STATS), C, MIG_PMODE_ANY, MIG_PS_PRECOPY },
	/* a data connection may finish before the control one's Switchover
	 * is read */
	{ MIG_PS_PRECOPY, M(COMPLETE), D, MIG_PMODE_ANY, MIG_PS_PRECOPY },
	{ MIG_PS_PRECOPY, M(SWITCHOVER), C, MIG_PMODE_ANY, MIG_PS_SWITCHOVER },

	{ MIG_PS_SWITCHOVER, M(STATE), C, MIG_PMODE_ANY, MIG_PS_SWITCHOVER },
	{ MIG_PS_SWITCHOVER, M(ROUND_START), C, MIG_PMODE_ANY, MIG_PS_SWITCHOVER },
	{ MIG_PS_SWITCHOVER, MIG_PMSG_PAGES, A, MIG_PMODE_ANY, MIG_PS_SWITCHOVER },
	{ MIG_PS_SWITCHOVER, M(ROUND_END), A, MIG_PMODE_ANY, MIG_PS_SWITCHOVER },
	{ MIG_PS_SWITCHOVER, M(COMPLETE), D, MIG_PMODE_ANY, MIG_PS_SWITCHOVER },
	{ MIG_PS_SWITCHOVER, M(STATE_END), C, MIG_PMODE_EARLY, MIG_PS_LAST_PAGES },
	{ MIG_PS_SWITCHOVER, M(COMPLETE), C, MIG_PMODE_LATE, MIG_PS_COMPLETE },

	{ MIG_PS_LAST_PAGES, M(ROUND_START), C, MIG_PMODE_EARLY, MIG_PS_LAST_PAGES },
	{ MIG_PS_LAST_PAGES, MIG_PMSG_PAGES, A, MIG_PMODE_EARLY, MIG_PS_LAST_PAGES },
	{ MIG_PS_LAST_PAGES, M(ROUND_END), A, MIG_PMODE_EARLY, MIG_PS_LAST_PAGES },
	{ MIG_PS_LAST_PAGES, M(COMPLETE), D, MIG_PMODE_EARLY, MIG_PS_LAST_PAGES },
	{ MIG_PS_LAST_PAGES, M(COMPLETE), C, MIG_PMODE_EARLY, MIG_PS_COMPLETE },

	/* the data connections' last pages may still be on their way */
	{ MIG_PS_COMPLETE, MIG_PMSG_PAGES, D, MIG_PMODE_ANY, MIG_PS_COMPLETE },
	{ MIG_PS_COMPLETE, M(ROUND_END), D, MIG_PMODE_ANY, MIG_PS_COMPLETE },
	{ MIG_PS_COMPLETE, M(COMPLETE), D, MIG_PMODE_ANY, MIG_PS_COMPLETE },
	{ MIG_PS_COMPLETE, M(COMMIT), C, MIG_PMODE_ANY, MIG_PS_COMMITTED },

	{ MIG_PS_COMMITTED, M(ACTIVATE), C, MIG_PMODE_ANY, MIG_PS_ACTIVATED },
	{ MIG_PS_ACTIVATED, M(ACTIVATED), C, MIG_PMODE_ANY, MIG_PS_DONE },
};
const size_t mig__proto_table_len = MIG_ARRAY_SIZE(mig__proto_table);

static const char *const state_names[MIG_PS_COUNT] = {
	[MIG_PS_CONFIG] = "config",
	[MIG_PS_CONFIG_ACK] = "config-ack",
	[MIG_PS_PRECOPY] = "precopy",
	[MIG_PS_SWITCHOVER] = "switchover",
	[MIG_PS_LAST_PAGES] = "last-pages",
	[MIG_PS_COMPLETE] = "complete",
	[MIG_PS_COMMITTED] = "committed",
	[MIG_PS_ACTIVATED] = "activated",
	[MIG_PS_DONE] = "done",
	[MIG_PS_FAILED] = "failed",
};

/* What a state is, for error messages: "... <msg> <where>". */
static const char *const state_where[MIG_PS_COUNT] = {
	[MIG_PS_CONFIG] = "before the VM config",
	[MIG_PS_CONFIG_ACK] = "before the VM config was answered",
	[MIG_PS_PRECOPY] = "during pre-copy",
	[MIG_PS_SWITCHOVER] = "during stop-and-copy",
	[MIG_PS_LAST_PAGES] = "after the end of VM state",
	[MIG_PS_COMPLETE] = "after the stream completed",
	[MIG_PS_COMMITTED] = "after the commit",
	[MIG_PS_ACTIVATED] = "after the activation",
	[MIG_PS_DONE] = "after the migration ended",
	[MIG_PS_FAILED] = "after the migration failed",
};

const char *mig__proto_state_name(mig_pstate s)
{
	return (unsigned)s < MIG_PS_COUNT ? state_names[s] : "?";
}

static const struct {
	int msg;
	const char *name;
	unsigned dir;
} msgs[] = {
	{ M(HELLO), "Hello", MIG_PDIR_TO_DEST },
	{ M(HELLO_ACK), "HelloAck", MIG_PDIR_TO_SOURCE },
	{ M(VM_CONFIG), "VmConfig", MIG_PDIR_TO_DEST },
	{ M(CONFIG_ACK), "ConfigAck", MIG_PDIR_TO_SOURCE },
	{ M(HINT), "MemoryHint", MIG_PDIR_TO_DEST },
	{ M(ROUND_START), "RoundStart", MIG_PDIR_TO_DEST },
	{ MIG_PMSG_PAGES, "pages", MIG_PDIR_TO_DEST },
	{ M(ROUND_END), "RoundEnd", MIG_PDIR_TO_DEST },
	{ M(STATS), "RoundStats", MIG_PDIR_TO_SOURCE },
	{ M(SWITCHOVER), "Switchover", MIG_PDIR_TO_DEST },
	{ M(STATE), "StateBlob", MIG_PDIR_TO_DEST },
	{ M(STATE_END), "StateEnd", MIG_PDIR_TO_DEST },
	{ M(COMPLETE), "Complete", MIG_PDIR_TO_DEST },
	{ M(COMMIT), "Commit", MIG_PDIR_TO_SOURCE },
	{ M(ACTIVATE), "Activate", MIG_PDIR_TO_DEST },
	{ M(ACTIVATED), "Activated", MIG_PDIR_TO_SOURCE },
	{ M(ABORT), "Abort", MIG_PDIR_TO_DEST | MIG_PDIR_TO_SOURCE },
};

const char *mig__proto_msg_name(int msg, char buf[24])
{
	for (size_t i = 0; i < MIG_ARRAY_SIZE(msgs); i++)
		if (msgs[i].msg == msg)
			return msgs[i].name;
	snprintf(buf, 24, "message %d", msg);
	return buf;
}

unsigned mig__proto_dir(int msg)
{
	for (size_t i = 0; i < MIG_ARRAY_SIZE(msgs); i++)
		if (msgs[i].msg == msg)
			return msgs[i].dir;
	return 0;
}

static int row_fits(const struct mig_ptrans *t, int early)
{
	return t->mode == MIG_PMODE_ANY ||
	       t->mode == (early ? MIG_PMODE_EARLY : MIG_PMODE_LATE);
}

/* Whether data connections ever carry `msg`. */
static int on_data(int msg)
{
	for (size_t i = 0; i < mig__proto_table_len; i++)
		if (mig__proto_table[i].msg == msg &&
		    (mig__proto_table[i].conns & MIG_PCONN_DATA))
			return 1;
	return msg == M(ABORT);
}

/* The refusals that have a name of their own. */
static const char *refusal(mig_pstate from, int msg, int early)
{
	int before_switch = from <= MIG_PS_PRECOPY;

	switch (msg) {
	case M(VM_CONFIG):
		return "second VM config";
	case M(SWITCHOVER):
		return before_switch ? NULL : "second switchover";
	case M(HINT):
		return before_switch ? NULL : "memory hint after the switchover";
	case M(STATE):
		return before_switch ? "VM state before the switchover"
				     : "VM state after its end";
	case M(STATE_END):
		return "unexpected end of VM state";
	case M(COMPLETE):
		return early && from == MIG_PS_SWITCHOVER ?
			"stream completed before the end of VM state" : NULL;
	case M(ACTIVATE):
		return from < MIG_PS_COMMITTED ? "activate before commit" : NULL;
	default:
		return NULL;
	}
}

int mig__proto_step(mig_pstate from, int msg, unsigned dir, uint32_t conn,
		    int early, mig_pstate *to, mig_error *err)
{
	unsigned kind = conn ? MIG_PCONN_DATA : MIG_PCONN_CONTROL;
	char nb[24];

	*to = MIG_PS_FAILED;
	if ((unsigned)from >= MIG_PS_COUNT)
		return mig__err(err, MIG_E_PROTOCOL, "protocol state %d", (int)from);
	if (dir != MIG_PDIR_TO_DEST && dir != MIG_PDIR_TO_SOURCE)
		return mig__err(err, MIG_E_PROTOCOL, "protocol direction %u", dir);
	if (!(mig__proto_dir(msg) & dir))
		return mig__err(err, MIG_E_PROTOCOL, "unexpected %s from the %s",
				mig__proto_msg_name(msg, nb),
				dir == MIG_PDIR_TO_DEST ? "source" : "destination");
	if (msg == M(ABORT) && from != MIG_PS_DONE)
		return 0;
	for (size_t i = 0; i < mig__proto_table_len; i++) {
		const struct mig_ptrans *t = &mig__proto_table[i];
		if (t->from == from && t->msg == msg && (t->conns & kind) &&
		    row_fits(t, early)) {
			*to = t->to;
			return 0;
		}
	}
	const char *name = mig__proto_msg_name(msg, nb);
	if (conn && !on_data(msg))
		return mig__err(err, MIG_E_PROTOCOL, "%s on data connection %u",
				name, conn);
	if (from == MIG_PS_CONFIG && msg != M(VM_CONFIG))
		return mig__err(err, MIG_E_PROTOCOL, "%s before the VM config", name);
	const char *why = refusal(from, msg, early);
	if (why)
		return mig__err(err, MIG_E_PROTOCOL, "%s", why);
	if (conn)
		return mig__err(err, MIG_E_PROTOCOL, "unexpected %s on connection %u %s",
				name, conn, state_where[from]);
	return mig__err(err, MIG_E_PROTOCOL, "unexpected %s %s", name,
			state_where[from]);
}

/* Append to buf as snprintf would, tracking the length needed. */
static void md(char *buf, size_t size, size_t *len, const char *fmt, ...)
	MIG_PRINTF(4, 5);
static void md(char *buf, size_t size, size_t *len, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(*len < size ? buf + *len : NULL,
		      *len < size ? size - *len : 0, fmt, ap);
	va_end(ap);
	if (n > 0)
		*len += (size_t)n;
}

size_t mig__proto_markdown(char *buf, size_t size)
{
	static const char *const conns[] = { "", "control", "data", "any" };
	static const char *const modes[] = { "", "early state", "no early state" };
	size_t len = 0;
	char nb[24];

	if (size)
		buf[0] = 0;
	md(buf, size, &len,
	   "| state | message | sent by | connection | when | next state |\n"
	   "| --- | --- | --- | --- | --- | --- |\n");
	for (size_t i = 0; i < mig__proto_table_len; i++) {
		const struct mig_ptrans *t = &mig__proto_table[i];
		unsigned dir = mig__proto_dir(t->msg);
		md(buf, size, &len, "| %s | %s | %s | %s | %s | %s |\n",
		   state_names[t->from], mig__proto_msg_name(t->msg, nb),
		   dir == MIG_PDIR_TO_DEST ? "source" : "destination",
		   conns[t->conns], modes[t->mode], state_names[t->to]);
	}
	md(buf, size, &len, "| any but done | Abort | either | any |  | failed |\n");
	return len;
}
