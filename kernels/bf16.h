/* bf16 <-> float on the host: what Gloo's bf16 wire and its queue convert
 * with. Rounding to nearest even, as the GPU's conversions do; NaN stays
 * NaN (a quiet one). Plain C, so C++ includes it too. */
#ifndef RUNAWAY_KERNELS_BF16_H
#define RUNAWAY_KERNELS_BF16_H

#include <stdint.h>
#include <string.h>

static inline uint16_t kb_bf16_from_float(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float kb_float_from_bf16(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

#endif
