/* Collectives for CUDA workers on NCCL (kernels/collective.h), and the
 * backend's queued all-reduces over them (kb_backend.comm_*).
 *
 * The communicator is non-blocking (ncclConfig_t.blocking = 0) so that every
 * call can be watched with a deadline: initialization and each operation
 * poll ncclCommGetAsyncError / cudaStreamQuery, and past the communicator's
 * timeout the communicator is aborted, which turns a dead or hung peer into
 * an error instead of a hang.
 *
 * The blocking calls (allreduce, broadcast, barrier) run on the
 * communicator's own stream after a device synchronization, so they follow
 * everything the backend queued and complete before the call returns.
 *
 * The queued ones (comm_allreduce) wait for the backend's queue with an
 * event, run on the communicator's stream beside the ops queued after them,
 * and join back at comm_join: the gradient's buckets leave while the
 * backward pass goes on, and a CUDA graph captures all of it (the stream
 * joins the capture through the event; NCCL operations are capturable).
 * bf16 on the wire: a kernel rounds the bucket into a staging buffer, NCCL
 * sums bf16 (rounding each partial sum), a kernel widens it back and
 * divides the average in fp32. comm_wait watches the backend's queue with
 * the communicator's deadline. */
#include <cuda_runtime.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kernels/cuda/cuda.h"

extern "C" {
#include "kernels/collective.h"
}

typedef struct nccl_impl {
    ncclComm_t comm;
    cudaStream_t stream;
    int device;
    int timeout_ms;
    int broken;
    kb_comm *self; /* its broken flag is the public copy of ours */
    float *one; /* device scratch for barrier */
    /* queued all-reduces: the backend's queue reached (ready), this
     * stream's work done (done); bf16 staging of stage_n values */
    cudaEvent_t ready, done;
    uint16_t *stage;
    size_t stage_n;
    char first_error[256];
} nccl_impl;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static int fail(nccl_impl *x, char *err, size_t errlen, const char *what, const char *why)
{
    if (!x->broken) {
        x->broken = 1;
        if (x->self)
            x->self->broken = 1;
        snprintf(x->first_error, sizeof x->first_error, "nccl %s: %s", what, why);
    }
    snprintf(err, errlen, "%s", x->first_error);
    return -1;
}

/* Waits until `s` (NULL: only initialization) has run everything queued
 * on it, watching for asynchronous NCCL errors and the deadline. */
static int wait_done(nccl_impl *x, const char *what, cudaStream_t s, int check_stream, char *err,
                     size_t errlen)
{
    double deadline = now_ms() + x->timeout_ms;
    for (;;) {
        ncclResult_t async = ncclSuccess;
        ncclResult_t q = ncclCommGetAsyncError(x->comm, &async);
        if (q != ncclSuccess)
            return fail(x, err, errlen, what, ncclGetErrorString(q));
        if (async != ncclSuccess && async != ncclInProgress) {
            ncclCommAbort(x->comm);
            return fail(x, err, errlen, what, ncclGetErrorString(async));
        }
        if (async == ncclSuccess) {
            if (!check_stream)
                return 0;
            cudaError_t st = cudaStreamQuery(s);
            if (st == cudaSuccess)
                return 0;
            if (st != cudaErrorNotReady)
                return fail(x, err, errlen, what, cudaGetErrorString(st));
        }
        if (now_ms() > deadline) {
            ncclCommAbort(x->comm);
            char why[96];
            snprintf(why, sizeof why, "timeout after %d ms (a peer is gone or hung)",
                     x->timeout_ms);
            return fail(x, err, errlen, what, why);
        }
        usleep(50);
    }
}

static int check_usable(nccl_impl *x, char *err, size_t errlen)
{
    if (x->broken) {
        snprintf(err, errlen, "communicator broken by an earlier error: %s", x->first_error);
        return -1;
    }
    cudaSetDevice(x->device);
    /* The backend's work on its own stream must be done before the buffer
     * is read: one device-wide synchronization. */
    cudaError_t s = cudaDeviceSynchronize();
    if (s != cudaSuccess)
        return fail(x, err, errlen, "synchronize", cudaGetErrorString(s));
    return 0;
}

static int nccl_allreduce(kb_comm *c, float *buf, size_t n, kb_reduce_op op, char *err,
                          size_t errlen)
{
    nccl_impl *x = (nccl_impl *)c->impl;
    if (check_usable(x, err, errlen) != 0)
        return -1;
    if (n == 0)
        return 0;
    ncclResult_t r = ncclAllReduce(buf, buf, n, ncclFloat32, op == KB_REDUCE_AVG ? ncclAvg : ncclSum,
                                   x->comm, x->stream);
    if (r != ncclSuccess && r != ncclInProgress)
        return fail(x, err, errlen, "allreduce", ncclGetErrorString(r));
    return wait_done(x, "allreduce", x->stream, 1, err, errlen);
}

static int nccl_broadcast(kb_comm *c, void *buf, size_t bytes, int root, char *err,
                          size_t errlen)
{
    nccl_impl *x = (nccl_impl *)c->impl;
    if (root < 0 || root >= c->world) {
        snprintf(err, errlen, "broadcast: root %d outside world of %d", root, c->world);
        return -1;
    }
    if (check_usable(x, err, errlen) != 0)
        return -1;
    if (bytes == 0)
        return 0;
    ncclResult_t r = ncclBroadcast(buf, buf, bytes, ncclUint8, root, x->comm, x->stream);
    if (r != ncclSuccess && r != ncclInProgress)
        return fail(x, err, errlen, "broadcast", ncclGetErrorString(r));
    return wait_done(x, "broadcast", x->stream, 1, err, errlen);
}

static int nccl_barrier(kb_comm *c, char *err, size_t errlen)
{
    nccl_impl *x = (nccl_impl *)c->impl;
    return nccl_allreduce(c, x->one, 1, KB_REDUCE_SUM, err, errlen);
}

static void nccl_destroy(kb_comm *c)
{
    nccl_impl *x = (nccl_impl *)c->impl;
    cudaSetDevice(x->device);
    if (x->broken)
        ncclCommAbort(x->comm); /* aborting twice is harmless; finalize could hang */
    else
        ncclCommDestroy(x->comm);
    if (x->one)
        cudaFree(x->one);
    if (x->stage)
        cudaFree(x->stage);
    if (x->ready)
        cudaEventDestroy(x->ready);
    if (x->done)
        cudaEventDestroy(x->done);
    cudaStreamDestroy(x->stream);
    free(x);
    free(c);
}

extern "C" kb_comm *kb_nccl_create(const kb_store *store, int rank, int world, int device,
                                   int timeout_ms, char *err, size_t errlen)
{
    if (!store || world < 1 || rank < 0 || rank >= world || timeout_ms <= 0) {
        snprintf(err, errlen, "nccl: bad arguments (rank %d of %d)", rank, world);
        return NULL;
    }
    if (cudaSetDevice(device) != cudaSuccess) {
        snprintf(err, errlen, "nccl: cannot use GPU %d", device);
        return NULL;
    }
    /* Rank 0 creates the unique id; the store (the daemon) relays it. */
    ncclUniqueId id;
    if (rank == 0) {
        ncclResult_t r = ncclGetUniqueId(&id);
        if (r != ncclSuccess || store->set(store->ud, "nccl/id", &id, sizeof id) != 0) {
            snprintf(err, errlen, "nccl: cannot publish the unique id: %s",
                     r != ncclSuccess ? ncclGetErrorString(r) : "store set failed");
            return NULL;
        }
    } else {
        size_t len = 0;
        if (store->get(store->ud, "nccl/id", &id, sizeof id, &len, timeout_ms) != 0 ||
            len != sizeof id) {
            snprintf(err, errlen, "nccl: rank %d of %d got no unique id within %d ms", rank,
                     world, timeout_ms);
            return NULL;
        }
    }
    kb_comm *c = (kb_comm *)calloc(1, sizeof *c);
    nccl_impl *x = (nccl_impl *)calloc(1, sizeof *x);
    if (!c || !x) {
        free(c);
        free(x);
        snprintf(err, errlen, "nccl: out of memory");
        return NULL;
    }
    x->device = device;
    x->timeout_ms = timeout_ms;
    x->self = c;
    if (cudaStreamCreateWithFlags(&x->stream, cudaStreamNonBlocking) != cudaSuccess ||
        cudaMalloc(&x->one, sizeof(float)) != cudaSuccess ||
        cudaEventCreateWithFlags(&x->ready, cudaEventDisableTiming) != cudaSuccess ||
        cudaEventCreateWithFlags(&x->done, cudaEventDisableTiming) != cudaSuccess) {
        snprintf(err, errlen, "nccl: cannot create a stream on GPU %d", device);
        if (x->ready)
            cudaEventDestroy(x->ready);
        if (x->one)
            cudaFree(x->one);
        if (x->stream)
            cudaStreamDestroy(x->stream);
        free(c);
        free(x);
        return NULL;
    }
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&x->comm, world, id, rank, &cfg);
    if ((r != ncclSuccess && r != ncclInProgress) ||
        wait_done(x, "init", NULL, 0, err, errlen) != 0) {
        if (r != ncclSuccess && r != ncclInProgress)
            snprintf(err, errlen, "nccl init (rank %d of %d): %s", rank, world,
                     ncclGetErrorString(r));
        if (x->comm)
            ncclCommAbort(x->comm);
        cudaFree(x->one);
        cudaEventDestroy(x->ready);
        cudaEventDestroy(x->done);
        cudaStreamDestroy(x->stream);
        free(c);
        free(x);
        return NULL;
    }
    c->rank = rank;
    c->world = world;
    c->name = "nccl";
    c->impl = x;
    c->allreduce = nccl_allreduce;
    c->broadcast = nccl_broadcast;
    c->barrier = nccl_barrier;
    c->destroy = nccl_destroy;
    c->device_memory = 1;
    return c;
}

/* ---- the backend's queued all-reduces (kb_backend.comm_*) ---- */

__global__ void kb_wire_pack_kernel(const float *src, uint16_t *dst, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = (uint16_t)kb_f_to_bf16(src[i]);
}

__global__ void kb_wire_unpack_kernel(const uint16_t *src, float *dst, size_t n, int divide_by)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float v = kb_bf16_to_f(src[i]);
        dst[i] = divide_by > 1 ? v / (float)divide_by : v;
    }
}

static int is_nccl(const kb_comm *c) { return c && c->device_memory && c->destroy == nccl_destroy; }

static int not_nccl(const kb_comm *c, char *err, size_t errlen)
{
    if (is_nccl(c))
        return 0;
    snprintf(err, errlen, "the CUDA backend queues collectives over NCCL only, not %s",
             c ? c->name : "none");
    return 1;
}

/* A non-blocking communicator's call may still be under way: its result. */
static ncclResult_t settle(nccl_impl *x, ncclResult_t r)
{
    const double deadline = now_ms() + x->timeout_ms;
    while (r == ncclInProgress) {
        ncclResult_t async = ncclSuccess;
        if (ncclCommGetAsyncError(x->comm, &async) != ncclSuccess)
            return ncclInternalError;
        r = async;
        if (r == ncclInProgress && now_ms() > deadline)
            return ncclInternalError;
        if (r == ncclInProgress)
            usleep(20);
    }
    return r;
}

static int cuda_comm_reserve(kb_backend *be, kb_comm *c, size_t n, char *err, size_t errlen)
{
    kb_cuda *impl = kb_cuda_enter(be);
    if (not_nccl(c, err, errlen))
        return -1;
    nccl_impl *x = (nccl_impl *)c->impl;
    if (n <= x->stage_n)
        return 0;
    if (kb_cuda_capture_refuse(impl, "a bf16 staging buffer grown"))
        return -1;
    uint16_t *p = NULL;
    if (cudaMalloc((void **)&p, n * sizeof *p) != cudaSuccess) {
        snprintf(err, errlen, "nccl: no GPU memory for %zu bf16 values of staging", n);
        return -1;
    }
    if (x->stage)
        cudaFree(x->stage);
    x->stage = p;
    x->stage_n = n;
    return 0;
}

static int cuda_comm_allreduce(kb_backend *be, kb_comm *c, float *buf, size_t n, int avg,
                               int bf16)
{
    kb_cuda *impl = kb_cuda_enter(be);
    if (!is_nccl(c))
        return -1;
    nccl_impl *x = (nccl_impl *)c->impl;
    char err[sizeof x->first_error];
    if (x->broken)
        return -1;
    if (n == 0)
        return 0;
    if (bf16 && n > x->stage_n)
        return fail(x, err, sizeof err, "allreduce", "bf16 staging smaller than the bucket");
    /* after everything queued so far; the ops queued next go on beside it */
    KB_CUDA(cudaEventRecord(x->ready, impl->stream));
    KB_CUDA(cudaStreamWaitEvent(x->stream, x->ready, 0));
    ncclResult_t r;
    if (!bf16) {
        r = ncclAllReduce(buf, buf, n, ncclFloat32, avg ? ncclAvg : ncclSum, x->comm, x->stream);
    } else {
        const unsigned blocks = kb_cuda_blocks(impl, n, 256);
        KB_CUDA_BYTES(6.0 * n);
        kb_wire_pack_kernel<<<blocks, 256, 0, x->stream>>>(buf, x->stage, n);
        KB_CUDA_LAUNCHED();
        r = ncclAllReduce(x->stage, x->stage, n, ncclBfloat16, ncclSum, x->comm, x->stream);
        if (r == ncclSuccess || r == ncclInProgress) {
            KB_CUDA_BYTES(6.0 * n);
            kb_wire_unpack_kernel<<<blocks, 256, 0, x->stream>>>(x->stage, buf, n,
                                                                 avg ? c->world : 1);
            KB_CUDA_LAUNCHED();
        }
    }
    r = settle(x, r);
    if (r != ncclSuccess)
        return fail(x, err, sizeof err, "queued allreduce", ncclGetErrorString(r));
    impl->comm_last = c;
    return 0;
}

static void cuda_comm_join(kb_backend *be)
{
    kb_cuda *impl = kb_cuda_enter(be);
    if (!impl->comm_last)
        return;
    nccl_impl *x = (nccl_impl *)impl->comm_last->impl;
    KB_CUDA(cudaEventRecord(x->done, x->stream));
    KB_CUDA(cudaStreamWaitEvent(impl->stream, x->done, 0));
}

static int cuda_comm_wait(kb_backend *be, kb_comm *c, char *err, size_t errlen)
{
    kb_cuda *impl = kb_cuda_enter(be);
    if (not_nccl(c, err, errlen))
        return -1;
    nccl_impl *x = (nccl_impl *)c->impl;
    if (x->broken) {
        snprintf(err, errlen, "%s", x->first_error);
        return -1;
    }
    if (kb_cuda_capture_refuse(impl, "a wait for the collectives")) {
        snprintf(err, errlen, "comm_wait inside a capture");
        return -1;
    }
    /* the main queue joined the communicator's stream: both are done */
    return wait_done(x, "queued allreduce", impl->lane[0].stream, 1, err, errlen);
}

void kb_cuda_comm_init(kb_backend *be)
{
    be->comm_reserve = cuda_comm_reserve;
    be->comm_allreduce = cuda_comm_allreduce;
    be->comm_join = cuda_comm_join;
    be->comm_wait = cuda_comm_wait;
}
