/* The running attempts of jobs (1 or N ranks each): what the daemon keeps
 * of one while it runs -- its rendezvous store (kv.c), its TensorBoard
 * event file (tboard.c), its pace (the estimates of the time left). */
#ifndef RUNAWAY_DAEMON_RUNS_H
#define RUNAWAY_DAEMON_RUNS_H

#include <stddef.h>
#include <stdint.h>

#include "daemon/net.h"

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

typedef struct rd_run {
    int64_t job, attempt;
    int world;
    int ndone;      /* ranks that reported done */
    int have_result; /* rank 0 reported done: the result is stored */
    int backfill;    /* started ahead of a job that waited: yields to it */
    char *collapsed; /* rank 0's result says the collapse alarm ended it: why (malloc'd) */
    rd_kv_entry *kv;
    size_t nkv, kv_bytes;
    rd_kv_waiter *waiters;
    char *tb_path; /* its TensorBoard event file, once it reported a metric */
    int tb_failed; /* a write failed (logged): records are skipped until tb_retry */
    double tb_retry; /* rd_mono() of the next try */
    long tb_skipped; /* records skipped since the failure */
    /* its first report's step and kind: where its restart marker goes */
    int64_t tb_first_step;
    char tb_first_kind[8]; /* "" until then */
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

typedef struct rd_runs {
    rd_run *list;
} rd_runs;

rd_run *rd_run_find(rd_runs *rs, int64_t attempt);
rd_run *rd_run_new(rd_runs *rs, int64_t job, int64_t attempt, int world); /* NULL: no memory */
/* The attempt has ended: its store goes, and whoever still waits on a key
 * hears so (a rank in a rendezvous fails at once instead of timing out). */
void rd_run_end(rd_runs *rs, int64_t attempt);
/* A run no longer in the list (a drained rank's copy): its memory. */
void rd_run_free(rd_run *r);
void rd_kv_waiter_free(rd_kv_waiter *w);

#endif
