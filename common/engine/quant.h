/* quant.h - base-weight storage formats and panel dequantization.
 *
 * The frozen matrices of a base model (the projections, and per
 * fp_table_dtype the embeddings and lm_head) may be stored in one of:
 *   FP_BASE_F32   4 bytes/value, used in place (no conversion)
 *   FP_BASE_BF16  2 bytes/value: the high half of the f32, rounded to nearest even
 *   FP_BASE_INT8  1 byte/value + one f32 scale per output row (symmetric:
 *               scale = absmax/127, q = round(w/scale) in [-127, 127])
 *   FP_BASE_NF4   4 bits/value + one f32 absmax per block of 64 consecutive values of
 *               the row-major matrix (QLoRA's NormalFloat-4 code, the table
 *               bitsandbytes publishes; value = code[nibble] * absmax). Two values
 *               per byte, the first in the high nibble, as bitsandbytes packs them.
 *               No double quantization of the absmax.
 *
 * Matrices are [rows][cols] row-major (rows = output features, as nn.Linear).
 * Matmuls never make a whole f32 copy: fp_qmat_xwt / fp_qmat_dyw dequantize a
 * panel of rows at a time into a caller-owned buffer of fp_qpanel_floats(cols)
 * floats and call sgemm on it. LoRA factors, gradients and optimizer state stay f32.
 */
#ifndef FP_QUANT_H
#define FP_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "fp_error.h"

typedef enum { FP_BASE_F32, FP_BASE_BF16, FP_BASE_INT8, FP_BASE_NF4 } fp_base_dtype;

#define FP_NF4_BLOCK 64

/* The 16 NF4 code values (QLoRA appendix E / bitsandbytes functional.py). */
extern const float fp_nf4_code[16];

/* "f32", "bf16", "int8", "nf4". */
const char *fp_base_dtype_name(fp_base_dtype dt);
/* Parses a name above; -1 (error set, naming the choices) otherwise. */
int fp_base_dtype_parse(const char *s, fp_base_dtype *out) FP_WUR;

/* The format a base of format dt holds its embedding table and lm_head in: dt
 * itself, but bf16 for nf4, as QLoRA keeps them in 16 bits (measured on
 * stories260K: 4-bit tables raise the loss 18.7% over f32's, bf16 ones 12.7%). */
fp_base_dtype fp_table_dtype(fp_base_dtype dt);

/* A view of one quantized matrix; data and scale point into the owner's slabs. */
typedef struct {
    fp_base_dtype dt;
    int rows, cols;
    const void *data;       /* bf16: uint16[rows*cols]; int8: int8[rows*cols]; nf4: bytes */
    const float *scale;     /* int8: [rows]; nf4: [ceil(rows*cols/64)]; else NULL */
} fp_qmat;

/* Bytes of data and floats of scale a rows x cols matrix needs in format dt. */
size_t fp_quant_data_bytes(fp_base_dtype dt, size_t rows, size_t cols);
size_t fp_quant_scale_floats(fp_base_dtype dt, size_t rows, size_t cols);

/* Quantizes src (rows x cols f32) into data/scale (sized as above). */
void fp_quantize(fp_base_dtype dt, const float *src, size_t rows, size_t cols, void *data,
                 float *scale);

/* Nearest NF4 code index of a value in [-1, 1] (bf16 rounding is
 * fp_f32_to_bf16 in safetensors.h). */
int fp_nf4_index(float normalized);

/* out (nr x cols) = rows [r0, r0 + nr) of m in f32, by the fastest path this CPU
 * has (AVX2 for nf4, chosen at run time). */
void fp_qmat_dequant_rows(const fp_qmat *m, int r0, int nr, float *out);
/* The same by the portable loops only: the reference the fast paths must equal
 * bit for bit (tests). */
void fp_qmat_dequant_rows_portable(const fp_qmat *m, int r0, int nr, float *out);

/* Floats of the panel buffer the matmuls below need for a matrix of `cols`
 * columns (at most 1M floats, i.e. 4 MB, and at least one row). */
size_t fp_qpanel_floats(int cols);

// y (N,rows) = x (N,cols) W^T + beta * y; ldy = row stride of y
void fp_qmat_xwt(const fp_qmat *m, int N, const float *x, float beta, float *y, int ldy,
                 float *panel);
// dx (N,cols) = beta * dx + dy (N,rows) W
void fp_qmat_dyw(const fp_qmat *m, int N, const float *dy, float beta, float *dx, float *panel);
// y (rows) = W x  (generation)
void fp_qmat_gemv(const fp_qmat *m, const float *x, float *y, float *panel);

#endif
