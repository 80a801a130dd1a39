/* runaway daemon start|stop|status|check, runaway run, runaway token new. */
#include <errno.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include "proto/grid.h"
#include "proto/msg.h"
#include "tools/cli/cli.h"
#include "tools/cli/plot.h"

/* ------------------------------------------------------------------------ */
/* daemon start|stop|status */

/* runawayd holds STATE_DIR/runawayd.lock from its first moment to its
 * last: a lock we cannot share is a runawayd alive. */
static int daemon_starting(void)
{
    char p[PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/runawayd.lock", state_dir);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    int held = flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK;
    close(fd);
    return held;
}

/* The last line of a file (its log), without the newline; 0 if none. */
static int last_line(const char *path, char *out, size_t len)
{
    out[0] = 0;
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char line[512];
    while (fgets(line, sizeof line, f))
        if (line[0] && line[0] != '\n')
            snprintf(out, len, "%s", line);
    fclose(f);
    out[strcspn(out, "\n")] = 0;
    return out[0] != 0;
}

/* runawayd did not start: what it wrote to its log since offset `from` (a
 * damaged database, a state folder of another user: its reasons and the
 * way out), at most the last 8 KiB of it. */
static void die_with_log(const char *logp, off_t from) __attribute__((noreturn));
static void die_with_log(const char *logp, off_t from)
{
    char buf[8192];
    size_t n = 0;
    int fd = open(logp, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0 && st.st_size > from) {
        off_t at = st.st_size - from > (off_t)sizeof buf - 1 ? st.st_size - (off_t)sizeof buf + 1
                                                             : from;
        ssize_t k = pread(fd, buf, sizeof buf - 1, at);
        n = k > 0 ? (size_t)k : 0;
    }
    if (fd >= 0)
        close(fd);
    while (n && buf[n - 1] == '\n')
        n--;
    buf[n] = '\0';
    if (!n)
        die("runawayd did not come up; see %s", logp);
    die("runawayd did not come up; its log %s says:\n%s", logp, buf);
}

int daemon_start(int argc, char **argv, int quiet)
{
    conn c;
    connect_errno = 0;
    if (open_conn(&c) != 0 && connect_errno == EACCES)
        die_no_daemon(); /* another user's: a second daemon would only fail on its lock */
    if (c.fd >= 0) {
        json_t *r = request(&c, req_new("status"));
        if (!quiet)
            printf("runawayd already running (pid %lld) at %s\n", jint(r, "pid"), sock_path);
        json_decref(r);
        conn_close(&c);
        return 0;
    }
    char bin[PATH_MAX];
    if (daemon_bin)
        snprintf(bin, sizeof bin, "%s", daemon_bin);
    else
        find_prog("runawayd", "daemon", bin, sizeof bin);
    if (mkdir(state_dir, 0700) != 0 && errno != EEXIST) {
        /* runawayd creates the parents; we only need the folder for the log */
        char cmd[PATH_MAX + 32];
        snprintf(cmd, sizeof cmd, "mkdir -p -m 700 '%s'", state_dir);
        if (system(cmd) != 0)
            die("%s: cannot create", state_dir);
    }
    char logp[PATH_MAX + 32];
    snprintf(logp, sizeof logp, "%s/runawayd.log", state_dir);
    struct stat lst;
    off_t log0 = stat(logp, &lst) == 0 ? lst.st_size : 0;
    char **args = calloc((size_t)argc + 5, sizeof *args);
    int k = 0;
    args[k++] = bin;
    args[k++] = "--state-dir";
    args[k++] = state_dir;
    if (worker_bin) {
        args[k++] = "--worker";
        args[k++] = (char *)worker_bin;
    }
    for (int i = 0; i < argc; i++)
        args[k++] = argv[i];
    args[k] = NULL;
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        /* detach: own session, stdio to the log, a grandchild so that
         * init reaps it */
        setsid();
        if (fork() != 0)
            _exit(0);
        int fd = open(logp, O_WRONLY | O_CREAT | O_APPEND, 0600);
        int nul = open("/dev/null", O_RDONLY);
        if (nul >= 0)
            dup2(nul, 0);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        /* nothing of the caller's (a pipe someone waits on) lives on in it */
        for (int fdn = 3; fdn < 1024; fdn++)
            close(fdn);
        execv(bin, args);
        fprintf(stderr, "runaway: cannot run %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    waitpid(pid, NULL, 0);
    free(args);
    double t0 = mono_s();
    for (int said = 0;;) {
        if (open_conn(&c) == 0) {
            json_t *r = request(&c, req_new("status"));
            if (!quiet)
                printf("runawayd started (pid %lld, %lld worker slots) at %s\n", jint(r, "pid"),
                       jint(r, "workers"), sock_path);
            json_decref(r);
            conn_close(&c);
            return 0;
        }
        double t = mono_s() - t0;
        /* past 15 s, a runawayd that still holds its lock file is alive and
         * busy starting (waiting for its database to take writes): wait
         * with it. One that holds no lock after 3 s has exited (it takes
         * the lock first): what it said is in its log since log0. */
        if ((t > 3 && !daemon_starting()) ||
            (t > 15 && (!daemon_starting() || t > RECONNECT_S)))
            die_with_log(logp, log0);
        if (t > 15 && !said && !quiet) {
            char last[512];
            /* on a full disk the log may not have its newest lines */
            fprintf(stderr, "runaway: runawayd is still starting (its log %s ends: %s)\n", logp,
                    last_line(logp, last, sizeof last) ? last : "(empty)");
            said = 1;
        }
        usleep(100000);
    }
}

/* runawayd --check: the database is read here, by the daemon's program
 * (the CLI does not link SQLite), read-only, whether or not a daemon runs:
 * WAL lets a reader and the daemon's writes go on together. So it needs
 * this host to hold the state folder, not only a forwarded socket. */
int daemon_check(void)
{
    char bin[PATH_MAX];
    if (daemon_bin)
        snprintf(bin, sizeof bin, "%s", daemon_bin);
    else
        find_prog("runawayd", "daemon", bin, sizeof bin);
    char db[PATH_MAX + 32];
    snprintf(db, sizeof db, "%s/runaway.db", state_dir);
    if (access(db, F_OK) != 0)
        die("no database at %s to check (it is made by runawayd's first start, on the host "
            "that holds the state folder)", db);
    fflush(stdout);
    execl(bin, bin, "--state-dir", state_dir, "--check", (char *)NULL);
    die("cannot run %s: %s", bin, strerror(errno));
}

int daemon_stop(void)
{
    conn c;
    need_conn(&c);
    json_t *r = request(&c, req_new("shutdown"));
    json_decref(r);
    conn_close(&c);
    printf("runawayd stopping: workers checkpoint, running jobs go back to the queue\n");
    /* the socket disappears when shutdown begins; the lock when it is done */
    char lock[PATH_MAX + 32];
    snprintf(lock, sizeof lock, "%s/runawayd.lock", state_dir);
    for (int i = 0; i < 1200; i++) {
        if (access(lock, F_OK) != 0) {
            printf("runawayd stopped\n");
            return 0;
        }
        usleep(100000);
    }
    fprintf(stderr, "runaway: runawayd still shutting down after 120 s\n");
    return 1;
}

int daemon_status(void)
{
    conn c;
    need_conn(&c);
    json_t *r = request(&c, req_new("status"));
    if (cli_json) {
        print_reply_json(r);
        conn_close(&c);
        return 0;
    }
    printf("runawayd pid %lld, protocol %lld, state %s\n", jint(r, "pid"), jint(r, "version"),
           jstr(r, "state_dir"));
    printf("%lld worker slots on %lld devices%s\n", jint(r, "workers"), jint(r, "devices"),
           json_is_true(json_object_get(r, "shutting_down")) ? " (shutting down)" : "");
    size_t i;
    json_t *v;
    printf("jobs:");
    json_array_foreach(json_object_get(r, "jobs"), i, v) printf(" %s %lld", jstr(v, "state"),
                                                                  jint(v, "n"));
    printf("%s\n", json_array_size(json_object_get(r, "jobs")) ? "" : " none");
    const char *tb = json_string_value(json_object_get(r, "tensorboard"));
    if (tb)
        printf("metrics for TensorBoard: tensorboard --logdir %s\n", tb);
    const char *nc = json_string_value(json_object_get(r, "notify"));
    if (nc)
        printf("at a grid's end or a job's failure it runs: %s\n", nc);
    warn_db_down(r);
    json_decref(r);
    conn_close(&c);
    return 0;
}

/* ------------------------------------------------------------------------ */

/* ------------------------------------------------------------------------ */
/* token new */

/* A TCP token: 32 bytes of getrandom(2) as 64 hex digits (256 bits; the
 * rule, proto/msg.h, asks 32 characters), in a new file of mode 0600. An
 * existing file is never replaced: a daemon and its workers may use it. */
int token_new(const char *path)
{
    unsigned char b[32];
    for (size_t got = 0; got < sizeof b;) {
        ssize_t r = getrandom(b + got, sizeof b - got, 0);
        if (r < 0 && errno != EINTR)
            die("getrandom: %s", strerror(errno));
        got += r > 0 ? (size_t)r : 0;
    }
    char hex[2 * sizeof b + 2];
    rw_hex_encode(b, sizeof b, hex);
    explicit_bzero(b, sizeof b);
    strcat(hex, "\n");
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0 && errno == EEXIST)
        die("%s exists: not replaced (a runawayd or its workers may use it); remove it first "
            "to make a new one", path);
    if (fd < 0)
        die("%s: %s", path, strerror(errno));
    /* 0600 exactly, whatever the umask took away */
    int ok = fchmod(fd, 0600) == 0 && rw_fd_write_all(fd, hex, strlen(hex)) == 0 && fsync(fd) == 0;
    int e = errno;
    explicit_bzero(hex, sizeof hex);
    if (close(fd) != 0 && ok) {
        ok = 0;
        e = errno;
    }
    if (!ok) {
        unlink(path);
        die("%s: not written: %s", path, strerror(e));
    }
    printf("%s: a new token (64 hex digits, mode 0600): runawayd --tcp HOST:PORT --token-file "
           "%s; give each runaway-worker serve a copy (--token-file)\n", path, path);
    return 0;
}

/* ------------------------------------------------------------------------ */
