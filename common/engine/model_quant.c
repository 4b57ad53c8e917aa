/* model_quant.c - a base model held in bf16 / int8 / nf4 (see fp_model_quantize in model.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lora.h"
#include "rng.h"
#include "model.h"

/* The per-layer f32 field, rows and cols of target t. */
static float **target_field(fp_model *m, int t, int *rows, int *cols)
{
    const fp_model_config *c = &m->cfg;
    int d = c->dim, kv = fp_kv_dim(c), h = c->hidden_dim;
    fp_model_weights *w = &m->w;
    static const int shape[FP_T_COUNT][2] = {{0, 0}, {1, 0}, {1, 0}, {0, 0}, {2, 0}, {2, 0}, {0, 2}};
    int dims[3] = {d, kv, h};
    *rows = dims[shape[t][0]];
    *cols = t == FP_T_DOWN ? h : d;
    float **f[FP_T_COUNT] = {&w->wq, &w->wk, &w->wv, &w->wo, &w->w_gate, &w->w_up, &w->w_down};
    return f[t];
}

fp_qmat fp_model_qmat(const fp_model *m, int l, int t)
{
    if (m->qm)
        return m->qm[(size_t)l * FP_T_COUNT + (size_t)t];
    int rows, cols;
    float **f = target_field((fp_model *)m, t, &rows, &cols);
    return (fp_qmat){FP_BASE_F32, rows, cols, *f + (size_t)l * rows * cols, NULL};
}

size_t fp_model_bytes(const fp_model *m)
{
    return m->n_floats * sizeof(float) + m->q_bytes + m->mapped_bytes;
}

/* Moves what stays f32 (embeddings, norms, biases, lm_head) into a smaller slab. */
static int compact_slab(fp_model *m)
{
    const fp_model_config *c = &m->cfg;
    fp_model_weights *w = &m->w;
    size_t L = (size_t)c->n_layers, d = (size_t)c->dim, kv = (size_t)fp_kv_dim(c);
    size_t V = (size_t)c->vocab_size;
    struct { float **p; size_t n; } keep[] = {
        {&w->tok_emb, V * d}, {&w->rms_att, L * d}, {&w->bq, c->qkv_bias ? L * d : 0},
        {&w->bk, c->qkv_bias ? L * kv : 0}, {&w->bv, c->qkv_bias ? L * kv : 0},
        {&w->rms_ffn, L * d}, {&w->rms_final, d}, {&w->lm_head, c->tie_embeddings ? 0 : V * d},
    };
    size_t nk = sizeof keep / sizeof keep[0], total = 0;
    for (size_t i = 0; i < nk; i++)
        total += keep[i].n;
    float *slab = malloc(total * sizeof(float)), *at = slab;
    if (!slab)
        return fp_error_set("out of memory compacting the model");
    for (size_t i = 0; i < nk; i++) {
        if (!keep[i].n)
            continue;
        memcpy(at, *keep[i].p, keep[i].n * sizeof(float));
        *keep[i].p = at;
        at += keep[i].n;
    }
    if (c->tie_embeddings)
        w->lm_head = w->tok_emb;
    free(m->slab);
    m->slab = slab;
    m->n_floats = total;
    return 0;
}

/* Allocates qm/qdata/qscale for dt and points every view at its place. */
static int alloc_quantized(fp_model *m, fp_base_dtype dt)
{
    size_t L = (size_t)m->cfg.n_layers, nb = 0, ns = 0;
    int rows, cols;
    for (int t = 0; t < FP_T_COUNT; t++) {
        target_field(m, t, &rows, &cols);
        nb += L * fp_quant_data_bytes(dt, rows, cols);
        ns += L * fp_quant_scale_floats(dt, rows, cols);
    }
    m->qm = calloc(L * FP_T_COUNT, sizeof *m->qm);
    m->qdata = malloc(nb ? nb : 1);
    m->qscale = malloc((ns ? ns : 1) * sizeof(float));
    if (!m->qm || !m->qdata || !m->qscale) {
        free(m->qm), free(m->qdata), free(m->qscale);
        m->qm = NULL, m->qdata = NULL, m->qscale = NULL;
        return fp_error_set("out of memory quantizing the model to %s", fp_base_dtype_name(dt));
    }
    uint8_t *d = m->qdata;
    float *s = m->qscale;
    for (size_t l = 0; l < L; l++)
        for (int t = 0; t < FP_T_COUNT; t++) {
            target_field(m, t, &rows, &cols);
            size_t sf = fp_quant_scale_floats(dt, rows, cols);
            m->qm[l * FP_T_COUNT + t] = (fp_qmat){dt, rows, cols, d, sf ? s : NULL};
            d += fp_quant_data_bytes(dt, rows, cols);
            s += sf;
        }
    m->base_dtype = dt;
    m->q_bytes = nb + ns * sizeof(float);
    return 0;
}

int fp_model_quantize(fp_model *m, fp_base_dtype dt)
{
    if (dt == FP_BASE_F32 || m->qm)
        return dt == m->base_dtype ? 0
                                   : fp_error_set("model is already held as %s",
                                                  fp_base_dtype_name(m->base_dtype));
    fp_model_hash(m, m->src_hash);
    if (alloc_quantized(m, dt) != 0)
        return -1;
    int rows, cols;
    for (size_t l = 0; l < (size_t)m->cfg.n_layers; l++)
        for (int t = 0; t < FP_T_COUNT; t++) {
            const float *src = *target_field(m, t, &rows, &cols) + l * (size_t)rows * cols;
            fp_qmat *q = &m->qm[l * FP_T_COUNT + t];
            fp_quantize(dt, src, rows, cols, (void *)q->data, (float *)q->scale);
        }
    for (int t = 0; t < FP_T_COUNT; t++)
        *target_field(m, t, &rows, &cols) = NULL;
    m->has_src_hash = 1;
    return compact_slab(m);
}

fp_model *fp_model_new_random(const fp_model_config *cfg, fp_base_dtype dt, uint64_t seed,
                              float scale)
{
    fp_model_config one = *cfg;
    one.n_layers = 1;   /* the f32 slab holds one layer's matrices, as scratch; */
    one.vocab_size = 2; /* the embeddings are drawn straight into the final slab */
    fp_model *m = NULL, *full = NULL;
    if (dt == FP_BASE_F32) {
        if ((full = fp_model_new(cfg)))
            fp_model_randomize(full, seed, scale);
        return full;
    }
    if (!(m = fp_model_new(&one)))
        return NULL;
    fp_model_randomize(m, seed, scale);
    if (!(full = calloc(1, sizeof *full))) {
        fp_error_set("out of memory");
        goto err;
    }
    full->cfg = *cfg;
    full->w = m->w;     /* for target_field's shapes only */
    if (alloc_quantized(full, dt) != 0)
        goto err;
    int rows, cols;
    for (size_t l = 0; l < (size_t)cfg->n_layers; l++) {
        fp_model_randomize(m, seed + l, scale);     /* layer l's matrices */
        for (int t = 0; t < FP_T_COUNT; t++) {
            const float *src = *target_field(m, t, &rows, &cols);
            fp_qmat *q = &full->qm[l * FP_T_COUNT + t];
            fp_quantize(dt, src, rows, cols, (void *)q->data, (float *)q->scale);
        }
    }
    /* Norms and biases: the one-layer model's, repeated. */
    size_t L = (size_t)cfg->n_layers, d = (size_t)cfg->dim;
    size_t V = (size_t)cfg->vocab_size, untied = cfg->tie_embeddings ? 0 : V * d;
    size_t nb = cfg->qkv_bias ? L * (d + 2 * (size_t)fp_kv_dim(cfg)) : 0;
    full->n_floats = V * d + untied + 2 * L * d + d + nb;
    if (!(full->slab = malloc(full->n_floats * sizeof(float)))) {
        fp_error_set("out of memory");
        goto err;
    }
    fp_model_weights *w = &full->w;
    memset(w, 0, sizeof *w);
    float *at = full->slab;
    fp_rng r;
    fp_rng_seed(&r, seed);
    w->tok_emb = at;
    for (size_t i = 0; i < V * d + untied; i++)
        at[i] = scale * (2.0f * fp_rng_float(&r) - 1.0f);
    w->lm_head = cfg->tie_embeddings ? w->tok_emb : at + V * d;
    at += V * d + untied;
    w->rms_att = at, at += L * d;
    w->rms_ffn = at, at += L * d;
    w->rms_final = at, at += d;
    for (size_t l = 0; l < L; l++) {
        memcpy(w->rms_att + l * d, m->w.rms_att, d * sizeof(float));
        memcpy(w->rms_ffn + l * d, m->w.rms_ffn, d * sizeof(float));
    }
    memcpy(w->rms_final, m->w.rms_final, d * sizeof(float));
    if (cfg->qkv_bias) {
        size_t kv = (size_t)fp_kv_dim(cfg);
        w->bq = at, at += L * d;
        w->bk = at, at += L * kv;
        w->bv = at;
        memset(w->bq, 0, nb * sizeof(float));
    }
    snprintf(full->src_hash, sizeof full->src_hash, "random-%s", fp_base_dtype_name(dt));
    full->has_src_hash = 1;
    fp_model_free(&m);
    return full;
err:
    fp_model_free(&m);
    fp_model_free(&full);
    return NULL;
}
