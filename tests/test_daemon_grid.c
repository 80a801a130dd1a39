/* One grid through the CLI, end to end: its jobs train, and what they
 * stored comes back right in every form -- the table (recomputed here from
 * the database), plot, metrics as CSV, export (from this host and another),
 * the sphere and TensorBoard's files. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon_fixture.h"
#include "proto/spec.h"

/* Mean and sample standard deviation, as the table computes them. */
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

/* The table's number a and ours b agree to double rounding. */
static void expect_close(double a, double b, const char *what)
{
    cr_assert(fabs(a - b) <= 1e-9 * (1 + fabs(b)), "%s: table %.12g, recomputed %.12g", what, a, b);
}

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
        int rows = 0, final = 0;
        /* the jobs' final linear evaluation, which byol's epochs do not
         * hold (no eval.linear.every): their mean at the last epoch */
        char avg[200];
        snprintf(avg, sizeof avg, "SELECT AVG(linear_acc) FROM jobs WHERE grid_id=1 AND "
                 "variant='%s'", variants[v]);
        double acc = fx_db_num(db, avg, 0);
        while (fgets(line, sizeof line, f)) {
            double fe, fa;
            if (sscanf(line, "# final linear evaluation: epoch %lf, top-1 %lf, ", &fe, &fa) == 2) {
                cr_expect(fe == 2 && fabs(fa - acc) <= 1e-7 && strstr(line, " over 2 jobs\n"),
                          "%s: %s (the jobs' mean %.9g)", p, line, acc);
                final++;
            }
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
            snprintf(trace[v], sizeof trace[v], "'curve%d.dat' using 4:3 with linespoints lc rgb "
                     "'%s' lw 1.5 pt %d notitle, '+' using (%.9g):(%.9g) ", v,
                     v ? "#d55e00" : "#0072b2", v + 1, un, al);
            rows++;
        }
        fclose(f);
        cr_expect_eq(rows, 2, "%s: %d epochs", p, rows);
        cr_expect_eq(final, 1, "%s: no final linear evaluation", p);
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
        /* ... drawn as a dot with its std over the seeds, in byol's colour,
         * beside byol-np's: 0.012 of the 1-epoch span apart about epoch 2 */
        cr_expect(strstr(gp, "'+' using (1.994):(") &&
                      strstr(gp, " every ::0::0 with yerrorbars lc rgb '#0072b2' "),
                  "no final linear evaluation of byol in plot.gp:\n%s", gp);
    }
    /* the format -o names: a PDF, an SVG */
    const char *fmt[2][2] = {{"pdf", "%PDF-"}, {"svg", "<svg"}};
    for (int k = 0; k < 2; k++) {
        char fig[300], head[2048];
        snprintf(fig, sizeof fig, "%s/curves.%s", fx.dir, fmt[k][0]);
        rc = fx_cli(out, sizeof out, 30, "plot", "g1", "-o", fig, NULL);
        cr_assert_eq(rc, 0, "%s", out);
        f = fopen(fig, "rb");
        cr_assert_not_null(f, "no %s", fig);
        head[fread(head, 1, sizeof head - 1, f)] = 0;
        fclose(f);
        cr_expect(k ? strstr(head, fmt[k][1]) != NULL : !strncmp(head, fmt[k][1], 5),
                  "%s: %.80s", fig, head);
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

/* runaway metrics on the finished 2 x 2 grid g1 (2 epochs each): one CSV
 * row per job and epoch with the stored values (the newest row of each),
 * pages that join without a gap or a repeat, and clear errors. */
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
        /* the run folder keeps the spec the worker trained: the stored one */
        char sp[160], err[512], e[160];
        snprintf(sp, sizeof sp, "%s/runs/1/spec.yaml", fx.dir);
        rw_spec ran, stored;
        cr_assert_eq(rw_spec_load(sp, &ran, err, sizeof err), 0, "%s", err);
        json_t *show = fx_ask_simple("show", "job", "j1");
        const char *text = json_string_value(json_object_get(show, "spec"));
        cr_assert(text && rw_spec_parse(text, strlen(text), "stored", "", &stored, err,
                                        sizeof err) == 0, "%s", json_dumps(show, 0));
        /* threads 0 (auto): the worker's share of the machine, as it ran */
        cr_expect(stored.threads == 0 && ran.threads > 0, "threads %d, stored %d", ran.threads,
                  stored.threads);
        stored.threads = ran.threads;
        char *a = malloc(RW_SPEC_YAML_MAX), *b = malloc(RW_SPEC_YAML_MAX);
        cr_assert(rw_spec_to_yaml(&ran, a, RW_SPEC_YAML_MAX) > 0 &&
                  rw_spec_to_yaml(&stored, b, RW_SPEC_YAML_MAX) > 0);
        cr_expect_str_eq(a, b, "runs/1/spec.yaml is not the job's spec");
        free(a);
        free(b);
        json_decref(show);
        snprintf(e, sizeof e, "%s/e.safetensors", fx.dir);
        rc = fx_cli(out, sizeof out, 20, "export", "j1", e, "--encoder-only", NULL);
        cr_assert(rc == 0 && strstr(out, "the encoder alone"), "%s", out);
    }
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
    cr_assert(strstr(out, "projections f(x) of 40 distinct training images"), "%s", out);
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
    {
        /* more samples than the 100 training images: each is drawn once,
         * and the figure says 100 */
        char sdata[160], gp[8192];
        snprintf(png, sizeof png, "%s/sphere.pdf", fx.dir);
        snprintf(sdata, sizeof sdata, "%s/sphere-data", fx.dir);
        rc = fx_cli(out, sizeof out, 60, "sphere", "j1", "--samples", "500", "--backend", "cpu",
                    "-o", png, "--data", sdata, NULL);
        cr_assert(rc == 0 && strstr(out, "projections f(x) of 100 distinct training images") &&
                      strstr(out, "(--samples 500 is more than the training set holds: each "
                                  "image is drawn once)"), "%s", out);
        snprintf(sdata + strlen(sdata), sizeof sdata - strlen(sdata), "/plot.gp");
        pf = fopen(sdata, "r");
        cr_assert_not_null(pf, "no %s", sdata);
        gp[fread(gp, 1, sizeof gp - 1, pf)] = 0;
        fclose(pf);
        cr_expect(strstr(gp, "set terminal pdfcairo ") &&
                  strstr(gp, "(PCA of f(x), 100 distinct training images; "), "%s", gp);
        pf = fopen(png, "rb");
        cr_assert_not_null(pf, "no %s", png);
        cr_assert_eq(fread(ph, 1, 5, pf), 5);
        fclose(pf);
        cr_expect(!memcmp(ph, "%PDF-", 5), "%s is no PDF", png);
        snprintf(png, sizeof png, "%s/sphere.png", fx.dir);
    }
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
