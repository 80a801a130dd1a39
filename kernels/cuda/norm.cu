/* Batch normalization (kb_bn) and row-wise L2 normalization, own kernels:
 * the contract's exact semantics (biased variance normalizes, unbiased
 * variance tracked with PyTorch's momentum, invstd saved, dgamma/dbeta
 * accumulated) with the CPU backend's formulas, on feature maps (NHWC in
 * the math's type, channels padded: cuda.h) or on fp32 rows.
 *
 * Each op is two launches. The first reads the tensor once for every
 * channel's sums -- (x, x^2) forward, (g, g*x) backward with g the
 * gradient through the ReLU -- in double, each block over a slice of one
 * group's pixels writing its partial sums; the last block to finish (a
 * ticket taken with one atomic add) adds every slice's partials in order
 * and turns them into the per-group coefficients: deterministic, no second
 * launch for the statistics. The second launch applies the coefficients,
 * 16 bytes of a pixel's channels per thread: y = relu(a x + b + residual)
 * forward; dx = k (g - mean g - xhat mean g xhat), and the residual's
 * gradient g, backward. The padding channels come out zero.
 *
 * The stem's max pool (kb_bn.pool) is folded in: the forward's second
 * launch makes each pooled output from its window's inputs (a x + b, the
 * ReLU, rounded as the full map would have been stored) and keeps the
 * winner's place in its window as one byte; the backward gathers each
 * input's gradient from the windows that picked it, in the order a
 * scattering max pool would add them. The full-size map never exists.
 *
 * Sum and sum of squares in one pass: in double the cancellation in
 * sumsq/M - mean^2 costs ~1e-16 * (mean/std)^2 relative, negligible for
 * activations (the CPU's two passes guard float inputs whose mean is ~1e4
 * times their spread, which do not occur here). */
#include <string.h>

#include "kernels/cuda/norm.h"

#define BN_THREADS 256
#define BN_MAX_SPLIT 1024 /* slices of one group's pixels */
#define BN_SLICE_MIN 32768 /* elements a slice should hold at least */

/* ---- kernels ---- */

/* The gradient of full-map pixel pix (over the whole batch), channel c <
 * C, gathered from the pooled dy: the windows holding (h, w) are p in
 * [ceil((h + pad - k + 1) / stride), floor((h + pad) / stride)], and
 * likewise q; those whose winner it was add their gradient, row-major, the
 * sum stored as a scattering max pool's backward would store it. */
static __device__ float bn_pool_grad(const kb_bn_shape &sh, const void *dy, size_t pix, int c)
{
    const kb_bn_pool &pl = sh.pool;
    const size_t hw = (size_t)pl.H * pl.W, n = pix / hw;
    const int r = (int)(pix - n * hw), h = r / pl.W, w = r - h * pl.W;
    const int ph = h + pl.pad - pl.k + 1, pw = w + pl.pad - pl.k + 1;
    const int p0 = ph <= 0 ? 0 : (ph + pl.stride - 1) / pl.stride;
    const int q0 = pw <= 0 ? 0 : (pw + pl.stride - 1) / pl.stride;
    const int p1 = min((h + pl.pad) / pl.stride, pl.P - 1);
    const int q1 = min((w + pl.pad) / pl.stride, pl.Q - 1);
    float s = 0.0f;
    for (int p = p0; p <= p1; p++)
        for (int q = q0; q <= q1; q++) {
            const size_t j = (n * pl.P + p) * pl.Q + q;
            const int off = (h - (p * pl.stride - pl.pad)) * pl.k + (w - (q * pl.stride - pl.pad));
            if (pl.idx[j * sh.C + c] == off)
                s += kb_elem(dy, j * sh.ld + c, sh.bf16);
        }
    return kb_bn_stored(s, sh.bf16);
}

/* Sums over the pixels of slice blockIdx.x of group blockIdx.y, channel by
 * channel: threads (tc, tp) = (threadIdx.x % TC, threadIdx.x / TC) take
 * channel c0 + tc of pixels tp, tp + TP, ...; the TP threads of a channel
 * then add their sums in order. bwd: the sums of g and g x, with g = dy
 * (the pooled dy gathered, with a pool) where y > 0 (relu) or dy. part:
 * (G, S, C) double2. */
static __device__ void bn_sums(const kb_bn_shape &sh, const kb_bn_args &ar, const void *x,
                               const void *y, const void *dy, double2 *part,
                               double2 *red /* shared, BN_THREADS */)
{
    const int TC = sh.C < BN_THREADS ? sh.C : BN_THREADS;
    const int TP = BN_THREADS / TC;
    const int tc = threadIdx.x % TC, tp = threadIdx.x / TC;
    const long per = (sh.M + sh.S - 1) / sh.S;
    const long p0 = (long)blockIdx.y * sh.M + blockIdx.x * per;
    const long p1 = p0 + per < ((long)blockIdx.y + 1) * sh.M ? p0 + per : ((long)blockIdx.y + 1) * sh.M;
    for (int c0 = 0; c0 < sh.C; c0 += TC) {
        const int c = c0 + tc;
        double a = 0.0, b = 0.0;
        float ca = 0.0f, cb = 0.0f; /* the forward's a, b: the mask without y */
        if (dy && sh.relu && !y && c < sh.C) {
            const size_t gc = (size_t)blockIdx.y * sh.C + c;
            kb_bn_train_coef(ar.gamma[c], ar.beta[c], ar.save_mean[gc], ar.save_invstd[gc], &ca,
                             &cb);
        }
        if (tp < TP && c < sh.C)
            for (long p = p0 + tp; p < p1; p += TP) {
                const size_t i = (size_t)p * sh.ld + c;
                const float xf = kb_elem(x, i, sh.bf16);
                const double xv = xf;
                if (dy) {
                    double g = sh.pool.k ? bn_pool_grad(sh, dy, p, c) : kb_elem(dy, i, sh.bf16);
                    if (sh.relu && !(y ? kb_elem(y, i, sh.bf16) > 0.0f : __fmaf_rn(ca, xf, cb) > 0.0f))
                        g = 0.0;
                    a += g;
                    b += g * xv;
                } else {
                    a += xv;
                    b += xv * xv;
                }
            }
        __syncthreads(); /* red may still be read from the last channel chunk */
        red[threadIdx.x] = make_double2(a, b);
        __syncthreads();
        if (tp == 0 && c < sh.C) {
            double2 s = red[tc];
            for (int k = 1; k < TP; k++) {
                s.x += red[tc + k * TC].x;
                s.y += red[tc + k * TC].y;
            }
            part[((size_t)blockIdx.y * sh.S + blockIdx.x) * sh.C + c] = s;
        }
    }
}

/* The first launch: grid (S, G). ticket: a zero counter of the queue's,
 * left zero again by the last block. */
__global__ void kb_bn_reduce_kernel(int mode, kb_bn_shape sh, kb_bn_args ar, const void *x,
                                    const void *y, const void *dy, double2 *part,
                                    kb_bn_coef *coef, unsigned *ticket)
{
    __shared__ double2 red[BN_THREADS];
    __shared__ int last;
    const int bwd = mode == BN_BWD || mode == BN_RED;
    bn_sums(sh, ar, x, y, bwd ? dy : NULL, part, red);
    __threadfence(); /* this block's partials before its ticket */
    __syncthreads();
    if (threadIdx.x == 0)
        last = atomicAdd(ticket, 1u) == gridDim.x * gridDim.y - 1;
    __syncthreads();
    if (!last)
        return;
    __threadfence(); /* every block's partials after the last ticket */
    bn_finish(mode, sh, ar, part, coef);
    if (threadIdx.x == 0)
        *ticket = 0;
}

/* Coefficients from given statistics: forward from SyncBN's rank-averaged
 * stats (G, 3C) or, eval, from the running statistics (stats NULL, one
 * group); backward from SyncBN's averaged red (G, 2C). One thread per
 * channel, the groups in order. */
__global__ void kb_bn_coef_kernel(int bwd, int G, int C, kb_bn_args ar, const float *given,
                                  double count, kb_bn_coef *coef)
{
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C)
        return;
    for (int g = 0; g < G; g++) {
        const size_t gc = (size_t)g * C + c;
        if (bwd) {
            const float fi = ar.save_invstd[gc];
            coef[gc].k = ar.gamma[c] * fi;
            coef[gc].mdy = given[(size_t)g * 2 * C + c];
            coef[gc].mdyx = given[(size_t)g * 2 * C + C + c];
            coef[gc].mean = ar.save_mean[gc];
            coef[gc].invstd = fi;
            kb_bn_train_coef(ar.gamma[c], ar.beta[c], coef[gc].mean, fi, &coef[gc].a, &coef[gc].b);
            continue;
        }
        if (!given) { /* eval */
            double invstd = 1.0 / sqrt((double)ar.running_var[c] + ar.eps);
            coef[gc].a = (float)(ar.gamma[c] * invstd);
            coef[gc].b = (float)(ar.beta[c] - ar.running_mean[c] * (double)ar.gamma[c] * invstd);
            continue;
        }
        const float *st = given + (size_t)g * 3 * C;
        double mean = st[c];
        double var = (double)st[C + c] + (double)st[2 * C + c] - mean * mean;
        if (var < 0)
            var = 0; /* rounding of the between-rank term */
        double invstd = 1.0 / sqrt(var + ar.eps);
        kb_bn_train_coef(ar.gamma[c], ar.beta[c], (float)mean, (float)invstd, &coef[gc].a,
                         &coef[gc].b);
        ar.save_mean[gc] = (float)mean;
        ar.save_invstd[gc] = (float)invstd;
        if (ar.running_mean)
            ar.running_mean[c] = (1.0f - ar.momentum) * ar.running_mean[c] + ar.momentum * (float)mean;
        if (ar.running_var) {
            double uvar = count > 1.0 ? var * count / (count - 1.0) : var;
            ar.running_var[c] = (1.0f - ar.momentum) * ar.running_var[c] + ar.momentum * (float)uvar;
        }
    }
}

/* The values of one step of the second launch: V elements from e on, all
 * of one pixel (a 16-byte vector of a feature map), or one element of a
 * row. */
#define BN_V 8

/* Forward: y = relu?(a x + b + res), the padding 0. vec: 16-byte vectors
 * (feature maps), else one element per step (rows). */
__global__ void kb_bn_apply_kernel(kb_bn_shape sh, int vec, const void *x, const void *res,
                                   const kb_bn_coef *coef, void *y)
{
    const int V = vec ? (sh.bf16 ? 8 : 4) : 1;
    const size_t n = (size_t)sh.M * sh.G * sh.ld / V;
    for (size_t v = blockIdx.x * (size_t)blockDim.x + threadIdx.x; v < n;
         v += (size_t)gridDim.x * blockDim.x) {
        const size_t e = v * V, p = e / sh.ld;
        const int c0 = (int)(e - p * sh.ld), g = (int)(p / sh.M);
        float xv[BN_V], rv[BN_V], out[BN_V];
        if (vec) {
            kb_v16_get(((const kb_v16 *)x)[v], sh.bf16, xv);
            if (res)
                kb_v16_get(((const kb_v16 *)res)[v], sh.bf16, rv);
        } else {
            xv[0] = kb_elem(x, e, sh.bf16);
            rv[0] = res ? kb_elem(res, e, sh.bf16) : 0.0f;
        }
        for (int k = 0; k < V; k++) {
            const int c = c0 + k;
            if (c >= sh.C) {
                out[k] = 0.0f;
                continue;
            }
            const kb_bn_coef cf = coef[(size_t)g * sh.C + c];
            float t = __fmaf_rn(cf.a, xv[k], cf.b);
            if (res)
                t = t + rv[k];
            out[k] = sh.relu && !(t > 0.0f) ? 0.0f : t;
        }
        if (vec)
            ((kb_v16 *)y)[v] = kb_v16_make(out, sh.bf16);
        else
            kb_elem_set(y, e, out[0], sh.bf16);
    }
}

/* Forward with a max pool: one thread per output element (n, p, q, c) of
 * the pooled map; the window's values relu?(a x + b), stored as the full
 * map would have stored them, compete by the CPU's rules (padding never
 * wins, the first maximum in row-major order wins, a NaN wins); the
 * winner's place into idx (unless NULL); the padding channels 0. */
__global__ void kb_bn_pool_apply_kernel(kb_bn_shape sh, const void *x, const kb_bn_coef *coef,
                                        void *y, uint8_t *idx)
{
    const kb_bn_pool pl = sh.pool;
    const size_t hw = (size_t)pl.H * pl.W, N = (size_t)sh.M * sh.G / hw;
    const size_t total = N * pl.P * pl.Q * sh.ld;
    for (size_t o = blockIdx.x * (size_t)blockDim.x + threadIdx.x; o < total;
         o += (size_t)gridDim.x * blockDim.x) {
        const int c = (int)(o % sh.ld);
        if (c >= sh.C) {
            kb_elem_set(y, o, 0.0f, sh.bf16);
            continue;
        }
        const size_t pix = o / sh.ld, n = pix / ((size_t)pl.P * pl.Q);
        const int r = (int)(pix - n * pl.P * pl.Q), p = r / pl.Q, q = r - p * pl.Q;
        const int g = (int)(n * hw / sh.M);
        const kb_bn_coef cf = coef[(size_t)g * sh.C + c];
        const int h0 = p * pl.stride - pl.pad, w0 = q * pl.stride - pl.pad;
        const int hs = h0 < 0 ? 0 : h0, he = h0 + pl.k > pl.H ? pl.H : h0 + pl.k;
        const int ws = w0 < 0 ? 0 : w0, we = w0 + pl.k > pl.W ? pl.W : w0 + pl.k;
        float best = -INFINITY;
        int bi = (hs - h0) * pl.k + (ws - w0);
        bool nan = false;
        for (int h = hs; h < he && !nan; h++)
            for (int w = ws; w < we; w++) {
                const float xv = kb_elem(x, (n * hw + (size_t)h * pl.W + w) * sh.ld + c, sh.bf16);
                float t = __fmaf_rn(cf.a, xv, cf.b);
                if (sh.relu && !(t > 0.0f))
                    t = 0.0f;
                t = kb_bn_stored(t, sh.bf16);
                if (t != t) { /* the first NaN wins */
                    best = t;
                    bi = (h - h0) * pl.k + (w - w0);
                    nan = true;
                    break;
                }
                if (t > best) {
                    best = t;
                    bi = (h - h0) * pl.k + (w - w0);
                }
            }
        kb_elem_set(y, o, best, sh.bf16);
        if (idx)
            idx[pix * sh.C + c] = (uint8_t)bi;
    }
}

/* Backward: g = dy (the pooled dy gathered, with a pool) where y > 0 --
 * or, y NULL, where a x + b > 0 -- (relu) or dy; dx = k (g - mdy - xhat
 * mdyx); dres = g; the padding 0. */
__global__ void kb_bn_dx_kernel(kb_bn_shape sh, int vec, const void *x, const void *y,
                                const void *dy, const kb_bn_coef *coef, void *dx, void *dres)
{
    const int V = vec ? (sh.bf16 ? 8 : 4) : 1;
    const size_t n = (size_t)sh.M * sh.G * sh.ld / V;
    for (size_t v = blockIdx.x * (size_t)blockDim.x + threadIdx.x; v < n;
         v += (size_t)gridDim.x * blockDim.x) {
        const size_t e = v * V, p = e / sh.ld;
        const int c0 = (int)(e - p * sh.ld), g = (int)(p / sh.M);
        float xv[BN_V], yv[BN_V], dv[BN_V], ox[BN_V], og[BN_V];
        if (vec) {
            kb_v16_get(((const kb_v16 *)x)[v], sh.bf16, xv);
            if (sh.pool.k)
                for (int k = 0; k < V; k++)
                    dv[k] = c0 + k < sh.C ? bn_pool_grad(sh, dy, p, c0 + k) : 0.0f;
            else
                kb_v16_get(((const kb_v16 *)dy)[v], sh.bf16, dv);
            if (sh.relu && y)
                kb_v16_get(((const kb_v16 *)y)[v], sh.bf16, yv);
        } else {
            xv[0] = kb_elem(x, e, sh.bf16);
            dv[0] = kb_elem(dy, e, sh.bf16);
            yv[0] = sh.relu && y ? kb_elem(y, e, sh.bf16) : 0.0f;
        }
        for (int k = 0; k < V; k++) {
            const int c = c0 + k;
            if (c >= sh.C) {
                ox[k] = og[k] = 0.0f;
                continue;
            }
            const kb_bn_coef cf = coef[(size_t)g * sh.C + c];
            const int on = !sh.relu || (y ? yv[k] > 0.0f : __fmaf_rn(cf.a, xv[k], cf.b) > 0.0f);
            const float gv = on ? dv[k] : 0.0f;
            const float xh = (xv[k] - cf.mean) * cf.invstd;
            ox[k] = cf.k * (gv - cf.mdy - xh * cf.mdyx);
            og[k] = gv;
        }
        if (vec) {
            ((kb_v16 *)dx)[v] = kb_v16_make(ox, sh.bf16);
            if (dres)
                ((kb_v16 *)dres)[v] = kb_v16_make(og, sh.bf16);
        } else {
            kb_elem_set(dx, e, ox[0], sh.bf16);
            if (dres)
                kb_elem_set(dres, e, og[0], sh.bf16);
        }
    }
}

/* One block per row. */
__global__ void kb_l2norm_fwd_kernel(const float *x, int D, float *y, float *norm)
{
    __shared__ double sh[128 / 32];
    const float *xr = x + (size_t)blockIdx.x * D;
    double s = 0.0;
    for (int d = threadIdx.x; d < D; d += blockDim.x)
        s += (double)xr[d] * xr[d];
    s = kb_cuda_block_sum(s, sh);
    float nrm = (float)sqrt(s);
    float den = fmaxf(nrm, 1e-12f);
    float *yr = y + (size_t)blockIdx.x * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x)
        yr[d] = xr[d] / den;
    if (threadIdx.x == 0)
        norm[blockIdx.x] = nrm;
}

__global__ void kb_l2norm_bwd_kernel(const float *y, const float *norm, const float *dy, int D,
                                     float *dx)
{
    __shared__ double sh[128 / 32];
    const size_t o = (size_t)blockIdx.x * D;
    double s = 0.0;
    for (int d = threadIdx.x; d < D; d += blockDim.x)
        s += (double)y[o + d] * dy[o + d];
    s = kb_cuda_block_sum(s, sh);
    float fs = (float)s, inv = 1.0f / fmaxf(norm[blockIdx.x], 1e-12f);
    for (int d = threadIdx.x; d < D; d += blockDim.x)
        dx[o + d] = (dy[o + d] - y[o + d] * fs) * inv;
}

/* ---- launchers ---- */

static kb_bn_shape shape_of(const kb_cuda *impl, const kb_bn *b)
{
    KB_CUDA_CHECK(b->groups >= 1 && b->N % b->groups == 0 && b->C >= 1 && b->HW >= 1);
    KB_CUDA_CHECK(!b->rows || b->HW == 1);
    kb_bn_shape sh;
    sh.G = b->groups;
    sh.M = (long)(b->N / b->groups) * b->HW;
    sh.C = b->C;
    sh.ld = b->rows ? b->C : kb_cuda_cpad(impl, b->C);
    sh.bf16 = !b->rows && impl->precision == KB_PREC_BF16;
    sh.relu = b->relu;
    long s = (sh.M * sh.C + BN_SLICE_MIN - 1) / BN_SLICE_MIN;
    if (s > BN_MAX_SPLIT)
        s = BN_MAX_SPLIT;
    if (s > sh.M)
        s = sh.M;
    sh.S = s < 1 ? 1 : (int)s;
    memset(&sh.pool, 0, sizeof sh.pool);
    if (b->pool > 0) {
        KB_CUDA_CHECK(!b->rows && b->W > 0 && b->HW % b->W == 0 && b->pool * b->pool <= 256);
        kb_bn_pool &pl = sh.pool;
        pl.k = b->pool;
        pl.stride = b->pool_stride;
        pl.pad = b->pool_pad;
        pl.W = b->W;
        pl.H = b->HW / b->W;
        pl.P = kb_pool_out(pl.H, pl.k, pl.stride, pl.pad);
        pl.Q = kb_pool_out(pl.W, pl.k, pl.stride, pl.pad);
        pl.idx = b->pool_idx;
        KB_CUDA_CHECK(pl.stride > 0 && pl.P > 0 && pl.Q > 0);
    }
    return sh;
}

static kb_bn_args args_of(const kb_bn *b)
{
    kb_bn_args a;
    memset(&a, 0, sizeof a);
    a.gamma = b->gamma;
    a.beta = b->beta;
    a.eps = b->eps;
    a.momentum = b->momentum;
    a.running_mean = b->running_mean;
    a.running_var = b->running_var;
    a.save_mean = b->save_mean;
    a.save_invstd = b->save_invstd;
    return a;
}

/* One pass over a tensor of the op's shape, in bytes. */
static double pass_bytes(const kb_bn_shape &sh)
{
    return (double)sh.M * sh.G * sh.ld * (sh.bf16 ? 2 : 4);
}

/* One pass over the pooled output and its winners (an element of the
 * output is read by the few inputs of its window, from L2: once). */
static double pooled_bytes(const kb_bn_shape &sh)
{
    const kb_bn_pool &pl = sh.pool;
    const double out = (double)sh.M * sh.G / ((double)pl.H * pl.W) * pl.P * pl.Q;
    return out * sh.ld * (sh.bf16 ? 2 : 4) + out * sh.C;
}

/* One pass over dy: the full map's, or the pooled one's and its winners. */
static double dy_bytes(const kb_bn_shape &sh)
{
    return sh.pool.k ? pooled_bytes(sh) : pass_bytes(sh);
}

/* Scratch: the partial sums (G, S, C), then the coefficients (G, C). */
static kb_bn_coef *bn_scratch(kb_cuda *impl, const kb_bn_shape &sh, double2 **part)
{
    const size_t pb = ((sizeof(double2) * (size_t)sh.G * sh.S * sh.C + 255) / 256) * 256;
    char *s = (char *)kb_cuda_scratch(impl, pb + sizeof(kb_bn_coef) * (size_t)sh.G * sh.C);
    *part = (double2 *)s;
    return (kb_bn_coef *)(s + pb);
}

static void bn_reduce(kb_cuda *impl, int mode, const kb_bn_shape &sh, const kb_bn_args &ar,
                      const void *x, const void *y, const void *dy, kb_bn_coef **coef)
{
    double2 *part;
    kb_bn_coef *co = bn_scratch(impl, sh, &part);
    *coef = co;
    const int bwd = mode == BN_BWD || mode == BN_RED;
    /* the tensors read once (y for the ReLU's mask), the partials written,
     * then read by the last block, the per-channel state */
    const double reads = pass_bytes(sh) * (1 + (bwd && sh.relu && y)) + (bwd ? dy_bytes(sh) : 0.0);
    KB_CUDA_BYTES(reads + 2.0 * sizeof(double2) * sh.G * sh.S * sh.C +
                  32.0 * sh.G * sh.C);
    kb_bn_reduce_kernel<<<dim3(sh.S, sh.G), BN_THREADS, 0, impl->stream>>>(
        mode, sh, ar, x, y, dy, part, co, impl->ticket);
    KB_CUDA_LAUNCHED();
}

static void bn_coef(kb_cuda *impl, int bwd, const kb_bn_shape &sh, const kb_bn_args &ar,
                    const float *given, double count, kb_bn_coef **coef)
{
    double2 *part;
    kb_bn_coef *co = bn_scratch(impl, sh, &part);
    *coef = co;
    KB_CUDA_BYTES(48.0 * sh.G * sh.C); /* the given statistics in, the coefficients out */
    kb_bn_coef_kernel<<<(sh.C + 127) / 128, 128, 0, impl->stream>>>(bwd, sh.G, sh.C, ar, given,
                                                                    count, co);
    KB_CUDA_LAUNCHED();
}

static unsigned apply_blocks(const kb_cuda *impl, const kb_bn_shape &sh, int vec)
{
    const size_t n = (size_t)sh.M * sh.G * sh.ld / (vec ? (sh.bf16 ? 8 : 4) : 1);
    return kb_cuda_blocks(impl, n, BN_THREADS);
}

static void bn_apply(kb_cuda *impl, const kb_bn *b, const kb_bn_shape &sh, const void *x,
                     const void *res, const kb_bn_coef *coef, void *y, uint8_t *idx)
{
    if (sh.pool.k) {
        KB_CUDA_CHECK(!res);
        const kb_bn_pool &pl = sh.pool;
        const size_t n = (size_t)sh.M * sh.G / ((size_t)pl.H * pl.W) * pl.P * pl.Q * sh.ld;
        /* x read (each element by the few windows holding it: once, from
         * L2), the pooled map and its winners written */
        KB_CUDA_BYTES(pass_bytes(sh) + pooled_bytes(sh) + 28.0 * sh.G * sh.C);
        kb_bn_pool_apply_kernel<<<kb_cuda_blocks(impl, n, BN_THREADS), BN_THREADS, 0,
                                  impl->stream>>>(sh, x, coef, y, idx);
        KB_CUDA_LAUNCHED();
        return;
    }
    const int vec = !b->rows;
    KB_CUDA_BYTES(pass_bytes(sh) * (2 + (res != NULL)) + 28.0 * sh.G * sh.C);
    kb_bn_apply_kernel<<<apply_blocks(impl, sh, vec), BN_THREADS, 0, impl->stream>>>(
        sh, vec, x, res, coef, y);
    KB_CUDA_LAUNCHED();
}

static void cuda_bn_stats(kb_backend *be, const kb_bn *b, const void *x, float *stats)
{
    kb_cuda *impl = kb_cuda_enter(be);
    const kb_bn_shape sh = shape_of(impl, b);
    kb_bn_args ar = args_of(b);
    ar.out = stats;
    kb_bn_coef *coef;
    bn_reduce(impl, BN_STATS, sh, ar, x, NULL, NULL, &coef);
}

static void cuda_bn_forward(kb_backend *be, const kb_bn *b, const void *x, const float *stats,
                            double count, const void *res, void *y)
{
    kb_cuda *impl = kb_cuda_enter(be);
    const kb_bn_shape sh = shape_of(impl, b);
    const kb_bn_args ar = args_of(b);
    if (!stats && !b->rows && kb_cuda_bn_fused_forward(impl, sh, ar, x, res, y))
        return;
    kb_bn_coef *coef;
    if (stats)
        bn_coef(impl, 0, sh, ar, stats, count, &coef);
    else
        bn_reduce(impl, BN_FWD, sh, ar, x, NULL, NULL, &coef);
    bn_apply(impl, b, sh, x, res, coef, y, b->pool_idx);
}

static void cuda_bn_forward_eval(kb_backend *be, const kb_bn *b, const void *x, const void *res,
                                 void *y)
{
    kb_cuda *impl = kb_cuda_enter(be);
    kb_bn one = *b;
    one.N = b->N;
    one.groups = 1; /* running statistics: the batch is one group */
    const kb_bn_shape sh = shape_of(impl, &one);
    kb_bn_coef *coef;
    bn_coef(impl, 0, sh, args_of(b), NULL, 0.0, &coef);
    bn_apply(impl, &one, sh, x, res, coef, y, NULL); /* no backward follows */
}

static void cuda_bn_backward_reduce(kb_backend *be, const kb_bn *b, const void *x, const void *y,
                                    const void *dy, float *red, float *dgamma, float *dbeta)
{
    kb_cuda *impl = kb_cuda_enter(be);
    const kb_bn_shape sh = shape_of(impl, b);
    kb_bn_args ar = args_of(b);
    ar.out = red;
    ar.dgamma = dgamma;
    ar.dbeta = dbeta;
    KB_CUDA_CHECK(!sh.pool.k || (!y && b->pool_idx));
    kb_bn_coef *coef;
    bn_reduce(impl, BN_RED, sh, ar, x, y, dy, &coef);
}

static void cuda_bn_backward(kb_backend *be, const kb_bn *b, const void *x, const void *y,
                             const void *dy, const float *red, float *dgamma, float *dbeta,
                             void *dx, void *dres)
{
    kb_cuda *impl = kb_cuda_enter(be);
    const kb_bn_shape sh = shape_of(impl, b);
    kb_bn_args ar = args_of(b);
    ar.dgamma = dgamma;
    ar.dbeta = dbeta;
    KB_CUDA_CHECK(!sh.pool.k || (!y && !dres && b->pool_idx));
    if (!red && !b->rows && kb_cuda_bn_fused_backward(impl, sh, ar, x, y, dy, dx, dres))
        return;
    kb_bn_coef *coef;
    if (red)
        bn_coef(impl, 1, sh, ar, red, 0.0, &coef);
    else
        bn_reduce(impl, BN_BWD, sh, ar, x, y, dy, &coef);
    const int vec = !b->rows;
    /* x, dy (and y) in; dx (and dres) out */
    KB_CUDA_BYTES(pass_bytes(sh) * (2 + (sh.relu && y) + (dres != NULL)) + dy_bytes(sh) +
                  36.0 * sh.G * sh.C);
    kb_bn_dx_kernel<<<apply_blocks(impl, sh, vec), BN_THREADS, 0, impl->stream>>>(
        sh, vec, x, y, dy, coef, dx, dres);
    KB_CUDA_LAUNCHED();
}

static void cuda_l2norm_forward(kb_backend *be, const float *x /* (N,D) */, int N, int D,
                                float *y /* (N,D) */, float *norm /* (N) */)
{
    kb_cuda *impl = kb_cuda_enter(be);
    if (N <= 0)
        return;
    KB_CUDA_BYTES(8 * (size_t)N * D + 4 * (size_t)N); /* x read, y and norm written */
    kb_l2norm_fwd_kernel<<<N, 128, 0, impl->stream>>>(x, D, y, norm);
    KB_CUDA_LAUNCHED();
}

static void cuda_l2norm_backward(kb_backend *be, const float *y /* (N,D) */,
                                 const float *norm /* (N) */, const float *dy /* (N,D) */, int N,
                                 int D, float *dx /* (N,D) */)
{
    kb_cuda *impl = kb_cuda_enter(be);
    if (N <= 0)
        return;
    KB_CUDA_BYTES(12 * (size_t)N * D + 4 * (size_t)N); /* y, dy, norm read, dx written */
    kb_l2norm_bwd_kernel<<<N, 128, 0, impl->stream>>>(y, norm, dy, D, dx);
    KB_CUDA_LAUNCHED();
}

void kb_cuda_norm_init(kb_backend *be)
{
    kb_cuda_norm_fused_init(kb_cuda_of(be));
    be->bn_stats = cuda_bn_stats;
    be->bn_forward = cuda_bn_forward;
    be->bn_forward_eval = cuda_bn_forward_eval;
    be->bn_backward_reduce = cuda_bn_backward_reduce;
    be->bn_backward = cuda_bn_backward;
    be->l2norm_forward = cuda_l2norm_forward;
    be->l2norm_backward = cuda_l2norm_backward;
}
