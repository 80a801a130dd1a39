/* The math mode of convolutions and GEMMs (set_precision) and the kernels
 * that copy operands between fp32 NCHW (the interface's storage) and what
 * cuDNN and cuBLAS run on: bf16 and/or NHWC.
 *
 * A copy to bf16 is one pass over the operand anyway, so the NCHW -> NHWC
 * transpose rides along (kb_cuda_relayout does both in the same pass), and
 * the way back, bf16 -> fp32 and NHWC -> NCHW, is one pass as well, adding
 * into the destination for weight gradients (the contract's +=). */
#include <string.h>

#include <cuda_bf16.h>

#include "kernels/cuda/precision.h"

/* ---- kernels ---- */

static __device__ __forceinline__ float kb_ld(const void *p, size_t i, int bf16)
{
    return bf16 ? __bfloat162float(((const __nv_bfloat16 *)p)[i]) : ((const float *)p)[i];
}

static __device__ __forceinline__ void kb_st(void *p, size_t i, float v, int bf16, int acc)
{
    if (acc)
        v += kb_ld(p, i, bf16);
    if (bf16)
        ((__nv_bfloat16 *)p)[i] = __float2bfloat16(v);
    else
        ((float *)p)[i] = v;
}

__global__ void kb_relayout_copy_kernel(const void *src, int sb, void *dst, int db, size_t n,
                                        int acc)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        kb_st(dst, i, kb_ld(src, i, sb), db, acc);
}

/* 32x32 tiles through shared memory (one padding column against bank
 * conflicts), 256 threads as 8 rows of 32: reads along src rows and writes
 * along dst rows are both coalesced. blockIdx.x walks the tiles of one
 * matrix, blockIdx.y the matrices. */
#define KB_TILE 32
#define KB_TILE_THREADS 256
__global__ void kb_relayout_transpose_kernel(const void *src /* (B,R,S) */, int sb,
                                             void *dst /* (B,S,R) */, int db, long B, long R,
                                             long S, int acc)
{
    __shared__ float tile[KB_TILE][KB_TILE + 1];
    const int tx = threadIdx.x & (KB_TILE - 1), ty = threadIdx.x / KB_TILE;
    const long tiles_s = (S + KB_TILE - 1) / KB_TILE;
    const long tiles = tiles_s * ((R + KB_TILE - 1) / KB_TILE);
    for (long b = blockIdx.y; b < B; b += gridDim.y)
        for (long t = blockIdx.x; t < tiles; t += gridDim.x) {
            const long r0 = (t / tiles_s) * KB_TILE, s0 = (t % tiles_s) * KB_TILE;
            const size_t base = (size_t)b * R * S;
            for (int i = ty; i < KB_TILE; i += KB_TILE_THREADS / KB_TILE) {
                long r = r0 + i, s = s0 + tx;
                if (r < R && s < S)
                    tile[i][tx] = kb_ld(src, base + (size_t)r * S + s, sb);
            }
            __syncthreads();
            for (int i = ty; i < KB_TILE; i += KB_TILE_THREADS / KB_TILE) {
                long s = s0 + i, r = r0 + tx;
                if (r < R && s < S)
                    kb_st(dst, base + (size_t)s * R + r, tile[tx][i], db, acc);
            }
            __syncthreads(); /* the tile is refilled next round */
        }
}

/* ---- launchers ---- */

void kb_cuda_relayout(kb_cuda *impl, const void *src, int src_bf16, void *dst, int dst_bf16,
                      long B, long R, long S, int transpose, int accumulate)
{
    const size_t n = (size_t)B * R * S;
    if (!n)
        return;
    /* bytes: src read in its type, dst written in its type (and read when adding) */
    if (!transpose || R == 1 || S == 1) { /* a transpose of a vector is a copy */
        KB_CUDA_BYTES(n * ((src_bf16 ? 2 : 4) + (dst_bf16 ? 2 : 4) * (accumulate ? 2 : 1)));
        kb_relayout_copy_kernel<<<kb_cuda_blocks(impl, n, 256), 256, 0, impl->stream>>>(
            src, src_bf16, dst, dst_bf16, n, accumulate);
    } else {
        const long tiles = ((R + KB_TILE - 1) / KB_TILE) * ((S + KB_TILE - 1) / KB_TILE);
        const long cap = (long)impl->sms * 32;
        const unsigned gy = (unsigned)(B < 65535 ? B : 65535);
        long gx = (cap + gy - 1) / gy; /* about sms*32 blocks in all */
        if (gx > tiles)
            gx = tiles;
        if (gx < 1)
            gx = 1;
        dim3 grid((unsigned)gx, gy);
        KB_CUDA_BYTES(n * ((src_bf16 ? 2 : 4) + (dst_bf16 ? 2 : 4) * (accumulate ? 2 : 1)));
        kb_relayout_transpose_kernel<<<grid, KB_TILE_THREADS, 0, impl->stream>>>(
            src, src_bf16, dst, dst_bf16, B, R, S, accumulate);
    }
    KB_CUDA_LAUNCHED();
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
