/* Estimates of the time a job or a grid has left: the arithmetic, apart from
 * the daemon's state so that it is tested on its own. */
#ifndef RUNAWAY_DAEMON_ETA_H
#define RUNAWAY_DAEMON_ETA_H

#include <stdint.h>

#include "daemon/scheduler.h"

/* Epochs a job trains: optim.epochs, or fewer where optim.max_steps stops
 * it first (steps_per_epoch known from a report: step / epoch). */
int rd_eta_epochs_total(int epochs, long long max_steps, long long steps_per_epoch);

/* Training time left after `epoch` of `total`, at the pace of the current
 * attempt: `elapsed_s` since it was assigned, in which it finished `done`
 * epochs (its start-up counts: a fresh attempt pays it too). -1 if
 * unknown (no epoch finished yet). */
double rd_eta_job_left(double elapsed_s, int done, int epoch, int total);

/* A job as the replay sees it: queued, or running on the workers whose
 * `job` is its id. */
typedef struct rd_eta_job {
    int64_t id, prio; /* its place in the scheduler's order */
    int devices;      /* workers it takes */
    double dur_s;     /* how long it runs (running: has left); < 0: unknown */
    int64_t grid;
    int running;
} rd_eta_job;

/* The scheduler (scheduler.h: backfill, and the yielding of backfilled jobs)
 * replayed from now on over the workers `w` (a draining one counts as idle:
 * it is free within seconds), each job lasting dur_s. Returns when the
 * last job of `grid` ends, in seconds from now (0 if it has none), or -1 if
 * it depends on a duration not known, or a job of the grid can never start
 * (more devices than there are). */
double rd_eta_replay(const rd_sched_worker *w, int nw, const rd_eta_job *jobs, int n,
                     int64_t grid);

#endif
