/* Spec parser: values, defaults, and one test per class of error, each
 * checking the message names the file, the field and what is allowed. */
#include <criterion/criterion.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "proto/grid.h"
#include "proto/spec.h"

static char tmpdir[256];

static void mk_tmpdir(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/rw_test_spec.XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
}

static void rm_tmpdir(void) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "cleanup of %s failed\n", tmpdir);
}

TestSuite(spec, .init = mk_tmpdir, .fini = rm_tmpdir, .timeout = 10);

/* Writes `text` to tmpdir/rel and returns the full path (static buffer). */
static const char *write_file(const char *rel, const char *text) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, rel);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "cannot create %s", path);
    fputs(text, f);
    fclose(f);
    return path;
}

/* Parses a string as "spec.yaml"; returns the rc, message in err. */
static int parse(const char *yaml, rw_spec *s, char *err, size_t errlen) {
    return rw_spec_parse(yaml, strlen(yaml), "spec.yaml", "", s, err, errlen);
}

/* Expects failure with every substring in the NULL-terminated list, and the
 * struct left exactly as it was. */
static void expect_error_v(const char *yaml, const char *const *subs) {
    rw_spec s, before;
    memset(&s, 0xAB, sizeof s);
    before = s;
    char err[1024] = "";
    int rc = parse(yaml, &s, err, sizeof err);
    cr_assert_neq(rc, 0, "expected an error for:\n%s", yaml);
    cr_assert(memcmp(&s, &before, sizeof s) == 0, "struct modified on error: %s", err);
    cr_assert(strstr(err, "spec.yaml") != NULL, "no file name in '%s'", err);
    for (int i = 0; subs[i]; i++)
        cr_assert(strstr(err, subs[i]) != NULL, "expected '%s' in '%s'", subs[i], err);
}
#define expect_error(yaml, ...)                                          \
    do {                                                                 \
        const char *const subs_[] = {__VA_ARGS__, NULL};                 \
        expect_error_v(yaml, subs_);                                     \
    } while (0)

static const char *full_yaml =
    "name: raft-lin_1.0\n"
    "seed: 42\n"
    "threads: 3\n"
    "data:\n"
    "  kind: synthetic\n"
    "  path: /tmp/rw-synth\n"
    "  synthetic: {train: 300, test: 100, seed: 7}\n"
    "  image_size: 32\n"
    "  augment: none\n"
    "  mean: [0.5, 0.25, 0.125]\n"
    "  std:  [0.2, 0.3, 0.4]\n"
    "  loader_threads: 4\n"
    "  device_budget_mb: 2048\n"
    "model:\n"
    "  stem: cifar\n"
    "  width: 8\n"
    "  projector: {hidden: 64, out: 32}\n"
    "  predictor: linear_identity\n"
    "  predictor_hidden: 48\n"
    "loss:\n"
    "  kind: unified\n"
    "  alpha: 1\n"
    "  beta: -0.5\n"
    "  tangential: true\n"
    "optim:\n"
    "  lr: 3e-4\n"
    "  weight_decay: 1.0e-6\n"
    "  batch_size: 64\n"
    "  epochs: 20\n"
    "  max_steps: 1e6\n"
    "ema:\n"
    "  tau: 0.99\n"
    "  schedule: cosine\n"
    "eval:\n"
    "  linear: {epochs: 5, lr: 0.001, batch_size: 128}\n"
    "  knn: {every: 2, k: 20, temperature: 0.5}\n"
    "log:\n"
    "  every_steps: 10\n"
    "checkpoint:\n"
    "  every_epochs: 5\n"
    "  snapshot_every: 25\n";

Test(spec, full_example_values) {
    rw_spec s;
    char err[512] = "";
    cr_assert_eq(parse(full_yaml, &s, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(s.name, "raft-lin_1.0");
    cr_assert_eq(s.seed, 42);
    cr_assert_str_eq(s.init, "");
    cr_assert_eq(s.threads, 3);
    cr_assert_eq(s.data.kind, RW_DATA_SYNTHETIC);
    cr_assert_str_eq(s.data.path, "/tmp/rw-synth");
    cr_assert_eq(s.data.synthetic_train, 300);
    cr_assert_eq(s.data.synthetic_test, 100);
    cr_assert_eq(s.data.synthetic_seed, 7);
    cr_assert_eq(s.data.image_size, 32);
    cr_assert_eq(s.data.augment, RW_AUG_NONE);
    cr_assert_eq(s.data.mean[0], 0.5f);
    cr_assert_eq(s.data.mean[1], 0.25f);
    cr_assert_eq(s.data.mean[2], 0.125f);
    cr_assert_eq(s.data.std[0], 0.2f);
    cr_assert_eq(s.data.std[2], 0.4f);
    cr_assert_eq(s.data.loader_threads, 4);
    cr_assert_eq(s.data.device_budget_mb, 2048);
    cr_assert_eq(s.model.stem, RW_STEM_CIFAR);
    cr_assert_eq(s.model.width, 8);
    cr_assert_eq(s.model.proj_hidden, 64);
    cr_assert_eq(s.model.proj_out, 32);
    cr_assert_eq(s.model.predictor, RW_PRED_LINEAR_IDENTITY);
    cr_assert_eq(s.model.pred_hidden, 48);
    cr_assert_eq(s.loss.kind, RW_LOSS_UNIFIED);
    cr_assert_eq(s.loss.alpha, 1.0f);
    cr_assert_eq(s.loss.beta, -0.5f);
    cr_assert_eq(s.loss.tangential, 1);
    cr_assert_eq(s.optim.lr, 3e-4f);
    cr_assert_eq(s.optim.weight_decay, 1e-6f);
    cr_assert_eq(s.optim.batch_size, 64);
    cr_assert_eq(s.optim.epochs, 20);
    cr_assert_eq(s.optim.max_steps, 1000000);
    cr_assert_eq(s.ema.tau, 0.99f);
    cr_assert_eq(s.ema.schedule, RW_TAU_COSINE);
    cr_assert_eq(s.eval.linear_epochs, 5);
    cr_assert_eq(s.eval.linear_lr, 0.001f);
    cr_assert_eq(s.eval.linear_batch_size, 128);
    cr_assert_eq(s.eval.knn_every, 2);
    cr_assert_eq(s.eval.knn_k, 20);
    cr_assert_eq(s.eval.knn_temperature, 0.5f);
    cr_assert_eq(s.log.every_steps, 10);
    cr_assert_eq(s.checkpoint.every_epochs, 5);
    cr_assert_eq(s.checkpoint.snapshot_every, 25);
}

Test(spec, defaults_when_absent) {
    rw_spec d, s;
    rw_spec_defaults(&d);
    char err[512] = "";
    cr_assert_eq(parse("{}\n", &s, err, sizeof err), 0, "%s", err);
    cr_assert(memcmp(&s, &d, sizeof s) == 0);
    /* the paper's setup (appendix C) */
    cr_assert_eq(d.optim.lr, 3e-4f);
    cr_assert_eq(d.optim.batch_size, 128);
    cr_assert_eq(d.optim.epochs, 300);
    cr_assert_eq(d.ema.tau, 0.996f);
    cr_assert_eq(d.model.predictor, RW_PRED_MLP);
    cr_assert_eq(d.eval.linear_epochs, 100);
    cr_assert_eq(d.eval.linear_lr, 5e-4f);
    cr_assert_eq(d.data.image_size, 96);
    cr_assert_eq(d.data.mean[0], 0.4914f);
    cr_assert_eq(d.data.std[2], 0.2616f);
    cr_assert_eq(d.data.kind, RW_DATA_SYNTHETIC);
    cr_assert_eq(d.data.device_budget_mb, 0); /* half the device's free memory */
    cr_assert_str_eq(d.data.path, "");
    cr_assert_eq(rw_spec_validate(&d, "defaults", err, sizeof err), 0, "%s", err);

    /* partial groups keep the other defaults; a null group is an empty one */
    cr_assert_eq(parse("optim:\n  lr: 0.01\neval:\nseed: 3\n", &s, err, sizeof err), 0, "%s", err);
    cr_assert_eq(s.optim.lr, 0.01f);
    cr_assert_eq(s.optim.epochs, 300);
    cr_assert_eq(s.seed, 3);
    cr_assert_eq(s.eval.linear_epochs, 100);
}

Test(spec, number_forms) {
    const char *forms[] = {"3e-4", "3.0e-4", "0.0003", "3E-4", "+3e-4", "!!float 3e-4"};
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
        char yaml[64], err[512] = "";
        rw_spec s;
        snprintf(yaml, sizeof yaml, "optim: {lr: %s}\n", forms[i]);
        cr_assert_eq(parse(yaml, &s, err, sizeof err), 0, "%s: %s", forms[i], err);
        cr_assert_eq(s.optim.lr, 3e-4f, "%s", forms[i]);
    }
    rw_spec s;
    char err[512];
    cr_assert_eq(parse("seed: 9007199254740992\n", &s, err, sizeof err), 0, "%s", err);
    cr_assert_eq(s.seed, UINT64_C(9007199254740992));
    cr_assert_eq(parse("optim: {epochs: 2.0e1}\n", &s, err, sizeof err), 0, "%s", err);
    cr_assert_eq(s.optim.epochs, 20);
}

Test(spec, unknown_key_top) {
    expect_error("name: a\noptimizer: {lr: 1}\n", "optimizer: unknown field",
                 "allowed at top level: name, seed, init, threads, data, model, loss, optim, ema, "
                 "eval, log, checkpoint",
                 "line 2");
}

Test(spec, unknown_key_nested) {
    expect_error("optim:\n  lrate: 0.1\n", "optim.lrate: unknown field",
                 "allowed in optim: lr, weight_decay, batch_size, epochs, max_steps");
    expect_error("eval:\n  knn: {k: 5, temp: 0.1}\n", "eval.knn.temp: unknown field",
                 "every, k, temperature");
    expect_error("data:\n  synthetic: {train: 10, size: 3}\n", "data.synthetic.size",
                 "train, test, seed");
}

Test(spec, wrong_type) {
    expect_error("optim:\n  lr: abc\n", "spec.yaml: optim.lr: must be a number in (0, 10], got 'abc'");
    expect_error("optim: {schedule: step}\n", "optim.schedule", "constant, cosine");
    expect_error("optim: {warmup_epochs: -1}\n", "optim.warmup_epochs", "0..100000");
    expect_error("optim: {lr: true}\n", "optim.lr", "(0, 10]", "boolean");
    expect_error("optim: {lr: '3e-4'}\n", "optim.lr", "got string '3e-4'");
    expect_error("optim: {lr: [1]}\n", "optim.lr", "got a list");
    expect_error("optim: {lr: .inf}\n", "optim.lr", "(0, 10]");
    expect_error("optim: {epochs: 2.5}\n", "optim.epochs: must be an integer in 0..100000, got '2.5'");
    expect_error("loss: {tangential: yes}\n", "loss.tangential: must be true or false");
    expect_error("optim: 3\n", "optim: must be a mapping");
    expect_error("data: {mean: [0.5, 0.5]}\n", "data.mean: must be a list of 3 numbers");
    expect_error("data: {mean: [0.5, x, 0.5]}\n", "data.mean[1]: must be a number in [0, 1]");
    expect_error("name: 'a b'\n", "name: must be 1..63 characters from [A-Za-z0-9_.-]");
    expect_error("seed: !!str 3\n", "seed: must be an integer", "got string '3'");
}

Test(spec, out_of_range) {
    expect_error("model: {width: 129}\n", "model.width: must be an integer in 1..128, got '129'");
    expect_error("optim: {lr: 0}\n", "optim.lr: must be a number in (0, 10]");
    expect_error("optim: {lr: 1e-50}\n", "optim.lr", "(0, 10]"); /* 0 as a float */
    expect_error("optim: {batch_size: 1}\n", "optim.batch_size", "2..65536");
    expect_error("data: {image_size: 4}\n", "data.image_size", "8..512");
    expect_error("seed: -1\n", "seed", "0..2^53");
    expect_error("seed: 9007199254740993\n", "seed", "0..2^53");
    expect_error("ema: {tau: 1.5}\n", "ema.tau", "[0, 1]");
    expect_error("eval: {knn: {k: 0}}\n", "eval.knn.k", "1..10000");
    expect_error("eval: {knn: {temperature: 0}}\n", "eval.knn.temperature", "(0, 100]");
    expect_error("loss: {alpha: 2e6}\n", "loss.alpha", "|x| <= 1e+06");
    expect_error("data: {std: [0.2, 0, 0.2]}\n", "data.std[1]", "(0, 10]");
    expect_error("threads: 2000\n", "threads", "0..1024");
    expect_error("data: {device_budget_mb: -1}\n", "data.device_budget_mb", "0..16777216");
    char longname[200] = "name: ";
    memset(longname + 6, 'a', 64);
    strcat(longname, "\n");
    expect_error(longname, "name: must be 1..63 characters");
}

Test(spec, bad_enum) {
    expect_error("model: {predictor: mlpp}\n",
                 "model.predictor: must be one of: mlp, mlp_bn, linear, linear_identity, none",
                 "got 'mlpp'");
    expect_error("data: {kind: imagenet}\n", "data.kind", "synthetic, cifar10, cifar100, stl10");
    expect_error("loss: {kind: raft}\n", "loss.kind", "byol, unified");
    expect_error("ema: {schedule: linear}\n", "ema.schedule", "constant, cosine");
    expect_error("model: {stem: 3}\n", "model.stem", "imagenet, cifar");
    expect_error("precision: fp16\n", "precision: must be one of: tf32, fp32, bf16",
                 "got 'fp16'");
}

/* The math mode: tf32 by default (PyTorch's default for convolutions), and
 * it survives the canonical YAML the daemon stores and ships. */
Test(spec, precision) {
    rw_spec s, back;
    char err[512] = "", yaml[RW_SPEC_YAML_MAX];
    cr_assert_eq(parse("{}\n", &s, err, sizeof err), 0, "%s", err);
    cr_assert_eq(s.precision, RW_PREC_TF32);
    const char *names[] = {"tf32", "fp32", "bf16"};
    const rw_precision want[] = {RW_PREC_TF32, RW_PREC_FP32, RW_PREC_BF16};
    for (int i = 0; i < 3; i++) {
        char text[64];
        snprintf(text, sizeof text, "precision: %s\n", names[i]);
        cr_assert_eq(parse(text, &s, err, sizeof err), 0, "%s", err);
        cr_assert_eq(s.precision, want[i], "%s", names[i]);
        cr_assert_gt(rw_spec_to_yaml(&s, yaml, sizeof yaml), 0);
        snprintf(text, sizeof text, "\nprecision: %s\n", names[i]);
        cr_assert(strstr(yaml, text), "no '%s' in:\n%s", names[i], yaml);
        cr_assert_eq(parse(yaml, &back, err, sizeof err), 0, "%s", err);
        cr_assert(memcmp(&s, &back, sizeof s) == 0, "%s does not round-trip", names[i]);
    }
    rw_spec_defaults(&s);
    s.precision = (rw_precision)3;
    cr_assert_neq(rw_spec_validate(&s, "job 7", err, sizeof err), 0);
    cr_assert(strstr(err, "job 7: precision: must be one of: tf32, fp32, bf16"), "%s", err);
}

/* The backbone: resnet18 by default, each arch round-trips the canonical
 * YAML; width up to 128 for the basic blocks, 64 for resnet50's
 * bottlenecks. */
Test(spec, model_arch_and_width) {
    rw_spec s, back;
    char err[512] = "", yaml[RW_SPEC_YAML_MAX];
    cr_assert_eq(parse("{}\n", &s, err, sizeof err), 0, "%s", err);
    cr_assert_eq(s.model.arch, RW_ARCH_RESNET18);
    const char *names[] = {"resnet18", "resnet34", "resnet50"};
    for (int i = 0; i < 3; i++) {
        char text[96];
        snprintf(text, sizeof text, "model: {arch: %s, width: %d}\n", names[i], i < 2 ? 128 : 64);
        cr_assert_eq(parse(text, &s, err, sizeof err), 0, "%s", err);
        cr_assert_eq(s.model.arch, (rw_arch)i, "%s", names[i]);
        cr_expect_str_eq(rw_arch_name(s.model.arch), names[i]);
        cr_assert_gt(rw_spec_to_yaml(&s, yaml, sizeof yaml), 0);
        snprintf(text, sizeof text, "arch: %s\n", names[i]);
        cr_assert(strstr(yaml, text), "no '%s' in:\n%s", text, yaml);
        cr_assert_eq(parse(yaml, &back, err, sizeof err), 0, "%s", err);
        cr_assert(memcmp(&s, &back, sizeof s) == 0, "%s does not round-trip", names[i]);
    }
    expect_error("model: {arch: resnet101}\n",
                 "model.arch: must be one of: resnet18, resnet34, resnet50", "got 'resnet101'");
    expect_error("model: {arch: resnet34, width: 129}\n", "model.width", "1..128");
    expect_error("model: {arch: resnet50, width: 128}\n", "model.width",
                 "resnet50's bottleneck blocks take a width in 1..64", "got 128");
    rw_spec_defaults(&s);
    s.model.arch = RW_ARCH_RESNET50;
    s.model.width = 96;
    cr_assert_neq(rw_spec_validate(&s, "job 7", err, sizeof err), 0);
    cr_assert(strstr(err, "job 7: model.width: resnet50's"), "%s", err);
}

/* Deterministic weight gradients by default; false survives the canonical
 * YAML, and a non-boolean is refused. */
Test(spec, deterministic) {
    rw_spec s, back;
    char err[512] = "", yaml[RW_SPEC_YAML_MAX];
    cr_assert_eq(parse("{}\n", &s, err, sizeof err), 0, "%s", err);
    cr_assert_eq(s.deterministic, 1);
    cr_assert_eq(parse("deterministic: false\n", &s, err, sizeof err), 0, "%s", err);
    cr_assert_eq(s.deterministic, 0);
    cr_assert_gt(rw_spec_to_yaml(&s, yaml, sizeof yaml), 0);
    cr_assert(strstr(yaml, "\ndeterministic: false\n"), "%s", yaml);
    cr_assert_eq(parse(yaml, &back, err, sizeof err), 0, "%s", err);
    cr_assert_eq(back.deterministic, 0);
    expect_error("deterministic: sometimes\n", "deterministic", "true or false", NULL);
}

Test(spec, duplicate_key) {
    expect_error("seed: 1\nname: x\nseed: 2\n", "seed: duplicate key", "first given on line 1",
                 "line 3");
    expect_error("optim:\n  lr: 0.1\n  lr: 0.2\n", "optim.lr: duplicate key");
    expect_error("optim: {lr: 0.1}\noptim: {epochs: 2}\n", "optim: duplicate key");
}

Test(spec, yaml_syntax_error_has_line) {
    expect_error("name: a\noptim:\n  lr: [1, 2\nseed: 1\n", "YAML syntax error");
    rw_spec s;
    char err[512];
    cr_assert_neq(parse("name: a\nseed: 1\n  bad: indent\n", &s, err, sizeof err), 0);
    cr_assert(strstr(err, "spec.yaml:3:") != NULL, "no line 3 in '%s'", err);
}

Test(spec, structure_errors) {
    expect_error("", "empty spec");
    expect_error("# only a comment\n", "empty spec");
    expect_error("- a\n- b\n", "top level: must be a mapping", "got a list");
    expect_error("just text\n", "top level: must be a mapping");
    expect_error("a: 1\n---\nb: 2\n", "more than one YAML document");
    expect_error("optim: &o {lr: 0.1}\neval: *o\n", "aliases");
    expect_error("? [a, b]\n: 1\n", "keys must be plain names");
    /* nesting bound */
    char deep[256] = "";
    for (int i = 0; i < 40; i++) strcat(deep, "[");
    for (int i = 0; i < 40; i++) strcat(deep, "]");
    expect_error(deep, "nesting deeper");
}

Test(spec, too_large) {
    size_t n = (1u << 20) + 10;
    char *big = malloc(n + 1);
    memset(big, ' ', n);
    big[n] = '\0';
    memcpy(big, "seed: 1\n", 8);
    rw_spec s;
    char err[512];
    cr_assert_neq(rw_spec_parse(big, n, "big.yaml", "", &s, err, sizeof err), 0);
    cr_assert(strstr(err, "big.yaml: too large") != NULL, "%s", err);
    FILE *f = fopen(write_file("big.yaml", ""), "w");
    fwrite(big, 1, n, f);
    fclose(f);
    char path[512];
    snprintf(path, sizeof path, "%s/big.yaml", tmpdir);
    cr_assert_neq(rw_spec_load(path, &s, err, sizeof err), 0);
    cr_assert(strstr(err, "too large") != NULL, "%s", err);
    free(big);
}

Test(spec, missing_file) {
    rw_spec s;
    char err[512], path[512];
    snprintf(path, sizeof path, "%s/nope.yaml", tmpdir);
    cr_assert_neq(rw_spec_load(path, &s, err, sizeof err), 0);
    cr_assert(strstr(err, "nope.yaml") && strstr(err, "No such file or directory"), "%s", err);
    cr_assert_neq(rw_spec_load(tmpdir, &s, err, sizeof err), 0); /* a directory */
    cr_assert(strstr(err, tmpdir) != NULL, "%s", err);
    cr_assert_neq(rw_spec_load(write_file("empty.yaml", ""), &s, err, sizeof err), 0);
    cr_assert(strstr(err, "empty.yaml: empty file") != NULL, "%s", err);
}

Test(spec, cifar_needs_path) {
    expect_error("data: {kind: cifar10}\n", "data.path: required for data.kind cifar10");
    expect_error("data: {kind: cifar10, path: /nonexistent/cifar}\n", "data.path",
                 "/nonexistent/cifar", "No such file or directory");
    expect_error("data: {kind: cifar10, path: /etc/hostname}\n", "data.path", "not a directory");
    expect_error("data: {kind: cifar10, path: ''}\n", "data.path: must be a non-empty path");
}

Test(spec, other_data_sets_need_their_folder) {
    expect_error("data: {kind: cifar100}\n", "data.path: required for data.kind cifar100",
                 "train.bin and test.bin");
    expect_error("data: {kind: stl10}\n", "data.path: required for data.kind stl10",
                 "unlabeled_X.bin (stl10_binary)");
    expect_error("data: {kind: stl10, path: /etc/hostname}\n", "stl10 needs the folder",
                 "not a directory");
    expect_error("data: {kind: cifar10, path: /tmp, labels: coarse}\n",
                 "data.labels: coarse is for data.kind cifar100", "data.kind is cifar10");
    expect_error("data: {labels: superclass}\n", "data.labels", "fine, coarse");
    expect_error("data: {unlabeled: 3}\n", "data.unlabeled");
    rw_spec s;
    char err[512] = "";
    cr_assert_eq(parse("data: {kind: cifar100, path: /tmp, labels: coarse}\n", &s, err,
                       sizeof err), 0, "%s", err);
    cr_assert(s.data.kind == RW_DATA_CIFAR100 && s.data.labels == RW_LABELS_COARSE);
    cr_assert_eq(parse("data: {kind: stl10, path: /tmp, unlabeled: false}\n", &s, err,
                       sizeof err), 0, "%s", err);
    cr_assert(s.data.kind == RW_DATA_STL10 && !s.data.unlabeled);
}

/* Normalization defaults to the data set's own statistics; what the YAML
 * gives stays, channel vector by channel vector; the canonical YAML keeps
 * the values, so a worker reading it gets the same struct. */
Test(spec, mean_and_std_default_per_data_set) {
    static const struct {
        const char *yaml;
        float mean0, std2;
    } cases[] = {
        {"{}\n", 0.4914f, 0.2616f},
        {"data: {kind: cifar10, path: /tmp}\n", 0.4914f, 0.2616f},
        {"data: {kind: cifar100, path: /tmp}\n", 0.5071f, 0.2762f},
        {"data: {kind: stl10, path: /tmp}\n", 0.4467f, 0.2713f},
        {"data: {kind: stl10, path: /tmp, mean: [0.5, 0.5, 0.5]}\n", 0.5f, 0.2713f},
        {"data: {kind: stl10, path: /tmp, std: [0.25, 0.25, 0.25]}\n", 0.4467f, 0.25f},
        {"data: {kind: cifar100, path: /tmp, mean: [0.1, 0.2, 0.3], std: [1, 1, 1]}\n", 0.1f,
         1.0f},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        rw_spec s, back;
        char err[512] = "", yaml[RW_SPEC_YAML_MAX];
        cr_assert_eq(parse(cases[i].yaml, &s, err, sizeof err), 0, "%s", err);
        cr_expect(s.data.mean[0] == cases[i].mean0 && s.data.std[2] == cases[i].std2,
                  "%s: mean[0] %g std[2] %g", cases[i].yaml, s.data.mean[0], s.data.std[2]);
        cr_assert_gt(rw_spec_to_yaml(&s, yaml, sizeof yaml), 0);
        cr_assert_eq(parse(yaml, &back, err, sizeof err), 0, "%s", err);
        cr_expect(memcmp(&s, &back, sizeof s) == 0, "%s: the canonical YAML reads back different",
                  cases[i].yaml);
    }
}

Test(spec, init_must_exist) {
    expect_error("init: /nonexistent/w.safetensors\n", "init: cannot read",
                 "/nonexistent/w.safetensors", "No such file or directory");
    expect_error("init: /tmp\n", "init:", "not a regular file");
}

Test(spec, loss_alpha_beta_not_both_zero) {
    expect_error("loss: {kind: unified, alpha: 0, beta: 0}\n", "loss.alpha, loss.beta",
                 "must not both be 0");
    rw_spec s;
    char err[512];
    cr_assert_eq(parse("loss: {kind: unified, alpha: 0, beta: -1}\n", &s, err, sizeof err), 0, "%s",
                 err);
}

/* The supervised baseline: labels and a classifier, no predictor or teacher
 * in its loss; it survives the canonical YAML. */
Test(spec, supervised_baseline) {
    expect_error("loss: {kind: supervised}\n", "model.predictor:", "no predictor",
                 "predictor: none (it is mlp)");
    expect_error("model: {predictor: none}\nloss: {kind: supervised, tangential: true}\n",
                 "loss.tangential:", "supervised");
    expect_error("data: {kind: stl10, path: /tmp}\nmodel: {predictor: none}\n"
                 "loss: {kind: supervised}\n", "data.unlabeled:", "unlabeled: false");
    rw_spec s, back;
    char err[512], yaml[8192];
    cr_assert_eq(parse("model: {predictor: none}\nloss: {kind: supervised}\n"
                       "data: {kind: cifar100, path: /tmp, labels: coarse}\n", &s, err, sizeof err),
                 0, "%s", err);
    cr_assert_eq(s.loss.kind, RW_LOSS_SUPERVISED);
    cr_expect_eq(rw_spec_classes(&s), 20);
    s.data.labels = RW_LABELS_FINE;
    cr_expect_eq(rw_spec_classes(&s), 100);
    s.data.kind = RW_DATA_SYNTHETIC;
    cr_expect_eq(rw_spec_classes(&s), 10);
    cr_assert_gt(rw_spec_to_yaml(&s, yaml, sizeof yaml), 0);
    cr_assert(strstr(yaml, "kind: supervised"), "%s", yaml);
    cr_assert_eq(rw_spec_parse(yaml, strlen(yaml), "canonical", "", &back, err, sizeof err), 0,
                 "%s", err);
    cr_assert(memcmp(&s, &back, sizeof s) == 0, "the supervised spec does not round-trip");
}

/* Theorem 5.1's start (theta0, -W0) and the rounding control: fields of
 * the seed's initialization, so refused where there is no W, or where the
 * weights come from a file. */
Test(spec, init_modifications) {
    rw_spec s, back;
    char err[512], yaml[RW_SPEC_YAML_MAX];
    cr_assert_eq(parse("model: {predictor: linear}\n", &s, err, sizeof err), 0, "%s", err);
    cr_expect(!s.model.predictor_negated && s.model.init_nudge_ulps == 0, "defaults");
    cr_assert_eq(parse("model: {predictor: linear, predictor_negated: true, init_nudge_ulps: -3}\n",
                       &s, err, sizeof err), 0, "%s", err);
    cr_expect(s.model.predictor_negated && s.model.init_nudge_ulps == -3);
    cr_assert_gt(rw_spec_to_yaml(&s, yaml, sizeof yaml), 0);
    cr_assert(strstr(yaml, "predictor_negated: true") && strstr(yaml, "init_nudge_ulps: -3"), "%s",
              yaml);
    cr_assert_eq(rw_spec_parse(yaml, strlen(yaml), "canonical", "", &back, err, sizeof err), 0,
                 "%s", err);
    cr_assert(memcmp(&s, &back, sizeof s) == 0, "the fields do not round-trip");
    expect_error("model: {predictor: none, predictor_negated: true}\n",
                 "model.predictor_negated:", "no output layer");
    expect_error("model: {predictor: directpred, predictor_negated: true}\n",
                 "model.predictor_negated:", "does not last");
    expect_error("model: {init_nudge_ulps: 1000001}\n", "model.init_nudge_ulps");
    expect_error("model: {predictor_negated: 1}\n", "model.predictor_negated");
    /* init names a file that exists, so only the combination is refused */
    char w[] = "/tmp/rw-spec-init-XXXXXX", text[256];
    int fd = mkstemp(w);
    cr_assert_geq(fd, 0);
    close(fd);
    snprintf(text, sizeof text,
             "init: %s\nmodel: {predictor: linear, predictor_negated: true}\n", w);
    expect_error(text, "model.predictor_negated", "init reads the weights from a file");
    snprintf(text, sizeof text, "init: %s\nmodel: {init_nudge_ulps: 1}\n", w);
    expect_error(text, "model.init_nudge_ulps", "set one or the other");
    unlink(w);
}

Test(spec, linear_evaluation_every_n_epochs) {
    rw_spec s;
    char err[512];
    cr_assert_eq(parse("eval: {linear: {every: 10}}\n", &s, err, sizeof err), 0, "%s", err);
    cr_expect_eq(s.eval.linear_every, 10);
    cr_assert_eq(parse("name: x\n", &s, err, sizeof err), 0, "%s", err);
    cr_expect_eq(s.eval.linear_every, 0, "off unless asked");
    expect_error("eval: {linear: {every: -1}}\n", "eval.linear.every");
}

/* monitor.collapse: its defaults (warn on L_uniform and the collapse std,
 * docs/specs.md#the-collapse-alarm), its ranges, a round trip, and a rank
 * threshold refused where no rank is measured. */
Test(spec, collapse_alarm_fields) {
    rw_spec s, back;
    char err[512];
    cr_assert_eq(parse("name: x\n", &s, err, sizeof err), 0, "%s", err);
    cr_expect_eq(s.monitor.collapse.action, RW_ALARM_WARN);
    cr_expect_eq(s.monitor.collapse.uniform_above, -0.3f);
    cr_expect_eq(s.monitor.collapse.std_below, 0.25f);
    cr_expect_eq(s.monitor.collapse.rank_below, 0);
    cr_expect_eq(s.monitor.collapse.rank_share_below, 0);
    cr_expect_eq(s.monitor.collapse.patience, 2);
    cr_assert_eq(parse("monitor: {collapse: {action: stop, rank_below: 8, rank_share_below: 0.25,"
                       " uniform_above: 0, std_below: 0.1, patience: 3}}\n",
                       &s, err, sizeof err), 0, "%s", err);
    cr_expect_eq(s.monitor.collapse.action, RW_ALARM_STOP);
    cr_expect_eq(s.monitor.collapse.rank_below, 8.0f);
    cr_expect_eq(s.monitor.collapse.rank_share_below, 0.25f);
    cr_expect_eq(s.monitor.collapse.uniform_above, 0.0f);
    cr_expect_eq(s.monitor.collapse.patience, 3);
    char yaml[RW_SPEC_YAML_MAX];
    cr_assert_gt(rw_spec_to_yaml(&s, yaml, sizeof yaml), 0);
    cr_assert(strstr(yaml, "monitor:\n  collapse:\n    action: stop\n"), "%s", yaml);
    cr_assert_eq(rw_spec_parse(yaml, strlen(yaml), "canonical", "", &back, err, sizeof err), 0,
                 "%s", err);
    cr_assert(memcmp(&s, &back, sizeof s) == 0, "monitor.collapse does not round-trip");
    expect_error("monitor: {collapse: {action: halt}}\n", "monitor.collapse.action",
                 "off, warn, stop");
    expect_error("monitor: {collapse: {uniform_above: 0.5}}\n", "monitor.collapse.uniform_above");
    expect_error("monitor: {collapse: {rank_share_below: 2}}\n",
                 "monitor.collapse.rank_share_below");
    expect_error("monitor: {collapse: {patience: 0}}\n", "monitor.collapse.patience");
    expect_error("monitor: {collapse: {every: 2}}\n", "unknown field");
    /* the rank is what they judge: eval.rank.every 0 measures none */
    expect_error("eval: {rank: {every: 0}}\nmonitor: {collapse: {rank_below: 4}}\n",
                 "monitor.collapse.rank_below", "eval.rank.every");
    cr_assert_eq(parse("eval: {rank: {every: 0}}\nmonitor: {collapse: {rank_below: 4, "
                       "action: off}}\n", &s, err, sizeof err), 0, "%s", err);
    cr_assert_eq(parse("eval: {rank: {every: 0}}\n", &s, err, sizeof err), 0,
                 "the defaults judge no rank: %s", err);
}

Test(spec, load_error_struct_untouched) {
    rw_spec s, before;
    memset(&s, 0x5A, sizeof s);
    before = s;
    char err[512];
    const char *p = write_file("bad.yaml", "seed: 1\noptim: {lr: 100}\n");
    cr_assert_neq(rw_spec_load(p, &s, err, sizeof err), 0);
    cr_assert(strstr(err, "bad.yaml: optim.lr: must be a number in (0, 10], got '100'"), "%s", err);
    cr_assert(memcmp(&s, &before, sizeof s) == 0);
}

Test(spec, relative_paths) {
    char sub[512], data[512], w[512], real[PATH_MAX], want[PATH_MAX + 64];
    snprintf(sub, sizeof sub, "%s/sub", tmpdir);
    snprintf(data, sizeof data, "%s/sub/cifar", tmpdir);
    cr_assert_eq(mkdir(sub, 0755), 0);
    cr_assert_eq(mkdir(data, 0755), 0);
    snprintf(w, sizeof w, "%s/w.safetensors", tmpdir);
    fclose(fopen(w, "w"));
    const char *p = write_file("sub/spec.yaml",
                               "init: ../w.safetensors\ndata: {kind: cifar10, path: cifar}\n");
    rw_spec s;
    char err[1024] = "";
    cr_assert_eq(rw_spec_load(p, &s, err, sizeof err), 0, "%s", err);
    cr_assert_not_null(realpath(sub, real));
    snprintf(want, sizeof want, "%s/../w.safetensors", real);
    cr_assert_str_eq(s.init, want);
    snprintf(want, sizeof want, "%s/cifar", real);
    cr_assert_str_eq(s.data.path, want);
    cr_assert_eq(s.init[0], '/', "resolved paths are absolute");

    /* the file's folder, not the working directory: the same spec from
     * elsewhere gives the same paths */
    cr_assert_eq(chdir(sub), 0);
    rw_spec s2;
    cr_assert_eq(rw_spec_load("spec.yaml", &s2, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(s2.data.path, s.data.path);

    /* rw_spec_parse: basedir "" keeps them as written; absolute stays */
    cr_assert_eq(rw_spec_parse("data: {path: x/y}\n", 17, "s", "", &s, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(s.data.path, "x/y");
    cr_assert_eq(rw_spec_parse("data: {path: x/y}\n", 17, "s", "/base/", &s, err, sizeof err), 0);
    cr_assert_str_eq(s.data.path, "/base/x/y");
    cr_assert_eq(rw_spec_parse("data: {path: /a/b}\n", 18, "s", "/base", &s, err, sizeof err), 0);
    cr_assert_str_eq(s.data.path, "/a/b");
    /* synthetic with no path stays empty: the worker picks a cache dir */
    cr_assert_eq(parse("data: {kind: synthetic}\n", &s, err, sizeof err), 0);
    cr_assert_str_eq(s.data.path, "");
}

Test(spec, path_too_long_is_an_error) {
    char yaml[2400] = "data: {path: ";
    size_t n = strlen(yaml);
    memset(yaml + n, 'p', 1100);
    strcpy(yaml + n + 1100, "}\n");
    expect_error(yaml, "data.path: must be a non-empty path of at most 1023 bytes");
    /* fits alone but not once joined to basedir */
    char yaml2[1200] = "data: {path: ";
    n = strlen(yaml2);
    memset(yaml2 + n, 'p', 1015);
    strcpy(yaml2 + n + 1015, "}\n");
    rw_spec s;
    char err[512];
    cr_assert_neq(rw_spec_parse(yaml2, strlen(yaml2), "s.yaml", "/some/base/dir", &s, err, sizeof err),
                  0);
    cr_assert(strstr(err, "data.path: path too long"), "%s", err);
}

Test(spec, null_clears_a_path) {
    rw_spec s;
    char err[512];
    cr_assert_eq(parse("init: ~\ndata: {path: null}\n", &s, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(s.init, "");
    cr_assert_str_eq(s.data.path, "");
}

Test(spec, validate_checks_struct_ranges) {
    rw_spec s;
    char err[512];
    rw_spec_defaults(&s);
    s.optim.lr = -1.0f;
    cr_assert_neq(rw_spec_validate(&s, "job 7", err, sizeof err), 0);
    cr_assert(strstr(err, "job 7: optim.lr: must be a number in (0, 10]"), "%s", err);
    rw_spec_defaults(&s);
    s.model.predictor = (rw_predictor)9;
    cr_assert_neq(rw_spec_validate(&s, "job 7", err, sizeof err), 0);
    cr_assert(strstr(err, "model.predictor: must be one of"), "%s", err);
    rw_spec_defaults(&s);
    strcpy(s.name, "has space");
    cr_assert_neq(rw_spec_validate(&s, "job 7", err, sizeof err), 0);
    cr_assert(strstr(err, "job 7: name"), "%s", err);
}

Test(spec, names) {
    cr_assert_str_eq(rw_predictor_name(RW_PRED_MLP), "mlp");
    cr_assert_str_eq(rw_predictor_name(RW_PRED_MLP_BN), "mlp_bn");
    cr_assert_str_eq(rw_predictor_name(RW_PRED_LINEAR), "linear");
    cr_assert_str_eq(rw_predictor_name(RW_PRED_LINEAR_IDENTITY), "linear_identity");
    cr_assert_str_eq(rw_predictor_name(RW_PRED_NONE), "none");
    cr_assert_str_eq(rw_loss_kind_name(RW_LOSS_BYOL), "byol");
    cr_assert_str_eq(rw_loss_kind_name(RW_LOSS_UNIFIED), "unified");
    cr_assert_str_eq(rw_loss_kind_name(RW_LOSS_SUPERVISED), "supervised");
    cr_assert_str_eq(rw_predictor_name((rw_predictor)77), "?");
}

/* Every spec under conf/ parses: examples must not rot. */
Test(spec, conf_examples_parse) {
    const char *root = getenv("RW_SOURCE_ROOT");
    if (!root) cr_skip_test("RW_SOURCE_ROOT not set (run through meson test)");
    const char *files[] = {"conf/example-full.yaml"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[1024], err[1024] = "";
        snprintf(path, sizeof path, "%s/%s", root, files[i]);
        rw_spec s;
        cr_assert_eq(rw_spec_load(path, &s, err, sizeof err), 0, "%s", err);
    }
}

/* The grid files under conf/ parse and expand as their comments say; the
 * paper's grids name a CIFAR-10 folder this machine lacks, so it is
 * replaced by an existing one (a missing folder is refused at parse time). */
Test(spec, conf_grids_expand) {
    const char *root = getenv("RW_SOURCE_ROOT");
    if (!root) cr_skip_test("RW_SOURCE_ROOT not set (run through meson test)");
    const struct {
        const char *file;
        size_t jobs;
        const char *last;
    } grids[] = {
        {"conf/quickstart.yaml", 15, "quickstart/raft-np/seed2"},
        {"conf/paper-table1.yaml", 45, "paper-table1/supervised/seed2"},
        {"conf/paper-table3.yaml", 39, "paper-table3/byol-prime-np-b100/seed2"},
        {"conf/stl10.yaml", 15, "stl10/raft-np/seed2"},
        {"conf/predictor-studies.yaml", 10, "predictor-studies/linear-lr10/seed1"},
        {"conf/theorem-5-1.yaml", 5, "theorem-5-1/raft-np/seed0"},
    };
    for (size_t i = 0; i < sizeof grids / sizeof grids[0]; i++) {
        char path[1024], err[2048] = "", basedir[1024];
        snprintf(path, sizeof path, "%s/%s", root, grids[i].file);
        char *text;
        size_t len;
        cr_assert_eq(rw_grid_read_file(path, 1 << 20, &text, &len, basedir, sizeof basedir, err,
                                       sizeof err), 0, "%s", err);
        const char *ph = strstr(text, "/data/stl10_binary") ? "/data/stl10_binary"
                                                             : "/data/cifar-10-batches-bin";
        char *at = strstr(text, ph), *t2 = malloc(len + 64);
        if (at) {
            size_t pre = (size_t)(at - text);
            memcpy(t2, text, pre);
            len = pre + (size_t)sprintf(t2 + pre, "/tmp%s", at + strlen(ph));
        } else {
            memcpy(t2, text, len);
        }
        rw_grid g;
        cr_assert_eq(rw_grid_parse(t2, len, path, basedir, &g, err, sizeof err), 0, "%s: %s",
                     grids[i].file, err);
        cr_expect_eq(g.njobs, grids[i].jobs, "%s: %zu jobs", grids[i].file, g.njobs);
        cr_expect_str_eq(g.jobs[g.njobs - 1].name, grids[i].last);
        for (size_t j = 0; j < g.njobs; j++) {
            const rw_spec *s = &g.jobs[j].spec;
            int baseline = strstr(g.jobs[j].name, "/rand-baseline/") != NULL;
            if (baseline)
                cr_expect(s->optim.epochs == 0 && s->model.predictor == RW_PRED_LINEAR, "%s",
                          g.jobs[j].name);
            if (strstr(grids[i].file, "stl10"))
                cr_expect(s->data.kind == RW_DATA_STL10 && s->data.unlabeled &&
                              s->data.image_size == 96 && fabsf(s->data.mean[0] - 0.4467f) < 1e-6f,
                          "%s: not STL-10 at its size, with its statistics", g.jobs[j].name);
            if (strstr(grids[i].file, "paper")) { /* appendix C */
                cr_expect(s->data.image_size == 96 && s->optim.batch_size == 128 &&
                              s->optim.epochs == (baseline ? 0 : 300) && fabs(s->ema.tau - 0.996) < 1e-6 &&
                              fabs(s->optim.lr - 3e-4) < 1e-9 && s->model.proj_out == 128,
                          "%s: not the paper's setup", g.jobs[j].name);
            }
            /* a variant's name says its objective: raft < 0 < byol-prime */
            if (strstr(g.jobs[j].name, "/raft"))
                cr_expect(s->loss.kind == RW_LOSS_UNIFIED && s->loss.beta < 0, "%s",
                          g.jobs[j].name);
            if (strstr(g.jobs[j].name, "byol-prime"))
                cr_expect(s->loss.kind == RW_LOSS_UNIFIED && s->loss.beta > 0, "%s",
                          g.jobs[j].name);
            if (strstr(g.jobs[j].name, "-np"))
                cr_expect(s->model.predictor == RW_PRED_NONE, "%s", g.jobs[j].name);
            if (strstr(grids[i].file, "theorem")) { /* one seed, a snapshot every epoch */
                cr_expect(s->seed == 0 && s->checkpoint.snapshot_every == 1 &&
                              s->loss.kind == RW_LOSS_UNIFIED && s->deterministic &&
                              s->model.predictor_negated == !!strstr(g.jobs[j].name, "mirror") &&
                              s->model.init_nudge_ulps == !!strstr(g.jobs[j].name, "-ulp"),
                          "%s: not the experiment's setup", g.jobs[j].name);
                cr_expect(s->model.predictor ==
                              (strstr(g.jobs[j].name, "-np") ? RW_PRED_NONE : RW_PRED_LINEAR),
                          "%s", g.jobs[j].name);
            }
            if (strstr(g.jobs[j].name, "tan-"))
                cr_expect(s->loss.tangential, "%s", g.jobs[j].name);
            if (strstr(g.jobs[j].name, "/supervised/"))
                cr_expect(s->loss.kind == RW_LOSS_SUPERVISED && s->model.predictor == RW_PRED_NONE,
                          "%s", g.jobs[j].name);
        }
        rw_grid_free(&g);
        free(t2);
        free(text);
    }
}

/* Hostile inputs: never crash. */
Test(spec, garbage_never_crashes) {
    unsigned seed = 12345;
    char buf[512];
    const char alphabet[] = "ab: -[]{},\n\"'&*!|>#%@`?~.0123456789e";
    for (int it = 0; it < 3000; it++) {
        size_t n = (size_t)(rand_r(&seed) % (sizeof buf - 1));
        for (size_t i = 0; i < n; i++) buf[i] = alphabet[rand_r(&seed) % (sizeof alphabet - 1)];
        rw_spec s;
        char err[256];
        (void)rw_spec_parse(buf, n, "fuzz", "", &s, err, sizeof err);
    }
    /* mutations of the valid example */
    size_t len = strlen(full_yaml);
    char *m = malloc(len);
    for (int it = 0; it < 2000; it++) {
        memcpy(m, full_yaml, len);
        for (int k = 0; k < 3; k++) m[rand_r(&seed) % len] = (char)(rand_r(&seed) & 0xff);
        rw_spec s;
        char err[256];
        (void)rw_spec_parse(m, len, "fuzz", "", &s, err, sizeof err);
    }
    free(m);
}

/* A spec as flattened lines, and values as a person reads them: the
 * fewest digits that give the same float back; integers and words kept. */
Test(spec, flatten_and_short_values) {
    rw_spec s;
    rw_spec_defaults(&s);
    s.optim.lr = 3e-4f;
    char(*f)[RW_SPEC_FIELD_MAX] = calloc(256, RW_SPEC_FIELD_MAX);
    cr_assert_not_null(f);
    int n = rw_spec_flatten(&s, f, 256);
    cr_assert_gt(n, 40);
    int lr = -1, epochs = -1;
    for (int k = 0; k < n; k++) {
        if (!strncmp(f[k], "optim.lr:", 9)) lr = k;
        if (!strncmp(f[k], "optim.epochs:", 13)) epochs = k;
        cr_assert(strchr(f[k], ':') && !strchr(f[k], '\n'), "%s", f[k]);
    }
    cr_assert(lr >= 0 && epochs >= 0);
    char v[64];
    rw_spec_value_short(strchr(f[lr], ':') + 1, v, sizeof v);
    cr_assert_str_eq(v, "0.0003", "%s", f[lr]);
    rw_spec_value_short(strchr(f[epochs], ':') + 1, v, sizeof v);
    cr_assert_str_eq(v, "300");
    const char *in[] = {" 9.99999975e-06", " 0.996000004", " 2", " \"cifar10\"", " [0.5, 0.25]", " -1"};
    const char *want[] = {"1e-05", "0.996", "2", "\"cifar10\"", "[0.5, 0.25]", "-1"};
    for (int k = 0; k < 6; k++) {
        rw_spec_value_short(in[k], v, sizeof v);
        cr_expect_str_eq(v, want[k], "'%s'", in[k]);
    }
    free(f);
}

/* data.kind imagefolder: its folder required, data.cache_size defaulting to
 * data.image_size (a grid varying image_size moves it too) unless given,
 * data.skip_bad a bool; both kept by the canonical YAML. */
Test(spec, imagefolder_cache_size_follows_image_size_unless_given) {
    expect_error("data: {kind: imagefolder}\n", "data.path: required for data.kind imagefolder",
                 "train/ and val/");
    expect_error("data: {kind: imagefolder, path: /tmp, cache_size: 4}\n", "data.cache_size",
                 "8..1024");
    expect_error("data: {skip_bad: sometimes}\n", "data.skip_bad", "true or false");
    rw_spec s, back;
    char err[512] = "", yaml[RW_SPEC_YAML_MAX];
    cr_assert_eq(parse("data: {kind: imagefolder, path: /tmp, image_size: 64}\n", &s, err,
                       sizeof err), 0, "%s", err);
    cr_expect(s.data.kind == RW_DATA_IMAGEFOLDER && s.data.cache_size == 64 && !s.data.skip_bad,
              "cache_size %d", s.data.cache_size);
    cr_expect(s.data.mean[0] == 0.485f && s.data.std[2] == 0.225f, "ImageNet's statistics");
    cr_assert_eq(parse("data: {kind: imagefolder, path: /tmp, image_size: 64, cache_size: 80, "
                       "skip_bad: true}\n", &s, err, sizeof err), 0, "%s", err);
    cr_expect(s.data.cache_size == 80 && s.data.skip_bad);
    cr_assert_gt(rw_spec_to_yaml(&s, yaml, sizeof yaml), 0);
    cr_assert_eq(parse(yaml, &back, err, sizeof err), 0, "%s", err);
    cr_expect(back.data.cache_size == 80 && back.data.skip_bad, "canonical YAML keeps them");
    /* off an image folder they do not change what trains */
    rw_spec a, b;
    cr_assert_eq(parse("data: {cache_size: 200, skip_bad: true}\n", &s, err, sizeof err), 0,
                 "%s", err);
    rw_spec_trained(&s, &a);
    cr_assert_eq(parse("{}\n", &s, err, sizeof err), 0, "%s", err);
    rw_spec_trained(&s, &b);
    cr_expect(memcmp(&a.data, &b.data, sizeof a.data) == 0);
}
