/* optim.h - optimizers over a flat parameter slab, gradient clipping, LR schedules.
 *
 * AdamW matches torch.optim.AdamW (decoupled weight decay applied first:
 * p -= lr * wd * p; then bias-corrected Adam with eps outside the sqrt).
 * SGD is plain p -= lr * g (with optional momentum, torch semantics).
 */
#ifndef FP_OPTIM_H
#define FP_OPTIM_H

#include <stddef.h>

#include "fp_error.h"

typedef enum { FP_OPT_ADAMW, FP_OPT_SGD } fp_opt_kind;
typedef enum { FP_SCHED_CONSTANT, FP_SCHED_COSINE } fp_sched_kind;

typedef struct {
    fp_opt_kind kind;
    float lr;
    float beta1, beta2, eps;    /* AdamW: 0.9, 0.999, 1e-8 */
    float weight_decay;         /* default 0 */
    float momentum;             /* SGD, default 0 */
    float max_grad_norm;        /* 0 disables clipping */
    fp_sched_kind schedule;
    int warmup_steps;           /* linear warmup from 0 (cosine schedule) */
    int total_steps;            /* cosine decays to min_lr_ratio * lr at total_steps */
    float min_lr_ratio;         /* default 0 */
} fp_optim_config;

void fp_optim_config_default(fp_optim_config *c);
/* "adamw" / "sgd"; "constant" / "cosine". -1 with a clear error otherwise. */
int fp_optim_parse_kind(const char *s, fp_opt_kind *out) FP_WUR;
int fp_optim_parse_schedule(const char *s, fp_sched_kind *out) FP_WUR;

/* Learning rate at step (0-based). */
float fp_optim_lr(const fp_optim_config *c, int step);

/* Scales grad so its L2 norm is at most max_norm (no-op if max_norm <= 0).
 * Returns the norm before clipping. */
float fp_grad_clip(float *grad, size_t n, float max_norm);

typedef struct fp_optim fp_optim;   /* opaque: moments, step count */

/* State for n parameters. Caller destroys. */
fp_optim *fp_optim_new(const fp_optim_config *c, size_t n) FP_WUR;
void fp_optim_free(fp_optim **self_p);
/* One update with the LR for the current step (then step++). Clips grad in
 * place first if max_grad_norm > 0. Returns the pre-clip gradient norm. */
float fp_optim_step(fp_optim *self, float *params, float *grad);
int fp_optim_steps_done(const fp_optim *self);

#endif
