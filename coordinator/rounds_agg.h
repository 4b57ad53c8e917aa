/* rounds_agg.h - the two ends of an upload phase (rounds_agg.c): aggregate
 * the accepted updates into the global adapter, or abandon the round. Neither
 * moves to the next phase; the caller (rounds_phase.c) does. */
#ifndef COORD_ROUNDS_AGG_H
#define COORD_ROUNDS_AGG_H

#include <stdint.h>

#include "rounds_state.h"

/* Strategy, central DP noise, server optimizer, accountant. -1 with an error
 * when the strategy failed or the aggregate is impossible under the update
 * bound (the global adapter is unchanged; the caller abandons the round). */
int rounds_aggregate(rounds *r, int64_t now, const char *why);
/* Marks the round abandoned (metrics, log) and drops secure aggregation. */
void rounds_abandon(rounds *r, int64_t now, const char *reason);

#endif
