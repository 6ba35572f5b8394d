/*
 * The door of a listening port. A connection that has not yet proven who
 * it is (a stranger) waits here: for at most `deadline_ms`, with at most
 * `per_addr` others from its address and `max` in all. A newcomer over a
 * limit makes room by turning away the oldest one waiting (from its own
 * address, or of all), so that a flood of strangers can hold a port for
 * no longer than a real peer takes to authenticate, and never exhausts
 * the daemon's descriptors. A leaf: libuv only, no daemon state.
 */
#ifndef MIGD_GATE_H
#define MIGD_GATE_H

#include <stdint.h>
#include <uv.h>

struct gate_entry {
	struct gate_entry *prev, *next; /* newest first */
	struct gate *gate;              /* NULL: not waiting */
	char addr[64];                  /* the peer's address, no port */
	uint64_t since_ms;
	/* Called once the entry has left the gate: close the connection. */
	void (*turn_away)(struct gate_entry *e, const char *why);
};

struct gate {
	const char *what;               /* "peer", "metrics": for the log */
	unsigned max, per_addr, deadline_ms;
	struct gate_entry *head;
	unsigned n;
	uint64_t turned_away;
	uv_timer_t sweep;               /* once a second: the deadline */
};

/* Start the gate's deadline timer on `loop`. */
int gate_init(struct gate *g, uv_loop_t *loop);
/* A stranger from `addr` arrives (room made for it first). */
void gate_enter(struct gate *g, struct gate_entry *e, const char *addr);
/* It proved who it is, or its connection closed: it leaves (no-op when
 * not waiting). */
void gate_leave(struct gate_entry *e);

#endif /* MIGD_GATE_H */
