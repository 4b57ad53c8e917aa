/* rounds_msgs.h - the workers' messages during a phase (rounds_msgs.c):
 * UpdateReady, the pulled (sealed) chunks into the upload slots, EvalResult. */
#ifndef COORD_ROUNDS_MSGS_H
#define COORD_ROUNDS_MSGS_H

#include <stdint.h>

#include "rounds_state.h"

void rounds_on_task_msg(void *ctx, int w, const wire_msg *msg);
void rounds_on_bad_frame(void *ctx, int w);
void rounds_try_pull(rounds *r, int64_t now);
void rounds_check_stall(rounds *r, int64_t now);
/* Frees worker w's upload slot (wiped); a worker mid-upload fails this phase. */
void rounds_drop_upload(rounds *r, int w);

#endif
