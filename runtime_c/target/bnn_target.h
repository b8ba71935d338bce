/*
 * bnncube: what startup_m7.c offers the rest of a Cortex-M7 firmware.
 */
#ifndef BNN_TARGET_H
#define BNN_TARGET_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Exit status of emulator firmware that took a HardFault (validation/emulator.py knows it). */
#define BNN_EXIT_FAULT 3

/* The last fault, written by the HardFault handler (a debugger or the emulator reads it):
 * [0] BNN_FAULT_MAGIC once a fault happened, [1] PC, [2] LR, [3] xPSR (the stacked frame),
 * [4] CFSR, [5] HFSR, [6] MMFAR, [7] BFAR, [8] EXC_RETURN, [9] the exception number taken
 * (3 HardFault, 4 MemManage, 5 BusFault, 6 UsageFault, others: an unexpected exception). */
#define BNN_FAULT_MAGIC 0xFA017EDu
extern volatile uint32_t bnn_fault_info[10];

/* Called by the reset handler with the entry function's return value. Weak default: spin.
 * semihost.c overrides it with a semihosting exit. */
void bnn_target_exit(int32_t status);
/* Called by the HardFault handler once bnn_fault_info is filled. Weak default: spin.
 * semihost.c overrides it with a printed report and exit status BNN_EXIT_FAULT. */
void bnn_target_fault(const volatile uint32_t *info);

#ifdef __cplusplus
}
#endif

#endif /* BNN_TARGET_H */
