/* Evaluation: the linear probe and the kNN monitor on features with known
 * answers, and encoder features independent of how images are batched. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"
#include "worker/eval.h"

static kb_backend *be;

static void setup(void) { be = kb_cpu_create(1); }
static void teardown(void) { kb_destroy(be); }

TestSuite(eval, .init = setup, .fini = teardown);

static uint64_t st;
static double urand(void)
{
    uint64_t z = (st += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return ((z ^ (z >> 31)) >> 11) * (1.0 / 9007199254740992.0);
}

/* n features of dimension F: class c of K is a cluster around a random
 * centre, with noise `spread`. */
static float *clusters_k(int n, int F, double spread, uint8_t *labels, uint64_t seed, int K)
{
    static float centre[100][64];
    st = 12345;
    for (int c = 0; c < K; c++)
        for (int d = 0; d < F; d++)
            centre[c][d] = (float)(4 * urand() - 2);
    st = seed;
    float *h = malloc((size_t)n * F * sizeof(float));
    for (int i = 0; i < n; i++) {
        labels[i] = (uint8_t)(i % K);
        for (int d = 0; d < F; d++)
            h[(size_t)i * F + d] = centre[labels[i]][d] + (float)(spread * (urand() - 0.5));
    }
    float *dev = be->alloc(be, (size_t)n * F * sizeof(float));
    be->upload(be, dev, h, (size_t)n * F * sizeof(float));
    free(h);
    return dev;
}

static float *clusters(int n, int F, double spread, uint8_t *labels, uint64_t seed)
{
    return clusters_k(n, F, spread, labels, seed, 10);
}

/* CIFAR-100's 100 classes: a probe or a vote over 10 would get at most
 * 10%; labels a classifier does not have are refused by name. */
Test(eval, hundred_classes)
{
    int F = 64, K = 100, ntr = 2000, nte = 500;
    uint8_t *ltr = malloc(ntr), *lte = malloc(nte);
    float *ftr = clusters_k(ntr, F, 0.5, ltr, 1, K), *fte = clusters_k(nte, F, 0.5, lte, 2, K);
    rw_linear_cfg cfg = {.epochs = 30, .lr = 5e-3f, .batch = 64, .seed = 0};
    double acc = 0;
    char err[128];
    cr_assert_eq(rw_linear_eval(be, ftr, ltr, ntr, fte, lte, nte, F, K, &cfg, &acc, err,
                                sizeof err), 0, "%s", err);
    cr_expect_geq(acc, 0.99, "linear probe over 100 classes: %.3f", acc);
    cr_assert_eq(rw_knn(be, ftr, ltr, ntr, fte, lte, nte, F, K, 5, 0.1f, &acc, err, sizeof err),
                 0, "%s", err);
    cr_expect_eq(acc, 1.0, "kNN over 100 classes: %.3f", acc);

    cr_assert_eq(rw_linear_eval(be, ftr, ltr, ntr, fte, lte, nte, F, 20, &cfg, &acc, err,
                                sizeof err), -1);
    cr_expect(strstr(err, "linear eval: train split: image 20 has label 20, not one of the 20 "
                          "classes"), "%s", err);
    lte[7] = 255; /* RW_NO_LABEL */
    cr_assert_eq(rw_knn(be, ftr, ltr, ntr, fte, lte, nte, F, K, 5, 0.1f, &acc, err, sizeof err),
                 -1);
    cr_expect(strstr(err, "kNN: test split: image 7 has label 255"), "%s", err);
    be->free(be, ftr);
    be->free(be, fte);
    free(ltr);
    free(lte);
}

Test(eval, linear_probe_separable_is_perfect)
{
    int F = 32, ntr = 500, nte = 200;
    uint8_t *ltr = malloc(ntr), *lte = malloc(nte);
    float *ftr = clusters(ntr, F, 0.5, ltr, 1), *fte = clusters(nte, F, 0.5, lte, 2);
    rw_linear_cfg cfg = {.epochs = 100, .lr = 5e-3f, .batch = 64, .seed = 0};
    double acc;
    char err[128];
    cr_assert_eq(rw_linear_eval(be, ftr, ltr, ntr, fte, lte, nte, F, 10, &cfg, &acc, err, sizeof err), 0);
    cr_expect_eq(acc, 1.0, "separable clusters: accuracy %.3f", acc);
    be->free(be, ftr);
    be->free(be, fte);
    free(ltr);
    free(lte);
}

/* Labels unrelated to the features: test accuracy stays at chance.
 * With 1000 test images and p = 0.1, the standard deviation of the
 * accuracy is 0.0095; 0.16 is over 6 sigma above chance. */
Test(eval, linear_probe_shuffled_labels_is_chance)
{
    int F = 32, ntr = 1000, nte = 1000;
    uint8_t *ltr = malloc(ntr), *lte = malloc(nte);
    float *ftr = clusters(ntr, F, 0.5, ltr, 1), *fte = clusters(nte, F, 0.5, lte, 2);
    st = 99;
    for (int i = 0; i < ntr; i++)
        ltr[i] = (uint8_t)(urand() * 10);
    for (int i = 0; i < nte; i++)
        lte[i] = (uint8_t)(urand() * 10);
    rw_linear_cfg cfg = {.epochs = 30, .lr = 5e-3f, .batch = 64, .seed = 0};
    double acc;
    char err[128];
    cr_assert_eq(rw_linear_eval(be, ftr, ltr, ntr, fte, lte, nte, F, 10, &cfg, &acc, err, sizeof err), 0);
    cr_expect(acc > 0.04 && acc < 0.16, "shuffled labels: accuracy %.3f, chance is 0.10", acc);
    be->free(be, ftr);
    be->free(be, fte);
    free(ltr);
    free(lte);
}

Test(eval, knn_clusters_and_hand_computed_vote)
{
    int F = 16, ntr = 300, nte = 100;
    uint8_t *ltr = malloc(ntr), *lte = malloc(nte);
    float *ftr = clusters(ntr, F, 0.5, ltr, 1), *fte = clusters(nte, F, 0.5, lte, 2);
    double acc;
    char err[128];
    cr_assert_eq(rw_knn(be, ftr, ltr, ntr, fte, lte, nte, F, 10, 20, 0.1f, &acc, err, sizeof err), 0);
    cr_expect_eq(acc, 1.0, "kNN on separable clusters: %.3f", acc);
    be->free(be, ftr);
    be->free(be, fte);
    free(ltr);
    free(lte);

    /* Hand-computed: test point (1, 0); train points at angles giving
     * cosine similarities 1.0 (class 1), 0.8 and 0.6 (class 2 twice).
     * k = 3, T = 0.1: class 1 scores e^10 = 22026, class 2 e^8 + e^6 =
     * 3384: class 1 wins. With T = 10: e^0.1 = 1.105 vs e^0.08 + e^0.06 =
     * 2.145: class 2 wins. k = 1: the nearest wins whatever T. */
    float tr[6] = {1, 0, 0.8f, 0.6f, 0.6f, 0.8f}, te[2] = {3, 0};
    uint8_t ltr2[3] = {1, 2, 2}, lte2[1] = {1};
    float *dtr = be->alloc(be, sizeof tr), *dte = be->alloc(be, sizeof te);
    be->upload(be, dtr, tr, sizeof tr);
    be->upload(be, dte, te, sizeof te);
    cr_assert_eq(rw_knn(be, dtr, ltr2, 3, dte, lte2, 1, 2, 10, 3, 0.1f, &acc, err, sizeof err), 0);
    cr_expect_eq(acc, 1.0);
    cr_assert_eq(rw_knn(be, dtr, ltr2, 3, dte, lte2, 1, 2, 10, 3, 10.0f, &acc, err, sizeof err), 0);
    cr_expect_eq(acc, 0.0);
    cr_assert_eq(rw_knn(be, dtr, ltr2, 3, dte, lte2, 1, 2, 10, 1, 10.0f, &acc, err, sizeof err), 0);
    cr_expect_eq(acc, 1.0);
    be->free(be, dtr);
    be->free(be, dte);
}

/* Eval-mode BatchNorm makes each image's features independent of the
 * batch; features from chunks of 256 and from single images agree (up to
 * the convolution algorithm oneDNN picks per batch size). */
Test(eval, features_independent_of_batching)
{
    rw_model_cfg mc = {.stem = RW_STEM_CIFAR, .width = 4, .proj_hidden = 16, .proj_out = 8,
                       .predictor = RW_PRED_NONE, .loss = {.kind = KB_LOSS_BYOL}};
    char err[256];
    rw_model *m = rw_model_create(be, &mc, 1, err, sizeof err);
    cr_assert_not_null(m);
    rw_dataset ds = {.n = 300, .side = 32, .classes = 10, .labeled = 300};
    ds.pixels = malloc((size_t)ds.n * 3072);
    ds.labels = calloc((size_t)ds.n, 1);
    for (size_t i = 0; i < (size_t)ds.n * 3072; i++)
        ds.pixels[i] = (uint8_t)((i * 2654435761u) >> 24);
    float mean[3] = {0.5f, 0.5f, 0.5f}, sd[3] = {0.25f, 0.25f, 0.25f};
    int F = rw_model_feat_dim(m);
    float *all = be->alloc(be, (size_t)ds.n * F * sizeof(float));
    cr_assert_eq(rw_eval_features(m, &ds, 16, mean, sd, all), 0);
    float *h = malloc((size_t)ds.n * F * sizeof(float));
    be->download(be, h, all, (size_t)ds.n * F * sizeof(float));
    rw_dataset one = {.n = 1, .side = 32, .classes = 10, .labeled = 1, .pixels = ds.pixels + 299 * 3072,
                      .labels = ds.labels};
    float *f1 = be->alloc(be, (size_t)F * sizeof(float)), h1[64];
    cr_assert_eq(rw_eval_features(m, &one, 16, mean, sd, f1), 0);
    be->download(be, h1, f1, (size_t)F * sizeof(float));
    for (int d = 0; d < F; d++)
        cr_expect_float_eq(h1[d], h[(size_t)299 * F + d], 1e-5 + 1e-4 * fabsf(h1[d]),
                           "feature %d: alone %g, in a chunk %g", d, h1[d],
                           h[(size_t)299 * F + d]);
    be->free(be, all);
    be->free(be, f1);
    free(h);
    free(ds.pixels);
    free(ds.labels);
    rw_model_free(m);
}

/* Features at scales a linear probe with the paper's small learning rate
 * cannot follow: each feature of the clusters multiplied by a power of two
 * from 2^-10 to 2^-3 (small, unnormalized features, as a collapsed or
 * untrained encoder's). The raw probe underfits (measured 0.36, against
 * 0.99 unscaled); standardizing undoes a power-of-two scale exactly, so its
 * accuracy is the unscaled features' to the bit; a BatchNorm before the
 * layer nearly so (0.96: its eps, 1e-5, is not small against the smallest
 * features' variance, ~1e-6; at 2^-14 it fell to 0.90, as PyTorch's
 * would). */
#ifndef SCALE_LO
#define SCALE_LO -8
#endif
static float *rescaled(const float *dev, int n, int F)
{
    float *h = malloc((size_t)n * F * sizeof(float));
    be->download(be, h, dev, (size_t)n * F * sizeof(float));
    for (int i = 0; i < n; i++)
        for (int d = 0; d < F; d++)
            h[(size_t)i * F + d] = ldexpf(h[(size_t)i * F + d], -10 + d % 8);
    float *out = be->alloc(be, (size_t)n * F * sizeof(float));
    be->upload(be, out, h, (size_t)n * F * sizeof(float));
    free(h);
    return out;
}

Test(eval, normalized_probes_see_features_the_raw_one_cannot)
{
    int F = 32, ntr = 1000, nte = 500;
    uint8_t *ltr = malloc(ntr), *lte = malloc(nte);
    float *ftr = clusters(ntr, F, 2.0, ltr, 1), *fte = clusters(nte, F, 2.0, lte, 2);
    float *str = rescaled(ftr, ntr, F), *ste = rescaled(fte, nte, F);
    char err[128];
    double acc[3], scaled[3];
    for (int k = 0; k < 3; k++) {
        rw_linear_cfg cfg = {.epochs = 20, .lr = 5e-4f, .batch = 100, .seed = 0,
                             .normalize = (rw_linear_norm)k};
        cr_assert_eq(rw_linear_eval(be, ftr, ltr, ntr, fte, lte, nte, F, 10, &cfg, &acc[k], err,
                                    sizeof err), 0, "%s", err);
        cr_assert_eq(rw_linear_eval(be, str, ltr, ntr, ste, lte, nte, F, 10, &cfg, &scaled[k],
                                    err, sizeof err), 0, "%s", err);
    }
    printf("linear probe, raw / standardize / batchnorm: %.3f %.3f %.3f; features scaled "
           "down: %.3f %.3f %.3f\n", acc[0], acc[1], acc[2], scaled[0], scaled[1], scaled[2]);
    cr_expect_lt(scaled[0], 0.5, "the raw probe on tiny features: %.3f", scaled[0]);
    cr_expect_geq(acc[1], 0.9, "standardized: %.3f", acc[1]);
    cr_expect_geq(acc[2], 0.9, "batchnorm: %.3f", acc[2]);
    cr_expect_eq(scaled[1], acc[1], "standardize: %.3f scaled, %.3f not", scaled[1], acc[1]);
    cr_expect_geq(scaled[2], 0.9, "batchnorm on the scaled features: %.3f", scaled[2]);
    be->free(be, ftr);
    be->free(be, fte);
    be->free(be, str);
    be->free(be, ste);
    free(ltr);
    free(lte);
}

/* BatchNorm's test-time view is its running statistics, not the test
 * batch's: with one training batch per epoch and E epochs, the running
 * mean is the split's mean times 1 - 0.9^E. Two epochs leave it 81% short
 * of a common offset of 100, so the test features stay far off centre and
 * the classes the probe learned there are lost (chance); 100 epochs bring
 * it within 0.003. Standardizing has no such lag. */
Test(eval, batchnorm_probe_tests_with_its_running_statistics)
{
    int F = 32, ntr = 500, nte = 500;
    uint8_t *ltr = malloc(ntr), *lte = malloc(nte);
    float *ftr = clusters(ntr, F, 0.5, ltr, 1), *fte = clusters(nte, F, 0.5, lte, 2);
    float *h = malloc((size_t)nte * F * sizeof(float));
    float *sh[2] = {ftr, fte};
    int n[2] = {ntr, nte};
    for (int s = 0; s < 2; s++) { /* an offset of 1000 on every feature of both splits */
        be->download(be, h, sh[s], (size_t)n[s] * F * sizeof(float));
        for (size_t i = 0; i < (size_t)n[s] * F; i++)
            h[i] += 100.0f;
        be->upload(be, sh[s], h, (size_t)n[s] * F * sizeof(float));
    }
    char err[128];
    double few, many, stdz;
    rw_linear_cfg cfg = {.epochs = 2, .lr = 5e-2f, .batch = ntr, .seed = 0,
                         .normalize = RW_LINEAR_BATCHNORM};
    cr_assert_eq(rw_linear_eval(be, ftr, ltr, ntr, fte, lte, nte, F, 10, &cfg, &few, err,
                                sizeof err), 0, "%s", err);
    cfg.epochs = 100;
    cr_assert_eq(rw_linear_eval(be, ftr, ltr, ntr, fte, lte, nte, F, 10, &cfg, &many, err,
                                sizeof err), 0, "%s", err);
    cfg.epochs = 2;
    cfg.normalize = RW_LINEAR_STANDARDIZE;
    cr_assert_eq(rw_linear_eval(be, ftr, ltr, ntr, fte, lte, nte, F, 10, &cfg, &stdz, err,
                                sizeof err), 0, "%s", err);
    printf("batchnorm probe: 2 epochs %.3f, 100 epochs %.3f; standardized, 2 epochs %.3f\n", few,
           many, stdz);
    cr_expect_lt(few, 0.5, "2 epochs: running mean at 19%% of the offset, yet %.3f", few);
    cr_expect_geq(many, 0.95, "100 epochs: %.3f", many);
    cr_expect_geq(stdz, 0.95, "standardized after 2 epochs: %.3f", stdz);
    be->free(be, ftr);
    be->free(be, fte);
    free(h);
    free(ltr);
    free(lte);
}
