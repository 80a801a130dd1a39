/* runaway-worker: trains one job standalone (run), evaluates, exports weights,
 * shows augmentations, writes the synthetic data set. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "kernels/backend.h"
#include "proto/spec.h"
#include "rw_config.h"
#include "worker/agent.h"
#include "worker/data.h"
#include "worker/eval.h"
#include "worker/model.h"
#include "worker/train.h"
#include "worker/weights.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: runaway-worker COMMAND ...\n"
            "  run SPEC.yaml [--out DIR] [--resume] [--backend auto|cpu|cuda]\n"
            "        [--no-graphs] [--host-data]\n"
            "      train one job; one line per epoch; DIR (default runs/NAME) receives\n"
            "      checkpoint.safetensors and weights.safetensors; on the GPU,\n"
            "      --no-graphs runs every step eagerly instead of replaying CUDA graphs\n"
            "      and --host-data renders views on the CPU instead of the GPU\n"
            "  eval SPEC.yaml [WEIGHTS.safetensors | --random-init] [--epochs N]\n"
            "      linear evaluation of a trained (or randomly initialized) encoder\n"
            "  export CHECKPOINT OUT.safetensors\n"
            "      weights with torchvision's resnet18 names for the encoder\n"
            "  show-augment SPEC.yaml OUT.png [--count N]\n"
            "      a grid of images with their T1 and T2 views\n"
            "  synth DIR [--train N] [--test N] [--seed S]\n"
            "      write the synthetic data set in CIFAR-10's binary format\n"
            "  serve (--socket PATH | --tcp HOST:PORT --token-file F) [--slot N] [--device NAME]\n"
            "        [--backend auto|cpu|cuda] [--threads N] [--heartbeat S]\n"
            "        [--host ADDR] [--collective-timeout S]\n"
            "      a daemon worker: takes jobs from runawayd (normally started by it)\n");
}

static kb_backend *pick_backend(const char *want, int threads)
{
    char err[256] = "";
    if (strcmp(want, "cpu") != 0) {
        kb_backend *be = kb_cuda_create(0, err, sizeof err);
        if (be)
            return be;
        if (strcmp(want, "cuda") == 0) {
            fprintf(stderr, "runaway-worker: --backend cuda: %s\n", err);
            return NULL;
        }
        if (RW_HAVE_CUDA)
            fprintf(stderr, "runaway-worker: %s; using the CPU backend\n", err);
    }
    kb_backend *be = kb_cpu_create(threads);
    if (!be)
        fprintf(stderr, "runaway-worker: cannot start the CPU backend\n");
    return be;
}

static void print_line(void *ud, const char *line)
{
    (void)ud;
    printf("%s\n", line);
    fflush(stdout);
}

static int load_spec(const char *path, rw_spec *s)
{
    char err[1024];
    if (rw_spec_load(path, s, err, sizeof err) != 0 ||
        rw_spec_validate(s, path, err, sizeof err) != 0) {
        fprintf(stderr, "runaway-worker: %s\n", err);
        return -1;
    }
    return 0;
}

static int parse_int(const char *flag, const char *v, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || errno || *end || x < lo || x > hi) {
        fprintf(stderr, "runaway-worker: %s needs an integer in [%ld, %ld]\n", flag, lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

static int cmd_run(int argc, char **argv)
{
    const char *spec_path = NULL, *out = NULL, *backend = "auto";
    int resume = 0, no_graphs = 0, host_data = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--out") == 0 && i + 1 < argc)
            out = argv[++i];
        else if (strcmp(argv[i], "--resume") == 0)
            resume = 1;
        else if (strcmp(argv[i], "--no-graphs") == 0)
            no_graphs = 1;
        else if (strcmp(argv[i], "--host-data") == 0)
            host_data = 1;
        else if (strcmp(argv[i], "--backend") == 0 && i + 1 < argc)
            backend = argv[++i];
        else if (argv[i][0] != '-' && !spec_path)
            spec_path = argv[i];
        else {
            fprintf(stderr, "runaway-worker run: unexpected argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!spec_path) {
        usage(stderr);
        return 2;
    }
    rw_spec s;
    if (load_spec(spec_path, &s) != 0)
        return 1;
    char outbuf[RW_PATH_MAX];
    if (!out) {
        snprintf(outbuf, sizeof outbuf, "runs/%s", s.name[0] ? s.name : "job");
        out = outbuf;
    }
    kb_backend *be = pick_backend(backend, s.threads);
    if (!be)
        return 1;
    rw_train_hooks hooks = {.on_log = print_line};
    rw_train_opts opts = {
        .out_dir = out, .resume = resume, .no_graphs = no_graphs, .host_data = host_data,
    };
    rw_train_result res;
    char err[1024];
    int rc = rw_train(&s, be, &opts, &hooks, &res, err, sizeof err);
    kb_destroy(be);
    if (rc != 0) {
        fprintf(stderr, "runaway-worker: %s: %s\n", spec_path, err);
        return 1;
    }
    if (res.last.epoch == 0) /* optim.epochs 0: the pass over the initialization */
        printf("result: L_align %.3e  L_uniform %+.3f (the initialization)  collapse %.3f",
               res.align_last10, res.uniform_last10, res.last.collapse);
    else
        printf("result: L_align %.3e  L_uniform %+.3f (mean of last %d epochs)  collapse %.3f",
               res.align_last10, res.uniform_last10, res.last.epoch < 10 ? res.last.epoch : 10,
               res.last.collapse);
    if (!isnan(res.last.knn))
        printf("  knn %.1f%%", 100 * res.last.knn);
    if (!isnan(res.linear_acc))
        printf("  linear eval %.2f%%", 100 * res.linear_acc);
    printf("\nweights: %s/weights.safetensors\n", out);
    return 0;
}

static int cmd_eval(int argc, char **argv)
{
    const char *spec_path = NULL, *weights = NULL, *backend = "auto";
    int random_init = 0;
    long epochs = -1;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--random-init") == 0)
            random_init = 1;
        else if (strcmp(argv[i], "--epochs") == 0) {
            if (parse_int("--epochs", i + 1 < argc ? argv[++i] : NULL, 1, 100000, &epochs) != 0)
                return 2;
        } else if (strcmp(argv[i], "--backend") == 0 && i + 1 < argc)
            backend = argv[++i];
        else if (argv[i][0] != '-' && !spec_path)
            spec_path = argv[i];
        else if (argv[i][0] != '-' && !weights)
            weights = argv[i];
        else {
            fprintf(stderr, "runaway-worker eval: unexpected argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!spec_path || (!weights && !random_init) || (weights && random_init)) {
        fprintf(stderr, "runaway-worker eval: give SPEC.yaml and either WEIGHTS or --random-init\n");
        return 2;
    }
    rw_spec s;
    if (load_spec(spec_path, &s) != 0)
        return 1;
    if (epochs > 0)
        s.eval.linear_epochs = (int)epochs;
    char err[1024];
    rw_dataset train, test;
    if (rw_load_data(&s, &train, &test, err, sizeof err) != 0) {
        fprintf(stderr, "runaway-worker: %s\n", err);
        return 1;
    }
    kb_backend *be = pick_backend(backend, s.threads);
    int rc = 1;
    rw_model *m = NULL;
    if (!be)
        goto done;
    rw_model_cfg mc;
    rw_model_cfg_from_spec(&s, &mc);
    if (weights && rw_weights_model_cfg(weights, &mc, err, sizeof err) != 0) {
        fprintf(stderr, "runaway-worker: %s\n", err);
        goto done;
    }
    m = rw_model_create(be, &mc, s.seed, err, sizeof err);
    if (!m || (weights && rw_weights_init(m, weights, err, sizeof err) != 0)) {
        fprintf(stderr, "runaway-worker: %s\n", err);
        goto done;
    }
    rw_linear_cfg lc = {.epochs = s.eval.linear_epochs, .lr = s.eval.linear_lr,
                        .batch = s.eval.linear_batch_size, .seed = s.seed};
    double acc;
    if (rw_eval_linear_model(m, &train, &test, s.data.image_size, s.data.mean, s.data.std, &lc,
                             &acc, err, sizeof err) != 0) {
        fprintf(stderr, "runaway-worker: %s\n", err);
        goto done;
    }
    printf("linear evaluation (%s): top-1 %.2f%% on %d test images (%d epochs)\n",
           weights ? weights : "random init", 100 * acc, test.n, lc.epochs);
    rc = 0;
done:
    rw_model_free(m);
    kb_destroy(be);
    rw_dataset_free(&train);
    rw_dataset_free(&test);
    return rc;
}

static int cmd_export(int argc, char **argv)
{
    if (argc != 2) {
        usage(stderr);
        return 2;
    }
    char err[1024];
    rw_model_cfg mc;
    if (rw_weights_model_cfg(argv[0], &mc, err, sizeof err) != 0) {
        fprintf(stderr, "runaway-worker: %s\n", err);
        return 1;
    }
    kb_backend *be = kb_cpu_create(1);
    rw_model *m = be ? rw_model_create(be, &mc, 0, err, sizeof err) : NULL;
    int rc = 1;
    if (m && rw_weights_init(m, argv[0], err, sizeof err) == 0 &&
        rw_weights_export(m, argv[1], err, sizeof err) == 0) {
        printf("wrote %s (%zu online parameters)\n", argv[1], rw_model_nparams(m));
        rc = 0;
    } else {
        fprintf(stderr, "runaway-worker: %s\n", err);
    }
    rw_model_free(m);
    kb_destroy(be);
    return rc;
}

static int cmd_show_augment(int argc, char **argv)
{
    const char *spec_path = NULL, *png = NULL;
    long count = 8;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--count") == 0) {
            if (parse_int("--count", i + 1 < argc ? argv[++i] : NULL, 1, 256, &count) != 0)
                return 2;
        } else if (argv[i][0] != '-' && !spec_path)
            spec_path = argv[i];
        else if (argv[i][0] != '-' && !png)
            png = argv[i];
        else {
            fprintf(stderr, "runaway-worker show-augment: unexpected argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!spec_path || !png) {
        usage(stderr);
        return 2;
    }
    rw_spec s;
    if (load_spec(spec_path, &s) != 0)
        return 1;
    char err[1024];
    rw_dataset train, test;
    if (rw_load_data(&s, &train, &test, err, sizeof err) != 0) {
        fprintf(stderr, "runaway-worker: %s\n", err);
        return 1;
    }
    rw_loader_cfg lc = {.ds = &train, .batch = 1, .out_size = s.data.image_size,
                        .augment = s.data.augment, .seed = s.seed, .threads = 1};
    memcpy(lc.mean, s.data.mean, sizeof lc.mean);
    memcpy(lc.std, s.data.std, sizeof lc.std);
    int rc = rw_show_augment(&train, &lc, (int)count, png, err, sizeof err);
    if (rc != 0)
        fprintf(stderr, "runaway-worker: %s\n", err);
    else
        printf("wrote %s: %ld rows of original | T1 | T2 at %dx%d\n", png, count,
               s.data.image_size, s.data.image_size);
    rw_dataset_free(&train);
    rw_dataset_free(&test);
    return rc ? 1 : 0;
}

static int cmd_synth(int argc, char **argv)
{
    const char *dir = NULL;
    long ntrain = 5000, ntest = 1000, seed = 0;
    for (int i = 0; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(argv[i], "--train") == 0) {
            if (parse_int("--train", v, 10, 1000000, &ntrain) != 0)
                return 2;
            i++;
        } else if (strcmp(argv[i], "--test") == 0) {
            if (parse_int("--test", v, 10, 1000000, &ntest) != 0)
                return 2;
            i++;
        } else if (strcmp(argv[i], "--seed") == 0) {
            if (parse_int("--seed", v, 0, 2147483647L, &seed) != 0)
                return 2;
            i++;
        } else if (argv[i][0] != '-' && !dir)
            dir = argv[i];
        else {
            fprintf(stderr, "runaway-worker synth: unexpected argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!dir) {
        usage(stderr);
        return 2;
    }
    char err[1024];
    if (rw_synth_write(dir, (int)ntrain, (int)ntest, (uint64_t)seed, err, sizeof err) != 0) {
        fprintf(stderr, "runaway-worker: %s\n", err);
        return 1;
    }
    printf("wrote %ld train and %ld test images to %s\n", ntrain, ntest, dir);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "run") == 0)
        return cmd_run(argc - 2, argv + 2);
    if (strcmp(cmd, "eval") == 0)
        return cmd_eval(argc - 2, argv + 2);
    if (strcmp(cmd, "export") == 0)
        return cmd_export(argc - 2, argv + 2);
    if (strcmp(cmd, "show-augment") == 0)
        return cmd_show_augment(argc - 2, argv + 2);
    if (strcmp(cmd, "synth") == 0)
        return cmd_synth(argc - 2, argv + 2);
    if (strcmp(cmd, "serve") == 0)
        return rw_agent_main(argc - 2, argv + 2);
    fprintf(stderr, "runaway-worker: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
