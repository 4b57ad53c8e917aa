/* strategy_flora.c - FLoRA (Wang et al., NeurIPS 2024; docs/aggregation.md):
 * the round's full adapters are stacked exactly into the round's fold, the
 * workers add the folds to their base weights, and LoRA restarts. */
#include "strategy.h"
#include "staging.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "agg_lowrank.h"
#include "wire.h"

typedef struct {
    strategy base;
    const fp_lora *shape;       /* the global's model and LoRA config */
    uint64_t seed, round;
    update_stage st;            /* the round's updates (delta_k, at rank[k]) */
    int next_rank;
    fp_lora **folds;            /* every round's stacked adapter, rank R_t, alpha R_t */
    int n_folds, folds_cap;
} flora;

/* Checkpoint state: u32 "FLR1" | u32 n_folds | per fold: u32 rank | f32 slab. */
#define FLORA_STATE_MAGIC 0x31524c46u

static const strategy_ops flora_ops;

static int flora_begin(strategy *s, uint64_t round)
{
    flora *g = (flora *)s;
    stage_clear(&g->st);
    g->round = round;
    return 0;
}

static size_t floats_at_rank(const flora *g, int r)
{
    return g->shape->n_params / (size_t)g->shape->cfg.rank * (size_t)r;  /* linear in r */
}

static int flora_add(strategy *s, const float *delta, double weight)
{
    flora *g = (flora *)s;
    int r = g->next_rank;
    g->next_rank = 0;
    size_t n = r > 0 ? floats_at_rank(g, r) : s->n;
    return stage_add(&g->st, delta, n, weight, r, "flora");
}

static int push_fold(flora *g, fp_lora *fold)
{
    if (g->n_folds >= WIRE_MAX_FOLDS)
        return fp_error_set("flora: %d folds already (the protocol's limit)", g->n_folds);
    if (g->n_folds == g->folds_cap) {
        int cap = g->folds_cap ? 2 * g->folds_cap : 16;
        fp_lora **f = realloc(g->folds, (size_t)cap * sizeof *f);
        if (!f)
            return fp_error_set("flora: out of memory for the folds");
        g->folds = f;
        g->folds_cap = cap;
    }
    g->folds[g->n_folds++] = fold;
    return 0;
}

static fp_lora *new_fold(const flora *g, int rank)
{
    fp_lora_config c = g->shape->cfg;
    c.rank = rank;
    c.alpha = (float)rank;      /* scale 1: the weights p_k s_k are in B */
    c.use_rslora = 0;
    return fp_lora_new(&g->shape->model, &c);
}

/* Arrival order varies from run to run; the blocks of a fold go in a
 * canonical order (rank, weight, then the update's bytes), so that a replayed
 * round (a coordinator restart) gives the same factors, not only the same
 * product. */
static const flora *sort_ctx;
static int cmp_updates(const void *a, const void *b)
{
    const flora *g = sort_ctx;
    int i = *(const int *)a, j = *(const int *)b;
    int ri = g->st.rank[i] ? g->st.rank[i] : g->shape->cfg.rank;
    int rj = g->st.rank[j] ? g->st.rank[j] : g->shape->cfg.rank;
    if (ri != rj)
        return ri < rj ? -1 : 1;
    if (g->st.w[i] != g->st.w[j])
        return g->st.w[i] < g->st.w[j] ? -1 : 1;
    return memcmp(g->st.u[i], g->st.u[j], floats_at_rank(g, ri) * sizeof(float));
}

static void canonical_order(flora *g)
{
    int *idx = malloc((size_t)g->st.k * sizeof *idx);
    float **u = malloc((size_t)g->st.k * sizeof *u);
    double *w = malloc((size_t)g->st.k * sizeof *w);
    int *rk = malloc((size_t)g->st.k * sizeof *rk);
    if (idx && u && w && rk) {
        for (int i = 0; i < g->st.k; i++)
            idx[i] = i;
        sort_ctx = g;
        qsort(idx, (size_t)g->st.k, sizeof *idx, cmp_updates);
        for (int i = 0; i < g->st.k; i++) {
            u[i] = g->st.u[idx[i]];
            w[i] = g->st.w[idx[i]];
            rk[i] = g->st.rank[idx[i]];
        }
        memcpy(g->st.u, u, (size_t)g->st.k * sizeof *u);
        memcpy(g->st.w, w, (size_t)g->st.k * sizeof *w);
        memcpy(g->st.rank, rk, (size_t)g->st.k * sizeof *rk);
    }   /* out of memory: arrival order (the product is the same) */
    free(idx);
    free(u);
    free(w);
    free(rk);
}

/* The workers' full adapters global + delta_k (at their own rank: a smaller
 * rank was sent the truncated global), stacked with p_k = w_k / sum w into
 * this round's fold; then the global restarts from (seed, round). */
static int flora_finish(strategy *s, float *global)
{
    flora *g = (flora *)s;
    const fp_lora *shape = g->shape;
    int K = g->st.k, rc = -1, rsum = 0;
    fp_lora **w = calloc((size_t)K, sizeof *w);
    double *p = malloc((size_t)K * sizeof *p);
    fp_lora *gl = fp_lora_new(&shape->model, &shape->cfg), *fold = NULL;
    if (!w || !p || !gl) {
        fp_error_set("flora: out of memory");
        goto done;
    }
    memcpy(gl->params, global, s->n * sizeof(float));
    canonical_order(g);
    for (int k = 0; k < K; k++) {
        p[k] = g->st.w[k] / s->weight_sum;
        fp_lora_config c = shape->cfg;
        if (g->st.rank[k] > 0)
            c.rank = g->st.rank[k];
        if (!(w[k] = fp_lora_new(&shape->model, &c)))
            goto done;
        if (c.rank == shape->cfg.rank)
            memcpy(w[k]->params, global, s->n * sizeof(float));
        else if (fp_lr_adapter_truncate(w[k], gl) < 0)
            goto done;
        for (size_t i = 0; i < w[k]->n_params; i++)
            w[k]->params[i] += g->st.u[k][i];
        rsum += c.rank;
    }
    if (rsum > WIRE_MAX_FOLD_RANK) {
        fp_error_set("flora: the round's stacked rank %d exceeds %d", rsum, WIRE_MAX_FOLD_RANK);
        goto done;
    }
    if (!(fold = new_fold(g, rsum)) ||
        fp_lr_adapter_stack(fold, K, (const fp_lora *const *)w, p) < 0 || push_fold(g, fold) < 0)
        goto done;
    fold = NULL;
    fp_lora_init(gl, g->seed * 0x9E3779B97F4A7C15ULL + g->round);   /* LoRA restarts */
    memcpy(global, gl->params, s->n * sizeof(float));
    rc = 0;
done:
    if (w)
        for (int k = 0; k < K; k++)
            fp_lora_free(&w[k]);
    free(w);
    free(p);
    fp_lora_free(&gl);
    fp_lora_free(&fold);
    stage_clear(&g->st);
    return rc;
}

static size_t flora_state_size(const strategy *s)
{
    const flora *g = (const flora *)s;
    size_t n = 8;
    for (int i = 0; i < g->n_folds; i++)
        n += 4 + g->folds[i]->n_params * sizeof(float);
    return n;
}

static int flora_state_save(const strategy *s, uint8_t *buf, size_t len)
{
    const flora *g = (const flora *)s;
    if (len != flora_state_size(s))
        return fp_error_set("flora: state buffer of %zu bytes, expected %zu", len,
                            flora_state_size(s));
    uint32_t m = FLORA_STATE_MAGIC, n = (uint32_t)g->n_folds;
    memcpy(buf, &m, 4);
    memcpy(buf + 4, &n, 4);
    size_t pos = 8;
    for (int i = 0; i < g->n_folds; i++) {
        uint32_t r = (uint32_t)g->folds[i]->cfg.rank;
        memcpy(buf + pos, &r, 4);
        memcpy(buf + pos + 4, g->folds[i]->params, g->folds[i]->n_params * sizeof(float));
        pos += 4 + g->folds[i]->n_params * sizeof(float);
    }
    return 0;
}

static void drop_folds(flora *g)
{
    for (int i = 0; i < g->n_folds; i++)
        fp_lora_free(&g->folds[i]);
    g->n_folds = 0;
}

/* Each rank and size is checked against the bytes left before anything is
 * allocated; values must be finite. */
static int flora_state_load(strategy *s, const uint8_t *buf, size_t len)
{
    flora *g = (flora *)s;
    uint32_t m = 0, n = 0;
    if (len >= 8) {
        memcpy(&m, buf, 4);
        memcpy(&n, buf + 4, 4);
    }
    if (len < 8 || m != FLORA_STATE_MAGIC)
        return fp_error_set("flora: the checkpoint's strategy state (%zu bytes) is not flora's; "
                            "was the run started with another [strategy]?", len);
    if (n > WIRE_MAX_FOLDS)
        return fp_error_set("flora: the checkpoint claims %u folds (at most %d)", n,
                            WIRE_MAX_FOLDS);
    drop_folds(g);
    size_t pos = 8;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t r;
        if (len - pos < 4)
            goto short_state;
        memcpy(&r, buf + pos, 4);
        pos += 4;
        if (r < 1 || r > WIRE_MAX_FOLD_RANK)
            return fp_error_set("flora: fold %u of the checkpoint has rank %u (1..%d)", i, r,
                                WIRE_MAX_FOLD_RANK);
        size_t nf = floats_at_rank(g, (int)r);
        if ((len - pos) / sizeof(float) < nf)
            goto short_state;
        fp_lora *f = new_fold(g, (int)r);
        if (!f || push_fold(g, f) < 0) {
            fp_lora_free(&f);
            return -1;
        }
        memcpy(f->params, buf + pos, nf * sizeof(float));
        pos += nf * sizeof(float);
        for (size_t j = 0; j < nf; j++)
            if (!isfinite(f->params[j]))
                return fp_error_set("flora: fold %u of the checkpoint holds a non-finite value", i);
    }
    if (pos != len)
        return fp_error_set("flora: %zu bytes follow the checkpoint's %u folds", len - pos, n);
    return 0;
short_state:
    return fp_error_set("flora: the checkpoint's strategy state ends inside fold %d of %u "
                        "(%zu bytes)", g->n_folds, n, len);
}

static void flora_set_rank(strategy *s, int rank) { ((flora *)s)->next_rank = rank; }

static void flora_destroy(strategy *s)
{
    flora *g = (flora *)s;
    stage_free(&g->st);
    drop_folds(g);
    free(g->folds);
    free(g);
}

static const strategy_ops flora_ops = {"flora", flora_begin, flora_add, flora_finish,
                                       flora_state_size, flora_state_save, flora_state_load,
                                       flora_destroy, flora_set_rank};

strategy *strategy_flora_new(const fp_lora *shape, uint64_t seed)
{
    flora *g = calloc(1, sizeof *g);
    if (!g) {
        fp_error_set("out of memory");
        return NULL;
    }
    g->base.ops = &flora_ops;
    g->base.n = shape->n_params;
    g->shape = shape;
    g->seed = seed;
    return &g->base;
}

int strategy_flora_n_folds(const strategy *s)
{
    return s && s->ops == &flora_ops ? ((const flora *)s)->n_folds : 0;
}

const fp_lora *strategy_flora_fold(const strategy *s, int i)
{
    if (!s || s->ops != &flora_ops || i < 0 || i >= ((const flora *)s)->n_folds)
        return NULL;
    return ((const flora *)s)->folds[i];
}

fp_lora *strategy_flora_merged(const strategy *s)
{
    const flora *g = (const flora *)s;
    int n = strategy_flora_n_folds(s), rsum = 0;
    if (n == 0) {
        fp_error_set("flora: no folds to merge");
        return NULL;
    }
    double *ones = malloc((size_t)n * sizeof *ones);
    for (int i = 0; i < n; i++)
        rsum += g->folds[i]->cfg.rank;
    fp_lora *out = ones ? new_fold(g, rsum) : NULL;
    if (!out)
        fp_error_set("flora: out of memory for the merged adapter (rank %d)", rsum);
    for (int i = 0; out && i < n; i++)
        ones[i] = 1.0;
    if (out && fp_lr_adapter_stack(out, n, (const fp_lora *const *)g->folds, ones) < 0)
        fp_lora_free(&out);
    free(ones);
    return out;
}
