/* Data parallelism inside a job (see dist.c). */
#ifndef RUNAWAY_WORKER_DIST_H
#define RUNAWAY_WORKER_DIST_H

#include <stddef.h>

#include "kernels/backend.h"
#include "worker/model.h"
#include "worker/weights.h"

struct kb_comm;
typedef struct rw_dist rw_dist;

/* Bl: this rank's share of the global batch; D: projection width. */
rw_dist *rw_dist_create(struct kb_comm *c, kb_backend *be, rw_model *m, int Bl, int D,
                        char *err, size_t errlen);
void rw_dist_free(rw_dist *d);

/* Broadcasts rank 0's model, teacher, running statistics, Adam state and
 * position (the job's start, or a resume on rank 0) to every rank. */
int rw_dist_sync_state(rw_dist *d, rw_train_state *ts, char *err, size_t errlen);
/* Averages the gradient buffer over the ranks. */
int rw_dist_grads(rw_dist *d, char *err, size_t errlen);
/* Turns this rank's step statistics into the global batch's, and agrees on
 * stopping: *stop becomes 1 on every rank when any rank asked. */
int rw_dist_metrics(rw_dist *d, rw_step_stats *st, int *stop, char *err, size_t errlen);
/* Compares teacher and parameter checksums with rank 0's; -1 naming the
 * step when any rank differs. */
int rw_dist_check(rw_dist *d, long step, char *err, size_t errlen);

#endif
