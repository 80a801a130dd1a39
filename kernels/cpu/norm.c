/* Batch normalization over (N, C, HW) and row-wise L2 normalization.
 *
 * Every reduction for one channel (or row) runs on one thread in a fixed
 * order, so results are bitwise independent of the thread count. Channel
 * statistics are summed in double: a 128x64x48x48 batch sums 147k values
 * per channel, where float accumulation would lose ~1e-3 relative. */
#include <math.h>

#include "kernels/cpu/cpu.h"

/* Batch norm of group g: its samples are [g * Ng, (g + 1) * Ng) of the
 * batch; per channel, plane n of channel c starts at (n * C + c) * HW. */
typedef struct bn_group {
    const kb_bn *b;
    int n0, Ng;    /* first sample, samples */
    double M;      /* values per channel: Ng * HW */
} bn_group;

static bn_group group_of(const kb_bn *b, int g)
{
    const int Ng = b->N / b->groups;
    return (bn_group){b, g * Ng, Ng, (double)Ng * b->HW};
}

static size_t plane(const bn_group *G, int n, int c)
{
    return ((size_t)(G->n0 + n) * G->b->C + c) * G->b->HW;
}

/* Mean and sum of squared deviations of channel c over the group, in
 * double. Two passes (mean, then deviations): no cancellation when the
 * mean is large compared to the spread. */
static void channel_stats(const bn_group *G, const float *x, int c, double *mean, double *ss)
{
    const size_t HW = (size_t)G->b->HW;
    double s = 0.0, d = 0.0;
    for (int n = 0; n < G->Ng; n++)
        s += kb_cpu_sum(x + plane(G, n, c), HW);
    *mean = s / G->M;
    for (int n = 0; n < G->Ng; n++)
        d += kb_cpu_sumsq_dev(x + plane(G, n, c), HW, *mean);
    *ss = d;
}

/* The training forward's y = a x + b from the saved mean and invstd (as
 * floats): the backward makes the same a and b again, where it finds the
 * ReLU's mask from x instead of reading y. */
static inline void train_coef(const kb_bn *b, int c, float fm, float fi, float *a, float *sh)
{
    *a = b->gamma[c] * fi;
    *sh = b->beta[c] - fm * *a;
}

/* y = relu?(a x + b + residual) over the planes of channel c in the group:
 * the float operations of a normalize, an add and a ReLU done one after
 * another, so the fused op gives their bits. */
static void channel_apply(const bn_group *G, const float *x, int c, float a, float b,
                          const float *res, float *y)
{
    const int HW = G->b->HW, relu = G->b->relu;
    for (int n = 0; n < G->Ng; n++) {
        const size_t o = plane(G, n, c);
        for (int i = 0; i < HW; i++) {
            float v = a * x[o + i] + b;
            if (res)
                v = v + res[o + i];
            y[o + i] = relu && !(v > 0.0f) ? 0.0f : v;
        }
    }
}

/* Normalizes channel c of the group with (mean, var): saves mean and
 * invstd, updates the running statistics (PyTorch's momentum rule, with
 * the unbiased variance uvar) where tracked. */
static void channel_normalize(const bn_group *G, int g, const float *x, int c, double mean,
                              double var, double uvar, const float *res, float *y)
{
    const kb_bn *b = G->b;
    double invstd = 1.0 / sqrt(var + b->eps);
    float a, sh;
    train_coef(b, c, (float)mean, (float)invstd, &a, &sh);
    channel_apply(G, x, c, a, sh, res, y);
    b->save_mean[(size_t)g * b->C + c] = (float)mean;
    b->save_invstd[(size_t)g * b->C + c] = (float)invstd;
    if (b->running_mean)
        b->running_mean[c] = (1.0f - b->momentum) * b->running_mean[c] + b->momentum * (float)mean;
    if (b->running_var)
        b->running_var[c] = (1.0f - b->momentum) * b->running_var[c] + b->momentum * (float)uvar;
}

/* With kb_cpu_emulate_rounding(BF16): the CUDA backend stores feature maps
 * in bf16 (fp32 rows stay fp32). */
static void round_fmap(kb_cpu *impl, const kb_bn *b, float *y)
{
    if (y && impl->round_bf16 && !b->rows)
        kb_cpu_bf16_round(impl, y, (size_t)b->N * b->C * b->HW);
}

/* ---- the stem's max pool (kb_bn.pool): the batch norm into a full-size
 * map in the backend's temporaries, then a max pool of it -- the ops one
 * after another, so their bits. */

typedef struct pool_tmp {
    float *full;  /* (N,C,H,W): the batch norm's output, or the spread gradient */
    int32_t *idx; /* (N,C,P,Q): the winners' indices in their planes */
    int H, W, P, Q;
} pool_tmp;

static void pool_tmp_get(kb_cpu *impl, const kb_bn *b, pool_tmp *t)
{
    KB_CPU_CHECK(b->W > 0 && b->HW % b->W == 0 && !b->rows);
    t->W = b->W;
    t->H = b->HW / b->W;
    t->P = kb_pool_out(t->H, b->pool, b->pool_stride, b->pool_pad);
    t->Q = kb_pool_out(t->W, b->pool, b->pool_stride, b->pool_pad);
    const size_t nf = (size_t)b->N * b->C * b->HW, ni = (size_t)b->N * b->C * t->P * t->Q;
    char *m = kb_cpu_tmp(impl, nf * sizeof(float) + ni * sizeof(int32_t));
    KB_CPU_CHECK(m != NULL); /* no OOM path: the map is the size of an activation */
    t->full = (float *)m;
    t->idx = (int32_t *)(m + nf * sizeof(float));
}

/* A winner's place: its index in the plane, or its offset in its window
 * (kb_bn.pool_idx's byte), for output (p, q). */
static int32_t win_offset(const kb_bn *b, const pool_tmp *t, int p, int q, int32_t at)
{
    const int h = at / t->W - (p * b->pool_stride - b->pool_pad);
    const int w = at % t->W - (q * b->pool_stride - b->pool_pad);
    return h * b->pool + w;
}

static int32_t win_index(const kb_bn *b, const pool_tmp *t, int p, int q, int off)
{
    const int h = p * b->pool_stride - b->pool_pad + off / b->pool;
    const int w = q * b->pool_stride - b->pool_pad + off % b->pool;
    return h * t->W + w;
}

/* Where the batch norm writes: y, or with a pool the full-size map in
 * t (no residual then). */
static float *bn_target(kb_cpu *impl, const kb_bn *b, const float *res, pool_tmp *t, void *y)
{
    if (!b->pool)
        return y;
    KB_CPU_CHECK(!res);
    pool_tmp_get(impl, b, t);
    return t->full;
}

/* y (N,C,P,Q) = max pool of t->full; the winners into b->pool_idx. */
static void pool_forward(kb_cpu *impl, const kb_bn *b, pool_tmp *t, float *y)
{
    kb_cpu_maxpool(impl, t->full, b->N, b->C, t->H, t->W, b->pool, b->pool_stride, b->pool_pad, y,
                   b->pool_idx ? t->idx : NULL);
    if (!b->pool_idx)
        return;
    const long planes = (long)b->N * b->C;
    for (long pl = 0; pl < planes; pl++)
        for (int p = 0; p < t->P; p++)
            for (int q = 0; q < t->Q; q++) {
                const size_t o = ((size_t)pl * t->P + p) * t->Q + q;
                b->pool_idx[o] = (uint8_t)win_offset(b, t, p, q, t->idx[o]);
            }
}

/* The pooled gradient dy spread over t->full, as a max pool's backward. */
static void pool_backward(kb_cpu *impl, const kb_bn *b, pool_tmp *t, const float *dy)
{
    const long planes = (long)b->N * b->C;
    for (long pl = 0; pl < planes; pl++)
        for (int p = 0; p < t->P; p++)
            for (int q = 0; q < t->Q; q++) {
                const size_t o = ((size_t)pl * t->P + p) * t->Q + q;
                t->idx[o] = win_index(b, t, p, q, b->pool_idx[o]);
            }
    kb_cpu_maxpool_grad(impl, dy, t->idx, b->N, b->C, t->H, t->W, t->P, t->Q, t->full);
    if (impl->round_bf16) /* the CUDA backend's bf16 feature maps */
        kb_cpu_bf16_round(impl, t->full, (size_t)b->N * b->C * b->HW);
}

#define BN_PAR(b) if ((size_t)(b)->N * (b)->C * (b)->HW >= KB_CPU_PAR_MIN)

static void cpu_bn_stats(kb_backend *be, const kb_bn *b, const void *xv, float *stats /* (G,3C) */)
{
    const float *x = xv;
    const int nt = kb_cpu_of(be)->threads, C = b->C;
    for (int g = 0; g < b->groups; g++) {
        const bn_group G = group_of(b, g);
        float *st = stats + (size_t)g * 3 * C;
#pragma omp parallel for num_threads(nt) schedule(static) BN_PAR(b)
        for (int c = 0; c < C; c++) {
            double mean, ss;
            channel_stats(&G, x, c, &mean, &ss);
            st[c] = (float)mean;
            st[C + c] = (float)(ss / G.M);
            st[2 * C + c] = (float)(mean * mean);
        }
    }
}

static void cpu_bn_forward(kb_backend *be, const kb_bn *b, const void *xv, const float *stats,
                           double count, const void *resv, void *yv)
{
    kb_cpu *impl = kb_cpu_of(be);
    const float *x = xv, *res = resv;
    pool_tmp t;
    float *y = bn_target(impl, b, res, &t, yv);
    const int nt = impl->threads, C = b->C;
    /* group after group: the running statistics move as after separate batches */
    for (int g = 0; g < b->groups; g++) {
        const bn_group G = group_of(b, g);
        const float *st = stats ? stats + (size_t)g * 3 * C : NULL;
#pragma omp parallel for num_threads(nt) schedule(static) BN_PAR(b)
        for (int c = 0; c < C; c++) {
            double mean, var, uvar;
            if (st) {
                mean = st[c];
                var = (double)st[C + c] + (double)st[2 * C + c] - mean * mean;
                if (var < 0)
                    var = 0; /* rounding of the between-rank term */
                uvar = count > 1.0 ? var * count / (count - 1.0) : var;
            } else {
                double ss;
                channel_stats(&G, x, c, &mean, &ss);
                var = ss / G.M; /* biased: what normalizes */
                /* PyTorch tracks the unbiased variance; with one value per
                 * channel (PyTorch refuses to train there) the biased one. */
                uvar = G.M > 1.0 ? ss / (G.M - 1.0) : var;
            }
            channel_normalize(&G, g, x, c, mean, var, uvar, res, y);
        }
    }
    round_fmap(impl, b, y);
    if (b->pool)
        pool_forward(impl, b, &t, yv);
}

static void cpu_bn_forward_eval(kb_backend *be, const kb_bn *b, const void *xv, const void *resv,
                                void *yv)
{
    kb_cpu *impl = kb_cpu_of(be);
    const float *x = xv, *res = resv;
    pool_tmp t;
    float *y = bn_target(impl, b, res, &t, yv);
    const int nt = impl->threads;
    const bn_group G = {b, 0, b->N, (double)b->N * b->HW}; /* one group: the whole batch */
#pragma omp parallel for num_threads(nt) schedule(static) BN_PAR(b)
    for (int c = 0; c < b->C; c++) {
        double invstd = 1.0 / sqrt((double)b->running_var[c] + b->eps);
        float a = (float)(b->gamma[c] * invstd);
        float sh = (float)(b->beta[c] - b->running_mean[c] * (double)b->gamma[c] * invstd);
        channel_apply(&G, x, c, a, sh, res, y);
    }
    round_fmap(impl, b, y);
    if (b->pool) {
        kb_bn nb = *b;
        nb.pool_idx = NULL; /* no backward of an eval pass */
        pool_forward(impl, &nb, &t, yv);
    }
}

/* Sums of g and g*x over channel c of the group, in double (float
 * products are exact in double, so sum g*(x - mean) = sum g*x - mean sum g
 * loses nothing that matters). */
static void channel_grad_sums(const bn_group *G, const float *x, const float *y,
                              const float *dy, int c, float a, float sh, double *sdy,
                              double *sdx)
{
    const kb_bn *b = G->b;
    const int HW = b->HW;
    double s = 0.0, t = 0.0;
    for (int n = 0; n < G->Ng; n++) {
        const size_t o = plane(G, n, c);
        if (b->relu) {
            double ps, pt;
            if (y)
                kb_cpu_masked_sums(dy + o, y + o, x + o, (size_t)HW, &ps, &pt);
            else
                kb_cpu_relu_sums(dy + o, x + o, a, sh, (size_t)HW, &ps, &pt);
            s += ps;
            t += pt;
        } else {
            s += kb_cpu_sum(dy + o, (size_t)HW);
            t += kb_cpu_dot(dy + o, x + o, (size_t)HW);
        }
    }
    *sdy = s;
    *sdx = t;
}

/* One plane's dx = k (g - mdy - xhat mdyx), in float per element, and
 * dres = g, with g the gradient through the ReLU: dy (mode 0, no ReLU),
 * dy where y > 0 (mode 1), or dy where a x + b > 0 (mode 2: the mask made
 * again from x). Called with constant mode and dres-or-not, so that each
 * variant is a plain loop the compiler vectorizes. */
typedef struct dx_coef {
    float a, sh, k, mdy, mdyx, fm, fi;
} dx_coef;

static inline __attribute__((always_inline)) void
plane_dx(int mode, int with_dres, const dx_coef *q, const float *x, const float *y,
         const float *dy, float *dx, float *dres, int HW)
{
    const float a = q->a, sh = q->sh, k = q->k, mdy = q->mdy, mdyx = q->mdyx, fm = q->fm,
                fi = q->fi;
    for (int i = 0; i < HW; i++) {
        const float gv = mode == 0   ? dy[i]
                         : mode == 1 ? kb_cpu_keep(dy[i], y[i] > 0.0f)
                                     : kb_cpu_keep(dy[i], a * x[i] + sh > 0.0f);
        const float xh = (x[i] - fm) * fi;
        dx[i] = k * (gv - mdy - xh * mdyx);
        if (with_dres)
            dres[i] = gv;
    }
}

/* plane_dx over channel c of the group. */
static void channel_dx(const bn_group *G, const float *x, const float *y, const float *dy,
                       int c, float k, float mdy, float mdyx, float fm, float fi, float *dx,
                       float *dres)
{
    const kb_bn *b = G->b;
    dx_coef q = {.k = k, .mdy = mdy, .mdyx = mdyx, .fm = fm, .fi = fi};
    train_coef(b, c, fm, fi, &q.a, &q.sh);
    const int mode = !b->relu ? 0 : y ? 1 : 2, HW = b->HW;
    for (int n = 0; n < G->Ng; n++) {
        const size_t o = plane(G, n, c);
        const float *xp = x + o, *yp = y ? y + o : NULL, *dp = dy + o;
        float *dxp = dx + o, *drp = dres ? dres + o : NULL;
        switch (mode * 2 + (dres != NULL)) {
        case 0: plane_dx(0, 0, &q, xp, yp, dp, dxp, drp, HW); break;
        case 1: plane_dx(0, 1, &q, xp, yp, dp, dxp, drp, HW); break;
        case 2: plane_dx(1, 0, &q, xp, yp, dp, dxp, drp, HW); break;
        case 3: plane_dx(1, 1, &q, xp, yp, dp, dxp, drp, HW); break;
        case 4: plane_dx(2, 0, &q, xp, yp, dp, dxp, drp, HW); break;
        default: plane_dx(2, 1, &q, xp, yp, dp, dxp, drp, HW); break;
        }
    }
}

static void cpu_bn_backward_reduce(kb_backend *be, const kb_bn *b, const void *xv,
                                   const void *yv, const void *dyv, float *red /* (G,2C) */,
                                   float *dgamma, float *dbeta)
{
    const float *x = xv, *y = yv, *dy = dyv;
    pool_tmp t;
    if (b->pool) { /* dy is the pooled gradient: spread it first */
        KB_CPU_CHECK(!y);
        pool_tmp_get(kb_cpu_of(be), b, &t);
        pool_backward(kb_cpu_of(be), b, &t, dy);
        dy = t.full;
    }
    const int nt = kb_cpu_of(be)->threads, C = b->C;
    for (int g = 0; g < b->groups; g++) {
        const bn_group G = group_of(b, g);
#pragma omp parallel for num_threads(nt) schedule(static) BN_PAR(b)
        for (int c = 0; c < C; c++) {
            double sdy, sdx;
            const size_t s = (size_t)g * C + c;
            float a, sh;
            train_coef(b, c, b->save_mean[s], b->save_invstd[s], &a, &sh);
            channel_grad_sums(&G, x, y, dy, c, a, sh, &sdy, &sdx);
            double sdyx = (sdx - b->save_mean[s] * sdy) * b->save_invstd[s];
            dbeta[c] += (float)sdy;
            dgamma[c] += (float)sdyx;
            red[(size_t)g * 2 * C + c] = (float)(sdy / G.M);
            red[(size_t)g * 2 * C + C + c] = (float)(sdyx / G.M);
        }
    }
}

/* Training-mode backward with xhat = (x - mean) * invstd:
 *   dbeta = sum g, dgamma = sum g * xhat,
 *   dx = gamma * invstd / M * (M g - dbeta - xhat dgamma). */
static void cpu_bn_backward(kb_backend *be, const kb_bn *b, const void *xv, const void *yv,
                            const void *dyv, const float *red, float *dgamma, float *dbeta,
                            void *dxv, void *dresv)
{
    kb_cpu *impl = kb_cpu_of(be);
    const float *x = xv, *y = yv, *dy = dyv;
    float *dx = dxv, *dres = dresv;
    const int nt = impl->threads, C = b->C;
    pool_tmp t;
    if (b->pool) { /* dy is the pooled gradient: spread it first */
        KB_CPU_CHECK(!y && !dres);
        pool_tmp_get(impl, b, &t);
        pool_backward(impl, b, &t, dy);
        dy = t.full;
    }
    for (int g = 0; g < b->groups; g++) {
        const bn_group G = group_of(b, g);
#pragma omp parallel for num_threads(nt) schedule(static) BN_PAR(b)
        for (int c = 0; c < C; c++) {
            const size_t s = (size_t)g * C + c;
            const double mean = b->save_mean[s], invstd = b->save_invstd[s];
            float mdy, mdyx;
            if (red) {
                mdy = red[(size_t)g * 2 * C + c];
                mdyx = red[(size_t)g * 2 * C + C + c];
            } else {
                double sdy, sdx;
                float a, sh;
                train_coef(b, c, (float)mean, (float)invstd, &a, &sh);
                channel_grad_sums(&G, x, y, dy, c, a, sh, &sdy, &sdx);
                double sdyx = (sdx - mean * sdy) * invstd;
                dbeta[c] += (float)sdy;
                dgamma[c] += (float)sdyx;
                mdy = (float)(sdy / G.M);
                mdyx = (float)(sdyx / G.M);
            }
            const float k = red ? b->gamma[c] * (float)invstd : (float)(b->gamma[c] * invstd);
            channel_dx(&G, x, y, dy, c, k, mdy, mdyx, (float)mean, (float)invstd, dx, dres);
        }
    }
    round_fmap(impl, b, dx);
    round_fmap(impl, b, dres);
}

static void cpu_l2norm_forward(kb_backend *be, const float *x /* (N,D) */, int N, int D,
                               float *y /* (N,D) */, float *norm /* (N) */)
{
    int nt = kb_cpu_of(be)->threads;
#pragma omp parallel for num_threads(nt) schedule(static) if ((size_t)N * D >= KB_CPU_PAR_MIN)
    for (int i = 0; i < N; i++) {
        const float *xr = x + (size_t)i * D;
        double s = 0.0;
        for (int d = 0; d < D; d++)
            s += (double)xr[d] * xr[d];
        float nrm = (float)sqrt(s);
        float den = fmaxf(nrm, 1e-12f);
        float *yr = y + (size_t)i * D;
        for (int d = 0; d < D; d++)
            yr[d] = xr[d] / den;
        norm[i] = nrm;
    }
}

static void cpu_l2norm_backward(kb_backend *be, const float *y /* (N,D) */,
                                const float *norm /* (N) */, const float *dy /* (N,D) */, int N,
                                int D, float *dx /* (N,D) */)
{
    int nt = kb_cpu_of(be)->threads;
#pragma omp parallel for num_threads(nt) schedule(static) if ((size_t)N * D >= KB_CPU_PAR_MIN)
    for (int i = 0; i < N; i++) {
        const float *yr = y + (size_t)i * D, *dr = dy + (size_t)i * D;
        double s = 0.0;
        for (int d = 0; d < D; d++)
            s += (double)yr[d] * dr[d];
        float fs = (float)s, inv = 1.0f / fmaxf(norm[i], 1e-12f);
        float *xr = dx + (size_t)i * D;
        for (int d = 0; d < D; d++)
            xr[d] = (dr[d] - yr[d] * fs) * inv;
    }
}

void kb_cpu_norm_init(kb_backend *be)
{
    be->bn_stats = cpu_bn_stats;
    be->bn_forward = cpu_bn_forward;
    be->bn_forward_eval = cpu_bn_forward_eval;
    be->bn_backward_reduce = cpu_bn_backward_reduce;
    be->bn_backward = cpu_bn_backward;
    be->l2norm_forward = cpu_l2norm_forward;
    be->l2norm_backward = cpu_l2norm_backward;
}
