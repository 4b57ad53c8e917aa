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

/* Rows converted per chunk of a tensor that is not aligned f32: a multiple
 * of 64 (nf4's blocks start at a chunk) near 1M floats. */
static size_t chunk_rows(size_t cols)
{
    size_t r = ((size_t)1 << 20) / cols / 64 * 64;
    return r ? r : 64;
}

/* Rows [r0, r0 + nr) of t as f32 into out, through a view of just those rows. */
static int read_rows(fp_safetensors *st, const fp_st_tensor *t, size_t r0, size_t nr,
                     size_t cols, float *out)
{
    if (t->dtype != FP_DT_F32 && t->dtype != FP_DT_F16 && t->dtype != FP_DT_BF16)
        return fp_st_read_f32(st, t, out, t->numel);    /* names the dtype */
    fp_st_tensor part = *t;
    size_t es = t->dtype == FP_DT_F32 ? 4 : 2;
    part.begin = t->begin + r0 * cols * es;
    part.numel = nr * cols;
    part.end = part.begin + part.numel * es;
    return fp_st_read_f32(st, &part, out, part.numel);
}

/* Hashes tensor t and, where q or dst is given, quantizes it into q's storage
 * or copies it to dst as f32. Aligned f32 is read from the mapping itself;
 * anything else is converted a chunk of rows at a time into the walk's buffer,
 * so no tensor is ever held whole in f32. */
static int convert_tensor(walk *W, fp_safetensors *st, const fp_st_tensor *t, const void *raw,
                          const pspec *p, const fp_qmat *q, float *dst)
{
    size_t rows = (size_t)p->rows, cols = p->cols ? (size_t)p->cols : 1;
    if (in_place(raw, t->dtype, FP_BASE_F32)) {
        crypto_hash_sha256_update(&W->hash, raw, t->numel * sizeof(float));
        if (q)
            fp_quantize(q->dt, raw, rows, cols, (void *)q->data, (float *)q->scale);
        else if (dst)
            memcpy(dst, raw, t->numel * sizeof(float));
        return 0;
    }
    size_t step = chunk_rows(cols);
    for (size_t r0 = 0; r0 < rows; r0 += step) {
        size_t nr = rows - r0 < step ? rows - r0 : step;
        if (read_rows(st, t, r0, nr, cols, W->tmp) != 0)
            return -1;
        crypto_hash_sha256_update(&W->hash, (const unsigned char *)W->tmp, nr * cols * sizeof(float));
        if (q)
            model_quantize_rows(q, (int)r0, (int)nr, W->tmp);
        else if (dst)
            memcpy(dst + r0 * cols, W->tmp, nr * cols * sizeof(float));
    }
    return 0;
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
        size_t cols = p->cols ? (size_t)p->cols : 1, chunk = chunk_rows(cols) * cols;
        if (!in_place(raw, t->dtype, FP_BASE_F32) && (n < chunk ? n : chunk) > W->tmp_floats)
            W->tmp_floats = n < chunk ? n : chunk;
        if (tg < 0 && !keep)
            W->slab_floats += n;
        else if (tg >= 0 && !keep)
            W->q_bytes += qb, W->q_scales += qs;
        return tg < 0 && !keep;
    }
    if (keep)
        W->mapped += tg >= 0 ? qb : n * sizeof(float);
    fp_qmat *q = tg >= 0 ? &W->m->qm[qm_index(W->m, l, tg)] : NULL;
    if (q)
        *q = keep ? (fp_qmat){dt, p->rows, p->cols, raw, NULL}
                  : (fp_qmat){dt, p->rows, p->cols, W->qd, qs ? W->qs : NULL};
    if (convert_tensor(W, st, t, raw, p, keep ? NULL : q, keep ? NULL : slab_at) != 0)
        return -1;
    if (keep) {
        if (tg < 0)
            *p->field = (float *)raw;   /* read-only: a write faults rather than diverges */
        return 0;
    }
    fp_st_release(st, t);   /* converted: the file's pages leave this RSS */
    if (q) {
        W->qd += qb, W->qs += qs;
        return 0;
    }
    return 1;
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
