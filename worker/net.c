/* One network run layer by layer on the backend (see net.h). */
#include "worker/net.h"

#include <stdio.h>
#include <stdlib.h>

void *net_grow(rw_net *n, buf *b, size_t bytes)
{
    if (b->cap >= bytes)
        return b->p;
    kb_backend *be = n->m->be;
    if (b->p)
        be->free(be, b->p);
    n->m->mem_gen++; /* a captured step held the old address */
    b->p = be->alloc(be, bytes);
    b->cap = b->p ? bytes : 0;
    if (!b->p) {
        fprintf(stderr, "runaway: out of memory allocating %zu bytes of activations\n", bytes);
        n->m->failed = 1;
    }
    return b->p;
}

static void *act(rw_net *n, int id, size_t bytes)
{
    if (bytes > n->maxact)
        n->maxact = bytes;
    return net_grow(n, &n->act[id], bytes);
}

/* An activation of fp32 rows (N, D). */
float *net_rows(rw_net *n, int id, int N, int D)
{
    return act(n, id, (size_t)N * D * sizeof(float));
}

/* A feature map (N, C, H, W) in the backend's format. */
void *net_fmap(rw_net *n, int id, int N, int C, int H, int W)
{
    return act(n, id, n->m->be->fmap_bytes(n->m->be, N, C, H, W));
}

void *net_scratch(rw_net *n, int k)
{
    return net_grow(n, &n->scratch[k], n->maxact);
}

int net_init(rw_net *n, net_ctx *m, float *P, float *G, float *S, long *nbt)
{
    n->m = m;
    n->P = P; n->G = G; n->S = S; n->nbt = nbt;
    n->groups = 1;
    n->act = calloc((size_t)m->a->nact, sizeof *n->act);
    n->hw = calloc((size_t)m->a->nact, sizeof *n->hw);
    return n->act && n->hw ? 0 : -1;
}

void net_free(rw_net *n)
{
    kb_backend *be = n->m->be;
    if (n->act)
        for (int i = 0; i < n->m->a->nact; i++)
            if (n->act[i].p)
                be->free(be, n->act[i].p);
    for (int k = 0; k < NSCRATCH; k++)
        if (n->scratch[k].p)
            be->free(be, n->scratch[k].p);
    if (n->mr)
        be->mirror_free(be, n->mr);
    if (n->mr_pred)
        be->mirror_free(be, n->mr_pred);
    free(n->act);
    free(n->hw);
}

/* The copy of the weight at param offset off that the ops read, or NULL. */
static const void *wm(rw_net *n, size_t off)
{
    kb_backend *be = n->m->be;
    if (n->mr_pred && off >= n->pred_off)
        return be->mirror_at(be, n->mr_pred, off - n->pred_off);
    return n->mr ? be->mirror_at(be, n->mr, off) : NULL;
}

/* ------------------------------------------------------------ conv / bn */

static kb_conv *conv_plan(net_ctx *m, conv_l *c, int N, int H, int W)
{
    for (int i = 0; i < c->ncache; i++) {
        kb_conv_desc *d = &c->cache[i].d;
        if (d->N == N && d->H == H && d->W == W)
            return c->cache[i].plan;
    }
    kb_conv_desc d;
    kb_conv_desc_init(&d, N, c->C, H, W, c->K, c->R, c->S, c->stride, c->pad);
    d.nondeterministic = m->a->cfg.nondeterministic;
    kb_conv *plan = m->be->conv_plan(m->be, &d);
    if (!plan) {
        m->failed = 1;
        return NULL;
    }
    int slot;
    if (c->ncache < PLAN_CACHE) {
        slot = c->ncache++;
    } else {
        slot = c->next;
        c->next = (c->next + 1) % PLAN_CACHE;
        m->be->conv_free(m->be, c->cache[slot].plan);
    }
    c->cache[slot].d = d;
    c->cache[slot].plan = plan;
    return plan;
}

/* y (N,K,P,Q) = conv(x (N,C,H,W)); H, W updated to P, Q. */
static void *conv_fwd(rw_net *n, conv_l *c, const void *x, int N, int *H, int *W)
{
    kb_backend *be = n->m->be;
    kb_conv *plan = conv_plan(n->m, c, N, *H, *W);
    int P = (*H + 2 * c->pad - c->R) / c->stride + 1;
    int Q = (*W + 2 * c->pad - c->S) / c->stride + 1;
    void *y = net_fmap(n, c->id, N, c->K, P, Q);
    n->hw[c->id] = *H;
    if (!plan || !y)
        return y;
    be->conv_forward(be, plan, x, n->P + c->w, wm(n, c->w), y);
    *H = P;
    *W = Q;
    return y;
}

/* Weight gradient accumulated; dx (N,C,H,W) written (or added to, when
 * accumulate) unless NULL. */
static void conv_bwd(rw_net *n, conv_l *c, const void *x, const void *dy, void *dx, int N,
                     int accumulate)
{
    kb_backend *be = n->m->be;
    int H = n->hw[c->id];
    kb_conv *plan = conv_plan(n->m, c, N, H, H);
    if (!plan)
        return;
    be->conv_backward_weight(be, plan, x, dy, n->G + c->w);
    if (dx)
        be->conv_backward_data(be, plan, dy, n->P + c->w, wm(n, c->w), dx, accumulate);
}

/* The op descriptor of b over N samples (groups: n->groups in training). */
static kb_bn bn_desc(rw_net *n, bn_l *b, int N, int HW, int is_rows, int relu, int train)
{
    kb_bn d = {
        .N = N, .C = b->C, .HW = HW, .groups = train ? n->groups : 1, .rows = is_rows,
        .relu = relu, .eps = RW_BN_EPS, .momentum = RW_BN_MOMENTUM,
        .gamma = n->P + b->gamma, .beta = n->P + b->beta,
        .running_mean = n->S + b->rmean, .running_var = n->S + b->rvar,
    };
    return d;
}

/* SyncBN's average over the ranks: queued in the backend's queue where it
 * can (the step stays one graph), else a blocking all-reduce. */
static int sync_average(net_ctx *m, float *v, size_t n)
{
    kb_backend *be = m->be;
    if (m->comm_queued) {
        if (be->comm_allreduce(be, m->comm, v, n, 1, 0) != 0) {
            snprintf(m->error, sizeof m->error, "sync_bn: %s refused a queued all-reduce",
                     m->comm->name);
            m->failed = 1;
            return -1;
        }
        be->comm_join(be);
        return 0;
    }
    if (m->comm->allreduce(m->comm, v, n, KB_REDUCE_AVG, m->error, sizeof m->error) != 0) {
        m->failed = 1;
        return -1;
    }
    return 0;
}

/* The op d of layer b: y (the output, oh x ow pixels, into b's buffer) =
 * relu?(bn(x) + res), pooled where d asks. */
static void *bn_run(rw_net *n, bn_l *b, kb_bn d, const void *x, const void *res, int oh, int ow,
                    int train)
{
    kb_backend *be = n->m->be;
    net_ctx *m = n->m;
    const int N = d.N, HW = d.HW;
    void *y = d.rows ? (void *)net_rows(n, b->id_y, N, b->C) : net_fmap(n, b->id_y, N, b->C, oh, ow);
    d.save_mean = net_rows(n, b->id_mean, d.groups, b->C);
    d.save_invstd = net_rows(n, b->id_inv, d.groups, b->C);
    if (!y || !d.save_mean || !d.save_invstd)
        return NULL;
    if (train && m->sync_bn) {
        const size_t ns = (size_t)d.groups * 3 * b->C;
        float *st = net_grow(n, &m->syncbuf, ns * sizeof(float));
        if (!st)
            return NULL;
        be->bn_stats(be, &d, x, st);
        if (sync_average(m, st, ns) != 0)
            return NULL;
        be->bn_forward(be, &d, x, st, (double)(N / d.groups) * HW * m->comm->world, res, y);
    } else if (train) {
        be->bn_forward(be, &d, x, NULL, 0.0, res, y);
    } else {
        be->bn_forward_eval(be, &d, x, res, y);
    }
    if (train)
        n->nbt[b->idx] += d.groups;
    return y;
}

/* y = relu?(bn(x) + res); res NULL or like y. Rows (fp32 (N, C)) or a
 * feature map (N, C, HW). */
static void *bn_fwd(rw_net *n, bn_l *b, const void *x, const void *res, int N, int HW,
                    int is_rows, int relu, int train)
{
    return bn_run(n, b, bn_desc(n, b, N, HW, is_rows, relu, train), x, res, HW, 1, train);
}

/* The backward of op d of layer b: dy the gradient of its output; dx
 * written, dres (or NULL) the gradient of its residual. The ReLU's mask
 * from the forward's output where it had a residual (res), else from x
 * (not reading the output). */
static void bn_back(rw_net *n, bn_l *b, kb_bn d, const void *x, const void *dy, void *dx,
                    void *dres, int res)
{
    kb_backend *be = n->m->be;
    net_ctx *m = n->m;
    const int relu = d.relu;
    d.save_mean = net_rows(n, b->id_mean, d.groups, b->C);
    d.save_invstd = net_rows(n, b->id_inv, d.groups, b->C);
    const void *y = relu && res ? n->act[b->id_y].p : NULL;
    float *dg = n->G + b->gamma, *db = n->G + b->beta;
    if (m->failed)
        return;
    if (m->sync_bn) {
        const size_t nr = (size_t)d.groups * 2 * b->C;
        float *red = net_grow(n, &m->syncbuf, nr * sizeof(float));
        if (!red)
            return;
        be->bn_backward_reduce(be, &d, x, y, dy, red, dg, db);
        if (sync_average(m, red, nr) != 0)
            return;
        be->bn_backward(be, &d, x, y, dy, red, NULL, NULL, dx, dres);
        return;
    }
    be->bn_backward(be, &d, x, y, dy, NULL, dg, db, dx, dres);
}

static void bn_bwd(rw_net *n, bn_l *b, const void *x, const void *dy, void *dx, void *dres,
                   int N, int HW, int is_rows, int relu, int res)
{
    bn_back(n, b, bn_desc(n, b, N, HW, is_rows, relu, 1), x, dy, dx, dres, res);
}

float *lin_fwd(rw_net *n, lin_l *l, const float *x, int N)
{
    kb_backend *be = n->m->be;
    float *y = net_rows(n, l->id, N, l->O);
    if (y)
        be->linear_forward(be, x, N, l->I, n->P + l->w, wm(n, l->w),
                           l->has_b ? n->P + l->b : NULL, l->O, y);
    return y;
}

void lin_bwd(rw_net *n, lin_l *l, const float *x, const float *dy, float *dx, int N)
{
    kb_backend *be = n->m->be;
    be->linear_backward(be, x, n->P + l->w, wm(n, l->w), dy, N, l->I, l->O, dx, n->G + l->w,
                        l->has_b ? n->G + l->b : NULL);
}

/* -------------------------------------------------------------- encoder */

/* The block (arch.h's block_l) on x; returns its last batch norm's buffer,
 * the block's output. */
static void *block_fwd(rw_net *n, block_l *b, const void *x, int N, int *H, int *W, int train)
{
    int h0 = *H, w0 = *W;
    void *a1 = conv_fwd(n, &b->c1, x, N, H, W);
    void *r1 = bn_fwd(n, &b->b1, a1, NULL, N, *H * *W, 0, 1, train);
    if (n->m->failed)
        return NULL;
    void *last = conv_fwd(n, &b->c2, r1, N, H, W);
    if (b->bottleneck) {
        void *r2 = bn_fwd(n, &b->b2, last, NULL, N, *H * *W, 0, 1, train);
        if (n->m->failed)
            return NULL;
        last = conv_fwd(n, &b->c3, r2, N, H, W);
    }
    const void *res = x;
    if (b->down) {
        int hd = h0, wd = w0;
        void *ad = conv_fwd(n, &b->cd, x, N, &hd, &wd);
        res = bn_fwd(n, &b->bd, ad, NULL, N, hd * wd, 0, 0, train);
    }
    if (n->m->failed)
        return NULL;
    return bn_fwd(n, block_out(b), last, res, N, *H * *W, 0, 1, train);
}

/* dout: gradient of the block output; dx (block input size) written. */
static void block_bwd(rw_net *n, block_l *b, const void *x, const void *dout, void *dx, int N)
{
    /* pixels of the block's output (the input of its last, stride-1
     * convolution) and of conv1's output (stride 1 in a bottleneck) */
    conv_l *last = b->bottleneck ? &b->c3 : &b->c2;
    const int hw = n->hw[last->id] * n->hw[last->id];
    const int hw1 = b->bottleneck ? n->hw[b->c1.id] * n->hw[b->c1.id] : hw;
    void *dS = net_scratch(n, 2), *t1 = net_scratch(n, 3), *t2 = net_scratch(n, 4);
    if (n->m->failed)
        return;
    /* the last BN's residual gradient goes to the shortcut: straight into
     * dx, to which conv1's data gradient then adds, or through the
     * downsample */
    bn_bwd(n, block_out(b), n->act[last->id].p, dout, t1, b->down ? dS : dx, N, hw, 0, 1, 1);
    if (b->bottleneck) {
        conv_bwd(n, &b->c3, n->act[b->b2.id_y].p, t1, t2, N, 0);
        bn_bwd(n, &b->b2, n->act[b->c2.id].p, t2, t1, NULL, N, hw, 0, 1, 0);
    }
    conv_bwd(n, &b->c2, n->act[b->b1.id_y].p, t1, t2, N, 0);
    bn_bwd(n, &b->b1, n->act[b->c1.id].p, t2, t1, NULL, N, hw1, 0, 1, 0);
    if (b->down) {
        bn_bwd(n, &b->bd, n->act[b->cd.id].p, dS, t2, NULL, N, hw, 0, 0, 0);
        conv_bwd(n, &b->cd, x, t2, dx, N, 0);
    }
    conv_bwd(n, &b->c1, x, t1, dx, N, 1);
}

/* The stem's batch norm (and ReLU, and the ImageNet stem's 3 x 3 stride-2
 * max pool, which the op folds in) over conv1's (H, W) map. */
static kb_bn stem_desc(rw_net *n, int N, int H, int W, int train)
{
    arch *a = n->m->a;
    kb_bn d = bn_desc(n, &a->bn1, N, H * W, 0, 1, train);
    if (a->maxpool) {
        d.pool = 3;
        d.pool_stride = 2;
        d.pool_pad = 1;
        d.W = W;
    }
    return d;
}

/* The input of block 0: the stem's (pooled) output. */
static const void *stem_out(rw_net *n)
{
    return n->act[n->m->a->bn1.id_y].p;
}

/* x (N,3,S,S) feature map -> features (N, F) fp32 rows. */
float *enc_fwd(rw_net *n, const void *x, int N, int S, int train)
{
    kb_backend *be = n->m->be;
    arch *a = n->m->a;
    int H = S, W = S;
    void *y = conv_fwd(n, &a->conv1, x, N, &H, &W);
    if (n->m->failed)
        return NULL;
    kb_bn d = stem_desc(n, N, H, W, train);
    if (d.pool) {
        H = kb_pool_out(H, d.pool, d.pool_stride, d.pool_pad);
        W = kb_pool_out(W, d.pool, d.pool_stride, d.pool_pad);
        /* the winners (a byte each) only where a backward pass will want them */
        if (n->G && train)
            d.pool_idx = act(n, a->id_pool_idx, (size_t)N * a->conv1.K * H * W);
        if (n->m->failed)
            return NULL;
    }
    const void *cur = bn_run(n, &a->bn1, d, y, NULL, H, W, train);
    if (n->m->failed)
        return NULL;
    for (int i = 0; i < a->nblocks; i++) {
        cur = block_fwd(n, &a->blocks[i], cur, N, &H, &W, train);
        if (!cur)
            return NULL;
    }
    float *f = net_rows(n, a->id_feat, N, a->F);
    if (!f)
        return NULL;
    n->hw[a->id_feat] = H;
    be->avgpool_forward(be, cur, N, a->F, H * W, f);
    return f;
}

static void grads_ready(rw_net *n, size_t from)
{
    if (n->m->grads_ready && n->G && !n->m->failed)
        n->m->grads_ready(n->m->grads_ready_ud, from);
}

/* dfeat (N, F) -> parameter gradients of the encoder. */
void enc_bwd(rw_net *n, const void *x, const float *dfeat, int N)
{
    kb_backend *be = n->m->be;
    arch *a = n->m->a;
    int H = n->hw[a->id_feat];
    void *g = net_scratch(n, 0), *gx = net_scratch(n, 1);
    if (n->m->failed)
        return;
    /* the heads' backward came first: their gradients are final */
    grads_ready(n, a->p1.w);
    be->avgpool_backward(be, dfeat, N, a->F, H * H, g);
    for (int i = a->nblocks - 1; i >= 0; i--) {
        const void *bx = i > 0 ? n->act[block_out(&a->blocks[i - 1])->id_y].p : stem_out(n);
        block_bwd(n, &a->blocks[i], bx, g, gx, N);
        grads_ready(n, a->blocks[i].c1.w); /* conv1's weight: the block's first parameter */
        void *t = g; g = gx; gx = t;
    }
    /* g: gradient of the stem output (the pooled one, with a pool) */
    int Hs = n->hw[a->conv1.id];
    int H1 = (Hs + 2 * a->conv1.pad - a->conv1.R) / a->conv1.stride + 1;
    kb_bn d = stem_desc(n, N, H1, H1, 1);
    if (d.pool)
        d.pool_idx = n->act[a->id_pool_idx].p;
    bn_back(n, &a->bn1, d, n->act[a->conv1.id].p, g, gx, NULL, 0);
    conv_bwd(n, &a->conv1, x, gx, NULL, N, 0);
    grads_ready(n, 0);
}

/* ------------------------------------------------------------ heads */

/* h (N, F) -> projection (N, proj_out) */
float *proj_fwd(rw_net *n, const float *h, int N, int train)
{
    arch *a = n->m->a;
    float *y1 = lin_fwd(n, &a->p1, h, N);
    if (!y1)
        return NULL;
    float *b = bn_fwd(n, &a->pbn, y1, NULL, N, 1, 1, 1, train);
    if (!b)
        return NULL;
    return lin_fwd(n, &a->p2, b, N);
}

/* dy (N, proj_out) -> dh (N, F) written */
void proj_bwd(rw_net *n, const float *h, const float *dy, float *dh, int N)
{
    arch *a = n->m->a;
    float *t = net_scratch(n, 3), *u = net_scratch(n, 4);
    if (n->m->failed)
        return;
    lin_bwd(n, &a->p2, n->act[a->pbn.id_y].p, dy, t, N);
    bn_bwd(n, &a->pbn, n->act[a->p1.id].p, t, u, NULL, N, 1, 1, 1, 0);
    lin_bwd(n, &a->p1, h, u, dh, N);
}

/* y (N, D) -> q(y) (N, D); identity for `none`. The predictor's batch
 * norm (mlp_bn) always normalizes with batch statistics. */
const float *pred_fwd(rw_net *n, const float *y, int N)
{
    kb_backend *be = n->m->be;
    arch *a = n->m->a;
    if (a->pred_layers == 0)
        return y;
    float *h = lin_fwd(n, &a->q1, y, N);
    if (!h || a->pred_layers == 1)
        return h;
    float *r = h;
    if (a->pred_bn)
        r = bn_fwd(n, &a->qbn, h, NULL, N, 1, 1, 1, 1);
    else
        be->relu_forward(be, h, h, (size_t)N * a->q1.O);
    if (!r)
        return NULL;
    return lin_fwd(n, &a->q2, r, N);
}

/* dq (N, D) -> dy (N, D) written. */
void pred_bwd(rw_net *n, const float *y, const float *dq, float *dy, int N)
{
    kb_backend *be = n->m->be;
    arch *a = n->m->a;
    size_t D = (size_t)a->cfg.proj_out;
    if (a->pred_layers == 0) {
        be->copy(be, dy, dq, (size_t)N * D * sizeof(float));
        return;
    }
    if (a->pred_layers == 1) {
        lin_bwd(n, &a->q1, y, dq, dy, N);
        if (a->cfg.predictor == RW_PRED_DIRECTPRED) {
            /* W is set from F, not stepped: its gradient slot takes the
             * batch's E[y y^T] = Y^T Y / N (dw += dy^T x with x = dy = Y),
             * where the data-parallel all-reduce of the gradient makes it
             * the global batch's (worker/directpred.h). In bf16 mode the
             * GPU's linear op rounds Y to bf16 first (fp32 sums). */
            float *C = n->G + a->q1.w;
            be->fill(be, C, 0.0f, D * D);
            be->linear_backward(be, y, n->P + a->q1.w, NULL, y, N, (int)D, (int)D, NULL, C,
                                NULL);
            be->scale(be, C, 1.0f / (float)N, D * D);
        }
        return;
    }
    size_t cnt = (size_t)N * a->q1.O;
    float *r = a->pred_bn ? n->act[a->qbn.id_y].p : n->act[a->q1.id].p;
    float *t = net_scratch(n, 3), *u = net_scratch(n, 4);
    if (n->m->failed)
        return;
    lin_bwd(n, &a->q2, r, dq, t, N);
    if (a->pred_bn) {
        bn_bwd(n, &a->qbn, n->act[a->q1.id].p, t, u, NULL, N, 1, 1, 1, 0);
        t = u;
    } else {
        be->relu_backward(be, r, t, t, cnt);
    }
    lin_bwd(n, &a->q1, y, t, dy, N);
}

