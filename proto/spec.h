/* Job specs: the YAML a researcher writes, parsed and validated into a
 * plain struct. Lives in proto/ because the CLI, the daemon and the worker all
 * read it (the CLI and daemon validate and expand grids, the worker trains).
 *
 * A spec file (every field optional unless marked; defaults are the paper's
 * setup, appendix C):
 *
 *   name: byol-mlp          # [A-Za-z0-9_.-], at most 63 chars
 *   seed: 0                 # 0 .. 2^53
 *   init: weights.safetensors   # optional start point; path relative to the spec file
 *   threads: 0              # CPU threads, 0 = all cores
 *   devices: 1              # devices (GPUs or CPU slots) the job gets at once, 1 .. 64;
 *                           # the ranks split optim.batch_size (the global batch) evenly
 *   sync_bn: false          # with devices > 1: BatchNorm statistics over the global batch
 *   precision: tf32         # convolution and GEMM math: tf32 | fp32 | bf16 (bf16
 *                           # activations and operands, fp32 accumulation, fp32
 *                           # weights, Adam state, heads and loss);
 *                           # a CPU worker computes fp32 whatever is asked
 *   deterministic: true     # false: weight gradients may use faster GPU algorithms
 *                           # that sum in no fixed order (runs differ in the last bits)
 *   data:
 *     kind: synthetic       # synthetic | cifar10 | cifar100 | stl10 | imagefolder
 *     path: /data/cifar-10-batches-bin   # required for cifar10, cifar100, stl10 and
 *                           # imagefolder (the folder of the binary files; an image
 *                           # folder's holds train/, val/ and maybe unlabeled/);
 *                           # for synthetic, where the generated files go
 *                           # (default: a cache dir)
 *     synthetic: {train: 5000, test: 1000, seed: 0}
 *     labels: fine          # cifar100: fine (100 classes) | coarse (20)
 *     unlabeled: true       # stl10: train on unlabeled_X.bin too; imagefolder:
 *                           # on the images of unlabeled/ where it exists
 *     cache_size: 96        # imagefolder: side of the decoded cache, 8 .. 1024
 *                           # (default: image_size)
 *     skip_bad: false       # imagefolder: skip (and count) files that do not decode
 *     image_size: 96        # crop output size, 8 .. 512
 *     augment: byol         # byol | none
 *     mean: [0.4914, 0.4822, 0.4465]   # default: the data set's own (CIFAR-10's
 *     std:  [0.2470, 0.2435, 0.2616]   # for synthetic and cifar10)
 *     loader_threads: 2
 *     device_budget_mb: 0   # GPU: the uint8 set stays on the device when it
 *                           # fits in this; 0 = half the free memory
 *   model:
 *     arch: resnet18        # resnet18 | resnet34 | resnet50
 *     stem: imagenet        # imagenet | cifar
 *     width: 64             # base width (64 = torchvision): 1 .. 128, resnet50 1 .. 64
 *     projector: {hidden: 512, out: 128}
 *     predictor: mlp        # mlp | mlp_bn | linear | linear_identity | none | directpred
 *     predictor_hidden: 512
 *     predictor_frozen: false   # the predictor keeps its random initialization
 *     directpred: {every: 1, momentum: 0.99, eps: 0.1}   # W from the eigenvectors of F
 *     predictor_negated: false   # start from -W0 (Theorem 5.1's mirror run)
 *     init_nudge_ulps: 0    # conv1.weight's first element moved this many ulps
 *   loss:
 *     kind: byol            # byol | unified | supervised (labels, cross-entropy)
 *     alpha: 1.0
 *     beta: 1.0             # BYOL' beta > 0, RAFT beta < 0
 *     tangential: false
 *   optim:
 *     lr: 3.0e-4
 *     weight_decay: 0
 *     batch_size: 128
 *     epochs: 300
 *     max_steps: 0          # stop after this many steps (0: no limit)
 *     schedule: constant    # constant | cosine (lr -> 0 over training, after warm-up)
 *     warmup_epochs: 0      # lr rises linearly from lr/steps to lr over these epochs
 *     predictor_lr_mult: 1  # the predictor's learning rate is lr times this
 *   ema:
 *     tau: 0.996
 *     schedule: constant    # constant | cosine (tau -> 1 over training)
 *   eval:
 *     linear: {epochs: 100, lr: 5.0e-4, batch_size: 256, every: 0}   # epochs 0 = skip
 *     knn: {every: 0, k: 200, temperature: 0.1}            # every 0 = off
 *     rank: {every: 1, samples: 1024}   # effective rank of f; every 0 = off
 *   log:
 *     every_steps: 0        # per-step metrics at steps N, 2N, .. (0: per epoch only)
 *   checkpoint:
 *     every_epochs: 0       # 0: only at the end
 *     every_minutes: 0      # also within epochs, this often (0: off)
 *     snapshot_every: 0     # keep the weights every N epochs (0: off)
 *   monitor:
 *     collapse:             # the collapse alarm, judged at each epoch's end
 *       action: warn        # off | warn (an event) | stop (the job ends `collapsed`)
 *       rank_below: 0       # effective rank below this trips it (0: off)
 *       rank_share_below: 0 # ... below this share of the highest rank measured so far
 *       uniform_above: -0.3 # L_uniform(f) above this (0: off)
 *       std_below: 0.25     # collapse std below this (0: off)
 *       patience: 2         # epochs in a row that trip it before it goes off
 *
 * Errors name the file, the field (dotted path, e.g. "optim.lr") and what is
 * allowed, e.g. "spec.yaml: optim.lr: must be a number in (0, 10], got 'abc'".
 */
#ifndef RUNAWAY_PROTO_SPEC_H
#define RUNAWAY_PROTO_SPEC_H

#include <stddef.h>
#include <stdint.h>

#include "proto/overrides.h"

#define RW_PATH_MAX 1024
#define RW_NAME_MAX 64

typedef enum {
    RW_DATA_SYNTHETIC,
    RW_DATA_CIFAR10,
    RW_DATA_CIFAR100,
    RW_DATA_STL10,
    RW_DATA_IMAGEFOLDER,
} rw_data_kind;
/* The synthetic set's scenes (worker/synth.c): cluttered, the default, or
 * plain (a quiet background, no distractors, every object in its class's
 * hue). */
typedef enum { RW_SYNTH_CLUTTERED, RW_SYNTH_PLAIN } rw_synth_style;
typedef enum { RW_LABELS_FINE, RW_LABELS_COARSE } rw_labels;
typedef enum { RW_AUG_BYOL, RW_AUG_NONE } rw_augment;
typedef enum { RW_STEM_IMAGENET, RW_STEM_CIFAR } rw_stem;
/* model.width's range: basic blocks (resnet18, resnet34) up to twice
 * torchvision's 64; bottlenecks, whose blocks are 4x wider, up to 64 */
#define RW_WIDTH_MAX_BASIC 128
#define RW_WIDTH_MAX_BOTTLENECK 64
/* torchvision's ResNets: 18 and 34 of basic blocks, 50 of bottlenecks */
typedef enum { RW_ARCH_RESNET18, RW_ARCH_RESNET34, RW_ARCH_RESNET50 } rw_arch;
typedef enum {
    RW_PRED_MLP,
    RW_PRED_MLP_BN,
    RW_PRED_LINEAR,
    RW_PRED_LINEAR_IDENTITY,
    RW_PRED_NONE,
    /* Tian, Chen and Ganguli 2021: a linear predictor set from the
     * eigendecomposition of the running correlation of its input, not
     * trained by gradient (worker/directpred.h) */
    RW_PRED_DIRECTPRED,
} rw_predictor;
/* RW_LOSS_SUPERVISED: the baseline of learning from the labels (the paper's
 * Figure 3a): cross-entropy of a linear classifier on the projections. */
typedef enum { RW_LOSS_BYOL, RW_LOSS_UNIFIED, RW_LOSS_SUPERVISED } rw_loss_kind;
typedef enum { RW_TAU_CONSTANT, RW_TAU_COSINE } rw_tau_schedule;
typedef enum { RW_LR_CONSTANT, RW_LR_COSINE } rw_lr_schedule;
/* Same order as kb_precision (kernels/backend.h), which proto/ does not see. */
typedef enum { RW_PREC_TF32, RW_PREC_FP32, RW_PREC_BF16 } rw_precision;
/* What the linear probe does to the frozen features first: nothing (the
 * paper's protocol), standardize them with the training split's statistics,
 * or a BatchNorm without affine parameters before the linear layer. */
typedef enum { RW_LINEAR_RAW, RW_LINEAR_STANDARDIZE, RW_LINEAR_BATCHNORM } rw_linear_norm;
/* The gradient on the wire of a data-parallel job. */
typedef enum { RW_GRAD_FP32, RW_GRAD_BF16 } rw_grad_dtype;
/* What the collapse alarm does when it goes off (worker/collapse.h). */
typedef enum { RW_ALARM_OFF, RW_ALARM_WARN, RW_ALARM_STOP } rw_alarm_action;

typedef struct rw_spec {
    char name[RW_NAME_MAX];
    uint64_t seed;
    char init[RW_PATH_MAX]; /* "" = none; resolved against the spec's folder */
    int threads;
    int devices; /* the scheduler hands a job this many devices at once */
    int sync_bn; /* data parallel: BatchNorm statistics over the global batch */
    rw_precision precision; /* math of convolutions and GEMMs */
    int deterministic;      /* 0: weight gradients may sum in any order (faster on a GPU) */
    struct {
        int overlap;      /* buckets all-reduced while the backward pass runs */
        float bucket_mb;  /* a bucket's size */
        rw_grad_dtype grad_dtype;
    } dist;

    struct {
        rw_data_kind kind;
        char path[RW_PATH_MAX]; /* resolved against the spec's folder */
        int synthetic_train, synthetic_test;
        uint64_t synthetic_seed;
        rw_synth_style synthetic_style;
        rw_labels labels; /* cifar100: fine or coarse classes */
        int unlabeled;    /* stl10: unlabeled_X.bin trains the encoder too;
                           * imagefolder: unlabeled/, where present */
        int cache_size;   /* imagefolder: images are decoded once to this side */
        int skip_bad;     /* imagefolder: files that do not decode are skipped */
        int image_size;
        rw_augment augment;
        float mean[3], std[3];
        int loader_threads;
        /* GPU: MiB the uint8 training set may take on the device, else its
         * batches are streamed from pinned memory; 0 = half the device's
         * free memory. Changes no number (worker/step.c). */
        int device_budget_mb;
        /* RW_GIVEN_*: which of mean/std/cache_size the YAML set;
         * rw_spec_resolve gives the others the data set's own statistics
         * (and cache_size image_size) */
        unsigned given;
    } data;

    struct {
        rw_arch arch;
        rw_stem stem;
        int width;
        int proj_hidden, proj_out;
        rw_predictor predictor;
        int pred_hidden;
        /* The predictor studies after the paper (Tian, Chen and Ganguli
         * 2021): a fixed random predictor, and DirectPred's settings. */
        int pred_frozen; /* no update of the predictor at all */
        struct {
            int every;      /* W set from F every this many steps */
            float momentum; /* F <- momentum F + (1 - momentum) E[y y^T] */
            float eps;      /* added to each eigenvalue of W */
        } directpred;
        /* Initialization only (a resume reads the checkpoint instead): the
         * seed's weights, then the predictor's output layer negated -- the
         * start (theta0, -W0) of the paper's Theorem 5.1 --, and one weight
         * (conv1.weight's first) moved by init_nudge_ulps ulps. */
        int predictor_negated;
        int init_nudge_ulps;
    } model;

    struct {
        rw_loss_kind kind;
        float alpha, beta;
        int tangential;
    } loss;

    struct {
        float lr, weight_decay;
        int batch_size, epochs;
        long max_steps;
        rw_lr_schedule schedule; /* after the warm-up */
        int warmup_epochs;       /* linear warm-up (capped at the training's length) */
        float predictor_lr_mult; /* the predictor steps with lr times this */
    } optim;

    struct {
        float tau;
        rw_tau_schedule schedule;
    } ema;

    struct {
        int linear_epochs;
        float linear_lr;
        int linear_batch_size;
        rw_linear_norm linear_normalize; /* the features the probe sees */
        int linear_every; /* also every N epochs (0: only at the end), Figure 4(c) */
        int knn_every, knn_k;
        float knn_temperature;
        int rank_every, rank_samples; /* effective rank of the projections */
    } eval;

    struct {
        int every_steps;
    } log;

    struct {
        int every_epochs;
        float every_minutes; /* a checkpoint at the first step this long after the last */
        /* weights kept, not overwritten, at epoch 0 and every N epochs
         * (runs/.../snapshots/weights-eNNNNN.safetensors) */
        int snapshot_every;
    } checkpoint;

    /* The collapse alarm, judged at each epoch's end (worker/collapse.h):
     * an epoch trips it when a threshold set (non-zero) is crossed; after
     * `patience` such epochs in a row it warns, or stops the job. */
    struct {
        struct {
            rw_alarm_action action;
            float rank_below;       /* effective rank below this (0: off) */
            float rank_share_below; /* below this share of the highest rank so far */
            float uniform_above;    /* L_uniform(f) above this (0: off; it is never > 0) */
            float std_below;        /* collapse std (x sqrt(d)) below this (0: off) */
            int patience;           /* epochs in a row */
        } collapse;
    } monitor;
} rw_spec;

/* Fills the defaults listed above. */
void rw_spec_defaults(rw_spec *s);

/* Parses and validates a YAML file. Returns 0, or -1 with a message naming
 * the file, the field and what is allowed in err. */
int rw_spec_load(const char *path, rw_spec *s, char *err, size_t errlen);

/* Same from a YAML string; `origin` names it in errors and `basedir`
 * resolves relative paths ("" = current directory). */
int rw_spec_parse(const char *yaml, size_t len, const char *origin, const char *basedir,
                  rw_spec *s, char *err, size_t errlen);

#define RW_GIVEN_MEAN 1u
#define RW_GIVEN_STD 2u
#define RW_GIVEN_CACHE_SIZE 4u

/* Fills what defaults to a value that depends on other fields: data.mean
 * and data.std not given are data.kind's published statistics (an image
 * folder's: ImageNet's), data.cache_size not given is data.image_size. Called once,
 * after the last fields are applied (it clears data.given): parsing a spec
 * does this, and a grid per job, after its variant's fields. */
void rw_spec_resolve(rw_spec *s);

/* Checks cross-field constraints (e.g. cifar10 needs data.path, knn.k <
 * number of training images is checked later, by the worker). 0 or -1. */
int rw_spec_validate(const rw_spec *s, const char *origin, char *err, size_t errlen);

/* A canonical YAML rendering of *s (every field, table order, each float in
 * the fewest significant digits that read back as the same float -- 0.0003,
 * not 0.000300000014 --, strings double-quoted) that rw_spec_parse reads back
 * into an identical struct: how the daemon stores an expanded grid job and
 * ships it to a worker. Returns the length written (NUL excluded), or -1 if
 * outlen is too small (RW_SPEC_YAML_MAX always suffices). */
#define RW_SPEC_YAML_MAX 16384
int rw_spec_to_yaml(const rw_spec *s, char *out, size_t outlen);

/* The spec as what it trains: the name cleared, and the fields that do not
 * apply to it at their defaults (model.predictor_hidden without an MLP
 * predictor, data.unlabeled off STL-10). Two specs alike after this train
 * the same. */
void rw_spec_trained(const rw_spec *s, rw_spec *out);

/* The canonical YAML as "a.b.c: value" lines, one per field (a mapping's
 * own line is not one), at most max of them, into out. Their number, or -1
 * when the spec cannot be rendered. */
#define RW_SPEC_FIELD_MAX 256
int rw_spec_flatten(const rw_spec *s, char (*out)[RW_SPEC_FIELD_MAX], int max);

/* The spec's fields by dotted name, in the table's order (the canonical
 * YAML's): field i (0 .. rw_spec_nfields() - 1) names itself in *name and
 * writes its value as the canonical YAML does into val. 1: the spec has the
 * field; 0: it does not (loss.alpha and loss.beta but for loss.kind
 * unified), val ""; -1: i past the table, val too small, or a value no spec
 * holds. */
#define RW_SPEC_VALUE_MAX (4 * RW_PATH_MAX + 4) /* a path, every byte escaped, quoted */
int rw_spec_nfields(void);
int rw_spec_field(const rw_spec *s, int i, const char **name, char *val, size_t len);

/* One field in which two specs differ: its value in each, or absent from
 * one (`in` lacks its bit, the value is ""). */
#define RW_DELTA_A 1
#define RW_DELTA_B 2
typedef struct rw_spec_delta {
    const char *name; /* dotted: "optim.lr" */
    char a[RW_SPEC_VALUE_MAX], b[RW_SPEC_VALUE_MAX];
    int in; /* RW_DELTA_A | RW_DELTA_B: the specs that have the field */
} rw_spec_delta;

/* The fields in which a and b differ, compared by name (a field only one of
 * them has is one), in table order: how many (the first max written to
 * out), or -1 when a spec cannot be rendered. */
int rw_spec_diff(const rw_spec *a, const rw_spec *b, rw_spec_delta *out, int max);

/* Fields set on a command line: rw_overrides, proto/overrides.h. */
/* rw_spec_parse and rw_spec_load with overrides applied after the text's
 * fields (on top of them) and before the defaults that depend on other
 * fields (rw_spec_resolve): data.kind=cifar100 gets CIFAR-100's mean and
 * std. ov NULL: none. */
int rw_spec_parse_with(const char *yaml, size_t len, const char *origin, const char *basedir,
                       const rw_overrides *ov, rw_spec *s, char *err, size_t errlen);
int rw_spec_load_with(const char *path, const rw_overrides *ov, rw_spec *s, char *err,
                      size_t errlen);

/* A field's value (of a flattened line, after its colon) as written for a
 * person: a number with the fewest digits that read back as the same float
 * (3e-4 for the canonical 0.000300000014), anything else (an integer, a
 * word) as it is. */
void rw_spec_value_short(const char *v, char *out, size_t len);

/* Names for printing. */
const char *rw_data_kind_name(rw_data_kind k);
const char *rw_predictor_name(rw_predictor p);
const char *rw_arch_name(rw_arch a);
const char *rw_loss_kind_name(rw_loss_kind k);
/* Classes of the spec's data set: 10, or CIFAR-100's 100 (20 coarse). */
int rw_spec_classes(const rw_spec *s);

#endif
