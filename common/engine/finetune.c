/* finetune.c - the local training loop and evaluation (see finetune.h). */
#include "finetune.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "train.h"

void fp_finetune_config_default(fp_finetune_config *c)
{
    memset(c, 0, sizeof *c);
    c->steps = 100;
    c->batch = 4;
    c->seq = 128;
    c->accum = 1;
    c->shuffle = 1;
    c->seed = 1234;
    fp_optim_config_default(&c->optim);
    c->optim.lr = 1e-3f;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Calls fn(off, len) for each view range of the slab, in slab order. */
typedef void (*view_fn)(void *ctx, size_t off, size_t len);

static void view_each(const fp_lora *l, int view, view_fn fn, void *ctx)
{
    if (view != FP_VIEW_A && view != FP_VIEW_B) {
        fn(ctx, 0, l->n_params);
        return;
    }
    for (int layer = 0; layer < l->model.n_layers; layer++)
        for (int t = 0; t < FP_T_COUNT; t++) {
            int i = layer * FP_T_COUNT + t;
            size_t off = view == FP_VIEW_B ? l->off_b[i] : l->off_a[i];
            int dim = view == FP_VIEW_B ? fp_lora_out_dim(&l->model, t)
                                        : fp_lora_in_dim(&l->model, t);
            if (off != SIZE_MAX)
                fn(ctx, off, (size_t)dim * (size_t)l->cfg.rank);
        }
}

typedef struct {
    float *dst;
    const float *src;
    size_t pos;
    int dir;    /* 0: size only, 1: gather, 2: scatter */
} view_copy;

static void view_step(void *ctx, size_t off, size_t len)
{
    view_copy *v = ctx;
    if (v->dir == 1)
        memcpy(v->dst + v->pos, v->src + off, len * sizeof(float));
    else if (v->dir == 2)
        memcpy(v->dst + off, v->src + v->pos, len * sizeof(float));
    v->pos += len;
}

size_t fp_ft_view_size(const fp_lora *l, int view)
{
    view_copy v = {NULL, NULL, 0, 0};
    view_each(l, view, view_step, &v);
    return v.pos;
}

void fp_ft_view_gather(const fp_lora *l, int view, const float *slab, float *packed)
{
    view_copy v = {packed, slab, 0, 1};
    view_each(l, view, view_step, &v);
}

void fp_ft_view_scatter(const fp_lora *l, int view, const float *packed, float *slab)
{
    view_copy v = {slab, packed, 0, 2};
    view_each(l, view, view_step, &v);
}

/* A frozen factor (ffa: A; rolora: A or B by round) gets no gradient (so
 * clipping sees the trained factor only) and keeps its values through the
 * optimizer's decoupled weight decay. */
static void zero_step(void *ctx, size_t off, size_t len)
{
    memset((float *)ctx + off, 0, len * sizeof(float));
}

typedef struct {
    float *dst;
    const float *keep;
} restore_ctx;

static void restore_step(void *ctx, size_t off, size_t len)
{
    restore_ctx *c = ctx;
    memcpy(c->dst + off, c->keep + off, len * sizeof(float));
}

static int frozen_factor(const fp_finetune_config *c)
{
    return c->freeze_a ? FP_VIEW_A : c->freeze_b ? FP_VIEW_B : FP_VIEW_ALL;
}

static int check_config(const fp_finetune_config *c, const fp_model *m)
{
    if (c->steps < 1 || c->batch < 1 || c->seq < 1 || c->accum < 1)
        return fp_error_set("steps, batch, seq and accumulation must all be at least 1 "
                            "(got %d, %d, %d, %d)", c->steps, c->batch, c->seq, c->accum);
    if (c->seq > m->cfg.max_seq_len)
        return fp_error_set("--seq %d is longer than the model's context (%d positions); "
                            "use --seq %d or less", c->seq, m->cfg.max_seq_len, m->cfg.max_seq_len);
    if (!(c->prox_mu >= 0.0f) || !isfinite(c->prox_mu) || (c->prox_mu > 0 && !c->prox_anchor))
        return fp_error_set("prox_mu must be a finite number >= 0 with an anchor (got %g)",
                            (double)c->prox_mu);
    if (c->freeze_a && c->freeze_b)
        return fp_error_set("both LoRA factors frozen: nothing to train");
    if (!(c->optim.lr > 0.0f) || !isfinite(c->optim.lr))
        return fp_error_set("the learning rate must be a positive number (got %g)",
                            (double)c->optim.lr);
    return 0;
}

/* One optimizer step's micro-batches: adds their gradients (each scaled by
 * 1/accum) into grad, their losses into *loss_sum and tokens into *tokens.
 * -1 with fp_error when a loss is not finite, saying whose fault it is. */
static int accumulate(fp_train *tr, fp_batcher *bat, const fp_finetune_config *cfg,
                      const fp_optim_config *oc, int step, int32_t *in, int32_t *tg,
                      float *grad, double *loss_sum, double *tokens)
{
    for (int micro = 0; micro < cfg->accum; micro++) {
        int j = (cfg->first_step + step) * cfg->accum + micro;   /* data order */
        size_t ntok = 0;
        fp_batcher_get(bat, j, in, tg);
        float loss = fp_train_step(tr, in, tg, grad, 1.0f / (float)cfg->accum,
                                   cfg->seed * 1000003u + (uint64_t)j, &ntok);
        if (!isfinite(loss)) {
            if (step == 0)      /* nothing was updated yet: the inputs are at fault */
                return fp_error_set("the loss is not finite (%g) at step 1, before any update: "
                                    "the base model or the initial adapter holds NaN/Inf values",
                                    (double)loss);
            return fp_error_set("the loss is not finite (%g) at step %d; lower the learning "
                                "rate (--lr, now %g) or clip gradients (--max-grad-norm 1.0)",
                                (double)loss, step + 1, (double)fp_optim_lr(oc, step));
        }
        *loss_sum += loss;
        *tokens += (double)ntok;
    }
    return 0;
}

int fp_finetune(const fp_model *model, fp_lora *lora, const fp_tokens *data,
                const fp_finetune_config *cfg, fp_progress_fn progress, void *ctx,
                float *last_loss)
{
    int rc = -1;
    fp_train *tr = NULL;
    fp_batcher *bat = NULL;
    fp_optim *opt = NULL;
    float *grad = NULL, *a_keep = NULL;
    int32_t *in = NULL, *tg = NULL;
    size_t nbt = (size_t)cfg->batch * (size_t)cfg->seq;

    if (check_config(cfg, model) != 0)
        return -1;
    fp_optim_config oc = cfg->optim;
    if (oc.total_steps <= 0)
        oc.total_steps = cfg->steps;
    if (!(tr = fp_train_new_ckpt(model, lora, cfg->batch, cfg->seq, cfg->grad_checkpoint)) ||
        !(bat = fp_batcher_new(data, cfg->batch, cfg->seq, cfg->shuffle, cfg->seed)) ||
        !(opt = fp_optim_new(&oc, lora->n_params)))
        goto err;
    grad = malloc(sizeof(float) * lora->n_params);
    int frozen = frozen_factor(cfg);
    if (frozen != FP_VIEW_ALL && !(a_keep = malloc(sizeof(float) * lora->n_params))) {
        fp_error_set("out of memory for the frozen LoRA factor");
        goto err;
    }
    if (a_keep)
        memcpy(a_keep, lora->params, sizeof(float) * lora->n_params);
    in = malloc(sizeof(int32_t) * nbt);
    tg = malloc(sizeof(int32_t) * nbt);
    if (!grad || !in || !tg) {
        fp_error_set("out of memory allocating training buffers (%zu parameters)", lora->n_params);
        goto err;
    }

    double t0 = now_s(), tokens = 0.0;
    for (int step = 0; step < cfg->steps; step++) {
        memset(grad, 0, sizeof(float) * lora->n_params);
        double loss_sum = 0.0;
        if (accumulate(tr, bat, cfg, &oc, step, in, tg, grad, &loss_sum, &tokens) != 0)
            goto err;
        float lr = fp_optim_lr(&oc, step);
        if (cfg->prox_mu > 0)       /* FedProx: d/dw mu/2 ||w - w_g||^2 */
            for (size_t i = 0; i < lora->n_params; i++)
                grad[i] += cfg->prox_mu * (lora->params[i] - cfg->prox_anchor[i]);
        if (a_keep)
            view_each(lora, frozen, zero_step, grad);
        float gnorm = fp_optim_step(opt, lora->params, grad);
        if (cfg->step_offset)       /* SCAFFOLD's drift correction, in step units */
            for (size_t i = 0; i < lora->n_params; i++)
                lora->params[i] -= lr * cfg->step_offset[i];
        if (a_keep) {   /* decoupled weight decay must not touch it either */
            restore_ctx rc_ = {lora->params, a_keep};
            view_each(lora, frozen, restore_step, &rc_);
        }
        float loss = (float)(loss_sum / cfg->accum);
        if (last_loss)
            *last_loss = loss;
        if (progress) {
            double el = now_s() - t0;
            fp_progress p = {step + 1, cfg->steps, loss, lr, gnorm, el > 0 ? tokens / el : 0.0, el};
            if (progress(ctx, &p) != 0) {
                rc = 1;
                goto err;
            }
        }
    }
    rc = 0;
err:
    free(grad), free(in), free(tg), free(a_keep);
    fp_optim_free(&opt);
    fp_batcher_free(&bat);
    fp_train_free(&tr);
    return rc;
}

int fp_evaluate(const fp_model *model, const fp_lora *lora, const fp_tokens *data, int T,
                int batch, double *mean_loss, size_t *n_tokens)
{
    return fp_evaluate_tick(model, lora, data, T, batch, mean_loss, n_tokens, NULL, NULL);
}

int fp_evaluate_tick(const fp_model *model, const fp_lora *lora, const fp_tokens *data, int T,
                     int batch, double *mean_loss, size_t *n_tokens, void (*tick)(void *ctx),
                     void *ctx)
{
    size_t rows = fp_data_rows(data, T);
    if (T < 1 || T > model->cfg.max_seq_len)
        return fp_error_set("--seq %d must be between 1 and the model's context (%d)", T,
                            model->cfg.max_seq_len);
    if (rows == 0)
        return fp_error_set("the data holds %zu tokens, fewer than one row of %d + 1; "
                            "give more data or a smaller --seq", data->n, T);
    if (batch < 1)
        batch = 1;
    if ((size_t)batch > rows)
        batch = (int)rows;

    int rc = -1;
    size_t nbt = (size_t)batch * (size_t)T;
    fp_train *tr = fp_train_new(model, lora, batch, T);
    int32_t *in = malloc(sizeof(int32_t) * nbt), *tg = malloc(sizeof(int32_t) * nbt);
    if (!tr || !in || !tg) {
        if (tr)
            fp_error_set("out of memory allocating evaluation buffers");
        goto err;
    }
    double sum = 0.0;
    size_t count = 0;
    for (size_t r0 = 0; r0 < rows; r0 += (size_t)batch) {
        for (int b = 0; b < batch; b++) {
            if (r0 + (size_t)b < rows) {
                fp_data_eval_row(data, T, r0 + (size_t)b, in + (size_t)b * T, tg + (size_t)b * T);
            } else {            /* pad the last batch with rows that count for nothing */
                memset(in + (size_t)b * T, 0, sizeof(int32_t) * (size_t)T);
                for (int t = 0; t < T; t++)
                    tg[(size_t)b * T + t] = -1;
            }
        }
        size_t ntok = 0;
        float loss = fp_train_step(tr, in, tg, NULL, 0.0f, 0, &ntok);
        if (!isfinite(loss)) {
            fp_error_set("the evaluation loss is not finite at row %zu: the adapter or model "
                         "holds NaN/Inf values", r0);
            goto err;
        }
        sum += (double)loss * (double)ntok;
        count += ntok;
        if (tick)
            tick(ctx);
    }
    *mean_loss = count ? sum / (double)count : 0.0;
    if (n_tokens)
        *n_tokens = count;
    rc = 0;
err:
    free(in), free(tg);
    fp_train_free(&tr);
    return rc;
}
