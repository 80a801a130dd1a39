/* runawayd --notify CMD: a shell command run when a grid ends, when a job
 * fails for good, and when the database stops taking writes (and takes
 * them again). Fed by the daemon's events (events.h); notify.c says more. */
#ifndef RUNAWAY_DAEMON_NOTIFY_H
#define RUNAWAY_DAEMON_NOTIFY_H

#include <limits.h>
#include <uv.h>

#include "daemon/db.h"

#define RD_NOTIFY_MAX 16  /* commands running at once */
#define RD_NOTIFY_SEEN 64 /* events remembered, so that each is notified once */

typedef struct rd_notify_slot {
    uv_process_t proc;
    int busy;      /* until its handle is closed */
    char what[96]; /* the event, for the log */
} rd_notify_slot;

typedef struct rd_notify {
    uv_loop_t *loop;
    rd_store *store;
    const char *cmd; /* NULL: none */
    char state_dir[PATH_MAX];
    rd_notify_slot slots[RD_NOTIFY_MAX];
    char seen[RD_NOTIFY_SEEN][64];
    int next;
} rd_notify;

/* Listens to ev from now on (nothing happens without a command). */
void rd_notify_listen(rd_notify *N, rd_events *ev);

#endif
