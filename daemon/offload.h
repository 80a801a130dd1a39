/* Reading queries on libuv's thread pool: a curves, metrics or table over
 * a big grid reads thousands of rows, which the loop must not wait for.
 * Each pool thread reads through a read-only connection of its own (WAL:
 * readers see what was committed, and never block the loop's writes). */
#ifndef RUNAWAY_DAEMON_OFFLOAD_H
#define RUNAWAY_DAEMON_OFFLOAD_H

#include <jansson.h>

#include "daemon/net.h"
#include "daemon/query.h"

/* Answers request `id` (its message m) from the store, on a pool thread:
 * fn may read the store it is given and nothing else of the daemon. */
typedef void rd_offload_fn(rd_store *s, long long id, json_t *m, rd_answer *a);

/* Runs fn there and replies to c with its answer, on the loop; c's
 * requests wait while RD_DEFERRED_MAX of its answers are due (net.h). */
void rd_offload(rd_store *s, rd_conn *c, long long id, json_t *m, rd_offload_fn *fn);

#endif
