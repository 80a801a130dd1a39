/* The CUDA backend: device discovery, create/destroy, memory, elementwise
 * ops. Convolutions are in conv2d.cu (cuDNN), batch norm and L2 norm in
 * norm.cu, ReLU/pooling/linear (cuBLAS) in ops.cu, losses, metrics, Adam and
 * EMA in loss.cu. */
#include <string.h>
#include <unistd.h>

#include "kernels/cuda/cuda.h"

/* ---- kernels ---- */

__global__ void kb_cuda_fill_kernel(float *x, float v, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] = v;
}

__global__ void kb_cuda_scale_kernel(float *x, float a, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] *= a;
}

__global__ void kb_cuda_axpy_kernel(float *y, float a, const float *x, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] += a * x[i];
}

/* y may alias a or b: each element is read before it is written, by the
 * same thread. */
__global__ void kb_cuda_add_kernel(float *y, const float *a, const float *b, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] = a[i] + b[i];
}

/* ---- launchers ---- */

#define KB_EW_THREADS 256

kb_cuda *kb_cuda_enter(kb_backend *be)
{
    kb_cuda *impl = kb_cuda_of(be);
    KB_CUDA(cudaSetDevice(impl->device));
    return impl;
}

void *kb_cuda_scratch(kb_cuda *impl, size_t bytes)
{
    if (bytes <= impl->scratch_bytes)
        return impl->scratch;
    size_t want = bytes < ((size_t)8 << 20) ? ((size_t)8 << 20) : bytes * 2;
    /* cudaFree waits for the device, so kernels still reading the old block
     * finish first. */
    if (impl->scratch)
        KB_CUDA(cudaFree(impl->scratch));
    impl->scratch = NULL;
    impl->scratch_bytes = 0;
    KB_CUDA(cudaMalloc(&impl->scratch, want));
    impl->scratch_bytes = want;
    return impl->scratch;
}

int kb_cuda_ws_reserve(kb_cuda *impl, size_t bytes)
{
    if (bytes <= impl->ws_bytes)
        return 0;
    if (impl->ws)
        KB_CUDA(cudaFree(impl->ws));
    impl->ws = NULL;
    impl->ws_bytes = 0;
    if (cudaMalloc(&impl->ws, bytes) != cudaSuccess) {
        (void)cudaGetLastError(); /* clear the sticky-free OOM error */
        impl->ws = NULL;
        return -1;
    }
    impl->ws_bytes = bytes;
    return 0;
}

static void cuda_destroy(kb_backend *be)
{
    kb_cuda *impl = kb_cuda_of(be);
    cudaSetDevice(impl->device);
    if (impl->stream)
        cudaStreamSynchronize(impl->stream);
    if (impl->ws)
        cudaFree(impl->ws);
    if (impl->scratch)
        cudaFree(impl->scratch);
    if (impl->cublas)
        cublasDestroy(impl->cublas);
    if (impl->cudnn)
        cudnnDestroy(impl->cudnn);
    if (impl->stream)
        cudaStreamDestroy(impl->stream);
    free(impl->algo_memo);
    free(impl);
    free(be);
}

/* ---- memory ---- */

static void *cuda_alloc(kb_backend *be, size_t bytes)
{
    kb_cuda *impl = kb_cuda_enter(be);
    void *p = NULL;
    if (bytes == 0)
        bytes = 256;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
        (void)cudaGetLastError(); /* OOM is reported as NULL, not sticky */
        return NULL;
    }
    /* Ordered before any later op on the stream, like every other write. */
    KB_CUDA(cudaMemsetAsync(p, 0, bytes, impl->stream));
    return p;
}

static void cuda_free(kb_backend *be, void *p)
{
    kb_cuda *impl = kb_cuda_enter(be);
    if (!p)
        return;
    /* A later allocation may get this address back: forget pool windows
     * recorded for it. */
    for (int i = 0; i < (int)(sizeof impl->pool_memo / sizeof impl->pool_memo[0]); i++)
        if ((const void *)impl->pool_memo[i].idx == p)
            impl->pool_memo[i].idx = NULL;
    KB_CUDA(cudaFree(p)); /* waits for the device: no op still uses p */
}

/* From pageable host memory cudaMemcpyAsync returns once the source has been
 * staged, so the caller may reuse host_src at once; the device copy is
 * ordered on the stream after earlier ops. */
static void cuda_upload(kb_backend *be, void *dst, const void *src, size_t bytes)
{
    kb_cuda *impl = kb_cuda_enter(be);
    if (bytes)
        KB_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, impl->stream));
}

static void cuda_download(kb_backend *be, void *dst, const void *src, size_t bytes)
{
    kb_cuda *impl = kb_cuda_enter(be);
    if (bytes)
        KB_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, impl->stream));
    KB_CUDA(cudaStreamSynchronize(impl->stream));
}

static void cuda_copy(kb_backend *be, void *dst, const void *src, size_t bytes)
{
    kb_cuda *impl = kb_cuda_enter(be);
    if (bytes && dst != src)
        KB_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, impl->stream));
}

static void cuda_sync(kb_backend *be)
{
    kb_cuda *impl = kb_cuda_enter(be);
    KB_CUDA(cudaStreamSynchronize(impl->stream));
}

/* ---- elementwise over n floats ---- */

static void cuda_fill(kb_backend *be, float *x, float v, size_t n)
{
    kb_cuda *impl = kb_cuda_enter(be);
    if (!n)
        return;
    kb_cuda_fill_kernel<<<kb_cuda_blocks(impl, n, KB_EW_THREADS), KB_EW_THREADS, 0,
                          impl->stream>>>(x, v, n);
    KB_CUDA_LAUNCHED();
}

static void cuda_scale(kb_backend *be, float *x, float a, size_t n)
{
    kb_cuda *impl = kb_cuda_enter(be);
    if (!n)
        return;
    kb_cuda_scale_kernel<<<kb_cuda_blocks(impl, n, KB_EW_THREADS), KB_EW_THREADS, 0,
                           impl->stream>>>(x, a, n);
    KB_CUDA_LAUNCHED();
}

static void cuda_axpy(kb_backend *be, float *y, float a, const float *x, size_t n)
{
    kb_cuda *impl = kb_cuda_enter(be);
    if (!n)
        return;
    kb_cuda_axpy_kernel<<<kb_cuda_blocks(impl, n, KB_EW_THREADS), KB_EW_THREADS, 0,
                          impl->stream>>>(y, a, x, n);
    KB_CUDA_LAUNCHED();
}

static void cuda_add(kb_backend *be, float *y, const float *a, const float *b, size_t n)
{
    kb_cuda *impl = kb_cuda_enter(be);
    if (!n)
        return;
    kb_cuda_add_kernel<<<kb_cuda_blocks(impl, n, KB_EW_THREADS), KB_EW_THREADS, 0,
                         impl->stream>>>(y, a, b, n);
    KB_CUDA_LAUNCHED();
}

/* ---- create ---- */

/* Every failure here is an environment problem (no GPU, old driver, missing
 * library): reported in err so that the caller falls back to the CPU. */
extern "C" kb_backend *kb_cuda_create(int device, char *err, size_t errlen)
{
    int count = 0;
    cudaError_t rc = cudaGetDeviceCount(&count);
    if (rc != cudaSuccess) {
        /* Without a driver at all CUDA says "driver version is insufficient":
         * name the real cause. */
        if (access("/proc/driver/nvidia/version", F_OK) != 0 && rc == cudaErrorInsufficientDriver)
            snprintf(err, errlen, "no usable GPU: no NVIDIA driver loaded");
        else
            snprintf(err, errlen, "no usable GPU: %s", cudaGetErrorString(rc));
        return NULL;
    }
    if (count == 0) {
        snprintf(err, errlen, "no usable GPU: no CUDA device present");
        return NULL;
    }
    if (device < 0 || device >= count) {
        snprintf(err, errlen, "GPU %d requested, %d present", device, count);
        return NULL;
    }
    cudaDeviceProp prop;
    if ((rc = cudaSetDevice(device)) != cudaSuccess ||
        (rc = cudaGetDeviceProperties(&prop, device)) != cudaSuccess ||
        (rc = cudaFree(0)) != cudaSuccess) { /* creates the context now */
        snprintf(err, errlen, "GPU %d unusable: %s", device, cudaGetErrorString(rc));
        return NULL;
    }
    kb_backend *be = (kb_backend *)calloc(1, sizeof *be);
    kb_cuda *impl = (kb_cuda *)calloc(1, sizeof *impl);
    if (!be || !impl) {
        free(be);
        free(impl);
        snprintf(err, errlen, "out of host memory");
        return NULL;
    }
    be->name = "cuda";
    be->impl = impl;
    be->destroy = cuda_destroy;
    impl->device = device;
    impl->sms = prop.multiProcessorCount > 0 ? prop.multiProcessorCount : 1;
    /* TF32 on by default, as PyTorch does for convolutions; RW_CUDA_TF32=0
     * gives full fp32 (for tight comparisons). Needs compute capability 8+. */
    const char *tf = getenv("RW_CUDA_TF32");
    impl->tf32 = !(tf && strcmp(tf, "0") == 0);
    impl->precision = impl->tf32 ? KB_PREC_TF32 : KB_PREC_FP32;

    if ((rc = cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        snprintf(err, errlen, "GPU %d: cannot create a stream: %s", device,
                 cudaGetErrorString(rc));
        cuda_destroy(be);
        return NULL;
    }
    cudnnStatus_t ds = cudnnCreate(&impl->cudnn);
    if (ds == CUDNN_STATUS_SUCCESS)
        ds = cudnnSetStream(impl->cudnn, impl->stream);
    if (ds != CUDNN_STATUS_SUCCESS) {
        snprintf(err, errlen, "cuDNN unusable: %s", cudnnGetErrorString(ds));
        impl->cudnn = NULL;
        cuda_destroy(be);
        return NULL;
    }
    cublasStatus_t bs = cublasCreate(&impl->cublas);
    if (bs == CUBLAS_STATUS_SUCCESS)
        bs = cublasSetStream(impl->cublas, impl->stream);
    if (bs == CUBLAS_STATUS_SUCCESS)
        bs = cublasSetMathMode(impl->cublas, impl->tf32 ? CUBLAS_TF32_TENSOR_OP_MATH
                                                          : CUBLAS_DEFAULT_MATH);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        snprintf(err, errlen, "cuBLAS unusable: %s", cublasGetStatusString(bs));
        impl->cublas = NULL;
        cuda_destroy(be);
        return NULL;
    }

    be->alloc = cuda_alloc;
    be->free = cuda_free;
    be->upload = cuda_upload;
    be->download = cuda_download;
    be->copy = cuda_copy;
    be->sync = cuda_sync;
    be->fill = cuda_fill;
    be->scale = cuda_scale;
    be->axpy = cuda_axpy;
    be->add = cuda_add;
    kb_cuda_conv_init(be);
    kb_cuda_norm_init(be);
    kb_cuda_ops_init(be);
    kb_cuda_loss_init(be);

    /* One tiny op end to end: a driver that loads but cannot run our code
     * (no kernel image for this GPU) fails here, not inside a training step. */
    float *probe = (float *)be->alloc(be, sizeof(float));
    float one = 0.0f;
    if (probe) {
        kb_cuda_fill_kernel<<<1, 32, 0, impl->stream>>>(probe, 1.0f, 1);
        rc = cudaGetLastError();
        if (rc == cudaSuccess)
            rc = cudaMemcpyAsync(&one, probe, sizeof one, cudaMemcpyDeviceToHost, impl->stream);
        if (rc == cudaSuccess)
            rc = cudaStreamSynchronize(impl->stream);
        cudaFree(probe);
    } else {
        rc = cudaErrorMemoryAllocation;
    }
    if (rc != cudaSuccess || one != 1.0f) {
        snprintf(err, errlen, "GPU %d (%s, compute capability %d.%d) cannot run our kernels: %s",
                 device, prop.name, prop.major, prop.minor,
                 rc != cudaSuccess ? cudaGetErrorString(rc) : "wrong result");
        cuda_destroy(be);
        return NULL;
    }
    return be;
}
