/* BYOL's T1/T2 views on the GPU: one block per sample walks kernels/
 * augment.h's per-pixel functions over the view in the passes the CPU
 * renderer (worker/augment.c) uses: sample + jitter up to contrast (and the
 * mean gray level), contrast onwards + grayscale, separable blur with
 * reflect padding (the same taps in the same order), solarize + normalize.
 * The view lives in fp32 planes in scratch between passes (with the blur's
 * intermediate); the last pass writes it into the feature map the first
 * convolution reads (NHWC in the math's type, channels padded: cuda.h).
 * Both views of a batch in one launch, one block per sample and view. */
#include <string.h>

#include "kernels/augment.h"
#include "kernels/cuda/cuda.h"
#include "kernels/cuda_augment.h"

#define AUG_THREADS 256

/* ---- kernels ---- */

__global__ void kb_aug_kernel(const uint8_t *src /* (count,3,H,W), or (n,3,H,W) staged */,
                              int W, int H, int staged,
                              const uint32_t *keys /* epoch, then (n) indices */, int n,
                              uint64_t seed, int view0, int view1, int S, float3 mean,
                              float3 stdv, void *out /* (nviews n, S, S, Cp) */, int Cp,
                              int bf16, float *work /* (nviews n, 4, S, S) */)
{
    __shared__ rw_aug_params p;
    __shared__ float w[RW_AUG_BLUR_MAX_TAPS];
    __shared__ int taps;
    __shared__ double sh[AUG_THREADS / 32];
    const uint32_t epoch = keys[0];
    const int k = (int)(blockIdx.x % n);
    const int i = (int)keys[1 + k]; /* the sample: its draw, and its row unless staged */
    const int view = blockIdx.x < (unsigned)n ? view0 : view1;
    if (threadIdx.x == 0) {
        if (view < 0) { /* the identity view (rw_image_plain) */
            memset(&p, 0, sizeof p);
            p.crop_w = W;
            p.crop_h = H;
            for (int k = 0; k < 4; k++)
                p.order[k] = k;
        } else {
            rw_aug_draw(seed, epoch, (uint32_t)i, view, W, H, &p);
        }
        taps = 0;
        if (p.blur) {
            taps = rw_aug_blur_taps(S);
            rw_aug_blur_kernel(p.sigma, taps, w);
        }
    }
    __syncthreads();

    const uint8_t *img = src + (size_t)(staged ? k : i) * 3 * W * H;
    const int P = S * S;
    float *o = work + (size_t)blockIdx.x * 4 * P; /* the view's three planes */
    float *scr = o + 3 * P;                       /* the blur's rows */
    const int kc = rw_aug_contrast_step(&p);

    /* pass 1: crop + resize + flip, jitter up to contrast, the gray sum */
    double gs = 0.0;
    for (int q = threadIdx.x; q < P; q += blockDim.x) {
        int oy = q / S, ox = q - oy * S;
        float c[3];
        rw_aug_sample(img, W, H, &p, S, ox, oy, c);
        rw_aug_jitter_steps(&p, c, 0, kc, 0.0f);
        o[q] = c[0];
        o[P + q] = c[1];
        o[2 * P + q] = c[2];
        gs += rw_aug_gray(c);
    }
    gs = kb_cuda_block_sum(gs, sh);

    /* pass 2: contrast and the steps after it, grayscale (each thread
     * rereads only the pixels it wrote: no barrier needed before) */
    if (kc < 4 || p.gray) {
        const float gmean = (float)(gs / (double)P);
        for (int q = threadIdx.x; q < P; q += blockDim.x) {
            float c[3] = {o[q], o[P + q], o[2 * P + q]};
            rw_aug_jitter_steps(&p, c, kc, 4, gmean);
            if (p.gray)
                rw_aug_grayscale(c);
            o[q] = c[0];
            o[P + q] = c[1];
            o[2 * P + q] = c[2];
        }
    }

    /* blur: rows into scratch, then columns back; neighbours are other
     * threads' pixels, so a barrier before each pass */
    if (taps) {
        const int r = taps / 2;
        for (int ch = 0; ch < 3; ch++) {
            float *pl = o + (size_t)ch * P;
            __syncthreads();
            for (int q = threadIdx.x; q < P; q += blockDim.x) {
                int y = q / S, x = q - y * S;
                float acc = 0.0f;
                for (int k = 0; k < taps; k++)
                    acc += w[k] * pl[y * S + rw_aug_reflect(x + k - r, S)];
                scr[q] = acc;
            }
            __syncthreads();
            for (int q = threadIdx.x; q < P; q += blockDim.x) {
                int y = q / S, x = q - y * S;
                float acc = 0.0f;
                for (int k = 0; k < taps; k++)
                    acc += w[k] * scr[rw_aug_reflect(y + k - r, S) * S + x];
                pl[q] = acc;
            }
        }
        __syncthreads();
    }

    /* pass 3: solarize, normalize (own pixels again), into the feature map */
    const float m3[3] = {mean.x, mean.y, mean.z}, s3[3] = {stdv.x, stdv.y, stdv.z};
    const size_t base = (size_t)blockIdx.x * P;
    for (int q = threadIdx.x; q < P; q += blockDim.x)
        for (int ch = 0; ch < Cp; ch++) {
            float x = 0.0f;
            if (ch < 3) {
                x = o[(size_t)ch * P + q];
                if (p.solarize)
                    x = rw_aug_solarize(x);
                x = rw_aug_normalize(x, m3[ch], s3[ch]);
            }
            kb_elem_set(out, (base + q) * Cp + ch, x, bf16);
        }
}

/* ---- launchers ---- */

extern "C" int kb_cuda_augment(kb_backend *be, const uint8_t *src, int W, int H, int staged,
                               const uint32_t *keys, int n, uint64_t seed, const int *views,
                               int nviews, int S, const float mean[3], const float std[3],
                               void *out)
{
    if (!be || !be->name || strcmp(be->name, "cuda") != 0)
        return -1;
    kb_cuda *impl = kb_cuda_enter(be);
    if (n <= 0)
        return 0;
    KB_CUDA_CHECK(S >= 1 && W >= 1 && H >= 1 && nviews >= 1 && nviews <= 2);
    const int nb = nviews * n, Cp = kb_cuda_cpad(impl, 3);
    /* scratch: each view's three planes and the blur's rows, fp32 */
    float *work = (float *)kb_cuda_scratch(impl, sizeof(float) * 4 * (size_t)nb * S * S);
    /* the source images read, the views' planes written and read (L2 for
     * the most part, counted anyway), the feature map written */
    KB_CUDA_BYTES((size_t)nb * 3 * W * H + 2 * sizeof(float) * 4 * (size_t)nb * S * S +
                  kb_cuda_fmap_bytes(impl, nb, 3, (long)S * S));
    /* arguments as values: what a launch reads is read now (the emulator
     * runs a captured launch later) */
    const int v0 = views[0], v1 = nviews > 1 ? views[1] : views[0];
    const float3 m = make_float3(mean[0], mean[1], mean[2]), sd = make_float3(std[0], std[1], std[2]);
    const int bf16 = impl->precision == KB_PREC_BF16;
    kb_aug_kernel<<<nb, AUG_THREADS, 0, impl->stream>>>(src, W, H, staged != 0, keys, n, seed,
                                                        v0, v1, S, m, sd, out, Cp, bf16, work);
    KB_CUDA_LAUNCHED();
    return 0;
}
