/* runawayd --notify CMD: a shell command run when a grid ends (no job of
 * it queued or running), when a job fails for good, and when the collapse
 * alarm warns of a job or stops it, so that whoever submitted a grid of
 * many hours hears of it without watching (notify-send, mail, a chat
 * webhook through curl). What happened is in its environment:
 *
 *   RUNAWAY_EVENT       grid_end | job_failed | collapse_warning | job_collapsed
 *                       | db_down | db_up
 *   RUNAWAY_GRID, RUNAWAY_GRID_NAME            g3, its name
 *   RUNAWAY_DONE, RUNAWAY_FAILED, RUNAWAY_CANCELLED, RUNAWAY_COLLAPSED
 *                       grid_end: the grid's jobs by state
 *   RUNAWAY_JOB, RUNAWAY_JOB_NAME, RUNAWAY_ERROR      job_failed: the job, why
 *   RUNAWAY_JOB, RUNAWAY_JOB_NAME, RUNAWAY_EPOCH, RUNAWAY_TEXT
 *                       collapse_warning, job_collapsed: the job, the epoch
 *                       the alarm went off at, the thresholds crossed
 *   RUNAWAY_TEXT        db_down, db_up: the database stopped taking writes
 *                       (a full disk, a lock), or took them again
 *   RUNAWAY_STATE_DIR
 *
 * It runs detached, its output in the daemon's log; the daemon never waits
 * for it (at most RD_NOTIFY_MAX at once: past that, one is skipped, logged).
 * Each event runs it once: after the database was down, the jobs that
 * ended meanwhile are announced one after the other, and each of them
 * would find their grid ended. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/base.h"
#include "daemon/notify.h"
#include "proto/grid.h"
#include "proto/msg.h"

extern char **environ;

static void closed_cb(uv_handle_t *h)
{
    rd_notify_slot *s = h->data;
    s->busy = 0;
}

static void exit_cb(uv_process_t *p, int64_t status, int sig)
{
    rd_notify_slot *s = p->data;
    if (status != 0 || sig != 0)
        rd_log("notify: the command for %s exited with %lld%s%s", s->what, (long long)status,
               sig ? ", signal " : "", sig ? strsignal(sig) : "");
    uv_close((uv_handle_t *)p, closed_cb);
}

/* Whether `sig` was notified already; remembers it if not. */
static int seen(rd_notify *d, const char *sig)
{
    for (int i = 0; i < RD_NOTIFY_SEEN; i++)
        if (!strcmp(d->seen[i], sig))
            return 1;
    snprintf(d->seen[d->next], sizeof d->seen[0], "%s", sig);
    d->next = (d->next + 1) % RD_NOTIFY_SEEN;
    return 0;
}

/* Adds NAME=value to env (n entries so far, NULL-terminated after). */
static void env_add(char **env, int *n, const char *name, const char *value)
{
    size_t len = strlen(name) + strlen(value) + 2;
    char *e = malloc(len);
    if (!e)
        return;
    snprintf(e, len, "%s=%s", name, value);
    env[(*n)++] = e;
    env[*n] = NULL;
}

static void spawn(rd_notify *d, const char *what, const char *const *vars, int nvars)
{
    rd_notify_slot *s = NULL;
    for (int i = 0; i < RD_NOTIFY_MAX && !s; i++)
        if (!d->slots[i].busy)
            s = &d->slots[i];
    if (!s) {
        rd_log("notify: %d commands still running: %s not notified", RD_NOTIFY_MAX, what);
        return;
    }
    size_t nenv = 0;
    while (environ[nenv])
        nenv++;
    /* ours first: they win over any inherited of the same name */
    char **env = calloc(nenv + (size_t)nvars + 2, sizeof *env);
    int n = 0;
    if (!env) {
        rd_log("notify: out of memory: %s not notified", what);
        return;
    }
    for (int i = 0; i + 1 < nvars; i += 2)
        env_add(env, &n, vars[i], vars[i + 1]);
    int ours = n;
    for (size_t i = 0; i < nenv; i++)
        if (strncmp(environ[i], "RUNAWAY_", 8) != 0)
            env[n++] = environ[i];
    env[n] = NULL;
    char *args[] = {"/bin/sh", "-c", (char *)d->cmd, NULL};
    uv_stdio_container_t io[3] = {{.flags = UV_IGNORE},
                                  {.flags = UV_INHERIT_FD, .data.fd = 1},
                                  {.flags = UV_INHERIT_FD, .data.fd = 2}};
    uv_process_options_t o = {.exit_cb = exit_cb, .file = args[0], .args = args, .env = env,
                              .stdio_count = 3, .stdio = io, .flags = UV_PROCESS_DETACHED};
    memset(&s->proc, 0, sizeof s->proc);
    snprintf(s->what, sizeof s->what, "%s", what);
    s->proc.data = s;
    int rc = uv_spawn(d->loop, &s->proc, &o);
    if (rc == 0) {
        s->busy = 1;
        uv_unref((uv_handle_t *)&s->proc); /* shutdown does not wait for it */
    } else {
        rd_log("notify: cannot run /bin/sh for %s: %s", what, uv_strerror(rc));
        s->busy = 1;
        uv_close((uv_handle_t *)&s->proc, closed_cb);
    }
    for (int i = 0; i < ours; i++)
        free(env[i]);
    free(env);
}

static void text_col(rd_notify *d, const char *sql, int64_t id, char *out, size_t len)
{
    sqlite3_stmt *st = rd_db_prep(d->store, sql);
    out[0] = 0;
    if (!st)
        return;
    sqlite3_bind_int64(st, 1, id);
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
        snprintf(out, len, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
}

static void on_daemon_news(void *arg, const char *event, const char *text)
{
    rd_notify *d = arg;
    if (!d->cmd || !event)
        return;
    const char *v[] = {"RUNAWAY_EVENT", event, "RUNAWAY_TEXT", text, "RUNAWAY_STATE_DIR",
                       d->state_dir};
    spawn(d, event, v, (int)(sizeof v / sizeof *v));
}

/* The collapse alarm of `job` at `epoch` (collapse_warning, job_collapsed):
 * once each. */
static void collapse_news(rd_notify *d, const char *event, int64_t job, long long epoch,
                          const char *text)
{
    char sig[64], what[96], j[32], g[32], e[24], jname[RW_JOB_NAME_MAX], gname[RW_NAME_MAX + 8];
    snprintf(sig, sizeof sig, "%s j%lld:%lld", event, (long long)job, epoch);
    if (seen(d, sig))
        return;
    int64_t grid = rd_db_int(d->store, "SELECT grid_id FROM jobs WHERE id=?", job, 0);
    text_col(d, "SELECT name FROM jobs WHERE id=?", job, jname, sizeof jname);
    text_col(d, "SELECT name FROM grids WHERE id=?", grid, gname, sizeof gname);
    snprintf(j, sizeof j, "j%lld", (long long)job);
    snprintf(g, sizeof g, "g%lld", (long long)grid);
    snprintf(e, sizeof e, "%lld", epoch);
    snprintf(what, sizeof what, "%s %s", event, j);
    const char *v[] = {"RUNAWAY_EVENT", event, "RUNAWAY_JOB", j, "RUNAWAY_JOB_NAME", jname,
                       "RUNAWAY_GRID", g, "RUNAWAY_GRID_NAME", gname, "RUNAWAY_EPOCH", e,
                       "RUNAWAY_TEXT", text, "RUNAWAY_STATE_DIR", d->state_dir};
    spawn(d, what, v, (int)(sizeof v / sizeof *v));
}

/* A job's watchers' event: the collapse alarm's warning (a stop is told
 * once the job has ended collapsed). */
static void on_job_metric(void *arg, int64_t job, json_t *ev)
{
    rd_notify *d = arg;
    const char *kind = json_string_value(json_object_get(ev, "kind"));
    const char *action = json_string_value(json_object_get(ev, "action"));
    if (!d->cmd || !kind || strcmp(kind, "collapse") || !action || strcmp(action, "warn"))
        return;
    collapse_news(d, "collapse_warning", job, json_integer_value(json_object_get(ev, "epoch")),
                  json_string_value(json_object_get(ev, "why")));
}

/* After a job's state changed: a job failed for good or collapsed, its
 * grid's end. */
static void on_job_state(void *arg, int64_t job, const char *why)
{
    rd_notify *d = arg;
    (void)why;
    if (!d->cmd)
        return;
    char state[16], jname[RW_JOB_NAME_MAX], gname[RW_NAME_MAX + 8], error[RW_LINE_MAX],
        attempts[24], finished[48];
    text_col(d, "SELECT state FROM jobs WHERE id=?", job, state, sizeof state);
    int64_t grid = rd_db_int(d->store, "SELECT grid_id FROM jobs WHERE id=?", job, 0);
    if (!grid || (strcmp(state, "done") && strcmp(state, "failed") && strcmp(state, "cancelled") &&
                  strcmp(state, "collapsed")))
        return;
    if (!strcmp(state, "collapsed")) {
        text_col(d, "SELECT error FROM jobs WHERE id=?", job, error, sizeof error);
        collapse_news(d, "job_collapsed", job,
                      rd_db_int(d->store, "SELECT json_extract(result, '$.collapsed_epoch') "
                                          "FROM jobs WHERE id=?", job, 0),
                      error);
    }
    text_col(d, "SELECT name FROM jobs WHERE id=?", job, jname, sizeof jname);
    text_col(d, "SELECT name FROM grids WHERE id=?", grid, gname, sizeof gname);
    char g[32], j[32], done[24], failed[24], cancelled[24], collapsed[24];
    snprintf(g, sizeof g, "g%lld", (long long)grid);
    snprintf(j, sizeof j, "j%lld", (long long)job);
    snprintf(done, sizeof done, "%lld",
             (long long)rd_db_int(d->store, "SELECT COUNT(*) FROM jobs WHERE grid_id=? AND state='done'",
                                  grid, 0));
    snprintf(failed, sizeof failed, "%lld",
             (long long)rd_db_int(d->store, "SELECT COUNT(*) FROM jobs WHERE grid_id=? AND "
                                     "state='failed'", grid, 0));
    snprintf(cancelled, sizeof cancelled, "%lld",
             (long long)rd_db_int(d->store, "SELECT COUNT(*) FROM jobs WHERE grid_id=? AND "
                                     "state='cancelled'", grid, 0));
    snprintf(collapsed, sizeof collapsed, "%lld",
             (long long)rd_db_int(d->store, "SELECT COUNT(*) FROM jobs WHERE grid_id=? AND "
                                     "state='collapsed'", grid, 0));
    char sig[64], what[96];
    if (!strcmp(state, "failed")) {
        text_col(d, "SELECT error FROM jobs WHERE id=?", job, error, sizeof error);
        text_col(d, "SELECT attempts FROM jobs WHERE id=?", job, attempts, sizeof attempts);
        snprintf(sig, sizeof sig, "j%lld:%s", (long long)job, attempts);
        snprintf(what, sizeof what, "job_failed %s", j);
        if (!seen(d, sig)) {
            const char *v[] = {"RUNAWAY_EVENT", "job_failed", "RUNAWAY_JOB", j,
                               "RUNAWAY_JOB_NAME", jname, "RUNAWAY_ERROR", error,
                               "RUNAWAY_GRID", g, "RUNAWAY_GRID_NAME", gname,
                               "RUNAWAY_STATE_DIR", d->state_dir};
            spawn(d, what, v, (int)(sizeof v / sizeof *v));
        }
    }
    if (rd_db_int(d->store, "SELECT COUNT(*) FROM jobs WHERE grid_id=? AND state IN ('queued', "
                     "'running')", grid, 1) != 0)
        return;
    /* the grid's newest end: a requeued grid that ends again is news again */
    text_col(d, "SELECT MAX(finished) FROM jobs WHERE grid_id=?", grid, finished, sizeof finished);
    snprintf(sig, sizeof sig, "g%lld:%s", (long long)grid, finished);
    snprintf(what, sizeof what, "grid_end %s", g);
    if (seen(d, sig))
        return;
    const char *v[] = {"RUNAWAY_EVENT", "grid_end", "RUNAWAY_GRID", g, "RUNAWAY_GRID_NAME", gname,
                       "RUNAWAY_DONE", done, "RUNAWAY_FAILED", failed, "RUNAWAY_CANCELLED",
                       cancelled, "RUNAWAY_COLLAPSED", collapsed, "RUNAWAY_STATE_DIR",
                       d->state_dir};
    spawn(d, what, v, (int)(sizeof v / sizeof *v));
}

void rd_notify_listen(rd_notify *N, rd_events *ev)
{
    rd_events_on_job_state(ev, on_job_state, N);
    rd_events_on_job_metric(ev, on_job_metric, N);
    rd_events_on_daemon_news(ev, on_daemon_news, N);
}
