/* safetensors reader and atomic writer; see safetensors.h for the format. */
#define _GNU_SOURCE /* mkostemp */
#include "worker/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

/* The format is little-endian and tensors are handed out as host memory. */
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

#define NUMEL_MAX (INT64_C(1) << 48) /* far above any model; keeps byte counts from overflowing */
#define IO_CHUNK (1u << 30)         /* read/write/crc32 take at most this much per call */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static const char *const dtype_names[] = {"F32", "I32", "I64", "U8", "F64"};
static const size_t dtype_sizes[] = {4, 4, 8, 1, 8};
#define NDTYPES (int)(sizeof dtype_names / sizeof *dtype_names)

const char *rw_st_dtype_name(rw_st_dtype d) {
    return (unsigned)d < NDTYPES ? dtype_names[d] : "?";
}

size_t rw_st_dtype_size(rw_st_dtype d) {
    return (unsigned)d < NDTYPES ? dtype_sizes[d] : 0;
}

static int dtype_parse(const char *s, rw_st_dtype *d) {
    for (int i = 0; i < NDTYPES; i++) {
        if (!strcmp(s, dtype_names[i])) {
            *d = (rw_st_dtype)i;
            return 0;
        }
    }
    return -1;
}

static void shape_text(const int64_t *shape, int ndim, char *out, size_t outlen) {
    size_t o = (size_t)snprintf(out, outlen, "[");
    for (int i = 0; i < ndim && o < outlen; i++)
        o += (size_t)snprintf(out + o, outlen - o, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (o < outlen) snprintf(out + o, outlen - o, "]");
}

static uint32_t crc32_big(uint32_t crc, const unsigned char *p, size_t n) {
    while (n) {
        size_t k = n < IO_CHUNK ? n : IO_CHUNK;
        crc = (uint32_t)crc32(crc, p, (uInt)k);
        p += k;
        n -= k;
    }
    return crc;
}

/* ======================================================================== */
/* Writer */

typedef struct st_entry {
    char *name;
    rw_st_dtype dtype;
    int ndim;
    int64_t shape[RW_ST_MAX_DIMS];
    size_t nbytes;
    const void *data;
    size_t order; /* insertion index: ties in the layout sort keep it */
} st_entry;

struct rw_st_writer {
    st_entry *t;
    size_t nt, capt;
    char **mkey, **mval;
    size_t nm, capm;
    char failed[256]; /* first error of an add, "" if none */
};

rw_st_writer *rw_st_writer_new(void) {
    return calloc(1, sizeof(rw_st_writer));
}

void rw_st_writer_free(rw_st_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->nt; i++) free(w->t[i].name);
    for (size_t i = 0; i < w->nm; i++) {
        free(w->mkey[i]);
        free(w->mval[i]);
    }
    free(w->t);
    free(w->mkey);
    free(w->mval);
    free(w);
}

static int writer_fail(rw_st_writer *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int writer_fail(rw_st_writer *w, const char *fmt, ...) {
    if (!w->failed[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(w->failed, sizeof w->failed, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int rw_st_add(rw_st_writer *w, const char *name, rw_st_dtype dtype, const int64_t *shape, int ndim,
              const void *data) {
    if (!name || !name[0]) return writer_fail(w, "tensor with an empty name");
    if (!strcmp(name, "__metadata__")) return writer_fail(w, "tensor name '__metadata__' is reserved");
    if ((unsigned)dtype >= NDTYPES) return writer_fail(w, "tensor '%s': unknown dtype %d", name, (int)dtype);
    if (ndim < 0 || ndim > RW_ST_MAX_DIMS)
        return writer_fail(w, "tensor '%s': %d dimensions (at most %d)", name, ndim, RW_ST_MAX_DIMS);
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (shape[i] > 0 && numel > NUMEL_MAX / shape[i]))
            return writer_fail(w, "tensor '%s': bad shape (dimension %d is %" PRId64 ")", name, i,
                               shape[i]);
        numel *= shape[i];
    }
    if (numel > 0 && !data) return writer_fail(w, "tensor '%s': no data", name);
    for (size_t i = 0; i < w->nt; i++)
        if (!strcmp(w->t[i].name, name)) return writer_fail(w, "duplicate tensor name '%s'", name);
    if (w->nt == w->capt) {
        size_t cap = w->capt ? 2 * w->capt : 16;
        st_entry *t = realloc(w->t, cap * sizeof *t);
        if (!t) return writer_fail(w, "out of memory");
        w->t = t;
        w->capt = cap;
    }
    st_entry *e = &w->t[w->nt];
    memset(e, 0, sizeof *e);
    if (!(e->name = strdup(name))) return writer_fail(w, "out of memory");
    e->dtype = dtype;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++) e->shape[i] = shape[i];
    e->nbytes = (size_t)numel * dtype_sizes[dtype];
    e->data = data;
    e->order = w->nt++;
    return 0;
}

int rw_st_add_f32(rw_st_writer *w, const char *name, const int64_t *shape, int ndim,
                  const float *data) {
    return rw_st_add(w, name, RW_ST_F32, shape, ndim, data);
}

int rw_st_set_meta(rw_st_writer *w, const char *key, const char *value) {
    if (!key || !value) return writer_fail(w, "metadata with a NULL key or value");
    if (!strcmp(key, "crc32")) return writer_fail(w, "metadata key 'crc32' is reserved");
    for (size_t i = 0; i < w->nm; i++) {
        if (!strcmp(w->mkey[i], key)) {
            char *v = strdup(value);
            if (!v) return writer_fail(w, "out of memory");
            free(w->mval[i]);
            w->mval[i] = v;
            return 0;
        }
    }
    if (w->nm == w->capm) {
        size_t cap = w->capm ? 2 * w->capm : 8;
        char **k = realloc(w->mkey, cap * sizeof *k);
        if (!k) return writer_fail(w, "out of memory");
        w->mkey = k;
        char **v = realloc(w->mval, cap * sizeof *v);
        if (!v) return writer_fail(w, "out of memory");
        w->mval = v;
        w->capm = cap;
    }
    char *k = strdup(key), *v = strdup(value);
    if (!k || !v) {
        free(k);
        free(v);
        return writer_fail(w, "out of memory");
    }
    w->mkey[w->nm] = k;
    w->mval[w->nm++] = v;
    return 0;
}

/* Widest dtype first, then insertion order: every tensor then starts at a
 * multiple of its element size (the data section itself is 8-aligned). */
static int layout_cmp(const void *a, const void *b) {
    const st_entry *x = *(const st_entry *const *)a, *y = *(const st_entry *const *)b;
    size_t sx = dtype_sizes[x->dtype], sy = dtype_sizes[y->dtype];
    if (sx != sy) return sx > sy ? -1 : 1;
    return x->order < y->order ? -1 : x->order > y->order;
}

static int write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n) {
        ssize_t r = write(fd, p, n < IO_CHUNK ? n : IO_CHUNK);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) {
            errno = EIO;
            return -1;
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* Builds the padded header (without the 8-byte length). */
static char *build_header(rw_st_writer *w, st_entry **order, uint32_t crc, size_t *hlen) {
    json_t *root = json_object(), *meta = json_object();
    char *text = NULL, *out = NULL;
    char crcbuf[16];
    int bad = !root || !meta;
    snprintf(crcbuf, sizeof crcbuf, "%08" PRIx32, crc);
    for (size_t i = 0; !bad && i < w->nm; i++)
        bad |= json_object_set_new(meta, w->mkey[i], json_string(w->mval[i]));
    if (!bad) bad |= json_object_set_new(meta, "crc32", json_string(crcbuf));
    if (!bad) {
        bad |= json_object_set_new(root, "__metadata__", meta);
        meta = NULL;
    }
    size_t off = 0;
    for (size_t i = 0; !bad && i < w->nt; i++) {
        const st_entry *e = order[i];
        json_t *t = json_object(), *shape = json_array(), *offs = json_array();
        bad |= !t || !shape || !offs;
        for (int d = 0; !bad && d < e->ndim; d++)
            bad |= json_array_append_new(shape, json_integer((json_int_t)e->shape[d]));
        if (!bad) {
            bad |= json_array_append_new(offs, json_integer((json_int_t)off));
            bad |= json_array_append_new(offs, json_integer((json_int_t)(off + e->nbytes)));
            bad |= json_object_set_new(t, "dtype", json_string(dtype_names[e->dtype]));
            bad |= json_object_set_new(t, "shape", shape);
            bad |= json_object_set_new(t, "data_offsets", offs);
            shape = offs = NULL;
            bad |= json_object_set_new(root, e->name, t);
            t = NULL;
        }
        json_decref(t);
        json_decref(shape);
        json_decref(offs);
        off += e->nbytes;
    }
    if (!bad) text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    json_decref(meta);
    if (!text) return NULL;
    size_t n = strlen(text), padded = (n + 7) & ~(size_t)7;
    out = malloc(padded);
    if (out) {
        memcpy(out, text, n);
        memset(out + n, ' ', padded - n);
        *hlen = padded;
    }
    free(text);
    return out;
}

int rw_st_write(rw_st_writer *w, const char *path, char *err, size_t errlen) {
    if (w->failed[0]) {
        set_err(err, errlen, "%s: not written: %s", path, w->failed);
        return -1;
    }
    st_entry **order = malloc((w->nt ? w->nt : 1) * sizeof *order);
    if (!order) {
        set_err(err, errlen, "%s: out of memory", path);
        return -1;
    }
    for (size_t i = 0; i < w->nt; i++) order[i] = &w->t[i];
    qsort(order, w->nt, sizeof *order, layout_cmp);

    uint32_t crc = (uint32_t)crc32(0L, Z_NULL, 0);
    for (size_t i = 0; i < w->nt; i++) crc = crc32_big(crc, order[i]->data, order[i]->nbytes);

    size_t hlen = 0;
    char *hdr = build_header(w, order, crc, &hlen);
    if (!hdr) {
        free(order);
        set_err(err, errlen, "%s: out of memory (or invalid UTF-8 in a name or metadata)", path);
        return -1;
    }

    /* the temporary file lives next to the target so rename is atomic */
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 16);
    int fd = -1, rc = -1;
    if (!tmp) {
        set_err(err, errlen, "%s: out of memory", path);
        goto out;
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp.XXXXXX", 12);
    fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        set_err(err, errlen, "%s: cannot create a temporary file: %s", path, strerror(errno));
        free(tmp);
        tmp = NULL;
        goto out;
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    if (fchmod(fd, 0644) || write_all(fd, len8, 8) || write_all(fd, hdr, hlen)) goto io_err;
    for (size_t i = 0; i < w->nt; i++)
        if (write_all(fd, order[i]->data, order[i]->nbytes)) goto io_err;
    if (fsync(fd)) goto io_err;
    if (close(fd)) {
        fd = -1;
        goto io_err;
    }
    fd = -1;
    if (rename(tmp, path)) {
        set_err(err, errlen, "%s: cannot rename the temporary file into place: %s", path,
                strerror(errno));
        goto out;
    }
    free(tmp);
    tmp = NULL;
    /* make the rename itself durable */
    {
        const char *slash = strrchr(path, '/');
        char dir[4096];
        if (!slash) snprintf(dir, sizeof dir, ".");
        else if (slash == path) snprintf(dir, sizeof dir, "/");
        else snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd); /* best effort: the data is already in place */
            close(dfd);
        }
    }
    rc = 0;
    goto out;
io_err:
    set_err(err, errlen, "%s: write failed: %s", path, strerror(errno));
out:
    if (fd >= 0) close(fd);
    if (tmp) {
        unlink(tmp);
        free(tmp);
    }
    free(hdr);
    free(order);
    return rc;
}

/* ======================================================================== */
/* Reader */

struct rw_st {
    char *path;
    unsigned char *data; /* the data section, 64-byte aligned */
    size_t data_len;
    rw_st_tensor *t;
    size_t nt;
    char **mkey, **mval;
    size_t nm;
};

void rw_st_close(rw_st *st) {
    if (!st) return;
    for (size_t i = 0; i < st->nt; i++) free((char *)st->t[i].name);
    for (size_t i = 0; i < st->nm; i++) {
        free(st->mkey[i]);
        free(st->mval[i]);
    }
    free(st->t);
    free(st->mkey);
    free(st->mval);
    free(st->data);
    free(st->path);
    free(st);
}

static int read_all(int fd, void *buf, size_t n) {
    char *p = buf;
    while (n) {
        ssize_t r = read(fd, p, n < IO_CHUNK ? n : IO_CHUNK);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) {
            errno = 0; /* end of file: the file shrank under us */
            return -1;
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static int t_cmp(const void *a, const void *b) {
    const rw_st_tensor *x = a, *y = b;
    const unsigned char *xa = x->data, *ya = y->data;
    if (xa != ya) return xa < ya ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

/* A non-negative JSON integer, else -1. */
static int64_t json_nonneg(const json_t *v) {
    if (!json_is_integer(v)) return -1;
    json_int_t x = json_integer_value(v);
    return x < 0 ? -1 : (int64_t)x;
}

static int parse_entry(rw_st *st, const char *name, json_t *v, rw_st_tensor *t, char *err,
                       size_t errlen) {
    const char *path = st->path;
    if (!json_is_object(v)) {
        set_err(err, errlen, "%s: tensor '%s': header entry is not an object", path, name);
        return -1;
    }
    const char *k;
    json_t *x;
    json_object_foreach(v, k, x) {
        if (strcmp(k, "dtype") && strcmp(k, "shape") && strcmp(k, "data_offsets")) {
            set_err(err, errlen, "%s: tensor '%s': unknown header field '%s'", path, name, k);
            return -1;
        }
    }
    json_t *dt = json_object_get(v, "dtype"), *sh = json_object_get(v, "shape"),
           *of = json_object_get(v, "data_offsets");
    if (!json_is_string(dt) || !json_is_array(sh) || !json_is_array(of)) {
        set_err(err, errlen, "%s: tensor '%s': needs \"dtype\" (string), \"shape\" and "
                             "\"data_offsets\" (arrays)", path, name);
        return -1;
    }
    if (dtype_parse(json_string_value(dt), &t->dtype)) {
        char smp[24];
        snprintf(smp, sizeof smp, "%s", json_string_value(dt));
        set_err(err, errlen, "%s: tensor '%s': unsupported dtype '%s' (supported: F32, I32, I64, U8, F64)",
                path, name, smp);
        return -1;
    }
    size_t nd = json_array_size(sh);
    if (nd > RW_ST_MAX_DIMS) {
        set_err(err, errlen, "%s: tensor '%s': %zu dimensions (at most %d)", path, name, nd,
                RW_ST_MAX_DIMS);
        return -1;
    }
    t->ndim = (int)nd;
    t->numel = 1;
    for (size_t i = 0; i < nd; i++) {
        int64_t d = json_nonneg(json_array_get(sh, i));
        if (d < 0 || (d > 0 && t->numel > NUMEL_MAX / d)) {
            set_err(err, errlen, "%s: tensor '%s': shape dimension %zu is not a valid size", path,
                    name, i);
            return -1;
        }
        t->shape[i] = d;
        t->numel *= d;
    }
    int64_t b = json_array_size(of) == 2 ? json_nonneg(json_array_get(of, 0)) : -1;
    int64_t e = json_array_size(of) == 2 ? json_nonneg(json_array_get(of, 1)) : -1;
    if (b < 0 || e < 0 || e < b) {
        set_err(err, errlen, "%s: tensor '%s': data_offsets must be [begin, end] with "
                             "0 <= begin <= end", path, name);
        return -1;
    }
    if ((uint64_t)e > st->data_len) {
        set_err(err, errlen, "%s: tensor '%s': data_offsets [%" PRId64 ", %" PRId64 "] outside the "
                             "data section (%zu bytes): file truncated or corrupt",
                path, name, b, e, st->data_len);
        return -1;
    }
    size_t want = (size_t)t->numel * dtype_sizes[t->dtype];
    if ((uint64_t)(e - b) != want) {
        char s[128];
        shape_text(t->shape, t->ndim, s, sizeof s);
        set_err(err, errlen, "%s: tensor '%s': shape %s of %s needs %zu bytes but data_offsets span "
                             "%" PRId64, path, name, s, dtype_names[t->dtype], want, e - b);
        return -1;
    }
    t->data = st->data + b;
    t->nbytes = want;
    if (!(t->name = strdup(name))) {
        set_err(err, errlen, "%s: out of memory", path);
        return -1;
    }
    return 0;
}

static int parse_header(rw_st *st, const char *hdr, size_t hlen, char *err, size_t errlen) {
    const char *path = st->path;
    if (hlen == 0 || hdr[0] != '{') {
        set_err(err, errlen, "%s: header does not start with '{': not a safetensors file", path);
        return -1;
    }
    json_error_t je;
    json_t *root = json_loadb(hdr, hlen, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        /* jansson's reason without its " near '...'": those are the file's bytes */
        char *near = strstr(je.text, " near ");
        if (near)
            *near = '\0';
        set_err(err, errlen, "%s: header is not valid JSON (%s, at byte %d of its %zu): file "
                             "corrupt or not a safetensors file", path, je.text, je.position, hlen);
        return -1;
    }
    int rc = -1;
    size_t n = json_object_size(root);
    st->t = calloc(n ? n : 1, sizeof *st->t);
    if (!st->t) {
        set_err(err, errlen, "%s: out of memory", path);
        goto out;
    }
    const char *k;
    json_t *v;
    json_object_foreach(root, k, v) {
        if (!strcmp(k, "__metadata__")) {
            if (!json_is_object(v)) {
                set_err(err, errlen, "%s: __metadata__ is not an object", path);
                goto out;
            }
            size_t m = json_object_size(v);
            st->mkey = calloc(m ? m : 1, sizeof *st->mkey);
            st->mval = calloc(m ? m : 1, sizeof *st->mval);
            if (!st->mkey || !st->mval) {
                set_err(err, errlen, "%s: out of memory", path);
                goto out;
            }
            const char *mk;
            json_t *mv;
            json_object_foreach(v, mk, mv) {
                if (!json_is_string(mv)) {
                    set_err(err, errlen, "%s: __metadata__ '%s' is not a string", path, mk);
                    goto out;
                }
                st->mkey[st->nm] = strdup(mk);
                st->mval[st->nm] = strdup(json_string_value(mv));
                st->nm++;
                if (!st->mkey[st->nm - 1] || !st->mval[st->nm - 1]) {
                    set_err(err, errlen, "%s: out of memory", path);
                    goto out;
                }
            }
            continue;
        }
        if (!k[0]) {
            set_err(err, errlen, "%s: a tensor has an empty name", path);
            goto out;
        }
        if (parse_entry(st, k, v, &st->t[st->nt], err, errlen)) goto out;
        st->nt++;
    }

    /* the tensors must tile the data section exactly: no overlap, no hole */
    qsort(st->t, st->nt, sizeof *st->t, t_cmp);
    size_t at = 0;
    for (size_t i = 0; i < st->nt; i++) {
        const rw_st_tensor *t = &st->t[i];
        size_t b = (size_t)((const unsigned char *)t->data - st->data);
        if (b < at) {
            set_err(err, errlen, "%s: tensors '%s' and '%s' overlap in the data section: file corrupt",
                    path, st->t[i - 1].name, t->name);
            goto out;
        }
        if (b > at) {
            set_err(err, errlen, "%s: hole in the data section at bytes [%zu, %zu) before tensor '%s': "
                                 "file corrupt", path, at, b, t->name);
            goto out;
        }
        at = b + t->nbytes;
    }
    if (at != st->data_len) {
        set_err(err, errlen, "%s: data section has %zu bytes but the tensors cover %zu: file corrupt",
                path, st->data_len, at);
        goto out;
    }
    rc = 0;
out:
    json_decref(root);
    return rc;
}

rw_st *rw_st_open(const char *path, char *err, size_t errlen) {
    rw_st *st = calloc(1, sizeof *st);
    char *hdr = NULL;
    int fd = -1;
    if (!st || !(st->path = strdup(path))) {
        set_err(err, errlen, "%s: out of memory", path);
        goto fail;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        set_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    struct stat sb;
    if (fstat(fd, &sb)) {
        set_err(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        set_err(err, errlen, "%s: not a regular file", path);
        goto fail;
    }
    uint64_t size = (uint64_t)sb.st_size;
    unsigned char len8[8];
    if (size < 8 || read_all(fd, len8, 8)) {
        set_err(err, errlen, "%s: too short (%" PRIu64 " bytes) for a safetensors file", path, size);
        goto fail;
    }
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)len8[i] << (8 * i);
    /* What a file that is not ours holds is never quoted, not even as the
     * number its first bytes make: a text, a key, someone else's data. */
    if (hlen > RW_ST_HEADER_MAX) {
        set_err(err, errlen, "%s: not a safetensors file (%" PRIu64 " bytes): it should start "
                             "with the length of its JSON header, at most %u bytes, and its "
                             "first 8 bytes give a length that exceeds that",
                path, size, RW_ST_HEADER_MAX);
        goto fail;
    }
    if (hlen > size - 8) {
        set_err(err, errlen, "%s: truncated or not a safetensors file (%" PRIu64 " bytes): the "
                             "header length its first 8 bytes give is larger than the file",
                path, size);
        goto fail;
    }
    hdr = malloc(hlen + 1);
    st->data_len = (size_t)(size - 8 - hlen);
    /* 64-byte aligned so F32 tensors of our files are aligned for SIMD copies */
    st->data = aligned_alloc(64, (st->data_len + 63) / 64 * 64 + 64);
    if (!hdr || !st->data) {
        set_err(err, errlen, "%s: out of memory (%zu-byte data section)", path, st->data_len);
        goto fail;
    }
    if (read_all(fd, hdr, hlen) || read_all(fd, st->data, st->data_len)) {
        set_err(err, errlen, "%s: read failed: %s", path, errno ? strerror(errno) : "file shrank");
        goto fail;
    }
    close(fd);
    fd = -1;
    hdr[hlen] = '\0';
    if (parse_header(st, hdr, (size_t)hlen, err, errlen)) goto fail;
    free(hdr);
    hdr = NULL;

    const char *crc = rw_st_meta(st, "crc32");
    if (crc) {
        char *end;
        errno = 0;
        unsigned long want = strtoul(crc, &end, 16);
        if (strlen(crc) != 8 || *end || errno) {
            set_err(err, errlen, "%s: metadata crc32 is not 8 hex digits: file corrupt", path);
            goto fail;
        }
        uint32_t got = crc32_big((uint32_t)crc32(0L, Z_NULL, 0), st->data, st->data_len);
        if (got != (uint32_t)want) {
            set_err(err, errlen, "%s: checksum mismatch: file is corrupt (crc32 %08" PRIx32
                                 ", header says %s)", path, got, crc);
            goto fail;
        }
    }
    return st;
fail:
    if (fd >= 0) close(fd);
    free(hdr);
    rw_st_close(st);
    return NULL;
}

size_t rw_st_count(const rw_st *st) {
    return st->nt;
}

const rw_st_tensor *rw_st_at(const rw_st *st, size_t i) {
    return i < st->nt ? &st->t[i] : NULL;
}

const rw_st_tensor *rw_st_find(const rw_st *st, const char *name) {
    for (size_t i = 0; i < st->nt; i++)
        if (!strcmp(st->t[i].name, name)) return &st->t[i];
    return NULL;
}

int rw_st_get(const rw_st *st, const char *name, rw_st_dtype dtype, const int64_t *shape, int ndim,
              void *dst, char *err, size_t errlen) {
    const rw_st_tensor *t = rw_st_find(st, name);
    if (!t) {
        set_err(err, errlen, "%s: tensor '%s' not found (the file holds %zu tensors)", st->path, name,
                st->nt);
        return -1;
    }
    if (t->dtype != dtype) {
        set_err(err, errlen, "%s: tensor '%s' is %s, expected %s", st->path, name,
                dtype_names[t->dtype], rw_st_dtype_name(dtype));
        return -1;
    }
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char a[160], b[160];
        shape_text(t->shape, t->ndim, a, sizeof a);
        shape_text(shape, ndim > RW_ST_MAX_DIMS ? RW_ST_MAX_DIMS : (ndim < 0 ? 0 : ndim), b, sizeof b);
        set_err(err, errlen, "%s: tensor '%s' has shape %s, expected %s", st->path, name, a, b);
        return -1;
    }
    if (t->nbytes) memcpy(dst, t->data, t->nbytes);
    return 0;
}

int rw_st_get_f32(const rw_st *st, const char *name, const int64_t *shape, int ndim, float *dst,
                  char *err, size_t errlen) {
    return rw_st_get(st, name, RW_ST_F32, shape, ndim, dst, err, errlen);
}

const char *rw_st_meta(const rw_st *st, const char *key) {
    for (size_t i = 0; i < st->nm; i++)
        if (!strcmp(st->mkey[i], key)) return st->mval[i];
    return NULL;
}

size_t rw_st_meta_count(const rw_st *st) {
    return st->nm;
}

int rw_st_meta_at(const rw_st *st, size_t i, const char **key, const char **value) {
    if (i >= st->nm) return -1;
    *key = st->mkey[i];
    *value = st->mval[i];
    return 0;
}
