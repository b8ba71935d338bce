/*
 * bnn_conv2d_s8: Conv2D with int8 input and int8 filter (OHWI), any kernel size, stride,
 * dilation and padding (converters/reference.py `conv2d`, docs/ir.md).
 *
 *   acc[y, x, o] = sum_{i < KH, j < KW, c < C} filter[o, i, j, c] *
 *                  (in[y * stride_h - pad_top + i * dilation_h,
 *                      x * stride_w - pad_left + j * dilation_w, c] - input_zero_point)
 *
 * over the taps inside the input only (a tap in the padding counts 0: the input is padded
 * with its zero point). The sum is exact in int32 (it is computed modulo 2^32, which changes
 * nothing while |acc| < 2^31; every product is at most 128 * 255 in magnitude).
 * out[y, x, o] = the output transform of acc for channel o (bnn_requant.h, bnn_output_store):
 *   BNN_OUT_TFLITE  clamp(MultiplyByQuantizedMultiplier(acc + bias[o], q_mult[o], q_shift[o])
 *                   + out_zero_point, act_min, act_max)                           int8
 *   BNN_OUT_AFFINE  clamp(round_half_even((acc * a_mult[o] + a_offset[o]) / 2^a_shift[o]),
 *                   act_min, act_max)                                              int8
 *   BNN_OUT_FLOAT   f32(f32(f32(acc) * f_scale[o]) + f_offset[o]), then ReLU / ReLU6  float32
 *
 * Arguments: in_dims [1, H, W, C], filter_dims [O, KH, KW, C], out_dims [1, OH, OW, O]; the
 * output dims must be those of the geometry for some padding after the input (see
 * bnn_window_ok); ctx may be NULL (no scratch is used). Anything else: BNN_ERROR_ARGUMENT,
 * with nothing written.
 *
 * Cortex-M7 (__ARM_FEATURE_DSP, unless BNN_FORCE_PLAIN_C): the inner product over the C
 * channels of each tap (contiguous in both the NHWC input and the OHWI filter) runs 4
 * channels per step with SXTAB16/SXTB16 + SMLAD (bnn_dot_s8); for a 1x1 kernel that is the
 * whole pointwise inner product. The result is the same sum modulo 2^32: bit-exact.
 */
#include "bnn_kernels.h"
#include "bnn_requant.h"

int32_t bnn_conv2d_s8_scratch_size(const bnn_dims_t *in_dims, const bnn_dims_t *filter_dims,
                                   const bnn_dims_t *out_dims)
{
    (void)in_dims;
    (void)filter_dims;
    (void)out_dims;
    return 0;
}

bnn_status_t bnn_conv2d_s8(const bnn_context_t *ctx, const bnn_conv_params_t *params,
                           const bnn_output_t *output, const bnn_dims_t *in_dims,
                           const int8_t *in, const bnn_dims_t *filter_dims, const int8_t *filter,
                           const bnn_dims_t *out_dims, void *out)
{
    int32_t in_h, in_w, in_c, kh, kw, out_h, out_w, out_c, zp;
    int32_t oy, ox, o;
    int64_t filter_size;
    (void)ctx;

    if (params == NULL || in == NULL || filter_dims == NULL || filter == NULL || out == NULL ||
        !bnn_dims_ok(in_dims) || !bnn_dims_ok(out_dims)) {
        return BNN_ERROR_ARGUMENT;
    }
    in_h = in_dims->h;
    in_w = in_dims->w;
    in_c = in_dims->c;
    kh = filter_dims->h;
    kw = filter_dims->w;
    out_h = out_dims->h;
    out_w = out_dims->w;
    out_c = out_dims->c;
    zp = params->input_zero_point;
    if (filter_dims->n != out_c || filter_dims->c != in_c || kh <= 0 || kw <= 0 ||
        !bnn_zero_point_ok(zp) ||
        !bnn_window_ok(in_h, out_h, kh, params->stride_h, params->dilation_h, params->pad_top) ||
        !bnn_window_ok(in_w, out_w, kw, params->stride_w, params->dilation_w, params->pad_left)) {
        return BNN_ERROR_ARGUMENT;
    }
    filter_size = (int64_t)kh * kw;
    if (filter_size > INT32_MAX || filter_size * in_c > INT32_MAX ||
        filter_size * in_c * out_c > INT32_MAX) {
        return BNN_ERROR_ARGUMENT;
    }
    if (bnn_output_check(output, out_c) != BNN_OK) {
        return BNN_ERROR_ARGUMENT;
    }

    for (oy = 0; oy < out_h; ++oy) {
        int32_t y0 = oy * params->stride_h - params->pad_top;
        int32_t i_first, i_last;
        bnn_valid_taps(y0, in_h, kh, params->dilation_h, &i_first, &i_last);
        for (ox = 0; ox < out_w; ++ox) {
            int32_t x0 = ox * params->stride_w - params->pad_left;
            int32_t j_first, j_last;
            int32_t out_index = (oy * out_w + ox) * out_c;
            bnn_valid_taps(x0, in_w, kw, params->dilation_w, &j_first, &j_last);
            for (o = 0; o < out_c; ++o) {
                const int8_t *f = filter + (size_t)o * (size_t)(kh * kw * in_c);
                uint32_t acc = 0;
                int32_t i, j;
                for (i = i_first; i < i_last; ++i) {
                    int32_t iy = y0 + i * params->dilation_h;
                    for (j = j_first; j < j_last; ++j) {
                        int32_t ix = x0 + j * params->dilation_w;
                        acc = bnn_dot_s8(acc, in + (size_t)((iy * in_w + ix) * in_c),
                                         f + (size_t)((i * kw + j) * in_c), in_c, zp);
                    }
                }
                bnn_output_store(output, o, bnn_s32_from_u32(acc), out, out_index + o);
            }
        }
    }
    return BNN_OK;
}
