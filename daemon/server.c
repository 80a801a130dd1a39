/* Listeners and connections. Every connection starts unauthenticated and
 * must send hello first; after that it is a client (requests, watches) or a
 * worker (reports). A protocol error gets an error reply, then the
 * connection is shut down after the reply is written and freed in the close
 * callback — never inside the read callback that found the error. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "daemon/rd.h"
#include "proto/grid.h"
#include "proto/msg.h"
#include "proto/spec.h"

#define HELLO_FRAME_MAX 4096 /* before hello, nobody gets to send a big frame */

/* ------------------------------------------------------------------------ */
/* Writing */

typedef struct {
    uv_write_t req;
    rd_conn *c;
    size_t len;
    char *buf;
} wreq;

static void write_cb(uv_write_t *req, int status)
{
    wreq *w = (wreq *)req;
    w->c->pending -= w->len;
    free(w->buf);
    free(w);
    (void)status; /* a failed write shows up as a read error/EOF too */
}

void rd_conn_send(rd_conn *c, json_t *msg)
{
    if (!msg)
        return;
    if (c->closing) {
        json_decref(msg);
        return;
    }
    char *buf;
    size_t len;
    int rc = rw_frame_encode(msg, &buf, &len);
    long long id = rw_msg_id(msg);
    const char *type = json_string_value(json_object_get(msg, "type"));
    int is_reply = type && !strcmp(type, "ok") && id > 0;
    json_decref(msg);
    if (rc != 0) {
        rd_log("conn: reply too large to frame; dropped");
        /* the client waits for an answer: say why there is none */
        if (is_reply)
            rd_conn_send(c, rw_msg_error(id, RW_E_INTERNAL, "the reply is larger than a frame "
                                         "(1 MiB): ask for less at once"));
        return;
    }
    if (c->pending + len > RD_PENDING_MAX) {
        /* a client that does not read its watch stream: drop it, not us */
        free(buf);
        rd_log("conn: client not reading (%zu bytes queued); closing it", c->pending);
        rd_conn_close(c);
        return;
    }
    wreq *w = calloc(1, sizeof *w);
    if (!w) {
        free(buf);
        rd_conn_close(c);
        return;
    }
    w->c = c;
    w->len = len;
    w->buf = buf;
    uv_buf_t b = uv_buf_init(buf, (unsigned)len);
    c->pending += len;
    if (uv_write(&w->req, &c->h.stream, &b, 1, write_cb) != 0) {
        c->pending -= len;
        free(buf);
        free(w);
        rd_conn_close(c);
    }
}

/* ------------------------------------------------------------------------ */
/* Closing */

static void close_cb(uv_handle_t *h)
{
    rd_conn *c = h->data;
    rd_daemon *d = c->d;
    for (rd_conn **p = &d->conns; *p; p = &(*p)->next) {
        if (*p == c) {
            *p = c->next;
            break;
        }
    }
    rw_frame_reader_free(&c->rd);
    free(c);
    rd_shutdown_check(d);
}

static void shutdown_cb(uv_shutdown_t *req, int status)
{
    uv_handle_t *h = (uv_handle_t *)req->handle;
    free(req);
    if (!uv_is_closing(h))
        uv_close(h, close_cb);
}

rd_conn *rd_conn_find(rd_daemon *d, rd_conn *c, uint64_t serial)
{
    for (rd_conn *o = d->conns; o; o = o->next)
        if (o == c && o->serial == serial && !o->closing)
            return o;
    return NULL;
}

void rd_conn_close(rd_conn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    c->watch_kind = 0;
    if (c->role == RD_ROLE_WORKER)
        rd_worker_conn_lost(c);
    uv_read_stop(&c->h.stream);
    /* flush queued replies (the error that caused this), then close */
    uv_shutdown_t *req = malloc(sizeof *req);
    if (!req || uv_shutdown(req, &c->h.stream, shutdown_cb) != 0) {
        free(req);
        uv_close(&c->h.handle, close_cb);
    }
}

static void protocol_error(rd_conn *c, long long id, const char *code, const char *msg)
{
    /* the message may quote the peer's bytes: log a printable sample */
    char smp[160];
    size_t o = 0;
    for (size_t i = 0; msg[i] && o + 4 < sizeof smp; i++)
        smp[o++] = (msg[i] >= 0x20 && msg[i] < 0x7f) ? msg[i] : '?';
    smp[o] = '\0';
    rd_log("conn: protocol error (%s): %s; closing", code, smp);
    rd_conn_send(c, rw_msg_error(id, code, msg));
    rd_conn_close(c);
}

/* ------------------------------------------------------------------------ */
/* Reading */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    buf->base = malloc(65536);
    buf->len = buf->base ? 65536 : 0;
}

static int const_time_eq(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned char x = la != lb;
    for (size_t i = 0; i < la && i < lb; i++)
        x |= (unsigned char)(a[i] ^ b[i]);
    return x == 0;
}

static void handle_hello(rd_conn *c, json_t *m)
{
    rd_daemon *d = c->d;
    long long id = rw_msg_id(m);
    if (json_integer_value(json_object_get(m, "version")) != RW_PROTO_VERSION) {
        char e[96];
        snprintf(e, sizeof e, "protocol version %lld not supported (this daemon speaks %d)",
                 (long long)json_integer_value(json_object_get(m, "version")), RW_PROTO_VERSION);
        protocol_error(c, id, RW_E_VERSION, e);
        return;
    }
    if (c->is_tcp) {
        const char *tok = json_string_value(json_object_get(m, "token"));
        if (!tok || !d->token[0] || !const_time_eq(tok, d->token)) {
            protocol_error(c, id, RW_E_AUTH, "TCP connections need the daemon's token");
            return;
        }
    }
    const char *role = json_string_value(json_object_get(m, "role"));
    if (!strcmp(role, "client")) {
        c->role = RD_ROLE_CLIENT;
    } else if (!strcmp(role, "worker")) {
        char err[256];
        c->role = RD_ROLE_WORKER;
        if (rd_worker_hello(c, m, err, sizeof err) != 0) {
            c->role = RD_ROLE_NONE;
            protocol_error(c, id, RW_E_STATE, err);
            return;
        }
    } else {
        protocol_error(c, id, RW_E_BAD_MESSAGE, "hello: role: must be client or worker");
        return;
    }
    c->rd.max = RW_FRAME_MAX;
    json_t *r = rw_msg_new("ok", id);
    json_object_set_new(r, "version", json_integer(RW_PROTO_VERSION));
    json_object_set_new(r, "pid", json_integer(getpid()));
    rd_conn_send(c, r);
    if (c->role == RD_ROLE_WORKER)
        rd_schedule(d);
}

static void handle_frame(rd_conn *c, json_t *m)
{
    const char *type, *code;
    char err[512];
    int from = c->role == RD_ROLE_WORKER ? RW_FROM_WORKER
               : c->role == RD_ROLE_CLIENT ? RW_FROM_CLIENT
                                           : RW_FROM_CLIENT | RW_FROM_WORKER;
    if (rw_msg_check(m, from, &type, &code, err, sizeof err) != 0) {
        protocol_error(c, rw_msg_id(m), code, err);
        return;
    }
    if (c->role == RD_ROLE_NONE) {
        if (strcmp(type, "hello") != 0)
            protocol_error(c, rw_msg_id(m), RW_E_HELLO, "the first message must be hello");
        else
            handle_hello(c, m);
        return;
    }
    if (!strcmp(type, "hello")) {
        protocol_error(c, rw_msg_id(m), RW_E_STATE, "hello: already said");
        return;
    }
    if (c->role == RD_ROLE_WORKER)
        rd_worker_message(c, type, m);
    else if (rd_handle_client(c, type, m) != 0)
        rd_conn_close(c);
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    rd_conn *c = s->data;
    if (n < 0) {
        free(buf->base);
        rd_conn_close(c);
        return;
    }
    if (n == 0 || c->closing) {
        free(buf->base);
        return;
    }
    if (c->role == RD_ROLE_WORKER && c->worker)
        c->worker->last_seen = rd_mono();
    int fed = rw_frame_reader_feed(&c->rd, buf->base, (size_t)n);
    free(buf->base);
    if (fed != 0) {
        protocol_error(c, 0, RW_E_INTERNAL, "out of memory");
        return;
    }
    while (!c->closing) {
        json_t *m;
        char err[256];
        rw_frame_status st = rw_frame_reader_next(&c->rd, &m, err, sizeof err);
        if (st == RW_FRAME_NEED_MORE)
            break;
        if (st != RW_FRAME_OK) {
            protocol_error(c, 0, RW_E_FRAME, err);
            break;
        }
        handle_frame(c, m);
        json_decref(m);
    }
}

static void on_connection(uv_stream_t *srv, int status)
{
    rd_daemon *d = srv->data;
    if (status < 0)
        return;
    rd_conn *c = calloc(1, sizeof *c);
    if (!c)
        return;
    static uint64_t serials;
    c->d = d;
    c->serial = ++serials;
    c->opened = rd_mono();
    c->is_tcp = srv == (uv_stream_t *)&d->tcp_srv;
    rw_frame_reader_init(&c->rd, HELLO_FRAME_MAX);
    int rc = c->is_tcp ? uv_tcp_init(d->loop, &c->h.tcp) : uv_pipe_init(d->loop, &c->h.pipe, 0);
    if (rc != 0) {
        free(c);
        return;
    }
    c->h.handle.data = c;
    c->next = d->conns;
    d->conns = c;
    int nconns = 0;
    for (rd_conn *o = d->conns; o; o = o->next)
        nconns++;
    if (uv_accept(srv, &c->h.stream) != 0 || d->shutting_down || nconns > RD_CONNS_MAX) {
        c->closing = 1;
        uv_close(&c->h.handle, close_cb);
        return;
    }
    if (uv_read_start(&c->h.stream, alloc_cb, read_cb) != 0)
        rd_conn_close(c);
}

/* Connections that never said hello are dropped: a peer cannot hold a slot
 * (and a 4 KiB buffer) by connecting and waiting. */
void rd_conns_forgive(rd_daemon *d, double secs)
{
    for (rd_conn *c = d->conns; c; c = c->next)
        c->opened += secs;
}

void rd_conns_tick(rd_daemon *d)
{
    double now = rd_mono();
    for (rd_conn *c = d->conns; c; c = c->next)
        if (c->role == RD_ROLE_NONE && !c->closing && now - c->opened > RD_HELLO_TIMEOUT_S)
            protocol_error(c, 0, RW_E_HELLO, "no hello within 10 s");
}

/* ------------------------------------------------------------------------ */
/* Listeners */

static int read_token(rd_daemon *d, char *err, size_t errlen)
{
    const char *path = d->token_path;
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "--tcp needs a token in %s (mode 0600): %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || (st.st_mode & 077)) {
        fclose(f);
        snprintf(err, errlen, "%s: must be readable by its owner only (chmod 600)", path);
        return -1;
    }
    size_t n = fread(d->token, 1, sizeof d->token - 1, f);
    fclose(f);
    d->token[n] = '\0';
    d->token[strcspn(d->token, "\r\n")] = '\0';
    if (strlen(d->token) < 16) {
        snprintf(err, errlen, "%s: token must be at least 16 characters", path);
        return -1;
    }
    return 0;
}

int rd_server_listen(rd_daemon *d, const char *tcp_addr, char *err, size_t errlen)
{
    int rc;
    if (strlen(d->sock_path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        snprintf(err, errlen, "%s: socket path too long for a Unix socket", d->sock_path);
        return -1;
    }
    unlink(d->sock_path); /* stale from a killed daemon; the lock says we are alone */
    uv_pipe_init(d->loop, &d->unix_srv, 0);
    d->unix_srv.data = d;
    mode_t old = umask(077); /* no window where the socket is group/world accessible */
    rc = uv_pipe_bind(&d->unix_srv, d->sock_path);
    umask(old);
    if (rc == 0)
        rc = chmod(d->sock_path, 0600) == 0 ? 0 : -errno;
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&d->unix_srv, 64, on_connection);
    if (rc != 0) {
        snprintf(err, errlen, "%s: %s", d->sock_path, uv_strerror(rc));
        return -1;
    }
    if (tcp_addr) {
        if (read_token(d, err, errlen) != 0)
            return -1;
        char host[256];
        const char *colon = strrchr(tcp_addr, ':');
        int port = colon ? atoi(colon + 1) : 0;
        snprintf(host, sizeof host, "%.*s", colon ? (int)(colon - tcp_addr) : 0, tcp_addr);
        struct sockaddr_storage sa;
        if (port <= 0 || port > 65535 ||
            (uv_ip4_addr(host, port, (struct sockaddr_in *)&sa) != 0 &&
             uv_ip6_addr(host, port, (struct sockaddr_in6 *)&sa) != 0)) {
            snprintf(err, errlen, "--tcp %s: expected HOST:PORT with a numeric address", tcp_addr);
            return -1;
        }
        uv_tcp_init(d->loop, &d->tcp_srv);
        d->tcp_srv.data = d;
        d->tcp_on = 1;
        rc = uv_tcp_bind(&d->tcp_srv, (struct sockaddr *)&sa, 0);
        if (rc == 0)
            rc = uv_listen((uv_stream_t *)&d->tcp_srv, 64, on_connection);
        if (rc != 0) {
            snprintf(err, errlen, "--tcp %s: %s", tcp_addr, uv_strerror(rc));
            return -1;
        }
        rd_log("listening on tcp %s (token required)", tcp_addr);
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Client requests */

void rd_reply_error(rd_conn *c, long long id, const char *code, const char *fmt, ...)
{
    char msg[1400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    rd_conn_send(c, rw_msg_error(id, code, msg));
}

static json_t *col_json(sqlite3_stmt *st, int i)
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

/* A row as an object keyed by column names. */
static json_t *row_json(sqlite3_stmt *st)
{
    json_t *o = json_object();
    for (int i = 0; i < sqlite3_column_count(st); i++)
        json_object_set_new(o, sqlite3_column_name(st, i), col_json(st, i));
    return o;
}

/* At most max rows of a prepared statement, as objects; finalizes it. */
static json_t *rows_of(sqlite3_stmt *st, size_t max)
{
    json_t *a = json_array();
    while (st && json_array_size(a) < max && sqlite3_step(st) == SQLITE_ROW)
        json_array_append_new(a, row_json(st));
    if (st)
        sqlite3_finalize(st);
    return a;
}

static json_t *query_rows(rd_daemon *d, const char *sql, int64_t arg, size_t max)
{
    sqlite3_stmt *st = rd_db_prep(d, sql);
    if (st && sqlite3_bind_parameter_count(st) >= 1)
        sqlite3_bind_int64(st, 1, arg);
    return rows_of(st, max);
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

static int64_t lookup_name(rd_daemon *d, const char *sql, const char *name)
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
static int64_t resolve_in(rd_daemon *d, const char *s, char prefix, const char *table)
{
    char q[96];
    if ((s[0] == prefix && all_digits(s + 1)) || all_digits(s)) {
        snprintf(q, sizeof q, "SELECT id FROM %s WHERE id=?", table);
        return rd_db_int(d, q, strtoll(s + (s[0] == prefix), NULL, 10), 0);
    }
    snprintf(q, sizeof q, "SELECT id FROM %s WHERE name=? ORDER BY id DESC LIMIT 1", table);
    return lookup_name(d, q, s);
}

static int64_t resolve_job(rd_daemon *d, const char *s) { return resolve_in(d, s, 'j', "jobs"); }
static int64_t resolve_grid(rd_daemon *d, const char *s) { return resolve_in(d, s, 'g', "grids"); }

/* JOB|GRID: g-prefixed or a grid name is a grid, the rest a job. */
static int resolve_target(rd_daemon *d, const char *s, char *kind, int64_t *id)
{
    if (s[0] == 'g' && all_digits(s + 1)) {
        *kind = 'g';
        *id = resolve_grid(d, s);
    } else if ((*id = resolve_job(d, s)) != 0) {
        *kind = 'j';
    } else {
        *kind = 'g';
        *id = resolve_grid(d, s);
    }
    return *id ? 0 : -1;
}

/* The request's "target" field resolved to a job or a grid; -1 after
 * replying not_found. */
static int target_arg(rd_conn *c, long long id, json_t *m, char *kind, int64_t *tid)
{
    const char *t = json_string_value(json_object_get(m, "target"));
    if (resolve_target(c->d, t, kind, tid) != 0) {
        rd_reply_error(c, id, RW_E_NOT_FOUND, "no job or grid '%s'", t);
        return -1;
    }
    return 0;
}

static void req_submit(rd_conn *c, long long id, json_t *m)
{
    rd_daemon *d = c->d;
    const char *text = json_string_value(json_object_get(m, "text"));
    const char *origin = json_string_value(json_object_get(m, "origin"));
    const char *basedir = json_string_value(json_object_get(m, "basedir"));
    char err[1024];
    rw_grid g;
    if (rw_grid_parse(text, strlen(text), origin, basedir, &g, err, sizeof err) != 0) {
        rd_reply_error(c, id, RW_E_BAD_SPEC, "%s", err);
        return;
    }
    if (json_object_get(m, "priority"))
        g.priority = (int)json_integer_value(json_object_get(m, "priority"));
    int ndev = rd_ndevices(d);
    for (size_t i = 0; i < g.njobs; i++) {
        if (g.jobs[i].spec.devices > ndev) {
            rd_reply_error(c, id, RW_E_BAD_SPEC,
                           "%s: job %s: devices: asks for %d devices; this daemon has %d", origin,
                           g.jobs[i].name, g.jobs[i].spec.devices, ndev);
            rw_grid_free(&g);
            return;
        }
    }
    double now = rd_now();
    rd_db_exec(d, "BEGIN");
    int64_t gid = rd_db_next_id(d, "grids");
    sqlite3_stmt *st = gid ? rd_db_prep(d, "INSERT INTO grids(id, name, priority, origin, text, "
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
    st = ok ? rd_db_prep(d, "INSERT INTO jobs(id, grid_id, name, variant, seed, spec, devices, "
                            "priority, state, created) VALUES(?,?,?,?,?,?,?,?,'queued',?)")
            : NULL;
    for (size_t i = 0; ok && st && i < g.njobs; i++) {
        const rw_grid_job *j = &g.jobs[i];
        int64_t jid = rd_db_next_id(d, "jobs");
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
        rd_db_exec(d, "ROLLBACK");
        json_decref(jobs);
        rd_reply_error(c, id, RW_E_INTERNAL, "cannot store the grid: %s", sqlite3_errmsg(d->db));
        rw_grid_free(&g);
        return;
    }
    rd_db_exec(d, "COMMIT");
    char ev[256];
    snprintf(ev, sizeof ev, "grid g%lld %s submitted: %zu jobs", (long long)gid, g.name, g.njobs);
    rd_db_event(d, 0, "grid", ev);
    rd_log("%s", ev);
    json_t *r = rw_msg_new("ok", id);
    json_object_set_new(r, "grid", json_integer(gid));
    json_object_set_new(r, "name", json_string(g.name));
    json_object_set_new(r, "jobs", jobs);
    rd_conn_send(c, r);
    rw_grid_free(&g);
    rd_schedule(d);
}

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

/* A grid's jobs by state, and the time until they have all ended
 * (estimated; null where it cannot be yet). */
static json_t *grid_progress(rd_daemon *d, int64_t gid)
{
    json_t *p = json_pack("{sisisisisi}", "queued", 0, "running", 0, "done", 0, "failed", 0,
                          "cancelled", 0);
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
                      rd_grid_left(d, gid) : 0; /* ended */
    json_object_set_new(p, "left_s", left >= 0 ? json_real(left) : json_null());
    return p;
}

/* The newest 200 grids, each with its progress. */
/* In the replies a user reads the daemon's state from (ls, grids, status):
 * why nothing starts, while the database takes no writes. */
static void add_db_down(rd_daemon *d, json_t *r)
{
    if (!rd_db_down(d))
        return;
    char msg[1024];
    rd_db_down_msg(d, msg, sizeof msg);
    json_object_set_new(r, "db_down", json_string(msg));
}

static void req_grids(rd_conn *c, long long id)
{
    rd_daemon *d = c->d;
    json_t *rows = query_rows(d, "SELECT * FROM (SELECT id, name, priority, created FROM grids "
                                 "ORDER BY id DESC LIMIT 200) ORDER BY id", 0, 200);
    size_t i;
    json_t *v;
    json_array_foreach(rows, i, v)
        json_object_set_new(v, "progress",
                            grid_progress(d, json_integer_value(json_object_get(v, "id"))));
    json_t *r = rw_msg_new("ok", id);
    json_object_set_new(r, "grids", rows);
    add_db_down(d, r);
    rd_conn_send(c, r);
}

static void req_ls(rd_conn *c, long long id, json_t *m)
{
    rd_daemon *d = c->d;
    const char *gs = json_string_value(json_object_get(m, "grid"));
    int64_t gid = 0;
    if (gs && !(gid = resolve_grid(d, gs))) {
        rd_reply_error(c, id, RW_E_NOT_FOUND, "no grid '%s'", gs);
        return;
    }
    const char *state = json_string_value(json_object_get(m, "state"));
    if (state && strcmp(state, "queued") && strcmp(state, "running") && strcmp(state, "done") &&
        strcmp(state, "failed") && strcmp(state, "cancelled")) {
        rd_reply_error(c, id, RW_E_BAD_MESSAGE, "ls: state is queued, running, done, failed or "
                       "cancelled, not '%s'", state);
        return;
    }
    /* the newest 500 jobs (of that state): a reply stays far below the
     * frame limit */
    sqlite3_stmt *st = rd_db_prep(
        d, gid ? JOB_COLS_LS "WHERE j.grid_id=?1 AND (?2 IS NULL OR j.state=?2) ORDER BY j.id"
               : "SELECT * FROM (" JOB_COLS_LS "WHERE ?2 IS NULL OR j.state=?2 ORDER BY j.id "
                 "DESC LIMIT 500) ORDER BY id");
    if (st) {
        sqlite3_bind_int64(st, 1, gid);
        if (state)
            sqlite3_bind_text(st, 2, state, -1, SQLITE_TRANSIENT);
    }
    json_t *rows = rows_of(st, gid ? 1000 : 500);
    json_t *r = rw_msg_new("ok", id);
    json_object_set_new(r, "jobs", rows);
    if (gid)
        json_object_set_new(r, "progress", grid_progress(d, gid));
    add_db_down(d, r);
    rd_conn_send(c, r);
}

/* The request's "job" field resolved to a job id; 0 after replying
 * not_found. */
static int64_t job_arg(rd_conn *c, long long id, json_t *m)
{
    const char *js = json_string_value(json_object_get(m, "job"));
    int64_t job = resolve_job(c->d, js);
    if (!job)
        rd_reply_error(c, id, RW_E_NOT_FOUND, "no job '%s'", js);
    return job;
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

static void req_show(rd_conn *c, long long id, json_t *m)
{
    rd_daemon *d = c->d;
    int64_t job = job_arg(c, id, m);
    if (!job)
        return;
    json_t *rows = query_rows(d, JOB_COLS "WHERE j.id=?1", job, 1);
    json_t *r = rw_msg_new("ok", id);
    json_t *jo = json_array_get(rows, 0);
    json_object_set_new(r, "job", json_incref(jo));
    json_decref(rows);
    json_t *spec = query_rows(d, "SELECT spec, result FROM jobs WHERE id=?1", job, 1);
    json_object_set(r, "spec", json_object_get(json_array_get(spec, 0), "spec"));
    json_object_set(r, "result", json_object_get(json_array_get(spec, 0), "result"));
    json_decref(spec);
    json_object_set_new(r, "attempts",
                        query_rows(d, "SELECT id, worker, started, ended, outcome, error FROM "
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
                        rd_tb_run_dir(d, job, tb, sizeof tb) == 0 ? json_string(tb) : json_null());
    /* a running job's place in its training, as its watchers see it */
    for (rd_run *run = d->runs; run; run = run->next) {
        if (run->job != job || run->epochs_total <= 0)
            continue;
        double left = run->left_s - (rd_mono() - run->left_at);
        json_object_set_new(r, "progress",
                            json_pack("{sIso}", "epochs", (json_int_t)run->epochs_total, "left_s",
                                      run->left_s < 0 ? json_null() : json_real(left > 0 ? left : 0)));
    }
    rd_conn_send(c, r);
}

static const char *job_state_of(rd_daemon *d, int64_t job, char *out, size_t len)
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
 * folder's checkpoint (a cancelled job wrote one as it stopped). */
static void req_requeue(rd_conn *c, long long id, json_t *m)
{
    rd_daemon *d = c->d;
    char kind;
    int64_t tid;
    if (target_arg(c, id, m, &kind, &tid) != 0)
        return;
    if (d->shutting_down) {
        rd_reply_error(c, id, RW_E_STATE, "runawayd is shutting down");
        return;
    }
    json_t *rows = query_rows(d,
                              kind == 'g' ? "SELECT id FROM jobs WHERE grid_id=?1 AND state IN "
                                            "('failed','cancelled') ORDER BY id"
                                          : "SELECT id FROM jobs WHERE id=?1",
                              tid, 100000);
    size_t i;
    json_t *row;
    int n = 0;
    json_array_foreach(rows, i, row) n += rd_requeue_job(d, json_integer_value(json_object_get(row, "id")));
    json_decref(rows);
    if (kind == 'j' && n == 0) {
        char state[32];
        rd_reply_error(c, id, RW_E_STATE, "j%lld is %s: only a failed or cancelled job is requeued",
                       (long long)tid, job_state_of(d, tid, state, sizeof state));
        return;
    }
    json_t *r = rw_msg_new("ok", id);
    json_object_set_new(r, "requeued", json_integer(n));
    rd_conn_send(c, r);
    rd_schedule(d);
}

/* A new priority for the jobs of a job or grid that have not finished:
 * the queued ones take their new place in the queue (running ones are not
 * stopped; a requeued one keeps it). */
static void req_priority(rd_conn *c, long long id, json_t *m)
{
    rd_daemon *d = c->d;
    char kind;
    int64_t tid;
    if (target_arg(c, id, m, &kind, &tid) != 0)
        return;
    json_int_t prio = json_integer_value(json_object_get(m, "priority"));
    json_t *rows = query_rows(d,
                              kind == 'g' ? "SELECT id, priority FROM jobs WHERE grid_id=?1 AND "
                                            "state<>'done' ORDER BY id"
                                          : "SELECT id, priority FROM jobs WHERE id=?1 AND "
                                            "state<>'done'",
                              tid, 100000);
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row)
    {
        int64_t job = json_integer_value(json_object_get(row, "id"));
        sqlite3_stmt *st = rd_db_prep(d, "UPDATE jobs SET priority=? WHERE id=?");
        if (!st)
            continue;
        sqlite3_bind_int64(st, 1, prio);
        sqlite3_bind_int64(st, 2, job);
        rd_db_write(d, st, 0);
        char ev[96];
        snprintf(ev, sizeof ev, "priority %lld (was %lld)", (long long)prio,
                 (long long)json_integer_value(json_object_get(row, "priority")));
        rd_db_event(d, job, "state", ev);
    }
    if (kind == 'g') {
        sqlite3_stmt *st = rd_db_prep(d, "UPDATE grids SET priority=? WHERE id=?");
        if (st) {
            sqlite3_bind_int64(st, 1, prio);
            sqlite3_bind_int64(st, 2, tid);
            rd_db_write(d, st, 0);
        }
    }
    json_t *r = rw_msg_new("ok", id);
    json_object_set_new(r, "updated", json_integer((json_int_t)json_array_size(rows)));
    json_decref(rows);
    rd_conn_send(c, r);
    rd_schedule(d);
}

static void req_cancel(rd_conn *c, long long id, json_t *m)
{
    rd_daemon *d = c->d;
    char kind;
    int64_t tid;
    if (target_arg(c, id, m, &kind, &tid) != 0)
        return;
    json_t *rows = query_rows(d,
                              kind == 'g' ? "SELECT id FROM jobs WHERE grid_id=?1 AND state IN "
                                            "('queued','running')"
                                          : "SELECT id FROM jobs WHERE id=?1 AND state IN "
                                            "('queued','running')",
                              tid, 100000);
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row) rd_cancel_job(d, json_integer_value(json_object_get(row, "id")));
    json_t *r = rw_msg_new("ok", id);
    json_object_set_new(r, "cancelled", json_integer((json_int_t)json_array_size(rows)));
    json_decref(rows);
    rd_conn_send(c, r);
    rd_schedule(d);
}

/* Ended jobs and their files; refused whole while one has not ended. The
 * reply comes when the files are gone (remove.c). */
static void req_rm(rd_conn *c, long long id, json_t *m)
{
    char kind, err[1024];
    int64_t tid;
    const char *code;
    if (target_arg(c, id, m, &kind, &tid) != 0)
        return;
    if (rd_remove(c, id, kind, tid, &code, err, sizeof err) != 0)
        rd_reply_error(c, id, code, "%s", err);
}

static int watch_finished(rd_daemon *d, char kind, int64_t wid);

static void req_logs(rd_conn *c, long long id, json_t *m)
{
    rd_daemon *d = c->d;
    int64_t job = job_arg(c, id, m);
    if (!job)
        return;
    json_int_t tail = json_integer_value(json_object_get(m, "tail"));
    if (tail <= 0)
        tail = 200;
    sqlite3_stmt *st = rd_db_prep(d, "SELECT t, kind, text FROM (SELECT id, t, kind, text FROM "
                                     "events WHERE job_id=? ORDER BY id DESC LIMIT ?) ORDER BY id");
    json_t *lines = json_array();
    size_t bytes = 0;
    if (st) {
        sqlite3_bind_int64(st, 1, job);
        sqlite3_bind_int64(st, 2, tail);
        /* lines are at most 4 KiB; 512 KiB keeps the reply within a frame */
        while (bytes < 512 * 1024 && sqlite3_step(st) == SQLITE_ROW) {
            json_t *o = row_json(st);
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
        if (watch_finished(d, 'j', job)) {
            rd_conn_send(c, rw_msg_new("watch_end", id));
            return;
        }
        c->watch_kind = 'j';
        c->watch_id = job;
        c->watch_req = id;
        c->watch_logs = 1;
    }
}

/* Mean of L_align and L_uniform over a job's last 10 epochs, each epoch's
 * newest row (a resumed attempt re-reports epochs after its checkpoint). */
static int job_last10(rd_daemon *d, int64_t job, double *align, double *uniform)
{
    sqlite3_stmt *st = rd_db_prep(d,
        "SELECT align, uniform FROM metrics WHERE id IN (SELECT MAX(id) FROM metrics WHERE "
        "job_id=? AND kind='epoch' GROUP BY epoch) ORDER BY epoch DESC LIMIT 10");
    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, job);
    double sa = 0, su = 0;
    int n = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        sa += sqlite3_column_double(st, 0);
        su += sqlite3_column_double(st, 1);
        n++;
    }
    sqlite3_finalize(st);
    if (!n)
        return -1;
    *align = sa / n;
    *uniform = su / n;
    return 0;
}

/* A per-epoch metric (rank: the effective rank; w_cos_i: a linear
 * predictor's cosine with I) at the job's last epoch that measured it (its
 * newest row): where training left it. */
static int job_final(rd_daemon *d, int64_t job, const char *col, double *out)
{
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT %s FROM metrics WHERE job_id=? AND kind='epoch' AND %s IS "
             "NOT NULL ORDER BY epoch DESC, id DESC LIMIT 1", col, col);
    sqlite3_stmt *st = rd_db_prep(d, sql);
    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, job);
    int rc = sqlite3_step(st) == SQLITE_ROW ? 0 : -1;
    if (rc == 0)
        *out = sqlite3_column_double(st, 0);
    sqlite3_finalize(st);
    return rc;
}

static void mean_std(const double *x, int n, double *mean, double *std)
{
    double s = 0, ss = 0;
    for (int i = 0; i < n; i++)
        s += x[i];
    *mean = n ? s / n : NAN;
    for (int i = 0; i < n; i++)
        ss += (x[i] - *mean) * (x[i] - *mean);
    *std = n > 1 ? sqrt(ss / (n - 1)) : (n == 1 ? 0 : NAN); /* sample std over seeds */
}

/* Rows in a curves reply, over all its jobs: ~130 bytes each, so a reply
 * stays far below the frame limit; longer curves are thinned evenly. */
#define CURVE_ROWS_MAX 4000

/* One job's curve: per epoch (its newest row), [epoch, loss, align,
 * uniform, collapse, knn, rank, linear, w_cos_i], at most `cap` rows (first
 * and last kept). */
static json_t *job_curve(rd_daemon *d, int64_t job, size_t cap)
{
    json_t *all = json_array();
    sqlite3_stmt *st = rd_db_prep(d,
        "SELECT epoch, loss, align, uniform, collapse, knn, rank, linear, w_cos_i FROM metrics "
        "WHERE id IN "
        "(SELECT "
        "MAX(id) FROM metrics WHERE job_id=? AND kind='epoch' GROUP BY epoch) ORDER BY epoch");
    if (st) {
        sqlite3_bind_int64(st, 1, job);
        while (sqlite3_step(st) == SQLITE_ROW) {
            json_t *row = json_array();
            for (int i = 0; i < 9; i++)
                json_array_append_new(row, col_json(st, i));
            json_array_append_new(all, row);
        }
        sqlite3_finalize(st);
    }
    size_t n = json_array_size(all);
    if (n <= cap)
        return all;
    json_t *thin = json_array();
    for (size_t k = 0; k < cap; k++)
        json_array_append(thin, json_array_get(all, cap > 1 ? k * (n - 1) / (cap - 1) : n - 1));
    json_decref(all);
    return thin;
}

/* ------------------------------------------------------------------------ */
/* Several grids or jobs as one: `table` and `curves` merge their jobs by
 * variant name (seeds added in a later grid, a variant trained later),
 * after checking that each variant is one experiment. */

typedef struct target_set {
    size_t n; /* targets, repeats dropped */
    char kind[RW_TARGETS_MAX];
    int64_t id[RW_TARGETS_MAX];
    char *set; /* their jobs' ids as JSON text, the ?1 of IN_SET */
} target_set;

#define IN_SET "id IN (SELECT value FROM json_each(?1))"

static const char *jstr(const json_t *o, const char *key)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v ? v : "";
}

static void target_set_free(target_set *t)
{
    free(t->set);
    memset(t, 0, sizeof *t);
}

/* The request's targets: `one` (a string) or `many` (a list), exactly one of
 * the two; grids_only: a job is not one. -1 after replying. */
static int targets_arg(rd_conn *c, long long id, json_t *m, const char *one, const char *many,
                       int grids_only, target_set *t)
{
    rd_daemon *d = c->d;
    memset(t, 0, sizeof *t);
    json_t *o = json_object_get(m, one), *l = json_object_get(m, many);
    if (!o == !l) {
        rd_reply_error(c, id, RW_E_BAD_MESSAGE, "%s: give %s or %s, not %s",
                       json_string_value(json_object_get(m, "type")), one, many,
                       o ? "both" : "neither");
        return -1;
    }
    json_t *names = o ? json_pack("[O]", o) : json_incref(l);
    size_t i;
    json_t *v;
    int rc = 0;
    json_t *jobs = json_array();
    json_array_foreach(names, i, v)
    {
        const char *s = json_string_value(v);
        char kind = 'g';
        int64_t tid = grids_only ? resolve_grid(d, s) : 0;
        if (grids_only ? !tid : resolve_target(d, s, &kind, &tid) != 0) {
            rd_reply_error(c, id, RW_E_NOT_FOUND,
                           grids_only ? "no grid '%s'" : "no job or grid '%s'", s);
            rc = -1;
            break;
        }
        size_t k = 0;
        while (k < t->n && !(t->kind[k] == kind && t->id[k] == tid))
            k++;
        if (k < t->n)
            continue;
        t->kind[t->n] = kind;
        t->id[t->n++] = tid;
        json_t *ids = query_rows(d, kind == 'g' ? "SELECT id FROM jobs WHERE grid_id=?1 ORDER BY id"
                                                : "SELECT id FROM jobs WHERE id=?1",
                                 tid, RW_GRID_JOBS_MAX);
        size_t k2;
        json_t *r;
        json_array_foreach(ids, k2, r) json_array_append(jobs, json_object_get(r, "id"));
        json_decref(ids);
    }
    json_decref(names);
    if (rc == 0 && !(t->set = json_dumps(jobs, JSON_COMPACT))) {
        rd_reply_error(c, id, RW_E_INTERNAL, "out of memory");
        rc = -1;
    }
    json_decref(jobs);
    if (rc != 0)
        target_set_free(t);
    return rc;
}

/* Rows of sql over a target set (?1), as query_rows. */
static json_t *set_rows(rd_daemon *d, const char *sql, const target_set *t, size_t max)
{
    sqlite3_stmt *st = rd_db_prep(d, sql);
    if (st)
        sqlite3_bind_text(st, 1, t->set, -1, SQLITE_TRANSIENT);
    return rows_of(st, max);
}

/* A stored job's spec as what it trains, its seed and the fields that do
 * not change its numbers (threads, logging, checkpoints) set aside, as
 * "a.b: value" lines. Their number, or -1. */
static int job_trained_fields(rd_daemon *d, int64_t job, char (*out)[RW_SPEC_FIELD_MAX], int max)
{
    sqlite3_stmt *st = rd_db_prep(d, "SELECT spec FROM jobs WHERE id=?");
    rw_spec *s = malloc(sizeof *s), *t = malloc(sizeof *t), *def = malloc(sizeof *def);
    int n = -1;
    if (st && s && t && def) {
        sqlite3_bind_int64(st, 1, job);
        char err[512];
        const char *text = sqlite3_step(st) == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0)
                                                           : NULL;
        if (text && rw_spec_parse(text, strlen(text), "stored spec", "", s, err, sizeof err) == 0) {
            rw_spec_defaults(def);
            rw_spec_trained(s, t);
            t->seed = 0;
            t->threads = def->threads;
            t->data.loader_threads = def->data.loader_threads;
            t->log = def->log;
            t->checkpoint = def->checkpoint;
            n = rw_spec_flatten(t, out, max);
        }
    }
    if (st)
        sqlite3_finalize(st);
    free(s);
    free(t);
    free(def);
    return n;
}

/* Whether the variants of a merged set are each one experiment: one
 * variant's jobs from several grids train the same spec but for the seed,
 * and no seed of it counts twice (two finished jobs). 0, or -1 with why. */
static int targets_disagree(rd_daemon *d, const target_set *t, char *why, size_t len)
{
    enum { MAXF = 256 };
    json_t *firsts = set_rows(d, "SELECT variant, grid_id, MIN(id) AS id FROM jobs WHERE " IN_SET
                                 " GROUP BY variant, grid_id ORDER BY variant, MIN(id)",
                              t, RW_TARGETS_MAX * RW_GRID_JOBS_MAX);
    char(*a)[RW_SPEC_FIELD_MAX] = calloc(MAXF, RW_SPEC_FIELD_MAX);
    char(*b)[RW_SPEC_FIELD_MAX] = calloc(MAXF, RW_SPEC_FIELD_MAX);
    int rc = 0, na = 0;
    const json_t *ref = NULL;
    size_t i;
    json_t *v;
    if (!a || !b) {
        snprintf(why, len, "out of memory");
        rc = -1;
    }
    json_array_foreach(firsts, i, v)
    {
        if (rc)
            break;
        if (!ref || strcmp(jstr(ref, "variant"), jstr(v, "variant"))) {
            ref = v;
            na = job_trained_fields(d, json_integer_value(json_object_get(v, "id")), a, MAXF);
            continue;
        }
        int nb = job_trained_fields(d, json_integer_value(json_object_get(v, "id")), b, MAXF);
        int k = 0;
        while (k < na && k < nb && !strcmp(a[k], b[k]))
            k++;
        if (na < 0 || nb < 0 || k < na || k < nb) {
            long long ga = json_integer_value(json_object_get(ref, "grid_id")),
                      gb = json_integer_value(json_object_get(v, "grid_id")),
                      ja = json_integer_value(json_object_get(ref, "id")),
                      jb = json_integer_value(json_object_get(v, "id"));
            char what[3 * RW_SPEC_FIELD_MAX] = "its stored spec cannot be read";
            if (na >= 0 && nb >= 0 && k < na && k < nb) {
                char *ca = strchr(a[k], ':'), *cb = strchr(b[k], ':'), va[RW_SPEC_FIELD_MAX],
                     vb[RW_SPEC_FIELD_MAX];
                rw_spec_value_short(ca + 1, va, sizeof va);
                rw_spec_value_short(cb + 1, vb, sizeof vb);
                snprintf(what, sizeof what, "%.*s is %s in g%lld (j%lld), %s in g%lld (j%lld)",
                         (int)(ca - a[k]), a[k], va, ga, ja, vb, gb, jb);
            }
            snprintf(why, len, "variant '%s' is not the same experiment in g%lld and g%lld: %s; "
                     "table them apart", jstr(v, "variant"), ga, gb, what);
            rc = -1;
        }
    }
    json_decref(firsts);
    free(a);
    free(b);
    if (rc)
        return rc;
    json_t *twice = set_rows(d, "SELECT variant, seed, GROUP_CONCAT('j' || id, ' and ') AS ids "
                                "FROM jobs WHERE " IN_SET " AND state='done' GROUP BY variant, seed "
                                "HAVING COUNT(*) > 1 ORDER BY MIN(id) LIMIT 1",
                             t, 1);
    if (json_array_size(twice)) {
        const json_t *r = json_array_get(twice, 0);
        snprintf(why, len, "variant '%s' seed %lld finished twice (%s): its numbers would count "
                 "twice; leave one of them out (rm it, or table the grids apart)",
                 jstr(r, "variant"), (long long)json_integer_value(json_object_get(r, "seed")),
                 jstr(r, "ids"));
        rc = -1;
    }
    json_decref(twice);
    return rc;
}

/* The target's jobs: id, name, variant, seed, state. */
static json_t *target_jobs(rd_daemon *d, char kind, int64_t tid)
{
    return query_rows(d,
                      kind == 'g' ? "SELECT id, name, variant, seed, state FROM jobs "
                                    "WHERE grid_id=?1 ORDER BY id"
                                  : "SELECT id, name, variant, seed, state FROM jobs WHERE id=?1",
                      tid, RW_GRID_JOBS_MAX);
}

/* The training curves of a job, or of every job of a grid. */
static void req_curves(rd_conn *c, long long id, json_t *m)
{
    rd_daemon *d = c->d;
    target_set t;
    if (targets_arg(c, id, m, "target", "targets", 0, &t) != 0)
        return;
    int any_grid = 0;
    for (size_t k = 0; k < t.n; k++)
        any_grid |= t.kind[k] == 'g';
    char why[1024];
    /* grouped by variant where a grid is among them: each must be one */
    if (t.n > 1 && any_grid && targets_disagree(d, &t, why, sizeof why) != 0) {
        rd_reply_error(c, id, RW_E_STATE, "%s", why);
        target_set_free(&t);
        return;
    }
    json_t *jobs = set_rows(d, "SELECT id, name, variant, seed, state FROM jobs WHERE " IN_SET
                               " ORDER BY id", &t, RW_TARGETS_MAX * RW_GRID_JOBS_MAX);
    /* a grid's worth of curves fits in a reply, not many */
    if (json_array_size(jobs) > RW_GRID_JOBS_MAX) {
        rd_reply_error(c, id, RW_E_STATE, "%zu jobs are more than one plot draws (at most %d)",
                       json_array_size(jobs), RW_GRID_JOBS_MAX);
        json_decref(jobs);
        target_set_free(&t);
        return;
    }
    size_t njobs = json_array_size(jobs), cap = CURVE_ROWS_MAX / (njobs ? njobs : 1), i;
    if (cap < 2)
        cap = 2;
    json_t *j;
    json_array_foreach(jobs, i, j) json_object_set_new(
        j, "epochs", job_curve(d, json_integer_value(json_object_get(j, "id")), cap));
    json_t *r = rw_msg_new("ok", id);
    json_object_set_new(r, "kind", json_string(any_grid ? "grid" : "job"));
    /* its name; several targets: each with its id, joined by " + " */
    char name[1024] = "";
    for (size_t k = 0; k < t.n; k++) {
        json_t *row = query_rows(d, t.kind[k] == 'g' ? "SELECT name FROM grids WHERE id=?1"
                                                     : "SELECT name FROM jobs WHERE id=?1",
                                 t.id[k], 1);
        size_t at = strlen(name);
        if (t.n == 1)
            snprintf(name, sizeof name, "%s", jstr(json_array_get(row, 0), "name"));
        else
            snprintf(name + at, sizeof name - at, "%s%c%lld %s", k ? " + " : "", t.kind[k],
                     (long long)t.id[k], jstr(json_array_get(row, 0), "name"));
        json_decref(row);
    }
    json_object_set_new(r, "name", json_string(name));
    if (t.n == 1)
        json_object_set_new(r, "target_id", json_integer(t.id[0]));
    json_object_set_new(r, "columns", json_pack("[sssssssss]", "epoch", "loss", "align", "uniform",
                                                 "collapse", "knn", "rank", "linear", "w_cos_i"));
    json_object_set_new(r, "jobs", jobs);
    target_set_free(&t);
    rd_conn_send(c, r);
}

/* Every metric of a job or a grid, for export: per job, the newest row of
 * each epoch (kind epoch) or step (kind step), as curves and table count
 * them, in pages ordered by (job, epoch or step) after the cursor
 * (after_job, after). */
static void req_metrics(rd_conn *c, long long id, json_t *m)
{
    rd_daemon *d = c->d;
    char kind;
    int64_t tid;
    if (target_arg(c, id, m, &kind, &tid) != 0)
        return;
    const char *mk = json_string_value(json_object_get(m, "kind"));
    if (strcmp(mk, "epoch") && strcmp(mk, "step")) {
        rd_reply_error(c, id, RW_E_BAD_MESSAGE, "metrics: kind is epoch or step, not '%s'", mk);
        return;
    }
    const char *key = mk; /* a fixed column name: epoch or step */
    json_t *jl = json_object_get(m, "limit"), *ja = json_object_get(m, "after"),
           *jj = json_object_get(m, "after_job");
    int64_t limit = jl ? json_integer_value(jl) : RW_METRICS_PAGE_MAX;
    int64_t after = ja ? json_integer_value(ja) : -1, after_job = jj ? json_integer_value(jj) : 0;
    char sql[1024];
    snprintf(sql, sizeof sql,
             "SELECT job_id, epoch, step, loss, align, uniform, collapse, knn, pairs_per_s, tau, "
             "lr, rank, linear, w_cos_i, w_asym FROM metrics WHERE id IN (SELECT MAX(id) FROM metrics WHERE job_id IN (%s) "
             "AND kind=?2 GROUP BY job_id, %s) AND (job_id > ?3 OR (job_id = ?3 AND %s > ?4)) "
             "ORDER BY job_id, %s LIMIT ?5",
             kind == 'g' ? "SELECT id FROM jobs WHERE grid_id=?1" : "?1", key, key, key);
    sqlite3_stmt *st = rd_db_prep(d, sql);
    if (!st) {
        rd_reply_error(c, id, RW_E_INTERNAL, "metrics: %s", sqlite3_errmsg(d->db));
        return;
    }
    sqlite3_bind_int64(st, 1, tid);
    sqlite3_bind_text(st, 2, mk, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, after_job);
    sqlite3_bind_int64(st, 4, after);
    sqlite3_bind_int64(st, 5, limit + 1); /* one more says whether there is more */
    json_t *rows = json_array();
    int more = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        if ((int64_t)json_array_size(rows) == limit) {
            more = 1;
            break;
        }
        json_t *row = json_array();
        for (int i = 0; i < sqlite3_column_count(st); i++)
            json_array_append_new(row, col_json(st, i));
        json_array_append_new(rows, row);
    }
    sqlite3_finalize(st);
    json_t *r = rw_msg_new("ok", id);
    json_object_set_new(r, "columns",
                        json_pack("[sssssssssssssss]", "job", "epoch", "step", "loss", "align",
                                  "uniform", "collapse", "knn", "pairs_per_s", "tau", "lr", "rank",
                                  "linear", "w_cos_i", "w_asym"));
    json_object_set_new(r, "rows", rows);
    json_object_set_new(r, "more", json_boolean(more));
    /* who the rows belong to, once */
    if (!jj)
        json_object_set_new(r, "jobs", target_jobs(d, kind, tid));
    rd_conn_send(c, r);
}

/* The random baseline: a variant whose spec trains nothing (optim.epochs
 * 0), the row the paper compares every other with. */
static int variant_is_baseline(rd_daemon *d, const target_set *t, const char *variant)
{
    sqlite3_stmt *st = rd_db_prep(d, "SELECT spec FROM jobs WHERE " IN_SET " AND variant=?2 "
                                     "ORDER BY id LIMIT 1");
    if (!st)
        return 0;
    sqlite3_bind_text(st, 1, t->set, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, variant, -1, SQLITE_TRANSIENT);
    int yes = 0;
    rw_spec *spec = malloc(sizeof *spec);
    if (spec && sqlite3_step(st) == SQLITE_ROW) {
        const char *text = (const char *)sqlite3_column_text(st, 0);
        char err[512];
        yes = text && rw_spec_parse(text, strlen(text), "stored spec", "", spec, err,
                                    sizeof err) == 0 && spec->optim.epochs == 0;
    }
    free(spec);
    sqlite3_finalize(st);
    return yes;
}

/* Marks, as the paper's Table 1 highlights them, the rows worse than the
 * random baseline's (the first baseline row with numbers): L_uniform(f)
 * higher (less spread than an untrained encoder) and linear accuracy lower. */
static void mark_worse_than_baseline(json_t *rows, json_t *reply)
{
    const json_t *base = NULL;
    size_t i;
    json_t *v;
    json_array_foreach(rows, i, v) if (!base && json_is_true(json_object_get(v, "baseline")) &&
                                       json_integer_value(json_object_get(v, "n")) > 0) base = v;
    if (!base)
        return;
    json_object_set(reply, "baseline", json_object_get(base, "variant"));
    const struct {
        const char *mean, *flag;
        int higher_is_worse;
    } cmp[] = {{"uniform_mean", "uniform_worse", 1}, {"acc_mean", "acc_worse", 0}};
    json_array_foreach(rows, i, v)
    {
        if (json_is_true(json_object_get(v, "baseline")))
            continue;
        for (size_t k = 0; k < sizeof cmp / sizeof *cmp; k++) {
            const json_t *a = json_object_get(v, cmp[k].mean), *b = json_object_get(base, cmp[k].mean);
            if (!json_is_number(a) || !json_is_number(b))
                continue;
            double x = json_number_value(a), y = json_number_value(b);
            json_object_set_new(v, cmp[k].flag, json_boolean(cmp[k].higher_is_worse ? x > y : x < y));
        }
    }
}

static void req_table(rd_conn *c, long long id, json_t *m)
{
    rd_daemon *d = c->d;
    target_set t;
    if (targets_arg(c, id, m, "grid", "grids", 1, &t) != 0)
        return;
    char why[1024];
    if (t.n > 1 && targets_disagree(d, &t, why, sizeof why) != 0) {
        rd_reply_error(c, id, RW_E_STATE, "%s", why);
        target_set_free(&t);
        return;
    }
    json_t *vars = set_rows(d, "SELECT variant, COUNT(*) AS jobs, SUM(state='done') AS done "
                               "FROM jobs WHERE " IN_SET " GROUP BY variant ORDER BY MIN(id)",
                            &t, 1024);
    size_t i;
    json_t *v;
    json_array_foreach(vars, i, v)
    {
        const char *name = json_string_value(json_object_get(v, "variant"));
        sqlite3_stmt *st = rd_db_prep(d, "SELECT id, linear_acc FROM jobs WHERE " IN_SET " AND "
                                         "variant=?2 AND state='done' ORDER BY id");
        double al[1024], un[1024], acc[1024], rk[1024], wi[1024];
        int n = 0, nacc = 0, nrk = 0, nwi = 0;
        while (st) {
            sqlite3_bind_text(st, 1, t.set, -1, SQLITE_TRANSIENT);
            sqlite3_bind_text(st, 2, name, -1, SQLITE_TRANSIENT);
            while (n < 1024 && sqlite3_step(st) == SQLITE_ROW) {
                if (job_final(d, sqlite3_column_int64(st, 0), "rank", &rk[nrk]) == 0)
                    nrk++;
                if (job_final(d, sqlite3_column_int64(st, 0), "w_cos_i", &wi[nwi]) == 0)
                    nwi++;
                if (job_last10(d, sqlite3_column_int64(st, 0), &al[n], &un[n]) == 0)
                    n++;
                if (sqlite3_column_type(st, 1) != SQLITE_NULL)
                    acc[nacc++] = sqlite3_column_double(st, 1);
            }
            sqlite3_finalize(st);
            break;
        }
        double mu, sd;
        json_object_set_new(v, "n", json_integer(n));
        mean_std(al, n, &mu, &sd);
        json_object_set_new(v, "align_mean", rw_json_num(mu));
        json_object_set_new(v, "align_std", rw_json_num(sd));
        mean_std(un, n, &mu, &sd);
        json_object_set_new(v, "uniform_mean", rw_json_num(mu));
        json_object_set_new(v, "uniform_std", rw_json_num(sd));
        mean_std(acc, nacc, &mu, &sd);
        json_object_set_new(v, "acc_n", json_integer(nacc));
        json_object_set_new(v, "acc_mean", rw_json_num(mu));
        json_object_set_new(v, "acc_std", rw_json_num(sd));
        mean_std(rk, nrk, &mu, &sd);
        json_object_set_new(v, "rank_n", json_integer(nrk));
        json_object_set_new(v, "rank_mean", rw_json_num(mu));
        json_object_set_new(v, "rank_std", rw_json_num(sd));
        if (nwi) { /* a linear predictor's variant */
            mean_std(wi, nwi, &mu, &sd);
            json_object_set_new(v, "w_cos_i_n", json_integer(nwi));
            json_object_set_new(v, "w_cos_i_mean", rw_json_num(mu));
            json_object_set_new(v, "w_cos_i_std", rw_json_num(sd));
        }
        json_object_set_new(v, "baseline", json_boolean(variant_is_baseline(d, &t, name)));
    }
    json_t *r = rw_msg_new("ok", id);
    mark_worse_than_baseline(vars, r);
    json_object_set_new(r, "grid", json_integer(t.id[0]));
    json_t *grids = json_array();
    for (size_t k = 0; k < t.n; k++) {
        json_t *gr = query_rows(d, "SELECT id, name FROM grids WHERE id=?1", t.id[k], 1);
        json_array_append(grids, json_array_get(gr, 0));
        if (k == 0)
            json_object_set(r, "name", json_object_get(json_array_get(gr, 0), "name"));
        json_decref(gr);
    }
    json_object_set_new(r, "grids", grids);
    json_object_set_new(r, "rows", vars);
    target_set_free(&t);
    rd_conn_send(c, r);
}

/* For a client that cannot read the run folder (another host): the
 * checkpoint's bytes from `offset`, at most `most`, as hex in
 * `data`, with `size` and `version` (inode, mtime, size: a checkpoint
 * replaced between two chunks shows as another version). -1 after
 * replying. */
static int export_chunk(rd_conn *c, long long id, const char *path, int64_t offset, size_t most,
                        json_t *r)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        rd_reply_error(c, id, RW_E_INTERNAL, "%s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (offset > st.st_size) {
        rd_reply_error(c, id, RW_E_BAD_MESSAGE, "export: offset %lld is past the checkpoint's %lld "
                       "bytes", (long long)offset, (long long)st.st_size);
        close(fd);
        return -1;
    }
    size_t want = (size_t)(st.st_size - offset) < most ? (size_t)(st.st_size - offset) : most;
    unsigned char *buf = malloc(want ? want : 1);
    char *hex = malloc(2 * want + 1);
    ssize_t got = buf && hex ? pread(fd, buf, want, offset) : -1;
    int e = errno;
    close(fd);
    if (got != (ssize_t)want) {
        rd_reply_error(c, id, RW_E_INTERNAL, "%s: %s", path,
                       got < 0 ? strerror(e) : "shorter than it was a moment ago");
        free(buf);
        free(hex);
        return -1;
    }
    rw_hex_encode(buf, want, hex);
    char version[96];
    rw_file_version(&st, version, sizeof version);
    json_object_set_new(r, "size", json_integer(st.st_size));
    json_object_set_new(r, "version", json_string(version));
    json_object_set_new(r, "data", json_string(hex));
    free(buf);
    free(hex);
    return 0;
}

static void req_export(rd_conn *c, long long id, json_t *m)
{
    rd_daemon *d = c->d;
    int64_t job = job_arg(c, id, m);
    if (!job)
        return;
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/runs/%lld/checkpoint.safetensors", d->state_dir, (long long)job);
    struct stat st;
    if (access(path, R_OK) != 0 || stat(path, &st) != 0) {
        rd_reply_error(c, id, RW_E_STATE, "job j%lld has no checkpoint yet (%s)", (long long)job,
                       path);
        return;
    }
    json_t *r = rw_msg_new("ok", id);
    json_object_set_new(r, "checkpoint", json_string(path));
    char version[96];
    rw_file_version(&st, version, sizeof version);
    json_object_set_new(r, "version", json_string(version));
    const json_t *off = json_object_get(m, "offset"), *len = json_object_get(m, "length");
    if (off && export_chunk(c, id, path, json_integer_value(off),
                            len ? (size_t)json_integer_value(len) : RW_EXPORT_CHUNK, r) != 0) {
        json_decref(r);
        return;
    }
    rd_conn_send(c, r);
}

static void req_status(rd_conn *c, long long id)
{
    rd_daemon *d = c->d;
    json_t *r = rw_msg_new("ok", id);
    json_object_set_new(r, "pid", json_integer(getpid()));
    json_object_set_new(r, "version", json_integer(RW_PROTO_VERSION));
    json_object_set_new(r, "state_dir", json_string(d->state_dir));
    json_object_set_new(r, "tensorboard", d->tb_dir[0] ? json_string(d->tb_dir) : json_null());
    if (d->notify_cmd)
        json_object_set_new(r, "notify", json_string(d->notify_cmd));
    json_object_set_new(r, "devices", json_integer(rd_ndevices(d)));
    json_object_set_new(r, "workers", json_integer(d->nworkers));
    json_object_set_new(r, "jobs", query_rows(d, "SELECT state, COUNT(*) AS n FROM jobs GROUP BY "
                                                 "state ORDER BY state", 0, 16));
    json_object_set_new(r, "shutting_down", json_boolean(d->shutting_down));
    add_db_down(d, r);
    rd_conn_send(c, r);
}

/* All jobs of the watched target finished? */
static int watch_finished(rd_daemon *d, char kind, int64_t wid)
{
    return rd_db_int(d,
                     kind == 'g' ? "SELECT COUNT(*) FROM jobs WHERE grid_id=? AND state IN "
                                   "('queued','running')"
                                 : "SELECT COUNT(*) FROM jobs WHERE id=? AND state IN "
                                   "('queued','running')",
                     wid, 1) == 0;
}

static void req_watch(rd_conn *c, long long id, json_t *m)
{
    rd_daemon *d = c->d;
    char kind;
    int64_t tid;
    if (target_arg(c, id, m, &kind, &tid) != 0)
        return;
    json_t *r = rw_msg_new("ok", id);
    json_object_set_new(r, "kind", json_string(kind == 'g' ? "grid" : "job"));
    json_object_set_new(r, "target", json_integer(tid));
    json_object_set_new(r, "jobs", query_rows(d, kind == 'g' ? JOB_COLS "WHERE j.grid_id=?1 ORDER BY j.id"
                                                               : JOB_COLS "WHERE j.id=?1",
                                              tid, 1000));
    rd_conn_send(c, r);
    if (watch_finished(d, kind, tid)) {
        rd_conn_send(c, rw_msg_new("watch_end", id));
        return;
    }
    c->watch_kind = kind;
    c->watch_id = tid;
    c->watch_req = id;
    c->watch_logs = 0;
}

void rd_watch_job_event(rd_daemon *d, int64_t job, json_t *ev)
{
    int64_t grid = 0;
    for (rd_conn *c = d->conns; c; c = c->next) {
        if (!c->watch_kind || c->closing)
            continue;
        if (c->watch_kind == 'g' && !grid)
            grid = rd_db_int(d, "SELECT grid_id FROM jobs WHERE id=?", job, -1);
        if (c->watch_logs && strcmp(json_string_value(json_object_get(ev, "kind")), "job"))
            continue; /* a log follower: no metrics */
        if ((c->watch_kind == 'j' && c->watch_id == job) ||
            (c->watch_kind == 'g' && c->watch_id == grid)) {
            json_t *e = json_deep_copy(ev);
            json_object_set_new(e, "id", json_integer(c->watch_req));
            rd_conn_send(c, e);
        }
    }
    json_decref(ev);
}

void rd_watch_daemon(rd_daemon *d, const char *text)
{
    for (rd_conn *c = d->conns; c; c = c->next) {
        if (!c->watch_kind || c->closing)
            continue;
        json_t *e = rw_msg_new("event", c->watch_req);
        json_object_set_new(e, "kind", json_string("daemon"));
        json_object_set_new(e, "text", json_string(text));
        rd_conn_send(c, e);
    }
}

void rd_watch_job_log(rd_daemon *d, int64_t job, double t, const char *kind, const char *text)
{
    for (rd_conn *c = d->conns; c; c = c->next) {
        if (!c->watch_logs || c->closing || c->watch_kind != 'j' || c->watch_id != job)
            continue;
        json_t *e = rw_msg_new("event", c->watch_req);
        json_object_set_new(e, "kind", json_string("log"));
        json_object_set_new(e, "line", json_pack("{sfssss}", "t", t, "kind", kind, "text", text));
        rd_conn_send(c, e);
    }
}

void rd_watch_job_state(rd_daemon *d, int64_t job, const char *why)
{
    json_t *rows = query_rows(d, JOB_COLS "WHERE j.id=?1", job, 1);
    json_t *ev = rw_msg_new("event", -1);
    json_object_set_new(ev, "kind", json_string("job"));
    json_object_set_new(ev, "job", json_incref(json_array_get(rows, 0)));
    json_decref(rows);
    if (why) /* what moved it: an attempt's start, a requeue, a yield */
        json_object_set_new(ev, "why", json_string(why));
    /* a grid's watchers also learn where the grid stands */
    int64_t grid = rd_db_int(d, "SELECT grid_id FROM jobs WHERE id=?", job, 0);
    int grid_watched = 0;
    for (rd_conn *c = d->conns; c; c = c->next)
        grid_watched |= c->watch_kind == 'g' && c->watch_id == grid && !c->closing;
    if (grid_watched)
        json_object_set_new(ev, "grid_progress", grid_progress(d, grid));
    rd_watch_job_event(d, job, ev);
    for (rd_conn *c = d->conns; c; c = c->next) {
        if (c->watch_kind && !c->closing && watch_finished(d, c->watch_kind, c->watch_id)) {
            rd_conn_send(c, rw_msg_new("watch_end", c->watch_req));
            c->watch_kind = 0;
            c->watch_logs = 0;
        }
    }
    rd_notify_job_state(d, job);
}

int rd_handle_client(rd_conn *c, const char *type, json_t *m)
{
    long long id = rw_msg_id(m);
    /* what must be recorded before it is answered waits for the database */
    if (rd_db_down(c->d) && (!strcmp(type, "submit") || !strcmp(type, "requeue") ||
                             !strcmp(type, "priority") || !strcmp(type, "rm"))) {
        char msg[1024];
        rd_db_down_msg(c->d, msg, sizeof msg);
        rd_reply_error(c, id, RW_E_STATE, "cannot %s now: %s", type, msg);
        return 0;
    }
    if (!strcmp(type, "submit")) {
        if (c->d->shutting_down)
            rd_reply_error(c, id, RW_E_STATE, "runawayd is shutting down");
        else
            req_submit(c, id, m);
    } else if (!strcmp(type, "ls"))
        req_ls(c, id, m);
    else if (!strcmp(type, "grids"))
        req_grids(c, id);
    else if (!strcmp(type, "show"))
        req_show(c, id, m);
    else if (!strcmp(type, "cancel"))
        req_cancel(c, id, m);
    else if (!strcmp(type, "requeue"))
        req_requeue(c, id, m);
    else if (!strcmp(type, "priority"))
        req_priority(c, id, m);
    else if (!strcmp(type, "rm"))
        req_rm(c, id, m);
    else if (!strcmp(type, "logs"))
        req_logs(c, id, m);
    else if (!strcmp(type, "workers")) {
        json_t *r = rw_msg_new("ok", id);
        json_object_set_new(r, "workers", rd_workers_json(c->d));
        rd_conn_send(c, r);
    } else if (!strcmp(type, "watch"))
        req_watch(c, id, m);
    else if (!strcmp(type, "table"))
        req_table(c, id, m);
    else if (!strcmp(type, "curves"))
        req_curves(c, id, m);
    else if (!strcmp(type, "metrics"))
        req_metrics(c, id, m);
    else if (!strcmp(type, "export"))
        req_export(c, id, m);
    else if (!strcmp(type, "sphere")) {
        int64_t job = job_arg(c, id, m);
        if (job)
            rd_sphere_request(c, id, job, m);
    }
    else if (!strcmp(type, "status"))
        req_status(c, id);
    else if (!strcmp(type, "shutdown")) {
        rd_conn_send(c, rw_msg_new("ok", id));
        rd_shutdown_begin(c->d);
    } else {
        rd_reply_error(c, id, RW_E_UNKNOWN_TYPE, "unknown request '%s'", type);
        return -1;
    }
    return 0;
}
