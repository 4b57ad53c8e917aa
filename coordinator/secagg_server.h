/* secagg_server.h - the coordinator's side of secure aggregation
 * (docs/protocol.md, "Secure aggregation"; Bonawitz et al. 2017):
 *
 *   KEYS    collect AdvertiseKeys from the sampled workers     -> U1
 *   SHARES  send PeerKeys(U1); collect each worker's sealed
 *           Shamir shares (it cannot read them)                -> U2
 *           and route to each member of U2 the shares addressed to it
 *   UPLOAD  (rounds_msgs.c) masked, sealed uploads are opened and added to a
 *           uint32 running sum mod 2^32                        -> U3
 *   CONSIST ConsistencyCheck(U3) to U3; each signs U3 once     -> U4
 *   UNMASK  UnmaskRequest(U3, U2 \ U3, the signatures of each recipient's
 *           share holders) to U4; with t responses
 *           reconstruct the survivors' self-mask seeds and the dropped
 *           workers' mask keys, unmask the sum, dequantize, FedAvg.
 * Fewer than t members at any phase: the round is abandoned cleanly.
 */
#ifndef COORD_SECAGG_SERVER_H
#define COORD_SECAGG_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "fedpeft.pb-c.h"
#include "fp_error.h"

typedef struct sa_server sa_server;
struct rounds;

enum { SA_KEYS, SA_SHARES, SA_UPLOAD, SA_CONSIST, SA_UNMASK };

/* The threshold for n sampled workers: cfg_t when set, else max(2, ceil(2n/3)). */
unsigned sa_threshold(int cfg_t, unsigned n);

/* Starts secure aggregation over the k sampled workers (server indices,
 * sorted by id) with their FedAvg weights. NULL with an error (bad params:
 * the round is abandoned). */
sa_server *sa_new(struct rounds *r, const int *chosen, int k) FP_WUR;
void sa_destroy(sa_server **sa_p);

/* For the Task of worker w: threshold, clip, frac_bits, its weight, peers. */
void sa_task_fields(const sa_server *sa, int w, Fedpeft__SecAggParams *p, char ***peers,
                    size_t *n_peers);
int sa_phase(const sa_server *sa);
unsigned sa_t(const sa_server *sa);
/* Removing the masks (in slices of ~50 ms per tick): call the tick again at once. */
int sa_busy(const sa_server *sa);
/* Is w a member of U2 (allowed to upload a masked input)? */
int sa_in_u2(const sa_server *sa, int w);

void sa_on_advertise(struct rounds *r, int w, const Fedpeft__AdvertiseKeys *m);
void sa_on_shares(struct rounds *r, int w, const Fedpeft__ShareKeys *m);
void sa_on_consistency(struct rounds *r, int w, const Fedpeft__ConsistencySig *m);
void sa_on_unmask(struct rounds *r, int w, const Fedpeft__UnmaskResponse *m);
/* A Refusal from w: with `report` (a peer's share did not open for w) it is
 * only counted; otherwise w refused its part and is out of the round from now
 * on (a phase no longer waits for it). 1 for the first of its kind from w
 * this round (to log), else 0. */
int sa_on_refusal(struct rounds *r, int w, int report);
/* w said Hello again (a new connection) while a member: the phase's message
 * it may have lost meanwhile (PeerKeys, its routed shares while `training`,
 * the UnmaskRequest) is sent to it once more, once per phase. */
void sa_rejoin(struct rounds *r, int w, int training);
/* Whether member w (still without its upload) missed a phase the round has
 * reached - keys, then shares, then the masked input - without refusing
 * (async's backoff, rounds_async.h). */
int sa_missed_phase(const sa_server *sa, int w);
/* Adds a whole staged masked input (n words) of w to the sum. */
void sa_add_input(sa_server *sa, const uint32_t *y, size_t n);

/* What secure aggregation asks of the round. It never ends the round itself
 * (the phases do, rounds_phase.c), so it calls nothing of rounds_*.c. */
typedef enum {
    SA_UPLOADING,   /* the upload phase: the round's own upload checks apply */
    SA_GOING,       /* a sub-phase is running: nothing more to do this tick */
    SA_SUM_READY,   /* the sum is unmasked into the strategy: aggregate */
    SA_FAILED       /* abandon the round; the reason is in reason[cap] */
} sa_verdict;

/* Drives KEYS, SHARES and UNMASK (timeouts, transitions). */
sa_verdict sa_tick(struct rounds *r, int64_t now, char *reason, size_t cap);
/* The upload phase ended: U3 = the workers whose inputs were accepted; the
 * consistency round starts (sa_tick then sends the UnmaskRequests).
 * SA_GOING or SA_FAILED. */
sa_verdict sa_end_upload(struct rounds *r, int64_t now, const char *why, char *reason,
                         size_t cap);

#endif
