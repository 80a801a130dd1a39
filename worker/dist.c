/* Data-parallel pieces of a job: state broadcast from rank 0, the gradient
 * all-reduce, metrics over the global batch, and the teacher/parameter
 * checksum that catches ranks drifting apart. */
#include "worker/dist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/collective.h"

struct rw_dist {
    kb_comm *c;
    kb_backend *be;
    rw_model *m;
    int Bl, D;
    size_t np;       /* parameters: the gradient buffer's floats */
    /* the gradient's buckets (plan_buckets), those posted this step, the
     * last ticket, and a failure to post (its reason in error) */
    size_t *lo;
    int nbuckets, posted, failed;
    size_t last_from; /* the backward pass's last news (grads_ready) */
    long last;
    kb_wire wire;
    /* queued mode (rw_dist_queued); the flags of rw_dist_step_begin */
    int queued;
    float flag[2];
    char error[256];
    /* the steps kept since the last read: cap at most */
    long kept, cap;
    float *rows;     /* (cap, RW_MODEL_NSTATS) backend: each step's loss outputs */
    float *gather;   /* (cap, 2 views, world * Bl, D) backend: the global batches' projections */
    float *met;      /* (2 * cap) uniformity then (2 * cap) collapse, backend */
    float *hrows, *hmet; /* host copies of rows and met */
    float *dv;       /* 16 floats of backend scratch */
    uint8_t *host;   /* host copy of parameters + teacher for the checksum */
    size_t host_bytes;
};

static int plan_buckets(rw_dist *d, size_t n, size_t bucket_floats);
static void grads_ready(void *ud, size_t from);

/* The gathered projections are kept for this many steps at most (the
 * read then comes sooner), and in this many bytes at most. */
#define KEEP_STEPS 64
#define KEEP_BYTES (256u << 20)

rw_dist *rw_dist_create(kb_comm *c, kb_backend *be, rw_model *m, int Bl, int D,
                        const rw_dist_cfg *cfg, char *err, size_t errlen)
{
    rw_dist *d = calloc(1, sizeof *d);
    if (!d) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    d->c = c;
    d->be = be;
    d->m = m;
    d->Bl = Bl;
    d->D = D;
    d->np = rw_model_nparams(m);
    d->wire = cfg->grad_bf16 ? KB_WIRE_BF16 : KB_WIRE_FP32;
    d->queued = c->device_memory && be->comm_allreduce;
    if (cfg->grad_bf16 && !d->queued && (!c->start || !c->allreduce_bf16)) {
        snprintf(err, errlen, "dist.grad_dtype bf16 needs a communicator that reduces bf16 "
                 "beside the step (Gloo's on CPU workers, NCCL's on GPUs); %s has none",
                 c->name);
        free(d);
        return NULL;
    }
    size_t per_step = 2 * (size_t)c->world * Bl * D * sizeof(float);
    d->cap = KEEP_BYTES / per_step;
    d->cap = d->cap < 1 ? 1 : d->cap > KEEP_STEPS ? KEEP_STEPS : d->cap;
    d->rows = be->alloc(be, (size_t)d->cap * RW_MODEL_NSTATS * sizeof(float));
    d->gather = be->alloc(be, (size_t)d->cap * per_step);
    d->met = be->alloc(be, 4 * (size_t)d->cap * sizeof(float));
    d->hrows = malloc((size_t)d->cap * RW_MODEL_NSTATS * sizeof(float));
    d->hmet = malloc(4 * (size_t)d->cap * sizeof(float));
    d->dv = be->alloc(be, 16 * sizeof(float));
    d->host_bytes = (rw_model_nparams(m) + rw_model_nteacher(m)) * sizeof(float);
    d->host = malloc(d->host_bytes);
    size_t bucket = cfg->bucket_mb > 0 ? (size_t)(cfg->bucket_mb * 1048576.0 / sizeof(float)) : 0;
    if (!bucket || bucket > d->np)
        bucket = d->np;
    if (!d->rows || !d->gather || !d->met || !d->hrows || !d->hmet || !d->dv || !d->host ||
        plan_buckets(d, d->np, bucket) != 0) {
        snprintf(err, errlen, "out of memory for data-parallel buffers");
        rw_dist_free(d);
        return NULL;
    }
    /* bf16 on NCCL's wire: a staging buffer for the largest bucket */
    if (d->queued && cfg->grad_bf16 && be->comm_reserve(be, c, bucket, err, errlen) != 0) {
        rw_dist_free(d);
        return NULL;
    }
    be->fill(be, d->gather, 0.0f, (size_t)d->cap * per_step / sizeof(float));
    /* overlap: a bucket leaves as soon as the backward pass has finished
     * it -- on the CPU, which computes as it is called, "finished" is true
     * then; in a GPU's queue, the all-reduce is queued after the ops that
     * finish it */
    if (cfg->overlap && ((c->start && !c->device_memory && !be->capture_begin) || d->queued))
        rw_model_set_grads_ready(m, grads_ready, d);
    return d;
}

void rw_dist_free(rw_dist *d)
{
    if (!d)
        return;
    rw_model_set_grads_ready(d->m, NULL, NULL);
    float *bufs[] = {d->rows, d->gather, d->met, d->dv};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        if (bufs[i])
            d->be->free(d->be, bufs[i]);
    free(d->hrows);
    free(d->hmet);
    free(d->lo);
    free(d->host);
    free(d);
}

static int bcast(rw_dist *d, void *p, size_t bytes, char *err, size_t errlen)
{
    return d->c->broadcast(d->c, p, bytes, 0, err, errlen);
}

/* Host values through a backend buffer, so NCCL (device memory) works too. */
static int bcast_host(rw_dist *d, void *h, size_t bytes, char *err, size_t errlen)
{
    kb_backend *be = d->be;
    void *dv = be->alloc(be, bytes);
    if (!dv) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    be->upload(be, dv, h, bytes);
    int rc = bcast(d, dv, bytes, err, errlen);
    be->download(be, h, dv, bytes);
    be->free(be, dv);
    return rc;
}

int rw_dist_bcast_int(rw_dist *d, int *v, char *err, size_t errlen)
{
    return bcast_host(d, v, sizeof *v, err, errlen);
}

int rw_dist_sync_state(rw_dist *d, rw_train_state *ts, char *err, size_t errlen)
{
    rw_model *m = d->m;
    size_t np = rw_model_nparams(m), nt = rw_model_nteacher(m);
    struct {
        void *p;
        size_t bytes;
    } bufs[] = {
        {rw_model_params(m), np * sizeof(float)},
        {rw_model_teacher(m), nt * sizeof(float)},
        {rw_model_state(m), rw_model_nstate(m) * sizeof(float)},
        {rw_model_teacher_state(m), rw_model_nteacher_state(m) * sizeof(float)},
        {rw_model_adam_m(m), np * sizeof(float)},
        {rw_model_adam_v(m), np * sizeof(float)},
    };
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        if (bufs[i].bytes && bcast(d, bufs[i].p, bufs[i].bytes, err, errlen) != 0)
            return -1;
    rw_model_params_written(m);
    /* Host-side state: counters and the position in the data. */
    struct {
        long nbt[2][RW_MODEL_MAX_BN];
        long adam_step, step, batch;
        int epoch;
        double sums[5], step_sums[5], elapsed;
        char data[RW_DATA_DIGEST_MAX];
    } h = {0};
    for (int t = 0; t < 2; t++)
        memcpy(h.nbt[t], rw_model_bn_counts(m, t), (size_t)rw_model_nbn(m, t) * sizeof(long));
    h.adam_step = rw_model_adam_step(m);
    h.step = ts->step;
    h.batch = ts->batch;
    h.epoch = ts->epoch;
    memcpy(h.sums, ts->sums, sizeof h.sums);
    memcpy(h.step_sums, ts->step_sums, sizeof h.step_sums);
    h.elapsed = ts->elapsed;
    memcpy(h.data, ts->data_digest, sizeof h.data);
    if (bcast_host(d, &h, sizeof h, err, errlen) != 0)
        return -1;
    /* DirectPred's F: host state of the model, read from a checkpoint by
     * rank 0 alone */
    double *corr = rw_model_directpred_corr(m);
    const size_t D = (size_t)rw_model_cfg_of(m)->proj_out;
    if (corr && bcast_host(d, corr, D * D * sizeof *corr, err, errlen) != 0)
        return -1;
    /* Every rank trains on rank 0's images: a host whose files at
     * data.path differ (another copy, another download) would train the
     * job on a mixture. Every rank learns of it, so all of them stop. */
    float differ = strncmp(h.data, ts->data_digest, sizeof h.data) != 0;
    d->be->upload(d->be, d->dv, &differ, sizeof differ);
    if (d->c->allreduce(d->c, d->dv, 1, KB_REDUCE_SUM, err, errlen) != 0)
        return -1;
    float ndiffer = 0;
    d->be->download(d->be, &ndiffer, d->dv, sizeof ndiffer);
    if (ndiffer > 0) {
        if (differ)
            snprintf(err, errlen, "rank %d: the training set at data.path here (%s) is not rank "
                     "0's (%s): every rank's host must hold the same files", d->c->rank,
                     ts->data_digest, h.data);
        else
            snprintf(err, errlen, "%.0f rank(s) hold another training set at data.path than rank "
                     "%d's (%s): every rank's host must hold the same files", ndiffer, d->c->rank,
                     h.data);
        return -1;
    }
    for (int t = 0; t < 2; t++)
        memcpy(rw_model_bn_counts(m, t), h.nbt[t], (size_t)rw_model_nbn(m, t) * sizeof(long));
    rw_model_set_adam_step(m, h.adam_step);
    ts->step = h.step;
    ts->batch = h.batch;
    ts->epoch = h.epoch;
    memcpy(ts->sums, h.sums, sizeof h.sums);
    memcpy(ts->step_sums, h.step_sums, sizeof h.step_sums);
    ts->elapsed = h.elapsed;
    return 0;
}

/* ------------------------------------------------------------ gradients */

/* Buckets from the buffer's tail, where the backward pass starts: bucket i
 * spans [lo[i], lo[i - 1]) with lo[-1] = nparams, each of at most
 * bucket_floats, the last ending at 0. */
static int plan_buckets(rw_dist *d, size_t n, size_t bucket_floats)
{
    size_t nb = bucket_floats ? (n + bucket_floats - 1) / bucket_floats : 1;
    if (nb == 0)
        nb = 1;
    d->lo = malloc(nb * sizeof *d->lo);
    if (!d->lo)
        return -1;
    d->nbuckets = (int)nb;
    size_t hi = n;
    for (size_t i = 0; i < nb; i++) {
        size_t lo = hi > bucket_floats && bucket_floats ? hi - bucket_floats : 0;
        d->lo[i] = lo;
        hi = lo;
    }
    return 0;
}

static size_t bucket_hi(const rw_dist *d, int i) { return i == 0 ? d->np : d->lo[i - 1]; }

/* Posts bucket i's all-reduce on the communicator's queue, or on the
 * backend's. */
static void post_bucket(rw_dist *d, int i)
{
    if (d->failed)
        return;
    size_t lo = d->lo[i], hi = bucket_hi(d, i);
    if (d->queued) {
        if (d->be->comm_allreduce(d->be, d->c, rw_model_grads(d->m) + lo, hi - lo, 1,
                                  d->wire == KB_WIRE_BF16) != 0) {
            d->failed = 1;
            snprintf(d->error, sizeof d->error, "the gradient's all-reduce could not be queued "
                     "(%s); comm_wait says why", d->c->name);
        }
        return;
    }
    long t = d->c->start(d->c, rw_model_grads(d->m) + lo, hi - lo, KB_REDUCE_AVG, d->wire,
                         d->error, sizeof d->error);
    if (t < 0)
        d->failed = 1;
    else
        d->last = t;
}

/* The backward pass's news: every gradient from `from` on is final. A
 * backward pass that starts again (a capture refused, the step run
 * eagerly) posts its buckets again. */
static void grads_ready(void *ud, size_t from)
{
    rw_dist *d = ud;
    if (from > d->last_from)
        d->posted = 0;
    d->last_from = from;
    while (d->posted < d->nbuckets && d->lo[d->posted] >= from)
        post_bucket(d, d->posted++);
}

int rw_dist_queued(const rw_dist *d) { return d->queued; }

void rw_dist_step_begin(rw_dist *d, int stop, int ckpt)
{
    d->posted = 0;
    d->last_from = (size_t)-1;
    d->failed = 0;
    d->flag[0] = stop ? 1.0f : 0.0f;
    d->flag[1] = ckpt ? 1.0f : 0.0f;
    if (d->queued) /* before the step, which all-reduces them */
        d->be->upload(d->be, d->dv, d->flag, sizeof d->flag);
}

void rw_dist_queue_grads(void *ud)
{
    rw_dist *d = ud;
    kb_backend *be = d->be;
    while (d->posted < d->nbuckets)
        post_bucket(d, d->posted++);
    d->last_from = 0; /* a pass that runs again starts over */
    if (!d->failed && be->comm_allreduce(be, d->c, d->dv, 2, 0, 0) != 0) {
        d->failed = 1;
        snprintf(d->error, sizeof d->error, "the step's flags could not be queued (%s)",
                 d->c->name);
    }
    be->comm_join(be);
}

int rw_dist_grads(rw_dist *d, int *stop, int *ckpt, char *err, size_t errlen)
{
    kb_comm *c = d->c;
    float *flag = d->flag;
    if (d->queued) {
        /* the step ran the all-reduces (rw_dist_queue_grads): wait for them */
        if (d->be->comm_wait(d->be, c, err, errlen) != 0)
            return -1;
        if (d->failed) {
            snprintf(err, errlen, "%s", d->error);
            return -1;
        }
        d->be->download(d->be, flag, d->dv, 2 * sizeof(float));
        *stop = flag[0] > 0;
        *ckpt = flag[1] > 0;
        return 0;
    }
    /* Each rank's loss is the mean over its equal share, so the average is
     * the global batch's gradient. The stop and checkpoint flags ride
     * behind the last bucket so that every rank acts at the same step. */
    flag[0] = *stop ? 1.0f : 0.0f;
    flag[1] = *ckpt ? 1.0f : 0.0f;
    d->be->upload(d->be, d->dv, flag, 2 * sizeof(float));
    if (c->start) {
        while (d->posted < d->nbuckets)
            post_bucket(d, d->posted++);
        long t = d->failed ? -1 : c->start(c, d->dv, 2, KB_REDUCE_SUM, KB_WIRE_FP32, d->error,
                                           sizeof d->error);
        if (t < 0 || c->wait(c, t, err, errlen) != 0) {
            if (t < 0)
                snprintf(err, errlen, "%s", d->error);
            return -1;
        }
    } else if (c->allreduce(c, rw_model_grads(d->m), d->np, KB_REDUCE_AVG, err, errlen) != 0 ||
               c->allreduce(c, d->dv, 2, KB_REDUCE_SUM, err, errlen) != 0) {
        return -1;
    }
    d->be->download(d->be, flag, d->dv, 2 * sizeof(float));
    *stop = flag[0] > 0;
    *ckpt = flag[1] > 0;
    return 0;
}

/* ------------------------------------------------------------- metrics */

void rw_dist_keep(rw_dist *d)
{
    kb_backend *be = d->be;
    int k = d->kept++, W = d->c->world;
    size_t rows = (size_t)d->Bl * d->D;
    be->copy(be, d->rows + (size_t)k * RW_MODEL_NSTATS, rw_model_stats_buf(d->m),
             RW_MODEL_NSTATS * sizeof(float));
    /* step k's view v of every rank: W blocks of Bl rows, this rank's in
     * its place, the others zero until the all-reduce */
    for (int v = 0; v < 2; v++)
        be->copy(be, d->gather + ((size_t)(2 * k + v) * W + d->c->rank) * rows,
                 rw_model_projections(d->m, v), rows * sizeof(float));
}

long rw_dist_unread(const rw_dist *d) { return d->kept; }

int rw_dist_full(const rw_dist *d) { return d->kept >= d->cap; }

long rw_dist_read(rw_dist *d, rw_step_stats *st, long max, char *err, size_t errlen)
{
    kb_backend *be = d->be;
    kb_comm *c = d->c;
    long n = d->kept;
    if (n <= 0)
        return 0;
    if (max < n) {
        snprintf(err, errlen, "internal: %ld kept steps do not fit %ld statistics", n, max);
        return -1;
    }
    /* Loss terms are means over equal shares: their average is global.
     * Uniformity and collapse are pairwise / per dimension over the global
     * batch: the projections gathered by a zero-padded all-reduce. */
    size_t per_step = 2 * (size_t)c->world * d->Bl * d->D;
    if (c->allreduce(c, d->rows, (size_t)n * RW_MODEL_NSTATS, KB_REDUCE_AVG, err, errlen) != 0 ||
        c->allreduce(c, d->gather, (size_t)n * per_step, KB_REDUCE_SUM, err, errlen) != 0)
        return -1;
    int N = d->Bl * c->world;
    be->uniformity(be, d->gather, (int)(2 * n), N, d->D, 2.0f, d->met);
    be->collapse_std(be, d->gather, (int)(2 * n), N, d->D, d->met + 2 * d->cap);
    float *h = d->hrows, *u = d->hmet;
    be->download(be, h, d->rows, (size_t)n * RW_MODEL_NSTATS * sizeof(float));
    be->download(be, u, d->met, 2 * (size_t)n * sizeof(float));
    be->download(be, u + 2 * d->cap, d->met + 2 * d->cap, 2 * (size_t)n * sizeof(float));
    for (long k = 0; k < n; k++) {
        rw_model_stats_decode(d->m, h + k * RW_MODEL_NSTATS, &st[k]);
        st[k].uniform = 0.5f * (u[2 * k] + u[2 * k + 1]);
        st[k].collapse = 0.5f * (u[2 * d->cap + 2 * k] + u[2 * d->cap + 2 * k + 1]);
    }
    /* the gather's used part is zero again for the next steps */
    be->fill(be, d->gather, 0.0f, (size_t)n * per_step);
    d->kept = 0;
    return n;
}

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

int rw_dist_check(rw_dist *d, long step, char *err, size_t errlen)
{
    kb_backend *be = d->be;
    rw_model *m = d->m;
    size_t np = rw_model_nparams(m) * sizeof(float);
    be->download(be, d->host, rw_model_params(m), np);
    be->download(be, d->host + np, rw_model_teacher(m), d->host_bytes - np);
    uint64_t mine[2] = {fnv1a(d->host + np, d->host_bytes - np), fnv1a(d->host, np)};
    uint64_t lead[2] = {mine[0], mine[1]};
    if (bcast_host(d, lead, sizeof lead, err, errlen) != 0)
        return -1;
    float bad[2] = {mine[0] != lead[0] ? 1.0f : 0.0f, mine[1] != lead[1] ? 1.0f : 0.0f};
    be->upload(be, d->dv, bad, sizeof bad);
    if (d->c->allreduce(d->c, d->dv, 2, KB_REDUCE_SUM, err, errlen) != 0)
        return -1;
    be->download(be, bad, d->dv, sizeof bad);
    if (bad[0] > 0 || bad[1] > 0) {
        snprintf(err, errlen,
                 "ranks diverged by step %ld: %s checksum differs from rank 0's on %d rank(s)%s",
                 step, bad[0] > 0 ? "teacher" : "parameter", (int)(bad[0] > bad[1] ? bad[0] : bad[1]),
                 mine[0] != lead[0] || mine[1] != lead[1] ? " including this one" : "");
        return -1;
    }
    return 0;
}
