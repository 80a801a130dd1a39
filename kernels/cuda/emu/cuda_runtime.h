/* A CPU emulation (kernels/cuda/emu/run.sh) of the slice of CUDA that kernels/cuda uses: kernels run
 * block by block, each CUDA thread a coroutine that yields at barriers. */
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <cstdio>
#include <algorithm>
#include <functional>
using std::min;
using std::max;
#define __global__
#define __launch_bounds__(...)
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
struct dim3 { unsigned x, y, z; dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {} };
struct uint3e { unsigned x, y, z; };
extern uint3e threadIdx, blockIdx;
extern dim3 blockDim, gridDim;
struct double2 { double x, y; };
struct float2 { float x, y; };
struct float3 { float x, y, z; };
static inline double2 make_double2(double a, double b) { return {a, b}; }
static inline float2 make_float2(float a, float b) { return {a, b}; }
static inline float3 make_float3(float a, float b, float c) { return {a, b, c}; }
void emu_sync(void);
/* name: the kernel's (rewrite.py); its bytes are what the launcher declared
 * just before (KB_CUDA_BYTES -> emu_launch_bytes), or none (emu_cost.h). */
void emu_launch(const char *name, dim3 g, dim3 b, std::function<void()> f);
void emu_launch_bytes(double bytes);
/* A cooperative launch (KB_CUDA_COOP_LAUNCH, kernels/cuda/cuda.h): every
 * block up to its next emu_grid_sync, in block order, then the next phase;
 * each block has its own smem bytes of dynamic shared memory. */
void emu_launch_coop(const char *name, dim3 g, dim3 b, size_t smem, std::function<void()> f);
void emu_grid_sync(void);
unsigned char *emu_dyn_smem(void);
static inline void __syncthreads(void) { emu_sync(); }
double emu_shfl_d(double v, int o);
static inline double __shfl_xor_sync(unsigned, double v, int o) { return emu_shfl_d(v, o); }
static inline void __trap(void) { abort(); }
/* Blocks run one after another: an atomic is a plain add, a fence nothing. */
static inline unsigned atomicAdd(unsigned *p, unsigned v) { unsigned o = *p; *p = o + v; return o; }
static inline void __threadfence(void) {}
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline float __fmul_rn(float a, float b) { volatile float p = a * b; return p; }
static inline float __uint_as_float(uint32_t u) { float f; memcpy(&f, &u, sizeof f); return f; }
static inline uint32_t __float_as_uint(float f) { uint32_t u; memcpy(&u, &f, sizeof u); return u; }
typedef int cudaError_t;
enum { cudaSuccess = 0, cudaErrorMemoryAllocation = 2, cudaErrorInsufficientDriver = 35,
       cudaErrorStreamCaptureUnsupported = 900, cudaErrorStreamCaptureInvalidated = 901 };
typedef void *cudaStream_t;
enum { cudaStreamNonBlocking = 1 };
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
struct cudaDeviceProp { char name[256]; int multiProcessorCount, major, minor; };
static inline const char *cudaGetErrorString(cudaError_t e) { return e == 900 ? "operation not permitted when stream is capturing" : e == 901 ? "capture invalidated" : e ? "emu error" : "no error"; }
/* EMU_GPUS devices (default 1): every one is this process's emulated GPU */
static inline cudaError_t cudaGetDeviceCount(int *n) { const char *e = getenv("EMU_GPUS"); *n = e && atoi(e) > 0 ? atoi(e) : 1; return 0; }
static inline cudaError_t cudaSetDevice(int) { return 0; }
/* EMU_SMS multiprocessors (default 4: grids of a few blocks, so that the
 * suites exercise the cooperative kernels); shared memory as an H100's. */
static inline int emu_sms(void) { const char *e = getenv("EMU_SMS"); return e && atoi(e) > 0 ? atoi(e) : 4; }
static inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int) { strcpy(p->name, "emu"); p->multiProcessorCount = emu_sms(); p->major = 9; p->minor = 0; return 0; }
enum cudaDeviceAttr { cudaDevAttrCooperativeLaunch = 95, cudaDevAttrMaxSharedMemoryPerBlockOptin = 97, cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81 };
static inline cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int)
{
    *v = a == cudaDevAttrCooperativeLaunch ? 1 : a == cudaDevAttrMaxSharedMemoryPerBlockOptin ? 232448 : 233472;
    return 0;
}
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
template <class F> static inline cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int) { return 0; }
/* Blocks of `threads` with `smem` dynamic bytes one multiprocessor holds,
 * as an H100's: 2048 threads, 228 KB of shared memory, each block's static
 * arrays (8 KB, norm_fused.cu's) and 1 KB reserved besides. */
template <class F> static inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *n, F, int threads, size_t smem)
{
    const size_t per = smem + 8192 + 1024;
    int by_smem = (int)(233472 / per), by_threads = 2048 / (threads > 0 ? threads : 1);
    *n = by_smem < by_threads ? by_smem : by_threads;
    return 0;
}
static inline cudaError_t cudaGetLastError(void) { return 0; }
static inline cudaError_t cudaMemGetInfo(size_t *f, size_t *t) { *f = (size_t)8 << 30; *t = (size_t)16 << 30; return 0; }
static inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, int) { *s = (void *)1; return 0; }
static inline cudaError_t cudaStreamDestroy(cudaStream_t) { return 0; }

/* Stream capture (CUDA graphs): while a capture is open every stream op is
 * recorded instead of run, and a launched graph runs the records in order.
 * As on a GPU, what is illegal during a capture (a host wait, an
 * allocation, a copy from pageable host memory) fails and invalidates it. */
typedef int cudaStreamCaptureStatus;
enum { cudaStreamCaptureStatusNone = 0, cudaStreamCaptureStatusActive = 1, cudaStreamCaptureStatusInvalidated = 2 };
typedef int cudaStreamCaptureMode;
enum { cudaStreamCaptureModeGlobal = 0, cudaStreamCaptureModeThreadLocal = 1, cudaStreamCaptureModeRelaxed = 2 };
struct emu_graph;
typedef emu_graph *cudaGraph_t;
typedef emu_graph *cudaGraphExec_t;
/* Runs f now, or records it; counted under name with bytes (< 0: not
 * declared) when it runs (emu_cost.h). */
void emu_enqueue_op(const char *name, double bytes, std::function<void()> f);
void emu_enqueue(std::function<void()> f); /* the same, not counted: events */
int emu_capture_state(void);               /* cudaStreamCaptureStatus */
void emu_capture_invalidate(void);
int emu_is_pinned(const void *p);
cudaError_t cudaStreamBeginCapture(cudaStream_t, cudaStreamCaptureMode);
cudaError_t cudaStreamEndCapture(cudaStream_t, cudaGraph_t *g);
cudaError_t cudaStreamIsCapturing(cudaStream_t, cudaStreamCaptureStatus *st);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long flags = 0);
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e);
cudaError_t cudaGraphDestroy(cudaGraph_t g);
cudaError_t cudaMallocHost(void **p, size_t n);
cudaError_t cudaFreeHost(void *p);
template <class T> static inline cudaError_t cudaMallocHost(T **p, size_t n) { return cudaMallocHost((void **)p, n); }
static inline cudaError_t emu_unsafe_in_capture(void)
{
    if (emu_capture_state() == cudaStreamCaptureStatusNone) return 0;
    emu_capture_invalidate();
    return cudaErrorStreamCaptureUnsupported;
}
static inline cudaError_t cudaFree(void *p) { if (cudaError_t e = emu_unsafe_in_capture()) return e; free(p); return 0; }
static inline cudaError_t cudaMalloc(void **p, size_t n) { if (cudaError_t e = emu_unsafe_in_capture()) return e; *p = malloc(n ? n : 1); return *p ? 0 : 2; }
template <class T> static inline cudaError_t cudaMalloc(T **p, size_t n) { return cudaMalloc((void **)p, n); }
static inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return emu_unsafe_in_capture(); }
static inline cudaError_t cudaDeviceSynchronize(void) { return emu_unsafe_in_capture(); }
/* every op ran when it reached the (single) queue: done, unless capturing */
enum { cudaErrorNotReady = 600 };
static inline cudaError_t cudaStreamQuery(cudaStream_t) { return emu_unsafe_in_capture(); }
static inline cudaError_t cudaMemset(void *p, int v, size_t n) { if (cudaError_t e = emu_unsafe_in_capture()) return e; memset(p, v, n); return 0; }
static inline cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t) { emu_enqueue_op("cudaMemsetAsync", (double)n, [=] { memset(p, v, n); }); return 0; }
static inline cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind k, cudaStream_t)
{
    if (emu_capture_state() != cudaStreamCaptureStatusNone &&
        ((k == cudaMemcpyHostToDevice && !emu_is_pinned(s)) || (k == cudaMemcpyDeviceToHost && !emu_is_pinned(d)))) {
        emu_capture_invalidate();
        return cudaErrorStreamCaptureUnsupported;
    }
    /* bytes: a transfer reads or writes n in device memory, a device copy both */
    const char *name = k == cudaMemcpyHostToDevice ? "cudaMemcpyAsync H2D" : k == cudaMemcpyDeviceToHost ? "cudaMemcpyAsync D2H" : "cudaMemcpyAsync D2D";
    emu_enqueue_op(name, (double)n * (k == cudaMemcpyDeviceToDevice ? 2 : 1), [=] { memmove(d, s, n); });
    return 0;
}

/* Events, for timing at plan time: a record takes the host clock when the
 * stream reaches it (recorded like every stream op); waiting for one inside
 * a capture fails like any host wait. */
#include <chrono>
struct emu_event { double t; };
typedef emu_event *cudaEvent_t;
static inline cudaError_t cudaEventCreate(cudaEvent_t *e) { *e = new emu_event{0}; return 0; }
enum { cudaEventDisableTiming = 2 };
static inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned) { return cudaEventCreate(e); }
/* One queue runs everything in order: a wait on another stream's event is
 * already met (and, in a capture, adds nothing to record). */
static inline cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned) { return 0; }
static inline cudaError_t cudaEventDestroy(cudaEvent_t e) { delete e; return 0; }
static inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t = 0)
{
    emu_enqueue([=] { e->t = std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); });
    return 0;
}
static inline cudaError_t cudaEventSynchronize(cudaEvent_t) { return emu_unsafe_in_capture(); }
static inline cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) { *ms = (float)((b->t - a->t) * 1e3); return 0; }

/* EMU_TF32=1: float operands of convolutions whose math type allows tensor
 * cores (anything but CUDNN_FMA_MATH) and of GEMMs in
 * CUBLAS_TF32_TENSOR_OP_MATH are rounded to TF32 (10 mantissa bits, to
 * nearest even), as Ampere+ tensor cores take them; EMU_TF32=rz truncates
 * them instead (toward zero: twice the error, the worst case if a GPU does
 * that). The default emulation is exact fp32, which hides TF32's error from
 * the tests' bounds. */
static inline int emu_tf32_on(void) /* 0 off, 1 to nearest, 2 toward zero */
{
    static int on = -1;
    if (on < 0) {
        const char *e = getenv("EMU_TF32");
        on = !e ? 0 : strcmp(e, "1") == 0 ? 1 : strcmp(e, "rz") == 0 ? 2 : 0;
    }
    return on;
}
static inline float emu_tf32(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) != 0x7f800000u) {
        if (emu_tf32_on() != 2)
            u += 0xfffu + ((u >> 13) & 1u);
        u &= 0xffffe000u;
    }
    memcpy(&f, &u, 4);
    return f;
}
