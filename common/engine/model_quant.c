/* model_quant.c - a base model held in bf16 / int8 / nf4 (see fp_model_quantize in model.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lora.h"
#include "rng.h"
#include "model.h"
#include "model_internal.h"

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

/* qm holds the layers' targets, then the embeddings and lm_head. */
static size_t emb_slot(const fp_model *m)
{
    return (size_t)m->cfg.n_layers * FP_T_COUNT;
}

/* An f32 mapped model has qm views of its targets only. */
fp_qmat fp_model_emb(const fp_model *m)
{
    if (m->qm && m->base_dtype != FP_BASE_F32)
        return m->qm[emb_slot(m)];
    return (fp_qmat){FP_BASE_F32, m->cfg.vocab_size, m->cfg.dim, m->w.tok_emb, NULL};
}

fp_qmat fp_model_head(const fp_model *m)
{
    if (m->qm && m->base_dtype != FP_BASE_F32)
        return m->qm[emb_slot(m) + 1];
    return (fp_qmat){FP_BASE_F32, m->cfg.vocab_size, m->cfg.dim, m->w.lm_head, NULL};
}

/* Shape of qm slot i; 0 when it has no storage of its own (a tied lm_head). */
static int slot_shape(fp_model *m, size_t i, int *rows, int *cols)
{
    if (i < emb_slot(m)) {
        target_field(m, (int)(i % FP_T_COUNT), rows, cols);
        return 1;
    }
    *rows = m->cfg.vocab_size, *cols = m->cfg.dim;
    return !(i > emb_slot(m) && m->cfg.tie_embeddings);
}

/* The format of qm slot i in a base of format dt. */
static fp_base_dtype slot_dt(const fp_model *m, size_t i, fp_base_dtype dt)
{
    return i < emb_slot(m) ? dt : fp_table_dtype(dt);
}

/* The f32 source of qm slot i in an f32-laid-out model. */
static const float *slot_src(fp_model *m, size_t i)
{
    int rows, cols;
    if (i == emb_slot(m))
        return m->w.tok_emb;
    if (i > emb_slot(m))
        return m->w.lm_head;
    float **f = target_field(m, (int)(i % FP_T_COUNT), &rows, &cols);
    return *f + i / FP_T_COUNT * (size_t)rows * cols;
}

void model_quantize_rows(const fp_qmat *q, int r0, int nr, const float *src)
{
    size_t cols = (size_t)q->cols;
    uint8_t *d = (uint8_t *)q->data + fp_quant_data_bytes(q->dt, (size_t)r0, cols);
    float *s = q->scale ? (float *)q->scale + fp_quant_scale_floats(q->dt, (size_t)r0, cols) : NULL;
    fp_quantize(q->dt, src, (size_t)nr, cols, d, s);
}

size_t fp_model_bytes(const fp_model *m)
{
    return m->n_floats * sizeof(float) + m->q_bytes + m->mapped_bytes;
}

/* Moves what stays f32 (norms, biases) into a smaller slab. */
static int compact_slab(fp_model *m)
{
    const fp_model_config *c = &m->cfg;
    fp_model_weights *w = &m->w;
    size_t L = (size_t)c->n_layers, d = (size_t)c->dim, kv = (size_t)fp_kv_dim(c);
    struct { float **p; size_t n; } keep[] = {
        {&w->rms_att, L * d}, {&w->bq, c->qkv_bias ? L * d : 0},
        {&w->bk, c->qkv_bias ? L * kv : 0}, {&w->bv, c->qkv_bias ? L * kv : 0},
        {&w->rms_ffn, L * d}, {&w->rms_final, d},
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
    free(m->slab);
    m->slab = slab;
    m->n_floats = total;
    return 0;
}

/* Allocates qm/qdata/qscale for dt and points every view at its place. */
static int alloc_quantized(fp_model *m, fp_base_dtype dt)
{
    size_t ns_slots = emb_slot(m) + 2, nb = 0, ns = 0;
    int rows, cols;
    for (size_t i = 0; i < ns_slots; i++)
        if (slot_shape(m, i, &rows, &cols)) {
            nb += fp_quant_data_bytes(slot_dt(m, i, dt), rows, cols);
            ns += fp_quant_scale_floats(slot_dt(m, i, dt), rows, cols);
        }
    m->qm = calloc(ns_slots, sizeof *m->qm);
    m->qdata = malloc(nb ? nb : 1);
    m->qscale = malloc((ns ? ns : 1) * sizeof(float));
    if (!m->qm || !m->qdata || !m->qscale) {
        free(m->qm), free(m->qdata), free(m->qscale);
        m->qm = NULL, m->qdata = NULL, m->qscale = NULL;
        return fp_error_set("out of memory quantizing the model to %s", fp_base_dtype_name(dt));
    }
    uint8_t *d = m->qdata;
    float *s = m->qscale;
    for (size_t i = 0; i < ns_slots; i++) {
        if (!slot_shape(m, i, &rows, &cols)) {
            m->qm[i] = m->qm[i - 1];    /* tied: lm_head is the embeddings */
            continue;
        }
        fp_base_dtype sd = slot_dt(m, i, dt);
        size_t sf = fp_quant_scale_floats(sd, rows, cols);
        m->qm[i] = (fp_qmat){sd, rows, cols, d, sf ? s : NULL};
        d += fp_quant_data_bytes(sd, rows, cols);
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
    for (size_t i = 0; i < emb_slot(m) + 2; i++)
        if (slot_shape(m, i, &rows, &cols)) {
            fp_qmat *q = &m->qm[i];
            fp_quantize(q->dt, slot_src(m, i), rows, cols, (void *)q->data, (float *)q->scale);
        }
    for (int t = 0; t < FP_T_COUNT; t++)
        *target_field(m, t, &rows, &cols) = NULL;
    m->w.tok_emb = m->w.lm_head = NULL;
    m->has_src_hash = 1;
    return compact_slab(m);
}

/* Rows of f32 scratch for drawing a random matrix: a multiple of nf4's
 * 64-value blocks whatever the width. */
#define TABLE_CHUNK 64

/* Draws q's rows from r (fp_model_randomize's distribution, row after row)
 * and quantizes them TABLE_CHUNK rows at a time: no f32 table is ever held. */
static void random_table(const fp_qmat *q, fp_rng *r, float scale, float *scratch)
{
    for (int r0 = 0; r0 < q->rows; r0 += TABLE_CHUNK) {
        int nr = q->rows - r0 < TABLE_CHUNK ? q->rows - r0 : TABLE_CHUNK;
        size_t n = (size_t)nr * (size_t)q->cols;
        for (size_t i = 0; i < n; i++)
            scratch[i] = scale * (2.0f * fp_rng_float(r) - 1.0f);
        model_quantize_rows(q, r0, nr, scratch);
    }
}

/* Norms around 1, as fp_model_randomize draws them. */
static void random_norm(float *x, size_t n, fp_rng *r)
{
    for (size_t i = 0; i < n; i++)
        x[i] = 1.0f + 0.1f * (2.0f * fp_rng_float(r) - 1.0f);
}

/* full's f32 slab: norms (drawn later) and zero biases. */
static int alloc_small(fp_model *full)
{
    const fp_model_config *cfg = &full->cfg;
    size_t L = (size_t)cfg->n_layers, d = (size_t)cfg->dim, kv = (size_t)fp_kv_dim(cfg);
    size_t nb = cfg->qkv_bias ? L * (d + 2 * kv) : 0;
    full->n_floats = 2 * L * d + d + nb;
    if (!(full->slab = malloc(full->n_floats * sizeof(float))))
        return fp_error_set("out of memory");
    fp_model_weights *w = &full->w;
    memset(w, 0, sizeof *w);
    float *at = full->slab;
    w->rms_att = at, at += L * d;
    w->rms_ffn = at, at += L * d;
    w->rms_final = at, at += d;
    if (cfg->qkv_bias) {
        w->bq = at, at += L * d;
        w->bk = at, at += L * kv;
        w->bv = at;
        memset(w->bq, 0, nb * sizeof(float));
    }
    return 0;
}

/* Layer l from its own stream (seed + 1 + l): the attention norm, q, k, v, o,
 * the feed-forward norm, gate, up, down, each matrix drawn and quantized
 * TABLE_CHUNK rows at a time, so not even one layer is held in f32. */
static void random_layer(fp_model *full, size_t l, uint64_t seed, float scale, float *scratch)
{
    size_t d = (size_t)full->cfg.dim;
    fp_rng r;
    fp_rng_seed(&r, seed + 1 + l);
    random_norm(full->w.rms_att + l * d, d, &r);
    for (int t = 0; t < FP_T_COUNT; t++) {
        if (t == FP_T_GATE)
            random_norm(full->w.rms_ffn + l * d, d, &r);
        random_table(&full->qm[l * FP_T_COUNT + (size_t)t], &r, scale, scratch);
    }
}

fp_model *fp_model_new_random(const fp_model_config *cfg, fp_base_dtype dt, uint64_t seed,
                              float scale)
{
    fp_model *full = NULL;
    float *scratch = NULL;
    if (dt == FP_BASE_F32) {
        if ((full = fp_model_new(cfg)))
            fp_model_randomize(full, seed, scale);
        return full;
    }
    if (fp_config_validate(cfg, "model config") != 0)
        return NULL;
    int wide = cfg->dim > cfg->hidden_dim ? cfg->dim : cfg->hidden_dim;
    if (!(full = calloc(1, sizeof *full)) ||
        !(scratch = malloc((size_t)TABLE_CHUNK * (size_t)wide * sizeof(float)))) {
        fp_error_set("out of memory");
        goto err;
    }
    full->cfg = *cfg;
    if (alloc_quantized(full, dt) != 0 || alloc_small(full) != 0)
        goto err;
    for (size_t l = 0; l < (size_t)cfg->n_layers; l++)
        random_layer(full, l, seed, scale, scratch);
    fp_rng r;   /* the embeddings, lm_head and the final norm from the seed's stream */
    fp_rng_seed(&r, seed);
    random_table(&full->qm[emb_slot(full)], &r, scale, scratch);
    if (!cfg->tie_embeddings)
        random_table(&full->qm[emb_slot(full) + 1], &r, scale, scratch);
    random_norm(full->w.rms_final, (size_t)cfg->dim, &r);
    snprintf(full->src_hash, sizeof full->src_hash, "random-%s", fp_base_dtype_name(dt));
    full->has_src_hash = 1;
    free(scratch);
    return full;
err:
    free(scratch);
    fp_model_free(&full);
    return NULL;
}
