/* ReLU, pooling (plain C + OpenMP) and linear layers (OpenBLAS sgemm).
 * Each output element is computed by one thread in a fixed order: results
 * do not depend on the thread count. */
#include <math.h>
#include <string.h>

#include <cblas.h>
/* cblas.h includes <complex.h>; its macro I is our shape letter I. */
#undef I

#include "kernels/cpu/cpu.h"

static void cpu_relu_forward(kb_backend *be, const float *x, float *y, size_t n)
{
    int nt = kb_cpu_of(be)->threads;
#pragma omp parallel for num_threads(nt) schedule(static) if (n >= KB_CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++)
        y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

static void cpu_relu_backward(kb_backend *be, const float *y, const float *dy, float *dx,
                              size_t n)
{
    int nt = kb_cpu_of(be)->threads;
    /* dy's bits under a mask: the same result as y > 0 ? dy : 0, but no
     * branch on the sign of y, which a trained net's activations make a
     * coin flip (the branchy loop ran at 5 GB/s inside a step, this at
     * memory speed). The project builds with -fno-strict-aliasing. */
    const uint32_t *dyb = (const uint32_t *)dy;
    uint32_t *dxb = (uint32_t *)dx;
#pragma omp parallel for simd num_threads(nt) schedule(static) if (n >= KB_CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++)
        dxb[i] = dyb[i] & (0u - (uint32_t)(y[i] > 0.0f));
}

#define MAXPOOL_ROW 1024 /* outputs per row done vectorized; wider rows go one by one */

/* One window element for a row of outputs q in [qa, qb): the element of
 * output q is xs[q * stride] (index off + q * stride in its plane); it
 * wins where it is larger. The selects are bit masks: GCC turns no float
 * compare (which could trap) into a vector select. Returns 1 if a NaN was
 * seen. */
static int maxpool_row_step(const float *restrict xs, int stride, int qa, int qb, int off,
                            float *restrict best, int32_t *restrict bi)
{
    int nan = 0;
    for (int q = qa; q < qb; q++) {
        union {
            float f;
            int32_t u;
        } v = {xs[q * stride]}, cur = {best[q]}, r;
        const int32_t m = -(int32_t)(v.f > cur.f); /* all ones: v wins */
        nan |= v.f != v.f;
        r.u = (v.u & m) | (cur.u & ~m);
        best[q] = r.f;
        bi[q] = ((off + q * stride) & m) | (bi[q] & ~m);
    }
    return nan;
}

static void cpu_maxpool_forward(kb_backend *be, const void *xv /* (N,C,H,W) */, int N, int C,
                                int H, int W, int k, int stride, int pad,
                                void *yv /* (N,C,P,Q) */, int32_t *idx /* (N,C,P,Q) or NULL */)
{
    int nt = kb_cpu_of(be)->threads;
    const float *x = xv;
    float *y = yv;
    const int P = (H + 2 * pad - k) / stride + 1;
    const int Q = (W + 2 * pad - k) / stride + 1;
    const long planes = (long)N * C;
    /* Outputs whose window lies inside the row (q in [qa, qb)) are computed
     * a row of outputs at a time, window element by window element, so the
     * compiler vectorizes across q; the same visiting order per output
     * (row-major in its window), hence the same winner. */
    int qa = (pad + stride - 1) / stride, qb = W + pad >= k ? (W + pad - k) / stride + 1 : 0;
    if (qb > Q)
        qb = Q;
    if (qa > qb || Q > MAXPOOL_ROW)
        qa = qb = 0;
#pragma omp parallel for num_threads(nt) schedule(static) if (planes * H * W >= KB_CPU_PAR_MIN)
    for (long pl = 0; pl < planes; pl++) {
        const float *xp = x + pl * H * W;
        float *yp = y + pl * P * Q;
        int32_t *ip = idx ? idx + pl * P * Q : NULL;
        for (int p = 0; p < P; p++) {
            int h0 = p * stride - pad;
            int hs = h0 < 0 ? 0 : h0, he = h0 + k > H ? H : h0 + k;
            if (qb > qa) {
                float best[MAXPOOL_ROW];
                int32_t bi[MAXPOOL_ROW];
                int nan = 0;
                for (int q = qa; q < qb; q++) {
                    best[q] = -INFINITY;
                    bi[q] = hs * W + q * stride - pad;
                }
                for (int h = hs; h < he; h++)
                    for (int dw = 0; dw < k; dw++) {
                        const int off = h * W + dw - pad;
                        nan |= maxpool_row_step(xp + off, stride, qa, qb, off, best, bi);
                    }
                for (int q = qa; q < qb; q++) {
                    for (int h = hs; nan && h < he; h++) /* the first NaN wins, as below */
                        for (int w = q * stride - pad; w < q * stride - pad + k; w++)
                            if (isnan(xp[h * W + w])) {
                                best[q] = xp[h * W + w];
                                bi[q] = h * W + w;
                                h = he;
                                break;
                            }
                    yp[p * Q + q] = best[q];
                    if (ip)
                        ip[p * Q + q] = bi[q];
                }
            }
            for (int q = 0; q < Q; q++) {
                if (q >= qa && q < qb)
                    continue;
                int w0 = q * stride - pad;
                int ws = w0 < 0 ? 0 : w0, we = w0 + k > W ? W : w0 + k;
                /* Only in-bounds elements compete: padding never wins. The
                 * first maximum in row-major order wins ties, as in PyTorch.
                 * A NaN wins (PyTorch propagates it): rare, so it is only
                 * flagged in the hot loop and resolved afterwards. */
                float best = -INFINITY;
                int32_t bi = hs * W + ws;
                int nan = 0;
                for (int h = hs; h < he; h++)
                    for (int w = ws; w < we; w++) {
                        float v = xp[h * W + w];
                        int gt = v > best; /* branch-free: data-dependent */
                        nan |= v != v;
                        bi = gt ? h * W + w : bi;
                        best = gt ? v : best;
                    }
                for (int h = hs; nan && h < he; h++)
                    for (int w = ws; w < we; w++)
                        if (isnan(xp[h * W + w])) {
                            best = xp[h * W + w];
                            bi = h * W + w;
                            nan = 0;
                            break;
                        }
                yp[p * Q + q] = best;
                if (ip)
                    ip[p * Q + q] = bi;
            }
        }
    }
}

static void cpu_maxpool_backward(kb_backend *be, const void *dyv /* (N,C,P,Q) */,
                                 const int32_t *idx /* (N,C,P,Q) */, int N, int C, int H, int W,
                                 int P, int Q, void *dxv /* (N,C,H,W) */)
{
    kb_cpu *impl = kb_cpu_of(be);
    int nt = impl->threads;
    const float *dy = dyv;
    float *dx = dxv;
    const long planes = (long)N * C;
#pragma omp parallel for num_threads(nt) schedule(static) if (planes * H * W >= KB_CPU_PAR_MIN)
    for (long pl = 0; pl < planes; pl++) {
        float *xp = dx + pl * H * W;
        const float *dp = dy + pl * P * Q;
        const int32_t *ip = idx + pl * P * Q;
        memset(xp, 0, sizeof(float) * (size_t)H * W);
        for (int j = 0; j < P * Q; j++)
            xp[ip[j]] += dp[j];
    }
    if (impl->round_bf16) /* the CUDA backend's bf16 feature maps */
        kb_cpu_bf16_round(impl, dx, (size_t)planes * H * W);
}

static void cpu_avgpool_forward(kb_backend *be, const void *xv /* (N,C,HW) */, int N, int C,
                                int HW, float *y /* (N,C) */)
{
    int nt = kb_cpu_of(be)->threads;
    const float *x = xv;
    const long planes = (long)N * C;
#pragma omp parallel for num_threads(nt) schedule(static) if (planes * HW >= KB_CPU_PAR_MIN)
    for (long pl = 0; pl < planes; pl++)
        y[pl] = (float)(kb_cpu_sum(x + pl * HW, (size_t)HW) / HW);
}

static void cpu_avgpool_backward(kb_backend *be, const float *dy /* (N,C) */, int N, int C,
                                 int HW, void *dxv /* (N,C,HW) */)
{
    kb_cpu *impl = kb_cpu_of(be);
    int nt = impl->threads;
    float *dx = dxv;
    const long planes = (long)N * C;
#pragma omp parallel for num_threads(nt) schedule(static) if (planes * HW >= KB_CPU_PAR_MIN)
    for (long pl = 0; pl < planes; pl++) {
        float g = dy[pl] / (float)HW;
        float *xp = dx + pl * HW;
        for (int i = 0; i < HW; i++)
            xp[i] = g;
    }
    if (impl->round_bf16)
        kb_cpu_bf16_round(impl, dx, (size_t)planes * HW);
}

/* With round_bf16 (kb_cpu_emulate_rounding), as the CUDA backend's bf16 mode
 * (kernels/cuda/ops.cu): x, w and dy are rounded to bf16, the GEMMs run on
 * the rounded copies in fp32 into fp32 outputs (cublasGemmEx with bf16 A, B
 * and an fp32 C: y, dx and the dw += are not rounded), and the bias and its
 * gradient stay fp32 (from the unrounded dy). */
static void cpu_linear_forward(kb_backend *be, const float *x /* (N,I) */, int N, int I,
                               const float *w /* (O,I) */, const void *wm /* none here */,
                               const float *b /* (O) or NULL */, int O, float *y /* (N,O) */)
{
    kb_cpu *impl = kb_cpu_of(be);
    kb_cpu_set_blas_threads(impl);
    float *xr = NULL, *wr = NULL;
    if (impl->round_bf16) {
        xr = kb_cpu_bf16_copy(impl, x, (size_t)N * I);
        wr = kb_cpu_bf16_copy(impl, w, (size_t)O * I);
        KB_CPU_CHECK(xr && wr); /* test-only mode: no OOM path */
        x = xr;
        w = wr;
    }
    float beta = 0.0f;
    if (b) {
        for (int n = 0; n < N; n++)
            memcpy(y + (size_t)n * O, b, sizeof(float) * (size_t)O);
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, O, I, 1.0f, x, I, w, I, beta, y, O);
    free(xr);
    free(wr);
}

static void cpu_linear_backward(kb_backend *be, const float *x /* (N,I) */,
                                const float *w /* (O,I) */, const void *wm /* none here */,
                                const float *dy /* (N,O) */, int N,
                                int I, int O, float *dx /* (N,I) or NULL */,
                                float *dw /* (O,I), += */, float *db /* (O) or NULL, += */)
{
    kb_cpu *impl = kb_cpu_of(be);
    kb_cpu_set_blas_threads(impl);
    const float *dyr = dy; /* the GEMMs' dy; db sums the fp32 one */
    float *xr = NULL, *wr = NULL, *dyb = NULL;
    if (impl->round_bf16) {
        xr = kb_cpu_bf16_copy(impl, x, (size_t)N * I);
        wr = dx ? kb_cpu_bf16_copy(impl, w, (size_t)O * I) : NULL;
        dyb = kb_cpu_bf16_copy(impl, dy, (size_t)N * O);
        KB_CPU_CHECK(xr && dyb && (wr || !dx));
        x = xr;
        w = wr;
        dyr = dyb;
    }
    if (dx)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, I, O, 1.0f, dyr, O, w, I, 0.0f,
                    dx, I);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, O, I, N, 1.0f, dyr, O, x, I, 1.0f, dw, I);
    free(xr);
    free(wr);
    free(dyb);
    if (db) {
        for (int o = 0; o < O; o++) {
            double s = 0.0;
            for (int n = 0; n < N; n++)
                s += dy[(size_t)n * O + o];
            db[o] += (float)s;
        }
    }
}

void kb_cpu_emulate_rounding(kb_backend *cpu, kb_precision p)
{
    /* a CPU backend only: its linear layers are ours */
    KB_CPU_CHECK(cpu && cpu->linear_forward == cpu_linear_forward);
    KB_CPU_CHECK(p == KB_PREC_FP32 || p == KB_PREC_BF16);
    kb_cpu_of(cpu)->round_bf16 = p == KB_PREC_BF16;
}

void kb_cpu_jitter_sums(kb_backend *cpu, unsigned seed)
{
    KB_CPU_CHECK(cpu && cpu->linear_forward == cpu_linear_forward);
    kb_cpu_of(cpu)->jitter = seed;
    kb_cpu_of(cpu)->jitter_calls = 0;
}

void kb_cpu_ops_init(kb_backend *be)
{
    be->relu_forward = cpu_relu_forward;
    be->relu_backward = cpu_relu_backward;
    be->maxpool_forward = cpu_maxpool_forward;
    be->maxpool_backward = cpu_maxpool_backward;
    be->avgpool_forward = cpu_avgpool_forward;
    be->avgpool_backward = cpu_avgpool_backward;
    be->linear_forward = cpu_linear_forward;
    be->linear_backward = cpu_linear_backward;
}
