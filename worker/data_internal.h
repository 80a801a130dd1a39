/* Private to the data module: the CPU view renderer, the epoch order and
 * the files' size check, shared by the loader, show-augment, the readers
 * and the tests. */
#ifndef RUNAWAY_WORKER_DATA_INTERNAL_H
#define RUNAWAY_WORKER_DATA_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "kernels/augment.h"
#include "worker/data.h"

/* Floats of scratch rw_aug_render needs for an S x S view. */
#define RW_AUG_SCRATCH(S) ((size_t)3 * (S) * (S))

/* Renders the view described by p of a uint8 (3, H, W) source into
 * out (3, S, S), normalized with mean/std. scratch: RW_AUG_SCRATCH(S) floats. */
void rw_aug_render(const uint8_t *src, int W, int H, const rw_aug_params *p, int S,
                   const float mean[3], const float std[3], float *out, float *scratch);

/* View `view` of sample i of ds in `epoch` under `augment`: the loader's unit
 * of work. scratch: RW_AUG_SCRATCH(S) floats. */
void rw_aug_view(const rw_dataset *ds, int i, uint64_t seed, int epoch, int view,
                 rw_augment augment, int S, const float mean[3], const float std[3], float *out,
                 float *scratch);

/* The size of the regular file at path, for the readers of the data sets'
 * files; -1 with a message naming the path (missing, not a file). */
int rw_data_file_size(const char *path, long long *size, char *err, size_t errlen);

/* Decodes a JPEG or PNG file held in buf (recognised by its signature,
 * whatever its name) to interleaved RGB (*h, *w, 3) in *rgb (malloc'd):
 * grey, palette, 16-bit and CMYK converted, alpha dropped, EXIF
 * orientation ignored. A JPEG may come out shrunk by a power of two, no
 * further than a shorter side of min_side. 0, or -1 with why (no path). */
int rw_image_decode(const uint8_t *buf, size_t len, int min_side, uint8_t **rgb, int *w, int *h,
                    char *why, size_t whylen);

/* The shorter side of rgb (h, w, 3) resized to side (antialiased
 * bilinear), its centre side x side written to out (3, side, side) planes.
 * 0, or -1 out of memory. */
int rw_image_fit(const uint8_t *rgb, int w, int h, int side, uint8_t *out);

/* An image folder's listing (worker/imagefolder_scan.c). */
typedef struct rw_if_file {
    char *rel; /* relative to the folder: "train/cat/001.jpg" */
    long long size, mtime_ns;
    uint8_t label; /* the class's index, RW_NO_LABEL in unlabeled/ */
} rw_if_file;

typedef struct rw_if_list {
    rw_if_file *files; /* class by class, each sorted by path; unlabeled/ last */
    int n, cap;
    int labeled;        /* files [0, labeled) are in class folders */
    int classes;        /* train/'s class folders, by strcmp of their names */
    char **class_names; /* (classes) */
    long ignored;       /* entries not images (by extension), left alone */
} rw_if_list;

/* The images of dir's train/ (train != 0; then unlabeled/ too when asked
 * and present) or val/. Errors name the folder: train/ or val/ missing or
 * without class folders, an empty class folder, a val/ class that train/
 * lacks, more than RW_CLASSES_MAX classes. 0 or -1. */
int rw_if_scan(const char *dir, int train, int unlabeled, rw_if_list *l, char *err,
               size_t errlen);
void rw_if_list_free(rw_if_list *l);
/* FNV-1a of every (path, size, mtime, label) and side: a cache's key. */
uint64_t rw_if_list_digest(const rw_if_list *l, int side);

/* Image `index` of a split (0 train, 1 test, 2 unlabeled) of the synthetic
 * set, class `label`: (3, 32, 32) planes (worker/synth.c). */
void rw_synth_image(uint64_t seed, uint32_t split, uint32_t index, int label, uint8_t *img);
/* The synthetic writers' image counts checked: min <= train, test <=
 * 10000000 and 0 <= unlabeled <= 10000000. 0, or -1 with the error naming
 * dir, what is written and the counts. */
int rw_synth_check_counts(const char *dir, const char *what, int min, int n_train, int n_test,
                          int n_unlabeled, char *err, size_t errlen);

/* Image files (worker/synth_imagefolder.c): pix (h, w, components)
 * interleaved; a JPEG of 1 (grey), 3 (RGB) or 4 (CMYK, Adobe's inverted
 * inks) components, a PNG of 1 or 3. 0, or -1 naming the file. */
int rw_write_jpeg(const char *path, const uint8_t *pix, int w, int h, int components,
                  int quality, char *err, size_t errlen);
int rw_write_png(const char *path, const uint8_t *pix, int w, int h, int components, char *err,
                 size_t errlen);

/* The epoch's sample order: a Fisher-Yates shuffle of 0..n-1 driven by
 * (seed, epoch) on the permutation stream. */
void rw_epoch_perm(uint64_t seed, int epoch, int n, int32_t *perm);

/* Seconds on the monotonic clock, for rates and progress lines. */
static inline double rw_mono_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

#endif
