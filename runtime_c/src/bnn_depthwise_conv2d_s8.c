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
 * words expanded once into a 5 x 5 grid (zeros around the 3 x 3), interior pixels unrolled.
 * When the 4 channels take the fast stores (bnn_requant.h), every window at most one row and
 * one column outside the input runs in one assembly loop (bnn_dw3_asm): such a window is read
 * one row or column further in, against the grid's weights moved to match (0 for the taps
 * outside), so that border pixels cost what interior ones do; with every channel fast and
 * every window in its reach (padding <= 1, the input at least 3 x 3), a group of 4 channels is
 * at most three assembly calls (bnn_dw3_band).
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
/* 4 channels of one tap: x (4 input bytes) - zp against the tap's expanded weights wp[0] =
 * w02, wp[1] = w13 (SXTB16 and SXTB16 ror 8 of the 4 filter bytes), each product into its
 * channel's sum. */
#define BNN_DW_TAP(xptr, wp)                                                                   \
    do {                                                                                       \
        int32_t xv_, x02_, x13_;                                                               \
        memcpy(&xv_, (xptr), 4);                                                               \
        x02_ = __sxtab16(neg_zp, xv_);                                                         \
        x13_ = bnn_sxtab16_ror8(neg_zp, xv_);                                                  \
        acc0 = __smlabb(x02_, (wp)[0], acc0);                                                  \
        acc2 = __smlatt(x02_, (wp)[0], acc2);                                                  \
        acc1 = __smlabb(x13_, (wp)[1], acc1);                                                  \
        acc3 = __smlatt(x13_, (wp)[1], acc3);                                                  \
    } while (0)
/* filter tap (i, j) in the 5 x 5 grid of expanded weights whose tap (1, 1) is at wg */
#define BNN_DW_W(i, j) (wg + 2 * (5 * (i) + (j)))

#if BNN_TFLITE_FAST && BNN_AFFINE_FAST && defined(__GNUC__)
#define BNN_DW3_ASM 1
/* bnn_dw3_asm's state (the assembly reads it through r7 at the offsets in the comments). It
 * runs `rows` output rows of one band (rows whose windows are read moved by the same number of
 * rows, 1, 0 or -1), each row as up to three runs of windows (bnn_dw3_runs: moved by 1, 0 and
 * -1 columns), the outputs one after the other from y. */
typedef struct {
    int32_t init[4];      /* 0: the 4 sums' start: the TFLite biases, else 0 */
    int32_t ch[16];       /* 16: per channel, bnn_tflite_fast_words or bnn_affine_fast_words */
    const int8_t *p;      /* 80: the next window as read: its top-left tap, channel oc */
    int8_t *y;            /* 84: the next output, channel oc */
    int32_t pstep;        /* 88: input bytes from one window to the next in a run */
    int32_t n;            /* 92: windows left in the run */
    int32_t inc;          /* 96: C, bytes between taps of a row and between output pixels */
    int32_t row;          /* 100: W * C, bytes between input rows */
    int32_t neg_zp;       /* 104: -zp in both halfwords */
    const int32_t *w;     /* 108: the run's weights for its windows' top-left taps as read */
    int32_t grid[50];     /* 112: 5 x 5 taps, each its expanded weights w02, w13 (SXTB16,
                           * SXTB16 ror 8): the filter's 3 x 3 in the middle, zeros around */
    const int8_t *prow;   /* 312: the row's first input row as read, column 0, channel oc */
    int32_t prstep;       /* 316: input bytes from one output row's prow to the next */
    int32_t rows;         /* 320: output rows left in the band (>= 1) */
    const int32_t *wband; /* 324: the band's weights, for column moves 0 */
    int32_t k;            /* 328: the run: its index times 4 */
    int32_t colp[3];      /* 332: per run: its first window's column as read, times C */
    int32_t coln[3];      /* 344: per run: its windows (0: none) */
    int32_t colw[3];      /* 356: per run: its weights' offset from wband in bytes */
} bnn_dw3_state_t;
/* the offsets above are the assembly's: a build where they differ fails here */
typedef char bnn_dw3_state_layout_ok[(offsetof(bnn_dw3_state_t, p) == 80 &&
                                      offsetof(bnn_dw3_state_t, neg_zp) == 104 &&
                                      offsetof(bnn_dw3_state_t, w) == 108 &&
                                      offsetof(bnn_dw3_state_t, grid) == 112 &&
                                      offsetof(bnn_dw3_state_t, prow) == 312 &&
                                      offsetof(bnn_dw3_state_t, colp) == 332 &&
                                      offsetof(bnn_dw3_state_t, colw) == 356)
                                         ? 1
                                         : -1];

/* One tap at addr (from the row in r9, C in r10): the 4 input bytes minus the zero point (lr)
 * as halfwords (x02 r5, x13 r4) times the tap's expanded weights (LDRD at r12 + off), each
 * product into its channel's sum r0..r3. */
#define BNN_DW3_TAP(addr, off)                                                                 \
    "ldr     r4, " addr "\n\t"                                                                  \
    "ldrd    r6, r8, [r12, #" off "]\n\t"                                                       \
    "sxtab16 r5, lr, r4\n\t"                                                                    \
    "sxtab16 r4, lr, r4, ror #8\n\t"                                                            \
    "smlabb  r0, r5, r6, r0\n\t"                                                                \
    "smlatt  r2, r5, r6, r2\n\t"                                                                \
    "smlabb  r1, r4, r8, r1\n\t"                                                                \
    "smlatt  r3, r4, r8, r3\n\t"
/* a row of 3 taps; the weights of the grid's rows are 40 bytes apart */
#define BNN_DW3_ROW(o0, o1, o2)                                                                \
    BNN_DW3_TAP("[r9]", o0) BNN_DW3_TAP("[r9, r10]", o1) BNN_DW3_TAP("[r9, r10, lsl #1]", o2)
/* bnn_affine_fast of the sum acc, stored at [r9, #off]: the channel's bnn_affine_fast_words by
 * LDM from r12 (mult r4, offset r5:r6, k r8) */
#define BNN_DW3_AFFINE(acc, off)                                                               \
    "ldmia   r12!, {r4, r5, r6, r8}\n\t"                                                        \
    "smlal   r5, r6, " acc ", r4\n\t"                                                           \
    "asr     " acc ", r6, r8\n\t"                                                               \
    "cbnz    r5, 1f\n\t" /* the low word 0: maybe a tie */                                     \
    "rsb     r5, r8, #32\n\t"                                                                   \
    "lsls    r5, r6, r5\n\t"                                                                    \
    "it      eq\n\t"                                                                            \
    "biceq   " acc ", " acc ", #1\n"                                                             \
    "1:\n\t"                                                                                    \
    "ssat    " acc ", #8, " acc "\n\t"                                                          \
    "strb    " acc ", [r9, #" off "]\n\t"
/* bnn_tflite_fast of the sum acc (the bias in it), stored at [r9, #off]: the channel's
 * bnn_tflite_fast_words by LDM from r12 (mult r4, e r5, c r6; r8 the bias, unused); r11
 * scratch */
#define BNN_DW3_TFLITE(acc, off)                                                               \
    "ldmia   r12!, {r4, r5, r6, r8}\n\t"                                                        \
    "add     " acc ", " acc ", " acc "\n\t"                                                      \
    "smmlar  r11, " acc ", r4, r6\n\t"                                                          \
    "add     r11, r11, " acc ", asr #31\n\t"                                                    \
    "asr     r11, r11, r5\n\t"                                                                  \
    "ssat    r11, #8, r11\n\t"                                                                  \
    "strb    r11, [r9, #" off "]\n\t"
/* The band: per output row, per run (its p, n and w set up from prow, colp, coln, colw and
 * wband), the window loop: sums from init, the 9 taps (rows from p, weights from w), the 4
 * stores by `store`, then the next window and output. The registers it uses are its own: r7
 * is saved and restored by the assembly, the others are clobbers, and the state's address
 * comes in r12. */
#define BNN_DW3_LOOP(store)                                                                    \
    "push    {r7}\n\t"                                                                          \
    "mov     r7, r12\n\t"                                                                       \
    "ldr     r10, [r7, #96]\n\t"                                                                \
    "ldr     lr, [r7, #104]\n"                                                                   \
    "10:\n\t"                                                                                   \
    "mov     r4, #0\n\t"                                                                        \
    "str     r4, [r7, #328]\n"                                                                   \
    "11:\n\t"                                                                                   \
    "add     r5, r7, r4\n\t"                                                                    \
    "ldr     r6, [r5, #344]\n\t"                                                                \
    "cmp     r6, #0\n\t"                                                                        \
    "beq     12f\n\t"                                                                           \
    "str     r6, [r7, #92]\n\t"                                                                 \
    "ldr     r8, [r5, #332]\n\t"                                                                \
    "ldr     r9, [r7, #312]\n\t"                                                                \
    "add     r9, r9, r8\n\t"                                                                    \
    "str     r9, [r7, #80]\n\t"                                                                 \
    "ldr     r8, [r5, #356]\n\t"                                                                \
    "ldr     r9, [r7, #324]\n\t"                                                                \
    "add     r9, r9, r8\n\t"                                                                    \
    "str     r9, [r7, #108]\n"                                                                   \
    "20:\n\t"                                                                                   \
    "ldr     r11, [r7, #100]\n\t"                                                               \
    "ldr     r9, [r7, #80]\n\t"                                                                 \
    "ldmia   r7, {r0, r1, r2, r3}\n\t"                                                          \
    "ldr     r12, [r7, #108]\n\t" BNN_DW3_ROW("0", "8", "16")                                   \
    "add     r9, r9, r11\n\t" BNN_DW3_ROW("40", "48", "56")                                     \
    "add     r9, r9, r11\n\t" BNN_DW3_ROW("80", "88", "96")                                     \
    "ldr     r9, [r7, #84]\n\t"                                                                 \
    "add     r12, r7, #16\n\t" store("r0", "0") store("r1", "1") store("r2", "2")               \
    store("r3", "3")                                                                            \
    "add     r9, r9, r10\n\t"                                                                   \
    "str     r9, [r7, #84]\n\t"                                                                 \
    "ldr     r9, [r7, #80]\n\t"                                                                 \
    "ldr     r4, [r7, #88]\n\t"                                                                 \
    "add     r9, r9, r4\n\t"                                                                    \
    "str     r9, [r7, #80]\n\t"                                                                 \
    "ldr     r4, [r7, #92]\n\t"                                                                 \
    "subs    r4, r4, #1\n\t"                                                                    \
    "str     r4, [r7, #92]\n\t"                                                                 \
    "bne     20b\n"                                                                              \
    "12:\n\t"                                                                                   \
    "ldr     r4, [r7, #328]\n\t"                                                                \
    "add     r4, r4, #4\n\t"                                                                    \
    "str     r4, [r7, #328]\n\t"                                                                \
    "cmp     r4, #12\n\t"                                                                       \
    "bne     11b\n\t"                                                                           \
    "ldr     r9, [r7, #312]\n\t"                                                                \
    "ldr     r4, [r7, #316]\n\t"                                                                \
    "add     r9, r9, r4\n\t"                                                                    \
    "str     r9, [r7, #312]\n\t"                                                                \
    "ldr     r4, [r7, #320]\n\t"                                                                \
    "subs    r4, r4, #1\n\t"                                                                    \
    "str     r4, [r7, #320]\n\t"                                                                \
    "bne     10b\n\t"                                                                           \
    "pop     {r7}\n\t"

/* Depthwise 3x3 (dilation 1, depth multiplier 1) of 4 channels for a band of output rows
 * (bnn_dw3_state_t), Cortex-M7, in one assembly loop. Each window is read as 3 x 3 taps inside
 * the input: a window one row or column outside it is read one row or column further in, and
 * its weights are taken in the grid so that the taps read that way meet the filter's weights
 * of the right taps, or zeros. Per tap one input load, one LDRD of the expanded weights, 2
 * SXTAB16 and 4 SMLAxy (9 taps: 74 instructions); the stores by bnn_affine_fast (every
 * channel's shift >= 32) or bnn_tflite_fast (every channel bnn_tflite_fast_ok), full int8
 * range. The products of the valid taps are those of the C form, the others are 0: the same
 * int32 sums, bit-exact. */
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

#if BNN_DW3_ASM
/* The output positions along one axis (out of them, this stride and padding before, an input
 * of in >= 3) whose windows bnn_dw3_asm reads, in three runs: [b[0], b[1]) start one before
 * the input (read one further in), [b[1], b[2]) lie inside it, [b[2], b[3]) end one past it
 * (read one further back). Positions before b[0] or from b[3] on, windows further outside
 * (padding over 1), are the C loop's; all of them when in < 3. */
static void bnn_dw3_runs(int32_t out, int32_t stride, int32_t pad, int32_t in, int32_t b[4])
{
    int32_t o;
    b[0] = b[1] = b[2] = b[3] = 0;
    for (o = 0; o < out && in >= 3; ++o) {
        const int32_t start = o * stride - pad;
        b[0] += start < -1;
        b[1] += start < 0;
        b[2] += start <= in - 3;
        b[3] += start <= in - 2;
    }
}

/* The column runs of bnn_dw3_runs (rx) into st for bnn_dw3_asm: each run's first window's
 * column as read (moved by sx = 1, 0, -1 columns) times C, its windows, its weights' offset. */
static void bnn_dw3_columns(bnn_dw3_state_t *st, const int32_t rx[4], int32_t sw, int32_t pad)
{
    int32_t run;
    for (run = 0; run < 3; ++run) {
        const int32_t sx = 1 - run;
        st->colp[run] = (rx[run] * sw - pad + sx) * st->inc;
        st->coln[run] = rx[run + 1] - rx[run];
        st->colw[run] = 8 * sx; /* 2 words per tap */
    }
}

/* bnn_dw3_asm over `rows` output rows from oy (all in one run of bnn_dw3_runs of the rows, ry),
 * the columns of st's runs: in and out point at channel oc of pixel 0, y0 is row oy's window
 * start, sh the stride, x the first output column. For more than one row the runs must cover
 * every column (the outputs follow each other). */
static void bnn_dw3_band(bnn_dw3_state_t *st, const int8_t *in, int8_t *out, int32_t oy,
                         int32_t rows, int32_t y0, int32_t sh, int32_t x, int32_t out_w,
                         const int32_t ry[4], int tflite)
{
    const int32_t sy = oy < ry[1] ? 1 : (oy < ry[2] ? 0 : -1);
    st->prow = in + (size_t)((y0 + sy) * st->row);
    st->prstep = sh * st->row;
    st->rows = rows;
    st->y = out + (size_t)((oy * out_w + x) * st->inc);
    st->wband = st->grid + 12 + 10 * sy; /* tap (1 + sy, 1): 5 taps of 2 words per row */
    bnn_dw3_asm(st, tflite);
}

/* The output constants of channels oc..oc + 3 into st (init and ch), for 4 channels that take
 * the fast stores (bnn_tflite_ch's fast, or an affine shift >= 32; the full int8 range). */
BNN_ALWAYS_INLINE void bnn_dw3_channels(bnn_dw3_state_t *st, bnn_out_kind_t kind,
                                        const bnn_output_t *output, int32_t oc)
{
    int32_t t;
    for (t = 0; t < 4; ++t) {
        int32_t *ch = st->ch + 4 * t;
        if (kind == BNN_OUT_TFLITE) {
            st->init[t] = output->bias != NULL ? output->bias[oc + t] : 0;
            bnn_tflite_fast_words(output->q_mult[oc + t], output->q_shift[oc + t],
                                  output->out_zero_point, st->init[t], ch);
        } else {
            st->init[t] = 0;
            bnn_affine_fast_words(output->a_mult[oc + t], output->a_offset[oc + t],
                                  output->a_shift[oc + t], ch);
        }
    }
}
#endif

/* Depthwise 3x3, dilation 1, depth multiplier 1, channels a multiple of 4, Cortex-M7: four
 * channels at a time over all output pixels, so that their 9 filter words are expanded once
 * (SXTB16 and SXTB16 ror 8) into a 5 x 5 grid and kept; a pixel whose window lies inside the
 * input runs the 9 taps unrolled, a border pixel its valid taps only. With fast stores for
 * the 4 channels, each row's pixels whose windows are at most one row and one column outside
 * the input run in bnn_dw3_asm instead (the grid's ring of zeros for the taps outside). Same
 * products, same int32 sums modulo 2^32: bit-exact with the plain path. */
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
    bnn_dw3_state_t st;
    int32_t *const grid = st.grid;
    int32_t ry[4], rx[4]; /* bnn_dw3_runs of the rows and columns */
    bnn_dw3_runs(out_h, sh, params->pad_top, in_h, ry);
    bnn_dw3_runs(out_w, sw, params->pad_left, in_w, rx);
    memset(st.grid, 0, sizeof st.grid); /* the ring stays 0; each group writes the middle */
    st.pstep = sw * in_c;
    st.inc = in_c;
    st.row = row;
    st.neg_zp = neg_zp;
    bnn_dw3_columns(&st, rx, sw, params->pad_left);
    /* every window in bnn_dw3_asm's reach and every channel fast: the lean loop below */
    const int asm_all = ry[0] == 0 && ry[3] == out_h && rx[0] == 0 && rx[3] == out_w &&
                        bnn_fast_stores_ok(kind, output, in_c, bnn_acc_max(9));
#else
    int32_t grid[50]; /* only the middle 3 x 3 is used */
#endif
    int32_t *const wg = grid + 12; /* tap (1, 1) of the grid: the filter's tap (0, 0) */
    int32_t oc;
    for (oc = 0; oc < in_c; oc += 4) {
        /* the 4 channels' output constants, read once for all pixels (affine: M, B, S;
         * TFLite: bias, multiplier and the shift's parts) */
        int32_t c_mult[4], c_shift[4];
        int64_t c_offset[4];
        bnn_tflite_ch_t c_tfl[4];
        int32_t t, oy, ox;
        for (oy = 0; oy < 3; ++oy) {
            for (ox = 0; ox < 3; ++ox) {
                int32_t wv;
                int32_t *const wp = BNN_DW_W(oy, ox);
                memcpy(&wv, filter + (size_t)((oy * 3 + ox) * in_c + oc), 4);
                wp[0] = __sxtb16(wv);
                wp[1] = bnn_sxtb16_ror8(wv);
            }
        }
#if BNN_DW3_ASM
        if (asm_all) {
            bnn_dw3_channels(&st, kind, output, oc);
            /* the three bands of rows: read moved by 1, 0 and -1 rows */
            for (t = 0; t < 3; ++t) {
                if (ry[t] < ry[t + 1]) {
                    bnn_dw3_band(&st, in + oc, (int8_t *)out + oc, ry[t], ry[t + 1] - ry[t],
                                 ry[t] * sh - params->pad_top, sh, 0, out_w, ry,
                                 kind == BNN_OUT_TFLITE);
                }
            }
            continue;
        }
#endif
        for (t = 0; t < 4; ++t) {
            c_mult[t] = c_shift[t] = 0;
            c_offset[t] = 0;
            c_tfl[t] = bnn_tflite_ch(0, 0, 0, output, 0);
            if (kind == BNN_OUT_AFFINE) {
                c_mult[t] = output->a_mult[oc + t];
                c_offset[t] = output->a_offset[oc + t];
                c_shift[t] = output->a_shift[oc + t];
            } else if (kind == BNN_OUT_TFLITE) {
                c_tfl[t] = bnn_tflite_ch(output->bias != NULL ? output->bias[oc + t] : 0,
                                         output->q_mult[oc + t], output->q_shift[oc + t], output,
                                         bnn_acc_max(9));
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
            bnn_dw3_channels(&st, kind, output, oc);
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
                if (use_asm && oy >= ry[0] && oy < ry[3] && ox == rx[0] && rx[0] < rx[3]) {
                    bnn_dw3_band(&st, in + oc, (int8_t *)out + oc, oy, 1, y0, sh, ox, out_w, ry,
                                 kind == BNN_OUT_TFLITE);
                    ox = rx[3] - 1;
                    continue;
                }
#endif
                if (rows_inside && x0 >= 0 && x0 + 2 < in_w) {
                    const int8_t *p0 = in + (size_t)((y0 * in_w + x0) * in_c + oc);
                    const int8_t *p1 = p0 + row;
                    const int8_t *p2 = p1 + row;
                    BNN_DW_TAP(p0, BNN_DW_W(0, 0));
                    BNN_DW_TAP(p0 + in_c, BNN_DW_W(0, 1));
                    BNN_DW_TAP(p0 + 2 * in_c, BNN_DW_W(0, 2));
                    BNN_DW_TAP(p1, BNN_DW_W(1, 0));
                    BNN_DW_TAP(p1 + in_c, BNN_DW_W(1, 1));
                    BNN_DW_TAP(p1 + 2 * in_c, BNN_DW_W(1, 2));
                    BNN_DW_TAP(p2, BNN_DW_W(2, 0));
                    BNN_DW_TAP(p2 + in_c, BNN_DW_W(2, 1));
                    BNN_DW_TAP(p2 + 2 * in_c, BNN_DW_W(2, 2));
                } else {
                    int32_t i_first, i_last, j_first, j_last, i, j;
                    bnn_valid_taps(y0, in_h, 3, 1, &i_first, &i_last);
                    bnn_valid_taps(x0, in_w, 3, 1, &j_first, &j_last);
                    for (i = i_first; i < i_last; ++i) {
                        for (j = j_first; j < j_last; ++j) {
                            const int8_t *px =
                                in + (size_t)(((y0 + i) * in_w + x0 + j) * in_c + oc);
                            BNN_DW_TAP(px, BNN_DW_W(i, j));
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
#undef BNN_DW_W
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
