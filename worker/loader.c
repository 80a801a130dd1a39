/* The background loader: worker threads render upcoming batches into a
 * small ring while the caller trains on the current one.
 *
 * Work is split into chunks of a few samples so that every thread helps with
 * the batch needed soonest; batches are assigned to ring slots in order
 * (epoch, batch), running on into the next epoch so that an epoch boundary
 * does not stall. A view depends only on (seed, epoch, sample, view), so
 * neither the thread count nor the order of the work changes a byte. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/data_internal.h"

#define RING 3  /* batches prepared ahead, the one being handed out included */
#define CHUNK 8 /* samples per unit of work */
#define MAX_THREADS 256

typedef struct slot {
    int used;        /* assigned to (epoch, batch) */
    int ready;       /* every chunk rendered */
    int epoch;
    long batch;
    int claimed;     /* chunks handed to threads */
    int done;        /* chunks finished */
    int32_t *idx;    /* (B) sample indices */
    float *x1, *x2;  /* (B, 3, S, S) */
    int32_t *labels; /* (B) */
} slot;

typedef struct thread_arg {
    rw_loader *ld;
    float *scratch; /* RW_AUG_SCRATCH(S) */
} thread_arg;

struct rw_loader {
    rw_loader_cfg cfg;
    long nb;     /* batches per epoch */
    int gbatch;  /* global batch; cfg.batch is this rank's slice of it */
    int shard;   /* offset of this rank's slice in a global batch */
    int nchunks; /* chunks per batch */
    size_t view; /* floats per view: 3*S*S */

    pthread_mutex_t mu;
    pthread_cond_t work_cv;  /* workers: a chunk or a free slot may exist */
    pthread_cond_t ready_cv; /* consumer: a slot became ready */
    pthread_cond_t idle_cv;  /* seek: no chunk in progress */
    slot slots[RING];
    int pos_epoch; /* consumer position */
    long pos_batch;
    int fill_epoch; /* next batch to assign to a slot */
    long fill_batch;
    int busy;    /* chunks in progress */
    int pausing; /* a seek is draining the workers */
    int quit;

    int perm_epoch[2]; /* the two most recent epoch orders */
    int32_t *perm[2];
    int perm_next;

    int nthreads;
    pthread_t *threads;
    thread_arg *args;
};

void rw_epoch_perm(uint64_t seed, int epoch, int n, int32_t *perm)
{
    for (int i = 0; i < n; i++)
        perm[i] = i;
    rw_u32x4 r = {{0, 0, 0, 0}};
    long t = 0;
    for (int i = n - 1; i > 0; i--, t++) {
        if (t % 4 == 0)
            r = rw_rng4(seed, (uint32_t)epoch, (uint32_t)(t / 4), RW_RNG_STREAM_PERM, 0);
        /* multiply-shift: bias below n / 2^32, i.e. < 1e-5 for CIFAR-10 */
        int j = (int)(((uint64_t)r.v[t % 4] * (uint64_t)(i + 1)) >> 32);
        int32_t tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
}

/* The order of `epoch`, cached; called with mu held. */
static const int32_t *epoch_perm(rw_loader *ld, int epoch)
{
    for (int k = 0; k < 2; k++)
        if (ld->perm_epoch[k] == epoch)
            return ld->perm[k];
    int k = ld->perm_next;
    ld->perm_next ^= 1;
    rw_epoch_perm(ld->cfg.seed, epoch, ld->cfg.ds->n, ld->perm[k]);
    ld->perm_epoch[k] = epoch;
    return ld->perm[k];
}

static int before(int e1, long b1, int e2, long b2) { return e1 < e2 || (e1 == e2 && b1 < b2); }

/* A slot with chunks left to claim, soonest batch first; mu held. */
static slot *claimable(rw_loader *ld)
{
    slot *best = NULL;
    for (int k = 0; k < RING; k++) {
        slot *s = &ld->slots[k];
        if (s->used && s->claimed < ld->nchunks &&
            (!best || before(s->epoch, s->batch, best->epoch, best->batch)))
            best = s;
    }
    return best;
}

/* Gives a free slot the next batch in order; mu held. */
static slot *assign(rw_loader *ld)
{
    slot *s = NULL;
    for (int k = 0; k < RING && !s; k++)
        if (!ld->slots[k].used)
            s = &ld->slots[k];
    if (!s)
        return NULL;
    int B = ld->cfg.batch;
    const int32_t *perm = epoch_perm(ld, ld->fill_epoch);
    memcpy(s->idx, perm + ld->fill_batch * ld->gbatch + ld->shard, (size_t)B * sizeof *s->idx);
    s->used = 1;
    s->ready = 0;
    s->epoch = ld->fill_epoch;
    s->batch = ld->fill_batch;
    s->claimed = 0;
    s->done = 0;
    if (++ld->fill_batch >= ld->nb) {
        ld->fill_batch = 0;
        ld->fill_epoch++;
    }
    return s;
}

static void render_chunk(rw_loader *ld, slot *s, int epoch, int chunk, float *scratch)
{
    const rw_loader_cfg *c = &ld->cfg;
    int end = (chunk + 1) * CHUNK < c->batch ? (chunk + 1) * CHUNK : c->batch;
    for (int k = chunk * CHUNK; k < end; k++) {
        int i = s->idx[k];
        rw_aug_view(c->ds, i, c->seed, epoch, 0, c->augment, c->out_size, c->mean, c->std,
                    s->x1 + (size_t)k * ld->view, scratch);
        rw_aug_view(c->ds, i, c->seed, epoch, 1, c->augment, c->out_size, c->mean, c->std,
                    s->x2 + (size_t)k * ld->view, scratch);
        s->labels[k] = c->ds->labels[i];
    }
}

static void *worker_main(void *p)
{
    thread_arg *a = p;
    rw_loader *ld = a->ld;
    pthread_mutex_lock(&ld->mu);
    for (;;) {
        if (ld->quit)
            break;
        slot *s = NULL;
        if (!ld->pausing) {
            s = claimable(ld);
            if (!s)
                s = assign(ld);
        }
        if (!s) {
            pthread_cond_wait(&ld->work_cv, &ld->mu);
            continue;
        }
        int chunk = s->claimed++;
        int epoch = s->epoch;
        ld->busy++;
        pthread_mutex_unlock(&ld->mu);

        /* the slot cannot be reassigned while busy > 0 covers this chunk */
        render_chunk(ld, s, epoch, chunk, a->scratch);

        pthread_mutex_lock(&ld->mu);
        ld->busy--;
        if (++s->done == ld->nchunks) {
            s->ready = 1;
            pthread_cond_broadcast(&ld->ready_cv);
        }
        if (ld->busy == 0)
            pthread_cond_broadcast(&ld->idle_cv);
    }
    pthread_mutex_unlock(&ld->mu);
    return NULL;
}

static void loader_release(rw_loader *ld)
{
    for (int k = 0; k < RING; k++) {
        free(ld->slots[k].idx);
        free(ld->slots[k].x1);
        free(ld->slots[k].x2);
        free(ld->slots[k].labels);
    }
    free(ld->perm[0]);
    free(ld->perm[1]);
    if (ld->args)
        for (int t = 0; t < ld->nthreads; t++)
            free(ld->args[t].scratch);
    free(ld->args);
    free(ld->threads);
    free(ld);
}

rw_loader *rw_loader_create(const rw_loader_cfg *cfg, char *err, size_t errlen)
{
    if (!cfg->ds || cfg->ds->n <= 0) {
        snprintf(err, errlen, "loader: empty data set");
        return NULL;
    }
    if (cfg->batch < 1 || cfg->batch > cfg->ds->n) {
        snprintf(err, errlen, "loader: batch %d must be in 1..%d (the data set's size)",
                 cfg->batch, cfg->ds->n);
        return NULL;
    }
    if (cfg->out_size < 8 || cfg->out_size > 1024) {
        snprintf(err, errlen, "loader: image size %d must be in 8..1024", cfg->out_size);
        return NULL;
    }
    if (cfg->threads < 1 || cfg->threads > MAX_THREADS) {
        snprintf(err, errlen, "loader: threads %d must be in 1..%d", cfg->threads, MAX_THREADS);
        return NULL;
    }
    for (int ch = 0; ch < 3; ch++) {
        if (!(cfg->std[ch] > 0.0f)) {
            snprintf(err, errlen, "loader: std[%d] = %g must be > 0", ch, (double)cfg->std[ch]);
            return NULL;
        }
    }

    int W = cfg->shard_world > 1 ? cfg->shard_world : 1;
    if (cfg->batch % W != 0 || cfg->shard_rank < 0 || cfg->shard_rank >= W) {
        snprintf(err, errlen, "loader: global batch %d must split evenly over %d ranks (rank %d)",
                 cfg->batch, W, cfg->shard_rank);
        return NULL;
    }
    rw_loader *ld = calloc(1, sizeof *ld);
    if (!ld) {
        snprintf(err, errlen, "loader: out of memory");
        return NULL;
    }
    ld->cfg = *cfg;
    ld->gbatch = cfg->batch;
    ld->cfg.batch = cfg->batch / W;
    ld->shard = cfg->shard_rank * ld->cfg.batch;
    cfg = &ld->cfg;
    ld->nb = cfg->ds->n / ld->gbatch;
    ld->nchunks = (cfg->batch + CHUNK - 1) / CHUNK;
    ld->view = (size_t)3 * cfg->out_size * cfg->out_size;
    ld->perm_epoch[0] = ld->perm_epoch[1] = -1;
    ld->nthreads = cfg->threads;

    int ok = 1;
    size_t B = (size_t)cfg->batch;
    for (int k = 0; k < RING; k++) {
        slot *s = &ld->slots[k];
        s->idx = malloc(B * sizeof *s->idx);
        s->x1 = malloc(B * ld->view * sizeof(float));
        s->x2 = malloc(B * ld->view * sizeof(float));
        s->labels = malloc(B * sizeof *s->labels);
        ok = ok && s->idx && s->x1 && s->x2 && s->labels;
    }
    ld->perm[0] = malloc((size_t)cfg->ds->n * sizeof(int32_t));
    ld->perm[1] = malloc((size_t)cfg->ds->n * sizeof(int32_t));
    ld->threads = calloc((size_t)ld->nthreads, sizeof *ld->threads);
    ld->args = calloc((size_t)ld->nthreads, sizeof *ld->args);
    ok = ok && ld->perm[0] && ld->perm[1] && ld->threads && ld->args;
    for (int t = 0; ok && t < ld->nthreads; t++) {
        ld->args[t].ld = ld;
        ld->args[t].scratch = malloc(RW_AUG_SCRATCH(cfg->out_size) * sizeof(float));
        ok = ld->args[t].scratch != NULL;
    }
    if (!ok) {
        snprintf(err, errlen, "loader: out of memory for %d batches of %d images of %dx%d", RING,
                 cfg->batch, cfg->out_size, cfg->out_size);
        loader_release(ld);
        return NULL;
    }

    pthread_mutex_init(&ld->mu, NULL);
    pthread_cond_init(&ld->work_cv, NULL);
    pthread_cond_init(&ld->ready_cv, NULL);
    pthread_cond_init(&ld->idle_cv, NULL);
    for (int t = 0; t < ld->nthreads; t++) {
        int rc = pthread_create(&ld->threads[t], NULL, worker_main, &ld->args[t]);
        if (rc != 0) {
            snprintf(err, errlen, "loader: cannot start thread %d: %s", t, strerror(rc));
            ld->nthreads = t; /* rw_loader_free joins the ones that started */
            rw_loader_free(ld);
            return NULL;
        }
    }
    return ld;
}

void rw_loader_free(rw_loader *ld)
{
    if (!ld)
        return;
    pthread_mutex_lock(&ld->mu);
    ld->quit = 1;
    pthread_cond_broadcast(&ld->work_cv);
    pthread_mutex_unlock(&ld->mu);
    for (int t = 0; t < ld->nthreads; t++)
        pthread_join(ld->threads[t], NULL);
    pthread_mutex_destroy(&ld->mu);
    pthread_cond_destroy(&ld->work_cv);
    pthread_cond_destroy(&ld->ready_cv);
    pthread_cond_destroy(&ld->idle_cv);
    loader_release(ld);
}

long rw_loader_batches(const rw_loader *ld) { return ld->nb; }

void rw_loader_seek(rw_loader *ld, int epoch, long batch)
{
    if (epoch < 0)
        epoch = 0;
    if (batch < 0)
        batch = 0;
    if (batch > ld->nb)
        batch = ld->nb;
    pthread_mutex_lock(&ld->mu);
    /* The usual case, the next epoch after the last one ran out: the ring
     * already holds its first batches. */
    int ne = ld->pos_epoch;
    long nbt = ld->pos_batch;
    if (nbt >= ld->nb) {
        ne++;
        nbt = 0;
    }
    if ((epoch == ne && batch == nbt) || (epoch == ld->pos_epoch && batch == ld->pos_batch)) {
        ld->pos_epoch = epoch;
        ld->pos_batch = batch;
        pthread_mutex_unlock(&ld->mu);
        return;
    }

    /* Anywhere else: drain the chunks in flight, empty the ring, restart. */
    ld->pausing = 1;
    while (ld->busy > 0)
        pthread_cond_wait(&ld->idle_cv, &ld->mu);
    for (int k = 0; k < RING; k++)
        ld->slots[k].used = ld->slots[k].ready = 0;
    ld->pos_epoch = epoch;
    ld->pos_batch = batch;
    ld->fill_epoch = batch >= ld->nb ? epoch + 1 : epoch;
    ld->fill_batch = batch >= ld->nb ? 0 : batch;
    ld->pausing = 0;
    pthread_cond_broadcast(&ld->work_cv);
    pthread_mutex_unlock(&ld->mu);
}

int rw_loader_next(rw_loader *ld, float *x1, float *x2, int32_t *labels)
{
    pthread_mutex_lock(&ld->mu);
    if (ld->pos_batch >= ld->nb) {
        pthread_mutex_unlock(&ld->mu);
        return 1;
    }
    slot *s;
    for (;;) {
        s = NULL;
        for (int k = 0; k < RING && !s; k++) {
            slot *c = &ld->slots[k];
            if (c->used && c->epoch == ld->pos_epoch && c->batch == ld->pos_batch)
                s = c;
        }
        if (s && s->ready)
            break;
        pthread_cond_wait(&ld->ready_cv, &ld->mu);
    }
    pthread_mutex_unlock(&ld->mu);

    /* ready slots are never touched by the workers */
    size_t B = (size_t)ld->cfg.batch;
    memcpy(x1, s->x1, B * ld->view * sizeof(float));
    memcpy(x2, s->x2, B * ld->view * sizeof(float));
    memcpy(labels, s->labels, B * sizeof *labels);

    pthread_mutex_lock(&ld->mu);
    s->used = 0;
    s->ready = 0;
    ld->pos_batch++;
    pthread_cond_broadcast(&ld->work_cv);
    pthread_mutex_unlock(&ld->mu);
    return 0;
}

void rw_loader_tell(const rw_loader *ld, int *epoch, long *batch)
{
    rw_loader *m = (rw_loader *)ld; /* the lock only; the position is read-only here */
    pthread_mutex_lock(&m->mu);
    *epoch = ld->pos_epoch;
    *batch = ld->pos_batch;
    pthread_mutex_unlock(&m->mu);
}
