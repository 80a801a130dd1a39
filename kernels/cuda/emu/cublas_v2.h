/* Stand-in for cuBLAS (kernels/cuda/emu/run.sh): a column-major reference sgemm. */
#pragma once
#include "cuda_runtime.h"
typedef void *cublasHandle_t;
typedef int cublasStatus_t;
enum { CUBLAS_STATUS_SUCCESS = 0 };
typedef int cublasOperation_t;
enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum { CUBLAS_DEFAULT_MATH = 0, CUBLAS_TF32_TENSOR_OP_MATH = 3 };
typedef int cublasMath_t;
static inline const char *cublasGetStatusString(cublasStatus_t) { return "emu cublas error"; }
static inline cublasStatus_t cublasCreate(cublasHandle_t *h) { *h = (void *)1; return 0; }
static inline cublasStatus_t cublasDestroy(cublasHandle_t) { return 0; }
static inline cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return 0; }
static inline cublasStatus_t cublasSetMathMode(cublasHandle_t, int) { return 0; }
/* column-major reference */
static inline cublasStatus_t cublasSgemm(cublasHandle_t, int ta, int tb, int m, int n, int k,
                                         const float *al, const float *A, int lda, const float *B,
                                         int ldb, const float *be, float *C, int ldc)
{
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int l = 0; l < k; l++) {
                double a = ta ? A[l + (size_t)i * lda] : A[i + (size_t)l * lda];
                double b = tb ? B[j + (size_t)l * ldb] : B[l + (size_t)j * ldb];
                s += a * b;
            }
            float prior = *be != 0.0f ? C[i + (size_t)j * ldc] : 0.0f;
            C[i + (size_t)j * ldc] = (float)(*al * s + *be * prior);
        }
    return 0;
}
