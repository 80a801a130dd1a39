/* The compute backend interface.
 *
 * One table of function pointers, implemented by the CPU backend
 * (kernels/cpu/, oneDNN + OpenBLAS) and the CUDA backend (kernels/cuda/).
 * Model and training code call only through this table and never branch on
 * which backend they hold.
 *
 * Conventions (every op):
 *   - float32, NCHW for activations, (K, C, R, S) for conv weights,
 *     (O, I) for linear weights, as PyTorch stores them. A backend may keep a
 *     private layout internally but reads and writes these at the interface.
 *   - Pointers are backend memory (host memory for the CPU backend, device
 *     memory for CUDA) obtained from alloc(), or views into such memory.
 *   - Activation gradients (dx) are WRITTEN (overwritten).
 *     Parameter gradients (dw, db, dgamma, dbeta) are ACCUMULATED (+=), so the
 *     two views of a step, and the teacher-free predictor path, simply add up;
 *     the caller zeroes the gradient buffer once per step.
 *   - Scalars that an op computes (loss values, metrics) are written to a
 *     small backend buffer, not returned, so a step never waits on the
 *     device; download() fetches them when wanted.
 *   - Shape letters: N batch, C channels in, K channels out, H W spatial in,
 *     P Q spatial out, R S kernel, D feature dim, O I linear out/in.
 */
#ifndef RUNAWAY_KERNELS_BACKEND_H
#define RUNAWAY_KERNELS_BACKEND_H

#include <stddef.h>
#include <stdint.h>

typedef struct kb_backend kb_backend;
typedef struct kb_conv kb_conv;   /* opaque per-shape plan (primitives, algos) */
typedef struct kb_graph kb_graph; /* opaque captured sequence of ops */
typedef struct kb_stamp kb_stamp; /* opaque point in the backend's queue (timing) */
typedef struct kb_adam_consts kb_adam_consts; /* kernels/optim.h */

/* Math of convolutions and GEMMs. Storage, optimizer state and every other
 * op stay fp32 in all modes. */
typedef enum kb_precision {
    KB_PREC_TF32, /* fp32 storage, TF32 tensor cores (the default, as PyTorch's convolutions) */
    KB_PREC_FP32, /* full fp32 */
    KB_PREC_BF16, /* bf16 operands, fp32 accumulation and fp32 results */
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
}

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

    /* Sets the math mode; returns the mode in effect, which is `p` where the
     * backend has it (the CPU backend computes fp32 whatever is asked). */
    kb_precision (*set_precision)(kb_backend *be, kb_precision p);

    /* ---- captured op sequences (CUDA graphs); NULL where unsupported ----
     * Between capture_begin and capture_end ops are recorded, not run;
     * graph_launch then runs the recording with the same pointers and the
     * same by-value arguments (per-step scalars therefore live in backend
     * memory, see adam and ema). upload, download, sync, alloc and free are
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
     * As kb_cuda_augment (kernels/cuda_augment.h): view 0 = T1, 1 = T2, -1 =
     * the plain image, of the n samples named by keys (backend memory:
     * epoch, then n indices) of src (count, 3, H, W), into out (n, 3, S, S).
     * Returns 0, or -1 when it cannot. */
    int (*augment)(kb_backend *be, const uint8_t *src, int W, int H, const uint32_t *keys, int n,
                   uint64_t seed, int view, int S, const float mean[3], const float std[3],
                   float *out);

    /* ---- elementwise over n floats ---- */
    void (*fill)(kb_backend *be, float *x, float v, size_t n);
    void (*scale)(kb_backend *be, float *x, float a, size_t n);                 /* x *= a */
    void (*axpy)(kb_backend *be, float *y, float a, const float *x, size_t n);  /* y += a*x */
    void (*add)(kb_backend *be, float *y, const float *a, const float *b, size_t n); /* y = a+b; y may alias a or b */

    /* ---- convolution (no bias) ---- */
    kb_conv *(*conv_plan)(kb_backend *be, const kb_conv_desc *d); /* NULL on failure */
    void (*conv_free)(kb_backend *be, kb_conv *c);
    /* y (N,K,P,Q) = conv(x (N,C,H,W), w (K,C,R,S)) */
    void (*conv_forward)(kb_backend *be, kb_conv *c, const float *x, const float *w, float *y);
    /* dx (N,C,H,W) = conv_transpose(dy (N,K,P,Q), w) */
    void (*conv_backward_data)(kb_backend *be, kb_conv *c, const float *dy, const float *w, float *dx);
    /* dw (K,C,R,S) += correlation of x and dy */
    void (*conv_backward_weight)(kb_backend *be, kb_conv *c, const float *x, const float *dy, float *dw);

    /* ---- batch normalization over (N, C, HW); a BatchNorm1d is HW = 1 ----
     * Training mode: normalizes with the batch mean and biased variance, saves
     * mean (C) and invstd (C) = 1/sqrt(var + eps) for backward, and, when
     * running_mean/var are non-NULL, updates them as PyTorch does:
     * r = (1-momentum)*r + momentum*stat, with the UNBIASED variance. */
    void (*bn_forward_train)(kb_backend *be, const float *x, int N, int C, int HW,
                             const float *gamma, const float *beta, float eps,
                             float momentum, float *running_mean, float *running_var,
                             float *y, float *save_mean, float *save_invstd);
    /* Eval mode: y = gamma*(x - running_mean)/sqrt(running_var + eps) + beta. */
    void (*bn_forward_eval)(kb_backend *be, const float *x, int N, int C, int HW,
                            const float *gamma, const float *beta, float eps,
                            const float *running_mean, const float *running_var,
                            float *y);
    /* dx written; dgamma, dbeta (C) accumulated. */
    void (*bn_backward)(kb_backend *be, const float *x, const float *dy, int N, int C,
                        int HW, const float *gamma, const float *save_mean,
                        const float *save_invstd, float *dx, float *dgamma,
                        float *dbeta);

    /* ---- synchronized batch normalization (data-parallel jobs) ----
     * The training-mode forward and backward above, each split in two halves
     * around an all-reduce that AVERAGES over ranks (equal local batches).
     * stats (3C) = [mean_c, biased var_c, mean_c^2] of the local batch. */
    void (*bn_stats)(kb_backend *be, const float *x, int N, int C, int HW, float *stats);
    /* Normalizes with rank-averaged stats: mean = stats[c], var = stats[C+c] +
     * stats[2C+c] - mean^2 (the law of total variance); count = elements per
     * channel over all ranks, for the unbiased running variance. */
    void (*bn_forward_apply)(kb_backend *be, const float *x, int N, int C, int HW,
                             const float *gamma, const float *beta, float eps, float momentum,
                             const float *stats, double count, float *running_mean,
                             float *running_var, float *y, float *save_mean, float *save_invstd);
    /* red (2C) = [mean_c dy, mean_c dy*xhat] over the local batch; dgamma,
     * dbeta (C) accumulate the local sums. */
    void (*bn_backward_reduce)(kb_backend *be, const float *x, const float *dy, int N, int C,
                               int HW, const float *save_mean, const float *save_invstd,
                               float *red, float *dgamma, float *dbeta);
    /* dx = gamma invstd (dy - red[c] - xhat red[C+c]), red averaged over ranks. */
    void (*bn_backward_apply)(kb_backend *be, const float *x, const float *dy, int N, int C,
                              int HW, const float *gamma, const float *save_mean,
                              const float *save_invstd, const float *red, float *dx);

    /* ---- activations and pooling ---- */
    void (*relu_forward)(kb_backend *be, const float *x, float *y, size_t n); /* y may alias x */
    /* dx = dy * (y > 0); dx may alias dy */
    void (*relu_backward)(kb_backend *be, const float *y, const float *dy, float *dx, size_t n);
    /* Max pool, square window k, stride, pad (padding never wins).
     * y (N,C,P,Q); idx (N,C,P,Q) int32 index of the max within its (H*W) plane. */
    void (*maxpool_forward)(kb_backend *be, const float *x, int N, int C, int H, int W,
                            int k, int stride, int pad, float *y, int32_t *idx);
    /* dx (N,C,H,W) written (zero where no window picked it) */
    void (*maxpool_backward)(kb_backend *be, const float *dy, const int32_t *idx, int N,
                             int C, int H, int W, int P, int Q, float *dx);
    /* Global average pool: y (N,C) = mean over HW of x (N,C,HW). */
    void (*avgpool_forward)(kb_backend *be, const float *x, int N, int C, int HW, float *y);
    void (*avgpool_backward)(kb_backend *be, const float *dy, int N, int C, int HW, float *dx);

    /* ---- linear ---- */
    /* y (N,O) = x (N,I) w^T (O,I) + b (O); b may be NULL */
    void (*linear_forward)(kb_backend *be, const float *x, int N, int I, const float *w,
                           const float *b, int O, float *y);
    /* dx (N,I) written unless NULL; dw (O,I) and db (O, unless NULL) accumulated */
    void (*linear_backward)(kb_backend *be, const float *x, const float *w, const float *dy,
                            int N, int I, int O, float *dx, float *dw, float *db);

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
    /* out[0] = log( mean_{i != j} exp(-t |z_i - z_j|^2) ), z (N,D), N >= 2 */
    void (*uniformity)(kb_backend *be, const float *z, int N, int D, float t, float *out);
    /* out[0] = sqrt(D) * mean_d std_i(z[i][d]), population std (divide by N) */
    void (*collapse_std)(kb_backend *be, const float *z, int N, int D, float *out);
    /* Softmax cross-entropy over K classes: out[0] = mean_i -log softmax(logits_i)[label_i],
     * out[1] = number of rows whose argmax equals the label;
     * dlogits (N,K) = gradient of out[0] (written) unless NULL. labels (N) int32. */
    void (*softmax_xent)(kb_backend *be, const float *logits, const int32_t *labels, int N,
                         int K, float *dlogits, float *out);

    /* ---- optimizer and mean teacher, one pass over one buffer ----
     * Their scalars change every step, so they are read from backend memory
     * when the op runs (a captured step replays with each step's values).
     * Adam exactly as torch.optim.Adam (L2 weight decay added to the
     * gradient, eps after the bias-corrected square root); k is one
     * kb_adam_consts (kernels/optim.h, kb_adam_consts_init) in backend memory. */
    void (*adam)(kb_backend *be, float *p, const float *g, float *m, float *v, size_t n,
                 const kb_adam_consts *k);
    /* xi = tau*xi + (1-tau)*theta; tau_omt = [tau, 1 - tau] in backend memory */
    void (*ema)(kb_backend *be, float *xi, const float *theta, size_t n, const float *tau_omt);
};

/* Creates the CPU backend with `threads` threads (0: all cores). */
kb_backend *kb_cpu_create(int threads);

/* Tests only: makes the CPU backend round as the CUDA backend does in
 * precision p, so that a bf16 GPU step can be compared with a reference
 * that saw the same roundings. KB_PREC_BF16: convolutions round x, w, dy
 * and their results (y, dx, and each dw contribution before the fp32 +=)
 * to bf16; linear layers round x, w, dy (results, bias and its gradient
 * stay fp32); round to nearest even, as cuda_bf16.h. KB_PREC_FP32: off
 * (the default). Other values are a programmer error. */
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
