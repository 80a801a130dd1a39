/* The compute backend interface.
 *
 * One table of function pointers, implemented by the CPU backend
 * (kernels/cpu/, oneDNN + OpenBLAS) and the CUDA backend (kernels/cuda/).
 * Model and training code call only through this table and never branch on
 * which backend they hold.
 *
 * Conventions (every op):
 *   - Feature maps -- the encoder's activations (N, C, H, W) and their
 *     gradients -- live in the backend's own format (see fmap_bytes): the
 *     CPU's is fp32 NCHW, CUDA's NHWC in the math's type. Model code sizes
 *     them with fmap_bytes and passes them between ops as `void *`; only
 *     fmap_upload / fmap_download and the ops below read their elements.
 *     Everything else is fp32: rows (N, D) of the heads, weights as
 *     PyTorch stores them ((K, C, R, S) for convolutions, (O, I) for linear
 *     layers), gradients of parameters, optimizer state, scalars.
 *   - Pointers are backend memory (host memory for the CPU backend, device
 *     memory for CUDA) obtained from alloc(), or views into such memory.
 *   - Activation gradients (dx) are WRITTEN (overwritten), except where an
 *     op says it can add. Parameter gradients (dw, db, dgamma, dbeta) are
 *     ACCUMULATED (+=); the update op zeroes them for the next step.
 *   - Scalars that an op computes (loss values, metrics) are written to a
 *     small backend buffer, not returned, so a step never waits on the
 *     device; download() fetches them when wanted.
 *   - Shape letters: N batch, C channels in, K channels out, H W spatial in,
 *     P Q spatial out, R S kernel, D feature dim, O I linear out/in,
 *     G groups of a batch norm.
 */
#ifndef RUNAWAY_KERNELS_BACKEND_H
#define RUNAWAY_KERNELS_BACKEND_H

#include <stddef.h>
#include <stdint.h>

typedef struct kb_backend kb_backend;
typedef struct kb_conv kb_conv;     /* opaque per-shape plan (primitives, algos) */
typedef struct kb_graph kb_graph;   /* opaque captured sequence of ops */
typedef struct kb_stamp kb_stamp;   /* opaque point in the backend's queue (timing) */
typedef struct kb_mirror kb_mirror; /* opaque copy of the weights in the ops' own form */
struct kb_comm;                     /* kernels/collective.h */
typedef struct kb_adam_consts kb_adam_consts; /* kernels/optim.h */

/* Math of convolutions and GEMMs, and the element type of CUDA's feature
 * maps. Parameters, gradients, optimizer state, batch-norm statistics, the
 * heads' rows and the loss stay fp32 in all modes. */
typedef enum kb_precision {
    KB_PREC_TF32, /* fp32 storage, TF32 tensor cores (the default, as PyTorch's convolutions) */
    KB_PREC_FP32, /* full fp32 */
    KB_PREC_BF16, /* bf16 feature maps and operands, fp32 accumulation */
} kb_precision;

static inline const char *kb_precision_name(kb_precision p)
{
    return p == KB_PREC_BF16 ? "bf16" : p == KB_PREC_FP32 ? "fp32" : "tf32";
}

typedef struct kb_conv_desc {
    int N, C, H, W;     /* input */
    int K, R, S;        /* output channels, kernel height, width */
    int stride, pad;    /* same in both spatial dims */
    int P, Q;           /* output spatial, filled in by kb_conv_desc_init */
    /* 1: the weight gradient may use an algorithm whose sums run in no
     * fixed order (atomics) where that is faster: run-to-run noise in the
     * last bits. 0 (kb_conv_desc_init's default): deterministic. */
    int nondeterministic;
} kb_conv_desc;

static inline void kb_conv_desc_init(kb_conv_desc *d, int N, int C, int H,
                                     int W, int K, int R, int S, int stride,
                                     int pad)
{
    d->N = N; d->C = C; d->H = H; d->W = W;
    d->K = K; d->R = R; d->S = S;
    d->stride = stride; d->pad = pad;
    d->P = (H + 2 * pad - R) / stride + 1;
    d->Q = (W + 2 * pad - S) / stride + 1;
    d->nondeterministic = 0;
}

/* A batch norm: its shape and state, given to each of its ops. */
typedef struct kb_bn {
    int N, C, HW; /* N counts the samples of every group */
    /* Statistics per contiguous group of N / groups samples: BYOL's
     * per-view statistics with both views in one batch of 2N (groups = 2).
     * Running statistics are updated group after group, as separate
     * batches would update them. */
    int groups;
    int rows;     /* 1: x, y and their gradients are fp32 rows (N, C), HW = 1; 0: feature maps */
    int relu;     /* y = relu(gamma xhat + beta + residual) */
    float eps, momentum;
    const float *gamma, *beta;         /* (C) */
    float *running_mean, *running_var; /* (C), or NULL: not tracked */
    float *save_mean, *save_invstd;    /* (groups, C): written by the training forward */
    /* A max pool after the ReLU (ResNet's stem), pool > 0: y is then the
     * pooled map (N, C, P, Q) of pool x pool windows, stride pool_stride,
     * padding pool_pad, over x's (H, W) = (HW / W, W), as a max pool of the
     * batch norm's output would be (padding never wins, the first maximum
     * in row-major order wins, a NaN wins); the backward's dy is the pooled
     * gradient. pool_idx: the winners, one byte per output element (backend
     * memory), written by the training forward where not NULL, read by the
     * backward. Feature maps without a residual only. */
    int pool, pool_stride, pool_pad, W;
    uint8_t *pool_idx;
} kb_bn;

/* The side of a max pool's output. */
static inline int kb_pool_out(int H, int k, int stride, int pad) { return (H + 2 * pad - k) / stride + 1; }

/* A weight tensor in the parameter buffer, for mirror_create. */
typedef struct kb_wseg {
    size_t off; /* float offset in the parameter buffer */
    int K, C;   /* a convolution's K, C; a linear layer's O, I */
    int R, S;   /* a convolution's kernel; 0, 0 for a linear layer */
} kb_wseg;

typedef enum kb_loss_kind {
    KB_LOSS_BYOL,    /* symmetrized BYOL: mean_i |p1-z2|^2 + |p2-z1|^2 */
    KB_LOSS_UNIFIED, /* alpha*L_align + beta*L_cross (BYOL' beta>0, RAFT beta<0) */
} kb_loss_kind;

typedef struct kb_loss_cfg {
    kb_loss_kind kind;
    float alpha, beta; /* used by KB_LOSS_UNIFIED only */
    int tangential;    /* replace |p - z|^2 by |z - l*p|^2 / l, l = sg(<p,z>) */
} kb_loss_cfg;

/* Slots of the loss op's output buffer (backend memory, KB_LOSS_NOUT floats). */
enum {
    KB_LOSS_OUT_LOSS = 0,  /* the optimized objective */
    KB_LOSS_OUT_ALIGN = 1, /* L_align = mean_i |p1_i - p2_i|^2 */
    KB_LOSS_OUT_CROSS = 2, /* L_cross = 1/2 mean_i |p1-z1|^2 + |p2-z2|^2 (plain, not Tan) */
    KB_LOSS_OUT_BYOL = 3,  /* mean_i |p1-z2|^2 + |p2-z1|^2 (plain, not Tan) */
    KB_LOSS_NOUT = 4,
};

/* One optimizer step over the parameter buffer (the update op). */
typedef struct kb_update {
    float *params, *grads, *adam_m, *adam_v; /* (n); grads are zeroed */
    size_t n;
    const kb_adam_consts *k;   /* backend memory (kernels/optim.h) */
    /* Then xi = tau xi + (1 - tau) theta on the prefix the teacher mirrors,
     * with the updated theta; teacher NULL: no EMA. */
    float *teacher;
    size_t nteacher;
    const float *tau_omt;      /* backend memory: [tau, 1 - tau] */
    /* Refreshed from the updated params and teacher; NULL where none. */
    kb_mirror *mirror, *tmirror;
} kb_update;

struct kb_backend {
    const char *name; /* "cpu", "cuda" */
    void *impl;

    void (*destroy)(kb_backend *be);

    /* ---- memory ---- */
    void *(*alloc)(kb_backend *be, size_t bytes); /* zero-filled; NULL on OOM */
    void (*free)(kb_backend *be, void *p);
    void (*upload)(kb_backend *be, void *dst, const void *host_src, size_t bytes);
    void (*download)(kb_backend *be, void *host_dst, const void *src, size_t bytes);
    void (*copy)(kb_backend *be, void *dst, const void *src, size_t bytes);
    void (*sync)(kb_backend *be); /* wait for queued work */

    /* ---- pinned host memory; NULL where the backend has none (the CPU,
     * whose upload is a memcpy) ----
     * host_alloc: page-locked host memory (NULL on OOM), from which upload
     * copies asynchronously: upload returns at once, and the host may write
     * the block again only after host_wait(be, p) has returned, which waits
     * until the uploads queued from it so far have read it (not the rest of
     * the queue). host_free waits the same way, then frees. None of the
     * three inside a capture. */
    void *(*host_alloc)(kb_backend *be, size_t bytes);
    void (*host_wait)(kb_backend *be, void *p);
    void (*host_free)(kb_backend *be, void *p);

    /* Sets the math mode; returns the mode in effect, which is `p` where the
     * backend has it (the CPU backend computes fp32 whatever is asked). The
     * format of feature maps and mirrors follows it: set it before making
     * any, they are not valid under another mode. */
    kb_precision (*set_precision)(kb_backend *be, kb_precision p);

    /* What the backend runs on, for reports (runaway-bench): writes the
     * device's name into name (len bytes, NUL-terminated, truncated to
     * fit), and its memory in bytes, free_bytes what is free now and
     * total_bytes all of it, 0 where unknown. CPU: "CPU (N threads)" and
     * the host's MemAvailable and MemTotal (/proc/meminfo; 0 without it).
     * CUDA: the GPU's name, its free and total memory (cudaMemGetInfo).
     * Not inside a capture. */
    void (*device_info)(kb_backend *be, char *name, size_t len, size_t *free_bytes,
                        size_t *total_bytes);

    /* ---- feature maps ----
     * The CPU's format is fp32 NCHW. CUDA's is NHWC in the math's type
     * (bf16 in BF16 mode, else fp32), with a pixel's channels padded with
     * zeros to 16 bytes where there are fewer (the 3-channel input image):
     * what cuDNN's tensor-core kernels read. */
    size_t (*fmap_bytes)(kb_backend *be, int N, int C, int H, int W);
    /* host fp32 (N,C,H,W) -> feature map dst; not inside a capture */
    void (*fmap_upload)(kb_backend *be, void *dst, const float *host_src, int N, int C, int H,
                        int W);
    /* feature map -> host fp32 (N,C,H,W); waits for the device */
    void (*fmap_download)(kb_backend *be, float *host_dst, const void *src, int N, int C, int H,
                          int W);

    /* ---- weights in the ops' own form; NULL where the ops read the fp32
     * parameters themselves (the CPU) ----
     * mirror_create keeps a copy of the listed weights of `params` in the
     * form the convolutions and linear layers read (CUDA: the math's type;
     * convolutions in its feature maps' layout), written from params now;
     * NULL on OOM. The update op keeps it in step; after any other write to
     * params, mirror_write refreshes it. mirror_at gives the copy of the
     * weight at parameter offset off, for the ops' `wm` argument. */
    kb_mirror *(*mirror_create)(kb_backend *be, const float *params, const kb_wseg *w, int nw);
    void (*mirror_free)(kb_backend *be, kb_mirror *mr);
    void (*mirror_write)(kb_backend *be, kb_mirror *mr);
    const void *(*mirror_at)(kb_backend *be, const kb_mirror *mr, size_t off);

    /* ---- captured op sequences (CUDA graphs); NULL where unsupported ----
     * Between capture_begin and capture_end ops are recorded, not run;
     * graph_launch then runs the recording with the same pointers and the
     * same by-value arguments (per-step scalars therefore live in backend
     * memory, see update). upload, download, sync, alloc and free are
     * not allowed inside a capture: they make it fail. capture_end returns
     * NULL with the reason in err when the capture failed; the backend is
     * then usable as before and nothing recorded has run. */
    int (*capture_begin)(kb_backend *be);
    kb_graph *(*capture_end)(kb_backend *be, char *err, size_t errlen);
    /* 0, or -1 when scratch memory the graph uses has moved since its
     * capture (nothing runs; capture again). Buffers the caller passed to the
     * recorded ops are the caller's to keep in place while the graph lives. */
    int (*graph_launch)(kb_backend *be, kb_graph *g);
    void (*graph_free)(kb_backend *be, kb_graph *g);

    /* ---- a second queue; NULL where ops run one after another anyway ----
     * After side_begin, ops go to a second queue that starts once the work
     * queued before it is done; side_end sends later ops back to the main
     * queue, which goes on beside it; side_join makes the main queue wait
     * for what the second queue was given. Allowed inside a capture (the
     * graph forks and joins). Until the join, neither side may touch what
     * the other writes. */
    void (*side_begin)(kb_backend *be);
    void (*side_end)(kb_backend *be);
    void (*side_join)(kb_backend *be);

    /* ---- collectives in the queue; NULL where the backend has none (the
     * CPU's communicators run on threads of their own: collective.h) ----
     * Over a communicator of the backend's kind (c->device_memory: NCCL on
     * the CUDA backend; -1 for any other, nothing queued), in order with
     * the ops, so a captured graph holds them: comm_allreduce queues an
     * all-reduce of n floats of buf (backend memory, untouched until the
     * join) after everything queued before it, on a communication queue
     * beside the ops that follow; avg divides the sum by the world; bf16
     * sends bf16 (rounded from buf, each partial sum rounded to bf16 as
     * NCCL's ring adds, then back to fp32, the average divided in fp32),
     * within comm_reserve's room. comm_join makes the ops queued after it
     * wait for every all-reduce queued before. comm_wait waits for the whole
     * queue with the communicator's deadline: a dead or hung peer is an
     * error (the communicator aborted), never a hang. All 0 or -1, err
     * saying why; a failure inside the queue shows at comm_wait. */
    int (*comm_reserve)(kb_backend *be, struct kb_comm *c, size_t bf16_floats, char *err,
                        size_t errlen);
    int (*comm_allreduce)(kb_backend *be, struct kb_comm *c, float *buf, size_t n, int avg,
                          int bf16);
    void (*comm_join)(kb_backend *be);
    int (*comm_wait)(kb_backend *be, struct kb_comm *c, char *err, size_t errlen);

    /* ---- timing (kernels/profile.h); NULL where unsupported ----
     * A stamp records when the backend's queue reaches it: on the CPU, whose
     * ops run in the caller, the moment of the call; on a GPU, when the work
     * queued before it has run, without waiting on the host. stamp_ms
     * answers the milliseconds from a to b once both have been reached
     * (after sync). Not allowed inside a capture. */
    kb_stamp *(*stamp_create)(kb_backend *be);
    void (*stamp_record)(kb_backend *be, kb_stamp *s);
    double (*stamp_ms)(kb_backend *be, const kb_stamp *a, const kb_stamp *b);
    void (*stamp_free)(kb_backend *be, kb_stamp *s);

    /* ---- BYOL's views rendered from a uint8 set in backend memory; NULL
     * where the backend cannot (the CPU renders them on loader threads) ----
     * As kb_cuda_augment (kernels/cuda_augment.h): the n samples named by
     * keys (backend memory: epoch, then n indices) of src (count, 3, H, W)
     * into the feature map out (nviews * n, 3, S, S), group g of n rendered
     * as views[g] (0 = T1, 1 = T2, -1 = the plain image); nviews 1 or 2.
     * staged: src holds only the batch, (n, 3, H, W), sample k's image in
     * row k (its index still keys the draw). Returns 0, or -1 when it
     * cannot. */
    int (*augment)(kb_backend *be, const uint8_t *src, int W, int H, int staged,
                   const uint32_t *keys, int n, uint64_t seed, const int *views, int nviews, int S,
                   const float mean[3], const float std[3], void *out);

    /* ---- elementwise over n floats ---- */
    void (*fill)(kb_backend *be, float *x, float v, size_t n);
    void (*scale)(kb_backend *be, float *x, float a, size_t n);                 /* x *= a */

    /* ---- convolution (no bias) on feature maps ----
     * w is the fp32 weight (K,C,R,S); wm its mirror (mirror_at), or NULL:
     * the op then reads w, converting it where it must (each call). */
    kb_conv *(*conv_plan)(kb_backend *be, const kb_conv_desc *d); /* NULL on failure */
    void (*conv_free)(kb_backend *be, kb_conv *c);
    /* y (N,K,P,Q) = conv(x (N,C,H,W), w) */
    void (*conv_forward)(kb_backend *be, kb_conv *c, const void *x, const float *w,
                         const void *wm, void *y);
    /* dx (N,C,H,W) = conv_transpose(dy (N,K,P,Q), w), written, or added to
     * dx when accumulate (a residual's gradient already there) */
    void (*conv_backward_data)(kb_backend *be, kb_conv *c, const void *dy, const float *w,
                               const void *wm, void *dx, int accumulate);
    /* dw (K,C,R,S) fp32 += correlation of x and dy */
    void (*conv_backward_weight)(kb_backend *be, kb_conv *c, const void *x, const void *dy,
                                 float *dw);

    /* ---- batch normalization (kb_bn), training statistics in double ----
     * Training mode normalizes group g with its mean and biased variance,
     * saves mean and invstd = 1/sqrt(var + eps), and updates the running
     * statistics as PyTorch does: r = (1-momentum)*r + momentum*stat, with
     * the UNBIASED variance. Synchronized batch norm (data-parallel jobs)
     * splits the forward around an all-reduce that AVERAGES stats over the
     * ranks (equal local batches), and the backward around one of red. */
    /* stats (G, 3C) = per group [mean_c, biased var_c, mean_c^2] */
    void (*bn_stats)(kb_backend *be, const kb_bn *b, const void *x, float *stats);
    /* y = relu?(gamma xhat + beta + residual); residual (like y) or NULL.
     * stats: rank-averaged bn_stats, normalizing with mean = stats[c] and
     * var = stats[C+c] + stats[2C+c] - mean^2 (the law of total variance),
     * count = values per channel per group over all ranks (for the
     * unbiased running variance); NULL: this batch's own statistics. */
    void (*bn_forward)(kb_backend *be, const kb_bn *b, const void *x, const float *stats,
                       double count, const void *residual, void *y);
    /* Eval mode: gamma (x - running_mean)/sqrt(running_var + eps) + beta, + residual, relu? */
    void (*bn_forward_eval)(kb_backend *be, const kb_bn *b, const void *x, const void *residual,
                            void *y);
    /* With g = dy where y > 0 (dy itself without relu), y the forward's
     * output: red (G, 2C) = per group [mean_c g, mean_c g*xhat];
     * dgamma, dbeta (C) += sums of g*xhat, g over every group. A forward
     * without a residual may pass y NULL: the mask is then a x + b > 0 with
     * the forward's own a and b, made again from gamma, beta and the saved
     * mean and invstd -- one tensor fewer to read, the same mask (but where
     * bf16 rounds a positive a x + b below 2^-133 to zero). */
    void (*bn_backward_reduce)(kb_backend *be, const kb_bn *b, const void *x, const void *y,
                               const void *dy, float *red, float *dgamma, float *dbeta);
    /* dx = gamma invstd (g - red[c] - xhat red[C+c]) per group, red
     * rank-averaged from bn_backward_reduce (dgamma, dbeta then NULL), or
     * red NULL: reduced here, dgamma and dbeta accumulated. dres (like dx,
     * or NULL) = g: the gradient of the residual. */
    void (*bn_backward)(kb_backend *be, const kb_bn *b, const void *x, const void *y,
                        const void *dy, const float *red, float *dgamma, float *dbeta, void *dx,
                        void *dres);

    /* ---- ReLU on fp32 rows ---- */
    void (*relu_forward)(kb_backend *be, const float *x, float *y, size_t n); /* y may alias x */
    /* dx = dy * (y > 0); dx may alias dy */
    void (*relu_backward)(kb_backend *be, const float *y, const float *dy, float *dx, size_t n);

    /* ---- pooling (a max pool is the batch norm's: kb_bn.pool) ---- */
    /* Global average pool: fp32 rows y (N,C) = mean over HW of the feature map x. */
    void (*avgpool_forward)(kb_backend *be, const void *x, int N, int C, int HW, float *y);
    void (*avgpool_backward)(kb_backend *be, const float *dy, int N, int C, int HW, void *dx);

    /* ---- linear, on fp32 rows ----
     * w is the fp32 weight (O,I); wm its mirror (mirror_at) or NULL. */
    /* y (N,O) = x (N,I) w^T + b (O); b may be NULL */
    void (*linear_forward)(kb_backend *be, const float *x, int N, int I, const float *w,
                           const void *wm, const float *b, int O, float *y);
    /* dx (N,I) written unless NULL; dw (O,I) and db (O, unless NULL) accumulated */
    void (*linear_backward)(kb_backend *be, const float *x, const float *w, const void *wm,
                            const float *dy, int N, int I, int O, float *dx, float *dw,
                            float *db);

    /* ---- rows of (N, D) ---- */
    /* y = x / max(|x|, 1e-12) row-wise (F.normalize); norm (N) saved for backward */
    void (*l2norm_forward)(kb_backend *be, const float *x, int N, int D, float *y, float *norm);
    /* dx = (dy - y <y, dy>) / max(norm, 1e-12) */
    void (*l2norm_backward)(kb_backend *be, const float *y, const float *norm,
                            const float *dy, int N, int D, float *dx);

    /* ---- losses and metrics ----
     * p1, p2: normalized online predictions of views 1 and 2 (N, D);
     * z1, z2: normalized teacher projections (N, D), no gradient.
     * Writes out[KB_LOSS_NOUT] and dp1, dp2 (N, D) = dLoss/dp (written). */
    void (*loss)(kb_backend *be, const kb_loss_cfg *cfg, const float *p1, const float *p2,
                 const float *z1, const float *z2, int N, int D, float *dp1, float *dp2,
                 float *out);
    /* For each of G groups of N rows of z (G*N, D), N >= 2:
     * out[g] = log( mean_{i != j} exp(-t |z_i - z_j|^2) ) */
    void (*uniformity)(kb_backend *be, const float *z, int G, int N, int D, float t, float *out);
    /* out[g] = sqrt(D) * mean_d std_i(z[i][d]) over group g's rows, population std */
    void (*collapse_std)(kb_backend *be, const float *z, int G, int N, int D, float *out);
    /* Softmax cross-entropy over K classes: out[0] = mean_i -log softmax(logits_i)[label_i],
     * out[1] = number of rows whose argmax equals the label;
     * dlogits (N,K) = gradient of out[0] (written) unless NULL. labels (N) int32. */
    void (*softmax_xent)(kb_backend *be, const float *logits, const int32_t *labels, int N,
                         int K, float *dlogits, float *out);

    /* ---- the optimizer step, one pass over the parameter buffer (kb_update) ----
     * Adam exactly as torch.optim.Adam (L2 weight decay added to the
     * gradient, eps after the bias-corrected square root), then the mean
     * teacher's EMA, the mirrors refreshed and the gradients zeroed. Its
     * scalars change every step, so they are read from backend memory when
     * the op runs (a captured step replays with each step's values). */
    void (*update)(kb_backend *be, const kb_update *u);

    /* ---- per-step values kept on the device ----
     * Copies n floats of src into row (*counter % slots) of ring (slots, n),
     * then adds one to *counter (uint32); all three in backend memory, so a
     * captured step replays into the next row. */
    void (*ring_push)(kb_backend *be, float *ring, int slots, const float *src, int n,
                      uint32_t *counter);
};

kb_backend *kb_cpu_create(int threads);

/* Tests only: makes the CPU backend round as the CUDA backend does in
 * precision p, so that a bf16 GPU step can be compared with a reference
 * that saw the same roundings. KB_PREC_BF16: every feature map an op
 * writes is rounded to bf16 (CUDA stores them so: uploads, convolution
 * results -- a dx added to what is there rounded once after the add --,
 * batch norm outputs and gradients, pooling gradients); convolutions also
 * round w and each dw contribution before the fp32 +=; linear layers round
 * x, w, dy (results, bias and its gradient stay fp32, as do all fp32 rows);
 * round to nearest even, as cuda_bf16.h. KB_PREC_FP32: off (the default).
 * Other values are a programmer error. */
void kb_cpu_emulate_rounding(kb_backend *cpu, kb_precision p);

/* Tests only, with bf16 rounding emulated: every convolution result moves
 * by one fp32 ulp, up or down as a hash of `seed` says, before it is
 * rounded to bf16 -- what another summation order (cuDNN's) could do -- so
 * that a test can measure how far the bf16 step carries such differences.
 * 0: off (the default). */
void kb_cpu_jitter_sums(kb_backend *cpu, unsigned seed);

/* Creates the CUDA backend on `device`; NULL (with a reason in err) where CUDA
 * is not compiled in or no usable GPU is present. */
kb_backend *kb_cuda_create(int device, char *err, size_t errlen);

static inline void kb_destroy(kb_backend *be)
{
    if (be)
        be->destroy(be);
}

#endif
