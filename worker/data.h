/* Data: the binary formats of CIFAR-10, CIFAR-100 and STL-10 (read; the
 * synthetic set is written in any of them), BYOL's augmentations on the
 * CPU, and the background batch loader.
 * The per-sample and per-pixel augmentation math is in kernels/augment.h,
 * shared with the CUDA backend. */
#ifndef RUNAWAY_WORKER_DATA_H
#define RUNAWAY_WORKER_DATA_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/spec.h"

#define RW_CIFAR_SIDE 32
#define RW_CIFAR_RECORD 3073    /* 1 label byte + 3*32*32 pixel bytes (R, G, B planes) */
#define RW_CIFAR100_RECORD 3074 /* coarse label, fine label, 3*32*32 pixel bytes */
#define RW_STL10_SIDE 96
#define RW_NO_LABEL 255         /* the label of an image of an unlabeled split */
#define RW_CLASSES_MAX 100

typedef struct rw_dataset {
    int n;           /* number of images */
    int side;        /* images are side x side (32: CIFAR, 96: STL-10) */
    int classes;     /* labels are 0 .. classes-1 */
    int labeled;     /* images [0, labeled) have labels; the rest (STL-10's
                      * unlabeled split) only train the encoder */
    uint8_t *pixels; /* (n, 3, side, side): R, G, B planes, rows top to bottom */
    uint8_t *labels; /* (n): 0 .. classes-1, RW_NO_LABEL from `labeled` on */
    void *map;       /* non-NULL: pixels and labels lie in this read-only
                      * mapping of a cache file (rw_stl10_load_cached) */
    size_t map_len;
} rw_dataset;

/* Where a reader says what it did that a person may wonder about (a slow
 * first load, a cache it could not use): one line, no newline. */
typedef void (*rw_data_notice)(void *ud, const char *line);
/* The formatted line to notice (nothing when it is NULL); at most 1023
 * bytes, the rest cut. */
void rw_vnotice(rw_data_notice notice, void *ud, const char *fmt, va_list ap);
void rw_notice(rw_data_notice notice, void *ud, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* CIFAR-10: data_batch_1..5.bin (train != 0) or test_batch.bin from dir.
 * Errors (missing file, size not a multiple of 3073, label > 9) name the
 * file and the problem. 0 or -1. */
int rw_cifar_load(const char *dir, int train, rw_dataset *out, char *err, size_t errlen);
/* CIFAR-100: train.bin or test.bin, 100 fine labels (coarse != 0: the 20
 * superclasses). Both label bytes of every record are checked. */
int rw_cifar100_load(const char *dir, int train, int coarse, rw_dataset *out, char *err,
                     size_t errlen);
/* STL-10's binary version (the folder stl10_binary): train_X.bin with
 * train_y.bin, or test_X.bin with test_y.bin; with train and unlabeled != 0
 * the 100000 images of unlabeled_X.bin follow the labeled ones. The files
 * store each channel column by column and labels 1..10; the set holds
 * row-major planes and labels 0..9 like the others. */
int rw_stl10_load(const char *dir, int train, int unlabeled, rw_dataset *out, char *err,
                  size_t errlen);
/* The same set, read through a row-major copy of it in cache_dir (made on
 * first use, under a lock, so that one of several workers starting at once
 * writes it and the others wait): the copy is mapped read-only and shared,
 * so the workers of a node hold one 2.9 GB page-cached copy between them
 * rather than one transposed copy each, and a job starts without
 * transposing. The copy records each source file's identity, size and
 * times, and is rebuilt when any of them changes or the copy is damaged.
 * Where the copy cannot be written (no space, no folder), the set is read
 * into memory as rw_stl10_load does and `notice` says why. Errors in the
 * set itself are returned as rw_stl10_load returns them. */
int rw_stl10_load_cached(const char *dir, int train, int unlabeled, const char *cache_dir,
                         rw_data_notice notice, void *ud, rw_dataset *out, char *err,
                         size_t errlen);

/* An image folder (data.kind imagefolder): dir/train/CLASS/... (train !=
 * 0, then dir/unlabeled/... after them when opts->unlabeled) or
 * dir/val/CLASS/..., JPEG and PNG files decoded once, each one's shorter
 * side resized to opts->side and its centre cropped, into a cache file in
 * opts->cache_dir that every worker of the node maps (written under a lock
 * to a temporary name and renamed; rebuilt when a file is added, removed
 * or touched, or side changes). Decoding runs on opts->threads threads (0:
 * every core) and `notice` gets progress lines. A file that does not
 * decode is an error naming it, or with opts->skip_bad is left out and
 * counted. Where no cache can be written the set is decoded into memory.
 * Labels are the indices of train/'s class folders in byte order. */
typedef struct rw_imagefolder_opts {
    int side;
    int unlabeled;
    int skip_bad;
    int threads;
    const char *cache_dir; /* NULL: decode into memory, no cache */
    rw_data_notice notice;
    void *ud;
} rw_imagefolder_opts;
int rw_imagefolder_load(const char *dir, int train, const rw_imagefolder_opts *opts,
                        rw_dataset *out, char *err, size_t errlen);
void rw_dataset_free(rw_dataset *ds);
/* What a checkpoint records of its training set, so that a job resumed
 * on other data (the files at data.path replaced since it started) is
 * refused rather than continued: the image count and shape, and a CRC-32
 * of the pixels and labels (zlib's, ~2 GB/s a thread: STL-10's 2.9 GB in
 * parts on `threads` threads, 0: all, joined by crc32_combine, so the
 * value does not depend on them). */
#define RW_DATA_DIGEST_MAX 96
void rw_dataset_digest(const rw_dataset *ds, int threads, char *out, size_t len);
/* The labeled part of ds (the first ds->labeled images), sharing its memory:
 * what evaluation and the kNN monitor see. */
rw_dataset rw_dataset_labeled(const rw_dataset *ds);

/* n CIFAR-sized images of uniform noise, labels i % 10, in memory: a set
 * for timing and for tests that only need pixels. 0, or -1 when out of
 * memory (*out then empty). */
int rw_dataset_noise(int n, uint64_t seed, rw_dataset *out);

/* Writes a synthetic data set in CIFAR-10's binary format to dir:
 * n_train images spread over data_batch_1..5.bin and n_test in test_batch.bin,
 * 10 learnable classes, deterministic from seed. Creates dir if needed. */
int rw_synth_write(const char *dir, int n_train, int n_test, uint64_t seed, char *err,
                   size_t errlen);
/* ... in a style of scene (rw_synth_write: the cluttered one). */
int rw_synth_write_style(const char *dir, int n_train, int n_test, uint64_t seed,
                         rw_synth_style style, char *err, size_t errlen);

/* The same images in another data set's files, to try a spec of that kind
 * where the real set is absent: RW_DATA_CIFAR100 (train.bin, test.bin; fine
 * label = the class, coarse = class / 5) or RW_DATA_STL10 (train_X/y.bin,
 * test_X/y.bin and n_unlabeled images in unlabeled_X.bin, each 32x32 image
 * scaled up 3x). RW_DATA_CIFAR10 and RW_DATA_SYNTHETIC: rw_synth_write;
 * an image folder: rw_synth_write_imagefolder, which draws on this file's
 * images (and so is not called from here). */
int rw_synth_write_as(const char *dir, rw_data_kind kind, int n_train, int n_test,
                      int n_unlabeled, uint64_t seed, char *err, size_t errlen);

/* The synthetic set as an image folder (data.kind imagefolder): dir/train/
 * and dir/val/ with a folder per class (class_00 .. class_09), and with
 * n_unlabeled > 0 dir/unlabeled/, each 32x32 image scaled up to 64x64 and
 * written as a PNG (even indices) or a JPEG (odd). */
int rw_synth_write_imagefolder(const char *dir, int n_train, int n_test, int n_unlabeled,
                               uint64_t seed, char *err, size_t errlen);

/* Creates dir and any missing parents (mode 0755). 0, or -1 naming the
 * folder that could not be made (or a path that is not a folder). */
int rw_mkdir_p(const char *dir, char *err, size_t errlen);

/* Makes sure dir holds the synthetic set for (n_train, n_test, seed),
 * generating it if absent; a marker file records the parameters so a stale
 * set is regenerated rather than silently reused. */
int rw_synth_ensure(const char *dir, int n_train, int n_test, uint64_t seed, char *err,
                    size_t errlen);
/* ... in a style of scene (rw_synth_ensure: the cluttered one; its marker
 * names the plain style, not the cluttered, so older sets stay valid). */
int rw_synth_ensure_style(const char *dir, int n_train, int n_test, uint64_t seed,
                          rw_synth_style style, char *err, size_t errlen);

/* Un-augmented image i resized (bilinear) to size x size and normalized:
 * out (3, size, size). Used for evaluation features and `augment: none`. */
void rw_image_plain(const rw_dataset *ds, int i, int size, const float mean[3],
                    const float std[3], float *out);

/* The background loader. Each epoch is a permutation of the data set drawn
 * from (seed, epoch); batch b holds samples perm[b*B .. b*B+B-1]; the last
 * partial batch is dropped (BatchNorm statistics on a handful of samples are
 * noise). View v of sample i in epoch e is a pure function of
 * (seed, e, i, v), so a resumed job and any thread count give the same bytes. */
typedef struct rw_loader rw_loader;

typedef struct rw_loader_cfg {
    const rw_dataset *ds;
    int batch;
    int out_size;
    rw_augment augment;
    float mean[3], std[3];
    uint64_t seed;
    int threads; /* background threads preparing batches, >= 1 */
    /* Data parallel: with shard_world W > 1, `batch` is the GLOBAL batch and
     * this loader yields only rank shard_rank's slice, samples
     * [r*batch/W, (r+1)*batch/W) of each global batch (batch % W == 0). */
    int shard_rank, shard_world;
} rw_loader_cfg;

rw_loader *rw_loader_create(const rw_loader_cfg *cfg, char *err, size_t errlen);
void rw_loader_free(rw_loader *ld);
/* Batches per epoch (n / batch, rounded down). */
long rw_loader_batches(const rw_loader *ld);
/* Positions the loader at (epoch, batch index); prefetching restarts there. */
void rw_loader_seek(rw_loader *ld, int epoch, long batch);
/* Fills x1, x2 (batch, 3, S, S) host floats and labels (batch), advancing the
 * position; returns 0, or 1 when the epoch is exhausted (nothing written;
 * seek to the next epoch). */
int rw_loader_next(rw_loader *ld, float *x1, float *x2, int32_t *labels);
/* Current position, as a checkpoint saves it. */
void rw_loader_tell(const rw_loader *ld, int *epoch, long *batch);

/* Writes a PNG grid: for each of the first `count` images of the epoch-0
 * order, the original (resized to out_size), its T1 view and its T2 view. */
int rw_show_augment(const rw_dataset *ds, const rw_loader_cfg *cfg, int count,
                    const char *png_path, char *err, size_t errlen);

#endif
