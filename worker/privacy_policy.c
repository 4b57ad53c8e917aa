/* privacy_policy.c - the worker's [privacy] policy (privacy_policy.h). */
#include "privacy_policy.h"

#include <stdio.h>
#include <string.h>

#include "secagg_graph.h"
#include "wk_log.h"

void wk_policy_warn(const wk_config *cfg)
{
    if (cfg->insecure) {
        wk_log("WARNING: --insecure: the [privacy] policy is off (any peer can act as the "
               "coordinator on plain TCP)");
        return;
    }
    if (!cfg->require_secagg)
        wk_log("WARNING: [privacy] require_secagg = false: a task without secure aggregation "
               "lets the coordinator see this worker's update");
    if (cfg->min_peers < 3)
        wk_log("WARNING: [privacy] min_peers = %d: in a round of 2 the other member learns "
               "this worker's update from the published sum", cfg->min_peers);
    if (cfg->min_threshold > 0)
        wk_log("WARNING: [privacy] min_threshold = %d replaces the majority rule (t > half "
               "the holders); a t below a majority lets a minority of them unmask",
               cfg->min_threshold);
}

/* The lowest t accepted when each secret has `holders` holders. */
static unsigned min_t(const wk_config *cfg, size_t holders)
{
    unsigned t = cfg->min_threshold > 0 ? (unsigned)cfg->min_threshold
                                        : (unsigned)(holders / 2 + 1);
    return t < 2 ? 2 : t;
}

static int peers_name(const Fedpeft__Task *task, const char *me)
{
    for (size_t i = 0; i < task->n_peers; i++)
        if (task->peers[i] && strcmp(task->peers[i], me) == 0)
            return 1;
    return 0;
}

#define RISK_BITS 40.0      /* a member's secrets exposed with chance <= 2^-40 */

int wk_policy_check_graph(const wk_config *cfg, size_t n, unsigned k, unsigned t, char *why,
                          size_t cap)
{
    size_t holders = (size_t)k + 1;     /* the neighbours and this worker */
    if (n < 2 || k < 1 || k > n - 1 || t < 2 || t > holders) {
        snprintf(why, cap, "secure aggregation with threshold t = %u, %u neighbours over %zu "
                 "members: t must be 2..neighbours+1", t, k, n);
        return -1;
    }
    if (cfg->insecure)
        return 0;
    if (n < (size_t)cfg->min_peers) {
        snprintf(why, cap, "secure aggregation over %zu members, below [privacy] min_peers = %d",
                 n, cfg->min_peers);
        return -1;
    }
    if (t < min_t(cfg, holders)) {
        snprintf(why, cap, "threshold t = %u for %zu holders of each secret is below %u (%s): "
                 "that few share holders could unmask this worker's input", t, holders,
                 min_t(cfg, holders), cfg->min_threshold > 0 ? "[privacy] min_threshold"
                                                             : "a majority");
        return -1;
    }
    double risk = fp_sagraph_log2_risk(n, cfg->max_corrupt, k, t);
    if (k < n - 1 && risk > -RISK_BITS) {
        snprintf(why, cap, "a graph of %u neighbours with t = %u over %zu members: with %.0f%% "
                 "hostile members ([privacy] max_corrupt) t of them are this worker's "
                 "neighbours with chance 2^%.1f, above 2^-%.0f", k, t, n,
                 100.0 * cfg->max_corrupt, risk, RISK_BITS);
        return -1;
    }
    return 0;
}

int wk_policy_check_task(const wk_config *cfg, const Fedpeft__Task *task, char *why, size_t cap)
{
    const Fedpeft__SecAggParams *p = task->secagg;
    if (task->kind != FEDPEFT__TASK__KIND__TRAIN)
        return 0;
    if (task->hold && !p)
        return 0;   /* async: nothing leaves; the upload task (from_update) is checked */
    if (!p && !cfg->insecure && cfg->require_secagg) {
        snprintf(why, cap, "the task has no secure aggregation and [privacy] require_secagg = "
                 "true: the coordinator would see this worker's update");
        return -1;
    }
    if (!p)
        return 0;
    if (!peers_name(task, cfg->id)) {
        snprintf(why, cap, "secure aggregation over %zu members that do not include this "
                 "worker", task->n_peers);
        return -1;
    }
    if (p->graph_commit.len != 32) {
        snprintf(why, cap, "secure aggregation without a graph commitment (a coordinator "
                 "older than this worker?)");
        return -1;
    }
    size_t n = task->n_peers;
    return wk_policy_check_graph(cfg, n, n >= 2 ? fp_sagraph_degree_for(n, p->degree) : 0,
                                 p->threshold, why, cap);
}

size_t wk_policy_min_survivors(const wk_config *cfg, unsigned t)
{
    (void)cfg;      /* t > n/2 already (wk_policy_check_task); see privacy_policy.h */
    return t < 2 ? 2 : t;
}
