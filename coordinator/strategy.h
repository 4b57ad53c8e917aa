/* strategy.h - how a round's updates become the next global adapter.
 *
 * A strategy is an object behind a small table of functions, so that others
 * (FedProx, FedAdam, FLoRA, ...) can be added without touching the rounds:
 *
 *     strategy_begin(s, round)            a new round: forget partial sums
 *     strategy_add(s, delta, weight)      one validated update (n floats), streamed:
 *                                         the strategy must not keep `delta`
 *     strategy_finish(s, global)          applies the round's result to global (n floats)
 *     strategy_state_save / _load         opaque bytes for the checkpoint (optimizer
 *                                         moments etc.; FedAvg has a version word only)
 *
 * Memory stays O(n) whatever the number of workers: the coordinator keeps one
 * staging buffer and the strategy its running sums.
 */
#ifndef COORD_STRATEGY_H
#define COORD_STRATEGY_H

#include <stddef.h>
#include <stdint.h>

#include "fp_error.h"
#include "lora.h"

typedef struct strategy strategy;

typedef struct {
    const char *name;
    int (*begin)(strategy *s, uint64_t round);
    int (*add)(strategy *s, const float *delta, double weight);
    int (*finish)(strategy *s, float *global);
    /* Bytes of state; save writes exactly that many into buf. */
    size_t (*state_size)(const strategy *s);
    int (*state_save)(const strategy *s, uint8_t *buf, size_t len);
    int (*state_load)(strategy *s, const uint8_t *buf, size_t len);
    void (*destroy)(strategy *s);
    /* Optional (NULL: one rank): the next add's delta is of a rank-`rank` adapter. */
    void (*set_rank)(strategy *s, int rank);
} strategy_ops;

struct strategy {
    const strategy_ops *ops;
    size_t n;               /* floats in the adapter */
    size_t n_added;         /* updates added this round */
    double weight_sum;      /* their total weight */
    double denominator;     /* > 0: fedavg's finish divides by this, not weight_sum
                               (DP's fixed denominator, strategy_set_denominator) */
};

/* FedAvg (strategy_fedavg.c): global += sum_k w_k delta_k / sum_k w_k, with the
 * sum in double, in arrival order. Caller destroys. */
strategy *strategy_fedavg_new(size_t n) FP_WUR;

/* Strategies that need every worker's update individually (strategy_staged.c):
 * the K updates of a round are kept until finish, memory O(K x n), and they
 * cannot run under secure aggregation (coord_config refuses the combination).
 *   svd      global <- rank-r truncated SVD of sum_k p_k s_k B_k A_k computed from
 *            the factors of the workers' full adapters (global + delta_k), never
 *            the dense out x in matrix (fp_lr_adapter_svd); dead components
 *            (zero in both factors) get a fresh A row from (seed, round).
 *   median, trimmed_mean, norm_bound (agg_robust.h): the robust estimate of the
 *            updates is added to global (fedavg / ffa with robust = ...).
 * `shape` (svd only) gives the adapter's model and LoRA config; n its floats. */
typedef enum { STAGED_SVD, STAGED_MEDIAN, STAGED_TRIMMED, STAGED_NORM } staged_kind;
typedef struct {
    staged_kind kind;
    size_t n;
    const void *shape;          /* const fp_lora * (svd) */
    double trim, norm_bound;
    uint64_t seed;
} staged_params;
strategy *strategy_staged_new(const staged_params *p) FP_WUR;
/* svd, flora: the next strategy_add's delta is of a rank-`rank` adapter (a
 * worker with a smaller rank, which was sent the truncated global); 0 = the
 * global's rank. No effect on other strategies. */
void strategy_staged_set_rank(strategy *s, int rank);

/* FLoRA (strategy_flora.c, docs/aggregation.md): the round's full adapters
 * (global + delta_k, each at its worker's rank) are stacked exactly with
 * p_k = w_k / sum w (fp_lr_adapter_stack) into the round's fold, an adapter of
 * rank R_t = sum r_k and scale 1 (alpha = R_t, no rsLoRA): B_t A_t =
 * sum_k p_k s_k B_k A_k. finish records the fold and restarts the global
 * (fp_lora_init from (seed, round)). The folds are the checkpoint state.
 * `shape` (the global) must outlive the strategy. Caller destroys. */
strategy *strategy_flora_new(const fp_lora *shape, uint64_t seed) FP_WUR;
/* The folds so far, oldest first (0 / NULL for other strategies). */
int strategy_flora_n_folds(const strategy *s);
const fp_lora *strategy_flora_fold(const strategy *s, int i);
/* One adapter of rank sum_t R_t, scale 1, whose B A is the sum of every fold's
 * (the folds' factors side by side): base + it == base with the folds added.
 * NULL with an error when there is no fold. Caller destroys. */
fp_lora *strategy_flora_merged(const strategy *s) FP_WUR;

/* SCAFFOLD (strategy_scaffold.c, docs/aggregation.md): FedAvg, plus the server
 * control variate c (n floats, zero at the start, the checkpoint state), which
 * goes to the workers with each TRAIN task. After each round's release,
 * strategy_scaffold_update sets c -= frac (c + dx / k_lr) from the released
 * mean change dx (agg_scaffold.h: this is SCAFFOLD's option-II server update,
 * with no upload of control deltas). Caller destroys. */
strategy *strategy_scaffold_new(size_t n) FP_WUR;
/* c, or NULL for another strategy. */
const float *strategy_scaffold_c(const strategy *s);
/* The c update (no effect, 0, for another strategy); -1 with an error and c
 * unchanged on a non-finite dx or bad frac / k_lr. */
int strategy_scaffold_update(strategy *s, const float *dx, double frac, double k_lr) FP_WUR;

/* By name ("fedavg"); NULL with an error listing the known names. */
strategy *strategy_new(const char *name, size_t n) FP_WUR;
void strategy_destroy(strategy **s_p);

int strategy_begin(strategy *s, uint64_t round) FP_WUR;
/* weight > 0 and finite; delta's values finite (the caller validated them). */
int strategy_add(strategy *s, const float *delta, double weight) FP_WUR;
/* fedavg and scaffold (the means): this round's finish applies
 * sum_k w_k delta_k / d instead of / sum_k w_k (d > 0 and finite), so that the
 * released mean does not depend on who reported ([dp], docs/privacy.md).
 * strategy_begin forgets it. -1 with an error for another strategy or a bad d. */
int strategy_set_denominator(strategy *s, double d) FP_WUR;
/* -1 if nothing was added this round (global untouched). */
int strategy_finish(strategy *s, float *global) FP_WUR;
size_t strategy_state_size(const strategy *s);
int strategy_state_save(const strategy *s, uint8_t *buf, size_t len) FP_WUR;
/* Refuses state of another strategy or version, with a clear error. */
int strategy_state_load(strategy *s, const uint8_t *buf, size_t len) FP_WUR;
const char *strategy_name(const strategy *s);

#endif
