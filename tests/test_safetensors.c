/* safetensors: bit-exact round trip, every kind of corruption gives a clear
 * error (never a crash), atomic writes, and the format as other readers and
 * writers (Python, per the safetensors spec) see it. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "worker/safetensors.h"

static char tmpdir[256];

static void mk_tmpdir(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/rw_test_st.XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
}

static void rm_tmpdir(void) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "cleanup of %s failed\n", tmpdir);
}

TestSuite(safetensors, .init = mk_tmpdir, .fini = rm_tmpdir, .timeout = 20);

static const char *tpath(const char *rel) {
    static char bufs[4][512];
    static int k;
    char *p = bufs[k++ & 3];
    snprintf(p, 512, "%s/%s", tmpdir, rel);
    return p;
}

static unsigned char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)n + 1);
    cr_assert_eq(fread(b, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return b;
}

static void spit(const char *path, const void *b, size_t len) {
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(b, 1, len, f), len);
    fclose(f);
}

/* Counts names in tmpdir containing ".tmp." (leftover temporaries). */
static int count_temps(void) {
    DIR *d = opendir(tmpdir);
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strstr(e->d_name, ".tmp.")) n++;
    closedir(d);
    return n;
}

/* The reference content: exact in float so text round trips are exact too. */
static float a_data[6], b_data[5], s_data[1];
static int64_t i64_data[3] = {-1, INT64_C(1) << 40, 7};
static int32_t i32_data[4] = {1, -2, 3, -4};
static unsigned char u8_data[7] = {0, 1, 2, 250, 251, 254, 255};
static const int64_t a_shape[] = {2, 3}, b_shape[] = {5}, z_shape[] = {0, 4}, i64_shape[] = {3},
                     i32_shape[] = {2, 2}, u8_shape[] = {7};

static void fill_ref(void) {
    for (int i = 0; i < 6; i++) a_data[i] = (float)i * 0.25f - 1.0f;
    for (int i = 0; i < 5; i++) b_data[i] = 1.0f / (float)(1 << i);
    s_data[0] = 3.5f;
}

/* Writes the reference file; returns its path. */
static const char *write_ref(const char *rel) {
    fill_ref();
    rw_st_writer *w = rw_st_writer_new();
    cr_assert_not_null(w);
    /* U8 first: the writer must still align the wider tensors */
    cr_assert_eq(rw_st_add(w, "rng.bytes", RW_ST_U8, u8_shape, 1, u8_data), 0);
    cr_assert_eq(rw_st_add_f32(w, "enc.conv1.weight", a_shape, 2, a_data), 0);
    cr_assert_eq(rw_st_add_f32(w, "proj.bias", b_shape, 1, b_data), 0);
    cr_assert_eq(rw_st_add_f32(w, "scalar", NULL, 0, s_data), 0);
    cr_assert_eq(rw_st_add_f32(w, "empty", z_shape, 2, NULL), 0);
    cr_assert_eq(rw_st_add(w, "step", RW_ST_I64, i64_shape, 1, i64_data), 0);
    cr_assert_eq(rw_st_add(w, "counts", RW_ST_I32, i32_shape, 2, i32_data), 0);
    cr_assert_eq(rw_st_set_meta(w, "format", "runaway-checkpoint-v1"), 0);
    cr_assert_eq(rw_st_set_meta(w, "spec", "name: \"x\"\nseed: 1\n"), 0);
    cr_assert_eq(rw_st_set_meta(w, "format", "runaway-checkpoint-v2"), 0); /* replaces */
    const char *p = tpath(rel);
    char err[512] = "";
    cr_assert_eq(rw_st_write(w, p, err, sizeof err), 0, "%s", err);
    rw_st_writer_free(w);
    return p;
}

Test(safetensors, round_trip_bit_exact) {
    const char *p = write_ref("ref.safetensors");
    char err[512] = "";
    rw_st *st = rw_st_open(p, err, sizeof err);
    cr_assert_not_null(st, "%s", err);
    cr_assert_eq(rw_st_count(st), 7);

    float a[6], b[5], s[1];
    cr_assert_eq(rw_st_get_f32(st, "enc.conv1.weight", a_shape, 2, a, err, sizeof err), 0, "%s", err);
    cr_assert(memcmp(a, a_data, sizeof a) == 0);
    cr_assert_eq(rw_st_get_f32(st, "proj.bias", b_shape, 1, b, err, sizeof err), 0, "%s", err);
    cr_assert(memcmp(b, b_data, sizeof b) == 0);
    cr_assert_eq(rw_st_get_f32(st, "scalar", NULL, 0, s, err, sizeof err), 0, "%s", err);
    cr_assert_eq(s[0], 3.5f);
    cr_assert_eq(rw_st_get_f32(st, "empty", z_shape, 2, NULL, err, sizeof err), 0, "%s", err);
    int64_t q[3];
    cr_assert_eq(rw_st_get(st, "step", RW_ST_I64, i64_shape, 1, q, err, sizeof err), 0, "%s", err);
    cr_assert(memcmp(q, i64_data, sizeof q) == 0);
    int32_t c[4];
    cr_assert_eq(rw_st_get(st, "counts", RW_ST_I32, i32_shape, 2, c, err, sizeof err), 0, "%s", err);
    cr_assert(memcmp(c, i32_data, sizeof c) == 0);
    unsigned char u[7];
    cr_assert_eq(rw_st_get(st, "rng.bytes", RW_ST_U8, u8_shape, 1, u, err, sizeof err), 0, "%s", err);
    cr_assert(memcmp(u, u8_data, sizeof u) == 0);

    const rw_st_tensor *t = rw_st_find(st, "enc.conv1.weight");
    cr_assert_not_null(t);
    cr_assert_eq(t->dtype, RW_ST_F32);
    cr_assert_eq(t->ndim, 2);
    cr_assert_eq(t->shape[0], 2);
    cr_assert_eq(t->shape[1], 3);
    cr_assert_eq(t->numel, 6);
    cr_assert_eq(t->nbytes, 24);
    cr_assert_null(rw_st_find(st, "nope"));

    /* every tensor starts at a multiple of its element size */
    for (size_t i = 0; i < rw_st_count(st); i++) {
        const rw_st_tensor *ti = rw_st_at(st, i);
        cr_assert_eq((uintptr_t)ti->data % rw_st_dtype_size(ti->dtype), 0, "%s misaligned", ti->name);
    }
    cr_assert_null(rw_st_at(st, 99));

    cr_assert_str_eq(rw_st_meta(st, "format"), "runaway-checkpoint-v2");
    cr_assert_str_eq(rw_st_meta(st, "spec"), "name: \"x\"\nseed: 1\n");
    cr_assert_not_null(rw_st_meta(st, "crc32"));
    cr_assert_eq(strlen(rw_st_meta(st, "crc32")), 8);
    cr_assert_null(rw_st_meta(st, "nope"));
    cr_assert_eq(rw_st_meta_count(st), 3);
    const char *k, *v;
    cr_assert_eq(rw_st_meta_at(st, 0, &k, &v), 0);
    cr_assert_neq(rw_st_meta_at(st, 3, &k, &v), 0);
    rw_st_close(st);
}

/* F64 (a checkpoint's step reports): every bit kept, NaN and -0 too, the
 * name in the header, and an 8-byte alignment after a U8 tensor. */
Test(safetensors, f64_round_trip_keeps_every_bit) {
    const double v[6] = {-0.0, NAN, 1.0 / 3.0, 4.9e-324, -1.7976931348623157e308, 1e-300};
    const int64_t shape[2] = {2, 3}, one = 3;
    const unsigned char pad[3] = {1, 2, 3};
    rw_st_writer *w = rw_st_writer_new();
    cr_assert_eq(rw_st_add(w, "pad", RW_ST_U8, &one, 1, pad), 0);
    cr_assert_eq(rw_st_add(w, "runaway.step_history", RW_ST_F64, shape, 2, v), 0);
    const char *p = tpath("f64.safetensors");
    char err[512] = "";
    cr_assert_eq(rw_st_write(w, p, err, sizeof err), 0, "%s", err);
    rw_st_writer_free(w);
    size_t len;
    unsigned char *raw = slurp(p, &len);
    raw[len] = 0;
    cr_assert_not_null(strstr((char *)raw + 8, "\"dtype\":\"F64\""), "header: %s", raw + 8);
    free(raw);
    rw_st *st = rw_st_open(p, err, sizeof err);
    cr_assert_not_null(st, "%s", err);
    const rw_st_tensor *t = rw_st_find(st, "runaway.step_history");
    cr_assert(t && t->dtype == RW_ST_F64 && t->nbytes == sizeof v && t->numel == 6);
    cr_assert_eq((uintptr_t)t->data % 8, 0);
    double got[6];
    cr_assert_eq(rw_st_get(st, "runaway.step_history", RW_ST_F64, shape, 2, got, err, sizeof err),
                 0, "%s", err);
    cr_assert(memcmp(got, v, sizeof v) == 0, "bits changed");
    cr_assert_eq(rw_st_get(st, "runaway.step_history", RW_ST_F32, shape, 2, got, err, sizeof err),
                 -1, "read as F32");
    rw_st_close(st);
}

Test(safetensors, header_layout) {
    const char *p = write_ref("ref.safetensors");
    size_t len;
    unsigned char *f = slurp(p, &len);
    uint64_t n = 0;
    for (int i = 0; i < 8; i++) n |= (uint64_t)f[i] << (8 * i);
    cr_assert_eq(n % 8, 0, "header length %llu not a multiple of 8", (unsigned long long)n);
    cr_assert_eq(f[8], '{');
    cr_assert(8 + n <= len);
    /* the padding is spaces, after the closing brace */
    size_t end = 8 + (size_t)n;
    while (end > 8 && f[end - 1] == ' ') end--;
    cr_assert_eq(f[end - 1], '}');
    /* data = 24 + 20 + 4 + 0 (F32) + 24 (I64) + 16 (I32) + 7 (U8) */
    cr_assert_eq(len - 8 - n, 24 + 20 + 4 + 24 + 16 + 7);
    free(f);
}

Test(safetensors, get_errors_name_the_tensor) {
    const char *p = write_ref("ref.safetensors");
    char err[512] = "";
    rw_st *st = rw_st_open(p, err, sizeof err);
    cr_assert_not_null(st, "%s", err);
    float buf[64];
    const int64_t wrong[] = {3, 2};
    cr_assert_neq(rw_st_get_f32(st, "enc.conv1.weight", wrong, 2, buf, err, sizeof err), 0);
    cr_assert(strstr(err, "ref.safetensors") && strstr(err, "'enc.conv1.weight'") &&
                  strstr(err, "[2, 3]") && strstr(err, "expected [3, 2]"),
              "%s", err);
    cr_assert_neq(rw_st_get_f32(st, "enc.conv1.weight", a_shape, 1, buf, err, sizeof err), 0);
    cr_assert(strstr(err, "expected [2]"), "%s", err);
    cr_assert_neq(rw_st_get_f32(st, "pred.weight", a_shape, 2, buf, err, sizeof err), 0);
    cr_assert(strstr(err, "ref.safetensors: tensor 'pred.weight' not found"), "%s", err);
    cr_assert_neq(rw_st_get_f32(st, "step", i64_shape, 1, buf, err, sizeof err), 0);
    cr_assert(strstr(err, "'step' is I64, expected F32"), "%s", err);
    rw_st_close(st);
}

static void expect_open_fails(const char *p, const char *sub) {
    char err[512] = "";
    rw_st *st = rw_st_open(p, err, sizeof err);
    if (st) rw_st_close(st);
    cr_assert_null(st, "expected '%s' opening %s", sub, p);
    cr_assert(strstr(err, p) != NULL, "no file name in '%s'", err);
    if (sub) cr_assert(strstr(err, sub) != NULL, "expected '%s' in '%s'", sub, err);
}

Test(safetensors, truncated) {
    const char *p = write_ref("ref.safetensors");
    size_t len;
    unsigned char *f = slurp(p, &len);
    uint64_t n = 0;
    for (int i = 0; i < 8; i++) n |= (uint64_t)f[i] << (8 * i);
    const char *q = tpath("cut.safetensors");
    size_t cuts[] = {0, 3, 8, 8 + (size_t)n / 2, 8 + (size_t)n, 8 + (size_t)n + 10, len - 1};
    const char *why[] = {"too short", "too short", "larger than the file", "larger than the file",
                         NULL, NULL, NULL};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        spit(q, f, cuts[i]);
        expect_open_fails(q, why[i]);
    }
    free(f);
}

Test(safetensors, flipped_data_byte_is_a_checksum_error) {
    const char *p = write_ref("ref.safetensors");
    size_t len;
    unsigned char *f = slurp(p, &len);
    f[len - 30] ^= 0x01;
    spit(p, f, len);
    expect_open_fails(p, "checksum mismatch: file is corrupt");
    free(f);
}

Test(safetensors, flipped_header_bytes) {
    const char *p = write_ref("ref.safetensors");
    size_t len;
    unsigned char *f = slurp(p, &len);
    const char *q = tpath("flip.safetensors");
    /* structural bytes: the opening brace, the 8-byte length */
    f[8] ^= 0x20;
    spit(q, f, len);
    expect_open_fails(q, "does not start with '{'");
    f[8] ^= 0x20;
    f[7] = 0x7f;
    spit(q, f, len);
    expect_open_fails(q, "exceeds");
    f[7] = 0;
    /* every header byte in turn: an error or a valid file, never a crash */
    uint64_t n = 0;
    for (int i = 0; i < 8; i++) n |= (uint64_t)f[i] << (8 * i);
    int failed = 0;
    for (size_t i = 8; i < 8 + n; i++) {
        unsigned char save = f[i];
        f[i] ^= 0x04;
        spit(q, f, len);
        char err[512] = "";
        rw_st *st = rw_st_open(q, err, sizeof err);
        if (st) rw_st_close(st);
        else {
            failed++;
            cr_assert(strstr(err, "flip.safetensors") != NULL, "%s", err);
        }
        f[i] = save;
    }
    cr_assert(failed > (int)n / 4, "only %d of %llu flips detected", failed, (unsigned long long)n);
    free(f);
}

/* A file from a header text and a data section. */
static const char *raw_file(const char *rel, const char *hdr, const void *data, size_t dlen) {
    const char *p = tpath(rel);
    size_t n = strlen(hdr);
    unsigned char *b = malloc(8 + n + dlen + 1);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)n >> (8 * i));
    memcpy(b + 8, hdr, n);
    if (dlen) memcpy(b + 8 + n, data, dlen);
    spit(p, b, 8 + n + dlen);
    free(b);
    return p;
}

Test(safetensors, bad_headers) {
    unsigned char d[64] = {0};
    struct {
        const char *hdr;
        size_t dlen;
        const char *why;
    } cases[] = {
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
         12, "overlap"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}",
         20, "hole"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12, "cover 8"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
         "tensor 'a': shape [3] of F32 needs 12 bytes but data_offsets span 8"},
        {"{\"a\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[0,8]}}", 8,
         "tensor 'a': unsupported dtype 'F16' (supported: F32, I32, I64, U8, F64)"},
        {"{\"a\":{\"dtype\":\"QQ\",\"shape\":[4],\"data_offsets\":[0,8]}}", 8, "unsupported dtype"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 8, "data_offsets"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "data_offsets"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8, "data_offsets"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[16],\"data_offsets\":[0,64]}}", 8,
         "outside the data section"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,99999999999999999999]}}", 8,
         "not valid JSON"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
         "\"data_offsets\":[0,8]}}",
         8, "not a valid size"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "not a valid size"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
         "9 dimensions"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
         8, "duplicate"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}}", 8,
         "unknown header field 'x'"},
        {"{\"a\":[1,2]}", 0, "not an object"},
        {"{\"a\":{\"dtype\":3,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "needs \"dtype\""},
        {"{\"__metadata__\":{\"k\":1}}", 0, "__metadata__ 'k' is not a string"},
        {"{\"__metadata__\":{\"crc32\":\"zz\"}}", 0, "crc32"},
        {"{\"a\":", 0, "not valid JSON"},
        {"[1,2,3]", 0, "does not start with '{'"},
        {"{\"\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0, "empty name"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *p = raw_file("bad.safetensors", cases[i].hdr, d, cases[i].dlen);
        expect_open_fails(p, cases[i].why);
    }
    /* header length far beyond any file, and the overflowing maximum */
    unsigned char b[16] = {0};
    b[5] = 0x01; /* 2^40 */
    spit(tpath("huge.safetensors"), b, sizeof b);
    expect_open_fails(tpath("huge.safetensors"), "exceeds");
    memset(b, 0xff, 8);
    spit(tpath("huge.safetensors"), b, sizeof b);
    expect_open_fails(tpath("huge.safetensors"), "exceeds");
    b[0] = 200, memset(b + 1, 0, 7); /* within the limit, beyond the file */
    spit(tpath("huge.safetensors"), b, sizeof b);
    expect_open_fails(tpath("huge.safetensors"), "larger than the file");
    expect_open_fails(tpath("missing.safetensors"), "No such file or directory");
    expect_open_fails(tmpdir, "not a regular file");
}

/* A file that is not safetensors (an `init:` that names a script, a key, a
 * text): the error says what it is not and what was expected, and never
 * echoes its bytes, not even as the number its first 8 bytes make (issue 19).
 * Main printed "header length 8241980339405807397 exceeds ...". */
Test(safetensors, a_file_that_is_not_safetensors_is_not_quoted) {
    struct {
        const char *text, *why;
    } cases[] = {
        {"#!/bin/sh\necho secret-token-0123456789\n", "it should start with the length of its JSON header"},
        /* small first bytes, larger than the file: a length, still theirs */
        {"\x30\0\0\0\0\0\0\0secret", "the header length its first 8 bytes give is larger than the file"},
        /* a JSON-looking header with bytes jansson would quote near the error */
        {"\x11\0\0\0\0\0\0\0{\"a\":secretstuff}", "header is not valid JSON (invalid token, at byte"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *p = tpath("init.safetensors");
        size_t n = i == 0 ? strlen(cases[i].text) : 8 + strlen(cases[i].text + 8);
        spit(p, cases[i].text, n);
        uint64_t v = 0;
        for (int k = 0; k < 8; k++) v |= (uint64_t)(unsigned char)cases[i].text[k] << (8 * k);
        char num[32], hex[32], err[512] = "";
        snprintf(num, sizeof num, "%" PRIu64, v);
        snprintf(hex, sizeof hex, "%" PRIx64, v);
        rw_st *st = rw_st_open(p, err, sizeof err);
        cr_assert_null(st, "case %zu opened", i);
        cr_assert(strstr(err, p) && strstr(err, cases[i].why), "case %zu: %s", i, err);
        cr_assert(strstr(err, "safetensors file") || strstr(err, "file corrupt"), "%s", err);
        cr_assert(!strstr(err, "secret") && !strstr(err, "/bin/sh"), "quotes the file: %s", err);
        if (v > 1000) /* a small number may be a size too */
            cr_assert(!strstr(err, num) && !strstr(err, hex), "quotes its first bytes as %s: %s",
                      num, err);
    }
}

Test(safetensors, minimal_valid_files) {
    /* no metadata, unpadded header, tensors listed out of offset order */
    float d[3] = {1.0f, 2.0f, 3.0f};
    const char *p = raw_file(
        "min.safetensors",
        "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]},"
        "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
        d, sizeof d);
    char err[512] = "";
    rw_st *st = rw_st_open(p, err, sizeof err);
    cr_assert_not_null(st, "%s", err);
    cr_assert_str_eq(rw_st_at(st, 0)->name, "a");
    cr_assert_str_eq(rw_st_at(st, 1)->name, "b");
    float b;
    const int64_t one = 1;
    cr_assert_eq(rw_st_get_f32(st, "b", &one, 1, &b, err, sizeof err), 0, "%s", err);
    cr_assert_eq(b, 3.0f);
    rw_st_close(st);
    /* empty: no tensors at all */
    p = raw_file("empty.safetensors", "{}", NULL, 0);
    st = rw_st_open(p, err, sizeof err);
    cr_assert_not_null(st, "%s", err);
    cr_assert_eq(rw_st_count(st), 0);
    rw_st_close(st);
}

Test(safetensors, writer_errors_are_sticky) {
    fill_ref();
    const char *p = tpath("keep.safetensors");
    spit(p, "old", 3);
    rw_st_writer *w = rw_st_writer_new();
    cr_assert_eq(rw_st_add_f32(w, "x", b_shape, 1, b_data), 0);
    cr_assert_neq(rw_st_add_f32(w, "x", b_shape, 1, b_data), 0);
    cr_assert_eq(rw_st_add_f32(w, "y", b_shape, 1, b_data), 0);
    char err[512] = "";
    cr_assert_neq(rw_st_write(w, p, err, sizeof err), 0);
    cr_assert(strstr(err, "keep.safetensors") && strstr(err, "duplicate tensor name 'x'"), "%s", err);
    rw_st_writer_free(w);

    const int64_t neg[] = {-1};
    w = rw_st_writer_new();
    cr_assert_neq(rw_st_add_f32(w, "n", neg, 1, b_data), 0);
    cr_assert_neq(rw_st_add_f32(w, "", b_shape, 1, b_data), 0);
    cr_assert_neq(rw_st_set_meta(w, "crc32", "0"), 0);
    cr_assert_neq(rw_st_write(w, p, err, sizeof err), 0);
    cr_assert(strstr(err, "'n': bad shape"), "first error wins: %s", err);
    rw_st_writer_free(w);

    size_t len;
    unsigned char *f = slurp(p, &len);
    cr_assert(len == 3 && memcmp(f, "old", 3) == 0, "existing file changed");
    free(f);
    cr_assert_eq(count_temps(), 0);
}

Test(safetensors, atomic_write_failures_leave_nothing) {
    fill_ref();
    rw_st_writer *w = rw_st_writer_new();
    cr_assert_eq(rw_st_add_f32(w, "x", b_shape, 1, b_data), 0);
    char err[512] = "";
    /* the directory does not exist */
    cr_assert_neq(rw_st_write(w, tpath("nodir/x.safetensors"), err, sizeof err), 0);
    cr_assert(strstr(err, "nodir/x.safetensors") && strstr(err, "No such file or directory"), "%s",
              err);
    /* the target is a directory: rename fails after the data was written */
    cr_assert_eq(mkdir(tpath("adir"), 0755), 0);
    cr_assert_neq(rw_st_write(w, tpath("adir"), err, sizeof err), 0);
    cr_assert(strstr(err, "adir") && strstr(err, "rename"), "%s", err);
    struct stat sb;
    cr_assert(stat(tpath("adir"), &sb) == 0 && S_ISDIR(sb.st_mode));
    cr_assert_eq(count_temps(), 0);
    /* overwriting works and leaves no temporary */
    cr_assert_eq(rw_st_write(w, tpath("ok.safetensors"), err, sizeof err), 0, "%s", err);
    cr_assert_eq(rw_st_write(w, tpath("ok.safetensors"), err, sizeof err), 0, "%s", err);
    cr_assert_eq(count_temps(), 0);
    rw_st_writer_free(w);
}

/* A write that fails midway (disk full, here a file size limit, which works
 * even as root) leaves the previous checkpoint intact. */
Test(safetensors, failed_write_keeps_old_file) {
    const char *p = write_ref("ckpt.safetensors");
    size_t len0;
    unsigned char *before = slurp(p, &len0);

    static float big[1 << 16];
    const int64_t shape[] = {1 << 16};
    rw_st_writer *w = rw_st_writer_new();
    cr_assert_eq(rw_st_add_f32(w, "big", shape, 1, big), 0);
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit rl = {16384, 16384};
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &rl), 0);
    char err[512] = "";
    cr_assert_neq(rw_st_write(w, p, err, sizeof err), 0);
    cr_assert(strstr(err, "ckpt.safetensors: write failed"), "%s", err);
    rw_st_writer_free(w);

    size_t len1;
    unsigned char *after = slurp(p, &len1);
    cr_assert(len0 == len1 && memcmp(before, after, len0) == 0, "old checkpoint damaged");
    cr_assert_eq(count_temps(), 0);
    rw_st *st = rw_st_open(p, err, sizeof err);
    cr_assert_not_null(st, "%s", err);
    rw_st_close(st);
    free(before);
    free(after);
}

Test(safetensors, random_corruption_never_crashes) {
    const char *p = write_ref("ref.safetensors");
    size_t len;
    unsigned char *f = slurp(p, &len);
    unsigned char *m = malloc(len);
    const char *q = tpath("fuzz.safetensors");
    unsigned seed = 7;
    for (int it = 0; it < 1500; it++) {
        memcpy(m, f, len);
        int k = 1 + rand_r(&seed) % 4;
        for (int j = 0; j < k; j++) m[rand_r(&seed) % len] = (unsigned char)rand_r(&seed);
        size_t n = (rand_r(&seed) % 4 == 0) ? (size_t)rand_r(&seed) % len : len;
        spit(q, m, n);
        char err[512] = "";
        rw_st *st = rw_st_open(q, err, sizeof err);
        if (st) rw_st_close(st);
        else cr_assert(err[0] != '\0');
    }
    free(m);
    free(f);
}

/* What a reader that knows only the published format makes of our file, and
 * what we make of a file written that way. Python with struct + json only:
 * the safetensors package is not installed here and must not be fetched. */
static const char *py_reader =
    "import json, struct, sys\n"
    "b = open(sys.argv[1], 'rb').read()\n"
    "(n,) = struct.unpack('<Q', b[:8])\n"
    "hdr = b[8:8 + n]\n"
    "assert hdr[:1] == b'{', 'header must start with {'\n"
    "h = json.loads(hdr.decode('utf-8'))\n"
    "data = b[8 + n:]\n"
    "fmt = {'F32': 'f', 'I32': 'i', 'I64': 'q', 'U8': 'B'}\n"
    "size = {'F32': 4, 'I32': 4, 'I64': 8, 'U8': 1}\n"
    "out = {'__metadata__': h.pop('__metadata__', {})}\n"
    "spans = []\n"
    "for name, t in h.items():\n"
    "    b0, e0 = t['data_offsets']\n"
    "    numel = 1\n"
    "    for d in t['shape']: numel *= d\n"
    "    assert e0 - b0 == numel * size[t['dtype']], name\n"
    "    vals = struct.unpack('<%d%s' % (numel, fmt[t['dtype']]), data[b0:e0])\n"
    "    out[name] = {'dtype': t['dtype'], 'shape': t['shape'], 'values': list(vals)}\n"
    "    spans.append((b0, e0))\n"
    "spans.sort(); at = 0\n"
    "for b0, e0 in spans:\n"
    "    assert b0 == at, 'hole or overlap'; at = e0\n"
    "assert at == len(data), 'trailing bytes'\n"
    "print(json.dumps(out))\n";

static const char *py_writer =
    "import json, struct, sys\n"
    "w = struct.pack('<4f', 0.5, -1.5, 2.0, 1e-3)\n"
    "s = struct.pack('<q', 123456789012)\n"
    "h = {'step': {'dtype': 'I64', 'shape': [1], 'data_offsets': [0, 8]},\n"
    "     'w': {'dtype': 'F32', 'shape': [2, 2], 'data_offsets': [8, 24]},\n"
    "     '__metadata__': {'format': 'pt'}}\n"
    "hb = json.dumps(h).encode()\n"
    "open(sys.argv[1], 'wb').write(struct.pack('<Q', len(hb)) + hb + s + w)\n";

static int have_python(void) {
    return access("/usr/bin/python3", X_OK) == 0;
}

Test(safetensors, python_reads_our_file) {
    if (!have_python()) cr_skip_test("/usr/bin/python3 not found");
    const char *p = write_ref("ref.safetensors");
    const char *script = tpath("reader.py"), *outp = tpath("out.json");
    spit(script, py_reader, strlen(py_reader));
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s' '%s' > '%s'", script, p, outp);
    cr_assert_eq(system(cmd), 0, "python reader failed on our file");
    json_error_t je;
    json_t *o = json_load_file(outp, 0, &je);
    cr_assert_not_null(o, "%s", je.text);
    json_t *a = json_object_get(json_object_get(o, "enc.conv1.weight"), "values");
    cr_assert_eq(json_array_size(a), 6);
    for (int i = 0; i < 6; i++) cr_assert_eq((float)json_number_value(json_array_get(a, i)), a_data[i]);
    json_t *sh = json_object_get(json_object_get(o, "enc.conv1.weight"), "shape");
    cr_assert_eq(json_integer_value(json_array_get(sh, 0)), 2);
    cr_assert_eq(json_integer_value(json_array_get(sh, 1)), 3);
    json_t *q = json_object_get(json_object_get(o, "step"), "values");
    cr_assert_eq(json_integer_value(json_array_get(q, 1)), INT64_C(1) << 40);
    json_t *u = json_object_get(json_object_get(o, "rng.bytes"), "values");
    cr_assert_eq(json_integer_value(json_array_get(u, 6)), 255);
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(o, "__metadata__"), "format")),
                     "runaway-checkpoint-v2");
    json_decref(o);
}

Test(safetensors, we_read_a_python_file) {
    if (!have_python()) cr_skip_test("/usr/bin/python3 not found");
    const char *script = tpath("writer.py"), *p = tpath("py.safetensors");
    spit(script, py_writer, strlen(py_writer));
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s' '%s'", script, p);
    cr_assert_eq(system(cmd), 0);
    char err[512] = "";
    rw_st *st = rw_st_open(p, err, sizeof err);
    cr_assert_not_null(st, "%s", err);
    float w[4];
    const int64_t shape[] = {2, 2}, one[] = {1};
    cr_assert_eq(rw_st_get_f32(st, "w", shape, 2, w, err, sizeof err), 0, "%s", err);
    cr_assert_eq(w[0], 0.5f);
    cr_assert_eq(w[1], -1.5f);
    cr_assert_eq(w[3], 1e-3f);
    int64_t s;
    cr_assert_eq(rw_st_get(st, "step", RW_ST_I64, one, 1, &s, err, sizeof err), 0, "%s", err);
    cr_assert_eq(s, 123456789012);
    cr_assert_str_eq(rw_st_meta(st, "format"), "pt");
    cr_assert_null(rw_st_meta(st, "crc32"));
    rw_st_close(st);
}
