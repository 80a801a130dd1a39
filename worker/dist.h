/* Data parallelism inside a job (see dist.c). */
#ifndef RUNAWAY_WORKER_DIST_H
#define RUNAWAY_WORKER_DIST_H

#include <stddef.h>

#include "kernels/backend.h"
#include "worker/model.h"
#include "worker/weights.h"

struct kb_comm;
typedef struct rw_dist rw_dist;

/* How the gradient travels. */
typedef struct rw_dist_cfg {
    int overlap;      /* buckets leave while the backward pass runs */
    double bucket_mb; /* a bucket's size */
    int grad_bf16;    /* bf16 on the wire, each addition in fp32 */
} rw_dist_cfg;

/* Bl: this rank's share of the global batch; D: projection width. */
rw_dist *rw_dist_create(struct kb_comm *c, kb_backend *be, rw_model *m, int Bl, int D,
                        const rw_dist_cfg *cfg, char *err, size_t errlen);
void rw_dist_free(rw_dist *d);

/* Broadcasts rank 0's model, teacher, running statistics, Adam state and
 * position (the job's start, or a resume on rank 0) to every rank. */
int rw_dist_sync_state(rw_dist *d, rw_train_state *ts, char *err, size_t errlen);
/* Rank 0's *v to every rank (a decision only rank 0 can take). 0 or -1. */
int rw_dist_bcast_int(rw_dist *d, int *v, char *err, size_t errlen);
/* 1 when the gradient's all-reduce goes into the backend's queue (NCCL on
 * a GPU, kb_backend.comm_allreduce): the step's graph then holds it --
 * rw_dist_queue_grads between the backward pass and the update -- and
 * rw_dist_grads only waits for it. 0: the host reduces between the two
 * (Gloo on CPU ranks, through the communicator's own queue). */
int rw_dist_queued(const rw_dist *d);
/* Before each step's forward/backward pass: no bucket has left yet; this
 * rank's wish to stop and to checkpoint, which the step carries. */
void rw_dist_step_begin(rw_dist *d, int stop, int ckpt);
/* Queued mode, inside the step after the backward pass (d is the rw_dist):
 * the buckets not sent yet, the flags, and the join the update waits at. */
void rw_dist_queue_grads(void *d);
/* After the backward pass (queued mode: after the step): averages the
 * gradient buffer over the ranks (the buckets the backward pass has not
 * sent yet leave now; all are waited for) -- or waits for the queued
 * all-reduces, with the communicator's deadline --, and agrees on stopping
 * and on a timed checkpoint: *stop (*ckpt) becomes 1 on every rank when
 * any rank asked at rw_dist_step_begin. */
int rw_dist_grads(rw_dist *d, int *stop, int *ckpt, char *err, size_t errlen);
/* Keeps this step's statistics and projections (this rank's), for a read. */
void rw_dist_keep(rw_dist *d);
/* Steps kept and not read; 1 when no more fit (read them now). */
long rw_dist_unread(const rw_dist *d);
int rw_dist_full(const rw_dist *d);
/* The kept steps' statistics over the global batch, oldest first, into st
 * (room for max, at least the kept steps): their number, or -1. Every
 * rank reads at the same steps: two collectives for all of them. */
long rw_dist_read(rw_dist *d, rw_step_stats *st, long max, char *err, size_t errlen);
/* Compares teacher and parameter checksums with rank 0's; -1 naming the
 * step when any rank differs. */
int rw_dist_check(rw_dist *d, long step, char *err, size_t errlen);

#endif
