/* ResNet-18 + projector + predictor + mean teacher, and the training step.
 * See model.h for the buffer layout and arch.h for the layers' offsets.
 * The network is written out layer by layer (forward and backward side by
 * side) rather than as a generic graph: the architecture is fixed, and
 * explicit code is easier to check against torchvision.
 *
 * A step runs both views as one batch of 2N (view 1's samples, then view
 * 2's) through the online network and through the teacher, with every
 * training-mode batch norm keeping two groups of statistics: the math of
 * two separate passes (BYOL's per-view statistics), in half the launches.
 * Encoder activations are feature maps in the backend's format; the heads
 * work on fp32 rows. */
#include "worker/model.h"

#include "kernels/collective.h"
#include "kernels/optim.h"
#include "worker/directpred.h"
#include "worker/net.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VIEWS 2 /* the groups of a training batch */

struct rw_model {
    kb_backend *be;
    arch a;
    net_ctx ctx;    /* what the two nets share: failure, data parallelism */
    float *params, *grads, *adam_m, *adam_v, *teacher, *state, *tstate;
    long nbt[MAX_BN], tnbt[MAX_BN];
    long adam_step;
    int grads_zero; /* the gradient buffer is known to hold zeros (fresh, or after an update) */
    rw_net online, tnet;
    float *lossbuf; /* KB_LOSS_NOUT, then metbuf, then xent: one download fetches all */
    float *metbuf;  /* uniform v1, v2, collapse v1, v2 */
    /* then, supervised: cross-entropy and correct count of view 1, of view 2 */
    /* The update's per-step scalars in backend memory, written by
     * rw_model_update_prepare and read by the ops when they run. */
    kb_adam_consts *adam_k;
    kb_adam_consts *adam_k_pred; /* the predictor's: lr * pred_lr_mult */
    float *tau_k; /* [tau, 1 - tau] */
    /* The predictor apart from the rest (split): its own learning rate,
     * frozen, or DirectPred's. The update then covers [0, pred_off) and
     * the predictor, the buffer's tail, on its own terms. */
    float pred_lr_mult;
    int split;
    size_t pred_off;
    /* DirectPred (worker/directpred.h): F (D, D) on the host, in double;
     * a host staging of D * D + 1 floats (E[y y^T], or W and a status) and
     * its backend twin for a data-parallel job's broadcast of W */
    double *dp_F;
    float *dp_host, *dp_dev;
    buf dp;         /* dLoss/dp (2N, D) */
    buf dfeat;      /* dLoss/dfeatures (2N, F) */
    buf dlogits;    /* supervised: dLoss/dlogits (2N, classes) */
    const int32_t *labels; /* supervised: the batch's labels (backend memory) */
    int last_n;     /* samples per view of the last step */
};

/* ----------------------------------------------------------- model API */

/* Whether the update takes the predictor apart from the rest. Not for the
 * plain case: one pass over the buffer, one launch. */
static int wants_split(const rw_model *m)
{
    const arch *a = &m->a;
    return a->pred_layers > 0 &&
           (a->cfg.pred_frozen || a->cfg.predictor == RW_PRED_DIRECTPRED ||
            m->pred_lr_mult != 1.0f);
}

/* The online network's mirrors (the backend's copies of the weights, where
 * it keeps them): one over the whole buffer, or, split, one over the
 * prefix and one over the predictor, so that each update call refreshes
 * its own (the CUDA update writes the mirror of every weight of its
 * buffer). The teacher's, over its prefix, once. */
static int make_mirrors(rw_model *m)
{
    kb_backend *be = m->be;
    rw_net *n = &m->online;
    if (!be->mirror_create)
        return 0;
    if (n->mr)
        be->mirror_free(be, n->mr);
    if (n->mr_pred)
        be->mirror_free(be, n->mr_pred);
    n->mr = n->mr_pred = NULL;
    m->ctx.mem_gen++; /* a captured step held the old ones */
    kb_wseg w[MAX_NAMED];
    int nw = arch_weights(&m->a, w), ntw = 0, npre = nw;
    while (ntw < nw && w[ntw].off < m->a.nteacher)
        ntw++;
    if (m->split) {
        npre = 0;
        while (npre < nw && w[npre].off < m->pred_off)
            npre++;
        for (int i = npre; i < nw; i++)
            w[i].off -= m->pred_off;
        n->pred_off = m->pred_off;
        n->mr_pred = be->mirror_create(be, m->params + m->pred_off, w + npre, nw - npre);
        if (!n->mr_pred)
            return -1;
    }
    n->mr = be->mirror_create(be, m->params, w, npre);
    if (!m->tnet.mr)
        m->tnet.mr = be->mirror_create(be, m->teacher, w, ntw);
    return n->mr && m->tnet.mr ? 0 : -1;
}

size_t rw_model_cfg_params(const rw_model_cfg *c, int encoder_only)
{
    arch *a = malloc(sizeof *a); /* ~150 KB: not on the stack */
    char err[128];
    size_t n = 0;
    if (a && arch_build(a, c, err, sizeof err) == 0)
        n = encoder_only ? a->p1.w : a->nparams; /* the encoder: the buffer's prefix */
    free(a);
    return n;
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
    m->ctx.be = be;
    m->ctx.a = &m->a;
    if (arch_build(&m->a, cfg, err, errlen) != 0) {
        free(m);
        return NULL;
    }
    arch *a = &m->a;
    size_t np = a->nparams, nt = a->nteacher, ns = a->nstate;
    m->params = be->alloc(be, np * sizeof(float));
    m->grads = be->alloc(be, np * sizeof(float));
    m->grads_zero = 1; /* alloc zero-fills */
    m->adam_m = be->alloc(be, np * sizeof(float));
    m->adam_v = be->alloc(be, np * sizeof(float));
    m->teacher = be->alloc(be, nt * sizeof(float));
    m->state = be->alloc(be, ns * sizeof(float));
    m->tstate = be->alloc(be, (a->nteacher_state ? a->nteacher_state : 1) * sizeof(float));
    m->lossbuf = be->alloc(be, RW_MODEL_NSTATS * sizeof(float));
    m->metbuf = m->lossbuf ? m->lossbuf + KB_LOSS_NOUT : NULL;
    m->adam_k = be->alloc(be, 2 * sizeof(kb_adam_consts) + 2 * sizeof(float));
    m->adam_k_pred = m->adam_k ? m->adam_k + 1 : NULL;
    m->tau_k = m->adam_k ? (float *)(m->adam_k + 2) : NULL;
    m->pred_lr_mult = 1.0f;
    m->pred_off = a->pred_layers > 0 ? a->q1.w : np;
    m->split = wants_split(m);
    const int dp = cfg->predictor == RW_PRED_DIRECTPRED;
    const size_t dd = (size_t)cfg->proj_out * cfg->proj_out;
    if (dp) {
        m->dp_F = calloc(dd, sizeof *m->dp_F);
        m->dp_host = malloc((dd + 1) * sizeof *m->dp_host);
        m->dp_dev = be->alloc(be, (dd + 1) * sizeof *m->dp_dev);
    }
    float *hp = calloc(np, sizeof(float)), *hs = calloc(ns, sizeof(float));
    if (!m->params || !m->grads || !m->adam_m || !m->adam_v || !m->teacher || !m->state ||
        !m->tstate || !m->lossbuf || !m->adam_k || !hp || !hs ||
        (dp && (!m->dp_F || !m->dp_host || !m->dp_dev)) ||
        net_init(&m->online, &m->ctx, m->params, m->grads, m->state, m->nbt) != 0 ||
        net_init(&m->tnet, &m->ctx, m->teacher, NULL, m->tstate, m->tnbt) != 0)
        goto oom;
    arch_init_params(a, seed, hp, hs);
    be->upload(be, m->params, hp, np * sizeof(float));
    be->upload(be, m->state, hs, ns * sizeof(float));
    free(hp);
    free(hs);
    hp = hs = NULL;
    if (make_mirrors(m) != 0)
        goto oom;
    rw_model_teacher_from_online(m);
    return m;
oom:
    free(hp);
    free(hs);
    rw_model_free(m);
    snprintf(err, errlen, "out of memory for a model of %zu parameters", np);
    return NULL;
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
    conv_l *convs[1 + 4 * MAX_BLOCKS];
    int nc = arch_convs(&m->a, convs);
    for (int i = 0; i < nc; i++)
        for (int k = 0; k < convs[i]->ncache; k++)
            be->conv_free(be, convs[i]->cache[k].plan);
    buf *bufs_[] = {&m->dp, &m->dlogits, &m->dfeat, &m->ctx.syncbuf};
    for (size_t i = 0; i < sizeof bufs_ / sizeof *bufs_; i++)
        if (bufs_[i]->p)
            be->free(be, bufs_[i]->p);
    float *bufs[] = {m->params, m->grads, m->adam_m, m->adam_v, m->teacher,
                     m->state, m->tstate, m->lossbuf, (float *)m->adam_k, m->dp_dev};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        if (bufs[i])
            be->free(be, bufs[i]);
    free(m->dp_F);
    free(m->dp_host);
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
unsigned long rw_model_mem_gen(const rw_model *m) { return m->ctx.mem_gen; }
long rw_model_adam_step(const rw_model *m) { return m->adam_step; }
void rw_model_set_adam_step(rw_model *m, long step) { m->adam_step = step; }
const kb_loss_cfg *rw_model_loss_cfg(const rw_model *m) { return &m->a.cfg.loss; }
void rw_model_set_loss_cfg(rw_model *m, const kb_loss_cfg *c) { m->a.cfg.loss = *c; }
int rw_model_ntensors(const rw_model *m) { return m->a.nnamed; }
const rw_named *rw_model_tensor(const rw_model *m, int i) { return &m->a.named[i]; }

/* The projector follows the encoder in both buffers and in the BN order
 * (model.h), so its first tensors mark where the encoder ends, whatever
 * layers the arch lays out before it. */
int rw_model_in_encoder(const rw_model *m, const rw_named *t)
{
    if (t->kind == RW_T_PARAM)
        return t->off < m->a.p1.w;
    if (t->kind == RW_T_STATE)
        return t->off < m->a.pbn.rmean;
    return 0;
}
int rw_model_nbn_encoder(const rw_model *m) { return m->a.pbn.idx; }

void rw_model_set_grads_ready(rw_model *m, void (*fn)(void *ud, size_t from), void *ud)
{
    m->ctx.grads_ready = fn;
    m->ctx.grads_ready_ud = ud;
}

int rw_model_set_comm(rw_model *m, kb_comm *comm, int sync_bn, char *err, size_t errlen)
{
    /* A world of one has nothing to synchronize: sync_bn is then plain BN. */
    if (!comm || comm->world < 2)
        sync_bn = 0;
    if (sync_bn && (!m->be->bn_stats || !m->be->bn_backward_reduce)) {
        snprintf(err, errlen, "sync_bn: the %s backend has no synchronized batch norm",
                 m->be->name);
        return -1;
    }
    m->ctx.comm = comm;
    m->ctx.sync_bn = sync_bn && comm && comm->world > 1;
    m->ctx.comm_queued = comm && comm->device_memory && m->be->comm_allreduce;
    return 0;
}

const char *rw_model_error(const rw_model *m)
{
    return m->ctx.error[0] ? m->ctx.error : "out of memory or backend failure";
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
    if (m->a.cfg.predictor != RW_PRED_LINEAR && m->a.cfg.predictor != RW_PRED_LINEAR_IDENTITY &&
        m->a.cfg.predictor != RW_PRED_DIRECTPRED)
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
    if (m->tnet.mr)
        be->mirror_write(be, m->tnet.mr);
}

void rw_model_params_written(rw_model *m)
{
    kb_backend *be = m->be;
    if (m->online.mr)
        be->mirror_write(be, m->online.mr);
    if (m->online.mr_pred)
        be->mirror_write(be, m->online.mr_pred);
    if (m->tnet.mr)
        be->mirror_write(be, m->tnet.mr);
}

void rw_model_set_labels(rw_model *m, const int32_t *labels) { m->labels = labels; }

/* The teacher in training mode (batch statistics), no gradient: z =
 * l2norm(projector(encoder(x))) of both views (2N, D). */
static const float *teacher_fwd(rw_model *m, const void *x, int NN, int S)
{
    rw_net *t = &m->tnet;
    arch *a = &m->a;
    const int D = a->cfg.proj_out;
    float *th = enc_fwd(t, x, NN, S, 1);
    float *ty = th ? proj_fwd(t, th, NN, 1) : NULL;
    float *z = net_rows(t, a->id_pnorm, NN, D), *zn = net_rows(t, a->id_pnorm_n, NN, 1);
    if (!ty || !z || !zn || m->ctx.failed)
        return NULL;
    m->be->l2norm_forward(m->be, ty, NN, D, z, zn);
    return z;
}

/* The supervised baseline after the online forward pass: each view's
 * logits from its projections y, the mean of the two views' cross-entropy
 * (one label per sample, for both of its views), and the backward pass
 * through classifier, projector and encoder. */
static int supervised_rest(rw_model *m, const void *x, const float *h, const float *y,
                           const float *p, int N)
{
    kb_backend *be = m->be;
    arch *a = &m->a;
    rw_net *n = &m->online;
    const int NN = VIEWS * N, D = a->cfg.proj_out, F = a->F, K = a->cfg.classes;
    if (!m->labels) {
        snprintf(m->ctx.error, sizeof m->ctx.error, "the supervised baseline was given no labels");
        m->ctx.failed = 1;
        return -1;
    }
    float *dp = net_grow(n, &m->dp, (size_t)NN * D * sizeof(float));
    float *dl = net_grow(n, &m->dlogits, (size_t)NN * K * sizeof(float));
    float *dfeat = net_grow(n, &m->dfeat, (size_t)NN * F * sizeof(float));
    float *logits = lin_fwd(n, &a->cls, y, NN);
    float *dy = net_scratch(n, 1);
    if (m->ctx.failed)
        return -1;
    /* L_align of the normalized projections, measured only (z = p: the
     * cross term is 0) */
    be->loss(be, &a->cfg.loss, p, p + (size_t)N * D, p, p + (size_t)N * D, N, D, dp,
             dp + (size_t)N * D, m->lossbuf);
    for (int v = 0; v < VIEWS; v++)
        be->softmax_xent(be, logits + (size_t)v * N * K, m->labels, N, K,
                         dl + (size_t)v * N * K, m->lossbuf + KB_LOSS_NOUT + 4 + 2 * v);
    be->scale(be, dl, 0.5f, (size_t)NN * K); /* the loss is the views' mean */
    lin_bwd(n, &a->cls, y, dl, dy, NN);
    proj_bwd(n, h, dy, dfeat, NN);
    enc_bwd(n, x, dfeat, NN);
    return m->ctx.failed ? -1 : 0;
}

int rw_model_forward_backward(rw_model *m, const void *x, int N, int S, rw_step_stats *st)
{
    kb_backend *be = m->be;
    arch *a = &m->a;
    rw_net *n = &m->online;
    const int NN = VIEWS * N, D = a->cfg.proj_out, F = a->F;
    m->ctx.failed = 0;
    m->ctx.error[0] = 0;
    m->last_n = N;
    if (!m->grads_zero)
        be->fill(be, m->grads, 0.0f, a->nparams);
    m->grads_zero = 0;
    n->groups = m->tnet.groups = VIEWS;

    /* The teacher beside the online network where the backend has a second
     * queue: they share only x. Not with SyncBN, whose all-reduces wait. */
    const int side = be->side_begin && !m->ctx.sync_bn && a->cfg.classes == 0;
    const float *z = NULL;
    if (side) {
        be->side_begin(be);
        z = teacher_fwd(m, x, NN, S);
        be->side_end(be);
        if (!z)
            goto fail;
    }
    const float *h = enc_fwd(n, x, NN, S, 1);
    const float *y = h ? proj_fwd(n, h, NN, 1) : NULL;
    const float *q = y ? pred_fwd(n, y, NN) : NULL;
    float *p = net_rows(n, a->id_pnorm, NN, D), *pn = net_rows(n, a->id_pnorm_n, NN, 1);
    float *zn = net_rows(n, a->id_znorm, NN, D), *znn = net_rows(n, a->id_znorm_n, NN, 1);
    if (!q || m->ctx.failed)
        goto fail;
    be->l2norm_forward(be, q, NN, D, p, pn);
    be->l2norm_forward(be, y, NN, D, zn, znn);
    be->uniformity(be, zn, VIEWS, N, D, 2.0f, m->metbuf);
    be->collapse_std(be, zn, VIEWS, N, D, m->metbuf + 2);
    if (a->cfg.classes > 0) {
        if (supervised_rest(m, x, h, y, p, N) != 0)
            goto fail;
        goto done;
    }
    if (side)
        be->side_join(be);
    else if (!(z = teacher_fwd(m, x, NN, S)))
        goto fail;

    float *dp = net_grow(n, &m->dp, (size_t)NN * D * sizeof(float));
    float *dfeat = net_grow(n, &m->dfeat, (size_t)NN * F * sizeof(float));
    float *dq = net_scratch(n, 0), *dy = net_scratch(n, 1);
    if (m->ctx.failed)
        goto fail;
    be->loss(be, &a->cfg.loss, p, p + (size_t)N * D, z, z + (size_t)N * D, N, D, dp,
             dp + (size_t)N * D, m->lossbuf);
    be->l2norm_backward(be, p, pn, dp, NN, D, dq);
    pred_bwd(n, y, dq, dy, NN);
    proj_bwd(n, h, dy, dfeat, NN);
    enc_bwd(n, x, dfeat, NN);
    if (m->ctx.failed)
        goto fail;
done:
    n->groups = m->tnet.groups = 1;
    if (st)
        rw_model_stats(m, st);
    return 0;
fail:
    n->groups = m->tnet.groups = 1;
    return -1;
}

const float *rw_model_stats_buf(const rw_model *m) { return m->lossbuf; }

void rw_model_stats_decode(const rw_model *m, const float *o, rw_step_stats *st)
{
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

void rw_model_stats(rw_model *m, rw_step_stats *st)
{
    float o[RW_MODEL_NSTATS];
    m->be->download(m->be, o, m->lossbuf, sizeof o);
    rw_model_stats_decode(m, o, st);
}

void rw_model_update_prepare(rw_model *m, float lr, float weight_decay, float tau)
{
    struct {
        kb_adam_consts k, kp;
        float tau[2];
    } h;
    m->adam_step++;
    h.k = kb_adam_consts_init(lr, 0.9f, 0.999f, 1e-8f, weight_decay, m->adam_step);
    h.kp = kb_adam_consts_init(lr * m->pred_lr_mult, 0.9f, 0.999f, 1e-8f, weight_decay,
                               m->adam_step);
    kb_ema_consts_init(tau, h.tau);
    m->be->upload(m->be, m->adam_k, &h, sizeof h);
}

/* The predictor's part of a split update. Frozen: nothing moves, not even
 * Adam's moments (weight decay would); its gradient is zeroed, as the
 * update zeroes the rest. DirectPred: the host sets W
 * (rw_model_update_finish), and the gradient slot holds E[y y^T] for it. */
static void predictor_update(rw_model *m)
{
    kb_backend *be = m->be;
    const size_t off = m->pred_off, n = m->a.nparams - off;
    if (m->a.cfg.predictor == RW_PRED_DIRECTPRED)
        return;
    if (m->a.cfg.pred_frozen) {
        be->fill(be, m->grads + off, 0.0f, n);
        return;
    }
    kb_update u = {
        .params = m->params + off, .grads = m->grads + off, .adam_m = m->adam_m + off,
        .adam_v = m->adam_v + off, .n = n, .k = m->adam_k_pred, .mirror = m->online.mr_pred,
    };
    be->update(be, &u);
}

void rw_model_update_apply(rw_model *m)
{
    /* the teacher mirrors the prefix only: the split leaves it whole */
    kb_update u = {
        .params = m->params, .grads = m->grads, .adam_m = m->adam_m, .adam_v = m->adam_v,
        .n = m->split ? m->pred_off : m->a.nparams, .k = m->adam_k, .teacher = m->teacher,
        .nteacher = m->a.nteacher, .tau_omt = m->tau_k, .mirror = m->online.mr,
        .tmirror = m->tnet.mr,
    };
    m->be->update(m->be, &u);
    if (m->split)
        predictor_update(m);
    m->grads_zero = 1;
}

/* DirectPred's W from F: rank 0 decides, and in a data-parallel job every
 * rank takes its W and its verdict, so that no rank's LAPACK rounds apart
 * from the others (a host of another CPU picks other kernels). */
static int directpred_set_w(rw_model *m)
{
    kb_backend *be = m->be;
    kb_comm *c = m->ctx.comm;
    const int D = m->a.cfg.proj_out, world = c ? c->world : 1;
    const size_t n = (size_t)D * D;
    float *h = m->dp_host; /* W, then its status: 0 set, 1 nothing to set, -1 failed */
    if (world < 2 || c->rank == 0)
        h[n] = (float)rw_directpred_w(m->dp_F, D, m->a.cfg.directpred.eps, h, m->ctx.error,
                                      sizeof m->ctx.error);
    if (world > 1) {
        be->upload(be, m->dp_dev, h, (n + 1) * sizeof *h);
        if (c->broadcast(c, m->dp_dev, (n + 1) * sizeof *h, 0, m->ctx.error,
                         sizeof m->ctx.error) != 0)
            return -1;
        be->download(be, h, m->dp_dev, (n + 1) * sizeof *h);
    }
    if (h[n] < 0) {
        if (c && c->rank != 0)
            snprintf(m->ctx.error, sizeof m->ctx.error, "directpred: rank 0 could not set W");
        return -1;
    }
    if (h[n] > 0) /* F has no positive eigenvalue yet: W stays */
        return 0;
    be->upload(be, m->params + m->pred_off, h, n * sizeof *h);
    if (m->online.mr_pred)
        be->mirror_write(be, m->online.mr_pred);
    return 0;
}

int rw_model_update_finish(rw_model *m)
{
    if (m->a.cfg.predictor != RW_PRED_DIRECTPRED)
        return 0;
    kb_backend *be = m->be;
    const int D = m->a.cfg.proj_out;
    m->ctx.error[0] = 0;
    be->download(be, m->dp_host, m->grads + m->pred_off, (size_t)D * D * sizeof *m->dp_host);
    rw_directpred_fold(m->dp_F, m->dp_host, D, m->a.cfg.directpred.momentum);
    if (m->adam_step % m->a.cfg.directpred.every != 0)
        return 0;
    return directpred_set_w(m);
}

int rw_model_update(rw_model *m, float lr, float weight_decay, float tau)
{
    rw_model_update_prepare(m, lr, weight_decay, tau);
    rw_model_update_apply(m);
    return rw_model_update_finish(m);
}

int rw_model_set_predictor_lr_mult(rw_model *m, float mult, char *err, size_t errlen)
{
    if (!(mult >= 0) || !isfinite(mult)) {
        snprintf(err, errlen, "the predictor's learning-rate multiplier must be >= 0 (got %g)",
                 (double)mult);
        return -1;
    }
    if (mult != 1.0f && (m->a.pred_layers == 0 || m->a.cfg.predictor == RW_PRED_DIRECTPRED)) {
        snprintf(err, errlen, "a learning-rate multiplier needs a predictor trained by gradient");
        return -1;
    }
    m->pred_lr_mult = mult;
    const int split = wants_split(m);
    if (split == m->split)
        return 0;
    m->split = split;
    if (make_mirrors(m) != 0) {
        snprintf(err, errlen, "out of memory for the weights' mirrors");
        return -1;
    }
    return 0;
}

double *rw_model_directpred_corr(rw_model *m) { return m->dp_F; }

const float *rw_model_projections(rw_model *m, int v)
{
    const float *z = m->online.act[m->a.id_znorm].p;
    return z ? z + (size_t)v * m->last_n * m->a.cfg.proj_out : NULL;
}

const float *rw_model_pred_input(rw_model *m) { return m->online.act[m->a.p2.id].p; }

int rw_model_features(rw_model *m, const void *x, int N, int S, int teacher, float *out)
{
    rw_net *n = teacher ? &m->tnet : &m->online;
    m->ctx.failed = 0;
    float *f = enc_fwd(n, x, N, S, 0);
    if (!f || m->ctx.failed)
        return -1;
    m->be->copy(m->be, out, f, (size_t)N * m->a.F * sizeof(float));
    return 0;
}

int rw_model_project(rw_model *m, const void *x, int N, int S, int teacher, float *out)
{
    rw_net *n = teacher ? &m->tnet : &m->online;
    m->ctx.failed = 0;
    float *h = enc_fwd(n, x, N, S, 0);
    float *y = h && !m->ctx.failed ? proj_fwd(n, h, N, 0) : NULL;
    if (!y || m->ctx.failed)
        return -1;
    m->be->copy(m->be, out, y, (size_t)N * m->a.cfg.proj_out * sizeof(float));
    return 0;
}
