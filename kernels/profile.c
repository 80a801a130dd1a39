/* The profiling wrapper (kernels/profile.h): every op of the table, timed
 * between two stamps of the wrapped backend. */
#include "kernels/profile.h"

#include <stdlib.h>
#include <string.h>

enum {
    OP_CONV_FWD, OP_CONV_BWD_DATA, OP_CONV_BWD_W,
    OP_BN_FWD_TRAIN, OP_BN_FWD_EVAL, OP_BN_BWD, OP_BN_STATS, OP_BN_BWD_REDUCE,
    OP_RELU_FWD, OP_RELU_BWD, OP_AVGPOOL_FWD, OP_AVGPOOL_BWD,
    OP_LINEAR_FWD, OP_LINEAR_BWD, OP_L2NORM_FWD, OP_L2NORM_BWD,
    OP_LOSS, OP_UNIFORMITY, OP_COLLAPSE, OP_XENT, OP_UPDATE, OP_AUGMENT,
    OP_FILL, OP_SCALE, OP_COPY, OP_UPLOAD, OP_DOWNLOAD, OP_FMAP_UPLOAD, OP_FMAP_DOWNLOAD,
    OP_MIRROR, OP_RING,
    OP_COUNT
};

static const char *const op_names[OP_COUNT] = {
    "conv forward", "conv backward data", "conv backward weight",
    "bn forward (train)", "bn forward (eval)", "bn backward", "bn stats (sync)",
    "bn backward reduce (sync)",
    "relu forward", "relu backward", "avgpool forward", "avgpool backward",
    "linear forward", "linear backward", "l2norm forward", "l2norm backward",
    "loss", "uniformity", "collapse std", "softmax xent", "update (adam, ema)",
    "views (augment)", "fill", "scale", "copy", "upload", "download", "feature map upload",
    "feature map download", "mirror write", "ring push",
};

typedef struct rec {
    int op;
    double flop, bytes;
} rec;

typedef struct prof {
    kb_backend *inner;
    int on;
    /* this step's records; stamps 2i and 2i + 1 bracket record i */
    rec *recs;
    kb_stamp **stamps;
    size_t n, cap, nstamps;
    int broken; /* a stamp could not be made: recording stopped */
    /* totals */
    long steps;
    double span_ms, gap_ms;
    long calls[OP_COUNT];
    double ms[OP_COUNT], flop[OP_COUNT], bytes[OP_COUNT];
} prof;

/* A wrapper's plan carries the shape, for the FLOP count. */
typedef struct pconv {
    kb_conv *in;
    kb_conv_desc d;
} pconv;

static inline prof *P_of(kb_backend *be) { return (prof *)be->impl; }

/* 1 when the op is being recorded (its first stamp taken). */
static int begin(prof *P, int op)
{
    if (!P->on || P->broken)
        return 0;
    if (P->n == P->cap) {
        size_t cap = P->cap ? 2 * P->cap : 512;
        rec *r = realloc(P->recs, cap * sizeof *r);
        if (r)
            P->recs = r;
        kb_stamp **s = realloc(P->stamps, 2 * cap * sizeof *s);
        if (s)
            P->stamps = s;
        if (!r || !s) {
            P->broken = 1;
            return 0;
        }
        P->cap = cap;
    }
    kb_backend *in = P->inner;
    while (P->nstamps < 2 * P->n + 2) {
        kb_stamp *s = in->stamp_create(in);
        if (!s) {
            P->broken = 1;
            return 0;
        }
        P->stamps[P->nstamps++] = s;
    }
    P->recs[P->n].op = op;
    in->stamp_record(in, P->stamps[2 * P->n]);
    return 1;
}

static void end(prof *P, int recording, double flop, double bytes)
{
    if (!recording)
        return;
    kb_backend *in = P->inner;
    in->stamp_record(in, P->stamps[2 * P->n + 1]);
    P->recs[P->n].flop = flop;
    P->recs[P->n].bytes = bytes;
    P->n++;
}

#define ENTER(op)                                                                                  \
    prof *P = P_of(be);                                                                            \
    kb_backend *in = P->inner;                                                                     \
    int rec_ = begin(P, op)
#define LEAVE(flop, bytes) end(P, rec_, (double)(flop), (double)(bytes))

/* ---- memory and control: forwarded ---- */

static void p_destroy(kb_backend *be)
{
    prof *P = P_of(be);
    kb_backend *in = P->inner;
    for (size_t i = 0; i < P->nstamps; i++)
        in->stamp_free(in, P->stamps[i]);
    free(P->stamps);
    free(P->recs);
    kb_destroy(in);
    free(P);
    free(be);
}

static void *p_alloc(kb_backend *be, size_t bytes)
{
    kb_backend *in = P_of(be)->inner;
    return in->alloc(in, bytes);
}

static void p_free(kb_backend *be, void *p)
{
    kb_backend *in = P_of(be)->inner;
    in->free(in, p);
}

static void p_upload(kb_backend *be, void *dst, const void *src, size_t bytes)
{
    ENTER(OP_UPLOAD);
    in->upload(in, dst, src, bytes);
    LEAVE(0, bytes);
}

static void p_download(kb_backend *be, void *dst, const void *src, size_t bytes)
{
    ENTER(OP_DOWNLOAD);
    in->download(in, dst, src, bytes);
    LEAVE(0, bytes);
}

static void p_copy(kb_backend *be, void *dst, const void *src, size_t bytes)
{
    ENTER(OP_COPY);
    in->copy(in, dst, src, bytes);
    LEAVE(0, 2.0 * bytes);
}

static void *p_host_alloc(kb_backend *be, size_t bytes)
{
    kb_backend *in = P_of(be)->inner;
    return in->host_alloc(in, bytes);
}

static void p_host_wait(kb_backend *be, void *p)
{
    kb_backend *in = P_of(be)->inner;
    in->host_wait(in, p);
}

static void p_host_free(kb_backend *be, void *p)
{
    kb_backend *in = P_of(be)->inner;
    in->host_free(in, p);
}

static void p_sync(kb_backend *be)
{
    kb_backend *in = P_of(be)->inner;
    in->sync(in);
}

static kb_precision p_set_precision(kb_backend *be, kb_precision p)
{
    kb_backend *in = P_of(be)->inner;
    return in->set_precision(in, p);
}

static void p_device_info(kb_backend *be, char *name, size_t len, size_t *free_bytes,
                          size_t *total_bytes)
{
    kb_backend *in = P_of(be)->inner;
    in->device_info(in, name, len, free_bytes, total_bytes);
}

static kb_stamp *p_stamp_create(kb_backend *be)
{
    kb_backend *in = P_of(be)->inner;
    return in->stamp_create(in);
}

static void p_stamp_record(kb_backend *be, kb_stamp *s)
{
    kb_backend *in = P_of(be)->inner;
    in->stamp_record(in, s);
}

static double p_stamp_ms(kb_backend *be, const kb_stamp *a, const kb_stamp *b)
{
    kb_backend *in = P_of(be)->inner;
    return in->stamp_ms(in, a, b);
}

static void p_stamp_free(kb_backend *be, kb_stamp *s)
{
    kb_backend *in = P_of(be)->inner;
    in->stamp_free(in, s);
}

/* Bytes of a feature map in the wrapped backend's format. */
static double fmb(kb_backend *in, int N, int C, int H, int W)
{
    return (double)in->fmap_bytes(in, N, C, H, W);
}

static int p_augment(kb_backend *be, const uint8_t *src, int W, int H, int staged,
                     const uint32_t *keys, int n, uint64_t seed, const int *views, int nviews,
                     int S, const float mean[3], const float std[3], void *out)
{
    ENTER(OP_AUGMENT);
    int r = in->augment(in, src, W, H, staged, keys, n, seed, views, nviews, S, mean, std, out);
    /* one read of each source image (uint8) per view, one write of the views */
    LEAVE(0, (double)nviews * n * 3.0 * W * H + fmb(in, nviews * n, 3, S, S));
    return r;
}

/* ---- feature maps and mirrors ---- */

static size_t p_fmap_bytes(kb_backend *be, int N, int C, int H, int W)
{
    kb_backend *in = P_of(be)->inner;
    return in->fmap_bytes(in, N, C, H, W);
}

static void p_fmap_upload(kb_backend *be, void *dst, const float *src, int N, int C, int H, int W)
{
    ENTER(OP_FMAP_UPLOAD);
    in->fmap_upload(in, dst, src, N, C, H, W);
    LEAVE(0, fmb(in, N, C, H, W));
}

static void p_fmap_download(kb_backend *be, float *dst, const void *src, int N, int C, int H,
                            int W)
{
    ENTER(OP_FMAP_DOWNLOAD);
    in->fmap_download(in, dst, src, N, C, H, W);
    LEAVE(0, fmb(in, N, C, H, W));
}

static kb_mirror *p_mirror_create(kb_backend *be, const float *params, const kb_wseg *w, int nw)
{
    kb_backend *in = P_of(be)->inner;
    return in->mirror_create(in, params, w, nw);
}

static void p_mirror_free(kb_backend *be, kb_mirror *mr)
{
    kb_backend *in = P_of(be)->inner;
    in->mirror_free(in, mr);
}

static void p_mirror_write(kb_backend *be, kb_mirror *mr)
{
    ENTER(OP_MIRROR);
    in->mirror_write(in, mr);
    LEAVE(0, 0);
}

static const void *p_mirror_at(kb_backend *be, const kb_mirror *mr, size_t off)
{
    kb_backend *in = P_of(be)->inner;
    return in->mirror_at(in, mr, off);
}

/* ---- elementwise ---- */

static void p_fill(kb_backend *be, float *x, float v, size_t n)
{
    ENTER(OP_FILL);
    in->fill(in, x, v, n);
    LEAVE(0, 4.0 * n);
}

static void p_scale(kb_backend *be, float *x, float a, size_t n)
{
    ENTER(OP_SCALE);
    in->scale(in, x, a, n);
    LEAVE(n, 8.0 * n);
}

/* ---- convolution ---- */

static double conv_flop(const kb_conv_desc *d)
{
    return 2.0 * d->N * d->K * d->P * d->Q * (double)d->C * d->R * d->S;
}

/* x and y feature maps in the backend's format, w in fp32 (read, or read
 * and written for a weight gradient) */
static double conv_bytes(kb_backend *in, const kb_conv_desc *d, int w_rw)
{
    double w = (double)d->K * d->C * d->R * d->S;
    return fmb(in, d->N, d->C, d->H, d->W) + fmb(in, d->N, d->K, d->P, d->Q) +
           4.0 * (w_rw ? 2 : 1) * w;
}

static kb_conv *p_conv_plan(kb_backend *be, const kb_conv_desc *d)
{
    kb_backend *in = P_of(be)->inner;
    pconv *pc = malloc(sizeof *pc);
    if (!pc)
        return NULL;
    pc->d = *d;
    pc->in = in->conv_plan(in, d);
    if (!pc->in) {
        free(pc);
        return NULL;
    }
    return (kb_conv *)(void *)pc;
}

static void p_conv_free(kb_backend *be, kb_conv *c)
{
    kb_backend *in = P_of(be)->inner;
    pconv *pc = (pconv *)(void *)c;
    if (!pc)
        return;
    in->conv_free(in, pc->in);
    free(pc);
}

static void p_conv_forward(kb_backend *be, kb_conv *c, const void *x, const float *w,
                           const void *wm, void *y)
{
    pconv *pc = (pconv *)(void *)c;
    ENTER(OP_CONV_FWD);
    in->conv_forward(in, pc->in, x, w, wm, y);
    LEAVE(conv_flop(&pc->d), conv_bytes(in, &pc->d, 0));
}

static void p_conv_backward_data(kb_backend *be, kb_conv *c, const void *dy, const float *w,
                                 const void *wm, void *dx, int accumulate)
{
    pconv *pc = (pconv *)(void *)c;
    ENTER(OP_CONV_BWD_DATA);
    in->conv_backward_data(in, pc->in, dy, w, wm, dx, accumulate);
    const kb_conv_desc *d = &pc->d;
    LEAVE(conv_flop(d), conv_bytes(in, d, 0) + (accumulate ? fmb(in, d->N, d->C, d->H, d->W) : 0));
}

static void p_conv_backward_weight(kb_backend *be, kb_conv *c, const void *x, const void *dy,
                                   float *dw)
{
    pconv *pc = (pconv *)(void *)c;
    ENTER(OP_CONV_BWD_W);
    in->conv_backward_weight(in, pc->in, x, dy, dw);
    LEAVE(conv_flop(&pc->d), conv_bytes(in, &pc->d, 1));
}

/* ---- batch norm ---- */

/* One pass over a tensor of b's shape. */
static double bn_pass(kb_backend *in, const kb_bn *b)
{
    return b->rows ? 4.0 * b->N * b->C : fmb(in, b->N, b->C, b->HW, 1);
}

/* One pass over the output (y or dy): the pooled map and its winners, with
 * a max pool. */
static double bn_out(kb_backend *in, const kb_bn *b)
{
    if (!b->pool)
        return bn_pass(in, b);
    const int H = b->HW / b->W, P_ = kb_pool_out(H, b->pool, b->pool_stride, b->pool_pad),
              Q = kb_pool_out(b->W, b->pool, b->pool_stride, b->pool_pad);
    return fmb(in, b->N, b->C, P_, Q) + (double)b->N * b->C * P_ * Q;
}

static void p_bn_stats(kb_backend *be, const kb_bn *b, const void *x, float *stats)
{
    ENTER(OP_BN_STATS);
    in->bn_stats(in, b, x, stats);
    LEAVE(0, bn_pass(in, b));
}

static void p_bn_forward(kb_backend *be, const kb_bn *b, const void *x, const float *stats,
                         double count, const void *residual, void *y)
{
    ENTER(OP_BN_FWD_TRAIN);
    in->bn_forward(in, b, x, stats, count, residual, y);
    /* statistics (unless given), then x (and the residual) in, y out */
    LEAVE(0, bn_pass(in, b) * ((stats ? 1 : 2) + (residual != NULL)) + bn_out(in, b));
}

static void p_bn_forward_eval(kb_backend *be, const kb_bn *b, const void *x, const void *residual,
                              void *y)
{
    ENTER(OP_BN_FWD_EVAL);
    in->bn_forward_eval(in, b, x, residual, y);
    LEAVE(0, bn_pass(in, b) * (1 + (residual != NULL)) + bn_out(in, b));
}

static void p_bn_backward_reduce(kb_backend *be, const kb_bn *b, const void *x, const void *y,
                                 const void *dy, float *red, float *dgamma, float *dbeta)
{
    ENTER(OP_BN_BWD_REDUCE);
    in->bn_backward_reduce(in, b, x, y, dy, red, dgamma, dbeta);
    LEAVE(0, bn_pass(in, b) * (1 + b->relu) + bn_out(in, b));
}

static void p_bn_backward(kb_backend *be, const kb_bn *b, const void *x, const void *y,
                          const void *dy, const float *red, float *dgamma, float *dbeta, void *dx,
                          void *dres)
{
    ENTER(OP_BN_BWD);
    in->bn_backward(in, b, x, y, dy, red, dgamma, dbeta, dx, dres);
    /* the reduction (unless given), then x, dy (and y) in, dx (and dres) out */
    const double pass = bn_pass(in, b), reads = pass * (1 + b->relu) + bn_out(in, b);
    LEAVE(0, (red ? 0 : reads) + reads + pass * (1 + (dres != NULL)));
}

/* ---- activations (rows) and average pooling ---- */

static void p_relu_forward(kb_backend *be, const float *x, float *y, size_t n)
{
    ENTER(OP_RELU_FWD);
    in->relu_forward(in, x, y, n);
    LEAVE(0, 8.0 * n);
}

static void p_relu_backward(kb_backend *be, const float *y, const float *dy, float *dx, size_t n)
{
    ENTER(OP_RELU_BWD);
    in->relu_backward(in, y, dy, dx, n);
    LEAVE(0, 12.0 * n);
}

static void p_avgpool_forward(kb_backend *be, const void *x, int N, int C, int HW, float *y)
{
    ENTER(OP_AVGPOOL_FWD);
    in->avgpool_forward(in, x, N, C, HW, y);
    LEAVE((double)N * C * HW, fmb(in, N, C, HW, 1) + 4.0 * N * C);
}

static void p_avgpool_backward(kb_backend *be, const float *dy, int N, int C, int HW, void *dx)
{
    ENTER(OP_AVGPOOL_BWD);
    in->avgpool_backward(in, dy, N, C, HW, dx);
    LEAVE((double)N * C * HW, fmb(in, N, C, HW, 1) + 4.0 * N * C);
}

/* ---- linear ---- */

static void p_linear_forward(kb_backend *be, const float *x, int N, int I, const float *w,
                             const void *wm, const float *b, int O, float *y)
{
    ENTER(OP_LINEAR_FWD);
    in->linear_forward(in, x, N, I, w, wm, b, O, y);
    LEAVE(2.0 * N * I * (double)O, 4.0 * ((double)N * I + (double)O * I + (double)N * O));
}

static void p_linear_backward(kb_backend *be, const float *x, const float *w, const void *wm,
                              const float *dy, int N, int I, int O, float *dx, float *dw,
                              float *db)
{
    ENTER(OP_LINEAR_BWD);
    in->linear_backward(in, x, w, wm, dy, N, I, O, dx, dw, db);
    double mm = 2.0 * N * I * (double)O;
    double bytes = 4.0 * ((double)N * I + (double)N * O + 2.0 * O * I);
    if (dx)
        bytes += 4.0 * ((double)N * I + (double)O * I);
    LEAVE(dx ? 2 * mm : mm, bytes);
}

/* ---- rows, losses, metrics ---- */

static void p_l2norm_forward(kb_backend *be, const float *x, int N, int D, float *y, float *norm)
{
    ENTER(OP_L2NORM_FWD);
    in->l2norm_forward(in, x, N, D, y, norm);
    LEAVE(3.0 * N * D, 8.0 * N * D);
}

static void p_l2norm_backward(kb_backend *be, const float *y, const float *norm, const float *dy,
                              int N, int D, float *dx)
{
    ENTER(OP_L2NORM_BWD);
    in->l2norm_backward(in, y, norm, dy, N, D, dx);
    LEAVE(4.0 * N * D, 12.0 * N * D);
}

static void p_loss(kb_backend *be, const kb_loss_cfg *cfg, const float *p1, const float *p2,
                   const float *z1, const float *z2, int N, int D, float *dp1, float *dp2,
                   float *out)
{
    ENTER(OP_LOSS);
    in->loss(in, cfg, p1, p2, z1, z2, N, D, dp1, dp2, out);
    LEAVE(0, 24.0 * N * D);
}

static void p_uniformity(kb_backend *be, const float *z, int G, int N, int D, float t, float *out)
{
    ENTER(OP_UNIFORMITY);
    in->uniformity(in, z, G, N, D, t, out);
    LEAVE(3.0 * G * N * (double)N * D, 4.0 * G * N * D);
}

static void p_collapse_std(kb_backend *be, const float *z, int G, int N, int D, float *out)
{
    ENTER(OP_COLLAPSE);
    in->collapse_std(in, z, G, N, D, out);
    LEAVE(0, 4.0 * G * N * D);
}

static void p_softmax_xent(kb_backend *be, const float *logits, const int32_t *labels, int N,
                           int K, float *dlogits, float *out)
{
    ENTER(OP_XENT);
    in->softmax_xent(in, logits, labels, N, K, dlogits, out);
    LEAVE(0, (dlogits ? 8.0 : 4.0) * N * K);
}

/* ---- optimizer ---- */

static void p_update(kb_backend *be, const kb_update *u)
{
    ENTER(OP_UPDATE);
    in->update(in, u);
    /* p, g, m, v in; p, g (zeroed), m, v out; the teacher in and out */
    LEAVE(0, 32.0 * u->n + (u->teacher ? 8.0 * u->nteacher : 0));
}

static void p_ring_push(kb_backend *be, float *ring, int slots, const float *src, int n,
                        uint32_t *counter)
{
    ENTER(OP_RING);
    in->ring_push(in, ring, slots, src, n, counter);
    LEAVE(0, 8.0 * n);
}

/* ---- the wrapper ---- */

kb_backend *kb_profile_create(kb_backend *inner, char *err, size_t errlen)
{
    if (!inner->stamp_create || !inner->stamp_record || !inner->stamp_ms || !inner->stamp_free) {
        snprintf(err, errlen, "the %s backend has no timing stamps", inner->name);
        return NULL;
    }
    kb_backend *be = calloc(1, sizeof *be);
    prof *P = calloc(1, sizeof *P);
    if (!be || !P) {
        free(be);
        free(P);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    P->inner = inner;
    be->name = inner->name;
    be->impl = P;
    be->destroy = p_destroy;
    be->alloc = p_alloc;
    be->free = p_free;
    be->upload = p_upload;
    be->download = p_download;
    be->copy = p_copy;
    be->sync = p_sync;
    if (inner->host_alloc) {
        be->host_alloc = p_host_alloc;
        be->host_wait = p_host_wait;
        be->host_free = p_host_free;
    }
    be->set_precision = p_set_precision;
    be->device_info = p_device_info;
    /* no capture ops: each op must run, and be stamped, by itself */
    be->stamp_create = p_stamp_create;
    be->stamp_record = p_stamp_record;
    be->stamp_ms = p_stamp_ms;
    be->stamp_free = p_stamp_free;
    be->augment = inner->augment ? p_augment : NULL;
    be->fmap_bytes = p_fmap_bytes;
    be->fmap_upload = p_fmap_upload;
    be->fmap_download = p_fmap_download;
    if (inner->mirror_create) {
        be->mirror_create = p_mirror_create;
        be->mirror_free = p_mirror_free;
        be->mirror_write = p_mirror_write;
        be->mirror_at = p_mirror_at;
    }
    be->fill = p_fill;
    be->scale = p_scale;
    be->conv_plan = p_conv_plan;
    be->conv_free = p_conv_free;
    be->conv_forward = p_conv_forward;
    be->conv_backward_data = p_conv_backward_data;
    be->conv_backward_weight = p_conv_backward_weight;
    be->bn_stats = p_bn_stats;
    be->bn_forward = p_bn_forward;
    be->bn_forward_eval = p_bn_forward_eval;
    be->bn_backward_reduce = p_bn_backward_reduce;
    be->bn_backward = p_bn_backward;
    be->relu_forward = p_relu_forward;
    be->relu_backward = p_relu_backward;
    be->avgpool_forward = p_avgpool_forward;
    be->avgpool_backward = p_avgpool_backward;
    be->linear_forward = p_linear_forward;
    be->linear_backward = p_linear_backward;
    be->l2norm_forward = p_l2norm_forward;
    be->l2norm_backward = p_l2norm_backward;
    be->loss = p_loss;
    be->uniformity = p_uniformity;
    be->collapse_std = p_collapse_std;
    be->softmax_xent = p_softmax_xent;
    be->update = p_update;
    be->ring_push = p_ring_push;
    return be;
}

kb_backend *kb_profile_inner(kb_backend *p) { return P_of(p)->inner; }

void kb_profile_enable(kb_backend *p, int on) { P_of(p)->on = on; }

void kb_profile_step_end(kb_backend *p)
{
    prof *P = P_of(p);
    kb_backend *in = P->inner;
    if (P->n == 0)
        return;
    in->sync(in);
    for (size_t i = 0; i < P->n; i++) {
        const rec *r = &P->recs[i];
        P->calls[r->op]++;
        P->ms[r->op] += in->stamp_ms(in, P->stamps[2 * i], P->stamps[2 * i + 1]);
        P->flop[r->op] += r->flop;
        P->bytes[r->op] += r->bytes;
        if (i > 0)
            P->gap_ms += in->stamp_ms(in, P->stamps[2 * i - 1], P->stamps[2 * i]);
    }
    P->span_ms += in->stamp_ms(in, P->stamps[0], P->stamps[2 * P->n - 1]);
    P->steps++;
    P->n = 0;
}

void kb_profile_totals_get(kb_backend *p, kb_profile_totals *t)
{
    prof *P = P_of(p);
    memset(t, 0, sizeof *t);
    t->steps = P->steps;
    t->span_ms = P->span_ms;
    t->gap_ms = P->gap_ms;
    for (int k = 0; k < OP_COUNT; k++) {
        if (!P->calls[k])
            continue;
        kb_profile_row *r = &t->rows[t->nrows++];
        r->op = op_names[k];
        r->calls = P->calls[k];
        r->ms = P->ms[k];
        r->flop = P->flop[k];
        r->bytes = P->bytes[k];
        t->ops_ms += P->ms[k];
    }
}

static int by_ms_desc(const void *a, const void *b)
{
    double x = ((const kb_profile_row *)a)->ms, y = ((const kb_profile_row *)b)->ms;
    return x < y ? 1 : x > y ? -1 : 0;
}

void kb_profile_print(kb_backend *p, FILE *f)
{
    kb_profile_totals t;
    kb_profile_totals_get(p, &t);
    if (t.steps == 0) {
        fprintf(f, "  (no profiled steps)\n");
        return;
    }
    qsort(t.rows, (size_t)t.nrows, sizeof t.rows[0], by_ms_desc);
    double s = (double)t.steps, span = t.span_ms / s;
    fprintf(f, "  %-22s %10s %10s %7s %10s %9s\n", "op", "calls/step", "ms/step", "% span",
            "GFLOP/s", "GB/s");
    for (int i = 0; i < t.nrows; i++) {
        const kb_profile_row *r = &t.rows[i];
        char gf[16] = "", gb[16] = "";
        if (r->ms > 0 && r->flop > 0)
            snprintf(gf, sizeof gf, "%.1f", r->flop / (r->ms * 1e-3) / 1e9);
        if (r->ms > 0 && r->bytes > 0)
            snprintf(gb, sizeof gb, "%.1f", r->bytes / (r->ms * 1e-3) / 1e9);
        fprintf(f, "  %-22s %10.1f %10.3f %6.1f%% %10s %9s\n", r->op, r->calls / s, r->ms / s,
                span > 0 ? 100.0 * r->ms / t.span_ms : 0.0, gf, gb);
    }
    fprintf(f, "  %-22s %10s %10.3f %6.1f%%\n", "between ops", "", t.gap_ms / s,
            span > 0 ? 100.0 * t.gap_ms / t.span_ms : 0.0);
    fprintf(f, "  %-22s %10s %10.3f  (%ld steps; ops %.3f + between %.3f)\n", "step span", "", span,
            t.steps, t.ops_ms / s, t.gap_ms / s);
}
