/* Worker slots and their processes: one runaway-worker per local slot (per
 * GPU times slots_per_gpu, or a number of CPU slots), restarted with
 * exponential backoff when it exits, killed when it never connects; and
 * the slots of workers that connected from other hosts. What a slot's
 * worker is doing (its job, its drained attempt) is the job layer's
 * (jobs.c); its connection's reports are the worker layer's (wconn.c). */
#ifndef RUNAWAY_DAEMON_POOL_H
#define RUNAWAY_DAEMON_POOL_H

#include <jansson.h>
#include <limits.h>
#include <stdint.h>
#include <uv.h>

#include "daemon/db.h"
#include "daemon/net.h"
#include "daemon/runs.h"

#define RD_WORKERS_MAX 256

typedef struct rd_worker {
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
} rd_worker;

typedef struct rd_pool {
    uv_loop_t *loop;
    rd_life *life;
    rd_store *store;
    rd_worker workers[RD_WORKERS_MAX];
    int nworkers;
    char worker_path[PATH_MAX], sock_path[PATH_MAX], state_dir[PATH_MAX];
    int cpu_slots, gpus, slots_per_gpu, threads_per_worker;
    int coordinator_only; /* no local slots (--cpu-slots 0 --gpus 0) */
    double heartbeat_s, heartbeat_timeout_s, stall_timeout_s;
    /* a worker process's handle was closed (a shutdown may wait for that) */
    void (*proc_gone)(void *arg);
    void *proc_gone_arg;
} rd_pool;

/* The local slots, and their processes started. 0, or -1 with err. */
int rd_pool_start(rd_pool *p, char *err, size_t errlen);
/* A slot for a worker from another host (hello over TCP): one a remote
 * worker left, else a new one; NULL when every slot is taken. */
rd_worker *rd_pool_remote_slot(rd_pool *p, const char *device);
/* Processes that never connected, and the end of a shutdown's grace. */
void rd_pool_tick(rd_pool *p, double now);
/* Shutdown: every worker told stop (or its process SIGTERM). */
void rd_pool_stop_all(rd_pool *p);
int rd_pool_alive(const rd_pool *p); /* worker processes still running */
int rd_pool_ndevices(const rd_pool *p); /* distinct devices of live slots */
json_t *rd_pool_json(const rd_pool *p); /* the `workers` reply */

#endif
