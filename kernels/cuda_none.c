/* Built without CUDA: the CUDA backend is never available. */
#include <stdio.h>

#include "kernels/backend.h"
#include "kernels/collective.h"

kb_backend *kb_cuda_create(int device, char *err, size_t errlen)
{
    (void)device;
    snprintf(err, errlen, "built without CUDA");
    return NULL;
}

#include "kernels/cuda_augment.h"

int kb_cuda_augment(kb_backend *be, const uint8_t *src, int W, int H, int staged,
                    const uint32_t *keys, int n, uint64_t seed, const int *views, int nviews,
                    int S, const float mean[3], const float std[3], void *out)
{
    (void)be, (void)src, (void)W, (void)H, (void)staged, (void)keys, (void)n, (void)seed;
    (void)views, (void)nviews, (void)S, (void)mean, (void)std, (void)out;
    return -1;
}

kb_comm *kb_nccl_create(const kb_store *store, int rank, int world, int device, int timeout_ms,
                        char *err, size_t errlen)
{
    (void)store, (void)rank, (void)world, (void)device, (void)timeout_ms;
    snprintf(err, errlen, "built without CUDA: no NCCL");
    return NULL;
}
