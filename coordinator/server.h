/* server.h - the coordinator's network side: one ROUTER socket, an event loop
 * on zmq_poll with a timer, the worker registry with liveness, and dispatch.
 *
 * The server answers what needs no round state itself: Hello (Welcome, or
 * Reject VERSION / MODEL with the reason), Heartbeat (answered with a
 * Heartbeat), a message from a peer that never said Hello (Reject
 * UNKNOWN_WORKER) and frames that fail validation (counted, logged, Reject
 * BAD_MESSAGE). Tasks' messages (UpdateReady, TensorChunk, EvalResult) go to
 * the hooks (rounds.c). Nothing a peer sends can stop the loop.
 */
#ifndef COORD_SERVER_H
#define COORD_SERVER_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "fp_error.h"
#include "metrics.h"
#include "wire.h"
#include "zap.h"

#define SERVER_MAX_WORKERS 4096
/* Per identity: Hellos beyond the burst in a window are refused (REJ_FLOOD);
 * refusals beyond SERVER_LOG_BURST in a window are neither logged nor
 * answered, only counted and summarised when the window ends. */
#define SERVER_HELLO_BURST 5
#define SERVER_LOG_BURST 20
#define SERVER_GATE_WINDOW_MS 10000

typedef struct {
    char id[WIRE_MAX_ID];       /* who it is (with CURVE: its key's allowlisted name) */
    char route[WIRE_MAX_ROUTE]; /* its current session's routing id (id#random) */
    int alive;
    int64_t last_seen_ms;       /* clog_now_ms() of its last message */
    uint64_t n_examples, n_tokens;  /* as declared in Hello (untrusted) */
    double weight;              /* its averaging weight: n_examples under the operator's
                                   policy (server_weight) */
    int banned;                 /* its key left the allowlist (SIGHUP): refused from now on */
    int64_t hello_window_ms;    /* Hello rate limit: SERVER_HELLO_BURST per window */
    unsigned hellos;
    int rank;                   /* the LoRA rank it trains (Hello rank, 0 there = global) */
    uint32_t n_folds;           /* flora: folds its base holds (Hello), of run fold_run */
    uint64_t secagg_task;       /* the task whose secagg state it holds (Hello; 0: none) */
    uint64_t session;           /* its process (Hello.session) and connection attempt */
    uint32_t attempt;
    char fold_run[WIRE_MAX_ID];
    /* The Ed25519 key its secure-aggregation messages are signed with: the
     * allowlist's sign= key, or (a line without one, --insecure) its Hello's. */
    uint8_t sign_pk[32];
    int has_sign;
    int sign_pinned;            /* from the allowlist */
} worker_info;

typedef struct server server;

/* What the rounds module is told. All may be NULL. */
typedef struct {
    void *ctx;
    /* A registered worker's UpdateReady / TensorChunk / EvalResult (msg is
     * borrowed). */
    void (*on_task_msg)(void *ctx, int worker, const wire_msg *msg);
    /* A frame from a registered worker failed validation. */
    void (*on_bad_frame)(void *ctx, int worker);
    /* A worker registered (again), or went silent for 3 * heartbeat_ms. */
    void (*on_hello)(void *ctx, int worker);
    void (*on_dead)(void *ctx, int worker);
    /* Called after each poll; returns how many ms until it wants to run again
     * (0 = at once, -1 = never), or sets *done. */
    int (*tick)(void *ctx, int64_t now_ms, int *done);
} server_hooks;

typedef struct {
    const char *endpoint;
    int heartbeat_ms;
    const char *model_hash;     /* hex sha256 the workers must match */
    const char *run_id;
    Fedpeft__LoraSpec lora;     /* sent in Welcome */
    /* CURVE (docs/privacy.md): the coordinator's key pair, used by server_new
     * only (NULL: plain TCP, --insecure); the ZAP handler (common/privacy/zap.h, its
     * own thread) admits the keys in allowlist and re-reads it when
     * *reload_allowlist is set (SIGHUP). */
    const fp_keypair *curve;
    const char *allowlist;
    atomic_int *reload_allowlist;
    /* Per-worker rank: a Hello asking for another rank is refused with
     * rank_refusal (the strategy cannot mix ranks) unless it is NULL; a rank
     * above lora.rank is always refused. */
    const char *rank_refusal;
    /* The averaging weight a worker's declared example count gives it:
     * weighting_equal (every worker 1), else min(declared, max_examples (0 =
     * no cap), the key's allowlist max_examples); an allowlist weight=W wins. */
    int weighting_equal;
    uint64_t max_examples;
} server_config;

/* Binds the ROUTER. NULL with an error ("port in use ...") on failure.
 * Caller destroys. */
server *server_new(const server_config *cfg) FP_WUR;
void server_destroy(server **srv_p);
void server_set_hooks(server *srv, const server_hooks *hooks);

/* Runs until hooks->tick sets done (returns 0) or *stop becomes non-zero
 * (returns 1). -1 only for a broken socket. */
int server_run(server *srv, volatile sig_atomic_t *stop) FP_WUR;

/* Registry. Indices are stable for the life of the server. */
int server_n_workers(const server *srv);
const worker_info *server_worker(const server *srv, int i);
int server_n_live(const server *srv);
/* Worker w's averaging weight for a declared count of examples (> 0). */
double server_weight(const server *srv, int w, uint64_t declared);

/* Sends to a worker; counts its bytes as downloaded. -1 if it cannot be
 * routed (gone), logged, never fatal. */
int server_send(server *srv, int worker, wire_msg *env);
/* Sends floats [0, n) of slab as TensorChunks. */
int server_send_slab(server *srv, int worker, uint64_t task_id, const float *slab, size_t n);
/* Logs "rejected <reason> from W: MSG", counts it and sends Reject(code, MSG).
 * worker may be -1 with rid naming the peer (or NULL: nobody to answer). */
void server_reject(server *srv, int worker, const char *rid, reject_reason why,
                   Fedpeft__Reject__Code code, const char *fmt, ...) FP_PRINTF(6, 7);
/* Sends Reject(SHUTDOWN, reason) to every live worker. */
void server_shutdown_workers(server *srv, const char *reason);

/* Counters since the last take (rejections by reason, bytes each way); the
 * take resets them. */
void server_take_counters(server *srv, uint64_t rejected[REJ_COUNT], uint64_t *bytes_up,
                          uint64_t *bytes_down);
/* The same counters without resetting them (the HTTP snapshot). */
void server_peek_counters(const server *srv, uint64_t rejected[REJ_COUNT], uint64_t *bytes_up,
                          uint64_t *bytes_down);
/* fn(ctx) runs after each loop iteration, on the loop's thread (NULL: none). */
void server_set_observer(server *srv, void (*fn)(void *ctx), void *ctx);
/* Worker keys the ZAP handler refused since the start (0 without CURVE). */
uint64_t server_keys_refused(const server *srv);
/* Round number echoed in heartbeats. */
void server_set_round(server *srv, uint64_t round);
/* Lets queued messages out before the socket closes (ms). */
void server_set_linger(server *srv, int ms);

#endif
