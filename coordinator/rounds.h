/* rounds.h - the round state machine (docs/protocol.md):
 *
 *   WAIT (min_workers live, or start_timeout_s) -> TRAIN: sample, Task + adapter
 *   chunks -> UpdateReady -> Pull, one upload staged at a time, validated whole,
 *   streamed into the strategy -> all sampled reported (or the rest are dead), or
 *   the deadline with >= min_quorum -> aggregate -> EVAL on every live worker ->
 *   checkpoint -> metrics line -> next round, or finish (R rounds or val loss <=
 *   target_loss): final adapter as a PEFT directory, Reject(SHUTDOWN) to all.
 *   Below quorum at the deadline the round is abandoned (global unchanged).
 *
 * Round 0 is the evaluation of the initial adapter. A restart loads the
 * checkpoint and goes on with the round after the last completed one.
 */
#ifndef COORD_ROUNDS_H
#define COORD_ROUNDS_H

#include "coord_config.h"
#include "fp_error.h"
#include "model.h"
#include "server.h"

typedef struct rounds rounds;

/* Loads STATE_DIR/checkpoint.bin if there is one (validated against the model
 * and config), else a fresh run. NULL with an error. Caller destroys. */
rounds *rounds_new(const coord_config *cfg, const fp_model_config *model,
                   const char *model_hash) FP_WUR;
void rounds_destroy(rounds **r_p);

/* For Welcome: the run id and the adapter's shape. */
const char *rounds_run_id(const rounds *r);
void rounds_lora_spec(const rounds *r, Fedpeft__LoraSpec *spec);
/* Why a worker asking for another LoRA rank is refused (NULL: the strategy
 * accepts smaller ranks: svd, flora). For server_config.rank_refusal. */
const char *rounds_rank_refusal(const rounds *r);

/* Hooks the state machine into the server's loop and rewrites metrics.jsonl
 * from the checkpoint. -1 with an error. */
int rounds_attach(rounds *r, server *srv) FP_WUR;
/* 0 when the run completed (final adapter written), 1 otherwise. */
int rounds_exit_code(const rounds *r);

#endif
