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

#include <stdint.h>
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
#define KB_CUDA_BYTES(bytes) ((void)sizeof(bytes)) /* evaluated never; its names used */
#endif

/* What each queue (stream) owns: ops on the two queues run at the same
 * time, so each has its own scratch, convolution workspace and cuBLAS
 * workspace. The impl's current fields below are those of the queue in use;
 * side_begin / side_end swap them. */
typedef struct kb_cuda_lane {
    cudaStream_t stream;
    void *ws, *scratch, *cublas_ws;
    size_t ws_bytes, scratch_bytes;
    unsigned *ticket;
} kb_cuda_lane;

typedef struct kb_cuda {
    int device;
    int tf32;              /* tensor-core TF32 for convolutions and GEMMs */
    kb_precision precision; /* what set_precision put in effect */
    int sms;               /* multiprocessors, to size grids */
    /* Cooperative launches (all blocks resident at once, so that they can
     * wait for each other) and the shared memory a block and a
     * multiprocessor may hold: what the one-read batch norms of
     * norm_fused.cu need. coop 0: never fused. */
    int coop;
    size_t smem_block, smem_sm;
    /* The communicator of the last all-reduce queued (comm_allreduce,
     * nccl.cu), which comm_join joins. */
    struct kb_comm *comm_last;
    cudaStream_t stream;   /* the queue in use: ops run here, in call order */
    cudnnHandle_t cudnn;
    cublasHandle_t cublas;
    void *cublas_ws; /* set with cublasSetWorkspace: no allocation inside a capture */
    size_t cublas_ws_bytes;
    /* The queue in use's convolution workspace, shared by all plans (ops
     * on one queue run one at a time), grown by conv_plan to the largest
     * need on both queues. */
    void *ws;
    size_t ws_bytes;
    /* The queue in use's scratch for reduction partials, coefficients and
     * operand copies, grown on demand (a grow frees the old block, which
     * waits for the device: it happens in the first steps only). */
    void *scratch;
    size_t scratch_bytes;
    /* The queue in use's counter for a reduction's last block (norm.cu):
     * zero between launches. */
    unsigned *ticket;
    /* The two queues (lane[0] the main one; the current one's fields live
     * above while it is in use), and the events that fork and join them. */
    kb_cuda_lane lane[2];
    int side;              /* 1 while ops go to lane[1] */
    cudaEvent_t fork_ev, join_ev;
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
    /* Pinned host blocks (host_alloc), each with the event of the last
     * upload that read it (device.cu). */
    struct kb_cuda_pinned *pinned;
} kb_cuda;

/* One shape's choices under one math mode and one determinism request,
 * for each direction (forward, backward data, backward filter); the times
 * behind them are for RW_CUDA_CONV_LOG. */
struct kb_cuda_algo_memo {
    kb_conv_desc d;
    int precision; /* kb_precision */
    struct {
        int algo;  /* cudnnConvolution*Algo_t */
        int math;  /* cudnnMathType_t */
        int bf16;  /* operands cuDNN runs on: bf16, or fp32 where it runs no bf16 */
        float ms;  /* cuDNN's time */
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

/* Ensures both queues' convolution workspaces hold `bytes` (a plan may run
 * on either); 0 on success, -1 on OOM. */
int kb_cuda_ws_reserve(kb_cuda *impl, size_t bytes);
/* Grows both queues' scratch to `bytes` now (plan time), so that calls do
 * not grow it. */
void kb_cuda_scratch_reserve(kb_cuda *impl, size_t bytes);

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
void kb_cuda_comm_init(kb_backend *be);
void kb_cuda_ops_init(kb_backend *be);
void kb_cuda_loss_init(kb_backend *be);
void kb_cuda_fmap_init(kb_backend *be);
void kb_cuda_optim_init(kb_backend *be);

/* ---- feature maps (fmap.cu) ----
 * NHWC in the math's type: bf16 in BF16 mode, fp32 otherwise; a pixel's
 * channels padded with zeros to a multiple of 16 bytes (kb_cuda_cpad), the
 * width of one vector load, which cuDNN's tensor-core kernels also want
 * (the 3-channel image becomes 8 bf16 or 4 fp32 channels). Every kernel
 * that writes a feature map writes its padding as zeros. */
static inline int kb_cuda_esize(const kb_cuda *impl) { return impl->precision == KB_PREC_BF16 ? 2 : 4; }
static inline int kb_cuda_cpad_e(int C, int esize)
{
    const int v = 16 / esize;
    return (C + v - 1) / v * v;
}
static inline int kb_cuda_cpad(const kb_cuda *impl, int C) { return kb_cuda_cpad_e(C, kb_cuda_esize(impl)); }
static inline size_t kb_cuda_fmap_bytes(const kb_cuda *impl, long N, int C, long HW)
{
    return (size_t)N * HW * kb_cuda_cpad(impl, C) * kb_cuda_esize(impl);
}

/* ---- cooperative launches (norm_fused.cu) ----
 * KB_CUDA_COOP_LAUNCH(kernel, grid, block, smem, stream, args...) launches
 * a kernel whose blocks are all resident at once (the launch fails
 * otherwise), so that they may wait for one another at kb_grid_sync; a
 * CUDA graph captures it like any launch. kb_dyn_smem() is the block's
 * dynamic shared memory. The emulator runs such a grid phase by phase:
 * every block up to its next grid barrier, in block order -- so a static
 * __shared__ variable (one copy there) must not carry a value across a
 * grid barrier; the dynamic shared memory is the block's own. */
#ifdef KB_CUDA_EMU
#define KB_CUDA_COOP_LAUNCH(kern, grid, block, smem, queue, ...)               \
    emu_launch_coop(#kern, dim3(grid), dim3(block), (size_t)(smem), [=] { kern(__VA_ARGS__); })
static inline unsigned char *kb_dyn_smem(void) { return emu_dyn_smem(); }
/* the barrier's counter is the real GPU's; the emulator schedules instead */
static inline void kb_grid_sync(unsigned *, unsigned, unsigned) { emu_grid_sync(); }
static inline void kb_grid_done(unsigned *, unsigned) {}
#else
#define KB_CUDA_COOP_LAUNCH(kern, grid, block, smem, queue, ...)               \
    do {                                                                       \
        cudaLaunchConfig_t cfg_ = {};                                          \
        cudaLaunchAttribute at_[1];                                            \
        at_[0].id = cudaLaunchAttributeCooperative;                            \
        at_[0].val.cooperative = 1;                                            \
        cfg_.gridDim = dim3(grid);                                             \
        cfg_.blockDim = dim3(block);                                           \
        cfg_.dynamicSmemBytes = (size_t)(smem);                                \
        cfg_.stream = (queue);                                                 \
        cfg_.attrs = at_;                                                      \
        cfg_.numAttrs = 1;                                                     \
        KB_CUDA(cudaLaunchKernelEx(&cfg_, kern, __VA_ARGS__));                 \
    } while (0)
static __device__ __forceinline__ unsigned char *kb_dyn_smem(void)
{
    extern __shared__ __align__(16) unsigned char kb_dyn_smem_[];
    return kb_dyn_smem_;
}
/* Grid barrier number `round` (1, 2, ...) of a cooperative grid of
 * `blocks` blocks on a counter that is zero at the launch: each block adds
 * one and waits for round x blocks arrivals. */
static __device__ __forceinline__ void kb_grid_sync(unsigned *bar, unsigned round,
                                                    unsigned blocks)
{
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence(); /* this block's writes before its arrival */
        atomicAdd(bar, 1u);
        while (*(volatile unsigned *)bar < round * blocks)
            __nanosleep(64);
        __threadfence(); /* the others' writes after their arrivals */
    }
    __syncthreads();
}
/* After the last of `rounds` barriers: the counter back to zero for the
 * next launch, by the last block to arrive once more (every block has
 * left the last barrier by then). */
static __device__ __forceinline__ void kb_grid_done(unsigned *bar, unsigned rounds)
{
    if (threadIdx.x == 0 &&
        atomicAdd(bar, 1u) == (rounds + 1) * (gridDim.x * gridDim.y) - 1)
        *bar = 0;
}
#endif

/* ---- device helpers shared by the .cu files ---- */

/* 16 bytes of a feature map: 8 bf16 or 4 fp32 channels of one pixel, loaded
 * and stored in one instruction. bf16 <-> float by bits, rounding to
 * nearest even (a NaN stays a quiet NaN), as cuda_bf16.h's
 * __float2bfloat16_rn: the same bits on the GPU and on the emulator. */
struct alignas(16) kb_v16 {
    uint32_t u[4];
};

static __device__ __forceinline__ float kb_bf16_to_f(uint32_t bits16) { return __uint_as_float(bits16 << 16); }

static __device__ __forceinline__ uint32_t kb_f_to_bf16(float f)
{
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (u >> 16) | 0x0040u;
    u += 0x7fffu + ((u >> 16) & 1u);
    return u >> 16;
}

/* The vector's values (8 for bf16, 4 for fp32) into f. */
static __device__ __forceinline__ void kb_v16_get(const kb_v16 &v, int bf16, float *f)
{
    if (bf16)
        for (int k = 0; k < 4; k++) {
            f[2 * k] = kb_bf16_to_f(v.u[k] & 0xffffu);
            f[2 * k + 1] = kb_bf16_to_f(v.u[k] >> 16);
        }
    else
        for (int k = 0; k < 4; k++)
            f[k] = __uint_as_float(v.u[k]);
}

static __device__ __forceinline__ kb_v16 kb_v16_make(const float *f, int bf16)
{
    kb_v16 v;
    if (bf16)
        for (int k = 0; k < 4; k++)
            v.u[k] = kb_f_to_bf16(f[2 * k]) | (kb_f_to_bf16(f[2 * k + 1]) << 16);
    else
        for (int k = 0; k < 4; k++)
            v.u[k] = __float_as_uint(f[k]);
    return v;
}

/* Element i of a buffer of bf16 or fp32 values. */
static __device__ __forceinline__ float kb_elem(const void *p, size_t i, int bf16)
{
    return bf16 ? kb_bf16_to_f(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static __device__ __forceinline__ void kb_elem_set(void *p, size_t i, float v, int bf16)
{
    if (bf16)
        ((uint16_t *)p)[i] = (uint16_t)kb_f_to_bf16(v);
    else
        ((float *)p)[i] = v;
}

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
