/* Backend cross-check: every op of kernels/backend.h on random inputs, on
 * the CPU backend (the reference, itself checked by the ops suite) and on
 * the CUDA backend, compared element by element with
 *     |gpu - cpu| <= atol + rtol * |cpu|,
 * printing the worst element of every comparison. Without a usable GPU
 * every test skips with kb_cuda_create's reason.
 *
 * Tolerances (inputs are O(1) unless a test says otherwise):
 * - Pure fp32 kernels (elementwise, BN, pooling, norms, losses, Adam):
 *   both backends reduce in double and round once to float; what differs
 *   is the GPU's fused multiply-adds and the order of double sums, a few
 *   float ulps (~1e-7 relative) per element. rtol 1e-5 leaves 100x margin;
 *   atol 1e-5 covers results that cancel to ~0 (e.g. a*x + b in BN, whose
 *   rounding is ~ulp(|b|) ~ 1e-7).
 * - Convolutions and GEMMs on TF32 tensor cores round each input to 10
 *   mantissa bits (unit roundoff u = 2^-11 ~ 4.9e-4; truncating kernels
 *   2^-10). A K-term dot product of random-sign terms then errs by about
 *   sqrt(2/3) u |x||w| per term in quadrature, ~4e-4 of the output's rms;
 *   the worst of ~1e5 outputs sits near 4.5 sigma, ~2e-3 of rms (4e-3 for
 *   truncation). So atol = 5e-3 * rms(reference), rtol = 1e-3. With
 *   RW_CUDA_TF32=0 (full fp32 on the GPU) the same comparisons use
 *   atol = 1e-4 * rms, rtol = 1e-4: summation order alone would stay near
 *   1e-6, but cuDNN may pick FFT or Winograd algorithms, whose transforms
 *   lose ~1e-5 of the rms in fp32 (Winograd's larger tiles amplify input
 *   rounding ~10x).
 * - Exact ops (ReLU, max pool values and indices, copies): atol = rtol = 0;
 *   the max-pool gradient adds the same floats in the same order. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"
#include "kernels/optim.h"

static kb_backend *cpu, *gpu;
static char why[512];
static int tf32;

static void setup(void)
{
    cpu = kb_cpu_create(1);
    cr_assert_not_null(cpu);
    why[0] = 0;
    gpu = kb_cuda_create(0, why, sizeof why);
    const char *t = getenv("RW_CUDA_TF32");
    tf32 = !(t && strcmp(t, "0") == 0);
}

static void teardown(void)
{
    kb_destroy(gpu);
    kb_destroy(cpu);
}

#define NEED_GPU()                                                                                \
    do {                                                                                          \
        if (!gpu)                                                                                 \
            cr_skip_test("no CUDA backend: %s", why);                                             \
    } while (0)

/* ---- buffers on both backends ---- */

typedef struct pair {
    float *c, *g; /* cpu, gpu */
    size_t n;
} pair;

static pair live[256];
static int nlive;

static pair pair_new(size_t n)
{
    pair p = {cpu->alloc(cpu, n * sizeof(float) + 4), gpu->alloc(gpu, n * sizeof(float) + 4), n};
    cr_assert(p.c && p.g);
    cr_assert(nlive < (int)(sizeof live / sizeof live[0]));
    live[nlive++] = p;
    return p;
}

static void pairs_free(void)
{
    for (int i = 0; i < nlive; i++) {
        cpu->free(cpu, live[i].c);
        gpu->free(gpu, live[i].g);
    }
    nlive = 0;
}

static uint64_t rng_state;
static void rng_seed(uint64_t s) { rng_state = s * 0x9E3779B97F4A7C15ull + 1; }
static float urand(void) /* [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

/* Same host values on both backends. */
static pair pair_from(const float *h, size_t n)
{
    pair p = pair_new(n);
    memcpy(p.c, h, n * sizeof(float));
    gpu->upload(gpu, p.g, h, n * sizeof(float));
    return p;
}

static pair pair_rand(size_t n, float lo, float hi)
{
    float *h = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        h[i] = lo + (hi - lo) * 0.5f * (urand() + 1.0f);
    pair p = pair_from(h, n);
    free(h);
    return p;
}

/* Unit rows (N, D), as the loss sees them. */
static pair pair_unit_rows(int N, int D)
{
    float *h = malloc((size_t)N * D * sizeof(float));
    for (int i = 0; i < N; i++) {
        double s = 0;
        for (int d = 0; d < D; d++) {
            h[i * D + d] = urand();
            s += (double)h[i * D + d] * h[i * D + d];
        }
        for (int d = 0; d < D; d++)
            h[i * D + d] = (float)(h[i * D + d] / sqrt(s));
    }
    pair p = pair_from(h, (size_t)N * D);
    free(h);
    return p;
}

static double rms(const float *x, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)x[i] * x[i];
    return n ? sqrt(s / n) : 0;
}

/* Compares the pair's GPU values with its CPU values; prints the worst
 * element (largest error over its bound) whether or not it passes. */
static void compare(const char *what, pair p, double atol, double rtol)
{
    float *g = malloc(p.n * sizeof(float) + 4);
    gpu->download(gpu, g, p.g, p.n * sizeof(float));
    size_t worst = 0, bad = 0;
    double wr = -INFINITY;
    for (size_t i = 0; i < p.n; i++) {
        double b = p.c[i], a = g[i];
        double err = fabs(a - b), bound = atol + rtol * fabs(b);
        double r = (isnan(a) != isnan(b)) ? INFINITY : (isnan(a) ? 0 : err - bound);
        if (r > 0)
            bad++;
        if (r > wr) {
            wr = r;
            worst = i;
        }
    }
    if (p.n)
        printf("  %-44s n=%-8zu worst [%zu] gpu %+.8e cpu %+.8e |d| %.2e (atol %.1e rtol %.1e)%s\n",
               what, p.n, worst, (double)g[worst], (double)p.c[worst],
               fabs((double)g[worst] - p.c[worst]), atol, rtol, bad ? "  FAIL" : "");
    cr_expect(bad == 0, "%s: %zu of %zu elements outside |d| <= %.1e + %.1e |cpu|; worst [%zu] "
                        "gpu %.8e cpu %.8e",
              what, bad, p.n, atol, rtol, worst, (double)g[worst], (double)p.c[worst]);
    free(g);
}

#define F32_ATOL 1e-5
#define F32_RTOL 1e-5

/* TF32-aware tolerance for conv/GEMM outputs (see the header). */
static void compare_mm(const char *what, pair p)
{
    double r = rms(p.c, p.n);
    if (tf32)
        compare(what, p, 5e-3 * r, 1e-3);
    else
        compare(what, p, 1e-4 * r, 1e-4);
}

TestSuite(backend, .init = setup, .fini = teardown);

/* ---- memory and elementwise ---- */

Test(backend, memory_and_elementwise)
{
    NEED_GPU();
    rng_seed(1);
    const size_t n = 100003; /* not a multiple of any block size */
    pair z = pair_new(n);    /* alloc is zero-filled on both */
    compare("alloc zero-filled", z, 0, 0);
    pair a = pair_rand(n, -1, 1), b = pair_rand(n, -1, 1);
    compare("upload/download round trip", a, 0, 0);
    pair c = pair_new(n);
    cpu->copy(cpu, c.c, a.c, n * sizeof(float));
    gpu->copy(gpu, c.g, a.g, n * sizeof(float));
    compare("copy", c, 0, 0);
    cpu->fill(cpu, z.c, 0.37f, n);
    gpu->fill(gpu, z.g, 0.37f, n);
    compare("fill", z, 0, 0);
    cpu->scale(cpu, c.c, -1.7f, n);
    gpu->scale(gpu, c.g, -1.7f, n);
    compare("scale", c, 0, 0);
    cpu->axpy(cpu, c.c, 0.3f, b.c, n);
    gpu->axpy(gpu, c.g, 0.3f, b.g, n);
    compare("axpy", c, F32_ATOL, F32_RTOL); /* y + a*x may fuse on the GPU */
    cpu->add(cpu, c.c, c.c, b.c, n);         /* y aliases a */
    gpu->add(gpu, c.g, c.g, b.g, n);
    compare("add (aliased)", c, F32_ATOL, F32_RTOL);
    pairs_free();
}

/* ---- convolution ---- */

static const int conv_shapes[][9] = {
    /* N, C, H, W, K, R, S, stride, pad */
    {2, 3, 20, 20, 8, 7, 7, 2, 3},   /* ImageNet stem */
    {2, 3, 9, 9, 5, 3, 3, 1, 1},     /* CIFAR stem, odd size */
    {4, 8, 10, 10, 16, 3, 3, 2, 1},  /* downsampling block */
    {4, 8, 10, 10, 16, 1, 1, 2, 0},  /* projection shortcut */
    {3, 16, 6, 5, 16, 3, 3, 1, 1},   /* non-square */
    {8, 64, 12, 12, 64, 3, 3, 1, 1}, /* a real layer's width */
    {2, 4, 5, 5, 6, 3, 3, 1, 0},     /* no padding */
};

Test(backend, conv_forward_backward)
{
    NEED_GPU();
    rng_seed(2);
    for (size_t s = 0; s < sizeof conv_shapes / sizeof conv_shapes[0]; s++) {
        const int *v = conv_shapes[s];
        kb_conv_desc d;
        kb_conv_desc_init(&d, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]);
        kb_conv *pc = cpu->conv_plan(cpu, &d), *pg = gpu->conv_plan(gpu, &d);
        cr_assert(pc && pg, "conv plan for shape %zu", s);
        size_t nx = (size_t)d.N * d.C * d.H * d.W, nw = (size_t)d.K * d.C * d.R * d.S;
        size_t ny = (size_t)d.N * d.K * d.P * d.Q;
        pair x = pair_rand(nx, -1, 1), w = pair_rand(nw, -1, 1), y = pair_new(ny);
        pair dy = pair_rand(ny, -1, 1), dx = pair_rand(nx, -1, 1); /* dx: garbage, overwritten */
        pair dw = pair_rand(nw, -1, 1);                            /* dw: accumulated into */
        char what[96];
        cpu->conv_forward(cpu, pc, x.c, w.c, y.c);
        gpu->conv_forward(gpu, pg, x.g, w.g, y.g);
        snprintf(what, sizeof what, "conv %zu forward", s);
        compare_mm(what, y);
        cpu->conv_backward_data(cpu, pc, dy.c, w.c, dx.c);
        gpu->conv_backward_data(gpu, pg, dy.g, w.g, dx.g);
        snprintf(what, sizeof what, "conv %zu backward data", s);
        compare_mm(what, dx);
        cpu->conv_backward_weight(cpu, pc, x.c, dy.c, dw.c);
        gpu->conv_backward_weight(gpu, pg, x.g, dy.g, dw.g);
        snprintf(what, sizeof what, "conv %zu backward weight (+=)", s);
        compare_mm(what, dw);
        /* A second accumulation: += really adds, it does not overwrite. */
        cpu->conv_backward_weight(cpu, pc, x.c, dy.c, dw.c);
        gpu->conv_backward_weight(gpu, pg, x.g, dy.g, dw.g);
        snprintf(what, sizeof what, "conv %zu backward weight (+= twice)", s);
        compare_mm(what, dw);
        cpu->conv_free(cpu, pc);
        gpu->conv_free(gpu, pg);
        pairs_free();
    }
}

Test(backend, conv_plan_rejects_bad_desc)
{
    NEED_GPU();
    kb_conv_desc d;
    kb_conv_desc_init(&d, 2, 3, 5, 5, 4, 3, 3, 1, 1);
    d.P = 7;
    cr_expect(gpu->conv_plan(gpu, &d) == NULL);
    kb_conv_desc_init(&d, 2, 3, 2, 2, 4, 7, 7, 1, 0);
    cr_expect(gpu->conv_plan(gpu, &d) == NULL);
}

/* ---- batch norm ---- */

static const int bn_shapes[][3] = {
    /* N, C, HW */
    {4, 3, 25},
    {16, 8, 1},    /* BatchNorm1d */
    {2, 5, 49},
    {64, 4, 256},  /* several slices per channel on the GPU */
    {32, 64, 144}, /* a real layer */
    {1, 3, 1},     /* one value per channel: biased running variance */
};

Test(backend, bn_train_eval_backward)
{
    NEED_GPU();
    rng_seed(3);
    for (size_t s = 0; s < sizeof bn_shapes / sizeof bn_shapes[0]; s++) {
        const int N = bn_shapes[s][0], C = bn_shapes[s][1], HW = bn_shapes[s][2];
        const size_t n = (size_t)N * C * HW;
        /* An offset mean, as activations have. */
        pair x = pair_rand(n, -0.5f, 2.0f), gamma = pair_rand(C, 0.5f, 1.5f);
        pair beta = pair_rand(C, -0.5f, 0.5f), rm = pair_rand(C, -1, 1), rv = pair_rand(C, 0.5f, 2);
        pair y = pair_new(n), sm = pair_new(C), si = pair_new(C);
        char what[96];
        cpu->bn_forward_train(cpu, x.c, N, C, HW, gamma.c, beta.c, 1e-5f, 0.1f, rm.c, rv.c, y.c,
                              sm.c, si.c);
        gpu->bn_forward_train(gpu, x.g, N, C, HW, gamma.g, beta.g, 1e-5f, 0.1f, rm.g, rv.g, y.g,
                              sm.g, si.g);
#define CMP(name, p)                                                                              \
    do {                                                                                          \
        snprintf(what, sizeof what, "bn (%d,%d,%d) %s", N, C, HW, name);                          \
        compare(what, p, F32_ATOL, F32_RTOL);                                                     \
    } while (0)
        /* One value per channel: invstd = 1/sqrt(eps) ~ 316 and y = a x + b
         * cancels two terms of ~600, whose float rounding (6e-5) the GPU's
         * fused multiply-add skips. */
        snprintf(what, sizeof what, "bn (%d,%d,%d) train y", N, C, HW);
        compare(what, y, N * HW > 1 ? F32_ATOL : 1e-3, F32_RTOL);
        CMP("save_mean", sm);
        /* invstd of a one-value channel is 1/sqrt(eps) ~ 316: relative. */
        CMP("save_invstd", si);
        CMP("running_mean", rm);
        CMP("running_var", rv);
        /* Without running statistics (the teacher's second view). */
        cpu->bn_forward_train(cpu, x.c, N, C, HW, gamma.c, beta.c, 1e-5f, 0.1f, NULL, NULL, y.c,
                              sm.c, si.c);
        gpu->bn_forward_train(gpu, x.g, N, C, HW, gamma.g, beta.g, 1e-5f, 0.1f, NULL, NULL, y.g,
                              sm.g, si.g);
        snprintf(what, sizeof what, "bn (%d,%d,%d) train y (no running)", N, C, HW);
        compare(what, y, N * HW > 1 ? F32_ATOL : 1e-3, F32_RTOL);

        pair ye = pair_new(n);
        cpu->bn_forward_eval(cpu, x.c, N, C, HW, gamma.c, beta.c, 1e-5f, rm.c, rv.c, ye.c);
        gpu->bn_forward_eval(gpu, x.g, N, C, HW, gamma.g, beta.g, 1e-5f, rm.g, rv.g, ye.g);
        CMP("eval y", ye);

        if (N * HW > 1) {
            pair dy = pair_rand(n, -1, 1), dx = pair_new(n);
            pair dg = pair_rand(C, -1, 1), db = pair_rand(C, -1, 1); /* accumulated into */
            cpu->bn_backward(cpu, x.c, dy.c, N, C, HW, gamma.c, sm.c, si.c, dx.c, dg.c, db.c);
            gpu->bn_backward(gpu, x.g, dy.g, N, C, HW, gamma.g, sm.g, si.g, dx.g, dg.g, db.g);
            /* dx subtracts two means from dy: cancellation down to ~1e-7 of
             * |dy| ~ 1, so an absolute 1e-5 as for every fp32 result. */
            CMP("backward dx", dx);
            CMP("backward dgamma (+=)", dg);
            CMP("backward dbeta (+=)", db);
        }
#undef CMP
        pairs_free();
    }
}

Test(backend, syncbn_halves)
{
    NEED_GPU();
    rng_seed(4);
    for (size_t s = 0; s < sizeof bn_shapes / sizeof bn_shapes[0]; s++) {
        const int N = bn_shapes[s][0], C = bn_shapes[s][1], HW = bn_shapes[s][2];
        const size_t n = (size_t)N * C * HW;
        if (N * HW < 2)
            continue;
        pair x = pair_rand(n, -0.5f, 2.0f), gamma = pair_rand(C, 0.5f, 1.5f);
        pair beta = pair_rand(C, -0.5f, 0.5f), rm = pair_rand(C, -1, 1), rv = pair_rand(C, 0.5f, 2);
        pair st = pair_new(3 * (size_t)C), y = pair_new(n), sm = pair_new(C), si = pair_new(C);
        char what[96];
#define CMP(name, p)                                                                              \
    do {                                                                                          \
        snprintf(what, sizeof what, "syncbn (%d,%d,%d) %s", N, C, HW, name);                      \
        compare(what, p, F32_ATOL, F32_RTOL);                                                     \
    } while (0)
        cpu->bn_stats(cpu, x.c, N, C, HW, st.c);
        gpu->bn_stats(gpu, x.g, N, C, HW, st.g);
        CMP("stats", st);
        /* Apply from the same (CPU) stats on both, as after an all-reduce,
         * with the count of two ranks. */
        gpu->upload(gpu, st.g, st.c, 3 * (size_t)C * sizeof(float));
        const double count = 2.0 * N * HW;
        cpu->bn_forward_apply(cpu, x.c, N, C, HW, gamma.c, beta.c, 1e-5f, 0.1f, st.c, count, rm.c,
                              rv.c, y.c, sm.c, si.c);
        gpu->bn_forward_apply(gpu, x.g, N, C, HW, gamma.g, beta.g, 1e-5f, 0.1f, st.g, count, rm.g,
                              rv.g, y.g, sm.g, si.g);
        CMP("apply y", y);
        CMP("apply save_mean", sm);
        CMP("apply save_invstd", si);
        CMP("apply running_mean", rm);
        CMP("apply running_var", rv);
        pair dy = pair_rand(n, -1, 1), red = pair_new(2 * (size_t)C), dx = pair_new(n);
        pair dg = pair_rand(C, -1, 1), db = pair_rand(C, -1, 1);
        cpu->bn_backward_reduce(cpu, x.c, dy.c, N, C, HW, sm.c, si.c, red.c, dg.c, db.c);
        gpu->bn_backward_reduce(gpu, x.g, dy.g, N, C, HW, sm.g, si.g, red.g, dg.g, db.g);
        CMP("backward red", red);
        CMP("backward dgamma (+=)", dg);
        CMP("backward dbeta (+=)", db);
        gpu->upload(gpu, red.g, red.c, 2 * (size_t)C * sizeof(float));
        cpu->bn_backward_apply(cpu, x.c, dy.c, N, C, HW, gamma.c, sm.c, si.c, red.c, dx.c);
        gpu->bn_backward_apply(gpu, x.g, dy.g, N, C, HW, gamma.g, sm.g, si.g, red.g, dx.g);
        CMP("backward apply dx", dx);
#undef CMP
        pairs_free();
    }
}

/* ---- activations and pooling ---- */

Test(backend, relu)
{
    NEED_GPU();
    rng_seed(5);
    const size_t n = 70001;
    pair x = pair_rand(n, -1, 1), y = pair_new(n), dy = pair_rand(n, -1, 1), dx = pair_new(n);
    cpu->relu_forward(cpu, x.c, y.c, n);
    gpu->relu_forward(gpu, x.g, y.g, n);
    compare("relu forward", y, 0, 0);
    cpu->relu_backward(cpu, y.c, dy.c, dx.c, n);
    gpu->relu_backward(gpu, y.g, dy.g, dx.g, n);
    compare("relu backward", dx, 0, 0);
    cpu->relu_forward(cpu, x.c, x.c, n); /* in place */
    gpu->relu_forward(gpu, x.g, x.g, n);
    compare("relu forward in place", x, 0, 0);
    cpu->relu_backward(cpu, y.c, dy.c, dy.c, n);
    gpu->relu_backward(gpu, y.g, dy.g, dy.g, n);
    compare("relu backward in place", dy, 0, 0);
    pairs_free();
}

/* Downloads int32 indices from both and requires equality. */
static void compare_idx(const char *what, const int32_t *c, const int32_t *g_dev, size_t n)
{
    int32_t *g = malloc(n * sizeof(int32_t) + 4);
    gpu->download(gpu, g, g_dev, n * sizeof(int32_t));
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (g[i] != c[i] && !bad++)
            first = i;
    printf("  %-44s n=%-8zu %zu index mismatches\n", what, n, bad);
    cr_expect(bad == 0, "%s: %zu mismatches, first [%zu] gpu %d cpu %d", what, bad, first,
              bad ? g[first] : 0, bad ? c[first] : 0);
    free(g);
}

Test(backend, maxpool)
{
    NEED_GPU();
    rng_seed(6);
    static const int shapes[][7] = {
        /* N, C, H, W, k, stride, pad */
        {2, 3, 9, 9, 3, 2, 1}, /* torchvision's stem pool, odd size */
        {2, 4, 12, 12, 3, 2, 1},
        {2, 2, 8, 8, 2, 2, 0},
        {1, 2, 7, 6, 3, 1, 1},
        {3, 2, 10, 10, 3, 2, 0},
    };
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int N = shapes[s][0], C = shapes[s][1], H = shapes[s][2], W = shapes[s][3];
        const int k = shapes[s][4], st = shapes[s][5], pad = shapes[s][6];
        const int P = (H + 2 * pad - k) / st + 1, Q = (W + 2 * pad - k) / st + 1;
        const size_t nx = (size_t)N * C * H * W, ny = (size_t)N * C * P * Q;
        /* Values on a coarse grid: many ties, which the first maximum wins. */
        float *h = malloc(nx * sizeof(float));
        for (size_t i = 0; i < nx; i++)
            h[i] = (float)(int)(4 * urand()) / 4.0f;
        pair x = pair_from(h, nx), y = pair_new(ny), dy = pair_rand(ny, -1, 1), dx = pair_new(nx);
        free(h);
        int32_t *ic = cpu->alloc(cpu, ny * sizeof(int32_t)), *ig = gpu->alloc(gpu, ny * sizeof(int32_t));
        char what[96];
        cpu->maxpool_forward(cpu, x.c, N, C, H, W, k, st, pad, y.c, ic);
        gpu->maxpool_forward(gpu, x.g, N, C, H, W, k, st, pad, y.g, ig);
        snprintf(what, sizeof what, "maxpool %zu forward", s);
        compare(what, y, 0, 0);
        snprintf(what, sizeof what, "maxpool %zu indices", s);
        compare_idx(what, ic, ig, ny);
        cpu->maxpool_backward(cpu, dy.c, ic, N, C, H, W, P, Q, dx.c);
        gpu->maxpool_backward(gpu, dy.g, ig, N, C, H, W, P, Q, dx.g);
        snprintf(what, sizeof what, "maxpool %zu backward", s);
        compare(what, dx, 0, 0);
        /* Indices the GPU's forward did not write (uploaded): the backward
         * cannot know the window and must still be right. */
        int32_t *ig2 = gpu->alloc(gpu, ny * sizeof(int32_t));
        gpu->upload(gpu, ig2, ic, ny * sizeof(int32_t));
        gpu->fill(gpu, dx.g, 7.0f, nx);
        gpu->maxpool_backward(gpu, dy.g, ig2, N, C, H, W, P, Q, dx.g);
        snprintf(what, sizeof what, "maxpool %zu backward (unknown window)", s);
        compare(what, dx, 0, 0);
        cpu->free(cpu, ic);
        gpu->free(gpu, ig);
        gpu->free(gpu, ig2);
        pairs_free();
    }
}

Test(backend, maxpool_nan_wins)
{
    NEED_GPU();
    float h[16];
    for (int i = 0; i < 16; i++)
        h[i] = (float)i;
    h[5] = NAN;
    pair x = pair_from(h, 16), y = pair_new(4);
    int32_t *ic = cpu->alloc(cpu, 4 * sizeof(int32_t)), *ig = gpu->alloc(gpu, 4 * sizeof(int32_t));
    cpu->maxpool_forward(cpu, x.c, 1, 1, 4, 4, 3, 2, 1, y.c, ic);
    gpu->maxpool_forward(gpu, x.g, 1, 1, 4, 4, 3, 2, 1, y.g, ig);
    compare("maxpool with NaN", y, 0, 0);
    compare_idx("maxpool with NaN indices", ic, ig, 4);
    cpu->free(cpu, ic);
    gpu->free(gpu, ig);
    pairs_free();
}

Test(backend, avgpool)
{
    NEED_GPU();
    rng_seed(7);
    static const int shapes[][3] = {{4, 8, 9}, {2, 16, 1}, {3, 5, 49}, {8, 64, 16}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int N = shapes[s][0], C = shapes[s][1], HW = shapes[s][2];
        const size_t nx = (size_t)N * C * HW, ny = (size_t)N * C;
        pair x = pair_rand(nx, -1, 1), y = pair_new(ny), dy = pair_rand(ny, -1, 1), dx = pair_new(nx);
        char what[96];
        cpu->avgpool_forward(cpu, x.c, N, C, HW, y.c);
        gpu->avgpool_forward(gpu, x.g, N, C, HW, y.g);
        snprintf(what, sizeof what, "avgpool (%d,%d,%d) forward", N, C, HW);
        compare(what, y, F32_ATOL, F32_RTOL);
        cpu->avgpool_backward(cpu, dy.c, N, C, HW, dx.c);
        gpu->avgpool_backward(gpu, dy.g, N, C, HW, dx.g);
        snprintf(what, sizeof what, "avgpool (%d,%d,%d) backward", N, C, HW);
        compare(what, dx, 0, 0);
        pairs_free();
    }
}

/* ---- linear ---- */

Test(backend, linear)
{
    NEED_GPU();
    rng_seed(8);
    static const int shapes[][3] = {
        /* N, I, O */
        {5, 7, 3}, {64, 512, 128}, {32, 128, 512}, {17, 33, 65}, {128, 128, 128},
    };
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int N = shapes[s][0], I = shapes[s][1], O = shapes[s][2];
        for (int with_bias = 0; with_bias < 2; with_bias++) {
            pair x = pair_rand((size_t)N * I, -1, 1), w = pair_rand((size_t)O * I, -1, 1);
            pair b = pair_rand(O, -1, 1), y = pair_new((size_t)N * O);
            pair dy = pair_rand((size_t)N * O, -1, 1), dx = pair_rand((size_t)N * I, -1, 1);
            pair dw = pair_rand((size_t)O * I, -1, 1), db = pair_rand(O, -1, 1);
            char what[96];
            cpu->linear_forward(cpu, x.c, N, I, w.c, with_bias ? b.c : NULL, O, y.c);
            gpu->linear_forward(gpu, x.g, N, I, w.g, with_bias ? b.g : NULL, O, y.g);
            snprintf(what, sizeof what, "linear (%d,%d,%d)%s forward", N, I, O,
                     with_bias ? " +b" : "");
            compare_mm(what, y);
            /* dx written, dw and db accumulated; the no-bias case also
             * passes dx = NULL and db = NULL (the first layer's call). */
            cpu->linear_backward(cpu, x.c, w.c, dy.c, N, I, O, with_bias ? dx.c : NULL, dw.c,
                                 with_bias ? db.c : NULL);
            gpu->linear_backward(gpu, x.g, w.g, dy.g, N, I, O, with_bias ? dx.g : NULL, dw.g,
                                 with_bias ? db.g : NULL);
            snprintf(what, sizeof what, "linear (%d,%d,%d) backward dw (+=)", N, I, O);
            compare_mm(what, dw);
            if (with_bias) {
                snprintf(what, sizeof what, "linear (%d,%d,%d) backward dx", N, I, O);
                compare_mm(what, dx);
                snprintf(what, sizeof what, "linear (%d,%d,%d) backward db (+=)", N, I, O);
                compare(what, db, F32_ATOL, F32_RTOL); /* plain fp32 column sums */
            } else {
                snprintf(what, sizeof what, "linear (%d,%d,%d) db untouched", N, I, O);
                compare(what, db, 0, 0);
                snprintf(what, sizeof what, "linear (%d,%d,%d) dx untouched", N, I, O);
                compare(what, dx, 0, 0);
            }
            pairs_free();
        }
    }
}

/* ---- rows ---- */

Test(backend, l2norm)
{
    NEED_GPU();
    rng_seed(9);
    static const int shapes[][2] = {{8, 16}, {128, 128}, {3, 1000}, {256, 512}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int N = shapes[s][0], D = shapes[s][1];
        const size_t n = (size_t)N * D;
        pair x = pair_rand(n, -1, 1), y = pair_new(n), nrm = pair_new(N);
        pair dy = pair_rand(n, -1, 1), dx = pair_new(n);
        /* Row 0 all zeros: the 1e-12 floor, no NaN. */
        cpu->fill(cpu, x.c, 0.0f, D);
        gpu->fill(gpu, x.g, 0.0f, D);
        char what[96];
        cpu->l2norm_forward(cpu, x.c, N, D, y.c, nrm.c);
        gpu->l2norm_forward(gpu, x.g, N, D, y.g, nrm.g);
        snprintf(what, sizeof what, "l2norm (%d,%d) forward", N, D);
        compare(what, y, F32_ATOL, F32_RTOL);
        snprintf(what, sizeof what, "l2norm (%d,%d) norms", N, D);
        compare(what, nrm, F32_ATOL, F32_RTOL);
        cpu->l2norm_backward(cpu, y.c, nrm.c, dy.c, N, D, dx.c);
        gpu->l2norm_backward(gpu, y.g, nrm.g, dy.g, N, D, dx.g);
        /* Row 0: dy / 1e-12 ~ 1e12, relative tolerance covers it. */
        snprintf(what, sizeof what, "l2norm (%d,%d) backward", N, D);
        compare(what, dx, F32_ATOL, F32_RTOL);
        pairs_free();
    }
}

/* ---- losses and metrics ---- */

Test(backend, loss_every_variant)
{
    NEED_GPU();
    rng_seed(10);
    static const struct {
        const char *name;
        kb_loss_cfg cfg;
    } variants[] = {
        {"byol", {KB_LOSS_BYOL, 0, 0, 0}},
        {"tan byol", {KB_LOSS_BYOL, 0, 0, 1}},
        {"byol' (a1 b1)", {KB_LOSS_UNIFIED, 1, 1, 0}},
        {"raft (a1 b-1)", {KB_LOSS_UNIFIED, 1, -1, 0}},
        {"tan byol' (a1 b0.5)", {KB_LOSS_UNIFIED, 1, 0.5f, 1}},
        {"tan raft (a0.3 b-2)", {KB_LOSS_UNIFIED, 0.3f, -2, 1}},
        {"align only (a1 b0)", {KB_LOSS_UNIFIED, 1, 0, 0}},
    };
    static const int shapes[][2] = {{8, 16}, {128, 128}, {256, 128}, {5, 300}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int N = shapes[s][0], D = shapes[s][1];
        const size_t n = (size_t)N * D;
        pair p1 = pair_unit_rows(N, D), p2 = pair_unit_rows(N, D);
        pair z1 = pair_unit_rows(N, D), z2 = pair_unit_rows(N, D);
        for (size_t v = 0; v < sizeof variants / sizeof variants[0]; v++) {
            pair dp1 = pair_rand(n, -1, 1), dp2 = pair_rand(n, -1, 1), out = pair_new(KB_LOSS_NOUT);
            char what[96];
            cpu->loss(cpu, &variants[v].cfg, p1.c, p2.c, z1.c, z2.c, N, D, dp1.c, dp2.c, out.c);
            gpu->loss(gpu, &variants[v].cfg, p1.g, p2.g, z1.g, z2.g, N, D, dp1.g, dp2.g, out.g);
            /* Loss values are means of O(1) terms (tangential ones divide by
             * l = <p, z>, which random unit vectors make ~1/sqrt(D): values
             * up to ~sqrt(D), still relative 1e-5). */
            snprintf(what, sizeof what, "loss %s (%d,%d) outputs", variants[v].name, N, D);
            compare(what, out, F32_ATOL, F32_RTOL);
            /* Gradients are O(1/N): scale atol with them. */
            snprintf(what, sizeof what, "loss %s (%d,%d) dp1", variants[v].name, N, D);
            compare(what, dp1, F32_ATOL / N, F32_RTOL);
            snprintf(what, sizeof what, "loss %s (%d,%d) dp2", variants[v].name, N, D);
            compare(what, dp2, F32_ATOL / N, F32_RTOL);
            /* keep p1..z2; free the rest at the end of the shape */
        }
        pairs_free();
    }
}

Test(backend, uniformity_and_collapse)
{
    NEED_GPU();
    rng_seed(11);
    static const int shapes[][2] = {{2, 4}, {16, 8}, {128, 128}, {256, 128}, {33, 7}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int N = shapes[s][0], D = shapes[s][1];
        pair z = pair_unit_rows(N, D), u = pair_new(1), c = pair_new(1);
        char what[96];
        cpu->uniformity(cpu, z.c, N, D, 2.0f, u.c);
        gpu->uniformity(gpu, z.g, N, D, 2.0f, u.g);
        snprintf(what, sizeof what, "uniformity t=2 (%d,%d)", N, D);
        compare(what, u, F32_ATOL, F32_RTOL);
        cpu->uniformity(cpu, z.c, N, D, 50.0f, u.c); /* far-from-0 exponents: log-sum-exp */
        gpu->uniformity(gpu, z.g, N, D, 50.0f, u.g);
        snprintf(what, sizeof what, "uniformity t=50 (%d,%d)", N, D);
        compare(what, u, F32_ATOL, F32_RTOL);
        cpu->collapse_std(cpu, z.c, N, D, c.c);
        gpu->collapse_std(gpu, z.g, N, D, c.g);
        snprintf(what, sizeof what, "collapse_std (%d,%d)", N, D);
        compare(what, c, F32_ATOL, F32_RTOL);
        pairs_free();
    }
}

Test(backend, softmax_xent)
{
    NEED_GPU();
    rng_seed(12);
    static const int shapes[][2] = {{37, 10}, {256, 10}, {5, 3}, {1000, 10}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int N = shapes[s][0], K = shapes[s][1];
        pair l = pair_rand((size_t)N * K, -4, 4), dl = pair_new((size_t)N * K), out = pair_new(2);
        int32_t *yh = malloc(N * sizeof(int32_t));
        for (int i = 0; i < N; i++)
            yh[i] = (int32_t)((urand() + 1.0f) * 0.5f * K) % K;
        int32_t *yc = cpu->alloc(cpu, N * sizeof(int32_t)), *yg = gpu->alloc(gpu, N * sizeof(int32_t));
        memcpy(yc, yh, N * sizeof(int32_t));
        gpu->upload(gpu, yg, yh, N * sizeof(int32_t));
        char what[96];
        cpu->softmax_xent(cpu, l.c, yc, N, K, dl.c, out.c);
        gpu->softmax_xent(gpu, l.g, yg, N, K, dl.g, out.g);
        snprintf(what, sizeof what, "softmax_xent (%d,%d) loss, correct", N, K);
        compare(what, out, F32_ATOL, F32_RTOL);
        snprintf(what, sizeof what, "softmax_xent (%d,%d) dlogits", N, K);
        compare(what, dl, F32_ATOL / N, F32_RTOL);
        gpu->softmax_xent(gpu, l.g, yg, N, K, NULL, out.g); /* no gradient asked */
        snprintf(what, sizeof what, "softmax_xent (%d,%d) without dlogits", N, K);
        compare(what, out, F32_ATOL, F32_RTOL);
        cpu->free(cpu, yc);
        gpu->free(gpu, yg);
        free(yh);
        pairs_free();
    }
}

/* ---- optimizer and mean teacher ---- */

Test(backend, adam_and_ema)
{
    NEED_GPU();
    rng_seed(13);
    const size_t n = 50021;
    for (int wd = 0; wd < 2; wd++) {
        pair p = pair_rand(n, -1, 1), m = pair_new(n), v = pair_new(n);
        kb_adam_consts *kg = gpu->alloc(gpu, sizeof(kb_adam_consts));
        float *tg = gpu->alloc(gpu, 2 * sizeof(float));
        for (long step = 1; step <= 3; step++) {
            pair g = pair_rand(n, -1, 1);
            kb_adam_consts k = kb_adam_consts_init(3e-4f, 0.9f, 0.999f, 1e-8f,
                                                   wd ? 1e-4f : 0.0f, step);
            cpu->adam(cpu, p.c, g.c, m.c, v.c, n, &k);
            gpu->upload(gpu, kg, &k, sizeof k);
            gpu->adam(gpu, p.g, g.g, m.g, v.g, n, kg);
        }
        /* Same float formula (kernels/optim.h); the GPU may fuse a
         * multiply-add: ulps of p ~ 1, of m and v ~ their size. */
        compare(wd ? "adam p (weight decay)" : "adam p", p, F32_ATOL, F32_RTOL);
        compare(wd ? "adam m (weight decay)" : "adam m", m, 1e-7, F32_RTOL);
        compare(wd ? "adam v (weight decay)" : "adam v", v, 1e-9, F32_RTOL);
        pair xi = pair_rand(n, -1, 1);
        float tau[2];
        kb_ema_consts_init(0.996f, tau);
        cpu->ema(cpu, xi.c, p.c, n, tau);
        gpu->upload(gpu, tg, tau, sizeof tau);
        gpu->ema(gpu, xi.g, p.g, n, tg);
        compare("ema", xi, F32_ATOL, F32_RTOL);
        gpu->free(gpu, kg);
        gpu->free(gpu, tg);
        pairs_free();
    }
}

/* ---- precision modes (set_precision) and convolution layouts ----
 *
 * BF16 mode rounds each operand of a convolution or GEMM to bf16 (8
 * significant bits: round-to-nearest-even errs by at most u = 2^-9
 * relative), multiplies exactly, accumulates in fp32 and, for cuDNN,
 * rounds the result to bf16 once more (2^-9 relative). A K-term dot
 * product y = sum_k x_k w_k then errs by at most
 *     (2u + u^2) sum_k |x_k||w_k|  (operands)
 *   + u |y| <= u sum_k |x_k||w_k|   (the result's rounding)
 *   + K 2^-24 sum_k |x_k||w_k|      (fp32 accumulation, worst case)
 * so |gpu - cpu| <= 2^-7 S with S = sum_k |x_k||w_k| holds for every
 * element with room to spare (3u = 0.75 * 2^-7; the accumulation term is
 * below 2^-14 for K <= 1024). The bound is relative to S, not to |y|: y
 * may cancel to ~0 while its inputs do not. S is the same op on |x| and
 * |w| on the CPU backend. Parameter gradients add g into an fp32 dw,
 * which rounds once more: + 1e-6 |cpu| (a few fp32 ulps). A direction
 * cuDNN runs in no bf16 configuration falls back to TF32, within this
 * bound as well. */

#define BF16_K 0x1p-7
#define BF16_RTOL 1e-6

/* |gpu - cpu| <= k S[i] + rtol |cpu|, printing the worst element and the
 * largest error seen in units of S. */
static void compare_scaled(const char *what, pair p, const float *S, double k, double rtol)
{
    float *g = malloc(p.n * sizeof(float) + 4);
    gpu->download(gpu, g, p.g, p.n * sizeof(float));
    size_t worst = 0, bad = 0;
    double wr = -INFINITY, emax = 0;
    for (size_t i = 0; i < p.n; i++) {
        double b = p.c[i], a = g[i], err = fabs(a - b);
        double r = isnan(a) || isnan(b) ? INFINITY : err - (k * S[i] + rtol * fabs(b));
        if (r > 0)
            bad++;
        if (r > wr) {
            wr = r;
            worst = i;
        }
        if (S[i] > 0 && err / S[i] > emax)
            emax = err / S[i];
    }
    if (p.n)
        printf("  %-44s n=%-8zu worst [%zu] gpu %+.8e cpu %+.8e S %.2e; max |d|/S %.2e "
               "(bound %.2e)%s\n",
               what, p.n, worst, (double)g[worst], (double)p.c[worst], (double)S[worst], emax,
               k, bad ? "  FAIL" : "");
    cr_expect(bad == 0, "%s: %zu of %zu elements outside |d| <= %.2e S + %.1e |cpu|; worst [%zu] "
                        "gpu %.8e cpu %.8e S %.3e",
              what, bad, p.n, k, rtol, worst, (double)g[worst], (double)p.c[worst],
              (double)S[worst]);
    free(g);
}

static float *host_abs(const float *x, size_t n)
{
    float *a = malloc(n * sizeof(float) + 4);
    for (size_t i = 0; i < n; i++)
        a[i] = fabsf(x[i]);
    return a;
}

/* One convolution shape, every direction, on the GPU plan pg under the
 * mode in effect: bf16 != 0 compares with the bf16 bound, else with
 * compare_mm's (TF32 or fp32). Returns the GPU's forward output (host
 * copy, caller frees) for comparisons between modes. */
static float *conv_check(const kb_conv_desc *d, kb_conv *pg, int bf16, const char *tag,
                         uint64_t seed)
{
    rng_seed(seed);
    kb_conv *pc = cpu->conv_plan(cpu, d);
    cr_assert(pc);
    size_t nx = (size_t)d->N * d->C * d->H * d->W, nw = (size_t)d->K * d->C * d->R * d->S;
    size_t ny = (size_t)d->N * d->K * d->P * d->Q;
    pair x = pair_rand(nx, -1, 1), w = pair_rand(nw, -1, 1), y = pair_new(ny);
    pair dy = pair_rand(ny, -1, 1), dx = pair_rand(nx, -1, 1), dw = pair_rand(nw, -1, 1);
    float *ax = host_abs(x.c, nx), *aw = host_abs(w.c, nw), *ady = host_abs(dy.c, ny);
    float *S = malloc((nx > ny ? (nx > nw ? nx : nw) : (ny > nw ? ny : nw)) * sizeof(float));
    char what[128];
    cpu->conv_forward(cpu, pc, x.c, w.c, y.c);
    gpu->conv_forward(gpu, pg, x.g, w.g, y.g);
    snprintf(what, sizeof what, "%s forward", tag);
    if (bf16) {
        cpu->conv_forward(cpu, pc, ax, aw, S);
        compare_scaled(what, y, S, BF16_K, 0);
    } else {
        compare_mm(what, y);
    }
    cpu->conv_backward_data(cpu, pc, dy.c, w.c, dx.c);
    gpu->conv_backward_data(gpu, pg, dy.g, w.g, dx.g);
    snprintf(what, sizeof what, "%s backward data", tag);
    if (bf16) {
        cpu->conv_backward_data(cpu, pc, ady, aw, S);
        compare_scaled(what, dx, S, BF16_K, 0);
    } else {
        compare_mm(what, dx);
    }
    for (int rep = 1; rep <= 2; rep++) { /* += really adds */
        cpu->conv_backward_weight(cpu, pc, x.c, dy.c, dw.c);
        gpu->conv_backward_weight(gpu, pg, x.g, dy.g, dw.g);
        snprintf(what, sizeof what, "%s backward weight (+= x%d)", tag, rep);
        if (bf16) {
            memset(S, 0, nw * sizeof(float));
            cpu->conv_backward_weight(cpu, pc, ax, ady, S); /* one g's S; rep 2 adds another */
            for (size_t i = 0; i < nw; i++)
                S[i] *= (float)rep;
            compare_scaled(what, dw, S, BF16_K, BF16_RTOL);
        } else {
            compare_mm(what, dw);
        }
    }
    float *out = malloc(ny * sizeof(float));
    gpu->download(gpu, out, y.g, ny * sizeof(float));
    cpu->conv_free(cpu, pc);
    free(ax);
    free(aw);
    free(ady);
    free(S);
    pairs_free();
    return out;
}

/* Sets the mode; a GPU below compute capability 8.0 keeps its mode for
 * BF16: the BF16 tests skip there. */
static void need_precision(kb_precision p)
{
    kb_precision got = gpu->set_precision(gpu, p);
    if (p == KB_PREC_BF16 && got != p)
        cr_skip_test("this GPU has no bf16 mode");
    cr_assert_eq(got, p, "set_precision(%d) gave %d", p, got);
}

Test(backend, bf16_conv)
{
    NEED_GPU();
    need_precision(KB_PREC_BF16);
    for (size_t s = 0; s < sizeof conv_shapes / sizeof conv_shapes[0]; s++) {
        const int *v = conv_shapes[s];
        kb_conv_desc d;
        kb_conv_desc_init(&d, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]);
        kb_conv *pg = gpu->conv_plan(gpu, &d);
        cr_assert(pg, "conv plan for shape %zu", s);
        char tag[64];
        snprintf(tag, sizeof tag, "bf16 conv %zu", s);
        free(conv_check(&d, pg, 1, tag, 20 + s));
        gpu->conv_free(gpu, pg);
    }
}

/* One linear shape under the mode in effect, as conv_check. */
static void linear_check(int N, int I, int O, int bf16, uint64_t seed)
{
    rng_seed(seed);
    pair x = pair_rand((size_t)N * I, -1, 1), w = pair_rand((size_t)O * I, -1, 1);
    pair b = pair_rand(O, -1, 1), y = pair_new((size_t)N * O);
    pair dy = pair_rand((size_t)N * O, -1, 1), dx = pair_rand((size_t)N * I, -1, 1);
    pair dw = pair_rand((size_t)O * I, -1, 1), db = pair_rand(O, -1, 1);
    float *ax = host_abs(x.c, x.n), *aw = host_abs(w.c, w.n), *ady = host_abs(dy.c, dy.n);
    size_t big = x.n > w.n ? x.n : w.n;
    float *S = malloc((big > y.n ? big : y.n) * sizeof(float));
    char what[128];
    cpu->linear_forward(cpu, x.c, N, I, w.c, b.c, O, y.c);
    gpu->linear_forward(gpu, x.g, N, I, w.g, b.g, O, y.g);
    snprintf(what, sizeof what, "%s linear (%d,%d,%d) forward +b", bf16 ? "bf16" : "fp32", N, I,
             O);
    if (bf16) {
        cpu->linear_forward(cpu, ax, N, I, aw, NULL, O, S); /* the bias adds in fp32 */
        compare_scaled(what, y, S, BF16_K, BF16_RTOL);
    } else {
        compare_mm(what, y);
    }
    cpu->linear_backward(cpu, x.c, w.c, dy.c, N, I, O, dx.c, dw.c, db.c);
    gpu->linear_backward(gpu, x.g, w.g, dy.g, N, I, O, dx.g, dw.g, db.g);
    snprintf(what, sizeof what, "%s linear (%d,%d,%d) backward dx", bf16 ? "bf16" : "fp32", N, I,
             O);
    if (bf16) {
        float *zero = calloc(w.n, sizeof(float));
        /* S of dx = |dy| |w|; of dw = |x|^T |dy| (into a zeroed dw) */
        cpu->linear_backward(cpu, ax, aw, ady, N, I, O, S, zero, NULL);
        compare_scaled(what, dx, S, BF16_K, 0);
        memset(S, 0, w.n * sizeof(float));
        cpu->linear_backward(cpu, ax, aw, ady, N, I, O, NULL, S, NULL);
        snprintf(what, sizeof what, "bf16 linear (%d,%d,%d) backward dw (+=)", N, I, O);
        compare_scaled(what, dw, S, BF16_K, BF16_RTOL);
        free(zero);
    } else {
        compare_mm(what, dx);
        snprintf(what, sizeof what, "fp32 linear (%d,%d,%d) backward dw (+=)", N, I, O);
        compare_mm(what, dw);
    }
    snprintf(what, sizeof what, "%s linear (%d,%d,%d) backward db (+=)", bf16 ? "bf16" : "fp32",
             N, I, O);
    compare(what, db, F32_ATOL, F32_RTOL); /* fp32 column sums in every mode */
    free(ax);
    free(aw);
    free(ady);
    free(S);
    pairs_free();
}

Test(backend, bf16_linear)
{
    NEED_GPU();
    need_precision(KB_PREC_BF16);
    static const int shapes[][3] = {{5, 7, 3}, {64, 512, 128}, {17, 33, 65}, {32, 128, 512}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        linear_check(shapes[s][0], shapes[s][1], shapes[s][2], 1, 40 + s);
    /* dx = NULL and db = NULL (the first layer's call) leave them alone */
    rng_seed(49);
    pair x = pair_rand(6 * 10, -1, 1), w = pair_rand(4 * 10, -1, 1), dy = pair_rand(6 * 4, -1, 1);
    pair dx = pair_rand(6 * 10, -1, 1), dw = pair_new(4 * 10);
    gpu->linear_backward(gpu, x.g, w.g, dy.g, 6, 10, 4, NULL, dw.g, NULL);
    compare("bf16 linear dx untouched", dx, 0, 0);
    pairs_free();
}

/* Switching back and forth: a plan made under one mode serves the others
 * (planning each on its first call there), cuBLAS follows at once, and
 * the results come back to fp32 accuracy after bf16 (compare_mm's fp32
 * bound, 1e-4 of the rms, is far below bf16's ~2^-9 of the rms). */
Test(backend, precision_switch)
{
    NEED_GPU();
    kb_conv_desc d;
    kb_conv_desc_init(&d, 4, 8, 10, 10, 16, 3, 3, 1, 1);
    kb_conv *pg = gpu->conv_plan(gpu, &d); /* under the backend's initial mode */
    cr_assert(pg);
    need_precision(KB_PREC_BF16);
    float *yb = conv_check(&d, pg, 1, "switch 1: bf16 conv", 60);
    linear_check(24, 40, 12, 1, 61);
    const int saved_tf32 = tf32;
    need_precision(KB_PREC_FP32);
    tf32 = 0;
    float *yf = conv_check(&d, pg, 0, "switch 2: fp32 conv", 60);
    linear_check(24, 40, 12, 0, 61);
    /* bf16 really rounded: the same inputs gave other outputs */
    size_t ny = (size_t)d.N * d.K * d.P * d.Q, differ = 0;
    for (size_t i = 0; i < ny; i++)
        differ += yb[i] != yf[i];
    printf("  bf16 vs fp32 forward: %zu of %zu outputs differ\n", differ, ny);
    cr_expect(differ > ny / 2, "bf16 and fp32 gave the same outputs: was bf16 in effect?");
    need_precision(KB_PREC_BF16);
    free(conv_check(&d, pg, 1, "switch 3: bf16 conv", 62));
    need_precision(KB_PREC_TF32);
    tf32 = 1;
    free(conv_check(&d, pg, 0, "switch 4: tf32 conv", 63));
    linear_check(24, 40, 12, 0, 64);
    need_precision(KB_PREC_FP32);
    tf32 = 0;
    free(conv_check(&d, pg, 0, "switch 5: fp32 conv", 65));
    tf32 = saved_tf32;
    cr_expect_eq(gpu->set_precision(gpu, (kb_precision)7), KB_PREC_FP32,
                 "an unknown mode leaves the mode as it was");
    free(yb);
    free(yf);
    gpu->conv_free(gpu, pg);
}

/* RW_CUDA_CONV_LAYOUT forces a layout at plan time: NHWC (with our
 * transposing copies) and NCHW must both match the CPU, in fp32 and in
 * bf16 (where the transpose rides in the cast). Plans of the same shape
 * under the two layouts coexist. */
Test(backend, conv_layouts)
{
    NEED_GPU();
    static const char *const layouts[] = {"nchw", "nhwc", "auto"};
    static const int shapes[][9] = {
        {2, 3, 9, 9, 5, 3, 3, 1, 1},
        {4, 8, 10, 10, 16, 1, 1, 2, 0},
        {3, 16, 6, 5, 16, 3, 3, 1, 1},
    };
    for (int bf16 = 0; bf16 < 2; bf16++) {
        if (bf16)
            need_precision(KB_PREC_BF16);
        else
            cr_assert_eq(gpu->set_precision(gpu, KB_PREC_FP32), KB_PREC_FP32);
        const int saved_tf32 = tf32;
        tf32 = 0;
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (int l = 0; l < 3; l++) {
                setenv("RW_CUDA_CONV_LAYOUT", layouts[l], 1);
                const int *v = shapes[s];
                kb_conv_desc d;
                kb_conv_desc_init(&d, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]);
                kb_conv *pg = gpu->conv_plan(gpu, &d);
                cr_assert(pg);
                char tag[64];
                snprintf(tag, sizeof tag, "%s %s conv %zu", bf16 ? "bf16" : "fp32", layouts[l], s);
                free(conv_check(&d, pg, bf16, tag, 70 + s));
                gpu->conv_free(gpu, pg);
            }
        tf32 = saved_tf32;
    }
    unsetenv("RW_CUDA_CONV_LAYOUT");
}

/* Where cuDNN declines bf16 the plan falls back (NCHW -> NHWC, then
 * TF32) instead of failing. The emulated cuDNN declines on request
 * (kernels/cuda/emu/cudnn.h); a real one ignores these variables, and the
 * test then checks the ordinary bf16 path once more. */
Test(backend, bf16_fallbacks)
{
    NEED_GPU();
    need_precision(KB_PREC_BF16);
    kb_conv_desc d;
    kb_conv_desc_init(&d, 2, 4, 7, 7, 6, 3, 3, 1, 1);
    setenv("RW_CUDA_CONV_LAYOUT", "nchw", 1);
    setenv("EMU_CUDNN_NO_BF16_NCHW", "1", 1);
    kb_conv *pg = gpu->conv_plan(gpu, &d);
    cr_assert(pg);
    free(conv_check(&d, pg, 1, "bf16 conv, NCHW declined", 80));
    gpu->conv_free(gpu, pg);
    unsetenv("EMU_CUDNN_NO_BF16_NCHW");
    unsetenv("RW_CUDA_CONV_LAYOUT");
    setenv("EMU_CUDNN_NO_BF16", "1", 1);
    kb_conv_desc_init(&d, 2, 4, 7, 7, 6, 3, 3, 2, 1); /* another shape: no memo */
    pg = gpu->conv_plan(gpu, &d);
    cr_assert(pg);
    free(conv_check(&d, pg, 1, "bf16 conv, bf16 declined (TF32)", 81));
    gpu->conv_free(gpu, pg);
    unsetenv("EMU_CUDNN_NO_BF16");
}

/* A bf16 step can be captured: plans reserve the scratch and workspace
 * their copies need, so nothing grows (or allocates) inside the capture. */
Test(backend, bf16_capture)
{
    NEED_GPU();
    if (!gpu->capture_begin)
        cr_skip_test("no captures in this backend");
    need_precision(KB_PREC_BF16);
    rng_seed(90);
    kb_conv_desc d;
    kb_conv_desc_init(&d, 2, 8, 6, 6, 8, 3, 3, 1, 1);
    kb_conv *pg = gpu->conv_plan(gpu, &d);
    cr_assert(pg);
    size_t nx = (size_t)d.N * d.C * d.H * d.W, nw = (size_t)d.K * d.C * d.R * d.S;
    size_t ny = (size_t)d.N * d.K * d.P * d.Q;
    pair x = pair_rand(nx, -1, 1), w = pair_rand(nw, -1, 1), y = pair_new(ny);
    pair y2 = pair_new(ny), dw = pair_new(nw), dw2 = pair_new(nw);
    pair lx = pair_rand(6 * 72, -1, 1), lw = pair_rand(5 * 72, -1, 1), ly = pair_new(6 * 5);
    pair ly2 = pair_new(6 * 5);
    /* uncaptured first: the linear layer's scratch grows here */
    gpu->conv_forward(gpu, pg, x.g, w.g, y.g);
    gpu->conv_backward_weight(gpu, pg, x.g, y.g, dw.g);
    gpu->linear_forward(gpu, lx.g, 6, 72, lw.g, NULL, 5, ly.g);
    cr_assert_eq(gpu->capture_begin(gpu), 0);
    gpu->conv_forward(gpu, pg, x.g, w.g, y2.g);
    gpu->conv_backward_weight(gpu, pg, x.g, y2.g, dw2.g);
    gpu->linear_forward(gpu, lx.g, 6, 72, lw.g, NULL, 5, ly2.g);
    char err[256] = "";
    kb_graph *g = gpu->capture_end(gpu, err, sizeof err);
    cr_assert(g, "capture failed: %s", err);
    gpu->graph_launch(gpu, g);
    const size_t big = nw > ny ? nw : ny;
    float *a = malloc(big * sizeof(float)), *b = malloc(big * sizeof(float));
    gpu->download(gpu, a, y.g, ny * sizeof(float));
    gpu->download(gpu, b, y2.g, ny * sizeof(float));
    cr_expect(memcmp(a, b, ny * sizeof(float)) == 0, "captured bf16 forward differs");
    gpu->download(gpu, a, dw.g, nw * sizeof(float));
    gpu->download(gpu, b, dw2.g, nw * sizeof(float));
    cr_expect(memcmp(a, b, nw * sizeof(float)) == 0, "captured bf16 weight gradient differs");
    gpu->download(gpu, a, ly.g, 30 * sizeof(float));
    gpu->download(gpu, b, ly2.g, 30 * sizeof(float));
    cr_expect(memcmp(a, b, 30 * sizeof(float)) == 0, "captured bf16 linear differs");
    free(a);
    free(b);
    gpu->graph_free(gpu, g);
    gpu->conv_free(gpu, pg);
    pairs_free();
}
