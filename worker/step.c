/* The step's data source and launch (see step.h). */
#include "worker/step.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/data_internal.h"

/* Eager steps before a capture: the first plans every convolution (cuDNN's
 * search runs convolutions, which a capture cannot hold) and grows the
 * buffers; the second must then find everything in place. */
#define WARMUP 2
#define MAX_BN_COUNTS 64

struct rw_stepper {
    rw_stepper_cfg c;
    kb_backend *be;
    int Bl;   /* this rank's batch */
    long nb;  /* batches per epoch */
    float *x1, *x2; /* backend memory (Bl, 3, S, S): the step's input views */

    /* host data */
    rw_loader *ld;
    float *hx1, *hx2;
    int32_t *hl;

    /* device data */
    uint8_t *pix;    /* backend memory: the uint8 set */
    uint32_t *keys;  /* backend memory: epoch, then Bl sample indices */
    uint32_t *hkeys; /* host staging of the same */
    int32_t *perm;
    int perm_epoch;
    /* the supervised baseline: the batch's labels (backend memory), staged
     * in hl */
    int32_t *labels;
    int epoch;
    long batch;

    /* graphs */
    int graphs;   /* still allowed */
    int warm;     /* eager steps since the last (re)start */
    kb_graph *ga, *gb;
    unsigned long gen_a, gen_b; /* model buffer generation at capture */
    long bn_delta[2][MAX_BN_COUNTS]; /* BN counters one captured forward adds */
    int captures;
    rw_stepper_counts counts;
    char desc[256];
};

static void describe(rw_stepper *s, const char *why)
{
    const char *views = s->pix ? "views on the device" : "views on the host";
    if (s->graphs)
        snprintf(s->desc, sizeof s->desc, "%s, CUDA graphs", views);
    else
        snprintf(s->desc, sizeof s->desc, "%s, eager%s%s%s", views, why ? " (" : "",
                 why ? why : "", why ? ")" : "");
}

rw_stepper *rw_stepper_create(const rw_stepper_cfg *c, char *err, size_t errlen)
{
    rw_stepper *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->c = *c;
    s->be = rw_model_backend(c->m);
    kb_backend *be = s->be;
    int world = c->shard_world > 0 ? c->shard_world : 1;
    s->c.shard_world = world;
    s->Bl = c->batch / world;
    s->nb = c->ds->n / c->batch;
    s->perm_epoch = -1;
    size_t img = (size_t)s->Bl * 3 * c->size * c->size;
    s->x1 = be->alloc(be, img * sizeof(float));
    s->x2 = be->alloc(be, img * sizeof(float));
    if (!s->x1 || !s->x2) {
        snprintf(err, errlen, "out of memory for batch %d at %dx%d", c->batch, c->size, c->size);
        goto fail;
    }

    /* The device renders the views where it can (a backend with the
     * augment op); a set that does not fit falls back. */
    if (!c->host_data && be->augment) {
        size_t bytes = (size_t)c->ds->n * 3 * c->ds->side * c->ds->side;
        s->pix = be->alloc(be, bytes);
        s->keys = be->alloc(be, (size_t)(s->Bl + 1) * sizeof(uint32_t));
        s->hkeys = malloc((size_t)(s->Bl + 1) * sizeof(uint32_t));
        s->perm = malloc((size_t)c->ds->n * sizeof(int32_t));
        if (!s->pix || !s->keys || !s->hkeys || !s->perm) {
            if (s->pix)
                be->free(be, s->pix);
            if (s->keys)
                be->free(be, s->keys);
            free(s->hkeys);
            free(s->perm);
            s->pix = NULL;
            s->keys = NULL;
            s->hkeys = NULL;
            s->perm = NULL;
        } else {
            be->upload(be, s->pix, c->ds->pixels, bytes);
        }
    }
    int classes = rw_model_cfg_of(c->m)->classes;
    if (classes > 0) {
        for (int i = 0; i < c->ds->n; i++)
            if (i >= c->ds->labeled || c->ds->labels[i] >= classes) {
                snprintf(err, errlen, "the supervised baseline needs every training image "
                         "labeled 0..%d; image %d is %s", classes - 1, i,
                         i >= c->ds->labeled ? "unlabeled" : "labeled beyond them");
                goto fail;
            }
        s->labels = be->alloc(be, (size_t)s->Bl * sizeof(int32_t));
        if (!s->hl)
            s->hl = malloc((size_t)s->Bl * sizeof(int32_t));
        if (!s->labels || !s->hl) {
            snprintf(err, errlen, "out of memory for the labels of batch %d", c->batch);
            goto fail;
        }
        rw_model_set_labels(c->m, s->labels);
    }
    if (!s->pix) {
        rw_loader_cfg lc = {
            .ds = c->ds, .batch = c->batch, .out_size = c->size, .augment = c->augment,
            .seed = c->seed, .threads = c->loader_threads > 0 ? c->loader_threads : 1,
            .shard_rank = c->shard_rank, .shard_world = world,
        };
        memcpy(lc.mean, c->mean, sizeof lc.mean);
        memcpy(lc.std, c->std, sizeof lc.std);
        s->ld = rw_loader_create(&lc, err, errlen);
        s->hx1 = malloc(img * sizeof(float));
        s->hx2 = malloc(img * sizeof(float));
        if (!s->hl)
            s->hl = malloc((size_t)s->Bl * sizeof(int32_t));
        if (!s->ld || !s->hx1 || !s->hx2 || !s->hl) {
            if (s->ld)
                snprintf(err, errlen, "out of memory for batch %d at %dx%d", c->batch, c->size,
                         c->size);
            goto fail;
        }
    }

    s->graphs = !c->no_graphs && !c->collective_forward && be->capture_begin &&
                rw_model_nbn(c->m, 0) <= MAX_BN_COUNTS && rw_model_nbn(c->m, 1) <= MAX_BN_COUNTS;
    describe(s, c->collective_forward && !c->no_graphs && be->capture_begin
                    ? "SyncBN all-reduces inside the forward pass"
                    : NULL);
    return s;
fail:
    rw_stepper_free(s);
    return NULL;
}

void rw_stepper_release(rw_stepper *s)
{
    kb_backend *be = s->be;
    if (s->ga)
        be->graph_free(be, s->ga);
    if (s->gb)
        be->graph_free(be, s->gb);
    s->ga = s->gb = NULL;
    s->warm = WARMUP - 1;
}

void rw_stepper_free(rw_stepper *s)
{
    if (!s)
        return;
    kb_backend *be = s->be;
    rw_stepper_release(s);
    void *dev[] = {s->x1, s->x2, s->pix, s->keys, s->labels};
    for (size_t i = 0; i < sizeof dev / sizeof *dev; i++)
        if (dev[i])
            be->free(be, dev[i]);
    rw_loader_free(s->ld);
    free(s->hx1);
    free(s->hx2);
    free(s->hl);
    free(s->hkeys);
    free(s->perm);
    free(s);
}

long rw_stepper_batches(const rw_stepper *s) { return s->nb; }

void rw_stepper_seek(rw_stepper *s, int epoch, long batch)
{
    if (s->ld) {
        rw_loader_seek(s->ld, epoch, batch);
        return;
    }
    s->epoch = epoch;
    s->batch = batch;
}

const char *rw_stepper_describe(const rw_stepper *s) { return s->desc; }

const float *rw_stepper_views(const rw_stepper *s, int v) { return v ? s->x2 : s->x1; }

void rw_stepper_counts_get(const rw_stepper *s, rw_stepper_counts *c) { *c = s->counts; }

/* ---- the two halves of the step's device work ---- */

static int body_a(rw_stepper *s)
{
    if (s->pix) {
        const int view1 = s->c.augment == RW_AUG_NONE ? -1 : 0;
        const int view2 = s->c.augment == RW_AUG_NONE ? -1 : 1;
        s->be->augment(s->be, s->pix, s->c.ds->side, s->c.ds->side, s->keys, s->Bl, s->c.seed,
                       view1, s->c.size, s->c.mean, s->c.std, s->x1);
        s->be->augment(s->be, s->pix, s->c.ds->side, s->c.ds->side, s->keys, s->Bl, s->c.seed,
                       view2, s->c.size, s->c.mean, s->c.std, s->x2);
    }
    return rw_model_forward_backward(s->c.m, s->x1, s->x2, s->Bl, s->c.size, NULL);
}

static int body_b(rw_stepper *s)
{
    rw_model_update_apply(s->c.m);
    return 0;
}

static void bn_counts(rw_stepper *s, long out[2][MAX_BN_COUNTS])
{
    for (int t = 0; t < 2; t++)
        memcpy(out[t], rw_model_bn_counts(s->c.m, t),
               (size_t)rw_model_nbn(s->c.m, t) * sizeof(long));
}

static void bn_counts_set(rw_stepper *s, long in[2][MAX_BN_COUNTS])
{
    for (int t = 0; t < 2; t++)
        memcpy(rw_model_bn_counts(s->c.m, t), in[t],
               (size_t)rw_model_nbn(s->c.m, t) * sizeof(long));
}

static void graphs_off(rw_stepper *s, const char *why)
{
    rw_stepper_release(s);
    s->graphs = 0;
    describe(s, why);
    if (s->c.notice) {
        char line[320];
        snprintf(line, sizeof line, "CUDA graphs off for this job: %s; the step runs eagerly",
                 why);
        s->c.notice(s->c.notice_ud, line);
    }
}

/* Runs one half: replays its graph, or captures it (then launches the
 * capture), or runs it eagerly. The host-side BN counters a forward pass
 * bumps are bumped by hand on a replay. */
static int run_half(rw_stepper *s, int half)
{
    kb_backend *be = s->be;
    rw_model *m = s->c.m;
    kb_graph **g = half == 0 ? &s->ga : &s->gb;
    unsigned long *gen = half == 0 ? &s->gen_a : &s->gen_b;
    int (*body)(rw_stepper *) = half == 0 ? body_a : body_b;

    if (*g) {
        if (*gen == rw_model_mem_gen(m) && be->graph_launch(be, *g) == 0) {
            if (half == 0) {
                long c[2][MAX_BN_COUNTS];
                bn_counts(s, c);
                for (int t = 0; t < 2; t++)
                    for (int i = 0; i < rw_model_nbn(m, t); i++)
                        c[t][i] += s->bn_delta[t][i];
                bn_counts_set(s, c);
                s->counts.replayed++;
            }
            return 0;
        }
        /* Its buffers moved: one eager step, then capture again. */
        rw_stepper_release(s);
    }
    if (!s->graphs || s->warm < WARMUP) {
        if (half == 0)
            s->counts.eager++;
        return body(s);
    }

    long before[2][MAX_BN_COUNTS];
    bn_counts(s, before);
    unsigned long gen0 = rw_model_mem_gen(m);
    if (be->capture_begin(be) != 0) {
        graphs_off(s, "the stream cannot be captured");
        s->counts.eager += half == 0;
        return body(s);
    }
    int rc = body(s);
    char why[200] = "";
    kb_graph *ng = be->capture_end(be, why, sizeof why);
    if (ng && (rc != 0 || rw_model_mem_gen(m) != gen0)) {
        snprintf(why, sizeof why, "%s", rc != 0 ? "the step failed while being captured"
                                                : "step buffers moved during the capture");
        be->graph_free(be, ng);
        ng = NULL;
    }
    if (!ng) {
        /* Nothing recorded ran: undo the host's bookkeeping and run eagerly. */
        bn_counts_set(s, before);
        graphs_off(s, why);
        s->counts.eager += half == 0;
        return body(s);
    }
    if (half == 0) {
        long after[2][MAX_BN_COUNTS];
        bn_counts(s, after);
        for (int t = 0; t < 2; t++)
            for (int i = 0; i < rw_model_nbn(m, t); i++)
                s->bn_delta[t][i] = after[t][i] - before[t][i];
        s->counts.captured++;
        if (s->captures++ > 0)
            s->counts.recaptures++;
    }
    *g = ng;
    *gen = gen0;
    if (be->graph_launch(be, ng) != 0) { /* cannot be stale yet */
        bn_counts_set(s, before);
        graphs_off(s, "a fresh graph was refused");
        return body(s);
    }
    return 0;
}

int rw_stepper_forward_backward(rw_stepper *s, rw_step_stats *st)
{
    kb_backend *be = s->be;
    if (s->ld) {
        if (rw_loader_next(s->ld, s->hx1, s->hx2, s->hl) != 0)
            return 1;
        size_t bytes = (size_t)s->Bl * 3 * s->c.size * s->c.size * sizeof(float);
        be->upload(be, s->x1, s->hx1, bytes);
        be->upload(be, s->x2, s->hx2, bytes);
        if (s->labels)
            be->upload(be, s->labels, s->hl, (size_t)s->Bl * sizeof(int32_t));
    } else {
        if (s->batch >= s->nb)
            return 1;
        if (s->perm_epoch != s->epoch) {
            rw_epoch_perm(s->c.seed, s->epoch, s->c.ds->n, s->perm);
            s->perm_epoch = s->epoch;
        }
        /* This rank's slice of the global batch, as the CPU loader takes it. */
        const int32_t *p = s->perm + s->batch * s->c.batch + (long)s->c.shard_rank * s->Bl;
        s->hkeys[0] = (uint32_t)s->epoch;
        for (int k = 0; k < s->Bl; k++)
            s->hkeys[1 + k] = (uint32_t)p[k];
        be->upload(be, s->keys, s->hkeys, (size_t)(s->Bl + 1) * sizeof(uint32_t));
        if (s->labels) {
            for (int k = 0; k < s->Bl; k++)
                s->hl[k] = s->c.ds->labels[p[k]];
            be->upload(be, s->labels, s->hl, (size_t)s->Bl * sizeof(int32_t));
        }
        s->batch++;
    }
    if (run_half(s, 0) != 0)
        return -1;
    rw_model_stats(s->c.m, st);
    return 0;
}

void rw_stepper_update(rw_stepper *s, float lr, float weight_decay, float tau)
{
    rw_model_update_prepare(s->c.m, lr, weight_decay, tau);
    run_half(s, 1);
    if (s->warm < WARMUP)
        s->warm++;
}
