/* Convolutions on oneDNN 2.x (v2 C API: op descriptors, then
 * dnnl_primitive_desc_create).
 *
 * oneDNN picks its own (blocked) layouts for every tensor (format_tag_any),
 * which is where its speed comes from; at the interface we read and write
 * NCHW / KCRS, so each call reorders its inputs into the primitive's layout
 * and its output back. Everything that depends only on the shape (primitive
 * descriptors, primitives, reorders, memory objects) is built once in
 * conv_plan; the blocked copies and scratchpads live in the backend's shared
 * arena (see kb_cpu). */
#include <math.h>
#include <string.h>

#include <dnnl_debug.h>

#include "kernels/cpu/cpu.h"

#define KB_ARENA_ALIGN 64

/* One tensor argument of a primitive. */
typedef struct conv_arg {
    int id;                   /* DNNL_ARG_* */
    int is_output;
    dnnl_memory_t user;       /* interface layout; handle set per call */
    dnnl_memory_t inner;      /* primitive layout in the arena; NULL: use user */
    dnnl_primitive_t reorder; /* user->inner (input) or inner->user (output) */
    size_t off;               /* arena offset of inner */
} conv_arg;

/* One direction: forward, backward data or backward weights. */
typedef struct conv_pass {
    dnnl_primitive_t prim;
    conv_arg args[3];
    dnnl_memory_t scratch; /* NULL when the primitive needs none */
    size_t scratch_off;
    size_t bytes; /* arena bytes this pass needs */
} conv_pass;

struct kb_conv {
    kb_conv_desc d;
    conv_pass fwd, bwd_data, bwd_data_acc, bwd_weight;
};

static size_t align_up(size_t n) { return (n + KB_ARENA_ALIGN - 1) / KB_ARENA_ALIGN * KB_ARENA_ALIGN; }

static void pass_free(conv_pass *p)
{
    if (p->prim)
        dnnl_primitive_destroy(p->prim);
    if (p->scratch)
        dnnl_memory_destroy(p->scratch);
    for (int i = 0; i < 3; i++) {
        conv_arg *a = &p->args[i];
        if (a->user)
            dnnl_memory_destroy(a->user);
        if (a->inner)
            dnnl_memory_destroy(a->inner);
        if (a->reorder)
            dnnl_primitive_destroy(a->reorder);
    }
    memset(p, 0, sizeof *p);
}

/* Sets up argument `a` of a pass: a user-layout memory object and, where the
 * primitive wants another layout (or the output must be accumulated, which
 * the reorder's sum post-op does), an arena copy plus the reorder. */
static dnnl_status_t arg_init(kb_cpu *impl, conv_pass *p, conv_arg *a, int id, int is_output,
                              int accumulate, const dnnl_memory_desc_t *user_md,
                              const dnnl_memory_desc_t *prim_md)
{
    dnnl_status_t st;
    a->id = id;
    a->is_output = is_output;
    st = dnnl_memory_create(&a->user, user_md, impl->engine, DNNL_MEMORY_NONE);
    if (st != dnnl_success)
        return st;
    if (!accumulate && dnnl_memory_desc_equal(user_md, prim_md))
        return dnnl_success;

    st = dnnl_memory_create(&a->inner, prim_md, impl->engine, DNNL_MEMORY_NONE);
    if (st != dnnl_success)
        return st;
    a->off = p->bytes;
    p->bytes += align_up(dnnl_memory_desc_get_size(prim_md));

    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    if (accumulate) {
        st = dnnl_primitive_attr_create(&attr);
        if (st == dnnl_success)
            st = dnnl_post_ops_create(&po);
        if (st == dnnl_success)
            st = dnnl_post_ops_append_sum(po, 1.0f);
        if (st == dnnl_success)
            st = dnnl_primitive_attr_set_post_ops(attr, po);
    }
    dnnl_primitive_desc_t rpd = NULL;
    if (st == dnnl_success) {
        if (is_output)
            st = dnnl_reorder_primitive_desc_create(&rpd, prim_md, impl->engine, user_md,
                                                    impl->engine, attr);
        else
            st = dnnl_reorder_primitive_desc_create(&rpd, user_md, impl->engine, prim_md,
                                                    impl->engine, attr);
    }
    if (st == dnnl_success)
        st = dnnl_primitive_create(&a->reorder, rpd);
    if (rpd)
        dnnl_primitive_desc_destroy(rpd);
    if (po)
        dnnl_post_ops_destroy(po);
    if (attr)
        dnnl_primitive_attr_destroy(attr);
    return st;
}

/* Builds a pass from its primitive descriptor. ids/queries/outs/accs list
 * the three tensor arguments; user_mds their interface layouts. */
static dnnl_status_t pass_init(kb_cpu *impl, conv_pass *p, const_dnnl_primitive_desc_t pd,
                               const int ids[3], const dnnl_query_t queries[3],
                               const int outs[3], const int accs[3],
                               const dnnl_memory_desc_t *user_mds[3])
{
    dnnl_status_t st = dnnl_primitive_create(&p->prim, pd);
    if (st != dnnl_success)
        return st;
    for (int i = 0; i < 3; i++) {
        const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, queries[i], 0);
        if (!md)
            return dnnl_runtime_error;
        st = arg_init(impl, p, &p->args[i], ids[i], outs[i], accs[i], user_mds[i], md);
        if (st != dnnl_success)
            return st;
    }
    const dnnl_memory_desc_t *smd = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    size_t sbytes = smd ? dnnl_memory_desc_get_size(smd) : 0;
    if (sbytes > 0) {
        st = dnnl_memory_create(&p->scratch, smd, impl->engine, DNNL_MEMORY_NONE);
        if (st != dnnl_success)
            return st;
        p->scratch_off = p->bytes;
        p->bytes += align_up(sbytes);
    }
    return dnnl_success;
}

/* ptrs: the three interface pointers, in args[] order. */
static void pass_run(kb_cpu *impl, conv_pass *p, void *const ptrs[3])
{
    char *arena = impl->arena;
    dnnl_exec_arg_t ex[4];
    int nex = 0;
    kb_cpu_set_threads(impl);
    for (int i = 0; i < 3; i++) {
        conv_arg *a = &p->args[i];
        KB_CPU_DNNL(dnnl_memory_set_data_handle(a->user, ptrs[i]));
        if (a->inner) {
            KB_CPU_DNNL(dnnl_memory_set_data_handle(a->inner, arena + a->off));
            if (!a->is_output) {
                dnnl_exec_arg_t r[2] = {{DNNL_ARG_SRC, a->user}, {DNNL_ARG_DST, a->inner}};
                KB_CPU_DNNL(dnnl_primitive_execute(a->reorder, impl->stream, 2, r));
            }
        }
        ex[nex++] = (dnnl_exec_arg_t){a->id, a->inner ? a->inner : a->user};
    }
    if (p->scratch) {
        KB_CPU_DNNL(dnnl_memory_set_data_handle(p->scratch, arena + p->scratch_off));
        ex[nex++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, p->scratch};
    }
    KB_CPU_DNNL(dnnl_primitive_execute(p->prim, impl->stream, nex, ex));
    for (int i = 0; i < 3; i++) {
        conv_arg *a = &p->args[i];
        if (a->inner && a->is_output) {
            dnnl_exec_arg_t r[2] = {{DNNL_ARG_SRC, a->inner}, {DNNL_ARG_DST, a->user}};
            KB_CPU_DNNL(dnnl_primitive_execute(a->reorder, impl->stream, 2, r));
        }
    }
    KB_CPU_DNNL(dnnl_stream_wait(impl->stream));
}

static void cpu_conv_free(kb_backend *be, kb_conv *c)
{
    (void)be;
    if (!c)
        return;
    pass_free(&c->fwd);
    pass_free(&c->bwd_data);
    pass_free(&c->bwd_data_acc);
    pass_free(&c->bwd_weight);
    free(c);
}

static kb_conv *cpu_conv_plan(kb_backend *be, const kb_conv_desc *d)
{
    kb_cpu *impl = kb_cpu_of(be);
    const char *what = "shape";
    dnnl_status_t st = dnnl_invalid_arguments;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t fpd = NULL, dpd = NULL, wpd = NULL;
    kb_conv *c = NULL;

    if (d->N < 1 || d->C < 1 || d->H < 1 || d->W < 1 || d->K < 1 || d->R < 1 || d->S < 1 ||
        d->stride < 1 || d->pad < 0 || d->P < 1 || d->Q < 1 ||
        d->P != (d->H + 2 * d->pad - d->R) / d->stride + 1 ||
        d->Q != (d->W + 2 * d->pad - d->S) / d->stride + 1)
        goto fail;

    c = calloc(1, sizeof *c);
    st = dnnl_out_of_memory;
    what = "calloc";
    if (!c)
        goto fail;
    c->d = *d;
    kb_cpu_set_threads(impl); /* oneDNN picks kernels for the team size */

    dnnl_memory_desc_t x_u, w_u, y_u, x_a, w_a, y_a;
    const dnnl_dims_t xd = {d->N, d->C, d->H, d->W};
    const dnnl_dims_t wd = {d->K, d->C, d->R, d->S};
    const dnnl_dims_t yd = {d->N, d->K, d->P, d->Q};
    /* Right padding is whatever makes the output exactly P x Q (it is smaller
     * than pad, even negative, when the last window does not reach the edge). */
    const dnnl_dims_t strides = {d->stride, d->stride};
    const dnnl_dims_t pad_l = {d->pad, d->pad};
    const dnnl_dims_t pad_r = {(d->P - 1) * d->stride + d->R - d->H - d->pad,
                               (d->Q - 1) * d->stride + d->S - d->W - d->pad};
    what = "memory desc";
    st = dnnl_memory_desc_init_by_tag(&x_u, 4, xd, dnnl_f32, dnnl_nchw);
    if (st == dnnl_success)
        st = dnnl_memory_desc_init_by_tag(&w_u, 4, wd, dnnl_f32, dnnl_oihw);
    if (st == dnnl_success)
        st = dnnl_memory_desc_init_by_tag(&y_u, 4, yd, dnnl_f32, dnnl_nchw);
    if (st == dnnl_success)
        st = dnnl_memory_desc_init_by_tag(&x_a, 4, xd, dnnl_f32, dnnl_format_tag_any);
    if (st == dnnl_success)
        st = dnnl_memory_desc_init_by_tag(&w_a, 4, wd, dnnl_f32, dnnl_format_tag_any);
    if (st == dnnl_success)
        st = dnnl_memory_desc_init_by_tag(&y_a, 4, yd, dnnl_f32, dnnl_format_tag_any);
    if (st != dnnl_success)
        goto fail;

    what = "attr";
    st = dnnl_primitive_attr_create(&attr);
    if (st == dnnl_success)
        st = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
    if (st != dnnl_success)
        goto fail;

    dnnl_convolution_desc_t fd, dd, wdsc;
    what = "forward";
    st = dnnl_convolution_forward_desc_init(&fd, dnnl_forward_training, dnnl_convolution_direct,
                                            &x_a, &w_a, NULL, &y_a, strides, pad_l, pad_r);
    if (st == dnnl_success)
        st = dnnl_primitive_desc_create(&fpd, &fd, attr, impl->engine, NULL);
    if (st != dnnl_success)
        goto fail;
    what = "backward data";
    st = dnnl_convolution_backward_data_desc_init(&dd, dnnl_convolution_direct, &x_a, &w_a,
                                                  &y_a, strides, pad_l, pad_r);
    if (st == dnnl_success)
        st = dnnl_primitive_desc_create(&dpd, &dd, attr, impl->engine, fpd);
    if (st != dnnl_success)
        goto fail;
    what = "backward weights";
    st = dnnl_convolution_backward_weights_desc_init(&wdsc, dnnl_convolution_direct, &x_a, &w_a,
                                                     NULL, &y_a, strides, pad_l, pad_r);
    if (st == dnnl_success)
        st = dnnl_primitive_desc_create(&wpd, &wdsc, attr, impl->engine, fpd);
    if (st != dnnl_success)
        goto fail;

    {
        const int no[3] = {0, 0, 0};
        what = "forward primitive";
        const int fids[3] = {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_DST};
        const dnnl_query_t fq[3] = {dnnl_query_src_md, dnnl_query_weights_md, dnnl_query_dst_md};
        const int fout[3] = {0, 0, 1};
        const dnnl_memory_desc_t *fu[3] = {&x_u, &w_u, &y_u};
        st = pass_init(impl, &c->fwd, fpd, fids, fq, fout, no, fu);
        if (st != dnnl_success)
            goto fail;

        what = "backward data primitive";
        const int dids[3] = {DNNL_ARG_DIFF_DST, DNNL_ARG_WEIGHTS, DNNL_ARG_DIFF_SRC};
        const dnnl_query_t dq[3] = {dnnl_query_diff_dst_md, dnnl_query_weights_md,
                                    dnnl_query_diff_src_md};
        const dnnl_memory_desc_t *du[3] = {&y_u, &w_u, &x_u};
        st = pass_init(impl, &c->bwd_data, dpd, dids, dq, fout, no, du);
        if (st != dnnl_success)
            goto fail;
        /* the same, adding into dx (a residual's gradient already there) */
        const int dacc[3] = {0, 0, 1};
        st = pass_init(impl, &c->bwd_data_acc, dpd, dids, dq, fout, dacc, du);
        if (st != dnnl_success)
            goto fail;

        /* oneDNN overwrites diff_weights; the contract accumulates, so the
         * result always goes through the arena and a reorder with sum. */
        what = "backward weights primitive";
        const int wids[3] = {DNNL_ARG_SRC, DNNL_ARG_DIFF_DST, DNNL_ARG_DIFF_WEIGHTS};
        const dnnl_query_t wq[3] = {dnnl_query_src_md, dnnl_query_diff_dst_md,
                                    dnnl_query_diff_weights_md};
        const int wacc[3] = {0, 0, 1};
        const dnnl_memory_desc_t *wu[3] = {&x_u, &y_u, &w_u};
        st = pass_init(impl, &c->bwd_weight, wpd, wids, wq, fout, wacc, wu);
        if (st != dnnl_success)
            goto fail;
    }

    what = "arena";
    size_t need = c->fwd.bytes;
    if (c->bwd_data.bytes > need)
        need = c->bwd_data.bytes;
    if (c->bwd_data_acc.bytes > need)
        need = c->bwd_data_acc.bytes;
    if (c->bwd_weight.bytes > need)
        need = c->bwd_weight.bytes;
    st = dnnl_out_of_memory;
    if (kb_cpu_arena_reserve(impl, need) != 0)
        goto fail;

    dnnl_primitive_desc_destroy(fpd);
    dnnl_primitive_desc_destroy(dpd);
    dnnl_primitive_desc_destroy(wpd);
    dnnl_primitive_attr_destroy(attr);
    return c;

fail:
    fprintf(stderr,
            "conv_plan: %s failed (%s) for N=%d C=%d H=%d W=%d K=%d R=%d S=%d stride=%d "
            "pad=%d P=%d Q=%d\n",
            what, dnnl_status2str(st), d->N, d->C, d->H, d->W, d->K, d->R, d->S, d->stride,
            d->pad, d->P, d->Q);
    if (fpd)
        dnnl_primitive_desc_destroy(fpd);
    if (dpd)
        dnnl_primitive_desc_destroy(dpd);
    if (wpd)
        dnnl_primitive_desc_destroy(wpd);
    if (attr)
        dnnl_primitive_attr_destroy(attr);
    cpu_conv_free(be, c);
    return NULL;
}

/* How a result meets its destination under round_bf16. */
enum { OUT_WRITE, OUT_ADD_FP32, OUT_ADD_BF16 };

/* With round_bf16 (kb_cpu_emulate_rounding), as the CUDA backend's bf16 mode
 * (kernels/cuda/conv2d.cu): both operands are rounded to bf16, the
 * convolution runs on the rounded copies in fp32, and its result is rounded
 * to bf16 once (cuDNN writes a bf16 y, dx or dw). A weight gradient is
 * computed alone, rounded, then added into dw in fp32 (OUT_ADD_FP32); a dx
 * added to the residual's gradient is rounded once after the add, as
 * cuDNN's beta = 1 does in a bf16 feature map (OUT_ADD_BF16). */
static void conv_run_bf16(kb_cpu *impl, conv_pass *p, const float *a, size_t na, const float *b,
                          size_t nb, float *o, size_t no, int out)
{
    float *ar = kb_cpu_bf16_copy(impl, a, na), *br = kb_cpu_bf16_copy(impl, b, nb);
    float *t = out != OUT_WRITE ? calloc(no ? no : 1, sizeof(float)) : o;
    KB_CPU_CHECK(ar && br && t); /* test-only mode: no OOM path */
    void *const ptrs[3] = {ar, br, t};
    pass_run(impl, p, ptrs);
    if (impl->jitter) { /* kb_cpu_jitter_sums */
        uint64_t call = ++impl->jitter_calls;
        for (size_t i = 0; i < no; i++) {
            uint64_t z = (i + 1) * 0x9E3779B97F4A7C15ull ^ (call * 0xD1B54A32D192ED03ull) ^
                         (impl->jitter * 0xBF58476D1CE4E5B9ull);
            z ^= z >> 31;
            z *= 0x94D049BB133111EBull;
            t[i] = nextafterf(t[i], (z >> 40) & 1 ? INFINITY : -INFINITY);
        }
    }
    if (out == OUT_ADD_BF16) {
        for (size_t i = 0; i < no; i++)
            o[i] = kb_cpu_bf16(o[i] + t[i]);
        free(t);
    } else {
        kb_cpu_bf16_round(impl, t, no);
        if (out == OUT_ADD_FP32) {
            for (size_t i = 0; i < no; i++)
                o[i] += t[i];
            free(t);
        }
    }
    free(ar);
    free(br);
}

static size_t n_x(const kb_conv_desc *d) { return (size_t)d->N * d->C * d->H * d->W; }
static size_t n_w(const kb_conv_desc *d) { return (size_t)d->K * d->C * d->R * d->S; }
static size_t n_y(const kb_conv_desc *d) { return (size_t)d->N * d->K * d->P * d->Q; }

/* Feature maps are fp32 NCHW here; the mirror argument is unused (the
 * backend has no mirrors). */
static void cpu_conv_forward(kb_backend *be, kb_conv *c, const void *x, const float *w,
                             const void *wm, void *y)
{
    kb_cpu *impl = kb_cpu_of(be);
    if (impl->round_bf16) {
        conv_run_bf16(impl, &c->fwd, x, n_x(&c->d), w, n_w(&c->d), y, n_y(&c->d), OUT_WRITE);
        return;
    }
    void *const ptrs[3] = {(void *)x, (void *)w, y};
    pass_run(impl, &c->fwd, ptrs);
}

static void cpu_conv_backward_data(kb_backend *be, kb_conv *c, const void *dy, const float *w,
                                   const void *wm, void *dx, int accumulate)
{
    kb_cpu *impl = kb_cpu_of(be);
    if (impl->round_bf16) {
        conv_run_bf16(impl, &c->bwd_data, dy, n_y(&c->d), w,
                      n_w(&c->d), dx, n_x(&c->d), accumulate ? OUT_ADD_BF16 : OUT_WRITE);
        return;
    }
    void *const ptrs[3] = {(void *)dy, (void *)w, dx};
    pass_run(impl, accumulate ? &c->bwd_data_acc : &c->bwd_data, ptrs);
}

static void cpu_conv_backward_weight(kb_backend *be, kb_conv *c, const void *x, const void *dy,
                                     float *dw)
{
    kb_cpu *impl = kb_cpu_of(be);
    if (impl->round_bf16) {
        conv_run_bf16(impl, &c->bwd_weight, x, n_x(&c->d), dy, n_y(&c->d), dw, n_w(&c->d),
                      OUT_ADD_FP32);
        return;
    }
    void *const ptrs[3] = {(void *)x, (void *)dy, dw};
    pass_run(impl, &c->bwd_weight, ptrs);
}

void kb_cpu_conv_init(kb_backend *be)
{
    be->conv_plan = cpu_conv_plan;
    be->conv_free = cpu_conv_free;
    be->conv_forward = cpu_conv_forward;
    be->conv_backward_data = cpu_conv_backward_data;
    be->conv_backward_weight = cpu_conv_backward_weight;
}
