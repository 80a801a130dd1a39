/* Data-parallel jobs through runawayd: 2 ranks over Gloo, their rendezvous
 * through the daemon; one rank killed, frozen or blocked after a cancel. */
#include <criterion/criterion.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "daemon_fixture.h"

/* Seconds since the epoch, as the times runawayd stores. */
static double wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The last "epoch N/M ... loss X ... pairs/s P" line of a standalone run. */
static int parse_epoch_line(const char *out, int epoch, double *loss, double *pps)
{
    char want[32];
    snprintf(want, sizeof want, "epoch %3d/", epoch);
    const char *l = strstr(out, want);
    if (!l)
        return -1;
    const char *ls = strstr(l, "loss "), *ps = strstr(l, "pairs/s ");
    if (!ls || !ps)
        return -1;
    *loss = strtod(ls + 5, NULL);
    *pps = strtod(ps + 8, NULL);
    return 0;
}

Test(daemon_dist, two_rank_sync_bn_job_matches_a_one_device_run, .init = fx_setup,
     .fini = fx_teardown, .timeout = 180)
{
    char path[128], out[16384];
    snprintf(path, sizeof path, "%s/dp.yaml", fx.dir);
    fx_write_file(path,
                  "name: dp\n"
                  "base:\n"
                  "  data: {kind: synthetic, synthetic: {train: 192, test: 40, seed: 1}, image_size: 16,"
                  " loader_threads: 1}\n"
                  "  model: {stem: cifar, width: 4, projector: {hidden: 32, out: 16}, predictor_hidden: 32}\n"
                  "  optim: {batch_size: 32, epochs: 3}\n"
                  "  eval: {linear: {epochs: 2, batch_size: 32}}\n"
                  "  threads: 1\n" /* the daemon's workers have 1 each; same for the reference */
                  "  devices: 2\n"
                  "  sync_bn: true\n"
                  "grid:\n  seed: [0]\n");
    double t0 = fx_now();
    int rc = fx_cli(out, sizeof out, 20, "submit", path, NULL);
    cr_assert_eq(rc, 0, "%s", out);
    rc = fx_cli(out, sizeof out, 150, "watch", "dp", NULL);
    cr_assert_eq(rc, 0, "watch: %s", out);
    double t_job = fx_now() - t0;
    sqlite3 *db = fx_open_db();
    cr_assert_eq(fx_db_num(db, "SELECT state='done' FROM jobs WHERE id=1", 0), 1);
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(*) FROM attempts WHERE job_id=1", 0), 1);
    cr_assert_eq(fx_db_num(db,
                           "SELECT COUNT(*) FROM events WHERE job_id=1 AND text LIKE "
                           "'world size 2: data-parallel over Gloo%16 per rank%synchronized%'",
                           0),
                 1, "rank 0 did not train data-parallel");
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(*) FROM events WHERE job_id=1 AND text LIKE "
                               "'%(data parallel)%'", 0), 1);
    /* only rank 0 reports metrics: one row per epoch */
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(*) FROM metrics WHERE job_id=1 AND kind='epoch'", 0),
                 3);
    double loss2[4], pps2 = fx_db_num(db, "SELECT pairs_per_s FROM metrics WHERE job_id=1 AND "
                                          "kind='epoch' AND epoch=3", 0);
    for (int e = 1; e <= 3; e++)
        loss2[e] = fx_db_num(db, "SELECT loss FROM metrics WHERE job_id=1 AND kind='epoch' AND epoch=?",
                             e);
    cr_assert(isfinite(fx_db_num(db, "SELECT linear_acc FROM jobs WHERE id=1", 0)),
              "rank 0's result (linear accuracy) missing");
    /* the same spec on one device, standalone (sync_bn means nothing there) */
    sqlite3_stmt *st;
    cr_assert_eq(sqlite3_prepare_v2(db, "SELECT spec FROM jobs WHERE id=1", -1, &st, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_step(st), SQLITE_ROW);
    char spec[16384];
    snprintf(spec, sizeof spec, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    sqlite3_close(db);
    char *dv = strstr(spec, "\ndevices: 2\n"), *sb = strstr(spec, "\nsync_bn: true\n");
    cr_assert(dv && sb, "canonical spec without devices/sync_bn:\n%s", spec);
    dv[10] = '1';
    *sb = '\0';
    char spec1[16500];
    snprintf(spec1, sizeof spec1, "%s\nsync_bn: false\n%s", spec, sb + strlen("\nsync_bn: true\n"));
    char p1[128], o1[128], w[1100];
    snprintf(p1, sizeof p1, "%s/one.yaml", fx.dir);
    snprintf(o1, sizeof o1, "%s/one", fx.dir);
    fx_write_file(p1, spec1);
    fx_bin(w, sizeof w, "worker/runaway-worker");
    const char *argv[] = {w, "run", p1, "--out", o1, "--backend", "cpu", NULL};
    t0 = fx_now();
    rc = fx_run(out, sizeof out, 120, argv);
    double t_one = fx_now() - t0;
    cr_assert_eq(rc, 0, "standalone run: %s", out);
    double worst = 0;
    for (int e = 1; e <= 3; e++) {
        double l1, p1s;
        cr_assert_eq(parse_epoch_line(out, e, &l1, &p1s), 0, "no epoch %d in:\n%s", e, out);
        /* the line prints 5 decimals: compare at that precision too */
        double rel = fabs(loss2[e] - l1) / fabs(l1);
        worst = rel > worst ? rel : worst;
        cr_expect(fabs(loss2[e] - l1) <= 1e-4 * fabs(l1) + 5e-6,
                  "epoch %d: 2-rank loss %.9g, 1-device %.9g", e, loss2[e], l1);
        if (e == 3)
            printf("dist: 2-rank (sync_bn) vs 1-device, last-epoch loss %.6f vs %.5f "
                   "(rel diff %.2e, worst epoch %.2e); pairs/s %.1f vs %.1f; wall %.1f s "
                   "(submit to done) vs %.1f s\n",
                   loss2[e], l1, rel, worst, pps2, p1s, t_job, t_one);
    }
}

static long long worker_of(long long job, int rank, const char *field)
{
    json_t *r = fx_ask_simple("workers", NULL, NULL);
    size_t i;
    json_t *v;
    long long x = -1;
    json_array_foreach(json_object_get(r, "workers"), i, v)
    {
        if (json_integer_value(json_object_get(v, "job")) == job &&
            json_integer_value(json_object_get(v, "rank")) == rank)
            x = json_integer_value(json_object_get(v, field));
    }
    json_decref(r);
    return x;
}

/* Rank 1's worker is killed (SIGKILL: its connections close) or frozen
 * (SIGSTOP: silent until the daemon's heartbeat timeout kills it). */
static void rank_lost(int sig)
{
    char path[128], out[4096];
    snprintf(path, sizeof path, "%s/dpk.yaml", fx.dir);
    fx_write_grid(path, "dpk", 300, 10, "  variant:\n    - {name: a, devices: 2}\n");
    int rc = fx_cli(out, sizeof out, 20, "submit", path, NULL);
    cr_assert_eq(rc, 0, "%s", out);
    long long job = 1;
    /* past its first checkpoint (epoch 10) */
    fx_wait_epoch(job, 15, 60);
    long long pid = worker_of(job, 1, "pid");
    cr_assert_gt(pid, 0, "no worker holds rank 1 of job %lld", job);
    cr_assert_gt(worker_of(job, 0, "pid"), 0, "no worker holds rank 0");
    double tk = wall();
    cr_assert_eq(kill((pid_t)pid, sig), 0);
    /* rank 0 sees the closed connection in its next collective and fails:
     * its report either ended the attempt itself or came after the daemon
     * cancelled it (recorded as an event) */
    const char *fail_t =
        "SELECT MIN(t) FROM (SELECT ended AS t FROM attempts WHERE job_id=?1 AND error LIKE "
        "'rank 0 % failed: %' UNION ALL SELECT t FROM events WHERE job_id=?1 AND text LIKE "
        "'%(rank 0) ended after cancel_job: failed%')";
    fx_wait_for("rank 0 failed", "SELECT COUNT(*) FROM (SELECT 1 FROM attempts WHERE job_id=?1 AND "
                                 "error LIKE 'rank 0 % failed: %' UNION ALL SELECT 1 FROM events "
                                 "WHERE job_id=?1 AND text LIKE '%(rank 0) ended after cancel_job: "
                                 "failed%')",
             job, 1, 30);
    sqlite3 *db = fx_open_db();
    double t_fail = fx_db_num(db, fail_t, job) - tk;
    sqlite3_close(db);
    /* SIGKILL: Gloo sees the closed connection (or, blocked in a send, the
     * worker gives up 5 s after cancel_job); SIGSTOP: 3 s heartbeat timeout
     * first. Either way far below the 120 s collective timeout. */
    double bound = sig == SIGKILL ? 10.0 : 20.0;
    cr_assert_lt(t_fail, bound, "rank 0 took %.1f s to fail (its collective timeout is 120 s)",
                 t_fail);
    fx_wait_job(job, "done", 90);
    db = fx_open_db();
    double t_requeue = fx_db_num(db, "SELECT MIN(started) FROM attempts WHERE job_id=? AND id > "
                                     "(SELECT MIN(id) FROM attempts WHERE job_id=?1)", job) - tk;
    cr_assert_geq(fx_db_num(db, "SELECT COUNT(*) FROM attempts WHERE job_id=? AND outcome IN "
                                "('lost','failed')", job), 1);
    cr_assert_eq(
        fx_db_num(db, "SELECT COUNT(*) FROM attempts WHERE job_id=? AND outcome='done'", job), 1);
    cr_assert_geq(fx_db_num(db, "SELECT lost FROM jobs WHERE id=?", job), 1);
    cr_assert_geq(fx_db_num(db, "SELECT COUNT(*) FROM events WHERE job_id=? AND text LIKE "
                                "'%requeued (resumes from its checkpoint)'", job), 1);
    cr_assert_geq(fx_db_num(db, "SELECT COUNT(*) FROM events WHERE job_id=? AND text LIKE "
                                "'resumed from %checkpoint.safetensors at epoch%'", job),
                  1, "the second attempt did not resume from rank 0's checkpoint");
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(DISTINCT epoch) FROM metrics WHERE job_id=? AND "
                               "kind='epoch'", job), 300);
    sqlite3_close(db);
    /* TensorBoard shows each epoch once: the second attempt's file starts
     * with the restart marker that drops the first one's later points */
    fx_check_tensorboard(job, FX_TB_PURGE, "tb_check: 1 runs,");
    printf("dist: rank 1 %s; rank 0 failed %.2f s later; next attempt started %.1f s after "
           "that\n", sig == SIGKILL ? "killed" : "frozen", t_fail, t_requeue);
    if (sig == SIGSTOP)
        kill((pid_t)pid, SIGKILL); /* the daemon killed it already; be sure */
}

Test(daemon_dist, killed_rank_fails_its_peer_fast_and_the_job_is_requeued, .init = fx_setup,
     .fini = fx_teardown, .timeout = 150)
{
    rank_lost(SIGKILL);
}

Test(daemon_dist, frozen_rank_is_dropped_and_the_job_is_requeued, .init = fx_setup,
     .fini = fx_teardown, .timeout = 150)
{
    rank_lost(SIGSTOP);
}

static void setup_slow_heartbeat(void)
{
    /* a frozen worker stays connected and silent for 30 s */
    fx_prepare();
    fx_start_daemon("--heartbeat-timeout", "30", NULL);
}

/* Rank 1 frozen, the job cancelled: rank 0 is blocked in a collective with
 * a peer that neither answers nor closes its connection. It gives up 5 s
 * after cancel_job, says so, and its worker starts afresh and takes work. */
Test(daemon_dist, rank_blocked_after_cancel_restarts_its_worker, .init = setup_slow_heartbeat,
     .fini = fx_teardown, .timeout = 120)
{
    char path[128], out[4096];
    snprintf(path, sizeof path, "%s/dps.yaml", fx.dir);
    fx_write_grid(path, "dps", 300, 10, "  variant:\n    - {name: a, devices: 2}\n");
    int rc = fx_cli(out, sizeof out, 20, "submit", path, NULL);
    cr_assert_eq(rc, 0, "%s", out);
    fx_wait_for("epoch 5", "SELECT MAX(epoch) FROM metrics WHERE job_id=1 AND kind='epoch'", 0, 5,
                60);
    long long p1 = worker_of(1, 1, "pid"), p0 = worker_of(1, 0, "pid");
    cr_assert(p0 > 0 && p1 > 0);
    cr_assert_eq(kill((pid_t)p1, SIGSTOP), 0);
    usleep(300000); /* rank 0 is in a collective by now */
    double t0 = wall();
    rc = fx_cli(out, sizeof out, 20, "cancel", "j1", NULL);
    cr_assert(rc == 0 && strstr(out, "cancelled 1 job"), "%s", out);
    fx_wait_for("rank 0 gave up", "SELECT COUNT(*) FROM events WHERE job_id=1 AND text LIKE "
                                  "'%(rank 0) ended after cancel_job: failed: rank 0: still training%'",
             0, 1, 30);
    sqlite3 *db = fx_open_db();
    double t = fx_db_num(db, "SELECT MIN(t) FROM events WHERE job_id=1 AND text LIKE "
                             "'%(rank 0) ended after cancel_job: failed%'", 0) - t0;
    sqlite3_close(db);
    cr_assert(t >= 4 && t < 15, "rank 0 gave up %.1f s after the cancel", t);
    /* the same process, started afresh, is idle again and trains a job */
    int idle = 0;
    for (double w0 = fx_now(); !idle && fx_now() - w0 < 15; usleep(100000)) {
        json_t *ws = fx_ask_simple("workers", NULL, NULL);
        json_t *w = json_array_get(json_object_get(ws, "workers"), 0);
        idle = !strcmp(json_string_value(json_object_get(w, "state")), "idle") &&
               json_integer_value(json_object_get(w, "pid")) == p0;
        json_decref(ws);
    }
    cr_assert(idle, "slot 0 did not come back idle");
    kill((pid_t)p1, SIGKILL);
    snprintf(path, sizeof path, "%s/after.yaml", fx.dir);
    fx_write_grid(path, "after", 2, 0, "  seed: [0]\n");
    rc = fx_cli(out, sizeof out, 20, "submit", path, NULL);
    cr_assert_eq(rc, 0, "%s", out);
    rc = fx_cli(out, sizeof out, 40, "watch", "after", NULL);
    cr_assert_eq(rc, 0, "%s", out);
    printf("dist: rank 0 blocked after cancel_job gave up %.1f s later and restarted\n", t);
}
