/* Watchers: a client's `watch` of a job or grid (state changes, metrics,
 * the daemon's own news, then watch_end) and `logs --follow` of a job (its
 * new log lines). Fed by the daemon's events (events.h). */
#ifndef RUNAWAY_DAEMON_WATCH_H
#define RUNAWAY_DAEMON_WATCH_H

#include <stdint.h>

#include "daemon/jobs.h"
#include "daemon/net.h"

typedef struct rd_watch_sub {
    rd_conn *c;
    uint64_t serial; /* c is still the connection that asked (rd_conn_find) */
    char kind;       /* 'j' job or 'g' grid */
    int64_t id;
    long long req;   /* the request every event answers */
    int logs;        /* `logs --follow`: the job's new log lines, not its metrics */
    struct rd_watch_sub *next;
} rd_watch_sub;

typedef struct rd_watch {
    rd_jobs *jobs;
    rd_net *net;
    rd_watch_sub *subs;
} rd_watch;

/* Listens to ev from now on. */
void rd_watch_listen(rd_watch *W, rd_events *ev);
/* Connection c follows target (kind, id) for request req: every event
 * until it has ended (one watch per connection: a new one replaces it). */
void rd_watch_add(rd_watch *W, rd_conn *c, long long req, char kind, int64_t id, int logs);
void rd_watch_free(rd_watch *W);

#endif
