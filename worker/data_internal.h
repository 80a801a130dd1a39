/* Private to the data module: the CPU view renderer, the epoch order and
 * the files' size check, shared by the loader, show-augment, the readers
 * and the tests. */
#ifndef RUNAWAY_WORKER_DATA_INTERNAL_H
#define RUNAWAY_WORKER_DATA_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/augment.h"
#include "worker/data.h"

/* Floats of scratch rw_aug_render needs for an S x S view. */
#define RW_AUG_SCRATCH(S) ((size_t)3 * (S) * (S))

/* Renders the view described by p of a uint8 (3, H, W) source into
 * out (3, S, S), normalized with mean/std. scratch: RW_AUG_SCRATCH(S) floats. */
void rw_aug_render(const uint8_t *src, int W, int H, const rw_aug_params *p, int S,
                   const float mean[3], const float std[3], float *out, float *scratch);

/* View `view` of sample i of ds in `epoch` under `augment`: the loader's unit
 * of work. scratch: RW_AUG_SCRATCH(S) floats. */
void rw_aug_view(const rw_dataset *ds, int i, uint64_t seed, int epoch, int view,
                 rw_augment augment, int S, const float mean[3], const float std[3], float *out,
                 float *scratch);

/* The size of the regular file at path, for the readers of the data sets'
 * files; -1 with a message naming the path (missing, not a file). */
int rw_data_file_size(const char *path, long long *size, char *err, size_t errlen);

/* The epoch's sample order: a Fisher-Yates shuffle of 0..n-1 driven by
 * (seed, epoch) on the permutation stream. */
void rw_epoch_perm(uint64_t seed, int epoch, int n, int32_t *perm);

#endif
