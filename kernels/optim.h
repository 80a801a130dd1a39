/* Adam and the mean-teacher EMA, defined once for the CPU backend and the
 * CUDA backend: the host computes the step's scalars (kb_adam_consts_init),
 * each element is updated by kb_adam_elem. Compiles as C11 and as CUDA. */
#ifndef RUNAWAY_KERNELS_OPTIM_H
#define RUNAWAY_KERNELS_OPTIM_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef RW_HD
#ifdef __CUDACC__
#define RW_HD __host__ __device__
#else
#define RW_HD
#endif
#endif

/* The double a user meant by a float hyperparameter: its shortest decimal
 * form (0.999f -> 0.999). torch.optim.Adam holds betas and lr as Python
 * doubles, so 1 - beta2 is 1e-3 there, while 1 - 0.999f is 0.99999e-3:
 * a 1.3e-5 relative difference in v that would keep us from matching. */
static inline double kb_intended(float f)
{
    char buf[32];
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
        double d = strtod(buf, NULL);
        if ((float)d == f)
            return d;
    }
    return f;
}

/* The per-step scalars of torch.optim.Adam (single-tensor path). */
typedef struct kb_adam_consts {
    float beta1, beta2, eps, weight_decay;
    float step_size; /* lr / bc1 */
    float bc2_sqrt;  /* sqrt(bc2) */
    float omb1, omb2; /* 1 - beta1, 1 - beta2 from the intended doubles */
} kb_adam_consts;

/* Bias corrections bc = 1 - beta^step computed in double as Python does;
 * torch computes these scalars in double and the tensor ops in float. */
static inline kb_adam_consts kb_adam_consts_init(float lr, float beta1, float beta2, float eps,
                                                 float weight_decay, long step)
{
    const double b1 = kb_intended(beta1), b2 = kb_intended(beta2);
    const double bc1 = 1.0 - pow(b1, (double)step);
    const double bc2 = 1.0 - pow(b2, (double)step);
    kb_adam_consts k;
    k.beta1 = beta1;
    k.beta2 = beta2;
    k.eps = eps;
    k.weight_decay = weight_decay;
    k.step_size = (float)(kb_intended(lr) / bc1);
    k.bc2_sqrt = (float)sqrt(bc2);
    k.omb1 = (float)(1.0 - b1);
    k.omb2 = (float)(1.0 - b2);
    return k;
}

/* g += wd p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 * p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps). */
static inline RW_HD void kb_adam_elem(const kb_adam_consts *k, float *p, float g, float *m,
                                      float *v)
{
    float gi = g;
    if (k->weight_decay != 0.0f)
        gi += k->weight_decay * *p;
    float mi = k->beta1 * *m + k->omb1 * gi;
    float vi = k->beta2 * *v + k->omb2 * gi * gi;
    *m = mi;
    *v = vi;
    float denom = sqrtf(vi) / k->bc2_sqrt + k->eps;
    *p -= k->step_size * (mi / denom);
}

/* The ema op's scalars [tau, 1 - tau], 1 - tau computed once in float. */
static inline void kb_ema_consts_init(float tau, float out[2])
{
    out[0] = tau;
    out[1] = 1.0f - tau;
}

/* xi = tau xi + (1 - tau) theta */
static inline RW_HD float kb_ema_elem(float xi, float theta, float tau, float omt)
{
    return tau * xi + omt * theta;
}

#endif
