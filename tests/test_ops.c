/* CPU backend ops: hand-computed values, naive references and
 * finite-difference checks of every backward.
 *
 * Gradient checks: for an op y = f(x) and a fixed random r, the scalar
 * J(x) = sum r*y (accumulated in double) has dJ/dx = backward(dy = r). Each
 * element of x is perturbed by +-eps and (J+ - J-) / (x+ - x-) is compared
 * with the backward's value, element by element (the tensors are small, so
 * per-element checks are affordable and catch errors confined to a border or
 * a single channel, which a directional check would average away).
 *
 * Tolerance |fd - g| <= 2e-3 + 1e-2 |g|, with eps = 1e-2 and O(1) values:
 * - rounding: y is float (relative error ~6e-8), so J carries an error of
 *   about 6e-8 * sqrt(ny) * |r y| ~ 1e-6 for our sizes; divided by 2 eps
 *   that is ~5e-5, far below 2e-3;
 * - truncation: central differences err by eps^2/6 f''' ~ 2e-5 |f'''|; the
 *   smooth ops here (BN, l2norm, losses, softmax) have |f'''| of order 1..10
 *   on these inputs, so <= 2e-4; conv and linear are linear (no truncation);
 * - nonsmooth ops (ReLU, max pool) get inputs kept > 2 eps from every kink.
 * A wrong factor, sign, missing term or index is an O(1) relative error,
 * about 100x the tolerance. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"
#include "kernels/optim.h"

/* ---- helpers ---- */

static kb_backend *be;

/* Every test buffer is registered and freed at teardown, so the sanitizer
 * build reports only leaks of the backend itself. */
static void *bufs[1024];
static int nbufs;

static void setup_be(void)
{
    be = kb_cpu_create(1);
    cr_assert(be != NULL);
    nbufs = 0;
}

static void teardown_be(void)
{
    for (int i = 0; i < nbufs; i++)
        be->free(be, bufs[i]);
    kb_destroy(be);
}

static uint64_t rng_state;

static void rng_seed(uint64_t s) { rng_state = s * 0x9E3779B97F4A7C15ull + 1; }

static float urand(void) /* uniform in [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static float *fa(size_t n)
{
    float *p = be->alloc(be, n * sizeof(float));
    cr_assert(p != NULL);
    cr_assert(nbufs < (int)(sizeof bufs / sizeof bufs[0]));
    bufs[nbufs++] = p;
    return p;
}

static float *frand(size_t n)
{
    float *p = fa(n);
    for (size_t i = 0; i < n; i++)
        p[i] = urand();
    return p;
}

static void unit_rows(float *x, int N, int D)
{
    for (int i = 0; i < N; i++) {
        double s = 0;
        for (int d = 0; d < D; d++)
            s += (double)x[i * D + d] * x[i * D + d];
        for (int d = 0; d < D; d++)
            x[i * D + d] = (float)(x[i * D + d] / sqrt(s));
    }
}

static double dotd(const float *a, const float *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)a[i] * b[i];
    return s;
}

/* Scalar objective of one forward evaluation at the current inputs. */
typedef double (*objective_fn)(void *ctx);

/* Checks grad[i] ~ dJ/dparam[i] for all i (see the tolerance note above). */
static void check_grad(const char *what, objective_fn J, void *ctx, float *param, size_t n,
                       const float *grad, float eps)
{
    double worst = 0;
    size_t wi = 0;
    double wfd = 0;
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        float x0 = param[i];
        float xp = x0 + eps, xm = x0 - eps;
        param[i] = xp;
        double jp = J(ctx);
        param[i] = xm;
        double jm = J(ctx);
        param[i] = x0;
        double fd = (jp - jm) / ((double)xp - xm);
        double err = fabs(fd - grad[i]);
        double tol = 2e-3 + 1e-2 * fabs(grad[i]);
        if (err > tol)
            bad++;
        if (err / tol > worst) {
            worst = err / tol;
            wi = i;
            wfd = fd;
        }
    }
    cr_expect(bad == 0, "%s: %d of %zu elements off; worst [%zu]: fd %.6g vs backward %.6g", what,
              bad, n, wi, wfd, (double)grad[wi]);
}

static void expect_close(const char *what, const float *got, const double *want, size_t n,
                         double atol, double rtol)
{
    for (size_t i = 0; i < n; i++)
        cr_expect(fabs(got[i] - want[i]) <= atol + rtol * fabs(want[i]),
                  "%s[%zu]: got %.9g want %.9g", what, i, (double)got[i], want[i]);
}

/* ---- elementwise and memory ---- */

TestSuite(ops, .init = setup_be, .fini = teardown_be);

Test(ops, memory_and_elementwise)
{
    float *x = be->alloc(be, 100003 * sizeof(float));
    cr_assert(x != NULL);
    for (size_t i = 0; i < 100003; i++)
        cr_assert(x[i] == 0.0f, "alloc must zero-fill");
    float h[5] = {1, 2, 3, 4, 5}, g[5];
    be->upload(be, x, h, sizeof h);
    be->scale(be, x, 2.0f, 5);
    be->scale(be, x, 3.0f, 5); /* x = 6 h */
    be->download(be, g, x, sizeof g);
    for (int i = 0; i < 5; i++)
        cr_expect(g[i] == 6.0f * h[i]);
    be->fill(be, x, -1.5f, 100003);
    float *y = be->alloc(be, 100003 * sizeof(float));
    cr_assert(y != NULL);
    be->copy(be, y, x, 100003 * sizeof(float));
    cr_expect(y[0] == -1.5f && y[100002] == -1.5f);
    be->sync(be);
    be->free(be, x);
    be->free(be, y);
    cr_expect(strcmp(be->name, "cpu") == 0);
}

/* ---- convolution ---- */

static void conv_naive(const kb_conv_desc *d, const float *x, const float *w, float *y)
{
    for (int n = 0; n < d->N; n++)
        for (int k = 0; k < d->K; k++)
            for (int p = 0; p < d->P; p++)
                for (int q = 0; q < d->Q; q++) {
                    double s = 0;
                    for (int c = 0; c < d->C; c++)
                        for (int r = 0; r < d->R; r++)
                            for (int t = 0; t < d->S; t++) {
                                int h = p * d->stride - d->pad + r;
                                int ww = q * d->stride - d->pad + t;
                                if (h < 0 || h >= d->H || ww < 0 || ww >= d->W)
                                    continue;
                                s += (double)x[((n * d->C + c) * d->H + h) * d->W + ww] *
                                     w[((k * d->C + c) * d->R + r) * d->S + t];
                            }
                    y[((n * d->K + k) * d->P + p) * d->Q + q] = (float)s;
                }
}

/* N C H W K R S stride pad */
static const int conv_shapes[][9] = {
    {2, 3, 5, 5, 4, 3, 3, 1, 1},  /* tiny, 3x3/1 */
    {2, 3, 5, 5, 4, 3, 3, 2, 1},  /* 3x3/2, odd input */
    {2, 3, 6, 6, 4, 3, 3, 2, 1},  /* 3x3/2, even input: right pad 0 */
    {1, 2, 9, 9, 3, 7, 7, 2, 3},  /* 7x7/2 stem */
    {2, 5, 6, 6, 3, 1, 1, 2, 0},  /* 1x1/2 shortcut: right pad -1 */
    {3, 16, 8, 8, 32, 3, 3, 1, 1}, /* blocked layouts kick in */
    {2, 20, 7, 9, 17, 3, 3, 2, 1}, /* non-square, odd channels */
};

Test(ops, conv_forward_vs_naive)
{
    rng_seed(1);
    for (size_t s = 0; s < sizeof conv_shapes / sizeof conv_shapes[0]; s++) {
        const int *v = conv_shapes[s];
        kb_conv_desc d;
        kb_conv_desc_init(&d, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]);
        kb_conv *c = be->conv_plan(be, &d);
        cr_assert(c, "conv_plan failed for shape %zu", s);
        size_t nx = (size_t)d.N * d.C * d.H * d.W, nw = (size_t)d.K * d.C * d.R * d.S;
        size_t ny = (size_t)d.N * d.K * d.P * d.Q;
        float *x = frand(nx), *w = frand(nw), *y = fa(ny), *ref = fa(ny);
        be->conv_forward(be, c, x, w, NULL, y);
        conv_naive(&d, x, w, ref);
        /* float accumulation over C*R*S <= 180 terms of size <= 1: error
         * well under 1e-4; any indexing error is O(1). */
        for (size_t i = 0; i < ny; i++)
            cr_expect(fabsf(y[i] - ref[i]) <= 1e-4f + 1e-5f * fabsf(ref[i]),
                      "shape %zu y[%zu] = %g, naive %g", s, i, y[i], ref[i]);
        be->conv_free(be, c);
    }
}

Test(ops, conv_tiny_hand)
{
    /* 3x3 image 1..9, 3x3 kernel of ones, pad 1: sums of 3x3 neighborhoods. */
    float x[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9}, w[9], y[9];
    for (int i = 0; i < 9; i++)
        w[i] = 1;
    kb_conv_desc d;
    kb_conv_desc_init(&d, 1, 1, 3, 3, 1, 3, 3, 1, 1);
    kb_conv *c = be->conv_plan(be, &d);
    cr_assert(c);
    be->conv_forward(be, c, x, w, NULL, y);
    const double want[9] = {12, 21, 16, 27, 45, 33, 24, 39, 28};
    expect_close("conv 3x3/1", y, want, 9, 1e-5, 0);
    be->conv_free(be, c);

    kb_conv_desc_init(&d, 1, 1, 3, 3, 1, 3, 3, 2, 1); /* stride 2: the corners */
    cr_assert(d.P == 2 && d.Q == 2);
    c = be->conv_plan(be, &d);
    cr_assert(c);
    be->conv_forward(be, c, x, w, NULL, y);
    const double want2[4] = {12, 16, 24, 28};
    expect_close("conv 3x3/2", y, want2, 4, 1e-5, 0);
    be->conv_free(be, c);
}

typedef struct conv_ctx {
    kb_conv *c;
    kb_conv_desc d;
    float *x, *w, *y, *r;
} conv_ctx;

static double conv_obj(void *p)
{
    conv_ctx *t = p;
    be->conv_forward(be, t->c, t->x, t->w, NULL, t->y);
    return dotd(t->y, t->r, (size_t)t->d.N * t->d.K * t->d.P * t->d.Q);
}

Test(ops, conv_gradients)
{
    rng_seed(2);
    for (size_t s = 0; s < 5; s++) {
        const int *v = conv_shapes[s];
        conv_ctx t;
        kb_conv_desc_init(&t.d, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]);
        t.c = be->conv_plan(be, &t.d);
        cr_assert(t.c);
        size_t nx = (size_t)t.d.N * t.d.C * t.d.H * t.d.W, nw = (size_t)t.d.K * t.d.C * t.d.R * t.d.S;
        size_t ny = (size_t)t.d.N * t.d.K * t.d.P * t.d.Q;
        t.x = frand(nx), t.w = frand(nw), t.y = fa(ny), t.r = frand(ny);
        float *dx = fa(nx), *dw = fa(nw), *dw2 = fa(nw);
        be->fill(be, dx, 123.0f, nx); /* dx is written, whatever was there */
        be->conv_backward_data(be, t.c, t.r, t.w, NULL, dx, 0);
        be->conv_backward_weight(be, t.c, t.x, t.r, dw);
        char what[64];
        snprintf(what, sizeof what, "conv shape %zu dx", s);
        check_grad(what, conv_obj, &t, t.x, nx, dx, 1e-2f);
        snprintf(what, sizeof what, "conv shape %zu dw", s);
        check_grad(what, conv_obj, &t, t.w, nw, dw, 1e-2f);

        /* dw accumulates: starting from 0.5, two calls give 0.5 + 2 g. */
        be->fill(be, dw2, 0.5f, nw);
        be->conv_backward_weight(be, t.c, t.x, t.r, dw2);
        be->conv_backward_weight(be, t.c, t.x, t.r, dw2);
        for (size_t i = 0; i < nw; i++)
            cr_expect(fabsf(dw2[i] - (0.5f + 2 * dw[i])) <= 1e-5f * (1 + fabsf(dw[i])),
                      "conv dw must accumulate: [%zu] %g vs %g", i, dw2[i], 0.5f + 2 * dw[i]);
        /* dx adds to what is there when asked (the residual's gradient) */
        float *dx2 = fa(nx);
        be->fill(be, dx2, 0.25f, nx);
        be->conv_backward_data(be, t.c, t.r, t.w, NULL, dx2, 1);
        for (size_t i = 0; i < nx; i++)
            cr_expect(fabsf(dx2[i] - (0.25f + dx[i])) <= 1e-5f * (1 + fabsf(dx[i])),
                      "conv dx must add: [%zu] %g vs %g", i, dx2[i], 0.25f + dx[i]);
        be->conv_free(be, t.c);
    }
}

/* ResNet-50's bottleneck shapes at the tests' width 4, where oneDNN (AVX-512)
 * keeps 4- and 8-channel maps in 16-channel blocks whose padding must stay
 * zero through our reorders, and where dx and dw are accumulated through a
 * reorder with a sum post-op: every direction against the naive sums, in
 * double, one plan after another through the shared arena (stale padding
 * or a size taken from the logical dims would show as O(1) errors). */
static const int bottleneck_shapes[][9] = {
    {2, 4, 8, 8, 16, 1, 1, 1, 0},   /* conv3: 4 -> 16 */
    {2, 16, 8, 8, 4, 1, 1, 1, 0},   /* conv1: 16 -> 4 */
    {2, 4, 8, 8, 4, 3, 3, 1, 1},    /* conv2: 4 -> 4, both padded */
    {2, 8, 8, 8, 8, 3, 3, 2, 1},    /* conv2 of a stage's first block */
    {2, 16, 8, 8, 32, 1, 1, 2, 0},  /* 1x1/2 downsample */
    {2, 64, 4, 4, 128, 1, 1, 2, 0}, /* layer4's downsample */
    {2, 64, 4, 4, 32, 1, 1, 1, 0},  /* layer4's conv1 */
};

static void expect_near(const char *what, size_t s, const float *got, const double *want,
                        size_t n)
{
    int bad = 0;
    size_t wi = 0;
    for (size_t i = 0; i < n; i++)
        if (!(fabs(got[i] - want[i]) <= 1e-4 + 1e-5 * fabs(want[i])) && bad++ == 0)
            wi = i;
    cr_expect(bad == 0, "bottleneck shape %zu %s: %d of %zu off; first [%zu] %.9g want %.9g", s,
              what, bad, n, wi, bad ? (double)got[wi] : 0.0, bad ? want[wi] : 0.0);
}

Test(ops, conv_bottleneck_blocked_vs_naive)
{
    enum { NS = sizeof bottleneck_shapes / sizeof bottleneck_shapes[0] };
    kb_conv *plans[NS];
    kb_conv_desc ds[NS];
    for (size_t s = 0; s < NS; s++) { /* all planned first: the arena at its largest */
        const int *v = bottleneck_shapes[s];
        kb_conv_desc_init(&ds[s], v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]);
        plans[s] = be->conv_plan(be, &ds[s]);
        cr_assert(plans[s], "conv_plan failed for bottleneck shape %zu", s);
    }
    rng_seed(4);
    for (size_t s = 0; s < NS; s++) {
        const kb_conv_desc d = ds[s];
        size_t nx = (size_t)d.N * d.C * d.H * d.W, nw = (size_t)d.K * d.C * d.R * d.S;
        size_t ny = (size_t)d.N * d.K * d.P * d.Q;
        float *x = frand(nx), *w = frand(nw), *dy = frand(ny), *y = fa(ny);
        float *dx = fa(nx), *dxa = frand(nx), *dw = frand(nw);
        double *ry = calloc(ny, sizeof(double)), *rdx = calloc(nx, sizeof(double));
        double *rdxa = calloc(nx, sizeof(double)), *rdw = calloc(nw, sizeof(double));
        cr_assert(ry && rdx && rdxa && rdw);
        for (size_t i = 0; i < nx; i++)
            rdxa[i] = dxa[i];
        for (size_t i = 0; i < nw; i++)
            rdw[i] = dw[i];
        for (int n = 0; n < d.N; n++)
            for (int k = 0; k < d.K; k++)
                for (int p = 0; p < d.P; p++)
                    for (int q = 0; q < d.Q; q++) {
                        size_t yi = ((size_t)(n * d.K + k) * d.P + p) * d.Q + q;
                        for (int c = 0; c < d.C; c++)
                            for (int r = 0; r < d.R; r++)
                                for (int t = 0; t < d.S; t++) {
                                    int h = p * d.stride - d.pad + r;
                                    int ww = q * d.stride - d.pad + t;
                                    if (h < 0 || h >= d.H || ww < 0 || ww >= d.W)
                                        continue;
                                    size_t xi = ((size_t)(n * d.C + c) * d.H + h) * d.W + ww;
                                    size_t wi = ((size_t)(k * d.C + c) * d.R + r) * d.S + t;
                                    ry[yi] += (double)x[xi] * w[wi];
                                    rdx[xi] += (double)dy[yi] * w[wi];
                                    rdxa[xi] += (double)dy[yi] * w[wi];
                                    rdw[wi] += (double)dy[yi] * x[xi];
                                }
                    }
        be->fill(be, dx, 123.0f, nx); /* written, whatever was there */
        be->conv_forward(be, plans[s], x, w, NULL, y);
        be->conv_backward_data(be, plans[s], dy, w, NULL, dx, 0);
        be->conv_backward_data(be, plans[s], dy, w, NULL, dxa, 1);
        be->conv_backward_weight(be, plans[s], x, dy, dw);
        expect_near("y", s, y, ry, ny);
        expect_near("dx", s, dx, rdx, nx);
        expect_near("dx added", s, dxa, rdxa, nx);
        expect_near("dw added", s, dw, rdw, nw);
        free(ry);
        free(rdx);
        free(rdxa);
        free(rdw);
    }
    for (size_t s = 0; s < NS; s++)
        be->conv_free(be, plans[s]);
}

Test(ops, deterministic_two_threads)
{
    kb_backend *b2 = kb_cpu_create(2);
    cr_assert(b2);
    rng_seed(3);
    kb_conv_desc d;
    kb_conv_desc_init(&d, 8, 32, 16, 16, 64, 3, 3, 2, 1);
    kb_conv *c = b2->conv_plan(b2, &d);
    cr_assert(c);
    size_t nx = (size_t)d.N * d.C * d.H * d.W, nw = (size_t)d.K * d.C * d.R * d.S;
    size_t ny = (size_t)d.N * d.K * d.P * d.Q;
    float *x = frand(nx), *w = frand(nw), *dy = frand(ny);
    float *y[2] = {fa(ny), fa(ny)}, *dx[2] = {fa(nx), fa(nx)}, *dw[2] = {fa(nw), fa(nw)};
    for (int k = 0; k < 2; k++) {
        b2->conv_forward(b2, c, x, w, NULL, y[k]);
        b2->conv_backward_data(b2, c, dy, w, NULL, dx[k], 0);
        b2->conv_backward_weight(b2, c, x, dy, dw[k]);
    }
    cr_expect(memcmp(y[0], y[1], ny * 4) == 0, "forward not bitwise repeatable");
    cr_expect(memcmp(dx[0], dx[1], nx * 4) == 0, "backward data not bitwise repeatable");
    cr_expect(memcmp(dw[0], dw[1], nw * 4) == 0, "backward weights not bitwise repeatable");
    b2->conv_free(b2, c);

    /* linear through threaded OpenBLAS: big enough that both threads work */
    int N = 64, I = 512, O = 256;
    float *lx = frand((size_t)N * I), *lw = frand((size_t)O * I), *lb = frand(O);
    float *ldy = frand((size_t)N * O);
    float *ly[2] = {fa((size_t)N * O), fa((size_t)N * O)};
    float *ldx[2] = {fa((size_t)N * I), fa((size_t)N * I)};
    float *ldw[2] = {fa((size_t)O * I), fa((size_t)O * I)};
    for (int k = 0; k < 2; k++) {
        b2->linear_forward(b2, lx, N, I, lw, NULL, lb, O, ly[k]);
        b2->linear_backward(b2, lx, lw, NULL, ldy, N, I, O, ldx[k], ldw[k], NULL);
    }
    cr_expect(memcmp(ly[0], ly[1], (size_t)N * O * 4) == 0, "linear forward not repeatable");
    cr_expect(memcmp(ldx[0], ldx[1], (size_t)N * I * 4) == 0, "linear dx not repeatable");
    cr_expect(memcmp(ldw[0], ldw[1], (size_t)O * I * 4) == 0, "linear dw not repeatable");
    kb_destroy(b2);
}

Test(ops, conv_plan_rejects_bad_desc)
{
    kb_conv_desc d;
    kb_conv_desc_init(&d, 2, 3, 5, 5, 4, 3, 3, 1, 1);
    d.P = 7; /* inconsistent with the input */
    cr_expect(be->conv_plan(be, &d) == NULL);
    kb_conv_desc_init(&d, 2, 3, 2, 2, 4, 7, 7, 1, 0); /* kernel larger than input */
    cr_expect(be->conv_plan(be, &d) == NULL);
}

/* ---- batch norm ---- */

/* The op descriptor of a batch norm of (N, C, HW) in `groups` groups. */
static kb_bn bn_of(int N, int C, int HW, int groups, const float *gamma, const float *beta,
                   float *rm, float *rv, float *sm, float *si)
{
    return (kb_bn){.N = N, .C = C, .HW = HW, .groups = groups, .eps = 1e-5f, .momentum = 0.1f,
                   .gamma = gamma, .beta = beta, .running_mean = rm, .running_var = rv,
                   .save_mean = sm, .save_invstd = si};
}

Test(ops, bn_train_hand)
{
    /* N=2, C=2, HW=2. Channel 0 holds {1,2,3,4}: mean 2.5, biased var 1.25,
     * unbiased var 5/3. Channel 1 holds {10,10,10,14}: mean 11, var 3, 4. */
    float x[8] = {1, 2, 10, 10, 3, 4, 10, 14};
    float gamma[2] = {2, 0.5f}, beta[2] = {1, -1};
    float rm[2] = {0, 1}, rv[2] = {1, 2};
    float y[8], sm[2], si[2];
    kb_bn b = bn_of(2, 2, 2, 1, gamma, beta, rm, rv, sm, si);
    be->bn_forward(be, &b, x, NULL, 0, NULL, y);
    double i0 = 1 / sqrt(1.25 + 1e-5), i1 = 1 / sqrt(3 + 1e-5);
    double want[8] = {2 * (1 - 2.5) * i0 + 1, 2 * (2 - 2.5) * i0 + 1, 0.5 * (10 - 11) * i1 - 1,
                      0.5 * (10 - 11) * i1 - 1, 2 * (3 - 2.5) * i0 + 1, 2 * (4 - 2.5) * i0 + 1,
                      0.5 * (10 - 11) * i1 - 1, 0.5 * (14 - 11) * i1 - 1};
    expect_close("bn y", y, want, 8, 1e-6, 1e-6);
    const double wm[2] = {2.5, 11}, wi[2] = {i0, i1};
    expect_close("bn save_mean", sm, wm, 2, 1e-6, 1e-6);
    expect_close("bn save_invstd", si, wi, 2, 1e-6, 1e-6);
    /* running: (1 - 0.1) r + 0.1 stat, with the unbiased variance */
    const double wrm[2] = {0.25, 0.9 + 1.1}, wrv[2] = {0.9 + 0.1 * 5.0 / 3.0, 1.8 + 0.4};
    expect_close("bn running_mean", rm, wrm, 2, 1e-6, 1e-6);
    expect_close("bn running_var", rv, wrv, 2, 1e-6, 1e-6);

    /* NULL running stats are allowed */
    float y2[8];
    b.running_mean = b.running_var = NULL;
    be->bn_forward(be, &b, x, NULL, 0, NULL, y2);
    cr_expect(memcmp(y, y2, sizeof y) == 0);

    /* with a residual and ReLU: relu(y + res), by hand */
    float res[8] = {0, 5, 0, 0, -9, 0, 3, 0}, y3[8];
    b.relu = 1;
    be->bn_forward(be, &b, x, NULL, 0, res, y3);
    for (int i = 0; i < 8; i++)
        want[i] = fmax(0.0, want[i] + res[i]);
    expect_close("bn relu(y + res)", y3, want, 8, 1e-6, 1e-6);
}

Test(ops, bn_eval_hand)
{
    float x[4] = {1, 2, 3, 4}; /* N=2, C=2, HW=1 */
    float gamma[2] = {2, 3}, beta[2] = {0.5f, -0.5f}, rm[2] = {1, 2}, rv[2] = {4, 0.25f};
    float y[4];
    kb_bn b = bn_of(2, 2, 1, 1, gamma, beta, rm, rv, NULL, NULL);
    b.eps = 0.0f;
    be->bn_forward_eval(be, &b, x, NULL, y);
    double want[4] = {2 * 0 / 2.0 + 0.5, 3 * 0 / 0.5 - 0.5, 2 * 2 / 2.0 + 0.5,
                      3 * 2 / 0.5 - 0.5};
    expect_close("bn eval", y, want, 4, 1e-6, 1e-6);
    float res[4] = {-1, 0, -10, 1};
    b.relu = 1;
    be->bn_forward_eval(be, &b, x, res, y);
    for (int i = 0; i < 4; i++)
        want[i] = fmax(0.0, want[i] + res[i]);
    expect_close("bn eval relu(y + res)", y, want, 4, 1e-6, 1e-6);
}

typedef struct bn_ctx {
    int N, C, HW;
    float *x, *gamma, *beta, *y, *r, *sm, *si;
} bn_ctx;

static double bn_obj(void *p)
{
    bn_ctx *t = p;
    kb_bn b = bn_of(t->N, t->C, t->HW, 1, t->gamma, t->beta, NULL, NULL, t->sm, t->si);
    be->bn_forward(be, &b, t->x, NULL, 0, NULL, t->y);
    return dotd(t->y, t->r, (size_t)t->N * t->C * t->HW);
}

Test(ops, bn_gradients)
{
    rng_seed(4);
    const int shapes[2][3] = {{3, 2, 4}, {6, 3, 1}}; /* BatchNorm2d-like, BatchNorm1d */
    for (int s = 0; s < 2; s++) {
        bn_ctx t = {.N = shapes[s][0], .C = shapes[s][1], .HW = shapes[s][2]};
        size_t n = (size_t)t.N * t.C * t.HW;
        t.x = frand(n), t.y = fa(n), t.r = frand(n), t.sm = fa(t.C), t.si = fa(t.C);
        t.gamma = frand(t.C), t.beta = frand(t.C);
        for (int c = 0; c < t.C; c++)
            t.gamma[c] += 2.0f; /* away from 0 so that dx is not trivially small */
        float *dx = fa(n), *dg = fa(t.C), *db = fa(t.C);
        kb_bn b = bn_of(t.N, t.C, t.HW, 1, t.gamma, t.beta, NULL, NULL, t.sm, t.si);
        bn_obj(&t);
        be->bn_backward(be, &b, t.x, t.y, t.r, NULL, dg, db, dx, NULL);
        check_grad(s ? "bn1d dx" : "bn2d dx", bn_obj, &t, t.x, n, dx, 1e-2f);
        check_grad(s ? "bn1d dgamma" : "bn2d dgamma", bn_obj, &t, t.gamma, t.C, dg, 1e-2f);
        check_grad(s ? "bn1d dbeta" : "bn2d dbeta", bn_obj, &t, t.beta, t.C, db, 1e-2f);
        /* a second call doubles the parameter gradients and rewrites dx */
        float *dx2 = fa(n), *dg2 = fa(t.C), *db2 = fa(t.C);
        be->fill(be, dx2, 7.0f, n);
        bn_obj(&t);
        be->bn_backward(be, &b, t.x, t.y, t.r, NULL, dg2, db2, dx2, NULL);
        be->bn_backward(be, &b, t.x, t.y, t.r, NULL, dg2, db2, dx2, NULL);
        for (int c = 0; c < t.C; c++) {
            cr_expect(fabsf(dg2[c] - 2 * dg[c]) <= 1e-6f * (1 + fabsf(dg[c])), "dgamma accumulates");
            cr_expect(fabsf(db2[c] - 2 * db[c]) <= 1e-6f * (1 + fabsf(db[c])), "dbeta accumulates");
        }
        cr_expect(memcmp(dx, dx2, n * sizeof(float)) == 0, "dx is written, not accumulated");
    }
}

/* Both views as one batch in two groups give the bits of two batches run
 * one after the other: outputs, saved statistics, running statistics
 * (updated group after group), gradients. */
Test(ops, bn_groups_are_separate_batches)
{
    rng_seed(41);
    const int N = 8, C = 3, HW = 5, h = N / 2;
    const size_t n = (size_t)N * C * HW, hn = n / 2;
    float *x = frand(n), *dy = frand(n), *g = frand(C), *bt = frand(C);
    for (size_t i = hn; i < n; i++)
        x[i] = 3.0f * x[i] - 1.0f; /* the groups' statistics differ */
    float *rm = fa(C), *rv = fa(C), *rm2 = fa(C), *rv2 = fa(C);
    be->fill(be, rv, 1.0f, C);
    be->fill(be, rv2, 1.0f, C);
    float *y = fa(n), *sm = fa(2 * C), *si = fa(2 * C), *dx = fa(n), *dg = fa(C), *db = fa(C);
    kb_bn b = bn_of(N, C, HW, 2, g, bt, rm, rv, sm, si);
    be->bn_forward(be, &b, x, NULL, 0, NULL, y);
    be->bn_backward(be, &b, x, y, dy, NULL, dg, db, dx, NULL);

    float *y2 = fa(n), *sm2 = fa(2 * C), *si2 = fa(2 * C), *dx2 = fa(n), *dg2 = fa(C), *db2 = fa(C);
    for (int v = 0; v < 2; v++) {
        kb_bn bv = bn_of(h, C, HW, 1, g, bt, rm2, rv2, sm2 + v * C, si2 + v * C);
        be->bn_forward(be, &bv, x + v * hn, NULL, 0, NULL, y2 + v * hn);
    }
    for (int v = 0; v < 2; v++) {
        kb_bn bv = bn_of(h, C, HW, 1, g, bt, NULL, NULL, sm2 + v * C, si2 + v * C);
        be->bn_backward(be, &bv, x + v * hn, y2 + v * hn, dy + v * hn, NULL, dg2, db2,
                        dx2 + v * hn, NULL);
    }
    cr_expect(memcmp(y, y2, n * 4) == 0, "y");
    cr_expect(memcmp(sm, sm2, 2 * C * 4) == 0 && memcmp(si, si2, 2 * C * 4) == 0, "saved stats");
    cr_expect(memcmp(rm, rm2, C * 4) == 0 && memcmp(rv, rv2, C * 4) == 0, "running stats");
    cr_expect(memcmp(dx, dx2, n * 4) == 0, "dx");
    cr_expect(memcmp(dg, dg2, C * 4) == 0 && memcmp(db, db2, C * 4) == 0, "dgamma, dbeta");
}

/* The fused ReLU and residual give the bits of the ops done one by one:
 * y = relu(bn(x) + res); backward: g = dy where y > 0, dx = bn_backward(g),
 * dres = g. */
Test(ops, bn_relu_residual_is_the_composition)
{
    rng_seed(42);
    const int N = 4, C = 3, HW = 7;
    const size_t n = (size_t)N * C * HW;
    float *x = frand(n), *res = frand(n), *dy = frand(n), *g = frand(C), *bt = frand(C);
    float *sm = fa(C), *si = fa(C), *y = fa(n), *dx = fa(n), *dres = fa(n);
    float *dg = fa(C), *db = fa(C);
    kb_bn b = bn_of(N, C, HW, 1, g, bt, NULL, NULL, sm, si);
    b.relu = 1;
    be->bn_forward(be, &b, x, NULL, 0, res, y);
    be->bn_backward(be, &b, x, y, dy, NULL, dg, db, dx, dres);

    float *t = fa(n), *gm = fa(n), *dx2 = fa(n), *dg2 = fa(C), *db2 = fa(C);
    kb_bn p = b;
    p.relu = 0;
    be->bn_forward(be, &p, x, NULL, 0, NULL, t);
    int pos = 0;
    for (size_t i = 0; i < n; i++) {
        float v = t[i] + res[i];
        t[i] = v > 0.0f ? v : 0.0f;
        gm[i] = t[i] > 0.0f ? dy[i] : 0.0f;
        pos += t[i] > 0.0f;
    }
    cr_assert(pos > 0 && pos < (int)n, "the ReLU must cut somewhere (%d of %zu pass)", pos, n);
    be->bn_backward(be, &p, x, t, gm, NULL, dg2, db2, dx2, NULL);
    cr_expect(memcmp(y, t, n * 4) == 0, "y");
    cr_expect(memcmp(dres, gm, n * 4) == 0, "dres");
    cr_expect(memcmp(dx, dx2, n * 4) == 0, "dx");
    cr_expect(memcmp(dg, dg2, C * 4) == 0 && memcmp(db, db2, C * 4) == 0, "dgamma, dbeta");
}

/* Without a residual the ReLU's mask can be made again from x: the same
 * gradients as reading y, bit for bit. */
Test(ops, bn_relu_mask_from_x_is_the_mask_from_y)
{
    rng_seed(43);
    const int N = 6, C = 3, HW = 9;
    const size_t n = (size_t)N * C * HW;
    float *x = frand(n), *dy = frand(n), *g = frand(C), *bt = frand(C);
    float *sm = fa(2 * C), *si = fa(2 * C), *y = fa(n);
    float *dx[2] = {fa(n), fa(n)}, *dg[2] = {fa(C), fa(C)}, *db[2] = {fa(C), fa(C)};
    float *red[2] = {fa(4 * C), fa(4 * C)};
    kb_bn b = bn_of(N, C, HW, 2, g, bt, NULL, NULL, sm, si);
    b.relu = 1;
    be->bn_forward(be, &b, x, NULL, 0, NULL, y);
    for (int k = 0; k < 2; k++) {
        be->bn_backward(be, &b, x, k ? NULL : y, dy, NULL, dg[k], db[k], dx[k], NULL);
        be->bn_backward_reduce(be, &b, x, k ? NULL : y, dy, red[k], dg[k], db[k]);
    }
    cr_expect(memcmp(dx[0], dx[1], n * 4) == 0, "dx");
    cr_expect(memcmp(dg[0], dg[1], C * 4) == 0 && memcmp(db[0], db[1], C * 4) == 0, "dgamma, dbeta");
    cr_expect(memcmp(red[0], red[1], 4 * C * 4) == 0, "the SyncBN reduction");
}

Test(ops, bn_thread_count_invariant)
{
    /* Our loops reduce each channel on one thread in a fixed order, so the
     * result does not depend on the thread count at all. */
    kb_backend *b2 = kb_cpu_create(2);
    rng_seed(5);
    int N = 16, C = 8, HW = 300;
    size_t n = (size_t)N * C * HW;
    float *x = frand(n), *g = frand(C), *b = frand(C), *dy = frand(n);
    float *y1 = fa(n), *y2 = fa(n), *m1 = fa(2 * C), *m2 = fa(2 * C), *s1 = fa(2 * C), *s2 = fa(2 * C);
    float *dx1 = fa(n), *dx2 = fa(n), *dg1 = fa(C), *dg2 = fa(C), *db1 = fa(C), *db2 = fa(C);
    kb_bn d1 = bn_of(N, C, HW, 2, g, b, NULL, NULL, m1, s1), d2 = d1;
    d1.relu = d2.relu = 1;
    d2.save_mean = m2, d2.save_invstd = s2;
    be->bn_forward(be, &d1, x, NULL, 0, NULL, y1);
    b2->bn_forward(b2, &d2, x, NULL, 0, NULL, y2);
    be->bn_backward(be, &d1, x, y1, dy, NULL, dg1, db1, dx1, NULL);
    b2->bn_backward(b2, &d2, x, y2, dy, NULL, dg2, db2, dx2, NULL);
    cr_expect(memcmp(y1, y2, n * 4) == 0);
    cr_expect(memcmp(dx1, dx2, n * 4) == 0);
    cr_expect(memcmp(dg1, dg2, C * 4) == 0);
    kb_destroy(b2);
}

/* ---- relu, pooling ---- */

typedef struct un_ctx { /* unary ops: y = f(x) */
    size_t nx, ny;
    float *x, *y, *r;
    int N, C, H, W;
    int kind; /* 0 relu, 1 avgpool */
} un_ctx;

static double un_obj(void *p)
{
    un_ctx *t = p;
    if (t->kind == 0)
        be->relu_forward(be, t->x, t->y, t->nx);
    else
        be->avgpool_forward(be, t->x, t->N, t->C, t->H * t->W, t->y);
    return dotd(t->y, t->r, t->ny);
}

/* Values spaced 0.05 apart in random order, all |x| >= 0.025: no ties and
 * no kinks within eps = 1e-2 of any input. */
static float *spaced(size_t n)
{
    float *x = fa(n);
    for (size_t i = 0; i < n; i++)
        x[i] = 0.05f * ((float)i - (float)n / 2) + 0.025f;
    for (size_t i = n - 1; i > 0; i--) {
        size_t j = (size_t)((urand() + 1) * 0.5f * (float)(i + 1)) % (i + 1);
        float t = x[i];
        x[i] = x[j], x[j] = t;
    }
    return x;
}

Test(ops, relu)
{
    rng_seed(6);
    un_ctx t = {.nx = 40, .ny = 40, .kind = 0};
    t.x = spaced(40), t.y = fa(40), t.r = frand(40);
    float *dx = fa(40);
    un_obj(&t);
    for (int i = 0; i < 40; i++)
        cr_expect(t.y[i] == (t.x[i] > 0 ? t.x[i] : 0));
    be->relu_backward(be, t.y, t.r, dx, 40);
    check_grad("relu dx", un_obj, &t, t.x, 40, dx, 1e-2f);
    /* in place: y aliases x, dx aliases dy */
    float *dy = fa(40);
    memcpy(dy, t.r, 160);
    be->relu_forward(be, t.x, t.x, 40);
    be->relu_backward(be, t.x, dy, dy, 40);
    cr_expect(memcmp(dy, dx, 160) == 0);
}

/* ---- the stem's max pool, folded into the batch norm (kb_bn.pool) ---- */

/* A plain max pool of `planes` (H, W) planes: only in-bounds elements
 * compete, the first maximum in row-major order wins, the first NaN of a
 * window wins. idx: the winners' places in their windows (dh k + dw). */
static void plain_maxpool(const float *x, int planes, int H, int W, int k, int stride, int pad,
                          float *y, uint8_t *idx)
{
    const int P = kb_pool_out(H, k, stride, pad), Q = kb_pool_out(W, k, stride, pad);
    for (int c = 0; c < planes; c++)
        for (int p = 0; p < P; p++)
            for (int q = 0; q < Q; q++) {
                const float *xp = x + (size_t)c * H * W;
                const int h0 = p * stride - pad, w0 = q * stride - pad;
                float best = -INFINITY;
                int bi = -1, found_nan = 0;
                for (int h = h0; h < h0 + k; h++)
                    for (int w = w0; w < w0 + k; w++) {
                        if (h < 0 || h >= H || w < 0 || w >= W || found_nan)
                            continue;
                        float v = xp[h * W + w];
                        if (isnan(v)) {
                            best = v;
                            bi = (h - h0) * k + (w - w0);
                            found_nan = 1;
                        } else if (bi < 0 || v > best) {
                            best = v;
                            bi = (h - h0) * k + (w - w0);
                        }
                    }
                y[((size_t)c * P + p) * Q + q] = best;
                idx[((size_t)c * P + p) * Q + q] = (uint8_t)bi;
            }
}

/* A max pool's backward by scattering, outputs in row-major order. */
static void plain_maxpool_grad(const float *dy, const uint8_t *idx, int planes, int H, int W,
                               int k, int stride, int pad, float *dx)
{
    const int P = kb_pool_out(H, k, stride, pad), Q = kb_pool_out(W, k, stride, pad);
    memset(dx, 0, sizeof(float) * (size_t)planes * H * W);
    for (int c = 0; c < planes; c++)
        for (int p = 0; p < P; p++)
            for (int q = 0; q < Q; q++) {
                const size_t o = ((size_t)c * P + p) * Q + q;
                const int h = p * stride - pad + idx[o] / k, w = q * stride - pad + idx[o] % k;
                dx[(size_t)c * H * W + h * W + w] += dy[o];
            }
}

static kb_bn pooled(kb_bn b, int W, int k, int stride, int pad, uint8_t *idx)
{
    b.pool = k;
    b.pool_stride = stride;
    b.pool_pad = pad;
    b.W = W;
    b.pool_idx = idx;
    return b;
}

static int same_bits(float a, float b) { return memcmp(&a, &b, 4) == 0 || (isnan(a) && isnan(b)); }

/* Every shape of small planes (H, W 1..11; k 1..4; stride 1..3; pad up to
 * k/2): the pooled training forward (ReLU on: zeros tie everywhere) and
 * the pooled eval forward of inputs with NaNs (ReLU off) give the bits of
 * a plain max pool of the unpooled op's output, winners and all. */
Test(ops, bn_pool_matches_a_plain_max_pool_with_ties_and_nans)
{
    float x[2 * 11 * 11], full[2 * 11 * 11], y[2 * 13 * 13], ry[2 * 13 * 13];
    uint8_t idx[2 * 13 * 13], ridx[2 * 13 * 13];
    float gamma[2] = {1.5f, -0.75f}, beta[2] = {0.25f, 0.5f}, rm[2] = {0.5f, -1}, rv[2] = {2, 0.5f};
    float sm[2], si[2];
    uint32_t z = 12345;
    long cases = 0;
    for (int H = 1; H <= 11; H++)
        for (int W = 1; W <= 11; W++)
            for (int k = 1; k <= 4; k++)
                for (int stride = 1; stride <= 3; stride++)
                    for (int pad = 0; pad <= k / 2; pad++) {
                        if (H + 2 * pad < k || W + 2 * pad < k)
                            continue;
                        const int n = 2 * kb_pool_out(H, k, stride, pad) *
                                      kb_pool_out(W, k, stride, pad);
                        for (int nan_ok = 0; nan_ok < 2; nan_ok++) {
                            for (int i = 0; i < 2 * H * W; i++) {
                                z = z * 1664525u + 1013904223u;
                                x[i] = nan_ok && (z >> 28) == 15 ? NAN
                                                                 : (float)((z >> 24) % 4) - 1.5f;
                            }
                            kb_bn b = bn_of(1, 2, H * W, 1, gamma, beta, rm, rv, sm, si);
                            b.relu = !nan_ok;
                            b.running_mean = b.running_var = NULL;
                            kb_bn bp = pooled(b, W, k, stride, pad, idx);
                            if (nan_ok) { /* eval: NaNs stay where they are */
                                b.running_mean = bp.running_mean = rm;
                                b.running_var = bp.running_var = rv;
                                be->bn_forward_eval(be, &b, x, NULL, full);
                                be->bn_forward_eval(be, &bp, x, NULL, y);
                            } else {
                                be->bn_forward(be, &b, x, NULL, 0, NULL, full);
                                be->bn_forward(be, &bp, x, NULL, 0, NULL, y);
                            }
                            plain_maxpool(full, 2, H, W, k, stride, pad, ry, ridx);
                            for (int i = 0; i < n; i++)
                                cr_assert(same_bits(y[i], ry[i]) && (nan_ok || idx[i] == ridx[i]),
                                          "H %d W %d k %d s %d pad %d%s: output %d = %g at %d, "
                                          "plain loop %g at %d", H, W, k, stride, pad,
                                          nan_ok ? " (eval, NaNs)" : "", i, y[i], idx[i], ry[i],
                                          ridx[i]);
                            cases++;
                        }
                    }
    cr_log_info("pooled batch norm: %ld cases match the plain loop", cases);
}

Test(ops, bn_pool_hand_padding)
{
    /* the identity batch norm (eval: mean 0, var 1, eps 0) of a 4x4 plane
     * of -1..-16, k3 s2 p1: the padding must never win, each window takes
     * its largest in-bounds (least negative) value */
    float x[16], y[4], one = 1, zero = 0, rm = 0, rv = 1, sm, si;
    for (int i = 0; i < 16; i++)
        x[i] = -(float)(i + 1);
    kb_bn b = bn_of(1, 1, 16, 1, &one, &zero, &rm, &rv, &sm, &si);
    b.eps = 0.0f;
    kb_bn bp = pooled(b, 4, 3, 2, 1, NULL);
    be->bn_forward_eval(be, &bp, x, NULL, y);
    const double want[4] = {-1, -2, -5, -6};
    expect_close("pooled y", y, want, 4, 0, 0);
    /* x = [0 7 14 5; 12 3 10 1; 8 15 6 13; 4 11 2 9]: maxima 12, 14, 15,
     * 15 at (1,0), (0,2), (2,1), (2,1); the windows start at (-1,-1),
     * (-1,1), (1,-1), (1,1), so the winners' places dh*3 + dw are 7, 4, 5, 3 */
    for (int i = 0; i < 16; i++)
        x[i] = (float)((i * 7) % 16);
    be->bn_forward_eval(be, &bp, x, NULL, y);
    const double want2[4] = {12, 14, 15, 15};
    expect_close("pooled y2", y, want2, 4, 0, 0);
    /* the training forward (monotone: gamma 1) records the winners */
    uint8_t idx[4];
    b.running_mean = b.running_var = NULL;
    bp = pooled(b, 4, 3, 2, 1, idx);
    be->bn_forward(be, &bp, x, NULL, 0, NULL, y);
    const uint8_t widx[4] = {7, 4, 5, 3};
    for (int i = 0; i < 4; i++)
        cr_expect(idx[i] == widx[i], "idx[%d] = %d, want %d", i, idx[i], widx[i]);
    /* backward: overlapping windows add up, unpicked positions get none --
     * the unpooled backward of that spread gradient, bit for bit */
    float dy[4] = {1, 2, 3, 4}, spread[16] = {0}, dx[16], dx2[16], dg = 0, db = 0, dg2 = 0, db2 = 0;
    spread[4] = 1, spread[2] = 2, spread[9] = 7;
    be->bn_backward(be, &bp, x, NULL, dy, NULL, &dg, &db, dx, NULL);
    be->bn_backward(be, &b, x, NULL, spread, NULL, &dg2, &db2, dx2, NULL);
    cr_expect(memcmp(dx, dx2, sizeof dx) == 0 && dg == dg2 && db == db2,
              "pooled backward = backward of the spread gradient");
    cr_expect(db == 10.0f, "dbeta = the sum of dy: %g", db);
}

/* Pooled, with the ReLU, in two groups: forward, backward and the SyncBN
 * reduction give the bits of the unpooled op around a plain max pool. */
Test(ops, bn_pool_is_the_composition)
{
    rng_seed(44);
    const int N = 4, C = 3, H = 9, W = 8, P = kb_pool_out(H, 3, 2, 1), Q = kb_pool_out(W, 3, 2, 1);
    const size_t n = (size_t)N * C * H * W, np = (size_t)N * C * P * Q;
    float *x = frand(n), *dy = frand(np), *g = frand(C), *bt = frand(C);
    float *rm = fa(C), *rv = fa(C), *rm2 = fa(C), *rv2 = fa(C);
    be->fill(be, rv, 1.0f, C);
    be->fill(be, rv2, 1.0f, C);
    float *sm = fa(2 * C), *si = fa(2 * C), *y = fa(np), *dx = fa(n), *dg = fa(C), *db = fa(C);
    float *red = fa(4 * C), *red2 = fa(4 * C), *dg2 = fa(C), *db2 = fa(C);
    uint8_t *idx = malloc(np), *ridx = malloc(np);
    cr_assert(idx && ridx);
    kb_bn b = bn_of(N, C, H * W, 2, g, bt, rm, rv, sm, si);
    b.relu = 1;
    kb_bn bp = pooled(b, W, 3, 2, 1, idx);
    be->bn_forward(be, &bp, x, NULL, 0, NULL, y);
    be->bn_backward(be, &bp, x, NULL, dy, NULL, dg, db, dx, NULL);
    be->bn_backward_reduce(be, &bp, x, NULL, dy, red, dg, db);

    float *full = fa(n), *ry = fa(np), *spread = fa(n), *dx2 = fa(n);
    b.running_mean = rm2, b.running_var = rv2;
    be->bn_forward(be, &b, x, NULL, 0, NULL, full);
    plain_maxpool(full, N * C, H, W, 3, 2, 1, ry, ridx);
    plain_maxpool_grad(dy, ridx, N * C, H, W, 3, 2, 1, spread);
    be->bn_backward(be, &b, x, NULL, spread, NULL, dg2, db2, dx2, NULL);
    be->bn_backward_reduce(be, &b, x, NULL, spread, red2, dg2, db2);
    cr_expect(memcmp(y, ry, np * 4) == 0 && memcmp(idx, ridx, np) == 0, "y and its winners");
    cr_expect(memcmp(rm, rm2, C * 4) == 0 && memcmp(rv, rv2, C * 4) == 0, "running stats");
    cr_expect(memcmp(dx, dx2, n * 4) == 0, "dx");
    cr_expect(memcmp(dg, dg2, C * 4) == 0 && memcmp(db, db2, C * 4) == 0, "dgamma, dbeta");
    cr_expect(memcmp(red, red2, 4 * C * 4) == 0, "the SyncBN reduction");
    free(idx);
    free(ridx);
}

typedef struct bnp_ctx {
    kb_bn b;
    float *x, *y, *r;
    size_t ny;
} bnp_ctx;

static double bnp_obj(void *p)
{
    bnp_ctx *t = p;
    be->bn_forward(be, &t->b, t->x, NULL, 0, NULL, t->y);
    return dotd(t->y, t->r, t->ny);
}

/* Finite differences through the pooled op (no ReLU: the spaced inputs
 * keep every window's winner 0.05 |a| ahead of its rivals). */
Test(ops, bn_pool_gradients)
{
    rng_seed(7);
    const int N = 2, C = 2, H = 7, W = 6, P = kb_pool_out(H, 3, 2, 1), Q = kb_pool_out(W, 3, 2, 1);
    const size_t n = (size_t)N * C * H * W;
    bnp_ctx t = {.ny = (size_t)N * C * P * Q};
    float *gamma = frand(C), *beta = frand(C), *sm = fa(C), *si = fa(C);
    for (int c = 0; c < C; c++)
        gamma[c] += 2.0f;
    uint8_t *idx = malloc(t.ny);
    cr_assert(idx);
    t.b = pooled(bn_of(N, C, H * W, 1, gamma, beta, NULL, NULL, sm, si), W, 3, 2, 1, idx);
    t.x = spaced(n), t.y = fa(t.ny), t.r = frand(t.ny);
    float *dx = fa(n), *dg = fa(C), *db = fa(C);
    bnp_obj(&t);
    be->bn_backward(be, &t.b, t.x, NULL, t.r, NULL, dg, db, dx, NULL);
    check_grad("pooled bn dx", bnp_obj, &t, t.x, n, dx, 1e-2f);
    check_grad("pooled bn dgamma", bnp_obj, &t, gamma, C, dg, 1e-2f);
    check_grad("pooled bn dbeta", bnp_obj, &t, beta, C, db, 1e-2f);
    free(idx);
}

Test(ops, avgpool_gradients)
{
    rng_seed(7);
    un_ctx a = {.N = 3, .C = 2, .H = 5, .W = 3, .kind = 1};
    a.nx = 3 * 2 * 15, a.ny = 6;
    a.x = frand(a.nx), a.y = fa(a.ny), a.r = frand(a.ny);
    float *adx = fa(a.nx);
    un_obj(&a);
    double s = 0;
    for (int i = 15; i < 30; i++)
        s += a.x[i];
    cr_expect(fabs(a.y[1] - s / 15) < 1e-6, "avgpool mean");
    be->avgpool_backward(be, a.r, a.N, a.C, 15, adx);
    check_grad("avgpool dx", un_obj, &a, a.x, a.nx, adx, 1e-2f);
}

/* ---- linear ---- */

typedef struct lin_ctx {
    int N, I, O;
    float *x, *w, *b, *y, *r;
} lin_ctx;

static double lin_obj(void *p)
{
    lin_ctx *t = p;
    be->linear_forward(be, t->x, t->N, t->I, t->w, NULL, t->b, t->O, t->y);
    return dotd(t->y, t->r, (size_t)t->N * t->O);
}

Test(ops, linear)
{
    rng_seed(8);
    for (int with_bias = 0; with_bias < 2; with_bias++) {
        lin_ctx t = {.N = 4, .I = 7, .O = 5};
        t.x = frand(28), t.w = frand(35), t.b = with_bias ? frand(5) : NULL;
        t.y = fa(20), t.r = frand(20);
        lin_obj(&t);
        for (int n = 0; n < 4; n++)
            for (int o = 0; o < 5; o++) {
                double s = with_bias ? t.b[o] : 0;
                for (int i = 0; i < 7; i++)
                    s += (double)t.x[n * 7 + i] * t.w[o * 7 + i];
                cr_expect(fabs(t.y[n * 5 + o] - s) < 1e-5, "linear y[%d,%d]", n, o);
            }
        float *dx = fa(28), *dw = fa(35), *db = fa(5);
        be->linear_backward(be, t.x, t.w, NULL, t.r, 4, 7, 5, dx, dw, with_bias ? db : NULL);
        check_grad("linear dx", lin_obj, &t, t.x, 28, dx, 1e-2f);
        check_grad("linear dw", lin_obj, &t, t.w, 35, dw, 1e-2f);
        if (with_bias)
            check_grad("linear db", lin_obj, &t, t.b, 5, db, 1e-2f);
        /* accumulation, and dx = NULL skips dx */
        float *dw2 = fa(35), *db2 = fa(5);
        be->linear_backward(be, t.x, t.w, NULL, t.r, 4, 7, 5, NULL, dw2, db2);
        be->linear_backward(be, t.x, t.w, NULL, t.r, 4, 7, 5, NULL, dw2, db2);
        for (int i = 0; i < 35; i++)
            cr_expect(fabsf(dw2[i] - 2 * dw[i]) <= 1e-5f * (1 + fabsf(dw[i])), "dw accumulates");
        if (with_bias)
            for (int i = 0; i < 5; i++)
                cr_expect(fabsf(db2[i] - 2 * db[i]) <= 1e-5f * (1 + fabsf(db[i])), "db accumulates");
    }
}

/* ---- l2norm ---- */

typedef struct l2_ctx {
    int N, D;
    float *x, *y, *nrm, *r;
} l2_ctx;

static double l2_obj(void *p)
{
    l2_ctx *t = p;
    be->l2norm_forward(be, t->x, t->N, t->D, t->y, t->nrm);
    return dotd(t->y, t->r, (size_t)t->N * t->D);
}

Test(ops, l2norm)
{
    rng_seed(9);
    l2_ctx t = {.N = 3, .D = 6};
    t.x = frand(18), t.y = fa(18), t.nrm = fa(3), t.r = frand(18);
    for (int i = 0; i < 6; i++)
        t.x[i] *= 3; /* norms of different sizes */
    l2_obj(&t);
    for (int i = 0; i < 3; i++) {
        double s = sqrt(dotd(t.x + 6 * i, t.x + 6 * i, 6));
        cr_expect(fabs(t.nrm[i] - s) < 1e-6 * s);
        cr_expect(fabs(dotd(t.y + 6 * i, t.y + 6 * i, 6) - 1) < 1e-6);
    }
    float *dx = fa(18);
    be->l2norm_backward(be, t.y, t.nrm, t.r, 3, 6, dx);
    check_grad("l2norm dx", l2_obj, &t, t.x, 18, dx, 1e-2f);
    /* a zero row stays zero (F.normalize's eps), no NaN */
    float z[4] = {0, 0, 0, 0}, zy[4], zn[1];
    be->l2norm_forward(be, z, 1, 4, zy, zn);
    for (int i = 0; i < 4; i++)
        cr_expect(zy[i] == 0.0f);
}

/* ---- the loss ---- */

enum { LN = 5, LD = 4 };

typedef struct loss_ctx {
    kb_loss_cfg cfg;
    float *p1, *p2, *z1, *z2, *dp1, *dp2;
    float out[KB_LOSS_NOUT];
} loss_ctx;

static double loss_obj(void *p)
{
    loss_ctx *t = p;
    be->loss(be, &t->cfg, t->p1, t->p2, t->z1, t->z2, LN, LD, t->dp1, t->dp2, t->out);
    return t->out[KB_LOSS_OUT_LOSS];
}

static double sqd(const float *a, const float *b)
{
    double s = 0;
    for (int d = 0; d < LD; d++)
        s += ((double)a[d] - b[d]) * ((double)a[d] - b[d]);
    return s;
}

/* |z - l p|^2 / l, l given */
static double tan_term(const float *p, const float *z, double l)
{
    double s = 0;
    for (int d = 0; d < LD; d++)
        s += (z[d] - l * p[d]) * (z[d] - l * p[d]);
    return s / l;
}

static void loss_setup(loss_ctx *t, kb_loss_kind kind, float alpha, float beta, int tan)
{
    t->cfg = (kb_loss_cfg){kind, alpha, beta, tan};
    t->p1 = frand(LN * LD), t->p2 = frand(LN * LD), t->z1 = frand(LN * LD), t->z2 = frand(LN * LD);
    unit_rows(t->p1, LN, LD), unit_rows(t->p2, LN, LD);
    unit_rows(t->z1, LN, LD), unit_rows(t->z2, LN, LD);
    /* Tan divides by l = <p, z>: keep the pairs correlated so l is well
     * away from 0, as it is for a trained predictor. */
    for (int i = 0; i < LN * LD; i++) {
        t->z1[i] = t->z1[i] * 0.4f + t->p1[i] + t->p2[i] * 0.3f;
        t->z2[i] = t->z2[i] * 0.4f + t->p2[i] + t->p1[i] * 0.3f;
    }
    unit_rows(t->z1, LN, LD), unit_rows(t->z2, LN, LD);
    t->dp1 = fa(LN * LD), t->dp2 = fa(LN * LD);
}

/* Reference values in double. */
static void loss_ref(const loss_ctx *t, double *align, double *cross, double *byol,
                     double *tcross, double *tbyol)
{
    *align = *cross = *byol = *tcross = *tbyol = 0;
    for (int i = 0; i < LN; i++) {
        const float *a1 = t->p1 + i * LD, *a2 = t->p2 + i * LD;
        const float *b1 = t->z1 + i * LD, *b2 = t->z2 + i * LD;
        *align += sqd(a1, a2) / LN;
        *cross += 0.5 * (sqd(a1, b1) + sqd(a2, b2)) / LN;
        *byol += (sqd(a1, b2) + sqd(a2, b1)) / LN;
        *tcross += 0.5 * (tan_term(a1, b1, dotd(a1, b1, LD)) + tan_term(a2, b2, dotd(a2, b2, LD))) / LN;
        *tbyol += (tan_term(a1, b2, dotd(a1, b2, LD)) + tan_term(a2, b1, dotd(a2, b1, LD))) / LN;
    }
}

Test(ops, loss_plain_values_and_gradients)
{
    rng_seed(10);
    const struct { kb_loss_kind kind; float a, b; const char *name; } cases[] = {
        {KB_LOSS_BYOL, 0, 0, "byol"},
        {KB_LOSS_UNIFIED, 1.0f, 0.7f, "byol' (beta > 0)"},
        {KB_LOSS_UNIFIED, 1.0f, -0.5f, "raft (beta < 0)"},
    };
    for (int c = 0; c < 3; c++) {
        loss_ctx t;
        loss_setup(&t, cases[c].kind, cases[c].a, cases[c].b, 0);
        loss_obj(&t);
        double al, cr, by, tc, tb;
        loss_ref(&t, &al, &cr, &by, &tc, &tb);
        double obj = cases[c].kind == KB_LOSS_BYOL ? by : cases[c].a * al + cases[c].b * cr;
        const double want[4] = {obj, al, cr, by};
        expect_close(cases[c].name, t.out, want, 4, 1e-6, 1e-5);
        float g1[LN * LD], g2[LN * LD];
        memcpy(g1, t.dp1, sizeof g1), memcpy(g2, t.dp2, sizeof g2);
        char what[64];
        snprintf(what, sizeof what, "loss %s dp1", cases[c].name);
        check_grad(what, loss_obj, &t, t.p1, LN * LD, g1, 1e-2f);
        snprintf(what, sizeof what, "loss %s dp2", cases[c].name);
        check_grad(what, loss_obj, &t, t.p2, LN * LD, g2, 1e-2f);
    }
}

/* Tan objective with l frozen at the unperturbed point (the stop-gradient):
 * its finite differences are what dp must match. */
typedef struct tan_ctx {
    loss_ctx *t;
    double l11[LN], l22[LN], l12[LN], l21[LN];
} tan_ctx;

static double tan_obj(void *p)
{
    tan_ctx *c = p;
    loss_ctx *t = c->t;
    double s = 0;
    for (int i = 0; i < LN; i++) {
        const float *a1 = t->p1 + i * LD, *a2 = t->p2 + i * LD;
        const float *b1 = t->z1 + i * LD, *b2 = t->z2 + i * LD;
        if (t->cfg.kind == KB_LOSS_BYOL)
            s += (tan_term(a1, b2, c->l12[i]) + tan_term(a2, b1, c->l21[i])) / LN;
        else
            s += t->cfg.alpha * sqd(a1, a2) / LN +
                 t->cfg.beta * 0.5 * (tan_term(a1, b1, c->l11[i]) + tan_term(a2, b2, c->l22[i])) / LN;
    }
    return s;
}

Test(ops, loss_tangential)
{
    rng_seed(11);
    const struct { kb_loss_kind kind; float a, b; const char *name; } cases[] = {
        {KB_LOSS_BYOL, 0, 0, "tan byol"},
        {KB_LOSS_UNIFIED, 1.0f, 0.7f, "tan byol'"},
        {KB_LOSS_UNIFIED, 1.0f, -0.5f, "tan raft"},
    };
    for (int c = 0; c < 3; c++) {
        loss_ctx t;
        loss_setup(&t, cases[c].kind, cases[c].a, cases[c].b, 1);
        loss_obj(&t);
        double al, cr, by, tc, tb;
        loss_ref(&t, &al, &cr, &by, &tc, &tb);
        double obj = cases[c].kind == KB_LOSS_BYOL ? tb : cases[c].a * al + cases[c].b * tc;
        double plain = cases[c].kind == KB_LOSS_BYOL ? by : cases[c].a * al + cases[c].b * cr;
        /* out[LOSS] is the Tan objective; the metric slots stay plain */
        const double want[4] = {obj, al, cr, by};
        expect_close(cases[c].name, t.out, want, 4, 1e-6, 1e-5);
        cr_expect(fabs(obj - plain) > 1e-3, "%s: Tan value must differ from plain", cases[c].name);

        tan_ctx tc_ = {.t = &t};
        for (int i = 0; i < LN; i++) {
            const float *a1 = t.p1 + i * LD, *a2 = t.p2 + i * LD;
            const float *b1 = t.z1 + i * LD, *b2 = t.z2 + i * LD;
            tc_.l11[i] = dotd(a1, b1, LD), tc_.l22[i] = dotd(a2, b2, LD);
            tc_.l12[i] = dotd(a1, b2, LD), tc_.l21[i] = dotd(a2, b1, LD);
        }
        float g1[LN * LD], g2[LN * LD];
        memcpy(g1, t.dp1, sizeof g1), memcpy(g2, t.dp2, sizeof g2);
        char what[64];
        snprintf(what, sizeof what, "%s dp1", cases[c].name);
        check_grad(what, tan_obj, &tc_, t.p1, LN * LD, g1, 1e-2f);
        snprintf(what, sizeof what, "%s dp2", cases[c].name);
        check_grad(what, tan_obj, &tc_, t.p2, LN * LD, g2, 1e-2f);
    }
}

Test(ops, loss_tan_cross_term_is_tangential)
{
    /* Pure cross term (alpha 0, beta 2, so L = mean_i sum_v term): dp must be
     * exactly -2 (z - l p) / N, and after the l2norm backward (p unit) the
     * plain and Tan gradients agree: Tan only drops the radial part. */
    rng_seed(12);
    loss_ctx t, u;
    loss_setup(&t, KB_LOSS_UNIFIED, 0.0f, 2.0f, 1);
    loss_obj(&t);
    for (int i = 0; i < LN; i++) {
        double l = dotd(t.p1 + i * LD, t.z1 + i * LD, LD);
        for (int d = 0; d < LD; d++) {
            double want = -2 * (t.z1[i * LD + d] - l * t.p1[i * LD + d]) / LN;
            cr_expect(fabs(t.dp1[i * LD + d] - want) < 1e-6, "dp1[%d,%d] %g vs %g", i, d,
                      t.dp1[i * LD + d], want);
        }
    }
    u = t;
    u.cfg.tangential = 0;
    u.dp1 = fa(LN * LD), u.dp2 = fa(LN * LD);
    loss_obj(&u);
    float nrm[LN], y1[LN * LD], y2[LN * LD];
    for (int i = 0; i < LN; i++)
        nrm[i] = 1.0f;
    be->l2norm_backward(be, t.p1, nrm, t.dp1, LN, LD, y1);
    be->l2norm_backward(be, u.p1, nrm, u.dp1, LN, LD, y2);
    for (int i = 0; i < LN * LD; i++)
        cr_expect(fabsf(y1[i] - y2[i]) < 1e-6f, "projected grads differ at %d: %g vs %g", i, y1[i],
                  y2[i]);
}

/* ---- metrics ---- */

Test(ops, uniformity)
{
    float z[4] = {1, 0, -1, 0}, out[1];
    /* two antipodal points: |z1 - z2|^2 = 4, both ordered pairs give exp(-4t) */
    be->uniformity(be, z, 1, 2, 2, 2.0f, out);
    cr_expect(fabsf(out[0] - (-8.0f)) < 1e-5f, "antipodal t=2: %g", out[0]);
    /* t large: exp(-4000) underflows; log-sum-exp must still give -4000 */
    be->uniformity(be, z, 1, 2, 2, 1000.0f, out);
    cr_expect(fabsf(out[0] - (-4000.0f)) < 1e-2f, "antipodal t=1000: %g", out[0]);
    /* three points on a line 0, 1, 3 (D=1): d = 1, 9, 4 */
    float w[3] = {0, 1, 3};
    be->uniformity(be, w, 1, 3, 1, 0.5f, out);
    double want = log((exp(-0.5) + exp(-4.5) + exp(-2.0)) / 3.0);
    cr_expect(fabs(out[0] - want) < 1e-6, "three points: %g vs %g", out[0], want);
    /* identical points: log(1) = 0 */
    float same[6] = {0.6f, 0.8f, 0.6f, 0.8f, 0.6f, 0.8f};
    be->uniformity(be, same, 1, 3, 2, 2.0f, out);
    cr_expect(fabsf(out[0]) < 1e-7f);
    /* groups of rows (the two views): each its own value */
    float two[8] = {1, 0, -1, 0, 0.6f, 0.8f, 0.6f, 0.8f}, o2[2];
    be->uniformity(be, two, 2, 2, 2, 2.0f, o2);
    cr_expect(fabsf(o2[0] - (-8.0f)) < 1e-5f && fabsf(o2[1]) < 1e-7f, "groups: %g %g", o2[0],
              o2[1]);
    be->collapse_std(be, two, 2, 2, 2, o2);
    cr_expect(fabsf(o2[0] - (float)(sqrt(2.0) * 0.5)) < 1e-6f && o2[1] == 0.0f,
              "collapse groups: %g %g", o2[0], o2[1]);
}

Test(ops, collapse_std)
{
    float z[4] = {1, 0, -1, 0}, out[1];
    /* dim 0 std 1, dim 1 std 0: sqrt(2) * 0.5 */
    be->collapse_std(be, z, 1, 2, 2, out);
    cr_expect(fabsf(out[0] - (float)(sqrt(2.0) * 0.5)) < 1e-6f, "antipodal: %g", out[0]);
    float same[6] = {0.6f, 0.8f, 0.6f, 0.8f, 0.6f, 0.8f};
    be->collapse_std(be, same, 1, 3, 2, out);
    cr_expect(out[0] == 0.0f, "collapsed rows: %g", out[0]);
    /* +-1 in every dim with independent signs: std 1 each, times sqrt(D) = 2 */
    float h[16] = {1, 1, 1, 1, -1, -1, 1, 1, 1, -1, -1, -1, -1, 1, -1, -1};
    be->collapse_std(be, h, 1, 4, 4, out);
    cr_expect(fabsf(out[0] - 2.0f) < 1e-6f, "spread: %g", out[0]);
}

typedef struct sx_ctx {
    int N, K;
    float *logits, *g;
    int32_t *labels;
    float out[2];
} sx_ctx;

static double sx_obj(void *p)
{
    sx_ctx *t = p;
    be->softmax_xent(be, t->logits, t->labels, t->N, t->K, NULL, t->out);
    return t->out[0];
}

Test(ops, softmax_xent)
{
    float l[6] = {0, 0, 1000, 0, -3, 2}, out[2], g[6];
    int32_t lab[2] = {0, 0};
    be->softmax_xent(be, l, lab, 2, 3, g, out);
    /* row 0: argmax 2 (wrong), loss 1000 - 0; row 1: argmax 2 (wrong),
     * loss log(1 + e^-3 + e^2) */
    double want = (1000 + log(1 + exp(-3.0) + exp(2.0))) / 2;
    cr_expect(fabs(out[0] - want) < 1e-3, "loss %g want %g", out[0], want);
    cr_expect(out[1] == 0.0f);
    cr_expect(isfinite(g[0]) && fabsf(g[0] - (-0.5f)) < 1e-6f && fabsf(g[2] - 0.5f) < 1e-6f);
    lab[0] = 2, lab[1] = 2;
    be->softmax_xent(be, l, lab, 2, 3, NULL, out);
    cr_expect(out[1] == 2.0f);
    cr_expect(fabs(out[0] - log(1 + exp(-2.0) + exp(-5.0)) / 2) < 1e-6);

    rng_seed(13);
    sx_ctx t = {.N = 4, .K = 5};
    t.logits = frand(20), t.g = fa(20);
    t.labels = (int32_t *)fa(4);
    for (int i = 0; i < 4; i++)
        t.labels[i] = i;
    be->softmax_xent(be, t.logits, t.labels, 4, 5, t.g, t.out);
    check_grad("softmax_xent dlogits", sx_obj, &t, t.logits, 20, t.g, 1e-2f);
}

/* ---- optimizer, EMA ---- */

/* The update op with Adam alone (no teacher). */
static void adam_step(float *p, const float *g, float *m, float *v, size_t n,
                      const kb_adam_consts *k)
{
    float gz[16];
    memcpy(gz, g, n * sizeof(float));
    kb_update u = {.params = p, .grads = gz, .adam_m = m, .adam_v = v, .n = n, .k = k};
    be->update(be, &u);
    for (size_t i = 0; i < n; i++)
        cr_expect(gz[i] == 0.0f, "the update zeroes the gradient");
}

Test(ops, adam_three_steps)
{
    /* Expected values: torch.optim.Adam's update computed in double
     * (lr 0.01, betas 0.9/0.999, eps 1e-8, weight decay 0.1). */
    float p[3] = {0.5f, -1.0f, 2.0f}, m[3] = {0}, v[3] = {0};
    const float g[3][3] = {{0.1f, -0.2f, 0.3f}, {-0.05f, 0.4f, 0.3f}, {0.2f, 0.0f, -0.1f}};
    const double want[3][3] = {{0.4900000007, -0.9900000003, 1.9900000002},
                               {0.4833492006, -0.9905429538, 1.9800005272},
                               {0.4752235506, -0.9895005501, 1.9714658652}};
    for (int s = 0; s < 3; s++) {
        kb_adam_consts k = kb_adam_consts_init(0.01f, 0.9f, 0.999f, 1e-8f, 0.1f, s + 1);
        adam_step(p, g[s], m, v, 3, &k); /* CPU backend memory is host memory */
        char what[32];
        snprintf(what, sizeof what, "adam step %d", s + 1);
        /* float32 parameters: 2 ulp of values ~1 */
        expect_close(what, p, want[s], 3, 3e-7, 3e-7);
    }
    const double wm[3] = {0.0368934920124, -0.00711542954136, 0.0952100052743};
    const double wv[3] = {8.41262540229e-05, 0.000190142242414, 0.000507856259354};
    expect_close("adam m", m, wm, 3, 0, 1e-6);
    expect_close("adam v", v, wv, 3, 0, 1e-6);
}

/* The EMA runs after Adam with the updated parameters, on the teacher's
 * prefix only: the per-element functions of kernels/optim.h in order. */
Test(ops, update_then_ema_of_the_prefix)
{
    float p[4] = {3, 4, 6, 1}, g[4] = {0.5f, -1, 2, 0.25f}, m[4] = {0}, v[4] = {0};
    float xi[3] = {1, 2, -4}, tau[2];
    float wp[4], wm_[4] = {0}, wv_[4] = {0}, wx[3] = {1, 2, -4};
    memcpy(wp, p, sizeof p);
    kb_adam_consts k = kb_adam_consts_init(0.1f, 0.9f, 0.999f, 1e-8f, 0.0f, 1);
    kb_ema_consts_init(0.9f, tau);
    kb_update u = {.params = p, .grads = g, .adam_m = m, .adam_v = v, .n = 4, .k = &k,
                   .teacher = xi, .nteacher = 3, .tau_omt = tau};
    be->update(be, &u);
    float gs[4] = {0.5f, -1, 2, 0.25f};
    for (int i = 0; i < 4; i++)
        kb_adam_elem(&k, &wp[i], gs[i], &wm_[i], &wv_[i]);
    for (int i = 0; i < 3; i++)
        wx[i] = kb_ema_elem(wx[i], wp[i], tau[0], tau[1]);
    cr_expect(memcmp(p, wp, sizeof p) == 0 && memcmp(m, wm_, sizeof m) == 0 &&
              memcmp(v, wv_, sizeof v) == 0, "Adam");
    cr_expect(memcmp(xi, wx, sizeof xi) == 0, "EMA with the updated parameters");
    for (int i = 0; i < 4; i++)
        cr_expect(g[i] == 0.0f, "gradients zeroed");
    /* tau = 1 freezes the teacher */
    kb_ema_consts_init(1.0f, tau);
    u.k = &k;
    be->update(be, &u);
    cr_expect(memcmp(xi, wx, sizeof xi) == 0, "tau 1");
}

Test(ops, ring_push_keeps_rows_in_turn)
{
    float ring[3 * 2] = {0}, src[2];
    uint32_t count = 0;
    for (int s = 0; s < 4; s++) {
        src[0] = (float)s;
        src[1] = (float)(10 * s);
        be->ring_push(be, ring, 3, src, 2, &count);
    }
    cr_expect(count == 4);
    const float want[6] = {3, 30, 1, 10, 2, 20}; /* step 3 took row 0 again */
    cr_expect(memcmp(ring, want, sizeof want) == 0);
}

Test(ops, feature_maps_are_nchw_floats)
{
    float h[2 * 3 * 4], back[2 * 3 * 4];
    for (int i = 0; i < 24; i++)
        h[i] = (float)i - 7.5f;
    cr_expect(be->fmap_bytes(be, 2, 3, 2, 2) == sizeof h);
    float *x = fa(24);
    be->fmap_upload(be, x, h, 2, 3, 2, 2);
    cr_expect(memcmp(x, h, sizeof h) == 0);
    be->fmap_download(be, back, x, 2, 3, 2, 2);
    cr_expect(memcmp(back, h, sizeof h) == 0);
    cr_expect(be->mirror_create == NULL, "the CPU's ops read the parameters");
}

/* SyncBN halves: two ranks holding halves of a batch (each in two groups,
 * the views), with their stats and backward reductions averaged (what the
 * all-reduce does), must give what the plain training-mode BN gives on the
 * whole batch. Agreement is float rounding (~1e-6): the variance is
 * recombined as E[var] + E[mean^2] - mean^2 instead of summed directly. */
Test(ops, sync_bn_halves_equal_whole_batch)
{
    rng_seed(77);
    const int G = 2, N = 12, C = 3, HW = 10, Ng = N / G, h = Ng / 2;
    const size_t n = (size_t)N * C * HW, gn = n / G, hn = gn / 2;
    float *x = frand(n), *dy = frand(n), *g = frand(C), *bt = frand(C);
    for (size_t i = 0; i < n; i++)
        x[i] = 2.0f * x[i] + 0.7f + (i >= gn); /* a mean that is not 0, other in group 2 */
    float *y = fa(n), *mean = fa(G * C), *inv = fa(G * C), *rm = fa(C), *rv = fa(C);
    float *dx = fa(n), *dg = fa(C), *db = fa(C);
    be->fill(be, rv, 1.0f, C);
    kb_bn b = bn_of(N, C, HW, G, g, bt, rm, rv, mean, inv);
    b.relu = 1;
    be->bn_forward(be, &b, x, NULL, 0, NULL, y);
    be->bn_backward(be, &b, x, y, dy, NULL, dg, db, dx, NULL);

    /* rank r holds samples [r h, (r+1) h) of each group */
    float *xr[2], *dyr[2], *yr[2], *dxr[2], *st[2], *red[2], *m2[2], *i2[2];
    for (int r = 0; r < 2; r++) {
        xr[r] = fa(gn), dyr[r] = fa(gn), yr[r] = fa(gn), dxr[r] = fa(gn);
        st[r] = fa(3 * G * C), red[r] = fa(2 * G * C), m2[r] = fa(G * C), i2[r] = fa(G * C);
        for (int k = 0; k < G; k++) {
            memcpy(xr[r] + k * hn, x + k * gn + r * hn, hn * 4);
            memcpy(dyr[r] + k * hn, dy + k * gn + r * hn, hn * 4);
        }
    }
    float *avg = fa(3 * G * C), *ravg = fa(2 * G * C), *rm2 = fa(C), *rv2 = fa(C);
    float *dg2 = fa(C), *db2 = fa(C);
    be->fill(be, rv2, 1.0f, C);
    for (int r = 0; r < 2; r++) {
        kb_bn br = bn_of(2 * h, C, HW, G, g, bt, NULL, NULL, m2[r], i2[r]);
        be->bn_stats(be, &br, xr[r], st[r]);
    }
    for (int k = 0; k < 3 * G * C; k++)
        avg[k] = 0.5f * (st[0][k] + st[1][k]);
    for (int r = 0; r < 2; r++) {
        kb_bn br = bn_of(2 * h, C, HW, G, g, bt, r == 0 ? rm2 : NULL, r == 0 ? rv2 : NULL, m2[r],
                         i2[r]);
        br.relu = 1;
        be->bn_forward(be, &br, xr[r], avg, (double)Ng * HW, NULL, yr[r]);
        for (int k = 0; k < G; k++)
            for (size_t i = 0; i < hn; i++)
                cr_expect_float_eq(yr[r][k * hn + i], y[k * gn + r * hn + i], 2e-5, "y");
    }
    for (int c = 0; c < C; c++) {
        cr_expect_float_eq(rm2[c], rm[c], 1e-6, "running mean");
        cr_expect_float_eq(rv2[c], rv[c], 1e-5, "running var %g vs %g", rv2[c], rv[c]);
    }
    for (int r = 0; r < 2; r++) {
        kb_bn br = bn_of(2 * h, C, HW, G, g, bt, NULL, NULL, m2[r], i2[r]);
        br.relu = 1;
        be->bn_backward_reduce(be, &br, xr[r], yr[r], dyr[r], red[r], dg2, db2);
    }
    for (int k = 0; k < 2 * G * C; k++)
        ravg[k] = 0.5f * (red[0][k] + red[1][k]);
    for (int r = 0; r < 2; r++) {
        kb_bn br = bn_of(2 * h, C, HW, G, g, bt, NULL, NULL, m2[r], i2[r]);
        br.relu = 1;
        be->bn_backward(be, &br, xr[r], yr[r], dyr[r], ravg, NULL, NULL, dxr[r], NULL);
        for (int k = 0; k < G; k++)
            for (size_t i = 0; i < hn; i++)
                cr_expect_float_eq(dxr[r][k * hn + i], dx[k * gn + r * hn + i], 2e-5, "dx");
    }
    for (int c = 0; c < C; c++) {
        cr_expect_float_eq(dg2[c], dg[c], 2e-5, "dgamma");
        cr_expect_float_eq(db2[c], db[c], 2e-5, "dbeta");
    }
}
