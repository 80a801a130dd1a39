/* What happened, told to whoever listens: the store and the job state
 * machine emit, the watchers (watch.c) and --notify (notify.c) listen. So
 * the lower parts never call up into the parts that serve clients. */
#ifndef RUNAWAY_DAEMON_EVENTS_H
#define RUNAWAY_DAEMON_EVENTS_H

#include <jansson.h>
#include <stdint.h>

#define RD_LISTENERS_MAX 4

/* A job's state changed (its row says the new one); why: what moved it, or NULL */
typedef void (*rd_on_job_state)(void *arg, int64_t job, const char *why);
/* A new event row of a job (its log) */
typedef void (*rd_on_job_log)(void *arg, int64_t job, double t, const char *kind, const char *text);
/* A metric report or a collapse alarm of a job (kind "metric" or
 * "collapse"), as its watchers see it (borrowed) */
typedef void (*rd_on_job_metric)(void *arg, int64_t job, json_t *ev);
/* News of the daemon itself: event "db_down" or "db_up" (the database stopped
 * taking writes, or takes them again), with a line for people */
typedef void (*rd_on_daemon_news)(void *arg, const char *event, const char *text);

typedef struct rd_events {
    struct { rd_on_job_state fn; void *arg; } state[RD_LISTENERS_MAX];
    struct { rd_on_job_log fn; void *arg; } log[RD_LISTENERS_MAX];
    struct { rd_on_job_metric fn; void *arg; } metric[RD_LISTENERS_MAX];
    struct { rd_on_daemon_news fn; void *arg; } news[RD_LISTENERS_MAX];
    int nstate, nlog, nmetric, nnews;
} rd_events;

/* Listeners are called in the order they were added. */
void rd_events_on_job_state(rd_events *e, rd_on_job_state fn, void *arg);
void rd_events_on_job_log(rd_events *e, rd_on_job_log fn, void *arg);
void rd_events_on_job_metric(rd_events *e, rd_on_job_metric fn, void *arg);
void rd_events_on_daemon_news(rd_events *e, rd_on_daemon_news fn, void *arg);

void rd_emit_job_state(rd_events *e, int64_t job, const char *why);
void rd_emit_job_log(rd_events *e, int64_t job, double t, const char *kind, const char *text);
void rd_emit_job_metric(rd_events *e, int64_t job, json_t *ev);
void rd_emit_daemon_news(rd_events *e, const char *event, const char *text);

#endif
