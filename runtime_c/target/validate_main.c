/*
 * validate_main.c: the harness of `bnncube validate --mode target` (validation/target.py).
 *
 * Linked with a folder written by `bnncube generate` into a Cortex-M7 firmware. Three uses:
 *
 * - Unicorn (board stm32h743, the ELF's functions called one by one by the host, the reset
 *   handler never runs): the host calls bnn_validate_init(), reads g_val_network, g_val_in,
 *   g_val_out, g_val_in_data and g_val_out_data, writes each input at g_val_in_data, calls
 *   ai_<name>_run(g_val_network, g_val_in, g_val_out) itself (so the instruction count is that of
 *   the run alone) and reads the output at g_val_out_data.
 * - The same with AI_<NAME>_LAYER_OBSERVER defined to bnn_validate_layer_done: the host records
 *   the instruction counter each time that function is entered (per-layer counts).
 * - QEMU (board mps2_an500, BNN_VALIDATE_QEMU): the inputs are compiled in (g_val_inputs,
 *   g_val_count, in a generated C file); main runs them all and prints every output as
 *   `BNN_VAL_OUT <index> <hex bytes>` over semihosting, then `BNN_VAL_DONE <count>`.
 *
 * On the stm32h743 board main (the reset handler's entry) initialises the network and runs one
 * inference on the zeroed input: it keeps everything a real application needs in the link, which
 * is what the flash/RAM accounting measures.
 *
 * Name selection: NETWORK_NAME, NETWORK_NAME_UPPER, NETWORK_HEADER (as examples/classify).
 * BNN_VALIDATE_WEIGHTS: an address passed as the weights handle (tests inject a bad pointer).
 * BNN_VALIDATE_ACTIVATIONS: an address passed as the activations buffer (tests place an arena
 * that is too small at the end of the AXI SRAM).
 */
#include <stdint.h>
#include <string.h>

#ifdef BNN_VALIDATE_QEMU
#include "semihost.h"
#endif

#ifndef NETWORK_NAME
#define NETWORK_NAME network
#endif
#ifndef NETWORK_NAME_UPPER
#define NETWORK_NAME_UPPER NETWORK
#endif
#ifndef NETWORK_HEADER
#define NETWORK_HEADER "network.h"
#endif

#include NETWORK_HEADER

#define PASTE3_(a, b, c) a##b##c
#define PASTE3(a, b, c) PASTE3_(a, b, c)
#define AI_FN(suffix) PASTE3(ai_, NETWORK_NAME, suffix)
#define AI_MACRO(suffix) PASTE3(AI_, NETWORK_NAME_UPPER, suffix)

#define ACTIVATIONS_SIZE AI_MACRO(_DATA_ACTIVATIONS_SIZE)
#define IN_SIZE_BYTES AI_MACRO(_IN_1_SIZE_BYTES)
#define OUT_SIZE_BYTES AI_MACRO(_OUT_1_SIZE_BYTES)

void bnn_validate_layer_done(int layer, const void *data, unsigned int nbytes);
int32_t bnn_validate_init(void);
int main(void);

/* the activations: in the big SRAM (.arena), 8-byte aligned as the API requires */
#ifndef BNN_VALIDATE_ACTIVATIONS
static ai_u8 s_activations[ACTIVATIONS_SIZE] __attribute__((section(".arena"), aligned(8)));
#endif
/* the application's input/output buffers, only with --no-inputs-allocation /
 * --no-outputs-allocation (NAME_config.h); in the big SRAM too */
#if !AI_MACRO(_INPUTS_IN_ACTIVATIONS)
static ai_u8 s_input[IN_SIZE_BYTES] __attribute__((section(".arena"), aligned(8)));
#endif
#if !AI_MACRO(_OUTPUTS_IN_ACTIVATIONS)
static ai_u8 s_output[OUT_SIZE_BYTES] __attribute__((section(".arena"), aligned(8)));
#endif

/* read by the host after bnn_validate_init() */
ai_handle g_val_network;
ai_buffer *g_val_in;
ai_buffer *g_val_out;
void *g_val_in_data;
void *g_val_out_data;

/* the layer observer: an empty function at a known symbol; the host hooks its entry */
__attribute__((noinline)) void bnn_validate_layer_done(int layer, const void *data,
                                                       unsigned int nbytes)
{
    (void)layer;
    (void)data;
    (void)nbytes;
    __asm__ volatile("" ::: "memory");
}

/* create the network; 0 on success, 1 + the error type otherwise */
int32_t bnn_validate_init(void)
{
#ifdef BNN_VALIDATE_ACTIVATIONS /* tests: an arena at the given address (e.g. one too small) */
    const ai_handle activations[] = {(ai_handle)(uintptr_t)(BNN_VALIDATE_ACTIVATIONS)};
#else
    const ai_handle activations[] = {s_activations};
#endif
    ai_error err;
#ifdef BNN_VALIDATE_WEIGHTS
    const ai_handle weights[] = {(ai_handle)(uintptr_t)(BNN_VALIDATE_WEIGHTS)};
    err = AI_FN(_create_and_init)(&g_val_network, activations, weights);
#else
    err = AI_FN(_create_and_init)(&g_val_network, activations, (const ai_handle *)0);
#endif
    if (err.type != AI_ERROR_NONE) {
        return 1 + (int32_t)err.type;
    }
    g_val_in = AI_FN(_inputs_get)(g_val_network, (ai_u16 *)0);
    g_val_out = AI_FN(_outputs_get)(g_val_network, (ai_u16 *)0);
    if (g_val_in == (ai_buffer *)0 || g_val_out == (ai_buffer *)0) {
        return 1;
    }
#if !AI_MACRO(_INPUTS_IN_ACTIVATIONS)
    g_val_in[0].data = s_input;
#endif
#if !AI_MACRO(_OUTPUTS_IN_ACTIVATIONS)
    g_val_out[0].data = s_output;
#endif
    if (g_val_in[0].data == AI_HANDLE_NULL || g_val_out[0].data == AI_HANDLE_NULL) {
        return 1;
    }
    g_val_in_data = g_val_in[0].data;
    g_val_out_data = g_val_out[0].data;
    return 0;
}

#ifdef BNN_VALIDATE_QEMU
extern const unsigned char g_val_inputs[];
extern const unsigned int g_val_count;

static void put_hex_bytes(const ai_u8 *data, ai_u32 n)
{
    static const char digits[] = "0123456789abcdef";
    char chunk[65];
    ai_u32 i, k = 0;
    for (i = 0; i < n; ++i) {
        chunk[k++] = digits[data[i] >> 4];
        chunk[k++] = digits[data[i] & 15u];
        if (k == sizeof(chunk) - 1u || i + 1u == n) {
            bnn_sh_write(chunk, k);
            k = 0;
        }
    }
}

int main(void)
{
    unsigned int i;
    int32_t status = bnn_validate_init();
    if (status != 0) {
        bnn_sh_puts("BNN_VAL_ERROR init ");
        bnn_sh_put_dec(status);
        bnn_sh_puts("\n");
        return 1;
    }
    for (i = 0; i < g_val_count; ++i) {
        memcpy(g_val_in_data, g_val_inputs + (uint32_t)i * IN_SIZE_BYTES, IN_SIZE_BYTES);
        if (AI_FN(_run)(g_val_network, &g_val_in[0], &g_val_out[0]) != 1) {
            ai_error err = AI_FN(_get_error)(g_val_network);
            bnn_sh_puts("BNN_VAL_ERROR run ");
            bnn_sh_put_dec((int32_t)i);
            bnn_sh_puts(" type ");
            bnn_sh_put_hex((uint32_t)err.type);
            bnn_sh_puts(" code ");
            bnn_sh_put_hex((uint32_t)err.code);
            bnn_sh_puts("\n");
            return 1;
        }
        bnn_sh_puts("BNN_VAL_OUT ");
        bnn_sh_put_dec((int32_t)i);
        bnn_sh_puts(" ");
        put_hex_bytes((const ai_u8 *)g_val_out_data, OUT_SIZE_BYTES);
        bnn_sh_puts("\n");
    }
    bnn_sh_puts("BNN_VAL_DONE ");
    bnn_sh_put_dec((int32_t)g_val_count);
    bnn_sh_puts("\n");
    AI_FN(_destroy)(g_val_network);
    return 0;
}
#else
int main(void)
{
    int32_t status = bnn_validate_init();
    if (status != 0) {
        return 1;
    }
    memset(g_val_in_data, 0, IN_SIZE_BYTES);
    status = AI_FN(_run)(g_val_network, &g_val_in[0], &g_val_out[0]) == 1 ? 0 : 1;
    AI_FN(_destroy)(g_val_network);
    return status;
}
#endif
