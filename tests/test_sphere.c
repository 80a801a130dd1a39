/* The representation on the circle (worker/sphere.c): sets whose PCA,
 * angles and spread numbers are known by hand, invariances of the numbers,
 * and a model's projections end to end, collapse included; the effective
 * rank on sets whose singular values are known. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"
#include "worker/sphere.h"

#define TWO_PI 6.283185307179586

static uint64_t st;
static double urand(void)
{
    uint64_t z = (st += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return ((z ^ (z >> 31)) >> 11) * (1.0 / 9007199254740992.0);
}

static double gauss(void)
{
    double u = urand(), v = urand();
    return sqrt(-2 * log(u + 1e-300)) * cos(TWO_PI * v);
}

/* Rows c + 3 cos(t) a + sin(t) b for t evenly spaced, a and b orthonormal
 * in R^8: PCA must find a then b, with 90% and 10% of the variance, and
 * every point's angle is atan2(sin t, 3 cos t) up to the components' signs. */
Test(sphere, ellipse_in_a_plane_has_known_components_and_angles)
{
    enum { N = 720, D = 8 };
    double a[D] = {0}, b[D] = {0}, c[D];
    a[1] = a[4] = 1 / sqrt(2.0);
    b[2] = 0.6, b[6] = -0.8;
    for (int d = 0; d < D; d++)
        c[d] = d - 3.5;
    float *f = malloc(sizeof(float) * N * D), pairs[2 * D];
    for (int i = 0; i < N; i++) {
        double t = TWO_PI * (i + 0.25) / N;
        for (int d = 0; d < D; d++)
            f[i * D + d] = (float)(c[d] + 3 * cos(t) * a[d] + sin(t) * b[d]);
    }
    /* a view pair: the points at t = 0 and t = pi/2 */
    for (int d = 0; d < D; d++) {
        pairs[d] = (float)(c[d] + 3 * a[d]);
        pairs[D + d] = (float)(c[d] + b[d]);
    }
    rw_sphere sp;
    char err[256];
    cr_assert_eq(rw_sphere_fit(f, N, D, pairs, 1, &sp, err, sizeof err), 0, "%s", err);
    cr_expect_eq(sp.n, N);
    cr_expect_eq(sp.n_centre, 0);
    cr_expect(fabs(sp.evr[0] - 0.9) < 1e-5 && fabs(sp.evr[1] - 0.1) < 1e-5, "evr %.7f %.7f",
              sp.evr[0], sp.evr[1]);
    /* each point has its mirror through the centre: no mean direction */
    cr_expect(sp.R < 1e-6, "R %g", sp.R);
    /* signs: a's largest entry is positive (a itself), b's largest |entry|
     * is -0.8, so the second component is -b: t = 0 sits at 0 degrees and
     * t = pi/2 at -90, i.e. 270 */
    cr_expect(fabs(sp.pair_deg[0][0]) < 1e-3 || fabs(sp.pair_deg[0][0] - 360) < 1e-3, "%g",
              sp.pair_deg[0][0]);
    cr_expect(fabs(sp.pair_deg[0][1] - 270) < 1e-3, "%g", sp.pair_deg[0][1]);
    /* the ellipse's points crowd near 0 and 180 degrees: the 45-degree arc
     * centred on 0 holds the t with |atan2(sin t, 3 cos t)| <= 22.5 deg */
    int in = 0;
    for (int i = 0; i < N; i++) {
        double t = TWO_PI * (i + 0.25) / N;
        double ang = atan2(-sin(t), 3 * cos(t));
        in += fabs(ang) <= TWO_PI / 16;
    }
    cr_expect(fabs(sp.densest - (double)in / N) < 1.5 / N, "densest %.4f, by hand %.4f",
              sp.densest, (double)in / N);
    free(f);
}

/* n points evenly on a circle (D = 2): L_uniform on the circle is the
 * closed form over the n - 1 gaps, R is 0, and the density is flat at
 * 1 / (2 pi) per radian. */
Test(sphere, evenly_spread_points_match_closed_forms)
{
    enum { N = 360 };
    float f[2 * N];
    for (int i = 0; i < N; i++) {
        f[2 * i] = (float)cos(TWO_PI * (i + 0.5) / N);
        f[2 * i + 1] = (float)sin(TWO_PI * (i + 0.5) / N);
    }
    rw_sphere sp;
    char err[256];
    cr_assert_eq(rw_sphere_fit(f, N, 2, NULL, 0, &sp, err, sizeof err), 0, "%s", err);
    double s = 0;
    for (int k = 1; k < N; k++)
        s += exp(-4 + 4 * cos(TWO_PI * k / N));
    cr_expect(fabs(sp.uniform - log(s / (N - 1))) < 1e-5, "uniform %.8f vs %.8f", sp.uniform,
              log(s / (N - 1)));
    cr_expect(sp.R < 1e-6, "R %g", sp.R);
    /* 45 degrees hold 45 or 46 of the 1-degree-spaced points, by where the
     * (isotropic, so arbitrary) components put the first */
    cr_expect(sp.densest >= 45.0 / N - 1e-9 && sp.densest <= 46.0 / N + 1e-9, "%g", sp.densest);
    double integral = 0;
    for (int b = 0; b < RW_SPHERE_BINS; b++) {
        integral += sp.density[b] * TWO_PI / RW_SPHERE_BINS;
        cr_expect(fabs(sp.density[b] - 1 / TWO_PI) < 1e-3, "density[%d] %g", b, sp.density[b]);
    }
    cr_expect(fabs(integral - 1) < 1e-9, "density integrates to %.12f", integral);
}

/* 90% of the points at one place, 10% at another (with a little noise
 * across): PCA's first axis joins them, the unit vectors point two ways,
 * R = |0.9 - 0.1| = 0.8, the fullest arc holds 90%, and the density peaks
 * at 0.9 / (h sqrt(2 pi)) where the cluster sits. */
Test(sphere, two_clusters_give_the_mean_resultant_length_by_hand)
{
    enum { N = 1000, D = 5 };
    float *f = malloc(sizeof(float) * N * D);
    st = 3;
    for (int i = 0; i < N; i++) {
        int big = i % 10 != 0;
        for (int d = 0; d < D; d++)
            f[i * D + d] = (float)((d == 0 ? (big ? 2.0 : -7.0) : 0.0) + 1e-3 * gauss());
        f[i * D + 3] += (float)(0.05 * (big ? 1 : -1)); /* a small second axis */
    }
    rw_sphere sp;
    char err[256];
    cr_assert_eq(rw_sphere_fit(f, N, D, NULL, 0, &sp, err, sizeof err), 0, "%s", err);
    cr_expect(fabs(sp.R - 0.8) < 1e-3, "R %.6f", sp.R);
    cr_expect(fabs(sp.densest - 0.9) < 1e-9, "densest %g", sp.densest);
    cr_expect(sp.evr[0] > 0.999, "evr %g", sp.evr[0]);
    double peak = 0;
    for (int b = 0; b < RW_SPHERE_BINS; b++)
        peak = sp.density[b] > peak ? sp.density[b] : peak;
    double want = 0.9 / (RW_SPHERE_BANDWIDTH * sqrt(TWO_PI));
    /* the cluster's angles spread a little (noise over the small second
     * axis), and the peak is sampled at bin centres: within 3% */
    cr_expect(fabs(peak / want - 1) < 0.03, "peak %g, a point mass gives %g", peak, want);
    free(f);
}

/* Rotating, shifting and scaling the representation changes none of the
 * numbers: PCA follows the rotation, the circle forgets the scale. */
Test(sphere, numbers_invariant_under_rotation_shift_and_scale)
{
    enum { N = 500, D = 8 };
    static const double scale[D] = {5, 3, 1.5, 1, 0.7, 0.5, 0.3, 0.1};
    double q[D][D];
    float *f = malloc(sizeof(float) * N * D), *g = malloc(sizeof(float) * N * D);
    st = 11;
    for (int i = 0; i < N; i++)
        for (int d = 0; d < D; d++)
            f[i * D + d] = (float)(scale[d] * gauss() + (d == 0 ? 1.5 * (i % 3) : 0));
    /* a random orthogonal Q by Gram-Schmidt */
    for (int r = 0; r < D; r++) {
        for (int d = 0; d < D; d++)
            q[r][d] = gauss();
        for (int p = 0; p < r; p++) {
            double dot = 0;
            for (int d = 0; d < D; d++)
                dot += q[r][d] * q[p][d];
            for (int d = 0; d < D; d++)
                q[r][d] -= dot * q[p][d];
        }
        double nr = 0;
        for (int d = 0; d < D; d++)
            nr += q[r][d] * q[r][d];
        for (int d = 0; d < D; d++)
            q[r][d] /= sqrt(nr);
    }
    for (int i = 0; i < N; i++)
        for (int r = 0; r < D; r++) {
            double v = 0;
            for (int d = 0; d < D; d++)
                v += q[r][d] * f[i * D + d];
            g[i * D + r] = (float)(0.25 * v + 10 * r);
        }
    rw_sphere a, b;
    char err[256];
    cr_assert_eq(rw_sphere_fit(f, N, D, NULL, 0, &a, err, sizeof err), 0, "%s", err);
    cr_assert_eq(rw_sphere_fit(g, N, D, NULL, 0, &b, err, sizeof err), 0, "%s", err);
    /* float32 inputs: agreement to ~1e-5 */
    cr_expect(fabs(a.evr[0] - b.evr[0]) < 1e-5 && fabs(a.evr[1] - b.evr[1]) < 1e-5,
              "evr %g %g vs %g %g", a.evr[0], a.evr[1], b.evr[0], b.evr[1]);
    cr_expect(fabs(a.R - b.R) < 1e-4, "R %g vs %g", a.R, b.R);
    cr_expect(fabs(a.uniform - b.uniform) < 1e-4, "uniform %g vs %g", a.uniform, b.uniform);
    cr_expect(fabs(a.densest - b.densest) <= 1.0 / N + 1e-12, "densest %g vs %g", a.densest,
              b.densest);
    free(f);
    free(g);
}

Test(sphere, one_point_is_complete_collapse_and_says_so)
{
    enum { N = 50, D = 4 };
    float f[N * D];
    for (int i = 0; i < N * D; i++)
        f[i] = 0.25f * (float)(i % D);
    rw_sphere sp;
    char err[256] = "";
    cr_assert_eq(rw_sphere_fit(f, N, D, NULL, 0, &sp, err, sizeof err), -1);
    cr_expect(strstr(err, "all 50 representations are the same point (complete collapse)"), "%s",
              err);
    cr_assert_eq(rw_sphere_fit(f, 2, D, NULL, 0, &sp, err, sizeof err), -1);
    cr_expect(strstr(err, "need at least 3"), "%s", err);
}

/* A tiny model (16-d projections) from seed 5 and 600 noise images. */
static rw_model *tiny_model(kb_backend *be, rw_spec *s, rw_dataset *ds)
{
    rw_spec_defaults(s);
    s->seed = 5;
    s->data.image_size = 16;
    s->model.stem = RW_STEM_CIFAR;
    s->model.width = 4;
    s->model.proj_hidden = 32;
    s->model.proj_out = 16;
    s->model.pred_hidden = 32;
    rw_model_cfg mc;
    rw_model_cfg_from_spec(s, &mc);
    char err[512];
    rw_model *m = rw_model_create(be, &mc, s->seed, err, sizeof err);
    cr_assert_not_null(m, "%s", err);
    cr_assert_eq(rw_dataset_noise(600, 9, ds), 0);
    return m;
}

/* A model end to end on noise images: every sample lands on the circle,
 * the density integrates to 1; with the projector's output layer zeroed,
 * every image maps to one point and the error says collapse. */
Test(sphere, model_projections_and_a_collapsed_projector)
{
    kb_backend *be = kb_cpu_create(1);
    rw_spec s;
    rw_dataset ds;
    rw_model *m = tiny_model(be, &s, &ds);
    char err[512];
    rw_sphere sp;
    /* 300 samples: two chunks of the forward pass */
    cr_assert_eq(rw_sphere_model(m, &ds, &s, 300, 3, &sp, err, sizeof err), 0, "%s", err);
    cr_expect_eq(sp.n + sp.n_centre, 300);
    cr_expect_eq(sp.D, 16);
    cr_expect_eq(sp.npairs, 3);
    double integral = 0;
    for (int b = 0; b < RW_SPHERE_BINS; b++)
        integral += sp.density[b] * TWO_PI / RW_SPHERE_BINS;
    cr_expect(fabs(integral - 1) < 1e-9, "%g", integral);
    for (int k = 0; k < 3; k++)
        cr_expect(sp.pair_deg[k][0] >= 0 && sp.pair_deg[k][0] < 360 && sp.pair_deg[k][1] >= 0 &&
                  sp.pair_deg[k][1] < 360, "pair %d: %g %g", k, sp.pair_deg[k][0],
                  sp.pair_deg[k][1]);
    /* the same call again: the same numbers (eval mode, fixed samples) */
    rw_sphere again;
    cr_assert_eq(rw_sphere_model(m, &ds, &s, 300, 3, &again, err, sizeof err), 0, "%s", err);
    cr_expect(again.R == sp.R && again.uniform == sp.uniform &&
              memcmp(again.density, sp.density, sizeof sp.density) == 0);

    const rw_named *w = rw_model_find(m, "projector.3.weight");
    cr_assert_not_null(w);
    be->fill(be, rw_model_params(m) + w->off, 0.0f, w->numel);
    cr_assert_eq(rw_sphere_model(m, &ds, &s, 300, 3, &sp, err, sizeof err), -1);
    cr_expect(strstr(err, "complete collapse"), "%s", err);
    rw_dataset_free(&ds);
    rw_model_free(m);
    kb_destroy(be);
}

/* ---- effective rank ---- */

static double rank_of(const float *f, int n, int D)
{
    double r;
    char err[256];
    cr_assert_eq(rw_effective_rank(f, n, D, &r, err, sizeof err), 0, "%s", err);
    return r;
}

/* Row k of an n x D set: axis `axis[k]` scaled by `scale[k]`. */
static float *axes(const int *axis, const float *scale, int n, int D)
{
    float *f = calloc((size_t)n * D, sizeof(float));
    for (int k = 0; k < n; k++)
        f[(size_t)k * D + axis[k]] = scale[k];
    return f;
}

Test(sphere, effective_rank_of_sets_with_known_singular_values)
{
    /* 4 axes, 5 rows each, at any length: equal singular values, rank 4 */
    int ax[24];
    float sc[24];
    for (int k = 0; k < 20; k++)
        ax[k] = k % 4, sc[k] = 0.1f + (float)k;
    float *f = axes(ax, sc, 20, 4);
    cr_expect(fabs(rank_of(f, 20, 4) - 4) < 1e-12, "%.15g", rank_of(f, 20, 4));
    free(f);
    /* one direction, many lengths: rank 1 (complete collapse) */
    for (int k = 0; k < 20; k++)
        ax[k] = 2;
    f = axes(ax, sc, 20, 4);
    cr_expect(fabs(rank_of(f, 20, 4) - 1) < 1e-12, "%.15g", rank_of(f, 20, 4));
    free(f);
    /* 3 rows on e1, 1 on e2: singular values sqrt 3 and 1, so
     * p = sqrt 3 / (sqrt 3 + 1) and 1 / (sqrt 3 + 1), rank exp(H(p)) */
    int a3[4] = {0, 0, 0, 1};
    float s3[4] = {1, 2, 3, 4};
    f = axes(a3, s3, 4, 8);
    double p = sqrt(3.0) / (sqrt(3.0) + 1), want = exp(-(p * log(p) + (1 - p) * log(1 - p)));
    double got = rank_of(f, 4, 8);
    cr_expect(fabs(got - want) < 1e-12, "rank %.15g, by hand %.15g (1.9287...)", got, want);
    /* a rotation (in the plane of e1 and e5 by 0.7 rad, of e2 and e3 by
     * 2 rad) changes no singular value */
    float *g = malloc(4 * 8 * sizeof(float));
    for (int k = 0; k < 4; k++) {
        const float *r = f + k * 8;
        float *o = g + k * 8;
        memcpy(o, r, 8 * sizeof(float));
        o[0] = cosf(0.7f) * r[0] - sinf(0.7f) * r[4];
        o[4] = sinf(0.7f) * r[0] + cosf(0.7f) * r[4];
        o[1] = cosf(2.0f) * r[1] - sinf(2.0f) * r[2];
        o[2] = sinf(2.0f) * r[1] + cosf(2.0f) * r[2];
    }
    cr_expect(fabs(rank_of(g, 4, 8) - want) < 1e-6, "rotated: %.15g", rank_of(g, 4, 8));
    free(g);
    free(f);
}

Test(sphere, effective_rank_leaves_out_rows_without_direction)
{
    int ax[6] = {0, 1, 0, 1, 0, 1};
    float sc[6] = {1, 1, 0, 0, 2, 3}; /* rows 2 and 3 are zero */
    float *f = axes(ax, sc, 6, 3);
    cr_expect(fabs(rank_of(f, 6, 3) - 2) < 1e-12, "%.15g", rank_of(f, 6, 3));
    memset(f, 0, 6 * 3 * sizeof(float));
    cr_expect(isnan(rank_of(f, 6, 3)), "no direction at all: not measured");
    free(f);
}

/* A model's rank is that of its projections; zeroing the projector's
 * output layer leaves only its bias: one point, rank 1. */
Test(sphere, effective_rank_of_a_model)
{
    kb_backend *be = kb_cpu_create(1);
    rw_spec s;
    rw_dataset ds;
    rw_model *m = tiny_model(be, &s, &ds);
    char err[512];
    float *f = malloc(300 * 16 * sizeof(float));
    cr_assert_eq(rw_project_samples(m, &ds, &s, 300, f, err, sizeof err), 0, "%s", err);
    double r;
    cr_assert_eq(rw_rank_model(m, &ds, &s, 300, &r, err, sizeof err), 0, "%s", err);
    cr_expect_eq(r, rank_of(f, 300, 16));
    cr_expect(r > 1.5 && r < 16, "random init: %g", r);
    cr_assert_eq(rw_rank_model(m, &ds, &s, 100000, &r, err, sizeof err), 0, "%s", err);
    cr_expect(r > 1.5, "more samples than images: all 600 (%g)", r);

    const rw_named *w = rw_model_find(m, "projector.3.weight");
    cr_assert_not_null(w);
    be->fill(be, rw_model_params(m) + w->off, 0.0f, w->numel);
    cr_assert_eq(rw_rank_model(m, &ds, &s, 300, &r, err, sizeof err), 0, "%s", err);
    cr_expect(fabs(r - 1) < 1e-9, "collapsed: %.12g", r);
    free(f);
    rw_dataset_free(&ds);
    rw_model_free(m);
    kb_destroy(be);
}
