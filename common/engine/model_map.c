/* model_map.c - loading a base model from mapped safetensors files, using
 * aligned tensors in place (fp_model_load_dtype in model.h), and fp_model_own. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lora.h"
#include "model.h"
#include "model_internal.h"

/* One walk over the parameter table; the first sizes, the second fills. */
typedef struct {
    fp_model *m;
    loader *L;
    int fill;
    size_t slab_floats, q_bytes, q_scales, tmp_floats, mapped;
    uint8_t *qd;            /* fill: next free byte of m->qdata */
    float *qs;              /* fill: next free float of m->qscale */
    float *tmp;             /* fill: one tensor converted to f32 */
    crypto_hash_sha256_state hash;
} walk;

/* The matrix field's index in m->qm's order (targets, then embeddings and
 * lm_head, which are quantized too unless the base is f32), or -1. */
static int target_of(fp_model *m, float **field)
{
    fp_model_weights *w = &m->w;
    float **f[FP_T_COUNT + 2] = {&w->wq, &w->wk, &w->wv, &w->wo, &w->w_gate, &w->w_up,
                                 &w->w_down, &w->tok_emb, &w->lm_head};
    int n = m->base_dtype == FP_BASE_F32 ? FP_T_COUNT : FP_T_COUNT + 2;
    for (int t = 0; t < n; t++)
        if (f[t] == field)
            return t;
    return -1;
}

/* Where the matrix tg of layer l lives in m->qm. */
static size_t qm_index(const fp_model *m, int l, int tg)
{
    size_t L = (size_t)m->cfg.n_layers;
    return tg < FP_T_COUNT ? (size_t)l * FP_T_COUNT + (size_t)tg : L * FP_T_COUNT + (size_t)(tg - FP_T_COUNT);
}

/* In place when the file already holds the format the kernels read, aligned
 * for it (the mapping is page-aligned; data offsets need not be). */
static int in_place(const void *p, fp_dtype file, fp_base_dtype want)
{
    if (file == FP_DT_F32 && want == FP_BASE_F32)
        return ((uintptr_t)p & 3) == 0;
    if (file == FP_DT_BF16 && want == FP_BASE_BF16)
        return ((uintptr_t)p & 1) == 0;
    return 0;
}

/* The tensor as f32 for hashing and converting: the mapping itself when it
 * can be, else converted into the walk's buffer. */
static const float *as_f32(walk *W, fp_safetensors *st, const fp_st_tensor *t, const void *p)
{
    if (in_place(p, t->dtype, FP_BASE_F32))
        return p;
    return fp_st_read_f32(st, t, W->tmp, t->numel) == 0 ? W->tmp : NULL;
}

/* Sizes (fill = 0) or places (fill = 1) one tensor of spec p, layer l.
 * 1 when it went into the slab at slab_at, 0 otherwise, -1 on error. */
static int one_tensor(walk *W, const pspec *p, int l, float *slab_at)
{
    char name[256];
    fp_safetensors *st;
    const fp_st_tensor *t;
    spec_name(name, sizeof name, p, l);
    if (loader_get(W->L, W->m->cfg.arch, name, p->rows, p->cols, &st, &t) != 0)
        return -1;
    const void *raw = fp_st_data(st, t);
    int tg = target_of(W->m, p->field), big = !p->per_layer && p->kind == K_MAT;
    fp_base_dtype dt = tg >= FP_T_COUNT ? fp_table_dtype(W->m->base_dtype) : W->m->base_dtype;
    int keep = tg >= 0 ? in_place(raw, t->dtype, dt) : big && in_place(raw, t->dtype, FP_BASE_F32);
    size_t n = t->numel, qb = fp_quant_data_bytes(dt, p->rows, p->cols);
    size_t qs = fp_quant_scale_floats(dt, p->rows, p->cols);
    if (!W->fill) {
        if (!in_place(raw, t->dtype, FP_BASE_F32) && n > W->tmp_floats)
            W->tmp_floats = n;
        if (tg < 0 && !keep)
            W->slab_floats += n;
        else if (tg >= 0 && !keep)
            W->q_bytes += qb, W->q_scales += qs;
        return tg < 0 && !keep;
    }
    const float *src = as_f32(W, st, t, raw);
    if (!src)
        return -1;
    crypto_hash_sha256_update(&W->hash, (const unsigned char *)src, n * sizeof(float));
    if (keep)
        W->mapped += tg >= 0 ? qb : n * sizeof(float);
    if (tg >= 0) {
        fp_qmat *q = &W->m->qm[qm_index(W->m, l, tg)];
        *q = (fp_qmat){dt, p->rows, p->cols, raw, NULL};
        if (keep)
            return 0;
        fp_quantize(dt, src, p->rows, p->cols, W->qd, W->qs);
        fp_st_release(st, t);   /* converted: the file's pages leave this RSS */
        q->data = W->qd;
        q->scale = qs ? W->qs : NULL;
        W->qd += qb, W->qs += qs;
    } else if (keep) {
        *p->field = (float *)raw;   /* read-only: a write faults rather than diverges */
    } else {
        memcpy(slab_at, src, n * sizeof(float));
        fp_st_release(st, t);
        return 1;
    }
    return 0;
}

static int walk_all(walk *W)
{
    pspec p[MAX_PSPEC];
    int np = param_table(W->m, p);
    float *at = W->m->slab;
    for (int i = 0; i < np; i++) {
        int nl = p[i].per_layer ? W->m->cfg.n_layers : 1;
        float *start = at;
        for (int l = 0; l < nl; l++) {
            int rc = one_tensor(W, &p[i], l, at);
            if (rc < 0)
                return -1;
            if (rc == 1 && W->fill) {
                at += spec_numel(&p[i]);
                *p[i].field = start;
            }
        }
    }
    return 0;
}

static int alloc_storage(fp_model *m, const walk *W)
{
    size_t L = (size_t)m->cfg.n_layers;
    m->slab = malloc((W->slab_floats ? W->slab_floats : 1) * sizeof(float));
    m->qm = calloc(L * FP_T_COUNT + 2, sizeof *m->qm);  /* + embeddings, lm_head */
    m->qdata = malloc(W->q_bytes ? W->q_bytes : 1);
    m->qscale = malloc((W->q_scales ? W->q_scales : 1) * sizeof(float));
    if (!m->slab || !m->qm || !m->qdata || !m->qscale)
        return fp_error_set("out of memory loading the model (%zu MB)",
                            (W->slab_floats * 4 + W->q_bytes + W->q_scales * 4) >> 20);
    m->n_floats = W->slab_floats;
    m->q_bytes = W->q_bytes + W->q_scales * sizeof(float);
    return 0;
}

fp_model *fp_model_load_dtype(const char *dir, fp_base_dtype dt)
{
    walk W = {0};
    fp_model *m = calloc(1, sizeof *m);
    if (!m) {
        fp_error_set("out of memory");
        return NULL;
    }
    m->base_dtype = dt;
    if (!(W.L = loader_open(dir, &m->cfg)) || fp_config_validate(&m->cfg, dir) != 0)
        goto err;
    W.m = m;
    m->map = W.L;   /* owned by m from here: fp_model_free releases it */
    if (walk_all(&W) != 0 || alloc_storage(m, &W) != 0)
        goto err;
    if (W.tmp_floats && !(W.tmp = malloc(W.tmp_floats * sizeof(float)))) {
        fp_error_set("out of memory");
        goto err;
    }
    W.fill = 1;
    W.qd = m->qdata;
    W.qs = m->qscale;
    model_hash_begin(&W.hash, &m->cfg);
    if (walk_all(&W) != 0 || check_o_bias(W.L, m) != 0)
        goto err;
    model_hash_end(&W.hash, m->src_hash);
    if (m->cfg.tie_embeddings) {
        size_t e = (size_t)m->cfg.n_layers * FP_T_COUNT;
        m->w.lm_head = m->w.tok_emb;
        m->qm[e + 1] = m->qm[e];
    }
    m->has_src_hash = 1;
    m->mapped_bytes = W.mapped;
    free(W.tmp);
    return m;
err:
    free(W.tmp);
    if (!m->map)
        loader_free(&W.L);
    fp_model_free(&m);
    return NULL;
}

void model_map_release(fp_model *m)
{
    loader *L = m->map;
    loader_free(&L);
    m->map = NULL;
}

int fp_model_own(fp_model *m)
{
    if (!m->map)
        return 0;
    if (m->base_dtype != FP_BASE_F32)
        return fp_error_set("the base is held as %s: there is no f32 copy to write into",
                            fp_base_dtype_name(m->base_dtype));
    fp_model *own = fp_model_new(&m->cfg);
    if (!own)
        return -1;
    pspec src[MAX_PSPEC], dst[MAX_PSPEC];
    int np = param_table(m, src);
    param_table(own, dst);
    for (int i = 0; i < np; i++) {
        int tg = target_of(m, src[i].field), nl = src[i].per_layer ? m->cfg.n_layers : 1;
        size_t per = spec_numel(&src[i]);
        for (int l = 0; l < nl; l++) {
            const float *from = tg >= 0 ? fp_model_qmat(m, l, tg).data : *src[i].field + l * per;
            memcpy(*dst[i].field + (size_t)l * per, from, per * sizeof(float));
        }
    }
    free(m->slab), free(m->qm), free(m->qdata), free(m->qscale);
    model_map_release(m);
    m->w = own->w;
    m->slab = own->slab;
    m->n_floats = own->n_floats;
    m->qm = NULL, m->qdata = NULL, m->qscale = NULL;
    m->q_bytes = m->mapped_bytes = 0;
    m->has_src_hash = 0;    /* as a copied load: the hash follows what is written */
    free(own);
    return 0;
}
