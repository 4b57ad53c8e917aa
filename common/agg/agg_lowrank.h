/* common/agg/ - the coordinator's aggregation math: exact low-rank rules
 * (this file), robust rules (agg_robust.h), server optimizers
 * (agg_serveropt.h). Uses base and engine (model shapes, LoRA layout).
 *
 * agg_lowrank.h - LoRA-aware aggregation of factor pairs (docs/aggregation.md).
 *
 * FedAvg averages B and A separately, so the global product is
 * mean(B) mean(A) != mean(B A): the cross terms B_j A_k (j != k) are noise.
 * These functions aggregate the products exactly, from the factors:
 *
 *   stack  (FLoRA):    Bs = [p_1 B_1 | ... | p_K B_K]  [out][R],  R = sum_k r_k
 *                      As = [A_1; ...; A_K]            [R][in]
 *                      Bs As = sum_k p_k B_k A_k       exactly, rank R
 *   svd    (FlexLoRA): the same sum re-factorised to rank r by a truncated SVD
 *                      computed from the factors (QR of Bs and As^T, SVD of the
 *                      R x R core), never forming the dense [out][in] matrix:
 *                      B = U_r sqrt(S_r) [out][r],  A = sqrt(S_r) V_r^T [r][in]
 *                      exact when R <= r (zero-padded), else the best rank-r
 *                      approximation in Frobenius norm (Eckart-Young).
 *   truncate / pad (HetLoRA): the first r' components of an SVD-ordered pair (the
 *                      best rank-r' approximation of it), and zero-padding back.
 *
 * Module functions take weights p_k as given (no normalisation, no LoRA scale).
 * The fp_lora helpers fold each adapter's scale s = alpha/r (or alpha/sqrt(r))
 * into the weights, so that ranks with different scales aggregate correctly:
 *   s_g B_g A_g = sum_k p_k s_k B_k A_k.
 * Shapes: B [out][r] and A [r][in], row-major, as in the fp_lora slab.
 * Internals run in double. Errors 0/-1 with fp_error_set().
 */
#ifndef FP_AGG_LOWRANK_H
#define FP_AGG_LOWRANK_H

#include <stddef.h>

#include "fp_error.h"
#include "lora.h"
#include "model.h"

/* ---- one (layer, target) module ------------------------------------------- */

/* Stacks K factor pairs: B_k [out][r[k]], A_k [r[k]][in], weights p[k] into
 * Bs [out][R] (column block k scaled by p[k]) and As [R][in], R = sum r[k]. */
int fp_lr_stack(int out, int in, int K, const float *const *B, const float *const *A,
                const int *r, const double *p, float *Bs, float *As) FP_WUR;

/* Truncated SVD of sum_k p[k] B_k A_k to rank r_new: B_new [out][r_new],
 * A_new [r_new][in], each component split as sqrt(s_j) on both sides (as
 * FlexLoRA), components in decreasing s_j; components beyond the rank of the sum
 * are zero. S (optional, may be NULL) receives the r_new singular values.
 * Works for any R versus out and in (reduced QR of tall or wide matrices). */
int fp_lr_svd(int out, int in, int K, const float *const *B, const float *const *A,
              const int *r, const double *p, int r_new, float *B_new, float *A_new,
              float *S) FP_WUR;

/* W [out][in] += s * Bs [out][R] As [R][in]  (cblas_sgemm). */
void fp_lr_fold(int out, int in, int R, float s, const float *Bs, const float *As, float *W);

/* HetLoRA: the first r_small components: B_small [out][r_small] = B[:, :r_small],
 * A_small [r_small][in] = A[:r_small, :]. The best rank-r_small approximation of
 * B A when the pair is SVD-ordered (fp_lr_svd output); for an arbitrary pair,
 * call fp_lr_svd with K = 1, p = 1, r_new = r_small instead. */
int fp_lr_truncate(int out, int in, int r, const float *B, const float *A, int r_small,
                   float *B_small, float *A_small) FP_WUR;

/* Zero-pads a rank-r_small pair to rank r >= r_small: B [out][r], A [r][in];
 * B A is unchanged. */
int fp_lr_pad(int out, int in, int r_small, const float *B_small, const float *A_small, int r,
              float *B, float *A) FP_WUR;

/* ---- whole adapters --------------------------------------------------------- */
/* All adapters must share the model shapes and target modules; ranks may differ.
 * p[k] are the aggregation weights (normally n_examples_k / sum, summing to 1). */

/* global <- rank-global->cfg.rank SVD aggregate of the workers' adapters:
 * s_g B_g A_g ~= sum_k p_k s_k B_k A_k per module. */
int fp_lr_adapter_svd(fp_lora *global, int K, const fp_lora *const *w,
                      const double *p) FP_WUR;

/* stacked <- exact stack; stacked->cfg.rank must equal sum of the ranks.
 * s_st Bs As = sum_k p_k s_k B_k A_k per module. */
int fp_lr_adapter_stack(fp_lora *stacked, int K, const fp_lora *const *w,
                        const double *p) FP_WUR;

/* FLoRA: base weights += s B A for every targeted module (m's shapes must match). */
int fp_lr_adapter_fold(fp_model *m, const fp_lora *a) FP_WUR;

/* HetLoRA: small (rank r' <= global rank) <- the first r' components of global,
 * each factor times sqrt(s_g / s_small), so that s_small B' A' = s_g B_r' A_r'. */
int fp_lr_adapter_truncate(fp_lora *small, const fp_lora *global) FP_WUR;

/* HetLoRA: big (rank r >= small's) <- small zero-padded, each factor times
 * sqrt(s_small / s_big), so that s_big B A = s_small B' A'. */
int fp_lr_adapter_pad(fp_lora *big, const fp_lora *small) FP_WUR;

#endif
