/*
 * bnncube: startup code for a Cortex-M7 (STM32H743, and QEMU's mps2-an500).
 *
 * Reset: enable the FPU (CPACR, before any floating-point instruction), point VTOR at our vector
 * table, copy .data from flash, zero .bss, optionally enable the L1 caches (BNN_ENABLE_CACHES:
 * real hardware only, emulators ignore or lack the cache registers), call BNN_ENTRY (default
 * `main`) and hand its return value to bnn_target_exit(). Build with BNN_NO_ENTRY for a firmware
 * that only holds functions to be called by an emulator (the reset handler then spins).
 *
 * Faults: HardFault, MemManage, BusFault, UsageFault and every unexpected exception record the
 * stacked PC/LR/xPSR and the fault status registers in bnn_fault_info (bnn_target.h), then call
 * bnn_target_fault() (weak default: spin, for a debugger to read bnn_fault_info).
 *
 * Linker symbols used (stm32h743.ld, mps2_an500.ld): _estack, _sidata, _sdata, _edata, _sbss,
 * _ebss.
 */
#include <stdint.h>

#include "bnn_target.h"

/* peripheral interrupt vectors of the STM32H743 (mps2-an500 has 32; extra entries are harmless) */
#define BNN_NUM_IRQ 150

#ifndef BNN_ENTRY
#define BNN_ENTRY main
#endif

#define REG32(addr) (*(volatile uint32_t *)(addr))
#define SCB_VTOR REG32(0xE000ED08u)
#define SCB_CCR REG32(0xE000ED14u)
#define SCB_CFSR REG32(0xE000ED28u)
#define SCB_HFSR REG32(0xE000ED2Cu)
#define SCB_MMFAR REG32(0xE000ED34u)
#define SCB_BFAR REG32(0xE000ED38u)
#define SCB_CCSIDR REG32(0xE000ED80u)
#define SCB_CSSELR REG32(0xE000ED84u)
#define SCB_ICIALLU REG32(0xE000EF50u)
#define SCB_DCISW REG32(0xE000EF60u)

extern uint32_t _estack;
extern uint32_t _sidata;
extern uint32_t _sdata;
extern uint32_t _edata;
extern uint32_t _sbss;
extern uint32_t _ebss;

volatile uint32_t bnn_fault_info[10];

typedef void (*bnn_vector_t)(void);

void Reset_Handler(void);
void bnn_reset_c(void);
void bnn_fault_entry(void);
void bnn_fault_c(const uint32_t *frame, uint32_t exc_return);
extern const bnn_vector_t bnn_vectors[16 + BNN_NUM_IRQ];

#ifndef BNN_NO_ENTRY
extern int BNN_ENTRY(void);
#endif

__attribute__((weak)) void bnn_target_exit(int32_t status)
{
    (void)status;
    for (;;) {
    }
}

__attribute__((weak)) void bnn_target_fault(const volatile uint32_t *info)
{
    (void)info;
    for (;;) {
    }
}

static inline void barrier(void)
{
    __asm__ volatile("dsb 0xF\n\tisb 0xF" ::: "memory");
}

#ifdef BNN_ENABLE_CACHES
/* Cortex-M7 L1 caches (ARMv7-M ARM B2.2.7; the M7 data cache has 32-byte lines and 4 ways). */
static void enable_caches(void)
{
    uint32_t ccsidr, sets, ways;
    barrier();
    SCB_ICIALLU = 0u;
    barrier();
    SCB_CCR |= 1u << 17; /* IC */
    barrier();

    SCB_CSSELR = 0u; /* level 1 data cache */
    barrier();
    ccsidr = SCB_CCSIDR;
    sets = (ccsidr >> 13) & 0x7FFFu;
    do {
        ways = (ccsidr >> 3) & 0x3FFu;
        do {
            SCB_DCISW = ((sets & 0x1FFu) << 5) | ((ways & 0x3u) << 30);
        } while (ways-- != 0u);
    } while (sets-- != 0u);
    barrier();
    SCB_CCR |= 1u << 16; /* DC */
    barrier();
}
#endif

/* The first code to run: no floating-point instruction may come before the FPU is enabled, and
 * the compiler may use VFP registers for copies in C code, so this part is assembly. */
__attribute__((naked, noreturn)) void Reset_Handler(void)
{
    __asm__ volatile(
        "ldr r0, =0xE000ED88\n\t" /* CPACR */
        "ldr r1, [r0]\n\t"
        "orr r1, r1, #0x00F00000\n\t" /* CP10, CP11: full access */
        "str r1, [r0]\n\t"
        "dsb 0xF\n\t"
        "isb 0xF\n\t"
        "b bnn_reset_c\n\t"
        ".ltorg\n\t");
}

__attribute__((noreturn, used)) void bnn_reset_c(void)
{
    uint32_t *src = &_sidata;
    uint32_t *dst = &_sdata;
    int32_t status = 0;

    SCB_VTOR = (uint32_t)(uintptr_t)bnn_vectors;
    while (dst < &_edata) {
        *dst++ = *src++;
    }
    for (dst = &_sbss; dst < &_ebss; ++dst) {
        *dst = 0u;
    }
#ifdef BNN_ENABLE_CACHES
    enable_caches();
#endif
    barrier();
#ifndef BNN_NO_ENTRY
    status = (int32_t)BNN_ENTRY();
#endif
    bnn_target_exit(status);
    for (;;) {
    }
}

/* Every fault and unexpected exception: find the stacked frame (MSP or PSP by EXC_RETURN bit 2)
 * and hand it to C. */
__attribute__((naked)) void bnn_fault_entry(void)
{
    __asm__ volatile(
        "tst lr, #4\n\t"
        "ite eq\n\t"
        "mrseq r0, msp\n\t"
        "mrsne r0, psp\n\t"
        "mov r1, lr\n\t"
        "b bnn_fault_c\n\t");
}

__attribute__((used)) void bnn_fault_c(const uint32_t *frame, uint32_t exc_return)
{
    uint32_t ipsr;
    __asm__ volatile("mrs %0, ipsr" : "=r"(ipsr));
    bnn_fault_info[1] = frame[6]; /* r0 r1 r2 r3 r12 lr pc xpsr */
    bnn_fault_info[2] = frame[5];
    bnn_fault_info[3] = frame[7];
    bnn_fault_info[4] = SCB_CFSR;
    bnn_fault_info[5] = SCB_HFSR;
    bnn_fault_info[6] = SCB_MMFAR;
    bnn_fault_info[7] = SCB_BFAR;
    bnn_fault_info[8] = exc_return;
    bnn_fault_info[9] = ipsr & 0x1FFu;
    bnn_fault_info[0] = BNN_FAULT_MAGIC;
    bnn_target_fault(bnn_fault_info);
    for (;;) {
    }
}

#define F bnn_fault_entry
#define V2 F, F
#define V8 V2, V2, V2, V2
#define V32 V8, V8, V8, V8
#define V128 V32, V32, V32, V32
__attribute__((section(".isr_vector"), used)) const bnn_vector_t bnn_vectors[16 + BNN_NUM_IRQ] = {
    (bnn_vector_t)(uintptr_t)&_estack, /* initial SP */
    Reset_Handler,
    F, /* NMI */
    F, /* HardFault */
    F, /* MemManage */
    F, /* BusFault */
    F, /* UsageFault */
    0, 0, 0, 0,
    F, /* SVCall */
    F, /* DebugMonitor */
    0,
    F, /* PendSV */
    F, /* SysTick */
    V128, V8, V8, V2, V2, V2, /* 150 peripheral interrupts */
};
#undef V128
#undef V32
#undef V8
#undef V2
#undef F
