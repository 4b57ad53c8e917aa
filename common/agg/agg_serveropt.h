/* agg_serveropt.h - server optimizers on the round's aggregated delta
 * (Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2).
 *
 * Each round the coordinator aggregates the workers' updates into one delta
 * D = sum_k p_k (x_k - x) (FedAvg, or any strategy) and calls fp_sopt_step,
 * which treats D as a pseudo-gradient (elementwise, x, D, m, v all [n]):
 *
 *   none      x += D                                   (plain FedAvg)
 *   avgm      m = b1 m + D;              x += lr m     (FedAvgM, Hsu et al. 2019)
 *   adagrad   m = b1 m + (1-b1) D;  v = v + D^2
 *   adam      m = b1 m + (1-b1) D;  v = b2 v + (1-b2) D^2
 *   yogi      m = b1 m + (1-b1) D;  v = v - (1-b2) D^2 sign(v - D^2)
 *             adaptive ones then:   x += lr m / (sqrt(v) + tau)
 *
 * No bias correction (as in the paper). v starts at tau^2, m at 0.
 * Defaults (the paper's): b1 0.9, b2 0.99, tau 1e-3; lr 1.0 for avgm, 1e-2 for
 * the adaptive ones (tune it: the paper grids lr over 10^{-3..1}).
 * They act on the aggregate only, so they run under secure aggregation.
 *
 * State: one slab [m n][v n] (avgm: m only; none: nothing) plus the step count.
 * Saved bytes (little-endian host order, as the checkpoint):
 *   u32 magic "FSO1", u32 version 1, u32 kind, u32 reserved 0, u64 n, u64 step,
 *   then the slab (n_slabs * n floats).
 * The loader checks magic, version, kind and n against this optimizer and the
 * exact length before reading the floats, and refuses non-finite moments or a
 * negative v.
 */
#ifndef FP_AGG_SERVEROPT_H
#define FP_AGG_SERVEROPT_H

#include <stddef.h>
#include <stdint.h>

#include "fp_error.h"

typedef enum { FP_SOPT_NONE, FP_SOPT_AVGM, FP_SOPT_ADAGRAD, FP_SOPT_ADAM, FP_SOPT_YOGI } fp_sopt_kind;

typedef struct {
    fp_sopt_kind kind;
    float lr;           /* server learning rate eta (unused by none) */
    float beta1;        /* momentum (avgm's beta) */
    float beta2;        /* adam, yogi */
    float tau;          /* adaptivity, v0 = tau^2 */
} fp_sopt_config;

typedef struct fp_sopt fp_sopt;

/* The paper's defaults for kind. */
void fp_sopt_config_default(fp_sopt_config *c, fp_sopt_kind kind);
/* "none", "fedavgm", "fedadagrad", "fedadam", "fedyogi" (also without "fed");
 * error lists the known names. */
int fp_sopt_parse(const char *name, fp_sopt_kind *kind) FP_WUR;
const char *fp_sopt_name(fp_sopt_kind kind);

/* Optimizer for an adapter of n floats; the config is validated (lr > 0,
 * betas in [0, 1), tau > 0, all finite). Caller destroys. */
fp_sopt *fp_sopt_new(const fp_sopt_config *c, size_t n) FP_WUR;
void fp_sopt_free(fp_sopt **self_p);

/* x [n] updated in place with the aggregated delta D [n] (finite, validated by
 * the caller). */
int fp_sopt_step(fp_sopt *self, float *x, const float *delta) FP_WUR;
uint64_t fp_sopt_steps(const fp_sopt *self);
/* Read-only moments (NULL where the kind keeps none), for tests and metrics. */
const float *fp_sopt_m(const fp_sopt *self);
const float *fp_sopt_v(const fp_sopt *self);

size_t fp_sopt_state_size(const fp_sopt *self);
/* Writes exactly fp_sopt_state_size bytes; len must equal it. */
int fp_sopt_state_save(const fp_sopt *self, uint8_t *buf, size_t len) FP_WUR;
/* Validates everything before changing self; on error self is untouched. */
int fp_sopt_state_load(fp_sopt *self, const uint8_t *buf, size_t len) FP_WUR;

#endif
