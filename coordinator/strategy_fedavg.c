/* strategy_fedavg.c - federated averaging weighted by training examples, and
 * the strategy dispatch (strategy.h). */
#include "strategy.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    strategy base;
    double *sum;            /* [n] sum_k w_k * delta_k */
} fedavg;

#define FEDAVG_STATE_MAGIC 0x46415631u /* "FAV1": FedAvg keeps nothing across rounds */

static int fedavg_begin(strategy *s, uint64_t round)
{
    fedavg *f = (fedavg *)s;
    memset(f->sum, 0, s->n * sizeof *f->sum);
    s->n_added = 0;
    s->weight_sum = 0;
    return 0;
}

static int fedavg_add(strategy *s, const float *delta, double weight)
{
    fedavg *f = (fedavg *)s;
    for (size_t i = 0; i < s->n; i++)
        f->sum[i] += weight * (double)delta[i];
    return 0;
}

static int fedavg_finish(strategy *s, float *global)
{
    fedavg *f = (fedavg *)s;
    double inv = 1.0 / (s->denominator > 0 ? s->denominator : s->weight_sum);
    for (size_t i = 0; i < s->n; i++)
        global[i] = (float)((double)global[i] + f->sum[i] * inv);
    return 0;
}

static size_t fedavg_state_size(const strategy *s) { return 4; }

static int fedavg_state_save(const strategy *s, uint8_t *buf, size_t len)
{
    uint32_t m = FEDAVG_STATE_MAGIC;
    if (len != 4)
        return fp_error_set("fedavg: state buffer of %zu bytes, expected 4", len);
    memcpy(buf, &m, 4);
    return 0;
}

static int fedavg_state_load(strategy *s, const uint8_t *buf, size_t len)
{
    uint32_t m = 0;
    if (len == 4)
        memcpy(&m, buf, 4);
    if (len != 4 || m != FEDAVG_STATE_MAGIC)
        return fp_error_set("fedavg: the checkpoint's strategy state (%zu bytes) is not "
                            "FedAvg's; was the run started with another [strategy] name?", len);
    return 0;
}

static void fedavg_destroy(strategy *s)
{
    fedavg *f = (fedavg *)s;
    free(f->sum);
    free(f);
}

static const strategy_ops fedavg_ops = {
    "fedavg", fedavg_begin, fedavg_add, fedavg_finish, fedavg_state_size,
    fedavg_state_save, fedavg_state_load, fedavg_destroy, NULL,
};

strategy *strategy_fedavg_new(size_t n)
{
    if (n == 0) {
        fp_error_set("fedavg: empty adapter");
        return NULL;
    }
    fedavg *f = calloc(1, sizeof *f);
    double *sum = calloc(n, sizeof *sum);
    if (!f || !sum) {
        free(f);
        free(sum);
        fp_error_set("fedavg: out of memory for %zu floats", n);
        return NULL;
    }
    f->base.ops = &fedavg_ops;
    f->base.n = n;
    f->sum = sum;
    return &f->base;
}

/* ---- dispatch ---------------------------------------------------------------- */

strategy *strategy_new(const char *name, size_t n)
{
    if (strcmp(name, "fedavg") == 0)
        return strategy_fedavg_new(n);
    fp_error_set("unknown strategy '%s'; known: fedavg", name);
    return NULL;
}

void strategy_destroy(strategy **s_p)
{
    if (!s_p || !*s_p)
        return;
    (*s_p)->ops->destroy(*s_p);
    *s_p = NULL;
}

int strategy_begin(strategy *s, uint64_t round)
{
    s->n_added = 0;
    s->weight_sum = 0;
    s->denominator = 0;
    return s->ops->begin(s, round);
}

int strategy_add(strategy *s, const float *delta, double weight)
{
    if (!(weight > 0) || !isfinite(weight))
        return fp_error_set("%s: update weight %g must be positive and finite", s->ops->name,
                            weight);
    if (s->ops->add(s, delta, weight) < 0)
        return -1;
    s->n_added++;
    s->weight_sum += weight;
    return 0;
}

int strategy_set_denominator(strategy *s, double d)
{
    if (strcmp(s->ops->name, "fedavg") != 0 && strcmp(s->ops->name, "scaffold") != 0)
        return fp_error_set("%s is not a mean: no fixed denominator", s->ops->name);
    if (!(d > 0) || !isfinite(d))
        return fp_error_set("%s: denominator %g must be positive and finite", s->ops->name, d);
    s->denominator = d;
    return 0;
}

int strategy_finish(strategy *s, float *global)
{
    if (s->n_added == 0)
        return fp_error_set("%s: no updates to aggregate", s->ops->name);
    return s->ops->finish(s, global);
}

size_t strategy_state_size(const strategy *s) { return s->ops->state_size(s); }

int strategy_state_save(const strategy *s, uint8_t *buf, size_t len)
{
    return s->ops->state_save(s, buf, len);
}

int strategy_state_load(strategy *s, const uint8_t *buf, size_t len)
{
    return s->ops->state_load(s, buf, len);
}

const char *strategy_name(const strategy *s) { return s->ops->name; }
