/* Client requests that change jobs: submit, requeue, priority, cancel, rm,
 * shutdown. */
#include <stdlib.h>
#include <string.h>

#include "daemon/handlers.h"
#include "daemon/query.h"
#include "daemon/remove.h"
#include "proto/grid.h"
#include "proto/msg.h"
#include "proto/spec.h"

void rd_req_submit(rd_daemon *d, rd_conn *c, long long id, json_t *m)
{
    const char *text = json_string_value(json_object_get(m, "text"));
    const char *origin = json_string_value(json_object_get(m, "origin"));
    const char *basedir = json_string_value(json_object_get(m, "basedir"));
    /* the command line's FIELD=VALUE words: applied here, by the same
     * parser as the file, relative paths from the client's folder */
    const json_t *words = json_object_get(m, "overrides");
    const char *cwd = json_string_value(json_object_get(m, "cwd"));
    const char *w[RW_OVERRIDES_MAX];
    size_t nw = json_array_size(words);
    for (size_t k = 0; k < nw; k++)
        w[k] = json_string_value(json_array_get(words, k));
    rw_overrides ov = {w, nw, cwd ? cwd : basedir};
    char err[1024];
    rw_grid g;
    if (rw_grid_parse_with(text, strlen(text), origin, basedir, &ov, &g, err, sizeof err) != 0) {
        rd_reply_error(c, id, RW_E_BAD_SPEC, "%s", err);
        return;
    }
    /* the grid's text as stored: the file's, then the words that set its
     * base, so that the record says what the jobs were made of */
    char *stored = NULL;
    if (nw) {
        size_t len = strlen(text) + 128;
        for (size_t k = 0; k < nw; k++)
            len += strlen(w[k]) + 1;
        stored = malloc(len);
        if (!stored) {
            rd_reply_error(c, id, RW_E_INTERNAL, "out of memory");
            rw_grid_free(&g);
            return;
        }
        size_t o = (size_t)snprintf(stored, len, "%s%s# runaway submit, on the base:", text,
                                    text[0] && text[strlen(text) - 1] != '\n' ? "\n" : "");
        for (size_t k = 0; k < nw; k++) {
            stored[o++] = ' ';
            for (const char *p = w[k]; *p; p++) /* one comment line, whatever the words hold */
                stored[o++] = (unsigned char)*p < 0x20 ? '?' : *p;
        }
        stored[o++] = '\n';
        stored[o] = '\0';
        text = stored;
    }
    if (json_object_get(m, "priority"))
        g.priority = (int)json_integer_value(json_object_get(m, "priority"));
    int ndev = rd_pool_ndevices(&d->pool);
    for (size_t i = 0; i < g.njobs; i++) {
        /* a coordinator's devices are the remote workers that come */
        if (!d->pool.coordinator_only && g.jobs[i].spec.devices > ndev) {
            rd_reply_error(c, id, RW_E_BAD_SPEC,
                           "%s: job %s: devices: asks for %d devices; this daemon has %d", origin,
                           g.jobs[i].name, g.jobs[i].spec.devices, ndev);
            rw_grid_free(&g);
            free(stored);
            return;
        }
    }
    double now = rd_now();
    rd_db_exec(&d->store, "BEGIN");
    int64_t gid = rd_db_next_id(&d->store, "grids");
    sqlite3_stmt *st = gid ? rd_db_prep(&d->store, "INSERT INTO grids(id, name, priority, origin, text, "
                                           "created) VALUES(?,?,?,?,?,?)")
                           : NULL;
    int ok = st != NULL;
    if (ok) {
        sqlite3_bind_int64(st, 1, gid);
        sqlite3_bind_text(st, 2, g.name, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int(st, 3, g.priority);
        sqlite3_bind_text(st, 4, origin, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 5, text, -1, SQLITE_TRANSIENT);
        sqlite3_bind_double(st, 6, now);
        ok = sqlite3_step(st) == SQLITE_DONE;
        sqlite3_finalize(st);
    }
    json_t *jobs = json_array();
    static char yaml[RW_SPEC_YAML_MAX];
    st = ok ? rd_db_prep(&d->store, "INSERT INTO jobs(id, grid_id, name, variant, seed, spec, devices, "
                            "priority, state, created) VALUES(?,?,?,?,?,?,?,?,'queued',?)")
            : NULL;
    for (size_t i = 0; ok && st && i < g.njobs; i++) {
        const rw_grid_job *j = &g.jobs[i];
        int64_t jid = rd_db_next_id(&d->store, "jobs");
        if (!jid || rw_spec_to_yaml(&j->spec, yaml, sizeof yaml) < 0) {
            ok = 0;
            break;
        }
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, jid);
        sqlite3_bind_int64(st, 2, gid);
        sqlite3_bind_text(st, 3, j->name, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 4, j->variant, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 5, (sqlite3_int64)j->spec.seed);
        sqlite3_bind_text(st, 6, yaml, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int(st, 7, j->spec.devices);
        sqlite3_bind_int(st, 8, g.priority);
        sqlite3_bind_double(st, 9, now);
        ok = sqlite3_step(st) == SQLITE_DONE;
        json_t *o = json_object();
        json_object_set_new(o, "id", json_integer(jid));
        json_object_set_new(o, "name", json_string(j->name));
        json_array_append_new(jobs, o);
    }
    sqlite3_finalize(st);
    if (!ok) {
        rd_db_exec(&d->store, "ROLLBACK");
        json_decref(jobs);
        rd_reply_error(c, id, RW_E_INTERNAL, "cannot store the grid: %s", sqlite3_errmsg(d->store.db));
        rw_grid_free(&g);
        free(stored);
        return;
    }
    free(stored);
    rd_db_exec(&d->store, "COMMIT");
    char ev[256];
    snprintf(ev, sizeof ev, "grid g%lld %s submitted: %zu jobs", (long long)gid, g.name, g.njobs);
    rd_db_event(&d->store, 0, "grid", ev);
    rd_log("%s", ev);
    json_t *r = rw_msg_new("ok", id);
    json_object_set_new(r, "grid", json_integer(gid));
    json_object_set_new(r, "name", json_string(g.name));
    json_object_set_new(r, "jobs", jobs);
    rd_conn_send(c, r);
    rw_grid_free(&g);
    rd_schedule(&d->jobs);
}

static const char *job_state_of(rd_store *d, int64_t job, char *out, size_t len)
{
    snprintf(out, len, "unknown");
    sqlite3_stmt *st = rd_db_prep(d, "SELECT state FROM jobs WHERE id=?");
    if (st) {
        sqlite3_bind_int64(st, 1, job);
        if (sqlite3_step(st) == SQLITE_ROW)
            snprintf(out, len, "%s", (const char *)sqlite3_column_text(st, 0));
        sqlite3_finalize(st);
    }
    return out;
}

/* Failed and cancelled jobs back to the queue: each resumes from its run
 * folder's checkpoint (a cancelled job wrote one as it stopped). A job the
 * collapse alarm stopped is not: it would resume at the epoch that tripped
 * the alarm and be stopped there again; the message says what to do. */
void rd_req_requeue(rd_daemon *d, rd_conn *c, long long id, json_t *m)
{
    char kind;
    int64_t tid;
    if (rd_target_arg(&d->store, c, id, m, &kind, &tid) != 0)
        return;
    if (d->life.shutting_down) {
        rd_reply_error(c, id, RW_E_STATE, "runawayd is shutting down");
        return;
    }
    json_t *rows = rd_query_rows(&d->store,
                              kind == 'g' ? "SELECT id FROM jobs WHERE grid_id=?1 AND state IN "
                                            "('failed','cancelled') ORDER BY id"
                                          : "SELECT id FROM jobs WHERE id=?1",
                              tid, 100000);
    size_t i;
    json_t *row;
    int n = 0;
    json_array_foreach(rows, i, row) n += rd_requeue_job(&d->jobs, json_integer_value(json_object_get(row, "id")));
    json_decref(rows);
    if (kind == 'j' && n == 0) {
        char state[32];
        job_state_of(&d->store, tid, state, sizeof state);
        if (!strcmp(state, "collapsed"))
            rd_reply_error(c, id, RW_E_STATE, "j%lld is collapsed: the collapse alarm stopped it "
                           "(runaway show j%lld says why), and a requeue would resume it at that "
                           "epoch to be stopped again; to train it on, submit its spec again with "
                           "monitor.collapse.action=warn (or off)", (long long)tid, (long long)tid);
        else
            rd_reply_error(c, id, RW_E_STATE, "j%lld is %s: only a failed or cancelled job is "
                           "requeued", (long long)tid, state);
        return;
    }
    json_t *r = rw_msg_new("ok", id);
    json_object_set_new(r, "requeued", json_integer(n));
    rd_conn_send(c, r);
    rd_schedule(&d->jobs);
}

/* A new priority for the jobs of a job or grid that have not finished:
 * the queued ones take their new place in the queue (running ones are not
 * stopped; a requeued one keeps it). */
void rd_req_priority(rd_daemon *d, rd_conn *c, long long id, json_t *m)
{
    char kind;
    int64_t tid;
    if (rd_target_arg(&d->store, c, id, m, &kind, &tid) != 0)
        return;
    json_int_t prio = json_integer_value(json_object_get(m, "priority"));
    json_t *rows = rd_query_rows(&d->store,
                              kind == 'g' ? "SELECT id, priority FROM jobs WHERE grid_id=?1 AND "
                                            "state NOT IN ('done','collapsed') ORDER BY id"
                                          : "SELECT id, priority FROM jobs WHERE id=?1 AND "
                                            "state NOT IN ('done','collapsed')",
                              tid, 100000);
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row)
    {
        int64_t job = json_integer_value(json_object_get(row, "id"));
        sqlite3_stmt *st = rd_db_prep(&d->store, "UPDATE jobs SET priority=? WHERE id=?");
        if (!st)
            continue;
        sqlite3_bind_int64(st, 1, prio);
        sqlite3_bind_int64(st, 2, job);
        rd_db_write(&d->store, st, 0);
        char ev[96];
        snprintf(ev, sizeof ev, "priority %lld (was %lld)", (long long)prio,
                 (long long)json_integer_value(json_object_get(row, "priority")));
        rd_db_event(&d->store, job, "state", ev);
    }
    if (kind == 'g') {
        sqlite3_stmt *st = rd_db_prep(&d->store, "UPDATE grids SET priority=? WHERE id=?");
        if (st) {
            sqlite3_bind_int64(st, 1, prio);
            sqlite3_bind_int64(st, 2, tid);
            rd_db_write(&d->store, st, 0);
        }
    }
    json_t *r = rw_msg_new("ok", id);
    json_object_set_new(r, "updated", json_integer((json_int_t)json_array_size(rows)));
    json_decref(rows);
    rd_conn_send(c, r);
    rd_schedule(&d->jobs);
}

void rd_req_cancel(rd_daemon *d, rd_conn *c, long long id, json_t *m)
{
    char kind;
    int64_t tid;
    if (rd_target_arg(&d->store, c, id, m, &kind, &tid) != 0)
        return;
    json_t *rows = rd_query_rows(&d->store,
                              kind == 'g' ? "SELECT id FROM jobs WHERE grid_id=?1 AND state IN "
                                            "('queued','running')"
                                          : "SELECT id FROM jobs WHERE id=?1 AND state IN "
                                            "('queued','running')",
                              tid, 100000);
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row) rd_cancel_job(&d->jobs, json_integer_value(json_object_get(row, "id")));
    json_t *r = rw_msg_new("ok", id);
    json_object_set_new(r, "cancelled", json_integer((json_int_t)json_array_size(rows)));
    json_decref(rows);
    rd_conn_send(c, r);
    rd_schedule(&d->jobs);
}

/* Ended jobs and their files; refused whole while one has not ended. The
 * reply comes when the files are gone (remove.c). */
void rd_req_rm(rd_daemon *d, rd_conn *c, long long id, json_t *m)
{
    char kind, err[1024];
    int64_t tid;
    const char *code;
    if (rd_target_arg(&d->store, c, id, m, &kind, &tid) != 0)
        return;
    if (rd_remove(&d->jobs, &d->tb, c, id, kind, tid, &code, err, sizeof err) != 0)
        rd_reply_error(c, id, code, "%s", err);
}

void rd_req_shutdown(rd_daemon *d, rd_conn *c, long long id, json_t *m)
{
    (void)m;
    rd_conn_send(c, rw_msg_new("ok", id));
    rd_shutdown_begin(d);
}
