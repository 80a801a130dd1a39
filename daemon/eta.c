/* Estimates of the time a job or a grid has left (see eta.h). */
#include "daemon/eta.h"

#include <stdlib.h>

int rd_eta_epochs_total(int epochs, long long max_steps, long long steps_per_epoch)
{
    if (max_steps > 0 && steps_per_epoch > 0) {
        long long by_steps = (max_steps + steps_per_epoch - 1) / steps_per_epoch;
        if (by_steps < epochs)
            return (int)by_steps;
    }
    return epochs;
}

double rd_eta_job_left(double elapsed_s, int done, int epoch, int total)
{
    if (done <= 0 || elapsed_s < 0)
        return -1;
    int left = total - epoch;
    return left > 0 ? left * (elapsed_s / done) : 0.0;
}

typedef struct sim_job {
    const rd_eta_job *j;
    int state; /* 0 queued, 1 running, 2 done */
    double t0, left; /* running since t0 with `left` to go from then */
    int backfill;
} sim_job;

static int cmp_order(const void *a, const void *b)
{
    const rd_eta_job *x = ((const sim_job *)a)->j, *y = ((const sim_job *)b)->j;
    return rd_sched_ahead(x->prio, x->id, y->prio, y->id)   ? -1
           : rd_sched_ahead(y->prio, y->id, x->prio, x->id) ? 1
                                                             : 0;
}

double rd_eta_replay(const rd_sched_worker *w, int nw, const rd_eta_job *jobs, int n,
                     int64_t grid)
{
    sim_job *s = calloc((size_t)(n > 0 ? n : 1), sizeof *s);
    int *holds = calloc((size_t)(nw > 0 ? nw : 1), sizeof *holds); /* sim job index; -1 none */
    rd_sched_worker *sw = calloc((size_t)(nw > 0 ? nw : 1), sizeof *sw);
    rd_sched_job *q = calloc((size_t)(n > 0 ? n : 1), sizeof *q);
    int *qi = calloc((size_t)(n > 0 ? n : 1), sizeof *qi);
    double end = -1;
    if (!s || !holds || !sw || !q || !qi)
        goto out;
    for (int k = 0; k < n; k++)
        s[k].j = &jobs[k];
    qsort(s, (size_t)n, sizeof *s, cmp_order);
    for (int i = 0; i < nw; i++) {
        holds[i] = -1;
        if (w[i].state != RD_W_BUSY)
            continue;
        for (int k = 0; k < n; k++)
            if (s[k].j->running && s[k].j->id == w[i].job) {
                holds[i] = k;
                s[k].backfill = w[i].backfill;
            }
        if (holds[i] < 0)
            goto out; /* busy with a job not given: its end is not known */
    }
    /* queued jobs behind the grid's last one that may wait (queued, or
     * running ahead of others and so yielding to them) cannot hold it up:
     * a job that went ahead of one of the grid's yields to it */
    int last = -1, todo = 0;
    for (int k = 0; k < n; k++)
        if (s[k].j->grid == grid && (!s[k].j->running || s[k].backfill))
            last = k;
    for (int k = 0; k < n; k++) {
        if (!s[k].j->running && k > last)
            s[k].state = 2;
        if (s[k].state != 2 && s[k].j->dur_s < 0)
            goto out; /* unknown */
        s[k].left = s[k].j->dur_s;
        s[k].state = s[k].j->running ? 1 : s[k].state;
        todo += s[k].state != 2 && s[k].j->grid == grid;
    }
    double t = 0, gend = 0;
    for (long iter = 0; todo > 0; iter++) {
        if (iter > 1000L * (n + nw + 1))
            goto out;
        int nq = 0;
        for (int k = 0; k < n; k++)
            if (s[k].state == 0) {
                q[nq] = (rd_sched_job){s[k].j->id, s[k].j->prio, s[k].j->devices, 1};
                qi[nq++] = k;
            }
        for (int i = 0; i < nw; i++) {
            sw[i] = w[i];
            if (w[i].state == RD_W_OFF)
                continue;
            if (holds[i] >= 0) {
                const sim_job *h = &s[holds[i]];
                sw[i].state = RD_W_BUSY;
                sw[i].job = h->j->id;
                sw[i].prio = h->j->prio;
                sw[i].backfill = h->backfill;
            } else {
                sw[i].state = RD_W_IDLE;
            }
        }
        rd_sched_action a;
        rd_sched_next(sw, nw, q, nq, &a);
        if (a.kind == RD_SCHED_START) {
            sim_job *x = &s[qi[a.job]];
            x->state = 1;
            x->t0 = t;
            x->backfill = a.backfill;
            for (int k = 0; k < a.nworkers; k++)
                holds[a.workers[k]] = qi[a.job];
            continue;
        }
        if (a.kind == RD_SCHED_PREEMPT) {
            for (int k = 0; k < n; k++) {
                sim_job *x = &s[k];
                if (x->state != 1 || x->j->id != a.victim)
                    continue;
                x->left -= t - x->t0; /* it resumes where it stopped */
                x->state = 0;
                for (int i = 0; i < nw; i++)
                    if (holds[i] == k)
                        holds[i] = -1;
            }
            continue;
        }
        /* nothing to do until the next job ends */
        double next = -1;
        for (int k = 0; k < n; k++)
            if (s[k].state == 1 && (next < 0 || s[k].t0 + s[k].left < next))
                next = s[k].t0 + s[k].left;
        if (next < 0)
            goto out; /* nothing runs and nothing starts: one of the grid's never can */
        t = next;
        for (int k = 0; k < n; k++) {
            if (s[k].state != 1 || s[k].t0 + s[k].left > t)
                continue;
            s[k].state = 2;
            if (s[k].j->grid == grid) {
                todo--;
                gend = t;
            }
            for (int i = 0; i < nw; i++)
                if (holds[i] == k)
                    holds[i] = -1;
        }
    }
    end = gend;
out:
    free(s);
    free(holds);
    free(sw);
    free(q);
    free(qi);
    return end;
}
