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
 * Arguments: size >= 1, non-NULL pointers; zero points and [act_min, act_max] within
 * [-128, 127]; TFLITE: left_shift in [0, 31], shifts in [-31, 31]; AFFINE: affine_shift in
 * [1, 62], |affine_offset| < 2^62. Anything else: BNN_ERROR_ARGUMENT, nothing written.
 */
#include "bnn_kernels.h"
#include "bnn_requant.h"

static int shift_ok(int32_t shift)
{
    return shift >= -31 && shift <= 31;
}

bnn_status_t bnn_add_s8(const bnn_add_params_t *params, int32_t size, const int8_t *a,
                        const int8_t *b, int8_t *out)
{
    int32_t i;
    if (params == NULL || a == NULL || b == NULL || out == NULL || size <= 0 ||
        !bnn_zero_point_ok(params->a_zero_point) || !bnn_zero_point_ok(params->b_zero_point) ||
        !bnn_int8_range_ok(params->act_min, params->act_max)) {
        return BNN_ERROR_ARGUMENT;
    }
    if (params->kind == BNN_OUT_TFLITE) {
        if (params->left_shift < 0 || params->left_shift > 31 || !shift_ok(params->a_shift) ||
            !shift_ok(params->b_shift) || !shift_ok(params->out_shift) ||
            !bnn_zero_point_ok(params->out_zero_point)) {
            return BNN_ERROR_ARGUMENT;
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
        return BNN_OK;
    }
    if (params->kind == BNN_OUT_AFFINE) {
        if (params->affine_shift < 1 || params->affine_shift > 62 ||
            params->affine_offset <= -BNN_AFFINE_OFFSET_LIMIT ||
            params->affine_offset >= BNN_AFFINE_OFFSET_LIMIT) {
            return BNN_ERROR_ARGUMENT;
        }
        const int64_t ready = bnn_affine_ready_offset(params->affine_offset,
                                                      params->affine_shift);
        const int32_t ma = params->affine_mult[0], mb = params->affine_mult[1];
        const int32_t za = params->a_zero_point, zb = params->b_zero_point;
        const int32_t shift = params->affine_shift, lo = params->act_min, hi = params->act_max;
        if (shift >= 32) {
            /* the usual case, unswitched: the quotient is the high word shifted by k */
            const int32_t k = shift - 32;
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
            return BNN_OK;
        }
        {
            /* shift < 32, unswitched: q = uh * 2^(32 - shift) + floor(ul / 2^shift), with uh
             * limited to [-2^(shift-1), 2^(shift-1)) first (beyond it the result is clamped) */
            const int32_t limit = (int32_t)1 << (shift - 1);
            const int32_t up = 32 - shift;
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
        return BNN_OK;
    }
    return BNN_ERROR_ARGUMENT;
}
