/* Pooling on the CPU (plain C + OpenMP): the global average pool's ops,
 * and the max pool that the stem's batch norm ends in (norm.c, kb_bn.pool).
 * Each output element is computed by one thread in a fixed order: results
 * do not depend on the thread count. */
#include <math.h>
#include <string.h>

#include "kernels/cpu/cpu.h"

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

void kb_cpu_maxpool(kb_cpu *impl, const float *x /* (N,C,H,W) */, int N, int C, int H, int W,
                    int k, int stride, int pad, float *y /* (N,C,P,Q) */,
                    int32_t *idx /* (N,C,P,Q) or NULL */)
{
    int nt = impl->threads;
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

void kb_cpu_maxpool_grad(kb_cpu *impl, const float *dy /* (N,C,P,Q) */,
                         const int32_t *idx /* (N,C,P,Q) */, int N, int C, int H, int W, int P,
                         int Q, float *dx /* (N,C,H,W) */)
{
    int nt = impl->threads;
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


void kb_cpu_pool_init(kb_backend *be)
{
    be->avgpool_forward = cpu_avgpool_forward;
    be->avgpool_backward = cpu_avgpool_backward;
}
