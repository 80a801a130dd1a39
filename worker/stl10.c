/* STL-10's binary version (stl10_binary/): X files of 3x96x96 uint8 images,
 * each channel stored column by column (Fortran order, as the set's MATLAB
 * origin wrote it), y files of one label byte 1..10 per image, and the
 * 100000 images of unlabeled_X.bin, which only train the encoder. Rows are
 * transposed on reading so the rest of runaway sees CIFAR's layout; the
 * transposed set can be kept in a cache file that every worker maps. */
#define _GNU_SOURCE /* realpath's PATH_MAX, st_mtim */
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "worker/data_internal.h"

#define STL_PLANE (RW_STL10_SIDE * RW_STL10_SIDE)
#define STL_IMAGE (3 * STL_PLANE)
/* unlabeled_X.bin is 2.8 GB; a file far past it is not STL-10 */
#define STL_FILE_MAX ((long long)8 << 30)

/* Images in an X file. */
static int count_images(const char *path, long *n, char *err, size_t errlen)
{
    long long size;
    if (rw_data_file_size(path, &size, err, errlen) != 0)
        return -1;
    if (size == 0 || size % STL_IMAGE != 0) {
        snprintf(err, errlen,
                 "%s: size %lld bytes is not a positive multiple of the %d-byte image "
                 "(truncated or not STL-10's binary version?)",
                 path, size, STL_IMAGE);
        return -1;
    }
    if (size > STL_FILE_MAX) {
        snprintf(err, errlen, "%s: size %lld bytes is too large for an STL-10 file", path, size);
        return -1;
    }
    *n = (long)(size / STL_IMAGE);
    return 0;
}

/* A batch of row-major images on their way into the cache file. */
typedef int (*image_sink)(void *ctx, const uint8_t *images, long count);

/* Reads the n images of path, row-major, into dst. With put, dst holds
 * `chunk` images and goes to put each time it fills (and at the end): -2
 * when put fails. */
static int read_images(const char *path, long n, uint8_t *dst, long chunk, image_sink put,
                       void *ctx, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    uint8_t *buf = malloc(STL_IMAGE);
    if (!buf) {
        snprintf(err, errlen, "%s: out of memory", path);
        fclose(f);
        return -1;
    }
    int rc = 0;
    long held = 0;
    for (long i = 0; i < n && rc == 0; i++) {
        if (fread(buf, 1, STL_IMAGE, f) != STL_IMAGE) {
            snprintf(err, errlen, "%s: read error at image %ld: %s", path, i,
                     ferror(f) ? strerror(errno) : "file shrank while reading");
            rc = -1;
            break;
        }
        uint8_t *img = dst + (size_t)held++ * STL_IMAGE;
        for (int c = 0; c < 3; c++)
            for (int col = 0; col < RW_STL10_SIDE; col++)
                for (int row = 0; row < RW_STL10_SIDE; row++)
                    img[c * STL_PLANE + row * RW_STL10_SIDE + col] =
                        buf[c * STL_PLANE + col * RW_STL10_SIDE + row];
        if (put && (held == chunk || i == n - 1)) {
            if (put(ctx, dst, held) != 0)
                rc = -2;
            held = 0;
        }
    }
    fclose(f);
    free(buf);
    return rc;
}

/* n labels 1..10 from path, stored 0..9. */
static int read_labels(const char *path, long n, const char *xpath, uint8_t *labels, char *err,
                       size_t errlen)
{
    long long size;
    if (rw_data_file_size(path, &size, err, errlen) != 0)
        return -1;
    if (size != n) {
        snprintf(err, errlen, "%s: %lld labels for the %ld images of %s", path, size, n, xpath);
        return -1;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    size_t got = fread(labels, 1, (size_t)n, f);
    int bad = ferror(f);
    fclose(f);
    if (got != (size_t)n) {
        snprintf(err, errlen, "%s: read error: %s", path,
                 bad ? strerror(errno) : "file shrank while reading");
        return -1;
    }
    for (long i = 0; i < n; i++) {
        if (labels[i] < 1 || labels[i] > 10) {
            snprintf(err, errlen, "%s: image %ld: label %d is not in 1..10", path, i, labels[i]);
            return -1;
        }
        labels[i]--;
    }
    return 0;
}

/* The files of one load and their image counts. */
typedef struct stl_files {
    char x[4096], y[4096], u[4096];
    int train;
    long nl, nu; /* labeled images (x), unlabeled (u; 0 when not asked) */
} stl_files;

static int stl_files_find(const char *dir, int train, int unlabeled, stl_files *f, char *err,
                          size_t errlen)
{
    memset(f, 0, sizeof *f);
    f->train = train;
    unlabeled = train && unlabeled;
    const char *split = train ? "train" : "test";
    if (snprintf(f->x, sizeof f->x, "%s/%s_X.bin", dir, split) >= (int)sizeof f->x ||
        snprintf(f->y, sizeof f->y, "%s/%s_y.bin", dir, split) >= (int)sizeof f->y ||
        snprintf(f->u, sizeof f->u, "%s/unlabeled_X.bin", dir) >= (int)sizeof f->u) {
        snprintf(err, errlen, "%s: path too long", dir);
        return -1;
    }
    if (count_images(f->x, &f->nl, err, errlen) != 0)
        return -1;
    if (unlabeled && count_images(f->u, &f->nu, err, errlen) != 0) {
        size_t k = strlen(err);
        snprintf(err + k, errlen > k ? errlen - k : 0,
                 " (data.unlabeled: false trains on the labeled images only)");
        return -1;
    }
    if (f->nl + f->nu > 0x7fffffffL) {
        snprintf(err, errlen, "%s: %ld images is more than runaway handles", dir, f->nl + f->nu);
        return -1;
    }
    return 0;
}

static void set_shape(rw_dataset *out, const stl_files *f)
{
    out->n = (int)(f->nl + f->nu);
    out->labeled = (int)f->nl;
    out->side = RW_STL10_SIDE;
    out->classes = 10;
}

static int load_memory(const char *dir, const stl_files *f, rw_dataset *out, char *err,
                       size_t errlen)
{
    size_t n = (size_t)(f->nl + f->nu);
    uint8_t *pixels = malloc(n * STL_IMAGE);
    uint8_t *labels = malloc(n);
    if (!pixels || !labels) {
        snprintf(err, errlen, "%s: out of memory for %zu images of 96x96 (%.1f GB)", dir, n,
                 n * (double)STL_IMAGE / 1e9);
        goto fail;
    }
    if (read_labels(f->y, f->nl, f->x, labels, err, errlen) != 0 ||
        read_images(f->x, f->nl, pixels, f->nl, NULL, NULL, err, errlen) != 0 ||
        (f->nu && read_images(f->u, f->nu, pixels + (size_t)f->nl * STL_IMAGE, f->nu, NULL,
                              NULL, err, errlen) != 0))
        goto fail;
    memset(labels + f->nl, RW_NO_LABEL, (size_t)f->nu);
    set_shape(out, f);
    out->pixels = pixels;
    out->labels = labels;
    return 0;
fail:
    free(pixels);
    free(labels);
    return -1;
}

int rw_stl10_load(const char *dir, int train, int unlabeled, rw_dataset *out, char *err,
                  size_t errlen)
{
    memset(out, 0, sizeof *out);
    stl_files f;
    if (stl_files_find(dir, train, unlabeled, &f, err, errlen) != 0)
        return -1;
    return load_memory(dir, &f, out, err, errlen);
}

/* ---- the row-major cache ----
 * One file per set and split: a header page, the labels (0..9, then
 * RW_NO_LABEL for the unlabeled images) padded to a page, then the pixels
 * as rw_dataset holds them. It is written to NAME.tmp and renamed, never
 * changed in place, so a worker that maps it while another replaces it
 * keeps reading the old one whole. */
#define CACHE_PAGE 4096
#define CACHE_VERSION 1
#define CACHE_CHUNK 64 /* images per write */

static size_t page_up(size_t bytes)
{
    return (bytes + CACHE_PAGE - 1) / CACHE_PAGE * CACHE_PAGE;
}

static size_t cache_bytes(size_t n)
{
    return CACHE_PAGE + page_up(n) + n * STL_IMAGE;
}

/* The header: format, counts, and for each source file its real path,
 * device, inode, size, and modification and status-change times (the
 * last moves with any write or replacement, whatever a copy tool does to
 * the modification time), zero-padded to a page. -1 when a file cannot be
 * looked at or the page is too small for the paths. */
static int cache_header(const stl_files *f, char head[CACHE_PAGE])
{
    memset(head, 0, CACHE_PAGE);
    int at = snprintf(head, CACHE_PAGE, "runaway STL-10 row-major cache, version %d\n%ld images, "
                                        "%ld labeled\n",
                      CACHE_VERSION, f->nl + f->nu, f->nl);
    const char *src[3] = {f->y, f->x, f->nu ? f->u : NULL};
    for (int k = 0; k < 3 && src[k]; k++) {
        char real[PATH_MAX];
        struct stat st;
        if (!realpath(src[k], real) || stat(real, &st) != 0)
            return -1;
        int w = snprintf(head + at, (size_t)(CACHE_PAGE - at),
                         "%s: device %ju inode %ju size %jd modified %jd.%09ld changed "
                         "%jd.%09ld\n",
                         real, (uintmax_t)st.st_dev, (uintmax_t)st.st_ino, (intmax_t)st.st_size,
                         (intmax_t)st.st_mtim.tv_sec, st.st_mtim.tv_nsec,
                         (intmax_t)st.st_ctim.tv_sec, st.st_ctim.tv_nsec);
        if (w < 0 || w >= CACHE_PAGE - at)
            return -1;
        at += w;
    }
    return 0;
}

/* Maps the cache at path into out when it holds what head describes: 0;
 * else 1 and why not. */
static int cache_map(const char *path, const char *head, const stl_files *f, rw_dataset *out,
                     const char **why)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        *why = errno == ENOENT ? "there was none" : "the old one was unreadable";
        return 1;
    }
    size_t n = (size_t)(f->nl + f->nu), len = cache_bytes(n);
    struct stat st;
    if (fstat(fd, &st) != 0 || (size_t)st.st_size != len) {
        close(fd);
        *why = "the old one had the wrong size";
        return 1;
    }
    uint8_t *m = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        *why = "the old one could not be mapped";
        return 1;
    }
    if (memcmp(m, head, CACHE_PAGE) != 0) {
        size_t line = strcspn(head, "\n");
        *why = memcmp(m, head, line + 1) == 0 ? "the set's files changed since the old one"
                                               : "the old one had a bad header";
        munmap(m, len);
        return 1;
    }
    const uint8_t *lab = m + CACHE_PAGE;
    for (size_t i = 0; i < n; i++)
        if (i < (size_t)f->nl ? lab[i] > 9 : lab[i] != RW_NO_LABEL) {
            *why = "the old one had a bad label";
            munmap(m, len);
            return 1;
        }
    set_shape(out, f);
    out->labels = m + CACHE_PAGE;
    out->pixels = m + CACHE_PAGE + page_up(n);
    out->map = m;
    out->map_len = len;
    return 0;
}

static int write_all(int fd, const void *p, size_t len)
{
    const char *c = p;
    while (len > 0) {
        ssize_t w = write(fd, c, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        c += w;
        len -= (size_t)w;
    }
    return 0;
}

/* Removes the caches in cache_dir, other than `keep`, of sets whose files
 * are gone (a set deleted or moved would otherwise leave its 2.9 GB copy
 * behind for good). Under the lock, so no one is writing them. */
static void cache_sweep(const char *cache_dir, const char *keep)
{
    char pat[PATH_MAX + 32];
    if (snprintf(pat, sizeof pat, "%s/stl10-*.u8", cache_dir) >= (int)sizeof pat)
        return;
    glob_t g;
    if (glob(pat, 0, NULL, &g) != 0)
        return;
    for (size_t k = 0; k < g.gl_pathc; k++) {
        if (strcmp(g.gl_pathv[k], keep) == 0)
            continue;
        char head[CACHE_PAGE + 1] = "";
        FILE *f = fopen(g.gl_pathv[k], "rb");
        size_t got = f ? fread(head, 1, CACHE_PAGE, f) : 0;
        if (f)
            fclose(f);
        head[got] = 0;
        /* source lines follow the first two: "PATH: device ..." */
        char *line = strchr(head, '\n');
        line = line ? strchr(line + 1, '\n') : NULL;
        int gone = 0;
        while (line && !gone) {
            line++;
            char *end = strstr(line, ": device ");
            char *next = strchr(line, '\n');
            if (!end || !next || end > next)
                break;
            *end = 0;
            gone = access(line, F_OK) != 0 && errno == ENOENT;
            line = next;
        }
        if (gone)
            unlink(g.gl_pathv[k]);
    }
    globfree(&g);
}

typedef struct cache_out {
    int fd;
    int errnum; /* the write's errno when one failed */
} cache_out;

static int cache_put(void *ctx, const uint8_t *images, long count)
{
    cache_out *o = ctx;
    if (write_all(o->fd, images, (size_t)count * STL_IMAGE) != 0) {
        o->errnum = errno;
        return -1;
    }
    return 0;
}

/* Writes the cache to tmp, flushes it to disk (a cache that a crash left
 * half-written must not pass for whole) and renames it to path. 0; -1 the
 * set's own error in err; -2 the cache could not be written (*errnum). */
static int cache_build(const stl_files *f, const char *head, const char *tmp, const char *path,
                       int *errnum, char *err, size_t errlen)
{
    size_t n = (size_t)(f->nl + f->nu);
    uint8_t *labels = calloc(page_up(n) ? page_up(n) : 1, 1);
    uint8_t *chunk = malloc((size_t)CACHE_CHUNK * STL_IMAGE);
    cache_out o = {.fd = -1};
    int rc = -1;
    if (!labels || !chunk) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    if (read_labels(f->y, f->nl, f->x, labels, err, errlen) != 0)
        goto done;
    memset(labels + f->nl, RW_NO_LABEL, (size_t)f->nu);
    rc = -2;
    o.fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (o.fd < 0 || write_all(o.fd, head, CACHE_PAGE) != 0 ||
        write_all(o.fd, labels, page_up(n)) != 0) {
        o.errnum = errno;
        goto done;
    }
    int r = read_images(f->x, f->nl, chunk, CACHE_CHUNK, cache_put, &o, err, errlen);
    if (r == 0 && f->nu)
        r = read_images(f->u, f->nu, chunk, CACHE_CHUNK, cache_put, &o, err, errlen);
    if (r != 0) {
        rc = r;
        goto done;
    }
    if (fsync(o.fd) != 0) {
        o.errnum = errno;
        goto done;
    }
    int fd = o.fd;
    o.fd = -1;
    if (close(fd) != 0 || rename(tmp, path) != 0) {
        o.errnum = errno;
        goto done;
    }
    rc = 0;
done:
    if (o.fd >= 0)
        close(o.fd);
    if (rc != 0)
        unlink(tmp);
    *errnum = o.errnum;
    free(labels);
    free(chunk);
    return rc;
}

void rw_vnotice(rw_data_notice notice, void *ud, const char *fmt, va_list ap)
{
    if (!notice)
        return;
    char line[1024];
    vsnprintf(line, sizeof line, fmt, ap);
    notice(ud, line);
}

void rw_notice(rw_data_notice notice, void *ud, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    rw_vnotice(notice, ud, fmt, ap);
    va_end(ap);
}


int rw_stl10_load_cached(const char *dir, int train, int unlabeled, const char *cache_dir,
                         rw_data_notice notice, void *ud, rw_dataset *out, char *err,
                         size_t errlen)
{
    memset(out, 0, sizeof *out);
    stl_files f;
    if (stl_files_find(dir, train, unlabeled, &f, err, errlen) != 0)
        return -1;
    char real[PATH_MAX], head[CACHE_PAGE], why[PATH_MAX + 256];
    char path[PATH_MAX + 64], tmp[PATH_MAX + 80], lock[PATH_MAX + 80];
    const char *part = f.nu ? "train+unlabeled" : train ? "train" : "test";
    if (!realpath(dir, real) || cache_header(&f, head) != 0 ||
        snprintf(path, sizeof path, "%s/stl10-%08lx-%s.u8", cache_dir,
                 (unsigned long)crc32_z(0L, (const Bytef *)real, strlen(real)),
                 part) >= (int)sizeof path) {
        snprintf(why, sizeof why, "its paths are too long for a cache");
        goto memory;
    }
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    snprintf(lock, sizeof lock, "%s/stl10.lock", cache_dir);
    if (rw_mkdir_p(cache_dir, why, sizeof why) != 0)
        goto memory;
    /* One lock for the folder: builds are rare and the sweep reads the
     * others. flock, not a lock file's existence: the kernel drops it when
     * its holder dies, so a worker killed mid-build blocks no one. */
    int lk = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lk < 0 || flock(lk, LOCK_EX) != 0) {
        snprintf(why, sizeof why, "cannot lock %s: %s", lock, strerror(errno));
        if (lk >= 0)
            close(lk);
        goto memory;
    }
    const char *stale;
    if (cache_map(path, head, &f, out, &stale) == 0) {
        unlink(tmp); /* what a builder killed mid-write left */
        close(lk);
        return 0;
    }
    cache_sweep(cache_dir, path);
    double t0 = rw_mono_s();
    int errnum = 0;
    int rc = cache_build(&f, head, tmp, path, &errnum, err, errlen);
    const char *unmapped = NULL;
    if (rc == 0 && cache_map(path, head, &f, out, &unmapped) != 0)
        rc = -3;
    close(lk);
    if (rc == -1)
        return -1;
    if (rc == -2) {
        snprintf(why, sizeof why, "cannot write %s: %s", tmp, strerror(errnum));
        goto memory;
    }
    if (rc == -3) {
        snprintf(why, sizeof why, "%s as written: %s", path, unmapped);
        goto memory;
    }
    rw_notice(notice, ud, "STL-10 %s at %s: wrote the row-major cache %s (%.2f GB in %.1f s; %s); "
        "later loads map it",
        part, dir, path, cache_bytes((size_t)(f.nl + f.nu)) / 1e9, rw_mono_s() - t0, stale);
    return 0;
memory:
    rw_notice(notice, ud, "STL-10 %s at %s: read into memory, without a cache (%s)", part, dir, why);
    return load_memory(dir, &f, out, err, errlen);
}
