/* The collapse alarm through runawayd (spec monitor.collapse): a job the
 * alarm stops ends `collapsed` with the epoch and the values that tripped
 * it, a warning is an event of a job that goes on, and neither is a
 * failure: table counts their numbers, watch exits 0, requeue refuses a
 * collapsed job, --notify and TensorBoard hear of both.
 *
 * The jobs are the fixture's tiny ones at a learning rate of 1e-2 (and tau
 * 0.99), where a network without a predictor collapses within seconds.
 * Measured (one thread, as the fixture's slots): without a predictor
 * L_uniform(f) -1.221, -0.335, -0.178, -0.118, -0.078, -0.058 and the
 * collapse std 0.598, 0.282, 0.198, 0.162, 0.132, 0.113 over its 6 epochs;
 * with the MLP predictor L_uniform stays at or below -0.325 and the std at
 * or above 0.280. With uniform_above -0.25 and std_below 0.22 the first
 * trips at epochs 3 and 4 (2 in a row: it goes off at 4; L_uniform is 0.07
 * past the threshold at 3, 0.085 short of it at 2), the second never (by
 * 0.06 or more on each threshold). Another machine's roundings (oneDNN
 * picks other kernels) move the digits: the tests name the epochs, not
 * the values. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon_fixture.h"

/* The grid's axes: 6 epochs at lr 1e-2 with the test's thresholds; each
 * variant's line adds its own fields. */
#define ALARM_BASE                                                                                 \
    "optim: {lr: 1.0e-2}, ema: {tau: 0.99}, "                                                      \
    "monitor: {collapse: {uniform_above: -0.25, std_below: 0.22, patience: 2, action: "

static void read_file(const char *path, char *out, size_t len, double secs)
{
    for (double t0 = fx_now(); access(path, R_OK) != 0 && fx_now() - t0 < secs;)
        usleep(100000);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s never came (log %s.log)", path, fx.dir);
    out[fread(out, 1, len - 1, f)] = 0;
    fclose(f);
}

/* stop: the job without a predictor ends collapsed at epoch 4, with why;
 * warn: the same job goes on to the end, done, after one warning; with a
 * predictor under the same thresholds the job is done. */
Test(daemon, the_alarm_stops_a_collapsing_job_and_warns_of_another, .init = fx_setup_notify,
     .fini = fx_teardown, .timeout = 120)
{
    fx_submit_grid("col", 6, 0,
                   "  seed: [0]\n  variant:\n"
                   "    - {name: np, model: {predictor: none}, " ALARM_BASE "stop}}}\n"
                   "    - {name: np-warn, model: {predictor: none}, " ALARM_BASE "warn}}}\n"
                   "    - {name: mlp, " ALARM_BASE "stop}}}\n");
    fx_wait_job(1, "collapsed", 60);
    fx_wait_job(2, "done", 60);
    fx_wait_job(3, "done", 60);

    sqlite3 *db = fx_open_db();
    /* stopped where it tripped: its last epoch, its result and its row */
    cr_expect_eq(fx_db_num(db, "SELECT MAX(epoch) FROM metrics WHERE job_id=? AND kind='epoch'",
                           1), 4);
    cr_expect_eq(fx_db_num(db, "SELECT json_extract(result, '$.collapsed_epoch') FROM jobs "
                               "WHERE id=?", 1), 4);
    cr_expect_eq(fx_db_num(db, "SELECT json_extract(result, '$.epoch') FROM jobs WHERE id=?", 1),
                 4);
    double u = fx_db_num(db, "SELECT json_extract(result, '$.uniform') FROM jobs WHERE id=?", 1);
    cr_expect(u > -0.25 && u < 0, "the result's L_uniform %g", u);
    cr_expect(fx_db_num(db, "SELECT linear_acc IS NOT NULL FROM jobs WHERE id=?", 1) == 1,
              "a collapsed job is evaluated as a done one");
    cr_expect_eq(fx_db_num(db, "SELECT COUNT(*) FROM attempts WHERE job_id=? AND "
                               "outcome='collapsed'", 1), 1);
    /* the alarm's rows: 2 (stop) for j1 at its epoch 4, 1 (warn) for j2 at
     * its epoch 4, once (not again at epochs 5 and 6), none for j3 */
    cr_expect_eq(fx_db_num(db, "SELECT alarm FROM metrics WHERE job_id=? AND kind='alarm' AND "
                               "epoch=4", 1), 2);
    cr_expect_eq(fx_db_num(db, "SELECT COUNT(*) FROM metrics WHERE job_id=? AND kind='alarm'", 2),
                 1);
    cr_expect_eq(fx_db_num(db, "SELECT alarm FROM metrics WHERE job_id=? AND kind='alarm' AND "
                               "epoch=4", 2), 1);
    cr_expect_eq(fx_db_num(db, "SELECT COUNT(*) FROM metrics WHERE job_id=? AND kind='alarm'", 3),
                 0);
    cr_expect_eq(fx_db_num(db, "SELECT MAX(epoch) FROM metrics WHERE job_id=? AND kind='epoch'",
                           2), 6);
    /* in each job's log */
    cr_expect_eq(fx_db_num(db, "SELECT COUNT(*) FROM events WHERE job_id=? AND kind='collapse' "
                               "AND text LIKE 'collapse alarm (warn): L_uniform(f) -0.% > "
                               "-0.25, collapse std 0.% < 0.22 at epoch 4, 2 epochs in a row'",
                           2), 1);
    sqlite3_close(db);

    char out[16384];
    int rc = fx_cli(out, sizeof out, 20, "show", "j1", NULL);
    cr_assert(rc == 0 && strstr(out, "state      collapsed: L_uniform(f) -0.") &&
                  strstr(out, " < 0.22 at epoch 4, 2 epochs in a row\n"),
              "%s", out);
    rc = fx_cli(out, sizeof out, 20, "ls", "col", "--state", "collapsed", NULL);
    cr_assert(rc == 0 && strstr(out, "j1     collapsed col/np/seed0") && !strstr(out, "j2 ") &&
                  strstr(out, "\n       L_uniform(f) -0.") &&
                  strstr(out, "col: 2 done, 0 running, 0 queued, 1 collapsed; ended"),
              "%s", out);
    rc = fx_cli(out, sizeof out, 20, "logs", "j2", NULL);
    cr_assert(rc == 0 && strstr(out, "* collapse alarm (warn): ") && strstr(out, "epoch   6/6"),
              "%s", out);

    /* table: its numbers where it stopped, and the count that collapsed */
    rc = fx_cli(out, sizeof out, 20, "table", "col", NULL);
    cr_assert(rc == 0 && strstr(out, "collapsed\n") && strstr(out, "1 at epoch 4\n") &&
                  strstr(out, "collapsed: jobs the collapse alarm stopped"),
              "%s", out);
    char *np = strstr(out, "\nnp ");
    cr_assert(np && strstr(np, "1/1") < strchr(np + 1, '\n'), "np's row counts j1: %s", out);
    rc = fx_cli(out, sizeof out, 20, "table", "col", "--format", "csv", NULL);
    cr_assert(rc == 0 && strstr(out, ",acc_n,collapsed,linear_protocol\n") &&
                  strstr(out, "\nnp,1,1,") && strstr(out, ",1,1,\"5 epochs") &&
                  strstr(out, ",1,0,\"5 epochs"),
              "%s", out);

    /* not requeued: it would stop there again */
    rc = fx_cli(out, sizeof out, 20, "requeue", "j1", NULL);
    cr_assert(rc != 0 && strstr(out, "j1 is collapsed: the collapse alarm stopped it") &&
                  strstr(out, "monitor.collapse.action=warn"),
              "%s", out);
    rc = fx_cli(out, sizeof out, 20, "requeue", "col", NULL);
    cr_assert(rc == 0 && strstr(out, "requeued 0 jobs"), "%s", out);
    /* an ended grid's watch: done and collapsed are no failure */
    rc = fx_cli(out, sizeof out, 20, "watch", "col", NULL);
    cr_assert_eq(rc, 0, "%s", out);

    /* --notify: the warning, the collapsed job, the grid's end; once each */
    char p[200], txt[4096], count[160];
    snprintf(p, sizeof p, "%s/n-collapse_warning-g1j2.txt", fx.dir);
    read_file(p, txt, sizeof txt, 10);
    cr_assert(strstr(txt, "RUNAWAY_EVENT=collapse_warning\n") && strstr(txt, "RUNAWAY_JOB=j2\n") &&
                  strstr(txt, "RUNAWAY_JOB_NAME=col/np-warn/seed0\n") &&
                  strstr(txt, "RUNAWAY_EPOCH=4\n") &&
                  strstr(txt, "RUNAWAY_TEXT=L_uniform(f) -0.") && strstr(txt, " > -0.25"),
              "%s", txt);
    snprintf(p, sizeof p, "%s/n-job_collapsed-g1j1.txt", fx.dir);
    read_file(p, txt, sizeof txt, 10);
    cr_assert(strstr(txt, "RUNAWAY_EVENT=job_collapsed\n") && strstr(txt, "RUNAWAY_JOB=j1\n") &&
                  strstr(txt, "RUNAWAY_EPOCH=4\n") && strstr(txt, "RUNAWAY_TEXT=L_uniform(f)"),
              "%s", txt);
    snprintf(p, sizeof p, "%s/n-grid_end-g1.txt", fx.dir);
    read_file(p, txt, sizeof txt, 10);
    cr_assert(strstr(txt, "RUNAWAY_DONE=2\n") && strstr(txt, "RUNAWAY_COLLAPSED=1\n") &&
                  strstr(txt, "RUNAWAY_FAILED=0\n"),
              "%s", txt);
    snprintf(count, sizeof count, "%s/n-count", fx.dir);
    for (double t0 = fx_now(); fx_lines_of(count) < 3 && fx_now() - t0 < 10;)
        usleep(50000);
    usleep(500000);
    cr_assert_eq(fx_lines_of(count), 3, "each event once");

    /* TensorBoard: epoch/collapse_alarm where the database has its rows */
    fx_check_tensorboard(0, 0, "tb_check: 3 runs,");
}

/* watch prints the alarm as it goes off and, with every job ended done or
 * collapsed, exits 0; the default thresholds (uniform_above -0.3,
 * std_below 0.25) trip from epoch 3 on here, so the default action, warn,
 * goes off in a job that asks for nothing. */
Test(daemon, watch_shows_the_alarm_and_the_defaults_warn, .init = fx_setup, .fini = fx_teardown,
     .timeout = 90)
{
    fx_submit_grid("w", 6, 0,
                   "  seed: [0]\n  variant:\n"
                   "    - {name: np, model: {predictor: none}, " ALARM_BASE "stop}}}\n"
                   "    - {name: np-default, model: {predictor: none}, optim: {lr: 1.0e-2}, "
                   "ema: {tau: 0.99}}\n");
    char out[65536];
    int rc = fx_cli(out, sizeof out, 60, "watch", "w", NULL);
    cr_assert_eq(rc, 0, "%s", out);
    const char *a1 = strstr(out, "j1    collapse alarm: L_uniform(f) -0.");
    const char *a2 = strstr(out, "j2    collapse alarm: L_uniform(f) -0.");
    cr_assert(a1 && strstr(a1, " < 0.22 at epoch 4, 2 epochs in a row; stops the job") &&
                  strstr(out, "j1    w/np/seed0: collapsed: L_uniform(f)") && a2 &&
                  strstr(a2, " < 0.25 at epoch ") && strstr(a2, "training goes on") &&
                  strstr(out, "j2    w/np-default/seed0: done"),
              "%s", out);
}
