/* Private to the CPU backend: the impl struct and the per-file op tables.
 * Each .c file implements one group of kb_backend ops and fills its slots. */
#ifndef RUNAWAY_KERNELS_CPU_CPU_H
#define RUNAWAY_KERNELS_CPU_CPU_H

#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <dnnl.h>

#include "kernels/backend.h"

/* Programmer errors only (broken invariants, oneDNN misuse): never bad data. */
#define KB_CPU_CHECK(cond)                                                     \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__,  \
                    #cond);                                                    \
            abort();                                                           \
        }                                                                      \
    } while (0)

#define KB_CPU_DNNL(call)                                                      \
    do {                                                                       \
        dnnl_status_t st_ = (call);                                            \
        if (st_ != dnnl_success) {                                             \
            fprintf(stderr, "%s:%d: %s: dnnl status %d\n", __FILE__,          \
                    __LINE__, #call, (int)st_);                                \
            abort();                                                           \
        }                                                                      \
    } while (0)

/* Alignment of backend memory and the arena (a cache line, an AVX-512 vector). */
#define KB_CPU_ALIGN 64

/* Loops shorter than this run on the calling thread: waking the OpenMP team
 * costs more than it saves. */
#define KB_CPU_PAR_MIN 32768

/* Double-precision reductions over float arrays with 8 independent partial
 * sums: a single double accumulator is latency-bound (one add per 4 cycles),
 * and a fixed lane split keeps the result independent of threads. */
static inline double kb_cpu_sum(const float *p, size_t n)
{
    double acc[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += p[i + j];
    double s = 0.0;
    for (; i < n; i++)
        s += p[i];
    for (int j = 0; j < 8; j++)
        s += acc[j];
    return s;
}

/* sum (p - c)^2 */
static inline double kb_cpu_sumsq_dev(const float *p, size_t n, double c)
{
    double acc[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) {
            double d = p[i + j] - c;
            acc[j] += d * d;
        }
    double s = 0.0;
    for (; i < n; i++) {
        double d = p[i] - c;
        s += d * d;
    }
    for (int j = 0; j < 8; j++)
        s += acc[j];
    return s;
}

/* sum a * b */
static inline double kb_cpu_dot(const float *a, const float *b, size_t n)
{
    double acc[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += (double)a[i + j] * b[i + j];
    double s = 0.0;
    for (; i < n; i++)
        s += (double)a[i] * b[i];
    for (int j = 0; j < 8; j++)
        s += acc[j];
    return s;
}

/* v where on, else +0: by its bits, without a branch (a ReLU's mask is a
 * coin flip per element, which a branch mispredicts half the time). */
static inline float kb_cpu_keep(float v, int on)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    u &= 0u - (uint32_t)(on != 0);
    memcpy(&v, &u, 4);
    return v;
}

/* kb_cpu_sum(g) and kb_cpu_dot(g, x) of g = (y > 0 ? dy : 0), in the same
 * lanes and order as those two (so a fused ReLU gradient gives their bits). */
static inline void kb_cpu_masked_sums(const float *dy, const float *y, const float *x, size_t n,
                                      double *sum, double *dot)
{
    double as[8] = {0}, ad[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) {
            float g = kb_cpu_keep(dy[i + j], y[i + j] > 0.0f);
            as[j] += g;
            ad[j] += (double)g * x[i + j];
        }
    double s = 0.0, d = 0.0;
    for (; i < n; i++) {
        float g = kb_cpu_keep(dy[i], y[i] > 0.0f);
        s += g;
        d += (double)g * x[i];
    }
    for (int j = 0; j < 8; j++) {
        s += as[j];
        d += ad[j];
    }
    *sum = s;
    *dot = d;
}

/* The same for g = (a x + b > 0 ? dy : 0): the ReLU's mask made again from
 * the batch norm's input and coefficients. */
static inline void kb_cpu_relu_sums(const float *dy, const float *x, float a, float b, size_t n,
                                    double *sum, double *dot)
{
    double as[8] = {0}, ad[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) {
            float g = kb_cpu_keep(dy[i + j], a * x[i + j] + b > 0.0f);
            as[j] += g;
            ad[j] += (double)g * x[i + j];
        }
    double s = 0.0, d = 0.0;
    for (; i < n; i++) {
        float g = kb_cpu_keep(dy[i], a * x[i] + b > 0.0f);
        s += g;
        d += (double)g * x[i];
    }
    for (int j = 0; j < 8; j++) {
        s += as[j];
        d += ad[j];
    }
    *sum = s;
    *dot = d;
}

typedef struct kb_cpu {
    int threads; /* OpenMP team size for our loops and oneDNN; BLAS threads */
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    /* One workspace shared by all conv plans for oneDNN's blocked copies and
     * scratchpads: ops run one at a time, so each plan needs it only during
     * its own call, and memory stays at the largest single conv instead of
     * the sum over all layers. Grown by conv_plan, never during a call. */
    void *arena;       /* 64-byte aligned */
    size_t arena_bytes;
    void *tmp;         /* kb_cpu_tmp */
    size_t tmp_bytes;
    /* kb_cpu_emulate_rounding(KB_PREC_BF16): convolutions and linear layers
     * round their operands (and convolutions their results) to bf16 where
     * the CUDA backend's bf16 mode does. Tests only; 0 otherwise. */
    int round_bf16;
    /* kb_cpu_jitter_sums: with round_bf16, each convolution result moves by
     * one fp32 ulp (its direction a hash of this seed, a call count and the
     * index) before its bf16 rounding. Tests only; 0 otherwise. */
    unsigned jitter;
    unsigned long jitter_calls;
} kb_cpu;

/* float -> bf16 -> float, rounding to nearest with ties to even as
 * cuda_bf16.h's __float2bfloat16_rn: infinities stay, finite values past
 * bf16's largest round to infinity, a NaN stays a NaN (quieted). */
static inline float kb_cpu_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        u |= 0x00400000u;
    else
        u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* bf16-rounded copy of n floats in a new buffer (free it); NULL on OOM. */
float *kb_cpu_bf16_copy(kb_cpu *impl, const float *src, size_t n);

/* p[i] = bf16(p[i]) in place */
void kb_cpu_bf16_round(kb_cpu *impl, float *p, size_t n);

static inline kb_cpu *kb_cpu_of(kb_backend *be) { return (kb_cpu *)be->impl; }

/* Makes OpenMP (hence oneDNN, which runs on OpenMP) use impl->threads on the
 * calling thread; the setting is per thread, and the backend may be driven
 * from a thread other than its creator. */
void kb_cpu_set_threads(kb_cpu *impl);

/* Sets OpenBLAS's (process-wide) thread count to impl->threads if needed. */
void kb_cpu_set_blas_threads(kb_cpu *impl);

/* Ensures the arena holds at least `bytes`; 0 on success, -1 on OOM. */
int kb_cpu_arena_reserve(kb_cpu *impl, size_t bytes);

/* The max pool of norm.c's stem batch norm (kb_bn.pool), on fp32 NCHW:
 * y and idx (the winner's index in its (H, W) plane, or NULL) (N,C,P,Q);
 * the gradient dx (N,C,H,W) written, each element the sum of the window
 * gradients that picked it, in row-major order of the windows. */
void kb_cpu_maxpool(kb_cpu *impl, const float *x, int N, int C, int H, int W, int k, int stride,
                    int pad, float *y, int32_t *idx);
void kb_cpu_maxpool_grad(kb_cpu *impl, const float *dy, const int32_t *idx, int N, int C, int H,
                         int W, int P, int Q, float *dx);

/* Scratch of at least `bytes` for one op's temporaries (the stem's
 * full-size map), grown on demand; NULL on OOM. */
void *kb_cpu_tmp(kb_cpu *impl, size_t bytes);

void kb_cpu_conv_init(kb_backend *be);
void kb_cpu_pool_init(kb_backend *be);
void kb_cpu_norm_init(kb_backend *be);
void kb_cpu_ops_init(kb_backend *be);
void kb_cpu_loss_init(kb_backend *be);

#endif
