/* data.kind imagefolder: the class order, decoding (grey and CMYK to RGB,
 * the resize and crop), errors that name the file, data.skip_bad, the
 * cache's reuse and rebuild, and a training run of `runaway-worker` on
 * the synthetic set written as an image folder. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon_fixture.h"
#include "worker/data_internal.h"

static char tmp[64];

static void setup(void)
{
    snprintf(tmp, sizeof tmp, "/tmp/rw-imagefolder-XXXXXX");
    cr_assert_not_null(mkdtemp(tmp));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    (void)!system(cmd);
}

TestSuite(imagefolder, .init = setup, .fini = teardown, .timeout = 120);

/* The notices of a load, joined by newlines. */
typedef struct notices {
    char text[8192];
} notices;

static void collect(void *ud, const char *line)
{
    notices *n = ud;
    size_t k = strlen(n->text);
    snprintf(n->text + k, sizeof n->text - k, "%s\n", line);
}

static void mkdirs(const char *fmt, ...)
{
    char path[512], err[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(path, sizeof path, fmt, ap);
    va_end(ap);
    cr_assert_eq(rw_mkdir_p(path, err, sizeof err), 0, "%s", err);
}

/* A w x h image of one colour at tmp/rel, PNG or JPEG by rel's extension. */
static void solid(const char *rel, int w, int h, uint8_t r, uint8_t g, uint8_t b)
{
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/%s", tmp, rel);
    uint8_t *pix = malloc((size_t)w * h * 3);
    for (int i = 0; i < w * h; i++) {
        pix[3 * i] = r;
        pix[3 * i + 1] = g;
        pix[3 * i + 2] = b;
    }
    int rc = strstr(rel, ".png") ? rw_write_png(path, pix, w, h, 3, err, sizeof err)
                                 : rw_write_jpeg(path, pix, w, h, 3, 95, err, sizeof err);
    free(pix);
    cr_assert_eq(rc, 0, "%s", err);
}

static void write_text(const char *rel, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tmp, rel);
    fx_write_file(path, text);
}

static int load(int train, int skip_bad, const char *cache, notices *n, rw_dataset *ds,
                char *err, size_t errlen)
{
    char dir[128];
    snprintf(dir, sizeof dir, "%s/set", tmp);
    rw_imagefolder_opts o = {.side = 16, .unlabeled = 1, .skip_bad = skip_bad, .threads = 2,
                             .cache_dir = cache, .notice = collect, .ud = n};
    return rw_imagefolder_load(dir, train, &o, ds, err, errlen);
}

/* A set of 2 classes x 3 images and a val/ of one image per class. */
static void small_set(void)
{
    mkdirs("%s/set/train/cat", tmp);
    mkdirs("%s/set/train/dog", tmp);
    mkdirs("%s/set/val/cat", tmp);
    mkdirs("%s/set/val/dog", tmp);
    for (int i = 0; i < 3; i++) {
        char rel[64];
        snprintf(rel, sizeof rel, "set/train/cat/%d.png", i);
        solid(rel, 20, 20, 200, 10, 10);
        snprintf(rel, sizeof rel, "set/train/dog/%d.jpg", i);
        solid(rel, 20, 20, 10, 10, 200);
    }
    solid("set/val/cat/a.jpg", 20, 20, 200, 10, 10);
    solid("set/val/dog/b.png", 20, 20, 10, 10, 200);
}

static uint8_t px(const rw_dataset *ds, int i, int c, int y, int x)
{
    return ds->pixels[(size_t)i * 3 * ds->side * ds->side + (size_t)c * ds->side * ds->side +
                      (size_t)y * ds->side + x];
}

/* Classes in byte order of their names, as torchvision's sorted(): upper
 * case before lower, "a" before "a_1"; val/'s labels are train/'s indices. */
Test(imagefolder, classes_in_byte_order_and_val_uses_train_indices)
{
    const char *names[] = {"b", "Z", "a_1", "B", "a"}; /* sorted: B Z a a_1 b */
    const int want[] = {4, 1, 3, 0, 2};
    for (int k = 0; k < 5; k++) {
        mkdirs("%s/set/train/%s", tmp, names[k]);
        char rel[64];
        snprintf(rel, sizeof rel, "set/train/%s/x.png", names[k]);
        solid(rel, 16, 16, (uint8_t)(40 * k), 0, 0);
    }
    mkdirs("%s/set/val/a_1", tmp);
    solid("set/val/a_1/y.jpg", 16, 16, 0, 0, 0);
    notices n = {0};
    rw_dataset tr, va;
    char err[1024];
    cr_assert_eq(load(1, 0, NULL, &n, &tr, err, sizeof err), 0, "%s", err);
    cr_assert_eq(load(0, 0, NULL, &n, &va, err, sizeof err), 0, "%s", err);
    cr_assert_eq(tr.n, 5);
    cr_expect_eq(tr.classes, 5);
    for (int i = 0; i < 5; i++) {
        int k = px(&tr, i, 0, 8, 8) / 40; /* which folder the image came from */
        cr_expect_eq(tr.labels[i], want[k], "image of %s: label %d, want %d", names[k],
                     tr.labels[i], want[k]);
    }
    cr_expect_eq(va.n, 1);
    cr_expect_eq(va.labels[0], 3, "val/a_1 is train's class 3, got %d", va.labels[0]);
    cr_expect_eq(va.classes, 5);
    rw_dataset_free(&tr);
    rw_dataset_free(&va);
}

/* A grey PNG, a grey JPEG and a CMYK JPEG (Adobe's inverted inks) come out
 * RGB; a 16-bit PNG too. */
Test(imagefolder, grey_and_cmyk_become_rgb)
{
    mkdirs("%s/set/train/c", tmp);
    mkdirs("%s/set/val/c", tmp);
    char path[512], err[1024];
    uint8_t grey[16 * 16], cmyk[16 * 16 * 4];
    memset(grey, 100, sizeof grey);
    for (int i = 0; i < 16 * 16; i++) { /* pure cyan ink: stored inverted */
        cmyk[4 * i] = 0;
        cmyk[4 * i + 1] = cmyk[4 * i + 2] = cmyk[4 * i + 3] = 255;
    }
    snprintf(path, sizeof path, "%s/set/train/c/1grey.png", tmp);
    cr_assert_eq(rw_write_png(path, grey, 16, 16, 1, err, sizeof err), 0, "%s", err);
    snprintf(path, sizeof path, "%s/set/train/c/2grey.jpg", tmp);
    cr_assert_eq(rw_write_jpeg(path, grey, 16, 16, 1, 95, err, sizeof err), 0, "%s", err);
    snprintf(path, sizeof path, "%s/set/train/c/3cmyk.jpg", tmp);
    cr_assert_eq(rw_write_jpeg(path, cmyk, 16, 16, 4, 95, err, sizeof err), 0, "%s", err);
    solid("set/val/c/v.png", 16, 16, 1, 2, 3);
    notices n = {0};
    rw_dataset ds;
    cr_assert_eq(load(1, 0, NULL, &n, &ds, err, sizeof err), 0, "%s", err);
    cr_assert_eq(ds.n, 3);
    for (int i = 0; i < 2; i++)
        for (int c = 0; c < 3; c++)
            cr_expect(abs(px(&ds, i, c, 5, 5) - 100) <= 2, "grey image %d channel %d: %d", i, c,
                      px(&ds, i, c, 5, 5));
    int r = px(&ds, 2, 0, 5, 5), g = px(&ds, 2, 1, 5, 5), b = px(&ds, 2, 2, 5, 5);
    cr_expect(r <= 8 && g >= 247 && b >= 247, "cyan ink: got RGB %d %d %d", r, g, b);
    rw_dataset_free(&ds);
}

/* The shorter side to `side`, then the centre: a 64x32 image, red left
 * half and blue right half, is cropped to its middle half: red then blue.
 * A uniform image stays uniform (the filter's weights sum to 1). */
Test(imagefolder, shorter_side_resized_then_centre_cropped)
{
    uint8_t rgb[32 * 64 * 3], out[3 * 16 * 16];
    for (int y = 0; y < 32; y++)
        for (int x = 0; x < 64; x++) {
            uint8_t *p = rgb + (y * 64 + x) * 3;
            p[0] = x < 32 ? 255 : 0;
            p[1] = 0;
            p[2] = x < 32 ? 0 : 255;
        }
    cr_assert_eq(rw_image_fit(rgb, 64, 32, 16, out), 0);
    cr_expect_eq(out[0 * 256 + 8 * 16 + 0], 255, "left column red: %d", out[8 * 16]);
    cr_expect_eq(out[2 * 256 + 8 * 16 + 15], 255, "right column blue");
    cr_expect_eq(out[0 * 256 + 8 * 16 + 15], 0, "right column not red");
    memset(rgb, 77, sizeof rgb);
    cr_assert_eq(rw_image_fit(rgb, 37, 51, 16, out), 0);
    for (int i = 0; i < 3 * 256; i++)
        cr_assert_eq(out[i], 77, "uniform image: byte %d is %d", i, out[i]);
    /* a downscale averages: a 1-pixel checkerboard becomes mid-grey, not
     * the aliased black or white a nearest-neighbour pick gives */
    for (int i = 0; i < 32 * 64; i++)
        memset(rgb + 3 * i, ((i % 64) + (i / 64)) % 2 ? 255 : 0, 3);
    cr_assert_eq(rw_image_fit(rgb, 64, 32, 8, out), 0);
    for (int i = 0; i < 3 * 64; i++)
        cr_assert(abs(out[i] - 128) <= 16, "checkerboard shrunk: byte %d is %d", i, out[i]);
}

/* A JPEG cut short and a text file named .png: errors naming the file and
 * why, before anything trains. */
Test(imagefolder, files_that_do_not_decode_are_named)
{
    small_set();
    char path[512], err[1024];
    notices n = {0};
    rw_dataset ds;
    /* truncated: the header whole, the scan cut */
    uint8_t noise[32 * 32 * 3];
    for (size_t i = 0; i < sizeof noise; i++)
        noise[i] = (uint8_t)(i * 7919 % 251);
    snprintf(path, sizeof path, "%s/set/train/dog/cut.jpg", tmp);
    cr_assert_eq(rw_write_jpeg(path, noise, 32, 32, 3, 95, err, sizeof err), 0, "%s", err);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(truncate(path, st.st_size / 2), 0);
    cr_assert_eq(load(1, 0, NULL, &n, &ds, err, sizeof err), -1);
    cr_expect(strstr(err, "train/dog/cut.jpg") && strstr(err, "JPEG"), "got: %s", err);
    cr_expect(strstr(err, "data.skip_bad") != NULL, "the way out is named: %s", err);
    unlink(path);

    write_text("set/train/cat/notes.png", "this is a text file, not a picture\n");
    cr_assert_eq(load(1, 0, NULL, &n, &ds, err, sizeof err), -1);
    cr_expect(strstr(err, "train/cat/notes.png") && strstr(err, "neither a JPEG nor a PNG"),
              "got: %s", err);
    /* a .png that is a JPEG is read by what it is, not its name */
    unlink(path);
}

/* data.skip_bad: the bad files are left out and counted in the log. */
Test(imagefolder, skip_bad_leaves_bad_files_out_and_counts_them)
{
    small_set();
    write_text("set/train/cat/bad1.png", "not an image");
    write_text("set/train/dog/bad2.jpg", "\xff\xd8\xff garbage");
    write_text("set/train/README.txt", "a file beside the classes: ignored");
    notices n = {0};
    rw_dataset ds;
    char err[1024];
    cr_assert_eq(load(1, 1, NULL, &n, &ds, err, sizeof err), 0, "%s", err);
    cr_expect_eq(ds.n, 6);
    cr_expect_eq(ds.labeled, 6);
    cr_expect(strstr(n.text, "skipped 2 files") && strstr(n.text, "bad1.png") &&
                  strstr(n.text, "bad2.jpg"),
              "notices: %s", n.text);
    for (int i = 0; i < ds.n; i++)
        cr_expect_eq(ds.labels[i], i < 3 ? 0 : 1, "image %d label %d", i, ds.labels[i]);
    rw_dataset_free(&ds);
}

Test(imagefolder, empty_class_folder_is_an_error)
{
    small_set();
    mkdirs("%s/set/train/emu", tmp);
    write_text("set/train/emu/notes.txt", "no images here");
    notices n = {0};
    rw_dataset ds;
    char err[1024];
    cr_assert_eq(load(1, 0, NULL, &n, &ds, err, sizeof err), -1);
    cr_expect(strstr(err, "set/train/emu") && strstr(err, "empty class folder"), "got: %s", err);
    cr_assert_eq(load(1, 1, NULL, &n, &ds, err, sizeof err), -1, "skip_bad skips files only");
}

Test(imagefolder, val_class_missing_from_train_is_an_error)
{
    small_set();
    mkdirs("%s/set/val/zebra", tmp);
    solid("set/val/zebra/z.png", 16, 16, 0, 0, 0);
    notices n = {0};
    rw_dataset ds;
    char err[1024];
    cr_assert_eq(load(1, 0, NULL, &n, &ds, err, sizeof err), 0, "%s", err);
    rw_dataset_free(&ds);
    cr_assert_eq(load(0, 0, NULL, &n, &ds, err, sizeof err), -1);
    cr_expect(strstr(err, "val/zebra") && strstr(err, "not in"), "got: %s", err);
}

Test(imagefolder, no_images_at_all_is_an_error)
{
    notices n = {0};
    rw_dataset ds;
    char err[1024];
    mkdirs("%s/set", tmp);
    cr_assert_eq(load(1, 0, NULL, &n, &ds, err, sizeof err), -1);
    cr_expect(strstr(err, "set/train") && strstr(err, "train/ and val/"), "got: %s", err);
    mkdirs("%s/set/train", tmp);
    cr_assert_eq(load(1, 0, NULL, &n, &ds, err, sizeof err), -1);
    cr_expect(strstr(err, "set/train") && strstr(err, "no class folders"), "got: %s", err);
}

/* Entries under dir, recursively (the data folder must not gain any). */
static int count_entries(const char *dir)
{
    char cmd[256], out[64] = "";
    snprintf(cmd, sizeof cmd, "find %s | wc -l", dir);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    cr_assert_not_null(fgets(out, sizeof out, p));
    pclose(p);
    return atoi(out);
}

/* The cache: written once, mapped after; rebuilt when a file is added,
 * removed or touched; nothing written into the data folder. */
Test(imagefolder, cache_reused_and_rebuilt_when_files_change)
{
    small_set();
    mkdirs("%s/set/unlabeled/part1", tmp);
    solid("set/unlabeled/part1/u.jpg", 24, 18, 9, 9, 9);
    char cache[128], set[128], err[1024];
    snprintf(cache, sizeof cache, "%s/cache", tmp);
    snprintf(set, sizeof set, "%s/set", tmp);
    int entries = count_entries(set);
    rw_dataset ds;
    notices n = {0};
    cr_assert_eq(load(1, 0, cache, &n, &ds, err, sizeof err), 0, "%s", err);
    cr_expect(strstr(n.text, "wrote the cache") != NULL, "first load: %s", n.text);
    cr_expect(ds.map != NULL, "the set is the mapped cache");
    cr_expect_eq(ds.n, 7);
    cr_expect_eq(ds.labeled, 6);
    cr_expect_eq(ds.labels[6], RW_NO_LABEL);
    uint8_t first[3 * 16 * 16];
    memcpy(first, ds.pixels, sizeof first);
    rw_dataset_free(&ds);

    n = (notices){0};
    cr_assert_eq(load(1, 0, cache, &n, &ds, err, sizeof err), 0, "%s", err);
    cr_expect(strstr(n.text, "from the cache") && !strstr(n.text, "decoding"),
              "second load maps it: %s", n.text);
    cr_expect(memcmp(first, ds.pixels, sizeof first) == 0, "the same pixels");
    rw_dataset_free(&ds);

    /* added, touched, removed: each a rebuild */
    solid("set/train/cat/new.png", 20, 20, 1, 1, 1);
    n = (notices){0};
    cr_assert_eq(load(1, 0, cache, &n, &ds, err, sizeof err), 0, "%s", err);
    cr_expect(strstr(n.text, "wrote the cache") && strstr(n.text, "added, removed or changed"),
              "after adding: %s", n.text);
    cr_expect_eq(ds.n, 8);
    rw_dataset_free(&ds);

    char path[256];
    snprintf(path, sizeof path, "%s/set/train/dog/1.jpg", tmp);
    struct timespec later[2] = {{1000000000, 0}, {1000000000, 0}};
    cr_assert_eq(utimensat(AT_FDCWD, path, later, 0), 0);
    n = (notices){0};
    cr_assert_eq(load(1, 0, cache, &n, &ds, err, sizeof err), 0, "%s", err);
    cr_expect(strstr(n.text, "wrote the cache") != NULL, "after touching: %s", n.text);
    rw_dataset_free(&ds);

    snprintf(path, sizeof path, "%s/set/train/cat/new.png", tmp);
    unlink(path);
    n = (notices){0};
    cr_assert_eq(load(1, 0, cache, &n, &ds, err, sizeof err), 0, "%s", err);
    cr_expect(strstr(n.text, "wrote the cache") != NULL, "after removing: %s", n.text);
    cr_expect_eq(ds.n, 7);
    rw_dataset_free(&ds);
    cr_expect_eq(count_entries(set), entries, "nothing written into the data folder");

    /* a cache made skipping a bad file is refused without skip_bad */
    write_text("set/train/cat/bad.png", "not an image");
    n = (notices){0};
    cr_assert_eq(load(1, 1, cache, &n, &ds, err, sizeof err), 0, "%s", err);
    rw_dataset_free(&ds);
    cr_assert_eq(load(1, 0, cache, &n, &ds, err, sizeof err), -1);
    cr_expect(strstr(err, "train/cat/bad.png") != NULL, "got: %s", err);

}

/* `runaway-worker synth --format imagefolder` writes PNG and JPEG files;
 * `runaway-worker run` trains on them with data.kind imagefolder. */
Test(imagefolder, synth_then_a_training_run)
{
    char exe[1100], dir[128], spec[128], o[128], out[16384], text[1024];
    fx_bin(exe, sizeof exe, "worker/runaway-worker");
    snprintf(dir, sizeof dir, "%s/synth", tmp);
    const char *synth[] = {exe, "synth", dir, "--format", "imagefolder", "--train", "96",
                           "--test", "20", "--unlabeled", "32", NULL};
    cr_assert_eq(fx_run(out, sizeof out, 60, synth), 0, "%s", out);
    char path[256];
    struct stat st;
    snprintf(path, sizeof path, "%s/train/class_03/000003.jpg", dir);
    cr_expect_eq(stat(path, &st), 0, "%s", path);
    snprintf(path, sizeof path, "%s/train/class_04/000004.png", dir);
    cr_expect_eq(stat(path, &st), 0, "%s", path);
    snprintf(path, sizeof path, "%s/unlabeled/000031.jpg", dir);
    cr_expect_eq(stat(path, &st), 0, "%s", path);

    snprintf(spec, sizeof spec, "%s/spec.yaml", tmp);
    snprintf(o, sizeof o, "%s/o", tmp);
    snprintf(text, sizeof text,
             "name: folder\nthreads: 1\n"
             "data: {kind: imagefolder, path: %s, image_size: 16, cache_size: 24}\n"
             "model: {stem: cifar, width: 2, projector: {hidden: 16, out: 8}, "
             "predictor_hidden: 16}\n"
             "optim: {batch_size: 32, epochs: 1}\n"
             "eval: {linear: {epochs: 1}, knn: {every: 1, k: 5}, rank: {every: 0}}\n",
             dir);
    fx_write_file(spec, text);
    const char *run[] = {exe, "run", spec, "--out", o, NULL};
    cr_assert_eq(fx_run(out, sizeof out, 120, run), 0, "%s", out);
    cr_expect(strstr(out, "128 images decoded") && strstr(out, "24x24"), "decoded: %s", out);
    cr_expect(strstr(out, "96 train (32 unlabeled)") || strstr(out, "128 train (32 unlabeled)"),
              "the set: %s", out);
    cr_expect(strstr(out, "linear evaluation") != NULL, "trained and evaluated: %s", out);
}

static int count_caches(const char *cache)
{
    char cmd[256], line[32] = "";
    snprintf(cmd, sizeof cmd, "ls %s/imagefolder-*.u8 2>/dev/null | wc -l", cache);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    cr_assert_not_null(fgets(line, sizeof line, p));
    pclose(p);
    return atoi(line);
}

/* A cache whose folder is gone is removed when another is written. */
Test(imagefolder, caches_of_removed_folders_are_swept)
{
    small_set();
    char cache[128], err[1024], cmd[512];
    snprintf(cache, sizeof cache, "%s/cache", tmp);
    notices n = {0};
    rw_dataset ds;
    cr_assert_eq(load(1, 0, cache, &n, &ds, err, sizeof err), 0, "%s", err);
    rw_dataset_free(&ds);
    snprintf(cmd, sizeof cmd, "mv %s/set %s/gone && cp -r %s/gone %s/set", tmp, tmp, tmp, tmp);
    cr_assert_eq(system(cmd), 0);
    cr_assert_eq(load(0, 0, cache, &n, &ds, err, sizeof err), 0, "%s", err);
    rw_dataset_free(&ds);
    cr_assert_eq(count_caches(cache), 2, "set/'s train and val caches");
    /* set/ removed: the next build (gone/'s) sweeps both of set/'s */
    snprintf(cmd, sizeof cmd, "rm -rf %s/set && mv %s/gone %s/set2", tmp, tmp, tmp);
    cr_assert_eq(system(cmd), 0);
    rw_imagefolder_opts o = {.side = 16, .threads = 1, .cache_dir = cache};
    char dir[128];
    snprintf(dir, sizeof dir, "%s/set2", tmp);
    cr_assert_eq(rw_imagefolder_load(dir, 1, &o, &ds, err, sizeof err), 0, "%s", err);
    rw_dataset_free(&ds);
    cr_expect_eq(count_caches(cache), 1, "only set2/'s cache is left");
}
