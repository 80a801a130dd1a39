/* Reading queries on the thread pool (offload.h). */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/offload.h"
#include "proto/msg.h"

#define READER_CACHE_KIB 1024 /* each reader's page cache: a pool thread holds one */

typedef struct {
    uv_work_t req;
    rd_net *net;
    rd_conn *c; /* the asker, found again by serial */
    uint64_t serial;
    long long id;
    json_t *m;
    rd_offload_fn *fn;
    rd_answer a;
    char path[PATH_MAX];
} offload;

/* This pool thread's read-only connection to the database at `path`. */
static __thread rd_store *reader;

static rd_store *reader_of(const char *path, char *err, size_t errlen)
{
    if (reader && strcmp(reader->path, path) == 0)
        return reader;
    if (reader) {
        sqlite3_close_v2(reader->db);
        free(reader);
    }
    reader = calloc(1, sizeof *reader);
    if (!reader) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    snprintf(reader->path, sizeof reader->path, "%s", path);
    if (sqlite3_open_v2(path, &reader->db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", path, reader->db ? sqlite3_errmsg(reader->db) : "cannot open");
        sqlite3_close_v2(reader->db);
        free(reader);
        reader = NULL;
        return NULL;
    }
    sqlite3_busy_timeout(reader->db, RD_DB_BUSY_MS);
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA cache_size=-%d", READER_CACHE_KIB);
    sqlite3_exec(reader->db, sql, NULL, NULL, NULL);
    return reader;
}

static void work_cb(uv_work_t *req)
{
    offload *o = req->data;
    char err[PATH_MAX + 128];
    rd_store *s = reader_of(o->path, err, sizeof err);
    if (!s) {
        rd_answer_fail(&o->a, RW_E_INTERNAL, "cannot read the database: %s", err);
        return;
    }
    o->fn(s, o->id, o->m, &o->a);
    sqlite3_db_release_memory(s->db); /* a burst's pages go back */
}

static void reply(rd_conn *c, long long id, rd_answer *a)
{
    if (a->reply) {
        rd_conn_send(c, a->reply);
        a->reply = NULL;
    } else {
        rd_conn_send(c, rw_msg_error(id, a->code ? a->code : RW_E_INTERNAL,
                                     a->code ? a->msg : "no answer"));
    }
}

static void after_work_cb(uv_work_t *req, int status)
{
    offload *o = req->data;
    (void)status; /* never cancelled: the pool runs every query it was given */
    rd_conn *c = rd_conn_find(o->net, o->c, o->serial);
    if (c)
        reply(c, o->id, &o->a);
    rd_conn_undefer(c);
    json_decref(o->a.reply);
    json_decref(o->m);
    free(o);
}

void rd_offload(rd_store *s, rd_conn *c, long long id, json_t *m, rd_offload_fn *fn)
{
    offload *o = calloc(1, sizeof *o);
    if (!o) {
        rd_reply_error(c, id, RW_E_INTERNAL, "out of memory");
        return;
    }
    o->net = c->net;
    o->c = c;
    o->serial = c->serial;
    o->id = id;
    o->m = json_incref(m);
    o->fn = fn;
    o->req.data = o;
    snprintf(o->path, sizeof o->path, "%s", s->path);
    rd_conn_defer(c);
    if (uv_queue_work(c->net->loop, &o->req, work_cb, after_work_cb) != 0) {
        /* cannot happen with a live loop: answered here, from the loop's connection */
        fn(s, id, m, &o->a);
        after_work_cb(&o->req, 0);
    }
}
