/* ResNet-18 + projector + predictor + mean teacher, and the training step.
 * See model.h for the buffer layout. The network is written out layer by
 * layer (forward and backward side by side) rather than as a generic graph:
 * the architecture is fixed, and explicit code is easier to check against
 * torchvision. */
#include "worker/model.h"

#include "kernels/collective.h"
#include "kernels/optim.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS 2       /* activation sets: one per view */
#define PLAN_CACHE 4  /* conv plans per layer: training batch, eval batches */
#define MAX_BN 32
#define MAX_NAMED 256

/* ---------------------------------------------------------------- layers */

typedef struct conv_l {
    int C, K, R, S, stride, pad;
    size_t w; /* param offset of (K, C, R, S) */
    int id;   /* activation id of the output */
    struct {
        kb_conv_desc d;
        kb_conv *plan;
    } cache[PLAN_CACHE];
    int ncache, next;
} conv_l;

typedef struct bn_l {
    int C;
    size_t gamma, beta; /* param offsets (C) */
    size_t rmean, rvar; /* state offsets (C) */
    int idx;            /* BN index, for num_batches_tracked */
    int id_y, id_mean, id_inv;
} bn_l;

typedef struct lin_l {
    int I, O;
    size_t w, b; /* param offsets of (O, I) and (O) */
    int has_b;
    int id;      /* output (N, O) */
} lin_l;

typedef struct block_l {
    conv_l c1, c2, cd;
    bn_l b1, b2, bd;
    int down;
} block_l;

typedef enum {
    INIT_CONV,     /* Kaiming normal, fan_out, ReLU gain (torchvision resnet) */
    INIT_ONE,      /* BN weight */
    INIT_ZERO,     /* BN bias */
    INIT_LINEAR,   /* nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) */
    INIT_IDENTITY, /* linear_identity predictor */
} init_kind;

typedef struct arch {
    rw_model_cfg cfg;
    int F; /* encoder output width */
    conv_l conv1;
    bn_l bn1;
    int maxpool, id_pool_y, id_pool_idx;
    block_l blocks[8];
    int id_feat;
    /* projector */
    lin_l p1, p2;
    bn_l pbn;
    /* predictor */
    lin_l q1, q2;
    bn_l qbn;
    lin_l cls;       /* the supervised baseline's classifier (cfg.classes > 0) */
    int pred_layers; /* 0 none, 1 linear, 2 mlp */
    int pred_bn;
    int id_pnorm, id_pnorm_n; /* l2norm of predictor output / teacher projection */
    int id_znorm, id_znorm_n; /* l2norm of online projection (metrics only) */
    int nact;
    size_t nparams, nteacher, nstate, nteacher_state;
    int nbn, nbn_teacher;
    char bn_prefix[MAX_BN][56];
    rw_named named[MAX_NAMED];
    init_kind init[MAX_NAMED];
    int fan_in[MAX_NAMED];
    int nnamed;
} arch;

typedef struct buf {
    void *p;
    size_t cap; /* bytes */
} buf;

typedef struct rw_net {
    rw_model *m;
    float *P, *G, *S; /* params, grads (NULL: teacher), running stats */
    long *nbt;
    buf *act;         /* [nact * SLOTS] */
    int *hw;          /* [nact * SLOTS]: input side of conv `id` */
    buf scratch[5];   /* backward gradients, shared by the slots */
    size_t maxact;    /* largest activation in floats seen this step */
} rw_net;

struct rw_model {
    kb_backend *be;
    arch a;
    float *params, *grads, *adam_m, *adam_v, *teacher, *state, *tstate;
    long nbt[MAX_BN], tnbt[MAX_BN];
    long adam_step;
    rw_net online, tnet;
    float *lossbuf; /* KB_LOSS_NOUT, metbuf, xentbuf: one download fetches all */
    float *metbuf;  /* uniform v1, v2, collapse v1, v2 */
    /* then, supervised: cross-entropy and correct count of view 1, of view 2 */
    /* The update's per-step scalars in backend memory, written by
     * rw_model_update_prepare and read by the ops when they run. */
    kb_adam_consts *adam_k;
    float *tau_k; /* [tau, 1 - tau] */
    buf dp[2];      /* dLoss/dp per view (N, D) */
    buf dfeat;      /* dLoss/dfeatures of the view in backward (N, F) */
    buf dlogits[2]; /* supervised: dLoss/dlogits per view (N, classes) */
    const int32_t *labels; /* supervised: the batch's labels (backend memory) */
    int failed;     /* an allocation, plan or collective failed; the step reports it */
    unsigned long mem_gen; /* bumped whenever a step buffer moves */
    char error[256];
    kb_comm *comm;  /* data parallel: NULL for one rank */
    int sync_bn;    /* BN statistics over the global batch */
    buf syncbuf;    /* (3 * widest BN) floats for the all-reduced statistics */
};

/* ------------------------------------------------------------ arch build */

static void named_add(arch *a, const char *name, rw_tensor_kind kind, size_t off, int ndim,
                      const int *shape, int bn)
{
    assert(a->nnamed < MAX_NAMED);
    rw_named *t = &a->named[a->nnamed++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->kind = kind;
    t->off = off;
    t->ndim = ndim;
    t->numel = 1;
    for (int i = 0; i < 4; i++) {
        t->shape[i] = i < ndim ? shape[i] : 1;
        if (i < ndim)
            t->numel *= (size_t)shape[i];
    }
    t->bn = bn;
}

static size_t param_add(arch *a, const char *prefix, const char *leaf, int ndim, const int *shape,
                        init_kind init, int fan_in)
{
    char name[64];
    snprintf(name, sizeof name, "%s%s%s", prefix, *prefix ? "." : "", leaf);
    size_t off = a->nparams;
    a->init[a->nnamed] = init;
    a->fan_in[a->nnamed] = fan_in;
    named_add(a, name, RW_T_PARAM, off, ndim, shape, -1);
    a->nparams += a->named[a->nnamed - 1].numel;
    return off;
}

static void conv_init(arch *a, conv_l *c, const char *prefix, int C, int K, int R, int stride,
                      int pad)
{
    memset(c, 0, sizeof *c);
    c->C = C; c->K = K; c->R = R; c->S = R; c->stride = stride; c->pad = pad;
    int shape[4] = {K, C, R, R};
    c->w = param_add(a, prefix, "weight", 4, shape, INIT_CONV, C * R * R);
    c->id = a->nact++;
}

static void bn_init(arch *a, bn_l *b, const char *prefix, int C)
{
    int shape[1] = {C};
    b->C = C;
    b->gamma = param_add(a, prefix, "weight", 1, shape, INIT_ONE, 0);
    b->beta = param_add(a, prefix, "bias", 1, shape, INIT_ZERO, 0);
    b->idx = a->nbn++;
    assert(b->idx < MAX_BN);
    snprintf(a->bn_prefix[b->idx], sizeof a->bn_prefix[b->idx], "%s", prefix);
    char name[64];
    b->rmean = a->nstate;
    snprintf(name, sizeof name, "%s.running_mean", prefix);
    named_add(a, name, RW_T_STATE, b->rmean, 1, shape, b->idx);
    b->rvar = a->nstate + (size_t)C;
    snprintf(name, sizeof name, "%s.running_var", prefix);
    named_add(a, name, RW_T_STATE, b->rvar, 1, shape, b->idx);
    a->nstate += 2 * (size_t)C;
    b->id_y = a->nact++;
    b->id_mean = a->nact++;
    b->id_inv = a->nact++;
}

static void lin_init(arch *a, lin_l *l, const char *prefix, int I, int O, int has_b,
                     init_kind winit)
{
    int ws[2] = {O, I}, bs[1] = {O};
    l->I = I; l->O = O; l->has_b = has_b;
    l->w = param_add(a, prefix, "weight", 2, ws, winit, I);
    l->b = has_b ? param_add(a, prefix, "bias", 1, bs, INIT_LINEAR, I) : 0;
    l->id = a->nact++;
}

static int arch_build(arch *a, const rw_model_cfg *cfg, char *err, size_t errlen)
{
    memset(a, 0, sizeof *a);
    a->cfg = *cfg;
    int w = cfg->width;
    if (w < 1 || w > 64 || cfg->proj_hidden < 1 || cfg->proj_out < 1 ||
        (cfg->predictor != RW_PRED_NONE && cfg->predictor != RW_PRED_LINEAR &&
         cfg->predictor != RW_PRED_LINEAR_IDENTITY && cfg->pred_hidden < 1)) {
        snprintf(err, errlen, "model: width must be 1..64 and layer sizes positive");
        return -1;
    }
    if (cfg->stem == RW_STEM_IMAGENET) {
        conv_init(a, &a->conv1, "conv1", 3, w, 7, 2, 3);
        a->maxpool = 1;
    } else {
        conv_init(a, &a->conv1, "conv1", 3, w, 3, 1, 1);
        a->maxpool = 0;
    }
    bn_init(a, &a->bn1, "bn1", w);
    a->id_pool_y = a->nact++;
    a->id_pool_idx = a->nact++;
    int C = w;
    for (int L = 0; L < 4; L++) {
        int K = w << L;
        for (int B = 0; B < 2; B++) {
            block_l *b = &a->blocks[L * 2 + B];
            int stride = (L > 0 && B == 0) ? 2 : 1;
            char p[48];
            snprintf(p, sizeof p, "layer%d.%d.conv1", L + 1, B);
            conv_init(a, &b->c1, p, C, K, 3, stride, 1);
            snprintf(p, sizeof p, "layer%d.%d.bn1", L + 1, B);
            bn_init(a, &b->b1, p, K);
            snprintf(p, sizeof p, "layer%d.%d.conv2", L + 1, B);
            conv_init(a, &b->c2, p, K, K, 3, 1, 1);
            snprintf(p, sizeof p, "layer%d.%d.bn2", L + 1, B);
            bn_init(a, &b->b2, p, K);
            b->down = stride != 1 || C != K;
            if (b->down) {
                snprintf(p, sizeof p, "layer%d.%d.downsample.0", L + 1, B);
                conv_init(a, &b->cd, p, C, K, 1, stride, 0);
                snprintf(p, sizeof p, "layer%d.%d.downsample.1", L + 1, B);
                bn_init(a, &b->bd, p, K);
            }
            C = K;
        }
    }
    a->F = C;
    a->id_feat = a->nact++;

    lin_init(a, &a->p1, "projector.0", a->F, cfg->proj_hidden, 1, INIT_LINEAR);
    bn_init(a, &a->pbn, "projector.1", cfg->proj_hidden);
    lin_init(a, &a->p2, "projector.3", cfg->proj_hidden, cfg->proj_out, 1, INIT_LINEAR);
    a->nteacher = a->nparams;
    a->nteacher_state = a->nstate;
    a->nbn_teacher = a->nbn;

    int D = cfg->proj_out;
    switch (cfg->predictor) {
    case RW_PRED_NONE:
        a->pred_layers = 0;
        break;
    case RW_PRED_LINEAR:
    case RW_PRED_LINEAR_IDENTITY:
        a->pred_layers = 1;
        lin_init(a, &a->q1, "predictor", D, D, 0,
                 cfg->predictor == RW_PRED_LINEAR_IDENTITY ? INIT_IDENTITY : INIT_LINEAR);
        break;
    case RW_PRED_MLP:
        a->pred_layers = 2;
        lin_init(a, &a->q1, "predictor.0", D, cfg->pred_hidden, 1, INIT_LINEAR);
        lin_init(a, &a->q2, "predictor.2", cfg->pred_hidden, D, 1, INIT_LINEAR);
        break;
    case RW_PRED_MLP_BN:
        a->pred_layers = 2;
        a->pred_bn = 1;
        lin_init(a, &a->q1, "predictor.0", D, cfg->pred_hidden, 1, INIT_LINEAR);
        bn_init(a, &a->qbn, "predictor.1", cfg->pred_hidden);
        lin_init(a, &a->q2, "predictor.3", cfg->pred_hidden, D, 1, INIT_LINEAR);
        break;
    }
    if (cfg->classes > 0) {
        if (cfg->predictor != RW_PRED_NONE) {
            snprintf(err, errlen, "model: the supervised baseline has no predictor");
            return -1;
        }
        lin_init(a, &a->cls, "classifier", D, cfg->classes, 1, INIT_LINEAR);
    }
    a->id_pnorm = a->nact++;
    a->id_pnorm_n = a->nact++;
    a->id_znorm = a->nact++;
    a->id_znorm_n = a->nact++;

    /* The teacher's tensors: the encoder+projector prefix, renamed. */
    int n_online = a->nnamed;
    for (int i = 0; i < n_online; i++) {
        rw_named t = a->named[i];
        int in_teacher = t.kind == RW_T_PARAM ? t.off < a->nteacher
                                               : t.off < a->nteacher_state;
        if (!in_teacher)
            continue;
        char name[64];
        snprintf(name, sizeof name, "teacher.%.54s", t.name);
        named_add(a, name, t.kind == RW_T_PARAM ? RW_T_TEACHER_PARAM : RW_T_TEACHER_STATE,
                  t.off, t.ndim, t.shape, t.bn);
    }
    return 0;
}

/* ----------------------------------------------------------- net buffers */

static void *grow(rw_net *n, buf *b, size_t bytes)
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

static float *act(rw_net *n, int id, int slot, size_t count)
{
    if (count > n->maxact)
        n->maxact = count;
    return grow(n, &n->act[id * SLOTS + slot], count * sizeof(float));
}

static float *scratch(rw_net *n, int k)
{
    return grow(n, &n->scratch[k], n->maxact * sizeof(float));
}

static int net_init(rw_net *n, rw_model *m, float *P, float *G, float *S, long *nbt)
{
    n->m = m;
    n->P = P; n->G = G; n->S = S; n->nbt = nbt;
    n->act = calloc((size_t)m->a.nact * SLOTS, sizeof *n->act);
    n->hw = calloc((size_t)m->a.nact * SLOTS, sizeof *n->hw);
    return n->act && n->hw ? 0 : -1;
}

static void net_free(rw_net *n)
{
    kb_backend *be = n->m->be;
    if (n->act)
        for (int i = 0; i < n->m->a.nact * SLOTS; i++)
            if (n->act[i].p)
                be->free(be, n->act[i].p);
    for (int k = 0; k < 5; k++)
        if (n->scratch[k].p)
            be->free(be, n->scratch[k].p);
    free(n->act);
    free(n->hw);
}

/* ------------------------------------------------------------ conv / bn */

static kb_conv *conv_plan(rw_model *m, conv_l *c, int N, int H, int W)
{
    for (int i = 0; i < c->ncache; i++) {
        kb_conv_desc *d = &c->cache[i].d;
        if (d->N == N && d->H == H && d->W == W)
            return c->cache[i].plan;
    }
    kb_conv_desc d;
    kb_conv_desc_init(&d, N, c->C, H, W, c->K, c->R, c->S, c->stride, c->pad);
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
static float *conv_fwd(rw_net *n, conv_l *c, int slot, const float *x, int N, int *H, int *W)
{
    kb_backend *be = n->m->be;
    kb_conv *plan = conv_plan(n->m, c, N, *H, *W);
    int P = (*H + 2 * c->pad - c->R) / c->stride + 1;
    int Q = (*W + 2 * c->pad - c->S) / c->stride + 1;
    float *y = act(n, c->id, slot, (size_t)N * c->K * P * Q);
    n->hw[c->id * SLOTS + slot] = *H;
    if (!plan || !y)
        return y;
    be->conv_forward(be, plan, x, n->P + c->w, y);
    *H = P;
    *W = Q;
    return y;
}

/* Weight gradient accumulated; dx (N,C,H,W) written unless NULL. */
static void conv_bwd(rw_net *n, conv_l *c, int slot, const float *x, const float *dy, float *dx,
                     int N)
{
    kb_backend *be = n->m->be;
    int H = n->hw[c->id * SLOTS + slot];
    kb_conv *plan = conv_plan(n->m, c, N, H, H);
    if (!plan)
        return;
    be->conv_backward_weight(be, plan, x, dy, n->G + c->w);
    if (dx)
        be->conv_backward_data(be, plan, dy, n->P + c->w, dx);
}

static float *bn_fwd(rw_net *n, bn_l *b, int slot, const float *x, int N, int HW, int train)
{
    kb_backend *be = n->m->be;
    float *y = act(n, b->id_y, slot, (size_t)N * b->C * HW);
    float *mean = act(n, b->id_mean, slot, (size_t)b->C);
    float *inv = act(n, b->id_inv, slot, (size_t)b->C);
    if (!y || !mean || !inv)
        return y;
    rw_model *m = n->m;
    if (train && m->sync_bn) {
        float *st = grow(n, &m->syncbuf, 3 * (size_t)b->C * sizeof(float));
        if (!st)
            return y;
        be->bn_stats(be, x, N, b->C, HW, st);
        if (m->comm->allreduce(m->comm, st, 3 * (size_t)b->C, KB_REDUCE_AVG, m->error,
                               sizeof m->error) != 0) {
            m->failed = 1;
            return y;
        }
        be->bn_forward_apply(be, x, N, b->C, HW, n->P + b->gamma, n->P + b->beta, RW_BN_EPS,
                             RW_BN_MOMENTUM, st, (double)N * HW * m->comm->world,
                             n->S + b->rmean, n->S + b->rvar, y, mean, inv);
        n->nbt[b->idx]++;
    } else if (train) {
        be->bn_forward_train(be, x, N, b->C, HW, n->P + b->gamma, n->P + b->beta, RW_BN_EPS,
                             RW_BN_MOMENTUM, n->S + b->rmean, n->S + b->rvar, y, mean, inv);
        n->nbt[b->idx]++;
    } else {
        be->bn_forward_eval(be, x, N, b->C, HW, n->P + b->gamma, n->P + b->beta, RW_BN_EPS,
                            n->S + b->rmean, n->S + b->rvar, y);
    }
    return y;
}

static void bn_bwd(rw_net *n, bn_l *b, int slot, const float *x, const float *dy, float *dx,
                   int N, int HW)
{
    kb_backend *be = n->m->be;
    rw_model *m = n->m;
    float *mean = act(n, b->id_mean, slot, (size_t)b->C), *inv = act(n, b->id_inv, slot, (size_t)b->C);
    if (m->sync_bn) {
        float *red = grow(n, &m->syncbuf, 3 * (size_t)b->C * sizeof(float));
        if (!red || m->failed)
            return;
        be->bn_backward_reduce(be, x, dy, N, b->C, HW, mean, inv, red, n->G + b->gamma,
                               n->G + b->beta);
        if (m->comm->allreduce(m->comm, red, 2 * (size_t)b->C, KB_REDUCE_AVG, m->error,
                               sizeof m->error) != 0) {
            m->failed = 1;
            return;
        }
        be->bn_backward_apply(be, x, dy, N, b->C, HW, n->P + b->gamma, mean, inv, red, dx);
        return;
    }
    be->bn_backward(be, x, dy, N, b->C, HW, n->P + b->gamma, mean, inv, dx, n->G + b->gamma,
                    n->G + b->beta);
}

static float *lin_fwd(rw_net *n, lin_l *l, int slot, const float *x, int N)
{
    kb_backend *be = n->m->be;
    float *y = act(n, l->id, slot, (size_t)N * l->O);
    if (y)
        be->linear_forward(be, x, N, l->I, n->P + l->w, l->has_b ? n->P + l->b : NULL, l->O, y);
    return y;
}

static void lin_bwd(rw_net *n, lin_l *l, const float *x, const float *dy, float *dx, int N)
{
    kb_backend *be = n->m->be;
    be->linear_backward(be, x, n->P + l->w, dy, N, l->I, l->O, dx, n->G + l->w,
                        l->has_b ? n->G + l->b : NULL);
}

/* -------------------------------------------------------------- encoder */

/* ReLU(bn2(conv2(ReLU(bn1(conv1(x))))) + shortcut(x)); returns bn2's buffer. */
static float *block_fwd(rw_net *n, block_l *b, int slot, const float *x, int N, int *H, int *W,
                        int train)
{
    kb_backend *be = n->m->be;
    int h0 = *H, w0 = *W;
    float *a1 = conv_fwd(n, &b->c1, slot, x, N, H, W);
    float *r1 = bn_fwd(n, &b->b1, slot, a1, N, *H * *W, train);
    size_t cnt = (size_t)N * b->c1.K * *H * *W;
    if (n->m->failed)
        return NULL;
    be->relu_forward(be, r1, r1, cnt);
    float *a2 = conv_fwd(n, &b->c2, slot, r1, N, H, W);
    float *o = bn_fwd(n, &b->b2, slot, a2, N, *H * *W, train);
    if (n->m->failed)
        return NULL;
    if (b->down) {
        int hd = h0, wd = w0;
        float *ad = conv_fwd(n, &b->cd, slot, x, N, &hd, &wd);
        float *sd = bn_fwd(n, &b->bd, slot, ad, N, hd * wd, train);
        if (n->m->failed)
            return NULL;
        be->add(be, o, o, sd, cnt);
    } else {
        be->add(be, o, o, x, cnt);
    }
    be->relu_forward(be, o, o, cnt);
    return o;
}

/* dout: gradient of the block output; dx (block input size) written. */
static void block_bwd(rw_net *n, block_l *b, int slot, const float *x, const float *dout,
                      float *dx, int N)
{
    kb_backend *be = n->m->be;
    int Hin = n->hw[b->c1.id * SLOTS + slot];
    int Hout = n->hw[b->c2.id * SLOTS + slot];
    size_t cnt = (size_t)N * b->c2.K * Hout * Hout;
    float *o = act(n, b->b2.id_y, slot, cnt);
    float *a2 = act(n, b->c2.id, slot, cnt);
    float *r1 = act(n, b->b1.id_y, slot, cnt);
    float *a1 = act(n, b->c1.id, slot, cnt);
    float *dS = scratch(n, 2), *t1 = scratch(n, 3), *t2 = scratch(n, 4);
    be->relu_backward(be, o, dout, dS, cnt);
    bn_bwd(n, &b->b2, slot, a2, dS, t1, N, Hout * Hout);
    conv_bwd(n, &b->c2, slot, r1, t1, t2, N);
    be->relu_backward(be, r1, t2, t2, cnt);
    bn_bwd(n, &b->b1, slot, a1, t2, t1, N, Hout * Hout);
    conv_bwd(n, &b->c1, slot, x, t1, dx, N);
    if (b->down) {
        float *ad = act(n, b->cd.id, slot, cnt);
        bn_bwd(n, &b->bd, slot, ad, dS, t1, N, Hout * Hout);
        conv_bwd(n, &b->cd, slot, x, t1, t2, N);
        be->add(be, dx, dx, t2, (size_t)N * b->c1.C * Hin * Hin);
    } else {
        be->add(be, dx, dx, dS, cnt);
    }
}

/* Stem output pointer (input of block 0) for slot; filled by enc_fwd. */
static const float *stem_out(rw_net *n, int slot, size_t cnt)
{
    arch *a = &n->m->a;
    return a->maxpool ? act(n, a->id_pool_y, slot, cnt) : act(n, a->bn1.id_y, slot, cnt);
}

/* x (N,3,S,S) -> features (N, F). */
static float *enc_fwd(rw_net *n, int slot, const float *x, int N, int S, int train)
{
    kb_backend *be = n->m->be;
    arch *a = &n->m->a;
    int H = S, W = S;
    float *y = conv_fwd(n, &a->conv1, slot, x, N, &H, &W);
    float *r = bn_fwd(n, &a->bn1, slot, y, N, H * W, train);
    if (n->m->failed)
        return NULL;
    be->relu_forward(be, r, r, (size_t)N * a->conv1.K * H * W);
    const float *cur = r;
    if (a->maxpool) {
        int P = (H + 2 - 3) / 2 + 1, Q = (W + 2 - 3) / 2 + 1;
        float *py = act(n, a->id_pool_y, slot, (size_t)N * a->conv1.K * P * Q);
        int32_t *idx = (int32_t *)act(n, a->id_pool_idx, slot, (size_t)N * a->conv1.K * P * Q);
        if (n->m->failed)
            return NULL;
        be->maxpool_forward(be, r, N, a->conv1.K, H, W, 3, 2, 1, py, idx);
        n->hw[a->id_pool_y * SLOTS + slot] = H;
        H = P;
        W = Q;
        cur = py;
    }
    for (int i = 0; i < 8; i++) {
        cur = block_fwd(n, &a->blocks[i], slot, cur, N, &H, &W, train);
        if (!cur)
            return NULL;
    }
    float *f = act(n, a->id_feat, slot, (size_t)N * a->F);
    if (!f)
        return NULL;
    n->hw[a->id_feat * SLOTS + slot] = H;
    be->avgpool_forward(be, cur, N, a->F, H * W, f);
    return f;
}

/* dfeat (N, F) -> parameter gradients of the encoder. */
static void enc_bwd(rw_net *n, int slot, const float *x, const float *dfeat, int N)
{
    kb_backend *be = n->m->be;
    arch *a = &n->m->a;
    int H = n->hw[a->id_feat * SLOTS + slot];
    float *g = scratch(n, 0), *gx = scratch(n, 1);
    be->avgpool_backward(be, dfeat, N, a->F, H * H, g);
    for (int i = 7; i >= 0; i--) {
        block_l *b = &a->blocks[i];
        int Hin = n->hw[b->c1.id * SLOTS + slot];
        size_t cnt = (size_t)N * b->c1.C * Hin * Hin;
        const float *bx = i > 0 ? act(n, a->blocks[i - 1].b2.id_y, slot, cnt) : stem_out(n, slot, cnt);
        block_bwd(n, b, slot, bx, g, gx, N);
        float *t = g; g = gx; gx = t;
    }
    /* g: gradient of the stem output */
    int Hs = n->hw[a->conv1.id * SLOTS + slot];
    int H1 = (Hs + 2 * a->conv1.pad - a->conv1.R) / a->conv1.stride + 1;
    size_t cnt1 = (size_t)N * a->conv1.K * H1 * H1;
    float *r = act(n, a->bn1.id_y, slot, cnt1);
    if (a->maxpool) {
        int P = (H1 + 2 - 3) / 2 + 1;
        int32_t *idx = (int32_t *)act(n, a->id_pool_idx, slot, (size_t)N * a->conv1.K * P * P);
        be->maxpool_backward(be, g, idx, N, a->conv1.K, H1, H1, P, P, gx);
        float *t = g; g = gx; gx = t;
    }
    be->relu_backward(be, r, g, g, cnt1);
    bn_bwd(n, &a->bn1, slot, act(n, a->conv1.id, slot, cnt1), g, gx, N, H1 * H1);
    conv_bwd(n, &a->conv1, slot, x, gx, NULL, N);
}

/* ------------------------------------------------------------ heads */

/* h (N, F) -> projection (N, proj_out) */
static float *proj_fwd(rw_net *n, int slot, const float *h, int N, int train)
{
    kb_backend *be = n->m->be;
    arch *a = &n->m->a;
    float *y1 = lin_fwd(n, &a->p1, slot, h, N);
    if (!y1)
        return NULL;
    float *b = bn_fwd(n, &a->pbn, slot, y1, N, 1, train);
    if (!b)
        return NULL;
    be->relu_forward(be, b, b, (size_t)N * a->p1.O);
    return lin_fwd(n, &a->p2, slot, b, N);
}

static void proj_bwd(rw_net *n, int slot, const float *h, const float *dy, float *dh, int N)
{
    kb_backend *be = n->m->be;
    arch *a = &n->m->a;
    size_t cnt = (size_t)N * a->p1.O;
    float *b = act(n, a->pbn.id_y, slot, cnt);
    float *t = scratch(n, 3), *u = scratch(n, 4);
    lin_bwd(n, &a->p2, b, dy, t, N);
    be->relu_backward(be, b, t, t, cnt);
    bn_bwd(n, &a->pbn, slot, act(n, a->p1.id, slot, cnt), t, u, N, 1);
    lin_bwd(n, &a->p1, h, u, dh, N);
}

/* y (N, D) -> q(y) (N, D); identity for `none`. */
static const float *pred_fwd(rw_net *n, int slot, const float *y, int N)
{
    kb_backend *be = n->m->be;
    arch *a = &n->m->a;
    if (a->pred_layers == 0)
        return y;
    float *h = lin_fwd(n, &a->q1, slot, y, N);
    if (!h || a->pred_layers == 1)
        return h;
    float *r = h;
    if (a->pred_bn) {
        r = bn_fwd(n, &a->qbn, slot, h, N, 1, 1);
        if (!r)
            return NULL;
    }
    be->relu_forward(be, r, r, (size_t)N * a->q1.O);
    return lin_fwd(n, &a->q2, slot, r, N);
}

/* dq (N, D) -> dy (N, D) written. */
static void pred_bwd(rw_net *n, int slot, const float *y, const float *dq, float *dy, int N)
{
    kb_backend *be = n->m->be;
    arch *a = &n->m->a;
    size_t D = (size_t)a->cfg.proj_out;
    if (a->pred_layers == 0) {
        be->copy(be, dy, dq, (size_t)N * D * sizeof(float));
        return;
    }
    if (a->pred_layers == 1) {
        lin_bwd(n, &a->q1, y, dq, dy, N);
        return;
    }
    size_t cnt = (size_t)N * a->q1.O;
    float *r = a->pred_bn ? act(n, a->qbn.id_y, slot, cnt) : act(n, a->q1.id, slot, cnt);
    float *t = scratch(n, 3), *u = scratch(n, 4);
    lin_bwd(n, &a->q2, r, dq, t, N);
    be->relu_backward(be, r, t, t, cnt);
    if (a->pred_bn) {
        bn_bwd(n, &a->qbn, slot, act(n, a->q1.id, slot, cnt), t, u, N, 1);
        t = u;
    }
    lin_bwd(n, &a->q1, y, t, dy, N);
}

/* ----------------------------------------------------------- model API */

void rw_model_cfg_from_spec(const rw_spec *s, rw_model_cfg *c)
{
    memset(c, 0, sizeof *c);
    c->stem = s->model.stem;
    c->width = s->model.width;
    c->proj_hidden = s->model.proj_hidden;
    c->proj_out = s->model.proj_out;
    c->predictor = s->model.predictor;
    c->pred_hidden = s->model.pred_hidden;
    c->loss.kind = s->loss.kind == RW_LOSS_BYOL ? KB_LOSS_BYOL : KB_LOSS_UNIFIED;
    c->loss.alpha = s->loss.alpha;
    c->loss.beta = s->loss.beta;
    c->loss.tangential = s->loss.tangential;
    if (s->loss.kind == RW_LOSS_SUPERVISED) {
        c->classes = rw_spec_classes(s);
        c->loss = (kb_loss_cfg){KB_LOSS_UNIFIED, 1.0f, 0.0f, 0}; /* measures L_align */
    }
}

/* splitmix64: seeds initialization; counter-free is fine here because the
 * draw order (registration order) is fixed. */
static uint64_t sm64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double uniform01(uint64_t *s)
{
    return ((sm64(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static double normal01(uint64_t *s)
{
    double u1 = uniform01(s), u2 = uniform01(s);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static void init_params(rw_model *m, uint64_t seed, float *hp, float *hs)
{
    arch *a = &m->a;
    uint64_t s = seed ^ 0x52554e4157415921ull; /* "RUNAWAY!" */
    for (int i = 0; i < a->nnamed; i++) {
        const rw_named *t = &a->named[i];
        if (t->kind == RW_T_STATE) {
            float v = strstr(t->name, "running_var") ? 1.0f : 0.0f;
            for (size_t k = 0; k < t->numel; k++)
                hs[t->off + k] = v;
            continue;
        }
        if (t->kind != RW_T_PARAM)
            continue;
        float *p = hp + t->off;
        switch (a->init[i]) {
        case INIT_CONV: {
            double fan_out = (double)t->shape[0] * t->shape[2] * t->shape[3];
            double sd = sqrt(2.0 / fan_out);
            for (size_t k = 0; k < t->numel; k++)
                p[k] = (float)(sd * normal01(&s));
            break;
        }
        case INIT_ONE:
        case INIT_ZERO:
            for (size_t k = 0; k < t->numel; k++)
                p[k] = a->init[i] == INIT_ONE ? 1.0f : 0.0f;
            break;
        case INIT_LINEAR: {
            double bound = 1.0 / sqrt((double)a->fan_in[i]);
            for (size_t k = 0; k < t->numel; k++)
                p[k] = (float)((2.0 * uniform01(&s) - 1.0) * bound);
            break;
        }
        case INIT_IDENTITY:
            memset(p, 0, t->numel * sizeof(float));
            for (int d = 0; d < t->shape[0] && d < t->shape[1]; d++)
                p[(size_t)d * t->shape[1] + d] = 1.0f;
            break;
        }
    }
}

rw_model *rw_model_create(kb_backend *be, const rw_model_cfg *cfg, uint64_t seed, char *err,
                          size_t errlen)
{
    rw_model *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    m->be = be;
    if (arch_build(&m->a, cfg, err, errlen) != 0) {
        free(m);
        return NULL;
    }
    arch *a = &m->a;
    size_t np = a->nparams, nt = a->nteacher, ns = a->nstate;
    m->params = be->alloc(be, np * sizeof(float));
    m->grads = be->alloc(be, np * sizeof(float));
    m->adam_m = be->alloc(be, np * sizeof(float));
    m->adam_v = be->alloc(be, np * sizeof(float));
    m->teacher = be->alloc(be, nt * sizeof(float));
    m->state = be->alloc(be, ns * sizeof(float));
    m->tstate = be->alloc(be, (a->nteacher_state ? a->nteacher_state : 1) * sizeof(float));
    m->lossbuf = be->alloc(be, (KB_LOSS_NOUT + 8) * sizeof(float));
    m->metbuf = m->lossbuf ? m->lossbuf + KB_LOSS_NOUT : NULL;
    m->adam_k = be->alloc(be, sizeof(kb_adam_consts) + 2 * sizeof(float));
    m->tau_k = m->adam_k ? (float *)(m->adam_k + 1) : NULL;
    float *hp = calloc(np, sizeof(float)), *hs = calloc(ns, sizeof(float));
    if (!m->params || !m->grads || !m->adam_m || !m->adam_v || !m->teacher || !m->state ||
        !m->tstate || !m->lossbuf || !m->adam_k || !hp || !hs ||
        net_init(&m->online, m, m->params, m->grads, m->state, m->nbt) != 0 ||
        net_init(&m->tnet, m, m->teacher, NULL, m->tstate, m->tnbt) != 0) {
        free(hp);
        free(hs);
        rw_model_free(m);
        snprintf(err, errlen, "out of memory for a model of %zu parameters", np);
        return NULL;
    }
    init_params(m, seed, hp, hs);
    be->upload(be, m->params, hp, np * sizeof(float));
    be->upload(be, m->state, hs, ns * sizeof(float));
    free(hp);
    free(hs);
    rw_model_teacher_from_online(m);
    return m;
}

void rw_model_free(rw_model *m)
{
    if (!m)
        return;
    kb_backend *be = m->be;
    if (m->online.m)
        net_free(&m->online);
    if (m->tnet.m)
        net_free(&m->tnet);
    conv_l *convs[1 + 8 * 3];
    int nc = 0;
    convs[nc++] = &m->a.conv1;
    for (int i = 0; i < 8; i++) {
        convs[nc++] = &m->a.blocks[i].c1;
        convs[nc++] = &m->a.blocks[i].c2;
        if (m->a.blocks[i].down)
            convs[nc++] = &m->a.blocks[i].cd;
    }
    for (int i = 0; i < nc; i++)
        for (int k = 0; k < convs[i]->ncache; k++)
            be->conv_free(be, convs[i]->cache[k].plan);
    for (int k = 0; k < 2; k++) {
        if (m->dp[k].p)
            be->free(be, m->dp[k].p);
        if (m->dlogits[k].p)
            be->free(be, m->dlogits[k].p);
    }
    if (m->dfeat.p)
        be->free(be, m->dfeat.p);
    if (m->syncbuf.p)
        be->free(be, m->syncbuf.p);
    float *bufs[] = {m->params, m->grads, m->adam_m, m->adam_v, m->teacher,
                     m->state, m->tstate, m->lossbuf, (float *)m->adam_k};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        if (bufs[i])
            be->free(be, bufs[i]);
    free(m);
}

kb_backend *rw_model_backend(rw_model *m) { return m->be; }
const rw_model_cfg *rw_model_cfg_of(const rw_model *m) { return &m->a.cfg; }
size_t rw_model_nparams(const rw_model *m) { return m->a.nparams; }
size_t rw_model_nteacher(const rw_model *m) { return m->a.nteacher; }
size_t rw_model_nstate(const rw_model *m) { return m->a.nstate; }
size_t rw_model_nteacher_state(const rw_model *m) { return m->a.nteacher_state; }
int rw_model_feat_dim(const rw_model *m) { return m->a.F; }
float *rw_model_params(rw_model *m) { return m->params; }
float *rw_model_grads(rw_model *m) { return m->grads; }
float *rw_model_adam_m(rw_model *m) { return m->adam_m; }
float *rw_model_adam_v(rw_model *m) { return m->adam_v; }
float *rw_model_teacher(rw_model *m) { return m->teacher; }
float *rw_model_state(rw_model *m) { return m->state; }
float *rw_model_teacher_state(rw_model *m) { return m->tstate; }
long *rw_model_bn_counts(rw_model *m, int teacher) { return teacher ? m->tnbt : m->nbt; }
int rw_model_nbn(const rw_model *m, int teacher) { return teacher ? m->a.nbn_teacher : m->a.nbn; }
unsigned long rw_model_mem_gen(const rw_model *m) { return m->mem_gen; }
long rw_model_adam_step(const rw_model *m) { return m->adam_step; }
void rw_model_set_adam_step(rw_model *m, long step) { m->adam_step = step; }
const kb_loss_cfg *rw_model_loss_cfg(const rw_model *m) { return &m->a.cfg.loss; }
void rw_model_set_loss_cfg(rw_model *m, const kb_loss_cfg *c) { m->a.cfg.loss = *c; }
int rw_model_ntensors(const rw_model *m) { return m->a.nnamed; }
const rw_named *rw_model_tensor(const rw_model *m, int i) { return &m->a.named[i]; }

int rw_model_set_comm(rw_model *m, kb_comm *comm, int sync_bn, char *err, size_t errlen)
{
    /* A world of one has nothing to synchronize: sync_bn is then plain BN. */
    if (!comm || comm->world < 2)
        sync_bn = 0;
    if (sync_bn && (!m->be->bn_stats || !m->be->bn_forward_apply ||
                    !m->be->bn_backward_reduce || !m->be->bn_backward_apply)) {
        snprintf(err, errlen, "sync_bn: the %s backend has no synchronized batch norm",
                 m->be->name);
        return -1;
    }
    m->comm = comm;
    m->sync_bn = sync_bn && comm && comm->world > 1;
    return 0;
}

const char *rw_model_error(const rw_model *m)
{
    return m->error[0] ? m->error : "out of memory or backend failure";
}

const rw_named *rw_model_find(const rw_model *m, const char *name)
{
    for (int i = 0; i < m->a.nnamed; i++)
        if (strcmp(m->a.named[i].name, name) == 0)
            return &m->a.named[i];
    return NULL;
}

void rw_square_vs_identity(const float *W, int D, double *cos_i, double *asym)
{
    double tr = 0, ww = 0, aa = 0;
    for (int i = 0; i < D; i++) {
        tr += W[(size_t)i * D + i];
        for (int j = 0; j < D; j++) {
            double w = W[(size_t)i * D + j], a = 0.5 * (w - W[(size_t)j * D + i]);
            ww += w * w;
            aa += a * a;
        }
    }
    /* in [-1, 1] and [0, 1] exactly (Cauchy-Schwarz; |A| <= |W|) but for
     * rounding, which the wire's bounds would refuse */
    *cos_i = ww > 0 ? fmax(-1.0, fmin(1.0, tr / (sqrt(ww) * sqrt((double)D)))) : NAN;
    *asym = ww > 0 ? fmin(1.0, sqrt(aa / ww)) : NAN;
}

int rw_model_predictor_vs_identity(rw_model *m, double *cos_i, double *asym)
{
    *cos_i = *asym = NAN;
    if (m->a.cfg.predictor != RW_PRED_LINEAR && m->a.cfg.predictor != RW_PRED_LINEAR_IDENTITY)
        return 0;
    const rw_named *t = rw_model_find(m, "predictor.weight");
    if (!t || t->ndim != 2 || t->shape[0] != t->shape[1])
        return 0;
    const int D = t->shape[0];
    float *w = malloc((size_t)D * D * sizeof *w);
    if (!w)
        return -1;
    m->be->download(m->be, w, m->params + t->off, (size_t)D * D * sizeof *w);
    rw_square_vs_identity(w, D, cos_i, asym);
    free(w);
    return 0;
}

const char *rw_model_bn_prefix(const rw_model *m, int idx)
{
    return idx >= 0 && idx < m->a.nbn ? m->a.bn_prefix[idx] : NULL;
}

void rw_model_teacher_from_online(rw_model *m)
{
    kb_backend *be = m->be;
    be->copy(be, m->teacher, m->params, m->a.nteacher * sizeof(float));
    be->copy(be, m->tstate, m->state, m->a.nteacher_state * sizeof(float));
    memcpy(m->tnbt, m->nbt, sizeof m->tnbt);
}

void rw_model_set_labels(rw_model *m, const int32_t *labels) { m->labels = labels; }

/* dL/dy of view v's projections (N, D) back through projector and encoder;
 * dh is scratch for dL/dfeatures, which moves to dfeat because enc_bwd uses
 * every scratch buffer. */
static void backbone_bwd(rw_model *m, int v, const float *x, const float *h, const float *dy,
                         float *dh, float *dfeat, int N)
{
    proj_bwd(&m->online, v, h, dy, dh, N);
    m->be->copy(m->be, dfeat, dh, (size_t)N * m->a.F * sizeof(float));
    enc_bwd(&m->online, v, x, dfeat, N);
}

/* The step's end: -1 if any part failed, else the stats (when asked). */
static int step_end(rw_model *m, rw_step_stats *st)
{
    if (m->failed)
        return -1;
    if (st)
        rw_model_stats(m, st);
    return 0;
}

/* The supervised baseline after the online forward passes: each view's
 * logits from its projections y, the mean of the two views' cross-entropy,
 * and the backward pass through classifier, projector and encoder. */
static int supervised_rest(rw_model *m, const float *const *xs, const float *const *h,
                           const float *const *y, const float *const *p, int N,
                           rw_step_stats *st)
{
    kb_backend *be = m->be;
    arch *a = &m->a;
    rw_net *n = &m->online;
    int D = a->cfg.proj_out, F = a->F, K = a->cfg.classes;
    if (!m->labels) {
        snprintf(m->error, sizeof m->error, "the supervised baseline was given no labels");
        m->failed = 1;
        return -1;
    }
    float *dp[2], *dl[2], *logits[2];
    for (int v = 0; v < 2; v++) {
        dp[v] = grow(n, &m->dp[v], (size_t)N * D * sizeof(float));
        dl[v] = grow(n, &m->dlogits[v], (size_t)N * K * sizeof(float));
        logits[v] = lin_fwd(n, &a->cls, v, y[v], N);
    }
    float *dfeat = grow(n, &m->dfeat, (size_t)N * F * sizeof(float));
    if (m->failed)
        return -1;
    /* L_align of the normalized projections, measured only (z = p: the
     * cross term is 0) */
    be->loss(be, &a->cfg.loss, p[0], p[1], p[0], p[1], N, D, dp[0], dp[1], m->lossbuf);
    for (int v = 0; v < 2; v++) {
        be->softmax_xent(be, logits[v], m->labels, N, K, dl[v],
                         m->lossbuf + KB_LOSS_NOUT + 4 + 2 * v);
        be->scale(be, dl[v], 0.5f, (size_t)N * K); /* the loss is the views' mean */
    }
    for (int v = 0; v < 2 && !m->failed; v++) {
        float *dy = scratch(n, 1), *dh = scratch(n, 2);
        if (m->failed)
            break;
        lin_bwd(n, &a->cls, y[v], dl[v], dy, N);
        backbone_bwd(m, v, xs[v], h[v], dy, dh, dfeat, N);
    }
    return step_end(m, st);
}

int rw_model_forward_backward(rw_model *m, const float *x1, const float *x2, int N, int S,
                              rw_step_stats *st)
{
    kb_backend *be = m->be;
    arch *a = &m->a;
    int D = a->cfg.proj_out, F = a->F;
    const float *xs[2] = {x1, x2};
    const float *p[2], *z[2], *y[2], *h[2];
    m->failed = 0;
    m->error[0] = 0;
    be->fill(be, m->grads, 0.0f, a->nparams);

    /* Each view is its own forward pass: BatchNorm statistics per view. */
    for (int v = 0; v < 2; v++) {
        h[v] = enc_fwd(&m->online, v, xs[v], N, S, 1);
        if (!h[v])
            return -1;
        y[v] = proj_fwd(&m->online, v, h[v], N, 1);
        if (!y[v])
            return -1;
        const float *q = pred_fwd(&m->online, v, y[v], N);
        float *pn = act(&m->online, a->id_pnorm, v, (size_t)N * D);
        float *pnn = act(&m->online, a->id_pnorm_n, v, (size_t)N);
        float *zn = act(&m->online, a->id_znorm, v, (size_t)N * D);
        float *znn = act(&m->online, a->id_znorm_n, v, (size_t)N);
        if (!q || m->failed)
            return -1;
        be->l2norm_forward(be, q, N, D, pn, pnn);
        be->l2norm_forward(be, y[v], N, D, zn, znn);
        be->uniformity(be, zn, N, D, 2.0f, m->metbuf + v);
        be->collapse_std(be, zn, N, D, m->metbuf + 2 + v);
        p[v] = pn;
    }
    if (a->cfg.classes > 0)
        return supervised_rest(m, xs, h, y, p, N, st);
    /* Teacher in training mode (batch statistics), no gradient. Its
     * activations reuse slot 0; only the normalized outputs are per view. */
    for (int v = 0; v < 2; v++) {
        float *th = enc_fwd(&m->tnet, 0, xs[v], N, S, 1);
        if (!th)
            return -1;
        float *ty = proj_fwd(&m->tnet, 0, th, N, 1);
        float *zb = act(&m->tnet, a->id_pnorm, v, (size_t)N * D);
        float *zbn = act(&m->tnet, a->id_pnorm_n, v, (size_t)N);
        if (!ty || m->failed)
            return -1;
        be->l2norm_forward(be, ty, N, D, zb, zbn);
        z[v] = zb;
    }

    rw_net *n = &m->online;
    float *dp[2];
    for (int v = 0; v < 2; v++)
        dp[v] = grow(n, &m->dp[v], (size_t)N * D * sizeof(float));
    float *dfeat = grow(n, &m->dfeat, (size_t)N * F * sizeof(float));
    if (m->failed)
        return -1;
    be->loss(be, &a->cfg.loss, p[0], p[1], z[0], z[1], N, D, dp[0], dp[1], m->lossbuf);

    for (int v = 0; v < 2 && !m->failed; v++) {
        float *dq = scratch(n, 0), *dy = scratch(n, 1), *dh = scratch(n, 2);
        if (m->failed)
            break;
        be->l2norm_backward(be, p[v], act(n, a->id_pnorm_n, v, (size_t)N), dp[v], N, D, dq);
        pred_bwd(n, v, y[v], dq, dy, N);
        backbone_bwd(m, v, xs[v], h[v], dy, dh, dfeat, N);
    }
    return step_end(m, st);
}

void rw_model_stats(rw_model *m, rw_step_stats *st)
{
    float o[KB_LOSS_NOUT + 8];
    m->be->download(m->be, o, m->lossbuf, sizeof o);
    const float *me = o + KB_LOSS_NOUT, *xe = me + 4;
    st->loss = o[KB_LOSS_OUT_LOSS];
    st->align = o[KB_LOSS_OUT_ALIGN];
    st->cross = o[KB_LOSS_OUT_CROSS];
    st->byol = o[KB_LOSS_OUT_BYOL];
    st->uniform = 0.5f * (me[0] + me[1]);
    st->collapse = 0.5f * (me[2] + me[3]);
    if (m->a.cfg.classes > 0) {
        st->loss = 0.5f * (xe[0] + xe[2]);
        st->byol = 0; /* no teacher in this loss */
    }
}

void rw_model_update_prepare(rw_model *m, float lr, float weight_decay, float tau)
{
    struct {
        kb_adam_consts k;
        float tau[2];
    } h;
    m->adam_step++;
    h.k = kb_adam_consts_init(lr, 0.9f, 0.999f, 1e-8f, weight_decay, m->adam_step);
    kb_ema_consts_init(tau, h.tau);
    m->be->upload(m->be, m->adam_k, &h, sizeof h);
}

void rw_model_update_apply(rw_model *m)
{
    kb_backend *be = m->be;
    be->adam(be, m->params, m->grads, m->adam_m, m->adam_v, m->a.nparams, m->adam_k);
    be->ema(be, m->teacher, m->params, m->a.nteacher, m->tau_k);
}

void rw_model_update(rw_model *m, float lr, float weight_decay, float tau)
{
    rw_model_update_prepare(m, lr, weight_decay, tau);
    rw_model_update_apply(m);
}

const float *rw_model_projections(rw_model *m, int v)
{
    rw_net *n = &m->online;
    return (const float *)n->act[m->a.id_znorm * SLOTS + v].p;
}

int rw_model_features(rw_model *m, const float *x, int N, int S, int teacher, float *out)
{
    rw_net *n = teacher ? &m->tnet : &m->online;
    m->failed = 0;
    float *f = enc_fwd(n, 0, x, N, S, 0);
    if (!f || m->failed)
        return -1;
    m->be->copy(m->be, out, f, (size_t)N * m->a.F * sizeof(float));
    return 0;
}

int rw_model_project(rw_model *m, const float *x, int N, int S, int teacher, float *out)
{
    rw_net *n = teacher ? &m->tnet : &m->online;
    m->failed = 0;
    float *h = enc_fwd(n, 0, x, N, S, 0);
    float *y = h && !m->failed ? proj_fwd(n, 0, h, N, 0) : NULL;
    if (!y || m->failed)
        return -1;
    m->be->copy(m->be, out, y, (size_t)N * m->a.cfg.proj_out * sizeof(float));
    return 0;
}
