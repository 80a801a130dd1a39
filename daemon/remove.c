/* rm: ended jobs out of the database and off the disk.
 *
 * All or nothing for the rows: a request naming a job that is queued,
 * running, or whose worker still stops it (and may yet write a checkpoint)
 * removes nothing. Otherwise one transaction takes the jobs, their attempts,
 * metrics and events, and the grid with its last job; then their run
 * folders and TensorBoard runs go. The database is the record: a file that
 * cannot be removed is named in the reply, and the rows stay removed. Ids
 * are never given again (db.c, high_water), so a removed job's folders
 * never come to name another job. */
#define _GNU_SOURCE /* nftw */
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/rd.h"
#include "proto/msg.h"

#define BUSY_NAMED 10  /* jobs named in a refusal; the rest are counted */
#define ERRORS_MAX 50  /* files named in a reply; the rest are counted */

/* The removal in progress: nftw passes no context to its callback, and the
 * daemon has one thread. */
static json_t *errors;
static size_t errors_dropped, tree_start; /* errors before this tree's */

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
static void remove_empty_parents(rd_daemon *d, const char *run, json_t *removed)
{
    size_t root = strlen(d->tb_dir);
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s", run);
    if (strncmp(p, d->tb_dir, root) != 0 || p[root] != '/')
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
static int64_t delete_rows(rd_daemon *d, const char *sql, int64_t arg)
{
    sqlite3_stmt *st = rd_db_prep(d, sql);
    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, arg);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? sqlite3_changes64(d->db) : -1;
}

json_t *rd_remove(rd_daemon *d, char kind, int64_t target, const char **code, char *err,
                  size_t errlen)
{
    char tname[32];
    snprintf(tname, sizeof tname, "%c%lld", kind, (long long)target);
    sqlite3_stmt *st = rd_db_prep(d, kind == 'g' ? "SELECT id, state, grid_id, name FROM jobs "
                                                   "WHERE grid_id=? ORDER BY id"
                                                 : "SELECT id, state, grid_id, name FROM jobs "
                                                   "WHERE id=?");
    if (!st) {
        *code = RW_E_INTERNAL;
        snprintf(err, errlen, "rm %s: %s", tname, sqlite3_errmsg(d->db));
        return NULL;
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
                return NULL;
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
        if (!live && !rd_job_busy(d, job))
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
        return NULL;
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
    json_t *tb = json_array();
    for (size_t i = 0; i < n; i++) {
        char p[PATH_MAX];
        json_array_append_new(tb, rd_tb_run_dir(d, ids[i], p, sizeof p) == 0 ? json_string(p)
                                                                              : json_null());
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
        json_decref(tb);
        return NULL;
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

    errors = json_array();
    errors_dropped = 0;
    json_t *runs = json_array(), *tbs = json_array();
    for (size_t i = 0; i < n; i++) {
        rd_job_forget(d, ids[i]); /* no TensorBoard file is written from here on */
        char p[PATH_MAX + 64];
        snprintf(p, sizeof p, "%s/runs/%lld", d->state_dir, (long long)ids[i]);
        if (remove_tree(p) == 1)
            json_array_append_new(runs, json_string(p));
        const char *t = json_string_value(json_array_get(tb, i));
        if (!t)
            continue;
        if (remove_tree(t) == 1)
            json_array_append_new(tbs, json_string(t));
        remove_empty_parents(d, t, tbs);
    }
    free(ids);
    json_decref(tb);
    json_t *r = json_object();
    json_object_set_new(r, "kind", json_string(kind == 'g' ? "grid" : "job"));
    json_object_set_new(r, "target", json_integer(target));
    json_object_set_new(r, "name", json_string(name));
    json_object_set_new(r, "grid", json_integer(grid));
    json_object_set_new(r, "grid_removed", json_boolean(ngrids > 0));
    json_object_set_new(r, "jobs", json_integer(njobs));
    json_object_set_new(r, "metrics", json_integer(nmetrics));
    json_object_set_new(r, "runs", runs);
    json_object_set_new(r, "tensorboard", topmost(tbs));
    json_object_set_new(r, "errors", errors);
    json_object_set_new(r, "errors_more", json_integer((json_int_t)errors_dropped));
    errors = NULL;
    return r;
}
