/* runawayd and a worker of our own, which speaks the worker protocol by
 * hand (a "remote" worker on the Unix socket): the rendezvous store's
 * requests, reports around a cancel and a resume, the time-left estimates at
 * a pace we set, and a job that waits for workers while the next one runs.
 * Their Criterion suite is daemon_dist, as it was in test_daemon.c. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon_fixture.h"

/* A worker of our own over the Unix socket (no slot: a "remote" one). */
static int fake_worker(rw_frame_reader *r)
{
    int fd = fx_connect();
    cr_assert_geq(fd, 0);
    rw_frame_reader_init(r, 0);
    json_t *h = rw_msg_new("hello", 1);
    json_object_set_new(h, "version", json_integer(RW_PROTO_VERSION));
    json_object_set_new(h, "role", json_string("worker"));
    json_object_set_new(h, "device", json_string("fake0"));
    json_object_set_new(h, "backend", json_string("cpu"));
    json_t *rep = fx_request(fd, r, h);
    cr_assert_str_eq(json_string_value(json_object_get(rep, "type")), "ok");
    json_decref(rep);
    return fd;
}

/* Reads frames until one of `type` (and id, if >= 0), heartbeating meanwhile
 * as a worker that holds `job` (0: none) does. */
static json_t *fake_wait_holding(int fd, rw_frame_reader *r, const char *type, long long id,
                                 long long job, double secs)
{
    for (double t0 = fx_now(); fx_now() - t0 < secs;) {
        json_t *hb = rw_msg_new("heartbeat", -1);
        if (job)
            json_object_set_new(hb, "job", json_integer(job));
        rw_frame_send_fd(fd, hb);
        json_decref(hb);
        json_t *m = fx_recv(fd, r, 200);
        if (!m)
            continue;
        const char *t = json_string_value(json_object_get(m, "type"));
        if (t && !strcmp(t, type) && (id < 0 || rw_msg_id(m) == id))
            return m;
        json_decref(m);
    }
    cr_assert_fail("no %s (id %lld) within %.0f s", type, id, secs);
    return NULL;
}

static json_t *fake_wait(int fd, rw_frame_reader *r, const char *type, long long id, double secs)
{
    return fake_wait_holding(fd, r, type, id, 0, secs);
}

static json_t *kv_msg(const char *type, long long id, long long job, long long attempt,
                      const char *key)
{
    json_t *m = rw_msg_new(type, id);
    json_object_set_new(m, "job", json_integer(job));
    json_object_set_new(m, "attempt", json_integer(attempt));
    if (key)
        json_object_set_new(m, "key", json_string(key));
    return m;
}

/* Sends m on fd; the reply with m's id (error or not). */
static json_t *fake_call(int fd, rw_frame_reader *r, json_t *m, const char *want_type)
{
    long long id = rw_msg_id(m);
    cr_assert_eq(rw_frame_send_fd(fd, m), 0);
    json_decref(m);
    for (double t0 = fx_now(); fx_now() - t0 < 10;) {
        json_t *x = fake_wait(fd, r, want_type, id, 10);
        return x;
    }
    return NULL;
}

static const char *code_of(json_t *e) { return json_string_value(json_object_get(e, "code")); }

/* A worker's malformed kv request: an error with `code`, then the close. */
static void fake_rejected(const char *body, const char *code)
{
    rw_frame_reader r;
    int fd = fake_worker(&r);
    char *b;
    size_t n;
    cr_assert_eq(rw_frame_encode_raw(body, strlen(body), &b, &n), 0);
    rw_fd_write_all(fd, b, n);
    free(b);
    json_t *e = fx_recv(fd, &r, 5000);
    cr_assert_not_null(e, "no reply to %.80s", body);
    cr_assert_str_eq(json_string_value(json_object_get(e, "type")), "error");
    cr_assert_str_eq(code_of(e), code, "%.80s: %s", body,
                     json_string_value(json_object_get(e, "message")));
    json_decref(e);
    cr_assert(fx_closed_by_peer(fd, 5000), "connection not closed after %s", code);
    close(fd);
    rw_frame_reader_free(&r);
    fx_expect_still_serving();
}

Test(daemon_dist, kv_requests_are_validated_and_scoped_to_the_attempt, .init = fx_setup,
     .fini = fx_teardown, .timeout = 120)
{
    /* malformed or oversized: bad_message (or unknown_type), connection closed */
    static char big[2 * 16384 + 200];
    int o = snprintf(big, sizeof big,
                     "{\"type\":\"kv_set\",\"id\":5,\"job\":1,\"attempt\":1,\"key\":\"k\",\"value\":\"");
    for (int i = 0; i < 2 * 16384 + 2; i++)
        big[o++] = 'a';
    snprintf(big + o, sizeof big - o, "\"}");
    fake_rejected(big, RW_E_BAD_MESSAGE);
    fake_rejected("{\"type\":\"kv_set\",\"id\":5,\"job\":1,\"attempt\":1,\"key\":\"k\",\"value\":\"abc\"}",
                  RW_E_BAD_MESSAGE); /* odd length */
    fake_rejected("{\"type\":\"kv_set\",\"id\":5,\"job\":1,\"attempt\":1,\"key\":\"k\",\"value\":\"zz\"}",
                  RW_E_BAD_MESSAGE); /* not hex */
    fake_rejected("{\"type\":\"kv_set\",\"id\":5,\"job\":1,\"attempt\":1,\"key\":\"a b\",\"value\":\"00\"}",
                  RW_E_BAD_MESSAGE); /* a space in the key */
    fake_rejected("{\"type\":\"kv_set\",\"id\":5,\"job\":1,\"attempt\":1,\"value\":\"00\"}",
                  RW_E_BAD_MESSAGE); /* no key */
    fake_rejected("{\"type\":\"kv_get\",\"id\":5,\"job\":1,\"attempt\":1,\"key\":\"k\",\"timeout_ms\":-1}",
                  RW_E_BAD_MESSAGE);
    fake_rejected("{\"type\":\"kv_get\",\"id\":5,\"job\":1,\"attempt\":1,\"key\":\"k\"}",
                  RW_E_BAD_MESSAGE); /* no timeout */
    fake_rejected("{\"type\":\"kv_value\",\"id\":5,\"value\":\"00\"}", RW_E_UNKNOWN_TYPE);
    fx_expect_rejected_body("{\"type\":\"kv_get\",\"id\":5,\"job\":1,\"attempt\":1,\"key\":\"k\",\"timeout_ms\":1}",
                            1, RW_E_UNKNOWN_TYPE); /* from a client */

    /* well-formed, from a worker with no assignment: state, connection kept */
    rw_frame_reader r;
    int fd = fake_worker(&r);
    json_t *m = kv_msg("kv_set", 7, 1, 1, "k");
    json_object_set_new(m, "value", json_string("00ff"));
    json_t *e = fake_call(fd, &r, m, "error");
    cr_assert_str_eq(code_of(e), RW_E_STATE);
    json_decref(e);
    m = kv_msg("kv_get", 8, 1, 1, "k");
    json_object_set_new(m, "timeout_ms", json_integer(100));
    e = fake_call(fd, &r, m, "error");
    cr_assert_str_eq(code_of(e), RW_E_STATE);
    json_decref(e);
    fx_expect_still_serving();

    /* Now this worker is the third device: a 3-rank job puts it in an
     * attempt with the two real workers, whose Gloo rendezvous keys it sees. */
    char path[128], out[4096];
    snprintf(path, sizeof path, "%s/three.yaml", fx.dir);
    fx_write_grid(path, "three", 2, 0, "  variant:\n    - {name: a, devices: 3}\n");
    int rc = fx_cli(out, sizeof out, 20, "submit", path, NULL);
    cr_assert_eq(rc, 0, "%s", out);
    json_t *as = fake_wait(fd, &r, "assign", -1, 20);
    long long job = json_integer_value(json_object_get(as, "job"));
    long long att = json_integer_value(json_object_get(as, "attempt"));
    cr_assert_eq(json_integer_value(json_object_get(as, "world")), 3);
    cr_assert_eq(json_integer_value(json_object_get(as, "rank")), 2);
    json_decref(as);
    m = kv_msg("kv_get", 10, job, att, "gloo/0");
    json_object_set_new(m, "timeout_ms", json_integer(20000));
    json_t *v = fake_call(fd, &r, m, "kv_value");
    const char *hex = json_string_value(json_object_get(v, "value"));
    cr_assert(hex && strlen(hex) >= 2 && strlen(hex) % 2 == 0, "rank 0's address: %s", hex);
    json_decref(v);
    /* set, overwrite, get */
    for (int k = 0; k < 2; k++) {
        m = kv_msg("kv_set", 11 + k, job, att, "probe");
        json_object_set_new(m, "value", json_string(k ? "00ff" : "0102"));
        json_t *ok = fake_call(fd, &r, m, "ok");
        json_decref(ok);
    }
    m = kv_msg("kv_get", 13, job, att, "probe");
    json_object_set_new(m, "timeout_ms", json_integer(0));
    v = fake_call(fd, &r, m, "kv_value");
    cr_assert_str_eq(json_string_value(json_object_get(v, "value")), "00ff");
    json_decref(v);
    /* another attempt's store is not ours */
    m = kv_msg("kv_get", 14, job, att + 1, "probe");
    json_object_set_new(m, "timeout_ms", json_integer(0));
    e = fake_call(fd, &r, m, "error");
    cr_assert_str_eq(code_of(e), RW_E_STATE);
    json_decref(e);
    /* a key nobody sets: timeout, answered on the daemon's tick */
    double t0 = fx_now();
    m = kv_msg("kv_get", 15, job, att, "never");
    json_object_set_new(m, "timeout_ms", json_integer(300));
    e = fake_call(fd, &r, m, "error");
    cr_assert_str_eq(code_of(e), RW_E_TIMEOUT);
    cr_assert(fx_now() - t0 >= 0.25 && fx_now() - t0 < 3, "timeout after %.2f s", fx_now() - t0);
    json_decref(e);

    /* this rank fails as a broken collective does (retry): the others are
     * cancelled (their rendezvous ends at once), the job requeued; the next
     * attempt has a fresh store */
    m = kv_msg("failed", -1, job, att, NULL);
    json_object_set_new(m, "error", json_string("test: rank 2 gives up"));
    json_object_set_new(m, "retry", json_true());
    cr_assert_eq(rw_frame_send_fd(fd, m), 0);
    json_decref(m);
    as = fake_wait(fd, &r, "assign", -1, 40);
    long long att2 = json_integer_value(json_object_get(as, "attempt"));
    cr_assert_gt(att2, att);
    json_decref(as);
    m = kv_msg("kv_get", 16, job, att2, "probe");
    json_object_set_new(m, "timeout_ms", json_integer(0));
    e = fake_call(fd, &r, m, "error");
    cr_assert_str_eq(code_of(e), RW_E_TIMEOUT, "attempt %lld saw attempt %lld's key", att2, att);
    json_decref(e);
    sqlite3 *db = fx_open_db();
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(*) FROM attempts WHERE id=? AND outcome='failed' AND "
                               "error LIKE 'rank 2 (worker %) failed: test: rank 2 gives up'", att), 1);
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(*) FROM events WHERE job_id=1 AND text LIKE "
                               "'%ended after cancel_job: stopped%'", 0), 2,
                 "the real ranks did not stop at once");
    cr_assert_eq(fx_db_num(db, "SELECT lost FROM jobs WHERE id=1", 0), 1, "lost %g attempts %g",
                 fx_db_num(db, "SELECT lost FROM jobs WHERE id=1", 0),
                 fx_db_num(db, "SELECT COUNT(*) FROM attempts WHERE job_id=1", 0));
    sqlite3_close(db);
    rc = fx_cli(out, sizeof out, 20, "cancel", "j1", NULL);
    cr_assert(rc == 0 && strstr(out, "cancelled 1 job"), "%s", out);
    json_decref(fake_wait(fd, &r, "cancel_job", -1, 10));
    close(fd);
    rw_frame_reader_free(&r);
    fx_expect_still_serving();
}

/* Our fake worker's metric report of `kind` (step or epoch). */
static void fake_metric(int fd, long long job, long long attempt, const char *kind, int epoch,
                        long step, double loss)
{
    json_t *m = kv_msg("metric", -1, job, attempt, NULL);
    json_object_set_new(m, "kind", json_string(kind));
    json_object_set_new(m, "epoch", json_integer(epoch));
    json_object_set_new(m, "step", json_integer(step));
    json_object_set_new(m, "loss", json_real(loss));
    json_object_set_new(m, "align", json_real(loss / 2));
    json_object_set_new(m, "uniform", json_real(-loss));
    json_object_set_new(m, "collapse", json_real(0.1));
    json_object_set_new(m, "tau", json_real(0.99));
    cr_assert_eq(rw_frame_send_fd(fd, m), 0);
    json_decref(m);
}

static void fake_epoch(int fd, long long job, long long attempt, int epoch, double loss)
{
    fake_metric(fd, job, attempt, "epoch", epoch, 4L * epoch, loss);
}

/* What a cancelled attempt reports between cancel_job and its "stopped" is
 * the job's: the epochs it finished meanwhile are in the checkpoint it
 * writes as it stops, and a requeued attempt resumes after them. Dropped,
 * they would be missing for good (CI saw 299 of 300 epochs). Its metrics,
 * logs and TensorBoard points are kept; a report after "stopped" is not. */
Test(daemon_dist, a_cancelled_attempts_last_reports_are_kept, .init = fx_setup, .fini = fx_teardown,
     .timeout = 60)
{
    rw_frame_reader r;
    int fd = fake_worker(&r);
    char path[128], out[4096], id[32];
    /* three jobs for three idle workers: one is ours */
    snprintf(path, sizeof path, "%s/late.yaml", fx.dir);
    fx_write_grid(path, "late", 2, 0, "  seed: [0, 1, 2]\n");
    int rc = fx_cli(out, sizeof out, 20, "submit", path, NULL);
    cr_assert_eq(rc, 0, "%s", out);
    json_t *as = fake_wait(fd, &r, "assign", -1, 20);
    long long job = json_integer_value(json_object_get(as, "job"));
    long long att = json_integer_value(json_object_get(as, "attempt"));
    cr_assert_eq(json_integer_value(json_object_get(as, "rank")), 0);
    json_decref(as);
    fake_epoch(fd, job, att, 1, 0.5);
    fx_wait_for("epoch 1", "SELECT COUNT(*) FROM metrics WHERE job_id=? AND kind='epoch'", job, 1,
                10);

    snprintf(id, sizeof id, "j%lld", job);
    rc = fx_cli(out, sizeof out, 20, "cancel", id, NULL);
    cr_assert(rc == 0 && strstr(out, "cancelled 1 job"), "%s", out);
    json_decref(fake_wait_holding(fd, &r, "cancel_job", -1, job, 10));
    /* sent before it heard cancel_job, or on the way to its checkpoint */
    fake_epoch(fd, job, att, 2, 0.25);
    json_t *m = kv_msg("log", -1, job, att, NULL);
    json_object_set_new(m, "line", json_string("stopped at step 9; checkpoint late.ckpt"));
    cr_assert_eq(rw_frame_send_fd(fd, m), 0);
    json_decref(m);
    m = kv_msg("stopped", -1, job, att, NULL);
    cr_assert_eq(rw_frame_send_fd(fd, m), 0);
    json_decref(m);
    /* the attempt is over: this one belongs to nothing */
    fake_epoch(fd, job, att, 3, 0.125);
    /* a request on the same connection: its reply comes after all that was
     * handled */
    m = kv_msg("kv_get", 20, job, att, "k");
    json_object_set_new(m, "timeout_ms", json_integer(0));
    json_t *e = fake_call(fd, &r, m, "error");
    cr_assert_str_eq(code_of(e), RW_E_STATE);
    json_decref(e);

    sqlite3 *db = fx_open_db();
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(*) FROM metrics WHERE job_id=? AND kind='epoch'", job), 2);
    cr_assert_eq(
        fx_db_num(db, "SELECT loss FROM metrics WHERE job_id=? AND kind='epoch' AND epoch=2", job),
        0.25);
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(*) FROM metrics WHERE job_id=? AND attempt_id<>"
                               "(SELECT MAX(id) FROM attempts WHERE job_id=?1)", job), 0);
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(*) FROM events WHERE job_id=? AND kind='log' AND "
                               "text='stopped at step 9; checkpoint late.ckpt'", job), 1);
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(*) FROM events WHERE job_id=? AND text LIKE "
                               "'%ended after cancel_job: stopped%'", job), 1);
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(*) FROM attempts WHERE job_id=? AND "
                               "outcome='cancelled'", job), 1);
    sqlite3_close(db);
    /* both points in the attempt's one event file, as in the database */
    fx_check_tensorboard(job, 0, "tb_check: 1 runs, 1 files,");
    close(fd);
    rw_frame_reader_free(&r);
    fx_expect_still_serving();
}

/* Our fake worker's `done` of an attempt after `epochs` epochs. */
static void fake_done(int fd, long long job, long long attempt, int epochs);
static void occupy_the_real_workers(void);

/* An attempt stopped after an epoch's last step, before the epoch's end (a
 * cancel seen there, or a kill after a timed checkpoint there): the next
 * attempt's first report is that epoch's mean, at the step of the earlier
 * attempt's last step mean, which no attempt sends again. Its TensorBoard
 * file's restart marker at that step must not lose that point (chaos runs
 * found it missing). */
Test(daemon_dist, a_resumed_attempt_keeps_the_points_it_does_not_send_again, .init = fx_setup,
     .fini = fx_teardown, .timeout = 90)
{
    rw_frame_reader r;
    int fd = fake_worker(&r);
    occupy_the_real_workers(); /* the job and its next attempt come to us */
    fx_submit_grid("edge", 3, 1, "  seed: [0]\n");
    json_t *as = fake_wait(fd, &r, "assign", -1, 20);
    long long job = json_integer_value(json_object_get(as, "job"));
    long long a1 = json_integer_value(json_object_get(as, "attempt"));
    json_decref(as);
    fake_metric(fd, job, a1, "step", 1, 2, 0.9);
    fake_metric(fd, job, a1, "step", 1, 4, 0.8);
    fake_metric(fd, job, a1, "epoch", 1, 4, 0.85);
    fake_metric(fd, job, a1, "step", 2, 6, 0.7);
    fake_metric(fd, job, a1, "step", 2, 8, 0.6); /* epoch 2's last step; then the stop */
    fx_wait_for("5 reports", "SELECT COUNT(*) FROM metrics WHERE job_id=?", job, 5, 10);
    char id[32], out[4096];
    snprintf(id, sizeof id, "j%lld", job);
    int rc = fx_cli(out, sizeof out, 20, "cancel", id, NULL);
    cr_assert_eq(rc, 0, "%s", out);
    json_decref(fake_wait_holding(fd, &r, "cancel_job", -1, job, 10));
    json_t *m = kv_msg("stopped", -1, job, a1, NULL);
    cr_assert_eq(rw_frame_send_fd(fd, m), 0);
    json_decref(m);
    fx_wait_job(job, "cancelled", 10);
    rc = fx_cli(out, sizeof out, 20, "requeue", id, NULL);
    cr_assert_eq(rc, 0, "%s", out);

    as = fake_wait(fd, &r, "assign", -1, 20);
    long long a2 = json_integer_value(json_object_get(as, "attempt"));
    json_decref(as);
    cr_assert_neq(a2, a1);
    fake_metric(fd, job, a2, "epoch", 2, 8, 0.65); /* resumed at step 8: the epoch's end */
    fake_metric(fd, job, a2, "step", 3, 10, 0.5);
    fake_metric(fd, job, a2, "step", 3, 12, 0.4);
    fake_metric(fd, job, a2, "epoch", 3, 12, 0.45);
    fake_done(fd, job, a2, 3);
    fx_wait_job(job, "done", 10);
    /* every stored point once, train/loss at step 8 among them */
    fx_check_tensorboard(job, 0, "tb_check: 1 runs, 2 files,");
    close(fd);
    rw_frame_reader_free(&r);
}

static void fake_done(int fd, long long job, long long attempt, int epochs)
{
    json_t *m = kv_msg("done", -1, job, attempt, NULL);
    const char *nums[] = {"loss", "align", "uniform", "collapse", "linear_acc", "align_last10",
                          "uniform_last10"};
    for (size_t k = 0; k < sizeof nums / sizeof *nums; k++)
        json_object_set_new(m, nums[k], json_real(0.5));
    json_object_set_new(m, "epoch", json_integer(epochs));
    json_object_set_new(m, "step", json_integer(4 * epochs));
    cr_assert_eq(rw_frame_send_fd(fd, m), 0);
    json_decref(m);
}

/* Waits until `n` of the daemon's own workers are connected and idle. Our
 * fake worker (remote: it has no slot) does not count: taken for a real
 * one, it would get a busy job while a real worker stays idle and takes
 * the job the test meant for the fake (seen once in seven runs on a loaded
 * machine). */
static void wait_idle_workers(int n)
{
    for (double t0 = fx_now(); fx_now() - t0 < 20;) {
        json_t *r = fx_ask_simple("workers", NULL, NULL);
        size_t i;
        json_t *v;
        int idle = 0;
        json_array_foreach(json_object_get(r, "workers"), i, v) idle +=
            !strcmp(json_string_value(json_object_get(v, "state")), "idle") &&
            !json_is_true(json_object_get(v, "remote"));
        json_decref(r);
        if (idle >= n)
            return;
        usleep(50000);
    }
    cr_assert_fail("fewer than %d idle workers after 20 s", n);
}

static json_t *grid_progress_of(const char *grid)
{
    json_t *r = fx_ask_simple("ls", "grid", grid);
    json_t *p = json_incref(json_object_get(r, "progress"));
    json_decref(r);
    cr_assert(json_is_object(p), "ls %s: no progress", grid);
    return p;
}

/* Reads a watch connection until an epoch metric of `job`. */
static json_t *next_epoch_event(int fd, rw_frame_reader *r, long long job)
{
    for (double t0 = fx_now(); fx_now() - t0 < 10;) {
        json_t *m = fx_recv(fd, r, 200);
        if (m && !strcmp(json_string_value(json_object_get(m, "kind")) ?: "", "metric") &&
            json_integer_value(json_object_get(m, "job")) == job)
            return m;
        json_decref(m);
    }
    cr_assert_fail("no epoch event of j%lld within 10 s", job);
    return NULL;
}

/* The two real workers busy with long jobs (grids busy0 and busy1, g1 and
 * g2), so that what comes next waits for, or runs on, a fake worker. */
static void occupy_the_real_workers(void)
{
    wait_idle_workers(2);
    fx_submit_grid("busy0", 50000, 0, "  seed: [0]\n");
    fx_submit_grid("busy1", 50000, 0, "  seed: [0]\n");
    fx_wait_jobs("running", 2, 20);
}

/* The time left: a job's, at the pace of its attempt, on each epoch line of
 * watch; a grid's in `ls GRID` (and watch), replaying the FIFO queue with
 * each job's duration taken from a finished sibling, or from a running one's
 * pace. Our fake worker sets the pace; the two real workers are kept busy
 * with long jobs so that the grid's second job waits for it. */
Test(daemon_dist, watch_and_ls_estimate_the_time_left, .init = fx_setup, .fini = fx_teardown,
     .timeout = 90)
{
    occupy_the_real_workers(); /* they come first in the scheduler's order */
    char path[128], out[8192];
    rw_frame_reader r;
    int fd = fake_worker(&r);
    snprintf(path, sizeof path, "%s/eta.yaml", fx.dir);
    fx_write_grid(path, "eta", 10, 0, "  seed: [0, 1]\n");
    double t_submit = fx_now();
    int rc = fx_cli(out, sizeof out, 20, "submit", path, NULL);
    cr_assert_eq(rc, 0, "%s", out);
    json_t *as = fake_wait(fd, &r, "assign", -1, 20);
    double t_assign = fx_now();
    long long job = json_integer_value(json_object_get(as, "job"));
    long long att = json_integer_value(json_object_get(as, "attempt"));
    json_decref(as);

    /* nothing finished, no epoch: not known yet */
    json_t *p = grid_progress_of("eta");
    cr_assert(json_is_null(json_object_get(p, "left_s")) &&
                  json_integer_value(json_object_get(p, "running")) == 1 &&
                  json_integer_value(json_object_get(p, "queued")) == 1,
              "%s", json_dumps(p, 0));
    json_decref(p);
    rc = fx_cli(out, sizeof out, 20, "ls", "eta", NULL);
    cr_assert(rc == 0 && strstr(out, "eta: 0 done, 1 running, 1 queued; time left not known yet"),
              "%s", out);

    /* epoch 1 after ~1 s: 9 more at that pace for this job; the grid's
     * other job runs 10 of them after it, on our worker (the others are busy) */
    rw_frame_reader wr;
    int wfd = fx_client(&wr);
    json_t *w = rw_msg_new("watch", 3);
    json_object_set_new(w, "target", json_string("eta"));
    json_decref(fx_request(wfd, &wr, w));
    usleep(1000000);
    double t_sent = fx_now();
    fake_epoch(fd, job, att, 1, 0.5);
    json_t *ev = next_epoch_event(wfd, &wr, job);
    double t_event = fx_now();
    double pace_lo = t_sent - t_assign, pace_hi = t_event - t_submit;
    cr_assert_eq(json_integer_value(json_object_get(ev, "epochs")), 10);
    double left = json_real_value(json_object_get(ev, "left_s"));
    cr_assert(left >= 9 * pace_lo && left <= 9 * pace_hi, "left %.3f s, pace %.3f..%.3f s", left,
              pace_lo, pace_hi);
    json_decref(ev);
    close(wfd);
    rw_frame_reader_free(&wr);
    p = grid_progress_of("eta");
    double t_ls = fx_now();
    double gl = json_real_value(json_object_get(p, "left_s"));
    cr_assert(gl >= 19 * pace_lo - (t_ls - t_sent) && gl <= 19 * pace_hi,
              "grid left %.3f s, pace %.3f..%.3f s", gl, pace_lo, pace_hi);
    json_decref(p);
    char id[32];
    snprintf(id, sizeof id, "j%lld", job);
    rc = fx_cli(out, sizeof out, 20, "show", id, NULL);
    cr_assert(rc == 0 && strstr(out, "progress   epoch 1 of 10, ~") &&
                  strstr(out, "s of training left\n"),
              "%s", out);

    /* the first job done: its duration is the second's estimate */
    double t_done = fx_now();
    fake_done(fd, job, att, 10);
    json_t *as2 = fake_wait(fd, &r, "assign", -1, 20);
    long long job2 = json_integer_value(json_object_get(as2, "job"));
    cr_assert_neq(job2, job);
    p = grid_progress_of("eta");
    t_ls = fx_now();
    sqlite3 *db = fx_open_db();
    double dur = fx_db_num(db, "SELECT finished - started FROM jobs WHERE id=?", job);
    sqlite3_close(db);
    gl = json_real_value(json_object_get(p, "left_s"));
    cr_assert(json_integer_value(json_object_get(p, "done")) == 1 && dur > 1 &&
                  gl <= dur + 1e-6 && gl >= dur - (t_ls - t_done) - 1e-6,
              "left %.3f s of a %.3f s job assigned %.3f s ago at most", gl, dur, t_ls - t_done);
    json_decref(p);
    rc = fx_cli(out, sizeof out, 20, "ls", "eta", NULL);
    cr_assert(rc == 0 && strstr(out, "eta: 1 done, 1 running, 0 queued; ~") &&
                  strstr(out, " left (estimate)\n"),
              "%s", out);
    /* every grid in one list: the busy ones run at their pace too */
    rc = fx_cli(out, sizeof out, 20, "grids", NULL);
    const char *g3 = strstr(out, "g3    eta ");
    cr_assert(rc == 0 && strstr(out, "g1    busy0 ") && strstr(out, "g2    busy1 ") && g3 &&
                  strstr(g3, "prio 0  : 1 done, 1 running, 0 queued; ~") &&
                  strstr(out, ": 0 done, 1 running, 0 queued; ~"),
              "%s", out);

    /* the random baseline's one pass says nothing of how long a trained
     * variant takes: with only that finished, the next is not known yet */
    fake_done(fd, job2, json_integer_value(json_object_get(as2, "attempt")), 10);
    snprintf(path, sizeof path, "%s/mix.yaml", fx.dir);
    fx_write_grid(path, "mix", 10, 0,
                  "  seed: [0]\n  variant:\n    - {name: base, optim: {epochs: 0}}\n"
                  "    - {name: slow}\n");
    rc = fx_cli(out, sizeof out, 20, "submit", path, NULL);
    cr_assert_eq(rc, 0, "%s", out);
    as = fake_wait(fd, &r, "assign", -1, 20);
    long long jb = json_integer_value(json_object_get(as, "job"));
    long long ab = json_integer_value(json_object_get(as, "attempt"));
    json_decref(as);
    fake_epoch(fd, jb, ab, 0, 0.5);
    usleep(300000);
    fake_done(fd, jb, ab, 0);
    as = fake_wait(fd, &r, "assign", -1, 20);
    json_decref(as);
    p = grid_progress_of("mix");
    cr_assert(json_integer_value(json_object_get(p, "done")) == 1 &&
                  json_integer_value(json_object_get(p, "running")) == 1 &&
                  json_is_null(json_object_get(p, "left_s")),
              "%s", json_dumps(p, 0));
    json_decref(p);
    json_decref(as2);
    close(fd);
    rw_frame_reader_free(&r);
}

/* A job that waits for two workers holds nobody back: the job behind it
 * runs on the idle worker meanwhile, and yields once the waiting job's
 * workers come (it stops with a checkpoint, is queued again, and resumes).
 * The two real workers are busy with long jobs; our fake worker is idle. */
Test(daemon_dist, a_waiting_job_lets_the_next_run_until_its_workers_come, .init = fx_setup,
     .fini = fx_teardown, .timeout = 90)
{
    occupy_the_real_workers();
    char path[128], out[8192];
    rw_frame_reader r;
    int fd = fake_worker(&r);
    fx_submit_grid("wide", 2, 0, "  variant:\n    - {name: a, devices: 2}\n");
    fx_submit_grid("small", 2, 0, "  seed: [0]\n");
    sqlite3 *db = fx_open_db();
    long long wide = (long long)fx_db_num(db, "SELECT MIN(id) FROM jobs WHERE devices=2", 0);
    long long small = (long long)fx_db_num(db, "SELECT MAX(id) FROM jobs", 0);
    sqlite3_close(db);
    cr_assert(wide > 0 && small > wide);

    /* strict FIFO would leave our worker idle behind the wide job */
    json_t *as = fake_wait(fd, &r, "assign", -1, 20);
    cr_assert_eq(json_integer_value(json_object_get(as, "job")), small);
    long long att = json_integer_value(json_object_get(as, "attempt"));
    json_decref(as);
    db = fx_open_db();
    cr_assert_eq(fx_db_num(db, "SELECT state='queued' FROM jobs WHERE id=?", wide), 1);
    char like[160];
    snprintf(like, sizeof like, "SELECT COUNT(*) FROM events WHERE job_id=? AND text LIKE "
             "'%%ahead of j%lld, which waits%%'", wide);
    cr_assert_eq(fx_db_num(db, like, small), 1, "no event says the small job went ahead");
    sqlite3_close(db);
    fake_epoch(fd, small, att, 1, 0.5);
    fx_wait_for("epoch 1", "SELECT COUNT(*) FROM metrics WHERE job_id=? AND kind='epoch'", small, 1, 10);

    /* a real worker frees: with ours, the wide job's two; the small job
     * yields, and its watchers are told why */
    rw_frame_reader wr;
    int wfd = fx_client(&wr);
    json_t *w = rw_msg_new("watch", 3);
    json_object_set_new(w, "target", json_string("small"));
    json_decref(fx_request(wfd, &wr, w));
    int rc = fx_cli(out, sizeof out, 20, "cancel", "busy0", NULL);
    cr_assert_eq(rc, 0, "%s", out);
    json_decref(fake_wait_holding(fd, &r, "cancel_job", -1, small, 20));
    /* its state is written just after cancel_job goes out */
    fx_wait_job(small, "queued", 10);
    db = fx_open_db();
    cr_assert_eq(fx_db_num(db, "SELECT outcome='preempted' FROM attempts WHERE id=?", att), 1);
    snprintf(like, sizeof like, "SELECT COUNT(*) FROM events WHERE job_id=? AND text LIKE "
             "'yields to j%lld, which needs 2 workers%%'", wide);
    cr_assert_eq(fx_db_num(db, like, small), 1, "no event says the small job yielded");
    sqlite3_close(db);
    snprintf(like, sizeof like, "yields to j%lld, which needs 2 workers", wide);
    json_t *ev = NULL;
    for (double t0 = fx_now(); !ev && fx_now() - t0 < 10;) {
        json_t *f = fx_recv(wfd, &wr, 200);
        json_t *j = json_object_get(f, "job");
        if (j && !strcmp(json_string_value(json_object_get(j, "state")) ?: "", "queued"))
            ev = json_incref(f);
        json_decref(f);
    }
    cr_assert(ev && strstr(json_string_value(json_object_get(ev, "why")) ?: "", like),
              "watch: %s", ev ? json_dumps(ev, 0) : "no queued event within 10 s");
    json_decref(ev);
    close(wfd);
    rw_frame_reader_free(&wr);
    json_t *st = kv_msg("stopped", -1, small, att, NULL);
    cr_assert_eq(rw_frame_send_fd(fd, st), 0);
    json_decref(st);
    as = fake_wait(fd, &r, "assign", -1, 20);
    cr_assert_eq(json_integer_value(json_object_get(as, "job")), wide);
    cr_assert_eq(json_integer_value(json_object_get(as, "world")), 2);
    long long watt = json_integer_value(json_object_get(as, "attempt"));
    json_decref(as);

    /* the wide job cancelled, the small one resumes (where it stopped) */
    snprintf(path, sizeof path, "j%lld", wide);
    rc = fx_cli(out, sizeof out, 20, "cancel", path, NULL);
    cr_assert_eq(rc, 0, "%s", out);
    json_decref(fake_wait_holding(fd, &r, "cancel_job", -1, wide, 20));
    st = kv_msg("stopped", -1, wide, watt, NULL);
    cr_assert_eq(rw_frame_send_fd(fd, st), 0);
    json_decref(st);
    /* the event, not the attempt's row: the daemon writes the row first */
    fx_wait_for("the attempt that resumes", "SELECT COUNT(*) FROM events WHERE job_id=? AND text "
                "LIKE 'attempt % (resuming)%'", small, 1, 30);
    db = fx_open_db();
    cr_assert_eq(fx_db_num(db, "SELECT COUNT(*) FROM attempts WHERE job_id=?", small), 2);
    sqlite3_close(db);
    close(fd);
    rw_frame_reader_free(&r);
    fx_expect_still_serving();
}

/* A worker that leaves right behind its last reports, as one stopped by
 * Slurm's signal does (its log lines and metrics, then "stopped" with
 * "preempted", then exit): every frame that came before the close counts.
 * The daemon served 8 frames a turn and closed the connection at the end
 * of its stream, dropping the rest: the attempt was lost, not preempted
 * (issue 22, found by tools/slurm/check on a loaded machine). */
Test(daemon_dist, a_leaving_workers_last_reports_are_kept, .init = fx_setup,
     .fini = fx_teardown, .timeout = 60)
{
    rw_frame_reader r;
    int fd = fake_worker(&r);
    occupy_the_real_workers();
    fx_submit_grid("leave", 3, 1, "  seed: [0]\n");
    json_t *as = fake_wait(fd, &r, "assign", -1, 20);
    long long job = json_integer_value(json_object_get(as, "job"));
    long long att = json_integer_value(json_object_get(as, "attempt"));
    json_decref(as);
    /* 20 log lines and the report in one write, then the close */
    char *all = NULL;
    size_t len = 0;
    for (int i = 0; i <= 20; i++) {
        json_t *m = kv_msg(i < 20 ? "log" : "stopped", -1, job, att, NULL);
        if (i < 20)
            json_object_set_new(m, "line", json_string("on the way out"));
        else
            json_object_set_new(m, "preempted", json_string("SIGUSR1"));
        char *b;
        size_t n;
        cr_assert_eq(rw_frame_encode(m, &b, &n), 0);
        json_decref(m);
        all = realloc(all, len + n);
        memcpy(all + len, b, n);
        len += n;
        free(b);
    }
    cr_assert_eq(rw_fd_write_all(fd, all, len), 0);
    free(all);
    close(fd);
    rw_frame_reader_free(&r);
    fx_wait_for("the attempt preempted", "SELECT COUNT(*) FROM attempts WHERE job_id=? AND "
                "outcome='preempted'", job, 1, 10);
    sqlite3 *db = fx_open_db();
    cr_expect_eq(fx_db_num(db, "SELECT COUNT(*) FROM events WHERE job_id=? AND kind='log' AND "
                               "text='on the way out'", job), 20);
    cr_expect_eq(fx_db_num(db, "SELECT state='queued' FROM jobs WHERE id=?", job), 1);
    sqlite3_close(db);
    fx_expect_still_serving();
}
