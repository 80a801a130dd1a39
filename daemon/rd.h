/* runawayd internals: the daemon state shared by its files.
 *   main.c     options, state directory, lock, loop, signals, shutdown
 *   db.c       SQLite (WAL): grids, jobs, attempts, metrics, events
 *   dbcheck.c  the database checked (at start, on demand) and backed up
 *   server.c   listeners, connections, framing, client requests, watchers
 *   workers.c  worker processes, worker connections, heartbeats, scheduler
 *   tboard.c   TensorBoard event files of the metrics
 *   remove.c   rm: ended jobs out of the database and off the disk
 *   notify.c   --notify: a command run when a grid ends or a job fails
 *   sphere.c   sphere computed here for a client on another host */
#ifndef RUNAWAY_DAEMON_RD_H
#define RUNAWAY_DAEMON_RD_H

#include <jansson.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "proto/frame.h"

#define RD_WORKERS_MAX 256
#define RD_PENDING_MAX (8u << 20) /* bytes queued to one slow client before we drop it */
#define RD_CONNS_MAX 1024           /* open connections; more are refused at accept */
#define RD_HELLO_TIMEOUT_S 10.0

typedef struct rd_daemon rd_daemon;
typedef struct rd_worker rd_worker;
typedef struct rd_conn rd_conn;

/* The rendezvous store of one running attempt: keys set by its ranks
 * (kv_set) and the kv_get requests waiting for a key. Dropped, with an
 * error to every waiter, when the attempt ends. */
typedef struct rd_kv_entry {
    char *key, *value; /* value: hex, as received */
    struct rd_kv_entry *next;
} rd_kv_entry;

typedef struct rd_kv_waiter {
    rd_conn *c;
    long long id;
    char *key;
    double deadline; /* rd_mono() */
    struct rd_kv_waiter *next;
} rd_kv_waiter;

/* One running attempt of a job (1 or N ranks). */
typedef struct rd_run {
    int64_t job, attempt;
    int world;
    int ndone;      /* ranks that reported done */
    int have_result; /* rank 0 reported done: the result is stored */
    int backfill;    /* started ahead of a job that waited: yields to it */
    rd_kv_entry *kv;
    size_t nkv, kv_bytes;
    rd_kv_waiter *waiters;
    char *tb_path; /* its TensorBoard event file, once it reported a metric */
    int tb_failed; /* a write failed (logged): records are skipped until tb_retry */
    double tb_retry; /* rd_mono() of the next try */
    long tb_skipped; /* records skipped since the failure */
    /* its pace, for the estimates of the time left (daemon/eta.h) */
    double t0;           /* rd_mono() when assigned */
    int epochs_spec;     /* optim.epochs (0: unknown or the random baseline) */
    long long max_steps; /* optim.max_steps (0: none) */
    int epoch0;          /* epochs done before this attempt; -1 until its first report */
    int epochs_total;    /* epochs it will train, once known */
    double pace_s;       /* seconds per epoch so far; < 0 unknown */
    double left_s, left_at; /* training time left, as of rd_mono() == left_at; < 0 unknown */
    struct rd_run *next;
} rd_run;

#define RD_KV_WAITERS_PER_CONN 8

typedef enum { RD_ROLE_NONE, RD_ROLE_CLIENT, RD_ROLE_WORKER } rd_role;

struct rd_conn {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_pipe_t pipe;
        uv_tcp_t tcp;
    } h;
    rd_daemon *d;
    rw_frame_reader rd;
    rd_role role;
    int is_tcp;
    int closing;
    uint64_t serial; /* unique in this daemon's life: a reply due later finds its asker */
    size_t pending; /* bytes queued for writing */
    double opened;  /* rd_mono() at accept: hello is due within RD_HELLO_TIMEOUT_S */
    rd_worker *worker;
    /* watch: 'j' job or 'g' grid, its id; 0 when not watching */
    char watch_kind;
    int64_t watch_id;
    long long watch_req;
    int watch_logs; /* `logs --follow`: the job's new events, not its metrics */
    int kv_waiting; /* kv_get requests of this connection still waiting */
    struct rd_conn *next;
};

struct rd_worker {
    int slot;
    char device[64];
    int device_index; /* jobs asking N devices get N distinct indexes */
    int remote;       /* connected over TCP, not spawned by us */
    int dead;         /* remote worker gone: slot unused */
    uv_process_t proc;
    int proc_alive;
    uv_timer_t restart_timer;
    double backoff_s, spawned_at;
    int restarts;
    rd_conn *conn;
    double last_seen;
    char host[256], backend[32];
    long long pid;
    int64_t job, attempt; /* current assignment; 0 = idle */
    int rank;
    /* told cancel_job for this attempt and not yet reported it ended: not
     * given new work until it does (its peers would wait on it) */
    int64_t drain_job, drain_attempt;
    /* rank 0 of a drained attempt: its TensorBoard file, for the reports it
     * still sends before it stops (NULL otherwise) */
    rd_run *drain_run;
    int stopping;
};

/* Writes the database could not take (db.c): kept, in order, as the
 * prepared statements with their bound values (exact: SQL text would round
 * a double to 15 digits), to be made once it can take them again. */
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

#define RD_BACKLOG_BYTES (64u << 20)
#define RD_DB_BUSY_MS 5000 /* a lock held by another program (sqlite3 by hand) */
#define RD_DB_START_WAIT_S 600.0 /* at start, a lock or a full disk is waited for this long */
#define RD_BACKLOG_RETRY_S 5.0

/* --notify (notify.c): commands running at once, and events remembered so
 * that each is notified once */
#define RD_NOTIFY_MAX 16
#define RD_NOTIFY_SEEN 64
typedef struct rd_notify_slot {
    uv_process_t proc;
    int busy;      /* until its handle is closed */
    char what[96]; /* the event, for the log */
} rd_notify_slot;

/* sphere.c: `runaway-worker sphere` children for clients on other hosts */
#define RD_SPHERE_MAX 2
#define RD_SPHERE_TIMEOUT_S 3600.0
typedef struct rd_sphere {
    uv_process_t proc;
    int busy;   /* until its handle is closed */
    int killed; /* its asker went away, it ran too long, or shutdown */
    rd_daemon *d;
    rd_conn *conn; /* the asker, found again by rd_conn_find */
    uint64_t serial;
    long long req_id;
    int64_t job;
    double started; /* rd_mono() */
    char dir[PATH_MAX]; /* its folder: spec.yaml, out.dat, log */
} rd_sphere;

struct rd_daemon {
    uv_loop_t *loop;
    char state_dir[PATH_MAX], sock_path[PATH_MAX], db_path[PATH_MAX];
    char worker_path[PATH_MAX];
    sqlite3 *db;
    uv_pipe_t unix_srv;
    uv_tcp_t tcp_srv;
    int tcp_on;
    char token[257];
    char token_path[PATH_MAX];
    char tb_dir[PATH_MAX]; /* TensorBoard event files; "" = none */
    uv_signal_t sigterm, sigint;
    uv_timer_t tick;
    rd_worker workers[RD_WORKERS_MAX];
    int nworkers;
    rd_conn *conns;
    rd_run *runs; /* running attempts */
    /* options */
    int cpu_slots, gpus, slots_per_gpu, threads_per_worker, max_retries;
    double heartbeat_s, heartbeat_timeout_s, shutdown_timeout_s;
    double last_tick; /* rd_mono() of the last rd_tick: a loop that stalled sees a gap */
    double stall_timeout_s; /* passed to workers: a job silent this long is hung */
    int shutting_down;
    double shutdown_started;
    rd_db_backlog backlog;
    char *notify_cmd; /* --notify; NULL: none */
    rd_notify_slot notify[RD_NOTIFY_MAX];
    char notify_seen[RD_NOTIFY_SEEN][64];
    int notify_next;
    rd_sphere spheres[RD_SPHERE_MAX];
};

/* main.c */
double rd_now(void);  /* wall clock, for the database */
double rd_mono(void); /* monotonic, for timeouts */
void rd_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void rd_shutdown_begin(rd_daemon *d);
void rd_shutdown_check(rd_daemon *d);
int rd_mkdir_p(const char *path, mode_t mode); /* 0, or -1 with errno */

/* db.c */
int rd_db_open(rd_daemon *d, char *err, size_t errlen);
void rd_db_close(rd_daemon *d);
int rd_db_exec(rd_daemon *d, const char *sql);
/* Steps a prepared write and finalizes it; its text must be bound
 * SQLITE_TRANSIENT, as it may be stepped later. When the database cannot take
 * it (a full disk, an I/O error, a read-only file, a lock held past the busy
 * timeout), or writes already wait, it is kept for rd_db_retry, in order;
 * `droppable` (a metric or an event row) may be let go once the backlog
 * holds RD_BACKLOG_BYTES. 0: made or kept; -1: refused for another reason
 * (logged). */
int rd_db_write(rd_daemon *d, sqlite3_stmt *st, int droppable);
/* Writes wait: the database could not be written since backlog.since */
int rd_db_down(const rd_daemon *d);
/* The backlog's writes, in one transaction, at most every RD_BACKLOG_RETRY_S
 * (the tick); 1 when the database took them all (it is up again). */
int rd_db_retry(rd_daemon *d);
/* One line saying why the database cannot be written, for replies */
void rd_db_down_msg(const rd_daemon *d, char *out, size_t len);
void rd_db_backlog_free(rd_daemon *d);
/* A job whose new state waits in the backlog: its watchers are told once
 * it is written (they read the state from the rows) */
void rd_db_backlog_job(rd_daemon *d, int64_t job);
void rd_db_event(rd_daemon *d, int64_t job, const char *kind, const char *text);
/* prepared statement helpers: return NULL on error (logged) */
sqlite3_stmt *rd_db_prep(rd_daemon *d, const char *sql);
int64_t rd_db_int(rd_daemon *d, const char *sql, int64_t arg, int64_t dflt);
/* The id for a new row of grids, jobs or attempts (a fixed string): never
 * one given before, even to a removed row. 0 on error (logged). */
int64_t rd_db_next_id(rd_daemon *d, const char *table);

/* dbcheck.c: PRAGMA quick_check of the database before anything opens it
 * for writing (a lock is waited for, as at start). -1: it is damaged; msg
 * says what SQLite finds and how to recover, and the file is as it was. */
int rd_db_check_start(rd_daemon *d, char *msg, size_t len);
/* `runawayd --check`: PRAGMA integrity_check of the database at db and of
 * its backup, read-only (a running daemon goes on), printed; 0 if both
 * pass (or there is no backup yet), else 1. */
int rd_db_check_full(const char *db);
/* The backup, DB_PATH.backup, by SQLite's online backup API on the thread
 * pool: now (start), then from the tick every every_s seconds if the
 * database changed (0: never). */
void rd_db_backup_start(rd_daemon *d, double every_s);
void rd_db_backup_tick(rd_daemon *d);

/* server.c */
int rd_server_listen(rd_daemon *d, const char *tcp_addr, char *err, size_t errlen);
void rd_conn_send(rd_conn *c, json_t *msg); /* steals msg */
void rd_conn_close(rd_conn *c);
/* An `error` reply to request `id`: code (RW_E_*) and a message */
void rd_reply_error(rd_conn *c, long long id, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* c, if it is still open and is the connection that had `serial`; else NULL */
rd_conn *rd_conn_find(rd_daemon *d, rd_conn *c, uint64_t serial);
void rd_watch_job_event(rd_daemon *d, int64_t job, json_t *ev); /* steals ev */
void rd_watch_job_state(rd_daemon *d, int64_t job, const char *why);
/* notify.c: after a job's state changed, runs --notify for a job failed for
 * good and for its grid's end */
void rd_notify_job_state(rd_daemon *d, int64_t job);
/* ... and for the daemon's own news: db_down, db_up */
void rd_notify_daemon(rd_daemon *d, const char *event, const char *text);
/* A line about the daemon itself (its database takes no writes, or does
 * again) to every watcher and log follower */
void rd_watch_daemon(rd_daemon *d, const char *text);
void rd_conns_tick(rd_daemon *d);
int rd_handle_client(rd_conn *c, const char *type, json_t *m);

/* sphere.c: runs `runaway-worker sphere` on job's final weights (or the
 * snapshot of m's `epoch`) with m's `samples` and `backend`, and replies to
 * request `id` of c with its data file, or why not */
void rd_sphere_request(rd_conn *c, long long id, int64_t job, json_t *m);
void rd_sphere_tick(rd_daemon *d);      /* kills children whose asker went away or late */
void rd_sphere_stop_all(rd_daemon *d);  /* shutdown */
void rd_sphere_clear_stale(rd_daemon *d); /* at start: the folders a crash left */

/* tboard.c: a metric report ("step", "epoch", or "final": the result) as
 * TensorBoard scalars in the attempt's event file */
void rd_tb_metric(rd_daemon *d, rd_run *run, const char *kind, json_t *m);
/* The job's TensorBoard run folder; -1 when there is none (--tensorboard none) */
int rd_tb_run_dir(rd_daemon *d, int64_t job, char *out, size_t len);

/* remove.c: the jobs of a job or grid target ('j' or 'g'), if every one has
 * ended and no worker still stops one, out of the database (one
 * transaction), then off the disk (run folders, TensorBoard runs) on the
 * thread pool; `asker` gets the `ok` reply to request `req_id` once the
 * files are gone. -1 with *code and err when nothing was removed
 * (RW_E_STATE: a job not ended; RW_E_INTERNAL: the database). */
int rd_remove(rd_conn *asker, long long req_id, char kind, int64_t target, const char **code,
              char *err, size_t errlen);

/* workers.c */
int rd_workers_start(rd_daemon *d, char *err, size_t errlen);
int rd_worker_hello(rd_conn *c, json_t *m, char *err, size_t errlen);
void rd_worker_message(rd_conn *c, const char *type, json_t *m);
void rd_worker_conn_lost(rd_conn *c);
void rd_tick(rd_daemon *d);
/* A stall of the loop: `secs` not counted against a connection's hello. */
void rd_conns_forgive(rd_daemon *d, double secs);
void rd_schedule(rd_daemon *d);
int rd_ndevices(rd_daemon *d);
void rd_cancel_job(rd_daemon *d, int64_t job);
/* Seconds until every job of grid `gid` has ended, estimated (daemon/eta.h);
 * -1 where some duration cannot be estimated yet. */
double rd_grid_left(rd_daemon *d, int64_t gid);
/* A new event row of `job` to those following its log. */
void rd_watch_job_log(rd_daemon *d, int64_t job, double t, const char *kind, const char *text);
int rd_requeue_job(rd_daemon *d, int64_t job); /* 1: a failed or cancelled job queued again */
/* 1 while a worker holds the job or still stops an attempt of it (and may
 * yet write into its run folder) */
int rd_job_busy(rd_daemon *d, int64_t job);
/* Drops what is kept of the job's attempts (an ended job has none left):
 * the rendezvous store, the TensorBoard event file's path */
void rd_job_forget(rd_daemon *d, int64_t job);
void rd_runs_free(rd_daemon *d); /* at exit: every attempt's store */
void rd_workers_stop_all(rd_daemon *d);
int rd_workers_alive(rd_daemon *d);
json_t *rd_workers_json(rd_daemon *d);

#endif
