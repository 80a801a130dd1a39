/* rm: ended jobs out of the database and off the disk.
 *
 * All or nothing for the rows: a request naming a job that is queued,
 * running, or whose worker still stops it (and may yet write a checkpoint)
 * removes nothing. Otherwise one transaction takes the jobs, their attempts,
 * metrics and events, and the grid with its last job; then their run
 * folders and TensorBoard runs go, on libuv's thread pool: a tree of
 * checkpoints and snapshots on a slow (network) file system takes as long
 * as it takes without holding up heartbeats, metrics and other requests.
 * The reply is sent when the files are gone. The database is the record: a
 * file that cannot be removed is named in the reply, and the rows stay
 * removed. Ids are never given again (db.c, high_water), so a removed job's
 * folders never come to name another job, and nothing else writes in them
 * while they go. */
#define _GNU_SOURCE /* nftw */
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "daemon/remove.h"
#include "proto/msg.h"

#define BUSY_NAMED 10  /* jobs named in a refusal; the rest are counted */
#define ERRORS_MAX 50  /* files named in a reply; the rest are counted */

/* The removal in progress on this thread: nftw passes no context to its
 * callback, and two removals may run on two pool threads at once. */
static __thread json_t *errors;
static __thread size_t errors_dropped, tree_start; /* errors before this tree's */

static void failed(const char *path, int err)
{
    if (json_array_size(errors) >= ERRORS_MAX) {
        errors_dropped++;
        return;
    }
    char msg[PATH_MAX + 128];
    snprintf(msg, sizeof msg, "%s: %s", path, strerror(err));
    json_t *s = json_string(msg);
    if (!s) { /* jansson refuses a name that is not UTF-8 */
        snprintf(msg, sizeof msg, "(a name not valid UTF-8): %s", strerror(err));
        s = json_string(msg);
    }
    json_array_append_new(errors, s);
}

static size_t nerrors(void) { return json_array_size(errors) + errors_dropped; }

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    /* depth first: a folder comes after its entries; a symbolic link is
     * removed itself, never followed (FTW_PHYS) */
    int rc = flag == FTW_DP || flag == FTW_DNR ? rmdir(path) : unlink(path);
    /* a folder left with what could not be removed in it says nothing new */
    if (rc != 0 && errno != ENOENT && !(errno == ENOTEMPTY && nerrors() > tree_start))
        failed(path, errno);
    return 0; /* go on: remove what can be removed */
}

/* path and everything below it on its file system. 1: removed; 0: it was
 * not there; -1: something stays (named in errors). */
static int remove_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0) {
        if (errno == ENOENT)
            return 0;
        failed(path, errno);
        return -1;
    }
    tree_start = nerrors();
    if (nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT) != 0 &&
        nerrors() == tree_start)
        failed(path, errno);
    return nerrors() == tree_start ? 1 : -1;
}

/* The folders above a TensorBoard run, as they become empty, up to the
 * TensorBoard root, which stays: a removed grid leaves no gID-NAME. */
static void remove_empty_parents(rd_tboard *tb, const char *run, json_t *removed)
{
    size_t root = strlen(tb->dir);
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s", run);
    if (strncmp(p, tb->dir, root) != 0 || p[root] != '/')
        return;
    for (char *slash; (slash = strrchr(p, '/')) && (size_t)(slash - p) > root;) {
        *slash = '\0';
        if (rmdir(p) == 0) {
            json_array_append_new(removed, json_string(p));
        } else if (errno != ENOENT) {
            if (errno != ENOTEMPTY && errno != EEXIST)
                failed(p, errno);
            return;
        }
    }
}

/* Only the topmost of the removed folders: a grid's folder, not each run. */
static json_t *topmost(json_t *paths)
{
    json_t *out = json_array();
    size_t i, k;
    json_t *p, *q;
    json_array_foreach(paths, i, p)
    {
        const char *s = json_string_value(p);
        int under = 0;
        json_array_foreach(paths, k, q)
        {
            size_t n = json_string_length(q);
            under |= k != i && !strncmp(s, json_string_value(q), n) && s[n] == '/';
        }
        if (!under)
            json_array_append(out, p);
    }
    json_decref(paths);
    return out;
}

/* A DELETE with ?1 bound; rows deleted, or -1. */
static int64_t delete_rows(rd_store *d, const char *sql, int64_t arg)
{
    sqlite3_stmt *st = rd_db_prep(d, sql);
    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, arg);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? sqlite3_changes64(d->db) : -1;
}

/* One rm whose rows are gone and whose folders go on a pool thread. */
typedef struct {
    uv_work_t req;
    rd_net *net;
    rd_tboard *tb;
    rd_conn *c; /* the asker, if still connected (found again by serial) */
    uint64_t serial;
    long long id;
    size_t n;
    char (*runs)[PATH_MAX + 64], (*tbs)[PATH_MAX]; /* tbs[i][0] == 0: none */
    int *run_gone, *tb_gone;
    json_t *reply, *errors;
    size_t errors_dropped;
} removal;

static void removal_free(removal *r)
{
    free(r->runs);
    free(r->tbs);
    free(r->run_gone);
    free(r->tb_gone);
    json_decref(r->reply);
    json_decref(r->errors);
    free(r);
}

/* For tests: the removal waits (at most a minute) until this file exists,
 * so a test can see the daemon serve while a removal is under way. */
static void test_gate(void)
{
    const char *gate = getenv("RUNAWAYD_TEST_RM_GATE");
    struct stat st;
    for (int i = 0; gate && gate[0] && i < 6000 && stat(gate, &st) != 0; i++)
        nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
}

static void work_cb(uv_work_t *req)
{
    removal *r = req->data;
    test_gate();
    errors = r->errors;
    errors_dropped = 0;
    for (size_t i = 0; i < r->n; i++) {
        r->run_gone[i] = remove_tree(r->runs[i]) == 1;
        r->tb_gone[i] = r->tbs[i][0] && remove_tree(r->tbs[i]) == 1;
    }
    r->errors_dropped = errors_dropped;
    errors = NULL;
}

static void after_work_cb(uv_work_t *req, int status)
{
    removal *r = req->data;
    (void)status; /* never cancelled: the pool runs every removal it was given */
    errors = r->errors;
    errors_dropped = r->errors_dropped;
    json_t *runs = json_array(), *tbs = json_array();
    for (size_t i = 0; i < r->n; i++) {
        if (r->run_gone[i])
            json_array_append_new(runs, json_string(r->runs[i]));
        if (r->tb_gone[i])
            json_array_append_new(tbs, json_string(r->tbs[i]));
        /* on the loop's thread, where TensorBoard makes its folders: a
         * folder made for another run between the two is never taken */
        if (r->tbs[i][0])
            remove_empty_parents(r->tb, r->tbs[i], tbs);
    }
    json_object_set_new(r->reply, "runs", runs);
    json_object_set_new(r->reply, "tensorboard", topmost(tbs));
    json_object_set(r->reply, "errors", errors);
    json_object_set_new(r->reply, "errors_more", json_integer((json_int_t)errors_dropped));
    errors = NULL;
    rd_conn *c = rd_conn_find(r->net, r->c, r->serial);
    if (c) {
        json_t *m = rw_msg_new("ok", r->id);
        json_object_update(m, r->reply);
        rd_conn_send(c, m);
    }
    rd_conn_undefer(c);
    removal_free(r);
}

int rd_remove(rd_jobs *J, rd_tboard *tb, rd_conn *asker, long long req_id, char kind,
              int64_t target, const char **code, char *err, size_t errlen)
{
    rd_store *d = J->store;
    char tname[32];
    snprintf(tname, sizeof tname, "%c%lld", kind, (long long)target);
    sqlite3_stmt *st = rd_db_prep(d, kind == 'g' ? "SELECT id, state, grid_id, name FROM jobs "
                                                   "WHERE grid_id=? ORDER BY id"
                                                 : "SELECT id, state, grid_id, name FROM jobs "
                                                   "WHERE id=?");
    if (!st) {
        *code = RW_E_INTERNAL;
        snprintf(err, errlen, "rm %s: %s", tname, sqlite3_errmsg(d->db));
        return -1;
    }
    sqlite3_bind_int64(st, 1, target);
    int64_t *ids = NULL, grid = kind == 'g' ? target : 0;
    size_t n = 0, cap = 0, nbusy = 0, nlive = 0;
    char busy[1024] = "", name[300] = "";
    while (sqlite3_step(st) == SQLITE_ROW) {
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            int64_t *p = realloc(ids, cap * sizeof *ids);
            if (!p) {
                sqlite3_finalize(st);
                free(ids);
                *code = RW_E_INTERNAL;
                snprintf(err, errlen, "rm %s: out of memory", tname);
                return -1;
            }
            ids = p;
        }
        int64_t job = sqlite3_column_int64(st, 0);
        const char *state = (const char *)sqlite3_column_text(st, 1);
        ids[n++] = job;
        if (kind == 'j') {
            grid = sqlite3_column_int64(st, 2);
            snprintf(name, sizeof name, "%s", (const char *)sqlite3_column_text(st, 3));
        }
        int live = !strcmp(state, "queued") || !strcmp(state, "running");
        if (!live && !rd_job_busy(J, job))
            continue;
        nlive += live;
        if (nbusy++ < BUSY_NAMED) {
            size_t o = strlen(busy);
            snprintf(busy + o, sizeof busy - o, "%sj%lld is %s", o ? ", " : "", (long long)job,
                     live ? state : "still stopping");
        }
    }
    sqlite3_finalize(st);
    if (nbusy) {
        free(ids);
        *code = RW_E_STATE;
        if (nbusy > BUSY_NAMED) {
            size_t o = strlen(busy);
            snprintf(busy + o, sizeof busy - o, ", and %zu more", nbusy - BUSY_NAMED);
        }
        if (nlive)
            snprintf(err, errlen, "rm %s: nothing removed: only ended jobs are removed, and %s; "
                     "cancel first (runaway cancel %s)", tname, busy, tname);
        else
            snprintf(err, errlen, "rm %s: nothing removed: only ended jobs are removed, and %s; "
                     "try again once %s stopped", tname, busy, nbusy == 1 ? "it has" : "they have");
        return -1;
    }
    if (kind == 'g') {
        st = rd_db_prep(d, "SELECT name FROM grids WHERE id=?");
        if (st) {
            sqlite3_bind_int64(st, 1, grid);
            if (sqlite3_step(st) == SQLITE_ROW)
                snprintf(name, sizeof name, "%s", (const char *)sqlite3_column_text(st, 0));
            sqlite3_finalize(st);
        }
    }

    /* the folders are named by the rows: found before those go */
    removal *r = calloc(1, sizeof *r);
    if (r) {
        r->runs = calloc(n ? n : 1, sizeof *r->runs);
        r->tbs = calloc(n ? n : 1, sizeof *r->tbs);
        r->run_gone = calloc(n ? n : 1, sizeof *r->run_gone);
        r->tb_gone = calloc(n ? n : 1, sizeof *r->tb_gone);
        r->reply = json_object();
        r->errors = json_array();
    }
    if (!r || !r->runs || !r->tbs || !r->run_gone || !r->tb_gone || !r->reply || !r->errors) {
        if (r)
            removal_free(r);
        free(ids);
        *code = RW_E_INTERNAL;
        snprintf(err, errlen, "rm %s: nothing removed: out of memory", tname);
        return -1;
    }
    r->net = asker->net;
    r->tb = tb;
    r->c = asker;
    r->serial = asker->serial;
    r->id = req_id;
    r->n = n;
    r->req.data = r;
    for (size_t i = 0; i < n; i++) {
        snprintf(r->runs[i], sizeof r->runs[i], "%s/runs/%lld", J->state_dir, (long long)ids[i]);
        if (rd_tb_run_dir(tb, ids[i], r->tbs[i], sizeof r->tbs[i]) != 0)
            r->tbs[i][0] = '\0';
    }

    const char *sel = kind == 'g' ? "SELECT id FROM jobs WHERE grid_id=?1" : "SELECT ?1";
    char sql[4][160];
    snprintf(sql[0], sizeof sql[0], "DELETE FROM metrics WHERE job_id IN (%s)", sel);
    snprintf(sql[1], sizeof sql[1], "DELETE FROM events WHERE job_id IN (%s)", sel);
    snprintf(sql[2], sizeof sql[2], "DELETE FROM attempts WHERE job_id IN (%s)", sel);
    snprintf(sql[3], sizeof sql[3], "DELETE FROM jobs WHERE id IN (%s)", sel);
    int64_t nmetrics = -1, njobs = -1, ngrids = -1;
    int ok = rd_db_exec(d, "BEGIN") == 0;
    ok = ok && (nmetrics = delete_rows(d, sql[0], target)) >= 0;
    ok = ok && delete_rows(d, sql[1], target) >= 0;
    ok = ok && delete_rows(d, sql[2], target) >= 0;
    ok = ok && (njobs = delete_rows(d, sql[3], target)) >= 0;
    /* the grid goes with its last job */
    ok = ok && (ngrids = delete_rows(d, "DELETE FROM grids WHERE id=?1 AND NOT EXISTS (SELECT 1 "
                                        "FROM jobs WHERE grid_id=?1)", grid)) >= 0;
    if (!ok || rd_db_exec(d, "COMMIT") != 0) {
        *code = RW_E_INTERNAL;
        snprintf(err, errlen, "rm %s: nothing removed: %s", tname, sqlite3_errmsg(d->db));
        rd_db_exec(d, "ROLLBACK");
        free(ids);
        removal_free(r);
        return -1;
    }
    char ev[512];
    if (kind == 'g')
        snprintf(ev, sizeof ev, "removed g%lld %s: %lld job%s, %lld metrics", (long long)grid,
                 name, (long long)njobs, njobs == 1 ? "" : "s", (long long)nmetrics);
    else
        snprintf(ev, sizeof ev, "removed j%lld %s: %lld metrics%s", (long long)target, name,
                 (long long)nmetrics, ngrids ? "; its grid had no other job and went too" : "");
    rd_db_event(d, 0, "grid", ev);
    rd_log("%s", ev);

    for (size_t i = 0; i < n; i++)
        rd_job_forget(J, ids[i]); /* no TensorBoard file is written from here on */
    free(ids);
    json_t *o = r->reply;
    json_object_set_new(o, "kind", json_string(kind == 'g' ? "grid" : "job"));
    json_object_set_new(o, "target", json_integer(target));
    json_object_set_new(o, "name", json_string(name));
    json_object_set_new(o, "grid", json_integer(grid));
    json_object_set_new(o, "grid_removed", json_boolean(ngrids > 0));
    json_object_set_new(o, "jobs", json_integer(njobs));
    json_object_set_new(o, "metrics", json_integer(nmetrics));
    rd_conn_defer(asker);
    if (uv_queue_work(asker->net->loop, &r->req, work_cb, after_work_cb) != 0) {
        /* cannot happen with a live loop; the rows are gone, so do it here */
        work_cb(&r->req);
        after_work_cb(&r->req, 0);
    }
    return 0;
}
