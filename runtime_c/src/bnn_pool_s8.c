/*
 * bnn_avgpool_s8, bnn_maxpool_s8: pooling of int8 NHWC tensors over pool_h x pool_w windows
 * (converters/reference.py `average_pool2d`, `max_pool2d`; TFLite int8 reference kernels).
 * Input and output share their quantization; only the taps inside the input count.
 *
 * Window of output (y, x): input rows y * stride_h - pad_top + i (i < pool_h) and columns
 * x * stride_w - pad_left + j (j < pool_w) that fall inside the input; n = their number.
 *   average: sum = sum of the raw int8 values (no zero point) over the window,
 *            avg = (sum + n / 2) / n if sum > 0 else (sum - n / 2) / n
 *            (C integer division, truncating: round half away from zero),
 *            out = clamp(avg, act_min, act_max)
 *   max:     out = clamp(max over the window, act_min, act_max)
 *
 * Arguments: in_dims [1, H, W, C], out_dims [1, OH, OW, C], pool_h, pool_w >= 1 (average:
 * pool_h * pool_w <= 2^22, so the sum fits int32), strides >= 1, pads >= 0 and output dims
 * consistent with the geometry (bnn_window_ok: every window holds at least one input tap),
 * [act_min, act_max] within [-128, 127]. The dilation, pad_value, depth_multiplier and
 * input_zero_point fields of params are not used. Anything else: BNN_ERROR_ARGUMENT, nothing
 * written.
 */
#include "bnn_kernels.h"
#include "bnn_requant.h"

static int pool_args_ok(const bnn_conv_params_t *params, int32_t pool_h, int32_t pool_w,
                        int32_t act_min, int32_t act_max, const bnn_dims_t *in_dims,
                        const int8_t *in, const bnn_dims_t *out_dims, const int8_t *out)
{
    return params != NULL && in != NULL && out != NULL && bnn_dims_ok(in_dims) &&
           bnn_dims_ok(out_dims) && in_dims->c == out_dims->c &&
           bnn_int8_range_ok(act_min, act_max) &&
           bnn_window_ok(in_dims->h, out_dims->h, pool_h, params->stride_h, 1, params->pad_top) &&
           bnn_window_ok(in_dims->w, out_dims->w, pool_w, params->stride_w, 1, params->pad_left);
}

bnn_status_t bnn_avgpool_s8(const bnn_conv_params_t *params, int32_t pool_h, int32_t pool_w,
                            int32_t act_min, int32_t act_max, const bnn_dims_t *in_dims,
                            const int8_t *in, const bnn_dims_t *out_dims, int8_t *out)
{
    int32_t oy, ox, c;
    if (!pool_args_ok(params, pool_h, pool_w, act_min, act_max, in_dims, in, out_dims, out) ||
        (int64_t)pool_h * pool_w > ((int64_t)1 << 22)) {
        return BNN_ERROR_ARGUMENT;
    }
    for (oy = 0; oy < out_dims->h; ++oy) {
        int32_t y0 = oy * params->stride_h - params->pad_top;
        int32_t i_first, i_last;
        bnn_valid_taps(y0, in_dims->h, pool_h, 1, &i_first, &i_last);
        for (ox = 0; ox < out_dims->w; ++ox) {
            int32_t x0 = ox * params->stride_w - params->pad_left;
            int32_t j_first, j_last, count;
            bnn_valid_taps(x0, in_dims->w, pool_w, 1, &j_first, &j_last);
            count = (i_last - i_first) * (j_last - j_first); /* >= 1 (bnn_window_ok) */
            for (c = 0; c < in_dims->c; ++c) {
                int32_t sum = 0; /* |sum| <= 128 * 2^22 */
                int32_t avg, i, j;
                for (i = i_first; i < i_last; ++i) {
                    int32_t row = (y0 + i) * in_dims->w + x0;
                    for (j = j_first; j < j_last; ++j) {
                        sum += in[(row + j) * in_dims->c + c];
                    }
                }
                avg = sum > 0 ? (sum + count / 2) / count : (sum - count / 2) / count;
                out[(oy * out_dims->w + ox) * out_dims->c + c] =
                    (int8_t)bnn_clamp(avg, act_min, act_max);
            }
        }
    }
    return BNN_OK;
}

bnn_status_t bnn_maxpool_s8(const bnn_conv_params_t *params, int32_t pool_h, int32_t pool_w,
                            int32_t act_min, int32_t act_max, const bnn_dims_t *in_dims,
                            const int8_t *in, const bnn_dims_t *out_dims, int8_t *out)
{
    int32_t oy, ox, c;
    if (!pool_args_ok(params, pool_h, pool_w, act_min, act_max, in_dims, in, out_dims, out)) {
        return BNN_ERROR_ARGUMENT;
    }
    for (oy = 0; oy < out_dims->h; ++oy) {
        int32_t y0 = oy * params->stride_h - params->pad_top;
        int32_t i_first, i_last;
        bnn_valid_taps(y0, in_dims->h, pool_h, 1, &i_first, &i_last);
        for (ox = 0; ox < out_dims->w; ++ox) {
            int32_t x0 = ox * params->stride_w - params->pad_left;
            int32_t j_first, j_last;
            bnn_valid_taps(x0, in_dims->w, pool_w, 1, &j_first, &j_last);
            for (c = 0; c < in_dims->c; ++c) {
                int32_t best = BNN_INT8_MIN;
                int32_t i, j;
                for (i = i_first; i < i_last; ++i) {
                    int32_t row = (y0 + i) * in_dims->w + x0;
                    for (j = j_first; j < j_last; ++j) {
                        int32_t v = in[(row + j) * in_dims->c + c];
                        best = v > best ? v : best;
                    }
                }
                out[(oy * out_dims->w + ox) * out_dims->c + c] =
                    (int8_t)bnn_clamp(best, act_min, act_max);
            }
        }
    }
    return BNN_OK;
}
