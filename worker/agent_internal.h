/* What worker/agent.c (the worker's protocol side) shares with
 * worker/agent_kv.c (its rendezvous store): the agent's state and the few
 * things both do with it, inline so that agent_kv.c calls nothing in
 * agent.c. Internal to the worker. */
#ifndef RUNAWAY_WORKER_AGENT_INTERNAL_H
#define RUNAWAY_WORKER_AGENT_INTERNAL_H

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <time.h>

#include "proto/frame.h"

typedef struct agent {
    int fd;
    pthread_mutex_t wmu; /* one writer at a time */
    pthread_mutex_t mu;  /* guards the fields below */
    pthread_cond_t cv;
    json_t *pending;     /* an assign not yet taken by the main thread */
    long long job, attempt; /* what is training now (0: idle) */
    atomic_int cancel;   /* the current job was cancelled */
    atomic_int stop;     /* the daemon asked us to stop, or is gone */
    atomic_int preempted; /* the signal (SIGTERM, SIGUSR1) that stopped us, or 0 */
    atomic_int lost;
    rw_frame_reader r;   /* one reader for hello and the I/O thread: the daemon may
                          * send an assign right behind its hello reply */
    double heartbeat_s;
    int threads;         /* serve --threads: this host's share (0: the daemon's, or all) */
    int remote;          /* no --slot: a worker of another host */
    const char *backend;
    const char *host;     /* the address peers reach this worker at (Gloo) */
    int coll_timeout_ms;  /* collectives and rendezvous */
    /* one kv request in flight (the main thread's rendezvous): its id and
     * the daemon's reply once the I/O thread has it */
    long long kv_id, kv_next;
    json_t *kv_reply;
    /* the current assignment's rank and world; when a multi-rank one was
     * cancelled (0: not) */
    int rank, world;
    double cancelled_at;
    double cancel_grace_s;
    /* The watchdog: the training thread's last sign of progress (a step,
     * an evaluation boundary, a log line), and how long a silence is taken
     * for a hang (a GPU or library call that never returns, a data read
     * that blocks) rather than a long step. */
    double progress_at;
    double stall_s;
    char **argv; /* serve's arguments, to start afresh */
    int argc;
} agent;

/* Sends m (taking it) under the write lock; a failed write marks the
 * daemon lost. */
static inline void rw_agent_send(agent *a, json_t *m)
{
    if (!m)
        return;
    pthread_mutex_lock(&a->wmu);
    if (!atomic_load(&a->lost) && rw_frame_send_fd(a->fd, m) != 0)
        atomic_store(&a->lost, 1);
    pthread_mutex_unlock(&a->wmu);
    json_decref(m);
}

static inline double rw_agent_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The current job was cancelled, or the daemon asked to stop or is gone. */
static inline int rw_agent_aborted(agent *a)
{
    return atomic_load(&a->cancel) || atomic_load(&a->stop) || atomic_load(&a->lost);
}

/* kb_store's callbacks over the daemon's store of one attempt. */
typedef struct rw_agent_kv {
    agent *a;
    long long job, attempt;
} rw_agent_kv;
int rw_agent_kv_set(void *ud, const char *key, const void *value, size_t len);
int rw_agent_kv_get(void *ud, const char *key, void *buf, size_t cap, size_t *len,
                    int timeout_ms);

#endif
