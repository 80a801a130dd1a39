/* Private to the CUDA backend: the impl struct, error checks, launch helpers
 * and the per-file op tables. Each .cu file implements one group of
 * kb_backend ops ("kernels" section, then "launchers") and fills its slots.
 *
 * Everything runs on one stream per backend, in call order, so an op never
 * waits for the host and the host waits only in download() and sync().
 * Reductions are deterministic: each partial sum has a fixed owner and a
 * fixed order (no atomics), so two runs on one GPU give the same bits. */
#ifndef RUNAWAY_KERNELS_CUDA_CUDA_H
#define RUNAWAY_KERNELS_CUDA_CUDA_H

#include <stdio.h>
#include <stdlib.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

extern "C" {
#include "kernels/backend.h"
}

/* A failed CUDA/cuDNN/cuBLAS call inside an op is a programmer error (bad
 * pointer, bad shape) or a dead device: abort with where and why. Inside a
 * stream capture on this thread it is instead what the capture could not
 * hold (a library that waits or allocates): the capture is marked failed
 * with the reason, capture_end discards it and the step runs eagerly. */
int kb_cuda_capture_absorb(const char *file, int line, const char *call, const char *why);

#define KB_CUDA(call)                                                          \
    do {                                                                       \
        cudaError_t e_ = (call);                                               \
        if (e_ != cudaSuccess &&                                               \
            !kb_cuda_capture_absorb(__FILE__, __LINE__, #call,                 \
                                    cudaGetErrorString(e_))) {                 \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,     \
                    cudaGetErrorString(e_));                                   \
            abort();                                                           \
        }                                                                      \
    } while (0)

#define KB_CUDNN(call)                                                         \
    do {                                                                       \
        cudnnStatus_t s_ = (call);                                             \
        if (s_ != CUDNN_STATUS_SUCCESS &&                                      \
            !kb_cuda_capture_absorb(__FILE__, __LINE__, #call,                 \
                                    cudnnGetErrorString(s_))) {                \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,     \
                    cudnnGetErrorString(s_));                                  \
            abort();                                                           \
        }                                                                      \
    } while (0)

#define KB_CUBLAS(call)                                                        \
    do {                                                                       \
        cublasStatus_t s_ = (call);                                            \
        if (s_ != CUBLAS_STATUS_SUCCESS &&                                     \
            !kb_cuda_capture_absorb(__FILE__, __LINE__, #call,                 \
                                    cublasGetStatusString(s_))) {              \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,     \
                    cublasGetStatusString(s_));                                \
            abort();                                                           \
        }                                                                      \
    } while (0)

#define KB_CUDA_CHECK(cond)                                                    \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__,  \
                    #cond);                                                    \
            abort();                                                           \
        }                                                                      \
    } while (0)

/* After every launch: catches bad configurations without waiting for the
 * kernel (cudaGetLastError does not synchronize). */
#define KB_CUDA_LAUNCHED() KB_CUDA(cudaGetLastError())

/* Just before each of its launches a launcher declares the DRAM bytes that
 * launch reads plus writes, from its tensors' extents (elements x element
 * size; read-modify-write counted twice): tools/step-cost sums them on the
 * emulator (kernels/cuda/emu, built with KB_CUDA_EMU), which counts a launch
 * without one as an error. Nothing at all in a GPU build. */
#ifdef KB_CUDA_EMU
#define KB_CUDA_BYTES(bytes) emu_launch_bytes((double)(bytes))
#else
#define KB_CUDA_BYTES(bytes) ((void)0)
#endif

typedef struct kb_cuda {
    int device;
    int tf32;              /* tensor-core TF32 for convolutions and GEMMs */
    kb_precision precision; /* what set_precision put in effect */
    int sms;               /* multiprocessors, to size grids */
    cudaStream_t stream;   /* every op runs here, in call order */
    cudnnHandle_t cudnn;
    cublasHandle_t cublas;
    void *cublas_ws; /* set with cublasSetWorkspace: no allocation inside a capture */
    size_t cublas_ws_bytes;
    /* One convolution workspace shared by all plans (ops run one at a time
     * on one stream), grown by conv_plan to the largest need. */
    void *ws;
    size_t ws_bytes;
    /* Scratch for reduction partials and per-channel coefficients, grown on
     * demand (a grow frees the old block, which waits for the device: it
     * happens in the first steps only). */
    void *scratch;
    size_t scratch_bytes;
    /* Max-pool windows seen by forward, keyed by the idx buffer: backward is
     * not told the window (the contract needs none on the CPU), and the
     * gather kernel must know which windows can contain an element. */
    struct {
        const int32_t *idx;
        int H, W, P, Q, k, stride, pad;
    } pool_memo[32];
    int pool_memo_next;
    /* Convolution algorithms already chosen, by shape: the teacher and the
     * repeated blocks of a ResNet ask for the same shapes again, and each
     * cudnnFind costs milliseconds. */
    struct kb_cuda_algo_memo *algo_memo;
    int n_algo_memo, cap_algo_memo;
    /* Stream capture (CUDA graphs, device.cu). While `capturing`, nothing
     * may wait for the device or (re)allocate: such a call records why in
     * capture_bad instead, and capture_end discards the graph. Graphs hold
     * raw pointers to scratch and workspace, so a grow bumps mem_gen and
     * graph_launch refuses graphs captured under an older generation; the
     * old blocks wait in `retired` until no graph is alive. */
    int capturing;
    char capture_bad[160];
    unsigned long mem_gen;
    int live_graphs;
    void **retired;
    int n_retired, cap_retired;
} kb_cuda;

/* One shape's choices under one math mode and one layout request
 * (RW_CUDA_CONV_LAYOUT), for each direction (forward, backward data,
 * backward filter); the times behind them are for RW_CUDA_CONV_LOG. */
struct kb_cuda_algo_memo {
    kb_conv_desc d;
    int precision;  /* kb_precision */
    int layout_req; /* 0 auto, 1 nchw, 2 nhwc */
    struct {
        int algo;            /* cudnnConvolution*Algo_t */
        int math;            /* cudnnMathType_t */
        int bf16, nhwc;      /* operands cuDNN runs on */
        float ms_conv, ms_copy; /* cuDNN's time, and our operand copies' */
    } dir[3];
};

static inline kb_cuda *kb_cuda_of(kb_backend *be) { return (kb_cuda *)be->impl; }

/* Makes the backend's device current on the calling thread (the setting is
 * per thread, and the backend may be driven from a thread other than its
 * creator) and returns the impl. */
kb_cuda *kb_cuda_enter(kb_backend *be);

/* Inside a capture: records why the capture cannot stand (the first reason
 * wins) and returns 1; outside: returns 0. For calls that would wait for
 * the device or allocate. */
int kb_cuda_capture_refuse(kb_cuda *impl, const char *why);

/* Frees a device block, or keeps it until no graph is alive. */
void kb_cuda_release(kb_cuda *impl, void *p);

/* Scratch of at least `bytes` (256-byte aligned), valid until the next call. */
void *kb_cuda_scratch(kb_cuda *impl, size_t bytes);

/* Ensures the convolution workspace holds `bytes`; 0 on success, -1 on OOM. */
int kb_cuda_ws_reserve(kb_cuda *impl, size_t bytes);

/* Grid for a grid-stride loop over n elements with `threads` per block. */
static inline unsigned kb_cuda_blocks(const kb_cuda *impl, size_t n, int threads)
{
    size_t b = (n + threads - 1) / threads;
    size_t cap = (size_t)impl->sms * 32;
    if (b > cap)
        b = cap;
    return b ? (unsigned)b : 1u;
}

void kb_cuda_conv_init(kb_backend *be);
void kb_cuda_norm_init(kb_backend *be);
void kb_cuda_ops_init(kb_backend *be);
void kb_cuda_loss_init(kb_backend *be);

/* ---- device helpers shared by the .cu files ---- */

/* Block-wide sum of a double; every thread gets the result. The order is
 * fixed by the block size: deterministic. `sh` holds blockDim.x/32 doubles.
 * All threads of the block must call it. */
static __device__ __forceinline__ double kb_cuda_block_sum(double v, double *sh)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    __syncthreads(); /* sh may still be read from a previous call */
    if (lane == 0)
        sh[warp] = v;
    __syncthreads();
    double s = 0.0;
    for (int w = 0; w < nw; w++)
        s += sh[w];
    return s;
}

static __device__ __forceinline__ double kb_cuda_block_max(double v, double *sh)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (lane == 0)
        sh[warp] = v;
    __syncthreads();
    double m = sh[0];
    for (int w = 1; w < nw; w++)
        m = fmax(m, sh[w]);
    return m;
}

#endif
