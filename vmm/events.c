/*
 * migvm's events for the program that started it (see events.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "events.h"
#include "msgio.h"

#define EVENT_TIMEOUT_MS 1000

static int events_fd = -1;

int events_init(const char *arg)
{
	char *end;
	long fd = strtol(arg, &end, 10);
	int fl;

	if (*end || end == arg || fd < 3 || fd > 1023) {
		fprintf(stderr, "migvm: --events-fd %s: not a descriptor (3 "
			"or more)\n", arg);
		return -1;
	}
	fl = fcntl((int)fd, F_GETFL);
	if (fl < 0 || (fl & O_ACCMODE) == O_RDONLY) {
		fprintf(stderr, "migvm: --events-fd %ld: %s\n", fd,
			fl < 0 ? strerror(errno) : "not open for writing");
		return -1;
	}
	fcntl((int)fd, F_SETFD, FD_CLOEXEC);
	events_fd = (int)fd;
	return 0;
}

static void send_event(const Mig__Ctl__VmEvent *ev, const char *what)
{
	int r;

	if (events_fd < 0)
		return;
	r = msgio_send(events_fd, &ev->base, EVENT_TIMEOUT_MS);
	if (r < 0)
		fprintf(stderr, "migvm: the %s event was not delivered: %s\n",
			what, strerror(-r));
}

void events_incoming_port(int port)
{
	Mig__Ctl__VmEvent ev = MIG__CTL__VM_EVENT__INIT;

	ev.ev_case = MIG__CTL__VM_EVENT__EV_INCOMING_PORT;
	ev.incoming_port = (uint32_t)port;
	send_event(&ev, "incoming port");
}

void migration_result_fill(Mig__Ctl__MigrationResult *r,
			   const struct migration_end *e)
{
	r->seq = e->seq;
	r->incoming = e->incoming;
	r->ok = e->ok;
	r->error = e->error;
	r->message = (char *)e->message;
	r->rounds = e->rounds;
	r->downtime_us = e->downtime_us;
	r->total_time_us = e->total_time_us;
	r->pages_sent = e->pages_sent;
	r->bytes_on_wire = e->bytes_on_wire;
}

void events_incoming_done(const struct migration_end *e)
{
	Mig__Ctl__VmEvent ev = MIG__CTL__VM_EVENT__INIT;
	Mig__Ctl__MigrationResult res = MIG__CTL__MIGRATION_RESULT__INIT;

	migration_result_fill(&res, e);
	ev.ev_case = MIG__CTL__VM_EVENT__EV_INCOMING_DONE;
	ev.incoming_done = &res;
	send_event(&ev, "incoming done");
}
