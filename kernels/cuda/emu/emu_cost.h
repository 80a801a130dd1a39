/* What the emulated stream ran (kernels/cuda/emu), for tools/step-cost: every
 * stream op (a kernel launch, a cuDNN convolution, a cuBLAS GEMM, a memset, a
 * memcpy) is counted by name when it runs, eagerly or as part of a launched
 * graph, with the DRAM bytes it reads plus writes: a kernel's as its
 * launcher declared them (KB_CUDA_BYTES, kernels/cuda/cuda.h), a library
 * call's as the stand-in computes them from its descriptors and arguments.
 * Plain C, so that a C driver links it. */
#ifndef RUNAWAY_KERNELS_CUDA_EMU_EMU_COST_H
#define RUNAWAY_KERNELS_CUDA_EMU_EMU_COST_H

#ifdef __cplusplus
extern "C" {
#endif

/* on != 0: dry mode, stream ops (and graph launches) are counted but not
 * run, so a full-size step costs only its host work; device memory then
 * holds whatever it held, and downloads bring back nothing. Set it after
 * the backend is created (its probe kernel must run). */
void emu_dry(int on);

typedef struct emu_cost {
    const char *name; /* the kernel or library call; valid until the next reset */
    long calls;
    double bytes;     /* declared bytes summed over the calls */
    long undeclared;  /* kernel launches whose launcher declared no bytes */
} emu_cost;

/* Forgets every count. */
void emu_cost_reset(void);
/* Copies up to max counts, sorted by name, into out; returns how many
 * names there are. */
int emu_cost_read(emu_cost *out, int max);

#ifdef __cplusplus
}
#endif

#endif
