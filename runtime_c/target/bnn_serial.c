/*
 * bnncube: the serial validation protocol, device side (bnn_serial.h, docs/serial-protocol.md).
 *
 * Part 1: the protocol over a bnn_serial_io (any byte transport).
 * Part 2: a polled driver for the CMSDK APB UART (QEMU mps2-an500's UART0).
 * Part 3 (only with BNN_SERIAL_VALIDATE): the validation firmware's entry bnn_serial_main, linked
 *   with runtime_c/target/validate_main.c and a generated network (NETWORK_NAME,
 *   NETWORK_NAME_UPPER, NETWORK_HEADER as validate_main.c); validation/serial_protocol.py builds it
 *   with cross_compile(entry="bnn_serial_main").
 */
#include "bnn_serial.h"

#include <stddef.h>
#include <stdint.h>

/* ---- part 1: the protocol ------------------------------------------------------------------ */

#define WAIT_FOREVER 0xFFFFFFFFu
/* a length above this is rejected at once (no payload is read): in_size/out_size plus a margin */
#define LENGTH_MARGIN 64u

uint32_t bnn_crc32(uint32_t crc, const uint8_t *data, uint32_t n)
{
    uint32_t i;
    int bit;
    crc = ~crc;
    for (i = 0; i < n; ++i) {
        crc ^= data[i];
        for (bit = 0; bit < 8; ++bit) {
            crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
        }
    }
    return ~crc;
}

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* one frame whose payload is the concatenation of two parts */
static void send2(const bnn_serial_io *io, uint8_t cmd, const uint8_t *a, uint32_t na,
                  const uint8_t *b, uint32_t nb)
{
    uint8_t header[7];
    uint8_t tail[4];
    uint32_t crc;
    header[0] = BNN_SERIAL_MAGIC0;
    header[1] = BNN_SERIAL_MAGIC1;
    header[2] = cmd;
    put_u32(header + 3, na + nb);
    crc = bnn_crc32(0u, header + 2, 5u);
    crc = bnn_crc32(crc, a, na);
    crc = bnn_crc32(crc, b, nb);
    put_u32(tail, crc);
    io->write(io->ctx, header, 7u);
    if (na > 0u) {
        io->write(io->ctx, a, na);
    }
    if (nb > 0u) {
        io->write(io->ctx, b, nb);
    }
    io->write(io->ctx, tail, 4u);
}

void bnn_serial_send(const bnn_serial_io *io, uint8_t cmd, const uint8_t *payload, uint32_t n)
{
    send2(io, cmd, payload, n, (const uint8_t *)0, 0u);
}

static int send_error(const bnn_serial_io *io, uint8_t code, uint32_t detail)
{
    uint8_t payload[8] = {0};
    payload[0] = code;
    put_u32(payload + 4, detail);
    bnn_serial_send(io, BNN_CMD_ERROR, payload, 8u);
    return -(int)code;
}

/* read n bytes (to dst, or discarded when dst is NULL), updating *crc; 0, or -1 on a timeout
 * (then *got holds the bytes read) */
static int read_bytes(const bnn_serial_io *io, uint8_t *dst, uint32_t n, uint32_t *crc,
                      uint32_t *got)
{
    uint32_t i;
    for (i = 0; i < n; ++i) {
        int c = io->read_byte(io->ctx, BNN_SERIAL_BYTE_TIMEOUT_MS);
        uint8_t byte;
        if (c < 0) {
            *got += i;
            return -1;
        }
        byte = (uint8_t)c;
        if (crc != (uint32_t *)0) {
            *crc = bnn_crc32(*crc, &byte, 1u);
        }
        if (dst != (uint8_t *)0) {
            dst[i] = byte;
        }
    }
    *got += n;
    return 0;
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static int answer_hello(const bnn_serial_io *io, const bnn_serial_model *m)
{
    uint8_t head[12];
    uint32_t name_len = 0;
    while (m->name[name_len] != '\0' && name_len < 255u) {
        ++name_len;
    }
    head[0] = (uint8_t)BNN_SERIAL_VERSION;
    head[1] = m->in_format;
    head[2] = m->out_format;
    head[3] = (uint8_t)(m->cycles != (uint32_t (*)(void))0 ? BNN_RUN_FLAG_CYCLES : 0u);
    put_u32(head + 4, m->in_size);
    put_u32(head + 8, m->out_size);
    send2(io, BNN_CMD_HELLO_ACK, head, 12u, (const uint8_t *)m->name, name_len);
    return (int)BNN_CMD_HELLO;
}

static int answer_run(const bnn_serial_io *io, const bnn_serial_model *m)
{
    uint8_t head[8];
    uint32_t flags = 0u, cycles = 0u, start = 0u;
    int32_t status;
    if (m->init_status != 0) {
        return send_error(io, BNN_ERR_INIT, (uint32_t)m->init_status);
    }
    if (m->cycles != (uint32_t (*)(void))0) {
        start = m->cycles();
    }
    status = m->run(m->user);
    if (m->cycles != (uint32_t (*)(void))0) {
        cycles = m->cycles() - start;
        flags |= BNN_RUN_FLAG_CYCLES;
    }
    if (status != 0) {
        return send_error(io, BNN_ERR_RUN, (uint32_t)status);
    }
    put_u32(head, flags);
    put_u32(head + 4, cycles);
    send2(io, BNN_CMD_RUN_ACK, head, 8u, m->out_data, m->out_size);
    return (int)BNN_CMD_RUN;
}

int bnn_serial_serve_one(const bnn_serial_io *io, const bnn_serial_model *model)
{
    uint8_t header[5]; /* cmd, length */
    uint8_t crc_bytes[4];
    uint32_t length, limit, crc = 0u, got = 0u, received;
    uint8_t *dst = (uint8_t *)0;
    int c;

    /* hunt for the magic: any byte before it is skipped (resynchronisation) */
    c = io->read_byte(io->ctx, WAIT_FOREVER);
    for (;;) {
        if (c == (int)BNN_SERIAL_MAGIC0) {
            c = io->read_byte(io->ctx, BNN_SERIAL_BYTE_TIMEOUT_MS);
            if (c == (int)BNN_SERIAL_MAGIC1) {
                break;
            }
            if (c < 0) {
                return send_error(io, BNN_ERR_TIMEOUT, 1u);
            }
            continue; /* c may be a new MAGIC0 */
        }
        c = io->read_byte(io->ctx, WAIT_FOREVER);
    }
    got = 2u;
    if (read_bytes(io, header, 5u, &crc, &got) != 0) {
        return send_error(io, BNN_ERR_TIMEOUT, got);
    }
    length = get_u32(header + 1);
    limit = (model->in_size > model->out_size ? model->in_size : model->out_size) + LENGTH_MARGIN;
    if (length > limit) {
        /* a corrupted length: reading it would swallow the next frames */
        return send_error(io, BNN_ERR_BAD_LENGTH, model->in_size);
    }
    if (header[0] == BNN_CMD_RUN && length == model->in_size && model->init_status == 0) {
        dst = model->in_data;
    }
    if (read_bytes(io, dst, length, &crc, &got) != 0 ||
        read_bytes(io, crc_bytes, 4u, (uint32_t *)0, &got) != 0) {
        return send_error(io, BNN_ERR_TIMEOUT, got);
    }
    received = get_u32(crc_bytes);
    if (received != crc) {
        return send_error(io, BNN_ERR_BAD_CRC, received);
    }
    switch (header[0]) {
    case BNN_CMD_HELLO:
        if (length != 0u) {
            return send_error(io, BNN_ERR_BAD_LENGTH, 0u);
        }
        return answer_hello(io, model);
    case BNN_CMD_RUN:
        if (length != model->in_size) {
            return send_error(io, BNN_ERR_BAD_LENGTH, model->in_size);
        }
        return answer_run(io, model);
    default:
        return send_error(io, BNN_ERR_UNKNOWN_CMD, header[0]);
    }
}

void bnn_serial_serve(const bnn_serial_io *io, const bnn_serial_model *model)
{
    for (;;) {
        (void)bnn_serial_serve_one(io, model);
    }
}

/* ---- part 2: CMSDK APB UART ---------------------------------------------------------------- */

#define UART_REG(u, off) (*(volatile uint32_t *)((u)->base + (off)))
#define UART_DATA 0x000u
#define UART_STATE 0x004u /* bit 0 TX buffer full, bit 1 RX buffer full, 2/3 TX/RX overrun */
#define UART_CTRL 0x008u  /* bit 0 TX enable, bit 1 RX enable */
#define UART_BAUDDIV 0x010u
#define STATE_TX_FULL 0x1u
#define STATE_RX_FULL 0x2u
#define STATE_OVERRUNS 0xCu
#define CTRL_TX_RX_ENABLE 0x3u

void bnn_uart_cmsdk_init(bnn_uart_cmsdk *uart, uintptr_t base, uint32_t pclk_hz, uint32_t baud)
{
    uint32_t div = baud > 0u ? pclk_hz / baud : 16u;
    uart->base = base;
    UART_REG(uart, UART_CTRL) = 0u;
    UART_REG(uart, UART_BAUDDIV) = div < 16u ? 16u : div;
    UART_REG(uart, UART_STATE) = STATE_OVERRUNS; /* write 1 to clear the overrun flags */
    UART_REG(uart, UART_CTRL) = CTRL_TX_RX_ENABLE;
}

int bnn_uart_cmsdk_read_byte(void *ctx, uint32_t timeout_ms)
{
    const bnn_uart_cmsdk *uart = (const bnn_uart_cmsdk *)ctx;
    uint32_t polls = timeout_ms == WAIT_FOREVER ? 0u : timeout_ms * BNN_UART_POLLS_PER_MS;
    for (;;) {
        if ((UART_REG(uart, UART_STATE) & STATE_RX_FULL) != 0u) {
            return (int)(UART_REG(uart, UART_DATA) & 0xFFu);
        }
        if (timeout_ms != WAIT_FOREVER) {
            if (polls == 0u) {
                return -1;
            }
            --polls;
        }
    }
}

void bnn_uart_cmsdk_write(void *ctx, const uint8_t *data, uint32_t n)
{
    const bnn_uart_cmsdk *uart = (const bnn_uart_cmsdk *)ctx;
    uint32_t i;
    for (i = 0; i < n; ++i) {
        while ((UART_REG(uart, UART_STATE) & STATE_TX_FULL) != 0u) {
        }
        UART_REG(uart, UART_DATA) = data[i];
    }
}

/* ---- part 3: the validation firmware ------------------------------------------------------- */

#ifdef BNN_SERIAL_VALIDATE

#ifndef BNN_SERIAL_BAUD
#define BNN_SERIAL_BAUD 115200u
#endif

#include NETWORK_HEADER

#define BNN_PASTE3_(a, b, c) a##b##c
#define BNN_PASTE3(a, b, c) BNN_PASTE3_(a, b, c)
#define BNN_AI_FN(suffix) BNN_PASTE3(ai_, NETWORK_NAME, suffix)
#define BNN_AI_MACRO(suffix) BNN_PASTE3(AI_, NETWORK_NAME_UPPER, suffix)

/* validate_main.c */
int32_t bnn_validate_init(void);
extern ai_handle g_val_network;
extern ai_buffer *g_val_in;
extern ai_buffer *g_val_out;
extern void *g_val_in_data;
extern void *g_val_out_data;

int bnn_serial_main(void);

static int32_t validate_run(void *user)
{
    (void)user;
    if (BNN_AI_FN(_run)(g_val_network, &g_val_in[0], &g_val_out[0]) != 1) {
        ai_error err = BNN_AI_FN(_get_error)(g_val_network);
        return (int32_t)(((uint32_t)err.type << 24) | ((uint32_t)err.code & 0xFFFFFFu));
    }
    return 0;
}

int bnn_serial_main(void)
{
    static bnn_uart_cmsdk uart;
    static uint8_t dummy[1];
    bnn_serial_io io;
    bnn_serial_model model;
    bnn_uart_cmsdk_init(&uart, BNN_CMSDK_UART0_BASE, BNN_MPS2_PCLK_HZ, BNN_SERIAL_BAUD);
    io.read_byte = bnn_uart_cmsdk_read_byte;
    io.write = bnn_uart_cmsdk_write;
    io.ctx = &uart;
    model.name = BNN_AI_MACRO(_MODEL_NAME);
    model.in_size = BNN_AI_MACRO(_IN_1_SIZE_BYTES);
    model.out_size = BNN_AI_MACRO(_OUT_1_SIZE_BYTES);
    model.init_status = bnn_validate_init();
    if (model.init_status == 0) {
        model.in_format = (uint8_t)g_val_in[0].format;
        model.out_format = (uint8_t)g_val_out[0].format;
        model.in_data = (uint8_t *)g_val_in_data;
        model.out_data = (const uint8_t *)g_val_out_data;
    } else {
        model.in_format = 0u;
        model.out_format = 0u;
        model.in_data = dummy; /* never written: RUN answers BNN_ERR_INIT */
        model.out_data = dummy;
    }
    model.run = validate_run;
    model.cycles = (uint32_t (*)(void))0; /* QEMU has no DWT cycle counter */
    model.user = (void *)0;
    bnn_serial_serve(&io, &model);
}

#endif /* BNN_SERIAL_VALIDATE */
