/* The database checked and backed up. At start, before anything writes,
 * PRAGMA quick_check (a damaged file is refused and left as it was, with
 * the way to recover); on demand (runawayd --check, `runaway daemon
 * check`), PRAGMA integrity_check; and a backup, DB.backup, by SQLite's
 * online backup API at start and then periodically while the database
 * changes. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "daemon/base.h"
#include "daemon/dbcheck.h"

/* The backup beside the database */
#define BACKUP_SUFFIX ".backup"

/* s in single quotes for a shell (' as '\''), so a printed command can be
 * pasted whatever the path holds. */
static void shell_quote(const char *s, char *out, size_t len)
{
    size_t o = 0;
    if (len < 3)
        return;
    out[o++] = '\'';
    for (; *s && o + 6 < len; s++) {
        if (*s == '\'') {
            memcpy(out + o, "'\\''", 4);
            o += 4;
        } else {
            out[o++] = *s;
        }
    }
    out[o++] = '\'';
    out[o] = '\0';
}

/* PRAGMA `pragma` (quick_check or integrity_check, at most `max` findings)
 * of the database file at path, opened read-only: such a connection neither
 * checkpoints its WAL on close nor rolls back a journal, so a damaged file
 * is left byte for byte as it was. 0: it passes; 1: damaged, SQLite's
 * findings in `found` (indented lines); -1: not checked (found says why,
 * *code is SQLite's result code: a lock, an I/O error). */
static int db_verify(const char *path, const char *pragma, int max, char *found, size_t len,
                     int *code)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    size_t o = 0;
    int rows = 0, ok = 0, lines = 0;
    found[0] = '\0';
    *code = SQLITE_OK;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_busy_timeout(db, RD_DB_BUSY_MS);
        sqlite3_db_config(db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
        char sql[64];
        snprintf(sql, sizeof sql, "PRAGMA %s(%d)", pragma, max);
        rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    }
    while (rc == SQLITE_OK) {
        int s = sqlite3_step(st);
        if (s != SQLITE_ROW) {
            rc = s == SQLITE_DONE ? SQLITE_OK : s;
            break;
        }
        const char *t = (const char *)sqlite3_column_text(st, 0);
        if (rows++ == 0 && t && !strcmp(t, "ok")) {
            ok = 1;
            continue;
        }
        /* a finding may span lines: each indented; the first 20 lines say
         * enough (the rest are counted) */
        for (const char *l = t ? t : "?"; *l;) {
            size_t n = strcspn(l, "\n");
            if (lines++ < 20 && o + 1 < len)
                o += (size_t)snprintf(found + o, len - o, "    %.*s\n", (int)(n < 300 ? n : 300), l);
            l += n + (l[n] == '\n');
        }
    }
    if (lines > 20 && o + 1 < len)
        o += (size_t)snprintf(found + o, len - o, "    ... and %d more lines\n", lines - 20);
    int ret;
    if (rc == SQLITE_OK) {
        ret = ok && rows == 1 ? 0 : 1;
    } else if ((rc & 0xff) == SQLITE_CORRUPT || (rc & 0xff) == SQLITE_NOTADB) {
        /* too damaged for the pragma to run: SQLite's error is the finding */
        if (o + 1 < len)
            snprintf(found + o, len - o, "    %s\n", sqlite3_errmsg(db));
        ret = 1;
    } else {
        snprintf(found, len, "%s", db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        *code = rc;
        ret = -1;
    }
    sqlite3_finalize(st);
    sqlite3_close_v2(db);
    return ret;
}

/* What to do about a damaged database: restore the backup if it passes
 * quick_check, else move the damaged files aside; both keep them, in a
 * folder named by the time, and say how to salvage rows from them. */
static void recovery_text(const char *db, char *out, size_t len)
{
    char bk[PATH_MAX + 16], dirp[PATH_MAX], aside[PATH_MAX + 64], found[1024], when[32] = "?";
    snprintf(bk, sizeof bk, "%s" BACKUP_SUFFIX, db);
    snprintf(dirp, sizeof dirp, "%s", db);
    char *slash = strrchr(dirp, '/');
    if (slash)
        *slash = '\0';
    time_t t = time(NULL);
    struct tm tm;
    localtime_r(&t, &tm);
    char stamp[32];
    strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &tm);
    snprintf(aside, sizeof aside, "%s/damaged-%s", slash ? dirp : ".", stamp);
    char qdb[2 * PATH_MAX], qaside[2 * PATH_MAX], qbk[2 * PATH_MAX], qsalv[2 * PATH_MAX];
    char inside[PATH_MAX * 2], salv[PATH_MAX + 32];
    shell_quote(db, qdb, sizeof qdb);
    shell_quote(aside, qaside, sizeof qaside);
    snprintf(inside, sizeof inside, "%s/%s" BACKUP_SUFFIX, aside, slash ? slash + 1 : db);
    shell_quote(inside, qbk, sizeof qbk);
    snprintf(salv, sizeof salv, "%s/salvaged.db", slash ? dirp : ".");
    shell_quote(salv, qsalv, sizeof qsalv);
    struct stat st;
    int code, good = -1;
    if (stat(bk, &st) == 0) {
        good = db_verify(bk, "quick_check", 1, found, sizeof found, &code) == 0;
        localtime_r(&st.st_mtime, &tm);
        strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm);
    }
    size_t o = 0;
    if (good == 1)
        o += (size_t)snprintf(out + o, len - o,
                              "To recover, restore the backup %s (taken %s; it passes quick_check; "
                              "what was written since is lost), keeping the damaged files in %s:\n"
                              "    mkdir -m 700 %s && mv %s* %s/ && cp -p %s %s\n"
                              "Or start with an empty database (grids, jobs and metrics are lost; "
                              "run folders stay): the same without the cp.\n",
                              bk, when, aside, qaside, qdb, qaside, qbk, qdb);
    else
        o += (size_t)snprintf(out + o, len - o,
                              "%s (%s). To recover, start with an empty database (grids, jobs "
                              "and metrics are lost; run folders stay), keeping the damaged "
                              "files in %s:\n"
                              "    mkdir -m 700 %s && mv %s* %s/\n",
                              good == 0 ? "The backup is damaged too" : "There is no backup", bk,
                              aside, qaside, qdb, qaside);
    if (o < len) {
        char moved[PATH_MAX * 2], qmoved[PATH_MAX * 4];
        snprintf(moved, sizeof moved, "%s/%s", aside, slash ? slash + 1 : db);
        shell_quote(moved, qmoved, sizeof qmoved);
        snprintf(out + o, len - o, "sqlite3's .recover may salvage rows from the damaged copy: "
                 "sqlite3 %s .recover | sqlite3 %s\n", qmoved, qsalv);
    }
}

int rd_db_check_start(rd_store *d, char *msg, size_t len)
{
    struct stat st;
    if (stat(d->path, &st) != 0 && errno == ENOENT)
        return 0; /* a new database */
    double t0 = rd_mono();
    char found[2048];
    for (int said = 0;; said = 1) {
        int code, v = db_verify(d->path, "quick_check", 10, found, sizeof found, &code);
        if (v == 0) {
            if (rd_mono() - t0 > 2)
                rd_log("%s passes quick_check (%.0f s)", d->path, rd_mono() - t0);
            return 0;
        }
        if (v == 1) {
            size_t o = (size_t)snprintf(msg, len, "%s is damaged: PRAGMA quick_check finds\n%s"
                                        "runawayd changed nothing and does not start on it.\n",
                                        d->path, found);
            if (o < len)
                recovery_text(d->path, msg + o, len - o);
            return -1;
        }
        /* not checked: a lock (waited for, as at start) or what the open
         * that follows meets and explains (an I/O error, a full disk) */
        code &= 0xff;
        if ((code != SQLITE_BUSY && code != SQLITE_LOCKED) ||
            rd_mono() - t0 > RD_DB_START_WAIT_S) {
            rd_log("%s: not checked (%s)", d->path, found);
            return 0;
        }
        if (!said)
            rd_log("%s: waiting for it to be readable, to check it: %s", d->path, found);
        nanosleep(&(struct timespec){1, 0}, NULL);
    }
}

int rd_db_check_full(const char *db)
{
    char found[8192], text[4096];
    struct stat st;
    if (stat(db, &st) != 0) {
        fprintf(stderr, "runawayd: %s: %s\n", db, strerror(errno));
        return 1;
    }
    double t0 = rd_mono();
    int code, v = db_verify(db, "integrity_check", 100, found, sizeof found, &code);
    if (v < 0) {
        fprintf(stderr, "runawayd: %s: cannot be checked: %s\n", db, found);
        return 1;
    }
    if (v == 0)
        printf("%s: ok (PRAGMA integrity_check, %.1f MB, %.1f s)\n", db, st.st_size / 1e6,
               rd_mono() - t0);
    else {
        recovery_text(db, text, sizeof text);
        printf("%s: damaged: PRAGMA integrity_check finds\n%s%s", db, found, text);
    }
    char bk[PATH_MAX + 16];
    snprintf(bk, sizeof bk, "%s" BACKUP_SUFFIX, db);
    if (stat(bk, &st) != 0) {
        printf("%s: no backup yet\n", bk);
        return v != 0;
    }
    char when[32];
    struct tm tm;
    localtime_r(&st.st_mtime, &tm);
    strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm);
    int vb = db_verify(bk, "integrity_check", 100, found, sizeof found, &code);
    if (vb == 0)
        printf("%s: ok (taken %s)\n", bk, when);
    else if (vb == 1)
        printf("%s: damaged (taken %s): PRAGMA integrity_check finds\n%s", bk, when, found);
    else
        printf("%s: cannot be checked: %s\n", bk, found);
    return v != 0 || vb != 0;
}

/* A backup runs on libuv's thread pool with connections of its own: one
 * sqlite3_backup_step of every page is one read transaction of the source,
 * a consistent snapshot while the daemon's writes go on into the WAL, and
 * the copy, its quick_check and its fsync never stall the loop. (Stepping
 * it on the loop would need many ticks for a large file, and would start
 * over whenever another program writes.) Written to a temporary name, made
 * durable, then renamed: a crash leaves the previous backup whole. */
typedef struct db_backup {
    uv_work_t req;
    char src[PATH_MAX], dst[PATH_MAX + 16], tmp[PATH_MAX + 32];
    int ok;
    char why[512];
    double secs, bytes;
} db_backup;

/* one daemon per process: its backups' state */
static struct {
    db_backup *running;
    double last;              /* rd_mono() when the last one began */
    sqlite3_int64 changes;    /* the daemon's writes (total_changes) then */
    int64_t data_version;     /* other programs' (PRAGMA data_version) then */
    double every_s;           /* --backup-every; 0: none */
    int said;                 /* the first backup was logged */
    int failing;              /* the last one failed: logged once until one succeeds */
    uv_loop_t *loop;
} backup = {.last = -1e18, .changes = -1};

static void backup_unlink_tmp(const char *tmp)
{
    static const char *const sfx[] = {"", "-journal", "-wal", "-shm"};
    char p[PATH_MAX + 64];
    for (size_t i = 0; i < sizeof sfx / sizeof *sfx; i++) {
        snprintf(p, sizeof p, "%s%s", tmp, sfx[i]);
        unlink(p);
    }
}

static void backup_work(uv_work_t *req)
{
    db_backup *b = req->data;
    double t0 = rd_mono();
    sqlite3 *src = NULL, *dst = NULL;
    const char *stage = "open";
    char why[512] = "";
    int ok = 0, fd = -1;
    backup_unlink_tmp(b->tmp); /* a crash's leftover would be opened as a database */
    if (sqlite3_open_v2(b->src, &src, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        snprintf(why, sizeof why, "%s", src ? sqlite3_errmsg(src) : "out of memory");
        goto out;
    }
    sqlite3_busy_timeout(src, RD_DB_BUSY_MS);
    if (sqlite3_open_v2(b->tmp, &dst, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
        SQLITE_OK) {
        snprintf(why, sizeof why, "%s", dst ? sqlite3_errmsg(dst) : "out of memory");
        goto out;
    }
    /* no journal of its own: the copy is thrown away on failure, and made
     * durable by the fsync and rename below */
    sqlite3_exec(dst, "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF", NULL, NULL, NULL);
    stage = "copy";
    sqlite3_backup *bk = sqlite3_backup_init(dst, "main", src, "main");
    if (!bk) {
        snprintf(why, sizeof why, "%s", sqlite3_errmsg(dst));
        goto out;
    }
    int rc = sqlite3_backup_step(bk, -1), fin = sqlite3_backup_finish(bk);
    if (rc != SQLITE_DONE || fin != SQLITE_OK) {
        snprintf(why, sizeof why, "%s (%s)", sqlite3_errstr(rc != SQLITE_DONE ? rc : fin),
                 sqlite3_errmsg(dst));
        goto out;
    }
    /* one file, not in WAL mode as the copied header says: it can be copied
     * alone (README: restoring it) */
    stage = "journal mode";
    if (sqlite3_exec(dst, "PRAGMA journal_mode=DELETE", NULL, NULL, NULL) != SQLITE_OK) {
        snprintf(why, sizeof why, "%s", sqlite3_errmsg(dst));
        goto out;
    }
    sqlite3_close_v2(dst);
    sqlite3_close_v2(src);
    dst = src = NULL;
    stage = "quick_check of the copy";
    int code;
    if (db_verify(b->tmp, "quick_check", 1, why, sizeof why, &code) != 0) {
        why[strcspn(why, "\n")] = '\0';
        goto out;
    }
    stage = "fsync";
    struct stat st;
    fd = open(b->tmp, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fchmod(fd, 0600) != 0 || fsync(fd) != 0 || fstat(fd, &st) != 0) {
        snprintf(why, sizeof why, "%s", strerror(errno));
        goto out;
    }
    b->bytes = (double)st.st_size;
    stage = "rename";
    if (rename(b->tmp, b->dst) != 0) {
        snprintf(why, sizeof why, "%s", strerror(errno));
        goto out;
    }
    /* the rename durable too: the folder's entry */
    char dirp[PATH_MAX];
    snprintf(dirp, sizeof dirp, "%s", b->dst);
    char *slash = strrchr(dirp, '/');
    if (slash)
        *slash = '\0';
    int dfd = open(slash ? dirp : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    ok = 1;
out:
    if (fd >= 0)
        close(fd);
    sqlite3_close_v2(dst);
    sqlite3_close_v2(src);
    if (!ok) {
        snprintf(b->why, sizeof b->why, "%s: %s", stage, why + strspn(why, " "));
        backup_unlink_tmp(b->tmp);
    }
    b->ok = ok;
    b->secs = rd_mono() - t0;
}

static void backup_done(uv_work_t *req, int status)
{
    db_backup *b = req->data;
    if (status == 0 && b->ok) {
        if (!backup.said || backup.failing)
            rd_log("backup %s: %.1f MB in %.1f s (made again every %.0f s while the database "
                   "changes)", b->dst, b->bytes / 1e6, b->secs, backup.every_s);
        backup.said = 1;
        backup.failing = 0;
    } else {
        if (!backup.failing)
            rd_log("backup of %s into %s failed (%s): the previous backup, if any, stays; tried "
                   "again in %.0f s", b->src, b->dst, status ? uv_strerror(status) : b->why,
                   backup.every_s);
        backup.failing = 1;
        backup.changes = -1; /* tried again at the next period, changed or not */
    }
    backup.running = NULL;
    free(b);
}

static void backup_begin(rd_store *d)
{
    db_backup *b = calloc(1, sizeof *b);
    if (!b)
        return;
    snprintf(b->src, sizeof b->src, "%s", d->path);
    snprintf(b->dst, sizeof b->dst, "%s" BACKUP_SUFFIX, d->path);
    snprintf(b->tmp, sizeof b->tmp, "%s" BACKUP_SUFFIX ".tmp", d->path);
    b->req.data = b;
    backup.last = rd_mono();
    backup.changes = sqlite3_total_changes64(d->db);
    backup.data_version = rd_db_int(d, "PRAGMA data_version", 0, -1);
    if (uv_queue_work(backup.loop, &b->req, backup_work, backup_done) != 0) {
        free(b);
        return;
    }
    backup.running = b;
}

void rd_db_backup_start(rd_store *d, uv_loop_t *loop, double every_s)
{
    backup.loop = loop;
    backup.every_s = every_s;
    if (every_s > 0)
        backup_begin(d);
}

void rd_db_backup_tick(rd_store *d, int stopping)
{
    if (backup.every_s <= 0 || backup.running || stopping || rd_db_down(d) ||
        rd_mono() - backup.last < backup.every_s)
        return;
    /* nothing new since the last one: not copied again */
    if (sqlite3_total_changes64(d->db) == backup.changes &&
        rd_db_int(d, "PRAGMA data_version", 0, -1) == backup.data_version) {
        backup.last = rd_mono();
        return;
    }
    backup_begin(d);
}
