/* sim_table.h - `fedpeft simulate`'s live table: follows the coordinator's
 * metrics.jsonl and prints one row per round as its line appears:
 *
 *   round  workers  train loss  val loss     up      down   seconds
 *       0      0/0           -    5.8123      0 B     0 B       0.4
 *       1      8/8      5.6012    5.4110  1.2 MiB  1.2 MiB       3.1
 */
#ifndef FP_SIM_TABLE_H
#define FP_SIM_TABLE_H

#include <stdio.h>

typedef struct sim_table sim_table;

/* Follows path (it may not exist yet); rows go to out. Caller destroys. */
sim_table *sim_table_new(const char *path, int rounds, FILE *out);
void sim_table_destroy(sim_table **self_p);

/* Prints the rows of any new complete lines. Returns the rows printed now. */
int sim_table_poll(sim_table *self);

/* Rows printed so far, and the validation loss of the first and of the last
 * one that has one (NAN when none). */
int sim_table_rows(const sim_table *self);
double sim_table_first_val(const sim_table *self);
double sim_table_last_val(const sim_table *self);
/* Rows of abandoned rounds (each printed with its reason under the row). */
int sim_table_abandoned(const sim_table *self);

#endif
