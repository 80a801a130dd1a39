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
 * 2^-7 |cpu|. */
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
