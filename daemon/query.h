/* Reading the store for replies: rows as JSON, names and ids resolved
 * (j12, g3, a name), a grid's progress, the database's state. */
#ifndef RUNAWAY_DAEMON_QUERY_H
#define RUNAWAY_DAEMON_QUERY_H

#include <jansson.h>
#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon/jobs.h"
#include "daemon/net.h"

/* A job row, its error as the SQL expression err: `ls` lists up to 1000
 * rows in one reply, so there an error is cut to 300 characters (`show`
 * has it whole). */
#define JOB_COLS_E(err)                                                                         \
    "SELECT j.id, j.grid_id AS grid, j.name, j.variant, j.seed, j.state, j.devices, j.priority,  " \
    "j.attempts, j.lost, j.created, j.started, j.finished, " err " AS error, j.linear_acc, "    \
    "j.align_last10, j.uniform_last10, "                                                         \
    "(SELECT MAX(epoch) FROM metrics m WHERE m.job_id=j.id AND m.kind='epoch') AS epoch "       \
    "FROM jobs j "
#define JOB_COLS JOB_COLS_E("j.error")
#define JOB_COLS_LS JOB_COLS_E("substr(j.error, 1, 300)")

json_t *rd_col_json(sqlite3_stmt *st, int i);
/* A row as an object keyed by column names. */
json_t *rd_row_json(sqlite3_stmt *st);
/* At most max rows of a prepared statement (or NULL), as objects; finalizes it. */
json_t *rd_rows_of(sqlite3_stmt *st, size_t max);
/* The rows of sql, with ?1 bound to arg where it has a parameter */
json_t *rd_query_rows(rd_store *s, const char *sql, int64_t arg, size_t max);

/* "j12", "12" or a job name (the newest of that name): its id, 0 if none */
int64_t rd_resolve_job(rd_store *s, const char *name);
int64_t rd_resolve_grid(rd_store *s, const char *name);
/* JOB|GRID: g-prefixed or a grid name is a grid, the rest a job; -1 if none */
int rd_resolve_target(rd_store *s, const char *name, char *kind, int64_t *id);
/* A request's "target" field resolved to a job or a grid; -1 after
 * replying not_found. */
int rd_target_arg(rd_store *s, rd_conn *c, long long id, json_t *m, char *kind, int64_t *tid);
/* A request's "job" field resolved to a job id; 0 after replying not_found. */
int64_t rd_job_arg(rd_store *s, rd_conn *c, long long id, json_t *m);
/* A reply made away from its connection (on the thread pool): the reply,
 * or the error to send instead. */
typedef struct rd_answer {
    json_t *reply; /* NULL: code and msg */
    const char *code;
    char msg[1400];
} rd_answer;
void rd_answer_fail(rd_answer *a, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* rd_target_arg, answered in a */
int rd_target_resolve(rd_store *s, json_t *m, char *kind, int64_t *tid, rd_answer *a);

/* Every job of the target ('j' or 'g') has ended */
int rd_target_ended(rd_store *s, char kind, int64_t id);

/* A grid's jobs by state, and the time until they have all ended
 * (estimated; null where it cannot be yet). */
json_t *rd_grid_progress(rd_jobs *J, int64_t gid);
/* In the replies a user reads the daemon's state from (ls, grids, status):
 * why nothing starts, while the database takes no writes. */
void rd_add_db_down(rd_store *s, json_t *reply);

#endif
