/* Reading the store for replies (query.h). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/query.h"
#include "proto/msg.h"

json_t *rd_col_json(sqlite3_stmt *st, int i)
{
    switch (sqlite3_column_type(st, i)) {
    case SQLITE_INTEGER: return json_integer(sqlite3_column_int64(st, i));
    case SQLITE_FLOAT: return rw_json_num(sqlite3_column_double(st, i));
    case SQLITE_NULL: return json_null();
    default: {
        json_t *s = json_string((const char *)sqlite3_column_text(st, i));
        return s ? s : json_string("?");
    }
    }
}

json_t *rd_row_json(sqlite3_stmt *st)
{
    json_t *o = json_object();
    for (int i = 0; i < sqlite3_column_count(st); i++)
        json_object_set_new(o, sqlite3_column_name(st, i), rd_col_json(st, i));
    return o;
}

json_t *rd_rows_of(sqlite3_stmt *st, size_t max)
{
    json_t *a = json_array();
    while (st && json_array_size(a) < max && sqlite3_step(st) == SQLITE_ROW)
        json_array_append_new(a, rd_row_json(st));
    if (st)
        sqlite3_finalize(st);
    return a;
}

json_t *rd_query_rows(rd_store *d, const char *sql, int64_t arg, size_t max)
{
    sqlite3_stmt *st = rd_db_prep(d, sql);
    if (st && sqlite3_bind_parameter_count(st) >= 1)
        sqlite3_bind_int64(st, 1, arg);
    return rd_rows_of(st, max);
}

static int all_digits(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return 0;
    return 1;
}

static int64_t lookup_name(rd_store *d, const char *sql, const char *name)
{
    sqlite3_stmt *st = rd_db_prep(d, sql);
    if (!st)
        return 0;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
    int64_t id = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_finalize(st);
    return id;
}

/* "<prefix>12", "12" or a name (the newest of that name) in `table`
 * (jobs or grids, fixed strings). 0: none. */
static int64_t resolve_in(rd_store *d, const char *s, char prefix, const char *table)
{
    char q[96];
    if ((s[0] == prefix && all_digits(s + 1)) || all_digits(s)) {
        snprintf(q, sizeof q, "SELECT id FROM %s WHERE id=?", table);
        return rd_db_int(d, q, strtoll(s + (s[0] == prefix), NULL, 10), 0);
    }
    snprintf(q, sizeof q, "SELECT id FROM %s WHERE name=? ORDER BY id DESC LIMIT 1", table);
    return lookup_name(d, q, s);
}

int64_t rd_resolve_job(rd_store *d, const char *s) { return resolve_in(d, s, 'j', "jobs"); }
int64_t rd_resolve_grid(rd_store *d, const char *s) { return resolve_in(d, s, 'g', "grids"); }

int rd_resolve_target(rd_store *d, const char *s, char *kind, int64_t *id)
{
    if (s[0] == 'g' && all_digits(s + 1)) {
        *kind = 'g';
        *id = rd_resolve_grid(d, s);
    } else if ((*id = rd_resolve_job(d, s)) != 0) {
        *kind = 'j';
    } else {
        *kind = 'g';
        *id = rd_resolve_grid(d, s);
    }
    return *id ? 0 : -1;
}

json_t *rd_grid_progress(rd_jobs *J, int64_t gid)
{
    rd_store *d = J->store;
    json_t *p = json_pack("{sisisisisisi}", "queued", 0, "running", 0, "done", 0, "failed", 0,
                          "cancelled", 0, "collapsed", 0);
    sqlite3_stmt *st = rd_db_prep(d, "SELECT state, COUNT(*) FROM jobs WHERE grid_id=? GROUP BY "
                                     "state");
    if (st) {
        sqlite3_bind_int64(st, 1, gid);
        while (sqlite3_step(st) == SQLITE_ROW)
            json_object_set_new(p, (const char *)sqlite3_column_text(st, 0),
                                json_integer(sqlite3_column_int64(st, 1)));
        sqlite3_finalize(st);
    }
    double left = json_integer_value(json_object_get(p, "queued")) +
                          json_integer_value(json_object_get(p, "running")) ?
                      rd_grid_left(J, gid) : 0; /* ended */
    json_object_set_new(p, "left_s", left >= 0 ? json_real(left) : json_null());
    return p;
}

void rd_add_db_down(rd_store *d, json_t *r)
{
    if (!rd_db_down(d))
        return;
    char msg[1024];
    rd_db_down_msg(d, msg, sizeof msg);
    json_object_set_new(r, "db_down", json_string(msg));
}

int rd_target_ended(rd_store *d, char kind, int64_t wid)
{
    return rd_db_int(d,
                     kind == 'g' ? "SELECT COUNT(*) FROM jobs WHERE grid_id=? AND state IN "
                                   "('queued','running')"
                                 : "SELECT COUNT(*) FROM jobs WHERE id=? AND state IN "
                                   "('queued','running')",
                     wid, 1) == 0;
}

int rd_target_arg(rd_store *s, rd_conn *c, long long id, json_t *m, char *kind, int64_t *tid)
{
    const char *t = json_string_value(json_object_get(m, "target"));
    if (rd_resolve_target(s, t, kind, tid) != 0) {
        rd_reply_error(c, id, RW_E_NOT_FOUND, "no job or grid '%s'", t);
        return -1;
    }
    return 0;
}

int64_t rd_job_arg(rd_store *s, rd_conn *c, long long id, json_t *m)
{
    const char *js = json_string_value(json_object_get(m, "job"));
    int64_t job = rd_resolve_job(s, js);
    if (!job)
        rd_reply_error(c, id, RW_E_NOT_FOUND, "no job '%s'", js);
    return job;
}

void rd_answer_fail(rd_answer *a, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->msg, sizeof a->msg, fmt, ap);
    va_end(ap);
    a->code = code;
    json_decref(a->reply);
    a->reply = NULL;
}

int rd_target_resolve(rd_store *s, json_t *m, char *kind, int64_t *tid, rd_answer *a)
{
    const char *t = json_string_value(json_object_get(m, "target"));
    if (rd_resolve_target(s, t, kind, tid) != 0) {
        rd_answer_fail(a, RW_E_NOT_FOUND, "no job or grid '%s'", t);
        return -1;
    }
    return 0;
}
