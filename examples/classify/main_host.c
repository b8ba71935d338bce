/*
 * classify/main_host.c: one inference of a network written by `bnncube generate`, on a PC.
 *
 *     ./app INPUT.bin OUTPUT.bin
 *
 * INPUT.bin holds exactly one raw input in the network's own format (float32 or int8,
 * little-endian, HWC order: AI_<NAME>_IN_1_SIZE_BYTES bytes); OUTPUT.bin receives the raw output
 * bytes (AI_<NAME>_OUT_1_SIZE_BYTES). Only the public API of <name>.h is used, the same calls an
 * STM32 application makes: create_and_init, inputs_get/outputs_get, run, get_error, get_report,
 * destroy. Exit status: 0 on success, 1 on any failure, 2 on a usage error.
 *
 * The network's C name (`bnncube generate -n NAME`) is chosen at compile time, e.g. for
 * `-n mynet`:
 *
 *     cc -std=c99 -DNETWORK_NAME=mynet -DNETWORK_NAME_UPPER=MYNET -DNETWORK_HEADER='"mynet.h"' \
 *        -Igenerated main_host.c generated/mynet*.c generated/bnn_*.c -o app
 *
 * (the Makefile beside this file does it: make GEN=generated NAME=mynet). The defaults are the
 * generator's default name, `network`.
 */
#include <stdio.h>
#include <string.h>

#ifndef NETWORK_NAME
#define NETWORK_NAME network /* the C name given to `bnncube generate -n` */
#endif
#ifndef NETWORK_NAME_UPPER
#define NETWORK_NAME_UPPER NETWORK /* the same name in capitals (the macros' prefix) */
#endif
#ifndef NETWORK_HEADER
#define NETWORK_HEADER "network.h"
#endif

#include NETWORK_HEADER

/* AI_FN(_run) is ai_<name>_run, AI_MACRO(_IN_1_SIZE_BYTES) is AI_<NAME>_IN_1_SIZE_BYTES. */
#define PASTE3_(a, b, c) a##b##c
#define PASTE3(a, b, c) PASTE3_(a, b, c)
#define AI_FN(suffix) PASTE3(ai_, NETWORK_NAME, suffix)
#define AI_MACRO(suffix) PASTE3(AI_, NETWORK_NAME_UPPER, suffix)

#define ACTIVATIONS_SIZE AI_MACRO(_DATA_ACTIVATIONS_SIZE)
#define IN_SIZE_BYTES AI_MACRO(_IN_1_SIZE_BYTES)
#define OUT_SIZE_BYTES AI_MACRO(_OUT_1_SIZE_BYTES)

/* The activations buffer (all of the network's working memory), 8-byte aligned as the API
 * requires: the union with a 64-bit integer gives the alignment in plain C99. */
static union {
    ai_u64 align;
    ai_u8 bytes[ACTIVATIONS_SIZE];
} s_activations;

/* Input and output buffers of our own, used only when the network was generated with
 * --no-inputs-allocation / --no-outputs-allocation (otherwise they live in the activations). */
static union {
    ai_u64 align;
    ai_u8 bytes[IN_SIZE_BYTES];
} s_input;
static union {
    ai_u64 align;
    ai_u8 bytes[OUT_SIZE_BYTES];
} s_output;

static void print_error(const char *what, ai_error err)
{
    fprintf(stderr, "error: %s failed: type 0x%02x, code 0x%06x\n", what, (unsigned)err.type,
            (unsigned)err.code);
}

static const char *format_name(ai_buffer_format format)
{
    switch (format) {
    case AI_BUFFER_FORMAT_FLOAT:
        return "float32";
    case AI_BUFFER_FORMAT_S8:
        return "int8";
    case AI_BUFFER_FORMAT_U8:
        return "uint8";
    default:
        return "32-bit";
    }
}

/* Read the file `path` into the input buffer `in`: exactly IN_SIZE_BYTES bytes; 0 on success. */
static int read_input(const char *path, const ai_buffer *in)
{
    size_t got;
    int extra;
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        return 1;
    }
    got = fread(in->data, 1, IN_SIZE_BYTES, f);
    extra = fgetc(f); /* EOF when the file has no more bytes */
    fclose(f);
    if (got != IN_SIZE_BYTES || extra != EOF) {
        fprintf(stderr,
                "error: %s: wrong input size: %s%lu bytes, the network takes exactly %lu bytes "
                "(one input: %lu %s values)\n",
                path, extra != EOF ? "more than " : "", (unsigned long)got,
                (unsigned long)IN_SIZE_BYTES, (unsigned long)in->size, format_name(in->format));
        return 1;
    }
    return 0;
}

static int write_output(const char *path, const ai_u8 *src, size_t size)
{
    FILE *f = fopen(path, "wb");
    int failed;
    if (f == NULL) {
        perror(path);
        return 1;
    }
    failed = fwrite(src, 1, size, f) != size;
    failed |= fclose(f) != 0;
    if (failed) {
        fprintf(stderr, "error: %s: cannot write the output\n", path);
    }
    return failed;
}

/* Output value i as a number, whatever the output's format. */
static double output_value(const ai_buffer *out, ai_size i)
{
    switch (out->format) {
    case AI_BUFFER_FORMAT_FLOAT:
        return ((const float *)out->data)[i];
    case AI_BUFFER_FORMAT_S8:
        return ((const ai_i8 *)out->data)[i];
    case AI_BUFFER_FORMAT_U8:
        return ((const ai_u8 *)out->data)[i];
    default:
        return ((const ai_i32 *)out->data)[i];
    }
}

/* The index of the largest output value (the class, for a classifier). */
static ai_size top1(const ai_buffer *out)
{
    ai_size i, best = 0;
    for (i = 1; i < out->size; ++i) {
        if (output_value(out, i) > output_value(out, best)) {
            best = i;
        }
    }
    return best;
}

int main(int argc, char **argv)
{
    ai_handle network = AI_HANDLE_NULL;
    const ai_handle activations[] = {s_activations.bytes};
    ai_network_report report;
    ai_buffer *in;
    ai_buffer *out;
    ai_error err;
    ai_i32 batches;
    ai_size best;
    int status = 1;

    if (argc != 3) {
        fprintf(stderr, "usage: %s INPUT.bin OUTPUT.bin\n", argv[0]);
        return 2;
    }

    /* 1. create the network and give it its activations buffer (NULL: generated weights) */
    err = AI_FN(_create_and_init)(&network, activations, NULL);
    if (err.type != AI_ERROR_NONE) {
        print_error("create_and_init", err);
        return 1;
    }

    /* 2. the input and output buffers the network expects */
    in = AI_FN(_inputs_get)(network, NULL);
    out = AI_FN(_outputs_get)(network, NULL);
    if (in == NULL || out == NULL) {
        print_error("inputs_get/outputs_get", AI_FN(_get_error)(network));
        goto done;
    }
    if (in[0].data == NULL) {
        in[0].data = s_input.bytes;
    }
    if (out[0].data == NULL) {
        out[0].data = s_output.bytes;
    }

    /* 3. the input, read straight into the network's input buffer */
    if (read_input(argv[1], &in[0]) != 0) {
        goto done;
    }

    /* 4. one inference: ai_<name>_run returns the number of batches run */
    batches = AI_FN(_run)(network, &in[0], &out[0]);
    if (batches != 1) {
        print_error("run", AI_FN(_get_error)(network));
        goto done;
    }
    if (write_output(argv[2], (const ai_u8 *)out[0].data, OUT_SIZE_BYTES) != 0) {
        goto done;
    }

    /* 5. what the network is */
    if (!AI_FN(_get_report)(network, &report)) {
        print_error("get_report", AI_FN(_get_error)(network));
        goto done;
    }
    printf("model:       %s\n", report.model_name);
    printf("MACC:        %llu\n", (unsigned long long)report.n_macc);
    printf("weights:     %lu bytes\n", (unsigned long)report.params.size);
    printf("activations: %lu bytes\n", (unsigned long)report.activations.size);
    printf("input:       %lu bytes\n", (unsigned long)IN_SIZE_BYTES);
    printf("output:      %lu bytes -> %s\n", (unsigned long)OUT_SIZE_BYTES, argv[2]);
    best = top1(&out[0]);
    printf("top-1:       output %lu (%g)\n", (unsigned long)best, output_value(&out[0], best));
    status = 0;

done:
    AI_FN(_destroy)(network);
    return status;
}
