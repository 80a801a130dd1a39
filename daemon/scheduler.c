/* The scheduler's decisions (see scheduler.h). */
#include "daemon/scheduler.h"

#include <stdlib.h>

int rd_sched_ahead(int64_t prio_a, int64_t id_a, int64_t prio_b, int64_t id_b)
{
    return prio_a > prio_b || (prio_a == prio_b && id_a < id_b);
}

/* Distinct devices among the workers `take` selects. */
static int devices_of(const rd_sched_worker *w, int nw, const unsigned char *take)
{
    int n = 0;
    for (int i = 0; i < nw; i++) {
        if (!take[i])
            continue;
        int dup = 0;
        for (int j = 0; j < i && !dup; j++)
            dup = take[j] && w[j].device == w[i].device;
        n += !dup;
    }
    return n;
}

/* Idle workers on `k` distinct devices, in index order; 0 if there are not
 * enough. */
static int pick_idle(const rd_sched_worker *w, int nw, int k, rd_sched_action *a)
{
    a->nworkers = 0;
    for (int i = 0; i < nw && a->nworkers < k; i++) {
        if (w[i].state != RD_W_IDLE)
            continue;
        int dup = 0;
        for (int j = 0; j < a->nworkers && !dup; j++)
            dup = w[a->workers[j]].device == w[i].device;
        if (!dup)
            a->workers[a->nworkers++] = i;
    }
    return a->nworkers == k;
}

static int preemptible_for(const rd_sched_worker *x, const rd_sched_job *h)
{
    return x->state == RD_W_BUSY && x->backfill && rd_sched_ahead(h->prio, h->id, x->prio, x->job);
}

void rd_sched_next(const rd_sched_worker *w, int nw, const rd_sched_job *q, int nq,
                   rd_sched_action *a)
{
    a->kind = RD_SCHED_NONE;
    a->nworkers = 0;
    unsigned char *take = calloc((size_t)(nw > 0 ? nw : 1), 1);
    if (!take)
        return;
    for (int i = 0; i < nw; i++)
        take[i] = w[i].state != RD_W_OFF;
    int usable = devices_of(w, nw, take);
    const rd_sched_job *head = NULL; /* the first job that waits */
    for (int j = 0; j < nq; j++) {
        const rd_sched_job *job = &q[j];
        if (job->devices < 1 || job->devices > RD_SCHED_MAX_DEVICES || job->devices > usable)
            continue; /* never fits today's workers: holds nobody back */
        if (job->ready && pick_idle(w, nw, job->devices, a)) {
            a->kind = RD_SCHED_START;
            a->job = j;
            a->backfill = head != NULL;
            break;
        }
        if (head)
            continue; /* only the first waiting job is waited for */
        head = job;
        /* Enough idle and draining workers for it: it waits for the
         * drains, and nobody takes the idle ones meanwhile. */
        for (int i = 0; i < nw; i++)
            take[i] = w[i].state == RD_W_IDLE || w[i].state == RD_W_DRAINING;
        if (devices_of(w, nw, take) >= job->devices)
            break;
        /* Enough with those of the jobs that went ahead of it: the last of
         * those in the order yields (again, until there are enough). */
        int victim = -1;
        for (int i = 0; i < nw; i++) {
            if (!preemptible_for(&w[i], job))
                continue;
            take[i] = 1;
            if (victim < 0 || rd_sched_ahead(w[victim].prio, w[victim].job, w[i].prio, w[i].job))
                victim = i;
        }
        if (victim >= 0 && devices_of(w, nw, take) >= job->devices) {
            a->kind = RD_SCHED_PREEMPT;
            a->victim = w[victim].job;
            a->for_job = job->id;
            break;
        }
        /* Not enough either way: the idle workers go to jobs behind it. */
    }
    if (a->kind != RD_SCHED_START)
        a->nworkers = 0;
    free(take);
}
