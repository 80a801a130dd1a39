/* ReLU on rows, average pooling of feature maps (own kernels) and linear layers
 * (cuBLAS).
 *
 * Average pooling reads feature maps (NHWC in the math's type, channels
 * padded: cuda.h) into fp32 rows and back; the stem's max pool is the batch
 * norm's (norm.cu).
 *
 * Linear layers in BF16 mode: x and dy (fp32 rows) are cast to bf16 in
 * scratch, the weight read from its mirror (or cast too, without one), and
 * cublasGemmEx multiplies them with fp32 accumulation into fp32 outputs
 * (bf16 A and B with an fp32 C is in GemmEx's table), so y, dx and the dw
 * += stay fp32, as do the bias and its gradient. The scratch grows on the
 * first call of a size (not allowed inside a capture: run a step before
 * capturing one). */
#include "kernels/cuda/precision.h"

/* ---- kernels ---- */

__global__ void kb_relu_fwd_kernel(const float *x, float *y, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

__global__ void kb_relu_bwd_kernel(const float *y, const float *dy, float *dx, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

/* One thread per (n, c): the mean over the pixels, in double; y fp32 rows
 * (N, C). Consecutive threads read consecutive channels of a pixel. */
__global__ void kb_avgpool_fwd_kernel(const void *x, int bf16, long N, int C, int HW, int Cp,
                                      float *y)
{
    const size_t total = (size_t)N * C;
    for (size_t o = blockIdx.x * (size_t)blockDim.x + threadIdx.x; o < total;
         o += (size_t)gridDim.x * blockDim.x) {
        const size_t n = o / C, c = o - n * C;
        double s = 0.0;
        for (int i = 0; i < HW; i++)
            s += kb_elem(x, (n * HW + i) * Cp + c, bf16);
        y[o] = (float)(s / HW);
    }
}

__global__ void kb_avgpool_bwd_kernel(const float *dy, long N, int C, int HW, int Cp, void *dx,
                                      int bf16)
{
    const size_t total = (size_t)N * HW * Cp;
    for (size_t o = blockIdx.x * (size_t)blockDim.x + threadIdx.x; o < total;
         o += (size_t)gridDim.x * blockDim.x) {
        const int c = (int)(o % Cp);
        const size_t n = o / ((size_t)HW * Cp);
        kb_elem_set(dx, o, c < C ? dy[n * C + c] / (float)HW : 0.0f, bf16);
    }
}

/* y (N,O) rows = b */
__global__ void kb_bias_rows_kernel(const float *b, int N, int O, float *y)
{
    const size_t total = (size_t)N * O;
    for (size_t o = blockIdx.x * (size_t)blockDim.x + threadIdx.x; o < total;
         o += (size_t)gridDim.x * blockDim.x)
        y[o] = b[o % O];
}

/* db (O) += column sums of dy (N,O); one thread per column, rows in order. */
__global__ void kb_bias_grad_kernel(const float *dy, int N, int O, float *db)
{
    int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= O)
        return;
    double s = 0.0;
    for (int n = 0; n < N; n++)
        s += dy[(size_t)n * O + o];
    db[o] += (float)s;
}

/* ---- launchers ---- */

#define OPS_THREADS 256

static void cuda_relu_forward(kb_backend *be, const float *x, float *y, size_t n)
{
    kb_cuda *impl = kb_cuda_enter(be);
    if (!n)
        return;
    KB_CUDA_BYTES(8 * n); /* x read, y written */
    kb_relu_fwd_kernel<<<kb_cuda_blocks(impl, n, OPS_THREADS), OPS_THREADS, 0, impl->stream>>>(
        x, y, n);
    KB_CUDA_LAUNCHED();
}

static void cuda_relu_backward(kb_backend *be, const float *y, const float *dy, float *dx,
                               size_t n)
{
    kb_cuda *impl = kb_cuda_enter(be);
    if (!n)
        return;
    KB_CUDA_BYTES(12 * n); /* y, dy read, dx written */
    kb_relu_bwd_kernel<<<kb_cuda_blocks(impl, n, OPS_THREADS), OPS_THREADS, 0, impl->stream>>>(
        y, dy, dx, n);
    KB_CUDA_LAUNCHED();
}

static void cuda_avgpool_forward(kb_backend *be, const void *x /* (N,C,HW) */, int N, int C,
                                 int HW, float *y /* (N,C) */)
{
    kb_cuda *impl = kb_cuda_enter(be);
    const size_t n = (size_t)N * C;
    if (!n)
        return;
    KB_CUDA_BYTES(kb_cuda_fmap_bytes(impl, N, C, HW) + 4 * n); /* x read, y written */
    kb_avgpool_fwd_kernel<<<kb_cuda_blocks(impl, n, OPS_THREADS), OPS_THREADS, 0,
                            impl->stream>>>(x, impl->precision == KB_PREC_BF16, N, C, HW,
                                            kb_cuda_cpad(impl, C), y);
    KB_CUDA_LAUNCHED();
}

static void cuda_avgpool_backward(kb_backend *be, const float *dy /* (N,C) */, int N, int C,
                                  int HW, void *dx /* (N,C,HW) */)
{
    kb_cuda *impl = kb_cuda_enter(be);
    const int Cp = kb_cuda_cpad(impl, C);
    const size_t n = (size_t)N * HW * Cp;
    if (!n)
        return;
    KB_CUDA_BYTES(4 * (size_t)N * C + kb_cuda_fmap_bytes(impl, N, C, HW)); /* dy read, dx written */
    kb_avgpool_bwd_kernel<<<kb_cuda_blocks(impl, n, OPS_THREADS), OPS_THREADS, 0,
                            impl->stream>>>(dy, N, C, HW, Cp, dx,
                                            impl->precision == KB_PREC_BF16);
    KB_CUDA_LAUNCHED();
}

/* bf16 copies of up to three fp32 operands (n[i] floats each, src[i] NULL
 * to skip) in scratch; out[i] the copies. 0, or -1 inside a capture that
 * would need scratch to grow (the capture is then refused). */
static int bf16_copies(kb_cuda *impl, const float *const src[3], const size_t n[3], void *out[3])
{
    size_t off[3], total = 0;
    for (int i = 0; i < 3; i++) {
        off[i] = total;
        total += src[i] ? kb_cuda_align256(n[i] * 2) : 0;
    }
    if (total > impl->scratch_bytes && impl->capturing) {
        kb_cuda_capture_refuse(impl, "linear layer's bf16 scratch had to grow");
        return -1;
    }
    char *s = (char *)kb_cuda_scratch(impl, total);
    for (int i = 0; i < 3; i++) {
        out[i] = src[i] ? s + off[i] : NULL;
        if (src[i])
            kb_cuda_cast(impl, src[i], 0, out[i], 1, n[i]);
    }
    return 0;
}

/* C (fp32, column-major) = alpha op(A) op(B) + beta C on bf16 A and B */
static void gemm_bf16(kb_cuda *impl, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                      int k, const float *alpha, const void *A, int lda, const void *B, int ldb,
                      const float *beta, float *C, int ldc)
{
    KB_CUBLAS(cublasGemmEx(impl->cublas, ta, tb, m, n, k, alpha, A, CUDA_R_16BF, lda, B,
                           CUDA_R_16BF, ldb, beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                           CUBLAS_GEMM_DEFAULT_TENSOR_OP));
}

/* Row-major (R, C) is column-major (C, R): every row-major product below is
 * written as its transpose in cuBLAS's column-major terms. In fp32 modes a
 * linear weight's mirror is the weight itself. */
static void cuda_linear_forward(kb_backend *be, const float *x /* (N,I) */, int N, int I,
                                const float *w /* (O,I) */, const void *wm,
                                const float *b /* (O) or NULL */, int O, float *y /* (N,O) */)
{
    kb_cuda *impl = kb_cuda_enter(be);
    const float one = 1.0f;
    float beta = 0.0f;
    if (b) {
        size_t n = (size_t)N * O;
        KB_CUDA_BYTES(4 * (size_t)O + 4 * n); /* b read, y written */
        kb_bias_rows_kernel<<<kb_cuda_blocks(impl, n, OPS_THREADS), OPS_THREADS, 0,
                              impl->stream>>>(b, N, O, y);
        KB_CUDA_LAUNCHED();
        beta = 1.0f;
    }
    /* y^T (O,N) = w (O,I) . x^T (I,N): A = w stored (I,O) col-major -> op T */
    if (impl->precision == KB_PREC_BF16) {
        const float *src[3] = {wm ? NULL : w, x, NULL};
        const size_t n[3] = {(size_t)O * I, (size_t)N * I, 0};
        void *c[3];
        if (bf16_copies(impl, src, n, c) == 0)
            gemm_bf16(impl, CUBLAS_OP_T, CUBLAS_OP_N, O, N, I, &one, wm ? wm : c[0], I, c[1], I,
                      &beta, y, O);
        return;
    }
    KB_CUBLAS(cublasSgemm(impl->cublas, CUBLAS_OP_T, CUBLAS_OP_N, O, N, I, &one, w, I, x, I,
                          &beta, y, O));
}

static void cuda_linear_backward(kb_backend *be, const float *x /* (N,I) */,
                                 const float *w /* (O,I) */, const void *wm,
                                 const float *dy /* (N,O) */, int N, int I, int O,
                                 float *dx /* (N,I) or NULL */, float *dw /* (O,I), += */,
                                 float *db /* (O) or NULL, += */)
{
    kb_cuda *impl = kb_cuda_enter(be);
    const float one = 1.0f, zero = 0.0f;
    if (impl->precision == KB_PREC_BF16) {
        const float *src[3] = {dx && !wm ? w : NULL, dy, x};
        const size_t n[3] = {(size_t)O * I, (size_t)N * O, (size_t)N * I};
        void *c[3];
        if (bf16_copies(impl, src, n, c) == 0) {
            if (dx)
                gemm_bf16(impl, CUBLAS_OP_N, CUBLAS_OP_N, I, N, O, &one, wm ? wm : c[0], I, c[1],
                          O, &zero, dx, I);
            gemm_bf16(impl, CUBLAS_OP_N, CUBLAS_OP_T, I, O, N, &one, c[2], I, c[1], O, &one, dw,
                      I);
        }
    } else {
        /* dx^T (I,N) = w^T (I,O) . dy^T (O,N); w col-major is (I,O) already */
        if (dx)
            KB_CUBLAS(cublasSgemm(impl->cublas, CUBLAS_OP_N, CUBLAS_OP_N, I, N, O, &one, w, I,
                                  dy, O, &zero, dx, I));
        /* dw^T (I,O) += x^T (I,N) . dy (N,O); dy col-major is (O,N) -> op T */
        KB_CUBLAS(cublasSgemm(impl->cublas, CUBLAS_OP_N, CUBLAS_OP_T, I, O, N, &one, x, I, dy,
                              O, &one, dw, I));
    }
    if (db) {
        KB_CUDA_BYTES(4 * (size_t)N * O + 8 * (size_t)O); /* dy read, db updated */
        kb_bias_grad_kernel<<<(O + 127) / 128, 128, 0, impl->stream>>>(dy, N, O, db);
        KB_CUDA_LAUNCHED();
    }
}

void kb_cuda_ops_init(kb_backend *be)
{
    be->relu_forward = cuda_relu_forward;
    be->relu_backward = cuda_relu_backward;
    be->avgpool_forward = cuda_avgpool_forward;
    be->avgpool_backward = cuda_avgpool_backward;
    be->linear_forward = cuda_linear_forward;
    be->linear_backward = cuda_linear_backward;
}
