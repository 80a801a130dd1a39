/* The protocol codec, message validation, grid files and the canonical
 * YAML of a spec. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/frame.h"
#include "proto/grid.h"
#include "proto/msg.h"
#include "proto/spec.h"

/* ------------------------------------------------------------------------ */
/* Frames */

static json_t *roundtrip(const json_t *m, size_t chunk)
{
    char *buf;
    size_t len;
    cr_assert_eq(rw_frame_encode(m, &buf, &len), 0);
    rw_frame_reader r;
    rw_frame_reader_init(&r, RW_FRAME_MAX);
    json_t *out = NULL;
    char err[256];
    /* fed in pieces: every prefix is "need more" until the last byte */
    for (size_t o = 0; o < len; o += chunk) {
        cr_assert_null(out, "frame complete before its last byte");
        size_t n = len - o < chunk ? len - o : chunk;
        cr_assert_eq(rw_frame_reader_feed(&r, buf + o, n), 0);
        rw_frame_status st = rw_frame_reader_next(&r, &out, err, sizeof err);
        cr_assert(st == RW_FRAME_OK || st == RW_FRAME_NEED_MORE, "status %d: %s", st, err);
    }
    cr_assert_not_null(out);
    cr_assert_eq(r.len, 0);
    free(buf);
    rw_frame_reader_free(&r);
    return out;
}

Test(frame, roundtrip_whole_and_bytewise)
{
    json_t *m = rw_msg_new("metric", 7);
    json_object_set_new(m, "loss", json_real(-0.125));
    json_object_set_new(m, "knn", rw_json_num(NAN));
    json_object_set_new(m, "line", json_string("é \"quoted\" \n\x01"));
    for (size_t chunk = 1; chunk <= 4096; chunk *= 8) {
        json_t *o = roundtrip(m, chunk);
        cr_assert(json_equal(m, o), "chunk %zu", chunk);
        cr_assert(json_is_null(json_object_get(o, "knn")), "NaN travels as null");
        json_decref(o);
    }
    json_decref(m);
}

Test(frame, two_frames_in_one_read)
{
    json_t *a = rw_msg_new("ls", 1), *b = rw_msg_new("status", 2);
    char *ba, *bb;
    size_t la, lb;
    rw_frame_encode(a, &ba, &la);
    rw_frame_encode(b, &bb, &lb);
    rw_frame_reader r;
    rw_frame_reader_init(&r, 0);
    rw_frame_reader_feed(&r, ba, la);
    rw_frame_reader_feed(&r, bb, lb);
    json_t *o;
    char err[128];
    cr_assert_eq(rw_frame_reader_next(&r, &o, err, sizeof err), RW_FRAME_OK);
    cr_assert_eq(rw_msg_id(o), 1);
    json_decref(o);
    cr_assert_eq(rw_frame_reader_next(&r, &o, err, sizeof err), RW_FRAME_OK);
    cr_assert_eq(rw_msg_id(o), 2);
    json_decref(o);
    cr_assert_eq(rw_frame_reader_next(&r, &o, err, sizeof err), RW_FRAME_NEED_MORE);
    free(ba);
    free(bb);
    json_decref(a);
    json_decref(b);
    rw_frame_reader_free(&r);
}

Test(frame, oversized_header_rejected_before_body)
{
    rw_frame_reader r;
    rw_frame_reader_init(&r, 1024);
    unsigned char hdr[4] = {0, 0, 4, 1}; /* 1025 */
    rw_frame_reader_feed(&r, hdr, 4);
    json_t *o;
    char err[128];
    cr_assert_eq(rw_frame_reader_next(&r, &o, err, sizeof err), RW_FRAME_TOO_LARGE);
    cr_assert(strstr(err, "1025") && strstr(err, "1024"), "%s", err);
    rw_frame_reader_free(&r);
    /* and the encoder refuses what a reader would refuse */
    char *big = malloc(RW_FRAME_MAX + 1), *out;
    size_t n;
    memset(big, ' ', RW_FRAME_MAX + 1);
    cr_assert_neq(rw_frame_encode_raw(big, RW_FRAME_MAX + 1, &out, &n), 0);
    free(big);
}

Test(frame, bad_bodies)
{
    const char *bodies[] = {"{\"type\":", "[1,2]", "\"str\"", "{\"a\":1,\"a\":2}", "\xff\xfe"};
    for (size_t i = 0; i < sizeof bodies / sizeof *bodies; i++) {
        char *b;
        size_t n;
        rw_frame_encode_raw(bodies[i], strlen(bodies[i]), &b, &n);
        rw_frame_reader r;
        rw_frame_reader_init(&r, 0);
        rw_frame_reader_feed(&r, b, n);
        json_t *o;
        char err[128];
        cr_assert_eq(rw_frame_reader_next(&r, &o, err, sizeof err), RW_FRAME_BAD_JSON, "%s",
                     bodies[i]);
        free(b);
        rw_frame_reader_free(&r);
    }
}

/* ------------------------------------------------------------------------ */
/* Messages */

static json_t *parse(const char *s)
{
    json_error_t e;
    json_t *j = json_loads(s, 0, &e);
    cr_assert_not_null(j, "%s", s);
    return j;
}

static void expect_msg(const char *js, int from, const char *code, const char *sub)
{
    json_t *m = parse(js);
    const char *type, *c;
    char err[256] = "";
    int rc = rw_msg_check(m, from, &type, &c, err, sizeof err);
    if (!code) {
        cr_assert_eq(rc, 0, "%s: %s", js, err);
    } else {
        cr_assert_neq(rc, 0, "accepted %s", js);
        cr_assert_str_eq(c, code, "%s: %s", js, err);
        cr_assert(strstr(err, sub) != NULL, "expected '%s' in '%s'", sub, err);
    }
    json_decref(m);
}

Test(msg, valid_messages)
{
    expect_msg("{\"type\":\"hello\",\"id\":1,\"version\":1,\"role\":\"client\"}", RW_FROM_CLIENT, NULL, NULL);
    expect_msg("{\"type\":\"submit\",\"id\":2,\"text\":\"a: 1\",\"origin\":\"x.yaml\",\"basedir\":\"/\"}",
               RW_FROM_CLIENT, NULL, NULL);
    expect_msg("{\"type\":\"metric\",\"job\":3,\"attempt\":1,\"kind\":\"epoch\",\"epoch\":1,\"step\":5,"
               "\"loss\":1.5,\"align\":0.1,\"uniform\":-2,\"collapse\":0.9,\"knn\":null}",
               RW_FROM_WORKER, NULL, NULL);
    expect_msg("{\"type\":\"assign\",\"job\":3,\"attempt\":1,\"name\":\"g/v/seed0\",\"spec\":\"x\","
               "\"out_dir\":\"/r\",\"resume\":false,\"rank\":0,\"world\":1}",
               RW_FROM_DAEMON, NULL, NULL);
}

Test(msg, invalid_messages)
{
    expect_msg("{\"id\":1}", RW_FROM_CLIENT, RW_E_BAD_MESSAGE, "type");
    expect_msg("{\"type\":\"frobnicate\",\"id\":1}", RW_FROM_CLIENT, RW_E_UNKNOWN_TYPE, "frobnicate");
    /* a worker's report from a client is not a client message */
    expect_msg("{\"type\":\"done\",\"id\":1}", RW_FROM_CLIENT, RW_E_UNKNOWN_TYPE, "done");
    expect_msg("{\"type\":\"show\",\"id\":1}", RW_FROM_CLIENT, RW_E_BAD_MESSAGE, "job: required");
    expect_msg("{\"type\":\"show\",\"id\":1,\"job\":5}", RW_FROM_CLIENT, RW_E_BAD_MESSAGE, "job");
    expect_msg("{\"type\":\"show\",\"id\":-1,\"job\":\"j1\"}", RW_FROM_CLIENT, RW_E_BAD_MESSAGE, "id");
    expect_msg("{\"type\":\"show\",\"id\":1,\"job\":\"j1\",\"extra\":1}", RW_FROM_CLIENT,
               RW_E_BAD_MESSAGE, "unknown field 'extra'");
    expect_msg("{\"type\":\"logs\",\"id\":1,\"job\":\"j1\",\"tail\":1e9}", RW_FROM_CLIENT,
               RW_E_BAD_MESSAGE, "tail");
    expect_msg("{\"type\":\"metric\",\"job\":3,\"attempt\":1,\"kind\":\"epoch\",\"epoch\":1,\"step\":5,"
               "\"loss\":\"x\",\"align\":0.1,\"uniform\":-2,\"collapse\":0.9}",
               RW_FROM_WORKER, RW_E_BAD_MESSAGE, "loss");
    /* strings are bounded */
    char *big = malloc(RW_SUBMIT_TEXT_MAX + 200);
    cr_assert_not_null(big);
    int n = sprintf(big, "{\"type\":\"show\",\"id\":1,\"job\":\"");
    memset(big + n, 'a', 200);
    strcpy(big + n + 200, "\"}");
    expect_msg(big, RW_FROM_CLIENT, RW_E_BAD_MESSAGE, "1..128 bytes");
    free(big);
}

/* Ids are compared as integers: as doubles, 2^53 + 1 rounded to 2^53 and
 * passed (issue 19). */
Test(msg, ids_above_2_to_the_53_are_refused)
{
    expect_msg("{\"type\":\"status\",\"id\":9007199254740992}", RW_FROM_CLIENT, NULL, NULL);
    expect_msg("{\"type\":\"status\",\"id\":9007199254740993}", RW_FROM_CLIENT,
               RW_E_BAD_MESSAGE, "status: id: must be an integer in [0, 9007199254740992]");
    expect_msg("{\"type\":\"status\",\"id\":9223372036854775807}", RW_FROM_CLIENT,
               RW_E_BAD_MESSAGE, "id: must be an integer");
    expect_msg("{\"type\":\"status\",\"id\":1.5}", RW_FROM_CLIENT, RW_E_BAD_MESSAGE, "id");
    expect_msg("{\"type\":\"status\",\"id\":1e300}", RW_FROM_CLIENT, RW_E_BAD_MESSAGE, "id");
    /* the same for every other field of the kind: a job, an offset */
    expect_msg("{\"type\":\"stopped\",\"job\":9007199254740993,\"attempt\":1}", RW_FROM_WORKER,
               RW_E_BAD_MESSAGE, "stopped: job");
    expect_msg("{\"type\":\"stopped\",\"job\":9007199254740992,\"attempt\":1}", RW_FROM_WORKER,
               NULL, NULL);
    /* beyond a 64-bit integer the frame itself does not parse */
    rw_frame_reader r;
    rw_frame_reader_init(&r, 0);
    const char *body = "{\"type\":\"status\",\"id\":18446744073709551616}";
    char *b;
    size_t n;
    cr_assert_eq(rw_frame_encode_raw(body, strlen(body), &b, &n), 0);
    rw_frame_reader_feed(&r, b, n);
    json_t *m = NULL;
    char err[256];
    cr_assert_eq(rw_frame_reader_next(&r, &m, err, sizeof err), RW_FRAME_BAD_JSON, "%s", err);
    free(b);
    rw_frame_reader_free(&r);
}

/* PROTOCOL.md: basedir is absolute; a relative one resolved against the
 * daemon's working folder, not the submitter's (issue 19). */
Test(msg, submit_needs_an_absolute_basedir)
{
    const char *fmt = "{\"type\":\"submit\",\"id\":2,\"text\":\"a: 1\",\"origin\":\"x.yaml\","
                      "\"basedir\":\"%s\"}";
    const char *bad[] = {"", "conf", "./conf", "../x", " /x"};
    char js[256];
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(js, sizeof js, fmt, bad[i]);
        expect_msg(js, RW_FROM_CLIENT, RW_E_BAD_MESSAGE,
                   "submit: basedir: must be an absolute path (starting with '/')");
    }
    snprintf(js, sizeof js, fmt, "/home/me/grids");
    expect_msg(js, RW_FROM_CLIENT, NULL, NULL);
}

/* Tokens: 32..256 printable ASCII characters without spaces; a blank or
 * short one is refused where it is read (issue 19). */
Test(msg, weak_tokens_are_refused)
{
    char why[512], t[300];
    cr_assert_neq(rw_token_check("                ", why, sizeof why), 0);
    cr_assert(strstr(why, "the token is blank") && strstr(why, "runaway token new FILE"), "%s", why);
    memset(t, ' ', 40), t[40] = 0;
    cr_assert_neq(rw_token_check(t, why, sizeof why), 0);
    cr_assert(strstr(why, "blank"), "%s", why);
    cr_assert_neq(rw_token_check("0123456789abcdef-secret", why, sizeof why), 0);
    cr_assert(strstr(why, "too short (23 characters): a token is 32 to 256 printable ASCII "
                          "characters without spaces"), "%s", why);
    cr_assert_neq(rw_token_check("0123456789abcdef 0123456789abcdef", why, sizeof why), 0);
    cr_assert(strstr(why, "a space or a character that is not printable ASCII (character 17)"),
              "%s", why);
    memset(t, 'a', 257), t[257] = 0;
    cr_assert_neq(rw_token_check(t, why, sizeof why), 0);
    cr_assert(strstr(why, "too long"), "%s", why);
    t[256] = 0;
    cr_assert_eq(rw_token_check(t, why, sizeof why), 0, "%s", why);
    cr_assert_eq(rw_token_check("0123456789abcdef0123456789abcdef", why, sizeof why), 0, "%s", why);
}

Test(msg, error_reply)
{
    json_t *e = rw_msg_error(9, RW_E_NOT_FOUND, "no job 'j99'");
    cr_assert_str_eq(json_string_value(json_object_get(e, "type")), "error");
    cr_assert_eq(rw_msg_id(e), 9);
    cr_assert_str_eq(json_string_value(json_object_get(e, "code")), "not_found");
    json_decref(e);
    e = rw_msg_error(1, RW_E_FRAME, "bad \xff utf8");
    cr_assert_not_null(json_object_get(e, "message"));
    json_decref(e);
}

/* ------------------------------------------------------------------------ */
/* Canonical YAML */

static void expect_yaml_roundtrip(const rw_spec *s)
{
    char y[RW_SPEC_YAML_MAX], err[1024];
    int n = rw_spec_to_yaml(s, y, sizeof y);
    cr_assert_gt(n, 0);
    rw_spec back;
    memset(&back, 0x5A, sizeof back); /* padding too: compare whole structs */
    rw_spec_defaults(&back);
    cr_assert_eq(rw_spec_parse(y, (size_t)n, "canon", "", &back, err, sizeof err), 0, "%s\n%s",
                 err, y);
    cr_assert(memcmp(s, &back, sizeof back) == 0, "round trip differs:\n%s", y);
    /* canonical: rendering the result again gives the same text */
    char y2[RW_SPEC_YAML_MAX];
    rw_spec_to_yaml(&back, y2, sizeof y2);
    cr_assert_str_eq(y, y2);
}

Test(yaml, defaults_and_odd_values_roundtrip)
{
    rw_spec s;
    rw_spec_defaults(&s);
    expect_yaml_roundtrip(&s);
    snprintf(s.name, sizeof s.name, "a.b-c_9");
    s.seed = 9007199254740992ull;
    s.devices = 4;
    snprintf(s.init, sizeof s.init, "/etc/passwd"); /* validation wants a regular file */
    snprintf(s.data.path, sizeof s.data.path, "/tmp/we\"ird \\ path: #x");
    s.data.mean[1] = 0.1f;
    s.data.std[2] = 1.0f / 3.0f;
    s.model.predictor = RW_PRED_LINEAR_IDENTITY;
    s.loss.kind = RW_LOSS_UNIFIED;
    s.loss.beta = -0.3f;
    s.loss.tangential = 1;
    s.optim.lr = 3.0e-4f;
    s.optim.max_steps = 123456789012L;
    s.ema.tau = 0.99600005f;
    s.ema.schedule = RW_TAU_COSINE;
    s.eval.knn_temperature = 1e-7f;
    expect_yaml_roundtrip(&s);
    char y[64];
    cr_assert_eq(rw_spec_to_yaml(&s, y, sizeof y), -1, "too small a buffer is an error");
}

/* ------------------------------------------------------------------------ */
/* Grids */

static const char *grid_text =
    "name: g\n"
    "base:\n"
    "  optim: {epochs: 3}\n"
    "  model: {width: 4}\n"
    "grid:\n"
    "  seed: [0, 1, 2]\n"
    "  variant:\n"
    "    - {name: byol, model: {predictor: mlp}}\n"
    "    - name: byol-np\n"
    "      model: {predictor: none}\n";

Test(grid, expands_variants_times_seeds)
{
    rw_grid g;
    char err[1024];
    cr_assert_eq(rw_grid_parse(grid_text, strlen(grid_text), "g.yaml", "", &g, err, sizeof err), 0,
                 "%s", err);
    cr_assert_str_eq(g.name, "g");
    cr_assert_eq(g.njobs, 6);
    cr_assert_str_eq(g.jobs[0].name, "g/byol/seed0");
    cr_assert_str_eq(g.jobs[2].name, "g/byol/seed2");
    cr_assert_str_eq(g.jobs[4].name, "g/byol-np/seed1");
    cr_assert_eq(g.jobs[4].spec.seed, 1);
    cr_assert_eq(g.jobs[4].spec.model.predictor, RW_PRED_NONE);
    cr_assert_eq(g.jobs[0].spec.model.predictor, RW_PRED_MLP);
    cr_assert_eq(g.jobs[4].spec.model.width, 4, "base applies under variants");
    cr_assert_eq(g.jobs[4].spec.optim.epochs, 3);
    cr_assert_str_eq(g.jobs[4].variant, "byol-np");
    cr_assert_eq(g.jobs[0].spec.devices, 1);
    rw_grid_free(&g);
}

/* A variant that changes the data set gets that set's statistics unless
 * the base or the variant gives them. */
Test(grid, each_job_normalizes_with_its_data_set)
{
    const char *y = "name: sets\n"
                    "base: {data: {path: /tmp, std: [0.3, 0.3, 0.3]}}\n"
                    "grid:\n"
                    "  seed: [0]\n"
                    "  variant:\n"
                    "    - {name: c10, data: {kind: cifar10}}\n"
                    "    - {name: stl, data: {kind: stl10}}\n"
                    "    - {name: stl-own, data: {kind: stl10, mean: [0.5, 0.5, 0.5]}}\n";
    rw_grid g;
    char err[1024];
    cr_assert_eq(rw_grid_parse(y, strlen(y), "g.yaml", "", &g, err, sizeof err), 0, "%s", err);
    cr_assert_eq(g.njobs, 3);
    cr_expect_float_eq(g.jobs[0].spec.data.mean[1], 0.4822f, 0);
    cr_expect_float_eq(g.jobs[1].spec.data.mean[1], 0.4398f, 0);
    cr_expect_float_eq(g.jobs[2].spec.data.mean[1], 0.5f, 0);
    for (int j = 0; j < 3; j++)
        cr_expect_float_eq(g.jobs[j].spec.data.std[0], 0.3f, 0, "job %d keeps the base's std", j);
    rw_grid_free(&g);
}

Test(grid, plain_spec_is_one_job)
{
    rw_grid g;
    char err[1024];
    const char *y = "name: solo\nseed: 7\n";
    cr_assert_eq(rw_grid_parse(y, strlen(y), "dir/x.yaml", "", &g, err, sizeof err), 0, "%s", err);
    cr_assert_eq(g.njobs, 1);
    cr_assert_str_eq(g.jobs[0].name, "solo/solo/seed7");
    rw_grid_free(&g);
    /* no name: the file's */
    y = "base: {seed: 3}\n";
    cr_assert_eq(rw_grid_parse(y, strlen(y), "dir/my grid.yaml", "", &g, err, sizeof err), 0);
    cr_assert_str_eq(g.name, "my_grid");
    cr_assert_str_eq(g.jobs[0].name, "my_grid/byol/seed3");
    rw_grid_free(&g);
}

/* grid.sweep: fields taking each value of a list in every combination (the
 * first field slowest), on every variant, under the seeds; each
 * combination is a variant named after its values. */
Test(grid, sweep_crosses_fields_with_variants_and_seeds)
{
    const char *y = "name: sw\n"
                    "base: {loss: {kind: unified, alpha: 1}, model: {predictor: none}}\n"
                    "grid:\n"
                    "  seed: [0, 1]\n"
                    "  variant:\n"
                    "    - {name: np}\n"
                    "    - {name: lp, model: {predictor: linear}}\n"
                    "  sweep:\n"
                    "    loss.beta: [-1, 0.5, 2]\n"
                    "    optim.lr: [1.0e-3, 3e-4]\n";
    rw_grid g;
    char err[1024];
    cr_assert_eq(rw_grid_parse(y, strlen(y), "sw.yaml", "", &g, err, sizeof err), 0, "%s", err);
    cr_assert_eq(g.njobs, 2 * 3 * 2 * 2);
    static const float betas[3] = {-1, 0.5f, 2}, lrs[2] = {1e-3f, 3e-4f};
    static const char *const bt[3] = {"-1", "0.5", "2"}, *const lt[2] = {"1.0e-3", "3e-4"};
    size_t j = 0;
    for (int v = 0; v < 2; v++)
        for (int b = 0; b < 3; b++)
            for (int l = 0; l < 2; l++)
                for (int seed = 0; seed < 2; seed++, j++) {
                    const rw_grid_job *x = &g.jobs[j];
                    char want[160];
                    snprintf(want, sizeof want, "%s-beta-%s-lr-%s", v ? "lp" : "np", bt[b], lt[l]);
                    cr_expect_str_eq(x->variant, want);
                    snprintf(want + strlen(want), sizeof want - strlen(want), "/seed%d", seed);
                    cr_expect(!strncmp(x->name, "sw/", 3) && !strcmp(x->name + 3, want), "%s",
                              x->name);
                    cr_expect(x->spec.loss.beta == betas[b] && x->spec.optim.lr == lrs[l] &&
                                  x->spec.seed == (uint64_t)seed &&
                                  x->spec.model.predictor == (v ? RW_PRED_LINEAR : RW_PRED_NONE),
                              "%s", x->name);
                }
    rw_grid_free(&g);
    /* two fields whose last parts agree: the whole path names them */
    y = "grid:\n  sweep:\n    optim.lr: [0.1]\n    eval.linear.lr: [0.2]\n";
    cr_assert_eq(rw_grid_parse(y, strlen(y), "x.yaml", "", &g, err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(g.jobs[0].variant, "byol-optim.lr-0.1-eval.linear.lr-0.2");
    cr_expect(g.jobs[0].spec.eval.linear_lr == 0.2f && g.jobs[0].spec.optim.lr == 0.1f);
    rw_grid_free(&g);
}

static void expect_grid_error(const char *y, const char *s1, const char *s2)
{
    rw_grid g;
    char err[1024] = "";
    cr_assert_neq(rw_grid_parse(y, strlen(y), "q.yaml", "", &g, err, sizeof err), 0, "accepted:\n%s", y);
    cr_assert(strstr(err, "q.yaml") != NULL, "no file in '%s'", err);
    cr_assert(strstr(err, s1) != NULL, "expected '%s' in '%s'", s1, err);
    if (s2)
        cr_assert(strstr(err, s2) != NULL, "expected '%s' in '%s'", s2, err);
    cr_assert_null(g.jobs);
}

Test(grid, errors_name_file_and_field)
{
    expect_grid_error("base: {optim: {lr: abc}}\n", "base: optim.lr: must be a number", "line 1");
    expect_grid_error("grid:\n  variant:\n    - {name: a}\n    - {name: b, model: {predictor: big}}\n",
                      "grid.variant[1]: model.predictor: must be one of", "line 4");
    expect_grid_error("grid:\n  variant:\n    - {model: {width: 2}}\n", "grid.variant[0]",
                      "with a name");
    expect_grid_error("grid:\n  variant:\n    - {name: a}\n    - {name: a}\n", "grid.variant[1]",
                      "already the name");
    expect_grid_error("grid: {seed: [0, x]}\n", "grid.seed[1]", "integer");
    expect_grid_error("grid: {seed: [1, 1]}\n", "grid.seed[1]", "duplicate");
    expect_grid_error("grid: {seed: []}\n", "grid.seed", "1..");
    expect_grid_error("grid: {lr: [1, 2]}\n", "grid.lr: unknown axis", "seed, variant, sweep");
    expect_grid_error("grid:\n  sweep:\n    loss.gamma: [1]\n", "grid.sweep.loss.gamma[0]",
                      "unknown field");
    expect_grid_error("base: {loss: {kind: unified}}\ngrid:\n  sweep:\n    loss.beta: [1, x]\n", "grid.sweep.loss.beta[1]",
                      "must be a number");
    expect_grid_error("grid:\n  sweep:\n    seed: [1, 2]\n", "grid.sweep.seed", "seed axis");
    expect_grid_error("grid:\n  sweep:\n    loss.beta: []\n", "grid.sweep.loss.beta", "list");
    expect_grid_error("grid:\n  sweep:\n    loss..beta: [1]\n", "grid.sweep", "field path");
    expect_grid_error("grid:\n  sweep:\n    loss.beta: ['a b']\n", "grid.sweep.loss.beta[0]",
                      "[A-Za-z0-9_.-]");
    expect_grid_error("grid:\n  sweep: [1]\n", "grid.sweep", "mapping");
    expect_grid_error("grid:\n  sweep:\n    optim.lr: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]\n"
                      "    optim.epochs: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n"
                      "    optim.batch_size: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n",
                      "grid.sweep", "combinations");
    expect_grid_error("grid:\n  variant: [{name: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa}]\n"
                      "  sweep: {loss.beta: [-0.12345]}\n", "grid.sweep.loss.beta[0]", "longer");
    expect_grid_error("grid:\n  seed: [0, 1]\n  sweep: {optim.epochs: [1, 2, 3, 4, 5, 6, 7, 8, 9, "
                      "10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, "
                      "29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, "
                      "48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66, "
                      "67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 83, 84, 85, "
                      "86, 87, 88, 89, 90, 91, 92, 93, 94, 95, 96, 97, 98, 99, 100, 101, 102, 103, "
                      "104, 105, 106, 107, 108, 109, 110, 111, 112, 113, 114, 115, 116, 117, 118, "
                      "119, 120, 121, 122, 123, 124, 125, 126, 127, 128, 129, 130, 131, 132, 133, "
                      "134, 135, 136, 137, 138, 139, 140, 141, 142, 143, 144, 145, 146, 147, 148, "
                      "149, 150, 151, 152, 153, 154, 155, 156, 157, 158, 159, 160, 161, 162, 163, "
                      "164, 165, 166, 167, 168, 169, 170, 171, 172, 173, 174, 175, 176, 177, 178, "
                      "179, 180, 181, 182, 183, 184, 185, 186, 187, 188, 189, 190, 191, 192, 193, "
                      "194, 195, 196, 197, 198, 199, 200, 201, 202, 203, 204, 205, 206, 207, 208, "
                      "209, 210, 211, 212, 213, 214, 215, 216, 217, 218, 219, 220, 221, 222, 223, "
                      "224, 225, 226, 227, 228, 229, 230, 231, 232, 233, 234, 235, 236, 237, 238, "
                      "239, 240, 241, 242, 243, 244, 245, 246, 247, 248, 249, 250, 251, 252, 253, "
                      "254, 255, 256]}\n  variant: [{name: a}, {name: b}, {name: c}]\n",
                      "grid", "more than 1024 jobs");
    expect_grid_error("base: {}\nbogus: 1\n", "bogus: unknown field", "name, priority, base, grid");
    expect_grid_error("name: 'a b'\nbase: {}\n", "name:", "[A-Za-z0-9_.-]");
    expect_grid_error("priority: 5000\nbase: {}\n", "priority", "-1000..1000");
    expect_grid_error("base: [1]\n", "base", "mapping");
    expect_grid_error("base: {devices: 0}\n", "devices", "1..64");
    expect_grid_error("- 1\n", "top level", "mapping");
    expect_grid_error("base: {data: {kind: cifar10}}\n", "job ", "data.path");
    expect_grid_error("a: [\n", "YAML syntax error", NULL);
}

/* loss.alpha and loss.beta weigh the unified loss only: where the grid file
 * gives them to a job whose loss.kind is another (a variant's, a sweep's,
 * a plain spec's, a byol base's), the job would train BYOL under another
 * name; refused, naming the job and the field. A unified base's weights
 * under a byol variant are not the variant's doing: accepted. The
 * canonical YAML of a byol job leaves them out, so it submits again. */
Test(grid, loss_weights_of_a_loss_without_them_are_refused)
{
    expect_grid_error("name: g\ngrid: {variant: [{name: raft, loss: {beta: -1.0}}]}\n",
                      "job g/raft/seed0: loss.beta: only loss.kind unified is weighed",
                      "loss.kind is byol, whose loss has no weights, so it would train BYOL");
    expect_grid_error("name: g\ngrid: {sweep: {loss.beta: [-1, 1]}}\n", "job g/byol-beta--1/seed0",
                      "loss.beta: only loss.kind unified");
    expect_grid_error("name: solo\nloss: {alpha: 2, beta: 2}\n", "loss.alpha, loss.beta: only",
                      "or drop them");
    expect_grid_error("name: g\nbase: {loss: {beta: -1}}\ngrid: {seed: [0]}\n", "loss.beta",
                      "set loss.kind: unified (BYOL' beta > 0, RAFT beta < 0)");
    expect_grid_error("name: g\ngrid: {variant: [{name: s, loss: {kind: supervised, alpha: 0.5}, "
                      "model: {predictor: none}}]}\n",
                      "loss.alpha: only", "loss.kind is supervised");

    rw_grid g;
    char err[1024];
    const char *y = "name: g\nbase: {loss: {kind: unified, alpha: 1, beta: -1}}\n"
                    "grid: {variant: [{name: raft}, {name: byol, loss: {kind: byol}}]}\n";
    cr_assert_eq(rw_grid_parse(y, strlen(y), "q.yaml", "", &g, err, sizeof err), 0, "%s", err);
    cr_assert_eq(g.njobs, 2);
    cr_assert(g.jobs[0].spec.loss.kind == RW_LOSS_UNIFIED && g.jobs[0].spec.loss.beta == -1.0f);
    cr_assert(g.jobs[1].spec.loss.kind == RW_LOSS_BYOL && g.jobs[1].spec.loss.beta == 1.0f,
              "a byol job keeps the default weights");
    char canon[RW_SPEC_YAML_MAX];
    cr_assert_gt(rw_spec_to_yaml(&g.jobs[1].spec, canon, sizeof canon), 0);
    cr_assert(!strstr(canon, "alpha") && !strstr(canon, "beta"), "%s", canon);
    rw_grid again;
    cr_assert_eq(rw_grid_parse(canon, strlen(canon), "canon", "", &again, err, sizeof err), 0,
                 "%s", err);
    cr_assert(memcmp(&again.jobs[0].spec, &g.jobs[1].spec, sizeof again.jobs[0].spec) == 0);
    rw_grid_free(&again);
    rw_grid_free(&g);
    /* the example grids set their weights where they count (their data
     * sets' folders, absent here, replaced by one that is) */
    const char *src = getenv("RW_SOURCE_ROOT");
    const char *confs[] = {"paper-table1", "paper-table3", "stl10", "quickstart", "example-full",
                           "predictor-studies"};
    for (size_t k = 0; k < sizeof confs / sizeof *confs; k++) {
        char path[1024], basedir[1024], *text = NULL;
        size_t len;
        snprintf(path, sizeof path, "%s/conf/%s.yaml", src ? src : ".", confs[k]);
        cr_assert_eq(rw_grid_read_file(path, 1 << 20, &text, &len, basedir, sizeof basedir, err,
                                       sizeof err), 0, "%s", err);
        for (char *p; (p = strstr(text, "/data/"));) /* "/data/NAME" -> "/tmp//////..." */
            for (memcpy(p, "/tmp/", 5), p += 5; *p && *p != '\n' && *p != ' ' && *p != '}'; p++)
                *p = '/';
        int rc = rw_grid_parse(text, len, path, basedir, &g, err, sizeof err);
        free(text);
        cr_assert_eq(rc, 0, "%s", err);
        cr_assert_gt(g.njobs, 0);
        rw_grid_free(&g);
    }
}

/* Two jobs that would train the same (a variant listed twice under another
 * name, a sweep value written twice, a field that does not apply) are
 * refused, naming both; seeds repeat a job. */
Test(grid, jobs_that_would_train_the_same_are_refused)
{
    expect_grid_error("name: g\ngrid: {variant: [{name: a, optim: {lr: 1.0e-3}}, {name: b}, "
                      "{name: c, optim: {lr: 0.001}}]}\n",
                      "jobs g/a/seed0 and g/c/seed0 would train the same",
                      "repeat a job with grid.seed");
    expect_grid_error("name: g\ngrid: {seed: [1, 2], sweep: {optim.lr: [1.0e-3, 2.0e-3, 1e-3]}}\n",
                      "jobs g/byol-lr-1.0e-3/seed1 and g/byol-lr-1e-3/seed1 would train the same",
                      NULL);
    expect_grid_error("name: g\nbase: {model: {predictor: linear}}\n"
                      "grid: {variant: [{name: h256, model: {predictor_hidden: 256}}, "
                      "{name: h1024, model: {predictor_hidden: 1024}}]}\n",
                      "jobs g/h256/seed0 and g/h1024/seed0", "a field that does not apply");
    /* the same variant under two seeds, and variants apart in one field: fine */
    rw_grid g;
    char err[1024];
    const char *y = "name: g\ngrid: {seed: [0, 1], variant: [{name: a}, "
                    "{name: b, model: {predictor_hidden: 256}}]}\n";
    cr_assert_eq(rw_grid_parse(y, strlen(y), "q.yaml", "", &g, err, sizeof err), 0, "%s", err);
    cr_assert_eq(g.njobs, 4);
    rw_grid_free(&g);
}

/* ------------------------------------------------------------------------ */
/* Mutated input: the reader and the validator answer every byte string with
 * a frame, "need more" or an error, and never read out of bounds (run the
 * suite under -Db_sanitize=address to see the last part). */

Test(fuzz, mutated_frames_and_messages)
{
    const char *seeds[] = {
        "{\"type\":\"hello\",\"id\":1,\"version\":1,\"role\":\"worker\",\"slot\":0,\"host\":\"h\"}",
        "{\"type\":\"metric\",\"job\":3,\"attempt\":1,\"kind\":\"epoch\",\"epoch\":1,\"step\":5,"
        "\"loss\":1.5,\"align\":0.1,\"uniform\":-2,\"collapse\":0.9,\"knn\":null}",
        "{\"type\":\"submit\",\"id\":2,\"text\":\"base: {}\",\"origin\":\"x\",\"basedir\":\"/\"}",
    };
    unsigned long long x = 88172645463325252ull; /* xorshift: reproducible */
    int ok = 0, errors = 0;
    for (int it = 0; it < 20000; it++) {
        const char *seed = seeds[it % 3];
        size_t n = strlen(seed);
        char buf[512];
        memcpy(buf, seed, n);
        for (int k = 0; k < 1 + it % 4 && n > 0; k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            size_t at = (size_t)(x % n);
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            switch (x % 3) {
            case 0: buf[at] = (char)(x >> 8); break;              /* flip a byte */
            case 1: n = at; break;                                 /* truncate */
            default: buf[at] = "{}[]\",:0-e"[(x >> 8) % 10]; break; /* a structural byte */
            }
        }
        char *fr;
        size_t fl;
        cr_assert_eq(rw_frame_encode_raw(buf, n, &fr, &fl), 0);
        /* sometimes lie in the header */
        if (it % 7 == 0)
            fr[3] = (char)(fr[3] + 3);
        rw_frame_reader r;
        rw_frame_reader_init(&r, 4096);
        rw_frame_reader_feed(&r, fr, fl);
        json_t *m;
        char err[256];
        rw_frame_status st = rw_frame_reader_next(&r, &m, err, sizeof err);
        if (st == RW_FRAME_OK) {
            const char *type, *code;
            if (rw_msg_check(m, RW_FROM_CLIENT | RW_FROM_WORKER, &type, &code, err, sizeof err) == 0)
                ok++;
            else {
                errors++;
                cr_assert(code && err[0]);
            }
            json_decref(m);
        } else if (st != RW_FRAME_NEED_MORE) {
            errors++;
            cr_assert(err[0]);
        }
        free(fr);
        rw_frame_reader_free(&r);
    }
    cr_assert_gt(errors, 1000);
}
