/*
 * The door of a listening port (see migd_gate.h).
 */
#include <string.h>

#include "migd_gate.h"

void gate_leave(struct gate_entry *e)
{
	struct gate *g = e->gate;

	if (!g)
		return;
	if (e->prev)
		e->prev->next = e->next;
	else
		g->head = e->next;
	if (e->next)
		e->next->prev = e->prev;
	e->prev = e->next = NULL;
	e->gate = NULL;
	g->n--;
}

static void turn_away(struct gate_entry *e, const char *why)
{
	struct gate *g = e->gate;

	gate_leave(e);
	g->turned_away++;
	e->turn_away(e, why);
}

static void on_sweep(uv_timer_t *t)
{
	struct gate *g = t->data;
	uint64_t now = uv_now(t->loop);
	struct gate_entry *e, *prev;

	/* Oldest first, from the tail: stop at the first one in time. */
	for (e = g->head; e && e->next; e = e->next)
		;
	for (; e && now - e->since_ms > g->deadline_ms; e = prev) {
		prev = e->prev;
		turn_away(e, "did not authenticate in time");
	}
}

int gate_init(struct gate *g, uv_loop_t *loop)
{
	int r = uv_timer_init(loop, &g->sweep);

	if (r < 0)
		return r;
	g->sweep.data = g;
	uv_unref((uv_handle_t *)&g->sweep); /* never keeps the loop alive */
	return uv_timer_start(&g->sweep, on_sweep, 1000, 1000);
}

void gate_enter(struct gate *g, struct gate_entry *e, const char *addr)
{
	struct gate_entry *o, *oldest = NULL, *oldest_here = NULL;
	unsigned here = 0;

	for (o = g->head; o; o = o->next) {
		oldest = o;
		if (!strcmp(o->addr, addr)) {
			here++;
			oldest_here = o;
		}
	}
	if (here >= g->per_addr)
		turn_away(oldest_here, "too many unauthenticated connections "
			  "from its address");
	else if (g->n >= g->max)
		turn_away(oldest, "too many unauthenticated connections");
	strncpy(e->addr, addr, sizeof(e->addr) - 1);
	e->addr[sizeof(e->addr) - 1] = '\0';
	e->since_ms = uv_now(g->sweep.loop);
	e->gate = g;
	e->prev = NULL;
	e->next = g->head;
	if (g->head)
		g->head->prev = e;
	g->head = e;
	g->n++;
}
