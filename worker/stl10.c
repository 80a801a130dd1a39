/* STL-10's binary version (stl10_binary/): X files of 3x96x96 uint8 images,
 * each channel stored column by column (Fortran order, as the set's MATLAB
 * origin wrote it), y files of one label byte 1..10 per image, and the
 * 100000 images of unlabeled_X.bin, which only train the encoder. Rows are
 * transposed on reading so the rest of runaway sees CIFAR's layout. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/data_internal.h"

#define STL_PLANE (RW_STL10_SIDE * RW_STL10_SIDE)
#define STL_IMAGE (3 * STL_PLANE)
/* unlabeled_X.bin is 2.8 GB; a file far past it is not STL-10 */
#define STL_FILE_MAX ((long long)8 << 30)

/* Images in an X file. */
static int count_images(const char *path, long *n, char *err, size_t errlen)
{
    long long size;
    if (rw_data_file_size(path, &size, err, errlen) != 0)
        return -1;
    if (size == 0 || size % STL_IMAGE != 0) {
        snprintf(err, errlen,
                 "%s: size %lld bytes is not a positive multiple of the %d-byte image "
                 "(truncated or not STL-10's binary version?)",
                 path, size, STL_IMAGE);
        return -1;
    }
    if (size > STL_FILE_MAX) {
        snprintf(err, errlen, "%s: size %lld bytes is too large for an STL-10 file", path, size);
        return -1;
    }
    *n = (long)(size / STL_IMAGE);
    return 0;
}

static int read_images(const char *path, long n, uint8_t *pixels, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    uint8_t *buf = malloc(STL_IMAGE);
    if (!buf) {
        snprintf(err, errlen, "%s: out of memory", path);
        fclose(f);
        return -1;
    }
    for (long i = 0; i < n; i++) {
        if (fread(buf, 1, STL_IMAGE, f) != STL_IMAGE) {
            snprintf(err, errlen, "%s: read error at image %ld: %s", path, i,
                     ferror(f) ? strerror(errno) : "file shrank while reading");
            fclose(f);
            free(buf);
            return -1;
        }
        uint8_t *img = pixels + (size_t)i * STL_IMAGE;
        for (int c = 0; c < 3; c++)
            for (int col = 0; col < RW_STL10_SIDE; col++)
                for (int row = 0; row < RW_STL10_SIDE; row++)
                    img[c * STL_PLANE + row * RW_STL10_SIDE + col] =
                        buf[c * STL_PLANE + col * RW_STL10_SIDE + row];
    }
    fclose(f);
    free(buf);
    return 0;
}

/* n labels 1..10 from path, stored 0..9. */
static int read_labels(const char *path, long n, const char *xpath, uint8_t *labels, char *err,
                       size_t errlen)
{
    long long size;
    if (rw_data_file_size(path, &size, err, errlen) != 0)
        return -1;
    if (size != n) {
        snprintf(err, errlen, "%s: %lld labels for the %ld images of %s", path, size, n, xpath);
        return -1;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    size_t got = fread(labels, 1, (size_t)n, f);
    int bad = ferror(f);
    fclose(f);
    if (got != (size_t)n) {
        snprintf(err, errlen, "%s: read error: %s", path,
                 bad ? strerror(errno) : "file shrank while reading");
        return -1;
    }
    for (long i = 0; i < n; i++) {
        if (labels[i] < 1 || labels[i] > 10) {
            snprintf(err, errlen, "%s: image %ld: label %d is not in 1..10", path, i, labels[i]);
            return -1;
        }
        labels[i]--;
    }
    return 0;
}

int rw_stl10_load(const char *dir, int train, int unlabeled, rw_dataset *out, char *err,
                  size_t errlen)
{
    memset(out, 0, sizeof *out);
    unlabeled = train && unlabeled;
    char xpath[4096], ypath[4096], upath[4096];
    const char *split = train ? "train" : "test";
    if (snprintf(xpath, sizeof xpath, "%s/%s_X.bin", dir, split) >= (int)sizeof xpath ||
        snprintf(ypath, sizeof ypath, "%s/%s_y.bin", dir, split) >= (int)sizeof ypath ||
        snprintf(upath, sizeof upath, "%s/unlabeled_X.bin", dir) >= (int)sizeof upath) {
        snprintf(err, errlen, "%s: path too long", dir);
        return -1;
    }
    long nl = 0, nu = 0;
    if (count_images(xpath, &nl, err, errlen) != 0)
        return -1;
    if (unlabeled && count_images(upath, &nu, err, errlen) != 0) {
        size_t k = strlen(err);
        snprintf(err + k, errlen > k ? errlen - k : 0,
                 " (data.unlabeled: false trains on the labeled images only)");
        return -1;
    }
    if (nl + nu > 0x7fffffffL) {
        snprintf(err, errlen, "%s: %ld images is more than runaway handles", dir, nl + nu);
        return -1;
    }
    size_t n = (size_t)(nl + nu);
    uint8_t *pixels = malloc(n * STL_IMAGE);
    uint8_t *labels = malloc(n);
    if (!pixels || !labels) {
        snprintf(err, errlen, "%s: out of memory for %zu images of 96x96 (%.1f GB)", dir, n,
                 n * (double)STL_IMAGE / 1e9);
        goto fail;
    }
    if (read_labels(ypath, nl, xpath, labels, err, errlen) != 0 ||
        read_images(xpath, nl, pixels, err, errlen) != 0 ||
        (nu && read_images(upath, nu, pixels + (size_t)nl * STL_IMAGE, err, errlen) != 0))
        goto fail;
    memset(labels + nl, RW_NO_LABEL, (size_t)nu);
    out->n = (int)n;
    out->labeled = (int)nl;
    out->side = RW_STL10_SIDE;
    out->classes = 10;
    out->pixels = pixels;
    out->labels = labels;
    return 0;
fail:
    free(pixels);
    free(labels);
    return -1;
}
