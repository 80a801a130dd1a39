/* What kernels/cuda/norm.cu and norm_fused.cu share: the shape, state and
 * coefficients of a batch norm as its kernels see them, and the formulas
 * that turn per-channel sums into coefficients -- one copy, so that the
 * two-launch path and the fused one compute alike. */
#pragma once
#include "kernels/cuda/cuda.h"
/* What the first launch's last block makes of the sums. */
enum {
    BN_FWD,   /* forward: coefficients, saved mean/invstd, running statistics */
    BN_STATS, /* SyncBN's local statistics (G, 3C) */
    BN_BWD,   /* backward: coefficients, dgamma, dbeta */
    BN_RED,   /* SyncBN's local reductions (G, 2C), dgamma, dbeta */
};

/* Per group and channel: forward y = a x + b; backward dx = k (g - mdy -
 * xhat mdyx) with xhat = (x - mean) invstd. */
struct kb_bn_coef {
    float a, b, k, mdy, mdyx, mean, invstd;
};

/* A max pool after the batch norm (k > 0): windows k x k, stride, pad,
 * over (H, W) maps into (P, Q); idx the winners' places in their windows,
 * (N, P, Q, C) bytes. */
struct kb_bn_pool {
    int k, stride, pad, H, W, P, Q;
    uint8_t *idx;
};

/* The shape as the kernels see it. */
struct kb_bn_shape {
    long M;    /* pixels (samples x HW) per group */
    int G, C;  /* groups, channels */
    int ld;    /* elements from one pixel to the next: Cp, or C for rows */
    int bf16;  /* the tensors' type */
    int relu;
    int S;     /* slices per group (the first launch's grid is S x G) */
    kb_bn_pool pool;
};

/* The op's state, by value into the first launch. */
struct kb_bn_args {
    const float *gamma, *beta;
    float eps, momentum;
    float *running_mean, *running_var;
    float *save_mean, *save_invstd; /* (G, C) */
    float *out;                     /* BN_STATS: stats (G, 3C); BN_RED: red (G, 2C) */
    float *dgamma, *dbeta;
};


/* The training forward's y = a x + b from the saved mean and invstd (as
 * floats): the backward makes the same a and b again, where it finds the
 * ReLU's mask from x instead of reading y. Rounded as written (no
 * contraction left to the compiler), and x -> a x + b as one fma, in both. */
static __device__ __forceinline__ void kb_bn_train_coef(float gamma, float beta, float fm,
                                                        float fi, float *a, float *b)
{
    *a = __fmul_rn(gamma, fi);
    *b = __fmaf_rn(-fm, *a, beta);
}

/* A value as the feature map stores it. */
static __device__ __forceinline__ float kb_bn_stored(float v, int bf16)
{
    return bf16 ? kb_bf16_to_f(kb_f_to_bf16(v)) : v;
}

/* Channel c of group g: the sums of all its slices, in order. */
static __device__ double2 bn_total(const kb_bn_shape &sh, const double2 *part, int g, int c)
{
    double2 t = make_double2(0.0, 0.0);
    for (int s = 0; s < sh.S; s++) {
        double2 p = part[((size_t)g * sh.S + s) * sh.C + c];
        t.x += p.x;
        t.y += p.y;
    }
    return t;
}

/* The last block's work, one thread per channel, the groups in order (the
 * running statistics and the parameter gradients see them one after the
 * other, as separate batches). */
static __device__ void bn_finish(int mode, const kb_bn_shape &sh, const kb_bn_args &ar,
                                 const double2 *part, kb_bn_coef *coef)
{
    const double M = (double)sh.M;
    for (int c = threadIdx.x; c < sh.C; c += blockDim.x)
        for (int g = 0; g < sh.G; g++) {
            const double2 t = bn_total(sh, part, g, c);
            const size_t gc = (size_t)g * sh.C + c;
            if (mode == BN_FWD || mode == BN_STATS) {
                double mean = t.x / M;
                double sq = t.y - t.x * mean; /* sum of squared deviations */
                if (sq < 0.0)
                    sq = 0.0;
                double var = sq / M; /* biased: what normalizes */
                if (mode == BN_STATS) {
                    ar.out[(size_t)g * 3 * sh.C + c] = (float)mean;
                    ar.out[(size_t)g * 3 * sh.C + sh.C + c] = (float)var;
                    ar.out[(size_t)g * 3 * sh.C + 2 * sh.C + c] = (float)(mean * mean);
                    continue;
                }
                double invstd = 1.0 / sqrt(var + (double)ar.eps);
                kb_bn_train_coef(ar.gamma[c], ar.beta[c], (float)mean, (float)invstd, &coef[gc].a,
                                 &coef[gc].b);
                ar.save_mean[gc] = (float)mean;
                ar.save_invstd[gc] = (float)invstd;
                if (ar.running_mean)
                    ar.running_mean[c] = (1.0f - ar.momentum) * ar.running_mean[c] +
                                         ar.momentum * (float)mean;
                if (ar.running_var) {
                    /* PyTorch tracks the unbiased variance (biased with one value) */
                    double uvar = M > 1.0 ? sq / (M - 1.0) : var;
                    ar.running_var[c] = (1.0f - ar.momentum) * ar.running_var[c] +
                                        ar.momentum * (float)uvar;
                }
            } else {
                const double mean = ar.save_mean[gc], invstd = ar.save_invstd[gc];
                const double sdy = t.x, sdyx = (t.y - mean * sdy) * invstd;
                ar.dbeta[c] += (float)sdy;
                ar.dgamma[c] += (float)sdyx;
                if (mode == BN_RED) {
                    ar.out[(size_t)g * 2 * sh.C + c] = (float)(sdy / M);
                    ar.out[(size_t)g * 2 * sh.C + sh.C + c] = (float)(sdyx / M);
                    continue;
                }
                coef[gc].k = (float)(ar.gamma[c] * invstd);
                coef[gc].mdy = (float)(sdy / M);
                coef[gc].mdyx = (float)(sdyx / M);
                coef[gc].mean = (float)mean;
                coef[gc].invstd = (float)invstd;
                kb_bn_train_coef(ar.gamma[c], ar.beta[c], coef[gc].mean, coef[gc].invstd,
                                 &coef[gc].a, &coef[gc].b);
            }
        }
}


/* norm_fused.cu: the one-launch training forward (statistics of x itself)
 * and backward (red NULL) of a feature map's batch norm without a max
 * pool, where its slices fit in shared memory; 0 when not done (the caller
 * then runs its two launches). */
int kb_cuda_bn_fused_forward(kb_cuda *impl, kb_bn_shape sh, const kb_bn_args &ar, const void *x,
                             const void *res, void *y);
int kb_cuda_bn_fused_backward(kb_cuda *impl, kb_bn_shape sh, const kb_bn_args &ar, const void *x,
                              const void *y, const void *dy, void *dx, void *dres);
/* The device's cooperative launch and shared memory limits into impl. */
void kb_cuda_norm_fused_init(kb_cuda *impl);
