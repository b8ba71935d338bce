/*
 * Small functions that exercise validation/emulator.py (tests/test_emulator.py): the calling
 * convention (ints, floats, arrays, structs, arguments on the stack), exact instruction counts,
 * faults, timeouts and stack use. Not part of the runtime. Compiles for the host too (the
 * ARM-only functions then return -1), so the same calls can be checked on both.
 */
#include <stdint.h>

#include "bnn_kernels.h"

int32_t fx_add(int32_t a, int32_t b);
int32_t fx_sum_i8(int32_t n, const int8_t *x);
int32_t fx_scale_f32(int32_t n, const float *x, float scale, float offset, float *out);
int32_t fx_many_args(int32_t a, int32_t b, int32_t c, int32_t d, int32_t e, int32_t f,
                     int32_t g);
int32_t fx_mixed(int32_t a, float x, const int32_t *p, float y, int32_t b, int32_t c, int32_t d,
                 float z, int32_t e);
int32_t fx_floats_on_stack(float f0, float f1, float f2, float f3, float f4, float f5, float f6,
                           float f7, float f8, float f9, float f10, float f11, float f12,
                           float f13, float f14, float f15, float f16, int32_t k, float f17);
int32_t fx_dims_volume(const bnn_dims_t *d);
int32_t fx_add_params(const bnn_add_params_t *p, int64_t *out);
int32_t fx_output(const bnn_output_t *o, int32_t channel, int32_t *out);
int32_t fx_context(const bnn_context_t *ctx);
int32_t fx_loop(int32_t n);
int32_t fx_misaligned_ldrd(const uint8_t *p, uint32_t *out);
int32_t fx_forever(int32_t n);
int32_t fx_udf(int32_t n);
int32_t fx_null_read(int32_t n);
int32_t fx_stack_use(int32_t n);
int32_t fx_layer_a(int32_t n);

int32_t fx_add(int32_t a, int32_t b)
{
    return a + b;
}

int32_t fx_sum_i8(int32_t n, const int8_t *x)
{
    int32_t s = 0, i;
    for (i = 0; i < n; ++i) {
        s += x[i];
    }
    return s;
}

int32_t fx_scale_f32(int32_t n, const float *x, float scale, float offset, float *out)
{
    int32_t i;
    for (i = 0; i < n; ++i) {
        out[i] = x[i] * scale + offset;
    }
    return n;
}

/* 7 core arguments: e, f, g on the stack */
int32_t fx_many_args(int32_t a, int32_t b, int32_t c, int32_t d, int32_t e, int32_t f, int32_t g)
{
    return a + 2 * b + 3 * c + 4 * d + 5 * e + 6 * f + 7 * g;
}

/* core and VFP arguments interleaved: a p b c -> r0..r3, d e -> stack; x y z -> s0 s1 s2 */
int32_t fx_mixed(int32_t a, float x, const int32_t *p, float y, int32_t b, int32_t c, int32_t d,
                 float z, int32_t e)
{
    return (int32_t)(x * 1000.0f) + (int32_t)(y * 100.0f) + (int32_t)(z * 10.0f) + a * p[0] +
           b * p[1] + c * p[2] + d * 7 + e * 11;
}

/* 18 floats: f16 and f17 go to the stack (after s0..s15 are used), k goes to r0 */
int32_t fx_floats_on_stack(float f0, float f1, float f2, float f3, float f4, float f5, float f6,
                           float f7, float f8, float f9, float f10, float f11, float f12,
                           float f13, float f14, float f15, float f16, int32_t k, float f17)
{
    float s = f0 + 2 * f1 + 3 * f2 + 4 * f3 + 5 * f4 + 6 * f5 + 7 * f6 + 8 * f7 + 9 * f8 +
              10 * f9 + 11 * f10 + 12 * f11 + 13 * f12 + 14 * f13 + 15 * f14 + 16 * f15;
    return (int32_t)s + 1000 * (int32_t)f16 + 100000 * (int32_t)f17 + k;
}

int32_t fx_dims_volume(const bnn_dims_t *d)
{
    return d->n * d->h * d->w * d->c;
}

/* reads an int64 field after int32 fields (8-byte alignment inside the struct) */
int32_t fx_add_params(const bnn_add_params_t *p, int64_t *out)
{
    out[0] = p->affine_offset;
    out[1] = (int64_t)p->affine_mult[0] * p->affine_mult[1];
    return p->act_min + p->act_max + (int32_t)p->kind + p->out_zero_point;
}

/* follows the pointer fields of a struct; writes through the output array */
int32_t fx_output(const bnn_output_t *o, int32_t channel, int32_t *out)
{
    if (o->bias == 0 || o->a_offset == 0 || o->f_scale == 0) {
        return -1;
    }
    out[0] = o->bias[channel];
    out[1] = (int32_t)o->a_offset[channel];
    out[2] = (int32_t)(o->f_scale[channel] * 4.0f);
    out[3] = o->t_direction == 0 ? 99 : o->t_direction[channel];
    return (int32_t)o->kind + o->act_max;
}

/* writes into the scratch buffer of a context */
int32_t fx_context(const bnn_context_t *ctx)
{
    uint8_t *b = (uint8_t *)ctx->buf;
    int32_t i;
    for (i = 0; i < ctx->size; ++i) {
        b[i] = (uint8_t)(i * 3);
    }
    return ctx->size;
}

/* a loop whose instruction count is a * n + b */
__attribute__((noinline)) int32_t fx_loop(int32_t n)
{
    volatile int32_t acc = 0;
    int32_t i;
    for (i = 0; i < n; ++i) {
        acc += i;
    }
    return acc;
}

/* LDRD needs a word-aligned address on ARMv7-M: a UsageFault (HardFault) on the chip and in
 * QEMU, silently done by Unicorn */
int32_t fx_misaligned_ldrd(const uint8_t *p, uint32_t *out)
{
#if defined(__arm__)
    uint32_t lo, hi;
    __asm__ volatile("ldrd %0, %1, [%2]" : "=r"(lo), "=r"(hi) : "r"(p + 1) : "memory");
    out[0] = lo;
    out[1] = hi;
    return 0;
#else
    (void)p;
    (void)out;
    return -1;
#endif
}

int32_t fx_forever(int32_t n)
{
    volatile int32_t k = n;
    for (;;) {
        k = k + 1;
    }
    return k;
}

int32_t fx_udf(int32_t n)
{
#if defined(__arm__)
    __asm__ volatile("udf #7");
    return n;
#else
    (void)n;
    return -1;
#endif
}

/* 0xE0100000: past the Private Peripheral Bus; unmapped in Unicorn, a BusFault in QEMU */
int32_t fx_null_read(int32_t n)
{
#if defined(__arm__)
    return *(volatile int32_t *)(uintptr_t)(0xE0100000u + (uint32_t)n);
#else
    (void)n;
    return -1;
#endif
}

/* uses about n * 4 bytes of stack */
__attribute__((noinline)) static int32_t fill(volatile int32_t *buf, int32_t n)
{
    int32_t i, s = 0;
    for (i = 0; i < n; ++i) {
        buf[i] = i;
    }
    for (i = 0; i < n; ++i) {
        s += buf[i];
    }
    return s;
}

int32_t fx_stack_use(int32_t n)
{
    volatile int32_t buf[1024];
    if (n > 1024) {
        n = 1024;
    }
    return fill(buf, n);
}

/* a call chain for the per-function profile */
__attribute__((noinline)) int32_t fx_layer_a(int32_t n)
{
    return fx_loop(n) + fx_loop(2 * n);
}
