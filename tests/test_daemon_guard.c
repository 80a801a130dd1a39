/* runawayd's guards (issue 19, items 5 and 6): a damaged database is
 * refused at start and left as it was, backups are kept and restore, the
 * state folder and its files are private, weak TCP tokens are refused, and
 * the CLI tells "permission denied" from "no runawayd". No training: each
 * test takes seconds. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "daemon_fixture.h"
#include "proto/msg.h"

/* ------------------------------------------------------------------------ */
/* Programs run as another user, or straight from the build */

/* `prog` (a path under the build folder) with its arguments, NULL ended */
static int run_prog(char *out, size_t outlen, int timeout_s, const char *prog, ...)
{
    char exe[1100];
    fx_bin(exe, sizeof exe, prog);
    const char *argv[32] = {exe};
    int n = 1;
    va_list ap;
    va_start(ap, prog);
    const char *a;
    while ((a = va_arg(ap, const char *)) && n < 30)
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    return fx_run_as((uid_t)-1, out, outlen, timeout_s, argv);
}

/* ------------------------------------------------------------------------ */
/* Helpers of these tests */

static void write_file(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    cr_assert_eq(chmod(path, mode), 0);
}

static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s: %s", path, strerror(errno));
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    rewind(f);
    char *b = malloc((size_t)len + 1);
    cr_assert_eq(fread(b, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    b[len] = '\0';
    *n = (size_t)len;
    return b;
}

static mode_t mode_of(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static mode_t mode_of(const char *fmt, ...)
{
    char p[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p, sizeof p, fmt, ap);
    va_end(ap);
    struct stat st;
    cr_assert_eq(stat(p, &st), 0, "%s: %s", p, strerror(errno));
    return st.st_mode & 07777;
}

/* ------------------------------------------------------------------------ */
/* TCP tokens */

Test(token, weak_tokens_are_refused_and_token_new_writes_a_strong_one, .init = fx_prepare,
     .fini = fx_teardown, .timeout = 60)
{
    char out[4096], tok[128], state[128];
    static char port[32]; /* fx_start_daemon keeps the pointer */
    snprintf(port, sizeof port, "127.0.0.1:%d", fx_free_tcp_port());
    snprintf(tok, sizeof tok, "%s/token", fx.dir);
    snprintf(state, sizeof state, "%s/state", fx.dir);
    struct {
        const char *text, *why;
    } weak[] = {
        {"                \n", "the token is blank"},         /* 16 spaces: accepted before */
        {"0123456789abcdef-secret\n", "the token is too short (23 characters)"},
        {"0123456789abcdef 0123456789abcdef\n", "a space or a character"},
    };
    for (size_t i = 0; i < sizeof weak / sizeof *weak; i++) {
        write_file(tok, weak[i].text, 0600);
        int rc = run_prog(out, sizeof out, 20, "daemon/runawayd", "--state-dir", state,
                          "--cpu-slots", "1", "--tcp", port, "--token-file", tok, NULL);
        cr_assert(rc == 1 && strstr(out, tok) && strstr(out, weak[i].why) &&
                      strstr(out, "a token is 32 to 256 printable ASCII characters without "
                                  "spaces; `runaway token new FILE` writes a strong one"),
                  "runawayd with token %zu: status %d: %s", i, rc, out);
        /* the worker says so before it connects (nothing listens there) */
        rc = run_prog(out, sizeof out, 20, "worker/runaway-worker", "serve", "--tcp",
                      "127.0.0.1:1", "--token-file", tok, NULL);
        cr_assert(rc == 1 && strstr(out, weak[i].why) && !strstr(out, "cannot reach"),
                  "worker with token %zu: status %d: %s", i, rc, out);
    }
    /* token new: 64 hex digits, 0600, never over an existing file */
    unlink(tok);
    int rc = run_prog(out, sizeof out, 10, "tools/runaway", "token", "new", tok, NULL);
    cr_assert(rc == 0 && strstr(out, "a new token"), "%s", out);
    cr_assert_eq(mode_of("%s", tok), 0600);
    size_t n;
    char *t = slurp(tok, &n);
    cr_assert_eq(n, 65, "%s", t);
    cr_assert_eq(strspn(t, "0123456789abcdef"), 64, "%s", t);
    t[64] = '\0';
    char why[512];
    cr_assert_eq(rw_token_check(t, why, sizeof why), 0, "%s", why);
    rc = run_prog(out, sizeof out, 10, "tools/runaway", "token", "new", tok, NULL);
    cr_assert(rc == 1 && strstr(out, "exists: not replaced"), "%s", out);
    size_t n2;
    char *t2 = slurp(tok, &n2);
    cr_assert(n2 == 65 && !strncmp(t, t2, 64), "token new replaced the file");
    free(t);
    free(t2);
    /* and the daemon takes it */
    fx_start_daemon("--cpu-slots", "1", "--tcp", port, "--token-file", tok, NULL);
}

/* ------------------------------------------------------------------------ */
/* A private state folder */

/* Another user could read job names with sqlite3 from a 0755 folder and
 * 0644 files, which the daemon kept as it found them (issue 19). */
Test(state, the_state_folder_is_made_private_and_another_users_refused, .init = fx_prepare,
     .fini = fx_teardown, .timeout = 60)
{
    char p[160], out[4096];
    fx_start_daemon("--cpu-slots", "1", NULL); /* makes the database */
    fx_stop_daemon(10);
    cr_assert_eq(chmod(fx.dir, 0755), 0);
    const char *files[] = {"runaway.db", "runawayd.lock", "runawayd.log"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", fx.dir, files[i]);
        if (access(p, F_OK) != 0)
            write_file(p, "", 0644);
        cr_assert_eq(chmod(p, 0644), 0);
    }
    fx_start_daemon("--cpu-slots", "1", NULL);
    cr_assert_eq(mode_of("%s", fx.dir), 0700, "state folder mode %04o", mode_of("%s", fx.dir));
    const char *now_files[] = {"runaway.db", "runaway.db-wal", "runaway.db-shm", "runawayd.lock",
                               "runawayd.log"};
    for (size_t i = 0; i < 5; i++)
        cr_assert_eq(mode_of("%s/%s", fx.dir, now_files[i]), 0600, "%s: mode %04o", now_files[i],
                     mode_of("%s/%s", fx.dir, now_files[i]));
    fx_stop_daemon(10);
    if (geteuid() != 0)
        return; /* the rest gives files to another user */
    /* a database another user owns: refused, naming it, its owner and mode */
    snprintf(p, sizeof p, "%s/runaway.db", fx.dir);
    cr_assert_eq(chown(p, 65534, 65534), 0);
    cr_assert_eq(chmod(p, 0640), 0);
    int rc = run_prog(out, sizeof out, 20, "daemon/runawayd", "--state-dir", fx.dir, "--cpu-slots",
                      "1", NULL);
    char want[256];
    snprintf(want, sizeof want, "runawayd: %s belongs to uid 65534, not to uid 0 that runs "
             "runawayd (mode 0640): refusing to start", p);
    cr_assert(rc == 1 && strstr(out, want), "status %d: %s", rc, out);
    cr_assert_eq(mode_of("%s", p), 0640, "changed another user's file");
    cr_assert_eq(chown(p, 0, 0), 0);
    /* the folder itself */
    cr_assert_eq(chown(fx.dir, 65534, 65534), 0);
    rc = run_prog(out, sizeof out, 20, "daemon/runawayd", "--state-dir", fx.dir, "--cpu-slots", "1",
                  NULL);
    snprintf(want, sizeof want, "runawayd: %s belongs to uid 65534, not to uid 0", fx.dir);
    cr_assert(rc == 1 && strstr(out, want), "status %d: %s", rc, out);
    cr_assert_eq(chown(fx.dir, 0, 0), 0);
}

/* ------------------------------------------------------------------------ */
/* The database: checked at start, backed up, checked on demand */

static void db_exec(const char *path, const char *sql)
{
    sqlite3 *db;
    cr_assert_eq(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    char *msg = NULL;
    cr_assert_eq(sqlite3_exec(db, sql, NULL, NULL, &msg), SQLITE_OK, "%s: %s", sql, msg);
    sqlite3_close(db);
}

/* The first column of the first row of sql on the file at path, read-only;
 * -1 when it cannot be read. */
static long long db_int(const char *path, const char *sql)
{
    sqlite3 *db;
    sqlite3_stmt *st = NULL;
    long long v = -1;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static int quick_check_ok(const char *path)
{
    sqlite3 *db;
    sqlite3_stmt *st = NULL;
    int ok = sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
             sqlite3_prepare_v2(db, "PRAGMA quick_check", -1, &st, NULL) == SQLITE_OK &&
             sqlite3_step(st) == SQLITE_ROW &&
             !strcmp((const char *)sqlite3_column_text(st, 0), "ok");
    sqlite3_finalize(st);
    sqlite3_close(db);
    return ok;
}

/* 2000 event rows (a hundred pages), then 20 bytes xored at the start of
 * three of its pages: their b-tree headers, which quick_check reads. */
static void damage_database(const char *db)
{
    db_exec(db, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) "
                "INSERT INTO events(t, kind, text) SELECT i, 'test', printf('%0200d', i) FROM n");
    size_t n;
    char *b = slurp(db, &n);
    const size_t page = 4096, pages[] = {10, 40, 80};
    cr_assert_gt(n, 81 * page, "the database has %zu bytes", n);
    for (size_t i = 0; i < 3; i++)
        for (size_t k = 0; k < 20; k++)
            b[(pages[i] - 1) * page + k] ^= 0x5a;
    FILE *f = fopen(db, "r+b");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(b, 1, n, f), n);
    fclose(f);
    free(b);
}

/* A database damaged inside its pages was opened and used without a word,
 * submit and rm writing on top of it (issue 19). */
Test(db, a_damaged_database_is_refused_untouched_and_the_backup_restores_it, .init = fx_prepare,
     .fini = fx_teardown, .timeout = 90)
{
    char db[128], bk[128], out[16384];
    snprintf(db, sizeof db, "%s/runaway.db", fx.dir);
    snprintf(bk, sizeof bk, "%s/runaway.db.backup", fx.dir);
    fx_start_daemon("--cpu-slots", "1", NULL); /* the database, and its backup at start */
    for (double t0 = fx_now(); access(bk, F_OK) != 0; usleep(50000))
        cr_assert_lt(fx_now() - t0, 10, "no backup %s within 10 s of the start", bk);
    int rc = run_prog(out, sizeof out, 30, "tools/runaway", "--state-dir", fx.dir, "daemon", "check",
                      NULL);
    cr_assert(rc == 0 && strstr(out, ": ok (PRAGMA integrity_check"), "status %d: %s", rc, out);
    fx_stop_daemon(10);
    damage_database(db);
    size_t n0;
    char *before = slurp(db, &n0);

    rc = run_prog(out, sizeof out, 30, "daemon/runawayd", "--state-dir", fx.dir, "--cpu-slots", "1",
                  NULL);
    char want[256];
    snprintf(want, sizeof want, "runawayd: %s is damaged: PRAGMA quick_check finds\n", db);
    cr_assert(rc == 1 && strstr(out, want), "status %d: %s", rc, out);
    cr_assert(strstr(out, "btreeInitPage") || strstr(out, "malformed") || strstr(out, "Page"),
              "no finding of SQLite's quoted: %s", out);
    snprintf(want, sizeof want, "To recover, restore the backup %s (taken ", bk);
    cr_assert(strstr(out, "runawayd changed nothing and does not start on it.\n") &&
                  strstr(out, want) && strstr(out, "it passes quick_check"), "%s", out);
    /* changed nothing: the same bytes */
    size_t n1;
    char *after = slurp(db, &n1);
    cr_assert(n0 == n1 && !memcmp(before, after, n0), "the damaged file was written");
    free(after);
    /* runaway daemon start says why, at once */
    double t0 = fx_now();
    rc = run_prog(out, sizeof out, 30, "tools/runaway", "--state-dir", fx.dir, "daemon", "start",
                  "--cpu-slots", "1", NULL);
    cr_assert(rc == 1 && strstr(out, "is damaged: PRAGMA quick_check finds") &&
                  strstr(out, "To recover"), "status %d: %s", rc, out);
    cr_assert_lt(fx_now() - t0, 10, "daemon start took %.0f s to say it", fx_now() - t0);
    after = slurp(db, &n1);
    cr_assert(n0 == n1 && !memcmp(before, after, n0), "the damaged file was written");
    free(after);
    free(before);
    /* daemon check: the full check, exit 1 */
    rc = run_prog(out, sizeof out, 30, "tools/runaway", "--state-dir", fx.dir, "daemon", "check",
                  NULL);
    snprintf(want, sizeof want, "%s: damaged: PRAGMA integrity_check finds\n", db);
    cr_assert(rc == 1 && strstr(out, want) && strstr(out, "To recover"), "status %d: %s", rc, out);
    snprintf(want, sizeof want, "%s: ok (taken ", bk);
    cr_assert(strstr(out, want), "%s", out);

    /* the command it gives restores the backup, and the daemon starts */
    const char *cmd = strstr(out, "\n    mkdir -m 700 ");
    cr_assert_not_null(cmd, "%s", out);
    char line[2048];
    snprintf(line, sizeof line, "%.*s", (int)strcspn(cmd + 1, "\n"), cmd + 1);
    cr_assert(strstr(line, "cp -p "), "%s", line);
    cr_assert_eq(system(line), 0, "%s", line);
    /* folders of a job and a grid the backup never saw: their ids are not
     * given again */
    char cmdl[512];
    snprintf(cmdl, sizeof cmdl, "mkdir -p %s/runs/7 %s/tensorboard/g3-late", fx.dir, fx.dir);
    cr_assert_eq(system(cmdl), 0);
    fx_start_daemon("--cpu-slots", "1", NULL);
    cr_assert(quick_check_ok(db));
    cr_assert_eq(db_int(db, "SELECT COUNT(*) FROM events WHERE kind='test'"), 0,
                 "the backup was taken before the rows");
    cr_assert_eq(db_int(db, "SELECT id FROM high_water WHERE tbl='jobs'"), 7);
    cr_assert_eq(db_int(db, "SELECT id FROM high_water WHERE tbl='grids'"), 3);
}

Test(db, the_backup_is_whole_private_and_follows_changes, .init = fx_prepare, .fini = fx_teardown,
     .timeout = 60)
{
    char db[128], bk[128], tmp[160];
    snprintf(db, sizeof db, "%s/runaway.db", fx.dir);
    snprintf(bk, sizeof bk, "%s/runaway.db.backup", fx.dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", bk);
    fx_start_daemon("--cpu-slots", "1", "--backup-every", "1", NULL);
    for (double t0 = fx_now(); access(bk, F_OK) != 0; usleep(50000))
        cr_assert_lt(fx_now() - t0, 10, "no backup %s within 10 s of the start", bk);
    cr_assert(quick_check_ok(bk));
    cr_assert_eq(mode_of("%s", bk), 0600);
    /* one file, not in WAL mode: copying it alone is enough */
    size_t n;
    char *b = slurp(bk, &n);
    cr_assert(n > 100 && b[18] == 1 && b[19] == 1, "write/read versions %d/%d", b[18], b[19]);
    free(b);
    cr_assert(db_int(bk, "SELECT COUNT(*) FROM sqlite_master WHERE name='jobs'") == 1);
    /* a change, by another program here: in the backup within seconds */
    db_exec(db, "INSERT INTO events(t, kind, text) VALUES(1, 'test', 'by hand')");
    for (double t0 = fx_now(); db_int(bk, "SELECT COUNT(*) FROM events WHERE kind='test'") != 1;
         usleep(100000))
        cr_assert_lt(fx_now() - t0, 10, "the change is not in the backup after 10 s");
    cr_assert(quick_check_ok(bk));
    cr_assert_neq(access(tmp, F_OK), 0, "%s left behind", tmp);
    /* unchanged: not copied again */
    struct stat s0, s1;
    cr_assert_eq(stat(bk, &s0), 0);
    sleep(3);
    cr_assert_eq(stat(bk, &s1), 0);
    cr_assert_eq(s0.st_ino, s1.st_ino, "an unchanged database was backed up again");
}

/* ------------------------------------------------------------------------ */
/* The CLI and a socket it may not open */

/* `runaway` said "no runawayd at ..." for another user's socket (EACCES),
 * and `daemon start` tried to start a second daemon there (issue 19). */
Test(cli, another_users_socket_is_permission_denied, .init = fx_prepare, .fini = fx_teardown,
     .timeout = 30)
{
    /* a listening socket of ours, mode 0600; the CLI runs as another user
     * (as root: nobody), else with the socket made 0000 */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, fx.sock, strlen(fx.sock) + 1);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0, "%s", strerror(errno));
    cr_assert_eq(listen(fd, 4), 0);
    int root = geteuid() == 0;
    cr_assert_eq(chmod(fx.sock, root ? 0600 : 0), 0);
    cr_assert_eq(chmod(fx.dir, 0755), 0); /* the folder may be entered */
    uid_t as = root ? 65534 : (uid_t)-1;
    char exe[1100], out[4096], want[256];
    fx_bin(exe, sizeof exe, "tools/runaway");
    const char *ls[] = {exe, "--state-dir", fx.dir, "ls", NULL};
    int rc = fx_run_as(as, out, sizeof out, 10, ls);
    if (root)
        snprintf(want, sizeof want, "runaway: permission denied: %s belongs to another user "
                 "(uid 0), whose runawayd serves its owner only", fx.sock);
    else
        snprintf(want, sizeof want, "runaway: permission denied: cannot connect to %s", fx.sock);
    cr_assert(rc == 1 && strstr(out, want) && !strstr(out, "no runawayd"), "status %d: %s", rc,
              out);
    const char *start[] = {exe, "--state-dir", fx.dir, "daemon", "start", NULL};
    rc = fx_run_as(as, out, sizeof out, 20, start);
    cr_assert(rc == 1 && strstr(out, want), "daemon start: status %d: %s", rc, out);
    close(fd);
}
