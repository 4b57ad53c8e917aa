/* privacy_policy.c - the worker's [privacy] policy (privacy_policy.h). */
#include "privacy_policy.h"

#include <stdio.h>
#include <string.h>

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
        wk_log("WARNING: [privacy] min_threshold = %d replaces the majority rule (t > n/2); a "
               "t below a majority lets a minority of members unmask", cfg->min_threshold);
}

/* The lowest t accepted for n members. */
static unsigned min_t(const wk_config *cfg, size_t n)
{
    unsigned t = cfg->min_threshold > 0 ? (unsigned)cfg->min_threshold : (unsigned)(n / 2 + 1);
    return t < 2 ? 2 : t;
}

static int peers_name(const Fedpeft__Task *task, const char *me)
{
    for (size_t i = 0; i < task->n_peers; i++)
        if (task->peers[i] && strcmp(task->peers[i], me) == 0)
            return 1;
    return 0;
}

int wk_policy_check_task(const wk_config *cfg, const Fedpeft__Task *task, char *why, size_t cap)
{
    const Fedpeft__SecAggParams *p = task->secagg;
    if (task->kind != FEDPEFT__TASK__KIND__TRAIN)
        return 0;
    if (!p && !cfg->insecure && cfg->require_secagg) {
        snprintf(why, cap, "the task has no secure aggregation and [privacy] require_secagg = "
                 "true: the coordinator would see this worker's update");
        return -1;
    }
    if (!p)
        return 0;
    if (p->threshold < 2 || p->threshold > task->n_peers || !peers_name(task, cfg->id)) {
        snprintf(why, cap, "secure aggregation with threshold t = %u over %zu members%s: "
                 "t must be 2..members", p->threshold, task->n_peers,
                 peers_name(task, cfg->id) ? "" : " that do not include this worker");
        return -1;
    }
    if (cfg->insecure)
        return 0;
    if (task->n_peers < (size_t)cfg->min_peers) {
        snprintf(why, cap, "secure aggregation over %zu members, below [privacy] min_peers = %d",
                 task->n_peers, cfg->min_peers);
        return -1;
    }
    if (p->threshold < min_t(cfg, task->n_peers)) {
        snprintf(why, cap, "threshold t = %u for %zu members is below %u (%s): that few "
                 "share holders could unmask this worker's input", p->threshold, task->n_peers,
                 min_t(cfg, task->n_peers), cfg->min_threshold > 0 ? "[privacy] min_threshold"
                                                                  : "a majority");
        return -1;
    }
    return 0;
}

size_t wk_policy_min_survivors(const wk_config *cfg, unsigned t)
{
    (void)cfg;      /* t > n/2 already (wk_policy_check_task); see privacy_policy.h */
    return t < 2 ? 2 : t;
}
