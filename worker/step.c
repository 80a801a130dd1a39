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
#define MAX_BN_COUNTS RW_MODEL_MAX_BN
/* Steps whose stats wait on the device (rw_stepper_step) before the
 * stepper fetches them itself. */
#define RING 64

/* What a graph holds: the two halves of a step, or a whole step. */
enum { BODY_A, BODY_B, BODY_STEP, NBODY };

/* Where the views come from. */
enum { VIEWS_HOST, VIEWS_RESIDENT, VIEWS_STREAMED };

struct rw_stepper {
    rw_stepper_cfg c;
    kb_backend *be;
    int Bl;   /* this rank's batch */
    long nb;  /* batches per epoch */
    void *x;  /* backend memory: the views, a feature map (2 Bl, 3, S, S) */
    size_t half; /* its bytes per view */

    /* host data */
    rw_loader *ld;
    float *hx1, *hx2;
    int32_t *hl;

    /* device data: the views rendered from the uint8 set held on the
     * device (resident), or from the batch's images, gathered on the host
     * into a pinned block and uploaded to a staging buffer every step
     * (streamed) */
    int mode;        /* VIEWS_* */
    uint8_t *pix;    /* backend memory: the uint8 set (n, 3, side, side), resident */
    uint8_t *stage;  /* backend memory: the batch's images (Bl, 3, side, side), streamed */
    uint8_t *hstage[2]; /* host staging of the same, used in turn */
    int hpinned[2];     /* from host_alloc (else malloc) */
    int turn;           /* the host staging the next batch fills */
    size_t img;         /* bytes of one uint8 image */
    uint32_t *keys;  /* backend memory: epoch, then Bl sample indices */
    uint32_t *hkeys; /* host staging of the same */
    int32_t *perm;
    int perm_epoch;
    /* the supervised baseline: the batch's labels (backend memory), staged
     * in hl */
    int32_t *labels;
    int epoch;
    long batch;

    /* rw_stepper_step's stats: a ring on the device (RING rows of
     * RW_MODEL_NSTATS, and the count of rows pushed), and what has been
     * fetched from it but not yet read */
    float *ring;
    uint32_t *ring_count;
    long pushed, fetched;    /* rows pushed and fetched since the stepper began */
    float *queue;            /* fetched rows, RW_MODEL_NSTATS each */
    long nqueue, capqueue;
    int update_in_step;      /* the whole-step body runs the update too */
    /* queued between the backward pass and the update of the whole-step
     * body (a data-parallel job's all-reduce), instead of the ring push */
    void (*between)(void *ud);
    void *between_ud;

    /* graphs */
    int graphs;   /* still allowed */
    int warm;     /* eager steps since the last (re)start */
    kb_graph *g[NBODY];
    unsigned long gen[NBODY]; /* model buffer generation at capture */
    long bn_delta[NBODY][2][MAX_BN_COUNTS]; /* BN counters one captured body adds */
    int captures;
    rw_stepper_counts counts;
    char desc[256];
};

static void describe(rw_stepper *s, const char *why)
{
    const char *views = "views on the host";
    if (s->mode == VIEWS_RESIDENT)
        views = "views on the device, set resident";
    else if (s->mode == VIEWS_STREAMED && s->hpinned[0] && s->hpinned[1])
        views = "views on the device, batches streamed from pinned memory";
    else if (s->mode == VIEWS_STREAMED)
        views = "views on the device, batches streamed from host memory";
    if (s->graphs)
        snprintf(s->desc, sizeof s->desc, "%s, CUDA graphs", views);
    else
        snprintf(s->desc, sizeof s->desc, "%s, eager%s%s%s", views, why ? " (" : "",
                 why ? why : "", why ? ")" : "");
}

int rw_stepper_set_resident(size_t set_bytes, int budget_mb, size_t free_bytes)
{
    if (budget_mb > 0)
        return set_bytes <= ((size_t)budget_mb << 20);
    if (free_bytes == 0) /* unknown: the allocation decides */
        return 1;
    return set_bytes <= free_bytes / 2;
}

static void device_views_free(rw_stepper *s)
{
    kb_backend *be = s->be;
    if (s->pix)
        be->free(be, s->pix);
    if (s->stage)
        be->free(be, s->stage);
    if (s->keys)
        be->free(be, s->keys);
    for (int b = 0; b < 2; b++) {
        if (s->hpinned[b])
            be->host_free(be, s->hstage[b]);
        else
            free(s->hstage[b]);
        s->hstage[b] = NULL;
        s->hpinned[b] = 0;
    }
    free(s->hkeys);
    free(s->perm);
    s->pix = s->stage = NULL;
    s->keys = s->hkeys = NULL;
    s->perm = NULL;
    s->mode = VIEWS_HOST;
}

/* The batch's staging: a device buffer and two host blocks, pinned where
 * the backend has them. 0, or -1 out of memory. */
static int stream_setup(rw_stepper *s)
{
    kb_backend *be = s->be;
    const size_t bytes = (size_t)s->Bl * s->img;
    s->stage = be->alloc(be, bytes);
    if (!s->stage)
        return -1;
    for (int b = 0; b < 2; b++) {
        s->hstage[b] = be->host_alloc ? be->host_alloc(be, bytes) : NULL;
        s->hpinned[b] = s->hstage[b] != NULL;
        if (!s->hstage[b])
            s->hstage[b] = malloc(bytes);
        if (!s->hstage[b])
            return -1;
    }
    return 0;
}

/* Sets the stepper up to render its views on the device (s->mode), or
 * leaves it to the host loader. */
static void device_views(rw_stepper *s)
{
    kb_backend *be = s->be;
    const rw_dataset *ds = s->c.ds;
    s->img = (size_t)3 * ds->side * ds->side;
    s->keys = be->alloc(be, (size_t)(s->Bl + 1) * sizeof(uint32_t));
    s->hkeys = malloc((size_t)(s->Bl + 1) * sizeof(uint32_t));
    s->perm = malloc((size_t)ds->n * sizeof(int32_t));
    if (!s->keys || !s->hkeys || !s->perm) {
        device_views_free(s);
        return;
    }
    const size_t bytes = (size_t)ds->n * s->img;
    size_t free_bytes = 0, total_bytes = 0;
    if (be->device_info)
        be->device_info(be, NULL, 0, &free_bytes, &total_bytes);
    if (rw_stepper_set_resident(bytes, s->c.device_budget_mb, free_bytes) &&
        (s->pix = be->alloc(be, bytes)) != NULL) {
        be->upload(be, s->pix, ds->pixels, bytes);
        s->mode = VIEWS_RESIDENT;
    } else if (stream_setup(s) == 0) {
        s->mode = VIEWS_STREAMED;
    } else {
        device_views_free(s);
    }
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
    s->half = be->fmap_bytes(be, s->Bl, 3, c->size, c->size);
    s->x = be->alloc(be, 2 * s->half);
    s->ring = be->alloc(be, (size_t)RING * RW_MODEL_NSTATS * sizeof(float));
    s->ring_count = be->alloc(be, sizeof(uint32_t));
    if (!s->x || !s->ring || !s->ring_count) {
        snprintf(err, errlen, "out of memory for batch %d at %dx%d", c->batch, c->size, c->size);
        goto fail;
    }

    /* The device renders the views where it can (a backend with the
     * augment op): from the set kept on the device when it fits the
     * budget, else from batches streamed from the host; the CPU loader
     * where neither can be had. */
    if (!c->host_data && be->augment)
        device_views(s);
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
    if (s->mode == VIEWS_HOST) {
        size_t img = (size_t)s->Bl * 3 * c->size * c->size;
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
    for (int i = 0; i < NBODY; i++) {
        if (s->g[i])
            be->graph_free(be, s->g[i]);
        s->g[i] = NULL;
    }
    s->warm = WARMUP - 1;
}

void rw_stepper_free(rw_stepper *s)
{
    if (!s)
        return;
    kb_backend *be = s->be;
    rw_stepper_release(s);
    device_views_free(s);
    void *dev[] = {s->x, s->labels, s->ring, s->ring_count};
    for (size_t i = 0; i < sizeof dev / sizeof *dev; i++)
        if (dev[i])
            be->free(be, dev[i]);
    rw_loader_free(s->ld);
    free(s->hx1);
    free(s->hx2);
    free(s->hl);
    free(s->queue);
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

const void *rw_stepper_views(const rw_stepper *s) { return s->x; }

void rw_stepper_counts_get(const rw_stepper *s, rw_stepper_counts *c) { *c = s->counts; }

/* ---- the step's device work ---- */

static void render_views(rw_stepper *s)
{
    if (s->mode == VIEWS_HOST)
        return;
    const int plain = s->c.augment == RW_AUG_NONE;
    const int views[2] = {plain ? -1 : 0, plain ? -1 : 1};
    const int staged = s->mode == VIEWS_STREAMED;
    s->be->augment(s->be, staged ? s->stage : s->pix, s->c.ds->side, s->c.ds->side, staged,
                   s->keys, s->Bl, s->c.seed, views, 2, s->c.size, s->c.mean, s->c.std, s->x);
}

static int body_run(rw_stepper *s, int body)
{
    rw_model *m = s->c.m;
    if (body == BODY_B) {
        rw_model_update_apply(m);
        return 0;
    }
    render_views(s);
    if (rw_model_forward_backward(m, s->x, s->Bl, s->c.size, NULL) != 0)
        return -1;
    if (body == BODY_STEP) {
        if (s->between)
            s->between(s->between_ud);
        else
            s->be->ring_push(s->be, s->ring, RING, rw_model_stats_buf(m), RW_MODEL_NSTATS,
                             s->ring_count);
        if (s->update_in_step)
            rw_model_update_apply(m);
    }
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

/* Runs one body: replays its graph, or captures it (then launches the
 * capture), or runs it eagerly. The host-side BN counters a forward pass
 * bumps are bumped by hand on a replay. */
static int run_body(rw_stepper *s, int body)
{
    kb_backend *be = s->be;
    rw_model *m = s->c.m;
    kb_graph **g = &s->g[body];
    const int forward = body != BODY_B;

    if (*g) {
        if (s->gen[body] == rw_model_mem_gen(m) && be->graph_launch(be, *g) == 0) {
            long c[2][MAX_BN_COUNTS];
            bn_counts(s, c);
            for (int t = 0; t < 2; t++)
                for (int i = 0; i < rw_model_nbn(m, t); i++)
                    c[t][i] += s->bn_delta[body][t][i];
            bn_counts_set(s, c);
            s->counts.replayed += forward;
            return 0;
        }
        /* Its buffers moved: one eager step, then capture again. */
        rw_stepper_release(s);
    }
    if (!s->graphs || s->warm < WARMUP) {
        s->counts.eager += forward;
        return body_run(s, body);
    }

    long before[2][MAX_BN_COUNTS];
    bn_counts(s, before);
    unsigned long gen0 = rw_model_mem_gen(m);
    if (be->capture_begin(be) != 0) {
        graphs_off(s, "the stream cannot be captured");
        s->counts.eager += forward;
        return body_run(s, body);
    }
    int rc = body_run(s, body);
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
        s->counts.eager += forward;
        return body_run(s, body);
    }
    long after[2][MAX_BN_COUNTS];
    bn_counts(s, after);
    for (int t = 0; t < 2; t++)
        for (int i = 0; i < rw_model_nbn(m, t); i++)
            s->bn_delta[body][t][i] = after[t][i] - before[t][i];
    if (forward) {
        s->counts.captured++;
        if (s->captures++ > 0)
            s->counts.recaptures++;
    }
    *g = ng;
    s->gen[body] = gen0;
    if (be->graph_launch(be, ng) != 0) { /* cannot be stale yet */
        bn_counts_set(s, before);
        graphs_off(s, "a fresh graph was refused");
        return body_run(s, body);
    }
    return 0;
}

/* Stages the next batch (uploads its keys, or its views, and labels):
 * 0, or 1 when the epoch is exhausted. */
static int next_batch(rw_stepper *s)
{
    kb_backend *be = s->be;
    if (s->ld) {
        if (rw_loader_next(s->ld, s->hx1, s->hx2, s->hl) != 0)
            return 1;
        be->fmap_upload(be, s->x, s->hx1, s->Bl, 3, s->c.size, s->c.size);
        be->fmap_upload(be, (char *)s->x + s->half, s->hx2, s->Bl, 3, s->c.size, s->c.size);
        if (s->labels)
            be->upload(be, s->labels, s->hl, (size_t)s->Bl * sizeof(int32_t));
        return 0;
    }
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
    if (s->mode == VIEWS_STREAMED) {
        /* The batch's images into this turn's host staging (once the upload
         * that last read it is done), then up into the device's, outside
         * any capture: the captured augment reads the staging in place. */
        uint8_t *h = s->hstage[s->turn];
        if (s->hpinned[s->turn])
            be->host_wait(be, h);
        for (int k = 0; k < s->Bl; k++)
            memcpy(h + (size_t)k * s->img, s->c.ds->pixels + (size_t)p[k] * s->img, s->img);
        be->upload(be, s->stage, h, (size_t)s->Bl * s->img);
        s->turn ^= 1;
    }
    if (s->labels) {
        for (int k = 0; k < s->Bl; k++)
            s->hl[k] = s->c.ds->labels[p[k]];
        be->upload(be, s->labels, s->hl, (size_t)s->Bl * sizeof(int32_t));
    }
    s->batch++;
    return 0;
}

int rw_stepper_forward_backward(rw_stepper *s, rw_step_stats *st)
{
    int r = next_batch(s);
    if (r != 0)
        return r;
    if (run_body(s, BODY_A) != 0)
        return -1;
    rw_model_stats(s->c.m, st);
    return 0;
}

int rw_stepper_update(rw_stepper *s, float lr, float weight_decay, float tau)
{
    rw_model_update_prepare(s->c.m, lr, weight_decay, tau);
    run_body(s, BODY_B);
    if (s->warm < WARMUP)
        s->warm++;
    return rw_model_update_finish(s->c.m);
}

/* Moves the rows pushed since the last fetch from the device ring to the
 * host queue (waits for the device). */
static void fetch(rw_stepper *s)
{
    long n = s->pushed - s->fetched;
    if (n <= 0)
        return;
    if (s->nqueue + n > s->capqueue) {
        long cap = s->capqueue ? 2 * s->capqueue : 4 * RING;
        while (cap < s->nqueue + n)
            cap *= 2;
        float *q = realloc(s->queue, (size_t)cap * RW_MODEL_NSTATS * sizeof(float));
        if (!q) {
            fprintf(stderr, "runaway: out of memory keeping step statistics\n");
            abort();
        }
        s->queue = q;
        s->capqueue = cap;
    }
    float rows[RING * RW_MODEL_NSTATS];
    s->be->download(s->be, rows, s->ring, sizeof rows);
    for (long k = 0; k < n; k++) {
        long row = (s->fetched + k) % RING;
        memcpy(s->queue + (size_t)(s->nqueue + k) * RW_MODEL_NSTATS,
               rows + (size_t)row * RW_MODEL_NSTATS, RW_MODEL_NSTATS * sizeof(float));
    }
    s->nqueue += n;
    s->fetched = s->pushed;
}

static int step_body(rw_stepper *s, int update, float lr, float weight_decay, float tau,
                     void (*between)(void *ud), void *ud)
{
    if (!between && s->pushed - s->fetched == RING) /* the ring is full: the oldest rows come up */
        fetch(s);
    int r = next_batch(s);
    if (r != 0)
        return r;
    /* a graph holds the update or not, the all-reduce or not: a change of
     * mind captures again */
    if ((s->update_in_step != update || s->between != between || s->between_ud != ud) &&
        s->g[BODY_STEP])
        rw_stepper_release(s);
    s->update_in_step = update;
    s->between = between;
    s->between_ud = ud;
    if (update)
        rw_model_update_prepare(s->c.m, lr, weight_decay, tau);
    if (run_body(s, BODY_STEP) != 0)
        return -1;
    if (!between)
        s->pushed++;
    if (s->warm < WARMUP)
        s->warm++;
    /* the update's host half (DirectPred's W), between two launches: a
     * graph reads the parameters where they are */
    return update ? rw_model_update_finish(s->c.m) : 0;
}

int rw_stepper_step(rw_stepper *s, int update, float lr, float weight_decay, float tau)
{
    return step_body(s, update, lr, weight_decay, tau, NULL, NULL);
}

int rw_stepper_step_between(rw_stepper *s, int update, float lr, float weight_decay, float tau,
                            void (*between)(void *ud), void *ud)
{
    return step_body(s, update, lr, weight_decay, tau, between, ud);
}

long rw_stepper_read(rw_stepper *s, rw_step_stats *st, long max)
{
    fetch(s);
    long n = s->nqueue < max ? s->nqueue : max;
    for (long k = 0; k < n; k++)
        rw_model_stats_decode(s->c.m, s->queue + (size_t)k * RW_MODEL_NSTATS, &st[k]);
    memmove(s->queue, s->queue + (size_t)n * RW_MODEL_NSTATS,
            (size_t)(s->nqueue - n) * RW_MODEL_NSTATS * sizeof(float));
    s->nqueue -= n;
    return n;
}

long rw_stepper_unread(const rw_stepper *s) { return s->nqueue + (s->pushed - s->fetched); }
