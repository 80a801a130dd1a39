/* Convolutions on cuDNN's legacy C API (cuDNN 9 keeps it).
 *
 * conv_plan builds, for the backend's math mode (set_precision), one
 * sub-plan per direction (forward, backward data, backward filter): the
 * operands cuDNN runs on (fp32 or bf16, NCHW or NHWC), the descriptors and
 * an algorithm picked by timing (cudnnFind*), preferring deterministic ones
 * for the backward passes (the weight gradient of the fastest algorithm is
 * often atomics-based: run-to-run noise we do not want). A memo serves the
 * same shape's later plans under the same mode. A plan used under a mode it
 * was not made for plans that mode on its first call there (not inside a
 * capture). Workspace and scratch are grown here, at plan time, never
 * during a call.
 *
 * Math: TF32 mode runs fp32 data with CUDNN_DEFAULT_MATH, which permits
 * TF32 tensor cores on compute capability 8+; FP32 mode with
 * CUDNN_FMA_MATH, which forbids them (PyTorch's choice between the two as
 * well). BF16 mode runs bf16 x, w and y with float compute (cuDNN's
 * PSEUDO_BFLOAT16_CONFIG: products exact, fp32 accumulation, the result
 * rounded to bf16 once) and tensor-op math; our kernels cast the fp32
 * operands into scratch and the result back. A weight gradient goes to a
 * temporary (beta 0) and is added into dw in fp32: the contract's +=.
 *
 * Layout: the interface is NCHW / KCRS. For each direction the plan times
 * cuDNN on NCHW and on NHWC (KRSC filters) and adds the measured time of
 * the copies each needs: none for fp32 NCHW, a transposing copy per
 * operand for fp32 NHWC, a cast per operand in bf16 either way (the
 * transpose rides along in the cast, so NHWC costs about nothing extra
 * there). The faster total wins; a tie goes to NCHW.
 *   RW_CUDA_CONV_LAYOUT=nchw|nhwc|auto (read at plan time) forces a layout
 *   (a layout cuDNN declines falls back to the other one);
 *   RW_CUDA_CONV_LOG=1 prints every choice: shape, mode, direction,
 *   layout, operand type, algorithm, math type and the times behind it.
 * A direction cuDNN runs in neither bf16 layout falls back to fp32 (TF32)
 * with a notice, once per process. */
#include <string.h>

#include "kernels/cuda/precision.h"

enum { DIR_FWD, DIR_BD, DIR_BW, NDIR };
static const char *const dir_names[NDIR] = {"fwd", "bwd_data", "bwd_filter"};

/* One direction under one mode. */
typedef struct conv_dir {
    cudnnTensorDescriptor_t xd, yd;
    cudnnFilterDescriptor_t wd;
    cudnnConvolutionDescriptor_t cd; /* carries the chosen algorithm's math type */
    int algo;                        /* cudnnConvolution*Algo_t */
    int bf16, nhwc;                  /* what cuDNN reads and writes */
    size_t scratch;                  /* operand copies; 0: cuDNN runs on ours */
} conv_dir;

typedef struct conv_mode {
    int planned;
    conv_dir dir[NDIR];
} conv_mode;

struct kb_conv {
    kb_conv_desc d;
    kb_precision home;  /* the mode conv_plan planned: the fallback */
    conv_mode mode[3];  /* by kb_precision */
};

/* The three tensors as batches of matrices (B, R, S) for kb_cuda_relayout:
 * x (N, C, HW), w (K, C, RS), y (N, K, PQ). */
typedef struct conv_shape {
    long B, R, S;
} conv_shape;

static conv_shape shape_x(const kb_conv_desc *d) { return {d->N, d->C, (long)d->H * d->W}; }
static conv_shape shape_w(const kb_conv_desc *d) { return {d->K, d->C, (long)d->R * d->S}; }
static conv_shape shape_y(const kb_conv_desc *d) { return {d->N, d->K, (long)d->P * d->Q}; }
static size_t shape_n(conv_shape s) { return (size_t)s.B * s.R * s.S; }

/* A direction's operands a, b and result o: forward x, w -> y; backward
 * data dy, w -> dx; backward filter x, dy -> dw. */
static conv_shape shape_a(const kb_conv_desc *d, int dir) { return dir == DIR_BD ? shape_y(d) : shape_x(d); }
static conv_shape shape_b(const kb_conv_desc *d, int dir) { return dir == DIR_BW ? shape_y(d) : shape_w(d); }
static conv_shape shape_o(const kb_conv_desc *d, int dir)
{
    return dir == DIR_FWD ? shape_y(d) : dir == DIR_BD ? shape_x(d) : shape_w(d);
}

/* Scratch for the copies of a, b and o, each 256-byte aligned. */
static size_t copies_bytes(const kb_conv_desc *d, int dir, int bf16, size_t off[3])
{
    const size_t es = bf16 ? 2 : 4;
    off[0] = 0;
    off[1] = kb_cuda_align256(shape_n(shape_a(d, dir)) * es);
    off[2] = off[1] + kb_cuda_align256(shape_n(shape_b(d, dir)) * es);
    return off[2] + kb_cuda_align256(shape_n(shape_o(d, dir)) * es);
}

/* fp32 NCHW operands a, b -> their copies sa, sb */
static void copies_in(kb_cuda *impl, const kb_conv_desc *d, int dir, int bf16, int nhwc,
                      const float *a, const float *b, void *sa, void *sb)
{
    conv_shape s = shape_a(d, dir);
    kb_cuda_relayout(impl, a, 0, sa, bf16, s.B, s.R, s.S, nhwc, 0);
    s = shape_b(d, dir);
    kb_cuda_relayout(impl, b, 0, sb, bf16, s.B, s.R, s.S, nhwc, 0);
}

/* the result's copy so -> o, fp32 NCHW; added for the weight gradient */
static void copy_out(kb_cuda *impl, const kb_conv_desc *d, int dir, int bf16, int nhwc,
                     const void *so, float *o)
{
    conv_shape s = shape_o(d, dir);
    /* the copy is (B, S, R) when NHWC: transposing it back swaps R and S */
    kb_cuda_relayout(impl, so, bf16, o, 0, s.B, nhwc ? s.S : s.R, nhwc ? s.R : s.S, nhwc,
                     dir == DIR_BW);
}

/* ---- descriptors ---- */

static void dir_free(conv_dir *p)
{
    if (p->xd)
        cudnnDestroyTensorDescriptor(p->xd);
    if (p->yd)
        cudnnDestroyTensorDescriptor(p->yd);
    if (p->wd)
        cudnnDestroyFilterDescriptor(p->wd);
    if (p->cd)
        cudnnDestroyConvolutionDescriptor(p->cd);
    memset(p, 0, sizeof *p);
}

static void cuda_conv_free(kb_backend *be, kb_conv *c)
{
    if (!c)
        return;
    kb_cuda_enter(be);
    for (int m = 0; m < 3; m++)
        for (int i = 0; i < NDIR; i++)
            dir_free(&c->mode[m].dir[i]);
    free(c);
}

/* Descriptors for p->bf16 and p->nhwc; float compute either way. */
static cudnnStatus_t dir_descs(const kb_conv_desc *d, conv_dir *p, cudnnMathType_t math)
{
    const cudnnDataType_t dt = p->bf16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
    const cudnnTensorFormat_t fmt = p->nhwc ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
    cudnnStatus_t s;
    if ((s = cudnnCreateTensorDescriptor(&p->xd)) != CUDNN_STATUS_SUCCESS ||
        (s = cudnnCreateTensorDescriptor(&p->yd)) != CUDNN_STATUS_SUCCESS ||
        (s = cudnnCreateFilterDescriptor(&p->wd)) != CUDNN_STATUS_SUCCESS ||
        (s = cudnnCreateConvolutionDescriptor(&p->cd)) != CUDNN_STATUS_SUCCESS ||
        (s = cudnnSetTensor4dDescriptor(p->xd, fmt, dt, d->N, d->C, d->H, d->W)) !=
            CUDNN_STATUS_SUCCESS ||
        (s = cudnnSetTensor4dDescriptor(p->yd, fmt, dt, d->N, d->K, d->P, d->Q)) !=
            CUDNN_STATUS_SUCCESS ||
        (s = cudnnSetFilter4dDescriptor(p->wd, dt, fmt, d->K, d->C, d->R, d->S)) !=
            CUDNN_STATUS_SUCCESS ||
        (s = cudnnSetConvolution2dDescriptor(p->cd, d->pad, d->pad, d->stride, d->stride, 1, 1,
                                             CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT)) !=
            CUDNN_STATUS_SUCCESS ||
        (s = cudnnSetConvolutionMathType(p->cd, math)) != CUDNN_STATUS_SUCCESS)
        return s;
    int n, k, pp, q;
    if ((s = cudnnGetConvolution2dForwardOutputDim(p->cd, p->xd, p->wd, &n, &k, &pp, &q)) !=
        CUDNN_STATUS_SUCCESS)
        return s;
    return n == d->N && k == d->K && pp == d->P && q == d->Q ? CUDNN_STATUS_SUCCESS
                                                             : CUDNN_STATUS_BAD_PARAM;
}

static cudnnStatus_t dir_ws(kb_cuda *impl, int dir, const conv_dir *p, size_t *mem)
{
    switch (dir) {
    case DIR_FWD:
        return cudnnGetConvolutionForwardWorkspaceSize(impl->cudnn, p->xd, p->wd, p->cd, p->yd,
                                                       (cudnnConvolutionFwdAlgo_t)p->algo, mem);
    case DIR_BD:
        return cudnnGetConvolutionBackwardDataWorkspaceSize(
            impl->cudnn, p->wd, p->yd, p->cd, p->xd, (cudnnConvolutionBwdDataAlgo_t)p->algo, mem);
    default:
        return cudnnGetConvolutionBackwardFilterWorkspaceSize(
            impl->cudnn, p->xd, p->yd, p->cd, p->wd, (cudnnConvolutionBwdFilterAlgo_t)p->algo,
            mem);
    }
}

/* ---- choosing ---- */

/* Among cuDNN's timed results (fastest first), the first that succeeded,
 * fits `limit` bytes of workspace and, when asked, is deterministic (else
 * the first that succeeded and fits). */
template <class Perf>
static int pick(const Perf *perf, int n, size_t limit, int need_det, int *algo,
                cudnnMathType_t *math, float *ms)
{
    for (int pass = need_det ? 0 : 1; pass < 2; pass++)
        for (int i = 0; i < n; i++) {
            if (perf[i].status != CUDNN_STATUS_SUCCESS || perf[i].memory > limit)
                continue;
            if (pass == 0 && perf[i].determinism != CUDNN_DETERMINISTIC)
                continue;
            *algo = (int)perf[i].algo;
            *math = perf[i].mathType;
            *ms = perf[i].time;
            return 0;
        }
    return -1;
}

/* cudnnFind* for one direction on p's descriptors: runs the candidates on
 * memory it allocates itself and waits for them (plan time only). */
static cudnnStatus_t dir_find(kb_cuda *impl, int dir, const conv_dir *p, size_t limit, int *algo,
                              cudnnMathType_t *math, float *ms)
{
    cudnnStatus_t s;
    int got = 0, r;
    if (dir == DIR_FWD) {
        cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
        s = cudnnFindConvolutionForwardAlgorithm(impl->cudnn, p->xd, p->wd, p->cd, p->yd,
                                                 CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &got, perf);
        r = s == CUDNN_STATUS_SUCCESS ? pick(perf, got, limit, 0, algo, math, ms) : 0;
    } else if (dir == DIR_BD) {
        cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
        s = cudnnFindConvolutionBackwardDataAlgorithm(impl->cudnn, p->wd, p->yd, p->cd, p->xd,
                                                      CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT,
                                                      &got, perf);
        r = s == CUDNN_STATUS_SUCCESS ? pick(perf, got, limit, 1, algo, math, ms) : 0;
    } else {
        cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
        s = cudnnFindConvolutionBackwardFilterAlgorithm(impl->cudnn, p->xd, p->yd, p->cd, p->wd,
                                                        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT,
                                                        &got, perf);
        r = s == CUDNN_STATUS_SUCCESS ? pick(perf, got, limit, 1, algo, math, ms) : 0;
    }
    if (s == CUDNN_STATUS_SUCCESS && r != 0)
        s = CUDNN_STATUS_NOT_SUPPORTED;
    return s;
}

/* Buffers and events for timing the operand copies, made on first need
 * and freed when the mode is planned. */
typedef struct copy_timer {
    void *src, *dst; /* each as large as the largest tensor in fp32 */
    cudaEvent_t t0, t1;
    int ready, failed;
} copy_timer;

static void timer_free(copy_timer *t)
{
    if (t->ready) {
        cudaEventDestroy(t->t0);
        cudaEventDestroy(t->t1);
    }
    if (t->src)
        cudaFree(t->src);
    if (t->dst)
        cudaFree(t->dst);
    memset(t, 0, sizeof *t);
}

/* Milliseconds of one direction's copies (in and out), averaged over a few
 * runs after a warm-up; a huge number where the buffers cannot be had. */
static float time_copies(kb_cuda *impl, copy_timer *t, const kb_conv_desc *d, int dir, int bf16,
                         int nhwc)
{
    if (!t->ready && !t->failed) {
        size_t n = shape_n(shape_x(d));
        if (shape_n(shape_w(d)) > n)
            n = shape_n(shape_w(d));
        if (shape_n(shape_y(d)) > n)
            n = shape_n(shape_y(d));
        if (cudaMalloc(&t->src, n * 4) != cudaSuccess ||
            cudaMalloc(&t->dst, 3 * kb_cuda_align256(n * 4)) != cudaSuccess ||
            cudaEventCreate(&t->t0) != cudaSuccess) {
            (void)cudaGetLastError();
            t->failed = 1;
        } else if (cudaEventCreate(&t->t1) != cudaSuccess) {
            cudaEventDestroy(t->t0);
            t->failed = 1;
        } else {
            KB_CUDA(cudaMemsetAsync(t->src, 0, n * 4, impl->stream));
            KB_CUDA(cudaMemsetAsync(t->dst, 0, 3 * kb_cuda_align256(n * 4), impl->stream));
            t->ready = 1;
        }
    }
    if (!t->ready)
        return 1e30f;
    size_t off[3];
    copies_bytes(d, dir, bf16, off);
    char *dst = (char *)t->dst;
    const int reps = 3;
    for (int i = 0; i <= reps; i++) {
        if (i == 1)
            KB_CUDA(cudaEventRecord(t->t0, impl->stream));
        copies_in(impl, d, dir, bf16, nhwc, (const float *)t->src, (const float *)t->src,
                  dst + off[0], dst + off[1]);
        copy_out(impl, d, dir, bf16, nhwc, dst + off[2], (float *)t->src);
    }
    KB_CUDA(cudaEventRecord(t->t1, impl->stream));
    KB_CUDA(cudaEventSynchronize(t->t1));
    float ms = 0;
    KB_CUDA(cudaEventElapsedTime(&ms, t->t0, t->t1));
    return ms / reps;
}

/* RW_CUDA_CONV_LAYOUT: 0 auto, 1 nchw, 2 nhwc */
static int layout_request(void)
{
    const char *e = getenv("RW_CUDA_CONV_LAYOUT");
    if (!e || !*e || strcmp(e, "auto") == 0)
        return 0;
    if (strcmp(e, "nchw") == 0)
        return 1;
    if (strcmp(e, "nhwc") == 0)
        return 2;
    static int told;
    if (!told++)
        fprintf(stderr, "cuda: RW_CUDA_CONV_LAYOUT=%s is not nchw, nhwc or auto: auto\n", e);
    return 0;
}

static int conv_log(void)
{
    const char *e = getenv("RW_CUDA_CONV_LOG");
    return e && strcmp(e, "1") == 0;
}

static const char *math_name(int m)
{
    switch (m) {
    case CUDNN_DEFAULT_MATH:
        return "default";
    case CUDNN_TENSOR_OP_MATH:
        return "tensor_op";
    case CUDNN_FMA_MATH:
        return "fma";
    default:
        return "tensor_op_conv"; /* CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION */
    }
}

/* ---- the per-backend memo of choices ---- */

static int desc_equal(const kb_conv_desc *a, const kb_conv_desc *b)
{
    return a->N == b->N && a->C == b->C && a->H == b->H && a->W == b->W && a->K == b->K &&
           a->R == b->R && a->S == b->S && a->stride == b->stride && a->pad == b->pad;
}

static const struct kb_cuda_algo_memo *algo_memo_find(const kb_cuda *impl, const kb_conv_desc *d,
                                                      kb_precision mode, int layout_req)
{
    for (int i = 0; i < impl->n_algo_memo; i++)
        if (desc_equal(&impl->algo_memo[i].d, d) && impl->algo_memo[i].precision == (int)mode &&
            impl->algo_memo[i].layout_req == layout_req)
            return &impl->algo_memo[i];
    return NULL;
}

static void algo_memo_add(kb_cuda *impl, const struct kb_cuda_algo_memo *m)
{
    if (impl->n_algo_memo == impl->cap_algo_memo) {
        int cap = impl->cap_algo_memo ? 2 * impl->cap_algo_memo : 32;
        void *p = realloc(impl->algo_memo, (size_t)cap * sizeof *impl->algo_memo);
        if (!p)
            return; /* no memo: the next plan of this shape searches again */
        impl->algo_memo = (struct kb_cuda_algo_memo *)p;
        impl->cap_algo_memo = cap;
    }
    impl->algo_memo[impl->n_algo_memo++] = *m;
}

/* ---- planning ---- */

/* The math type to search with and, for FP32 mode, to run with. */
static cudnnMathType_t search_math(kb_precision mode, int bf16)
{
    if (bf16)
        return CUDNN_TENSOR_OP_MATH;
    return mode == KB_PREC_FP32 ? CUDNN_FMA_MATH : CUDNN_DEFAULT_MATH;
}

/* Chooses direction `dir`'s operands, layout and algorithm under `mode`
 * (filling m->dir[dir]); 0, or -1 with what failed in *what and the last
 * cuDNN status in *st. */
static int choose_dir(kb_cuda *impl, const kb_conv_desc *d, kb_precision mode, int layout_req,
                      int dir, size_t limit, copy_timer *timer, struct kb_cuda_algo_memo *m,
                      const char **what, cudnnStatus_t *st)
{
    static const char *const find_what[NDIR] = {"forward algorithm search",
                                                "backward data algorithm search",
                                                "backward filter algorithm search"};
    /* bf16 first in BF16 mode; fp32 (TF32) when cuDNN runs no bf16 here */
    for (int bf16 = mode == KB_PREC_BF16; bf16 >= 0; bf16--) {
        int found = 0;
        float best = 0;
        /* round 0: the forced layout, or both; round 1: a forced layout
         * cuDNN declined, the other one */
        for (int round = 0; round < (layout_req ? 2 : 1) && !found; round++) {
            if (round == 1) {
                static int told;
                if (!told++)
                    fprintf(stderr,
                            "cuda: cuDNN declines %s %s %s for N=%d C=%d H=%d W=%d K=%d R=%d "
                            "S=%d: trying %s (notice shown once)\n",
                            layout_req == 1 ? "NCHW" : "NHWC", bf16 ? "bf16" : "fp32",
                            dir_names[dir], d->N, d->C, d->H, d->W, d->K, d->R, d->S,
                            layout_req == 1 ? "NHWC" : "NCHW");
            }
            for (int nhwc = 0; nhwc < 2; nhwc++) {
                if (layout_req && (nhwc == layout_req - 1) != (round == 0))
                    continue;
                conv_dir p = {};
                p.bf16 = bf16;
                p.nhwc = nhwc;
                int algo = 0;
                cudnnMathType_t math = CUDNN_DEFAULT_MATH;
                float ms = 0;
                *what = "descriptor";
                cudnnStatus_t s = dir_descs(d, &p, search_math(mode, bf16));
                if (s == CUDNN_STATUS_SUCCESS) {
                    *what = find_what[dir];
                    s = dir_find(impl, dir, &p, limit, &algo, &math, &ms);
                }
                dir_free(&p);
                if (s != CUDNN_STATUS_SUCCESS) {
                    *st = s;
                    continue;
                }
                /* fp32 NCHW needs no copies; fp32 NHWC can only lose if its
                 * convolution alone is not faster */
                float copy = 0;
                if (bf16 || nhwc) {
                    if (!bf16 && found && ms >= best)
                        continue;
                    copy = time_copies(impl, timer, d, dir, bf16, nhwc);
                }
                if (!found || ms + copy < best) {
                    found = 1;
                    best = ms + copy;
                    m->dir[dir].algo = algo;
                    m->dir[dir].math = mode == KB_PREC_FP32 ? CUDNN_FMA_MATH : (int)math;
                    m->dir[dir].bf16 = bf16;
                    m->dir[dir].nhwc = nhwc;
                    m->dir[dir].ms_conv = ms;
                    m->dir[dir].ms_copy = copy;
                }
            }
        }
        if (found)
            return 0;
        if (bf16) {
            static int told;
            if (!told++)
                fprintf(stderr,
                        "cuda: cuDNN runs no bf16 %s for N=%d C=%d H=%d W=%d K=%d R=%d S=%d "
                        "(%s): that direction runs TF32 (notice shown once)\n",
                        dir_names[dir], d->N, d->C, d->H, d->W, d->K, d->R, d->S,
                        cudnnGetErrorString(*st));
        }
    }
    return -1;
}

/* Plans `mode` for c: choices from the memo or by timing, descriptors,
 * workspace and scratch. 0, or -1 after printing why. */
static int plan_mode(kb_cuda *impl, kb_conv *c, kb_precision mode)
{
    const kb_conv_desc *d = &c->d;
    conv_mode *cm = &c->mode[mode];
    const char *what = "descriptor";
    cudnnStatus_t st = CUDNN_STATUS_BAD_PARAM;
    const int layout_req = layout_request();
    const struct kb_cuda_algo_memo *memo = algo_memo_find(impl, d, mode, layout_req);
    struct kb_cuda_algo_memo m;
    if (memo) {
        m = *memo;
    } else {
        memset(&m, 0, sizeof m);
        m.d = *d;
        m.precision = (int)mode;
        m.layout_req = layout_req;
        /* Workspace cap for the search: a quarter of free memory, at most
         * 1 GiB (algorithms that want more are rarely faster). */
        size_t free_b = 0, total_b = 0;
        KB_CUDA(cudaMemGetInfo(&free_b, &total_b));
        size_t limit = free_b / 4;
        if (limit > ((size_t)1 << 30))
            limit = (size_t)1 << 30;
        copy_timer timer = {};
        int bad = 0;
        for (int i = 0; i < NDIR && !bad; i++)
            bad = choose_dir(impl, d, mode, layout_req, i, limit, &timer, &m, &what, &st) != 0;
        timer_free(&timer);
        if (bad)
            goto fail;
        algo_memo_add(impl, &m);
        if (conv_log())
            for (int i = 0; i < NDIR; i++)
                fprintf(stderr,
                        "conv N=%d C=%d H=%d W=%d K=%d R=%d S=%d stride=%d pad=%d %s %s: %s %s "
                        "algo %d %s, %.4f ms conv + %.4f ms copies\n",
                        d->N, d->C, d->H, d->W, d->K, d->R, d->S, d->stride, d->pad,
                        kb_precision_name((kb_precision)(mode)), dir_names[i], m.dir[i].nhwc ? "nhwc" : "nchw",
                        m.dir[i].bf16 ? "bf16" : "fp32", m.dir[i].algo,
                        math_name(m.dir[i].math), m.dir[i].ms_conv, m.dir[i].ms_copy);
    }

    {
        size_t ws = 0, scratch = 0;
        for (int i = 0; i < NDIR; i++) {
            conv_dir *p = &cm->dir[i];
            dir_free(p);
            p->bf16 = m.dir[i].bf16;
            p->nhwc = m.dir[i].nhwc;
            p->algo = m.dir[i].algo;
            what = "descriptor";
            if ((st = dir_descs(d, p, (cudnnMathType_t)m.dir[i].math)) != CUDNN_STATUS_SUCCESS)
                goto fail;
            what = "workspace size";
            size_t mem = 0;
            if ((st = dir_ws(impl, i, p, &mem)) != CUDNN_STATUS_SUCCESS)
                goto fail;
            ws = mem > ws ? mem : ws;
            size_t off[3];
            p->scratch = p->bf16 || p->nhwc ? copies_bytes(d, i, p->bf16, off) : 0;
            scratch = p->scratch > scratch ? p->scratch : scratch;
        }
        what = "workspace";
        if (kb_cuda_ws_reserve(impl, ws) != 0) {
            st = CUDNN_STATUS_ALLOC_FAILED;
            goto fail;
        }
        if (scratch)
            kb_cuda_scratch(impl, scratch); /* grown now, so calls never grow it */
    }
    cm->planned = 1;
    return 0;

fail:
    fprintf(stderr,
            "conv_plan: %s failed (%s) for N=%d C=%d H=%d W=%d K=%d R=%d S=%d stride=%d "
            "pad=%d P=%d Q=%d (%s)\n",
            what, cudnnGetErrorString(st), d->N, d->C, d->H, d->W, d->K, d->R, d->S, d->stride,
            d->pad, d->P, d->Q, kb_precision_name((kb_precision)(mode)));
    for (int i = 0; i < NDIR; i++)
        dir_free(&cm->dir[i]);
    return -1;
}

static kb_conv *cuda_conv_plan(kb_backend *be, const kb_conv_desc *d)
{
    kb_cuda *impl = kb_cuda_enter(be);
    /* cudnnFind waits for the device and allocates */
    if (kb_cuda_capture_refuse(impl, "conv_plan inside a capture"))
        return NULL;
    /* The contract's shape rules, checked as the CPU backend checks them. */
    kb_conv_desc want;
    kb_conv_desc_init(&want, d->N, d->C, d->H, d->W, d->K, d->R, d->S, d->stride, d->pad);
    if (d->N < 1 || d->C < 1 || d->H < 1 || d->W < 1 || d->K < 1 || d->R < 1 || d->S < 1 ||
        d->stride < 1 || d->pad < 0 || want.P < 1 || want.Q < 1 || want.P != d->P ||
        want.Q != d->Q || d->H + 2 * d->pad < d->R || d->W + 2 * d->pad < d->S) {
        fprintf(stderr,
                "conv_plan: bad shape N=%d C=%d H=%d W=%d K=%d R=%d S=%d stride=%d pad=%d "
                "P=%d Q=%d\n",
                d->N, d->C, d->H, d->W, d->K, d->R, d->S, d->stride, d->pad, d->P, d->Q);
        return NULL;
    }
    kb_conv *c = (kb_conv *)calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->d = *d;
    c->home = impl->precision;
    if (plan_mode(impl, c, c->home) != 0) {
        cuda_conv_free(be, c);
        return NULL;
    }
    return c;
}

/* The sub-plans for the mode in effect, planned now if this is the plan's
 * first call in it; NULL inside a capture (the op is not recorded, the
 * capture fails). */
static conv_mode *mode_ready(kb_cuda *impl, kb_conv *c)
{
    const kb_precision mode = impl->precision;
    if (c->mode[mode].planned)
        return &c->mode[mode];
    if (kb_cuda_capture_refuse(impl, "a convolution's first call under a new precision "
                                     "(set the precision before planning or capturing)"))
        return NULL;
    if (plan_mode(impl, c, mode) == 0)
        return &c->mode[mode];
    static int told;
    if (!told++)
        fprintf(stderr, "cuda: convolution keeps its %s plan (notice shown once)\n",
                kb_precision_name((kb_precision)(c->home)));
    return &c->mode[c->home];
}

/* One direction: a, b are the operands (x, w / dy, w / x, dy), o the
 * result (y, dx written; dw added to). */
static void conv_run(kb_backend *be, kb_conv *c, int dir, const float *a, const float *b,
                     float *o)
{
    kb_cuda *impl = kb_cuda_enter(be);
    conv_mode *cm = mode_ready(impl, c);
    if (!cm)
        return;
    const conv_dir *p = &cm->dir[dir];
    const float one = 1.0f, zero = 0.0f;
    const void *sa = a, *sb = b;
    void *so = o;
    const float *beta = dir == DIR_BW ? &one : &zero; /* cuDNN adds to dw: the contract's += */
    if (p->scratch) {
        size_t off[3];
        copies_bytes(&c->d, dir, p->bf16, off);
        char *s = (char *)kb_cuda_scratch(impl, p->scratch); /* reserved at plan time */
        copies_in(impl, &c->d, dir, p->bf16, p->nhwc, a, b, s + off[0], s + off[1]);
        sa = s + off[0];
        sb = s + off[1];
        so = s + off[2];
        beta = &zero; /* a weight gradient is added in fp32 by copy_out */
    }
    switch (dir) {
    case DIR_FWD:
        KB_CUDNN(cudnnConvolutionForward(impl->cudnn, &one, p->xd, sa, p->wd, sb, p->cd,
                                         (cudnnConvolutionFwdAlgo_t)p->algo, impl->ws,
                                         impl->ws_bytes, beta, p->yd, so));
        break;
    case DIR_BD:
        KB_CUDNN(cudnnConvolutionBackwardData(impl->cudnn, &one, p->wd, sb, p->yd, sa, p->cd,
                                              (cudnnConvolutionBwdDataAlgo_t)p->algo, impl->ws,
                                              impl->ws_bytes, beta, p->xd, so));
        break;
    default:
        KB_CUDNN(cudnnConvolutionBackwardFilter(impl->cudnn, &one, p->xd, sa, p->yd, sb, p->cd,
                                                (cudnnConvolutionBwdFilterAlgo_t)p->algo,
                                                impl->ws, impl->ws_bytes, beta, p->wd, so));
        break;
    }
    if (p->scratch)
        copy_out(impl, &c->d, dir, p->bf16, p->nhwc, so, o);
}

static void cuda_conv_forward(kb_backend *be, kb_conv *c, const float *x /* (N,C,H,W) */,
                              const float *w /* (K,C,R,S) */, float *y /* (N,K,P,Q) */)
{
    conv_run(be, c, DIR_FWD, x, w, y);
}

static void cuda_conv_backward_data(kb_backend *be, kb_conv *c, const float *dy /* (N,K,P,Q) */,
                                    const float *w /* (K,C,R,S) */,
                                    float *dx /* (N,C,H,W), written */)
{
    conv_run(be, c, DIR_BD, dy, w, dx);
}

static void cuda_conv_backward_weight(kb_backend *be, kb_conv *c, const float *x /* (N,C,H,W) */,
                                      const float *dy /* (N,K,P,Q) */,
                                      float *dw /* (K,C,R,S), += */)
{
    conv_run(be, c, DIR_BW, x, dy, dw);
}

void kb_cuda_conv_init(kb_backend *be)
{
    be->set_precision = kb_cuda_set_precision;
    be->conv_plan = cuda_conv_plan;
    be->conv_free = cuda_conv_free;
    be->conv_forward = cuda_conv_forward;
    be->conv_backward_data = cuda_conv_backward_data;
    be->conv_backward_weight = cuda_conv_backward_weight;
}
