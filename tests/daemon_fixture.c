/* The daemon suites' fixture (see daemon_fixture.h for how to use it). */
#include "daemon_fixture.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct fx_state fx = {.daemon_pid = -1};

/* the last start's extra arguments, copied: fx_restart_daemon gives them again */
static char daemon_arg[8][1024];
static int daemon_args;

double fx_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

void fx_bin(char *out, size_t len, const char *rel)
{
    const char *build = getenv("RW_BUILD_ROOT");
    snprintf(out, len, "%s/%s", build ? build : "build", rel);
}

/* ------------------------------------------------------------------------ */
/* The state folder and its daemon */

void fx_prepare(void)
{
    snprintf(fx.dir, sizeof fx.dir, "/tmp/rwd.XXXXXX");
    cr_assert_not_null(mkdtemp(fx.dir));
    snprintf(fx.sock, sizeof fx.sock, "%s/runawayd.sock", fx.dir);
    snprintf(fx.log, sizeof fx.log, "%s.log", fx.dir);
    /* a private synthetic-data cache: tests do not touch the user's, nor
     * each other's */
    char cache[128];
    snprintf(cache, sizeof cache, "%s/cache", fx.dir);
    setenv("XDG_CACHE_HOME", cache, 1);
}

int fx_connect(void)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    cr_assert_lt(strlen(fx.sock), sizeof sa.sun_path);
    memcpy(sa.sun_path, fx.sock, strlen(fx.sock) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

void fx_restart_daemon(void)
{
    char d[1100], w[1100];
    fx_bin(d, sizeof d, "daemon/runawayd");
    fx_bin(w, sizeof w, "worker/runaway-worker");
    const char *argv[32] = {d,           "--state-dir", fx.dir, "--cpu-slots", "2",
                            "--threads", "1",           "--worker", w, "--heartbeat",
                            "0.2",       "--heartbeat-timeout", "3", "--shutdown-timeout", "10"};
    int n = 15;
    for (int k = 0; k < daemon_args; k++)
        argv[n++] = daemon_arg[k];
    argv[n] = NULL;
    fx.daemon_pid = fork();
    cr_assert_geq(fx.daemon_pid, 0);
    if (fx.daemon_pid == 0) {
        int fd = open(fx.log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        dup2(fd, 1);
        dup2(fd, 2);
        execv(d, (char **)argv);
        _exit(127);
    }
    for (double t0 = fx_now(); fx_now() - t0 < 10;) {
        int fd = fx_connect();
        if (fd >= 0) {
            close(fd);
            return;
        }
        /* one that exits (bad arguments, a lock) will never listen */
        int st;
        if (waitpid(fx.daemon_pid, &st, WNOHANG) == fx.daemon_pid) {
            fx.daemon_pid = -1;
            cr_assert_fail("runawayd exited (status %d) before it listened on %s (log: %s)", st,
                           fx.sock, fx.log);
        }
        usleep(20000);
    }
    cr_assert_fail("runawayd did not listen on %s within 10 s (log: %s)", fx.sock, fx.log);
}

void fx_start_daemon(const char *arg, ...)
{
    va_list ap;
    va_start(ap, arg);
    daemon_args = 0;
    for (const char *a = arg; a; a = va_arg(ap, const char *)) {
        cr_assert_lt(daemon_args, 8, "more than 8 extra runawayd arguments");
        cr_assert_lt(strlen(a), sizeof daemon_arg[0], "runawayd argument too long: %s", a);
        snprintf(daemon_arg[daemon_args++], sizeof daemon_arg[0], "%s", a);
    }
    va_end(ap);
    fx_restart_daemon();
}

int fx_stop_daemon(double grace_s)
{
    if (fx.daemon_pid <= 0)
        return -1;
    kill(fx.daemon_pid, SIGTERM);
    int st = -1;
    for (double t0 = fx_now(); fx_now() - t0 < grace_s;) {
        if (waitpid(fx.daemon_pid, &st, WNOHANG) == fx.daemon_pid) {
            fx.daemon_pid = -1;
            return st;
        }
        usleep(20000);
    }
    kill(fx.daemon_pid, SIGKILL);
    waitpid(fx.daemon_pid, &st, 0);
    fx.daemon_pid = -1;
    return -2;
}

void fx_kill_daemon(void)
{
    kill(fx.daemon_pid, SIGKILL);
    waitpid(fx.daemon_pid, NULL, 0);
    fx.daemon_pid = -1;
}

void fx_setup(void)
{
    fx_prepare();
    fx_start_daemon(NULL);
}

void fx_setup_notify(void)
{
    fx_prepare();
    fx_start_daemon("--notify",
                    "env | grep '^RUNAWAY_' | sort > \"$RUNAWAY_STATE_DIR/n-$RUNAWAY_EVENT-"
                    "$RUNAWAY_GRID$RUNAWAY_JOB.tmp\" && mv \"$RUNAWAY_STATE_DIR/n-$RUNAWAY_EVENT-"
                    "$RUNAWAY_GRID$RUNAWAY_JOB.tmp\" \"$RUNAWAY_STATE_DIR/n-$RUNAWAY_EVENT-"
                    "$RUNAWAY_GRID$RUNAWAY_JOB.txt\"; echo x >> \"$RUNAWAY_STATE_DIR/n-count\"",
                    NULL);
}

/* A daemon started by `runaway daemon start` is not our child: the lock
 * file names it. Killed only while it holds the lock: a stale file's pid
 * may be another program's by now. */
static void kill_lock_holder(void)
{
    char lock[128];
    snprintf(lock, sizeof lock, "%s/runawayd.lock", fx.dir);
    int fd = open(lock, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    if (flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK) {
        char text[32] = "";
        ssize_t n = read(fd, text, sizeof text - 1);
        int pid = n > 0 ? atoi(text) : 0;
        if (pid > 1)
            kill(pid, SIGKILL);
    }
    close(fd);
}

void fx_teardown(void)
{
    fx_stop_daemon(10);
    kill_lock_holder();
    /* under -Db_sanitize, the daemon's and the workers' reports land in
     * their logs: a finding fails the test and keeps the files */
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "grep -l -E 'ERROR: AddressSanitizer|runtime error:|LeakSanitizer' '%s' "
             "'%s'/workers/*.log >/dev/null 2>&1",
             fx.log, fx.dir);
    int found = system(cmd) == 0;
    if (!found && !getenv("RW_TEST_KEEP")) { /* RW_TEST_KEEP=1: keep the files, to look */
        /* a tmpfs on the folder is unmounted first */
        snprintf(cmd, sizeof cmd, "%s%s%srm -rf '%s' '%s'", fx.tmpfs ? "umount '" : "",
                 fx.tmpfs ? fx.dir : "", fx.tmpfs ? "' && " : "", fx.dir, fx.log);
        if (system(cmd) != 0)
            fprintf(stderr, "cannot remove %s\n", fx.dir);
    }
    cr_assert(!found, "sanitizer report in %s or %s/workers/*.log", fx.log, fx.dir);
}

int fx_mount_tmpfs(const char *size)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "mount -t tmpfs -o size=%s,mode=0700 tmpfs '%s' 2>/dev/null", size,
             fx.dir);
    fx.tmpfs = geteuid() == 0 && system(cmd) == 0;
    return fx.tmpfs;
}

int fx_free_tcp_port(void)
{
    /* the kernel's pick of a free port; the daemon binds it a moment later
     * (a fixed port would collide with another suite's, or another
     * checkout's, daemon running at the same time) */
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    socklen_t len = sizeof sa;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0, "%s", strerror(errno));
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

/* ------------------------------------------------------------------------ */
/* Programs */

int fx_run(char *out, size_t outlen, int timeout_s, const char **argv)
{
    return fx_run_as((uid_t)-1, out, outlen, timeout_s, argv);
}

int fx_run_as(uid_t uid, char *out, size_t outlen, int timeout_s, const char **argv)
{
    const char *exe = argv[0];
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(p[1], 1);
        dup2(p[1], 2);
        close(p[0]);
        close(p[1]);
        if (uid != (uid_t)-1 && (setgid(uid) != 0 || setuid(uid) != 0))
            _exit(126);
        execv(exe, (char **)argv);
        _exit(127);
    }
    close(p[1]);
    size_t o = 0;
    double t0 = fx_now();
    struct pollfd pf = {.fd = p[0], .events = POLLIN};
    for (;;) {
        if (fx_now() - t0 >= timeout_s)
            kill(pid, SIGKILL);
        cr_assert(fx_now() - t0 < timeout_s, "%s %s: no end after %d s; output:\n%.*s", exe,
                  argv[1] && argv[2] && argv[3] ? argv[3] : "", timeout_s, (int)o, out);
        if (poll(&pf, 1, 200) <= 0)
            continue;
        ssize_t k = read(p[0], out + o, outlen - 1 - o);
        if (k <= 0)
            break;
        o += (size_t)k;
        if (o == outlen - 1)
            o = 0; /* keep the tail of a long watch */
    }
    out[o] = '\0';
    close(p[0]);
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int fx_cli(char *out, size_t outlen, int timeout_s, ...)
{
    char exe[1100];
    fx_bin(exe, sizeof exe, "tools/runaway");
    const char *argv[32] = {exe, "--state-dir", fx.dir};
    int n = 3;
    va_list ap;
    va_start(ap, timeout_s);
    const char *a;
    while ((a = va_arg(ap, const char *)) && n < 30)
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    return fx_run(out, outlen, timeout_s, argv);
}

pid_t fx_cli_start(const char *file, const char **args)
{
    char exe[1100];
    fx_bin(exe, sizeof exe, "tools/runaway");
    const char *argv[12] = {exe, "--state-dir", fx.dir};
    for (int k = 0; k < 8 && args[k]; k++)
        argv[3 + k] = args[k];
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        int fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(fd, 1);
        dup2(fd, 2);
        execv(exe, (char **)argv);
        _exit(127);
    }
    return pid;
}

int fx_cli_wait(pid_t pid, const char *file, double secs, char *out, size_t outlen)
{
    int st = 0, rc = -1;
    for (double t0 = fx_now(); fx_now() - t0 < secs; usleep(50000))
        if (waitpid(pid, &st, WNOHANG) == pid) {
            rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
            break;
        }
    if (rc < 0 && kill(pid, SIGKILL) == 0)
        waitpid(pid, NULL, 0);
    FILE *f = fopen(file, "r");
    size_t n = f ? fread(out, 1, outlen - 1, f) : 0;
    out[n] = '\0';
    if (f)
        fclose(f);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Files and grids */

void fx_write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
}

int fx_lines_of(const char *path)
{
    FILE *f = fopen(path, "r");
    int n = 0, ch;
    if (!f)
        return 0;
    while ((ch = fgetc(f)) != EOF)
        n += ch == '\n';
    fclose(f);
    return n;
}

static const char *tiny_base =
    "  data: {kind: synthetic, synthetic: {train: 100, test: 40, seed: 1}, image_size: 8,"
    " loader_threads: 1}\n"
    "  model: {stem: cifar, width: 2, projector: {hidden: 16, out: 8}, predictor_hidden: 16}\n"
    "  optim: {batch_size: 16, epochs: %d}\n"
    "  eval: {linear: {epochs: 5, batch_size: 32}}\n"
    "  checkpoint: {every_epochs: %d}\n";

void fx_write_grid(const char *path, const char *name, int epochs, int ckpt, const char *axes)
{
    char base[1024], text[4096];
    snprintf(base, sizeof base, tiny_base, epochs, ckpt);
    snprintf(text, sizeof text, "name: %s\nbase:\n%sgrid:\n%s", name, base, axes);
    fx_write_file(path, text);
}

void fx_submit_grid(const char *name, int epochs, int ckpt, const char *axes)
{
    char path[160], out[4096];
    snprintf(path, sizeof path, "%s/%s.yaml", fx.dir, name);
    fx_write_grid(path, name, epochs, ckpt, axes);
    int rc = fx_cli(out, sizeof out, 20, "submit", path, NULL);
    cr_assert_eq(rc, 0, "submit %s: %s", name, out);
}

long long fx_submit_long(const char *name)
{
    char path[128], out[4096];
    snprintf(path, sizeof path, "%s/%s.yaml", fx.dir, name);
    fx_write_grid(path, name, 300, 10, "  seed: [0]\n");
    int rc = fx_cli(out, sizeof out, 20, "submit", path, NULL);
    cr_assert_eq(rc, 0, "%s", out);
    const char *j = strstr(out, "  j");
    cr_assert_not_null(j, "%s", out);
    return strtoll(j + 3, NULL, 10);
}

/* ------------------------------------------------------------------------ */
/* Raw protocol clients */

json_t *fx_recv(int fd, rw_frame_reader *r, int timeout_ms)
{
    json_t *m = NULL;
    char err[256];
    int rc = rw_frame_recv_fd(fd, r, &m, timeout_ms, err, sizeof err);
    return rc == 1 ? m : NULL;
}

int fx_closed_by_peer(int fd, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    char b[256];
    for (double t0 = fx_now(); (fx_now() - t0) * 1000 < timeout_ms;) {
        if (poll(&p, 1, 100) > 0) {
            ssize_t n = read(fd, b, sizeof b);
            if (n == 0 || (n < 0 && errno == ECONNRESET))
                return 1;
        }
    }
    return 0;
}

json_t *fx_request(int fd, rw_frame_reader *r, json_t *m)
{
    cr_assert_eq(rw_frame_send_fd(fd, m), 0);
    long long id = rw_msg_id(m);
    json_decref(m);
    for (;;) {
        json_t *rep = fx_recv(fd, r, 10000);
        cr_assert_not_null(rep, "no reply within 10 s");
        if (rw_msg_id(rep) == id)
            return rep;
        json_decref(rep);
    }
}

int fx_client(rw_frame_reader *r)
{
    int fd = fx_connect();
    cr_assert_geq(fd, 0);
    rw_frame_reader_init(r, 0);
    json_t *h = rw_msg_new("hello", 1);
    json_object_set_new(h, "version", json_integer(RW_PROTO_VERSION));
    json_object_set_new(h, "role", json_string("client"));
    json_t *rep = fx_request(fd, r, h);
    cr_assert_str_eq(json_string_value(json_object_get(rep, "type")), "ok");
    json_decref(rep);
    return fd;
}

json_t *fx_ask(json_t *m)
{
    rw_frame_reader r;
    int fd = fx_client(&r);
    json_t *rep = fx_request(fd, &r, m);
    close(fd);
    rw_frame_reader_free(&r);
    return rep;
}

json_t *fx_ask_simple(const char *type, const char *key, const char *val)
{
    rw_frame_reader r;
    int fd = fx_client(&r);
    json_t *m = rw_msg_new(type, 2);
    if (key)
        json_object_set_new(m, key, json_string(val));
    json_t *rep = fx_request(fd, &r, m);
    close(fd);
    rw_frame_reader_free(&r);
    return rep;
}

void fx_expect_still_serving(void)
{
    json_t *r = fx_ask_simple("status", NULL, NULL);
    cr_assert_str_eq(json_string_value(json_object_get(r, "type")), "ok");
    json_decref(r);
}

void fx_expect_error(json_t *rep, const char *code, const char *text)
{
    const char *msg = json_string_value(json_object_get(rep, "message"));
    cr_assert(!strcmp(json_string_value(json_object_get(rep, "type")), "error") &&
                  !strcmp(json_string_value(json_object_get(rep, "code")), code) && msg &&
                  strstr(msg, text),
              "want %s error with '%s', got %s", code, text, json_dumps(rep, 0));
    json_decref(rep);
}

void fx_expect_rejected(const void *bytes, size_t n, int hello_first, const char *code)
{
    rw_frame_reader r;
    int fd;
    if (hello_first) {
        fd = fx_client(&r);
    } else {
        fd = fx_connect();
        rw_frame_reader_init(&r, 0);
    }
    cr_assert_geq(fd, 0);
    rw_fd_write_all(fd, bytes, n);
    json_t *e = fx_recv(fd, &r, 5000);
    cr_assert_not_null(e, "no error reply for %s", code);
    cr_assert_str_eq(json_string_value(json_object_get(e, "type")), "error");
    cr_assert_str_eq(json_string_value(json_object_get(e, "code")), code, "message: %s",
                     json_string_value(json_object_get(e, "message")));
    cr_assert(json_string_length(json_object_get(e, "message")) > 0);
    json_decref(e);
    cr_assert(fx_closed_by_peer(fd, 5000), "connection not closed after %s", code);
    close(fd);
    rw_frame_reader_free(&r);
    fx_expect_still_serving();
}

void fx_expect_rejected_body(const char *body, int hello_first, const char *code)
{
    char *b;
    size_t n;
    rw_frame_encode_raw(body, strlen(body), &b, &n);
    fx_expect_rejected(b, n, hello_first, code);
    free(b);
}

long long fx_worker_pid(long long job)
{
    json_t *r = fx_ask_simple("workers", NULL, NULL);
    size_t i;
    json_t *v;
    long long pid = 0;
    json_array_foreach(json_object_get(r, "workers"), i, v) if (json_integer_value(
        json_object_get(v, "job")) == job) pid = json_integer_value(json_object_get(v, "pid"));
    json_decref(r);
    cr_assert_gt(pid, 0, "no worker holds job %lld", job);
    return pid;
}

/* ------------------------------------------------------------------------ */
/* The database and waits */

sqlite3 *fx_open_db(void)
{
    char p[128];
    snprintf(p, sizeof p, "%s/runaway.db", fx.dir);
    sqlite3 *db;
    cr_assert_eq(sqlite3_open_v2(p, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    return db;
}

double fx_db_num(sqlite3 *db, const char *sql, long long arg)
{
    sqlite3_stmt *st;
    cr_assert_eq(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK, "%s", sqlite3_errmsg(db));
    if (sqlite3_bind_parameter_count(st))
        sqlite3_bind_int64(st, 1, arg);
    double v = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_double(st, 0) : NAN;
    sqlite3_finalize(st);
    return v;
}

void fx_wait_for(const char *what, const char *sql, long long arg, double want, double secs)
{
    double t0 = fx_now();
    for (;;) {
        sqlite3 *db = fx_open_db();
        double v = fx_db_num(db, sql, arg);
        sqlite3_close(db);
        if (v >= want)
            return;
        cr_assert(fx_now() - t0 < secs, "%s: not within %.0f s (got %g)", what, secs, v);
        usleep(50000);
    }
}

void fx_wait_job(long long job, const char *state, double secs)
{
    char *sql = sqlite3_mprintf("SELECT state=%Q FROM jobs WHERE id=?", state);
    char what[64];
    snprintf(what, sizeof what, "j%lld %s", job, state);
    fx_wait_for(what, sql, job, 1, secs);
    sqlite3_free(sql);
}

void fx_wait_jobs(const char *state, int n, double secs)
{
    char *sql = sqlite3_mprintf("SELECT COUNT(*) FROM jobs WHERE state=%Q", state);
    char what[64];
    snprintf(what, sizeof what, "%d jobs %s", n, state);
    fx_wait_for(what, sql, 0, n, secs);
    sqlite3_free(sql);
}

void fx_wait_epoch(long long job, int epoch, double secs)
{
    char what[64];
    snprintf(what, sizeof what, "j%lld epoch %d", job, epoch);
    fx_wait_for(what, "SELECT MAX(epoch) FROM metrics WHERE job_id=? AND kind='epoch'", job, epoch,
                secs);
}

void fx_check_tensorboard(long long job, int flags, const char *expect)
{
    const char *src = getenv("RW_SOURCE_ROOT");
    char script[1100], tb[128], db[128], jarg[32], out[4096];
    snprintf(script, sizeof script, "%s/tests/tb_check.py", src ? src : ".");
    snprintf(tb, sizeof tb, "%s/tensorboard", fx.dir);
    snprintf(db, sizeof db, "%s/runaway.db", fx.dir);
    snprintf(jarg, sizeof jarg, "%lld", job);
    const char *argv[10] = {"/usr/bin/python3", script, tb, db};
    int n = 4;
    if (job) {
        argv[n++] = "--job";
        argv[n++] = jarg;
    }
    if (flags & FX_TB_PURGE)
        argv[n++] = "--expect-purge";
    if (flags & FX_TB_GAPS)
        argv[n++] = "--allow-gaps";
    argv[n] = NULL;
    int rc = fx_run(out, sizeof out, 60, argv);
    cr_assert(!strstr(out, "No module named 'crc32c'"),
              "tb_check.py needs Debian's python3-crc32c (./tools/test installs it)");
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert(strstr(out, expect), "expected '%s' in: %s", expect, out);
}
