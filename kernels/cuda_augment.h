/* BYOL's views rendered on the GPU from a uint8 data set held in CUDA
 * backend memory: the same draw (kernels/augment.h, keyed by seed, epoch,
 * sample index and view) and the same per-pixel math as the CPU loader
 * (worker/augment.c), so a view matches the CPU's within float rounding.
 * The CUDA backend's `augment` op (kernels/backend.h); a backend without
 * that op renders on the CPU. */
#ifndef RUNAWAY_KERNELS_CUDA_AUGMENT_H
#define RUNAWAY_KERNELS_CUDA_AUGMENT_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "kernels/backend.h"

/* Renders views of n samples of src, a (count, 3, H, W) uint8 set in
 * backend memory, into out, a feature map (nviews n, 3, S, S) in the
 * backend's format, normalized with mean/std: group g of n samples as
 * views[g] (0 = T1, 1 = T2; -1 = the un-augmented image, as
 * rw_image_plain), nviews 1 or 2. keys (backend memory, n + 1 words) holds
 * the epoch, then the n sample indices; they are read when the kernel
 * runs, so a captured step replays with the keys uploaded for each step.
 * staged 0: src is the whole set and sample k's image is row idx_k;
 * staged 1: src is a staging buffer of the batch's n images, (n, 3, H, W),
 * sample k's in row k (a set streamed from the host: worker/step.c), while
 * idx_k still keys its draw, so the views are those of the whole set.
 * Queued on the backend's stream; no host wait. Returns 0, or -1 when `be`
 * is not a CUDA backend (or CUDA is not built in). */
int kb_cuda_augment(kb_backend *be, const uint8_t *src, int W, int H, int staged,
                    const uint32_t *keys, int n, uint64_t seed, const int *views, int nviews,
                    int S, const float mean[3], const float std[3], void *out);

#ifdef __cplusplus
}
#endif

#endif
