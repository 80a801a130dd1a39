/* A synthetic stand-in for CIFAR-10, written in its binary format (or in
 * CIFAR-100's or STL-10's), so that everything runs and is tested where no
 * copy of those sets exists.
 *
 * Class c is a shape (disc, square, triangle, ring, plus, bars, star,
 * crescent, T, dumbbell) in a class-typical hue (0.1*c turns, +-0.05, and a
 * random hue in half the images) with a class-typical texture (solid, stripes,
 * checker, radial gradient), drawn at a random position, size, rotation and
 * aspect over a random two-colour gradient background, with up to two small
 * distractor blobs and pixel noise. No single pixel tells the class; shape,
 * texture and colour together do, and they survive BYOL's augmentations.
 *
 * The plain style (data.synthetic.style: plain) draws its scenes from the
 * same stream of numbers with the clutter taken out: every object in its
 * class's hue (+-0.03), a little larger (radius 9-13 pixels instead of
 * 7-12), over a greyish background (saturation up to 0.15 instead of 0.6,
 * value 0.35-0.65 instead of 0.1-0.9), with no distractors. What tells its
 * classes apart is then what survives BYOL's augmentations and varies most
 * from image to image, which self-supervised training finds in a few hundred
 * steps (the quickstart) and an untrained encoder reads only in part.
 * Every image is a pure function of (style, seed, split, index). */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kernels/augment.h"
#include "worker/data_internal.h"

#define SYNTH_VERSION 1
#define SYNTH_MARKER "runaway-synthetic.txt"
#define SIDE RW_CIFAR_SIDE
#define PI_F 3.14159265358979f

/* ---- a stream of uniforms for one image ---- */

typedef struct synth_rng {
    uint64_t seed;
    uint32_t split, index, block;
    rw_u32x4 buf;
    int used;
} synth_rng;

static void rng_init(synth_rng *r, uint64_t seed, uint32_t split, uint32_t index)
{
    r->seed = seed;
    r->split = split;
    r->index = index;
    r->block = 0;
    r->used = 4;
}

static uint32_t rng_u32(synth_rng *r)
{
    if (r->used == 4) {
        r->buf = rw_rng4(r->seed, r->split, r->index, RW_RNG_STREAM_SYNTH, r->block++);
        r->used = 0;
    }
    return r->buf.v[r->used++];
}

static float rng_uniform(synth_rng *r, float a, float b)
{
    return a + (b - a) * rw_u01(rng_u32(r));
}

/* ---- colour ---- */

static void hsv_to_rgb(float h, float s, float v, float rgb[3])
{
    h -= floorf(h);
    float h6 = h * 6.0f;
    int i = (int)h6 % 6;
    float f = h6 - floorf(h6);
    float p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f));
    float tab[6][3] = {{v, t, p}, {q, v, p}, {p, v, t}, {p, q, v}, {t, p, v}, {v, p, q}};
    memcpy(rgb, tab[i], sizeof tab[i]);
}

/* ---- shapes in the unit frame (about radius 1 around the centre) ---- */

static int inside(int shape, float u, float v)
{
    float r2 = u * u + v * v;
    switch (shape) {
    case 0: /* disc */
        return r2 <= 1.0f;
    case 1: /* square */
        return fabsf(u) <= 0.8f && fabsf(v) <= 0.8f;
    case 2: { /* equilateral triangle: three half-planes */
        for (int k = 0; k < 3; k++) {
            float a = PI_F / 2 + 2 * PI_F * k / 3;
            if (u * cosf(a) + v * sinf(a) > 0.5f)
                return 0;
        }
        return 1;
    }
    case 3: /* ring */
        return r2 <= 1.0f && r2 >= 0.55f * 0.55f;
    case 4: /* plus */
        return (fabsf(u) <= 0.3f && fabsf(v) <= 1.0f) || (fabsf(v) <= 0.3f && fabsf(u) <= 1.0f);
    case 5: /* three parallel bars */
        return fabsf(u) <= 1.0f && fabsf(v) <= 1.0f && cosf(2.5f * PI_F * v) > 0.0f;
    case 6: { /* five-pointed star */
        float phi = atan2f(v, u);
        float lobe = 0.5f + 0.5f * cosf(5.0f * phi);
        return sqrtf(r2) <= 0.4f + 0.6f * lobe * lobe;
    }
    case 7: /* crescent: a disc minus an offset disc */
        return r2 <= 1.0f && (u - 0.45f) * (u - 0.45f) + v * v > 0.75f * 0.75f;
    case 8: /* T */
        return (v >= 0.4f && v <= 1.0f && fabsf(u) <= 1.0f) ||
               (fabsf(u) <= 0.3f && v >= -1.0f && v < 0.4f);
    default: /* dumbbell: two separate blobs */
        return (u - 0.55f) * (u - 0.55f) + v * v <= 0.45f * 0.45f ||
               (u + 0.55f) * (u + 0.55f) + v * v <= 0.45f * 0.45f;
    }
}

/* Brightness factor of the class texture at a shape-frame point. */
static float texture(int tex, float u, float v)
{
    switch (tex) {
    case 0: /* solid */
        return 1.0f;
    case 1: /* stripes */
        return sinf(2.5f * PI_F * u) > 0.0f ? 1.0f : 0.45f;
    case 2: /* checker */
        return sinf(2.0f * PI_F * u) * sinf(2.0f * PI_F * v) > 0.0f ? 1.0f : 0.45f;
    default: /* radial gradient, bright centre */
        return 1.0f - 0.55f * fminf(sqrtf(u * u + v * v), 1.0f);
    }
}

/* What a style changes; both draw the same numbers in the same order. */
typedef struct synth_look {
    float random_hue;     /* share of objects in a random hue */
    float hue_spread;     /* +- around the class's hue */
    float rad_lo, rad_hi; /* the object's radius, pixels */
    float bg_sat, bg_vlo, bg_vhi;
    float distractors; /* 0 .. this, rounded down */
} synth_look;

static const synth_look looks[] = {
    [RW_SYNTH_CLUTTERED] = {0.5f, 0.05f, 7.0f, 12.0f, 0.6f, 0.1f, 0.9f, 3.0f},
    [RW_SYNTH_PLAIN] = {0.0f, 0.03f, 9.0f, 13.0f, 0.15f, 0.35f, 0.65f, 0.0f},
};

/* Renders image `index` of a split with label `label` into (3, 32, 32) bytes. */
static void synth_image(rw_synth_style style, uint64_t seed, uint32_t split, uint32_t index,
                        int label, uint8_t *img)
{
    const synth_look *lk = &looks[style == RW_SYNTH_PLAIN ? RW_SYNTH_PLAIN : RW_SYNTH_CLUTTERED];
    synth_rng r;
    rng_init(&r, seed, split, index);

    /* the object */
    float hue = rng_uniform(&r, 0.0f, 1.0f) < lk->random_hue
                    ? rng_uniform(&r, 0.0f, 1.0f)
                    : 0.1f * (float)label + rng_uniform(&r, -lk->hue_spread, lk->hue_spread);
    float fg[3];
    hsv_to_rgb(hue, rng_uniform(&r, 0.55f, 1.0f), rng_uniform(&r, 0.55f, 1.0f), fg);
    float cx = rng_uniform(&r, 10.0f, 22.0f), cy = rng_uniform(&r, 10.0f, 22.0f);
    float rad = rng_uniform(&r, lk->rad_lo, lk->rad_hi);
    float aspect = expf(rng_uniform(&r, -0.2f, 0.2f));
    float theta = rng_uniform(&r, 0.0f, 2.0f * PI_F);
    float ct = cosf(theta), st = sinf(theta);
    float sx = 1.0f / (rad * aspect), sy = aspect / rad;
    int tex = label % 4;

    /* the background: a linear gradient between two random colours */
    float bg0[3], bg1[3];
    hsv_to_rgb(rng_uniform(&r, 0, 1), rng_uniform(&r, 0, lk->bg_sat),
               rng_uniform(&r, lk->bg_vlo, lk->bg_vhi), bg0);
    hsv_to_rgb(rng_uniform(&r, 0, 1), rng_uniform(&r, 0, lk->bg_sat),
               rng_uniform(&r, lk->bg_vlo, lk->bg_vhi), bg1);
    float gdir = rng_uniform(&r, 0.0f, 2.0f * PI_F);
    float gx = cosf(gdir) / SIDE, gy = sinf(gdir) / SIDE;

    /* distractors: small hard-edged blobs in random colours */
    int nd = (int)(rng_uniform(&r, 0.0f, lk->distractors));
    float dx[2], dy[2], dr[2], dc[2][3];
    for (int k = 0; k < 2; k++) {
        dx[k] = rng_uniform(&r, 0.0f, SIDE);
        dy[k] = rng_uniform(&r, 0.0f, SIDE);
        dr[k] = rng_uniform(&r, 1.5f, 3.0f);
        hsv_to_rgb(rng_uniform(&r, 0, 1), rng_uniform(&r, 0, 1), rng_uniform(&r, 0.2f, 1), dc[k]);
    }

    float pix[3][SIDE * SIDE];
    for (int y = 0; y < SIDE; y++) {
        for (int x = 0; x < SIDE; x++) {
            float t = 0.5f + (x - SIDE / 2.0f) * gx + (y - SIDE / 2.0f) * gy;
            t = fminf(fmaxf(t, 0.0f), 1.0f);
            float acc[3] = {0, 0, 0};
            /* 2x2 supersampling: anti-aliased edges */
            for (int s = 0; s < 4; s++) {
                float px = x + 0.25f + 0.5f * (s & 1) - cx, py = y + 0.25f + 0.5f * (s >> 1) - cy;
                float u = (ct * px + st * py) * sx, v = (-st * px + ct * py) * sy;
                if (inside(label, u, v)) {
                    float b = texture(tex, u, v);
                    for (int ch = 0; ch < 3; ch++)
                        acc[ch] += fg[ch] * b;
                } else {
                    for (int ch = 0; ch < 3; ch++)
                        acc[ch] += bg0[ch] + (bg1[ch] - bg0[ch]) * t;
                }
            }
            for (int ch = 0; ch < 3; ch++)
                pix[ch][y * SIDE + x] = 0.25f * acc[ch];
            for (int k = 0; k < nd; k++) {
                float ddx = x + 0.5f - dx[k], ddy = y + 0.5f - dy[k];
                if (ddx * ddx + ddy * ddy <= dr[k] * dr[k])
                    for (int ch = 0; ch < 3; ch++)
                        pix[ch][y * SIDE + x] = dc[k][ch];
            }
        }
    }

    /* noise: triangular, +-0.06, from 16-bit halves of the stream */
    float amp = 0.06f;
    for (int o = 0; o < 3 * SIDE * SIDE; o += 2) {
        uint32_t a = rng_u32(&r), b = rng_u32(&r);
        float n0 = ((a & 0xffff) + (b & 0xffff)) / 65536.0f - 1.0f;
        float n1 = ((a >> 16) + (b >> 16)) / 65536.0f - 1.0f;
        float *flat = &pix[0][0];
        float v0 = flat[o] + amp * n0, v1 = flat[o + 1] + amp * n1;
        img[o] = (uint8_t)lrintf(255.0f * fminf(fmaxf(v0, 0.0f), 1.0f));
        img[o + 1] = (uint8_t)lrintf(255.0f * fminf(fmaxf(v1, 0.0f), 1.0f));
    }
}

void rw_synth_image(uint64_t seed, uint32_t split, uint32_t index, int label, uint8_t *img)
{
    synth_image(RW_SYNTH_CLUTTERED, seed, split, index, label, img);
}

/* ---- files ---- */

int rw_mkdir_p(const char *dir, char *err, size_t errlen)
{
    char buf[4096];
    size_t len = strlen(dir);
    if (len == 0 || len >= sizeof buf) {
        snprintf(err, errlen, "%s: bad directory name", dir);
        return -1;
    }
    memcpy(buf, dir, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (buf[i] == '/' || buf[i] == '\0') {
            char c = buf[i];
            buf[i] = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST) {
                snprintf(err, errlen, "%s: cannot create directory: %s", buf, strerror(errno));
                return -1;
            }
            buf[i] = c;
        }
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "%s: not a directory", dir);
        return -1;
    }
    return 0;
}

/* Opens a temporary file next to final_path; the caller renames it. */
static FILE *open_temp(const char *final_path, char *tmp, size_t tmplen, char *err,
                       size_t errlen)
{
    static unsigned counter;
    unsigned c = __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED);
    int n = snprintf(tmp, tmplen, "%s.tmp.%ld.%u", final_path, (long)getpid(), c);
    if (n < 0 || (size_t)n >= tmplen) {
        snprintf(err, errlen, "%s: path too long", final_path);
        return NULL;
    }
    FILE *f = fopen(tmp, "wb");
    if (!f)
        snprintf(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
    return f;
}

/* Flushes, syncs and renames a temporary file into place. */
static int commit_temp(FILE *f, const char *tmp, const char *final_path, char *err,
                       size_t errlen)
{
    int bad = ferror(f) || fflush(f) != 0 || fsync(fileno(f)) != 0;
    int e = errno;
    if (fclose(f) != 0 && !bad) {
        bad = 1;
        e = errno;
    }
    if (bad) {
        snprintf(err, errlen, "%s: write failed: %s", tmp, strerror(e));
        unlink(tmp);
        return -1;
    }
    if (rename(tmp, final_path) != 0) {
        snprintf(err, errlen, "%s: cannot rename into place: %s", final_path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* What one file of a split holds. */
typedef enum {
    REC_CIFAR10,  /* label, 3072 pixel bytes */
    REC_CIFAR100, /* coarse label, fine label, 3072 pixel bytes */
    REC_STL_X,    /* 3x96x96 pixel bytes, each channel column by column */
    REC_STL_Y,    /* label 1..10 */
} rec_kind;

/* The 32x32 image scaled up 3x (nearest) into STL-10's column order. */
static void stl_image(const uint8_t *img, uint8_t *out)
{
    const int S = RW_STL10_SIDE;
    for (int ch = 0; ch < 3; ch++)
        for (int x = 0; x < S; x++)
            for (int y = 0; y < S; y++)
                out[ch * S * S + x * S + y] = img[ch * SIDE * SIDE + (y / 3) * SIDE + x / 3];
}

/* Images first .. first+count-1 of a split, class k % 10, as `rk` records. */
static int write_split_file(const char *dir, const char *name, rec_kind rk,
                            rw_synth_style style, uint64_t seed, uint32_t split, int first,
                            int count, char *err, size_t errlen)
{
    char path[4096], tmp[4200];
    int n = snprintf(path, sizeof path, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= sizeof path) {
        snprintf(err, errlen, "%s: path too long", dir);
        return -1;
    }
    FILE *f = open_temp(path, tmp, sizeof tmp, err, errlen);
    if (!f)
        return -1;
    uint8_t rec[2 + 3 * SIDE * SIDE];
    uint8_t big[3 * RW_STL10_SIDE * RW_STL10_SIDE];
    for (int k = first; k < first + count; k++) {
        int c = k % 10, ok = 1;
        if (rk == REC_STL_Y) {
            ok = fputc(c + 1, f) != EOF;
        } else {
            int head = rk == REC_CIFAR10 ? 1 : rk == REC_CIFAR100 ? 2 : 0;
            rec[0] = (uint8_t)(rk == REC_CIFAR100 ? c / 5 : c);
            rec[1] = (uint8_t)c;
            synth_image(style, seed, split, (uint32_t)k, c, rec + head);
            if (rk == REC_STL_X) {
                stl_image(rec, big);
                ok = fwrite(big, 1, sizeof big, f) == sizeof big;
            } else {
                size_t len = (size_t)head + 3 * SIDE * SIDE;
                ok = fwrite(rec, 1, len, f) == len;
            }
        }
        if (!ok)
            break; /* commit_temp sees ferror */
    }
    return commit_temp(f, tmp, path, err, errlen);
}

/* Images in train file k (0..4): n_train split as evenly as possible. */
static int train_count(int n_train, int k) { return n_train / 5 + (k < n_train % 5); }

int rw_synth_write_style(const char *dir, int n_train, int n_test, uint64_t seed,
                         rw_synth_style style, char *err, size_t errlen)
{
    if (n_train < 5 || n_test < 1 || n_train > 10000000 || n_test > 10000000) {
        snprintf(err, errlen,
                 "%s: synthetic set needs 5 <= train <= 10000000 and 1 <= test <= 10000000 "
                 "(got train %d, test %d)",
                 dir, n_train, n_test);
        return -1;
    }
    if (rw_mkdir_p(dir, err, errlen) != 0)
        return -1;
    int first = 0;
    for (int k = 0; k < 5; k++) {
        char name[32];
        snprintf(name, sizeof name, "data_batch_%d.bin", k + 1);
        int count = train_count(n_train, k);
        if (write_split_file(dir, name, REC_CIFAR10, style, seed, 0, first, count, err,
                             errlen) != 0)
            return -1;
        first += count;
    }
    return write_split_file(dir, "test_batch.bin", REC_CIFAR10, style, seed, 1, 0, n_test, err,
                            errlen);
}

int rw_synth_write(const char *dir, int n_train, int n_test, uint64_t seed, char *err,
                   size_t errlen)
{
    return rw_synth_write_style(dir, n_train, n_test, seed, RW_SYNTH_CLUTTERED, err, errlen);
}

int rw_synth_check_counts(const char *dir, const char *what, int min, int n_train, int n_test,
                          int n_unlabeled, char *err, size_t errlen)
{
    if (n_train >= min && n_test >= min && n_unlabeled >= 0 && n_train <= 10000000 &&
        n_test <= 10000000 && n_unlabeled <= 10000000)
        return 0;
    snprintf(err, errlen, "%s: %s needs %d <= train, test <= 10000000 and 0 <= unlabeled <= "
             "10000000 (got train %d, test %d, unlabeled %d)",
             dir, what, min, n_train, n_test, n_unlabeled);
    return -1;
}

int rw_synth_write_as(const char *dir, rw_data_kind kind, int n_train, int n_test,
                      int n_unlabeled, uint64_t seed, char *err, size_t errlen)
{
    if (kind == RW_DATA_SYNTHETIC || kind == RW_DATA_CIFAR10)
        return rw_synth_write(dir, n_train, n_test, seed, err, errlen);
    if (kind != RW_DATA_CIFAR100 && kind != RW_DATA_STL10) {
        snprintf(err, errlen, "%s: no binary layout for this data kind (an image folder is "
                 "rw_synth_write_imagefolder's)", dir);
        return -1;
    }
    if (rw_synth_check_counts(dir, "synthetic set", 1, n_train, n_test, n_unlabeled, err,
                              errlen) != 0 ||
        rw_mkdir_p(dir, err, errlen) != 0)
        return -1;
    if (kind == RW_DATA_CIFAR100)
        return write_split_file(dir, "train.bin", REC_CIFAR100, RW_SYNTH_CLUTTERED, seed, 0, 0,
                                n_train, err, errlen) ||
               write_split_file(dir, "test.bin", REC_CIFAR100, RW_SYNTH_CLUTTERED, seed, 1, 0,
                                n_test, err, errlen)
                   ? -1
                   : 0;
    /* STL-10; the unlabeled images are a third split of the generator */
    const rw_synth_style cl = RW_SYNTH_CLUTTERED;
    if (write_split_file(dir, "train_X.bin", REC_STL_X, cl, seed, 0, 0, n_train, err, errlen) ||
        write_split_file(dir, "train_y.bin", REC_STL_Y, cl, seed, 0, 0, n_train, err, errlen) ||
        write_split_file(dir, "test_X.bin", REC_STL_X, cl, seed, 1, 0, n_test, err, errlen) ||
        write_split_file(dir, "test_y.bin", REC_STL_Y, cl, seed, 1, 0, n_test, err, errlen))
        return -1;
    return n_unlabeled ? write_split_file(dir, "unlabeled_X.bin", REC_STL_X, cl, seed, 2, 0,
                                          n_unlabeled, err, errlen)
                       : 0;
}

/* The cluttered style's marker is the one written before styles came. */
static void marker_text(char *buf, size_t len, int n_train, int n_test, uint64_t seed,
                        rw_synth_style style)
{
    snprintf(buf, len,
             "runaway synthetic CIFAR-10-format data, generator version %d\n"
             "train %d\ntest %d\nseed %llu\n%s",
             SYNTH_VERSION, n_train, n_test, (unsigned long long)seed,
             style == RW_SYNTH_PLAIN ? "style plain\n" : "");
}

/* Does dir hold a complete set for these parameters? */
static int synth_present(const char *dir, const char *want, int n_train, int n_test)
{
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s", dir, SYNTH_MARKER) >= (int)sizeof path)
        return 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    char have[512];
    size_t n = fread(have, 1, sizeof have - 1, f);
    fclose(f);
    have[n] = '\0';
    if (strcmp(have, want) != 0)
        return 0;
    for (int k = 0; k < 6; k++) {
        char name[32];
        long long count = k < 5 ? train_count(n_train, k) : n_test;
        snprintf(name, sizeof name, k < 5 ? "data_batch_%d.bin" : "test_batch.bin", k + 1);
        struct stat st;
        if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path ||
            stat(path, &st) != 0 || (long long)st.st_size != count * RW_CIFAR_RECORD)
            return 0;
    }
    return 1;
}

int rw_synth_ensure_style(const char *dir, int n_train, int n_test, uint64_t seed,
                          rw_synth_style style, char *err, size_t errlen)
{
    char want[512];
    marker_text(want, sizeof want, n_train, n_test, seed, style);
    if (synth_present(dir, want, n_train, n_test))
        return 0;

    /* drop a stale marker first: a crash mid-way must not leave one behind */
    char path[4096], tmp[4200];
    if (snprintf(path, sizeof path, "%s/%s", dir, SYNTH_MARKER) >= (int)sizeof path) {
        snprintf(err, errlen, "%s: path too long", dir);
        return -1;
    }
    if (unlink(path) != 0 && errno != ENOENT) {
        snprintf(err, errlen, "%s: cannot remove stale marker: %s", path, strerror(errno));
        return -1;
    }
    if (rw_synth_write_style(dir, n_train, n_test, seed, style, err, errlen) != 0)
        return -1;
    FILE *f = open_temp(path, tmp, sizeof tmp, err, errlen);
    if (!f)
        return -1;
    fputs(want, f);
    return commit_temp(f, tmp, path, err, errlen);
}

int rw_synth_ensure(const char *dir, int n_train, int n_test, uint64_t seed, char *err,
                    size_t errlen)
{
    return rw_synth_ensure_style(dir, n_train, n_test, seed, RW_SYNTH_CLUTTERED, err, errlen);
}
