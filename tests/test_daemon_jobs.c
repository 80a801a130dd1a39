/* Jobs through runawayd's queue: watch and logs as they run, --notify,
 * devices and slots, cancel and requeue, priorities, jobs that fail, and rm
 * of ended jobs with their files. */
#include <criterion/criterion.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon_fixture.h"

/* ------------------------------------------------------------------------ */
/* Following jobs */

/* watch of several targets: each one's events as they come, until every
 * one has ended; the exit status says whether all of their jobs ended
 * done. */
Test(daemon, watch_follows_several_targets_until_all_end, .init = fx_setup, .fini = fx_teardown,
     .timeout = 90)
{
    fx_submit_grid("wa", 2, 0, "  seed: [0]\n");
    fx_submit_grid("wb", 30, 0, "  seed: [0]\n  variant:\n    - {name: ok}\n"
                                "    - {name: big, optim: {batch_size: 200}}\n");
    char out[65536];
    int rc = fx_cli(out, sizeof out, 80, "watch", "wa", "g2", "j2", NULL);
    cr_assert_eq(rc, 1, "a job failed: %s", out);
    cr_assert(strstr(out, "watching grid wa: 1 job\n") &&
                  strstr(out, "watching grid g2: 2 jobs\n") &&
                  strstr(out, "watching job j2: 1 job\n"), "%s", out);
    /* j2 is g2's too: its events once */
    char *last = strstr(out, "\nj2    epoch  30/30 ");
    cr_assert(last && !strstr(last + 1, "\nj2    epoch  30/30 "), "%s", out);
    /* g2's events came (its 30 epochs outlast the start of the watch), to
     * its end, and so did the failure */
    cr_assert(strstr(out, "\nj2    epoch  30/30 ") && strstr(out, "j2    wb/ok/seed0: done") &&
                  strstr(out, "wb/big/seed0: failed: optim.batch_size 200 exceeds the 100 "
                              "training images"), "%s", out);
    /* nothing of g2 before its header, which came before any event */
    char *h = strstr(out, "watching grid g2"), *e = strstr(out, "epoch");
    cr_assert(h && (!e || h < e), "%s", out);
    /* all of them done: 0 */
    rc = fx_cli(out, sizeof out, 20, "watch", "wa", "j2", NULL);
    cr_assert(rc == 0 && strstr(out, "watching grid wa: 1 job\n  j1 ") &&
                  strstr(out, "watching job j2: 1 job\n  j2 "), "%s", out);
    rc = fx_cli(out, sizeof out, 20, "watch", "wa", "g9", NULL);
    cr_assert(rc != 0 && strstr(out, "g9"), "%s", out);
}

/* logs --follow prints the tail, then every new line as it comes, and
 * ends with the job: the same lines, in the same order, as the whole log
 * read afterwards. */
Test(daemon, logs_follow_streams_until_the_job_ends, .init = fx_setup, .fini = fx_teardown,
     .timeout = 90)
{
    char path[128], out[65536], whole[65536];
    snprintf(path, sizeof path, "%s/follow.yaml", fx.dir);
    fx_write_grid(path, "follow", 30, 10, "  seed: [0]\n");
    int rc = fx_cli(out, sizeof out, 20, "submit", path, NULL);
    cr_assert_eq(rc, 0, "%s", out);
    fx_wait_for("running", "SELECT COUNT(*) FROM jobs WHERE id=? AND state='running'", 1, 1, 20);
    rc = fx_cli(out, sizeof out, 80, "logs", "j1", "--tail", "100000", "-f", NULL);
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert(strstr(out, "epoch  30/30") && strstr(out, "* state done"), "%s", out);
    rc = fx_cli(whole, sizeof whole, 20, "logs", "j1", "--tail", "100000", NULL);
    cr_assert_eq(rc, 0, "%s", whole);
    cr_assert_str_eq(out, whole);
    /* a job that has ended: the tail, at once */
    rc = fx_cli(out, sizeof out, 20, "logs", "j1", "--tail", "100000", "--follow", NULL);
    cr_assert(rc == 0 && !strcmp(out, whole), "%s", out);
}

/* runawayd --notify CMD runs CMD once when a job fails for good and once
 * when its grid ends, what happened in RUNAWAY_* variables; a requeued
 * grid that ends again is news again. */
Test(daemon, notify_runs_a_command_when_a_grid_ends_and_a_job_fails, .init = fx_setup_notify,
     .fini = fx_teardown, .timeout = 90)
{
    /* bad: a batch larger than the training set, which only the worker
     * finds (after loading the data) */
    fx_submit_grid("note", 2, 0, "  seed: [0]\n  variant:\n    - {name: good}\n"
                                 "    - {name: bad, optim: {batch_size: 200}}\n");
    char p[200], txt[4096], count[160];
    snprintf(p, sizeof p, "%s/n-grid_end-g1.txt", fx.dir);
    snprintf(count, sizeof count, "%s/n-count", fx.dir);
    for (double t0 = fx_now(); access(p, R_OK) != 0 && fx_now() - t0 < 60;)
        usleep(100000);
    FILE *f = fopen(p, "r");
    cr_assert_not_null(f, "no grid_end notified (log %s.log)", fx.dir);
    txt[fread(txt, 1, sizeof txt - 1, f)] = 0;
    fclose(f);
    cr_assert(strstr(txt, "RUNAWAY_EVENT=grid_end\n") && strstr(txt, "RUNAWAY_GRID=g1\n") &&
                  strstr(txt, "RUNAWAY_GRID_NAME=note\n") && strstr(txt, "RUNAWAY_DONE=1\n") &&
                  strstr(txt, "RUNAWAY_FAILED=1\n") && strstr(txt, "RUNAWAY_CANCELLED=0\n") &&
                  !strstr(txt, "RUNAWAY_JOB="),
              "%s", txt);
    /* the two commands run side by side: the other may end later */
    snprintf(p, sizeof p, "%s/n-job_failed-g1j2.txt", fx.dir);
    for (double t0 = fx_now();
         (access(p, R_OK) != 0 || fx_lines_of(count) < 2) && fx_now() - t0 < 10;)
        usleep(50000);
    f = fopen(p, "r");
    cr_assert_not_null(f, "no job_failed notified");
    txt[fread(txt, 1, sizeof txt - 1, f)] = 0;
    fclose(f);
    cr_assert(strstr(txt, "RUNAWAY_EVENT=job_failed\n") && strstr(txt, "RUNAWAY_JOB=j2\n") &&
                  strstr(txt, "RUNAWAY_JOB_NAME=note/bad/seed0\n") &&
                  strstr(txt, "exceeds the 100 training images") &&
                  strstr(txt, "RUNAWAY_ERROR="),
              "%s", txt);
    usleep(500000);
    cr_assert_eq(fx_lines_of(count), 2, "each event once");

    /* ls --state failed: only that job, with why */
    char ls[4096];
    int lrc = fx_cli(ls, sizeof ls, 20, "ls", "note", "--state", "failed", NULL);
    cr_assert(lrc == 0 && strstr(ls, "j2     failed") && !strstr(ls, "j1 ") &&
                  strstr(ls, "\n       optim.batch_size 200 exceeds the 100 training images"),
              "%s", ls);
    lrc = fx_cli(ls, sizeof ls, 20, "ls", "--state", "done", NULL);
    cr_assert(lrc == 0 && strstr(ls, "j1     done") && !strstr(ls, "j2 "), "%s", ls);
    lrc = fx_cli(ls, sizeof ls, 20, "ls", "--state", "lost", NULL);
    cr_assert(lrc != 0 && strstr(ls, "ls: state is queued, running, done, failed, cancelled or "
                                     "collapsed, not 'lost'"), "%s", ls);

    /* requeued, it fails again: both events again */
    char out[4096];
    int rc = fx_cli(out, sizeof out, 20, "requeue", "note", NULL);
    cr_assert_eq(rc, 0, "%s", out);
    for (double t0 = fx_now(); fx_lines_of(count) < 4 && fx_now() - t0 < 30;)
        usleep(100000);
    usleep(500000);
    cr_assert_eq(fx_lines_of(count), 4, "the second end, once");
    rc = fx_cli(out, sizeof out, 20, "daemon", "status", NULL);
    cr_assert(rc == 0 && strstr(out, "at a grid's end or a job's failure it runs: env | grep"),
              "%s", out);
}

/* ------------------------------------------------------------------------ */
/* Devices and slots */

Test(daemon, job_asking_two_devices_gets_both_and_three_is_refused, .init = fx_setup,
     .fini = fx_teardown, .timeout = 60)
{
    char path[128], out[4096];
    snprintf(path, sizeof path, "%s/two.yaml", fx.dir);
    fx_write_grid(path, "two", 2, 0, "  variant:\n    - {name: a, devices: 2}\n");
    int rc = fx_cli(out, sizeof out, 20, "submit", path, NULL);
    cr_assert_eq(rc, 0, "%s", out);
    rc = fx_cli(out, sizeof out, 40, "watch", "two", NULL);
    cr_assert_eq(rc, 0, "%s", out);
    sqlite3 *db = fx_open_db();
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(*) FROM events WHERE job_id=1 AND text LIKE "
                               "'%world size 2%'", 0), 1, "rank 0 did not see world size 2");
    sqlite3_close(db);
    fx_write_grid(path, "three", 2, 0, "  variant:\n    - {name: a, devices: 3}\n");
    rc = fx_cli(out, sizeof out, 20, "submit", path, NULL);
    cr_assert(rc == 1 && strstr(out, "asks for 3 devices; this daemon has 2"), "%s", out);
}

static void setup_gpu_slots(void)
{
    /* no GPU needed: a worker given a GPU it cannot open falls back to the
     * CPU; what is checked is how slots map to devices */
    fx_prepare();
    fx_start_daemon("--gpus", "1", "--slots-per-gpu", "2", NULL);
}

Test(daemon, slots_per_gpu_share_one_device, .init = setup_gpu_slots, .fini = fx_teardown,
     .timeout = 30)
{
    json_t *r = fx_ask_simple("status", NULL, NULL);
    cr_assert_eq(json_integer_value(json_object_get(r, "workers")), 2);
    cr_assert_eq(json_integer_value(json_object_get(r, "devices")), 1);
    json_decref(r);
    r = fx_ask_simple("workers", NULL, NULL);
    json_t *ws = json_object_get(r, "workers");
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(ws, 0), "device")), "cuda:0");
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(ws, 1), "device")), "cuda:0");
    json_decref(r);
    char path[128], out[4096];
    snprintf(path, sizeof path, "%s/two.yaml", fx.dir);
    fx_write_grid(path, "two", 2, 0, "  variant:\n    - {name: a, devices: 2}\n");
    int rc = fx_cli(out, sizeof out, 20, "submit", path, NULL);
    cr_assert(rc == 1 && strstr(out, "asks for 2 devices; this daemon has 1"), "%s", out);
}

/* ------------------------------------------------------------------------ */
/* Cancel and requeue */

Test(daemon, cancel_stops_a_running_job_and_the_queue_moves_on, .init = fx_setup,
     .fini = fx_teardown, .timeout = 60)
{
    long long job = fx_submit_long("cancelme");
    fx_wait_epoch(job, 3, 30);
    char out[4096], id[32];
    snprintf(id, sizeof id, "j%lld", job);
    int rc = fx_cli(out, sizeof out, 20, "cancel", id, NULL);
    cr_assert(rc == 0 && strstr(out, "cancelled 1 job"), "%s", out);
    rc = fx_cli(out, sizeof out, 20, "watch", id, NULL);
    cr_assert_eq(rc, 1, "watch of a cancelled job should say it did not finish: %s", out);
    sqlite3 *db = fx_open_db();
    cr_assert_eq(fx_db_num(db, "SELECT state='cancelled' FROM jobs WHERE id=?", job), 1);
    cr_assert_eq(
        fx_db_num(db, "SELECT COUNT(*) FROM attempts WHERE job_id=? AND outcome='cancelled'", job),
        1);
    sqlite3_close(db);
    /* the workers take new work */
    char path[128];
    snprintf(path, sizeof path, "%s/after.yaml", fx.dir);
    fx_write_grid(path, "after", 2, 0, "  seed: [0, 1, 2]\n");
    rc = fx_cli(out, sizeof out, 20, "submit", path, NULL);
    cr_assert_eq(rc, 0, "%s", out);
    rc = fx_cli(out, sizeof out, 40, "watch", "after", NULL);
    cr_assert_eq(rc, 0, "%s", out);
    rc = fx_cli(out, sizeof out, 20, "cancel", "g1", NULL);
    cr_assert(rc == 0 && strstr(out, "cancelled 0 jobs"), "%s", out);
}

/* Cancel, then requeue at once: the job waits until the cancelled attempt
 * has written its checkpoint and stopped (the other slot is idle all the
 * while), resumes from that checkpoint, not the older periodic one, and
 * finishes with every epoch reported. */
Test(daemon, a_cancelled_job_requeued_resumes_where_it_stopped, .init = fx_setup,
     .fini = fx_teardown, .timeout = 90)
{
    long long job = fx_submit_long("pause");
    fx_wait_epoch(job, 14, 30);
    char out[4096], id[32];
    snprintf(id, sizeof id, "j%lld", job);
    int rc = fx_cli(out, sizeof out, 20, "cancel", id, NULL);
    cr_assert(rc == 0 && strstr(out, "cancelled 1 job"), "%s", out);
    rc = fx_cli(out, sizeof out, 20, "requeue", id, NULL);
    cr_assert(rc == 0 && strstr(out, "requeued 1 job (each resumes from its checkpoint)"), "%s",
              out);
    rc = fx_cli(out, sizeof out, 60, "watch", id, NULL);
    cr_assert_eq(rc, 0, "%s", out);

    sqlite3 *db = fx_open_db();
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(*) FROM attempts WHERE job_id=?", job), 2);
    cr_assert_eq(
        fx_db_num(db, "SELECT COUNT(*) FROM attempts WHERE job_id=? AND outcome='cancelled'", job),
        1);
    double first = fx_db_num(db,
                             "SELECT MAX(epoch) FROM metrics WHERE job_id=?1 AND kind='epoch' AND "
                             "attempt_id=(SELECT MIN(id) FROM attempts WHERE job_id=?1)",
                             job);
    sqlite3_stmt *st;
    sqlite3_prepare_v2(db, "SELECT text FROM events WHERE job_id=? AND text LIKE 'resumed from %'",
                       -1, &st, NULL);
    sqlite3_bind_int64(st, 1, job);
    cr_assert_eq(sqlite3_step(st), SQLITE_ROW, "the requeued attempt did not resume");
    const char *at = strstr((const char *)sqlite3_column_text(st, 0), " at epoch ");
    cr_assert_not_null(at);
    int e = atoi(at + 10);
    sqlite3_finalize(st);
    /* periodic checkpoints come every 10 epochs: >= the first attempt's last
     * epoch (>= 14) means the checkpoint written as it stopped */
    cr_assert_geq(e, first, "resumed at epoch %d, but the cancelled attempt reached %g", e, first);
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(DISTINCT epoch) FROM metrics WHERE job_id=? AND "
                               "kind='epoch'", job), 300);
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(*) FROM events WHERE job_id=? AND text LIKE "
                               "'requeued by user%'", job), 1);
    sqlite3_close(db);
    fx_check_tensorboard(job, 0, "tb_check: 1 runs, 2 files,");

    /* a done job is not requeued, and says why; a grid with nothing to do */
    rc = fx_cli(out, sizeof out, 20, "requeue", id, NULL);
    cr_assert(rc != 0 && strstr(out, "is done: only a failed or cancelled job is requeued"), "%s",
              out);
    rc = fx_cli(out, sizeof out, 20, "requeue", "pause", NULL);
    cr_assert(rc == 0 && strstr(out, "requeued 0 jobs: none had failed"), "%s", out);
    rc = fx_cli(out, sizeof out, 20, "requeue", "g7", NULL);
    cr_assert(rc != 0 && strstr(out, "g7"), "%s", out);
}

/* ------------------------------------------------------------------------ */
/* Priorities */

Test(daemon, higher_priority_overtakes_the_queue, .init = fx_setup, .fini = fx_teardown,
     .timeout = 90)
{
    char path[128], out[4096];
    fx_submit_grid("low", 300, 100, "  seed: [0, 1, 2, 3]\n");
    snprintf(path, sizeof path, "%s/high.yaml", fx.dir);
    fx_write_grid(path, "high", 2, 0, "  seed: [0]\n");
    int rc = fx_cli(out, sizeof out, 20, "submit", path, "--priority", "5", NULL);
    cr_assert_eq(rc, 0, "%s", out);
    rc = fx_cli(out, sizeof out, 60, "watch", "high", NULL);
    cr_assert_eq(rc, 0, "%s", out);
    /* the high job (j5) started before the low grid's third and fourth */
    sqlite3 *db = fx_open_db();
    double hi = fx_db_num(db, "SELECT MIN(id) FROM attempts WHERE job_id=?", 5);
    cr_assert(isfinite(hi));
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(*) FROM attempts WHERE job_id IN (3, 4) AND id < ?",
                           (long long)hi), 0, "a low-priority job started first");
    cr_assert_eq(fx_db_num(db, "SELECT priority FROM jobs WHERE id=5", 0), 5);
    sqlite3_close(db);
    rc = fx_cli(out, sizeof out, 20, "cancel", "low", NULL);
    cr_assert_eq(rc, 0, "%s", out);
}

/* A grid submitted at the default priority and raised afterwards overtakes
 * the queue as if it had been submitted so; done jobs keep theirs. */
Test(daemon, a_raised_priority_moves_queued_jobs, .init = fx_setup, .fini = fx_teardown,
     .timeout = 90)
{
    char out[4096];
    fx_submit_grid("low", 300, 100, "  seed: [0, 1, 2, 3]\n");
    fx_submit_grid("later", 2, 0, "  seed: [0]\n");
    fx_wait_jobs("running", 2, 20);
    int rc = fx_cli(out, sizeof out, 20, "priority", "later", "5", NULL);
    cr_assert(rc == 0 && strstr(out, "priority 5 for 1 job (the queued ones take their new place)"),
              "%s", out);
    rc = fx_cli(out, sizeof out, 20, "priority", "later", "5000", NULL);
    cr_assert(rc != 0 && strstr(out, "priority"), "%s", out);
    rc = fx_cli(out, sizeof out, 20, "priority", "later", "x", NULL);
    cr_assert(rc != 0 && strstr(out, "'x' is not a whole number"), "%s", out);
    /* a worker frees: the raised job goes first */
    rc = fx_cli(out, sizeof out, 20, "cancel", "j1", NULL);
    cr_assert_eq(rc, 0, "%s", out);
    rc = fx_cli(out, sizeof out, 60, "watch", "later", NULL);
    cr_assert_eq(rc, 0, "%s", out);
    sqlite3 *db = fx_open_db();
    double hi = fx_db_num(db, "SELECT MIN(id) FROM attempts WHERE job_id=?", 5);
    cr_assert(isfinite(hi));
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(*) FROM attempts WHERE job_id IN (3, 4) AND id < ?",
                           (long long)hi), 0, "a job of the low grid started first");
    cr_assert_eq(fx_db_num(db, "SELECT priority FROM grids WHERE id=2", 0), 5);
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(*) FROM events WHERE job_id=5 AND text='priority 5 (was 0)'",
                           0), 1);
    sqlite3_close(db);
    rc = fx_cli(out, sizeof out, 20, "priority", "j5", "1", NULL);
    cr_assert(rc == 0 && strstr(out, "priority 1 for 0 jobs: none had not finished"), "%s", out);
    rc = fx_cli(out, sizeof out, 20, "cancel", "low", NULL);
    cr_assert_eq(rc, 0, "%s", out);
}

/* ------------------------------------------------------------------------ */
/* Jobs that fail */

/* Does one line of text hold all three? */
static int line_with(const char *text, const char *a, const char *b, const char *c)
{
    for (const char *l = text; l && *l;) {
        const char *e = strchr(l, '\n');
        size_t n = e ? (size_t)(e - l) : strlen(l);
        char buf[1024];
        snprintf(buf, sizeof buf, "%.*s", (int)(n < sizeof buf ? n : sizeof buf - 1), l);
        if (strstr(buf, a) && strstr(buf, b) && strstr(buf, c))
            return 1;
        l = e ? e + 1 : NULL;
    }
    return 0;
}

Test(daemon, a_job_that_cannot_train_fails_with_the_reason, .init = fx_setup, .fini = fx_teardown,
     .timeout = 60)
{
    char path[128], out[8192];
    snprintf(path, sizeof path, "%s/bad.yaml", fx.dir);
    /* a regular file passes validation; the worker finds it is no safetensors
     * (on every rank of the 2-device job, after their rendezvous) */
    fx_write_grid(path, "bad", 2, 0,
                  "  variant:\n    - {name: a, init: /etc/passwd}\n"
                  "    - {name: b, init: /etc/passwd, devices: 2}\n");
    int rc = fx_cli(out, sizeof out, 20, "submit", path, NULL);
    cr_assert_eq(rc, 0, "%s", out);
    rc = fx_cli(out, sizeof out, 40, "watch", "bad", NULL);
    cr_assert_eq(rc, 1, "%s", out);
    /* as an event, or in the opening list where the job failed before the
     * watch began: either way a line names the job, the failure and why */
    cr_assert(line_with(out, "bad/a/seed0", "failed: ", "/etc/passwd"), "%s", out);
    cr_assert(line_with(out, "bad/b/seed0", "failed: rank ", "/etc/passwd"), "%s", out);
    sqlite3 *db = fx_open_db();
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(*) FROM attempts WHERE outcome='failed'", 0), 2,
                 "a job's own failure is not retried, on one device or two");
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(*) FROM attempts", 0), 2);
    cr_assert_eq(fx_db_num(db, "SELECT SUM(lost) FROM jobs", 0), 0);
    sqlite3_close(db);
    rc = fx_cli(out, sizeof out, 20, "show", "j1", NULL);
    cr_assert(rc == 0 && strstr(out, "state      failed: ") && strstr(out, "failed: "), "%s", out);
    rc = fx_cli(out, sizeof out, 20, "table", "bad", NULL);
    cr_assert(rc == 0 && strstr(out, "0/1"), "%s", out);
}

/* TensorBoard files are a view of the database: a folder that cannot be
 * written is named once per attempt in the job's events, and the job, its
 * metrics and its result are untouched. */
Test(daemon, an_unwritable_tensorboard_folder_is_reported_and_the_job_goes_on, .init = fx_setup,
     .fini = fx_teardown, .timeout = 60)
{
    char blocker[128], tb[160], path[128], out[8192];
    fx_stop_daemon(10);
    snprintf(blocker, sizeof blocker, "%s/blocker", fx.dir);
    fx_write_file(blocker, "a file where the folder should be\n");
    snprintf(tb, sizeof tb, "%s/tb", blocker);
    fx_start_daemon("--tensorboard", tb, NULL);
    snprintf(path, sizeof path, "%s/tbfail.yaml", fx.dir);
    fx_write_grid(path, "tbfail", 2, 0, "  variant:\n    - {name: a}\n");
    int rc = fx_cli(out, sizeof out, 20, "submit", path, NULL);
    cr_assert_eq(rc, 0, "%s", out);
    rc = fx_cli(out, sizeof out, 40, "watch", "tbfail", NULL);
    cr_assert_eq(rc, 0, "%s", out);
    sqlite3 *db = fx_open_db();
    cr_assert_eq(
        fx_db_num(db, "SELECT state='done' AND linear_acc IS NOT NULL FROM jobs WHERE id=1", 0), 1);
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(DISTINCT epoch) FROM metrics WHERE kind='epoch'", 0),
                 2);
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(*) FROM events WHERE job_id=1 AND text LIKE "
                               "'tensorboard: %blocker/tb/g1-tbfail/a/seed0: Not a directory%'", 0),
                 1, "the failure is not reported once, naming the folder and the reason");
    sqlite3_close(db);
    rc = fx_cli(out, sizeof out, 20, "logs", "j1", NULL);
    cr_assert(rc == 0 && strstr(out, "Not a directory"), "%s", out);
}

/* ------------------------------------------------------------------------ */
/* rm */

static int exists(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int exists(const char *fmt, ...)
{
    char p[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p, sizeof p, fmt, ap);
    va_end(ap);
    struct stat st;
    return lstat(p, &st) == 0;
}

/* Rows of jobs `lo`..`hi` in every table that holds them. */
static double rows_of(sqlite3 *db, long long lo, long long hi)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT (SELECT COUNT(*) FROM jobs WHERE id BETWEEN %lld AND %lld) + (SELECT COUNT(*) "
             "FROM attempts WHERE job_id BETWEEN %lld AND %lld) + (SELECT COUNT(*) FROM metrics "
             "WHERE job_id BETWEEN %lld AND %lld) + (SELECT COUNT(*) FROM events WHERE job_id "
             "BETWEEN %lld AND %lld)",
             lo, hi, lo, hi, lo, hi, lo, hi);
    return fx_db_num(db, sql, 0);
}

/* rm of ended jobs: one job (its grid stays), then the grid's last job (the
 * grid goes with it): rows, run folders and TensorBoard runs go, another
 * grid's stay, a symbolic link out of a run folder is not followed. A grid
 * with a job queued, running or still stopping is refused whole. A file that
 * cannot be removed is named, and the rows go all the same. The newest grid
 * removed, its ids are not given again, even by a restarted daemon. */
static char rm_gate[160]; /* while it is missing, the daemon's removals wait */

static void setup_rm_gate(void)
{
    fx_prepare();
    snprintf(rm_gate, sizeof rm_gate, "%s/rm-gate", fx.dir);
    fx_write_file(rm_gate, "open\n");
    setenv("RUNAWAYD_TEST_RM_GATE", rm_gate, 1);
    fx_start_daemon(NULL);
    unsetenv("RUNAWAYD_TEST_RM_GATE");
}

Test(daemon, rm_removes_ended_jobs_with_their_files_and_no_id_is_reused, .init = setup_rm_gate,
     .fini = fx_teardown, .timeout = 90)
{
    char path[128], out[8192], want[1024];
    snprintf(path, sizeof path, "%s/gone.yaml", fx.dir);
    fx_write_grid(path, "gone", 1, 0,
                  "  seed: [0, 1]\n  variant:\n    - {name: a, checkpoint: {snapshot_every: 1}}\n");
    int rc = fx_cli(out, sizeof out, 20, "submit", path, NULL);
    cr_assert_eq(rc, 0, "%s", out);
    rc = fx_cli(out, sizeof out, 40, "watch", "gone", NULL);
    cr_assert_eq(rc, 0, "%s", out);
    /* the other grid: j3 and j4 running, j5 queued */
    snprintf(path, sizeof path, "%s/busy.yaml", fx.dir);
    fx_write_grid(path, "busy", 300, 10, "  seed: [0, 1, 2]\n");
    rc = fx_cli(out, sizeof out, 20, "submit", path, NULL);
    cr_assert_eq(rc, 0, "%s", out);
    fx_wait_for("j3 and j4 train",
                "SELECT COUNT(DISTINCT job_id) FROM metrics WHERE kind='epoch' AND "
                "job_id IN (3, 4)",
                0, 2, 30);
    cr_assert(exists("%s/runs/2/snapshots/weights-e00001.safetensors", fx.dir) &&
              exists("%s/runs/2/checkpoint.safetensors", fx.dir) &&
              exists("%s/tensorboard/g1-gone/a/seed1", fx.dir));
    /* a link out of the run folder: the link goes, not what it names */
    char keep[160], link[160];
    snprintf(keep, sizeof keep, "%s/keep", fx.dir);
    cr_assert_eq(mkdir(keep, 0700), 0);
    snprintf(path, sizeof path, "%s/keep/file", fx.dir);
    fx_write_file(path, "not the job's\n");
    snprintf(link, sizeof link, "%s/runs/2/snapshots/escape", fx.dir);
    cr_assert_eq(symlink(keep, link), 0);

    sqlite3 *db = fx_open_db();
    long long m2 = (long long)fx_db_num(db, "SELECT COUNT(*) FROM metrics WHERE job_id=2", 0);
    long long m1 = (long long)fx_db_num(db, "SELECT COUNT(*) FROM metrics WHERE job_id=1", 0);
    sqlite3_close(db);
    cr_assert(m1 > 0 && m2 > 0);
    /* the files go off the loop: with the removal held at the gate, the
     * rows are gone, the files not yet, and the daemon answers; the reply
     * comes once the files are gone */
    cr_assert_eq(unlink(rm_gate), 0);
    rw_frame_reader rr;
    int fd = fx_client(&rr);
    json_t *req = rw_msg_new("rm", 7);
    json_object_set_new(req, "target", json_string("j2"));
    cr_assert_eq(rw_frame_send_fd(fd, req), 0);
    json_decref(req);
    fx_wait_for("j2's rows go", "SELECT COUNT(*) FROM jobs WHERE id=2", 0, 0, 10);
    json_t *ls = fx_ask_simple("ls", NULL, NULL);
    cr_assert_str_eq(json_string_value(json_object_get(ls, "type")), "ok");
    json_decref(ls);
    cr_assert(exists("%s/runs/2/checkpoint.safetensors", fx.dir), "removed before the gate opened");
    cr_assert_null(fx_recv(fd, &rr, 300), "rm answered before its files went");
    fx_write_file(rm_gate, "open\n");
    json_t *rep = fx_recv(fd, &rr, 10000);
    cr_assert_not_null(rep, "no rm reply within 10 s of the gate opening");
    snprintf(want, sizeof want, "%s/runs/2", fx.dir);
    cr_assert(rw_msg_id(rep) == 7 && json_integer_value(json_object_get(rep, "metrics")) == m2 &&
              !strcmp(json_string_value(json_array_get(json_object_get(rep, "runs"), 0)), want) &&
              json_array_size(json_object_get(rep, "errors")) == 0,
              "reply %s", json_dumps(rep, 0));
    snprintf(want, sizeof want, "%s/tensorboard/g1-gone/a/seed1", fx.dir);
    cr_assert_str_eq(json_string_value(json_array_get(json_object_get(rep, "tensorboard"), 0)),
                     want);
    json_decref(rep);
    close(fd);
    rw_frame_reader_free(&rr);
    cr_assert(!exists("%s/runs/2", fx.dir) && !exists("%s/tensorboard/g1-gone/a/seed1", fx.dir));
    cr_assert(exists("%s/keep/file", fx.dir), "rm followed a symbolic link out of the run folder");
    cr_assert(exists("%s/runs/1/checkpoint.safetensors", fx.dir) &&
              exists("%s/tensorboard/g1-gone/a/seed0", fx.dir));
    db = fx_open_db();
    cr_assert_eq(rows_of(db, 2, 2), 0);
    cr_assert_gt(rows_of(db, 1, 1), 0);
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(*) FROM grids WHERE id=1", 0), 1);
    sqlite3_close(db);

    /* the grid's last job, by name: the grid goes too */
    rc = fx_cli(out, sizeof out, 20, "rm", "gone/a/seed0", NULL);
    snprintf(want, sizeof want,
             "removed j1 gone/a/seed0 (1 job, %lld metrics), and its grid g1, which had no other "
             "job\n  %s/runs/1\n  %s/tensorboard/g1-gone\n", m1, fx.dir, fx.dir);
    cr_assert(rc == 0 && !strcmp(out, want), "got:\n%swant:\n%s", out, want);
    cr_assert(!exists("%s/runs/1", fx.dir) && !exists("%s/tensorboard/g1-gone", fx.dir));
    cr_assert(exists("%s/tensorboard", fx.dir), "the TensorBoard root went");
    db = fx_open_db();
    cr_assert_eq(rows_of(db, 1, 2), 0);
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(*) FROM grids WHERE id=1", 0), 0);
    sqlite3_close(db);
    rc = fx_cli(out, sizeof out, 20, "show", "j1", NULL);
    cr_assert(rc == 1 && strstr(out, "no job 'j1'"), "%s", out);
    rc = fx_cli(out, sizeof out, 20, "ls", "g1", NULL);
    cr_assert(rc == 1 && strstr(out, "no grid 'g1'"), "%s", out);
    rc = fx_cli(out, sizeof out, 20, "rm", "g1", NULL);
    cr_assert(rc == 1 && strstr(out, "no job or grid 'g1'"), "%s", out);
    rc = fx_cli(out, sizeof out, 20, "rm", "j4242", NULL);
    cr_assert(rc == 1 && strstr(out, "no job or grid 'j4242'"), "%s", out);
    /* the other grid trains on, its rows and folders untouched */
    db = fx_open_db();
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(*) FROM jobs WHERE grid_id=2 AND state IN "
                               "('running','queued')", 0), 3);
    sqlite3_close(db);
    cr_assert(exists("%s/runs/3", fx.dir) && exists("%s/runs/4", fx.dir) &&
              exists("%s/tensorboard/g2-busy", fx.dir));

    /* not ended: refused whole, the ended (cancelled) j5 kept too */
    rc = fx_cli(out, sizeof out, 20, "cancel", "j5", NULL);
    cr_assert(rc == 0 && strstr(out, "cancelled 1 job"), "%s", out);
    rc = fx_cli(out, sizeof out, 20, "rm", "busy", NULL);
    cr_assert(rc == 1 && strstr(out, "rm g2: nothing removed: only ended jobs are removed, and j3 "
                                     "is running, j4 is running; cancel first (runaway cancel g2)"),
              "%s", out);
    rc = fx_cli(out, sizeof out, 20, "rm", "j3", NULL);
    cr_assert(rc == 1 && strstr(out, "and j3 is running; cancel first (runaway cancel j3)"), "%s",
              out);
    db = fx_open_db();
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(*) FROM jobs WHERE grid_id=2", 0), 3);
    cr_assert_gt(fx_db_num(db, "SELECT COUNT(*) FROM events WHERE job_id=5", 0), 0);
    sqlite3_close(db);
    cr_assert(exists("%s/runs/3", fx.dir));
    /* cancelled, but its worker (frozen) has not stopped: refused too */
    long long pid = fx_worker_pid(3);
    cr_assert_eq(kill((pid_t)pid, SIGSTOP), 0);
    rc = fx_cli(out, sizeof out, 20, "cancel", "busy", NULL);
    cr_assert(rc == 0 && strstr(out, "cancelled 2 jobs"), "%s", out);
    rc = fx_cli(out, sizeof out, 20, "rm", "busy", NULL);
    kill((pid_t)pid, SIGCONT);
    cr_assert(rc == 1 && strstr(out, "nothing removed: only ended jobs are removed, and j3 is "
                                     "still stopping") && strstr(out, "; try again once"),
              "%s", out);
    int idle = 0;
    for (double t0 = fx_now(); !idle && fx_now() - t0 < 20; usleep(100000)) {
        json_t *ws = fx_ask_simple("workers", NULL, NULL);
        size_t i;
        json_t *v;
        idle = 1;
        json_array_foreach(json_object_get(ws, "workers"), i, v) idle &=
            !strcmp(json_string_value(json_object_get(v, "state")), "idle");
        json_decref(ws);
    }
    cr_assert(idle, "the workers did not stop");

    /* the newest grid, whole; its ids are not given again */
    db = fx_open_db();
    long long m = (long long)fx_db_num(db, "SELECT COUNT(*) FROM metrics", 0);
    long long att = (long long)fx_db_num(db, "SELECT MAX(id) FROM attempts", 0);
    sqlite3_close(db);
    /* a file that cannot be removed (immutable; without root, in a folder
     * not writable) is named, and the rows go all the same */
    char ck[160], r3[160], cmd[256];
    snprintf(ck, sizeof ck, "%s/runs/3/checkpoint.safetensors", fx.dir);
    snprintf(r3, sizeof r3, "%s/runs/3", fx.dir);
    snprintf(cmd, sizeof cmd, "chattr +i '%s' 2>/dev/null", ck);
    int pinned = geteuid() == 0 ? system(cmd) == 0 : chmod(r3, 0500) == 0;
    rc = fx_cli(out, sizeof out, 20, "rm", "g2", NULL);
    if (geteuid() == 0) {
        snprintf(cmd, sizeof cmd, "chattr -i '%s' 2>/dev/null", ck);
        cr_assert(!pinned || system(cmd) == 0);
    } else {
        chmod(r3, 0700);
    }
    snprintf(want, sizeof want, "removed g2 busy (3 jobs, %lld metrics)\n", m);
    cr_assert(strstr(out, want), "got:\n%swant:\n%s", out, want);
    snprintf(want, sizeof want, "  %s/tensorboard/g2-busy\n", fx.dir);
    cr_assert(strstr(out, want), "got:\n%swant:\n%s", out, want);
    if (pinned) {
        snprintf(want, sizeof want, "runaway: rm: cannot remove %s: ", ck);
        cr_assert(rc == 1 && strstr(out, want) && strstr(out, "remove those files by hand") &&
                  exists("%s", ck), "%s", out);
        snprintf(want, sizeof want, "  %s/runs/4\n", fx.dir);
    } else {
        printf("daemon: rm: no file could be made unremovable here; that report is not checked\n");
        snprintf(want, sizeof want, "  %s/runs/{3,4}\n", fx.dir);
        cr_assert_eq(rc, 0, "%s", out);
    }
    cr_assert(strstr(out, want), "got:\n%swant:\n%s", out, want);
    db = fx_open_db();
    cr_assert_eq(fx_db_num(db,
                           "SELECT (SELECT COUNT(*) FROM grids) + (SELECT COUNT(*) FROM jobs) + "
                           "(SELECT COUNT(*) FROM attempts) + (SELECT COUNT(*) FROM metrics)",
                           0),
                 0);
    sqlite3_close(db);
    fx_stop_daemon(20);
    fx_restart_daemon();
    snprintf(path, sizeof path, "%s/again.yaml", fx.dir);
    fx_write_grid(path, "again", 1, 0, "  seed: [0]\n");
    rc = fx_cli(out, sizeof out, 20, "submit", path, NULL);
    cr_assert(rc == 0 && strstr(out, "grid g3 again: 1 job\n  j6 again/"), "%s", out);
    rc = fx_cli(out, sizeof out, 40, "watch", "again", NULL);
    cr_assert_eq(rc, 0, "%s", out);
    db = fx_open_db();
    cr_assert_gt(fx_db_num(db, "SELECT MIN(id) FROM attempts WHERE job_id=6", 0), att);
    sqlite3_close(db);
}
