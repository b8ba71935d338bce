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
 *   BNN_OUT_AFFINE  clamp(round_half_even((acc * a_mult[o] + B[o]) / 2^a_shift[o]),
 *                   act_min, act_max), a_offset[o] = B[o] + 2^(a_shift[o]-1)       int8
 *   BNN_OUT_FLOAT   f32(f32(f32(acc) * f_scale[o]) + f_offset[o]), then ReLU / ReLU6  float32
 *
 * Arguments: in_dims [1, H, W, C], filter_dims [O, KH, KW, C], out_dims [1, OH, OW, O]; the
 * output dims must be those of the geometry for some padding after the input (see
 * bnn_window_ok). Anything else: BNN_ERROR_ARGUMENT, with nothing written.
 *
 * Scratch: ctx may be NULL. bnn_conv2d_s8_scratch_size asks for 8 * C bytes for a 1x1 filter
 * with C a multiple of 4 above BNN_PW_SCRATCH_C (128): a pointwise layer that deep takes the
 * 4-pixel blocks below in that buffer (ctx->buf, 4-byte aligned, ctx->size >= 8 * C). Without
 * it (ctx NULL, or a smaller or unaligned buffer) the result is the same, by a slower path.
 *
 * Cortex-M7 (__ARM_FEATURE_DSP, unless BNN_FORCE_PLAIN_C), fastest applicable path first, in
 * functions of their own per output transform with a buffer for the expanded inputs
 * (bnn_conv_dsp_*: 1 KB on the stack; bnn_conv_dsp_scratch_*: the scratch, for the deep
 * pointwise layers):
 *  - pointwise (1x1, no padding), C a multiple of 4: blocks of 4 pixels (C <= 128, or any C
 *    with the scratch; inputs
 *    expanded once to int16 pairs, then per output channel an assembly loop of LDMs and SMLADs
 *    and the 4 outputs stored with the channel's constants read once, bnn_conv_x4_channels;
 *    the whole channel loop in assembly, bnn_x4_asm, when every channel takes a fast store;
 *    then with the channels' constants from a table in the buffer's free words, bnn_x4_table,
 *    one LDM per channel, where it fits, in chunks of channels where those pay),
 *    then pairs of pixels x pairs of channels (C <= 512), bnn_conv_1x1x_body;
 *  - other pointwise: pairs reading the int8 inputs directly, bnn_conv_1x1_body;
 *  - a window of at most BNN_PATCH4_MAX taps (KH * KW * C; the stems): the same 4-pixel blocks
 *    on each pixel's gathered window, bnn_conv_patch_x4, the last pixels as the next path;
 *  - a window of at most BNN_PATCH_MAX taps: an int16 patch per pixel, bnn_conv_patch_body;
 *  - anything else: tap by tap, 4 channels per step (bnn_dot_s8).
 * The int8 outputs go through bnn_tflite_fast / bnn_affine_fast (bnn_requant.h) where they
 * apply (the full int8 range, the usual shifts), else through the C transforms.
 * Every path sums the same products modulo 2^32: bit-exact with the plain C path.
 * Each path is compiled once per output transform (bnn_conv2d_s8_affine / _tflite / _float,
 * which generated code calls, so that the linker keeps only the transforms a network uses);
 * bnn_conv2d_s8 dispatches on output->kind.
 */
#include "bnn_kernels.h"
#include "bnn_requant.h"

/* Pointwise layers deeper than this take their expanded inputs from the scratch (8 * C bytes:
 * 4 pixels of C int16 values); the others fit the 1 KB stack buffer (BNN_PW_XBUF words). */
#define BNN_PW_SCRATCH_C 128

int32_t bnn_conv2d_s8_scratch_size(const bnn_dims_t *in_dims, const bnn_dims_t *filter_dims,
                                   const bnn_dims_t *out_dims)
{
    (void)out_dims;
    if (in_dims == NULL || filter_dims == NULL || filter_dims->h != 1 || filter_dims->w != 1 ||
        in_dims->c % 4 != 0 || in_dims->c <= BNN_PW_SCRATCH_C || in_dims->c > INT32_MAX / 8) {
        return 0;
    }
    return 8 * in_dims->c;
}

#if BNN_USE_DSP
/* One output element from the accumulator of channel o: the common store (any transform). */
#define BNN_PW_STORE(acc, o, index) bnn_output_store_kind(kind, output, (o), (acc), out, (index))

/* The 4 products of 4 int8 weights (word wv) with 4 expanded inputs (xl: (x0, x2), xh: (x1, x3),
 * int16 halfwords minus the zero point) added to acc: SXTB16 twice and SMLAD twice. */
static inline int32_t bnn_pw_mac4(int32_t acc, int32_t xl, int32_t xh, int32_t wv)
{
    acc = __smlad(xl, __sxtb16(wv), acc);
    return __smlad(xh, bnn_sxtb16_ror8(wv), acc);
}

/* Pointwise (1x1, no padding) convolution, Cortex-M7: two output pixels by two output channels
 * per step, so that each loaded and expanded input word serves two channels and each weight
 * word two pixels (4 loads, 8 expansions and 8 SMLADs per 16 MACs). Same sums modulo 2^32 as
 * bnn_dot_s8: bit-exact. */
BNN_ALWAYS_INLINE void bnn_conv_1x1_body(bnn_out_kind_t kind, const bnn_conv_params_t *params,
                                         const bnn_output_t *output_in, const int8_t *in,
                                         int32_t in_w, int32_t in_c, const int8_t *filter,
                                         int32_t out_h, int32_t out_w, int32_t out_c, void *out)
{
    /* a local copy: the int8 stores below may alias *output, this cannot */
    const bnn_output_t local = *output_in;
    const bnn_output_t *const output = &local;
    const int32_t npix = out_h * out_w;
    const int32_t neg_zp = bnn_neg_zp_pair(params->input_zero_point);
    const int32_t zp = params->input_zero_point;
    int32_t pix;
    for (pix = 0; pix < npix; pix += 2) {
        const int32_t two = pix + 1 < npix;
        const int32_t y0 = pix / out_w, x0 = pix - y0 * out_w;
        const int32_t y1 = two ? (pix + 1) / out_w : y0, x1 = two ? pix + 1 - y1 * out_w : x0;
        const int8_t *in0 = in + (size_t)((y0 * params->stride_h * in_w + x0 * params->stride_w) *
                                          in_c);
        const int8_t *in1 = in + (size_t)((y1 * params->stride_h * in_w + x1 * params->stride_w) *
                                          in_c);
        const int32_t base0 = pix * out_c;
        const int32_t base1 = base0 + out_c;
        int32_t o = 0;
        for (; o + 2 <= out_c; o += 2) {
            const int8_t *w0 = filter + (size_t)o * (size_t)in_c;
            const int8_t *w1 = w0 + in_c;
            int32_t a00 = 0, a01 = 0, a10 = 0, a11 = 0;
            int32_t k = 0;
            for (; k + 4 <= in_c; k += 4) {
                int32_t xv0, xv1, wv0, wv1, x0l, x0h, x1l, x1h;
                memcpy(&xv0, in0 + k, 4);
                memcpy(&xv1, in1 + k, 4);
                memcpy(&wv0, w0 + k, 4);
                memcpy(&wv1, w1 + k, 4);
                x0l = __sxtab16(neg_zp, xv0);
                x0h = bnn_sxtab16_ror8(neg_zp, xv0);
                x1l = __sxtab16(neg_zp, xv1);
                x1h = bnn_sxtab16_ror8(neg_zp, xv1);
                a00 = bnn_pw_mac4(a00, x0l, x0h, wv0);
                a01 = bnn_pw_mac4(a01, x0l, x0h, wv1);
                a10 = bnn_pw_mac4(a10, x1l, x1h, wv0);
                a11 = bnn_pw_mac4(a11, x1l, x1h, wv1);
            }
            {
                uint32_t u00 = (uint32_t)a00, u01 = (uint32_t)a01;
                uint32_t u10 = (uint32_t)a10, u11 = (uint32_t)a11;
                for (; k < in_c; ++k) {
                    int32_t d0 = in0[k] - zp, d1 = in1[k] - zp;
                    u00 += (uint32_t)(w0[k] * d0);
                    u01 += (uint32_t)(w1[k] * d0);
                    u10 += (uint32_t)(w0[k] * d1);
                    u11 += (uint32_t)(w1[k] * d1);
                }
                BNN_PW_STORE(bnn_s32_from_u32(u00), o, base0 + o);
                BNN_PW_STORE(bnn_s32_from_u32(u01), o + 1, base0 + o + 1);
                if (two) {
                    BNN_PW_STORE(bnn_s32_from_u32(u10), o, base1 + o);
                    BNN_PW_STORE(bnn_s32_from_u32(u11), o + 1, base1 + o + 1);
                }
            }
        }
        if (o < out_c) { /* the last channel of an odd count */
            const int8_t *w0 = filter + (size_t)o * (size_t)in_c;
            BNN_PW_STORE(bnn_s32_from_u32(bnn_dot_s8(0u, in0, w0, in_c, zp)), o, base0 + o);
            if (two) {
                BNN_PW_STORE(bnn_s32_from_u32(bnn_dot_s8(0u, in1, w0, in_c, zp)), o, base1 + o);
            }
        }
    }
}
#undef BNN_PW_STORE

/* Words of the buffer of the expanded inputs (bnn_conv_dsp_*): pairs of pixels take depths up
 * to BNN_PW_XBUF, blocks of 4 pixels up to BNN_PW_XBUF / 2. */
#define BNN_PW_XBUF 256

/* The input pointer of output pixel `pix` of a pointwise convolution. */
BNN_ALWAYS_INLINE const int8_t *bnn_pw_pixel(const bnn_conv_params_t *params, const int8_t *in,
                                             int32_t in_w, int32_t in_c, int32_t out_w,
                                             int32_t pix)
{
    const int32_t y = pix / out_w, x = pix - y * out_w;
    return in + (size_t)((y * params->stride_h * in_w + x * params->stride_w) * in_c);
}

/* One group of 4 taps for the 4 pixels (bnn_conv_x4_channels' assembly): the weight word
 * expanded by SXTB16, the 8 expanded input words by two LDMs, 8 SMLADs. */
#define BNN_X4_GROUP                                                                           \
    "ldr     %[wh], [%[w]], #4\n\t"                                                             \
    "sxtb16  %[wl], %[wh]\n\t"                                                                 \
    "sxtb16  %[wh], %[wh], ror #8\n\t"                                                         \
    "ldmia   %[x]!, {r4, r5, r6, r8}\n\t"                                                      \
    "smlad   %[a0], r4, %[wl], %[a0]\n\t"                                                      \
    "smlad   %[a0], r5, %[wh], %[a0]\n\t"                                                      \
    "smlad   %[a1], r6, %[wl], %[a1]\n\t"                                                      \
    "smlad   %[a1], r8, %[wh], %[a1]\n\t"                                                      \
    "ldmia   %[x]!, {r4, r5, r6, r8}\n\t"                                                      \
    "smlad   %[a2], r4, %[wl], %[a2]\n\t"                                                      \
    "smlad   %[a2], r5, %[wh], %[a2]\n\t"                                                      \
    "smlad   %[a3], r6, %[wl], %[a3]\n\t"                                                      \
    "smlad   %[a3], r8, %[wh], %[a3]\n\t"

/* bnn_x4_asm's state, read and updated by the assembly through lr (offsets in the comments);
 * one per bnn_conv_dsp_* call, in its frame beside the buffer, for every block of 4 pixels. */
typedef struct {
    const int32_t *xb; /* 0: the expanded inputs */
    uintptr_t xlim;    /* 4: xb + 8 * groups - 64, as an integer: two groups remain while
                        * x <= xlim (it may lie before xb, where no pointer may point) */
    const int8_t *w;   /* 8: the first channel's weights */
    int32_t wskip;     /* 12: fstride - 4 * groups, from one channel's last group to the next */
    int8_t *y;         /* 16: the current channel's output at the block's first pixel */
    int32_t oc;        /* 20: out_c, the pixel stride of the output */
    int8_t *y_end;     /* 24: y past the last channel */
    const void *c0;    /* 28: TFLite bias (int32), affine a_mult (int32), per channel; in
                        * bnn_x4_tab8_*: where the unrolled MACs start (BNN_X4A_MACS8) */
    const void *c1;    /* 32: TFLite q_mult (int32), affine a_offset (int64) */
    const void *c2;    /* 36: TFLite q_shift (int32), affine a_shift (int8) */
    int32_t zp2p1;     /* 40: TFLite 2 * out_zero_point + 1 (bnn_tflite_fast_c's factor) */
    const int32_t *tab; /* 44: bnn_x4_tab_*: the current channel's constants (bnn_x4_table) */
} bnn_x4_state_t;
/* the offsets above are the assembly's: a build where they differ fails here */
typedef char bnn_x4_state_layout_ok[(offsetof(bnn_x4_state_t, c0) == 28 &&
                                     offsetof(bnn_x4_state_t, zp2p1) == 40 &&
                                     offsetof(bnn_x4_state_t, tab) == 44)
                                        ? 1
                                        : -1];

#if BNN_TFLITE_FAST && BNN_AFFINE_FAST && defined(__GNUC__)
#define BNN_X4_ASM 1
#define BNN_X4_ASM_ARG __attribute__((unused)) /* read by the assembly, not by C */

/* One group of 4 taps for the 4 pixels: the weight word (r11 moving on) expanded into r7 (taps
 * 0, 2) and r9 (1, 3), the 8 expanded input words (r10 moving on) by two LDMs, 8 SMLADs into
 * the sums r0..r3. */
#define BNN_X4A_GROUP                                                                          \
    "ldr     r9, [r11], #4\n\t"                                                                 \
    "sxtb16  r7, r9\n\t"                                                                        \
    "sxtb16  r9, r9, ror #8\n\t"                                                                \
    "ldmia   r10!, {r4, r5, r6, r8}\n\t"                                                        \
    "smlad   r0, r4, r7, r0\n\t"                                                                \
    "smlad   r0, r5, r9, r0\n\t"                                                                \
    "smlad   r1, r6, r7, r1\n\t"                                                                \
    "smlad   r1, r8, r9, r1\n\t"                                                                \
    "ldmia   r10!, {r4, r5, r6, r8}\n\t"                                                        \
    "smlad   r2, r4, r7, r2\n\t"                                                                \
    "smlad   r2, r5, r9, r2\n\t"                                                                \
    "smlad   r3, r6, r7, r3\n\t"                                                                \
    "smlad   r3, r8, r9, r3\n\t"
/* A channel's sums: from x = xb (r10), two groups per turn while x <= xlim (r12), then the odd
 * one. */
#define BNN_X4A_MACS                                                                           \
    "ldr     r10, [lr, #0]\n\t"                                                                 \
    "ldr     r12, [lr, #4]\n\t"                                                                 \
    "cmp     r10, r12\n\t"                                                                      \
    "bhi     2f\n"                                                                              \
    "1:\n\t" BNN_X4A_GROUP BNN_X4A_GROUP                                                        \
    "cmp     r10, r12\n\t"                                                                      \
    "bls     1b\n"                                                                              \
    "2:\n\t"                                                                                    \
    "add     r7, r12, #64\n\t"                                                                  \
    "cmp     r10, r7\n\t"                                                                       \
    "bhs     3f\n\t" BNN_X4A_GROUP                                                              \
    "3:\n\t"
/* The channel's constant pointer at [lr, #off] read into `reg` by `load` (its post-increment)
 * and moved on. */
#define BNN_X4A_NEXT(load, reg, off, step)                                                     \
    "ldr     r7, [lr, #" off "]\n\t"                                                            \
    load "   " reg ", [r7], #" step "\n\t"                                                      \
    "str     r7, [lr, #" off "]\n\t"
/* bnn_tflite_fast of the sum stored at addr, from x = 2 (acc + bias) (the inputs expanded
 * doubled, bnn_x4_expand, and the sums started at twice the bias): mult r4, e r5, c r6; r12
 * scratch */
#define BNN_X4A_TFLITE_STEP(x, addr)                                                           \
    "smmlar  r12, " x ", r4, r6\n\t"                                                            \
    "add     r12, r12, " x ", asr #31\n\t"                                                      \
    "asr     r12, r12, r5\n\t"                                                                  \
    "ssat    r12, #8, r12\n\t"                                                                  \
    "strb    r12, " addr "\n\t"
/* bnn_affine_fast of the sum x stored at addr: mult r4, offset r5:r6, k = shift - 32 r8 */
#define BNN_X4A_AFFINE_STEP(x, addr, label)                                                    \
    "mov     r7, r5\n\t"                                                                        \
    "mov     r12, r6\n\t"                                                                       \
    "smlal   r7, r12, " x ", r4\n\t"                                                            \
    "asr     " x ", r12, r8\n\t"                                                                \
    "cbnz    r7, " label "f\n\t" /* the low word 0: maybe a tie */                             \
    "rsb     r7, r8, #32\n\t"                                                                   \
    "lsls    r7, r12, r7\n\t"                                                                   \
    "it      eq\n\t"                                                                            \
    "biceq   " x ", " x ", #1\n"                                                                \
    label ":\n\t"                                                                               \
    "ssat    " x ", #8, " x "\n\t"                                                              \
    "strb    " x ", " addr "\n\t"
/* The 4 outputs y[0], y[oc], y[2 oc], y[3 oc] of the channel (y r9, oc r10), by `step`; then
 * y moves on, the weights skip to the next channel's, and the loop goes on to y_end. */
#define BNN_X4A_STORE4(step0, step1, step2, step3)                                             \
    "ldrd    r9, r10, [lr, #16]\n\t" step0 step1                                                \
    "add     r0, r9, r10, lsl #1\n\t" step2 step3                                               \
    "add     r9, r9, #1\n\t"                                                                    \
    "str     r9, [lr, #16]\n\t"                                                                 \
    "ldr     r7, [lr, #12]\n\t"                                                                 \
    "add     r11, r11, r7\n\t"                                                                  \
    "ldr     r7, [lr, #24]\n\t"                                                                 \
    "cmp     r9, r7\n\t"                                                                        \
    "bne     10b\n\t"

/* The loop's start: r7 saved, the state in lr, the weights in r11; then per channel (label
 * 10). */
#define BNN_X4A_ENTER                                                                          \
    "push    {r7}\n\t"                                                                          \
    "mov     lr, r12\n\t"                                                                        \
    "ldr     r11, [lr, #8]\n"                                                                    \
    "10:\n\t"
#define BNN_X4A_CLOBBERS                                                                       \
    "r0", "r1", "r2", "r3", "r4", "r5", "r6", "r8", "r9", "r10", "r11", "lr", "cc", "memory"

/* Words per channel of bnn_x4_table: bnn_tflite_fast_words (the bias last) or
 * bnn_affine_fast_words. */
#define BNN_X4_TAB_WORDS 4

/* The most groups of 4 input channels the unrolled MACs of bnn_x4_tab8_* take. */
#define BNN_X4_UNROLL 8
/* A channel's sums, unrolled: BNN_X4_UNROLL groups, entered at the first of the last `groups`
 * of them (the address in st->c0's word, 52 bytes per group: every instruction is 32 bits wide,
 * which the assembler checks), from x = xb (r10). */
#define BNN_X4A_MACS8                                                                          \
    "ldr     r10, [lr, #0]\n\t"                                                                 \
    "ldr     pc, [lr, #28]\n"                                                                    \
    "21:\n\t" BNN_X4A_GROUP BNN_X4A_GROUP BNN_X4A_GROUP BNN_X4A_GROUP BNN_X4A_GROUP             \
    BNN_X4A_GROUP BNN_X4A_GROUP BNN_X4A_GROUP                                                  \
    "20:\n\t"                                                                                    \
    ".if 20b - 21b != 52 * 8\n\t"                                                               \
    ".error \"bnn_x4_tab8: a group is not 52 bytes\"\n\t"                                       \
    ".endif\n\t"
/* bnn_x4_tab8_*'s start: st->c0's word = 20f - 52 * groups (groups from xlim - xb = 32 * groups -
 * 64), with the Thumb bit, for LDR PC. */
#define BNN_X4A_ENTRY8                                                                         \
    "ldrd    r10, r12, [lr, #0]\n\t"                                                             \
    "sub     r12, r12, r10\n\t"                                                                  \
    "add     r12, r12, #64\n\t"                                                                  \
    "add     r7, r12, r12, lsr #1\n\t"                                                           \
    "add     r7, r7, r12, lsr #3\n\t"                                                            \
    "adr     r9, 20f\n\t"                                                                        \
    "sub     r9, r9, r7\n\t"                                                                     \
    "orr     r9, r9, #1\n\t"                                                                     \
    "str     r9, [lr, #28]\n"

/* The channels' start: TFLite sums from twice the bias (the table's word 3), affine from 0. */
#define BNN_X4A_TAB_INIT_TFLITE                                                                \
    "ldr     r7, [lr, #44]\n\t"                                                                  \
    "ldr     r0, [r7, #12]\n\t"                                                                  \
    "mov     r1, r0\n\t"                                                                         \
    "mov     r2, r0\n\t"                                                                         \
    "mov     r3, r0\n\t"
#define BNN_X4A_TAB_INIT_AFFINE                                                                \
    "mov     r0, #0\n\t"                                                                         \
    "mov     r1, #0\n\t"                                                                         \
    "mov     r2, #0\n\t"                                                                         \
    "mov     r3, #0\n\t"
#define BNN_X4A_TAB_STORE_TFLITE                                                               \
    BNN_X4A_STORE4(BNN_X4A_TFLITE_STEP("r0", "[r9]"), BNN_X4A_TFLITE_STEP("r1", "[r9, r10]"),  \
                   BNN_X4A_TFLITE_STEP("r2", "[r0]"), BNN_X4A_TFLITE_STEP("r3", "[r0, r10]"))
#define BNN_X4A_TAB_STORE_AFFINE                                                               \
    BNN_X4A_STORE4(BNN_X4A_AFFINE_STEP("r0", "[r9]", "4"),                                     \
                   BNN_X4A_AFFINE_STEP("r1", "[r9, r10]", "5"),                                \
                   BNN_X4A_AFFINE_STEP("r2", "[r0]", "6"),                                     \
                   BNN_X4A_AFFINE_STEP("r3", "[r0, r10]", "7"))
/* bnn_x4_asm's loop with each channel's constants read from a table (st->tab, bnn_x4_table)
 * by one LDM instead of three arrays: 5 (TFLite) or 3 (affine) instructions per channel where
 * the arrays take 13 and 10. Naked functions (the state's address in r0, AAPCS): the assembly
 * saves and restores the registers it uses (36 bytes of stack). bnn_x4_tab_*: the MACs in a
 * loop; bnn_x4_tab8_*: for at most BNN_X4_UNROLL groups, unrolled (BNN_X4A_MACS8), which saves
 * the loop's 7 to 13 instructions per channel. */
#define BNN_X4A_TAB_FN(name, start, init, macs, store)                                         \
    __attribute__((naked)) static void name(bnn_x4_state_t *st BNN_X4_ASM_ARG)                 \
    {                                                                                          \
        __asm__ volatile("push    {r4-r11, lr}\n\t"                                             \
                         "mov     lr, r0\n\t" start                                             \
                         "ldr     r11, [lr, #8]\n"                                               \
                         "10:\n\t" init macs                                                    \
                         "ldr     r7, [lr, #44]\n\t"                                            \
                         "ldmia   r7!, {r4, r5, r6, r8}\n\t"                                    \
                         "str     r7, [lr, #44]\n\t" store                                      \
                         "pop     {r4-r11, pc}\n\t");                                           \
    }
BNN_X4A_TAB_FN(bnn_x4_tab_tflite, "", BNN_X4A_TAB_INIT_TFLITE, BNN_X4A_MACS,
               BNN_X4A_TAB_STORE_TFLITE)
BNN_X4A_TAB_FN(bnn_x4_tab_affine, "", BNN_X4A_TAB_INIT_AFFINE, BNN_X4A_MACS,
               BNN_X4A_TAB_STORE_AFFINE)
BNN_X4A_TAB_FN(bnn_x4_tab8_tflite, BNN_X4A_ENTRY8, BNN_X4A_TAB_INIT_TFLITE, BNN_X4A_MACS8,
               BNN_X4A_TAB_STORE_TFLITE)
BNN_X4A_TAB_FN(bnn_x4_tab8_affine, BNN_X4A_ENTRY8, BNN_X4A_TAB_INIT_AFFINE, BNN_X4A_MACS8,
               BNN_X4A_TAB_STORE_AFFINE)
#undef BNN_X4A_TAB_FN
#undef BNN_X4A_MACS8
#undef BNN_X4A_ENTRY8
#undef BNN_X4A_TAB_INIT_TFLITE
#undef BNN_X4A_TAB_INIT_AFFINE
#undef BNN_X4A_TAB_STORE_TFLITE
#undef BNN_X4A_TAB_STORE_AFFINE

/* The constants of channels o_begin .. o_end - 1 for bnn_x4_tab_* into tab (BNN_X4_TAB_WORDS
 * words each), for a call whose every channel takes a fast store (bnn_fast_stores_ok). The
 * output's arrays come one by one (taking the address of a local copy of the output struct
 * would keep that copy in the caller's frame). */
BNN_NOINLINE void bnn_x4_table_tflite(const int32_t *bias, const int32_t *mult,
                                      const int32_t *shift, int32_t zp, int32_t n, int32_t *tab)
{
    int32_t o;
    for (o = 0; o < n; ++o, tab += BNN_X4_TAB_WORDS) {
        /* twice the bias (within int32: bnn_tflite_bias_ok), as the sums are doubled */
        bnn_tflite_fast_words(mult[o], shift[o], zp, 2 * bias[o], tab);
    }
}
BNN_NOINLINE void bnn_x4_table_affine(const int32_t *mult, const int64_t *offset,
                                      const int8_t *shift, int32_t n, int32_t *tab)
{
    int32_t o;
    for (o = 0; o < n; ++o, tab += BNN_X4_TAB_WORDS) {
        bnn_affine_fast_words(mult[o], offset[o], shift[o], tab);
    }
}
BNN_ALWAYS_INLINE void bnn_x4_table(bnn_out_kind_t kind, const bnn_output_t *output,
                                    int32_t o_begin, int32_t o_end, int32_t *tab)
{
    if (kind == BNN_OUT_TFLITE) {
        bnn_x4_table_tflite(output->bias + o_begin, output->q_mult + o_begin,
                            output->q_shift + o_begin, output->out_zero_point, o_end - o_begin,
                            tab);
    } else {
        bnn_x4_table_affine(output->a_mult + o_begin, output->a_offset + o_begin,
                            output->a_shift + o_begin, o_end - o_begin, tab);
    }
}

/* bnn_conv_x4_channels in one assembly loop over the channels o_begin .. o_end - 1, for the
 * fast stores only: TFLite with a bias, two roundings, every channel bnn_tflite_fast_ok and the
 * full int8 range, or affine with every shift >= 32 and the full range (bnn_fast_stores_ok). The
 * same arithmetic as the C form (bnn_tflite_fast / bnn_affine_fast), its state in memory (the
 * state's address comes in r12). It uses fixed registers: all but r7 are clobbers (saved by the
 * enclosing function), r7 (the Thumb frame pointer, which may not be a clobber) is saved and
 * restored by the assembly; so it needs nothing of the compiler's register allocation at any
 * optimization level or frame-pointer setting, and no stack but 4 bytes. Per channel it saves
 * the spills and reloads the compiler makes around the 12-register MAC loop. */
BNN_ALWAYS_INLINE void bnn_x4_asm(bnn_out_kind_t kind, const bnn_output_t *output,
                                  const int32_t *xb, int32_t groups, const int8_t *filter,
                                  int32_t fstride, int32_t o_begin, int32_t o_end, int32_t pix,
                                  int32_t out_c, void *out, const int32_t *tab,
                                  bnn_x4_state_t *state)
{
    bnn_x4_state_t *const st = state;
    register bnn_x4_state_t *p __asm__("r12") = st;
    if (o_begin >= o_end) {
        return;
    }
    st->xb = xb;
    st->xlim = (uintptr_t)(xb + 8 * groups) - 64u;
    st->w = filter;
    st->wskip = fstride - 4 * groups;
    st->y = (int8_t *)out + (size_t)pix * (size_t)out_c + (size_t)o_begin;
    st->oc = out_c;
    st->y_end = st->y + (o_end - o_begin);
    st->zp2p1 = 2 * output->out_zero_point + 1;
    if (tab != NULL) { /* the constants from the table (its entry for o_begin) */
        st->tab = tab;
        if (kind == BNN_OUT_TFLITE) {
            (groups <= BNN_X4_UNROLL ? bnn_x4_tab8_tflite : bnn_x4_tab_tflite)(st);
        } else {
            (groups <= BNN_X4_UNROLL ? bnn_x4_tab8_affine : bnn_x4_tab_affine)(st);
        }
        return;
    }
    if (kind == BNN_OUT_TFLITE) {
        st->c0 = output->bias + o_begin;
        st->c1 = output->q_mult + o_begin;
        st->c2 = output->q_shift + o_begin;
        __asm__ volatile(
            BNN_X4A_ENTER BNN_X4A_NEXT("ldr", "r0", "28", "4")
            "add     r0, r0, r0\n\t" /* twice the bias: the sums are doubled */
            "mov     r1, r0\n\t"
            "mov     r2, r0\n\t"
            "mov     r3, r0\n\t" BNN_X4A_MACS BNN_X4A_NEXT("ldr", "r4", "32", "4")
            BNN_X4A_NEXT("ldr", "r5", "36", "4")
            "rsb     r5, r5, #0\n\t" /* e = -shift */
            "sub     r8, r5, #1\n\t"
            "ldr     r6, [lr, #40]\n\t"
            "lsl     r6, r6, r8\n\t" /* c = (2 zp + 1) * 2^(e-1) */
            BNN_X4A_STORE4(BNN_X4A_TFLITE_STEP("r0", "[r9]"),
                           BNN_X4A_TFLITE_STEP("r1", "[r9, r10]"),
                           BNN_X4A_TFLITE_STEP("r2", "[r0]"),
                           BNN_X4A_TFLITE_STEP("r3", "[r0, r10]"))
            "pop     {r7}\n\t"
            : "+r"(p)
            :
            : BNN_X4A_CLOBBERS);
    } else {
        st->c0 = output->a_mult + o_begin;
        st->c1 = output->a_offset + o_begin;
        st->c2 = output->a_shift + o_begin;
        __asm__ volatile(
            BNN_X4A_ENTER
            "mov     r0, #0\n\t"
            "mov     r1, #0\n\t"
            "mov     r2, #0\n\t"
            "mov     r3, #0\n\t" BNN_X4A_MACS BNN_X4A_NEXT("ldr", "r4", "28", "4")
            BNN_X4A_NEXT("ldrd", "r5, r6", "32", "8")
            BNN_X4A_NEXT("ldrsb", "r8", "36", "1")
            "sub     r8, r8, #32\n\t"
            BNN_X4A_STORE4(BNN_X4A_AFFINE_STEP("r0", "[r9]", "4"),
                           BNN_X4A_AFFINE_STEP("r1", "[r9, r10]", "5"),
                           BNN_X4A_AFFINE_STEP("r2", "[r0]", "6"),
                           BNN_X4A_AFFINE_STEP("r3", "[r0, r10]", "7"))
            "pop     {r7}\n\t"
            : "+r"(p)
            :
            : BNN_X4A_CLOBBERS);
    }
}
#undef BNN_X4A_GROUP
#undef BNN_X4A_MACS
#undef BNN_X4A_NEXT
#undef BNN_X4A_TFLITE_STEP
#undef BNN_X4A_AFFINE_STEP
#undef BNN_X4A_STORE4
#undef BNN_X4A_ENTER
#undef BNN_X4A_CLOBBERS

#else
#define BNN_X4_ASM 0
#define BNN_X4_TAB_WORDS 4
#endif

/* The output channels of a block of 4 output pixels (from `pix`) whose inputs are expanded in
 * `xb`, per group of 4 taps [p0 (0, 2), p0 (1, 3), p1 (0, 2), ..., p3 (1, 3)] (int16, minus the
 * zero point), Cortex-M7: each output channel takes per group one weight load, 2 SXTB16, the 8
 * expanded words (2 LDMs in the assembly) and 8 SMLADs (16 MACs), and stores its 4 outputs with
 * its constants read once; channels o_begin .. o_end - 1. Channel o's weights are read as
 * 4 * groups bytes from filter + (o - o_begin) * fstride (bytes past a filter's taps meet taps
 * that are 0; the caller makes sure that the last channel's are readable). Same sums modulo
 * 2^32 as bnn_dot_s8: bit-exact. */
BNN_ALWAYS_INLINE void bnn_conv_x4_channels(bnn_out_kind_t kind, const bnn_output_t *output,
                                            const int32_t *xb, int32_t groups,
                                            const int8_t *filter, int32_t fstride,
                                            int32_t o_begin, int32_t o_end, int32_t pix,
                                            int32_t out_c, void *out, int use_asm,
                                            int full, const int32_t *tab, bnn_x4_state_t *st)
{
#if BNN_TFLITE_FAST /* (and BNN_AFFINE_FAST: the same conditions) */
    /* full: bnn_int8_fast of the call; then the fast stores apply per channel */
    const int fast = kind == BNN_OUT_TFLITE && !output->q_single_rounding && full;
    const int32_t zp = output->out_zero_point;
#endif
    int32_t o;
#if BNN_X4_ASM
    if (use_asm) {
        bnn_x4_asm(kind, output, xb, groups, filter, fstride, o_begin, o_end, pix, out_c, out,
                   tab, st);
        return;
    }
#else
    (void)use_asm;
    (void)tab;
    (void)st;
#endif
#if !BNN_TFLITE_FAST
    (void)full;
#endif
    for (o = o_begin; o < o_end; ++o) {
        const int8_t *w = filter + (size_t)(o - o_begin) * (size_t)fstride;
        const int32_t *x = xb;
        /* TFLite: the sums start at the bias (acc + bias modulo 2^32 either way) */
        const int32_t c = kind == BNN_OUT_TFLITE && output->bias != NULL ? output->bias[o] : 0;
        int32_t a0 = c, a1 = c, a2 = c, a3 = c;
        int8_t *y = (int8_t *)out + (size_t)pix * (size_t)out_c + o;
#if defined(__OPTIMIZE__) && defined(__GNUC__)
        /* 8 registers and r4, r5, r6, r8 (the LDMs' fixed, ascending register list; not r7,
         * the Thumb frame pointer, nor r9, a platform register in some ABIs; with r0-r3, GCC
         * 13 found no allocation at -Og -fno-omit-frame-pointer): 12. The loop's bound comes
         * in wl and waits in a stack slot of the asm's own (a memory operand's address could
         * need a register of its own). Two groups per turn, then the odd one. Compile-checked
         * at -O0, -Og, -O1, -O2, -O3 and -Os, with and without -fno-omit-frame-pointer. */
        {
            /* the last address at which two groups remain, as an integer (it may lie
             * before xb, where no pointer may point) */
            uintptr_t wl = (uintptr_t)(xb + 8 * groups) - 64u;
            int32_t wh;
            __asm__("sub     sp, sp, #8\n\t" /* (8: the stack stays 8-byte aligned) */
                    "str     %[wl], [sp]\n\t"
                    "cmp     %[x], %[wl]\n\t"
                    "bhi     2f\n"
                    "1:\n\t"
                    BNN_X4_GROUP BNN_X4_GROUP
                    "ldr     %[wl], [sp]\n\t"
                    "cmp     %[x], %[wl]\n\t"
                    "bls     1b\n"
                    "2:\n\t"
                    "ldr     %[wl], [sp]\n\t"
                    "add     %[wl], %[wl], #64\n\t" /* the end */
                    "cmp     %[x], %[wl]\n\t"
                    "bhs     3f\n\t"
                    BNN_X4_GROUP
                    "3:\n\t"
                    "add     sp, sp, #8\n\t"
                    : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3),
                      [x] "+r"(x), [w] "+r"(w), [wl] "+r"(wl), [wh] "=&r"(wh)
                    :
                    : "r4", "r5", "r6", "r8", "cc", "memory");
        }
#endif
        /* the C loop: what the assembly left (all of it, or nothing) */
        for (; x < xb + 8 * groups; x += 8, w += 4) {
            int32_t wv, wl, wh;
            memcpy(&wv, w, 4);
            wl = __sxtb16(wv);
            wh = bnn_sxtb16_ror8(wv);
            a0 = __smlad(x[1], wh, __smlad(x[0], wl, a0));
            a1 = __smlad(x[3], wh, __smlad(x[2], wl, a1));
            a2 = __smlad(x[5], wh, __smlad(x[4], wl, a2));
            a3 = __smlad(x[7], wh, __smlad(x[6], wl, a3));
        }
        if (kind == BNN_OUT_AFFINE) { /* the channel's constants once for its 4 outputs */
            const int32_t m = output->a_mult[o], s = output->a_shift[o];
            const int64_t b = output->a_offset[o];
            const int32_t lo = output->act_min, hi = output->act_max;
#if BNN_AFFINE_FAST
            if (full && s >= 32) {
                const int32_t k = s - 32;
                y[0] = (int8_t)bnn_affine_fast(a0, m, b, k);
                y[out_c] = (int8_t)bnn_affine_fast(a1, m, b, k);
                y[2 * out_c] = (int8_t)bnn_affine_fast(a2, m, b, k);
                y[3 * out_c] = (int8_t)bnn_affine_fast(a3, m, b, k);
                continue;
            }
#endif
            y[0] = (int8_t)bnn_affine(a0, m, b, s, lo, hi);
            y[out_c] = (int8_t)bnn_affine(a1, m, b, s, lo, hi);
            y[2 * out_c] = (int8_t)bnn_affine(a2, m, b, s, lo, hi);
            y[3 * out_c] = (int8_t)bnn_affine(a3, m, b, s, lo, hi);
        } else if (kind == BNN_OUT_TFLITE) { /* likewise; the bias is in the sums */
            const int32_t q = output->q_mult[o], s = output->q_shift[o];
#if BNN_TFLITE_FAST
            if (fast && bnn_tflite_fast_ok(q, s, zp)) {
                (void)bnn_tflite_fast4(y, out_c, a0, a1, a2, a3, q, bnn_tflite_fast_c(s, zp), -s);
                continue;
            }
#endif
            y[0] = (int8_t)bnn_tflite_out(a0, 0, q, s, output);
            y[out_c] = (int8_t)bnn_tflite_out(a1, 0, q, s, output);
            y[2 * out_c] = (int8_t)bnn_tflite_out(a2, 0, q, s, output);
            y[3 * out_c] = (int8_t)bnn_tflite_out(a3, 0, q, s, output);
        } else {
            const int32_t base = pix * out_c + o;
            bnn_output_store_kind(kind, output, o, a0, out, base);
            bnn_output_store_kind(kind, output, o, a1, out, base + out_c);
            bnn_output_store_kind(kind, output, o, a2, out, base + 2 * out_c);
            bnn_output_store_kind(kind, output, o, a3, out, base + 3 * out_c);
        }
    }
}
#undef BNN_X4_GROUP

/* One pixel's `groups` groups of 4 int8 inputs at src expanded for the 4-pixel blocks into
 * dst (words 0 and 1 of every 8): x - zp as int16 pairs by SXTAB16 and SXTAB16 ror 8 onto neg
 * (-zp in both halfwords); with dbl, for the TFLite assembly, whose sums are doubled, 2 (x -
 * zp) by a second SXTAB16 onto x - 2 zp (neg then -2 zp; within int16 either way). */
BNN_ALWAYS_INLINE void bnn_x4_expand(int32_t *dst, const int8_t *src, int32_t groups,
                                     int32_t neg, int dbl)
{
    int32_t g, v;
    if (dbl) {
        for (g = 0; g < groups; ++g, src += 4, dst += 8) {
            memcpy(&v, src, 4);
            dst[0] = __sxtab16(__sxtab16(neg, v), v);
            dst[1] = bnn_sxtab16_ror8(bnn_sxtab16_ror8(neg, v), v);
        }
        return;
    }
    for (g = 0; g < groups; ++g, src += 4, dst += 8) {
        memcpy(&v, src, 4);
        dst[0] = __sxtab16(neg, v);
        dst[1] = bnn_sxtab16_ror8(neg, v);
    }
}

/* Pointwise convolution in blocks of 4 output pixels, Cortex-M7, for C a multiple of 4 up to
 * words / 2 (xb: the 1 KB stack buffer or the scratch): the 4 pixels' inputs are expanded once
 * into `xb` (bnn_x4_expand), then bnn_conv_x4_channels. Returns the first pixel not done (npix rounded down to a multiple of
 * 4). */
BNN_ALWAYS_INLINE int32_t bnn_conv_1x1x4(bnn_out_kind_t kind, const bnn_conv_params_t *params,
                                         const bnn_output_t *output, const int8_t *in,
                                         int32_t in_w, int32_t in_c, const int8_t *filter,
                                         int32_t npix, int32_t out_w, int32_t out_c, void *out,
                                         int32_t *xb, int32_t words, bnn_x4_state_t *st)
{
    const int32_t groups = in_c / 4;
    const int32_t acc_max = bnn_acc_max(in_c);
    const int use_asm = BNN_X4_ASM && bnn_fast_stores_ok(kind, output, out_c, acc_max);
    /* the TFLite assembly takes doubled sums (BNN_X4A_TFLITE_STEP) */
    const int dbl = use_asm && kind == BNN_OUT_TFLITE;
    const int32_t neg_zp = bnn_neg_zp_pair((dbl ? 2 : 1) * params->input_zero_point);
    const int full = bnn_int8_fast(kind, output, out_c, acc_max);
    /* the channels whose constants fit in xb after the expanded inputs (bnn_x4_table); taken
     * in chunks of that many, each chunk expanding the inputs again, where that costs less
     * than half of what the table saves (per block of 4 pixels: about 8 instructions per
     * channel saved, 28 per group of 4 input channels and 40 more per chunk after the first,
     * 15 per chunk for the call) */
    const int32_t fit = (words - 8 * groups) / BNN_X4_TAB_WORDS;
    const int32_t chunks = fit > 0 ? (out_c + fit - 1) / fit : 0;
    const int table = use_asm && fit > 0 &&
                      8 * out_c > 2 * ((chunks - 1) * (28 * groups + 40) + 15 * chunks);
    const int32_t chunk = table && fit < out_c ? fit : out_c;
    int32_t *const tab = xb + 8 * groups;
    int32_t pix = 0, o0;
    for (o0 = 0; o0 < out_c; o0 += chunk) {
        const int32_t o1 = out_c - o0 < chunk ? out_c : o0 + chunk;
#if BNN_X4_ASM
        if (table) {
            bnn_x4_table(kind, output, o0, o1, tab);
        }
#endif
        for (pix = 0; pix + 4 <= npix; pix += 4) {
            int32_t p;
            for (p = 0; p < 4; ++p) {
                bnn_x4_expand(xb + 2 * p, bnn_pw_pixel(params, in, in_w, in_c, out_w, pix + p),
                              groups, neg_zp, dbl);
            }
            bnn_conv_x4_channels(kind, output, xb, groups, filter + (size_t)o0 * (size_t)in_c,
                                 in_c, o0, o1, pix, out_c, out, use_asm, full, table ? tab : NULL,
                                 st);
        }
    }
    return pix;
}

/* Pointwise convolution with C a multiple of 4 (<= words, the size of xb), Cortex-M7: blocks of
 * 4 pixels where 8 * C / 4 <= words (bnn_conv_1x1x4), then pairs of pixels: the two pixels of a
 * step are expanded once into int16 pairs (x - zero point: SXTAB16 and SXTAB16 ror 8, for each
 * group of 4 channels [x0 (0, 2), x0 (1, 3), x1 (0, 2), x1 (1, 3)]), so that every output
 * channel pair then costs per 4 input channels 4 loads of the expanded words, 2 weight loads,
 * 4 SXTB16 and 8 SMLADs (16 MACs). Same sums modulo 2^32 as bnn_dot_s8: bit-exact. */
BNN_ALWAYS_INLINE void bnn_conv_1x1x_body(bnn_out_kind_t kind, const bnn_conv_params_t *params,
                                          const bnn_output_t *output_in, const int8_t *in,
                                          int32_t in_w, int32_t in_c, const int8_t *filter,
                                          int32_t out_h, int32_t out_w, int32_t out_c, void *out,
                                          int32_t *xb, int32_t words, bnn_x4_state_t *st)
{
    /* a local copy: the int8 stores below may alias *output, this cannot */
    const bnn_output_t local = *output_in;
    const bnn_output_t *const output = &local;
    const int32_t npix = out_h * out_w;
    const int32_t neg_zp = bnn_neg_zp_pair(params->input_zero_point);
    const int32_t groups = in_c / 4;
    const int full = bnn_int8_fast(kind, output, out_c, bnn_acc_max(in_c));
    int32_t pix = 0;
    if (groups <= words / 8) { /* blocks of 4 pixels first, then pairs (xb: `words` words) */
        pix = bnn_conv_1x1x4(kind, params, output, in, in_w, in_c, filter, npix, out_w, out_c,
                             out, xb, words, st);
    }
    for (; pix < npix; pix += 2) {
        const int32_t two = pix + 1 < npix;
        const int32_t y0 = pix / out_w, x0 = pix - y0 * out_w;
        const int32_t y1 = two ? (pix + 1) / out_w : y0, x1 = two ? pix + 1 - y1 * out_w : x0;
        const int8_t *in0 = in + (size_t)((y0 * params->stride_h * in_w + x0 * params->stride_w) *
                                          in_c);
        const int8_t *in1 = in + (size_t)((y1 * params->stride_h * in_w + x1 * params->stride_w) *
                                          in_c);
        const int32_t base0 = pix * out_c;
        const int32_t base1 = base0 + out_c;
        int32_t g, o = 0;
        for (g = 0; g < groups; ++g) {
            int32_t v0, v1;
            memcpy(&v0, in0 + 4 * g, 4);
            memcpy(&v1, in1 + 4 * g, 4);
            xb[4 * g] = __sxtab16(neg_zp, v0);
            xb[4 * g + 1] = bnn_sxtab16_ror8(neg_zp, v0);
            xb[4 * g + 2] = __sxtab16(neg_zp, v1);
            xb[4 * g + 3] = bnn_sxtab16_ror8(neg_zp, v1);
        }
        for (; o + 2 <= out_c; o += 2) {
            /* 14 values live in the loop (4 sums, 4 pointers and counts, 6 operands): the
             * registers of the Cortex-M7 */
            const int8_t *w = filter + (size_t)o * (size_t)in_c;
            const int32_t *x = xb;
            const int32_t *const x_end = xb + 4 * groups;
            int32_t a00 = 0, a01 = 0, a10 = 0, a11 = 0;
#if defined(__OPTIMIZE__) && defined(__GNUC__)
            /* The same loop in assembly: 13 registers, so that none spills (GCC's allocation
             * of the C loop below spills a few per step). groups >= 1: it runs at least once.
             * Per 4 input channels: 2 weight loads, 4 SXTB16, 4 loads of the expanded
             * inputs, 8 SMLADs, compare and branch. */
            {
                int32_t t0, t1, t2, t3, t4;
                const int32_t ic = in_c;
                __asm__("1:\n\t"
                        "ldr    %[t0], [%[w], %[ic]]\n\t"
                        "ldr    %[t1], [%[w]], #4\n\t"
                        "sxtb16 %[t2], %[t1]\n\t"
                        "sxtb16 %[t1], %[t1], ror #8\n\t"
                        "sxtb16 %[t3], %[t0]\n\t"
                        "sxtb16 %[t0], %[t0], ror #8\n\t"
                        "ldr    %[t4], [%[x]], #4\n\t"
                        "smlad  %[a00], %[t4], %[t2], %[a00]\n\t"
                        "smlad  %[a01], %[t4], %[t3], %[a01]\n\t"
                        "ldr    %[t4], [%[x]], #4\n\t"
                        "smlad  %[a00], %[t4], %[t1], %[a00]\n\t"
                        "smlad  %[a01], %[t4], %[t0], %[a01]\n\t"
                        "ldr    %[t4], [%[x]], #4\n\t"
                        "smlad  %[a10], %[t4], %[t2], %[a10]\n\t"
                        "smlad  %[a11], %[t4], %[t3], %[a11]\n\t"
                        "ldr    %[t4], [%[x]], #4\n\t"
                        "smlad  %[a10], %[t4], %[t1], %[a10]\n\t"
                        "smlad  %[a11], %[t4], %[t0], %[a11]\n\t"
                        "cmp    %[x], %[xe]\n\t"
                        "blo    1b\n\t"
                        : [a00] "+r"(a00), [a01] "+r"(a01), [a10] "+r"(a10), [a11] "+r"(a11),
                          [x] "+r"(x), [w] "+r"(w), [t0] "=&r"(t0), [t1] "=&r"(t1),
                          [t2] "=&r"(t2), [t3] "=&r"(t3), [t4] "=&r"(t4)
                        : [xe] "r"(x_end), [ic] "r"(ic)
                        : "cc", "memory");
            }
#endif
            for (; x < x_end; x += 4, w += 4) {
                int32_t wv0, wv1, w0l, w0h, w1l, w1h, xl, xh;
                memcpy(&wv0, w, 4);
                memcpy(&wv1, w + in_c, 4);
                w0l = __sxtb16(wv0);
                w0h = bnn_sxtb16_ror8(wv0);
                w1l = __sxtb16(wv1);
                w1h = bnn_sxtb16_ror8(wv1);
                xl = x[0];
                xh = x[1];
                a00 = __smlad(xl, w0l, a00);
                a01 = __smlad(xl, w1l, a01);
                a00 = __smlad(xh, w0h, a00);
                a01 = __smlad(xh, w1h, a01);
                xl = x[2];
                xh = x[3];
                a10 = __smlad(xl, w0l, a10);
                a11 = __smlad(xl, w1l, a11);
                a10 = __smlad(xh, w0h, a10);
                a11 = __smlad(xh, w1h, a11);
            }
            if (kind != BNN_OUT_FLOAT) { /* each channel's constants once for both pixels */
                int8_t *y = (int8_t *)out;
                y[base0 + o] = (int8_t)bnn_int8_out(kind, output, o, a00, full);
                if (two) {
                    y[base1 + o] = (int8_t)bnn_int8_out(kind, output, o, a10, full);
                }
                y[base0 + o + 1] = (int8_t)bnn_int8_out(kind, output, o + 1, a01, full);
                if (two) {
                    y[base1 + o + 1] = (int8_t)bnn_int8_out(kind, output, o + 1, a11, full);
                }
                continue;
            }
            bnn_output_store_kind(kind, output, o, a00, out, base0 + o);
            bnn_output_store_kind(kind, output, o + 1, a01, out, base0 + o + 1);
            if (two) {
                bnn_output_store_kind(kind, output, o, a10, out, base1 + o);
                bnn_output_store_kind(kind, output, o + 1, a11, out, base1 + o + 1);
            }
        }
        if (o < out_c) { /* the last channel of an odd count */
            const int8_t *w0 = filter + (size_t)o * (size_t)in_c;
            const int32_t *x = xb;
            int32_t a00 = 0, a10 = 0;
            for (g = 0; g < groups; ++g, x += 4, w0 += 4) {
                int32_t wv0, wl, wh;
                memcpy(&wv0, w0, 4);
                wl = __sxtb16(wv0);
                wh = bnn_sxtb16_ror8(wv0);
                a00 = __smlad(x[1], wh, __smlad(x[0], wl, a00));
                a10 = __smlad(x[3], wh, __smlad(x[2], wl, a10));
            }
            bnn_output_store_kind(kind, output, o, a00, out, base0 + o);
            if (two) {
                bnn_output_store_kind(kind, output, o, a10, out, base1 + o);
            }
        }
    }
}

/* Largest window (KH * KW * C taps) the patch path takes: its int16 copy (BNN_PATCH_MAX * 2
 * bytes) lives in the pointwise path's buffer. Larger windows take the tap-by-tap path. */
#define BNN_PATCH_MAX 288
/* (C99 compile-time check: the patch fits the buffer) */
typedef char bnn_patch_fits_buffer[2 * BNN_PATCH_MAX <= 4 * BNN_PW_XBUF ? 1 : -1];

/* The 4 weights of group g of filter w (taps 4g .. 4g + 3) against the patch words: 2 SMLADs. */
#define BNN_PATCH_MAC(acc, w, g)                                                               \
    do {                                                                                       \
        int32_t wv_;                                                                           \
        memcpy(&wv_, (w) + 4 * (g), 4);                                                        \
        (acc) = bnn_pw_mac4((acc), word[2 * (g)], word[2 * (g) + 1], wv_);                    \
    } while (0)

/* n (1..4) bytes from w as a little-endian word, zero above (a filter's last, partial group,
 * read without passing the end of the array). */
static inline int32_t bnn_patch_tail_word(const int8_t *w, int32_t n)
{
    uint32_t v = 0;
    int32_t k;
    for (k = n - 1; k >= 0; --k) {
        v = (v << 8) | (uint8_t)w[k];
    }
    return bnn_s32_from_u32(v);
}

/* n bytes from src to dst (no overlap), words first (unaligned word access: Cortex-M7), the
 * last 0..3 bytes one by one; a few bytes, so a call to memmove would cost more than the copy. */
static inline void bnn_patch_copy(int8_t *dst, const int8_t *src, int32_t n)
{
    int32_t t = 0;
    for (; t + 4 <= n; t += 4) {
        uint32_t v;
        memcpy(&v, src + t, 4);
#if defined(__GNUC__)
        __asm__("" : "+r"(v)); /* keeps the loop a loop (GCC would call memmove for it) */
#endif
        memcpy(dst + t, &v, 4);
    }
    switch (n - t) {
    case 3:
        dst[t + 2] = src[t + 2];
        /* fall through */
    case 2:
        dst[t + 1] = src[t + 1];
        /* fall through */
    case 1:
        dst[t] = src[t];
        break;
    default:
        break;
    }
}

/* The window of output pixel (oy, ox) as bytes in OHWI tap order into raw[0 .. taps): taps in
 * the padding are the zero point. Interior windows copy whole kernel rows. */
BNN_ALWAYS_INLINE void bnn_patch_gather(const bnn_conv_params_t *params, const int8_t *in,
                                        int32_t in_h, int32_t in_w, int32_t in_c, int32_t kh,
                                        int32_t kw, int32_t oy, int32_t ox, int8_t *raw)
{
    const int32_t y0 = oy * params->stride_h - params->pad_top;
    const int32_t x0 = ox * params->stride_w - params->pad_left;
    const int8_t zp8 = (int8_t)params->input_zero_point;
    const int32_t row_bytes = kw * in_c;
    int32_t i, j, k;
    if (y0 >= 0 && x0 >= 0 && y0 + (kh - 1) * params->dilation_h < in_h &&
        x0 + (kw - 1) * params->dilation_w < in_w && params->dilation_w == 1) {
        for (i = 0; i < kh; ++i) { /* whole kernel rows are contiguous */
            const int32_t iy = y0 + i * params->dilation_h;
            bnn_patch_copy(raw + i * row_bytes, in + (size_t)((iy * in_w + x0) * in_c),
                           row_bytes);
        }
        return;
    }
    k = 0;
    for (i = 0; i < kh; ++i) {
        const int32_t iy = y0 + i * params->dilation_h;
        for (j = 0; j < kw; ++j, k += in_c) {
            const int32_t ix = x0 + j * params->dilation_w;
            if (iy >= 0 && iy < in_h && ix >= 0 && ix < in_w) {
                bnn_patch_copy(raw + k, in + (size_t)((iy * in_w + ix) * in_c), in_c);
            } else {
                memset(raw + k, zp8, (size_t)in_c);
            }
        }
    }
}

/* Largest window (taps) of the 4-pixel small-window path: its expanded taps (8 words per
 * group of 4 taps), the gathered bytes and the copy of the last filter (a word per group each)
 * share the pointwise path's buffer (BNN_PW_XBUF words). */
#define BNN_PATCH4_MAX (4 * (BNN_PW_XBUF / 10))

/* Convolution of a small window (at most BNN_PATCH4_MAX taps) in blocks of 4 output pixels,
 * Cortex-M7: each pixel's window is gathered as bytes (bnn_patch_gather; the taps that pad it
 * to whole groups of 4 are the zero point), expanded into `xb` as int16 minus the zero point
 * (bnn_x4_expand), then bnn_conv_x4_channels with the filters' stride `taps`.
 * The last filter's partial group would be read past the array: that channel reads a copy
 * padded with zeros. Returns the first pixel not done. */
BNN_ALWAYS_INLINE int32_t bnn_conv_patch_x4(bnn_out_kind_t kind, const bnn_conv_params_t *params,
                                            const bnn_output_t *output, const int8_t *in,
                                            int32_t in_h, int32_t in_w, int32_t in_c,
                                            const int8_t *filter, int32_t kh, int32_t kw,
                                            int32_t npix, int32_t out_w, int32_t out_c,
                                            void *out, int32_t *xb, bnn_x4_state_t *st)
{
    const int32_t taps = kh * kw * in_c;
    const int32_t groups = (taps + 3) / 4;
    const int32_t zp = params->input_zero_point;
    const int8_t *const last_filter = filter + (size_t)(out_c - 1) * (size_t)taps;
    const int32_t split = taps % 4 != 0 ? out_c - 1 : out_c; /* channels read in place */
    int8_t *const raw = (int8_t *)(xb + 8 * groups);        /* 4 * groups bytes */
    int8_t *const last = (int8_t *)(xb + 9 * groups);       /* likewise */
    int32_t *const tab = xb + 10 * groups;                  /* bnn_x4_table, if it fits */
    const int32_t acc_max = bnn_acc_max(taps);
    const int use_asm = BNN_X4_ASM && bnn_fast_stores_ok(kind, output, out_c, acc_max);
    const int full = bnn_int8_fast(kind, output, out_c, acc_max);
    /* the TFLite assembly takes doubled sums (BNN_X4A_TFLITE_STEP) */
    const int dbl = use_asm && kind == BNN_OUT_TFLITE;
    const int32_t neg_zp = bnn_neg_zp_pair((dbl ? 2 : 1) * zp); /* for bnn_x4_expand */
    const int table =
        use_asm && (BNN_PW_XBUF - 10 * groups) / BNN_X4_TAB_WORDS >= out_c;
    int32_t pix, k;
#if BNN_X4_ASM
    if (table) {
        bnn_x4_table(kind, output, 0, out_c, tab);
    }
#endif
    memcpy(last, last_filter, (size_t)taps);
    for (k = taps; k < 4 * groups; ++k) {
        last[k] = 0;
    }
    for (pix = 0; pix + 4 <= npix; pix += 4) {
        int32_t p;
        for (p = 0; p < 4; ++p) {
            const int32_t oy = (pix + p) / out_w;
            bnn_patch_gather(params, in, in_h, in_w, in_c, kh, kw, oy, pix + p - oy * out_w, raw);
            for (k = taps; k < 4 * groups; ++k) {
                raw[k] = (int8_t)zp; /* 0 once the zero point is off */
            }
            bnn_x4_expand(xb + 2 * p, raw, groups, neg_zp, dbl);
        }
        bnn_conv_x4_channels(kind, output, xb, groups, filter, taps, 0, split, pix, out_c, out,
                             use_asm, full, table ? tab : NULL, st);
        if (split < out_c) {
            bnn_conv_x4_channels(kind, output, xb, groups, last, taps, split, out_c, pix, out_c,
                                 out, use_asm, full,
                                 table ? tab + BNN_X4_TAB_WORDS * split : NULL, st);
        }
    }
    return pix;
}

/* Output o of the pixel at `base` (int8 kinds: bnn_int8_out) */
#define BNN_PATCH_STORE(o, acc)                                                                \
    do {                                                                                       \
        if (kind == BNN_OUT_FLOAT) {                                                           \
            bnn_output_store_kind(kind, output, (o), (acc), out, base + (o));                  \
        } else {                                                                               \
            ((int8_t *)out)[base + (o)] = (int8_t)bnn_int8_out(kind, output, (o), (acc), full); \
        }                                                                                      \
    } while (0)

/* Convolution of a small window, Cortex-M7: for each output pixel the window is gathered once as
 * bytes in OHWI tap order (the taps in the padding, and those that pad the window to whole
 * groups of 4, are the zero point), then each group of 4 bytes becomes two words of int16 taps
 * minus the zero point: SXTAB16 onto -zp gives (t0, t2), SXTAB16 ror 8 (t1, t3), the order
 * in which one word pairs with SXTB16 of 4 weights and the other with SXTB16 ror 8. The bytes
 * sit in the upper half of the patch and are expanded from the front: group g writes bytes
 * 8g .. 8g + 7, below every later group's bytes. Every output channel then reads the patch with
 * 2 SMLADs per 4 taps, two channels per step. A filter's last, partial group is read as a whole
 * word (its bytes past the filter belong to the next filter and meet zero taps), except for the
 * last filter's, which is read byte by byte. Same sums modulo 2^32 as the plain path:
 * bit-exact. */
BNN_ALWAYS_INLINE void bnn_conv_patch_body(bnn_out_kind_t kind, const bnn_conv_params_t *params,
                                           const bnn_output_t *output_in, const int8_t *in,
                                           int32_t in_h, int32_t in_w, int32_t in_c,
                                           const int8_t *filter, int32_t kh, int32_t kw,
                                           int32_t out_h, int32_t out_w, int32_t out_c, void *out,
                                           int32_t pix0, int32_t *buf)
{
    /* a local copy: the int8 stores below may alias *output, this cannot */
    const bnn_output_t local = *output_in;
    const bnn_output_t *const output = &local;
    /* the patch: words of int16 tap pairs in buf, the gathered bytes in its upper half */
    int32_t *const word = buf;
    int8_t *const raw = (int8_t *)buf + BNN_PATCH_MAX;
    const int32_t taps = kh * kw * in_c;
    const int32_t groups = taps / 4;            /* whole groups */
    const int32_t all_groups = (taps + 3) / 4;  /* with the partial one */
    const int32_t tail = taps - 4 * groups;     /* taps in the partial group (0: none) */
    const int32_t zp = params->input_zero_point;
    const int8_t zp8 = (int8_t)zp;
    const int32_t neg_zp = bnn_neg_zp_pair(zp); /* -zp in both halfwords, for SXTAB16 */
    const int full = bnn_int8_fast(kind, output, out_c, bnn_acc_max(taps));
    int32_t pix, k;
    for (pix = pix0; pix < out_h * out_w; ++pix) {
        {
            const int32_t oy = pix / out_w, ox = pix - oy * out_w;
            const int32_t base = pix * out_c;
            int32_t g, o = 0;
            bnn_patch_gather(params, in, in_h, in_w, in_c, kh, kw, oy, ox, raw);
            for (k = taps; k < 4 * all_groups; ++k) {
                raw[k] = zp8; /* the group's padding taps: 0 once the zero point is off */
            }
            for (g = 0; g < all_groups; ++g) {
                int32_t v;
                memcpy(&v, raw + 4 * g, 4);
                word[2 * g] = __sxtab16(neg_zp, v);
                word[2 * g + 1] = bnn_sxtab16_ror8(neg_zp, v);
            }
            /* pairs of channels; the last pair's second filter is the array's last */
            for (; o + 2 <= out_c; o += 2) {
                const int8_t *w0 = filter + (size_t)o * (size_t)taps;
                const int8_t *w1 = w0 + taps;
                int32_t a0 = 0, a1 = 0, wv;
                for (g = 0; g < groups; ++g) {
                    BNN_PATCH_MAC(a0, w0, g);
                    BNN_PATCH_MAC(a1, w1, g);
                }
                if (tail != 0) {
                    BNN_PATCH_MAC(a0, w0, groups);
                    if (o + 2 < out_c) {
                        memcpy(&wv, w1 + 4 * groups, 4);
                    } else {
                        wv = bnn_patch_tail_word(w1 + 4 * groups, tail);
                    }
                    a1 = bnn_pw_mac4(a1, word[2 * groups], word[2 * groups + 1], wv);
                }
                BNN_PATCH_STORE(o, a0);
                BNN_PATCH_STORE(o + 1, a1);
            }
            if (o < out_c) { /* an odd channel count: the last filter alone */
                const int8_t *w0 = filter + (size_t)o * (size_t)taps;
                int32_t a0 = 0;
                for (g = 0; g < groups; ++g) {
                    BNN_PATCH_MAC(a0, w0, g);
                }
                if (tail != 0) {
                    a0 = bnn_pw_mac4(a0, word[2 * groups], word[2 * groups + 1],
                                     bnn_patch_tail_word(w0 + 4 * groups, tail));
                }
                BNN_PATCH_STORE(o, a0);
            }
        }
    }
}
#undef BNN_PATCH_MAC
#undef BNN_PATCH_STORE

/* The Cortex-M7 paths for a checked call: the fastest that applies; 0 when none does (the
 * tap-by-tap loop then). xb: the expanded inputs of the pointwise and 4-pixel paths and the
 * patch (`words` words). */
BNN_ALWAYS_INLINE int bnn_conv_dsp(bnn_out_kind_t kind, const bnn_conv_params_t *params,
                                   const bnn_output_t *output, const int8_t *in, int32_t in_h,
                                   int32_t in_w, int32_t in_c, const int8_t *filter, int32_t kh,
                                   int32_t kw, int32_t out_h, int32_t out_w, int32_t out_c,
                                   void *out, int32_t *xb, int32_t words, bnn_x4_state_t *st)
{
    const int32_t taps = kh * kw * in_c; /* <= INT32_MAX: checked */
    if (kh == 1 && kw == 1 && params->pad_top == 0 && params->pad_left == 0) {
        if (in_c % 4 == 0 && in_c <= words) {
            bnn_conv_1x1x_body(kind, params, output, in, in_w, in_c, filter, out_h, out_w, out_c,
                               out, xb, words, st);
        } else {
            bnn_conv_1x1_body(kind, params, output, in, in_w, in_c, filter, out_h, out_w, out_c,
                              out);
        }
        return 1;
    }
    if (taps <= BNN_PATCH_MAX) {
        int32_t pix = 0;
        if (taps <= BNN_PATCH4_MAX) {
            /* a local copy: the int8 stores may alias *output, this cannot */
            const bnn_output_t local = *output;
            pix = bnn_conv_patch_x4(kind, params, &local, in, in_h, in_w, in_c, filter, kh, kw,
                                    out_h * out_w, out_w, out_c, out, xb, st);
        }
        bnn_conv_patch_body(kind, params, output, in, in_h, in_w, in_c, filter, kh, kw, out_h,
                            out_w, out_c, out, pix, xb);
        return 1;
    }
    return 0;
}

/* bnn_conv_dsp per output transform (so that the linker keeps the ones a network uses), with
 * the 1 KB stack buffer (bnn_conv_dsp_*), and for the deep pointwise layers with the caller's
 * scratch (bnn_conv_dsp_scratch_*: `words` > BNN_PW_XBUF words at xb). */
#define BNN_CONV_DSP_FN(name, KIND)                                                            \
    BNN_NOINLINE int name(const bnn_conv_params_t *params, const bnn_output_t *output,         \
                          const int8_t *in, int32_t in_h, int32_t in_w, int32_t in_c,          \
                          const int8_t *filter, int32_t kh, int32_t kw, int32_t out_h,         \
                          int32_t out_w, int32_t out_c, void *out)                             \
    {                                                                                          \
        int32_t xb[BNN_PW_XBUF];                                                               \
        bnn_x4_state_t st;                                                                     \
        return bnn_conv_dsp(KIND, params, output, in, in_h, in_w, in_c, filter, kh, kw, out_h, \
                            out_w, out_c, out, xb, BNN_PW_XBUF, &st);                          \
    }
#define BNN_CONV_SCRATCH_FN(name, KIND)                                                        \
    BNN_NOINLINE void name(const bnn_conv_params_t *params, const bnn_output_t *output,        \
                           const int8_t *in, int32_t in_w, int32_t in_c, const int8_t *filter, \
                           int32_t out_h, int32_t out_w, int32_t out_c, void *out, int32_t *xb, \
                           int32_t words)                                                      \
    {                                                                                          \
        bnn_x4_state_t st;                                                                     \
        bnn_conv_1x1x_body(KIND, params, output, in, in_w, in_c, filter, out_h, out_w, out_c,  \
                           out, xb, words, &st);                                               \
    }
BNN_CONV_DSP_FN(bnn_conv_dsp_affine, BNN_OUT_AFFINE)
BNN_CONV_DSP_FN(bnn_conv_dsp_tflite, BNN_OUT_TFLITE)
BNN_CONV_DSP_FN(bnn_conv_dsp_float, BNN_OUT_FLOAT)
BNN_CONV_SCRATCH_FN(bnn_conv_dsp_scratch_affine, BNN_OUT_AFFINE)
BNN_CONV_SCRATCH_FN(bnn_conv_dsp_scratch_tflite, BNN_OUT_TFLITE)
BNN_CONV_SCRATCH_FN(bnn_conv_dsp_scratch_float, BNN_OUT_FLOAT)
#undef BNN_CONV_DSP_FN
#undef BNN_CONV_SCRATCH_FN
#endif

/* The whole kernel for one output transform `kind` (the argument checks, then the fastest
 * path for the geometry); output->kind must be `kind`. */
BNN_ALWAYS_INLINE bnn_status_t conv2d_s8_kind(bnn_out_kind_t kind, const bnn_context_t *ctx,
                                              const bnn_conv_params_t *params,
                                              const bnn_output_t *output,
                                              const bnn_dims_t *in_dims, const int8_t *in,
                                              const bnn_dims_t *filter_dims,
                                              const int8_t *filter, const bnn_dims_t *out_dims,
                                              void *out)
{
    int32_t in_h, in_w, in_c, kh, kw, out_h, out_w, out_c, zp;
    int32_t oy, ox, o;
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
    if (output == NULL || output->kind != kind || bnn_output_check(output, out_c) != BNN_OK) {
        return BNN_ERROR_ARGUMENT;
    }

#if !BNN_USE_DSP
    (void)ctx; /* (the scratch serves the Cortex-M7 paths only) */
#else
    {
        /* pointwise, deeper than BNN_PW_SCRATCH_C, with the scratch it asks for: 4-pixel
         * blocks in the scratch */
        const int32_t need = bnn_conv2d_s8_scratch_size(in_dims, filter_dims, out_dims);
        int done;
        if (need > 0 && params->pad_top == 0 && params->pad_left == 0 && ctx != NULL &&
            ctx->buf != NULL && ((uintptr_t)ctx->buf & 3u) == 0 && ctx->size >= need) {
            int32_t *const xb = (int32_t *)ctx->buf;
            const int32_t words = ctx->size / 4;
            if (kind == BNN_OUT_AFFINE) {
                bnn_conv_dsp_scratch_affine(params, output, in, in_w, in_c, filter, out_h, out_w,
                                            out_c, out, xb, words);
            } else if (kind == BNN_OUT_TFLITE) {
                bnn_conv_dsp_scratch_tflite(params, output, in, in_w, in_c, filter, out_h, out_w,
                                            out_c, out, xb, words);
            } else {
                bnn_conv_dsp_scratch_float(params, output, in, in_w, in_c, filter, out_h, out_w,
                                           out_c, out, xb, words);
            }
            return BNN_OK;
        }
        if (kind == BNN_OUT_AFFINE) {
            done = bnn_conv_dsp_affine(params, output, in, in_h, in_w, in_c, filter, kh, kw,
                                       out_h, out_w, out_c, out);
        } else if (kind == BNN_OUT_TFLITE) {
            done = bnn_conv_dsp_tflite(params, output, in, in_h, in_w, in_c, filter, kh, kw,
                                       out_h, out_w, out_c, out);
        } else {
            done = bnn_conv_dsp_float(params, output, in, in_h, in_w, in_c, filter, kh, kw,
                                      out_h, out_w, out_c, out);
        }
        if (done) {
            return BNN_OK;
        }
    }
#endif
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
                bnn_output_store_kind(kind, output, o, bnn_s32_from_u32(acc), out, out_index + o);
            }
        }
    }
    return BNN_OK;
}

/* One entry point per output transform: generated code calls the one its layer needs, so that
 * the linker (--gc-sections) keeps only the transforms a network uses. */
bnn_status_t bnn_conv2d_s8_affine(const bnn_context_t *ctx, const bnn_conv_params_t *params,
                                  const bnn_output_t *output, const bnn_dims_t *in_dims,
                                  const int8_t *in, const bnn_dims_t *filter_dims,
                                  const int8_t *filter, const bnn_dims_t *out_dims, void *out)
{
    return conv2d_s8_kind(BNN_OUT_AFFINE, ctx, params, output, in_dims, in, filter_dims,
                          filter, out_dims, out);
}

bnn_status_t bnn_conv2d_s8_tflite(const bnn_context_t *ctx, const bnn_conv_params_t *params,
                                  const bnn_output_t *output, const bnn_dims_t *in_dims,
                                  const int8_t *in, const bnn_dims_t *filter_dims,
                                  const int8_t *filter, const bnn_dims_t *out_dims, void *out)
{
    return conv2d_s8_kind(BNN_OUT_TFLITE, ctx, params, output, in_dims, in, filter_dims,
                          filter, out_dims, out);
}

bnn_status_t bnn_conv2d_s8_float(const bnn_context_t *ctx, const bnn_conv_params_t *params,
                                 const bnn_output_t *output, const bnn_dims_t *in_dims,
                                 const int8_t *in, const bnn_dims_t *filter_dims,
                                 const int8_t *filter, const bnn_dims_t *out_dims, void *out)
{
    return conv2d_s8_kind(BNN_OUT_FLOAT, ctx, params, output, in_dims, in, filter_dims,
                          filter, out_dims, out);
}

bnn_status_t bnn_conv2d_s8(const bnn_context_t *ctx, const bnn_conv_params_t *params,
                           const bnn_output_t *output, const bnn_dims_t *in_dims,
                           const int8_t *in, const bnn_dims_t *filter_dims, const int8_t *filter,
                           const bnn_dims_t *out_dims, void *out)
{
    if (output == NULL) {
        return BNN_ERROR_ARGUMENT;
    }
    switch (output->kind) {
    case BNN_OUT_AFFINE:
        return bnn_conv2d_s8_affine(ctx, params, output, in_dims, in, filter_dims, filter,
                                    out_dims, out);
    case BNN_OUT_TFLITE:
        return bnn_conv2d_s8_tflite(ctx, params, output, in_dims, in, filter_dims, filter,
                                    out_dims, out);
    case BNN_OUT_FLOAT:
        return bnn_conv2d_s8_float(ctx, params, output, in_dims, in, filter_dims, filter,
                                   out_dims, out);
    default:
        return BNN_ERROR_ARGUMENT;
    }
}
