/*
 * bnncube C runtime: common types of the kernels (C99, no heap, no libc beyond <stdint.h>,
 * <stddef.h> and <string.h>).
 *
 * Every kernel has the same argument shape (CMSIS-NN's habit):
 *     bnn_status_t bnn_<op>[_<variant>]_<types>(const bnn_context_t *ctx, <op params>,
 *                                              <output transform>, <dims and data>...);
 * and states its exact arithmetic in a comment at its top. The arithmetic is the one of
 * bnncube's Python reference (converters/reference.py, docs/ir.md "Deployed op semantics"):
 * every kernel equals it bit for bit.
 *
 * Tensors are NHWC with N = 1 (dims.n is accepted only as 1). Binary tensors are packed along
 * the channel axis into uint32 words, channel c in word c / 32, bit c % 32 (LSB first), bit 1
 * meaning -1; a row of C channels takes BNN_WORDS(C) words and the bits beyond C are 0.
 * Filters are OHWI (binary filters: OHWI with I packed the same way); depthwise filters are
 * 1 x KH x KW x (C * M).
 */
#ifndef BNN_TYPES_H
#define BNN_TYPES_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 32-bit words holding one packed row of `channels` binary values. */
#define BNN_WORDS(channels) (((channels) + 31) / 32)

typedef enum {
    BNN_OK = 0,
    BNN_ERROR_ARGUMENT = -1, /* a NULL pointer, a size or a parameter out of range */
    BNN_ERROR_SCRATCH = -2   /* the scratch buffer in the context is missing or too small */
} bnn_status_t;

/* Scratch memory a kernel may use (its size comes from the kernel's _scratch_size function). */
typedef struct {
    void *buf;
    int32_t size; /* bytes */
} bnn_context_t;

typedef struct {
    int32_t n, h, w, c;
} bnn_dims_t;

/* Convolution and pooling geometry. Output element (y, x) reads input rows
 * y * stride_h - pad_top + i * dilation_h and columns x * stride_w - pad_left + j * dilation_w;
 * the bottom/right padding follows from the output dims. */
typedef struct {
    int32_t stride_h, stride_w;
    int32_t dilation_h, dilation_w;
    int32_t pad_top, pad_left;
    int32_t pad_value;         /* binary conv: 0 (QKeras, padded taps count nothing), 1 (Larq, +1) */
    int32_t depth_multiplier;  /* depthwise */
    int32_t input_zero_point;  /* int8 input */
} bnn_conv_params_t;

/* How the int32 accumulator of a MAC op becomes its output (docs/ir.md). */
typedef enum {
    /* TFLite: acc + bias[o], MultiplyByQuantizedMultiplier(q_mult[o], q_shift[o]) + zp,
     * clamp [act_min, act_max]; int8 output */
    BNN_OUT_TFLITE = 0,
    /* QKeras: clamp(round_half_even((acc * a_mult[o] + B[o]) / 2^a_shift[o]), act_min,
     * act_max) in int64, where a_offset[o] = B[o] + 2^(a_shift[o] - 1) (the rounding-ready
     * offset); int8 output */
    BNN_OUT_AFFINE = 1,
    /* f32(f32(f32(acc) * f_scale[o]) + f_offset[o]) (no fused multiply-add), then
     * float_activation; float32 output */
    BNN_OUT_FLOAT = 2,
    /* bit o = acc < t_threshold[o] (direction 1), acc > t_threshold[o] (direction -1),
     * t_threshold[o] (direction 0); packed binary output */
    BNN_OUT_THRESHOLD = 3,
    /* Larq Compute Engine (binary conv only): x = clamp(K - acc1, lce_clamp_lo, lce_clamp_hi)
     * with acc1 the one-padded sum (K = lce_k taps x channels), y = f32(f32(f32(x) *
     * f_scale[o]) + f_offset[o]); with zero padding, at a pixel whose window holds padded taps,
     * y = f32(y + f32(f32(acc1 - acc0) * f_scale[o])); float32 output, or int8 output
     * (lce_int8_output) clamp(round_half_away(y), -128, 127) */
    BNN_OUT_LCE = 4
} bnn_out_kind_t;

typedef enum { BNN_ACT_NONE = 0, BNN_ACT_RELU = 1, BNN_ACT_RELU6 = 2 } bnn_activation_t;

typedef struct {
    bnn_out_kind_t kind;
    /* BNN_OUT_TFLITE */
    const int32_t *bias;   /* per output channel, may be NULL */
    const int32_t *q_mult; /* Q31 multiplier per output channel */
    const int32_t *q_shift;/* TFLite shift per output channel (> 0: left) */
    int32_t out_zero_point;
    /* BNN_OUT_AFFINE */
    const int32_t *a_mult;
    const int8_t *a_shift; /* 1 .. 62 */
    const int64_t *a_offset; /* B + 2^(a_shift - 1), |a_offset| < 2^62 */
    /* BNN_OUT_TFLITE and BNN_OUT_AFFINE */
    int32_t act_min, act_max;
    /* BNN_OUT_FLOAT */
    const float *f_scale;
    const float *f_offset;
    bnn_activation_t float_activation;
    /* BNN_OUT_THRESHOLD */
    const int32_t *t_threshold;
    const int8_t *t_direction;
    /* BNN_OUT_TFLITE: 1 = round once, (acc * q + 2^(30 - shift)) >> (31 - shift), as TFLite's
     * per-channel FULLY_CONNECTED reference kernel does; 0 = MultiplyByQuantizedMultiplier's
     * two roundings (conv, depthwise, per-tensor fully connected) */
    int32_t q_single_rounding;
    /* BNN_OUT_LCE */
    int32_t lce_k;
    int32_t lce_clamp_lo, lce_clamp_hi;
    int32_t lce_int8_output;
} bnn_output_t;

#ifdef __cplusplus
}
#endif

#endif /* BNN_TYPES_H */
