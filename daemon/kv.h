/* The rendezvous store: kv_set and kv_get of a data-parallel attempt's
 * ranks (the store itself lives in its run, runs.h), scoped to the
 * attempt the asking worker holds. */
#ifndef RUNAWAY_DAEMON_KV_H
#define RUNAWAY_DAEMON_KV_H

#include <jansson.h>

#include "daemon/pool.h"
#include "daemon/runs.h"

#define RD_KV_WAITERS_PER_CONN 8

/* kv_set / kv_get from worker w on connection c. */
void rd_kv_request(rd_runs *rs, rd_conn *c, rd_worker *w, const char *type, json_t *m);
/* A closing connection's waiters go without a reply. */
void rd_kv_purge_conn(rd_runs *rs, rd_conn *c);
/* Waiters past their deadline get a timeout. */
void rd_kv_tick(rd_runs *rs);
/* The loop stalled for `secs`: the value may be in a frame not read yet. */
void rd_kv_forgive(rd_runs *rs, double secs);

#endif
