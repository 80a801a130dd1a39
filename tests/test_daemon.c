/* runawayd end to end: a daemon with 2 CPU slots in a temporary state
 * directory, hostile frames, a tiny grid through the CLI, a worker killed
 * (and one frozen) mid-job, SIGTERM, and the CLI's errors. Every wait has a
 * deadline; the fixture kills the daemon (its workers die with it through
 * PR_SET_PDEATHSIG) whatever happens. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "daemon_fixture.h"

/* ------------------------------------------------------------------------ */
/* Hostile clients */

Test(daemon, hostile_frames_get_errors_and_the_daemon_serves_on, .init = fx_setup,
     .fini = fx_teardown, .timeout = 60)
{
    /* oversized: judged by the header (4 GiB announced; before hello the
     * limit is 4 KiB, after it 1 MiB) */
    unsigned char huge[4] = {0xff, 0xff, 0xff, 0xff};
    fx_expect_rejected(huge, 4, 0, RW_E_FRAME);
    fx_expect_rejected(huge, 4, 1, RW_E_FRAME);
    unsigned char k5[4] = {0, 0, 0x14, 0}; /* 5120 bytes before hello */
    fx_expect_rejected(k5, 4, 0, RW_E_FRAME);
    fx_expect_rejected_body("{\"type\": \"hel", 0, RW_E_FRAME); /* truncated JSON in a frame */
    fx_expect_rejected_body("[1, 2, 3]", 1, RW_E_FRAME);         /* not an object */
    fx_expect_rejected_body("{\"type\":\"status\",\"id\":1}", 0, RW_E_HELLO); /* hello first */
    fx_expect_rejected_body("{\"type\":\"hello\",\"id\":1,\"version\":99,\"role\":\"client\"}", 0,
                            RW_E_VERSION);
    fx_expect_rejected_body("{\"type\":\"hello\",\"id\":1,\"version\":2,\"role\":\"boss\"}", 0,
                            RW_E_BAD_MESSAGE);
    fx_expect_rejected_body("{\"type\":\"launch_missiles\",\"id\":3}", 1, RW_E_UNKNOWN_TYPE);
    /* a worker's */
    fx_expect_rejected_body("{\"type\":\"done\",\"job\":1,\"attempt\":1}", 1, RW_E_UNKNOWN_TYPE);
    fx_expect_rejected_body("{\"type\":\"show\",\"id\":3,\"job\":17}", 1, RW_E_BAD_MESSAGE);
    fx_expect_rejected_body(
        "{\"type\":\"hello\",\"id\":1,\"version\":2,\"role\":\"worker\",\"slot\":99}", 0,
        RW_E_STATE);

    /* a truncated frame, then the client vanishes: nothing to reply to */
    int fd = fx_connect();
    unsigned char part[6] = {0, 0, 0, 50, '{', '"'};
    rw_fd_write_all(fd, part, sizeof part);
    close(fd);
    fx_expect_still_serving();

    /* silence after connecting: dropped after 10 s with a hello error (the
     * other checks above ran meanwhile on other connections) */
    int idle = fx_connect();
    double t_idle = fx_now();

    /* a request for something that does not exist is an error, not a close */
    rw_frame_reader r;
    fd = fx_client(&r);
    json_t *m = rw_msg_new("show", 5);
    json_object_set_new(m, "job", json_string("j4242"));
    json_t *e = fx_request(fd, &r, m);
    cr_assert_str_eq(json_string_value(json_object_get(e, "code")), RW_E_NOT_FOUND);
    json_decref(e);
    m = rw_msg_new("status", 6);
    e = fx_request(fd, &r, m);
    cr_assert_str_eq(json_string_value(json_object_get(e, "type")), "ok");
    json_decref(e);
    close(fd);
    rw_frame_reader_free(&r);

    rw_frame_reader ri;
    rw_frame_reader_init(&ri, 0);
    json_t *he = fx_recv(idle, &ri, 15000);
    cr_assert_not_null(he, "an idle connection was not dropped");
    cr_assert_str_eq(json_string_value(json_object_get(he, "code")), RW_E_HELLO);
    cr_assert_geq(fx_now() - t_idle, 8.0);
    json_decref(he);
    cr_assert(fx_closed_by_peer(idle, 3000));
    close(idle);
    rw_frame_reader_free(&ri);
    fx_expect_still_serving();

    /* the socket is the owner's only */
    struct stat st;
    cr_assert_eq(stat(fx.sock, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600, "socket mode %o", st.st_mode & 0777);
}

/* ------------------------------------------------------------------------ */
/* A grid through the CLI */

static void stats(const double *x, int n, double *mean, double *sd)
{
    double s = 0, ss = 0;
    for (int i = 0; i < n; i++)
        s += x[i];
    *mean = s / n;
    for (int i = 0; i < n; i++)
        ss += (x[i] - *mean) * (x[i] - *mean);
    *sd = n > 1 ? sqrt(ss / (n - 1)) : 0;
}

static void expect_close(double a, double b, const char *what)
{
    cr_assert(fabs(a - b) <= 1e-9 * (1 + fabs(b)), "%s: table %.12g, recomputed %.12g", what, a, b);
}

/* The TensorBoard event files against the database, read by
 * tests/tb_check.py (its own TFRecord and protobuf decoding; see there).
 * job 0: every job with metrics. */
#define FX_TB_PURGE 1 /* a resumed attempt's restart marker must drop points */
#define FX_TB_GAPS 2  /* points may be missing (skipped while the disk was full) */

/* runaway plot on the finished 2 x 2 grid g1 (tiny: byol, byol-np; seeds
 * 0, 1; 2 epochs): a PNG of the drawn size, data files whose values are the
 * per-epoch means over seeds of the stored metrics (each epoch's newest
 * row), a text rendering, and clear errors. */
static void check_plot(void)
{
    char out[16384], png[256], data[256];
    snprintf(png, sizeof png, "%s/curves.png", fx.dir);
    snprintf(data, sizeof data, "%s/curves", fx.dir);
    int rc = fx_cli(out, sizeof out, 30, "plot", "g1", "-o", png, "--data", data, NULL);
    cr_assert_eq(rc, 0, "%s", out);
    unsigned char h[24];
    FILE *f = fopen(png, "rb");
    cr_assert_not_null(f, "no %s", png);
    cr_assert_eq(fread(h, 1, sizeof h, f), sizeof h);
    fclose(f);
    cr_assert(memcmp(h, "\x89PNG\r\n\x1a\n", 8) == 0 && memcmp(h + 12, "IHDR", 4) == 0);
    unsigned wpx = (unsigned)h[16] << 24 | h[17] << 16 | h[18] << 8 | h[19];
    unsigned hpx = (unsigned)h[20] << 24 | h[21] << 16 | h[22] << 8 | h[23];
    cr_expect(wpx == 2000 && hpx == 1350, "png %ux%u", wpx, hpx);

    sqlite3 *db = fx_open_db();
    const char *variants[2] = {"byol", "byol-np"};
    char trace[2][160]; /* each variant's trace in plot.gp: its file, its last epoch marked */
    for (int v = 0; v < 2; v++) {
        char p[300], line[512], name[64];
        snprintf(p, sizeof p, "%s/curve%d.dat", data, v);
        f = fopen(p, "r");
        cr_assert_not_null(f, "no %s", p);
        cr_assert_not_null(fgets(line, sizeof line, f));
        snprintf(name, sizeof name, "# %s: mean over 2 jobs", variants[v]);
        cr_assert(strncmp(line, name, strlen(name)) == 0, "%s: %s", p, line);
        int rows = 0;
        while (fgets(line, sizeof line, f)) {
            if (line[0] == '#')
                continue;
            double e, loss, al, un, co, rk;
            char knn[32], lin[32], wi[32];
            cr_assert_eq(sscanf(line, "%lf %lf %lf %lf %lf %31s %lf %31s %31s", &e, &loss, &al, &un,
                                &co, knn, &rk, lin, wi), 9, "%s", line);
            cr_expect_str_eq(knn, "?", "kNN is off in this grid");
            cr_expect_str_eq(wi, "?", "no linear predictor in this grid");
            if (v == 0)
                cr_expect_str_eq(lin, "?", "byol: no eval.linear.every");
            else
                cr_expect(strtod(lin, NULL) > 0, "byol-np: linear %s", lin);
            const char *q = "SELECT AVG(%s) FROM metrics WHERE id IN (SELECT MAX(m.id) FROM metrics "
                            "m JOIN jobs j ON j.id=m.job_id WHERE j.grid_id=1 AND j.variant='%s' "
                            "AND m.kind='epoch' AND m.epoch=? GROUP BY m.job_id)";
            const char *cols[5] = {"loss", "align", "uniform", "collapse", "rank"};
            double got[5] = {loss, al, un, co, rk};
            for (int k = 0; k < 5; k++) {
                char sql[512];
                snprintf(sql, sizeof sql, q, cols[k], variants[v]);
                double want = fx_db_num(db, sql, (long long)e);
                cr_expect(fabs(got[k] - want) <= 1e-7 * (1 + fabs(want)),
                          "%s epoch %.0f %s: plotted %.9g, stored mean %.9g", variants[v], e,
                          cols[k], got[k], want);
            }
            snprintf(trace[v], sizeof trace[v], "'curve%d.dat' using 4:3 with linespoints ls %d "
                     "title '%s', '+' using (%.9g):(%.9g) ", v, v + 1, variants[v], un, al);
            rows++;
        }
        fclose(f);
        cr_expect_eq(rows, 2, "%s: %d epochs", p, rows);
    }
    sqlite3_close(db);
    {
        char p[300], gp[16384];
        snprintf(p, sizeof p, "%s/plot.gp", data);
        f = fopen(p, "r");
        cr_assert_not_null(f, "no %s", p);
        gp[fread(gp, 1, sizeof gp - 1, f)] = 0;
        fclose(f);
        for (int v = 0; v < 2; v++)
            cr_expect(strstr(gp, trace[v]), "plot.gp has no trace '%s':\n%s", trace[v], gp);
    }

    /* text, a single job, errors */
    rc = fx_cli(out, sizeof out, 30, "plot", "tiny", "--size", "60x12", NULL);
    cr_assert(rc == 0 && strstr(out, "L_uniform(f)") && strstr(out, "byol-np") &&
                  strstr(out, "grid g1 tiny"), "%s", out);
    snprintf(data, sizeof data, "%s/curves-j2", fx.dir);
    rc = fx_cli(out, sizeof out, 30, "plot", "j2", "--data", data, NULL);
    cr_assert_eq(rc, 0, "%s", out);
    char p[300], line[256];
    snprintf(p, sizeof p, "%s/curve0.dat", data);
    f = fopen(p, "r");
    cr_assert_not_null(f);
    cr_assert_not_null(fgets(line, sizeof line, f));
    fclose(f);
    cr_expect(strstr(line, "tiny/byol/seed1: mean over 1 job "), "%s", line);
    /* live mode on an ended grid: one drawing, then it says so and ends */
    rc = fx_cli(out, sizeof out, 30, "plot", "g1", "-o", png, "--every", "0.5", NULL);
    cr_assert(rc == 0 && strstr(out, "every job has ended"), "%s", out);
    rc = fx_cli(out, sizeof out, 20, "plot", "g1", "--every", "0", NULL);
    cr_assert(rc != 0 && strstr(out, "--every takes seconds"), "%s", out);
    rc = fx_cli(out, sizeof out, 20, "plot", "g1", "-o", "/nonexistent/c.png", NULL);
    cr_assert(rc != 0 && strstr(out, "cannot write in /nonexistent"), "%s", out);
    rc = fx_cli(out, sizeof out, 20, "plot", "nosuch", NULL);
    cr_assert(rc != 0 && strstr(out, "no job or grid 'nosuch'"), "%s", out);
    setenv("RUNAWAY_GNUPLOT", "/nonexistent/gnuplot", 1);
    rc = fx_cli(out, sizeof out, 20, "plot", "g1", "-o", png, NULL);
    unsetenv("RUNAWAY_GNUPLOT");
    cr_assert(rc != 0 && strstr(out, "/nonexistent/gnuplot") && strstr(out, "gnuplot-nox"), "%s",
              out);
}

/* One page of the metrics request. */
static json_t *metrics_page(const char *target, const char *kind, long long after_job,
                            long long after, long long limit)
{
    rw_frame_reader r;
    int fd = fx_client(&r);
    json_t *m = rw_msg_new("metrics", 2);
    json_object_set_new(m, "target", json_string(target));
    json_object_set_new(m, "kind", json_string(kind));
    if (after_job >= 0) {
        json_object_set_new(m, "after_job", json_integer(after_job));
        json_object_set_new(m, "after", json_integer(after));
    }
    if (limit)
        json_object_set_new(m, "limit", json_integer(limit));
    json_t *rep = fx_request(fd, &r, m);
    close(fd);
    rw_frame_reader_free(&r);
    return rep;
}

/* runaway metrics on the finished 2 x 2 grid g1 (2 epochs each): one CSV
 * row per job and epoch with the stored values (the newest row of each),
 * pages that join without a gap or a repeat, and clear errors. */

/* Whole file into a malloc'd buffer; its size in *n. */
static unsigned char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s: %s", path, strerror(errno));
    cr_assert_eq(fseek(f, 0, SEEK_END), 0);
    long len = ftell(f);
    rewind(f);
    unsigned char *b = malloc(len > 0 ? (size_t)len : 1);
    cr_assert(b && fread(b, 1, (size_t)len, f) == (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return b;
}

/* export j1 from a client on another host, whose file at the checkpoint's
 * path is another (or none):
 * the checkpoint comes over the socket in chunks, and the weights written
 * are those of an export on runawayd's host (`local`), byte for byte. The
 * client's view is a mount namespace with a tmpfs over runs/ (root only:
 * elsewhere the protocol alone is checked). */
static void check_export_remote(const char *local)
{
    char ckpt[160];
    snprintf(ckpt, sizeof ckpt, "%s/runs/1/checkpoint.safetensors", fx.dir);
    size_t size;
    unsigned char *bytes = slurp(ckpt, &size);
    cr_assert_gt(size, 2000);
    /* a chunk: the file's bytes at the offset */
    json_t *m = rw_msg_new("export", 2);
    json_object_set_new(m, "job", json_string("j1"));
    json_object_set_new(m, "offset", json_integer(1000));
    json_object_set_new(m, "length", json_integer(500));
    json_t *r = fx_ask(m);
    const char *hex = json_string_value(json_object_get(r, "data"));
    cr_assert(hex && strlen(hex) == 1000, "%s", json_dumps(r, 0));
    unsigned char got[500];
    size_t n;
    cr_assert_eq(rw_hex_decode(hex, 1000, got, sizeof got, &n), 0);
    cr_assert(n == 500 && !memcmp(got, bytes + 1000, 500), "chunk at 1000 differs");
    cr_assert_eq(json_integer_value(json_object_get(r, "size")), (json_int_t)size);
    json_decref(r);
    m = rw_msg_new("export", 2);
    json_object_set_new(m, "job", json_string("j1"));
    json_object_set_new(m, "offset", json_integer((json_int_t)size + 1));
    fx_expect_error(fx_ask(m), RW_E_BAD_MESSAGE, "is past the checkpoint's");
    free(bytes);
    /* sphere computed by runawayd: what it refuses */
    m = rw_msg_new("sphere", 3);
    json_object_set_new(m, "job", json_string("j1"));
    json_object_set_new(m, "epoch", json_integer(7));
    fx_expect_error(fx_ask(m), RW_E_STATE, "job j1 has no snapshot of epoch 7 (");
    m = rw_msg_new("sphere", 3);
    json_object_set_new(m, "job", json_string("j1"));
    json_object_set_new(m, "samples", json_integer(2));
    fx_expect_error(fx_ask(m), RW_E_BAD_MESSAGE, "samples");
    m = rw_msg_new("sphere", 3);
    json_object_set_new(m, "job", json_string("j1"));
    json_object_set_new(m, "backend", json_string("tpu"));
    fx_expect_error(fx_ask(m), RW_E_BAD_MESSAGE, "backend: auto, cpu or cuda, not 'tpu'");

    char script[2048], exe[1100], tmp[160], out[8192], remote[160];
    fx_bin(exe, sizeof exe, "tools/runaway");
    snprintf(tmp, sizeof tmp, "%s/tmp", fx.dir);
    cr_assert_eq(mkdir(tmp, 0700), 0);
    snprintf(remote, sizeof remote, "%s/remote.safetensors", fx.dir);
    const char *probe[] = {"/usr/bin/unshare", "-m", "/bin/sh", "-c",
                           "mount -t tmpfs tmpfs /mnt || exit 77", NULL};
    if (geteuid() != 0 || fx_run(out, sizeof out, 20, probe) != 0) {
        fprintf(stderr, "daemon: export from another host: no mount namespace here (needs "
                "root); the protocol alone checked\n");
        rmdir(tmp);
        return;
    }
    /* 7000-byte chunks: a few hundred requests. That host has a file of
     * the same path (its own daemon's job 1, say): not the one to export */
    snprintf(script, sizeof script, "mount -t tmpfs tmpfs '%s/runs' && mkdir '%s/runs/1' && "
             "echo another > '%s/runs/1/checkpoint.safetensors' || exit 77; "
             "TMPDIR='%s' RUNAWAY_TEST_EXPORT_CHUNK=7000 exec '%s' --state-dir '%s' export j1 '%s'",
             fx.dir, fx.dir, fx.dir, tmp, exe, fx.dir, remote);
    const char *argv[] = {"/usr/bin/unshare", "-m", "/bin/sh", "-c", script, NULL};
    int rc = fx_run(out, sizeof out, 60, argv);
    cr_assert_eq(rc, 0, "%s", out);
    size_t na, nb;
    unsigned char *a = slurp(local, &na), *b = slurp(remote, &nb);
    cr_assert(na == nb && !memcmp(a, b, na), "the export from another host differs");
    free(a);
    free(b);
    cr_assert_eq(rmdir(tmp), 0, "the fetched checkpoint was left in %s", tmp);
    unlink(remote);
    /* sphere: that host has neither the training images nor the weights
     * (a folder of the path with other weights in it): runawayd computes
     * the projections where they are, and the numbers are those of a
     * client on its host */
    char here[8192];
    rc = fx_cli(here, sizeof here, 60, "sphere", "j1", "--samples", "40", "--backend", "cpu",
                "--snapshots", "3", NULL);
    cr_assert_eq(rc, 0, "%s", here);
    snprintf(script, sizeof script, "mount -t tmpfs tmpfs '%s/runs' && mkdir '%s/runs/1' && "
             "echo another > '%s/runs/1/weights.safetensors' || exit 77; "
             "exec '%s' --state-dir '%s' sphere j1 --samples 40 --backend cpu --snapshots 3",
             fx.dir, fx.dir, fx.dir, exe, fx.dir);
    rc = fx_run(out, sizeof out, 60, argv);
    cr_assert(rc == 0 && strstr(out, "j1: its run folder is on runawayd's host, not here: "
                                     "runawayd computes its projections there"), "%s", out);
    int rows = 0;
    for (char *line = strstr(here, "\ntiny/byol/seed0, epoch "); line;
         line = strstr(line + 1, "\ntiny/byol/seed0, epoch ")) {
        char want[256];
        snprintf(want, sizeof want, "%.*s", (int)strcspn(line + 1, "\n") + 2, line);
        cr_assert(strstr(out, want), "no '%s' from another host:\n%s", want + 1, out);
        rows++;
    }
    cr_assert_eq(rows, 3, "%s", here);
    /* its folders went with it */
    DIR *sd = opendir(fx.dir);
    struct dirent *de;
    while ((de = readdir(sd)))
        cr_assert(strncmp(de->d_name, "sphere-", 7), "%s/%s left behind", fx.dir, de->d_name);
    closedir(sd);
}

static void check_metrics_export(void)
{
    char csv[160], out[4096];
    snprintf(csv, sizeof csv, "%s/m.csv", fx.dir);
    int rc = fx_cli(out, sizeof out, 20, "metrics", "g1", "-o", csv, NULL);
    cr_assert(rc == 0 && strstr(out, "8 rows"), "%s", out);
    FILE *f = fopen(csv, "r");
    cr_assert_not_null(f);
    char line[1024];
    cr_assert_not_null(fgets(line, sizeof line, f));
    cr_expect_str_eq(line, "job,name,variant,seed,epoch,step,loss,align,uniform,collapse,knn,"
                           "pairs_per_s,tau,lr,rank,linear,w_cos_i,w_asym\n");
    sqlite3 *db = fx_open_db();
    int rows = 0;
    while (fgets(line, sizeof line, f)) {
        long long job, seed, epoch, step;
        char name[64], variant[32];
        double loss, align, uniform, collapse, pps, tau, lr, rank;
        cr_assert_eq(sscanf(line, "j%lld,%63[^,],%31[^,],%lld,%lld,%lld,%lf,%lf,%lf,%lf,,%lf,%lf,"
                                  "%lf,%lf",
                            &job, name, variant, &seed, &epoch, &step, &loss, &align, &uniform,
                            &collapse, &pps, &tau, &lr, &rank),
                     14, "%s", line);
        char want[64];
        snprintf(want, sizeof want, "tiny/%s/seed%lld", variant, seed);
        cr_expect_str_eq(name, want);
        const char *cols[4] = {"loss", "uniform", "lr", "rank"};
        double got[4] = {loss, uniform, lr, rank};
        for (int k = 0; k < 4; k++) {
            char sql[256];
            snprintf(sql, sizeof sql, "SELECT %s FROM metrics WHERE job_id=? AND kind='epoch' AND "
                                      "epoch=%lld ORDER BY id DESC LIMIT 1", cols[k], epoch);
            double v = fx_db_num(db, sql, job);
            cr_expect(fabs(got[k] - v) <= 1e-8 * (1 + fabs(v)), "j%lld epoch %lld %s: %.9g vs %.9g",
                      job, epoch, cols[k], got[k], v);
        }
        rows++;
    }
    fclose(f);
    sqlite3_close(db);
    cr_expect_eq(rows, 8);

    /* pages of 3: 3 + 3 + 2 rows, continuing where the last one stopped */
    long long aj = -1, ae = -1, seen = 0, prev = -1;
    for (int page = 0; page < 3; page++) {
        json_t *r = metrics_page("g1", "epoch", aj, ae, 3);
        json_t *rw = json_object_get(r, "rows");
        cr_assert_eq(json_array_size(rw), page < 2 ? 3u : 2u, "page %d", page);
        cr_assert_eq(json_is_true(json_object_get(r, "more")), page < 2);
        cr_assert_eq(json_object_get(r, "jobs") != NULL, page == 0, "the job list comes once");
        size_t i;
        json_t *row;
        json_array_foreach(rw, i, row)
        {
            aj = json_integer_value(json_array_get(row, 0));
            ae = json_integer_value(json_array_get(row, 1));
            cr_assert_gt(aj * 100 + ae, prev, "rows out of order or repeated");
            prev = aj * 100 + ae;
            seen++;
        }
        json_decref(r);
    }
    cr_expect_eq(seen, 8);
    /* no step metrics in this grid (log.every_steps 0): the header only */
    rc = fx_cli(out, sizeof out, 20, "metrics", "j1", "--steps", NULL);
    cr_assert(rc == 0 && !strchr(strchr(out, '\n') + 1, '\n'), "%s", out);
    rc = fx_cli(out, sizeof out, 20, "metrics", "nosuch", NULL);
    cr_assert(rc != 0 && strstr(out, "no job or grid 'nosuch'"), "%s", out);
    json_t *r = metrics_page("g1", "eras", -1, -1, 0);
    cr_expect(strstr(json_string_value(json_object_get(r, "message")) ?: "", "epoch or step"));
    json_decref(r);
    rc = fx_cli(out, sizeof out, 20, "metrics", "g1", "-o", "/nonexistent/m.csv", NULL);
    cr_assert(rc != 0 && strstr(out, "/nonexistent/m.csv"), "%s", out);
}

Test(daemon, grid_runs_and_table_matches_the_stored_metrics, .init = fx_setup, .fini = fx_teardown,
     .timeout = 90)
{
    char path[128], out[16384];
    snprintf(path, sizeof path, "%s/tiny.yaml", fx.dir);
    fx_write_grid(path, "tiny", 2, 0,
                  "  seed: [0, 1]\n"
                  "  variant:\n"
                  "    - {name: byol, checkpoint: {snapshot_every: 1}}\n"
                  "    - {name: byol-np, model: {predictor: none}, eval: {linear: {every: 1}}}\n");
    int rc = fx_cli(out, sizeof out, 20, "submit", path, NULL);
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert(strstr(out, "grid g1 tiny: 4 jobs") && strstr(out, "tiny/byol-np/seed1"), "%s", out);
    rc = fx_cli(out, sizeof out, 60, "watch", "g1", NULL);
    cr_assert_eq(rc, 0, "watch: %s", out);
    cr_assert(strstr(out, "epoch   2") != NULL, "watch showed no epochs:\n%s", out);
    cr_assert(strstr(out, "  linear ") != NULL, "watch showed no linear evaluation:\n%s", out);
    {
        /* eval.linear.every 1 (byol-np): a linear accuracy at every epoch,
         * the last one the job's result; none where it is not set */
        sqlite3 *db = fx_open_db();
        cr_expect_eq(fx_db_num(db, "SELECT COUNT(*) FROM metrics m JOIN jobs j ON j.id=m.job_id "
                                   "WHERE m.kind='epoch' AND j.variant='byol-np' AND "
                                   "m.linear BETWEEN 0 AND 1", 0), 4);
        cr_expect_eq(fx_db_num(db, "SELECT COUNT(*) FROM metrics m JOIN jobs j ON j.id=m.job_id "
                                   "WHERE m.kind='epoch' AND m.epoch=2 AND j.variant='byol-np' AND "
                                   "m.linear = j.linear_acc", 0), 2);
        cr_expect_eq(fx_db_num(db, "SELECT COUNT(*) FROM metrics m JOIN jobs j ON j.id=m.job_id "
                                   "WHERE j.variant='byol' AND m.linear IS NOT NULL", 0), 0);
        sqlite3_close(db);
    }

    /* the daemon's table */
    json_t *t = fx_ask_simple("table", "grid", "tiny");
    json_t *rows = json_object_get(t, "rows");
    cr_assert_eq(json_array_size(rows), 2, "rows: %s", json_dumps(t, 0));

    /* recomputed here from the database: per job, the newest row of each
     * epoch, the mean of the last 10; per variant, mean and sample std */
    sqlite3 *db = fx_open_db();
    const char *variants[2] = {"byol", "byol-np"};
    for (int v = 0; v < 2; v++) {
        json_t *row = json_array_get(rows, (size_t)v);
        cr_assert_str_eq(json_string_value(json_object_get(row, "variant")), variants[v]);
        sqlite3_stmt *st;
        sqlite3_prepare_v2(db, "SELECT id, linear_acc FROM jobs WHERE grid_id=1 AND variant=? AND "
                               "state='done' ORDER BY id", -1, &st, NULL);
        sqlite3_bind_text(st, 1, variants[v], -1, SQLITE_STATIC);
        double al[2], un[2], acc[2], rk[2];
        int n = 0;
        while (sqlite3_step(st) == SQLITE_ROW && n < 2) {
            long long job = sqlite3_column_int64(st, 0);
            acc[n] = sqlite3_column_double(st, 1);
            /* eval.rank every epoch (the default): the last epoch's */
            rk[n] = fx_db_num(db, "SELECT rank FROM metrics WHERE job_id=? AND kind='epoch' AND "
                                  "epoch=2 ORDER BY id DESC LIMIT 1", job);
            cr_assert(rk[n] >= 1 && rk[n] <= 8, "job %lld: rank %g of 8 dimensions", job, rk[n]);
            sqlite3_stmt *q;
            sqlite3_prepare_v2(db, "SELECT epoch, align, uniform, id FROM metrics WHERE job_id=? "
                                   "AND kind='epoch' ORDER BY epoch, id", -1, &q, NULL);
            sqlite3_bind_int64(q, 1, job);
            double ea[64] = {0}, eu[64] = {0};
            int maxe = 0;
            while (sqlite3_step(q) == SQLITE_ROW) {
                int e = sqlite3_column_int(q, 0);
                cr_assert(e >= 1 && e < 64);
                ea[e] = sqlite3_column_double(q, 1); /* later rows overwrite: newest wins */
                eu[e] = sqlite3_column_double(q, 2);
                maxe = e > maxe ? e : maxe;
            }
            sqlite3_finalize(q);
            cr_assert_eq(maxe, 2, "job %lld has %d epochs", job, maxe);
            int k0 = maxe > 10 ? maxe - 9 : 1;
            al[n] = un[n] = 0;
            for (int e = k0; e <= maxe; e++) {
                al[n] += ea[e] / (maxe - k0 + 1);
                un[n] += eu[e] / (maxe - k0 + 1);
            }
            /* the worker's own last-10 means agree */
            expect_close(fx_db_num(db, "SELECT align_last10 FROM jobs WHERE id=?", job), al[n],
                         "worker align_last10");
            n++;
        }
        sqlite3_finalize(st);
        cr_assert_eq(n, 2);
        cr_assert_eq(json_integer_value(json_object_get(row, "n")), 2);
        double m, s;
        stats(al, n, &m, &s);
        expect_close(json_real_value(json_object_get(row, "align_mean")), m, "align mean");
        expect_close(json_real_value(json_object_get(row, "align_std")), s, "align std");
        stats(un, n, &m, &s);
        expect_close(json_real_value(json_object_get(row, "uniform_mean")), m, "uniform mean");
        expect_close(json_real_value(json_object_get(row, "uniform_std")), s, "uniform std");
        stats(acc, n, &m, &s);
        expect_close(json_real_value(json_object_get(row, "acc_mean")), m, "acc mean");
        expect_close(json_real_value(json_object_get(row, "acc_std")), s, "acc std");
        stats(rk, n, &m, &s);
        expect_close(json_real_value(json_object_get(row, "rank_mean")), m, "rank mean");
        expect_close(json_real_value(json_object_get(row, "rank_std")), s, "rank std");
    }
    sqlite3_close(db);

    /* the same numbers as CSV (accuracy in %) and as a Markdown table */
    rc = fx_cli(out, sizeof out, 20, "table", "g1", "--format", "csv", NULL);
    cr_assert_eq(rc, 0, "%s", out);
    char *line = strchr(out, '\n');
    cr_assert(line && strncmp(out, "variant,n,jobs,align_mean,", 26) == 0, "%s", out);
    for (int v = 0; v < 2; v++) {
        json_t *row = json_array_get(rows, (size_t)v);
        char name[64];
        int n, jobs;
        double f[6];
        cr_assert_eq(sscanf(line + 1, "%63[^,],%d,%d,%lf,%lf,%lf,%lf,%lf,%lf", name, &n, &jobs,
                            &f[0], &f[1], &f[2], &f[3], &f[4], &f[5]), 9, "%s", line + 1);
        cr_expect_str_eq(name, variants[v]);
        const char *keys[6] = {"align_mean", "align_std", "uniform_mean",
                               "uniform_std", "acc_mean", "acc_std"};
        for (int k = 0; k < 6; k++) {
            double want = json_real_value(json_object_get(row, keys[k])) * (k >= 4 ? 100 : 1);
            cr_expect(fabs(f[k] - want) <= 1e-8 * (1 + fabs(want)), "csv %s %s: %.9g vs %.9g",
                      name, keys[k], f[k], want);
        }
        line = strchr(line + 1, '\n');
        cr_assert_not_null(line);
    }
    rc = fx_cli(out, sizeof out, 20, "table", "g1", "--format", "markdown", NULL);
    cr_assert(rc == 0 && strstr(out, "| variant | n |") && strstr(out, "| byol-np | 2/2 | "),
              "%s", out);
    rc = fx_cli(out, sizeof out, 20, "table", "g1", "--format", "tex", NULL);
    cr_assert(rc != 0 && strstr(out, "text, csv, markdown or latex, not 'tex'"), "%s", out);
    json_decref(t);

    rc = fx_cli(out, sizeof out, 20, "table", "g1", NULL);
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert(strstr(out, "byol-np") && strstr(out, "2/2") && strstr(out, "±"), "%s", out);
    rc = fx_cli(out, sizeof out, 20, "ls", NULL);
    cr_assert(rc == 0 && strstr(out, "tiny/byol/seed0") && strstr(out, "done"), "%s", out);
    rc = fx_cli(out, sizeof out, 20, "show", "tiny/byol/seed1", NULL);
    cr_assert(rc == 0 && strstr(out, "attempts:") && strstr(out, "spec:"), "%s", out);
    char tbrun[160];
    snprintf(tbrun, sizeof tbrun, "tensorboard %s/tensorboard/g1-tiny/byol/seed1\n", fx.dir);
    cr_assert(strstr(out, tbrun), "no '%s' in: %s", tbrun, out);
    rc = fx_cli(out, sizeof out, 20, "logs", "j1", NULL);
    cr_assert(rc == 0 && strstr(out, "linear evaluation"), "%s", out);
    rc = fx_cli(out, sizeof out, 20, "workers", NULL);
    cr_assert(rc == 0 && strstr(out, "cpu1") && strstr(out, "idle"), "%s", out);
    char w[128];
    snprintf(w, sizeof w, "%s/w.safetensors", fx.dir);
    rc = fx_cli(out, sizeof out, 20, "export", "j1", w, NULL);
    cr_assert(rc == 0 && access(w, R_OK) == 0, "%s", out);
    {
        /* the run folder is gone: a client that cannot see it asks
         * runawayd, which cannot either, and says so */
        char r1[160], moved[160];
        snprintf(r1, sizeof r1, "%s/runs/1", fx.dir);
        snprintf(moved, sizeof moved, "%s/runs/1.away", fx.dir);
        cr_assert_eq(rename(r1, moved), 0);
        rc = fx_cli(out, sizeof out, 20, "sphere", "j1", NULL);
        cr_assert_eq(rename(moved, r1), 0);
        char want[300];
        snprintf(want, sizeof want, "job j1 has no final weights (%s/weights.safetensors: No "
                 "such file", r1);
        cr_assert(rc == 1 && strstr(out, want), "%s", out);
    }
    check_export_remote(w);
    check_plot();
    check_metrics_export();
    /* the paper's Figure 3: one circle per variant, from its seed-0 job */
    char png[160];
    snprintf(png, sizeof png, "%s/sphere.png", fx.dir);
    rc = fx_cli(out, sizeof out, 60, "sphere", "g1", "-o", png, "--samples", "40", "--backend",
                "cpu", NULL);
    cr_assert_eq(rc, 0, "%s", out);
    char row1[64], row3[64];
    snprintf(row1, sizeof row1, "\n%-28s j1 ", "byol");
    snprintf(row3, sizeof row3, "\n%-28s j3 ", "byol-np");
    cr_assert(strstr(out, row1) && strstr(out, row3), "%s", out);
    FILE *pf = fopen(png, "rb");
    cr_assert_not_null(pf, "no %s", png);
    unsigned char ph[24];
    cr_assert_eq(fread(ph, 1, sizeof ph, pf), sizeof ph);
    fclose(pf);
    cr_expect(memcmp(ph, "\x89PNG", 4) == 0 && ph[18] == 840 >> 8 && ph[19] == (840 & 255) &&
              ph[22] == 480 >> 8 && ph[23] == (480 & 255), "not an 840x480 PNG");
    rc = fx_cli(out, sizeof out, 60, "sphere", "g7", NULL);
    cr_assert(rc != 0 && strstr(out, "g7"), "%s", out);
    /* its evolution: j1 kept epochs 0, 1 and 2; j3 kept none */
    rc = fx_cli(out, sizeof out, 20, "show", "j1", NULL);
    cr_assert(rc == 0 && strstr(out, "\nsnapshots  3, epochs 0 1 2\n"), "%s", out);
    rc = fx_cli(out, sizeof out, 20, "show", "j3", NULL);
    cr_assert(rc == 0 && !strstr(out, "\nsnapshots "), "%s", out);
    rc = fx_cli(out, sizeof out, 60, "sphere", "j1", "--snapshots", "3", "--samples", "40", "-o",
                png, NULL);
    cr_assert(rc == 0 && strstr(out, "tiny/byol/seed0, epoch 0 ") &&
              strstr(out, "tiny/byol/seed0, epoch 1 ") && strstr(out, "tiny/byol/seed0, epoch 2 "),
              "%s", out);
    pf = fopen(png, "rb");
    cr_assert_not_null(pf);
    cr_assert_eq(fread(ph, 1, sizeof ph, pf), sizeof ph);
    fclose(pf);
    cr_expect(ph[18] == 1260 >> 8 && ph[19] == (1260 & 255), "not 3 panels wide");
    rc = fx_cli(out, sizeof out, 60, "sphere", "g1", "--snapshots", "3", NULL);
    cr_assert(rc != 0 && strstr(out, "j3 has no snapshots") && strstr(out, "snapshot_every"), "%s",
              out);
    /* one TensorBoard run per job, every stored metric in it */
    fx_check_tensorboard(0, 0, "tb_check: 4 runs, 4 files,");
    rc = fx_cli(out, sizeof out, 20, "daemon", "status", NULL);
    cr_assert(rc == 0 && strstr(out, "tensorboard --logdir") && strstr(out, fx.dir), "%s", out);
}

/* A job long enough to be caught mid-way: many tiny epochs, checkpoints. */
/* The table marks, as the paper's Table 1 highlights them, what is worse
 * than the random baseline (the variant with optim.epochs 0): L_uniform(f)
 * higher, linear accuracy lower. The finished jobs' numbers are then set by
 * hand in the database (the table reads them back) so that each comparison
 * goes each way. */
Test(daemon, table_marks_what_is_worse_than_the_random_baseline, .init = fx_setup,
     .fini = fx_teardown, .timeout = 60)
{
    char path[128], out[8192];
    snprintf(path, sizeof path, "%s/marks.yaml", fx.dir);
    fx_write_grid(path, "marks", 2, 0,
                  "  seed: [0]\n"
                  "  variant:\n"
                  "    - {name: base, optim: {epochs: 0}}\n"
                  "    - {name: good, model: {predictor: linear}}\n"
                  "    - {name: no_pred, model: {predictor: none}}\n");
    int rc = fx_cli(out, sizeof out, 20, "submit", path, NULL);
    cr_assert_eq(rc, 0, "%s", out);
    rc = fx_cli(out, sizeof out, 60, "watch", "marks", NULL);
    cr_assert_eq(rc, 0, "%s", out);

    /* base: L_uniform -1.0, 40%; good: -2.0, 60%; no_pred: -0.1, 20% */
    char p[128];
    snprintf(p, sizeof p, "%s/runaway.db", fx.dir);
    sqlite3 *db;
    cr_assert_eq(sqlite3_open_v2(p, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    const char *set[] = {
        "UPDATE metrics SET uniform=-1.0 WHERE job_id=1", "UPDATE jobs SET linear_acc=0.4 WHERE id=1",
        "UPDATE metrics SET uniform=-2.0 WHERE job_id=2", "UPDATE jobs SET linear_acc=0.6 WHERE id=2",
        /* good's linear predictor: cos(W,I) 0.25 at its last epoch (and 0.5 before) */
        "UPDATE metrics SET w_cos_i=0.5 WHERE job_id=2 AND kind='epoch'",
        "UPDATE metrics SET w_cos_i=0.25 WHERE job_id=2 AND kind='epoch' AND epoch=2",
        "UPDATE metrics SET uniform=-0.1 WHERE job_id=3", "UPDATE jobs SET linear_acc=0.2 WHERE id=3"};
    for (size_t k = 0; k < sizeof set / sizeof *set; k++)
        cr_assert_eq(sqlite3_exec(db, set[k], NULL, NULL, NULL), SQLITE_OK, "%s: %s", set[k],
                     sqlite3_errmsg(db));
    sqlite3_close(db);

    json_t *t = fx_ask_simple("table", "grid", "marks");
    cr_assert_str_eq(json_string_value(json_object_get(t, "baseline")), "base");
    const char *variant[3] = {"base", "good", "no_pred"};
    const int base[3] = {1, 0, 0}, uw[3] = {-1, 0, 1}, aw[3] = {-1, 0, 1}; /* -1: absent */
    for (int v = 0; v < 3; v++) {
        json_t *row = json_array_get(json_object_get(t, "rows"), (size_t)v);
        cr_assert_str_eq(json_string_value(json_object_get(row, "variant")), variant[v]);
        cr_assert_eq(json_is_true(json_object_get(row, "baseline")), base[v], "%s", variant[v]);
        json_t *u = json_object_get(row, "uniform_worse"), *a = json_object_get(row, "acc_worse");
        cr_assert_eq(u ? json_is_true(u) : -1, uw[v], "%s uniform_worse", variant[v]);
        cr_assert_eq(a ? json_is_true(a) : -1, aw[v], "%s acc_worse", variant[v]);
    }
    json_decref(t);

    /* a random baseline's linear predictor alone brings no cos(W,I) column
     * (random W is about orthogonal to I); a trained variant's does */
    cr_assert_eq(sqlite3_open_v2(p, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    cr_assert_eq(sqlite3_exec(db, "UPDATE metrics SET w_cos_i=NULL WHERE job_id=2; UPDATE metrics "
                                  "SET w_cos_i=0.01 WHERE job_id=1", NULL, NULL, NULL), SQLITE_OK);
    rc = fx_cli(out, sizeof out, 20, "table", "marks", NULL);
    cr_assert(rc == 0 && !strstr(out, "cos(W,I)"), "%s", out);
    cr_assert_eq(sqlite3_exec(db, "UPDATE metrics SET w_cos_i=NULL WHERE job_id=1; UPDATE metrics "
                                  "SET w_cos_i=0.5 WHERE job_id=2 AND kind='epoch'; UPDATE metrics "
                                  "SET w_cos_i=0.25 WHERE job_id=2 AND kind='epoch' AND epoch=2",
                             NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    rc = fx_cli(out, sizeof out, 20, "table", "marks", NULL);
    cr_assert_eq(rc, 0, "%s", out);
    /* the cos(W,I) column, as good has a linear predictor; the others none */
    cr_assert(strstr(out, "rank(f)            cos(W,I)             linear eval top-1\n") &&
                  strstr(out, "+0.250 ± 0.000       60.00 ± 0.00%\n") &&
                  strstr(out, "-                    20.00 ± 0.00% *\n"),
              "%s", out);
    cr_assert(strstr(out, "-2.000 ± 0.000  ") && strstr(out, "60.00 ± 0.00%\n") &&
                  strstr(out, "-0.100 ± 0.000 *") && strstr(out, "20.00 ± 0.00% *\n") &&
                  strstr(out, "* worse than the random baseline (base): L_uniform(f) higher, "
                              "linear eval lower"),
              "%s", out);
    rc = fx_cli(out, sizeof out, 20, "table", "marks", "--format", "markdown", NULL);
    cr_assert(rc == 0 && strstr(out, "| rank(f) | cos(W,I) | linear eval") &&
                  strstr(out, "| +0.250 ± 0.000 | 60.00 ± 0.00 |"),
              "%s", out);
    cr_assert(rc == 0 && strstr(out, "| good | 1/1 | ") && strstr(out, "| -2.000 ± 0.000 |") &&
                  strstr(out, "| **-0.100 ± 0.000** |") && strstr(out, "| **20.00 ± 0.00** |") &&
                  strstr(out, "Bold: worse than the random baseline (base)"),
              "%s", out);
    rc = fx_cli(out, sizeof out, 20, "table", "marks", "--format", "latex", NULL);
    cr_assert(rc == 0 && strstr(out, "\\begin{tabular}{lcccccc}\n\\toprule\n") &&
                  strstr(out, "& $\\mathrm{rank}(f)$ & $\\cos(W, I)$ & linear eval top-1 (\\%) "
                              "\\\\\n\\midrule\n") &&
                  strstr(out, "\ngood & 1/1 & $") && strstr(out, "\\times10^{") &&
                  strstr(out, " & $-2.000 \\pm 0.000$ & $") &&
                  strstr(out, " & $0.250 \\pm 0.000$ & $60.00 \\pm 0.00$ \\\\\n") &&
                  strstr(out, "\nno\\_pred & 1/1 & ") &&
                  strstr(out, " & $\\mathbf{-0.100 \\pm 0.000}$ & ") &&
                  strstr(out, " & -- & $\\mathbf{20.00 \\pm 0.00}$ \\\\\n") &&
                  strstr(out, "\\bottomrule\n\\end{tabular}\n% Bold: worse than the random "
                              "baseline (base)"),
              "%s", out);
    rc = fx_cli(out, sizeof out, 20, "table", "marks", "--format", "csv", NULL);
    cr_assert(rc == 0 && strstr(out, ",rank_std,w_cos_i_mean,w_cos_i_std,uniform_worse,acc_worse\n") &&
                  strstr(out, ",0.25,0,0,0\nno_pred,1,1,") &&
                  strstr(out, "\nbase,1,1,") && strstr(out, ",,\ngood,1,1,") &&
                  strstr(out, ",0,0\nno_pred,1,1,") && strstr(out, ",1,1\n"),
              "%s", out);
    rc = fx_cli(out, sizeof out, 20, "grids", NULL);
    cr_assert(rc == 0 && strstr(out, "g1    marks ") &&
                  strstr(out, "prio 0  : 3 done, 0 running, 0 queued; ended\n"),
              "%s", out);
}

static json_t *ask_table(const char *a, const char *b)
{
    json_t *m = rw_msg_new("table", 2);
    json_object_set_new(m, "grids", json_pack("[ss]", a, b));
    return fx_ask(m);
}

/* Seeds added in a later grid: `table`, `plot` and `sphere` over several
 * grids merge their jobs by variant, but only where each variant is one
 * experiment (the same spec but the seed) and no seed counts twice. */
Test(daemon, table_and_plot_merge_grids_by_variant, .init = fx_setup, .fini = fx_teardown,
     .timeout = 120)
{
    const char *variants = "  variant:\n"
                           "    - {name: base, optim: {epochs: 0}}\n"
                           "    - {name: byol}\n";
    char axes[512], out[16384];
    snprintf(axes, sizeof axes, "  seed: [0]\n%s", variants);
    fx_submit_grid("first", 2, 0, axes);
    snprintf(axes, sizeof axes, "  seed: [1]\n%s", variants);
    fx_submit_grid("more", 2, 0, axes);
    /* the same names, but byol at another learning rate; and seed 0 again */
    fx_submit_grid("other", 2, 0, "  seed: [1]\n  variant:\n    - {name: byol, optim: {lr: 1.0e-3}}\n");
    snprintf(axes, sizeof axes, "  seed: [0]\n%s", variants);
    fx_submit_grid("again", 2, 0, axes);
    fx_wait_jobs("done", 7, 90);

    /* j2 (first, byol seed 0) and j4 (more, byol seed 1): L_uniform -1 and -3 */
    char p[128];
    snprintf(p, sizeof p, "%s/runaway.db", fx.dir);
    sqlite3 *db;
    cr_assert_eq(sqlite3_open_v2(p, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    cr_assert_eq(sqlite3_exec(db, "UPDATE metrics SET uniform=-1.0 WHERE job_id=2; "
                                  "UPDATE metrics SET uniform=-3.0 WHERE job_id=4; "
                                  "UPDATE jobs SET linear_acc=0.5 WHERE id=2; "
                                  "UPDATE jobs SET linear_acc=0.7 WHERE id=4",
                              NULL, NULL, NULL), SQLITE_OK, "%s", sqlite3_errmsg(db));
    sqlite3_close(db);

    json_t *t = ask_table("first", "more");
    cr_assert_str_eq(json_string_value(json_object_get(t, "type")), "ok", "%s", json_dumps(t, 0));
    json_t *rows = json_object_get(t, "rows");
    cr_assert_eq(json_array_size(rows), 2);
    cr_assert_eq(json_array_size(json_object_get(t, "grids")), 2);
    for (size_t k = 0; k < 2; k++) {
        json_t *row = json_array_get(rows, k);
        cr_assert_str_eq(json_string_value(json_object_get(row, "variant")), k ? "byol" : "base");
        cr_assert_eq(json_integer_value(json_object_get(row, "n")), 2);
        cr_assert_eq(json_integer_value(json_object_get(row, "jobs")), 2);
    }
    json_t *byol = json_array_get(rows, 1);
    cr_assert_float_eq(json_number_value(json_object_get(byol, "uniform_mean")), -2.0, 1e-12);
    cr_assert_float_eq(json_number_value(json_object_get(byol, "uniform_std")), sqrt(2.0), 1e-12);
    cr_assert_float_eq(json_number_value(json_object_get(byol, "acc_mean")), 0.6, 1e-12);
    cr_assert(json_is_true(json_object_get(json_array_get(rows, 0), "baseline")));
    json_decref(t);
    int rc = fx_cli(out, sizeof out, 20, "table", "first", "g2", NULL);
    cr_assert(rc == 0 && strstr(out, "grids g1 first + g2 more: mean") &&
                  strstr(out, "byol                   2/2  ") && strstr(out, "-2.000 ± 1.414") &&
                  strstr(out, "60.00 ± 14.14%"),
              "%s", out);
    /* one grid alone, as before */
    rc = fx_cli(out, sizeof out, 20, "table", "more", NULL);
    cr_assert(rc == 0 && strstr(out, "grid g2 more: mean") && strstr(out, "-3.000 ± 0.000"), "%s",
              out);

    /* byol of `other` is another experiment: the field that differs, named */
    fx_expect_error(ask_table("first", "other"), RW_E_STATE,
                    "variant 'byol' is not the same experiment in g1 and g3: optim.lr is 0.0003 in "
                    "g1 (j2), 0.001 in g3 (j5); table them apart");
    /* `again` trains seed 0 of both variants again */
    fx_expect_error(ask_table("again", "first"), RW_E_STATE,
                    "variant 'base' seed 0 finished twice (j1 and j6)");
    rc = fx_cli(out, sizeof out, 20, "table", "first", "other", NULL);
    cr_assert(rc != 0 && strstr(out, "optim.lr"), "%s", out);
    /* diff: every field in which the two differ */
    rc = fx_cli(out, sizeof out, 20, "diff", "j2", "other/byol/seed1", NULL);
    cr_assert(rc == 0 && strstr(out, "j2 first/byol/seed0") && strstr(out, "j5 other/byol/seed1") &&
                  strstr(out, "\nseed                             0                            1\n") &&
                  strstr(out, "\noptim.lr                         0.0003                       0.001\n") &&
                  strstr(out, "\n2 fields differ\n"),
              "%s", out);
    rc = fx_cli(out, sizeof out, 20, "diff", "j2", "j2", NULL);
    cr_assert(rc == 0 && strstr(out, "\n0 fields differ\n"), "%s", out);

    /* the request names one grid or several, not both, not neither */
    json_t *m = rw_msg_new("table", 2);
    json_object_set_new(m, "grid", json_string("first"));
    json_object_set_new(m, "grids", json_pack("[s]", "more"));
    fx_expect_error(fx_ask(m), RW_E_BAD_MESSAGE, "give grid or grids, not both");
    fx_expect_error(fx_ask(rw_msg_new("table", 2)), RW_E_BAD_MESSAGE, "not neither");
    m = rw_msg_new("table", 2);
    json_object_set_new(m, "grids", json_array());
    fx_expect_error(fx_ask(m), RW_E_BAD_MESSAGE, "grids: must be a list of 1..64 strings");
    fx_expect_error(ask_table("first", "nosuch"), RW_E_NOT_FOUND, "no grid 'nosuch'");
    fx_expect_error(ask_table("first", "j2"), RW_E_NOT_FOUND, "no grid 'j2'");
    /* a grid named twice is one */
    t = ask_table("first", "g1");
    cr_assert_eq(json_integer_value(json_object_get(json_array_get(json_object_get(t, "rows"), 1),
                                                    "n")), 1);
    json_decref(t);

    /* curves: every job of the targets, grouped by variant; a job alone
     * with a grid is checked as the grid's */
    m = rw_msg_new("curves", 2);
    json_object_set_new(m, "targets", json_pack("[ss]", "first", "j4"));
    t = fx_ask(m);
    cr_assert_str_eq(json_string_value(json_object_get(t, "kind")), "grid");
    cr_assert_str_eq(json_string_value(json_object_get(t, "name")), "g1 first + j4 more/byol/seed1");
    cr_assert_null(json_object_get(t, "target_id"));
    cr_assert_eq(json_array_size(json_object_get(t, "jobs")), 3);
    json_decref(t);
    m = rw_msg_new("curves", 2);
    json_object_set_new(m, "targets", json_pack("[ss]", "first", "j5"));
    fx_expect_error(fx_ask(m), RW_E_STATE, "variant 'byol' is not the same experiment");
    /* jobs alone are drawn each as itself: no check */
    m = rw_msg_new("curves", 2);
    json_object_set_new(m, "targets", json_pack("[ss]", "j2", "j5"));
    t = fx_ask(m);
    cr_assert_str_eq(json_string_value(json_object_get(t, "kind")), "job");
    json_decref(t);

    /* plot: the mean of the two seeds' curves per variant */
    char data[160], curve[200];
    snprintf(data, sizeof data, "%s/plotdata", fx.dir);
    rc = fx_cli(out, sizeof out, 60, "plot", "first", "more", "--data", data, NULL);
    cr_assert_eq(rc, 0, "%s", out);
    snprintf(curve, sizeof curve, "%s/curve1.dat", data);
    FILE *f = fopen(curve, "r");
    cr_assert_not_null(f, "no %s", curve);
    char line[1024];
    int found = 0;
    cr_assert(fgets(line, sizeof line, f) && !strcmp(line, "# byol: mean over 2 jobs per epoch "
                                                         "('?': none reported)\n"), "%s", line);
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#')
            continue;
        /* epoch, 8 means, 8 stds: L_uniform's mean is column 4, its std 12 */
        double v[17];
        int nv = 0;
        for (char *tok = strtok(line, " \n"); tok && nv < 17; tok = strtok(NULL, " \n"))
            v[nv++] = strcmp(tok, "?") ? strtod(tok, NULL) : NAN;
        cr_assert_eq(nv, 17, "%s", line);
        cr_expect_float_eq(v[3], -2.0, 1e-6, "epoch %g", v[0]);
        cr_expect_float_eq(v[11], sqrt(2.0), 1e-6, "epoch %g", v[0]);
        found++;
    }
    fclose(f);
    cr_assert_eq(found, 2, "byol's two epochs in %s", curve);
    /* the PNG shades mean ± std: gnuplot takes the bands */
    char png[200];
    snprintf(png, sizeof png, "%s/merged.png", fx.dir);
    rc = fx_cli(out, sizeof out, 60, "plot", "first", "more", "-o", png, "--data", data, NULL);
    cr_assert(rc == 0 && access(png, R_OK) == 0, "%s", out);
    snprintf(curve, sizeof curve, "%s/plot.gp", data);
    f = fopen(curve, "r");
    cr_assert_not_null(f);
    int bands = 0;
    while (fgets(line, sizeof line, f))
        bands += strstr(line, "'curve1.dat' using 1:(($4-$12)*1):(($4+$12)*1) with filledcurves") != NULL;
    fclose(f);
    cr_assert_eq(bands, 1, "no band of byol's L_uniform in %s", curve);
    rc = fx_cli(out, sizeof out, 60, "plot", "first", "other", NULL);
    cr_assert(rc != 0 && strstr(out, "not the same experiment"), "%s", out);

    /* metrics: one header, every job's rows once (j2 is in first, and named) */
    rc = fx_cli(out, sizeof out, 20, "metrics", "first", "j2", "more", NULL);
    cr_assert_eq(rc, 0, "%s", out);
    int header = 0, j2 = 0, j4 = 0;
    for (const char *l = out; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        header += !strncmp(l, "job,name,", 9);
        j2 += !strncmp(l, "j2,first/byol/seed0,byol,0,", 27);
        j4 += !strncmp(l, "j4,more/byol/seed1,byol,1,", 26);
    }
    cr_assert(header == 1 && j2 == 2 && j4 == 2, "%d %d %d\n%s", header, j2, j4, out);
}

/* runawayd --notify CMD runs CMD once when a job fails for good and once
 * when its grid ends, what happened in RUNAWAY_* variables; a requeued
 * grid that ends again is news again. */
static void setup_notify(void)
{
    fx_prepare();
    fx_start_daemon("--notify",
                    "env | grep '^RUNAWAY_' | sort > \"$RUNAWAY_STATE_DIR/n-$RUNAWAY_EVENT-"
                    "$RUNAWAY_GRID$RUNAWAY_JOB.tmp\" && mv \"$RUNAWAY_STATE_DIR/n-$RUNAWAY_EVENT-"
                    "$RUNAWAY_GRID$RUNAWAY_JOB.tmp\" \"$RUNAWAY_STATE_DIR/n-$RUNAWAY_EVENT-"
                    "$RUNAWAY_GRID$RUNAWAY_JOB.txt\"; echo x >> \"$RUNAWAY_STATE_DIR/n-count\"",
                    NULL);
}

Test(daemon, notify_runs_a_command_when_a_grid_ends_and_a_job_fails, .init = setup_notify,
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
    cr_assert(lrc != 0 && strstr(ls, "ls: state is queued, running, done, failed or cancelled, "
                                     "not 'lost'"), "%s", ls);

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

/* runawayd's sphere children, for clients on other hosts: the worker
 * program is a script that runs the real one, except for sphere, where it
 * records its pid and waits (a computation that takes its time). */
static char sphere_wrapper[160];

static void setup_slow_sphere(void)
{
    fx_prepare();
    char real[1100], text[2048];
    fx_bin(real, sizeof real, "worker/runaway-worker");
    snprintf(sphere_wrapper, sizeof sphere_wrapper, "%s/worker.sh", fx.dir);
    snprintf(text, sizeof text,
             "#!/bin/sh\nif [ \"$1\" = sphere ]; then echo $$ >> '%s/sphere.pids'; "
             "exec sleep 300; fi\nexec '%s' \"$@\"\n", fx.dir, real);
    fx_write_file(sphere_wrapper, text);
    cr_assert_eq(chmod(sphere_wrapper, 0700), 0);
    fx_start_daemon("--worker", sphere_wrapper, NULL);
}

/* The pids the wrapper recorded, once there are n (within 10 s). */
static void sphere_pids(int n, pid_t *pids)
{
    char p[160];
    snprintf(p, sizeof p, "%s/sphere.pids", fx.dir);
    for (double t0 = fx_now(); fx_now() - t0 < 10; usleep(20000)) {
        FILE *f = fopen(p, "r");
        int k = 0;
        long v;
        while (f && k < n && fscanf(f, "%ld", &v) == 1)
            pids[k++] = (pid_t)v;
        if (f)
            fclose(f);
        if (k == n)
            return;
    }
    cr_assert_fail("runawayd did not start %d sphere children", n);
}

static int gone(pid_t pid, double secs)
{
    for (double t0 = fx_now(); fx_now() - t0 < secs; usleep(20000))
        if (kill(pid, 0) != 0 && errno == ESRCH)
            return 1;
    return 0;
}

static int sphere_folders(void)
{
    DIR *d = opendir(fx.dir);
    struct dirent *de;
    int n = 0;
    while (d && (de = readdir(d)))
        n += !strncmp(de->d_name, "sphere-", 7);
    if (d)
        closedir(d);
    return n;
}

static int sphere_ask(rw_frame_reader *r)
{
    int fd = fx_client(r);
    json_t *m = rw_msg_new("sphere", 5);
    json_object_set_new(m, "job", json_string("j1"));
    json_object_set_new(m, "backend", json_string("cpu"));
    cr_assert_eq(rw_frame_send_fd(fd, m), 0);
    json_decref(m);
    return fd;
}

/* A sphere computation runawayd runs for a client stops when the client
 * goes away and when runawayd does; at most two run at once; a crash's
 * folders are cleared at the next start. */
Test(daemon, sphere_for_another_host_stops_with_its_client_and_at_shutdown,
     .init = setup_slow_sphere, .fini = fx_teardown, .timeout = 90)
{
    fx_submit_grid("s", 1, 0, "");
    fx_wait_jobs("done", 1, 60);
    rw_frame_reader r1, r2, r3;
    int fd1 = sphere_ask(&r1);
    pid_t pids[3];
    sphere_pids(1, pids);
    cr_assert_eq(sphere_folders(), 1);
    close(fd1);
    rw_frame_reader_free(&r1);
    cr_assert(gone(pids[0], 5), "the sphere of a client that went away still runs");
    for (double t0 = fx_now(); sphere_folders() && fx_now() - t0 < 5;)
        usleep(20000);
    cr_assert_eq(sphere_folders(), 0, "its folder was left");

    /* two at once; a third waits for neither */
    fd1 = sphere_ask(&r1);
    int fd2 = sphere_ask(&r2);
    sphere_pids(3, pids);
    json_t *m = rw_msg_new("sphere", 7);
    json_object_set_new(m, "job", json_string("j1"));
    int fd3 = fx_client(&r3);
    fx_expect_error(fx_request(fd3, &r3, m), RW_E_STATE, "runawayd computes 2 spheres already");
    close(fd3);
    rw_frame_reader_free(&r3);
    /* shutdown does not wait for them */
    double t0 = fx_now();
    int st = fx_stop_daemon(20);
    cr_assert(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0 && fx_now() - t0 < 15,
              "runawayd stopped in %.1f s with %d", fx_now() - t0, st);
    cr_assert(gone(pids[1], 5) && gone(pids[2], 5), "sphere children outlived runawayd");
    cr_assert_eq(sphere_folders(), 0);
    close(fd1);
    close(fd2);
    rw_frame_reader_free(&r1);
    rw_frame_reader_free(&r2);

    /* what a crash left goes at the next start */
    char p[160];
    snprintf(p, sizeof p, "%s/sphere-AbC123", fx.dir);
    cr_assert_eq(mkdir(p, 0700), 0);
    snprintf(p, sizeof p, "%s/sphere-AbC123/out.dat", fx.dir);
    fx_write_file(p, "# runaway sphere: half written\n");
    fx_restart_daemon();
    cr_assert_eq(sphere_folders(), 0, "a stale sphere folder stayed");
}

static int cli_says(const char *what, double secs);

/* Both jobs of a grid end while another program locks the database: their
 * ends are recorded, and announced, one after the other when it takes
 * writes again, each finding the grid ended; it is notified once. */
Test(daemon, notify_tells_a_grid_end_once_after_a_database_outage, .init = setup_notify,
     .fini = fx_teardown, .timeout = 90)
{
    fx_submit_grid("outage", 150, 0, "  seed: [0, 1]\n");
    fx_wait_for("both train", "SELECT COUNT(DISTINCT job_id) FROM metrics WHERE kind='epoch' AND "
                              "epoch >= 1", 0, 2, 30);
    char p[160], w1[160], w2[160], count[160];
    snprintf(p, sizeof p, "%s/runaway.db", fx.dir);
    sqlite3 *db;
    cr_assert_eq(sqlite3_open_v2(p, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    /* the daemon may be mid-write: wait for it, as it would for us */
    sqlite3_busy_timeout(db, 5000);
    cr_assert_eq(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
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
    cr_assert_eq(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
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

/* Curves of more jobs than a reply holds (two grids of 4 x 150) are refused
 * with the reason, not dropped (the client would wait for nothing). */
Test(daemon, plot_of_more_jobs_than_a_reply_holds_is_refused, .init = fx_setup, .fini = fx_teardown,
     .timeout = 90)
{
    char out[8192];
    for (int g = 0; g < 2; g++) {
        static char axes[8192];
        int at = snprintf(axes, sizeof axes, "  seed: [");
        for (int k = 0; k < 150; k++)
            at += snprintf(axes + at, sizeof axes - (size_t)at, "%s%d", k ? ", " : "", g * 150 + k);
        snprintf(axes + at, sizeof axes - (size_t)at,
                 "]\n  variant:\n    - {name: a, optim: {lr: 1.0e-3}}\n"
                 "    - {name: b, optim: {lr: 2.0e-3}}\n    - {name: c, optim: {lr: 3.0e-3}}\n"
                 "    - {name: d, optim: {lr: 4.0e-3}}\n");
        char name[16];
        snprintf(name, sizeof name, "big%d", g);
        fx_submit_grid(name, 1, 0, axes);
        int rc = fx_cli(out, sizeof out, 30, "cancel", name, NULL);
        cr_assert_eq(rc, 0, "%s", out);
    }
    int rc = fx_cli(out, sizeof out, 30, "plot", "big0", "big1", NULL);
    cr_assert(rc != 0 && strstr(out, "1200 jobs are more than one plot draws (at most 1024)"),
              "%s", out);
    /* their table is a row per variant: it fits */
    rc = fx_cli(out, sizeof out, 60, "table", "big0", "big1", NULL);
    cr_assert(rc == 0 && strstr(out, "\nd                    0/300  -"), "%s", out);
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

/* A long job (fx_submit_long) that trained 2 epochs, its daemon then killed. */
static long long crashed_job(const char *name)
{
    long long job = fx_submit_long(name);
    fx_wait_epoch(job, 2, 30);
    fx_kill_daemon();
    return job;
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
    sqlite3_close(db);
    /* TensorBoard shows each epoch once: the second attempt's file starts
     * with the restart marker that drops the first one's later points */
    fx_check_tensorboard(job, 1, "tb_check: 1 runs,");
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

/* ------------------------------------------------------------------------ */

/* submit --dry-run needs no daemon: each job, with the fields in which the
 * grid's jobs differ (not the name and seed its name carries), and what
 * the others share; nothing is started or written. */
Test(cli, submit_dry_run_lists_the_jobs_and_what_differs, .init = fx_prepare, .fini = fx_teardown,
     .timeout = 30)
{
    char out[8192], path[128];
    snprintf(path, sizeof path, "%s/dry.yaml", fx.dir);
    fx_write_grid(path, "dry", 3, 0,
                  "  seed: [0, 1]\n"
                  "  variant:\n"
                  "    - {name: base, optim: {epochs: 0}}\n"
                  "    - {name: np, model: {predictor: none}}\n");
    int rc = fx_cli(out, sizeof out, 10, "submit", path, "--dry-run", NULL);
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert(strstr(out, "grid dry: 4 jobs, priority 0 (dry run: nothing submitted)\n"), "%s", out);
    /* the two fields that vary, in the spec's order, and nothing else */
    const char *rows[4] = {"  dry/base/seed0", "  dry/base/seed1", "  dry/np/seed0", "  dry/np/seed1"};
    const char *diff[2] = {"model.predictor: mlp  optim.epochs: 0\n",
                           "model.predictor: none  optim.epochs: 3\n"};
    for (int k = 0; k < 4; k++) {
        const char *row = strstr(out, rows[k]);
        cr_assert_not_null(row, "%s", out);
        const char *end = strchr(row, '\n');
        const char *d = strstr(row, diff[k / 2]);
        cr_assert(d && d + strlen(diff[k / 2]) - 1 == end, "row %d: %.*s", k, (int)(end - row), row);
    }
    cr_assert(strstr(out, " fields the same in every job"), "%s", out);
    char sp[160];
    snprintf(sp, sizeof sp, "%s/runawayd.sock", fx.dir);
    struct stat st;
    cr_assert(stat(sp, &st) != 0 && errno == ENOENT, "a daemon was started: %s", sp);
    /* a bad grid: the parser's message */
    fx_write_grid(path, "dry", 3, 0, "  variant:\n    - {name: x, model: {predictor: nope}}\n");
    rc = fx_cli(out, sizeof out, 10, "submit", "-n", path, NULL);
    cr_assert(rc == 1 && strstr(out, "model.predictor") && strstr(out, "nope"), "%s", out);
}

Test(cli, clear_errors_without_a_daemon_and_for_bad_specs, .init = fx_prepare, .fini = fx_teardown,
     .timeout = 30)
{
    char out[4096], want[256], path[128];
    int rc = fx_cli(out, sizeof out, 10, "ls", NULL);
    snprintf(want, sizeof want,
             "no runawayd at %s/runawayd.sock: start it with `runaway daemon start`", fx.dir);
    cr_assert_eq(rc, 1);
    cr_assert(strstr(out, want) != NULL, "got: %s", out);
    rc = fx_cli(out, sizeof out, 10, "watch", "g1", NULL);
    cr_assert(rc == 1 && strstr(out, want), "got: %s", out);

    /* a bad spec: the parser's message, daemon or not */
    snprintf(path, sizeof path, "%s/bad.yaml", fx.dir);
    fx_write_file(path, "base:\n  optim: {lr: fast}\ngrid: {seed: [0]}\n");
    rc = fx_cli(out, sizeof out, 10, "submit", path, NULL);
    cr_assert_eq(rc, 1);
    cr_assert(strstr(out, "bad.yaml: base: optim.lr: must be a number") && strstr(out, "line 2"),
              "got: %s", out);
    rc = fx_cli(out, sizeof out, 10, "run", path, NULL);
    cr_assert(rc == 1 && strstr(out, "optim.lr"), "got: %s", out);
    cr_assert_neq(access(fx.sock, F_OK), 0, "run started a daemon for a bad spec");
    rc = fx_cli(out, sizeof out, 10, "submit", "/nonexistent.yaml", NULL);
    cr_assert(rc == 1 && strstr(out, "/nonexistent.yaml: cannot open"), "got: %s", out);
    rc = fx_cli(out, sizeof out, 10, "frobnicate", NULL);
    cr_assert(rc == 2 && strstr(out, "unknown command"), "got: %s", out);

    /* daemon start / status / stop, then the same errors again */
    rc = fx_cli(out, sizeof out, 20, "daemon", "start", "--cpu-slots", "1", NULL);
    cr_assert(rc == 0 && strstr(out, "runawayd started"), "got: %s", out);
    rc = fx_cli(out, sizeof out, 10, "daemon", "status", NULL);
    cr_assert(rc == 0 && strstr(out, "1 worker slots"), "got: %s", out);
    rc = fx_cli(out, sizeof out, 10, "show", "j7", NULL);
    cr_assert(rc == 1 && strstr(out, "no job 'j7'"), "got: %s", out);
    rc = fx_cli(out, sizeof out, 30, "daemon", "stop", NULL);
    cr_assert(rc == 0 && strstr(out, "runawayd stopped"), "got: %s", out);
    rc = fx_cli(out, sizeof out, 10, "ls", NULL);
    cr_assert(rc == 1 && strstr(out, want), "got: %s", out);
}

/* ------------------------------------------------------------------------ */
/* Multi-device jobs, TCP with a token */

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

static char tcp_addr[32]; /* 127.0.0.1:PORT, a port free when the test began */

static void setup_tcp(void)
{
    /* the token must be the owner's only: written before the daemon starts */
    fx_prepare();
    char tok[128];
    snprintf(tok, sizeof tok, "%s/token", fx.dir);
    int fd = open(tok, O_WRONLY | O_CREAT, 0600);
    cr_assert_eq(write(fd, "0123456789abcdef-secret\n", 24), 24);
    close(fd);
    snprintf(tcp_addr, sizeof tcp_addr, "127.0.0.1:%d", fx_free_tcp_port());
    fx_start_daemon("--tcp", tcp_addr, NULL);
}

static int tcp_connect(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)atoi(strchr(tcp_addr, ':') + 1)),
                             .sin_addr.s_addr = htonl(0x7f000001)};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    return fd;
}

Test(daemon, tcp_needs_the_token, .init = setup_tcp, .fini = fx_teardown, .timeout = 30)
{
    const char *bad[] = {"{\"type\":\"hello\",\"id\":1,\"version\":2,\"role\":\"client\"}",
                         "{\"type\":\"hello\",\"id\":1,\"version\":2,\"role\":\"client\","
                         "\"token\":\"0123456789abcdef-wrong\"}"};
    for (int i = 0; i < 2; i++) {
        int fd = tcp_connect();
        char *b;
        size_t n;
        rw_frame_encode_raw(bad[i], strlen(bad[i]), &b, &n);
        rw_fd_write_all(fd, b, n);
        free(b);
        rw_frame_reader r;
        rw_frame_reader_init(&r, 0);
        json_t *e = fx_recv(fd, &r, 5000);
        cr_assert_not_null(e);
        cr_assert_str_eq(json_string_value(json_object_get(e, "code")), RW_E_AUTH);
        json_decref(e);
        cr_assert(fx_closed_by_peer(fd, 5000));
        close(fd);
        rw_frame_reader_free(&r);
    }
    int fd = tcp_connect();
    rw_frame_reader r;
    rw_frame_reader_init(&r, 0);
    json_t *h = rw_msg_new("hello", 1);
    json_object_set_new(h, "version", json_integer(RW_PROTO_VERSION));
    json_object_set_new(h, "role", json_string("client"));
    json_object_set_new(h, "token", json_string("0123456789abcdef-secret"));
    json_t *rep = fx_request(fd, &r, h);
    cr_assert_str_eq(json_string_value(json_object_get(rep, "type")), "ok");
    json_decref(rep);
    close(fd);
    rw_frame_reader_free(&r);
    /* a worker on "another host": registers as a remote slot */
    char w[1100], tok[128];
    fx_bin(w, sizeof w, "worker/runaway-worker");
    snprintf(tok, sizeof tok, "%s/token", fx.dir);
    pid_t pid = fork();
    if (pid == 0) {
        execl(w, w, "serve", "--tcp", tcp_addr, "--token-file", tok, "--device", "far0",
              "--backend", "cpu", "--heartbeat", "0.2", (char *)NULL);
        _exit(127);
    }
    int seen = 0;
    for (double t0 = fx_now(); !seen && fx_now() - t0 < 10; usleep(50000)) {
        json_t *ws = fx_ask_simple("workers", NULL, NULL);
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(ws, "workers"), i, v) seen |=
            json_is_true(json_object_get(v, "remote")) &&
            !strcmp(json_string_value(json_object_get(v, "device")), "far0") &&
            !strcmp(json_string_value(json_object_get(v, "state")), "idle");
        json_decref(ws);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    cr_assert(seen, "the TCP worker did not register");
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
/* Cancel; a daemon killed outright */

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

/* ... and `runaway watch`, `logs -f` and `plot --every` ride it out: they
 * follow again when runawayd is back, until the job ends; logs prints each
 * line once. */
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
    sqlite3_close(db);
    /* TensorBoard shows each epoch once: the second attempt's file starts
     * with the restart marker that drops the first one's later points */
    fx_check_tensorboard(job, 1, "tb_check: 1 runs,");
}

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
/* Data-parallel jobs: 2 ranks over Gloo, rendezvous through the daemon */

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
    fx_check_tensorboard(job, 1, "tb_check: 1 runs,");
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

/* Waits until `n` workers are connected and idle. */
static void wait_idle_workers(int n)
{
    for (double t0 = fx_now(); fx_now() - t0 < 20;) {
        json_t *r = fx_ask_simple("workers", NULL, NULL);
        size_t i;
        json_t *v;
        int idle = 0;
        json_array_foreach(json_object_get(r, "workers"), i, v) idle +=
            !strcmp(json_string_value(json_object_get(v, "state")), "idle");
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

/* The disk under the state folder fills while two jobs train: the daemon
 * keeps the writes SQLite cannot make (metrics, events, states) and makes
 * them, in order, once there is room; meanwhile it says why (ls), starts
 * nothing and refuses what it could not record (submit). The workers skip
 * the checkpoints on the way they cannot write and train on; the job that
 * reaches its end waits for room to write its last one, then finishes.
 * Nothing reported in the outage is lost: every epoch has its row.
 * TensorBoard's files skip the records of the outage, none torn, and go on
 * after it. */
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
    snprintf(p, sizeof p, "%s/runaway.db", fx.dir);
    sqlite3 *db;
    char wf[160];
    snprintf(wf, sizeof wf, "%s-watch.log", fx.dir);
    pid_t watcher = fx_cli_start(wf, (const char *[]){"watch", "locked", NULL});
    cr_assert(file_has(wf, "watching grid locked: 2 jobs", 10), "no watch");
    cr_assert_eq(sqlite3_open_v2(p, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    /* the daemon may be mid-write: wait for it, as it would for us */
    sqlite3_busy_timeout(db, 5000);
    cr_assert_eq(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    int said = cli_says("cannot write its database", 30);
    snprintf(p, sizeof p, "%s/locked.yaml", fx.dir); /* as fx_submit_grid wrote it */
    int rc = fx_cli(out, sizeof out, 20, "submit", p, NULL);
    char sub[sizeof out];
    memcpy(sub, out, sizeof out);
    rc = fx_cli(out, sizeof out, 20, "ls", NULL);
    cr_assert_eq(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
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

/* runawayd stopped (SIGTERM) while another program holds the database's
 * lock: it keeps trying its writes until --shutdown-timeout, so a lock
 * let go in that time loses nothing; the epochs reported before the
 * checkpoint its job resumes from keep their rows. */
Test(daemon, a_daemon_stopped_while_the_database_is_locked_makes_its_writes_first,
     .init = fx_setup, .fini = fx_teardown, .timeout = 90)
{
    long long job = fx_submit_long("stoplock");
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

/* ------------------------------------------------------------------------ */
/* A client on another host */

/* A client that reaches the daemon through a forwarded socket lacks the
 * node's data folders: its own parse finds data.path missing, the
 * daemon's (where the data is) accepts, and the daemon has the last word.
 * Without a daemon the local error stands. The client's view of the file
 * system is made by a mount namespace (root only: elsewhere, skipped). */
Test(daemon, a_client_without_the_data_folder_submits_where_the_daemon_has_it, .init = fx_setup,
     .fini = fx_teardown, .timeout = 60)
{
    char data[160], path[200], out[8192], exe[1100], script[2048];
    snprintf(data, sizeof data, "%s-data", fx.dir); /* outside the state folder and its socket */
    snprintf(path, sizeof path, "%s/cifar", data);
    cr_assert_eq(mkdir(data, 0700), 0);
    cr_assert_eq(mkdir(path, 0700), 0);
    snprintf(path, sizeof path, "%s/remote.yaml", fx.dir);
    char text[1024];
    snprintf(text, sizeof text,
             "name: remote\ndata: {kind: cifar10, path: %s/cifar}\noptim: {epochs: 1}\n", data);
    fx_write_file(path, text);
    fx_bin(exe, sizeof exe, "tools/runaway");
    /* the client's host: no data folder there */
    snprintf(script, sizeof script, "mount -t tmpfs tmpfs '%s' || exit 77; exec '%s' --state-dir "
             "'%s' submit '%s'", data, exe, fx.dir, path);
    const char *argv[] = {"/usr/bin/unshare", "-m", "/bin/sh", "-c", script, NULL};
    /* a mount namespace, if this machine gives one (root, and a container
     * that allows it) */
    const char *probe[] = {"/usr/bin/unshare", "-m", "/bin/sh", "-c",
                           "mount -t tmpfs tmpfs /mnt || exit 77", NULL};
    int rc = geteuid() == 0 ? fx_run(out, sizeof out, 20, probe) : 77;
    if (rc == 0)
        rc = fx_run(out, sizeof out, 20, argv);
    if (rc == 77 || rc == 127 || (rc != 0 && strstr(out, "unshare failed"))) {
        rmdir(data);
        cr_skip_test("daemon: a client without the data folder: no mount namespace here (needs "
                     "root); not checked");
    }
    cr_assert(rc == 0 && strstr(out, "grid g1 remote: 1 job"), "%s", out);
    rc = fx_cli(out, sizeof out, 20, "cancel", "remote", NULL);
    cr_assert_eq(rc, 0, "%s", out);
    /* no daemon: the local parse's message */
    fx_stop_daemon(20);
    snprintf(script, sizeof script, "mount -t tmpfs tmpfs '%s' || exit 77; exec '%s' --state-dir "
             "'%s' submit '%s'", data, exe, fx.dir, path);
    rc = fx_run(out, sizeof out, 20, argv);
    char want[300];
    snprintf(want, sizeof want, "data.path: cannot access '%s/cifar'", data);
    cr_assert(rc == 1 && strstr(out, want), "%s", out);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", data);
    cr_assert_eq(system(cmd), 0);
}
