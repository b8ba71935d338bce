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
 * Cortex-M7 (__ARM_FEATURE_DSP, unless BNN_FORCE_PLAIN_C; optimized builds): 4 output channels
 * at a time in one assembly loop (bnn_dense_rows4_asm), each group of 4 inputs loaded and
 * expanded (x - zp by SXTAB16) once for the 4 filter rows (SXTB16 + SMLAD each), the last
 * K % 4 inputs by the plain sum; the remaining channels one at a time with bnn_dot_s8 (4
 * elements per step). The same products modulo 2^32: bit-exact with the
 * plain sum.
 */
#include "bnn_kernels.h"
#include "bnn_requant.h"

#if BNN_USE_DSP && defined(__GNUC__) && defined(__OPTIMIZE__)
#define BNN_DENSE_ASM 1
/* One filter row's word at `load` against the expanded inputs (r5: x0, x2; r12: x1, x3) into
 * its sum: SXTB16 twice, two SMLADs. */
#define BNN_DENSE_ROW(load, acc)                                                               \
    "ldr     r7, " load "\n\t"                                                                  \
    "sxtb16  r3, r7\n\t"                                                                        \
    "sxtb16  r7, r7, ror #8\n\t"                                                                \
    "smlad   " acc ", r5, r3, " acc "\n\t"                                                      \
    "smlad   " acc ", r12, r7, " acc "\n\t"
/* acc[r] = sum_{k < n & ~3} w[r * n + k] * (x[k] - zp) modulo 2^32 for the 4 filter rows r at
 * w, n >= 4; io[0] holds -zp in both halfwords on entry and the 4 sums on return. Per 4 inputs:
 * one load and 2 SXTAB16 (x - zp), then per row one load, 2 SXTB16 and 2 SMLADs: 25
 * instructions for 16 MACs (the C loop: 31, with spills). A naked function (the arguments in
 * r0-r3, AAPCS): the assembly saves and restores the registers it uses, so that it needs
 * nothing of the compiler's register allocation. The same products and sums as bnn_dot_s8. */
#define BNN_ASM_ARG __attribute__((unused)) /* read by the assembly, not by C */
__attribute__((naked)) static void bnn_dense_rows4_asm(const int8_t *x BNN_ASM_ARG,
                                                       const int8_t *w BNN_ASM_ARG,
                                                       int32_t n BNN_ASM_ARG,
                                                       int32_t *io BNN_ASM_ARG)
{
    __asm__ volatile("push    {r3-r11, lr}\n\t"
                     "ldr     lr, [r3]\n\t"
                     "bic     r6, r2, #3\n\t"
                     "add     r6, r0, r6\n\t"  /* the inputs' end */
                     "add     r4, r1, r2, lsl #1\n\t" /* rows 2 and 3 */
                     "mov     r8, #0\n\t"
                     "mov     r9, #0\n\t"
                     "mov     r10, #0\n\t"
                     "mov     r11, #0\n"
                     "1:\n\t"
                     "ldr     r5, [r0], #4\n\t"
                     "sxtab16 r12, lr, r5, ror #8\n\t"
                     "sxtab16 r5, lr, r5\n\t" BNN_DENSE_ROW("[r1, r2]", "r9")
                     BNN_DENSE_ROW("[r1], #4", "r8") BNN_DENSE_ROW("[r4, r2]", "r11")
                     BNN_DENSE_ROW("[r4], #4", "r10")
                     "cmp     r0, r6\n\t"
                     "bne     1b\n\t"
                     "ldr     r3, [sp]\n\t"
                     "stmia   r3, {r8, r9, r10, r11}\n\t"
                     "pop     {r3-r11, pc}\n\t");
}
#undef BNN_DENSE_ROW
#undef BNN_ASM_ARG

/* acc[r] = sum_{k < n} w[r * n + k] * (x[k] - zp) modulo 2^32 for the 4 filter rows r at w. */
static void bnn_dense_rows4(const int8_t *x, const int8_t *w, int32_t n, int32_t zp,
                            uint32_t acc[4])
{
    int32_t io[4] = {0, 0, 0, 0};
    int32_t k = 0, r;
    if (n >= 4) {
        io[0] = bnn_neg_zp_pair(zp);
        bnn_dense_rows4_asm(x, w, n, io);
        k = n & ~3;
    }
    for (r = 0; r < 4; ++r) {
        acc[r] = (uint32_t)io[r];
    }
    for (; k < n; ++k) {
        const int32_t xk = x[k] - zp;
        for (r = 0; r < 4; ++r) {
            acc[r] += (uint32_t)(w[(size_t)(r * n + k)] * xk);
        }
    }
}
#else
#define BNN_DENSE_ASM 0
#endif

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
    o = 0;
#if BNN_DENSE_ASM
    for (; o + 4 <= out_features; o += 4) {
        uint32_t acc[4];
        int32_t r;
        bnn_dense_rows4(in, filter + (size_t)o * (size_t)in_features, in_features,
                        params->input_zero_point, acc);
        for (r = 0; r < 4; ++r) {
            bnn_output_store(output, o + r, bnn_s32_from_u32(acc[r]), out, o + r);
        }
    }
#endif
    for (; o < out_features; ++o) {
        uint32_t acc = bnn_dot_s8(0u, in, filter + (size_t)o * (size_t)in_features, in_features,
                                  params->input_zero_point);
        bnn_output_store(output, o, bnn_s32_from_u32(acc), out, o);
    }
    return BNN_OK;
}
