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
    float *gather;   /* (world * Bl, D) backend: the global batch's projections */
    float *dv;       /* 16 floats of backend scratch */
    uint8_t *host;   /* host copy of parameters + teacher for the checksum */
    size_t host_bytes;
};

rw_dist *rw_dist_create(kb_comm *c, kb_backend *be, rw_model *m, int Bl, int D, char *err,
                        size_t errlen)
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
    d->gather = be->alloc(be, (size_t)c->world * Bl * D * sizeof(float));
    d->dv = be->alloc(be, 16 * sizeof(float));
    d->host_bytes = (rw_model_nparams(m) + rw_model_nteacher(m)) * sizeof(float);
    d->host = malloc(d->host_bytes);
    if (!d->gather || !d->dv || !d->host) {
        snprintf(err, errlen, "out of memory for data-parallel buffers");
        rw_dist_free(d);
        return NULL;
    }
    return d;
}

void rw_dist_free(rw_dist *d)
{
    if (!d)
        return;
    if (d->gather)
        d->be->free(d->be, d->gather);
    if (d->dv)
        d->be->free(d->be, d->dv);
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

int rw_dist_grads(rw_dist *d, char *err, size_t errlen)
{
    /* One call over the one gradient buffer: each rank's loss is the mean
     * over its equal share, so the average is the global batch's gradient. */
    return d->c->allreduce(d->c, rw_model_grads(d->m), rw_model_nparams(d->m), KB_REDUCE_AVG,
                           err, errlen);
}

int rw_dist_metrics(rw_dist *d, rw_step_stats *st, int *stop, char *err, size_t errlen)
{
    kb_backend *be = d->be;
    kb_comm *c = d->c;
    /* Loss terms are means over equal shares: their average is global. The
     * stop flag rides along so that every rank stops at the same step. */
    float h[8] = {st->loss, st->align, st->cross, st->byol, *stop ? 1.0f : 0.0f};
    be->upload(be, d->dv, h, 5 * sizeof(float));
    if (c->allreduce(c, d->dv, 5, KB_REDUCE_AVG, err, errlen) != 0)
        return -1;
    be->download(be, h, d->dv, 5 * sizeof(float));
    st->loss = h[0];
    st->align = h[1];
    st->cross = h[2];
    st->byol = h[3];
    *stop = h[4] > 0;
    /* Uniformity and collapse are pairwise / per-dimension over the batch:
     * gather the normalized projections (zero-padded all-reduce). */
    size_t rows = (size_t)d->Bl * d->D, all = rows * c->world;
    for (int v = 0; v < 2; v++) {
        be->fill(be, d->gather, 0.0f, all);
        be->copy(be, d->gather + rows * c->rank, rw_model_projections(d->m, v),
                 rows * sizeof(float));
        if (c->allreduce(c, d->gather, all, KB_REDUCE_SUM, err, errlen) != 0)
            return -1;
        int N = d->Bl * c->world;
        be->uniformity(be, d->gather, 1, N, d->D, 2.0f, d->dv + 8 + v);
        be->collapse_std(be, d->gather, 1, N, d->D, d->dv + 10 + v);
    }
    be->download(be, h, d->dv + 8, 4 * sizeof(float));
    st->uniform = 0.5f * (h[0] + h[1]);
    st->collapse = 0.5f * (h[2] + h[3]);
    return 0;
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
