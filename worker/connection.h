/* connection.h - the worker's link to the coordinator: a ZeroMQ DEALER,
 * registration (Hello -> Welcome), heartbeats and reconnects.
 *
 * Registration tries connect_retries + 1 times. Attempt k waits
 * retry_backoff_ms * 2^(k-1) ms (capped at 8000) for an answer, then closes the
 * socket (dropping anything queued), logs "no coordinator at ENDPOINT,
 * retry k/N" and tries again on a fresh socket. Once welcomed it sends a
 * Heartbeat every heartbeat_ms (the coordinator answers each), and after
 * 3 * heartbeat_ms without hearing anything it reconnects the same way.
 * Reject(UNKNOWN_WORKER) (a restarted coordinator) makes it say Hello again.
 */
#ifndef FP_WK_CONNECTION_H
#define FP_WK_CONNECTION_H

#include <signal.h>
#include <stdint.h>

#include "fp_error.h"
#include "keys.h"
#include "wire.h"
#include "worker_config.h"

typedef struct wk_conn wk_conn;

/* What wk_conn_register / wk_conn_poll return besides 0 and -1. */
enum { WK_MSG = 1, WK_SHUTDOWN = 2 };

/* The adapter every worker trains, from the last Welcome. */
typedef struct {
    int rank;
    float alpha;
    unsigned targets;
    int use_rslora;
    uint64_t n_params;
} wk_lora_spec;

/* Takes nothing; cfg and stop must outlive the connection. stop (set by a
 * signal handler) makes every call return WK_SHUTDOWN. Caller destroys. */
wk_conn *wk_conn_new(const wk_config *cfg, const char *model_hash, uint64_t n_examples,
                     uint64_t n_tokens, volatile sig_atomic_t *stop) FP_WUR;
void wk_conn_destroy(wk_conn **self_p);

/* Connects and registers, retrying as above. 0 when welcomed; WK_SHUTDOWN
 * on Reject(SHUTDOWN) or stop; -1 with an error when no coordinator answered
 * or it refused us (Reject VERSION/MODEL: the reason is in the error). */
int wk_conn_register(wk_conn *self) FP_WUR;

/* Waits up to timeout_ms (0: just look) for a message for the task layer
 * (Task, TensorChunk, Pull), sending heartbeats (round, busy) when due and
 * handling Heartbeat, Welcome, Reject and silence itself. WK_MSG with *out
 * set (caller frees with wire_msg_free); 0 when there was nothing for the
 * caller; WK_SHUTDOWN; -1 with an error (fatal: exit 1). */
int wk_conn_poll(wk_conn *self, int timeout_ms, uint64_t round, int busy, wire_msg **out) FP_WUR;

/* Sends a Heartbeat when one is due, nothing else (no receive, no reconnect):
 * for work that cannot poll, such as an evaluation. */
void wk_conn_heartbeat(wk_conn *self, uint64_t round, int busy);

/* The signing pair of this worker's secure-aggregation messages (its
 * identity's, keys.h; with --insecure one made at start) and the [privacy]
 * roster (NULL when none). They live as long as the connection. */
void wk_conn_identity(const wk_conn *self, const uint8_t **sign_pk, const uint8_t **sign_sk,
                      const fp_allowlist **roster);

/* Sends env on the socket (not taken). -1 with an error. */
int wk_conn_send(wk_conn *self, wire_msg *env) FP_WUR;
/* The socket, for wire_send_slab. */
void *wk_conn_socket(wk_conn *self);

const wk_lora_spec *wk_conn_spec(const wk_conn *self);
/* Counts Welcomes: changes whenever the worker (re)registered. */
unsigned wk_conn_generation(const wk_conn *self);

/* The run id from the last Welcome ("" before). */
const char *wk_conn_run_id(const wk_conn *self);

/* flora: the folds the worker's base holds and their run, told in every
 * later Hello (docs/protocol.md, "Folds"). */
void wk_conn_set_folds(wk_conn *self, uint32_t n_folds, const char *run_id);
/* The training task whose secure-aggregation state this process holds, told
 * in every later Hello (a restart says 0: docs/protocol.md, "Membership is fixed"). */
void wk_conn_set_secagg_task(wk_conn *self, uint64_t task_id);

#endif
