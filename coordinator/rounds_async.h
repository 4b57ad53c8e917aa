/* rounds_async.h - [round] mode = async: buffered asynchronous aggregation
 * (FedBuff, Nguyen et al. 2022) on the round machinery (docs/aggregation.md,
 * "Asynchronous rounds").
 *
 * Every live worker trains all the time: a "hold" Task from the newest global
 * version; it keeps the update and says so with UpdateReady (not pulled). The
 * first K (= [round] buffer) held updates form the next round, one global
 * version: its members are fixed at its start, each gets a "from_update" Task
 * (no adapter) with its staleness weight and, with [secagg], the round's
 * secure aggregation, and uploads the held update weighted and masked. So the
 * coordinator still learns only the sum of the buffer. The round then runs as
 * a synchronous one (deadline, dropouts, checkpoint, metrics line), its
 * evaluation on its members only; they train again from the new version.
 *
 * Staleness of an update trained from version v when the round starts with
 * version V (= round - 1) published: s = V - v, weight w(s) (agg_fedbuff.h);
 * the round's mean is sum p w Delta / sum p. Versions are round numbers (an
 * abandoned round publishes none but counts).
 */
#ifndef COORD_ROUNDS_ASYNC_H
#define COORD_ROUNDS_ASYNC_H

#include <stdint.h>

#include "rounds.h"
#include "wire.h"

/* A worker's part in async mode. */
enum { AS_IDLE, AS_TRAINING, AS_HELD, AS_MEMBER, AS_OUT };

int rounds_async(const rounds *r);
/* The version the global adapter is now (round - 1, or round once aggregated). */
uint64_t rounds_async_version(const rounds *r);
/* Is task_id a hold task of this incarnation? */
int rounds_async_is_hold(const rounds *r, uint64_t task_id);
/* Hands out hold tasks to idle live workers (again after [round] deadline_s),
 * and starts the next round when the buffer is full. From the server's tick. */
void rounds_async_tick(rounds *r, int64_t now);
/* UpdateReady for a hold task: the update joins the buffer (or is refused). */
void rounds_async_on_held(rounds *r, int w, const Fedpeft__UpdateReady *u);
/* A Refusal of a hold task: no more tasks for w until it says Hello again.
 * 1 when f was about a hold task. */
int rounds_async_on_refusal(rounds *r, int w, uint64_t task_id, const char *why);
/* w said Hello again: a task or held update it had is gone. */
void rounds_async_on_hello(rounds *r, int w);
/* The round's upload phase is over (aggregated or abandoned): a member that
 * went silent - no upload, no Refusal, a phase missed - has its held updates
 * passed over for the next 2^(d-1) rounds after its d-th time (at most 64),
 * so one key that answers hold tasks at once and then drops out cannot sit in
 * every buffer and abandon each one. */
void rounds_async_blame(rounds *r);
/* The round ended (completed or abandoned): its members train again. */
void rounds_async_round_over(rounds *r);
/* "idle", "training", "held", "in the buffer", "refused" (status page). */
const char *rounds_async_state_name(const rounds *r, int w);
/* Counts for the status page: training, held. */
void rounds_async_counts(const rounds *r, unsigned *training, unsigned *held);

#endif
