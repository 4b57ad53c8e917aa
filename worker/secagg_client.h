/* secagg_client.h - the worker's side of secure aggregation (docs/protocol.md,
 * "Secure aggregation"; SecAgg+): per-round ephemeral keys, Shamir shares of
 * its self-mask seed and mask secret key sealed for each graph neighbour, the masked
 * fixed-point input, and the unmasking answer. Every secret lives in
 * sodium_malloc memory and is wiped when the round ends (wk_sa_destroy). */
#ifndef FP_WK_SECAGG_CLIENT_H
#define FP_WK_SECAGG_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "fedpeft.pb-c.h"
#include "fp_error.h"
#include "keys.h"

typedef struct wk_sa wk_sa;

/* Who signs this worker's messages and whose signing keys it accepts
 * (connection.h, wk_conn_identity); borrowed for the round's lifetime. */
typedef struct {
    const uint8_t *sign_pk, *sign_sk;   /* Ed25519: 32 and 64 bytes */
    const fp_allowlist *roster;         /* NULL: the relayed signing keys are taken */
} wk_sa_ident;

/* A round's state: fresh enc and mask key pairs, the advertisement signed.
 * Caller destroys. */
wk_sa *wk_sa_new(const char *my_id, const char *run_id, uint64_t round, uint64_t task_id,
                 const Fedpeft__SecAggParams *p, const wk_sa_ident *ident) FP_WUR;
void wk_sa_destroy(wk_sa **sa_p);

/* AdvertiseKeys body (pointers into sa). */
void wk_sa_advertise(wk_sa *sa, Fedpeft__AdvertiseKeys *out);
/* PeerKeys (U1, the graph, my neighbours' keys) -> the ShareKeys to send (*out, caller frees with
 * wk_sa_free_shares). -1 with an error on a bad list. */
int wk_sa_on_peer_keys(wk_sa *sa, const Fedpeft__PeerKeys *pk, Fedpeft__ShareKeys **out) FP_WUR;
void wk_sa_free_shares(Fedpeft__ShareKeys **sk_p);
/* After PeerKeys: the members of U1 and the graph's degree over them (for the
 * [privacy] policy's second look, wk_policy_check_graph). */
void wk_sa_graph(const wk_sa *sa, size_t *n_members, unsigned *degree);
/* 1 once the routed shares were taken (a repeat is then ignored). */
int wk_sa_has_shares(const wk_sa *sa);
/* The routed shares (their senders + me = U2). -1 on a bad one or |U2| < t. */
int wk_sa_on_shares(wk_sa *sa, const Fedpeft__ShareKeys *sk) FP_WUR;
/* Quantizes x (n floats) into q and masks it for U2. */
int wk_sa_mask(wk_sa *sa, const float *x, size_t n, uint32_t *q) FP_WUR;
/* Senders in U2 whose share to this worker did not open, one per call
 * (*iter starts at 0); NULL after the last. */
const char *wk_sa_bad_sender(const wk_sa *sa, size_t *iter);
/* The consistency round: signs the survivor set U3 (sig, 64 bytes) after
 * checking it (sorted, of U2 where this worker can tell, itself in it, at
 * least min_survivors). One set per round: the same one again gets the same
 * signature, a different one is refused (-1). */
int wk_sa_on_consistency(wk_sa *sa, const Fedpeft__ConsistencyCheck *c, size_t min_survivors,
                         uint8_t sig[64]) FP_WUR;
/* An UnmaskRequest -> the UnmaskResponse (*out; free with wk_sa_free_response;
 * it points into sa: wipe after sending). Refuses (-1, nothing revealed) any
 * request after the round's first, an id in both lists, one not in U2,
 * fewer than min_survivors survivors, survivors other than the set signed in
 * the consistency round, or fewer than t valid signatures of that set from
 * this worker's share holders. */
int wk_sa_on_unmask(wk_sa *sa, const Fedpeft__UnmaskRequest *u, size_t min_survivors,
                    Fedpeft__UnmaskResponse **out) FP_WUR;
/* Wipes the round's secrets (after the answer is sent); sa stays to refuse
 * any further request of the round. */
void wk_sa_wipe(wk_sa *sa);
void wk_sa_free_response(Fedpeft__UnmaskResponse **r_p);

#endif
