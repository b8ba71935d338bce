/* Test fixture: the runtime's internal affine requantization (bnn_requant.h bnn_affine) over a
 * batch of cases, for tests/test_c_affine.py. Not part of the runtime. */
#include <stdint.h>

#include "bnn_requant.h"

int32_t fx_affine_batch(const int32_t *acc, const int32_t *mult, const int64_t *offset,
                        const int8_t *shift, const int32_t *bounds, int32_t n, int32_t *out);

int32_t fx_affine_batch(const int32_t *acc, const int32_t *mult, const int64_t *offset,
                        const int8_t *shift, const int32_t *bounds, int32_t n, int32_t *out)
{
    int32_t i;
    for (i = 0; i < n; ++i) {
        out[i] = bnn_affine(acc[i], mult[i], offset[i], shift[i], bounds[2 * i],
                            bounds[2 * i + 1]);
    }
    return n;
}
