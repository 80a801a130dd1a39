/* Transport and authentication: the listeners (a Unix socket, and TCP with
 * a token), the connections, framing, hello, and the replies' queue. No
 * SQL and no daemon state: after hello, a worker connection's frames go to
 * the worker layer and a client's requests to the dispatch table, through
 * the handlers the daemon registers (rd_net_handlers). */
#ifndef RUNAWAY_DAEMON_NET_H
#define RUNAWAY_DAEMON_NET_H

#include <jansson.h>
#include <limits.h>
#include <stdint.h>
#include <uv.h>

#include "daemon/base.h"
#include "proto/frame.h"

#define RD_PENDING_MAX (8u << 20) /* bytes queued to one slow client before we drop it */
#define RD_CONNS_MAX 1024           /* open connections; more are refused at accept */
#define RD_HELLO_TIMEOUT_S 10.0

typedef struct rd_conn rd_conn;
typedef struct rd_net rd_net;

typedef enum { RD_ROLE_NONE, RD_ROLE_CLIENT, RD_ROLE_WORKER } rd_role;

struct rd_conn {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_pipe_t pipe;
        uv_tcp_t tcp;
    } h;
    rd_net *net;
    rw_frame_reader rd;
    rd_role role;
    int is_tcp;
    int closing;
    uint64_t serial; /* unique in this daemon's life: a reply due later finds its asker */
    size_t pending;  /* bytes queued for writing */
    double opened;   /* rd_mono() at accept: hello is due within RD_HELLO_TIMEOUT_S */
    double last_read; /* rd_mono() when bytes last came in */
    void *peer;      /* a worker connection's worker (wconn.c) */
    struct rd_conn *next;
};

/* What the daemon does with a connection once it said hello, and when one
 * goes: set before rd_net_listen. */
typedef struct rd_net_handlers {
    void *arg;
    /* a worker's hello (0, or -1 with err: refused) */
    int (*worker_hello)(void *arg, rd_conn *c, json_t *m, char *err, size_t errlen);
    /* after the ok to a worker's hello has been queued */
    void (*worker_ready)(void *arg, rd_conn *c);
    void (*worker_message)(void *arg, rd_conn *c, const char *type, json_t *m);
    /* a worker connection is closing (its job is requeued there) */
    void (*worker_lost)(void *arg, rd_conn *c);
    /* a client's request; -1: the connection is closed */
    int (*client_request)(void *arg, rd_conn *c, const char *type, json_t *m);
    /* a connection was freed (a shutdown may be waiting for that) */
    void (*conn_freed)(void *arg);
} rd_net_handlers;

struct rd_net {
    uv_loop_t *loop;
    rd_life *life;
    char sock_path[PATH_MAX];
    char token[257];
    char token_path[PATH_MAX];
    uv_pipe_t unix_srv;
    uv_tcp_t tcp_srv;
    int tcp_on;
    rd_conn *conns;
    rd_net_handlers h;
};

/* Listens on the Unix socket, and on tcp_addr (HOST:PORT, or NULL) with
 * the token read from token_path. 0, or -1 with err. */
int rd_net_listen(rd_net *n, const char *tcp_addr, char *err, size_t errlen);
/* No new connections (shutdown): the listeners close, the socket file goes. */
void rd_net_stop_listening(rd_net *n);
/* Hello deadlines, once per tick. */
void rd_net_tick(rd_net *n);
/* The loop stalled for `secs`: not counted against any connection. */
void rd_net_forgive(rd_net *n, double secs);
/* At exit, after the loop closed every handle: the connections' memory. */
void rd_net_free_conns(rd_net *n);

void rd_conn_send(rd_conn *c, json_t *msg); /* steals msg */
void rd_conn_close(rd_conn *c);
/* An `error` reply to request `id`: code (RW_E_*) and a message */
void rd_reply_error(rd_conn *c, long long id, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* c, if it is still open and is the connection that had `serial`; else NULL */
rd_conn *rd_conn_find(rd_net *n, rd_conn *c, uint64_t serial);

#endif
