/* model_quant.c - a base model held in bf16 / int8 / nf4 (see fp_model_quantize in model.h). */
#include <stdlib.h>
#include <string.h>

#include "lora.h"
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

int fp_model_quantize(fp_model *m, fp_base_dtype dt)
{
    if (dt == FP_BASE_F32 || m->qm)
        return dt == m->base_dtype ? 0
                                   : fp_error_set("model is already held as %s",
                                                  fp_base_dtype_name(m->base_dtype));
    size_t L = (size_t)m->cfg.n_layers, nb = 0, ns = 0;
    int rows, cols;
    for (int t = 0; t < FP_T_COUNT; t++) {
        target_field(m, t, &rows, &cols);
        nb += L * fp_quant_data_bytes(dt, rows, cols);
        ns += L * fp_quant_scale_floats(dt, rows, cols);
    }
    fp_model_hash(m, m->src_hash);
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
            float **f = target_field(m, t, &rows, &cols);
            const float *src = *f + l * (size_t)rows * cols;
            fp_quantize(dt, src, rows, cols, d, s);
            m->qm[l * FP_T_COUNT + t] = (fp_qmat){dt, rows, cols, d, fp_quant_scale_floats(dt, rows, cols) ? s : NULL};
            d += fp_quant_data_bytes(dt, rows, cols);
            s += fp_quant_scale_floats(dt, rows, cols);
        }
    for (int t = 0; t < FP_T_COUNT; t++)
        *target_field(m, t, &rows, &cols) = NULL;
    m->has_src_hash = 1;
    m->base_dtype = dt;
    m->q_bytes = nb + ns * sizeof(float);
    return compact_slab(m);
}
