/* runaway distance end to end: Theorem 5.1 as an experiment on tiny jobs.
 * Two jobs of one seed move bit for bit alike; BYOL' from (theta0, W0)
 * and RAFT from (theta0, -W0) (model.predictor_negated) stay within
 * rounding of each other; a BYOL'/RAFT pair without a predictor, which
 * the theorem says nothing of, moves apart; and what cannot be compared
 * is refused by name. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "daemon_fixture.h"

/* One epoch of 3 steps (48 images, batch 16): enough for the no-predictor
 * pair to part, few enough for the mirror pair's rounding to stay small. */
static const char *base =
    "base:\n"
    "  data: {kind: synthetic, synthetic: {train: 48, test: 32, seed: 1}, image_size: 8,"
    " loader_threads: 1}\n"
    "  model: {stem: cifar, width: 2, projector: {hidden: 16, out: 8}, predictor: linear}\n"
    "  loss: {kind: unified, alpha: 1.0, beta: 1.0}\n"
    "  optim: {batch_size: 16, epochs: 1}\n"
    "  eval: {linear: {epochs: 0}, rank: {every: 0}}\n"
    "  checkpoint: {snapshot_every: 1}\n";
static const char *variants =
    "grid:\n"
    "  seed: [0]\n"
    "  variant:\n"
    "    - {name: byolp}\n"
    "    - {name: mirror, loss: {beta: -1.0}, model: {predictor_negated: true}}\n"
    "    - {name: byolp-np, model: {predictor: none}}\n"
    "    - {name: raft-np, loss: {beta: -1.0}, model: {predictor: none}}\n"
    "    - {name: nosnap, checkpoint: {snapshot_every: 0}}\n"
    "    - {name: wider, model: {width: 4}}\n";

/* The pair's distances at epochs 0 and 1 from `runaway distance --json`. */
typedef struct dist {
    double enc[2], pred[2]; /* pred NAN: not both have a predictor */
    double moved;           /* how far A's encoder moved by epoch 1 */
    long long sign;
} dist;

static dist distance(const char *a, const char *b)
{
    char out[16384];
    int rc = fx_cli(out, sizeof out, 30, "distance", a, b, "--json", NULL);
    cr_assert_eq(rc, 0, "distance %s %s: %s", a, b, out);
    json_error_t e;
    json_t *doc = json_loads(out, 0, &e);
    cr_assert_not_null(doc, "not JSON (%s): %s", e.text, out);
    json_t *p = json_array_get(json_object_get(doc, "pairs"), 0);
    json_t *ep = json_object_get(p, "epochs"), *enc = json_object_get(p, "encoder"),
           *pred = json_object_get(p, "predictor");
    cr_assert(json_array_size(ep) == 2 && json_integer_value(json_array_get(ep, 0)) == 0 &&
                  json_integer_value(json_array_get(ep, 1)) == 1,
              "epochs: %s", out);
    dist d = {.moved = json_number_value(json_array_get(json_object_get(p, "moved_a"), 1)),
              .sign = json_integer_value(json_object_get(p, "sign"))};
    for (int k = 0; k < 2; k++) {
        cr_assert(json_is_number(json_array_get(enc, k)), "%s", out);
        d.enc[k] = json_number_value(json_array_get(enc, k));
        d.pred[k] = json_is_array(pred) ? json_number_value(json_array_get(pred, k)) : NAN;
    }
    json_decref(doc);
    return d;
}

Test(daemon_distance, theorem_5_1_mirror_pair_and_controls, .init = fx_setup,
     .fini = fx_teardown, .timeout = 120)
{
    char path[160], text[4096], out[16384];
    int rc;
    /* thm; and twin, byolp again (a grid refuses a job twice) */
    const char *grids[2][2] = {{"thm", variants},
                               {"twin", "grid: {seed: [0], variant: [{name: byolp}]}\n"}};
    for (int g = 0; g < 2; g++) {
        snprintf(path, sizeof path, "%s/%s.yaml", fx.dir, grids[g][0]);
        snprintf(text, sizeof text, "name: %s\n%s%s", grids[g][0], base, grids[g][1]);
        fx_write_file(path, text);
        rc = fx_cli(out, sizeof out, 20, "submit", path, NULL);
        cr_assert_eq(rc, 0, "%s", out);
    }
    fx_wait_jobs("done", 7, 90);

    /* the same spec twice: deterministic CPU training, bit for bit */
    dist twin = distance("thm/byolp/seed0", "twin/byolp/seed0");
    cr_expect(twin.enc[0] == 0 && twin.enc[1] == 0 && twin.pred[0] == 0 && twin.pred[1] == 0,
              "twins apart: encoder %g %g, predictor %g %g", twin.enc[0], twin.enc[1],
              twin.pred[0], twin.pred[1]);
    cr_expect(twin.moved > 1e-4, "the encoder did not train (moved %g)", twin.moved);

    /* Theorem 5.1: the same theta0 and -W0 exactly at epoch 0; after 3
     * steps only rounding apart (the two losses are computed differently):
     * measured 7.6e-9 (encoder) and 1.8e-8 (predictor), so 1e-5 is over
     * 500x above rounding and 20x under the no-predictor pair below */
    dist m = distance("thm/byolp/seed0", "thm/mirror/seed0");
    cr_expect_eq(m.sign, -1);
    cr_expect(m.enc[0] == 0 && m.pred[0] == 0, "epoch 0: encoder %g, predictor %g (not -W0?)",
              m.enc[0], m.pred[0]);
    cr_expect(m.enc[1] < 1e-5 && m.pred[1] < 1e-5, "epoch 1: encoder %g, predictor %g apart",
              m.enc[1], m.pred[1]);

    /* no predictor: the same start (no W to negate), but BYOL' and RAFT
     * pull the cross term opposite ways once the teacher has left the
     * online network (after step 1): measured 2.8e-4, 3.7e4 x the mirror's */
    dist np = distance("thm/byolp-np/seed0", "thm/raft-np/seed0");
    cr_expect(np.enc[0] == 0 && isnan(np.pred[0]), "epoch 0: %g, predictor %g", np.enc[0],
              np.pred[0]);
    cr_expect(np.enc[1] > 1e-5 && np.enc[1] > 1000 * m.enc[1],
              "the no-predictor pair is only %g apart (mirror: %g)", np.enc[1], m.enc[1]);

    /* several pairs at once, drawn */
    char png[192];
    snprintf(png, sizeof png, "%s/thm.png", fx.dir);
    rc = fx_cli(out, sizeof out, 30, "distance", "thm/byolp/seed0", "thm/mirror/seed0",
                "thm/byolp-np/seed0", "thm/raft-np/seed0", "-o", png, NULL);
    cr_assert_eq(rc, 0, "%s", out);
    cr_expect(strstr(out, "output layer negated back") && strstr(out, "stay together") &&
                  strstr(out, "part (apart by over 0.1 of the way A moved) at epoch 1"),
              "%s", out);
    FILE *f = fopen(png, "rb");
    cr_assert_not_null(f, "no %s: %s", png, out);
    unsigned char h[8];
    cr_expect(fread(h, 1, 8, f) == 8 && memcmp(h, "\x89PNG", 4) == 0, "not a PNG");
    fclose(f);

    /* what cannot be compared, by name */
    rc = fx_cli(out, sizeof out, 20, "distance", "thm/byolp/seed0", "thm/nosnap/seed0", NULL);
    cr_expect(rc == 1 && strstr(out, "has no snapshots") && strstr(out, "snapshot_every"), "%s",
              out);
    rc = fx_cli(out, sizeof out, 20, "distance", "thm/byolp/seed0", "thm/wider/seed0", NULL);
    cr_expect(rc == 1 && strstr(out, "the encoders differ"), "%s", out);
    rc = fx_cli(out, sizeof out, 20, "distance", "thm/byolp/seed0", NULL);
    cr_expect(rc == 2 && strstr(out, "JOB_A JOB_B"), "%s", out);
}
