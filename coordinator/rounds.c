/* rounds.c - the round state machine: phases, deadlines, aggregation, and the
 * checkpoint / metrics written after each round (rounds.h). The workers'
 * messages are handled in rounds_msgs.c. */
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agg_lowrank.h"
#include "clog.h"
#include "finetune.h"
#include "keys.h"
#include "rng.h"
#include "rounds_internal.h"
#include "seal.h"

uint64_t rounds_task_id(const rounds *r, uint64_t round, int kind)
{
    return r->nonce + 2 * round + (uint64_t)kind;
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

static double secs(int64_t ms) { return (double)ms / 1000.0; }

/* ---- persistence --------------------------------------------------------------- */

static int mkdir_p(const char *dir)
{
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s", dir);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        mkdir(tmp, 0755);
        *p = '/';
    }
    if (mkdir(tmp, 0755) < 0) {
        struct stat st;
        if (stat(tmp, &st) < 0 || !S_ISDIR(st.st_mode))
            return fp_error_set("cannot create the state directory %s", dir);
    }
    return 0;
}

/* The checkpoint's strategy blob: the strategy's state, the server optimizer's
 * (when [strategy] server_opt is set), then the DP accountant:
 *   u32 "DPA1" | u32 n_orders | u64 steps | f64 rdp[n_orders] | f64 last_epsilon
 * A blob without the accountant (written before it was saved) loads with epsilon
 * restarting at 0 and a warning. */
#define DPA_MAGIC 0x31415044u
#define DPA_SIZE (16 + 8 * FP_DP_N_ORDERS + 8)

static size_t blob_size(const rounds *r)
{
    return strategy_state_size(r->strat) + (r->sopt ? fp_sopt_state_size(r->sopt) : 0) +
           DPA_SIZE;
}

static int blob_save(const rounds *r, uint8_t *buf, size_t len)
{
    size_t ss = strategy_state_size(r->strat), so = r->sopt ? fp_sopt_state_size(r->sopt) : 0;
    if (len != blob_size(r))
        return fp_error_set("strategy blob of %zu bytes, expected %zu", len, blob_size(r));
    if (strategy_state_save(r->strat, buf, ss) < 0 ||
        (r->sopt && fp_sopt_state_save(r->sopt, buf + ss, so) < 0))
        return -1;
    uint8_t *p = buf + ss + so;
    uint32_t magic = DPA_MAGIC, n = FP_DP_N_ORDERS;
    memcpy(p, &magic, 4);
    memcpy(p + 4, &n, 4);
    memcpy(p + 8, &r->acct.steps, 8);
    memcpy(p + 16, r->acct.rdp, 8 * FP_DP_N_ORDERS);
    memcpy(p + 16 + 8 * FP_DP_N_ORDERS, &r->last_epsilon, 8);
    return 0;
}

static int blob_load(rounds *r, const uint8_t *buf, size_t len)
{
    size_t ss = strategy_state_size(r->strat), so = r->sopt ? fp_sopt_state_size(r->sopt) : 0;
    if (r->cfg->strategy == COORD_STRATEGY_FLORA && len >= so + DPA_SIZE)
        ss = len - so - DPA_SIZE;   /* the folds: its loader checks every size */
    if (len != ss + so && len != ss + so + DPA_SIZE) {
        if (len < ss || strategy_state_load(r->strat, buf, len < ss ? len : ss) < 0)
            return -1;
        return fp_error_set("the strategy state holds %zu bytes, expected %zu: was the run "
                            "started with another [strategy] server_opt?", len,
                            ss + so + DPA_SIZE);
    }
    if (strategy_state_load(r->strat, buf, ss) < 0 ||
        (r->sopt && fp_sopt_state_load(r->sopt, buf + ss, so) < 0))
        return -1;
    if (len == ss + so) {
        if (r->cfg->dp)
            clog_info("the checkpoint holds no DP accountant state (an older version): "
                      "epsilon restarts at 0");
        return 0;
    }
    const uint8_t *p = buf + ss + so;
    uint32_t magic, n;
    fp_dp_accountant a;
    double eps;
    memcpy(&magic, p, 4);
    memcpy(&n, p + 4, 4);
    memcpy(&a.steps, p + 8, 8);
    memcpy(a.rdp, p + 16, 8 * FP_DP_N_ORDERS);
    memcpy(&eps, p + 16 + 8 * FP_DP_N_ORDERS, 8);
    if (magic != DPA_MAGIC || n != FP_DP_N_ORDERS)
        return fp_error_set("the DP accountant state is not this version's");
    for (int i = 0; i < FP_DP_N_ORDERS; i++)
        if (!(a.rdp[i] >= 0))   /* NaN or negative; +inf is a valid spend */
            return fp_error_set("the DP accountant state holds an invalid RDP value");
    if (!(eps >= 0))
        return fp_error_set("the DP accountant state holds an invalid epsilon");
    r->acct = a;
    r->last_epsilon = eps;
    return 0;
}

static int save_checkpoint(rounds *r, uint64_t round, int finished)
{
    checkpoint ck;
    memset(&ck, 0, sizeof ck);
    snprintf(ck.run_id, sizeof ck.run_id, "%s", r->run_id);
    snprintf(ck.model_hash, sizeof ck.model_hash, "%s", r->model_hash);
    snprintf(ck.strategy, sizeof ck.strategy, "%s", r->strat_name);
    ck.flags = finished ? CKPT_FLAG_FINISHED : 0;
    ck.round = round;
    ck.n_params = r->global->n_params;
    ck.adapter = r->global->params;     /* borrowed: not cleared */
    ck.strategy_len = blob_size(r);
    ck.strategy_state = malloc(ck.strategy_len ? ck.strategy_len : 1);
    ck.metrics = r->lines;
    ck.n_metrics = r->n_lines;
    int rc = -1;
    if (!ck.strategy_state)
        fp_error_set("out of memory");
    else if (blob_save(r, ck.strategy_state, ck.strategy_len) == 0)
        rc = checkpoint_save(&ck, r->ckpt_path);
    free(ck.strategy_state);
    return rc;
}

/* Takes over the checkpoint's state after checking it belongs to this run. */
static int resume(rounds *r, checkpoint *ck)
{
    if (strcmp(ck->model_hash, r->model_hash) != 0)
        return fp_error_set("%s was written for base model %.12s..., [model] path has "
                            "%.12s...: use another [run] state_dir or the run's model",
                            r->ckpt_path, ck->model_hash, r->model_hash);
    if (ck->n_params != r->global->n_params)
        return fp_error_set("%s holds an adapter of %zu floats, the [lora] settings give %zu: "
                            "use the run's [lora] settings or another state_dir",
                            r->ckpt_path, ck->n_params, r->global->n_params);
    if (strcmp(ck->strategy, r->strat_name) != 0)
        return fp_error_set("%s was written by strategy '%s', the config says '%s'",
                            r->ckpt_path, ck->strategy, r->strat_name);
    if (blob_load(r, ck->strategy_state, ck->strategy_len) < 0)
        return fp_error_prefix("%s: ", r->ckpt_path);
    memcpy(r->global->params, ck->adapter, ck->n_params * sizeof(float));
    snprintf(r->run_id, sizeof r->run_id, "%s", ck->run_id);
    r->lines = ck->metrics;
    r->n_lines = ck->n_metrics;
    ck->metrics = NULL;
    ck->n_metrics = 0;
    r->round = ck->round + 1;
    r->finished_flag = (ck->flags & CKPT_FLAG_FINISHED) != 0;
    clog_info("resuming run %s from %s: round %llu completed%s", r->run_id, r->ckpt_path,
              (unsigned long long)ck->round, r->finished_flag ? " (the run had finished)" : "");
    return 0;
}

static int load_state(rounds *r)
{
    checkpoint ck;
    int rc = checkpoint_load(&ck, r->ckpt_path);
    if (rc < 0)
        return -1;
    if (rc == 0) {
        rc = resume(r, &ck);
        checkpoint_clear(&ck);
        if (rc < 0)
            return -1;
    } else {
        unsigned char id[12];
        randombytes_buf(id, sizeof id);
        for (size_t i = 0; i < sizeof id; i++)
            snprintf(r->run_id + 2 * i, 3, "%02x", id[i]);
        fp_lora_init(r->global, r->cfg->seed);
        r->round = 0;
        clog_info("new run %s (no checkpoint in %s)", r->run_id, r->cfg->state_dir);
    }
    return 0;
}

/* One coordinator per state directory: a second one would fight over the
 * checkpoint. The lock goes with the process (also on kill -9). */
static int lock_state(rounds *r)
{
    char path[1100];
    snprintf(path, sizeof path, "%s/lock", r->cfg->state_dir);
    r->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (r->lock_fd < 0)
        return fp_error_set("cannot open %s: %s", path, strerror(errno));
    if (flock(r->lock_fd, LOCK_EX | LOCK_NB) < 0)
        return fp_error_set("state directory %s is in use by another coordinator (%s is "
                            "locked); stop it or use another [run] state_dir",
                            r->cfg->state_dir, path);
    return 0;
}

/* ---- lifecycle ----------------------------------------------------------------- */

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
    r->b_only = c->strategy == COORD_STRATEGY_FFA;
    r->n_view = fp_ft_view_size(r->global, r->b_only);
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
        oc.beta1 = (float)c->server_beta1;
        oc.beta2 = (float)c->server_beta2;
        oc.tau = (float)c->server_tau;
        if (!(r->sopt = fp_sopt_new(&oc, r->n_view)))
            return fp_error_prefix("[strategy] server_opt: ");
    }
    r->view = malloc(r->n_view * sizeof(float));
    r->view_old = malloc(r->n_view * sizeof(float));
    if (!r->view || !r->view_old)
        return fp_error_set("out of memory for the adapter (%zu floats)", r->n_view);
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
    r->staging_worker = -1;
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
    r->loss = calloc(SERVER_MAX_WORKERS, sizeof *r->loss);
    r->queue = calloc(SERVER_MAX_WORKERS, sizeof *r->queue);
    r->seal_pk = calloc(SERVER_MAX_WORKERS, sizeof *r->seal_pk);
    r->prev_seal_pk = calloc(SERVER_MAX_WORKERS, sizeof *r->prev_seal_pk);
    r->prev_task = calloc(SERVER_MAX_WORKERS, sizeof *r->prev_task);
    r->fold_have = calloc(SERVER_MAX_WORKERS, sizeof *r->fold_have);
    r->fold_reset = calloc(SERVER_MAX_WORKERS, 1);
    r->stage_key = sodium_malloc(FP_SEAL_KEY_BYTES);
    r->open_buf = malloc(WIRE_CHUNK_FLOATS * 4 + FP_SEAL_OVERHEAD);
    r->noise = fp_dp_noise_new(NULL);
    fp_dp_accountant_init(&r->acct);
    r->last_epsilon = 0;
    r->dump_dir = getenv("FEDPEFT_TEST_DUMP_DIR");
    if (r->dump_dir && !r->dump_dir[0])
        r->dump_dir = NULL;
    if (!r->seal_pk || !r->prev_seal_pk || !r->prev_task || !r->stage_key || !r->open_buf ||
        !r->noise || !r->fold_have || !r->fold_reset) {
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
    if (!r->strat || !r->staging || !r->status || !r->examples || !r->loss || !r->queue) {
        if (r->strat)
            fp_error_set("out of memory for the adapter (%zu floats)", r->global->n_params);
        goto err;
    }
    if (mkdir_p(cfg->state_dir) < 0 || lock_state(r) < 0 || load_state(r) < 0)
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
    free(r->loss);
    free(r->queue);
    free(r->seal_pk);
    free(r->prev_seal_pk);
    free(r->prev_task);
    free(r->fold_have);
    free(r->fold_reset);
    if (r->stage_key)
        sodium_free(r->stage_key);
    fp_seal_replay_destroy(&r->stage_guard);
    free(r->open_buf);
    sa_destroy(&r->sa);
    fp_dp_noise_destroy(&r->noise);
    fp_keypair_free(&r->seal_kp);
    for (size_t i = 0; i < r->n_lines; i++)
        free(r->lines[i]);
    free(r->lines);
    if (r->lock_fd >= 0)
        close(r->lock_fd);
    free(r);
    *r_p = NULL;
}

/* ---- phases ---------------------------------------------------------------------- */

static void reset_phase(rounds *r, round_phase ph, int64_t now, double deadline_s)
{
    memset(r->status, ST_NONE, SERVER_MAX_WORKERS);
    r->q_head = r->q_len = 0;
    r->staging_worker = -1;
    r->n_targets = r->n_reported = 0;
    r->ph = ph;
    r->phase_start_ms = now;
    r->deadline_ms = now + (int64_t)(deadline_s * 1000.0);
}

static void fill_params(const rounds *r, Fedpeft__TrainParams *p)
{
    const coord_config *c = r->cfg;
    p->local_steps = (uint32_t)c->local_steps;
    p->batch = (uint32_t)c->batch;
    p->seq = (uint32_t)c->seq;
    p->lr = c->lr;
    p->optimizer = (uint32_t)c->optimizer;
    p->weight_decay = c->weight_decay;
    p->max_grad_norm = c->max_grad_norm;
    p->seed = c->seed;
    p->freeze_a = r->b_only;
    p->prox_mu = c->prox_mu;
}

/* flora (docs/protocol.md, "Folds"): the folds worker w's base lacks go in
 * the Task, their slabs before the adapter a in *slab (n floats in all);
 * with no fold to send, *slab stays NULL and *n = a's floats. */
static int fold_fields(const rounds *r, int w, const fp_lora *a, Fedpeft__Task *t,
                       uint32_t **ranks, float **slab, size_t *n)
{
    int F = strategy_flora_n_folds(r->strat);
    int from = r->fold_reset[w] ? 0 : (int)r->fold_have[w];
    t->fold_reset = r->fold_reset[w];
    t->fold_base = (uint32_t)from;
    if (from >= F)
        return 0;
    size_t total = a->n_params;
    *ranks = malloc((size_t)(F - from) * sizeof **ranks);
    if (!*ranks)
        return fp_error_set("out of memory");
    for (int i = from; i < F; i++) {
        const fp_lora *f = strategy_flora_fold(r->strat, i);
        (*ranks)[i - from] = (uint32_t)f->cfg.rank;
        total += f->n_params;
    }
    if (total > WIRE_MAX_ADAPTER_FLOATS)
        return fp_error_set("%d folds and the adapter are %zu floats, above the protocol's "
                            "%llu", F - from, total, (unsigned long long)WIRE_MAX_ADAPTER_FLOATS);
    if (!(*slab = malloc(total * sizeof **slab)))
        return fp_error_set("out of memory for the folds (%zu floats)", total);
    size_t pos = 0;
    for (int i = from; i < F; i++) {
        const fp_lora *f = strategy_flora_fold(r->strat, i);
        memcpy(*slab + pos, f->params, f->n_params * sizeof **slab);
        pos += f->n_params;
    }
    memcpy(*slab + pos, a->params, a->n_params * sizeof **slab);
    t->fold_ranks = *ranks;
    t->n_fold_ranks = (size_t)(F - from);
    *n = total;
    return 0;
}

/* Task + the global adapter to worker w for the current phase. */
static void send_task(rounds *r, int w)
{
    int kind = r->ph == PH_TRAIN ? TASK_TRAIN : TASK_EVAL;
    Fedpeft__TrainParams params = FEDPEFT__TRAIN_PARAMS__INIT;
    fill_params(r, &params);
    Fedpeft__Task t = FEDPEFT__TASK__INIT;
    t.kind = kind == TASK_TRAIN ? FEDPEFT__TASK__KIND__TRAIN : FEDPEFT__TASK__KIND__EVAL;
    t.round = r->round;
    t.task_id = rounds_task_id(r, r->round, kind);
    t.params = &params;
    t.n_chunks = wire_n_chunks(r->global->n_params);
    t.deadline_unix_ms = (uint64_t)(clog_wall_ms() + (r->deadline_ms - clog_now_ms()));
    Fedpeft__SecAggParams sap = FEDPEFT__SEC_AGG_PARAMS__INIT;
    Fedpeft__DpParams dpp = FEDPEFT__DP_PARAMS__INIT;
    if (kind == TASK_TRAIN) {
        t.coordinator_pk = (ProtobufCBinaryData){FP_KEY_BYTES, r->seal_kp->public_key};
        if (r->sa) {
            sa_task_fields(r->sa, w, &sap, &t.peers, &t.n_peers);
            t.secagg = &sap;
        }
        if (r->cfg->dp) {
            dpp.clip_norm = (float)r->cfg->dp_clip_norm;
            dpp.noise_multiplier = (float)r->cfg->dp_noise_multiplier;
            dpp.distributed = r->cfg->dp_mode == COORD_DP_DISTRIBUTED;
            dpp.n_noise = r->n_targets;
            t.dp = &dpp;
        }
    }
    wire_msg env = FEDPEFT__ENVELOPE__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_TASK;
    env.task = &t;
    int rk = server_worker(r->srv, w)->rank;
    fp_lora *small = NULL;
    if (rk > 0 && rk < r->global->cfg.rank) {
        /* HetLoRA: the best rank-rk part of the (SVD-ordered) global */
        fp_lora_config lc = r->global->cfg;
        lc.rank = rk;
        if (!(small = fp_lora_new(&r->global->model, &lc)) ||
            fp_lr_adapter_truncate(small, r->global) < 0) {
            clog_error("round %llu: cannot truncate the adapter for %s: %s",
                       (unsigned long long)r->round, server_worker(r->srv, w)->id,
                       fp_error_get());
            fp_lora_free(&small);
            return;
        }
    }
    const fp_lora *a = small ? small : r->global;
    float *slab = NULL;
    size_t n = a->n_params;
    uint32_t *ranks = NULL;
    if (fold_fields(r, w, a, &t, &ranks, &slab, &n) < 0) {
        clog_error("round %llu: cannot send the folds to %s: %s", (unsigned long long)r->round,
                   server_worker(r->srv, w)->id, fp_error_get());
    } else {
        t.n_chunks = wire_n_chunks(n);
        if (server_send(r->srv, w, &env) == 0)
            (void)server_send_slab(r->srv, w, t.task_id, slab ? slab : a->params, n);
    }
    free(slab);
    free(ranks);
    fp_lora_free(&small);
}

static int cmp_ids(const void *a, const void *b, void *srv)
{
    return strcmp(server_worker(srv, *(const int *)a)->id, server_worker(srv, *(const int *)b)->id);
}

/* Live workers sorted by id; k of them by a partial Fisher-Yates seeded from
 * (seed, round); the chosen ones sorted by id again. Returns k. */
static int sample(rounds *r, int *chosen)
{
    int n = 0;
    for (int i = 0; i < server_n_workers(r->srv); i++)
        if (server_worker(r->srv, i)->alive)
            chosen[n++] = i;
    qsort_r(chosen, (size_t)n, sizeof *chosen, cmp_ids, r->srv);
    long k = lround(r->cfg->fraction * n);
    if (k < r->cfg->min_workers)
        k = r->cfg->min_workers;
    if (r->cfg->max_workers > 0 && k > r->cfg->max_workers)
        k = r->cfg->max_workers;
    if (k > n)
        k = n;
    fp_rng rng;
    fp_rng_seed(&rng, r->cfg->seed * 1000003u + r->round);
    for (int i = 0; i < k; i++) {
        int j = i + (int)fp_rng_below(&rng, (uint64_t)(n - i));
        int t = chosen[i];
        chosen[i] = chosen[j];
        chosen[j] = t;
    }
    qsort_r(chosen, (size_t)k, sizeof *chosen, cmp_ids, r->srv);
    return (int)k;
}

static void start_train(rounds *r, int64_t now)
{
    static int chosen[SERVER_MAX_WORKERS];
    reset_phase(r, PH_TRAIN, now, r->cfg->deadline_s);
    metrics_reset(&r->m, r->round);
    if (strategy_begin(r->strat, r->round) < 0)
        clog_error("round %llu: %s", (unsigned long long)r->round, fp_error_get());
    r->loss_wsum = r->weight_sum = 0;
    static const uint8_t zero[32];
    for (int i = 0; i < server_n_workers(r->srv); i++) {
        memcpy(r->prev_seal_pk[i], r->seal_pk[i], 32);   /* to recognise round splices */
        r->prev_task[i] = r->round ? rounds_task_id(r, r->round - 1, TASK_TRAIN) : 0;
        memcpy(r->seal_pk[i], zero, 32);
    }
    int k = sample(r, chosen);
    char names[1024] = "";
    for (int i = 0; i < k; i++) {
        size_t len = strlen(names);
        if (len + WIRE_MAX_ID + 6 < sizeof names)
            snprintf(names + len, sizeof names - len, "%s%s", i ? " " : "",
                     server_worker(r->srv, chosen[i])->id);
        else if (i == k - 1)
            snprintf(names + len, sizeof names - len, " ...");
        r->status[chosen[i]] = ST_PENDING;
    }
    r->n_targets = (unsigned)k;
    r->m.live = (unsigned)server_n_live(r->srv);
    r->m.sampled = (unsigned)k;
    r->sampled_weight = 0;
    for (int i = 0; i < k; i++) {
        uint64_t e = server_worker(r->srv, chosen[i])->n_examples;
        r->sampled_weight += e ? (double)e : 1.0;
    }
    clog_info("round %llu: sampled %d of %d workers (%s)", (unsigned long long)r->round, k,
              server_n_live(r->srv), names);
    sa_destroy(&r->sa);
    if (r->cfg->secagg && k > 0) {
        r->m.secagg = 1;
        if (!(r->sa = sa_new(r, chosen, k))) {
            char why[256];
            snprintf(why, sizeof why, "%s", fp_error_get());
            clog_error("round %llu: %s", (unsigned long long)r->round, why);
            rounds_abandon(r, now, "secure aggregation cannot run: see the log (%u of %u)",
                           0, (unsigned)k);
            return;
        }
    }
    for (int i = 0; i < k; i++)
        send_task(r, chosen[i]);
}

static void start_eval(rounds *r, int64_t now)
{
    reset_phase(r, PH_EVAL, now, r->cfg->eval_deadline_s);
    r->val_sum = 0;
    r->val_tokens = 0;
    for (int i = 0; i < server_n_workers(r->srv); i++)
        if (server_worker(r->srv, i)->alive) {
            r->status[i] = ST_PENDING;
            r->n_targets++;
        }
    clog_info("round %llu: evaluating the global adapter on %u workers",
              (unsigned long long)r->round, r->n_targets);
    for (int i = 0; i < server_n_workers(r->srv); i++)
        if (r->status[i] == ST_PENDING)
            send_task(r, i);
}

static void finish_run(rounds *r)
{
    char out[1100];
    if (r->cfg->out_dir[0])
        snprintf(out, sizeof out, "%s", r->cfg->out_dir);
    else
        snprintf(out, sizeof out, "%s/adapter", r->cfg->state_dir);
    fp_lora *merged = NULL;
    if (strategy_flora_n_folds(r->strat) > 0 && !(merged = strategy_flora_merged(r->strat)))
        clog_error("flora: %s; writing the (restarted) global adapter instead", fp_error_get());
    if (fp_lora_save(merged ? merged : r->global, out) < 0) {
        clog_error("cannot write the final adapter: %s", fp_error_get());
        r->exit_code = 1;
    } else {
        clog_info("run %s complete: final adapter written to %s%s", r->run_id, out,
                  merged ? " (every flora fold, merged)" : "");
        r->exit_code = 0;
    }
    fp_lora_free(&merged);
    server_shutdown_workers(r->srv, "run complete");
    r->ph = PH_DONE;
}

static int add_line(rounds *r, const round_metrics *m)
{
    char *line = metrics_render(m);
    char **lines = line ? realloc(r->lines, (r->n_lines + 1) * sizeof *lines) : NULL;
    if (!lines) {
        free(line);
        return fp_error_set("out of memory for the metrics");
    }
    r->lines = lines;
    r->lines[r->n_lines++] = line;
    return 0;
}

/* Re-renders the last line (once the checkpoint time is known). */
static void patch_last_line(rounds *r, const round_metrics *m)
{
    char *line = metrics_render(m);
    if (!line)
        return;
    free(r->lines[r->n_lines - 1]);
    r->lines[r->n_lines - 1] = line;
}

static void log_round(const rounds *r, const round_metrics *m)
{
    uint64_t rej = 0;
    for (int i = 0; i < REJ_COUNT; i++)
        rej += m->rejected[i];
    clog_info("round %llu %s: train loss %.4f, val loss %.4f (%llu tokens), %u of %u reported, "
              "%llu rejected, %llu bytes up, %llu down, %.3fs train, %.3fs eval, %.3fs checkpoint",
              (unsigned long long)m->round, m->abandoned ? "abandoned" : "complete",
              m->train_loss, m->val_loss, (unsigned long long)m->val_tokens, m->reported,
              m->sampled, (unsigned long long)rej, (unsigned long long)m->bytes_up,
              (unsigned long long)m->bytes_down, m->t_train, m->t_eval, m->t_checkpoint);
    for (int i = 0; i < REJ_COUNT; i++)
        if (m->rejected[i])
            clog_info("round %llu: rejected %llu message(s): %s", (unsigned long long)m->round,
                      (unsigned long long)m->rejected[i], reject_reason_name(i));
}

/* Checkpoint, metrics line, then the next round or the end. */
static void complete_round(rounds *r, int64_t now)
{
    round_metrics *m = &r->m;
    if (r->ph == PH_EVAL) {
        m->t_eval = secs(now - r->phase_start_ms);
        if (r->val_tokens > 0) {
            m->val_loss = r->val_sum / (double)r->val_tokens;
            m->val_tokens = r->val_tokens;
        }
    }
    server_take_counters(r->srv, m->rejected, &m->bytes_up, &m->bytes_down);
    if (r->cfg->dp)
        m->epsilon = r->last_epsilon;
    int finished = r->round >= (uint64_t)r->cfg->rounds ||
                   (r->cfg->target_loss > 0 && isfinite(m->val_loss) &&
                    m->val_loss <= r->cfg->target_loss);
    if (add_line(r, m) < 0) {
        clog_error("round %llu: %s", (unsigned long long)r->round, fp_error_get());
    } else {
        int64_t t0 = clog_now_ms();
        if (save_checkpoint(r, r->round, finished) < 0)
            clog_error("round %llu: checkpoint failed, the round is kept in memory only: %s",
                       (unsigned long long)r->round, fp_error_get());
        m->t_checkpoint = secs(clog_now_ms() - t0);
        patch_last_line(r, m);
        if (metrics_append(r->metrics_path, r->lines[r->n_lines - 1]) < 0)
            clog_error("%s", fp_error_get());
    }
    log_round(r, m);
    if (finished) {
        if (r->cfg->target_loss > 0 && r->round < (uint64_t)r->cfg->rounds)
            clog_info("validation loss %.4f <= target_loss %g: stopping after round %llu",
                      m->val_loss, r->cfg->target_loss, (unsigned long long)r->round);
        finish_run(r);
        return;
    }
    r->round++;
    server_set_round(r->srv, r->round);
    r->ph = PH_WAIT;
    r->phase_start_ms = now;
    r->wait_log_ms = now;
}

/* Central DP without secure aggregation: noise N(0, (sigma C)^2) on the sum
 * of the normalized-weight updates, i.e. sigma C / W on the average, where W
 * is the reporters' share of the sampled weight. */
static int plain_central_noise(rounds *r, float *view)
{
    double W = r->sampled_weight > 0 ? r->weight_sum / r->sampled_weight : 1.0;
    float *x = r->staging;
    size_t n = r->n_view;
    memset(x, 0, n * sizeof *x);
    if (fp_dp_add_noise(r->noise, x, n, r->cfg->dp_noise_multiplier, r->cfg->dp_clip_norm) < 0)
        return -1;
    for (size_t i = 0; i < n; i++)
        view[i] += (float)((double)x[i] / W);
    return 0;
}

/* One step of the accountant for this round's release (q = sampled / registered). */
static void account(rounds *r)
{
    if (!r->cfg->dp)
        return;
    int reg = server_n_workers(r->srv);
    double q = reg > 0 ? (double)r->m.sampled / (double)reg : 1.0;
    if (q > 1)
        q = 1;
    if (fp_dp_accountant_add(&r->acct, q, r->cfg->dp_noise_multiplier, 1) < 0 ||
        fp_dp_accountant_epsilon(&r->acct, r->cfg->dp_delta, &r->last_epsilon, NULL) < 0)
        clog_error("round %llu: DP accountant: %s", (unsigned long long)r->round, fp_error_get());
}

static const char *server_opt_name(int i)
{
    static const char *const names[] = {"none", "fedavgm", "fedadam", "fedyogi", "fedadagrad"};
    return i >= 0 && i < 5 ? names[i] : "?";
}

void rounds_aggregate(rounds *r, int64_t now, const char *why)
{
    round_metrics *m = &r->m;
    m->t_train = secs(now - r->phase_start_ms);
    m->reported = r->n_reported;
    m->dropped = m->sampled - r->n_reported;
    if (r->weight_sum > 0)
        m->train_loss = r->loss_wsum / r->weight_sum;
    int64_t t0 = clog_now_ms();
    float *x = r->view;
    size_t n = r->n_view;
    fp_ft_view_gather(r->global, r->b_only, r->global->params, x);
    memcpy(r->view_old, x, n * sizeof *x);
    if (strategy_finish(r->strat, x) < 0) {
        clog_error("round %llu: %s", (unsigned long long)r->round, fp_error_get());
        return;
    }
    if (r->cfg->dp && r->cfg->dp_mode == COORD_DP_CENTRAL && !r->sa &&
        plain_central_noise(r, x) < 0)
        clog_error("round %llu: DP noise: %s", (unsigned long long)r->round, fp_error_get());
    if (r->sopt) {  /* the aggregate's change is the server optimizer's pseudo-gradient */
        float *d = r->staging;
        for (size_t i = 0; i < n; i++)
            d[i] = x[i] - r->view_old[i];
        memcpy(x, r->view_old, n * sizeof *x);
        if (fp_sopt_step(r->sopt, x, d) < 0) {
            clog_error("round %llu: server optimizer: %s", (unsigned long long)r->round,
                       fp_error_get());
            memcpy(x, r->view_old, n * sizeof *x);
        }
    }
    fp_ft_view_scatter(r->global, r->b_only, x, r->global->params);
    account(r);
    m->t_aggregate = secs(clog_now_ms() - t0);
    clog_info("round %llu: aggregated %u of %u updates (%s) with %s%s%s",
              (unsigned long long)r->round, r->n_reported, r->n_targets, why, r->strat_name,
              r->sopt ? " + " : "", r->sopt ? server_opt_name(r->cfg->server_opt) : "");
    start_eval(r, clog_now_ms());
}

void rounds_abandon(rounds *r, int64_t now, const char *fmt, unsigned a, unsigned b)
{
    round_metrics *m = &r->m;
    m->abandoned = 1;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    snprintf(m->reason, sizeof m->reason, fmt, a, b);
#pragma GCC diagnostic pop
    sa_destroy(&r->sa);
    m->t_train = secs(now - r->phase_start_ms);
    m->reported = r->n_reported;
    m->dropped = m->sampled - r->n_reported;
    clog_info("round %llu abandoned: %s; the global adapter is unchanged",
              (unsigned long long)r->round, m->reason);
    complete_round(r, now);
}

/* Counts the sampled workers still able to answer (not done or refused, and
 * alive or mid-upload). */
static unsigned active_targets(const rounds *r)
{
    unsigned n = 0;
    for (int i = 0; i < server_n_workers(r->srv); i++) {
        uint8_t s = r->status[i];
        if (s == ST_READY || s == ST_STAGING || (s == ST_PENDING && server_worker(r->srv, i)->alive))
            n++;
    }
    return n;
}

static unsigned settled(const rounds *r)
{
    unsigned n = 0;
    for (int i = 0; i < server_n_workers(r->srv); i++)
        n += r->status[i] == ST_DONE || r->status[i] == ST_FAILED;
    return n;
}

void rounds_upload_done(rounds *r, int64_t now, const char *why)
{
    if (r->sa)
        sa_start_unmask(r, now, why);
    else
        rounds_aggregate(r, now, why);
}

static void check_train(rounds *r, int64_t now)
{
    if (r->sa && sa_tick(r, now))
        return;
    rounds_check_stall(r, now);
    rounds_try_pull(r, now);
    unsigned quorum = (unsigned)r->cfg->min_quorum;
    unsigned active = active_targets(r);
    if (r->n_reported == r->n_targets && r->n_targets > 0)
        rounds_upload_done(r, now, "all sampled workers reported");
    else if (active == 0 && r->n_reported >= quorum)
        rounds_upload_done(r, now, "the others failed or are dead");
    else if (r->n_targets == 0)
        rounds_abandon(r, now, "no live worker to sample (%u of %u)", 0, 0);
    else if (settled(r) == r->n_targets)
        rounds_abandon(r, now, "every sampled worker answered but only %u updates were accepted, "
                        "below min_quorum = %u", r->n_reported, quorum);
    else if (now >= r->deadline_ms && r->n_reported >= quorum)
        rounds_upload_done(r, now, "deadline");
    else if (now >= r->deadline_ms)
        rounds_abandon(r, now, "deadline passed with %u updates, below min_quorum = %u", r->n_reported,
                quorum);
}

static void check_eval(rounds *r, int64_t now)
{
    unsigned active = 0;
    for (int i = 0; i < server_n_workers(r->srv); i++)
        if (r->status[i] == ST_PENDING && server_worker(r->srv, i)->alive)
            active++;
    if (r->n_targets > 0 && active > 0 && now < r->deadline_ms)
        return;
    if (active > 0 && r->n_reported == 0)
        clog_info("round %llu: no evaluation result before the deadline",
                  (unsigned long long)r->round);
    else if (r->n_targets > 0 && active == 0 && r->n_reported == 0 && now < r->deadline_ms &&
             settled(r) < r->n_targets)
        return; /* the targets died; one may come back before the deadline */
    complete_round(r, now);
}

/* Would one more round keep epsilon within [dp] epsilon_budget? (q estimated
 * from the live workers the round will sample.) */
static int budget_allows(rounds *r, int live)
{
    if (!r->cfg->dp || r->cfg->dp_epsilon_budget <= 0)
        return 1;
    int reg = server_n_workers(r->srv);
    long k = lround(r->cfg->fraction * live);
    if (k < r->cfg->min_workers)
        k = r->cfg->min_workers;
    if (r->cfg->max_workers > 0 && k > r->cfg->max_workers)
        k = r->cfg->max_workers;
    if (k > live)
        k = live;
    double q = reg > 0 ? (double)k / (double)reg : 1.0, eps = 0;
    fp_dp_accountant next = r->acct;
    if (fp_dp_accountant_add(&next, q > 1 ? 1 : q, r->cfg->dp_noise_multiplier, 1) < 0 ||
        fp_dp_accountant_epsilon(&next, r->cfg->dp_delta, &eps, NULL) < 0)
        return 1;
    if (eps <= r->cfg->dp_epsilon_budget)
        return 1;
    clog_info("privacy budget spent: round %llu would bring epsilon to %.4f > epsilon_budget "
              "%g at delta %g (spent so far: %.4f); stopping the run",
              (unsigned long long)r->round, eps, r->cfg->dp_epsilon_budget, r->cfg->dp_delta,
              r->last_epsilon);
    return 0;
}

static void check_wait(rounds *r, int64_t now)
{
    int live = server_n_live(r->srv);
    int need = r->cfg->min_workers;
    int64_t waited = now - r->phase_start_ms;
    int timed_out = waited >= (int64_t)(r->cfg->start_timeout_s * 1000.0);
    int enough_late = live >= 1 && (r->round == 0 || live >= r->cfg->min_quorum);
    if (live >= need || (timed_out && enough_late)) {
        if (live < need)
            clog_info("round %llu: only %d of min_workers = %d live after %.0fs; starting anyway",
                      (unsigned long long)r->round, live, need, secs(waited));
        server_set_round(r->srv, r->round);
        if (r->round == 0) {
            metrics_reset(&r->m, 0);
            r->m.live = (unsigned)live;
            start_eval(r, now);
        } else if (!budget_allows(r, live)) {
            finish_run(r);
        } else {
            start_train(r, now);
        }
        return;
    }
    if (now - r->wait_log_ms >= (int64_t)(r->cfg->start_timeout_s * 1000.0) ||
        r->wait_log_ms == 0) {
        clog_info("round %llu: waiting for workers: %d live, min_workers = %d",
                  (unsigned long long)r->round, live, need);
        r->wait_log_ms = now;
    }
}

/* ---- hooks ------------------------------------------------------------------------ */

static int tick(void *ctx, int64_t now, int *done)
{
    rounds *r = ctx;
    switch (r->ph) {
    case PH_WAIT: check_wait(r, now); break;
    case PH_TRAIN: check_train(r, now); break;
    case PH_EVAL: check_eval(r, now); break;
    case PH_FINISHING:
        if (now >= r->deadline_ms)
            finish_run(r);
        break;
    case PH_DONE: break;
    }
    if (r->ph == PH_DONE) {
        *done = 1;
        return 0;
    }
    if (r->ph == PH_TRAIN || r->ph == PH_EVAL || r->ph == PH_FINISHING) {
        int64_t left = r->deadline_ms - now;
        return left < 0 ? 0 : left > 100 ? 100 : (int)left;
    }
    return 100;
}

static void queue_remove(rounds *r, int w)
{
    int n = 0;
    for (int i = 0; i < r->q_len; i++) {
        int x = r->queue[(r->q_head + i) % SERVER_MAX_WORKERS];
        if (x != w)
            r->queue[(r->q_head + n++) % SERVER_MAX_WORKERS] = x;
    }
    r->q_len = n;
}

/* A worker said Hello again: it restarted or reconnected and lost its task. */
/* flora: which folds worker w's base holds, from its Hello. A base with folds
 * of another run, or more than this run has (a fold lost in a coordinator
 * crash), is restored to the original by the next Task (fold_reset). */
static void hello_folds(rounds *r, int w)
{
    const worker_info *wi = server_worker(r->srv, w);
    uint32_t F = (uint32_t)strategy_flora_n_folds(r->strat);
    r->fold_have[w] = 0;
    r->fold_reset[w] = 0;
    if (wi->n_folds == 0)
        return;
    if (strcmp(wi->fold_run, r->run_id) == 0 && wi->n_folds <= F) {
        r->fold_have[w] = wi->n_folds;
        return;
    }
    r->fold_reset[w] = 1;
    clog_info("%s: its base weights hold %u folds of run %s, this run has %u: its next task "
              "restores the original base", wi->id, wi->n_folds, wi->fold_run, F);
}

static void on_hello(void *ctx, int w)
{
    rounds *r = ctx;
    hello_folds(r, w);
    if (r->ph == PH_FINISHING || r->ph == PH_DONE) {
        server_shutdown_workers(r->srv, "run complete");
        return;
    }
    if (r->ph != PH_TRAIN && r->ph != PH_EVAL)
        return;
    uint8_t s = r->status[w];
    if (s == ST_STAGING)
        rounds_drop_staging(r);
    if (s == ST_READY)
        queue_remove(r, w);
    if (r->ph == PH_TRAIN && r->sa && s != ST_NONE && s != ST_DONE && s != ST_FAILED) {
        r->status[w] = ST_FAILED;   /* its per-round keys are gone: a dropout */
        clog_info("round %llu: %s rejoined during secure aggregation; counted as dropped",
                  (unsigned long long)r->round, server_worker(r->srv, w)->id);
        return;
    }
    if (s == ST_PENDING || s == ST_READY || s == ST_STAGING) {
        r->status[w] = ST_PENDING;
        clog_info("round %llu: %s rejoined; resending its %s task", (unsigned long long)r->round,
                  server_worker(r->srv, w)->id, r->ph == PH_TRAIN ? "training" : "evaluation");
        send_task(r, w);
    }
}

int rounds_attach(rounds *r, server *srv)
{
    /* Only now that this process owns the port: metrics.jsonl = the checkpoint's. */
    if (metrics_rewrite(r->metrics_path, r->lines, r->n_lines) < 0)
        return -1;
    r->srv = srv;
    server_hooks h = {r, rounds_on_task_msg, rounds_on_bad_frame, on_hello, NULL, tick};
    server_set_hooks(srv, &h);
    server_set_round(srv, r->round);
    int64_t now = clog_now_ms();
    r->phase_start_ms = now;
    if (r->finished_flag || r->round > (uint64_t)r->cfg->rounds) {
        /* Done before the restart: let reconnecting workers hear SHUTDOWN. */
        r->ph = PH_FINISHING;
        r->deadline_ms = now + 5 * (int64_t)r->cfg->heartbeat_ms + 2000;
        return 0;
    }
    r->ph = PH_WAIT;
    return 0;
}
