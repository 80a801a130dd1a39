/* Private to the model (worker/model.c): the architecture -- layers with
 * their offsets into the parameter and state buffers, the named tensors
 * and their initialization. No backend here: what the layers compute is
 * model.c's. */
#ifndef RUNAWAY_WORKER_ARCH_H
#define RUNAWAY_WORKER_ARCH_H

#include "worker/model.h"

#define MAX_BN RW_MODEL_MAX_BN
#define MAX_NAMED 768  /* resnet50's ~270 tensors, its heads', the teacher's copies */
#define MAX_BLOCKS 16  /* resnet34 and resnet50: 3 + 4 + 6 + 3 */
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

/* A basic block: relu(b2(c2(relu(b1(c1(x))))) + shortcut(x)), c1 3x3
 * with the stride. A bottleneck (torchvision's, v1.5): c1 1x1, c2 3x3 with
 * the stride, c3 1x1 to 4x the planes, b3 before the add. shortcut: x, or
 * bd(cd(x)), a 1x1 convolution, where the shape changes. */
typedef struct block_l {
    conv_l c1, c2, c3, cd;
    bn_l b1, b2, b3, bd;
    int bottleneck, down;
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
    block_l blocks[MAX_BLOCKS];
    int nblocks;
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

/* The block's last batch norm, whose output is the block's (b3 or b2). */
static inline bn_l *block_out(block_l *b)
{
    return b->bottleneck ? &b->b3 : &b->b2;
}

/* Every convolution of the encoder, into c (at most 1 + 4 * MAX_BLOCKS);
 * their number. */
int arch_convs(arch *a, conv_l **c);

#endif
