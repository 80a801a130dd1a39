/* Client requests that read the daemon's state: grids, ls, show, status,
 * workers, and the streams that follow it (watch, logs --follow). */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/handlers.h"
#include "daemon/query.h"
#include "proto/msg.h"

/* The newest 200 grids, each with its progress. */
void rd_req_grids(rd_daemon *d, rd_conn *c, long long id, json_t *m)
{
    (void)m;
    json_t *rows = rd_query_rows(&d->store, "SELECT * FROM (SELECT id, name, priority, created FROM grids "
                                 "ORDER BY id DESC LIMIT 200) ORDER BY id", 0, 200);
    size_t i;
    json_t *v;
    json_array_foreach(rows, i, v)
        json_object_set_new(v, "progress",
                            rd_grid_progress(&d->jobs, json_integer_value(json_object_get(v, "id"))));
    json_t *r = rw_msg_new("ok", id);
    json_object_set_new(r, "grids", rows);
    rd_add_db_down(&d->store, r);
    rd_conn_send(c, r);
}

void rd_req_ls(rd_daemon *d, rd_conn *c, long long id, json_t *m)
{
    const char *gs = json_string_value(json_object_get(m, "grid"));
    int64_t gid = 0;
    if (gs && !(gid = rd_resolve_grid(&d->store, gs))) {
        rd_reply_error(c, id, RW_E_NOT_FOUND, "no grid '%s'", gs);
        return;
    }
    const char *state = json_string_value(json_object_get(m, "state"));
    if (state && strcmp(state, "queued") && strcmp(state, "running") && strcmp(state, "done") &&
        strcmp(state, "failed") && strcmp(state, "cancelled") && strcmp(state, "collapsed")) {
        rd_reply_error(c, id, RW_E_BAD_MESSAGE, "ls: state is queued, running, done, failed, "
                       "cancelled or collapsed, not '%s'", state);
        return;
    }
    /* the newest 500 jobs (of that state): a reply stays far below the
     * frame limit */
    sqlite3_stmt *st = rd_db_prep(
        &d->store, gid ? JOB_COLS_LS "WHERE j.grid_id=?1 AND (?2 IS NULL OR j.state=?2) ORDER BY j.id"
               : "SELECT * FROM (" JOB_COLS_LS "WHERE ?2 IS NULL OR j.state=?2 ORDER BY j.id "
                 "DESC LIMIT 500) ORDER BY id");
    if (st) {
        sqlite3_bind_int64(st, 1, gid);
        if (state)
            sqlite3_bind_text(st, 2, state, -1, SQLITE_TRANSIENT);
    }
    json_t *rows = rd_rows_of(st, gid ? 1000 : 500);
    json_t *r = rw_msg_new("ok", id);
    json_object_set_new(r, "jobs", rows);
    if (gid)
        json_object_set_new(r, "progress", rd_grid_progress(&d->jobs, gid));
    rd_add_db_down(&d->store, r);
    rd_conn_send(c, r);
}

/* The epochs of dir/snapshots/weights-eNNNNN.safetensors, ascending: what
 * `sphere --snapshots` picks from on another host. */
static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

static json_t *snapshot_epochs(const char *dir)
{
    char sd[PATH_MAX + 16];
    snprintf(sd, sizeof sd, "%s/snapshots", dir);
    DIR *dd = opendir(sd);
    int *all = NULL, e;
    size_t n = 0, cap = 0;
    struct dirent *de;
    char tail[8];
    while (dd && (de = readdir(dd))) {
        if (sscanf(de->d_name, "weights-e%d.safetenso%7s", &e, tail) != 2 || strcmp(tail, "rs"))
            continue;
        if (n == cap) {
            int *more = realloc(all, (cap = cap ? 2 * cap : 64) * sizeof *all);
            if (!more)
                break;
            all = more;
        }
        all[n++] = e;
    }
    if (dd)
        closedir(dd);
    if (n)
        qsort(all, n, sizeof *all, cmp_int);
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_integer(all[i]));
    free(all);
    return a;
}

void rd_req_show(rd_daemon *d, rd_conn *c, long long id, json_t *m)
{
    int64_t job = rd_job_arg(&d->store, c, id, m);
    if (!job)
        return;
    json_t *rows = rd_query_rows(&d->store, JOB_COLS "WHERE j.id=?1", job, 1);
    json_t *r = rw_msg_new("ok", id);
    json_t *jo = json_array_get(rows, 0);
    json_object_set_new(r, "job", json_incref(jo));
    json_decref(rows);
    json_t *spec = rd_query_rows(&d->store, "SELECT spec, result FROM jobs WHERE id=?1", job, 1);
    json_object_set(r, "spec", json_object_get(json_array_get(spec, 0), "spec"));
    json_object_set(r, "result", json_object_get(json_array_get(spec, 0), "result"));
    json_decref(spec);
    json_object_set_new(r, "attempts",
                        rd_query_rows(&d->store, "SELECT id, worker, started, ended, outcome, error FROM "
                                      "attempts WHERE job_id=?1 ORDER BY id", job, 100));
    char dir[PATH_MAX + 64];
    snprintf(dir, sizeof dir, "%s/runs/%lld", d->state_dir, (long long)job);
    json_object_set_new(r, "run_dir", json_string(dir));
    {
        /* its final weights' identity: a client that sees another file at
         * that path is on another host (sphere reads them) */
        char w[PATH_MAX + 96], version[96];
        struct stat st;
        snprintf(w, sizeof w, "%s/weights.safetensors", dir);
        if (stat(w, &st) == 0) {
            rw_file_version(&st, version, sizeof version);
            json_object_set_new(r, "weights_version", json_string(version));
        }
        json_object_set_new(r, "snapshots", snapshot_epochs(dir));
    }
    char tb[PATH_MAX];
    json_object_set_new(r, "tensorboard",
                        rd_tb_run_dir(&d->tb, job, tb, sizeof tb) == 0 ? json_string(tb) : json_null());
    /* a running job's place in its training, as its watchers see it */
    for (rd_run *run = d->runs.list; run; run = run->next) {
        if (run->job != job || run->epochs_total <= 0)
            continue;
        double left = run->left_s - (rd_mono() - run->left_at);
        json_object_set_new(r, "progress",
                            json_pack("{sIso}", "epochs", (json_int_t)run->epochs_total, "left_s",
                                      run->left_s < 0 ? json_null() : json_real(left > 0 ? left : 0)));
    }
    rd_conn_send(c, r);
}

void rd_req_logs(rd_daemon *d, rd_conn *c, long long id, json_t *m)
{
    int64_t job = rd_job_arg(&d->store, c, id, m);
    if (!job)
        return;
    json_int_t tail = json_integer_value(json_object_get(m, "tail"));
    if (tail <= 0)
        tail = 200;
    sqlite3_stmt *st = rd_db_prep(&d->store, "SELECT t, kind, text FROM (SELECT id, t, kind, text FROM "
                                     "events WHERE job_id=? ORDER BY id DESC LIMIT ?) ORDER BY id");
    json_t *lines = json_array();
    size_t bytes = 0;
    if (st) {
        sqlite3_bind_int64(st, 1, job);
        sqlite3_bind_int64(st, 2, tail);
        /* lines are at most 4 KiB; 512 KiB keeps the reply within a frame */
        while (bytes < 512 * 1024 && sqlite3_step(st) == SQLITE_ROW) {
            json_t *o = rd_row_json(st);
            bytes += (size_t)sqlite3_column_bytes(st, 2) + 64;
            json_array_append_new(lines, o);
        }
        sqlite3_finalize(st);
    }
    json_t *r = rw_msg_new("ok", id);
    json_object_set_new(r, "lines", lines);
    rd_conn_send(c, r);
    /* --follow: every later event of the job, until it has ended (the
     * loop is single-threaded: none falls between the tail and these) */
    if (json_is_true(json_object_get(m, "follow"))) {
        if (rd_target_ended(&d->store, 'j', job)) {
            rd_conn_send(c, rw_msg_new("watch_end", id));
            return;
        }
        rd_watch_add(&d->watch, c, id, 'j', job, 1);
    }
}

void rd_req_status(rd_daemon *d, rd_conn *c, long long id, json_t *m)
{
    (void)m;
    json_t *r = rw_msg_new("ok", id);
    json_object_set_new(r, "pid", json_integer(getpid()));
    json_object_set_new(r, "version", json_integer(RW_PROTO_VERSION));
    json_object_set_new(r, "state_dir", json_string(d->state_dir));
    json_object_set_new(r, "tensorboard", d->tb.dir[0] ? json_string(d->tb.dir) : json_null());
    if (d->notify.cmd)
        json_object_set_new(r, "notify", json_string(d->notify.cmd));
    json_object_set_new(r, "devices", json_integer(rd_pool_ndevices(&d->pool)));
    json_object_set_new(r, "workers", json_integer(d->pool.nworkers));
    json_object_set_new(r, "jobs", rd_query_rows(&d->store, "SELECT state, COUNT(*) AS n FROM jobs GROUP BY "
                                                 "state ORDER BY state", 0, 16));
    json_object_set_new(r, "shutting_down", json_boolean(d->life.shutting_down));
    rd_add_db_down(&d->store, r);
    rd_conn_send(c, r);
}

void rd_req_watch(rd_daemon *d, rd_conn *c, long long id, json_t *m)
{
    char kind;
    int64_t tid;
    if (rd_target_arg(&d->store, c, id, m, &kind, &tid) != 0)
        return;
    json_t *r = rw_msg_new("ok", id);
    json_object_set_new(r, "kind", json_string(kind == 'g' ? "grid" : "job"));
    json_object_set_new(r, "target", json_integer(tid));
    json_object_set_new(r, "jobs", rd_query_rows(&d->store, kind == 'g' ? JOB_COLS "WHERE j.grid_id=?1 ORDER BY j.id"
                                                               : JOB_COLS "WHERE j.id=?1",
                                              tid, 1000));
    rd_conn_send(c, r);
    if (rd_target_ended(&d->store, kind, tid)) {
        rd_conn_send(c, rw_msg_new("watch_end", id));
        return;
    }
    rd_watch_add(&d->watch, c, id, kind, tid, 0);
}

void rd_req_workers(rd_daemon *d, rd_conn *c, long long id, json_t *m)
{
    (void)m;
    json_t *r = rw_msg_new("ok", id);
    json_object_set_new(r, "workers", rd_pool_json(&d->pool));
    rd_conn_send(c, r);
}
