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
 * What the coordinator runs (fp_scaffold_server_update_mean): with every worker
 * taking the same K steps of rate eta from the same x, option II gives
 *     dc_i = -(y_i - x) / (K eta) - c          (c_i cancels),
 * so the weighted control update sum_i p_i dc_i, p_i = w_i / sum_{S} w * |S| / N,
 * is -(|S| / N) (c + dx / (K eta)) with dx = sum_i w_i (y_i - x) / sum_i w_i, the
 * FedAvg aggregate itself. The control deltas need no upload, no masking and no
 * bound of their own: c follows from what secure aggregation (and DP noise)
 * already released, and each worker keeps c_i to itself. (With AdamW, eta is the
 * learning rate: the usual approximation of option II.)
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

/* c -= frac * (c + dx / k_lr): the server update above from the round's
 * aggregate dx (n floats), frac = |S| / N (reporters over bound identities, in
 * (0, 1]) and k_lr = K eta > 0. -1 (fp_error, c unchanged) on a bad argument or
 * a non-finite dx. */
int fp_scaffold_server_update_mean(float *c, const float *dx, double frac, double k_lr,
                                   size_t n) FP_WUR;

/* c += sum_dc / n_total (n_total >= 1 identities). -1 (fp_error) on a non-finite
 * sum, with c unchanged. */
int fp_scaffold_server_update(float *c, const float *sum_dc, size_t n_total, size_t n) FP_WUR;

#endif
