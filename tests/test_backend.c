/* Backend cross-check: every op of kernels/backend.h on random inputs, on
 * the CPU backend (the reference, itself checked by the ops suite) and on
 * the CUDA backend, compared element by element with
 *     |gpu - cpu| <= atol + rtol * |cpu|,
 * printing the worst element of every comparison. Without a usable GPU
 * every test skips with kb_cuda_create's reason.
 *
 * Data go in and out through the interface on both sides: fp32 rows by
 * upload and download; feature maps by fmap_upload and fmap_download (the
 * CPU's format is fp32 NCHW, the GPU's NHWC in the math's type with each
 * pixel's channels padded with zeros to 16 bytes). The GPU's outputs start
 * as all-ones bytes (NaN), and every feature map a GPU op writes is also
 * read back raw, its padding channels required to be zeros: an element or
 * a padding channel an op leaves unwritten fails. Convolution and linear
 * weights are read both ways: from the fp32 parameter (wm NULL) and from a
 * mirror (mirror_create over a parameter buffer holding the weight among
 * other values, mirror_at).
 *
 * Tolerances (inputs are O(1) unless a test says otherwise):
 * - Pure fp32 kernels (elementwise, BN, pooling, norms, losses, Adam):
 *   both backends reduce in double and round once to float; what differs
 *   is the GPU's fused multiply-adds and the order of double sums, a few
 *   float ulps (~1e-7 relative) per element. rtol 1e-5 leaves 100x margin;
 *   atol 1e-5 covers results that cancel to ~0 (e.g. a*x + b in BN, whose
 *   rounding is ~ulp(|b|) ~ 1e-7).
 * - The same kernels on bf16 feature maps (BF16 mode): inputs are the same
 *   bf16 values on both sides (the CPU rounds what it uploads and every
 *   feature map it writes, kb_cpu_emulate_rounding), the math is fp32 as
 *   above, and each result is rounded to bf16 once. Two fp32 results within
 *   e of each other round to values at most e + one bf16 ulp apart (they
 *   may straddle a rounding boundary), and a bf16 ulp is at most 2^-7 of
 *   the value (8 significant bits): rtol + 2^-7. Selections and sums in
 *   the same order (max pool, its gradient, the average pool's gradient,
 *   the gradient through a ReLU) stay exact.
 * - Convolutions and GEMMs on TF32 tensor cores round each input to 10
 *   mantissa bits (unit roundoff u = 2^-11 ~ 4.9e-4; truncating kernels
 *   2^-10). A K-term dot product of random-sign terms then errs by about
 *   sqrt(2/3) u |x||w| per term in quadrature, ~4e-4 of the output's rms;
 *   the worst of ~1e5 outputs sits near 4.5 sigma, ~2e-3 of rms (4e-3 for
 *   truncation). So atol = 5e-3 * rms(reference), rtol = 1e-3. In FP32
 *   mode (RW_CUDA_TF32=0, or set_precision) the same comparisons use
 *   atol = 1e-4 * rms, rtol = 1e-4: summation order alone would stay near
 *   1e-6, but cuDNN may pick FFT or Winograd algorithms, whose transforms
 *   lose ~1e-5 of the rms in fp32 (Winograd's larger tiles amplify input
 *   rounding ~10x). BF16 mode: see the bf16 section below.
 * - Exact ops (ReLU, max pool values and indices, copies, feature-map round
 *   trips): atol = rtol = 0; the max-pool gradient adds the same floats in
 *   the same order. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"
#include "kernels/optim.h"
#include "kernels/cuda/emu/emu_cost.h"

static kb_backend *cpu, *gpu;
static char why[512];
static kb_precision mode; /* the GPU's math mode, which the CPU emulates the rounding of */

static void setup(void)
{
    cpu = kb_cpu_create(1);
    cr_assert_not_null(cpu);
    why[0] = 0;
    gpu = kb_cuda_create(0, why, sizeof why);
    /* kb_cuda_create starts in TF32 mode, FP32 with RW_CUDA_TF32=0 */
    const char *t = getenv("RW_CUDA_TF32");
    mode = t && strcmp(t, "0") == 0 ? KB_PREC_FP32 : KB_PREC_TF32;
    if (gpu)
        cr_assert_eq(gpu->set_precision(gpu, mode), mode);
}

static void teardown(void)
{
    kb_destroy(gpu);
    kb_destroy(cpu);
}

TestSuite(backend, .init = setup, .fini = teardown);

#define NEED_GPU()                                                                                \
    do {                                                                                          \
        if (!gpu)                                                                                 \
            cr_skip_test("no CUDA backend: %s", why);                                             \
    } while (0)

/* Sets the GPU's mode and the CPU's rounding to match; a GPU below compute
 * capability 8.0 keeps its mode for BF16: the BF16 tests skip there.
 * Feature maps and mirrors are valid only under the mode they were made
 * in: free them before (pairs_free) and make them again after. */
static void use_mode(kb_precision p)
{
    kb_precision got = gpu->set_precision(gpu, p);
    if (p == KB_PREC_BF16 && got != p)
        cr_skip_test("this GPU has no bf16 mode");
    cr_assert_eq(got, p, "set_precision(%d) gave %d", p, got);
    kb_cpu_emulate_rounding(cpu, p == KB_PREC_BF16 ? KB_PREC_BF16 : KB_PREC_FP32);
    mode = p;
}

/* The element size of the GPU's feature maps under the mode in effect. */
static int fmap_esize(void) { return mode == KB_PREC_BF16 ? 2 : 4; }

/* The CUDA backend's feature-map layout (kernels/cuda/cuda.h): NHWC, a
 * pixel's C channels padded to a multiple of 16 bytes. */
static int cuda_cpad(int C, int es)
{
    const int v = 16 / es;
    return (C + v - 1) / v * v;
}

/* ---- buffers on both backends ---- */

/* The same tensor on both: fp32 rows (N = 0), or a feature map (N, C, H,
 * W) -- fp32 NCHW on the CPU, the GPU's format (element size es, the mode
 * it was made under) on the GPU. */
typedef struct pair {
    float *c;
    void *g;
    size_t n; /* elements as the interface counts them */
    int N, C, H, W;
    int es;
} pair;

static pair live[256];
static int nlive;

/* Parameter buffers with mirrors (mirror_of), freed with the pairs. */
static struct {
    float *params;
    kb_mirror *mr;
} mirrors[32];
static int nmirrors;

static pair track(pair p)
{
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
    for (int i = 0; i < nmirrors; i++) {
        gpu->mirror_free(gpu, mirrors[i].mr);
        gpu->free(gpu, mirrors[i].params);
    }
    nmirrors = 0;
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

static float *host_rand(size_t n, float lo, float hi)
{
    float *h = malloc(n * sizeof(float) + 4);
    for (size_t i = 0; i < n; i++)
        h[i] = lo + (hi - lo) * 0.5f * (urand() + 1.0f);
    return h;
}

/* fp32 rows, zero on both (alloc zero-fills). */
static pair pair_new(size_t n)
{
    return track((pair){cpu->alloc(cpu, n * sizeof(float) + 4),
                        gpu->alloc(gpu, n * sizeof(float) + 4), n, 0, 0, 0, 0, 4});
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
    float *h = host_rand(n, lo, hi);
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

/* A feature map an op is to write: every byte ones (NaN) on both, the GPU's
 * padding channels included. */
static pair fmap_out(int N, int C, int H, int W)
{
    const size_t n = (size_t)N * C * H * W, gb = gpu->fmap_bytes(gpu, N, C, H, W);
    pair p = track((pair){cpu->alloc(cpu, cpu->fmap_bytes(cpu, N, C, H, W) + 4),
                          gpu->alloc(gpu, gb + 4), n, N, C, H, W, fmap_esize()});
    memset(p.c, 0xff, n * sizeof(float));
    unsigned char *ones = malloc(gb + 4);
    memset(ones, 0xff, gb);
    gpu->upload(gpu, p.g, ones, gb);
    free(ones);
    return p;
}

/* The host's fp32 NCHW values on both through fmap_upload (the CPU rounds
 * them to bf16 where it emulates BF16 mode, as the GPU stores them). */
static pair fmap_from(const float *h, int N, int C, int H, int W)
{
    pair p = fmap_out(N, C, H, W);
    cpu->fmap_upload(cpu, p.c, h, N, C, H, W);
    gpu->fmap_upload(gpu, p.g, h, N, C, H, W);
    return p;
}

static pair fmap_rand(int N, int C, int H, int W, float lo, float hi)
{
    float *h = host_rand((size_t)N * C * H * W, lo, hi);
    pair p = fmap_from(h, N, C, H, W);
    free(h);
    return p;
}

/* The GPU's values made the CPU's (for a feature map exactly: the CPU's
 * values are already what the GPU's format holds). */
static void pair_sync(pair p)
{
    if (p.N)
        gpu->fmap_upload(gpu, p.g, p.c, p.N, p.C, p.H, p.W);
    else
        gpu->upload(gpu, p.g, p.c, p.n * sizeof(float));
}

static double rms(const float *x, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)x[i] * x[i];
    return n ? sqrt(s / n) : 0;
}

static float *host_abs(const float *x, size_t n)
{
    float *a = malloc(n * sizeof(float) + 4);
    for (size_t i = 0; i < n; i++)
        a[i] = fabsf(x[i]);
    return a;
}

/* The padding channels of the GPU's feature map p, read raw: zeros. */
static void pad_check(const char *what, pair p)
{
    const int Cp = cuda_cpad(p.C, p.es);
    const size_t pix = (size_t)p.N * p.H * p.W, bytes = pix * Cp * p.es;
    unsigned char *raw = malloc(bytes + 4);
    gpu->download(gpu, raw, p.g, bytes);
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < pix; i++)
        for (int c = p.C; c < Cp; c++) {
            const size_t e = i * Cp + c;
            float v;
            if (p.es == 2) {
                uint16_t b;
                memcpy(&b, raw + 2 * e, 2);
                uint32_t u = (uint32_t)b << 16;
                memcpy(&v, &u, 4);
            } else {
                memcpy(&v, raw + 4 * e, 4);
            }
            if (!(v == 0.0f) && !bad++)
                first = e;
        }
    cr_expect(bad == 0, "%s: %zu padding channels (C %d padded to %d) not zero, first at %zu",
              what, bad, p.C, Cp, first);
    if (bad)
        printf("  %-44s %zu padding channels not zero  FAIL\n", what, bad);
    free(raw);
}

/* The GPU's values of p as host fp32 (caller frees); for a feature map,
 * NCHW through fmap_download, after checking its padding. */
static float *fetch(const char *what, pair p)
{
    float *g = malloc(p.n * sizeof(float) + 4);
    if (p.N) {
        pad_check(what, p);
        gpu->fmap_download(gpu, g, p.g, p.N, p.C, p.H, p.W);
    } else {
        gpu->download(gpu, g, p.g, p.n * sizeof(float));
    }
    return g;
}

/* Compares the pair's GPU values with its CPU values within
 *     |gpu - cpu| <= atol + rtol |cpu| + k S[i]  (S NULL: no such term),
 * printing the worst element (largest error over its bound) whether or not
 * it passes, and with S the largest error seen in units of S. */
static void compare_bound(const char *what, pair p, double atol, double rtol, const float *S,
                          double k)
{
    float *g = fetch(what, p);
    size_t worst = 0, bad = 0;
    double wr = -INFINITY, emax = 0;
    for (size_t i = 0; i < p.n; i++) {
        double b = p.c[i], a = g[i];
        double err = fabs(a - b), bound = atol + rtol * fabs(b) + (S ? k * S[i] : 0);
        double r = (isnan(a) != isnan(b)) ? INFINITY : (isnan(a) || a == b ? 0 : err - bound);
        if (r > 0)
            bad++;
        if (r > wr) {
            wr = r;
            worst = i;
        }
        if (S && S[i] > 0 && err / S[i] > emax)
            emax = err / S[i];
    }
    if (p.n && S)
        printf("  %-44s n=%-8zu worst [%zu] gpu %+.8e cpu %+.8e S %.2e; max |d|/S %.2e "
               "(bound %.2e)%s\n",
               what, p.n, worst, (double)g[worst], (double)p.c[worst], (double)S[worst], emax,
               k, bad ? "  FAIL" : "");
    else if (p.n)
        printf("  %-44s n=%-8zu worst [%zu] gpu %+.8e cpu %+.8e |d| %.2e (atol %.1e rtol %.1e)%s\n",
               what, p.n, worst, (double)g[worst], (double)p.c[worst],
               fabs((double)g[worst] - p.c[worst]), atol, rtol, bad ? "  FAIL" : "");
    cr_expect(bad == 0, "%s: %zu of %zu elements outside |d| <= %.1e + %.1e |cpu| + %.1e S; "
                        "worst [%zu] gpu %.8e cpu %.8e",
              what, bad, p.n, atol, rtol, S ? k : 0.0, worst, (double)g[worst],
              (double)p.c[worst]);
    free(g);
}

static void compare(const char *what, pair p, double atol, double rtol)
{
    compare_bound(what, p, atol, rtol, NULL, 0);
}

#define F32_ATOL 1e-5
#define F32_RTOL 1e-5
#define BF16_ULP 0x1p-7 /* one bf16 ulp, relative to the value, at most */

/* An fp32 kernel's result: F32's bound, plus one bf16 ulp where the result
 * is a bf16 feature map (see the header). */
static void compare_f32(const char *what, pair p, double atol)
{
    compare(what, p, atol, F32_RTOL + (p.N && p.es == 2 ? BF16_ULP : 0));
}

/* TF32- or FP32-mode tolerance for conv/GEMM outputs (see the header). */
static void compare_mm(const char *what, pair p)
{
    double r = rms(p.c, p.n);
    if (mode == KB_PREC_TF32)
        compare(what, p, 5e-3 * r, 1e-3);
    else
        compare(what, p, 1e-4 * r, 1e-4);
}

/* GPU feature maps (or rows) a and b hold the same bits. */
static void expect_same_bits(const char *what, pair a, pair b)
{
    const size_t bytes = a.N ? gpu->fmap_bytes(gpu, a.N, a.C, a.H, a.W) : a.n * sizeof(float);
    unsigned char *ha = malloc(bytes + 4), *hb = malloc(bytes + 4);
    gpu->download(gpu, ha, a.g, bytes);
    gpu->download(gpu, hb, b.g, bytes);
    cr_expect(memcmp(ha, hb, bytes) == 0, "%s: the bits differ", what);
    printf("  %-44s %s\n", what, memcmp(ha, hb, bytes) == 0 ? "same bits" : "bits differ  FAIL");
    free(ha);
    free(hb);
}

/* A weight w (GPU copy) placed at an unaligned offset of a parameter buffer
 * among other values, behind a linear weight, and mirrored there under the
 * mode in effect: *wp is the weight's fp32 place in the buffer, the
 * return value its mirror (mirror_at). A linear weight: R = S = 0. */
static const void *mirror_of(pair w, int K, int C, int R, int S, const float **wp)
{
    const size_t off = 37, tail = 11, n = off + w.n + tail;
    float *params = gpu->alloc(gpu, n * sizeof(float));
    cr_assert(params);
    gpu->fill(gpu, params, 0.5f, n);
    gpu->copy(gpu, params + off, w.g, w.n * sizeof(float));
    const kb_wseg seg[2] = {{5, 4, 6, 0, 0}, {off, K, C, R, S}};
    kb_mirror *mr = gpu->mirror_create(gpu, params, seg, 2);
    cr_assert(mr);
    cr_assert(nmirrors < (int)(sizeof mirrors / sizeof mirrors[0]));
    mirrors[nmirrors].params = params;
    mirrors[nmirrors++].mr = mr;
    *wp = params + off;
    return gpu->mirror_at(gpu, mr, off);
}

/* ---- memory and elementwise ---- */

Test(backend, memory_and_elementwise)
{
    NEED_GPU();
    rng_seed(1);
    const size_t n = 100003; /* not a multiple of any block size */
    pair z = pair_new(n);    /* alloc is zero-filled on both */
    compare("alloc zero-filled", z, 0, 0);
    pair a = pair_rand(n, -1, 1);
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
    pairs_free();
}

/* ---- the device ---- */

/* device_info answers: a name, and free memory within the total where the
 * total is known; a short buffer gets the name cut and terminated. */
static void device_info_answers(kb_backend *be)
{
    char name[96];
    memset(name, 'x', sizeof name);
    size_t free_b = 1, total_b = 1;
    be->device_info(be, name, sizeof name, &free_b, &total_b);
    cr_expect(memchr(name, 0, sizeof name), "%s backend: name not terminated", be->name);
    cr_expect(name[0] != 0, "%s backend: empty device name", be->name);
    cr_expect(free_b <= total_b, "%s backend (%s): %zu bytes free of %zu", be->name, name,
              free_b, total_b);
    char cut[4];
    memset(cut, 'x', sizeof cut);
    be->device_info(be, cut, sizeof cut, &free_b, &total_b);
    cr_expect_eq(strlen(cut), 3, "%s backend: name in 4 bytes: '%.4s'", be->name, cut);
    cr_expect(strncmp(cut, name, 3) == 0, "%s backend: '%s' then '%s'", be->name, name, cut);
}

/* The CPU's answers without a GPU: its threads, and the host's memory
 * (Linux has /proc/meminfo). */
Test(backend, device_info)
{
    device_info_answers(cpu);
    char name[64];
    size_t free_b = 0, total_b = 0;
    cpu->device_info(cpu, name, sizeof name, &free_b, &total_b);
    cr_expect_str_eq(name, "CPU (1 thread)");
    cr_expect_gt(total_b, 0, "no host memory from /proc/meminfo");
    cr_expect_gt(free_b, 0, "no available host memory from /proc/meminfo");
    kb_backend *four = kb_cpu_create(4);
    cr_assert_not_null(four);
    four->device_info(four, name, sizeof name, &free_b, &total_b);
    cr_expect_str_eq(name, "CPU (4 threads)");
    kb_destroy(four);
    if (!gpu)
        return;
    device_info_answers(gpu);
    gpu->device_info(gpu, name, sizeof name, &free_b, &total_b);
    cr_expect_gt(total_b, 0, "GPU %s: no memory total", name);
    cr_expect_gt(free_b, 0, "GPU %s: no free memory", name);
}

/* ---- feature maps ---- */

/* fmap_bytes follows the layout rule; upload then download gives the
 * values back exactly in fp32 and as bf16 rounds them in BF16 mode (the
 * CPU's emulated rounding: nearest even, infinities and NaN kept, past
 * bf16's largest to infinity, subnormals too); the padding is zeros. */
static void fmap_round_trip(void)
{
    static const int shapes[][4] = {
        {2, 3, 5, 7}, {1, 1, 4, 4}, {3, 4, 3, 3}, {2, 5, 6, 1}, {2, 8, 3, 3}, {1, 17, 2, 3},
        {1, 64, 4, 4},
    };
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int N = shapes[s][0], C = shapes[s][1], H = shapes[s][2], W = shapes[s][3];
        const size_t n = (size_t)N * C * H * W;
        const int es = fmap_esize();
        const size_t want = (size_t)N * H * W * cuda_cpad(C, es) * es;
        cr_expect_eq(gpu->fmap_bytes(gpu, N, C, H, W), want, "fmap_bytes (%d,%d,%d,%d) %s: %zu, "
                     "want %zu", N, C, H, W, kb_precision_name(mode),
                     gpu->fmap_bytes(gpu, N, C, H, W), want);
        float *h = host_rand(n, -3, 3);
        static const float special[] = {INFINITY, -INFINITY, NAN, 3.4e38f, -3.39e38f, 1e-40f,
                                        -2.5e-39f, 0.0f, -0.0f, 1.00390625f /* a bf16 tie */};
        for (size_t i = 0; i < sizeof special / sizeof special[0] && i < n; i++)
            h[(i * 7919) % n] = special[i];
        pair p = fmap_from(h, N, C, H, W);
        char what[96];
        snprintf(what, sizeof what, "%s fmap (%d,%d,%d,%d) round trip", kb_precision_name(mode),
                 N, C, H, W);
        compare(what, p, 0, 0); /* p.c: h itself in fp32, h rounded to bf16 in BF16 mode */
        free(h);
        pairs_free();
    }
}

Test(backend, feature_map_round_trip)
{
    NEED_GPU();
    rng_seed(30);
    fmap_round_trip();
    use_mode(KB_PREC_BF16);
    fmap_round_trip();
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
    {2, 5, 7, 7, 6, 3, 3, 1, 1},     /* C, K padded in fp32 and bf16 */
    {3, 12, 6, 6, 5, 3, 3, 2, 1},    /* C padded in bf16 only, K in both */
};

/* ---- BF16 mode (set_precision) ----
 *
 * BF16 mode multiplies bf16 operands (8 significant bits: rounding to
 * nearest even errs by at most u = 2^-8 relative, half an ulp),
 * accumulates in fp32 and, for cuDNN, rounds the result to bf16 once. The
 * operands are the same bf16 values on both sides: feature maps are stored
 * in bf16 by both (the CPU rounds what it uploads and writes), weights are
 * rounded to nearest even by both (the mirror, or a pack per call; also
 * where cuDNN declines bf16 and a direction runs TF32 on fp32 copies, in
 * which bf16 values are exact), and linear layers round x and dy alike. A
 * product of two bf16 values is exact in fp32. What differs is the order
 * of the fp32 sums -- each side errs by at most K 2^-24 S for K terms,
 * worst case, with S = sum_k |x_k||w_k| -- and, for a bf16 result, its
 * rounding: where the two sums straddle a rounding boundary they land an
 * ulp apart, at most 2 u |y| <= 2^-7 S. So
 *     |gpu - cpu| <= (2^-7 + 2 K 2^-24) S <= (2^-7 + 2^-12) S
 * for K <= 2048 terms (the tests' largest is a weight gradient's
 * N P Q = 1152). The bound is relative to S, not to |y|: y may cancel to
 * ~0 while its inputs do not. S is the same op on |x| and |w| on the CPU
 * backend. A backward-data pass that adds into dx rounds dx_old + g once:
 * S gets + |dx_old| (the same dx_old on both sides). Parameter gradients
 * add g into an fp32 dw, which rounds once more: + 1e-6 |cpu| (a few fp32
 * ulps); a second += adds a second g (S doubled). Linear layers' y, dx
 * and dw stay fp32: the bound holds all the more. */

#define BF16_K (0x1p-7 + 0x1p-12)
#define BF16_RTOL 1e-6

/* One convolution shape, every direction, on the GPU plan pg under the
 * mode in effect: the weight from w (wm NULL) and from a mirror; backward
 * data written and added (accumulate); the weight gradient added twice.
 * BF16 mode compares with the bf16 bound, the others with compare_mm's.
 * Returns the GPU's forward output (host NCHW copy, caller frees) for
 * comparisons between modes. */
static float *conv_check(const kb_conv_desc *d, kb_conv *pg, const char *tag, uint64_t seed)
{
    rng_seed(seed);
    const int bf16 = mode == KB_PREC_BF16;
    kb_conv *pc = cpu->conv_plan(cpu, d);
    cr_assert(pc);
    const int N = d->N, C = d->C, H = d->H, W = d->W, K = d->K, P = d->P, Q = d->Q;
    size_t nx = (size_t)N * C * H * W, nw = (size_t)K * C * d->R * d->S, ny = (size_t)N * K * P * Q;
    pair x = fmap_rand(N, C, H, W, -1, 1), w = pair_rand(nw, -1, 1);
    pair dy = fmap_rand(N, K, P, Q, -1, 1), dw = pair_rand(nw, -1, 1);
    const float *wp;
    const void *wm = mirror_of(w, K, C, d->R, d->S, &wp);
    float *ax = host_abs(x.c, nx), *aw = host_abs(w.c, nw), *ady = host_abs(dy.c, ny);
    size_t big = nx > ny ? nx : ny;
    float *S = malloc((big > nw ? big : nw) * sizeof(float));
    char what[128];
    float *out = NULL;
    for (int m = 0; m < 2; m++) { /* the weight from w, then from its mirror */
        const char *how = m ? "wm" : "w";
        const float *wg = m ? wp : w.g;
        pair y = fmap_out(N, K, P, Q), dx = fmap_out(N, C, H, W);
        cpu->conv_forward(cpu, pc, x.c, w.c, NULL, y.c);
        gpu->conv_forward(gpu, pg, x.g, wg, m ? wm : NULL, y.g);
        snprintf(what, sizeof what, "%s forward (%s)", tag, how);
        if (bf16) {
            cpu->conv_forward(cpu, pc, ax, aw, NULL, S);
            compare_bound(what, y, 0, 0, S, BF16_K);
        } else {
            compare_mm(what, y);
        }
        if (!m)
            out = fetch(what, y);
        cpu->conv_backward_data(cpu, pc, dy.c, w.c, NULL, dx.c, 0);
        gpu->conv_backward_data(gpu, pg, dy.g, wg, m ? wm : NULL, dx.g, 0);
        snprintf(what, sizeof what, "%s backward data (%s)", tag, how);
        if (bf16) {
            cpu->conv_backward_data(cpu, pc, ady, aw, NULL, S, 0);
            compare_bound(what, dx, 0, 0, S, BF16_K);
        } else {
            compare_mm(what, dx);
        }
        /* added to a residual's gradient already there (the same values on
         * both sides) */
        pair acc = fmap_rand(N, C, H, W, -1, 1);
        float *aacc = host_abs(acc.c, nx);
        cpu->conv_backward_data(cpu, pc, dy.c, w.c, NULL, acc.c, 1);
        gpu->conv_backward_data(gpu, pg, dy.g, wg, m ? wm : NULL, acc.g, 1);
        snprintf(what, sizeof what, "%s backward data += (%s)", tag, how);
        if (bf16) {
            cpu->conv_backward_data(cpu, pc, ady, aw, NULL, S, 0);
            for (size_t i = 0; i < nx; i++)
                S[i] += aacc[i];
            compare_bound(what, acc, 0, 0, S, BF16_K);
        } else {
            compare_mm(what, acc);
        }
        free(aacc);
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
            compare_bound(what, dw, 0, BF16_RTOL, S, BF16_K);
        } else {
            compare_mm(what, dw);
        }
    }
    cpu->conv_free(cpu, pc);
    free(ax);
    free(aw);
    free(ady);
    free(S);
    pairs_free();
    return out;
}

/* Every shape under the mode in effect. */
static void conv_shapes_check(const char *prefix, uint64_t seed)
{
    for (size_t s = 0; s < sizeof conv_shapes / sizeof conv_shapes[0]; s++) {
        const int *v = conv_shapes[s];
        kb_conv_desc d;
        kb_conv_desc_init(&d, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]);
        kb_conv *pg = gpu->conv_plan(gpu, &d);
        cr_assert(pg, "conv plan for shape %zu", s);
        char tag[64];
        snprintf(tag, sizeof tag, "%s %zu", prefix, s);
        free(conv_check(&d, pg, tag, seed + s));
        gpu->conv_free(gpu, pg);
    }
}

Test(backend, conv_forward_backward)
{
    NEED_GPU();
    conv_shapes_check("conv", 2);
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
    {12, 5, 1},    /* rows of odd width */
};

/* The same kb_bn on both backends. */
typedef struct bn_pair {
    kb_bn c, g;
} bn_pair;

static bn_pair bn_pair_of(int N, int C, int HW, int groups, int rows, int relu, pair gamma,
                          pair beta, const pair *rm, const pair *rv, pair sm, pair si)
{
    bn_pair b;
    kb_bn t = {.N = N, .C = C, .HW = HW, .groups = groups, .rows = rows, .relu = relu,
               .eps = 1e-5f, .momentum = 0.1f};
    b.c = b.g = t;
    b.c.gamma = gamma.c, b.g.gamma = gamma.g;
    b.c.beta = beta.c, b.g.beta = beta.g;
    b.c.running_mean = rm ? rm->c : NULL, b.g.running_mean = rm ? rm->g : NULL;
    b.c.running_var = rv ? rv->c : NULL, b.g.running_var = rv ? rv->g : NULL;
    b.c.save_mean = sm.c, b.g.save_mean = sm.g;
    b.c.save_invstd = si.c, b.g.save_invstd = si.g;
    return b;
}

/* x of the BN's shape: rows (N, C), or a feature map (N, C, HW, 1). */
static pair bn_tensor(int N, int C, int HW, int rows, float lo, float hi)
{
    if (rows)
        return pair_rand((size_t)N * C, lo, hi);
    return fmap_rand(N, C, HW, 1, lo, hi);
}

static pair bn_out(int N, int C, int HW, int rows)
{
    if (!rows)
        return fmap_out(N, C, HW, 1);
    pair p = pair_new((size_t)N * C);
    memset(p.c, 0xff, p.n * sizeof(float));
    gpu->fill(gpu, p.g, NAN, p.n);
    return p;
}

/* One batch norm, every op: the training forward (running statistics
 * tracked or not), eval, the backward (dx, the residual's gradient,
 * dgamma/dbeta +=); sync: the SyncBN halves instead (bn_stats, bn_forward
 * from given stats and a count, bn_backward_reduce, bn_backward from a
 * given red), the given values the CPU's, uploaded, as after an
 * all-reduce. */
static void bn_check(int N, int C, int HW, int groups, int rows, int relu, int res, int track,
                     int sync)
{
    const int M = N / groups * HW; /* values per channel per group */
    char what[128], tag[80];
    snprintf(tag, sizeof tag, "%s%s (%d,%d,%d) g%d%s%s%s%s", sync ? "syncbn" : "bn",
             mode == KB_PREC_BF16 && !rows ? " bf16" : "", N, C, HW, groups,
             rows ? " rows" : "", relu ? " relu" : "", res ? " +res" : "",
             track ? "" : " untracked");
#define CMP(name, p, atol)                                                                        \
    do {                                                                                          \
        snprintf(what, sizeof what, "%s %s", tag, name);                                          \
        compare_f32(what, p, atol);                                                               \
    } while (0)
    /* An offset mean, as activations have. */
    pair x = bn_tensor(N, C, HW, rows, -0.5f, 2.0f), gamma = pair_rand(C, 0.5f, 1.5f);
    pair beta = pair_rand(C, -0.5f, 0.5f), rm = pair_rand(C, -1, 1), rv = pair_rand(C, 0.5f, 2);
    pair r = bn_tensor(N, C, HW, rows, -1, 1);
    pair sm = pair_new((size_t)groups * C), si = pair_new((size_t)groups * C);
    pair y = bn_out(N, C, HW, rows);
    bn_pair b = bn_pair_of(N, C, HW, groups, rows, relu, gamma, beta, track ? &rm : NULL,
                           track ? &rv : NULL, sm, si);
    const void *rc = res ? r.c : NULL, *rg = res ? r.g : NULL;
    /* One value per channel: invstd = 1/sqrt(eps) ~ 316 and y = a x + b
     * cancels two terms of ~600, whose float rounding (6e-5) the GPU's
     * fused multiply-add skips. */
    const double yatol = M > 1 ? F32_ATOL : 1e-3;
    if (!sync) {
        cpu->bn_forward(cpu, &b.c, x.c, NULL, 0, rc, y.c);
        gpu->bn_forward(gpu, &b.g, x.g, NULL, 0, rg, y.g);
        CMP("train y", y, yatol);
    } else {
        pair st = pair_new(3 * (size_t)groups * C);
        cpu->bn_stats(cpu, &b.c, x.c, st.c);
        gpu->bn_stats(gpu, &b.g, x.g, st.g);
        CMP("stats", st, F32_ATOL);
        /* the same (CPU) stats on both, with the count of two ranks */
        gpu->upload(gpu, st.g, st.c, st.n * sizeof(float));
        const double count = 2.0 * M;
        cpu->bn_forward(cpu, &b.c, x.c, st.c, count, rc, y.c);
        gpu->bn_forward(gpu, &b.g, x.g, st.g, count, rg, y.g);
        CMP("apply y", y, yatol);
    }
    CMP("save_mean", sm, F32_ATOL);
    /* invstd of a one-value channel is 1/sqrt(eps) ~ 316: relative. */
    CMP("save_invstd", si, F32_ATOL);
    CMP("running_mean", rm, F32_ATOL);
    CMP("running_var", rv, F32_ATOL);

    if (!sync) { /* eval reads running statistics, tracked or not in training */
        pair ye = bn_out(N, C, HW, rows);
        bn_pair e = bn_pair_of(N, C, HW, groups, rows, relu, gamma, beta, &rm, &rv, sm, si);
        cpu->bn_forward_eval(cpu, &e.c, x.c, rc, ye.c);
        gpu->bn_forward_eval(gpu, &e.g, x.g, rg, ye.g);
        CMP("eval y", ye, F32_ATOL);
    }

    if (M > 1) {
        /* The same y on both: where the two forwards' outputs straddle 0
         * (an fp32 ulp apart), the ReLU's masks would differ. */
        pair_sync(y);
        pair dy = bn_tensor(N, C, HW, rows, -1, 1), dx = bn_out(N, C, HW, rows);
        pair dres = bn_out(N, C, HW, rows);
        pair dg = pair_rand(C, -1, 1), db = pair_rand(C, -1, 1); /* accumulated into */
        const int want_dres = relu || res;
        void *drc = want_dres ? dres.c : NULL, *drg = want_dres ? dres.g : NULL;
        if (!sync) {
            cpu->bn_backward(cpu, &b.c, x.c, y.c, dy.c, NULL, dg.c, db.c, dx.c, drc);
            gpu->bn_backward(gpu, &b.g, x.g, y.g, dy.g, NULL, dg.g, db.g, dx.g, drg);
        } else {
            pair red = pair_new(2 * (size_t)groups * C);
            cpu->bn_backward_reduce(cpu, &b.c, x.c, y.c, dy.c, red.c, dg.c, db.c);
            gpu->bn_backward_reduce(gpu, &b.g, x.g, y.g, dy.g, red.g, dg.g, db.g);
            CMP("backward red", red, F32_ATOL);
            gpu->upload(gpu, red.g, red.c, red.n * sizeof(float));
            cpu->bn_backward(cpu, &b.c, x.c, y.c, dy.c, red.c, NULL, NULL, dx.c, drc);
            gpu->bn_backward(gpu, &b.g, x.g, y.g, dy.g, red.g, NULL, NULL, dx.g, drg);
        }
        /* dx subtracts two means from dy: cancellation down to ~1e-7 of
         * |dy| ~ 1, so an absolute 1e-5 as for every fp32 result. */
        CMP("backward dx", dx, F32_ATOL);
        if (want_dres) { /* dy through the ReLU's mask: a selection */
            snprintf(what, sizeof what, "%s backward dres", tag);
            compare(what, dres, 0, 0);
        }
        CMP("backward dgamma (+=)", dg, F32_ATOL);
        CMP("backward dbeta (+=)", db, F32_ATOL);
    }
#undef CMP
    pairs_free();
}

/* Every shape in groups of 1 and 2 (N even), rows where HW = 1 as well
 * as feature maps, the ReLU and residual combinations (all four on the
 * smaller shapes, two on the large ones), running statistics tracked or
 * not. */
static void bn_suite(int sync, uint64_t seed)
{
    rng_seed(seed);
    for (size_t s = 0; s < sizeof bn_shapes / sizeof bn_shapes[0]; s++) {
        const int N = bn_shapes[s][0], C = bn_shapes[s][1], HW = bn_shapes[s][2];
        const int large = (size_t)N * C * HW > 20000;
        for (int groups = 1; groups <= 2; groups++) {
            if (N % groups || (sync && N / groups * HW < 2))
                continue;
            for (int rows = 0; rows <= (HW == 1); rows++)
                for (int combo = 0; combo < 4; combo++) {
                    const int relu = combo & 1, res = combo >> 1;
                    if (large && relu != res)
                        continue;
                    bn_check(N, C, HW, groups, rows, relu, res, (combo + groups) % 3 != 0, sync);
                }
        }
    }
}

Test(backend, bn_train_eval_backward)
{
    NEED_GPU();
    bn_suite(0, 3);
}

Test(backend, syncbn_halves)
{
    NEED_GPU();
    bn_suite(1, 4);
}

Test(backend, bf16_bn)
{
    NEED_GPU();
    use_mode(KB_PREC_BF16);
    bn_suite(0, 5);
    bn_suite(1, 6);
}

/* The CUDA backend's batch norms read a feature map once where its slices
 * fit in shared memory (kernels/cuda/norm_fused.cu, a cooperative launch)
 * and in two launches elsewhere: the suites above run mostly the first on
 * small shapes; these run every shape through the second. */
Test(backend, bn_two_launches)
{
    NEED_GPU();
    setenv("RW_CUDA_BN_FUSE", "0", 1);
    bn_suite(0, 7);
    use_mode(KB_PREC_BF16);
    bn_suite(0, 8);
    unsetenv("RW_CUDA_BN_FUSE");
}

/* On the emulator (kernels/cuda/emu), which counts every launch by name:
 * a layer-sized batch norm is fused, forward and backward; with
 * RW_CUDA_BN_FUSE=0, not. A GPU build has no counts: nothing to check. */
#pragma weak emu_cost_read
#pragma weak emu_cost_reset

static long emu_calls(const char *name)
{
    emu_cost rows[128];
    const int n = emu_cost_read(rows, 128);
    for (int i = 0; i < n && i < 128; i++)
        if (strcmp(rows[i].name, name) == 0)
            return rows[i].calls;
    return 0;
}

static void fused_bn_once(void)
{
    const int N = 8, C = 16, HW = 36, groups = 2;
    pair x = bn_tensor(N, C, HW, 0, -0.5f, 2.0f), gamma = pair_rand(C, 0.5f, 1.5f);
    pair beta = pair_rand(C, -0.5f, 0.5f), rm = pair_rand(C, -1, 1), rv = pair_rand(C, 0.5f, 2);
    pair sm = pair_new((size_t)groups * C), si = pair_new((size_t)groups * C);
    pair y = bn_out(N, C, HW, 0), dy = bn_tensor(N, C, HW, 0, -1, 1), dx = bn_out(N, C, HW, 0);
    pair dg = pair_rand(C, -1, 1), db = pair_rand(C, -1, 1);
    bn_pair b = bn_pair_of(N, C, HW, groups, 0, 1, gamma, beta, &rm, &rv, sm, si);
    gpu->bn_forward(gpu, &b.g, x.g, NULL, 0, NULL, y.g);
    gpu->bn_backward(gpu, &b.g, x.g, NULL, dy.g, NULL, dg.g, db.g, dx.g, NULL);
    gpu->sync(gpu);
    pairs_free();
}

Test(backend, bn_fused_where_it_fits)
{
    NEED_GPU();
    if (!emu_cost_read || !emu_cost_reset)
        cr_skip_test("a GPU build: launches are not counted");
    use_mode(KB_PREC_BF16);
    emu_cost_reset();
    fused_bn_once();
    cr_expect_eq(emu_calls("kb_bn_fused_fwd_kernel"), 1);
    cr_expect_eq(emu_calls("kb_bn_fused_bwd_kernel"), 1);
    cr_expect_eq(emu_calls("kb_bn_reduce_kernel"), 0);
    setenv("RW_CUDA_BN_FUSE", "0", 1);
    emu_cost_reset();
    fused_bn_once();
    unsetenv("RW_CUDA_BN_FUSE");
    cr_expect_eq(emu_calls("kb_bn_fused_fwd_kernel"), 0);
    cr_expect_eq(emu_calls("kb_bn_reduce_kernel"), 2);
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

/* ---- the stem's max pool, folded into the batch norm (kb_bn.pool) ---- */

/* The GPU's winners, (N, P, Q, C) bytes (norm.cu), in the CPU's (N, C, P,
 * Q) order, against the CPU's. */
static void compare_winners(const char *what, const uint8_t *c, const uint8_t *g_dev, int N,
                            int C, int P, int Q)
{
    const size_t n = (size_t)N * C * P * Q;
    uint8_t *g = malloc(n + 4);
    gpu->download(gpu, g, g_dev, n);
    size_t bad = 0, first = 0;
    for (int i = 0; i < N; i++)
        for (int ch = 0; ch < C; ch++)
            for (int pq = 0; pq < P * Q; pq++) {
                const size_t o = ((size_t)i * C + ch) * P * Q + pq;
                if (g[((size_t)i * P * Q + pq) * C + ch] != c[o] && !bad++)
                    first = o;
            }
    printf("  %-44s n=%-8zu %zu winner mismatches\n", what, n, bad);
    cr_expect(bad == 0, "%s: %zu of %zu winners differ, first at %zu", what, bad, n, first);
    free(g);
}

static bn_pair bn_pooled(bn_pair b, int W, int k, int stride, int pad, uint8_t *ic, uint8_t *ig)
{
    b.c.pool = b.g.pool = k;
    b.c.pool_stride = b.g.pool_stride = stride;
    b.c.pool_pad = b.g.pool_pad = pad;
    b.c.W = b.g.W = W;
    b.c.pool_idx = ic;
    b.g.pool_idx = ig;
    return b;
}

/* The pooled batch norm with its ReLU, every op on both backends: the
 * training forward (pooled y, its winners -- bytes of exactly the
 * contract's size: a backend writing more overruns them -- and the
 * statistics), eval, the backward from the pooled gradient, and the SyncBN
 * halves. Inputs on a coarse grid (exact in bf16): the batch norm keeps
 * their many ties exact, which the first maximum wins on both. The
 * backward starts from the CPU's saved statistics on both, so the ReLU's
 * masks (made again from x) agree. */
static void pool_bn_check(uint64_t seed)
{
    rng_seed(seed);
    static const int shapes[][8] = {
        /* N, C, H, W, k, stride, pad, groups */
        {2, 3, 9, 9, 3, 2, 1, 1}, /* torchvision's stem pool, odd size */
        {2, 4, 12, 12, 3, 2, 1, 2},
        {2, 2, 8, 8, 2, 2, 0, 1},
        {1, 2, 7, 6, 3, 1, 1, 1},
        {3, 2, 10, 10, 3, 2, 0, 1},
        {2, 5, 6, 6, 3, 2, 1, 2},
        {1, 16, 5, 5, 3, 2, 1, 1},
        {8, 16, 32, 32, 3, 2, 1, 2}, /* several slices per group on the GPU */
    };
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int N = shapes[s][0], C = shapes[s][1], H = shapes[s][2], W = shapes[s][3];
        const int k = shapes[s][4], st = shapes[s][5], pad = shapes[s][6], G = shapes[s][7];
        const int P = (H + 2 * pad - k) / st + 1, Q = (W + 2 * pad - k) / st + 1;
        const size_t nx = (size_t)N * C * H * W, ny = (size_t)N * C * P * Q;
        float *h = malloc(nx * sizeof(float));
        for (size_t i = 0; i < nx; i++)
            h[i] = (float)(int)(4 * urand()) / 4.0f;
        pair x = fmap_from(h, N, C, H, W), y = fmap_out(N, C, P, Q), ye = fmap_out(N, C, P, Q);
        free(h);
        pair gamma = pair_rand(C, 0.5f, 1.5f), beta = pair_rand(C, -0.5f, 0.5f);
        pair rm = pair_rand(C, -1, 1), rv = pair_rand(C, 0.5f, 2);
        pair sm = pair_new((size_t)G * C), si = pair_new((size_t)G * C);
        uint8_t *ic = cpu->alloc(cpu, ny), *ig = gpu->alloc(gpu, ny);
        bn_pair b = bn_pooled(bn_pair_of(N, C, H * W, G, 0, 1, gamma, beta, &rm, &rv, sm, si),
                              W, k, st, pad, ic, ig);
        char what[96], tag[64];
        snprintf(tag, sizeof tag, "%spooled bn %zu", mode == KB_PREC_BF16 ? "bf16 " : "", s);
#define CMP(name, p, atol)                                                                        \
    do {                                                                                          \
        snprintf(what, sizeof what, "%s %s", tag, name);                                          \
        compare_f32(what, p, atol);                                                               \
    } while (0)
        cpu->bn_forward(cpu, &b.c, x.c, NULL, 0, NULL, y.c);
        gpu->bn_forward(gpu, &b.g, x.g, NULL, 0, NULL, y.g);
        CMP("train y", y, F32_ATOL);
        snprintf(what, sizeof what, "%s winners", tag);
        compare_winners(what, ic, ig, N, C, P, Q);
        CMP("save_invstd", si, F32_ATOL);
        CMP("running_var", rv, F32_ATOL);
        cpu->bn_forward_eval(cpu, &b.c, x.c, NULL, ye.c);
        gpu->bn_forward_eval(gpu, &b.g, x.g, NULL, ye.g);
        CMP("eval y", ye, F32_ATOL);

        pair_sync(sm);
        pair_sync(si);
        pair dy = fmap_rand(N, C, P, Q, -1, 1), dx = fmap_out(N, C, H, W);
        pair dg = pair_rand(C, -1, 1), db = pair_rand(C, -1, 1);
        cpu->bn_backward(cpu, &b.c, x.c, NULL, dy.c, NULL, dg.c, db.c, dx.c, NULL);
        gpu->bn_backward(gpu, &b.g, x.g, NULL, dy.g, NULL, dg.g, db.g, dx.g, NULL);
        CMP("backward dx", dx, F32_ATOL);
        CMP("backward dgamma (+=)", dg, F32_ATOL);
        CMP("backward dbeta (+=)", db, F32_ATOL);
        pair red = pair_new(2 * (size_t)G * C), dx2 = fmap_out(N, C, H, W);
        cpu->bn_backward_reduce(cpu, &b.c, x.c, NULL, dy.c, red.c, dg.c, db.c);
        gpu->bn_backward_reduce(gpu, &b.g, x.g, NULL, dy.g, red.g, dg.g, db.g);
        CMP("syncbn red", red, F32_ATOL);
        gpu->upload(gpu, red.g, red.c, red.n * sizeof(float));
        cpu->bn_backward(cpu, &b.c, x.c, NULL, dy.c, red.c, NULL, NULL, dx2.c, NULL);
        gpu->bn_backward(gpu, &b.g, x.g, NULL, dy.g, red.g, NULL, NULL, dx2.g, NULL);
        CMP("syncbn dx", dx2, F32_ATOL);
#undef CMP
        cpu->free(cpu, ic);
        gpu->free(gpu, ig);
        pairs_free();
    }
}

Test(backend, pooled_bn)
{
    NEED_GPU();
    pool_bn_check(6);
}

/* Eval without the ReLU lets NaNs through: the first NaN of a window wins
 * on both. */
Test(backend, pooled_bn_nan_wins)
{
    NEED_GPU();
    for (int bf16 = 0; bf16 < 2; bf16++) {
        if (bf16)
            use_mode(KB_PREC_BF16);
        float h[2 * 16];
        for (int i = 0; i < 32; i++)
            h[i] = (float)(i % 16);
        h[5] = NAN; /* channel 0 */
        h[16 + 10] = NAN;
        pair x = fmap_from(h, 1, 2, 4, 4), y = fmap_out(1, 2, 2, 2);
        pair gamma = pair_rand(2, 0.5f, 1.5f), beta = pair_rand(2, -0.5f, 0.5f);
        pair rm = pair_rand(2, -1, 1), rv = pair_rand(2, 0.5f, 2), none = pair_new(2);
        bn_pair b = bn_pooled(bn_pair_of(1, 2, 16, 1, 0, 0, gamma, beta, &rm, &rv, none, none), 4,
                              3, 2, 1, NULL, NULL);
        cpu->bn_forward_eval(cpu, &b.c, x.c, NULL, y.c);
        gpu->bn_forward_eval(gpu, &b.g, x.g, NULL, y.g);
        compare_f32(bf16 ? "bf16 pooled eval with NaN" : "pooled eval with NaN", y, F32_ATOL);
        pairs_free();
    }
}

static void avgpool_check(uint64_t seed)
{
    rng_seed(seed);
    static const int shapes[][3] = {{4, 8, 9}, {2, 16, 1}, {3, 5, 49}, {8, 64, 16}, {2, 3, 4}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int N = shapes[s][0], C = shapes[s][1], HW = shapes[s][2];
        pair x = fmap_rand(N, C, HW, 1, -1, 1), y = pair_new((size_t)N * C);
        pair dy = pair_rand((size_t)N * C, -1, 1), dx = fmap_out(N, C, HW, 1);
        char what[96];
        const char *m = mode == KB_PREC_BF16 ? "bf16 " : "";
        cpu->avgpool_forward(cpu, x.c, N, C, HW, y.c);
        gpu->avgpool_forward(gpu, x.g, N, C, HW, y.g);
        snprintf(what, sizeof what, "%savgpool (%d,%d,%d) forward", m, N, C, HW);
        compare(what, y, F32_ATOL, F32_RTOL); /* fp32 rows from the same inputs */
        cpu->avgpool_backward(cpu, dy.c, N, C, HW, dx.c);
        gpu->avgpool_backward(gpu, dy.g, N, C, HW, dx.g);
        snprintf(what, sizeof what, "%savgpool (%d,%d,%d) backward", m, N, C, HW);
        compare(what, dx, 0, 0);
        pairs_free();
    }
}

Test(backend, avgpool)
{
    NEED_GPU();
    avgpool_check(7);
}

Test(backend, bf16_pooling)
{
    NEED_GPU();
    use_mode(KB_PREC_BF16);
    pool_bn_check(16);
    avgpool_check(17);
}

/* ---- linear ---- */

/* One linear shape under the mode in effect, the weight from w and from a
 * mirror; dx written, dw and db accumulated; with_bias 0 also passes dx =
 * NULL and db = NULL (the first layer's call), which leave them alone.
 * BF16 mode compares with the bf16 bound (y, dx and dw stay fp32: no
 * rounding of the result, the bound holds all the more). */
static void linear_check(int N, int I, int O, int with_bias, uint64_t seed)
{
    rng_seed(seed);
    const int bf16 = mode == KB_PREC_BF16;
    pair x = pair_rand((size_t)N * I, -1, 1), w = pair_rand((size_t)O * I, -1, 1);
    pair b = pair_rand(O, -1, 1);
    const float *wp;
    const void *wm = mirror_of(w, O, I, 0, 0, &wp);
    float *ax = host_abs(x.c, x.n), *aw = host_abs(w.c, w.n);
    size_t big = x.n > w.n ? x.n : w.n;
    float *S = malloc((big > (size_t)N * O ? big : (size_t)N * O) * sizeof(float));
    char what[128], tag[64];
    for (int m = 0; m < 2; m++) {
        const float *wg = m ? wp : w.g;
        const void *wmg = m ? wm : NULL;
        snprintf(tag, sizeof tag, "%slinear (%d,%d,%d)%s (%s)", bf16 ? "bf16 " : "", N, I, O,
                 with_bias ? " +b" : "", m ? "wm" : "w");
        pair y = pair_new((size_t)N * O);
        pair dy = pair_rand((size_t)N * O, -1, 1), dx = pair_rand((size_t)N * I, -1, 1);
        pair dw = pair_rand((size_t)O * I, -1, 1), db = pair_rand(O, -1, 1);
        float *ady = host_abs(dy.c, dy.n);
        cpu->linear_forward(cpu, x.c, N, I, w.c, NULL, with_bias ? b.c : NULL, O, y.c);
        gpu->linear_forward(gpu, x.g, N, I, wg, wmg, with_bias ? b.g : NULL, O, y.g);
        snprintf(what, sizeof what, "%s forward", tag);
        if (bf16) {
            cpu->linear_forward(cpu, ax, N, I, aw, NULL, NULL, O, S); /* the bias adds in fp32 */
            compare_bound(what, y, 0, BF16_RTOL, S, BF16_K);
        } else {
            compare_mm(what, y);
        }
        cpu->linear_backward(cpu, x.c, w.c, NULL, dy.c, N, I, O, with_bias ? dx.c : NULL, dw.c,
                             with_bias ? db.c : NULL);
        gpu->linear_backward(gpu, x.g, wg, wmg, dy.g, N, I, O, with_bias ? dx.g : NULL, dw.g,
                             with_bias ? db.g : NULL);
        if (with_bias) {
            snprintf(what, sizeof what, "%s backward dx", tag);
            if (bf16) {
                /* S of dx = |dy| |w| (into a scratch dw) */
                float *zero = calloc(w.n, sizeof(float));
                cpu->linear_backward(cpu, ax, aw, NULL, ady, N, I, O, S, zero, NULL);
                free(zero);
                compare_bound(what, dx, 0, 0, S, BF16_K);
            } else {
                compare_mm(what, dx);
            }
            snprintf(what, sizeof what, "%s backward db (+=)", tag);
            compare(what, db, F32_ATOL, F32_RTOL); /* fp32 column sums in every mode */
        } else {
            snprintf(what, sizeof what, "%s dx untouched", tag);
            compare(what, dx, 0, 0);
            snprintf(what, sizeof what, "%s db untouched", tag);
            compare(what, db, 0, 0);
        }
        snprintf(what, sizeof what, "%s backward dw (+=)", tag);
        if (bf16) {
            /* S of dw = |x|^T |dy| (into a zeroed S) */
            memset(S, 0, w.n * sizeof(float));
            cpu->linear_backward(cpu, ax, aw, NULL, ady, N, I, O, NULL, S, NULL);
            compare_bound(what, dw, 0, BF16_RTOL, S, BF16_K);
        } else {
            compare_mm(what, dw);
        }
        free(ady);
    }
    free(ax);
    free(aw);
    free(S);
    pairs_free();
}

static const int linear_shapes[][3] = {
    /* N, I, O */
    {5, 7, 3}, {64, 512, 128}, {32, 128, 512}, {17, 33, 65}, {128, 128, 128},
};

Test(backend, linear)
{
    NEED_GPU();
    for (size_t s = 0; s < sizeof linear_shapes / sizeof linear_shapes[0]; s++)
        for (int with_bias = 0; with_bias < 2; with_bias++)
            linear_check(linear_shapes[s][0], linear_shapes[s][1], linear_shapes[s][2], with_bias,
                         8 + 2 * s + with_bias);
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

/* G groups of N rows, each group its own output. */
Test(backend, uniformity_and_collapse)
{
    NEED_GPU();
    rng_seed(11);
    static const int shapes[][2] = {{2, 4}, {16, 8}, {128, 128}, {256, 128}, {33, 7}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int G = 1; G <= 2; G++) {
            const int N = shapes[s][0], D = shapes[s][1];
            pair z = pair_unit_rows(G * N, D), u = pair_new(G), c = pair_new(G);
            if (G == 2) /* the second group squeezed toward one point: other values */
                for (int i = N; i < 2 * N; i++)
                    for (int d = 0; d < D; d++)
                        z.c[(size_t)i * D + d] = 0.5f * z.c[(size_t)i * D + d] + (d == 0 ? 0.5f : 0.0f);
            gpu->upload(gpu, z.g, z.c, z.n * sizeof(float));
            char what[96];
            cpu->uniformity(cpu, z.c, G, N, D, 2.0f, u.c);
            gpu->uniformity(gpu, z.g, G, N, D, 2.0f, u.g);
            snprintf(what, sizeof what, "uniformity t=2 G=%d (%d,%d)", G, N, D);
            compare(what, u, F32_ATOL, F32_RTOL);
            cpu->uniformity(cpu, z.c, G, N, D, 50.0f, u.c); /* far-from-0 exponents: log-sum-exp */
            gpu->uniformity(gpu, z.g, G, N, D, 50.0f, u.g);
            snprintf(what, sizeof what, "uniformity t=50 G=%d (%d,%d)", G, N, D);
            compare(what, u, F32_ATOL, F32_RTOL);
            cpu->collapse_std(cpu, z.c, G, N, D, c.c);
            gpu->collapse_std(gpu, z.g, G, N, D, c.g);
            snprintf(what, sizeof what, "collapse_std G=%d (%d,%d)", G, N, D);
            compare(what, c, F32_ATOL, F32_RTOL);
            if (G == 2)
                cr_expect(u.c[0] != u.c[1] && c.c[0] != c.c[1], "the groups differ");
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

/* ---- the update: Adam, the teacher's EMA, gradients zeroed, mirrors ---- */

/* A parameter buffer of UPD_N floats with weights among other values (in
 * order, some adjacent, some with runs between): convolutions of padded
 * channel counts and linear layers. The teacher mirrors the prefix
 * [0, UPD_NT), which holds the first UPD_NTW weights. */
static const kb_wseg upd_w[] = {
    {5, 6, 5, 3, 3},       /* a convolution, 5 channels in, 6 out */
    {301, 7, 33, 0, 0},    /* a linear layer */
    {1000, 16, 3, 7, 7},   /* the stem */
    {3352, 64, 128, 0, 0}, /* a linear layer, right after */
    {11544, 8, 16, 1, 1},  /* a 1x1 convolution, right after */
};
#define UPD_NW 5
#define UPD_N 50021
#define UPD_NT 3352
#define UPD_NTW 3

/* mr holds what mirror_create makes of params now: the copies' bytes
 * (the CUDA layout: a convolution's (Kp, R, S, Cp), a linear layer's (O,
 * I), in the math's type) and a convolution through each. */
static void mirror_check(const char *tag, const kb_mirror *mr, const float *params,
                         const kb_wseg *w, int nw)
{
    kb_mirror *fresh = gpu->mirror_create(gpu, params, w, nw);
    cr_assert(fresh);
    const int es = fmap_esize();
    for (int i = 0; i < nw; i++) {
        const int conv = w[i].R > 0;
        const size_t bytes = conv ? (size_t)cuda_cpad(w[i].K, es) * w[i].R * w[i].S *
                                        cuda_cpad(w[i].C, es) * es
                                  : (size_t)w[i].K * w[i].C * es;
        const void *a = gpu->mirror_at(gpu, mr, w[i].off), *b = gpu->mirror_at(gpu, fresh, w[i].off);
        unsigned char *ha = malloc(bytes), *hb = malloc(bytes);
        gpu->download(gpu, ha, a, bytes);
        gpu->download(gpu, hb, b, bytes);
        char what[128];
        snprintf(what, sizeof what, "%s: mirror of weight %d", tag, i);
        const int same = memcmp(ha, hb, bytes) == 0;
        printf("  %-44s %s\n", what, same ? "as mirror_create makes it" : "differs  FAIL");
        cr_expect(same, "%s differs from mirror_create's", what);
        free(ha);
        free(hb);
        if (!conv)
            continue;
        kb_conv_desc d;
        kb_conv_desc_init(&d, 2, w[i].C, 5, 5, w[i].K, w[i].R, w[i].S, 1, w[i].R / 2);
        kb_conv *pg = gpu->conv_plan(gpu, &d);
        cr_assert(pg);
        pair x = fmap_rand(2, w[i].C, 5, 5, -1, 1);
        pair y1 = fmap_out(2, w[i].K, d.P, d.Q), y2 = fmap_out(2, w[i].K, d.P, d.Q);
        gpu->conv_forward(gpu, pg, x.g, params + w[i].off, a, y1.g);
        gpu->conv_forward(gpu, pg, x.g, params + w[i].off, b, y2.g);
        snprintf(what, sizeof what, "%s: conv through mirror %d", tag, i);
        expect_same_bits(what, y1, y2);
        gpu->conv_free(gpu, pg);
    }
    gpu->mirror_free(gpu, fresh);
}

/* Three steps on both backends, with weight decay or not, the mirrors of
 * the parameters and of the teacher kept by the update or none. Then a
 * write to the parameters outside the update: mirror_write catches up. */
static void update_check(int wd, int mirrored, uint64_t seed)
{
    rng_seed(seed);
    const size_t n = UPD_N;
    char tag[64];
    snprintf(tag, sizeof tag, "%supdate%s%s", mode == KB_PREC_BF16 ? "bf16 " : "",
             wd ? " (weight decay)" : "", mirrored ? " (mirrors)" : "");
    pair p = pair_rand(n, -1, 1), m = pair_new(n), v = pair_new(n), g = pair_new(n);
    pair xi = pair_rand(UPD_NT, -1, 1);
    kb_adam_consts *kc = cpu->alloc(cpu, sizeof *kc), *kg = gpu->alloc(gpu, sizeof *kg);
    float *tc = cpu->alloc(cpu, 2 * sizeof(float)), *tg = gpu->alloc(gpu, 2 * sizeof(float));
    kb_mirror *mr = NULL, *tmr = NULL;
    if (mirrored) {
        mr = gpu->mirror_create(gpu, p.g, upd_w, UPD_NW);
        tmr = gpu->mirror_create(gpu, xi.g, upd_w, UPD_NTW);
        cr_assert(mr && tmr);
    }
    for (long step = 1; step <= 3; step++) {
        float *h = host_rand(n, -1, 1);
        memcpy(g.c, h, n * sizeof(float));
        gpu->upload(gpu, g.g, h, n * sizeof(float));
        free(h);
        *kc = kb_adam_consts_init(3e-2f, 0.9f, 0.999f, 1e-8f, wd ? 1e-2f : 0.0f, step);
        gpu->upload(gpu, kg, kc, sizeof *kc);
        kb_ema_consts_init(0.99f - 0.1f * (float)step, tc);
        gpu->upload(gpu, tg, tc, 2 * sizeof(float));
        kb_update uc = {.params = p.c, .grads = g.c, .adam_m = m.c, .adam_v = v.c, .n = n,
                        .k = kc, .teacher = xi.c, .nteacher = UPD_NT, .tau_omt = tc};
        kb_update ug = {.params = p.g, .grads = g.g, .adam_m = m.g, .adam_v = v.g, .n = n,
                        .k = kg, .teacher = xi.g, .nteacher = UPD_NT, .tau_omt = tg,
                        .mirror = mr, .tmirror = tmr};
        cpu->update(cpu, &uc);
        gpu->update(gpu, &ug);
    }
    char what[128];
    /* Same float formula (kernels/optim.h); the GPU may fuse a
     * multiply-add: ulps of p ~ 1, of m and v ~ their size. */
    snprintf(what, sizeof what, "%s p", tag);
    compare(what, p, F32_ATOL, F32_RTOL);
    snprintf(what, sizeof what, "%s m", tag);
    compare(what, m, 1e-7, F32_RTOL);
    snprintf(what, sizeof what, "%s v", tag);
    compare(what, v, 1e-9, F32_RTOL);
    snprintf(what, sizeof what, "%s teacher (EMA)", tag);
    compare(what, xi, F32_ATOL, F32_RTOL);
    snprintf(what, sizeof what, "%s gradients zeroed", tag);
    compare(what, g, 0, 0);
    if (mirrored) {
        snprintf(what, sizeof what, "%s online", tag);
        mirror_check(what, mr, p.g, upd_w, UPD_NW);
        snprintf(what, sizeof what, "%s teacher", tag);
        mirror_check(what, tmr, xi.g, upd_w, UPD_NTW);
        /* parameters written from outside (a checkpoint loaded): stale
         * until mirror_write */
        float *h = host_rand(n, -2, 2);
        gpu->upload(gpu, p.g, h, n * sizeof(float));
        free(h);
        gpu->mirror_write(gpu, mr);
        snprintf(what, sizeof what, "%s mirror_write", tag);
        mirror_check(what, mr, p.g, upd_w, UPD_NW);
        gpu->mirror_free(gpu, mr);
        gpu->mirror_free(gpu, tmr);
    }
    cpu->free(cpu, kc);
    gpu->free(gpu, kg);
    cpu->free(cpu, tc);
    gpu->free(gpu, tg);
    pairs_free();
}

static void update_suite(uint64_t seed)
{
    for (int wd = 0; wd < 2; wd++)
        for (int mirrored = 0; mirrored < 2; mirrored++)
            update_check(wd, mirrored, seed + 2 * wd + mirrored);
}

Test(backend, update_adam_ema_mirrors)
{
    NEED_GPU();
    update_suite(13);
}

Test(backend, bf16_update)
{
    NEED_GPU();
    use_mode(KB_PREC_BF16);
    update_suite(23);
}

/* ---- per-step values on the device ---- */

/* Rows in turn, the counter moved; captured, each replay takes the next
 * row with the src the replay finds. */
Test(backend, ring_push)
{
    NEED_GPU();
    rng_seed(14);
    static const int shapes[][2] = {{3, 37}, {2, 1024}, {1, 5}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int slots = shapes[s][0], n = shapes[s][1];
        pair ring = pair_new((size_t)slots * n), src = pair_new(n);
        uint32_t *cc = cpu->alloc(cpu, sizeof(uint32_t)), *cg = gpu->alloc(gpu, sizeof(uint32_t));
        const uint32_t start = (uint32_t)(7 * s);
        *cc = start;
        gpu->upload(gpu, cg, &start, sizeof start);
        kb_graph *gr = NULL;
        for (int k = 0; k < 5; k++) {
            float *h = host_rand(n, -1, 1);
            memcpy(src.c, h, n * sizeof(float));
            gpu->upload(gpu, src.g, h, n * sizeof(float));
            free(h);
            cpu->ring_push(cpu, ring.c, slots, src.c, n, cc);
            if (k < 2 || !gpu->capture_begin) {
                gpu->ring_push(gpu, ring.g, slots, src.g, n, cg);
                continue;
            }
            if (!gr) {
                cr_assert_eq(gpu->capture_begin(gpu), 0);
                gpu->ring_push(gpu, ring.g, slots, src.g, n, cg);
                char err[200] = "";
                gr = gpu->capture_end(gpu, err, sizeof err);
                cr_assert(gr, "capture failed: %s", err);
            }
            cr_assert_eq(gpu->graph_launch(gpu, gr), 0);
        }
        char what[96];
        snprintf(what, sizeof what, "ring_push (%d slots, %d)", slots, n);
        compare(what, ring, 0, 0);
        uint32_t got = 0;
        gpu->download(gpu, &got, cg, sizeof got);
        cr_expect_eq(got, *cc, "%s: counter %u, want %u", what, got, *cc);
        cr_expect_eq(*cc, start + 5);
        if (gr)
            gpu->graph_free(gpu, gr);
        cpu->free(cpu, cc);
        gpu->free(gpu, cg);
        pairs_free();
    }
}

/* ---- the second queue ---- */

/* Ops on the second queue (a convolution, a batch norm: each with its own
 * scratch, workspace and reduction counter there) beside ops on the main
 * queue, joined, then the main queue uses what both wrote: the CPU's
 * results. Twice: the second time on queues already used. */
Test(backend, second_queue)
{
    NEED_GPU();
    if (!gpu->side_begin)
        cr_skip_test("this backend has no second queue");
    rng_seed(15);
    kb_conv_desc d;
    kb_conv_desc_init(&d, 4, 8, 6, 6, 8, 3, 3, 1, 1);
    kb_conv *pc = cpu->conv_plan(cpu, &d), *pg = gpu->conv_plan(gpu, &d);
    cr_assert(pc && pg);
    pair x1 = fmap_rand(4, 8, 6, 6, -1, 1), x2 = fmap_rand(4, 8, 6, 6, -1, 1);
    pair w = pair_rand((size_t)8 * 8 * 9, -1, 1);
    pair y1 = fmap_out(4, 8, 6, 6), y2 = fmap_out(4, 8, 6, 6), z = fmap_out(4, 8, 6, 6);
    pair gamma = pair_rand(8, 0.5f, 1.5f), beta = pair_rand(8, -0.5f, 0.5f);
    pair sm1 = pair_new(16), si1 = pair_new(16), sm2 = pair_new(16), si2 = pair_new(16);
    pair b1 = fmap_out(4, 8, 6, 6), b2 = fmap_out(4, 8, 6, 6);
    bn_pair n1 = bn_pair_of(4, 8, 36, 2, 0, 1, gamma, beta, NULL, NULL, sm1, si1);
    bn_pair n2 = bn_pair_of(4, 8, 36, 2, 0, 0, gamma, beta, NULL, NULL, sm2, si2);
    for (int k = 0; k < 2; k++) {
        gpu->side_begin(gpu);
        gpu->conv_forward(gpu, pg, x1.g, w.g, NULL, y1.g);
        gpu->bn_forward(gpu, &n1.g, x2.g, NULL, 0, NULL, b1.g);
        gpu->side_end(gpu);
        gpu->conv_forward(gpu, pg, x2.g, w.g, NULL, y2.g);
        gpu->bn_forward(gpu, &n2.g, x1.g, NULL, 0, NULL, b2.g);
        gpu->side_join(gpu);
        gpu->conv_backward_data(gpu, pg, b1.g, w.g, NULL, z.g, 0);
        gpu->conv_backward_data(gpu, pg, b2.g, w.g, NULL, z.g, 1);
    }
    cpu->conv_forward(cpu, pc, x1.c, w.c, NULL, y1.c);
    cpu->bn_forward(cpu, &n1.c, x2.c, NULL, 0, NULL, b1.c);
    cpu->conv_forward(cpu, pc, x2.c, w.c, NULL, y2.c);
    cpu->bn_forward(cpu, &n2.c, x1.c, NULL, 0, NULL, b2.c);
    cpu->conv_backward_data(cpu, pc, b1.c, w.c, NULL, z.c, 0);
    cpu->conv_backward_data(cpu, pc, b2.c, w.c, NULL, z.c, 1);
    compare_mm("second queue: conv", y1);
    compare_f32("second queue: bn", b1, F32_ATOL);
    compare("second queue: bn save_mean", sm1, F32_ATOL, F32_RTOL);
    compare("second queue: bn save_invstd", si1, F32_ATOL, F32_RTOL);
    compare_mm("main queue beside it: conv", y2);
    compare_f32("main queue beside it: bn", b2, F32_ATOL);
    compare_mm("after the join: both sides' outputs", z);
    cpu->conv_free(cpu, pc);
    gpu->conv_free(gpu, pg);
    pairs_free();
}

/* ---- BF16 mode ---- */

Test(backend, bf16_conv)
{
    NEED_GPU();
    use_mode(KB_PREC_BF16);
    conv_shapes_check("bf16 conv", 20);
}

Test(backend, bf16_linear)
{
    NEED_GPU();
    use_mode(KB_PREC_BF16);
    static const int shapes[][3] = {{5, 7, 3}, {64, 512, 128}, {17, 33, 65}, {32, 128, 512}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int with_bias = 0; with_bias < 2; with_bias++)
            linear_check(shapes[s][0], shapes[s][1], shapes[s][2], with_bias, 40 + 2 * s + with_bias);
}

/* Switching back and forth: a plan made under one mode serves the others
 * (planning each on its first call there), cuBLAS follows at once, and
 * the results come back to fp32 accuracy after bf16 (compare_mm's fp32
 * bound, 1e-4 of the rms, is far below bf16's ~2^-9 of the rms). Feature
 * maps and mirrors are made again under each mode (conv_check,
 * linear_check). */
Test(backend, precision_switch)
{
    NEED_GPU();
    kb_conv_desc d;
    kb_conv_desc_init(&d, 4, 8, 10, 10, 16, 3, 3, 1, 1);
    kb_conv *pg = gpu->conv_plan(gpu, &d); /* under the backend's initial mode */
    cr_assert(pg);
    use_mode(KB_PREC_BF16);
    float *yb = conv_check(&d, pg, "switch 1: bf16 conv", 60);
    linear_check(24, 40, 12, 1, 61);
    use_mode(KB_PREC_FP32);
    float *yf = conv_check(&d, pg, "switch 2: fp32 conv", 60);
    linear_check(24, 40, 12, 1, 61);
    /* bf16 really rounded: the same inputs gave other outputs */
    size_t ny = (size_t)d.N * d.K * d.P * d.Q, differ = 0;
    for (size_t i = 0; i < ny; i++)
        differ += yb[i] != yf[i];
    printf("  bf16 vs fp32 forward: %zu of %zu outputs differ\n", differ, ny);
    cr_expect(differ > ny / 2, "bf16 and fp32 gave the same outputs: was bf16 in effect?");
    use_mode(KB_PREC_BF16);
    free(conv_check(&d, pg, "switch 3: bf16 conv", 62));
    use_mode(KB_PREC_TF32);
    free(conv_check(&d, pg, "switch 4: tf32 conv", 63));
    linear_check(24, 40, 12, 1, 64);
    use_mode(KB_PREC_FP32);
    free(conv_check(&d, pg, "switch 5: fp32 conv", 65));
    cr_expect_eq(gpu->set_precision(gpu, (kb_precision)7), KB_PREC_FP32,
                 "an unknown mode leaves the mode as it was");
    free(yb);
    free(yf);
    gpu->conv_free(gpu, pg);
}

/* Where cuDNN declines bf16 the plan falls back to TF32 on fp32 copies of
 * the bf16 feature maps (and of the weight: the mirror is bf16) instead of
 * failing. The emulated cuDNN declines on request (kernels/cuda/emu/
 * cudnn.h); a real one ignores the variable, and the test then checks the
 * ordinary bf16 path once more. */
Test(backend, bf16_fallbacks)
{
    NEED_GPU();
    use_mode(KB_PREC_BF16);
    setenv("EMU_CUDNN_NO_BF16", "1", 1);
    static const int shapes[][9] = {
        {2, 4, 7, 7, 6, 3, 3, 2, 1},
        {2, 3, 9, 9, 5, 3, 3, 1, 1}, /* the stem: padded channels through the copies */
    };
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int *v = shapes[s];
        kb_conv_desc d;
        kb_conv_desc_init(&d, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]);
        kb_conv *pg = gpu->conv_plan(gpu, &d);
        cr_assert(pg);
        char tag[64];
        snprintf(tag, sizeof tag, "bf16 conv %zu, bf16 declined (TF32)", s);
        free(conv_check(&d, pg, tag, 81 + s));
        gpu->conv_free(gpu, pg);
    }
    unsetenv("EMU_CUDNN_NO_BF16");
}

/* A bf16 step can be captured: plans reserve the scratch and workspace
 * their copies need, so nothing grows (or allocates) inside the capture;
 * the replay gives the eager run's bits. */
Test(backend, bf16_capture)
{
    NEED_GPU();
    if (!gpu->capture_begin)
        cr_skip_test("no captures in this backend");
    use_mode(KB_PREC_BF16);
    rng_seed(90);
    kb_conv_desc d;
    kb_conv_desc_init(&d, 2, 8, 6, 6, 8, 3, 3, 1, 1);
    kb_conv *pg = gpu->conv_plan(gpu, &d);
    cr_assert(pg);
    size_t nw = (size_t)d.K * d.C * d.R * d.S;
    pair x = fmap_rand(2, 8, 6, 6, -1, 1), w = pair_rand(nw, -1, 1);
    const float *wp, *lwp;
    const void *wm = mirror_of(w, 8, 8, 3, 3, &wp);
    pair lx = pair_rand(6 * 72, -1, 1), lw = pair_rand(5 * 72, -1, 1);
    const void *lwm = mirror_of(lw, 5, 72, 0, 0, &lwp);
    float *h = host_rand(x.n, -1, 1);
    pair out[2][6];
    for (int k = 0; k < 2; k++) { /* eager, then captured and replayed */
        out[k][0] = fmap_out(2, 8, 6, 6);           /* y from w */
        out[k][1] = fmap_out(2, 8, 6, 6);           /* y from the mirror */
        out[k][2] = pair_new(nw);                   /* dw */
        out[k][3] = fmap_from(h, 2, 8, 6, 6);       /* dx += */
        out[k][4] = pair_new(6 * 5);                /* linear y from w */
        out[k][5] = pair_new(6 * 5);                /* linear y from the mirror */
    }
    free(h);
    for (int k = 0; k < 2; k++) {
        if (k)
            cr_assert_eq(gpu->capture_begin(gpu), 0);
        pair *o = out[k];
        gpu->conv_forward(gpu, pg, x.g, w.g, NULL, o[0].g);
        gpu->conv_forward(gpu, pg, x.g, wp, wm, o[1].g);
        gpu->conv_backward_weight(gpu, pg, x.g, o[0].g, o[2].g);
        gpu->conv_backward_data(gpu, pg, o[1].g, wp, wm, o[3].g, 1);
        gpu->linear_forward(gpu, lx.g, 6, 72, lw.g, NULL, NULL, 5, o[4].g);
        gpu->linear_forward(gpu, lx.g, 6, 72, lwp, lwm, NULL, 5, o[5].g);
        if (k) {
            char err[256] = "";
            kb_graph *g = gpu->capture_end(gpu, err, sizeof err);
            cr_assert(g, "capture failed: %s", err);
            cr_assert_eq(gpu->graph_launch(gpu, g), 0);
            gpu->graph_free(gpu, g);
        }
    }
    static const char *const names[6] = {"captured bf16 forward",  "captured bf16 forward (wm)",
                                         "captured bf16 weight gradient",
                                         "captured bf16 backward data +=",
                                         "captured bf16 linear", "captured bf16 linear (wm)"};
    for (int i = 0; i < 6; i++)
        expect_same_bits(names[i], out[0][i], out[1][i]);
    for (int i = 0; i < 2; i++)
        pad_check(names[i], out[1][i]);
    gpu->conv_free(gpu, pg);
    pairs_free();
}
