/* CUDA graphs and device-resident data (kernels/backend.h's capture ops,
 * worker/step.c). Skips without a GPU; tools/device-check runs it on one,
 * kernels/cuda/emu/run.sh on the emulated GPU.
 *
 * - A replayed graph runs exactly the recorded ops on the same buffers, and
 *   per-step scalars read from backend memory take each step's value.
 * - What a capture cannot hold (a host wait, an allocation) fails the
 *   capture with the reason, and leaves the backend usable.
 * - A graph whose scratch moved is refused rather than run on freed memory.
 * - Training steps replayed from graphs give the SAME BITS as eager steps:
 *   parameters, teacher, Adam moments, BN running statistics and counters,
 *   and every step's metrics; also across an evaluation pass that grows the
 *   model's buffers (the stale graphs are captured again), and with the
 *   whole step in one graph, its stats kept on the device until read.
 * - Ops on the second queue inside a capture fork and join the graph.
 * - Views rendered on the device from the uint8 set are the CPU loader's
 *   views (same samples, same epoch, same draws) within float rounding. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"
#include "kernels/optim.h"
#include "worker/data_internal.h"
#include "worker/model.h"
#include "worker/step.h"

static kb_backend *gpu;
static char why[512];

static void setup(void)
{
    why[0] = 0;
    gpu = kb_cuda_create(0, why, sizeof why);
}

static void teardown(void) { kb_destroy(gpu); }

#define NEED_GPU()                                                                         \
    do {                                                                                   \
        if (!gpu)                                                                          \
            cr_skip_test("no GPU: %s", why);                                               \
    } while (0)

TestSuite(graph, .init = setup, .fini = teardown);

static float *fetch(const float *src, size_t n)
{
    float *h = malloc((n ? n : 1) * sizeof(float));
    gpu->download(gpu, h, src, n * sizeof(float));
    return h;
}

/* ---- the backend's capture ops ---- */

Test(graph, replay_runs_the_recorded_ops_with_scalars_from_memory)
{
    NEED_GPU();
    const size_t n = 1000;
    float *x = gpu->alloc(gpu, n * sizeof(float)), *y = gpu->alloc(gpu, n * sizeof(float));
    float *tau = gpu->alloc(gpu, 2 * sizeof(float));
    /* Adam with zero gradients and moments leaves x as it is */
    float *g = gpu->alloc(gpu, n * sizeof(float)), *am = gpu->alloc(gpu, n * sizeof(float));
    float *av = gpu->alloc(gpu, n * sizeof(float));
    kb_adam_consts *k = gpu->alloc(gpu, sizeof *k);
    cr_assert(x && y && tau && g && am && av && k);
    kb_adam_consts hk = kb_adam_consts_init(1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, 1);
    gpu->upload(gpu, k, &hk, sizeof hk);
    gpu->fill(gpu, y, 1.0f, n);
    /* x = 2; y *= 3; y = tau y + (1 - tau) x */
    cr_assert_eq(gpu->capture_begin(gpu), 0);
    gpu->fill(gpu, x, 2.0f, n);
    gpu->scale(gpu, y, 3.0f, n);
    kb_update u = {.params = x, .grads = g, .adam_m = am, .adam_v = av, .n = n, .k = k,
                   .teacher = y, .nteacher = n, .tau_omt = tau};
    gpu->update(gpu, &u);
    char err[200];
    kb_graph *gr = gpu->capture_end(gpu, err, sizeof err);
    cr_assert_not_null(gr, "%s", err);
    float *h = fetch(y, n);
    cr_expect_eq(h[0], 1.0f, "a capture must not run its ops (y = %g)", h[0]);
    free(h);
    double want = 1.0;
    const float taus[3] = {0.5f, 0.25f, 0.9f};
    for (int l = 0; l < 3; l++) {
        float t[2];
        kb_ema_consts_init(taus[l], t);
        gpu->upload(gpu, tau, t, sizeof t);
        cr_assert_eq(gpu->graph_launch(gpu, gr), 0);
        want = (double)t[0] * (3.0 * want) + (double)t[1] * 2.0;
        h = fetch(y, n);
        for (size_t i = 0; i < n; i += 111)
            cr_expect(fabs(h[i] - want) <= 1e-5 * fabs(want), "launch %d: y[%zu] = %.7g, want %.7g",
                      l, i, h[i], want);
        free(h);
    }
    gpu->graph_free(gpu, gr);
    void *bufs[] = {x, y, tau, g, am, av, k};
    for (int i = 0; i < 7; i++)
        gpu->free(gpu, bufs[i]);
}

/* What runs on the second queue is recorded in the graph, forked from and
 * joined to the main queue: a replay runs both sides, and what the main
 * queue does after the join sees the side's writes. */
Test(graph, the_second_queue_forks_and_joins_inside_a_capture)
{
    NEED_GPU();
    if (!gpu->side_begin)
        cr_skip_test("this backend has no second queue");
    const size_t n = 4096;
    float *a = gpu->alloc(gpu, n * sizeof(float)), *b = gpu->alloc(gpu, n * sizeof(float));
    float *tau = gpu->alloc(gpu, 2 * sizeof(float)), *g = gpu->alloc(gpu, n * sizeof(float));
    float *am = gpu->alloc(gpu, n * sizeof(float)), *av = gpu->alloc(gpu, n * sizeof(float));
    kb_adam_consts *k = gpu->alloc(gpu, sizeof *k);
    cr_assert(a && b && tau && g && am && av && k);
    kb_adam_consts hk = kb_adam_consts_init(1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, 1);
    float t[2];
    kb_ema_consts_init(0.5f, t);
    gpu->upload(gpu, k, &hk, sizeof hk);
    gpu->upload(gpu, tau, t, sizeof t);
    cr_assert_eq(gpu->capture_begin(gpu), 0);
    gpu->side_begin(gpu);
    gpu->fill(gpu, a, 4.0f, n); /* side: a = 4 */
    gpu->side_end(gpu);
    gpu->fill(gpu, b, 2.0f, n); /* main, beside it: b = 2 */
    gpu->side_join(gpu);
    /* after the join: b = (b + a) / 2 = 3 (the EMA of b toward a) */
    kb_update u = {.params = a, .grads = g, .adam_m = am, .adam_v = av, .n = n, .k = k,
                   .teacher = b, .nteacher = n, .tau_omt = tau};
    gpu->update(gpu, &u);
    char err[200];
    kb_graph *gr = gpu->capture_end(gpu, err, sizeof err);
    cr_assert_not_null(gr, "%s", err);
    for (int rep = 0; rep < 2; rep++) {
        cr_assert_eq(gpu->graph_launch(gpu, gr), 0);
        float *h = fetch(b, n);
        for (size_t i = 0; i < n; i += 97)
            cr_expect_eq(h[i], 3.0f, "launch %d: b[%zu] = %g", rep, i, h[i]);
        free(h);
    }
    gpu->graph_free(gpu, gr);
    void *bufs[] = {a, b, tau, g, am, av, k};
    for (int i = 0; i < 7; i++)
        gpu->free(gpu, bufs[i]);
}

Test(graph, forbidden_calls_fail_the_capture_and_leave_the_backend_usable)
{
    NEED_GPU();
    float *x = gpu->alloc(gpu, 64 * sizeof(float));
    float h[64];
    static const char *const what[] = {"download", "sync", "alloc", "upload"};
    for (int k = 0; k < 4; k++) {
        cr_assert_eq(gpu->capture_begin(gpu), 0);
        gpu->fill(gpu, x, 5.0f, 64);
        void *p = NULL;
        switch (k) {
        case 0: gpu->download(gpu, h, x, sizeof h); break;
        case 1: gpu->sync(gpu); break;
        case 2: p = gpu->alloc(gpu, 1 << 20); break;
        default: gpu->upload(gpu, x, h, sizeof h); break;
        }
        cr_expect_null(p);
        char err[200] = "";
        kb_graph *g = gpu->capture_end(gpu, err, sizeof err);
        cr_expect_null(g, "a capture with %s inside must fail", what[k]);
        cr_expect(strstr(err, what[k]) != NULL, "the reason names %s: '%s'", what[k], err);
        if (g)
            gpu->graph_free(gpu, g);
        /* nothing recorded ran; the backend works as before */
        gpu->fill(gpu, x, (float)k, 64);
        gpu->download(gpu, h, x, sizeof h);
        cr_expect_eq(h[63], (float)k);
    }
    gpu->free(gpu, x);
}

Test(graph, a_graph_whose_scratch_moved_is_refused)
{
    NEED_GPU();
    /* softmax_xent keeps 2 doubles per row in the backend's scratch. */
    int N = 4, K = 2;
    float *l = gpu->alloc(gpu, (size_t)N * K * sizeof(float)), *out = gpu->alloc(gpu, 8);
    int32_t *lab = gpu->alloc(gpu, (size_t)N * sizeof(int32_t));
    gpu->softmax_xent(gpu, l, lab, N, K, NULL, out); /* scratch in place */
    cr_assert_eq(gpu->capture_begin(gpu), 0);
    gpu->softmax_xent(gpu, l, lab, N, K, NULL, out);
    char err[200];
    kb_graph *g = gpu->capture_end(gpu, err, sizeof err);
    cr_assert_not_null(g, "%s", err);
    cr_expect_eq(gpu->graph_launch(gpu, g), 0);
    /* 600k rows need more than the first scratch block (8 MiB) */
    int NB = 600000;
    float *lb = gpu->alloc(gpu, (size_t)NB * K * sizeof(float));
    int32_t *labb = gpu->alloc(gpu, (size_t)NB * sizeof(int32_t));
    gpu->softmax_xent(gpu, lb, labb, NB, K, NULL, out);
    float o[2];
    gpu->download(gpu, o, out, sizeof o);
    cr_expect(fabsf(o[0] - logf(2.0f)) < 1e-5f, "uniform logits: loss %g, want log 2", o[0]);
    cr_expect_eq(gpu->graph_launch(gpu, g), -1, "the graph still points at the old scratch");
    gpu->graph_free(gpu, g);
    void *bufs[] = {l, out, lab, lb, labb};
    for (int i = 0; i < 5; i++)
        gpu->free(gpu, bufs[i]);
}

/* ---- training steps ---- */

#define NIMG 48
#define BATCH 8
#define SIZE 16

static rw_dataset make_set(void)
{
    rw_dataset ds;
    cr_assert_eq(rw_dataset_noise(NIMG, 12345, &ds), 0);
    return ds;
}

static int supervised; /* make_model builds the supervised baseline */
static int whole;      /* train takes each step as one (rw_stepper_step) */
/* make_model builds a predictor study (docs/predictor.md): 1 DirectPred
 * (W set every 2 steps), 2 a frozen predictor, 3 the predictor at 3x lr */
static int study;

static rw_model *make_model(void)
{
    rw_model_cfg c = {
        .stem = RW_STEM_CIFAR, .width = 4, .proj_hidden = 16, .proj_out = 8,
        .predictor = RW_PRED_MLP_BN, .pred_hidden = 16,
        .loss = {.kind = KB_LOSS_UNIFIED, .alpha = 1.0f, .beta = -1.0f},
    };
    if (supervised) {
        c.predictor = RW_PRED_NONE;
        c.loss.beta = 0;
        c.classes = 10;
    }
    if (study == 1) {
        c.predictor = RW_PRED_DIRECTPRED;
        c.directpred.every = 2;
        c.directpred.momentum = 0.9f;
        c.directpred.eps = 0.1f;
    }
    c.pred_frozen = study == 2;
    char err[256];
    rw_model *m = rw_model_create(gpu, &c, 7, err, sizeof err);
    cr_assert_not_null(m, "%s", err);
    if (study == 3)
        cr_assert_eq(rw_model_set_predictor_lr_mult(m, 3.0f, err, sizeof err), 0, "%s", err);
    return m;
}

static char notices[1024];

static void on_notice(void *ud, const char *line)
{
    (void)ud;
    size_t n = strlen(notices);
    snprintf(notices + n, sizeof notices - n, "%s\n", line);
}

static rw_stepper *make_stepper(rw_model *m, const rw_dataset *ds, int host_data, int no_graphs)
{
    rw_stepper_cfg c = {
        .m = m, .ds = ds, .batch = BATCH, .shard_world = 1, .size = SIZE,
        .augment = RW_AUG_BYOL, .mean = {0.5f, 0.5f, 0.5f}, .std = {0.25f, 0.25f, 0.25f},
        .seed = 99, .loader_threads = 1, .host_data = host_data, .no_graphs = no_graphs,
        .notice = on_notice,
    };
    char err[256];
    rw_stepper *s = rw_stepper_create(&c, err, sizeof err);
    cr_assert_not_null(s, "%s", err);
    return s;
}

typedef struct trace {
    rw_step_stats st[16];
    int nst;
    float *buf[5];
    size_t len[5];
    long nbt[2][64];
    rw_stepper_counts counts;
} trace;

/* `steps` steps over epochs of NIMG/BATCH batches; with `eval_at` > 0 an
 * evaluation pass on 3x the batch runs after that step (it grows the model's
 * activation buffers). */
static void train(int host_data, int no_graphs, int steps, int eval_at, trace *t)
{
    rw_dataset ds = make_set();
    rw_model *m = make_model();
    rw_stepper *s = make_stepper(m, &ds, host_data, no_graphs);
    void *ev = NULL;
    float *feat = NULL;
    if (eval_at > 0) {
        size_t n = (size_t)3 * BATCH * 3 * SIZE * SIZE;
        float *h = malloc(n * sizeof(float));
        for (size_t i = 0; i < n; i++)
            h[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
        ev = gpu->alloc(gpu, gpu->fmap_bytes(gpu, 3 * BATCH, 3, SIZE, SIZE));
        feat = gpu->alloc(gpu, (size_t)3 * BATCH * rw_model_feat_dim(m) * sizeof(float));
        gpu->fmap_upload(gpu, ev, h, 3 * BATCH, 3, SIZE, SIZE);
        free(h);
    }
    memset(t, 0, sizeof *t);
    int epoch = 0, taken = 0;
    rw_stepper_seek(s, 0, 0);
    while (taken < steps) {
        float tau = 0.9f + 0.01f * taken;
        int r = whole ? rw_stepper_step(s, 1, 1e-3f, 1e-4f, tau)
                      : rw_stepper_forward_backward(s, &t->st[t->nst]);
        if (r == 1) {
            rw_stepper_seek(s, ++epoch, 0);
            continue;
        }
        cr_assert_eq(r, 0, "step %d: %s", taken + 1, rw_model_error(m));
        if (!whole)
            cr_assert_eq(rw_stepper_update(s, 1e-3f, 1e-4f, tau), 0, "%s", rw_model_error(m));
        t->nst += !whole;
        if (++taken == eval_at)
            cr_assert_eq(rw_model_features(m, ev, 3 * BATCH, SIZE, 0, feat), 0);
        if (whole && taken == 3) /* a read midway: the rest stay queued */
            t->nst += (int)rw_stepper_read(s, t->st + t->nst, 16);
    }
    if (whole) {
        t->nst += (int)rw_stepper_read(s, t->st + t->nst, 16);
        cr_expect_eq(t->nst, steps, "every step's stats read once");
        cr_expect_eq(rw_stepper_unread(s), 0);
    }
    rw_stepper_counts_get(s, &t->counts);
    float *src[5] = {rw_model_params(m), rw_model_teacher(m), rw_model_adam_m(m),
                     rw_model_adam_v(m), rw_model_state(m)};
    size_t len[5] = {rw_model_nparams(m), rw_model_nteacher(m), rw_model_nparams(m),
                     rw_model_nparams(m), rw_model_nstate(m)};
    for (int k = 0; k < 5; k++) {
        t->buf[k] = fetch(src[k], len[k]);
        t->len[k] = len[k];
    }
    for (int k = 0; k < 2; k++)
        memcpy(t->nbt[k], rw_model_bn_counts(m, k), (size_t)rw_model_nbn(m, k) * sizeof(long));
    if (ev) {
        gpu->free(gpu, ev);
        gpu->free(gpu, feat);
    }
    rw_stepper_free(s);
    rw_model_free(m);
    rw_dataset_free(&ds);
}

static void trace_free(trace *t)
{
    for (int k = 0; k < 5; k++)
        free(t->buf[k]);
}

static void expect_same_bits(const trace *a, const trace *b)
{
    static const char *const names[5] = {"params", "teacher", "adam m", "adam v", "BN state"};
    for (int i = 0; i < a->nst; i++)
        cr_expect(memcmp(&a->st[i], &b->st[i], sizeof a->st[i]) == 0,
                  "step %d metrics differ: loss %.9g vs %.9g", i + 1, a->st[i].loss,
                  b->st[i].loss);
    for (int k = 0; k < 5; k++) {
        size_t diff = 0, first = 0;
        for (size_t i = 0; i < a->len[k]; i++)
            if (memcmp(&a->buf[k][i], &b->buf[k][i], sizeof(float)) != 0 && !diff++)
                first = i;
        cr_expect_eq(diff, 0, "%s: %zu of %zu floats differ (first at %zu: %.9g vs %.9g)",
                     names[k], diff, a->len[k], first, a->buf[k][first], b->buf[k][first]);
    }
    cr_expect(memcmp(a->nbt, b->nbt, sizeof a->nbt) == 0, "BN num_batches_tracked differ");
}

Test(graph, replayed_steps_give_the_bits_of_eager_steps)
{
    NEED_GPU();
    trace eager, graphs;
    /* 8 steps cross an epoch boundary (6 batches per epoch) */
    train(0, 1, 8, 0, &eager);
    train(0, 0, 8, 0, &graphs);
    printf("graph: eager run %ld eager steps; graph run %ld eager, %ld captured, %ld replayed\n",
           eager.counts.eager, graphs.counts.eager, graphs.counts.captured,
           graphs.counts.replayed);
    cr_expect_eq(eager.counts.captured + eager.counts.replayed, 0);
    cr_expect_eq(graphs.counts.eager, 2, "two warm-up steps");
    cr_expect_eq(graphs.counts.captured, 1);
    cr_expect_eq(graphs.counts.replayed, 5);
    expect_same_bits(&eager, &graphs);
    cr_expect_eq(eager.nbt[0][0], 16, "two views per step count for BN");
    trace_free(&eager);
    trace_free(&graphs);
}

/* The whole step as one graph (views, forward, backward, the stats into the
 * device's ring, update) replays the bits of eager steps taken in halves. */
Test(graph, whole_step_graphs_give_the_bits_of_eager_halves)
{
    NEED_GPU();
    trace eager, graphs;
    train(0, 1, 8, 0, &eager);
    whole = 1;
    train(0, 0, 8, 0, &graphs);
    whole = 0;
    cr_expect_eq(graphs.counts.eager, 2, "two warm-up steps");
    cr_expect_eq(graphs.counts.captured, 1);
    cr_expect_eq(graphs.counts.replayed, 5);
    expect_same_bits(&eager, &graphs);
    trace_free(&eager);
    trace_free(&graphs);
}

/* The predictor studies split the update (the predictor, the buffer's
 * tail, with a mirror of its own) and DirectPred sets W from the host
 * between two launches: graphs replay eager steps' bits all the same, in
 * halves and whole, in bf16 (where the linear weights have mirrors). */
Test(graph, predictor_studies_replay_the_bits_of_eager_steps)
{
    NEED_GPU();
    static const char *const names[] = {"", "directpred", "frozen", "lr x3"};
    for (study = 1; study <= 3; study++)
        for (whole = 0; whole < 2; whole++) {
            trace eager, graphs;
            cr_assert_eq(gpu->set_precision(gpu, KB_PREC_BF16), KB_PREC_BF16);
            train(0, 1, 8, 0, &eager);
            train(0, 0, 8, 0, &graphs);
            cr_expect_eq(graphs.counts.replayed, 5, "%s: replayed %ld", names[study],
                         graphs.counts.replayed);
            printf("graph: %s%s: %ld eager, %ld captured, %ld replayed\n", names[study],
                   whole ? " (whole steps)" : "", graphs.counts.eager, graphs.counts.captured,
                   graphs.counts.replayed);
            expect_same_bits(&eager, &graphs);
            trace_free(&eager);
            trace_free(&graphs);
        }
    study = whole = 0;
    gpu->set_precision(gpu, KB_PREC_TF32);
}

/* ... and their mirrors stay in step: the split update writes the
 * predictor's own, DirectPred's W upload refreshes it. After a few bf16
 * steps (where linear weights have mirrors) a forward pass gives the loss
 * it gives once every mirror is written afresh from the parameters. */
Test(graph, predictor_studies_keep_their_mirrors_in_step)
{
    NEED_GPU();
    static const char *const names[] = {"", "directpred", "frozen", "lr x3"};
    cr_assert_eq(gpu->set_precision(gpu, KB_PREC_BF16), KB_PREC_BF16);
    for (study = 1; study <= 3; study++) {
        rw_dataset ds = make_set();
        rw_model *m = make_model();
        rw_stepper *s = make_stepper(m, &ds, 0, 1);
        rw_stepper_seek(s, 0, 0);
        for (int k = 0; k < 4; k++)
            cr_assert_eq(rw_stepper_step(s, 1, 1e-2f, 0, 0.9f), 0, "%s", rw_model_error(m));
        rw_step_stats kept, fresh;
        cr_assert_eq(rw_model_forward_backward(m, rw_stepper_views(s), BATCH, SIZE, &kept), 0);
        rw_model_params_written(m);
        cr_assert_eq(rw_model_forward_backward(m, rw_stepper_views(s), BATCH, SIZE, &fresh), 0);
        cr_expect(kept.loss == fresh.loss, "%s: loss %.9g with the kept mirrors, %.9g fresh",
                  names[study], kept.loss, fresh.loss);
        rw_stepper_free(s);
        rw_model_free(m);
        rw_dataset_free(&ds);
    }
    study = 0;
    gpu->set_precision(gpu, KB_PREC_TF32);
}

Test(graph, an_evaluation_pass_that_moves_buffers_forces_a_new_capture)
{
    NEED_GPU();
    trace eager, graphs;
    train(0, 1, 7, 4, &eager);
    train(0, 0, 7, 4, &graphs);
    printf("graph: with an eval after step 4: %ld eager, %ld captured (%ld again), %ld replayed\n",
           graphs.counts.eager, graphs.counts.captured, graphs.counts.recaptures,
           graphs.counts.replayed);
    /* steps 1-2 eager, 3 captured, 4 replayed; eval; 5 eager, 6 captured, 7 replayed */
    cr_expect_eq(graphs.counts.recaptures, 1);
    cr_expect_eq(graphs.counts.eager, 3);
    cr_expect_eq(graphs.counts.replayed, 2);
    expect_same_bits(&eager, &graphs);
    trace_free(&eager);
    trace_free(&graphs);
}

Test(graph, device_views_are_the_loaders_views)
{
    NEED_GPU();
    rw_dataset ds = make_set();
    rw_model *m = make_model();
    rw_stepper *s = make_stepper(m, &ds, 0, 1);
    const size_t per = (size_t)3 * SIZE * SIZE;
    float *want = malloc(per * sizeof(float)), *scratch = malloc(RW_AUG_SCRATCH(SIZE) * sizeof(float));
    int32_t perm[NIMG];
    const float mean[3] = {0.5f, 0.5f, 0.5f}, std[3] = {0.25f, 0.25f, 0.25f};
    /* epoch 1, batch 2: a position the loader reaches by seeking */
    rw_stepper_seek(s, 1, 2);
    rw_step_stats st;
    cr_assert_eq(rw_stepper_forward_backward(s, &st), 0);
    rw_epoch_perm(99, 1, NIMG, perm);
    double worst = 0;
    float *views = malloc(2 * BATCH * per * sizeof(float));
    gpu->fmap_download(gpu, views, rw_stepper_views(s), 2 * BATCH, 3, SIZE, SIZE);
    for (int v = 0; v < 2; v++) {
        const float *got = views + v * BATCH * per;
        for (int k = 0; k < BATCH; k++) {
            rw_aug_view(&ds, perm[2 * BATCH + k], 99, 1, v, RW_AUG_BYOL, SIZE, mean, std, want,
                        scratch);
            for (size_t i = 0; i < per; i++) {
                double d = fabs((double)got[k * per + i] - want[i]);
                if (d > worst)
                    worst = d;
            }
        }
    }
    free(views);
    printf("graph: device views vs the CPU renderer: worst |d| %.2e\n", worst);
    cr_expect(worst <= 1e-4, "device views differ from the loader's by %.3e", worst);
    free(want);
    free(scratch);
    rw_stepper_free(s);
    rw_model_free(m);
    rw_dataset_free(&ds);
}


Test(graph, host_and_device_views_train_alike)
{
    NEED_GPU();
    /* fp32 math: the views differ by rounding (<= 1e-4), which TF32's
     * 10-bit products turn into differences near 1e-3 that training grows
     * (on an H200, step 4's losses were 1.4% apart); in fp32 only the
     * views' own rounding is left. The backend's default, TF32, after. */
    gpu->set_precision(gpu, KB_PREC_FP32);
    trace host, dev;
    train(1, 0, 4, 0, &host);
    train(0, 0, 4, 0, &dev);
    gpu->set_precision(gpu, KB_PREC_TF32);
    for (int i = 0; i < 4; i++) {
        double d = fabs(host.st[i].loss - dev.st[i].loss);
        printf("graph: step %d loss host views %.7f, device views %.7f\n", i + 1,
               host.st[i].loss, dev.st[i].loss);
        cr_expect(d <= 1e-4 * fabs(host.st[i].loss) + 1e-6, "step %d: loss %.7g vs %.7g", i + 1,
                  host.st[i].loss, dev.st[i].loss);
    }
    cr_expect_eq(dev.counts.replayed, 1, "graphs with host data too");
    cr_expect_eq(host.counts.replayed, 1);
    trace_free(&host);
    trace_free(&dev);
}

/* The supervised baseline's labels: uploaded with each step's keys
 * (gathered on the host from the epoch's order) or with the loader's
 * views; a replay reads each step's, and both ways see the same ones. */
Test(graph, supervised_steps_read_each_steps_labels)
{
    NEED_GPU();
    supervised = 1;
    gpu->set_precision(gpu, KB_PREC_FP32); /* as above */
    trace eager, graphs, host;
    train(0, 1, 8, 0, &eager);
    train(0, 0, 8, 0, &graphs);
    train(1, 0, 8, 0, &host);
    gpu->set_precision(gpu, KB_PREC_TF32);
    supervised = 0;
    cr_expect_eq(graphs.counts.replayed, 5);
    expect_same_bits(&eager, &graphs);
    for (int i = 0; i < 8; i++)
        cr_expect(fabs(host.st[i].loss - graphs.st[i].loss) <= 1e-4 * fabs(host.st[i].loss),
                  "step %d: cross-entropy %.7g with host views, %.7g with device views", i + 1,
                  host.st[i].loss, graphs.st[i].loss);
    trace_free(&eager);
    trace_free(&graphs);
    trace_free(&host);
}

/* A library call that cannot be captured (the emulator's cuBLAS refuses
 * with EMU_CUBLAS_NO_CAPTURE=1; a real cuBLAS ignores the variable and is
 * captured) must fail the capture, not the process: the job goes on
 * eagerly, with a notice naming the call, and the same bits. */
Test(graph, a_capture_a_library_refuses_falls_back_to_eager_steps)
{
    NEED_GPU();
    trace eager, tried;
    train(0, 1, 5, 0, &eager);
    notices[0] = 0;
    setenv("EMU_CUBLAS_NO_CAPTURE", "1", 1);
    train(0, 0, 5, 0, &tried);
    unsetenv("EMU_CUBLAS_NO_CAPTURE");
    printf("graph: capture refused by the library: %ld eager, %ld captured; notice: %s",
           tried.counts.eager, tried.counts.captured, notices[0] ? notices : "(none)\n");
    if (tried.counts.captured == 0) {
        cr_expect_eq(tried.counts.eager, 5);
        cr_expect(strstr(notices, "CUDA graphs off") && strstr(notices, "cublas"),
                  "the notice names the refused call: %s", notices);
    }
    expect_same_bits(&eager, &tried);
    trace_free(&eager);
    trace_free(&tried);
}
