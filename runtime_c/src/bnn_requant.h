/*
 * bnncube C runtime, internal: fixed-point helpers shared by the kernels (static inline, no
 * state). Not part of the public API.
 *
 * Integer conventions (no undefined or implementation-defined behaviour):
 *  - values that may wrap (accumulators, TFLite's `x * 2^left`) are held in uint32_t, where
 *    wrapping is defined, and turned back into int32_t by bnn_s32_from_u32 (two's complement
 *    value, written without the implementation-defined unsigned -> signed conversion);
 *  - right shifts of possibly negative values go through bnn_asr32 / bnn_asr64 (floor
 *    division by a power of two, written without shifting a negative value);
 *  - left shifts of possibly negative values are done on the unsigned type.
 *
 * Contents:
 *  - TFLite MultiplyByQuantizedMultiplier (gemmlowp SaturatingRoundingDoublingHighMul, then
 *    RoundingDivideByPOT), as reference.multiply_by_quantized_multiplier;
 *  - the QKeras affine transform clamp(round_half_even((acc * M + B) / 2^S)), as
 *    transforms.shift_round_half_even, from the rounding-ready offset B + 2^(S-1);
 *  - the float transform f32(f32(f32(acc) * scale) + offset) and its activation;
 *  - the per-output-channel dispatch of MAC ops (bnn_output_check / bnn_output_store);
 *  - argument checks shared by the kernels (dims, window geometry);
 *  - the int8 inner product sum w[k] * (x[k] - zp), plain C and Cortex-M7 (SXTB16 + SMLAD).
 */
#ifndef BNN_REQUANT_H
#define BNN_REQUANT_H

#include <stdint.h>
#include <string.h>

#include "bnn_kernels.h"
#include "bnn_types.h"

#if defined(__ARM_FEATURE_DSP) && !defined(BNN_FORCE_PLAIN_C)
#define BNN_USE_DSP 1
#include <arm_acle.h>
#else
#define BNN_USE_DSP 0
#endif

/* Inline even where the compiler would not (hot helpers of the kernels' inner loops). */
#if defined(__GNUC__)
#define BNN_ALWAYS_INLINE static inline __attribute__((always_inline))
#else
#define BNN_ALWAYS_INLINE static inline
#endif

/* Never inline (a cold or self-contained helper that should keep its own registers). */
#if defined(__GNUC__)
#define BNN_NOINLINE static __attribute__((noinline))
#else
#define BNN_NOINLINE static
#endif

#define BNN_INT8_MIN (-128)
#define BNN_INT8_MAX 127

/* ---- shared between kernels (defined in bnn_add_s8.c) --------------------------------- */

/* Whether `params` is a valid bnn_add_params_t (bnn_add_s8's contract; not NULL). */
int bnn_add_params_ok(const bnn_add_params_t *params);
/* bnn_add_s8 in two steps, for callers that add many short runs (bnn_bconv2d_add): the
 * per-call constants once, then the arithmetic without the checks (params valid, size >= 1).
 * Element i is read from a and b before out[i] is written, so `out` may be `a` or `b`. */
typedef struct {
    const bnn_add_params_t *params;
    int64_t ready;  /* affine: B + 2^(S-1) */
    int64_t folded; /* affine: ready - za * M[0] - zb * M[1] */
} bnn_add_s8_prepared_t;
void bnn_add_s8_prepare(const bnn_add_params_t *params, bnn_add_s8_prepared_t *prepared);
/* Whether a valid Add is the plain sum saturated: affine, M[0] = M[1] = 2^S and the offset
 * exactly (za + zb) * 2^S, so that t / 2^S = a + b exactly (t = (a - za) * 2^S + (b - zb) * 2^S
 * + offset: no rounding), and the full int8 range: then out = saturate_int8(a + b) (QADD8 on
 * the Cortex-M7). A QKeras residual Add of two tensors of one scale is one. */
static inline int bnn_add_is_plain_sum(const bnn_add_params_t *add)
{
    const int32_t s = add->affine_shift;
    return add->kind == BNN_OUT_AFFINE && s >= 1 && s <= 30 && add->act_min == BNN_INT8_MIN &&
           add->act_max == BNN_INT8_MAX && add->affine_mult[0] == ((int32_t)1 << s) &&
           add->affine_mult[1] == ((int32_t)1 << s) &&
           add->affine_offset ==
               ((int64_t)add->a_zero_point + add->b_zero_point) * ((int64_t)1 << s);
}
void bnn_add_s8_run(const bnn_add_s8_prepared_t *prepared, int32_t size, const int8_t *a,
                    const int8_t *b, int8_t *out);

/* ---- integer basics ------------------------------------------------------------------- */

/* The int32 value whose two's complement bit pattern is u (the C int32 wrap of u). */
static inline int32_t bnn_s32_from_u32(uint32_t u)
{
    if (u <= 0x7FFFFFFFu) {
        return (int32_t)u;
    }
    return (int32_t)(u - 0x80000000u) - INT32_MAX - 1;
}

/* floor(x / 2^e) for 0 <= e <= 31 (an arithmetic right shift). For x < 0, ~x = -x - 1 >= 0
 * and floor(x / 2^e) = -1 - floor((-x - 1) / 2^e), so only a non-negative value is shifted.
 * On ARM it is the ASR instruction itself (which is exactly this floor division), written in
 * assembly so that no implementation-defined C shift is involved. */
static inline int32_t bnn_asr32(int32_t x, int32_t e)
{
#if defined(__arm__) && defined(__GNUC__) && !defined(BNN_FORCE_PLAIN_C)
    int32_t r;
    __asm__("asr %0, %1, %2" : "=r"(r) : "r"(x), "r"(e));
    return r;
#else
    if (x >= 0) {
        return x >> e;
    }
    return -1 - (int32_t)(~(uint32_t)x >> e);
#endif
}

/* Branch hints for rare cases (exact ties of the roundings). */
#if defined(__GNUC__)
#define BNN_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define BNN_UNLIKELY(x) (x)
#endif

/* floor(t / 2^s) for 1 <= s <= 63 (an arithmetic right shift), by an offset: u = t + 2^63
 * (computed as the bit pattern of t with the top bit flipped) lies in [0, 2^64), so
 * floor(t / 2^s) = floor(u / 2^s) - 2^(63 - s) with a logical shift of the unsigned u; the
 * shifted value is below 2^63 and converts to int64_t exactly. */
static inline int64_t bnn_asr64(int64_t t, int32_t s)
{
    uint64_t u = (uint64_t)t ^ ((uint64_t)1 << 63);
    return (int64_t)(u >> s) - ((int64_t)1 << (63 - s));
}

static inline int32_t bnn_clamp(int64_t v, int32_t lo, int32_t hi)
{
    if (v < lo) {
        return lo;
    }
    if (v > hi) {
        return hi;
    }
    return (int32_t)v;
}

/* ---- TFLite requantization -------------------------------------------------------------- */

/* gemmlowp SaturatingRoundingDoublingHighMul: (a * b + nudge) / 2^31 truncated toward zero,
 * nudge = 2^30 if a * b >= 0 else 1 - 2^30; a == b == INT32_MIN saturates to INT32_MAX.
 * For both signs that is floor((a * b + 2^30) / 2^31) (for a * b = -m < 0, truncating
 * (-m + 1 - 2^30) / 2^31 toward zero gives -floor((m + 2^30 - 1) / 2^31) =
 * floor((-m + 2^30) / 2^31)), computed here as bits 31..62 of the 64-bit sum: one SMULL, an
 * add with carry and two shifts (the sum is below 2^62 + 2^30 in magnitude). */
static inline int32_t bnn_srdhm(int32_t a, int32_t b)
{
    uint64_t t;
    if (BNN_UNLIKELY(b == INT32_MIN && a == INT32_MIN)) { /* b first: a multiplier, hoistable */
        return INT32_MAX;
    }
    t = (uint64_t)((int64_t)a * (int64_t)b) + ((uint64_t)1 << 30); /* modulo 2^64 */
    /* bits 31..62 of t: the floor division, which fits int32 here */
    return bnn_s32_from_u32(((uint32_t)(t >> 32) << 1) | ((uint32_t)t >> 31));
}

/* gemmlowp RoundingDivideByPOT, 0 <= e <= 31: x / 2^e rounded half away from zero.
 * mask = 2^e - 1, rem = x & mask, threshold = (mask >> 1) + (x < 0),
 * result = (x >> e) + (rem > threshold). */
static inline int32_t bnn_rdbp(int32_t x, int32_t e)
{
    uint32_t mask = ((uint32_t)1 << e) - 1u; /* e <= 31: no shift by the width */
    uint32_t rem = (uint32_t)x & mask;       /* low e bits of the two's complement pattern */
    uint32_t threshold = (mask >> 1) + (x < 0 ? 1u : 0u);
    /* for e >= 1, x >> e <= (2^31 - 1) >> e, so adding 1 cannot overflow; for e = 0, rem is 0
     * and nothing is added */
    return bnn_asr32(x, e) + (rem > threshold ? 1 : 0);
}

/* TFLite MultiplyByQuantizedMultiplier(x, q, shift), -31 <= shift <= 31:
 * RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x * 2^max(shift, 0), q),
 * max(-shift, 0)), where x * 2^left wraps modulo 2^32 (as reference._wrap_int32 does). */
static inline int32_t bnn_mbqm(int32_t x, int32_t q, int32_t shift)
{
    int32_t left = shift > 0 ? shift : 0;
    int32_t right = shift > 0 ? 0 : -shift;
    int32_t shifted = bnn_s32_from_u32((uint32_t)x << left);
    return bnn_rdbp(bnn_srdhm(shifted, q), right);
}

/* TFLite's single-rounding MultiplyByQuantizedMultiplier (its per-channel FULLY_CONNECTED
 * reference kernel): (x * q + 2^(30 - shift)) >> (31 - shift) in int64, saturated to int32;
 * -31 <= shift <= 31 (shift 31: no rounding). */
static inline int32_t bnn_mbqm_single(int32_t x, int32_t q, int32_t shift)
{
    int32_t total = 31 - shift; /* 0 .. 62 */
    int64_t t = (int64_t)x * (int64_t)q; /* |t| < 2^62 */
    if (total > 0) {
        t = bnn_asr64(t + ((int64_t)1 << (total - 1)), total);
    }
    return bnn_clamp(t, INT32_MIN, INT32_MAX);
}

/* ---- QKeras affine transform ------------------------------------------------------------ */

/* Bound on |offset| accepted by the kernels: with |acc * M| <= 2^62 the sum acc * M + offset
 * cannot overflow int64 (the lowering keeps |B| below 2^61, so the rounding-ready offset
 * B + 2^(S-1) stays below 2^62). */
#define BNN_AFFINE_OFFSET_LIMIT ((int64_t)1 << 62)

/* The rounding-ready offset of the affine transform: B + 2^(shift - 1), 1 <= shift <= 62,
 * |B| < 2^62 (the sum stays below 2^63). bnn_output_t.a_offset holds it (the generator and
 * validation/kernel_calls.py compute it at generation time); scalar offsets (Add, one channel)
 * are made ready once per call with this. */
static inline int64_t bnn_affine_ready_offset(int64_t offset, int32_t shift)
{
    return offset + ((int64_t)1 << (shift - 1));
}

/* clamp(round_half_even((u - 2^(shift-1)) / 2^shift), lo, hi) for 1 <= shift <= 62,
 * -2^31 <= lo <= hi < 2^31, any int64 u: u = t + 2^(shift-1) is the sum with the
 * rounding-ready offset already in it.
 *
 * The reference rounds t / 2^s half to even. floor(u / 2^s) = floor((t + 2^(s-1)) / 2^s) is t
 * rounded half up; it differs from half even only at an exact tie (u mod 2^s == 0) with an odd
 * quotient, which then takes one less. On the two 32-bit halves u = uh * 2^32 + ul (uh signed,
 * ul unsigned), with no 64-bit shift by a variable amount (on the Cortex-M7: SMLAL for u, then
 * an ASR, a tie test and the clamp):
 *  - s >= 32, k = s - 32: q = floor(uh / 2^k); the remainder is zero when ul == 0 and the low
 *    k bits of uh are (uh << (32 - k), written as two shifts so that k = 0 shifts out all).
 *  - s < 32: q = uh * 2^(32 - s) + floor(ul / 2^s), which fits int32 iff
 *    -2^(s-1) <= uh < 2^(s-1) (otherwise the result is clamped at once); the remainder is zero
 *    when the low s bits of ul are. */
BNN_ALWAYS_INLINE int32_t bnn_clamp32(int32_t q, int32_t lo, int32_t hi)
{
    return q > hi ? hi : (q < lo ? lo : q);
}

BNN_ALWAYS_INLINE int32_t bnn_round_ready_clamp(int64_t u64, int32_t shift, int32_t lo,
                                                int32_t hi)
{
    uint64_t u = (uint64_t)u64;
    uint32_t ul = (uint32_t)u;
    int32_t uh = bnn_s32_from_u32((uint32_t)(u >> 32));
    int32_t q;
    if (shift >= 32) {
        int32_t k = shift - 32;
        q = bnn_asr32(uh, k);
        /* a tie needs ul == 0 (rare): only then look at the low k bits of uh */
        if (BNN_UNLIKELY(ul == 0u) && (((uint32_t)uh << 1) << (31 - k)) == 0u) {
            q -= (int32_t)((uint32_t)q & 1u); /* q odd: q > INT32_MIN */
        }
    } else {
        int32_t limit = (int32_t)1 << (shift - 1); /* shift <= 31: at most 2^30 */
        if (uh >= limit) {
            return hi;
        }
        if (uh < -limit) {
            return lo;
        }
        q = bnn_s32_from_u32(((uint32_t)uh << (32 - shift)) + (ul >> shift));
        if (BNN_UNLIKELY((ul << (32 - shift)) == 0u)) {
            q -= (int32_t)((uint32_t)q & 1u);
        }
    }
    /* (an exact tie with an odd q: half to even takes q - 1) */
    if (q > hi) {
        return hi;
    }
    if (q < lo) {
        return lo;
    }
    return q;
}

/* offset + a * b, the product in 64 bits (one SMLAL on the Cortex-M7). */
BNN_ALWAYS_INLINE int64_t bnn_smlal(int64_t offset, int32_t a, int32_t b)
{
#if defined(__arm__) && defined(__GNUC__) && !defined(BNN_FORCE_PLAIN_C)
    /* SMLAL itself: in unrolled loops GCC may otherwise build a full 64 x 64 multiply */
    __asm__("smlal %Q0, %R0, %1, %2" : "+r"(offset) : "r"(a), "r"(b));
    return offset;
#else
    return (int64_t)a * (int64_t)b + offset;
#endif
}

/* clamp(round_half_even((acc * mult + B) / 2^shift), lo, hi) with offset = B + 2^(shift-1)
 * (bnn_affine_ready_offset), |offset| < 2^62: one SMLAL, then bnn_round_ready_clamp. */
BNN_ALWAYS_INLINE int32_t bnn_affine(int32_t acc, int32_t mult, int64_t offset, int32_t shift,
                                     int32_t lo, int32_t hi)
{
    return bnn_round_ready_clamp(bnn_smlal(offset, acc, mult), shift, lo, hi);
}

/* bnn_affine for the usual channel in 6 instructions (Cortex-M7, optimized builds): shift >= 32
 * and the full int8 range (act_min -128, act_max 127). The sum u = acc * mult + offset by
 * SMLAL; q = the high word shifted right by k = shift - 32 (bnn_round_ready_clamp); at an exact
 * tie (low word 0, by CBNZ, then the low k bits of the high word 0: rare) an odd q loses its
 * low bit, which is q - 1; SSAT clamps to int8. */
#if BNN_USE_DSP && defined(__GNUC__) && defined(__OPTIMIZE__)
#define BNN_AFFINE_FAST 1
BNN_ALWAYS_INLINE int32_t bnn_affine_fast(int32_t acc, int32_t mult, int64_t offset, int32_t k)
{
    int32_t lo, hi;
    __asm__("mov   %[lo], %Q[off]\n\t"
            "mov   %[hi], %R[off]\n\t"
            "smlal %[lo], %[hi], %[x], %[m]\n\t"
            "asr   %[x], %[hi], %[k]\n\t"
            "cbnz  %[lo], 1f\n\t" /* the low word 0: maybe a tie (lo: a low register) */
            "rsb   %[lo], %[k], #32\n\t"
            "lsls  %[lo], %[hi], %[lo]\n\t" /* the low k bits of hi (k = 0: none, 0) */
            "it    eq\n\t"
            "biceq %[x], %[x], #1\n"
            "1:\n\t"
            "ssat  %[x], #8, %[x]\n\t"
            : [lo] "=&l"(lo), [hi] "=&r"(hi), [x] "+r"(acc)
            : [m] "r"(mult), [off] "r"(offset), [k] "r"(k)
            : "cc");
    return acc;
}

/* bnn_affine_fast for 16 <= shift <= 31 (full int8 range), 11 instructions: q = uh * 2^(32-s)
 * + floor(ul / 2^s) (bnn_round_ready_clamp) with uh first saturated to 16 bits. That changes
 * nothing where |uh| < 2^15, and beyond it leaves |q| >= 2^15 - 1, clamped to the same end of
 * int8 as the exact q, without overflow (|uh| * 2^(32-s) <= 2^31). A tie: the low s bits of
 * ul are 0 (then an odd q loses its low bit). rs = 32 - shift. */
BNN_ALWAYS_INLINE int32_t bnn_affine_fast_lo(int32_t acc, int32_t mult, int64_t offset,
                                             int32_t shift, int32_t rs)
{
    int32_t lo, hi, t;
    __asm__("mov   %[lo], %Q[off]\n\t"
            "mov   %[hi], %R[off]\n\t"
            "smlal %[lo], %[hi], %[x], %[m]\n\t"
            "ssat  %[hi], #16, %[hi]\n\t"
            "lsl   %[hi], %[hi], %[rs]\n\t"
            "lsls  %[t], %[lo], %[rs]\n\t" /* Z: the low s bits of ul are 0, a tie */
            "lsr   %[lo], %[lo], %[s]\n\t"
            "add   %[x], %[hi], %[lo]\n\t"
            "it    eq\n\t"
            "biceq %[x], %[x], #1\n\t"
            "ssat  %[x], #8, %[x]\n\t"
            : [lo] "=&r"(lo), [hi] "=&r"(hi), [t] "=&r"(t), [x] "+r"(acc)
            : [m] "r"(mult), [off] "r"(offset), [s] "r"(shift), [rs] "r"(rs)
            : "cc");
    return acc;
}
#else
#define BNN_AFFINE_FAST 0
#endif

/* dst[k] = bnn_affine(acc[k], mult[k], offset[k], shift[k], lo, hi) for k < n (a run of
 * consecutive channels), by bnn_affine_fast / _lo where they apply (the full int8 range,
 * shift >= 16).
 * dst may alias none of the inputs. */
BNN_ALWAYS_INLINE void bnn_affine_run(const int32_t *acc, const int32_t *mult,
                                      const int64_t *offset, const int8_t *shift, int32_t lo,
                                      int32_t hi, int32_t n, int8_t *dst)
{
    int32_t k;
#if BNN_AFFINE_FAST
    if (lo == BNN_INT8_MIN && hi == BNN_INT8_MAX) {
        for (k = 0; k < n; ++k) {
            const int32_t s = shift[k];
            if (s >= 32) {
                dst[k] = (int8_t)bnn_affine_fast(acc[k], mult[k], offset[k], s - 32);
            } else if (s >= 16) {
                dst[k] = (int8_t)bnn_affine_fast_lo(acc[k], mult[k], offset[k], s, 32 - s);
            } else {
                dst[k] = (int8_t)bnn_affine(acc[k], mult[k], offset[k], s, lo, hi);
            }
        }
        return;
    }
#endif
    for (k = 0; k < n; ++k) {
        dst[k] = (int8_t)bnn_affine(acc[k], mult[k], offset[k], shift[k], lo, hi);
    }
}

/* ---- float transform -------------------------------------------------------------------- */

/* f32(f32(f32(acc) * scale) + offset), then the activation. The product is stored to a
 * volatile float so that it is rounded to float32 on its own and no compiler can fuse it with
 * the addition (VFMA on the Cortex-M7), whatever -ffp-contract the code is built with. ReLU
 * is max(y, +0.0) and ReLU6 min(max(y, +0.0), 6) as numpy computes them (-0.0 becomes +0.0). */
static inline float bnn_float_transform(int32_t acc, float scale, float offset,
                                        bnn_activation_t activation)
{
    volatile float product = (float)acc * scale;
    float y = product + offset;
    if (activation == BNN_ACT_RELU || activation == BNN_ACT_RELU6) {
        y = y > 0.0f ? y : 0.0f;
        if (activation == BNN_ACT_RELU6 && y > 6.0f) {
            y = 6.0f;
        }
    }
    return y;
}

/* ---- output transforms of MAC ops ------------------------------------------------------- */

static inline int bnn_int8_range_ok(int32_t lo, int32_t hi)
{
    return lo >= BNN_INT8_MIN && lo <= hi && hi <= BNN_INT8_MAX;
}

static inline int bnn_zero_point_ok(int32_t zp)
{
    return zp >= BNN_INT8_MIN && zp <= BNN_INT8_MAX;
}

/* Checks `output` for an int8 MAC op with `channels` output channels (reads the per-channel
 * shifts and offsets once): BNN_OUT_TFLITE needs q_mult and q_shift (shifts in [-31, 31]; bias
 * may be NULL), BNN_OUT_AFFINE a_mult, a_shift (1 .. 62) and a_offset (the rounding-ready
 * B + 2^(a_shift-1), |a_offset| < 2^62), both an
 * int8 zero point and [act_min, act_max] within [-128, 127]; BNN_OUT_FLOAT f_scale, f_offset
 * and a known activation. BNN_OUT_THRESHOLD (binary output) is not an int8 op's. */
static inline bnn_status_t bnn_output_check(const bnn_output_t *output, int32_t channels)
{
    int32_t o;
    if (output == NULL || channels <= 0) {
        return BNN_ERROR_ARGUMENT;
    }
    switch (output->kind) {
    case BNN_OUT_TFLITE:
        if (output->q_mult == NULL || output->q_shift == NULL ||
            !bnn_zero_point_ok(output->out_zero_point) ||
            !bnn_int8_range_ok(output->act_min, output->act_max)) {
            return BNN_ERROR_ARGUMENT;
        }
        for (o = 0; o < channels; ++o) {
            if (output->q_shift[o] < -31 || output->q_shift[o] > 31) {
                return BNN_ERROR_ARGUMENT;
            }
        }
        return BNN_OK;
    case BNN_OUT_AFFINE:
        if (output->a_mult == NULL || output->a_shift == NULL || output->a_offset == NULL ||
            !bnn_int8_range_ok(output->act_min, output->act_max)) {
            return BNN_ERROR_ARGUMENT;
        }
        for (o = 0; o < channels; ++o) {
            if (output->a_shift[o] < 1 || output->a_shift[o] > 62 ||
                output->a_offset[o] <= -BNN_AFFINE_OFFSET_LIMIT ||
                output->a_offset[o] >= BNN_AFFINE_OFFSET_LIMIT) {
                return BNN_ERROR_ARGUMENT;
            }
        }
        return BNN_OK;
    case BNN_OUT_FLOAT:
        if (output->f_scale == NULL || output->f_offset == NULL ||
            (output->float_activation != BNN_ACT_NONE &&
             output->float_activation != BNN_ACT_RELU &&
             output->float_activation != BNN_ACT_RELU6)) {
            return BNN_ERROR_ARGUMENT;
        }
        return BNN_OK;
    case BNN_OUT_THRESHOLD:
    default:
        return BNN_ERROR_ARGUMENT;
    }
}

/* The usual TFLite channel in 6 instructions with its store (Cortex-M7, optimized builds): two
 * roundings, mult > 0, a right shift e = -shift with 1 <= e <= 22 (no left shift), zp within
 * int8, the full int8 range (act_min -128, act_max 127): bnn_tflite_fast_ok; and x = acc +
 * bias within (-2^30, 2^30), which the kernels make sure of per call from the biases and the
 * largest |acc| (bnn_tflite_bias_ok). Then
 *   RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x, mult), e) + zp, clamped
 * takes: the high multiply h = floor((x * mult + 2^30) / 2^31) (mult > 0 never saturates,
 * and TFLite's nudge for a negative product gives this floor too) = floor((2x * mult + 2^31) /
 * 2^32), SMMULR of 2x (within int32); RoundingDivideByPOT(h, e) = floor((h + 2^(e-1) -
 * [h < 0]) / 2^e) (half away from zero), where [h < 0] may be replaced by s = [x < 0]: they
 * differ only when -2^30 <= x * mult < 0, where h = 0 and both give 0. With the zero point
 * folded (a multiple of the divisor),
 *   result + zp = (h + c - s) >> e,   c = 2^(e-1) + zp * 2^e = (2 zp + 1) * 2^(e-1):
 * ADD (2x), SMMLAR (c + h), ADD of 2x ASR #31 (-s), ASR by e, SSAT to 8 bits, and the STRB.
 * No step overflows: |h| <= 2^30 and |c| < 2^29. */
BNN_ALWAYS_INLINE int bnn_tflite_fast_ok(int32_t mult, int32_t shift, int32_t zp)
{
    return mult > 0 && shift <= -1 && shift >= -22 && zp >= BNN_INT8_MIN && zp <= BNN_INT8_MAX;
}

/* bnn_tflite_fast's c: (2 zp + 1) * 2^(e-1) for e = -shift (within int32 for a channel
 * bnn_tflite_fast_ok accepts). */
BNN_ALWAYS_INLINE int32_t bnn_tflite_fast_c(int32_t shift, int32_t zp)
{
    return (2 * zp + 1) * ((int32_t)1 << (-shift - 1));
}

/* The largest |acc| of a kernel whose outputs each sum `taps` products of int8 weights and
 * inputs minus an int8 zero point (128 * 255 each), capped at 2^30 (then no bias passes
 * bnn_tflite_bias_ok). */
BNN_ALWAYS_INLINE int32_t bnn_acc_max(int64_t taps)
{
    return taps < (int64_t)1 << 15 ? (int32_t)(taps * 128 * 255) : (int32_t)1 << 30;
}

/* The largest |bias| for which acc + bias stays within (-2^30, 2^30) when |acc| <= acc_max
 * (negative: none). */
BNN_ALWAYS_INLINE int32_t bnn_tflite_bias_lim(int32_t acc_max)
{
    return ((int32_t)1 << 30) - 1 - acc_max;
}

/* Whether acc + bias stays within (-2^30, 2^30) for every channel (bias NULL: 0) when |acc| <=
 * acc_max: the precondition of bnn_tflite_fast. */
BNN_ALWAYS_INLINE int bnn_tflite_bias_ok(const int32_t *bias, int32_t n, int32_t acc_max)
{
    const int32_t lim = bnn_tflite_bias_lim(acc_max);
    int32_t o;
    if (lim < 0) {
        return 0;
    }
    for (o = 0; bias != NULL && o < n; ++o) {
        if (bias[o] > lim || bias[o] < -lim) {
            return 0;
        }
    }
    return 1;
}

#if BNN_USE_DSP && defined(__GNUC__) && defined(__OPTIMIZE__)
#define BNN_TFLITE_FAST 1
/* x = acc + bias (wrapped), c = bnn_tflite_fast_c, e = -shift, for a channel
 * bnn_tflite_fast_ok accepts in a kernel with q_single_rounding 0, the full int8 range and
 * |x| < 2^30. */
BNN_ALWAYS_INLINE int32_t bnn_tflite_fast(int32_t x, int32_t mult, int32_t c, int32_t e)
{
    int32_t t;
    __asm__("add    %[x], %[x], %[x]\n\t"
            "smmlar %[t], %[x], %[m], %[c]\n\t"
            "add    %[t], %[t], %[x], asr #31\n\t"
            "asr    %[t], %[t], %[e]\n\t"
            "ssat   %[t], #8, %[t]\n\t"
            : [t] "=&r"(t), [x] "+r"(x)
            : [m] "r"(mult), [c] "r"(c), [e] "r"(e));
    return t;
}

/* One step of bnn_tflite_fast4: the store of x at [addr] (t: scratch). */
#define BNN_TFLITE_FAST_STEP(x, addr)                                                          \
    "add    %[" x "], %[" x "], %[" x "]\n\t"                                                   \
    "smmlar %[t], %[" x "], %[m], %[c]\n\t"                                                    \
    "add    %[t], %[t], %[" x "], asr #31\n\t"                                                 \
    "asr    %[t], %[t], %[e]\n\t"                                                              \
    "ssat   %[t], #8, %[t]\n\t"                                                                \
    "strb   %[t], " addr "\n\t"

/* bnn_tflite_fast of one channel's 4 sums (x = acc + bias each), stored at y[0], y[oc],
 * y[2 oc] and y[3 oc]; then y moves on by one (the next channel). 27 instructions. */
BNN_ALWAYS_INLINE int8_t *bnn_tflite_fast4(int8_t *y, int32_t oc, int32_t a0, int32_t a1,
                                           int32_t a2, int32_t a3, int32_t mult, int32_t c,
                                           int32_t e)
{
    int32_t t;
    /* volatile: its effect is the stores (its register outputs may all go unused) */
    __asm__ __volatile__(BNN_TFLITE_FAST_STEP("a0", "[%[y]]")
            BNN_TFLITE_FAST_STEP("a1", "[%[y], %[oc]]")
            "add   %[a0], %[y], %[oc], lsl #1\n\t"
            BNN_TFLITE_FAST_STEP("a2", "[%[a0]]")
            "add   %[a0], %[a0], %[oc]\n\t"
            BNN_TFLITE_FAST_STEP("a3", "[%[a0]]")
            "add   %[y], %[y], #1\n\t"
            : [t] "=&r"(t), [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3),
              [y] "+r"(y)
            : [m] "r"(mult), [c] "r"(c), [e] "r"(e), [oc] "r"(oc)
            : "memory");
    return y;
}
#undef BNN_TFLITE_FAST_STEP
#else
#define BNN_TFLITE_FAST 0
#endif

/* A TFLite output channel prepared once (bnn_tflite_ch) for loops that store many outputs of
 * it (bnn_tflite_ch_out): the shift split into its parts and the clamp with the zero point
 * taken out. The field order is the assembly's (pairs read by LDRD); keep it. */
typedef struct {
    int32_t bias, mult;   /* as given */
    int32_t left, right;  /* max(shift, 0), max(-shift, 0) */
    uint32_t mask, half;  /* RoundingDivideByPOT by right: 2^right - 1, and mask >> 1 */
    int32_t lo, hi;       /* act_min - zp, act_max - zp (the clamp before adding zp) */
    int32_t zp, shift;    /* out_zero_point; the shift as given */
    int32_t single;       /* output->q_single_rounding */
    int32_t plain;        /* 1: the C arithmetic (single rounding, or mult = INT32_MIN) */
    int32_t c;            /* bnn_tflite_fast's constant: bnn_tflite_fast_c */
    int32_t fast;         /* 1: bnn_tflite_fast applies (bnn_tflite_fast_ok, full range, the
                           * bias within bnn_tflite_bias_ok's bound) */
} bnn_tflite_ch_t;

/* acc_max: the largest |acc| of the kernel (bnn_acc_max). */
BNN_ALWAYS_INLINE bnn_tflite_ch_t bnn_tflite_ch(int32_t bias, int32_t mult, int32_t shift,
                                                const bnn_output_t *output, int32_t acc_max)
{
    bnn_tflite_ch_t c;
    c.bias = bias;
    c.mult = mult;
    c.shift = shift;
    c.left = shift > 0 ? shift : 0;
    c.right = shift > 0 ? 0 : -shift;
    c.mask = ((uint32_t)1 << c.right) - 1u; /* right <= 31 */
    c.half = c.mask >> 1;
    c.zp = output->out_zero_point;
    c.lo = output->act_min - c.zp;
    c.hi = output->act_max - c.zp;
    c.single = output->q_single_rounding != 0;
    c.plain = c.single || mult == INT32_MIN;
    c.fast = !c.single && bnn_tflite_fast_ok(mult, shift, c.zp) &&
             output->act_min == BNN_INT8_MIN && output->act_max == BNN_INT8_MAX &&
             bnn_tflite_bias_ok(&bias, 1, acc_max);
    c.c = c.fast ? bnn_tflite_fast_c(shift, c.zp) : 0;
    return c;
}

/* Whether every channel of a call's int8 output takes the fast store: TFLite with a bias, two
 * roundings, bnn_tflite_fast_ok and bnn_tflite_bias_ok (acc_max: the largest |acc|,
 * bnn_acc_max), or affine with a shift >= 32 (bnn_affine_fast), and the full int8 range
 * (checked once per call by the kernels' whole-assembly paths). */
BNN_ALWAYS_INLINE int bnn_fast_stores_ok(bnn_out_kind_t kind, const bnn_output_t *output,
                                         int32_t out_c, int32_t acc_max)
{
    int32_t o;
    if (output->act_min != BNN_INT8_MIN || output->act_max != BNN_INT8_MAX) {
        return 0;
    }
    if (kind == BNN_OUT_TFLITE) {
        const int32_t lim = bnn_tflite_bias_lim(acc_max); /* (one loop for both checks) */
        if (output->bias == NULL || output->q_single_rounding || lim < 0) {
            return 0;
        }
        for (o = 0; o < out_c; ++o) {
            if (!bnn_tflite_fast_ok(output->q_mult[o], output->q_shift[o],
                                    output->out_zero_point) ||
                output->bias[o] > lim || output->bias[o] < -lim) {
                return 0;
            }
        }
        return 1;
    }
    if (kind == BNN_OUT_AFFINE) {
        for (o = 0; o < out_c; ++o) {
            if (output->a_shift[o] < 32) {
                return 0;
            }
        }
        return 1;
    }
    return 0;
}

/* The 4 words of a channel's fast stores in the order the kernels' assembly loads them (one LDM
 * into r4, r5, r6, r8). TFLite (bnn_tflite_fast): mult, e = -shift, bnn_tflite_fast_c and the
 * bias (which the kernels add into the sums before the store). Affine
 * (bnn_affine_fast; shift >= 32): mult, the offset's low and high words, shift - 32. */
BNN_ALWAYS_INLINE void bnn_tflite_fast_words(int32_t mult, int32_t shift, int32_t zp,
                                             int32_t bias, int32_t *c)
{
    c[0] = mult;
    c[1] = -shift;
    c[2] = bnn_tflite_fast_c(shift, zp);
    c[3] = bias;
}
BNN_ALWAYS_INLINE void bnn_affine_fast_words(int32_t mult, int64_t offset, int32_t shift,
                                             int32_t *c)
{
    c[0] = mult;
    c[1] = bnn_s32_from_u32((uint32_t)(uint64_t)offset);
    c[2] = bnn_s32_from_u32((uint32_t)((uint64_t)offset >> 32));
    c[3] = shift - 32;
}
/* bnn_tflite_out for a channel made by bnn_tflite_ch. The clamp of scaled + zp to [act_min,
 * act_max] is done in 32 bits: scaled first to [act_min - zp, act_max - zp] (within [-255,
 * 255], as all three are int8), then + zp, which can no longer overflow. On the Cortex-M7
 * (optimized builds) the usual case, two roundings and mult != INT32_MIN (so that
 * SaturatingRoundingDoublingHighMul never saturates), is one block of assembly: 25
 * instructions, the constants read by LDRD. */
BNN_ALWAYS_INLINE int32_t bnn_tflite_ch_out(int32_t acc, const bnn_tflite_ch_t *c)
{
    int32_t biased, scaled;
#if BNN_TFLITE_FAST
    if (c->fast) {
        return bnn_tflite_fast(bnn_s32_from_u32((uint32_t)acc + (uint32_t)c->bias), c->mult,
                               c->c, c->right);
    }
#endif
#if BNN_USE_DSP && defined(__GNUC__) && defined(__OPTIMIZE__)
    if (!c->plain) {
        int32_t x = acc, t0, t1, t2, t3, t4;
        __asm__("ldrd  %[t0], %[t1], [%[c], #0]\n\t"   /* bias, mult */
                "add   %[x], %[x], %[t0]\n\t"
                "ldrd  %[t0], %[t2], [%[c], #8]\n\t"   /* left, right */
                "lsl   %[x], %[x], %[t0]\n\t"
                "smull %[t3], %[t4], %[x], %[t1]\n\t"
                "adds  %[t3], %[t3], #0x40000000\n\t"
                "adc   %[t4], %[t4], #0\n\t"
                "lsr   %[t3], %[t3], #31\n\t"
                "orr   %[x], %[t3], %[t4], lsl #1\n\t" /* bits 31..62: the high mul */
                "ldrd  %[t0], %[t1], [%[c], #16]\n\t"  /* mask, half */
                "and   %[t3], %[x], %[t0]\n\t"
                "add   %[t1], %[t1], %[x], lsr #31\n\t" /* threshold: half + (x < 0) */
                "asr   %[x], %[x], %[t2]\n\t"
                "cmp   %[t3], %[t1]\n\t"
                "it    hi\n\t"
                "addhi %[x], %[x], #1\n\t"
                "ldrd  %[t0], %[t1], [%[c], #24]\n\t"  /* lo, hi */
                "cmp   %[x], %[t0]\n\t"
                "it    lt\n\t"
                "movlt %[x], %[t0]\n\t"
                "cmp   %[x], %[t1]\n\t"
                "it    gt\n\t"
                "movgt %[x], %[t1]\n\t"
                "ldr   %[t0], [%[c], #32]\n\t"         /* zp */
                "add   %[x], %[x], %[t0]\n\t"
                : [x] "+&r"(x), [t0] "=&r"(t0), [t1] "=&r"(t1), [t2] "=&r"(t2), [t3] "=&r"(t3),
                  [t4] "=&r"(t4)
                : [c] "r"(c), "m"(*c)
                : "cc");
        return x;
    }
#endif
    biased = bnn_s32_from_u32((uint32_t)acc + (uint32_t)c->bias);
    if (c->single) {
        scaled = bnn_mbqm_single(biased, c->mult, c->shift);
    } else {
        /* MultiplyByQuantizedMultiplier: bnn_mbqm with the shift's parts made once */
        int32_t high = bnn_srdhm(bnn_s32_from_u32((uint32_t)biased << c->left), c->mult);
        uint32_t threshold = c->half + (high < 0 ? 1u : 0u);
        scaled = bnn_asr32(high, c->right) + (((uint32_t)high & c->mask) > threshold ? 1 : 0);
    }
    return (scaled < c->lo ? c->lo : (scaled > c->hi ? c->hi : scaled)) + c->zp;
}

/* The TFLite output transform of one accumulator (bnn_output_t BNN_OUT_TFLITE). The same
 * arithmetic as bnn_tflite_ch_out, written apart on purpose: built on bnn_tflite_ch, the
 * pointwise convolution's pair stores took 9% more instructions (GCC keeps fewer of the
 * prepared fields in registers there). */
BNN_ALWAYS_INLINE int32_t bnn_tflite_out(int32_t acc, int32_t bias, int32_t mult, int32_t shift,
                                         const bnn_output_t *output)
{
    int32_t biased = bnn_s32_from_u32((uint32_t)acc + (uint32_t)bias);
    int32_t scaled = output->q_single_rounding ? bnn_mbqm_single(biased, mult, shift)
                                               : bnn_mbqm(biased, mult, shift);
    /* the clamp in 32 bits, as bnn_tflite_ch_out */
    const int32_t zp = output->out_zero_point;
    const int32_t lo = output->act_min - zp, hi = output->act_max - zp;
    return (scaled < lo ? lo : (scaled > hi ? hi : scaled)) + zp;
}

/* Writes element `index` of `out` (int8, or float32 for BNN_OUT_FLOAT) from the exact
 * accumulator `acc` of output channel `o`; `output` has passed bnn_output_check.
 *   TFLITE: clamp(MBQM(acc + bias[o], q_mult[o], q_shift[o]) + out_zero_point, act_min, act_max)
 *           (acc + bias wraps like int32)
 *   AFFINE: clamp(round_half_even((acc * a_mult[o] + B[o]) / 2^a_shift[o]), act_min,
 *           act_max), a_offset[o] = B[o] + 2^(a_shift[o]-1)
 *   FLOAT:  f32(f32(f32(acc) * f_scale[o]) + f_offset[o]), then float_activation
 * Float outputs are stored with memcpy: `out` needs no particular alignment. */
BNN_ALWAYS_INLINE void bnn_output_store_kind(bnn_out_kind_t kind, const bnn_output_t *output,
                                             int32_t o, int32_t acc, void *out, int32_t index)
{
    if (kind == BNN_OUT_TFLITE) {
        ((int8_t *)out)[index] = (int8_t)bnn_tflite_out(
            acc, output->bias != NULL ? output->bias[o] : 0, output->q_mult[o],
            output->q_shift[o], output);
    } else if (kind == BNN_OUT_AFFINE) {
        ((int8_t *)out)[index] =
            (int8_t)bnn_affine(acc, output->a_mult[o], output->a_offset[o], output->a_shift[o],
                               output->act_min, output->act_max);
    } else {
        float y = bnn_float_transform(acc, output->f_scale[o], output->f_offset[o],
                                      output->float_activation);
        memcpy((unsigned char *)out + (size_t)index * sizeof(float), &y, sizeof(float));
    }
}

/* bnn_int8_out's `fast` for a kernel: the full int8 range, and for TFLite every bias within
 * bnn_tflite_bias_ok's bound (acc_max: the kernel's largest |acc|, bnn_acc_max). */
BNN_ALWAYS_INLINE int bnn_int8_fast(bnn_out_kind_t kind, const bnn_output_t *output,
                                    int32_t out_c, int32_t acc_max)
{
    return output->act_min == BNN_INT8_MIN && output->act_max == BNN_INT8_MAX &&
           (kind != BNN_OUT_TFLITE || bnn_tflite_bias_ok(output->bias, out_c, acc_max));
}

/* The int8 output of channel o (kind BNN_OUT_AFFINE or BNN_OUT_TFLITE) from its exact
 * accumulator, by the fast stores where they apply (bnn_affine_fast, bnn_tflite_fast; `full`:
 * bnn_int8_fast of the kernel), else as bnn_output_store_kind. Inlined into a kernel that
 * stores a channel's outputs one after the other, the constants are read once. */
BNN_ALWAYS_INLINE int32_t bnn_int8_out(bnn_out_kind_t kind, const bnn_output_t *output,
                                       int32_t o, int32_t acc, int full)
{
    (void)full; /* (unused without the fast stores) */
    if (kind == BNN_OUT_AFFINE) {
        const int32_t m = output->a_mult[o], s = output->a_shift[o];
        const int64_t b = output->a_offset[o];
#if BNN_AFFINE_FAST
        if (full && s >= 32) {
            return bnn_affine_fast(acc, m, b, s - 32);
        }
#endif
        return bnn_affine(acc, m, b, s, output->act_min, output->act_max);
    } else {
        const int32_t c = output->bias != NULL ? output->bias[o] : 0;
        const int32_t q = output->q_mult[o], s = output->q_shift[o];
#if BNN_TFLITE_FAST
        if (full && !output->q_single_rounding &&
            bnn_tflite_fast_ok(q, s, output->out_zero_point)) {
            return bnn_tflite_fast(bnn_s32_from_u32((uint32_t)acc + (uint32_t)c), q,
                                   bnn_tflite_fast_c(s, output->out_zero_point), -s);
        }
#endif
        return bnn_tflite_out(acc, c, q, s, output);
    }
}

/* bnn_output_store_kind for output->kind (a call; kernels whose inner loop is specialised per
 * kind call bnn_output_store_kind with a constant kind instead). */
static inline void bnn_output_store(const bnn_output_t *output, int32_t o, int32_t acc, void *out,
                                    int32_t index)
{
    bnn_output_store_kind(output->kind, output, o, acc, out, index);
}

/* ---- argument checks -------------------------------------------------------------------- */

/* 1 when dims is an NHWC shape with n == 1, positive h, w, c and h * w * c <= INT32_MAX
 * (so that every element index fits int32). */
static inline int bnn_dims_ok(const bnn_dims_t *dims)
{
    int64_t hw;
    if (dims == NULL || dims->n != 1 || dims->h <= 0 || dims->w <= 0 || dims->c <= 0) {
        return 0;
    }
    hw = (int64_t)dims->h * dims->w;
    return hw <= INT32_MAX && hw * dims->c <= INT32_MAX;
}

/* 1 when `out` outputs along one axis are consistent with a window of `kernel` taps spaced by
 * `dilation`, moved by `stride`, starting `pad` before the input of `in` elements:
 * stride, dilation, kernel >= 1, 0 <= pad < extent (extent = (kernel - 1) * dilation + 1, the
 * first window reaches the input), the last window starts inside the input, and `out` is the
 * largest count for some padding after the input >= 0 (implied padding after > -stride). Then
 * every window holds at least one tap inside the input, and all index arithmetic fits int32. */
static inline int bnn_window_ok(int32_t in, int32_t out, int32_t kernel, int32_t stride,
                                int32_t dilation, int32_t pad)
{
    int64_t extent;
    int64_t last_start;
    int64_t pad_after;
    if (in <= 0 || out <= 0 || kernel <= 0 || stride <= 0 || dilation <= 0 || pad < 0) {
        return 0;
    }
    extent = (int64_t)(kernel - 1) * dilation + 1;
    if (extent > INT32_MAX || pad >= extent) {
        return 0;
    }
    if ((int64_t)(out - 1) * stride > INT32_MAX) {
        return 0;
    }
    last_start = (int64_t)(out - 1) * stride - pad;
    if (last_start > (int64_t)in - 1) {
        return 0;
    }
    pad_after = last_start + extent - in;
    return pad_after > -(int64_t)stride;
}

/* [*first, *last) = the taps i of a window starting at input position `start` (taps at
 * start + i * dilation) that fall inside [0, in). */
static inline void bnn_valid_taps(int32_t start, int32_t in, int32_t kernel, int32_t dilation,
                                  int32_t *first, int32_t *last)
{
    int32_t lo = 0;
    int32_t hi = kernel;
    if (start < 0) {
        /* ceil(-start / dilation); -start < extent <= INT32_MAX, so the unsigned sum cannot
         * wrap (and the division needs no 64-bit helper on the target) */
        lo = (int32_t)(((uint32_t)(-start) + (uint32_t)(dilation - 1)) / (uint32_t)dilation);
    }
    if (start + (int64_t)(kernel - 1) * dilation > (int64_t)in - 1) {
        hi = (in - 1 - start) / dilation + 1; /* start <= in - 1 (bnn_window_ok) */
    }
    if (hi < lo) {
        hi = lo;
    }
    *first = lo;
    *last = hi;
}

/* ---- int8 inner product ----------------------------------------------------------------- */

#if BNN_USE_DSP
/* SXTB16 of x rotated right by 8 (bytes 1 and 3, sign-extended to two halfwords), and SXTAB16
 * of the same added to a: arm_acle.h has no rotate, so one instruction of inline asm each. */
static inline int32_t bnn_sxtb16_ror8(int32_t x)
{
    int32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}

static inline int32_t bnn_sxtab16_ror8(int32_t a, int32_t x)
{
    int32_t r;
    __asm__("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(a), "r"(x));
    return r;
}

/* -zp in both halfwords (zp in [-128, 127]) */
static inline int32_t bnn_neg_zp_pair(int32_t zp)
{
    uint32_t half = (uint32_t)(-zp) & 0xFFFFu;
    return bnn_s32_from_u32(half | (half << 16));
}
#endif

/* acc + sum_{k < n} w[k] * (x[k] - zp) modulo 2^32, zp in [-128, 127] (each term is exact:
 * |w * (x - zp)| <= 128 * 255). The Cortex-M7 path takes 4 elements per step: memcpy loads
 * (no alignment needed), SXTAB16 gives x[k] - zp for k = 0, 2 and (rotated) 1, 3 as int16
 * halfwords (|x - zp| <= 255), SXTB16 the weights, and two SMLADs add the four products.
 * Both paths sum the same products modulo 2^32, so they agree bit for bit. */
static inline uint32_t bnn_dot_s8(uint32_t acc, const int8_t *x, const int8_t *w, int32_t n,
                                  int32_t zp)
{
    int32_t k = 0;
#if BNN_USE_DSP
    int32_t neg_zp = bnn_neg_zp_pair(zp);
    int32_t sum = 0;
    for (; k + 4 <= n; k += 4) {
        int32_t xv;
        int32_t wv;
        memcpy(&xv, x + k, 4);
        memcpy(&wv, w + k, 4);
        sum = __smlad(__sxtab16(neg_zp, xv), __sxtb16(wv), sum);
        sum = __smlad(bnn_sxtab16_ror8(neg_zp, xv), bnn_sxtb16_ror8(wv), sum);
    }
    acc += (uint32_t)sum;
#endif
    for (; k < n; ++k) {
        acc += (uint32_t)(w[k] * (x[k] - zp));
    }
    return acc;
}

#endif /* BNN_REQUANT_H */
