/* secagg_graph.h - who masks with whom in SecAgg+ (Bell et al., CCS 2020).
 *
 * Full SecAgg (Bonawitz et al. 2017) has every pair of the n members share a
 * mask and every member secret-share with all others: O(n) work per member and
 * O(n^2) at the coordinator. SecAgg+ replaces the complete graph by a random
 * k-regular Harary graph H(n, k): the members, shuffled by a permutation drawn
 * from public randomness fixed only after all keys are (so no one can place
 * itself next to chosen victims), sit on a cycle, and each is joined to the k/2
 * nearest on either side. A member masks with, and shares its secrets t-of-k
 * among, its k neighbours only; with k = O(log n) that is O(log n) per member and
 * O(n log n) at the coordinator.
 *
 * fp_sagraph_params picks k and t for n members, a fraction `corrupt` of hostile
 * members (colluding with the coordinator) and a fraction `dropout` of members
 * that drop out, from exact tail bounds with a union bound over the members:
 *   security:    P[a member has >= t corrupted neighbours]      <= 2^-sigma / n
 *                (hypergeometric: k neighbours drawn from n-1 others, of whom
 *                 corrupt*n are hostile), so no member's secrets can be
 *                 reconstructed by the adversary alone;
 *   correctness: P[a member has < t neighbours that are honest and alive]
 *                (binomial, each neighbour lost with p = corrupt + dropout)
 *                                                              <= 2^-eta / n,
 *                so every dropped member's masks can be removed;
 *   and t > k/2 so that two disjoint sets of responses can never both reach t
 *   (the coordinator cannot ask half the neighbours for one secret and the other
 *   half for the other).
 * When no k < n-1 meets the bounds, the graph is complete (k = n-1), as in SecAgg.
 */
#ifndef FP_SECAGG_GRAPH_H
#define FP_SECAGG_GRAPH_H

#include <stddef.h>
#include <stdint.h>

#include "fp_error.h"

#define FP_SAGRAPH_SEED_BYTES 32
#define FP_SAGRAPH_MAX_N (1u << 24)

typedef struct fp_sagraph fp_sagraph;

/* k (degree, even or n-1) and t (threshold) for n members; sigma and eta in bits
 * (e.g. 40 and 30). -1 (fp_error) on bad arguments (n < 2, fractions outside
 * [0, 0.5), corrupt + dropout >= 0.5). */
int fp_sagraph_params(size_t n, double corrupt, double dropout, unsigned sigma, unsigned eta,
                      unsigned *k_out, unsigned *t_out) FP_WUR;

/* log2 of P[a member has >= t hostile neighbours of its k] when a fraction
 * `corrupt` of the n members is hostile (the security bound above, for one
 * member): what a worker checks of the coordinator's (k, t). -INFINITY when
 * impossible (fewer than t hostile members). */
double fp_sagraph_log2_risk(size_t n, double corrupt, unsigned k, unsigned t);

/* The degree over n1 members of a round planned with degree `planned` (0 =
 * complete): planned when it is even and at most n1 - 2, else n1 - 1 (the
 * complete graph: fewer members than planned neighbours). Coordinator and
 * workers compute it alike. */
unsigned fp_sagraph_degree_for(size_t n1, unsigned planned);

/* Seconds one of the small-message phases (keys, shares, consistency, unmask)
 * waits for n members: a quarter of the round's deadline_s, but at least 2 s
 * plus 20 ms per member, as the coordinator takes the members' messages one at
 * a time (each relaying k shares) from workers that share its CPU or network. */
double fp_sagraph_phase_s(size_t n, double deadline_s);

/* The graph's seed: BLAKE2b-256("fedpeft/secagg/graph-seed/v1" || u8 len(run_id)
 * || run_id || u64le round || nonce || for each member u8 len(id) || id), over
 * the members in order. The coordinator commits to the nonce before the keys
 * and reveals it after, so every member computes the same graph. */
void fp_sagraph_seed(uint8_t seed_out[FP_SAGRAPH_SEED_BYTES], const char *run_id,
                     uint64_t round, const uint8_t nonce[32], const char *const *members,
                     size_t n);

/* The graph over members 0..n-1 with degree k (2 <= k <= n-1; even unless
 * k = n-1), from seed (e.g. a hash of the round's signed key advertisements and
 * coordinator randomness revealed after them). Caller destroys. */
fp_sagraph *fp_sagraph_new(size_t n, unsigned k, const uint8_t seed[FP_SAGRAPH_SEED_BYTES]) FP_WUR;
void fp_sagraph_destroy(fp_sagraph **self_p);

size_t fp_sagraph_n(const fp_sagraph *self);
unsigned fp_sagraph_degree(const fp_sagraph *self);
/* Writes member i's k neighbours (ascending) to out (caller: k entries); returns k. */
unsigned fp_sagraph_neighbours(const fp_sagraph *self, size_t i, uint32_t *out);
/* 1 when i and j are neighbours (i != j). */
int fp_sagraph_adjacent(const fp_sagraph *self, size_t i, size_t j);

#endif
