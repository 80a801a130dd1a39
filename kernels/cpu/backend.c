/* The CPU backend: the op table, memory, elementwise ops, create/destroy.
 * Convolutions run on oneDNN (conv2d.c), linear layers on OpenBLAS (ops.c),
 * everything else is plain C with OpenMP. Host memory is backend memory. */
#include <omp.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "kernels/cpu/cpu.h"

/* From OpenBLAS (see shared.c). */
int openblas_get_parallel(void); /* 0 single-threaded, 1 pthreads, 2 OpenMP */

static void cpu_destroy(kb_backend *be)
{
    kb_cpu *impl = kb_cpu_of(be);
    if (impl->stream)
        dnnl_stream_destroy(impl->stream);
    if (impl->engine)
        dnnl_engine_destroy(impl->engine);
    free(impl->arena);
    free(impl->tmp);
    free(impl);
    free(be);
}

/* ---- memory ---- */

static void *cpu_alloc(kb_backend *be, size_t bytes)
{
    (void)be;
    void *p = NULL;
    size_t rounded = (bytes + KB_CPU_ALIGN - 1) / KB_CPU_ALIGN * KB_CPU_ALIGN;
    if (rounded == 0)
        rounded = KB_CPU_ALIGN;
    if (posix_memalign(&p, KB_CPU_ALIGN, rounded) != 0)
        return NULL;
    memset(p, 0, rounded);
    return p;
}

static void cpu_free(kb_backend *be, void *p)
{
    (void)be;
    free(p);
}

static void cpu_upload(kb_backend *be, void *dst, const void *src, size_t bytes)
{
    (void)be;
    if (bytes)
        memcpy(dst, src, bytes);
}

static void cpu_copy(kb_backend *be, void *dst, const void *src, size_t bytes)
{
    (void)be;
    if (bytes && dst != src)
        memmove(dst, src, bytes);
}

static void cpu_sync(kb_backend *be) { (void)be; }

/* Ops run in the caller, so a stamp is the moment of its call. */
struct kb_stamp {
    struct timespec t;
};

static kb_stamp *cpu_stamp_create(kb_backend *be)
{
    (void)be;
    return calloc(1, sizeof(kb_stamp));
}

static void cpu_stamp_record(kb_backend *be, kb_stamp *s)
{
    (void)be;
    clock_gettime(CLOCK_MONOTONIC, &s->t);
}

static double cpu_stamp_ms(kb_backend *be, const kb_stamp *a, const kb_stamp *b)
{
    (void)be;
    return (double)(b->t.tv_sec - a->t.tv_sec) * 1e3 + (double)(b->t.tv_nsec - a->t.tv_nsec) / 1e6;
}

static void cpu_stamp_free(kb_backend *be, kb_stamp *s)
{
    (void)be;
    free(s);
}

/* ---- elementwise over n floats ---- */

static void cpu_fill(kb_backend *be, float *x, float v, size_t n)
{
    int nt = kb_cpu_of(be)->threads;
#pragma omp parallel for num_threads(nt) schedule(static) if (n >= KB_CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++)
        x[i] = v;
}

static void cpu_scale(kb_backend *be, float *x, float a, size_t n)
{
    int nt = kb_cpu_of(be)->threads;
#pragma omp parallel for num_threads(nt) schedule(static) if (n >= KB_CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++)
        x[i] *= a;
}

/* ---- feature maps: fp32 NCHW, the host's own layout ---- */

static size_t cpu_fmap_bytes(kb_backend *be, int N, int C, int H, int W)
{
    (void)be;
    return (size_t)N * C * H * W * sizeof(float);
}

static void cpu_fmap_upload(kb_backend *be, void *dst, const float *src, int N, int C, int H,
                            int W)
{
    kb_cpu *impl = kb_cpu_of(be);
    size_t n = (size_t)N * C * H * W;
    if (dst != (void *)src)
        memcpy(dst, src, n * sizeof(float));
    if (impl->round_bf16) /* the CUDA backend's bf16 feature maps */
        kb_cpu_bf16_round(impl, dst, n);
}

static void cpu_fmap_download(kb_backend *be, float *dst, const void *src, int N, int C, int H,
                              int W)
{
    (void)be;
    if ((const void *)dst != src)
        memcpy(dst, src, (size_t)N * C * H * W * sizeof(float));
}

static void cpu_ring_push(kb_backend *be, float *ring, int slots, const float *src, int n,
                          uint32_t *counter)
{
    (void)be;
    memcpy(ring + (size_t)(*counter % (uint32_t)slots) * n, src, (size_t)n * sizeof(float));
    ++*counter;
}

/* The host's memory from /proc/meminfo: MemAvailable (what can be had
 * without swapping) rather than MemFree, which leaves out the page cache.
 * Both stay 0 (unknown) where the file or a line is missing. */
static void cpu_host_memory(size_t *free_bytes, size_t *total_bytes)
{
    *free_bytes = *total_bytes = 0;
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f)
        return;
    char line[128];
    unsigned long long kib;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "MemTotal: %llu kB", &kib) == 1)
            *total_bytes = (size_t)kib * 1024;
        else if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1)
            *free_bytes = (size_t)kib * 1024;
    }
    fclose(f);
}

static void cpu_device_info(kb_backend *be, char *name, size_t len, size_t *free_bytes,
                            size_t *total_bytes)
{
    int n = kb_cpu_of(be)->threads;
    if (len)
        snprintf(name, len, "CPU (%d thread%s)", n, n == 1 ? "" : "s");
    cpu_host_memory(free_bytes, total_bytes);
}

/* oneDNN's fp32 convolutions and OpenBLAS's sgemm: fp32 whatever is asked. */
static kb_precision cpu_set_precision(kb_backend *be, kb_precision p)
{
    (void)be;
    (void)p;
    return KB_PREC_FP32;
}

kb_backend *kb_cpu_create(int threads)
{
    if (threads <= 0)
        threads = omp_get_num_procs();
    kb_backend *be = calloc(1, sizeof *be);
    kb_cpu *impl = calloc(1, sizeof *impl);
    if (!be || !impl) {
        free(be);
        free(impl);
        return NULL;
    }
    impl->threads = threads;
    /* meson links OpenBLAS's OpenMP build; a pthreads one loaded instead
     * (LD_LIBRARY_PATH, a build without it) spins against OpenMP. */
    static int warned;
    if (threads > 1 && openblas_get_parallel() == 1 && !warned) {
        warned = 1;
        fprintf(stderr, "note: OpenBLAS is its pthreads build, whose threads contend with "
                        "OpenMP's: linear layers run slower (install libopenblas-openmp-dev "
                        "and rebuild)\n");
    }
    be->name = "cpu";
    be->impl = impl;
    kb_cpu_set_threads(impl);
    kb_cpu_set_blas_threads(impl);

    dnnl_status_t st = dnnl_engine_create(&impl->engine, dnnl_cpu, 0);
    if (st == dnnl_success)
        st = dnnl_stream_create(&impl->stream, impl->engine, dnnl_stream_default_flags);
    if (st != dnnl_success) {
        fprintf(stderr, "kb_cpu_create: oneDNN engine/stream: dnnl status %d\n", (int)st);
        cpu_destroy(be);
        return NULL;
    }

    be->destroy = cpu_destroy;
    be->alloc = cpu_alloc;
    be->free = cpu_free;
    be->upload = cpu_upload;
    be->download = cpu_upload; /* host to host either way */
    be->copy = cpu_copy;
    be->sync = cpu_sync;
    be->set_precision = cpu_set_precision;
    be->device_info = cpu_device_info;
    be->stamp_create = cpu_stamp_create;
    be->stamp_record = cpu_stamp_record;
    be->stamp_ms = cpu_stamp_ms;
    be->stamp_free = cpu_stamp_free;
    be->fill = cpu_fill;
    be->scale = cpu_scale;
    be->fmap_bytes = cpu_fmap_bytes;
    be->fmap_upload = cpu_fmap_upload;
    be->fmap_download = cpu_fmap_download;
    be->ring_push = cpu_ring_push;
    kb_cpu_conv_init(be);
    kb_cpu_norm_init(be);
    kb_cpu_ops_init(be);
    kb_cpu_pool_init(be);
    kb_cpu_loss_init(be);
    return be;
}
