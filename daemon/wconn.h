/* Worker connections and their reports: a worker's hello (its local slot,
 * or a new remote one), its heartbeats, its metric and log reports into the
 * store (and TensorBoard), the ends of its attempts into the job state
 * machine (jobs.h), its rendezvous requests (kv.h); and the watchdog that
 * kills a worker whose connection goes silent. */
#ifndef RUNAWAY_DAEMON_WCONN_H
#define RUNAWAY_DAEMON_WCONN_H

#include <jansson.h>

#include "daemon/jobs.h"
#include "daemon/tboard.h"

typedef struct rd_wconn {
    rd_jobs *jobs;
    rd_tboard *tb;
} rd_wconn;

/* A worker's hello on c: 0, or -1 with err (refused). */
int rd_wconn_hello(rd_wconn *W, rd_conn *c, json_t *m, char *err, size_t errlen);
void rd_wconn_message(rd_wconn *W, rd_conn *c, const char *type, json_t *m);
/* c (a worker's) is closing: its job is lost, its slot waits for it. */
void rd_wconn_lost(rd_wconn *W, rd_conn *c);
/* Workers silent past the heartbeat timeout are killed, their jobs lost. */
void rd_wconn_watchdog(rd_wconn *W, double now);
/* The loop stalled for `secs`: the workers' silence then is not counted. */
void rd_wconn_forgive(rd_wconn *W, double secs);

#endif
