/* folds.h - flora on the worker (docs/protocol.md, "Folds"): the stacked
 * adapters of past rounds that the worker has added to its base weights.
 *
 * A Task may carry folds fold_base .. fold_base + n - 1 (ranks fold_ranks),
 * whose slabs arrive before the adapter in the same chunks. Once the whole
 * transfer is in, every fold not applied yet is added to the base,
 * W += B A (scale 1: alpha = rank), and the count is told in the next Hello,
 * UpdateReady and EvalResult. fold_reset restores the original base from
 * [model] path first (the coordinator does not trust this base: another run,
 * or a fold it lost in a restart). */
#ifndef FP_WK_FOLDS_H
#define FP_WK_FOLDS_H

#include <stddef.h>
#include <stdint.h>

#include "fp_error.h"
#include "lora.h"
#include "model.h"
#include "wire.h"

typedef struct {
    uint32_t applied;           /* folds in the base weights */
    char run_id[128];           /* the run they belong to */
    /* The Task being received. */
    uint32_t base, n;
    uint32_t *ranks;
    int reset;
    float *buf;                 /* [folds][adapter] as received */
    size_t cap;
} wk_folds;

/* Checks the Task's folds against this base and sizes the transfer: *total =
 * the fold slabs (per_rank floats per unit of rank) + n_adapter; *dst = where
 * the chunks go (the adapter itself when there are no folds). -1 with an
 * error when the Task cannot be served (the base lacks earlier folds, or the
 * transfer is out of bounds). */
int wk_folds_begin(wk_folds *f, const Fedpeft__Task *task, const char *run_id, size_t per_rank,
                   size_t n_adapter, float *adapter, float **dst, size_t *total) FP_WUR;

/* The transfer is whole: adds the new folds to m (restoring it from
 * model_path first on fold_reset) and copies the adapter out. lc gives the
 * targets. -1 with an error: fatal, the base may be partly folded (a
 * restarted worker starts from the original base). */
int wk_folds_apply(wk_folds *f, fp_model *m, const char *model_path, const fp_lora_config *lc,
                   const char *run_id, float *adapter, size_t n_adapter) FP_WUR;

void wk_folds_free(wk_folds *f);

#endif
