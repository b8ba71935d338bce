/*
 * bnncube: the serial validation protocol, device side (docs/serial-protocol.md).
 *
 * Frame (both directions):
 *   'B' 'N' | cmd (1 byte) | length (uint32 LE) | payload (length bytes) | CRC-32 (uint32 LE)
 * The CRC is the standard reflected CRC-32 (polynomial 0xEDB88320, init 0xFFFFFFFF, final XOR
 * 0xFFFFFFFF; "123456789" -> 0xCBF43926) over cmd, length and payload.
 *
 * The protocol runs over two function pointers (bnn_serial_io), independent of the UART; a
 * polled driver for the CMSDK APB UART of QEMU's mps2-an500 is included (bnn_uart_cmsdk_*).
 */
#ifndef BNN_SERIAL_H
#define BNN_SERIAL_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BNN_SERIAL_MAGIC0 0x42u /* 'B' */
#define BNN_SERIAL_MAGIC1 0x4Eu /* 'N' */
#define BNN_SERIAL_VERSION 1u

/* commands: host -> device */
#define BNN_CMD_HELLO 0x01u
#define BNN_CMD_RUN 0x02u
/* answers: device -> host */
#define BNN_CMD_HELLO_ACK 0x81u
#define BNN_CMD_RUN_ACK 0x82u
#define BNN_CMD_ERROR 0x7Fu

/* ERROR payload: code (1 byte), 3 zero bytes, detail (uint32 LE) */
#define BNN_ERR_BAD_CRC 1u     /* detail: the CRC received */
#define BNN_ERR_BAD_LENGTH 2u  /* detail: the length expected */
#define BNN_ERR_UNKNOWN_CMD 3u /* detail: the command byte */
#define BNN_ERR_TIMEOUT 4u     /* a frame stopped arriving; detail: bytes of it received */
#define BNN_ERR_INIT 5u        /* the network could not be created; detail: the status */
#define BNN_ERR_RUN 6u         /* the inference failed; detail: the status */

/* RUN_ACK flags */
#define BNN_RUN_FLAG_CYCLES 0x1u /* the cycles field is valid */

/* milliseconds a frame may pause between two bytes before the device drops it */
#ifndef BNN_SERIAL_BYTE_TIMEOUT_MS
#define BNN_SERIAL_BYTE_TIMEOUT_MS 200u
#endif

/* The byte I/O: read_byte returns 0..255, or -1 when nothing came within timeout_ms
 * (timeout_ms == 0xFFFFFFFF: wait forever); write sends n bytes. */
typedef struct {
    int (*read_byte)(void *ctx, uint32_t timeout_ms);
    void (*write)(void *ctx, const uint8_t *data, uint32_t n);
    void *ctx;
} bnn_serial_io;

/* The network served. run: one inference from in_data to out_data; 0 on success, otherwise a
 * status reported in an ERROR frame. cycles (may be NULL): a free-running cycle counter read
 * before and after run (e.g. DWT->CYCCNT). init_status != 0: every RUN answers BNN_ERR_INIT. */
typedef struct {
    const char *name;
    uint32_t in_size, out_size;
    uint8_t in_format, out_format; /* ai_buffer_format values */
    uint8_t *in_data;
    const uint8_t *out_data;
    int32_t (*run)(void *user);
    uint32_t (*cycles)(void);
    void *user;
    int32_t init_status;
} bnn_serial_model;

/* CRC-32 (reflected, 0xEDB88320). Start with crc = 0, pass the previous result to continue. */
uint32_t bnn_crc32(uint32_t crc, const uint8_t *data, uint32_t n);

/* Send one frame. */
void bnn_serial_send(const bnn_serial_io *io, uint8_t cmd, const uint8_t *payload, uint32_t n);

/* Wait for one request (forever for its first byte) and answer it. Returns the command served,
 * or -(error code) when an ERROR frame was sent instead. */
int bnn_serial_serve_one(const bnn_serial_io *io, const bnn_serial_model *model);

/* Serve requests forever. */
void bnn_serial_serve(const bnn_serial_io *io, const bnn_serial_model *model)
    __attribute__((noreturn));

/* ---- CMSDK APB UART (QEMU mps2-an500: UART0 at 0x40004000, 25 MHz APB clock) ---------------- */
#define BNN_CMSDK_UART0_BASE 0x40004000u
#define BNN_MPS2_PCLK_HZ 25000000u

/* poll iterations per millisecond of a read timeout (an estimate; no timer is used) */
#ifndef BNN_UART_POLLS_PER_MS
#define BNN_UART_POLLS_PER_MS 2000u
#endif

typedef struct {
    uintptr_t base;
} bnn_uart_cmsdk;

/* Enable TX and RX with BAUDDIV = pclk_hz / baud (QEMU needs BAUDDIV >= 16 to move data). */
void bnn_uart_cmsdk_init(bnn_uart_cmsdk *uart, uintptr_t base, uint32_t pclk_hz, uint32_t baud);
int bnn_uart_cmsdk_read_byte(void *uart, uint32_t timeout_ms);
void bnn_uart_cmsdk_write(void *uart, const uint8_t *data, uint32_t n);

#ifdef __cplusplus
}
#endif

#endif /* BNN_SERIAL_H */
