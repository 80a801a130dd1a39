/* CIFAR-10's binary version: records of 1 label byte then 1024 R, 1024 G and
 * 1024 B bytes (rows top to bottom). Every file is checked whole before any
 * pixel is trusted. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "worker/data.h"

#define CIFAR_TRAIN_FILES 5
/* A real batch file is 30 MB; anything past this is not CIFAR-10. */
#define CIFAR_FILE_MAX ((long long)1 << 30)

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
static int check_file(const char *path, long *records, char *err, size_t errlen)
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
    long long size = (long long)st.st_size;
    if (size == 0) {
        snprintf(err, errlen, "%s: empty file (expected records of %d bytes)", path,
                 RW_CIFAR_RECORD);
        return -1;
    }
    if (size % RW_CIFAR_RECORD != 0) {
        snprintf(err, errlen,
                 "%s: size %lld bytes is not a multiple of the %d-byte record "
                 "(truncated or not CIFAR-10's binary version?)",
                 path, size, RW_CIFAR_RECORD);
        return -1;
    }
    if (size > CIFAR_FILE_MAX) {
        snprintf(err, errlen, "%s: size %lld bytes is too large for a CIFAR-10 batch file", path,
                 size);
        return -1;
    }
    *records = (long)(size / RW_CIFAR_RECORD);
    return 0;
}

/* Reads `records` records of path into pixels/labels. */
static int read_file(const char *path, long records, uint8_t *pixels, uint8_t *labels,
                     char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    uint8_t rec[RW_CIFAR_RECORD];
    const size_t img = RW_CIFAR_RECORD - 1;
    for (long r = 0; r < records; r++) {
        if (fread(rec, 1, sizeof rec, f) != sizeof rec) {
            snprintf(err, errlen, "%s: read error at record %ld: %s", path, r,
                     ferror(f) ? strerror(errno) : "file shrank while reading");
            fclose(f);
            return -1;
        }
        if (rec[0] > 9) {
            snprintf(err, errlen, "%s: record %ld (byte offset %lld): label %d is not in 0..9",
                     path, r, (long long)r * RW_CIFAR_RECORD, rec[0]);
            fclose(f);
            return -1;
        }
        labels[r] = rec[0];
        memcpy(pixels + (size_t)r * img, rec + 1, img);
    }
    fclose(f);
    return 0;
}

int rw_cifar_load(const char *dir, int train, rw_dataset *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    char names[CIFAR_TRAIN_FILES][32];
    int nfiles = train ? CIFAR_TRAIN_FILES : 1;
    for (int k = 0; k < nfiles; k++)
        snprintf(names[k], sizeof names[k], train ? "data_batch_%d.bin" : "test_batch.bin",
                 k + 1);

    char path[4096];
    long records[CIFAR_TRAIN_FILES];
    long long total = 0;
    for (int k = 0; k < nfiles; k++) {
        if (file_path(path, sizeof path, dir, names[k], err, errlen) != 0 ||
            check_file(path, &records[k], err, errlen) != 0)
            return -1;
        total += records[k];
    }
    if (total > 0x7fffffffLL / RW_CIFAR_RECORD) {
        snprintf(err, errlen, "%s: %lld images is more than runaway handles", dir, total);
        return -1;
    }

    const size_t img = RW_CIFAR_RECORD - 1;
    uint8_t *pixels = malloc((size_t)total * img);
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
        if (read_file(path, records[k], pixels + (size_t)at * img, labels + at, err, errlen) !=
            0) {
            free(pixels);
            free(labels);
            return -1;
        }
        at += records[k];
    }
    out->n = (int)total;
    out->pixels = pixels;
    out->labels = labels;
    return 0;
}

void rw_dataset_free(rw_dataset *ds)
{
    if (!ds)
        return;
    free(ds->pixels);
    free(ds->labels);
    ds->pixels = NULL;
    ds->labels = NULL;
    ds->n = 0;
}

int rw_dataset_noise(int n, uint64_t seed, rw_dataset *out)
{
    size_t bytes = (size_t)n * 3 * RW_CIFAR_SIDE * RW_CIFAR_SIDE;
    out->n = n;
    out->pixels = malloc(bytes ? bytes : 1);
    out->labels = malloc(n > 0 ? (size_t)n : 1);
    if (!out->pixels || !out->labels) {
        rw_dataset_free(out);
        return -1;
    }
    uint64_t z = seed * 6364136223846793005ull + 1442695040888963407ull;
    for (size_t i = 0; i < bytes; i++) {
        z = z * 6364136223846793005ull + 1442695040888963407ull;
        out->pixels[i] = (uint8_t)(z >> 56);
    }
    for (int i = 0; i < n; i++)
        out->labels[i] = (uint8_t)(i % 10);
    return 0;
}
