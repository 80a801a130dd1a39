/* Stand-in for cuDNN's legacy API (kernels/cuda/emu/run.sh): naive convolutions that check their
 * descriptors: float or bf16 data, NCHW or NHWC, float compute. */
#pragma once
#include "cuda_runtime.h"
#include "cuda_bf16.h"
typedef void *cudnnHandle_t;
typedef int cudnnStatus_t;
enum { CUDNN_STATUS_SUCCESS = 0, CUDNN_STATUS_BAD_PARAM = 3, CUDNN_STATUS_NOT_SUPPORTED = 9, CUDNN_STATUS_ALLOC_FAILED = 2 };
typedef int cudnnMathType_t;
enum { CUDNN_DEFAULT_MATH = 0, CUDNN_TENSOR_OP_MATH = 1, CUDNN_FMA_MATH = 3 };
typedef int cudnnDeterminism_t;
enum { CUDNN_NON_DETERMINISTIC = 0, CUDNN_DETERMINISTIC = 1 };
/* The slice of cuDNN's enums we use, with cuDNN 9's values. */
typedef int cudnnTensorFormat_t, cudnnDataType_t;
enum { CUDNN_TENSOR_NCHW = 0, CUDNN_TENSOR_NHWC = 1 };
enum { CUDNN_DATA_FLOAT = 0, CUDNN_DATA_BFLOAT16 = 9 };
enum { CUDNN_CROSS_CORRELATION = 1 };
typedef int cudnnConvolutionFwdAlgo_t, cudnnConvolutionBwdDataAlgo_t, cudnnConvolutionBwdFilterAlgo_t;
enum { CUDNN_CONVOLUTION_FWD_ALGO_COUNT = 8, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT = 6, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT = 7 };
/* fmt: CUDNN_TENSOR_NCHW (a filter: KCRS) or CUDNN_TENSOR_NHWC (a filter:
 * KRSC); dt: CUDNN_DATA_FLOAT or CUDNN_DATA_BFLOAT16. */
struct emu_t4 { int n, c, h, w; int fmt, dt; };
struct emu_conv { int ph, pw, sh, sw, dh, dw, mode; int math; int compute; };
typedef emu_t4 *cudnnTensorDescriptor_t;
typedef emu_t4 *cudnnFilterDescriptor_t;
typedef emu_conv *cudnnConvolutionDescriptor_t;
#define EMU_PERF(name) struct name { int algo; cudnnStatus_t status; float time; size_t memory; cudnnDeterminism_t determinism; cudnnMathType_t mathType; int reserved[3]; }
EMU_PERF(cudnnConvolutionFwdAlgoPerf_t);
EMU_PERF(cudnnConvolutionBwdDataAlgoPerf_t);
EMU_PERF(cudnnConvolutionBwdFilterAlgoPerf_t);
static inline const char *cudnnGetErrorString(cudnnStatus_t s) { return s == 9 ? "CUDNN_STATUS_NOT_SUPPORTED" : s ? "emu cudnn error" : "ok"; }
static inline cudnnStatus_t cudnnCreate(cudnnHandle_t *h) { *h = (void *)1; return 0; }
static inline cudnnStatus_t cudnnDestroy(cudnnHandle_t) { return 0; }
static inline cudnnStatus_t cudnnSetStream(cudnnHandle_t, cudaStream_t) { return 0; }
static inline cudnnStatus_t cudnnCreateTensorDescriptor(emu_t4 **d) { *d = (emu_t4 *)calloc(1, sizeof(emu_t4)); return 0; }
static inline cudnnStatus_t cudnnCreateFilterDescriptor(emu_t4 **d) { *d = (emu_t4 *)calloc(1, sizeof(emu_t4)); return 0; }
static inline cudnnStatus_t cudnnDestroyTensorDescriptor(emu_t4 *d) { free(d); return 0; }
static inline cudnnStatus_t cudnnDestroyFilterDescriptor(emu_t4 *d) { free(d); return 0; }
static inline int emu_fmt_ok(int fmt) { return fmt == CUDNN_TENSOR_NCHW || fmt == CUDNN_TENSOR_NHWC; }
static inline int emu_dt_ok(int dt) { return dt == CUDNN_DATA_FLOAT || dt == CUDNN_DATA_BFLOAT16; }
static inline cudnnStatus_t cudnnSetTensor4dDescriptor(emu_t4 *d, int fmt, int dt, int n, int c, int h, int w) { if (!emu_fmt_ok(fmt) || !emu_dt_ok(dt) || n < 1 || c < 1 || h < 1 || w < 1) return 3; *d = {n, c, h, w, fmt, dt}; return 0; }
/* the filter's argument order is (data type, format), the tensor's (format, data type) */
static inline cudnnStatus_t cudnnSetFilter4dDescriptor(emu_t4 *d, int dt, int fmt, int k, int c, int h, int w) { if (!emu_fmt_ok(fmt) || !emu_dt_ok(dt) || k < 1 || c < 1 || h < 1 || w < 1) return 3; *d = {k, c, h, w, fmt, dt}; return 0; }
static inline cudnnStatus_t cudnnCreateConvolutionDescriptor(emu_conv **d) { *d = (emu_conv *)calloc(1, sizeof(emu_conv)); return 0; }
static inline cudnnStatus_t cudnnDestroyConvolutionDescriptor(emu_conv *d) { free(d); return 0; }
/* The compute type: float for float data and for bf16 data (cuDNN's
 * PSEUDO_BFLOAT16_CONFIG: bf16 tensors, float accumulation). */
static inline cudnnStatus_t cudnnSetConvolution2dDescriptor(emu_conv *d, int ph, int pw, int sh, int sw, int dh, int dw, int mode, int dt) { if (dt != CUDNN_DATA_FLOAT || mode != CUDNN_CROSS_CORRELATION) return 3; d->ph = ph; d->pw = pw; d->sh = sh; d->sw = sw; d->dh = dh; d->dw = dw; d->mode = mode; d->compute = dt; return 0; }
static inline cudnnStatus_t cudnnSetConvolutionMathType(emu_conv *d, int m) { d->math = m; return 0; }
static inline cudnnStatus_t cudnnGetConvolution2dForwardOutputDim(emu_conv *c, emu_t4 *x, emu_t4 *w, int *n, int *k, int *p, int *q) { *n = x->n; *k = w->n; *p = (x->h + 2 * c->ph - w->h) / c->sh + 1; *q = (x->w + 2 * c->pw - w->w) / c->sw + 1; return x->c == w->c ? 0 : 3; }
/* The configurations the emulated library runs: x, w and y of one data type
 * and one format, float compute. EMU_CUDNN_NO_BF16=1 makes every bf16
 * configuration unsupported (cudnnFind fails), EMU_CUDNN_NO_BF16_NCHW=1
 * only bf16 in NCHW (cudnnFind returns candidates that all failed): the two
 * ways a real cuDNN may decline, for the backend's fallbacks. */
static inline int emu_env(const char *v) { const char *e = getenv(v); return e && strcmp(e, "1") == 0; }
static inline cudnnStatus_t emu_config(const emu_t4 *x, const emu_t4 *w, const emu_conv *c, const emu_t4 *y)
{
    if (x->dt != w->dt || x->dt != y->dt || c->compute != CUDNN_DATA_FLOAT) return 9;
    if (x->fmt != w->fmt || x->fmt != y->fmt) return 9;
    if (x->dt == CUDNN_DATA_BFLOAT16 && emu_env("EMU_CUDNN_NO_BF16")) return 9;
    return 0;
}
template <class P> static inline cudnnStatus_t emu_find(const emu_t4 *x, const emu_t4 *w, const emu_conv *c, const emu_t4 *y, int *got, P *perf)
{
    if (cudnnStatus_t s = emu_config(x, w, c, y)) return s;
    *got = 2; perf[0] = {5, 0, 1.0f, 1024, CUDNN_NON_DETERMINISTIC, CUDNN_TENSOR_OP_MATH, {0}}; perf[1] = {1, 0, 2.0f, 512, CUDNN_DETERMINISTIC, CUDNN_DEFAULT_MATH, {0}};
    if (x->dt == CUDNN_DATA_BFLOAT16 && x->fmt == CUDNN_TENSOR_NCHW && emu_env("EMU_CUDNN_NO_BF16_NCHW")) perf[0].status = perf[1].status = 9;
    return 0;
}
static inline cudnnStatus_t cudnnFindConvolutionForwardAlgorithm(cudnnHandle_t, emu_t4 *x, emu_t4 *w, emu_conv *c, emu_t4 *y, int, int *got, cudnnConvolutionFwdAlgoPerf_t *p) { return emu_find(x, w, c, y, got, p); }
static inline cudnnStatus_t cudnnFindConvolutionBackwardDataAlgorithm(cudnnHandle_t, emu_t4 *w, emu_t4 *dy, emu_conv *c, emu_t4 *dx, int, int *got, cudnnConvolutionBwdDataAlgoPerf_t *p) { return emu_find(dx, w, c, dy, got, p); }
static inline cudnnStatus_t cudnnFindConvolutionBackwardFilterAlgorithm(cudnnHandle_t, emu_t4 *x, emu_t4 *dy, emu_conv *c, emu_t4 *dw, int, int *got, cudnnConvolutionBwdFilterAlgoPerf_t *p) { return emu_find(x, dw, c, dy, got, p); }
/* The workspace each direction (0 forward, 1 backward data, 2 backward
 * filter) asks for, whatever the algorithm; a call counts it in its bytes. */
static inline size_t emu_conv_ws(int dir) { return dir == 0 ? 1024 : 512; }
static inline cudnnStatus_t cudnnGetConvolutionForwardWorkspaceSize(cudnnHandle_t, emu_t4 *x, emu_t4 *w, emu_conv *c, emu_t4 *y, int, size_t *m) { *m = emu_conv_ws(0); return emu_config(x, w, c, y); }
static inline cudnnStatus_t cudnnGetConvolutionBackwardDataWorkspaceSize(cudnnHandle_t, emu_t4 *w, emu_t4 *dy, emu_conv *c, emu_t4 *dx, int, size_t *m) { *m = emu_conv_ws(1); return emu_config(dx, w, c, dy); }
static inline cudnnStatus_t cudnnGetConvolutionBackwardFilterWorkspaceSize(cudnnHandle_t, emu_t4 *x, emu_t4 *dy, emu_conv *c, emu_t4 *dw, int, size_t *m) { *m = emu_conv_ws(2); return emu_config(x, dw, c, dy); }
/* Element (n, c, h, w) of a tensor (or (k, c, r, s) of a filter) in its format. */
static inline size_t emu_at(const emu_t4 *d, int n, int c, int h, int w)
{
    if (d->fmt == CUDNN_TENSOR_NHWC) return (((size_t)n * d->h + h) * d->w + w) * d->c + c;
    return (((size_t)n * d->c + c) * d->h + h) * d->w + w;
}
static inline float emu_ld(const emu_t4 *d, const void *p, size_t i)
{
    return d->dt == CUDNN_DATA_BFLOAT16 ? __bfloat162float(((const __nv_bfloat16 *)p)[i]) : ((const float *)p)[i];
}
static inline void emu_st(const emu_t4 *d, void *p, size_t i, float v)
{
    if (d->dt == CUDNN_DATA_BFLOAT16) ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v);
    else ((float *)p)[i] = v;
}
/* Naive convolutions, checking the descriptors agree with each other. bf16
 * operands are exact in float and so are their products; sums in double
 * (closer than cuDNN's fp32 accumulation, which the tests' bounds allow
 * for); out = alpha*acc + beta*out, rounded to out's type. */
static inline cudnnStatus_t emu_conv_run(int dir, const float *al, emu_t4 *xd, const void *x, emu_t4 *wd, const void *w, emu_conv *c, emu_t4 *yd, const void *y, const float *be, void *out, size_t wsb, void *ws)
{
    int N = xd->n, C = xd->c, H = xd->h, W = xd->w, K = wd->n, R = wd->h, S = wd->w, P = yd->h, Q = yd->w;
    if (wd->c != C || yd->n != N || yd->c != K || c->sh != c->sw || c->ph != c->pw || !ws || wsb < 1024) { fprintf(stderr, "emu conv: bad descriptors\n"); abort(); }
    if (emu_config(xd, wd, c, yd) != 0) { fprintf(stderr, "emu conv: unsupported configuration (x %d/%d, w %d/%d, y %d/%d format/type, compute %d)\n", xd->fmt, xd->dt, wd->fmt, wd->dt, yd->fmt, yd->dt, c->compute); return 9; }
    const emu_t4 *od = dir == 0 ? yd : dir == 1 ? xd : wd;
    size_t nout = dir == 0 ? (size_t)N * K * P * Q : dir == 1 ? (size_t)N * C * H * W : (size_t)K * C * R * S;
    double *acc = (double *)calloc(nout, sizeof(double));
    const int tf32 = emu_tf32_on() && c->math != CUDNN_FMA_MATH && xd->dt == CUDNN_DATA_FLOAT;
#define emu_ld(d, p, i) (tf32 ? emu_tf32(emu_ld(d, p, i)) : emu_ld(d, p, i))
    for (int n = 0; n < N; n++) for (int k = 0; k < K; k++) for (int p = 0; p < P; p++) for (int q = 0; q < Q; q++)
        for (int ch = 0; ch < C; ch++) for (int r = 0; r < R; r++) for (int s = 0; s < S; s++) {
            int h = p * c->sh - c->ph + r, ww = q * c->sw - c->pw + s;
            if (h < 0 || h >= H || ww < 0 || ww >= W) continue;
            size_t xi = emu_at(xd, n, ch, h, ww), wi = emu_at(wd, k, ch, r, s), yi = emu_at(yd, n, k, p, q);
            if (dir == 0) acc[yi] += (double)emu_ld(xd, x, xi) * emu_ld(wd, w, wi);
            else if (dir == 1) acc[xi] += (double)emu_ld(yd, y, yi) * emu_ld(wd, w, wi);
            else acc[wi] += (double)emu_ld(xd, x, xi) * emu_ld(yd, y, yi);
        }
#undef emu_ld
    for (size_t i = 0; i < nout; i++) emu_st(od, out, i, (float)(*al * acc[i] + (*be != 0 ? *be * emu_ld(od, out, i) : 0.0f)));
    free(acc);
    return 0;
}
/* Recorded like every stream op (emu_enqueue_op); alpha and beta are host
 * scalars (float for float and bf16 data) read at call time, as cuDNN does.
 * An unsupported configuration fails the call, as the library's does.
 * Bytes (tools/step-cost): x, w and y in their types, the output once more
 * when beta != 0 (it is read), and the direction's workspace. */
static inline double emu_t4_bytes(const emu_t4 *d) { return (double)d->n * d->c * d->h * d->w * (d->dt == CUDNN_DATA_BFLOAT16 ? 2 : 4); }
static inline cudnnStatus_t emu_conv_enqueue(int dir, const void *al, emu_t4 *xd, const void *x, emu_t4 *wd, const void *w, emu_conv *c, emu_t4 *yd, const void *y, const void *be, void *out, size_t wsb, void *ws)
{
    if (cudnnStatus_t s = emu_config(xd, wd, c, yd)) return s;
    float a = *(const float *)al, b = *(const float *)be;
    emu_t4 X = *xd, Wd = *wd, Y = *yd;
    emu_conv C = *c;
    static const char *const names[3] = {"cudnnConvolutionForward", "cudnnConvolutionBackwardData", "cudnnConvolutionBackwardFilter"};
    const emu_t4 *od = dir == 0 ? yd : dir == 1 ? xd : wd;
    const double bytes = emu_t4_bytes(xd) + emu_t4_bytes(wd) + emu_t4_bytes(yd) + (b != 0 ? emu_t4_bytes(od) : 0) + (double)emu_conv_ws(dir);
    emu_enqueue_op(names[dir], bytes, [=]() mutable { emu_conv_run(dir, &a, &X, x, &Wd, w, &C, &Y, y, &b, out, wsb, ws); });
    return 0;
}
static inline cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t, const void *al, emu_t4 *xd, const void *x, emu_t4 *wd, const void *w, emu_conv *c, int, void *ws, size_t wsb, const void *be, emu_t4 *yd, void *y) { return emu_conv_enqueue(0, al, xd, x, wd, w, c, yd, NULL, be, y, wsb, ws); }
static inline cudnnStatus_t cudnnConvolutionBackwardData(cudnnHandle_t, const void *al, emu_t4 *wd, const void *w, emu_t4 *yd, const void *dy, emu_conv *c, int, void *ws, size_t wsb, const void *be, emu_t4 *xd, void *dx) { return emu_conv_enqueue(1, al, xd, NULL, wd, w, c, yd, dy, be, dx, wsb, ws); }
static inline cudnnStatus_t cudnnConvolutionBackwardFilter(cudnnHandle_t, const void *al, emu_t4 *xd, const void *x, emu_t4 *yd, const void *dy, emu_conv *c, int, void *ws, size_t wsb, const void *be, emu_t4 *wd, void *dw) { return emu_conv_enqueue(2, al, xd, x, wd, NULL, c, yd, dy, be, dw, wsb, ws); }
