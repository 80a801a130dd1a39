/* The fixture of the suites that start runawayd or run the CLI: a state
 * folder of the test's own, a daemon in it started with the usual test
 * settings plus the test's own arguments, the CLI run with a deadline, raw
 * protocol clients, the database read back, and waits with deadlines.
 *
 * Criterion runs each test in a process of its own, so `fx` below is the
 * running test's alone. Tests in parallel (several suites at once) never
 * share a state folder (mkdtemp), a socket (in the folder), a cache
 * (XDG_CACHE_HOME in the folder) or a TCP port (fx_free_tcp_port).
 *
 * Every wait has a deadline and fails the test saying what it waited for.
 * fx_teardown kills whatever daemon is left (its workers die with it,
 * PR_SET_PDEATHSIG), fails the test if a sanitizer reported in the
 * daemon's or the workers' logs, and removes the folder (RW_TEST_KEEP=1
 * keeps it, to look).
 *
 * A test on the usual daemon (2 CPU worker slots):
 *
 *     #include "daemon_fixture.h"
 *
 *     Test(daemon, two_seeds_end_done, .init = fx_setup, .fini = fx_teardown,
 *          .timeout = 60)
 *     {
 *         fx_submit_grid("two", 2, 0, "  seed: [0, 1]\n");  // tiny jobs, 2 epochs
 *         fx_wait_jobs("done", 2, 40);
 *         char out[4096];
 *         int rc = fx_cli(out, sizeof out, 20, "table", "two", NULL);
 *         cr_assert(rc == 0 && strstr(out, "2/2"), "%s", out);
 *         sqlite3 *db = fx_open_db();
 *         cr_assert_eq(fx_db_num(db, "SELECT COUNT(*) FROM attempts", 0), 2);
 *         sqlite3_close(db);
 *     }
 *
 * A daemon of another kind is a setup of the test's own: its arguments come
 * after the usual ones (so they win), and fx_restart_daemon gives them again.
 *
 *     static void setup_slow_heartbeat(void)
 *     {
 *         fx_prepare();
 *         fx_start_daemon("--heartbeat-timeout", "30", NULL);
 *     }
 */
#ifndef RUNAWAY_TESTS_DAEMON_FIXTURE_H
#define RUNAWAY_TESTS_DAEMON_FIXTURE_H

#include <criterion/criterion.h>
#include <sqlite3.h>
#include <stddef.h>
#include <sys/types.h>

#include "proto/frame.h"
#include "proto/msg.h"

/* ---- the state folder and its daemon ---- */

struct fx_state {
    char dir[64];     /* the state folder, /tmp/rwd.XXXXXX */
    char sock[128];   /* its Unix socket */
    char log[128];    /* the daemon's stdout and stderr: <dir>.log, outside the folder */
    pid_t daemon_pid; /* our runawayd; -1: none runs */
    int tmpfs;        /* a tmpfs is mounted on dir (fx_mount_tmpfs) */
};
extern struct fx_state fx;

/* A fresh, empty state folder, not yet served; the test's XDG_CACHE_HOME
 * (synthetic sets) is a folder in it. */
void fx_prepare(void);
/* runawayd on fx.dir: 2 CPU slots, 1 thread each, heartbeats every 0.2 s,
 * a 3 s heartbeat timeout, 10 s to shut down, then the extra arguments, a
 * NULL-terminated list (at most 8; fx_start_daemon(NULL): none). Returns
 * once it listens (fails after 10 s). It inherits the test's environment. */
void fx_start_daemon(const char *arg, ...);
/* Again, with the last start's extra arguments (after a stop or a kill). */
void fx_restart_daemon(void);
/* SIGTERM, then SIGKILL after grace_s. The exit status; -2 if it had to be
 * killed, -1 if none ran. */
int fx_stop_daemon(double grace_s);
/* SIGKILL, as a crash: its workers die with it, nothing is cleaned. */
void fx_kill_daemon(void);
/* .init of most tests: fx_prepare, then fx_start_daemon with no extras. */
void fx_setup(void);
/* .init of the tests of --notify: fx_setup's daemon with a --notify command
 * that writes each event's RUNAWAY_* variables into
 * <dir>/n-<EVENT>-<GRID><JOB>.txt (whole, or not yet there) and adds a line
 * to <dir>/n-count. */
void fx_setup_notify(void);
/* .fini of every test (with or without a daemon). */
void fx_teardown(void);
/* Mounts a tmpfs of `size` (e.g. "32m") on the empty fx.dir, to fill it;
 * 0 where this machine does not let us (mounts need root). */
int fx_mount_tmpfs(const char *size);
/* A TCP port on 127.0.0.1 that nothing listens on now, for --tcp. */
int fx_free_tcp_port(void);
/* The path of a built program: rel is relative to the build folder
 * ($RW_BUILD_ROOT), e.g. "worker/runaway-worker". */
void fx_bin(char *out, size_t len, const char *rel);

/* ---- programs ---- */

/* Runs argv[0] with argv (NULL-terminated); its stdout and stderr into out
 * (of a longer output, what came after out last filled up). Fails the test
 * if it runs past timeout_s. Its exit status; -1 if a signal ended it. */
int fx_run(char *out, size_t outlen, int timeout_s, const char **argv);
/* The same as user `uid` (-1: ours), for what another user sees. */
int fx_run_as(uid_t uid, char *out, size_t outlen, int timeout_s, const char **argv);
/* `runaway --state-dir DIR args...`, as fx_run. */
int fx_cli(char *out, size_t outlen, int timeout_s, ...) __attribute__((sentinel));
/* `runaway --state-dir DIR args...` (NULL-terminated, at most 8) in the
 * background, its output into `file`. */
pid_t fx_cli_start(const char *file, const char **args);
/* Its exit status once it ends within secs (-1 if it runs on: then it is
 * killed, or if a signal ended it); its output into out. */
int fx_cli_wait(pid_t pid, const char *file, double secs, char *out, size_t outlen);

/* ---- files and grids ---- */

void fx_write_file(const char *path, const char *text);
/* Lines in a file; 0 if there is none. */
int fx_lines_of(const char *path);
/* A grid of tiny jobs (width 2, 8x8 images, 100 of them: seconds each),
 * `epochs` long, a checkpoint every `ckpt` epochs (0: none), and the
 * grid's axes as YAML lines indented by 2 (e.g. "  seed: [0, 1]\n"). */
void fx_write_grid(const char *path, const char *name, int epochs, int ckpt, const char *axes);
/* Writes it as <dir>/<name>.yaml and submits it (fails the test if refused). */
void fx_submit_grid(const char *name, int epochs, int ckpt, const char *axes);
/* A job long enough to be caught midway (300 epochs, a checkpoint every 10);
 * its id. */
long long fx_submit_long(const char *name);

/* ---- raw protocol clients ---- */

/* A connection to fx.sock; -1 if nothing listens. */
int fx_connect(void);
/* A connection that said hello as a client; r is its reader (free it). */
int fx_client(rw_frame_reader *r);
/* The next frame within timeout_ms; NULL if none (or the stream ended). */
json_t *fx_recv(int fd, rw_frame_reader *r, int timeout_ms);
/* Sends m (taking it) and returns the reply with its id (10 s at most),
 * skipping other frames. */
json_t *fx_request(int fd, rw_frame_reader *r, json_t *m);
/* m (taken) on a connection of its own: the reply. */
json_t *fx_ask(json_t *m);
/* A request of `type` with at most one string field (key: val; key NULL:
 * none), on a connection of its own: the reply. */
json_t *fx_ask_simple(const char *type, const char *key, const char *val);
/* 1 if the daemon closed the connection within timeout_ms. */
int fx_closed_by_peer(int fd, int timeout_ms);
/* The daemon answers a status request. */
void fx_expect_still_serving(void);
/* rep (taken) is an error with `code` whose message holds `text`. */
void fx_expect_error(json_t *rep, const char *code, const char *text);
/* Raw bytes on a new connection (after a hello, if hello_first) get an error
 * reply with `code`, then the close; the daemon serves on. */
void fx_expect_rejected(const void *bytes, size_t n, int hello_first, const char *code);
/* The same for a frame with this body. */
void fx_expect_rejected_body(const char *body, int hello_first, const char *code);
/* The pid of the worker that holds `job` (any rank); fails if none. */
long long fx_worker_pid(long long job);

/* ---- the database and waits ---- */

double fx_now(void); /* seconds, monotonic */
/* The state's database, read-only, waiting up to 5 s for a writer's lock. */
sqlite3 *fx_open_db(void);
/* The first column of sql's first row (NAN if none), `arg` bound to its
 * parameter if it has one. */
double fx_db_num(sqlite3 *db, const char *sql, long long arg);
/* Until sql (with arg) gives a value >= want; fails after secs, naming
 * `what` and the last value. */
void fx_wait_for(const char *what, const char *sql, long long arg, double want, double secs);
/* Until job's state is `state` (queued, running, done, failed, cancelled). */
void fx_wait_job(long long job, const char *state, double secs);
/* Until at least n jobs (of any grid) are in `state`. */
void fx_wait_jobs(const char *state, int n, double secs);
/* Until job has reported epoch `epoch` (or a later one). */
void fx_wait_epoch(long long job, int epoch, double secs);

/* The TensorBoard event files against the database, read by
 * tests/tb_check.py (its own TFRecord and protobuf decoding): job 0 checks
 * every job with metrics; `expect` must be in its report. */
#define FX_TB_PURGE 1 /* a resumed attempt's restart marker must drop points */
#define FX_TB_GAPS 2  /* points may be missing (skipped while the disk was full) */
void fx_check_tensorboard(long long job, int flags, const char *expect);

#endif
