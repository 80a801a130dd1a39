/* The running attempts (runs.h). */
#include <stdio.h>
#include <stdlib.h>

#include "daemon/runs.h"
#include "proto/msg.h"

rd_run *rd_run_find(rd_runs *rs, int64_t attempt)
{
    for (rd_run *r = rs->list; r; r = r->next)
        if (r->attempt == attempt)
            return r;
    return NULL;
}

rd_run *rd_run_new(rd_runs *rs, int64_t job, int64_t attempt, int world)
{
    rd_run *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->job = job;
    r->attempt = attempt;
    r->world = world;
    r->t0 = rd_mono();
    r->epoch0 = -1;
    r->pace_s = r->left_s = -1;
    r->next = rs->list;
    rs->list = r;
    return r;
}

void rd_kv_waiter_free(rd_kv_waiter *w)
{
    free(w->key);
    free(w);
}

void rd_run_free(rd_run *r)
{
    if (!r)
        return;
    free(r->tb_path);
    free(r->collapsed);
    free(r);
}

void rd_run_end(rd_runs *rs, int64_t attempt)
{
    for (rd_run **p = &rs->list; *p; p = &(*p)->next) {
        rd_run *r = *p;
        if (r->attempt != attempt)
            continue;
        *p = r->next;
        while (r->waiters) {
            rd_kv_waiter *w = r->waiters;
            r->waiters = w->next;
            char msg[96];
            snprintf(msg, sizeof msg, "kv_get: attempt %lld has ended", (long long)attempt);
            rd_conn_send(w->c, rw_msg_error(w->id, RW_E_STATE, msg));
            rd_kv_waiter_free(w);
        }
        while (r->kv) {
            rd_kv_entry *e = r->kv;
            r->kv = e->next;
            free(e->key);
            free(e->value);
            free(e);
        }
        rd_run_free(r);
        return;
    }
}
