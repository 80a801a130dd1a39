/* Estimates of the time a job or a grid has left: the arithmetic, apart from
 * the daemon's state so that it is tested on its own. */
#ifndef RUNAWAY_DAEMON_ETA_H
#define RUNAWAY_DAEMON_ETA_H

#include <stdint.h>

/* Epochs a job trains: optim.epochs, or fewer where optim.max_steps stops
 * it first (steps_per_epoch known from a report: step / epoch). */
int rd_eta_epochs_total(int epochs, long long max_steps, long long steps_per_epoch);

/* Training time left after `epoch` of `total`, at the pace of the current
 * attempt: `elapsed_s` since it was assigned, in which it finished `done`
 * epochs (its start-up counts: a fresh attempt pays it too). -1 if
 * unknown (no epoch finished yet). */
double rd_eta_job_left(double elapsed_s, int done, int epoch, int total);

/* A queued job as the estimate sees it. */
typedef struct rd_eta_job {
    int devices;   /* workers it takes */
    double dur_s;  /* how long it will run; < 0: unknown */
    int64_t grid;
} rd_eta_job;

/* The daemon's strict FIFO replayed: each job of q in order takes the
 * `devices` workers that free earliest and starts when the last of them is
 * free, never before the job ahead of it started. free_at: per worker,
 * seconds from now until it is free (0: idle); updated. Returns the latest
 * finish among the jobs of `grid` (0 if it has none in q), or -1 if one of
 * them, or a job ahead of one, has an unknown duration or can never start
 * (more devices than workers). */
double rd_eta_fifo(double *free_at, int nworkers, const rd_eta_job *q, int n, int64_t grid);

#endif
