/* The quickstart's finding, kept by the suite: conf/quickstart.yaml's BYOL
 * (with its predictor) beats the random baseline's linear evaluation by
 * more than the seeds' spread. Each job is trained here as the daemon's
 * worker would (rw_train, one thread), three seeds a side: about a minute
 * on one core with AVX-512.
 *
 * Measured on this project's machine (three seeds): BYOL 21.16 +- 0.28%,
 * the baseline 16.76 +- 1.42% (BatchNorm before the probe; Welch's p 0.03).
 * The test asks for the gap to exceed the larger of the two spreads, the
 * issue's words, which another machine's roundings (its oneDNN kernels)
 * leave room for; it fails where a change to the losses, the predictor,
 * the teacher, the augmentations or the probe loses what training adds.
 * That the predictor-less variants collapse is tests/test_train.c's
 * finding; their accuracy does not fall below the baseline's on this set. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/stats.h"
#include "kernels/backend.h"
#include "proto/grid.h"
#include "worker/train.h"

TestSuite(findings, .timeout = 600);

static const rw_spec *job(const rw_grid *g, const char *name)
{
    for (size_t j = 0; j < g->njobs; j++)
        if (!strcmp(g->jobs[j].name, name))
            return &g->jobs[j].spec;
    cr_assert_fail("conf/quickstart.yaml has no job %s", name);
    return NULL;
}

static double linear_acc(const rw_spec *spec)
{
    rw_spec s = *spec;
    s.threads = 1; /* meson runs the suites side by side */
    s.data.loader_threads = 1;
    kb_backend *be = kb_cpu_create(1);
    rw_train_opts o = {.test_perturb_rank = -1};
    rw_train_result res;
    char err[512];
    cr_assert_eq(rw_train(&s, be, &o, NULL, &res, err, sizeof err), 0, "%s: %s", s.name, err);
    kb_destroy(be);
    return 100 * res.linear_acc;
}

static void mean_std(const double *x, int n, double *mean, double *std)
{
    double m = 0, v = 0;
    for (int i = 0; i < n; i++)
        m += x[i] / n;
    for (int i = 0; i < n; i++)
        v += (x[i] - m) * (x[i] - m) / (n - 1);
    *mean = m;
    *std = sqrt(v);
}

Test(findings, the_quickstarts_byol_beats_the_random_baseline_by_more_than_the_seeds_spread)
{
    const char *root = getenv("RW_SOURCE_ROOT");
    if (!root)
        cr_skip_test("RW_SOURCE_ROOT not set (run through meson test)");
    char path[1024], basedir[1024], err[2048];
    snprintf(path, sizeof path, "%s/conf/quickstart.yaml", root);
    char *text;
    size_t len;
    cr_assert_eq(rw_grid_read_file(path, 1 << 20, &text, &len, basedir, sizeof basedir, err,
                                   sizeof err), 0, "%s", err);
    rw_grid g;
    cr_assert_eq(rw_grid_parse(text, len, path, basedir, &g, err, sizeof err), 0, "%s", err);
    free(text);
    double base[3], byol[3];
    for (int k = 0; k < 3; k++) {
        char name[64];
        snprintf(name, sizeof name, "quickstart/rand-baseline/seed%d", k);
        base[k] = linear_acc(job(&g, name));
        snprintf(name, sizeof name, "quickstart/byol/seed%d", k);
        byol[k] = linear_acc(job(&g, name));
    }
    rw_grid_free(&g);
    double mb, sb, my, sy;
    mean_std(base, 3, &mb, &sb);
    mean_std(byol, 3, &my, &sy);
    rd_welch w;
    cr_assert_eq(rd_stats_welch(my, sy, 3, mb, sb, 3, &w), 0);
    printf("quickstart linear eval: byol %.2f +- %.2f%% (%.2f %.2f %.2f), rand-baseline %.2f +- "
           "%.2f%% (%.2f %.2f %.2f); Welch's p %.3f\n", my, sy, byol[0], byol[1], byol[2], mb, sb,
           base[0], base[1], base[2], w.p);
    cr_expect_gt(my - mb, fmax(sy, sb),
                 "BYOL %.2f +- %.2f%% against the baseline's %.2f +- %.2f%%: the gap is within "
                 "the seeds' spread", my, sy, mb, sb);
}
