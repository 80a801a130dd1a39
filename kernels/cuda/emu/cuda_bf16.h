/* Stand-in for cuda_bf16.h (kernels/cuda/emu/run.sh): bfloat16 is the top
 * half of an IEEE float (1 sign, 8 exponent, 7 stored mantissa bits). As
 * the real header defines them: float -> bf16 rounds to nearest, ties to
 * even, keeps infinities and turns a NaN into a quiet NaN; bf16 -> float is
 * exact. */
#pragma once
#include <cstdint>
#include <cstring>
struct __nv_bfloat16 { uint16_t x; };
static inline __nv_bfloat16 __float2bfloat16_rn(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    __nv_bfloat16 b;
    if ((u & 0x7fffffffu) > 0x7f800000u) { /* NaN: keep the sign, quiet */
        b.x = (uint16_t)((u >> 16) | 0x0040u);
        return b;
    }
    u += 0x7fffu + ((u >> 16) & 1u); /* round half to even on bit 16 */
    b.x = (uint16_t)(u >> 16);
    return b;
}
static inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
static inline float __bfloat162float(__nv_bfloat16 b)
{
    uint32_t u = (uint32_t)b.x << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
