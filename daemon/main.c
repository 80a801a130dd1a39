/* runawayd: the coordinator. Runs in the foreground (`runaway daemon start`
 * detaches it); one per state directory, enforced with a lock file. This
 * file: its options, the state folder and its lock, signals, and the loop
 * from start to stop; daemon.h lists the parts. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "daemon/dbcheck.h"
#include "daemon/handlers.h"
#include "proto/msg.h"

static rd_daemon the_daemon;
static uv_signal_t sigterm_h, sigint_h;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: runawayd [--state-dir DIR] [options]\n"
            "  --state-dir DIR        socket, database, runs (default $XDG_STATE_HOME/runaway,\n"
            "                         else ~/.local/state/runaway)\n"
            "  --cpu-slots N          CPU worker processes when there is no GPU\n"
            "                         (default: one per 2 cores, at least 1; 0 with --gpus 0:\n"
            "                         coordinator only, remote workers train)\n"
            "  --gpus N               GPUs to use (default: the /dev/nvidiaN devices; 0: CPU only)\n"
            "  --slots-per-gpu N      workers sharing one GPU (default 1)\n"
            "  --threads N            CPU threads per worker (default: cores / slots)\n"
            "  --worker PATH          runaway-worker program (default: next to runawayd)\n"
            "  --tcp HOST:PORT        also listen on TCP (workers on other hosts); needs\n"
            "                         a token of 32+ characters in a 0600 file (make one\n"
            "                         with `runaway token new FILE`)\n"
            "  --token-file PATH      that file (default STATE/token)\n"
            "  --heartbeat S          worker heartbeat period (default 2)\n"
            "  --heartbeat-timeout S  silence after which a worker is killed (default 30)\n"
            "  --stall-timeout S      a job without progress (no step, no evaluation) this\n"
            "                         long is taken for hung: its worker reports it failed\n"
            "                         and restarts (default 1800; 0: never)\n"
            "  --max-retries N        lost attempts before a job fails (default 3)\n"
            "  --shutdown-timeout S   wait for workers to checkpoint on SIGTERM (default 60)\n"
            "  --tensorboard DIR|none TensorBoard event files of every job's metrics, written\n"
            "                         as they arrive (default STATE/tensorboard)\n"
            "  --backup-every S       a backup of the database, STATE/runaway.db.backup, at\n"
            "                         start and then every S seconds while it changes\n"
            "                         (default 600; 0: none)\n"
            "  --check                PRAGMA integrity_check of the database and its backup,\n"
            "                         read-only (a running daemon goes on); exit 1 on damage\n"
            "  --notify CMD           a shell command run when a grid ends, when a job fails\n"
            "                         for good and when the database stops taking writes\n"
            "                         (and takes them again); RUNAWAY_EVENT (grid_end,\n"
            "                         job_failed, db_down, db_up), RUNAWAY_GRID, ... say\n"
            "                         what (README)\n");
}

/* runaway-worker next to our own executable, or in the build tree's worker/. */
static void find_worker(char *out, size_t len)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) {
        snprintf(out, len, "runaway-worker");
        return;
    }
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    *slash = '\0';
    snprintf(out, len, "%s/runaway-worker", self);
    if (access(out, X_OK) == 0)
        return;
    snprintf(out, len, "%s/../worker/runaway-worker", self);
}

static int count_gpus(void)
{
    int n = 0;
    char p[32];
    for (int i = 0; i < 64; i++) {
        snprintf(p, sizeof p, "/dev/nvidia%d", i);
        if (access(p, F_OK) == 0)
            n = i + 1;
    }
    return n;
}

static void close_walk_cb(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void signal_cb(uv_signal_t *s, int signum)
{
    rd_log("signal %d", signum);
    rd_shutdown_begin(s->data);
}

/* The state folder is the user's alone: its database names every job, spec
 * and path, and the socket beside it is the daemon's door. What we own is
 * made private (the folder 0700, its database, backup, lock and log 0600);
 * what another user owns is refused, not used, since they could change it
 * under us. */
static int state_private(const char *state, char *err, size_t errlen)
{
    static const char *const files[] = {"", "runaway.db", "runaway.db-wal", "runaway.db-shm",
                                        "runaway.db.backup", "runawayd.lock", "runawayd.log"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char p[PATH_MAX + 32];
        snprintf(p, sizeof p, "%s%s%s", state, files[i][0] ? "/" : "", files[i]);
        mode_t want = files[i][0] ? 0600 : 0700;
        struct stat st;
        if (stat(p, &st) != 0) {
            if (errno == ENOENT)
                continue;
            snprintf(err, errlen, "%s: %s", p, strerror(errno));
            return -1;
        }
        mode_t mode = st.st_mode & 07777;
        if (st.st_uid != geteuid()) {
            snprintf(err, errlen, "%s belongs to uid %u, not to uid %u that runs runawayd (mode "
                     "%04o): refusing to start on state another user can change; chown it, or "
                     "give --state-dir a folder of your own", p, (unsigned)st.st_uid,
                     (unsigned)geteuid(), (unsigned)mode);
            return -1;
        }
        if (mode == want)
            continue;
        if (chmod(p, want) != 0) {
            snprintf(err, errlen, "%s is mode %04o and cannot be made %04o: %s", p,
                     (unsigned)mode, (unsigned)want, strerror(errno));
            return -1;
        }
        rd_log("%s was mode %04o: now %04o (the state is its user's alone)", p, (unsigned)mode,
               (unsigned)want);
    }
    return 0;
}

/* The TCP token's rule (proto/msg.h) before anything starts: a short or
 * blank token is refused, not served. The listener reads the file again and
 * checks its mode; a file it cannot read is left to it to explain. */
static int token_file_check(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char tok[RW_TOKEN_MAX + 2];
    size_t n = fread(tok, 1, sizeof tok - 1, f);
    fclose(f);
    tok[n] = '\0';
    tok[strcspn(tok, "\r\n")] = '\0';
    char why[512];
    if (rw_token_check(tok, why, sizeof why) != 0) {
        snprintf(err, errlen, "%s: %s", path, why);
        return -1;
    }
    return 0;
}

static int parse_num(const char *flag, const char *v, double lo, double hi, double *out)
{
    char *end;
    double x = v ? strtod(v, &end) : 0;
    if (!v || *end || !(x >= lo && x <= hi)) {
        fprintf(stderr, "runawayd: %s needs a number in [%g, %g]\n", flag, lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

int main(int argc, char **argv)
{
    rd_daemon *d = &the_daemon;
    /* the thread pool's queries share the loop's heap (glibc would give
     * each thread an arena of its own, which keeps a burst's memory) */
    mallopt(M_ARENA_MAX, 1);
    /* what runawayd and its workers create (database, backup, logs, run and
     * TensorBoard folders) is the user's alone, whatever the caller's umask */
    umask(077);
    const char *state = NULL, *tcp = NULL, *worker = NULL, *token_file = NULL, *tb = NULL;
    long ncores = sysconf(_SC_NPROCESSORS_ONLN);
    double cpu_slots = -1, gpus = -1, spg = 1, threads = 0, hb = 2, hbt = 30, retries = 3, sdt = 60;
    double stall = 1800, backup_every = 600;
    int check = 0;
    char err[1024];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int rc = 0;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--check")) {
            check = 1;
            continue; /* no value */
        } else if (!strcmp(a, "--state-dir") && v)
            state = v;
        else if (!strcmp(a, "--tcp") && v)
            tcp = v;
        else if (!strcmp(a, "--worker") && v)
            worker = v;
        else if (!strcmp(a, "--token-file") && v)
            token_file = v;
        else if (!strcmp(a, "--tensorboard") && v)
            tb = v;
        else if (!strcmp(a, "--notify") && v)
            d->notify.cmd = v;
        else if (!strcmp(a, "--cpu-slots"))
            rc = parse_num(a, v, 0, 64, &cpu_slots);
        else if (!strcmp(a, "--gpus"))
            rc = parse_num(a, v, 0, 64, &gpus);
        else if (!strcmp(a, "--slots-per-gpu"))
            rc = parse_num(a, v, 1, 16, &spg);
        else if (!strcmp(a, "--threads"))
            rc = parse_num(a, v, 1, 1024, &threads);
        else if (!strcmp(a, "--heartbeat"))
            rc = parse_num(a, v, 0.05, 60, &hb);
        else if (!strcmp(a, "--heartbeat-timeout"))
            rc = parse_num(a, v, 0.2, 3600, &hbt);
        else if (!strcmp(a, "--stall-timeout")) {
            rc = parse_num(a, v, 0, 1e6, &stall);
            if (rc == 0 && stall > 0 && stall < 1) {
                fprintf(stderr, "runawayd: --stall-timeout needs 0 (never) or at least 1 s\n");
                rc = -1;
            }
        }
        else if (!strcmp(a, "--backup-every"))
            rc = parse_num(a, v, 0, 86400, &backup_every);
        else if (!strcmp(a, "--max-retries"))
            rc = parse_num(a, v, 0, 100, &retries);
        else if (!strcmp(a, "--shutdown-timeout"))
            rc = parse_num(a, v, 1, 3600, &sdt);
        else {
            fprintf(stderr, "runawayd: unexpected argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
        if (rc != 0)
            return 2;
        if (strcmp(a, "-h") && strcmp(a, "--help"))
            i++;
    }
    if (state) {
        snprintf(d->state_dir, sizeof d->state_dir, "%s", state);
    } else if (rd_default_state_dir(d->state_dir, sizeof d->state_dir) != 0) {
        fprintf(stderr, "runawayd: no HOME or XDG_STATE_HOME: give --state-dir\n");
        return 2;
    }
    if (check) { /* reads only: no folder made, no lock, no mode changed */
        char db[PATH_MAX + 16];
        snprintf(db, sizeof db, "%s/runaway.db", d->state_dir);
        return rd_db_check_full(db);
    }
    if (rd_mkdir_p(d->state_dir, 0700) != 0) {
        fprintf(stderr, "runawayd: %s: %s\n", d->state_dir, strerror(errno));
        return 1;
    }
    char real[PATH_MAX];
    if (realpath(d->state_dir, real))
        snprintf(d->state_dir, sizeof d->state_dir, "%s", real);
    if (state_private(d->state_dir, err, sizeof err) != 0) {
        fprintf(stderr, "runawayd: %s\n", err);
        return 1;
    }
    /* one daemon per state directory */
    char lock[PATH_MAX + 32];
    snprintf(lock, sizeof lock, "%s/runawayd.lock", d->state_dir);
    int lfd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lfd < 0 || flock(lfd, LOCK_EX | LOCK_NB) != 0) {
        fprintf(stderr, "runawayd: another runawayd holds %s\n", lock);
        return 1;
    }
    if (ftruncate(lfd, 0) == 0)
        dprintf(lfd, "%d\n", (int)getpid());
    if (token_file)
        snprintf(d->net.token_path, sizeof d->net.token_path, "%s", token_file);
    else
        snprintf(d->net.token_path, sizeof d->net.token_path, "%s/token", d->state_dir);
    if (tcp && token_file_check(d->net.token_path, err, sizeof err) != 0) {
        fprintf(stderr, "runawayd: %s\n", err);
        return 1;
    }
    /* absolute: the CLI that prints it may run in another folder */
    char cwd[PATH_MAX] = ".";
    int tbn = 0;
    char *tbd = d->tb.dir;
    if (!tb)
        tbn = snprintf(tbd, sizeof d->tb.dir, "%s/tensorboard", d->state_dir);
    else if (!strcmp(tb, "none"))
        tbd[0] = '\0';
    else if (tb[0] == '/' || !getcwd(cwd, sizeof cwd))
        tbn = snprintf(tbd, sizeof d->tb.dir, "%s", tb);
    else
        tbn = snprintf(tbd, sizeof d->tb.dir, "%s/%s", cwd, tb);
    if (tbn < 0 || tbn > PATH_MAX - 512) { /* room for the run folders and file names */
        fprintf(stderr, "runawayd: --tensorboard %s: path too long\n", tb ? tb : d->state_dir);
        return 2;
    }
    rd_pool *p = &d->pool;
    if (worker)
        snprintf(p->worker_path, sizeof p->worker_path, "%s", worker);
    else
        find_worker(p->worker_path, sizeof p->worker_path);
    p->gpus = gpus >= 0 ? (int)gpus : count_gpus();
    p->slots_per_gpu = (int)spg;
    p->cpu_slots = cpu_slots >= 0 ? (int)cpu_slots : (int)(ncores / 2 > 1 ? ncores / 2 : 1);
    int nslots = p->gpus > 0 ? p->gpus * p->slots_per_gpu : p->cpu_slots;
    /* no local slot: a login or head node coordinates, workers of other
     * hosts (serve --tcp) train, and a submission waits for them */
    p->coordinator_only = nslots == 0;
    p->threads_per_worker = threads > 0 ? (int)threads
                            : p->gpus > 0 || nslots == 0 ? 2
                                          : (int)(ncores / nslots > 1 ? ncores / nslots : 1);
    p->heartbeat_s = hb;
    p->heartbeat_timeout_s = hbt;
    p->stall_timeout_s = stall;
    d->jobs.max_retries = (int)retries;
    d->life.shutdown_timeout_s = sdt;
    signal(SIGPIPE, SIG_IGN);

    d->loop = uv_default_loop();
    rd_daemon_wire(d);
    d->net.h.client_request = rd_handle_client;
    /* before anything writes to it: the schema, the requeue, the backlog */
    char damage[8192];
    if (rd_db_check_start(&d->store, damage, sizeof damage) != 0) {
        fprintf(stderr, "runawayd: %s", damage);
        return 1;
    }
    if (rd_db_open(&d->store, err, sizeof err) != 0) {
        fprintf(stderr, "runawayd: %s\n", err);
        return 1;
    }
    rd_db_backup_start(&d->store, d->loop, backup_every);
    rd_sphere_clear_stale(&d->spheres);
    if (rd_net_listen(&d->net, tcp, err, sizeof err) != 0) {
        fprintf(stderr, "runawayd: %s\n", err);
        return 1;
    }
    uv_signal_init(d->loop, &sigterm_h);
    uv_signal_init(d->loop, &sigint_h);
    sigterm_h.data = sigint_h.data = d;
    uv_signal_start(&sigterm_h, signal_cb, SIGTERM);
    uv_signal_start(&sigint_h, signal_cb, SIGINT);
    rd_daemon_tick_start(d);
    if (rd_pool_start(p, err, sizeof err) != 0) {
        fprintf(stderr, "runawayd: %s\n", err);
        return 1;
    }
    if (p->coordinator_only)
        rd_log("pid %d, state %s, coordinator only: no local worker slots, remote workers "
               "train (%s), tensorboard %s", (int)getpid(), d->state_dir,
               tcp ? tcp : "no --tcp: only workers on this host's socket",
               d->tb.dir[0] ? d->tb.dir : "none");
    else
        rd_log("pid %d, state %s, %d %s worker slot(s), %d thread(s) each, worker %s, "
               "tensorboard %s", (int)getpid(), d->state_dir, p->nworkers,
               p->gpus > 0 ? "GPU" : "CPU", p->threads_per_worker, p->worker_path,
               d->tb.dir[0] ? d->tb.dir : "none");
    rd_db_event(&d->store, 0, "daemon", "started");
    rd_schedule(&d->jobs);

    uv_run(d->loop, UV_RUN_DEFAULT);

    /* shutdown: every worker process has exited; close what is left */
    rd_db_event(&d->store, 0, "daemon", "stopped");
    for (rd_conn *c = d->net.conns; c; c = c->next)
        if (c->role == RD_ROLE_WORKER)
            rd_wconn_lost(&d->wc, c);
    rd_jobs_free(&d->jobs);
    rd_watch_free(&d->watch);
    rd_net_halt(&d->net);
    uv_walk(d->loop, close_walk_cb, NULL);
    uv_run(d->loop, UV_RUN_DEFAULT);
    rd_net_free_conns(&d->net);
    uv_loop_close(d->loop);
    /* The writes that wait are tried each second until --shutdown-timeout
     * from the signal (another program's lock is usually gone in seconds):
     * else a restart finds the rows as they were, and the epochs reported
     * before the checkpoints the jobs resume from would have none. */
    rd_store *s = &d->store;
    for (int said = 0; rd_db_down(s); said = 1) {
        if (rd_db_retry_now(s))
            break;
        double left = d->life.shutdown_started + d->life.shutdown_timeout_s - rd_mono();
        if (!d->life.shutting_down || left <= 0) {
            rd_log("stopping with %zu writes %s never took (%s): its jobs that were running "
                   "resume from their checkpoints", s->backlog.n, s->path, s->backlog.why);
            break;
        }
        if (!said)
            rd_log("%zu writes wait for %s (%s): trying each second, for %.0f s more",
                   s->backlog.n, s->path, s->backlog.why, left);
        nanosleep(&(struct timespec){1, 0}, NULL);
    }
    rd_db_backlog_free(s);
    rd_db_close(s);
    unlink(d->net.sock_path);
    unlink(lock);
    rd_log("stopped");
    return 0;
}
