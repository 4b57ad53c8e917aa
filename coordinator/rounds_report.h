/* rounds_report.h - the metrics lines of completed rounds (rounds_report.c). */
#ifndef COORD_ROUNDS_REPORT_H
#define COORD_ROUNDS_REPORT_H

#include <stdint.h>

#include "rounds_state.h"

int rounds_add_line(rounds *r, const round_metrics *m);
/* Re-renders the last line (once the checkpoint time is known). */
void rounds_patch_last_line(rounds *r, const round_metrics *m);
void rounds_log_round(const rounds *r, const round_metrics *m);

#endif
