/* runaway-worker: trains one job standalone (run), evaluates, exports weights,
 * compares runs' snapshots, shows augmentations, writes the synthetic data set. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kernels/backend.h"
#include "proto/spec.h"
#include "rw_config.h"
#include "worker/agent.h"
#include "worker/data.h"
#include "worker/distance.h"
#include "worker/eval.h"
#include "worker/model.h"
#include "worker/sphere.h"
#include "worker/train.h"
#include "worker/weights.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: runaway-worker COMMAND ...\n"
            "  run SPEC.yaml [FIELD=VALUE...] [--out DIR] [--resume] [--backend auto|cpu|cuda]\n"
            "        [--no-graphs] [--host-data]\n"
            "      train one job; FIELD=VALUE sets a spec field by its dotted name\n"
            "      (optim.lr=1e-3), checked like the file's; one line per epoch; DIR (default runs/NAME) receives\n"
            "      checkpoint.safetensors and weights.safetensors; on the GPU,\n"
            "      --no-graphs runs every step eagerly instead of replaying CUDA graphs\n"
            "      and --host-data renders views on the CPU instead of the GPU\n"
            "  eval SPEC.yaml [WEIGHTS.safetensors | --random-init] [--epochs N]\n"
            "      linear evaluation of a trained (or randomly initialized) encoder\n"
            "  sphere SPEC.yaml [WEIGHTS.safetensors | --random-init] OUT.dat [--samples N]\n"
            "        [--pairs K]\n"
            "      the projections of N training images (default 2048) by PCA onto the\n"
            "      circle (the paper's Figure 3): spread numbers, and a data file for\n"
            "      `runaway sphere`; K samples (default 4) with their two views\n"
            "  distance RUN_DIR_A RUN_DIR_B\n"
            "      per epoch both runs kept snapshots of, the relative L2 distance of their\n"
            "      encoders' and predictors' parameters (the predictor's output layer\n"
            "      sign-corrected where one started from -W0), as JSON for `runaway distance`\n"
            "  export CHECKPOINT OUT.safetensors [--encoder-only]\n"
            "      weights with torchvision's resnet18 names for the encoder\n"
            "  show-augment SPEC.yaml OUT.png [--count N]\n"
            "      a grid of images with their T1 and T2 views\n"
            "  synth DIR [--train N] [--test N] [--seed S]\n"
            "        [--format cifar10|cifar100|stl10|imagefolder] [--unlabeled N]\n"
            "      write the synthetic data set in CIFAR-10's binary format, or in CIFAR-100's\n"
            "      or STL-10's (images scaled up to 96x96; N unlabeled images, default 0), or\n"
            "      as an image folder (train/, val/, unlabeled/ of 64x64 PNG and JPEG files)\n"
            "      to try a spec of that data.kind\n"
            "  serve (--socket PATH | --tcp HOST:PORT --token-file F) [--slot N] [--device NAME]\n"
            "        [--backend auto|cpu|cuda] [--threads N] [--heartbeat S]\n"
            "        [--host ADDR] [--collective-timeout S] [--stall-timeout S]\n"
            "        [--reconnect S (another host's worker: keep trying S seconds)]\n"
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

/* The data readers' notices, kept off stdout, which carries results. */
static void print_notice(void *ud, const char *line)
{
    (void)ud;
    fprintf(stderr, "runaway-worker: %s\n", line);
}

static int load_spec(const char *path, const rw_overrides *ov, rw_spec *s)
{
    char err[1024];
    if (rw_spec_load_with(path, ov, s, err, sizeof err) != 0 ||
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
    const char *words[RW_OVERRIDES_MAX];
    size_t nwords = 0;
    char cwd[RW_PATH_MAX];
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
        else if (argv[i][0] != '-' && strchr(argv[i], '=') && nwords < RW_OVERRIDES_MAX)
            words[nwords++] = argv[i];
        else {
            fprintf(stderr, "runaway-worker run: unexpected argument '%s'%s\n", argv[i],
                    argv[i][0] != '-' && !strchr(argv[i], '=')
                        ? " (fields are set as FIELD=VALUE, as optim.lr=1e-3)" : "");
            return 2;
        }
    }
    if (!spec_path) {
        usage(stderr);
        return 2;
    }
    if (nwords && !getcwd(cwd, sizeof cwd)) {
        fprintf(stderr, "runaway-worker: cannot read the working folder: %s\n", strerror(errno));
        return 1;
    }
    rw_overrides ov = {words, nwords, cwd};
    rw_spec s;
    if (load_spec(spec_path, nwords ? &ov : NULL, &s) != 0)
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
    printf("\n");
    if (res.collapsed.epoch > 0)
        printf("collapsed: the collapse alarm stopped it (%s)\n", res.collapsed.why);
    printf("weights: %s/weights.safetensors\n", out);
    return 0;
}

/* What eval and sphere share: the spec, its data, a backend and the model
 * with weights (or the seed's random initialization). 0, or 1 with the
 * reason printed and everything released. */
typedef struct loaded {
    rw_spec s;
    rw_dataset train, test;
    kb_backend *be;
    rw_model *m;
} loaded;

static void loaded_free(loaded *l)
{
    rw_model_free(l->m);
    if (l->be)
        kb_destroy(l->be);
    rw_dataset_free(&l->train);
    rw_dataset_free(&l->test);
    memset(l, 0, sizeof *l);
}

static int load_model(const char *spec_path, const char *weights, const char *backend,
                      long linear_epochs, loaded *l)
{
    memset(l, 0, sizeof *l);
    if (load_spec(spec_path, NULL, &l->s) != 0)
        return 1;
    if (linear_epochs > 0)
        l->s.eval.linear_epochs = (int)linear_epochs;
    char err[1024];
    if (rw_load_data(&l->s, print_notice, NULL, &l->train, &l->test, err, sizeof err) != 0) {
        fprintf(stderr, "runaway-worker: %s\n", err);
        return 1;
    }
    l->be = pick_backend(backend, l->s.threads);
    if (!l->be) {
        loaded_free(l);
        return 1;
    }
    rw_model_cfg mc;
    rw_model_cfg_from_spec(&l->s, &mc);
    if (weights && rw_weights_model_cfg(weights, &mc, err, sizeof err) != 0) {
        fprintf(stderr, "runaway-worker: %s\n", err);
        loaded_free(l);
        return 1;
    }
    l->m = rw_model_create(l->be, &mc, l->s.seed, err, sizeof err);
    if (!l->m || (weights && rw_weights_init(l->m, weights, err, sizeof err) != 0)) {
        fprintf(stderr, "runaway-worker: %s\n", err);
        loaded_free(l);
        return 1;
    }
    return 0;
}

/* SPEC and either WEIGHTS or --random-init, then the command's own
 * positional arguments (nout of them) and flags (handled by flag(); it
 * returns the arguments it used, or -1 for an unknown flag). */
typedef int (*flag_fn)(int argc, char **argv, int i, void *ud);

static int model_args(const char *cmd, int argc, char **argv, const char **spec, const char **weights,
                      const char **backend, const char **outs, int nout, flag_fn flag, void *ud)
{
    int random_init = 0, npos = 0;
    const char *pos[4];
    for (int i = 0; i < argc; i++) {
        int used;
        if (strcmp(argv[i], "--random-init") == 0)
            random_init = 1;
        else if (strcmp(argv[i], "--backend") == 0 && i + 1 < argc)
            *backend = argv[++i];
        else if (argv[i][0] == '-' && flag && (used = flag(argc, argv, i, ud)) >= 0) {
            if (used == 0)
                return 2; /* a bad value: the flag said why */
            i += used - 1;
        } else if (argv[i][0] != '-' && npos < 2 + nout)
            pos[npos++] = argv[i];
        else {
            fprintf(stderr, "runaway-worker %s: unexpected argument '%s'\n", cmd, argv[i]);
            return 2;
        }
    }
    /* SPEC [WEIGHTS] OUTS...: WEIGHTS unless --random-init */
    int nw = random_init ? 0 : 1;
    if (npos != 1 + nw + nout) {
        fprintf(stderr, "runaway-worker %s: give SPEC.yaml, either WEIGHTS or --random-init%s\n",
                cmd, nout ? ", and the output file" : "");
        return 2;
    }
    *spec = pos[0];
    *weights = nw ? pos[1] : NULL;
    for (int k = 0; k < nout; k++)
        outs[k] = pos[1 + nw + k];
    return 0;
}

static int eval_flag(int argc, char **argv, int i, void *ud)
{
    if (strcmp(argv[i], "--epochs") != 0)
        return -1;
    return parse_int("--epochs", i + 1 < argc ? argv[i + 1] : NULL, 1, 100000, ud) == 0 ? 2 : 0;
}

static int cmd_eval(int argc, char **argv)
{
    const char *spec_path, *weights, *backend = "auto";
    long epochs = -1;
    int rc = model_args("eval", argc, argv, &spec_path, &weights, &backend, NULL, 0, eval_flag,
                        &epochs);
    loaded l;
    if (rc != 0 || (rc = load_model(spec_path, weights, backend, epochs, &l)) != 0)
        return rc;
    char err[1024];
    rw_linear_cfg lc = {.epochs = l.s.eval.linear_epochs, .lr = l.s.eval.linear_lr,
                        .batch = l.s.eval.linear_batch_size, .seed = l.s.seed,
                        .normalize = l.s.eval.linear_normalize};
    double acc;
    rc = 1;
    if (rw_eval_linear_model(l.m, &l.train, &l.test, l.s.data.image_size, l.s.data.mean,
                             l.s.data.std, &lc, &acc, err, sizeof err) != 0) {
        fprintf(stderr, "runaway-worker: %s\n", err);
    } else {
        printf("linear evaluation (%s): top-1 %.2f%% on %d test images (%d epochs)\n",
               weights ? weights : "random init", 100 * acc, l.test.n, lc.epochs);
        rc = 0;
    }
    loaded_free(&l);
    return rc;
}

typedef struct sphere_opts {
    long samples, pairs;
} sphere_opts;

static int sphere_flag(int argc, char **argv, int i, void *ud)
{
    sphere_opts *o = ud;
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(argv[i], "--samples") == 0)
        return parse_int("--samples", v, 3, 50000, &o->samples) == 0 ? 2 : 0;
    if (strcmp(argv[i], "--pairs") == 0)
        return parse_int("--pairs", v, 0, RW_SPHERE_PAIRS_MAX, &o->pairs) == 0 ? 2 : 0;
    return -1;
}

static int cmd_sphere(int argc, char **argv)
{
    const char *spec_path, *weights, *backend = "auto", *out;
    sphere_opts o = {.samples = 2048, .pairs = 4};
    int rc = model_args("sphere", argc, argv, &spec_path, &weights, &backend, &out, 1, sphere_flag,
                        &o);
    loaded l;
    if (rc != 0 || (rc = load_model(spec_path, weights, backend, 0, &l)) != 0)
        return rc;
    char err[1024], label[1200];
    rw_sphere sp;
    rc = 1;
    snprintf(label, sizeof label, "%s (%s)", l.s.name, weights ? weights : "random init");
    if (rw_sphere_model(l.m, &l.train, &l.s, (int)o.samples, (int)o.pairs, &sp, err,
                        sizeof err) != 0 ||
        rw_sphere_write(&sp, label, out, err, sizeof err) != 0) {
        fprintf(stderr, "runaway-worker: %s\n", err);
    } else {
        printf("%s: %d training images on the circle (%d at the centre); PCA keeps %.1f%% + "
               "%.1f%% of the variance\n"
               "R %.4f (0 spread, 1 one point)  L_uniform on the circle %.4f  densest 45-degree "
               "arc %.1f%%\nwrote %s\n",
               label, sp.n, sp.n_centre, 100 * sp.evr[0], 100 * sp.evr[1], sp.R, sp.uniform,
               100 * sp.densest, out);
        rc = 0;
    }
    loaded_free(&l);
    return rc;
}

static int cmd_distance(int argc, char **argv)
{
    if (argc != 2 || argv[0][0] == '-' || argv[1][0] == '-') {
        usage(stderr);
        return 2;
    }
    char err[1024];
    json_t *o;
    if (rw_distance_dirs(argv[0], argv[1], &o, err, sizeof err) != 0) {
        fprintf(stderr, "runaway-worker: distance: %s\n", err);
        return 1;
    }
    /* doubles to 17 digits: a distance of one ulp must not print as 0 */
    int rc = json_dumpf(o, stdout, JSON_COMPACT | JSON_REAL_PRECISION(17)) == 0 ? 0 : 1;
    putchar('\n');
    json_decref(o);
    return rc;
}

static int cmd_export(int argc, char **argv)
{
    const char *pos[2] = {NULL, NULL};
    int npos = 0, encoder_only = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--encoder-only") == 0)
            encoder_only = 1;
        else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "runaway-worker: export: unknown option %s\n", argv[i]);
            return 2;
        } else if (npos < 2)
            pos[npos++] = argv[i];
        else
            npos++;
    }
    if (npos != 2) {
        usage(stderr);
        return 2;
    }
    char err[1024];
    rw_model_cfg mc;
    rw_export_info info;
    if (rw_weights_model_cfg(pos[0], &mc, err, sizeof err) != 0 ||
        rw_export_info_read(pos[0], &info, err, sizeof err) != 0) {
        fprintf(stderr, "runaway-worker: %s\n", err);
        return 1;
    }
    kb_backend *be = kb_cpu_create(1);
    rw_model *m = be ? rw_model_create(be, &mc, 0, err, sizeof err) : NULL;
    int rc = 1;
    if (m && rw_weights_init(m, pos[0], err, sizeof err) == 0 &&
        rw_weights_export_ex(m, pos[1], &info, encoder_only, err, sizeof err) == 0) {
        if (encoder_only)
            printf("wrote %s (the encoder alone, torchvision's names)\n", pos[1]);
        else
            printf("wrote %s (%zu online parameters)\n", pos[1], rw_model_nparams(m));
        rc = 0;
    } else {
        fprintf(stderr, "runaway-worker: %s\n", err);
    }
    rw_export_info_free(&info);
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
    if (load_spec(spec_path, NULL, &s) != 0)
        return 1;
    char err[1024];
    rw_dataset train, test;
    if (rw_load_data(&s, print_notice, NULL, &train, &test, err, sizeof err) != 0) {
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
    long ntrain = 5000, ntest = 1000, seed = 0, nunl = 0;
    rw_data_kind kind = RW_DATA_CIFAR10;
    for (int i = 0; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(argv[i], "--format") == 0) {
            if (v && !strcmp(v, "cifar10"))
                kind = RW_DATA_CIFAR10;
            else if (v && !strcmp(v, "cifar100"))
                kind = RW_DATA_CIFAR100;
            else if (v && !strcmp(v, "stl10"))
                kind = RW_DATA_STL10;
            else if (v && !strcmp(v, "imagefolder"))
                kind = RW_DATA_IMAGEFOLDER;
            else {
                fprintf(stderr, "runaway-worker synth: --format: must be cifar10, cifar100, "
                                "stl10 or imagefolder\n");
                return 2;
            }
            i++;
        } else if (strcmp(argv[i], "--unlabeled") == 0) {
            if (parse_int("--unlabeled", v, 0, 1000000, &nunl) != 0)
                return 2;
            i++;
        } else if (strcmp(argv[i], "--train") == 0) {
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
    int rc = kind == RW_DATA_IMAGEFOLDER
                 ? rw_synth_write_imagefolder(dir, (int)ntrain, (int)ntest, (int)nunl,
                                              (uint64_t)seed, err, sizeof err)
                 : rw_synth_write_as(dir, kind, (int)ntrain, (int)ntest, (int)nunl,
                                     (uint64_t)seed, err, sizeof err);
    if (rc != 0) {
        fprintf(stderr, "runaway-worker: %s\n", err);
        return 1;
    }
    int unl = kind == RW_DATA_STL10 || kind == RW_DATA_IMAGEFOLDER;
    if (nunl && !unl)
        printf("note: --unlabeled is for --format stl10 and imagefolder; no unlabeled images "
               "written\n");
    printf("wrote %ld train, %ld test and %ld unlabeled images to %s\n", ntrain, ntest,
           unl ? nunl : 0, dir);
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
    if (strcmp(cmd, "distance") == 0)
        return cmd_distance(argc - 2, argv + 2);
    if (strcmp(cmd, "sphere") == 0)
        return cmd_sphere(argc - 2, argv + 2);
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
