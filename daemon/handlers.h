/* Client requests: one handler per request type (PROTOCOL.md), each
 * replying on its connection, and the dispatch table that picks it. */
#ifndef RUNAWAY_DAEMON_HANDLERS_H
#define RUNAWAY_DAEMON_HANDLERS_H

#include <jansson.h>

#include "daemon/daemon.h"

typedef void rd_request_fn(rd_daemon *d, rd_conn *c, long long id, json_t *m);

/* h_jobs.c: what changes jobs */
rd_request_fn rd_req_submit, rd_req_requeue, rd_req_priority, rd_req_cancel, rd_req_rm,
    rd_req_shutdown;
/* h_query.c: the daemon's state, and the streams that follow it */
rd_request_fn rd_req_grids, rd_req_ls, rd_req_show, rd_req_status, rd_req_workers, rd_req_logs,
    rd_req_watch;
/* h_results.c: results */
rd_request_fn rd_req_curves, rd_req_metrics, rd_req_table, rd_req_export, rd_req_sphere;

/* dispatch.c: a client's request (net.h's client_request; arg: the
 * daemon); -1 for an unknown type (the connection is closed). */
int rd_handle_client(void *arg, rd_conn *c, const char *type, json_t *m);

#endif
