/* Batch normalization over (N, C, HW) and row-wise L2 normalization, own
 * kernels: the contract's exact semantics (biased variance normalizes,
 * unbiased variance tracked with PyTorch's momentum, invstd saved,
 * dgamma/dbeta accumulated) with the CPU backend's formulas.
 *
 * Channel statistics are summed in double, as on the CPU, in two stages with
 * fixed owners: G blocks per channel write partial sums, one thread per
 * channel adds its G partials in order. Sum and sum of squares in one pass:
 * in double the cancellation in sumsq/M - mean^2 costs ~1e-16 * (mean/std)^2
 * relative, negligible for activations (the CPU's two passes guard float
 * inputs whose mean is ~1e4 times their spread, which do not occur here). */
#include "kernels/cuda/cuda.h"

#define BN_THREADS 256
#define BN_MAX_SPLIT 64

/* ---- kernels ---- */

/* Partial (sum a, sum b) over slice g of channel c; grid (G, C).
 * mode 0: a = x, b = x^2 (forward); mode 1: a = dy, b = dy*x (backward). */
__global__ void kb_bn_partial_kernel(const float *x /* (N,C,HW) */, const float *dy /* or NULL */,
                                     int N, int C, int HW, int G, double2 *part /* (C,G) */)
{
    __shared__ double sh[BN_THREADS / 32];
    const int c = blockIdx.y, g = blockIdx.x;
    const long M = (long)N * HW;
    const long per = (M + G - 1) / G;
    const long j0 = g * per, j1 = j0 + per < M ? j0 + per : M;
    double a = 0.0, b = 0.0;
    /* 32-bit index math (the launcher checks M < 2^31): 64-bit division
     * per element would cost more than the load. */
    for (unsigned j = (unsigned)j0 + threadIdx.x; j < (unsigned)j1; j += blockDim.x) {
        unsigned n = j / (unsigned)HW, i = j - n * (unsigned)HW;
        size_t o = ((size_t)n * C + c) * HW + i;
        double xv = x[o];
        if (dy) {
            double d = dy[o];
            a += d;
            b += d * xv;
        } else {
            a += xv;
            b += xv * xv;
        }
    }
    a = kb_cuda_block_sum(a, sh);
    b = kb_cuda_block_sum(b, sh);
    if (threadIdx.x == 0)
        part[(size_t)c * G + g] = make_double2(a, b);
}

/* One thread per channel: statistics, saved mean/invstd, running stats,
 * and the affine coefficients y = ab[c].x * x + ab[c].y. */
__global__ void kb_bn_stats_kernel(const double2 *part, int C, int G, double M,
                                   const float *gamma, const float *beta, float eps,
                                   float momentum, float *running_mean, float *running_var,
                                   float *save_mean, float *save_invstd, float2 *ab)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C)
        return;
    double s = 0.0, ss = 0.0;
    for (int g = 0; g < G; g++) {
        double2 p = part[(size_t)c * G + g];
        s += p.x;
        ss += p.y;
    }
    double mean = s / M;
    double sq = ss - s * mean; /* sum of squared deviations */
    if (sq < 0.0)
        sq = 0.0;
    double var = sq / M; /* biased: what normalizes */
    double invstd = 1.0 / sqrt(var + (double)eps);
    float a = (float)(gamma[c] * invstd);
    float b = (float)(beta[c] - mean * gamma[c] * invstd);
    ab[c] = make_float2(a, b);
    save_mean[c] = (float)mean;
    save_invstd[c] = (float)invstd;
    if (running_mean)
        running_mean[c] = (1.0f - momentum) * running_mean[c] + momentum * (float)mean;
    if (running_var) {
        /* PyTorch tracks the unbiased variance (biased with one value). */
        double uvar = M > 1.0 ? sq / (M - 1.0) : var;
        running_var[c] = (1.0f - momentum) * running_var[c] + momentum * (float)uvar;
    }
}

__global__ void kb_bn_eval_coef_kernel(int C, const float *gamma, const float *beta, float eps,
                                       const float *running_mean, const float *running_var,
                                       float2 *ab)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C)
        return;
    double invstd = 1.0 / sqrt((double)running_var[c] + eps);
    float a = (float)(gamma[c] * invstd);
    float b = (float)(beta[c] - running_mean[c] * (double)gamma[c] * invstd);
    ab[c] = make_float2(a, b);
}

/* n < 2^32 (checked by the launchers): 32-bit channel index math. */
__global__ void kb_bn_apply_kernel(const float *x, int C, int HW, unsigned n, const float2 *ab,
                                   float *y)
{
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        float2 k = ab[(i / (unsigned)HW) % (unsigned)C];
        y[i] = k.x * x[i] + k.y;
    }
}

/* Backward coefficients per channel, the CPU's formulas:
 * dbeta += sum dy; dgamma += sum dy*xhat; dx = k (dy - mdy - xhat mdyx). */
struct kb_bn_bcoef {
    float k, mdy, mdyx, mean, invstd;
};

__global__ void kb_bn_bstats_kernel(const double2 *part, int C, int G, double M,
                                    const float *gamma, const float *save_mean,
                                    const float *save_invstd, float *dgamma, float *dbeta,
                                    kb_bn_bcoef *co)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C)
        return;
    double sdy = 0.0, sdx = 0.0;
    for (int g = 0; g < G; g++) {
        double2 p = part[(size_t)c * G + g];
        sdy += p.x;
        sdx += p.y;
    }
    const double mean = save_mean[c], invstd = save_invstd[c];
    double sdyx = (sdx - mean * sdy) * invstd;
    dbeta[c] += (float)sdy;
    dgamma[c] += (float)sdyx;
    kb_bn_bcoef k;
    k.k = (float)(gamma[c] * invstd);
    k.mdy = (float)(sdy / M);
    k.mdyx = (float)(sdyx / M);
    k.mean = (float)mean;
    k.invstd = (float)invstd;
    co[c] = k;
}

__global__ void kb_bn_dx_kernel(const float *x, const float *dy, int C, int HW, unsigned n,
                                const kb_bn_bcoef *co, float *dx)
{
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        kb_bn_bcoef k = co[(i / (unsigned)HW) % (unsigned)C];
        float xh = (x[i] - k.mean) * k.invstd;
        dx[i] = k.k * (dy[i] - k.mdy - xh * k.mdyx);
    }
}

/* ---- SyncBN halves (see backend.h), the CPU's formulas ---- */

__global__ void kb_bn_sync_stats_kernel(const double2 *part, int C, int G, double M,
                                        float *stats /* (3C) */)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C)
        return;
    double s = 0.0, ss = 0.0;
    for (int g = 0; g < G; g++) {
        double2 p = part[(size_t)c * G + g];
        s += p.x;
        ss += p.y;
    }
    double mean = s / M;
    double sq = ss - s * mean;
    if (sq < 0.0)
        sq = 0.0;
    stats[c] = (float)mean;
    stats[C + c] = (float)(sq / M);
    stats[2 * C + c] = (float)(mean * mean);
}

__global__ void kb_bn_sync_coef_kernel(int C, const float *gamma, const float *beta, float eps,
                                       float momentum, const float *stats, double count,
                                       float *running_mean, float *running_var, float *save_mean,
                                       float *save_invstd, float2 *ab)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C)
        return;
    double mean = stats[c];
    double var = (double)stats[C + c] + (double)stats[2 * C + c] - mean * mean;
    if (var < 0)
        var = 0; /* rounding of the between-rank term */
    double invstd = 1.0 / sqrt(var + eps);
    float a = (float)(gamma[c] * invstd);
    float b = (float)(beta[c] - mean * gamma[c] * invstd);
    ab[c] = make_float2(a, b);
    save_mean[c] = (float)mean;
    save_invstd[c] = (float)invstd;
    if (running_mean)
        running_mean[c] = (1.0f - momentum) * running_mean[c] + momentum * (float)mean;
    if (running_var) {
        double uvar = count > 1.0 ? var * count / (count - 1.0) : var;
        running_var[c] = (1.0f - momentum) * running_var[c] + momentum * (float)uvar;
    }
}

__global__ void kb_bn_sync_red_kernel(const double2 *part, int C, int G, double M,
                                      const float *save_mean, const float *save_invstd,
                                      float *red /* (2C) */, float *dgamma, float *dbeta)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C)
        return;
    double sdy = 0.0, sdx = 0.0;
    for (int g = 0; g < G; g++) {
        double2 p = part[(size_t)c * G + g];
        sdy += p.x;
        sdx += p.y;
    }
    double sdyx = (sdx - save_mean[c] * sdy) * save_invstd[c];
    dbeta[c] += (float)sdy;
    dgamma[c] += (float)sdyx;
    red[c] = (float)(sdy / M);
    red[C + c] = (float)(sdyx / M);
}

__global__ void kb_bn_sync_dx_kernel(const float *x, const float *dy, int C, int HW, unsigned n,
                                     const float *gamma, const float *save_mean,
                                     const float *save_invstd, const float *red, float *dx)
{
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        unsigned c = (i / (unsigned)HW) % (unsigned)C;
        const float fi = save_invstd[c], k = gamma[c] * fi, fm = save_mean[c];
        float xh = (x[i] - fm) * fi;
        dx[i] = k * (dy[i] - red[c] - xh * red[C + c]);
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

/* Slices per channel: enough blocks to fill the GPU, each with at least a
 * few thousand elements. */
static int bn_split(const kb_cuda *impl, long M, int C)
{
    long g = M / 4096;
    long want = (4L * impl->sms + C - 1) / C;
    if (g > want)
        g = want;
    if (g > BN_MAX_SPLIT)
        g = BN_MAX_SPLIT;
    return g < 1 ? 1 : (int)g;
}

static void cuda_bn_forward_train(kb_backend *be, const float *x /* (N,C,HW) */, int N, int C,
                                  int HW, const float *gamma /* (C) */,
                                  const float *beta /* (C) */, float eps, float momentum,
                                  float *running_mean /* (C) or NULL */,
                                  float *running_var /* (C) or NULL */, float *y /* (N,C,HW) */,
                                  float *save_mean /* (C) */, float *save_invstd /* (C) */)
{
    kb_cuda *impl = kb_cuda_enter(be);
    const long M = (long)N * HW;
    const int G = bn_split(impl, M, C);
    const size_t part_bytes = ((sizeof(double2) * (size_t)C * G + 255) / 256) * 256;
    char *scr = (char *)kb_cuda_scratch(impl, part_bytes + sizeof(float2) * (size_t)C);
    double2 *part = (double2 *)scr;
    float2 *ab = (float2 *)(scr + part_bytes);
    KB_CUDA_BYTES(4 * (size_t)M * C + sizeof(double2) * C * G); /* x read, partials written */
    kb_bn_partial_kernel<<<dim3(G, C), BN_THREADS, 0, impl->stream>>>(x, NULL, N, C, HW, G, part);
    KB_CUDA_LAUNCHED();
    /* partials, gamma, beta read; mean, invstd, ab written; running stats updated */
    KB_CUDA_BYTES(sizeof(double2) * C * G + 24 * (size_t)C + (running_mean ? 8 * C : 0) + (running_var ? 8 * C : 0));
    kb_bn_stats_kernel<<<(C + 127) / 128, 128, 0, impl->stream>>>(
        part, C, G, (double)M, gamma, beta, eps, momentum, running_mean, running_var, save_mean,
        save_invstd, ab);
    KB_CUDA_LAUNCHED();
    size_t n = (size_t)M * C;
    KB_CUDA_CHECK(n < ((size_t)1 << 31));
    KB_CUDA_BYTES(8 * n + sizeof(float2) * C); /* x read, y written, ab read */
    kb_bn_apply_kernel<<<kb_cuda_blocks(impl, n, 256), 256, 0, impl->stream>>>(x, C, HW, (unsigned)n, ab, y);
    KB_CUDA_LAUNCHED();
}

static void cuda_bn_forward_eval(kb_backend *be, const float *x /* (N,C,HW) */, int N, int C,
                                 int HW, const float *gamma, const float *beta, float eps,
                                 const float *running_mean, const float *running_var,
                                 float *y /* (N,C,HW) */)
{
    kb_cuda *impl = kb_cuda_enter(be);
    float2 *ab = (float2 *)kb_cuda_scratch(impl, sizeof(float2) * (size_t)C);
    KB_CUDA_BYTES(24 * (size_t)C); /* gamma, beta, running stats read, ab written */
    kb_bn_eval_coef_kernel<<<(C + 127) / 128, 128, 0, impl->stream>>>(C, gamma, beta, eps,
                                                                       running_mean,
                                                                       running_var, ab);
    KB_CUDA_LAUNCHED();
    size_t n = (size_t)N * C * HW;
    KB_CUDA_CHECK(n < ((size_t)1 << 31));
    KB_CUDA_BYTES(8 * n + sizeof(float2) * C); /* x read, y written, ab read */
    kb_bn_apply_kernel<<<kb_cuda_blocks(impl, n, 256), 256, 0, impl->stream>>>(x, C, HW, (unsigned)n, ab, y);
    KB_CUDA_LAUNCHED();
}

static void cuda_bn_backward(kb_backend *be, const float *x /* (N,C,HW) */,
                             const float *dy /* (N,C,HW) */, int N, int C, int HW,
                             const float *gamma, const float *save_mean,
                             const float *save_invstd, float *dx /* (N,C,HW) */,
                             float *dgamma /* (C), += */, float *dbeta /* (C), += */)
{
    kb_cuda *impl = kb_cuda_enter(be);
    const long M = (long)N * HW;
    const int G = bn_split(impl, M, C);
    const size_t part_bytes = ((sizeof(double2) * (size_t)C * G + 255) / 256) * 256;
    char *scr = (char *)kb_cuda_scratch(impl, part_bytes + sizeof(kb_bn_bcoef) * (size_t)C);
    double2 *part = (double2 *)scr;
    kb_bn_bcoef *co = (kb_bn_bcoef *)(scr + part_bytes);
    KB_CUDA_BYTES(8 * (size_t)M * C + sizeof(double2) * C * G); /* x, dy read, partials written */
    kb_bn_partial_kernel<<<dim3(G, C), BN_THREADS, 0, impl->stream>>>(x, dy, N, C, HW, G, part);
    KB_CUDA_LAUNCHED();
    /* partials, gamma, mean, invstd read; dgamma, dbeta updated; coefficients written */
    KB_CUDA_BYTES(sizeof(double2) * C * G + (28 + sizeof(kb_bn_bcoef)) * C);
    kb_bn_bstats_kernel<<<(C + 127) / 128, 128, 0, impl->stream>>>(
        part, C, G, (double)M, gamma, save_mean, save_invstd, dgamma, dbeta, co);
    KB_CUDA_LAUNCHED();
    size_t n = (size_t)M * C;
    KB_CUDA_CHECK(n < ((size_t)1 << 31));
    KB_CUDA_BYTES(12 * n + sizeof(kb_bn_bcoef) * C); /* x, dy, coefficients read, dx written */
    kb_bn_dx_kernel<<<kb_cuda_blocks(impl, n, 256), 256, 0, impl->stream>>>(x, dy, C, HW, (unsigned)n,
                                                                            co, dx);
    KB_CUDA_LAUNCHED();
}

/* Partial sums of channel c over slices: (x, x^2) when dy is NULL, else
 * (dy, dy*x). Returns the partials in scratch (C, G) and sets *G; `extra`
 * bytes after them are the caller's. */
static double2 *bn_partials(kb_cuda *impl, const float *x, const float *dy, int N, int C, int HW,
                            size_t extra, int *G, void **extra_p)
{
    const long M = (long)N * HW;
    KB_CUDA_CHECK((size_t)M * C < ((size_t)1 << 31));
    *G = bn_split(impl, M, C);
    const size_t part_bytes = ((sizeof(double2) * (size_t)C * *G + 255) / 256) * 256;
    char *scr = (char *)kb_cuda_scratch(impl, part_bytes + extra);
    double2 *part = (double2 *)scr;
    *extra_p = scr + part_bytes;
    KB_CUDA_BYTES((dy ? 8 : 4) * (size_t)M * C + sizeof(double2) * C * *G); /* x (dy) read, partials written */
    kb_bn_partial_kernel<<<dim3(*G, C), BN_THREADS, 0, impl->stream>>>(x, dy, N, C, HW, *G, part);
    KB_CUDA_LAUNCHED();
    return part;
}

static void cuda_bn_stats(kb_backend *be, const float *x /* (N,C,HW) */, int N, int C, int HW,
                          float *stats /* (3C) */)
{
    kb_cuda *impl = kb_cuda_enter(be);
    int G;
    void *unused;
    double2 *part = bn_partials(impl, x, NULL, N, C, HW, 0, &G, &unused);
    KB_CUDA_BYTES(sizeof(double2) * C * G + 12 * (size_t)C); /* partials read, stats written */
    kb_bn_sync_stats_kernel<<<(C + 127) / 128, 128, 0, impl->stream>>>(part, C, G,
                                                                        (double)N * HW, stats);
    KB_CUDA_LAUNCHED();
}

static void cuda_bn_forward_apply(kb_backend *be, const float *x /* (N,C,HW) */, int N, int C,
                                  int HW, const float *gamma, const float *beta, float eps,
                                  float momentum, const float *stats /* (3C) */, double count,
                                  float *running_mean, float *running_var,
                                  float *y /* (N,C,HW) */, float *save_mean, float *save_invstd)
{
    kb_cuda *impl = kb_cuda_enter(be);
    float2 *ab = (float2 *)kb_cuda_scratch(impl, sizeof(float2) * (size_t)C);
    /* gamma, beta, stats read; mean, invstd, ab written; running stats updated */
    KB_CUDA_BYTES(36 * (size_t)C + (running_mean ? 8 * C : 0) + (running_var ? 8 * C : 0));
    kb_bn_sync_coef_kernel<<<(C + 127) / 128, 128, 0, impl->stream>>>(
        C, gamma, beta, eps, momentum, stats, count, running_mean, running_var, save_mean,
        save_invstd, ab);
    KB_CUDA_LAUNCHED();
    size_t n = (size_t)N * C * HW;
    KB_CUDA_CHECK(n < ((size_t)1 << 31));
    KB_CUDA_BYTES(8 * n + sizeof(float2) * C); /* x read, y written, ab read */
    kb_bn_apply_kernel<<<kb_cuda_blocks(impl, n, 256), 256, 0, impl->stream>>>(x, C, HW,
                                                                             (unsigned)n, ab, y);
    KB_CUDA_LAUNCHED();
}

static void cuda_bn_backward_reduce(kb_backend *be, const float *x, const float *dy, int N,
                                    int C, int HW, const float *save_mean,
                                    const float *save_invstd, float *red /* (2C) */,
                                    float *dgamma, float *dbeta)
{
    kb_cuda *impl = kb_cuda_enter(be);
    int G;
    void *unused;
    double2 *part = bn_partials(impl, x, dy, N, C, HW, 0, &G, &unused);
    /* partials, mean, invstd read; red written; dgamma, dbeta updated */
    KB_CUDA_BYTES(sizeof(double2) * C * G + 32 * (size_t)C);
    kb_bn_sync_red_kernel<<<(C + 127) / 128, 128, 0, impl->stream>>>(
        part, C, G, (double)N * HW, save_mean, save_invstd, red, dgamma, dbeta);
    KB_CUDA_LAUNCHED();
}

static void cuda_bn_backward_apply(kb_backend *be, const float *x, const float *dy, int N, int C,
                                   int HW, const float *gamma, const float *save_mean,
                                   const float *save_invstd, const float *red, float *dx)
{
    kb_cuda *impl = kb_cuda_enter(be);
    size_t n = (size_t)N * C * HW;
    if (!n)
        return;
    KB_CUDA_CHECK(n < ((size_t)1 << 31));
    KB_CUDA_BYTES(12 * n + 20 * (size_t)C); /* x, dy, gamma, mean, invstd, red read, dx written */
    kb_bn_sync_dx_kernel<<<kb_cuda_blocks(impl, n, 256), 256, 0, impl->stream>>>(
        x, dy, C, HW, (unsigned)n, gamma, save_mean, save_invstd, red, dx);
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
    be->bn_forward_train = cuda_bn_forward_train;
    be->bn_forward_eval = cuda_bn_forward_eval;
    be->bn_backward = cuda_bn_backward;
    be->bn_stats = cuda_bn_stats;
    be->bn_forward_apply = cuda_bn_forward_apply;
    be->bn_backward_reduce = cuda_bn_backward_reduce;
    be->bn_backward_apply = cuda_bn_backward_apply;
    be->l2norm_forward = cuda_l2norm_forward;
    be->l2norm_backward = cuda_l2norm_backward;
}
