/* Reading queries on the thread pool (offload.h). At most half the cores
 * (one on two) run them at once, the rest wait in order: clients asking
 * big queries back to back must not take the cores from the loop, the
 * workers' reports and everyone else. */
#include <limits.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/offload.h"
#include "proto/msg.h"

#define READER_CACHE_KIB 1024 /* each reader's page cache: a pool thread holds one */

typedef struct offload {
    uv_work_t req;
    rd_net *net;
    rd_conn *c; /* the asker, found again by serial */
    uint64_t serial;
    long long id;
    json_t *m;
    rd_offload_fn *fn;
    rd_answer a;
    char *frame; /* the answer's frame, made on the pool thread */
    size_t len;
    char path[PATH_MAX];
    struct offload *next; /* waiting its turn */
} offload;

/* The queries waiting for a thread, in order, and those running. */
static struct {
    offload *head, *tail;
    int running, max;
} queue;

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

/* The answer as the frame to send: the reply, or the error instead. */
static void frame_answer(offload *o)
{
    json_t *m = o->a.reply ? o->a.reply
                           : rw_msg_error(o->id, o->a.code ? o->a.code : RW_E_INTERNAL,
                                          o->a.code ? o->a.msg : "no answer");
    o->a.reply = NULL;
    o->frame = rd_frame_of(m, &o->len);
}

static void work_cb(uv_work_t *req)
{
    offload *o = req->data;
    char err[PATH_MAX + 128];
    rd_store *s = reader_of(o->path, err, sizeof err);
    if (!s) {
        rd_answer_fail(&o->a, RW_E_INTERNAL, "cannot read the database: %s", err);
    } else {
        o->fn(s, o->id, o->m, &o->a);
        sqlite3_db_release_memory(s->db); /* a burst's pages go back */
    }
    frame_answer(o); /* here too: a big reply's JSON is not the loop's work */
}

static void start_next(void);

static void finish(offload *o)
{
    rd_conn *c = rd_conn_find(o->net, o->c, o->serial);
    if (c && o->frame) {
        rd_conn_send_frame(c, o->frame, o->len);
        o->frame = NULL;
    }
    rd_conn_undefer(c);
    free(o->frame);
    json_decref(o->m);
    free(o);
}

static void after_work_cb(uv_work_t *req, int status)
{
    (void)status; /* never cancelled: the pool runs every query it was given */
    queue.running--;
    finish(req->data);
    start_next();
}

/* Queries from the queue onto the pool, as threads are free for them; one
 * whose asker has gone is dropped unrun. */
static void start_next(void)
{
    while (queue.head && queue.running < queue.max) {
        offload *o = queue.head;
        queue.head = o->next;
        if (!queue.head)
            queue.tail = NULL;
        if (!rd_conn_find(o->net, o->c, o->serial)) {
            finish(o);
            continue;
        }
        if (uv_queue_work(o->net->loop, &o->req, work_cb, after_work_cb) == 0) {
            queue.running++;
            continue;
        }
        /* cannot happen with a live loop: answered with a reason */
        rd_answer_fail(&o->a, RW_E_INTERNAL, "the thread pool refused the query");
        frame_answer(o);
        finish(o);
    }
}

void rd_offload(rd_store *s, rd_conn *c, long long id, json_t *m, rd_offload_fn *fn)
{
    offload *o = calloc(1, sizeof *o);
    if (!o) {
        rd_reply_error(c, id, RW_E_INTERNAL, "out of memory");
        return;
    }
    if (!queue.max) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        queue.max = n > 2 ? (int)(n / 2) : 1;
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
    if (queue.tail)
        queue.tail->next = o;
    else
        queue.head = o;
    queue.tail = o;
    start_next();
}
