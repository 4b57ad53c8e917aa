/* agg_robust.h - Byzantine-robust aggregation of K updates (docs/aggregation.md).
 *
 *   median        out[i] = median_k u_k[i]          (Yin et al., ICML 2018); for even
 *                 K the mean of the two middle values
 *   trimmed mean  out[i] = mean of u_k[i] without the floor(beta K) largest and
 *                 floor(beta K) smallest values     (Yin et al. 2018), 0 <= beta < 0.5
 *   norm bound    out = sum_k w_k u_k min(1, M / ||u_k||_2) / sum_k w_k
 *                 (Sun et al., "Can you really backdoor FL?", 2019)
 *
 * Median and trimmed mean are unweighted (per coordinate, each worker one vote).
 * Unlike FedAvg's running sum, all of them need every update at once: memory is
 * O(K x n) on the coordinator, not streaming (norm bounding could stream if
 * each norm were known first; this one takes them all for simplicity). They need
 * the individual updates, so they do not run under secure aggregation.
 *
 * u is K pointers to updates of n floats; every value must be finite (checked:
 * -1 naming worker and index otherwise), so the result is finite too.
 * Sums run in double. Errors 0/-1 with fp_error_set().
 */
#ifndef FP_AGG_ROBUST_H
#define FP_AGG_ROBUST_H

#include <stddef.h>

#include "fp_error.h"

/* out [n] = coordinate-wise median of u_0..u_{K-1}. */
int fp_robust_median(size_t n, int K, const float *const *u, float *out) FP_WUR;

/* out [n] = coordinate-wise beta-trimmed mean; -1 unless 0 <= beta < 0.5 (K = 1
 * and 2 always keep everything, since floor(beta K) = 0). */
int fp_robust_trimmed_mean(size_t n, int K, const float *const *u, double beta,
                           float *out) FP_WUR;

/* out [n] = weighted mean of the updates, each first clipped to L2 norm M > 0;
 * w [K] positive weights, NULL for uniform. clipped (optional, may be NULL)
 * receives how many updates were scaled down. */
int fp_robust_norm_bound(size_t n, int K, const float *const *u, const double *w, double M,
                         float *out, int *clipped) FP_WUR;

#endif
