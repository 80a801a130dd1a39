/* GPU views (kernels/cuda/augment.cu) against the CPU loader's
 * (worker/augment.c): same data, seed, epoch, sample indices and view, for
 * T1, T2 and the plain view at the CIFAR size and the paper's 96x96, from
 * CIFAR's 32x32 sources and STL-10's 96x96.
 * Skips without a GPU.
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
 * O(1) error. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"
#include "kernels/cuda_augment.h"
#include "worker/data_internal.h"

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

/* Every view of NIMG side x side sources at three output sizes. */
static void views_match(int side)
{
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
    static const int views[] = {0, 1, -1};
    static const uint32_t epochs[] = {0, 7};
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++)
        for (size_t vi = 0; vi < sizeof views / sizeof *views; vi++)
            for (size_t ei = 0; ei < sizeof epochs / sizeof *epochs; ei++) {
                const int S = sizes[si], view = views[vi];
                const uint32_t epoch = epochs[ei];
                const uint64_t seed = 0x5EEDull + 977 * si;
                const size_t per = (size_t)3 * S * S;
                float *dout = gpu->alloc(gpu, n * per * sizeof(float));
                float *g = malloc(n * per * sizeof(float)), *c = malloc(per * sizeof(float));
                float *scratch = malloc(RW_AUG_SCRATCH(S) * sizeof(float));
                uint32_t keys[41];
                keys[0] = epoch;
                for (int k = 0; k < n; k++)
                    keys[1 + k] = (uint32_t)idx[k];
                uint32_t *dkeys = gpu->alloc(gpu, sizeof keys);
                gpu->upload(gpu, dkeys, keys, sizeof keys);
                cr_assert_eq(kb_cuda_augment(gpu, dsrc, side, side, dkeys, n, seed, view, S, mean,
                                             std, dout),
                             0);
                gpu->download(gpu, g, dout, n * per * sizeof(float));
                int bad_samples = 0;
                double worst = 0;
                size_t wk = 0, wi = 0;
                for (int k = 0; k < n; k++) {
                    if (view < 0)
                        rw_image_plain(&ds, idx[k], S, mean, std, c);
                    else
                        rw_aug_view(&ds, idx[k], seed, (int)epoch, view, RW_AUG_BYOL, S, mean, std,
                                    c, scratch);
                    int bad = 0;
                    for (size_t i = 0; i < per; i++) {
                        double d = fabs((double)g[k * per + i] - c[i]);
                        if (!(d <= 1e-4 + 1e-4 * fabs(c[i])))
                            bad = 1;
                        if (!(d <= worst)) {
                            worst = d;
                            wk = (size_t)k;
                            wi = i;
                        }
                    }
                    bad_samples += bad;
                }
                printf("  source %d: view %2d S %2d epoch %u: %d of %d samples differ; worst "
                       "|d| %.2e (sample %zu, element %zu: gpu %+.7f cpu-ref)%s\n",
                       side, view, S, epoch, bad_samples, n, worst, wk, wi,
                       (double)g[wk * per + wi],
                       bad_samples ? "  FAIL" : "");
                cr_expect_eq(bad_samples, 0,
                             "source %d view %d S %d epoch %u: %d of %d samples outside 1e-4 "
                             "(worst %.3e at sample %zu element %zu)",
                             side, view, S, epoch, bad_samples, n, worst, wk, wi);
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
    views_match(32);
}

/* STL-10's 96x96 sources: crops are found, and shrunk to 24, in a larger
 * image. */
Test(backend_augment, views_match_cpu_from_96x96_sources)
{
    if (!gpu)
        cr_skip_test("no CUDA backend: %s", why);
    views_match(96);
}

Test(backend_augment, cpu_backend_declines)
{
    kb_backend *cpu = kb_cpu_create(1);
    cr_assert_not_null(cpu);
    const float m[3] = {0, 0, 0}, s[3] = {1, 1, 1};
    uint32_t keys[2] = {0, 0};
    cr_expect_eq(kb_cuda_augment(cpu, NULL, 32, 32, keys, 1, 0, 0, 32, m, s, NULL), -1);
    kb_destroy(cpu);
}
