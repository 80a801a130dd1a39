/* The job and attempt state machine: a job's state and its attempts in the
 * store, the workers holding it, the queue and the scheduler's decisions
 * carried out, and the estimates of the time left.
 *
 * A job is requeued when its attempt is lost (a worker gone or silent, a
 * failure its worker marks retry: a hung training thread, a broken
 * collective), up to max_retries, and resumes from the checkpoint in its
 * run folder; its own failures (bad data, a loss that is not finite) end
 * it. A worker told cancel_job drains: no new work until it reports that
 * attempt's end. Every change of a job's state is recorded, then emitted
 * (events.h) for its watchers and --notify. */
#ifndef RUNAWAY_DAEMON_JOBS_H
#define RUNAWAY_DAEMON_JOBS_H

#include <limits.h>
#include <stdint.h>

#include "daemon/db.h"
#include "daemon/events.h"
#include "daemon/pool.h"
#include "daemon/runs.h"

typedef struct rd_jobs {
    rd_store *store;
    rd_pool *pool;
    rd_runs *runs;
    rd_events *ev;
    rd_life *life;
    char state_dir[PATH_MAX];
    int max_retries;
} rd_jobs;

/* The attempt's end in its row (only while it is running there). */
void rd_attempt_set(rd_jobs *J, int64_t attempt, const char *outcome, const char *error);
/* The job's new state; `why` (or NULL) tells its watchers what moved it. */
void rd_job_set_state(rd_jobs *J, int64_t job, const char *state, const char *error,
                      const char *why);
/* 1 while the job's row says running */
int rd_job_is_running(rd_jobs *J, int64_t job);

/* Told cancel_job for `attempt`: no new work until it reports the
 * attempt's end (drain_begin); over (drain_end). */
void rd_drain_begin(rd_jobs *J, rd_worker *w, int64_t job, int64_t attempt);
void rd_drain_end(rd_worker *w);

/* Frees every worker holding `job`; those other than `except` that are
 * still connected are told cancel_job and drain. The attempt's run goes. */
void rd_job_release(rd_jobs *J, int64_t job, int64_t attempt, rd_worker *except);
/* The attempt cannot go on, but another may: the other ranks are
 * cancelled, the job requeued, up to max_retries. */
void rd_attempt_lost(rd_jobs *J, int64_t job, int64_t attempt, rd_worker *except,
                     const char *outcome, const char *why);
/* A rank finished its part: once all have, the attempt and the job are done. */
void rd_rank_finished(rd_jobs *J, rd_worker *w, rd_run *r);
/* Worker w's attempt is lost (its connection, its heartbeats). */
void rd_job_lost(rd_jobs *J, rd_worker *w, const char *why);

void rd_cancel_job(rd_jobs *J, int64_t job);
int rd_requeue_job(rd_jobs *J, int64_t job); /* 1: a failed or cancelled job queued again */
/* 1 while a worker holds the job or still stops an attempt of it (and may
 * yet write into its run folder) */
int rd_job_busy(rd_jobs *J, int64_t job);
/* Drops what is kept of the job's attempts (an ended job has none left) */
void rd_job_forget(rd_jobs *J, int64_t job);
/* At exit: every attempt's run, every drained rank's copy */
void rd_jobs_free(rd_jobs *J);

/* Starts what the queue and the idle workers allow, and stops what yields. */
void rd_schedule(rd_jobs *J);
/* Seconds until every job of grid `gid` has ended, estimated (daemon/eta.h);
 * -1 where some duration cannot be estimated yet. */
double rd_grid_left(rd_jobs *J, int64_t gid);

#endif
