/* The spec by field: comparing two specs field by field (rw_spec_diff),
 * floats in their shortest exact form, and fields set on a command line
 * (rw_overrides). Part of the spec suite (test_spec.c holds its fixture). */
#include <criterion/criterion.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proto/grid.h"
#include "proto/spec.h"

/* conf/quickstart.yaml expanded, with overrides (NULL: none). */
static int quickstart(const char *const *words, size_t n, rw_grid *g, char *err, size_t errlen)
{
    const char *root = getenv("RW_SOURCE_ROOT");
    if (!root)
        cr_skip_test("RW_SOURCE_ROOT not set (run through meson test)");
    char path[1024], basedir[1024];
    snprintf(path, sizeof path, "%s/conf/quickstart.yaml", root);
    char *text;
    size_t len;
    cr_assert_eq(rw_grid_read_file(path, 1 << 20, &text, &len, basedir, sizeof basedir, err,
                                   errlen), 0, "%s", err);
    rw_overrides ov = {words, n, "/tmp"};
    int rc = rw_grid_parse_with(text, len, path, basedir, words ? &ov : NULL, g, err, errlen);
    free(text);
    return rc;
}

static const rw_spec *job(const rw_grid *g, const char *name)
{
    for (size_t j = 0; j < g->njobs; j++)
        if (!strcmp(g->jobs[j].name, name))
            return &g->jobs[j].spec;
    cr_assert_fail("no job %s", name);
    return NULL;
}

/* BYOL against RAFT: the loss's weights exist only for the unified loss,
 * so a comparison line by line of the canonical YAML would shift every
 * field after them; by name, exactly the true differences remain. */
Test(spec, diff_byol_and_raft_by_field)
{
    rw_grid g;
    char err[2048];
    cr_assert_eq(quickstart(NULL, 0, &g, err, sizeof err), 0, "%s", err);
    rw_spec_delta d[16];
    int n = rw_spec_diff(job(&g, "quickstart/byol/seed0"), job(&g, "quickstart/raft/seed0"), d, 16);
    cr_assert_eq(n, 4, "%d fields differ", n);
    const struct {
        const char *name, *a, *b;
        int in;
    } want[] = {
        {"name", "\"byol\"", "\"raft\"", RW_DELTA_A | RW_DELTA_B},
        {"loss.kind", "byol", "unified", RW_DELTA_A | RW_DELTA_B},
        {"loss.alpha", "", "1", RW_DELTA_B},
        {"loss.beta", "", "-1", RW_DELTA_B},
    };
    for (int k = 0; k < 4; k++) {
        cr_expect_str_eq(d[k].name, want[k].name);
        cr_expect_str_eq(d[k].a, want[k].a, "%s", d[k].name);
        cr_expect_str_eq(d[k].b, want[k].b, "%s", d[k].name);
        cr_expect_eq(d[k].in, want[k].in, "%s", d[k].name);
    }
    /* the other way round: the same fields, sides swapped */
    cr_assert_eq(rw_spec_diff(job(&g, "quickstart/raft/seed0"), job(&g, "quickstart/byol/seed0"),
                              d, 16), 4);
    cr_expect_eq(d[2].in, RW_DELTA_A);
    /* a spec against itself: nothing */
    cr_expect_eq(rw_spec_diff(&g.jobs[3].spec, &g.jobs[3].spec, d, 16), 0);
    rw_grid_free(&g);
}

Test(spec, diff_one_field_is_that_field)
{
    rw_spec a, b;
    rw_spec_defaults(&a);
    b = a;
    b.optim.lr = 1e-3f;
    rw_spec_delta d[4];
    cr_assert_eq(rw_spec_diff(&a, &b, d, 4), 1);
    cr_expect_str_eq(d[0].name, "optim.lr");
    cr_expect_str_eq(d[0].a, "0.0003");
    cr_expect_str_eq(d[0].b, "0.001");
    b = a;
    b.data.mean[2] = 0.5f;
    cr_assert_eq(rw_spec_diff(&a, &b, d, 4), 1);
    cr_expect_str_eq(d[0].name, "data.mean");
    cr_expect_str_eq(d[0].a, "[0.4914, 0.4822, 0.4465]");
    cr_expect_str_eq(d[0].b, "[0.4914, 0.4822, 0.5]");
    /* more differences than room: the count, the first max written */
    b.seed = 9;
    b.model.width = 8;
    cr_expect_eq(rw_spec_diff(&a, &b, d, 1), 3);
    cr_expect_str_eq(d[0].name, "seed");
}

/* The canonical YAML writes each float in its fewest digits, and still
 * reads back bit for bit: random floats over the fields' ranges. */
Test(spec, canonical_floats_are_short_and_exact)
{
    rw_spec s, back;
    rw_spec_defaults(&s);
    static char yaml[RW_SPEC_YAML_MAX];
    cr_assert_gt(rw_spec_to_yaml(&s, yaml, sizeof yaml), 0);
    cr_expect(strstr(yaml, "  lr: 0.0003\n") && strstr(yaml, "  tau: 0.996\n") &&
                  strstr(yaml, "mean: [0.4914, 0.4822, 0.4465]\n"),
              "%s", yaml);
    unsigned seed = 7;
    for (int it = 0; it < 2000; it++) {
        uint32_t bits = ((uint32_t)rand_r(&seed) << 16) ^ (uint32_t)rand_r(&seed);
        float u, lr;
        memcpy(&u, &(uint32_t){0x3f800000u | (bits & 0x7fffffu)}, sizeof u); /* [1, 2) */
        u -= 1.0f;                                                              /* [0, 1) */
        /* lr over many magnitudes: (0, 10] */
        memcpy(&lr, &(uint32_t){(bits % (0x41200000u - 0x2f800000u)) + 0x2f800000u}, sizeof lr);
        s.optim.lr = lr;
        s.ema.tau = u;
        s.data.mean[it % 3] = u;
        s.checkpoint.every_minutes = lr * 1000;
        cr_assert_gt(rw_spec_to_yaml(&s, yaml, sizeof yaml), 0);
        char err[512];
        cr_assert_eq(rw_spec_parse(yaml, strlen(yaml), "canon", "", &back, err, sizeof err), 0,
                     "%s\n%s", err, yaml);
        cr_assert(back.optim.lr == s.optim.lr && back.ema.tau == s.ema.tau &&
                      !memcmp(back.data.mean, s.data.mean, sizeof s.data.mean) &&
                      back.checkpoint.every_minutes == s.checkpoint.every_minutes,
                  "lr %.9g tau %.9g do not read back:\n%s", s.optim.lr, s.ema.tau, yaml);
    }
}

/* ---- fields set on the command line ---- */

static int parse_with(const char *yaml, const char *const *words, size_t n, rw_spec *s, char *err,
                      size_t errlen)
{
    rw_overrides ov = {words, n, "/tmp"};
    return rw_spec_parse_with(yaml, strlen(yaml), "spec.yaml", "/base", &ov, s, err, errlen);
}

Test(spec, overrides_set_fields_by_name)
{
    const char *w[] = {"optim.lr=1e-3", "model.predictor=linear", "loss.tangential=true",
                       "data.std=[0.5, 0.5, 0.5]", "init=", "optim.epochs=1e2"};
    rw_spec s;
    char err[1024] = "";
    cr_assert_eq(parse_with("optim: {lr: 0.01, epochs: 3}\ninit: /etc/hostname\n", w, 6, &s, err,
                            sizeof err), 0, "%s", err);
    cr_expect_eq(s.optim.lr, 1e-3f);
    cr_expect_eq(s.model.predictor, RW_PRED_LINEAR);
    cr_expect_eq(s.loss.tangential, 1);
    cr_expect_eq(s.data.std[1], 0.5f);
    cr_expect_str_eq(s.init, "", "init= clears the path, as null does in a file");
    cr_expect_eq(s.optim.epochs, 100);
    /* they come before the defaults that depend on other fields */
    const char *k[] = {"data.kind=cifar100", "data.path=."};
    cr_assert_eq(parse_with("name: x\n", k, 2, &s, err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(s.data.path, "/tmp/.", "relative to the command line's folder");
    cr_expect_eq(s.data.mean[0], 0.5071f, "CIFAR-100's statistics");
}

/* The same value in a file and on the command line: the same message, but
 * for the origin and the line a command line does not have. */
Test(spec, overrides_are_checked_like_the_file)
{
    rw_spec s;
    memset(&s, 0xAB, sizeof s);
    rw_spec before = s;
    char file_err[1024], err[1024];
    cr_assert_neq(rw_spec_parse("optim:\n  lr: abc\n", 17, "spec.yaml", "", &s, file_err,
                                sizeof file_err), 0);
    const char *w[] = {"optim.lr=abc"};
    cr_assert_neq(parse_with("name: x\n", w, 1, &s, err, sizeof err), 0);
    cr_expect_str_eq(file_err, "spec.yaml: optim.lr: must be a number in (0, 10], got 'abc' (line 2)");
    cr_expect_str_eq(err, "command line: optim.lr: must be a number in (0, 10], got 'abc'");
    cr_expect(!memcmp(&s, &before, sizeof s), "the struct changes only on success");

    const struct {
        const char *word, *want;
    } bad[] = {
        {"optim.lrr=1", "command line: optim.lrr: unknown field (allowed in optim: lr, "
                        "weight_decay, batch_size, epochs, max_steps, schedule, warmup_epochs, "
                        "predictor_lr_mult)"},
        {"optimizer.lr=1", "command line: optimizer: unknown field (allowed at top level: name, "},
        {"model.predictor=deep", "command line: model.predictor: must be one of: mlp, mlp_bn, "
                                 "linear, linear_identity, none, directpred, got 'deep'"},
        {"model.width=129", "command line: model.width: must be an integer in 1..128, got '129'"},
        {"optim=3", "command line: optim: must be a mapping, got '3'"},
        {"optim.lr", "command line: 'optim.lr': expected FIELD=VALUE"},
        {"=3", "command line: '=3': expected FIELD=VALUE"},
        {"optim..lr=3", "command line: 'optim..lr=3': expected FIELD=VALUE"},
        {"optim.lr=[1", "command line: optim.lr:2:1: YAML syntax error"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *one[] = {bad[i].word};
        err[0] = '\0';
        cr_expect_neq(parse_with("name: x\n", one, 1, &s, err, sizeof err), 0, "%s", bad[i].word);
        cr_expect(!strncmp(err, bad[i].want, strlen(bad[i].want)), "%s:\n  got  %s\n  want %s",
                  bad[i].word, err, bad[i].want);
        cr_expect(!strstr(err, "(line"), "a command line has no lines: %s", err);
    }
    const char *twice[] = {"optim.lr=1", "optim.epochs=2", "optim.lr=3"};
    cr_expect_neq(parse_with("name: x\n", twice, 3, &s, err, sizeof err), 0);
    cr_expect_str_eq(err, "command line: optim.lr: given twice");
    /* cross-field rules see the result */
    const char *sup[] = {"loss.kind=supervised"};
    cr_expect_neq(parse_with("name: x\n", sup, 1, &s, err, sizeof err), 0);
    cr_expect(strstr(err, "model.predictor: loss.kind supervised") != NULL, "%s", err);
}

/* A grid: the command line sets the base; variants, sweeps and seeds go
 * on top of it. */
Test(spec, overrides_set_a_grids_base)
{
    rw_grid g;
    char err[2048];
    const char *w[] = {"optim.lr=3e-3", "model.predictor=linear"};
    cr_assert_eq(quickstart(w, 2, &g, err, sizeof err), 0, "%s", err);
    cr_assert_eq(g.njobs, 15);
    for (size_t j = 0; j < g.njobs; j++)
        cr_expect_eq(g.jobs[j].spec.optim.lr, 3e-3f, "%s", g.jobs[j].name);
    cr_expect_eq(job(&g, "quickstart/byol/seed0")->model.predictor, RW_PRED_LINEAR);
    cr_expect_eq(job(&g, "quickstart/byol-np/seed1")->model.predictor, RW_PRED_NONE,
                 "a variant that sets the field wins");
    rw_grid_free(&g);

    /* weights set on a byol base train BYOL under another name: refused,
     * as in the file */
    const char *beta[] = {"loss.beta=-1"};
    cr_expect_neq(quickstart(beta, 1, &g, err, sizeof err), 0);
    cr_expect(strstr(err, "only loss.kind unified is weighed") != NULL, "%s", err);
    /* what every job sets again would change nothing */
    const char *seed[] = {"seed=5"};
    cr_expect_neq(quickstart(seed, 1, &g, err, sizeof err), 0);
    cr_expect(strstr(err, "command line: seed: grid.seed sets it again") != NULL, "%s", err);
    const char *bad[] = {"optim.epochs=x"};
    cr_expect_neq(quickstart(bad, 1, &g, err, sizeof err), 0);
    cr_expect(strstr(err, "command line: optim.epochs: must be an integer") != NULL, "%s", err);
}
