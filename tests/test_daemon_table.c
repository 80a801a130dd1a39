/* runaway table and plot across variants and grids: the marks against the
 * random baseline, grids merged by variant (and refused where they are not
 * one experiment), and more jobs than one reply holds. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon_fixture.h"

/* The table compares with the random baseline (the variant with
 * optim.epochs 0) only over seeds: with one seed a side (n=1) there is no
 * spread to test a difference against, so nothing is marked however far
 * apart (the legend says why), and a cell is its value alone, not "± 0".
 * The finished jobs' numbers are set by hand in the database (the table
 * reads them back) so that each would go each way. */
Test(daemon, table_with_one_seed_marks_nothing, .init = fx_setup, .fini = fx_teardown,
     .timeout = 60)
{
    char path[128], out[8192];
    snprintf(path, sizeof path, "%s/marks.yaml", fx.dir);
    fx_write_grid(path, "marks", 2, 0,
                  "  seed: [0]\n"
                  "  variant:\n"
                  "    - {name: base, optim: {epochs: 0}}\n"
                  "    - {name: good, model: {predictor: linear}}\n"
                  "    - {name: no_pred, model: {predictor: none}, eval: {linear: {normalize: "
                  "standardize}}}\n");
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

    /* curves: each job's final linear evaluation (linear_final, which no
     * epoch row holds without eval.linear.every), and its kNN accuracy at
     * every epoch that measured one */
    cr_assert_eq(sqlite3_open_v2(p, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    cr_assert_eq(sqlite3_exec(db, "UPDATE metrics SET knn=0.25 WHERE job_id=2 AND epoch=2",
                              NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    json_t *cu = fx_ask_simple("curves", "target", "marks");
    const double final[3] = {0.4, 0.6, 0.2};
    for (size_t k = 0; k < 3; k++) {
        json_t *job = json_array_get(json_object_get(cu, "jobs"), k);
        cr_assert_float_eq(json_number_value(json_object_get(job, "linear_final")), final[k],
                           1e-12, "j%zu: %s", k + 1, json_dumps(job, 0));
    }
    json_t *good = json_object_get(json_array_get(json_object_get(cu, "jobs"), 1), "epochs");
    cr_assert_eq(json_array_size(good), 2);
    cr_assert(json_is_null(json_array_get(json_array_get(good, 0), 5)));
    cr_assert_float_eq(json_number_value(json_array_get(json_array_get(good, 1), 5)), 0.25, 1e-12);
    json_decref(cu);

    json_t *t = fx_ask_simple("table", "grid", "marks");
    cr_assert_str_eq(json_string_value(json_object_get(t, "baseline")), "base");
    const char *variant[3] = {"base", "good", "no_pred"};
    const int base[3] = {1, 0, 0};
    for (int v = 0; v < 3; v++) {
        json_t *row = json_array_get(json_object_get(t, "rows"), (size_t)v);
        cr_assert_str_eq(json_string_value(json_object_get(row, "variant")), variant[v]);
        cr_assert_eq(json_is_true(json_object_get(row, "baseline")), base[v], "%s", variant[v]);
        /* not tested: no p, no worse; n=1 said (the baseline: nothing) */
        cr_assert(!json_object_get(row, "uniform_worse") && !json_object_get(row, "acc_worse") &&
                      !json_object_get(row, "uniform_p") && !json_object_get(row, "acc_p"),
                  "%s", variant[v]);
        const char *u = json_string_value(json_object_get(row, "uniform_vs_baseline")),
                   *a = json_string_value(json_object_get(row, "acc_vs_baseline"));
        cr_assert(v ? u && a && !strcmp(u, "n=1") && !strcmp(a, "n=1") : !u && !a, "%s",
                  variant[v]);
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
                  strstr(out, "+0.250               60.00%\n") &&
                  strstr(out, "-                    20.00%\n"),
              "%s", out);
    /* one seed: the value alone (no "± 0"), n 1/1, no mark, and why */
    cr_assert(strstr(out, "\ngood                   1/1  ") && strstr(out, " -2.000               ") &&
                  strstr(out, " -0.100               ") && !strstr(out, "± 0") &&
                  !strstr(out, "e+00 ±") && !strstr(out, " *") &&
                  strstr(out, "\n* worse, + better than the random baseline (base) by Welch's "
                              "t-test over the seeds, two-sided p < 0.05: L_uniform(f) higher or "
                              "linear eval lower is worse\nnot compared, n=1 on a side (one seed "
                              "has no spread to test against): good, no_pred\n"),
              "%s", out);
    /* which linear evaluation each accuracy comes from: no_pred's differs */
    cr_assert(strstr(out, "\nlinear eval of base: 5 epochs of Adam at lr 0.0005, batch 32, raw "
                          "features\nlinear eval of good: 5 epochs of Adam at lr 0.0005, batch 32, "
                          "raw features\nlinear eval of no_pred: 5 epochs of Adam at lr 0.0005, "
                          "batch 32, features standardized\n"),
              "%s", out);
    rc = fx_cli(out, sizeof out, 20, "table", "marks", "--format", "markdown", NULL);
    cr_assert(rc == 0 && strstr(out, "| rank(f) | cos(W,I) | linear eval") &&
                  strstr(out, "| +0.250 | 60.00 |"),
              "%s", out);
    cr_assert(rc == 0 && strstr(out, "| good | 1/1 | ") && strstr(out, "| -2.000 |") &&
                  strstr(out, "| -0.100 |") && strstr(out, "| 20.00 |") && !strstr(out, "**") &&
                  !strstr(out, "± 0") &&
                  strstr(out, "\n\nBold: worse, italic: better than the random baseline (base)") &&
                  strstr(out, "\n\nnot compared, n=1 on a side (one seed has no spread to test "
                              "against): good, no_pred\n") &&
                  strstr(out, "\n\nlinear eval of no_pred: 5 epochs of Adam at lr 0.0005, batch "
                              "32, features standardized\n"),
              "%s", out);
    rc = fx_cli(out, sizeof out, 20, "table", "marks", "--format", "latex", NULL);
    cr_assert(rc == 0 && strstr(out, "\\begin{tabular}{lcccccc}\n\\toprule\n") &&
                  strstr(out, "& $\\mathrm{rank}(f)$ & $\\cos(W, I)$ & linear eval top-1 (\\%) "
                              "\\\\\n\\midrule\n") &&
                  strstr(out, "\ngood & 1/1 & $") && strstr(out, "\\times10^{") &&
                  strstr(out, " & $-2.000$ & $") && strstr(out, " & $0.250$ & $60.00$ \\\\\n") &&
                  strstr(out, "\nno\\_pred & 1/1 & ") && strstr(out, " & $-0.100$ & ") &&
                  strstr(out, " & -- & $20.00$ \\\\\n") && !strstr(out, "\\mathbf") &&
                  !strstr(out, "\\pm 0") &&
                  strstr(out, "\\bottomrule\n\\end{tabular}\n% Bold: worse, italic: better than "
                              "the random baseline (base)") &&
                  strstr(out, "\n% not compared, n=1 on a side") &&
                  strstr(out, "\n% linear eval of base: 5 epochs"),
              "%s", out);
    rc = fx_cli(out, sizeof out, 20, "table", "marks", "--format", "csv", NULL);
    /* the columns as before, then the test's (empty where not tested) */
    cr_assert(rc == 0 &&
                  strstr(out, ",rank_std,w_cos_i_mean,w_cos_i_std,uniform_worse,acc_worse,"
                              "uniform_vs_baseline,uniform_p,acc_vs_baseline,acc_p,acc_n,"
                              "collapsed,linear_protocol\n") &&
                  strstr(out, "\nbase,1,1,") &&
                  strstr(out, ",,,,,,,,,1,0,\"5 epochs of Adam at lr 0.0005, batch 32, raw "
                              "features\"\ngood,1,1,") &&
                  strstr(out, ",0.25,0,,,n=1,,n=1,,1,0,\"5 epochs") &&
                  strstr(out, "\nno_pred,1,1,") &&
                  strstr(out, ",,,,,n=1,,n=1,,1,0,\"5 epochs of Adam at lr 0.0005, batch 32, "
                              "features standardized\"\n"),
              "%s", out);
    rc = fx_cli(out, sizeof out, 20, "grids", NULL);
    cr_assert(rc == 0 && strstr(out, "g1    marks ") &&
                  strstr(out, "prio 0  : 3 done, 0 running, 0 queued; ended\n"),
              "%s", out);
}

/* A variant is marked only where it differs from the baseline beyond the
 * spread of the seeds: Welch's t-test, two-sided p < 0.05, 3 seeds each.
 * Each variant's seeds are set to mean - std, mean, mean + std (sample std
 * exactly std). raft is the row: linear eval 15.33 ± 0.69% against
 * the baseline's 16.11 ± 3.18%, lower but p 0.7152 (tests/test_stats.c):
 * not marked, where every lower mean was marked before. */
Test(daemon, table_marks_only_significant_differences, .init = fx_setup, .fini = fx_teardown,
     .timeout = 180)
{
    char out[8192];
    fx_submit_grid("sig", 1, 0,
                   "  seed: [0, 1, 2]\n"
                   "  variant:\n"
                   "    - {name: base, optim: {epochs: 0}}\n"
                   "    - {name: good}\n"
                   "    - {name: raft, optim: {lr: 1.0e-3}}\n"
                   "    - {name: no_pred, model: {predictor: none}}\n");
    fx_wait_jobs("done", 12, 150);

    /* per variant: L_uniform mean, std; accuracy mean, std */
    const struct {
        const char *variant;
        double um, us, am, as;
    } set[] = {{"base", -1.0, 0.1, 0.1611, 0.0318},
               {"good", -2.0, 0.1, 0.60, 0.02},      /* better on both */
               {"raft", -1.05, 0.3, 0.1533, 0.0069}, /* inside the spread on both */
               {"no_pred", -0.1, 0.1, 0.05, 0.01}};  /* worse on both */
    char p[128];
    snprintf(p, sizeof p, "%s/runaway.db", fx.dir);
    sqlite3 *db;
    cr_assert_eq(sqlite3_open_v2(p, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    for (size_t v = 0; v < sizeof set / sizeof *set; v++)
        for (int seed = 0; seed < 3; seed++) {
            char sql[512];
            snprintf(sql, sizeof sql,
                     "UPDATE metrics SET uniform=%.17g WHERE job_id=(SELECT id FROM jobs WHERE "
                     "variant='%s' AND seed=%d); UPDATE jobs SET linear_acc=%.17g WHERE "
                     "variant='%s' AND seed=%d",
                     set[v].um + (seed - 1) * set[v].us, set[v].variant, seed,
                     set[v].am + (seed - 1) * set[v].as, set[v].variant, seed);
            cr_assert_eq(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK, "%s: %s", sql,
                         sqlite3_errmsg(db));
        }
    sqlite3_close(db);

    json_t *t = fx_ask_simple("table", "grid", "sig");
    cr_assert_str_eq(json_string_value(json_object_get(t, "baseline")), "base");
    const char *verdict[4][2] = {{NULL, NULL}, {"better", "better"}, {"ns", "ns"},
                                 {"worse", "worse"}};
    for (size_t v = 0; v < 4; v++) {
        json_t *row = json_array_get(json_object_get(t, "rows"), v);
        cr_assert_str_eq(json_string_value(json_object_get(row, "variant")), set[v].variant);
        cr_assert_eq(json_integer_value(json_object_get(row, "n")), 3);
        const char *metric[2] = {"uniform", "acc"};
        for (int k = 0; k < 2; k++) {
            char key[40];
            snprintf(key, sizeof key, "%s_vs_baseline", metric[k]);
            const char *got = json_string_value(json_object_get(row, key));
            cr_assert(verdict[v][k] ? got && !strcmp(got, verdict[v][k]) : !got, "%s %s: %s",
                      set[v].variant, key, got ? got : "(none)");
            snprintf(key, sizeof key, "%s_worse", metric[k]);
            json_t *w = json_object_get(row, key);
            cr_assert_eq(w ? json_is_true(w) : -1, v == 0 ? -1 : v == 3, "%s %s", set[v].variant,
                         key);
        }
    }
    json_t *raft = json_array_get(json_object_get(t, "rows"), 2);
    cr_assert_float_eq(json_number_value(json_object_get(raft, "acc_p")), 0.7152202197800256,
                       1e-6);
    json_decref(t);

    int rc = fx_cli(out, sizeof out, 20, "table", "sig", NULL);
    cr_assert(rc == 0 && strstr(out, "base                   3/3  ") &&
                  strstr(out, "16.11 ± 3.18%\n") && strstr(out, "15.33 ± 0.69%\n") &&
                  strstr(out, "-1.050 ± 0.300  ") && strstr(out, "-2.000 ± 0.100 +") &&
                  strstr(out, "60.00 ± 2.00% +\n") && strstr(out, "-0.100 ± 0.100 *") &&
                  strstr(out, "5.00 ± 1.00% *\n") &&
                  strstr(out, "\n* worse, + better than the random baseline (base) by Welch's "
                              "t-test over the seeds, two-sided p < 0.05: L_uniform(f) higher or "
                              "linear eval lower is worse\n") &&
                  !strstr(out, "not compared"),
              "%s", out);
    rc = fx_cli(out, sizeof out, 20, "table", "sig", "--format", "markdown", NULL);
    cr_assert(rc == 0 && strstr(out, "| raft | 3/3 | ") && strstr(out, "| -1.050 ± 0.300 |") &&
                  strstr(out, "| 15.33 ± 0.69 |\n") && strstr(out, "| *-2.000 ± 0.100* |") &&
                  strstr(out, "| *60.00 ± 2.00* |\n") && strstr(out, "| **-0.100 ± 0.100** |") &&
                  strstr(out, "| **5.00 ± 1.00** |\n") &&
                  strstr(out, "|\n\nBold: worse, italic: better than the random baseline (base) "
                              "by Welch's t-test over the seeds, two-sided p < 0.05"),
              "%s", out);
    rc = fx_cli(out, sizeof out, 20, "table", "sig", "--format", "latex", NULL);
    cr_assert(rc == 0 && strstr(out, "\nraft & 3/3 & ") &&
                  strstr(out, " & $-1.050 \\pm 0.300$ & ") &&
                  strstr(out, " & $15.33 \\pm 0.69$ \\\\\n") &&
                  strstr(out, " & $\\mathit{-2.000 \\pm 0.100}$ & ") &&
                  strstr(out, " & $\\mathit{60.00 \\pm 2.00}$ \\\\\n") &&
                  strstr(out, " & $\\mathbf{-0.100 \\pm 0.100}$ & ") &&
                  strstr(out, " & $\\mathbf{5.00 \\pm 1.00}$ \\\\\n") &&
                  strstr(out, "\\end{tabular}\n% Bold: worse, italic: better than the random "
                              "baseline (base) by Welch's t-test"),
              "%s", out);
    rc = fx_cli(out, sizeof out, 20, "table", "sig", "--format", "csv", NULL);
    cr_assert(rc == 0 &&
                  strstr(out, ",w_cos_i_std,uniform_worse,acc_worse,uniform_vs_baseline,uniform_p,"
                              "acc_vs_baseline,acc_p,acc_n,collapsed,linear_protocol\n") &&
                  strstr(out, "\nbase,3,3,") &&
                  strstr(out, ",,,,,,,3,0,\"5 epochs of Adam at lr 0.0005, batch 32, raw "
                              "features\"\ngood,3,3,") &&
                  strstr(out, ",0,0,better,0.000") && strstr(out, ",0,0,ns,0.") &&
                  strstr(out, ",ns,0.7152") && strstr(out, ",1,1,worse,0.000") &&
                  strstr(out, ",worse,0.00"),
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
    /* one grid alone, as before (one seed: the value alone) */
    rc = fx_cli(out, sizeof out, 20, "table", "more", NULL);
    cr_assert(rc == 0 && strstr(out, "grid g2 more: mean") && strstr(out, " -3.000   ") &&
                  !strstr(out, "± 0"),
              "%s", out);

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
