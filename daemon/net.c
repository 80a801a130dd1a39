/* Connections (their listeners: daemon/listen.c). Every connection starts unauthenticated and
 * must send hello first; after that it is a client (requests, watches) or a
 * worker (reports). A protocol error gets an error reply, then the
 * connection is shut down after the reply is written and freed in the close
 * callback -- never inside the read callback that found the error.
 *
 * Frames are handled in turns: at most RD_TURN_FRAMES of a connection at
 * once; what else it has sent waits in its reader (reading stops), and the
 * turns handle (a uv_idle) gives buffered frames RD_TURN_S of each loop
 * iteration, connection after connection. A client whose replies pile up
 * unread (RD_PAUSE_BYTES) gets no turn until it reads. So no peer holds the
 * loop, and none makes the daemon buffer without bound. */
#define _GNU_SOURCE /* POLLRDHUP */
#include <errno.h>
#include <malloc.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "daemon/net.h"
#include "proto/msg.h"

#define HELLO_FRAME_MAX 4096 /* before hello, nobody gets to send a big frame */
#define DROPPED_LOG_S 10.0   /* the summary of dropped connections, at most this often */
#define ERRORS_LOGGED 10     /* protocol errors logged one by one per summary period */

static void serve(rd_conn *c);
static void turns_kick(rd_net *n);

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
    rd_conn *c = w->c;
    c->pending -= w->len;
    free(w->buf);
    free(w);
    (void)status; /* a failed write shows up as a read error/EOF too */
    if (c->paused && c->pending <= RD_RESUME_BYTES && !c->closing) {
        c->paused = 0;
        turns_kick(c->net); /* its requests that waited get their turn */
    }
}

/* The frame for msg (stolen), or NULL: a reply too large for a frame
 * becomes the error that says so (an event is dropped). */
static char *encode(json_t *msg, size_t *len)
{
    char *buf;
    int rc = rw_frame_encode(msg, &buf, len);
    long long id = rw_msg_id(msg);
    const char *type = json_string_value(json_object_get(msg, "type"));
    int is_reply = type && !strcmp(type, "ok") && id > 0;
    json_decref(msg);
    if (rc == 0)
        return buf;
    rd_log("conn: reply too large to frame; dropped");
    /* the client waits for an answer: say why there is none */
    if (is_reply)
        return encode(rw_msg_error(id, RW_E_INTERNAL, "the reply is larger than a frame "
                                   "(1 MiB): ask for less at once"), len);
    return NULL;
}

char *rd_frame_of(json_t *msg, size_t *len)
{
    return msg ? encode(msg, len) : NULL;
}

void rd_conn_send(rd_conn *c, json_t *msg)
{
    if (!msg)
        return;
    if (c->closing) {
        json_decref(msg);
        return;
    }
    size_t len;
    char *buf = encode(msg, &len);
    if (buf)
        rd_conn_send_frame(c, buf, len);
}

void rd_conn_send_frame(rd_conn *c, char *buf, size_t len)
{
    if (c->closing) {
        free(buf);
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
    c->net->sent_since_trim += len;
    if (c->pending > RD_PAUSE_BYTES)
        c->paused = 1;
    if (uv_write(&w->req, &c->h.stream, &b, 1, write_cb) != 0) {
        c->pending -= len;
        free(buf);
        free(w);
        rd_conn_close(c);
    }
}

void rd_conn_defer(rd_conn *c)
{
    c->deferred++;
}

void rd_conn_undefer(rd_conn *c)
{
    if (!c || c->deferred <= 0)
        return;
    c->deferred--;
    turns_kick(c->net);
}

/* ------------------------------------------------------------------------ */
/* The connections' indexes: by serial, and before hello by age */

static void serial_add(rd_net *n, rd_conn *c)
{
    rd_conn **b = &n->by_serial[c->serial % RD_SERIAL_BUCKETS];
    c->hnext = *b;
    *b = c;
}

static void serial_remove(rd_net *n, rd_conn *c)
{
    for (rd_conn **p = &n->by_serial[c->serial % RD_SERIAL_BUCKETS]; *p; p = &(*p)->hnext)
        if (*p == c) {
            *p = c->hnext;
            return;
        }
}

static void unauth_push(rd_net *n, rd_conn *c)
{
    const int k = c->is_tcp;
    c->unext = NULL;
    c->uprev = n->unauth_tail[k];
    if (c->uprev)
        c->uprev->unext = c;
    else
        n->unauth_head[k] = c;
    n->unauth_tail[k] = c;
    n->nunauth[k]++;
    c->queued = 1;
}

/* Out of the queue before hello: it said hello, or it closes. */
static void unauth_remove(rd_net *n, rd_conn *c)
{
    if (!c->queued)
        return;
    const int k = c->is_tcp;
    if (c->uprev)
        c->uprev->unext = c->unext;
    else
        n->unauth_head[k] = c->unext;
    if (c->unext)
        c->unext->uprev = c->uprev;
    else
        n->unauth_tail[k] = c->uprev;
    n->nunauth[k]--;
    c->queued = 0;
}

/* ------------------------------------------------------------------------ */
/* Closing */

static void close_cb(uv_handle_t *h)
{
    rd_conn *c = h->data;
    rd_net *n = c->net;
    for (rd_conn **p = &n->conns; *p; p = &(*p)->next) {
        if (*p == c) {
            *p = c->next;
            break;
        }
    }
    serial_remove(n, c);
    unauth_remove(n, c);
    n->nconns--;
    n->freed_since_trim++;
    rw_frame_reader_free(&c->rd);
    free(c);
    if (n->h.conn_freed)
        n->h.conn_freed(n->h.arg);
}

static void shutdown_cb(uv_shutdown_t *req, int status)
{
    uv_handle_t *h = (uv_handle_t *)req->handle;
    free(req);
    (void)status;
    if (!uv_is_closing(h))
        uv_close(h, close_cb);
}

rd_conn *rd_conn_find(rd_net *n, rd_conn *c, uint64_t serial)
{
    for (rd_conn *o = n->by_serial[serial % RD_SERIAL_BUCKETS]; o; o = o->hnext)
        if (o == c && o->serial == serial && !o->closing)
            return o;
    return NULL;
}

void rd_conn_close(rd_conn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    c->waiting = 0;
    unauth_remove(c->net, c);
    if (c->role == RD_ROLE_WORKER && c->net->h.worker_lost)
        c->net->h.worker_lost(c->net->h.arg, c);
    uv_read_stop(&c->h.stream);
    c->reading = 0;
    c->closed_at = rd_mono();
    /* replies its peer does not read are dropped, not waited for */
    if (c->pending > RD_RESUME_BYTES) {
        uv_close(&c->h.handle, close_cb);
        return;
    }
    /* flush queued replies (the error that caused this), then close; the
     * tick closes it anyway after RD_FLUSH_S */
    uv_shutdown_t *req = malloc(sizeof *req);
    if (!req || uv_shutdown(req, &c->h.stream, shutdown_cb) != 0) {
        free(req);
        uv_close(&c->h.handle, close_cb);
    }
}

/* The error reply, then the close; `count` (or NULL) the cause in the
 * dropped summary instead of a log line each (a flood must not flood the
 * log). */
static void drop(rd_conn *c, long long id, const char *code, const char *msg, long *count)
{
    rd_net *n = c->net;
    if (count) {
        (*count)++;
    } else if (n->dropped.errors++ < ERRORS_LOGGED) {
        /* the message may quote the peer's bytes: log a printable sample */
        char smp[160];
        size_t o = 0;
        for (size_t i = 0; msg[i] && o + 4 < sizeof smp; i++)
            smp[o++] = (msg[i] >= 0x20 && msg[i] < 0x7f) ? msg[i] : '?';
        smp[o] = '\0';
        rd_log("conn: protocol error (%s): %s; closing", code, smp);
    }
    rd_conn_send(c, rw_msg_error(id, code, msg));
    rd_conn_close(c);
}

static void protocol_error(rd_conn *c, long long id, const char *code, const char *msg)
{
    drop(c, id, code, msg, NULL);
}

/* ------------------------------------------------------------------------ */
/* Budgets */

/* 1 if c's peer has closed (or shut down its side): seen without reading
 * what it sent before, for a connection that is not being read (its
 * requests wait) and would otherwise never hear of it. */
static int peer_gone(const rd_conn *c)
{
    uv_os_fd_t fd;
    if (uv_fileno(&c->h.handle, &fd) != 0)
        return 0;
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

/* 1 if bytes wait unread on c's socket (its hello, surely): such a
 * connection is about to be read, and is spared while others may go. */
static int bytes_wait(const rd_conn *c)
{
    uv_os_fd_t fd;
    char b;
    return uv_fileno(&c->h.handle, &fd) == 0 && recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
}

/* A class's budget (before hello) is full: its oldest connection goes --
 * the oldest of the first few that have sent nothing, a peer whose hello
 * waits unread being spared. */
static void unauth_budget(rd_net *n, int is_tcp)
{
    const int max = is_tcp ? RD_UNAUTH_TCP_MAX : RD_UNAUTH_LOCAL_MAX;
    if (n->nunauth[is_tcp] <= max)
        return;
    rd_conn *victim = NULL;
    int tried = 0;
    for (rd_conn *c = n->unauth_head[is_tcp]; c && !victim && tried < 4; c = c->unext, tried++)
        if (!bytes_wait(c))
            victim = c;
    if (!victim)
        victim = n->unauth_head[is_tcp]; /* a few tried: the oldest goes */
    drop(victim, 0, RW_E_HELLO, "too many connections without hello: the oldest goes",
         is_tcp ? &n->dropped.unauth_tcp : &n->dropped.unauth_local);
}

/* How stale a client is, for the clients' budget: one stuck in a frame
 * (the longest first), then one idle (the longest first); -1: neither may
 * go (it follows a stream or waits for a reply). */
static double staleness(const rd_conn *c, double now)
{
    if (c->partial_since > 0)
        return 1e9 + (now - c->partial_since);
    if (c->stream || c->deferred || c->waiting)
        return -1;
    return now - c->last_frame;
}

/* Room for one more client: the stalest goes if the budget is full. 0,
 * or -1 when none may go (the new one is refused). */
static int client_budget(rd_net *n, rd_conn *fresh)
{
    int count = 0;
    rd_conn *stalest = NULL;
    double worst = -1, now = rd_mono();
    for (rd_conn *c = n->conns; c; c = c->next) {
        if (c->role != RD_ROLE_CLIENT || c->closing || c == fresh)
            continue;
        count++;
        double s = staleness(c, now);
        if (s >= 0 && s > worst) {
            worst = s;
            stalest = c;
        }
    }
    if (count < RD_CLIENTS_MAX)
        return 0;
    if (!stalest)
        return -1;
    drop(stalest, 0, RW_E_STATE, "too many clients: the stalest goes", &n->dropped.clients);
    return 0;
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
    rd_net *n = c->net;
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
        if (!tok || !n->token[0] || !const_time_eq(tok, n->token)) {
            protocol_error(c, id, RW_E_AUTH, "TCP connections need the daemon's token");
            return;
        }
    }
    const char *role = json_string_value(json_object_get(m, "role"));
    if (!strcmp(role, "client")) {
        if (client_budget(n, c) != 0) {
            drop(c, id, RW_E_STATE, "too many clients, each busy: try again later",
                 &n->dropped.clients);
            return;
        }
        c->role = RD_ROLE_CLIENT;
    } else if (!strcmp(role, "worker")) {
        char err[256];
        c->role = RD_ROLE_WORKER;
        if (n->h.worker_hello(n->h.arg, c, m, err, sizeof err) != 0) {
            c->role = RD_ROLE_NONE;
            protocol_error(c, id, RW_E_STATE, err);
            return;
        }
    } else {
        protocol_error(c, id, RW_E_BAD_MESSAGE, "hello: role: must be client or worker");
        return;
    }
    unauth_remove(n, c);
    c->rd.max = RW_FRAME_MAX;
    json_t *r = rw_msg_new("ok", id);
    json_object_set_new(r, "version", json_integer(RW_PROTO_VERSION));
    json_object_set_new(r, "pid", json_integer(getpid()));
    rd_conn_send(c, r);
    if (c->role == RD_ROLE_WORKER && n->h.worker_ready)
        n->h.worker_ready(n->h.arg, c);
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
        c->net->h.worker_message(c->net->h.arg, c, type, m);
    else if (c->net->h.client_request(c->net->h.arg, c, type, m) != 0)
        rd_conn_close(c);
}

/* A client's requests wait while its replies pile up unread, or while
 * too many of them are due later; a worker's reports never wait. */
static int held(const rd_conn *c)
{
    return c->role == RD_ROLE_CLIENT && (c->paused || c->deferred >= RD_DEFERRED_MAX);
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void reading(rd_conn *c, int on)
{
    if (on == c->reading || c->closing)
        return;
    if (on ? uv_read_start(&c->h.stream, alloc_cb, read_cb) == 0
           : uv_read_stop(&c->h.stream) == 0)
        c->reading = on;
    else if (on)
        rd_conn_close(c);
}

/* One turn of c: its buffered frames, at most RD_TURN_FRAMES, none while
 * it is held. Whole frames left over wait for a turn. It goes on reading
 * (a peer that leaves is noticed, and its work dropped) until RD_READ_AHEAD
 * bytes wait: no peer makes the daemon buffer more. */
static void serve(rd_conn *c)
{
    int handled = 0;
    while (!c->closing && handled < RD_TURN_FRAMES && !held(c)) {
        json_t *m;
        char err[256];
        rw_frame_status st = rw_frame_reader_next(&c->rd, &m, err, sizeof err);
        if (st == RW_FRAME_NEED_MORE)
            break;
        if (st != RW_FRAME_OK) {
            protocol_error(c, 0, RW_E_FRAME, err);
            return;
        }
        handled++;
        c->last_frame = rd_mono();
        handle_frame(c, m);
        json_decref(m);
    }
    if (c->closing)
        return;
    c->waiting = rw_frame_reader_ready(&c->rd);
    /* bytes of a frame not complete yet: its deadline runs from the first */
    if (!c->waiting && c->rd.len > 0) {
        if (c->partial_since == 0)
            c->partial_since = rd_mono();
    } else {
        c->partial_since = 0;
    }
    if (c->rd.len == 0 && c->rd.cap > 16384)
        rw_frame_reader_trim(&c->rd);
    reading(c, !c->waiting || c->rd.len < RD_READ_AHEAD); /* a frame begun is read whole */
    if (c->waiting && !held(c))
        turns_kick(c->net);
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    rd_conn *c = s->data;
    if (n < 0) {
        free(buf->base);
        /* a worker's reports before it left count (one that exits on a
         * signal sends "stopped" last); a client's requests need no reply */
        json_t *m;
        char err[256];
        while (c->role == RD_ROLE_WORKER && !c->closing &&
               rw_frame_reader_next(&c->rd, &m, err, sizeof err) == RW_FRAME_OK) {
            handle_frame(c, m);
            json_decref(m);
        }
        rd_conn_close(c);
        return;
    }
    if (n == 0 || c->closing) {
        free(buf->base);
        return;
    }
    c->last_read = rd_mono();
    int fed = rw_frame_reader_feed(&c->rd, buf->base, (size_t)n);
    free(buf->base);
    if (fed != 0) {
        protocol_error(c, 0, RW_E_INTERNAL, "out of memory");
        return;
    }
    serve(c);
}

/* The turns: each waiting connection that is not held gets one, within
 * RD_TURN_S. The list runs newest first; a round that runs out of time
 * ends at a serial (turn_from), and the next goes on below it, then wraps
 * to the head: every waiting connection gets its turn. */
static void turns_cb(uv_idle_t *h)
{
    rd_net *n = h->data;
    const double t0 = rd_mono();
    const uint64_t from = n->turn_from;
    int any = 0, out_of_time = 0;
    for (int pass = 0; pass < 2 && !out_of_time; pass++) {
        for (rd_conn *c = n->conns; c; c = c->next) {
            int below = from == 0 || c->serial < from;
            if ((pass == 0) != below || !c->waiting || c->closing || held(c))
                continue;
            if (rd_mono() - t0 > RD_TURN_S) {
                out_of_time = any = 1;
                break;
            }
            n->turn_from = c->serial;
            serve(c);
            any |= c->waiting && !held(c);
        }
    }
    if (!out_of_time)
        n->turn_from = 0;
    if (!any) { /* nothing can go on: sleep until a kick */
        uv_idle_stop(&n->turns);
        n->turns_on = 0;
    }
}

static void turns_kick(rd_net *n)
{
    if (n->turns_on || !n->loop || uv_is_closing((uv_handle_t *)&n->turns))
        return;
    if (uv_idle_start(&n->turns, turns_cb) == 0)
        n->turns_on = 1;
}

void rd_net_on_connection(uv_stream_t *srv, int status)
{
    rd_net *n = srv->data;
    if (status < 0)
        return;
    rd_conn *c = calloc(1, sizeof *c);
    if (!c)
        return;
    static uint64_t serials;
    c->net = n;
    c->serial = ++serials;
    c->opened = c->last_read = c->last_frame = rd_mono();
    c->is_tcp = srv == (uv_stream_t *)&n->tcp_srv;
    rw_frame_reader_init(&c->rd, HELLO_FRAME_MAX);
    int rc = c->is_tcp ? uv_tcp_init(n->loop, &c->h.tcp) : uv_pipe_init(n->loop, &c->h.pipe, 0);
    if (rc != 0) {
        free(c);
        return;
    }
    c->h.handle.data = c;
    c->next = n->conns;
    n->conns = c;
    n->nconns++;
    serial_add(n, c);
    if (uv_accept(srv, &c->h.stream) != 0 || n->life->shutting_down || n->nconns > n->conns_max) {
        if (!n->life->shutting_down)
            n->dropped.refused++;
        c->closing = 1;
        uv_close(&c->h.handle, close_cb);
        return;
    }
    unauth_push(n, c);
    unauth_budget(n, c->is_tcp);
    reading(c, 1);
}

void rd_net_forgive(rd_net *n, double secs)
{
    for (rd_conn *c = n->conns; c; c = c->next) {
        c->opened += secs;
        c->last_read += secs;
        c->last_frame += secs;
        if (c->partial_since > 0)
            c->partial_since += secs;
    }
}

static void log_dropped(rd_net *n, double now)
{
    rd_net_dropped *d = &n->dropped;
    if (now - n->dropped_logged < DROPPED_LOG_S)
        return;
    n->dropped_logged = now;
    if (d->refused + d->unauth_tcp + d->unauth_local + d->clients + d->hello + d->frame +
            d->idle + (d->errors > ERRORS_LOGGED ? d->errors - ERRORS_LOGGED : 0) >
        0)
        rd_log("conn: in the last %.0f s: %ld refused at accept (%d open at most), %ld TCP and "
               "%ld local dropped before hello for newer ones (budgets %d, %d), %ld clients "
               "dropped for newer ones (budget %d), %ld without hello in time, %ld stuck in a "
               "frame for %.0f s, %ld idle for %.0f s, %ld protocol errors not logged",
               DROPPED_LOG_S, d->refused, n->conns_max, d->unauth_tcp, d->unauth_local,
               RD_UNAUTH_TCP_MAX, RD_UNAUTH_LOCAL_MAX, d->clients, RD_CLIENTS_MAX, d->hello,
               d->frame, RD_FRAME_DEADLINE_S, d->idle, RD_CLIENT_IDLE_S,
               d->errors > ERRORS_LOGGED ? d->errors - ERRORS_LOGGED : 0);
    memset(d, 0, sizeof *d);
}

/* The daemon's resident size, in kB (-1: unknown). */
static long rss_kb(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = -1, rss = -1;
    if (f && fscanf(f, "%ld %ld", &pages, &rss) != 2)
        rss = -1;
    if (f)
        fclose(f);
    return rss < 0 ? -1 : rss * (sysconf(_SC_PAGESIZE) / 1024);
}

/* After a burst of replies (pipelining clients, big queries), the heap's
 * free pages go back to the system: glibc keeps them otherwise, and the
 * daemon would stay at its peak size. Once the replies stop (a tick
 * without any), or every 10 s while a burst goes on. */
static void give_back(rd_net *n, double now)
{
    const size_t sent = n->sent_since_trim, this_tick = sent - n->sent_at_last_tick;
    n->sent_at_last_tick = sent;
    /* a burst is many replies, or many connections gone (each took a
     * reader's buffer) */
    const int burst = sent >= (1u << 20) || n->freed_since_trim >= 256;
    /* the burst is over when a tick sends little (a watch, a probe) */
    const int quiet = this_tick < (256u << 10);
    if (!burst || (!quiet && (sent < (16u << 20) || now - n->trimmed < 10)))
        return;
    n->sent_since_trim = n->sent_at_last_tick = 0;
    n->freed_since_trim = 0;
    n->trimmed = now;
    long before = rss_kb();
    malloc_trim(0);
    rd_log("conn: memory given back after %.0f MB of replies: %.1f MB -> %.1f MB", sent / 1e6,
           before / 1024.0, rss_kb() / 1024.0);
}

void rd_net_tick(rd_net *n)
{
    double now = rd_mono();
    for (rd_conn *c = n->conns; c; c = c->next) {
        if (c->closing) {
            if (now - c->closed_at > RD_FLUSH_S && !uv_is_closing(&c->h.handle))
                uv_close(&c->h.handle, close_cb);
            continue;
        }
        if (!c->reading && peer_gone(c)) { /* its waiting requests go with it */
            rd_conn_close(c);
            continue;
        }
        double hello_s = c->is_tcp ? RD_HELLO_TCP_S : RD_HELLO_LOCAL_S;
        if (c->role == RD_ROLE_NONE && now - c->opened > hello_s) {
            char msg[64];
            snprintf(msg, sizeof msg, "no hello within %.0f s", hello_s);
            drop(c, 0, RW_E_HELLO, msg, &n->dropped.hello);
        } else if (c->partial_since > 0 && now - c->partial_since > RD_FRAME_DEADLINE_S) {
            char msg[96];
            snprintf(msg, sizeof msg, "a frame begun %.0f s ago is not complete",
                     now - c->partial_since);
            drop(c, 0, RW_E_FRAME, msg, &n->dropped.frame);
        } else if (c->role == RD_ROLE_CLIENT && !c->stream && !c->deferred && !c->waiting &&
                   now - c->last_frame > RD_CLIENT_IDLE_S) {
            n->dropped.idle++;
            rd_conn_close(c);
        }
    }
    log_dropped(n, now);
    give_back(n, now);
}

/* ------------------------------------------------------------------------ */
/* Shutdown */

void rd_net_halt(rd_net *n)
{
    for (rd_conn *c = n->conns; c; c = c->next)
        c->closing = 1;
    if (n->turns_on)
        uv_idle_stop(&n->turns);
    n->turns_on = 0;
    n->loop = NULL; /* no turn is started again */
}

void rd_net_free_conns(rd_net *n)
{
    /* conns freed by their close callbacks when they were closing; the walk
     * closed the rest with no callback: free them here */
    rd_conn *c = n->conns;
    while (c) {
        rd_conn *next = c->next;
        rw_frame_reader_free(&c->rd);
        free(c);
        c = next;
    }
    n->conns = NULL;
}

void rd_reply_error(rd_conn *c, long long id, const char *code, const char *fmt, ...)
{
    char msg[1400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    rd_conn_send(c, rw_msg_error(id, code, msg));
}
