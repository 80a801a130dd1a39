/* Data-parallel jobs, with ranks as threads of one process (tests/thread_comm.h):
 * a 2-rank job with sync_bn follows a 1-rank job with the same global batch;
 * without sync_bn each replica normalizes with its own batch statistics; a
 * perturbed rank is caught by the checksum; a rank that dies makes the other
 * fail within the timeout instead of hanging. */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/backend.h"
#include "proto/spec.h"
#include "thread_comm.h"
#include "weights_diff.h"
#include "worker/data.h"
#include "worker/dist.h"
#include "worker/model.h"
#include "worker/safetensors.h"
#include "worker/train.h"
#include "rw_config.h"

#define MAX_STEPS 16

static char tmp[64];

static void setup(void)
{
    snprintf(tmp, sizeof tmp, "/tmp/rw-dist-XXXXXX");
    cr_assert_not_null(mkdtemp(tmp));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    (void)!system(cmd);
}

static void tiny_spec(rw_spec *s, int byol)
{
    rw_spec_defaults(s);
    s->seed = 3;
    s->threads = 1;
    snprintf(s->data.path, sizeof s->data.path, "%s/data", tmp);
    s->data.synthetic_train = 192;
    s->data.synthetic_test = 32;
    s->data.image_size = 16;
    s->data.loader_threads = 1;
    s->model.stem = RW_STEM_CIFAR;
    s->model.width = 4;
    s->model.proj_hidden = 32;
    s->model.proj_out = 16;
    s->model.pred_hidden = 32;
    s->loss.kind = byol ? RW_LOSS_BYOL : RW_LOSS_UNIFIED;
    s->loss.alpha = 1;
    s->loss.beta = -1;
    s->optim.batch_size = 32;
    s->optim.epochs = 1;
    s->optim.lr = 1e-3f;
    s->eval.linear_epochs = 0;
    s->eval.knn_every = 0;
    s->log.every_steps = 1;
    char err[256];
    cr_assert_eq(rw_synth_ensure(s->data.path, 192, 32, s->data.synthetic_seed, err, sizeof err), 0,
                 "%s", err);
}

typedef struct rank_run {
    rw_spec spec;
    rw_train_opts opts;
    tc_rank comm;
    int rc;
    char err[512];
    double loss[MAX_STEPS], uniform[MAX_STEPS];
    int nsteps;
    int queued; /* the rank's communicator behind a queue (kb_comm_queued), as workers have it */
    double seconds;
} rank_run;

static void on_step(void *ud, const rw_metrics *m)
{
    rank_run *r = ud;
    if (r->nsteps < MAX_STEPS) {
        r->uniform[r->nsteps] = m->uniform;
        r->loss[r->nsteps++] = m->loss;
    }
}

static void *rank_main(void *p)
{
    rank_run *r = p;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    kb_backend *be = kb_cpu_create(1);
    rw_train_hooks h = {.ud = r, .on_step = on_step};
    rw_train_result res;
    kb_comm *q = NULL;
    if (r->queued) {
        q = kb_comm_queued(r->opts.comm, r->err, sizeof r->err);
        cr_assert_not_null(q, "%s", r->err);
        r->opts.comm = q;
    }
    r->rc = rw_train(&r->spec, be, &r->opts, &h, &res, r->err, sizeof r->err);
    kb_comm_destroy(q);
    kb_destroy(be);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    r->seconds = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
    return NULL;
}

/* Runs `world` ranks of the spec as threads; rank 0 writes to out. Rank
 * `odd` (-1: none) reads its data from tmp/odd_dir instead. */
static int queue_ranks; /* run_world's ranks get queued communicators */

static void run_world_on(rank_run *r, int world, const rw_spec *s, int sync_bn, const char *out,
                         int timeout_ms, int odd, const char *odd_dir)
{
    static tc_world w;
    tc_world_init(&w, world, timeout_ms);
    pthread_t th[TC_MAX];
    for (int k = 0; k < world; k++) {
        memset(&r[k], 0, sizeof r[k]);
        r[k].spec = *s;
        r[k].spec.sync_bn = sync_bn;
        if (k == odd)
            snprintf(r[k].spec.data.path, sizeof r[k].spec.data.path, "%s/%s", tmp, odd_dir);
        tc_rank_init(&r[k].comm, &w, k);
        r[k].opts = (rw_train_opts){.out_dir = k == 0 ? out : NULL, .comm = &r[k].comm.c,
                                    .check_every = 1,
                                    .test_perturb_rank = -1};
        r[k].queued = queue_ranks;
    }
    for (int k = 0; k < world; k++)
        pthread_create(&th[k], NULL, rank_main, &r[k]);
    for (int k = 0; k < world; k++)
        pthread_join(th[k], NULL);
}

static void run_world(rank_run *r, int world, const rw_spec *s, int sync_bn, const char *out,
                      int timeout_ms)
{
    run_world_on(r, world, s, sync_bn, out, timeout_ms, -1, NULL);
}

static void run_single(rank_run *r, const rw_spec *s, const char *out)
{
    memset(r, 0, sizeof *r);
    r->spec = *s;
    r->opts = (rw_train_opts){.out_dir = out, .test_perturb_rank = -1};
    rank_main(r);
    cr_assert_eq(r->rc, 0, "1-rank job: %s", r->err);
}

TestSuite(dist, .init = setup, .fini = teardown, .timeout = 240);

/* With synchronized BatchNorm the ranks compute the 1-rank step exactly up
 * to float rounding (sums in another order, the variance recombined across
 * ranks): per-step losses agree to ~1e-6 relative. Over the job's 6 Adam
 * steps rounding grows through ReLU flips and Adam's normalization of small
 * gradients, worst in small BN biases that started at 0: measured worst
 * tensor difference 2e-3 (BYOL) and 4e-3 (RAFT) relative. The same
 * comparison without sync_bn, i.e. a real semantic difference, measured 1.8
 * and 2.2; 2e-2 separates the two by 5x and 100x. */
static void sync_equivalence_(int byol, int sync)
{
    rw_spec s;
    tiny_spec(&s, byol);
    char o1[96], o2[96], w1[128], w2[128], worst[64] = "";
    snprintf(o1, sizeof o1, "%s/one", tmp);
    snprintf(o2, sizeof o2, "%s/two", tmp);
    rank_run one, two[2];
    run_single(&one, &s, o1);
    run_world(two, 2, &s, sync, o2, 20000);
    cr_assert_eq(two[0].rc, 0, "rank 0: %s", two[0].err);
    cr_assert_eq(two[1].rc, 0, "rank 1: %s", two[1].err);
    cr_assert_eq(two[0].nsteps, one.nsteps);
    cr_assert_eq(two[1].nsteps, 0, "only rank 0 reports metrics");
    for (int k = 0; k < one.nsteps; k++)
        cr_expect(fabs(two[0].loss[k] - one.loss[k]) <= 1e-5 * (1 + fabs(one.loss[k])),
                  "step %d: 2-rank loss %.9g, 1-rank %.9g", k + 1, two[0].loss[k], one.loss[k]);
    snprintf(w1, sizeof w1, "%s/weights.safetensors", o1);
    snprintf(w2, sizeof w2, "%s/weights.safetensors", o2);
    double d = worst_tensor_diff(w2, w1, worst, sizeof worst);
    cr_expect_lt(d, 2e-2, "after %d steps the parameters differ by %.3e (relative) in %s",
                 one.nsteps, d, worst);
    printf("%s: 1 vs 2 ranks (sync_bn): %d steps, worst tensor difference %.2e (%s); "
           "first loss %.9g vs %.9g\n", byol ? "BYOL" : "RAFT", one.nsteps, d, worst,
           one.loss[0], two[0].loss[0]);
}

static void sync_equivalence(int byol) { sync_equivalence_(byol, 1); }
Test(dist, sync_bn_two_ranks_follow_one_rank_raft) { sync_equivalence(0); }
Test(dist, sync_bn_two_ranks_follow_one_rank_byol) { sync_equivalence(1); }

/* DirectPred's F in a data-parallel job is the global batch's: the
 * predictor's slot of the gradient (E[y y^T]) is all-reduced with the rest,
 * and rank 0's W is every rank's (the checksum compares the parameters
 * every step here, check_every 1). With sync_bn the 2-rank job's F is then
 * the 1-rank job's up to float rounding through 6 steps (measured 1.6e-6
 * relative); each rank's own half batch instead (the slot left out of the
 * all-reduce) measured 0.22. */
Test(dist, directpred_two_ranks_fold_the_global_batch)
{
    rw_spec s;
    tiny_spec(&s, 1);
    s.model.predictor = RW_PRED_DIRECTPRED;
    s.model.directpred.every = 2;
    char o1[96], o2[96], c1[128], c2[128], err[256];
    snprintf(o1, sizeof o1, "%s/one", tmp);
    snprintf(o2, sizeof o2, "%s/two", tmp);
    rank_run one, two[2];
    run_single(&one, &s, o1);
    run_world(two, 2, &s, 1, o2, 20000);
    cr_assert_eq(two[0].rc, 0, "rank 0: %s", two[0].err);
    cr_assert_eq(two[1].rc, 0, "rank 1: %s", two[1].err);
    snprintf(c1, sizeof c1, "%s/checkpoint.safetensors", o1);
    snprintf(c2, sizeof c2, "%s/checkpoint.safetensors", o2);
    rw_st *a = rw_st_open(c1, err, sizeof err), *b = rw_st_open(c2, err, sizeof err);
    cr_assert(a && b, "%s", err);
    const rw_st_tensor *fa = rw_st_find(a, "directpred.corr"), *fb = rw_st_find(b, "directpred.corr");
    cr_assert(fa && fb && fa->nbytes == fb->nbytes && fa->dtype == RW_ST_F64);
    double num = 0, den = 0;
    for (int64_t k = 0; k < fa->numel; k++) {
        double x, y;
        memcpy(&x, (const char *)fa->data + 8 * k, 8);
        memcpy(&y, (const char *)fb->data + 8 * k, 8);
        num += (x - y) * (x - y);
        den += x * x;
    }
    rw_st_close(a);
    rw_st_close(b);
    cr_expect(den > 0 && sqrt(num / den) < 1e-3, "F of 2 ranks vs 1: %.3g relative",
              sqrt(num / den));
    printf("directpred: F of 2 ranks (sync_bn) vs 1 rank after %d steps: %.2e relative\n",
           one.nsteps, sqrt(num / den));
}

/* Without sync_bn each replica normalizes with its own half batch: the
 * first step's (rank-averaged) loss is the mean of the two half-batch
 * losses of one model, and differs from the synchronized one. */
Test(dist, per_replica_bn_without_sync)
{
    rw_spec s;
    tiny_spec(&s, 0);
    rank_run two[2], sync[2];
    run_world(two, 2, &s, 0, NULL, 20000);
    cr_assert_eq(two[0].rc, 0, "%s", two[0].err);
    run_world(sync, 2, &s, 1, NULL, 20000);
    cr_assert_eq(sync[0].rc, 0, "%s", sync[0].err);

    /* The reference: one model, each half of the first global batch alone. */
    char err[256];
    rw_dataset train, test;
    cr_assert_eq(rw_load_data(&s, NULL, NULL, &train, &test, err, sizeof err), 0, "%s", err);
    kb_backend *be = kb_cpu_create(1);
    rw_model_cfg mc;
    rw_model_cfg_from_spec(&s, &mc);
    rw_model *m = rw_model_create(be, &mc, s.seed, err, sizeof err);
    double mean = 0;
    for (int r = 0; r < 2; r++) {
        rw_loader_cfg lc = {.ds = &train, .batch = 32, .out_size = 16, .augment = RW_AUG_BYOL,
                            .seed = s.seed, .threads = 1, .shard_rank = r, .shard_world = 2};
        memcpy(lc.mean, s.data.mean, sizeof lc.mean);
        memcpy(lc.std, s.data.std, sizeof lc.std);
        rw_loader *ld = rw_loader_create(&lc, err, sizeof err);
        size_t n = (size_t)16 * 3 * 16 * 16;
        float *h1 = malloc(n * 4), *h2 = malloc(n * 4);
        int32_t lab[16];
        rw_loader_seek(ld, 0, 0);
        cr_assert_eq(rw_loader_next(ld, h1, h2, lab), 0);
        float *d = be->alloc(be, be->fmap_bytes(be, 32, 3, 16, 16)); /* the views, one batch */
        be->fmap_upload(be, d, h1, 16, 3, 16, 16);
        be->fmap_upload(be, d + n, h2, 16, 3, 16, 16);
        rw_step_stats st;
        cr_assert_eq(rw_model_forward_backward(m, d, 16, 16, &st), 0);
        mean += 0.5 * st.loss;
        be->free(be, d);
        free(h1);
        free(h2);
        rw_loader_free(ld);
    }
    cr_expect(fabs(two[0].loss[0] - mean) <= 1e-5 * (1 + fabs(mean)),
              "per-replica first loss %.9g, mean of half-batch losses %.9g", two[0].loss[0], mean);
    cr_expect(fabs(sync[0].loss[0] - two[0].loss[0]) > 1e-4,
              "sync_bn should change the loss (%.9g vs %.9g)", sync[0].loss[0], two[0].loss[0]);
    rw_model_free(m);
    kb_destroy(be);
    rw_dataset_free(&train);
    rw_dataset_free(&test);
}

Test(dist, perturbed_rank_is_caught_by_the_checksum)
{
    rw_spec s;
    tiny_spec(&s, 0);
    static tc_world w;
    tc_world_init(&w, 2, 20000);
    rank_run r[2];
    pthread_t th[2];
    for (int k = 0; k < 2; k++) {
        memset(&r[k], 0, sizeof r[k]);
        r[k].spec = s;
        r[k].spec.sync_bn = 1;
        tc_rank_init(&r[k].comm, &w, k);
        r[k].opts = (rw_train_opts){.comm = &r[k].comm.c, .check_every = 1,
                                    .test_perturb_rank = 1, .test_perturb_step = 3};
        pthread_create(&th[k], NULL, rank_main, &r[k]);
    }
    for (int k = 0; k < 2; k++)
        pthread_join(th[k], NULL);
    for (int k = 0; k < 2; k++) {
        cr_expect_neq(r[k].rc, 0, "rank %d should fail", k);
        cr_expect(strstr(r[k].err, "diverged by step 3") && strstr(r[k].err, "teacher"),
                  "rank %d: %s", k, r[k].err);
    }
    cr_expect_eq(r[0].nsteps, 2, "rank 0 reported %d steps before the check failed", r[0].nsteps);
}

/* A rank whose host holds other images at data.path (one pixel differs):
 * the job stops at its start on every rank, each saying what it knows. */
Test(dist, ranks_on_other_data_are_refused)
{
    rw_spec s;
    tiny_spec(&s, 0);
    char cmd[1200], bin[256];
    snprintf(cmd, sizeof cmd, "cp -r '%s' '%s/other'", s.data.path, tmp);
    cr_assert_eq(system(cmd), 0);
    snprintf(bin, sizeof bin, "%s/other/data_batch_2.bin", tmp);
    FILE *f = fopen(bin, "r+b");
    cr_assert_not_null(f);
    cr_assert_eq(fseek(f, 3073 + 7, SEEK_SET), 0);
    int was = fgetc(f);
    cr_assert_eq(fseek(f, 3073 + 7, SEEK_SET), 0);
    fputc(was ^ 0x80, f);
    fclose(f);
    rank_run r[2];
    run_world_on(r, 2, &s, 0, NULL, 20000, 1, "other");
    cr_expect(r[0].rc != 0 && strstr(r[0].err, "1 rank(s) hold another training set at "
                                                "data.path than rank 0's (192 images of 32x32"),
              "rank 0: %s", r[0].err);
    cr_expect(r[1].rc != 0 && strstr(r[1].err, "rank 1: the training set at data.path here (192 "
                                                "images of 32x32") &&
                  strstr(r[1].err, "is not rank 0's ("), "rank 1: %s", r[1].err);
    cr_expect_eq(r[0].nsteps + r[1].nsteps, 0, "steps were trained");
}

Test(dist, dead_rank_fails_the_others_within_the_timeout)
{
    rw_spec s;
    tiny_spec(&s, 0);
    static tc_world w;
    tc_world_init(&w, 2, 1500);
    rank_run r[2];
    pthread_t th[2];
    for (int k = 0; k < 2; k++) {
        memset(&r[k], 0, sizeof r[k]);
        r[k].spec = s;
        /* Rank 1 "dies" after 2 steps: its job simply ends there. */
        if (k == 1)
            r[k].spec.optim.max_steps = 2;
        r[k].spec.sync_bn = 1;
        tc_rank_init(&r[k].comm, &w, k);
        r[k].opts = (rw_train_opts){.comm = &r[k].comm.c, .check_every = 50,
                                    .test_perturb_rank = -1};
        pthread_create(&th[k], NULL, rank_main, &r[k]);
    }
    for (int k = 0; k < 2; k++)
        pthread_join(th[k], NULL);
    cr_expect_neq(r[0].rc, 0, "rank 0 should fail when its peer is gone");
    cr_expect(strstr(r[0].err, "timeout") != NULL, "rank 0: %s", r[0].err);
    cr_expect_lt(r[0].seconds, 15.0, "rank 0 took %.1f s to give up (timeout 1.5 s)",
                 r[0].seconds);
}

/* The same 2-rank job over Gloo (TCP on loopback, rendezvous through an
 * in-process store): the transport the CPU workers use. */
typedef struct gloo_rank {
    rank_run run;
    kb_store *store;
    int rank;
} gloo_rank;

static void *gloo_main(void *p)
{
    gloo_rank *g = p;
    char err[256];
    kb_comm *c = kb_gloo_create(g->store, g->rank, 2, "127.0.0.1", 30000, err, sizeof err);
    if (!c) {
        g->run.rc = -1;
        snprintf(g->run.err, sizeof g->run.err, "%s", err);
        return NULL;
    }
    g->run.opts.comm = c;
    rank_main(&g->run);
    kb_comm_destroy(c);
    return NULL;
}

Test(dist, gloo_two_ranks_follow_one_rank)
{
    if (!RW_HAVE_GLOO) {
        cr_skip_test("built without Gloo");
        return;
    }
    rw_spec s;
    tiny_spec(&s, 0);
    char o1[96], o2[96], w1[128], w2[128], worst[64] = "";
    snprintf(o1, sizeof o1, "%s/one", tmp);
    snprintf(o2, sizeof o2, "%s/gloo", tmp);
    rank_run one;
    run_single(&one, &s, o1);
    static tc_store st;
    kb_store store;
    tc_store_init(&st, &store);
    gloo_rank g[2];
    pthread_t th[2];
    for (int k = 0; k < 2; k++) {
        memset(&g[k], 0, sizeof g[k]);
        g[k].store = &store;
        g[k].rank = k;
        g[k].run.spec = s;
        g[k].run.spec.sync_bn = 1;
        g[k].run.opts = (rw_train_opts){.out_dir = k == 0 ? o2 : NULL,
                                        .check_every = 2, .test_perturb_rank = -1};
        pthread_create(&th[k], NULL, gloo_main, &g[k]);
    }
    for (int k = 0; k < 2; k++)
        pthread_join(th[k], NULL);
    for (int k = 0; k < 2; k++)
        cr_assert_eq(g[k].run.rc, 0, "rank %d: %s", k, g[k].run.err);
    for (int k = 0; k < one.nsteps; k++)
        cr_expect(fabs(g[0].run.loss[k] - one.loss[k]) <= 1e-5 * (1 + fabs(one.loss[k])),
                  "step %d: gloo loss %.9g, 1-rank %.9g", k + 1, g[0].run.loss[k], one.loss[k]);
    snprintf(w1, sizeof w1, "%s/weights.safetensors", o1);
    snprintf(w2, sizeof w2, "%s/weights.safetensors", o2);
    double d = worst_tensor_diff(w2, w1, worst, sizeof worst);
    cr_expect_lt(d, 2e-2, "gloo: parameters differ by %.3e in %s", d, worst);
}

/* One rank has nothing to synchronize: sync_bn trains exactly as plain BN. */
Test(dist, sync_bn_on_one_rank_is_plain_bn)
{
    rw_spec s;
    tiny_spec(&s, 0);
    rank_run plain, sync;
    run_single(&plain, &s, NULL);
    s.sync_bn = 1;
    run_single(&sync, &s, NULL);
    cr_assert_eq(plain.nsteps, sync.nsteps);
    for (int k = 0; k < plain.nsteps; k++)
        cr_expect(plain.loss[k] == sync.loss[k], "step %d: %.9g vs %.9g", k + 1, plain.loss[k],
                  sync.loss[k]);
}

/* ------------------------------------------- the gradient beside the backward */

/* A communicator that only records what the data-parallel code starts. */
typedef struct rec_comm {
    kb_comm c;
    const float *grads;
    size_t np;
    int returned;           /* the backward pass has returned */
    int n, before;          /* buckets started; of them, before the return */
    size_t lo[256], len[256];
    int others;             /* starts on other buffers (the stop flag) */
} rec_comm;

static long rec_start(kb_comm *c, float *buf, size_t n, kb_reduce_op op, kb_wire wire, char *err,
                      size_t errlen)
{
    (void)op, (void)wire, (void)err, (void)errlen;
    rec_comm *r = (rec_comm *)c;
    if (buf < r->grads || buf >= r->grads + r->np || r->n == 256) {
        r->others++;
        return r->n + r->others;
    }
    r->lo[r->n] = (size_t)(buf - r->grads);
    r->len[r->n] = n;
    r->before += !r->returned;
    r->n++;
    return r->n + r->others;
}

static int rec_wait(kb_comm *c, long t, char *err, size_t errlen)
{
    (void)c, (void)t, (void)err, (void)errlen;
    return 0;
}

static int rec_allreduce(kb_comm *c, float *b, size_t n, kb_reduce_op op, char *err, size_t el)
{
    (void)c, (void)b, (void)n, (void)op, (void)err, (void)el;
    return 0;
}

/* One step's backward pass with buckets of 0.01 MB: with overlap every
 * bucket is started before the pass returns (the last by the stem's
 * gradient), tail first, the buckets tiling the buffer; without, none is,
 * and all leave after it. */
static void buckets_during_backward(int overlap, rec_comm *rc, size_t *np)
{
    rw_spec s;
    tiny_spec(&s, 0);
    char err[256];
    kb_backend *be = kb_cpu_create(1);
    rw_model_cfg mc;
    rw_model_cfg_from_spec(&s, &mc);
    rw_model *m = rw_model_create(be, &mc, s.seed, err, sizeof err);
    cr_assert_not_null(m, "%s", err);
    *np = rw_model_nparams(m);
    memset(rc, 0, sizeof *rc);
    rc->c = (kb_comm){.rank = 0, .world = 2, .name = "recorder", .allreduce = rec_allreduce,
                      .start = rec_start, .wait = rec_wait};
    rc->grads = rw_model_grads(m);
    rc->np = *np;
    rw_dist_cfg dc = {.overlap = overlap, .bucket_mb = 0.01};
    rw_dist *d = rw_dist_create(&rc->c, be, m, 16, s.model.proj_out, &dc, err, sizeof err);
    cr_assert_not_null(d, "%s", err);
    size_t nx = be->fmap_bytes(be, 32, 3, 16, 16);
    float *x = be->alloc(be, nx), *h = malloc(nx);
    for (size_t i = 0; i < nx / sizeof(float); i++)
        h[i] = (float)((i * 7919) % 255) / 127.0f - 1.0f;
    be->upload(be, x, h, nx);
    rw_dist_step_begin(d, 0, 0);
    rw_step_stats st;
    cr_assert_eq(rw_model_forward_backward(m, x, 16, 16, &st), 0);
    rc->returned = 1;
    int stop = 0, ckpt = 0;
    cr_assert_eq(rw_dist_grads(d, &stop, &ckpt, err, sizeof err), 0, "%s", err);
    rw_dist_free(d);
    be->free(be, x);
    free(h);
    rw_model_free(m);
    kb_destroy(be);
}

Test(dist, buckets_leave_during_the_backward_tail_first)
{
    rec_comm rc;
    size_t np;
    buckets_during_backward(1, &rc, &np);
    size_t per = (size_t)(0.01 * 1048576 / 4);
    cr_assert_eq((size_t)rc.n, (np + per - 1) / per, "%d buckets for %zu parameters", rc.n, np);
    cr_expect_eq(rc.before, rc.n, "only %d of %d buckets left during the backward pass",
                 rc.before, rc.n);
    size_t hi = np;
    for (int i = 0; i < rc.n; i++) {
        cr_expect_eq(rc.lo[i] + rc.len[i], hi, "bucket %d ends at %zu, not %zu", i,
                     rc.lo[i] + rc.len[i], hi);
        cr_expect_leq(rc.len[i], per);
        hi = rc.lo[i];
    }
    cr_expect_eq(hi, 0, "the buckets stop at %zu, not at the buffer's start", hi);
    cr_expect_eq(rc.others, 1, "the stop flag goes once, behind the buckets");

    buckets_during_backward(0, &rc, &np);
    cr_expect_eq(rc.before, 0, "without overlap %d buckets left during the backward pass",
                 rc.before);
    cr_expect_eq((size_t)rc.n, (np + per - 1) / per);
}

/* Two ranks with SyncBN (whose all-reduces queue up between the buckets):
 * the queued, overlapped job and the unqueued one (one call after the
 * backward) give the same bits, every step's loss and uniformity and every
 * weight: with two ranks each sum is a + b whatever the bucket. */
Test(dist, overlapped_buckets_train_bit_for_bit_as_one_call)
{
    rw_spec s;
    tiny_spec(&s, 0);
    s.dist.bucket_mb = 0.01;
    char o1[96], o2[96], w1[128], w2[128], worst[64] = "";
    snprintf(o1, sizeof o1, "%s/plain", tmp);
    snprintf(o2, sizeof o2, "%s/queued", tmp);
    rank_run plain[2], queued[2];
    run_world(plain, 2, &s, 1, o1, 20000);
    queue_ranks = 1;
    run_world(queued, 2, &s, 1, o2, 20000);
    queue_ranks = 0;
    for (int k = 0; k < 2; k++) {
        cr_assert_eq(plain[k].rc, 0, "plain rank %d: %s", k, plain[k].err);
        cr_assert_eq(queued[k].rc, 0, "queued rank %d: %s", k, queued[k].err);
    }
    cr_assert_eq(plain[0].nsteps, 6);
    cr_assert_eq(queued[0].nsteps, 6);
    for (int k = 0; k < 6; k++) {
        cr_expect(plain[0].loss[k] == queued[0].loss[k], "step %d loss: %.9g vs %.9g", k + 1,
                  plain[0].loss[k], queued[0].loss[k]);
        cr_expect(plain[0].uniform[k] == queued[0].uniform[k], "step %d uniformity: %.9g vs %.9g",
                  k + 1, plain[0].uniform[k], queued[0].uniform[k]);
    }
    snprintf(w1, sizeof w1, "%s/weights.safetensors", o1);
    snprintf(w2, sizeof w2, "%s/weights.safetensors", o2);
    double d = worst_tensor_diff(w2, w1, worst, sizeof worst);
    cr_expect_eq(d, 0.0, "weights differ by %.3e in %s", d, worst);
}

/* The global batch's statistics are read at the log windows, several
 * steps in two collectives: a window of 3 steps reports exactly the mean
 * of the 3 rows read one step at a time. */
Test(dist, windows_read_at_once_report_the_steps_read_one_by_one)
{
    rw_spec s;
    tiny_spec(&s, 1);
    rank_run each[2], win[2];
    queue_ranks = 1;
    run_world(each, 2, &s, 0, NULL, 20000);
    s.log.every_steps = 3;
    run_world(win, 2, &s, 0, NULL, 20000);
    queue_ranks = 0;
    cr_assert_eq(each[0].rc, 0, "%s", each[0].err);
    cr_assert_eq(win[0].rc, 0, "%s", win[0].err);
    cr_assert_eq(each[0].nsteps, 6);
    cr_assert_eq(win[0].nsteps, 2);
    for (int w = 0; w < 2; w++) {
        const double *l = each[0].loss + 3 * w, *u = each[0].uniform + 3 * w;
        double loss = (l[0] + l[1] + l[2]) / 3, uni = (u[0] + u[1] + u[2]) / 3;
        cr_expect(win[0].loss[w] == loss, "window %d: loss %.17g, steps' mean %.17g", w + 1,
                  win[0].loss[w], loss);
        cr_expect(win[0].uniform[w] == uni, "window %d: uniformity %.17g, steps' mean %.17g",
                  w + 1, win[0].uniform[w], uni);
    }
}

/* dist.grad_dtype bf16: the first step (no update yet) reports the fp32
 * job's loss; the weights then part from the fp32 job's by bf16's rounding
 * of the gradient, not more; a communicator without a bf16 all-reduce
 * beside the step is refused by name. */
Test(dist, bf16_gradients_on_the_wire)
{
    rw_spec s;
    tiny_spec(&s, 0);
    char o1[96], o2[96], w1[128], w2[128], worst[64] = "";
    snprintf(o1, sizeof o1, "%s/fp32", tmp);
    snprintf(o2, sizeof o2, "%s/bf16", tmp);
    rank_run f[2], b[2], refused[2];
    queue_ranks = 1;
    run_world(f, 2, &s, 1, o1, 20000);
    s.dist.grad_dtype = RW_GRAD_BF16;
    run_world(b, 2, &s, 1, o2, 20000);
    queue_ranks = 0;
    run_world(refused, 2, &s, 1, NULL, 3000);
    for (int k = 0; k < 2; k++) {
        cr_assert_eq(f[k].rc, 0, "fp32 rank %d: %s", k, f[k].err);
        cr_assert_eq(b[k].rc, 0, "bf16 rank %d: %s", k, b[k].err);
        cr_expect(refused[k].rc != 0 && strstr(refused[k].err, "dist.grad_dtype bf16"),
                  "unqueued rank %d: %s", k, refused[k].err);
    }
    cr_expect(f[0].loss[0] == b[0].loss[0], "first loss %.9g vs %.9g", f[0].loss[0],
              b[0].loss[0]);
    snprintf(w1, sizeof w1, "%s/weights.safetensors", o1);
    snprintf(w2, sizeof w2, "%s/weights.safetensors", o2);
    double d = worst_tensor_diff(w2, w1, worst, sizeof worst);
    printf("bf16 vs fp32 gradients on the wire: worst tensor difference %.2e (%s)\n", d, worst);
    for (int k = 0; k < f[0].nsteps; k++)
        printf("step %d: loss fp32 %.9g bf16 %.9g (%.2e)\n", k + 1, f[0].loss[k], b[0].loss[k],
               fabs(f[0].loss[k] - b[0].loss[k]) / fabs(f[0].loss[k]));
    /* bf16 keeps 8 bits: 2^-8 = 3.9e-3 relative per gradient; over the job's
     * 6 steps the losses moved by 2e-5 .. 6e-4 relative (fp32 rounding
     * alone: 1e-6), below half a bf16 step */
    for (int k = 1; k < f[0].nsteps; k++)
        cr_expect(fabs(f[0].loss[k] - b[0].loss[k]) <= 2e-3 * fabs(f[0].loss[k]),
                  "step %d: loss %.9g with bf16 gradients, %.9g with fp32", k + 1, b[0].loss[k],
                  f[0].loss[k]);
    cr_expect(f[0].loss[1] != b[0].loss[1], "bf16 on the wire changed nothing by step 2");
    cr_expect_gt(d, 0.0, "bf16 on the wire changed nothing");
}

/* Timed checkpoints (checkpoint.every_minutes) are rank 0's clock alone,
 * and the statistics are folded before each, which takes collectives: the
 * ranks must agree on the step, or rank 0 reads while rank 1 sends its
 * gradient. Here due at every step, between the log windows of 3: the job
 * reports exactly what it does without them. */
Test(dist, timed_checkpoints_are_agreed_by_every_rank)
{
    rw_spec s;
    tiny_spec(&s, 0);
    s.log.every_steps = 3;
    char o1[96], o2[96], w1[128], w2[128], worst[64] = "";
    snprintf(o1, sizeof o1, "%s/untimed", tmp);
    snprintf(o2, sizeof o2, "%s/timed", tmp);
    rank_run plain[2], timed[2];
    queue_ranks = 1;
    run_world(plain, 2, &s, 1, o1, 20000);
    s.checkpoint.every_minutes = 1e-6f;
    run_world(timed, 2, &s, 1, o2, 20000);
    queue_ranks = 0;
    for (int k = 0; k < 2; k++) {
        cr_assert_eq(plain[k].rc, 0, "untimed rank %d: %s", k, plain[k].err);
        cr_assert_eq(timed[k].rc, 0, "timed rank %d: %s", k, timed[k].err);
    }
    cr_assert_eq(timed[0].nsteps, plain[0].nsteps);
    for (int k = 0; k < plain[0].nsteps; k++)
        cr_expect(plain[0].loss[k] == timed[0].loss[k] &&
                      plain[0].uniform[k] == timed[0].uniform[k],
                  "window %d: loss %.9g / %.9g, uniformity %.9g / %.9g", k + 1, timed[0].loss[k],
                  plain[0].loss[k], timed[0].uniform[k], plain[0].uniform[k]);
    snprintf(w1, sizeof w1, "%s/weights.safetensors", o1);
    snprintf(w2, sizeof w2, "%s/weights.safetensors", o2);
    double d = worst_tensor_diff(w2, w1, worst, sizeof worst);
    cr_expect_eq(d, 0.0, "weights differ by %.3e in %s", d, worst);
}

/* The collapse alarm's stop is rank 0's to decide (it alone measures the
 * rank) and every rank's to obey: a rank threshold every epoch crosses
 * (rank_below 65536) stops the job after 2 epochs, which would otherwise
 * train 4 (6 steps an epoch: rank 0 reports 12 steps, not 24). A rank that
 * trained on would wait in the gradient's all-reduce for a peer that has
 * left, and fail at the collectives' timeout. */
Test(dist, the_collapse_alarm_stops_every_rank_at_rank_0s_epoch)
{
    rw_spec s;
    tiny_spec(&s, 1);
    s.optim.epochs = 4;
    s.monitor.collapse.action = RW_ALARM_STOP;
    s.monitor.collapse.uniform_above = 0;
    s.monitor.collapse.std_below = 0;
    s.monitor.collapse.rank_below = 65536;
    s.monitor.collapse.patience = 2;
    char out[96];
    snprintf(out, sizeof out, "%s/alarm", tmp);
    rank_run r[2];
    run_world(r, 2, &s, 0, out, 20000);
    for (int k = 0; k < 2; k++)
        cr_assert_eq(r[k].rc, 0, "rank %d: %s", k, r[k].err);
    cr_expect_eq(r[0].nsteps, 12, "trained %d steps", r[0].nsteps);
}
