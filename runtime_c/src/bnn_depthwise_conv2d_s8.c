/*
 * bnn_depthwise_conv2d_s8: DepthwiseConv2D with int8 input and int8 filter
 * [1, KH, KW, C * M] (M = depth_multiplier), any kernel size, stride, dilation and padding
 * (converters/reference.py `depthwise_conv2d`, docs/ir.md).
 *
 * Output channel oc = c * M + m reads input channel c:
 *
 *   acc[y, x, oc] = sum_{i < KH, j < KW} filter[0, i, j, oc] *
 *                   (in[y * stride_h - pad_top + i * dilation_h,
 *                       x * stride_w - pad_left + j * dilation_w, c] - input_zero_point)
 *
 * over the taps inside the input only (padding counts 0), exact in int32 (computed modulo
 * 2^32). out[y, x, oc] = the output transform of acc for channel oc, as bnn_conv2d_s8
 * (BNN_OUT_TFLITE / BNN_OUT_AFFINE int8, BNN_OUT_FLOAT float32; bnn_output_store).
 *
 * Order: every path writes each channel's outputs in row-major pixel order, each after all of
 * its taps were read; this is what makes the in-place call of bnn_kernels.h legal (keep it).
 *
 * Arguments: in_dims [1, H, W, C], filter_dims [1, KH, KW, C * M], out_dims [1, OH, OW, C * M],
 * params->depth_multiplier = M >= 1, output dims consistent with the geometry
 * (bnn_window_ok); ctx may be NULL. Anything else: BNN_ERROR_ARGUMENT, nothing written.
 *
 * Cortex-M7 (__ARM_FEATURE_DSP, unless BNN_FORCE_PLAIN_C), depth multiplier 1 (this includes
 * every 3x3 depthwise of MobileNetV2 and of the hybrid network): 4 channels per step; per tap
 * one 4-byte load of the input channels and one of the filter (memcpy), SXTAB16 gives
 * x - zp for channels c, c + 2 and (rotated) c + 1, c + 3 as int16 halfwords, SXTB16 the
 * weights, and SMLABB / SMLATT add each product to its own channel's accumulator. The same
 * products are summed modulo 2^32 in the same int32 accumulators: bit-exact with the plain
 * path, which handles the remaining channels and M > 1. A 3x3 kernel with dilation 1 and C a
 * multiple of 4 takes depthwise_3x3_body: four channels at a time over all pixels, the filter
 * words expanded once, interior pixels unrolled; a row's interior pixels in one assembly loop
 * (bnn_dw3_asm) when the 4 channels take the fast stores (bnn_requant.h).
 * Each path is compiled once per output transform (bnn_depthwise_conv2d_s8_affine / _tflite /
 * _float, which generated code calls); bnn_depthwise_conv2d_s8 dispatches on output->kind.
 */
#include "bnn_kernels.h"
#include "bnn_requant.h"

/* acc of output channel oc over the valid taps [i_first, i_last) x [j_first, j_last) */
static int32_t depthwise_acc(const int8_t *in, const int8_t *filter, int32_t in_w, int32_t in_c,
                             int32_t kw, int32_t channels, int32_t mult, int32_t zp, int32_t y0,
                             int32_t x0, int32_t dil_h, int32_t dil_w, int32_t i_first,
                             int32_t i_last, int32_t j_first, int32_t j_last, int32_t oc)
{
    int32_t c = oc / mult;
    uint32_t acc = 0;
    int32_t i, j;
    for (i = i_first; i < i_last; ++i) {
        int32_t iy = y0 + i * dil_h;
        for (j = j_first; j < j_last; ++j) {
            int32_t ix = x0 + j * dil_w;
            int32_t xv = in[(iy * in_w + ix) * in_c + c];
            int32_t wv = filter[(i * kw + j) * channels + oc];
            acc += (uint32_t)(wv * (xv - zp));
        }
    }
    return bnn_s32_from_u32(acc);
}

#if BNN_USE_DSP
/* 4 channels of one tap: x (4 input bytes) - zp against the expanded weights w02 / w13
 * (SXTB16 and SXTB16 ror 8 of the 4 filter bytes), each product into its channel's sum. */
#define BNN_DW_TAP(xptr, w02, w13)                                                             \
    do {                                                                                       \
        int32_t xv_, x02_, x13_;                                                               \
        memcpy(&xv_, (xptr), 4);                                                               \
        x02_ = __sxtab16(neg_zp, xv_);                                                         \
        x13_ = bnn_sxtab16_ror8(neg_zp, xv_);                                                  \
        acc0 = __smlabb(x02_, (w02), acc0);                                                    \
        acc2 = __smlatt(x02_, (w02), acc2);                                                    \
        acc1 = __smlabb(x13_, (w13), acc1);                                                    \
        acc3 = __smlatt(x13_, (w13), acc3);                                                    \
    } while (0)

#if BNN_TFLITE_FAST && BNN_AFFINE_FAST && defined(__GNUC__)
#define BNN_DW3_ASM 1
/* bnn_dw3_asm's state (the assembly reads it through r7 at the offsets in the comments). */
typedef struct {
    int32_t init[4];   /* 0: the 4 sums' start: the TFLite biases, else 0 */
    int32_t w[18];     /* 16: per tap the expanded weights w02, w13 (SXTB16, SXTB16 ror 8) */
    int32_t ch[16];    /* 88: per channel, affine: mult, shift - 32, offset low, high word;
                        * TFLite: mult, khi, em1, zp (bnn_tflite_fast's constants) */
    const int8_t *p;   /* 152: the next pixel's window: its top-left tap, channel oc */
    int8_t *y;         /* 156: its output, channel oc */
    int32_t pstep;     /* 160: input bytes from one pixel's window to the next */
    int32_t n;         /* 164: pixels left (>= 1) */
    int32_t inc;       /* 168: C, bytes between taps of a row and between output pixels */
    int32_t row;       /* 172: W * C, bytes between input rows */
    int32_t neg_zp;    /* 176: -zp in both halfwords */
} bnn_dw3_state_t;

/* One tap at addr (from the row in r9, C in r10): the 4 input bytes minus the zero point (lr)
 * as halfwords (x02 r5, x13 r4) times the tap's expanded weights (LDRD from r12, moving on),
 * each product into its channel's sum r0..r3. */
#define BNN_DW3_TAP(addr)                                                                      \
    "ldr     r4, " addr "\n\t"                                                                  \
    "ldrd    r6, r8, [r12], #8\n\t"                                                             \
    "sxtab16 r5, lr, r4\n\t"                                                                    \
    "sxtab16 r4, lr, r4, ror #8\n\t"                                                            \
    "smlabb  r0, r5, r6, r0\n\t"                                                                \
    "smlatt  r2, r5, r6, r2\n\t"                                                                \
    "smlabb  r1, r4, r8, r1\n\t"                                                                \
    "smlatt  r3, r4, r8, r3\n\t"
#define BNN_DW3_ROW                                                                            \
    BNN_DW3_TAP("[r9]") BNN_DW3_TAP("[r9, r10]") BNN_DW3_TAP("[r9, r10, lsl #1]")
/* bnn_affine_fast of the sum acc, stored at [r9, #off]: the channel's constants by LDM from
 * r12 (mult r4, k r5, offset r6:r8) */
#define BNN_DW3_AFFINE(acc, off)                                                               \
    "ldmia   r12!, {r4, r5, r6, r8}\n\t"                                                        \
    "smlal   r6, r8, " acc ", r4\n\t"                                                           \
    "asr     " acc ", r8, r5\n\t"                                                               \
    "cmp     r6, #0\n\t"                                                                        \
    "bne     1f\n\t"                                                                            \
    "rsb     r6, r5, #32\n\t"                                                                   \
    "lsls    r6, r8, r6\n\t"                                                                    \
    "it      eq\n\t"                                                                            \
    "biceq   " acc ", " acc ", #1\n"                                                            \
    "1:\n\t"                                                                                    \
    "ssat    " acc ", #8, " acc "\n\t"                                                          \
    "strb    " acc ", [r9, #" off "]\n\t"
/* bnn_tflite_fast of the sum acc (the bias in it), stored at [r9, #off]: mult r4, khi r5,
 * em1 r6, zp r8 by LDM from r12; r11 scratch */
#define BNN_DW3_TFLITE(acc, off)                                                               \
    "ldmia   r12!, {r4, r5, r6, r8}\n\t"                                                        \
    "mov     r11, #0x40000000\n\t"                                                              \
    "smlal   r11, r5, " acc ", r4\n\t"                                                          \
    "asr     " acc ", " acc ", #31\n\t"                                                         \
    "adds    r11, r11, " acc ", lsl #31\n\t"                                                    \
    "adc     r5, r5, " acc "\n\t"                                                               \
    "asr     r5, r5, r6\n\t"                                                                    \
    "qadd    r5, r5, r8\n\t"                                                                    \
    "ssat    r5, #8, r5\n\t"                                                                    \
    "strb    r5, [r9, #" off "]\n\t"
/* The pixel loop: sums from init, the 9 taps (rows from p), the 4 stores by `store`, then the
 * next pixel. The registers it uses are its own: r7 is saved and restored by the assembly,
 * the others are clobbers, and the state's address comes in r12. */
#define BNN_DW3_LOOP(store)                                                                    \
    "push    {r7}\n\t"                                                                          \
    "mov     r7, r12\n\t"                                                                       \
    "ldr     r10, [r7, #168]\n\t"                                                               \
    "ldr     lr, [r7, #176]\n"                                                                  \
    "20:\n\t"                                                                                   \
    "ldr     r11, [r7, #172]\n\t"                                                               \
    "ldr     r9, [r7, #152]\n\t"                                                                \
    "ldmia   r7, {r0, r1, r2, r3}\n\t"                                                          \
    "add     r12, r7, #16\n\t" BNN_DW3_ROW                                                      \
    "add     r9, r9, r11\n\t" BNN_DW3_ROW                                                       \
    "add     r9, r9, r11\n\t" BNN_DW3_ROW                                                       \
    "ldr     r9, [r7, #156]\n\t" store("r0", "0") store("r1", "1") store("r2", "2")             \
    store("r3", "3")                                                                            \
    "add     r9, r9, r10\n\t"                                                                   \
    "str     r9, [r7, #156]\n\t"                                                                \
    "ldr     r9, [r7, #152]\n\t"                                                                \
    "ldr     r4, [r7, #160]\n\t"                                                                \
    "add     r9, r9, r4\n\t"                                                                    \
    "str     r9, [r7, #152]\n\t"                                                                \
    "ldr     r4, [r7, #164]\n\t"                                                                \
    "subs    r4, r4, #1\n\t"                                                                    \
    "str     r4, [r7, #164]\n\t"                                                                \
    "bne     20b\n\t"                                                                           \
    "pop     {r7}\n\t"

/* Depthwise 3x3 (dilation 1, depth multiplier 1) of 4 channels for st->n consecutive output
 * pixels of one row whose windows lie inside the input, Cortex-M7, in one assembly loop: per
 * tap one input load, one LDRD of the expanded weights, 2 SXTAB16 and 4 SMLAxy (9 taps: 74
 * instructions); the stores by bnn_affine_fast (every channel's shift >= 32) or
 * bnn_tflite_fast (every channel bnn_tflite_fast_ok), full int8 range. The same products and
 * int32 sums as the C form: bit-exact. */
BNN_NOINLINE void bnn_dw3_asm(bnn_dw3_state_t *state, int tflite)
{
    register bnn_dw3_state_t *p __asm__("r12") = state;
    if (tflite) {
        __asm__ volatile(BNN_DW3_LOOP(BNN_DW3_TFLITE)
                         : "+r"(p)
                         :
                         : "r0", "r1", "r2", "r3", "r4", "r5", "r6", "r8", "r9", "r10", "r11",
                           "lr", "cc", "memory");
    } else {
        __asm__ volatile(BNN_DW3_LOOP(BNN_DW3_AFFINE)
                         : "+r"(p)
                         :
                         : "r0", "r1", "r2", "r3", "r4", "r5", "r6", "r8", "r9", "r10", "r11",
                           "lr", "cc", "memory");
    }
}
#undef BNN_DW3_TAP
#undef BNN_DW3_ROW
#undef BNN_DW3_AFFINE
#undef BNN_DW3_TFLITE
#undef BNN_DW3_LOOP
#else
#define BNN_DW3_ASM 0
#endif

/* Depthwise 3x3, dilation 1, depth multiplier 1, channels a multiple of 4, Cortex-M7: four
 * channels at a time over all output pixels, so that their 9 filter words are expanded once
 * (SXTB16 and SXTB16 ror 8) and kept; a pixel whose window lies inside the input runs the 9
 * taps unrolled, a border pixel its valid taps only. Same products, same int32 sums modulo
 * 2^32: bit-exact with the plain path. */
BNN_ALWAYS_INLINE void depthwise_3x3_body(bnn_out_kind_t kind, const bnn_conv_params_t *params,
                                          const bnn_output_t *output_in, const int8_t *in,
                                          int32_t in_h, int32_t in_w, int32_t in_c,
                                          const int8_t *filter, int32_t out_h, int32_t out_w,
                                          void *out)
{
    /* a local copy: the int8 stores below may alias *output, this cannot */
    const bnn_output_t local = *output_in;
    const bnn_output_t *const output = &local;
    const int32_t neg_zp = bnn_neg_zp_pair(params->input_zero_point);
    const int32_t row = in_w * in_c; /* input elements between rows */
    const int32_t sh = params->stride_h, sw = params->stride_w;
#if BNN_DW3_ASM
    /* the output columns whose windows lie inside the input: x0 = ox * sw - pad_left >= 0 and
     * x0 + 2 < in_w */
    const int32_t ox_lo = (params->pad_left + sw - 1) / sw;
    const int32_t last = in_w - 3 + params->pad_left; /* the largest ox * sw allowed */
    const int32_t ox_hi = last < 0 ? 0 : (last / sw + 1 < out_w ? last / sw + 1 : out_w);
    bnn_dw3_state_t st;
    st.pstep = sw * in_c;
    st.inc = in_c;
    st.row = row;
    st.neg_zp = neg_zp;
#endif
    int32_t oc;
    for (oc = 0; oc < in_c; oc += 4) {
        int32_t w02[9], w13[9];
        /* the 4 channels' output constants, read once for all pixels (affine: M, B, S;
         * TFLite: bias, multiplier and the shift's parts) */
        int32_t c_mult[4], c_shift[4];
        int64_t c_offset[4];
        bnn_tflite_ch_t c_tfl[4];
        int32_t t, oy, ox;
        for (t = 0; t < 9; ++t) {
            int32_t wv;
            memcpy(&wv, filter + (size_t)(t * in_c + oc), 4);
            w02[t] = __sxtb16(wv);
            w13[t] = bnn_sxtb16_ror8(wv);
        }
        for (t = 0; t < 4; ++t) {
            c_mult[t] = c_shift[t] = 0;
            c_offset[t] = 0;
            c_tfl[t] = bnn_tflite_ch(0, 0, 0, output);
            if (kind == BNN_OUT_AFFINE) {
                c_mult[t] = output->a_mult[oc + t];
                c_offset[t] = output->a_offset[oc + t];
                c_shift[t] = output->a_shift[oc + t];
            } else if (kind == BNN_OUT_TFLITE) {
                c_tfl[t] = bnn_tflite_ch(output->bias != NULL ? output->bias[oc + t] : 0,
                                         output->q_mult[oc + t], output->q_shift[oc + t], output);
            }
        }
#if BNN_AFFINE_FAST
        /* affine: the 4 channels take bnn_affine_fast (c_shift then holds shift - 32) */
        int fast4 = kind == BNN_OUT_AFFINE && output->act_min == BNN_INT8_MIN &&
                    output->act_max == BNN_INT8_MAX;
        for (t = 0; t < 4; ++t) {
            fast4 = fast4 && c_shift[t] >= 32;
        }
        for (t = 0; t < 4 && fast4; ++t) {
            c_shift[t] -= 32;
        }
#endif
#if BNN_DW3_ASM
        /* the interior pixels of a row by bnn_dw3_asm when all 4 channels take a fast store */
        int use_asm = kind == BNN_OUT_AFFINE && fast4;
        if (kind == BNN_OUT_TFLITE) {
            use_asm = c_tfl[0].fast && c_tfl[1].fast && c_tfl[2].fast && c_tfl[3].fast;
        }
        if (use_asm) {
            for (t = 0; t < 9; ++t) {
                st.w[2 * t] = w02[t];
                st.w[2 * t + 1] = w13[t];
            }
            for (t = 0; t < 4; ++t) {
                int32_t *ch = st.ch + 4 * t;
                if (kind == BNN_OUT_TFLITE) {
                    st.init[t] = c_tfl[t].bias;
                    ch[0] = c_tfl[t].mult;
                    ch[1] = c_tfl[t].khi;
                    ch[2] = c_tfl[t].em1;
                    ch[3] = c_tfl[t].zp;
                } else {
                    st.init[t] = 0;
                    ch[0] = c_mult[t];
                    ch[1] = c_shift[t];
                    ch[2] = bnn_s32_from_u32((uint32_t)(uint64_t)c_offset[t]);
                    ch[3] = bnn_s32_from_u32((uint32_t)((uint64_t)c_offset[t] >> 32));
                }
            }
        }
#endif
        for (oy = 0; oy < out_h; ++oy) {
            const int32_t y0 = oy * sh - params->pad_top;
            const int rows_inside = y0 >= 0 && y0 + 2 < in_h;
            for (ox = 0; ox < out_w; ++ox) {
                const int32_t x0 = ox * sw - params->pad_left;
                const int32_t index = (oy * out_w + ox) * in_c + oc;
                int32_t acc0 = 0, acc1 = 0, acc2 = 0, acc3 = 0;
#if BNN_DW3_ASM
                if (use_asm && rows_inside && ox == ox_lo && ox_lo < ox_hi) {
                    st.p = in + (size_t)((y0 * in_w + x0) * in_c + oc);
                    st.y = (int8_t *)out + index;
                    st.n = ox_hi - ox_lo;
                    bnn_dw3_asm(&st, kind == BNN_OUT_TFLITE);
                    ox = ox_hi - 1;
                    continue;
                }
#endif
                if (rows_inside && x0 >= 0 && x0 + 2 < in_w) {
                    const int8_t *p0 = in + (size_t)((y0 * in_w + x0) * in_c + oc);
                    const int8_t *p1 = p0 + row;
                    const int8_t *p2 = p1 + row;
                    BNN_DW_TAP(p0, w02[0], w13[0]);
                    BNN_DW_TAP(p0 + in_c, w02[1], w13[1]);
                    BNN_DW_TAP(p0 + 2 * in_c, w02[2], w13[2]);
                    BNN_DW_TAP(p1, w02[3], w13[3]);
                    BNN_DW_TAP(p1 + in_c, w02[4], w13[4]);
                    BNN_DW_TAP(p1 + 2 * in_c, w02[5], w13[5]);
                    BNN_DW_TAP(p2, w02[6], w13[6]);
                    BNN_DW_TAP(p2 + in_c, w02[7], w13[7]);
                    BNN_DW_TAP(p2 + 2 * in_c, w02[8], w13[8]);
                } else {
                    int32_t i_first, i_last, j_first, j_last, i, j;
                    bnn_valid_taps(y0, in_h, 3, 1, &i_first, &i_last);
                    bnn_valid_taps(x0, in_w, 3, 1, &j_first, &j_last);
                    for (i = i_first; i < i_last; ++i) {
                        for (j = j_first; j < j_last; ++j) {
                            const int8_t *px =
                                in + (size_t)(((y0 + i) * in_w + x0 + j) * in_c + oc);
                            BNN_DW_TAP(px, w02[i * 3 + j], w13[i * 3 + j]);
                        }
                    }
                }
                if (kind == BNN_OUT_AFFINE) {
                    const int32_t lo = output->act_min, hi = output->act_max;
                    int8_t *y = (int8_t *)out + index;
#if BNN_AFFINE_FAST
                    if (fast4) {
                        y[0] = (int8_t)bnn_affine_fast(acc0, c_mult[0], c_offset[0], c_shift[0]);
                        y[1] = (int8_t)bnn_affine_fast(acc1, c_mult[1], c_offset[1], c_shift[1]);
                        y[2] = (int8_t)bnn_affine_fast(acc2, c_mult[2], c_offset[2], c_shift[2]);
                        y[3] = (int8_t)bnn_affine_fast(acc3, c_mult[3], c_offset[3], c_shift[3]);
                        continue;
                    }
#endif
                    y[0] = (int8_t)bnn_affine(acc0, c_mult[0], c_offset[0], c_shift[0], lo, hi);
                    y[1] = (int8_t)bnn_affine(acc1, c_mult[1], c_offset[1], c_shift[1], lo, hi);
                    y[2] = (int8_t)bnn_affine(acc2, c_mult[2], c_offset[2], c_shift[2], lo, hi);
                    y[3] = (int8_t)bnn_affine(acc3, c_mult[3], c_offset[3], c_shift[3], lo, hi);
                } else if (kind == BNN_OUT_TFLITE) {
                    int8_t *y = (int8_t *)out + index;
                    y[0] = (int8_t)bnn_tflite_ch_out(acc0, &c_tfl[0]);
                    y[1] = (int8_t)bnn_tflite_ch_out(acc1, &c_tfl[1]);
                    y[2] = (int8_t)bnn_tflite_ch_out(acc2, &c_tfl[2]);
                    y[3] = (int8_t)bnn_tflite_ch_out(acc3, &c_tfl[3]);
                } else {
                    bnn_output_store_kind(kind, output, oc, acc0, out, index);
                    bnn_output_store_kind(kind, output, oc + 1, acc1, out, index + 1);
                    bnn_output_store_kind(kind, output, oc + 2, acc2, out, index + 2);
                    bnn_output_store_kind(kind, output, oc + 3, acc3, out, index + 3);
                }
            }
        }
    }
}
#undef BNN_DW_TAP
#endif

/* The loops of bnn_depthwise_conv2d_s8 (arguments checked), compiled once per output
 * transform so that the store is inlined. */
BNN_ALWAYS_INLINE void depthwise_body(bnn_out_kind_t kind, const bnn_conv_params_t *params,
                                      const bnn_output_t *output_in, const int8_t *in,
                                      int32_t in_h, int32_t in_w, int32_t in_c,
                                      const int8_t *filter, int32_t kh, int32_t kw,
                                      int32_t out_h, int32_t out_w, int32_t channels,
                                      int32_t mult, void *out)
{
    /* a local copy: the int8 stores below may alias *output, this cannot */
    const bnn_output_t local = *output_in;
    const bnn_output_t *const output = &local;
    const int32_t zp = params->input_zero_point;
    int32_t oy, ox;
    for (oy = 0; oy < out_h; ++oy) {
        int32_t y0 = oy * params->stride_h - params->pad_top;
        int32_t i_first, i_last;
        bnn_valid_taps(y0, in_h, kh, params->dilation_h, &i_first, &i_last);
        for (ox = 0; ox < out_w; ++ox) {
            int32_t x0 = ox * params->stride_w - params->pad_left;
            int32_t j_first, j_last;
            int32_t out_index = (oy * out_w + ox) * channels;
            int32_t oc = 0;
            bnn_valid_taps(x0, in_w, kw, params->dilation_w, &j_first, &j_last);
#if BNN_USE_DSP
            if (mult == 1) {
                int32_t neg_zp = bnn_neg_zp_pair(zp);
                int32_t x_step = params->dilation_w * in_c; /* input elements between taps */
                for (; oc + 4 <= channels; oc += 4) {
                    int32_t acc0 = 0, acc1 = 0, acc2 = 0, acc3 = 0;
                    int32_t i, j;
                    for (i = i_first; i < i_last; ++i) {
                        /* the first valid tap of row i, in the input and in the filter */
                        const int8_t *x_row =
                            in + (size_t)(((y0 + i * params->dilation_h) * in_w + x0 +
                                           j_first * params->dilation_w) * in_c + oc);
                        const int8_t *w_row = filter + (size_t)((i * kw + j_first) * channels + oc);
                        for (j = 0; j < j_last - j_first; ++j) {
                            int32_t xv, wv, x02, x13, w02, w13;
                            memcpy(&xv, x_row + (size_t)(j * x_step), 4);
                            memcpy(&wv, w_row + (size_t)(j * channels), 4);
                            x02 = __sxtab16(neg_zp, xv);
                            x13 = bnn_sxtab16_ror8(neg_zp, xv);
                            w02 = __sxtb16(wv);
                            w13 = bnn_sxtb16_ror8(wv);
                            acc0 = __smlabb(x02, w02, acc0);
                            acc2 = __smlatt(x02, w02, acc2);
                            acc1 = __smlabb(x13, w13, acc1);
                            acc3 = __smlatt(x13, w13, acc3);
                        }
                    }
                    bnn_output_store_kind(kind, output, oc, acc0, out, out_index + oc);
                    bnn_output_store_kind(kind, output, oc + 1, acc1, out, out_index + oc + 1);
                    bnn_output_store_kind(kind, output, oc + 2, acc2, out, out_index + oc + 2);
                    bnn_output_store_kind(kind, output, oc + 3, acc3, out, out_index + oc + 3);
                }
            }
#endif
            for (; oc < channels; ++oc) {
                int32_t acc = depthwise_acc(in, filter, in_w, in_c, kw, channels, mult, zp, y0,
                                            x0, params->dilation_h, params->dilation_w, i_first,
                                            i_last, j_first, j_last, oc);
                bnn_output_store_kind(kind, output, oc, acc, out, out_index + oc);
            }
        }
    }
}

/* The whole kernel for one output transform `kind` (output->kind must be `kind`). */
BNN_ALWAYS_INLINE bnn_status_t depthwise_kind(bnn_out_kind_t kind, const bnn_conv_params_t *params,
                                              const bnn_output_t *output,
                                              const bnn_dims_t *in_dims, const int8_t *in,
                                              const bnn_dims_t *filter_dims,
                                              const int8_t *filter, const bnn_dims_t *out_dims,
                                              void *out)
{
    int32_t in_h, in_w, in_c, kh, kw, out_h, out_w, channels, mult, zp;
    int64_t filter_size;

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
    channels = out_dims->c;
    mult = params->depth_multiplier;
    zp = params->input_zero_point;
    if (mult <= 0 || (int64_t)in_c * mult != channels || filter_dims->n != 1 ||
        filter_dims->c != channels || kh <= 0 || kw <= 0 || !bnn_zero_point_ok(zp) ||
        !bnn_window_ok(in_h, out_h, kh, params->stride_h, params->dilation_h, params->pad_top) ||
        !bnn_window_ok(in_w, out_w, kw, params->stride_w, params->dilation_w, params->pad_left)) {
        return BNN_ERROR_ARGUMENT;
    }
    filter_size = (int64_t)kh * kw;
    if (filter_size > INT32_MAX || filter_size * channels > INT32_MAX) {
        return BNN_ERROR_ARGUMENT;
    }
    if (output == NULL || output->kind != kind || bnn_output_check(output, channels) != BNN_OK) {
        return BNN_ERROR_ARGUMENT;
    }

#if BNN_USE_DSP
    if (mult == 1 && kh == 3 && kw == 3 && params->dilation_h == 1 && params->dilation_w == 1 &&
        in_c % 4 == 0) {
        depthwise_3x3_body(kind, params, output, in, in_h, in_w, in_c, filter, out_h, out_w, out);
        return BNN_OK;
    }
#endif
    depthwise_body(kind, params, output, in, in_h, in_w, in_c, filter, kh, kw, out_h, out_w,
                   channels, mult, out);
    return BNN_OK;
}

/* One entry point per output transform (see bnn_conv2d_s8_affine). */
bnn_status_t bnn_depthwise_conv2d_s8_affine(const bnn_context_t *ctx,
                                            const bnn_conv_params_t *params,
                                            const bnn_output_t *output, const bnn_dims_t *in_dims,
                                            const int8_t *in, const bnn_dims_t *filter_dims,
                                            const int8_t *filter, const bnn_dims_t *out_dims,
                                            void *out)
{
    (void)ctx;
    return depthwise_kind(BNN_OUT_AFFINE, params, output, in_dims, in, filter_dims, filter,
                          out_dims, out);
}

bnn_status_t bnn_depthwise_conv2d_s8_tflite(const bnn_context_t *ctx,
                                            const bnn_conv_params_t *params,
                                            const bnn_output_t *output, const bnn_dims_t *in_dims,
                                            const int8_t *in, const bnn_dims_t *filter_dims,
                                            const int8_t *filter, const bnn_dims_t *out_dims,
                                            void *out)
{
    (void)ctx;
    return depthwise_kind(BNN_OUT_TFLITE, params, output, in_dims, in, filter_dims, filter,
                          out_dims, out);
}

bnn_status_t bnn_depthwise_conv2d_s8_float(const bnn_context_t *ctx,
                                           const bnn_conv_params_t *params,
                                           const bnn_output_t *output, const bnn_dims_t *in_dims,
                                           const int8_t *in, const bnn_dims_t *filter_dims,
                                           const int8_t *filter, const bnn_dims_t *out_dims,
                                           void *out)
{
    (void)ctx;
    return depthwise_kind(BNN_OUT_FLOAT, params, output, in_dims, in, filter_dims, filter,
                          out_dims, out);
}

bnn_status_t bnn_depthwise_conv2d_s8(const bnn_context_t *ctx, const bnn_conv_params_t *params,
                                     const bnn_output_t *output, const bnn_dims_t *in_dims,
                                     const int8_t *in, const bnn_dims_t *filter_dims,
                                     const int8_t *filter, const bnn_dims_t *out_dims, void *out)
{
    if (output == NULL) {
        return BNN_ERROR_ARGUMENT;
    }
    switch (output->kind) {
    case BNN_OUT_AFFINE:
        return bnn_depthwise_conv2d_s8_affine(ctx, params, output, in_dims, in, filter_dims,
                                              filter, out_dims, out);
    case BNN_OUT_TFLITE:
        return bnn_depthwise_conv2d_s8_tflite(ctx, params, output, in_dims, in, filter_dims,
                                              filter, out_dims, out);
    case BNN_OUT_FLOAT:
        return bnn_depthwise_conv2d_s8_float(ctx, params, output, in_dims, in, filter_dims,
                                             filter, out_dims, out);
    default:
        return BNN_ERROR_ARGUMENT;
    }
}
