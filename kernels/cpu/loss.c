/* Losses, metrics, Adam and the mean-teacher EMA.
 *
 * Per-row terms are computed in parallel into per-row slots and summed in row
 * order afterwards, in double: bitwise independent of the thread count. */
#include <math.h>
#include <string.h>

#include "kernels/cpu/cpu.h"
#include "kernels/optim.h"

/* Row scratch for per-row partial sums: on the stack up to this many rows,
 * else heap (a loss over more rows than this is far outside our batches). */
#define KB_ROWS_STACK 512

/* |a - b|^2 in double */
static double sqdist(const float *a, const float *b, int D)
{
    double s = 0.0;
    for (int d = 0; d < D; d++) {
        double t = (double)a[d] - b[d];
        s += t * t;
    }
    return s;
}

/* One |p - z|^2 term of a loss, weighted by w (its coefficient / N):
 * adds w * d/dp to g and returns the optimized value; *plain gets |p - z|^2.
 * Tangential: value |z - l p|^2 / l with l = sg(<p, z>), d/dp = -2(z - l p). */
static double pair_term(const float *p, const float *z, int D, int tangential, float w,
                        float *g, double *plain)
{
    *plain = sqdist(p, z, D);
    if (!tangential) {
        for (int d = 0; d < D; d++)
            g[d] += 2.0f * w * (p[d] - z[d]);
        return *plain;
    }
    double l = 0.0;
    for (int d = 0; d < D; d++)
        l += (double)p[d] * z[d];
    double r = 0.0;
    float fl = (float)l;
    for (int d = 0; d < D; d++) {
        double t = z[d] - l * p[d];
        r += t * t;
        g[d] += -2.0f * w * (z[d] - fl * p[d]);
    }
    return r / l;
}

static void cpu_loss(kb_backend *be, const kb_loss_cfg *cfg, const float *p1 /* (N,D) */,
                     const float *p2 /* (N,D) */, const float *z1 /* (N,D) */,
                     const float *z2 /* (N,D) */, int N, int D, float *dp1 /* (N,D) */,
                     float *dp2 /* (N,D) */, float *out /* (KB_LOSS_NOUT) */)
{
    int nt = kb_cpu_of(be)->threads;
    double stack[4 * KB_ROWS_STACK];
    double *rows = N <= KB_ROWS_STACK ? stack : malloc(sizeof(double) * 4 * (size_t)N);
    KB_CPU_CHECK(rows != NULL);
    const int byol = cfg->kind == KB_LOSS_BYOL;
    KB_CPU_CHECK(byol || cfg->kind == KB_LOSS_UNIFIED);
    const float inv_n = 1.0f / (float)N;

#pragma omp parallel for num_threads(nt) schedule(static) if ((size_t)N * D >= KB_CPU_PAR_MIN)
    for (int i = 0; i < N; i++) {
        const size_t o = (size_t)i * D;
        const float *a1 = p1 + o, *a2 = p2 + o, *b1 = z1 + o, *b2 = z2 + o;
        float *g1 = dp1 + o, *g2 = dp2 + o;
        memset(g1, 0, sizeof(float) * (size_t)D);
        memset(g2, 0, sizeof(float) * (size_t)D);
        double align = sqdist(a1, a2, D);
        double c1, c2, by1, by2, obj;
        if (byol) {
            c1 = sqdist(a1, b1, D);
            c2 = sqdist(a2, b2, D);
            obj = pair_term(a1, b2, D, cfg->tangential, inv_n, g1, &by1) +
                  pair_term(a2, b1, D, cfg->tangential, inv_n, g2, &by2);
        } else {
            by1 = sqdist(a1, b2, D);
            by2 = sqdist(a2, b1, D);
            /* L = alpha mean|p1-p2|^2 + beta/2 mean(|p1-z1|^2 + |p2-z2|^2) */
            const float wc = 0.5f * cfg->beta * inv_n, wa = 2.0f * cfg->alpha * inv_n;
            obj = cfg->alpha * align +
                  0.5 * cfg->beta *
                      (pair_term(a1, b1, D, cfg->tangential, wc, g1, &c1) +
                       pair_term(a2, b2, D, cfg->tangential, wc, g2, &c2));
            for (int d = 0; d < D; d++) {
                float t = wa * (a1[d] - a2[d]);
                g1[d] += t;
                g2[d] -= t;
            }
        }
        rows[4 * i + 0] = obj;
        rows[4 * i + 1] = align;
        rows[4 * i + 2] = c1 + c2;
        rows[4 * i + 3] = by1 + by2;
    }
    double s[4] = {0, 0, 0, 0};
    for (int i = 0; i < N; i++)
        for (int k = 0; k < 4; k++)
            s[k] += rows[4 * i + k];
    out[KB_LOSS_OUT_LOSS] = (float)(s[0] / N);
    out[KB_LOSS_OUT_ALIGN] = (float)(s[1] / N);
    out[KB_LOSS_OUT_CROSS] = (float)(0.5 * s[2] / N);
    out[KB_LOSS_OUT_BYOL] = (float)(s[3] / N);
    if (rows != stack)
        free(rows);
}

/* log mean_{i != j} exp(-t d_ij): pairs are symmetric, so sum i < j and
 * double. Log-sum-exp around the largest exponent: with t = 2 and unit
 * vectors the exponents reach -8 only, but t and the inputs are the caller's. */
static void uniformity_one(kb_backend *be, const float *z /* (N,D) */, int N, int D, float t,
                           float *out)
{
    int nt = kb_cpu_of(be)->threads;
    double stack[2 * KB_ROWS_STACK];
    double *rmax = N <= KB_ROWS_STACK ? stack : malloc(sizeof(double) * 2 * (size_t)N);
    KB_CPU_CHECK(rmax != NULL);
    double *rsum = rmax + N;
    KB_CPU_CHECK(N >= 2);

#pragma omp parallel for num_threads(nt) schedule(static, 1) if ((size_t)N * N * D >= KB_CPU_PAR_MIN)
    for (int i = 0; i < N; i++) {
        double m = -INFINITY;
        for (int j = i + 1; j < N; j++) {
            double e = -(double)t * sqdist(z + (size_t)i * D, z + (size_t)j * D, D);
            if (e > m)
                m = e;
        }
        rmax[i] = m;
    }
    double m = -INFINITY;
    for (int i = 0; i < N; i++)
        if (rmax[i] > m)
            m = rmax[i];
#pragma omp parallel for num_threads(nt) schedule(static, 1) if ((size_t)N * N * D >= KB_CPU_PAR_MIN)
    for (int i = 0; i < N; i++) {
        double s = 0.0;
        for (int j = i + 1; j < N; j++)
            s += exp(-(double)t * sqdist(z + (size_t)i * D, z + (size_t)j * D, D) - m);
        rsum[i] = s;
    }
    double s = 0.0;
    for (int i = 0; i < N; i++)
        s += rsum[i];
    out[0] = (float)(m + log(2.0 * s / ((double)N * (N - 1))));
    if (rmax != stack)
        free(rmax);
}

static void collapse_one(kb_backend *be, const float *z /* (N,D) */, int N, int D,
                             float *out)
{
    int nt = kb_cpu_of(be)->threads;
    double stack[KB_ROWS_STACK];
    double *sd = D <= KB_ROWS_STACK ? stack : malloc(sizeof(double) * (size_t)D);
    KB_CPU_CHECK(sd != NULL);
#pragma omp parallel for num_threads(nt) schedule(static) if ((size_t)N * D >= KB_CPU_PAR_MIN)
    for (int d = 0; d < D; d++) {
        double s = 0.0;
        for (int i = 0; i < N; i++)
            s += z[(size_t)i * D + d];
        double mean = s / N, ss = 0.0;
        for (int i = 0; i < N; i++) {
            double v = z[(size_t)i * D + d] - mean;
            ss += v * v;
        }
        sd[d] = sqrt(ss / N);
    }
    double s = 0.0;
    for (int d = 0; d < D; d++)
        s += sd[d];
    out[0] = (float)(sqrt((double)D) * s / D);
    if (sd != stack)
        free(sd);
}

static void cpu_softmax_xent(kb_backend *be, const float *logits /* (N,K) */,
                             const int32_t *labels /* (N) */, int N, int K,
                             float *dlogits /* (N,K) or NULL */, float *out /* (2) */)
{
    int nt = kb_cpu_of(be)->threads;
    double stack[2 * KB_ROWS_STACK];
    double *rows = N <= KB_ROWS_STACK ? stack : malloc(sizeof(double) * 2 * (size_t)N);
    KB_CPU_CHECK(rows != NULL);
#pragma omp parallel for num_threads(nt) schedule(static) if ((size_t)N * K >= KB_CPU_PAR_MIN)
    for (int i = 0; i < N; i++) {
        const float *l = logits + (size_t)i * K;
        int y = labels[i];
        KB_CPU_CHECK(y >= 0 && y < K);
        int am = 0;
        for (int k = 1; k < K; k++)
            if (l[k] > l[am])
                am = k; /* first maximum, as torch.argmax */
        double m = l[am], s = 0.0;
        for (int k = 0; k < K; k++)
            s += exp((double)l[k] - m);
        double lse = m + log(s);
        rows[2 * i] = lse - l[y];
        rows[2 * i + 1] = am == y;
        if (dlogits) {
            float *g = dlogits + (size_t)i * K;
            for (int k = 0; k < K; k++)
                g[k] = (float)((exp((double)l[k] - lse) - (k == y)) / N);
        }
    }
    double loss = 0.0, correct = 0.0;
    for (int i = 0; i < N; i++) {
        loss += rows[2 * i];
        correct += rows[2 * i + 1];
    }
    out[0] = (float)(loss / N);
    out[1] = (float)correct;
    if (rows != stack)
        free(rows);
}

/* Groups of N rows (each view's), one after another. */
static void cpu_uniformity(kb_backend *be, const float *z /* (G*N,D) */, int G, int N, int D,
                           float t, float *out /* (G) */)
{
    for (int g = 0; g < G; g++)
        uniformity_one(be, z + (size_t)g * N * D, N, D, t, out + g);
}

static void cpu_collapse_std(kb_backend *be, const float *z /* (G*N,D) */, int G, int N, int D,
                             float *out /* (G) */)
{
    for (int g = 0; g < G; g++)
        collapse_one(be, z + (size_t)g * N * D, N, D, out + g);
}

/* torch.optim.Adam, then the EMA of the teacher's prefix with the updated
 * parameter, in one pass; the scalars and the per-element math are shared
 * with the CUDA backend (kernels/optim.h). No mirrors on the CPU. */
static void cpu_update(kb_backend *be, const kb_update *u)
{
    int nt = kb_cpu_of(be)->threads;
    const kb_adam_consts k = *u->k;
    const float tau = u->teacher ? u->tau_omt[0] : 0.0f, omt = u->teacher ? u->tau_omt[1] : 0.0f;
    float *p = u->params, *g = u->grads, *m = u->adam_m, *v = u->adam_v, *xi = u->teacher;
    const size_t n = u->n, nt_ = u->teacher ? u->nteacher : 0;
#pragma omp parallel for num_threads(nt) schedule(static) if (n >= KB_CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        kb_adam_elem(&k, &p[i], g[i], &m[i], &v[i]);
        if (i < nt_)
            xi[i] = kb_ema_elem(xi[i], p[i], tau, omt);
        g[i] = 0.0f;
    }
}

void kb_cpu_loss_init(kb_backend *be)
{
    be->loss = cpu_loss;
    be->uniformity = cpu_uniformity;
    be->collapse_std = cpu_collapse_std;
    be->softmax_xent = cpu_softmax_xent;
    be->update = cpu_update;
}
