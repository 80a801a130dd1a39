/* The machinery of one training step, shared by the training loop and the
 * benchmark: where the step's input views come from and how its device work
 * is launched.
 *
 * Views. On a backend that can render them (the CUDA backend), every
 * step's T1/T2 are rendered there by the backend's augment op, from the same
 * keys (seed, epoch, sample, view) and with the same math as the CPU loader.
 * A uint8 training set that fits the device budget is copied to the device
 * once (resident): per step only the n + 1 keys go up. A larger one is
 * streamed: per step the host gathers the batch's n images into a pinned
 * block (two, used in turn) and uploads them, with the keys, into a staging
 * buffer the augment op reads row by row; the views are the same. Elsewhere
 * the background loader renders on the CPU and the two views are uploaded.
 *
 * Launch. On a backend with graph capture, after a few eager steps (cuDNN's
 * algorithm choice and every buffer's growth happen there), the device work
 * is captured once and replayed every step. rw_stepper_step captures the
 * whole step as one graph -- render views, forward, loss, backward, the
 * step's stats into a ring on the device, Adam and EMA (reading the step's
 * scalars from backend memory) -- and the host waits for the device only
 * when it reads the stats (rw_stepper_read), or when RING steps' worth are
 * waiting. A data-parallel job on GPUs keeps the whole step in one graph,
 * its gradient all-reduced in the graph (NCCL on a communication stream,
 * rw_stepper_step_between); one whose host all-reduces the gradients
 * between backward and update (CPU ranks) takes the step in two halves,
 * rw_stepper_forward_backward then rw_stepper_update. A graph whose buffers have moved (an
 * evaluation pass on a larger batch grew them) is captured again; a capture
 * that fails turns graphs off for the job, with a notice, and the step runs
 * eagerly: same ops, same order, same bits. */
#ifndef RUNAWAY_WORKER_STEP_H
#define RUNAWAY_WORKER_STEP_H

#include <stddef.h>

#include "worker/data.h"
#include "worker/model.h"

typedef struct rw_stepper rw_stepper;

typedef struct rw_stepper_cfg {
    rw_model *m;
    const rw_dataset *ds;
    int batch; /* global batch; this rank's share is batch / shard_world */
    int shard_rank, shard_world;
    int size;
    rw_augment augment;
    float mean[3], std[3];
    uint64_t seed;
    int loader_threads;
    /* MiB the uint8 set may take on the device (data.device_budget_mb);
     * 0: half the device's free memory (rw_stepper_set_resident) */
    int device_budget_mb;
    int host_data;  /* 1: render on the CPU even where the device could */
    int no_graphs;  /* 1: never capture */
    /* The forward pass itself calls collectives that wait on the host
     * (SyncBN over ranks on Gloo), so the step cannot be captured. */
    int collective_forward;
    /* One-line notices (graphs turned off and why); may be NULL. */
    void (*notice)(void *ud, const char *line);
    void *notice_ud;
} rw_stepper_cfg;

rw_stepper *rw_stepper_create(const rw_stepper_cfg *c, char *err, size_t errlen);
void rw_stepper_free(rw_stepper *s);

/* Batches per epoch (n / batch, rounded down). */
long rw_stepper_batches(const rw_stepper *s);
/* Positions the data at (epoch, batch). */
void rw_stepper_seek(rw_stepper *s, int epoch, long batch);

/* The next batch through forward and backward, the update (unless update
 * is 0: the stats of the initialization) with this step's scalars, and its
 * stats kept for rw_stepper_read: 0; 1 when the epoch is exhausted
 * (nothing done: seek to the next); -1 when the step failed
 * (rw_model_error says why). */
int rw_stepper_step(rw_stepper *s, int update, float lr, float weight_decay, float tau);
/* The same step with between(ud) queued after the backward pass and before
 * the update, in the same graph -- a data-parallel job's all-reduce in the
 * backend's queue (worker/dist.h) --, and no stats kept (the caller keeps
 * them). */
int rw_stepper_step_between(rw_stepper *s, int update, float lr, float weight_decay, float tau,
                            void (*between)(void *ud), void *ud);
/* The stats of the steps taken since the last read, oldest first, at most
 * max of them into st (waits for the device); their number. */
long rw_stepper_read(rw_stepper *s, rw_step_stats *st, long max);
/* Steps whose stats rw_stepper_read has not given yet. */
long rw_stepper_unread(const rw_stepper *s);

/* The same step in two halves, for a host that works between them (the
 * gradient all-reduce of a data-parallel job). The next batch through
 * forward and backward, its stats downloaded: 0, 1 or -1 as above. */
int rw_stepper_forward_backward(rw_stepper *s, rw_step_stats *st);
/* Adam and EMA with this step's scalars: 0, or -1 (rw_model_error says
 * why). */
int rw_stepper_update(rw_stepper *s, float lr, float weight_decay, float tau);

/* Frees the graphs (their memory is the model's again); the next step
 * captures anew. Call before using the model for anything else at length. */
void rw_stepper_release(rw_stepper *s);

/* Whether the device keeps a uint8 set of set_bytes resident: it fits the
 * budget, budget_mb MiB, or when that is 0 half of free_bytes (the device's
 * free memory when the stepper is made); with both 0 (nothing known) the
 * set is tried resident and streamed only if its allocation fails. */
int rw_stepper_set_resident(size_t set_bytes, int budget_mb, size_t free_bytes);

/* For the log: e.g. "views on the device, set resident, CUDA graphs",
 * "views on the device, batches streamed from pinned memory, CUDA graphs"
 * or "views on the host, eager (capture failed: ...)". */
const char *rw_stepper_describe(const rw_stepper *s);

/* The input views of the last step: a feature map (2 batch/world, 3, S,
 * S) in backend memory, view 1 of the batch then view 2. For tests. */
const void *rw_stepper_views(const rw_stepper *s);

/* Counters, for tests and the benchmark. */
typedef struct rw_stepper_counts {
    long eager, captured, replayed; /* steps by how graph A ran */
    long recaptures;                /* captures after the first */
} rw_stepper_counts;
void rw_stepper_counts_get(const rw_stepper *s, rw_stepper_counts *c);

#endif
