/* Private to the CUDA backend: the math mode (set_precision) and the
 * conversions between the interface's forms and what cuDNN and cuBLAS run
 * on -- feature maps (host fp32 NCHW <-> NHWC in the math's type), weights
 * (fp32 KCRS <-> KRSC in the math's type, padded as the feature maps) and
 * plain casts. */
#ifndef RUNAWAY_KERNELS_CUDA_PRECISION_H
#define RUNAWAY_KERNELS_CUDA_PRECISION_H

#include "kernels/cuda/cuda.h"

/* The op slot: sets the mode for later plans and calls and returns the
 * mode in effect (BF16 needs compute capability 8.0+; below that the mode
 * stays as it was). cuBLAS's math mode follows at once; convolution plans
 * made under another mode plan the new one on their first call in it
 * (outside a capture: set the mode before capturing a step). */
kb_precision kb_cuda_set_precision(kb_backend *be, kb_precision p);

/* dst = src, n elements, the type converted (bf16 rounds to nearest even). */
void kb_cuda_cast(kb_cuda *impl, const void *src, int src_bf16, void *dst, int dst_bf16, size_t n);

/* A convolution weight (K, C, R, S) fp32 -> (Kp, R, S, Cp) in bf16 or fp32
 * (the NHWC filter cuDNN reads), zeros in the padding; round_bf16 with an
 * fp32 dst: the values rounded to bf16 all the same (BF16 mode's weights
 * for a direction that runs on fp32 copies). */
void kb_cuda_weight_pack(kb_cuda *impl, const float *w, int K, int C, int RS, int Kp, int Cp,
                         void *dst, int dst_bf16, int round_bf16);
/* dw (K, C, R, S) fp32 += g, a (Kp, R, S, Cp) weight gradient in bf16 or fp32. */
void kb_cuda_weight_grad_add(kb_cuda *impl, const void *g, int g_bf16, int K, int C, int RS,
                             int Cp, float *dw);

/* Carving scratch: each operand copy starts 256-byte aligned. */
static inline size_t kb_cuda_align256(size_t bytes) { return (bytes + 255) & ~(size_t)255; }

#endif
