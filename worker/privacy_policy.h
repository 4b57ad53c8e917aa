/* privacy_policy.h - what a worker demands of a round before it sends anything
 * ([privacy] in its config, docs/config.md; docs/privacy.md, "The worker's
 * policy"). The coordinator is not trusted to choose safe settings:
 *
 *   require_secagg  a TRAIN task must use secure aggregation (else the
 *                   coordinator would see this worker's update);
 *   min_peers       a secure round needs at least that many members (in the
 *                   Task and in PeerKeys): the sum of 2 inputs minus one's
 *                   own is the other's;
 *   min_threshold   the Shamir threshold t must be >= it; 0 (default) means
 *                   a majority of each secret's holders (the worker's k graph
 *                   neighbours and itself: t > (k+1)/2); t >= 2 always;
 *   max_corrupt     the hostile fraction assumed: a SecAgg+ graph whose k and
 *                   t let that many members reach t of this worker's holders
 *                   with chance above 2^-40 is refused (secagg_graph.h).
 *
 * --insecure (plain TCP: anyone may play the coordinator) turns the policy
 * off, with a warning at start, as do explicit weaker settings.
 */
#ifndef FP_WK_PRIVACY_POLICY_H
#define FP_WK_PRIVACY_POLICY_H

#include <stddef.h>

#include "fedpeft.pb-c.h"
#include "worker_config.h"

/* Logs one WARNING line per relaxed setting (at start). */
void wk_policy_warn(const wk_config *cfg);

/* 0 when the TRAIN task may be run; else -1 with a one-line reason in why. */
int wk_policy_check_task(const wk_config *cfg, const Fedpeft__Task *task, char *why, size_t cap);

/* The same rules for n members, k neighbours each (n - 1: complete) and t:
 * at the Task (the planned graph over the sampled) and again at PeerKeys (the
 * graph over the members that advertised keys). */
int wk_policy_check_graph(const wk_config *cfg, size_t n, unsigned k, unsigned t, char *why,
                          size_t cap);

/* The fewest survivors an UnmaskRequest may name for a round of t: t (at
 * least 2). Not min_peers: a round of 3 that loses one member must still
 * unmask; the 2 survivors then each learn the other's update from the
 * published sum (docs/privacy.md: raise min_peers and t for more). */
size_t wk_policy_min_survivors(const wk_config *cfg, unsigned t);

#endif
