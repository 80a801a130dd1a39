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

typedef struct kb_store {
    void *ud;
    /* Stores value under key (overwriting). 0 or -1. */
    int (*set)(void *ud, const char *key, const void *value, size_t len);
    /* Waits up to timeout_ms for key to exist, then copies its value into
     * buf (cap bytes) and its length into *len. 0, or -1 on timeout/error. */
    int (*get)(void *ud, const char *key, void *buf, size_t cap, size_t *len, int timeout_ms);
} kb_store;

typedef enum { KB_REDUCE_SUM, KB_REDUCE_AVG } kb_reduce_op;

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
};

/* World of one: every call is a no-op (averaging over one rank). */
kb_comm *kb_comm_single(void);

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
