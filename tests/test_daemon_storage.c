/* runawayd's database and disk: a database from an older schema, a full
 * disk, and a database locked by another program -- while jobs train, at
 * shutdown, across a crash and at start. The writes it cannot make wait in
 * order and none is lost. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon_fixture.h"

/* A long job (fx_submit_long) that trained 2 epochs, its daemon then killed. */
static long long crashed_job(const char *name)
{
    long long job = fx_submit_long(name);
    fx_wait_epoch(job, 2, 30);
    fx_kill_daemon();
    return job;
}

/* `runaway ls` says `what` within secs. */
static int cli_says(const char *what, double secs)
{
    char out[8192];
    for (double t0 = fx_now(); fx_now() - t0 < secs; usleep(200000)) {
        fx_cli(out, sizeof out, 20, "ls", NULL);
        if (strstr(out, what))
            return 1;
    }
    return 0;
}

/* `file` holds `what` within secs. */
static int file_has(const char *file, const char *what, double secs)
{
    static char buf[1 << 20];
    for (double t0 = fx_now(); fx_now() - t0 < secs; usleep(200000)) {
        FILE *f = fopen(file, "r");
        if (!f)
            continue;
        buf[fread(buf, 1, sizeof buf - 1, f)] = 0;
        fclose(f);
        if (strstr(buf, what))
            return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* An older database */

/* A database written before metrics had an lr column and before the
 * high_water table (the schema as it was, with one finished job in it). */
static void setup_old_database(void)
{
    fx_prepare();
    char p[128];
    snprintf(p, sizeof p, "%s/runaway.db", fx.dir);
    sqlite3 *db;
    cr_assert_eq(sqlite3_open(p, &db), SQLITE_OK);
    char *msg = NULL;
    int rc = sqlite3_exec(
        db,
        "CREATE TABLE grids(id INTEGER PRIMARY KEY, name TEXT NOT NULL, priority INTEGER NOT "
        "NULL, origin TEXT NOT NULL, text TEXT NOT NULL, created REAL NOT NULL);"
        "CREATE TABLE jobs(id INTEGER PRIMARY KEY, grid_id INTEGER NOT NULL REFERENCES grids(id),"
        " name TEXT NOT NULL, variant TEXT NOT NULL, seed INTEGER NOT NULL, spec TEXT NOT NULL,"
        " devices INTEGER NOT NULL, priority INTEGER NOT NULL, state TEXT NOT NULL,"
        " attempts INTEGER NOT NULL DEFAULT 0, lost INTEGER NOT NULL DEFAULT 0,"
        " created REAL NOT NULL, started REAL, finished REAL, error TEXT,"
        " linear_acc REAL, align_last10 REAL, uniform_last10 REAL, result TEXT);"
        "CREATE TABLE attempts(id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL REFERENCES "
        "jobs(id), worker TEXT NOT NULL, started REAL NOT NULL, ended REAL,"
        " outcome TEXT NOT NULL, error TEXT);"
        "CREATE TABLE metrics(id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL,"
        " attempt_id INTEGER NOT NULL, kind TEXT NOT NULL, epoch INTEGER NOT NULL,"
        " step INTEGER NOT NULL, loss REAL, align REAL, uniform REAL, collapse REAL, knn REAL,"
        " pairs_per_s REAL, tau REAL, t REAL NOT NULL);"
        "CREATE TABLE events(id INTEGER PRIMARY KEY, t REAL NOT NULL, job_id INTEGER,"
        " kind TEXT NOT NULL, text TEXT NOT NULL);"
        "INSERT INTO grids VALUES(5, 'old', 0, 'old.yaml', 'name: old', 1);"
        "INSERT INTO jobs(id, grid_id, name, variant, seed, spec, devices, priority, state,"
        " attempts, created, finished, linear_acc) VALUES(7, 5, 'old/byol/seed0', 'byol', 0,"
        " 'name: byol', 1, 0, 'done', 1, 1, 2, 0.5);"
        "INSERT INTO attempts VALUES(9, 7, '0:cpu0', 1, 2, 'done', NULL);"
        "INSERT INTO metrics(job_id, attempt_id, kind, epoch, step, loss, t)"
        " VALUES(7, 9, 'epoch', 1, 6, 0.25, 1);",
        NULL, NULL, &msg);
    cr_assert_eq(rc, SQLITE_OK, "%s", msg ? msg : "?");
    sqlite3_close(db);
    fx_start_daemon(NULL);
}

/* The daemon upgrades it in place: metrics gain lr and rank (NULL in the old
 * rows), new ids follow the old ones, and the old job is still listed. */
Test(daemon, a_database_from_before_is_upgraded_in_place, .init = setup_old_database,
     .fini = fx_teardown, .timeout = 60)
{
    char path[128], out[4096];
    snprintf(path, sizeof path, "%s/new.yaml", fx.dir);
    fx_write_grid(path, "new", 2, 0, "  seed: [0]\n  variant:\n    - {name: s, log: {every_steps: 2}}\n");
    int rc = fx_cli(out, sizeof out, 20, "submit", path, NULL);
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert(strstr(out, "g6") && strstr(out, "j8"), "new ids after the old ones: %s", out);
    rc = fx_cli(out, sizeof out, 40, "watch", "g6", NULL);
    cr_assert_eq(rc, 0, "%s", out);
    sqlite3 *db = fx_open_db();
    cr_expect_eq(fx_db_num(db, "SELECT MIN(id) FROM attempts WHERE job_id=?", 8), 10);
    cr_expect_eq(fx_db_num(db, "SELECT COUNT(*) FROM metrics WHERE job_id=? AND lr IS NULL AND "
                               "rank IS NULL AND linear IS NULL AND w_cos_i IS NULL AND w_asym IS "
                               "NULL", 7), 1);
    cr_expect_eq(fx_db_num(db, "SELECT COUNT(*) FROM metrics WHERE job_id=? AND kind='epoch' AND "
                               "rank >= 1", 8), 2);
    /* tiny_base: Adam's constant 3e-4 */
    cr_expect_eq(fx_db_num(db, "SELECT COUNT(*) FROM metrics WHERE job_id=? AND kind='epoch' AND "
                               "abs(lr - 3e-4) < 1e-9", 8), 2);
    sqlite3_close(db);
    rc = fx_cli(out, sizeof out, 20, "ls", NULL);
    cr_assert_eq(rc, 0, "%s", out);
    cr_expect(strstr(out, "old/byol/seed0") && strstr(out, "new/"), "%s", out);
    fx_check_tensorboard(8, 0, "tb_check: 1 runs,");
    /* the step reports as CSV: 6 steps an epoch (100 images, batch 16), every 2nd */
    rc = fx_cli(out, sizeof out, 20, "metrics", "g6", "--steps", NULL);
    cr_assert_eq(rc, 0, "%s", out);
    const char *l = strchr(out, '\n');
    for (int k = 1; k <= 6; k++) {
        char want[64];
        snprintf(want, sizeof want, "\nj8,new/s/seed0,s,0,%d,%d,", (2 * k - 1) / 6 + 1, 2 * k);
        cr_assert(l && !strncmp(l, want, strlen(want)), "row %d: want '%s' in:\n%s", k, want + 1,
                  out);
        l = strchr(l + 1, '\n');
    }
    cr_assert(l && l[1] == 0, "6 rows: %s", out);
}

/* ------------------------------------------------------------------------ */
/* A full disk */

/* The state folder on a tmpfs of its own, so that the test can fill it (a
 * mount needs root: elsewhere the test says so and skips). */
static void setup_full_disk(void)
{
    fx_prepare();
    if (fx_mount_tmpfs("32m"))
        fx_start_daemon(NULL);
}

/* Fills the test's tmpfs; returns the filler's path (unlink it for room). */
static const char *fill_disk(void)
{
    static char fill[160];
    snprintf(fill, sizeof fill, "%s/fill", fx.dir);
    int fd = open(fill, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert_geq(fd, 0);
    static char chunk[1 << 16];
    while (write(fd, chunk, sizeof chunk) > 0)
        ;
    cr_assert_eq(errno, ENOSPC, "filling: %s", strerror(errno));
    close(fd);
    return fill;
}

/* runawayd restarted after a crash on a full disk cannot requeue the jobs
 * left running: it waits for room rather than exiting, and `runaway
 * daemon start` waits with it. */
Test(daemon, a_daemon_started_on_a_full_disk_waits_for_room, .init = setup_full_disk,
     .fini = fx_teardown, .timeout = 120)
{
    if (!fx.tmpfs)
        cr_skip_test("daemon: a full disk: no tmpfs could be mounted here (needs root); not "
                     "checked");
    long long job = crashed_job("room");
    const char *fill = fill_disk();
    char cf[160];
    snprintf(cf, sizeof cf, "%s-start.out", fx.dir); /* off the full disk */
    pid_t starter = fx_cli_start(cf, (const char *[]){"daemon", "start", "--cpu-slots", "1", NULL});
    int told = file_has(cf, "runaway: runawayd is still starting (its log ", 25);
    cr_assert_eq(unlink(fill), 0);
    char out[8192];
    int rc = fx_cli_wait(starter, cf, 30, out, sizeof out);
    unlink(cf);
    cr_assert(told, "daemon start did not say it waits: %s", out);
    cr_assert(rc == 0 && strstr(out, "runawayd started"), "daemon start exited %d: %s", rc, out);
    char logp[160];
    snprintf(logp, sizeof logp, "%s/runawayd.log", fx.dir);
    cr_assert(file_has(logp, "takes writes again after", 5), "%s", logp);
    fx_wait_for("resumed", "SELECT COUNT(*) FROM attempts WHERE job_id=? AND outcome='running'",
                job, 1, 30);
    rc = fx_cli(out, sizeof out, 60, "daemon", "stop", NULL);
    cr_assert(rc == 0 && strstr(out, "runawayd stopped"), "%s", out);
}

/* The disk under the state folder fills while two jobs train: the daemon
 * keeps the writes SQLite cannot make (metrics, events, states) and makes
 * them, in order, once there is room; meanwhile it says why (ls), starts
 * nothing and refuses what it could not record (submit). The workers skip
 * the checkpoints on the way they cannot write and train on; the job that
 * reaches its end waits for room to write its last one, then finishes.
 * Nothing reported in the outage is lost: every epoch has its row.
 * TensorBoard's files skip the records of the outage, none torn, and go on
 * after it. */
Test(daemon, a_full_disk_holds_the_writes_until_there_is_room, .init = setup_full_disk,
     .fini = fx_teardown, .timeout = 150)
{
    if (!fx.tmpfs)
        cr_skip_test("daemon: a full disk: no tmpfs could be mounted here (needs root); not "
                     "checked");
    char path[160], out[8192];
    snprintf(path, sizeof path, "%s/full.yaml", fx.dir);
    /* j1 trains on; j2 ends in the outage */
    fx_write_grid(path, "full", 100000, 5,
                  "  variant:\n    - {name: long}\n    - {name: short, optim: {epochs: 60}}\n");
    int rc = fx_cli(out, sizeof out, 20, "submit", path, NULL);
    cr_assert_eq(rc, 0, "%s", out);
    fx_wait_for("both train", "SELECT COUNT(DISTINCT job_id) FROM metrics WHERE kind='epoch' AND "
                              "epoch >= 6", 0, 2, 30);
    char logf[160];
    snprintf(logf, sizeof logf, "%s-j2.log", fx.dir);
    /* into a file off the test's tmpfs: what the daemon forwards while it
     * cannot write it down */
    pid_t follower =
        fx_cli_start(logf, (const char *[]){"logs", "j2", "--tail", "100000", "--follow", NULL});

    const char *fill = fill_disk();
    cr_assert(cli_says("cannot write its database", 30), "ls never said the database is full");
    rc = fx_cli(out, sizeof out, 20, "ls", NULL);
    cr_assert(strstr(out, "database or disk is full") && strstr(out, "no job starts"), "%s", out);
    rc = fx_cli(out, sizeof out, 20, "submit", path, NULL);
    cr_assert(rc == 1 && strstr(out, "cannot submit now: runawayd cannot write its database"),
              "%s", out);
    cr_assert(file_has(logf, "warning: the final checkpoint is not written (", 30),
              "j2 did not wait at its last checkpoint (log in %s)", logf);

    /* room again */
    cr_assert_eq(unlink(fill), 0);
    fx_wait_for("the backlog made",
                "SELECT COUNT(*) FROM events WHERE text LIKE 'the database takes "
                "writes again after %'",
                0, 1, 20);
    cr_assert(!cli_says("cannot write its database", 1), "ls still warns");
    fx_wait_for("j2 ends done", "SELECT COUNT(*) FROM jobs WHERE id=2 AND state='done' AND "
                                "linear_acc IS NOT NULL", 0, 1, 60);
    cr_assert(file_has(logf, "the final checkpoint is written, after ", 5), "log in %s", logf);
    int st;
    cr_assert_eq(waitpid(follower, &st, 0), follower); /* --follow ends with the job */
    unlink(logf);
    sqlite3 *db = fx_open_db();
    for (long long j = 1; j <= 2; j++) {
        /* one query: the job trains on between two */
        double top = fx_db_num(db, "SELECT MAX(epoch) FROM metrics WHERE kind='epoch' AND job_id=?",
                               j);
        double n = top - fx_db_num(db,
                                   "SELECT MAX(epoch) - COUNT(DISTINCT epoch) FROM metrics WHERE "
                                   "kind='epoch' AND job_id=?",
                                   j);
        cr_expect(n == top && top > 6 && (j == 1 || top == 60), "j%lld: %g epochs of 1..%g have "
                  "a row", j, n, top);
        cr_expect_gt(fx_db_num(db, "SELECT COUNT(*) FROM events WHERE job_id=? AND text LIKE "
                                   "'%warning: checkpoint at epoch % not written (%No space left%'",
                            j),
                     0, "j%lld: no checkpoint was skipped", j);
    }
    cr_expect_eq(fx_db_num(db, "SELECT COUNT(*) FROM jobs WHERE id=1 AND state='running'", 0), 1,
                 "j1 does not run on");
    sqlite3_close(db);
    /* TensorBoard's files: records skipped in the outage, none torn, and
     * those after it written */
    fx_wait_for("TensorBoard writes again", "SELECT COUNT(*) FROM events WHERE job_id=1 AND text "
                                            "LIKE 'tensorboard: % written again; % records %'",
             0, 1, 20);
    /* and it takes requests again: the grid stops with its checkpoints */
    rc = fx_cli(out, sizeof out, 20, "cancel", "full", NULL);
    cr_assert(rc == 0 && strstr(out, "cancelled 1 job"), "%s", out);
    fx_wait_jobs("cancelled", 1, 30);
    fx_check_tensorboard(0, FX_TB_GAPS, "tb_check: 2 runs, 2 files,");
    rc = fx_cli(out, sizeof out, 20, "submit", path, NULL);
    cr_assert_eq(rc, 0, "%s", out);
}

/* ------------------------------------------------------------------------ */
/* A locked database */

/* The database's write lock held by another program, as sqlite3 by hand
 * holds it with a transaction open. */
static sqlite3 *lock_db(void)
{
    char p[160];
    snprintf(p, sizeof p, "%s/runaway.db", fx.dir);
    sqlite3 *db;
    cr_assert_eq(sqlite3_open_v2(p, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000); /* the daemon may be mid-write */
    cr_assert_eq(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    return db;
}

static void unlock_db(sqlite3 *db)
{
    cr_assert_eq(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

/* Epochs 1..MAX(epoch) of a job that lack a row. */
static double epochs_missing(long long job)
{
    sqlite3 *db = fx_open_db();
    double top =
        fx_db_num(db, "SELECT MAX(epoch) FROM metrics WHERE kind='epoch' AND job_id=?", job);
    double have = fx_db_num(db, "SELECT COUNT(DISTINCT epoch) FROM metrics WHERE kind='epoch' AND "
                                "epoch >= 1 AND job_id=?", job);
    sqlite3_close(db);
    return top - have;
}

/* Another program (sqlite3 by hand) holds the database's write lock while
 * two jobs train: the daemon's write waits the busy timeout, then it keeps
 * its writes as for a full disk and serves on (reads go on: WAL); once the
 * lock goes, they are made and no epoch lacks its row. Runs anywhere (no
 * mount), so the backlog is checked where the full-disk test skips. */
Test(daemon, a_database_locked_by_another_program_holds_the_writes, .init = fx_setup,
     .fini = fx_teardown, .timeout = 120)
{
    char out[8192];
    /* a linear predictor from I: its statistics against I travel too */
    fx_submit_grid("locked", 100000, 0,
                   "  seed: [0, 1]\n  variant:\n    - {name: lpi, model: {predictor: linear_identity}}\n");
    fx_wait_for("both train", "SELECT COUNT(DISTINCT job_id) FROM metrics WHERE kind='epoch' AND "
                              "epoch >= 3", 0, 2, 30);
    char p[160];
    char wf[160];
    snprintf(wf, sizeof wf, "%s-watch.log", fx.dir);
    pid_t watcher = fx_cli_start(wf, (const char *[]){"watch", "locked", NULL});
    cr_assert(file_has(wf, "watching grid locked: 2 jobs", 10), "no watch");
    sqlite3 *db = lock_db();
    int said = cli_says("cannot write its database", 30);
    snprintf(p, sizeof p, "%s/locked.yaml", fx.dir); /* as fx_submit_grid wrote it */
    int rc = fx_cli(out, sizeof out, 20, "submit", p, NULL);
    char sub[sizeof out];
    memcpy(sub, out, sizeof out);
    rc = fx_cli(out, sizeof out, 20, "ls", NULL);
    unlock_db(db);
    cr_assert(said, "ls never said the database takes no writes");
    cr_assert(strstr(out, "(database is locked)") && strstr(out, "locked/lpi/seed1"), "%s", out);
    cr_assert(strstr(sub, "cannot submit now: runawayd cannot write its database"), "%s", sub);
    fx_wait_for("the backlog made",
                "SELECT COUNT(*) FROM events WHERE text LIKE 'the database takes "
                "writes again after %'",
                0, 1, 20);
    /* the watcher heard of both, as they happened */
    cr_assert(file_has(wf, "* runawayd cannot write its database ", 5) &&
              file_has(wf, "* the database takes writes again after ", 5), "watch in %s", wf);
    db = fx_open_db();
    for (long long j = 1; j <= 2; j++) {
        /* one query: the job trains on between two */
        double top = fx_db_num(db, "SELECT MAX(epoch) FROM metrics WHERE kind='epoch' AND job_id=?",
                               j);
        double n = top - fx_db_num(db,
                                   "SELECT MAX(epoch) - COUNT(DISTINCT epoch) FROM metrics WHERE "
                                   "kind='epoch' AND job_id=?",
                                   j);
        cr_expect(n == top && top > 3, "j%lld: %g epochs of 1..%g have a row", j, n, top);
        cr_expect_eq(fx_db_num(db, "SELECT COUNT(*) FROM attempts WHERE job_id=?", j), 1,
                     "j%lld was restarted: the stalled loop blamed its worker", j);
        /* W starts at I and moves little in an epoch: near 1 and near 0;
         * every epoch has them, no step report does */
        double c1 = fx_db_num(db, "SELECT w_cos_i FROM metrics WHERE kind='epoch' AND epoch=1 AND "
                                  "job_id=?", j);
        double a1 = fx_db_num(db, "SELECT w_asym FROM metrics WHERE kind='epoch' AND epoch=1 AND "
                                  "job_id=?", j);
        cr_expect(c1 > 0.9 && c1 <= 1 && a1 >= 0 && a1 < 0.1, "j%lld: cos(W,I) %g, asym %g", j,
                  c1, a1);
        cr_expect_eq(fx_db_num(db,
                               "SELECT COUNT(*) FROM metrics WHERE job_id=? AND kind='epoch' AND "
                               "w_cos_i IS NULL",
                               j),
                     0);
        cr_expect_eq(fx_db_num(db,
                               "SELECT COUNT(*) FROM metrics WHERE job_id=? AND kind='step' AND "
                               "w_cos_i IS NOT NULL",
                               j),
                     0);
    }
    sqlite3_close(db);
    rc = fx_cli(out, sizeof out, 20, "logs", "j1", "--tail", "5", NULL);
    cr_assert(rc == 0 && strstr(out, "  cos(W,I) "), "%s", out);
    rc = fx_cli(out, sizeof out, 20, "cancel", "locked", NULL);
    cr_assert(rc == 0 && strstr(out, "cancelled 2 jobs"), "%s", out);
    fx_wait_jobs("cancelled", 2, 30);
    int st;
    cr_assert_eq(waitpid(watcher, &st, 0), watcher); /* the watch ends with the grid */
    unlink(wf);
    fx_check_tensorboard(0, 0, "tb_check: 2 runs, 2 files,");
}

/* runawayd stopped (SIGTERM) while another program holds the database's
 * lock: it keeps trying its writes until --shutdown-timeout, so a lock
 * let go in that time loses nothing; the epochs reported before the
 * checkpoint its job resumes from keep their rows. */
Test(daemon, a_daemon_stopped_while_the_database_is_locked_makes_its_writes_first,
     .init = fx_setup, .fini = fx_teardown, .timeout = 90)
{
    /* far more epochs than fx_submit_long's 300: those (milliseconds each
     * here) were all done before the signal in 2 runs of 3 under load, and
     * a done job is not requeued */
    fx_submit_grid("stoplock", 100000, 10, "  seed: [0]\n");
    long long job = 1;
    fx_wait_epoch(job, 3, 30);
    sqlite3 *db = lock_db();
    int said = cli_says("cannot write its database", 30);
    sleep(2); /* epochs pile up in the backlog */
    kill(fx.daemon_pid, SIGTERM);
    char logp[160];
    snprintf(logp, sizeof logp, "%s.log", fx.dir);
    int waited = file_has(logp, "writes wait for", 10);
    sleep(2);
    unlock_db(db);
    int st;
    cr_assert_eq(waitpid(fx.daemon_pid, &st, 0), fx.daemon_pid);
    fx.daemon_pid = -1;
    cr_assert(said, "ls never said the database takes no writes");
    cr_assert(waited, "runawayd did not wait for its database (%s)", logp);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "runawayd ended with %d", st);
    cr_assert(!file_has(logp, "never took", 0.1), "writes were lost (%s)", logp);
    cr_assert_eq(epochs_missing(job), 0, "epochs lack their rows");
    sqlite3 *d2 = fx_open_db();
    cr_assert_eq(fx_db_num(d2, "SELECT COUNT(*) FROM jobs WHERE state='queued' AND id=?", job), 1,
                 "the stopped job is not back in the queue");
    sqlite3_close(d2);
}

/* runawayd killed while another program holds the database's lock: the
 * rows in its backlog are gone with it, and the job resumes from a
 * checkpoint past them. The resumed attempt makes those reports again
 * from the checkpoint (assign's epochs_stored and steps_stored), so every
 * epoch and every step report has its row, as TensorBoard (written as
 * they came) has its point. */
Test(daemon, reports_a_killed_daemon_never_stored_come_back_from_the_checkpoint, .init = fx_setup,
     .fini = fx_teardown, .timeout = 90)
{
    fx_submit_grid("gap", 300, 1,
                   "  seed: [0]\n  variant:\n    - {name: s, log: {every_steps: 4}}\n");
    long long job = 1;
    fx_wait_epoch(job, 3, 30);
    sqlite3 *db = lock_db();
    int said = cli_says("cannot write its database", 30);
    sleep(2); /* epochs (and their checkpoints) go on; their rows wait */
    fx_kill_daemon();
    unlock_db(db);
    cr_assert(said, "ls never said the database takes no writes");
    sqlite3 *d2 = fx_open_db();
    double top =
        fx_db_num(d2, "SELECT MAX(epoch) FROM metrics WHERE job_id=? AND kind='epoch'", job);
    sqlite3_close(d2);
    fx_restart_daemon();
    /* the log line follows the reports made again; then training goes on */
    fx_wait_for("reports made again", "SELECT COUNT(*) FROM events WHERE job_id=? AND text LIKE "
                                      "'% reports made again from the checkpoint%'", job, 1, 40);
    d2 = fx_open_db();
    double resumed = fx_db_num(d2, "SELECT MAX(epoch) FROM metrics WHERE job_id=? AND kind='epoch'",
                               job);
    sqlite3_close(d2);
    cr_assert(resumed > top, "nothing was made again: the database had epochs 1..%g, the "
              "checkpoint %g", top, resumed);
    cr_assert_eq(epochs_missing(job), 0, "epochs lack their rows");
    fx_wait_for("trains on", "SELECT MAX(epoch) FROM metrics WHERE job_id=? AND kind='epoch'", job,
                resumed + 5, 40);
    cr_assert_eq(epochs_missing(job), 0, "epochs lack their rows after the resume");
    d2 = fx_open_db();
    /* 100 images in batches of 16: 6 steps an epoch; a step report every 4 */
    cr_assert_eq(fx_db_num(d2, "SELECT COUNT(*) FROM metrics WHERE job_id=? AND kind='epoch' AND "
                               "(step != 6 * epoch OR loss IS NULL)", job), 0);
    double top_step = fx_db_num(d2, "SELECT MAX(step) FROM metrics WHERE job_id=? AND kind='step'",
                                job);
    cr_assert_eq(fx_db_num(d2, "SELECT COUNT(DISTINCT step) FROM metrics WHERE job_id=? AND "
                               "kind='step' AND step % 4 = 0 AND loss IS NOT NULL", job),
                 top_step / 4, "step reports lack their rows");
    sqlite3_close(d2);
    /* TensorBoard had them the first time; the new file's restart marker
     * at the first made again drops those, and they come again */
    char out[4096];
    int rc = fx_cli(out, sizeof out, 20, "cancel", "gap", NULL);
    cr_assert_eq(rc, 0, "%s", out);
    fx_wait_for("cancelled", "SELECT COUNT(*) FROM jobs WHERE state='cancelled' AND id=?", job, 1,
                30);
    fx_check_tensorboard(0, 0, "tb_check: 1 runs, 2 files,");
}

/* runawayd started (a restart after a crash) while another program holds
 * the database's lock: it waits for the lock rather than failing, and
 * `runaway daemon start` waits with it, saying why. */
Test(daemon, a_daemon_started_while_the_database_is_locked_waits_for_it, .init = fx_setup,
     .fini = fx_teardown, .timeout = 120)
{
    long long job = crashed_job("startlock");
    sqlite3 *db = lock_db();
    char cf[160], logp[160];
    snprintf(cf, sizeof cf, "%s-start.out", fx.dir);
    snprintf(logp, sizeof logp, "%s/runawayd.log", fx.dir);
    pid_t starter = fx_cli_start(cf, (const char *[]){"daemon", "start", "--cpu-slots", "1", NULL});
    int waiting = file_has(logp, "database is locked: waiting for it to take writes", 15);
    /* past the 15 s in which `daemon start` expects a daemon up */
    int told = file_has(cf, "runaway: runawayd is still starting (its log ", 25);
    unlock_db(db);
    char out[8192];
    int rc = fx_cli_wait(starter, cf, 30, out, sizeof out);
    unlink(cf);
    cr_assert(waiting, "runawayd did not say it waits (%s)", logp);
    cr_assert(told, "daemon start did not say why it waits: %s", out);
    cr_assert(rc == 0 && strstr(out, "runawayd started"), "daemon start exited %d: %s", rc, out);
    cr_assert(file_has(logp, "takes writes again after", 1), "%s", logp);
    /* the crash's attempt is recorded lost, and the job resumes */
    fx_wait_for("resumed", "SELECT COUNT(*) FROM attempts WHERE job_id=? AND outcome='running'",
                job, 1, 30);
    sqlite3 *d2 = fx_open_db();
    cr_assert_eq(fx_db_num(d2,
                           "SELECT COUNT(*) FROM attempts WHERE job_id=? AND outcome='lost' AND "
                           "error='daemon restarted'",
                           job),
                 1);
    sqlite3_close(d2);
    rc = fx_cli(out, sizeof out, 60, "daemon", "stop", NULL);
    cr_assert(rc == 0 && strstr(out, "runawayd stopped"), "%s", out);
}

/* Both jobs of a grid end while another program locks the database: their
 * ends are recorded, and announced, one after the other when it takes
 * writes again, each finding the grid ended; it is notified once. */
Test(daemon, notify_tells_a_grid_end_once_after_a_database_outage, .init = fx_setup_notify,
     .fini = fx_teardown, .timeout = 90)
{
    fx_submit_grid("outage", 150, 0, "  seed: [0, 1]\n");
    fx_wait_for("both train", "SELECT COUNT(DISTINCT job_id) FROM metrics WHERE kind='epoch' AND "
                              "epoch >= 1", 0, 2, 30);
    char p[160], w1[160], w2[160], count[160];
    sqlite3 *db = lock_db();
    /* past SQLite's busy wait: the writes wait in the backlog */
    int said = cli_says("cannot write its database", 30);
    /* each writes its weights at the end of training, then evaluates and
     * reports done */
    snprintf(w1, sizeof w1, "%s/runs/1/weights.safetensors", fx.dir);
    snprintf(w2, sizeof w2, "%s/runs/2/weights.safetensors", fx.dir);
    double t0 = fx_now();
    while ((access(w1, R_OK) || access(w2, R_OK)) && fx_now() - t0 < 40)
        usleep(100000);
    int ended = !access(w1, R_OK) && !access(w2, R_OK);
    sleep(2);
    snprintf(count, sizeof count, "%s/n-count", fx.dir);
    int early = fx_lines_of(count);
    unlock_db(db);
    cr_assert(said, "ls never said the database takes no writes");
    cr_assert(ended, "the jobs did not end while the database was locked");
    cr_assert_eq(early, 1, "notified of the ends before the database took them (or not of "
                 "the outage)");
    fx_wait_jobs("done", 2, 30);
    snprintf(p, sizeof p, "%s/n-grid_end-g1.txt", fx.dir);
    for (t0 = fx_now(); access(p, R_OK) != 0 && fx_now() - t0 < 10;)
        usleep(100000);
    usleep(500000);
    /* the database's outage and its end, and the grid's end once */
    cr_assert_eq(fx_lines_of(count), 3, "the grid's end, once");
    char txt[4096];
    snprintf(p, sizeof p, "%s/n-db_down-.txt", fx.dir);
    FILE *f = fopen(p, "r");
    cr_assert_not_null(f, "no db_down notified");
    txt[fread(txt, 1, sizeof txt - 1, f)] = 0;
    fclose(f);
    cr_assert(strstr(txt, "RUNAWAY_EVENT=db_down\n") &&
                  strstr(txt, "RUNAWAY_TEXT=runawayd cannot write its database") &&
                  strstr(txt, "(database is locked)"), "%s", txt);
    snprintf(p, sizeof p, "%s/n-db_up-.txt", fx.dir);
    f = fopen(p, "r");
    cr_assert_not_null(f, "no db_up notified");
    txt[fread(txt, 1, sizeof txt - 1, f)] = 0;
    fclose(f);
    cr_assert(strstr(txt, "RUNAWAY_TEXT=the database takes writes again after "), "%s", txt);
}
