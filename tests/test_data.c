/* Data: the binary formats of CIFAR-10, CIFAR-100 and STL-10, the synthetic
 * set, the loader and the show-augment PNG. */
#include <criterion/criterion.h>
#include <glob.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "worker/data_internal.h"

static const float k_mean[3] = {0.4914f, 0.4822f, 0.4465f};
static const float k_std[3] = {0.2470f, 0.2435f, 0.2616f};

static void make_dir(char *dir, size_t len)
{
    snprintf(dir, len, "/tmp/rw_data_XXXXXX");
    cr_assert(mkdtemp(dir), "mkdtemp");
}

static void remove_dir(const char *dir)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    (void)!system(cmd);
}

/* Record r of a test file: label and pixels that say where they came from. */
static void fill_record(uint8_t *rec, int file, int r, int label)
{
    rec[0] = (uint8_t)label;
    for (int k = 1; k < RW_CIFAR_RECORD; k++)
        rec[k] = (uint8_t)(file * 31 + r * 7 + k);
}

static void write_file(const char *dir, const char *name, const uint8_t *bytes, size_t n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    cr_assert(f, "cannot write %s", path);
    if (n)
        cr_assert_eq(fwrite(bytes, 1, n, f), n);
    fclose(f);
}

/* Writes data_batch_1..5 with counts[k] records and test_batch with `test`. */
static void write_set(const char *dir, const int counts[5], int test)
{
    static uint8_t buf[8 * RW_CIFAR_RECORD];
    for (int k = 0; k < 6; k++) {
        int n = k < 5 ? counts[k] : test;
        for (int r = 0; r < n; r++)
            fill_record(buf + (size_t)r * RW_CIFAR_RECORD, k, r, (k + r) % 10);
        char name[32];
        snprintf(name, sizeof name, k < 5 ? "data_batch_%d.bin" : "test_batch.bin", k + 1);
        write_file(dir, name, buf, (size_t)n * RW_CIFAR_RECORD);
    }
}

/* ---- the reader ---- */

Test(data, reads_back_what_was_written)
{
    char dir[64];
    make_dir(dir, sizeof dir);
    int counts[5] = {3, 2, 1, 1, 2};
    write_set(dir, counts, 4);
    char err[512] = "";
    rw_dataset ds;
    cr_assert_eq(rw_cifar_load(dir, 1, &ds, err, sizeof err), 0, "%s", err);
    cr_assert_eq(ds.n, 9);
    int i = 0;
    for (int k = 0; k < 5; k++)
        for (int r = 0; r < counts[k]; r++, i++) {
            uint8_t rec[RW_CIFAR_RECORD];
            fill_record(rec, k, r, (k + r) % 10);
            cr_assert_eq(ds.labels[i], rec[0], "label %d", i);
            cr_assert(memcmp(ds.pixels + (size_t)i * 3072, rec + 1, 3072) == 0, "pixels %d", i);
        }
    rw_dataset_free(&ds);
    cr_assert_eq(rw_cifar_load(dir, 0, &ds, err, sizeof err), 0, "%s", err);
    cr_assert_eq(ds.n, 4);
    uint8_t rec[RW_CIFAR_RECORD];
    fill_record(rec, 5, 3, 8);
    cr_assert_eq(ds.labels[3], 8);
    cr_assert(memcmp(ds.pixels + 3 * 3072, rec + 1, 3072) == 0);
    rw_dataset_free(&ds);
    rw_dataset_free(&ds); /* idempotent */
    remove_dir(dir);
}

/* Loads and expects failure with every piece of `want` in the message. */
static void expect_error(const char *dir, int train, const char *want1, const char *want2)
{
    char err[512] = "";
    rw_dataset ds;
    cr_assert_eq(rw_cifar_load(dir, train, &ds, err, sizeof err), -1, "loaded a bad set");
    cr_assert(strstr(err, want1), "'%s' does not mention '%s'", err, want1);
    if (want2)
        cr_assert(strstr(err, want2), "'%s' does not mention '%s'", err, want2);
    cr_assert_null(ds.pixels);
}

/* The digest a checkpoint keeps of its training set: CRC-32 of the pixels
 * then the labels (Python: zlib.crc32(bytes([1, 2, 3, 4, 5, 6, 0, 255]))). */
Test(data, digest_is_the_crc_of_pixels_and_labels)
{
    uint8_t px[6] = {1, 2, 3, 4, 5, 6}, lb[2] = {0, 255};
    rw_dataset ds = {.n = 2, .side = 1, .classes = 10, .labeled = 1, .pixels = px, .labels = lb};
    char d[RW_DATA_DIGEST_MAX];
    rw_dataset_digest(&ds, 1, d, sizeof d);
    cr_assert_str_eq(d, "2 images of 1x1 (1 labeled), crc32 535279bd");
    lb[1] = 254;
    rw_dataset_digest(&ds, 1, d, sizeof d);
    cr_assert_str_neq(d, "2 images of 1x1 (1 labeled), crc32 535279bd");
    /* a set large enough to go in parts over threads: the same value as
     * one pass, whatever the thread count */
    rw_dataset big;
    cr_assert_eq(rw_dataset_noise(25000, 3, &big), 0); /* 77 MB */
    size_t bytes = (size_t)big.n * 3 * 32 * 32;
    uLong crc = crc32_z(crc32_z(0L, big.pixels, bytes), big.labels, (size_t)big.n);
    char want[RW_DATA_DIGEST_MAX];
    snprintf(want, sizeof want, "25000 images of 32x32 (25000 labeled), crc32 %08lx",
             (unsigned long)crc);
    for (int t = 1; t <= 4; t += 3) {
        rw_dataset_digest(&big, t, d, sizeof d);
        cr_expect_str_eq(d, want, "%d threads", t);
    }
    rw_dataset_free(&big);
}

Test(data, missing_file_is_named)
{
    char dir[64];
    make_dir(dir, sizeof dir);
    int counts[5] = {1, 1, 1, 1, 1};
    write_set(dir, counts, 1);
    char path[512];
    snprintf(path, sizeof path, "%s/data_batch_3.bin", dir);
    unlink(path);
    expect_error(dir, 1, path, "No such file");
    snprintf(path, sizeof path, "%s/test_batch.bin", dir);
    unlink(path);
    expect_error(dir, 0, path, "cannot open");
    expect_error("/nonexistent/rw", 1, "/nonexistent/rw/data_batch_1.bin", "cannot open");
    remove_dir(dir);
}

Test(data, bad_size_is_named_with_its_size)
{
    char dir[64];
    make_dir(dir, sizeof dir);
    int counts[5] = {1, 1, 1, 1, 1};
    write_set(dir, counts, 1);
    static uint8_t junk[2 * RW_CIFAR_RECORD + 5];
    write_file(dir, "data_batch_5.bin", junk, sizeof junk);
    char path[512];
    snprintf(path, sizeof path, "%s/data_batch_5.bin", dir);
    expect_error(dir, 1, path, "size 6151 bytes is not a multiple of the 3073-byte record");
    write_file(dir, "test_batch.bin", junk, 100);
    snprintf(path, sizeof path, "%s/test_batch.bin", dir);
    expect_error(dir, 0, path, "size 100 bytes");
    remove_dir(dir);
}

Test(data, empty_file_is_named)
{
    char dir[64];
    make_dir(dir, sizeof dir);
    int counts[5] = {1, 1, 1, 1, 1};
    write_set(dir, counts, 1);
    write_file(dir, "data_batch_2.bin", NULL, 0);
    char path[512];
    snprintf(path, sizeof path, "%s/data_batch_2.bin", dir);
    expect_error(dir, 1, path, "empty file");
    remove_dir(dir);
}

Test(data, bad_label_names_the_record)
{
    char dir[64];
    make_dir(dir, sizeof dir);
    int counts[5] = {1, 1, 1, 1, 1};
    write_set(dir, counts, 1);
    static uint8_t buf[4 * RW_CIFAR_RECORD];
    for (int r = 0; r < 4; r++)
        fill_record(buf + r * RW_CIFAR_RECORD, 0, r, r == 2 ? 10 : 9);
    write_file(dir, "data_batch_4.bin", buf, sizeof buf);
    char path[512];
    snprintf(path, sizeof path, "%s/data_batch_4.bin", dir);
    expect_error(dir, 1, path, "record 2 (byte offset 6146): label 10 is not in 0..9");
    buf[2 * RW_CIFAR_RECORD] = 255;
    write_file(dir, "test_batch.bin", buf, sizeof buf);
    expect_error(dir, 0, "test_batch.bin: record 2", "label 255");
    remove_dir(dir);
}

Test(data, directory_as_file_is_an_error)
{
    char dir[64];
    make_dir(dir, sizeof dir);
    char path[512];
    snprintf(path, sizeof path, "%s/test_batch.bin", dir);
    mkdir(path, 0755);
    expect_error(dir, 0, path, "not a regular file");
    remove_dir(dir);
}

/* ---- CIFAR-100 and STL-10 ---- */

/* CIFAR-100 record r: coarse and fine labels, then pixels like fill_record's. */
static void fill_record100(uint8_t *rec, int r, int coarse, int fine)
{
    rec[0] = (uint8_t)coarse;
    rec[1] = (uint8_t)fine;
    for (int k = 2; k < RW_CIFAR100_RECORD; k++)
        rec[k] = (uint8_t)(r * 11 + k * 3);
}

Test(data, cifar100_reads_fine_or_coarse_labels)
{
    char dir[64];
    make_dir(dir, sizeof dir);
    static uint8_t buf[5 * RW_CIFAR100_RECORD];
    for (int r = 0; r < 5; r++)
        fill_record100(buf + r * RW_CIFAR100_RECORD, r, 19 - r, 99 - 7 * r);
    write_file(dir, "train.bin", buf, sizeof buf);
    write_file(dir, "test.bin", buf, 2 * RW_CIFAR100_RECORD);
    char err[512] = "";
    rw_dataset ds;
    cr_assert_eq(rw_cifar100_load(dir, 1, 0, &ds, err, sizeof err), 0, "%s", err);
    cr_assert(ds.n == 5 && ds.labeled == 5 && ds.side == 32 && ds.classes == 100);
    for (int r = 0; r < 5; r++) {
        cr_assert_eq(ds.labels[r], 99 - 7 * r);
        cr_assert(memcmp(ds.pixels + (size_t)r * 3072, buf + r * RW_CIFAR100_RECORD + 2, 3072) ==
                      0,
                  "pixels of record %d", r);
    }
    rw_dataset_free(&ds);
    cr_assert_eq(rw_cifar100_load(dir, 0, 1, &ds, err, sizeof err), 0, "%s", err);
    cr_assert(ds.n == 2 && ds.classes == 20 && ds.labels[0] == 19 && ds.labels[1] == 18);
    rw_dataset_free(&ds);

    /* both label bytes are checked, whichever is used */
    char path[512];
    snprintf(path, sizeof path, "%s/train.bin", dir);
    buf[3 * RW_CIFAR100_RECORD] = 20;
    write_file(dir, "train.bin", buf, sizeof buf);
    cr_assert_eq(rw_cifar100_load(dir, 1, 0, &ds, err, sizeof err), -1);
    cr_assert(strstr(err, path) && strstr(err, "record 3 (byte offset 9222): coarse label 20 is "
                                                "not in 0..19"),
              "%s", err);
    buf[3 * RW_CIFAR100_RECORD] = 0;
    buf[4 * RW_CIFAR100_RECORD + 1] = 100;
    write_file(dir, "train.bin", buf, sizeof buf);
    cr_assert_eq(rw_cifar100_load(dir, 1, 1, &ds, err, sizeof err), -1);
    cr_assert(strstr(err, "record 4") && strstr(err, "fine label 100 is not in 0..99"), "%s", err);
    /* CIFAR-10's files are not CIFAR-100's: the record size says so */
    write_file(dir, "test.bin", buf, 3 * RW_CIFAR_RECORD);
    cr_assert_eq(rw_cifar100_load(dir, 0, 0, &ds, err, sizeof err), -1);
    cr_assert(strstr(err, "not a multiple of the 3074-byte record") && strstr(err, "CIFAR-100"),
              "%s", err);
    unlink(path);
    cr_assert_eq(rw_cifar100_load(dir, 1, 0, &ds, err, sizeof err), -1);
    cr_assert(strstr(err, path) && strstr(err, "No such file"), "%s", err);
    cr_assert_null(ds.pixels);
    remove_dir(dir);
}

#define STL 96
#define STL_IMG (3 * STL * STL)

/* The value a test STL-10 image i holds at channel c, row y, column x. */
static uint8_t stl_value(int i, int c, int y, int x) { return (uint8_t)(i * 13 + c * 101 + y * 7 + x * 3 + (x * y) % 5); }

/* n images in STL-10's order (each channel column by column). */
static uint8_t *stl_images(int first, int n)
{
    uint8_t *b = malloc((size_t)n * STL_IMG);
    for (int i = 0; i < n; i++)
        for (int c = 0; c < 3; c++)
            for (int x = 0; x < STL; x++)
                for (int y = 0; y < STL; y++)
                    b[(size_t)i * STL_IMG + c * STL * STL + x * STL + y] =
                        stl_value(first + i, c, y, x);
    return b;
}

static void write_stl(const char *dir, int ntrain, int ntest, int nunl)
{
    uint8_t *x = stl_images(0, ntrain), *t = stl_images(1000, ntest), *u = stl_images(5000, nunl);
    uint8_t y[64];
    for (int i = 0; i < 64; i++)
        y[i] = (uint8_t)(1 + (i * 3) % 10);
    write_file(dir, "train_X.bin", x, (size_t)ntrain * STL_IMG);
    write_file(dir, "train_y.bin", y, (size_t)ntrain);
    write_file(dir, "test_X.bin", t, (size_t)ntest * STL_IMG);
    write_file(dir, "test_y.bin", y, (size_t)ntest);
    write_file(dir, "unlabeled_X.bin", u, (size_t)nunl * STL_IMG);
    free(x), free(t), free(u);
}

/* The loaded image i matches stl_value(first + i, ...) in row-major planes. */
static void expect_stl_image(const rw_dataset *ds, int i, int first)
{
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < STL; y++)
            for (int x = 0; x < STL; x++)
                cr_assert_eq(ds->pixels[(size_t)i * STL_IMG + c * STL * STL + y * STL + x],
                             stl_value(first + i, c, y, x), "image %d channel %d row %d col %d", i,
                             c, y, x);
}

Test(data, stl10_is_transposed_and_relabeled)
{
    char dir[64];
    make_dir(dir, sizeof dir);
    write_stl(dir, 5, 3, 4);
    char err[512] = "";
    rw_dataset ds;
    cr_assert_eq(rw_stl10_load(dir, 1, 1, &ds, err, sizeof err), 0, "%s", err);
    cr_assert(ds.n == 9 && ds.labeled == 5 && ds.side == 96 && ds.classes == 10, "n %d labeled %d",
              ds.n, ds.labeled);
    for (int i = 0; i < 5; i++) {
        cr_assert_eq(ds.labels[i], (i * 3) % 10, "label %d: stored 1..10, read 0..9", i);
        expect_stl_image(&ds, i, 0);
    }
    for (int i = 5; i < 9; i++) {
        cr_assert_eq(ds.labels[i], RW_NO_LABEL);
        expect_stl_image(&ds, i, 5000 - 5);
    }
    /* what evaluation sees */
    rw_dataset lab = rw_dataset_labeled(&ds);
    cr_assert(lab.n == 5 && lab.pixels == ds.pixels && lab.classes == 10);
    rw_dataset_free(&ds);
    cr_assert_eq(rw_stl10_load(dir, 1, 0, &ds, err, sizeof err), 0, "%s", err);
    cr_assert(ds.n == 5 && ds.labeled == 5);
    rw_dataset_free(&ds);
    cr_assert_eq(rw_stl10_load(dir, 0, 1, &ds, err, sizeof err), 0, "%s", err);
    cr_assert(ds.n == 3 && ds.labeled == 3, "the test split has no unlabeled part");
    expect_stl_image(&ds, 2, 1000);
    rw_dataset_free(&ds);
    remove_dir(dir);
}

static void expect_stl_error(const char *dir, int train, int unl, const char *want1,
                             const char *want2)
{
    char err[512] = "";
    rw_dataset ds;
    cr_assert_eq(rw_stl10_load(dir, train, unl, &ds, err, sizeof err), -1, "loaded a bad set");
    cr_assert(strstr(err, want1) && strstr(err, want2), "'%s' does not mention '%s' and '%s'", err,
              want1, want2);
    cr_assert_null(ds.pixels);
}

Test(data, stl10_errors_name_the_file)
{
    char dir[64], path[512];
    make_dir(dir, sizeof dir);
    write_stl(dir, 4, 2, 2);
    uint8_t y[4] = {1, 2, 11, 4};
    write_file(dir, "train_y.bin", y, 4);
    snprintf(path, sizeof path, "%s/train_y.bin", dir);
    expect_stl_error(dir, 1, 0, path, "image 2: label 11 is not in 1..10");
    y[2] = 0;
    write_file(dir, "train_y.bin", y, 4);
    expect_stl_error(dir, 1, 0, path, "label 0 is not in 1..10");
    write_file(dir, "train_y.bin", y, 3);
    expect_stl_error(dir, 1, 0, path, "3 labels for the 4 images of");
    y[2] = 3;
    write_file(dir, "train_y.bin", y, 4);

    uint8_t *half = stl_images(0, 1);
    write_file(dir, "test_X.bin", half, STL_IMG / 2);
    snprintf(path, sizeof path, "%s/test_X.bin", dir);
    expect_stl_error(dir, 0, 0, path, "13824 bytes is not a positive multiple of the 27648-byte");
    free(half);

    snprintf(path, sizeof path, "%s/unlabeled_X.bin", dir);
    unlink(path);
    expect_stl_error(dir, 1, 1, path, "No such file");
    expect_stl_error(dir, 1, 1, path, "data.unlabeled: false trains on the labeled images only");
    char err[512];
    rw_dataset ds;
    cr_assert_eq(rw_stl10_load(dir, 1, 0, &ds, err, sizeof err), 0,
                 "without the unlabeled split its file is not needed: %s", err);
    rw_dataset_free(&ds);
    remove_dir(dir);
}

/* What the STL-10 cache told its caller. */
typedef struct notices {
    int n;
    char last[2048];
} notices;

static void note(void *ud, const char *line)
{
    notices *s = ud;
    s->n++;
    snprintf(s->last, sizeof s->last, "%s", line);
}

static void expect_same_set(const rw_dataset *a, const rw_dataset *b)
{
    cr_assert(a->n == b->n && a->labeled == b->labeled && a->side == b->side &&
                  a->classes == b->classes,
              "n %d/%d labeled %d/%d", a->n, b->n, a->labeled, b->labeled);
    cr_assert(memcmp(a->labels, b->labels, (size_t)a->n) == 0, "labels differ");
    cr_assert(memcmp(a->pixels, b->pixels, (size_t)a->n * STL_IMG) == 0, "pixels differ");
}

/* The one cache file of `part` (train, train+unlabeled, test) in cache. */
static void cache_file(const char *cache, const char *part, char *out, size_t len)
{
    char pat[512];
    snprintf(pat, sizeof pat, "%s/stl10-*-%s.u8", cache, part);
    glob_t g;
    cr_assert_eq(glob(pat, 0, NULL, &g), 0, "no cache file %s", pat);
    cr_assert_eq(g.gl_pathc, 1, "%zu files match %s", g.gl_pathc, pat);
    snprintf(out, len, "%s", g.gl_pathv[0]);
    globfree(&g);
}

/* Loads (train, unlabeled) through the cache and checks it against the
 * plain reader's bytes; returns what the cache said. */
static notices load_cached_as_plain(const char *dir, const char *cache, int train, int unl)
{
    char err[512] = "";
    rw_dataset plain, c;
    notices s = {0};
    cr_assert_eq(rw_stl10_load(dir, train, unl, &plain, err, sizeof err), 0, "%s", err);
    cr_assert_eq(rw_stl10_load_cached(dir, train, unl, cache, note, &s, &c, err, sizeof err), 0,
                 "%s", err);
    expect_same_set(&plain, &c);
    cr_assert_not_null(c.map, "not mapped: %s", s.last);
    rw_dataset_free(&c);
    cr_assert_null(c.map);
    rw_dataset_free(&plain);
    return s;
}

static ino_t inode_of(const char *dir, const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "%s missing", path);
    return st.st_ino;
}

/* 70 unlabeled images: the writer's 64-image chunks end mid-split. */
Test(data, stl10_cache_is_written_once_then_mapped)
{
    char dir[64], cache[128], file[512];
    make_dir(dir, sizeof dir);
    snprintf(cache, sizeof cache, "%s/cache/runaway", dir);
    write_stl(dir, 5, 3, 70);
    notices s = load_cached_as_plain(dir, cache, 1, 1);
    cr_assert(s.n == 1 && strstr(s.last, "wrote the row-major cache") &&
                  strstr(s.last, "there was none"),
              "%d: %s", s.n, s.last);
    cache_file(cache, "train+unlabeled", file, sizeof file);
    ino_t first = inode_of(cache, strrchr(file, '/') + 1);
    s = load_cached_as_plain(dir, cache, 1, 1);
    cr_assert_eq(s.n, 0, "a second load said: %s", s.last);
    cr_assert_eq(inode_of(cache, strrchr(file, '/') + 1), first, "the cache was written again");

    /* evaluation's view of a mapped set owns nothing */
    char err[512];
    rw_dataset c;
    cr_assert_eq(rw_stl10_load_cached(dir, 1, 1, cache, NULL, NULL, &c, err, sizeof err), 0,
                 "%s", err);
    rw_dataset lab = rw_dataset_labeled(&c);
    cr_assert(lab.n == 5 && lab.pixels == c.pixels && !lab.map && c.map);
    rw_dataset_free(&c);

    /* each split has its own file */
    s = load_cached_as_plain(dir, cache, 0, 1);
    cr_assert(s.n == 1 && strstr(s.last, "STL-10 test"), "%s", s.last);
    s = load_cached_as_plain(dir, cache, 1, 0);
    cr_assert(s.n == 1 && strstr(s.last, "STL-10 train at"), "%s", s.last);
    cache_file(cache, "test", file, sizeof file);
    cache_file(cache, "train", file, sizeof file);
    remove_dir(dir);
}

/* Overwrites `len` bytes of path at `at`. */
static void poke(const char *path, long at, const void *bytes, size_t len)
{
    FILE *f = fopen(path, "r+b");
    cr_assert(f && fseek(f, at, SEEK_SET) == 0 && fwrite(bytes, 1, len, f) == len, "%s", path);
    fclose(f);
}

Test(data, stl10_cache_follows_its_files_and_distrusts_damage)
{
    char dir[64], cache[128], file[512], tmp[600];
    make_dir(dir, sizeof dir);
    snprintf(cache, sizeof cache, "%s/cache", dir);
    write_stl(dir, 5, 3, 6);
    load_cached_as_plain(dir, cache, 1, 1);
    cache_file(cache, "train+unlabeled", file, sizeof file);

    /* other unlabeled images, the same size */
    uint8_t *u = stl_images(7000, 6);
    write_file(dir, "unlabeled_X.bin", u, (size_t)6 * STL_IMG);
    free(u);
    notices s = load_cached_as_plain(dir, cache, 1, 1);
    cr_assert(strstr(s.last, "the set's files changed"), "%s", s.last);
    char err[512];
    rw_dataset c;
    cr_assert_eq(rw_stl10_load_cached(dir, 1, 1, cache, NULL, NULL, &c, err, sizeof err), 0);
    expect_stl_image(&c, 5, 7000 - 5);
    rw_dataset_free(&c);

    poke(file, 0, "X", 1);
    s = load_cached_as_plain(dir, cache, 1, 1);
    cr_assert(strstr(s.last, "bad header"), "%s", s.last);
    poke(file, 4096 + 2, "\x0a", 1); /* label 10 of 0..9 */
    s = load_cached_as_plain(dir, cache, 1, 1);
    cr_assert(strstr(s.last, "bad label"), "%s", s.last);
    poke(file, 4096 + 7, "\x03", 1); /* an unlabeled image with a label */
    s = load_cached_as_plain(dir, cache, 1, 1);
    cr_assert(strstr(s.last, "bad label"), "%s", s.last);
    struct stat st;
    cr_assert_eq(stat(file, &st), 0);
    cr_assert_eq(truncate(file, st.st_size - 1), 0);
    s = load_cached_as_plain(dir, cache, 1, 1);
    cr_assert(strstr(s.last, "wrong size"), "%s", s.last);

    /* what a builder killed mid-write leaves is removed by the next load */
    snprintf(tmp, sizeof tmp, "%s.tmp", file);
    FILE *t = fopen(tmp, "wb");
    cr_assert(t && fputs("half", t) >= 0, "%s", tmp);
    fclose(t);
    s = load_cached_as_plain(dir, cache, 1, 1);
    cr_assert_eq(s.n, 0, "%s", s.last);
    cr_assert(access(tmp, F_OK) != 0, "%s was left", tmp);

    /* the set's own errors stay errors, and leave no cache behind */
    uint8_t y[5] = {1, 2, 11, 4, 5};
    write_file(dir, "train_y.bin", y, 5);
    cr_assert_eq(rw_stl10_load_cached(dir, 1, 0, cache, NULL, NULL, &c, err, sizeof err), -1);
    cr_assert(strstr(err, "label 11 is not in 1..10"), "%s", err);
    cr_assert_null(c.pixels);
    char pat[512];
    snprintf(pat, sizeof pat, "%s/stl10-*-train.u8*", cache);
    glob_t g;
    cr_assert_eq(glob(pat, 0, NULL, &g), GLOB_NOMATCH, "left %s", g.gl_pathv[0]);
    remove_dir(dir);
}

/* A set deleted or moved leaves no copy behind once another is cached;
 * the copies of sets still there stay. */
Test(data, stl10_cache_of_a_set_gone_is_removed)
{
    char a[64], b[64], cache[128], file[512], kept[512];
    make_dir(a, sizeof a);
    make_dir(b, sizeof b);
    snprintf(cache, sizeof cache, "%s/cache", b);
    write_stl(a, 5, 3, 6);
    write_stl(b, 4, 2, 6);
    load_cached_as_plain(a, cache, 1, 1);
    load_cached_as_plain(a, cache, 0, 1);
    cache_file(cache, "train+unlabeled", file, sizeof file);
    cache_file(cache, "test", kept, sizeof kept);
    char path[128];
    snprintf(path, sizeof path, "%s/unlabeled_X.bin", a);
    cr_assert_eq(unlink(path), 0);
    load_cached_as_plain(b, cache, 1, 0);
    cr_assert(access(file, F_OK) != 0, "the copy of a set whose file is gone was kept");
    cr_assert_eq(access(kept, F_OK), 0, "the copy of a set still there was removed");
    remove_dir(a);
    remove_dir(b);
}

Test(data, stl10_cache_that_cannot_be_written_falls_back_to_memory)
{
    char dir[64], cache[128], err[512];
    make_dir(dir, sizeof dir);
    write_stl(dir, 5, 3, 6);
    rw_dataset plain, c;
    cr_assert_eq(rw_stl10_load(dir, 1, 1, &plain, err, sizeof err), 0, "%s", err);
    notices s = {0};
    snprintf(cache, sizeof cache, "%s/train_y.bin/cache", dir);
    cr_assert_eq(rw_stl10_load_cached(dir, 1, 1, cache, note, &s, &c, err, sizeof err), 0, "%s",
                 err);
    cr_assert(s.n == 1 && strstr(s.last, "read into memory, without a cache") &&
                  strstr(s.last, "train_y.bin"),
              "%s", s.last);
    cr_assert_null(c.map);
    expect_same_set(&plain, &c);
    rw_dataset_free(&c);

    /* a full disk: a 64 KiB tmpfs holds a tenth of the cache (root only) */
    snprintf(cache, sizeof cache, "%s/full", dir);
    cr_assert_eq(mkdir(cache, 0755), 0);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "mount -t tmpfs -o size=64k tmpfs '%s' 2>/dev/null", cache);
    if (geteuid() != 0 || system(cmd) != 0) {
        rw_dataset_free(&plain);
        remove_dir(dir);
        cr_skip_test("data: a full disk: no tmpfs could be mounted here (needs root)");
    }
    s = (notices){0};
    int rc = rw_stl10_load_cached(dir, 1, 1, cache, note, &s, &c, err, sizeof err);
    char pat[512];
    snprintf(pat, sizeof pat, "%s/*.tmp", cache);
    glob_t g;
    int leftover = glob(pat, 0, NULL, &g) == 0;
    if (leftover)
        globfree(&g);
    snprintf(cmd, sizeof cmd, "umount '%s'", cache);
    cr_assert_eq(system(cmd), 0);
    cr_assert_eq(rc, 0, "%s", err);
    cr_assert(strstr(s.last, "cannot write") && strstr(s.last, "No space left"), "%s", s.last);
    cr_assert(!leftover, "the half-written cache was left on the full disk");
    expect_same_set(&plain, &c);
    rw_dataset_free(&c);
    rw_dataset_free(&plain);
    remove_dir(dir);
}

/* Workers starting together: one writes the cache, the others wait for it
 * and map it. Each child exits 1 if it wrote, 0 if it mapped, else 2. */
Test(data, stl10_cache_has_one_writer_among_concurrent_loads)
{
    char dir[64], cache[128];
    make_dir(dir, sizeof dir);
    snprintf(cache, sizeof cache, "%s/cache", dir);
    write_stl(dir, 5, 3, 300);
    enum { KIDS = 4 };
    pid_t kid[KIDS];
    for (int k = 0; k < KIDS; k++) {
        kid[k] = fork();
        cr_assert(kid[k] >= 0, "fork");
        if (kid[k] == 0) {
            char err[512];
            rw_dataset plain, c;
            notices s = {0};
            if (rw_stl10_load_cached(dir, 1, 1, cache, note, &s, &c, err, sizeof err) != 0 ||
                rw_stl10_load(dir, 1, 1, &plain, err, sizeof err) != 0 || !c.map ||
                memcmp(c.pixels, plain.pixels, (size_t)c.n * STL_IMG) != 0)
                _exit(2);
            _exit(s.n == 1 && strstr(s.last, "wrote") ? 1 : s.n == 0 ? 0 : 2);
        }
    }
    int wrote = 0;
    for (int k = 0; k < KIDS; k++) {
        int st;
        cr_assert_eq(waitpid(kid[k], &st, 0), kid[k]);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) < 2, "load %d failed (status %d)", k, st);
        wrote += WEXITSTATUS(st);
    }
    cr_assert_eq(wrote, 1, "%d of %d loads wrote the cache", wrote, KIDS);
    remove_dir(dir);
}

/* The synthetic set in CIFAR-100's and STL-10's files holds the CIFAR-10
 * set's images and classes: the writers and readers agree on every byte. */
Test(data, synthetic_in_other_formats_matches_the_cifar10_set)
{
    char a[64], b[64], c[64];
    make_dir(a, sizeof a);
    make_dir(b, sizeof b);
    make_dir(c, sizeof c);
    char err[512] = "";
    cr_assert_eq(rw_synth_write(a, 40, 12, 5, err, sizeof err), 0, "%s", err);
    cr_assert_eq(rw_synth_write_as(b, RW_DATA_CIFAR100, 40, 12, 0, 5, err, sizeof err), 0, "%s",
                 err);
    cr_assert_eq(rw_synth_write_as(c, RW_DATA_STL10, 40, 12, 6, 5, err, sizeof err), 0, "%s", err);
    for (int split = 1; split >= 0; split--) {
        rw_dataset ref, fine, coarse, stl;
        cr_assert_eq(rw_cifar_load(a, split, &ref, err, sizeof err), 0, "%s", err);
        cr_assert_eq(rw_cifar100_load(b, split, 0, &fine, err, sizeof err), 0, "%s", err);
        cr_assert_eq(rw_cifar100_load(b, split, 1, &coarse, err, sizeof err), 0, "%s", err);
        cr_assert_eq(rw_stl10_load(c, split, 1, &stl, err, sizeof err), 0, "%s", err);
        cr_assert(fine.n == ref.n && stl.labeled == ref.n);
        cr_assert_eq(stl.n, ref.n + (split ? 6 : 0));
        cr_assert(memcmp(fine.pixels, ref.pixels, (size_t)ref.n * 3072) == 0);
        for (int i = 0; i < ref.n; i++) {
            cr_assert(fine.labels[i] == ref.labels[i] && coarse.labels[i] == ref.labels[i] / 5 &&
                      stl.labels[i] == ref.labels[i]);
            for (int ch = 0; ch < 3; ch++)
                for (int y = 0; y < 96; y++)
                    for (int x = 0; x < 96; x++)
                        cr_assert_eq(stl.pixels[(size_t)i * STL_IMG + ch * 9216 + y * 96 + x],
                                     ref.pixels[(size_t)i * 3072 + ch * 1024 + (y / 3) * 32 + x / 3],
                                     "image %d (%d,%d,%d): 3x nearest scale-up", i, ch, y, x);
        }
        /* the unlabeled images are images of their own */
        if (split)
            cr_assert(memcmp(stl.pixels + (size_t)ref.n * STL_IMG, stl.pixels, STL_IMG) != 0);
        rw_dataset_free(&ref), rw_dataset_free(&fine), rw_dataset_free(&coarse),
            rw_dataset_free(&stl);
    }
    remove_dir(a), remove_dir(b), remove_dir(c);
}

/* ---- the synthetic set ---- */

static uint8_t *slurp(const char *dir, const char *name, size_t *n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(*n + 1);
    cr_assert_eq(fread(b, 1, *n, f), *n);
    fclose(f);
    return b;
}

static const char *k_files[6] = {"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin",
                                 "data_batch_4.bin", "data_batch_5.bin", "test_batch.bin"};

Test(data, synthetic_is_deterministic_and_seeded)
{
    char a[64], b[64], c[64];
    make_dir(a, sizeof a);
    make_dir(b, sizeof b);
    make_dir(c, sizeof c);
    char err[512] = "";
    cr_assert_eq(rw_synth_write(a, 203, 31, 42, err, sizeof err), 0, "%s", err);
    cr_assert_eq(rw_synth_write(b, 203, 31, 42, err, sizeof err), 0, "%s", err);
    cr_assert_eq(rw_synth_write(c, 203, 31, 43, err, sizeof err), 0, "%s", err);
    size_t total = 0;
    for (int k = 0; k < 6; k++) {
        size_t na, nb, nc;
        uint8_t *ba = slurp(a, k_files[k], &na), *bb = slurp(b, k_files[k], &nb),
                *bc = slurp(c, k_files[k], &nc);
        cr_assert(na == nb && na == nc && na % RW_CIFAR_RECORD == 0);
        cr_assert(memcmp(ba, bb, na) == 0, "%s: same seed, different bytes", k_files[k]);
        cr_assert(memcmp(ba, bc, na) != 0, "%s: another seed, same bytes", k_files[k]);
        total += na / RW_CIFAR_RECORD;
        free(ba), free(bb), free(bc);
    }
    cr_assert_eq(total, 203 + 31);
    /* the train images differ from the test images */
    rw_dataset tr, te;
    cr_assert_eq(rw_cifar_load(a, 1, &tr, err, sizeof err), 0, "%s", err);
    cr_assert_eq(rw_cifar_load(a, 0, &te, err, sizeof err), 0, "%s", err);
    cr_assert_eq(tr.n, 203);
    cr_assert_eq(te.n, 31);
    cr_assert(memcmp(tr.pixels, te.pixels, 3072) != 0);
    rw_dataset_free(&tr);
    rw_dataset_free(&te);
    cr_assert_eq(rw_synth_write(a, 4, 1, 1, err, sizeof err), -1, "too few train images");
    cr_assert(strstr(err, a) && strstr(err, "train 4"), "%s", err);
    remove_dir(a), remove_dir(b), remove_dir(c);
}

Test(data, synthetic_is_balanced_and_varied)
{
    char dir[64];
    make_dir(dir, sizeof dir);
    char err[512] = "";
    cr_assert_eq(rw_synth_write(dir, 1000, 100, 7, err, sizeof err), 0, "%s", err);
    rw_dataset ds;
    cr_assert_eq(rw_cifar_load(dir, 1, &ds, err, sizeof err), 0, "%s", err);
    int count[10] = {0};
    for (int i = 0; i < ds.n; i++)
        count[ds.labels[i]]++;
    for (int c = 0; c < 10; c++)
        cr_assert_eq(count[c], 100, "class %d has %d images", c, count[c]);
    /* no two images alike, and the pixels use the range */
    int lo = 255, hi = 0;
    for (int i = 0; i < ds.n; i++) {
        for (int j = 0; j < i; j += 37)
            cr_assert(memcmp(ds.pixels + (size_t)i * 3072, ds.pixels + (size_t)j * 3072, 3072),
                      "images %d and %d are identical", i, j);
        for (int k = 0; k < 3072; k++) {
            int v = ds.pixels[(size_t)i * 3072 + k];
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
        }
    }
    cr_assert(lo < 10 && hi > 245, "range %d..%d", lo, hi);
    rw_dataset_free(&ds);
    remove_dir(dir);
}

/* Best accuracy on held-out images of a classifier that looks at one
 * quantized pixel value: a lookup (position, channel, bin) -> majority class
 * learned on the first half, scored on the second. */
static double best_single_pixel_accuracy(const rw_dataset *ds)
{
    int half = ds->n / 2;
    double best = 0;
    for (int k = 0; k < 3072; k += 5) {
        int hist[8][10] = {{0}};
        for (int i = 0; i < half; i++)
            hist[ds->pixels[(size_t)i * 3072 + k] >> 5][ds->labels[i]]++;
        int vote[8];
        for (int b = 0; b < 8; b++) {
            vote[b] = 0;
            for (int c = 1; c < 10; c++)
                if (hist[b][c] > hist[b][vote[b]])
                    vote[b] = c;
        }
        int right = 0;
        for (int i = half; i < ds->n; i++)
            right += vote[ds->pixels[(size_t)i * 3072 + k] >> 5] == ds->labels[i];
        double acc = (double)right / (ds->n - half);
        best = acc > best ? acc : best;
    }
    return best;
}

/* Nearest class mean on a hue/value histogram of the centre: a crude
 * whole-image feature that should beat chance clearly. */
static void centre_feature(const uint8_t *img, float *f)
{
    memset(f, 0, 24 * sizeof *f);
    for (int y = 8; y < 24; y++)
        for (int x = 8; x < 24; x++) {
            float r = img[y * 32 + x] / 255.0f, g = img[1024 + y * 32 + x] / 255.0f,
                  b = img[2048 + y * 32 + x] / 255.0f;
            float c[3] = {r, g, b};
            float mx = fmaxf(r, fmaxf(g, b)), mn = fminf(r, fminf(g, b));
            if (mx - mn < 0.25f)
                continue; /* unsaturated: background or gray */
            /* hue via the augment header's own rotation: find h from hue(0) */
            float h;
            if (mx == r)
                h = (g - b) / (mx - mn);
            else if (mx == g)
                h = 2 + (b - r) / (mx - mn);
            else
                h = 4 + (r - g) / (mx - mn);
            h = h / 6 + 1;
            h -= floorf(h);
            (void)c;
            f[(int)(h * 20) % 20] += 1;
            f[20 + (int)(mx * 3.999f)] += 1;
        }
}

Test(data, synthetic_needs_more_than_one_pixel)
{
    char dir[64];
    make_dir(dir, sizeof dir);
    char err[512] = "";
    cr_assert_eq(rw_synth_write(dir, 4000, 10, 3, err, sizeof err), 0, "%s", err);
    rw_dataset ds;
    cr_assert_eq(rw_cifar_load(dir, 1, &ds, err, sizeof err), 0, "%s", err);
    double px = best_single_pixel_accuracy(&ds);

    int half = ds.n / 2;
    static float mean[10][24];
    int cnt[10] = {0};
    float f[24];
    for (int i = 0; i < half; i++) {
        centre_feature(ds.pixels + (size_t)i * 3072, f);
        for (int k = 0; k < 24; k++)
            mean[ds.labels[i]][k] += f[k];
        cnt[ds.labels[i]]++;
    }
    for (int c = 0; c < 10; c++)
        for (int k = 0; k < 24; k++)
            mean[c][k] /= cnt[c];
    int right = 0;
    for (int i = half; i < ds.n; i++) {
        centre_feature(ds.pixels + (size_t)i * 3072, f);
        int best = 0;
        double bd = 1e30;
        for (int c = 0; c < 10; c++) {
            double d = 0;
            for (int k = 0; k < 24; k++)
                d += (f[k] - mean[c][k]) * (f[k] - mean[c][k]);
            if (d < bd)
                bd = d, best = c;
        }
        right += best == ds.labels[i];
    }
    double hist = (double)right / (ds.n - half);
    fprintf(stderr, "synthetic: best single pixel %.3f, centre colour histogram %.3f\n", px, hist);
    cr_assert(px < 0.25, "one pixel tells the class %.0f%% of the time", 100 * px);
    cr_assert(hist > 0.3, "colour histogram only %.0f%%", 100 * hist);
    rw_dataset_free(&ds);
    remove_dir(dir);
}

Test(data, synthetic_ensure_regenerates_only_when_stale)
{
    char base[64], dir[128];
    make_dir(base, sizeof base);
    snprintf(dir, sizeof dir, "%s/a/b", base); /* created on demand */
    char err[512] = "";
    cr_assert_eq(rw_synth_ensure(dir, 50, 10, 1, err, sizeof err), 0, "%s", err);
    ino_t i1 = inode_of(dir, "data_batch_1.bin");
    cr_assert_eq(rw_synth_ensure(dir, 50, 10, 1, err, sizeof err), 0, "%s", err);
    cr_assert_eq(inode_of(dir, "data_batch_1.bin"), i1, "regenerated a current set");

    cr_assert_eq(rw_synth_ensure(dir, 50, 10, 2, err, sizeof err), 0, "%s", err);
    ino_t i2 = inode_of(dir, "data_batch_1.bin");
    cr_assert_neq(i2, i1, "kept a set made with another seed");
    size_t n;
    uint8_t *m = slurp(dir, "runaway-synthetic.txt", &n);
    m[n] = 0;
    cr_assert(strstr((char *)m, "seed 2") && strstr((char *)m, "train 50"), "%s", (char *)m);
    free(m);

    cr_assert_eq(rw_synth_ensure(dir, 60, 10, 2, err, sizeof err), 0, "%s", err);
    rw_dataset ds;
    cr_assert_eq(rw_cifar_load(dir, 1, &ds, err, sizeof err), 0, "%s", err);
    cr_assert_eq(ds.n, 60);
    rw_dataset_free(&ds);

    /* a damaged set (a file gone) is rebuilt */
    char path[512];
    snprintf(path, sizeof path, "%s/data_batch_3.bin", dir);
    unlink(path);
    cr_assert_eq(rw_synth_ensure(dir, 60, 10, 2, err, sizeof err), 0, "%s", err);
    cr_assert_eq(access(path, R_OK), 0);
    /* no temporary files left behind */
    char cmd[512];
    snprintf(cmd, sizeof cmd, "ls %s | grep -q tmp", dir);
    cr_assert_neq(system(cmd), 0, "temporary files left in %s", dir);
    remove_dir(base);
}

/* Mean HSV saturation of the outermost ring of pixels of n CIFAR images:
 * mostly background. */
static double border_saturation(const rw_dataset *ds)
{
    double sum = 0;
    long cnt = 0;
    for (int i = 0; i < ds->n; i++) {
        const uint8_t *img = ds->pixels + (size_t)i * 3072;
        for (int y = 0; y < 32; y++)
            for (int x = 0; x < 32; x++) {
                if (y != 0 && y != 31 && x != 0 && x != 31)
                    continue;
                int r = img[y * 32 + x], g = img[1024 + y * 32 + x], b = img[2048 + y * 32 + x];
                int mx = r > g ? (r > b ? r : b) : (g > b ? g : b);
                int mn = r < g ? (r < b ? r : b) : (g < b ? g : b);
                sum += mx ? (double)(mx - mn) / mx : 0;
                cnt++;
            }
    }
    return sum / (double)cnt;
}

/* data.synthetic.style plain: the same scenes, labels and counts, over a
 * greyish background; its own marker and cache, so neither style is taken
 * for the other. */
Test(data, synthetic_plain_style_takes_the_clutter_out)
{
    char a[64], b[64], c[64];
    make_dir(a, sizeof a);
    make_dir(b, sizeof b);
    make_dir(c, sizeof c);
    char err[512] = "";
    cr_assert_eq(rw_synth_write_style(a, 500, 20, 9, RW_SYNTH_CLUTTERED, err, sizeof err), 0,
                 "%s", err);
    cr_assert_eq(rw_synth_write_style(b, 500, 20, 9, RW_SYNTH_PLAIN, err, sizeof err), 0, "%s",
                 err);
    cr_assert_eq(rw_synth_write(c, 500, 20, 9, err, sizeof err), 0, "%s", err);
    for (int k = 0; k < 6; k++) {
        size_t na, nb, nc;
        uint8_t *ba = slurp(a, k_files[k], &na), *bb = slurp(b, k_files[k], &nb),
                *bc = slurp(c, k_files[k], &nc);
        cr_assert(na == nb && na == nc);
        cr_assert(memcmp(ba, bc, na) == 0, "%s: rw_synth_write is not the cluttered style",
                  k_files[k]);
        cr_assert(memcmp(ba, bb, na) != 0, "%s: both styles the same", k_files[k]);
        for (size_t r = 0; r < na; r += RW_CIFAR_RECORD)
            cr_assert_eq(ba[r], bb[r], "%s: a label differs between the styles", k_files[k]);
        free(ba), free(bb), free(bc);
    }
    rw_dataset ca, pl;
    cr_assert_eq(rw_cifar_load(a, 1, &ca, err, sizeof err), 0, "%s", err);
    cr_assert_eq(rw_cifar_load(b, 1, &pl, err, sizeof err), 0, "%s", err);
    double sa = border_saturation(&ca), sp = border_saturation(&pl);
    /* backgrounds drawn at saturation up to 0.6 against 0.15, plus noise */
    cr_expect(sp < 0.15 && sa > 2 * sp, "border saturation: cluttered %.3f, plain %.3f", sa, sp);
    rw_dataset_free(&ca), rw_dataset_free(&pl);

    /* the marker names the style; a set of the other style is made again */
    char dir[128];
    snprintf(dir, sizeof dir, "%s/e", c);
    cr_assert_eq(rw_synth_ensure_style(dir, 50, 10, 1, RW_SYNTH_PLAIN, err, sizeof err), 0, "%s",
                 err);
    size_t n;
    uint8_t *m = slurp(dir, "runaway-synthetic.txt", &n);
    m[n] = 0;
    cr_assert(strstr((char *)m, "style plain"), "%s", (char *)m);
    free(m);
    ino_t i1 = inode_of(dir, "data_batch_1.bin");
    cr_assert_eq(rw_synth_ensure_style(dir, 50, 10, 1, RW_SYNTH_PLAIN, err, sizeof err), 0, "%s",
                 err);
    cr_assert_eq(inode_of(dir, "data_batch_1.bin"), i1, "regenerated a current plain set");
    cr_assert_eq(rw_synth_ensure(dir, 50, 10, 1, err, sizeof err), 0, "%s", err);
    cr_assert_neq(inode_of(dir, "data_batch_1.bin"), i1, "took the plain set for the cluttered");
    m = slurp(dir, "runaway-synthetic.txt", &n);
    m[n] = 0;
    cr_assert(!strstr((char *)m, "style"), "%s", (char *)m);
    free(m);
    remove_dir(a), remove_dir(b), remove_dir(c);
}

/* ---- the loader ---- */

static rw_dataset small_set(int n)
{
    rw_dataset ds = {.n = n, .side = 32, .classes = 10, .labeled = n};
    ds.pixels = malloc((size_t)n * 3072);
    ds.labels = malloc((size_t)n);
    uint32_t s = 12345;
    for (size_t k = 0; k < (size_t)n * 3072; k++) {
        s = s * 1664525u + 1013904223u;
        ds.pixels[k] = (uint8_t)(s >> 24);
    }
    for (int i = 0; i < n; i++)
        ds.labels[i] = (uint8_t)(i % 10);
    return ds;
}

static rw_loader_cfg make_cfg(const rw_dataset *ds, int batch, int size, int threads)
{
    rw_loader_cfg c = {.ds = ds, .batch = batch, .out_size = size, .augment = RW_AUG_BYOL,
                       .seed = 99, .threads = threads};
    memcpy(c.mean, k_mean, sizeof c.mean);
    memcpy(c.std, k_std, sizeof c.std);
    return c;
}

typedef struct batch_buf {
    float *x1, *x2;
    int32_t *labels;
} batch_buf;

static batch_buf buf_new(const rw_loader_cfg *c)
{
    size_t v = (size_t)c->batch * 3 * c->out_size * c->out_size;
    batch_buf b = {malloc(v * sizeof(float)), malloc(v * sizeof(float)),
                   malloc((size_t)c->batch * sizeof(int32_t))};
    return b;
}

static void buf_free(batch_buf *b) { free(b->x1), free(b->x2), free(b->labels); }

static int buf_eq(const batch_buf *a, const batch_buf *b, const rw_loader_cfg *c)
{
    size_t v = (size_t)c->batch * 3 * c->out_size * c->out_size;
    return memcmp(a->x1, b->x1, v * sizeof(float)) == 0 &&
           memcmp(a->x2, b->x2, v * sizeof(float)) == 0 &&
           memcmp(a->labels, b->labels, (size_t)c->batch * sizeof(int32_t)) == 0;
}

Test(data, loader_bytes_do_not_depend_on_threads)
{
    rw_dataset ds = small_set(100);
    rw_loader_cfg c1 = make_cfg(&ds, 16, 32, 1), c3 = make_cfg(&ds, 16, 32, 3);
    char err[256];
    rw_loader *l1 = rw_loader_create(&c1, err, sizeof err);
    rw_loader *l3 = rw_loader_create(&c3, err, sizeof err);
    cr_assert(l1 && l3, "%s", err);
    cr_assert_eq(rw_loader_batches(l1), 6);
    batch_buf a = buf_new(&c1), b = buf_new(&c1);
    for (int e = 0; e < 2; e++) {
        for (long k = 0; k < 6; k++) {
            cr_assert_eq(rw_loader_next(l1, a.x1, a.x2, a.labels), 0);
            cr_assert_eq(rw_loader_next(l3, b.x1, b.x2, b.labels), 0);
            cr_assert(buf_eq(&a, &b, &c1), "epoch %d batch %ld differs", e, k);
        }
        cr_assert_eq(rw_loader_next(l1, a.x1, a.x2, a.labels), 1, "epoch end");
        cr_assert_eq(rw_loader_next(l3, b.x1, b.x2, b.labels), 1, "epoch end");
        rw_loader_seek(l1, e + 1, 0);
        rw_loader_seek(l3, e + 1, 0);
    }
    rw_loader_free(l1);
    rw_loader_free(l3);
    buf_free(&a), buf_free(&b);
    rw_dataset_free(&ds);
}

Test(data, loader_matches_the_per_sample_definition)
{
    rw_dataset ds = small_set(40);
    rw_loader_cfg c = make_cfg(&ds, 8, 24, 2);
    char err[256];
    rw_loader *ld = rw_loader_create(&c, err, sizeof err);
    cr_assert(ld, "%s", err);
    rw_loader_seek(ld, 3, 2);
    batch_buf a = buf_new(&c);
    cr_assert_eq(rw_loader_next(ld, a.x1, a.x2, a.labels), 0);
    int32_t perm[40];
    rw_epoch_perm(99, 3, 40, perm);
    size_t v = 3 * 24 * 24;
    float want[3 * 24 * 24], scratch[3 * 24 * 24];
    for (int k = 0; k < 8; k++) {
        int i = perm[16 + k];
        cr_assert_eq(a.labels[k], ds.labels[i]);
        rw_aug_view(&ds, i, 99, 3, 0, RW_AUG_BYOL, 24, k_mean, k_std, want, scratch);
        cr_assert(memcmp(a.x1 + k * v, want, sizeof want) == 0, "T1 of slot %d", k);
        rw_aug_view(&ds, i, 99, 3, 1, RW_AUG_BYOL, 24, k_mean, k_std, want, scratch);
        cr_assert(memcmp(a.x2 + k * v, want, sizeof want) == 0, "T2 of slot %d", k);
    }
    rw_loader_free(ld);
    buf_free(&a);
    rw_dataset_free(&ds);
}

Test(data, loader_seek_and_tell_resume_exactly)
{
    rw_dataset ds = small_set(90);
    rw_loader_cfg c = make_cfg(&ds, 8, 16, 2);
    char err[256];
    /* reference: two epochs straight through */
    rw_loader *ld = rw_loader_create(&c, err, sizeof err);
    cr_assert(ld, "%s", err);
    long nb = rw_loader_batches(ld);
    cr_assert_eq(nb, 11);
    batch_buf ref[22];
    for (int k = 0; k < 22; k++) {
        ref[k] = buf_new(&c);
        if (k == nb)
            rw_loader_seek(ld, 1, 0);
        cr_assert_eq(rw_loader_next(ld, ref[k].x1, ref[k].x2, ref[k].labels), 0);
    }
    int e;
    long b;
    rw_loader_tell(ld, &e, &b);
    cr_assert(e == 1 && b == 11, "tell %d,%ld", e, b);
    rw_loader_free(ld);

    /* a fresh loader resumed at each position gives the same batches */
    batch_buf x = buf_new(&c);
    ld = rw_loader_create(&c, err, sizeof err);
    int starts[] = {7, 0, 15, 21, 3, 11};
    for (int s = 0; s < 6; s++) {
        int k0 = starts[s];
        rw_loader_seek(ld, k0 / 11, k0 % 11);
        rw_loader_tell(ld, &e, &b);
        cr_assert(e == k0 / 11 && b == k0 % 11);
        for (int k = k0; k < k0 + 3 && k < 22; k++) {
            if (k % 11 == 0 && k != k0) {
                cr_assert_eq(rw_loader_next(ld, x.x1, x.x2, x.labels), 1);
                rw_loader_seek(ld, k / 11, 0);
            }
            cr_assert_eq(rw_loader_next(ld, x.x1, x.x2, x.labels), 0);
            cr_assert(buf_eq(&x, &ref[k], &c), "resumed at %d: batch %d differs", k0, k);
        }
    }
    /* seek to an exhausted epoch: nothing until the next epoch */
    rw_loader_seek(ld, 0, nb);
    cr_assert_eq(rw_loader_next(ld, x.x1, x.x2, x.labels), 1);
    rw_loader_seek(ld, 1, 0);
    cr_assert_eq(rw_loader_next(ld, x.x1, x.x2, x.labels), 0);
    cr_assert(buf_eq(&x, &ref[11], &c));
    rw_loader_free(ld);
    for (int k = 0; k < 22; k++)
        buf_free(&ref[k]);
    buf_free(&x);
    rw_dataset_free(&ds);
}

Test(data, loader_covers_each_sample_once_per_epoch)
{
    rw_dataset ds = small_set(100);
    for (int i = 0; i < 100; i++)
        ds.labels[i] = (uint8_t)(i % 10);
    /* mark each image: its first byte encodes its index */
    for (int i = 0; i < 100; i++)
        ds.pixels[(size_t)i * 3072] = (uint8_t)i;
    rw_loader_cfg c = make_cfg(&ds, 10, 8, 3);
    char err[256];
    rw_loader *ld = rw_loader_create(&c, err, sizeof err);
    cr_assert(ld, "%s", err);
    batch_buf x = buf_new(&c);
    int32_t perm0[100];
    for (int e = 0; e < 3; e++) {
        int seen[100] = {0};
        int32_t perm[100];
        rw_epoch_perm(99, e, 100, perm);
        for (int k = 0; k < 100; k++)
            seen[perm[k]]++;
        for (int i = 0; i < 100; i++)
            cr_assert_eq(seen[i], 1, "epoch %d: sample %d appears %d times", e, i, seen[i]);
        if (e == 0)
            memcpy(perm0, perm, sizeof perm);
        else
            cr_assert(memcmp(perm0, perm, sizeof perm) != 0, "epoch %d has epoch 0's order", e);
        int count[10] = {0};
        for (long b = 0; b < rw_loader_batches(ld); b++) {
            cr_assert_eq(rw_loader_next(ld, x.x1, x.x2, x.labels), 0);
            for (int k = 0; k < 10; k++) {
                cr_assert_eq(x.labels[k], perm[b * 10 + k] % 10);
                count[x.labels[k]]++;
            }
        }
        for (int l = 0; l < 10; l++)
            cr_assert_eq(count[l], 10);
        cr_assert_eq(rw_loader_next(ld, x.x1, x.x2, x.labels), 1);
        rw_loader_seek(ld, e + 1, 0);
    }
    rw_loader_free(ld);
    buf_free(&x);

    /* 100 samples in batches of 32: three batches, 4 samples dropped */
    rw_loader_cfg c32 = make_cfg(&ds, 32, 8, 2);
    ld = rw_loader_create(&c32, err, sizeof err);
    cr_assert_eq(rw_loader_batches(ld), 3);
    x = buf_new(&c32);
    for (int k = 0; k < 3; k++)
        cr_assert_eq(rw_loader_next(ld, x.x1, x.x2, x.labels), 0);
    cr_assert_eq(rw_loader_next(ld, x.x1, x.x2, x.labels), 1);
    rw_loader_free(ld);
    buf_free(&x);
    rw_dataset_free(&ds);
}

Test(data, loader_augment_none_gives_the_plain_image)
{
    rw_dataset ds = small_set(20);
    rw_loader_cfg c = make_cfg(&ds, 4, 40, 2);
    c.augment = RW_AUG_NONE;
    char err[256];
    rw_loader *ld = rw_loader_create(&c, err, sizeof err);
    cr_assert(ld, "%s", err);
    batch_buf x = buf_new(&c);
    cr_assert_eq(rw_loader_next(ld, x.x1, x.x2, x.labels), 0);
    int32_t perm[20];
    rw_epoch_perm(99, 0, 20, perm);
    size_t v = 3 * 40 * 40;
    static float want[3 * 40 * 40];
    for (int k = 0; k < 4; k++) {
        rw_image_plain(&ds, perm[k], 40, k_mean, k_std, want);
        cr_assert(memcmp(x.x1 + k * v, want, sizeof want) == 0);
        cr_assert(memcmp(x.x2 + k * v, want, sizeof want) == 0);
    }
    rw_loader_free(ld);
    buf_free(&x);
    rw_dataset_free(&ds);
}

Test(data, loader_rejects_bad_configs)
{
    rw_dataset ds = small_set(10);
    char err[256];
    rw_loader_cfg c = make_cfg(&ds, 11, 32, 1);
    cr_assert_null(rw_loader_create(&c, err, sizeof err));
    cr_assert(strstr(err, "batch 11"), "%s", err);
    c = make_cfg(&ds, 2, 4, 1);
    cr_assert_null(rw_loader_create(&c, err, sizeof err));
    cr_assert(strstr(err, "image size 4"), "%s", err);
    c = make_cfg(&ds, 2, 32, 0);
    cr_assert_null(rw_loader_create(&c, err, sizeof err));
    cr_assert(strstr(err, "threads 0"), "%s", err);
    c = make_cfg(&ds, 2, 32, 1);
    c.std[1] = 0;
    cr_assert_null(rw_loader_create(&c, err, sizeof err));
    cr_assert(strstr(err, "std[1]"), "%s", err);
    rw_loader_free(NULL);
    rw_dataset_free(&ds);
}

Test(data, loader_stops_cleanly_mid_epoch)
{
    /* free with batches in flight, right after a seek, and untouched */
    rw_dataset ds = small_set(200);
    for (int t = 1; t <= 4; t++) {
        rw_loader_cfg c = make_cfg(&ds, 16, 48, t);
        char err[256];
        rw_loader *ld = rw_loader_create(&c, err, sizeof err);
        cr_assert(ld, "%s", err);
        if (t % 2) {
            batch_buf x = buf_new(&c);
            cr_assert_eq(rw_loader_next(ld, x.x1, x.x2, x.labels), 0);
            rw_loader_seek(ld, 5, 3);
            buf_free(&x);
        }
        rw_loader_free(ld);
    }
    rw_dataset_free(&ds);
}

/* ---- show-augment ---- */

Test(data, show_augment_writes_a_readable_png)
{
    char dir[64];
    make_dir(dir, sizeof dir);
    rw_dataset ds = small_set(12);
    rw_loader_cfg c = make_cfg(&ds, 4, 40, 1);
    char path[256], err[512];
    snprintf(path, sizeof path, "%s/grid.png", dir);
    cr_assert_eq(rw_show_augment(&ds, &c, 5, path, err, sizeof err), 0, "%s", err);

    FILE *f = fopen(path, "rb");
    cr_assert(f);
    uint8_t sig[8];
    cr_assert_eq(fread(sig, 1, 8, f), 8u);
    cr_assert_eq(png_sig_cmp(sig, 0, 8), 0, "not a PNG");
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    cr_assert(png && info);
    if (setjmp(png_jmpbuf(png)))
        cr_assert_fail("libpng could not read %s", path);
    png_init_io(png, f);
    png_set_sig_bytes(png, 8);
    png_read_info(png, info);
    /* 3 tiles of 40 and 4 gaps of 2 across; 5 rows of 40 and 6 gaps down */
    cr_assert_eq(png_get_image_width(png, info), 3 * 40 + 4 * 2);
    cr_assert_eq(png_get_image_height(png, info), 5 * 40 + 6 * 2);
    cr_assert_eq(png_get_color_type(png, info), PNG_COLOR_TYPE_RGB);
    cr_assert_eq(png_get_bit_depth(png, info), 8);
    /* the original tile holds the first image of epoch 0's order */
    png_bytep row = malloc(png_get_rowbytes(png, info));
    for (int y = 0; y < 3; y++)
        png_read_row(png, row, NULL);
    int32_t perm[12];
    rw_epoch_perm(99, 0, 12, perm);
    /* tile pixel (0, 0) = source pixel (0, 0) up to the 40/32 resize:
     * top-left output clamps to the source's top-left */
    cr_assert(abs(row[2 * 3] - ds.pixels[(size_t)perm[0] * 3072]) <= 1, "%d vs %d", row[6],
              ds.pixels[(size_t)perm[0] * 3072]);
    free(row);
    png_destroy_read_struct(&png, &info, NULL);
    fclose(f);

    snprintf(path, sizeof path, "%s/no/such/dir/grid.png", dir);
    cr_assert_eq(rw_show_augment(&ds, &c, 2, path, err, sizeof err), -1);
    cr_assert(strstr(err, path), "%s", err);
    rw_dataset_free(&ds);
    remove_dir(dir);
}

/* Data parallel: the ranks' slices of each global batch, side by side, are
 * the whole batch, byte for byte; a global batch that does not split
 * evenly is refused. */
Test(data, loader_shards_tile_the_global_batch)
{
    rw_dataset ds = small_set(100);
    rw_loader_cfg whole = make_cfg(&ds, 24, 16, 2);
    char err[256];
    rw_loader *lw = rw_loader_create(&whole, err, sizeof err);
    cr_assert_not_null(lw, "%s", err);
    rw_loader *ls[3];
    rw_loader_cfg part[3];
    for (int r = 0; r < 3; r++) {
        part[r] = whole;
        part[r].shard_rank = r;
        part[r].shard_world = 3;
        ls[r] = rw_loader_create(&part[r], err, sizeof err);
        cr_assert_not_null(ls[r], "%s", err);
        cr_expect_eq(rw_loader_batches(ls[r]), rw_loader_batches(lw));
    }
    batch_buf bw = buf_new(&whole);
    rw_loader_cfg one = whole;
    one.batch = 8;
    batch_buf bs = buf_new(&one);
    size_t view = (size_t)3 * 16 * 16;
    for (int e = 0; e < 2; e++) {
        rw_loader_seek(lw, e, 0);
        for (int r = 0; r < 3; r++)
            rw_loader_seek(ls[r], e, 0);
        for (long b = 0; b < rw_loader_batches(lw); b++) {
            cr_assert_eq(rw_loader_next(lw, bw.x1, bw.x2, bw.labels), 0);
            for (int r = 0; r < 3; r++) {
                cr_assert_eq(rw_loader_next(ls[r], bs.x1, bs.x2, bs.labels), 0);
                cr_expect(memcmp(bs.x1, bw.x1 + r * 8 * view, 8 * view * sizeof(float)) == 0 &&
                              memcmp(bs.x2, bw.x2 + r * 8 * view, 8 * view * sizeof(float)) == 0 &&
                              memcmp(bs.labels, bw.labels + r * 8, 8 * sizeof(int32_t)) == 0,
                          "epoch %d batch %ld: rank %d's slice differs", e, b, r);
            }
        }
    }
    for (int r = 0; r < 3; r++)
        rw_loader_free(ls[r]);
    rw_loader_free(lw);
    rw_loader_cfg bad = whole;
    bad.shard_world = 5;
    cr_expect_null(rw_loader_create(&bad, err, sizeof err));
    cr_expect(strstr(err, "split evenly") != NULL, "got: %s", err);
    buf_free(&bw);
    buf_free(&bs);
    free(ds.pixels);
    free(ds.labels);
}
