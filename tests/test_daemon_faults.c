/* Processes that fail: a worker killed or frozen mid-job, a training thread
 * that hangs, runawayd stopped (SIGTERM), killed outright and frozen. The
 * job goes on each time, from its checkpoint, with every epoch reported. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon_fixture.h"

/* ------------------------------------------------------------------------ */
/* Workers */

/* A long job's worker killed (SIGKILL) or frozen (SIGSTOP: silent past the
 * 3 s heartbeat timeout) after its first checkpoint: that attempt is lost,
 * the next resumes from the checkpoint, and every epoch is reported once. */
/* The first attempt's epochs past the checkpoint the job resumed from:
 * the next attempt's TensorBoard file starts with the restart marker that
 * drops their points. A worker that wrote its next checkpoint before the
 * blow has none: a tiny job's epochs are milliseconds, and 2 runs of 20
 * measured 0 here (each failed its "no point was dropped" before). */
static double epochs_past_the_resume(sqlite3 *db, long long job)
{
    return fx_db_num(db, "SELECT COUNT(*) FROM metrics WHERE job_id=?1 AND kind='epoch' AND "
                         "attempt_id=(SELECT MIN(id) FROM attempts WHERE job_id=?1) AND epoch > "
                         "(SELECT CAST(substr(text, instr(text, ' at epoch ') + 10) AS INTEGER) "
                         "FROM events WHERE job_id=?1 AND text LIKE 'resumed from %' ORDER BY id "
                         "LIMIT 1)", job);
}

static void lost_and_resumed(int sig)
{
    long long job = fx_submit_long(sig == SIGKILL ? "killed" : "frozen");
    /* past its first checkpoint (epoch 10) */
    fx_wait_epoch(job, 15, 30);
    long long pid = fx_worker_pid(job);
    cr_assert_eq(kill((pid_t)pid, sig), 0);
    fx_wait_job(job, "done", 60);
    sqlite3 *db = fx_open_db();
    /* >= 1: on a loaded machine a healthy worker may also miss the 3 s */
    cr_assert_geq(fx_db_num(db, "SELECT COUNT(*) FROM attempts WHERE job_id=? AND outcome='lost'", job),
                  1);
    cr_assert_eq(
        fx_db_num(db, "SELECT COUNT(*) FROM attempts WHERE job_id=? AND outcome='done'", job), 1);
    cr_assert_geq(fx_db_num(db, "SELECT lost FROM jobs WHERE id=?", job), 1);
    cr_assert_geq(fx_db_num(db, "SELECT COUNT(*) FROM events WHERE job_id=? AND text LIKE "
                                "'resumed from %checkpoint.safetensors at epoch%'", job),
                  1, "the second attempt did not resume from the checkpoint");
    /* every epoch is in the table, the last one 300 */
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(DISTINCT epoch) FROM metrics WHERE job_id=? AND "
                               "kind='epoch'", job), 300);
    double past = epochs_past_the_resume(db, job);
    sqlite3_close(db);
    /* TensorBoard shows each epoch once */
    fx_check_tensorboard(job, past > 0 ? FX_TB_PURGE : 0, "tb_check: 1 runs,");
    if (sig == SIGSTOP)
        kill((pid_t)pid, SIGKILL); /* the daemon killed it already; be sure */
}

Test(daemon, killed_worker_job_is_requeued_and_resumed, .init = fx_setup, .fini = fx_teardown,
     .timeout = 90)
{
    lost_and_resumed(SIGKILL);
}

Test(daemon, frozen_worker_misses_heartbeats_and_its_job_moves, .init = fx_setup,
     .fini = fx_teardown, .timeout = 90)
{
    lost_and_resumed(SIGSTOP);
}

/* The next attempt's first TensorBoard records fail (its folder is a file
 * until its epoch `mended`), then the writes work again. */
static void tensorboard_broken_until(int mended)
{
    long long job = fx_submit_long("tbgap");
    fx_wait_epoch(job, 15, 30); /* past its first checkpoint (epoch 10) */
    char tb[160], away[160];
    snprintf(tb, sizeof tb, "%s/tensorboard", fx.dir);
    snprintf(away, sizeof away, "%s/tensorboard.away", fx.dir);
    long long pid = fx_worker_pid(job);
    cr_assert_eq(rename(tb, away), 0);
    fx_write_file(tb, "not a folder: TensorBoard's writes fail\n");
    cr_assert_eq(kill((pid_t)pid, SIGKILL), 0);
    fx_wait_for("the second attempt's reports past the mending epoch",
                "SELECT MAX(epoch) FROM metrics WHERE job_id=?1 AND kind='epoch' AND "
                "attempt_id=(SELECT id FROM attempts WHERE job_id=?1 ORDER BY id LIMIT 1 "
                "OFFSET 1)", job, mended, 60);
    cr_assert_eq(unlink(tb), 0);
    cr_assert_eq(rename(away, tb), 0);
    fx_wait_job(job, "done", 90);
    sqlite3 *db = fx_open_db();
    double past = epochs_past_the_resume(db, job);
    sqlite3_close(db);
    fx_check_tensorboard(job, (past > 0 ? FX_TB_PURGE : 0) | FX_TB_GAPS, "tb_check: 1 runs,");
}

/* Its restart marker goes at its first report all the same. At the first
 * record written instead, the first attempt's points before it stayed
 * beside this one's rows in the database (tools/chaos, seed 2, after a
 * full disk: pairs_per_s differed). */
Test(daemon, a_resumed_attempt_restarts_tensorboard_at_its_first_report_written_or_not,
     .init = fx_setup, .fini = fx_teardown, .timeout = 120)
{
    tensorboard_broken_until(13);
}

/* Mended in the job's last epochs (of 300, tens of milliseconds each),
 * within the 5 s the writer waits between tries: the result is tried all
 * the same, so the attempt has its file (it had none, and the suite failed
 * where the job outran that wait). */
Test(daemon, a_tensorboard_folder_mended_in_a_jobs_last_seconds_gets_its_result,
     .init = fx_setup, .fini = fx_teardown, .timeout = 120)
{
    tensorboard_broken_until(280);
}

/* A job whose training thread hangs (RW_TEST_STALL: at its 4th step of its
 * first attempt, as a GPU call that never returns would) still sends
 * heartbeats from the worker's I/O thread; the watchdog takes the training
 * thread's silence for a hang, reports the attempt failed (retry: a hang need
 * not recur) and restarts the worker. The job is requeued and its second
 * attempt completes; the workers take the next jobs. */
static void setup_stall(void)
{
    fx_prepare();
    setenv("RW_TEST_STALL", "hang/a/seed0:4", 1);
    fx_start_daemon("--stall-timeout", "2", NULL);
}

Test(daemon, a_hung_attempt_is_failed_by_the_watchdog_and_the_job_retried, .init = setup_stall,
     .fini = fx_teardown, .timeout = 90)
{
    char path[128], out[8192];
    snprintf(path, sizeof path, "%s/hang.yaml", fx.dir);
    fx_write_grid(path, "hang", 2, 0, "  variant:\n    - {name: a}\n");
    double t0 = fx_now();
    int rc = fx_cli(out, sizeof out, 20, "submit", path, NULL);
    cr_assert_eq(rc, 0, "%s", out);
    rc = fx_cli(out, sizeof out, 60, "watch", "hang", NULL);
    double dt = fx_now() - t0;
    cr_assert_eq(rc, 0, "%s", out);
    sqlite3 *db = fx_open_db();
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(*) FROM attempts WHERE job_id=1 AND outcome='failed' "
                               "AND error LIKE 'no training progress for 2 s%'", 0), 1);
    cr_assert_eq(
        fx_db_num(db, "SELECT COUNT(*) FROM attempts WHERE job_id=1 AND outcome='done'", 0), 1);
    cr_assert_eq(fx_db_num(db, "SELECT lost FROM jobs WHERE id=1", 0), 1, "lost %g attempts %g",
                 fx_db_num(db, "SELECT lost FROM jobs WHERE id=1", 0),
                 fx_db_num(db, "SELECT COUNT(*) FROM attempts WHERE job_id=1", 0));
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(*) FROM events WHERE job_id=1 AND text LIKE "
                               "'no training progress%requeued (resumes from its checkpoint)'", 0),
                 1);
    double t_fail = fx_db_num(db, "SELECT ended FROM attempts WHERE job_id=1 AND outcome='failed'",
                              0) - fx_db_num(db, "SELECT started FROM attempts WHERE job_id=1 AND "
                                                 "outcome='failed'", 0);
    sqlite3_close(db);
    printf("daemon: hung attempt failed by the watchdog %.0f s after its start; the retry done "
           "%.1f s after submission\n", t_fail, dt);
    cr_expect(t_fail < 20, "the watchdog took %.0f s", t_fail);
    /* the restarted worker (and the other) take the next jobs */
    snprintf(path, sizeof path, "%s/after.yaml", fx.dir);
    fx_write_grid(path, "after", 1, 0, "  seed: [0, 1]\n");
    rc = fx_cli(out, sizeof out, 20, "submit", path, NULL);
    cr_assert_eq(rc, 0, "%s", out);
    rc = fx_cli(out, sizeof out, 60, "watch", "after", NULL);
    cr_assert_eq(rc, 0, "%s", out);
}

/* ------------------------------------------------------------------------ */
/* runawayd */

Test(daemon, sigterm_checkpoints_and_requeues, .init = fx_setup, .fini = fx_teardown, .timeout = 90)
{
    long long job = fx_submit_long("term");
    fx_wait_epoch(job, 5, 30);
    int st = fx_stop_daemon(20);
    cr_assert(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "runawayd status %d", st);
    cr_assert_neq(access(fx.sock, F_OK), 0, "socket left behind");
    sqlite3 *db = fx_open_db();
    cr_assert_eq(fx_db_num(db, "SELECT state='queued' FROM jobs WHERE id=?", job), 1);
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(*) FROM attempts WHERE job_id=? AND outcome='stopped'",
                           job), 1);
    sqlite3_close(db);
    char ck[160];
    snprintf(ck, sizeof ck, "%s/runs/%lld/checkpoint.safetensors", fx.dir, job);
    cr_assert_eq(access(ck, R_OK), 0, "no checkpoint at %s", ck);
    /* a new daemon resumes it */
    fx_restart_daemon();
    fx_wait_job(job, "done", 60);
    db = fx_open_db();
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(*) FROM events WHERE job_id=? AND text LIKE 'resumed from%'",
                           job), 1);
    sqlite3_close(db);
}

/* runawayd killed outright mid-job (its workers die with it) and started
 * again: the job resumes from its checkpoint. `runaway watch`, `logs -f` and
 * `plot --every` ride it out: they follow again when runawayd is back, until
 * the job ends; logs prints each line once. */
Test(daemon, killed_daemon_restarts_without_losing_the_job, .init = fx_setup, .fini = fx_teardown,
     .timeout = 90)
{
    long long job = fx_submit_long("crash");
    char png[128], wf[128], lf[128], pf[128];
    snprintf(png, sizeof png, "%s/crash.png", fx.dir);
    snprintf(wf, sizeof wf, "%s/watch.out", fx.dir);
    snprintf(lf, sizeof lf, "%s/logs.out", fx.dir);
    snprintf(pf, sizeof pf, "%s/plot.out", fx.dir);
    pid_t watcher = fx_cli_start(wf, (const char *[]){"watch", "crash", NULL});
    pid_t follower = fx_cli_start(lf, (const char *[]){"logs", "j1", "-f", NULL});
    pid_t plotter =
        fx_cli_start(pf, (const char *[]){"plot", "crash", "--every", "0.5", "-o", png, NULL});
    fx_wait_epoch(job, 15, 30);
    fx_kill_daemon();
    usleep(1500000); /* the watch tries at least once while there is none */
    fx_restart_daemon(); /* its workers died with the old daemon; the lock is free */
    fx_wait_job(job, "done", 60);
    char wout[1 << 16];
    int wrc = fx_cli_wait(watcher, wf, 20, wout, sizeof wout);
    cr_assert(wrc == 0 && strstr(wout, "* runawayd went away (") &&
                  strstr(wout, "* runawayd is back: watching grid g1: 1 job") &&
                  strstr(wout, "crash/byol/seed0: done"),
              "watch exited %d:\n%s", wrc, wout);
    static char lout[1 << 20];
    wrc = fx_cli_wait(follower, lf, 20, lout, sizeof lout);
    cr_assert(wrc == 0 && strstr(lout, "* runawayd went away (") &&
                  strstr(lout, "* runawayd is back\n") && strstr(lout, "state done"),
              "logs -f exited %d:\n%s", wrc, lout);
    /* every line of the job's log once: as many as the database holds */
    int printed = 0;
    for (char *l = lout; *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : l + strlen(l))
        printed += strncmp(l, "* runawayd ", 11) != 0 && *l != '\n';
    sqlite3 *db0 = fx_open_db();
    int stored = (int)fx_db_num(db0, "SELECT COUNT(*) FROM events WHERE job_id=?", job);
    sqlite3_close(db0);
    cr_assert_eq(printed, stored, "logs -f printed %d lines, the job has %d:\n%s", printed,
                 stored, lout);
    wrc = fx_cli_wait(plotter, pf, 20, lout, sizeof lout);
    cr_assert(wrc == 0 && strstr(lout, "* runawayd went away (") &&
                  strstr(lout, "crash.png drawn; every job has ended"),
              "plot --every exited %d:\n%s", wrc, lout);
    sqlite3 *db = fx_open_db();
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(*) FROM attempts WHERE job_id=? AND error='daemon "
                               "restarted'", job), 1);
    cr_assert_geq(fx_db_num(db, "SELECT COUNT(*) FROM events WHERE job_id=? AND text LIKE "
                                "'resumed from%'", job), 1);
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(DISTINCT epoch) FROM metrics WHERE job_id=? AND "
                               "kind='epoch'", job), 300);
    double past = epochs_past_the_resume(db, job);
    sqlite3_close(db);
    /* TensorBoard shows each epoch once */
    fx_check_tensorboard(job, past > 0 ? FX_TB_PURGE : 0, "tb_check: 1 runs,");
}

/* The daemon stopped for longer than the heartbeat timeout (3 s here), as
 * a long rm, a slow disk or a suspended machine would stop its loop: when
 * it runs again its timers fire before the frames that came meanwhile are
 * read. That silence was its own, not the workers': no job moves. */
Test(daemon, a_stalled_daemon_does_not_blame_its_workers, .init = fx_setup, .fini = fx_teardown,
     .timeout = 60)
{
    fx_submit_grid("long", 50000, 0, "  seed: [0, 1]\n");
    fx_wait_jobs("running", 2, 20);
    cr_assert_eq(kill(fx.daemon_pid, SIGSTOP), 0);
    usleep(5000000);
    cr_assert_eq(kill(fx.daemon_pid, SIGCONT), 0);
    usleep(2000000);
    sqlite3 *db = fx_open_db();
    cr_expect_eq(fx_db_num(db, "SELECT COUNT(*) FROM attempts", 0), 2, "a job moved");
    cr_expect_eq(fx_db_num(db, "SELECT COUNT(*) FROM events WHERE text LIKE '%no heartbeat%'", 0),
                 0);
    cr_expect_eq(fx_db_num(db, "SELECT COUNT(*) FROM jobs WHERE state='running'", 0), 2);
    sqlite3_close(db);
    char logp[128], text[65536];
    snprintf(logp, sizeof logp, "%s.log", fx.dir);
    FILE *f = fopen(logp, "r");
    cr_assert_not_null(f);
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    cr_expect(strstr(text, "the event loop did not run for"), "%s", text);
    fx_expect_still_serving();
}
