/* The binary versions of CIFAR-10 and CIFAR-100: records of the label
 * byte(s) then 1024 R, 1024 G and 1024 B bytes (rows top to bottom).
 * CIFAR-10 has one label byte, CIFAR-100 two (coarse, then fine). Every
 * file is checked whole before any pixel is trusted. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <omp.h>
#include <zlib.h>

#include "worker/data_internal.h"

#define CIFAR_TRAIN_FILES 5
/* A real file is at most 150 MB (CIFAR-100's train.bin); anything past
 * this is not CIFAR. */
#define CIFAR_FILE_MAX ((long long)1 << 30)
#define CIFAR_IMAGE (3 * RW_CIFAR_SIDE * RW_CIFAR_SIDE)

/* One of the two layouts. */
typedef struct cifar_format {
    const char *name;       /* in messages */
    int head;               /* label bytes before the pixels */
    int use;                /* the label byte that becomes the label */
    int classes[2];         /* each label byte's range, 0 .. classes-1 */
    const char *labels[2];  /* each label byte's name in messages */
} cifar_format;

static const cifar_format k_cifar10 = {"CIFAR-10", 1, 0, {10, 0}, {"label", NULL}};
static const cifar_format k_cifar100_fine = {
    "CIFAR-100", 2, 1, {20, 100}, {"coarse label", "fine label"}};
static const cifar_format k_cifar100_coarse = {
    "CIFAR-100", 2, 0, {20, 100}, {"coarse label", "fine label"}};

static int record_size(const cifar_format *f) { return f->head + CIFAR_IMAGE; }

int rw_data_file_size(const char *path, long long *size, char *err, size_t errlen)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        return -1;
    }
    *size = (long long)st.st_size;
    return 0;
}

static int file_path(char *path, size_t len, const char *dir, const char *name, char *err,
                     size_t errlen)
{
    int n = snprintf(path, len, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= len) {
        snprintf(err, errlen, "%s: path too long", dir);
        return -1;
    }
    return 0;
}

/* Size of one data file in records, with the errors a reader can meet. */
static int check_file(const cifar_format *f, const char *path, long *records, char *err,
                      size_t errlen)
{
    const int rec = record_size(f);
    long long size;
    if (rw_data_file_size(path, &size, err, errlen) != 0)
        return -1;
    if (size == 0) {
        snprintf(err, errlen, "%s: empty file (expected records of %d bytes)", path, rec);
        return -1;
    }
    if (size % rec != 0) {
        snprintf(err, errlen,
                 "%s: size %lld bytes is not a multiple of the %d-byte record "
                 "(truncated or not %s's binary version?)",
                 path, size, rec, f->name);
        return -1;
    }
    if (size > CIFAR_FILE_MAX) {
        snprintf(err, errlen, "%s: size %lld bytes is too large for a %s file", path, size,
                 f->name);
        return -1;
    }
    *records = (long)(size / rec);
    return 0;
}

/* Reads `records` records of path into pixels/labels. */
static int read_file(const cifar_format *f, const char *path, long records, uint8_t *pixels,
                     uint8_t *labels, char *err, size_t errlen)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    const int rsz = record_size(f);
    uint8_t rec[RW_CIFAR100_RECORD];
    for (long r = 0; r < records; r++) {
        if (fread(rec, 1, (size_t)rsz, fp) != (size_t)rsz) {
            snprintf(err, errlen, "%s: read error at record %ld: %s", path, r,
                     ferror(fp) ? strerror(errno) : "file shrank while reading");
            fclose(fp);
            return -1;
        }
        for (int b = 0; b < f->head; b++) {
            if (rec[b] < f->classes[b])
                continue;
            snprintf(err, errlen, "%s: record %ld (byte offset %lld): %s %d is not in 0..%d",
                     path, r, (long long)r * rsz, f->labels[b], rec[b], f->classes[b] - 1);
            fclose(fp);
            return -1;
        }
        labels[r] = rec[f->use];
        memcpy(pixels + (size_t)r * CIFAR_IMAGE, rec + f->head, CIFAR_IMAGE);
    }
    fclose(fp);
    return 0;
}

static int load_files(const cifar_format *f, const char *dir, const char *const *names,
                      int nfiles, rw_dataset *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    char path[4096];
    long records[CIFAR_TRAIN_FILES];
    long long total = 0;
    for (int k = 0; k < nfiles; k++) {
        if (file_path(path, sizeof path, dir, names[k], err, errlen) != 0 ||
            check_file(f, path, &records[k], err, errlen) != 0)
            return -1;
        total += records[k];
    }
    if (total > 0x7fffffffLL / RW_CIFAR100_RECORD) {
        snprintf(err, errlen, "%s: %lld images is more than runaway handles", dir, total);
        return -1;
    }

    uint8_t *pixels = malloc((size_t)total * CIFAR_IMAGE);
    uint8_t *labels = malloc((size_t)total);
    if (!pixels || !labels) {
        free(pixels);
        free(labels);
        snprintf(err, errlen, "%s: out of memory for %lld images", dir, total);
        return -1;
    }
    long long at = 0;
    for (int k = 0; k < nfiles; k++) {
        file_path(path, sizeof path, dir, names[k], err, errlen);
        if (read_file(f, path, records[k], pixels + (size_t)at * CIFAR_IMAGE, labels + at, err,
                      errlen) != 0) {
            free(pixels);
            free(labels);
            return -1;
        }
        at += records[k];
    }
    out->n = out->labeled = (int)total;
    out->side = RW_CIFAR_SIDE;
    out->classes = f->classes[f->use];
    out->pixels = pixels;
    out->labels = labels;
    return 0;
}

int rw_cifar_load(const char *dir, int train, rw_dataset *out, char *err, size_t errlen)
{
    static const char *const tr[CIFAR_TRAIN_FILES] = {
        "data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin",
        "data_batch_5.bin"};
    static const char *const te[1] = {"test_batch.bin"};
    return load_files(&k_cifar10, dir, train ? tr : te, train ? CIFAR_TRAIN_FILES : 1, out, err,
                      errlen);
}

int rw_cifar100_load(const char *dir, int train, int coarse, rw_dataset *out, char *err,
                     size_t errlen)
{
    const char *name = train ? "train.bin" : "test.bin";
    return load_files(coarse ? &k_cifar100_coarse : &k_cifar100_fine, dir, &name, 1, out, err,
                      errlen);
}

enum { DIGEST_PARTS = 32 };

/* Where part k of `bytes` starts (k = DIGEST_PARTS: the end). */
static size_t digest_part(size_t bytes, int k)
{
    return k < DIGEST_PARTS ? bytes / DIGEST_PARTS * (size_t)k : bytes;
}

void rw_dataset_digest(const rw_dataset *ds, int threads, char *out, size_t len)
{
    const size_t bytes = (size_t)ds->n * 3 * (size_t)ds->side * (size_t)ds->side;
    uLong part[DIGEST_PARTS];
    if (threads <= 0)
        threads = omp_get_max_threads();
#pragma omp parallel for num_threads(threads) schedule(static) if (bytes >= ((size_t)64 << 20))
    for (int k = 0; k < DIGEST_PARTS; k++) {
        size_t lo = digest_part(bytes, k);
        part[k] = crc32_z(0L, ds->pixels + lo, digest_part(bytes, k + 1) - lo);
    }
    uLong crc = part[0];
    for (int k = 1; k < DIGEST_PARTS; k++)
        crc = crc32_combine(crc, part[k],
                            (z_off_t)(digest_part(bytes, k + 1) - digest_part(bytes, k)));
    crc = crc32_z(crc, ds->labels, (size_t)ds->n);
    snprintf(out, len, "%d images of %dx%d (%d labeled), crc32 %08lx", ds->n, ds->side, ds->side,
             ds->labeled, (unsigned long)crc);
}

void rw_dataset_free(rw_dataset *ds)
{
    if (!ds)
        return;
    if (ds->map) {
        munmap(ds->map, ds->map_len);
    } else {
        free(ds->pixels);
        free(ds->labels);
    }
    memset(ds, 0, sizeof *ds);
}

rw_dataset rw_dataset_labeled(const rw_dataset *ds)
{
    rw_dataset v = *ds;
    v.n = ds->labeled;
    v.map = NULL; /* a view: the set keeps its memory */
    v.map_len = 0;
    return v;
}

int rw_dataset_noise(int n, uint64_t seed, rw_dataset *out)
{
    size_t bytes = (size_t)n * CIFAR_IMAGE;
    memset(out, 0, sizeof *out);
    out->pixels = malloc(bytes ? bytes : 1);
    out->labels = malloc(n > 0 ? (size_t)n : 1);
    if (!out->pixels || !out->labels) {
        rw_dataset_free(out);
        return -1;
    }
    out->n = out->labeled = n;
    out->side = RW_CIFAR_SIDE;
    out->classes = 10;
    uint64_t z = seed * 6364136223846793005ull + 1442695040888963407ull;
    for (size_t i = 0; i < bytes; i++) {
        z = z * 6364136223846793005ull + 1442695040888963407ull;
        out->pixels[i] = (uint8_t)(z >> 56);
    }
    for (int i = 0; i < n; i++)
        out->labels[i] = (uint8_t)(i % 10);
    return 0;
}
