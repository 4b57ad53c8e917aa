/* rounds_phase.c - the phases of a round and their deadlines: wait for
 * workers, sample and send tasks, train, evaluate, complete (rounds_phase.h). */
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agg_lowrank.h"
#include "clog.h"
#include "finetune.h"
#include "rng.h"
#include "rounds_agg.h"
#include "rounds_async.h"
#include "rounds_msgs.h"
#include "rounds_persist.h"
#include "rounds_phase.h"
#include "rounds_report.h"
#include "rounds_state.h"
#include "sampling.h"

/* Ends the round without changing the global adapter. */
static void abandon(rounds *r, int64_t now, const char *fmt, unsigned a, unsigned b)
{
    char reason[256];
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    snprintf(reason, sizeof reason, fmt, a, b);
#pragma GCC diagnostic pop
    rounds_abandon(r, now, reason);
    rounds_complete_round(r, now);
}

/* Aggregates, then evaluates; or abandons the round when aggregation fails. */
static void aggregate(rounds *r, int64_t now, const char *why)
{
    if (rounds_aggregate(r, now, why) == 0) {
        rounds_start_eval(r, clog_now_ms());
        return;
    }
    char reason[256];
    snprintf(reason, sizeof reason, "aggregation failed: %s", fp_error_get());
    clog_error("round %llu: %s", (unsigned long long)r->round, reason);
    rounds_abandon(r, now, reason);
    rounds_complete_round(r, now);
}

/* The upload phase is over: unmask the secure sum first, or aggregate now. */
static void upload_done(rounds *r, int64_t now, const char *why)
{
    if (r->sa) {
        char reason[256];
        if (sa_end_upload(r, now, why, reason, sizeof reason) == SA_FAILED) {
            rounds_abandon(r, now, reason);
            rounds_complete_round(r, now);
        }
        return;
    }
    aggregate(r, now, why);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* [sampling] max_examples = 0 (auto): no sampled worker weighs more than 4x
 * the median weight of the round's sample, so a worker that declares 2^64-1
 * examples cannot drown the others (an honest majority sets the median). An
 * explicit max_examples, weighting = equal or fewer than 3 workers: no cap. */
static void set_weight_cap(rounds *r, const int *chosen, int k)
{
    r->weight_cap = 0;
    if (r->cfg->max_examples || r->cfg->weighting == COORD_WEIGHT_EQUAL || k < 3)
        return;
    double *v = malloc((size_t)k * sizeof *v);
    if (!v)
        return;
    for (int i = 0; i < k; i++)
        v[i] = server_weight(r->srv, chosen[i], server_worker(r->srv, chosen[i])->n_examples);
    qsort(v, (size_t)k, sizeof *v, cmp_double);
    r->weight_cap = 4.0 * v[(k - 1) / 2];
    free(v);
}

static void reset_phase(rounds *r, round_phase ph, int64_t now, double deadline_s)
{
    memset(r->status, ST_NONE, SERVER_MAX_WORKERS);
    memset(r->resent, 0, SERVER_MAX_WORKERS);
    r->q_head = r->q_len = 0;
    uploads_release_all(&r->up);
    r->n_targets = r->n_reported = r->n_refused = 0;
    r->first_refusal[0] = '\0';
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
    p->freeze_a = r->view_kind == FP_VIEW_B;
    p->freeze_b = r->view_kind == FP_VIEW_A;
    p->prox_mu = c->prox_mu;
    p->grad_checkpoint = c->grad_checkpoint;
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

/* scaffold (docs/protocol.md, Task.scaffold): the server control variate c
 * travels after the adapter a in *slab (2 n floats; no folds: flora is another
 * strategy, and every worker has the global's rank). */
static int scaffold_fields(const rounds *r, const fp_lora *a, Fedpeft__Task *t, float **slab,
                           size_t *n)
{
    const float *c = strategy_scaffold_c(r->strat);
    if (!c)
        return 0;
    if (*slab || a->n_params != r->n_view)
        return fp_error_set("scaffold needs the whole adapter at the global's rank");
    if (!(*slab = malloc(2 * a->n_params * sizeof **slab)))
        return fp_error_set("out of memory for the control variate (%zu floats)", a->n_params);
    memcpy(*slab, a->params, a->n_params * sizeof **slab);
    memcpy(*slab + a->n_params, c, a->n_params * sizeof **slab);
    *n = 2 * a->n_params;
    t->scaffold = 1;
    return 0;
}

/* What a Task is: the phase's (round, kind), or async's hold task (trains
 * from version `round`, keeps the update) or upload task (from_update). */
typedef struct {
    int kind;
    uint64_t round, task_id;
    int hold;
    uint64_t from_update;
    int64_t deadline_ms;
} task_spec;

static void send_spec(rounds *r, int w, const task_spec *ts);

/* Task + the global adapter to worker w for the current phase. */
void rounds_send_task(rounds *r, int w)
{
    int kind = r->ph == PH_TRAIN ? TASK_TRAIN : TASK_EVAL;
    task_spec ts = {kind, r->round, rounds_task_id(r, r->round, kind), 0, 0, r->deadline_ms};
    if (kind == TASK_TRAIN && rounds_async(r))
        ts.from_update = r->as_task[w];     /* a buffer's member uploads what it holds */
    send_spec(r, w, &ts);
}

void rounds_send_hold_task(rounds *r, int w, uint64_t version, uint64_t task_id,
                           int64_t deadline_ms)
{
    task_spec ts = {TASK_TRAIN, version, task_id, 1, 0, deadline_ms};
    send_spec(r, w, &ts);
}

static void send_spec(rounds *r, int w, const task_spec *ts)
{
    int kind = ts->kind;
    Fedpeft__TrainParams params = FEDPEFT__TRAIN_PARAMS__INIT;
    fill_params(r, &params);
    Fedpeft__Task t = FEDPEFT__TASK__INIT;
    t.kind = kind == TASK_TRAIN ? FEDPEFT__TASK__KIND__TRAIN : FEDPEFT__TASK__KIND__EVAL;
    t.round = ts->round;
    t.task_id = ts->task_id;
    t.hold = ts->hold;
    t.from_update = ts->from_update;
    t.params = &params;
    t.n_chunks = wire_n_chunks(r->global->n_params);
    t.deadline_unix_ms = (uint64_t)(clog_wall_ms() + (ts->deadline_ms - clog_now_ms()));
    Fedpeft__SecAggParams sap = FEDPEFT__SEC_AGG_PARAMS__INIT;
    Fedpeft__DpParams dpp = FEDPEFT__DP_PARAMS__INIT;
    wire_msg env = FEDPEFT__ENVELOPE__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_TASK;
    env.task = &t;
    if (kind == TASK_TRAIN) {
        t.coordinator_pk = (ProtobufCBinaryData){FP_KEY_BYTES, r->seal_kp->public_key};
        if (ts->from_update) {  /* no adapter: the worker holds its update */
            if (r->sa) {
                sa_task_fields(r->sa, w, &sap, &t.peers, &t.n_peers);
                t.secagg = &sap;
            }
            t.n_chunks = 0;
            (void)server_send(r->srv, w, &env);
            return;
        }
        if (r->sa && !ts->hold) {
            sa_task_fields(r->sa, w, &sap, &t.peers, &t.n_peers);
            t.secagg = &sap;
        }
        if (r->cfg->dp && !ts->hold) {
            dpp.clip_norm = (float)r->cfg->dp_clip_norm;
            dpp.noise_multiplier = (float)r->cfg->dp_noise_multiplier;
            dpp.distributed = r->cfg->dp_mode == COORD_DP_DISTRIBUTED;
            dpp.n_noise = r->n_targets;
            t.dp = &dpp;
        }
    }
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
    } else if (kind == TASK_TRAIN && !ts->hold && scaffold_fields(r, a, &t, &slab, &n) < 0) {
        clog_error("round %llu: cannot send the control variate to %s: %s",
                   (unsigned long long)r->round, server_worker(r->srv, w)->id, fp_error_get());
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

void rounds_sort_by_id(const rounds *r, int *w, int n)
{
    qsort_r(w, (size_t)n, sizeof *w, cmp_ids, r->srv);
}

/* The round's sampling seed: with CURVE a keyed hash of (run, round) under the
 * coordinator's secret sample key, so no worker can predict who is sampled (the
 * DP accounting's amplification by sampling assumes it cannot); with --insecure
 * the documented [run] seed. */
static uint64_t sample_seed(const rounds *r)
{
    if (!r->sample_secret)
        return r->cfg->seed * 1000003u + r->round;
    uint8_t msg[48] = {0}, out[8];
    snprintf((char *)msg, 40, "%s", r->run_id);
    for (int i = 0; i < 8; i++)
        msg[40 + i] = (uint8_t)(r->round >> (8 * i));
    crypto_generichash(out, sizeof out, msg, sizeof msg, r->sample_key, sizeof r->sample_key);
    uint64_t s = 0;
    for (int i = 0; i < 8; i++)
        s |= (uint64_t)out[i] << (8 * i);
    return s;
}

/* Live workers sorted by id; fixed: k of them by a partial Fisher-Yates
 * seeded from sample_seed, the chosen ones sorted by id again; poisson: each
 * one with probability fraction (sampling.h), no minimum or cap. Returns k. */
static int sample(rounds *r, int *chosen)
{
    int n = 0;
    uint64_t seed = sample_seed(r);
    int poisson = r->cfg->sampling_mode == COORD_SAMPLING_POISSON;
    for (int i = 0; i < server_n_workers(r->srv); i++)
        if (server_worker(r->srv, i)->alive &&
            (!poisson || sampling_poisson_in(seed, server_worker(r->srv, i)->id,
                                             r->cfg->fraction)))
            chosen[n++] = i;
    rounds_sort_by_id(r, chosen, n);
    if (poisson)
        return n;
    long k = lround(r->cfg->fraction * n);
    if (k < r->cfg->min_workers)
        k = r->cfg->min_workers;
    if (r->cfg->max_workers > 0 && k > r->cfg->max_workers)
        k = r->cfg->max_workers;
    if (k > n)
        k = n;
    fp_rng rng;
    fp_rng_seed(&rng, seed);
    for (int i = 0; i < k; i++) {
        int j = i + (int)fp_rng_below(&rng, (uint64_t)(n - i));
        int t = chosen[i];
        chosen[i] = chosen[j];
        chosen[j] = t;
    }
    rounds_sort_by_id(r, chosen, (int)k);
    return (int)k;
}

static void start_train(rounds *r, int64_t now)
{
    static int chosen[SERVER_MAX_WORKERS];
    int k = sample(r, chosen);
    rounds_begin_train(r, now, chosen, k);
}

void rounds_begin_train(rounds *r, int64_t now, const int *chosen, int k)
{
    reset_phase(r, PH_TRAIN, now, r->cfg->deadline_s);
    metrics_reset(&r->m, r->round);
    if (rounds_set_view(r) < 0)
        clog_error("round %llu: %s", (unsigned long long)r->round, fp_error_get());
    if (strategy_begin(r->strat, r->round) < 0)
        clog_error("round %llu: %s", (unsigned long long)r->round, fp_error_get());
    rounds_dump(r, "global.f32", r->global->params, r->global->n_params * sizeof(float));
    r->loss_wsum = r->weight_sum = 0;
    static const uint8_t zero[32];
    for (int i = 0; i < server_n_workers(r->srv); i++) {
        memcpy(r->prev_seal_pk[i], r->seal_pk[i], 32);   /* to recognise round splices */
        r->prev_task[i] = r->round ? rounds_task_id(r, r->round - 1, TASK_TRAIN) : 0;
        memcpy(r->seal_pk[i], zero, 32);
    }
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
    set_weight_cap(r, chosen, k);
    r->sampled_weight = 0;
    for (int i = 0; i < k; i++) {
        r->sampled_weight += rounds_weight(r, chosen[i], server_worker(r->srv, chosen[i])->n_examples);
    }
    if (rounds_async(r))
        clog_info("round %llu: buffer of %d held updates (%s) of %d live workers",
                  (unsigned long long)r->round, k, names, server_n_live(r->srv));
    else
        clog_info("round %llu: sampled %d of %d workers (%s)%s", (unsigned long long)r->round,
                  k, server_n_live(r->srv), names,
                  r->cfg->sampling_mode == COORD_SAMPLING_POISSON ? " by Poisson sampling" : "");
    sa_destroy(&r->sa);
    /* poisson: a draw that can never meet the quorum ends the round now; it is
     * not topped up (the accountant assumes Poisson sampling). */
    if (r->cfg->sampling_mode == COORD_SAMPLING_POISSON && k < r->cfg->min_quorum) {
        abandon(r, now, "the Poisson draw holds %u workers, below min_quorum = %u (not "
                        "topped up: the accountant assumes Poisson sampling)", (unsigned)k,
                (unsigned)r->cfg->min_quorum);
        return;
    }
    if (r->cfg->secagg && k > 0) {
        r->m.secagg = 1;
        if (!(r->sa = sa_new(r, chosen, k))) {
            char why[256];
            snprintf(why, sizeof why, "%s", fp_error_get());
            clog_error("round %llu: %s", (unsigned long long)r->round, why);
            abandon(r, now, "secure aggregation cannot run: see the log (%u of %u)", 0,
                    (unsigned)k);
            return;
        }
    }
    for (int i = 0; i < k; i++)
        rounds_send_task(r, chosen[i]);
}

void rounds_start_eval(rounds *r, int64_t now)
{
    reset_phase(r, PH_EVAL, now, r->cfg->eval_deadline_s);
    r->val_sum = 0;
    r->val_tokens = 0;
    int members = rounds_async(r) && r->round > 0;  /* the others are training */
    for (int i = 0; i < server_n_workers(r->srv); i++)
        if (server_worker(r->srv, i)->alive && (!members || r->as_state[i] == AS_MEMBER)) {
            r->status[i] = ST_PENDING;
            r->n_targets++;
        }
    clog_info("round %llu: evaluating the global adapter on %u workers",
              (unsigned long long)r->round, r->n_targets);
    for (int i = 0; i < server_n_workers(r->srv); i++)
        if (r->status[i] == ST_PENDING)
            rounds_send_task(r, i);
}

/* The global adapter as a PEFT directory (flora: every fold merged). 0, or
 * -1 with fp_error; *merged_p says whether folds were merged. */
static int save_adapter(const rounds *r, const char *out, int *merged_p)
{
    fp_lora *merged = NULL;
    if (strategy_flora_n_folds(r->strat) > 0 && !(merged = strategy_flora_merged(r->strat)))
        clog_error("flora: %s; writing the (restarted) global adapter instead", fp_error_get());
    int rc = fp_lora_save(merged ? merged : r->global, out);
    *merged_p = merged != NULL;
    fp_lora_free(&merged);
    return rc;
}

/* [run] save_every: STATE_DIR/adapters/round-N after round N (a snapshot
 * for evaluating the run's progress; losing one loses nothing else). */
static void save_snapshot(const rounds *r)
{
    int every = r->cfg->save_every, merged;
    if (every <= 0 || r->round == 0 || r->round % (uint64_t)every != 0 || r->m.abandoned)
        return;
    char dir[1100], out[1200];
    snprintf(dir, sizeof dir, "%s/adapters", r->cfg->state_dir);
    snprintf(out, sizeof out, "%s/round-%llu", dir, (unsigned long long)r->round);
    if (rounds_mkdir_p(dir) < 0 || save_adapter(r, out, &merged) < 0)
        clog_error("round %llu: cannot write the snapshot %s ([run] save_every): %s",
                   (unsigned long long)r->round, out, fp_error_get());
}

void rounds_finish_run(rounds *r)
{
    char out[1100];
    if (r->cfg->out_dir[0])
        snprintf(out, sizeof out, "%s", r->cfg->out_dir);
    else
        snprintf(out, sizeof out, "%s/adapter", r->cfg->state_dir);
    int merged;
    if (save_adapter(r, out, &merged) < 0) {
        clog_error("cannot write the final adapter: %s", fp_error_get());
        r->exit_code = 1;
    } else {
        clog_info("run %s complete: final adapter written to %s%s", r->run_id, out,
                  merged ? " (every flora fold, merged)" : "");
        r->exit_code = 0;
    }
    server_shutdown_workers(r->srv, "run complete");
    r->ph = PH_DONE;
}

/* What target_loss is compared with: the upper median of the workers' own
 * evaluation losses, and only with a quorum (min_quorum, and more than half
 * of those asked). One worker alone cannot pull it down: a fake loss of 0 is
 * at most the lower half. NAN when there is no quorum. */
static double stop_statistic(const rounds *r)
{
    unsigned n = 0, q = (unsigned)r->cfg->min_quorum;
    if (r->n_reported < q || 2 * r->n_reported <= r->n_targets)
        return NAN;
    double *v = malloc(r->n_reported * sizeof *v);
    if (!v)
        return NAN;
    for (int i = 0; i < server_n_workers(r->srv) && n < r->n_reported; i++)
        if (r->status[i] == ST_DONE)
            v[n++] = r->val_loss[i];
    qsort(v, n, sizeof *v, cmp_double);
    double med = n ? v[n / 2] : NAN;
    free(v);
    return med;
}

/* Checkpoint, metrics line, then the next round or the end. */
void rounds_complete_round(rounds *r, int64_t now)
{
    round_metrics *m = &r->m;
    m->unix_s = (double)clog_wall_ms() / 1000.0;
    rounds_async_round_over(r);
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
    double stop_loss = r->ph == PH_EVAL ? stop_statistic(r) : NAN;
    int finished = r->round >= (uint64_t)r->cfg->rounds ||
                   (r->cfg->target_loss > 0 && isfinite(stop_loss) &&
                    stop_loss <= r->cfg->target_loss);
    if (rounds_add_line(r, m) < 0) {
        clog_error("round %llu: %s", (unsigned long long)r->round, fp_error_get());
    } else {
        int64_t t0 = clog_now_ms();
        if (rounds_save_checkpoint(r, r->round, finished) < 0)
            clog_error("round %llu: checkpoint failed, the round is kept in memory only: %s",
                       (unsigned long long)r->round, fp_error_get());
        m->t_checkpoint = secs(clog_now_ms() - t0);
        rounds_patch_last_line(r, m);
        if (metrics_append(r->metrics_path, r->lines[r->n_lines - 1]) < 0)
            clog_error("%s", fp_error_get());
    }
    rounds_log_round(r, m);
    save_snapshot(r);
    if (finished) {
        if (r->cfg->target_loss > 0 && r->round < (uint64_t)r->cfg->rounds)
            clog_info("median validation loss %.4f of %u workers <= target_loss %g: stopping "
                      "after round %llu", stop_loss, r->n_reported, r->cfg->target_loss,
                      (unsigned long long)r->round);
        rounds_finish_run(r);
        return;
    }
    r->round++;
    server_set_round(r->srv, r->round);
    r->ph = PH_WAIT;
    r->phase_start_ms = now;
    r->wait_log_ms = now;
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

void rounds_check_train(rounds *r, int64_t now)
{
    if (r->sa) {
        char reason[256];
        switch (sa_tick(r, now, reason, sizeof reason)) {
        case SA_FAILED:
            rounds_abandon(r, now, reason);
            rounds_complete_round(r, now);
            return;
        case SA_SUM_READY:
            aggregate(r, now, "secure aggregation");
            return;
        case SA_GOING:
            return;
        case SA_UPLOADING:
            break;
        }
    }
    rounds_check_stall(r, now);
    rounds_try_pull(r, now);
    unsigned quorum = (unsigned)r->cfg->min_quorum;
    unsigned active = active_targets(r);
    if (r->n_reported == r->n_targets && r->n_targets > 0)
        upload_done(r, now, "all sampled workers reported");
    else if (active == 0 && r->n_reported >= quorum)
        upload_done(r, now, "the others failed or are dead");
    else if (r->n_targets == 0)
        abandon(r, now, "no live worker to sample (%u of %u)", 0, 0);
    else if (settled(r) == r->n_targets)
        abandon(r, now, "every sampled worker answered but only %u updates were accepted, "
                        "below min_quorum = %u", r->n_reported, quorum);
    else if (now >= r->deadline_ms && r->n_reported >= quorum)
        upload_done(r, now, "deadline");
    else if (now >= r->deadline_ms)
        abandon(r, now, "deadline passed with %u updates, below min_quorum = %u", r->n_reported,
                quorum);
}

void rounds_check_eval(rounds *r, int64_t now)
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
    rounds_complete_round(r, now);
}

/* Would one more round keep epsilon within [dp] epsilon_budget? (fixed: q
 * estimated from the live workers the round will sample; poisson: q = fraction.) */
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
    double q = sampling_dp_q(r->cfg->sampling_mode, (unsigned)k, (unsigned)reg,
                             r->cfg->fraction), eps = 0;
    fp_dp_accountant next = r->acct;
    if (fp_dp_accountant_add(&next, q, r->cfg->dp_noise_multiplier, 1) < 0 ||
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

/* Why the round has not started, and what it costs: a worker that was here and
 * is gone (a stopped container, a dead machine) makes every round wait up to
 * start_timeout_s, which the operator should see named. */
static void log_wait(const rounds *r, int64_t now, int live, int need)
{
    char gone[512] = "";
    size_t len = 0;
    int n_gone = 0;
    for (int i = 0; i < server_n_workers(r->srv); i++) {
        const worker_info *wi = server_worker(r->srv, i);
        if (wi->alive || wi->banned)
            continue;
        if (++n_gone <= 8 && len < sizeof gone)
            len += (size_t)snprintf(gone + len, sizeof gone - len, " %s (last seen %.0fs ago)",
                                    wi->id, secs(now - wi->last_seen_ms));
    }
    if (n_gone > 8 && len < sizeof gone)
        snprintf(gone + len, sizeof gone - len, " and %d more", n_gone - 8);
    clog_info("round %llu: waiting for workers: %d live, min_workers = %d%s%s; the round "
              "starts when %d are live, or after start_timeout_s = %gs with the live ones "
              "(at least min_quorum = %d)%s", (unsigned long long)r->round, live, need,
              n_gone ? "; gone:" : "", gone, need, r->cfg->start_timeout_s,
              r->round == 0 ? 1 : r->cfg->min_quorum,
              n_gone ? ": a gone worker costs every round this wait until it is back or "
                       "min_workers is lowered" : "");
}

void rounds_check_wait(rounds *r, int64_t now)
{
    if (rounds_async(r) && r->round > 0) {
        server_set_round(r->srv, r->round);
        return;     /* rounds_async_tick starts the round when the buffer is full */
    }
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
            rounds_start_eval(r, now);
        } else if (!budget_allows(r, live)) {
            rounds_finish_run(r);
        } else {
            start_train(r, now);
        }
        return;
    }
    if (now - r->wait_log_ms >= (int64_t)(r->cfg->start_timeout_s * 1000.0) ||
        r->wait_log_ms == 0) {
        log_wait(r, now, live, need);
        r->wait_log_ms = now;
    }
}
