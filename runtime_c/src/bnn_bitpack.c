/*
 * bnn_bitpack_s8 / bnn_bitpack_f32: Bitpack, int8 or float32 rows -> packed binary rows
 * (converters/reference.py `bitpack_op`, converters/binary_reference.py `bitpack`, docs/ir.md).
 *
 * For row r < rows and channel c < channels, with x = in[r * channels + c]:
 *
 *   bnn_bitpack_s8:  bit = 1 if x < zero_point else 0     (int32 comparison; any zero_point:
 *                    zero_point <= -128 gives all 0, zero_point >= 128 all 1)
 *   bnn_bitpack_f32: bit = 1 if x < 0.0f else 0           (IEEE float comparison, not the
 *                    sign bit: +0.0 and -0.0 give 0, -inf gives 1, +inf 0, and every NaN
 *                    gives 0 because NaN < 0 is false, as numpy's x < 0 in the reference;
 *                    a negative subnormal gives 1, unless the FPU flushes subnormals to zero:
 *                    keep FPSCR.FZ = 0, its reset value, and do not build with -ffast-math)
 *
 * stored in out[r * BNN_WORDS(channels) + c / 32] at bit c % 32 (LSB first); bit 1 means -1.
 * The bits c >= channels of a row's last word are 0. Every word of the rows is written.
 *
 * Arguments: in and out not NULL, rows >= 0 (0 writes nothing), channels >= 1, and
 * rows * channels <= INT32_MAX; otherwise BNN_ERROR_ARGUMENT with nothing written. The input
 * needs no particular alignment beyond its element type; out is uint32_t words.
 *
 * Cortex-M7 (__ARM_FEATURE_DSP, little-endian, unless BNN_FORCE_PLAIN_C), int8 only, for
 * zero_point in [-128, 127]: four int8 values per step, loaded as one word (memcpy: the
 * unaligned LDR of the M7). SSUB8 subtracts the zero point from each byte and sets the GE flag
 * of byte k exactly when x_k - zero_point >= 0 (the flag is computed on the exact difference,
 * before any wrap), SEL turns that into the byte 0 (GE) or 1 (x_k < zero_point), and one
 * multiply by 0x01020408 gathers the four 0/1 bytes into bits 24..27 (byte k lands on bit
 * 24 + k; no partial sum carries). Same bits as the plain loop. BNN_TEST_M7_PATH compiles the
 * same loop on any little-endian machine, with portable C standing in for SSUB8 + SEL (the
 * tests use it to check the loop structure on the host).
 */
#include <string.h>

#include "bnn_kernels.h"

#if !defined(BNN_FORCE_PLAIN_C) && defined(__ARM_FEATURE_DSP) && !defined(__ARM_BIG_ENDIAN)
#define BNN_BITPACK_FAST 1
#define BNN_BITPACK_DSP 1
#include <arm_acle.h>
#elif !defined(BNN_FORCE_PLAIN_C) && defined(BNN_TEST_M7_PATH) &&                               \
    defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__) &&                               \
    __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define BNN_BITPACK_FAST 1
#define BNN_BITPACK_DSP 0
#else
#define BNN_BITPACK_FAST 0
#define BNN_BITPACK_DSP 0
#endif

/* Words of a row of `channels` (>= 1) values, without overflowing near INT32_MAX. */
static int32_t bnn_bitpack_words(int32_t channels)
{
    return (int32_t)(((uint32_t)channels + 31u) / 32u);
}

static int bnn_bitpack_args_ok(int32_t rows, int32_t channels, const void *in, const void *out)
{
    return in != NULL && out != NULL && rows >= 0 && channels >= 1 &&
           (int64_t)rows * channels <= INT32_MAX;
}

/* Bits k < n (n <= 32) of one output word: bit k = x[k] < zero_point. */
static uint32_t bnn_bitpack_word_s8(const int8_t *x, int32_t n, int32_t zero_point)
{
    uint32_t bits = 0;
    int32_t k;
    for (k = 0; k < n; ++k) {
        bits |= (uint32_t)(x[k] < zero_point) << k;
    }
    return bits;
}

#if BNN_BITPACK_FAST
/* 4-bit mask: bit k = (int8 byte k of x4) < (int8 byte k of zp4), bytes little-endian. */
static uint32_t bnn_bitpack_lt4(uint32_t x4, uint32_t zp4)
{
    uint32_t ones; /* byte k = 1 where x_k < zp_k, else 0 */
#if BNN_BITPACK_DSP
    int8x4_t xs;
    int8x4_t zs;
    memcpy(&xs, &x4, 4); /* the same bits as int8x4_t (int32_t), no value conversion */
    memcpy(&zs, &zp4, 4);
    (void)__ssub8(xs, zs);         /* GE[k] = (x_k - zp_k >= 0) */
    ones = __sel(0u, 0x01010101u); /* byte k: GE[k] ? 0 : 1 */
#else
    int32_t k;
    ones = 0;
    for (k = 0; k < 4; ++k) {
        /* int8 values as their offset-binary bytes (x + 128): same order as the int8 values */
        uint32_t xb = ((x4 >> (8 * k)) & 0xFFu) ^ 0x80u;
        uint32_t zb = ((zp4 >> (8 * k)) & 0xFFu) ^ 0x80u;
        ones |= (uint32_t)(xb < zb) << (8 * k);
    }
#endif
    /* byte k (bit 8k) times 2^(3-j) << 8j lands on bit 24 + k when k + j = 3 */
    return (ones * 0x01020408u) >> 24;
}

static uint32_t bnn_bitpack_word_s8_fast(const int8_t *x, int32_t n, int32_t zero_point,
                                         uint32_t zp4)
{
    uint32_t bits = 0;
    int32_t k = 0;
    if (n == 32) { /* a full word: eight steps with constant shifts */
        uint32_t x4[8];
        memcpy(x4, x, 32);
        return bnn_bitpack_lt4(x4[0], zp4) | bnn_bitpack_lt4(x4[1], zp4) << 4 |
               bnn_bitpack_lt4(x4[2], zp4) << 8 | bnn_bitpack_lt4(x4[3], zp4) << 12 |
               bnn_bitpack_lt4(x4[4], zp4) << 16 | bnn_bitpack_lt4(x4[5], zp4) << 20 |
               bnn_bitpack_lt4(x4[6], zp4) << 24 | bnn_bitpack_lt4(x4[7], zp4) << 28;
    }
    for (; k + 4 <= n; k += 4) {
        uint32_t x4;
        memcpy(&x4, x + k, 4);
        bits |= bnn_bitpack_lt4(x4, zp4) << k;
    }
    for (; k < n; ++k) {
        bits |= (uint32_t)(x[k] < zero_point) << k;
    }
    return bits;
}
#endif

bnn_status_t bnn_bitpack_s8(int32_t rows, int32_t channels, int32_t zero_point, const int8_t *in,
                            uint32_t *out)
{
    int32_t words;
    int32_t r;
    int32_t wd;
#if BNN_BITPACK_FAST
    int fast = zero_point >= -128 && zero_point <= 127;
    /* the int8 zero point's byte in all four lanes */
    uint32_t zp4 = ((uint32_t)zero_point & 0xFFu) * 0x01010101u;
#endif
    if (!bnn_bitpack_args_ok(rows, channels, in, out)) {
        return BNN_ERROR_ARGUMENT;
    }
    words = bnn_bitpack_words(channels);
    for (r = 0; r < rows; ++r) {
        const int8_t *x = in + (size_t)r * (size_t)channels;
        uint32_t *dst = out + (size_t)r * (size_t)words;
        for (wd = 0; wd < words; ++wd) {
            int32_t n = channels - 32 * wd;
            if (n > 32) {
                n = 32;
            }
#if BNN_BITPACK_FAST
            if (fast) {
                dst[wd] = bnn_bitpack_word_s8_fast(x + 32 * wd, n, zero_point, zp4);
                continue;
            }
#endif
            dst[wd] = bnn_bitpack_word_s8(x + 32 * wd, n, zero_point);
        }
    }
    return BNN_OK;
}

bnn_status_t bnn_bitpack_f32(int32_t rows, int32_t channels, const float *in, uint32_t *out)
{
    int32_t words;
    int32_t r;
    int32_t wd;
    int32_t k;
    if (!bnn_bitpack_args_ok(rows, channels, in, out)) {
        return BNN_ERROR_ARGUMENT;
    }
    words = bnn_bitpack_words(channels);
    for (r = 0; r < rows; ++r) {
        const float *x = in + (size_t)r * (size_t)channels;
        uint32_t *dst = out + (size_t)r * (size_t)words;
        for (wd = 0; wd < words; ++wd) {
            uint32_t bits = 0;
            int32_t n = channels - 32 * wd;
            if (n > 32) {
                n = 32;
            }
            for (k = 0; k < n; ++k) {
                bits |= (uint32_t)(x[32 * wd + k] < 0.0f) << k;
            }
            dst[wd] = bits;
        }
    }
    return BNN_OK;
}
