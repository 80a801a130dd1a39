/* The listeners of the daemon's events (events.h). */
#include "daemon/base.h"
#include "daemon/events.h"

/* Adds a listener to one of the lists; too many is a wiring bug, logged. */
#define ADD(list, n, f, a)                                                                        \
    do {                                                                                          \
        if ((n) < RD_LISTENERS_MAX) {                                                             \
            (list)[(n)].fn = (f);                                                                 \
            (list)[(n)++].arg = (a);                                                              \
        } else {                                                                                  \
            rd_log("events: too many listeners");                                                 \
        }                                                                                         \
    } while (0)

void rd_events_on_job_state(rd_events *e, rd_on_job_state fn, void *arg)
{
    ADD(e->state, e->nstate, fn, arg);
}

void rd_events_on_job_log(rd_events *e, rd_on_job_log fn, void *arg)
{
    ADD(e->log, e->nlog, fn, arg);
}

void rd_events_on_job_metric(rd_events *e, rd_on_job_metric fn, void *arg)
{
    ADD(e->metric, e->nmetric, fn, arg);
}

void rd_events_on_daemon_news(rd_events *e, rd_on_daemon_news fn, void *arg)
{
    ADD(e->news, e->nnews, fn, arg);
}

void rd_emit_job_state(rd_events *e, int64_t job, const char *why)
{
    for (int i = 0; i < e->nstate; i++)
        e->state[i].fn(e->state[i].arg, job, why);
}

void rd_emit_job_log(rd_events *e, int64_t job, double t, const char *kind, const char *text)
{
    for (int i = 0; i < e->nlog; i++)
        e->log[i].fn(e->log[i].arg, job, t, kind, text);
}

void rd_emit_job_metric(rd_events *e, int64_t job, json_t *ev)
{
    for (int i = 0; i < e->nmetric; i++)
        e->metric[i].fn(e->metric[i].arg, job, ev);
}

void rd_emit_daemon_news(rd_events *e, const char *event, const char *text)
{
    for (int i = 0; i < e->nnews; i++)
        e->news[i].fn(e->news[i].arg, event, text);
}
