/*
 * classify/main_m7.c: one inference of a network written by `bnncube generate`, bare metal on a
 * Cortex-M7, results printed over Arm semihosting (QEMU `-M mps2-an500 -cpu cortex-m7`, or a
 * board under a debugger that serves semihosting).
 *
 * The input is compiled in: a C file (input_data.c) defines
 *
 *     const unsigned char g_input[] = {...};      one raw input, AI_<NAME>_IN_1_SIZE_BYTES bytes
 *     const unsigned int g_input_size = sizeof(g_input);
 *
 * The activations buffer is a static array in the `.arena` section (the linker script puts it in
 * the large SRAM: AXI SRAM on the STM32H743, PSRAM on QEMU's mps2-an500). The output is printed
 * as one line `output: <hex bytes>`, after the report; `main` returns 0 on success and 1 on any
 * failure, and the startup code (bnncube's runtime_c/target/startup_m7.c + semihost.c) turns
 * that into the emulator's exit status.
 *
 * On a board without a debugger, semihosting calls fault: replace the bnn_sh_* calls by your
 * UART output. Name selection (NETWORK_NAME, NETWORK_NAME_UPPER, NETWORK_HEADER) works as in
 * main_host.c.
 */
#include <string.h>

#include "semihost.h"

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

extern const unsigned char g_input[];
extern const unsigned int g_input_size;

/* The activations buffer: in the big SRAM, 8-byte aligned as the API requires. */
static ai_u8 s_activations[ACTIVATIONS_SIZE] __attribute__((section(".arena"), aligned(8)));

/* Used only when the network was generated with --no-inputs-allocation /
 * --no-outputs-allocation (otherwise the input and output live in the activations). */
static ai_u8 s_input[IN_SIZE_BYTES] __attribute__((aligned(8)));
static ai_u8 s_output[OUT_SIZE_BYTES] __attribute__((aligned(8)));

static void put_line(const char *label, const char *text)
{
    bnn_sh_puts(label);
    bnn_sh_puts(text);
    bnn_sh_puts("\n");
}

/* An unsigned number in decimal (the MACC count may not fit bnn_sh_put_dec's int32). */
static void put_number(const char *label, unsigned long long v)
{
    char text[24];
    char *p = text + sizeof(text) - 1;
    *p = '\0';
    do {
        *--p = (char)('0' + (int)(v % 10u));
        v /= 10u;
    } while (v != 0u);
    put_line(label, p);
}

static void put_error(const char *what, ai_error err)
{
    bnn_sh_puts("error: ");
    bnn_sh_puts(what);
    bnn_sh_puts(" failed: type ");
    bnn_sh_put_hex((uint32_t)err.type);
    bnn_sh_puts(", code ");
    bnn_sh_put_hex((uint32_t)err.code);
    bnn_sh_puts("\n");
}

/* `output: ` then every byte as two hex digits, in memory order. */
static void put_hex_bytes(const char *label, const ai_u8 *data, ai_u32 n)
{
    static const char digits[] = "0123456789abcdef";
    char chunk[65];
    ai_u32 i, k = 0;
    bnn_sh_puts(label);
    for (i = 0; i < n; ++i) {
        chunk[k++] = digits[data[i] >> 4];
        chunk[k++] = digits[data[i] & 15u];
        if (k == sizeof(chunk) - 1 || i + 1 == n) {
            bnn_sh_write(chunk, k);
            k = 0;
        }
    }
    bnn_sh_puts("\n");
}

int main(void)
{
    ai_handle network = AI_HANDLE_NULL;
    const ai_handle activations[] = {s_activations};
    ai_network_report report;
    ai_buffer *in;
    ai_buffer *out;
    ai_error err;
    int status = 1;

    if (g_input_size != IN_SIZE_BYTES) {
        bnn_sh_puts("error: wrong input size: g_input has ");
        bnn_sh_put_dec((int32_t)g_input_size);
        bnn_sh_puts(" bytes, the network takes ");
        bnn_sh_put_dec((int32_t)IN_SIZE_BYTES);
        bnn_sh_puts("\n");
        return 1;
    }

    /* 1. create the network and give it its activations buffer (NULL: generated weights) */
    err = AI_FN(_create_and_init)(&network, activations, NULL);
    if (err.type != AI_ERROR_NONE) {
        put_error("create_and_init", err);
        return 1;
    }

    /* 2. the input and output buffers */
    in = AI_FN(_inputs_get)(network, NULL);
    out = AI_FN(_outputs_get)(network, NULL);
    if (in == NULL || out == NULL) {
        put_error("inputs_get/outputs_get", AI_FN(_get_error)(network));
        goto done;
    }
    if (in[0].data == NULL) {
        in[0].data = s_input;
    }
    if (out[0].data == NULL) {
        out[0].data = s_output;
    }

    /* 3. one inference */
    memcpy(in[0].data, g_input, IN_SIZE_BYTES);
    if (AI_FN(_run)(network, &in[0], &out[0]) != 1) {
        put_error("run", AI_FN(_get_error)(network));
        goto done;
    }

    /* 4. the report and the result */
    if (!AI_FN(_get_report)(network, &report)) {
        put_error("get_report", AI_FN(_get_error)(network));
        goto done;
    }
    put_line("model: ", report.model_name);
    put_number("MACC: ", report.n_macc);
    put_number("weights: ", report.params.size);
    put_number("activations: ", report.activations.size);
    put_hex_bytes("output: ", (const ai_u8 *)out[0].data, OUT_SIZE_BYTES);
    status = 0;

done:
    AI_FN(_destroy)(network);
    return status;
}
