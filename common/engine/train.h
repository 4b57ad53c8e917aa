/* train.h - forward and backward passes of a LoRA-adapted model over a batch.
 *
 * The base weights are frozen: backward produces gradients for the LoRA slab
 * only (same layout as fp_lora.params) and never allocates gradient or
 * optimizer memory for the base model. Activations for one batch of B rows of
 * T tokens are kept in an fp_train (allocated once, reused every step).
 */
#ifndef FP_TRAIN_H
#define FP_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "fp_error.h"
#include "lora.h"
#include "model.h"

typedef struct fp_train fp_train;   /* opaque: activation buffers */

/* Buffers for batch B x T. `lora` may be NULL (base model only; eval).
 * The model and adapter must outlive the fp_train. Caller destroys. */
fp_train *fp_train_new(const fp_model *model, const fp_lora *lora, int B, int T) FP_WUR;
/* As fp_train_new, with activation checkpointing when grad_checkpoint: only
 * each layer's input is kept through the step and backward recomputes the rest
 * of a layer from it (one more forward of each layer but the top; gradients are
 * bitwise the same). Saved activations fall from about (10 C + 2 KV + 2 H) N L
 * floats to C N (L + 1) + one layer's. No effect without a lora. */
fp_train *fp_train_new_ckpt(const fp_model *model, const fp_lora *lora, int B, int T,
                            int grad_checkpoint) FP_WUR;
void fp_train_free(fp_train **self_p);
/* Bytes of activations kept from forward for backward (the engine's own
 * count, for tests and benchmarks: the figure checkpointing lowers). */
size_t fp_train_saved_bytes(const fp_train *self);

/* Forward over inputs [B*T] with targets [B*T] (a target < 0 is masked: it
 * neither counts in the loss nor in the token count). Returns the mean
 * cross-entropy over unmasked targets (0 if none), writing their count to
 * *n_tokens if non-NULL.
 *
 * If grad != NULL, also runs backward and ADDS d(loss * grad_scale)/d(params)
 * into grad (n = lora->n_params floats); pass grad_scale = 1/accum_steps for
 * gradient accumulation. dropout_seed seeds the LoRA dropout masks (dropout is
 * applied only when grad != NULL and cfg.dropout > 0).
 *
 * Returns NaN if the loss is not finite (the caller reports it). */
float fp_train_step(fp_train *self, const int32_t *inputs, const int32_t *targets,
                    float *grad, float grad_scale, uint64_t dropout_seed, size_t *n_tokens);

/* After fp_train_step: logits of row b, position t ([vocab] floats). */
const float *fp_train_logits(const fp_train *self, int b, int t);

#endif
