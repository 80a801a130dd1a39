/* Losses and metrics: own kernels, the CPU backend's formulas
 * (kernels/cpu/loss.c) term by term.
 *
 * Per-row terms are summed in double by one block per row and written to
 * per-row slots; one block (per group of rows, for the metrics of both
 * views) then adds the rows (fixed tree): deterministic, and the scalars
 * stay on the device. */
#include <math.h>

#include "kernels/cuda/cuda.h"

#define ROW_THREADS 128
#define FIN_THREADS 256

/* ---- kernels ---- */

enum { KB_FIN_LOSS, KB_FIN_XENT, KB_FIN_COLLAPSE };

/* Sums the columns of rows (n, width <= 4) and writes the op's outputs;
 * block g does the g-th such set of rows, for out + g (collapse only). */
__global__ void kb_finish_kernel(int mode, const double *rows, int n, int width, float *out)
{
    __shared__ double sh[FIN_THREADS / 32];
    rows += (size_t)blockIdx.x * n * width;
    out += blockIdx.x;
    double acc[4] = {0.0, 0.0, 0.0, 0.0};
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        for (int k = 0; k < width; k++)
            acc[k] += rows[(size_t)i * width + k];
    double s[4];
    for (int k = 0; k < 4; k++)
        s[k] = kb_cuda_block_sum(k < width ? acc[k] : 0.0, sh);
    if (threadIdx.x != 0)
        return;
    if (mode == KB_FIN_LOSS) {
        out[KB_LOSS_OUT_LOSS] = (float)(s[0] / n);
        out[KB_LOSS_OUT_ALIGN] = (float)(s[1] / n);
        out[KB_LOSS_OUT_CROSS] = (float)(0.5 * s[2] / n);
        out[KB_LOSS_OUT_BYOL] = (float)(s[3] / n);
    } else if (mode == KB_FIN_XENT) {
        out[0] = (float)(s[0] / n);
        out[1] = (float)s[1];
    } else { /* collapse: n = D standard deviations */
        out[0] = (float)(sqrt((double)n) * s[0] / n);
    }
}

/* One block per row i. See cpu_loss for the terms; T(p, z) is |p - z|^2 or,
 * tangential, |z - l p|^2 / l with l = <p, z>; its gradient scaled by w is
 * 2w(p - z) or -2w(z - l p). */
__global__ void kb_loss_kernel(const float *p1, const float *p2, const float *z1,
                               const float *z2, int N, int D, int byol, int tangential,
                               float alpha, float beta, float *dp1, float *dp2,
                               double *rows /* (N,4) */)
{
    __shared__ double sh[ROW_THREADS / 32];
    const size_t o = (size_t)blockIdx.x * D;
    const float *a1 = p1 + o, *a2 = p2 + o, *b1 = z1 + o, *b2 = z2 + o;
    float *g1 = dp1 + o, *g2 = dp2 + o;
    /* The pair terms of the objective: (a1, t1) and (a2, t2). */
    const float *t1 = byol ? b2 : b1, *t2 = byol ? b1 : b2;
    double align = 0, c1 = 0, c2 = 0, by1 = 0, by2 = 0, l1 = 0, l2 = 0;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        double x1 = a1[d], x2 = a2[d], y1 = b1[d], y2 = b2[d], t;
        t = x1 - x2;
        align += t * t;
        t = x1 - y1;
        c1 += t * t;
        t = x2 - y2;
        c2 += t * t;
        t = x1 - y2;
        by1 += t * t;
        t = x2 - y1;
        by2 += t * t;
        l1 += x1 * t1[d];
        l2 += x2 * t2[d];
    }
    align = kb_cuda_block_sum(align, sh);
    c1 = kb_cuda_block_sum(c1, sh);
    c2 = kb_cuda_block_sum(c2, sh);
    by1 = kb_cuda_block_sum(by1, sh);
    by2 = kb_cuda_block_sum(by2, sh);
    l1 = kb_cuda_block_sum(l1, sh);
    l2 = kb_cuda_block_sum(l2, sh);

    const float inv_n = 1.0f / (float)N;
    const float w = byol ? inv_n : 0.5f * beta * inv_n;
    const float wa = 2.0f * alpha * inv_n;
    const float fl1 = (float)l1, fl2 = (float)l2;
    double r1 = 0, r2 = 0;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float q1, q2;
        if (tangential) {
            double u1 = t1[d] - l1 * a1[d], u2 = t2[d] - l2 * a2[d];
            r1 += u1 * u1;
            r2 += u2 * u2;
            q1 = -2.0f * w * (t1[d] - fl1 * a1[d]);
            q2 = -2.0f * w * (t2[d] - fl2 * a2[d]);
        } else {
            q1 = 2.0f * w * (a1[d] - t1[d]);
            q2 = 2.0f * w * (a2[d] - t2[d]);
        }
        if (!byol) {
            float t = wa * (a1[d] - a2[d]);
            q1 += t;
            q2 -= t;
        }
        g1[d] = q1;
        g2[d] = q2;
    }
    double T1, T2;
    if (tangential) {
        r1 = kb_cuda_block_sum(r1, sh);
        r2 = kb_cuda_block_sum(r2, sh);
        T1 = r1 / l1;
        T2 = r2 / l2;
    } else {
        T1 = byol ? by1 : c1;
        T2 = byol ? by2 : c2;
    }
    if (threadIdx.x == 0) {
        double *r = rows + 4 * (size_t)blockIdx.x;
        r[0] = byol ? T1 + T2 : alpha * align + 0.5 * beta * (T1 + T2);
        r[1] = align;
        r[2] = c1 + c2;
        r[3] = by1 + by2;
    }
}

/* One block per row i of group g (blockIdx.x = g N + i): the largest
 * exponent e_ij = -t |z_i - z_j|^2 over j > i in the group and the sum of
 * exp(e_ij - max), both in double. */
__global__ void kb_uniformity_rows_kernel(const float *z, int N, int D, float t,
                                          double2 *rows /* (G N): (max, sum) */)
{
    __shared__ double sh[ROW_THREADS / 32];
    const int i = blockIdx.x % N;
    z += (size_t)(blockIdx.x / N) * N * D;
    const float *zi = z + (size_t)i * D;
    double m = -INFINITY;
    for (int j = i + 1 + threadIdx.x; j < N; j += blockDim.x) {
        const float *zj = z + (size_t)j * D;
        double s = 0.0;
        for (int d = 0; d < D; d++) {
            double u = (double)zi[d] - zj[d];
            s += u * u;
        }
        m = fmax(m, -(double)t * s);
    }
    m = kb_cuda_block_max(m, sh);
    double e = 0.0;
    if (m > -INFINITY)
        for (int j = i + 1 + threadIdx.x; j < N; j += blockDim.x) {
            const float *zj = z + (size_t)j * D;
            double s = 0.0;
            for (int d = 0; d < D; d++) {
                double u = (double)zi[d] - zj[d];
                s += u * u;
            }
            e += exp(-(double)t * s - m);
        }
    e = kb_cuda_block_sum(e, sh);
    if (threadIdx.x == 0)
        rows[blockIdx.x] = make_double2(m, e);
}

/* log mean_{i != j} = M + log(2 sum_i rsum_i exp(rmax_i - M) / (N (N-1))),
 * M the largest exponent: pairs are symmetric, so i < j counted twice. One
 * block per group. */
__global__ void kb_uniformity_finish_kernel(const double2 *rows, int N, float *out)
{
    __shared__ double sh[FIN_THREADS / 32];
    rows += (size_t)blockIdx.x * N;
    out += blockIdx.x;
    double m = -INFINITY;
    for (int i = threadIdx.x; i < N; i += blockDim.x)
        m = fmax(m, rows[i].x);
    m = kb_cuda_block_max(m, sh);
    double s = 0.0;
    for (int i = threadIdx.x; i < N; i += blockDim.x)
        if (rows[i].x > -INFINITY)
            s += rows[i].y * exp(rows[i].x - m);
    s = kb_cuda_block_sum(s, sh);
    if (threadIdx.x == 0)
        out[0] = (float)(m + log(2.0 * s / ((double)N * (N - 1))));
}

/* One thread per dimension d of group blockIdx.y: population std over
 * the group's N rows. */
__global__ void kb_collapse_cols_kernel(const float *z, int N, int D, double *sd /* (G, D) */)
{
    int d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= D)
        return;
    z += (size_t)blockIdx.y * N * D;
    sd += (size_t)blockIdx.y * D;
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

/* One thread per row, as the CPU: first maximum is the argmax (torch). */
__global__ void kb_xent_rows_kernel(const float *logits, const int32_t *labels, int N, int K,
                                    float *dlogits, double *rows /* (N,2) */)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N)
        return;
    const float *l = logits + (size_t)i * K;
    int y = labels[i];
    if (y < 0 || y >= K)
        __trap(); /* programmer error: the CPU backend aborts here too */
    int am = 0;
    for (int k = 1; k < K; k++)
        if (l[k] > l[am])
            am = k;
    double m = l[am], s = 0.0;
    for (int k = 0; k < K; k++)
        s += exp((double)l[k] - m);
    double lse = m + log(s);
    rows[2 * (size_t)i] = lse - l[y];
    rows[2 * (size_t)i + 1] = am == y;
    if (dlogits) {
        float *g = dlogits + (size_t)i * K;
        for (int k = 0; k < K; k++)
            g[k] = (float)((exp((double)l[k] - lse) - (k == y)) / N);
    }
}

/* ---- launchers ---- */

static void cuda_loss(kb_backend *be, const kb_loss_cfg *cfg, const float *p1 /* (N,D) */,
                      const float *p2 /* (N,D) */, const float *z1 /* (N,D) */,
                      const float *z2 /* (N,D) */, int N, int D, float *dp1 /* (N,D) */,
                      float *dp2 /* (N,D) */, float *out /* (KB_LOSS_NOUT) */)
{
    kb_cuda *impl = kb_cuda_enter(be);
    const int byol = cfg->kind == KB_LOSS_BYOL;
    KB_CUDA_CHECK(byol || cfg->kind == KB_LOSS_UNIFIED);
    KB_CUDA_CHECK(N >= 1);
    double *rows = (double *)kb_cuda_scratch(impl, sizeof(double) * 4 * (size_t)N);
    /* p1, p2, z1, z2 read, dp1, dp2 and the per-row terms written */
    KB_CUDA_BYTES(24 * (size_t)N * D + 4 * sizeof(double) * N);
    const int tan = cfg->tangential;
    const float alpha = cfg->alpha, beta = cfg->beta;
    kb_loss_kernel<<<N, ROW_THREADS, 0, impl->stream>>>(p1, p2, z1, z2, N, D, byol, tan, alpha,
                                                         beta, dp1, dp2, rows);
    KB_CUDA_LAUNCHED();
    KB_CUDA_BYTES(4 * sizeof(double) * N + 4 * sizeof(float)); /* rows read, 4 outputs written */
    kb_finish_kernel<<<1, FIN_THREADS, 0, impl->stream>>>(KB_FIN_LOSS, rows, N, 4, out);
    KB_CUDA_LAUNCHED();
}

static void cuda_uniformity(kb_backend *be, const float *z /* (G*N,D) */, int G, int N, int D,
                            float t, float *out /* (G) */)
{
    kb_cuda *impl = kb_cuda_enter(be);
    KB_CUDA_CHECK(N >= 2 && G >= 1);
    const size_t R = (size_t)G * N;
    double2 *rows = (double2 *)kb_cuda_scratch(impl, sizeof(double2) * R);
    KB_CUDA_BYTES(4 * R * D + sizeof(double2) * R); /* z read, rows written */
    kb_uniformity_rows_kernel<<<(unsigned)R, ROW_THREADS, 0, impl->stream>>>(z, N, D, t, rows);
    KB_CUDA_LAUNCHED();
    KB_CUDA_BYTES(sizeof(double2) * R + sizeof(float) * G); /* rows read, out written */
    kb_uniformity_finish_kernel<<<G, FIN_THREADS, 0, impl->stream>>>(rows, N, out);
    KB_CUDA_LAUNCHED();
}

static void cuda_collapse_std(kb_backend *be, const float *z /* (G*N,D) */, int G, int N, int D,
                              float *out /* (G) */)
{
    kb_cuda *impl = kb_cuda_enter(be);
    KB_CUDA_CHECK(N >= 1 && D >= 1 && G >= 1);
    double *sd = (double *)kb_cuda_scratch(impl, sizeof(double) * (size_t)G * D);
    /* z read, std devs written */
    KB_CUDA_BYTES(4 * (size_t)G * N * D + sizeof(double) * G * D);
    kb_collapse_cols_kernel<<<dim3((D + 127) / 128, G), 128, 0, impl->stream>>>(z, N, D, sd);
    KB_CUDA_LAUNCHED();
    KB_CUDA_BYTES(sizeof(double) * G * D + sizeof(float) * G); /* std devs read, out written */
    kb_finish_kernel<<<G, FIN_THREADS, 0, impl->stream>>>(KB_FIN_COLLAPSE, sd, D, 1, out);
    KB_CUDA_LAUNCHED();
}

static void cuda_softmax_xent(kb_backend *be, const float *logits /* (N,K) */,
                              const int32_t *labels /* (N) */, int N, int K,
                              float *dlogits /* (N,K) or NULL */, float *out /* (2) */)
{
    kb_cuda *impl = kb_cuda_enter(be);
    KB_CUDA_CHECK(N >= 1 && K >= 1);
    double *rows = (double *)kb_cuda_scratch(impl, sizeof(double) * 2 * (size_t)N);
    /* logits, labels read; dlogits (if asked) and rows written */
    KB_CUDA_BYTES((dlogits ? 8 : 4) * (size_t)N * K + 4 * (size_t)N + 2 * sizeof(double) * N);
    kb_xent_rows_kernel<<<(N + 127) / 128, 128, 0, impl->stream>>>(logits, labels, N, K, dlogits,
                                                                   rows);
    KB_CUDA_LAUNCHED();
    KB_CUDA_BYTES(2 * sizeof(double) * N + 2 * sizeof(float)); /* rows read, 2 outputs written */
    kb_finish_kernel<<<1, FIN_THREADS, 0, impl->stream>>>(KB_FIN_XENT, rows, N, 2, out);
    KB_CUDA_LAUNCHED();
}

void kb_cuda_loss_init(kb_backend *be)
{
    be->loss = cuda_loss;
    be->uniformity = cuda_uniformity;
    be->collapse_std = cuda_collapse_std;
    be->softmax_xent = cuda_softmax_xent;
}
