/*
 * ai_platform.h (bnncube): the types of the legacy X-CUBE-AI network API, written for bnncube.
 *
 * Applications written against X-CUBE-AI's `ai_<name>_*` functions use these names: handles,
 * errors, buffers with their shape and quantization info, the network report. The layout is
 * bnncube's own; the names, the meaning of each field and the calling conventions follow the
 * documented API (docs/generate.md lists them).
 */
#ifndef AI_PLATFORM_H
#define AI_PLATFORM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define AI_PLATFORM_BNNCUBE 1

typedef void *ai_handle;
typedef const void *ai_handle_const;
#define AI_HANDLE_NULL ((ai_handle)0)

typedef uint8_t ai_bool;
#define AI_TRUE ((ai_bool)1)
#define AI_FALSE ((ai_bool)0)

typedef int8_t ai_i8;
typedef uint8_t ai_u8;
typedef int16_t ai_i16;
typedef uint16_t ai_u16;
typedef int32_t ai_i32;
typedef uint32_t ai_u32;
typedef int64_t ai_i64;
typedef uint64_t ai_u64;
typedef float ai_float;
typedef uint32_t ai_size;
typedef uint32_t ai_flags;
typedef uint32_t ai_shape_dimension;

/* ---- errors ---------------------------------------------------------------------------- */

typedef enum {
    AI_ERROR_NONE = 0x00,
    AI_ERROR_TOOL_PLATFORM_API_MISMATCH = 0x01,
    AI_ERROR_TYPES_MISMATCH = 0x02,
    AI_ERROR_INVALID_HANDLE = 0x10,
    AI_ERROR_INVALID_STATE = 0x11,
    AI_ERROR_INVALID_INPUT = 0x12,
    AI_ERROR_INVALID_OUTPUT = 0x13,
    AI_ERROR_INVALID_PARAM = 0x14,
    AI_ERROR_INVALID_SIGNATURE = 0x15,
    AI_ERROR_INVALID_SIZE = 0x16,
    AI_ERROR_INVALID_VALUE = 0x17,
    AI_ERROR_INIT_FAILED = 0x30,
    AI_ERROR_ALLOCATION_FAILED = 0x31,
    AI_ERROR_DEALLOCATION_FAILED = 0x32,
    AI_ERROR_CREATE_FAILED = 0x33
} ai_error_type;

typedef enum {
    AI_ERROR_CODE_NONE = 0x0000,
    AI_ERROR_CODE_NETWORK = 0x0010,
    AI_ERROR_CODE_NETWORK_PARAMS = 0x0011,
    AI_ERROR_CODE_NETWORK_WEIGHTS = 0x0012,
    AI_ERROR_CODE_NETWORK_ACTIVATIONS = 0x0013,
    AI_ERROR_CODE_LAYER = 0x0014,
    AI_ERROR_CODE_TENSOR = 0x0015,
    AI_ERROR_CODE_ARRAY = 0x0016,
    AI_ERROR_CODE_INVALID_PTR = 0x0017,
    AI_ERROR_CODE_INVALID_SIZE = 0x0018,
    AI_ERROR_CODE_INVALID_FORMAT = 0x0019,
    AI_ERROR_CODE_OUT_OF_RANGE = 0x0020,
    AI_ERROR_CODE_INVALID_BATCH = 0x0021,
    AI_ERROR_CODE_MISSED_INIT = 0x0030,
    AI_ERROR_CODE_IN_USE = 0x0040,
    AI_ERROR_CODE_LOCK = 0x0041
} ai_error_code;

/* type: an ai_error_type; code: an ai_error_code (for a layer failure: the layer index is in
 * the upper bits, see AI_ERROR_LAYER_INDEX) */
typedef struct {
    unsigned int type : 8;
    unsigned int code : 24;
} ai_error;

#define AI_ERROR_LAYER_INDEX(err) ((int)((err).code >> 8))

/* ---- buffers --------------------------------------------------------------------------- */

typedef enum {
    AI_BUFFER_FORMAT_NONE = 0x00,
    AI_BUFFER_FORMAT_FLOAT = 0x01,
    AI_BUFFER_FORMAT_U8 = 0x02,
    AI_BUFFER_FORMAT_S8 = 0x03,
    AI_BUFFER_FORMAT_S32 = 0x04,
    AI_BUFFER_FORMAT_U32 = 0x05 /* bitpacked binary values, 32 channels per word */
} ai_buffer_format;

/* Bytes per element of a buffer format. */
#define AI_BUFFER_FORMAT_BYTES(fmt) \
    (((fmt) == AI_BUFFER_FORMAT_FLOAT || (fmt) == AI_BUFFER_FORMAT_S32 || \
      (fmt) == AI_BUFFER_FORMAT_U32) ? 4 : 1)

/* Quantization of a buffer: real = scale * (q - zero_point). */
typedef struct {
    const ai_float *scale;
    const void *zeropoint; /* ai_i8 or ai_u8, as the buffer's format */
} ai_intq_info;

typedef struct {
    ai_u16 flags;
    ai_u16 size; /* number of (scale, zero point) pairs: 1 per tensor */
    const ai_intq_info *info;
} ai_intq_info_list;

#define AI_BUFFER_META_FLAG_SCALE_FLOAT 0x1u
#define AI_BUFFER_META_FLAG_ZEROPOINT_S8 0x2u
#define AI_BUFFER_META_FLAG_ZEROPOINT_U8 0x4u

typedef struct {
    ai_u32 flags;
    const ai_intq_info_list *intq_info;
} ai_buffer_meta_info;

#define AI_BUFFER_META_INFO_INTQ_GET_SCALE(meta, idx) \
    ((meta) && (meta)->intq_info ? (meta)->intq_info->info[idx].scale[0] : 0.0f)
#define AI_BUFFER_META_INFO_INTQ_GET_ZEROPOINT(meta, idx) \
    ((meta) && (meta)->intq_info                               \
         ? (((meta)->intq_info->flags & AI_BUFFER_META_FLAG_ZEROPOINT_U8)          \
                ? (ai_i32)((const ai_u8 *)(meta)->intq_info->info[idx].zeropoint)[0] \
                : (ai_i32)((const ai_i8 *)(meta)->intq_info->info[idx].zeropoint)[0]) \
         : 0)

/* Shape: dimensions in `data` (batch, height, width, channels for 4-D tensors). */
typedef struct {
    ai_u32 type;
    ai_u32 size;
    const ai_shape_dimension *data;
} ai_buffer_shape;

#define AI_SHAPE_BHWC 1u
#define AI_BUFFER_FLAG_NONE 0x0u
#define AI_BUFFER_FLAG_IS_IO 0x1u     /* an input or output buffer */
#define AI_BUFFER_FLAG_ALLOCATED 0x2u /* `data` points inside the activations buffer */

typedef struct {
    ai_buffer_format format;
    ai_handle data;
    const ai_buffer_meta_info *meta_info;
    ai_flags flags;
    ai_size size; /* number of elements of one batch item */
    ai_buffer_shape shape;
} ai_buffer;

/* Number of bytes of one batch item of a buffer. */
#define AI_BUFFER_BYTE_SIZE(count, fmt) ((ai_size)((count) * AI_BUFFER_FORMAT_BYTES(fmt)))

/* A plain buffer (weights or activations) for ai_<name>_init. */
#define AI_BUFFER_INIT_RAW(ptr, nbytes)                                                     \
    {                                                                                        \
        AI_BUFFER_FORMAT_U8, (ai_handle)(ptr), (const ai_buffer_meta_info *)0,               \
            AI_BUFFER_FLAG_NONE, (ai_size)(nbytes), { AI_SHAPE_BHWC, 0u, (const ai_shape_dimension *)0 } \
    }

typedef struct {
    ai_buffer params;      /* the weights */
    ai_buffer activations; /* the activations buffer (the arena) */
} ai_network_params;

typedef struct {
    ai_u32 major, minor, micro, reserved;
} ai_platform_version;

typedef struct {
    const char *model_name;
    const char *model_signature;
    const char *model_datetime;   /* "" unless given at generation time */
    const char *compile_datetime; /* "" unless given at generation time */
    const char *runtime_revision;
    ai_platform_version runtime_version;
    const char *tool_revision;
    ai_platform_version tool_version;
    ai_platform_version tool_api_version;
    ai_platform_version api_version;
    ai_platform_version interface_api_version;
    ai_u64 n_macc;
    ai_u16 n_inputs;
    ai_u16 n_outputs;
    ai_buffer *inputs;
    ai_buffer *outputs;
    ai_buffer params;
    ai_buffer activations;
    ai_u32 n_nodes;
    ai_u32 signature;
} ai_network_report;

#ifdef __cplusplus
}
#endif

#endif /* AI_PLATFORM_H */
