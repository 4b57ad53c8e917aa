/* finetune.h - the local training loop and evaluation, shared by the
 * `fedpeft finetune` / `eval` commands and (later) the worker.
 */
#ifndef FP_FINETUNE_H
#define FP_FINETUNE_H

#include <stddef.h>
#include <stdint.h>

#include "data.h"
#include "fp_error.h"
#include "lora.h"
#include "model.h"
#include "optim.h"

typedef struct {
    int steps;              /* optimizer steps */
    int batch, seq;         /* rows per micro-batch, tokens per row */
    int accum;              /* micro-batches per optimizer step (>= 1) */
    int shuffle;            /* 0: the documented consecutive order (data.h) */
    uint64_t seed;          /* shuffle order and dropout masks */
    int first_step;         /* data position: micro-batch index of step 0 / accum */
    fp_optim_config optim;
    int grad_checkpoint;    /* activation checkpointing (fp_train_new_ckpt) */
    int freeze_a;           /* ffa, rolora's B rounds: A gets no update at all (no
                               gradient, no weight decay) */
    int freeze_b;           /* rolora's A rounds: B likewise (not with freeze_a) */
    float prox_mu;          /* FedProx: grad += mu (w - prox_anchor); 0 = off */
    const float *prox_anchor; /* [n_params] the round's global adapter (prox_mu > 0) */
    const float *step_offset; /* [n_params] every step also moves the adapter by -lr x this
                                 (SCAFFOLD's c - c_i, in units of the optimizer's step
                                 direction: the gradient for SGD, Adam's normalized step
                                 for AdamW); NULL = none */
} fp_finetune_config;

/* Defaults: 100 steps, batch 4, seq 128, accum 1, shuffle, seed 1234, AdamW lr 1e-3. */
void fp_finetune_config_default(fp_finetune_config *c);

/* Called after each optimizer step; a non-zero return stops training (the
 * worker uses this to heartbeat and to abandon a round). */
typedef struct {
    int step, steps;        /* 1-based step just done, and the total */
    float loss;             /* mean loss of this step's micro-batches */
    float lr, grad_norm;    /* the step's learning rate and pre-clip gradient norm */
    double tokens_per_s;    /* target tokens per second over the run so far */
    double elapsed_s;
} fp_progress;
typedef int (*fp_progress_fn)(void *ctx, const fp_progress *p);

/* Trains `lora` in place on `data`. Returns 0; 1 if `progress` asked to stop
 * (the adapter then holds the steps done so far); or -1 with an error (e.g. a
 * NaN loss names the step and suggests a lower learning rate). *last_loss
 * (optional) receives the final step's loss. cfg->first_step offsets the data
 * order so that consecutive calls (rounds) read on through the data. */
int fp_finetune(const fp_model *model, fp_lora *lora, const fp_tokens *data,
                const fp_finetune_config *cfg, fp_progress_fn progress, void *ctx,
                float *last_loss) FP_WUR;

/* Mean loss over every eval row (data.h's order) of T tokens, evaluating
 * `batch` rows at a time. lora may be NULL (the base model). */
int fp_evaluate(const fp_model *model, const fp_lora *lora, const fp_tokens *data, int T,
                int batch, double *mean_loss, size_t *n_tokens) FP_WUR;
/* fp_evaluate calling tick(ctx) (when not NULL) after each batch: the worker's
 * heartbeats during a long evaluation. */
int fp_evaluate_tick(const fp_model *model, const fp_lora *lora, const fp_tokens *data, int T,
                     int batch, double *mean_loss, size_t *n_tokens, void (*tick)(void *ctx),
                     void *ctx) FP_WUR;

/* ---- the trainable view ------------------------------------------------------
 * The part of the slab a strategy trains and uploads: the whole slab
 * (FP_VIEW_ALL), the B factors alone (FP_VIEW_B: FFA-LoRA, rolora's B rounds)
 * or the A factors alone (FP_VIEW_A: rolora's A rounds), packed in slab order
 * (layer-major, targets q..down). Worker and coordinator derive it from the
 * LoRA spec, the strategy and the round, so uploads, sealing and secagg masking
 * cover view floats only: a one-factor view is about half the adapter. */
enum { FP_VIEW_ALL = 0, FP_VIEW_B = 1, FP_VIEW_A = 2 };

/* Floats in the view. */
size_t fp_ft_view_size(const fp_lora *l, int view);
/* packed [view] <- slab [n_params]. */
void fp_ft_view_gather(const fp_lora *l, int view, const float *slab, float *packed);
/* slab [n_params] <- packed [view] at the view's positions (others untouched). */
void fp_ft_view_scatter(const fp_lora *l, int view, const float *packed, float *slab);

#endif
