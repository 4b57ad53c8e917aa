/* scaffold.h - strategy scaffold on the worker (docs/aggregation.md): the
 * server's control variate c, received after the adapter (Task.scaffold), and
 * this worker's own c_i, which corrects every local gradient by c - c_i and is
 * updated after training (option II of Karimireddy et al. 2020):
 *     c_i <- c_i - c + (x - y) / (K lr).
 * c_i never leaves the worker; with [worker] state_dir it is kept in
 * STATE/scaffold-ID.cv (atomically replaced) and survives a restart.
 *
 * Redoing a round is idempotent: the file keeps the round of the last update
 * and c_i from before it, so a round trained again (a coordinator that restarted
 * mid-round re-sends it) starts from the same c_i as the first time. A file of
 * another run or shape is ignored (c_i starts at zero, logged).
 */
#ifndef FP_WK_SCAFFOLD_H
#define FP_WK_SCAFFOLD_H

#include <stddef.h>
#include <stdint.h>

#include "fp_error.h"
#include "wire.h"

typedef struct {
    size_t n;                   /* adapter floats */
    float *recv;                /* [2n] the transfer: adapter, then c */
    float *c;                   /* [n] the server's, from the last TRAIN task */
    float *c_i, *c_prev;        /* [n] this worker's, and before round `round` */
    float *offset;              /* [n] c - c_i for the training loop */
    uint64_t round;             /* round of the last c_i update (0: none) */
    uint64_t training;          /* the round whose c was received last */
    char run_id[128];           /* the run c_i belongs to */
    char path[1200];            /* the state file, "" = memory only */
    int active;                 /* the task being received carries c */
} wk_scaffold;

/* A Task arrives: for Task.scaffold (n adapter floats) the chunks go to *dst
 * (2n floats, *total updated); otherwise nothing changes and active = 0. The
 * first time for a run, c_i is loaded from state_dir (or zero). -1 with an
 * error when the task cannot be served (folds with scaffold, no memory). */
int wk_scaffold_begin(wk_scaffold *s, const Fedpeft__Task *task, const char *run_id,
                      const char *state_dir, const char *worker_id, size_t n, float **dst,
                      size_t *total) FP_WUR;

/* The transfer is whole: the adapter goes to adapter (n floats) and c is kept;
 * the gradient offset c - c_i of round `round` is returned (NULL if !active). */
const float *wk_scaffold_received(wk_scaffold *s, uint64_t round, float *adapter);

/* After a finished round: c_i from the start x and end y of training and
 * k_lr = K lr; saved to the state file when there is one. -1 with an error
 * (c_i unchanged in memory) when the update or the save fails. */
int wk_scaffold_trained(wk_scaffold *s, const float *x, const float *y, double k_lr) FP_WUR;

void wk_scaffold_free(wk_scaffold *s);

#endif
