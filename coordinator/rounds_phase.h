/* rounds_phase.h - the phases of a round (rounds_phase.c). */
#ifndef COORD_ROUNDS_PHASE_H
#define COORD_ROUNDS_PHASE_H

#include <stdint.h>

#include "rounds_state.h"

void rounds_send_task(rounds *r, int w);
/* async: a hold task (rounds_async.h) from the global adapter, `version`. */
void rounds_send_hold_task(rounds *r, int w, uint64_t version, uint64_t task_id,
                           int64_t deadline_ms);
/* A training round with these k workers (sorted by id): secure aggregation
 * when on, then their tasks. */
void rounds_begin_train(rounds *r, int64_t now, const int *chosen, int k);
/* Worker indices in the order of their ids (a round's members are). */
void rounds_sort_by_id(const rounds *r, int *w, int n);
void rounds_start_eval(rounds *r, int64_t now);
/* Checkpoint, metrics line, then the next round or the end. */
void rounds_complete_round(rounds *r, int64_t now);
void rounds_finish_run(rounds *r);
void rounds_check_wait(rounds *r, int64_t now);
void rounds_check_train(rounds *r, int64_t now);
void rounds_check_eval(rounds *r, int64_t now);

#endif
