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

/* Budgets (a careless neighbour or an attacker must not lock anyone out):
 * connections that have not said hello have their own small budgets, TCP
 * apart from the Unix socket, and when one is full its oldest connection
 * goes (a real peer says hello within milliseconds); clients that said
 * hello have theirs, where a full budget drops the stalest client (one
 * stuck in a frame, else the longest idle); workers are never counted
 * among clients. */
#define RD_UNAUTH_TCP_MAX 256
#define RD_UNAUTH_LOCAL_MAX 256
#define RD_CLIENTS_MAX 1024
#define RD_CONNS_HARD_MAX 4096 /* every connection; past it (file descriptors) refused at accept */
#define RD_HELLO_TCP_S 5.0     /* hello is due this soon on TCP */
#define RD_HELLO_LOCAL_S 10.0  /* ... and on the Unix socket */
#define RD_FRAME_DEADLINE_S 15.0 /* a frame begun must be complete this soon, hello or not */
#define RD_CLIENT_IDLE_S 600.0
#define RD_FLUSH_S 5.0 /* a closing connection's last replies get this long to be read */ /* a client with nothing to say, follow or wait for goes after this */
/* Backpressure: a client whose replies are not read has its requests wait
 * once this much is unsent, until it reads down to RD_RESUME_BYTES; a
 * stream (watch) that falls RD_PENDING_MAX behind is dropped. */
#define RD_PAUSE_BYTES (256u << 10)
#define RD_RESUME_BYTES (64u << 10)
#define RD_PENDING_MAX (8u << 20)
#define RD_DEFERRED_MAX 1 /* replies due later (the thread pool): one in flight, the rest wait */
/* Turns: frames a connection gets handled in one go, and the loop time
 * given to buffered frames per iteration: no peer holds the loop. */
#define RD_TURN_FRAMES 8
#define RD_READ_AHEAD (64u << 10) /* bytes of a connection's frames buffered before reading stops */
#define RD_TURN_S 0.02

#define RD_SERIAL_BUCKETS 8192

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
    double closed_at; /* rd_mono() when closing began */
    uint64_t serial; /* unique in this daemon's life: a reply due later finds its asker */
    size_t pending;  /* bytes queued for writing */
    double opened;   /* rd_mono() at accept: hello is due within RD_HELLO_*_S */
    double last_read; /* rd_mono() when bytes last came in */
    double last_frame; /* ... and a whole frame */
    double partial_since; /* a frame begun and not complete since then; 0: none */
    int reading;     /* uv_read_start is on */
    int waiting;     /* complete frames buffered, waiting their turn */
    int paused;      /* its unsent replies passed RD_PAUSE_BYTES: requests wait */
    int stream;      /* a watch or logs --follow answers it: never idle (watch.c) */
    int deferred;    /* replies due later (rd_conn_defer) */
    void *peer;      /* a worker connection's worker (wconn.c) */
    struct rd_conn *next;
    struct rd_conn *hnext;          /* in its bucket of the serials' table */
    struct rd_conn *uprev, *unext;  /* in its class's queue before hello (oldest first) */
    int queued;                     /* in that queue */
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

/* Connections dropped or refused since the last log line, by cause. */
typedef struct rd_net_dropped {
    long refused, unauth_tcp, unauth_local, clients, hello, frame, idle, errors;
} rd_net_dropped;

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
    int nconns;
    int conns_max; /* RD_CONNS_HARD_MAX, or fewer where file descriptors are fewer */
    rd_conn *by_serial[RD_SERIAL_BUCKETS]; /* rd_conn_find without a walk of every connection */
    /* the connections before hello, oldest first, TCP [1] apart from local [0] */
    rd_conn *unauth_head[2], *unauth_tail[2];
    int nunauth[2];
    uv_idle_t turns; /* active while buffered frames wait */
    int turns_on;
    uint64_t turn_from; /* fairness: the serial the last turn round ended at */
    rd_net_dropped dropped;
    double dropped_logged; /* rd_mono() of the last summary */
    size_t sent_since_trim; /* bytes queued since memory was last given back */
    size_t sent_at_last_tick;
    long freed_since_trim; /* connections freed since */
    double trimmed; /* rd_mono() of the last time */
    rd_net_handlers h;
};

/* Listens on the Unix socket, and on tcp_addr (HOST:PORT, or NULL) with
 * the token read from token_path. 0, or -1 with err. */
int rd_net_listen(rd_net *n, const char *tcp_addr, char *err, size_t errlen);
/* A listener's accept callback (daemon/listen.c's listeners use it). */
void rd_net_on_connection(uv_stream_t *srv, int status);
/* No new connections (shutdown): the listeners close, the socket file goes. */
void rd_net_stop_listening(rd_net *n);
/* Deadlines (hello, a frame begun, an idle client), once per tick; the
 * log's summary of what was dropped, every 10 s at most. */
void rd_net_tick(rd_net *n);
/* The loop stalled for `secs`: not counted against any connection. */
void rd_net_forgive(rd_net *n, double secs);
/* At exit, before the loop closes every handle: no connection acts again
 * (the callbacks of their cancelled writes only count). */
void rd_net_halt(rd_net *n);
/* At exit, after the loop closed every handle: the connections' memory. */
void rd_net_free_conns(rd_net *n);

void rd_conn_send(rd_conn *c, json_t *msg); /* steals msg */
/* A message's frame (msg stolen), made where it is cheap to make (a pool
 * thread), sent by rd_conn_send_frame (which takes buf); NULL: nothing to
 * send (an event too large for a frame) */
char *rd_frame_of(json_t *msg, size_t *len);
void rd_conn_send_frame(rd_conn *c, char *buf, size_t len);
void rd_conn_close(rd_conn *c);
/* An `error` reply to request `id`: code (RW_E_*) and a message */
void rd_reply_error(rd_conn *c, long long id, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* c, if it is still open and is the connection that had `serial`; else NULL */
rd_conn *rd_conn_find(rd_net *n, rd_conn *c, uint64_t serial);
/* A reply to c comes later (the thread pool, rm, sphere): c is not idle,
 * and past RD_DEFERRED_MAX its requests wait. Undone when it is sent (or
 * its asker is gone: then pass NULL). */
void rd_conn_defer(rd_conn *c);
void rd_conn_undefer(rd_conn *c);

#endif
