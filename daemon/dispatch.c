/* The dispatch table of client requests (handlers.h). */
#include <string.h>

#include "daemon/handlers.h"
#include "proto/msg.h"

static const struct {
    const char *type;
    rd_request_fn *fn;
    int records;   /* must be recorded before it is answered: waits for the database */
    int refused_stopping; /* refused once a shutdown has begun */
} table[] = {
    {"submit", rd_req_submit, 1, 1},
    {"requeue", rd_req_requeue, 1, 0},
    {"priority", rd_req_priority, 1, 0},
    {"rm", rd_req_rm, 1, 0},
    {"cancel", rd_req_cancel, 0, 0},
    {"shutdown", rd_req_shutdown, 0, 0},
    {"ls", rd_req_ls, 0, 0},
    {"grids", rd_req_grids, 0, 0},
    {"show", rd_req_show, 0, 0},
    {"status", rd_req_status, 0, 0},
    {"workers", rd_req_workers, 0, 0},
    {"logs", rd_req_logs, 0, 0},
    {"watch", rd_req_watch, 0, 0},
    {"table", rd_req_table, 0, 0},
    {"curves", rd_req_curves, 0, 0},
    {"metrics", rd_req_metrics, 0, 0},
    {"export", rd_req_export, 0, 0},
    {"sphere", rd_req_sphere, 0, 0},
};

int rd_handle_client(void *arg, rd_conn *c, const char *type, json_t *m)
{
    rd_daemon *d = arg;
    long long id = rw_msg_id(m);
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        if (strcmp(type, table[i].type) != 0)
            continue;
        if (table[i].records && rd_db_down(&d->store)) {
            char msg[1024];
            rd_db_down_msg(&d->store, msg, sizeof msg);
            rd_reply_error(c, id, RW_E_STATE, "cannot %s now: %s", type, msg);
        } else if (table[i].refused_stopping && d->life.shutting_down) {
            rd_reply_error(c, id, RW_E_STATE, "runawayd is shutting down");
        } else {
            table[i].fn(d, c, id, m);
        }
        return 0;
    }
    rd_reply_error(c, id, RW_E_UNKNOWN_TYPE, "unknown request '%s'", type);
    return -1;
}
