/* runaway-bench (worker/bench.c) end to end, on the CPU backend: its
 * fastest run (the first configuration, one timed step) prints the header
 * and a table row with numbers, and bad flags are refused with the usage.
 * The binary is found under RW_BUILD_ROOT (meson sets it). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

/* Runs runaway-bench with `args`; its stdout (and stderr, 2>&1) into out.
 * Returns its exit status, or -1 when it did not exit. */
static int bench(const char *args, char *out, size_t len)
{
    const char *build = getenv("RW_BUILD_ROOT");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s/worker/runaway-bench' %s 2>&1", build ? build : "build", args);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p, "cannot run %s", cmd);
    size_t n = fread(out, 1, len - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(bench, fastest_run_prints_its_table, .timeout = 300)
{
    static char out[16384];
    int rc = bench("--config 1 --steps 1 --threads 1", out, sizeof out);
    cr_assert_eq(rc, 0, "runaway-bench exited %d:\n%s", rc, out);
    cr_expect(strstr(out, "runaway-bench: CPU backend, tf32 asked, 1 timed steps"), "%s", out);
    cr_expect(strstr(out, "\nconfig "), "no column header:\n%s", out);
    const char *row = strstr(out, "\nquickstart (w16 cifar)");
    cr_assert(row, "no row for the first configuration:\n%s", out);
    int size = 0, batch = 0;
    char prec[8] = "";
    double ms = 0, pairs = 0, gflops = 0, mib = 0;
    int got = sscanf(row + strlen("\nquickstart (w16 cifar)"), "%d %d %7s %lf %lf %lf %lf", &size,
                     &batch, prec, &ms, &pairs, &gflops, &mib);
    cr_assert_eq(got, 7, "row not size, batch, prec and four numbers:\n%s", out);
    cr_expect_eq(size, 32);
    cr_expect_eq(batch, 64);
    cr_expect_str_eq(prec, "fp32"); /* the CPU computes fp32 whatever is asked */
    cr_expect(ms > 0 && pairs > 0 && gflops > 0 && mib > 0, "%s", out);
    cr_expect_null(strstr(out, "failed"), "%s", out);
    cr_expect_null(strstr(out, "resnet18"), "--config 1 ran more than the first:\n%s", out);
}

Test(bench, bad_flags_refused)
{
    static char out[4096];
    cr_expect_eq(bench("--bogus", out, sizeof out), 2);
    cr_expect(strstr(out, "usage: runaway-bench"), "%s", out);
    cr_expect_eq(bench("--config 99", out, sizeof out), 2);
    cr_expect(strstr(out, "--config 99: there are 11 configurations"), "%s", out);
}

/* The nth (0-based) line of out that starts with key, past the key. */
static const char *nth_row(const char *out, const char *key, int n)
{
    const char *row = strstr(out, key);
    while (row && n-- > 0)
        row = strstr(row + 1, key);
    return row ? row + strlen(key) : NULL;
}

/* --data: both sources at both sizes, each row with a positive rate, the
 * folder's rows with their decode rate. */
Test(bench, data_table_times_both_sources, .timeout = 300)
{
    static char out[8192];
    int rc = bench("--data --steps 1 --threads 1", out, sizeof out);
    cr_assert_eq(rc, 0, "runaway-bench --data exited %d:\n%s", rc, out);
    for (int k = 0; k < 2; k++) {
        int want = k ? 96 : 32, s = 0;
        double decode = 0, pairs = 0;
        const char *row = nth_row(out, "\nin memory (cifar, stl10)", k);
        cr_assert(row, "no in-memory row at %d:\n%s", want, out);
        cr_expect(sscanf(row, "%d %lf", &s, &pairs) == 2 && s == want && pairs > 0, "%s", out);
        row = nth_row(out, "\nimagefolder cache (mapped)", k);
        cr_assert(row, "no imagefolder row at %d:\n%s", want, out);
        cr_expect(sscanf(row, "%d %lf %lf", &s, &decode, &pairs) == 3 && s == want &&
                      decode > 0 && pairs > 0,
                  "%s", out);
    }
}

/* --decode on a folder that is not an image folder: exit 1, the folder
 * and what it should hold named. */
Test(bench, decode_names_a_missing_folder)
{
    static char out[4096];
    cr_expect_eq(bench("--decode /nonexistent/rw-images", out, sizeof out), 1);
    cr_expect(strstr(out, "/nonexistent/rw-images/train: cannot open") &&
                  strstr(out, "one folder of images per class"),
              "%s", out);
}
