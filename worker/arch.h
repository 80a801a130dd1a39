/* Private to the model (worker/model.c): the architecture -- layers with
 * their offsets into the parameter and state buffers, the named tensors
 * and their initialization. No backend here: what the layers compute is
 * model.c's. */
#ifndef RUNAWAY_WORKER_ARCH_H
#define RUNAWAY_WORKER_ARCH_H

#include "worker/model.h"

#define MAX_BN 32
#define MAX_NAMED 256
#define PLAN_CACHE 4 /* conv plans per layer: training batch, eval batches */

typedef struct conv_l {
    int C, K, R, S, stride, pad;
    size_t w; /* param offset of (K, C, R, S) */
    int id;   /* activation id of the output */
    struct {
        kb_conv_desc d;
        kb_conv *plan;
    } cache[PLAN_CACHE];
    int ncache, next;
} conv_l;

typedef struct bn_l {
    int C;
    size_t gamma, beta; /* param offsets (C) */
    size_t rmean, rvar; /* state offsets (C) */
    int idx;            /* BN index, for num_batches_tracked */
    int id_y, id_mean, id_inv;
} bn_l;

typedef struct lin_l {
    int I, O;
    size_t w, b; /* param offsets of (O, I) and (O) */
    int has_b;
    int id;      /* output (N, O) */
} lin_l;

typedef struct block_l {
    conv_l c1, c2, cd;
    bn_l b1, b2, bd;
    int down;
} block_l;

typedef enum {
    INIT_CONV,     /* Kaiming normal, fan_out, ReLU gain (torchvision resnet) */
    INIT_ONE,      /* BN weight */
    INIT_ZERO,     /* BN bias */
    INIT_LINEAR,   /* nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) */
    INIT_IDENTITY, /* linear_identity predictor */
} init_kind;

typedef struct arch {
    rw_model_cfg cfg;
    int F; /* encoder output width */
    conv_l conv1;
    bn_l bn1;
    int maxpool, id_pool_idx; /* the ImageNet stem's max pool: bn1 folds it in */
    block_l blocks[8];
    int id_feat;
    /* projector */
    lin_l p1, p2;
    bn_l pbn;
    /* predictor */
    lin_l q1, q2;
    bn_l qbn;
    lin_l cls;       /* the supervised baseline's classifier (cfg.classes > 0) */
    int pred_layers; /* 0 none, 1 linear, 2 mlp */
    int pred_bn;
    int id_pnorm, id_pnorm_n; /* l2norm of predictor output / teacher projection */
    int id_znorm, id_znorm_n; /* l2norm of online projection (metrics only) */
    int nact;
    size_t nparams, nteacher, nstate, nteacher_state;
    int nbn, nbn_teacher;
    char bn_prefix[MAX_BN][56];
    rw_named named[MAX_NAMED];
    init_kind init[MAX_NAMED];
    int fan_in[MAX_NAMED];
    int nnamed;
} arch;

/* Lays out the network of cfg (every offset, activation id and named
 * tensor). 0, or -1 with the reason in err. */
int arch_build(arch *a, const rw_model_cfg *cfg, char *err, size_t errlen);

/* PyTorch's initialization from seed: parameters into hp (nparams), running
 * statistics into hs (nstate). */
void arch_init_params(const arch *a, uint64_t seed, float *hp, float *hs);

/* The weights the ops read in a mirror (every convolution and linear
 * weight), into w (at most MAX_NAMED); their number. */
int arch_weights(const arch *a, kb_wseg *w);

#endif
