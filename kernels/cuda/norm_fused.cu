/* Batch norms that read their tensors once (kb_bn on feature maps, training
 * mode, statistics of the batch itself): one cooperative launch whose
 * blocks keep their slice of the tensors in shared memory while the
 * statistics are made, instead of norm.cu's two launches that each read
 * them from DRAM.
 *
 * Grid (S, G), all blocks resident at once: block (s, g) loads slice s of
 * group g's pixels -- x forward; x and g (dy through the ReLU's mask)
 * backward -- into its shared memory and writes its per-channel sums, the
 * same sums in the same double arithmetic as norm.cu's first launch; after
 * a grid barrier block (0, 0) makes the coefficients with norm.h's
 * bn_finish (saved statistics, running statistics, dgamma/dbeta once);
 * after a second barrier every block applies them to the values it holds:
 * y = relu(a x + b + res) forward, dx = k (g - mdy - xhat mdyx) and the
 * residual's gradient g backward, as norm.cu's second launch does.
 *
 * Used where the slices fit: every block's share of the tensors within the
 * shared memory a block may hold (on an H100, 227 KB x 132: the
 * ResNet-18 feature maps of the paper's step up to 96x96 batch 256 forward,
 * and from layer2 on backward, where two tensors are kept); elsewhere, and
 * with RW_CUDA_BN_FUSE=0, norm.cu's two launches. The sums are grouped by
 * slice, and the slices are fewer here, so the two paths agree to the
 * last bits of a double sum, not bit for bit; each is deterministic. */
#include <string.h>

#include "kernels/cuda/norm.h"

#define BNF_THREADS 512
#define BNF_V 8 /* values in a 16-byte vector, at most */
/* Over the V values of a vector: unrolled to BNF_V, so that the per-value
 * arrays stay in registers. */
#define BNF_EACH(k, V) _Pragma("unroll") for (int k = 0; k < BNF_V; k++) if (k < (V))
/* the kernels' static shared memory (red) and some slack */
#define BNF_STATIC_SMEM (sizeof(double2) * BNF_THREADS + 256)

/* The launch: S slices per group, smem bytes per block. */
struct bnf_grid {
    int S;
    size_t smem;
};

/* The pixels [p0, p1) of slice blockIdx.x of group blockIdx.y. */
static __device__ void bnf_slice(const kb_bn_shape &sh, long *p0, long *p1)
{
    const long per = (sh.M + sh.S - 1) / sh.S;
    const long end = ((long)blockIdx.y + 1) * sh.M;
    *p0 = (long)blockIdx.y * sh.M + blockIdx.x * per;
    *p1 = *p0 + per < end ? *p0 + per : end;
    if (*p0 > end)
        *p0 = end;
}

/* The block's sums (s1, s2 per channel of its thread's vector) added over
 * the threads of each channel, in thread order, into part (G, S, C). */
static __device__ void bnf_block_sums(const kb_bn_shape &sh, const double *s1, const double *s2,
                                      int V, int TCv, int TP, double2 *part, double2 *red)
{
    const int t = threadIdx.x, vc = t % TCv, tp = t / TCv;
    BNF_EACH(k, V) {
        red[t] = make_double2(s1[k], s2[k]);
        __syncthreads();
        const int c = vc * V + k;
        if (tp == 0 && c < sh.C) {
            double2 s = red[vc];
            for (int j = 1; j < TP; j++) {
                s.x += red[vc + j * TCv].x;
                s.y += red[vc + j * TCv].y;
            }
            part[((size_t)blockIdx.y * sh.S + blockIdx.x) * sh.C + c] = s;
        }
        __syncthreads();
    }
}

/* Forward: y = relu?(a x + b + res), the padding 0. */
__global__ void __launch_bounds__(BNF_THREADS)
    kb_bn_fused_fwd_kernel(kb_bn_shape sh, kb_bn_args ar, const void *x, const void *res, void *y,
                           double2 *part, kb_bn_coef *coef, unsigned *bar)
{
    __shared__ double2 red[BNF_THREADS];
    const int V = sh.bf16 ? 8 : 4, TCv = sh.ld / V, TP = blockDim.x / TCv;
    const int vc = threadIdx.x % TCv, tp = threadIdx.x / TCv, g = blockIdx.y;
    const unsigned blocks = gridDim.x * gridDim.y;
    kb_v16 *keep = (kb_v16 *)kb_dyn_smem();
    long p0, p1;
    bnf_slice(sh, &p0, &p1);
    double s1[BNF_V], s2[BNF_V];
    BNF_EACH(k, V)
        s1[k] = s2[k] = 0.0;
    if (tp < TP)
        for (long p = p0 + tp; p < p1; p += TP) {
            const kb_v16 v = ((const kb_v16 *)x)[(size_t)p * TCv + vc];
            keep[(size_t)(p - p0) * TCv + vc] = v;
            float f[BNF_V];
            kb_v16_get(v, sh.bf16, f);
            BNF_EACH(k, V) {
                const double xv = f[k];
                s1[k] += xv;
                s2[k] += xv * xv;
            }
        }
    bnf_block_sums(sh, s1, s2, V, TCv, TP, part, red);
    kb_grid_sync(bar, 1, blocks);
    if (blockIdx.x == 0 && blockIdx.y == 0)
        bn_finish(BN_FWD, sh, ar, part, coef);
    kb_grid_sync(bar, 2, blocks);
    float a[BNF_V], b[BNF_V];
    BNF_EACH(k, V) {
        const int c = vc * V + k;
        a[k] = b[k] = 0.0f;
        if (c < sh.C) {
            a[k] = coef[(size_t)g * sh.C + c].a;
            b[k] = coef[(size_t)g * sh.C + c].b;
        }
    }
    if (tp < TP)
        for (long p = p0 + tp; p < p1; p += TP) {
            const size_t v = (size_t)p * TCv + vc;
            float xv[BNF_V], rv[BNF_V], out[BNF_V];
            kb_v16_get(keep[(size_t)(p - p0) * TCv + vc], sh.bf16, xv);
            if (res)
                kb_v16_get(((const kb_v16 *)res)[v], sh.bf16, rv);
            BNF_EACH(k, V) {
                if (vc * V + k >= sh.C) {
                    out[k] = 0.0f;
                    continue;
                }
                float t = __fmaf_rn(a[k], xv[k], b[k]);
                if (res)
                    t = t + rv[k];
                out[k] = sh.relu && !(t > 0.0f) ? 0.0f : t;
            }
            ((kb_v16 *)y)[v] = kb_v16_make(out, sh.bf16);
        }
    kb_grid_done(bar, 2);
}

/* g of one vector: dy where y > 0 -- or, y NULL, where the forward's
 * a x + b > 0 -- (relu), or dy; 0 in the padding. */
static __device__ void bnf_grad(const kb_bn_shape &sh, const void *y, const void *dy, size_t v,
                                int c0, const float *xf, const float *ca, const float *cb,
                                float *gf)
{
    const int V = sh.bf16 ? 8 : 4;
    float df[BNF_V], yf[BNF_V];
    kb_v16_get(((const kb_v16 *)dy)[v], sh.bf16, df);
    if (sh.relu && y)
        kb_v16_get(((const kb_v16 *)y)[v], sh.bf16, yf);
    BNF_EACH(k, V) {
        const int on = !sh.relu || (y ? yf[k] > 0.0f : __fmaf_rn(ca[k], xf[k], cb[k]) > 0.0f);
        gf[k] = c0 + k < sh.C && on ? df[k] : 0.0f;
    }
}

/* Backward: g as bnf_grad; dx = k (g - mdy - xhat mdyx); dres = g; the
 * padding 0. Shared memory: the slice's x, then, keep_g, its g; without
 * keep_g (a slice of two tensors would not fit) dy (and y) are read
 * again for g. */
__global__ void __launch_bounds__(BNF_THREADS)
    kb_bn_fused_bwd_kernel(kb_bn_shape sh, kb_bn_args ar, const void *x, const void *y,
                           const void *dy, void *dx, void *dres, double2 *part, kb_bn_coef *coef,
                           unsigned *bar, int keep_g)
{
    __shared__ double2 red[BNF_THREADS];
    const int V = sh.bf16 ? 8 : 4, TCv = sh.ld / V, TP = blockDim.x / TCv;
    const int vc = threadIdx.x % TCv, tp = threadIdx.x / TCv, g = blockIdx.y;
    const unsigned blocks = gridDim.x * gridDim.y;
    long p0, p1;
    bnf_slice(sh, &p0, &p1);
    kb_v16 *keep_x = (kb_v16 *)kb_dyn_smem();
    kb_v16 *keep_gv = keep_x + (size_t)((sh.M + sh.S - 1) / sh.S) * TCv;
    /* the forward's a and b, for the mask without y */
    float ca[BNF_V], cb[BNF_V];
    double s1[BNF_V], s2[BNF_V];
    BNF_EACH(k, V) {
        const int c = vc * V + k;
        s1[k] = s2[k] = 0.0;
        ca[k] = cb[k] = 0.0f;
        if (sh.relu && !y && c < sh.C) {
            const size_t gc = (size_t)g * sh.C + c;
            kb_bn_train_coef(ar.gamma[c], ar.beta[c], ar.save_mean[gc], ar.save_invstd[gc],
                             &ca[k], &cb[k]);
        }
    }
    if (tp < TP)
        for (long p = p0 + tp; p < p1; p += TP) {
            const size_t v = (size_t)p * TCv + vc, l = (size_t)(p - p0) * TCv + vc;
            const kb_v16 xv16 = ((const kb_v16 *)x)[v];
            float xf[BNF_V], gf[BNF_V];
            kb_v16_get(xv16, sh.bf16, xf);
            bnf_grad(sh, y, dy, v, vc * V, xf, ca, cb, gf);
            BNF_EACH(k, V) {
                const double gv = gf[k];
                s1[k] += gv;
                s2[k] += gv * (double)xf[k];
            }
            keep_x[l] = xv16;
            if (keep_g)
                keep_gv[l] = kb_v16_make(gf, sh.bf16); /* dy's own values or 0: exact */
        }
    bnf_block_sums(sh, s1, s2, V, TCv, TP, part, red);
    kb_grid_sync(bar, 1, blocks);
    if (blockIdx.x == 0 && blockIdx.y == 0)
        bn_finish(BN_BWD, sh, ar, part, coef);
    kb_grid_sync(bar, 2, blocks);
    if (tp < TP)
        for (long p = p0 + tp; p < p1; p += TP) {
            const size_t v = (size_t)p * TCv + vc, l = (size_t)(p - p0) * TCv + vc;
            float xv[BNF_V], gv[BNF_V], ox[BNF_V];
            kb_v16_get(keep_x[l], sh.bf16, xv);
            if (keep_g)
                kb_v16_get(keep_gv[l], sh.bf16, gv);
            else
                bnf_grad(sh, y, dy, v, vc * V, xv, ca, cb, gv);
            BNF_EACH(k, V) {
                if (vc * V + k >= sh.C) {
                    ox[k] = 0.0f;
                    continue;
                }
                const kb_bn_coef cf = coef[(size_t)g * sh.C + vc * V + k];
                const float xh = (xv[k] - cf.mean) * cf.invstd;
                ox[k] = cf.k * (gv[k] - cf.mdy - xh * cf.mdyx);
            }
            ((kb_v16 *)dx)[v] = kb_v16_make(ox, sh.bf16);
            if (dres)
                ((kb_v16 *)dres)[v] = kb_v16_make(gv, sh.bf16);
        }
    kb_grid_done(bar, 2);
}

/* ---- launchers ---- */

/* The grid that keeps `tensors` slices of sh's shape in shared memory, two
 * blocks a multiprocessor if they fit, else one; 0: none fits (or fusing
 * is off), use the two launches. */
static int bnf_plan(kb_cuda *impl, const kb_bn_shape &sh, int tensors, int bwd, bnf_grid *out)
{
    const char *e = getenv("RW_CUDA_BN_FUSE");
    if (!impl->coop || (e && strcmp(e, "0") == 0) || sh.pool.k)
        return 0;
    const int V = sh.bf16 ? 8 : 4, eb = sh.bf16 ? 2 : 4;
    if (sh.ld % V != 0 || sh.ld / V > BNF_THREADS)
        return 0;
    for (int per_sm = 2; per_sm >= 1; per_sm--) {
        long S = (long)impl->sms * per_sm / sh.G;
        if (S < 1)
            continue;
        if (S > sh.M)
            S = sh.M;
        const long per = (sh.M + S - 1) / S;
        const size_t smem = (size_t)per * sh.ld * eb * tensors;
        if (smem + BNF_STATIC_SMEM > impl->smem_block ||
            per_sm * (smem + BNF_STATIC_SMEM + 1024) > impl->smem_sm)
            continue;
        int fit = 0;
        if (bwd)
            KB_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fit, kb_bn_fused_bwd_kernel,
                                                                  BNF_THREADS, smem));
        else
            KB_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fit, kb_bn_fused_fwd_kernel,
                                                                  BNF_THREADS, smem));
        if (fit < per_sm)
            continue;
        out->S = (int)S;
        out->smem = smem;
        return 1;
    }
    return 0;
}

static kb_bn_coef *bnf_scratch(kb_cuda *impl, const kb_bn_shape &sh, double2 **part)
{
    const size_t pb = ((sizeof(double2) * (size_t)sh.G * sh.S * sh.C + 255) / 256) * 256;
    char *s = (char *)kb_cuda_scratch(impl, pb + sizeof(kb_bn_coef) * (size_t)sh.G * sh.C);
    *part = (double2 *)s;
    return (kb_bn_coef *)(s + pb);
}

/* The tensors' bytes once over, the partials written and read once, the
 * per-channel state. */
static double bnf_bytes(const kb_bn_shape &sh, int passes)
{
    return (double)sh.M * sh.G * sh.ld * (sh.bf16 ? 2 : 4) * passes +
           2.0 * sizeof(double2) * sh.G * sh.S * sh.C + 64.0 * sh.G * sh.C;
}

int kb_cuda_bn_fused_forward(kb_cuda *impl, kb_bn_shape sh, const kb_bn_args &ar, const void *x,
                             const void *res, void *y)
{
    bnf_grid gr;
    if (!bnf_plan(impl, sh, 1, 0, &gr))
        return 0;
    sh.S = gr.S;
    double2 *part;
    kb_bn_coef *coef = bnf_scratch(impl, sh, &part);
    KB_CUDA_BYTES(bnf_bytes(sh, 2 + (res != NULL)));
    KB_CUDA_COOP_LAUNCH(kb_bn_fused_fwd_kernel, dim3(sh.S, sh.G), BNF_THREADS, gr.smem,
                        impl->stream, sh, ar, x, res, y, part, coef, impl->ticket);
    KB_CUDA_LAUNCHED();
    return 1;
}

int kb_cuda_bn_fused_backward(kb_cuda *impl, kb_bn_shape sh, const kb_bn_args &ar, const void *x,
                              const void *y, const void *dy, void *dx, void *dres)
{
    bnf_grid gr;
    int keep_g = 1;
    if (!bnf_plan(impl, sh, 2, 1, &gr)) {
        keep_g = 0;
        if (!bnf_plan(impl, sh, 1, 1, &gr))
            return 0;
    }
    sh.S = gr.S;
    double2 *part;
    kb_bn_coef *coef = bnf_scratch(impl, sh, &part);
    /* x, dy (and y) read -- dy (and y) twice without keep_g --, dx (and dres) written */
    const int reads = 1 + (1 + (sh.relu && y)) * (keep_g ? 1 : 2);
    KB_CUDA_BYTES(bnf_bytes(sh, reads + 1 + (dres != NULL)));
    KB_CUDA_COOP_LAUNCH(kb_bn_fused_bwd_kernel, dim3(sh.S, sh.G), BNF_THREADS, gr.smem,
                        impl->stream, sh, ar, x, y, dy, dx, dres, part, coef, impl->ticket,
                        keep_g);
    KB_CUDA_LAUNCHED();
    return 1;
}

void kb_cuda_norm_fused_init(kb_cuda *impl)
{
    int coop = 0, optin = 0, per_sm = 0;
    if (cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, impl->device) != cudaSuccess ||
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, impl->device) !=
            cudaSuccess ||
        cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor,
                               impl->device) != cudaSuccess ||
        optin <= (int)BNF_STATIC_SMEM) {
        impl->coop = 0;
        return;
    }
    const int dyn = optin - (int)BNF_STATIC_SMEM;
    if (cudaFuncSetAttribute(kb_bn_fused_fwd_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             dyn) != cudaSuccess ||
        cudaFuncSetAttribute(kb_bn_fused_bwd_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             dyn) != cudaSuccess) {
        impl->coop = 0;
        return;
    }
    impl->coop = coop;
    impl->smem_block = (size_t)dyn + BNF_STATIC_SMEM;
    impl->smem_sm = (size_t)per_sm;
}
