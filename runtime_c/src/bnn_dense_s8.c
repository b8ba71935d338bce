/*
 * bnn_dense_s8: Dense (TFLite FULLY_CONNECTED) with int8 input [K] and int8 filter [O, K]
 * (converters/reference.py `dense`, docs/ir.md).
 *
 *   acc[o] = sum_{k < K} filter[o, k] * (in[k] - input_zero_point)
 *
 * exact in int32 (computed modulo 2^32). out[o] = the output transform of acc for channel o,
 * as bnn_conv2d_s8 (BNN_OUT_TFLITE / BNN_OUT_AFFINE int8, BNN_OUT_FLOAT float32;
 * bnn_output_store). For BNN_OUT_TFLITE the caller passes the multiplier TFLite uses: with a
 * per-tensor weight scale, QuantizeMultiplier(double(f32(s_in * s_w)) / double(s_out)).
 *
 * Arguments: K = in_features >= 1, O = out_features >= 1, K * O <= INT32_MAX; only
 * params->input_zero_point is read; ctx may be NULL. Anything else: BNN_ERROR_ARGUMENT,
 * nothing written.
 *
 * Cortex-M7 (__ARM_FEATURE_DSP, unless BNN_FORCE_PLAIN_C): the inner product runs 4 elements
 * per step with SXTAB16/SXTB16 + SMLAD (bnn_dot_s8), bit-exact with the plain sum.
 */
#include "bnn_kernels.h"
#include "bnn_requant.h"

bnn_status_t bnn_dense_s8(const bnn_context_t *ctx, const bnn_conv_params_t *params,
                          const bnn_output_t *output, int32_t in_features, const int8_t *in,
                          int32_t out_features, const int8_t *filter, void *out)
{
    int32_t o;
    (void)ctx;
    if (params == NULL || in == NULL || filter == NULL || out == NULL || in_features <= 0 ||
        out_features <= 0 || (int64_t)in_features * out_features > INT32_MAX ||
        !bnn_zero_point_ok(params->input_zero_point)) {
        return BNN_ERROR_ARGUMENT;
    }
    if (bnn_output_check(output, out_features) != BNN_OK) {
        return BNN_ERROR_ARGUMENT;
    }
    for (o = 0; o < out_features; ++o) {
        uint32_t acc = bnn_dot_s8(0u, in, filter + (size_t)o * (size_t)in_features, in_features,
                                  params->input_zero_point);
        bnn_output_store(output, o, bnn_s32_from_u32(acc), out, o);
    }
    return BNN_OK;
}
