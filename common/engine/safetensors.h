/* safetensors.h - read and write Hugging Face safetensors files.
 *
 * Format (https://huggingface.co/docs/safetensors):
 *   u64 little-endian N | N bytes of UTF-8 JSON header | data
 *   header: { "__metadata__": {str: str, ...}?,
 *             "name": {"dtype": "F32"|"F16"|"BF16"|..., "shape": [d0, ...],
 *                      "data_offsets": [begin, end]}, ... }
 *   Offsets are relative to the start of the data section; each tensor is
 *   row-major, little-endian. We validate every claim of the header against the
 *   file before trusting it: header length, offsets inside the file, offsets
 *   consistent with dtype x shape, no overlaps.
 */
#ifndef FP_SAFETENSORS_H
#define FP_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "fp_error.h"

#define FP_ST_MAX_DIMS 8

typedef enum { FP_DT_F32, FP_DT_F16, FP_DT_BF16, FP_DT_OTHER } fp_dtype;

typedef struct {
    char *name;
    fp_dtype dtype;
    char dtype_name[16];          /* as written in the header, e.g. "F32" */
    int ndim;
    int64_t shape[FP_ST_MAX_DIMS];
    size_t numel;
    size_t begin, end;            /* byte offsets in the data section */
} fp_st_tensor;

typedef struct fp_safetensors fp_safetensors;   /* opaque */

/* Opens and validates `path` (mmap). NULL with fp_error set on failure;
 * caller destroys with fp_st_close. */
fp_safetensors *fp_st_open(const char *path) FP_WUR;
void fp_st_close(fp_safetensors **self_p);

const char *fp_st_path(const fp_safetensors *self);
size_t fp_st_count(const fp_safetensors *self);
const fp_st_tensor *fp_st_at(const fp_safetensors *self, size_t i);
/* NULL if absent (no error set). */
const fp_st_tensor *fp_st_find(const fp_safetensors *self, const char *name);
/* Value of a __metadata__ key, or NULL. */
const char *fp_st_metadata(const fp_safetensors *self, const char *key);

/* Tensor t's bytes inside the read-only mapping (valid until fp_st_close; the
 * mapping is page-aligned, the pointer only as aligned as t->begin makes it). */
const void *fp_st_data(const fp_safetensors *self, const fp_st_tensor *t);

/* Drops t's pages from this process (not from the page cache): for a tensor
 * that was converted and will not be read again. Harmless to neighbours. */
void fp_st_release(const fp_safetensors *self, const fp_st_tensor *t);

/* Converts tensor `t` (F32, F16 or BF16) to float32 into dst, which holds `n`
 * floats; n must equal t->numel. -1 with an error naming file and tensor. */
int fp_st_read_f32(const fp_safetensors *self, const fp_st_tensor *t, float *dst, size_t n) FP_WUR;

/* Checks that `t` has exactly the given shape; error names file, tensor,
 * expected and actual shapes. */
int fp_st_check_shape(const fp_safetensors *self, const fp_st_tensor *t, int ndim,
                      const int64_t *shape) FP_WUR;

/* One tensor to write: float32 data, row-major. */
typedef struct {
    const char *name;
    const float *data;
    int ndim;
    int64_t shape[FP_ST_MAX_DIMS];
} fp_st_entry;

/* Writes an F32 safetensors file atomically (temp file, fsync, rename).
 * meta: NULL or a NULL-terminated list of key, value, key, value, ... strings
 * stored under "__metadata__". Tensors are written in the given order. */
int fp_st_write_f32(const char *path, const fp_st_entry *entries, size_t n,
                    const char *const *meta) FP_WUR;

/* Half-precision helpers (also used by tests). */
float fp_f16_to_f32(uint16_t h);
float fp_bf16_to_f32(uint16_t h);
uint16_t fp_f32_to_f16(float f);
uint16_t fp_f32_to_bf16(float f);

#endif
