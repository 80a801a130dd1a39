/* `runaway-worker show-augment`: a PNG grid to eyeball the views. Row r is
 * the r-th image of epoch 0's order: original (resized), T1, T2. */
#include <errno.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/data_internal.h"

#define GAP 2            /* pixels between tiles */
#define GAP_VALUE 255    /* white separators */
#define MAX_COUNT 1024

/* Un-normalizes a (3, S, S) view into the RGB tile at (row, col). */
static void put_tile(uint8_t *rgb, int stride, int x0, int y0, const float *v, int S,
                     const float mean[3], const float std[3])
{
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++)
            for (int ch = 0; ch < 3; ch++) {
                float f = v[((size_t)ch * S + y) * S + x] * std[ch] + mean[ch];
                f = f < 0.0f ? 0.0f : (f > 1.0f ? 1.0f : f);
                rgb[(size_t)(y0 + y) * stride + (size_t)(x0 + x) * 3 + ch] =
                    (uint8_t)(255.0f * f + 0.5f);
            }
}

static int write_png(const char *path, const uint8_t *rgb, int w, int h, char *err,
                     size_t errlen)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot create: %s", path, strerror(errno));
        return -1;
    }
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        png_destroy_write_struct(&png, NULL);
        fclose(f);
        snprintf(err, errlen, "%s: libpng could not start", path);
        return -1;
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        fclose(f);
        snprintf(err, errlen, "%s: libpng write failed", path);
        return -1;
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < h; y++)
        png_write_row(png, (png_const_bytep)(rgb + (size_t)y * w * 3));
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    if (fclose(f) != 0) {
        snprintf(err, errlen, "%s: write failed: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

int rw_show_augment(const rw_dataset *ds, const rw_loader_cfg *cfg, int count,
                    const char *png_path, char *err, size_t errlen)
{
    int S = cfg->out_size;
    if (!ds || ds->n <= 0) {
        snprintf(err, errlen, "show-augment: empty data set");
        return -1;
    }
    if (S < 8 || S > 1024) {
        snprintf(err, errlen, "show-augment: image size %d must be in 8..1024", S);
        return -1;
    }
    if (count < 1 || count > MAX_COUNT) {
        snprintf(err, errlen, "show-augment: count %d must be in 1..%d", count, MAX_COUNT);
        return -1;
    }
    if (count > ds->n)
        count = ds->n;
    int w = 3 * S + 4 * GAP, h = count * S + (count + 1) * GAP;
    size_t view = (size_t)3 * S * S;
    uint8_t *rgb = malloc((size_t)w * h * 3);
    float *v = malloc(view * sizeof(float));
    float *scratch = malloc(RW_AUG_SCRATCH(S) * sizeof(float));
    int32_t *perm = malloc((size_t)ds->n * sizeof(int32_t));
    if (!rgb || !v || !scratch || !perm) {
        snprintf(err, errlen, "show-augment: out of memory");
        free(rgb), free(v), free(scratch), free(perm);
        return -1;
    }
    memset(rgb, GAP_VALUE, (size_t)w * h * 3);
    rw_epoch_perm(cfg->seed, 0, ds->n, perm);
    for (int r = 0; r < count; r++) {
        int i = perm[r];
        int y0 = GAP + r * (S + GAP);
        rw_image_plain(ds, i, S, cfg->mean, cfg->std, v);
        put_tile(rgb, w * 3, GAP, y0, v, S, cfg->mean, cfg->std);
        for (int view_i = 0; view_i < 2; view_i++) {
            rw_aug_view(ds, i, cfg->seed, 0, view_i, cfg->augment, S, cfg->mean, cfg->std, v,
                        scratch);
            put_tile(rgb, w * 3, GAP + (view_i + 1) * (S + GAP), y0, v, S, cfg->mean, cfg->std);
        }
    }
    int rc = write_png(png_path, rgb, w, h, err, errlen);
    free(rgb), free(v), free(scratch), free(perm);
    return rc;
}
