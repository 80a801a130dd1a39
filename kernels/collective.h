/* Collectives for data-parallel jobs: one interface, implemented on Gloo
 * (CPU workers, host buffers) and NCCL (CUDA workers, device buffers).
 *
 * Every call has a timeout: a dead or hung peer turns into an error return
 * (with a message), never a hang. After an error the communicator is
 * unusable; the job fails and the daemon requeues it.
 *
 * Rendezvous goes through a key-value store that the caller provides (the
 * daemon relays it: for Gloo it is the store itself; for NCCL rank 0 puts
 * the unique id there). Nothing relies on a fixed port or a shared file
 * system. */
#ifndef RUNAWAY_KERNELS_COLLECTIVE_H
#define RUNAWAY_KERNELS_COLLECTIVE_H

#include <stddef.h>
#include <stdint.h>

typedef struct kb_store {
    void *ud;
    /* Stores value under key (overwriting). 0 or -1. */
    int (*set)(void *ud, const char *key, const void *value, size_t len);
    /* Waits up to timeout_ms for key to exist, then copies its value into
     * buf (cap bytes) and its length into *len. 0, or -1 on timeout/error. */
    int (*get)(void *ud, const char *key, void *buf, size_t cap, size_t *len, int timeout_ms);
} kb_store;

typedef enum { KB_REDUCE_SUM, KB_REDUCE_AVG } kb_reduce_op;

/* The numbers on the wire of a queued all-reduce: fp32, or bf16 (half the
 * bytes; each addition in fp32, each partial sum rounded to bf16). */
typedef enum { KB_WIRE_FP32, KB_WIRE_BF16 } kb_wire;

typedef struct kb_comm kb_comm;
struct kb_comm {
    int rank, world;
    const char *name; /* "single", "gloo", "nccl" */
    void *impl;
    /* Set by the first call that failed in the transport or a peer (not for
     * bad arguments): such a failure is most often a peer's death or a
     * network fault, which another attempt may not meet. */
    int broken;
    /* In place over n floats of buf. */
    int (*allreduce)(kb_comm *c, float *buf, size_t n, kb_reduce_op op, char *err, size_t errlen);
    /* bytes of buf from root to every rank, in place. */
    int (*broadcast)(kb_comm *c, void *buf, size_t bytes, int root, char *err, size_t errlen);
    int (*barrier)(kb_comm *c, char *err, size_t errlen);
    void (*destroy)(kb_comm *c);
    /* Optional (NULL where absent): the sum of n bf16 numbers (raw bits) in
     * place, each addition in fp32 and rounded to bf16, every rank ending
     * with the same bits. */
    int (*allreduce_bf16)(kb_comm *c, uint16_t *buf, size_t n, char *err, size_t errlen);
    /* 1: buffers are device memory (NCCL): no queue of host threads. */
    int device_memory;
    /* Set on a queued communicator (kb_comm_queued), NULL elsewhere. */
    long (*start)(kb_comm *c, float *buf, size_t n, kb_reduce_op op, kb_wire wire, char *err,
                  size_t errlen);
    int (*wait)(kb_comm *c, long ticket, char *err, size_t errlen);
};

/* A communicator whose operations run on a thread of its own, one at a
 * time, in the order they are posted: c->start posts an all-reduce and
 * returns its ticket at once; c->wait(t) returns when every operation up
 * to t has finished (0), or with the first failure (-1). Its blocking calls
 * (allreduce, broadcast, barrier) go through the same queue, so no two
 * operations reach `inner` at once and every rank issues them in one order.
 * A buffer posted must stay untouched until its ticket is waited for.
 * Takes `inner` (host memory only: not NCCL); NULL with a reason. */
kb_comm *kb_comm_queued(kb_comm *inner, char *err, size_t errlen);
/* Seconds the queue's thread has spent inside operations (communication
 * time, overlapped or not); 0 for a communicator without a queue. */
double kb_comm_busy_s(const kb_comm *c);

/* World of one: every call is a no-op (averaging over one rank). */
kb_comm *kb_comm_single(void);
/* World `world` in name only, this being rank `rank`: every call returns at
 * once and sends nothing (a step's compute measured without its
 * communication: runaway-bench --devices). NULL for a bad rank or world. */
kb_comm *kb_comm_silent(int rank, int world);

/* Gloo over TCP on `hostname` (the address peers reach this rank at;
 * "127.0.0.1" for one host). NULL with a reason when Gloo is not built in
 * or the rendezvous fails. */
kb_comm *kb_gloo_create(const kb_store *store, int rank, int world, const char *hostname,
                        int timeout_ms, char *err, size_t errlen);

/* NCCL on CUDA device `device`; rank 0 creates the unique id and sets it in
 * the store, the others get it. NULL with a reason when NCCL/CUDA is not
 * built in or initialization fails. */
kb_comm *kb_nccl_create(const kb_store *store, int rank, int world, int device, int timeout_ms,
                        char *err, size_t errlen);

static inline void kb_comm_destroy(kb_comm *c)
{
    if (c)
        c->destroy(c);
}

#endif
