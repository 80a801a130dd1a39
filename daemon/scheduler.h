/* The scheduler's decisions, apart from the daemon's state, so that they are
 * tested on their own and replayed by the time-left estimates (eta.c).
 *
 * The queue is taken in order (priority, then age). A job starts on idle
 * workers of distinct devices. When the head job cannot start, it does not
 * hold the others back: a job behind it that fits the idle workers starts
 * ("backfill"), and yields to it later: once the workers of the jobs that
 * went ahead of it, with the idle and draining ones, are enough for it, they
 * are stopped (each writes a checkpoint as it stops, as for a cancel, and
 * resumes from it, exactly, when its turn comes again). So the head job
 * starts no later than under strict FIFO (but for the seconds a stop takes),
 * and no worker idles while a job that fits waits. A job asking more
 * devices than there are is passed over. */
#ifndef RUNAWAY_DAEMON_SCHEDULER_H
#define RUNAWAY_DAEMON_SCHEDULER_H

#include <stdint.h>

#define RD_SCHED_MAX_DEVICES 64

typedef enum { RD_W_OFF, RD_W_IDLE, RD_W_BUSY, RD_W_DRAINING } rd_sched_state;

/* A worker as the scheduler sees it. */
typedef struct rd_sched_worker {
    int device; /* a job's workers are on distinct devices */
    rd_sched_state state;
    /* RD_W_BUSY: the job it runs, that job's place in the order, and
     * whether it started ahead of a job that waited (then it yields to any
     * job ahead of it) */
    int64_t job, prio;
    int backfill;
} rd_sched_worker;

/* A queued job; the array is in the scheduler's order. */
typedef struct rd_sched_job {
    int64_t id, prio;
    int devices;
    int ready; /* 0: a worker still stops its earlier attempt: it waits */
} rd_sched_job;

typedef enum { RD_SCHED_NONE, RD_SCHED_START, RD_SCHED_PREEMPT } rd_sched_kind;

typedef struct rd_sched_action {
    rd_sched_kind kind;
    int job;      /* START: its index in q */
    int backfill; /* START: a job ahead of it waits */
    int workers[RD_SCHED_MAX_DEVICES], nworkers; /* START: indices into w */
    int64_t victim;  /* PREEMPT: the running job to stop (its workers drain) */
    int64_t for_job; /* PREEMPT: the job it makes room for */
} rd_sched_action;

/* Whether the job (prio_a, id_a) comes before (prio_b, id_b). */
int rd_sched_ahead(int64_t prio_a, int64_t id_a, int64_t prio_b, int64_t id_b);

/* The next thing to do: start a job, stop a backfilled one, or nothing
 * (wait for a worker). Apply it and ask again until NONE. */
void rd_sched_next(const rd_sched_worker *w, int nw, const rd_sched_job *q, int nq,
                   rd_sched_action *a);

#endif
