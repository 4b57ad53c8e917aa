/* data.h - training data as one token stream, and its batches.
 *
 * Forms (this issue): plain text (tokenized as one stream, no special tokens)
 * and JSONL whose lines hold "input_ids": [...] (appended in order).
 * Each token carries a loss flag (1 = counts as a target); masked tokens are
 * still inputs but their targets are -1.
 *
 * Batch order, so runs reproduce and compare (no shuffle): step j reads tokens
 * [j*B*T, j*B*T + B*T + 1); row b is the T+1 tokens starting at j*B*T + b*T;
 * inputs are the first T, targets the next T. Past the end it wraps (epochs).
 * With shuffle, the rows (windows of T+1 starting at multiples of T) are
 * visited in a seeded random order per epoch.
 */
#ifndef FP_DATA_H
#define FP_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "fp_error.h"

struct fp_tokenizer;

typedef struct {
    int32_t *ids;
    uint8_t *loss;      /* NULL means every target counts */
    size_t n;
} fp_tokens;

/* Loads `path`: a .jsonl/.json file whose first record has "input_ids" is read
 * as ids; anything else is plain text encoded with tok (which may be NULL only
 * for input_ids data). Errors name the file and line. */
int fp_data_load(const char *path, const struct fp_tokenizer *tok, int vocab_size,
                 fp_tokens *out) FP_WUR;
void fp_tokens_free(fp_tokens *t);

/* Number of full rows of T+1 tokens (starting at multiples of T). */
size_t fp_data_rows(const fp_tokens *t, int T);

typedef struct fp_batcher fp_batcher;   /* opaque: order, epoch */

/* Caller destroys. Errors if the data holds fewer than B rows. */
fp_batcher *fp_batcher_new(const fp_tokens *t, int B, int T, int shuffle, uint64_t seed) FP_WUR;
void fp_batcher_free(fp_batcher **self_p);
/* Fills inputs and targets [B*T] for step j (targets -1 where masked). */
void fp_batcher_get(fp_batcher *self, int step, int32_t *inputs, int32_t *targets);

/* Eval: consecutive rows of T+1 (starting at multiples of T) over the whole
 * stream, incomplete tail dropped. Fills row r into inputs/targets [T]. */
void fp_data_eval_row(const fp_tokens *t, int T, size_t r, int32_t *inputs, int32_t *targets);

#endif
