/* rounds_msgs.c - what workers send during a round: UpdateReady, the chunks of
 * a pulled update (staged and validated whole before the strategy sees it),
 * and EvalResult. Every refusal is logged, counted by reason and answered. */
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>

#include "clog.h"
#include "rounds_async.h"
#include "rounds_msgs.h"
#include "rounds_persist.h"
#include "rounds_state.h"
#include "seal.h"

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

/* flora: a result computed on a base without every fold of the run is of no
 * use (docs/protocol.md, "Folds"). 1 when n_folds is the run's count. */
static int folds_match(rounds *r, int w, uint32_t n_folds, const char *what)
{
    uint32_t F = (uint32_t)strategy_flora_n_folds(r->strat);
    if (n_folds == F) {
        r->fold_have[w] = F;
        r->fold_reset[w] = 0;
        return 1;
    }
    r->status[w] = ST_FAILED;
    server_reject(r->srv, w, NULL, REJ_INVALID, BAD,
                  "%s computed on a base with %u folds; round %llu's base has %u", what,
                  n_folds, (unsigned long long)r->round, F);
    return 0;
}

static void on_update_ready(rounds *r, int w, const Fedpeft__UpdateReady *u)
{
    const char *id = server_worker(r->srv, w)->id;
    if (rounds_async_is_hold(r, u->task_id)) {
        rounds_async_on_held(r, w, u);
        return;
    }
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
    if (!folds_match(r, w, u->n_folds, "UpdateReady"))
        return;
    uint32_t want = wire_n_chunks(rounds_upload_n(r, w));
    if (u->n_chunks != want) {
        r->status[w] = ST_FAILED;
        server_reject(r->srv, w, NULL, REJ_SHAPE, BAD,
                      "update of %u chunks, the update (%zu floats) travels in %u",
                      u->n_chunks, rounds_upload_n(r, w), want);
        return;
    }
    if (!isfinite(u->train_loss)) {
        r->status[w] = ST_FAILED;
        server_reject(r->srv, w, NULL, REJ_NONFINITE, BAD, "train_loss is %g", u->train_loss);
        return;
    }
    if (r->sa && (sa_phase(r->sa) != SA_UPLOAD || !sa_in_u2(r->sa, w))) {
        server_reject(r->srv, w, NULL, REJ_INVALID, STALE,
                      "UpdateReady from %s outside the secure aggregation's upload phase", id);
        return;
    }
    if (u->seal_pk.len != 32 && (r->sa || !r->cfg->insecure)) {
        r->status[w] = ST_FAILED;
        server_reject(r->srv, w, NULL, REJ_UNSEALED, BAD,
                      "UpdateReady without a 32-byte seal_pk: updates must be sealed%s",
                      r->sa ? " (secure aggregation)" : "");
        return;
    }
    if (u->n_examples == 0) {
        r->status[w] = ST_FAILED;
        server_reject(r->srv, w, NULL, REJ_INVALID, BAD,
                      "update with n_examples = 0 has no weight");
        return;
    }
    if (u->seal_pk.len == 32)
        memcpy(r->seal_pk[w], u->seal_pk.data, 32);
    else
        memset(r->seal_pk[w], 0, 32);
    r->status[w] = ST_READY;
    r->examples[w] = rounds_weight(r, w, u->n_examples);
    r->loss[w] = u->train_loss;
    r->queue[(r->q_head + r->q_len++) % SERVER_MAX_WORKERS] = w;
    clog_info("round %llu: update ready from %s (%llu examples, weight %g, train loss %.4f)",
              (unsigned long long)r->round, id, (unsigned long long)u->n_examples,
              r->examples[w], u->train_loss);
    rounds_try_pull(r, clog_now_ms());
}

static int has_seal_pk(const rounds *r, int w)
{
    static const uint8_t zero[32];
    return sodium_memcmp(r->seal_pk[w], zero, 32) != 0;
}

void rounds_drop_upload(rounds *r, int w)
{
    upload_slot *s = uploads_of(&r->up, w);
    if (s)
        uploads_release(&r->up, s);
    if (w >= 0 && r->status[w] == ST_STAGING)
        r->status[w] = ST_FAILED;
}

/* The next worker to pull: the first queued one with the fewest stalled
 * uploads so far, so a peer that stalled before waits behind the others and
 * cannot delay them round after round. */
static int next_queued(rounds *r)
{
    int best = -1;
    for (int i = 0; i < r->q_len; i++) {
        int w = r->queue[(r->q_head + i) % SERVER_MAX_WORKERS];
        if (r->status[w] == ST_READY && (best < 0 || r->stalls[w] < r->stalls[r->queue[
                                                        (r->q_head + best) % SERVER_MAX_WORKERS]]))
            best = i;
    }
    if (best < 0) {
        r->q_len = 0;   /* only workers that said Hello again meanwhile (tasks resent) */
        return -1;
    }
    int w = r->queue[(r->q_head + best) % SERVER_MAX_WORKERS];
    for (int i = best; i > 0; i--)    /* close the gap, keeping the order */
        r->queue[(r->q_head + i) % SERVER_MAX_WORKERS] =
            r->queue[(r->q_head + i - 1) % SERVER_MAX_WORKERS];
    r->q_head = (r->q_head + 1) % SERVER_MAX_WORKERS;
    r->q_len--;
    return w;
}

/* Sends Pull to w and makes slot s its upload; -1 (w refused) on a bad seal key. */
static int start_upload(rounds *r, upload_slot *s, int w, int64_t now)
{
    uint64_t tid = rounds_task_id(r, r->round, TASK_TRAIN);
    size_t nw = rounds_upload_n(r, w);
    wire_asm_begin(&s->as, s->buf, nw, wire_n_chunks(nw), tid);
    s->sealed = has_seal_pk(r, w);
    s->next = 0;
    if (s->sealed &&
        (fp_seal_key_coordinator(s->key, r->seal_kp->secret_key, r->seal_kp->public_key,
                                 r->seal_pk[w], r->run_id, r->round) < 0 ||
         !(s->guard = fp_seal_replay_new(tid, wire_n_chunks(nw))))) {
        r->status[w] = ST_FAILED;
        server_reject(r->srv, w, NULL, REJ_INVALID, BAD, "bad seal key: %s", fp_error_get());
        uploads_release(&r->up, s);
        return -1;
    }
    Fedpeft__Pull p = FEDPEFT__PULL__INIT;
    p.task_id = tid;
    wire_msg env = FEDPEFT__ENVELOPE__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_PULL;
    env.pull = &p;
    r->status[w] = ST_STAGING;
    s->w = w;
    s->last_ms = s->start_ms = now;
    (void)server_send(r->srv, w, &env); /* failure shows as a stall */
    return 0;
}

void rounds_try_pull(rounds *r, int64_t now)
{
    upload_slot *s;
    while (r->ph == PH_TRAIN && r->q_len > 0 && (s = uploads_free_slot(&r->up))) {
        int w = next_queued(r);
        if (w >= 0)
            (void)start_upload(r, s, w, now);
    }
}

/* A slot is freed when its chunk is late (3 heartbeats) or the whole upload is
 * (3 heartbeats + one per chunk, at least 1 s a chunk): a peer that trickles
 * chunks just in time cannot hold a slot for the round. */
void rounds_check_stall(rounds *r, int64_t now)
{
    int64_t hb = (int64_t)r->cfg->heartbeat_ms, limit = 3 * hb;
    for (int i = 0; i < r->up.n; i++) {
        upload_slot *s = &r->up.s[i];
        int w = s->w;
        if (w < 0)
            continue;
        int64_t budget = limit + (int64_t)wire_n_chunks(rounds_upload_n(r, w)) *
                                     (hb > 1000 ? hb : 1000);
        if (now - s->last_ms <= limit && now - s->start_ms <= budget)
            continue;
        r->stalls[w]++;
        server_reject(r->srv, w, NULL, REJ_STALLED, STALE,
                      "upload for round %llu stalled: no chunk for %lld ms, %lld ms since Pull "
                      "(budget %lld ms); dropped (stall %u of this run: pulled last from now "
                      "on)", (unsigned long long)r->round, (long long)(now - s->last_ms),
                      (long long)(now - s->start_ms), (long long)budget, r->stalls[w]);
        rounds_drop_upload(r, w);
    }
    rounds_try_pull(r, now);
}

static double l2_norm(const float *x, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)x[i] * x[i];
    return sqrt(s);
}

static void accept_update(rounds *r, int w, upload_slot *s)
{
    const char *id = server_worker(r->srv, w)->id;
    size_t n = rounds_upload_n(r, w);
    double bound = rounds_update_bound(r, n), norm = r->sa ? 0 : l2_norm(s->buf, n);
    if (!r->sa && bound > 0 && !(norm <= bound)) {
        server_reject(r->srv, w, NULL, REJ_BOUND, BAD, "update of L2 norm %.4g exceeds the "
                      "bound %.4g ([strategy] max_update_norm): refused", norm, bound);
        rounds_drop_upload(r, w);
        return;
    }
    if (!r->sa && r->stale_w[w] != 1.0)    /* async: sum p w Delta / sum p */
        for (size_t i = 0; i < n; i++)
            s->buf[i] = (float)((double)s->buf[i] * r->stale_w[w]);
    if (r->sa) {
        sa_add_input(r->sa, (const uint32_t *)(void *)s->buf, r->n_view);
    } else if ((strategy_staged_set_rank(r->strat, server_worker(r->srv, w)->rank ==
                                                       r->global->cfg.rank
                                                   ? 0
                                                   : server_worker(r->srv, w)->rank),
                strategy_add(r->strat, s->buf, (double)r->examples[w]) < 0)) {
        server_reject(r->srv, w, NULL, REJ_INVALID, BAD, "%s", fp_error_get());
        rounds_drop_upload(r, w);
        return;
    }
    uploads_release(&r->up, s);     /* wiped: it is in the strategy now */
    r->status[w] = ST_DONE;
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
    upload_slot *s = uploads_of(&r->up, w);
    if (!s) {
        server_reject(r->srv, w, NULL, REJ_INVALID, STALE,
                      "chunk %u for round %llu before the coordinator sent Pull", c->index,
                      (unsigned long long)r->round);
        return;
    }
    if (s->sealed || r->sa || !r->cfg->insecure) {
        server_reject(r->srv, w, NULL, REJ_UNSEALED, BAD,
                      "plain chunk %u: this upload must arrive as SealedChunks", c->index);
        rounds_drop_upload(r, w);
        rounds_try_pull(r, clog_now_ms());
        return;
    }
    size_t bad;
    if (!all_finite(c->data, c->n_data, &bad)) {
        server_reject(r->srv, w, NULL, REJ_NONFINITE, BAD,
                      "update chunk %u holds %g at offset %llu; the update is refused",
                      c->index, c->data[bad], (unsigned long long)(c->offset + bad));
        rounds_drop_upload(r, w);
        rounds_try_pull(r, clog_now_ms());
        return;
    }
    if (wire_asm_add(&s->as, c) < 0) {
        server_reject(r->srv, w, NULL, REJ_SHAPE, BAD, "update refused: %s", fp_error_get());
        rounds_drop_upload(r, w);
        rounds_try_pull(r, clog_now_ms());
        return;
    }
    s->last_ms = clog_now_ms();
    if (wire_asm_complete(&s->as)) {
        accept_update(r, w, s);
        rounds_try_pull(r, clog_now_ms());
    }
}

static void fill_ad(const rounds *r, const char *id, uint64_t round, uint64_t task_id,
                    uint32_t index, uint32_t n_chunks, fp_seal_ad *ad)
{
    ad->run_id = r->run_id;
    ad->worker_id = id;
    ad->round = round;
    ad->task_id = task_id;
    ad->chunk_index = index;
    ad->n_chunks = n_chunks;
}

/* A chunk that did not open with this round's key: was it sealed for the
 * previous round (a splice across rounds)? */
static int opens_as_previous(rounds *r, int w, const Fedpeft__SealedChunk *c)
{
    static const uint8_t zero[32];
    if (r->round < 2 || sodium_memcmp(r->prev_seal_pk[w], zero, 32) == 0)
        return 0;
    uint8_t *key = sodium_malloc(FP_SEAL_KEY_BYTES);
    int ok = 0;
    fp_seal_ad ad;
    size_t len;
    fill_ad(r, server_worker(r->srv, w)->id, r->round - 1, r->prev_task[w], c->index,
            c->n_chunks, &ad);
    if (key && fp_seal_key_coordinator(key, r->seal_kp->secret_key, r->seal_kp->public_key,
                                       r->prev_seal_pk[w], r->run_id, r->round - 1) == 0)
        ok = fp_open(r->open_buf, &len, c->data.data, c->data.len, &ad, key) == 0;
    if (key)
        sodium_free(key);
    sodium_memzero(r->open_buf, c->data.len > FP_SEAL_OVERHEAD ? c->data.len - FP_SEAL_OVERHEAD : 0);
    return ok;
}

/* A sealed chunk from a worker whose update was already accepted. */
static void late_sealed(rounds *r, int w, const Fedpeft__SealedChunk *c)
{
    uint8_t *key = sodium_malloc(FP_SEAL_KEY_BYTES);
    fp_seal_ad ad;
    size_t len;
    int opened = 0;
    fill_ad(r, server_worker(r->srv, w)->id, r->round, c->task_id, c->index, c->n_chunks, &ad);
    if (key && fp_seal_key_coordinator(key, r->seal_kp->secret_key, r->seal_kp->public_key,
                                       r->seal_pk[w], r->run_id, r->round) == 0)
        opened = fp_open(r->open_buf, &len, c->data.data, c->data.len, &ad, key) == 0;
    if (key)
        sodium_free(key);
    if (opened)
        server_reject(r->srv, w, NULL, REJ_REPLAYED, STALE,
                      "sealed chunk %u replayed: the update for round %llu was already accepted",
                      c->index, (unsigned long long)r->round);
    else
        server_reject(r->srv, w, NULL, REJ_TAMPERED, BAD,
                      "sealed chunk %u after the update was accepted does not authenticate",
                      c->index);
}

static void refuse_upload(rounds *r, int w, reject_reason why, const char *fmt, uint32_t index,
                          const char *detail)
{
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    server_reject(r->srv, w, NULL, why, BAD, fmt, index, detail);
#pragma GCC diagnostic pop
    rounds_drop_upload(r, w);
    rounds_try_pull(r, clog_now_ms());
}

/* The chunk's index, offset, count and length fit the adapter (else the
 * upload is refused). */
static int sealed_shape_ok(rounds *r, int w, const Fedpeft__SealedChunk *c, size_t n,
                           size_t *off_p, size_t *cnt_p)
{
    uint32_t want_chunks = wire_n_chunks(n);
    size_t off = (size_t)c->index * WIRE_CHUNK_FLOATS;
    *off_p = off;
    *cnt_p = off < n ? (n - off < WIRE_CHUNK_FLOATS ? n - off : WIRE_CHUNK_FLOATS) : 0;
    size_t cnt = *cnt_p;
    if (c->n_chunks != want_chunks || c->index >= want_chunks || c->offset != off) {
        refuse_upload(r, w, REJ_SHAPE, "sealed chunk %u: %s", c->index,
                      "index, offset or chunk count does not fit the adapter");
        return -1;
    }
    if (c->data.len != cnt * 4 + FP_SEAL_OVERHEAD) {
        char d[96];
        snprintf(d, sizeof d, "%zu bytes, expected %zu", c->data.len, cnt * 4 + FP_SEAL_OVERHEAD);
        refuse_upload(r, w, REJ_TRUNCATED, "sealed chunk %u truncated or padded: %s", c->index,
                      d);
        return -1;
    }
    return 0;
}

/* Opens the chunk into r->open_buf: authentic, not replayed, in order. */
static int open_sealed(rounds *r, int w, upload_slot *s, const Fedpeft__SealedChunk *c,
                       const char *id, size_t *len_p)
{
    fp_seal_ad ad;
    *len_p = 0;
    fill_ad(r, id, r->round, c->task_id, c->index, c->n_chunks, &ad);
    if (fp_open(r->open_buf, len_p, c->data.data, c->data.len, &ad, s->key) < 0) {
        if (opens_as_previous(r, w, c))
            refuse_upload(r, w, REJ_SPLICED, "sealed chunk %u was sealed for %s", c->index,
                          "the previous round (spliced into this one)");
        else
            refuse_upload(r, w, REJ_TAMPERED, "sealed chunk %u does not authenticate: %s",
                          c->index, "tampered, spliced or sealed with another key");
        return -1;
    }
    if (fp_seal_replay_check(s->guard, &ad) < 0) {
        sodium_memzero(r->open_buf, *len_p);
        server_reject(r->srv, w, NULL, REJ_REPLAYED, STALE, "sealed chunk %u replayed: %s",
                      c->index, fp_error_get());
        return -1;     /* the upload itself goes on */
    }
    if (c->index != s->next) {
        sodium_memzero(r->open_buf, *len_p);
        refuse_upload(r, w, REJ_SHAPE, "sealed chunk %u out of order (%s)", c->index,
                      "chunks are sent in order");
        return -1;
    }
    return 0;
}

/* One sealed chunk of the staged upload (chunks in order, each once, bound by
 * its AD to run, worker, round, task, index and count). */
static void on_sealed_chunk(rounds *r, int w, const Fedpeft__SealedChunk *c)
{
    const char *id = server_worker(r->srv, w)->id;
    size_t n = rounds_upload_n(r, w);
    int cur = current(r, PH_TRAIN, c->task_id, TASK_TRAIN) && c->round == r->round;
    if (cur && r->status[w] == ST_DONE) {
        late_sealed(r, w, c);
        return;
    }
    if (cur && r->status[w] == ST_FAILED)
        return; /* the tail of an upload already refused */
    if (!cur) {
        reject_stale(r, w, c->task_id, c->round, TASK_TRAIN, "sealed chunk");
        return;
    }
    upload_slot *s = uploads_of(&r->up, w);
    if (!s || !s->sealed) {
        server_reject(r->srv, w, NULL, REJ_INVALID, STALE,
                      "sealed chunk %u for round %llu before the coordinator sent Pull",
                      c->index, (unsigned long long)r->round);
        return;
    }
    size_t off, cnt, len;
    if (sealed_shape_ok(r, w, c, n, &off, &cnt) < 0 || open_sealed(r, w, s, c, id, &len) < 0)
        return;
    if (r->dump_dir) {
        char name[WIRE_MAX_ID + 32];
        snprintf(name, sizeof name, "%s-chunk-%u.bin", id, c->index);
        rounds_dump(r, name, r->open_buf, len);
    }
    if (!r->sa) {
        float *dst = s->buf + off;
        memcpy(dst, r->open_buf, len);
        size_t bad;
        if (!all_finite(dst, cnt, &bad)) {
            sodium_memzero(r->open_buf, len);
            char d[64];
            snprintf(d, sizeof d, "offset %zu", off + bad);
            refuse_upload(r, w, REJ_NONFINITE, "update chunk %u holds a non-finite value at %s",
                          c->index, d);
            return;
        }
    } else {
        memcpy(s->buf + off, r->open_buf, len);   /* uint32 words, masked */
    }
    sodium_memzero(r->open_buf, len);
    s->next++;
    s->last_ms = clog_now_ms();
    if (fp_seal_replay_complete(s->guard)) {
        accept_update(r, w, s);
        rounds_try_pull(r, clog_now_ms());
    }
}

void rounds_on_bad_frame(void *ctx, int w)
{
    rounds *r = ctx;
    if (r->ph == PH_TRAIN && uploads_of(&r->up, w)) {
        clog_info("round %llu: upload from %s dropped after a bad frame",
                  (unsigned long long)r->round, server_worker(r->srv, w)->id);
        rounds_drop_upload(r, w);
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
    if (!folds_match(r, w, e->n_folds, "EvalResult"))
        return;
    if (!isfinite(e->loss)) {
        r->status[w] = ST_FAILED;
        server_reject(r->srv, w, NULL, REJ_NONFINITE, BAD, "EvalResult with loss %g over %llu "
                      "tokens", e->loss, (unsigned long long)e->n_tokens);
        return;
    }
    if (e->n_tokens == 0) {     /* a validation split shorter than one row: no weight */
        r->status[w] = ST_DONE;
        r->n_reported++;
        clog_info("round %llu: eval from %s: no validation rows of [train] seq tokens (%u of "
                  "%u)", (unsigned long long)r->round, id, r->n_reported, r->n_targets);
        return;
    }
    /* Its weight in the mean: no more tokens than it declared it holds. */
    uint64_t declared = server_worker(r->srv, w)->n_tokens;
    uint64_t tokens = declared && e->n_tokens > declared ? declared : e->n_tokens;
    r->status[w] = ST_DONE;
    r->n_reported++;
    r->val_loss[w] = e->loss;
    r->val_sum += e->loss * (double)tokens;
    r->val_tokens += tokens;
    clog_info("round %llu: eval from %s: loss %.4f over %llu tokens%s (%u of %u)",
              (unsigned long long)r->round, id, e->loss, (unsigned long long)tokens,
              tokens < e->n_tokens ? " (capped: it declared fewer)" : "", r->n_reported,
              r->n_targets);
}

/* A worker refused its part of the current round (its [privacy] policy, an
 * UnmaskRequest that asks too much), or reports (about = a peer) a share
 * sealed for it that does not open. Logged once per worker and kind a round;
 * a refusing worker is out of the round, so no phase waits for it. */
static void on_refusal(rounds *r, int w, const Fedpeft__Refusal *f)
{
    int kind = r->ph == PH_TRAIN ? TASK_TRAIN : TASK_EVAL;
    if (rounds_async_on_refusal(r, w, f->task_id, f->reason))
        return;
    if ((r->ph != PH_TRAIN && r->ph != PH_EVAL) || !current(r, r->ph, f->task_id, kind))
        return;     /* about an old task: nothing to act on */
    int report = f->about && f->about[0], first = r->sa ? sa_on_refusal(r, w, report) : 0;
    if (!report && r->status[w] == ST_PENDING) {
        r->status[w] = ST_FAILED;
        first = 1;
    }
    const char *id = server_worker(r->srv, w)->id, *why = f->reason ? f->reason : "";
    if (first && report)
        clog_info("round %llu: %s reports a bad share from %s: %s", (unsigned long long)r->round,
                  id, f->about, why);
    else if (first)
        clog_info("round %llu: %s refused its task: %s", (unsigned long long)r->round, id, why);
    if (first && !report && r->n_refused++ == 0) {     /* kept for the abandon reason */
        snprintf(r->first_refusal, sizeof r->first_refusal, "%s: %s", id, why);
        clog_printable(r->first_refusal);
    }
}

void rounds_on_task_msg(void *ctx, int w, const wire_msg *msg)
{
    rounds *r = ctx;
    switch (msg->body_case) {
    case FEDPEFT__ENVELOPE__BODY_UPDATE_READY: on_update_ready(r, w, msg->update_ready); break;
    case FEDPEFT__ENVELOPE__BODY_CHUNK: on_chunk(r, w, msg->chunk); break;
    case FEDPEFT__ENVELOPE__BODY_EVAL_RESULT: on_eval_result(r, w, msg->eval_result); break;
    case FEDPEFT__ENVELOPE__BODY_SEALED_CHUNK: on_sealed_chunk(r, w, msg->sealed_chunk); break;
    case FEDPEFT__ENVELOPE__BODY_ADVERTISE_KEYS: sa_on_advertise(r, w, msg->advertise_keys); break;
    case FEDPEFT__ENVELOPE__BODY_SHARE_KEYS: sa_on_shares(r, w, msg->share_keys); break;
    case FEDPEFT__ENVELOPE__BODY_CONSISTENCY_SIG: sa_on_consistency(r, w, msg->consistency_sig); break;
    case FEDPEFT__ENVELOPE__BODY_UNMASK_RESPONSE: sa_on_unmask(r, w, msg->unmask_response); break;
    case FEDPEFT__ENVELOPE__BODY_REFUSAL: on_refusal(r, w, msg->refusal); break;
    default: break;
    }
}
