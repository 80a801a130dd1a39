/* An image folder decoded once: every image of a split to side x side uint8
 * planes (worker/image_decode.c) on the job's threads, kept in a cache file
 * beside STL-10's that the node's workers map, keyed by the folder's
 * listing (worker/imagefolder_scan.c), so that a job starts without
 * decoding unless a file was added, removed or changed. */
#define _GNU_SOURCE /* realpath's PATH_MAX */
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
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

#define PAGE 4096
#define CACHE_VERSION 1
#define FILE_MAX ((long long)256 << 20) /* no photograph is this large */
#define THREADS_MAX 256
#define PROGRESS_EVERY_S 10.0
#define BAD_NAMED 3 /* bad files a skip notice names */


static size_t page_up(size_t bytes) { return (bytes + PAGE - 1) / PAGE * PAGE; }

/* ---- decoding on threads ---- */

typedef struct decode_run {
    const char *dir;
    const rw_if_list *l;
    int side;
    uint8_t *pixels; /* (l->n, 3, side, side) */
    uint8_t *bad;    /* (l->n): 1 where the file did not decode */
    atomic_int next, done;
    pthread_mutex_t mu;
    int nbad;
    int named[BAD_NAMED]; /* the lowest-numbered bad files */
    char why[BAD_NAMED][512];
    int oom;
} decode_run;

/* Keeps the BAD_NAMED lowest-numbered failures, so the message does not
 * depend on which thread got there first. */
static void note_bad(decode_run *r, int i, const char *why)
{
    pthread_mutex_lock(&r->mu);
    r->bad[i] = 1;
    int k = r->nbad < BAD_NAMED ? r->nbad : BAD_NAMED;
    while (k > 0 && r->named[k - 1] > i) {
        if (k < BAD_NAMED) {
            r->named[k] = r->named[k - 1];
            memcpy(r->why[k], r->why[k - 1], sizeof r->why[k]);
        }
        k--;
    }
    if (k < BAD_NAMED) {
        r->named[k] = i;
        snprintf(r->why[k], sizeof r->why[k], "%s/%s: %s", r->dir, r->l->files[i].rel, why);
    }
    r->nbad++;
    pthread_mutex_unlock(&r->mu);
}

/* The whole of path into *buf (grown as needed). */
static int read_file(const char *path, uint8_t **buf, size_t *cap, size_t *len, char *why,
                     size_t whylen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(why, whylen, "cannot open: %s", strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (st.st_size > FILE_MAX) {
        snprintf(why, whylen, "%lld bytes is too large for an image", (long long)st.st_size);
        close(fd);
        return -1;
    }
    size_t want = (size_t)st.st_size;
    if (want > *cap) {
        uint8_t *b = realloc(*buf, want);
        if (!b) {
            snprintf(why, whylen, "out of memory for %zu bytes", want);
            close(fd);
            return -1;
        }
        *buf = b;
        *cap = want;
    }
    size_t got = 0;
    while (got < want) {
        ssize_t r = read(fd, *buf + got, want - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            snprintf(why, whylen, "read error: %s", r < 0 ? strerror(errno) : "file shrank");
            close(fd);
            return -1;
        }
        got += (size_t)r;
    }
    close(fd);
    *len = got;
    return 0;
}

static void *decode_main(void *p)
{
    decode_run *r = p;
    uint8_t *buf = NULL;
    size_t cap = 0, img = (size_t)3 * r->side * r->side;
    for (;;) {
        int i = atomic_fetch_add(&r->next, 1);
        if (i >= r->l->n)
            break;
        char path[8192], why[400];
        snprintf(path, sizeof path, "%s/%s", r->dir, r->l->files[i].rel);
        size_t len;
        uint8_t *rgb = NULL;
        int w, h;
        if (read_file(path, &buf, &cap, &len, why, sizeof why) != 0 ||
            rw_image_decode(buf, len, r->side, &rgb, &w, &h, why, sizeof why) != 0)
            note_bad(r, i, why);
        else if (rw_image_fit(rgb, w, h, r->side, r->pixels + (size_t)i * img) != 0) {
            note_bad(r, i, "out of memory resizing it");
            r->oom = 1;
        }
        free(rgb);
        atomic_fetch_add(&r->done, 1);
    }
    free(buf);
    return NULL;
}

static int cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > THREADS_MAX ? THREADS_MAX : (int)n;
}

/* Decodes every file of l into pixels, with progress lines every
 * PROGRESS_EVERY_S. 0, or -1 when no thread could start. */
static int decode_all(decode_run *r, int threads, const char *what, rw_data_notice notice,
                      void *ud, char *err, size_t errlen)
{
    int n = r->l->n;
    if (threads <= 0)
        threads = cpu_count();
    if (threads > n)
        threads = n;
    if (threads > THREADS_MAX)
        threads = THREADS_MAX;
    pthread_t tid[THREADS_MAX];
    int started = 0;
    for (; started < threads; started++)
        if (pthread_create(&tid[started], NULL, decode_main, r) != 0)
            break;
    if (started == 0) {
        snprintf(err, errlen, "%s: cannot start a decoding thread", what);
        return -1;
    }
    rw_notice(notice, ud, "%s: decoding %d images to %dx%d on %d threads", what, n, r->side, r->side,
        started);
    double t0 = rw_mono_s(), last = t0;
    for (;;) {
        int done = atomic_load(&r->done);
        if (done >= n)
            break;
        struct timespec nap = {0, 50 * 1000 * 1000};
        nanosleep(&nap, NULL);
        double now = rw_mono_s();
        if (now - last >= PROGRESS_EVERY_S && done > 0) {
            double rate = done / (now - t0);
            rw_notice(notice, ud, "%s: %d/%d images decoded (%.0f/s, %.0f s left)", what, done, n,
                rate, (n - done) / rate);
            last = now;
        }
    }
    for (int t = 0; t < started; t++)
        pthread_join(tid[t], NULL);
    double dt = rw_mono_s() - t0;
    rw_notice(notice, ud, "%s: %d images decoded in %.1f s (%.0f/s on %d threads)", what, n, dt,
        dt > 0 ? n / dt : 0.0, started);
    return 0;
}

/* The failures as one error (no skipping) or one notice (skip_bad). */
static void describe_bad(const decode_run *r, char *out, size_t len)
{
    int at = snprintf(out, len, "%d file%s that do%s not decode", r->nbad,
                      r->nbad == 1 ? "" : "s", r->nbad == 1 ? "es" : "");
    int k = r->nbad < BAD_NAMED ? r->nbad : BAD_NAMED;
    for (int i = 0; i < k && at >= 0 && (size_t)at < len; i++)
        at += snprintf(out + at, len - (size_t)at, "%s%s", i ? "; " : ": ", r->why[i]);
    if (r->nbad > k && at >= 0 && (size_t)at < len)
        snprintf(out + at, len - (size_t)at, "; ...");
}

/* Moves the good images of pixels/labels to the front; their count. */
static int compact(const decode_run *r, uint8_t *labels, int *labeled)
{
    size_t img = (size_t)3 * r->side * r->side;
    int j = 0;
    *labeled = 0;
    for (int i = 0; i < r->l->n; i++) {
        if (r->bad[i])
            continue;
        if (j != i)
            memmove(r->pixels + (size_t)j * img, r->pixels + (size_t)i * img, img);
        labels[j] = r->l->files[i].label;
        *labeled += i < r->l->labeled;
        j++;
    }
    return j;
}

/* ---- the cache file ----
 * A header page (the key: folder, split, side, the listing's digest; then
 * what decoding found: image count, bad files), the labels padded to a
 * page, the pixels. Written to NAME.tmp and renamed, never changed in
 * place, so a worker mapping it while another replaces it reads the old
 * one whole. */

typedef struct cache_key {
    char text[PAGE]; /* the header's first part, up to and including "--\n" */
    size_t len;
} cache_key;

static void make_key(const char *real, const char *part, int side, const rw_if_list *l,
                     cache_key *k)
{
    k->len = (size_t)snprintf(k->text, sizeof k->text,
                              "runaway image-folder cache, version %d\nfolder %s\nsplit %s\n"
                              "side %d\nfiles %d, %d labeled, %d classes, listing %016llx\n--\n",
                              CACHE_VERSION, real, part, side, l->n, l->labeled, l->classes,
                              (unsigned long long)rw_if_list_digest(l, side));
    if (k->len >= sizeof k->text)
        k->len = sizeof k->text - 1;
}

static size_t cache_bytes(int n, int side)
{
    return PAGE + page_up((size_t)n) + (size_t)n * 3 * side * side;
}

/* What a cache's header says after its key. */
typedef struct cache_result {
    int n, labeled, nbad;
    char bad[PAGE / 2]; /* describe_bad's text when nbad > 0 */
} cache_result;

static int write_header(uint8_t *page, const cache_key *k, const cache_result *res)
{
    memset(page, 0, PAGE);
    memcpy(page, k->text, k->len);
    int w = snprintf((char *)page + k->len, PAGE - k->len, "images %d labeled %d bad %d\n%s\n",
                     res->n, res->labeled, res->nbad, res->nbad ? res->bad : "");
    return w < 0 || (size_t)w >= PAGE - k->len ? -1 : 0;
}

/* Maps path into out when its key is k: 0; else 1 and why not. */
static int cache_map(const char *path, const cache_key *k, int side, int classes,
                     cache_result *res, rw_dataset *out, const char **why)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        *why = errno == ENOENT ? "there was none" : "the old one was unreadable";
        return 1;
    }
    struct stat st;
    uint8_t head[PAGE + 1];
    if (fstat(fd, &st) != 0 || st.st_size < PAGE || pread(fd, head, PAGE, 0) != PAGE) {
        close(fd);
        *why = "the old one was too short";
        return 1;
    }
    head[PAGE] = 0;
    if (memcmp(head, k->text, k->len) != 0) {
        close(fd);
        *why = memcmp(head, k->text, strcspn(k->text, "\n")) == 0
                   ? "files were added, removed or changed since the old one"
                   : "the old one had a bad header";
        return 1;
    }
    const char *rest = (const char *)head + k->len;
    int used = 0;
    if (sscanf(rest, "images %d labeled %d bad %d\n%n", &res->n, &res->labeled, &res->nbad,
               &used) != 3 ||
        res->n < 1 || res->labeled < 0 || res->labeled > res->n ||
        (size_t)st.st_size != cache_bytes(res->n, side)) {
        close(fd);
        *why = "the old one had a bad size or header";
        return 1;
    }
    snprintf(res->bad, sizeof res->bad, "%.*s", (int)strcspn(rest + used, "\n"), rest + used);
    size_t len = (size_t)st.st_size;
    uint8_t *m = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        *why = "the old one could not be mapped";
        return 1;
    }
    const uint8_t *lab = m + PAGE;
    for (int i = 0; i < res->n; i++)
        if (i < res->labeled ? lab[i] >= classes : lab[i] != RW_NO_LABEL) {
            munmap(m, len);
            *why = "the old one had a bad label";
            return 1;
        }
    out->n = res->n;
    out->labeled = res->labeled;
    out->side = side;
    out->classes = classes;
    out->labels = m + PAGE;
    out->pixels = m + PAGE + page_up((size_t)res->n);
    out->map = m;
    out->map_len = len;
    return 0;
}

/* Removes the caches in cache_dir whose folder is gone (a set deleted or
 * moved would otherwise leave its decoded copy behind for good). Under
 * the lock, so no one is writing them. */
static void cache_sweep(const char *cache_dir)
{
    char pat[PATH_MAX + 32];
    if (snprintf(pat, sizeof pat, "%s/imagefolder-*.u8", cache_dir) >= (int)sizeof pat)
        return;
    glob_t g;
    if (glob(pat, 0, NULL, &g) != 0)
        return;
    for (size_t k = 0; k < g.gl_pathc; k++) {
        char head[PAGE + 1] = "";
        FILE *f = fopen(g.gl_pathv[k], "rb");
        size_t got = f ? fread(head, 1, PAGE, f) : 0;
        if (f)
            fclose(f);
        head[got] = 0;
        char *folder = strstr(head, "\nfolder ");
        if (!folder)
            continue;
        folder += strlen("\nfolder ");
        folder[strcspn(folder, "\n")] = 0;
        if (access(folder, F_OK) != 0 && errno == ENOENT)
            unlink(g.gl_pathv[k]);
    }
    globfree(&g);
}

/* Decodes l into a new cache file at tmp, renamed to path. 0; -1 an
 * error of the set's (err); -2 the file could not be written (errno in
 * *errnum). */
static int cache_build(const char *dir, const rw_if_list *l, const cache_key *k,
                       const rw_imagefolder_opts *o, const char *what, const char *tmp,
                       const char *path, cache_result *res, int *errnum, char *err,
                       size_t errlen)
{
    size_t full = cache_bytes(l->n, o->side);
    int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    uint8_t *m = MAP_FAILED;
    decode_run r = {.dir = dir, .l = l, .side = o->side};
    int rc = -2;
    *errnum = 0;
    /* space reserved first: a write through the mapping to a full disk
     * would be a SIGBUS, not an error */
    if (fd < 0 || (*errnum = posix_fallocate(fd, 0, (off_t)full)) != 0 ||
        (m = mmap(NULL, full, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) == MAP_FAILED) {
        if (!*errnum)
            *errnum = errno;
        goto done;
    }
    r.pixels = m + PAGE + page_up((size_t)l->n);
    r.bad = calloc((size_t)l->n, 1);
    pthread_mutex_init(&r.mu, NULL);
    rc = -1;
    if (!r.bad) {
        snprintf(err, errlen, "%s: out of memory", what);
        goto done_run;
    }
    if (decode_all(&r, o->threads, what, o->notice, o->ud, err, errlen) != 0)
        goto done_run;
    describe_bad(&r, res->bad, sizeof res->bad);
    if (r.oom || (r.nbad && !o->skip_bad)) {
        snprintf(err, errlen, "%s: %s%s", what, res->bad,
                 r.oom ? "" : " (data.skip_bad: true leaves such files out)");
        goto done_run;
    }
    res->nbad = r.nbad;
    res->n = compact(&r, m + PAGE, &res->labeled);
    if (res->n == 0) {
        snprintf(err, errlen, "%s: no image decodes (%s)", what, res->bad);
        goto done_run;
    }
    rc = -2;
    if (write_header(m, k, res) != 0) {
        *errnum = ENAMETOOLONG;
        goto done_run;
    }
    /* a cache a crash left half-written must not pass for whole */
    size_t len = cache_bytes(res->n, o->side);
    if (msync(m, full, MS_SYNC) != 0 || ftruncate(fd, (off_t)len) != 0 || fsync(fd) != 0) {
        *errnum = errno;
        goto done_run;
    }
    rc = 0;
done_run:
    pthread_mutex_destroy(&r.mu);
    free(r.bad);
done:
    if (m != MAP_FAILED)
        munmap(m, full);
    if (fd >= 0 && close(fd) != 0 && rc == 0) {
        *errnum = errno;
        rc = -2;
    }
    if (rc == 0 && rename(tmp, path) != 0) {
        *errnum = errno;
        rc = -2;
    }
    if (rc != 0)
        unlink(tmp);
    return rc;
}

/* Without a cache: decoded into memory. */
static int load_memory(const char *dir, const rw_if_list *l, const rw_imagefolder_opts *o,
                       const char *what, cache_result *res, rw_dataset *out, char *err,
                       size_t errlen)
{
    size_t img = (size_t)3 * o->side * o->side;
    decode_run r = {.dir = dir, .l = l, .side = o->side};
    uint8_t *labels = malloc((size_t)l->n);
    r.pixels = malloc((size_t)l->n * img);
    r.bad = calloc((size_t)l->n, 1);
    pthread_mutex_init(&r.mu, NULL);
    int rc = -1;
    if (!labels || !r.pixels || !r.bad) {
        snprintf(err, errlen, "%s: out of memory for %d images of %dx%d (%.1f GB)", what, l->n,
                 o->side, o->side, l->n * (double)img / 1e9);
        goto done;
    }
    if (decode_all(&r, o->threads, what, o->notice, o->ud, err, errlen) != 0)
        goto done;
    describe_bad(&r, res->bad, sizeof res->bad);
    if (r.oom || (r.nbad && !o->skip_bad)) {
        snprintf(err, errlen, "%s: %s%s", what, res->bad,
                 r.oom ? "" : " (data.skip_bad: true leaves such files out)");
        goto done;
    }
    res->nbad = r.nbad;
    res->n = compact(&r, labels, &res->labeled);
    if (res->n == 0) {
        snprintf(err, errlen, "%s: no image decodes (%s)", what, res->bad);
        goto done;
    }
    out->n = res->n;
    out->labeled = res->labeled;
    out->side = o->side;
    out->classes = l->classes;
    out->pixels = r.pixels;
    out->labels = labels;
    r.pixels = NULL;
    labels = NULL;
    rc = 0;
done:
    pthread_mutex_destroy(&r.mu);
    free(r.bad);
    free(r.pixels);
    free(labels);
    return rc;
}

/* After a load: bad files a cache recorded, an error without skip_bad. */
static int check_bad(const cache_result *res, const rw_imagefolder_opts *o, const char *what,
                     char *err, size_t errlen)
{
    if (res->nbad == 0)
        return 0;
    if (!o->skip_bad) {
        snprintf(err, errlen, "%s: %s (data.skip_bad: true leaves such files out)", what,
                 res->bad);
        return -1;
    }
    rw_notice(o->notice, o->ud, "%s: skipped %s (data.skip_bad)", what, res->bad);
    return 0;
}

int rw_imagefolder_load(const char *dir, int train, const rw_imagefolder_opts *o,
                        rw_dataset *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (o->side < 8 || o->side > 1024) {
        snprintf(err, errlen, "%s: cache side %d is not in 8..1024", dir, o->side);
        return -1;
    }
    rw_if_list l;
    if (rw_if_scan(dir, train, o->unlabeled, &l, err, errlen) != 0)
        return -1;
    const char *part = !train ? "val" : l.labeled < l.n ? "train+unlabeled" : "train";
    char what[PATH_MAX + 64];
    snprintf(what, sizeof what, "image folder %s (%s)", dir, part);
    if (l.ignored)
        rw_notice(o->notice, o->ud, "%s: %ld entries that are not .jpg, .jpeg or .png files left "
            "alone", what, l.ignored);
    cache_result res = {0};
    char real[PATH_MAX], why[PATH_MAX + 256] = "no cache folder";
    char path[PATH_MAX + 96], tmp[PATH_MAX + 128], lock[PATH_MAX + 64];
    cache_key k;
    int rc = -1, lk = -1;
    if (!o->cache_dir)
        goto memory;
    if (!realpath(dir, real) ||
        snprintf(path, sizeof path, "%s/imagefolder-%08lx-%s-%d.u8", o->cache_dir,
                 (unsigned long)crc32_z(0L, (const Bytef *)real, strlen(real)), part,
                 o->side) >= (int)sizeof path) {
        snprintf(why, sizeof why, "its paths are too long for a cache");
        goto memory;
    }
    make_key(real, part, o->side, &l, &k);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    snprintf(lock, sizeof lock, "%s/imagefolder.lock", o->cache_dir);
    if (rw_mkdir_p(o->cache_dir, why, sizeof why) != 0)
        goto memory;
    /* flock, not a lock file's existence: the kernel drops it when its
     * holder dies, so a worker killed mid-build blocks no one */
    lk = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lk < 0 || flock(lk, LOCK_EX) != 0) {
        snprintf(why, sizeof why, "cannot lock %s: %s", lock, strerror(errno));
        goto memory;
    }
    const char *stale = NULL, *unmapped = NULL;
    if (cache_map(path, &k, o->side, l.classes, &res, out, &stale) == 0) {
        unlink(tmp); /* what a builder killed mid-write left */
        close(lk);
        rw_notice(o->notice, o->ud, "%s: %d images from the cache %s", what, out->n, path);
        rc = check_bad(&res, o, what, err, errlen);
        goto done;
    }
    cache_sweep(o->cache_dir);
    int errnum = 0;
    double t0 = rw_mono_s();
    int b = cache_build(dir, &l, &k, o, what, tmp, path, &res, &errnum, err, errlen);
    if (b == 0 && cache_map(path, &k, o->side, l.classes, &res, out, &unmapped) != 0)
        b = -3;
    close(lk);
    lk = -1;
    if (b == -1)
        goto done;
    if (b == -2) {
        snprintf(why, sizeof why, "cannot write %s: %s", tmp, strerror(errnum));
        goto memory;
    }
    if (b == -3) {
        snprintf(why, sizeof why, "%s as written: %s", path, unmapped);
        goto memory;
    }
    rw_notice(o->notice, o->ud, "%s: wrote the cache %s (%.2f GB in %.1f s; %s); later loads map it",
        what, path, out->map_len / 1e9, rw_mono_s() - t0, stale);
    rc = check_bad(&res, o, what, err, errlen);
    goto done;
memory:
    if (lk >= 0)
        close(lk);
    lk = -1;
    rw_notice(o->notice, o->ud, "%s: decoded into memory, without a cache (%s)", what, why);
    rc = load_memory(dir, &l, o, what, &res, out, err, errlen);
    if (rc == 0)
        rc = check_bad(&res, o, what, err, errlen);
done:
    if (rc != 0)
        rw_dataset_free(out);
    rw_if_list_free(&l);
    return rc;
}
