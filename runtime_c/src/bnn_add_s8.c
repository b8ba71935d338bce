/*
 * bnn_add_s8: element-wise Add of two int8 tensors of `size` elements (same shape, no
 * broadcasting) (converters/reference.py `add`, docs/ir.md).
 *
 * BNN_OUT_TFLITE (TFLite int8 ADD), MBQM = MultiplyByQuantizedMultiplier (bnn_requant.h):
 *   a' = MBQM((a - a_zero_point) * 2^left_shift, a_mult, a_shift)
 *   b' = MBQM((b - b_zero_point) * 2^left_shift, b_mult, b_shift)
 *   out = clamp(MBQM(a' + b', out_mult, out_shift) + out_zero_point, act_min, act_max)
 * where (x - zp) * 2^left_shift and a' + b' wrap like C int32 arithmetic (they never do for
 * TFLite's left_shift = 20).
 * BNN_OUT_AFFINE (QKeras):
 *   t = (a - a_zero_point) * affine_mult[0] + (b - b_zero_point) * affine_mult[1]
 *       + affine_offset                                                         (int64)
 *   out = clamp(round_half_even(t / 2^affine_shift), act_min, act_max)
 *
 * Element i of a and b is read before out[i] is written: `out` may be `a` or `b` (in place).
 * TFLITE, from BNN_ADD_TABLE_MIN elements: a' and b' come from tables of their 256 values
 * (bnn_add_tflite_tables; the same integers).
 * AFFINE as the plain sum (bnn_add_is_plain_sum: M = 2^S for both, the offset (za + zb) * 2^S,
 * the full int8 range): out = saturate_int8(a + b), on the Cortex-M7 four bytes per QADD8.
 * Cortex-M7 (__ARM_FEATURE_DSP, optimized builds): the affine path runs assembly loops, one for
 * shift >= 32 and one below (bnn_add_affine_hi / _lo), with the clamp to [-128, 127] by SSAT and
 * any narrower [act_min, act_max] applied after; the same integers as the C loops.
 *
 * Arguments: size >= 1, non-NULL pointers; zero points and [act_min, act_max] within
 * [-128, 127]; TFLITE: left_shift in [0, 31], shifts in [-31, 31]; AFFINE: affine_shift in
 * [1, 62], |affine_offset| < 2^62. Anything else: BNN_ERROR_ARGUMENT, nothing written.
 */
#include <string.h>

#include "bnn_kernels.h"
#include "bnn_requant.h"

static int shift_ok(int32_t shift)
{
    return shift >= -31 && shift <= 31;
}

int bnn_add_params_ok(const bnn_add_params_t *params)
{
    if (params == NULL || !bnn_zero_point_ok(params->a_zero_point) ||
        !bnn_zero_point_ok(params->b_zero_point) ||
        !bnn_int8_range_ok(params->act_min, params->act_max)) {
        return 0;
    }
    if (params->kind == BNN_OUT_TFLITE) {
        return params->left_shift >= 0 && params->left_shift <= 31 &&
               shift_ok(params->a_shift) && shift_ok(params->b_shift) &&
               shift_ok(params->out_shift) && bnn_zero_point_ok(params->out_zero_point);
    }
    if (params->kind == BNN_OUT_AFFINE) {
        return params->affine_shift >= 1 && params->affine_shift <= 62 &&
               params->affine_offset > -BNN_AFFINE_OFFSET_LIMIT &&
               params->affine_offset < BNN_AFFINE_OFFSET_LIMIT;
    }
    return 0;
}

bnn_status_t bnn_add_s8(const bnn_add_params_t *params, int32_t size, const int8_t *a,
                        const int8_t *b, int8_t *out)
{
    if (a == NULL || b == NULL || out == NULL || size <= 0 || !bnn_add_params_ok(params)) {
        return BNN_ERROR_ARGUMENT;
    }
    bnn_add_s8_prepared_t prepared;
    bnn_add_s8_prepare(params, &prepared);
    bnn_add_s8_run(&prepared, size, a, b, out);
    return BNN_OK;
}

#if BNN_USE_DSP && defined(__GNUC__) && defined(__OPTIMIZE__)
#define BNN_ADD_ASM 1
/* The two loops' common parts: the sum t = a[i] * ma + b[i] * mb + c in lo:hi (the constant c
 * read from memory by LDRD), and the store of x saturated to int8, then the next element. */
#define BNN_ADD_ASM_LOAD                                                                       \
    "1:\n\t"                                                                                   \
    "ldrsb %[x], [%[pa], %[i]]\n\t"                                                            \
    "ldrsb %[y], [%[pb], %[i]]\n\t"                                                            \
    "ldrd %[lo], %[hi], %[c]\n\t"                                                              \
    "smlal %[lo], %[hi], %[x], %[ma]\n\t"                                                      \
    "smlal %[lo], %[hi], %[y], %[mb]\n\t"
#define BNN_ADD_ASM_STORE                                                                      \
    "2:\n\t"                                                                                   \
    "ssat %[x], #8, %[x]\n\t"                                                                  \
    "strb %[x], [%[po], %[i]]\n\t"                                                             \
    "adds %[i], %[i], #1\n\t"                                                                  \
    "bne 1b\n\t"                                                                               \
    "b 4f\n"
/* The affine Add for shift = 32 + k (0 <= k <= 30) on the Cortex-M7, before the clamp to
 * [act_min, act_max]: out[i] = ssat8(round_half_even(t / 2^(32 + k))) with
 * t = a[i] * ma + b[i] * mb + c, c = ready - za * ma - zb * mb (the zero points folded into
 * the offset: the same int64 sum, exact, as every term is below 2^62 + 2^61 + 2^40). Element i
 * is read before out[i] is written. Two SMLALs, an ASR and a tie test that is almost never
 * taken; 12 instructions per element. */
static void bnn_add_affine_hi(int32_t size, const int8_t *a, const int8_t *b, int8_t *out,
                              int32_t ma, int32_t mb, int64_t c, int32_t k)
{
    /* pointers at the ends and a negative index counting up to 0: no end register */
    const int8_t *a_end = a + size;
    const int8_t *b_end = b + size;
    int8_t *out_end = out + size;
    int32_t i = -size;
    const int64_t c_mem = c; /* read by LDRD from the stack: two registers fewer */
    int32_t x, y;
    uint32_t lo, hi;
    __asm__ volatile(
        BNN_ADD_ASM_LOAD
        "asr %[x], %[hi], %[k]\n\t"
        "cmp %[lo], #0\n\t"
        "beq 3f\n"
        BNN_ADD_ASM_STORE
        /* the low word is 0: a tie when the low k bits of the high word are 0 too (k = 0:
         * a shift by 32 leaves 0); then half to even clears the quotient's bit 0 */
        "3:\n\t"
        "rsb %[lo], %[k], #32\n\t"
        "lsl %[lo], %[hi], %[lo]\n\t"
        "cmp %[lo], #0\n\t"
        "it eq\n\t"
        "biceq %[x], %[x], #1\n\t"
        "b 2b\n"
        "4:\n"
        : [i] "+&r"(i), [x] "=&r"(x), [y] "=&r"(y), [lo] "=&r"(lo), [hi] "=&r"(hi)
        : [pa] "r"(a_end), [pb] "r"(b_end), [po] "r"(out_end), [ma] "r"(ma), [mb] "r"(mb),
          [c] "m"(c_mem), [k] "r"(k)
        : "cc", "memory");
}

/* The same for shift s < 32 (up = 32 - s): the quotient is (hi << up) | (lo >> s) when hi
 * fits s signed bits, which holds iff shifting it back gives hi; otherwise it is beyond int32
 * and saturates by the sign of hi. A tie: the low s bits of lo are 0 (lo << up == 0). */
static void bnn_add_affine_lo(int32_t size, const int8_t *a, const int8_t *b, int8_t *out,
                              int32_t ma, int32_t mb, int64_t c, int32_t s)
{
    const int8_t *a_end = a + size;
    const int8_t *b_end = b + size;
    int8_t *out_end = out + size;
    int32_t i = -size;
    int32_t up = 32 - s;
    const int64_t c_mem = c; /* read by LDRD from the stack: two registers fewer */
    int32_t x, y;
    uint32_t lo, hi;
    __asm__ volatile(
        BNN_ADD_ASM_LOAD
        "lsl %[x], %[hi], %[up]\n\t"
        "lsr %[y], %[lo], %[s]\n\t"
        "orr %[x], %[x], %[y]\n\t"
        "asr %[y], %[x], %[up]\n\t"
        "cmp %[y], %[hi]\n\t"
        "bne 5f\n\t"
        "lsls %[y], %[lo], %[up]\n\t"
        "beq 3f\n"
        BNN_ADD_ASM_STORE
        "3:\n\t" /* a tie: half to even */
        "bic %[x], %[x], #1\n\t"
        "b 2b\n"
        "5:\n\t" /* beyond int32: the sign of hi decides */
        "asr %[x], %[hi], #31\n\t"
        "eor %[x], %[x], #127\n\t"
        "b 2b\n"
        "4:\n"
        : [i] "+&r"(i), [x] "=&r"(x), [y] "=&r"(y), [lo] "=&r"(lo), [hi] "=&r"(hi)
        : [pa] "r"(a_end), [pb] "r"(b_end), [po] "r"(out_end), [ma] "r"(ma), [mb] "r"(mb),
          [c] "m"(c_mem), [s] "r"(s), [up] "r"(up)
        : "cc", "memory");
}
#else
#define BNN_ADD_ASM 0
#endif

/* Elements from which the TFLite Add builds its tables (512 MultiplyByQuantizedMultiplier). */
#define BNN_ADD_TABLE_MIN 256

/* The TFLite Add by tables: a' and b' depend on one int8 value each, so both are computed once
 * for all 256 values (2 KB on the stack, in this function's frame only), and each element
 * costs two lookups, the sum and the output's MBQM (bnn_tflite_fast where it applies). The
 * same integers as the element loop of bnn_add_s8_run. */
#if BNN_TFLITE_FAST
/* The largest |t[v]| of a table of 256 values. */
BNN_ALWAYS_INLINE int64_t bnn_add_table_max(const int32_t *t)
{
    int64_t m = 0;
    int32_t v;
    for (v = 0; v < 256; ++v) {
        const int64_t x = t[v] < 0 ? -(int64_t)t[v] : t[v];
        m = x > m ? x : m;
    }
    return m;
}
#endif

BNN_NOINLINE void bnn_add_tflite_tables(const bnn_add_params_t *params, int32_t size,
                                        const int8_t *a, const int8_t *b, int8_t *out)
{
    int32_t ta[256], tb[256];
    /* the tables indexed by the int8 value itself (-128 .. 127) */
    const int32_t *const pa = ta + 128;
    const int32_t *const pb = tb + 128;
    int32_t v, i;
    const int32_t lo = params->act_min, hi = params->act_max, zp = params->out_zero_point;
    for (v = 0; v < 256; ++v) {
        uint32_t da = (uint32_t)(v - 128 - params->a_zero_point) << params->left_shift;
        uint32_t db = (uint32_t)(v - 128 - params->b_zero_point) << params->left_shift;
        ta[v] = bnn_mbqm(bnn_s32_from_u32(da), params->a_mult, params->a_shift);
        tb[v] = bnn_mbqm(bnn_s32_from_u32(db), params->b_mult, params->b_shift);
    }
#if BNN_TFLITE_FAST
    if (lo == BNN_INT8_MIN && hi == BNN_INT8_MAX &&
        bnn_tflite_fast_ok(params->out_mult, params->out_shift, zp) &&
        bnn_add_table_max(ta) + bnn_add_table_max(tb) < (int64_t)1 << 30) {
        /* every sum within (-2^30, 2^30): bnn_tflite_fast applies */
        const int32_t m = params->out_mult, e = -params->out_shift;
        const int32_t c = bnn_tflite_fast_c(params->out_shift, zp);
        for (i = 0; i < size; ++i) {
            uint32_t sum = (uint32_t)pa[a[i]] + (uint32_t)pb[b[i]];
            out[i] = (int8_t)bnn_tflite_fast(bnn_s32_from_u32(sum), m, c, e);
        }
        return;
    }
#endif
    for (i = 0; i < size; ++i) {
        uint32_t sum = (uint32_t)pa[a[i]] + (uint32_t)pb[b[i]];
        int32_t scaled = bnn_mbqm(bnn_s32_from_u32(sum), params->out_mult, params->out_shift);
        /* the clamp in 32 bits, as bnn_tflite_out */
        scaled = scaled < lo - zp ? lo - zp : (scaled > hi - zp ? hi - zp : scaled);
        out[i] = (int8_t)(scaled + zp);
    }
}

void bnn_add_s8_prepare(const bnn_add_params_t *params, bnn_add_s8_prepared_t *prepared)
{
    prepared->params = params;
    prepared->ready = 0;
    prepared->folded = 0;
    if (params->kind == BNN_OUT_AFFINE) {
        prepared->ready = bnn_affine_ready_offset(params->affine_offset, params->affine_shift);
        prepared->folded = prepared->ready - (int64_t)params->a_zero_point *
                                                 params->affine_mult[0] -
                           (int64_t)params->b_zero_point * params->affine_mult[1];
    }
}

void bnn_add_s8_run(const bnn_add_s8_prepared_t *prepared, int32_t size, const int8_t *a,
                    const int8_t *b, int8_t *out)
{
    const bnn_add_params_t *params = prepared->params;
    int32_t i;
    if (params->kind == BNN_OUT_TFLITE) {
        if (size >= BNN_ADD_TABLE_MIN) {
            bnn_add_tflite_tables(params, size, a, b, out);
            return;
        }
        for (i = 0; i < size; ++i) {
            uint32_t da = (uint32_t)(a[i] - params->a_zero_point) << params->left_shift;
            uint32_t db = (uint32_t)(b[i] - params->b_zero_point) << params->left_shift;
            int32_t sa = bnn_mbqm(bnn_s32_from_u32(da), params->a_mult, params->a_shift);
            int32_t sb = bnn_mbqm(bnn_s32_from_u32(db), params->b_mult, params->b_shift);
            int32_t sum = bnn_s32_from_u32((uint32_t)sa + (uint32_t)sb);
            int32_t scaled = bnn_mbqm(sum, params->out_mult, params->out_shift);
            out[i] = (int8_t)bnn_clamp((int64_t)scaled + params->out_zero_point, params->act_min,
                                       params->act_max);
        }
        return;
    }
    if (bnn_add_is_plain_sum(params)) { /* out = saturate_int8(a + b), 4 bytes per QADD8 */
        i = 0;
#if BNN_USE_DSP
        for (; i + 4 <= size; i += 4) { /* (the 4 bytes read before they are written) */
            uint32_t x, y;
            memcpy(&x, a + i, sizeof x);
            memcpy(&y, b + i, sizeof y);
            x = __qadd8(x, y);
            memcpy(out + i, &x, sizeof x);
        }
#endif
        for (; i < size; ++i) {
            out[i] = (int8_t)bnn_clamp32(a[i] + b[i], BNN_INT8_MIN, BNN_INT8_MAX);
        }
        return;
    }
    {
        const int64_t ready = prepared->ready;
        const int32_t ma = params->affine_mult[0], mb = params->affine_mult[1];
        const int32_t za = params->a_zero_point, zb = params->b_zero_point;
        const int32_t shift = params->affine_shift, lo = params->act_min, hi = params->act_max;
        if (shift >= 32) {
            /* the usual case, unswitched: the quotient is the high word shifted by k */
            const int32_t k = shift - 32;
#if BNN_ADD_ASM
            bnn_add_affine_hi(size, a, b, out, ma, mb, prepared->folded, k);
            if (lo > BNN_INT8_MIN || hi < BNN_INT8_MAX) {
                for (i = 0; i < size; ++i) {
                    out[i] = (int8_t)bnn_clamp32(out[i], lo, hi);
                }
            }
            return;
#endif
            for (i = 0; i < size; ++i) {
                int64_t u = (int64_t)(a[i] - za) * ma + (int64_t)(b[i] - zb) * mb + ready;
                uint32_t ul = (uint32_t)(uint64_t)u;
                int32_t uh = bnn_s32_from_u32((uint32_t)((uint64_t)u >> 32));
                int32_t q = bnn_asr32(uh, k);
                if (BNN_UNLIKELY(ul == 0u) && (((uint32_t)uh << 1) << (31 - k)) == 0u) {
                    q -= (int32_t)((uint32_t)q & 1u); /* an exact tie: half to even */
                }
                out[i] = (int8_t)(q > hi ? hi : (q < lo ? lo : q));
            }
            return;
        }
        {
            /* shift < 32, unswitched: q = uh * 2^(32 - shift) + floor(ul / 2^shift), with uh
             * limited to [-2^(shift-1), 2^(shift-1)) first (beyond it the result is clamped) */
            const int32_t limit = (int32_t)1 << (shift - 1);
            const int32_t up = 32 - shift;
#if BNN_ADD_ASM
            bnn_add_affine_lo(size, a, b, out, ma, mb, prepared->folded, shift);
            if (lo > BNN_INT8_MIN || hi < BNN_INT8_MAX) {
                for (i = 0; i < size; ++i) {
                    out[i] = (int8_t)bnn_clamp32(out[i], lo, hi);
                }
            }
            (void)limit;
            (void)up;
            return;
#endif
            for (i = 0; i < size; ++i) {
                /* |each term| <= 255 * 2^31 < 2^40, |ready| < 2^62 + 2^61: no overflow */
                int64_t u = (int64_t)(a[i] - za) * ma + (int64_t)(b[i] - zb) * mb + ready;
                uint32_t ul = (uint32_t)(uint64_t)u;
                int32_t uh = bnn_s32_from_u32((uint32_t)((uint64_t)u >> 32));
                int32_t q;
                if (uh >= limit) {
                    q = hi;
                } else if (uh < -limit) {
                    q = lo;
                } else {
                    q = bnn_s32_from_u32(((uint32_t)uh << up) + (ul >> shift));
                    if (BNN_UNLIKELY((ul << up) == 0u)) {
                        q -= (int32_t)((uint32_t)q & 1u); /* an exact tie: half to even */
                    }
                    q = q > hi ? hi : (q < lo ? lo : q);
                }
                out[i] = (int8_t)q;
            }
        }
    }
}

