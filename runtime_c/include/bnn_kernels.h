/*
 * bnncube C runtime: kernel entry points. Each kernel's exact arithmetic is stated at the top
 * of its source file (src/bnn_<op>_<types>.c) and equals the Python reference bit for bit.
 *
 * Variants: bnn_<op>_<types> is the general kernel, valid for every shape; a variant
 * (bnn_<op>_<variant>_<types>, e.g. _1x1_, _3x3_) accepts fewer shapes (its comment says which,
 * and it returns BNN_ERROR_ARGUMENT for others) and may be faster. The code generator picks
 * the variant at generation time. Where it pays, a kernel has a Cortex-M7 path compiled under
 * __ARM_FEATURE_DSP and a plain C path otherwise; BNN_FORCE_PLAIN_C selects the plain path
 * everywhere (tests build both and compare them).
 */
#ifndef BNN_KERNELS_H
#define BNN_KERNELS_H

#include "bnn_types.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- int8 multiply-accumulate ops ------------------------------------------------------ */

/* Conv2D, int8 input and filter (OHWI), output by `output` (int8, or float32 for
 * BNN_OUT_FLOAT). ctx may be NULL; bnn_conv2d_s8_scratch_size gives the scratch (ctx->buf,
 * 4-byte aligned, ctx->size bytes) that makes a deep pointwise layer (1x1, C > 128) faster on
 * the Cortex-M7: 8 * C bytes for such a filter, else 0. The result is the same without it. */
bnn_status_t bnn_conv2d_s8(const bnn_context_t *ctx, const bnn_conv_params_t *params,
                           const bnn_output_t *output, const bnn_dims_t *in_dims,
                           const int8_t *in, const bnn_dims_t *filter_dims, const int8_t *filter,
                           const bnn_dims_t *out_dims, void *out);
int32_t bnn_conv2d_s8_scratch_size(const bnn_dims_t *in_dims, const bnn_dims_t *filter_dims,
                                   const bnn_dims_t *out_dims);
/* The same for one output transform only (output->kind must be it; anything else:
 * BNN_ERROR_ARGUMENT). Generated code calls these, so that the linker (--gc-sections) drops the
 * transforms a network does not use. Likewise for the depthwise convolution below. */
bnn_status_t bnn_conv2d_s8_affine(const bnn_context_t *ctx, const bnn_conv_params_t *params,
                                  const bnn_output_t *output, const bnn_dims_t *in_dims,
                                  const int8_t *in, const bnn_dims_t *filter_dims,
                                  const int8_t *filter, const bnn_dims_t *out_dims, void *out);
bnn_status_t bnn_conv2d_s8_tflite(const bnn_context_t *ctx, const bnn_conv_params_t *params,
                                  const bnn_output_t *output, const bnn_dims_t *in_dims,
                                  const int8_t *in, const bnn_dims_t *filter_dims,
                                  const int8_t *filter, const bnn_dims_t *out_dims, void *out);
bnn_status_t bnn_conv2d_s8_float(const bnn_context_t *ctx, const bnn_conv_params_t *params,
                                 const bnn_output_t *output, const bnn_dims_t *in_dims,
                                 const int8_t *in, const bnn_dims_t *filter_dims,
                                 const int8_t *filter, const bnn_dims_t *out_dims, void *out);

/* DepthwiseConv2D, filter 1 x KH x KW x (C * depth_multiplier). In place: `out` may be `in`
 * itself when depth_multiplier = 1, the output is int8 and every output pixel's first input
 * pixel (the smallest row-major index, y * W + x, among its taps inside the input) is at or
 * after the output pixel's own index (true for stride-2 "same" and for "valid" windows): each
 * channel's outputs are written in row-major order, each after all its taps were read
 * (plugin/planner.py `_depthwise_in_place` decides it for generated code). */
bnn_status_t bnn_depthwise_conv2d_s8(const bnn_context_t *ctx, const bnn_conv_params_t *params,
                                     const bnn_output_t *output, const bnn_dims_t *in_dims,
                                     const int8_t *in, const bnn_dims_t *filter_dims,
                                     const int8_t *filter, const bnn_dims_t *out_dims, void *out);
bnn_status_t bnn_depthwise_conv2d_s8_affine(const bnn_context_t *ctx,
                                            const bnn_conv_params_t *params,
                                            const bnn_output_t *output, const bnn_dims_t *in_dims,
                                            const int8_t *in, const bnn_dims_t *filter_dims,
                                            const int8_t *filter, const bnn_dims_t *out_dims,
                                            void *out);
bnn_status_t bnn_depthwise_conv2d_s8_tflite(const bnn_context_t *ctx,
                                            const bnn_conv_params_t *params,
                                            const bnn_output_t *output, const bnn_dims_t *in_dims,
                                            const int8_t *in, const bnn_dims_t *filter_dims,
                                            const int8_t *filter, const bnn_dims_t *out_dims,
                                            void *out);
bnn_status_t bnn_depthwise_conv2d_s8_float(const bnn_context_t *ctx,
                                           const bnn_conv_params_t *params,
                                           const bnn_output_t *output, const bnn_dims_t *in_dims,
                                           const int8_t *in, const bnn_dims_t *filter_dims,
                                           const int8_t *filter, const bnn_dims_t *out_dims,
                                           void *out);

/* Dense: in [in_features] (int8, zero point params->input_zero_point), filter [O, in_features]. */
bnn_status_t bnn_dense_s8(const bnn_context_t *ctx, const bnn_conv_params_t *params,
                          const bnn_output_t *output, int32_t in_features, const int8_t *in,
                          int32_t out_features, const int8_t *filter, void *out);

/* ---- binary ------------------------------------------------------------------------------ */

/* Bitpack `rows` rows of `channels` int8 values: bit 1 where x < zero_point. */
bnn_status_t bnn_bitpack_s8(int32_t rows, int32_t channels, int32_t zero_point, const int8_t *in,
                            uint32_t *out);
/* Bitpack float32 values: bit 1 where x < 0 (0.0 and -0.0 give 0). */
bnn_status_t bnn_bitpack_f32(int32_t rows, int32_t channels, const float *in, uint32_t *out);

/* Binary Conv2D: packed input [H, W, BNN_WORDS(C)] with in_dims.c = C (logical channels),
 * packed OHWI filter (filter_dims.c = C); out_dims.c = O (logical) for every output kind:
 * int8 (BNN_OUT_AFFINE), float32 (BNN_OUT_FLOAT) or packed bits [OH, OW, BNN_WORDS(O)]
 * (BNN_OUT_THRESHOLD). ctx may be NULL; bnn_bconv2d_scratch_size gives the scratch (ctx->buf,
 * 4-byte aligned, ctx->size bytes, overlapping no other argument) that makes the int8 output
 * faster on the Cortex-M7 (the filters reordered once per call, the store in the counting
 * loop): non-zero for O >= 2 and a window of at most 36 words (KH * KW * BNN_WORDS(C)), or a
 * 3x3 filter with C <= 16. The result is the same without it. */
bnn_status_t bnn_bconv2d(const bnn_context_t *ctx, const bnn_conv_params_t *params,
                         const bnn_output_t *output, const bnn_dims_t *in_dims,
                         const uint32_t *in, const bnn_dims_t *filter_dims,
                         const uint32_t *filter, const bnn_dims_t *out_dims, void *out);
int32_t bnn_bconv2d_scratch_size(const bnn_dims_t *in_dims, const bnn_dims_t *filter_dims,
                                 const bnn_dims_t *out_dims);

/* ---- element-wise and pooling ------------------------------------------------------------ */

typedef struct {
    bnn_out_kind_t kind; /* BNN_OUT_TFLITE or BNN_OUT_AFFINE */
    int32_t a_zero_point, b_zero_point;
    /* TFLite ADD: left_shift, per-input (mult, shift), output (mult, shift), output zero point */
    int32_t left_shift;
    int32_t a_mult, a_shift, b_mult, b_shift, out_mult, out_shift, out_zero_point;
    /* affine: t = (a - za) * m[0] + (b - zb) * m[1] + offset, round_half_even(t / 2^shift) */
    int32_t affine_mult[2];
    int32_t affine_shift;
    int64_t affine_offset;
    int32_t act_min, act_max;
} bnn_add_params_t;

/* Binary Conv2D followed by an Add (a residual block's sum, computed as the convolution's
 * outputs are made): out = bnn_add_s8(add, conv, residual) element by element, where conv is
 * bnn_bconv2d's int8 output (output->kind must be BNN_OUT_AFFINE) and residual an int8 tensor
 * of out_dims. `out` may be `residual` itself (in place: each element is read before its byte
 * is written), or a buffer that overlaps neither it, `in` nor `filter`. Arguments as
 * bnn_bconv2d and bnn_add_s8 take them (the same scratch); anything else: BNN_ERROR_ARGUMENT,
 * nothing written. */
bnn_status_t bnn_bconv2d_add(const bnn_context_t *ctx, const bnn_conv_params_t *params,
                             const bnn_output_t *output, const bnn_add_params_t *add,
                             const bnn_dims_t *in_dims, const uint32_t *in,
                             const bnn_dims_t *filter_dims, const uint32_t *filter,
                             const bnn_dims_t *out_dims, const int8_t *residual, int8_t *out);

bnn_status_t bnn_add_s8(const bnn_add_params_t *params, int32_t size, const int8_t *a,
                        const int8_t *b, int8_t *out);

/* Average / max pooling over pool_h x pool_w windows (average: over the taps inside the input);
 * input and output share their quantization; clamp [act_min, act_max]. */
bnn_status_t bnn_avgpool_s8(const bnn_conv_params_t *params, int32_t pool_h, int32_t pool_w,
                            int32_t act_min, int32_t act_max, const bnn_dims_t *in_dims,
                            const int8_t *in, const bnn_dims_t *out_dims, int8_t *out);
bnn_status_t bnn_maxpool_s8(const bnn_conv_params_t *params, int32_t pool_h, int32_t pool_w,
                            int32_t act_min, int32_t act_max, const bnn_dims_t *in_dims,
                            const int8_t *in, const bnn_dims_t *out_dims, int8_t *out);

/* Mean over H and W (TFLite int8 MEAN): q_mult/q_shift from s_in / s_out. */
bnn_status_t bnn_mean_s8(int32_t q_mult, int32_t q_shift, int32_t in_zero_point,
                         int32_t out_zero_point, const bnn_dims_t *in_dims, const int8_t *in,
                         int8_t *out);

/* ---- quantize / dequantize / requantize ------------------------------------------------- */

typedef enum { BNN_ROUND_HALF_AWAY = 0, BNN_ROUND_HALF_EVEN = 1 } bnn_rounding_t;

/* q = clamp(round(f32(x) / f32(scale)) + zero_point, qmin, qmax). Element by element from the
 * first, each read before its byte is written: `out` may start where `in` starts (in place; the
 * memory planner uses this for a network's float input). */
bnn_status_t bnn_quantize_f32_s8(int32_t size, const float *in, float scale, int32_t zero_point,
                                 bnn_rounding_t rounding, int32_t qmin, int32_t qmax,
                                 int8_t *out);
/* y = f32(scale * (x - zero_point)) */
bnn_status_t bnn_dequantize_s8_f32(int32_t size, const int8_t *in, float scale,
                                   int32_t zero_point, float *out);
/* int8 -> int8: BNN_OUT_TFLITE (q_mult[0], q_shift[0], out_zero_point) or BNN_OUT_AFFINE
 * (a_mult[0], a_shift[0], a_offset[0]) applied to (x - in_zero_point); clamp. */
bnn_status_t bnn_requantize_s8(const bnn_output_t *output, int32_t in_zero_point, int32_t size,
                               const int8_t *in, int8_t *out);

#ifdef __cplusplus
}
#endif

#endif /* BNN_KERNELS_H */
