/* The arithmetic of the daemon's time-left estimates (daemon/eta.c),
 * against schedules worked out by hand. */
#include <criterion/criterion.h>
#include <string.h>

#include "daemon/eta.h"

Test(eta, epochs_a_job_trains)
{
    cr_expect_eq(rd_eta_epochs_total(300, 0, 100), 300);
    cr_expect_eq(rd_eta_epochs_total(300, 1000, 100), 10);   /* max_steps stops it */
    cr_expect_eq(rd_eta_epochs_total(300, 1001, 100), 11);   /* in epoch 11 */
    cr_expect_eq(rd_eta_epochs_total(5, 100000, 100), 5);    /* the epochs first */
    cr_expect_eq(rd_eta_epochs_total(300, 1000, 0), 300);    /* pace not known */
}

Test(eta, a_jobs_training_time_left_at_its_pace)
{
    /* 10 epochs in 100 s: 290 to go at 10 s each */
    cr_expect_float_eq(rd_eta_job_left(100, 10, 10, 300), 2900, 1e-9);
    /* resumed after epoch 100: 5 epochs in 50 s, 5 to go */
    cr_expect_float_eq(rd_eta_job_left(50, 5, 105, 110), 50, 1e-9);
    cr_expect_float_eq(rd_eta_job_left(50, 5, 110, 110), 0, 0);
    cr_expect_lt(rd_eta_job_left(50, 0, 0, 110), 0); /* nothing finished: unknown */
}

/* Workers for the replay: `busy[i]` the id of the running job worker i
 * holds (0: idle), one device each. */
static void workers(rd_sched_worker *w, int nw, const int64_t *busy)
{
    for (int i = 0; i < nw; i++)
        w[i] = (rd_sched_worker){.device = i, .state = busy[i] ? RD_W_BUSY : RD_W_IDLE,
                                 .job = busy[i]};
}

Test(eta, the_queue_replayed_in_order)
{
    /* two workers, one free now, one in 30 s (job 1, of grid 99); queued
     * A(100 s, grid 1), B(50 s, grid 2), C(20 s, grid 1): A 0-100 on the
     * first, B 30-80 on the second, C 80-100 there */
    rd_sched_worker w[2];
    workers(w, 2, (const int64_t[]){0, 1});
    const rd_eta_job q[] = {{1, 0, 1, 30, 99, 1}, {2, 0, 1, 100, 1, 0}, {3, 0, 1, 50, 2, 0},
                            {4, 0, 1, 20, 1, 0}};
    cr_expect_float_eq(rd_eta_replay(w, 2, q, 4, 1), 100, 1e-9);
    cr_expect_float_eq(rd_eta_replay(w, 2, q, 4, 2), 80, 1e-9);
    cr_expect_float_eq(rd_eta_replay(w, 2, q, 4, 99), 30, 1e-9); /* a running one's end */
    cr_expect_float_eq(rd_eta_replay(w, 2, q, 4, 7), 0, 0);      /* a grid with nothing */
    /* priority before age: C (priority 1) goes first, 0-20; A 20-120 */
    rd_eta_job p[4];
    memcpy(p, q, sizeof p);
    p[3].prio = 1;
    cr_expect_float_eq(rd_eta_replay(w, 2, p, 4, 1), 120, 1e-9);
}

Test(eta, a_job_behind_a_waiting_one_fills_the_idle_worker)
{
    /* three workers: idle, busy 50 s, busy 80 s (or 200 s); a 2-device job
     * J (100 s) waits for two; K (5 s) behind it runs on the idle one
     * meanwhile (0-5) instead of after J: J 50-150 either way (strict
     * FIFO put K after J, ending at 85 or 155) */
    rd_sched_worker w[3];
    workers(w, 3, (const int64_t[]){0, 1, 2});
    rd_eta_job q[] = {{1, 0, 1, 50, 9, 1}, {2, 0, 1, 80, 9, 1}, {3, 0, 2, 100, 1, 0},
                      {4, 0, 1, 5, 2, 0}};
    cr_expect_float_eq(rd_eta_replay(w, 3, q, 4, 2), 5, 1e-9);
    cr_expect_float_eq(rd_eta_replay(w, 3, q, 4, 1), 150, 1e-9);
    q[1].dur_s = 200;
    cr_expect_float_eq(rd_eta_replay(w, 3, q, 4, 1), 150, 1e-9);
}

Test(eta, a_backfilled_job_yields_and_resumes_where_it_stopped)
{
    /* two workers: idle, and busy 10 s; H needs both for 100 s; B (30 s)
     * behind it runs 0-10, yields to H at 10 s (H 10-110), resumes at 110
     * with 20 s to go: ends at 130 */
    rd_sched_worker w[2];
    workers(w, 2, (const int64_t[]){0, 1});
    const rd_eta_job q[] = {{1, 0, 1, 10, 9, 1}, {5, 0, 2, 100, 1, 0}, {6, 0, 1, 30, 2, 0}};
    cr_expect_float_eq(rd_eta_replay(w, 2, q, 3, 1), 110, 1e-9);
    cr_expect_float_eq(rd_eta_replay(w, 2, q, 3, 2), 130, 1e-9);
    /* B already running as a backfill, 20 s to go: it yields at 10 s with
     * 10 to go, and ends at 120 */
    rd_sched_worker b[2];
    workers(b, 2, (const int64_t[]){6, 1});
    b[0].backfill = 1;
    const rd_eta_job r[] = {{1, 0, 1, 10, 9, 1}, {5, 0, 2, 100, 1, 0}, {6, 0, 1, 20, 2, 1}};
    cr_expect_float_eq(rd_eta_replay(b, 2, r, 3, 1), 110, 1e-9);
    cr_expect_float_eq(rd_eta_replay(b, 2, r, 3, 2), 120, 1e-9);
    /* ... but one that started in its turn does not yield: H 20-120 */
    b[0].backfill = 0;
    cr_expect_float_eq(rd_eta_replay(b, 2, r, 3, 1), 120, 1e-9);
    cr_expect_float_eq(rd_eta_replay(b, 2, r, 3, 2), 20, 1e-9);
}

Test(eta, unknown_where_a_duration_that_matters_is)
{
    rd_sched_worker one[1], two[2];
    workers(one, 1, (const int64_t[]){0});
    workers(two, 2, (const int64_t[]){0, 0});
    const rd_eta_job q[] = {{1, 0, 1, 10, 1, 0}, {2, 0, 1, -1, 2, 0}, {3, 0, 1, 10, 1, 0},
                            {4, 0, 1, -1, 3, 0}};
    cr_expect_lt(rd_eta_replay(one, 1, q, 4, 1), 0); /* grid 2's job is ahead of grid 1's last */
    cr_expect_lt(rd_eta_replay(one, 1, q, 4, 3), 0); /* and grid 3's own is unknown */
    cr_expect_float_eq(rd_eta_replay(one, 1, q, 1, 1), 10, 1e-9); /* what comes after: no matter */
    const rd_eta_job big[] = {{1, 0, 3, 10, 1, 0}};
    cr_expect_lt(rd_eta_replay(two, 2, big, 1, 1), 0); /* 3 devices, 2 workers: never starts */
    /* a busy worker whose job's time left is not known */
    rd_sched_worker b[1];
    workers(b, 1, (const int64_t[]){8});
    const rd_eta_job r[] = {{8, 0, 1, -1, 2, 1}, {9, 0, 1, 10, 1, 0}};
    cr_expect_lt(rd_eta_replay(b, 1, r, 2, 1), 0);
}
