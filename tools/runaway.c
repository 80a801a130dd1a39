/* runaway: the command-line client of runawayd. Plain blocking sockets: one
 * request, one reply (watch: a stream of events until watch_end). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proto/frame.h"
#include "proto/grid.h"
#include "proto/msg.h"
#include "tools/plot.h"

static char state_dir[PATH_MAX];
static char sock_path[PATH_MAX + 32];
static const char *daemon_bin = NULL, *worker_bin = NULL;
static long long next_id = 1;
static int connect_errno; /* errno of the last connect that failed */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: runaway [--state-dir DIR] COMMAND ...\n"
            "  daemon start [RUNAWAYD OPTIONS...]   start runawayd in the background\n"
            "  daemon stop                          workers checkpoint, jobs go back to the queue\n"
            "  daemon status\n"
            "  daemon check                         PRAGMA integrity_check of the database and\n"
            "                                       its backup (read-only; here, not through a\n"
            "                                       forwarded socket); exit 1 on damage\n"
            "  submit SPEC.yaml [--priority P]      a grid file or a plain spec (a 1-job grid)\n"
            "         [-n|--dry-run]                -n: only list its jobs and how they differ\n"
            "  ls [GRID] [--state S]                jobs (the newest 500, or one grid's);\n"
            "                                       S: queued, running, done, failed (with\n"
            "                                       why) or cancelled\n"
            "  grids                                the newest 200 grids: jobs by state and\n"
            "                                       the time left (estimated)\n"
            "  show JOB                             a job: state, attempts, result, spec\n"
            "  diff JOB JOB                         the fields in which their specs differ\n"
            "  cancel JOB|GRID                      running jobs checkpoint and stop\n"
            "  requeue JOB|GRID                     failed or cancelled jobs back to the queue,\n"
            "                                       each resuming from its checkpoint\n"
            "  priority JOB|GRID P                  a new priority (-1000..1000) for its jobs not\n"
            "                                       yet done: the queued ones move\n"
            "  rm JOB|GRID                          ended jobs out of the database, with their\n"
            "                                       run folders and TensorBoard runs\n"
            "  logs JOB [--tail N] [-f|--follow]    the job's log and events (the last N, 200);\n"
            "                                       -f: then new ones until the job has ended\n"
            "  workers\n"
            "  watch JOB|GRID...                    live progress until every job has ended\n"
            "  table GRID... [--format text|csv|markdown|latex]\n"
            "                                       per variant: mean +- std over seeds (several\n"
            "                                       grids: their jobs by variant name)\n"
            "  plot JOB|GRID... [-o OUT.png] [--every S] [--data DIR] [--size COLSxROWS]\n"
            "                                       curves per epoch (loss, L_align, L_uniform,\n"
            "                                       collapse, kNN, rank, linear eval, the align-\n"
            "                                       uniform trace, cos(W,I); per variant, mean\n"
            "                                       over seeds)\n"
            "                                       by gnuplot: a PNG, or text without -o; --every S\n"
            "                                       redraws until every job has ended\n"
            "  sphere JOB|GRID... [-o OUT.png] [--samples N] [--snapshots K] [--data DIR]\n"
            "         [--backend auto|cpu|cuda]\n"
            "                                       the paper's Figure 3: f(x) of N training images\n"
            "                                       by PCA onto the circle, per variant (its lowest\n"
            "                                       finished seed); spread numbers, and a PNG with -o;\n"
            "                                       --snapshots K: a row of K epochs per variant;\n"
            "                                       runawayd computes it where the run folders\n"
            "                                       are not here (another host)\n"
            "  metrics JOB|GRID... [--steps] [-o OUT.csv]\n"
            "                                       every epoch's (--steps: step's) metrics as CSV,\n"
            "                                       the newest row of each per job\n"
            "  export JOB OUT.safetensors           the job's weights, torchvision names\n"
            "  token new FILE                       a strong token for --tcp (--token-file), in a\n"
            "                                       new file of mode 0600\n"
            "  run SPEC.yaml [RUNAWAYD OPTIONS...]  start a daemon if needed (with those options),\n"
            "                                       submit, watch until done, print the table\n"
            "JOB: j12, 12 or a job name (grid/variant/seedK); GRID: g3 or a grid name.\n"
            "State directory: --state-dir, else $XDG_STATE_HOME/runaway, else\n"
            "~/.local/state/runaway.\n");
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "runaway: ");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

/* ------------------------------------------------------------------------ */
/* Connection */

typedef struct conn {
    int fd;
    rw_frame_reader r;
} conn;

static int try_connect(conn *c)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(sock_path) >= sizeof sa.sun_path)
        die("%s: path too long for a Unix socket (use a shorter --state-dir)", sock_path);
    memcpy(sa.sun_path, sock_path, strlen(sock_path) + 1);
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return -1;
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        connect_errno = errno;
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    rw_frame_reader_init(&c->r, RW_FRAME_MAX);
    return 0;
}

/* No daemon to talk to. A socket we may not open (EACCES) is not "no
 * runawayd": someone's daemon is there, and starting another is wrong. */
static void die_no_daemon(void) __attribute__((noreturn));
static void die_no_daemon(void)
{
    if (connect_errno == EACCES) {
        struct stat st;
        if (stat(sock_path, &st) == 0 && st.st_uid != geteuid())
            die("permission denied: %s belongs to another user (uid %u), whose runawayd serves "
                "its owner only; use a state folder of your own (--state-dir)", sock_path,
                (unsigned)st.st_uid);
        die("permission denied: cannot connect to %s (its mode, or a folder on its path, does "
            "not let you)", sock_path);
    }
    die("no runawayd at %s: start it with `runaway daemon start`", sock_path);
}

static void conn_close(conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    rw_frame_reader_free(&c->r);
}

/* Sends a request, waits up to `secs` for its reply; an error reply ends
 * the program with the daemon's message. Returns the ok reply, or NULL
 * with why set, and c closed, if runawayd went away. */
static json_t *request_or_lost(conn *c, json_t *m, int secs, char *why, size_t whylen)
{
    long long id = next_id++;
    json_object_set_new(m, "id", json_integer(id));
    int sent = rw_frame_send_fd(c->fd, m) == 0;
    json_decref(m);
    if (!sent) {
        snprintf(why, whylen, "cannot send: %s", strerror(errno));
        conn_close(c);
        return NULL;
    }
    for (;;) {
        json_t *r = NULL;
        int rc = rw_frame_recv_fd(c->fd, &c->r, &r, secs * 1000, why, whylen);
        if (rc == 0)
            die("runawayd did not answer within %d s", secs);
        if (rc < 0) {
            conn_close(c);
            return NULL;
        }
        if (rw_msg_id(r) != id) {
            json_decref(r);
            continue;
        }
        if (!strcmp(json_string_value(json_object_get(r, "type")) ?: "", "error"))
            die("%s", json_string_value(json_object_get(r, "message")));
        return r;
    }
}

/* The same; runawayd going away ends the program. */
static json_t *request_within(conn *c, json_t *m, int secs)
{
    char why[256];
    json_t *r = request_or_lost(c, m, secs, why, sizeof why);
    if (!r)
        die("runawayd at %s: %s", sock_path, why);
    return r;
}

static json_t *request(conn *c, json_t *m)
{
    return request_within(c, m, 600);
}

static json_t *hello_msg(void)
{
    json_t *h = rw_msg_new("hello", -1);
    json_object_set_new(h, "version", json_integer(RW_PROTO_VERSION));
    json_object_set_new(h, "role", json_string("client"));
    return h;
}

static int open_conn(conn *c)
{
    if (try_connect(c) != 0)
        return -1;
    json_decref(request(c, hello_msg()));
    return 0;
}

/* open_conn, except that a runawayd that closes at once (still shutting
 * down) is not there either: -1. An error reply (another protocol version
 * after an upgrade) still ends the program. */
static int try_open_conn(conn *c)
{
    char why[256];
    if (try_connect(c) != 0)
        return -1;
    json_t *r = request_or_lost(c, hello_msg(), 5, why, sizeof why);
    if (!r)
        return -1;
    json_decref(r);
    return 0;
}

static void need_conn(conn *c)
{
    if (open_conn(c) != 0)
        die_no_daemon();
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* How long watch, logs -f and plot --every wait for runawayd to come back
 * (a restart, an upgrade, a crash that systemd restarts) before they give
 * up. */
#define RECONNECT_S 600

/* Says why the connection was lost (unless why is NULL), then waits until
 * runawayd takes clients again and opens c. */
static void reconnect(conn *c, const char *why)
{
    if (why)
        printf("* runawayd went away (%s); following again when it is back (up to %d min)\n",
               why, RECONNECT_S / 60);
    fflush(stdout);
    for (double t0 = mono_s(); try_open_conn(c) != 0; sleep(1))
        if (mono_s() - t0 > RECONNECT_S)
            die("runawayd at %s went away and was not back within %d min", sock_path,
                RECONNECT_S / 60);
}

static json_t *req_new(const char *type)
{
    return rw_msg_new(type, -1);
}

static const char *jstr(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static long long jint(const json_t *o, const char *k)
{
    return json_integer_value(json_object_get(o, k));
}

/* ------------------------------------------------------------------------ */
/* Programs next to ours */

static int find_prog(const char *name, const char *subdir, char *out, size_t len)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = '\0';
        *strrchr(self, '/') = '\0';
        snprintf(out, len, "%s/%s", self, name);
        if (access(out, X_OK) == 0)
            return 0;
        snprintf(out, len, "%s/../%s/%s", self, subdir, name);
        if (access(out, X_OK) == 0)
            return 0;
    }
    snprintf(out, len, "%s", name); /* PATH */
    return 0;
}

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

static int daemon_start(int argc, char **argv, int quiet)
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
static int daemon_check(void)
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

static int daemon_stop(void)
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

/* The daemon says its database takes no writes: so nothing starts. */
static void warn_db_down(const json_t *r)
{
    const char *w = json_string_value(json_object_get(r, "db_down"));
    if (w)
        fprintf(stderr, "runaway: warning: %s\n", w);
}

static int daemon_status(void)
{
    conn c;
    need_conn(&c);
    json_t *r = request(&c, req_new("status"));
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
/* submit */

/* Reads and parses a grid or spec file, or dies with the parser's message;
 * its text (the caller frees it). */
static char *read_grid(const char *path, rw_grid *g, char basedir[RW_PATH_MAX])
{
    char *text, err[2048];
    size_t len;
    if (rw_grid_read_file(path, RW_SUBMIT_TEXT_MAX, &text, &len, basedir, RW_PATH_MAX, err,
                          sizeof err) != 0)
        die("%s", err);
    if (rw_grid_parse(text, len, path, basedir, g, err, sizeof err) != 0)
        die("%s", err);
    return text;
}

/* Parses locally first: a bad spec gets the parser's message even without
 * a daemon; the daemon parses again (it trusts no client), and has the last
 * word where the two hosts differ: a client that reaches a node's daemon
 * through a forwarded socket lacks the node's data folders, which the
 * local parse checks. */
static json_t *do_submit(conn *c, const char *path, int has_prio, long prio)
{
    char basedir[RW_PATH_MAX], err[2048];
    size_t len;
    char *text;
    if (rw_grid_read_file(path, RW_SUBMIT_TEXT_MAX, &text, &len, basedir, RW_PATH_MAX, err,
                          sizeof err) != 0)
        die("%s", err);
    rw_grid g;
    int parsed = rw_grid_parse(text, len, path, basedir, &g, err, sizeof err) == 0;
    if (parsed)
        rw_grid_free(&g);
    if (c->fd < 0 && open_conn(c) != 0) {
        if (!parsed)
            die("%s", err);
        die_no_daemon();
    }
    json_t *m = req_new("submit");
    json_t *t = json_string(text);
    free(text);
    if (!t)
        die("%s: not valid UTF-8", path);
    json_object_set_new(m, "text", t);
    json_object_set_new(m, "origin", json_string(path));
    json_object_set_new(m, "basedir", json_string(basedir));
    if (has_prio)
        json_object_set_new(m, "priority", json_integer(prio));
    return request(c, m);
}

/* ------------------------------------------------------------------------ */
/* submit --dry-run */

/* rw_spec_flatten, or the end of a dry run */
static int flatten_spec(const rw_spec *s, char (*out)[RW_SPEC_FIELD_MAX], int max)
{
    int n = rw_spec_flatten(s, out, max);
    if (n < 0)
        die("dry run: spec too large to render");
    return n;
}

/* What `submit` would queue, without a daemon: every job, and per job the
 * fields in which the grid's jobs differ (besides the name and the seed,
 * which its name says). */
static int dry_run(const char *path)
{
    char basedir[RW_PATH_MAX];
    rw_grid g;
    free(read_grid(path, &g, basedir));
    enum { MAXF = 256 };
    char(*first)[RW_SPEC_FIELD_MAX] = calloc(MAXF, RW_SPEC_FIELD_MAX),
         (*cur)[RW_SPEC_FIELD_MAX] = calloc(MAXF, RW_SPEC_FIELD_MAX);
    int *varies = calloc(MAXF, sizeof *varies);
    if (!first || !cur || !varies)
        die("out of memory");
    int nf = g.njobs ? flatten_spec(&g.jobs[0].spec, first, MAXF) : 0;
    for (size_t j = 1; j < g.njobs; j++) {
        int n = flatten_spec(&g.jobs[j].spec, cur, MAXF);
        for (int k = 0; k < nf && k < n; k++)
            varies[k] |= strcmp(first[k], cur[k]) != 0;
    }
    printf("grid %s: %zu job%s, priority %d (dry run: nothing submitted)\n", g.name, g.njobs,
           g.njobs == 1 ? "" : "s", g.priority);
    for (size_t j = 0; j < g.njobs; j++) {
        int n = flatten_spec(&g.jobs[j].spec, cur, MAXF);
        printf("  %-40s", g.jobs[j].name);
        for (int k = 0; k < nf && k < n; k++) {
            if (!varies[k] || !strncmp(cur[k], "name:", 5) || !strncmp(cur[k], "seed:", 5))
                continue;
            printf("  %s", cur[k]);
        }
        printf("\n");
    }
    int same = 0;
    for (int k = 0; k < nf; k++)
        same += !varies[k];
    printf("%d field%s the same in every job (runaway show prints a submitted job's whole spec)\n",
           same, same == 1 ? "" : "s");
    free(first);
    free(cur);
    free(varies);
    rw_grid_free(&g);
    return 0;
}

static void print_submitted(json_t *r)
{
    json_t *jobs = json_object_get(r, "jobs");
    printf("grid g%lld %s: %zu job%s\n", jint(r, "grid"), jstr(r, "name"), json_array_size(jobs),
           json_array_size(jobs) == 1 ? "" : "s");
    size_t i;
    json_t *v;
    json_array_foreach(jobs, i, v) printf("  j%lld %s\n", jint(v, "id"), jstr(v, "name"));
}

/* ------------------------------------------------------------------------ */
/* ls, show, logs, workers, cancel */

static void fmt_num(char *out, size_t len, const json_t *o, const char *k, const char *fmt,
                    double scale)
{
    const json_t *v = json_object_get(o, k);
    if (json_is_number(v))
        snprintf(out, len, fmt, json_number_value(v) * scale);
    else
        snprintf(out, len, "-");
}

static void print_job_row(const json_t *j)
{
    char al[32], un[32], acc[32], ep[32];
    fmt_num(al, sizeof al, j, "align_last10", "%.3e", 1);
    fmt_num(un, sizeof un, j, "uniform_last10", "%+.3f", 1);
    fmt_num(acc, sizeof acc, j, "linear_acc", "%.1f%%", 100);
    fmt_num(ep, sizeof ep, j, "epoch", "%.0f", 1);
    printf("j%-5lld %-9s %-40s %5s %3lld  %-10s %-8s %s\n", jint(j, "id"), jstr(j, "state"),
           jstr(j, "name"), ep, jint(j, "attempts"), al, un, acc);
}

static void print_job_header(void)
{
    printf("%-6s %-9s %-40s %5s %3s  %-10s %-8s %s\n", "job", "state", "name", "epoch", "try",
           "L_align", "L_unif", "linear");
}

/* A duration as "3h05m", "12m30s" or "45s". */
static void fmt_duration(double s, char *out, size_t len)
{
    long long t = llround(s < 0 ? 0 : s);
    if (t >= 3600)
        snprintf(out, len, "%lldh%02lldm", t / 3600, t % 3600 / 60);
    else if (t >= 60)
        snprintf(out, len, "%lldm%02llds", t / 60, t % 60);
    else
        snprintf(out, len, "%llds", t);
}

/* "grid g3: 2 done, 1 running, 5 queued; ~1h20m left" from the daemon's
 * progress object (the time left is an estimate from the grid's finished
 * and running jobs). */
static void print_grid_progress(const char *grid, const json_t *p)
{
    if (!json_is_object(p))
        return;
    static const char *const states[] = {"done", "running", "queued", "failed", "cancelled"};
    printf("%s:", grid);
    const char *sep = " ";
    for (size_t k = 0; k < sizeof states / sizeof *states; k++) {
        long long n = jint(p, states[k]);
        if (n || k < 3) {
            printf("%s%lld %s", sep, n, states[k]);
            sep = ", ";
        }
    }
    const json_t *left = json_object_get(p, "left_s");
    if (jint(p, "queued") + jint(p, "running") == 0)
        printf("; ended\n");
    else if (json_is_number(left)) {
        char d[32];
        fmt_duration(json_number_value(left), d, sizeof d);
        printf("; ~%s left (estimate)\n", d);
    } else
        printf("; time left not known yet\n");
}

static int cmd_grids(void)
{
    conn c;
    need_conn(&c);
    json_t *r = request(&c, req_new("grids"));
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(r, "grids"), i, v)
    {
        time_t t = (time_t)rw_json_get_num(v, "created");
        struct tm tm;
        char when[32], label[200];
        localtime_r(&t, &tm);
        strftime(when, sizeof when, "%Y-%m-%d %H:%M", &tm);
        snprintf(label, sizeof label, "g%-4lld %-24s %s  prio %-3lld", jint(v, "id"),
                 jstr(v, "name"), when, jint(v, "priority"));
        print_grid_progress(label, json_object_get(v, "progress"));
    }
    if (!json_array_size(json_object_get(r, "grids")))
        printf("no grids\n");
    warn_db_down(r);
    json_decref(r);
    conn_close(&c);
    return 0;
}

static int cmd_ls(int argc, char **argv)
{
    const char *grid = NULL, *state = NULL;
    for (int k = 0; k < argc; k++) {
        if (!strcmp(argv[k], "--state") && k + 1 < argc)
            state = argv[++k];
        else if (argv[k][0] == '-' || grid)
            die("ls: unexpected argument '%s'", argv[k]);
        else
            grid = argv[k];
    }
    conn c;
    need_conn(&c);
    json_t *m = req_new("ls");
    if (grid)
        json_object_set_new(m, "grid", json_string(grid));
    if (state)
        json_object_set_new(m, "state", json_string(state));
    json_t *r = request(&c, m);
    print_job_header();
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(r, "jobs"), i, v)
    {
        print_job_row(v);
        /* why it failed, where only those are asked for */
        if (state && !strcmp(state, "failed") && json_is_string(json_object_get(v, "error")))
            printf("       %s\n", jstr(v, "error"));
    }
    if (grid)
        print_grid_progress(grid, json_object_get(r, "progress"));
    warn_db_down(r);
    json_decref(r);
    conn_close(&c);
    return 0;
}

static void print_time(const char *label, const json_t *o, const char *k)
{
    const json_t *v = json_object_get(o, k);
    if (!json_is_number(v))
        return;
    time_t t = (time_t)json_number_value(v);
    struct tm tm;
    char buf[64];
    localtime_r(&t, &tm);
    strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
    printf("%-10s %s\n", label, buf);
}

/* The fields in which two jobs' specs differ, side by side. */
static int cmd_diff(const char *ja, const char *jb)
{
    enum { MAXF = 256 };
    conn c;
    need_conn(&c);
    const char *arg[2] = {ja, jb};
    char title[2][RW_JOB_NAME_MAX + 32];
    char(*f[2])[RW_SPEC_FIELD_MAX];
    int n[2];
    rw_spec *spec = malloc(sizeof *spec);
    if (!spec)
        die("out of memory");
    for (int k = 0; k < 2; k++) {
        json_t *m = req_new("show");
        json_object_set_new(m, "job", json_string(arg[k]));
        json_t *r = request(&c, m);
        const json_t *j = json_object_get(r, "job");
        snprintf(title[k], sizeof title[k], "j%lld %s", jint(j, "id"), jstr(j, "name"));
        const char *text = jstr(r, "spec");
        char err[1024];
        if (rw_spec_parse(text, strlen(text), title[k], "", spec, err, sizeof err) != 0)
            die("diff: %s", err);
        f[k] = calloc(MAXF, RW_SPEC_FIELD_MAX);
        if (!f[k] || (n[k] = rw_spec_flatten(spec, f[k], MAXF)) < 0)
            die("diff: %s: its spec cannot be rendered", title[k]);
        json_decref(r);
    }
    conn_close(&c);
    free(spec);
    printf("%-32s %-28s %s\n", "field", title[0], title[1]);
    int differ = 0;
    /* canonical specs list every field in one order: line k is the same
     * field in both */
    for (int k = 0; k < n[0] && k < n[1]; k++) {
        if (!strcmp(f[0][k], f[1][k]))
            continue;
        char *ca = strchr(f[0][k], ':'), *cb = strchr(f[1][k], ':');
        char va[RW_SPEC_FIELD_MAX], vb[RW_SPEC_FIELD_MAX];
        rw_spec_value_short(ca + 1, va, sizeof va);
        rw_spec_value_short(cb + 1, vb, sizeof vb);
        printf("%-32.*s %-28s %s\n", (int)(ca - f[0][k]), f[0][k], va, vb);
        differ++;
    }
    printf("%d field%s differ%s\n", differ, differ == 1 ? "" : "s", differ == 1 ? "s" : "");
    free(f[0]);
    free(f[1]);
    return 0;
}

static int cmd_show(const char *job)
{
    conn c;
    need_conn(&c);
    json_t *m = req_new("show");
    json_object_set_new(m, "job", json_string(job));
    json_t *r = request(&c, m);
    json_t *j = json_object_get(r, "job");
    printf("job        j%lld %s (grid g%lld)\n", jint(j, "id"), jstr(j, "name"), jint(j, "grid"));
    printf("state      %s%s%s\n", jstr(j, "state"), json_is_string(json_object_get(j, "error")) ? ": " : "",
           jstr(j, "error"));
    printf("devices    %lld   priority %lld   attempts %lld (lost %lld)\n", jint(j, "devices"),
           jint(j, "priority"), jint(j, "attempts"), jint(j, "lost"));
    print_time("created", j, "created");
    print_time("started", j, "started");
    print_time("finished", j, "finished");
    const json_t *pr = json_object_get(r, "progress");
    if (json_is_object(pr)) {
        char d[32] = "?";
        if (json_is_number(json_object_get(pr, "left_s")))
            fmt_duration(rw_json_get_num(pr, "left_s"), d, sizeof d);
        printf("progress   epoch %lld of %lld, ~%s of training left\n", jint(j, "epoch"),
               jint(pr, "epochs"), d);
    }
    printf("run dir    %s\n", jstr(r, "run_dir"));
    const json_t *snaps = json_object_get(r, "snapshots");
    size_t ns = json_array_size(snaps);
    if (ns) { /* what sphere --snapshots draws from: the first few and the last */
        printf("snapshots  %zu, epochs", ns);
        for (size_t k = 0; k < ns && k < 8; k++)
            printf(" %lld", (long long)json_integer_value(json_array_get(snaps, k)));
        if (ns > 8)
            printf(" ... %lld", (long long)json_integer_value(json_array_get(snaps, ns - 1)));
        printf("\n");
    }
    if (json_is_string(json_object_get(r, "tensorboard")))
        printf("tensorboard %s\n", jstr(r, "tensorboard"));
    char al[32], un[32], acc[32];
    fmt_num(al, sizeof al, j, "align_last10", "%.4e", 1);
    fmt_num(un, sizeof un, j, "uniform_last10", "%+.4f", 1);
    fmt_num(acc, sizeof acc, j, "linear_acc", "%.2f%%", 100);
    printf("result     L_align %s  L_uniform %s (last 10 epochs)  linear eval %s\n", al, un, acc);
    size_t i;
    json_t *v;
    printf("attempts:\n");
    json_array_foreach(json_object_get(r, "attempts"), i, v) printf(
        "  #%lld on worker %s: %s%s%s\n", jint(v, "id"), jstr(v, "worker"), jstr(v, "outcome"),
        json_is_string(json_object_get(v, "error")) ? ": " : "", jstr(v, "error"));
    printf("spec:\n");
    const char *s = jstr(r, "spec");
    while (*s) {
        const char *e = strchr(s, '\n');
        int n = e ? (int)(e - s) : (int)strlen(s);
        printf("  %.*s\n", n, s);
        s += n + (e ? 1 : 0);
    }
    json_decref(r);
    conn_close(&c);
    return 0;
}

static void print_log_line(const json_t *v)
{
    time_t t = (time_t)json_number_value(json_object_get(v, "t"));
    struct tm tm;
    char ts[32];
    localtime_r(&t, &tm);
    strftime(ts, sizeof ts, "%H:%M:%S", &tm);
    printf("%s %s%s\n", ts, strcmp(jstr(v, "kind"), "log") ? "* " : "", jstr(v, "text"));
}

static int cmd_logs(int argc, char **argv)
{
    const char *job = NULL;
    long tail = 0;
    int follow = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--tail") && i + 1 < argc)
            tail = strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "-f") || !strcmp(argv[i], "--follow"))
            follow = 1;
        else if (!job)
            job = argv[i];
        else
            die("logs: unexpected argument '%s'", argv[i]);
    }
    if (!job)
        die("logs: which job?");
    conn c;
    need_conn(&c);
    /* the last line printed: after a reconnect, the tail is printed from
     * the line after it */
    json_t *last = NULL;
    for (int again = 0;; again = 1) {
        json_t *m = req_new("logs");
        json_object_set_new(m, "job", json_string(job));
        if (tail > 0 || again)
            json_object_set_new(m, "tail", json_integer(again ? 5000 : tail));
        if (follow)
            json_object_set_new(m, "follow", json_true());
        json_t *r = request(&c, m);
        long long id = rw_msg_id(r);
        json_t *lines = json_object_get(r, "lines");
        size_t from = 0, i;
        json_t *v;
        json_array_foreach(lines, i, v) if (last && json_equal(v, last)) from = i + 1;
        for (i = from; i < json_array_size(lines); i++) {
            print_log_line(json_array_get(lines, i));
            json_decref(last);
            last = json_incref(json_array_get(lines, i));
        }
        json_decref(r);
        fflush(stdout);
        /* then the job's new lines as they come, until it has ended */
        char why[256] = "";
        while (follow) {
            json_t *e = NULL;
            if (rw_frame_recv_fd(c.fd, &c.r, &e, -1, why, sizeof why) <= 0)
                break;
            if (rw_msg_id(e) == id && !strcmp(jstr(e, "type"), "watch_end")) {
                follow = 0;
            } else if (rw_msg_id(e) == id && !strcmp(jstr(e, "kind"), "log")) {
                print_log_line(json_object_get(e, "line"));
                json_decref(last);
                last = json_incref(json_object_get(e, "line"));
            } else if (rw_msg_id(e) == id && !strcmp(jstr(e, "kind"), "daemon")) {
                printf("* %s\n", jstr(e, "text"));
            }
            fflush(stdout);
            json_decref(e);
        }
        conn_close(&c);
        if (!follow)
            break;
        if (!why[0])
            snprintf(why, sizeof why, "connection closed");
        reconnect(&c, why);
        printf("* runawayd is back\n");
    }
    json_decref(last);
    return 0;
}

static int cmd_workers(void)
{
    conn c;
    need_conn(&c);
    json_t *r = request(&c, req_new("workers"));
    printf("%-4s %-8s %-9s %-8s %-8s %-16s %-6s %s\n", "slot", "device", "state", "pid", "backend",
           "host", "job", "starts");
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(r, "workers"), i, v)
    {
        char job[32] = "-";
        if (jint(v, "job"))
            snprintf(job, sizeof job, "j%lld", jint(v, "job"));
        printf("%-4lld %-8s %-9s %-8lld %-8s %-16s %-6s %lld%s\n", jint(v, "slot"), jstr(v, "device"),
               jstr(v, "state"), jint(v, "pid"), jstr(v, "backend"), jstr(v, "host"), job,
               jint(v, "starts"), json_is_true(json_object_get(v, "remote")) ? " (remote)" : "");
    }
    json_decref(r);
    conn_close(&c);
    return 0;
}

static int cmd_cancel(const char *target)
{
    conn c;
    need_conn(&c);
    json_t *m = req_new("cancel");
    json_object_set_new(m, "target", json_string(target));
    json_t *r = request(&c, m);
    printf("cancelled %lld job%s\n", jint(r, "cancelled"), jint(r, "cancelled") == 1 ? "" : "s");
    json_decref(r);
    conn_close(&c);
    return 0;
}

static int cmd_priority(const char *target, const char *value)
{
    char *end;
    long p = strtol(value, &end, 10);
    if (!*value || *end)
        die("priority: '%s' is not a whole number", value);
    conn c;
    need_conn(&c);
    json_t *m = req_new("priority");
    json_object_set_new(m, "target", json_string(target));
    json_object_set_new(m, "priority", json_integer(p));
    json_t *r = request(&c, m);
    long long n = jint(r, "updated");
    printf("priority %ld for %lld job%s%s\n", p, n, n == 1 ? "" : "s",
           n ? " (the queued ones take their new place)" : ": none had not finished");
    json_decref(r);
    conn_close(&c);
    return 0;
}

static int cmd_requeue(const char *target)
{
    conn c;
    need_conn(&c);
    json_t *m = req_new("requeue");
    json_object_set_new(m, "target", json_string(target));
    json_t *r = request(&c, m);
    long long n = jint(r, "requeued");
    printf("requeued %lld job%s%s\n", n, n == 1 ? "" : "s",
           n ? " (each resumes from its checkpoint)" : ": none had failed or been cancelled");
    json_decref(r);
    conn_close(&c);
    return 0;
}

/* Removed folders, one a line; sibling run folders as DIR/{12,13,14}. */
static void print_removed(const json_t *paths)
{
    size_t n = json_array_size(paths), i;
    const char *first = json_string_value(json_array_get(paths, 0));
    const char *slash = first ? strrchr(first, '/') : NULL;
    size_t dlen = slash ? (size_t)(slash - first + 1) : 0;
    int siblings = n > 1 && slash;
    json_t *v;
    json_array_foreach(paths, i, v)
    {
        const char *p = json_string_value(v);
        siblings &= !strncmp(p, first, dlen) && !strchr(p + dlen, '/');
    }
    if (!siblings) {
        json_array_foreach(paths, i, v) printf("  %s\n", json_string_value(v));
        return;
    }
    printf("  %.*s{", (int)dlen, first);
    json_array_foreach(paths, i, v) printf("%s%s", i ? "," : "", json_string_value(v) + dlen);
    printf("}\n");
}

static int cmd_rm(const char *target)
{
    conn c;
    need_conn(&c);
    json_t *m = req_new("rm");
    json_object_set_new(m, "target", json_string(target));
    json_t *r = request(&c, m);
    int grid = !strcmp(jstr(r, "kind"), "grid");
    long long nj = jint(r, "jobs"), nm = jint(r, "metrics");
    printf("removed %c%lld %s (%lld job%s, %lld metric%s)", grid ? 'g' : 'j', jint(r, "target"),
           jstr(r, "name"), nj, nj == 1 ? "" : "s", nm, nm == 1 ? "" : "s");
    if (!grid && json_is_true(json_object_get(r, "grid_removed")))
        printf(", and its grid g%lld, which had no other job", jint(r, "grid"));
    printf("\n");
    print_removed(json_object_get(r, "runs"));
    print_removed(json_object_get(r, "tensorboard"));
    size_t i;
    json_t *v;
    json_t *errs = json_object_get(r, "errors");
    json_array_foreach(errs, i, v) fprintf(stderr, "runaway: rm: cannot remove %s\n",
                                           json_string_value(v));
    if (jint(r, "errors_more"))
        fprintf(stderr, "runaway: rm: and %lld more\n", jint(r, "errors_more"));
    if (json_array_size(errs))
        fprintf(stderr, "runaway: rm: the jobs are gone from the database; remove those files "
                        "by hand\n");
    int rc = json_array_size(errs) ? 1 : 0;
    json_decref(r);
    conn_close(&c);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* watch, table */

/* The targets of watch, table, plot, sphere or metrics: the arguments that are no
 * option, at most RW_TARGETS_MAX. */
static void add_target(const char *cmd, char **t, int *nt, char *arg)
{
    if (*nt == RW_TARGETS_MAX)
        die("%s: at most %d jobs or grids at once", cmd, RW_TARGETS_MAX);
    t[(*nt)++] = arg;
}

/* One watched target: its connection (a daemon's watch is one per
 * connection), the request's id, and what it resolved to. */
typedef struct watched {
    conn c;
    long long id;
    char kind; /* 'g' or 'j' */
    long long tid;
    int ended;      /* watch_end came */
    int lost;       /* runawayd went away: watched again when it is back */
    int in_grid;    /* a job also watched through its grid: that stream tells */
    json_t *jobs;   /* a grid's jobs as the watch began */
} watched;

/* Asks for the watch and prints the target's jobs. */
static void watch_open(watched *w, const char *target)
{
    json_t *m = req_new("watch");
    json_object_set_new(m, "target", json_string(target));
    json_t *r = request(&w->c, m);
    w->id = rw_msg_id(r);
    w->kind = !strcmp(jstr(r, "kind"), "grid") ? 'g' : 'j';
    w->tid = jint(r, "target");
    w->ended = 0;
    w->lost = 0;
    size_t i;
    json_t *v;
    int njobs = (int)json_array_size(json_object_get(r, "jobs"));
    json_decref(w->jobs);
    printf("watching %s %s: %d job%s\n", jstr(r, "kind"), target, njobs, njobs == 1 ? "" : "s");
    /* a job that already failed says why here: its event came before us */
    json_array_foreach(json_object_get(r, "jobs"), i, v)
        printf("  j%lld %-40s %s%s%s\n", jint(v, "id"), jstr(v, "name"), jstr(v, "state"),
               json_is_string(json_object_get(v, "error")) ? ": " : "", jstr(v, "error"));
    w->jobs = json_incref(json_object_get(r, "jobs"));
    json_decref(r);
    fflush(stdout);
}

/* A job watched also through its grid: its events come on the grid's
 * stream (its own would print them twice), and the grid's outcome is its. */
static int watched_in_a_grid(const watched *w, int n, int k)
{
    for (int g = 0; g < n; g++) {
        size_t i;
        json_t *v;
        if (g != k && w[g].kind == 'g' && w[k].kind == 'j')
            json_array_foreach(w[g].jobs, i, v) if (jint(v, "id") == w[k].tid) return 1;
    }
    return 0;
}

/* Prints one frame of w's stream; notes watch_end. */
static void watch_event(watched *w, json_t *e)
{
    const char *t = jstr(e, "type");
    if (rw_msg_id(e) != w->id) {
        json_decref(e);
        return;
    }
    if (!strcmp(t, "watch_end")) {
        w->ended = 1;
    } else if (!strcmp(t, "event") && !strcmp(jstr(e, "kind"), "metric") &&
               !strcmp(jstr(e, "metric"), "epoch")) {
        char knn[32] = "", rank[32] = "", lin[32] = "", left[48] = "", of[24] = "", wi[32] = "";
        if (json_is_number(json_object_get(e, "left_s"))) {
            char d[32];
            fmt_duration(rw_json_get_num(e, "left_s"), d, sizeof d);
            snprintf(left, sizeof left, "  ~%s of training left", d);
        }
        if (jint(e, "epochs") > 0)
            snprintf(of, sizeof of, "/%lld", jint(e, "epochs"));
        if (json_is_number(json_object_get(e, "knn")))
            snprintf(knn, sizeof knn, "  knn %.1f%%", 100 * rw_json_get_num(e, "knn"));
        if (json_is_number(json_object_get(e, "rank")))
            snprintf(rank, sizeof rank, "  rank %.1f", rw_json_get_num(e, "rank"));
        if (json_is_number(json_object_get(e, "linear")))
            snprintf(lin, sizeof lin, "  linear %.1f%%", 100 * rw_json_get_num(e, "linear"));
        if (json_is_number(json_object_get(e, "w_cos_i")))
            snprintf(wi, sizeof wi, "  cos(W,I) %+.3f", rw_json_get_num(e, "w_cos_i"));
        printf("j%-4lld epoch %3lld%s  loss %+.4f  align %.3e  uniform %+.3f  collapse %.3f%s%s%s%s"
               "  %.1f pairs/s%s\n",
               jint(e, "job"), jint(e, "epoch"), of, rw_json_get_num(e, "loss"),
               rw_json_get_num(e, "align"), rw_json_get_num(e, "uniform"),
               rw_json_get_num(e, "collapse"), rank, wi, knn, lin,
               rw_json_get_num(e, "pairs_per_s"), left);
    } else if (!strcmp(t, "event") && !strcmp(jstr(e, "kind"), "daemon")) {
        printf("* %s\n", jstr(e, "text"));
    } else if (!strcmp(t, "event") && !strcmp(jstr(e, "kind"), "job")) {
        json_t *j = json_object_get(e, "job");
        int why = json_is_string(json_object_get(e, "why"));
        printf("j%-4lld %s: %s%s%s%s%s%s\n", jint(j, "id"), jstr(j, "name"), jstr(j, "state"),
               json_is_string(json_object_get(j, "error")) ? ": " : "", jstr(j, "error"),
               why ? " (" : "", why ? jstr(e, "why") : "", why ? ")" : "");
        if (w->kind == 'g') {
            char g[32];
            snprintf(g, sizeof g, "grid g%lld", w->tid);
            print_grid_progress(g, json_object_get(e, "grid_progress"));
        }
    }
    fflush(stdout);
    json_decref(e);
}

/* 1 unless every job of w's target ended done (the daemon's view). */
static int watch_outcome(watched *w)
{
    int bad = 0;
    char t[32];
    size_t i;
    json_t *v;
    snprintf(t, sizeof t, "%c%lld", w->kind, w->tid);
    if (w->kind == 'g') {
        json_t *m = req_new("ls");
        json_object_set_new(m, "grid", json_string(t));
        json_t *lr = request(&w->c, m);
        json_array_foreach(json_object_get(lr, "jobs"), i, v) bad |= strcmp(jstr(v, "state"), "done") != 0;
        json_decref(lr);
    } else {
        json_t *m = req_new("show");
        json_object_set_new(m, "job", json_string(t));
        json_t *lr = request(&w->c, m);
        bad = strcmp(jstr(json_object_get(lr, "job"), "state"), "done") != 0;
        json_decref(lr);
    }
    return bad;
}

/* runawayd went away under the lost watches: once it takes clients again,
 * watches their targets anew (the jobs resume from their checkpoints; the
 * epochs between are reported again). */
static void watch_reconnect(watched *w, int n, const char *why)
{
    for (int k = 0; k < n; k++) {
        if (!w[k].lost)
            continue;
        reconnect(&w[k].c, why);
        why = NULL; /* said once */
        char t[32];
        snprintf(t, sizeof t, "%c%lld", w[k].kind, w[k].tid);
        printf("* runawayd is back: ");
        watch_open(&w[k], t);
    }
}

/* Prints the targets' events, as they come, until each has its watch_end;
 * rides out a restart of runawayd. Returns 0 if every job of every target
 * ended done. */
static int watch_all(watched *w, int n)
{
    struct pollfd pf[RW_TARGETS_MAX];
    for (;;) {
        int open = 0;
        for (int k = 0; k < n; k++) {
            /* frames already read past the last one */
            json_t *e = NULL;
            char err[256];
            while (!w[k].ended &&
                   rw_frame_reader_next(&w[k].c.r, &e, err, sizeof err) == RW_FRAME_OK)
                watch_event(&w[k], e);
            pf[k] = (struct pollfd){.fd = w[k].ended ? -1 : w[k].c.fd, .events = POLLIN};
            open += !w[k].ended;
        }
        if (!open)
            break;
        if (poll(pf, (nfds_t)n, -1) < 0) {
            if (errno == EINTR)
                continue;
            die("poll: %s", strerror(errno));
        }
        char why[256] = "";
        int lost = 0;
        for (int k = 0; k < n; k++) {
            if (w[k].ended || !pf[k].revents)
                continue;
            json_t *e = NULL;
            int rc = rw_frame_recv_fd(w[k].c.fd, &w[k].c.r, &e, 60000, why, sizeof why);
            if (rc > 0) {
                watch_event(&w[k], e);
            } else {
                if (rc == 0)
                    snprintf(why, sizeof why, "a frame cut off for 60 s");
                w[k].lost = lost = 1;
                conn_close(&w[k].c);
            }
        }
        if (lost)
            watch_reconnect(w, n, why);
    }
    int bad = 0;
    for (int k = 0; k < n; k++)
        if (!w[k].in_grid)
            bad |= watch_outcome(&w[k]);
    return bad;
}

/* watch on the connection c already has (runaway run) */
static int watch(conn *c, const char *target)
{
    watched w = {.c = *c};
    watch_open(&w, target);
    int rc = watch_all(&w, 1);
    *c = w.c;
    json_decref(w.jobs);
    return rc;
}

static int cmd_watch(int n, char **a)
{
    char *targets[RW_TARGETS_MAX];
    int nt = 0;
    for (int k = 0; k < n; k++) {
        if (a[k][0] == '-')
            die("watch: unexpected argument '%s'", a[k]);
        add_target("watch", targets, &nt, a[k]);
    }
    if (!nt)
        die("watch: which job or grid?");
    watched *w = calloc((size_t)nt, sizeof *w);
    if (!w)
        die("out of memory");
    for (int k = 0; k < nt; k++) {
        need_conn(&w[k].c);
        watch_open(&w[k], targets[k]);
    }
    /* closed at once: an unread stream would fill runawayd's queue for us */
    for (int k = 0; k < nt; k++)
        if ((w[k].in_grid = watched_in_a_grid(w, nt, k))) {
            w[k].ended = 1;
            conn_close(&w[k].c);
        }
    int rc = watch_all(w, nt);
    for (int k = 0; k < nt; k++) {
        conn_close(&w[k].c);
        json_decref(w[k].jobs);
    }
    free(w);
    return rc;
}

static void pm(char *out, size_t len, const json_t *o, const char *mean, const char *std,
               const char *fmt, const char *sfmt, double scale)
{
    const json_t *a = json_object_get(o, mean), *b = json_object_get(o, std);
    if (!json_is_number(a)) {
        snprintf(out, len, "-");
        return;
    }
    char f2[64];
    snprintf(f2, sizeof f2, "%s ± %s", fmt, sfmt);
    snprintf(out, len, f2, json_number_value(a) * scale,
             json_is_number(b) ? json_number_value(b) * scale : 0.0);
}

/* A row's mark against the random baseline (the daemon's table reply):
 * 1 worse, 0 not, -1 no comparison (no baseline, or no number). */
static int worse(const json_t *row, const char *flag)
{
    const json_t *f = json_object_get(row, flag);
    return json_is_boolean(f) ? json_is_true(f) : -1;
}

/* `cell` with `pre`/`post` around it where the row is worse than the
 * baseline. */
static void marked(char *out, size_t len, const char *cell_text, const json_t *row,
                   const char *flag, const char *pre, const char *post)
{
    if (worse(row, flag) == 1)
        snprintf(out, len, "%s%s%s", pre, cell_text, post);
    else
        snprintf(out, len, "%s", cell_text);
}

static int any_worse(const json_t *rows)
{
    size_t i;
    json_t *v;
    json_array_foreach(rows, i, v) if (worse(v, "uniform_worse") == 1 || worse(v, "acc_worse") == 1)
        return 1;
    return 0;
}

/* s left-aligned in `width` columns of the terminal: a UTF-8 character
 * (the ± of a cell) is one column, whatever its bytes. */
static void pad_cols(char *out, size_t len, const char *s, int width)
{
    int cont = 0; /* continuation bytes: not columns of their own */
    for (const char *p = s; *p; p++)
        cont += ((unsigned char)*p & 0xC0) == 0x80;
    snprintf(out, len, "%-*s", width + cont, s);
}

/* A trained variant of the table with a linear predictor: the cos(W,I)
 * column (a random baseline's alone, about 0, is no reason for it). */
static int any_w(const json_t *rows)
{
    size_t i;
    json_t *v;
    json_array_foreach(rows, i, v) if (json_is_number(json_object_get(v, "w_cos_i_mean")) &&
                                       !json_is_true(json_object_get(v, "baseline"))) return 1;
    return 0;
}

/* One target as `one`, several as the list `many` (their jobs merged by
 * variant). */
static void set_targets(json_t *m, const char *one, const char *many, char *const *t, int nt)
{
    if (nt == 1) {
        json_object_set_new(m, one, json_string(t[0]));
        return;
    }
    json_t *l = json_array();
    for (int k = 0; k < nt; k++)
        json_array_append_new(l, json_string(t[k]));
    json_object_set_new(m, many, l);
}

static void print_table(conn *c, char *const *grids, int ng)
{
    json_t *m = req_new("table");
    set_targets(m, "grid", "grids", grids, ng);
    json_t *r = request(c, m);
    size_t i;
    json_t *v;
    printf("grid%s ", json_array_size(json_object_get(r, "grids")) > 1 ? "s" : "");
    json_array_foreach(json_object_get(r, "grids"), i, v)
        printf("%sg%lld %s", i ? " + " : "", jint(v, "id"), jstr(v, "name"));
    printf(": mean ± std over seeds; L_align(q.f) and L_uniform(f) averaged over the "
           "last 10 epochs, the effective rank of f at the end\n");
    int w = 20; /* the longest variant's name (a sweep's are long) */
    json_array_foreach(json_object_get(r, "rows"), i, v)
    {
        int len = (int)strlen(jstr(v, "variant"));
        w = len > w ? len : w;
    }
    int ws = any_w(json_object_get(r, "rows"));
    printf("%-*s %5s  %-24s %-20s %-18s %s%s\n", w, "variant", "n", "L_align(q.f)", "L_uniform(f)",
           "rank(f)", ws ? "cos(W,I)             " : "", "linear eval top-1");
    json_array_foreach(json_object_get(r, "rows"), i, v)
    {
        char al[64], un[64], rk[64], acc[64], n[32], unm[80], accm[80], wi[64] = "", wic[72] = "";
        pm(al, sizeof al, v, "align_mean", "align_std", "%.3e", "%.1e", 1);
        pm(un, sizeof un, v, "uniform_mean", "uniform_std", "%+.3f", "%.3f", 1);
        pm(rk, sizeof rk, v, "rank_mean", "rank_std", "%.1f", "%.1f", 1);
        if (ws) {
            pm(wi, sizeof wi, v, "w_cos_i_mean", "w_cos_i_std", "%+.3f", "%.3f", 1);
            pad_cols(wic, sizeof wic, wi, 21);
        }
        pm(acc, sizeof acc, v, "acc_mean", "acc_std", "%.2f", "%.2f", 100);
        if (json_is_number(json_object_get(v, "acc_mean")))
            strcat(acc, "%");
        marked(unm, sizeof unm, un, v, "uniform_worse", "", " *");
        marked(accm, sizeof accm, acc, v, "acc_worse", "", " *");
        snprintf(n, sizeof n, "%lld/%lld", jint(v, "n"), jint(v, "jobs"));
        printf("%-*s %5s  %-24s %-20s %-18s %s%s\n", w, jstr(v, "variant"), n, al, unm, rk, wic,
               accm);
    }
    if (any_worse(json_object_get(r, "rows")))
        printf("* worse than the random baseline (%s): L_uniform(f) higher, linear eval lower\n",
               jstr(r, "baseline"));
    json_decref(r);
}

/* A number of a table row as CSV/Markdown want it: full precision, empty
 * where there is none. */
static void cell(char *out, size_t len, const json_t *row, const char *key, double scale)
{
    const json_t *v = json_object_get(row, key);
    if (json_is_number(v))
        snprintf(out, len, "%.9g", json_number_value(v) * scale);
    else
        out[0] = 0;
}

/* The table for a paper or a spreadsheet: csv (one header line, then a row
 * per variant, accuracy in %) or markdown (a pipe table, mean ± std). */
/* A number for LaTeX math: 1.234e-03 becomes 1.234\times10^{-3}, 1.5e+00 1.5. */
static void tex_num(char *out, size_t len, const char *fmt, double x)
{
    char s[64];
    snprintf(s, sizeof s, fmt, x);
    char *e = strchr(s, 'e');
    if (!e) {
        snprintf(out, len, "%s", s);
        return;
    }
    *e = '\0';
    int x10 = atoi(e + 1);
    if (x10)
        snprintf(out, len, "%s\\times10^{%d}", s, x10);
    else
        snprintf(out, len, "%s", s);
}

/* pm's cell as LaTeX math, bold where the row is worse than the baseline
 * on `flag` (NULL: never) */
static void pm_tex(char *out, size_t len, const json_t *o, const char *mean, const char *std,
                   const char *fmt, const char *sfmt, double scale, const char *flag)
{
    const json_t *a = json_object_get(o, mean), *b = json_object_get(o, std);
    if (!json_is_number(a)) {
        snprintf(out, len, "--");
        return;
    }
    char m[64], sd[64];
    tex_num(m, sizeof m, fmt, json_number_value(a) * scale);
    tex_num(sd, sizeof sd, sfmt, json_is_number(b) ? json_number_value(b) * scale : 0.0);
    snprintf(out, len, flag && worse(o, flag) == 1 ? "$\\mathbf{%s \\pm %s}$" : "$%s \\pm %s$", m,
             sd);
}

/* The table as a LaTeX tabular (booktabs rules), for the paper. */
static void print_table_tex(const json_t *r)
{
    const json_t *rows = json_object_get(r, "rows");
    int ws = any_w(rows);
    printf("%% runaway table: mean \\pm std over seeds; n: finished jobs / jobs. "
           "Needs \\usepackage{booktabs}.\n");
    printf("\\begin{tabular}{lc%s}\n\\toprule\n", ws ? "ccccc" : "cccc");
    printf("variant & $n$ & $\\mathcal{L}_{\\mathrm{align}}(q \\circ f)$ & "
           "$\\mathcal{L}_{\\mathrm{uniform}}(f)$ & $\\mathrm{rank}(f)$ & %s"
           "linear eval top-1 (\\%%) \\\\\n\\midrule\n",
           ws ? "$\\cos(W, I)$ & " : "");
    size_t i;
    json_t *v;
    json_array_foreach(rows, i, v)
    {
        char name[160], al[96], un[96], rk[96], wi[96], acc[96];
        /* variant names are [A-Za-z0-9_.-]: only _ is special */
        size_t o = 0;
        for (const char *p = jstr(v, "variant"); *p && o + 3 < sizeof name; p++) {
            if (*p == '_')
                name[o++] = '\\';
            name[o++] = *p;
        }
        name[o] = '\0';
        pm_tex(al, sizeof al, v, "align_mean", "align_std", "%.3e", "%.1e", 1, NULL);
        pm_tex(un, sizeof un, v, "uniform_mean", "uniform_std", "%.3f", "%.3f", 1,
               "uniform_worse");
        pm_tex(rk, sizeof rk, v, "rank_mean", "rank_std", "%.1f", "%.1f", 1, NULL);
        pm_tex(wi, sizeof wi, v, "w_cos_i_mean", "w_cos_i_std", "%.3f", "%.3f", 1, NULL);
        pm_tex(acc, sizeof acc, v, "acc_mean", "acc_std", "%.2f", "%.2f", 100, "acc_worse");
        printf("%s & %lld/%lld & %s & %s & %s & %s%s%s \\\\\n", name, jint(v, "n"),
               jint(v, "jobs"), al, un, rk, ws ? wi : "", ws ? " & " : "", acc);
    }
    printf("\\bottomrule\n\\end{tabular}\n");
    if (any_worse(rows))
        printf("%% Bold: worse than the random baseline (%s): L_uniform(f) higher, linear eval "
               "lower.\n", jstr(r, "baseline"));
}

static void print_table_as(conn *c, char *const *grids, int ng, const char *fmt)
{
    json_t *m = req_new("table");
    set_targets(m, "grid", "grids", grids, ng);
    json_t *r = request(c, m);
    if (!strcmp(fmt, "latex")) {
        print_table_tex(r);
        json_decref(r);
        return;
    }
    int csv = !strcmp(fmt, "csv"), ws = any_w(json_object_get(r, "rows"));
    if (csv)
        printf("variant,n,jobs,align_mean,align_std,uniform_mean,uniform_std,linear_acc_mean,"
               "linear_acc_std,rank_mean,rank_std,w_cos_i_mean,w_cos_i_std,uniform_worse,"
               "acc_worse\n");
    else
        printf("| variant | n | L_align(q.f) | L_uniform(f) | rank(f) |%s linear eval top-1 (%%) |\n"
               "|---|---|---|---|---|%s---|\n", ws ? " cos(W,I) |" : "", ws ? "---|" : "");
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(r, "rows"), i, v)
    {
        char am[32], as[32], um[32], us[32], cm[32], cs[32], rm[32], rs[32], wm[32], wsd[32];
        cell(am, sizeof am, v, "align_mean", 1);
        cell(as, sizeof as, v, "align_std", 1);
        cell(um, sizeof um, v, "uniform_mean", 1);
        cell(us, sizeof us, v, "uniform_std", 1);
        cell(cm, sizeof cm, v, "acc_mean", 100);
        cell(cs, sizeof cs, v, "acc_std", 100);
        cell(rm, sizeof rm, v, "rank_mean", 1);
        cell(rs, sizeof rs, v, "rank_std", 1);
        cell(wm, sizeof wm, v, "w_cos_i_mean", 1);
        cell(wsd, sizeof wsd, v, "w_cos_i_std", 1);
        if (csv) {
            /* variant names are [A-Za-z0-9_.-]: no quoting needed */
            /* against the random baseline: 1 worse, 0 not, empty where no comparison */
            const char *b01[] = {"", "0", "1"};
            printf("%s,%lld,%lld,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n", jstr(v, "variant"),
                   jint(v, "n"), jint(v, "jobs"), am, as, um, us, cm, cs, rm, rs, wm, wsd,
                   b01[worse(v, "uniform_worse") + 1], b01[worse(v, "acc_worse") + 1]);
        } else {
            char al[64], un[64], rk[64], acc[64], unm[80], accm[80], wi[64], wic[72] = "";
            pm(al, sizeof al, v, "align_mean", "align_std", "%.3e", "%.1e", 1);
            pm(un, sizeof un, v, "uniform_mean", "uniform_std", "%+.3f", "%.3f", 1);
            pm(rk, sizeof rk, v, "rank_mean", "rank_std", "%.1f", "%.1f", 1);
            if (ws) {
                pm(wi, sizeof wi, v, "w_cos_i_mean", "w_cos_i_std", "%+.3f", "%.3f", 1);
                snprintf(wic, sizeof wic, " %s |", wi);
            }
            pm(acc, sizeof acc, v, "acc_mean", "acc_std", "%.2f", "%.2f", 100);
            /* bold, as the paper highlights them */
            marked(unm, sizeof unm, un, v, "uniform_worse", "**", "**");
            marked(accm, sizeof accm, acc, v, "acc_worse", "**", "**");
            printf("| %s | %lld/%lld | %s | %s | %s |%s %s |\n", jstr(v, "variant"), jint(v, "n"),
                   jint(v, "jobs"), al, unm, rk, wic, accm);
        }
    }
    if (!csv && any_worse(json_object_get(r, "rows")))
        printf("\nBold: worse than the random baseline (%s): L_uniform(f) higher, linear eval "
               "lower.\n",
               jstr(r, "baseline"));
    json_decref(r);
}

/* ------------------------------------------------------------------------ */
/* metrics: every row as CSV */

/* A job's name, variant and seed, by id, from the first page's list. */
static const json_t *job_info(const json_t *jobs, long long id)
{
    size_t i;
    json_t *v;
    json_array_foreach(jobs, i, v) if (jint(v, "id") == id) return v;
    return NULL;
}

/* The export's temporary file, removed if runaway dies half way. */
static char metrics_tmp[PATH_MAX];
static void metrics_tmp_remove(void)
{
    if (metrics_tmp[0])
        unlink(metrics_tmp);
}

static int cmd_metrics(int n, char **a)
{
    const char *out = NULL;
    char *targets[RW_TARGETS_MAX];
    int steps = 0, nt = 0;
    for (int k = 0; k < n; k++) {
        if (!strcmp(a[k], "-o") && k + 1 < n)
            out = a[++k];
        else if (!strcmp(a[k], "--steps"))
            steps = 1;
        else if (a[k][0] == '-')
            die("metrics: unexpected argument '%s'", a[k]);
        else
            add_target("metrics", targets, &nt, a[k]);
    }
    if (!nt)
        die("metrics: which job or grid?");
    /* a temporary file renamed into place: a failed export leaves no half file */
    FILE *f = stdout;
    if (out) {
        snprintf(metrics_tmp, sizeof metrics_tmp, "%s.tmp.%ld", out, (long)getpid());
        f = fopen(metrics_tmp, "w");
        if (!f) {
            int e = errno;
            metrics_tmp[0] = 0;
            die("metrics: cannot write %s: %s", out, strerror(e));
        }
        atexit(metrics_tmp_remove);
    }
    conn c;
    need_conn(&c);
    /* each target in turn; a job that an earlier one had is written once */
    json_t *done = json_object();
    long long rows = 0;
    fprintf(f, "job,name,variant,seed,epoch,step,loss,align,uniform,collapse,knn,"
               "pairs_per_s,tau,lr,rank,linear,w_cos_i,w_asym\n");
    for (int t = 0; t < nt; t++) {
        json_t *jobs = NULL, *mine = json_object();
        long long after_job = -1, after = -1;
        for (;;) {
            json_t *m = req_new("metrics");
            json_object_set_new(m, "target", json_string(targets[t]));
            json_object_set_new(m, "kind", json_string(steps ? "step" : "epoch"));
            if (after_job >= 0) {
                json_object_set_new(m, "after_job", json_integer(after_job));
                json_object_set_new(m, "after", json_integer(after));
            }
            json_t *r = request(&c, m);
            if (!jobs) /* the first page */
                jobs = json_incref(json_object_get(r, "jobs"));
            size_t i;
            json_t *row;
            json_array_foreach(json_object_get(r, "rows"), i, row)
            {
                long long job = (long long)json_integer_value(json_array_get(row, 0));
                const json_t *info = job_info(jobs, job);
                char key[32];
                snprintf(key, sizeof key, "%lld", job);
                after_job = job;
                after = (long long)json_integer_value(json_array_get(row, steps ? 2 : 1));
                if (json_object_get(done, key))
                    continue;
                json_object_set_new(mine, key, json_true());
                /* names are [A-Za-z0-9_.-/]: no quoting needed */
                fprintf(f, "j%lld,%s,%s,%lld", job, info ? jstr(info, "name") : "",
                        info ? jstr(info, "variant") : "", info ? jint(info, "seed") : -1);
                for (size_t k = 1; k < json_array_size(row); k++) {
                    const json_t *v = json_array_get(row, k);
                    if (json_is_integer(v))
                        fprintf(f, ",%lld", (long long)json_integer_value(v));
                    else if (json_is_number(v))
                        fprintf(f, ",%.9g", json_number_value(v));
                    else
                        fputc(',', f);
                }
                fputc('\n', f);
                rows++;
            }
            int more = json_is_true(json_object_get(r, "more"));
            json_decref(r);
            if (!more)
                break;
        }
        json_object_update(done, mine);
        json_decref(mine);
        json_decref(jobs);
    }
    json_decref(done);
    conn_close(&c);
    if (out) {
        if (fclose(f) != 0 || rename(metrics_tmp, out) != 0)
            die("metrics: cannot write %s: %s", out, strerror(errno));
        metrics_tmp[0] = 0;
        fprintf(stderr, "wrote %s: %lld rows\n", out, rows);
    }
    return 0;
}

static int cmd_table(int n, char **a)
{
    const char *fmt = "text";
    char *grids[RW_TARGETS_MAX];
    int ng = 0;
    for (int k = 0; k < n; k++) {
        if (!strcmp(a[k], "--format") && k + 1 < n) {
            fmt = a[++k];
            if (strcmp(fmt, "text") && strcmp(fmt, "csv") && strcmp(fmt, "markdown") &&
                strcmp(fmt, "latex"))
                die("table: --format is text, csv, markdown or latex, not '%s'", fmt);
        } else if (a[k][0] == '-') {
            die("table: unexpected argument '%s'", a[k]);
        } else {
            add_target("table", grids, &ng, a[k]);
        }
    }
    if (!ng)
        die("table: which grid?");
    conn c;
    need_conn(&c);
    if (!strcmp(fmt, "text"))
        print_table(&c, grids, ng);
    else
        print_table_as(&c, grids, ng, fmt);
    conn_close(&c);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* sphere: the paper's Figure 3 */

/* sphere needs a job's weights and its training images. Where the client
 * sees the job's run folder as runawayd does, it runs `runaway-worker
 * sphere` itself; a client on another host (its socket forwarded over ssh)
 * asks runawayd to run it there, and draws the data file it sends. A folder
 * of the same path on that host (its own daemon's job of that number) is
 * not the job's: `version` is the identity of the final weights as runawayd
 * sees them. */
static int run_dir_here(const char *path, const char *version)
{
    struct stat st;
    char w[PATH_MAX + 32], mine[96] = "";
    snprintf(w, sizeof w, "%s/weights.safetensors", path);
    if (version && stat(w, &st) == 0)
        rw_file_version(&st, mine, sizeof mine);
    return !(stat(path, &st) != 0 && errno == ENOENT) && !(version && strcmp(mine, version));
}

/* The epochs of a job's snapshots (`show`'s list, ascending): at most k of
 * them, evenly spread, the first and the last kept. */
static int snapshot_pick(const json_t *list, int k, int *out)
{
    int n = (int)json_array_size(list);
    int m = n < k ? n : k;
    for (int i = 0; i < m; i++)
        out[i] = (int)json_integer_value(
            json_array_get(list, m > 1 ? (size_t)((long)i * (n - 1) / (m - 1)) : (size_t)n - 1));
    return m;
}

/* The job's spec into dir/jN.yaml, its run folder into run_dir, whether the
 * client sees it (*here), and up to k of its snapshot epochs into ep
 * (returned: how many). */
static int sphere_spec(conn *c, const char *dir, long long job, char *run_dir, size_t len,
                       int *here, int k, int *ep)
{
    json_t *m = req_new("show");
    char id[32], spec[PATH_MAX];
    snprintf(id, sizeof id, "j%lld", job);
    json_object_set_new(m, "job", json_string(id));
    json_t *r = request(c, m);
    snprintf(spec, sizeof spec, "%s/j%lld.yaml", dir, job);
    snprintf(run_dir, len, "%s", jstr(r, "run_dir"));
    *here = run_dir_here(run_dir, json_string_value(json_object_get(r, "weights_version")));
    FILE *f = fopen(spec, "w");
    if (!f || fputs(jstr(r, "spec"), f) < 0 || fclose(f) != 0)
        die("%s: %s", spec, strerror(errno));
    int n = snapshot_pick(json_object_get(r, "snapshots"), k, ep);
    json_decref(r);
    return n;
}

/* Runs `runaway-worker sphere` on one weights file of job p->job into
 * p->data (its output beside it, .log) and reads the numbers. Dies with
 * the worker's last words when it fails. */
static void sphere_run(const char *dir, const char *weights, long samples, const char *backend,
                       rw_sphere_panel *p)
{
    char spec[PATH_MAX], logp[PATH_MAX + 8], ns[32];
    snprintf(spec, sizeof spec, "%s/j%lld.yaml", dir, p->job);
    snprintf(logp, sizeof logp, "%s.log", p->data);
    snprintf(ns, sizeof ns, "%ld", samples);
    if (access(weights, R_OK) != 0)
        die("sphere: j%lld: %s: %s", p->job, weights, strerror(errno));
    char bin[PATH_MAX];
    if (worker_bin)
        snprintf(bin, sizeof bin, "%s", worker_bin);
    else
        find_prog("runaway-worker", "worker", bin, sizeof bin);
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        int fd = open(logp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execl(bin, bin, "sphere", spec, weights, p->data, "--samples", ns, "--backend", backend,
              (char *)NULL);
        fprintf(stderr, "cannot run %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    char err[1024];
    int ran = WIFEXITED(st) && WEXITSTATUS(st) == 0;
    if (ran && rw_sphere_read(p, err, sizeof err) != 0)
        die("sphere: j%lld: %s", p->job, err);
    if (!ran) {
        char tail[1024];
        rw_file_last_line(logp, "runaway-worker: no usable GPU", tail, sizeof tail);
        die("sphere: j%lld: %s", p->job, tail[0] ? tail : "runaway-worker sphere failed");
    }
}

/* The same, run by runawayd where the job's files are (epoch < 0: its final
 * weights): its data file into p->data. */
static void sphere_remote(conn *c, int epoch, long samples, const char *backend,
                          rw_sphere_panel *p)
{
    json_t *m = req_new("sphere");
    char id[32];
    snprintf(id, sizeof id, "j%lld", p->job);
    json_object_set_new(m, "job", json_string(id));
    if (epoch >= 0)
        json_object_set_new(m, "epoch", json_integer(epoch));
    json_object_set_new(m, "samples", json_integer(samples));
    json_object_set_new(m, "backend", json_string(backend));
    /* runawayd answers when runaway-worker is done: up to its hour */
    json_t *r = request_within(c, m, 3700);
    const char *data = json_string_value(json_object_get(r, "data"));
    FILE *f = fopen(p->data, "w");
    if (!data || !f || fputs(data, f) < 0 || fclose(f) != 0)
        die("sphere: %s: %s", p->data, data ? strerror(errno) : "runawayd sent no data");
    json_decref(r);
    char err[1024];
    if (rw_sphere_read(p, err, sizeof err) != 0)
        die("sphere: j%lld: %s", p->job, err);
}

static char sphere_tmp[PATH_MAX]; /* the temporary folder, removed at exit */

static void sphere_tmp_remove(void)
{
    if (sphere_tmp[0])
        rw_work_dir_remove(sphere_tmp);
}

static int cmd_sphere(int n, char **a)
{
    const char *out = NULL, *data_dir = NULL, *backend = "auto";
    char *targets[RW_TARGETS_MAX];
    int nt = 0;
    long samples = 2048, snaps = 0;
    for (int k = 0; k < n; k++) {
        char *end;
        if ((!strcmp(a[k], "-o") || !strcmp(a[k], "--out")) && k + 1 < n)
            out = a[++k];
        else if (!strcmp(a[k], "--data") && k + 1 < n)
            data_dir = a[++k];
        else if (!strcmp(a[k], "--samples") && k + 1 < n) {
            samples = strtol(a[++k], &end, 10);
            if (*end || samples < 3 || samples > 50000)
                die("sphere: --samples takes 3..50000 images, not '%s'", a[k]);
        } else if (!strcmp(a[k], "--backend") && k + 1 < n) {
            backend = a[++k];
            if (strcmp(backend, "auto") && strcmp(backend, "cpu") && strcmp(backend, "cuda"))
                die("sphere: --backend is auto, cpu or cuda, not '%s'", backend);
        } else if (!strcmp(a[k], "--snapshots") && k + 1 < n) {
            snaps = strtol(a[++k], &end, 10);
            if (*end || snaps < 1 || snaps > 12)
                die("sphere: --snapshots takes 1..12 (epochs per job), not '%s'", a[k]);
        } else if (a[k][0] == '-')
            die("sphere: unexpected argument '%s'", a[k]);
        else
            add_target("sphere", targets, &nt, a[k]);
    }
    if (!nt)
        die("sphere: which job or grid?");
    conn c;
    need_conn(&c);
    json_t *m = req_new("curves");
    set_targets(m, "target", "targets", targets, nt);
    json_t *r = request(&c, m);
    int by_job = !strcmp(jstr(r, "kind"), "job");
    json_t *jobs = json_object_get(r, "jobs");
    size_t nj = json_array_size(jobs), i;
    json_t *j;
    /* per variant, its finished job of the lowest seed */
    rw_sphere_panel *pick = calloc(nj ? nj : 1, sizeof *pick);
    int np = 0;
    if (!pick)
        die("out of memory");
    json_array_foreach(jobs, i, j)
    {
        const char *name = jstr(j, by_job ? "name" : "variant");
        int g = 0;
        while (g < np && strcmp(pick[g].title, name))
            g++;
        if (g == np)
            snprintf(pick[np++].title, sizeof pick[0].title, "%s", name);
        if (strcmp(jstr(j, "state"), "done"))
            continue;
        if (!pick[g].job || jint(j, "seed") < pick[g].seed) {
            pick[g].job = jint(j, "id");
            pick[g].seed = jint(j, "seed");
        }
    }
    char err[1024];
    if (rw_work_dir(data_dir, "sphere", sphere_tmp, sizeof sphere_tmp, err, sizeof err) != 0)
        die("sphere: %s", err);
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", sphere_tmp);
    if (data_dir)
        sphere_tmp[0] = 0; /* the user's folder stays */
    else
        atexit(sphere_tmp_remove); /* also when a failure dies on the way */
    char out_abs[PATH_MAX] = "", out_tmp[PATH_MAX + 16] = "";
    if (out && rw_png_target(out, out_abs, sizeof out_abs, out_tmp, sizeof out_tmp, err,
                             sizeof err) != 0)
        die("sphere: %s", err);
    /* panels: one per finished variant, or with --snapshots a row of its
     * snapshot epochs (an empty panel where a row is short) */
    int cols = 1, ndone = 0, total = 0;
    int (*ep)[12] = calloc((size_t)(np ? np : 1), sizeof *ep);
    int *ne = calloc((size_t)(np ? np : 1), sizeof *ne);
    char (*run_dir)[PATH_MAX] = calloc((size_t)(np ? np : 1), sizeof *run_dir);
    if (!ep || !ne || !run_dir)
        die("out of memory");
    int *here = calloc((size_t)(np ? np : 1), sizeof *here);
    if (!here)
        die("out of memory");
    for (int g = 0; g < np; g++) {
        if (!pick[g].job)
            continue;
        int k = sphere_spec(&c, dir, pick[g].job, run_dir[g], sizeof run_dir[g], &here[g],
                            snaps ? (int)snaps : 0, ep[g]);
        ne[g] = snaps ? k : 1;
        if (ne[g] == 0)
            die("sphere: j%lld has no snapshots in %s/snapshots (give its spec "
                "checkpoint.snapshot_every)", pick[g].job, run_dir[g]);
        if (!here[g])
            fprintf(stderr, "runaway: sphere: j%lld: its run folder is on runawayd's host, not "
                    "here: runawayd computes its projections there\n", pick[g].job);
        cols = ne[g] > cols ? ne[g] : cols;
        ndone++;
    }
    rw_sphere_panel *p = calloc((size_t)(ndone ? ndone : 1) * cols, sizeof *p);
    if (!p)
        die("out of memory");
    for (int g = 0; g < np; g++) {
        if (!pick[g].job)
            continue;
        for (int k = 0; k < (snaps ? cols : 1); k++) {
            rw_sphere_panel *q = &p[total++];
            if (k >= ne[g])
                continue; /* a short row: an empty panel keeps the columns aligned */
            char w[PATH_MAX + 64];
            *q = pick[g];
            if (snaps) {
                snprintf(q->title, sizeof q->title, "%s, epoch %d", pick[g].title, ep[g][k]);
                snprintf(w, sizeof w, "%s/snapshots/weights-e%05d.safetensors", run_dir[g],
                         ep[g][k]);
            } else {
                snprintf(w, sizeof w, "%s/weights.safetensors", run_dir[g]);
            }
            snprintf(q->data, sizeof q->data, "%s/sphere%d.dat", dir, total - 1);
            if (here[g])
                sphere_run(dir, w, samples, backend, q);
            else
                sphere_remote(&c, snaps ? ep[g][k] : -1, samples, backend, q);
        }
    }
    free(here);
    free(ep);
    free(ne);
    free(run_dir);
    char what[512] = ""; /* the targets as typed */
    for (int k = 0; k < nt; k++)
        snprintf(what + strlen(what), sizeof what - strlen(what), "%s%s", k ? " + " : "",
                 targets[k]);
    printf("%s %s: projections f(x) of %ld training images, PCA to 2-D, on the unit circle\n",
           jstr(r, "kind"), what, samples);
    printf("%-28s %-7s %5s %8s %10s %9s  %s\n", by_job ? "job" : "variant", "job", "seed", "R",
           "L_uniform", "densest", "PCA share");
    for (int k = 0; k < total; k++)
        if (p[k].job)
            printf("%-28s j%-6lld %5lld %8.4f %10.4f %8.1f%%  %.1f%% + %.1f%%\n", p[k].title,
                   p[k].job, p[k].seed, p[k].R, p[k].uniform, 100 * p[k].densest,
                   100 * p[k].evr[0], 100 * p[k].evr[1]);
    if (ndone < np)
        printf("(%d variant%s without a finished job)\n", np - ndone, np - ndone == 1 ? "" : "s");
    printf("R: length of the mean unit vector (0: spread, 1: one point); L_uniform on the circle "
           "(lower: more uniform); densest: share of points on the fullest 45-degree arc\n");
    int rc = 0;
    if (ndone == 0) {
        fprintf(stderr, "runaway: sphere: %s has no finished job\n", what);
        rc = 1;
    } else if (out) {
        char title[256];
        snprintf(title, sizeof title, "%s %s: representations on the circle (PCA of f(x), %ld "
                 "training images; red: two views of a sample)", jstr(r, "kind"), what, samples);
        if (rw_sphere_draw(p, total, snaps ? cols : 0, title, dir, out_tmp, err, sizeof err) != 0 ||
            rw_gnuplot_run(rw_gnuplot_prog(NULL), dir, err, sizeof err) != 0 ||
            rename(out_tmp, out_abs) != 0) {
            if (!err[0])
                snprintf(err, sizeof err, "%s: %s", out_abs, strerror(errno));
            unlink(out_tmp);
            rc = 1;
            fprintf(stderr, "runaway: sphere: %s\n", err);
        } else {
            printf("%s\n", out);
        }
    }
    free(p);
    free(pick);
    json_decref(r);
    conn_close(&c);
    return rc;
}

/* plot: the `curves` reply drawn once, or every `every` seconds until no
 * job is queued or running (a PNG viewer that reloads shows it live). */
static int cmd_plot(int n, char **a)
{
    char *targets[RW_TARGETS_MAX];
    int nt = 0;
    rw_plot_opts o = {.cols = 90, .rows = 22};
    double every = 0;
    for (int k = 0; k < n; k++) {
        if ((!strcmp(a[k], "-o") || !strcmp(a[k], "--out")) && k + 1 < n)
            o.out = a[++k];
        else if (!strcmp(a[k], "--data") && k + 1 < n)
            o.data_dir = a[++k];
        else if (!strcmp(a[k], "--every") && k + 1 < n) {
            char *end;
            every = strtod(a[++k], &end);
            if (*end || !(every >= 0.2 && every <= 86400))
                die("plot: --every takes seconds between 0.2 and 86400, not '%s'", a[k]);
        } else if (!strcmp(a[k], "--size") && k + 1 < n) {
            if (sscanf(a[++k], "%dx%d", &o.cols, &o.rows) != 2 || o.cols < 20 || o.rows < 8 ||
                o.cols > 1000 || o.rows > 500)
                die("plot: --size takes COLSxROWS (at least 20x8), not '%s'", a[k]);
        } else if (a[k][0] == '-')
            die("plot: unexpected argument '%s'", a[k]);
        else
            add_target("plot", targets, &nt, a[k]);
    }
    if (!nt)
        die("plot: which job or grid?");
    conn c;
    need_conn(&c);
    for (;;) {
        json_t *m = req_new("curves");
        set_targets(m, "target", "targets", targets, nt);
        char why[256] = "";
        json_t *r = every > 0 ? request_or_lost(&c, m, 600, why, sizeof why) : request(&c, m);
        if (!r) { /* --every rides out a restart of runawayd */
            reconnect(&c, why);
            continue;
        }
        int live = 0;
        size_t i;
        json_t *j;
        json_array_foreach(json_object_get(r, "jobs"), i, j)
        {
            const char *st = jstr(j, "state");
            live |= !strcmp(st, "queued") || !strcmp(st, "running");
        }
        if (every > 0 && !o.out)
            printf("\033[H\033[2J"); /* redraw in place */
        char err[1024];
        if (rw_plot_render(r, &o, err, sizeof err) != 0)
            die("plot: %s", err);
        json_decref(r);
        if (o.out && every > 0)
            fprintf(stderr, "runaway: %s drawn%s\n", o.out, live ? "" : "; every job has ended");
        fflush(stdout);
        if (every <= 0 || !live)
            break;
        struct timespec ts = {(time_t)every, (long)((every - (double)(time_t)every) * 1e9)};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
    }
    conn_close(&c);
    if (o.out && every <= 0)
        printf("%s\n", o.out);
    return 0;
}

static char export_tmp[PATH_MAX]; /* a fetched checkpoint, removed at exit */

static void export_tmp_remove(void)
{
    if (export_tmp[0])
        unlink(export_tmp);
}

/* The job's checkpoint fetched over the socket into export_tmp (a client
 * on another host); starts over, a few times, when the checkpoint is
 * replaced meanwhile (a running job's next one). */
static void export_fetch(conn *c, const char *job)
{
    const char *tmpdir = getenv("TMPDIR");
    snprintf(export_tmp, sizeof export_tmp, "%s/runaway-export-XXXXXX",
             tmpdir && *tmpdir ? tmpdir : "/tmp");
    int fd = mkstemp(export_tmp);
    if (fd < 0) {
        int e = errno;
        export_tmp[0] = 0;
        die("export: cannot write a temporary file in %s: %s", tmpdir ? tmpdir : "/tmp",
            strerror(e));
    }
    atexit(export_tmp_remove);
    unsigned char *buf = malloc(RW_EXPORT_CHUNK);
    if (!buf)
        die("out of memory");
    /* tests: smaller chunks, so that a small checkpoint takes several */
    const char *tc = getenv("RUNAWAY_TEST_EXPORT_CHUNK");
    long chunk = tc ? strtol(tc, NULL, 10) : RW_EXPORT_CHUNK;
    if (chunk < 1 || chunk > RW_EXPORT_CHUNK)
        chunk = RW_EXPORT_CHUNK;
    for (int round = 0;; round++) {
        char version[128] = "";
        long long off = 0, size = -1;
        int changed = 0;
        if (ftruncate(fd, 0) != 0 || lseek(fd, 0, SEEK_SET) != 0)
            die("export: %s: %s", export_tmp, strerror(errno));
        while (size < 0 || off < size) {
            json_t *m = req_new("export");
            json_object_set_new(m, "job", json_string(job));
            json_object_set_new(m, "offset", json_integer(off));
            json_object_set_new(m, "length", json_integer(chunk));
            json_t *r = request(c, m);
            const char *hex = jstr(r, "data");
            size_t n = 0;
            if (!version[0]) {
                snprintf(version, sizeof version, "%s", jstr(r, "version"));
                size = jint(r, "size");
            }
            if (strcmp(version, jstr(r, "version"))) {
                changed = 1;
                json_decref(r);
                break;
            }
            if (rw_hex_decode(hex, strlen(hex), buf, RW_EXPORT_CHUNK, &n) != 0 ||
                (n == 0 && off < size))
                die("export: runawayd sent a chunk that is not the checkpoint's bytes");
            if (write(fd, buf, n) != (ssize_t)n)
                die("export: %s: %s", export_tmp, strerror(errno));
            off += (long long)n;
            json_decref(r);
        }
        if (!changed)
            break;
        if (round == 4)
            die("export: the checkpoint of %s was replaced 5 times while it was fetched; try "
                "again, or when the job has ended", job);
    }
    free(buf);
    if (fsync(fd) != 0 || close(fd) != 0)
        die("export: %s: %s", export_tmp, strerror(errno));
}

static int cmd_export(const char *job, const char *out)
{
    conn c;
    need_conn(&c);
    json_t *m = req_new("export");
    json_object_set_new(m, "job", json_string(job));
    json_t *r = request(&c, m);
    char bin[PATH_MAX];
    if (worker_bin)
        snprintf(bin, sizeof bin, "%s", worker_bin);
    else
        find_prog("runaway-worker", "worker", bin, sizeof bin);
    char ckpt[PATH_MAX], mine[96] = "";
    snprintf(ckpt, sizeof ckpt, "%s", jstr(r, "checkpoint"));
    struct stat cst;
    if (access(ckpt, R_OK) == 0 && stat(ckpt, &cst) == 0)
        rw_file_version(&cst, mine, sizeof mine);
    /* runawayd's host: the path is the daemon's file (another host may
     * have one of that path, another daemon's) */
    int local = mine[0] && !strcmp(mine, jstr(r, "version"));
    json_decref(r);
    if (local) {
        conn_close(&c);
        fflush(stdout);
        execl(bin, bin, "export", ckpt, out, (char *)NULL);
        die("cannot run %s: %s", bin, strerror(errno));
    }
    /* another host: the checkpoint comes over the socket */
    export_fetch(&c, job);
    conn_close(&c);
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        execl(bin, bin, "export", export_tmp, out, (char *)NULL);
        fprintf(stderr, "runaway: cannot run %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
}

static int cmd_run(const char *path, int dargc, char **dargv)
{
    conn c = {.fd = -1};
    /* the spec first: a typo should not start a daemon */
    char *text;
    size_t len;
    char basedir[RW_PATH_MAX], err[2048];
    if (rw_grid_read_file(path, RW_SUBMIT_TEXT_MAX, &text, &len, basedir, sizeof basedir, err,
                          sizeof err) != 0)
        die("%s", err);
    rw_grid g;
    if (rw_grid_parse(text, len, path, basedir, &g, err, sizeof err) != 0)
        die("%s", err);
    rw_grid_free(&g);
    free(text);
    daemon_start(dargc, dargv, 0);
    need_conn(&c);
    json_t *r = do_submit(&c, path, 0, 0);
    print_submitted(r);
    char grid[32];
    snprintf(grid, sizeof grid, "g%lld", jint(r, "grid"));
    json_decref(r);
    r = request(&c, req_new("status"));
    const char *tb = json_string_value(json_object_get(r, "tensorboard"));
    if (tb) /* the live curves, for whoever has TensorBoard */
        printf("curves: tensorboard --logdir %s   or   runaway plot %s -o %s.png --every 10\n", tb,
               grid, grid);
    json_decref(r);
    fflush(stdout);
    int rc = watch(&c, grid);
    printf("\n");
    char *one[1] = {grid};
    print_table(&c, one, 1);
    conn_close(&c);
    if (rc)
        fprintf(stderr, "runaway: not every job of %s finished: see `runaway ls %s`\n", grid, grid);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* token new */

/* A TCP token: 32 bytes of getrandom(2) as 64 hex digits (256 bits; the
 * rule, proto/msg.h, asks 32 characters), in a new file of mode 0600. An
 * existing file is never replaced: a daemon and its workers may use it. */
static int token_new(const char *path)
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

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    int i = 1;
    const char *sd = NULL;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "--state-dir") && i + 1 < argc)
            sd = argv[++i];
        else if (!strcmp(argv[i], "--daemon-bin") && i + 1 < argc)
            daemon_bin = argv[++i];
        else if (!strcmp(argv[i], "--worker") && i + 1 < argc)
            worker_bin = argv[++i];
        else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "runaway: unknown option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (i >= argc) {
        usage(stderr);
        return 2;
    }
    if (sd) {
        snprintf(state_dir, sizeof state_dir, "%s", sd);
    } else {
        const char *x = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
        if (x && x[0] == '/')
            snprintf(state_dir, sizeof state_dir, "%s/runaway", x);
        else if (home && home[0])
            snprintf(state_dir, sizeof state_dir, "%s/.local/state/runaway", home);
        else
            die("no HOME or XDG_STATE_HOME: give --state-dir");
    }
    char real[PATH_MAX];
    if (realpath(state_dir, real))
        snprintf(state_dir, sizeof state_dir, "%s", real);
    snprintf(sock_path, sizeof sock_path, "%s/runawayd.sock", state_dir);

    const char *cmd = argv[i++];
    int n = argc - i;
    char **a = argv + i;
#define NEED(k, what)                                                                          \
    do {                                                                                       \
        if (n != (k)) {                                                                        \
            fprintf(stderr, "runaway %s: expected %s\n", cmd, what);                          \
            return 2;                                                                          \
        }                                                                                      \
    } while (0)
    if (!strcmp(cmd, "daemon")) {
        if (n < 1)
            die("daemon: start, stop, status or check?");
        if (!strcmp(a[0], "start"))
            return daemon_start(n - 1, a + 1, 0);
        if (!strcmp(a[0], "stop"))
            return daemon_stop();
        if (!strcmp(a[0], "status"))
            return daemon_status();
        if (!strcmp(a[0], "check"))
            return daemon_check();
        die("daemon: start, stop, status or check, not '%s'", a[0]);
    }
    if (!strcmp(cmd, "token")) {
        if (n != 2 || strcmp(a[0], "new"))
            die("token: expected `token new FILE`");
        return token_new(a[1]);
    }
    if (!strcmp(cmd, "submit")) {
        long prio = 0;
        int has_prio = 0, dry = 0;
        const char *path = NULL;
        for (int k = 0; k < n; k++) {
            if (!strcmp(a[k], "--priority") && k + 1 < n) {
                prio = strtol(a[++k], NULL, 10);
                has_prio = 1;
            } else if (!strcmp(a[k], "--dry-run") || !strcmp(a[k], "-n")) {
                dry = 1;
            } else if (!path)
                path = a[k];
            else
                die("submit: unexpected argument '%s'", a[k]);
        }
        if (!path)
            die("submit: which spec or grid file?");
        if (dry)
            return dry_run(path);
        conn c = {.fd = -1};
        json_t *r = do_submit(&c, path, has_prio, prio);
        print_submitted(r);
        json_decref(r);
        conn_close(&c);
        return 0;
    }
    if (!strcmp(cmd, "ls"))
        return cmd_ls(n, a);
    if (!strcmp(cmd, "grids"))
        return cmd_grids();
    if (!strcmp(cmd, "show")) {
        NEED(1, "JOB");
        return cmd_show(a[0]);
    }
    if (!strcmp(cmd, "priority")) {
        NEED(2, "JOB or GRID, and the priority");
        return cmd_priority(a[0], a[1]);
    }
    if (!strcmp(cmd, "cancel")) {
        NEED(1, "JOB or GRID");
        return cmd_cancel(a[0]);
    }
    if (!strcmp(cmd, "requeue")) {
        NEED(1, "JOB or GRID");
        return cmd_requeue(a[0]);
    }
    if (!strcmp(cmd, "rm")) {
        NEED(1, "JOB or GRID");
        return cmd_rm(a[0]);
    }
    if (!strcmp(cmd, "logs"))
        return cmd_logs(n, a);
    if (!strcmp(cmd, "workers"))
        return cmd_workers();
    if (!strcmp(cmd, "watch"))
        return cmd_watch(n, a);
    if (!strcmp(cmd, "diff")) {
        NEED(2, "JOB JOB");
        return cmd_diff(a[0], a[1]);
    }
    if (!strcmp(cmd, "table"))
        return cmd_table(n, a);
    if (!strcmp(cmd, "metrics"))
        return cmd_metrics(n, a);
    if (!strcmp(cmd, "plot"))
        return cmd_plot(n, a);
    if (!strcmp(cmd, "sphere"))
        return cmd_sphere(n, a);
    if (!strcmp(cmd, "export")) {
        NEED(2, "JOB OUT.safetensors");
        return cmd_export(a[0], a[1]);
    }
    if (!strcmp(cmd, "run")) {
        if (n < 1)
            die("run: which spec or grid file?");
        return cmd_run(a[0], n - 1, a + 1);
    }
    fprintf(stderr, "runaway: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
