/* infer.c - one token at a time with a KV cache, and sampling (see infer.h).
 *
 * The same mathematics as train.c's forward, with matrix-vector products
 * (cblas_sgemv) instead of matrix-matrix ones. Shapes: C = dim, KV = kv_dim,
 * H = hidden_dim, hd = head_dim, r = LoRA rank. The cache is [L][max_seq][KV]
 * for keys (after RoPE) and values.
 */
#include "infer.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct fp_infer {
    const fp_model *model;
    const fp_lora *lora;
    int max_seq;
    int next_pos;           /* positions fed so far */
    float s;                /* LoRA scale */
    float *slab;
    float *kc, *vc;         /* [L][max_seq][KV] */
    float *x, *xn, *q;      /* [C] */
    float *atty, *tmp;      /* [C], [max(C,H)] */
    float *hg, *hu;         /* [H] */
    float *att;             /* [n_heads][max_seq] */
    float *xa;              /* [r] */
    float *inv_freq;        /* [hd/2] */
    float *logits;          /* [V] */
    float *panel;           /* dequantized rows of a quantized base matrix */
};

fp_infer *fp_infer_new(const fp_model *model, const fp_lora *lora, int max_seq)
{
    fp_infer *self = NULL;
    if (!model) {
        fp_error_set("infer: no model");
        return NULL;
    }
    const fp_model_config *c = &model->cfg;
    if (max_seq < 1) {
        fp_error_set("infer: max_seq must be >= 1 (got %d)", max_seq);
        return NULL;
    }
    if (fp_config_validate(c, "infer") != 0 || (lora && fp_lora_check_model(lora, c) != 0))
        return NULL;
    self = calloc(1, sizeof *self);
    if (!self)
        goto oom;
    self->model = model;
    self->lora = lora;
    self->max_seq = max_seq;
    self->s = lora ? fp_lora_scale(&lora->cfg) : 0.0f;
    size_t L = (size_t)c->n_layers, C = (size_t)c->dim, KV = (size_t)fp_kv_dim(c);
    size_t H = (size_t)c->hidden_dim, S = (size_t)max_seq, hd = (size_t)fp_head_dim(c);
    size_t mx = C > H ? C : H;
    struct { float **p; size_t n; } t[] = {
        {&self->kc, L * S * KV}, {&self->vc, L * S * KV},
        {&self->x, C}, {&self->xn, C}, {&self->q, C}, {&self->atty, C}, {&self->tmp, mx},
        {&self->hg, H}, {&self->hu, H}, {&self->att, (size_t)c->n_heads * S},
        {&self->xa, lora ? (size_t)lora->cfg.rank : 0}, {&self->inv_freq, hd / 2},
        {&self->logits, (size_t)c->vocab_size},
        {&self->panel, model->qm ? fp_qpanel_floats((int)mx) : 0},
    };
    size_t total = 0, nt = sizeof t / sizeof t[0];
    for (size_t i = 0; i < nt; i++)
        total += t[i].n;
    self->slab = calloc(total, sizeof(float));
    if (!self->slab)
        goto oom;
    float *p = self->slab;
    for (size_t i = 0; i < nt; i++) {
        *t[i].p = t[i].n ? p : NULL;
        p += t[i].n;
    }
    /* same float32 expression as train.c (and HF) */
    for (size_t i = 0; i < hd / 2; i++)
        self->inv_freq[i] = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)hd);
    return self;
oom:
    fp_error_set("infer: out of memory (cache of %d positions)", max_seq);
    fp_infer_free(&self);
    return NULL;
}

void fp_infer_free(fp_infer **self_p)
{
    if (!self_p || !*self_p)
        return;
    free((*self_p)->slab);
    free(*self_p);
    *self_p = NULL;
}

// out (C) = x * rsqrt(mean(x^2) + eps) * w
static void rmsnorm(float *restrict out, const float *restrict x, const float *restrict w, int C, float eps)
{
    float ss = 0.0f;
    for (int i = 0; i < C; i++)
        ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / (float)C + eps);
    for (int i = 0; i < C; i++)
        out[i] = x[i] * r * w[i];
}

// y (out) = W x (+ bias) + s * B (A x);  W (out,in), A (r,in), B (out,r)
static void lora_linear(fp_infer *self, float *y, const float *x, const float *bias,
                        int l, int t, int in, int out)
{
    fp_qmat w = fp_model_qmat(self->model, l, t);   /* f32: one sgemv; else panels */
    fp_qmat_gemv(&w, x, y, self->panel);
    if (bias)
        for (int o = 0; o < out; o++)
            y[o] += bias[o];
    const float *A = fp_lora_a(self->lora, l, t);
    if (!A)
        return;
    int r = self->lora->cfg.rank;
    cblas_sgemv(CblasRowMajor, CblasNoTrans, r, in, 1.0f, A, in, x, 1, 0.0f, self->xa, 1);
    cblas_sgemv(CblasRowMajor, CblasNoTrans, out, r, self->s, fp_lora_b(self->lora, l, t), r,
                self->xa, 1, 1.0f, y, 1);
}

// x (nh*hd) rotated in place for position pos (HF rotate_half)
static void rope(float *restrict x, const float *restrict inv_freq, int pos, int nh, int hd)
{
    int half = hd / 2;
    for (int i = 0; i < half; i++) {
        float a = (float)pos * inv_freq[i], c = cosf(a), s = sinf(a);
        for (int h = 0; h < nh; h++) {
            float *p = x + (size_t)h * hd;
            float x1 = p[i], x2 = p[i + half];
            p[i] = x1 * c - x2 * s;
            p[i + half] = x2 * c + x1 * s;
        }
    }
}

// atty (C) from q (C) and the cache rows 0..pos of layer l
static void attention(fp_infer *self, int l, int pos)
{
    const fp_model_config *c = &self->model->cfg;
    int hd = fp_head_dim(c), KV = fp_kv_dim(c), group = c->n_heads / c->n_kv_heads;
    float scale = 1.0f / sqrtf((float)hd);
    const float *kc = self->kc + (size_t)l * self->max_seq * KV;
    const float *vc = self->vc + (size_t)l * self->max_seq * KV;
    for (int h = 0; h < c->n_heads; h++) {
        const float *q = self->q + (size_t)h * hd;
        float *a = self->att + (size_t)h * self->max_seq;
        size_t ko = (size_t)(h / group) * hd;
        float mx = -INFINITY;
        for (int j = 0; j <= pos; j++) {
            const float *k = kc + (size_t)j * KV + ko;
            float d = 0.0f;
            for (int i = 0; i < hd; i++)
                d += q[i] * k[i];
            a[j] = d * scale;
            mx = a[j] > mx ? a[j] : mx;
        }
        float sum = 0.0f;
        for (int j = 0; j <= pos; j++) {
            a[j] = expf(a[j] - mx);
            sum += a[j];
        }
        float *o = self->atty + (size_t)h * hd;
        memset(o, 0, (size_t)hd * sizeof *o);
        for (int j = 0; j <= pos; j++) {
            const float *v = vc + (size_t)j * KV + ko;
            float p = a[j] / sum;
            for (int i = 0; i < hd; i++)
                o[i] += p * v[i];
        }
    }
}

const float *fp_infer_step(fp_infer *self, int32_t token, int pos)
{
    const fp_model_config *c = &self->model->cfg;
    const fp_model_weights *w = &self->model->w;
    if (token < 0 || token >= c->vocab_size) {
        fp_error_set("infer: token id %d outside the vocabulary (%d)", token, c->vocab_size);
        return NULL;
    }
    if (pos < 0 || pos >= self->max_seq || pos > self->next_pos) {
        fp_error_set("infer: position %d out of order or beyond the cache (next %d, max %d)",
                     pos, self->next_pos, self->max_seq);
        return NULL;
    }
    int C = c->dim, KV = fp_kv_dim(c), H = c->hidden_dim, hd = fp_head_dim(c);
    float *x = self->x, *xn = self->xn;
    fp_qmat emb = fp_model_emb(self->model), head = fp_model_head(self->model);
    fp_qmat_dequant_rows(&emb, token, 1, x);

    for (int l = 0; l < c->n_layers; l++) {
        size_t lc = (size_t)l * C, lkv = (size_t)l * KV;
        float *kr = self->kc + ((size_t)l * self->max_seq + pos) * KV;
        float *vr = self->vc + ((size_t)l * self->max_seq + pos) * KV;

        rmsnorm(xn, x, w->rms_att + lc, C, c->rms_eps);
        lora_linear(self, self->q, xn, w->bq ? w->bq + lc : NULL, l, FP_T_Q, C, C);
        lora_linear(self, kr, xn, w->bk ? w->bk + lkv : NULL, l, FP_T_K, C, KV);
        lora_linear(self, vr, xn, w->bv ? w->bv + lkv : NULL, l, FP_T_V, C, KV);
        rope(self->q, self->inv_freq, pos, c->n_heads, hd);
        rope(kr, self->inv_freq, pos, c->n_kv_heads, hd);
        attention(self, l, pos);
        lora_linear(self, self->tmp, self->atty, NULL, l, FP_T_O, C, C);
        for (int i = 0; i < C; i++)
            x[i] += self->tmp[i];

        rmsnorm(xn, x, w->rms_ffn + lc, C, c->rms_eps);
        lora_linear(self, self->hg, xn, NULL, l, FP_T_GATE, C, H);
        lora_linear(self, self->hu, xn, NULL, l, FP_T_UP, C, H);
        for (int i = 0; i < H; i++)
            self->hg[i] = self->hg[i] / (1.0f + expf(-self->hg[i])) * self->hu[i];
        lora_linear(self, self->tmp, self->hg, NULL, l, FP_T_DOWN, H, C);
        for (int i = 0; i < C; i++)
            x[i] += self->tmp[i];
    }
    rmsnorm(xn, x, w->rms_final, C, c->rms_eps);
    fp_qmat_gemv(&head, xn, self->logits, self->panel);
    self->next_pos = pos + 1;
    return self->logits;
}

/* ---------------------------------------------------------------------------
 * Sampling. */

static int32_t argmax(const float *logits, int vocab)
{
    int32_t best = 0;
    for (int i = 1; i < vocab; i++)
        if (logits[i] > logits[best])
            best = i;
    return best;
}

typedef struct { float p; int32_t id; } prob_id;

/* descending probability, then ascending id (a total order: deterministic) */
static int cmp_desc(const void *a, const void *b)
{
    const prob_id *x = a, *y = b;
    if (x->p != y->p)
        return x->p > y->p ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

int32_t fp_sample(const float *logits, int vocab, float temperature, float top_p, fp_rng *rng)
{
    if (vocab < 1)
        return -1;
    if (!(temperature > 0.0f) || !rng)
        return argmax(logits, vocab);
    prob_id *pi = malloc((size_t)vocab * sizeof *pi);
    if (!pi)
        return argmax(logits, vocab); /* no memory: still a sensible token */
    float mx = logits[argmax(logits, vocab)];
    double sum = 0.0;
    for (int i = 0; i < vocab; i++) {
        pi[i].p = expf((logits[i] - mx) / temperature);
        pi[i].id = i;
        sum += pi[i].p;
    }
    int n = vocab;
    if (top_p < 1.0f) {
        /* nucleus: the smallest prefix (by probability) whose mass reaches top_p */
        qsort(pi, (size_t)vocab, sizeof *pi, cmp_desc);
        double cum = 0.0, want = (double)top_p * sum;
        n = 0;
        while (n < vocab) {
            cum += pi[n++].p;
            if (cum >= want)
                break;
        }
        sum = cum;
    }
    double u = (double)fp_rng_float(rng) * sum, acc = 0.0;
    int32_t tok = pi[n - 1].id; /* rounding fallback: the last kept token */
    for (int i = 0; i < n; i++) {
        acc += pi[i].p;
        if (u < acc) {
            tok = pi[i].id;
            break;
        }
    }
    free(pi);
    return tok;
}
