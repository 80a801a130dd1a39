/* The predictor studies' spec fields (Tian, Chen and Ganguli 2021):
 * model.predictor directpred and model.directpred.*, model.predictor_frozen
 * and optim.predictor_lr_mult -- their defaults, ranges, the round trip
 * through the canonical YAML, and the combinations refused because they
 * mean nothing. Part of the spec suite. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/grid.h"
#include "proto/spec.h"

static int parse(const char *yaml, rw_spec *s, char *err, size_t errlen)
{
    return rw_spec_parse(yaml, strlen(yaml), "spec.yaml", "", s, err, errlen);
}

/* An error naming the file and holding both substrings. */
static void refused(const char *yaml, const char *s1, const char *s2)
{
    rw_spec s;
    char err[1024] = "";
    cr_assert_neq(parse(yaml, &s, err, sizeof err), 0, "accepted:\n%s", yaml);
    cr_assert(strstr(err, "spec.yaml") && strstr(err, s1) && (!s2 || strstr(err, s2)),
              "expected '%s' and '%s' in '%s'", s1, s2 ? s2 : "", err);
}

Test(spec, predictor_studies_defaults_and_round_trip)
{
    rw_spec s, back;
    char err[1024], yaml[RW_SPEC_YAML_MAX];
    cr_assert_eq(parse("name: x\n", &s, err, sizeof err), 0, "%s", err);
    cr_expect(s.model.directpred.every == 1 && s.model.directpred.momentum == 0.99f &&
              s.model.directpred.eps == 0.1f, "DirectPred's defaults");
    cr_expect(!s.model.pred_frozen && s.optim.predictor_lr_mult == 1.0f);

    cr_assert_eq(parse("model:\n  predictor: directpred\n"
                       "  directpred: {every: 5, momentum: 0.9, eps: 0}\n", &s, err, sizeof err),
                 0, "%s", err);
    cr_expect_eq(s.model.predictor, RW_PRED_DIRECTPRED);
    cr_expect(s.model.directpred.every == 5 && s.model.directpred.momentum == 0.9f &&
              s.model.directpred.eps == 0.0f);
    cr_expect_str_eq(rw_predictor_name(RW_PRED_DIRECTPRED), "directpred");
    cr_assert_gt(rw_spec_to_yaml(&s, yaml, sizeof yaml), 0);
    cr_expect(strstr(yaml, "  directpred:\n    every: 5\n    momentum: 0.9\n    eps: 0\n"), "%s",
              yaml);
    cr_assert_eq(rw_spec_parse(yaml, strlen(yaml), "canonical", "", &back, err, sizeof err), 0,
                 "%s", err);
    cr_expect(memcmp(&s, &back, sizeof s) == 0, "directpred does not round-trip");

    cr_assert_eq(parse("model: {predictor: linear, predictor_frozen: true}\n", &s, err,
                       sizeof err), 0, "%s", err);
    cr_expect(s.model.pred_frozen);
    cr_assert_eq(parse("model: {predictor: mlp}\noptim: {predictor_lr_mult: 0}\n", &s, err,
                       sizeof err), 0, "%s", err);
    cr_expect_eq(s.optim.predictor_lr_mult, 0.0f, "0: the predictor's Adam moments move alone");
    cr_assert_gt(rw_spec_to_yaml(&s, yaml, sizeof yaml), 0);
    cr_assert_eq(rw_spec_parse(yaml, strlen(yaml), "canonical", "", &back, err, sizeof err), 0,
                 "%s", err);
    cr_expect(memcmp(&s, &back, sizeof s) == 0, "predictor_lr_mult does not round-trip");
}

Test(spec, predictor_studies_ranges)
{
    refused("model: {directpred: {every: 0}}\n", "model.directpred.every", "1..1000000");
    refused("model: {directpred: {momentum: 1}}\n", "model.directpred.momentum", "[0, 1)");
    refused("model: {directpred: {momentum: -0.1}}\n", "model.directpred.momentum", "[0, 1)");
    refused("model: {directpred: {eps: -1}}\n", "model.directpred.eps", "[0, 100]");
    refused("model: {predictor_frozen: 1}\n", "model.predictor_frozen", "true or false");
    refused("optim: {predictor_lr_mult: -1}\n", "optim.predictor_lr_mult", "[0, 1000]");
    refused("model: {directpred: {rho: 0.5}}\n", "model.directpred.rho: unknown field",
            "every, momentum, eps");
}

/* A frozen or slower predictor needs one trained by gradient. */
Test(spec, predictor_studies_refuse_what_means_nothing)
{
    refused("model: {predictor: none, predictor_frozen: true}\n", "model.predictor_frozen",
            "nothing to freeze");
    refused("model: {predictor: directpred, predictor_frozen: true}\n",
            "model.predictor_frozen", "correlation");
    refused("model: {predictor: directpred}\noptim: {predictor_lr_mult: 2}\n",
            "optim.predictor_lr_mult", "not by gradient");
    refused("model: {predictor: none}\noptim: {predictor_lr_mult: 2}\n",
            "optim.predictor_lr_mult", "no predictor");
    refused("model: {predictor: mlp, predictor_frozen: true}\noptim: {predictor_lr_mult: 0}\n",
            "optim.predictor_lr_mult", "frozen");
    rw_spec s;
    char err[512];
    cr_expect_eq(parse("model: {predictor: mlp_bn, predictor_frozen: true}\n", &s, err,
                       sizeof err), 0, "%s", err);
    cr_expect_eq(parse("model: {predictor: none}\noptim: {predictor_lr_mult: 1}\n", &s, err,
                       sizeof err), 0, "1 is every predictor's: %s", err);
}

/* DirectPred's settings do not apply to another predictor: a grid that
 * sweeps them there would train one job under several names. */
Test(spec, directpred_settings_apply_to_directpred_only)
{
    const char *y = "name: g\nbase: {model: {predictor: linear}}\n"
                    "grid: {sweep: {model.directpred.every: [1, 5]}}\n";
    rw_grid g;
    char err[1024] = "";
    cr_assert_neq(rw_grid_parse(y, strlen(y), "g.yaml", "", &g, err, sizeof err), 0);
    cr_expect(strstr(err, "would train the same"), "%s", err);
    y = "name: g\nbase: {model: {predictor: directpred}}\n"
        "grid: {sweep: {model.directpred.every: [1, 5]}}\n";
    cr_assert_eq(rw_grid_parse(y, strlen(y), "g.yaml", "", &g, err, sizeof err), 0, "%s", err);
    cr_expect_eq(g.njobs, 2);
    rw_grid_free(&g);
}
