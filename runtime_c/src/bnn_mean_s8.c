/*
 * bnn_mean_s8: mean of an int8 NHWC tensor over H and W (TFLite int8 MEAN with axes (1, 2),
 * converters/reference.py `mean`), output [C].
 *
 *   n = H * W; (q, shift) = (q_mult, q_shift) = QuantizeMultiplier(double(s_in) / double(s_out))
 *   k = min(floor(log2 n), 32, 31 + shift); q' = (q * 2^k) / n (int64, truncating);
 *   shift' = shift - k
 *   out[c] = clamp(MultiplyByQuantizedMultiplier(sum_{y,x} in[y, x, c] - in_zero_point * n,
 *                                                 q', shift') + out_zero_point, -128, 127)
 * where the sum minus in_zero_point * n wraps like C int32 arithmetic (it cannot for
 * n < 2^23).
 *
 * Arguments: in_dims [1, H, W, C], q_mult >= 0, q_shift in [-31, 31], zero points within
 * [-128, 127]. Anything else: BNN_ERROR_ARGUMENT, nothing written.
 */
#include "bnn_kernels.h"
#include "bnn_requant.h"

bnn_status_t bnn_mean_s8(int32_t q_mult, int32_t q_shift, int32_t in_zero_point,
                         int32_t out_zero_point, const bnn_dims_t *in_dims, const int8_t *in,
                         int8_t *out)
{
    int32_t n, k, log2n, c, i;
    int32_t mult, shift;
    if (in == NULL || out == NULL || !bnn_dims_ok(in_dims) || q_mult < 0 || q_shift < -31 ||
        q_shift > 31 || !bnn_zero_point_ok(in_zero_point) || !bnn_zero_point_ok(out_zero_point)) {
        return BNN_ERROR_ARGUMENT;
    }
    n = in_dims->h * in_dims->w; /* <= INT32_MAX (bnn_dims_ok) */
    log2n = 0;
    while ((n >> (log2n + 1)) != 0) {
        ++log2n;
    }
    k = log2n; /* <= 30 < 32 */
    if (31 + q_shift < k) {
        k = 31 + q_shift; /* >= 0 */
    }
    /* q * 2^k < 2^62; the quotient is at most q (2^k <= n), so it fits int32 */
    mult = (int32_t)(((int64_t)q_mult << k) / n);
    shift = q_shift - k; /* >= -31 */
    for (c = 0; c < in_dims->c; ++c) {
        uint32_t sum = 0;
        int32_t scaled;
        for (i = 0; i < n; ++i) {
            sum += (uint32_t)(int32_t)in[i * in_dims->c + c];
        }
        sum -= (uint32_t)in_zero_point * (uint32_t)n;
        scaled = bnn_mbqm(bnn_s32_from_u32(sum), mult, shift);
        out[c] = (int8_t)bnn_clamp((int64_t)scaled + out_zero_point, BNN_INT8_MIN, BNN_INT8_MAX);
    }
    return BNN_OK;
}
