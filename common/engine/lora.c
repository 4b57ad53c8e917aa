/* lora.c - LoRA configuration, target names and the parameter slab (see lora.h).
 * Saving and loading PEFT directories lives in lora_peft.c. */
#include "lora.h"

#include <ctype.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"

const char *const fp_target_names[FP_T_COUNT] = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
};

#define FP_T_ALL ((1u << FP_T_COUNT) - 1u)

void fp_lora_config_default(fp_lora_config *c)
{
    memset(c, 0, sizeof *c);
    c->rank = 8;
    c->alpha = 16.0f;
    c->targets = (1u << FP_T_Q) | (1u << FP_T_K) | (1u << FP_T_V) | (1u << FP_T_O);
    c->dropout = 0.0f;
    c->use_rslora = 0;
}

float fp_lora_scale(const fp_lora_config *c)
{
    if (c->rank <= 0)
        return 0.0f;
    return c->use_rslora ? c->alpha / sqrtf((float)c->rank) : c->alpha / (float)c->rank;
}

static int target_index(const char *name, size_t len)
{
    for (int t = 0; t < FP_T_COUNT; t++)
        if (strlen(fp_target_names[t]) == len && memcmp(fp_target_names[t], name, len) == 0)
            return t;
    return -1;
}

int fp_lora_parse_targets(const char *list, unsigned *mask)
{
    static const char valid[] =
        "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, all-linear";
    unsigned m = 0;
    if (!list)
        return fp_error_set("lora target modules: none given (valid: %s)", valid);
    const char *p = list;
    while (*p) {
        /* one comma-separated item, whitespace trimmed */
        while (*p && (isspace((unsigned char)*p) || *p == ','))
            p++;
        if (!*p)
            break;
        const char *s = p;
        while (*p && *p != ',')
            p++;
        const char *e = p;
        while (e > s && isspace((unsigned char)e[-1]))
            e--;
        size_t len = (size_t)(e - s);
        if ((len == 10 && memcmp(s, "all-linear", 10) == 0) || (len == 3 && memcmp(s, "all", 3) == 0)) {
            m |= FP_T_ALL;
            continue;
        }
        int t = target_index(s, len);
        if (t < 0)
            return fp_error_set("lora target modules: unknown module '%.*s' (valid: %s)",
                                (int)(len > 64 ? 64 : len), s, valid);
        m |= 1u << t;
    }
    if (m == 0)
        return fp_error_set("lora target modules: empty list (valid: %s)", valid);
    *mask = m;
    return 0;
}

void fp_lora_format_targets(unsigned mask, char *buf, size_t cap)
{
    if (cap == 0)
        return;
    buf[0] = '\0';
    size_t len = 0;
    for (int t = 0; t < FP_T_COUNT; t++) {
        if (!(mask & (1u << t)))
            continue;
        int n = snprintf(buf + len, cap - len, "%s%s", len ? "," : "", fp_target_names[t]);
        if (n < 0 || (size_t)n >= cap - len)
            return; /* truncated, still NUL-terminated */
        len += (size_t)n;
    }
}

int fp_lora_in_dim(const fp_model_config *m, int t)
{
    switch (t) {
    case FP_T_Q: case FP_T_K: case FP_T_V: case FP_T_O: case FP_T_GATE: case FP_T_UP:
        return m->dim;
    case FP_T_DOWN:
        return m->hidden_dim;
    default:
        return 0;
    }
}

int fp_lora_out_dim(const fp_model_config *m, int t)
{
    switch (t) {
    case FP_T_Q: case FP_T_O: case FP_T_DOWN:
        return m->dim;
    case FP_T_K: case FP_T_V:
        return fp_kv_dim(m);
    case FP_T_GATE: case FP_T_UP:
        return m->hidden_dim;
    default:
        return 0;
    }
}

fp_lora *fp_lora_new(const fp_model_config *m, const fp_lora_config *c)
{
    fp_lora *self = NULL;
    if (!m || !c) {
        fp_error_set("lora: no model config or lora config");
        return NULL;
    }
    if (c->rank < 1) {
        fp_error_set("lora: rank must be >= 1 (got %d)", c->rank);
        return NULL;
    }
    if ((c->targets & FP_T_ALL) == 0 || (c->targets & ~FP_T_ALL)) {
        fp_error_set("lora: target modules mask 0x%x is empty or invalid", c->targets);
        return NULL;
    }
    if (!(c->dropout >= 0.0f && c->dropout < 1.0f)) {
        fp_error_set("lora: dropout must be in [0, 1) (got %g)", (double)c->dropout);
        return NULL;
    }
    if (!isfinite(c->alpha)) {
        fp_error_set("lora: alpha is not finite");
        return NULL;
    }
    if (m->n_layers < 1 || m->dim < 1 || m->hidden_dim < 1 || m->n_heads < 1 ||
        m->n_kv_heads < 1 || m->dim % m->n_heads) {
        fp_error_set("lora: invalid model shape (layers %d, dim %d, hidden %d, heads %d/%d)",
                     m->n_layers, m->dim, m->hidden_dim, m->n_heads, m->n_kv_heads);
        return NULL;
    }
    self = calloc(1, sizeof *self);
    if (!self)
        goto oom;
    self->cfg = *c;
    self->model = *m;
    size_t n_slots = (size_t)m->n_layers * FP_T_COUNT;
    self->off_a = malloc(n_slots * sizeof *self->off_a);
    self->off_b = malloc(n_slots * sizeof *self->off_b);
    if (!self->off_a || !self->off_b)
        goto oom;
    /* size table: layer-major, targets in FP_T order, A before B */
    size_t n = 0, r = (size_t)c->rank;
    for (int l = 0; l < m->n_layers; l++) {
        for (int t = 0; t < FP_T_COUNT; t++) {
            size_t i = (size_t)l * FP_T_COUNT + (size_t)t;
            if (!(c->targets & (1u << t))) {
                self->off_a[i] = self->off_b[i] = SIZE_MAX;
                continue;
            }
            self->off_a[i] = n;
            n += r * (size_t)fp_lora_in_dim(m, t);
            self->off_b[i] = n;
            n += (size_t)fp_lora_out_dim(m, t) * r;
        }
    }
    self->n_params = n;
    self->params = calloc(n, sizeof *self->params);
    if (!self->params)
        goto oom;
    return self;
oom:
    fp_error_set("lora: out of memory");
    fp_lora_free(&self);
    return NULL;
}

void fp_lora_free(fp_lora **self_p)
{
    if (!self_p || !*self_p)
        return;
    fp_lora *self = *self_p;
    free(self->params);
    free(self->off_a);
    free(self->off_b);
    free(self);
    *self_p = NULL;
}

void fp_lora_init(fp_lora *self, uint64_t seed)
{
    fp_rng rng;
    fp_rng_seed(&rng, seed);
    /* PEFT: kaiming_uniform_(A, a=sqrt(5)) gives bound 1/sqrt(fan_in); B zero */
    for (int l = 0; l < self->model.n_layers; l++) {
        for (int t = 0; t < FP_T_COUNT; t++) {
            float *a = fp_lora_a(self, l, t), *b = fp_lora_b(self, l, t);
            if (!a)
                continue;
            size_t in = (size_t)fp_lora_in_dim(&self->model, t);
            size_t out = (size_t)fp_lora_out_dim(&self->model, t);
            float bound = 1.0f / sqrtf((float)in);
            for (size_t i = 0; i < (size_t)self->cfg.rank * in; i++)
                a[i] = (2.0f * fp_rng_float(&rng) - 1.0f) * bound;
            memset(b, 0, out * (size_t)self->cfg.rank * sizeof *b);
        }
    }
}

float *fp_lora_a(const fp_lora *self, int layer, int t)
{
    if (!self || layer < 0 || layer >= self->model.n_layers || t < 0 || t >= FP_T_COUNT)
        return NULL;
    size_t off = self->off_a[(size_t)layer * FP_T_COUNT + (size_t)t];
    return off == SIZE_MAX ? NULL : self->params + off;
}

float *fp_lora_b(const fp_lora *self, int layer, int t)
{
    if (!self || layer < 0 || layer >= self->model.n_layers || t < 0 || t >= FP_T_COUNT)
        return NULL;
    size_t off = self->off_b[(size_t)layer * FP_T_COUNT + (size_t)t];
    return off == SIZE_MAX ? NULL : self->params + off;
}

int fp_lora_check_model(const fp_lora *self, const fp_model_config *c)
{
    const fp_model_config *a = &self->model;
    if (a->dim == c->dim && a->hidden_dim == c->hidden_dim && a->n_layers == c->n_layers &&
        fp_kv_dim(a) == fp_kv_dim(c))
        return 0;
    return fp_error_set("adapter shapes (dim %d, hidden %d, layers %d, kv %d) do not match the "
                        "model (dim %d, hidden %d, layers %d, kv %d); wrong base model?",
                        a->dim, a->hidden_dim, a->n_layers, fp_kv_dim(a), c->dim, c->hidden_dim,
                        c->n_layers, fp_kv_dim(c));
}
