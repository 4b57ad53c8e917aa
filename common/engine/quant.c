/* quant.c - bf16 / int8 / nf4 storage of frozen matrices and panel matmuls (see quant.h). */
#include "quant.h"

#include "safetensors.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

/* x86-64 builds target x86-64-v2; wider paths are compiled per function and
 * chosen at run time, the portable loops staying the reference. */
#if defined(__x86_64__) && defined(__GNUC__)
#define FP_X86_DISPATCH 1
#include <immintrin.h>
#else
#define FP_X86_DISPATCH 0
#endif

const float fp_nf4_code[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
};

static const char *const names[] = {"f32", "bf16", "int8", "nf4"};

const char *fp_base_dtype_name(fp_base_dtype dt)
{
    return (unsigned)dt < 4 ? names[dt] : "?";
}

int fp_base_dtype_parse(const char *s, fp_base_dtype *out)
{
    for (int i = 0; i < 4; i++)
        if (s && strcmp(s, names[i]) == 0) {
            *out = (fp_base_dtype)i;
            return 0;
        }
    return fp_error_set("base dtype '%s': expected f32, bf16, int8 or nf4", s ? s : "");
}

fp_base_dtype fp_table_dtype(fp_base_dtype dt)
{
    return dt == FP_BASE_NF4 ? FP_BASE_BF16 : dt;
}

size_t fp_quant_data_bytes(fp_base_dtype dt, size_t rows, size_t cols)
{
    size_t n = rows * cols;
    switch (dt) {
    case FP_BASE_F32: return n * 4;
    case FP_BASE_BF16: return n * 2;
    case FP_BASE_INT8: return n;
    case FP_BASE_NF4: return (n + 1) / 2;
    }
    return 0;
}

size_t fp_quant_scale_floats(fp_base_dtype dt, size_t rows, size_t cols)
{
    if (dt == FP_BASE_INT8)
        return rows;
    if (dt == FP_BASE_NF4)
        return (rows * cols + FP_NF4_BLOCK - 1) / FP_NF4_BLOCK;
    return 0;
}

/* Nearest code by the midpoints between sorted codes (as bitsandbytes' quantize). */
int fp_nf4_index(float x)
{
    int lo = 0;
    for (int i = 1; i < 16; i++)
        if (x > 0.5f * (fp_nf4_code[i - 1] + fp_nf4_code[i]))
            lo = i;
    return lo;
}

void fp_quantize(fp_base_dtype dt, const float *src, size_t rows, size_t cols, void *data,
                 float *scale)
{
    size_t n = rows * cols;
    if (dt == FP_BASE_F32) {
        memcpy(data, src, n * sizeof(float));
    } else if (dt == FP_BASE_BF16) {
        uint16_t *d = data;
        for (size_t i = 0; i < n; i++)
            d[i] = fp_f32_to_bf16(src[i]);
    } else if (dt == FP_BASE_INT8) {
        int8_t *d = data;
        for (size_t r = 0; r < rows; r++) {
            const float *s = src + r * cols;
            float mx = 0.0f;
            for (size_t c = 0; c < cols; c++)
                mx = fabsf(s[c]) > mx ? fabsf(s[c]) : mx;
            float sc = mx / 127.0f, inv = mx > 0.0f ? 127.0f / mx : 0.0f;
            scale[r] = sc;
            for (size_t c = 0; c < cols; c++) {
                float q = roundf(s[c] * inv);
                d[r * cols + c] = (int8_t)(q > 127.0f ? 127 : q < -127.0f ? -127 : q);
            }
        }
    } else {
        uint8_t *d = data;
        memset(d, 0, (n + 1) / 2);
        for (size_t b0 = 0; b0 < n; b0 += FP_NF4_BLOCK) {
            size_t b1 = b0 + FP_NF4_BLOCK < n ? b0 + FP_NF4_BLOCK : n;
            float mx = 0.0f;
            for (size_t i = b0; i < b1; i++)
                mx = fabsf(src[i]) > mx ? fabsf(src[i]) : mx;
            scale[b0 / FP_NF4_BLOCK] = mx;
            float inv = mx > 0.0f ? 1.0f / mx : 0.0f;
            for (size_t i = b0; i < b1; i++) {
                unsigned q = (unsigned)fp_nf4_index(src[i] * inv);
                d[i / 2] |= (uint8_t)(i & 1 ? q : q << 4);
            }
        }
    }
}

/* Decodes `pairs` bytes of one NF4 block (two values each, high nibble first)
 * scaled by the block's absmax a. Every implementation writes code[k] * a, one
 * f32 multiply, so they agree bit for bit. */
typedef void nf4_run_fn(const uint8_t *p, size_t pairs, float a, float *out);

static void nf4_run_portable(const uint8_t *restrict p, size_t pairs, float a,
                             float *restrict out)
{
    float lut[16];
    for (int k = 0; k < 16; k++)
        lut[k] = fp_nf4_code[k] * a;
    for (size_t k = 0; k < pairs; k++) {
        out[2 * k] = lut[p[k] >> 4];
        out[2 * k + 1] = lut[p[k] & 15];
    }
}

#if FP_X86_DISPATCH
/* The 16 scaled codes live in two registers (codes 0-7, 8-15): a permute by the
 * nibble's low 3 bits from each, and a blend on its bit 3 picks the value. The
 * scalar table loop was about half of nf4's matmul overhead. */
__attribute__((target("avx2"))) static inline __m256 nf4_decode8(uint32_t bytes4, __m256 lo,
                                                                 __m256 hi)
{
    /* lane 2j takes byte j's high nibble, lane 2j+1 its low one */
    const __m256i shift = _mm256_setr_epi32(4, 0, 12, 8, 20, 16, 28, 24);
    __m256i idx = _mm256_srlv_epi32(_mm256_set1_epi32((int)bytes4), shift);
    __m256 bit3 = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx),
                            _mm256_permutevar8x32_ps(hi, idx), bit3);
}

__attribute__((target("avx2"))) static void nf4_run_avx2(const uint8_t *restrict p, size_t pairs,
                                                         float a, float *restrict out)
{
    __m256 va = _mm256_set1_ps(a);
    __m256 lo = _mm256_mul_ps(_mm256_loadu_ps(fp_nf4_code), va);
    __m256 hi = _mm256_mul_ps(_mm256_loadu_ps(fp_nf4_code + 8), va);
    size_t k = 0;
    for (; k + 8 <= pairs; k += 8) {
        uint32_t w[2];
        memcpy(w, p + k, 8);
        _mm256_storeu_ps(out + 2 * k, nf4_decode8(w[0], lo, hi));
        _mm256_storeu_ps(out + 2 * k + 8, nf4_decode8(w[1], lo, hi));
    }
    /* The tail stays in this function: a call into the SSE-encoded portable loop
     * with the upper halves dirty would pay the AVX-SSE transition (GCC 12 puts
     * no vzeroupper before a tail call), measured 5x slower. */
    float lut[16];
    _mm256_storeu_ps(lut, lo);
    _mm256_storeu_ps(lut + 8, hi);
    for (; k < pairs; k++) {
        out[2 * k] = lut[p[k] >> 4];
        out[2 * k + 1] = lut[p[k] & 15];
    }
}
#endif

static nf4_run_fn *nf4_run_fast(void)
{
#if FP_X86_DISPATCH
    if (__builtin_cpu_supports("avx2"))
        return nf4_run_avx2;
#endif
    return nf4_run_portable;
}

/* NF4 elements [e0, e1) of the flattened matrix into out. */
static void nf4_dequant(const uint8_t *restrict d, const float *restrict absmax, size_t e0,
                        size_t e1, float *restrict out, nf4_run_fn *run)
{
    size_t i = e0;
    if (i < e1 && (i & 1)) {
        *out++ = fp_nf4_code[d[i / 2] & 15] * absmax[i / FP_NF4_BLOCK];
        i++;
    }
    while (i < e1) {
        size_t bend = (i / FP_NF4_BLOCK + 1) * FP_NF4_BLOCK;
        if (bend > e1)
            bend = e1;
        float a = absmax[i / FP_NF4_BLOCK];
        size_t pairs = (bend - i) / 2;
        run(d + i / 2, pairs, a, out);
        out += 2 * pairs;
        i += 2 * pairs;
        if (i < bend) {     /* odd tail: only at the end of the range */
            *out++ = fp_nf4_code[d[i / 2] >> 4] * a;
            i++;
        }
    }
}

static void dequant_rows(const fp_qmat *m, int r0, int nr, float *restrict out, int fast)
{
    size_t cols = (size_t)m->cols, e0 = (size_t)r0 * cols, n = (size_t)nr * cols;
    switch (m->dt) {
    case FP_BASE_F32:
        memcpy(out, (const float *)m->data + e0, n * sizeof(float));
        break;
    case FP_BASE_BF16: {
        const uint16_t *restrict d = (const uint16_t *)m->data + e0;
        uint32_t *restrict o = (uint32_t *)out;
#pragma omp simd
        for (size_t i = 0; i < n; i++)
            o[i] = (uint32_t)d[i] << 16;
        break;
    }
    case FP_BASE_INT8:
        for (int r = 0; r < nr; r++) {
            const int8_t *restrict d = (const int8_t *)m->data + (size_t)(r0 + r) * cols;
            float s = m->scale[r0 + r], *restrict o = out + (size_t)r * cols;
#pragma omp simd
            for (size_t c = 0; c < cols; c++)
                o[c] = (float)d[c] * s;
        }
        break;
    case FP_BASE_NF4:
        nf4_dequant(m->data, m->scale, e0, e0 + n, out, fast ? nf4_run_fast() : nf4_run_portable);
        break;
    }
}

void fp_qmat_dequant_rows(const fp_qmat *m, int r0, int nr, float *restrict out)
{
    dequant_rows(m, r0, nr, out, 1);
}

void fp_qmat_dequant_rows_portable(const fp_qmat *m, int r0, int nr, float *restrict out)
{
    dequant_rows(m, r0, nr, out, 0);
}

#define PANEL_FLOATS ((size_t)1 << 20)

static int panel_rows(const fp_qmat *m)
{
    size_t p = PANEL_FLOATS / (size_t)m->cols;
    if (p < 1)
        p = 1;
    return p > (size_t)m->rows ? m->rows : (int)p;
}

size_t fp_qpanel_floats(int cols)
{
    return (size_t)cols > PANEL_FLOATS ? (size_t)cols : PANEL_FLOATS;
}

void fp_qmat_xwt(const fp_qmat *m, int N, const float *x, float beta, float *y, int ldy,
                 float *panel)
{
    if (m->dt == FP_BASE_F32) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, m->rows, m->cols, 1.0f, x,
                    m->cols, m->data, m->cols, beta, y, ldy);
        return;
    }
    int P = panel_rows(m);
    for (int r0 = 0; r0 < m->rows; r0 += P) {
        int nr = m->rows - r0 < P ? m->rows - r0 : P;
        fp_qmat_dequant_rows(m, r0, nr, panel);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, nr, m->cols, 1.0f, x, m->cols,
                    panel, m->cols, beta, y + r0, ldy);
    }
}

void fp_qmat_dyw(const fp_qmat *m, int N, const float *dy, float beta, float *dx, float *panel)
{
    if (m->dt == FP_BASE_F32) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, m->cols, m->rows, 1.0f, dy,
                    m->rows, m->data, m->cols, beta, dx, m->cols);
        return;
    }
    int P = panel_rows(m);
    for (int r0 = 0; r0 < m->rows; r0 += P) {
        int nr = m->rows - r0 < P ? m->rows - r0 : P;
        fp_qmat_dequant_rows(m, r0, nr, panel);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, m->cols, nr, 1.0f, dy + r0,
                    m->rows, panel, m->cols, r0 == 0 ? beta : 1.0f, dx, m->cols);
    }
}

void fp_qmat_gemv(const fp_qmat *m, const float *x, float *y, float *panel)
{
    if (m->dt == FP_BASE_F32) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, m->rows, m->cols, 1.0f, m->data, m->cols, x, 1,
                    0.0f, y, 1);
        return;
    }
    int P = panel_rows(m);
    for (int r0 = 0; r0 < m->rows; r0 += P) {
        int nr = m->rows - r0 < P ? m->rows - r0 : P;
        fp_qmat_dequant_rows(m, r0, nr, panel);
        cblas_sgemv(CblasRowMajor, CblasNoTrans, nr, m->cols, 1.0f, panel, m->cols, x, 1, 0.0f,
                    y + r0, 1);
    }
}
