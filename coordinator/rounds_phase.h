/* rounds_phase.h - the phases of a round (rounds_phase.c). */
#ifndef COORD_ROUNDS_PHASE_H
#define COORD_ROUNDS_PHASE_H

#include <stdint.h>

#include "rounds_state.h"

void rounds_send_task(rounds *r, int w);
void rounds_start_eval(rounds *r, int64_t now);
/* Checkpoint, metrics line, then the next round or the end. */
void rounds_complete_round(rounds *r, int64_t now);
void rounds_finish_run(rounds *r);
void rounds_check_wait(rounds *r, int64_t now);
void rounds_check_train(rounds *r, int64_t now);
void rounds_check_eval(rounds *r, int64_t now);

#endif
