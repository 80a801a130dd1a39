/* runaway-bench --devices N: data parallelism's cost, on CPU or GPU ranks. */
#ifndef RUNAWAY_WORKER_BENCH_DIST_H
#define RUNAWAY_WORKER_BENCH_DIST_H

#include "worker/model.h"

/* One row of the table: a model, each rank's batch, the bucket size. */
typedef struct bench_dist_cfg {
    const char *label;
    rw_arch arch;
    rw_stem stem;
    int width, size, batch; /* batch: each rank's */
    int proj_hidden, proj_out, pred_hidden;
    double bucket_mb;
    int grad_bf16; /* bf16 on the wire (dist.grad_dtype) */
} bench_dist_cfg;

/* Prints, for the quickstart's model and a ResNet-18, the step of one rank
 * alone and of `world` ranks (processes on this machine; CPU: Gloo over
 * loopback, `threads` threads each; cuda: rank k on GPU k, NCCL): compute,
 * step, communication and exposed (not overlapped) communication time,
 * with and without the overlap, and the weak-scaling efficiency; `only` >
 * 0: that row alone; grad_bf16: bf16 gradients on the wire. 0, 1 if a row
 * failed, 2 for a bad world or row. */
int bench_devices(int world, int steps, int threads, int only, int cuda, int grad_bf16);

/* The same table for the rows given, one round each, one thread a CPU
 * rank (tests). 0, or 1 if a row failed. */
int bench_devices_rows(const bench_dist_cfg *cfgs, int n, int world, int steps, int cuda);

#endif
