/*
 * bnn_bconv2d: binary Conv2D, packed binary input and filter (converters/reference.py
 * `binary_conv2d`, converters/binary_reference.py `binary_conv_accumulate`, docs/ir.md).
 *
 * Tensors (bit 1 = -1, bit 0 = +1, channel c in word c / 32 at bit c % 32, bits beyond C = 0):
 *   in      uint32 [H, W, NW]          NW = BNN_WORDS(C); in_dims = [1, H, W, C], C logical
 *   filter  uint32 [O, KH, KW, NW]     OHWI; filter_dims = [O, KH, KW, C], C logical
 *   out     out_dims = [1, OH, OW, O], O logical; the element type follows output->kind
 *
 * Output (y, x), tap (i, j) reads input row iy = y * stride_h - pad_top + i and column
 * ix = x * stride_w - pad_left + j. With the packed rows a = in[iy, ix] and w = filter[o, i, j]:
 *
 *   tap inside the input:  C - 2 * sum_k popcount(a[k] XOR w[k])
 *                          (the +1/-1 dot product of the C channels: equal bits give +1,
 *                          different bits -1; the bits beyond C are 0 in both and never count)
 *   tap outside the input: pad_value 0 (QKeras zero padding): nothing;
 *                          pad_value 1 (Larq one padding, a +1 row, all bits 0):
 *                          C - 2 * sum_k popcount(w[k])
 *   acc[y, x, o] = the sum over the KH * KW taps, exact in int32 (|acc| <= KH * KW * C < 2^30)
 *
 * out[y, x, o] from acc by output->kind:
 *   BNN_OUT_AFFINE     int8 [OH, OW, O]:
 *                      clamp(round_half_even((acc * a_mult[o] + B[o]) / 2^a_shift[o]),
 *                            act_min, act_max)          (int64; bnn_requant.h bnn_affine),
 *                      a_offset[o] = B[o] + 2^(a_shift[o]-1)
 *   BNN_OUT_FLOAT      float32 [OH, OW, O]: f32(f32(f32(acc) * f_scale[o]) + f_offset[o]), then
 *                      float_activation (bnn_requant.h bnn_float_transform)
 *   BNN_OUT_THRESHOLD  packed uint32 [OH, OW, BNN_WORDS(O)]: bit o = acc < t_threshold[o]
 *                      (t_direction[o] = 1), acc > t_threshold[o] (-1), t_threshold[o] != 0 (0);
 *                      the bits beyond O are 0
 * No alignment is needed for `out` (float and threshold words are stored with memcpy).
 *
 * Arguments (anything else: BNN_ERROR_ARGUMENT, nothing written): params, output, the dims and
 * the data pointers not NULL (ctx is unused and may be NULL: no scratch); in_dims.n =
 * out_dims.n = 1; filter_dims.c = in_dims.c; out_dims.c = filter_dims.n; dilation 1 in both
 * axes; stride >= 1; pad_value 0 or 1; 0 <= pad_top < KH, 0 <= pad_left < KW, and OH, OW those
 * of the geometry for some padding after the input (bnn_window_ok: every window has a tap
 * inside the input); KH * KW * C < 2^30; output->kind AFFINE (a_mult, a_shift in 1..62,
 * |a_offset| < 2^62, -128 <= act_min <= act_max <= 127), FLOAT (f_scale, f_offset, activation
 * NONE / RELU / RELU6) or THRESHOLD (t_threshold, t_direction in {-1, 0, 1}); BNN_OUT_TFLITE is
 * refused. `out` must not overlap `in` or `filter`.
 *
 * bnn_bconv2d_add (bnn_kernels.h): the same convolution with BNN_OUT_AFFINE, each pixel's int8
 * outputs then added to the residual by bnn_add_s8's arithmetic (bnn_add_s8_run, its constants
 * prepared once per call) and written to `out`, which may be the residual itself. On the
 * Cortex-M7 the store and the Add are one assembly pass (bnn_bconv2d_sum_asm) when every
 * channel's shift is 16..31 or every one >= 32, the Add's shift likewise, and both ranges are
 * the full int8 one.
 *
 * Plain C path: per output pixel and channel, every tap is checked against the input bounds
 * and each word is counted with the SWAR popcount (multiply by 0x01010101).
 *
 * Cortex-M7 path (__ARM_FEATURE_DSP, unless BNN_FORCE_PLAIN_C; the M7 has no popcount
 * instruction). Per output pixel, the taps inside the input form one rectangle
 * [i_lo, i_hi) x [j_lo, j_hi) of the kernel (computed once: no per-tap bounds checks).
 *  - Gathered window (interior pixels, and every pixel with one padding, when KH * KW * NW <=
 *    BNN_BCONV2D_WINDOW_WORDS): the window is copied once into a stack buffer in the filter's
 *    OHWI order, padded taps as all-zero words (the +1 rows of one padding; an interior pixel
 *    has none). Every output channel is then one flat run of KH * KW * NW words against its
 *    contiguous filter, with acc = KH * KW * C - 2 * popcount; output channels go two at a
 *    time (one load of the window word for both filters).
 *  - Rectangle (border pixels with zero padding, or a window larger than the buffer): in
 *    NHWC / OHWI the words of a rectangle row are contiguous in both the input and the filter,
 *    so each kernel row is one run of (j_hi - j_lo) * NW words; acc = (taps inside) * C -
 *    2 * popcount; with one padding the filter words of the padded taps add their popcount
 *    (popcount(0 ^ w) = popcount(w)).
 *  - popcount of a run: the first two SWAR steps give per-4-bit counts (0..4), three words
 *    are added in that form (<= 12), folded into bytes and summed into the total by one USADA8
 *    (sum of the four bytes).
 *  - C <= 16 (NW = 1) and KH * KW <= 31, gathered window: each window word is stored as
 *    x | x << 16 and two filters as w1 | w2 << 16, so one XOR gives (x ^ w1) in the low and
 *    (x ^ w2) in the high halfword; the bytewise counts of all taps accumulate in one register
 *    and bytes 0 + 1 count channel o, bytes 2 + 3 channel o + 1. This relies on the contract
 *    that the bits beyond C are 0 (as bnn_bitpack and BNN_OUT_THRESHOLD write them and as the
 *    filters are packed). With KH * KW <= 30 the filter pairs are made once per call (in a
 *    stack buffer of BNN_BCONV2D_STREAM_WORDS words), and a 3x3 window is unrolled.
 *  - 16 < C < 32 (NW = 1), gathered window: the window and (once per call) the filters are
 *    packed as bit streams, tap t's C bits at bit t * C, so that no word is partly empty
 *    (7 words in place of 9 for a 3x3 window of 24 channels).
 * Every path adds the same per-word popcounts in a different order, so the results are
 * bit-exact with the plain path and the reference. BNN_TEST_M7_PATH compiles the M7 path on
 * any machine with portable C standing in for USADA8 (the tests run it on the host).
 * Stack: the window and stream buffers (4 * BNN_BCONV2D_WINDOW_WORDS bytes each), the filter
 * pairs or streams (4 * BNN_BCONV2D_STREAM_WORDS bytes) and 32 accumulators.
 */
#include <string.h>

#include "bnn_kernels.h"
#include "bnn_requant.h"

#if !defined(BNN_FORCE_PLAIN_C) && (defined(__ARM_FEATURE_DSP) || defined(BNN_TEST_M7_PATH))
#define BNN_BCONV2D_FAST 1
#else
#define BNN_BCONV2D_FAST 0
#endif

#if BNN_BCONV2D_FAST && !defined(BNN_FORCE_PLAIN_C) && defined(__ARM_FEATURE_DSP)
#define BNN_BCONV2D_DSP 1
#include <arm_acle.h>
#else
#define BNN_BCONV2D_DSP 0
#endif

#define BNN_BCONV2D_BLOCK 32            /* output channels per block (one threshold word) */
#define BNN_BCONV2D_ACC_LIMIT ((int64_t)1 << 30) /* KH * KW * C stays below */
#define BNN_BCONV2D_BYTE_RUN 31          /* words whose byte counts fit one byte (31 * 8) */
#define BNN_BCONV2D_WINDOW_WORDS 36      /* M7 path: largest window copied to the stack */
#define BNN_BCONV2D_STREAM_WORDS 192     /* M7 path: filters' bit streams or pairs, stack */

typedef struct {
    int32_t h, w, c, nw;      /* input rows, columns, logical channels, words per pixel */
    int32_t o, kh, kw;        /* output channels, kernel rows and columns */
    int32_t oh, ow;           /* output rows and columns */
    int32_t sh, sw, pt, pl;   /* strides, padding before the input */
    int32_t pad_value;        /* 0 or 1 */
    int32_t taps;             /* kh * kw */
    int32_t k_all;            /* kh * kw * c */
    int32_t filter_words;     /* kh * kw * nw: one output channel's filter */
    int32_t out_words;        /* BNN_WORDS(o) */
} bnn_bconv2d_geom_t;

static int32_t bnn_bconv2d_words(int32_t channels)
{
    return (int32_t)(((uint32_t)channels + 31u) / 32u);
}

/* acc = counted - 2 * differing, where counted = (taps that count) * C: the +1/-1 sum over
 * `counted` bit pairs of which `differing` differ. Exact while the bits beyond C are 0
 * (|acc| <= KH * KW * C < 2^30); computed modulo 2^32 so that no input can overflow. */
static int32_t bnn_bconv2d_acc(int32_t counted, uint32_t differing)
{
    return bnn_s32_from_u32((uint32_t)counted - 2u * differing);
}

/* ---- the scratch (bnn_bconv2d_scratch_size) ---------------------------------------------- */

/* With a scratch, the Cortex-M7 path counts and stores in one assembly loop (the scratch path,
 * below). Its layout depends on the geometry only, so that the generator can plan it
 * (validation/kernel_calls.py mirrors it); there is none for fewer output pixels than window
 * words (too few to repay the per-call reordering: 3x3 x 128 channels on a 3x3 output). In
 * words:
 *  - per slot of two output channels 2p, 2p + 1 (slots = ceil(O / 2); when O is odd the last
 *    slot's second channel is zero): the filter words the loop reads, then each channel's 4
 *    store words (bnn_bconv2d_count_words);
 *  - two sets of O border corrections (int32, made for the border pixels);
 *  - the popcount of each channel's filter at each tap (uint16, O * taps; for the corrections);
 *  - O bytes: a pixel's int8 outputs before a general (not plain-sum) Add.
 * Two forms of filter words:
 *  - PAIR9 (NW = 1, C <= 16, 3x3 kernel): 9 words w_2p[t] | w_2p+1[t] << 16, counted against
 *    the window's words x | x << 16 (as bnn_bconv2d_pair_accs);
 *  - RUN (taps * NW <= BNN_BCONV2D_SCR_WORDS): the window's taps * NW words, padded with zero
 *    words to len (a multiple of 3); per step of 3 words, channel 2p's then channel 2p + 1's. */
#define BNN_BCONV2D_SCR_PAIR9 1
#define BNN_BCONV2D_SCR_RUN 2
#define BNN_BCONV2D_SCR_WORDS 36 /* RUN: the longest window (BNN_BCONV2D_WINDOW_WORDS) */
#define BNN_BCONV2D_SCR_STORE 4  /* store words per channel */

typedef struct {
    int32_t form;         /* 0: no scratch path for this geometry */
    int32_t len;          /* window words the loop counts */
    int32_t filter_words; /* per slot */
    int32_t slot_words;   /* filter_words + 2 * BNN_BCONV2D_SCR_STORE */
    int32_t slots;        /* ceil(O / 2) */
    int32_t corr;         /* word offset of the corrections */
    int32_t pop;          /* word offset of the popcounts */
    int32_t tmp;          /* word offset of the int8 outputs before the Add */
    int32_t bytes;        /* 0 if none */
} bnn_bconv2d_scr_t;

static void bnn_bconv2d_scr_layout(int32_t c, int32_t kh, int32_t kw, int32_t o, int64_t pixels,
                                   bnn_bconv2d_scr_t *s)
{
    int64_t taps, nw, words;
    s->form = 0;
    s->bytes = 0;
    if (c < 1 || kh < 1 || kw < 1 || o < 2 || kh > BNN_BCONV2D_SCR_WORDS ||
        kw > BNN_BCONV2D_SCR_WORDS) {
        return;
    }
    taps = (int64_t)kh * kw;
    nw = ((int64_t)c + 31) / 32;
    if (pixels < taps * nw) {
        return; /* too few output pixels to repay the per-call reordering (3x3 x 128 on 3x3) */
    }
    if (nw == 1 && c <= 16 && taps == 9) {
        s->form = BNN_BCONV2D_SCR_PAIR9;
        s->len = 9;
        s->filter_words = 9;
    } else if (taps * nw <= BNN_BCONV2D_SCR_WORDS) {
        s->form = BNN_BCONV2D_SCR_RUN;
        s->len = (int32_t)(3 * ((taps * nw + 2) / 3));
        s->filter_words = 2 * s->len;
    } else {
        return;
    }
    s->slot_words = s->filter_words + 2 * BNN_BCONV2D_SCR_STORE;
    s->slots = (int32_t)(((int64_t)o + 1) / 2);
    words = (int64_t)s->slots * s->slot_words + 2 * (int64_t)o + ((int64_t)o * taps + 1) / 2 +
            ((int64_t)o + 3) / 4;
    if (words > INT32_MAX / 4) {
        s->form = 0;
        return;
    }
    s->corr = s->slots * s->slot_words;
    s->pop = s->corr + 2 * o;
    s->tmp = s->pop + (int32_t)((o * taps + 1) / 2);
    s->bytes = (int32_t)(4 * words);
}

int32_t bnn_bconv2d_scratch_size(const bnn_dims_t *in_dims, const bnn_dims_t *filter_dims,
                                 const bnn_dims_t *out_dims)
{
    bnn_bconv2d_scr_t s;
    if (in_dims == NULL || filter_dims == NULL || out_dims == NULL) {
        return 0;
    }
    bnn_bconv2d_scr_layout(in_dims->c, filter_dims->h, filter_dims->w, filter_dims->n,
                           (int64_t)out_dims->h * out_dims->w, &s);
    return s.bytes;
}

/* ---- argument checks -------------------------------------------------------------------- */

static bnn_status_t bnn_bconv2d_check_output(const bnn_output_t *output, int32_t channels)
{
    int32_t o;
    switch ((int)output->kind) {
    case BNN_OUT_AFFINE:
    case BNN_OUT_FLOAT:
        return bnn_output_check(output, channels);
    case BNN_OUT_THRESHOLD:
        if (output->t_threshold == NULL || output->t_direction == NULL) {
            return BNN_ERROR_ARGUMENT;
        }
        for (o = 0; o < channels; ++o) {
            int8_t d = output->t_direction[o];
            if (d != -1 && d != 0 && d != 1) {
                return BNN_ERROR_ARGUMENT;
            }
        }
        return BNN_OK;
    case BNN_OUT_LCE:
        if (output->f_scale == NULL || output->f_offset == NULL ||
            output->lce_clamp_lo > output->lce_clamp_hi || output->lce_k < 1) {
            return BNN_ERROR_ARGUMENT;
        }
        return BNN_OK;
    default:
        return BNN_ERROR_ARGUMENT;
    }
}

static bnn_status_t bnn_bconv2d_check(const bnn_conv_params_t *params, const bnn_output_t *output,
                                      const bnn_dims_t *in_dims, const uint32_t *in,
                                      const bnn_dims_t *filter_dims, const uint32_t *filter,
                                      const bnn_dims_t *out_dims, const void *out,
                                      bnn_bconv2d_geom_t *g)
{
    int64_t taps;
    int64_t filter_total;
    if (params == NULL || output == NULL || in == NULL || filter_dims == NULL ||
        filter == NULL || out == NULL || !bnn_dims_ok(in_dims) || !bnn_dims_ok(out_dims)) {
        return BNN_ERROR_ARGUMENT;
    }
    /* (the output channel blocks o0 + 32 stay within int32) */
    if (filter_dims->n <= 0 || filter_dims->n > INT32_MAX - BNN_BCONV2D_BLOCK ||
        filter_dims->h <= 0 || filter_dims->w <= 0 ||
        filter_dims->c != in_dims->c || out_dims->c != filter_dims->n) {
        return BNN_ERROR_ARGUMENT;
    }
    if (params->dilation_h != 1 || params->dilation_w != 1 ||
        (params->pad_value != 0 && params->pad_value != 1)) {
        return BNN_ERROR_ARGUMENT;
    }
    if (!bnn_window_ok(in_dims->h, out_dims->h, filter_dims->h, params->stride_h, 1,
                       params->pad_top) ||
        !bnn_window_ok(in_dims->w, out_dims->w, filter_dims->w, params->stride_w, 1,
                       params->pad_left)) {
        return BNN_ERROR_ARGUMENT;
    }
    /* the tap positions iy0 + i < H + KH (and likewise columns) stay within int32 */
    if ((int64_t)in_dims->h + filter_dims->h > INT32_MAX ||
        (int64_t)in_dims->w + filter_dims->w > INT32_MAX) {
        return BNN_ERROR_ARGUMENT;
    }
    taps = (int64_t)filter_dims->h * filter_dims->w;
    if (taps >= BNN_BCONV2D_ACC_LIMIT || taps * in_dims->c >= BNN_BCONV2D_ACC_LIMIT) {
        return BNN_ERROR_ARGUMENT;
    }
    g->nw = bnn_bconv2d_words(in_dims->c);
    filter_total = (int64_t)filter_dims->n * (taps * g->nw); /* < 2^31 * 2^30 */
    if (filter_total > INT32_MAX) {
        return BNN_ERROR_ARGUMENT;
    }
    if (bnn_bconv2d_check_output(output, filter_dims->n) != BNN_OK) {
        return BNN_ERROR_ARGUMENT;
    }
    g->h = in_dims->h;
    g->w = in_dims->w;
    g->c = in_dims->c;
    g->o = filter_dims->n;
    g->kh = filter_dims->h;
    g->kw = filter_dims->w;
    g->oh = out_dims->h;
    g->ow = out_dims->w;
    g->sh = params->stride_h;
    g->sw = params->stride_w;
    g->pt = params->pad_top;
    g->pl = params->pad_left;
    g->pad_value = params->pad_value;
    g->taps = (int32_t)taps;
    g->k_all = (int32_t)(taps * in_dims->c);
    g->filter_words = (int32_t)(taps * g->nw);
    g->out_words = bnn_bconv2d_words(g->o);
    return BNN_OK;
}

/* ---- output ----------------------------------------------------------------------------- */

/* clamp(round_half_away(y), -128, 127) without libm (the fraction of |y| < 256 is exact). */
static int8_t bnn_bconv2d_round_s8(float y)
{
    float m = y < 0.0f ? -y : y;
    int32_t r;
    if (!(m < 256.0f)) {
        m = 256.0f; /* saturates either way (also inf) */
    }
    r = (int32_t)m;
    if (m - (float)r >= 0.5f) {
        r += 1;
    }
    return (int8_t)bnn_clamp(y < 0.0f ? -r : r, -128, 127);
}

/* BNN_OUT_LCE (bnn_types.h): acc1 the one-padded sums, acc0 the zero-padded ones (NULL: no
 * padded tap in this window, or one padding). Each float operation is stored to a volatile
 * float, so that it rounds on its own (no fused multiply-add). */
static void bnn_bconv2d_emit_lce(const bnn_bconv2d_geom_t *g, const bnn_output_t *output,
                                 int32_t pixel, int32_t o0, int32_t n, const int32_t *acc1,
                                 const int32_t *acc0, void *out)
{
    int32_t k;
    for (k = 0; k < n; ++k) {
        int32_t o = o0 + k;
        int64_t x = (int64_t)output->lce_k - acc1[k];
        volatile float product;
        volatile float y;
        x = x < output->lce_clamp_lo ? output->lce_clamp_lo : x;
        x = x > output->lce_clamp_hi ? output->lce_clamp_hi : x;
        product = (float)x * output->f_scale[o];
        y = product + output->f_offset[o];
        if (acc0 != NULL) {
            volatile float fix = (float)(acc1[k] - acc0[k]) * output->f_scale[o];
            y = y + fix;
        }
        if (output->lce_int8_output) {
            ((int8_t *)out)[(size_t)pixel * (size_t)g->o + (size_t)o] = bnn_bconv2d_round_s8(y);
        } else {
            float value = y;
            const size_t index = (size_t)pixel * (size_t)g->o + (size_t)o;
            memcpy((unsigned char *)out + index * sizeof(float), &value, sizeof(float));
        }
    }
}

/* Output channels o0 .. o0 + n - 1 (n <= 32, o0 a multiple of 32) of output pixel `pixel`. */
BNN_ALWAYS_INLINE void bnn_bconv2d_emit(const bnn_bconv2d_geom_t *g, const bnn_output_t *output,
                                        int32_t pixel, int32_t o0, int32_t n, const int32_t *acc,
                                        void *out)
{
    int32_t k;
    if (output->kind == BNN_OUT_THRESHOLD) {
        uint32_t bits = 0;
        size_t index = (size_t)pixel * (size_t)g->out_words + (size_t)(o0 / 32);
        for (k = 0; k < n; ++k) {
            int32_t t = output->t_threshold[o0 + k];
            int8_t d = output->t_direction[o0 + k];
            int set = d > 0 ? acc[k] < t : (d < 0 ? acc[k] > t : t != 0);
            bits |= (uint32_t)set << k;
        }
        memcpy((unsigned char *)out + index * sizeof(uint32_t), &bits, sizeof(uint32_t));
        return;
    }
    if (output->kind == BNN_OUT_AFFINE) {
        /* locals: the int8 stores may alias *output, these cannot */
        int8_t *dst = (int8_t *)out + (size_t)pixel * (size_t)g->o + (size_t)o0;
        const int32_t *mult = output->a_mult + o0;
        const int64_t *offset = output->a_offset + o0;
        const int8_t *shift = output->a_shift + o0;
        /* (the C loop: with bnn_affine_run, res1_bconv took 1.8% more, measured) */
        const int32_t lo = output->act_min, hi = output->act_max;
        for (k = 0; k < n; ++k) {
            dst[k] = (int8_t)bnn_affine(acc[k], mult[k], offset[k], shift[k], lo, hi);
        }
        return;
    }
    for (k = 0; k < n; ++k) {
        bnn_output_store(output, o0 + k, acc[k], out, pixel * g->o + o0 + k);
    }
}

/* bnn_bconv2d_add's Add, with its per-call constants made once. */
typedef struct {
    bnn_add_s8_prepared_t add;
    const int8_t *residual;
    int8_t *out;
} bnn_bconv2d_sum_t;

/* The variants of bnn_bconv2d_sum_asm, by the shift class of the conv's store (every channel
 * 16..31, or every channel >= 32) and of the Add's (the same classes). */
#define BNN_BCONV2D_SUM_CONV_HI 1
#define BNN_BCONV2D_SUM_ADD_HI 2
#define BNN_BCONV2D_SUM_ON 4

#if BNN_AFFINE_FAST
/* The shift class of an affine store: BNN_BCONV2D_SUM_CONV_HI if every shift is >= 32, 0 if
 * every shift is 16..31, -1 otherwise (the fast forms do not apply). */
static int32_t bnn_bconv2d_shift_class(const int8_t *shift, int32_t n)
{
    int32_t hi = 0, lo = 0, k;
    for (k = 0; k < n; ++k) {
        hi += shift[k] >= 32;
        lo += shift[k] >= 16 && shift[k] < 32;
    }
    return hi == n ? BNN_BCONV2D_SUM_CONV_HI : (lo == n ? 0 : -1);
}

/* bnn_bconv2d_sum_asm's variant for bnn_bconv2d_add's output and Add (add valid and AFFINE,
 * output AFFINE): 0 if the fast forms do not apply (a range narrower than int8, or a shift
 * below 16). */
static int32_t bnn_bconv2d_sum_variant(const bnn_output_t *output, const bnn_add_params_t *add,
                                       int32_t channels)
{
    int32_t conv = bnn_bconv2d_shift_class(output->a_shift, channels);
    if (conv < 0 || output->act_min != BNN_INT8_MIN || output->act_max != BNN_INT8_MAX ||
        add->affine_shift < 16 || add->act_min != BNN_INT8_MIN ||
        add->act_max != BNN_INT8_MAX) {
        return 0;
    }
    return BNN_BCONV2D_SUM_ON | conv | (add->affine_shift >= 32 ? BNN_BCONV2D_SUM_ADD_HI : 0);
}

/* The operands of bnn_bconv2d_sum_asm, in the order its LDM loads them (r0-r7, lr), then the
 * Add's constants (read through r7). */
typedef struct {
    const int32_t *acc;    /* r0 */
    const int32_t *mult;   /* r1 */
    const int64_t *offset; /* r2 */
    const int8_t *shift;   /* r3 */
    const int8_t *b;       /* r4: the residual */
    int8_t *dst;           /* r5 */
    const int32_t *end;    /* r6: acc + n */
    const void *consts;    /* r7: &folded */
    int32_t ma;            /* lr: the Add's M[0] */
    int64_t folded;        /* [r7]: the Add's rounding-ready offset with the zero points */
    int32_t mb;            /* [r7, #8]: the Add's M[1] */
    int32_t sh;            /* [r7, #12]: the Add's shift (16..31), or shift - 32 */
    int32_t rsh;           /* [r7, #16]: 32 - sh */
} bnn_bconv2d_sum_args_t;

/* The conv's store of one element: acc (r8) * mult (r9) + offset in r10:r11, then as
 * bnn_affine_fast_lo (shift r12 in 16..31) or bnn_affine_fast (shift >= 32): the int8 a in
 * r8. */
#define BNN_BCONV2D_SUM_LOAD                                                                  \
    "ldr   r8, [r0], #4\n\t"                                                                    \
    "ldr   r9, [r1], #4\n\t"                                                                    \
    "ldrd  r10, r11, [r2], #8\n\t"                                                              \
    "ldrsb r12, [r3], #1\n\t"                                                                   \
    "smlal r10, r11, r8, r9\n\t"
#define BNN_BCONV2D_SUM_CONV_LO                                                               \
    "rsb   r9, r12, #32\n\t"                                                                    \
    "ssat  r11, #16, r11\n\t"                                                                   \
    "lsl   r11, r11, r9\n\t"                                                                    \
    "lsls  r8, r10, r9\n\t"                                                                     \
    "lsr   r10, r10, r12\n\t"                                                                   \
    "add   r8, r11, r10\n\t"                                                                    \
    "it    eq\n\t"                                                                              \
    "biceq r8, r8, #1\n\t"                                                                      \
    "ssat  r8, #8, r8\n\t"
#define BNN_BCONV2D_SUM_CONV_HI_ASM                                                           \
    "sub   r12, r12, #32\n\t"                                                                   \
    "asr   r8, r11, r12\n\t"                                                                    \
    "cmp   r10, #0\n\t"                                                                         \
    "bne   1f\n\t"                                                                              \
    "rsb   r9, r12, #32\n\t"                                                                    \
    "lsls  r9, r11, r9\n\t"                                                                     \
    "it    eq\n\t"                                                                              \
    "biceq r8, r8, #1\n"                                                                        \
    "1:\n\t"                                                                                    \
    "ssat  r8, #8, r8\n\t"
/* The Add of one element: t = b * mb + a * ma + folded in r10:r11, then rounded like the
 * conv's store by the Add's shift class, stored to dst. */
#define BNN_BCONV2D_SUM_ADD                                                                   \
    "ldrsb r12, [r4], #1\n\t"                                                                   \
    "ldrd  r10, r11, [r7]\n\t"                                                                  \
    "ldr   r9, [r7, #8]\n\t"                                                                    \
    "smlal r10, r11, r12, r9\n\t"                                                               \
    "smlal r10, r11, r8, lr\n\t"
#define BNN_BCONV2D_SUM_ADD_LO                                                                \
    "ldrd  r9, r12, [r7, #12]\n\t"                                                              \
    "ssat  r11, #16, r11\n\t"                                                                   \
    "lsl   r11, r11, r12\n\t"                                                                   \
    "lsls  r8, r10, r12\n\t"                                                                    \
    "lsr   r10, r10, r9\n\t"                                                                    \
    "add   r8, r11, r10\n\t"                                                                    \
    "it    eq\n\t"                                                                              \
    "biceq r8, r8, #1\n\t"                                                                      \
    "ssat  r8, #8, r8\n\t"
#define BNN_BCONV2D_SUM_ADD_HI_ASM                                                            \
    "ldr   r9, [r7, #12]\n\t"                                                                   \
    "asr   r8, r11, r9\n\t"                                                                     \
    "cmp   r10, #0\n\t"                                                                         \
    "bne   2f\n\t"                                                                              \
    "ldr   r9, [r7, #16]\n\t"                                                                   \
    "lsls  r9, r11, r9\n\t"                                                                     \
    "it    eq\n\t"                                                                              \
    "biceq r8, r8, #1\n"                                                                        \
    "2:\n\t"                                                                                    \
    "ssat  r8, #8, r8\n\t"
/* The whole loop: the registers it uses are saved and restored by the assembly itself (the
 * operands reach it through one pointer in r12), so it needs nothing of the compiler's
 * register allocation at any optimization level or frame-pointer setting. */
#define BNN_BCONV2D_SUM_LOOP(conv, add)                                                       \
    "push  {r4-r11, lr}\n\t"                                                                    \
    "ldm   r12, {r0-r7, lr}\n"                                                                  \
    "0:\n\t"                                                                                    \
    BNN_BCONV2D_SUM_LOAD conv BNN_BCONV2D_SUM_ADD add                                           \
    "strb  r8, [r5], #1\n\t"                                                                    \
    "cmp   r0, r6\n\t"                                                                          \
    "bne   0b\n\t"                                                                              \
    "pop   {r4-r11, lr}\n\t"

/* The affine store and the Add in one pass for channels o0 .. o0 + n - 1 (n >= 1): the conv's
 * int8 a by bnn_affine_fast_lo / bnn_affine_fast (every shift 16..31, or every shift >= 32,
 * and the full int8 range), then the Add's t = a * M[0] + b * M[1] + folded (bnn_add_s8's
 * affine sum, the zero points in `folded`) rounded and saturated to int8 by the same forms for
 * its shift. The same integers as bnn_affine_run followed by bnn_add_s8_run. b[k] is read
 * before dst[k] is written (dst may be b). About 30 instructions per element. */
BNN_NOINLINE void bnn_bconv2d_sum_asm(const bnn_output_t *output, const bnn_add_params_t *add,
                                      int64_t folded, int32_t variant, int32_t o0, int32_t n,
                                      const int32_t *acc, const int8_t *b, int8_t *dst)
{
    bnn_bconv2d_sum_args_t args;
    register bnn_bconv2d_sum_args_t *p __asm__("r12") = &args;
    args.acc = acc;
    args.mult = output->a_mult + o0;
    args.offset = output->a_offset + o0;
    args.shift = output->a_shift + o0;
    args.b = b;
    args.dst = dst;
    args.end = acc + n;
    args.consts = &args.folded;
    args.ma = add->affine_mult[0];
    args.folded = folded;
    args.mb = add->affine_mult[1];
    args.sh = add->affine_shift >= 32 ? add->affine_shift - 32 : add->affine_shift;
    args.rsh = 32 - args.sh;
    switch (variant & (BNN_BCONV2D_SUM_CONV_HI | BNN_BCONV2D_SUM_ADD_HI)) {
    case 0:
        __asm__ volatile(BNN_BCONV2D_SUM_LOOP(BNN_BCONV2D_SUM_CONV_LO, BNN_BCONV2D_SUM_ADD_LO)
                         : "+r"(p) : : "r0", "r1", "r2", "r3", "cc", "memory");
        break;
    case BNN_BCONV2D_SUM_CONV_HI:
        __asm__ volatile(BNN_BCONV2D_SUM_LOOP(BNN_BCONV2D_SUM_CONV_HI_ASM,
                                              BNN_BCONV2D_SUM_ADD_LO)
                         : "+r"(p) : : "r0", "r1", "r2", "r3", "cc", "memory");
        break;
    case BNN_BCONV2D_SUM_ADD_HI:
        __asm__ volatile(BNN_BCONV2D_SUM_LOOP(BNN_BCONV2D_SUM_CONV_LO,
                                              BNN_BCONV2D_SUM_ADD_HI_ASM)
                         : "+r"(p) : : "r0", "r1", "r2", "r3", "cc", "memory");
        break;
    default:
        __asm__ volatile(BNN_BCONV2D_SUM_LOOP(BNN_BCONV2D_SUM_CONV_HI_ASM,
                                              BNN_BCONV2D_SUM_ADD_HI_ASM)
                         : "+r"(p) : : "r0", "r1", "r2", "r3", "cc", "memory");
        break;
    }
}
#endif

/* bnn_bconv2d_add's output for channels o0 .. o0 + n - 1 of output element `index` (pixel *
 * O + o0): the int8 values (AFFINE) are the Add's input a, the residual its input b, and out
 * receives the sums. residual[i] is read before out[i] is written, so out may be residual. */
BNN_NOINLINE void bnn_bconv2d_emit_sum_c(const bnn_output_t *output,
                                         const bnn_bconv2d_sum_t *sum, size_t index, int32_t o0,
                                         int32_t n, const int32_t *acc)
{
    int8_t a[BNN_BCONV2D_BLOCK];
    bnn_affine_run(acc, output->a_mult + o0, output->a_offset + o0, output->a_shift + o0,
                   output->act_min, output->act_max, n, a);
    bnn_add_s8_run(&sum->add, n, a, sum->residual + index, sum->out + index);
}

/* The same by bnn_bconv2d_sum_asm where it applies (`fast`: its variant, 0: the C form);
 * called from here, not from the C form's frame, so that it adds no stack to the call. */
BNN_ALWAYS_INLINE void bnn_bconv2d_emit_sum(const bnn_output_t *output,
                                            const bnn_bconv2d_sum_t *sum, int32_t fast,
                                            size_t index, int32_t o0, int32_t n,
                                            const int32_t *acc)
{
#if BNN_AFFINE_FAST
    if (fast != 0) {
        bnn_bconv2d_sum_asm(output, sum->add.params, sum->add.folded, fast, o0, n, acc,
                            sum->residual + index, sum->out + index);
        return;
    }
#else
    (void)fast;
#endif
    bnn_bconv2d_emit_sum_c(output, sum, index, o0, n, acc);
}

/* ---- plain C path ----------------------------------------------------------------------- */

#if !BNN_BCONV2D_FAST
static uint32_t bnn_bconv2d_popcount(uint32_t v)
{
    v = v - ((v >> 1) & 0x55555555u);
    v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
    v = (v + (v >> 4)) & 0x0F0F0F0Fu;
    return (v * 0x01010101u) >> 24;
}

/* acc of the output channel whose filter is f, for the window at input (iy0, ix0). */
static int32_t bnn_bconv2d_acc_plain(const bnn_bconv2d_geom_t *g, const uint32_t *in,
                                     const uint32_t *f, int32_t iy0, int32_t ix0)
{
    uint32_t diff = 0;  /* bits that differ: <= KH * KW * C < 2^30 */
    int32_t counted = 0; /* taps that count: the inside ones, and the padded ones if one padding */
    int32_t i;
    int32_t j;
    int32_t k;
    for (i = 0; i < g->kh; ++i) {
        int32_t iy = iy0 + i;
        for (j = 0; j < g->kw; ++j) {
            int32_t ix = ix0 + j;
            const uint32_t *w = f + ((size_t)i * (size_t)g->kw + (size_t)j) * (size_t)g->nw;
            if (iy >= 0 && iy < g->h && ix >= 0 && ix < g->w) {
                const uint32_t *a =
                    in + ((size_t)iy * (size_t)g->w + (size_t)ix) * (size_t)g->nw;
                for (k = 0; k < g->nw; ++k) {
                    diff += bnn_bconv2d_popcount(a[k] ^ w[k]);
                }
                ++counted;
            } else if (g->pad_value == 1) {
                for (k = 0; k < g->nw; ++k) {
                    diff += bnn_bconv2d_popcount(w[k]); /* the padded row is all 0 bits */
                }
                ++counted;
            }
        }
    }
    return bnn_bconv2d_acc(counted * g->c, diff);
}

static void bnn_bconv2d_pixel(const bnn_bconv2d_geom_t *g, const uint32_t *in,
                              const uint32_t *filter, const uint32_t *fstream,
                              const uint32_t *fpairs, int32_t swords, int32_t y, int32_t x,
                              int32_t o0, int32_t n, int32_t *acc)
{
    int32_t iy0 = y * g->sh - g->pt;
    int32_t ix0 = x * g->sw - g->pl;
    int32_t k;
    (void)fstream;
    (void)fpairs;
    (void)swords;
    for (k = 0; k < n; ++k) {
        acc[k] = bnn_bconv2d_acc_plain(g, in, filter + (size_t)(o0 + k) * (size_t)g->filter_words,
                                       iy0, ix0);
    }
}
#endif /* !BNN_BCONV2D_FAST */

/* ---- Cortex-M7 path --------------------------------------------------------------------- */

#if BNN_BCONV2D_FAST
/* The popcount of each byte of v, in that byte (0..8). */
static inline uint32_t bnn_bconv2d_byte_counts(uint32_t v)
{
    v = v - ((v >> 1) & 0x55555555u);
    v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
    return (v + (v >> 4)) & 0x0F0F0F0Fu;
}

/* total + the sum of the four bytes of `bytes` (USADA8 with a zero second operand). */
static inline uint32_t bnn_bconv2d_sum_bytes(uint32_t bytes, uint32_t total)
{
#if BNN_BCONV2D_DSP
    return __usada8(bytes, 0u, total);
#else
    return total + (bytes & 0xFFu) + ((bytes >> 8) & 0xFFu) + ((bytes >> 16) & 0xFFu) +
           (bytes >> 24);
#endif
}

/* The popcount of each 4-bit group of v, in that group (0..4): the first two SWAR steps, with
 * the masks m1 = 0x55555555 and m2 = 0x33333333 given by the caller (held in registers, so that
 * each AND takes its shifted operand in one instruction on the Cortex-M7). Three such words can
 * be added with no carry between groups (<= 12 each). */
static inline uint32_t bnn_bconv2d_nibble_counts(uint32_t v, uint32_t m1, uint32_t m2)
{
    v = v - ((v >> 1) & m1);
    return (v & m2) + ((v >> 2) & m2);
}

/* total + the sum of the groups of `nib` (each <= 15; m4 = 0x0F0F0F0F): folded into bytes,
 * then USADA8. */
static inline uint32_t bnn_bconv2d_sum_nibbles(uint32_t nib, uint32_t m4, uint32_t total)
{
    return bnn_bconv2d_sum_bytes((nib & m4) + ((nib >> 4) & m4), total);
}

/* The three masks, hidden from constant propagation once per run (see above). */
#if BNN_BCONV2D_DSP
#define BNN_BCONV2D_MASKS                                                                      \
    uint32_t m1 = 0x55555555u, m2 = 0x33333333u, m4 = 0x0F0F0F0Fu;                            \
    __asm__("" : "+r"(m1), "+r"(m2), "+r"(m4))
#else
#define BNN_BCONV2D_MASKS const uint32_t m1 = 0x55555555u, m2 = 0x33333333u, m4 = 0x0F0F0F0Fu
#endif
#define BNN_NIB(v) bnn_bconv2d_nibble_counts((v), m1, m2)

/* total + sum_{k < n} popcount(a[k] ^ b[k]): three words per step counted in 4-bit groups */
static uint32_t bnn_bconv2d_xor_run(const uint32_t *a, const uint32_t *b, int32_t n,
                                    uint32_t total)
{
    BNN_BCONV2D_MASKS;
    for (; n >= 3; n -= 3, a += 3, b += 3) {
        uint32_t nib = BNN_NIB(a[0] ^ b[0]) + BNN_NIB(a[1] ^ b[1]) + BNN_NIB(a[2] ^ b[2]);
        total = bnn_bconv2d_sum_nibbles(nib, m4, total);
    }
    if (n > 0) {
        uint32_t nib = BNN_NIB(a[0] ^ b[0]);
        if (n > 1) {
            nib += BNN_NIB(a[1] ^ b[1]);
        }
        total = bnn_bconv2d_sum_nibbles(nib, m4, total);
    }
    return total;
}

#if BNN_BCONV2D_DSP && defined(__GNUC__) && defined(__OPTIMIZE__)
#define BNN_BCONV2D_RUN2_ASM 1
/* The 4-bit counts of v (r4..r6) in place, with t (r8..r10) as scratch: v - ((v >> 1) & m1),
 * then (v & m2) + ((v >> 2) & m2), m1 in r11 and m2 in lr (the AND takes the shifted operand). */
#define BNN_BCONV2D_NIB_ASM(v, t)                                                              \
    "and     " t ", r11, " v ", lsr #1\n\t"                                                       \
    "sub     " v ", " v ", " t "\n\t"                                                            \
    "and     " t ", lr, " v ", lsr #2\n\t"                                                        \
    "and     " v ", " v ", lr\n\t"                                                                \
    "add     " v ", " v ", " t "\n\t"
/* 3 input words (r4..r6, loaded by the caller) XOR 3 filter words (LDM from `b`, moving on),
 * their 4-bit counts added (<= 12 per group) and split for the fold into bytes: r8 the low
 * nibbles, r4 the high ones (the caller adds r8 + (r4 >> 4), <= 24 per byte). */
#define BNN_BCONV2D_COUNT3(b)                                                                  \
    "ldmia   " b "!, {r8, r9, r10}\n\t"                                                          \
    "eor     r4, r4, r8\n\t"                                                                      \
    "eor     r5, r5, r9\n\t"                                                                      \
    "eor     r6, r6, r10\n\t"                                                                     \
    BNN_BCONV2D_NIB_ASM("r4", "r8") BNN_BCONV2D_NIB_ASM("r5", "r9")                            \
    BNN_BCONV2D_NIB_ASM("r6", "r10")                                                           \
    "add     r4, r4, r5\n\t"                                                                      \
    "add     r4, r4, r6\n\t"                                                                      \
    "and     r8, r4, #0x0F0F0F0F\n\t"                                                             \
    "and     r4, r4, #0xF0F0F0F0\n\t"
/* One filter's 3 words (from `b`) against the 3 input words (LDM from r0, `wb` "!" to move
 * on): BNN_BCONV2D_COUNT3, the bytes summed into `total` by USADA8 against 0. */
#define BNN_BCONV2D_RUN2_STEP(wb, b, total)                                                    \
    "ldmia   r0" wb ", {r4, r5, r6}\n\t" BNN_BCONV2D_COUNT3(b)                                   \
    "add     r4, r8, r4, lsr #4\n\t"                                                              \
    "mov     r8, #0\n\t"                                                                          \
    "usada8  " total ", r4, r8, " total "\n\t"

/* The 3-word steps of bnn_bconv2d_xor_run2 from a, b1, b2 until a reaches a_end (at least one
 * step), in one assembly loop: 56 instructions per step for both filters (the C loop: 75).
 * Returns total1 | total2 << 32. A naked function: the arguments arrive in r0-r3 (AAPCS), the
 * assembly saves and restores the registers it uses and returns the totals in r0, r1, so that
 * it needs nothing of the compiler's register allocation and no stack but those 36 bytes. */
#define BNN_ASM_ARG __attribute__((unused)) /* read by the assembly, not by C */
__attribute__((naked)) static uint64_t bnn_bconv2d_run2_asm(const uint32_t *a BNN_ASM_ARG,
                                                            const uint32_t *b1 BNN_ASM_ARG,
                                                            const uint32_t *b2 BNN_ASM_ARG,
                                                            const uint32_t *a_end BNN_ASM_ARG)
{
    __asm__ volatile("push    {r4-r11, lr}\n\t"
                     "mov     r11, #0x55555555\n\t"
                     "mov     lr, #0x33333333\n\t"
                     "mov     r7, #0\n\t"
                     "mov     r12, #0\n"
                     "1:\n\t" BNN_BCONV2D_RUN2_STEP("", "r1", "r7")
                     BNN_BCONV2D_RUN2_STEP("!", "r2", "r12")
                     "cmp     r0, r3\n\t"
                     "bne     1b\n\t"
                     "mov     r0, r7\n\t"
                     "mov     r1, r12\n\t"
                     "pop     {r4-r11, pc}\n\t");
}

/* One group of 3 taps of bnn_bconv2d_pair9_asm: the window words (r4..r6 by `load`, from r0,
 * which stays fixed) against the filter pairs (from r1) by BNN_BCONV2D_COUNT3, the bytes added
 * to the byte sums in r7 by `start` (the first group starts them). */
#define BNN_BCONV2D_PAIR9_GROUP(load, start) load BNN_BCONV2D_COUNT3("r1") start

/* bnn_bconv2d_pair_accs for a 3x3 window (9 words x | x << 16 at buf) and npairs >= 1 filter
 * pairs (9 words w1 | w2 << 16 each, from fp), in one assembly loop: per pair the 9 XORs and
 * 4-bit counts, the bytes summed (<= 72: bytes 0 + 1 count the first channel, 2 + 3 the
 * second), and acc[2p], acc[2p + 1] = k_all - 2 * count stored by STRD: 87 instructions per
 * pair (the C loop: 112, its 9 window words spilled). A naked function (the arguments in r0-r3
 * and, fifth, on the stack: AAPCS), as bnn_bconv2d_run2_asm. */
__attribute__((naked)) static void bnn_bconv2d_pair9_asm(const uint32_t *buf BNN_ASM_ARG,
                                                         const uint32_t *fp BNN_ASM_ARG,
                                                         int32_t npairs BNN_ASM_ARG,
                                                         int32_t *acc BNN_ASM_ARG,
                                                         int32_t k_all BNN_ASM_ARG)
{
    __asm__ volatile("push    {r4-r11, lr}\n\t"
                     "ldr     r12, [sp, #36]\n\t" /* k_all, the fifth argument */
                     "mov     r11, #0x55555555\n\t"
                     "mov     lr, #0x33333333\n"
                     "1:\n\t" BNN_BCONV2D_PAIR9_GROUP("ldmia   r0, {r4, r5, r6}\n\t",
                                                       "add     r7, r8, r4, lsr #4\n\t")
                     BNN_BCONV2D_PAIR9_GROUP("add     r4, r0, #12\n\t"
                                             "ldmia   r4, {r4, r5, r6}\n\t",
                                             "add     r8, r8, r4, lsr #4\n\t"
                                             "add     r7, r7, r8\n\t")
                     BNN_BCONV2D_PAIR9_GROUP("add     r4, r0, #24\n\t"
                                             "ldmia   r4, {r4, r5, r6}\n\t",
                                             "add     r8, r8, r4, lsr #4\n\t"
                                             "add     r7, r7, r8\n\t")
                     "add     r7, r7, r7, lsr #8\n\t" /* byte 0: 0 + 1, byte 2: 2 + 3 */
                     "and     r4, r7, #0xFF\n\t"
                     "ubfx    r5, r7, #16, #8\n\t"
                     "sub     r4, r12, r4, lsl #1\n\t"
                     "sub     r5, r12, r5, lsl #1\n\t"
                     "strd    r4, r5, [r3], #8\n\t"
                     "subs    r2, r2, #1\n\t"
                     "bne     1b\n\t"
                     "pop     {r4-r11, pc}\n\t");
}
#undef BNN_BCONV2D_PAIR9_GROUP
#undef BNN_ASM_ARG
#undef BNN_BCONV2D_NIB_ASM
#undef BNN_BCONV2D_COUNT3
#undef BNN_BCONV2D_RUN2_STEP
#else
#define BNN_BCONV2D_RUN2_ASM 0
#endif

/* The same for two filters against one run of input words: *t1 and *t2 get
 * sum_{k < n} popcount(a[k] ^ b1[k]) and popcount(a[k] ^ b2[k]). */
static void bnn_bconv2d_xor_run2(const uint32_t *a, const uint32_t *b1, const uint32_t *b2,
                                 int32_t n, uint32_t *t1, uint32_t *t2)
{
    uint32_t total1 = 0;
    uint32_t total2 = 0;
    BNN_BCONV2D_MASKS;
#if BNN_BCONV2D_RUN2_ASM
    if (n >= 3) {
        const int32_t done = 3 * (n / 3);
        const uint64_t totals = bnn_bconv2d_run2_asm(a, b1, b2, a + done);
        total1 = (uint32_t)totals;
        total2 = (uint32_t)(totals >> 32);
        a += done;
        b1 += done;
        b2 += done;
        n -= done;
    }
#endif
    for (; n >= 3; n -= 3, a += 3, b1 += 3, b2 += 3) {
        uint32_t x0 = a[0], x1 = a[1], x2 = a[2];
        uint32_t nib1 = BNN_NIB(x0 ^ b1[0]) + BNN_NIB(x1 ^ b1[1]) + BNN_NIB(x2 ^ b1[2]);
        uint32_t nib2 = BNN_NIB(x0 ^ b2[0]) + BNN_NIB(x1 ^ b2[1]) + BNN_NIB(x2 ^ b2[2]);
        total1 = bnn_bconv2d_sum_nibbles(nib1, m4, total1);
        total2 = bnn_bconv2d_sum_nibbles(nib2, m4, total2);
    }
    if (n > 0) {
        uint32_t nib1 = BNN_NIB(a[0] ^ b1[0]);
        uint32_t nib2 = BNN_NIB(a[0] ^ b2[0]);
        if (n > 1) {
            nib1 += BNN_NIB(a[1] ^ b1[1]);
            nib2 += BNN_NIB(a[1] ^ b2[1]);
        }
        total1 = bnn_bconv2d_sum_nibbles(nib1, m4, total1);
        total2 = bnn_bconv2d_sum_nibbles(nib2, m4, total2);
    }
    *t1 = total1;
    *t2 = total2;
}

/* total + sum_{k < n} popcount(b[k]) */
static uint32_t bnn_bconv2d_pop_run(const uint32_t *b, int32_t n, uint32_t total)
{
    BNN_BCONV2D_MASKS;
    for (; n >= 3; n -= 3, b += 3) {
        uint32_t nib = BNN_NIB(b[0]) + BNN_NIB(b[1]) + BNN_NIB(b[2]);
        total = bnn_bconv2d_sum_nibbles(nib, m4, total);
    }
    for (; n > 0; --n, ++b) {
        total = bnn_bconv2d_sum_nibbles(BNN_NIB(*b), m4, total);
    }
    return total;
}
/* Two channels per word (C <= 16, KH * KW <= 30): the window words hold x | x << 16 and fp the
 * filter pairs w1 | w2 << 16 (made once per call), so one XOR gives both channels' differing
 * bits; counted three taps per step in 4-bit groups, then folded into bytes (<= 24 per step and
 * byte, <= 240 over 30 taps: no carry); bytes 0 + 1 count the first channel, 2 + 3 the second.
 * acc[2p], acc[2p + 1] for the npairs pairs, each pair's taps words after the previous one's. */
static void bnn_bconv2d_pair_accs(int32_t k_all, const uint32_t *buf, const uint32_t *fp,
                                  int32_t taps, int32_t npairs, int32_t *acc)
{
    int32_t p;
    BNN_BCONV2D_MASKS;
#if BNN_BCONV2D_RUN2_ASM
    if (taps == 9 && npairs > 0) {
        bnn_bconv2d_pair9_asm(buf, fp, npairs, acc, k_all);
        return;
    }
#endif
    if (taps == 9) { /* 3x3, unrolled: the window's 9 words are the same for every pair */
        const uint32_t x0 = buf[0], x1 = buf[1], x2 = buf[2], x3 = buf[3], x4 = buf[4];
        const uint32_t x5 = buf[5], x6 = buf[6], x7 = buf[7], x8 = buf[8];
        for (p = 0; p < npairs; ++p, fp += 9) {
            uint32_t n0 = BNN_NIB(x0 ^ fp[0]) + BNN_NIB(x1 ^ fp[1]) + BNN_NIB(x2 ^ fp[2]);
            uint32_t n1 = BNN_NIB(x3 ^ fp[3]) + BNN_NIB(x4 ^ fp[4]) + BNN_NIB(x5 ^ fp[5]);
            uint32_t n2 = BNN_NIB(x6 ^ fp[6]) + BNN_NIB(x7 ^ fp[7]) + BNN_NIB(x8 ^ fp[8]);
            uint32_t bytes = (n0 & m4) + ((n0 >> 4) & m4) + (n1 & m4) + ((n1 >> 4) & m4) +
                             (n2 & m4) + ((n2 >> 4) & m4);
            acc[2 * p] = bnn_bconv2d_acc(k_all, bnn_bconv2d_sum_bytes(bytes & 0xFFFFu, 0u));
            acc[2 * p + 1] = bnn_bconv2d_acc(k_all, bnn_bconv2d_sum_bytes(bytes >> 16, 0u));
        }
        return;
    }
    for (p = 0; p < npairs; ++p, fp += taps) {
        uint32_t bytes = 0;
        int32_t t = 0;
        for (; t + 3 <= taps; t += 3) {
            uint32_t nib = BNN_NIB(buf[t] ^ fp[t]) + BNN_NIB(buf[t + 1] ^ fp[t + 1]) +
                           BNN_NIB(buf[t + 2] ^ fp[t + 2]);
            bytes += (nib & m4) + ((nib >> 4) & m4);
        }
        if (t < taps) {
            uint32_t nib = BNN_NIB(buf[t] ^ fp[t]);
            if (t + 1 < taps) {
                nib += BNN_NIB(buf[t + 1] ^ fp[t + 1]);
            }
            bytes += (nib & m4) + ((nib >> 4) & m4);
        }
        acc[2 * p] = bnn_bconv2d_acc(k_all, bnn_bconv2d_sum_bytes(bytes & 0xFFFFu, 0u));
        acc[2 * p + 1] = bnn_bconv2d_acc(k_all, bnn_bconv2d_sum_bytes(bytes >> 16, 0u));
    }
}
#undef BNN_NIB
#undef BNN_BCONV2D_MASKS

/* Concatenates `taps` words of `c` < 32 significant bits (the bits above c are 0) into a bit
 * stream: bit k of word t lands at stream bit t * c + k; `words` = ceil(taps * c / 32) words
 * are written (the tail bits 0). Two streams made this way from a window and from a filter
 * differ exactly where the taps' channels differ. */
static void bnn_bconv2d_stream(const uint32_t *src, int32_t taps, int32_t c, uint32_t *dst,
                               int32_t words)
{
    uint32_t pos = 0;
    int32_t t;
    for (t = 0; t < words; ++t) {
        dst[t] = 0;
    }
    for (t = 0; t < taps; ++t, pos += (uint32_t)c) {
        uint32_t v = src[t];
        uint32_t word = pos >> 5;
        uint32_t bit = pos & 31u;
        dst[word] |= v << bit;
        if (bit + (uint32_t)c > 32u) { /* then bit >= 1: the shift is 1..31 */
            dst[word + 1u] |= v >> (32u - bit);
        }
    }
}

/* The taps of one output pixel that lie inside the input: rows [i_lo, i_hi) of the kernel,
 * columns [j_lo, j_hi) (never empty: bnn_window_ok), and the input word of tap (i_lo, j_lo). */
typedef struct {
    int32_t i_lo, i_hi, j_lo, j_hi;
    int full; /* the whole kernel */
    const uint32_t *x0;
} bnn_bconv2d_window_t;

/* Rectangle form, one output channel (filter f), any pad_value: one run of
 * (j_hi - j_lo) * NW words per kernel row inside the input; with one padding, the filter words
 * of the padded taps are counted against all-zero input words (popcount(0 ^ w) = popcount(w)). */
static int32_t bnn_bconv2d_acc_rect(const bnn_bconv2d_geom_t *g, const bnn_bconv2d_window_t *win,
                                    const uint32_t *f)
{
    int32_t row_words = g->kw * g->nw; /* one kernel row of the filter */
    int32_t run = (win->j_hi - win->j_lo) * g->nw;
    size_t in_row = (size_t)g->w * (size_t)g->nw; /* one input row */
    uint32_t total = 0;
    int32_t i;
    for (i = win->i_lo; i < win->i_hi; ++i) {
        total = bnn_bconv2d_xor_run(
            win->x0 + (size_t)(i - win->i_lo) * in_row,
            f + (size_t)i * (size_t)row_words + (size_t)win->j_lo * (size_t)g->nw, run, total);
    }
    if (g->pad_value == 0) {
        return bnn_bconv2d_acc((win->i_hi - win->i_lo) * (win->j_hi - win->j_lo) * g->c, total);
    }
    if (!win->full) {
        for (i = 0; i < g->kh; ++i) {
            const uint32_t *w = f + (size_t)i * (size_t)row_words;
            if (i < win->i_lo || i >= win->i_hi) {
                total = bnn_bconv2d_pop_run(w, row_words, total);
            } else {
                total = bnn_bconv2d_pop_run(w, win->j_lo * g->nw, total);
                total = bnn_bconv2d_pop_run(w + (size_t)win->j_hi * (size_t)g->nw,
                                            (g->kw - win->j_hi) * g->nw, total);
            }
        }
    }
    return bnn_bconv2d_acc(g->k_all, total);
}

/* Copies the KH x KW window of the pixel into buf in the filter's order (tap (i, j) at
 * (i * KW + j) * NW); taps outside the input become all-zero words, the +1 rows of one
 * padding. With `dup` (NW = 1, C <= 16: the words are below 2^16) each word is x | x << 16. */
/* A window whose taps all lie inside the input: kh rows of row_words words from src (rows
 * in_row words apart) into buf; with `dup` (C <= 16, one word per tap) each word as x | x << 16.
 * Rows of 3 words (the usual 3x3 window) unrolled. */
BNN_ALWAYS_INLINE void bnn_bconv2d_copy_rows(const uint32_t *src, size_t in_row, int32_t kh,
                                             int32_t row_words, int dup, uint32_t *buf)
{
    int32_t i;
    int32_t k;
    if (row_words == 3) {
        for (i = 0; i < kh; ++i, src += in_row, buf += 3) {
            uint32_t a = src[0], b = src[1], c = src[2];
            if (dup) {
                a |= a << 16;
                b |= b << 16;
                c |= c << 16;
            }
            buf[0] = a;
            buf[1] = b;
            buf[2] = c;
        }
        return;
    }
    for (i = 0; i < kh; ++i, src += in_row) {
        for (k = 0; k < row_words; ++k) {
            *buf++ = dup ? src[k] | src[k] << 16 : src[k];
        }
    }
}

static void bnn_bconv2d_gather(const bnn_bconv2d_geom_t *g, const bnn_bconv2d_window_t *win,
                               int dup, uint32_t *buf)
{
    size_t in_row = (size_t)g->w * (size_t)g->nw;
    int32_t row_words = g->kw * g->nw;
    int32_t i;
    int32_t k;
    if (win->full) {
        bnn_bconv2d_copy_rows(win->x0, in_row, g->kh, row_words, dup, buf);
        return;
    }
    for (i = 0; i < g->kh; ++i) {
        uint32_t *dst = buf + (size_t)i * (size_t)row_words;
        if (i < win->i_lo || i >= win->i_hi) {
            for (k = 0; k < row_words; ++k) {
                dst[k] = 0;
            }
        } else {
            const uint32_t *src = win->x0 + (size_t)(i - win->i_lo) * in_row;
            int32_t lo = win->j_lo * g->nw;
            int32_t hi = win->j_hi * g->nw;
            for (k = 0; k < lo; ++k) {
                dst[k] = 0;
            }
            for (k = lo; k < hi; ++k) {
                dst[k] = src[k - lo];
            }
            for (k = hi; k < row_words; ++k) {
                dst[k] = 0;
            }
        }
    }
    if (dup) {
        for (k = 0; k < g->taps; ++k) {
            buf[k] |= buf[k] << 16;
        }
    }
}

/* Gathered form: the window in buf (bnn_bconv2d_gather), every tap counted (an interior
 * pixel, or one padding); the filter of a channel is the same run of KH * KW * NW words. */
static void bnn_bconv2d_accs_gathered(const bnn_bconv2d_geom_t *g, const uint32_t *buf, int pair16,
                                      const uint32_t *f, const uint32_t *fpairs, int32_t n,
                                      int32_t *acc)
{
    int32_t len = g->filter_words;
    int32_t k = 0;
    if (pair16) {
        /* two channels per word: buf holds x | x << 16, the filter words are below 2^16, so
         * x ^ (w1 | w2 << 16) = (x ^ w1) | (x ^ w2) << 16; the pairs made once per call if
         * there are (fpairs), else here */
        if (fpairs != NULL) {
            bnn_bconv2d_pair_accs(g->k_all, buf, fpairs, g->taps, n / 2, acc);
            k = n - n % 2;
        }
        for (; k + 2 <= n; k += 2) {
            const uint32_t *w1 = f + (size_t)k * (size_t)len;
            const uint32_t *w2 = w1 + len;
            uint32_t bytes = 0; /* bytes 0, 1: channel k; 2, 3: channel k + 1; <= 31 * 8 */
            int32_t t;
            for (t = 0; t < len; ++t) {
                bytes += bnn_bconv2d_byte_counts(buf[t] ^ (w1[t] | (w2[t] << 16)));
            }
            acc[k] = bnn_bconv2d_acc(g->k_all, bnn_bconv2d_sum_bytes(bytes & 0xFFFFu, 0u));
            acc[k + 1] = bnn_bconv2d_acc(g->k_all, bnn_bconv2d_sum_bytes(bytes >> 16, 0u));
        }
        if (k < n) {
            const uint32_t *w1 = f + (size_t)k * (size_t)len;
            uint32_t bytes = 0;
            int32_t t;
            for (t = 0; t < len; ++t) {
                bytes += bnn_bconv2d_byte_counts((buf[t] ^ w1[t]) & 0xFFFFu);
            }
            acc[k] = bnn_bconv2d_acc(g->k_all, bnn_bconv2d_sum_bytes(bytes, 0u));
        }
        return;
    }
    for (; k + 2 <= n; k += 2) {
        uint32_t t1;
        uint32_t t2;
        const uint32_t *w1 = f + (size_t)k * (size_t)len;
        bnn_bconv2d_xor_run2(buf, w1, w1 + len, len, &t1, &t2);
        acc[k] = bnn_bconv2d_acc(g->k_all, t1);
        acc[k + 1] = bnn_bconv2d_acc(g->k_all, t2);
    }
    if (k < n) {
        acc[k] = bnn_bconv2d_acc(
            g->k_all, bnn_bconv2d_xor_run(buf, f + (size_t)k * (size_t)len, len, 0u));
    }
}

static void bnn_bconv2d_pixel(const bnn_bconv2d_geom_t *g, const uint32_t *in,
                              const uint32_t *filter, const uint32_t *fstream,
                              const uint32_t *fpairs, int32_t swords, int32_t y, int32_t x,
                              int32_t o0, int32_t n, int32_t *acc)
{
    bnn_bconv2d_window_t win;
    uint32_t buf[BNN_BCONV2D_WINDOW_WORDS];
    int32_t iy0 = y * g->sh - g->pt;
    int32_t ix0 = x * g->sw - g->pl;
    const uint32_t *f = filter + (size_t)o0 * (size_t)g->filter_words;
    int32_t k;
    bnn_valid_taps(iy0, g->h, g->kh, 1, &win.i_lo, &win.i_hi);
    bnn_valid_taps(ix0, g->w, g->kw, 1, &win.j_lo, &win.j_hi);
    win.full = win.i_lo == 0 && win.i_hi == g->kh && win.j_lo == 0 && win.j_hi == g->kw;
    win.x0 = in + ((size_t)(iy0 + win.i_lo) * (size_t)g->w + (size_t)(ix0 + win.j_lo)) *
                      (size_t)g->nw;
    if ((win.full || g->pad_value == 1) && g->filter_words <= BNN_BCONV2D_WINDOW_WORDS &&
        fstream != NULL) {
        /* C < 32: the window as one bit stream against the filters' streams (full words) */
        uint32_t stream[BNN_BCONV2D_WINDOW_WORDS];
        const uint32_t *fs = fstream + (size_t)o0 * (size_t)swords;
        bnn_bconv2d_gather(g, &win, 0, buf);
        bnn_bconv2d_stream(buf, g->taps, g->c, stream, swords);
        for (k = 0; k + 2 <= n; k += 2) {
            uint32_t t1, t2;
            bnn_bconv2d_xor_run2(stream, fs + (size_t)k * (size_t)swords,
                                 fs + (size_t)(k + 1) * (size_t)swords, swords, &t1, &t2);
            acc[k] = bnn_bconv2d_acc(g->k_all, t1);
            acc[k + 1] = bnn_bconv2d_acc(g->k_all, t2);
        }
        if (k < n) {
            acc[k] = bnn_bconv2d_acc(
                g->k_all, bnn_bconv2d_xor_run(stream, fs + (size_t)k * (size_t)swords, swords, 0u));
        }
        return;
    }
    if ((win.full || g->pad_value == 1) && g->filter_words <= BNN_BCONV2D_WINDOW_WORDS) {
        int pair16 = g->nw == 1 && g->c <= 16 && g->taps <= BNN_BCONV2D_BYTE_RUN;
        bnn_bconv2d_gather(g, &win, pair16, buf);
        bnn_bconv2d_accs_gathered(g, buf, pair16, f,
                                  fpairs != NULL ? fpairs + (size_t)(o0 / 2) * (size_t)g->taps
                                                 : fpairs,
                                  n, acc);
        return;
    }
    for (k = 0; k < n; ++k) {
        acc[k] = bnn_bconv2d_acc_rect(g, &win, f + (size_t)k * (size_t)g->filter_words);
    }
}

/* ---- scratch path ---------------------------------------------------------------------- */

/* The store words of the scratch path for one channel: bnn_affine with shift s <= 32 in the
 * count form. With r = 32 - s, the loop makes x = (K - acc) * 2^r from the count c of differing
 * bits as c << (r + 1) (plus a border pixel's correction, bnn_bconv2d_scr_corr); then
 * u = O + x * (-M), O = (K * M + offset) * 2^r, is (acc * M + offset) * 2^r exactly, so that
 * u's high word is bnn_affine's floor(t / 2^s) and an exact tie is u's low word 0 (one SMLAL,
 * then as bnn_affine_fast with k = 0). Words: O's low and high words, -M, r + 1. Returns 0 where
 * the form does not apply: s < 2 or s > 32, M = INT32_MIN, 2K * 2^r >= 2^31 (x must fit), or
 * u past int64 for some |acc| <= K. */
static int bnn_bconv2d_count_words(int32_t k_all, int32_t mult, int64_t offset, int32_t shift,
                                   int32_t *w)
{
    int32_t r;
    int64_t lim, up, down;
    if (shift < 2 || shift > 32 || mult == INT32_MIN) {
        return 0;
    }
    r = 32 - shift;
    if (((int64_t)k_all << (r + 1)) >= ((int64_t)1 << 31)) {
        return 0;
    }
    lim = INT64_MAX >> r;
    up = offset + (int64_t)k_all * mult; /* |offset| < 2^62, |K * M| < 2^61: no overflow */
    down = offset - (int64_t)k_all * mult;
    if (up > lim || up < -lim || down > lim || down < -lim) {
        return 0;
    }
    up *= (int64_t)1 << r;
    w[0] = bnn_s32_from_u32((uint32_t)(uint64_t)up);
    w[1] = bnn_s32_from_u32((uint32_t)((uint64_t)up >> 32));
    w[2] = -mult;
    w[3] = r + 1;
    return 1;
}

/* Fills the scratch (bnn_bconv2d_scr_layout) for this call: 0 (and the scratch path is not
 * taken) if it is missing, too small or unaligned, the output is not AFFINE with the full int8
 * range, or a channel's store has no count form. */
static int bnn_bconv2d_scr_prepare(const bnn_bconv2d_geom_t *g, const bnn_context_t *ctx,
                                   const bnn_output_t *output, const uint32_t *filter,
                                   bnn_bconv2d_scr_t *s)
{
    uint32_t *scr;
    uint16_t *pop;
    int32_t o, t, k;
    bnn_bconv2d_scr_layout(g->c, g->kh, g->kw, g->o, (int64_t)g->oh * g->ow, s);
    if (s->form == 0 || ctx == NULL || ctx->buf == NULL || ((uintptr_t)ctx->buf & 3u) != 0 ||
        ctx->size < s->bytes || output->kind != BNN_OUT_AFFINE ||
        output->act_min != BNN_INT8_MIN || output->act_max != BNN_INT8_MAX) {
        return 0;
    }
    scr = (uint32_t *)ctx->buf;
    pop = (uint16_t *)(void *)(scr + s->pop);
    for (o = 0; o < 2 * s->slots; ++o) {
        uint32_t *slot = scr + (size_t)(o / 2) * (size_t)s->slot_words;
        int32_t *words = (int32_t *)(void *)(slot + s->filter_words) +
                         BNN_BCONV2D_SCR_STORE * (o % 2);
        const uint32_t *f = filter + (size_t)o * (size_t)g->filter_words;
        if (o == g->o) { /* O odd: the last slot's zero partner */
            for (k = 0; k < BNN_BCONV2D_SCR_STORE; ++k) {
                words[k] = 0;
            }
            if (s->form == BNN_BCONV2D_SCR_RUN) {
                for (k = 0; k < s->len; ++k) {
                    slot[(k / 3) * 6 + 3 + k % 3] = 0;
                }
            }
            break;
        }
        if (!bnn_bconv2d_count_words(g->k_all, output->a_mult[o], output->a_offset[o],
                                     output->a_shift[o], words)) {
            return 0;
        }
        if (s->form == BNN_BCONV2D_SCR_PAIR9) {
            for (k = 0; k < 9; ++k) {
                slot[k] = o % 2 == 0 ? f[k] : slot[k] | (f[k] << 16);
            }
        } else {
            for (k = 0; k < s->len; ++k) {
                slot[(k / 3) * 6 + 3 * (o % 2) + k % 3] = k < g->filter_words ? f[k] : 0u;
            }
        }
        for (t = 0; t < g->taps; ++t) {
            uint32_t n = 0;
            for (k = 0; k < g->nw; ++k) {
                n = bnn_bconv2d_sum_bytes(bnn_bconv2d_byte_counts(f[t * g->nw + k]), n);
            }
            pop[(size_t)o * (size_t)g->taps + (size_t)t] = (uint16_t)n;
        }
    }
    return 1;
}

/* The border correction of each channel (scratch path, zero padding, a pixel whose window is
 * not whole): the window's padded taps are zero words, which count popcount(w) there, while
 * those taps must count nothing. acc = K - 2c - corr with corr = padded * C - 2 * (the
 * filter's popcount over the padded taps); stored as corr * 2^r (r = 32 - shift), which the
 * loop adds to c << (r + 1). */
static void bnn_bconv2d_scr_corr(const bnn_bconv2d_geom_t *g, const bnn_bconv2d_window_t *win,
                                 const bnn_bconv2d_scr_t *s, const uint32_t *scr, int32_t *corr)
{
    uint8_t padded[BNN_BCONV2D_SCR_WORDS];
    const uint16_t *pop = (const uint16_t *)(const void *)(scr + s->pop);
    int32_t n = 0, i, j, o;
    for (i = 0; i < g->kh; ++i) {
        for (j = 0; j < g->kw; ++j) {
            if (i < win->i_lo || i >= win->i_hi || j < win->j_lo || j >= win->j_hi) {
                padded[n++] = (uint8_t)(i * g->kw + j);
            }
        }
    }
    for (o = 0; o < g->o; ++o) {
        const uint16_t *p = pop + (size_t)o * (size_t)g->taps;
        const int32_t *words = (const int32_t *)(const void *)(scr + (size_t)(o / 2) *
                                                                         (size_t)s->slot_words +
                                                               s->filter_words) +
                               BNN_BCONV2D_SCR_STORE * (o % 2);
        uint32_t sum = 0;
        for (i = 0; i < n; ++i) {
            sum += p[padded[i]];
        }
        corr[o] = bnn_s32_from_u32(((uint32_t)(n * g->c) - 2u * sum) << (words[3] - 1));
    }
}

/* One channel's int8 output by its store words k (bnn_bconv2d_count_words) from its count c
 * and correction corr (0 inside), then + b saturated when `b` is given (the plain-sum Add). */
static int8_t bnn_bconv2d_count_store(uint32_t c, int32_t corr, const int32_t *k,
                                      const int8_t *b)
{
    const uint32_t x = (c << k[3]) + (uint32_t)corr;
    const uint64_t u = (((uint64_t)(uint32_t)k[1] << 32) | (uint32_t)k[0]) +
                       (uint64_t)((int64_t)bnn_s32_from_u32(x) * (int64_t)k[2]);
    int32_t q = bnn_s32_from_u32((uint32_t)(u >> 32));
    if ((uint32_t)u == 0u) { /* an exact tie: half to even */
        q -= (int32_t)((uint32_t)q & 1u);
    }
    q = bnn_clamp32(q, BNN_INT8_MIN, BNN_INT8_MAX);
    if (b != NULL) {
        q = bnn_clamp32(q + *b, BNN_INT8_MIN, BNN_INT8_MAX);
    }
    return (int8_t)q;
}

/* Slot p's channels (`both`: 2p and 2p + 1, else 2p only) against the window buf, in C: the
 * scratch path where its assembly is not built, and the last channel when O is odd. */
static void bnn_bconv2d_scr_slot(const bnn_bconv2d_scr_t *s, const uint32_t *buf,
                                 const uint32_t *scr, int32_t p, int both, int8_t *dst,
                                 const int8_t *b, const int32_t *corr)
{
    const uint32_t *slot = scr + (size_t)p * (size_t)s->slot_words;
    const int32_t *k = (const int32_t *)(const void *)(slot + s->filter_words);
    uint32_t c0 = 0, c1 = 0;
    int32_t t;
    if (s->form == BNN_BCONV2D_SCR_PAIR9) {
        uint32_t bytes = 0;
        for (t = 0; t < 9; ++t) {
            bytes += bnn_bconv2d_byte_counts(buf[t] ^ slot[t]); /* <= 72 per byte */
        }
        c0 = bnn_bconv2d_sum_bytes(bytes & 0xFFFFu, 0u);
        c1 = bnn_bconv2d_sum_bytes(bytes >> 16, 0u);
    } else {
        for (t = 0; t < s->len; ++t) {
            c0 = bnn_bconv2d_sum_bytes(bnn_bconv2d_byte_counts(buf[t] ^ slot[(t / 3) * 6 + t % 3]),
                                       c0);
            c1 = bnn_bconv2d_sum_bytes(
                bnn_bconv2d_byte_counts(buf[t] ^ slot[(t / 3) * 6 + 3 + t % 3]), c1);
        }
    }
    dst[2 * p] = bnn_bconv2d_count_store(c0, corr != NULL ? corr[2 * p] : 0, k,
                                         b != NULL ? b + 2 * p : b);
    if (both) {
        dst[2 * p + 1] =
            bnn_bconv2d_count_store(c1, corr != NULL ? corr[2 * p + 1] : 0,
                                    k + BNN_BCONV2D_SCR_STORE, b != NULL ? b + 2 * p + 1 : b);
    }
}

#if BNN_BCONV2D_RUN2_ASM
#define BNN_ASM_ARG __attribute__((unused)) /* read by the assembly, not by C */
/* The scratch path's loops in assembly (naked functions, as bnn_bconv2d_pair9_asm): slots
 * scr .. end (whole pairs) against the window buf, each channel's int8 stored to dst (moving
 * on), with the plain-sum Add (`b`, the residual) and the border corrections (`corr`) in the
 * variants that take them (the 5th and 6th arguments, on the stack).
 * The 4-bit counts of v in place, t scratch: v - ((v >> 1) & 0x5..), then (v & 0x3..) +
 * ((v >> 2) & 0x3..), the masks as immediates (AND with the high bits, then the shifted
 * operand of SUB / ADD). */
#define BNN_SCR_NIB(v, t)                                                                      \
    "and     " t ", " v ", #0xAAAAAAAA\n\t"                                                     \
    "sub     " v ", " v ", " t ", lsr #1\n\t"                                                   \
    "and     " t ", " v ", #0xCCCCCCCC\n\t"                                                     \
    "and     " v ", " v ", #0x33333333\n\t"                                                     \
    "add     " v ", " v ", " t ", lsr #2\n\t"
/* Three XORed words a, b, c to their 4-bit counts in a (<= 12 per group): a full adder first
 * (sum a ^ b ^ c in a, carry (a & b) | ((a ^ b) & c) in b; t scratch), then sum + 2 * carry. */
#define BNN_SCR_COUNT3(a, b, c, t)                                                             \
    "and     " t ", " a ", " b "\n\t"                                                           \
    "eor     " a ", " a ", " b "\n\t"                                                           \
    "and     " b ", " a ", " c "\n\t"                                                           \
    "eor     " a ", " a ", " c "\n\t"                                                           \
    "orr     " b ", " b ", " t "\n\t"                                                           \
    BNN_SCR_NIB(a, t) BNN_SCR_NIB(b, t)                                                        \
    "add     " a ", " a ", " b ", lsl #1\n\t"
/* The loops' signature (one for all: bnn_bconv2d_scr_run_all picks them by pointer; PAIR9 does
 * not read len). */
#define BNN_SCR_SIGNATURE(name)                                                                \
    __attribute__((naked)) static void name(const uint32_t *buf BNN_ASM_ARG,                    \
                                            const uint32_t *scr BNN_ASM_ARG,                    \
                                            const uint32_t *end BNN_ASM_ARG,                    \
                                            int8_t *dst BNN_ASM_ARG, const int8_t *b BNN_ASM_ARG, \
                                            const int32_t *corr BNN_ASM_ARG,                    \
                                            int32_t len BNN_ASM_ARG)
/* One channel's store from its count c (a register other than r6-r10): the store words by
 * LDM (r6 O's low word, r7 its high word, r8 -M, r9 r + 1), x = c << (r + 1) (+ the
 * correction, `corr`), u = O + x * -M by SMLAL, the tie's half to even (u's low word 0, by
 * CBNZ: rare), SSAT, then (`add`) QADD8 with the residual's byte `b`, STRB. */
#define BNN_SCR_STORE(c, corr, add)                                                            \
    "ldmia   r1!, {r6, r7, r8, r9}\n\t"                                                        \
    "lsl     " c ", " c ", r9\n\t" corr                                                         \
    "smlal   r6, r7, " c ", r8\n\t"                                                            \
    "cbnz    r6, 5f\n\t"                                                                       \
    "bic     r7, r7, #1\n"                                                                      \
    "5:\n\t"                                                                                   \
    "ssat    r7, #8, r7\n\t" add                                                               \
    "strb    r7, [r3], #1\n\t"

/* PAIR9: r0 the window (9 words x | x << 16, fixed), r1 the slots, r2 their end, r3 dst,
 * r11 the residual, r12 the corrections. Per slot: three groups of 3 taps, each group's
 * 4-bit counts folded into the byte sums of r7 (<= 72 per byte; bytes 0 + 1 count channel 2p,
 * 2 + 3 channel 2p + 1), then the two stores: 96 instructions per pair of outputs
 * (+4 with the Add, +4 with the corrections). */
#define BNN_SCR_P9_GROUP(load, fold)                                                           \
    load "ldmia   r1!, {r8, r9, r10}\n\t"                                                      \
    "eor     r4, r4, r8\n\t"                                                                   \
    "eor     r5, r5, r9\n\t"                                                                   \
    "eor     r6, r6, r10\n\t" BNN_SCR_COUNT3("r4", "r5", "r6", "r8")                            \
    "and     r8, r4, #0x0F0F0F0F\n\t"                                                          \
    "and     r4, r4, #0xF0F0F0F0\n\t" fold
#define BNN_SCR_P9_CORR "ldr     r10, [r12], #4\n\tadd     r4, r4, r10\n\t"
#define BNN_SCR_P9_CORR5 "ldr     r10, [r12], #4\n\tadd     r5, r5, r10\n\t"
#define BNN_SCR_P9_ADD "ldrb    r10, [r11], #1\n\tqadd8   r7, r7, r10\n\t"
#define BNN_SCR_P9_FN(name, args, corr4, corr5, add)                                           \
    BNN_SCR_SIGNATURE(name)                                                                    \
    {                                                                                          \
        __asm__ volatile(                                                                      \
            "push    {r4-r11, lr}\n\t" args "1:\n\t"                                          \
            BNN_SCR_P9_GROUP("ldmia   r0, {r4, r5, r6}\n\t", "add     r7, r8, r4, lsr #4\n\t") \
            BNN_SCR_P9_GROUP("add     lr, r0, #12\n\tldmia   lr, {r4, r5, r6}\n\t",         \
                             "add     r8, r8, r4, lsr #4\n\tadd     r7, r7, r8\n\t")        \
            BNN_SCR_P9_GROUP("add     lr, r0, #24\n\tldmia   lr, {r4, r5, r6}\n\t",         \
                             "add     r8, r8, r4, lsr #4\n\tadd     r7, r7, r8\n\t")        \
            "add     r7, r7, r7, lsr #8\n\t"                                                   \
            "and     r4, r7, #0xFF\n\t"                                                        \
            "ubfx    r5, r7, #16, #8\n\t"                                                      \
            BNN_SCR_STORE("r4", corr4, add) BNN_SCR_STORE("r5", corr5, add)                     \
            "cmp     r1, r2\n\t"                                                               \
            "bne     1b\n\t"                                                                   \
            "pop     {r4-r11, pc}\n\t");                                                       \
    }
BNN_SCR_P9_FN(bnn_bconv2d_scr_p9, "", "", "", "")
BNN_SCR_P9_FN(bnn_bconv2d_scr_p9_corr, "ldr     r12, [sp, #40]\n\t", BNN_SCR_P9_CORR,
              BNN_SCR_P9_CORR5, "")
BNN_SCR_P9_FN(bnn_bconv2d_scr_p9_add, "ldr     r11, [sp, #36]\n\t", "", "", BNN_SCR_P9_ADD)
BNN_SCR_P9_FN(bnn_bconv2d_scr_p9_add_corr,
              "ldr     r11, [sp, #36]\n\tldr     r12, [sp, #40]\n\t", BNN_SCR_P9_CORR,
              BNN_SCR_P9_CORR5, BNN_SCR_P9_ADD)

/* RUN: r0 the window (moving), r2 its end (len words, the 7th argument), r1 the slots, r3 dst;
 * on the stack the slots' end and the window's start; lr 0. Per slot the counts of channel 2p
 * in r7 and of 2p + 1 in r11: each step's 4-bit counts folded into bytes (<= 24) and summed by
 * USADA8. The residual is read at dst + (b - dst) (r11, kept in the 5th argument's slot), the
 * corrections' pointer in the 6th argument's slot. 53 instructions per step of 3 words and
 * pair of outputs, then 22 per pair (+4 with the Add, +8 with the corrections). */
#define BNN_SCR_RUN_FILTER(acc)                                                                \
    "ldmia   r1!, {r8, r9, r10}\n\t"                                                           \
    "eor     r8, r8, r4\n\t"                                                                   \
    "eor     r9, r9, r5\n\t"                                                                   \
    "eor     r10, r10, r6\n\t" BNN_SCR_COUNT3("r8", "r9", "r10", "r12")                         \
    "and     r12, r8, #0x0F0F0F0F\n\t"                                                         \
    "and     r8, r8, #0xF0F0F0F0\n\t"                                                          \
    "add     r8, r12, r8, lsr #4\n\t"                                                          \
    "usada8  " acc ", r8, lr, " acc "\n\t"
#define BNN_SCR_RUN_CORR(c)                                                                    \
    "ldr     r12, [sp, #48]\n\t"                                                               \
    "ldr     r10, [r12], #4\n\t"                                                               \
    "str     r12, [sp, #48]\n\t"                                                               \
    "add     " c ", " c ", r10\n\t"
#define BNN_SCR_RUN_ADD "ldrb    r10, [r3, r11]\n\tqadd8   r7, r7, r10\n\t"
#define BNN_SCR_RUN_FN(name, args, corr4, corr5, add, add_slot)                                \
    BNN_SCR_SIGNATURE(name)                                                                    \
    {                                                                                          \
        __asm__ volatile("push    {r4-r11, lr}\n\t"                                             \
                         "sub     sp, sp, #8\n\t"                                               \
                         "str     r2, [sp, #0]\n\t"                                             \
                         "ldr     r12, [sp, #52]\n\t"                                           \
                         "add     r2, r0, r12, lsl #2\n\t"                                      \
                         "str     r0, [sp, #4]\n\t"                                             \
                         "mov     lr, #0\n\t" args "1:\n\t"                                    \
                         "ldr     r0, [sp, #4]\n\t"                                             \
                         "mov     r7, #0\n\t"                                                   \
                         "mov     r11, #0\n"                                                     \
                         "2:\n\t"                                                               \
                         "ldmia   r0!, {r4, r5, r6}\n\t" BNN_SCR_RUN_FILTER("r7")               \
                         BNN_SCR_RUN_FILTER("r11")                                             \
                         "cmp     r0, r2\n\t"                                                   \
                         "bne     2b\n\t"                                                       \
                         "mov     r4, r7\n\t"                                                   \
                         "mov     r5, r11\n\t" add_slot                                         \
                         BNN_SCR_STORE("r4", corr4, add) BNN_SCR_STORE("r5", corr5, add)       \
                         "ldr     r12, [sp, #0]\n\t"                                            \
                         "cmp     r1, r12\n\t"                                                  \
                         "bne     1b\n\t"                                                       \
                         "add     sp, sp, #8\n\t"                                               \
                         "pop     {r4-r11, pc}\n\t");                                           \
    }
#define BNN_SCR_RUN_DELTA "ldr     r12, [sp, #44]\n\tsub     r12, r12, r3\n\tstr     r12, [sp, #44]\n\t"
BNN_SCR_RUN_FN(bnn_bconv2d_scr_run, "", "", "", "", "")
BNN_SCR_RUN_FN(bnn_bconv2d_scr_run_corr, "", BNN_SCR_RUN_CORR("r4"), BNN_SCR_RUN_CORR("r5"), "",
               "")
BNN_SCR_RUN_FN(bnn_bconv2d_scr_run_add, BNN_SCR_RUN_DELTA, "", "", BNN_SCR_RUN_ADD,
               "ldr     r11, [sp, #44]\n\t")
BNN_SCR_RUN_FN(bnn_bconv2d_scr_run_add_corr, BNN_SCR_RUN_DELTA, BNN_SCR_RUN_CORR("r4"),
               BNN_SCR_RUN_CORR("r5"), BNN_SCR_RUN_ADD, "ldr     r11, [sp, #44]\n\t")
#undef BNN_SCR_RUN_DELTA
#undef BNN_SCR_RUN_FN
#undef BNN_SCR_RUN_ADD
#undef BNN_SCR_RUN_CORR
#undef BNN_SCR_RUN_FILTER
#undef BNN_SCR_P9_FN
#undef BNN_SCR_P9_ADD
#undef BNN_SCR_P9_CORR5
#undef BNN_SCR_P9_CORR
#undef BNN_SCR_P9_GROUP
#undef BNN_SCR_STORE
#undef BNN_SCR_SIGNATURE
#undef BNN_SCR_COUNT3
#undef BNN_SCR_NIB
#undef BNN_ASM_ARG
#endif

/* One output pixel of the scratch path, its window in buf: every pair of channels by the
 * assembly loop `fn` (or bnn_bconv2d_scr_slot), the odd last channel by bnn_bconv2d_scr_slot;
 * with a general Add (`gen`), the int8 outputs go to tmp first, then bnn_add_s8_run adds them
 * to b into dst. */
#if BNN_BCONV2D_RUN2_ASM
typedef void (*bnn_bconv2d_scr_fn)(const uint32_t *, const uint32_t *, const uint32_t *, int8_t *,
                                   const int8_t *, const int32_t *, int32_t);
#else
typedef int bnn_bconv2d_scr_fn; /* (unused) */
#endif
BNN_ALWAYS_INLINE void bnn_bconv2d_scr_pixel(const bnn_bconv2d_geom_t *g,
                                             const bnn_bconv2d_scr_t *s, const uint32_t *scr,
                                             bnn_bconv2d_scr_fn fn, const uint32_t *buf,
                                             int8_t *out, const int8_t *residual,
                                             const int32_t *corr,
                                             const bnn_add_s8_prepared_t *gen, int8_t *tmp)
{
    const int32_t pairs = g->o / 2;
    int8_t *const dst = gen != NULL ? tmp : out;
    const int8_t *const b = gen != NULL ? (const int8_t *)0 : residual;
#if BNN_BCONV2D_RUN2_ASM
    if (pairs > 0) {
        fn(buf, scr, scr + (size_t)pairs * (size_t)s->slot_words, dst, b, corr, s->len);
    }
#else
    int32_t k;
    (void)fn;
    for (k = 0; k < pairs; ++k) {
        bnn_bconv2d_scr_slot(s, buf, scr, k, 1, dst, b, corr);
    }
#endif
    if (g->o % 2 != 0) {
        bnn_bconv2d_scr_slot(s, buf, scr, pairs, 0, dst, b, corr);
    }
    if (gen != NULL) {
        bnn_add_s8_run(gen, g->o, tmp, residual, out);
    }
}

/* The scratch path for the whole call (bnn_bconv2d_scr_prepare done), per output pixel:
 *  - a window inside the input (columns [xa, xb) of the rows whose window rows are inside):
 *    its rows copied to buf (x | x << 16 for PAIR9);
 *  - any other: gathered with its padded taps as zero words, and with zero padding the
 *    corrections of its taps (two sets kept in the scratch, made again only for taps that
 *    neither set is for: a row's left and right border pixels then share them);
 *  - RUN: zero words up to len;
 * then bnn_bconv2d_scr_pixel (with the residual: the plain-sum Add in the loops, or a general
 * one, `gen`, after them). */
BNN_ALWAYS_INLINE void bnn_bconv2d_scr_run_all(const bnn_bconv2d_geom_t *g,
                                               const bnn_bconv2d_scr_t *s, uint32_t *scr,
                                               const uint32_t *in, const int8_t *residual,
                                               const bnn_add_s8_prepared_t *gen, int8_t *out)
{
    const int plain = residual != NULL && gen == NULL; /* the plain sum in the loops */
    int8_t *const tmp = (int8_t *)(void *)(scr + s->tmp);
    uint32_t buf[BNN_BCONV2D_WINDOW_WORDS];
    int32_t *const corr_sets = (int32_t *)(void *)(scr + s->corr);
    const size_t in_row = (size_t)g->w * (size_t)g->nw;
    const size_t step = (size_t)g->sw * (size_t)g->nw;
    const int32_t row_words = g->kw * g->nw;
    const int dup = s->form == BNN_BCONV2D_SCR_PAIR9;
    const int32_t xa = (g->pl + g->sw - 1) / g->sw;
    int32_t xb = g->w - g->kw + g->pl < 0 ? 0 : (g->w - g->kw + g->pl) / g->sw + 1;
    const int8_t *b = residual;
    int8_t *dst = out;
    int32_t made[2] = {-1, -1}; /* the taps of each set of corrections */
    int32_t older = 0;           /* the set to make next */
    int32_t y, x, k;
    bnn_bconv2d_scr_fn inner, border; /* without and with the corrections */
#if BNN_BCONV2D_RUN2_ASM
    if (dup) {
        inner = plain ? bnn_bconv2d_scr_p9_add : bnn_bconv2d_scr_p9;
        border = plain ? bnn_bconv2d_scr_p9_add_corr : bnn_bconv2d_scr_p9_corr;
    } else {
        inner = plain ? bnn_bconv2d_scr_run_add : bnn_bconv2d_scr_run;
        border = plain ? bnn_bconv2d_scr_run_add_corr : bnn_bconv2d_scr_run_corr;
    }
#else
    inner = border = 0;
    (void)plain;
#endif
    xb = xb > g->ow ? g->ow : (xb < xa ? xa : xb);
    for (k = g->filter_words; k < s->len; ++k) {
        buf[k] = 0; /* RUN: the padding words (the copies write the first taps * NW) */
    }
    for (y = 0; y < g->oh; ++y) {
        bnn_bconv2d_window_t win;
        const int32_t iy0 = y * g->sh - g->pt;
        bnn_valid_taps(iy0, g->h, g->kh, 1, &win.i_lo, &win.i_hi);
        x = 0;
        while (x < g->ow) {
            if (x == xa && win.i_lo == 0 && win.i_hi == g->kh) { /* windows inside the input */
                const uint32_t *src =
                    in + ((size_t)iy0 * (size_t)g->w + (size_t)(x * g->sw - g->pl)) *
                             (size_t)g->nw;
                for (; x < xb; ++x, src += step, dst += g->o, b = b != NULL ? b + g->o : b) {
                    if (dup) { /* (two copies: each inlined with its constant) */
                        bnn_bconv2d_copy_rows(src, in_row, 3, 3, 1, buf);
                    } else {
                        bnn_bconv2d_copy_rows(src, in_row, g->kh, row_words, 0, buf);
                    }
                    bnn_bconv2d_scr_pixel(g, s, scr, inner, buf, dst, b, (const int32_t *)0, gen,
                                          tmp);
                }
                continue;
            }
            {
                const int32_t ix0 = x * g->sw - g->pl;
                const int32_t *corr = (const int32_t *)0;
                bnn_valid_taps(ix0, g->w, g->kw, 1, &win.j_lo, &win.j_hi);
                win.full = win.i_lo == 0 && win.i_hi == g->kh && win.j_lo == 0 &&
                           win.j_hi == g->kw;
                win.x0 = in + ((size_t)(iy0 + win.i_lo) * (size_t)g->w +
                               (size_t)(ix0 + win.j_lo)) *
                                  (size_t)g->nw;
                bnn_bconv2d_gather(g, &win, dup, buf);
                if (!win.full && g->pad_value == 0) {
                    const int32_t taps =
                        win.i_lo | win.i_hi << 6 | win.j_lo << 12 | win.j_hi << 18;
                    const int32_t set = taps == made[0] ? 0 : (taps == made[1] ? 1 : older);
                    corr = corr_sets + (size_t)set * (size_t)g->o;
                    if (made[set] != taps) {
                        bnn_bconv2d_scr_corr(g, &win, s, scr, corr_sets + (size_t)set * (size_t)g->o);
                        made[set] = taps;
                        older = 1 - set;
                    }
                }
                bnn_bconv2d_scr_pixel(g, s, scr, corr != NULL ? border : inner, buf, dst, b,
                                      corr, gen, tmp);
                ++x;
                dst += g->o;
                b = b != NULL ? b + g->o : b;
            }
        }
    }
}
#endif /* BNN_BCONV2D_FAST */

/* ---- entry point ------------------------------------------------------------------------ */


/* The call without the scratch path, for both entry points (inlined in the two wrappers
 * below: without the Add the compiler drops its code). */
BNN_ALWAYS_INLINE bnn_status_t bnn_bconv2d_run(const bnn_conv_params_t *params,
                                                const bnn_output_t *output,
                                                const bnn_add_params_t *add,
                                                const int8_t *residual,
                                                const bnn_dims_t *in_dims, const uint32_t *in,
                                                const bnn_dims_t *filter_dims,
                                                const uint32_t *filter,
                                                const bnn_dims_t *out_dims, void *out)
{
    bnn_bconv2d_geom_t g;
    bnn_bconv2d_geom_t g_one; /* the same geometry with one padding (BNN_OUT_LCE) */
    bnn_bconv2d_sum_t sum;    /* bnn_bconv2d_add's Add */
    int32_t fast = 0;         /* its bnn_bconv2d_sum_asm variant, 0: none */
    int32_t acc[BNN_BCONV2D_BLOCK];
    int32_t acc_one[BNN_BCONV2D_BLOCK];
    const uint32_t *fstream = (const uint32_t *)0; /* the filters' bit streams, if made */
    const uint32_t *fpairs = (const uint32_t *)0;  /* the filter pairs (C <= 16), if made */
    int32_t swords = 0;
#if BNN_BCONV2D_FAST
    uint32_t fstream_buf[BNN_BCONV2D_STREAM_WORDS];
#endif
    int32_t y;
    int32_t x;
    int32_t o0;
    if (bnn_bconv2d_check(params, output, in_dims, in, filter_dims, filter, out_dims, out, &g) !=
        BNN_OK) {
        return BNN_ERROR_ARGUMENT;
    }
    g_one = g;
    g_one.pad_value = 1;
    if (add != NULL) {
        bnn_add_s8_prepare(add, &sum.add);
        sum.residual = residual;
        sum.out = (int8_t *)out;
#if BNN_AFFINE_FAST
        if (add->kind == BNN_OUT_AFFINE) {
            fast = bnn_bconv2d_sum_variant(output, add, g.o);
        }
#endif
    }
#if BNN_BCONV2D_FAST
    /* 16 < C < 32: every filter as one bit stream (KH * KW taps of C bits), made once per
     * call (C <= 16 takes the two-channels-per-word path instead, which is faster there) */
    swords = (int32_t)(((uint32_t)g.taps * (uint32_t)g.c + 31u) / 32u);
    if (g.nw == 1 && g.c > 16 && g.c < 32 && g.filter_words <= BNN_BCONV2D_WINDOW_WORDS &&
        (int64_t)g.o * swords <= BNN_BCONV2D_STREAM_WORDS) {
        for (o0 = 0; o0 < g.o; ++o0) {
            bnn_bconv2d_stream(filter + (size_t)o0 * (size_t)g.filter_words, g.taps, g.c,
                               fstream_buf + (size_t)o0 * (size_t)swords, swords);
        }
        fstream = fstream_buf;
    }
    /* C <= 16: the filters of channels 2p and 2p + 1 as one word per tap, w1 | w2 << 16, made
     * once per call (the window's words then pair with both at once) */
    if (g.nw == 1 && g.c <= 16 && g.taps <= 30 &&
        (int64_t)(g.o / 2) * g.taps <= BNN_BCONV2D_STREAM_WORDS) {
        int32_t t;
        for (o0 = 0; o0 + 1 < g.o; o0 += 2) {
            const uint32_t *w1 = filter + (size_t)o0 * (size_t)g.filter_words;
            for (t = 0; t < g.taps; ++t) {
                fstream_buf[(size_t)(o0 / 2) * (size_t)g.taps + (size_t)t] =
                    w1[t] | (w1[t + g.filter_words] << 16);
            }
        }
        fpairs = fstream_buf;
    }
#endif
    for (y = 0; y < g.oh; ++y) {
        for (x = 0; x < g.ow; ++x) {
            int32_t pixel = y * g.ow + x;
            int32_t iy0 = y * g.sh - g.pt;
            int32_t ix0 = x * g.sw - g.pl;
            int border = iy0 < 0 || ix0 < 0 || iy0 + g.kh > g.h || ix0 + g.kw > g.w;
            for (o0 = 0; o0 < g.o; o0 += BNN_BCONV2D_BLOCK) {
                int32_t n = g.o - o0 < BNN_BCONV2D_BLOCK ? g.o - o0 : BNN_BCONV2D_BLOCK;
                bnn_bconv2d_pixel(&g, in, filter, fstream, fpairs, swords, y, x, o0, n, acc);
                if (add != NULL) {
                    bnn_bconv2d_emit_sum(output, &sum, fast,
                                         (size_t)pixel * (size_t)g.o + (size_t)o0, o0, n, acc);
                } else if (output->kind != BNN_OUT_LCE) {
                    bnn_bconv2d_emit(&g, output, pixel, o0, n, acc, out);
                } else if (border && g.pad_value == 0) {
                    bnn_bconv2d_pixel(&g_one, in, filter, fstream, fpairs, swords, y, x, o0, n,
                                      acc_one);
                    bnn_bconv2d_emit_lce(&g, output, pixel, o0, n, acc_one, acc, out);
                } else {
                    bnn_bconv2d_emit_lce(&g, output, pixel, o0, n, acc, (const int32_t *)0, out);
                }
            }
        }
    }
    return BNN_OK;
}

/* bnn_bconv2d_run in frames of their own, so that the scratch path's (bnn_bconv2d_scr)
 * never stacks on top of their buffers. */
BNN_NOINLINE bnn_status_t bnn_bconv2d_run_conv(const bnn_conv_params_t *params,
                                               const bnn_output_t *output,
                                               const bnn_dims_t *in_dims, const uint32_t *in,
                                               const bnn_dims_t *filter_dims,
                                               const uint32_t *filter,
                                               const bnn_dims_t *out_dims, void *out)
{
    return bnn_bconv2d_run(params, output, (const bnn_add_params_t *)0, (const int8_t *)0,
                           in_dims, in, filter_dims, filter, out_dims, out);
}

BNN_NOINLINE bnn_status_t bnn_bconv2d_run_add(const bnn_conv_params_t *params,
                                              const bnn_output_t *output,
                                              const bnn_add_params_t *add,
                                              const int8_t *residual, const bnn_dims_t *in_dims,
                                              const uint32_t *in, const bnn_dims_t *filter_dims,
                                              const uint32_t *filter, const bnn_dims_t *out_dims,
                                              void *out)
{
    if (add == NULL || output->kind != BNN_OUT_AFFINE) { /* (checked by the caller: this
                                                           * tells the compiler) */
        return BNN_ERROR_ARGUMENT;
    }
    return bnn_bconv2d_run(params, output, add, residual, in_dims, in, filter_dims, filter,
                           out_dims, out);
}

/* The scratch path where it applies (bnn_bconv2d_scr_prepare): 1 if it made the output, 0 if
 * not (bnn_bconv2d_run then does), BNN_ERROR_ARGUMENT for arguments bnn_bconv2d_check
 * refuses. Inlined in two wrappers (without the Add, the compiler drops its code). */
BNN_ALWAYS_INLINE int32_t bnn_bconv2d_scr(const bnn_context_t *ctx,
                                          const bnn_conv_params_t *params,
                                          const bnn_output_t *output,
                                          const bnn_add_params_t *add, const int8_t *residual,
                                          const bnn_dims_t *in_dims, const uint32_t *in,
                                          const bnn_dims_t *filter_dims, const uint32_t *filter,
                                          const bnn_dims_t *out_dims, void *out)
{
    bnn_bconv2d_geom_t g;
#if BNN_BCONV2D_FAST
    bnn_bconv2d_scr_t s;
    bnn_add_s8_prepared_t prepared; /* a general Add's constants */
#endif
    if (bnn_bconv2d_check(params, output, in_dims, in, filter_dims, filter, out_dims, out, &g) !=
        BNN_OK) {
        return BNN_ERROR_ARGUMENT;
    }
#if BNN_BCONV2D_FAST
    if (bnn_bconv2d_scr_prepare(&g, ctx, output, filter, &s)) {
        const bnn_add_s8_prepared_t *gen = (const bnn_add_s8_prepared_t *)0;
        if (add != NULL && !bnn_add_is_plain_sum(add)) {
            bnn_add_s8_prepare(add, &prepared);
            gen = &prepared;
        }
        bnn_bconv2d_scr_run_all(&g, &s, (uint32_t *)ctx->buf, in, residual, gen, (int8_t *)out);
        return 1;
    }
#else
    (void)ctx, (void)add, (void)residual;
#endif
    return 0;
}

BNN_NOINLINE int32_t bnn_bconv2d_scr_conv(const bnn_context_t *ctx,
                                          const bnn_conv_params_t *params,
                                          const bnn_output_t *output,
                                          const bnn_dims_t *in_dims, const uint32_t *in,
                                          const bnn_dims_t *filter_dims, const uint32_t *filter,
                                          const bnn_dims_t *out_dims, void *out)
{
    return bnn_bconv2d_scr(ctx, params, output, (const bnn_add_params_t *)0, (const int8_t *)0,
                           in_dims, in, filter_dims, filter, out_dims, out);
}

BNN_NOINLINE int32_t bnn_bconv2d_scr_add(const bnn_context_t *ctx,
                                         const bnn_conv_params_t *params,
                                         const bnn_output_t *output, const bnn_add_params_t *add,
                                         const int8_t *residual, const bnn_dims_t *in_dims,
                                         const uint32_t *in, const bnn_dims_t *filter_dims,
                                         const uint32_t *filter, const bnn_dims_t *out_dims,
                                         void *out)
{
    return bnn_bconv2d_scr(ctx, params, output, add, residual, in_dims, in, filter_dims, filter,
                           out_dims, out);
}

bnn_status_t bnn_bconv2d(const bnn_context_t *ctx, const bnn_conv_params_t *params,
                         const bnn_output_t *output, const bnn_dims_t *in_dims,
                         const uint32_t *in, const bnn_dims_t *filter_dims,
                         const uint32_t *filter, const bnn_dims_t *out_dims, void *out)
{
    const int32_t done =
        bnn_bconv2d_scr_conv(ctx, params, output, in_dims, in, filter_dims, filter, out_dims, out);
    if (done != 0) {
        return done > 0 ? BNN_OK : BNN_ERROR_ARGUMENT;
    }
    return bnn_bconv2d_run_conv(params, output, in_dims, in, filter_dims, filter, out_dims, out);
}

bnn_status_t bnn_bconv2d_add(const bnn_context_t *ctx, const bnn_conv_params_t *params,
                             const bnn_output_t *output, const bnn_add_params_t *add,
                             const bnn_dims_t *in_dims, const uint32_t *in,
                             const bnn_dims_t *filter_dims, const uint32_t *filter,
                             const bnn_dims_t *out_dims, const int8_t *residual, int8_t *out)
{
    int32_t done;
    if (add == NULL || output == NULL || output->kind != BNN_OUT_AFFINE || residual == NULL ||
        !bnn_add_params_ok(add)) {
        return BNN_ERROR_ARGUMENT;
    }
    done = bnn_bconv2d_scr_add(ctx, params, output, add, residual, in_dims, in, filter_dims,
                               filter, out_dims, out);
    if (done != 0) {
        return done > 0 ? BNN_OK : BNN_ERROR_ARGUMENT;
    }
    return bnn_bconv2d_run_add(params, output, add, residual, in_dims, in, filter_dims, filter,
                               out_dims, out);
}
