/* Worker connections and their reports (wconn.h). */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/eta.h"
#include "daemon/kv.h"
#include "daemon/wconn.h"
#include "proto/msg.h"

int rd_wconn_hello(rd_wconn *W, rd_conn *c, json_t *m, char *err, size_t errlen)
{
    rd_pool *d = W->jobs->pool;
    json_t *sv = json_object_get(m, "slot");
    rd_worker *w = NULL;
    if (sv && !c->is_tcp) {
        json_int_t s = json_integer_value(sv);
        if (s < 0 || s >= d->nworkers || d->workers[s].remote) {
            snprintf(err, errlen, "hello: slot %lld is not one of this daemon's slots", (long long)s);
            return -1;
        }
        w = &d->workers[s];
        if (w->conn) {
            snprintf(err, errlen, "hello: slot %lld already has a connected worker", (long long)s);
            return -1;
        }
    } else {
        /* a worker started elsewhere (another host): a new remote slot */
        w = rd_pool_remote_slot(d, json_string_value(json_object_get(m, "device")));
        if (!w) {
            snprintf(err, errlen, "hello: too many workers");
            return -1;
        }
    }
    w->dead = 0;
    w->conn = c;
    c->peer = w;
    w->last_seen = rd_mono();
    w->job = w->attempt = 0;
    rd_drain_end(w);
    w->stopping = 0;
    const char *host = json_string_value(json_object_get(m, "host"));
    const char *be = json_string_value(json_object_get(m, "backend"));
    snprintf(w->host, sizeof w->host, "%s", host ? host : "?");
    snprintf(w->backend, sizeof w->backend, "%s", be ? be : "?");
    if (json_object_get(m, "pid"))
        w->pid = json_integer_value(json_object_get(m, "pid"));
    char ev[400];
    snprintf(ev, sizeof ev, "worker %d connected: host %s, device %s, backend %s, pid %lld", w->slot,
             w->host, w->device, w->backend, w->pid);
    rd_log("%s", ev);
    rd_db_event(d->store, 0, "worker", ev);
    if (d->life->shutting_down)
        rd_conn_send(c, rw_msg_new("stop", -1));
    return 0;
}

void rd_wconn_lost(rd_wconn *W, rd_conn *c)
{
    rd_worker *w = c->peer;
    if (!w)
        return;
    rd_jobs *d = W->jobs;
    rd_kv_purge_conn(d->runs, c);
    w->conn = NULL;
    c->peer = NULL;
    rd_drain_end(w);
    char ev[128];
    snprintf(ev, sizeof ev, "worker %d disconnected", w->slot);
    rd_log("%s", ev);
    if (w->job)
        rd_job_lost(d, w, "worker lost");
    if (w->remote)
        w->dead = 1;
    rd_schedule(d);
}

/* The worker's report must be about the assignment it holds now. */
static int current(rd_worker *w, json_t *m)
{
    return w->job && json_integer_value(json_object_get(m, "job")) == w->job &&
           json_integer_value(json_object_get(m, "attempt")) == w->attempt;
}

static void bind_num(sqlite3_stmt *st, int i, json_t *m, const char *k)
{
    double v = rw_json_get_num(m, k);
    if (isfinite(v))
        sqlite3_bind_double(st, i, v);
    else
        sqlite3_bind_null(st, i);
}

static void store_metric(rd_store *d, int64_t job, int64_t attempt, json_t *m, const char *kind)
{
    sqlite3_stmt *st = rd_db_prep(d, "INSERT INTO metrics(job_id, attempt_id, kind, epoch, step, "
                                     "loss, align, uniform, collapse, knn, pairs_per_s, tau, lr, "
                                     "rank, linear, w_cos_i, w_asym, alarm, t) "
                                     "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
    if (!st)
        return;
    sqlite3_bind_int64(st, 1, job);
    sqlite3_bind_int64(st, 2, attempt);
    sqlite3_bind_text(st, 3, kind, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 4, json_integer_value(json_object_get(m, "epoch")));
    sqlite3_bind_int64(st, 5, json_integer_value(json_object_get(m, "step")));
    const char *k[] = {"loss", "align", "uniform", "collapse", "knn", "pairs_per_s", "tau", "lr",
                       "rank", "linear", "w_cos_i", "w_asym", "alarm"};
    const int nk = (int)(sizeof k / sizeof *k);
    for (int i = 0; i < nk; i++)
        bind_num(st, 6 + i, m, k[i]);
    sqlite3_bind_double(st, 6 + nk, rd_now());
    rd_db_write(d, st, strcmp(kind, "final") != 0); /* a job's result is kept whatever it costs */
}

/* An epoch report of the attempt's: its pace, and the training time left
 * (with the epochs it will train) into the watchers' event. */
static void run_pace(rd_run *r, json_t *ev)
{
    json_int_t epoch = json_integer_value(json_object_get(ev, "epoch"));
    json_int_t step = json_integer_value(json_object_get(ev, "step"));
    if (epoch < 1)
        return;
    if (r->epoch0 < 0)
        r->epoch0 = (int)epoch - 1; /* resumed after epoch0 (or within the next) */
    double now = rd_mono();
    int done = (int)epoch - r->epoch0;
    r->epochs_total = rd_eta_epochs_total(r->epochs_spec, r->max_steps, step / epoch);
    r->left_s = rd_eta_job_left(now - r->t0, done, (int)epoch, r->epochs_total);
    r->left_at = now;
    r->pace_s = done > 0 ? (now - r->t0) / done : -1;
    json_object_set_new(ev, "epochs", json_integer(r->epochs_total));
    if (r->left_s >= 0)
        json_object_set_new(ev, "left_s", json_real(r->left_s));
}

/* A metric or log line of `attempt` (the worker's current one, or the one
 * it drains). */
static void report(rd_wconn *W, rd_worker *w, int64_t job, int64_t attempt, rd_run *run,
                   const char *type, json_t *m)
{
    rd_store *d = W->jobs->store;
    if (!strcmp(type, "log")) {
        const char *line = json_string_value(json_object_get(m, "line"));
        if (w->rank > 0) {
            char buf[RW_LINE_MAX + 32];
            snprintf(buf, sizeof buf, "rank %d: %s", w->rank, line);
            rd_db_event(d, job, "log", buf);
        } else {
            rd_db_event(d, job, "log", line);
        }
        return;
    }
    const char *kind = json_string_value(json_object_get(m, "kind"));
    if (!kind || (strcmp(kind, "step") && strcmp(kind, "epoch")) || w->rank != 0)
        return; /* rank 0 speaks for the job */
    store_metric(d, job, attempt, m, kind);
    /* TensorBoard too: the attempt's restart marker, at the first of them,
     * drops what an earlier attempt wrote from there (the same points,
     * unless the disk was full then) */
    rd_tb_metric(W->tb, run, kind, m);
    /* a report made again from a checkpoint (epochs_stored): the watchers
     * had it the first time, and it says nothing of this attempt's pace */
    if (json_is_true(json_object_get(m, "replay")))
        return;
    json_t *ev = json_deep_copy(m);
    if (!strcmp(kind, "epoch") && run && run->epochs_spec > 0)
        run_pace(run, ev);
    json_object_set_new(ev, "type", json_string("event"));
    json_object_set_new(ev, "metric", json_string(kind));
    json_object_set_new(ev, "kind", json_string("metric"));
    rd_emit_job_metric(W->jobs->ev, job, ev);
    json_decref(ev);
}

/* The collapse alarm of rank 0's epoch: a row of kind 'alarm' (its values,
 * and 1 warn or 2 stop), the job's log, TensorBoard's epoch/collapse_alarm
 * and an event to its watchers and --notify. A stop's end comes in `done`. */
static void collapse_alarm(rd_wconn *W, rd_worker *w, int64_t job, int64_t attempt, rd_run *run,
                           json_t *m)
{
    if (w->rank != 0)
        return;
    int stop = !strcmp(json_string_value(json_object_get(m, "action")), "stop");
    json_t *row = json_deep_copy(m);
    json_object_set_new(row, "alarm", json_integer(stop ? 2 : 1));
    store_metric(W->jobs->store, job, attempt, row, "alarm");
    rd_tb_metric(W->tb, run, "alarm", row);
    json_decref(row);
    char text[RW_LINE_MAX + 64];
    snprintf(text, sizeof text, "collapse alarm (%s): %s", stop ? "stop" : "warn",
             json_string_value(json_object_get(m, "why")));
    rd_db_event(W->jobs->store, job, "collapse", text);
    rd_log("job j%lld: %s", (long long)job, text);
    json_t *ev = json_deep_copy(m);
    json_object_set_new(ev, "type", json_string("event"));
    json_object_set_new(ev, "kind", json_string("collapse"));
    rd_emit_job_metric(W->jobs->ev, job, ev);
    json_decref(ev);
}

/* A drained worker's report of the attempt it was told to drop. */
static void drained(rd_jobs *J, rd_worker *w, const char *type, json_t *m)
{
    const char *e = json_string_value(json_object_get(m, "error"));
    char ev[RW_LINE_MAX + 160];
    snprintf(ev, sizeof ev, "attempt %lld: worker %d (rank %d) ended after cancel_job: %s%s%s",
             (long long)w->drain_attempt, w->slot, w->rank, type, e ? ": " : "", e ? e : "");
    rd_db_event(J->store, w->drain_job, "worker", ev);
    rd_log("%s", ev);
    /* a process replacing itself stays drained until its successor's hello */
    if (!json_is_true(json_object_get(m, "restart")))
        rd_drain_end(w);
}

void rd_wconn_message(rd_wconn *W, rd_conn *c, const char *type, json_t *m)
{
    rd_jobs *d = W->jobs;
    rd_worker *w = c->peer;
    if (!w)
        return;
    w->last_seen = rd_mono();
    if (!strcmp(type, "heartbeat")) {
        /* a heartbeat naming no job (or another): the drained attempt is over */
        json_t *hj = json_object_get(m, "job");
        if (w->drain_attempt && (!hj || json_integer_value(hj) != w->drain_job)) {
            rd_drain_end(w);
            rd_schedule(d);
        }
        return;
    }
    if (!strcmp(type, "kv_set") || !strcmp(type, "kv_get")) {
        rd_kv_request(d->runs, c, w, type, m);
        return;
    }
    if (!current(w, m)) {
        /* a late report of a job taken away (cancelled, requeued) */
        if (w->drain_attempt && json_integer_value(json_object_get(m, "job")) == w->drain_job &&
            json_integer_value(json_object_get(m, "attempt")) == w->drain_attempt) {
            if (!strcmp(type, "done") || !strcmp(type, "failed") || !strcmp(type, "stopped")) {
                drained(d, w, type, m);
                rd_schedule(d);
            } else if (!strcmp(type, "metric") || !strcmp(type, "log")) {
                /* epochs it finished before it heard cancel_job are in the
                 * checkpoint it writes as it stops: a resumed attempt
                 * starts after them, so they are recorded here or never */
                report(W, w, w->drain_job, w->drain_attempt, w->drain_run, type, m);
            }
        }
        return;
    }
    int64_t job = w->job, attempt = w->attempt;
    rd_run *run = rd_run_find(d->runs, attempt);
    int world = run ? run->world : 1;
    if (!strcmp(type, "metric") || !strcmp(type, "log")) {
        report(W, w, job, attempt, run, type, m);
    } else if (!strcmp(type, "collapse")) {
        collapse_alarm(W, w, job, attempt, run, m);
    } else if (!strcmp(type, "done")) {
        if (w->rank == 0) {
            store_metric(d->store, job, attempt, m, "final");
            rd_tb_metric(W->tb, run, "final", m);
            sqlite3_stmt *st = rd_db_prep(d->store, "UPDATE jobs SET linear_acc=?, align_last10=?, "
                                             "uniform_last10=?, result=? WHERE id=?");
            if (st) {
                bind_num(st, 1, m, "linear_acc");
                bind_num(st, 2, m, "align_last10");
                bind_num(st, 3, m, "uniform_last10");
                char *res = json_dumps(m, JSON_COMPACT | JSON_SORT_KEYS);
                sqlite3_bind_text(st, 4, res ? res : "{}", -1, SQLITE_TRANSIENT);
                free(res);
                sqlite3_bind_int64(st, 5, job);
                rd_db_write(d->store, st, 0);
            }
            if (run)
                run->have_result = 1;
            /* the collapse alarm ended it: the job ends collapsed */
            const char *why = json_string_value(json_object_get(m, "collapsed"));
            if (run && why && json_object_get(m, "collapsed_epoch")) {
                free(run->collapsed);
                run->collapsed = strdup(why);
            }
        }
        rd_rank_finished(d, w, run);
    } else if (!strcmp(type, "failed")) {
        const char *e = json_string_value(json_object_get(m, "error"));
        /* The worker says whether another attempt may go better (a hang, a
         * broken collective: a peer or the network); the job's own failures
         * (bad data, a loss that is not finite) would repeat on every rank
         * and every attempt. */
        int retry = json_is_true(json_object_get(m, "retry"));
        char why[RW_LINE_MAX + 64];
        if (world > 1)
            snprintf(why, sizeof why, "rank %d (worker %d) failed: %s", w->rank, w->slot, e);
        else
            snprintf(why, sizeof why, "%s", e);
        if (world > 1 && run->have_result && w->rank > 0) {
            rd_log("job j%lld: %s", (long long)job, why);
            rd_db_event(d->store, job, "worker", why);
            rd_rank_finished(d, w, run);
        } else if (retry) {
            rd_log("job j%lld: %s", (long long)job, why);
            rd_attempt_lost(d, job, attempt, w, "failed", why);
        } else {
            rd_attempt_set(d, attempt, "failed", why);
            rd_job_release(d, job, attempt, w); /* the other ranks are cancelled */
            if (rd_job_is_running(d, job))
                rd_job_set_state(d, job, "failed", why, NULL);
            rd_log("job j%lld failed: %s", (long long)job, why);
        }
        /* The process is replacing itself (its training thread hung): no
         * work until the new one says hello, as for a drained attempt. */
        if (json_is_true(json_object_get(m, "restart")) && w->conn)
            rd_drain_begin(d, w, job, attempt);
    } else if (!strcmp(type, "stopped")) {
        /* a worker's scheduler (Slurm's time limit or preemption) signalled
         * it: the attempt is preempted, the job resumes from its checkpoint */
        const char *sig = json_string_value(json_object_get(m, "preempted"));
        char why[160];
        if (sig)
            snprintf(why, sizeof why, "preempted: its worker %s got %s; resumes from its "
                     "checkpoint", w->device, sig);
        rd_attempt_set(d, attempt, sig ? "preempted" : "stopped", NULL);
        rd_job_release(d, job, attempt, w);
        if (rd_job_is_running(d, job))
            rd_job_set_state(d, job, "queued", NULL, sig ? why : NULL); /* resumes next time */
        if (sig) {
            rd_db_event(d->store, job, "state", why);
            rd_log("job j%lld %s", (long long)job, why);
            w->stopping = 1; /* it exits now: no new work (it would be lost) */
        }
    }
    if (!w->job)
        rd_schedule(d);
}

/* ------------------------------------------------------------------------ */
/* Heartbeats */

void rd_wconn_forgive(rd_wconn *W, double secs)
{
    rd_pool *p = W->jobs->pool;
    for (int i = 0; i < p->nworkers; i++)
        p->workers[i].last_seen += secs;
}

void rd_wconn_watchdog(rd_wconn *W, double now)
{
    rd_jobs *J = W->jobs;
    rd_pool *p = J->pool;
    for (int i = 0; i < p->nworkers; i++) {
        rd_worker *w = &p->workers[i];
        if (!w->conn)
            continue;
        /* any bytes count: a long frame still arriving is not silence */
        double last = fmax(w->last_seen, w->conn->last_read);
        if (now - last <= p->heartbeat_timeout_s)
            continue;
        char ev[160];
        snprintf(ev, sizeof ev, "worker %d: no heartbeat for %.0f s; killing it", w->slot,
                 now - last);
        rd_log("%s", ev);
        rd_db_event(J->store, w->job, "worker", ev);
        if (w->job)
            rd_job_lost(J, w, "worker stopped sending heartbeats");
        if (w->proc_alive)
            uv_process_kill(&w->proc, SIGKILL);
        rd_conn_close(w->conn);
    }
}
