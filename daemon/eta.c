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

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double rd_eta_fifo(double *free_at, int nworkers, const rd_eta_job *q, int n, int64_t grid)
{
    int last = -1; /* the grid's last job in the queue: nothing after it matters */
    for (int k = 0; k < n; k++)
        if (q[k].grid == grid)
            last = k;
    double end = 0, prev_start = 0;
    for (int k = 0; k <= last; k++) {
        if (q[k].dur_s < 0 || q[k].devices < 1 || q[k].devices > nworkers)
            return -1;
        /* the `devices` workers free first: sorted, they are the first ones */
        qsort(free_at, (size_t)nworkers, sizeof *free_at, cmp_double);
        double start = free_at[q[k].devices - 1];
        if (start < prev_start)
            start = prev_start;
        prev_start = start;
        for (int w = 0; w < q[k].devices; w++)
            free_at[w] = start + q[k].dur_s;
        if (q[k].grid == grid && start + q[k].dur_s > end)
            end = start + q[k].dur_s;
    }
    return end;
}
