/* Convolutions on cuDNN's legacy C API (cuDNN 9 keeps it).
 *
 * conv_plan builds the descriptors for one shape and picks an algorithm for
 * each direction once per shape and backend (a memo serves the shape's later
 * plans), by timing them (cudnnFind*), preferring deterministic
 * ones for the backward passes (the weight gradient of the fastest algorithm
 * is often atomics-based: run-to-run noise we do not want). The workspace is
 * the backend's, grown here to the largest need, never during a call.
 *
 * Layout: NCHW / KCRS at the interface, and cuDNN reads and writes them
 * directly (no copies). TF32 tensor cores when the backend allows it:
 * CUDNN_DEFAULT_MATH permits TF32 for float data on compute capability 8+,
 * CUDNN_FMA_MATH forbids it (PyTorch's choice between the two as well). */
#include <string.h>

#include "kernels/cuda/cuda.h"

struct kb_conv {
    kb_conv_desc d;
    cudnnTensorDescriptor_t xd, yd;
    cudnnFilterDescriptor_t wd;
    /* One convolution descriptor per direction: each carries the math type
     * of the algorithm chosen for it. */
    cudnnConvolutionDescriptor_t cf, cbd, cbw;
    cudnnConvolutionFwdAlgo_t fwd_algo;
    cudnnConvolutionBwdDataAlgo_t bwd_data_algo;
    cudnnConvolutionBwdFilterAlgo_t bwd_filter_algo;
};

/* ---- launchers (no kernels of our own here) ---- */

static void cuda_conv_free(kb_backend *be, kb_conv *c)
{
    if (!c)
        return;
    kb_cuda_enter(be);
    if (c->xd)
        cudnnDestroyTensorDescriptor(c->xd);
    if (c->yd)
        cudnnDestroyTensorDescriptor(c->yd);
    if (c->wd)
        cudnnDestroyFilterDescriptor(c->wd);
    if (c->cf)
        cudnnDestroyConvolutionDescriptor(c->cf);
    if (c->cbd)
        cudnnDestroyConvolutionDescriptor(c->cbd);
    if (c->cbw)
        cudnnDestroyConvolutionDescriptor(c->cbw);
    free(c);
}

static cudnnStatus_t conv_desc(const kb_conv_desc *d, cudnnMathType_t math,
                               cudnnConvolutionDescriptor_t *cd)
{
    cudnnStatus_t s = cudnnCreateConvolutionDescriptor(cd);
    if (s == CUDNN_STATUS_SUCCESS)
        s = cudnnSetConvolution2dDescriptor(*cd, d->pad, d->pad, d->stride, d->stride, 1, 1,
                                            CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT);
    if (s == CUDNN_STATUS_SUCCESS)
        s = cudnnSetConvolutionMathType(*cd, math);
    return s;
}

/* Among cuDNN's timed results (fastest first), the first that succeeded,
 * fits `limit` bytes of workspace and, when asked, is deterministic. */
#define PICK(perf, n, limit, need_det, out_algo, out_mem, out_math)            \
    do {                                                                       \
        int found_ = 0;                                                        \
        for (int pass_ = (need_det) ? 0 : 1; pass_ < 2 && !found_; pass_++)     \
            for (int i_ = 0; i_ < (n); i_++) {                                 \
                if ((perf)[i_].status != CUDNN_STATUS_SUCCESS ||               \
                    (perf)[i_].memory > (limit))                               \
                    continue;                                                  \
                if (pass_ == 0 && (perf)[i_].determinism != CUDNN_DETERMINISTIC) \
                    continue;                                                  \
                out_algo = (perf)[i_].algo;                                    \
                out_mem = (perf)[i_].memory;                                   \
                out_math = (perf)[i_].mathType;                                \
                found_ = 1;                                                    \
                break;                                                         \
            }                                                                  \
        if (!found_)                                                           \
            st = CUDNN_STATUS_NOT_SUPPORTED;                                   \
    } while (0)

/* ---- the per-backend memo of chosen algorithms ---- */

static int desc_equal(const kb_conv_desc *a, const kb_conv_desc *b)
{
    return a->N == b->N && a->C == b->C && a->H == b->H && a->W == b->W && a->K == b->K &&
           a->R == b->R && a->S == b->S && a->stride == b->stride && a->pad == b->pad;
}

static const struct kb_cuda_algo_memo *algo_memo_find(const kb_cuda *impl, const kb_conv_desc *d)
{
    for (int i = 0; i < impl->n_algo_memo; i++)
        if (desc_equal(&impl->algo_memo[i].d, d))
            return &impl->algo_memo[i];
    return NULL;
}

static void algo_memo_add(kb_cuda *impl, const kb_conv_desc *d, const kb_conv *c,
                          cudnnMathType_t mf, cudnnMathType_t mbd, cudnnMathType_t mbw)
{
    if (impl->n_algo_memo == impl->cap_algo_memo) {
        int cap = impl->cap_algo_memo ? 2 * impl->cap_algo_memo : 32;
        void *p = realloc(impl->algo_memo, (size_t)cap * sizeof *impl->algo_memo);
        if (!p)
            return; /* no memo: the next plan of this shape searches again */
        impl->algo_memo = (struct kb_cuda_algo_memo *)p;
        impl->cap_algo_memo = cap;
    }
    struct kb_cuda_algo_memo *m = &impl->algo_memo[impl->n_algo_memo++];
    m->d = *d;
    m->fwd = (int)c->fwd_algo;
    m->bwd_data = (int)c->bwd_data_algo;
    m->bwd_filter = (int)c->bwd_filter_algo;
    m->math_f = (int)mf;
    m->math_bd = (int)mbd;
    m->math_bw = (int)mbw;
}

static kb_conv *cuda_conv_plan(kb_backend *be, const kb_conv_desc *d)
{
    kb_cuda *impl = kb_cuda_enter(be);
    const char *what = "descriptor";
    cudnnStatus_t st = CUDNN_STATUS_BAD_PARAM;
    kb_conv *c = (kb_conv *)calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->d = *d;

    /* The contract's shape rules, checked as the CPU backend checks them. */
    kb_conv_desc want;
    kb_conv_desc_init(&want, d->N, d->C, d->H, d->W, d->K, d->R, d->S, d->stride, d->pad);
    if (d->N < 1 || d->C < 1 || d->H < 1 || d->W < 1 || d->K < 1 || d->R < 1 || d->S < 1 ||
        d->stride < 1 || d->pad < 0 || want.P < 1 || want.Q < 1 || want.P != d->P ||
        want.Q != d->Q || d->H + 2 * d->pad < d->R || d->W + 2 * d->pad < d->S)
        goto fail;

    {
        const cudnnMathType_t math = impl->tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH;
        if ((st = cudnnCreateTensorDescriptor(&c->xd)) != CUDNN_STATUS_SUCCESS ||
            (st = cudnnCreateTensorDescriptor(&c->yd)) != CUDNN_STATUS_SUCCESS ||
            (st = cudnnCreateFilterDescriptor(&c->wd)) != CUDNN_STATUS_SUCCESS ||
            (st = cudnnSetTensor4dDescriptor(c->xd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, d->N,
                                             d->C, d->H, d->W)) != CUDNN_STATUS_SUCCESS ||
            (st = cudnnSetTensor4dDescriptor(c->yd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, d->N,
                                             d->K, d->P, d->Q)) != CUDNN_STATUS_SUCCESS ||
            (st = cudnnSetFilter4dDescriptor(c->wd, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, d->K,
                                             d->C, d->R, d->S)) != CUDNN_STATUS_SUCCESS ||
            (st = conv_desc(d, math, &c->cf)) != CUDNN_STATUS_SUCCESS ||
            (st = conv_desc(d, math, &c->cbd)) != CUDNN_STATUS_SUCCESS ||
            (st = conv_desc(d, math, &c->cbw)) != CUDNN_STATUS_SUCCESS)
            goto fail;

        what = "output shape";
        int n, k, p, q;
        if ((st = cudnnGetConvolution2dForwardOutputDim(c->cf, c->xd, c->wd, &n, &k, &p, &q)) !=
            CUDNN_STATUS_SUCCESS)
            goto fail;
        if (n != d->N || k != d->K || p != d->P || q != d->Q) {
            st = CUDNN_STATUS_BAD_PARAM;
            goto fail;
        }

        const struct kb_cuda_algo_memo *memo = algo_memo_find(impl, d);
        size_t need = 0, mem = 0;
        cudnnMathType_t mf, mbd, mbw;
        if (memo) {
            c->fwd_algo = (cudnnConvolutionFwdAlgo_t)memo->fwd;
            c->bwd_data_algo = (cudnnConvolutionBwdDataAlgo_t)memo->bwd_data;
            c->bwd_filter_algo = (cudnnConvolutionBwdFilterAlgo_t)memo->bwd_filter;
            mf = (cudnnMathType_t)memo->math_f;
            mbd = (cudnnMathType_t)memo->math_bd;
            mbw = (cudnnMathType_t)memo->math_bw;
        } else {
            /* Workspace cap for the search: a quarter of free memory, at
             * most 1 GiB (algorithms that want more are rarely faster). */
            size_t free_b = 0, total_b = 0;
            KB_CUDA(cudaMemGetInfo(&free_b, &total_b));
            size_t limit = free_b / 4;
            if (limit > ((size_t)1 << 30))
                limit = (size_t)1 << 30;
            /* cudnnFind* runs the candidates on scratch memory it allocates
             * itself and waits for them: plan time only. */
            what = "forward algorithm search";
            {
                cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
                int got = 0;
                if ((st = cudnnFindConvolutionForwardAlgorithm(
                         impl->cudnn, c->xd, c->wd, c->cf, c->yd,
                         CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &got, perf)) != CUDNN_STATUS_SUCCESS)
                    goto fail;
                PICK(perf, got, limit, 0, c->fwd_algo, mem, mf);
                if (st != CUDNN_STATUS_SUCCESS)
                    goto fail;
            }
            what = "backward data algorithm search";
            {
                cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
                int got = 0;
                if ((st = cudnnFindConvolutionBackwardDataAlgorithm(
                         impl->cudnn, c->wd, c->yd, c->cbd, c->xd,
                         CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &got, perf)) !=
                    CUDNN_STATUS_SUCCESS)
                    goto fail;
                PICK(perf, got, limit, 1, c->bwd_data_algo, mem, mbd);
                if (st != CUDNN_STATUS_SUCCESS)
                    goto fail;
            }
            what = "backward filter algorithm search";
            {
                cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
                int got = 0;
                if ((st = cudnnFindConvolutionBackwardFilterAlgorithm(
                         impl->cudnn, c->xd, c->yd, c->cbw, c->wd,
                         CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &got, perf)) !=
                    CUDNN_STATUS_SUCCESS)
                    goto fail;
                PICK(perf, got, limit, 1, c->bwd_filter_algo, mem, mbw);
                if (st != CUDNN_STATUS_SUCCESS)
                    goto fail;
            }
            if (!impl->tf32)
                mf = mbd = mbw = CUDNN_FMA_MATH;
            algo_memo_add(impl, d, c, mf, mbd, mbw);
        }
        what = "workspace size";
        if ((st = cudnnSetConvolutionMathType(c->cf, mf)) != CUDNN_STATUS_SUCCESS ||
            (st = cudnnSetConvolutionMathType(c->cbd, mbd)) != CUDNN_STATUS_SUCCESS ||
            (st = cudnnSetConvolutionMathType(c->cbw, mbw)) != CUDNN_STATUS_SUCCESS)
            goto fail;
        if ((st = cudnnGetConvolutionForwardWorkspaceSize(impl->cudnn, c->xd, c->wd, c->cf, c->yd,
                                                          c->fwd_algo, &mem)) !=
            CUDNN_STATUS_SUCCESS)
            goto fail;
        need = mem > need ? mem : need;
        if ((st = cudnnGetConvolutionBackwardDataWorkspaceSize(
                 impl->cudnn, c->wd, c->yd, c->cbd, c->xd, c->bwd_data_algo, &mem)) !=
            CUDNN_STATUS_SUCCESS)
            goto fail;
        need = mem > need ? mem : need;
        if ((st = cudnnGetConvolutionBackwardFilterWorkspaceSize(
                 impl->cudnn, c->xd, c->yd, c->cbw, c->wd, c->bwd_filter_algo, &mem)) !=
            CUDNN_STATUS_SUCCESS)
            goto fail;
        need = mem > need ? mem : need;
        what = "workspace";
        if (kb_cuda_ws_reserve(impl, need) != 0) {
            st = CUDNN_STATUS_ALLOC_FAILED;
            goto fail;
        }
    }
    return c;

fail:
    fprintf(stderr,
            "conv_plan: %s failed (%s) for N=%d C=%d H=%d W=%d K=%d R=%d S=%d stride=%d "
            "pad=%d P=%d Q=%d\n",
            what, cudnnGetErrorString(st), d->N, d->C, d->H, d->W, d->K, d->R, d->S, d->stride,
            d->pad, d->P, d->Q);
    cuda_conv_free(be, c);
    return NULL;
}

static void cuda_conv_forward(kb_backend *be, kb_conv *c, const float *x /* (N,C,H,W) */,
                              const float *w /* (K,C,R,S) */, float *y /* (N,K,P,Q) */)
{
    kb_cuda *impl = kb_cuda_enter(be);
    const float one = 1.0f, zero = 0.0f;
    KB_CUDNN(cudnnConvolutionForward(impl->cudnn, &one, c->xd, x, c->wd, w, c->cf, c->fwd_algo,
                                     impl->ws, impl->ws_bytes, &zero, c->yd, y));
}

static void cuda_conv_backward_data(kb_backend *be, kb_conv *c, const float *dy /* (N,K,P,Q) */,
                                    const float *w /* (K,C,R,S) */,
                                    float *dx /* (N,C,H,W), written */)
{
    kb_cuda *impl = kb_cuda_enter(be);
    const float one = 1.0f, zero = 0.0f;
    KB_CUDNN(cudnnConvolutionBackwardData(impl->cudnn, &one, c->wd, w, c->yd, dy, c->cbd,
                                          c->bwd_data_algo, impl->ws, impl->ws_bytes, &zero,
                                          c->xd, dx));
}

static void cuda_conv_backward_weight(kb_backend *be, kb_conv *c, const float *x /* (N,C,H,W) */,
                                      const float *dy /* (N,K,P,Q) */,
                                      float *dw /* (K,C,R,S), += */)
{
    kb_cuda *impl = kb_cuda_enter(be);
    const float one = 1.0f; /* beta = 1: cuDNN adds to dw, the contract's += */
    KB_CUDNN(cudnnConvolutionBackwardFilter(impl->cudnn, &one, c->xd, x, c->yd, dy, c->cbw,
                                            c->bwd_filter_algo, impl->ws, impl->ws_bytes, &one,
                                            c->wd, dw));
}

void kb_cuda_conv_init(kb_backend *be)
{
    be->conv_plan = cuda_conv_plan;
    be->conv_free = cuda_conv_free;
    be->conv_forward = cuda_conv_forward;
    be->conv_backward_data = cuda_conv_backward_data;
    be->conv_backward_weight = cuda_conv_backward_weight;
}
