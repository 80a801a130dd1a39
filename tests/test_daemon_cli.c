/* The runaway CLI's errors and what it does without a daemon: submit
 * --dry-run, clear messages for a missing daemon and bad specs, and daemon
 * start / status / stop. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon_fixture.h"

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

/* A figure in a format that plot and sphere do not draw (.png, .pdf, .svg)
 * is a usage error, found before runawayd is asked anything (there is
 * none here): not a PNG under another name. */
Test(cli, a_figure_of_another_extension_is_a_usage_error, .init = fx_prepare, .fini = fx_teardown,
     .timeout = 30)
{
    char out[4096];
    int rc = fx_cli(out, sizeof out, 10, "plot", "g1", "-o", "plot.jpg", NULL);
    cr_assert(rc == 2 && strstr(out, "runaway plot: -o plot.jpg: the figure is a .png, .pdf or "
                                     ".svg file (by its extension)\nusage: runaway plot "),
              "got: %s", out);
    rc = fx_cli(out, sizeof out, 10, "sphere", "g1", "--out", "sphere", NULL);
    cr_assert(rc == 2 && strstr(out, "runaway sphere: -o sphere: the figure is a .png, .pdf or "
                                     ".svg file"), "got: %s", out);
    /* a good one goes on to ask runawayd */
    rc = fx_cli(out, sizeof out, 10, "plot", "g1", "-o", "plot.PDF", NULL);
    cr_assert(rc == 1 && strstr(out, "no runawayd at "), "got: %s", out);
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
