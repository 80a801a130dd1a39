/* CUDA device discovery. The CUDA backend's ops arrive with the CUDA backend
 * issue; until then a CUDA build reports why it cannot give a CUDA backend and
 * callers fall back to the CPU backend. */
#include <cuda_runtime.h>
#include <stdio.h>

extern "C" {
#include "kernels/backend.h"
}

extern "C" kb_backend *kb_cuda_create(int device, char *err, size_t errlen)
{
    int count = 0;
    cudaError_t rc = cudaGetDeviceCount(&count);
    if (rc != cudaSuccess) {
        snprintf(err, errlen, "no usable GPU: %s", cudaGetErrorString(rc));
        return NULL;
    }
    if (device < 0 || device >= count) {
        snprintf(err, errlen, "GPU %d requested, %d present", device, count);
        return NULL;
    }
    snprintf(err, errlen, "the CUDA backend's ops are not built yet; using the CPU backend");
    return NULL;
}
