/*
 * bnncube: minimal Arm semihosting for QEMU test firmware (no newlib semihosting, no printf).
 *
 * Semihosting calls are `bkpt 0xAB` with the operation in r0 and its argument in r1. QEMU answers
 * them with `-semihosting-config enable=on,target=native`. On a real board without a debugger a
 * semihosting call is a HardFault: link semihost.c only into emulator firmware.
 */
#ifndef BNN_SEMIHOST_H
#define BNN_SEMIHOST_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Write n bytes to the host's console (SYS_WRITE0 in chunks). */
void bnn_sh_write(const char *s, uint32_t n);
/* Write a NUL-terminated string. */
void bnn_sh_puts(const char *s);
/* Write a number: 0x-prefixed 8-digit hexadecimal, or signed decimal. */
void bnn_sh_put_hex(uint32_t v);
void bnn_sh_put_dec(int32_t v);
/* End the emulation; QEMU exits with `status` (SYS_EXIT_EXTENDED, ADP_Stopped_ApplicationExit). */
void bnn_sh_exit(int32_t status) __attribute__((noreturn));

#ifdef __cplusplus
}
#endif

#endif /* BNN_SEMIHOST_H */
