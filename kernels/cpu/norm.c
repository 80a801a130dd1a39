/* Batch normalization over (N, C, HW) and row-wise L2 normalization.
 *
 * Every reduction for one channel (or row) runs on one thread in a fixed
 * order, so results are bitwise independent of the thread count. Channel
 * statistics are summed in double: a 128x64x48x48 batch sums 147k values
 * per channel, where float accumulation would lose ~1e-3 relative. */
#include <math.h>

#include "kernels/cpu/cpu.h"

/* Mean and sum of squared deviations of channel c, in double. Two passes
 * (mean, then deviations): no cancellation when the mean is large compared
 * to the spread. */
static void channel_stats(const float *x /* (N,C,HW) */, int N, int C, int HW, int c,
                          double *mean, double *ss)
{
    const size_t chw = (size_t)C * HW;
    double s = 0.0, d = 0.0;
    for (int n = 0; n < N; n++)
        s += kb_cpu_sum(x + n * chw + (size_t)c * HW, (size_t)HW);
    *mean = s / ((double)N * HW);
    for (int n = 0; n < N; n++)
        d += kb_cpu_sumsq_dev(x + n * chw + (size_t)c * HW, (size_t)HW, *mean);
    *ss = d;
}

/* y = gamma (x - mean) / sqrt(var + eps) + beta on channel c; saves mean and
 * invstd; updates the running statistics (PyTorch's momentum rule, with the
 * unbiased variance uvar) where given. */
static void channel_normalize(const float *x, int N, int C, int HW, int c, double mean,
                              double var, double uvar, const float *gamma, const float *beta,
                              float eps, float momentum, float *running_mean,
                              float *running_var, float *y, float *save_mean,
                              float *save_invstd)
{
    const size_t chw = (size_t)C * HW;
    double invstd = 1.0 / sqrt(var + eps);
    float a = (float)(gamma[c] * invstd);
    float b = (float)(beta[c] - mean * gamma[c] * invstd);
    for (int n = 0; n < N; n++) {
        const float *xp = x + n * chw + (size_t)c * HW;
        float *yp = y + n * chw + (size_t)c * HW;
        for (int i = 0; i < HW; i++)
            yp[i] = a * xp[i] + b;
    }
    save_mean[c] = (float)mean;
    save_invstd[c] = (float)invstd;
    if (running_mean)
        running_mean[c] = (1.0f - momentum) * running_mean[c] + momentum * (float)mean;
    if (running_var)
        running_var[c] = (1.0f - momentum) * running_var[c] + momentum * (float)uvar;
}

static void cpu_bn_forward_train(kb_backend *be, const float *x /* (N,C,HW) */, int N, int C,
                                 int HW, const float *gamma /* (C) */,
                                 const float *beta /* (C) */, float eps, float momentum,
                                 float *running_mean /* (C) or NULL */,
                                 float *running_var /* (C) or NULL */, float *y /* (N,C,HW) */,
                                 float *save_mean /* (C) */, float *save_invstd /* (C) */)
{
    int nt = kb_cpu_of(be)->threads;
    const double M = (double)N * HW;
    const size_t chw = (size_t)C * HW;
#pragma omp parallel for num_threads(nt) schedule(static) if ((size_t)N * chw >= KB_CPU_PAR_MIN)
    for (int c = 0; c < C; c++) {
        double mean, ss;
        channel_stats(x, N, C, HW, c, &mean, &ss);
        double var = ss / M; /* biased: what normalizes */
        /* PyTorch tracks the unbiased variance; with one value per channel
         * (PyTorch refuses to train there) fall back to the biased one. */
        double uvar = M > 1.0 ? ss / (M - 1.0) : var;
        channel_normalize(x, N, C, HW, c, mean, var, uvar, gamma, beta, eps, momentum,
                          running_mean, running_var, y, save_mean, save_invstd);
    }
}

static void cpu_bn_forward_eval(kb_backend *be, const float *x /* (N,C,HW) */, int N, int C,
                                int HW, const float *gamma, const float *beta, float eps,
                                const float *running_mean, const float *running_var,
                                float *y /* (N,C,HW) */)
{
    int nt = kb_cpu_of(be)->threads;
    const size_t chw = (size_t)C * HW;
#pragma omp parallel for num_threads(nt) schedule(static) collapse(2) if ((size_t)N * chw >= KB_CPU_PAR_MIN)
    for (int n = 0; n < N; n++) {
        for (int c = 0; c < C; c++) {
            double invstd = 1.0 / sqrt((double)running_var[c] + eps);
            float a = (float)(gamma[c] * invstd);
            float b = (float)(beta[c] - running_mean[c] * (double)gamma[c] * invstd);
            const float *xp = x + n * chw + (size_t)c * HW;
            float *yp = y + n * chw + (size_t)c * HW;
            for (int i = 0; i < HW; i++)
                yp[i] = a * xp[i] + b;
        }
    }
}

/* Training-mode backward with xhat = (x - mean) * invstd:
 *   dbeta = sum dy, dgamma = sum dy * xhat,
 *   dx = gamma * invstd / M * (M dy - dbeta - xhat dgamma). */
static void cpu_bn_backward(kb_backend *be, const float *x /* (N,C,HW) */,
                            const float *dy /* (N,C,HW) */, int N, int C, int HW,
                            const float *gamma, const float *save_mean,
                            const float *save_invstd, float *dx /* (N,C,HW) */,
                            float *dgamma /* (C), += */, float *dbeta /* (C), += */)
{
    int nt = kb_cpu_of(be)->threads;
    const double M = (double)N * HW;
    const size_t chw = (size_t)C * HW;
#pragma omp parallel for num_threads(nt) schedule(static) if ((size_t)N * chw >= KB_CPU_PAR_MIN)
    for (int c = 0; c < C; c++) {
        const double mean = save_mean[c], invstd = save_invstd[c];
        /* sum dy*(x - mean) = sum dy*x - mean*sum dy: float products are
         * exact in double, so the cancellation costs nothing that matters. */
        double sdy = 0.0, sdx = 0.0;
        for (int n = 0; n < N; n++) {
            const float *xp = x + n * chw + (size_t)c * HW;
            const float *dp = dy + n * chw + (size_t)c * HW;
            sdy += kb_cpu_sum(dp, (size_t)HW);
            sdx += kb_cpu_dot(dp, xp, (size_t)HW);
        }
        double sdyx = (sdx - mean * sdy) * invstd;
        dbeta[c] += (float)sdy;
        dgamma[c] += (float)sdyx;
        /* dx = k * (dy - mean_dy - xhat * mean_dyxhat), in float per element. */
        const float k = (float)(gamma[c] * invstd);
        const float mdy = (float)(sdy / M), mdyx = (float)(sdyx / M);
        const float fm = (float)mean, fi = (float)invstd;
        for (int n = 0; n < N; n++) {
            const float *xp = x + n * chw + (size_t)c * HW;
            const float *dp = dy + n * chw + (size_t)c * HW;
            float *dxp = dx + n * chw + (size_t)c * HW;
            for (int i = 0; i < HW; i++) {
                float xh = (xp[i] - fm) * fi;
                dxp[i] = k * (dp[i] - mdy - xh * mdyx);
            }
        }
    }
}

/* ---- SyncBN halves (see backend.h); the same double-precision channel
 * reductions as above, one thread per channel. */

static void cpu_bn_stats(kb_backend *be, const float *x /* (N,C,HW) */, int N, int C, int HW,
                         float *stats /* (3C) */)
{
    int nt = kb_cpu_of(be)->threads;
    const double M = (double)N * HW;
    const size_t chw = (size_t)C * HW;
#pragma omp parallel for num_threads(nt) schedule(static) if ((size_t)N * chw >= KB_CPU_PAR_MIN)
    for (int c = 0; c < C; c++) {
        double mean, ss;
        channel_stats(x, N, C, HW, c, &mean, &ss);
        stats[c] = (float)mean;
        stats[C + c] = (float)(ss / M);
        stats[2 * C + c] = (float)(mean * mean);
    }
}

static void cpu_bn_forward_apply(kb_backend *be, const float *x /* (N,C,HW) */, int N, int C,
                                 int HW, const float *gamma, const float *beta, float eps,
                                 float momentum, const float *stats /* (3C) */, double count,
                                 float *running_mean, float *running_var,
                                 float *y /* (N,C,HW) */, float *save_mean, float *save_invstd)
{
    int nt = kb_cpu_of(be)->threads;
    const size_t chw = (size_t)C * HW;
#pragma omp parallel for num_threads(nt) schedule(static) if ((size_t)N * chw >= KB_CPU_PAR_MIN)
    for (int c = 0; c < C; c++) {
        double mean = stats[c];
        double var = (double)stats[C + c] + (double)stats[2 * C + c] - mean * mean;
        if (var < 0)
            var = 0; /* rounding of the between-rank term */
        double uvar = count > 1.0 ? var * count / (count - 1.0) : var;
        channel_normalize(x, N, C, HW, c, mean, var, uvar, gamma, beta, eps, momentum,
                          running_mean, running_var, y, save_mean, save_invstd);
    }
}

static void cpu_bn_backward_reduce(kb_backend *be, const float *x, const float *dy, int N, int C,
                                   int HW, const float *save_mean, const float *save_invstd,
                                   float *red /* (2C) */, float *dgamma, float *dbeta)
{
    int nt = kb_cpu_of(be)->threads;
    const double M = (double)N * HW;
    const size_t chw = (size_t)C * HW;
#pragma omp parallel for num_threads(nt) schedule(static) if ((size_t)N * chw >= KB_CPU_PAR_MIN)
    for (int c = 0; c < C; c++) {
        double sdy = 0.0, sdx = 0.0;
        for (int n = 0; n < N; n++) {
            sdy += kb_cpu_sum(dy + n * chw + (size_t)c * HW, (size_t)HW);
            sdx += kb_cpu_dot(dy + n * chw + (size_t)c * HW, x + n * chw + (size_t)c * HW,
                              (size_t)HW);
        }
        double sdyx = (sdx - save_mean[c] * sdy) * save_invstd[c];
        dbeta[c] += (float)sdy;
        dgamma[c] += (float)sdyx;
        red[c] = (float)(sdy / M);
        red[C + c] = (float)(sdyx / M);
    }
}

static void cpu_bn_backward_apply(kb_backend *be, const float *x, const float *dy, int N, int C,
                                  int HW, const float *gamma, const float *save_mean,
                                  const float *save_invstd, const float *red, float *dx)
{
    int nt = kb_cpu_of(be)->threads;
    const size_t chw = (size_t)C * HW;
#pragma omp parallel for num_threads(nt) schedule(static) collapse(2) if ((size_t)N * chw >= KB_CPU_PAR_MIN)
    for (int n = 0; n < N; n++) {
        for (int c = 0; c < C; c++) {
            const float k = gamma[c] * save_invstd[c], fm = save_mean[c], fi = save_invstd[c];
            const float mdy = red[c], mdyx = red[C + c];
            const float *xp = x + n * chw + (size_t)c * HW;
            const float *dp = dy + n * chw + (size_t)c * HW;
            float *dxp = dx + n * chw + (size_t)c * HW;
            for (int i = 0; i < HW; i++) {
                float xh = (xp[i] - fm) * fi;
                dxp[i] = k * (dp[i] - mdy - xh * mdyx);
            }
        }
    }
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
    be->bn_forward_train = cpu_bn_forward_train;
    be->bn_forward_eval = cpu_bn_forward_eval;
    be->bn_backward = cpu_bn_backward;
    be->bn_stats = cpu_bn_stats;
    be->bn_forward_apply = cpu_bn_forward_apply;
    be->bn_backward_reduce = cpu_bn_backward_reduce;
    be->bn_backward_apply = cpu_bn_backward_apply;
    be->l2norm_forward = cpu_l2norm_forward;
    be->l2norm_backward = cpu_l2norm_backward;
}
