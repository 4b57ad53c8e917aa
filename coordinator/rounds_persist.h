/* rounds_persist.h - the state directory and the checkpoint (rounds_persist.c).
 * 0/-1 with fp_error set. */
#ifndef COORD_ROUNDS_PERSIST_H
#define COORD_ROUNDS_PERSIST_H

#include <stddef.h>
#include <stdint.h>

#include "rounds_state.h"

int rounds_mkdir_p(const char *dir);
int rounds_save_checkpoint(rounds *r, uint64_t round, int finished);
int rounds_load_state(rounds *r);
int rounds_lock_state(rounds *r);
/* Test builds: writes bytes to FEDPEFT_TEST_DUMP_DIR/coord-round-R-NAME (R the
 * current round), what the end-to-end tests compare; nothing without the hook. */
void rounds_dump(const rounds *r, const char *name, const void *data, size_t bytes);

#endif
