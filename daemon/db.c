/* SQLite state. WAL so that readers (the CLI's tests, sqlite3 by hand) never
 * block the daemon; synchronous=NORMAL: a committed row survives a crash of
 * the daemon (the kill -9 case the design asks for), only power loss may
 * drop the last transactions. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/base.h"
#include "daemon/db.h"

static const char *schema =
    "CREATE TABLE IF NOT EXISTS grids("
    "  id INTEGER PRIMARY KEY, name TEXT NOT NULL, priority INTEGER NOT NULL,"
    "  origin TEXT NOT NULL, text TEXT NOT NULL, created REAL NOT NULL);"
    "CREATE TABLE IF NOT EXISTS jobs("
    "  id INTEGER PRIMARY KEY, grid_id INTEGER NOT NULL REFERENCES grids(id),"
    "  name TEXT NOT NULL, variant TEXT NOT NULL, seed INTEGER NOT NULL,"
    "  spec TEXT NOT NULL, devices INTEGER NOT NULL, priority INTEGER NOT NULL,"
    "  state TEXT NOT NULL,"          /* queued running done failed cancelled collapsed */
    "  attempts INTEGER NOT NULL DEFAULT 0, lost INTEGER NOT NULL DEFAULT 0,"
    "  created REAL NOT NULL, started REAL, finished REAL, error TEXT,"
    "  linear_acc REAL, align_last10 REAL, uniform_last10 REAL, result TEXT);"
    "CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, priority, id);"
    "CREATE INDEX IF NOT EXISTS jobs_grid ON jobs(grid_id);"
    "CREATE TABLE IF NOT EXISTS attempts("
    "  id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL REFERENCES jobs(id),"
    "  worker TEXT NOT NULL, started REAL NOT NULL, ended REAL,"
    "  outcome TEXT NOT NULL, error TEXT);"  /* running done failed lost stopped cancelled preempted
                                              * collapsed */
    "CREATE INDEX IF NOT EXISTS attempts_job ON attempts(job_id);"
    "CREATE TABLE IF NOT EXISTS metrics("
    "  id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL, attempt_id INTEGER NOT NULL,"
    "  kind TEXT NOT NULL, epoch INTEGER NOT NULL, step INTEGER NOT NULL,"
    "  loss REAL, align REAL, uniform REAL, collapse REAL, knn REAL, pairs_per_s REAL,"
    "  tau REAL, t REAL NOT NULL, lr REAL, rank REAL, linear REAL, w_cos_i REAL, w_asym REAL,"
    "  alarm REAL);" /* kind 'alarm': the collapse alarm, 1 warn, 2 stop */
    "CREATE INDEX IF NOT EXISTS metrics_job ON metrics(job_id, kind, epoch);"
    "CREATE TABLE IF NOT EXISTS events("
    "  id INTEGER PRIMARY KEY, t REAL NOT NULL, job_id INTEGER, kind TEXT NOT NULL,"
    "  text TEXT NOT NULL);"
    "CREATE INDEX IF NOT EXISTS events_job ON events(job_id, id);"
    /* The highest id ever given in each table whose ids name things (run
     * folders, TensorBoard runs and files, j12 on the command line): rowid
     * tables hand out max(id)+1, which after `rm` of the newest rows would
     * give a removed job's id, and its folders' names, to another. */
    "CREATE TABLE IF NOT EXISTS high_water(tbl TEXT PRIMARY KEY, id INTEGER NOT NULL);"
    /* a database from before the table: every id so far was given */
    "INSERT OR IGNORE INTO high_water VALUES('grids', (SELECT COALESCE(MAX(id), 0) FROM grids));"
    "INSERT OR IGNORE INTO high_water VALUES('jobs', (SELECT COALESCE(MAX(id), 0) FROM jobs));"
    "INSERT OR IGNORE INTO high_water VALUES('attempts', "
    "  (SELECT COALESCE(MAX(id), 0) FROM attempts));";

/* The highest id among the names in folder `dir` that are `prefix`, an id,
 * then nothing (prefix "") or '-' (else); 0 if none. */
static long long max_named_id(const char *dir, const char *prefix)
{
    DIR *dp = opendir(dir);
    if (!dp)
        return 0;
    size_t pl = strlen(prefix);
    long long mx = 0;
    struct dirent *e;
    while ((e = readdir(dp))) {
        const char *n = e->d_name + pl;
        if (strncmp(e->d_name, prefix, pl) || *n < '1' || *n > '9')
            continue;
        char *end;
        errno = 0;
        long long v = strtoll(n, &end, 10);
        if (!errno && (pl ? *end == '-' : *end == '\0') && v > mx)
            mx = v;
    }
    closedir(dp);
    return mx;
}

/* A database restored from its backup is older than the folders its ids
 * name (runs/<job>, TensorBoard's g<grid>-<name>): the high-water marks go
 * past them, so that no new job or grid takes the folders of one the backup
 * never saw. */
static void high_water_sql(rd_store *d, char *sql, size_t len)
{
    char runs[PATH_MAX + 8];
    snprintf(runs, sizeof runs, "%s/runs", d->state_dir);
    long long jobs = max_named_id(runs, ""),
              grids = d->tb_dir && d->tb_dir[0] ? max_named_id(d->tb_dir, "g") : 0;
    snprintf(sql, len, "UPDATE high_water SET id=MAX(id, %lld) WHERE tbl='jobs';"
             "UPDATE high_water SET id=MAX(id, %lld) WHERE tbl='grids';", jobs, grids);
}

/* The schema, the columns added since, the requeue of the jobs a previous
 * daemon left running and the high-water marks past the folders' ids, in
 * one transaction: all or none. SQLite's result code (err says what
 * failed). */
static int db_init(rd_store *d, char *err, size_t errlen)
{
    char *msg = NULL;
    int rc = sqlite3_exec(d->db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;", NULL,
                          NULL, &msg);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(d->db, "BEGIN IMMEDIATE", NULL, NULL, &msg);
    if (rc != SQLITE_OK)
        goto fail;
    rc = sqlite3_exec(d->db, schema, NULL, NULL, &msg);
    /* columns added since: a database from before gets them (NULL in old rows) */
    static const char *const added[] = {"lr", "rank", "linear", "w_cos_i", "w_asym", "alarm"};
    for (size_t i = 0; rc == SQLITE_OK && i < sizeof added / sizeof *added; i++) {
        char sql[128];
        snprintf(sql, sizeof sql, "SELECT COUNT(*) FROM pragma_table_info('metrics') WHERE "
                                  "name='%s'", added[i]);
        if (rd_db_int(d, sql, 0, 0) != 0)
            continue;
        snprintf(sql, sizeof sql, "ALTER TABLE metrics ADD COLUMN %s REAL", added[i]);
        rc = sqlite3_exec(d->db, sql, NULL, NULL, &msg);
    }
    /* a previous daemon died with jobs running: their workers are gone,
     * the jobs resume from their checkpoints */
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(d->db,
                          "UPDATE attempts SET outcome='lost', ended=strftime('%s','now'), "
                          "error='daemon restarted' WHERE outcome='running';"
                          "UPDATE jobs SET state='queued' WHERE state='running';",
                          NULL, NULL, &msg);
    if (rc == SQLITE_OK) {
        char sql[256];
        high_water_sql(d, sql, sizeof sql);
        rc = sqlite3_exec(d->db, sql, NULL, NULL, &msg);
    }
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(d->db, "COMMIT", NULL, NULL, &msg);
    if (rc == SQLITE_OK)
        return SQLITE_OK;
fail:
    snprintf(err, errlen, "%s: %s", d->path, msg ? msg : sqlite3_errmsg(d->db));
    sqlite3_free(msg);
    if (!sqlite3_get_autocommit(d->db))
        sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

int rd_db_open(rd_store *d, char *err, size_t errlen)
{
    if (sqlite3_open_v2(d->path, &d->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
        SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", d->path, d->db ? sqlite3_errmsg(d->db) : "cannot open");
        return -1;
    }
    sqlite3_busy_timeout(d->db, RD_DB_BUSY_MS);
    /* A database that takes no writes for now (another program's lock, a
     * sqlite3 shell with a transaction open; a full disk) is waited for: a
     * restart (systemd's, or `runaway daemon start` after a crash) must not
     * fail on it. Anything else fails at once. */
    double t0 = rd_mono();
    for (int said = 0;; said = 1) {
        int rc = db_init(d, err, errlen);
        if (rc == SQLITE_OK) {
            if (said)
                rd_log("%s takes writes again after %.0f s; starting", d->path,
                       rd_mono() - t0);
            return 0;
        }
        rc &= 0xff;
        if (rc != SQLITE_BUSY && rc != SQLITE_LOCKED && rc != SQLITE_FULL && rc != SQLITE_IOERR)
            return -1;
        if (rd_mono() - t0 > RD_DB_START_WAIT_S) {
            size_t k = strlen(err);
            snprintf(err + k, errlen - k, " (still, after %.0f s)", rd_mono() - t0);
            return -1;
        }
        if (!said)
            rd_log("%s: waiting for it to take writes, up to %.0f minutes", err,
                   RD_DB_START_WAIT_S / 60);
        /* the busy timeout waited already; a second's pause between tries */
        nanosleep(&(struct timespec){1, 0}, NULL);
    }
}

void rd_db_close(rd_store *d)
{
    if (d->db)
        sqlite3_close_v2(d->db);
    d->db = NULL;
}

int rd_db_exec(rd_store *d, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(d->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        rd_log("sqlite: %s: %s", msg ? msg : "?", sql);
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Writes the database cannot take now */

/* Failures of the storage, which pass: anything else is a bug or bad data,
 * and would fail again. */
static int storage_error(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_FULL:
    case SQLITE_IOERR:
    case SQLITE_READONLY:
    case SQLITE_CANTOPEN:
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_NOMEM:
    case SQLITE_PROTOCOL:
        return 1;
    }
    return 0;
}

int rd_db_down(const rd_store *d) { return d->backlog.n > 0; }

static int backlog_push(rd_store *d, sqlite3_stmt *st, int droppable)
{
    rd_db_backlog *b = &d->backlog;
    sqlite3_reset(st); /* bindings stay: stepped again as it is */
    size_t mem = (size_t)sqlite3_stmt_status(st, SQLITE_STMTSTATUS_MEMUSED, 0);
    if (droppable && b->bytes + mem > RD_BACKLOG_BYTES) {
        sqlite3_finalize(st);
        b->dropped++;
        return 0;
    }
    if (b->n == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 256;
        sqlite3_stmt **p = realloc(b->st, cap * sizeof *p);
        if (!p) {
            rd_log("sqlite: a write that waits for the database was lost (out of memory): %s",
                   sqlite3_sql(st));
            sqlite3_finalize(st);
            b->dropped++;
            return -1;
        }
        b->st = p;
        b->cap = cap;
    }
    b->st[b->n++] = st;
    b->bytes += mem;
    return 0;
}

int rd_db_write(rd_store *d, sqlite3_stmt *st, int droppable)
{
    rd_db_backlog *b = &d->backlog;
    if (b->n) /* after the writes that wait, never before them */
        return backlog_push(d, st, droppable);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE || rc == SQLITE_ROW) {
        sqlite3_finalize(st);
        return 0;
    }
    if (!storage_error(rc)) {
        rd_log("sqlite: %s: %s", sqlite3_errmsg(d->db), sqlite3_sql(st));
        sqlite3_finalize(st);
        return -1;
    }
    snprintf(b->why, sizeof b->why, "%s", sqlite3_errmsg(d->db));
    b->since = rd_now();
    b->last_try = rd_mono();
    b->dropped = 0;
    rd_log("sqlite: %s cannot be written (%s): writes wait, no job starts, and submit, requeue, "
           "priority and rm are refused until it can; retried every %.0f s", d->path, b->why,
           RD_BACKLOG_RETRY_S);
    int kept = backlog_push(d, st, droppable);
    char msg[1024];
    rd_db_down_msg(d, msg, sizeof msg);
    rd_emit_daemon_news(d->ev, "db_down", msg);
    return kept;
}

void rd_db_backlog_free(rd_store *d)
{
    rd_db_backlog *b = &d->backlog;
    for (size_t i = 0; i < b->n; i++)
        sqlite3_finalize(b->st[i]);
    free(b->st);
    b->st = NULL;
    b->n = b->cap = b->bytes = 0;
    free(b->jobs);
    b->jobs = NULL;
    b->njobs = b->capjobs = 0;
}

int rd_db_retry_now(rd_store *d)
{
    d->backlog.last_try = -1e9;
    return rd_db_retry(d);
}

int rd_db_retry(rd_store *d)
{
    rd_db_backlog *b = &d->backlog;
    if (!b->n || rd_mono() - b->last_try < RD_BACKLOG_RETRY_S)
        return 0;
    b->last_try = rd_mono();
    /* a lock another program holds is not waited for here: the loop would
     * stand still for the busy timeout at every try */
    sqlite3_busy_timeout(d->db, 0);
    int ok = sqlite3_exec(d->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK;
    for (size_t i = 0; ok && i < b->n; i++) {
        int rc = sqlite3_step(b->st[i]);
        sqlite3_reset(b->st[i]);
        ok = rc == SQLITE_DONE || rc == SQLITE_ROW;
        if (!ok && !storage_error(rc)) {
            /* refused for itself (the statement alone is undone): would
             * fail every try and hold the rest back for good */
            rd_log("sqlite: a write that waited is refused (%s), dropped: %s",
                   sqlite3_errmsg(d->db), sqlite3_sql(b->st[i]));
            b->dropped++;
            ok = 1;
        }
    }
    ok = ok && sqlite3_exec(d->db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK;
    sqlite3_busy_timeout(d->db, RD_DB_BUSY_MS);
    if (!ok) {
        snprintf(b->why, sizeof b->why, "%s", sqlite3_errmsg(d->db));
        if (!sqlite3_get_autocommit(d->db))
            sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
        return 0;
    }
    size_t n = b->n;
    long long dropped = b->dropped;
    double since = b->since;
    int64_t *jobs = b->jobs;
    size_t njobs = b->njobs;
    b->jobs = NULL;
    rd_db_backlog_free(d);
    char ev[320];
    snprintf(ev, sizeof ev, "the database takes writes again after %.0f s: %zu writes that waited "
             "were made%s", rd_now() - since, n, dropped ? "; some metric and event rows were "
             "not kept (the backlog was full)" : "");
    if (dropped)
        snprintf(ev + strlen(ev), sizeof ev - strlen(ev), ": %lld", dropped);
    rd_log("%s", ev);
    rd_db_event(d, 0, "daemon", ev);
    rd_emit_daemon_news(d->ev, "db_up", ev);
    /* the watchers of the jobs that moved meanwhile: now the rows say so */
    for (size_t i = 0; i < njobs; i++)
        rd_emit_job_state(d->ev, jobs[i], "recorded once the database took writes again");
    free(jobs);
    return 1;
}

void rd_db_backlog_job(rd_store *d, int64_t job)
{
    rd_db_backlog *b = &d->backlog;
    for (size_t i = 0; i < b->njobs; i++)
        if (b->jobs[i] == job)
            return;
    if (b->njobs == b->capjobs) {
        size_t cap = b->capjobs ? 2 * b->capjobs : 16;
        int64_t *p = realloc(b->jobs, cap * sizeof *p);
        if (!p)
            return; /* its watchers hear of it at its next change */
        b->jobs = p;
        b->capjobs = cap;
    }
    b->jobs[b->njobs++] = job;
}

void rd_db_down_msg(const rd_store *d, char *out, size_t len)
{
    const rd_db_backlog *b = &d->backlog;
    time_t t = (time_t)b->since;
    struct tm tm;
    char when[32] = "?";
    if (localtime_r(&t, &tm))
        strftime(when, sizeof when, "%H:%M:%S", &tm);
    snprintf(out, len, "runawayd cannot write its database %s (%s) since %s; %zu writes wait for "
             "it, no job starts, running jobs go on; free space (or fix the file system) and "
             "it resumes within %.0f s", d->path, b->why, when, b->n, RD_BACKLOG_RETRY_S);
}

sqlite3_stmt *rd_db_prep(rd_store *d, const char *sql)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(d->db, sql, -1, &st, NULL) != SQLITE_OK) {
        rd_log("sqlite: %s: %s", sqlite3_errmsg(d->db), sql);
        return NULL;
    }
    return st;
}

int64_t rd_db_int(rd_store *d, const char *sql, int64_t arg, int64_t dflt)
{
    sqlite3_stmt *st = rd_db_prep(d, sql);
    if (!st)
        return dflt;
    if (sqlite3_bind_parameter_count(st) > 0) /* some queries take no argument */
        sqlite3_bind_int64(st, 1, arg);
    int64_t v = dflt;
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

int64_t rd_db_next_id(rd_store *d, const char *table)
{
    /* past the mark and past every row: a row inserted by another program
     * (sqlite3 by hand) is not collided with */
    char sql[192];
    snprintf(sql, sizeof sql, "UPDATE high_water SET id=MAX(id, (SELECT COALESCE(MAX(t.id), 0) "
                              "FROM %s t)) + 1 WHERE tbl='%s' RETURNING id", table, table);
    sqlite3_stmt *st = rd_db_prep(d, sql);
    int64_t id = 0;
    /* RETURNING: the update is done by the first step */
    if (st && sqlite3_step(st) == SQLITE_ROW)
        id = sqlite3_column_int64(st, 0);
    if (st)
        sqlite3_finalize(st);
    if (!id)
        rd_log("sqlite: no new id for %s: %s", table, sqlite3_errmsg(d->db));
    return id;
}

void rd_db_event(rd_store *d, int64_t job, const char *kind, const char *text)
{
    sqlite3_stmt *st = rd_db_prep(d, "INSERT INTO events(t, job_id, kind, text) VALUES(?,?,?,?)");
    if (!st)
        return;
    double t = rd_now(); /* one time for the row and its followers */
    sqlite3_bind_double(st, 1, t);
    if (job > 0)
        sqlite3_bind_int64(st, 2, job);
    else
        sqlite3_bind_null(st, 2);
    sqlite3_bind_text(st, 3, kind, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 4, text, -1, SQLITE_TRANSIENT);
    rd_db_write(d, st, 1);
    if (job > 0)
        rd_emit_job_log(d->ev, job, t, kind, text);
}
