/* progress.h - local training progress. On a terminal (stderr is a TTY) one
 * line redrawn in place:
 *
 *   [=====>              ] round 3 step 12/30 loss 3.2100 1234 tok/s ETA 4s
 *
 * otherwise (a log file) a plain log line every ~1/5 of the steps and at the
 * last step. */
#ifndef FP_WK_PROGRESS_H
#define FP_WK_PROGRESS_H

#include <stdint.h>

#include "finetune.h"

/* After each optimizer step of the round's training. */
void wk_progress(uint64_t round, const fp_progress *p);
/* Ends a bar left open (training abandoned, or a log line about to be
 * written), so the next line starts at column 0. */
void wk_progress_break(void);

#endif
