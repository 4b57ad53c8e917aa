/* agg_fedbuff.c - the FedBuff buffer and staleness weights (agg_fedbuff.h). */
#include "agg_fedbuff.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct fp_fedbuff {
    fp_stale_config cfg;
    size_t n, count;
    double psum, stale_sum;
    double *acc;            /* sum p w Delta, in double: K may be large */
};

void fp_stale_config_default(fp_stale_config *c)
{
    c->kind = FP_STALE_POLY;
    c->a = 0.5;
    c->b = 4.0;
}

int fp_stale_parse(const char *name, fp_stale_kind *kind)
{
    static const char *const names[] = {"poly", "const", "hinge"};
    for (int i = 0; i < 3; i++)
        if (!strcmp(name, names[i])) {
            *kind = (fp_stale_kind)i;
            return 0;
        }
    return fp_error_set("unknown staleness weighting '%s'; expected poly, const or hinge", name);
}

double fp_stale_weight(const fp_stale_config *c, uint64_t s)
{
    switch (c->kind) {
    case FP_STALE_CONST: return 1.0;
    case FP_STALE_HINGE:
        return (double)s <= c->b ? 1.0 : 1.0 / (c->a * ((double)s - c->b) + 1.0);
    case FP_STALE_POLY:
    default: return pow(1.0 + (double)s, -c->a);
    }
}

fp_fedbuff *fp_fedbuff_new(size_t n, const fp_stale_config *c)
{
    if (n == 0 || !(c->a >= 0) || !isfinite(c->a) || !(c->b >= 0) || !isfinite(c->b)) {
        fp_error_set("fedbuff: bad buffer (n %zu, a %g, b %g)", n, c->a, c->b);
        return NULL;
    }
    fp_fedbuff *f = calloc(1, sizeof *f);
    if (!f || !(f->acc = calloc(n, sizeof *f->acc))) {
        free(f);
        fp_error_set("fedbuff: out of memory for %zu parameters", n);
        return NULL;
    }
    f->cfg = *c;
    f->n = n;
    return f;
}

void fp_fedbuff_free(fp_fedbuff **self_p)
{
    if (!self_p || !*self_p)
        return;
    free((*self_p)->acc);
    free(*self_p);
    *self_p = NULL;
}

int fp_fedbuff_add(fp_fedbuff *self, const float *delta, double p, uint64_t from, uint64_t now)
{
    if (from > now)
        return fp_error_set("fedbuff: an update from version %llu is newer than the newest "
                            "version %llu", (unsigned long long)from, (unsigned long long)now);
    if (!(p > 0) || !isfinite(p))
        return fp_error_set("fedbuff: averaging weight %g; expected a positive number", p);
    for (size_t j = 0; j < self->n; j++)
        if (!isfinite(delta[j]))
            return fp_error_set("fedbuff: update value %zu is not finite", j);
    double w = p * fp_stale_weight(&self->cfg, now - from);
    for (size_t j = 0; j < self->n; j++)
        self->acc[j] += w * (double)delta[j];
    self->psum += p;
    self->stale_sum += (double)(now - from);
    self->count++;
    return 0;
}

size_t fp_fedbuff_count(const fp_fedbuff *self) { return self->count; }

double fp_fedbuff_mean_staleness(const fp_fedbuff *self)
{
    return self->count ? self->stale_sum / (double)self->count : 0.0;
}

int fp_fedbuff_apply(fp_fedbuff *self, float *x, float eta)
{
    if (self->count == 0)
        return fp_error_set("fedbuff: the buffer is empty");
    double s = (double)eta / self->psum;
    for (size_t j = 0; j < self->n; j++)
        x[j] = (float)((double)x[j] + s * self->acc[j]);
    memset(self->acc, 0, self->n * sizeof *self->acc);
    self->count = 0;
    self->psum = self->stale_sum = 0.0;
    return 0;
}
