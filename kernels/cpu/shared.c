/* What the CPU backend's op files share: the thread counts of OpenMP and
 * OpenBLAS, the convolutions' arena, bf16 rounding (kb_cpu_emulate_rounding).
 * The bottom of kernels/cpu: it calls nothing of the others. */
#include <omp.h>
#include <stdlib.h>

#include "kernels/cpu/cpu.h"

/* From OpenBLAS; declared here because cblas.h drags in <complex.h>, whose
 * macro I collides with the shape letter I in backend.h. */
void openblas_set_num_threads(int num_threads);
int openblas_get_parallel(void); /* 0 single-threaded, 1 pthreads, 2 OpenMP */

/* OpenBLAS's thread count is process-wide; remember what we last set so two
 * backends with different counts each get theirs without a call per gemm. */
static int blas_threads;

void kb_cpu_set_threads(kb_cpu *impl)
{
    if (omp_get_max_threads() != impl->threads)
        omp_set_num_threads(impl->threads);
}

void kb_cpu_set_blas_threads(kb_cpu *impl)
{
    if (blas_threads != impl->threads) {
        openblas_set_num_threads(impl->threads);
        blas_threads = impl->threads;
    }
}

int kb_cpu_arena_reserve(kb_cpu *impl, size_t bytes)
{
    if (bytes <= impl->arena_bytes)
        return 0;
    void *p = NULL;
    size_t rounded = (bytes + KB_CPU_ALIGN - 1) / KB_CPU_ALIGN * KB_CPU_ALIGN;
    if (posix_memalign(&p, KB_CPU_ALIGN, rounded) != 0)
        return -1;
    free(impl->arena);
    impl->arena = p;
    impl->arena_bytes = rounded;
    return 0;
}

void *kb_cpu_tmp(kb_cpu *impl, size_t bytes)
{
    if (bytes <= impl->tmp_bytes)
        return impl->tmp;
    void *p = NULL;
    size_t rounded = (bytes + KB_CPU_ALIGN - 1) / KB_CPU_ALIGN * KB_CPU_ALIGN;
    if (posix_memalign(&p, KB_CPU_ALIGN, rounded) != 0)
        return NULL;
    free(impl->tmp);
    impl->tmp = p;
    impl->tmp_bytes = rounded;
    return p;
}

float *kb_cpu_bf16_copy(kb_cpu *impl, const float *src, size_t n)
{
    float *d = malloc((n ? n : 1) * sizeof(float));
    if (!d)
        return NULL;
    int nt = impl->threads;
#pragma omp parallel for num_threads(nt) schedule(static) if (n >= KB_CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++)
        d[i] = kb_cpu_bf16(src[i]);
    return d;
}

void kb_cpu_bf16_round(kb_cpu *impl, float *p, size_t n)
{
    int nt = impl->threads;
#pragma omp parallel for num_threads(nt) schedule(static) if (n >= KB_CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++)
        p[i] = kb_cpu_bf16(p[i]);
}

