/* agg_scaffold.h - SCAFFOLD's control variates (Karimireddy et al., ICML 2020,
 * Algorithm 1 with option II) on the LoRA slab.
 *
 * State: the server's c and each worker's c_i, all [n] like the adapter x.
 *   worker, each local step:  g <- g + c - c_i      (fp_scaffold_correct; the drift
 *                             correction, applied to the gradient before the
 *                             optimizer, so it works with SGD and AdamW alike)
 *   worker, after K steps from x to y_i, with step sizes eta_1..eta_K:
 *       c_i+ = c_i - c + (x - y_i) / sum_k eta_k    (option II; sum_k eta_k = K eta
 *                                                     for a constant rate)
 *       sends dc_i = c_i+ - c_i with its update, keeps c_i <- c_i+
 *   server, with the SUM of dc_i over the |S| workers that reported:
 *       c <- c + sum_i dc_i / N     (N = the number of bound identities)
 * Only sums of dc_i are needed, so the control deltas are masked and aggregated
 * with the update under secure aggregation (the update and dc_i are one vector).
 */
#ifndef FP_AGG_SCAFFOLD_H
#define FP_AGG_SCAFFOLD_H

#include <stddef.h>

#include "fp_error.h"

/* grad[i] += c[i] - c_i[i]. */
void fp_scaffold_correct(float *grad, const float *c, const float *c_i, size_t n);

/* Option II: writes dc = c_i+ - c_i and updates c_i in place, from the round's
 * start x, the worker's end y and the sum of its local step sizes (> 0, finite;
 * else -1 with fp_error and nothing changed). */
int fp_scaffold_worker_update(float *c_i, float *dc, const float *c, const float *x,
                              const float *y, double lr_sum, size_t n) FP_WUR;

/* c += sum_dc / n_total (n_total >= 1 identities). -1 (fp_error) on a non-finite
 * sum, with c unchanged. */
int fp_scaffold_server_update(float *c, const float *sum_dc, size_t n_total, size_t n) FP_WUR;

#endif
