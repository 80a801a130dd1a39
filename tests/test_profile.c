/* The op profiler (kernels/profile.h).
 *
 * - It only watches: a step through the wrapper gives the same bits as the
 *   same step on the bare backend (parameters, teacher, Adam moments).
 * - Its counts are the model's: a ResNet-18 step runs 4 encoder forwards
 *   (2 views online, 2 teacher) of 20 convolutions each, 2 weight
 *   gradients of each, and 2 data gradients of each but the first; the
 *   forward FLOPs equal a hand count over ResNet-18's convolution shapes.
 * - Its times add up: each step's span (first stamp to last) is the sum of
 *   the ops' times and the gaps between them, as the intervals tile it.
 * - Off, it records nothing; a backend without stamps is refused.
 * The CUDA test (skips without a GPU; the emulator runs it) also counts the
 * device-rendered views: 2 per step. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"
#include "kernels/profile.h"
#include "worker/data.h"
#include "worker/model.h"
#include "worker/step.h"

enum { N = 4, S = 16, WIDTH = 8, STEPS = 2 };

static rw_model_cfg small_cfg(void)
{
    rw_model_cfg mc = {
        .stem = RW_STEM_CIFAR, .width = WIDTH, .proj_hidden = 32, .proj_out = 16,
        .predictor = RW_PRED_MLP, .pred_hidden = 32,
        .loss = {.kind = KB_LOSS_UNIFIED, .alpha = 1, .beta = -1},
    };
    return mc;
}

static float *inputs(void)
{
    size_t n = (size_t)N * 3 * S * S;
    float *h = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        h[i] = (float)((i * 2654435761u % 1000) / 500.0 - 1.0);
    return h;
}

static float *fetch(kb_backend *be, const float *src, size_t n)
{
    float *h = malloc(n * sizeof(float));
    be->download(be, h, src, n * sizeof(float));
    return h;
}

/* STEPS steps on fixed inputs; profiled when `prof` is the model's backend. */
static rw_model *run_steps(kb_backend *be, kb_backend *prof)
{
    char err[256];
    rw_model_cfg mc = small_cfg();
    rw_model *m = rw_model_create(be, &mc, 7, err, sizeof err);
    cr_assert(m, "%s", err);
    size_t n = (size_t)N * 3 * S * S;
    float *h = inputs();
    size_t half = be->fmap_bytes(be, N, 3, S, S);
    char *x = be->alloc(be, 2 * half); /* both views, one batch */
    be->fmap_upload(be, x, h, N, 3, S, S);
    for (size_t i = 0; i < n; i++)
        h[i] = -h[i];
    be->fmap_upload(be, x + half, h, N, 3, S, S);
    if (prof)
        kb_profile_enable(prof, 1);
    for (int s = 0; s < STEPS; s++) {
        rw_step_stats st;
        cr_assert_eq(rw_model_forward_backward(m, x, N, S, &st), 0);
        rw_model_update(m, 1e-3f, 0, 0.99f);
        if (prof)
            kb_profile_step_end(prof);
    }
    if (prof)
        kb_profile_enable(prof, 0);
    be->free(be, x);
    free(h);
    return m;
}

static void expect_same_model(rw_model *a, rw_model *b)
{
    kb_backend *ba = rw_model_backend(a), *bb = rw_model_backend(b);
    struct {
        float *(*get)(rw_model *);
        size_t n;
        const char *what;
    } bufs[] = {
        {rw_model_params, rw_model_nparams(a), "parameters"},
        {rw_model_teacher, rw_model_nteacher(a), "teacher"},
        {rw_model_adam_m, rw_model_nparams(a), "adam m"},
        {rw_model_adam_v, rw_model_nparams(a), "adam v"},
    };
    for (size_t k = 0; k < sizeof bufs / sizeof bufs[0]; k++) {
        float *x = fetch(ba, bufs[k].get(a), bufs[k].n), *y = fetch(bb, bufs[k].get(b), bufs[k].n);
        cr_expect(memcmp(x, y, bufs[k].n * sizeof(float)) == 0,
                  "%s differ with the profiler in between", bufs[k].what);
        free(x);
        free(y);
    }
}

static const kb_profile_row *row(const kb_profile_totals *t, const char *op)
{
    for (int i = 0; i < t->nrows; i++)
        if (strcmp(t->rows[i].op, op) == 0)
            return &t->rows[i];
    return NULL;
}

/* 2 K C R S P Q per image, over ResNet-18's convolutions (CIFAR stem:
 * 3x3 stride-1 first conv, no max pool), counted from the architecture. */
static double resnet18_cifar_conv_flop(int width, int size)
{
    double f = 0;
    int C = 3, H = size;
    f += 2.0 * width * C * 9 * H * H; /* conv1 */
    C = width;
    for (int stage = 0; stage < 4; stage++) {
        int K = width << stage, stride = stage ? 2 : 1;
        int P = H / stride;
        f += 2.0 * K * C * 9 * P * P;     /* block 1, conv a */
        f += 2.0 * K * K * 9 * P * P;     /* block 1, conv b */
        if (stride != 1 || C != K)
            f += 2.0 * K * C * 1 * P * P; /* downsample */
        f += 2 * (2.0 * K * K * 9 * P * P); /* block 2 */
        C = K;
        H = P;
    }
    return f;
}

static void expect_counts_and_identities(kb_backend *prof)
{
    kb_profile_totals t;
    kb_profile_totals_get(prof, &t);
    cr_assert_eq(t.steps, STEPS);
    const kb_profile_row *fwd = row(&t, "conv forward"), *bw = row(&t, "conv backward weight"),
                         *bd = row(&t, "conv backward data");
    cr_assert(fwd && bw && bd, "convolutions not recorded");
    /* both views in one batch: online and teacher forward, one backward */
    cr_expect_eq(fwd->calls, 40L * STEPS, "conv forward: %ld calls", fwd->calls);
    cr_expect_eq(bw->calls, 20L * STEPS, "conv backward weight: %ld calls", bw->calls);
    cr_expect_eq(bd->calls, 19L * STEPS, "conv backward data: %ld calls", bd->calls);
    double want = 4.0 * N * STEPS * resnet18_cifar_conv_flop(WIDTH, S);
    cr_expect(fabs(fwd->flop - want) <= 1e-9 * want, "conv forward FLOPs %.0f, hand count %.0f",
              fwd->flop, want);
    /* weight and data gradients: same products as the forward, per pass */
    cr_expect(fabs(bw->flop - want / 2) <= 1e-9 * want, "conv backward weight FLOPs %.0f",
              bw->flop);
    const kb_profile_row *up = row(&t, "update (adam, ema)");
    cr_assert(up);
    cr_expect_eq(up->calls, (long)STEPS);
    double sum = 0;
    for (int i = 0; i < t.nrows; i++) {
        cr_expect(t.rows[i].ms >= 0, "%s: negative time", t.rows[i].op);
        sum += t.rows[i].ms;
    }
    cr_expect(fabs(sum - t.ops_ms) <= 1e-9 * (1 + sum));
    cr_expect(t.gap_ms >= 0);
    cr_expect(fabs(t.span_ms - (t.ops_ms + t.gap_ms)) <= 1e-6 * (1 + t.span_ms),
              "span %.6f ms != ops %.6f + gaps %.6f", t.span_ms, t.ops_ms, t.gap_ms);
    cr_expect(t.span_ms > 0);
}

Test(profile, cpu_step_same_bits_counts_and_times_add_up)
{
    char err[256];
    kb_backend *plain = kb_cpu_create(1);
    kb_backend *prof = kb_profile_create(kb_cpu_create(1), err, sizeof err);
    cr_assert(plain && prof, "%s", err);
    cr_expect_str_eq(prof->name, "cpu");
    cr_expect_null(prof->capture_begin, "a profiled backend must run op by op");
    rw_model *a = run_steps(plain, NULL), *b = run_steps(prof, prof);
    expect_same_model(a, b);
    expect_counts_and_identities(prof);

    /* the table prints every recorded kind */
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    kb_profile_print(prof, f);
    fclose(f);
    cr_expect(strstr(buf, "conv forward") && strstr(buf, "step span") && strstr(buf, "adam"),
              "%s", buf);
    free(buf);
    rw_model_free(a);
    rw_model_free(b);
    kb_destroy(plain);
    kb_destroy(prof);
}

Test(profile, off_records_nothing)
{
    char err[256];
    kb_backend *prof = kb_profile_create(kb_cpu_create(1), err, sizeof err);
    cr_assert(prof, "%s", err);
    float *x = prof->alloc(prof, 64 * sizeof(float));
    prof->fill(prof, x, 1.0f, 64);
    kb_profile_step_end(prof);
    kb_profile_totals t;
    kb_profile_totals_get(prof, &t);
    cr_expect_eq(t.steps, 0);
    cr_expect_eq(t.nrows, 0);
    kb_profile_enable(prof, 1);
    prof->relu_forward(prof, x, x, 64);
    prof->relu_forward(prof, x, x, 64);
    kb_profile_step_end(prof);
    kb_profile_totals_get(prof, &t);
    cr_expect_eq(t.steps, 1);
    cr_assert_eq(t.nrows, 1);
    cr_expect_str_eq(t.rows[0].op, "relu forward");
    cr_expect_eq(t.rows[0].calls, 2);
    cr_expect(fabs(t.rows[0].bytes - 2 * 8.0 * 64) < 1e-9, "relu bytes %g", t.rows[0].bytes);
    prof->free(prof, x);
    kb_destroy(prof);
}

Test(profile, backend_without_stamps_refused)
{
    kb_backend bare = {.name = "bare"};
    char err[256] = "";
    cr_expect_null(kb_profile_create(&bare, err, sizeof err));
    cr_expect(strstr(err, "bare") && strstr(err, "stamps"), "%s", err);
}

/* The wrapper reports the device it wraps (runaway-bench --profile's GPU
 * name and memory). */
Test(profile, device_info_forwarded)
{
    char err[256];
    kb_backend *prof = kb_profile_create(kb_cpu_create(3), err, sizeof err);
    cr_assert(prof, "%s", err);
    char name[64] = "";
    size_t free_b = 0, total_b = 0;
    prof->device_info(prof, name, sizeof name, &free_b, &total_b);
    cr_expect_str_eq(name, "CPU (3 threads)");
    cr_expect_gt(total_b, 0);
    kb_destroy(prof);
}

/* ---- CUDA ---- */

/* STEPS stepper steps (views rendered on the device, op by op). */
static rw_model *stepper_steps(kb_backend *be, kb_backend *prof, const rw_dataset *ds)
{
    char err[256];
    rw_model_cfg mc = small_cfg();
    rw_model *m = rw_model_create(be, &mc, 7, err, sizeof err);
    cr_assert(m, "%s", err);
    rw_stepper_cfg sc = {
        .m = m, .ds = ds, .batch = N, .shard_world = 1, .size = S, .augment = RW_AUG_BYOL,
        .mean = {0.5f, 0.5f, 0.5f}, .std = {0.25f, 0.25f, 0.25f}, .seed = 3,
        .loader_threads = 1, .no_graphs = 1,
    };
    rw_stepper *sp = rw_stepper_create(&sc, err, sizeof err);
    cr_assert(sp, "%s", err);
    cr_expect(strstr(rw_stepper_describe(sp), "on the device"), "%s", rw_stepper_describe(sp));
    rw_stepper_seek(sp, 0, 0);
    if (prof)
        kb_profile_enable(prof, 1);
    for (int s = 0; s < STEPS; s++) {
        rw_step_stats st;
        cr_assert_eq(rw_stepper_forward_backward(sp, &st), 0);
        rw_stepper_update(sp, 1e-3f, 0, 0.99f);
        if (prof)
            kb_profile_step_end(prof);
    }
    rw_stepper_free(sp);
    return m;
}

Test(profile, cuda_step_same_bits_and_counts)
{
    char err[256];
    /* one backend under both runs: each plans its convolutions by timing
     * (cudnnFind), and two could pick forward algorithms that round
     * differently; the plans it memoizes serve the profiled run too */
    kb_backend *inner = kb_cuda_create(0, err, sizeof err);
    if (!inner)
        cr_skip_test("no GPU: %s", err);
    kb_backend *plain = inner;
    kb_backend *prof = kb_profile_create(inner, err, sizeof err);
    cr_assert(prof, "%s", err);
    cr_expect_str_eq(prof->name, "cuda");
    cr_expect_not_null(prof->augment);

    rw_dataset ds;
    cr_assert_eq(rw_dataset_noise(4 * N, 5, &ds), 0);
    rw_model *a = stepper_steps(plain, NULL, &ds), *b = stepper_steps(prof, prof, &ds);
    expect_same_model(a, b);
    expect_counts_and_identities(prof);
    kb_profile_totals t;
    kb_profile_totals_get(prof, &t);
    const kb_profile_row *v = row(&t, "views (augment)");
    cr_assert(v, "device-rendered views not recorded");
    cr_expect_eq(v->calls, (long)STEPS, "both views in one call per step");
    rw_model_free(a);
    rw_model_free(b);
    rw_dataset_free(&ds);
    kb_destroy(prof);
}

