/* One image file to a square of uint8 planes: JPEG (libjpeg-turbo) or PNG
 * (libpng) decoded to RGB, grey and CMYK converted, the shorter side
 * resized to `side` with an antialiased bilinear filter (PIL's and
 * torchvision's antialias=True: the triangle widened by the scale when
 * shrinking, so every source pixel counts), then the centre side x side.
 * EXIF orientation is ignored: the pixels are used as stored. */
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
/* after stdio.h: jpeglib.h uses FILE and size_t */
#include <jpeglib.h>
#include <jerror.h>

#include "worker/data_internal.h"

/* ---- JPEG ---- */

typedef struct jpeg_fail {
    struct jpeg_error_mgr mgr;
    jmp_buf jump;
    char why[JMSG_LENGTH_MAX];
} jpeg_fail;

static void jpeg_error_exit(j_common_ptr ci)
{
    jpeg_fail *f = (jpeg_fail *)ci->err;
    ci->err->format_message(ci, f->why);
    longjmp(f->jump, 1);
}

/* libjpeg only warns of a file cut short and pads it with grey: that is a
 * damaged image, not one to train on. Other warnings (stray bytes between
 * markers) leave the picture whole. */
static void jpeg_warning(j_common_ptr ci, int level)
{
    if (level < 0 && ci->err->msg_code == JWRN_JPEG_EOF) {
        jpeg_fail *f = (jpeg_fail *)ci->err;
        ci->err->format_message(ci, f->why);
        longjmp(f->jump, 1);
    }
}

/* The libjpeg state lives in its own frame, so that the locals longjmp
 * crosses are only the ones declared volatile. */
static int decode_jpeg(const uint8_t *buf, size_t len, int min_side, uint8_t **out, int *w,
                       int *h, char *why, size_t whylen)
{
    struct jpeg_decompress_struct ci;
    jpeg_fail fail;
    uint8_t *volatile rgb = NULL;
    uint8_t *volatile row = NULL;
    ci.err = jpeg_std_error(&fail.mgr);
    fail.mgr.error_exit = jpeg_error_exit;
    fail.mgr.emit_message = jpeg_warning;
    fail.why[0] = 0;
    if (setjmp(fail.jump)) {
        snprintf(why, whylen, "not a readable JPEG: %s", fail.why);
        jpeg_destroy_decompress(&ci);
        free(rgb);
        free(row);
        return -1;
    }
    jpeg_create_decompress(&ci);
    jpeg_mem_src(&ci, buf, (unsigned long)len);
    jpeg_read_header(&ci, TRUE);
    int cmyk = ci.jpeg_color_space == JCS_CMYK || ci.jpeg_color_space == JCS_YCCK;
    ci.out_color_space = cmyk ? JCS_CMYK : JCS_RGB; /* grey to RGB: libjpeg-turbo's */
    /* Shrinking in the DCT is nearly free: the largest 1/2^k that keeps
     * the shorter side at least min_side. */
    int shorter = ci.image_width < ci.image_height ? (int)ci.image_width : (int)ci.image_height;
    ci.scale_num = 1;
    ci.scale_denom = 1;
    while (ci.scale_denom < 8 && (shorter + (int)ci.scale_denom * 2 - 1) /
                                         ((int)ci.scale_denom * 2) >= min_side)
        ci.scale_denom *= 2;
    /* chroma upsampled by replication, not interpolation: the resize
     * that follows filters it anyway, and it is a third of the time */
    ci.do_fancy_upsampling = FALSE;
    jpeg_start_decompress(&ci);
    int W = (int)ci.output_width, H = (int)ci.output_height, C = ci.output_components;
    rgb = malloc((size_t)W * H * 3);
    row = malloc((size_t)W * C);
    if (!rgb || !row) {
        snprintf(fail.why, sizeof fail.why, "out of memory for %dx%d", W, H);
        longjmp(fail.jump, 1);
    }
    /* Adobe's CMYK JPEGs (nearly all of them) store the inks inverted */
    int inverted = ci.saw_Adobe_marker;
    while (ci.output_scanline < ci.output_height) {
        uint8_t *dst = rgb + (size_t)ci.output_scanline * W * 3;
        JSAMPROW r = cmyk ? row : dst;
        jpeg_read_scanlines(&ci, &r, 1);
        if (!cmyk)
            continue;
        for (int x = 0; x < W; x++) {
            const uint8_t *p = row + 4 * x;
            int k = inverted ? p[3] : 255 - p[3];
            for (int c = 0; c < 3; c++) {
                int ink = inverted ? p[c] : 255 - p[c];
                dst[3 * x + c] = (uint8_t)((ink * k + 127) / 255);
            }
        }
    }
    jpeg_finish_decompress(&ci);
    jpeg_destroy_decompress(&ci);
    free(row);
    *out = rgb;
    *w = W;
    *h = H;
    return 0;
}

/* ---- PNG ---- */

static int decode_png(const uint8_t *buf, size_t len, uint8_t **out, int *w, int *h, char *why,
                      size_t whylen)
{
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_memory(&img, buf, len)) {
        snprintf(why, whylen, "not a readable PNG: %s", img.message);
        return -1;
    }
    if (img.width > 1u << 15 || img.height > 1u << 15) {
        snprintf(why, whylen, "PNG of %ux%u is larger than 32768 a side", img.width,
                 img.height);
        png_image_free(&img);
        return -1;
    }
    /* RGBA then the alpha dropped, as PIL's convert('RGB') does: grey,
     * palette and 16-bit images all arrive as 8-bit sRGB */
    img.format = PNG_FORMAT_RGBA;
    size_t n = (size_t)img.width * img.height;
    uint8_t *rgba = malloc(n * 4);
    if (!rgba) {
        snprintf(why, whylen, "out of memory for %ux%u", img.width, img.height);
        png_image_free(&img);
        return -1;
    }
    if (!png_image_finish_read(&img, NULL, rgba, 0, NULL)) {
        snprintf(why, whylen, "not a readable PNG: %s", img.message);
        png_image_free(&img);
        free(rgba);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        memmove(rgba + 3 * i, rgba + 4 * i, 3);
    *out = rgba; /* the first 3n bytes */
    *w = (int)img.width;
    *h = (int)img.height;
    return 0;
}

int rw_image_decode(const uint8_t *buf, size_t len, int min_side, uint8_t **rgb, int *w, int *h,
                    char *why, size_t whylen)
{
    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    *rgb = NULL;
    if (len >= 3 && buf[0] == 0xff && buf[1] == 0xd8 && buf[2] == 0xff)
        return decode_jpeg(buf, len, min_side, rgb, w, h, why, whylen);
    if (len >= 8 && memcmp(buf, png_sig, 8) == 0)
        return decode_png(buf, len, rgb, w, h, why, whylen);
    snprintf(why, whylen, "neither a JPEG nor a PNG (%s)",
             len == 0 ? "empty file" : "its first bytes are no image signature");
    return -1;
}

/* ---- resize and crop ---- */

/* The taps of one output coordinate along an axis. */
typedef struct taps {
    int first, count;
    float *w; /* count weights, summing to 1 */
} taps;

/* Output pixels off .. off+n-1 of an axis of `src` pixels resized to
 * `dst`: triangle filter of radius max(1, src/dst) source pixels. */
static taps *axis_taps(int src, int dst, int off, int n, float **store)
{
    double scale = (double)src / dst, radius = scale > 1.0 ? scale : 1.0;
    int maxk = (int)ceil(radius) * 2 + 1;
    taps *t = malloc((size_t)n * sizeof *t);
    float *w = malloc((size_t)n * maxk * sizeof *w);
    if (!t || !w) {
        free(t);
        free(w);
        return NULL;
    }
    for (int o = 0; o < n; o++) {
        double centre = (off + o + 0.5) * scale;
        int lo = (int)floor(centre - radius), hi = (int)ceil(centre + radius);
        if (lo < 0)
            lo = 0;
        if (hi > src)
            hi = src;
        double sum = 0.0;
        int k = 0;
        float *wo = w + (size_t)o * maxk;
        for (int j = lo; j < hi && k < maxk; j++) {
            double d = fabs((j + 0.5 - centre) / radius);
            double v = d < 1.0 ? 1.0 - d : 0.0;
            wo[k++] = (float)v;
            sum += v;
        }
        /* never empty: the centre's own pixel is within radius >= 1 */
        for (int i = 0; i < k; i++)
            wo[i] = sum > 0 ? (float)(wo[i] / sum) : 1.0f / k;
        t[o] = (taps){lo, k, wo};
    }
    *store = w;
    return t;
}

static uint8_t to_u8(float v)
{
    v += 0.5f;
    return v <= 0.0f ? 0 : v >= 255.0f ? 255 : (uint8_t)v;
}

int rw_image_fit(const uint8_t *rgb, int w, int h, int side, uint8_t *out)
{
    /* the shorter side becomes side; the longer keeps the aspect ratio */
    int rw = side, rh = side;
    if (w < h)
        rh = (int)lround((double)h * side / w);
    else
        rw = (int)lround((double)w * side / h);
    if (rw < side)
        rw = side;
    if (rh < side)
        rh = side;
    int ox = (rw - side) / 2, oy = (rh - side) / 2;
    float *xs = NULL, *ys = NULL;
    taps *tx = axis_taps(w, rw, ox, side, &xs), *ty = axis_taps(h, rh, oy, side, &ys);
    float *row = malloc((size_t)w * 3 * sizeof *row);
    if (!tx || !ty || !row) {
        free(tx);
        free(ty);
        free(xs);
        free(ys);
        free(row);
        return -1;
    }
    size_t plane = (size_t)side * side;
    /* only the source columns the crop reaches */
    int x0 = tx[0].first, x1 = tx[side - 1].first + tx[side - 1].count;
    size_t W3 = (size_t)(x1 - x0) * 3;
    for (int x = 0; x < side; x++)
        tx[x].first -= x0;
    for (int y = 0; y < side; y++) {
        /* vertically first, whole source rows at a time (contiguous: the
         * compiler vectorizes it), then horizontally into the planes */
        const taps *t = &ty[y];
        for (size_t i = 0; i < W3; i++)
            row[i] = 0.0f;
        for (int k = 0; k < t->count; k++) {
            const uint8_t *src = rgb + ((size_t)(t->first + k) * w + x0) * 3;
            float wk = t->w[k];
            for (size_t i = 0; i < W3; i++)
                row[i] += wk * src[i];
        }
        uint8_t *o = out + (size_t)y * side;
        for (int x = 0; x < side; x++) {
            const taps *u = &tx[x];
            const float *p = row + (size_t)u->first * 3;
            float r = 0, g = 0, b = 0;
            for (int k = 0; k < u->count; k++, p += 3) {
                r += u->w[k] * p[0];
                g += u->w[k] * p[1];
                b += u->w[k] * p[2];
            }
            o[x] = to_u8(r);
            o[plane + x] = to_u8(g);
            o[2 * plane + x] = to_u8(b);
        }
    }
    free(row);
    free(tx);
    free(ty);
    free(xs);
    free(ys);
    return 0;
}
