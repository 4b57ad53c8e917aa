/* strategy_scaffold.c - SCAFFOLD (Karimireddy et al. 2020) on the coordinator:
 * FedAvg for the adapter, plus the server control variate c, which the
 * checkpoint keeps as this strategy's state (strategy.h). c is updated from
 * the round's released aggregate (agg_scaffold.h), so the workers upload
 * nothing more than under fedavg and secure aggregation covers it as it is. */
#include "strategy.h"

#include <stdlib.h>
#include <string.h>

#include "agg_scaffold.h"

typedef struct {
    strategy base;
    strategy *avg;          /* the adapter's FedAvg */
    float *c;               /* [n] the server control variate, 0 at the start */
} scaffold;

#define SCAFFOLD_STATE_MAGIC 0x53434631u /* "SCF1", then u64 n, then n floats of c */

static int sc_begin(strategy *s, uint64_t round)
{
    return strategy_begin(((scaffold *)s)->avg, round);
}

static int sc_add(strategy *s, const float *delta, double weight)
{
    return strategy_add(((scaffold *)s)->avg, delta, weight);
}

static int sc_finish(strategy *s, float *global)
{
    strategy *avg = ((scaffold *)s)->avg;
    avg->denominator = s->denominator;     /* the fixed one ([dp]), or 0 */
    return strategy_finish(avg, global);
}

static size_t sc_state_size(const strategy *s) { return 12 + s->n * sizeof(float); }

static int sc_state_save(const strategy *s, uint8_t *buf, size_t len)
{
    const scaffold *f = (const scaffold *)s;
    uint32_t m = SCAFFOLD_STATE_MAGIC;
    uint64_t n = s->n;
    if (len != sc_state_size(s))
        return fp_error_set("scaffold: state buffer of %zu bytes, expected %zu", len,
                            sc_state_size(s));
    memcpy(buf, &m, 4);
    memcpy(buf + 4, &n, 8);
    memcpy(buf + 12, f->c, s->n * sizeof(float));
    return 0;
}

static int sc_state_load(strategy *s, const uint8_t *buf, size_t len)
{
    scaffold *f = (scaffold *)s;
    uint32_t m = 0;
    uint64_t n = 0;
    if (len >= 12) {
        memcpy(&m, buf, 4);
        memcpy(&n, buf + 4, 8);
    }
    if (len != sc_state_size(s) || m != SCAFFOLD_STATE_MAGIC || n != s->n)
        return fp_error_set("scaffold: the checkpoint's strategy state (%zu bytes) is not a "
                            "control variate of %zu floats; was the run started with another "
                            "[strategy] name or [lora] shape?", len, s->n);
    memcpy(f->c, buf + 12, s->n * sizeof(float));
    return 0;
}

static void sc_destroy(strategy *s)
{
    scaffold *f = (scaffold *)s;
    strategy_destroy(&f->avg);
    free(f->c);
    free(f);
}

static const strategy_ops scaffold_ops = {
    "scaffold", sc_begin, sc_add, sc_finish, sc_state_size,
    sc_state_save, sc_state_load, sc_destroy, NULL,
};

strategy *strategy_scaffold_new(size_t n)
{
    scaffold *f = calloc(1, sizeof *f);
    if (!f || !(f->avg = strategy_fedavg_new(n)) || !(f->c = calloc(n, sizeof *f->c))) {
        if (f)
            strategy_destroy(&f->avg);
        free(f);
        if (n)
            fp_error_set("scaffold: out of memory for %zu floats", n);
        return NULL;
    }
    f->base.ops = &scaffold_ops;
    f->base.n = n;
    return &f->base;
}

const float *strategy_scaffold_c(const strategy *s)
{
    return s && s->ops == &scaffold_ops ? ((const scaffold *)s)->c : NULL;
}

int strategy_scaffold_update(strategy *s, const float *dx, double frac, double k_lr)
{
    if (!s || s->ops != &scaffold_ops)
        return 0;
    return fp_scaffold_server_update_mean(((scaffold *)s)->c, dx, frac, k_lr, s->n);
}
