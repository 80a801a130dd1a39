/* Private to the model (worker/model.c): one network -- the online one or
 * the teacher -- run layer by layer on the backend: its activation and
 * gradient buffers, and the forward and backward passes of the encoder
 * and the heads. Encoder activations are feature maps in the backend's
 * format (kb_backend.fmap_bytes); the heads work on fp32 rows. */
#ifndef RUNAWAY_WORKER_NET_H
#define RUNAWAY_WORKER_NET_H

#include "kernels/collective.h"
#include "worker/arch.h"

#define NSCRATCH 5 /* backward gradient buffers */

typedef struct buf {
    void *p;
    size_t cap; /* bytes */
} buf;

/* What the nets of one model share. */
typedef struct net_ctx {
    kb_backend *be;
    arch *a;
    int failed;            /* an allocation, plan or collective failed; the step reports it */
    unsigned long mem_gen; /* bumped whenever a buffer moves (a captured step held it) */
    char error[256];
    kb_comm *comm;         /* data parallel: NULL for one rank */
    int sync_bn;           /* BN statistics over the global batch */
    int comm_queued;       /* the backend queues comm's all-reduces (kb_backend.comm_*) */
    buf syncbuf;           /* (groups * 3 * widest BN) floats for the all-reduced statistics */
    /* The backward pass tells it, as it goes, the offset from which every
     * parameter gradient is final (the buffer's tail comes first): what
     * lets a rank all-reduce those while it computes the rest. */
    void (*grads_ready)(void *ud, size_t from);
    void *grads_ready_ud;
} net_ctx;

typedef struct rw_net {
    net_ctx *m;
    float *P, *G, *S; /* params, grads (NULL: teacher), running stats */
    long *nbt;
    kb_mirror *mr;    /* P's weights as the ops read them; NULL where the backend has none */
    /* Where the update treats the predictor apart (its own learning rate,
     * frozen, DirectPred: worker/model.c), the predictor's weights are in a
     * mirror of their own, of the buffer from pred_off on; else NULL. */
    kb_mirror *mr_pred;
    size_t pred_off;
    buf *act;         /* [nact] */
    int *hw;          /* [nact]: input side of conv `id` */
    buf scratch[NSCRATCH]; /* backward gradients */
    size_t maxact;    /* bytes of the largest activation seen */
    int groups;       /* of this pass's training-mode batch norms: 2 in a step (the views), else 1 */
} rw_net;

int net_init(rw_net *n, net_ctx *m, float *P, float *G, float *S, long *nbt);
void net_free(rw_net *n);

/* Buffers, grown on demand (a failure sets m->failed and gives NULL). */
void *net_grow(rw_net *n, buf *b, size_t bytes);
float *net_rows(rw_net *n, int id, int N, int D);        /* activation id as fp32 rows (N, D) */
void *net_fmap(rw_net *n, int id, int N, int C, int H, int W); /* ... as a feature map */
void *net_scratch(rw_net *n, int k);                     /* gradient buffer k, the widest size */

/* x (N,3,S,S) feature map -> features (N, F) fp32 rows; train: batch
 * statistics (n->groups of them), else the running ones. */
float *enc_fwd(rw_net *n, const void *x, int N, int S, int train);
/* dfeat (N, F) -> parameter gradients of the encoder. */
void enc_bwd(rw_net *n, const void *x, const float *dfeat, int N);
/* h (N, F) -> projection (N, proj_out) */
float *proj_fwd(rw_net *n, const float *h, int N, int train);
/* dy (N, proj_out) -> dh (N, F) written */
void proj_bwd(rw_net *n, const float *h, const float *dy, float *dh, int N);
/* y (N, D) -> q(y) (N, D); identity for `none` */
const float *pred_fwd(rw_net *n, const float *y, int N);
/* dq (N, D) -> dy (N, D) written. DirectPred's W takes no gradient: its
 * slot of the gradient buffer gets E[y y^T] over the N rows instead. */
void pred_bwd(rw_net *n, const float *y, const float *dq, float *dy, int N);
float *lin_fwd(rw_net *n, lin_l *l, const float *x, int N);
void lin_bwd(rw_net *n, lin_l *l, const float *x, const float *dy, float *dx, int N);

#endif
