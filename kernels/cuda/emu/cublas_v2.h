/* Stand-in for cuBLAS (kernels/cuda/emu/run.sh): a column-major reference sgemm, and GemmEx
 * for float or bf16 A and B with float compute. */
#pragma once
#include "cuda_runtime.h"
#include "cuda_bf16.h"
typedef void *cublasHandle_t;
typedef int cublasStatus_t;
enum { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_INVALID_VALUE = 7, CUBLAS_STATUS_INTERNAL_ERROR = 14, CUBLAS_STATUS_NOT_SUPPORTED = 15 };
typedef int cublasOperation_t;
enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum { CUBLAS_DEFAULT_MATH = 0, CUBLAS_TF32_TENSOR_OP_MATH = 3 };
typedef int cublasMath_t;
static inline const char *cublasGetStatusString(cublasStatus_t s) { return s == 15 ? "CUBLAS_STATUS_NOT_SUPPORTED" : s == 7 ? "CUBLAS_STATUS_INVALID_VALUE" : s == 14 ? "CUBLAS_STATUS_INTERNAL_ERROR" : "emu cublas error"; }
static inline cublasStatus_t cublasCreate(cublasHandle_t *h) { *h = (void *)1; return 0; }
static inline cublasStatus_t cublasDestroy(cublasHandle_t) { return 0; }
static inline cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return 0; }
static int emu_cublas_math; /* one handle per process in the suites */
static inline cublasStatus_t cublasSetMathMode(cublasHandle_t, int m) { emu_cublas_math = m; return 0; }
/* column-major reference */
static inline void emu_sgemm(cublasHandle_t, int ta, int tb, int m, int n, int k,
                                         const float *al, const float *A, int lda, const float *B,
                                         int ldb, const float *be, float *C, int ldc)
{
    const int tf32 = emu_tf32_on() && emu_cublas_math == CUBLAS_TF32_TENSOR_OP_MATH;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int l = 0; l < k; l++) {
                float fa = ta ? A[l + (size_t)i * lda] : A[i + (size_t)l * lda];
                float fb = tb ? B[j + (size_t)l * ldb] : B[l + (size_t)j * ldb];
                double a = tf32 ? emu_tf32(fa) : fa, b = tf32 ? emu_tf32(fb) : fb;
                s += a * b;
            }
            float prior = *be != 0.0f ? C[i + (size_t)j * ldc] : 0.0f;
            C[i + (size_t)j * ldc] = (float)(*al * s + *be * prior);
        }
}
/* recorded like every stream op; alpha and beta read at call time */
/* EMU_CUBLAS_NO_CAPTURE=1: the GEMM refuses to be captured, as a library
 * that waits or allocates would (the capture is invalidated). */
static inline int emu_cublas_refuses_capture(void)
{
    if (emu_capture_state() == cudaStreamCaptureStatusNone || !getenv("EMU_CUBLAS_NO_CAPTURE"))
        return 0;
    emu_capture_invalidate();
    return 1;
}
static inline cublasStatus_t cublasSgemm(cublasHandle_t h, int ta, int tb, int m, int n, int k,
                                         const float *al, const float *A, int lda, const float *B,
                                         int ldb, const float *be, float *C, int ldc)
{
    if (emu_cublas_refuses_capture())
        return CUBLAS_STATUS_INTERNAL_ERROR;
    float a = *al, b = *be;
    /* bytes: A (m x k), B (k x n) and C (m x n) read, C written */
    const double bytes = 4.0 * ((double)m * k + (double)k * n + (double)m * n * (b != 0 ? 2 : 1));
    emu_enqueue_op("cublasSgemm", bytes, [=] { emu_sgemm(h, ta, tb, m, n, k, &a, A, lda, B, ldb, &b, C, ldc); });
    return 0;
}
static inline cublasStatus_t cublasSetWorkspace(cublasHandle_t, void *, size_t) { return 0; }
/* GemmEx: library_types.h's and cublas_api.h's values. */
typedef int cudaDataType_t, cudaDataType;
enum { CUDA_R_32F = 0, CUDA_R_16BF = 14 };
typedef int cublasComputeType_t;
enum { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_FAST_16BF = 75, CUBLAS_COMPUTE_32F_FAST_TF32 = 77 };
typedef int cublasGemmAlgo_t;
enum { CUBLAS_GEMM_DEFAULT = -1, CUBLAS_GEMM_DEFAULT_TENSOR_OP = 99 };
static inline double emu_ldx(int t, const void *p, size_t i)
{
    return t == CUDA_R_16BF ? __bfloat162float(((const __nv_bfloat16 *)p)[i]) : ((const float *)p)[i];
}
/* The combinations of cuBLAS's GemmEx table we accept (float compute, float
 * alpha/beta): A and B both float or both bf16; C float, or bf16 with bf16
 * A and B. Anything else is CUBLAS_STATUS_NOT_SUPPORTED, as in the library. */
static inline cublasStatus_t cublasGemmEx(cublasHandle_t, int ta, int tb, int m, int n, int k,
                                          const void *al, const void *A, cudaDataType_t at, int lda,
                                          const void *B, cudaDataType_t bt, int ldb, const void *be,
                                          void *C, cudaDataType_t ct, int ldc,
                                          cublasComputeType_t comp, cublasGemmAlgo_t)
{
    if (comp != CUBLAS_COMPUTE_32F && comp != CUBLAS_COMPUTE_32F_FAST_16BF && comp != CUBLAS_COMPUTE_32F_FAST_TF32)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if ((at != CUDA_R_32F && at != CUDA_R_16BF) || bt != at || (ct != CUDA_R_32F && ct != at))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (m < 0 || n < 0 || k < 0 || lda < (ta ? k : m) || ldb < (tb ? n : k) || ldc < m)
        return CUBLAS_STATUS_INVALID_VALUE;
    float a = *(const float *)al, b = *(const float *)be;
    const double es_a = at == CUDA_R_16BF ? 2 : 4, es_c = ct == CUDA_R_16BF ? 2 : 4;
    const double bytes = es_a * ((double)m * k + (double)k * n) + es_c * (double)m * n * (b != 0 ? 2 : 1);
    emu_enqueue_op("cublasGemmEx", bytes, [=] {
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                double s = 0;
                for (int l = 0; l < k; l++)
                    s += emu_ldx(at, A, ta ? l + (size_t)i * lda : i + (size_t)l * lda) *
                         emu_ldx(bt, B, tb ? j + (size_t)l * ldb : l + (size_t)j * ldb);
                size_t ci = i + (size_t)j * ldc;
                float prior = b != 0.0f ? (float)emu_ldx(ct, C, ci) : 0.0f;
                float v = (float)(a * s + b * prior);
                if (ct == CUDA_R_16BF) ((__nv_bfloat16 *)C)[ci] = __float2bfloat16_rn(v);
                else ((float *)C)[ci] = v;
            }
    });
    return 0;
}
