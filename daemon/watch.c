/* Watchers (watch.h). A watcher that went away (its connection closed)
 * is dropped at the next event. */
#include <stdlib.h>
#include <string.h>

#include "daemon/query.h"
#include "daemon/watch.h"
#include "proto/msg.h"

/* The live subscriptions, the dead ones dropped on the way. */
static void prune(rd_watch *W)
{
    for (rd_watch_sub **p = &W->subs; *p;) {
        rd_watch_sub *s = *p;
        if (rd_conn_find(W->net, s->c, s->serial)) {
            p = &s->next;
            continue;
        }
        *p = s->next;
        free(s);
    }
}

void rd_watch_add(rd_watch *W, rd_conn *c, long long req, char kind, int64_t id, int logs)
{
    prune(W);
    rd_watch_sub *s = NULL;
    for (rd_watch_sub *o = W->subs; o && !s; o = o->next)
        if (o->c == c)
            s = o;
    if (!s) {
        if (!(s = calloc(1, sizeof *s))) {
            rd_conn_send(c, rw_msg_error(req, RW_E_INTERNAL, "watch: out of memory"));
            return;
        }
        s->c = c;
        s->serial = c->serial;
        s->next = W->subs;
        W->subs = s;
    }
    s->kind = kind;
    s->id = id;
    s->req = req;
    s->logs = logs;
    c->stream = 1; /* never idle while it follows */
}

/* An event of `job` to its watchers and those of its grid: a copy each,
 * answering their request; a log follower gets the job's state changes,
 * not its metrics. */
static void job_event(rd_watch *W, int64_t job, json_t *ev)
{
    int64_t grid = 0;
    prune(W);
    for (rd_watch_sub *s = W->subs; s; s = s->next) {
        if (s->kind == 'g' && !grid)
            grid = rd_db_int(W->jobs->store, "SELECT grid_id FROM jobs WHERE id=?", job, -1);
        if (s->logs && strcmp(json_string_value(json_object_get(ev, "kind")), "job"))
            continue;
        if ((s->kind == 'j' && s->id == job) || (s->kind == 'g' && s->id == grid)) {
            json_t *e = json_deep_copy(ev);
            json_object_set_new(e, "id", json_integer(s->req));
            rd_conn_send(s->c, e);
        }
    }
}

static void on_job_metric(void *arg, int64_t job, json_t *ev)
{
    job_event(arg, job, ev);
}

/* The job's row to its watchers (and where its grid stands, to the
 * grid's); then watch_end to those whose target has ended. */
static void on_job_state(void *arg, int64_t job, const char *why)
{
    rd_watch *W = arg;
    rd_store *st = W->jobs->store;
    json_t *rows = rd_query_rows(st, JOB_COLS "WHERE j.id=?1", job, 1);
    json_t *ev = rw_msg_new("event", -1);
    json_object_set_new(ev, "kind", json_string("job"));
    json_object_set_new(ev, "job", json_incref(json_array_get(rows, 0)));
    json_decref(rows);
    if (why) /* what moved it: an attempt's start, a requeue, a yield */
        json_object_set_new(ev, "why", json_string(why));
    int64_t grid = rd_db_int(st, "SELECT grid_id FROM jobs WHERE id=?", job, 0);
    int grid_watched = 0;
    prune(W);
    for (rd_watch_sub *s = W->subs; s; s = s->next)
        grid_watched |= s->kind == 'g' && s->id == grid;
    if (grid_watched)
        json_object_set_new(ev, "grid_progress", rd_grid_progress(W->jobs, grid));
    job_event(W, job, ev);
    json_decref(ev);
    for (rd_watch_sub **p = &W->subs; *p;) {
        rd_watch_sub *s = *p;
        if (!rd_target_ended(st, s->kind, s->id)) {
            p = &s->next;
            continue;
        }
        rd_conn_send(s->c, rw_msg_new("watch_end", s->req));
        s->c->stream = 0;
        *p = s->next;
        free(s);
    }
}

static void on_job_log(void *arg, int64_t job, double t, const char *kind, const char *text)
{
    rd_watch *W = arg;
    prune(W);
    for (rd_watch_sub *s = W->subs; s; s = s->next) {
        if (!s->logs || s->kind != 'j' || s->id != job)
            continue;
        json_t *e = rw_msg_new("event", s->req);
        json_object_set_new(e, "kind", json_string("log"));
        json_object_set_new(e, "line", json_pack("{sfssss}", "t", t, "kind", kind, "text", text));
        rd_conn_send(s->c, e);
    }
}

/* A line about the daemon itself (its database takes no writes, or does
 * again) to every watcher and log follower */
static void on_daemon_news(void *arg, const char *event, const char *text)
{
    rd_watch *W = arg;
    (void)event;
    prune(W);
    for (rd_watch_sub *s = W->subs; s; s = s->next) {
        json_t *e = rw_msg_new("event", s->req);
        json_object_set_new(e, "kind", json_string("daemon"));
        json_object_set_new(e, "text", json_string(text));
        rd_conn_send(s->c, e);
    }
}

void rd_watch_listen(rd_watch *W, rd_events *ev)
{
    rd_events_on_job_state(ev, on_job_state, W);
    rd_events_on_job_log(ev, on_job_log, W);
    rd_events_on_job_metric(ev, on_job_metric, W);
    rd_events_on_daemon_news(ev, on_daemon_news, W);
}

void rd_watch_free(rd_watch *W)
{
    while (W->subs) {
        rd_watch_sub *s = W->subs;
        W->subs = s->next;
        free(s);
    }
}
