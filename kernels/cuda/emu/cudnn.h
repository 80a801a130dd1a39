/* Stand-in for cuDNN's legacy API (kernels/cuda/emu/run.sh): naive convolutions that check their descriptors. */
#pragma once
#include "cuda_runtime.h"
typedef void *cudnnHandle_t;
typedef int cudnnStatus_t;
enum { CUDNN_STATUS_SUCCESS = 0, CUDNN_STATUS_BAD_PARAM = 3, CUDNN_STATUS_NOT_SUPPORTED = 9, CUDNN_STATUS_ALLOC_FAILED = 2 };
typedef int cudnnMathType_t;
enum { CUDNN_DEFAULT_MATH = 0, CUDNN_TENSOR_OP_MATH = 1, CUDNN_FMA_MATH = 3 };
typedef int cudnnDeterminism_t;
enum { CUDNN_NON_DETERMINISTIC = 0, CUDNN_DETERMINISTIC = 1 };
enum { CUDNN_TENSOR_NCHW = 0 };
enum { CUDNN_DATA_FLOAT = 0 };
enum { CUDNN_CROSS_CORRELATION = 1 };
typedef int cudnnConvolutionFwdAlgo_t, cudnnConvolutionBwdDataAlgo_t, cudnnConvolutionBwdFilterAlgo_t;
enum { CUDNN_CONVOLUTION_FWD_ALGO_COUNT = 8, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT = 6, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT = 7 };
struct emu_t4 { int n, c, h, w; };
struct emu_conv { int ph, pw, sh, sw, dh, dw, mode; int math; };
typedef emu_t4 *cudnnTensorDescriptor_t;
typedef emu_t4 *cudnnFilterDescriptor_t;
typedef emu_conv *cudnnConvolutionDescriptor_t;
#define EMU_PERF(name) struct name { int algo; cudnnStatus_t status; float time; size_t memory; cudnnDeterminism_t determinism; cudnnMathType_t mathType; int reserved[3]; }
EMU_PERF(cudnnConvolutionFwdAlgoPerf_t);
EMU_PERF(cudnnConvolutionBwdDataAlgoPerf_t);
EMU_PERF(cudnnConvolutionBwdFilterAlgoPerf_t);
static inline const char *cudnnGetErrorString(cudnnStatus_t s) { return s ? "emu cudnn error" : "ok"; }
static inline cudnnStatus_t cudnnCreate(cudnnHandle_t *h) { *h = (void *)1; return 0; }
static inline cudnnStatus_t cudnnDestroy(cudnnHandle_t) { return 0; }
static inline cudnnStatus_t cudnnSetStream(cudnnHandle_t, cudaStream_t) { return 0; }
static inline cudnnStatus_t cudnnCreateTensorDescriptor(emu_t4 **d) { *d = (emu_t4 *)calloc(1, sizeof(emu_t4)); return 0; }
static inline cudnnStatus_t cudnnCreateFilterDescriptor(emu_t4 **d) { *d = (emu_t4 *)calloc(1, sizeof(emu_t4)); return 0; }
static inline cudnnStatus_t cudnnDestroyTensorDescriptor(emu_t4 *d) { free(d); return 0; }
static inline cudnnStatus_t cudnnDestroyFilterDescriptor(emu_t4 *d) { free(d); return 0; }
static inline cudnnStatus_t cudnnSetTensor4dDescriptor(emu_t4 *d, int fmt, int dt, int n, int c, int h, int w) { if (fmt != CUDNN_TENSOR_NCHW || dt != 0 || n < 1 || c < 1 || h < 1 || w < 1) return 3; *d = {n, c, h, w}; return 0; }
static inline cudnnStatus_t cudnnSetFilter4dDescriptor(emu_t4 *d, int dt, int fmt, int k, int c, int h, int w) { if (fmt != CUDNN_TENSOR_NCHW || dt != 0) return 3; *d = {k, c, h, w}; return 0; }
static inline cudnnStatus_t cudnnCreateConvolutionDescriptor(emu_conv **d) { *d = (emu_conv *)calloc(1, sizeof(emu_conv)); return 0; }
static inline cudnnStatus_t cudnnDestroyConvolutionDescriptor(emu_conv *d) { free(d); return 0; }
static inline cudnnStatus_t cudnnSetConvolution2dDescriptor(emu_conv *d, int ph, int pw, int sh, int sw, int dh, int dw, int mode, int dt) { if (dt != 0 || mode != CUDNN_CROSS_CORRELATION) return 3; d->ph = ph; d->pw = pw; d->sh = sh; d->sw = sw; d->dh = dh; d->dw = dw; d->mode = mode; return 0; }
static inline cudnnStatus_t cudnnSetConvolutionMathType(emu_conv *d, int m) { d->math = m; return 0; }
static inline cudnnStatus_t cudnnGetConvolution2dForwardOutputDim(emu_conv *c, emu_t4 *x, emu_t4 *w, int *n, int *k, int *p, int *q) { *n = x->n; *k = w->n; *p = (x->h + 2 * c->ph - w->h) / c->sh + 1; *q = (x->w + 2 * c->pw - w->w) / c->sw + 1; return x->c == w->c ? 0 : 3; }
template <class P> static inline cudnnStatus_t emu_find(int *got, P *perf) { *got = 2; perf[0] = {5, 0, 1.0f, 1024, CUDNN_NON_DETERMINISTIC, CUDNN_TENSOR_OP_MATH, {0}}; perf[1] = {1, 0, 2.0f, 512, CUDNN_DETERMINISTIC, CUDNN_DEFAULT_MATH, {0}}; return 0; }
static inline cudnnStatus_t cudnnFindConvolutionForwardAlgorithm(cudnnHandle_t, emu_t4 *, emu_t4 *, emu_conv *, emu_t4 *, int, int *got, cudnnConvolutionFwdAlgoPerf_t *p) { return emu_find(got, p); }
static inline cudnnStatus_t cudnnFindConvolutionBackwardDataAlgorithm(cudnnHandle_t, emu_t4 *, emu_t4 *, emu_conv *, emu_t4 *, int, int *got, cudnnConvolutionBwdDataAlgoPerf_t *p) { return emu_find(got, p); }
static inline cudnnStatus_t cudnnFindConvolutionBackwardFilterAlgorithm(cudnnHandle_t, emu_t4 *, emu_t4 *, emu_conv *, emu_t4 *, int, int *got, cudnnConvolutionBwdFilterAlgoPerf_t *p) { return emu_find(got, p); }
static inline cudnnStatus_t cudnnGetConvolutionForwardWorkspaceSize(cudnnHandle_t, emu_t4 *, emu_t4 *, emu_conv *, emu_t4 *, int, size_t *m) { *m = 1024; return 0; }
static inline cudnnStatus_t cudnnGetConvolutionBackwardDataWorkspaceSize(cudnnHandle_t, emu_t4 *, emu_t4 *, emu_conv *, emu_t4 *, int, size_t *m) { *m = 512; return 0; }
static inline cudnnStatus_t cudnnGetConvolutionBackwardFilterWorkspaceSize(cudnnHandle_t, emu_t4 *, emu_t4 *, emu_conv *, emu_t4 *, int, size_t *m) { *m = 512; return 0; }
/* naive convolutions, checking the descriptors agree with each other */
static inline cudnnStatus_t emu_conv_run(int dir, const float *al, emu_t4 *xd, const float *x, emu_t4 *wd, const float *w, emu_conv *c, emu_t4 *yd, const float *y, const float *be, float *out, size_t wsb, void *ws)
{
    int N = xd->n, C = xd->c, H = xd->h, W = xd->w, K = wd->n, R = wd->h, S = wd->w, P = yd->h, Q = yd->w;
    if (wd->c != C || yd->n != N || yd->c != K || c->sh != c->sw || c->ph != c->pw || !ws || wsb < 1024) { fprintf(stderr, "emu conv: bad descriptors\n"); abort(); }
    size_t nout = dir == 0 ? (size_t)N * K * P * Q : dir == 1 ? (size_t)N * C * H * W : (size_t)K * C * R * S;
    double *acc = (double *)calloc(nout, sizeof(double));
    for (int n = 0; n < N; n++) for (int k = 0; k < K; k++) for (int p = 0; p < P; p++) for (int q = 0; q < Q; q++)
        for (int ch = 0; ch < C; ch++) for (int r = 0; r < R; r++) for (int s = 0; s < S; s++) {
            int h = p * c->sh - c->ph + r, ww = q * c->sw - c->pw + s;
            if (h < 0 || h >= H || ww < 0 || ww >= W) continue;
            size_t xi = (((size_t)n * C + ch) * H + h) * W + ww, wi = (((size_t)k * C + ch) * R + r) * S + s, yi = (((size_t)n * K + k) * P + p) * Q + q;
            if (dir == 0) acc[yi] += (double)x[xi] * w[wi];
            else if (dir == 1) acc[xi] += (double)y[yi] * w[wi];
            else acc[wi] += (double)x[xi] * y[yi];
        }
    for (size_t i = 0; i < nout; i++) out[i] = (float)(*al * acc[i] + (*be != 0 ? *be * out[i] : 0.0f));
    free(acc);
    return 0;
}
static inline cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t, const float *al, emu_t4 *xd, const float *x, emu_t4 *wd, const float *w, emu_conv *c, int, void *ws, size_t wsb, const float *be, emu_t4 *yd, float *y) { return emu_conv_run(0, al, xd, x, wd, w, c, yd, NULL, be, y, wsb, ws); }
static inline cudnnStatus_t cudnnConvolutionBackwardData(cudnnHandle_t, const float *al, emu_t4 *wd, const float *w, emu_t4 *yd, const float *dy, emu_conv *c, int, void *ws, size_t wsb, const float *be, emu_t4 *xd, float *dx) { return emu_conv_run(1, al, xd, NULL, wd, w, c, yd, dy, be, dx, wsb, ws); }
static inline cudnnStatus_t cudnnConvolutionBackwardFilter(cudnnHandle_t, const float *al, emu_t4 *xd, const float *x, emu_t4 *yd, const float *dy, emu_conv *c, int, void *ws, size_t wsb, const float *be, emu_t4 *wd, float *dw) { return emu_conv_run(2, al, xd, x, wd, NULL, c, yd, dy, be, dw, wsb, ws); }
