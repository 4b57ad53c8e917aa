/* infer.h - token-by-token inference with a KV cache (generation).
 *
 * Same mathematics as train.h's forward (a test checks they agree), for one
 * token at a time. An adapter, if given, is applied unmerged:
 * y = W x + s * B (A x).
 */
#ifndef FP_INFER_H
#define FP_INFER_H

#include <stdint.h>

#include "fp_error.h"
#include "lora.h"
#include "model.h"
#include "rng.h"

typedef struct fp_infer fp_infer;   /* opaque: KV cache and scratch */

/* lora may be NULL. max_seq: cache length. Caller destroys. */
fp_infer *fp_infer_new(const fp_model *model, const fp_lora *lora, int max_seq) FP_WUR;
void fp_infer_free(fp_infer **self_p);

/* Feeds `token` at position `pos` (0 <= pos < max_seq; positions must be fed
 * in order). Returns the logits [vocab], valid until the next call. */
const float *fp_infer_step(fp_infer *self, int32_t token, int pos);

/* Picks the next token from logits: argmax when temperature == 0 (lowest id
 * on ties), otherwise softmax(logits / temperature) restricted to the top-p
 * nucleus (top_p >= 1 disables it), sampled with rng. */
int32_t fp_sample(const float *logits, int vocab, float temperature, float top_p, fp_rng *rng);

#endif
