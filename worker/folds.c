/* folds.c - flora folds on the worker's base weights (folds.h). */
#include "folds.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agg_lowrank.h"

int wk_folds_begin(wk_folds *f, const Fedpeft__Task *task, const char *run_id, size_t per_rank,
                   size_t n_adapter, float *adapter, float **dst, size_t *total)
{
    f->n = 0;
    f->reset = task->fold_reset;
    *dst = adapter;
    *total = n_adapter;
    if (task->n_fold_ranks == 0 && !task->fold_reset)
        return 0;
    if (!task->fold_reset) {
        if (f->applied > 0 && strcmp(f->run_id, run_id) != 0)
            return fp_error_set("this base holds %u folds of run %s, the task is of run %s "
                                "(and does not ask for a reset)", f->applied, f->run_id, run_id);
        if (task->fold_base > f->applied)
            return fp_error_set("the task's folds start at %u, this base holds %u: earlier "
                                "folds are missing", task->fold_base, f->applied);
    }
    uint64_t rsum = 0;
    for (size_t i = 0; i < task->n_fold_ranks; i++)
        rsum += task->fold_ranks[i];
    if (per_rank == 0 || rsum > (WIRE_MAX_ADAPTER_FLOATS - n_adapter) / per_rank)
        return fp_error_set("the task's folds (total rank %llu) exceed %llu floats",
                            (unsigned long long)rsum,
                            (unsigned long long)WIRE_MAX_ADAPTER_FLOATS);
    size_t need = (size_t)rsum * per_rank + n_adapter;
    if (need > f->cap) {
        float *b = realloc(f->buf, need * sizeof *b);
        if (!b)
            return fp_error_set("out of memory for the folds (%zu floats)", need);
        f->buf = b;
        f->cap = need;
    }
    uint32_t *rk = realloc(f->ranks, (task->n_fold_ranks ? task->n_fold_ranks : 1) * sizeof *rk);
    if (!rk)
        return fp_error_set("out of memory");
    f->ranks = rk;
    memcpy(rk, task->fold_ranks, task->n_fold_ranks * sizeof *rk);
    f->base = task->fold_base;
    f->n = (uint32_t)task->n_fold_ranks;
    *dst = f->buf;
    *total = need;
    return 0;
}

static int restore_base(wk_folds *f, fp_model *m, const char *model_path)
{
    f->applied = 0;
    f->run_id[0] = '\0';
    if (m->map)     /* still the mapped file: nothing was folded into it */
        return 0;
    fp_model *orig = fp_model_load(model_path);
    if (!orig)
        return fp_error_prefix("restoring the base weights: ");
    int ok = orig->n_floats == m->n_floats;
    if (ok)
        memcpy(m->slab, orig->slab, m->n_floats * sizeof *m->slab);
    fp_model_free(&orig);
    if (!ok)
        return fp_error_set("restoring the base weights: %s changed on disk", model_path);
    return 0;
}

int wk_folds_apply(wk_folds *f, fp_model *m, const char *model_path, const fp_lora_config *lc,
                   const char *run_id, float *adapter, size_t n_adapter)
{
    if (f->n == 0 && !f->reset)
        return 0;
    if (f->reset && restore_base(f, m, model_path) < 0)
        return -1;
    size_t off = 0;
    for (uint32_t i = 0; i < f->n; i++) {
        fp_lora_config c = *lc;
        c.rank = (int)f->ranks[i];
        c.alpha = (float)f->ranks[i];   /* scale 1: the stack's weights are in B */
        c.use_rslora = 0;
        fp_lora *fold = fp_lora_new(&m->cfg, &c);
        if (!fold)
            return -1;
        memcpy(fold->params, f->buf + off, fold->n_params * sizeof(float));
        off += fold->n_params;
        int rc = 0;
        if (f->base + i == f->applied) {    /* earlier ones are already in */
            rc = fp_lr_adapter_fold(m, fold);
            f->applied++;
        }
        fp_lora_free(&fold);
        if (rc < 0)
            return -1;
    }
    snprintf(f->run_id, sizeof f->run_id, "%s", run_id);
    memcpy(adapter, f->buf + off, n_adapter * sizeof *adapter);
    return 0;
}

void wk_folds_free(wk_folds *f)
{
    free(f->buf);
    free(f->ranks);
    memset(f, 0, sizeof *f);
}
