/* Collectives for CUDA workers on NCCL (kernels/collective.h).
 *
 * The communicator is non-blocking (ncclConfig_t.blocking = 0) so that every
 * call can be watched with a deadline: initialization and each operation
 * poll ncclCommGetAsyncError / cudaStreamQuery, and past the communicator's
 * timeout the communicator is aborted, which turns a dead or hung peer into
 * an error instead of a hang. Operations run on the communicator's own
 * stream after a device synchronization, so they follow everything the
 * backend queued (its stream is private to it) and complete before the call
 * returns: the training step sees finished buffers. */
#include <cuda_runtime.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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

/* Waits for the queued operation (or, with stream 0, for init) to finish,
 * watching for asynchronous NCCL errors and the deadline. */
static int wait_done(nccl_impl *x, const char *what, int check_stream, char *err, size_t errlen)
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
            cudaError_t s = cudaStreamQuery(x->stream);
            if (s == cudaSuccess)
                return 0;
            if (s != cudaErrorNotReady)
                return fail(x, err, errlen, what, cudaGetErrorString(s));
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
    return wait_done(x, "allreduce", 1, err, errlen);
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
    return wait_done(x, "broadcast", 1, err, errlen);
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
        cudaMalloc(&x->one, sizeof(float)) != cudaSuccess) {
        snprintf(err, errlen, "nccl: cannot create a stream on GPU %d", device);
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
        wait_done(x, "init", 0, err, errlen) != 0) {
        if (r != ncclSuccess && r != ncclInProgress)
            snprintf(err, errlen, "nccl init (rank %d of %d): %s", rank, world,
                     ncclGetErrorString(r));
        if (x->comm)
            ncclCommAbort(x->comm);
        cudaFree(x->one);
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
