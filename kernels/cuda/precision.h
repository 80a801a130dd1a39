/* Private to the CUDA backend: the math mode (set_precision) and the
 * operand copies it needs. Convolutions (conv2d.cu) and linear layers
 * (ops.cu) copy their fp32 NCHW operands into scratch as bf16 and/or NHWC,
 * and their results back; storage at the interface stays fp32 NCHW. */
#ifndef RUNAWAY_KERNELS_CUDA_PRECISION_H
#define RUNAWAY_KERNELS_CUDA_PRECISION_H

#include "kernels/cuda/cuda.h"

/* The op slot: sets the mode for later plans and calls and returns the
 * mode in effect (BF16 needs compute capability 8.0+; below that the mode
 * stays as it was). cuBLAS's math mode follows at once; convolution plans
 * made under another mode plan the new one on their first call in it
 * (outside a capture: set the mode before capturing a step). */
kb_precision kb_cuda_set_precision(kb_backend *be, kb_precision p);

/* dst = src (=) or dst += src (accumulate), element type converted (bf16
 * rounds to nearest even), viewing src as B matrices of (R, S) elements:
 * transpose 0 copies in place order, transpose 1 writes each matrix
 * transposed, dst (B, S, R). NCHW -> NHWC is (B, R, S) = (N, C, HW),
 * KCRS -> KRSC is (K, C, RS); the way back swaps R and S. src and dst may
 * not overlap. */
void kb_cuda_relayout(kb_cuda *impl, const void *src, int src_bf16, void *dst, int dst_bf16,
                      long B, long R, long S, int transpose, int accumulate);

/* Carving scratch: each operand copy starts 256-byte aligned. */
static inline size_t kb_cuda_align256(size_t bytes) { return (bytes + 255) & ~(size_t)255; }

#endif
