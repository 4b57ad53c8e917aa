/* optim.c - AdamW / SGD over one flat slab, clipping, LR schedules (see optim.h).
 *
 * The arithmetic follows torch.optim.AdamW / torch.optim.SGD (foreach=False)
 * step for step, so a run compares against PyTorch to float rounding.
 */
#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct fp_optim {
    fp_optim_config cfg;
    size_t n;
    float *slab;    /* AdamW: m [n] then v [n]; SGD with momentum: buf [n]; else NULL */
    int t;          /* steps done */
};

void fp_optim_config_default(fp_optim_config *c)
{
    memset(c, 0, sizeof *c);
    c->kind = FP_OPT_ADAMW;
    c->lr = 1e-3f;
    c->beta1 = 0.9f;
    c->beta2 = 0.999f;
    c->eps = 1e-8f;
    c->weight_decay = 0.0f;
    c->momentum = 0.0f;
    c->max_grad_norm = 0.0f;
    c->schedule = FP_SCHED_CONSTANT;
    c->warmup_steps = 0;
    c->total_steps = 0;
    c->min_lr_ratio = 0.0f;
}

int fp_optim_parse_kind(const char *s, fp_opt_kind *out)
{
    if (s && strcmp(s, "adamw") == 0) {
        *out = FP_OPT_ADAMW;
        return 0;
    }
    if (s && strcmp(s, "sgd") == 0) {
        *out = FP_OPT_SGD;
        return 0;
    }
    return fp_error_set("unknown optimizer '%s': expected \"adamw\" or \"sgd\"", s ? s : "(null)");
}

int fp_optim_parse_schedule(const char *s, fp_sched_kind *out)
{
    if (s && strcmp(s, "constant") == 0) {
        *out = FP_SCHED_CONSTANT;
        return 0;
    }
    if (s && strcmp(s, "cosine") == 0) {
        *out = FP_SCHED_COSINE;
        return 0;
    }
    return fp_error_set("unknown LR schedule '%s': expected \"constant\" or \"cosine\"",
                        s ? s : "(null)");
}

/* HF transformers: get_constant_schedule_with_warmup and
 * get_cosine_schedule_with_warmup, the latter floored at min_lr_ratio. */
float fp_optim_lr(const fp_optim_config *c, int step)
{
    if (step < 0)
        step = 0;
    if (c->warmup_steps > 0 && step < c->warmup_steps)
        return (float)((double)c->lr * step / c->warmup_steps);
    if (c->schedule == FP_SCHED_CONSTANT)
        return c->lr;
    int span = c->total_steps - c->warmup_steps;
    double progress = (double)(step - c->warmup_steps) / (span > 1 ? span : 1);
    /* Past total_steps HF's curve climbs again; we hold the floor instead. */
    double cosf = progress >= 1.0 ? 0.0 : 0.5 * (1.0 + cos(M_PI * progress));
    double f = c->min_lr_ratio + (1.0 - c->min_lr_ratio) * (cosf > 0.0 ? cosf : 0.0);
    return (float)(c->lr * f);
}

/* torch.nn.utils.clip_grad_norm_(norm_type=2): coef = max/(norm+1e-6), only
 * applied when below 1. Sum in double so millions of terms do not drift. */
float fp_grad_clip(float *grad, size_t n, float max_norm)
{
    double ss = 0.0;
    for (size_t i = 0; i < n; i++)
        ss += (double)grad[i] * grad[i];
    float norm = (float)sqrt(ss);
    if (max_norm <= 0.0f)
        return norm;
    float coef = max_norm / (norm + 1e-6f);
    if (coef < 1.0f) {
#pragma omp simd
        for (size_t i = 0; i < n; i++)
            grad[i] *= coef;
    }
    return norm;
}

fp_optim *fp_optim_new(const fp_optim_config *c, size_t n)
{
    fp_optim *self = calloc(1, sizeof *self);
    if (!self)
        goto oom;
    self->cfg = *c;
    self->n = n;
    size_t slab = 0;
    if (c->kind == FP_OPT_ADAMW)
        slab = 2 * n;
    else if (c->momentum != 0.0f)
        slab = n;
    if (slab > 0) {
        self->slab = calloc(slab, sizeof(float));
        if (!self->slab)
            goto oom;
    }
    return self;
oom:
    fp_optim_free(&self);
    fp_error_set("out of memory allocating optimizer state for %zu parameters", n);
    return NULL;
}

void fp_optim_free(fp_optim **self_p)
{
    if (!self_p || !*self_p)
        return;
    free((*self_p)->slab);
    free(*self_p);
    *self_p = NULL;
}

int fp_optim_steps_done(const fp_optim *self) { return self->t; }

/* torch _single_tensor_adamw: decay, lerp moments, bias-correct, addcdiv. */
static void adamw_update(fp_optim *self, float *p, const float *g, float lr)
{
    const fp_optim_config *c = &self->cfg;
    float *restrict m = self->slab;
    float *restrict v = self->slab + self->n;
    int t = self->t + 1;
    float decay = (float)(1.0 - (double)lr * c->weight_decay);
    float b1 = c->beta1, b2 = c->beta2, eps = c->eps;
    float step_size = (float)(lr / (1.0 - pow(c->beta1, t)));
    float bc2_sqrt = (float)sqrt(1.0 - pow(c->beta2, t));
    /* -O2 leaves this loop scalar; omp simd vectorizes it once the build
     * passes -fno-math-errno (sqrtf's errno branch is the last obstacle). */
#pragma omp simd
    for (size_t i = 0; i < self->n; i++) {
        float gi = g[i];
        float pi = p[i] * decay;
        float mi = b1 * m[i] + (1.0f - b1) * gi;
        float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
    }
}

/* torch _single_tensor_sgd (dampening 0, no nesterov); grad is left as is. */
static void sgd_update(fp_optim *self, float *restrict p, const float *restrict g, float lr)
{
    float wd = self->cfg.weight_decay, mu = self->cfg.momentum;
    float *restrict buf = self->slab;
    if (!buf) {
        for (size_t i = 0; i < self->n; i++)
            p[i] -= lr * (g[i] + wd * p[i]);
        return;
    }
    if (self->t == 0) {
        for (size_t i = 0; i < self->n; i++) {
            buf[i] = g[i] + wd * p[i];
            p[i] -= lr * buf[i];
        }
        return;
    }
#pragma omp simd
    for (size_t i = 0; i < self->n; i++) {
        buf[i] = mu * buf[i] + (g[i] + wd * p[i]);
        p[i] -= lr * buf[i];
    }
}

float fp_optim_step(fp_optim *self, float *params, float *grad)
{
    float norm = fp_grad_clip(grad, self->n, self->cfg.max_grad_norm);
    float lr = fp_optim_lr(&self->cfg, self->t);
    if (self->cfg.kind == FP_OPT_ADAMW)
        adamw_update(self, params, grad, lr);
    else
        sgd_update(self, params, grad, lr);
    self->t++;
    return norm;
}
