/* task.c - receiving tasks, local training, evaluation, uploads (see task.h). */
#include "task.h"
#include "rng.h"

#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dp.h"
#include "finetune.h"
#include "folds.h"
#include "keys.h"
#include "lora.h"
#include "seal.h"
#include "secagg_client.h"
#include "privacy_policy.h"
#include "scaffold.h"
#include "progress.h"
#include "wk_log.h"

typedef struct {
    wk_conn *conn;
    const wk_config *cfg;
    fp_model *model;            /* flora adds folds to its weights (folds.h) */
    const fp_dataset *data;
    wk_folds folds;
    wk_scaffold sc;             /* strategy scaffold's control variates */
    const float *grad_offset;   /* this TRAIN task's c - c_i, or NULL */
    fp_lora *global, *local;    /* shapes from the Welcome */
    float *delta;               /* local - global: the update (its trainable view) */
    size_t n_up;                /* floats of the view uploaded (ffa: B only) */
    unsigned spec_generation;
    /* The task whose adapter is arriving. */
    int receiving;
    Fedpeft__Task__Kind kind;
    uint64_t task_id, round;
    Fedpeft__TrainParams params;
    wire_assembler as;
    /* The update waiting for Pull. */
    int have_update;
    uint64_t update_task;
    /* [round] mode = async (proto Task.hold / from_update): this task keeps its
     * update (hold), or uploads the one kept (from_held); the kept update. */
    int hold, from_held;
    int have_held;
    uint64_t held_task, held_tokens;
    float held_loss;
    /* Training in progress. */
    wire_msg *stash;            /* the message that interrupted training */
    int abort_rc;               /* WK_SHUTDOWN or -1 when the callback stopped for that */
    unsigned train_generation;
    double loss_sum;
    int loss_n;
    /* The TRAIN task's privacy settings (proto Task 7..10). */
    uint8_t coord_pk[32];
    int has_secagg, has_dp;
    Fedpeft__SecAggParams sap;
    uint8_t graph_commit[32];   /* sap.graph_commit points here */
    Fedpeft__ShareKeys *sent_sk; /* this round's sealed shares, sent again when PeerKeys is */
    Fedpeft__DpParams dpp;
    wk_sa *sa;                  /* secure aggregation of this round */
    uint32_t *q;                /* the masked input (secagg) */
    /* Sealing the upload: per-round ephemeral key pair and the chunk key. */
    uint8_t seal_pk[32];
    uint8_t *seal_key;          /* sodium_malloc */
    uint8_t *last_sealed;       /* the previous round's sealed chunk 0 (splice hook) */
    size_t last_sealed_len;
} wk_task;

/* Test hooks (docs/protocol.md, "Test hooks"): compiled only with
 * -DFEDPEFT_TEST_HOOKS=ON (the test suite's build); otherwise never set. */
static const char *hook(const char *name)
{
#ifdef FEDPEFT_TEST_HOOKS
    const char *v = getenv(name);
    return v && v[0] ? v : NULL;
#else
    (void)name;
    return NULL;
#endif
}

/* FEDPEFT_TEST_SECAGG=WHAT: this worker misbehaves in secure aggregation
 * (test builds only): rehello, zerokeys, badsig, badseal, badshare, big. */
static int evil(const char *what)
{
    const char *v = hook("FEDPEFT_TEST_SECAGG");
    return v && strcmp(v, what) == 0;
}

/* Tells the coordinator this worker refuses (or reports, about = a peer)
 * something of a task; the reason is also this worker's log line. */
static void send_refusal(wk_task *t, uint64_t task_id, uint64_t round, const char *reason,
                         const char *about)
{
    Fedpeft__Refusal f = FEDPEFT__REFUSAL__INIT;
    char buf[1000];
    snprintf(buf, sizeof buf, "%s", reason);
    f.task_id = task_id;
    f.round = round;
    f.reason = buf;
    f.about = (char *)(about ? about : "");
    wire_msg env = FEDPEFT__ENVELOPE__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_REFUSAL;
    env.refusal = &f;
    if (wk_conn_send(t->conn, &env) != 0)
        wk_log("round %llu: sending the refusal failed: %s", (unsigned long long)round,
               fp_error_get());
}

/* (Re)shapes the adapters after a Welcome; -1 when the coordinator's adapter
 * cannot be this model's. */
/* The update and the trained adapter are this worker's plaintext: wiped
 * before their memory goes back to the allocator. */
static void free_update(wk_task *t)
{
    if (t->delta && t->global)
        sodium_memzero(t->delta, t->global->n_params * sizeof *t->delta);
    if (t->local && t->local->params)
        sodium_memzero(t->local->params, t->local->n_params * sizeof *t->local->params);
    free(t->delta);
    t->delta = NULL;
    fp_lora_free(&t->local);
}

static int shape_adapters(wk_task *t)
{
    const wk_lora_spec *s = wk_conn_spec(t->conn);
    if (t->global && t->global->n_params == s->n_params && t->global->cfg.rank == s->rank &&
        t->global->cfg.targets == s->targets)
        return 0;
    free_update(t);
    fp_lora_free(&t->global);
    fp_lora_config lc;
    fp_lora_config_default(&lc);
    lc.rank = s->rank;
    lc.alpha = s->alpha;
    lc.targets = s->targets;
    lc.use_rslora = s->use_rslora;
    snprintf(lc.base_model, sizeof lc.base_model, "%s", t->cfg->model_path);
    if (s->rank < 1 || !s->targets)
        return fp_error_set("the coordinator sent an invalid LoRA spec (rank %d, targets 0x%x)",
                            s->rank, s->targets);
    if (!(t->global = fp_lora_new(&t->model->cfg, &lc)) ||
        !(t->local = fp_lora_new(&t->model->cfg, &lc)))
        return -1;
    if (t->global->n_params != s->n_params)
        return fp_error_set("the coordinator's adapter has %llu floats but rank %d on these "
                            "targets gives %zu for this model: wrong base model?",
                            (unsigned long long)s->n_params, s->rank, t->global->n_params);
    free(t->q);
    if (!(t->q = calloc(t->global->n_params, sizeof *t->q)))
        return fp_error_set("out of memory for the masked update");
    if (!(t->delta = calloc(t->global->n_params, sizeof(float))))
        return fp_error_set("out of memory for the update (%zu floats)", t->global->n_params);
    return 0;
}

static int start_secagg(wk_task *t);
static int finish_held(wk_task *t);

/* The task this worker now works on: its ids and params, and its secure
 * aggregation settings (copied: the message is freed before the keys phase);
 * the previous round's secure-aggregation state is dropped. */
static void take_task(wk_task *t, const Fedpeft__Task *task)
{
    t->kind = task->kind;
    t->task_id = task->task_id;
    t->round = task->round;
    t->params = *task->params;
    wk_sa_destroy(&t->sa);
    wk_sa_free_shares(&t->sent_sk);
    t->has_secagg = task->secagg != NULL;
    if (task->secagg) {
        t->sap = *task->secagg;
        size_t gl = t->sap.graph_commit.len == 32 ? 32 : 0;
        memcpy(t->graph_commit, t->sap.graph_commit.data, gl);
        t->sap.graph_commit = (ProtobufCBinaryData){gl, t->graph_commit};
    }
}

/* A TRAIN task's seal key and the [privacy] policy: 0, or -1 (logged; a
 * policy refusal is also answered with a Refusal). Sets coord_pk. */
static int check_train_task(wk_task *t, const Fedpeft__Task *task)
{
    uint8_t want[32];
    memset(t->coord_pk, 0, sizeof t->coord_pk);
    if (task->coordinator_pk.len != 32) {
        wk_log("ignored task %llu: no coordinator key to seal the update to",
               (unsigned long long)task->task_id);
        return -1;
    }
    if (!t->cfg->insecure && fp_pubkey_parse(t->cfg->coordinator_key, want) == 0 &&
        sodium_memcmp(want, task->coordinator_pk.data, 32) != 0) {
        wk_log("ignored task %llu: it asks to seal the update to a key that is not "
               "[security] coordinator_key", (unsigned long long)task->task_id);
        return -1;
    }
    memcpy(t->coord_pk, task->coordinator_pk.data, 32);
    char why[400];
    if (wk_policy_check_task(t->cfg, task, why, sizeof why) != 0) {
        wk_log("round %llu: refused task %llu: %s", (unsigned long long)task->round,
               (unsigned long long)task->task_id, why);
        send_refusal(t, task->task_id, task->round, why, NULL);
        return -1;
    }
    return 0;
}

static void on_task(wk_task *t, const Fedpeft__Task *task)
{
    size_t n = t->global->n_params, total;
    float *dst;
    t->have_update = 0;     /* a new task supersedes any update not pulled yet */
    t->have_held = 0;
    t->from_held = 0;
    t->receiving = 0;
    if (wk_folds_begin(&t->folds, task, wk_conn_run_id(t->conn),
                       n / (size_t)t->global->cfg.rank, n, t->global->params, &dst,
                       &total) != 0) {
        wk_log("ignored task %llu: %s", (unsigned long long)task->task_id, fp_error_get());
        return;
    }
    t->grad_offset = NULL;
    if (wk_scaffold_begin(&t->sc, task, wk_conn_run_id(t->conn), t->cfg->state_dir, t->cfg->id,
                          n, &dst, &total) != 0) {
        wk_log("ignored task %llu: %s", (unsigned long long)task->task_id, fp_error_get());
        return;
    }
    if (task->n_chunks != wire_n_chunks(total) || !task->params ||
        (task->kind != FEDPEFT__TASK__KIND__TRAIN && task->kind != FEDPEFT__TASK__KIND__EVAL)) {
        wk_log("ignored task %llu: %u chunks for %zu floats (expected %u), or no params",
               (unsigned long long)task->task_id, task->n_chunks, total, wire_n_chunks(total));
        return;
    }
    t->receiving = 1;
    take_task(t, task);
    t->has_dp = task->dp != NULL;
    if (task->dp)
        t->dpp = *task->dp;
    t->hold = task->hold;
    if (task->kind == FEDPEFT__TASK__KIND__TRAIN && check_train_task(t, task) != 0) {
        t->receiving = 0;
        return;
    }
    wire_asm_begin(&t->as, dst, total, task->n_chunks, task->task_id);
}

/* async: the task that uploads the update held for task->from_update, as a
 * member of this task's round (one buffer) and its secure aggregation. */
static int on_upload_task(wk_task *t, const Fedpeft__Task *task)
{
    if (!t->have_held || task->from_update != t->held_task) {
        char why[160];
        snprintf(why, sizeof why, "no update held for task %llu (this worker restarted, or "
                 "trained another task since)", (unsigned long long)task->from_update);
        wk_log("round %llu: refused task %llu: %s", (unsigned long long)task->round,
               (unsigned long long)task->task_id, why);
        send_refusal(t, task->task_id, task->round, why, NULL);
        return 0;
    }
    t->receiving = 0;
    t->have_update = 0;
    if (check_train_task(t, task) != 0)
        return 0;
    take_task(t, task);
    t->hold = 0;
    t->from_held = 1;
    t->has_dp = 0;      /* async runs without [dp] (the coordinator refuses the pair) */
    return t->has_secagg ? start_secagg(t) : finish_held(t);
}

/* Training's progress callback: heartbeats, and stops for a new Task,
 * SHUTDOWN, a re-registration or a signal. */
static int on_progress(void *ctx, const fp_progress *p)
{
    wk_task *t = ctx;
    t->loss_sum += p->loss;
    t->loss_n++;
    wk_progress(t->round, p);
    for (;;) {
        wire_msg *m = NULL;
        int rc = wk_conn_poll(t->conn, 0, t->round, 1, &m);
        if (rc == WK_SHUTDOWN || rc < 0) {
            t->abort_rc = rc;
            return 1;
        }
        if (wk_conn_generation(t->conn) != t->train_generation) {
            /* re-registered: the coordinator will send tasks again; one that came
             * with the re-registration is handled after this training stops */
            if (rc == WK_MSG && m->body_case == FEDPEFT__ENVELOPE__BODY_TASK)
                t->stash = m;
            else
                wire_msg_free(&m);
            return 1;
        }
        if (rc == 0)
            return 0;
        if (m->body_case == FEDPEFT__ENVELOPE__BODY_TASK) {
            t->stash = m;
            return 1;
        }
        wire_msg_free(&m);  /* chunks or pulls of older tasks */
    }
}

static void fill_finetune(const wk_task *t, fp_finetune_config *ft)
{
    const Fedpeft__TrainParams *p = &t->params;
    fp_finetune_config_default(ft);
    ft->steps = (int)p->local_steps;
    ft->batch = t->cfg->batch ? t->cfg->batch : (int)p->batch;
    ft->seq = (int)p->seq;
    ft->accum = 1;
    ft->shuffle = 1;
    ft->seed = p->seed ^ fp_fnv1a64(t->cfg->id) ^ (t->round * 0x9E3779B97F4A7C15ULL);
    ft->first_step = (int)((t->round ? t->round - 1 : 0) * p->local_steps);
    ft->optim.kind = p->optimizer == FP_OPT_SGD ? FP_OPT_SGD : FP_OPT_ADAMW;
    ft->optim.lr = p->lr;
    ft->optim.weight_decay = p->weight_decay;
    ft->optim.max_grad_norm = p->max_grad_norm;
    ft->optim.schedule = FP_SCHED_CONSTANT;
    ft->freeze_a = p->freeze_a;
    ft->freeze_b = p->freeze_b && !p->freeze_a;
    ft->grad_checkpoint = p->grad_checkpoint || t->cfg->grad_checkpoint;
    ft->prox_mu = p->prox_mu;
    ft->prox_anchor = t->global->params;
    ft->step_offset = t->grad_offset;
}

static int send_update_ready(wk_task *t, uint64_t n_tokens, float loss)
{
    Fedpeft__UpdateReady ur = FEDPEFT__UPDATE_READY__INIT;
    Fedpeft__Envelope env = FEDPEFT__ENVELOPE__INIT;
    ur.task_id = t->task_id;
    ur.round = t->round;
    ur.n_examples = t->data->train_examples ? t->data->train_examples
                                            : fp_data_rows(&t->data->train, (int)t->params.seq);
    ur.n_tokens = n_tokens;
    ur.train_loss = loss;
    ur.n_chunks = wire_n_chunks(t->n_up);
    ur.seal_pk = (ProtobufCBinaryData){32, t->seal_pk};
    ur.n_folds = t->folds.applied;
    env.body_case = FEDPEFT__ENVELOPE__BODY_UPDATE_READY;
    env.update_ready = &ur;
    return wk_conn_send(t->conn, &env);
}

static void dump_delta(const wk_task *t, const float *x, size_t n)
{
    const char *dir = hook("FEDPEFT_TEST_DUMP_DIR");
    if (!dir)
        return;
    char path[1400];
    snprintf(path, sizeof path, "%s/worker-%s-round-%llu.f32", dir, t->cfg->id,
             (unsigned long long)t->round);
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(x, sizeof *x, n, f);
        fclose(f);
    }
}

/* The trained delta -> what is uploaded: DP clipping (and the worker's noise
 * share), FedAvg weight (secagg), quantization and masks; and the round's
 * ephemeral seal key. 0, or -1 (logged) when there is nothing to send.
 * The noise share is added before the weight, so weight w scales the clipped
 * update and its noise alike: the sum's noise is sigma x (w C), its
 * sensitivity to this worker w C, whatever w the coordinator chose. */
static int prepare_update(wk_task *t)
{
    size_t n = t->n_up;
    float *x = t->delta;
    if (t->has_dp && fp_dp_clip_l2(x, n, t->dpp.clip_norm) < 0) {
        wk_log("round %llu: DP clipping failed: %s", (unsigned long long)t->round, fp_error_get());
        return -1;
    }
    if (t->has_dp && t->dpp.distributed && t->dpp.noise_multiplier > 0) {
        fp_dp_noise *g = fp_dp_noise_new(NULL);
        int rc = g ? fp_dp_add_noise_distributed(g, x, n, t->dpp.noise_multiplier,
                                                 t->dpp.clip_norm, t->dpp.n_noise) : -1;
        fp_dp_noise_destroy(&g);
        if (rc < 0) {
            wk_log("round %llu: DP noise failed: %s", (unsigned long long)t->round, fp_error_get());
            return -1;
        }
    }
    if (t->has_secagg)
        for (size_t i = 0; i < n; i++)
            x[i] = (float)((double)x[i] * t->sap.weight);
    dump_delta(t, x, n);
    if (t->has_secagg && (!t->sa || wk_sa_mask(t->sa, x, n, t->q) != 0)) {
        wk_log("round %llu: masking failed: %s", (unsigned long long)t->round,
               t->sa ? fp_error_get() : "no secure aggregation state");
        return -1;
    }
    for (size_t i = 0; t->has_secagg && evil("big") && i < n; i++)
        t->q[i] += i & 1 ? 0x80000010u : 0x7ffffff0u;  /* about -+512 in the sum */
    const char *drop = hook("FEDPEFT_TEST_DROP_AFTER");
    if (drop && strcmp(drop, "masking") == 0 && t->has_secagg) {
        wk_log("round %llu: FEDPEFT_TEST_DROP_AFTER=masking: exiting before sending the "
               "masked input", (unsigned long long)t->round);
        _exit(3);
    }
    uint8_t *sk = sodium_malloc(32);
    int rc = -1;
    if (sk) {
        fp_seal_ephemeral(t->seal_pk, sk);
        rc = fp_seal_key_worker(t->seal_key, sk, t->seal_pk, t->coord_pk,
                                wk_conn_run_id(t->conn), t->round);
        sodium_free(sk);
    }
    if (rc != 0)
        wk_log("round %llu: no seal key: %s", (unsigned long long)t->round, fp_error_get());
    return rc;
}

/* 0, or WK_SHUTDOWN / -1 when training stopped for that. */
static int run_train(wk_task *t)
{
    fp_finetune_config ft;
    fill_finetune(t, &ft);
    size_t n = t->global->n_params;
    memcpy(t->local->params, t->global->params, n * sizeof(float));
    t->loss_sum = 0;
    t->loss_n = 0;
    t->abort_rc = 0;
    t->train_generation = wk_conn_generation(t->conn);
    wk_log("round %llu: training %d steps of %d x %d (task %llu)", (unsigned long long)t->round,
           ft.steps, ft.batch, ft.seq, (unsigned long long)t->task_id);
    int rc = fp_finetune(t->model, t->local, &t->data->train, &ft, on_progress, t, NULL);
    if (rc < 0) {
        wk_log("round %llu: training failed: %s", (unsigned long long)t->round, fp_error_get());
        return 0;
    }
    if (rc == 1) {
        wk_log("round %llu: training abandoned after %d of %d steps", (unsigned long long)t->round,
               t->loss_n, ft.steps);
        return t->abort_rc;
    }
    if (t->grad_offset &&
        wk_scaffold_trained(&t->sc, t->global->params, t->local->params,
                            (double)ft.steps * (double)ft.optim.lr) != 0)
        wk_log("round %llu: scaffold: %s (the update is sent all the same)",
               (unsigned long long)t->round, fp_error_get());
    for (size_t i = 0; i < n; i++)
        t->local->params[i] -= t->global->params[i];
    int view = t->params.freeze_a ? FP_VIEW_B : t->params.freeze_b ? FP_VIEW_A : FP_VIEW_ALL;
    t->n_up = fp_ft_view_size(t->local, view);
    fp_ft_view_gather(t->local, view, t->local->params, t->delta);
    const char *poison = hook("FEDPEFT_TEST_POISON");
    if (poison) {       /* a Byzantine worker, for the robust-aggregation tests */
        float f = strtof(poison, NULL);
        for (size_t i = 0; i < t->n_up; i++)
            t->delta[i] *= f;
    }
    float loss = t->loss_n ? (float)(t->loss_sum / t->loss_n) : 0.0f;
    uint64_t n_tokens = (uint64_t)ft.steps * (uint64_t)ft.batch * (uint64_t)ft.seq;
    if (t->hold) {      /* async: kept until a buffer takes it (on_upload_task) */
        memset(t->seal_pk, 0, sizeof t->seal_pk);
        if (send_update_ready(t, n_tokens, loss) != 0) {
            wk_log("round %llu: sending UpdateReady failed: %s", (unsigned long long)t->round,
                   fp_error_get());
            return 0;
        }
        t->have_held = 1;
        t->held_task = t->task_id;
        t->held_tokens = n_tokens;
        t->held_loss = loss;
        wk_log("version %llu: trained, mean loss %.4f; update held for the next buffer (%zu "
               "floats)", (unsigned long long)t->round, (double)loss, t->n_up);
        return 0;
    }
    if (prepare_update(t) != 0)
        return 0;
    if (send_update_ready(t, n_tokens, loss) != 0) {
        wk_log("round %llu: sending UpdateReady failed: %s", (unsigned long long)t->round,
               fp_error_get());
        return 0;
    }
    t->have_update = 1;
    t->update_task = t->task_id;
    wk_log("round %llu: trained, mean loss %.4f; update ready (%zu floats)",
           (unsigned long long)t->round, (double)loss, t->n_up);
    return 0;
}

/* async: the held update, weighted and masked for this task's buffer, then
 * UpdateReady as after training. 0 (failures are logged). */
static int finish_held(wk_task *t)
{
    t->have_held = 0;   /* weighted and masked in place: used once */
    t->from_held = 0;
    if (prepare_update(t) != 0)
        return 0;
    if (send_update_ready(t, t->held_tokens, t->held_loss) != 0) {
        wk_log("round %llu: sending UpdateReady failed: %s", (unsigned long long)t->round,
               fp_error_get());
        return 0;
    }
    t->have_update = 1;
    t->update_task = t->task_id;
    wk_log("round %llu: held update of task %llu ready for the buffer (%zu floats, weight "
           "%.9g)", (unsigned long long)t->round, (unsigned long long)t->held_task, t->n_up,
           t->has_secagg ? t->sap.weight : 1.0);
    return 0;
}

/* Heartbeats during the evaluation: the coordinator marks a worker silent for
 * 3 heartbeats dead (docs/protocol.md, Liveness), and a slow evaluation of a
 * large validation split takes longer than that. */
static void eval_tick(void *ctx)
{
    wk_task *t = ctx;
    wk_conn_heartbeat(t->conn, t->round, 1);
}

static void run_eval(wk_task *t)
{
    int T = (int)t->params.seq;
    int B = t->cfg->batch ? t->cfg->batch : (int)(t->params.batch ? t->params.batch : 1);
    double loss = 0.0;
    size_t ntok = 0;
    if (T < 1 || fp_data_rows(&t->data->valid, T) == 0) {
        wk_log("round %llu: the validation split (%zu tokens) is shorter than one row of %d + 1: "
               "reporting 0 tokens", (unsigned long long)t->round, t->data->valid.n, T);
    } else if (fp_evaluate_tick(t->model, t->global, &t->data->valid, T, B, &loss, &ntok,
                                eval_tick, t) != 0) {
        wk_log("round %llu: evaluation failed: %s", (unsigned long long)t->round, fp_error_get());
        return;
    }
    Fedpeft__EvalResult er = FEDPEFT__EVAL_RESULT__INIT;
    Fedpeft__Envelope env = FEDPEFT__ENVELOPE__INIT;
    er.task_id = t->task_id;
    er.round = t->round;
    er.loss = ntok ? loss : 0.0;
    er.n_tokens = ntok;
    er.n_folds = t->folds.applied;
    env.body_case = FEDPEFT__ENVELOPE__BODY_EVAL_RESULT;
    env.eval_result = &er;
    if (wk_conn_send(t->conn, &env) != 0)
        wk_log("round %llu: sending EvalResult failed: %s", (unsigned long long)t->round,
               fp_error_get());
    else
        wk_log("round %llu: validation loss %.4f over %zu tokens", (unsigned long long)t->round,
               loss, ntok);
}

/* Secure aggregation phase 0: fresh keys, AdvertiseKeys. Training waits for
 * the routed shares (on_share_keys). */
static int start_secagg(wk_task *t)
{
    wk_sa_destroy(&t->sa);
    wk_sa_free_shares(&t->sent_sk);
    wk_sa_ident ident;
    wk_conn_identity(t->conn, &ident.sign_pk, &ident.sign_sk, &ident.roster);
    if (!(t->sa = wk_sa_new(t->cfg->id, wk_conn_run_id(t->conn), t->round, t->task_id, &t->sap,
                            &ident))) {
        wk_log("round %llu: %s", (unsigned long long)t->round, fp_error_get());
        return 0;
    }
    wk_conn_set_secagg_task(t->conn, t->task_id);
    Fedpeft__AdvertiseKeys ak = FEDPEFT__ADVERTISE_KEYS__INIT;
    wk_sa_advertise(t->sa, &ak);
    static const uint8_t zero[32];
    uint8_t forged[64];
    if (evil("zerokeys"))
        ak.mask_pk = (ProtobufCBinaryData){32, (uint8_t *)zero};
    if (evil("badsig")) {       /* keys that its signing key did not sign */
        memcpy(forged, ak.signature.data, 64);
        forged[7] ^= 0x10;
        ak.signature.data = forged;
    }
    wire_msg env = FEDPEFT__ENVELOPE__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_ADVERTISE_KEYS;
    env.advertise_keys = &ak;
    if (wk_conn_send(t->conn, &env) != 0)
        wk_log("round %llu: sending AdvertiseKeys failed: %s", (unsigned long long)t->round,
               fp_error_get());
    else
        wk_log("round %llu: secure aggregation (t = %u): keys advertised",
               (unsigned long long)t->round, t->sap.threshold);
    return 0;
}

/* The coordinator sends PeerKeys again when this worker reconnected before its
 * shares arrived (they may be lost with the old connection): the same sealed
 * shares again, nothing new. */
static int resend_shares(wk_task *t, const Fedpeft__PeerKeys *pk)
{
    if (!t->sa || !t->sent_sk || pk->task_id != t->task_id || pk->round != t->round)
        return 0;
    wire_msg env = FEDPEFT__ENVELOPE__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_SHARE_KEYS;
    env.share_keys = t->sent_sk;
    int rc = wk_conn_send(t->conn, &env);
    wk_log("round %llu: PeerKeys again (after a reconnect): %s", (unsigned long long)t->round,
           rc == 0 ? "the same sealed shares sent again" : fp_error_get());
    return 1;
}

static void on_peer_keys(wk_task *t, const Fedpeft__PeerKeys *pk)
{
    Fedpeft__ShareKeys *sk = NULL;
    if (resend_shares(t, pk))
        return;
    size_t n_members;
    unsigned degree;
    char why[300];
    if (t->sa && wk_sa_on_peer_keys(t->sa, pk, &sk) != 0)
        snprintf(why, sizeof why, "PeerKeys refused: %s", fp_error_get());
    else if (t->sa && (wk_sa_graph(t->sa, &n_members, &degree),
                       wk_policy_check_graph(t->cfg, n_members, degree, t->sap.threshold, why,
                                             sizeof why) != 0))
        wk_sa_free_shares(&sk);     /* the graph over U1 breaks the policy: nothing sent */
    if (!t->sa || !sk) {
        wk_log("round %llu: %s", (unsigned long long)t->round,
               t->sa ? why : "PeerKeys ignored: no secure aggregation in progress");
        if (t->sa)
            send_refusal(t, t->task_id, t->round, why, NULL);
        wk_sa_destroy(&t->sa);
        return;
    }
    if (evil("rehello")) {      /* a new session mid-round: must stay a member */
        wk_log("round %llu: FEDPEFT_TEST_SECAGG=rehello: saying Hello again",
               (unsigned long long)t->round);
        if (wk_conn_register(t->conn) != 0)
            wk_log("re-Hello failed: %s", fp_error_get());
    }
    if (evil("badseal") && sk->n_shares > 0)
        sk->shares[0]->sealed.data[30] ^= 0x40;
    wire_msg env = FEDPEFT__ENVELOPE__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_SHARE_KEYS;
    env.share_keys = sk;
    if (wk_conn_send(t->conn, &env) != 0)
        wk_log("round %llu: sending shares failed: %s", (unsigned long long)t->round,
               fp_error_get());
    else
        wk_log("round %llu: shares sealed for %zu peers (%u neighbours of %zu members)",
               (unsigned long long)t->round, sk->n_shares, degree, n_members);
    wk_sa_free_shares(&t->sent_sk);
    t->sent_sk = sk;            /* kept for a repeated PeerKeys (resend_shares) */
}

static int on_share_keys(wk_task *t, const Fedpeft__ShareKeys *sk)
{
    if (t->sa && wk_sa_has_shares(t->sa) && sk->task_id == t->task_id) {
        wk_log("round %llu: routed shares again (after a reconnect): already have them",
               (unsigned long long)t->round);
        return 0;
    }
    if (!t->sa || wk_sa_on_shares(t->sa, sk) != 0) {
        wk_log("round %llu: refused the routed shares: %s", (unsigned long long)t->round,
               t->sa ? fp_error_get() : "no secure aggregation in progress");
        wk_sa_destroy(&t->sa);
        return 0;
    }
    size_t it = 0;
    for (const char *bad; (bad = wk_sa_bad_sender(t->sa, &it));) {
        char why[200];
        snprintf(why, sizeof why, "the share sealed by %s for this worker does not open", bad);
        wk_log("round %llu: %s: reported; masking goes on", (unsigned long long)t->round, why);
        send_refusal(t, t->task_id, t->round, why, bad);
    }
    return t->from_held ? finish_held(t) : run_train(t);
}

/* The consistency round: sign the survivor set (once per round). */
static void on_consistency(wk_task *t, const Fedpeft__ConsistencyCheck *c)
{
    uint8_t sig[64];
    size_t need = wk_policy_min_survivors(t->cfg, t->sap.threshold);
    if (!t->sa || wk_sa_on_consistency(t->sa, c, need, sig) != 0) {
        const char *why = t->sa ? fp_error_get() : "no secure aggregation in progress";
        wk_log("round %llu: refused to sign the survivor set: %s", (unsigned long long)t->round,
               why);
        if (t->sa)
            send_refusal(t, c->task_id, c->round, why, NULL);
        return;
    }
    Fedpeft__ConsistencySig cs = FEDPEFT__CONSISTENCY_SIG__INIT;
    cs.task_id = c->task_id;
    cs.round = c->round;
    cs.signature = (ProtobufCBinaryData){64, sig};
    wire_msg env = FEDPEFT__ENVELOPE__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_CONSISTENCY_SIG;
    env.consistency_sig = &cs;
    if (wk_conn_send(t->conn, &env) != 0)
        wk_log("round %llu: sending the consistency signature failed: %s",
               (unsigned long long)t->round, fp_error_get());
    else
        wk_log("round %llu: signed the survivor set (%zu survivors)",
               (unsigned long long)t->round, c->n_survivors);
}

static void on_unmask(wk_task *t, const Fedpeft__UnmaskRequest *u)
{
    Fedpeft__UnmaskResponse *resp = NULL;
    size_t need = wk_policy_min_survivors(t->cfg, t->sap.threshold);
    if (!t->sa || wk_sa_on_unmask(t->sa, u, need, &resp) != 0) {
        const char *why = t->sa ? fp_error_get() : "no secure aggregation in progress";
        wk_log("round %llu: refused the UnmaskRequest, revealed nothing: %s",
               (unsigned long long)t->round, why);
        if (t->sa)
            send_refusal(t, u->task_id, u->round, why, NULL);
        return;
    }
    if (evil("badshare") && resp->n_self_shares > 1)
        resp->self_shares[1]->share.data[0] ^= 0x5a;    /* a peer's seed share */
    wire_msg env = FEDPEFT__ENVELOPE__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_UNMASK_RESPONSE;
    env.unmask_response = resp;
    if (wk_conn_send(t->conn, &env) != 0)
        wk_log("round %llu: sending the unmask shares failed: %s", (unsigned long long)t->round,
               fp_error_get());
    else
        wk_log("round %llu: revealed %zu self-mask and %zu mask-key shares",
               (unsigned long long)t->round, resp->n_self_shares, resp->n_key_shares);
    wk_sa_free_response(&resp);
    wk_sa_wipe(t->sa);     /* the round's secrets; sa stays to refuse a second request */
}

/* flora: the Task's folds into the base weights, the adapter out of the
 * transfer. -1 (fatal) when the base may be partly folded. */
static int apply_folds(wk_task *t)
{
    uint32_t before = t->folds.applied;
    if (wk_folds_apply(&t->folds, t->model, t->cfg->model_path, &t->global->cfg,
                       wk_conn_run_id(t->conn), t->global->params, t->global->n_params) != 0)
        return fp_error_prefix("round %llu: applying the folds: ", (unsigned long long)t->round);
    wk_conn_set_folds(t->conn, t->folds.applied, t->folds.run_id);
    if (t->folds.applied != before || t->folds.reset)
        wk_log("round %llu: base weights hold %u folds%s", (unsigned long long)t->round,
               t->folds.applied, t->folds.reset ? " (restored first)" : "");
    return 0;
}

/* A chunk of the adapter being received; runs the task when it is whole. */
static int on_chunk(wk_task *t, const Fedpeft__TensorChunk *c)
{
    if (!t->receiving || c->task_id != t->task_id) {
        wk_log("ignored a chunk of task %llu (not being received)",
               (unsigned long long)c->task_id);
        return 0;
    }
    if (wire_asm_add(&t->as, c) != 0) {
        wk_log("task %llu: bad adapter chunk, task dropped: %s", (unsigned long long)t->task_id,
               fp_error_get());
        t->receiving = 0;
        return 0;
    }
    if (!wire_asm_complete(&t->as))
        return 0;
    t->receiving = 0;
    if (apply_folds(t) != 0)
        return -1;
    t->grad_offset = wk_scaffold_received(&t->sc, t->round, t->global->params);
    if (t->kind == FEDPEFT__TASK__KIND__EVAL) {
        run_eval(t);
        return 0;
    }
    if (t->has_secagg)
        return start_secagg(t);
    return run_train(t);
}

static int send_chunk(wk_task *t, uint32_t index, uint32_t n_chunks, size_t off,
                      const uint8_t *box, size_t len)
{
    Fedpeft__SealedChunk sc = FEDPEFT__SEALED_CHUNK__INIT;
    sc.task_id = t->update_task;
    sc.round = t->round;
    sc.index = index;
    sc.n_chunks = n_chunks;
    sc.offset = off;
    sc.data = (ProtobufCBinaryData){len, (uint8_t *)box};
    wire_msg env = FEDPEFT__ENVELOPE__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_SEALED_CHUNK;
    env.sealed_chunk = &sc;
    return wk_conn_send(t->conn, &env);
}

/* The update as SealedChunks (FEDPEFT_TEST_TAMPER=flip|replay|truncate|splice
 * misbehaves on purpose, for the tests). */
static int send_sealed(wk_task *t)
{
    size_t n = t->n_up;
    uint32_t nc = wire_n_chunks(n);
    const uint8_t *src = t->has_secagg ? (const uint8_t *)t->q : (const uint8_t *)t->delta;
    uint8_t *box = malloc(WIRE_CHUNK_FLOATS * 4 + FP_SEAL_OVERHEAD);
    const char *tamper = hook("FEDPEFT_TEST_TAMPER");
    int rc = 0;
    if (!box)
        return fp_error_set("out of memory");
    for (uint32_t i = 0; i < nc && rc == 0; i++) {
        size_t off = (size_t)i * WIRE_CHUNK_FLOATS;
        size_t cnt = n - off < WIRE_CHUNK_FLOATS ? n - off : WIRE_CHUNK_FLOATS;
        size_t len = cnt * 4 + FP_SEAL_OVERHEAD;
        fp_seal_ad ad = {wk_conn_run_id(t->conn), t->cfg->id, t->round, t->update_task, i, nc};
        if (fp_seal(box, src + off * 4, cnt * 4, &ad, t->seal_key) != 0) {
            rc = -1;
            break;
        }
        const uint8_t *out = box;
        if (i == 0 && tamper && strcmp(tamper, "flip") == 0) {
            box[FP_SEAL_NONCE_BYTES + 3] ^= 0x01;
        } else if (i == 0 && tamper && strcmp(tamper, "truncate") == 0) {
            len -= 7;
        } else if (i == 0 && tamper && strcmp(tamper, "splice") == 0 && t->last_sealed &&
                   t->last_sealed_len == len) {
            out = t->last_sealed;       /* last round's chunk 0, presented as this round's */
        }
        if (i == 0 && tamper && strcmp(tamper, "splice") == 0 && out == box) {
            uint8_t *keep = realloc(t->last_sealed, len);
            if (keep) {
                memcpy(keep, box, len);
                t->last_sealed = keep;
                t->last_sealed_len = len;
            }
        }
        rc = send_chunk(t, i, nc, off, out, len);
        if (rc == 0 && i == nc - 1 && tamper && strcmp(tamper, "replay") == 0)
            rc = send_chunk(t, i, nc, off, box, len);   /* the last chunk again */
    }
    free(box);
    return rc;
}

static void on_pull(wk_task *t, const Fedpeft__Pull *p)
{
    if (!t->have_update || p->task_id != t->update_task) {
        wk_log("ignored a Pull for task %llu (no such update here)", (unsigned long long)p->task_id);
        return;
    }
    if (send_sealed(t) != 0)
        wk_log("round %llu: uploading the update failed: %s", (unsigned long long)t->round,
               fp_error_get());
    else
        wk_log("round %llu: update sent (sealed%s)", (unsigned long long)t->round,
               t->has_secagg ? ", masked" : "");
}

/* Handles one message (takes it). 0, WK_SHUTDOWN or -1. */
static int dispatch(wk_task *t, wire_msg *m)
{
    int rc = 0;
    if (wk_conn_generation(t->conn) != t->spec_generation) {
        t->spec_generation = wk_conn_generation(t->conn);
        t->receiving = 0;
        if (!t->sa)     /* a secure round survives a reconnect: its update may be pulled */
            t->have_update = 0;
        t->have_held = 0;   /* the coordinator hands out a new task after the Hello */
        if (shape_adapters(t) != 0) {
            wire_msg_free(&m);
            return -1;
        }
    }
    switch (m->body_case) {
    case FEDPEFT__ENVELOPE__BODY_TASK:
        if (m->task->from_update)
            rc = on_upload_task(t, m->task);
        else
            on_task(t, m->task);
        break;
    case FEDPEFT__ENVELOPE__BODY_CHUNK: rc = on_chunk(t, m->chunk); break;
    case FEDPEFT__ENVELOPE__BODY_PULL: on_pull(t, m->pull); break;
    case FEDPEFT__ENVELOPE__BODY_PEER_KEYS: on_peer_keys(t, m->peer_keys); break;
    case FEDPEFT__ENVELOPE__BODY_SHARE_KEYS: rc = on_share_keys(t, m->share_keys); break;
    case FEDPEFT__ENVELOPE__BODY_CONSISTENCY_CHECK: on_consistency(t, m->consistency_check); break;
    case FEDPEFT__ENVELOPE__BODY_UNMASK_REQUEST: on_unmask(t, m->unmask_request); break;
    default: break;
    }
    wire_msg_free(&m);
    return rc;
}

int wk_serve(wk_conn *conn, const wk_config *cfg, fp_model *model, const fp_dataset *data)
{
    wk_task t = {.conn = conn, .cfg = cfg, .model = model, .data = data};
    int rc;
    t.spec_generation = wk_conn_generation(conn);
    if (!(t.seal_key = sodium_malloc(FP_SEAL_KEY_BYTES))) {
        rc = fp_error_set("out of memory");
        goto out;
    }
    if ((rc = shape_adapters(&t)) != 0)
        goto out;
    for (;;) {
        wire_msg *m = t.stash;
        t.stash = NULL;
        if (!m) {
            rc = wk_conn_poll(conn, 1000, t.round, 0, &m);
            if (rc != WK_MSG)
                goto check;
        }
        rc = dispatch(&t, m);
check:
        if (rc == WK_SHUTDOWN) {
            rc = 0;
            break;
        }
        if (rc < 0)
            break;
    }
out:
    wire_msg_free(&t.stash);
    free_update(&t);
    fp_lora_free(&t.global);
    free(t.q);
    free(t.last_sealed);
    wk_sa_destroy(&t.sa);
    wk_sa_free_shares(&t.sent_sk);
    wk_folds_free(&t.folds);
    wk_scaffold_free(&t.sc);
    if (t.seal_key)
        sodium_free(t.seal_key);
    return rc;
}
