/* The store: SQLite (WAL) holding grids, jobs, attempts, metrics and
 * events, and the backlog of the writes it cannot take for now (a full
 * disk, another program's lock). It knows nothing of clients or workers:
 * what others must hear of (a job's log line, the database going down and
 * up, the jobs whose new state was recorded late) it emits (events.h). */
#ifndef RUNAWAY_DAEMON_DB_H
#define RUNAWAY_DAEMON_DB_H

#include <limits.h>
#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon/events.h"

#define RD_BACKLOG_BYTES (64u << 20)
#define RD_DB_BUSY_MS 5000 /* a lock held by another program (sqlite3 by hand) */
#define RD_DB_START_WAIT_S 600.0 /* at start, a lock or a full disk is waited for this long */
#define RD_BACKLOG_RETRY_S 5.0

/* Writes the database could not take: kept, in order, as the prepared
 * statements with their bound values (exact: SQL text would round a
 * double to 15 digits), to be made once it can take them again. */
typedef struct rd_db_backlog {
    sqlite3_stmt **st;
    size_t n, cap, bytes; /* bytes: SQLite's memory for the statements */
    long long dropped;    /* metric and event rows let go past RD_BACKLOG_BYTES */
    double since;         /* rd_now() of the first write that failed */
    double last_try;      /* rd_mono() of the last replay */
    char why[256];        /* SQLite's message for the last failure */
    int64_t *jobs;        /* jobs whose new state waits: their watchers hear of it after */
    size_t njobs, capjobs;
} rd_db_backlog;

typedef struct rd_store {
    sqlite3 *db;
    char path[PATH_MAX];
    /* the folders its ids name (runs/<job>, TensorBoard's g<grid>-): a
     * database restored from a backup gives no new row an id they hold */
    char state_dir[PATH_MAX];
    const char *tb_dir;
    rd_db_backlog backlog;
    rd_events *ev;
} rd_store;

int rd_db_open(rd_store *s, char *err, size_t errlen);
void rd_db_close(rd_store *s);
int rd_db_exec(rd_store *s, const char *sql);
/* Steps a prepared write and finalizes it; its text must be bound
 * SQLITE_TRANSIENT, as it may be stepped later. When the database cannot take
 * it (a full disk, an I/O error, a read-only file, a lock held past the busy
 * timeout), or writes already wait, it is kept for rd_db_retry, in order;
 * `droppable` (a metric or an event row) may be let go once the backlog
 * holds RD_BACKLOG_BYTES. 0: made or kept; -1: refused for another reason
 * (logged). */
int rd_db_write(rd_store *s, sqlite3_stmt *st, int droppable);
/* Writes wait: the database could not be written since backlog.since */
int rd_db_down(const rd_store *s);
/* The backlog's writes, in one transaction, at most every RD_BACKLOG_RETRY_S
 * (the tick); 1 when the database took them all (it is up again). */
int rd_db_retry(rd_store *s);
/* The same at shutdown: tried now, whenever the last try was. */
int rd_db_retry_now(rd_store *s);
/* One line saying why the database cannot be written, for replies */
void rd_db_down_msg(const rd_store *s, char *out, size_t len);
void rd_db_backlog_free(rd_store *s);
/* A job whose new state waits in the backlog: its watchers are told once
 * it is written (they read the state from the rows) */
void rd_db_backlog_job(rd_store *s, int64_t job);
void rd_db_event(rd_store *s, int64_t job, const char *kind, const char *text);
/* prepared statement helpers: return NULL on error (logged) */
sqlite3_stmt *rd_db_prep(rd_store *s, const char *sql);
int64_t rd_db_int(rd_store *s, const char *sql, int64_t arg, int64_t dflt);
/* The id for a new row of grids, jobs or attempts (a fixed string): never
 * one given before, even to a removed row. 0 on error (logged). */
int64_t rd_db_next_id(rd_store *s, const char *table);

#endif
