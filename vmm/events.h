/*
 * migvm's events for the program that started it (--events-fd N): VmEvent
 * frames (proto/control.proto) on an inherited descriptor, so that migd
 * never takes meaning from migvm's stderr, where the guest's console lines
 * and peers' reasons go too. Best effort: an event that its reader does not
 * take within a second is lost (and said so on stderr); migvm goes on.
 */
#ifndef MIGVM_EVENTS_H
#define MIGVM_EVENTS_H

#include "control.pb-c.h"
#include "vm.h"

/* --events-fd ARG: a descriptor open for writing, kept close-on-exec.
 * 0, or -1 with the reason on stderr. */
int events_init(const char *arg);
/* --incoming listens on PORT. */
void events_incoming_port(int port);
/* The incoming migration ended as E says. */
void events_incoming_done(const struct migration_end *e);
/* The typed result of a migration, for an event or a Status (its message
 * points into E). */
void migration_result_fill(Mig__Ctl__MigrationResult *r,
			   const struct migration_end *e);

#endif
