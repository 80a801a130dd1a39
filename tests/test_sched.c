/* The scheduler's decisions (daemon/scheduler.c) in situations worked out by
 * hand: the queue in order, backfill behind a job that waits, and the
 * yielding of backfilled jobs. */
#include <criterion/criterion.h>

#include "daemon/scheduler.h"

static rd_sched_worker idle(int device) { return (rd_sched_worker){.device = device, .state = RD_W_IDLE}; }

static rd_sched_worker busy(int device, int64_t job, int backfill)
{
    return (rd_sched_worker){.device = device, .state = RD_W_BUSY, .job = job, .backfill = backfill};
}

static rd_sched_job job(int64_t id, int devices) { return (rd_sched_job){id, 0, devices, 1}; }

static rd_sched_action next(const rd_sched_worker *w, int nw, const rd_sched_job *q, int nq)
{
    rd_sched_action a;
    rd_sched_next(w, nw, q, nq, &a);
    return a;
}

Test(sched, the_head_of_the_queue_starts_on_idle_workers)
{
    rd_sched_worker w[] = {busy(0, 1, 0), idle(1), idle(2)};
    rd_sched_job q[] = {job(10, 2), job(11, 1)};
    rd_sched_action a = next(w, 3, q, 2);
    cr_assert_eq(a.kind, RD_SCHED_START);
    cr_expect_eq(a.job, 0);
    cr_expect_eq(a.backfill, 0);
    cr_assert_eq(a.nworkers, 2);
    cr_expect(a.workers[0] == 1 && a.workers[1] == 2);
    /* nothing idle: nothing to do */
    rd_sched_worker full[] = {busy(0, 1, 0)};
    cr_expect_eq(next(full, 1, q + 1, 1).kind, RD_SCHED_NONE);
    cr_expect_eq(next(full, 1, q, 0).kind, RD_SCHED_NONE);
}

Test(sched, a_job_behind_one_that_waits_takes_the_idle_worker)
{
    rd_sched_worker w[] = {idle(0), busy(1, 9, 0)};
    rd_sched_job q[] = {job(10, 2), job(11, 2), job(12, 1)};
    rd_sched_action a = next(w, 2, q, 3);
    cr_assert_eq(a.kind, RD_SCHED_START);
    cr_expect_eq(a.job, 2); /* 11 does not fit either */
    cr_expect_eq(a.backfill, 1);
    cr_expect(a.nworkers == 1 && a.workers[0] == 0);
}

Test(sched, backfilled_jobs_yield_to_the_job_they_went_ahead_of)
{
    /* 9 ended; 11 and 12 went ahead of 10, which needs two: the last in
     * the order (12) stops first; then 10 waits for the drain, and the
     * idle worker is not given away meanwhile */
    rd_sched_worker w[] = {idle(0), busy(1, 11, 1), busy(2, 12, 1)};
    rd_sched_job q[] = {job(10, 2), job(13, 1)};
    rd_sched_action a = next(w, 3, q, 2);
    cr_assert_eq(a.kind, RD_SCHED_PREEMPT);
    cr_expect_eq(a.victim, 12);
    cr_expect_eq(a.for_job, 10);
    w[2].state = RD_W_DRAINING;
    cr_expect_eq(next(w, 3, q, 2).kind, RD_SCHED_NONE);
    /* 10 needs all three: both yield, one after the other */
    q[0].devices = 3;
    w[2] = busy(2, 12, 1);
    a = next(w, 3, q, 2);
    cr_assert_eq(a.kind, RD_SCHED_PREEMPT);
    cr_expect_eq(a.victim, 12);
    w[2].state = RD_W_DRAINING;
    a = next(w, 3, q, 2);
    cr_assert_eq(a.kind, RD_SCHED_PREEMPT);
    cr_expect_eq(a.victim, 11);
}

Test(sched, jobs_in_their_turn_or_ahead_do_not_yield)
{
    /* 11 started in its turn: 10 waits for it */
    rd_sched_worker w[] = {idle(0), busy(1, 11, 0)};
    rd_sched_job q[] = {job(10, 2)};
    cr_expect_eq(next(w, 2, q, 1).kind, RD_SCHED_NONE);
    /* a backfilled job of higher priority does not yield to 10 */
    w[1] = busy(1, 5, 1);
    w[1].prio = 3;
    cr_expect_eq(next(w, 2, q, 1).kind, RD_SCHED_NONE);
    /* ... nor one of the same priority and older */
    w[1].prio = 0;
    cr_expect_eq(next(w, 2, q, 1).kind, RD_SCHED_NONE);
    /* not enough room even with it: it runs on */
    rd_sched_worker three[] = {idle(0), busy(1, 11, 1), busy(2, 9, 0)};
    q[0].devices = 3;
    cr_expect_eq(next(three, 3, q, 1).kind, RD_SCHED_NONE);
}

Test(sched, a_job_too_big_for_the_workers_holds_nobody_back)
{
    rd_sched_worker w[] = {idle(0), idle(1)};
    rd_sched_job q[] = {job(10, 3), job(11, 1)};
    rd_sched_action a = next(w, 2, q, 2);
    cr_assert_eq(a.kind, RD_SCHED_START);
    cr_expect_eq(a.job, 1);
    cr_expect_eq(a.backfill, 0); /* nobody waits for 10 */
    /* two slots on one device are one device */
    rd_sched_worker shared[] = {idle(0), idle(0)};
    rd_sched_job two[] = {job(10, 2)};
    cr_expect_eq(next(shared, 2, two, 1).kind, RD_SCHED_NONE);
    /* a worker that is off does not count */
    rd_sched_worker off[] = {idle(0), {.device = 1, .state = RD_W_OFF}};
    cr_expect_eq(next(off, 2, two, 1).kind, RD_SCHED_NONE);
}

Test(sched, a_job_whose_earlier_attempt_drains_waits_for_it)
{
    /* 10's earlier attempt is stopping on worker 0: 10 waits for it, and
     * 11 does not take worker 1 meanwhile */
    rd_sched_worker w[] = {{.device = 0, .state = RD_W_DRAINING}, idle(1)};
    rd_sched_job q[] = {job(10, 1), job(11, 1)};
    q[0].ready = 0;
    cr_expect_eq(next(w, 2, q, 2).kind, RD_SCHED_NONE);
    /* waiting for two, with one draining and one busy: 11 fills in */
    rd_sched_worker x[] = {{.device = 0, .state = RD_W_DRAINING}, busy(1, 9, 0), idle(2)};
    q[0].devices = 3;
    rd_sched_action a = next(x, 3, q, 2);
    cr_assert_eq(a.kind, RD_SCHED_START);
    cr_expect(a.job == 1 && a.backfill == 1 && a.workers[0] == 2);
}
