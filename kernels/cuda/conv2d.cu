/* Convolutions on cuDNN's legacy C API (cuDNN 9 keeps it), on feature maps
 * in the backend's format: NHWC in the math's type, channels padded to 16
 * bytes (cuda.h). A plan runs cuDNN on padded shapes -- C and K rounded
 * up, the weight's padding zero -- so that a padded input channel meets
 * zero weights and a padded output channel comes out zero.
 *
 * conv_plan builds, for the backend's math mode (set_precision), one
 * sub-plan per direction (forward, backward data, backward filter): the
 * descriptors and an algorithm picked by timing (cudnnFind*) within a
 * workspace budget, preferring deterministic ones for the backward passes
 * (the weight gradient of the fastest algorithm is often atomics-based:
 * run-to-run noise we do not want) unless the desc allows otherwise. A memo
 * serves the same shape's later plans under the same mode. A plan used
 * under a mode it was not made for plans that mode on its first call
 * there (not inside a capture). Workspace and scratch are grown here, at
 * plan time, never during a call.
 *
 * Math: TF32 mode runs fp32 data with CUDNN_DEFAULT_MATH, which permits
 * TF32 tensor cores on compute capability 8+; FP32 mode with
 * CUDNN_FMA_MATH, which forbids them (PyTorch's choice between the two as
 * well). BF16 mode runs bf16 x, w and y with float compute (cuDNN's
 * PSEUDO_BFLOAT16_CONFIG: products exact, fp32 accumulation, the result
 * rounded to bf16 once) and tensor-op math. A direction cuDNN runs in no
 * bf16 configuration falls back to fp32 (TF32) on copies of its operands
 * -- the same bf16 values, exact in TF32 -- with a notice, once per
 * process.
 *
 * Weights: the fp32 (K,C,R,S) parameter, or its mirror (the (Kp,R,S,Cp)
 * copy the update keeps, kernels/cuda/optim.cu); without a mirror each call
 * packs the weight into scratch. A weight gradient comes out of cuDNN as
 * (Kp,R,S,Cp) in scratch and is added into the fp32 (K,C,R,S) gradient:
 * the contract's +=. RW_CUDA_CONV_LOG=1 prints every choice: shape, mode,
 * direction, operand type, algorithm, math type and cuDNN's time. */
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
    int bf16;                        /* what cuDNN reads and writes */
} conv_dir;

typedef struct conv_mode {
    int planned;
    conv_dir dir[NDIR];
} conv_mode;

struct kb_conv {
    kb_conv_desc d;
    kb_precision home; /* the mode conv_plan planned: the fallback */
    conv_mode mode[3]; /* by kb_precision */
};

/* The padded shape under the mode in effect. */
typedef struct conv_pad {
    int Cp, Kp, RS;
    size_t nx, nw, ny; /* elements of x, w (packed) and y */
} conv_pad;

static conv_pad pad_of(const kb_cuda *impl, const kb_conv_desc *d)
{
    conv_pad p;
    p.Cp = kb_cuda_cpad(impl, d->C);
    p.Kp = kb_cuda_cpad(impl, d->K);
    p.RS = d->R * d->S;
    p.nx = (size_t)d->N * d->H * d->W * p.Cp;
    p.nw = (size_t)p.Kp * p.RS * p.Cp;
    p.ny = (size_t)d->N * d->P * d->Q * p.Kp;
    return p;
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

/* NHWC descriptors of the padded shape, for p->bf16; float compute. */
static cudnnStatus_t dir_descs(const kb_conv_desc *d, const conv_pad *pd, conv_dir *p,
                               cudnnMathType_t math)
{
    const cudnnDataType_t dt = p->bf16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
    cudnnStatus_t s;
    if ((s = cudnnCreateTensorDescriptor(&p->xd)) != CUDNN_STATUS_SUCCESS ||
        (s = cudnnCreateTensorDescriptor(&p->yd)) != CUDNN_STATUS_SUCCESS ||
        (s = cudnnCreateFilterDescriptor(&p->wd)) != CUDNN_STATUS_SUCCESS ||
        (s = cudnnCreateConvolutionDescriptor(&p->cd)) != CUDNN_STATUS_SUCCESS ||
        (s = cudnnSetTensor4dDescriptor(p->xd, CUDNN_TENSOR_NHWC, dt, d->N, pd->Cp, d->H, d->W)) !=
            CUDNN_STATUS_SUCCESS ||
        (s = cudnnSetTensor4dDescriptor(p->yd, CUDNN_TENSOR_NHWC, dt, d->N, pd->Kp, d->P, d->Q)) !=
            CUDNN_STATUS_SUCCESS ||
        (s = cudnnSetFilter4dDescriptor(p->wd, dt, CUDNN_TENSOR_NHWC, pd->Kp, pd->Cp, d->R, d->S)) !=
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
    return n == d->N && k == pd->Kp && pp == d->P && q == d->Q ? CUDNN_STATUS_SUCCESS
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
static cudnnStatus_t dir_find(kb_cuda *impl, int dir, const conv_dir *p, size_t limit, int det,
                              int *algo, cudnnMathType_t *math, float *ms)
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
        r = s == CUDNN_STATUS_SUCCESS ? pick(perf, got, limit, det, algo, math, ms) : 0;
    } else {
        cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
        s = cudnnFindConvolutionBackwardFilterAlgorithm(impl->cudnn, p->xd, p->yd, p->cd, p->wd,
                                                        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT,
                                                        &got, perf);
        r = s == CUDNN_STATUS_SUCCESS ? pick(perf, got, limit, det, algo, math, ms) : 0;
    }
    if (s == CUDNN_STATUS_SUCCESS && r != 0)
        s = CUDNN_STATUS_NOT_SUPPORTED;
    return s;
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
           a->R == b->R && a->S == b->S && a->stride == b->stride && a->pad == b->pad &&
           a->nondeterministic == b->nondeterministic;
}

static const struct kb_cuda_algo_memo *algo_memo_find(const kb_cuda *impl, const kb_conv_desc *d,
                                                      kb_precision mode)
{
    for (int i = 0; i < impl->n_algo_memo; i++)
        if (desc_equal(&impl->algo_memo[i].d, d) && impl->algo_memo[i].precision == (int)mode)
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

/* Chooses direction `dir`'s operand type and algorithm under `mode`
 * (filling m->dir[dir]); 0, or -1 with what failed in *what and the last
 * cuDNN status in *st. */
static int choose_dir(kb_cuda *impl, const kb_conv_desc *d, const conv_pad *pd, kb_precision mode,
                      int dir, size_t limit, struct kb_cuda_algo_memo *m, const char **what,
                      cudnnStatus_t *st)
{
    static const char *const find_what[NDIR] = {"forward algorithm search",
                                                "backward data algorithm search",
                                                "backward filter algorithm search"};
    const int det = !d->nondeterministic;
    /* bf16 first in BF16 mode; fp32 (TF32) when cuDNN runs no bf16 here */
    for (int bf16 = mode == KB_PREC_BF16; bf16 >= 0; bf16--) {
        conv_dir p = {};
        p.bf16 = bf16;
        int algo = 0;
        cudnnMathType_t math = CUDNN_DEFAULT_MATH;
        float ms = 0;
        *what = "descriptor";
        cudnnStatus_t s = dir_descs(d, pd, &p, search_math(mode, bf16));
        if (s == CUDNN_STATUS_SUCCESS) {
            *what = find_what[dir];
            s = dir_find(impl, dir, &p, limit, det, &algo, &math, &ms);
        }
        dir_free(&p);
        if (s == CUDNN_STATUS_SUCCESS) {
            m->dir[dir].algo = algo;
            m->dir[dir].math = mode == KB_PREC_FP32 ? CUDNN_FMA_MATH : (int)math;
            m->dir[dir].bf16 = bf16;
            m->dir[dir].ms = ms;
            return 0;
        }
        *st = s;
        if (bf16) {
            static int told;
            if (!told++)
                fprintf(stderr,
                        "cuda: cuDNN runs no bf16 NHWC %s for N=%d C=%d H=%d W=%d K=%d R=%d S=%d "
                        "(%s): that direction runs TF32 on fp32 copies (notice shown once)\n",
                        dir_names[dir], d->N, d->C, d->H, d->W, d->K, d->R, d->S,
                        cudnnGetErrorString(s));
        }
    }
    return -1;
}

/* Scratch one direction's call needs: the packed weight (no mirror), the
 * fp32 operand copies of the bf16 fallback, the weight gradient. */
static size_t dir_scratch(const kb_cuda *impl, const conv_pad *pd, int dir, const conv_dir *p)
{
    const int es = kb_cuda_esize(impl), cast = es == 2 && !p->bf16;
    size_t s = kb_cuda_align256(pd->nw * (cast ? 4 : es)); /* weight, or its gradient */
    if (cast)
        s += kb_cuda_align256(4 * (dir == DIR_FWD ? pd->nx + pd->ny : dir == DIR_BD ? pd->ny + pd->nx
                                                                                  : pd->nx + pd->ny));
    return s;
}

/* Plans `mode` for c: choices from the memo or by timing, descriptors,
 * workspace and scratch. 0, or -1 after printing why. */
static int plan_mode(kb_cuda *impl, kb_conv *c, kb_precision mode)
{
    const kb_conv_desc *d = &c->d;
    conv_mode *cm = &c->mode[mode];
    const kb_precision was = impl->precision;
    impl->precision = mode; /* the padding follows the mode planned */
    const conv_pad pd = pad_of(impl, d);
    const char *what = "descriptor";
    cudnnStatus_t st = CUDNN_STATUS_BAD_PARAM;
    const struct kb_cuda_algo_memo *memo = algo_memo_find(impl, d, mode);
    struct kb_cuda_algo_memo m;
    if (memo) {
        m = *memo;
    } else {
        memset(&m, 0, sizeof m);
        m.d = *d;
        m.precision = (int)mode;
        /* Workspace budget for the search: a quarter of free memory, at
         * most 1 GiB (algorithms that want more are rarely faster). */
        size_t free_b = 0, total_b = 0;
        KB_CUDA(cudaMemGetInfo(&free_b, &total_b));
        size_t limit = free_b / 4;
        if (limit > ((size_t)1 << 30))
            limit = (size_t)1 << 30;
        for (int i = 0; i < NDIR; i++)
            if (choose_dir(impl, d, &pd, mode, i, limit, &m, &what, &st) != 0)
                goto fail;
        algo_memo_add(impl, &m);
        if (conv_log())
            for (int i = 0; i < NDIR; i++)
                fprintf(stderr,
                        "conv N=%d C=%d H=%d W=%d K=%d R=%d S=%d stride=%d pad=%d %s %s: %s "
                        "algo %d %s, %.4f ms\n",
                        d->N, d->C, d->H, d->W, d->K, d->R, d->S, d->stride, d->pad,
                        kb_precision_name(mode), dir_names[i], m.dir[i].bf16 ? "bf16" : "fp32",
                        m.dir[i].algo, math_name(m.dir[i].math), m.dir[i].ms);
    }

    {
        size_t ws = 0, scratch = 0;
        for (int i = 0; i < NDIR; i++) {
            conv_dir *p = &cm->dir[i];
            dir_free(p);
            p->bf16 = m.dir[i].bf16;
            p->algo = m.dir[i].algo;
            what = "descriptor";
            if ((st = dir_descs(d, &pd, p, (cudnnMathType_t)m.dir[i].math)) != CUDNN_STATUS_SUCCESS)
                goto fail;
            what = "workspace size";
            size_t mem = 0;
            if ((st = dir_ws(impl, i, p, &mem)) != CUDNN_STATUS_SUCCESS)
                goto fail;
            ws = mem > ws ? mem : ws;
            size_t need = dir_scratch(impl, &pd, i, p);
            scratch = need > scratch ? need : scratch;
        }
        what = "workspace";
        if (kb_cuda_ws_reserve(impl, ws) != 0) {
            st = CUDNN_STATUS_ALLOC_FAILED;
            goto fail;
        }
        kb_cuda_scratch_reserve(impl, scratch); /* grown now, so calls never grow it */
    }
    impl->precision = was;
    cm->planned = 1;
    return 0;

fail:
    impl->precision = was;
    fprintf(stderr,
            "conv_plan: %s failed (%s) for N=%d C=%d H=%d W=%d K=%d R=%d S=%d stride=%d "
            "pad=%d P=%d Q=%d (%s)\n",
            what, cudnnGetErrorString(st), d->N, d->C, d->H, d->W, d->K, d->R, d->S, d->stride,
            d->pad, d->P, d->Q, kb_precision_name(mode));
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
    fprintf(stderr, "cuda: a convolution has no plan under %s\n", kb_precision_name(mode));
    abort(); /* its feature maps are in this mode's format: no other plan reads them */
}

/* One direction. a, b are the operands (x, w / dy, w / x, dy), o the
 * result (y, dx written or added to; dw added to); wm a mirror of w or
 * NULL. */
static void conv_run(kb_backend *be, kb_conv *c, int dir, const void *a, const float *w,
                     const void *wm, const void *b, void *o, int accumulate)
{
    kb_cuda *impl = kb_cuda_enter(be);
    conv_mode *cm = mode_ready(impl, c);
    if (!cm)
        return;
    const kb_conv_desc *d = &c->d;
    const conv_dir *p = &cm->dir[dir];
    const conv_pad pd = pad_of(impl, d);
    const int fm_bf16 = impl->precision == KB_PREC_BF16, cast = fm_bf16 && !p->bf16;
    char *s = (char *)kb_cuda_scratch(impl, dir_scratch(impl, &pd, dir, p)); /* reserved at plan time */
    char *s2 = s + kb_cuda_align256(pd.nw * (cast ? 4 : kb_cuda_esize(impl)));
    const float one = 1.0f, zero = 0.0f;
    /* the weight (forward, backward data) as cuDNN reads it; the bf16
     * fallback reads the bf16 mode's weight values too (the mirror's, or
     * w rounded), in fp32: only the math differs from the bf16 path */
    const void *wk = wm;
    if (dir != DIR_BW && cast && wm) {
        kb_cuda_cast(impl, wm, 1, s, 0, pd.nw);
        wk = s;
    } else if (dir != DIR_BW && !wm) {
        kb_cuda_weight_pack(impl, w, d->K, d->C, pd.RS, pd.Kp, pd.Cp, s, p->bf16, fm_bf16);
        wk = s;
    }
    /* the bf16 fallback: fp32 copies of the feature maps in, the result out */
    const size_t na = dir == DIR_BD ? pd.ny : pd.nx, nb = dir == DIR_BW ? pd.ny : 0;
    const size_t no = dir == DIR_FWD ? pd.ny : pd.nx;
    const void *ca = a, *cb = b;
    void *co = o;
    if (cast) {
        float *fa = (float *)s2, *fb = fa + na;
        kb_cuda_cast(impl, a, 1, fa, 0, na);
        ca = fa;
        if (dir == DIR_BW) {
            kb_cuda_cast(impl, b, 1, fb, 0, nb);
            cb = fb;
        } else {
            co = fb; /* the result, cast back below */
            if (accumulate)
                kb_cuda_cast(impl, o, 1, fb, 0, no);
        }
    }
    const float *beta = accumulate ? &one : &zero;
    const int wbytes = p->bf16 ? 2 : 4;
    switch (dir) {
    case DIR_FWD:
        KB_CUDNN(cudnnConvolutionForward(impl->cudnn, &one, p->xd, ca, p->wd, wk, p->cd,
                                         (cudnnConvolutionFwdAlgo_t)p->algo, impl->ws,
                                         impl->ws_bytes, &zero, p->yd, co));
        break;
    case DIR_BD:
        KB_CUDNN(cudnnConvolutionBackwardData(impl->cudnn, &one, p->wd, wk, p->yd, ca, p->cd,
                                              (cudnnConvolutionBwdDataAlgo_t)p->algo, impl->ws,
                                              impl->ws_bytes, beta, p->xd, co));
        break;
    default:
        /* the gradient alone, then added into the fp32 parameter gradient */
        KB_CUDNN(cudnnConvolutionBackwardFilter(impl->cudnn, &one, p->xd, ca, p->yd, cb, p->cd,
                                                (cudnnConvolutionBwdFilterAlgo_t)p->algo,
                                                impl->ws, impl->ws_bytes, &zero, p->wd, s));
        kb_cuda_weight_grad_add(impl, s, wbytes == 2, d->K, d->C, pd.RS, pd.Cp, (float *)o);
        return;
    }
    if (cast)
        kb_cuda_cast(impl, co, 0, o, 1, no);
}

static void cuda_conv_forward(kb_backend *be, kb_conv *c, const void *x /* (N,C,H,W) */,
                              const float *w /* (K,C,R,S) */, const void *wm,
                              void *y /* (N,K,P,Q) */)
{
    conv_run(be, c, DIR_FWD, x, w, wm, NULL, y, 0);
}

static void cuda_conv_backward_data(kb_backend *be, kb_conv *c, const void *dy /* (N,K,P,Q) */,
                                    const float *w /* (K,C,R,S) */, const void *wm,
                                    void *dx /* (N,C,H,W) */, int accumulate)
{
    conv_run(be, c, DIR_BD, dy, w, wm, NULL, dx, accumulate);
}

static void cuda_conv_backward_weight(kb_backend *be, kb_conv *c, const void *x /* (N,C,H,W) */,
                                      const void *dy /* (N,K,P,Q) */,
                                      float *dw /* (K,C,R,S), += */)
{
    conv_run(be, c, DIR_BW, x, NULL, NULL, dy, dw, 0);
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
