/* rounds_msgs.c - what workers send during a round: UpdateReady, the chunks of
 * a pulled update (staged and validated whole before the strategy sees it),
 * and EvalResult. Every refusal is logged, counted by reason and answered. */
#include <math.h>
#include <string.h>

#include "clog.h"
#include "rounds_internal.h"

#define STALE FEDPEFT__REJECT__CODE__STALE
#define BAD FEDPEFT__REJECT__CODE__BAD_MESSAGE

/* Is task_id one this incarnation handed out for `kind`, and for which round? */
static int known_task(const rounds *r, uint64_t task_id, int kind, uint64_t *round)
{
    uint64_t d = task_id - r->nonce;
    if ((d & 1) != (uint64_t)kind || d / 2 > r->round)
        return 0;
    *round = d / 2;
    return 1;
}

/* A task id that is not the current one: late (a finished task of ours) or
 * wrong round (anything else, e.g. from before a restart). */
static void reject_stale(rounds *r, int w, uint64_t task_id, uint64_t claimed_round, int kind,
                         const char *what)
{
    uint64_t tr;
    if (known_task(r, task_id, kind, &tr))
        server_reject(r->srv, w, NULL, REJ_LATE, STALE,
                      "late %s: round %llu's %s task is already finished", what,
                      (unsigned long long)tr, kind == TASK_TRAIN ? "training" : "evaluation");
    else
        server_reject(r->srv, w, NULL, REJ_WRONG_ROUND, STALE,
                      "%s for unknown task %llu (round %llu); the current round is %llu", what,
                      (unsigned long long)task_id, (unsigned long long)claimed_round,
                      (unsigned long long)r->round);
}

static int current(const rounds *r, round_phase ph, uint64_t task_id, int kind)
{
    return r->ph == ph && task_id == rounds_task_id(r, r->round, kind);
}

/* ---- training updates ----------------------------------------------------------- */

static void on_update_ready(rounds *r, int w, const Fedpeft__UpdateReady *u)
{
    const char *id = server_worker(r->srv, w)->id;
    if (!current(r, PH_TRAIN, u->task_id, TASK_TRAIN)) {
        reject_stale(r, w, u->task_id, u->round, TASK_TRAIN, "UpdateReady");
        return;
    }
    if (u->round != r->round || r->status[w] == ST_NONE) {
        server_reject(r->srv, w, NULL, REJ_WRONG_ROUND, STALE,
                      "UpdateReady for round %llu: %s was not sampled for round %llu",
                      (unsigned long long)u->round, id, (unsigned long long)r->round);
        return;
    }
    if (r->status[w] != ST_PENDING) {
        server_reject(r->srv, w, NULL, REJ_DUPLICATE, STALE,
                      "duplicate UpdateReady for task %llu (round %llu)",
                      (unsigned long long)u->task_id, (unsigned long long)r->round);
        return;
    }
    uint32_t want = wire_n_chunks(r->global->n_params);
    if (u->n_chunks != want) {
        r->status[w] = ST_FAILED;
        server_reject(r->srv, w, NULL, REJ_SHAPE, BAD,
                      "update of %u chunks, the adapter (%zu floats) travels in %u",
                      u->n_chunks, r->global->n_params, want);
        return;
    }
    if (!isfinite(u->train_loss)) {
        r->status[w] = ST_FAILED;
        server_reject(r->srv, w, NULL, REJ_NONFINITE, BAD, "train_loss is %g", u->train_loss);
        return;
    }
    if (u->n_examples == 0) {
        r->status[w] = ST_FAILED;
        server_reject(r->srv, w, NULL, REJ_INVALID, BAD,
                      "update with n_examples = 0 has no weight");
        return;
    }
    r->status[w] = ST_READY;
    r->examples[w] = u->n_examples;
    r->loss[w] = u->train_loss;
    r->queue[(r->q_head + r->q_len++) % SERVER_MAX_WORKERS] = w;
    clog_info("round %llu: update ready from %s (%llu examples, train loss %.4f)",
              (unsigned long long)r->round, id, (unsigned long long)u->n_examples,
              u->train_loss);
    rounds_try_pull(r, clog_now_ms());
}

void rounds_drop_staging(rounds *r)
{
    if (r->staging_worker >= 0 && r->status[r->staging_worker] == ST_STAGING)
        r->status[r->staging_worker] = ST_FAILED;
    r->staging_worker = -1;
}

void rounds_try_pull(rounds *r, int64_t now)
{
    while (r->ph == PH_TRAIN && r->staging_worker < 0 && r->q_len > 0) {
        int w = r->queue[r->q_head];
        r->q_head = (r->q_head + 1) % SERVER_MAX_WORKERS;
        r->q_len--;
        if (r->status[w] != ST_READY)
            continue; /* it said Hello again meanwhile: its task was resent */
        uint64_t tid = rounds_task_id(r, r->round, TASK_TRAIN);
        Fedpeft__Pull p = FEDPEFT__PULL__INIT;
        p.task_id = tid;
        wire_msg env = FEDPEFT__ENVELOPE__INIT;
        env.body_case = FEDPEFT__ENVELOPE__BODY_PULL;
        env.pull = &p;
        wire_asm_begin(&r->as, r->staging, r->global->n_params,
                       wire_n_chunks(r->global->n_params), tid);
        r->status[w] = ST_STAGING;
        r->staging_worker = w;
        r->staging_last_ms = now;
        (void)server_send(r->srv, w, &env); /* failure shows as a stall */
    }
}

void rounds_check_stall(rounds *r, int64_t now)
{
    int w = r->staging_worker;
    int64_t limit = 3 * (int64_t)r->cfg->heartbeat_ms;
    if (w < 0 || now - r->staging_last_ms <= limit)
        return;
    server_reject(r->srv, w, NULL, REJ_STALLED, STALE,
                  "upload for round %llu stalled: no chunk for %lld ms; dropped",
                  (unsigned long long)r->round, (long long)(now - r->staging_last_ms));
    rounds_drop_staging(r);
    rounds_try_pull(r, now);
}

static void accept_update(rounds *r, int w)
{
    const char *id = server_worker(r->srv, w)->id;
    if (strategy_add(r->strat, r->staging, (double)r->examples[w]) < 0) {
        server_reject(r->srv, w, NULL, REJ_INVALID, BAD, "%s", fp_error_get());
        rounds_drop_staging(r);
        return;
    }
    r->status[w] = ST_DONE;
    r->staging_worker = -1;
    r->n_reported++;
    r->weight_sum += (double)r->examples[w];
    r->loss_wsum += (double)r->examples[w] * r->loss[w];
    clog_info("round %llu: update from %s accepted (%u of %u)", (unsigned long long)r->round,
              id, r->n_reported, r->n_targets);
}

static int all_finite(const float *x, size_t n, size_t *bad)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) {
            *bad = i;
            return 0;
        }
    return 1;
}

static void on_chunk(rounds *r, int w, const Fedpeft__TensorChunk *c)
{
    int cur = current(r, PH_TRAIN, c->task_id, TASK_TRAIN);
    if (cur && r->status[w] == ST_FAILED)
        return; /* the tail of an upload already refused: counted once */
    if (!cur) {
        reject_stale(r, w, c->task_id, r->round, TASK_TRAIN, "chunk");
        return;
    }
    if (r->staging_worker != w) {
        server_reject(r->srv, w, NULL, REJ_INVALID, STALE,
                      "chunk %u for round %llu before the coordinator sent Pull", c->index,
                      (unsigned long long)r->round);
        return;
    }
    size_t bad;
    if (!all_finite(c->data, c->n_data, &bad)) {
        server_reject(r->srv, w, NULL, REJ_NONFINITE, BAD,
                      "update chunk %u holds %g at offset %llu; the update is refused",
                      c->index, c->data[bad], (unsigned long long)(c->offset + bad));
        rounds_drop_staging(r);
        rounds_try_pull(r, clog_now_ms());
        return;
    }
    if (wire_asm_add(&r->as, c) < 0) {
        server_reject(r->srv, w, NULL, REJ_SHAPE, BAD, "update refused: %s", fp_error_get());
        rounds_drop_staging(r);
        rounds_try_pull(r, clog_now_ms());
        return;
    }
    r->staging_last_ms = clog_now_ms();
    if (wire_asm_complete(&r->as)) {
        accept_update(r, w);
        rounds_try_pull(r, r->staging_last_ms);
    }
}

void rounds_on_bad_frame(void *ctx, int w)
{
    rounds *r = ctx;
    if (r->ph == PH_TRAIN && r->staging_worker == w) {
        clog_info("round %llu: upload from %s dropped after a bad frame",
                  (unsigned long long)r->round, server_worker(r->srv, w)->id);
        rounds_drop_staging(r);
        rounds_try_pull(r, clog_now_ms());
    }
}

/* ---- evaluation ------------------------------------------------------------------- */

static void on_eval_result(rounds *r, int w, const Fedpeft__EvalResult *e)
{
    const char *id = server_worker(r->srv, w)->id;
    if (!current(r, PH_EVAL, e->task_id, TASK_EVAL)) {
        reject_stale(r, w, e->task_id, e->round, TASK_EVAL, "EvalResult");
        return;
    }
    if (e->round != r->round || r->status[w] == ST_NONE) {
        server_reject(r->srv, w, NULL, REJ_WRONG_ROUND, STALE,
                      "EvalResult for round %llu: %s was not asked to evaluate round %llu",
                      (unsigned long long)e->round, id, (unsigned long long)r->round);
        return;
    }
    if (r->status[w] != ST_PENDING) {
        server_reject(r->srv, w, NULL, REJ_DUPLICATE, STALE, "duplicate EvalResult for round %llu",
                      (unsigned long long)r->round);
        return;
    }
    if (!isfinite(e->loss) || e->n_tokens == 0) {
        r->status[w] = ST_FAILED;
        server_reject(r->srv, w, NULL, isfinite(e->loss) ? REJ_INVALID : REJ_NONFINITE, BAD,
                      "EvalResult with loss %g over %llu tokens", e->loss,
                      (unsigned long long)e->n_tokens);
        return;
    }
    r->status[w] = ST_DONE;
    r->n_reported++;
    r->val_sum += e->loss * (double)e->n_tokens;
    r->val_tokens += e->n_tokens;
    clog_info("round %llu: eval from %s: loss %.4f over %llu tokens (%u of %u)",
              (unsigned long long)r->round, id, e->loss, (unsigned long long)e->n_tokens,
              r->n_reported, r->n_targets);
}

void rounds_on_task_msg(void *ctx, int w, const wire_msg *msg)
{
    rounds *r = ctx;
    switch (msg->body_case) {
    case FEDPEFT__ENVELOPE__BODY_UPDATE_READY: on_update_ready(r, w, msg->update_ready); break;
    case FEDPEFT__ENVELOPE__BODY_CHUNK: on_chunk(r, w, msg->chunk); break;
    case FEDPEFT__ENVELOPE__BODY_EVAL_RESULT: on_eval_result(r, w, msg->eval_result); break;
    default: break;
    }
}
