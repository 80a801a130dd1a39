/* BYOL's augmentations (T1, T2), defined once for the CPU loader and the CUDA
 * backend: a counter-based RNG, the per-sample draw of every random choice,
 * and the per-pixel math. Compiles as C11 (gcc) and as CUDA (nvcc); uses only
 * math functions that both provide.
 *
 * Pipeline for one view (torchvision's order and formulas):
 *   1. random resized crop of the source (scale 0.08-1 of the area, aspect
 *      ratio 3/4-4/3 log-uniform, 10 attempts then the centre crop), bilinear
 *      resize to S x S with align_corners=False (no antialias: the crop is
 *      shrunk by at most side/S, not at all at the paper's 96 from CIFAR's
 *      32x32 or STL-10's 96x96; an S below the source's side aliases a little
 *      where PIL would smooth);
 *   2. horizontal flip, p = 0.5;
 *   3. colour jitter, p = 0.8: brightness 0.4, contrast 0.4, saturation 0.2,
 *      hue 0.1 in a random order, each followed by a clamp to [0, 1];
 *   4. grayscale, p = 0.2;
 *   5. Gaussian blur, p = 1.0 (T1) / 0.1 (T2), sigma ~ U(0.1, 2.0), kernel
 *      2*round(0.05*S)+1 taps (23 at 224, as BYOL; 5 at 32, 11 at 96),
 *      reflect padding;
 *   6. solarize, p = 0 (T1) / 0.2 (T2): x >= 0.5 -> 1 - x;
 *   7. normalize with the data set's mean and std.
 * Pixels are floats in [0, 1] until step 7.
 *
 * Contrast needs the mean gray level of the image as it stands when contrast
 * is applied, so a view is computed in two per-pixel passes around that
 * reduction: rw_aug_jitter_steps(p, c, 0, k) before it and (k, 4) after it,
 * with k = rw_aug_contrast_step(p). Blur is a separable convolution between
 * the colour passes and the final solarize/normalize pass. */
#ifndef RUNAWAY_KERNELS_AUGMENT_H
#define RUNAWAY_KERNELS_AUGMENT_H

#include <math.h>
#include <stdint.h>

#ifndef RW_HD
#ifdef __CUDACC__
#define RW_HD __host__ __device__
#else
#define RW_HD
#endif
#endif

/* ---- Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as
 * 1, 2, 3", SC'11): a bijection of a 128-bit counter under a 64-bit key. */

typedef struct rw_u32x4 {
    uint32_t v[4];
} rw_u32x4;

static inline RW_HD uint32_t rw_mulhilo32(uint32_t a, uint32_t b, uint32_t *hi)
{
    uint64_t p = (uint64_t)a * (uint64_t)b;
    *hi = (uint32_t)(p >> 32);
    return (uint32_t)p;
}

static inline RW_HD rw_u32x4 rw_philox4x32_10(rw_u32x4 c, uint32_t k0, uint32_t k1)
{
    for (int r = 0; r < 10; r++) {
        if (r > 0) { /* the key schedule: Weyl sequence steps */
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        uint32_t hi0, hi1;
        uint32_t lo0 = rw_mulhilo32(0xD2511F53u, c.v[0], &hi0);
        uint32_t lo1 = rw_mulhilo32(0xCD9E8D57u, c.v[2], &hi1);
        rw_u32x4 n;
        n.v[0] = hi1 ^ c.v[1] ^ k0;
        n.v[1] = lo1;
        n.v[2] = hi0 ^ c.v[3] ^ k1;
        n.v[3] = lo0;
        c = n;
    }
    return c;
}

/* Counter layout used across runaway: (epoch, sample index, stream, block)
 * under key seed. Streams: 0 = view T1, 1 = view T2, the rest below. */
enum {
    RW_RNG_STREAM_T1 = 0,
    RW_RNG_STREAM_T2 = 1,
    RW_RNG_STREAM_PERM = 2,  /* the loader's epoch permutation */
    RW_RNG_STREAM_SYNTH = 3, /* the synthetic data generator */
};

static inline RW_HD rw_u32x4 rw_rng4(uint64_t seed, uint32_t epoch, uint32_t index,
                                     uint32_t stream, uint32_t block)
{
    rw_u32x4 c;
    c.v[0] = epoch;
    c.v[1] = index;
    c.v[2] = stream;
    c.v[3] = block;
    return rw_philox4x32_10(c, (uint32_t)seed, (uint32_t)(seed >> 32));
}

/* Uniform in [0, 1) with 24 bits: every value exact in a float. */
static inline RW_HD float rw_u01(uint32_t x)
{
    return (float)(x >> 8) * (1.0f / 16777216.0f);
}

/* ---- the per-sample draw ---- */

#define RW_AUG_CROP_TRIES 10
/* Uniforms of one view, each random choice in a fixed slot, so the draw
 * never depends on earlier outcomes (no divergence on the GPU). */
enum {
    RW_AUG_U_CROP = 0, /* 2 per attempt: area scale, log aspect ratio */
    RW_AUG_U_CROP_Y = 2 * RW_AUG_CROP_TRIES,
    RW_AUG_U_CROP_X,
    RW_AUG_U_FLIP,
    RW_AUG_U_JITTER,
    RW_AUG_U_BRIGHTNESS,
    RW_AUG_U_CONTRAST,
    RW_AUG_U_SATURATION,
    RW_AUG_U_HUE,
    RW_AUG_U_ORDER, /* 3: Fisher-Yates of the four jitter ops */
    RW_AUG_U_GRAY = RW_AUG_U_ORDER + 3,
    RW_AUG_U_BLUR,
    RW_AUG_U_SIGMA,
    RW_AUG_U_SOLARIZE,
    RW_AUG_U_COUNT,
};
#define RW_AUG_U_WORDS ((RW_AUG_U_COUNT + 3) / 4 * 4)

enum { RW_JITTER_BRIGHTNESS, RW_JITTER_CONTRAST, RW_JITTER_SATURATION, RW_JITTER_HUE };

typedef struct rw_aug_params {
    int crop_x, crop_y, crop_w, crop_h; /* source box: columns crop_x.., rows crop_y.. */
    int flip;
    int jitter;   /* colour jitter applied */
    int order[4]; /* RW_JITTER_* in the order applied */
    float brightness, contrast, saturation, hue;
    int gray;
    int blur;
    float sigma;
    int solarize;
} rw_aug_params;

/* BYOL's probabilities per view (0 = T1, 1 = T2). */
static inline RW_HD float rw_aug_p_blur(int view) { return view == 0 ? 1.0f : 0.1f; }
static inline RW_HD float rw_aug_p_solarize(int view) { return view == 0 ? 0.0f : 0.2f; }
#define RW_AUG_P_FLIP 0.5f
#define RW_AUG_P_JITTER 0.8f
#define RW_AUG_P_GRAY 0.2f
#define RW_AUG_SCALE_MIN 0.08f
#define RW_AUG_SCALE_MAX 1.0f
#define RW_AUG_RATIO_MIN (3.0f / 4.0f)
#define RW_AUG_RATIO_MAX (4.0f / 3.0f)
#define RW_AUG_BRIGHTNESS 0.4f
#define RW_AUG_CONTRAST 0.4f
#define RW_AUG_SATURATION 0.2f
#define RW_AUG_HUE 0.1f
#define RW_AUG_SIGMA_MIN 0.1f
#define RW_AUG_SIGMA_MAX 2.0f

/* Round half to even, as Python's round() in torchvision's crop. */
static inline RW_HD int rw_aug_round(float x) { return (int)rintf(x); }

/* torchvision's RandomResizedCrop.get_params on a W x H source from
 * uniforms u[0 .. 2*RW_AUG_CROP_TRIES+1]: up to 10 attempts at a box of
 * random area and aspect ratio that fits, at a uniform position; else the
 * centre crop clamped to the ratio range. */
static inline RW_HD void rw_aug_crop(const float *u, int W, int H, int *x, int *y, int *w,
                                     int *h)
{
    float area = (float)W * (float)H;
    float lr0 = logf(RW_AUG_RATIO_MIN), lr1 = logf(RW_AUG_RATIO_MAX);
    for (int t = 0; t < RW_AUG_CROP_TRIES; t++) {
        float target = area * (RW_AUG_SCALE_MIN + (RW_AUG_SCALE_MAX - RW_AUG_SCALE_MIN) * u[2 * t]);
        float ar = expf(lr0 + (lr1 - lr0) * u[2 * t + 1]);
        int cw = rw_aug_round(sqrtf(target * ar));
        int ch = rw_aug_round(sqrtf(target / ar));
        if (cw > 0 && cw <= W && ch > 0 && ch <= H) {
            /* randint(0, H - ch + 1): uniform over the H - ch + 1 offsets */
            int yy = (int)(u[2 * RW_AUG_CROP_TRIES] * (float)(H - ch + 1));
            int xx = (int)(u[2 * RW_AUG_CROP_TRIES + 1] * (float)(W - cw + 1));
            *y = yy > H - ch ? H - ch : yy;
            *x = xx > W - cw ? W - cw : xx;
            *w = cw;
            *h = ch;
            return;
        }
    }
    float in_ratio = (float)W / (float)H;
    int cw = W, ch = H;
    if (in_ratio < RW_AUG_RATIO_MIN) {
        ch = rw_aug_round((float)cw / RW_AUG_RATIO_MIN);
    } else if (in_ratio > RW_AUG_RATIO_MAX) {
        cw = rw_aug_round((float)ch * RW_AUG_RATIO_MAX);
    }
    *w = cw;
    *h = ch;
    *y = (H - ch) / 2;
    *x = (W - cw) / 2;
}

/* All random choices of one view from its uniforms. */
static inline RW_HD void rw_aug_from_uniforms(const float *u, int view, int W, int H,
                                              rw_aug_params *p)
{
    rw_aug_crop(u + RW_AUG_U_CROP, W, H, &p->crop_x, &p->crop_y, &p->crop_w, &p->crop_h);
    p->flip = u[RW_AUG_U_FLIP] < RW_AUG_P_FLIP;
    p->jitter = u[RW_AUG_U_JITTER] < RW_AUG_P_JITTER;
    p->brightness = 1.0f - RW_AUG_BRIGHTNESS + 2.0f * RW_AUG_BRIGHTNESS * u[RW_AUG_U_BRIGHTNESS];
    p->contrast = 1.0f - RW_AUG_CONTRAST + 2.0f * RW_AUG_CONTRAST * u[RW_AUG_U_CONTRAST];
    p->saturation = 1.0f - RW_AUG_SATURATION + 2.0f * RW_AUG_SATURATION * u[RW_AUG_U_SATURATION];
    p->hue = -RW_AUG_HUE + 2.0f * RW_AUG_HUE * u[RW_AUG_U_HUE];
    for (int k = 0; k < 4; k++)
        p->order[k] = k;
    for (int k = 3; k > 0; k--) { /* Fisher-Yates: a uniform permutation */
        int j = (int)(u[RW_AUG_U_ORDER + 3 - k] * (float)(k + 1));
        j = j > k ? k : j;
        int t = p->order[k];
        p->order[k] = p->order[j];
        p->order[j] = t;
    }
    p->gray = u[RW_AUG_U_GRAY] < RW_AUG_P_GRAY;
    p->blur = u[RW_AUG_U_BLUR] < rw_aug_p_blur(view);
    p->sigma = RW_AUG_SIGMA_MIN + (RW_AUG_SIGMA_MAX - RW_AUG_SIGMA_MIN) * u[RW_AUG_U_SIGMA];
    p->solarize = u[RW_AUG_U_SOLARIZE] < rw_aug_p_solarize(view);
}

/* View `view` (0 = T1, 1 = T2) of sample `index` in `epoch`, for a W x H
 * source: a pure function of its arguments. */
static inline RW_HD void rw_aug_draw(uint64_t seed, uint32_t epoch, uint32_t index, int view,
                                     int W, int H, rw_aug_params *p)
{
    float u[RW_AUG_U_WORDS];
    for (int b = 0; b < RW_AUG_U_WORDS / 4; b++) {
        rw_u32x4 r = rw_rng4(seed, epoch, index, (uint32_t)view, (uint32_t)b);
        for (int k = 0; k < 4; k++)
            u[4 * b + k] = rw_u01(r.v[k]);
    }
    rw_aug_from_uniforms(u, view, W, H, p);
}

/* ---- per-pixel math ---- */

#define RW_AUG_GRAY_R 0.299f
#define RW_AUG_GRAY_G 0.587f
#define RW_AUG_GRAY_B 0.114f

static inline RW_HD float rw_aug_clamp01(float x) { return fminf(fmaxf(x, 0.0f), 1.0f); }

static inline RW_HD float rw_aug_gray(const float c[3])
{
    return RW_AUG_GRAY_R * c[0] + RW_AUG_GRAY_G * c[1] + RW_AUG_GRAY_B * c[2];
}

/* Source coordinate of output index o for a crop of `len` pixels from `off`
 * resized to `out` (align_corners=False; PyTorch clamps negatives to 0). */
static inline RW_HD void rw_aug_src_index(int o, int out, int off, int len, int *i0, int *i1,
                                          float *lambda)
{
    float s = ((float)o + 0.5f) * ((float)len / (float)out) - 0.5f;
    s = fmaxf(s, 0.0f);
    int i = (int)s;
    i = i > len - 1 ? len - 1 : i;
    *lambda = s - (float)i;
    *i0 = off + i;
    *i1 = off + (i < len - 1 ? i + 1 : i);
}

/* Pixel (ox, oy) of the cropped, resized and flipped view from a uint8
 * source in planes (3, H, W), as floats in [0, 1]. */
static inline RW_HD void rw_aug_sample(const uint8_t *src, int W, int H, const rw_aug_params *p,
                                       int S, int ox, int oy, float c[3])
{
    if (p->flip)
        ox = S - 1 - ox;
    int x0, x1, y0, y1;
    float lx, ly;
    rw_aug_src_index(ox, S, p->crop_x, p->crop_w, &x0, &x1, &lx);
    rw_aug_src_index(oy, S, p->crop_y, p->crop_h, &y0, &y1, &ly);
    for (int ch = 0; ch < 3; ch++) {
        const uint8_t *pl = src + (long)ch * W * H;
        float top = (1.0f - lx) * (float)pl[y0 * W + x0] + lx * (float)pl[y0 * W + x1];
        float bot = (1.0f - lx) * (float)pl[y1 * W + x0] + lx * (float)pl[y1 * W + x1];
        c[ch] = ((1.0f - ly) * top + ly * bot) * (1.0f / 255.0f);
    }
}

/* brightness: blend with black */
static inline RW_HD void rw_aug_brightness(float c[3], float f)
{
    for (int k = 0; k < 3; k++)
        c[k] = rw_aug_clamp01(f * c[k]);
}

/* contrast: blend with the image's mean gray level */
static inline RW_HD void rw_aug_contrast(float c[3], float f, float mean)
{
    for (int k = 0; k < 3; k++)
        c[k] = rw_aug_clamp01(f * c[k] + (1.0f - f) * mean);
}

/* saturation: blend with the pixel's gray level */
static inline RW_HD void rw_aug_saturation(float c[3], float f)
{
    float g = rw_aug_gray(c);
    for (int k = 0; k < 3; k++)
        c[k] = rw_aug_clamp01(f * c[k] + (1.0f - f) * g);
}

/* hue: rotate h in HSV by f turns (torchvision's _rgb2hsv / _hsv2rgb) */
static inline RW_HD void rw_aug_hue(float c[3], float f)
{
    float r = c[0], g = c[1], b = c[2];
    float maxc = fmaxf(r, fmaxf(g, b)), minc = fminf(r, fminf(g, b));
    float cr = maxc - minc;
    float v = maxc;
    float s = cr / (cr == 0.0f ? 1.0f : maxc);
    float d = cr == 0.0f ? 1.0f : cr;
    float rc = (maxc - r) / d, gc = (maxc - g) / d, bc = (maxc - b) / d;
    float h;
    if (maxc == r)
        h = bc - gc;
    else if (maxc == g)
        h = 2.0f + rc - bc;
    else
        h = 4.0f + gc - rc;
    h = h / 6.0f + 1.0f;
    h -= floorf(h);
    h += f;
    h -= floorf(h);
    float h6 = h * 6.0f;
    float fi = floorf(h6);
    float fr = h6 - fi;
    int i = ((int)fi) % 6;
    float pp = rw_aug_clamp01(v * (1.0f - s));
    float q = rw_aug_clamp01(v * (1.0f - s * fr));
    float t = rw_aug_clamp01(v * (1.0f - s * (1.0f - fr)));
    switch (i) {
    case 0: c[0] = v; c[1] = t; c[2] = pp; break;
    case 1: c[0] = q; c[1] = v; c[2] = pp; break;
    case 2: c[0] = pp; c[1] = v; c[2] = t; break;
    case 3: c[0] = pp; c[1] = q; c[2] = v; break;
    case 4: c[0] = t; c[1] = pp; c[2] = v; break;
    default: c[0] = v; c[1] = pp; c[2] = q; break;
    }
}

/* Position of contrast in the jitter order: the steps before it run before
 * the mean-gray reduction, the rest after. 4 when jitter is off. */
static inline RW_HD int rw_aug_contrast_step(const rw_aug_params *p)
{
    if (!p->jitter)
        return 4;
    for (int k = 0; k < 4; k++)
        if (p->order[k] == RW_JITTER_CONTRAST)
            return k;
    return 4;
}

/* Jitter steps [begin, end) of the drawn order on one pixel; `mean` is the
 * image's mean gray level just before the contrast step (unused otherwise). */
static inline RW_HD void rw_aug_jitter_steps(const rw_aug_params *p, float c[3], int begin,
                                             int end, float mean)
{
    if (!p->jitter)
        return;
    for (int k = begin; k < end; k++) {
        switch (p->order[k]) {
        case RW_JITTER_BRIGHTNESS: rw_aug_brightness(c, p->brightness); break;
        case RW_JITTER_CONTRAST: rw_aug_contrast(c, p->contrast, mean); break;
        case RW_JITTER_SATURATION: rw_aug_saturation(c, p->saturation); break;
        default: rw_aug_hue(c, p->hue); break;
        }
    }
}

/* Grayscale keeps three equal channels. */
static inline RW_HD void rw_aug_grayscale(float c[3])
{
    float g = rw_aug_gray(c);
    c[0] = c[1] = c[2] = g;
}

static inline RW_HD float rw_aug_solarize(float x) { return x >= 0.5f ? 1.0f - x : x; }

static inline RW_HD float rw_aug_normalize(float x, float mean, float std)
{
    return (x - mean) / std;
}

/* Blur taps for an S x S view: 2*round(0.05*S)+1, odd, ~a tenth of S. */
#define RW_AUG_BLUR_MAX_TAPS 65 /* S <= 640 */
static inline RW_HD int rw_aug_blur_taps(int S)
{
    int t = 2 * (int)floorf(0.05f * (float)S + 0.5f) + 1;
    return t > RW_AUG_BLUR_MAX_TAPS ? RW_AUG_BLUR_MAX_TAPS : t;
}

/* torchvision's 1-D Gaussian kernel: exp(-x^2 / (2 sigma^2)) at integer
 * offsets from the centre, normalized to sum 1. */
static inline RW_HD void rw_aug_blur_kernel(float sigma, int taps, float *w)
{
    int r = taps / 2;
    float sum = 0.0f;
    for (int k = 0; k < taps; k++) {
        float x = (float)(k - r) / sigma;
        w[k] = expf(-0.5f * x * x);
        sum += w[k];
    }
    for (int k = 0; k < taps; k++)
        w[k] /= sum;
}

/* Reflect padding without repeating the edge (PyTorch's "reflect"). */
static inline RW_HD int rw_aug_reflect(int i, int n)
{
    if (n <= 1)
        return 0;
    while (i < 0 || i >= n) {
        if (i < 0)
            i = -i;
        if (i >= n)
            i = 2 * (n - 1) - i;
    }
    return i;
}

#endif
