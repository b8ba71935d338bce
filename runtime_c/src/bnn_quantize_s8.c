/*
 * bnn_quantize_f32_s8, bnn_dequantize_s8_f32, bnn_requantize_s8: conversions between float32
 * and int8, and between two int8 quantizations (converters/reference.py `quantize`,
 * `dequantize`).
 *
 * quantize (float32 -> int8):
 *   v = f32(x) / f32(scale)                        (float32 division, correctly rounded)
 *   BNN_ROUND_HALF_AWAY (TFLite): r = v rounded to the nearest integer, ties away from zero
 *                                 (std::round: exact, no float32 addition of 0.5)
 *   BNN_ROUND_HALF_EVEN (QKeras): r = v rounded to the nearest integer, ties to even (rint)
 *   q = clamp(r + zero_point, qmin, qmax)
 *   (NaN inputs give qmin; infinities saturate.)
 * dequantize (int8 -> float32):
 *   y = f32(scale * (x - zero_point)): the exact product of a float32 and a 9-bit integer has
 *   at most 33 significant bits, so the single float32 multiplication rounds it once, as the
 *   reference's float32(double(scale) * (x - zero_point)) does.
 * requantize (int8 -> int8), d = x - in_zero_point:
 *   BNN_OUT_TFLITE: clamp(MultiplyByQuantizedMultiplier(d, q_mult[0], q_shift[0])
 *                   + out_zero_point, act_min, act_max)      (bias is not used)
 *   BNN_OUT_AFFINE: clamp(round_half_even((d * a_mult[0] + B) / 2^a_shift[0]),
 *                   act_min, act_max), a_offset[0] = B + 2^(a_shift[0]-1)
 *
 * Arguments: size >= 1, non-NULL pointers, zero points and clamp ranges within [-128, 127];
 * quantize: scale finite and > 0, a known rounding; requantize: as bnn_output_check for one
 * channel (TFLITE or AFFINE). Anything else: BNN_ERROR_ARGUMENT, nothing written.
 * No libm: the roundings are written with integer conversions of values below 2^10.
 */
#include "bnn_kernels.h"
#include "bnn_requant.h"

/* Beyond this magnitude every rounded value saturates the same way (|zero point| <= 128 and
 * the output range is within [-128, 127]). */
#define QUANTIZE_LIMIT 1024.0f

/* The Cortex-M7's FPv5 (double precision present: not the Cortex-M4's FPv4) converts with a
 * rounding of its own: VCVTA (to nearest, ties away from zero) and VCVTN (ties to even),
 * saturating to int32 (NaN is handled before). */
#if defined(__ARM_ARCH_7EM__) && defined(__ARM_FP) && (__ARM_FP & 8) && defined(__GNUC__) &&     \
    !defined(BNN_FORCE_PLAIN_C)
#define BNN_QUANTIZE_VCVT 1
#else
#define BNN_QUANTIZE_VCVT 0
#endif

/* round(v) + zero_point, clamped to [qmin, qmax] */
BNN_ALWAYS_INLINE int8_t quantize_one(float v, bnn_rounding_t rounding, int32_t zero_point,
                                  int32_t qmin, int32_t qmax)
{
    float magnitude;
    int32_t r;
    if (v != v) { /* NaN */
        return (int8_t)qmin;
    }
#if BNN_QUANTIZE_VCVT
    {
        float t;
        if (rounding == BNN_ROUND_HALF_AWAY) {
            __asm__("vcvta.s32.f32 %0, %1" : "=t"(t) : "t"(v));
        } else {
            __asm__("vcvtn.s32.f32 %0, %1" : "=t"(t) : "t"(v));
        }
        __asm__("vmov %0, %1" : "=r"(r) : "t"(t));
        /* r + zero_point saturated to int32 (QADD), then the clamp in 32 bits: the same result
         * as the exact sum clamped, as [qmin, qmax] lies far inside int32 */
        return (int8_t)bnn_clamp32(__qadd(r, zero_point), qmin, qmax);
    }
#endif
    magnitude = v < 0.0f ? -v : v;
    if (!(magnitude < QUANTIZE_LIMIT)) {
        magnitude = QUANTIZE_LIMIT; /* also +inf */
    }
    {
        /* truncate, then round on the exact fraction (magnitude - r is exact in float32 for
         * magnitude < 2^10): ties away from zero (TFLite) or to even (QKeras) */
        float fraction;
        r = (int32_t)magnitude;
        fraction = magnitude - (float)r;
        if (fraction > 0.5f ||
            (fraction == 0.5f && (rounding == BNN_ROUND_HALF_AWAY || (r & 1) != 0))) {
            r += 1;
        }
    }
    if (v < 0.0f) {
        r = -r;
    }
    return (int8_t)bnn_clamp((int64_t)r + zero_point, qmin, qmax);
}

#if BNN_QUANTIZE_VCVT
/* quantize_one for the full int8 range on the M7: SSAT clamps r + zero_point (QADD) */
BNN_ALWAYS_INLINE int8_t quantize_full(float v, bnn_rounding_t rounding, int32_t zero_point)
{
    float t;
    int32_t r;
    if (v != v) { /* NaN */
        return (int8_t)BNN_INT8_MIN;
    }
    if (rounding == BNN_ROUND_HALF_AWAY) {
        __asm__("vcvta.s32.f32 %0, %1" : "=t"(t) : "t"(v));
    } else {
        __asm__("vcvtn.s32.f32 %0, %1" : "=t"(t) : "t"(v));
    }
    __asm__("vmov %0, %1" : "=r"(r) : "t"(t));
    return (int8_t)__ssat(__qadd(r, zero_point), 8);
}
#endif

bnn_status_t bnn_quantize_f32_s8(int32_t size, const float *in, float scale, int32_t zero_point,
                                 bnn_rounding_t rounding, int32_t qmin, int32_t qmax,
                                 int8_t *out)
{
    int32_t i;
    /* scale - scale == 0 rejects infinities and NaN without libm */
    if (in == NULL || out == NULL || size <= 0 || !(scale > 0.0f) || !(scale - scale == 0.0f) ||
        (rounding != BNN_ROUND_HALF_AWAY && rounding != BNN_ROUND_HALF_EVEN) ||
        !bnn_zero_point_ok(zero_point) || !bnn_int8_range_ok(qmin, qmax)) {
        return BNN_ERROR_ARGUMENT;
    }
    /* one loop per rounding (quantize_one inlined with a constant rounding); on the M7 the
     * full int8 range (the usual one) clamps by SSAT */
#if BNN_QUANTIZE_VCVT
    if (qmin == BNN_INT8_MIN && qmax == BNN_INT8_MAX) {
        if (rounding == BNN_ROUND_HALF_AWAY) {
            for (i = 0; i < size; ++i) {
                out[i] = quantize_full(in[i] / scale, BNN_ROUND_HALF_AWAY, zero_point);
            }
        } else {
            for (i = 0; i < size; ++i) {
                out[i] = quantize_full(in[i] / scale, BNN_ROUND_HALF_EVEN, zero_point);
            }
        }
        return BNN_OK;
    }
#endif
    if (rounding == BNN_ROUND_HALF_AWAY) {
        for (i = 0; i < size; ++i) {
            out[i] = quantize_one(in[i] / scale, BNN_ROUND_HALF_AWAY, zero_point, qmin, qmax);
        }
    } else {
        for (i = 0; i < size; ++i) {
            out[i] = quantize_one(in[i] / scale, BNN_ROUND_HALF_EVEN, zero_point, qmin, qmax);
        }
    }
    return BNN_OK;
}

bnn_status_t bnn_dequantize_s8_f32(int32_t size, const int8_t *in, float scale,
                                   int32_t zero_point, float *out)
{
    int32_t i;
    if (in == NULL || out == NULL || size <= 0 || !bnn_zero_point_ok(zero_point)) {
        return BNN_ERROR_ARGUMENT;
    }
    for (i = 0; i < size; ++i) {
        out[i] = scale * (float)(in[i] - zero_point);
    }
    return BNN_OK;
}

bnn_status_t bnn_requantize_s8(const bnn_output_t *output, int32_t in_zero_point, int32_t size,
                               const int8_t *in, int8_t *out)
{
    bnn_output_t transform;
    int32_t i;
    if (output == NULL || in == NULL || out == NULL || size <= 0 ||
        !bnn_zero_point_ok(in_zero_point) ||
        (output->kind != BNN_OUT_TFLITE && output->kind != BNN_OUT_AFFINE) ||
        bnn_output_check(output, 1) != BNN_OK) {
        return BNN_ERROR_ARGUMENT;
    }
    transform = *output;
    transform.bias = NULL;
    for (i = 0; i < size; ++i) {
        bnn_output_store(&transform, 0, in[i] - in_zero_point, out, i);
    }
    return BNN_OK;
}
