/* tools/step-cost's driver: what one steady-state training step costs on
 * the CUDA backend, counted on the CPU emulator (kernels/cuda/emu) in dry
 * mode, where every stream op is counted (by name, with the DRAM bytes it
 * reads plus writes) and nothing is computed, so the paper's full-size step
 * takes seconds on a CPU.
 *
 * The step runs as a single-rank job's training runs it (worker/step.c,
 * rw_stepper_step): views rendered on the device from a uint8 set, two
 * eager warm-up steps, the capture of the whole step as one graph, then
 * replays. The figures are one replayed step's: everything it enqueues
 * (the keys' upload, the update's scalars, the graph), checked to be the
 * same for a second replayed step. The steps' metrics stay on the device,
 * read once per log window (at most 64 steps): not counted.
 * Linked the way kernels/cuda/emu/run.sh links the emulated suites
 * (kernels/cuda/emu/emu.sh); kernels/cuda/emu/run.sh's header says what
 * is counted. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"
#include "kernels/cuda/emu/emu_cost.h"
#include "worker/data.h"
#include "worker/model.h"
#include "worker/step.h"

#define MAX_NAMES 256
#define WARMUP 2 /* worker/step.c's eager steps before the capture */

typedef struct cost_cfg {
    rw_stem stem;
    int width, size, batch;
    kb_precision prec;
} cost_cfg;

/* One step's counts, by name. */
typedef struct step_costs {
    emu_cost c[MAX_NAMES];
    char names[MAX_NAMES][64]; /* emu_cost's names live until the next reset */
    int n;
} step_costs;

static int read_costs(step_costs *s)
{
    int n = emu_cost_read(s->c, MAX_NAMES);
    if (n > MAX_NAMES) {
        fprintf(stderr, "step-cost: more than %d op names\n", MAX_NAMES);
        return -1;
    }
    s->n = n;
    for (int i = 0; i < n; i++) {
        snprintf(s->names[i], sizeof s->names[i], "%s", s->c[i].name);
        s->c[i].name = s->names[i];
    }
    return 0;
}

static int same_costs(const step_costs *a, const step_costs *b)
{
    if (a->n != b->n)
        return 0;
    for (int i = 0; i < a->n; i++)
        if (strcmp(a->c[i].name, b->c[i].name) != 0 || a->c[i].calls != b->c[i].calls ||
            a->c[i].bytes != b->c[i].bytes)
            return 0;
    return 1;
}

/* Kernel launches without a byte declaration: an error, named, so that the
 * total never silently misses a kernel's bytes. */
static int check_declared(const step_costs *s, const char *when)
{
    int bad = 0;
    for (int i = 0; i < s->n; i++)
        if (s->c[i].undeclared) {
            fprintf(stderr,
                    "step-cost: %s: kernel %s launched %ld times without a byte declaration "
                    "(KB_CUDA_BYTES, kernels/cuda/cuda.h)\n",
                    when, s->c[i].name, s->c[i].undeclared);
            bad = 1;
        }
    return bad ? -1 : 0;
}

/* Kinds of op, by name prefix, in the table's order. */
static const struct {
    const char *prefix, *kind;
} kinds[] = {
    {"cudnnConvolutionForward", "conv forward (cuDNN)"},
    {"cudnnConvolutionBackwardData", "conv backward data (cuDNN)"},
    {"cudnnConvolutionBackwardFilter", "conv backward filter (cuDNN)"},
    {"kb_cast_", "casts and layout copies"},
    {"kb_fmap_", "casts and layout copies"},
    {"kb_weight_pack", "casts and layout copies"},
    {"kb_weight_grad_add", "weight gradients (fp32 +=)"},
    {"kb_bn_pool_", "batch norm + max pool (stem)"},
    {"kb_bn_", "batch norm"},
    {"kb_relu_", "relu"},
    {"kb_avgpool_", "average pooling"},
    {"cublas", "linear (cuBLAS + bias)"},
    {"kb_bias_", "linear (cuBLAS + bias)"},
    {"kb_l2norm_", "l2 norm"},
    {"kb_loss_", "loss and metrics"},
    {"kb_finish_", "loss and metrics"},
    {"kb_uniformity_", "loss and metrics"},
    {"kb_collapse_", "loss and metrics"},
    {"kb_xent_", "loss and metrics"},
    {"kb_update", "update (Adam, EMA, mirrors)"},
    {"kb_aug_", "views (augment)"},
    {"kb_cuda_ring_push", "step stats into the ring"},
    {"kb_cuda_", "elementwise (fill, scale)"},
    {"cudaMemset", "memset/memcpy"},
    {"cudaMemcpy", "memset/memcpy"},
};
#define NKINDS (sizeof kinds / sizeof kinds[0])

static const char *kind_of(const char *name)
{
    for (size_t i = 0; i < NKINDS; i++)
        if (strncmp(name, kinds[i].prefix, strlen(kinds[i].prefix)) == 0)
            return kinds[i].kind;
    return "other";
}

static void print_costs(const step_costs *s, const cost_cfg *c, const char *label)
{
    long calls = 0, kernels = 0, libs = 0, copies = 0;
    double bytes = 0;
    for (int i = 0; i < s->n; i++) {
        const char *nm = s->c[i].name;
        calls += s->c[i].calls;
        bytes += s->c[i].bytes;
        if (strncmp(nm, "cudnn", 5) == 0 || strncmp(nm, "cublas", 6) == 0)
            libs += s->c[i].calls;
        else if (strncmp(nm, "cudaMem", 7) == 0)
            copies += s->c[i].calls;
        else
            kernels += s->c[i].calls;
    }
    printf("\n== %s: %s\n", kb_precision_name(c->prec), label);
    printf("%-32s %8s %12s %7s\n", "kind", "calls", "GB", "share");
    /* the kinds in table order, each once, then "other" */
    const char *seen[NKINDS + 1];
    int nseen = 0;
    for (size_t k = 0; k <= NKINDS; k++) {
        const char *kind = k < NKINDS ? kinds[k].kind : "other";
        int dup = 0;
        for (int j = 0; j < nseen; j++)
            dup |= strcmp(seen[j], kind) == 0;
        if (dup)
            continue;
        seen[nseen++] = kind;
        long kc = 0;
        double kb = 0;
        for (int i = 0; i < s->n; i++)
            if (strcmp(kind_of(s->c[i].name), kind) == 0) {
                kc += s->c[i].calls;
                kb += s->c[i].bytes;
            }
        if (kc)
            printf("%-32s %8ld %12.3f %6.1f%%\n", kind, kc, kb / 1e9,
                   bytes > 0 ? 100.0 * kb / bytes : 0.0);
    }
    printf("%-32s %8ld %12.3f\n", "total", calls, bytes / 1e9);
    printf("  (%ld kernels, %ld cuDNN/cuBLAS calls, %ld memsets/memcpys)\n", kernels, libs,
           copies);

    /* the heaviest names */
    int order[MAX_NAMES];
    for (int i = 0; i < s->n; i++)
        order[i] = i;
    for (int i = 1; i < s->n; i++)
        for (int j = i; j > 0 && s->c[order[j]].bytes > s->c[order[j - 1]].bytes; j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    printf("top kernels and calls by bytes:\n");
    for (int i = 0; i < s->n && i < 12; i++) {
        const emu_cost *e = &s->c[order[i]];
        printf("  %-36s %6ld calls %10.3f GB %6.1f%%\n", e->name, e->calls, e->bytes / 1e9,
               bytes > 0 ? 100.0 * e->bytes / bytes : 0.0);
    }
    printf("launches per step: %ld\n", calls);
    printf("bytes per step: %.2f GB\n", bytes / 1e9);
}

/* A uint8 set of n random side x side images, as rw_dataset holds one. */
static int make_set(int n, int side, rw_dataset *ds)
{
    memset(ds, 0, sizeof *ds);
    size_t bytes = (size_t)n * 3 * side * side;
    ds->pixels = malloc(bytes);
    ds->labels = calloc((size_t)n, 1);
    if (!ds->pixels || !ds->labels) {
        rw_dataset_free(ds);
        return -1;
    }
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < bytes; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ds->pixels[i] = (uint8_t)x;
    }
    ds->n = ds->labeled = n;
    ds->side = side;
    ds->classes = 10;
    return 0;
}

static int run(const cost_cfg *c)
{
    char err[256];
    kb_backend *be = kb_cuda_create(0, err, sizeof err);
    if (!be) {
        fprintf(stderr, "step-cost: CUDA backend (emulated): %s\n", err);
        return 1;
    }
    /* After the backend's probe kernel (which must run): from here on
     * nothing is computed. */
    emu_dry(1);
    kb_precision prec = be->set_precision(be, c->prec);
    if (prec != c->prec) {
        fprintf(stderr, "step-cost: the backend runs %s, not %s\n", kb_precision_name(prec),
                kb_precision_name(c->prec));
        kb_destroy(be);
        return 1;
    }
    /* The paper's heads (projector 512 -> 128, MLP predictor 512, BYOL);
     * below width 64 the quickstart's (conf/quickstart.yaml). */
    rw_model_cfg mc = {
        .stem = c->stem, .width = c->width, .proj_hidden = 512, .proj_out = 128,
        .predictor = RW_PRED_MLP, .pred_hidden = 512, .loss = {.kind = KB_LOSS_BYOL},
    };
    if (c->width < 64) {
        mc.proj_hidden = 16 * c->width;
        mc.proj_out = 64;
        mc.pred_hidden = 16 * c->width;
    }
    rw_model *m = rw_model_create(be, &mc, 0, err, sizeof err);
    if (!m) {
        fprintf(stderr, "step-cost: %s\n", err);
        kb_destroy(be);
        return 1;
    }
    rw_dataset ds;
    if (make_set(2 * c->batch, c->size, &ds) != 0) {
        fprintf(stderr, "step-cost: out of memory for the data set\n");
        rw_model_free(m);
        kb_destroy(be);
        return 1;
    }
    rw_stepper_cfg sc = {
        .m = m, .ds = &ds, .batch = c->batch, .shard_world = 1, .size = c->size,
        .augment = RW_AUG_BYOL, .mean = {0.5f, 0.5f, 0.5f}, .std = {0.25f, 0.25f, 0.25f},
        .seed = 1, .loader_threads = 1,
    };
    int rc = 1;
    rw_stepper *sp = rw_stepper_create(&sc, err, sizeof err);
    if (!sp) {
        fprintf(stderr, "step-cost: %s\n", err);
        goto out;
    }
    /* warm-up steps, the capture, then two replays to compare */
    static step_costs steps[WARMUP + 3];
    const int nsteps = WARMUP + 3;
    int epoch = 0;
    rw_stepper_seek(sp, 0, 0);
    for (int i = 0; i < nsteps;) {
        emu_cost_reset();
        int r = rw_stepper_step(sp, 1, 3e-4f, 0, 0.996f);
        if (r == 1) {
            rw_stepper_seek(sp, ++epoch, 0);
            continue;
        }
        if (r != 0) {
            fprintf(stderr, "step-cost: step %d failed: %s\n", i + 1, rw_model_error(m));
            goto out;
        }
        if (read_costs(&steps[i]) != 0)
            goto out;
        char when[32];
        snprintf(when, sizeof when, "step %d", i + 1);
        if (check_declared(&steps[i], when) != 0)
            goto out;
        i++;
    }
    rw_stepper_counts k;
    rw_stepper_counts_get(sp, &k);
    if (k.eager != WARMUP || k.captured != 1 || k.replayed != 2 || k.recaptures != 0) {
        fprintf(stderr,
                "step-cost: the step did not run as training runs it (%ld eager, %ld captured, "
                "%ld replayed, %ld recaptures; want %d, 1, 2, 0): %s\n",
                k.eager, k.captured, k.replayed, k.recaptures, WARMUP, rw_stepper_describe(sp));
        goto out;
    }
    const step_costs *a = &steps[WARMUP + 1], *b = &steps[WARMUP + 2];
    if (!same_costs(a, b)) {
        fprintf(stderr, "step-cost: two replayed steps cost differently\n");
        goto out;
    }
    char label[256];
    snprintf(label, sizeof label,
             "ResNet-18 width %d, %s stem, %dx%d, batch %d, BYOL, projector %d->%d, MLP "
             "predictor %d; one replayed step (%s; emulated, dry)",
             c->width, c->stem == RW_STEM_IMAGENET ? "imagenet" : "cifar", c->size, c->size,
             c->batch, mc.proj_hidden, mc.proj_out, mc.pred_hidden, rw_stepper_describe(sp));
    print_costs(a, c, label);
    /* an eager step enqueues the same ops (the graphs hold them): say so if not */
    if (!same_costs(&steps[WARMUP - 1], a))
        printf("note: the last eager step's ops differ from the replayed step's\n");
    rc = 0;
out:
    rw_stepper_free(sp);
    rw_dataset_free(&ds);
    rw_model_free(m);
    kb_destroy(be);
    return rc;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: step-cost [--precision bf16|tf32|fp32] [--batch N] [--size S] [--width W] "
            "[--stem imagenet|cifar] [--quick]\n"
            "  defaults: the paper's setup, ResNet-18 width 64, imagenet stem, 96x96, batch "
            "128, bf16\n"
            "  --quick   the quickstart's: width 16, cifar stem, 32x32, batch 64\n");
}

int main(int argc, char **argv)
{
    cost_cfg c = {RW_STEM_IMAGENET, 64, 96, 128, KB_PREC_BF16};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--quick") == 0) {
            c.stem = RW_STEM_CIFAR;
            c.width = 16;
            c.size = 32;
            c.batch = 64;
        } else if (strcmp(a, "--precision") == 0 && v) {
            i++;
            if (strcmp(v, "bf16") == 0)
                c.prec = KB_PREC_BF16;
            else if (strcmp(v, "tf32") == 0)
                c.prec = KB_PREC_TF32;
            else if (strcmp(v, "fp32") == 0)
                c.prec = KB_PREC_FP32;
            else
                return usage(), 2;
        } else if (strcmp(a, "--stem") == 0 && v) {
            i++;
            if (strcmp(v, "imagenet") == 0)
                c.stem = RW_STEM_IMAGENET;
            else if (strcmp(v, "cifar") == 0)
                c.stem = RW_STEM_CIFAR;
            else
                return usage(), 2;
        } else if (strcmp(a, "--batch") == 0 && v && atoi(v) > 0) {
            c.batch = atoi(argv[++i]);
        } else if (strcmp(a, "--size") == 0 && v && atoi(v) > 0) {
            c.size = atoi(argv[++i]);
        } else if (strcmp(a, "--width") == 0 && v && atoi(v) > 0) {
            c.width = atoi(argv[++i]);
        } else {
            usage();
            return 2;
        }
    }
    return run(&c);
}
