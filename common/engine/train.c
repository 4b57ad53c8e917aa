/* train.c - forward and backward of a LoRA-adapted LLaMA over a batch (see train.h).
 *
 * Shapes: N = B*T rows, C = dim, KV = kv_dim, H = hidden_dim, V = vocab,
 * hd = head_dim, r = LoRA rank. Every frozen matmul is ONE cblas_sgemm over all
 * N rows (x W^T forward, dy W backward); attention is two sgemms per
 * (batch row, head, block of QB queries). The base model is read-only; only
 * the LoRA slab gets gradients, and backward stops below the lowest targeted
 * module.
 *
 * Memory: we keep what backward cannot cheaply recompute (residual streams,
 * post-RoPE q/k, v, attention output, gate/up pre-activations, LoRA x A^T) and
 * recompute the rest (normalized inputs, silu(gate)*up, the attention matrix
 * from q, k and the saved log-sum-exp), so memory grows with T, not T^2.
 */
#include "train.h"

/* Nothing here relies on floating-point traps; without this GCC will not
 * if-convert the clamps in vexpf and leaves the exp loops scalar. */
#pragma GCC optimize("no-trapping-math")

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"

/* Attention works on blocks of QB query rows: block [i0, i0+rows) only sees
 * keys [0, i0+rows), so the causal upper triangle is mostly never computed. */
#define QB 64

/* Threads: OpenBLAS's own. The elementwise loops are vectorized (omp simd)
 * but not threaded: OpenMP workers spinning after a parallel region steal the
 * core OpenBLAS's worker needs; measured on 2 cores with 2 BLAS threads,
 * threaded loops made a step 1.7x slower, and passive waiting gained only 2%. */

/* expf that vectorizes (Cephes: Cody-Waite reduction, degree-6 polynomial;
 * max relative error ~1e-7 against exp). glibc's expf stays scalar without
 * -ffast-math, and exp is most of the elementwise time (softmax, SiLU, loss).
 * Inputs below -87.3 give 1.2e-38 instead of smaller; NaN stays NaN. */
static inline float vexpf(float x)
{
    float xc = x > -87.3f ? x : -87.3f;
    xc = xc < 88.3f ? xc : 88.3f;
    float n = floorf(xc * 1.44269504088896341f + 0.5f);
    float r = xc - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { uint32_t u; float f; } two_n = { .u = (uint32_t)((int32_t)n + 127) << 23 };
    float y = p * two_n.f;
    return x != x ? x : y;
}

struct fp_train {
    const fp_model *model;
    const fp_lora *lora;
    int B, T;
    size_t N;
    float s;                    /* LoRA scale */
    int first_stage;            /* lowest targeted stage: 4l + {qkv 0, o 1, gate/up 2, down 3} */
    int ckpt;                   /* checkpointing: the [L] buffers below hold one layer */
    size_t saved_floats;        /* floats of activations kept for backward */
    /* dropout state of the current step */
    int drop_on;
    float drop_p;
    uint64_t drop_seed;

    float *slab;                /* everything below is carved from here */
    float *rope_cos, *rope_sin; /* [T][hd/2] */
    /* saved activations; with checkpointing only res keeps every layer, the
     * others ([L] below) hold the one layer backward is in, recomputed from res */
    float *res;                 /* [L+1][N][C] input of layer l; res[L] feeds the final norm */
    float *res2;                /* [L][N][C] residual after attention */
    float *rstd1, *rstd2;       /* [L][N] */
    float *q;                   /* [L][N][C] after RoPE */
    float *k, *v;               /* [L][N][KV] (k after RoPE) */
    float *lse;                 /* [L][B][nh][T] softmax log-sum-exp per query */
    float *atty;                /* [L][N][C] attention output (input of o_proj) */
    float *gate, *up;           /* [L][N][H] pre-activations */
    float *xa;                  /* [L][FP_T_COUNT][N][r] drop(x) A^T (lora only) */
    float *rstdf;               /* [N] */
    float *xnf;                 /* [N][C] */
    float *logits;              /* [N][V] */
    /* scratch */
    float *xn;                  /* [N][C] */
    float *act;                 /* [N][H] */
    float *att, *datt;          /* [QB][T] */
    float *panel;               /* dequantized rows of a quantized base matrix */
    /* backward (lora only) */
    float *dlogits;             /* [N][V] */
    float *dres, *dxn;          /* [N][C] */
    float *dy;                  /* [N][max(C,H)] */
    float *dq;                  /* [N][C] */
    float *dk, *dv;             /* [N][KV] */
    float *dgate, *dup;         /* [N][H] */
    float *dxa;                 /* [N][r] */
    float *mask, *xd, *dxl;     /* [N][max(C,H)] dropout only */
};

/* ---------------------------------------------------------------------------
 * Layers. Each pair works on all N rows at once. */

// out, x are (N,C), w is (C); rstd is (N)
static void rmsnorm_forward(float *restrict out, float *restrict rstd, const float *restrict x,
                            const float *restrict w, size_t N, int C, float eps)
{
    for (size_t n = 0; n < N; n++) {
        const float *xr = x + n * (size_t)C;
        float *o = out + n * (size_t)C;
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int i = 0; i < C; i++)
            ss += xr[i] * xr[i];
        float r = 1.0f / sqrtf(ss / (float)C + eps);
#pragma omp simd
        for (int i = 0; i < C; i++)
            o[i] = xr[i] * r * w[i];
        if (rstd)
            rstd[n] = r;
    }
}

// recomputes the normalized input from the saved rstd: out, x (N,C)
static void rmsnorm_recompute(float *restrict out, const float *restrict x, const float *restrict rstd,
                              const float *restrict w, size_t N, int C)
{
    for (size_t n = 0; n < N; n++) {
        const float *xr = x + n * (size_t)C;
        float *o = out + n * (size_t)C;
        float r = rstd[n];
#pragma omp simd
        for (int i = 0; i < C; i++)
            o[i] = xr[i] * r * w[i];
    }
}

// dx += d(rmsnorm)/dx . dout; dx, dout, x (N,C)
static void rmsnorm_backward(float *restrict dx, const float *restrict dout, const float *restrict x,
                             const float *restrict w, const float *restrict rstd, size_t N, int C)
{
    for (size_t n = 0; n < N; n++) {
        const float *xr = x + n * (size_t)C, *d = dout + n * (size_t)C;
        float *o = dx + n * (size_t)C;
        float r = rstd[n];
        float dot = 0.0f; /* sum_j w_j dout_j x_j */
#pragma omp simd reduction(+ : dot)
        for (int i = 0; i < C; i++)
            dot += w[i] * d[i] * xr[i];
        float c = dot * r * r * r / (float)C;
#pragma omp simd
        for (int i = 0; i < C; i++)
            o[i] += r * w[i] * d[i] - c * xr[i];
    }
}

/* HF: inv_freq = 1 / theta^(2i/hd) and angle = pos * inv_freq, in float32. */
static void rope_table(float *cs, float *sn, int T, int hd, float theta)
{
    int half = hd / 2;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            float inv = 1.0f / powf(theta, (float)(2 * i) / (float)hd);
            float a = (float)t * inv;
            cs[(size_t)t * half + i] = cosf(a);
            sn[(size_t)t * half + i] = sinf(a);
        }
}

// x (N, nh*hd) in place, row n at position n % T; sign -1 applies the inverse (backward)
static void rope_apply(float *restrict x, const float *restrict cs, const float *restrict sn,
                       size_t N, int T, int nh, int hd, float sign)
{
    int half = hd / 2;
    for (size_t n = 0; n < N; n++) {
        const float *c = cs + (n % (size_t)T) * half, *s = sn + (n % (size_t)T) * half;
        for (int h = 0; h < nh; h++) {
            float *a = x + n * (size_t)nh * hd + (size_t)h * hd, *b = a + half;
#pragma omp simd
            for (int i = 0; i < half; i++) {
                float x1 = a[i], x2 = b[i], si = sign * s[i];
                a[i] = x1 * c[i] - x2 * si;
                b[i] = x2 * c[i] + x1 * si;
            }
        }
    }
}

// act (N,H) = silu(gate) * up
static void swiglu_forward(float *restrict act, const float *restrict g, const float *restrict u, size_t n)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++)
        act[i] = g[i] / (1.0f + vexpf(-g[i])) * u[i];
}

// dg, du (N,H) from dact
static void swiglu_backward(float *restrict dg, float *restrict du, const float *restrict dact,
                            const float *restrict g, const float *restrict u, size_t n)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float sg = 1.0f / (1.0f + vexpf(-g[i]));
        du[i] = dact[i] * g[i] * sg;
        dg[i] = dact[i] * u[i] * sg * (1.0f + g[i] * (1.0f - sg));
    }
}

/* Dropout mask of (layer, target) for this step: 0 or 1/(1-p), regenerated in
 * backward from the same seed instead of stored. */
static void dropout_mask(const fp_train *self, float *restrict mask, size_t n, int l, int t)
{
    fp_rng rng;
    fp_rng_seed(&rng, self->drop_seed ^ (0x9e3779b97f4a7c15ULL * (uint64_t)(l * FP_T_COUNT + t + 1)));
    float p = self->drop_p, keep = 1.0f / (1.0f - p);
    for (size_t i = 0; i < n; i++)
        mask[i] = fp_rng_float(&rng) < p ? 0.0f : keep;
}

static void mul_into(float *restrict out, const float *restrict a, const float *restrict b, size_t n)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] * b[i];
}

/* Which layer slot of the [L] buffers layer l uses. */
static size_t slot(const fp_train *self, int l)
{
    return self->ckpt ? 0 : (size_t)l;
}

static float *saved_xa(const fp_train *self, int l, int t)
{
    return self->xa +
           (slot(self, l) * FP_T_COUNT + (size_t)t) * self->N * (size_t)self->lora->cfg.rank;
}

// y (N,out) = x (N,in) W^T (+ bias) + s * drop(x) A^T B^T;  W is (out,in), A (r,in), B (out,r)
static void lora_linear_forward(fp_train *self, float *y, const float *x, const float *bias,
                                int l, int t, int in, int out)
{
    size_t N = self->N;
    fp_qmat w = fp_model_qmat(self->model, l, t);  /* f32: one sgemm; else panels */
    fp_qmat_xwt(&w, (int)N, x, 0.0f, y, out, self->panel);
    if (bias) {
        for (size_t n = 0; n < N; n++) {
            float *restrict yr = y + n * (size_t)out;
#pragma omp simd
            for (int o = 0; o < out; o++)
                yr[o] += bias[o];
        }
    }
    const float *A = fp_lora_a(self->lora, l, t);
    if (!A)
        return;
    const float *Bm = fp_lora_b(self->lora, l, t);
    int r = self->lora->cfg.rank;
    float *xa = saved_xa(self, l, t);
    const float *xin = x;
    if (self->drop_on) {
        dropout_mask(self, self->mask, N * (size_t)in, l, t);
        mul_into(self->xd, x, self->mask, N * (size_t)in);
        xin = self->xd;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, r, in,
                1.0f, xin, in, A, in, 0.0f, xa, r);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, out, r,
                self->s, xa, r, Bm, r, 1.0f, y, out);
}

/* dx (N,in) = beta*dx + dy W + mask * (s dy B) A, and the LoRA gradients:
 * dB += s dy^T xa, dA += (s dy B)^T drop(x). dy (N,out), x (N,in) undropped.
 * dx is skipped (dx = NULL) where no LoRA factor lies below this module. */
static void lora_linear_backward(fp_train *self, float *grad, float *dx, float beta, const float *dy,
                                 const float *x, int l, int t, int in, int out)
{
    size_t N = self->N;
    if (dx) {
        fp_qmat w = fp_model_qmat(self->model, l, t);
        fp_qmat_dyw(&w, (int)N, dy, beta, dx, self->panel);
    }
    const float *A = fp_lora_a(self->lora, l, t);
    if (!A)
        return;
    const float *Bm = fp_lora_b(self->lora, l, t);
    size_t idx = (size_t)l * FP_T_COUNT + (size_t)t;
    float *gA = grad + self->lora->off_a[idx], *gB = grad + self->lora->off_b[idx];
    int r = self->lora->cfg.rank;
    const float *xa = saved_xa(self, l, t);
    float *dxa = self->dxa;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, r, (int)N,
                self->s, dy, out, xa, r, 1.0f, gB, r);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, r, out,
                self->s, dy, out, Bm, r, 0.0f, dxa, r);
    if (!self->drop_on) {
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, in, (int)N,
                    1.0f, dxa, r, x, in, 1.0f, gA, in);
        if (dx)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, in, r,
                        1.0f, dxa, r, A, in, 1.0f, dx, in);
        return;
    }
    size_t n = N * (size_t)in;
    dropout_mask(self, self->mask, n, l, t);
    mul_into(self->xd, x, self->mask, n);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, in, (int)N,
                1.0f, dxa, r, self->xd, in, 1.0f, gA, in);
    if (!dx)
        return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, in, r,
                1.0f, dxa, r, A, in, 0.0f, self->dxl, in);
    const float *restrict m = self->mask, *restrict d = self->dxl;
    float *restrict o = dx;
    for (size_t i = 0; i < n; i++)
        o[i] += m[i] * d[i];
}

// att (rows,cols) holds scores of queries i0..i0+rows-1 against keys 0..cols-1;
// in place: att[r][j] = exp(att - lse) for j <= i0 + r, else 0; lse (rows)
static void causal_softmax(float *restrict att, float *restrict lse, int i0, int rows, int cols)
{
    for (int r = 0; r < rows; r++) {
        float *restrict a = att + (size_t)r * cols;
        int n = i0 + r + 1;
        float mx = -INFINITY, sum = 0.0f;
#pragma omp simd reduction(max : mx)
        for (int j = 0; j < n; j++)
            mx = a[j] > mx ? a[j] : mx;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < n; j++) {
            a[j] = vexpf(a[j] - mx);
            sum += a[j];
        }
        float inv = 1.0f / sum;
#pragma omp simd
        for (int j = 0; j < n; j++)
            a[j] *= inv;
        for (int j = n; j < cols; j++)
            a[j] = 0.0f;
        lse[r] = mx + logf(sum);
    }
}

// P (rows,cols) holds recomputed scaled scores, dP (rows,cols) = dout v^T. In place:
// P = exp(S - lse) on the causal part, dP = P (dP - sum_j P dP) * scale; both 0 above it
static void softmax_backward(float *restrict P, float *restrict dP, const float *restrict lse,
                             int i0, int rows, int cols, float scale)
{
    for (int r = 0; r < rows; r++) {
        float *restrict p = P + (size_t)r * cols, *restrict dp = dP + (size_t)r * cols;
        int n = i0 + r + 1;
        float li = lse[r], dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int j = 0; j < n; j++) {
            p[j] = vexpf(p[j] - li);
            dot += p[j] * dp[j];
        }
#pragma omp simd
        for (int j = 0; j < n; j++)
            dp[j] = p[j] * (dp[j] - dot) * scale;
        for (int j = n; j < cols; j++)
            p[j] = dp[j] = 0.0f;
    }
}

/* q (N,C), k, v (N,KV) -> out (N,C); lse (B,nh,T). Per (b, head), per block:
 * S = q_h k_h^T / sqrt(hd), causal softmax, out_h = P v_h. */
static void attention_forward(fp_train *self, float *out, float *lse, const float *q,
                              const float *k, const float *v)
{
    const fp_model_config *c = &self->model->cfg;
    int T = self->T, nh = c->n_heads, hd = fp_head_dim(c), C = c->dim, KV = fp_kv_dim(c);
    int group = c->n_heads / c->n_kv_heads;
    float scale = 1.0f / sqrtf((float)hd);
    float *att = self->att;     /* [QB][T] */
    for (int b = 0; b < self->B; b++)
        for (int h = 0; h < nh; h++) {
            size_t row0 = (size_t)b * T;
            const float *qh = q + row0 * C + (size_t)h * hd;
            const float *kh = k + row0 * KV + (size_t)(h / group) * hd;
            const float *vh = v + row0 * KV + (size_t)(h / group) * hd;
            float *lh = lse + ((size_t)b * nh + h) * T;
            for (int i0 = 0; i0 < T; i0 += QB) {
                int rows = T - i0 < QB ? T - i0 : QB, cols = i0 + rows;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, hd,
                            scale, qh + (size_t)i0 * C, C, kh, KV, 0.0f, att, cols);
                causal_softmax(att, lh + i0, i0, rows, cols);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hd, cols,
                            1.0f, att, cols, vh, KV, 0.0f, out + (row0 + i0) * C + (size_t)h * hd, C);
            }
        }
}

/* dout (N,C) -> dq (N,C), dk, dv (N,KV). P is recomputed from q, k, lse. */
static void attention_backward(fp_train *self, float *dq, float *dk, float *dv, const float *dout,
                               const float *lse, const float *q, const float *k, const float *v)
{
    const fp_model_config *c = &self->model->cfg;
    int T = self->T, nh = c->n_heads, hd = fp_head_dim(c), C = c->dim, KV = fp_kv_dim(c);
    int group = c->n_heads / c->n_kv_heads;
    float scale = 1.0f / sqrtf((float)hd);
    float *P = self->att, *dP = self->datt;     /* [QB][T] */
    memset(dk, 0, self->N * KV * sizeof *dk);
    memset(dv, 0, self->N * KV * sizeof *dv);
    for (int b = 0; b < self->B; b++)
        for (int h = 0; h < nh; h++) {
            size_t row0 = (size_t)b * T, kvo = (size_t)(h / group) * hd;
            const float *qh = q + row0 * C + (size_t)h * hd, *kh = k + row0 * KV + kvo;
            const float *vh = v + row0 * KV + kvo, *doh = dout + row0 * C + (size_t)h * hd;
            float *dqh = dq + row0 * C + (size_t)h * hd, *dkh = dk + row0 * KV + kvo;
            float *dvh = dv + row0 * KV + kvo;
            const float *lh = lse + ((size_t)b * nh + h) * T;
            for (int i0 = 0; i0 < T; i0 += QB) {
                int rows = T - i0 < QB ? T - i0 : QB, cols = i0 + rows;
                size_t qo = (size_t)i0 * C;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, hd,
                            scale, qh + qo, C, kh, KV, 0.0f, P, cols);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, hd,
                            1.0f, doh + qo, C, vh, KV, 0.0f, dP, cols);
                softmax_backward(P, dP, lh + i0, i0, rows, cols, scale);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, cols, hd, rows,
                            1.0f, P, cols, doh + qo, C, 1.0f, dvh, KV);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hd, cols,
                            1.0f, dP, cols, kh, KV, 0.0f, dqh + qo, C);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, cols, hd, rows,
                            1.0f, dP, cols, qh + qo, C, 1.0f, dkh, KV);
            }
        }
}

/* logits (N,V): mean cross-entropy over targets >= 0; if dlogits, writes
 * (softmax - onehot) * gscale / count there. Returns the sum in double. */
static double crossentropy(const float *logits, float *dlogits, const int32_t *targets, size_t N,
                           int V, size_t count, float gscale)
{
    double total = 0.0;
    float g = count ? gscale / (float)count : 0.0f;
    for (size_t n = 0; n < N; n++) {
        const float *lg = logits + n * (size_t)V;
        float *d = dlogits ? dlogits + n * (size_t)V : NULL;
        if (targets[n] < 0) {
            if (d)
                memset(d, 0, (size_t)V * sizeof *d);
            continue;
        }
        float mx = -INFINITY, sum = 0.0f;
#pragma omp simd reduction(max : mx)
        for (int i = 0; i < V; i++)
            mx = lg[i] > mx ? lg[i] : mx;
#pragma omp simd reduction(+ : sum)
        for (int i = 0; i < V; i++)
            sum += vexpf(lg[i] - mx);
        float lse = mx + logf(sum);
        total += (double)(lse - lg[targets[n]]);
        if (d) {
#pragma omp simd
            for (int i = 0; i < V; i++)
                d[i] = vexpf(lg[i] - lse) * g;
            d[targets[n]] -= g;
        }
    }
    return total;
}

/* ---------------------------------------------------------------------------
 * Object. */

fp_train *fp_train_new(const fp_model *model, const fp_lora *lora, int B, int T)
{
    return fp_train_new_ckpt(model, lora, B, T, 0);
}

fp_train *fp_train_new_ckpt(const fp_model *model, const fp_lora *lora, int B, int T,
                            int grad_checkpoint)
{
    fp_train *self = NULL;
    if (!model) {
        fp_error_set("train: no model");
        return NULL;
    }
    const fp_model_config *c = &model->cfg;
    if (B < 1 || T < 1) {
        fp_error_set("train: batch %d x %d tokens: both must be >= 1", B, T);
        return NULL;
    }
    if (fp_config_validate(c, "train") != 0 || (lora && fp_lora_check_model(lora, c) != 0))
        return NULL;
    self = calloc(1, sizeof *self);
    if (!self)
        goto oom;
    self->model = model;
    self->lora = lora;
    self->B = B;
    self->T = T;
    self->ckpt = grad_checkpoint && lora;
    size_t N = (size_t)B * T, L = (size_t)c->n_layers, C = (size_t)c->dim;
    size_t SL = self->ckpt ? 1 : L;     /* layers the per-layer buffers hold */
    size_t KV = (size_t)fp_kv_dim(c), H = (size_t)c->hidden_dim, V = (size_t)c->vocab_size;
    size_t nh = (size_t)c->n_heads, half = (size_t)fp_head_dim(c) / 2;
    size_t TT = (size_t)(T < QB ? T : QB) * T;  /* one block of attention rows */
    size_t mx = C > H ? C : H, r = lora ? (size_t)lora->cfg.rank : 0;
    int bw = lora != NULL, drop = lora && lora->cfg.dropout > 0.0f;
    self->N = N;
    self->s = lora ? fp_lora_scale(&lora->cfg) : 0.0f;
    self->first_stage = INT32_MAX;
    static const int stage_of[FP_T_COUNT] = {0, 0, 0, 1, 2, 2, 3};
    for (int l = (int)L - 1; lora && l >= 0; l--)
        for (int tg = 0; tg < FP_T_COUNT; tg++)
            if (fp_lora_a(lora, l, tg) && 4 * l + stage_of[tg] < self->first_stage)
                self->first_stage = 4 * l + stage_of[tg];

    /* size table, then one slab (llm.c's malloc_and_point) */
    struct { float **p; size_t n; } t[] = {
        {&self->rope_cos, (size_t)T * half}, {&self->rope_sin, (size_t)T * half},
        {&self->res, (L + 1) * N * C}, {&self->res2, SL * N * C},
        {&self->rstd1, SL * N}, {&self->rstd2, SL * N},
        {&self->q, SL * N * C}, {&self->k, SL * N * KV}, {&self->v, SL * N * KV},
        {&self->lse, SL * (size_t)B * nh * T}, {&self->atty, SL * N * C},
        {&self->gate, SL * N * H}, {&self->up, SL * N * H},
        {&self->xa, SL * FP_T_COUNT * N * r},
        {&self->rstdf, N}, {&self->xnf, N * C}, {&self->logits, N * V},
        {&self->xn, N * C}, {&self->act, N * H}, {&self->att, TT}, {&self->datt, bw ? TT : 0},
        {&self->dlogits, bw ? N * V : 0}, {&self->dres, bw ? N * C : 0},
        {&self->dxn, bw ? N * C : 0}, {&self->dy, bw ? N * mx : 0},
        {&self->dq, bw ? N * C : 0}, {&self->dk, bw ? N * KV : 0}, {&self->dv, bw ? N * KV : 0},
        {&self->dgate, bw ? N * H : 0}, {&self->dup, bw ? N * H : 0},
        {&self->dxa, N * r},
        {&self->mask, drop ? N * mx : 0}, {&self->xd, drop ? N * mx : 0},
        {&self->dxl, drop ? N * mx : 0},
        {&self->panel, model->qm ? fp_qpanel_floats((int)mx) : 0},
    };
    size_t total = 0, nt = sizeof t / sizeof t[0];
    for (size_t i = 0; i < nt; i++)
        total += t[i].n;
    for (size_t i = 2; i < 14; i++)     /* res .. xa: what backward reads back */
        self->saved_floats += t[i].n;
    self->slab = malloc(total * sizeof(float));
    if (!self->slab)
        goto oom;
    float *p = self->slab;
    for (size_t i = 0; i < nt; i++) {
        *t[i].p = t[i].n ? p : NULL;
        p += t[i].n;
    }
    rope_table(self->rope_cos, self->rope_sin, T, fp_head_dim(c), c->rope_theta);
    return self;
oom:
    fp_error_set("train: out of memory for activations (batch %d x %d)", B, T);
    fp_train_free(&self);
    return NULL;
}

void fp_train_free(fp_train **self_p)
{
    if (!self_p || !*self_p)
        return;
    free((*self_p)->slab);
    free(*self_p);
    *self_p = NULL;
}

size_t fp_train_saved_bytes(const fp_train *self)
{
    return self->saved_floats * sizeof(float);
}

const float *fp_train_logits(const fp_train *self, int b, int t)
{
    if (!self || b < 0 || b >= self->B || t < 0 || t >= self->T)
        return NULL;
    return self->logits + ((size_t)b * self->T + t) * (size_t)self->model->cfg.vocab_size;
}

/* ---------------------------------------------------------------------------
 * The passes. */

/* Layer l's forward from its input res[l] into res[l + 1], saving what
 * backward needs in the layer's slot. Deterministic (dropout masks come from
 * the step's seed, l and t), so a recomputation is bitwise the first pass. */
static void layer_forward(fp_train *self, int l)
{
    const fp_model_config *c = &self->model->cfg;
    const fp_model_weights *w = &self->model->w;
    size_t N = self->N, C = (size_t)c->dim, KV = (size_t)fp_kv_dim(c), H = (size_t)c->hidden_dim;
    int hd = fp_head_dim(c), T = self->T;
    size_t sl = slot(self, l);
    float *res = self->res + (size_t)l * N * C, *res2 = self->res2 + sl * N * C;
    float *q = self->q + sl * N * C, *k = self->k + sl * N * KV;
    float *v = self->v + sl * N * KV, *atty = self->atty + sl * N * C;
    float *gate = self->gate + sl * N * H, *up = self->up + sl * N * H;
    float *xn = self->xn, *out = self->res + (size_t)(l + 1) * N * C;
    size_t lc = (size_t)l * C, lkv = (size_t)l * KV;

    // attention block
    rmsnorm_forward(xn, self->rstd1 + sl * N, res, w->rms_att + lc, N, (int)C, c->rms_eps);
    lora_linear_forward(self, q, xn, w->bq ? w->bq + lc : NULL, l, FP_T_Q, (int)C, (int)C);
    lora_linear_forward(self, k, xn, w->bk ? w->bk + lkv : NULL, l, FP_T_K, (int)C, (int)KV);
    lora_linear_forward(self, v, xn, w->bv ? w->bv + lkv : NULL, l, FP_T_V, (int)C, (int)KV);
    rope_apply(q, self->rope_cos, self->rope_sin, N, T, c->n_heads, hd, 1.0f);
    rope_apply(k, self->rope_cos, self->rope_sin, N, T, c->n_kv_heads, hd, 1.0f);
    attention_forward(self, atty, self->lse + sl * self->B * c->n_heads * T, q, k, v);
    lora_linear_forward(self, res2, atty, NULL, l, FP_T_O, (int)C, (int)C);
    cblas_saxpy((int)(N * C), 1.0f, res, 1, res2, 1);

    // feed-forward block
    rmsnorm_forward(xn, self->rstd2 + sl * N, res2, w->rms_ffn + lc, N, (int)C, c->rms_eps);
    lora_linear_forward(self, gate, xn, NULL, l, FP_T_GATE, (int)C, (int)H);
    lora_linear_forward(self, up, xn, NULL, l, FP_T_UP, (int)C, (int)H);
    swiglu_forward(self->act, gate, up, N * H);
    lora_linear_forward(self, out, self->act, NULL, l, FP_T_DOWN, (int)H, (int)C);
    cblas_saxpy((int)(N * C), 1.0f, res2, 1, out, 1);
}

static void forward(fp_train *self, const int32_t *inputs)
{
    const fp_model_config *c = &self->model->cfg;
    const fp_model_weights *w = &self->model->w;
    size_t N = self->N, C = (size_t)c->dim;

    fp_qmat emb = fp_model_emb(self->model), head = fp_model_head(self->model);
    for (size_t n = 0; n < N; n++)     /* f32: a copy; else the row dequantized */
        fp_qmat_dequant_rows(&emb, inputs[n], 1, self->res + n * C);
    for (int l = 0; l < c->n_layers; l++)
        layer_forward(self, l);
    rmsnorm_forward(self->xnf, self->rstdf, self->res + (size_t)c->n_layers * N * C, w->rms_final,
                    N, (int)C, c->rms_eps);
    fp_qmat_xwt(&head, (int)N, self->xnf, 0.0f, self->logits, c->vocab_size, self->panel);
}

static void backward(fp_train *self, float *grad)
{
    const fp_model_config *c = &self->model->cfg;
    const fp_model_weights *w = &self->model->w;
    size_t N = self->N, C = (size_t)c->dim, KV = (size_t)fp_kv_dim(c), H = (size_t)c->hidden_dim;
    int hd = fp_head_dim(c), T = self->T, L = c->n_layers;
    float *dres = self->dres, *dxn = self->dxn, *xn = self->xn;

    // final norm and lm_head: dres = rmsnorm'(dlogits lm_head)
    fp_qmat head = fp_model_head(self->model);
    fp_qmat_dyw(&head, (int)N, self->dlogits, 0.0f, dxn, self->panel);
    memset(dres, 0, N * C * sizeof *dres);
    rmsnorm_backward(dres, dxn, self->res + (size_t)L * N * C, w->rms_final, self->rstdf, N, (int)C);

    /* Walk down while a LoRA factor lies at or below the current stage: the
     * gradient below the lowest targeted module is never needed. */
    int s0 = self->first_stage;
    for (int l = L - 1; l >= 0 && s0 <= 4 * l + 3; l--) {
        /* Checkpointing: rebuild layer l's slot from its saved input (the
         * top layer's is still there from forward). Rewrites res[l + 1] with
         * the same values. */
        if (self->ckpt && l < L - 1)
            layer_forward(self, l);
        size_t sl = slot(self, l);
        float *res = self->res + (size_t)l * N * C, *res2 = self->res2 + sl * N * C;
        float *q = self->q + sl * N * C, *k = self->k + sl * N * KV;
        float *v = self->v + sl * N * KV, *atty = self->atty + sl * N * C;
        float *gate = self->gate + sl * N * H, *up = self->up + sl * N * H;
        float *rstd1 = self->rstd1 + sl * N, *rstd2 = self->rstd2 + sl * N;
        size_t lc = (size_t)l * C;
        float *dact = self->dy, *datty = self->dy;

        // feed-forward block: dres is d(out) and flows through the residual unchanged
        swiglu_forward(self->act, gate, up, N * H);
        lora_linear_backward(self, grad, s0 < 4 * l + 3 ? dact : NULL, 0.0f, dres, self->act,
                             l, FP_T_DOWN, (int)H, (int)C);
        if (s0 > 4 * l + 2)
            break;
        swiglu_backward(self->dgate, self->dup, dact, gate, up, N * H);
        rmsnorm_recompute(xn, res2, rstd2, w->rms_ffn + lc, N, (int)C);
        int dx = s0 < 4 * l + 2;
        lora_linear_backward(self, grad, dx ? dxn : NULL, 0.0f, self->dgate, xn,
                             l, FP_T_GATE, (int)C, (int)H);
        lora_linear_backward(self, grad, dx ? dxn : NULL, 1.0f, self->dup, xn,
                             l, FP_T_UP, (int)C, (int)H);
        if (!dx)
            break;
        rmsnorm_backward(dres, dxn, res2, w->rms_ffn + lc, rstd2, N, (int)C);

        // attention block
        lora_linear_backward(self, grad, s0 < 4 * l + 1 ? datty : NULL, 0.0f, dres, atty,
                             l, FP_T_O, (int)C, (int)C);
        if (s0 > 4 * l)
            break;
        attention_backward(self, self->dq, self->dk, self->dv, datty,
                           self->lse + sl * self->B * c->n_heads * T, q, k, v);
        rope_apply(self->dq, self->rope_cos, self->rope_sin, N, T, c->n_heads, hd, -1.0f);
        rope_apply(self->dk, self->rope_cos, self->rope_sin, N, T, c->n_kv_heads, hd, -1.0f);
        rmsnorm_recompute(xn, res, rstd1, w->rms_att + lc, N, (int)C);
        dx = s0 < 4 * l;
        lora_linear_backward(self, grad, dx ? dxn : NULL, 0.0f, self->dq, xn,
                             l, FP_T_Q, (int)C, (int)C);
        lora_linear_backward(self, grad, dx ? dxn : NULL, 1.0f, self->dk, xn,
                             l, FP_T_K, (int)C, (int)KV);
        lora_linear_backward(self, grad, dx ? dxn : NULL, 1.0f, self->dv, xn,
                             l, FP_T_V, (int)C, (int)KV);
        if (dx)
            rmsnorm_backward(dres, dxn, res, w->rms_att + lc, rstd1, N, (int)C);
    }
}

float fp_train_step(fp_train *self, const int32_t *inputs, const int32_t *targets,
                    float *grad, float grad_scale, uint64_t dropout_seed, size_t *n_tokens)
{
    if (n_tokens)
        *n_tokens = 0;
    const fp_model_config *c = &self->model->cfg;
    size_t N = self->N, count = 0;
    for (size_t n = 0; n < N; n++) {
        if (inputs[n] < 0 || inputs[n] >= c->vocab_size || targets[n] >= c->vocab_size) {
            fp_error_set("train: token id %d at index %zu is outside the vocabulary (%d)",
                         inputs[n] < 0 || inputs[n] >= c->vocab_size ? inputs[n] : targets[n], n,
                         c->vocab_size);
            return NAN;
        }
        count += targets[n] >= 0;
    }
    int bw = grad && self->lora && count > 0;
    self->drop_on = bw && self->lora->cfg.dropout > 0.0f;
    if (self->drop_on && !self->mask) {
        fp_error_set("train: lora dropout was enabled after fp_train_new; recreate the trainer");
        return NAN;
    }
    self->drop_p = self->lora ? self->lora->cfg.dropout : 0.0f;
    self->drop_seed = dropout_seed;

    forward(self, inputs);
    double total = crossentropy(self->logits, bw ? self->dlogits : NULL, targets, N,
                                c->vocab_size, count, grad_scale);
    float loss = count ? (float)(total / (double)count) : 0.0f;
    if (n_tokens)
        *n_tokens = count;
    if (!isfinite(loss)) {
        fp_error_set("train: loss is not finite");
        return NAN;
    }
    if (bw)
        backward(self, grad);
    return loss;
}
