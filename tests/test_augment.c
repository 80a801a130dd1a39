/* BYOL's augmentations: the RNG, the per-sample draw, the per-pixel math
 * (kernels/augment.h) and the CPU renderer (worker/augment.c). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kernels/augment.h"
#include "worker/data_internal.h"

static const float k_mean[3] = {0.4914f, 0.4822f, 0.4465f};
static const float k_std[3] = {0.2470f, 0.2435f, 0.2616f};
static const float k_zero[3] = {0, 0, 0};
static const float k_one[3] = {1, 1, 1};

/* A deterministic, non-symmetric 32x32 test image. */
static void pattern(uint8_t *img, int W, int H)
{
    for (int ch = 0; ch < 3; ch++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                img[(ch * H + y) * W + x] = (uint8_t)((x * 7 + y * 13 + ch * 50 + x * y) % 256);
}

static void near3(const float c[3], float r, float g, float b, float tol, const char *what)
{
    cr_assert(fabsf(c[0] - r) <= tol && fabsf(c[1] - g) <= tol && fabsf(c[2] - b) <= tol,
              "%s: got (%.6f, %.6f, %.6f), want (%.6f, %.6f, %.6f)", what, c[0], c[1], c[2], r, g,
              b);
}

/* ---- RNG ---- */

Test(augment, philox_known_answers)
{
    /* Random123's kat_vectors for philox4x32_10 */
    struct {
        uint32_t c[4], k[2], want[4];
    } kat[] = {
        {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
        {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
         {0xffffffff, 0xffffffff},
         {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
        {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
         {0xa4093822, 0x299f31d0},
         {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    };
    for (size_t t = 0; t < sizeof kat / sizeof kat[0]; t++) {
        rw_u32x4 c;
        memcpy(c.v, kat[t].c, sizeof c.v);
        rw_u32x4 r = rw_philox4x32_10(c, kat[t].k[0], kat[t].k[1]);
        for (int k = 0; k < 4; k++)
            cr_assert_eq(r.v[k], kat[t].want[k], "vector %zu word %d: %08x, want %08x", t, k,
                         r.v[k], kat[t].want[k]);
    }
}

Test(augment, uniform_range)
{
    cr_assert_eq(rw_u01(0), 0.0f);
    cr_assert(rw_u01(0xffffffffu) < 1.0f);
    cr_assert(rw_u01(0xffffffffu) > 0.9999999f);
}

/* ---- geometry ---- */

Test(augment, identity_crop_is_exact)
{
    uint8_t img[3 * 32 * 32];
    pattern(img, 32, 32);
    rw_aug_params p = {.crop_w = 32, .crop_h = 32, .order = {0, 1, 2, 3}};
    for (int y = 0; y < 32; y++)
        for (int x = 0; x < 32; x++) {
            float c[3];
            rw_aug_sample(img, 32, 32, &p, 32, x, y, c);
            for (int ch = 0; ch < 3; ch++)
                cr_assert_eq(c[ch], img[(ch * 32 + y) * 32 + x] * (1.0f / 255.0f), "(%d,%d,%d)", x, y, ch);
        }
}

Test(augment, bilinear_upscale_half_pixel_centres)
{
    /* a 2x1 crop [a b] (a = 0, b = 255) resized to 4 wide, align_corners=False:
     * source x = (o + 0.5) / 2 - 0.5 clamped at 0 -> 0, 0.25, 0.75, 1 */
    uint8_t img[3 * 4 * 4] = {0};
    for (int ch = 0; ch < 3; ch++)
        for (int y = 0; y < 4; y++)
            img[(ch * 4 + y) * 4 + 2] = 255; /* column 2 is white, column 1 black */
    rw_aug_params p = {.crop_x = 1, .crop_y = 1, .crop_w = 2, .crop_h = 2};
    float want[4] = {0.0f, 0.25f, 0.75f, 1.0f};
    for (int o = 0; o < 4; o++) {
        float c[3];
        rw_aug_sample(img, 4, 4, &p, 4, o, 2, c);
        cr_assert(fabsf(c[0] - want[o]) < 1e-6f, "x %d: %f, want %f", o, c[0], want[o]);
    }
}

Test(augment, flip_is_exact)
{
    uint8_t img[3 * 32 * 32];
    pattern(img, 32, 32);
    for (int i = 0; i < 50; i++) {
        rw_aug_params p;
        rw_aug_draw(7, 0, (uint32_t)i, i & 1, 32, 32, &p);
        rw_aug_params q = p;
        q.flip = !p.flip;
        for (int S = 32; S <= 48; S += 16)
            for (int y = 0; y < S; y++)
                for (int x = 0; x < S; x++) {
                    float a[3], b[3];
                    rw_aug_sample(img, 32, 32, &p, S, x, y, a);
                    rw_aug_sample(img, 32, 32, &q, S, S - 1 - x, y, b);
                    cr_assert(memcmp(a, b, sizeof a) == 0, "sample %d S %d (%d,%d)", i, S, x, y);
                }
        /* and through the whole renderer, jitter off (its mean is summed in
         * pixel order) and blur off (its taps are summed left to right) */
        p.jitter = q.jitter = 0;
        p.blur = q.blur = 0;
        float va[3 * 32 * 32], vb[3 * 32 * 32], scratch[3 * 32 * 32];
        rw_aug_render(img, 32, 32, &p, 32, k_mean, k_std, va, scratch);
        rw_aug_render(img, 32, 32, &q, 32, k_mean, k_std, vb, scratch);
        for (int ch = 0; ch < 3; ch++)
            for (int y = 0; y < 32; y++)
                for (int x = 0; x < 32; x++)
                    cr_assert_eq(va[(ch * 32 + y) * 32 + x], vb[(ch * 32 + y) * 32 + 31 - x]);
    }
}

/* Could rounding have produced (w, h) from an area in [0.08, 1] * A and a
 * ratio in [3/4, 4/3]? Each side is within 0.5 of its real value. */
static int crop_plausible(int w, int h, float A)
{
    return (w + 0.5f) * (h + 0.5f) >= 0.08f * A && (w - 0.5f) * (h - 0.5f) <= A &&
           (w + 0.5f) / (h - 0.5f) >= 0.75f && (w - 0.5f) / (h + 0.5f) <= 4.0f / 3.0f;
}

Test(augment, crop_boxes_respect_ranges)
{
    int n = 20000, full = 0, at_left = 0, at_right = 0;
    double area_sum = 0;
    for (int i = 0; i < n; i++) {
        rw_aug_params p;
        rw_aug_draw(3, 1, (uint32_t)i, 0, 32, 32, &p);
        cr_assert(p.crop_x >= 0 && p.crop_y >= 0 && p.crop_w >= 1 && p.crop_h >= 1 &&
                      p.crop_x + p.crop_w <= 32 && p.crop_y + p.crop_h <= 32,
                  "box %d,%d %dx%d outside the image", p.crop_x, p.crop_y, p.crop_w, p.crop_h);
        cr_assert(crop_plausible(p.crop_w, p.crop_h, 1024.0f), "box %dx%d out of range", p.crop_w,
                  p.crop_h);
        full += p.crop_w == 32 && p.crop_h == 32;
        at_left += p.crop_x == 0 && p.crop_w < 32;
        at_right += p.crop_x + p.crop_w == 32 && p.crop_w < 32;
        area_sum += p.crop_w * p.crop_h / 1024.0;
    }
    /* E[area] is ~0.54 of the image: scale U(0.08, 1), pulled down by the
     * rejected draws that exceed the sides */
    double mean_area = area_sum / n;
    cr_assert(mean_area > 0.45 && mean_area < 0.56, "mean area fraction %f", mean_area);
    cr_assert(at_left > 100 && at_right > 100, "offsets reach both edges (%d, %d)", at_left,
              at_right);
    cr_assert(full < n / 10, "full-image boxes %d", full);
}

Test(augment, crop_falls_back_to_centre)
{
    /* every attempt asks for the whole area at the most extreme ratio: never fits */
    float u[2 * RW_AUG_CROP_TRIES + 2];
    for (int t = 0; t < RW_AUG_CROP_TRIES; t++) {
        u[2 * t] = 0.999f;
        u[2 * t + 1] = 0.999f;
    }
    u[2 * RW_AUG_CROP_TRIES] = u[2 * RW_AUG_CROP_TRIES + 1] = 0.9f;
    int x, y, w, h;
    rw_aug_crop(u, 32, 32, &x, &y, &w, &h);
    cr_assert(x == 0 && y == 0 && w == 32 && h == 32, "square: %d,%d %dx%d", x, y, w, h);
    /* wide source: height kept, width cut to ratio 4/3, centred */
    for (int t = 0; t < RW_AUG_CROP_TRIES; t++)
        u[2 * t + 1] = 0.0f; /* ratio 3/4: h = sqrt(1024*4/3) = 37 > 16 */
    rw_aug_crop(u, 64, 16, &x, &y, &w, &h);
    cr_assert(x == 21 && y == 0 && w == 21 && h == 16, "wide: %d,%d %dx%d", x, y, w, h);
    /* tall source: width kept, height cut to ratio 3/4 */
    for (int t = 0; t < RW_AUG_CROP_TRIES; t++)
        u[2 * t + 1] = 0.999f;
    rw_aug_crop(u, 16, 64, &x, &y, &w, &h);
    cr_assert(x == 0 && y == 21 && w == 16 && h == 21, "tall: %d,%d %dx%d", x, y, w, h);
    /* the first attempt that fits wins: attempt 3 asks for a quarter, square */
    u[6] = (0.25f - 0.08f) / 0.92f;
    u[7] = 0.5f;
    rw_aug_crop(u, 32, 32, &x, &y, &w, &h);
    cr_assert(w == 16 && h == 16, "attempt 3: %dx%d", w, h);
}

/* ---- colour ---- */

Test(augment, grayscale_weights)
{
    float c[3] = {1, 0, 0};
    rw_aug_grayscale(c);
    near3(c, 0.299f, 0.299f, 0.299f, 1e-7f, "red");
    float g[3] = {0, 1, 0};
    rw_aug_grayscale(g);
    near3(g, 0.587f, 0.587f, 0.587f, 1e-7f, "green");
    float b[3] = {0, 0, 1};
    rw_aug_grayscale(b);
    near3(b, 0.114f, 0.114f, 0.114f, 1e-7f, "blue");
    float w[3] = {1, 1, 1};
    rw_aug_grayscale(w);
    near3(w, 1, 1, 1, 1e-6f, "white");
}

Test(augment, brightness)
{
    float c[3] = {0.5f, 0.2f, 0.9f};
    rw_aug_brightness(c, 1.2f);
    near3(c, 0.6f, 0.24f, 1.0f, 1e-6f, "x1.2, clamped");
    float d[3] = {0.5f, 0.2f, 0.9f};
    rw_aug_brightness(d, 0.6f);
    near3(d, 0.3f, 0.12f, 0.54f, 1e-6f, "x0.6");
}

Test(augment, contrast)
{
    float c[3] = {0.8f, 0.4f, 0.1f};
    rw_aug_contrast(c, 0.5f, 0.4f); /* 0.5 x + 0.5 * 0.4 */
    near3(c, 0.6f, 0.4f, 0.25f, 1e-6f, "f 0.5 around 0.4");
    float d[3] = {0.8f, 0.4f, 0.1f};
    rw_aug_contrast(d, 1.4f, 0.4f); /* 1.4 x - 0.16 */
    near3(d, 0.96f, 0.4f, 0.0f, 1e-6f, "f 1.4 around 0.4, clamped");
}

Test(augment, saturation)
{
    float g = 0.299f * 0.8f + 0.587f * 0.4f + 0.114f * 0.1f;
    float c[3] = {0.8f, 0.4f, 0.1f};
    rw_aug_saturation(c, 0.0f);
    near3(c, g, g, g, 1e-6f, "f 0 is gray");
    float d[3] = {0.8f, 0.4f, 0.1f};
    rw_aug_saturation(d, 1.2f);
    near3(d, 1.2f * 0.8f - 0.2f * g, 1.2f * 0.4f - 0.2f * g, fmaxf(0.12f - 0.2f * g, 0), 1e-6f,
          "f 1.2");
}

Test(augment, hue)
{
    float c[3] = {1, 0, 0};
    rw_aug_hue(c, 1.0f / 3.0f);
    near3(c, 0, 1, 0, 1e-6f, "red + 1/3 is green");
    float d[3] = {1, 0, 0};
    rw_aug_hue(d, -1.0f / 3.0f);
    near3(d, 0, 0, 1, 1e-6f, "red - 1/3 is blue");
    float e[3] = {0, 1, 0};
    rw_aug_hue(e, 1.0f / 3.0f);
    near3(e, 0, 0, 1, 1e-6f, "green + 1/3 is blue");
    float o[3] = {1, 0.5f, 0}; /* orange, h = 1/12 */
    rw_aug_hue(o, 1.0f / 12.0f);
    near3(o, 1, 1, 0, 1e-6f, "orange + 1/12 is yellow");
    float dark[3] = {0.5f, 0.25f, 0.25f}; /* h 0, s 0.5, v 0.5 */
    rw_aug_hue(dark, 0.5f);
    near3(dark, 0.25f, 0.5f, 0.5f, 1e-6f, "dark red + 1/2 is dark cyan");
    float gray[3] = {0.3f, 0.3f, 0.3f};
    rw_aug_hue(gray, 0.1f);
    near3(gray, 0.3f, 0.3f, 0.3f, 0, "gray has no hue");
    float z[3] = {0.7f, 0.2f, 0.4f};
    rw_aug_hue(z, 0.0f);
    near3(z, 0.7f, 0.2f, 0.4f, 1e-6f, "shift 0 is the identity");
}

Test(augment, solarize_threshold)
{
    cr_assert_eq(rw_aug_solarize(0.49f), 0.49f);
    cr_assert_eq(rw_aug_solarize(0.5f), 0.5f); /* 1 - 0.5 */
    cr_assert(fabsf(rw_aug_solarize(0.8f) - 0.2f) < 1e-6f);
    cr_assert_eq(rw_aug_solarize(1.0f), 0.0f);
    cr_assert_eq(rw_aug_solarize(0.0f), 0.0f);
}

Test(augment, jitter_order_applies_in_sequence)
{
    /* brightness then contrast differs from contrast then brightness */
    rw_aug_params p = {.jitter = 1, .brightness = 1.3f, .contrast = 0.6f, .saturation = 1.0f,
                       .hue = 0.0f, .order = {RW_JITTER_BRIGHTNESS, RW_JITTER_CONTRAST,
                                              RW_JITTER_SATURATION, RW_JITTER_HUE}};
    cr_assert_eq(rw_aug_contrast_step(&p), 1);
    float c[3] = {0.5f, 0.4f, 0.3f};
    rw_aug_jitter_steps(&p, c, 0, 1, 0.0f);
    near3(c, 0.65f, 0.52f, 0.39f, 1e-6f, "brightness first");
    rw_aug_jitter_steps(&p, c, 1, 4, 0.5f);
    near3(c, 0.6f * 0.65f + 0.2f, 0.6f * 0.52f + 0.2f, 0.6f * 0.39f + 0.2f, 1e-6f,
          "then contrast");
    p.jitter = 0;
    cr_assert_eq(rw_aug_contrast_step(&p), 4);
}

/* ---- blur ---- */

Test(augment, blur_kernel)
{
    cr_assert_eq(rw_aug_blur_taps(32), 5);
    cr_assert_eq(rw_aug_blur_taps(96), 11);
    cr_assert_eq(rw_aug_blur_taps(224), 23);
    cr_assert(rw_aug_blur_taps(8) % 2 == 1);
    float sigmas[] = {0.1f, 0.5f, 1.0f, 2.0f};
    for (int s = 0; s < 4; s++) {
        for (int taps = 1; taps <= 23; taps += 2) {
            float w[RW_AUG_BLUR_MAX_TAPS];
            rw_aug_blur_kernel(sigmas[s], taps, w);
            float sum = 0;
            for (int k = 0; k < taps; k++) {
                sum += w[k];
                cr_assert_eq(w[k], w[taps - 1 - k], "symmetric");
                if (k > 0 && k <= taps / 2)
                    cr_assert(w[k] >= w[k - 1], "peaks at the centre");
            }
            cr_assert(fabsf(sum - 1.0f) < 1e-6f, "sigma %f taps %d: sum %f", sigmas[s], taps, sum);
        }
    }
    float w[5];
    rw_aug_blur_kernel(0.1f, 5, w);
    cr_assert(w[2] > 0.999999f, "tiny sigma is the identity");
    rw_aug_blur_kernel(1.0f, 5, w);
    float e1 = expf(-0.5f), e2 = expf(-2.0f), z = 1 + 2 * e1 + 2 * e2;
    cr_assert(fabsf(w[2] - 1 / z) < 1e-6f && fabsf(w[1] - e1 / z) < 1e-6f &&
              fabsf(w[0] - e2 / z) < 1e-6f);
}

Test(augment, reflect_padding)
{
    cr_assert_eq(rw_aug_reflect(-1, 5), 1);
    cr_assert_eq(rw_aug_reflect(-2, 5), 2);
    cr_assert_eq(rw_aug_reflect(5, 5), 3);
    cr_assert_eq(rw_aug_reflect(6, 5), 2);
    cr_assert_eq(rw_aug_reflect(3, 5), 3);
    cr_assert_eq(rw_aug_reflect(-7, 3), 1); /* folds more than once */
    cr_assert_eq(rw_aug_reflect(4, 1), 0);
}

Test(augment, blur_keeps_flat_images_flat)
{
    uint8_t img[3 * 32 * 32];
    memset(img, 100, sizeof img);
    rw_aug_params p = {.crop_w = 32, .crop_h = 32, .blur = 1, .sigma = 2.0f};
    static float out[3 * 40 * 40], scratch[3 * 40 * 40];
    rw_aug_render(img, 32, 32, &p, 40, k_zero, k_one, out, scratch);
    for (int k = 0; k < 3 * 40 * 40; k++)
        cr_assert(fabsf(out[k] - 100 / 255.0f) < 1e-5f, "%d: %f", k, out[k]);
}

Test(augment, blur_matches_direct_convolution)
{
    /* a single bright pixel near the corner: the output is the 2-D kernel,
     * folded by the reflection */
    uint8_t img[3 * 32 * 32] = {0};
    img[1 * 32 + 0] = 255; /* red plane, (x 0, y 1) */
    rw_aug_params p = {.crop_w = 32, .crop_h = 32, .blur = 1, .sigma = 1.0f};
    float out[3 * 32 * 32], scratch[3 * 32 * 32], w[5];
    rw_aug_render(img, 32, 32, &p, 32, k_zero, k_one, out, scratch);
    rw_aug_blur_kernel(1.0f, 5, w);
    for (int y = 0; y < 5; y++)
        for (int x = 0; x < 5; x++) {
            float want = 0;
            for (int ky = 0; ky < 5; ky++)
                for (int kx = 0; kx < 5; kx++)
                    if (rw_aug_reflect(x + kx - 2, 32) == 0 && rw_aug_reflect(y + ky - 2, 32) == 1)
                        want += w[kx] * w[ky];
            cr_assert(fabsf(out[y * 32 + x] - want) < 1e-6f, "(%d,%d): %f, want %f", x, y,
                      out[y * 32 + x], want);
        }
}

/* ---- the draw ---- */

static int within(long count, long n, double p)
{
    double sd = sqrt(n * p * (1 - p));
    return fabs(count - n * p) <= 5 * sd + 1e-9;
}

Test(augment, choice_frequencies)
{
    const long n = 40000;
    for (int view = 0; view < 2; view++) {
        long flip = 0, jitter = 0, gray = 0, blur = 0, sol = 0, perm[24] = {0};
        double sigma_sum = 0;
        for (long i = 0; i < n; i++) {
            rw_aug_params p;
            rw_aug_draw(11, 2, (uint32_t)i, view, 32, 32, &p);
            flip += p.flip;
            jitter += p.jitter;
            gray += p.gray;
            blur += p.blur;
            sol += p.solarize;
            sigma_sum += p.sigma;
            cr_assert(p.brightness >= 0.6f && p.brightness <= 1.4f);
            cr_assert(p.contrast >= 0.6f && p.contrast <= 1.4f);
            cr_assert(p.saturation >= 0.8f && p.saturation <= 1.2f);
            cr_assert(p.hue >= -0.1f && p.hue <= 0.1f);
            cr_assert(p.sigma >= 0.1f && p.sigma <= 2.0f);
            int seen = 0, code = 0;
            for (int k = 0; k < 4; k++) {
                seen |= 1 << p.order[k];
                code = code * 4 + p.order[k];
            }
            cr_assert_eq(seen, 15, "order is a permutation");
            /* rank of the permutation among the 24 */
            static int table[256], init;
            if (!init) {
                int r = 0;
                for (int c = 0; c < 256; c++) {
                    int s = 0;
                    for (int k = 0; k < 4; k++)
                        s |= 1 << ((c >> (2 * k)) & 3);
                    table[c] = s == 15 ? r++ : -1;
                }
                init = 1;
            }
            perm[table[code]]++;
        }
        cr_assert(within(flip, n, 0.5), "view %d flip %ld / %ld", view, flip, n);
        cr_assert(within(jitter, n, 0.8), "view %d jitter %ld / %ld", view, jitter, n);
        cr_assert(within(gray, n, 0.2), "view %d gray %ld / %ld", view, gray, n);
        cr_assert(within(blur, n, view == 0 ? 1.0 : 0.1), "view %d blur %ld / %ld", view, blur, n);
        cr_assert(within(sol, n, view == 0 ? 0.0 : 0.2), "view %d solarize %ld / %ld", view, sol,
                  n);
        for (int k = 0; k < 24; k++)
            cr_assert(within(perm[k], n, 1.0 / 24), "view %d order %d: %ld", view, k, perm[k]);
        /* sigma ~ U(0.1, 2): mean 1.05, sd of the mean 0.55/sqrt(n) */
        double ms = sigma_sum / n;
        cr_assert(fabs(ms - 1.05) < 5 * 0.5485 / sqrt((double)n), "view %d mean sigma %f", view,
                  ms);
    }
}

Test(augment, views_are_pure_functions_of_their_key)
{
    rw_dataset ds = {.n = 1, .side = 32, .classes = 10, .labeled = 1};
    uint8_t img[3 * 32 * 32];
    uint8_t label = 3;
    pattern(img, 32, 32);
    ds.pixels = img;
    ds.labels = &label;
    static float a[3 * 64 * 64], b[3 * 64 * 64], scratch[3 * 64 * 64];
    rw_aug_view(&ds, 0, 5, 3, 1, RW_AUG_BYOL, 64, k_mean, k_std, a, scratch);
    rw_aug_view(&ds, 0, 5, 3, 1, RW_AUG_BYOL, 64, k_mean, k_std, b, scratch);
    cr_assert(memcmp(a, b, sizeof a) == 0, "same key, same bytes");
    /* the key is (seed, epoch, index, view): change each part */
    rw_aug_params p0, p;
    rw_aug_draw(5, 3, 0, 1, 32, 32, &p0);
    uint64_t seeds[] = {6, 5, 5, 5};
    uint32_t epochs[] = {3, 4, 3, 3}, idx[] = {0, 0, 1, 0};
    int views[] = {1, 1, 1, 0};
    for (int k = 0; k < 4; k++) {
        rw_aug_draw(seeds[k], epochs[k], idx[k], views[k], 32, 32, &p);
        cr_assert(memcmp(&p, &p0, sizeof p) != 0, "key change %d gives a different draw", k);
    }
    rw_aug_view(&ds, 0, 6, 3, 1, RW_AUG_BYOL, 64, k_mean, k_std, b, scratch);
    cr_assert(memcmp(a, b, sizeof a) != 0, "another seed, other bytes");
    /* the seed's high half matters too */
    rw_aug_draw(5 + (1ull << 32), 3, 0, 1, 32, 32, &p);
    cr_assert(memcmp(&p, &p0, sizeof p) != 0, "high seed bits");
}

Test(augment, none_is_the_plain_image)
{
    rw_dataset ds = {.n = 1, .side = 32, .classes = 10, .labeled = 1};
    uint8_t img[3 * 32 * 32];
    uint8_t label = 3;
    pattern(img, 32, 32);
    ds.pixels = img;
    ds.labels = &label;
    float a[3 * 32 * 32], scratch[3 * 32 * 32];
    rw_aug_view(&ds, 0, 5, 0, 1, RW_AUG_NONE, 32, k_mean, k_std, a, scratch);
    for (int ch = 0; ch < 3; ch++)
        for (int k = 0; k < 32 * 32; k++) {
            float want = (img[ch * 1024 + k] / 255.0f - k_mean[ch]) / k_std[ch];
            cr_assert(fabsf(a[ch * 1024 + k] - want) < 1e-5f);
        }
}

Test(augment, rendered_views_stay_in_range)
{
    uint8_t img[3 * 32 * 32];
    pattern(img, 32, 32);
    static float out[3 * 96 * 96], scratch[3 * 96 * 96];
    for (int i = 0; i < 200; i++) {
        rw_aug_params p;
        rw_aug_draw(1, 0, (uint32_t)i, i & 1, 32, 32, &p);
        int S = i % 3 == 0 ? 96 : 32;
        rw_aug_render(img, 32, 32, &p, S, k_zero, k_one, out, scratch);
        for (int k = 0; k < 3 * S * S; k++)
            cr_assert(out[k] >= -1e-6f && out[k] <= 1.0f + 1e-6f, "view %d px %d: %f", i, k,
                      out[k]);
    }
}

/* ---- throughput (reported, loosely bounded) ---- */

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

Test(augment, throughput)
{
    uint8_t img[3 * 32 * 32];
    pattern(img, 32, 32);
    rw_dataset ds = {.n = 1, .side = 32, .classes = 10, .labeled = 1, .pixels = img};
    static float out[3 * 96 * 96], scratch[3 * 96 * 96];
    int sizes[2] = {32, 96}, counts[2] = {4000, 1000};
    for (int s = 0; s < 2; s++) {
        double t0 = now_s();
        for (int i = 0; i < counts[s]; i++)
            rw_aug_view(&ds, 0, 9, i, i & 1, RW_AUG_BYOL, sizes[s], k_mean, k_std, out, scratch);
        double rate = counts[s] / (now_s() - t0);
        cr_log_info("augment: %.0f views/s at %dx%d on one thread", rate, sizes[s], sizes[s]);
        fprintf(stderr, "augment: %.0f views/s at %dx%d on one thread\n", rate, sizes[s],
                sizes[s]);
        /* training consumes ~100 views/s on the CPU backend */
        cr_assert(rate > 200, "%.0f views/s at %d", rate, sizes[s]);
    }
}

/* ---- cross-check with torchvision, where Debian's python3-torchvision is ---- */

static int have_torchvision(void)
{
    return access("/usr/bin/python3", X_OK) == 0 &&
           system("/usr/bin/python3 -c 'import torch, torchvision' >/dev/null 2>&1") == 0;
}

Test(augment, matches_torchvision)
{
    if (!have_torchvision())
        cr_skip_test("/usr/bin/python3 with torch and torchvision not found: cross-check skipped");
    char dir[] = "/tmp/rw_aug_tv_XXXXXX";
    cr_assert(mkdtemp(dir));
    char in_path[256], out_path[256], cmd[1024];
    snprintf(in_path, sizeof in_path, "%s/in.bin", dir);
    snprintf(out_path, sizeof out_path, "%s/out.bin", dir);

    uint8_t img[3 * 32 * 32];
    pattern(img, 32, 32);
    FILE *f = fopen(in_path, "wb");
    fwrite(img, 1, sizeof img, f);
    fclose(f);

    /* crop (y 5, x 3, h 20, w 14) -> 48x48 bilinear; then hue, saturation,
     * blur on that, each separately */
    const char *script =
        "import sys, numpy as np, torch, torchvision.transforms.functional as F\n"
        "from torchvision.transforms import InterpolationMode\n"
        "d = sys.argv[1]\n"
        "x = torch.from_numpy(np.fromfile(d + '/in.bin', dtype=np.uint8).reshape(3, 32, 32))\n"
        "x = x.float() / 255\n"
        "c = F.resized_crop(x, 5, 3, 20, 14, [48, 48], InterpolationMode.BILINEAR, "
        "antialias=False)\n"
        "h = F.adjust_hue(c, 0.07)\n"
        "s = F.adjust_saturation(c, 1.15)\n"
        "b = F.gaussian_blur(c, [5, 5], [1.3, 1.3])\n"
        "torch.cat([c, h, s, b]).numpy().astype(np.float32).tofile(d + '/out.bin')\n";
    char script_path[256];
    snprintf(script_path, sizeof script_path, "%s/x.py", dir);
    f = fopen(script_path, "w");
    fputs(script, f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %s 2>%s/err.txt", script_path, dir, dir);
    int rc = system(cmd);
    cr_assert_eq(rc, 0, "python3 failed (see %s/err.txt)", dir);

    enum { S = 48, P = S * S };
    static float ref[4 * 3 * P];
    f = fopen(out_path, "rb");
    cr_assert(f);
    cr_assert_eq(fread(ref, sizeof(float), 4 * 3 * P, f), (size_t)(4 * 3 * P));
    fclose(f);

    rw_aug_params p = {.crop_x = 3, .crop_y = 5, .crop_w = 14, .crop_h = 20,
                       .order = {0, 1, 2, 3}};
    static float crop[3 * P], v[3 * P], scratch[3 * P];
    rw_aug_render(img, 32, 32, &p, S, k_zero, k_one, crop, scratch);
    float worst[4] = {0};
    for (int k = 0; k < 3 * P; k++)
        worst[0] = fmaxf(worst[0], fabsf(crop[k] - ref[k]));
    for (int o = 0; o < P; o++) {
        float c[3] = {crop[o], crop[P + o], crop[2 * P + o]};
        float h[3] = {c[0], c[1], c[2]}, s[3] = {c[0], c[1], c[2]};
        rw_aug_hue(h, 0.07f);
        rw_aug_saturation(s, 1.15f);
        for (int ch = 0; ch < 3; ch++) {
            worst[1] = fmaxf(worst[1], fabsf(h[ch] - ref[3 * P + ch * P + o]));
            worst[2] = fmaxf(worst[2], fabsf(s[ch] - ref[6 * P + ch * P + o]));
        }
    }
    p.blur = 1;
    p.sigma = 1.3f;
    rw_aug_render(img, 32, 32, &p, S, k_zero, k_one, v, scratch);
    for (int k = 0; k < 3 * P; k++)
        worst[3] = fmaxf(worst[3], fabsf(v[k] - ref[9 * P + k]));
    fprintf(stderr, "torchvision: worst |diff| crop %.2g hue %.2g saturation %.2g blur %.2g\n",
            worst[0], worst[1], worst[2], worst[3]);
    /* float32 rounding differs in the order of operations: 1e-5. Saturation:
     * torchvision's gray uses 0.2989 for red where we use 0.299 (PIL's and
     * the design's weight), 1.1e-4 * 0.15 at most. */
    cr_assert(worst[0] < 1e-5f, "crop+resize differs by %g", worst[0]);
    cr_assert(worst[1] < 1e-5f, "hue differs by %g", worst[1]);
    cr_assert(worst[2] < 3e-5f, "saturation differs by %g", worst[2]);
    cr_assert(worst[3] < 1e-5f, "blur differs by %g", worst[3]);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    (void)!system(cmd);
}
