/* The math mode (set_precision), the feature-map format's host side
 * (fmap_bytes, fmap_upload, fmap_download) and the conversions between the
 * interface's forms and cuDNN's: casts, weights to KRSC and back. */
#include <string.h>

#include "kernels/cuda/precision.h"

#define LAYOUT_THREADS 256

/* ---- kernels ---- */

__global__ void kb_cast_kernel(const void *src, int sb, void *dst, int db, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        kb_elem_set(dst, i, kb_elem(src, i, sb), db);
}

/* fp32 NCHW (N, C, HW) -> NHWC (N, HW, Cp): one thread per destination
 * element, so the padding is written too. */
__global__ void kb_fmap_pack_kernel(const float *src, long N, int C, long HW, int Cp, void *dst,
                                    int bf16)
{
    const size_t total = (size_t)N * HW * Cp;
    for (size_t o = blockIdx.x * (size_t)blockDim.x + threadIdx.x; o < total;
         o += (size_t)gridDim.x * blockDim.x) {
        const int c = (int)(o % Cp);
        const size_t pix = o / Cp, n = pix / HW, i = pix - n * HW;
        kb_elem_set(dst, o, c < C ? src[(n * C + c) * HW + i] : 0.0f, bf16);
    }
}

__global__ void kb_fmap_unpack_kernel(const void *src, int bf16, long N, int C, long HW, int Cp,
                                      float *dst)
{
    const size_t total = (size_t)N * C * HW;
    for (size_t o = blockIdx.x * (size_t)blockDim.x + threadIdx.x; o < total;
         o += (size_t)gridDim.x * blockDim.x) {
        const size_t i = o % HW, nc = o / HW, c = nc % C, n = nc / C;
        dst[o] = kb_elem(src, (n * HW + i) * Cp + c, bf16);
    }
}

/* (K, C, RS) fp32 -> (Kp, RS, Cp): one thread per destination element;
 * round: bf16 values (in whatever dst holds). */
__global__ void kb_weight_pack_kernel(const float *w, int K, int C, int RS, int Kp, int Cp,
                                      void *dst, int bf16, int round)
{
    const size_t total = (size_t)Kp * RS * Cp;
    for (size_t o = blockIdx.x * (size_t)blockDim.x + threadIdx.x; o < total;
         o += (size_t)gridDim.x * blockDim.x) {
        const int c = (int)(o % Cp);
        const size_t kr = o / Cp;
        const int rs = (int)(kr % RS), k = (int)(kr / RS);
        float v = k < K && c < C ? w[((size_t)k * C + c) * RS + rs] : 0.0f;
        if (round)
            v = kb_bf16_to_f(kb_f_to_bf16(v));
        kb_elem_set(dst, o, v, bf16);
    }
}

/* dw (K, C, RS) += g (Kp, RS, Cp): one thread per dw element. */
__global__ void kb_weight_grad_add_kernel(const void *g, int bf16, int K, int C, int RS, int Cp,
                                          float *dw)
{
    const size_t total = (size_t)K * C * RS;
    for (size_t o = blockIdx.x * (size_t)blockDim.x + threadIdx.x; o < total;
         o += (size_t)gridDim.x * blockDim.x) {
        const int rs = (int)(o % RS);
        const size_t kc = o / RS;
        const int c = (int)(kc % C), k = (int)(kc / C);
        dw[o] += kb_elem(g, ((size_t)k * RS + rs) * Cp + c, bf16);
    }
}

/* ---- launchers ---- */

void kb_cuda_cast(kb_cuda *impl, const void *src, int src_bf16, void *dst, int dst_bf16, size_t n)
{
    if (!n)
        return;
    KB_CUDA_BYTES(n * ((src_bf16 ? 2 : 4) + (dst_bf16 ? 2 : 4)));
    kb_cast_kernel<<<kb_cuda_blocks(impl, n, LAYOUT_THREADS), LAYOUT_THREADS, 0, impl->stream>>>(
        src, src_bf16, dst, dst_bf16, n);
    KB_CUDA_LAUNCHED();
}

void kb_cuda_weight_pack(kb_cuda *impl, const float *w, int K, int C, int RS, int Kp, int Cp,
                         void *dst, int dst_bf16, int round_bf16)
{
    const size_t n = (size_t)Kp * RS * Cp;
    KB_CUDA_BYTES(4 * (size_t)K * C * RS + (dst_bf16 ? 2 : 4) * n); /* w read, the copy written */
    kb_weight_pack_kernel<<<kb_cuda_blocks(impl, n, LAYOUT_THREADS), LAYOUT_THREADS, 0,
                            impl->stream>>>(w, K, C, RS, Kp, Cp, dst, dst_bf16,
                                            round_bf16 && !dst_bf16);
    KB_CUDA_LAUNCHED();
}

void kb_cuda_weight_grad_add(kb_cuda *impl, const void *g, int g_bf16, int K, int C, int RS,
                             int Cp, float *dw)
{
    const size_t n = (size_t)K * C * RS;
    KB_CUDA_BYTES((g_bf16 ? 2 : 4) * n + 8 * n); /* g read (not its padding), dw read and written */
    kb_weight_grad_add_kernel<<<kb_cuda_blocks(impl, n, LAYOUT_THREADS), LAYOUT_THREADS, 0,
                                impl->stream>>>(g, g_bf16, K, C, RS, Cp, dw);
    KB_CUDA_LAUNCHED();
}

static size_t cuda_fmap_bytes(kb_backend *be, int N, int C, int H, int W)
{
    return kb_cuda_fmap_bytes(kb_cuda_of(be), N, C, (long)H * W);
}

/* Through scratch: the host's NCHW floats go up as they are, then one pass
 * lays them out. */
static void cuda_fmap_upload(kb_backend *be, void *dst, const float *src, int N, int C, int H,
                             int W)
{
    kb_cuda *impl = kb_cuda_enter(be);
    if (kb_cuda_capture_refuse(impl, "upload inside a capture"))
        return;
    const long HW = (long)H * W;
    const size_t n = (size_t)N * C * HW, nd = (size_t)N * HW * kb_cuda_cpad(impl, C);
    if (!nd)
        return;
    float *stage = (float *)kb_cuda_scratch(impl, n * sizeof(float));
    KB_CUDA(cudaMemcpyAsync(stage, src, n * sizeof(float), cudaMemcpyHostToDevice, impl->stream));
    KB_CUDA_BYTES(4 * n + kb_cuda_esize(impl) * nd);
    kb_fmap_pack_kernel<<<kb_cuda_blocks(impl, nd, LAYOUT_THREADS), LAYOUT_THREADS, 0,
                          impl->stream>>>(stage, N, C, HW, kb_cuda_cpad(impl, C), dst,
                                          impl->precision == KB_PREC_BF16);
    KB_CUDA_LAUNCHED();
}

static void cuda_fmap_download(kb_backend *be, float *dst, const void *src, int N, int C, int H,
                               int W)
{
    kb_cuda *impl = kb_cuda_enter(be);
    if (kb_cuda_capture_refuse(impl, "download inside a capture"))
        return;
    const long HW = (long)H * W;
    const size_t n = (size_t)N * C * HW;
    if (!n)
        return;
    float *stage = (float *)kb_cuda_scratch(impl, n * sizeof(float));
    KB_CUDA_BYTES(4 * n + kb_cuda_esize(impl) * n);
    kb_fmap_unpack_kernel<<<kb_cuda_blocks(impl, n, LAYOUT_THREADS), LAYOUT_THREADS, 0,
                            impl->stream>>>(src, impl->precision == KB_PREC_BF16, N, C, HW,
                                            kb_cuda_cpad(impl, C), stage);
    KB_CUDA_LAUNCHED();
    KB_CUDA(cudaMemcpyAsync(dst, stage, n * sizeof(float), cudaMemcpyDeviceToHost, impl->stream));
    KB_CUDA(cudaStreamSynchronize(impl->stream));
}

kb_precision kb_cuda_set_precision(kb_backend *be, kb_precision p)
{
    kb_cuda *impl = kb_cuda_enter(be);
    if (p != KB_PREC_TF32 && p != KB_PREC_FP32 && p != KB_PREC_BF16)
        return impl->precision;
    if (p == KB_PREC_BF16) {
        /* bf16 tensor cores (and cuDNN's bf16 convolutions) start with
         * Ampere, compute capability 8.0. */
        cudaDeviceProp prop;
        KB_CUDA(cudaGetDeviceProperties(&prop, impl->device));
        if (prop.major < 8) {
            static int told;
            if (!told++)
                fprintf(stderr,
                        "cuda: bf16 needs compute capability 8.0+, GPU %d (%s) is %d.%d: "
                        "keeping %s\n",
                        impl->device, prop.name, prop.major, prop.minor,
                        impl->precision == KB_PREC_FP32 ? "fp32" : "tf32");
            return impl->precision;
        }
    }
    /* TF32 for fp32 operands in TF32 mode and, in BF16 mode, for whatever
     * stays fp32 (a convolution cuDNN runs in no bf16 configuration). Full
     * fp32 only in FP32 mode. GemmEx on bf16 operands uses the tensor cores
     * whatever this mode says. */
    impl->tf32 = p != KB_PREC_FP32;
    KB_CUBLAS(cublasSetMathMode(impl->cublas,
                                impl->tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    impl->precision = p;
    return p;
}

void kb_cuda_fmap_init(kb_backend *be)
{
    be->fmap_bytes = cuda_fmap_bytes;
    be->fmap_upload = cuda_fmap_upload;
    be->fmap_download = cuda_fmap_download;
}
