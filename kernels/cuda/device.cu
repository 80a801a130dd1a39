/* The CUDA backend: device discovery, create/destroy, memory, the two
 * queues, graphs, elementwise ops. Convolutions are in conv2d.cu (cuDNN),
 * batch norm and L2 norm in norm.cu, ReLU/pooling/linear (cuBLAS) in
 * ops.cu, losses and metrics in loss.cu, the update and the weights'
 * mirrors in optim.cu, the math mode and layout conversions in
 * precision.cu, the views in augment.cu. */
#include <string.h>
#include <unistd.h>

#include "kernels/cuda/cuda.h"
#include "kernels/cuda_augment.h"

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

/* One block: row *counter % slots of ring = src, then the counter moves. */
__global__ void kb_cuda_ring_push_kernel(float *ring, int slots, const float *src, int n,
                                         uint32_t *counter)
{
    const uint32_t row = *counter % (uint32_t)slots;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        ring[(size_t)row * n + i] = src[i];
    __syncthreads(); /* every thread has read the counter */
    if (threadIdx.x == 0)
        *counter = *counter + 1;
}

/* ---- launchers ---- */

#define KB_EW_THREADS 256

kb_cuda *kb_cuda_enter(kb_backend *be)
{
    kb_cuda *impl = kb_cuda_of(be);
    KB_CUDA(cudaSetDevice(impl->device));
    return impl;
}

/* The backend capturing on this thread, if any. */
static thread_local kb_cuda *capturing_here;

int kb_cuda_capture_absorb(const char *file, int line, const char *call, const char *why)
{
    kb_cuda *impl = capturing_here;
    if (!impl || !impl->capturing)
        return 0;
    if (!impl->capture_bad[0]) {
        const char *base = strrchr(file, '/');
        snprintf(impl->capture_bad, sizeof impl->capture_bad, "%s:%d: %.60s: %s",
                 base ? base + 1 : file, line, call, why);
    }
    (void)cudaGetLastError(); /* not sticky: the eager rerun must not see it */
    return 1;
}

int kb_cuda_capture_refuse(kb_cuda *impl, const char *why)
{
    if (!impl->capturing)
        return 0;
    if (!impl->capture_bad[0])
        snprintf(impl->capture_bad, sizeof impl->capture_bad, "%s", why);
    return 1;
}

void kb_cuda_release(kb_cuda *impl, void *p)
{
    if (!p)
        return;
    if (impl->live_graphs == 0) {
        KB_CUDA(cudaFree(p)); /* waits for the device: no op still uses p */
        return;
    }
    if (impl->n_retired == impl->cap_retired) {
        int cap = impl->cap_retired ? 2 * impl->cap_retired : 16;
        void **r = (void **)realloc(impl->retired, (size_t)cap * sizeof *r);
        KB_CUDA_CHECK(r != NULL);
        impl->retired = r;
        impl->cap_retired = cap;
    }
    impl->retired[impl->n_retired++] = p;
}

/* The fields of the queue in use live in impl; the other's in its lane. */
static void lane_save(kb_cuda *impl, kb_cuda_lane *l)
{
    l->stream = impl->stream;
    l->ws = impl->ws;
    l->ws_bytes = impl->ws_bytes;
    l->scratch = impl->scratch;
    l->scratch_bytes = impl->scratch_bytes;
    l->cublas_ws = impl->cublas_ws;
    l->ticket = impl->ticket;
}

static void lane_load(kb_cuda *impl, const kb_cuda_lane *l)
{
    impl->stream = l->stream;
    impl->ws = l->ws;
    impl->ws_bytes = l->ws_bytes;
    impl->scratch = l->scratch;
    impl->scratch_bytes = l->scratch_bytes;
    impl->cublas_ws = l->cublas_ws;
    impl->ticket = l->ticket;
    KB_CUDNN(cudnnSetStream(impl->cudnn, impl->stream));
    KB_CUBLAS(cublasSetStream(impl->cublas, impl->stream));
    KB_CUBLAS(cublasSetWorkspace(impl->cublas, impl->cublas_ws, impl->cublas_ws_bytes));
}

/* Moves to queue `side` (0 main, 1 second). */
static void lane_switch(kb_cuda *impl, int side)
{
    if (impl->side == side)
        return;
    lane_save(impl, &impl->lane[impl->side]);
    lane_load(impl, &impl->lane[side]);
    impl->side = side;
}

void *kb_cuda_scratch(kb_cuda *impl, size_t bytes)
{
    if (bytes <= impl->scratch_bytes)
        return impl->scratch;
    /* The recording is discarded: the pointer handed out is never used. */
    if (kb_cuda_capture_refuse(impl, "scratch had to grow"))
        return impl->scratch;
    size_t want = bytes < ((size_t)8 << 20) ? ((size_t)8 << 20) : bytes * 2;
    kb_cuda_release(impl, impl->scratch);
    impl->scratch = NULL;
    impl->scratch_bytes = 0;
    impl->mem_gen++;
    KB_CUDA(cudaMalloc(&impl->scratch, want));
    impl->scratch_bytes = want;
    return impl->scratch;
}

/* Grows the convolution workspace of the queue in use. */
static int ws_grow(kb_cuda *impl, size_t bytes)
{
    if (bytes <= impl->ws_bytes)
        return 0;
    if (kb_cuda_capture_refuse(impl, "the convolution workspace had to grow"))
        return -1;
    kb_cuda_release(impl, impl->ws);
    impl->ws = NULL;
    impl->ws_bytes = 0;
    impl->mem_gen++;
    if (cudaMalloc(&impl->ws, bytes) != cudaSuccess) {
        (void)cudaGetLastError(); /* clear the sticky-free OOM error */
        impl->ws = NULL;
        return -1;
    }
    impl->ws_bytes = bytes;
    return 0;
}

/* A plan may run on either queue: both get what it needs. */
int kb_cuda_ws_reserve(kb_cuda *impl, size_t bytes)
{
    const int was = impl->side;
    int rc = 0;
    for (int q = 0; q < 2 && rc == 0; q++) {
        lane_switch(impl, q);
        rc = ws_grow(impl, bytes);
    }
    lane_switch(impl, was);
    return rc;
}

void kb_cuda_scratch_reserve(kb_cuda *impl, size_t bytes)
{
    const int was = impl->side;
    for (int q = 0; q < 2; q++) {
        lane_switch(impl, q);
        kb_cuda_scratch(impl, bytes);
    }
    lane_switch(impl, was);
}

/* ---- pinned host memory (the ops below, with upload) ---- */

/* A block from cudaMallocHost and the event recorded after the last upload
 * that read it: host_wait waits for that one copy, not the whole queue. */
struct kb_cuda_pinned {
    char *p;
    size_t n;
    cudaEvent_t ev;
    int pending; /* an upload read it since the last wait */
    struct kb_cuda_pinned *next;
};

static struct kb_cuda_pinned *pinned_of(kb_cuda *impl, const void *p)
{
    const char *c = (const char *)p;
    for (struct kb_cuda_pinned *b = impl->pinned; b; b = b->next)
        if (c >= b->p && c < b->p + b->n)
            return b;
    return NULL;
}

static void pinned_drop(struct kb_cuda_pinned *b)
{
    if (b->pending)
        KB_CUDA(cudaEventSynchronize(b->ev));
    KB_CUDA(cudaEventDestroy(b->ev));
    KB_CUDA(cudaFreeHost(b->p));
    free(b);
}

static void cuda_destroy(kb_backend *be)
{
    kb_cuda *impl = kb_cuda_of(be);
    cudaSetDevice(impl->device);
    if (impl->stream) /* the current queue's fields back to their lane */
        lane_save(impl, &impl->lane[impl->side]);
    for (int q = 0; q < 2; q++) {
        kb_cuda_lane *l = &impl->lane[q];
        if (l->stream)
            cudaStreamSynchronize(l->stream);
        if (l->ws)
            cudaFree(l->ws);
        if (l->scratch)
            cudaFree(l->scratch);
        if (l->cublas_ws)
            cudaFree(l->cublas_ws);
        if (l->ticket)
            cudaFree(l->ticket);
    }
    while (impl->pinned) {
        struct kb_cuda_pinned *b = impl->pinned;
        impl->pinned = b->next;
        pinned_drop(b);
    }
    for (int i = 0; i < impl->n_retired; i++)
        cudaFree(impl->retired[i]);
    free(impl->retired);
    if (impl->cublas)
        cublasDestroy(impl->cublas);
    if (impl->cudnn)
        cudnnDestroy(impl->cudnn);
    if (impl->fork_ev)
        cudaEventDestroy(impl->fork_ev);
    if (impl->join_ev)
        cudaEventDestroy(impl->join_ev);
    for (int q = 0; q < 2; q++)
        if (impl->lane[q].stream)
            cudaStreamDestroy(impl->lane[q].stream);
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
    if (kb_cuda_capture_refuse(impl, "alloc inside a capture"))
        return NULL;
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
    if (kb_cuda_capture_refuse(impl, "free inside a capture"))
        return;
    /* A graph may still hold p (the caller's buffers are the caller's to
     * keep stable; it frees them only after freeing its graphs), so this
     * frees at once unless a graph is alive. */
    kb_cuda_release(impl, p);
}

/* From pageable host memory cudaMemcpyAsync returns once the source has been
 * staged, so the caller may reuse host_src at once; the device copy is
 * ordered on the stream after earlier ops. */
static void cuda_upload(kb_backend *be, void *dst, const void *src, size_t bytes)
{
    kb_cuda *impl = kb_cuda_enter(be);
    if (kb_cuda_capture_refuse(impl, "upload inside a capture"))
        return;
    if (!bytes)
        return;
    KB_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, impl->stream));
    /* From pinned memory the copy runs later: host_wait waits for it. */
    struct kb_cuda_pinned *b = impl->pinned ? pinned_of(impl, src) : NULL;
    if (b) {
        KB_CUDA(cudaEventRecord(b->ev, impl->stream));
        b->pending = 1;
    }
}

static void *cuda_host_alloc(kb_backend *be, size_t bytes)
{
    kb_cuda *impl = kb_cuda_enter(be);
    if (kb_cuda_capture_refuse(impl, "host_alloc inside a capture"))
        return NULL;
    struct kb_cuda_pinned *b = (struct kb_cuda_pinned *)calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->n = bytes ? bytes : 1;
    if (cudaMallocHost((void **)&b->p, b->n) != cudaSuccess) {
        (void)cudaGetLastError(); /* OOM is reported as NULL */
        free(b);
        return NULL;
    }
    KB_CUDA(cudaEventCreateWithFlags(&b->ev, cudaEventDisableTiming));
    b->next = impl->pinned;
    impl->pinned = b;
    return b->p;
}

static void cuda_host_wait(kb_backend *be, void *p)
{
    kb_cuda *impl = kb_cuda_enter(be);
    struct kb_cuda_pinned *b = pinned_of(impl, p);
    KB_CUDA_CHECK(b != NULL);
    if (kb_cuda_capture_refuse(impl, "host_wait inside a capture"))
        return;
    if (b->pending)
        KB_CUDA(cudaEventSynchronize(b->ev));
    b->pending = 0;
}

static void cuda_host_free(kb_backend *be, void *p)
{
    kb_cuda *impl = kb_cuda_enter(be);
    if (!p || kb_cuda_capture_refuse(impl, "host_free inside a capture"))
        return;
    for (struct kb_cuda_pinned **at = &impl->pinned; *at; at = &(*at)->next)
        if ((*at)->p == p) {
            struct kb_cuda_pinned *b = *at;
            *at = b->next;
            pinned_drop(b);
            return;
        }
    KB_CUDA_CHECK(!"host_free of a block host_alloc did not give");
}

static void cuda_download(kb_backend *be, void *dst, const void *src, size_t bytes)
{
    kb_cuda *impl = kb_cuda_enter(be);
    if (kb_cuda_capture_refuse(impl, "download inside a capture"))
        return;
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
    if (kb_cuda_capture_refuse(impl, "sync inside a capture"))
        return;
    KB_CUDA(cudaStreamSynchronize(impl->stream));
}

/* The GPU's name and memory. A failed query is not a dead device (a report
 * asks, nothing depends on it): cleared, and answered as unknown. */
static void cuda_device_info(kb_backend *be, char *name, size_t len, size_t *free_bytes,
                             size_t *total_bytes)
{
    kb_cuda *impl = kb_cuda_enter(be);
    cudaDeviceProp prop;
    if (len) {
        if (cudaGetDeviceProperties(&prop, impl->device) == cudaSuccess) {
            snprintf(name, len, "%s", prop.name);
        } else {
            (void)cudaGetLastError();
            snprintf(name, len, "CUDA device %d", impl->device);
        }
    }
    *free_bytes = *total_bytes = 0;
    if (cudaMemGetInfo(free_bytes, total_bytes) != cudaSuccess) {
        (void)cudaGetLastError();
        *free_bytes = *total_bytes = 0;
    }
}

/* ---- timing: CUDA events on the backend's stream ---- */

struct kb_stamp {
    cudaEvent_t ev;
};

static kb_stamp *cuda_stamp_create(kb_backend *be)
{
    kb_cuda_enter(be);
    kb_stamp *s = (kb_stamp *)calloc(1, sizeof *s);
    if (s && cudaEventCreate(&s->ev) != cudaSuccess) {
        (void)cudaGetLastError();
        free(s);
        s = NULL;
    }
    return s;
}

static void cuda_stamp_record(kb_backend *be, kb_stamp *s)
{
    kb_cuda *impl = kb_cuda_enter(be);
    if (kb_cuda_capture_refuse(impl, "timing stamp inside a capture"))
        return;
    KB_CUDA(cudaEventRecord(s->ev, impl->stream));
}

static double cuda_stamp_ms(kb_backend *be, const kb_stamp *a, const kb_stamp *b)
{
    kb_cuda_enter(be);
    float ms = 0;
    KB_CUDA(cudaEventElapsedTime(&ms, a->ev, b->ev));
    return ms;
}

static void cuda_stamp_free(kb_backend *be, kb_stamp *s)
{
    kb_cuda_enter(be);
    if (s) {
        cudaEventDestroy(s->ev);
        free(s);
    }
}

/* ---- captured op sequences (CUDA graphs) ---- */

struct kb_graph {
    cudaGraphExec_t exec;
    unsigned long mem_gen; /* scratch/workspace generation it was captured under */
};

/* Thread-local mode: only this thread's unsafe calls break the capture
 * (the NCCL proxy and loader threads of the process go on). */
static int cuda_capture_begin(kb_backend *be)
{
    kb_cuda *impl = kb_cuda_enter(be);
    KB_CUDA_CHECK(!impl->capturing && !impl->side);
    impl->capture_bad[0] = 0;
    if (cudaStreamBeginCapture(impl->stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
        (void)cudaGetLastError();
        return -1;
    }
    impl->capturing = 1;
    capturing_here = impl;
    return 0;
}

static kb_graph *cuda_capture_end(kb_backend *be, char *err, size_t errlen)
{
    kb_cuda *impl = kb_cuda_enter(be);
    KB_CUDA_CHECK(impl->capturing && !impl->side); /* the second queue joined */
    cudaGraph_t graph = NULL;
    cudaError_t rc = cudaStreamEndCapture(impl->stream, &graph);
    impl->capturing = 0;
    capturing_here = NULL;
    kb_graph *g = NULL;
    if (impl->capture_bad[0] || rc != cudaSuccess) {
        snprintf(err, errlen, "CUDA graph capture failed: %s",
                 impl->capture_bad[0] ? impl->capture_bad : cudaGetErrorString(rc));
        (void)cudaGetLastError();
        goto out;
    }
    g = (kb_graph *)calloc(1, sizeof *g);
    if (!g) {
        snprintf(err, errlen, "out of host memory");
        goto out;
    }
    rc = cudaGraphInstantiate(&g->exec, graph, 0);
    if (rc != cudaSuccess) {
        snprintf(err, errlen, "CUDA graph instantiation failed: %s", cudaGetErrorString(rc));
        (void)cudaGetLastError();
        free(g);
        g = NULL;
        goto out;
    }
    g->mem_gen = impl->mem_gen;
    impl->live_graphs++;
out:
    if (graph)
        cudaGraphDestroy(graph);
    return g;
}

static int cuda_graph_launch(kb_backend *be, kb_graph *g)
{
    kb_cuda *impl = kb_cuda_enter(be);
    if (g->mem_gen != impl->mem_gen)
        return -1; /* scratch or workspace moved since: capture again */
    KB_CUDA(cudaGraphLaunch(g->exec, impl->stream));
    return 0;
}

static void cuda_graph_free(kb_backend *be, kb_graph *g)
{
    kb_cuda *impl = kb_cuda_enter(be);
    if (!g)
        return;
    /* A launched graph may still run: wait before its memory can go. */
    KB_CUDA(cudaStreamSynchronize(impl->stream));
    KB_CUDA(cudaGraphExecDestroy(g->exec));
    free(g);
    if (--impl->live_graphs == 0) {
        for (int i = 0; i < impl->n_retired; i++)
            KB_CUDA(cudaFree(impl->retired[i]));
        impl->n_retired = 0;
    }
}

/* ---- the second queue ---- */

/* The side queue starts after what the main queue holds now. */
static void cuda_side_begin(kb_backend *be)
{
    kb_cuda *impl = kb_cuda_enter(be);
    KB_CUDA_CHECK(impl->side == 0);
    KB_CUDA(cudaEventRecord(impl->fork_ev, impl->stream));
    KB_CUDA(cudaStreamWaitEvent(impl->lane[1].stream, impl->fork_ev, 0));
    lane_switch(impl, 1);
}

/* Back to the main queue, which goes on without waiting. */
static void cuda_side_end(kb_backend *be)
{
    kb_cuda *impl = kb_cuda_enter(be);
    KB_CUDA_CHECK(impl->side == 1);
    KB_CUDA(cudaEventRecord(impl->join_ev, impl->stream));
    lane_switch(impl, 0);
}

/* The main queue waits for what the side queue was given. */
static void cuda_side_join(kb_backend *be)
{
    kb_cuda *impl = kb_cuda_enter(be);
    KB_CUDA_CHECK(impl->side == 0);
    KB_CUDA(cudaStreamWaitEvent(impl->stream, impl->join_ev, 0));
}

static void cuda_ring_push(kb_backend *be, float *ring, int slots, const float *src, int n,
                           uint32_t *counter)
{
    kb_cuda *impl = kb_cuda_enter(be);
    KB_CUDA_CHECK(n >= 1 && n <= 1024 && slots >= 1);
    KB_CUDA_BYTES(8 * (size_t)n + 8); /* src read, a row written, the counter read and written */
    kb_cuda_ring_push_kernel<<<1, 32 * ((n + 31) / 32), 0, impl->stream>>>(ring, slots, src, n,
                                                                            counter);
    KB_CUDA_LAUNCHED();
}

/* ---- elementwise over n floats ---- */

static void cuda_fill(kb_backend *be, float *x, float v, size_t n)
{
    kb_cuda *impl = kb_cuda_enter(be);
    if (!n)
        return;
    KB_CUDA_BYTES(4 * n); /* x written */
    kb_cuda_fill_kernel<<<kb_cuda_blocks(impl, n, KB_EW_THREADS), KB_EW_THREADS, 0,
                          impl->stream>>>(x, v, n);
    KB_CUDA_LAUNCHED();
}

static void cuda_scale(kb_backend *be, float *x, float a, size_t n)
{
    kb_cuda *impl = kb_cuda_enter(be);
    if (!n)
        return;
    KB_CUDA_BYTES(8 * n); /* x read and written */
    kb_cuda_scale_kernel<<<kb_cuda_blocks(impl, n, KB_EW_THREADS), KB_EW_THREADS, 0,
                           impl->stream>>>(x, a, n);
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

    /* Two queues: the main one, and one the teacher's forward pass runs on
     * beside the online network's (side_begin). */
    for (int q = 0; q < 2; q++)
        if ((rc = cudaStreamCreateWithFlags(&impl->lane[q].stream, cudaStreamNonBlocking)) !=
            cudaSuccess) {
            snprintf(err, errlen, "GPU %d: cannot create a stream: %s", device,
                     cudaGetErrorString(rc));
            cuda_destroy(be);
            return NULL;
        }
    impl->stream = impl->lane[0].stream;
    for (int q = 0; q < 2; q++)
        if ((rc = cudaMalloc(&impl->lane[q].ticket, sizeof(unsigned))) != cudaSuccess ||
            (rc = cudaMemset(impl->lane[q].ticket, 0, sizeof(unsigned))) != cudaSuccess) {
            snprintf(err, errlen, "GPU %d: no memory for a counter: %s", device,
                     cudaGetErrorString(rc));
            cuda_destroy(be);
            return NULL;
        }
    impl->ticket = impl->lane[0].ticket;
    if ((rc = cudaEventCreateWithFlags(&impl->fork_ev, cudaEventDisableTiming)) != cudaSuccess ||
        (rc = cudaEventCreateWithFlags(&impl->join_ev, cudaEventDisableTiming)) != cudaSuccess) {
        snprintf(err, errlen, "GPU %d: cannot create an event: %s", device,
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
    /* Our own workspaces, one per queue: cuBLAS must not allocate inside a
     * graph capture. */
    if (bs == CUBLAS_STATUS_SUCCESS) {
        impl->cublas_ws_bytes = (size_t)32 << 20;
        for (int q = 0; q < 2; q++) {
            if (cudaMalloc(&impl->lane[q].cublas_ws, impl->cublas_ws_bytes) != cudaSuccess) {
                (void)cudaGetLastError();
                snprintf(err, errlen, "GPU %d: no memory for the cuBLAS workspace", device);
                cuda_destroy(be);
                return NULL;
            }
            if (q == 0)
                impl->cublas_ws = impl->lane[0].cublas_ws;
        }
        bs = cublasSetWorkspace(impl->cublas, impl->cublas_ws, impl->cublas_ws_bytes);
    }
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
    be->host_alloc = cuda_host_alloc;
    be->host_wait = cuda_host_wait;
    be->host_free = cuda_host_free;
    be->device_info = cuda_device_info;
    be->capture_begin = cuda_capture_begin;
    be->capture_end = cuda_capture_end;
    be->graph_launch = cuda_graph_launch;
    be->graph_free = cuda_graph_free;
    be->stamp_create = cuda_stamp_create;
    be->stamp_record = cuda_stamp_record;
    be->stamp_ms = cuda_stamp_ms;
    be->stamp_free = cuda_stamp_free;
    be->augment = kb_cuda_augment;
    be->side_begin = cuda_side_begin;
    be->side_end = cuda_side_end;
    be->side_join = cuda_side_join;
    be->ring_push = cuda_ring_push;
    be->fill = cuda_fill;
    be->scale = cuda_scale;
    kb_cuda_conv_init(be);
    kb_cuda_norm_init(be);
    kb_cuda_comm_init(be);
    kb_cuda_ops_init(be);
    kb_cuda_loss_init(be);
    kb_cuda_fmap_init(be);
    kb_cuda_optim_init(be);

    /* One tiny op end to end: a driver that loads but cannot run our code
     * (no kernel image for this GPU) fails here, not inside a training step. */
    float *probe = (float *)be->alloc(be, sizeof(float));
    float one = 0.0f;
    if (probe) {
        KB_CUDA_BYTES(sizeof(float));
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
