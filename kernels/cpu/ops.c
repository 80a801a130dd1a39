/* ReLU on rows (plain C + OpenMP) and linear layers (OpenBLAS sgemm).
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
    be->linear_forward = cpu_linear_forward;
    be->linear_backward = cpu_linear_backward;
}
