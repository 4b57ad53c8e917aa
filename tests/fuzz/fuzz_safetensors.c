/* fuzz_safetensors.c - fp_st_open on a file's bytes: the u64 header length,
 * the JSON header and every claim in it (dtype, shape, offsets) against the
 * file, then reading each tensor it accepted as float32.
 *
 * The input is the whole file. Every tensor the header validated must be
 * readable at its numel (the data section was checked to hold it), and a
 * wrong count must be refused. */
#undef NDEBUG /* the harnesses check with assert */
#include <assert.h>
#include <stdlib.h>

#include "fuzz_util.h"
#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    const char *path = fz_write("input", data, len, 0600);
    fp_safetensors *st = fp_st_open(path);
    if (!fz_verdict("fp_st_open", st != NULL))
        return 0;
    size_t n = fp_st_count(st);
    (void)fp_st_metadata(st, "format");
    for (size_t i = 0; i < n; i++) {
        const fp_st_tensor *t = fp_st_at(st, i);
        assert(t && t->name && t->end >= t->begin && t->end - t->begin <= len);
        assert(fp_st_find(st, t->name) != NULL);
        if (t->dtype == FP_DT_OTHER || t->numel > (1u << 20))
            continue;
        float *dst = malloc((t->numel + 1) * sizeof(float));
        assert(dst);
        int rc = fp_st_read_f32(st, t, dst, t->numel);
        assert(rc == 0);
        assert(fp_st_read_f32(st, t, dst, t->numel + 1) != 0);
        if (t->ndim >= 1)
            (void)fp_st_check_shape(st, t, t->ndim, t->shape);
        free(dst);
    }
    fp_st_close(&st);
    assert(!st);
    return 0;
}
