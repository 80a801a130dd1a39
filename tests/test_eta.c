/* The arithmetic of the daemon's time-left estimates (daemon/eta.c),
 * against schedules worked out by hand. */
#include <criterion/criterion.h>

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

/* rd_eta_fifo on a copy of the workers' free times (criterion's macros
 * evaluate their arguments more than once). */
static double fifo(const double *free_at, int nw, const rd_eta_job *q, int n, int64_t grid)
{
    double f[8];
    for (int i = 0; i < nw; i++)
        f[i] = free_at[i];
    return rd_eta_fifo(f, nw, q, n, grid);
}

Test(eta, the_fifo_replayed)
{
    /* two workers, one free now, one in 30 s; A(100 s, grid 1), B(50 s,
     * grid 2), C(20 s, grid 1): A 0-100 on the first, B 30-80 on the
     * second, C 80-100 there */
    const rd_eta_job q[] = {{1, 100, 1}, {1, 50, 2}, {1, 20, 1}};
    const double two[2] = {0, 30};
    cr_expect_float_eq(fifo(two, 2, q, 3, 1), 100, 1e-9);
    cr_expect_float_eq(fifo(two, 2, q, 3, 2), 80, 1e-9);
    /* a grid with nothing queued: 0 (what it runs is the caller's part) */
    cr_expect_float_eq(fifo(two, 2, q, 3, 7), 0, 0);

    /* a 2-device job takes the two workers free first (it starts at 50 s
     * and holds both until 150 s); the 1-device job behind it takes the
     * third at 80 s, or, if that one is busy until 200 s, one of the
     * first two at 150 s */
    const rd_eta_job w[] = {{2, 100, 1}, {1, 5, 1}};
    const double three[3] = {0, 50, 80}, busy[3] = {0, 50, 200};
    cr_expect_float_eq(fifo(three, 3, w, 2, 1), 150, 1e-9);
    cr_expect_float_eq(fifo(busy, 3, w, 2, 1), 155, 1e-9);
}

Test(eta, unknown_where_a_duration_before_the_grids_last_job_is)
{
    const rd_eta_job q[] = {{1, 10, 1}, {1, -1, 2}, {1, 10, 1}, {1, -1, 3}};
    const double one[1] = {0}, two[2] = {0, 0};
    cr_expect_lt(fifo(one, 1, q, 4, 1), 0);             /* grid 2's job is ahead of grid 1's last */
    cr_expect_float_eq(fifo(one, 1, q, 4, 3), -1, 0); /* and grid 3's own is unknown */
    cr_expect_float_eq(fifo(one, 1, q, 1, 1), 10, 1e-9); /* what comes after does not count */
    const rd_eta_job big[] = {{3, 10, 1}};
    cr_expect_lt(fifo(two, 2, big, 1, 1), 0); /* 3 devices, 2 workers: never starts */
}
