/* agg_fedbuff.h - asynchronous buffered aggregation (FedBuff, Nguyen et al.,
 * AISTATS 2022): updates arrive whenever a worker finishes; each joins a buffer;
 * every K updates the buffer becomes one new global version.
 *
 * An update trained from version v_i that joins when the newest version is V has
 * staleness s_i = V - v_i and weight w(s_i):
 *   poly  w(s) = (1 + s)^-a      (a = 0.5 by default: 1/sqrt(1+s), the paper's)
 *   const w(s) = 1
 *   hinge w(s) = 1 for s <= b, else 1 / (a (s - b) + 1)
 * The buffer of K updates Delta_k = y_k - x_{v_k} gives the new global
 *   x_{V+1} = x_V + eta_g * sum_k p_k w(s_k) Delta_k / sum_k p_k
 * with p_k the update's averaging weight (examples, or 1 with equal weighting):
 * dividing by sum p_k (not sum p_k w) keeps stale updates damped, as in the paper.
 * The buffer streams: memory is one accumulator of the adapter's size however
 * large K is.
 */
#ifndef FP_AGG_FEDBUFF_H
#define FP_AGG_FEDBUFF_H

#include <stddef.h>
#include <stdint.h>

#include "fp_error.h"

typedef enum { FP_STALE_POLY, FP_STALE_CONST, FP_STALE_HINGE } fp_stale_kind;

typedef struct {
    fp_stale_kind kind;
    double a, b;          /* poly exponent a; hinge slope a and start b */
} fp_stale_config;

/* poly with a = 0.5. */
void fp_stale_config_default(fp_stale_config *c);
/* "poly", "const", "hinge"; the error lists them. */
int fp_stale_parse(const char *name, fp_stale_kind *kind) FP_WUR;
double fp_stale_weight(const fp_stale_config *c, uint64_t staleness);

typedef struct fp_fedbuff fp_fedbuff;

/* A buffer for updates of n floats. Caller destroys. */
fp_fedbuff *fp_fedbuff_new(size_t n, const fp_stale_config *c) FP_WUR;
void fp_fedbuff_free(fp_fedbuff **self_p);

/* Adds an update trained from version `from` while `now` is the newest (from <=
 * now; else -1), with averaging weight p > 0. A non-finite delta is refused (-1,
 * fp_error) and leaves the buffer as it was. */
int fp_fedbuff_add(fp_fedbuff *self, const float *delta, double p, uint64_t from,
                   uint64_t now) FP_WUR;
size_t fp_fedbuff_count(const fp_fedbuff *self);
/* Mean staleness of the updates in the buffer (for the metrics line). */
double fp_fedbuff_mean_staleness(const fp_fedbuff *self);

/* x += eta * (sum p w Delta) / (sum p), then empties the buffer. -1 when empty. */
int fp_fedbuff_apply(fp_fedbuff *self, float *x, float eta) FP_WUR;

#endif
