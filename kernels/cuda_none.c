/* Built without CUDA: the CUDA backend is never available. */
#include <stdio.h>

#include "kernels/backend.h"

kb_backend *kb_cuda_create(int device, char *err, size_t errlen)
{
    (void)device;
    snprintf(err, errlen, "built without CUDA");
    return NULL;
}
