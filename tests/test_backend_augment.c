/* GPU views (kernels/cuda/augment.cu) against the CPU loader's
 * (worker/augment.c): same data, seed, epoch, sample indices and view, for
 * T1, T2 and the plain view at the CIFAR size and the paper's 96x96, from
 * CIFAR's 32x32 sources and STL-10's 96x96; one view per call and two
 * (group g of the batch rendered as views[g]), into a feature map in the
 * backend's format (read back with fmap_download, its padding channels
 * required to be zeros), in fp32 and in bf16. Skips without a GPU.
 *
 * Tolerance: both run kernels/augment.h's functions; the draw is the same
 * integer Philox stream, so the same crop, flip, jitter order and factors,
 * blur sigma (up to the last bit of the GPU's logf/expf, which may differ
 * from glibc's by an ulp: a crop size sits on a rounding boundary with
 * probability ~1e-7 per draw). Per pixel, float roundings differ only
 * through fused multiply-adds: ~10 operations at ~6e-8 relative each on
 * values in [0, 1], a blur of <= 11 taps, then division by std ~0.25: errors
 * of ~1e-6 in the normalized output. |gpu - cpu| <= 1e-4 + 1e-4 |cpu| leaves
 * 100x margin; a different draw (crop, flip, order) or a wrong pass is an
 * O(1) error. In bf16 the GPU rounds its value once: the CPU's is rounded
 * the same way (to nearest even) and the two may land one bf16 ulp apart
 * (2^-7 of the value at most) where they straddle a rounding boundary: +
 * 2^-7 |cpu|.
 *
 * Staged sources (a set streamed from the host, worker/step.c): the batch's
 * images gathered in row order render the same bits as the whole set on
 * the device, and a stepper streaming an image folder's batches from pinned
 * memory, through CUDA graphs, renders each step's views with the same bits
 * as one holding the set resident (and takes the same steps: the same
 * stats, bit for bit), and the CPU loader's within the bound above. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"
#include "kernels/cuda_augment.h"
#include "worker/data_internal.h"
#include "worker/model.h"
#include "worker/step.h"

#define NIMG 64

static kb_backend *gpu;
static char why[512];

static void setup(void)
{
    why[0] = 0;
    gpu = kb_cuda_create(0, why, sizeof why);
}

static void teardown(void) { kb_destroy(gpu); }

TestSuite(backend_augment, .init = setup, .fini = teardown);

static uint64_t rng_state = 12345;
static uint32_t next_u32(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 32);
}

/* float -> bf16 -> float, to nearest even (as the GPU stores it). */
static float bf16_round(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return f;
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}

/* The padding channels of the feature map (nb, 3, S, S), read raw in the
 * CUDA backend's layout (NHWC, channels padded to 16 bytes): zeros.
 * Returns how many are not. */
static size_t padding_not_zero(const void *dout, int nb, int S, int bf16)
{
    const int es = bf16 ? 2 : 4, Cp = 16 / es; /* 3 channels: one 16-byte vector */
    const size_t pix = (size_t)nb * S * S, bytes = pix * Cp * es;
    unsigned char *raw = malloc(bytes);
    gpu->download(gpu, raw, dout, bytes);
    size_t bad = 0;
    for (size_t i = 0; i < pix; i++)
        for (int c = 3; c < Cp; c++) {
            const unsigned char *e = raw + (i * Cp + c) * es;
            uint32_t u = 0;
            memcpy((unsigned char *)&u + (4 - es), e, es); /* little-endian: the high half */
            float v;
            memcpy(&v, &u, 4);
            bad += !(v == 0.0f);
        }
    free(raw);
    return bad;
}

/* Every view of NIMG side x side sources at three output sizes, in the
 * backend's mode (bf16: one size), one view per call and two. */
static void views_match(int side, int bf16)
{
    if (bf16 && gpu->set_precision(gpu, KB_PREC_BF16) != KB_PREC_BF16)
        cr_skip_test("this GPU has no bf16 mode");
    /* Smooth random images (sums of a few gradients) plus noise: blur,
     * contrast and hue all see structure. */
    const size_t img = (size_t)3 * side * side;
    rw_dataset ds = {.n = NIMG, .side = side, .classes = 10, .labeled = NIMG,
                     .pixels = malloc(NIMG * img), .labels = malloc(NIMG)};
    for (int i = 0; i < NIMG; i++) {
        ds.labels[i] = (uint8_t)(i % 10);
        for (int c = 0; c < 3; c++) {
            int a = next_u32() % 9, b = next_u32() % 9, o = next_u32() % 128;
            for (int y = 0; y < side; y++)
                for (int x = 0; x < side; x++) {
                    int v = o + (a * x + b * y) * 32 / side + (int)(next_u32() % 24);
                    ds.pixels[(((size_t)i * 3 + c) * side + y) * side + x] =
                        (uint8_t)(v > 255 ? 255 : v);
                }
        }
    }
    uint8_t *dsrc = gpu->alloc(gpu, NIMG * img);
    cr_assert_not_null(dsrc);
    gpu->upload(gpu, dsrc, ds.pixels, NIMG * img);

    const float mean[3] = {0.4914f, 0.4822f, 0.4465f}, std[3] = {0.2470f, 0.2435f, 0.2616f};
    /* A batch in a shuffled order, with a repeat: the kernel follows idx. */
    const int n = 40;
    int32_t idx[40];
    for (int k = 0; k < n; k++)
        idx[k] = (int32_t)((k * 37 + 11) % NIMG);
    idx[n - 1] = idx[0];
    static const int sizes[] = {32, 96, 24};
    /* the views of each call: T1, T2 and the plain image alone, then pairs */
    static const int calls[][2] = {{0, 0}, {1, 1}, {-1, -1}, {0, 1}, {1, -1}};
    static const int ncalls[] = {1, 1, 1, 2, 2};
    static const uint32_t epochs[] = {0, 7};
    const double rtol = 1e-4 + (bf16 ? 0x1p-7 : 0);
    for (size_t si = 0; si < (bf16 ? 1 : sizeof sizes / sizeof *sizes); si++)
        for (size_t ci = 0; ci < sizeof calls / sizeof *calls; ci++)
            for (size_t ei = 0; ei < sizeof epochs / sizeof *epochs; ei++) {
                const int S = sizes[si], nv = ncalls[ci];
                const uint32_t epoch = epochs[ei];
                const uint64_t seed = 0x5EEDull + 977 * si;
                const size_t per = (size_t)3 * S * S;
                void *dout = gpu->alloc(gpu, gpu->fmap_bytes(gpu, nv * n, 3, S, S));
                cr_assert_not_null(dout);
                /* all ones (NaN): what the kernel leaves unwritten shows */
                size_t ob = gpu->fmap_bytes(gpu, nv * n, 3, S, S);
                unsigned char *ones = malloc(ob);
                memset(ones, 0xff, ob);
                gpu->upload(gpu, dout, ones, ob);
                free(ones);
                float *g = malloc(nv * n * per * sizeof(float)), *c = malloc(per * sizeof(float));
                float *scratch = malloc(RW_AUG_SCRATCH(S) * sizeof(float));
                uint32_t keys[41];
                keys[0] = epoch;
                for (int k = 0; k < n; k++)
                    keys[1 + k] = (uint32_t)idx[k];
                uint32_t *dkeys = gpu->alloc(gpu, sizeof keys);
                gpu->upload(gpu, dkeys, keys, sizeof keys);
                cr_assert_eq(kb_cuda_augment(gpu, dsrc, side, side, 0, dkeys, n, seed, calls[ci], nv,
                                             S, mean, std, dout),
                             0);
                gpu->fmap_download(gpu, g, dout, nv * n, 3, S, S);
                const size_t pad_bad = padding_not_zero(dout, nv * n, S, bf16);
                cr_expect_eq(pad_bad, 0, "%zu padding channels not zero", pad_bad);
                for (int v = 0; v < nv; v++) {
                    const int view = calls[ci][v];
                    int bad_samples = 0;
                    double worst = 0;
                    size_t wk = 0, wi = 0;
                    for (int k = 0; k < n; k++) {
                        if (view < 0)
                            rw_image_plain(&ds, idx[k], S, mean, std, c);
                        else
                            rw_aug_view(&ds, idx[k], seed, (int)epoch, view, RW_AUG_BYOL, S, mean,
                                        std, c, scratch);
                        const float *gk = g + ((size_t)v * n + k) * per;
                        int bad = 0;
                        for (size_t i = 0; i < per; i++) {
                            const double want = bf16 ? bf16_round(c[i]) : c[i];
                            double d = fabs((double)gk[i] - want);
                            if (!(d <= 1e-4 + rtol * fabs(want)))
                                bad = 1;
                            if (!(d <= worst)) {
                                worst = d;
                                wk = (size_t)k;
                                wi = i;
                            }
                        }
                        bad_samples += bad;
                    }
                    printf("  source %d%s: call %zu (%d of %d) view %2d S %2d epoch %u: %d of %d "
                           "samples differ; worst |d| %.2e (sample %zu, element %zu: gpu %+.7f)%s\n",
                           side, bf16 ? " bf16" : "", ci, v + 1, nv, view, S, epoch, bad_samples,
                           n, worst, wk, wi, (double)g[((size_t)v * n + wk) * per + wi],
                           bad_samples || pad_bad ? "  FAIL" : "");
                    cr_expect_eq(bad_samples, 0,
                                 "source %d%s view %d (%d of %d) S %d epoch %u: %d of %d samples "
                                 "outside the bound (worst %.3e at sample %zu element %zu)",
                                 side, bf16 ? " bf16" : "", view, v + 1, nv, S, epoch,
                                 bad_samples, n, worst, wk, wi);
                }
                gpu->free(gpu, dout);
                gpu->free(gpu, dkeys);
                free(g);
                free(c);
                free(scratch);
            }
    gpu->free(gpu, dsrc);
    free(ds.pixels);
    free(ds.labels);
}

Test(backend_augment, views_match_cpu)
{
    if (!gpu)
        cr_skip_test("no CUDA backend: %s", why);
    views_match(32, 0);
}

/* STL-10's 96x96 sources: crops are found, and shrunk to 24, in a larger
 * image. */
Test(backend_augment, views_match_cpu_from_96x96_sources)
{
    if (!gpu)
        cr_skip_test("no CUDA backend: %s", why);
    views_match(96, 0);
}

/* bf16 feature maps: the same views, rounded once. */
Test(backend_augment, views_match_cpu_in_bf16)
{
    if (!gpu)
        cr_skip_test("no CUDA backend: %s", why);
    views_match(32, 1);
}

Test(backend_augment, cpu_backend_declines)
{
    kb_backend *cpu = kb_cpu_create(1);
    cr_assert_not_null(cpu);
    const float m[3] = {0, 0, 0}, s[3] = {1, 1, 1};
    uint32_t keys[2] = {0, 0};
    const int views[2] = {0, 1};
    cr_expect_eq(kb_cuda_augment(cpu, NULL, 32, 32, 0, keys, 1, 0, views, 2, 32, m, s, NULL), -1);
    cr_expect(cpu->augment == NULL, "the CPU renders views on loader threads");
    kb_destroy(cpu);
}

/* The batch's images gathered into a staging buffer (pinned, uploaded),
 * sample k's in row k: the same bits as the whole set read by index. */
Test(backend_augment, staged_rows_render_the_sets_views)
{
    if (!gpu)
        cr_skip_test("no CUDA backend: %s", why);
    const int side = 32, n = 12, S = 24;
    const size_t img = (size_t)3 * side * side;
    uint8_t *pix = malloc(NIMG * img);
    for (size_t i = 0; i < NIMG * img; i++)
        pix[i] = (uint8_t)(next_u32() >> 24);
    uint8_t *dset = gpu->alloc(gpu, NIMG * img), *dstage = gpu->alloc(gpu, n * img);
    cr_assert(dset && dstage);
    gpu->upload(gpu, dset, pix, NIMG * img);
    uint32_t keys[13] = {3};
    for (int k = 0; k < n; k++)
        keys[1 + k] = (uint32_t)((k * 29 + 5) % NIMG);
    keys[n] = keys[2]; /* a repeat */
    cr_assert_not_null(gpu->host_alloc, "the CUDA backend has pinned memory");
    uint8_t *h = gpu->host_alloc(gpu, n * img);
    cr_assert_not_null(h);
    for (int k = 0; k < n; k++)
        memcpy(h + k * img, pix + keys[1 + k] * img, img);
    gpu->upload(gpu, dstage, h, n * img);
    gpu->host_wait(gpu, h);
    memset(h, 0, n * img); /* the copy has read it: the views cannot see this */
    uint32_t *dkeys = gpu->alloc(gpu, sizeof keys);
    gpu->upload(gpu, dkeys, keys, sizeof keys);
    const float mean[3] = {0.5f, 0.5f, 0.5f}, std[3] = {0.25f, 0.25f, 0.25f};
    const int views[2] = {0, 1};
    const size_t ob = gpu->fmap_bytes(gpu, 2 * n, 3, S, S);
    void *a = gpu->alloc(gpu, ob), *b = gpu->alloc(gpu, ob);
    cr_assert_eq(kb_cuda_augment(gpu, dset, side, side, 0, dkeys, n, 77, views, 2, S, mean, std, a),
                 0);
    cr_assert_eq(kb_cuda_augment(gpu, dstage, side, side, 1, dkeys, n, 77, views, 2, S, mean, std,
                                 b),
                 0);
    unsigned char *ha = malloc(ob), *hb = malloc(ob);
    gpu->download(gpu, ha, a, ob);
    gpu->download(gpu, hb, b, ob);
    size_t diff = 0;
    for (size_t i = 0; i < ob; i++)
        diff += ha[i] != hb[i];
    printf("  staged rows vs the set by index: %zu of %zu bytes differ\n", diff, ob);
    cr_expect_eq(diff, 0, "staged views differ from the set's in %zu of %zu bytes", diff, ob);
    free(ha);
    free(hb);
    gpu->host_free(gpu, h);
    void *dev[] = {dset, dstage, dkeys, a, b};
    for (int i = 0; i < 5; i++)
        gpu->free(gpu, dev[i]);
    free(pix);
}

/* ---- the stepper: resident, streamed and host views of an image folder ---- */

#define FOLDER_N 96 /* 96 64x64 images: 1.1 MiB, over a 1 MiB budget */
#define FOLDER_SIDE 64
#define BATCH 8
#define SIZE 16

static rw_stepper *folder_stepper(rw_model **m, const rw_dataset *ds, int host_data, int budget_mb)
{
    rw_model_cfg mc = {
        .stem = RW_STEM_CIFAR, .width = 4, .proj_hidden = 16, .proj_out = 8,
        .predictor = RW_PRED_MLP, .pred_hidden = 16, .loss = {.kind = KB_LOSS_BYOL},
    };
    char err[256];
    *m = rw_model_create(gpu, &mc, 7, err, sizeof err);
    cr_assert_not_null(*m, "%s", err);
    rw_stepper_cfg c = {
        .m = *m, .ds = ds, .batch = BATCH, .shard_world = 1, .size = SIZE,
        .augment = RW_AUG_BYOL, .mean = {0.5f, 0.5f, 0.5f}, .std = {0.25f, 0.25f, 0.25f},
        .seed = 31, .loader_threads = 1, .host_data = host_data, .device_budget_mb = budget_mb,
    };
    rw_stepper *s = rw_stepper_create(&c, err, sizeof err);
    cr_assert_not_null(s, "%s", err);
    return s;
}

/* Steps from (epoch 1, batch 10) across the epoch's end: 4 steps, each
 * step's views (2 BATCH, 3, SIZE, SIZE) into views[step]. */
#define STEPS 4
static void folder_views(rw_stepper *s, rw_model *m, float *views[STEPS], rw_step_stats st[STEPS])
{
    const size_t n = (size_t)2 * BATCH * 3 * SIZE * SIZE;
    int epoch = 1;
    rw_stepper_seek(s, epoch, 10);
    for (int t = 0; t < STEPS;) {
        int r = rw_stepper_step(s, 1, 1e-3f, 0.0f, 0.99f);
        if (r == 1) {
            rw_stepper_seek(s, ++epoch, 0);
            continue;
        }
        cr_assert_eq(r, 0, "step %d: %s", t + 1, rw_model_error(m));
        views[t] = malloc(n * sizeof(float));
        gpu->fmap_download(gpu, views[t], rw_stepper_views(s), 2 * BATCH, 3, SIZE, SIZE);
        t++;
    }
    cr_assert_eq(rw_stepper_read(s, st, STEPS), STEPS);
}

Test(backend_augment, streamed_batches_render_the_resident_and_loaders_views, .timeout = 1800)
{
    if (!gpu)
        cr_skip_test("no CUDA backend: %s", why);
    char dir[64] = "/tmp/rw-stream-XXXXXX", err[256];
    cr_assert_not_null(mkdtemp(dir));
    cr_assert_eq(rw_synth_write_imagefolder(dir, FOLDER_N, 10, 0, 5, err, sizeof err), 0, "%s",
                 err);
    rw_imagefolder_opts o = {.side = FOLDER_SIDE, .threads = 1};
    rw_dataset ds;
    cr_assert_eq(rw_imagefolder_load(dir, 1, &o, &ds, err, sizeof err), 0, "%s", err);
    cr_assert_eq(ds.n, FOLDER_N);
    cr_assert_gt((size_t)ds.n * 3 * ds.side * ds.side, (size_t)1 << 20, "over the 1 MiB budget");
    cr_assert(rw_stepper_set_resident((size_t)ds.n * 3 * ds.side * ds.side, 0, 8ull << 30));

    static const char *const want[3] = {"views on the device, set resident",
                                        "views on the device, batches streamed from pinned memory",
                                        "views on the host"};
    float *views[3][STEPS];
    rw_step_stats st[3][STEPS];
    rw_stepper_counts counts[3];
    for (int mode = 0; mode < 3; mode++) {
        rw_model *m;
        rw_stepper *s = folder_stepper(&m, &ds, mode == 2, mode == 1 ? 1 : 0);
        printf("  %s\n", rw_stepper_describe(s));
        cr_expect(strncmp(rw_stepper_describe(s), want[mode], strlen(want[mode])) == 0,
                  "mode %d: %s", mode, rw_stepper_describe(s));
        folder_views(s, m, views[mode], st[mode]);
        rw_stepper_counts_get(s, &counts[mode]);
        rw_stepper_free(s);
        rw_model_free(m);
    }
    cr_expect_eq(counts[1].replayed, 1, "the streamed step replays its graph: %ld",
                 counts[1].replayed);
    const size_t n = (size_t)2 * BATCH * 3 * SIZE * SIZE;
    for (int t = 0; t < STEPS; t++) {
        size_t same = 0, close = 0;
        double worst = 0;
        for (size_t i = 0; i < n; i++) {
            same += memcmp(&views[0][t][i], &views[1][t][i], sizeof(float)) == 0;
            double d = fabs((double)views[1][t][i] - views[2][t][i]);
            close += d <= 1e-4 + 1e-4 * fabs(views[2][t][i]);
            worst = d > worst ? d : worst;
        }
        printf("  step %d: streamed = resident in %zu of %zu; streamed vs the CPU loader: "
               "worst |d| %.2e\n", t + 1, same, n, worst);
        cr_expect_eq(same, n, "step %d: streamed and resident views differ in %zu of %zu", t + 1,
                     n - same, n);
        cr_expect_eq(close, n, "step %d: streamed views differ from the loader's by %.3e",
                     t + 1, worst);
        /* the same views, the same model: the same step, bit for bit */
        cr_expect(memcmp(&st[0][t], &st[1][t], sizeof st[0][t]) == 0,
                  "step %d: loss %.9g resident, %.9g streamed", t + 1, st[0][t].loss,
                  st[1][t].loss);
        for (int mode = 0; mode < 3; mode++)
            free(views[mode][t]);
    }
    rw_dataset_free(&ds);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    (void)!system(cmd);
}
