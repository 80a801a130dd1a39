/* The synthetic set written as an image folder of PNG and JPEG files, so
 * that data.kind imagefolder is exercised end to end wherever no photo
 * collection is at hand; and the writers of single image files that it
 * and the tests use (libjpeg-turbo, libpng). */
#include <errno.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
/* after stdio.h: jpeglib.h uses FILE and size_t */
#include <jpeglib.h>
#include <unistd.h>

#include "worker/data_internal.h"

#define SMALL RW_CIFAR_SIDE
#define BIG (2 * RW_CIFAR_SIDE) /* the files' side: the cache resizes them */

typedef struct jpeg_fail {
    struct jpeg_error_mgr mgr;
    jmp_buf jump;
} jpeg_fail;

static void jpeg_error_exit(j_common_ptr ci) { longjmp(((jpeg_fail *)ci->err)->jump, 1); }

int rw_write_jpeg(const char *path, const uint8_t *pix, int w, int h, int components,
                  int quality, char *err, size_t errlen)
{
    FILE *volatile f = fopen(path, "wb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot create: %s", path, strerror(errno));
        return -1;
    }
    struct jpeg_compress_struct ci;
    jpeg_fail fail;
    ci.err = jpeg_std_error(&fail.mgr);
    fail.mgr.error_exit = jpeg_error_exit;
    if (setjmp(fail.jump)) {
        char msg[JMSG_LENGTH_MAX];
        ci.err->format_message((j_common_ptr)&ci, msg);
        jpeg_destroy_compress(&ci);
        fclose(f);
        unlink(path);
        snprintf(err, errlen, "%s: libjpeg: %s", path, msg);
        return -1;
    }
    jpeg_create_compress(&ci);
    jpeg_stdio_dest(&ci, f);
    ci.image_width = (JDIMENSION)w;
    ci.image_height = (JDIMENSION)h;
    ci.input_components = components;
    ci.in_color_space = components == 1 ? JCS_GRAYSCALE : components == 4 ? JCS_CMYK : JCS_RGB;
    jpeg_set_defaults(&ci);
    if (components == 4)
        ci.write_Adobe_marker = TRUE; /* inverted inks, as Photoshop writes them */
    jpeg_set_quality(&ci, quality, TRUE);
    jpeg_start_compress(&ci, TRUE);
    while (ci.next_scanline < ci.image_height) {
        JSAMPROW row = (JSAMPROW)(pix + (size_t)ci.next_scanline * w * components);
        jpeg_write_scanlines(&ci, &row, 1);
    }
    jpeg_finish_compress(&ci);
    jpeg_destroy_compress(&ci);
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) {
        snprintf(err, errlen, "%s: write failed: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

int rw_write_png(const char *path, const uint8_t *pix, int w, int h, int components, char *err,
                 size_t errlen)
{
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    img.width = (png_uint_32)w;
    img.height = (png_uint_32)h;
    img.format = components == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
    if (!png_image_write_to_file(&img, path, 0, pix, 0, NULL)) {
        snprintf(err, errlen, "%s: libpng: %s", path, img.message);
        return -1;
    }
    return 0;
}

/* Image k of a split into dir/sub/NAME.{png,jpg}: 2x nearest, interleaved. */
static int write_one(const char *dir, const char *sub, uint64_t seed, uint32_t split, int k,
                     int label, uint8_t *planes, uint8_t *rgb, char *err, size_t errlen)
{
    rw_synth_image(seed, split, (uint32_t)k, label, planes);
    for (int y = 0; y < BIG; y++)
        for (int x = 0; x < BIG; x++)
            for (int c = 0; c < 3; c++)
                rgb[((size_t)y * BIG + x) * 3 + c] =
                    planes[c * SMALL * SMALL + (y / 2) * SMALL + x / 2];
    char path[4096];
    int png = k % 2 == 0;
    if (snprintf(path, sizeof path, "%s/%s/%06d.%s", dir, sub, k, png ? "png" : "jpg") >=
        (int)sizeof path) {
        snprintf(err, errlen, "%s: path too long", dir);
        return -1;
    }
    return png ? rw_write_png(path, rgb, BIG, BIG, 3, err, errlen)
               : rw_write_jpeg(path, rgb, BIG, BIG, 3, 92, err, errlen);
}

static int write_split(const char *dir, const char *name, uint64_t seed, uint32_t split, int n,
                       int labeled, char *err, size_t errlen)
{
    uint8_t planes[3 * SMALL * SMALL], rgb[3 * BIG * BIG];
    char sub[64], path[4200];
    int classes = labeled ? 10 : 1;
    for (int c = 0; c < classes; c++) {
        if (labeled)
            snprintf(sub, sizeof sub, "%s/class_%02d", name, c);
        else
            snprintf(sub, sizeof sub, "%s", name);
        snprintf(path, sizeof path, "%s/%s", dir, sub);
        if (rw_mkdir_p(path, err, errlen) != 0)
            return -1;
    }
    for (int k = 0; k < n; k++) {
        int c = k % 10;
        if (labeled)
            snprintf(sub, sizeof sub, "%s/class_%02d", name, c);
        if (write_one(dir, sub, seed, split, k, c, planes, rgb, err, errlen) != 0)
            return -1;
    }
    return 0;
}

int rw_synth_write_imagefolder(const char *dir, int n_train, int n_test, int n_unlabeled,
                               uint64_t seed, char *err, size_t errlen)
{
    /* every class folder gets an image: an empty one is an error */
    if (rw_synth_check_counts(dir, "a synthetic image folder", 10, n_train, n_test, n_unlabeled,
                              err, errlen) != 0)
        return -1;
    if (write_split(dir, "train", seed, 0, n_train, 1, err, errlen) != 0 ||
        write_split(dir, "val", seed, 1, n_test, 1, err, errlen) != 0)
        return -1;
    return n_unlabeled ? write_split(dir, "unlabeled", seed, 2, n_unlabeled, 0, err, errlen) : 0;
}
