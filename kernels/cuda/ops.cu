/* ReLU on rows, pooling of feature maps (own kernels) and linear layers
 * (cuBLAS).
 *
 * Pooling reads and writes feature maps (NHWC in the math's type, channels
 * padded: cuda.h); a max pool's winner is its element's index in its (H,
 * W) plane, as the CPU's, stored in (N, P, Q, C) order: as many as y has
 * elements, the contract's size (no winners for the padding channels). Backward gathers
 * instead of scattering: each input element sums the gradients of the
 * windows that picked it, in the order the CPU backend adds them
 * (row-major over windows), so no atomics.
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

/* One thread per output element (n, p, q, c); the CPU's rules: only
 * in-bounds elements compete, the first maximum in row-major order wins, a
 * NaN wins. Padding channels are zeros in, zeros out; their winners are
 * not stored: idx is (N, P, Q, C), as many as y has elements. */
__global__ void kb_maxpool_fwd_kernel(const void *x, int bf16, long N, int H, int W, int C,
                                      int Cp, int k, int stride, int pad, int P, int Q, void *y,
                                      int32_t *idx)
{
    const size_t total = (size_t)N * P * Q * Cp;
    for (size_t o = blockIdx.x * (size_t)blockDim.x + threadIdx.x; o < total;
         o += (size_t)gridDim.x * blockDim.x) {
        const int c = (int)(o % Cp);
        const size_t pix = o / Cp, n = pix / ((size_t)P * Q);
        const int r = (int)(pix - n * P * Q), p = r / Q, q = r - p * Q;
        const size_t base = n * H * W;
        int h0 = p * stride - pad, w0 = q * stride - pad;
        int hs = h0 < 0 ? 0 : h0, he = h0 + k > H ? H : h0 + k;
        int ws = w0 < 0 ? 0 : w0, we = w0 + k > W ? W : w0 + k;
        float best = -INFINITY;
        int32_t bi = hs * W + ws;
        bool nan = false;
        for (int h = hs; h < he && !nan; h++)
            for (int w = ws; w < we; w++) {
                float v = kb_elem(x, (base + (size_t)h * W + w) * Cp + c, bf16);
                if (v != v) { /* first NaN wins */
                    best = v;
                    bi = h * W + w;
                    nan = true;
                    break;
                }
                if (v > best) {
                    best = v;
                    bi = h * W + w;
                }
            }
        kb_elem_set(y, o, best, bf16);
        if (idx && c < C)
            idx[pix * C + c] = bi;
    }
}

/* One thread per input element (n, h, w, c): windows (p, q) that contain
 * (h, w) are p in [ceil((h + pad - k + 1) / stride), floor((h + pad) /
 * stride)]; k = 0: window unknown, scan them all (a window whose max lies
 * elsewhere never matches, so extra candidates change nothing). */
__global__ void kb_maxpool_bwd_kernel(const void *dy, int bf16, const int32_t *idx, long N, int H,
                                      int W, int C, int Cp, int P, int Q, int k, int stride,
                                      int pad, void *dx)
{
    const size_t total = (size_t)N * H * W * Cp;
    for (size_t o = blockIdx.x * (size_t)blockDim.x + threadIdx.x; o < total;
         o += (size_t)gridDim.x * blockDim.x) {
        const int c = (int)(o % Cp);
        if (c >= C) { /* padding */
            kb_elem_set(dx, o, 0.0f, bf16);
            continue;
        }
        const size_t pix = o / Cp, n = pix / ((size_t)H * W);
        const int r = (int)(pix - n * H * W), h = r / W, w = r - h * W;
        int p0 = 0, q0 = 0, p1 = P - 1, q1 = Q - 1;
        if (k > 0) {
            int ph = h + pad - k + 1, pw = w + pad - k + 1;
            p0 = ph <= 0 ? 0 : (ph + stride - 1) / stride;
            q0 = pw <= 0 ? 0 : (pw + stride - 1) / stride;
            p1 = min((h + pad) / stride, P - 1);
            q1 = min((w + pad) / stride, Q - 1);
        }
        const size_t base = n * P * Q;
        float s = 0.0f;
        for (int p = p0; p <= p1; p++)
            for (int q = q0; q <= q1; q++) {
                const size_t j = base + (size_t)p * Q + q;
                if (idx[j * C + c] == r)
                    s += kb_elem(dy, j * Cp + c, bf16);
            }
        kb_elem_set(dx, o, s, bf16);
    }
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

static void cuda_maxpool_forward(kb_backend *be, const void *x /* (N,C,H,W) */, int N, int C,
                                 int H, int W, int k, int stride, int pad,
                                 void *y /* (N,C,P,Q) */, int32_t *idx /* or NULL */)
{
    kb_cuda *impl = kb_cuda_enter(be);
    const int P = (H + 2 * pad - k) / stride + 1;
    const int Q = (W + 2 * pad - k) / stride + 1;
    const int Cp = kb_cuda_cpad(impl, C), es = kb_cuda_esize(impl);
    const size_t n = (size_t)N * P * Q * Cp;
    if (!n)
        return;
    /* x read (each element by the windows holding it: ~once from L2), y and idx written */
    KB_CUDA_BYTES((size_t)es * N * H * W * Cp + es * n + (idx ? 4 * (size_t)N * P * Q * C : 0));
    kb_maxpool_fwd_kernel<<<kb_cuda_blocks(impl, n, OPS_THREADS), OPS_THREADS, 0,
                            impl->stream>>>(x, es == 2, N, H, W, C, Cp, k, stride, pad, P, Q, y,
                                            idx);
    KB_CUDA_LAUNCHED();
    if (!idx)
        return;
    const int nm = (int)(sizeof impl->pool_memo / sizeof impl->pool_memo[0]);
    int slot = -1;
    for (int i = 0; i < nm && slot < 0; i++)
        if (impl->pool_memo[i].idx == idx)
            slot = i;
    if (slot < 0) {
        slot = impl->pool_memo_next;
        impl->pool_memo_next = (slot + 1) % nm;
    }
    impl->pool_memo[slot].idx = idx;
    impl->pool_memo[slot].H = H;
    impl->pool_memo[slot].W = W;
    impl->pool_memo[slot].P = P;
    impl->pool_memo[slot].Q = Q;
    impl->pool_memo[slot].k = k;
    impl->pool_memo[slot].stride = stride;
    impl->pool_memo[slot].pad = pad;
}

static void cuda_maxpool_backward(kb_backend *be, const void *dy /* (N,C,P,Q) */,
                                  const int32_t *idx, int N, int C, int H, int W, int P, int Q,
                                  void *dx /* (N,C,H,W) */)
{
    kb_cuda *impl = kb_cuda_enter(be);
    const int Cp = kb_cuda_cpad(impl, C), es = kb_cuda_esize(impl);
    size_t n = (size_t)N * H * W * Cp;
    if (!n)
        return;
    /* The window forward recorded for this idx buffer; unknown (idx filled
     * elsewhere): k = 0, every window is a candidate (correct, slower). */
    int k = 0, stride = 1, pad = 0;
    for (int i = 0; i < (int)(sizeof impl->pool_memo / sizeof impl->pool_memo[0]); i++)
        if (impl->pool_memo[i].idx == idx && impl->pool_memo[i].H == H &&
            impl->pool_memo[i].W == W && impl->pool_memo[i].P == P &&
            impl->pool_memo[i].Q == Q) {
            k = impl->pool_memo[i].k;
            stride = impl->pool_memo[i].stride;
            pad = impl->pool_memo[i].pad;
            break;
        }
    const size_t np = (size_t)N * P * Q * Cp;
    KB_CUDA_BYTES(es * np + 4 * (size_t)N * P * Q * C + es * n); /* dy, idx read, dx written */
    kb_maxpool_bwd_kernel<<<kb_cuda_blocks(impl, n, OPS_THREADS), OPS_THREADS, 0,
                            impl->stream>>>(dy, es == 2, idx, N, H, W, C, Cp, P, Q, k, stride,
                                            pad, dx);
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
    be->maxpool_forward = cuda_maxpool_forward;
    be->maxpool_backward = cuda_maxpool_backward;
    be->avgpool_forward = cuda_avgpool_forward;
    be->avgpool_backward = cuda_avgpool_backward;
    be->linear_forward = cuda_linear_forward;
    be->linear_backward = cuda_linear_backward;
}
