/* The architecture: ResNet-18, -34 or -50 in torchvision's layout (with
 * runaway's width and stem options), projector, predictor, classifier, their
 * parameter and state offsets, names and initialization (see arch.h). */
#include "worker/arch.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* Blocks per stage, as torchvision's resnet18/34/50. */
static const int stage_blocks[3][4] = {
    [RW_ARCH_RESNET18] = {2, 2, 2, 2},
    [RW_ARCH_RESNET34] = {3, 4, 6, 3},
    [RW_ARCH_RESNET50] = {3, 4, 6, 3},
};

/* Block B of stage L (0-based) on C input channels, planes K: its layers
 * in torchvision's registration order (conv1, bn1, conv2, bn2[, conv3,
 * bn3], downsample). Returns its output channels. */
static int block_init(arch *a, block_l *b, int L, int B, int C, int K, int bottleneck)
{
    const int stride = (L > 0 && B == 0) ? 2 : 1;
    const int out = bottleneck ? 4 * K : K;
    char p[48];
#define NAME(leaf) (snprintf(p, sizeof p, "layer%d.%d.%s", L + 1, B, leaf), p)
    b->bottleneck = bottleneck;
    if (bottleneck) {
        conv_init(a, &b->c1, NAME("conv1"), C, K, 1, 1, 0);
        bn_init(a, &b->b1, NAME("bn1"), K);
        conv_init(a, &b->c2, NAME("conv2"), K, K, 3, stride, 1);
        bn_init(a, &b->b2, NAME("bn2"), K);
        conv_init(a, &b->c3, NAME("conv3"), K, out, 1, 1, 0);
        bn_init(a, &b->b3, NAME("bn3"), out);
    } else {
        conv_init(a, &b->c1, NAME("conv1"), C, K, 3, stride, 1);
        bn_init(a, &b->b1, NAME("bn1"), K);
        conv_init(a, &b->c2, NAME("conv2"), K, K, 3, 1, 1);
        bn_init(a, &b->b2, NAME("bn2"), K);
    }
    b->down = stride != 1 || C != out;
    if (b->down) {
        conv_init(a, &b->cd, NAME("downsample.0"), C, out, 1, stride, 0);
        bn_init(a, &b->bd, NAME("downsample.1"), out);
    }
#undef NAME
    return out;
}

int arch_build(arch *a, const rw_model_cfg *cfg, char *err, size_t errlen)
{
    memset(a, 0, sizeof *a);
    a->cfg = *cfg;
    int w = cfg->width;
    if ((unsigned)cfg->arch > RW_ARCH_RESNET50) {
        snprintf(err, errlen, "model: unknown architecture %d", (int)cfg->arch);
        return -1;
    }
    const int bottleneck = cfg->arch == RW_ARCH_RESNET50;
    const int wmax = bottleneck ? RW_WIDTH_MAX_BOTTLENECK : RW_WIDTH_MAX_BASIC;
    if (w < 1 || w > wmax) {
        snprintf(err, errlen, "model: %s's width must be 1..%d (got %d)",
                 rw_arch_name(cfg->arch), wmax, w);
        return -1;
    }
    const int mlp = cfg->predictor == RW_PRED_MLP || cfg->predictor == RW_PRED_MLP_BN;
    if (cfg->proj_hidden < 1 || cfg->proj_out < 1 || (mlp && cfg->pred_hidden < 1)) {
        snprintf(err, errlen, "model: layer sizes must be positive");
        return -1;
    }
    if ((unsigned)cfg->predictor > RW_PRED_DIRECTPRED) {
        snprintf(err, errlen, "model: unknown predictor %d", (int)cfg->predictor);
        return -1;
    }
    if (cfg->predictor == RW_PRED_DIRECTPRED &&
        !(cfg->directpred.every >= 1 && cfg->directpred.momentum >= 0 &&
          cfg->directpred.momentum < 1 && cfg->directpred.eps >= 0)) {
        snprintf(err, errlen, "model: directpred needs every >= 1, momentum in [0, 1) and "
                 "eps >= 0 (got %d, %g, %g)", cfg->directpred.every,
                 (double)cfg->directpred.momentum, (double)cfg->directpred.eps);
        return -1;
    }
    if (cfg->pred_frozen &&
        (cfg->predictor == RW_PRED_NONE || cfg->predictor == RW_PRED_DIRECTPRED)) {
        snprintf(err, errlen, "model: only a predictor trained by gradient can be frozen");
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
    a->id_pool_idx = a->nact++;
    int C = w;
    for (int L = 0; L < 4; L++)
        for (int B = 0; B < stage_blocks[cfg->arch][L]; B++) {
            assert(a->nblocks < MAX_BLOCKS);
            C = block_init(a, &a->blocks[a->nblocks++], L, B, C, w << L, bottleneck);
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
    case RW_PRED_DIRECTPRED: /* W is nn.Linear's until the first eigendecomposition */
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

void arch_init_params(const arch *a, uint64_t seed, float *hp, float *hs)
{
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
    /* After every draw, so the other weights are the seed's, bit for bit:
     * a run with these and one without start from the same theta0. */
    if (a->cfg.pred_negated && a->pred_layers > 0) {
        const lin_l *out = a->pred_layers == 2 ? &a->q2 : &a->q1;
        size_t n = (size_t)out->O * out->I;
        for (size_t k = 0; k < n; k++)
            hp[out->w + k] = -hp[out->w + k];
        for (int k = 0; out->has_b && k < out->O; k++)
            hp[out->b + k] = -hp[out->b + k];
    }
    for (int k = 0; k < abs(a->cfg.init_nudge_ulps); k++) {
        float *w = hp + a->conv1.w;
        *w = nextafterf(*w, a->cfg.init_nudge_ulps > 0 ? INFINITY : -INFINITY);
    }
}

const char *rw_predictor_out_prefix(rw_predictor p)
{
    switch (p) {
    case RW_PRED_LINEAR:
    case RW_PRED_LINEAR_IDENTITY:
    case RW_PRED_DIRECTPRED:
        return "predictor";
    case RW_PRED_MLP:
        return "predictor.2";
    case RW_PRED_MLP_BN:
        return "predictor.3";
    default:
        return NULL;
    }
}

void rw_model_cfg_from_spec(const rw_spec *s, rw_model_cfg *c)
{
    memset(c, 0, sizeof *c);
    c->arch = s->model.arch;
    c->stem = s->model.stem;
    c->width = s->model.width;
    c->proj_hidden = s->model.proj_hidden;
    c->proj_out = s->model.proj_out;
    c->predictor = s->model.predictor;
    c->pred_hidden = s->model.pred_hidden;
    c->pred_frozen = s->model.pred_frozen;
    c->directpred.every = s->model.directpred.every;
    c->directpred.momentum = s->model.directpred.momentum;
    c->directpred.eps = s->model.directpred.eps;
    c->loss.kind = s->loss.kind == RW_LOSS_BYOL ? KB_LOSS_BYOL : KB_LOSS_UNIFIED;
    c->loss.alpha = s->loss.alpha;
    c->loss.beta = s->loss.beta;
    c->loss.tangential = s->loss.tangential;
    c->nondeterministic = !s->deterministic;
    c->pred_negated = s->model.predictor_negated;
    c->init_nudge_ulps = s->model.init_nudge_ulps;
    if (s->loss.kind == RW_LOSS_SUPERVISED) {
        c->classes = rw_spec_classes(s);
        c->loss = (kb_loss_cfg){KB_LOSS_UNIFIED, 1.0f, 0.0f, 0}; /* measures L_align */
    }
}

int arch_weights(const arch *a, kb_wseg *w)
{
    int n = 0;
    for (int i = 0; i < a->nnamed; i++) {
        const rw_named *t = &a->named[i];
        if (t->kind != RW_T_PARAM || (t->ndim != 4 && t->ndim != 2))
            continue;
        w[n++] = (kb_wseg){t->off, t->shape[0], t->shape[1], t->ndim == 4 ? t->shape[2] : 0,
                           t->ndim == 4 ? t->shape[3] : 0};
    }
    return n;
}

int arch_convs(arch *a, conv_l **c)
{
    int n = 0;
    c[n++] = &a->conv1;
    for (int i = 0; i < a->nblocks; i++) {
        block_l *b = &a->blocks[i];
        c[n++] = &b->c1;
        c[n++] = &b->c2;
        if (b->bottleneck)
            c[n++] = &b->c3;
        if (b->down)
            c[n++] = &b->cd;
    }
    return n;
}
