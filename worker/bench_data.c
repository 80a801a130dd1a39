/* runaway-bench --data (bench_data.h). The image-folder path must feed a
 * step no slower than the CIFAR path at the same size: both hand the loader
 * a uint8 set of one shape, one from the heap, the other mapped from the
 * decoded cache, so this table times the loader on each, same images, same
 * augmentations. */
#define _XOPEN_SOURCE 700 /* nftw */
#include <ftw.h>
#include <stdio.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "worker/bench_data.h"
#include "worker/data.h"

#define BATCH 128
#define IMAGES 1024 /* synthetic files written once: 8 batches an epoch */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Pairs of views a second over `batches` batches (epochs wrap), or -1. */
static double loader_rate(const rw_dataset *ds, int size, int threads, int batches)
{
    rw_loader_cfg lc = {.ds = ds, .batch = BATCH, .out_size = size, .augment = RW_AUG_BYOL,
                        .mean = {0.5f, 0.5f, 0.5f}, .std = {0.25f, 0.25f, 0.25f}, .seed = 1,
                        .threads = threads, .shard_world = 1};
    char err[256];
    rw_loader *ld = rw_loader_create(&lc, err, sizeof err);
    size_t img = (size_t)BATCH * 3 * size * size;
    float *x1 = malloc(img * sizeof(float)), *x2 = malloc(img * sizeof(float));
    int32_t *lab = malloc(BATCH * sizeof(int32_t));
    double rate = -1;
    if (!ld || !x1 || !x2 || !lab) {
        fprintf(stderr, "loader at %dx%d: %s\n", size, size, ld ? "out of memory" : err);
        goto out;
    }
    int epoch = 0;
    /* one batch first: the threads started, the pages touched */
    if (rw_loader_next(ld, x1, x2, lab) != 0)
        goto out;
    double t0 = now_s();
    for (int b = 0; b < batches;) {
        if (rw_loader_next(ld, x1, x2, lab) == 1) {
            rw_loader_seek(ld, ++epoch, 0);
            continue;
        }
        b++;
    }
    rate = (double)batches * BATCH / (now_s() - t0);
out:
    if (ld)
        rw_loader_free(ld);
    free(x1);
    free(x2);
    free(lab);
    return rate;
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *f)
{
    (void)st, (void)flag, (void)f;
    return remove(path);
}

int bench_data_table(int threads, int batches)
{
    int nthreads = threads > 0 ? threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    char dir[] = "/tmp/runaway-bench-data.XXXXXX", cache[64], err[512];
    if (!mkdtemp(dir)) {
        perror("runaway-bench: a temporary folder");
        return 1;
    }
    snprintf(cache, sizeof cache, "%s/cache", dir);
    int failed = 0;
    if (rw_synth_write_imagefolder(dir, IMAGES, 16, 0, 7, err, sizeof err) != 0 ||
        rw_mkdir_p(cache, err, sizeof err) != 0) {
        fprintf(stderr, "runaway-bench: %s\n", err);
        failed = 1;
    }
    printf("runaway-bench --data: the CPU loader's BYOL views, %d images (synthetic PNG and "
           "JPEG files, 64x64), batch %d, %d batches, loader threads: %d\n",
           IMAGES, BATCH, batches, nthreads);
    printf("%-30s %6s %14s %14s\n", "source", "size", "decode img/s", "pairs/s");
    static const int sizes[] = {32, 96};
    for (size_t k = 0; !failed && k < sizeof sizes / sizeof *sizes; k++) {
        int S = sizes[k];
        rw_imagefolder_opts o = {.side = S, .threads = nthreads, .cache_dir = cache};
        rw_dataset mapped;
        double t0 = now_s();
        if (rw_imagefolder_load(dir, 1, &o, &mapped, err, sizeof err) != 0) {
            fprintf(stderr, "runaway-bench: %s\n", err);
            failed = 1;
            break;
        }
        double decode = mapped.n / (now_s() - t0);
        /* the same pixels in the heap, as a CIFAR or STL-10 set is held */
        size_t bytes = (size_t)mapped.n * 3 * S * S;
        rw_dataset heap = {.n = mapped.n, .side = S, .classes = mapped.classes,
                           .labeled = mapped.labeled, .pixels = malloc(bytes),
                           .labels = malloc((size_t)mapped.n)};
        if (!heap.pixels || !heap.labels) {
            fprintf(stderr, "runaway-bench: out of memory\n");
            free(heap.pixels);
            free(heap.labels);
            rw_dataset_free(&mapped);
            failed = 1;
            break;
        }
        memcpy(heap.pixels, mapped.pixels, bytes);
        memcpy(heap.labels, mapped.labels, (size_t)mapped.n);
        double in_memory = loader_rate(&heap, S, nthreads, batches);
        double folder = loader_rate(&mapped, S, nthreads, batches);
        printf("%-30s %6d %14s %14.0f\n", "in memory (cifar, stl10)", S, "", in_memory);
        printf("%-30s %6d %14.0f %14.0f\n", "imagefolder cache (mapped)", S, decode, folder);
        fflush(stdout);
        failed |= in_memory < 0 || folder < 0;
        rw_dataset_free(&heap);
        rw_dataset_free(&mapped);
    }
    if (nftw(dir, remove_one, 16, FTW_DEPTH | FTW_PHYS) != 0)
        fprintf(stderr, "runaway-bench: %s left behind\n", dir);
    return failed;
}

static void print_notice(void *ud, const char *line)
{
    (void)ud;
    printf("  %s\n", line);
    fflush(stdout);
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

int bench_decode(const char *dir, int size, int threads)
{
    int nthreads = threads > 0 ? threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    rw_imagefolder_opts o = {.side = size, .threads = nthreads, .notice = print_notice};
    rw_dataset ds;
    char err[1024];
    printf("runaway-bench --decode %s: train/ to %dx%d in memory, %d threads\n", dir, size, size,
           nthreads);
    double t0 = now_s(), c0 = cpu_s();
    if (rw_imagefolder_load(dir, 1, &o, &ds, err, sizeof err) != 0) {
        fprintf(stderr, "runaway-bench: %s\n", err);
        return 1;
    }
    double wall = now_s() - t0, cpu = cpu_s() - c0;
    printf("decode: %d images in %.2f s: %.0f images/s, %.0f per CPU-second (%.1f CPU-s)\n",
           ds.n, wall, ds.n / wall, ds.n / cpu, cpu);
    rw_dataset_free(&ds);
    return 0;
}
