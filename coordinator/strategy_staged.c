/* strategy_staged.c - the strategies that need each worker's update on its own
 * (strategy.h): svd (FlexLoRA) and the robust rules. The round's K updates are
 * copied as they arrive and combined at finish. */
#include "strategy.h"
#include "staging.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "agg_lowrank.h"
#include "agg_robust.h"
#include "lora.h"
#include "rng.h"

typedef struct {
    strategy base;
    staged_params p;
    uint64_t round;
    update_stage st;        /* the round's updates, n floats each (svd: at rank[k]) */
    int next_rank;          /* rank of the next add (strategy_staged_set_rank) */
} staged;

#define STAGED_STATE_MAGIC 0x53544731u /* "STG1": nothing kept across rounds */

static const char *const staged_names[] = {"svd", "median", "trimmed_mean", "norm_bound"};

static int staged_begin(strategy *s, uint64_t round)
{
    staged *g = (staged *)s;
    stage_clear(&g->st);
    g->round = round;
    return 0;
}

static int staged_add(strategy *s, const float *delta, double weight)
{
    staged *g = (staged *)s;
    int r = g->next_rank;
    g->next_rank = 0;
    size_t n = s->n;
    if (r > 0 && g->p.kind == STAGED_SVD) {  /* the slab is linear in the rank */
        const fp_lora *shape = g->p.shape;
        n = shape->n_params / (size_t)shape->cfg.rank * (size_t)r;
    }
    return stage_add(&g->st, delta, n, weight, r, staged_names[g->p.kind]);
}

/* A pair with B[:, j] = 0 and A[j, :] = 0 never trains: a fresh A row
 * (Kaiming-uniform as fp_lora_init, seeded by seed and round); B stays 0, so
 * the product is unchanged. Returns how many rows were re-initialised. */
static int revive_dead(fp_lora *a, uint64_t seed, uint64_t round)
{
    fp_rng rng;
    fp_rng_seed(&rng, seed * 0x9E3779B97F4A7C15ULL + round + 1);
    int r = a->cfg.rank, revived = 0;
    for (int l = 0; l < a->model.n_layers; l++)
        for (int t = 0; t < FP_T_COUNT; t++) {
            float *A = fp_lora_a(a, l, t), *B = fp_lora_b(a, l, t);
            if (!A)
                continue;
            int in = fp_lora_in_dim(&a->model, t), out = fp_lora_out_dim(&a->model, t);
            float bound = 1.0f / sqrtf((float)in);
            for (int j = 0; j < r; j++) {
                int dead = 1;
                for (int i = 0; i < in && dead; i++)
                    dead = A[(size_t)j * in + i] == 0.0f;
                for (int o = 0; o < out && dead; o++)
                    dead = B[(size_t)o * r + j] == 0.0f;
                if (!dead)
                    continue;
                for (int i = 0; i < in; i++)
                    A[(size_t)j * in + i] = (2.0f * fp_rng_float(&rng) - 1.0f) * bound;
                revived++;
            }
        }
    return revived;
}

/* svd: the workers' full adapters global + delta_k (at their own rank; a
 * smaller rank was sent the truncated global), re-factorised to the global rank. */
static int finish_svd(staged *g, float *global)
{
    const fp_lora *shape = g->p.shape;
    int K = g->st.k, rc = -1;
    fp_lora **w = calloc((size_t)K, sizeof *w);
    double *p = malloc((size_t)K * sizeof *p);
    fp_lora *out = fp_lora_new(&shape->model, &shape->cfg);
    fp_lora *gl = fp_lora_new(&shape->model, &shape->cfg);
    if (!w || !p || !out || !gl) {
        fp_error_set("svd: out of memory");
        goto done;
    }
    memcpy(gl->params, global, g->base.n * sizeof(float));
    for (int k = 0; k < K; k++) {
        p[k] = g->st.w[k] / g->base.weight_sum;
        fp_lora_config c = shape->cfg;
        if (g->st.rank[k] > 0)
            c.rank = g->st.rank[k];
        if (!(w[k] = fp_lora_new(&shape->model, &c)))
            goto done;
        if (c.rank == shape->cfg.rank)
            memcpy(w[k]->params, global, g->base.n * sizeof(float));
        else if (fp_lr_adapter_truncate(w[k], gl) < 0)
            goto done;
        for (size_t i = 0; i < w[k]->n_params; i++)
            w[k]->params[i] += g->st.u[k][i];
    }
    if (fp_lr_adapter_svd(out, K, (const fp_lora *const *)w, p) < 0)
        goto done;
    revive_dead(out, g->p.seed, g->round);
    memcpy(global, out->params, g->base.n * sizeof(float));
    rc = 0;
done:
    if (w)
        for (int k = 0; k < K; k++)
            fp_lora_free(&w[k]);
    free(w);
    free(p);
    fp_lora_free(&out);
    fp_lora_free(&gl);
    return rc;
}

static int finish_robust(staged *g, float *global)
{
    size_t n = g->base.n;
    float *d = malloc(n * sizeof *d);
    int rc, clipped = 0;
    if (!d)
        return fp_error_set("%s: out of memory", staged_names[g->p.kind]);
    const float *const *u = (const float *const *)g->st.u;
    if (g->p.kind == STAGED_MEDIAN)
        rc = fp_robust_median(n, g->st.k, u, d);
    else if (g->p.kind == STAGED_TRIMMED)
        rc = fp_robust_trimmed_mean(n, g->st.k, u, g->p.trim, d);
    else
        rc = fp_robust_norm_bound(n, g->st.k, u, g->st.w, g->p.norm_bound, d, &clipped);
    if (rc == 0)
        for (size_t i = 0; i < n; i++)
            global[i] += d[i];
    free(d);
    return rc;
}

static int staged_finish(strategy *s, float *global)
{
    staged *g = (staged *)s;
    int rc = g->p.kind == STAGED_SVD ? finish_svd(g, global) : finish_robust(g, global);
    stage_clear(&g->st);
    return rc;
}

static size_t staged_state_size(const strategy *s) { return 4; }

static int staged_state_save(const strategy *s, uint8_t *buf, size_t len)
{
    uint32_t m = STAGED_STATE_MAGIC;
    if (len != 4)
        return fp_error_set("%s: state buffer of %zu bytes, expected 4", s->ops->name, len);
    memcpy(buf, &m, 4);
    return 0;
}

static int staged_state_load(strategy *s, const uint8_t *buf, size_t len)
{
    uint32_t m = 0;
    if (len == 4)
        memcpy(&m, buf, 4);
    if (len != 4 || m != STAGED_STATE_MAGIC)
        return fp_error_set("%s: the checkpoint's strategy state (%zu bytes) is not this "
                            "strategy's; was the run started with another [strategy]?",
                            s->ops->name, len);
    return 0;
}

static void staged_destroy(strategy *s)
{
    staged *g = (staged *)s;
    stage_free(&g->st);
    free(g);
}

#define OPS(nm) {nm, staged_begin, staged_add, staged_finish, staged_state_size, \
                 staged_state_save, staged_state_load, staged_destroy, NULL}
static const strategy_ops staged_ops[] = {OPS("svd"), OPS("median"), OPS("trimmed_mean"),
                                          OPS("norm_bound")};

strategy *strategy_staged_new(const staged_params *p)
{
    if (p->n == 0 || (p->kind == STAGED_SVD && !p->shape)) {
        fp_error_set("staged strategy: empty adapter or no shape");
        return NULL;
    }
    staged *g = calloc(1, sizeof *g);
    if (!g) {
        fp_error_set("out of memory");
        return NULL;
    }
    g->base.ops = &staged_ops[p->kind];
    g->base.n = p->n;
    g->p = *p;
    return &g->base;
}

void strategy_staged_set_rank(strategy *s, int rank)
{
    if (s->ops->begin == staged_begin)
        ((staged *)s)->next_rank = rank;
    else if (s->ops->set_rank)
        s->ops->set_rank(s, rank);
}
