/* BYOL's views on the CPU: the math is kernels/augment.h's; this file walks
 * it over whole images in the passes the contrast reduction and the blur
 * require. */
#include <math.h>
#include <string.h>

#include "worker/data_internal.h"

/* One separable pass of the Gaussian along rows (dx = 1) or columns. */
static void blur_pass(const float *in, float *out, int S, const float *w, int taps, int along_x)
{
    int r = taps / 2;
    for (int a = 0; a < S; a++) {       /* the line: a row when along_x, else a column */
        for (int b = 0; b < S; b++) {   /* the position along it */
            float acc = 0.0f;
            if (b - r >= 0 && b + r < S) {
                for (int k = 0; k < taps; k++) {
                    int q = b + k - r;
                    acc += w[k] * (along_x ? in[a * S + q] : in[q * S + a]);
                }
            } else {
                for (int k = 0; k < taps; k++) {
                    int q = rw_aug_reflect(b + k - r, S);
                    acc += w[k] * (along_x ? in[a * S + q] : in[q * S + a]);
                }
            }
            if (along_x)
                out[a * S + b] = acc;
            else
                out[b * S + a] = acc;
        }
    }
}

void rw_aug_render(const uint8_t *src, int W, int H, const rw_aug_params *p, int S,
                   const float mean[3], const float std[3], float *out, float *scratch)
{
    long P = (long)S * S;
    float *pl[3] = {out, out + P, out + 2 * P};
    int kc = rw_aug_contrast_step(p);

    /* pass 1: crop + resize + flip, jitter up to contrast, the gray sum */
    double gsum = 0.0;
    for (int oy = 0; oy < S; oy++) {
        for (int ox = 0; ox < S; ox++) {
            float c[3];
            rw_aug_sample(src, W, H, p, S, ox, oy, c);
            rw_aug_jitter_steps(p, c, 0, kc, 0.0f);
            long o = (long)oy * S + ox;
            pl[0][o] = c[0];
            pl[1][o] = c[1];
            pl[2][o] = c[2];
            gsum += rw_aug_gray(c);
        }
    }

    /* pass 2: contrast and the steps after it, grayscale */
    if (kc < 4 || p->gray) {
        float gmean = (float)(gsum / (double)P);
        for (long o = 0; o < P; o++) {
            float c[3] = {pl[0][o], pl[1][o], pl[2][o]};
            rw_aug_jitter_steps(p, c, kc, 4, gmean);
            if (p->gray)
                rw_aug_grayscale(c);
            pl[0][o] = c[0];
            pl[1][o] = c[1];
            pl[2][o] = c[2];
        }
    }

    if (p->blur) {
        float w[RW_AUG_BLUR_MAX_TAPS];
        int taps = rw_aug_blur_taps(S);
        rw_aug_blur_kernel(p->sigma, taps, w);
        for (int ch = 0; ch < 3; ch++) {
            blur_pass(pl[ch], scratch, S, w, taps, 1);
            blur_pass(scratch, pl[ch], S, w, taps, 0);
        }
    }

    /* pass 3: solarize, normalize */
    for (int ch = 0; ch < 3; ch++) {
        float m = mean[ch], s = std[ch];
        float *x = pl[ch];
        if (p->solarize) {
            for (long o = 0; o < P; o++)
                x[o] = rw_aug_normalize(rw_aug_solarize(x[o]), m, s);
        } else {
            for (long o = 0; o < P; o++)
                x[o] = rw_aug_normalize(x[o], m, s);
        }
    }
}

/* The identity view: whole image, nothing random. */
static void plain_params(rw_aug_params *p, int side)
{
    memset(p, 0, sizeof *p);
    p->crop_w = side;
    p->crop_h = side;
    for (int k = 0; k < 4; k++)
        p->order[k] = k;
}

void rw_image_plain(const rw_dataset *ds, int i, int size, const float mean[3],
                    const float std[3], float *out)
{
    rw_aug_params p;
    plain_params(&p, ds->side);
    /* no blur, so no scratch is touched */
    rw_aug_render(ds->pixels + (size_t)i * 3 * ds->side * ds->side, ds->side, ds->side, &p, size,
                  mean, std, out, NULL);
}

void rw_aug_view(const rw_dataset *ds, int i, uint64_t seed, int epoch, int view,
                 rw_augment augment, int S, const float mean[3], const float std[3], float *out,
                 float *scratch)
{
    if (augment == RW_AUG_NONE) {
        rw_image_plain(ds, i, S, mean, std, out);
        return;
    }
    rw_aug_params p;
    rw_aug_draw(seed, (uint32_t)epoch, (uint32_t)i, view, ds->side, ds->side, &p);
    rw_aug_render(ds->pixels + (size_t)i * 3 * ds->side * ds->side, ds->side, ds->side, &p, S,
                  mean, std, out, scratch);
}
