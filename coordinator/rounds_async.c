/* rounds_async.c - [round] mode = async (rounds_async.h): hold tasks, the
 * buffer of held updates, and the round each full buffer becomes. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "clog.h"
#include "rounds_async.h"
#include "rounds_phase.h"
#include "rounds_state.h"
#include "secagg_server.h"

#define STALE FEDPEFT__REJECT__CODE__STALE
#define BAD FEDPEFT__REJECT__CODE__BAD_MESSAGE

/* Hold task ids live far above the rounds' (nonce + 2 round + kind), so
 * neither is ever taken for the other. */
#define HOLD_BASE ((uint64_t)1 << 62)

int rounds_async(const rounds *r) { return r->cfg->round_mode == COORD_MODE_ASYNC; }

uint64_t rounds_async_version(const rounds *r)
{
    if (r->ph == PH_EVAL || r->round == 0)
        return r->round;    /* aggregated (or round 0: the initial adapter) */
    return r->round - 1;
}

static uint64_t hold_id(const rounds *r, uint64_t version)
{
    return r->nonce + HOLD_BASE + version;
}

int rounds_async_is_hold(const rounds *r, uint64_t task_id)
{
    uint64_t d = task_id - r->nonce;
    return rounds_async(r) && d >= HOLD_BASE && d - HOLD_BASE <= r->round;
}

static void send_hold(rounds *r, int w, int64_t now)
{
    uint64_t v = rounds_async_version(r);
    r->as_state[w] = AS_TRAINING;
    r->as_base[w] = v;
    r->as_task[w] = hold_id(r, v);
    r->as_sent_ms[w] = now;
    rounds_send_hold_task(r, w, v, r->as_task[w],
                          now + (int64_t)(r->cfg->deadline_s * 1000.0));
}

/* The k oldest held updates of live workers (at most K), sorted by id as a
 * round's members are; held updates past max_staleness are dropped. */
static int take_buffer(rounds *r, int *chosen)
{
    int n = server_n_workers(r->srv), k = 0;
    uint64_t v = rounds_async_version(r);
    unsigned K = (unsigned)r->cfg->buffer;
    for (int i = 0; i < n; i++) {
        if (r->as_state[i] != AS_HELD || !server_worker(r->srv, i)->alive ||
            r->round < r->as_bench_until[i])
            continue;
        if (r->cfg->max_staleness > 0 && v - r->as_base[i] > (uint64_t)r->cfg->max_staleness) {
            clog_info("round %llu: the update %s trained from version %llu is %llu versions old, "
                      "above max_staleness = %d: dropped, it trains again",
                      (unsigned long long)r->round, server_worker(r->srv, i)->id,
                      (unsigned long long)r->as_base[i], (unsigned long long)(v - r->as_base[i]),
                      r->cfg->max_staleness);
            r->as_state[i] = AS_IDLE;
            continue;
        }
        chosen[k++] = i;
    }
    if ((unsigned)k < K)
        return 0;
    /* the K that arrived first (selection by as_seq; k is at most the workers) */
    for (unsigned a = 0; a < K; a++)
        for (int b = (int)a + 1; b < k; b++)
            if (r->as_seq[chosen[b]] < r->as_seq[chosen[a]]) {
                int t = chosen[a];
                chosen[a] = chosen[b];
                chosen[b] = t;
            }
    rounds_sort_by_id(r, chosen, (int)K);     /* then by id, as a sampled round's */
    return (int)K;
}

static void start_round(rounds *r, int64_t now, const int *chosen, int k)
{
    uint64_t v = rounds_async_version(r);
    double sum = 0;
    unsigned smax = 0;
    for (int i = 0; i < server_n_workers(r->srv); i++)
        r->stale_w[i] = 1.0;
    for (int i = 0; i < k; i++) {
        int w = chosen[i];
        uint64_t s = v - r->as_base[w];
        r->as_state[w] = AS_MEMBER;
        r->stale_w[w] = fp_stale_weight(&r->stale, s);
        sum += (double)s;
        if (s > smax)
            smax = (unsigned)s;
    }
    for (int i = 0; i < k; i++)
        clog_info("round %llu: %s trained from version %llu: staleness %llu, weight w = %.6f",
                  (unsigned long long)r->round, server_worker(r->srv, chosen[i])->id,
                  (unsigned long long)r->as_base[chosen[i]],
                  (unsigned long long)(v - r->as_base[chosen[i]]), r->stale_w[chosen[i]]);
    rounds_begin_train(r, now, chosen, k);     /* resets r->m */
    r->m.async = 1;
    r->m.staleness_mean = k ? sum / k : 0;
    r->m.staleness_max = smax;
    clog_info("round %llu: staleness mean %.2f, max %u versions", (unsigned long long)r->round,
              r->m.staleness_mean, smax);
}

void rounds_async_tick(rounds *r, int64_t now)
{
    static int chosen[SERVER_MAX_WORKERS];
    if (!rounds_async(r) || r->round == 0 || r->ph == PH_DONE || r->ph == PH_FINISHING)
        return;
    int64_t redo = (int64_t)(r->cfg->deadline_s * 1000.0);
    for (int i = 0; i < server_n_workers(r->srv); i++) {
        const worker_info *wi = server_worker(r->srv, i);
        if (!wi->alive || wi->banned)
            continue;
        if (r->as_state[i] == AS_IDLE) {
            send_hold(r, i, now);
        } else if (r->as_state[i] == AS_TRAINING && now - r->as_sent_ms[i] >= redo) {
            clog_info("version %llu: no update from %s %.0f s after its task ([round] deadline_s): "
                      "a new task from the newest version", (unsigned long long)r->as_base[i],
                      wi->id, secs(now - r->as_sent_ms[i]));
            send_hold(r, i, now);
        }
    }
    if (r->ph != PH_WAIT)
        return;
    int k = take_buffer(r, chosen);
    if (k > 0) {
        start_round(r, now, chosen, k);
        return;
    }
    if (now - r->wait_log_ms >= (int64_t)(r->cfg->start_timeout_s * 1000.0)) {
        unsigned tr, held;
        rounds_async_counts(r, &tr, &held);
        clog_info("round %llu: buffer %u of %d held; %u workers training, %d live",
                  (unsigned long long)r->round, held, r->cfg->buffer, tr, server_n_live(r->srv));
        r->wait_log_ms = now;
    }
}

void rounds_async_on_held(rounds *r, int w, const Fedpeft__UpdateReady *u)
{
    const char *id = server_worker(r->srv, w)->id;
    if (r->as_state[w] != AS_TRAINING || u->task_id != r->as_task[w] ||
        u->round != r->as_base[w]) {
        server_reject(r->srv, w, NULL, r->as_state[w] == AS_HELD ? REJ_DUPLICATE : REJ_LATE,
                      STALE, "UpdateReady for hold task %llu (version %llu): %s has no such "
                      "training in progress", (unsigned long long)u->task_id,
                      (unsigned long long)u->round, id);
        return;
    }
    uint32_t want = wire_n_chunks(rounds_upload_n(r, w));
    const char *bad = u->n_chunks != want ? "a shape other than the adapter's"
                      : !isfinite(u->train_loss) ? "a non-finite train_loss"
                      : u->n_examples == 0 ? "n_examples = 0 (no weight)" : NULL;
    if (bad) {
        r->as_state[w] = AS_IDLE;   /* it trains again from the newest version */
        server_reject(r->srv, w, NULL, u->n_chunks != want ? REJ_SHAPE : REJ_INVALID, BAD,
                      "held update with %s: refused", bad);
        return;
    }
    r->as_state[w] = AS_HELD;
    r->as_seq[w] = r->as_next_seq++;
    unsigned tr, held;
    rounds_async_counts(r, &tr, &held);
    clog_info("round %llu: %s holds an update trained from version %llu (buffer %u of %d)",
              (unsigned long long)r->round, id, (unsigned long long)r->as_base[w], held,
              r->cfg->buffer);
}

int rounds_async_on_refusal(rounds *r, int w, uint64_t task_id, const char *why)
{
    if (!rounds_async_is_hold(r, task_id))
        return 0;
    if (r->as_state[w] == AS_TRAINING && task_id == r->as_task[w]) {
        r->as_state[w] = AS_OUT;
        char safe[200];
        snprintf(safe, sizeof safe, "%s", why ? why : "");
        clog_printable(safe);
        clog_info("%s refused its training task: %s; no more tasks for it until it says Hello "
                  "again", server_worker(r->srv, w)->id, safe);
    }
    return 1;
}

void rounds_async_on_hello(rounds *r, int w)
{
    if (!rounds_async(r))
        return;
    uint8_t s = r->as_state[w];
    if (s == AS_TRAINING || s == AS_HELD || s == AS_OUT)
        r->as_state[w] = AS_IDLE;   /* the tick hands out a new task */
}

void rounds_async_blame(rounds *r)
{
    if (!rounds_async(r) || r->ph != PH_TRAIN || r->round == 0)
        return;
    for (int i = 0; i < server_n_workers(r->srv); i++) {
        if (r->as_state[i] != AS_MEMBER || r->status[i] != ST_PENDING)
            continue;
        if (r->cfg->secagg && (!r->sa || !sa_missed_phase(r->sa, i)))
            continue;   /* (no sa: it could not start, nobody's fault) */
        uint32_t d = ++r->as_silent[i];
        uint64_t wait = d > 7 ? 64 : (uint64_t)1 << (d - 1);
        r->as_bench_until[i] = r->round + 1 + wait;
        clog_info("round %llu: %s went silent in its buffer (no upload, no refusal; %u time%s): "
                  "its updates wait %llu round%s", (unsigned long long)r->round,
                  server_worker(r->srv, i)->id, d, d == 1 ? "" : "s", (unsigned long long)wait,
                  wait == 1 ? "" : "s");
    }
}

void rounds_async_round_over(rounds *r)
{
    if (!rounds_async(r))
        return;
    for (int i = 0; i < server_n_workers(r->srv); i++) {
        if (r->as_state[i] == AS_MEMBER)
            r->as_state[i] = AS_IDLE;
        r->stale_w[i] = 1.0;
    }
}

const char *rounds_async_state_name(const rounds *r, int w)
{
    static const char *const names[] = {"idle", "training", "held", "in the buffer", "refused"};
    return r->as_state[w] < sizeof names / sizeof names[0] ? names[r->as_state[w]] : "?";
}

void rounds_async_counts(const rounds *r, unsigned *training, unsigned *held)
{
    *training = *held = 0;
    for (int i = 0; i < server_n_workers(r->srv); i++) {
        *training += r->as_state[i] == AS_TRAINING;
        *held += r->as_state[i] == AS_HELD && server_worker(r->srv, i)->alive;
    }
}
