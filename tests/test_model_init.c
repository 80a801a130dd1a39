/* The initialization's modifications for the experiment of Theorem 5.1
 * (conf/theorem-5-1.yaml): model.predictor_negated starts a model from
 * (theta0, -W0), model.init_nudge_ulps moves one weight by some ulps. Both
 * must leave every other float of the seed's initialization as it was, bit
 * for bit, and the teacher a copy of the online network: otherwise the
 * mirror pair would not start where the theorem says, and the control would
 * differ by more than it claims. Part of the model suite. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"
#include "worker/model.h"

static kb_backend *be;

static void setup(void)
{
    be = kb_cpu_create(1);
    cr_assert_not_null(be);
}

static void teardown(void)
{
    kb_destroy(be);
}

static rw_model_cfg cfg_of(rw_predictor pred)
{
    rw_model_cfg c = {
        .stem = RW_STEM_CIFAR, .width = 4, .proj_hidden = 10, .proj_out = 6, .predictor = pred,
        .pred_hidden = 12, .loss = {.kind = KB_LOSS_UNIFIED, .alpha = 1.0f, .beta = 1.0f},
    };
    return c;
}

typedef struct init {
    rw_model *m;
    float *p, *t; /* host copies: online parameters, teacher */
} init;

static init make(const rw_model_cfg *c)
{
    char err[256];
    init r;
    r.m = rw_model_create(be, c, 7, err, sizeof err);
    cr_assert_not_null(r.m, "%s", err);
    size_t np = rw_model_nparams(r.m), nt = rw_model_nteacher(r.m);
    r.p = malloc(np * sizeof(float));
    r.t = malloc(nt * sizeof(float));
    be->download(be, r.p, rw_model_params(r.m), np * sizeof(float));
    be->download(be, r.t, rw_model_teacher(r.m), nt * sizeof(float));
    /* the teacher starts as the online network, modifications included */
    cr_assert(memcmp(r.p, r.t, nt * sizeof(float)) == 0, "the teacher is not the online copy");
    return r;
}

static void unmake(init *r)
{
    free(r->p);
    free(r->t);
    rw_model_free(r->m);
}

static uint32_t bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static void negated(rw_predictor pred)
{
    rw_model_cfg c = cfg_of(pred), cn = c;
    cn.pred_negated = 1;
    init a = make(&c), b = make(&cn);
    const char *out = rw_predictor_out_prefix(pred);
    cr_assert_not_null(out);
    size_t flipped = 0;
    for (int i = 0; i < rw_model_ntensors(a.m); i++) {
        const rw_named *t = rw_model_tensor(a.m, i);
        if (t->kind != RW_T_PARAM)
            continue;
        size_t n = strlen(out);
        int is_out = !strncmp(t->name, out, n) &&
                     (!strcmp(t->name + n, ".weight") || !strcmp(t->name + n, ".bias"));
        for (size_t k = 0; k < t->numel; k++) {
            float x = a.p[t->off + k], y = b.p[t->off + k];
            /* -W0 exactly: the sign bit flipped, nothing else */
            uint32_t want = is_out ? bits(x) ^ 0x80000000u : bits(x);
            cr_assert_eq(bits(y), want, "%s: %s[%zu] is %a, not %s%a",
                         rw_predictor_name(pred), t->name, k, y, is_out ? "-" : "", x);
        }
        flipped += is_out ? t->numel : 0;
    }
    /* linear: D x D; mlp: hidden -> D with its bias */
    size_t want = pred == RW_PRED_LINEAR || pred == RW_PRED_LINEAR_IDENTITY ? 6 * 6 : 12 * 6 + 6;
    cr_expect_eq(flipped, want, "%s: %zu floats negated", rw_predictor_name(pred), flipped);
    unmake(&a);
    unmake(&b);
}

TestSuite(model_init, .init = setup, .fini = teardown);

Test(model_init, predictor_negated_is_minus_w0_and_the_same_theta0)
{
    negated(RW_PRED_LINEAR);
    negated(RW_PRED_LINEAR_IDENTITY);
    negated(RW_PRED_MLP);
    negated(RW_PRED_MLP_BN);
}

/* No predictor: no W to negate (the spec refuses the pair; the model, built
 * by code, changes nothing) */
Test(model_init, predictor_negated_without_predictor_changes_nothing)
{
    rw_model_cfg c = cfg_of(RW_PRED_NONE), cn = c;
    cn.pred_negated = 1;
    init a = make(&c), b = make(&cn);
    cr_assert_null(rw_predictor_out_prefix(RW_PRED_NONE));
    cr_expect(memcmp(a.p, b.p, rw_model_nparams(a.m) * sizeof(float)) == 0);
    unmake(&a);
    unmake(&b);
}

static void nudged(int ulps)
{
    rw_model_cfg c = cfg_of(RW_PRED_LINEAR), cu = c;
    cu.init_nudge_ulps = ulps;
    init a = make(&c), b = make(&cu);
    const rw_named *w = rw_model_find(a.m, "conv1.weight");
    cr_assert_not_null(w);
    size_t np = rw_model_nparams(a.m), differ = 0;
    for (size_t k = 0; k < np; k++)
        differ += bits(a.p[k]) != bits(b.p[k]);
    cr_expect_eq(differ, 1, "%zu floats differ, not one", differ);
    float x = a.p[w->off];
    for (int s = 0; s < abs(ulps); s++)
        x = nextafterf(x, ulps > 0 ? INFINITY : -INFINITY);
    cr_expect_eq(bits(b.p[w->off]), bits(x), "conv1.weight[0] is %a, not %a (%+d ulps from %a)",
                 b.p[w->off], x, ulps, a.p[w->off]);
    unmake(&a);
    unmake(&b);
}

Test(model_init, init_nudge_ulps_moves_one_float_by_that_many_ulps)
{
    nudged(1);
    nudged(-2);
}
