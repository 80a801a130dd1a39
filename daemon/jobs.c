/* The job and attempt state machine (jobs.h). The scheduler is FIFO
 * within priority, with backfill (scheduler.h); its decisions are carried
 * out here: an attempt recorded before its workers hear of it, a yielding
 * job stopped with a checkpoint. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/eta.h"
#include "daemon/jobs.h"
#include "daemon/scheduler.h"
#include "proto/msg.h"
#include "proto/spec.h"

static void stop_attempt(rd_jobs *d, int64_t job, const char *outcome);

void rd_attempt_set(rd_jobs *d, int64_t attempt, const char *outcome, const char *error)
{
    sqlite3_stmt *st = rd_db_prep(d->store, "UPDATE attempts SET outcome=?, ended=?, error=? WHERE id=? "
                                     "AND outcome='running'");
    if (!st)
        return;
    sqlite3_bind_text(st, 1, outcome, -1, SQLITE_TRANSIENT);
    sqlite3_bind_double(st, 2, rd_now());
    if (error)
        sqlite3_bind_text(st, 3, error, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, 3);
    sqlite3_bind_int64(st, 4, attempt);
    rd_db_write(d->store, st, 0);
}

void rd_job_set_state(rd_jobs *d, int64_t job, const char *state, const char *error,
                      const char *why)
{
    sqlite3_stmt *st = rd_db_prep(d->store, "UPDATE jobs SET state=?, error=?, finished=CASE WHEN ? IN "
                                     "('done','failed','cancelled','collapsed') THEN ? ELSE NULL END "
                                     "WHERE id=?");
    if (!st)
        return;
    sqlite3_bind_text(st, 1, state, -1, SQLITE_TRANSIENT);
    if (error)
        sqlite3_bind_text(st, 2, error, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, 2);
    sqlite3_bind_text(st, 3, state, -1, SQLITE_TRANSIENT);
    sqlite3_bind_double(st, 4, rd_now());
    sqlite3_bind_int64(st, 5, job);
    rd_db_write(d->store, st, 0);
    char ev[1200];
    snprintf(ev, sizeof ev, "state %s%s%s", state, error ? ": " : "", error ? error : "");
    rd_db_event(d->store, job, "state", ev);
    if (rd_db_down(d->store))
        rd_db_backlog_job(d->store, job); /* the rows say the old state until written */
    else
        rd_emit_job_state(d->ev, job, why);
}

int rd_job_is_running(rd_jobs *d, int64_t job)
{
    return rd_db_int(d->store, "SELECT state='running' FROM jobs WHERE id=?", job, 0) != 0;
}

/* The worker's drained attempt is over (or forgotten with its process). */
void rd_drain_end(rd_worker *w)
{
    w->drain_job = w->drain_attempt = 0;
    rd_run_free(w->drain_run);
    w->drain_run = NULL;
}

/* Told cancel_job for `attempt`: no new work until it reports the attempt's
 * end. What rank 0 reports until then is still the job's (the epochs its
 * last checkpoint will hold), so it takes over the attempt's TensorBoard
 * file from the run, which ends now. */
void rd_drain_begin(rd_jobs *d, rd_worker *w, int64_t job, int64_t attempt)
{
    rd_drain_end(w);
    w->drain_job = job;
    w->drain_attempt = attempt;
    rd_run *r = rd_run_find(d->runs, attempt);
    if (w->rank != 0 || !r || !(w->drain_run = calloc(1, sizeof *w->drain_run)))
        return;
    w->drain_run->job = job;
    w->drain_run->attempt = attempt;
    w->drain_run->world = r->world;
    w->drain_run->tb_path = r->tb_path;
    w->drain_run->tb_failed = r->tb_failed;
    w->drain_run->tb_retry = r->tb_retry;
    w->drain_run->tb_skipped = r->tb_skipped;
    w->drain_run->tb_first_step = r->tb_first_step;
    memcpy(w->drain_run->tb_first_kind, r->tb_first_kind, sizeof r->tb_first_kind);
    r->tb_path = NULL;
}

void rd_jobs_free(rd_jobs *d)
{
    for (int i = 0; i < d->pool->nworkers; i++)
        rd_drain_end(&d->pool->workers[i]);
    while (d->runs->list)
        rd_run_end(d->runs, d->runs->list->attempt);
}

/* ------------------------------------------------------------------------ */
/* The end of an attempt */

/* Frees every worker holding `job`; those other than `except` that are
 * still connected are told cancel_job and drain: no new work until they
 * report that attempt's end. The attempt's store goes. */
void rd_job_release(rd_jobs *d, int64_t job, int64_t attempt, rd_worker *except)
{
    for (int i = 0; i < d->pool->nworkers; i++) {
        rd_worker *w = &d->pool->workers[i];
        if (w->job != job)
            continue;
        /* shutting down: every worker was told stop, and stops on its own
         * (a rank 0 still writing its checkpoint must not be hurried) */
        if (w != except && w->conn && !d->life->shutting_down) {
            json_t *m = rw_msg_new("cancel_job", -1);
            json_object_set_new(m, "job", json_integer(job));
            rd_conn_send(w->conn, m);
            rd_drain_begin(d, w, job, w->attempt);
        }
        w->job = w->attempt = 0;
    }
    rd_run_end(d->runs, attempt);
}

/* The attempt cannot go on, but another may (a worker lost; a failure its
 * worker marks retry: a hang, a collective error behind a peer's death):
 * the other ranks are cancelled, the job requeued to resume from rank 0's
 * checkpoint, up to max_retries. */
void rd_attempt_lost(rd_jobs *d, int64_t job, int64_t attempt, rd_worker *except,
                     const char *outcome, const char *why)
{
    rd_job_release(d, job, attempt, except);
    rd_attempt_set(d, attempt, outcome, why);
    sqlite3_stmt *st = rd_db_prep(d->store, "SELECT state, lost FROM jobs WHERE id=?");
    char cur[16] = "";
    int lost = 0;
    if (st) {
        sqlite3_bind_int64(st, 1, job);
        if (sqlite3_step(st) == SQLITE_ROW) {
            snprintf(cur, sizeof cur, "%s", (const char *)sqlite3_column_text(st, 0));
            lost = sqlite3_column_int(st, 1);
        }
        sqlite3_finalize(st);
    }
    if (strcmp(cur, "running") != 0)
        return; /* cancelled meanwhile: stays so */
    rd_db_int(d->store, "UPDATE jobs SET lost=lost+1 WHERE id=? RETURNING lost", job, 0);
    char msg[1400];
    if (d->life->shutting_down) {
        rd_job_set_state(d, job, "queued", NULL, NULL);
    } else if (lost + 1 > d->max_retries) {
        snprintf(msg, sizeof msg, "%s; gave up after %d lost attempts", why, lost + 1);
        rd_job_set_state(d, job, "failed", msg, NULL);
    } else {
        snprintf(msg, sizeof msg, "%s; requeued (resumes from its checkpoint)", why);
        rd_db_event(d->store, job, "state", msg);
        rd_log("job j%lld: %s", (long long)job, msg);
        rd_job_set_state(d, job, "queued", NULL, msg);
    }
}

/* A rank finished its part (done, or gone after rank 0's result): once all
 * have, the attempt and the job are done. */
void rd_rank_finished(rd_jobs *d, rd_worker *w, rd_run *r)
{
    int64_t job = w->job, attempt = w->attempt;
    w->job = w->attempt = 0;
    if (r && ++r->ndone < r->world) {
        rd_log("job j%lld: rank %d finished; %d of %d", (long long)job, w->rank, r->ndone, r->world);
        return;
    }
    /* the collapse alarm ended it: a state of its own, with why */
    char *why = r && r->collapsed ? strdup(r->collapsed) : NULL;
    const char *state = why ? "collapsed" : "done";
    rd_attempt_set(d, attempt, state, NULL);
    rd_job_release(d, job, attempt, NULL);
    if (rd_job_is_running(d, job))
        rd_job_set_state(d, job, state, why, NULL);
    rd_log("job j%lld %s", (long long)job, state);
    free(why);
}

void rd_job_lost(rd_jobs *d, rd_worker *w, const char *why)
{
    rd_run *r = rd_run_find(d->runs, w->attempt);
    if (r && r->world > 1 && r->have_result && w->rank > 0) {
        /* rank 0 has the result: this rank's part was over */
        rd_rank_finished(d, w, r);
        return;
    }
    char msg[512];
    if (r && r->world > 1)
        snprintf(msg, sizeof msg, "rank %d (worker %d): %s", w->rank, w->slot, why);
    else
        snprintf(msg, sizeof msg, "%s", why);
    rd_attempt_lost(d, w->job, w->attempt, w, "lost", msg);
}

/* What the estimates of the time left need from the attempt's spec. */
static void run_spec_pace(rd_run *r, const char *yaml)
{
    rw_spec *spec = r && yaml ? malloc(sizeof *spec) : NULL;
    char err[512];
    if (spec && rw_spec_parse(yaml, strlen(yaml), "stored spec", "", spec, err, sizeof err) == 0) {
        r->epochs_spec = spec->optim.epochs;
        r->max_steps = spec->optim.max_steps;
    }
    free(spec);
}

/* The workers as the scheduler sees them (scheduler.h). A local worker between
 * processes is coming back, as a draining one is about to be free. */
static void sched_view(rd_jobs *d, rd_sched_worker *sw)
{
    for (int i = 0; i < d->pool->nworkers; i++) {
        rd_worker *w = &d->pool->workers[i];
        sw[i] = (rd_sched_worker){.device = w->device_index, .state = RD_W_OFF};
        if (w->dead || w->stopping || (!w->conn && w->remote))
            continue;
        if (!w->conn || w->conn->closing || w->drain_attempt) {
            sw[i].state = RD_W_DRAINING;
        } else if (w->job) {
            rd_run *r = rd_run_find(d->runs, w->attempt);
            sw[i].state = RD_W_BUSY;
            sw[i].job = w->job;
            sw[i].prio = rd_db_int(d->store, "SELECT priority FROM jobs WHERE id=?", w->job, 0);
            sw[i].backfill = r && r->backfill;
        } else {
            sw[i].state = RD_W_IDLE;
        }
    }
}

/* The queued jobs in the scheduler's order; NULL on a database error. */
static rd_sched_job *sched_queue(rd_jobs *d, int *n)
{
    *n = 0;
    sqlite3_stmt *st = rd_db_prep(d->store, "SELECT id, priority, devices FROM jobs WHERE "
                                     "state='queued' ORDER BY priority DESC, id");
    if (!st)
        return NULL;
    size_t cap = 16;
    rd_sched_job *q = malloc(cap * sizeof *q);
    while (q && sqlite3_step(st) == SQLITE_ROW) {
        if ((size_t)*n == cap) {
            rd_sched_job *nq = realloc(q, 2 * cap * sizeof *q);
            if (!nq) {
                free(q);
                q = NULL;
                break;
            }
            q = nq;
            cap *= 2;
        }
        rd_sched_job *j = &q[(*n)++];
        *j = (rd_sched_job){sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 1),
                            sqlite3_column_int(st, 2), 1};
        /* A worker still stopping an earlier attempt of this job may yet
         * write its checkpoint into the run folder: the next attempt starts
         * once it has stopped, so it never resumes from, or is overwritten
         * by, a checkpoint written behind its back. */
        for (int i = 0; i < d->pool->nworkers; i++)
            if (d->pool->workers[i].drain_job == j->id)
                j->ready = 0;
    }
    sqlite3_finalize(st);
    return q;
}

/* K, where the job's epochs 1..K all have a row, and the step of its
 * newest step row: a resumed attempt reports those of its checkpoint past
 * them again. A daemon killed (or stopped for good) while its database
 * took no writes never stored them, and the attempt resumes after them.
 * -1 if the database cannot say. */
static int64_t steps_stored(rd_store *d, int64_t job)
{
    return rd_db_int(d, "SELECT COALESCE(MAX(step), 0) FROM metrics WHERE job_id=? AND "
                        "kind='step'", job, -1);
}

static int64_t epochs_stored(rd_store *d, int64_t job)
{
    sqlite3_stmt *st = rd_db_prep(d, "SELECT DISTINCT epoch FROM metrics WHERE job_id=? AND "
                                     "kind='epoch' AND epoch >= 1 ORDER BY epoch");
    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, job);
    int64_t k = 0;
    while (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int64(st, 0) == k + 1)
        k++;
    sqlite3_finalize(st);
    return k;
}

/* Assigns `job` to the picked workers, rank by rank; `ahead_of`: the job it
 * goes ahead of (backfill), or 0. */
static void start_job(rd_jobs *d, int64_t job, rd_worker **pick, int np, int64_t ahead_of)
{
    sqlite3_stmt *st = rd_db_prep(d->store, "SELECT name, spec, attempts FROM jobs WHERE id=?");
    if (!st)
        return;
    sqlite3_bind_int64(st, 1, job);
    if (sqlite3_step(st) != SQLITE_ROW) {
        sqlite3_finalize(st);
        return;
    }
    json_t *name = json_string((const char *)sqlite3_column_text(st, 0));
    json_t *spec = json_string((const char *)sqlite3_column_text(st, 1));
    int attempts = sqlite3_column_int(st, 2);
    sqlite3_finalize(st);
    char wname[256];
    snprintf(wname, sizeof wname, "%d:%s", pick[0]->slot, pick[0]->device);
    int64_t attempt = rd_db_next_id(d->store, "attempts");
    st = attempt ? rd_db_prep(d->store, "INSERT INTO attempts(id, job_id, worker, started, outcome) "
                                 "VALUES(?,?,?,?,'running')")
                 : NULL;
    if (!st) {
        json_decref(name);
        json_decref(spec);
        return;
    }
    sqlite3_bind_int64(st, 1, attempt);
    sqlite3_bind_int64(st, 2, job);
    sqlite3_bind_text(st, 3, wname, -1, SQLITE_TRANSIENT);
    sqlite3_bind_double(st, 4, rd_now());
    rd_db_write(d->store, st, 0);
    rd_run *run = rd_run_new(d->runs, job, attempt, np); /* its rendezvous store */
    run_spec_pace(run, json_string_value(spec));
    if (run)
        run->backfill = ahead_of != 0;
    st = rd_db_prep(d->store, "UPDATE jobs SET state='running', attempts=attempts+1, "
                       "started=COALESCE(started, ?) WHERE id=?");
    if (st) {
        sqlite3_bind_double(st, 1, rd_now());
        sqlite3_bind_int64(st, 2, job);
        rd_db_write(d->store, st, 0);
    }
    /* recorded before the workers hear of it: what a worker does next is
     * never older than the record */
    char ev[400], ahead[96] = "";
    if (ahead_of)
        snprintf(ahead, sizeof ahead, ", ahead of j%lld, which waits for workers (it yields to it)",
                 (long long)ahead_of);
    snprintf(ev, sizeof ev, "attempt %lld on worker %s%s%s", (long long)attempt, wname,
             attempts > 0 ? " (resuming)" : "", ahead);
    rd_db_event(d->store, job, "state", ev);
    rd_log("job j%lld %s: %s", (long long)job, json_string_value(name), ev);
    char out[PATH_MAX + 64];
    snprintf(out, sizeof out, "%s/runs/%lld", d->state_dir, (long long)job);
    int64_t stored = attempts > 0 ? epochs_stored(d->store, job) : -1;
    int64_t stored_steps = attempts > 0 ? steps_stored(d->store, job) : -1;
    for (int r = 0; r < np; r++) {
        json_t *m = rw_msg_new("assign", -1);
        json_object_set_new(m, "job", json_integer(job));
        json_object_set_new(m, "attempt", json_integer(attempt));
        json_object_set(m, "name", name);
        json_object_set(m, "spec", spec);
        json_object_set_new(m, "out_dir", json_string(out));
        json_object_set_new(m, "resume", json_boolean(attempts > 0));
        if (stored >= 0 && stored_steps >= 0) {
            json_object_set_new(m, "epochs_stored", json_integer(stored));
            json_object_set_new(m, "steps_stored", json_integer(stored_steps));
        }
        json_object_set_new(m, "rank", json_integer(r));
        json_object_set_new(m, "world", json_integer(np));
        json_object_set_new(m, "threads", json_integer(d->pool->threads_per_worker));
        pick[r]->job = job;
        pick[r]->attempt = attempt;
        pick[r]->rank = r;
        rd_conn_send(pick[r]->conn, m);
    }
    json_decref(name);
    json_decref(spec);
    rd_emit_job_state(d->ev, job, ev);
}

/* Every worker of `job`'s attempt is told cancel_job (it stops after its
 * step, with a checkpoint) and drains; the attempt ends as `outcome`. */
static void stop_attempt(rd_jobs *d, int64_t job, const char *outcome)
{
    int64_t attempt = 0;
    for (int i = 0; i < d->pool->nworkers; i++) {
        rd_worker *w = &d->pool->workers[i];
        if (w->job == job) {
            attempt = w->attempt;
            rd_attempt_set(d, w->attempt, outcome, NULL);
            if (w->conn) {
                json_t *m = rw_msg_new("cancel_job", -1);
                json_object_set_new(m, "job", json_integer(job));
                rd_conn_send(w->conn, m);
                rd_drain_begin(d, w, job, w->attempt);
            }
            w->job = w->attempt = 0;
        }
    }
    if (attempt) /* after every rank: rank 0 takes its TensorBoard file from it */
        rd_run_end(d->runs, attempt);
}

void rd_schedule(rd_jobs *d)
{
    /* a job's start is recorded before its workers hear of it (its attempt
     * id comes from the database): none starts while it takes no writes */
    if (d->life->shutting_down || rd_db_down(d->store))
        return;
    /* each round starts a job or stops one: bounded by the workers */
    for (int round = 0; round < 2 * RD_WORKERS_MAX + 2; round++) {
        rd_sched_worker sw[RD_WORKERS_MAX];
        sched_view(d, sw);
        int nq;
        rd_sched_job *q = sched_queue(d, &nq);
        if (!q)
            return;
        rd_sched_action a;
        rd_sched_next(sw, d->pool->nworkers, q, nq, &a);
        if (a.kind == RD_SCHED_START) {
            rd_worker *pick[RD_SCHED_MAX_DEVICES];
            for (int k = 0; k < a.nworkers; k++)
                pick[k] = &d->pool->workers[a.workers[k]];
            int64_t ahead_of = 0;
            int ndev = a.backfill ? rd_pool_ndevices(d->pool) : 0;
            for (int k = 0; k < a.job && !ahead_of; k++)
                if (q[k].devices <= ndev)
                    ahead_of = q[k].id; /* the one that waits */
            start_job(d, q[a.job].id, pick, a.nworkers, ahead_of);
        } else if (a.kind == RD_SCHED_PREEMPT) {
            int need = 0;
            for (int k = 0; k < nq; k++)
                if (q[k].id == a.for_job)
                    need = q[k].devices;
            char ev[256];
            snprintf(ev, sizeof ev, "yields to j%lld, which needs %d worker%s: stops at its next "
                     "step with a checkpoint and resumes from it", (long long)a.for_job, need,
                     need == 1 ? "" : "s");
            rd_db_event(d->store, a.victim, "state", ev);
            rd_log("job j%lld %s", (long long)a.victim, ev);
            stop_attempt(d, a.victim, "preempted");
            rd_job_set_state(d, a.victim, "queued", NULL, ev);
        }
        free(q);
        if (a.kind == RD_SCHED_NONE)
            return;
    }
}

void rd_cancel_job(rd_jobs *d, int64_t job)
{
    stop_attempt(d, job, "cancelled");
    rd_job_set_state(d, job, "cancelled", "cancelled by user", NULL);
}

int rd_requeue_job(rd_jobs *d, int64_t job)
{
    if (!rd_db_int(d->store, "SELECT state IN ('failed','cancelled') FROM jobs WHERE id=?", job, 0))
        return 0;
    /* a fresh budget of retries; the result columns are empty for a job
     * that did not finish */
    sqlite3_stmt *st = rd_db_prep(d->store, "UPDATE jobs SET lost=0 WHERE id=?");
    if (!st)
        return 0;
    sqlite3_bind_int64(st, 1, job);
    rd_db_write(d->store, st, 0);
    rd_db_event(d->store, job, "state", "requeued by user (resumes from its checkpoint, if any)");
    rd_job_set_state(d, job, "queued", NULL, NULL);
    return 1;
}

int rd_job_busy(rd_jobs *d, int64_t job)
{
    for (int i = 0; i < d->pool->nworkers; i++)
        if (d->pool->workers[i].job == job || d->pool->workers[i].drain_job == job)
            return 1;
    return 0;
}

void rd_job_forget(rd_jobs *d, int64_t job)
{
    for (rd_run *r = d->runs->list, *next; r; r = next) {
        next = r->next;
        if (r->job == job)
            rd_run_end(d->runs, r->attempt);
    }
}

/* ------------------------------------------------------------------------ */
/* Time left */

/* How long a job of grid `gid` and `variant` runs, start to end: the mean
 * of its finished siblings that ran in one attempt, else the pace of a
 * running one times its epochs; siblings of the same variant first, then
 * any of the grid; -1. */
static double job_duration(rd_jobs *d, int64_t gid, const char *variant)
{
    for (int same = 1; same >= 0; same--) {
        /* of another variant, only one that trained (not the random
         * baseline's one pass) */
        sqlite3_stmt *st = rd_db_prep(d->store, "SELECT AVG(finished - started) FROM jobs j WHERE "
                                         "grid_id=?1 AND (?2 IS NULL OR variant=?2) AND "
                                         "state='done' AND attempts=1 AND finished >= started AND "
                                         "(?2 IS NOT NULL OR (SELECT MAX(epoch) FROM metrics m "
                                         "WHERE m.job_id=j.id AND m.kind='epoch') > 0)");
        if (!st)
            return -1;
        sqlite3_bind_int64(st, 1, gid);
        if (same)
            sqlite3_bind_text(st, 2, variant, -1, SQLITE_TRANSIENT);
        double v = -1;
        if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
            v = sqlite3_column_double(st, 0);
        sqlite3_finalize(st);
        if (v >= 0)
            return v;
        for (int i = 0; i < d->pool->nworkers; i++) {
            rd_worker *w = &d->pool->workers[i];
            rd_run *r = w->job && w->rank == 0 ? rd_run_find(d->runs, w->attempt) : NULL;
            if (!r || r->pace_s < 0 || r->epochs_total <= 0)
                continue;
            st = rd_db_prep(d->store, "SELECT grid_id=?1 AND (?2 IS NULL OR variant=?2) FROM jobs "
                               "WHERE id=?3");
            int match = 0;
            if (st) {
                sqlite3_bind_int64(st, 1, gid);
                if (same)
                    sqlite3_bind_text(st, 2, variant, -1, SQLITE_TRANSIENT);
                sqlite3_bind_int64(st, 3, r->job);
                match = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0);
                sqlite3_finalize(st);
            }
            if (match)
                return r->pace_s * r->epochs_total;
        }
    }
    return -1;
}

/* Training time a running job has left, in seconds; -1 unknown. */
static double job_left(rd_jobs *d, rd_worker *w)
{
    double now = rd_mono();
    rd_run *r = rd_run_find(d->runs, w->attempt);
    if (r && r->left_s >= 0) {
        double f = r->left_s - (now - r->left_at);
        return f > 0 ? f : 0;
    }
    /* no epoch reported yet: a whole run of its kind, less what it ran */
    sqlite3_stmt *st = rd_db_prep(d->store, "SELECT grid_id, variant FROM jobs WHERE id=?");
    double dur = -1;
    if (st) {
        sqlite3_bind_int64(st, 1, w->job);
        if (sqlite3_step(st) == SQLITE_ROW)
            dur = job_duration(d, sqlite3_column_int64(st, 0),
                               (const char *)sqlite3_column_text(st, 1));
        sqlite3_finalize(st);
    }
    if (dur < 0)
        return -1;
    double f = dur - (r ? now - r->t0 : 0);
    return f > 0 ? f : 0;
}

double rd_grid_left(rd_jobs *d, int64_t gid)
{
    rd_sched_worker sw[RD_WORKERS_MAX];
    sched_view(d, sw);
    size_t n = 0, cap = (size_t)d->pool->nworkers + 64;
    rd_eta_job *q = malloc(cap * sizeof *q);
    if (!q)
        return -1;
    /* the running jobs, once each (rank 0 holds its pace) */
    for (int i = 0; i < d->pool->nworkers; i++) {
        rd_worker *w = &d->pool->workers[i];
        if (sw[i].state != RD_W_BUSY || w->rank != 0)
            continue;
        rd_run *r = rd_run_find(d->runs, w->attempt);
        q[n++] = (rd_eta_job){.id = w->job, .prio = sw[i].prio, .devices = r ? r->world : 1,
                              .dur_s = job_left(d, w),
                              .grid = rd_db_int(d->store, "SELECT grid_id FROM jobs WHERE id=?", w->job, 0),
                              .running = 1};
    }
    sqlite3_stmt *st = rd_db_prep(d->store, "SELECT id, priority, grid_id, variant, devices FROM jobs "
                                     "WHERE state='queued'");
    if (!st) {
        free(q);
        return -1;
    }
    int failed = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        if (n == cap) {
            rd_eta_job *nq = realloc(q, 2 * cap * sizeof *q);
            if (!nq) {
                failed = 1;
                break;
            }
            q = nq;
            cap *= 2;
        }
        q[n++] = (rd_eta_job){.id = sqlite3_column_int64(st, 0), .prio = sqlite3_column_int64(st, 1),
                              .grid = sqlite3_column_int64(st, 2), .devices = sqlite3_column_int(st, 4)};
        q[n - 1].dur_s = job_duration(d, q[n - 1].grid, (const char *)sqlite3_column_text(st, 3));
    }
    sqlite3_finalize(st);
    double end = failed ? -1 : rd_eta_replay(sw, d->pool->nworkers, q, (int)n, gid);
    free(q);
    return end;
}
