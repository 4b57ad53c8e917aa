/* rounds.c - the round state's lifecycle (rounds.h): the adapter, the strategy,
 * rounds_new / rounds_destroy, and the accessors. Phases: rounds_phase.c;
 * aggregation: rounds_agg.c; persistence: rounds_persist.c; metrics lines:
 * rounds_report.c; the server hooks: rounds_hooks.c; the workers' messages:
 * rounds_msgs.c. */
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clog.h"
#include "finetune.h"
#include "keys.h"
#include "rng.h"
#include "rounds_persist.h"
#include "rounds_state.h"
#include "seal.h"


uint64_t rounds_task_id(const rounds *r, uint64_t round, int kind)
{
    return r->nonce + 2 * round + (uint64_t)kind;
}

/* auto: an AdamW step moves each coordinate by about lr (|m/sqrt(v)| <= ~3 in
 * the first steps), so local_steps of them move the whole by at most
 * 4 lr steps sqrt(n); clipped SGD moves it by lr steps max_grad_norm (x2 for
 * weight decay and the proximal term). Unclipped SGD has no bound. */
double rounds_update_bound(const rounds *r, size_t n)
{
    const coord_config *c = r->cfg;
    if (c->max_update_norm > 0)
        return c->max_update_norm;
    double steps = (double)c->local_steps, lr = (double)c->lr;
    if (c->optimizer == 0)
        return 4.0 * lr * steps * sqrt((double)n);
    return c->max_grad_norm > 0 ? 2.0 * lr * steps * (double)c->max_grad_norm : 0.0;
}

double rounds_weight(const rounds *r, int w, uint64_t declared)
{
    if (r->cfg->dp)     /* one worker, one unit: the fixed denominator counts workers */
        return 1.0;
    double x = server_weight(r->srv, w, declared);
    return r->weight_cap > 0 && x > r->weight_cap ? r->weight_cap : x;
}

const char *rounds_run_id(const rounds *r) { return r->run_id; }

int rounds_exit_code(const rounds *r) { return r->exit_code; }

void rounds_lora_spec(const rounds *r, Fedpeft__LoraSpec *spec)
{
    const fp_lora_config *c = &r->global->cfg;
    spec->rank = (uint32_t)c->rank;
    spec->alpha = c->alpha;
    spec->targets = c->targets;
    spec->use_rslora = c->use_rslora;
    spec->n_params = r->global->n_params;
}

const char *rounds_rank_refusal(const rounds *r)
{
    static char why[160];
    if (r->cfg->strategy == COORD_STRATEGY_SVD || r->cfg->strategy == COORD_STRATEGY_FLORA)
        return NULL;
    snprintf(why, sizeof why, "strategy %s needs every worker at the same rank; drop [worker] "
             "rank or use [strategy] name = svd or flora", coord_strategy_names[r->cfg->strategy]);
    return why;
}

size_t rounds_upload_n(const rounds *r, int w)
{
    int rk = r->srv ? server_worker(r->srv, w)->rank : 0;
    int rg = r->global->cfg.rank;
    if (rk <= 0 || rk == rg)
        return r->n_view;
    return r->global->n_params / (size_t)rg * (size_t)rk;  /* svd only: the full slab */
}

static fp_lora *make_adapter(const coord_config *cfg, const fp_model_config *model)
{
    fp_lora_config lc;
    fp_lora_config_default(&lc);
    lc.rank = cfg->lora_rank;
    lc.alpha = cfg->lora_alpha;
    lc.use_rslora = cfg->lora_rslora;
    snprintf(lc.base_model, sizeof lc.base_model, "%s", cfg->model_path);
    if (fp_lora_parse_targets(cfg->lora_targets, &lc.targets) < 0) {
        fp_error_prefix("[lora] targets: ");
        return NULL;
    }
    return fp_lora_new(model, &lc);
}

/* The [strategy] section: the strategy over the trainable view, and the server
 * optimizer. */
static int make_strategy(rounds *r)
{
    const coord_config *c = r->cfg;
    r->view_kind = c->strategy == COORD_STRATEGY_FFA || c->strategy == COORD_STRATEGY_ROLORA
                       ? FP_VIEW_B : FP_VIEW_ALL;
    r->n_view = fp_ft_view_size(r->global, r->view_kind);
    snprintf(r->strat_name, sizeof r->strat_name, "%s%s%s", coord_strategy_names[c->strategy],
             c->robust ? "+" : "", c->robust ? coord_robust_names[c->robust] : "");
    if (c->strategy == COORD_STRATEGY_FLORA) {
        r->strat = strategy_flora_new(r->global, c->seed);
    } else if (c->strategy == COORD_STRATEGY_SVD || c->robust != COORD_ROBUST_NONE) {
        static const staged_kind kinds[] = {STAGED_SVD, STAGED_MEDIAN, STAGED_TRIMMED,
                                            STAGED_NORM};
        staged_params sp = {kinds[c->robust], r->n_view, r->global, c->robust_trim,
                            c->robust_norm_bound, c->seed};
        r->strat = strategy_staged_new(&sp);
    } else if (c->strategy == COORD_STRATEGY_SCAFFOLD) {
        r->strat = strategy_scaffold_new(r->n_view);
    } else {
        r->strat = strategy_fedavg_new(r->n_view);
    }
    if (!r->strat)
        return -1;
    if (c->server_opt != 0) {
        static const fp_sopt_kind kinds[] = {FP_SOPT_NONE, FP_SOPT_AVGM, FP_SOPT_ADAM,
                                             FP_SOPT_YOGI, FP_SOPT_ADAGRAD};
        fp_sopt_config oc;
        fp_sopt_config_default(&oc, kinds[c->server_opt]);
        if (c->server_lr > 0)
            oc.lr = (float)c->server_lr;
        if (c->server_beta1 > 0)
            oc.beta1 = (float)c->server_beta1;
        oc.beta2 = (float)c->server_beta2;
        oc.tau = (float)c->server_tau;
        if (!(r->sopt = fp_sopt_new(&oc, r->n_view)))
            return fp_error_prefix("[strategy] server_opt: ");
    }
    /* Sized for the whole slab: rolora's view changes size from round to round. */
    r->view = malloc(r->global->n_params * sizeof(float));
    r->view_old = malloc(r->global->n_params * sizeof(float));
    if (!r->view || !r->view_old)
        return fp_error_set("out of memory for the adapter (%zu floats)", r->n_view);
    return 0;
}

int rounds_set_view(rounds *r)
{
    if (r->cfg->strategy != COORD_STRATEGY_ROLORA)
        return 0;
    /* B first: with B = 0 (LoRA's start) A's gradient is zero. */
    int view = r->round % 2 == 1 ? FP_VIEW_B : FP_VIEW_A;
    if (view == r->view_kind && r->strat)
        return 0;
    r->view_kind = view;
    r->n_view = fp_ft_view_size(r->global, view);
    strategy_destroy(&r->strat);    /* fedavg's state is a version word: nothing lost */
    if (!(r->strat = strategy_fedavg_new(r->n_view)))
        return -1;
    return 0;
}

rounds *rounds_new(const coord_config *cfg, const fp_model_config *model, const char *model_hash)
{
    rounds *r = calloc(1, sizeof *r);
    if (!r) {
        fp_error_set("out of memory");
        return NULL;
    }
    r->cfg = cfg;
    r->exit_code = 1;
    r->lock_fd = -1;
    snprintf(r->model_hash, sizeof r->model_hash, "%s", model_hash);
    snprintf(r->ckpt_path, sizeof r->ckpt_path, "%s/checkpoint.bin", cfg->state_dir);
    snprintf(r->metrics_path, sizeof r->metrics_path, "%s/metrics.jsonl", cfg->state_dir);
    randombytes_buf(&r->nonce, sizeof r->nonce);
    r->nonce |= (uint64_t)1 << 63; /* never 0 for any round we will see */
    r->global = make_adapter(cfg, model);
    if (!r->global)
        goto err;
    if (make_strategy(r) < 0)
        goto err;
    r->staging = malloc(r->global->n_params * sizeof(float));
    r->status = calloc(SERVER_MAX_WORKERS, 1);
    r->examples = calloc(SERVER_MAX_WORKERS, sizeof *r->examples);
    r->val_loss = calloc(SERVER_MAX_WORKERS, sizeof *r->val_loss);
    r->loss = calloc(SERVER_MAX_WORKERS, sizeof *r->loss);
    r->queue = calloc(SERVER_MAX_WORKERS, sizeof *r->queue);
    r->seal_pk = calloc(SERVER_MAX_WORKERS, sizeof *r->seal_pk);
    r->prev_seal_pk = calloc(SERVER_MAX_WORKERS, sizeof *r->prev_seal_pk);
    r->prev_task = calloc(SERVER_MAX_WORKERS, sizeof *r->prev_task);
    r->fold_have = calloc(SERVER_MAX_WORKERS, sizeof *r->fold_have);
    r->fold_reset = calloc(SERVER_MAX_WORKERS, 1);
    r->resent = calloc(SERVER_MAX_WORKERS, 1);
    r->stalls = calloc(SERVER_MAX_WORKERS, sizeof *r->stalls);
    r->open_buf = malloc(WIRE_CHUNK_FLOATS * 4 + FP_SEAL_OVERHEAD);
    r->noise = fp_dp_noise_new(NULL);
    r->as_state = calloc(SERVER_MAX_WORKERS, 1);
    r->as_task = calloc(SERVER_MAX_WORKERS, sizeof *r->as_task);
    r->as_base = calloc(SERVER_MAX_WORKERS, sizeof *r->as_base);
    r->as_seq = calloc(SERVER_MAX_WORKERS, sizeof *r->as_seq);
    r->as_sent_ms = calloc(SERVER_MAX_WORKERS, sizeof *r->as_sent_ms);
    r->as_silent = calloc(SERVER_MAX_WORKERS, sizeof *r->as_silent);
    r->as_bench_until = calloc(SERVER_MAX_WORKERS, sizeof *r->as_bench_until);
    r->stale_w = malloc(SERVER_MAX_WORKERS * sizeof *r->stale_w);
    for (int i = 0; r->stale_w && i < SERVER_MAX_WORKERS; i++)
        r->stale_w[i] = 1.0;
    fp_stale_config_default(&r->stale);
    r->stale.kind = (fp_stale_kind)cfg->staleness;
    r->stale.a = cfg->staleness_a;
    r->stale.b = cfg->staleness_b;
    fp_dp_accountant_init(&r->acct);
    r->last_epsilon = 0;
#ifdef FEDPEFT_TEST_HOOKS   /* a test build only (CMakeLists.txt) */
    r->dump_dir = getenv("FEDPEFT_TEST_DUMP_DIR");
    if (r->dump_dir && !r->dump_dir[0])
        r->dump_dir = NULL;
#else
    r->dump_dir = NULL;
#endif
    if (!r->seal_pk || !r->prev_seal_pk || !r->prev_task || !r->stalls || !r->open_buf ||
        !r->noise || !r->fold_have || !r->fold_reset || !r->resent || !r->as_state ||
        !r->as_task || !r->as_base || !r->as_seq || !r->as_sent_ms || !r->stale_w ||
        !r->as_silent || !r->as_bench_until) {
        fp_error_set("out of memory");
        goto err;
    }
    /* Updates are sealed to the coordinator's long-term key; with --insecure there
     * is none, so a fresh one per process (a restart re-sends it in each Task). */
    if (!cfg->insecure && cfg->secret_key[0])
        r->seal_kp = fp_keypair_load(cfg->secret_key);
    else
        r->seal_kp = fp_keypair_generate("seal");
    if (!r->seal_kp) {
        fp_error_prefix("[security] secret_key (sealing updates): ");
        goto err;
    }
    /* The sample must not be predictable from what workers see ([run] seed is in
     * every Task): it is drawn from a key derived from the coordinator's secret
     * key, which is stable across restarts, so a resumed run samples the same. */
    r->sample_secret = !cfg->insecure && cfg->secret_key[0];
    if (r->sample_secret)
        crypto_generichash(r->sample_key, sizeof r->sample_key, r->seal_kp->secret_key, 32,
                           (const uint8_t *)"fedpeft sample v1", 17);
    if (!r->strat || !r->staging || !r->status || !r->examples || !r->val_loss || !r->loss || !r->queue) {
        if (r->strat)
            fp_error_set("out of memory for the adapter (%zu floats)", r->global->n_params);
        goto err;
    }
    if (uploads_init(&r->up, cfg->upload_slots, r->global->n_params) < 0)
        goto err;
    if (rounds_mkdir_p(cfg->state_dir) < 0 || rounds_lock_state(r) < 0 || rounds_load_state(r) < 0)
        goto err;
    return r;
err:
    rounds_destroy(&r);
    return NULL;
}

void rounds_destroy(rounds **r_p)
{
    if (!r_p || !*r_p)
        return;
    rounds *r = *r_p;
    fp_lora_free(&r->global);
    strategy_destroy(&r->strat);
    fp_sopt_free(&r->sopt);
    free(r->view);
    free(r->view_old);
    free(r->staging);
    free(r->status);
    free(r->examples);
    free(r->val_loss);
    free(r->loss);
    free(r->queue);
    free(r->seal_pk);
    free(r->prev_seal_pk);
    free(r->prev_task);
    free(r->fold_have);
    free(r->fold_reset);
    free(r->resent);
    free(r->stalls);
    free(r->as_state);
    free(r->as_task);
    free(r->as_base);
    free(r->as_seq);
    free(r->as_sent_ms);
    free(r->as_silent);
    free(r->as_bench_until);
    free(r->stale_w);
    uploads_free(&r->up);
    free(r->open_buf);
    sa_destroy(&r->sa);
    fp_dp_noise_destroy(&r->noise);
    fp_keypair_free(&r->seal_kp);
    sodium_memzero(r->sample_key, sizeof r->sample_key);
    for (size_t i = 0; i < r->n_lines; i++)
        free(r->lines[i]);
    free(r->lines);
    if (r->lock_fd >= 0)
        close(r->lock_fd);
    free(r);
    *r_p = NULL;
}
