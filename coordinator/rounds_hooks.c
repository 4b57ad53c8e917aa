/* rounds_hooks.c - the server's hooks into the round state: the tick that
 * drives the phases, a worker's (re-)Hello, and rounds_attach. */
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clog.h"
#include "rounds_async.h"
#include "rounds_msgs.h"
#include "rounds_phase.h"
#include "rounds_state.h"
#include "secagg_server.h"

static int tick(void *ctx, int64_t now, int *done)
{
    rounds *r = ctx;
    rounds_async_tick(r, now);
    switch (r->ph) {
    case PH_WAIT: rounds_check_wait(r, now); break;
    case PH_TRAIN: rounds_check_train(r, now); break;
    case PH_EVAL: rounds_check_eval(r, now); break;
    case PH_FINISHING:
        if (now >= r->deadline_ms)
            rounds_finish_run(r);
        break;
    case PH_DONE: break;
    }
    if (r->ph == PH_DONE) {
        *done = 1;
        return 0;
    }
    if (r->ph == PH_TRAIN && r->sa && sa_busy(r->sa))
        return 0;       /* unmasking in slices: the next slice after the messages */
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

/* Its upload in flight dropped, or its place in the pull queue given up. */
static void drop_in_flight(rounds *r, int w, uint8_t s)
{
    if (s == ST_STAGING)
        rounds_drop_upload(r, w);
    if (s == ST_READY)
        queue_remove(r, w);
}

/* Fixed membership under secure aggregation: a member that says Hello again
 * (a reconnect, or an attacker replaying its identity) keeps its place and
 * its phase; it is dropped only by missing a phase. Its task is not resent:
 * a new task would mean new keys, and its shares are already out. An upload
 * cut short is pulled again, and the phase's message it may have missed while
 * reconnecting is sent once more (sa_rejoin). */
static void secagg_rejoin(rounds *r, int w, uint8_t s)
{
    if (s == ST_NONE || s == ST_FAILED)
        return;
    if (server_worker(r->srv, w)->secagg_task != rounds_task_id(r, r->round, TASK_TRAIN)) {
        /* A new process: its keys and shares are gone, so it can finish no phase.
         * Out now, as if it had refused (it speaks only for its own key). */
        drop_in_flight(r, w, s);
        if (s != ST_DONE)
            r->status[w] = ST_FAILED;
        sa_on_refusal(r, w, 0);
        clog_info("round %llu: %s said Hello without this round's secure-aggregation state (it "
                  "restarted): out of the round", (unsigned long long)r->round,
                  server_worker(r->srv, w)->id);
        return;
    }
    if (s == ST_STAGING) {
        rounds_drop_upload(r, w);
        r->status[w] = ST_READY;
        r->queue[(r->q_head + r->q_len++) % SERVER_MAX_WORKERS] = w;
        rounds_try_pull(r, clog_now_ms());
    }
    clog_info("round %llu: %s said Hello again during secure aggregation; still a member "
              "(dropped only if it misses a phase)", (unsigned long long)r->round,
              server_worker(r->srv, w)->id);
    sa_rejoin(r, w, s == ST_PENDING);
}

/* A worker said Hello again: it restarted or reconnected and lost its task.
 * The task (and its adapter) is resent once per phase: a key that keeps
 * saying Hello cannot make the coordinator send the adapter again and again. */
static void on_hello(void *ctx, int w)
{
    rounds *r = ctx;
    hello_folds(r, w);
    rounds_async_on_hello(r, w);
    if (r->ph == PH_FINISHING || r->ph == PH_DONE) {
        server_shutdown_workers(r->srv, "run complete");
        return;
    }
    if (r->ph != PH_TRAIN && r->ph != PH_EVAL)
        return;
    uint8_t s = r->status[w];
    if (r->ph == PH_TRAIN && r->sa) {
        secagg_rejoin(r, w, s);
        return;
    }
    drop_in_flight(r, w, s);
    if ((s == ST_PENDING || s == ST_READY || s == ST_STAGING) && r->resent[w]) {
        r->status[w] = ST_FAILED;
        clog_info("round %llu: %s said Hello again after its task was resent once: out of "
                  "this phase", (unsigned long long)r->round, server_worker(r->srv, w)->id);
        return;
    }
    if (s == ST_PENDING || s == ST_READY || s == ST_STAGING) {
        r->resent[w] = 1;
        r->status[w] = ST_PENDING;
        clog_info("round %llu: %s rejoined; resending its %s task", (unsigned long long)r->round,
                  server_worker(r->srv, w)->id, r->ph == PH_TRAIN ? "training" : "evaluation");
        rounds_send_task(r, w);
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
