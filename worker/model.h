/* The model: a ResNet-18, -34 or -50 encoder (torchvision layout),
 * projector, predictor, the mean teacher, and one training step (forward
 * both views through the online network and the teacher, loss, backward,
 * Adam, EMA).
 *
 * Parameters, gradients, Adam moments and teacher parameters each live in ONE
 * contiguous backend buffer with the same layout: encoder, projector, then
 * predictor. The teacher mirrors the encoder and projector, i.e. the first
 * n_teacher floats, so the EMA is one pass over a prefix. BatchNorm running
 * statistics live in separate state buffers (online and teacher); the EMA
 * does not touch them. */
#ifndef RUNAWAY_WORKER_MODEL_H
#define RUNAWAY_WORKER_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/backend.h"
#include "proto/spec.h"

#define RW_BN_EPS 1e-5f
#define RW_BN_MOMENTUM 0.1f

typedef struct rw_model rw_model;

/* BatchNorm layers at most: resnet50's 53, the projector's and a
 * predictor's (num_batches_tracked arrays are this long) */
#define RW_MODEL_MAX_BN 64

typedef struct rw_model_cfg {
    rw_arch arch;    /* 0: resnet18 */
    rw_stem stem;
    int width;       /* ResNet base width; 64 is torchvision's */
    int proj_hidden; /* projector Linear(feat, hidden) -> BN -> ReLU -> Linear(hidden, out) */
    int proj_out;
    rw_predictor predictor;
    int pred_hidden;
    kb_loss_cfg loss;
    /* > 0: the supervised baseline: a classifier Linear(proj_out, classes)
     * on the (unnormalized) projections of each view, trained with
     * softmax cross-entropy on the labels (rw_model_set_labels); no teacher
     * in the loss, and `loss` only measures L_align. 0: self-supervised. */
    int classes;
    /* 1: convolutions' weight gradients may use algorithms that sum in no
     * fixed order (kb_conv_desc.nondeterministic) */
    int nondeterministic;
    /* 1: the predictor keeps its initialization (a fixed random predictor,
     * Tian, Chen and Ganguli 2021): the update leaves its parameters and
     * their Adam moments alone; gradients still flow through it. A
     * predictor trained by gradient only. */
    int pred_frozen;
    /* predictor directpred: W = U diag(p) U^T from the running correlation
     * F of its input, set every `every` steps (worker/directpred.h) */
    struct {
        int every;      /* >= 1 */
        float momentum; /* [0, 1) */
        float eps;      /* >= 0 */
    } directpred;
    /* Initialization only (rw_model_create; weights read later replace
     * them): the predictor's output layer negated, the start (theta0, -W0)
     * of the paper's Theorem 5.1; and conv1.weight's first element moved by
     * this many ulps (nextafterf), a control of how far rounding alone
     * carries two runs apart. */
    int pred_negated;
    int init_nudge_ulps;
} rw_model_cfg;

void rw_model_cfg_from_spec(const rw_spec *s, rw_model_cfg *c);

/* Parameters of the model c describes, without building it: the encoder's
 * alone (encoder_only: torchvision's count less fc), or every online one.
 * 0 where c is not a valid model. */
size_t rw_model_cfg_params(const rw_model_cfg *c, int encoder_only);

/* Which buffer a named tensor lives in. */
typedef enum {
    RW_T_PARAM,         /* online parameter (params buffer) */
    RW_T_STATE,         /* online BN running statistic (online state buffer) */
    RW_T_TEACHER_PARAM, /* teacher parameter (teacher buffer) */
    RW_T_TEACHER_STATE, /* teacher BN running statistic */
} rw_tensor_kind;

typedef struct rw_named {
    char name[64];      /* e.g. "layer1.0.conv1.weight", "projector.0.bias" */
    rw_tensor_kind kind;
    size_t off;         /* float offset into its buffer */
    int ndim;
    int shape[4];
    size_t numel;
    int bn;             /* index of the BN layer (running stats), else -1 */
} rw_named;

typedef struct rw_step_stats {
    float loss, align, cross, byol; /* loss op outputs (see kernels/backend.h) */
    float uniform;                  /* L_uniform of normalized online projections, t=2, mean of both views */
    float collapse;                 /* collapse std of normalized online projections, mean of both views */
} rw_step_stats;

/* Builds the model and initializes it as PyTorch does, from `seed`.
 * NULL with a reason on failure (bad config, out of memory). */
rw_model *rw_model_create(kb_backend *be, const rw_model_cfg *cfg, uint64_t seed, char *err,
                          size_t errlen);
void rw_model_free(rw_model *m);

/* The supervised baseline's labels of the next steps' batch: (N) int32 in
 * backend memory, read when the step runs (a captured step reads the same
 * buffer). Unused by a self-supervised model. */
void rw_model_set_labels(rw_model *m, const int32_t *labels);

kb_backend *rw_model_backend(rw_model *m);
const rw_model_cfg *rw_model_cfg_of(const rw_model *m);

/* Sizes and buffers (backend memory). */
size_t rw_model_nparams(const rw_model *m);  /* online parameters incl. predictor */
size_t rw_model_nteacher(const rw_model *m); /* teacher parameters = encoder + projector prefix */
size_t rw_model_nstate(const rw_model *m);   /* online running stats (teacher: same layout, prefix) */
size_t rw_model_nteacher_state(const rw_model *m);
int rw_model_feat_dim(const rw_model *m);     /* encoder output width (8 width; resnet50 32) */
float *rw_model_params(rw_model *m);
float *rw_model_grads(rw_model *m);
float *rw_model_adam_m(rw_model *m);
float *rw_model_adam_v(rw_model *m);
float *rw_model_teacher(rw_model *m);
float *rw_model_state(rw_model *m);
float *rw_model_teacher_state(rw_model *m);
long *rw_model_bn_counts(rw_model *m, int teacher); /* num_batches_tracked per BN layer (host) */
int rw_model_nbn(const rw_model *m, int teacher);
long rw_model_adam_step(const rw_model *m);
void rw_model_set_adam_step(rw_model *m, long step);
const kb_loss_cfg *rw_model_loss_cfg(const rw_model *m);
void rw_model_set_loss_cfg(rw_model *m, const kb_loss_cfg *c);

/* Named tensors in a fixed order: online (encoder, projector, predictor)
 * then teacher (prefixed "teacher."). */
int rw_model_ntensors(const rw_model *m);
const rw_named *rw_model_tensor(const rw_model *m, int i);
const rw_named *rw_model_find(const rw_model *m, const char *name);
/* 1 when t is the online encoder's (torchvision's names: conv1, bn1,
 * layerX.Y.*), not a head's or the teacher's. */
int rw_model_in_encoder(const rw_model *m, const rw_named *t);
/* The encoder's BN layers: indices 0 .. this - 1 (rw_model_bn_prefix). */
int rw_model_nbn_encoder(const rw_model *m);

/* The linear predictor W (D x D, row-major) against the identity, the
 * paper's section 5 (BYOL' from W0 and RAFT from -W0 move alike, and no
 * predictor is W = I): cos_i = tr(W) / (|W|_F sqrt(D)), the cosine between
 * W and I (1: a positive multiple of I, -1: of -I), and asym = |A|_F / |W|_F
 * with A = (W - W^T)/2, its antisymmetric share (0: symmetric). NaN where
 * W is 0. */
void rw_square_vs_identity(const float *W, int D, double *cos_i, double *asym);
/* Those of the model's predictor when it is linear (linear,
 * linear_identity); NaN for the others. 0, or -1 when out of memory. */
int rw_model_predictor_vs_identity(rw_model *m, double *cos_i, double *asym);
/* The name prefix of predictor p's output layer (its weight and bias):
 * "predictor" (linear, directpred), "predictor.2" (mlp), "predictor.3"
 * (mlp_bn); NULL for none. What model.predictor_negated negates. */
const char *rw_predictor_out_prefix(rw_predictor p);
/* Name prefix of BN layer idx ("layer1.0.bn1"), for num_batches_tracked. */
const char *rw_model_bn_prefix(const rw_model *m, int idx);

/* Data parallel: with sync_bn, every training-mode BatchNorm (online and
 * teacher) normalizes with statistics over the global batch, all-reduced
 * through comm (the gradient all-reduce is the caller's: see train.c).
 * -1 when the backend lacks the synchronized BN ops. */
struct kb_comm;
int rw_model_set_comm(rw_model *m, struct kb_comm *comm, int sync_bn, char *err, size_t errlen);
/* fn(ud, from) during each backward pass, as soon as the parameter
 * gradients from float `from` to the end are final: from decreases, the
 * last call gives 0. For a synchronous backend (the CPU's) only: a queued
 * device has not computed them yet. NULL: no calls. */
void rw_model_set_grads_ready(rw_model *m, void (*fn)(void *ud, size_t from), void *ud);
/* Changes whenever a buffer the step uses is reallocated (a new batch size,
 * an evaluation pass on a larger batch): a captured step is stale then. */
unsigned long rw_model_mem_gen(const rw_model *m);
/* Why the last step failed. */
const char *rw_model_error(const rw_model *m);

/* Copies the online encoder+projector into the teacher (parameters and
 * running statistics), as BYOL starts. */
void rw_model_teacher_from_online(rw_model *m);
/* After anything but the model's own ops wrote the parameters or the
 * teacher (a checkpoint, a broadcast, a test): the backend's copies of the
 * weights (kb_backend.mirror_*) are made again from them. */
void rw_model_params_written(rw_model *m);

/* Zeroes the gradients (unless an update just did), runs both views
 * through online network and teacher as one batch, the loss, and the
 * backward pass; gradients end in rw_model_grads() (DirectPred's
 * predictor: E[y y^T] of the batch in its slot, net.h). x: the views, a
 * feature map (2N, 3, S, S) in the backend's format (kb_backend.fmap_bytes),
 * view 1 of the N samples then view 2. Stats are downloaded when st != NULL. */
int rw_model_forward_backward(rw_model *m, const void *x, int N, int S, rw_step_stats *st);
/* Downloads the loss and metrics of the last forward_backward (waits for it). */
void rw_model_stats(rw_model *m, rw_step_stats *st);
/* Where forward_backward leaves them: RW_MODEL_NSTATS floats of backend
 * memory, for a caller that keeps them on the device (worker/step.c), and
 * their reading once downloaded. */
#define RW_MODEL_NSTATS (KB_LOSS_NOUT + 8)
const float *rw_model_stats_buf(const rw_model *m);
void rw_model_stats_decode(const rw_model *m, const float *raw, rw_step_stats *st);
/* Adam on the online parameters, then xi <- tau*xi + (1-tau)*theta (and
 * the gradients zeroed for the next step): rw_model_update_prepare,
 * rw_model_update_apply, then rw_model_update_finish. 0, or -1
 * (rw_model_error says why). */
int rw_model_update(rw_model *m, float lr, float weight_decay, float tau);
/* The host half before: counts the Adam step and uploads the step's
 * scalars. */
void rw_model_update_prepare(rw_model *m, float lr, float weight_decay, float tau);
/* The device half (ops only, no host traffic: a capture may record it).
 * The predictor steps at lr * its multiplier (rw_model_set_predictor_lr_mult),
 * not at all when frozen or DirectPred's. */
void rw_model_update_apply(rw_model *m);
/* The host half after, outside any capture: DirectPred's. The step's
 * E[y y^T] (the predictor's gradient slot, all-reduced with the gradient in
 * a data-parallel job) folds into F, and every `every` steps W is set from F
 * (rank 0's, broadcast). It waits for the device. Nothing for the other
 * predictors. 0, or -1 (rw_model_error says why). */
int rw_model_update_finish(rw_model *m);

/* The predictor's learning rate is lr * mult (optim.predictor_lr_mult;
 * 1 at creation). -1 with the reason for a negative one, or a multiplier
 * other than 1 for a predictor not trained by gradient. */
int rw_model_set_predictor_lr_mult(rw_model *m, float mult, char *err, size_t errlen);
/* DirectPred's running correlation F (proj_out x proj_out doubles, host
 * memory): training state, kept by checkpoints; NULL for other predictors. */
double *rw_model_directpred_corr(rw_model *m);

/* The normalized online projections of view v (0 or 1) from the last
 * forward_backward: (N, proj_out) backend memory. */
const float *rw_model_projections(rw_model *m, int v);
/* The predictor's input of the last forward_backward: the online
 * projections y of both views, not normalized, (2N, proj_out) backend
 * memory (DirectPred's F is their correlation). */
const float *rw_model_pred_input(rw_model *m);

/* Encoder features in eval mode (running statistics) of x, a feature map
 * (N,3,S,S) (kb_backend.fmap_upload): out (N, feat_dim), backend memory.
 * teacher != 0 uses the teacher. */
int rw_model_features(rw_model *m, const void *x, int N, int S, int teacher, float *out);
/* Projections f(x) = g(e(x)) in eval mode, not normalized: out (N, proj_out),
 * backend memory. */
int rw_model_project(rw_model *m, const void *x, int N, int S, int teacher, float *out);

#endif
