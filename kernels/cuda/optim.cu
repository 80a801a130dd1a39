/* The optimizer step and the weights' mirrors.
 *
 * A mirror keeps the weights of a parameter buffer in the form the ops
 * read: convolutions as (Kp, R, S, Cp) in the math's type (the NHWC filter
 * cuDNN wants, padded as the feature maps are), linear layers as (O, I) in
 * bf16 -- in fp32 modes a linear layer reads the parameter itself, which is
 * its own mirror. So no op converts a weight per call.
 *
 * The update is one pass over the parameter buffer: Adam (kernels/optim.h's
 * per-element math, as the CPU), the teacher's EMA on its prefix with the
 * updated parameter, the gradient zeroed for the next step, and each
 * updated weight written into the mirrors. Blocks are dealt out over
 * regions of the buffer -- a weight, or the run of other parameters
 * between two weights -- so a thread knows its element's place in the
 * mirror without a search: one region per block, found by a binary search
 * over the regions' first blocks (a handful of steps, once per block). The
 * last region is the run after the last weight, to the end of the buffer:
 * its length is the update's n, known at the launch. */
#include <string.h>

#include "kernels/cuda/precision.h"
#include "kernels/optim.h"

#define UPDATE_THREADS 256
#define UPDATE_PER_BLOCK 2048 /* parameters per block */

/* A stretch of the parameter buffer, and where its elements go in the
 * mirror: kind 0 nowhere, 1 the same order (a linear weight), 2 a
 * convolution's (K, C, RS) to (Kp, RS, Cp). */
typedef struct region {
    long start, n;     /* parameter offset, elements */
    long moff;         /* mirror offset in elements */
    int kind, K, C, RS, Cp;
    long block0;       /* the region's first block in the update's grid */
} region;

struct kb_mirror {
    const float *params;
    void *buf;     /* device: the copies */
    int bf16;      /* their type */
    kb_precision mode;
    region *host;  /* the regions, and a device copy for the update kernel; */
    region *dev;   /* the last one, the tail after the last weight, has n 0 */
    int nreg;
    long blocks;   /* the update's grid over the regions but the tail */
    long end;      /* where the tail starts: the end of the last weight */
};

/* ---- kernels ---- */

static __device__ __forceinline__ int region_of(const region *r, int n, long block)
{
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (r[mid].block0 <= block)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

/* Element j of region r in the mirror. */
static __device__ __forceinline__ long mirror_index(const region &r, long j)
{
    if (r.kind == 1)
        return r.moff + j;
    const long rs = j % r.RS, kc = j / r.RS, c = kc % r.C, k = kc / r.C;
    return r.moff + (k * r.RS + rs) * r.Cp + c;
}

/* Element i's Adam step, its gradient zeroed; returns the new weight. */
static __device__ __forceinline__ float adam_step(const kb_adam_consts *k, float *p, float *g,
                                                  float *m, float *v, long i)
{
    float pi = p[i], mi = m[i], vi = v[i];
    kb_adam_elem(k, &pi, g[i], &mi, &vi);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
    g[i] = 0.0f;
    return pi;
}

__global__ void kb_update_kernel(float *p, float *g, float *m, float *v, long n,
                                 const kb_adam_consts *kp, float *xi, long nt,
                                 const float *tau_omt, const region *regs, int nreg,
                                 void *mir, void *tmir, int bf16)
{
    __shared__ region r;
    if (threadIdx.x == 0) {
        const int ri = region_of(regs, nreg, blockIdx.x);
        r = regs[ri];
        if (ri == nreg - 1) /* the tail: to the end of the buffer */
            r.n = n - r.start;
    }
    __syncthreads();
    const kb_adam_consts k = *kp;
    const float tau = xi ? tau_omt[0] : 0.0f, omt = xi ? tau_omt[1] : 0.0f;
    const long j0 = (blockIdx.x - r.block0) * (long)UPDATE_PER_BLOCK;
    for (long j = j0 + threadIdx.x; j < j0 + UPDATE_PER_BLOCK && j < r.n; j += blockDim.x) {
        const long i = r.start + j;
        const float pi = adam_step(&k, p, g, m, v, i);
        float ti = 0.0f;
        if (i < nt) {
            ti = kb_ema_elem(xi[i], pi, tau, omt);
            xi[i] = ti;
        }
        if (r.kind) {
            const long mo = mirror_index(r, j);
            kb_elem_set(mir, mo, pi, bf16);
            if (tmir && i < nt)
                kb_elem_set(tmir, mo, ti, bf16);
        }
    }
}

/* Without mirrors: a plain pass. */
__global__ void kb_update_plain_kernel(float *p, float *g, float *m, float *v, size_t n,
                                       const kb_adam_consts *kp, float *xi, size_t nt,
                                       const float *tau_omt)
{
    const kb_adam_consts k = *kp;
    const float tau = xi ? tau_omt[0] : 0.0f, omt = xi ? tau_omt[1] : 0.0f;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float pi = adam_step(&k, p, g, m, v, i);
        if (i < nt)
            xi[i] = kb_ema_elem(xi[i], pi, tau, omt);
    }
}

/* ---- mirrors ---- */

static void mirror_free(kb_cuda *impl, kb_mirror *mr)
{
    if (!mr)
        return;
    kb_cuda_release(impl, mr->buf);
    kb_cuda_release(impl, mr->dev);
    free(mr->host);
    free(mr);
}

static void cuda_mirror_free(kb_backend *be, kb_mirror *mr)
{
    mirror_free(kb_cuda_enter(be), mr);
}

/* Every copied weight written from the parameters. */
static void cuda_mirror_write(kb_backend *be, kb_mirror *mr)
{
    kb_cuda *impl = kb_cuda_enter(be);
    KB_CUDA_CHECK(mr->mode == impl->precision); /* made under another mode: another format */
    for (int i = 0; i < mr->nreg; i++) {
        const region *r = &mr->host[i];
        char *dst = (char *)mr->buf + (size_t)r->moff * (mr->bf16 ? 2 : 4);
        if (r->kind == 2)
            kb_cuda_weight_pack(impl, mr->params + r->start, r->K, r->C, r->RS,
                                kb_cuda_cpad(impl, r->K), r->Cp, dst, mr->bf16, 0);
        else if (r->kind == 1)
            kb_cuda_cast(impl, mr->params + r->start, 0, dst, mr->bf16, (size_t)r->n);
    }
}

static kb_mirror *cuda_mirror_create(kb_backend *be, const float *params, const kb_wseg *w,
                                     int nw)
{
    kb_cuda *impl = kb_cuda_enter(be);
    if (kb_cuda_capture_refuse(impl, "mirror_create inside a capture"))
        return NULL;
    kb_mirror *mr = (kb_mirror *)calloc(1, sizeof *mr);
    if (!mr)
        return NULL;
    mr->params = params;
    mr->mode = impl->precision;
    mr->bf16 = impl->precision == KB_PREC_BF16;
    const int es = mr->bf16 ? 2 : 4;
    /* the weights and the runs between them, in order */
    mr->host = (region *)calloc((size_t)2 * nw + 1, sizeof *mr->host);
    if (!mr->host) {
        free(mr);
        return NULL;
    }
    long at = 0, moff = 0, blocks = 0;
    for (int i = 0; i <= nw; i++) {
        const long start = i < nw ? (long)w[i].off : at;
        KB_CUDA_CHECK(start >= at); /* the weights in order, apart */
        if (start > at || i == nw) { /* a run of other parameters; the tail, its n at launch */
            region g = {};
            g.start = at;
            g.n = start - at;
            mr->host[mr->nreg++] = g;
        }
        if (i == nw)
            break;
        region r = {};
        const int conv = w[i].R > 0;
        r.start = start;
        r.K = w[i].K;
        r.C = w[i].C;
        r.RS = conv ? w[i].R * w[i].S : 1;
        r.n = (long)r.K * r.C * r.RS;
        r.kind = conv ? 2 : mr->bf16 ? 1 : 0; /* fp32 linear weights are read in place */
        r.Cp = conv ? kb_cuda_cpad(impl, r.C) : r.C;
        if (r.kind) {
            r.moff = moff;
            const long len = conv ? (long)kb_cuda_cpad(impl, r.K) * r.RS * r.Cp : r.n;
            moff += (long)(kb_cuda_align256((size_t)len * es) / es); /* aligned for cuDNN */
        }
        mr->host[mr->nreg++] = r;
        at = start + r.n;
    }
    for (int i = 0; i < mr->nreg; i++) {
        mr->host[i].block0 = blocks;
        blocks += (mr->host[i].n + UPDATE_PER_BLOCK - 1) / UPDATE_PER_BLOCK;
    }
    mr->blocks = blocks;
    mr->end = at;
    /* the padding stays zero: alloc zero-fills, and nothing writes it */
    mr->buf = be->alloc(be, moff ? (size_t)moff * es : 256);
    mr->dev = (region *)be->alloc(be, (size_t)mr->nreg * sizeof *mr->dev);
    if (!mr->buf || !mr->dev) {
        mirror_free(impl, mr);
        return NULL;
    }
    be->upload(be, mr->dev, mr->host, (size_t)mr->nreg * sizeof *mr->dev);
    cuda_mirror_write(be, mr);
    return mr;
}

static const void *cuda_mirror_at(kb_backend *be, const kb_mirror *mr, size_t off)
{
    (void)be;
    int lo = 0, hi = mr->nreg - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (mr->host[mid].start <= (long)off)
            lo = mid;
        else
            hi = mid - 1;
    }
    const region *r = &mr->host[lo];
    KB_CUDA_CHECK(r->start == (long)off && (r->K > 0)); /* a weight's start */
    if (r->kind == 0)
        return mr->params + off;
    return (const char *)mr->buf + (size_t)r->moff * (mr->bf16 ? 2 : 4);
}

/* ---- the update ---- */

static void cuda_update(kb_backend *be, const kb_update *up)
{
    kb_cuda *impl = kb_cuda_enter(be);
    /* a copy: the emulator evaluates a captured launch's arguments later */
    const kb_update U = *up, *u = &U;
    if (!u->n)
        return;
    const size_t nt = u->teacher ? u->nteacher : 0;
    const kb_mirror *mr = u->mirror;
    /* p, g, m, v read and written, the teacher read and written */
    const double bytes = 32.0 * u->n + 8.0 * nt;
    if (!mr) {
        KB_CUDA_BYTES(bytes);
        kb_update_plain_kernel<<<kb_cuda_blocks(impl, u->n, UPDATE_THREADS), UPDATE_THREADS, 0,
                                 impl->stream>>>(U.params, U.grads, U.adam_m, U.adam_v, U.n, U.k,
                                                 U.teacher, nt, U.tau_omt);
        KB_CUDA_LAUNCHED();
        return;
    }
    KB_CUDA_CHECK(mr->params == u->params && mr->mode == impl->precision && mr->blocks > 0);
    KB_CUDA_CHECK((long)u->n >= mr->end); /* the weights lie in the buffer */
    KB_CUDA_CHECK(!u->tmirror || (u->tmirror->params == u->teacher && u->tmirror->bf16 == mr->bf16));
    /* and the mirrors' weights written */
    double wn = 0, twn = 0;
    for (int i = 0; i < mr->nreg; i++)
        if (mr->host[i].kind) {
            wn += (double)mr->host[i].n;
            twn += mr->host[i].start < (long)nt ? (double)mr->host[i].n : 0;
        }
    KB_CUDA_BYTES(bytes + (mr->bf16 ? 2 : 4) * (wn + (u->tmirror ? twn : 0)));
    const region *regs = mr->dev;
    void *mbuf = mr->buf, *tbuf = u->tmirror ? u->tmirror->buf : NULL;
    const int nreg = mr->nreg, bf16 = mr->bf16;
    const long blocks = mr->blocks + ((long)u->n - mr->end + UPDATE_PER_BLOCK - 1) / UPDATE_PER_BLOCK;
    kb_update_kernel<<<(unsigned)blocks, UPDATE_THREADS, 0, impl->stream>>>(
        U.params, U.grads, U.adam_m, U.adam_v, (long)U.n, U.k, U.teacher, (long)nt, U.tau_omt,
        regs, nreg, mbuf, tbuf, bf16);
    KB_CUDA_LAUNCHED();
}

void kb_cuda_optim_init(kb_backend *be)
{
    be->mirror_create = cuda_mirror_create;
    be->mirror_free = cuda_mirror_free;
    be->mirror_write = cuda_mirror_write;
    be->mirror_at = cuda_mirror_at;
    be->update = cuda_update;
}
