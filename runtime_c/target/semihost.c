/*
 * bnncube: minimal Arm semihosting for QEMU test firmware (see semihost.h).
 *
 * Also defines the strong versions of the startup's exit and fault hooks, so that linking this
 * file turns "main returned" into a QEMU exit status and a HardFault into a printed report
 * followed by exit status BNN_EXIT_FAULT.
 */
#include "semihost.h"

#include <stdint.h>

#include "bnn_target.h"

#define SYS_WRITE0 0x04u
#define SYS_EXIT_EXTENDED 0x20u
#define ADP_STOPPED_APPLICATION_EXIT 0x20026u

static uint32_t semihost_call(uint32_t op, const void *arg)
{
    register uint32_t r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void bnn_sh_write(const char *s, uint32_t n)
{
    char chunk[65];
    while (n > 0) {
        uint32_t k = n < 64u ? n : 64u;
        uint32_t i;
        for (i = 0; i < k; ++i) {
            chunk[i] = s[i];
        }
        chunk[k] = '\0';
        (void)semihost_call(SYS_WRITE0, chunk);
        s += k;
        n -= k;
    }
}

void bnn_sh_puts(const char *s)
{
    uint32_t n = 0;
    while (s[n] != '\0') {
        ++n;
    }
    bnn_sh_write(s, n);
}

void bnn_sh_put_hex(uint32_t v)
{
    static const char digits[] = "0123456789abcdef";
    char text[10];
    int i;
    text[0] = '0';
    text[1] = 'x';
    for (i = 0; i < 8; ++i) {
        text[2 + i] = digits[(v >> (28 - 4 * i)) & 0xFu];
    }
    bnn_sh_write(text, 10u);
}

void bnn_sh_put_dec(int32_t v)
{
    char text[12];
    uint32_t u = v < 0 ? 0u - (uint32_t)v : (uint32_t)v;
    int pos = 12;
    do {
        text[--pos] = (char)('0' + u % 10u);
        u /= 10u;
    } while (u != 0u);
    if (v < 0) {
        text[--pos] = '-';
    }
    bnn_sh_write(text + pos, (uint32_t)(12 - pos));
}

void bnn_sh_exit(int32_t status)
{
    uint32_t block[2];
    block[0] = ADP_STOPPED_APPLICATION_EXIT;
    block[1] = (uint32_t)status;
    (void)semihost_call(SYS_EXIT_EXTENDED, block);
    for (;;) {
    }
}

/* ---- strong versions of the startup hooks (startup_m7.c has weak ones) ------------------- */

void bnn_target_exit(int32_t status)
{
    bnn_sh_exit(status);
}

void bnn_target_fault(const volatile uint32_t *info)
{
    static const char *const names[] = {"pc", "lr", "xpsr", "cfsr", "hfsr", "mmfar", "bfar",
                                        "exc_return", "exception"};
    uint32_t i;
    bnn_sh_puts("BNN_HARDFAULT");
    for (i = 0; i < 9u; ++i) {
        bnn_sh_puts(" ");
        bnn_sh_puts(names[i]);
        bnn_sh_puts("=");
        bnn_sh_put_hex(info[1 + i]);
    }
    bnn_sh_puts("\n");
    bnn_sh_exit(BNN_EXIT_FAULT);
}
