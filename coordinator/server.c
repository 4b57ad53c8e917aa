/* server.c - ROUTER event loop, worker registry, liveness and dispatch (server.h). */
#include "server.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sodium.h>
#include <zmq.h>

#include "clog.h"
#include "rng.h"

#define SERVER_DRAIN_MAX 1024   /* messages handled per poll before timers run */
#define GATE_SLOTS 256          /* refusal log gates, by hash of the peer's identity */

/* How many refusals of one peer were logged and answered in the current
 * window, and how many were dropped. */
typedef struct {
    uint64_t who;
    int64_t window_ms;
    unsigned n, suppressed;
    char name[WIRE_MAX_ID];
} refusal_gate;

struct server {
    void *zctx, *sock;
    server_config cfg;
    char model_hash[72], run_id[40], endpoint[256];
    server_hooks hooks;
    worker_info *workers;
    int n_workers;
    uint64_t rejected[REJ_COUNT];
    uint64_t bytes_up, bytes_down;
    uint64_t round;             /* echoed in heartbeats */
    void (*observer)(void *ctx); /* after each loop iteration (the HTTP snapshot) */
    void *observer_ctx;
    fp_zap *zap;                /* CURVE: the ZAP handler thread */
    uint64_t zap_generation;    /* the allowlist the registry was last checked against */
    const char *cur_user;       /* the ZAP User-Id of the message being handled */
    refusal_gate gates[GATE_SLOTS];
};

/* 1 when a refusal of peer `who` may be logged and answered now. One peer
 * (one key, or one routing id without CURVE) gets SERVER_LOG_BURST per
 * window; the rest are counted and summarised in one line. */
static int gate_pass(server *srv, const char *who, int64_t now)
{
    uint64_t h = fp_fnv1a64(who);
    refusal_gate *g = &srv->gates[h % GATE_SLOTS];
    if (g->who != h || now - g->window_ms >= SERVER_GATE_WINDOW_MS) {
        if (g->suppressed)
            clog_info("%u more refusals of %s suppressed in %d s", g->suppressed, g->name,
                      SERVER_GATE_WINDOW_MS / 1000);
        g->who = h;
        g->window_ms = now;
        g->n = g->suppressed = 0;
        snprintf(g->name, sizeof g->name, "%s", who && *who ? who : "an unnamed peer");
    }
    if (g->n < SERVER_LOG_BURST) {
        g->n++;
        return 1;
    }
    g->suppressed++;
    return 0;
}

static void zap_log(const char *line) { clog_info("%s", line); }

server *server_new(const server_config *cfg)
{
    server *srv = calloc(1, sizeof *srv);
    if (!srv) {
        fp_error_set("out of memory");
        return NULL;
    }
    srv->cfg = *cfg;
    snprintf(srv->model_hash, sizeof srv->model_hash, "%s", cfg->model_hash);
    snprintf(srv->run_id, sizeof srv->run_id, "%s", cfg->run_id);
    snprintf(srv->endpoint, sizeof srv->endpoint, "%s", cfg->endpoint);
    srv->cfg.model_hash = srv->model_hash;
    srv->cfg.run_id = srv->run_id;
    srv->cfg.endpoint = srv->endpoint;
    srv->workers = calloc(SERVER_MAX_WORKERS, sizeof *srv->workers);
    srv->zctx = zmq_ctx_new();
    if (!srv->workers || !srv->zctx) {
        fp_error_set("cannot create the ZeroMQ context");
        goto err;
    }
    if (cfg->curve) {   /* the ZAP handler must be there before the first client */
        srv->zap = fp_zap_start(srv->zctx, cfg->allowlist, cfg->reload_allowlist, zap_log);
        if (!srv->zap)
            goto err;
        srv->sock = wire_router_bind_curve(srv->zctx, cfg->endpoint, cfg->curve);
    } else {
        srv->sock = wire_router_bind(srv->zctx, cfg->endpoint);
    }
    srv->cfg.curve = NULL;  /* borrowed for the bind only */
    if (!srv->sock)
        goto err;
    /* The per-peer outbound budget: two adapters' chunks and some small
     * messages; a peer that does not read stops receiving (EAGAIN, logged)
     * instead of growing the coordinator. Applies to each new connection. */
    int hwm = (int)(2 * wire_n_chunks(cfg->lora.n_params) + 256);
    zmq_setsockopt(srv->sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    return srv;
err:
    server_destroy(&srv);
    return NULL;
}

void server_destroy(server **srv_p)
{
    if (!srv_p || !*srv_p)
        return;
    server *srv = *srv_p;
    if (srv->sock)
        zmq_close(srv->sock);
    fp_zap_stop(&srv->zap);    /* its socket must close before the context ends */
    if (srv->zctx)
        zmq_ctx_term(srv->zctx);
    free(srv->workers);
    free(srv);
    *srv_p = NULL;
}

void server_set_hooks(server *srv, const server_hooks *hooks) { srv->hooks = *hooks; }

uint64_t server_keys_refused(const server *srv) { return fp_zap_refused(srv->zap); }

void server_set_linger(server *srv, int ms)
{
    zmq_setsockopt(srv->sock, ZMQ_LINGER, &ms, sizeof ms);
}

/* ---- registry ---------------------------------------------------------------- */

int server_n_workers(const server *srv) { return srv->n_workers; }
const worker_info *server_worker(const server *srv, int i) { return &srv->workers[i]; }

int server_n_live(const server *srv)
{
    int n = 0;
    for (int i = 0; i < srv->n_workers; i++)
        n += srv->workers[i].alive;
    return n;
}

double server_weight(const server *srv, int w, uint64_t declared)
{
    fp_allow_policy pol = {0};
    if (srv->zap)
        (void)fp_zap_lookup(srv->zap, srv->workers[w].id, &pol);
    if (pol.weight > 0)
        return pol.weight;
    if (srv->cfg.weighting_equal)
        return 1.0;
    uint64_t n = declared ? declared : 1;
    if (srv->cfg.max_examples && n > srv->cfg.max_examples)
        n = srv->cfg.max_examples;
    if (pol.max_examples && n > pol.max_examples)
        n = pol.max_examples;
    return (double)n;
}

static int find_worker(const server *srv, const char *rid)
{
    if (!rid || !*rid)
        return -1;
    for (int i = 0; i < srv->n_workers; i++)
        if (strcmp(srv->workers[i].id, rid) == 0)
            return i;
    return -1;
}

static void touch(server *srv, int w, int64_t now)
{
    worker_info *wi = &srv->workers[w];
    wi->last_seen_ms = now;
    if (!wi->alive) {
        wi->alive = 1;
        clog_info("worker %s is alive again (%d live)", wi->id, server_n_live(srv));
    }
}

static void check_liveness(server *srv, int64_t now)
{
    int64_t limit = 3 * (int64_t)srv->cfg.heartbeat_ms;
    for (int i = 0; i < srv->n_workers; i++) {
        worker_info *wi = &srv->workers[i];
        if (!wi->alive || now - wi->last_seen_ms <= limit)
            continue;
        wi->alive = 0;
        clog_info("worker %s is dead: no message for %lld ms (%d live)", wi->id,
                  (long long)(now - wi->last_seen_ms), server_n_live(srv));
        if (srv->hooks.on_dead)
            srv->hooks.on_dead(srv->hooks.ctx, i);
    }
}

/* ---- sending -------------------------------------------------------------------- */

static int send_to(server *srv, const char *rid, wire_msg *env)
{
    env->version = WIRE_PROTOCOL_VERSION;
    size_t bytes = fedpeft__envelope__get_packed_size(env);
    if (wire_send(srv->sock, rid, env) < 0)
        return -1;
    srv->bytes_down += bytes;
    return 0;
}

int server_send(server *srv, int worker, wire_msg *env)
{
    const char *rid = srv->workers[worker].route;
    if (send_to(srv, rid, env) < 0) {
        clog_info("cannot send to worker %s: %s", srv->workers[worker].id, fp_error_get());
        return -1;
    }
    return 0;
}

int server_send_slab(server *srv, int worker, uint64_t task_id, const float *slab, size_t n)
{
    uint32_t n_chunks = wire_n_chunks(n);
    for (uint32_t i = 0; i < n_chunks; i++) {
        size_t off = (size_t)i * WIRE_CHUNK_FLOATS;
        size_t len = n - off < WIRE_CHUNK_FLOATS ? n - off : WIRE_CHUNK_FLOATS;
        Fedpeft__TensorChunk c = FEDPEFT__TENSOR_CHUNK__INIT;
        c.task_id = task_id;
        c.index = i;
        c.offset = off;
        c.n_data = len;
        c.data = (float *)(slab + off);
        wire_msg env = FEDPEFT__ENVELOPE__INIT;
        env.body_case = FEDPEFT__ENVELOPE__BODY_CHUNK;
        env.chunk = &c;
        if (server_send(srv, worker, &env) < 0)
            return -1;
    }
    return 0;
}

static void reject_v(server *srv, int worker, const char *rid, reject_reason why,
                     Fedpeft__Reject__Code code, const char *fmt, va_list ap)
{
    char reason[512];
    vsnprintf(reason, sizeof reason, fmt, ap);
    const char *name = rid;
    if (worker >= 0) {
        rid = srv->workers[worker].route;
        name = srv->workers[worker].id;
    }
    srv->rejected[why]++;
    const char *who = srv->cur_user && *srv->cur_user ? srv->cur_user : name;
    if (!gate_pass(srv, who, clog_now_ms()))
        return;
    clog_info("rejected (%s) from %s: %s", reject_reason_name(why),
              name && *name ? name : "an unnamed peer", reason);
    if (!rid || !*rid)
        return;
    Fedpeft__Reject r = FEDPEFT__REJECT__INIT;
    r.code = code;
    r.reason = reason;
    wire_msg env = FEDPEFT__ENVELOPE__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_REJECT;
    env.reject = &r;
    (void)send_to(srv, rid, &env); /* the peer may be gone: nothing to do */
}

void server_reject(server *srv, int worker, const char *rid, reject_reason why,
                   Fedpeft__Reject__Code code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    reject_v(srv, worker, rid, why, code, fmt, ap);
    va_end(ap);
}

/* Every registered worker, the ones marked dead too: a worker busy past 3
 * heartbeats (e.g. a long evaluation, which sends none) is still connected, and
 * without SHUTDOWN it would retry a coordinator that has gone. A send to a peer
 * that really left fails (ROUTER_MANDATORY) and is only logged. */
void server_shutdown_workers(server *srv, const char *reason)
{
    for (int i = 0; i < srv->n_workers; i++) {
        Fedpeft__Reject r = FEDPEFT__REJECT__INIT;
        r.code = FEDPEFT__REJECT__CODE__SHUTDOWN;
        r.reason = (char *)reason;
        wire_msg env = FEDPEFT__ENVELOPE__INIT;
        env.body_case = FEDPEFT__ENVELOPE__BODY_REJECT;
        env.reject = &r;
        (void)server_send(srv, i, &env);
    }
}

void server_take_counters(server *srv, uint64_t rejected[REJ_COUNT], uint64_t *bytes_up,
                          uint64_t *bytes_down)
{
    memcpy(rejected, srv->rejected, sizeof srv->rejected);
    *bytes_up = srv->bytes_up;
    *bytes_down = srv->bytes_down;
    memset(srv->rejected, 0, sizeof srv->rejected);
    srv->bytes_up = srv->bytes_down = 0;
}

void server_set_round(server *srv, uint64_t round) { srv->round = round; }

void server_peek_counters(const server *srv, uint64_t rejected[REJ_COUNT], uint64_t *bytes_up,
                          uint64_t *bytes_down)
{
    memcpy(rejected, srv->rejected, sizeof srv->rejected);
    *bytes_up = srv->bytes_up;
    *bytes_down = srv->bytes_down;
}

void server_set_observer(server *srv, void (*fn)(void *ctx), void *ctx)
{
    srv->observer = fn;
    srv->observer_ctx = ctx;
}

/* ---- dispatch ------------------------------------------------------------------ */

/* route: the session's routing id; id: who it is (the part before '#'). */
static void handle_hello(server *srv, const char *rid, const char *id, const Fedpeft__Hello *h,
                         int64_t now)
{
    if (strcmp(h->worker_id, id) != 0) {
        server_reject(srv, -1, rid, REJ_INVALID, FEDPEFT__REJECT__CODE__BAD_MESSAGE,
                      "Hello names worker '%.64s' but its socket's routing id is '%s'",
                      h->worker_id, rid);
        return;
    }
    if (strcmp(h->model_hash, srv->model_hash) != 0) {
        server_reject(srv, -1, rid, REJ_MODEL, FEDPEFT__REJECT__CODE__MODEL,
                      "base model differs: worker %.12s..., coordinator %.12s...: the "
                      "worker's [model] path points to a different base model",
                      h->model_hash, srv->model_hash);
        return;
    }
    Fedpeft__LoraSpec spec = srv->cfg.lora;
    if (h->rank != 0 && h->rank != spec.rank) {
        if (srv->cfg.rank_refusal || h->rank > spec.rank) {
            server_reject(srv, -1, rid, REJ_INVALID, FEDPEFT__REJECT__CODE__RANK,
                          "worker asks for LoRA rank %u, the run's [lora] rank is %u: %s",
                          h->rank, spec.rank,
                          h->rank > spec.rank ? "a worker's rank may only be smaller"
                                              : srv->cfg.rank_refusal);
            return;
        }
        spec.n_params = spec.n_params / spec.rank * h->rank; /* n is linear in r */
        spec.rank = h->rank;
    }
    int w = find_worker(srv, id);
    if (w < 0) {
        if (srv->n_workers >= SERVER_MAX_WORKERS) {
            server_reject(srv, -1, rid, REJ_INVALID, FEDPEFT__REJECT__CODE__OTHER,
                          "too many workers: this coordinator registers at most %d",
                          SERVER_MAX_WORKERS);
            return;
        }
        w = srv->n_workers++;
        snprintf(srv->workers[w].id, sizeof srv->workers[w].id, "%s", id);
    }
    worker_info *wi = &srv->workers[w];
    if (wi->banned) {
        server_reject(srv, -1, rid, REJ_IDENTITY, FEDPEFT__REJECT__CODE__IDENTITY,
                      "the key of worker '%s' was removed from the allowlist", id);
        return;
    }
    if (now - wi->hello_window_ms >= SERVER_GATE_WINDOW_MS) {
        wi->hello_window_ms = now;
        wi->hellos = 0;
    }
    if (++wi->hellos > SERVER_HELLO_BURST) {
        server_reject(srv, w, NULL, REJ_FLOOD, FEDPEFT__REJECT__CODE__OTHER,
                      "more than %d Hellos in %d s from '%s': ignored", SERVER_HELLO_BURST,
                      SERVER_GATE_WINDOW_MS / 1000, wi->id);
        return;
    }
    fp_allow_policy pol = {0};
    if (srv->zap)
        (void)fp_zap_lookup(srv->zap, id, &pol);
    if (pol.has_sign && (h->sign_pk.len != 32 || sodium_memcmp(h->sign_pk.data, pol.sign_pk, 32))) {
        server_reject(srv, -1, rid, REJ_IDENTITY, FEDPEFT__REJECT__CODE__IDENTITY,
                      "worker '%s' says Hello with %s signing key than its allowlist line's "
                      "sign= key", id, h->sign_pk.len ? "another" : "no");
        return;
    }
    if (wi->route[0] && strcmp(wi->route, rid) != 0 && h->session && h->session == wi->session &&
        h->attempt < wi->attempt) {
        /* the same process's abandoned socket, its Hello delivered late: the
         * live session (a later attempt) stays */
        server_reject(srv, -1, rid, REJ_LATE, FEDPEFT__REJECT__CODE__STALE,
                      "Hello of connection attempt %u after attempt %u of the same worker "
                      "process: ignored", h->attempt, wi->attempt);
        return;
    }
    if (wi->route[0] && strcmp(wi->route, rid) != 0)
        clog_info("worker %s: a new session replaces the old one", id);
    wi->session = h->session;
    wi->attempt = h->attempt;
    snprintf(wi->route, sizeof wi->route, "%s", rid);   /* one live session per identity */
    wi->n_examples = h->n_train_examples;
    wi->weight = server_weight(srv, w, h->n_train_examples);
    wi->n_tokens = h->n_train_tokens;
    wi->rank = (int)spec.rank;
    wi->n_folds = h->n_folds;
    wi->secagg_task = h->secagg_task_id;
    wi->has_sign = pol.has_sign || h->sign_pk.len == 32;
    wi->sign_pinned = pol.has_sign;
    if (wi->has_sign)
        memcpy(wi->sign_pk, pol.has_sign ? pol.sign_pk : h->sign_pk.data, 32);
    snprintf(wi->fold_run, sizeof wi->fold_run, "%s", h->n_folds ? h->fold_run_id : "");
    wi->alive = 1;
    wi->last_seen_ms = now;
    clog_info("worker %s registered: %llu examples (weight %g), %llu tokens (%d live)", wi->id,
              (unsigned long long)wi->n_examples, wi->weight, (unsigned long long)wi->n_tokens,
              server_n_live(srv));
    Fedpeft__Welcome wel = FEDPEFT__WELCOME__INIT;
    wel.run_id = srv->run_id;
    wel.lora = &spec;
    wel.heartbeat_ms = (uint32_t)srv->cfg.heartbeat_ms;
    wire_msg env = FEDPEFT__ENVELOPE__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_WELCOME;
    env.welcome = &wel;
    if (server_send(srv, w, &env) < 0)
        return;
    if (srv->hooks.on_hello)
        srv->hooks.on_hello(srv->hooks.ctx, w);
}

static void handle_bad_frame(server *srv, const char *rid, const char *id, const char *user,
                             wire_err why)
{
    static const reject_reason map[WIRE_ERR_COUNT] = {
        [WIRE_ERR_OVERSIZED] = REJ_OVERSIZED, [WIRE_ERR_UNDECODABLE] = REJ_UNDECODABLE,
        [WIRE_ERR_VERSION] = REJ_VERSION, [WIRE_ERR_INVALID] = REJ_INVALID,
    };
    reject_reason r = (unsigned)why < WIRE_ERR_COUNT && why != WIRE_OK ? map[why]
                                                                        : REJ_UNDECODABLE;
    /* Only the worker's own key, in its current session, speaks for it. */
    int w = find_worker(srv, id);
    if (w >= 0 && ((srv->zap && strcmp(id, user) != 0) || strcmp(srv->workers[w].route, rid)))
        w = -1;
    if (w >= 0)
        touch(srv, w, clog_now_ms());
    char msg[512];
    snprintf(msg, sizeof msg, "%s", fp_error_get());
    if (r == REJ_VERSION)
        server_reject(srv, w, rid, r, FEDPEFT__REJECT__CODE__VERSION,
                      "protocol version differs: %s", msg);
    else
        server_reject(srv, w, rid, r, FEDPEFT__REJECT__CODE__BAD_MESSAGE, "%s", msg);
    if (w >= 0 && srv->hooks.on_bad_frame)
        srv->hooks.on_bad_frame(srv->hooks.ctx, w);
}

static const char *body_name(Fedpeft__Envelope__BodyCase c)
{
    switch (c) {
    case FEDPEFT__ENVELOPE__BODY_WELCOME: return "Welcome";
    case FEDPEFT__ENVELOPE__BODY_REJECT: return "Reject";
    case FEDPEFT__ENVELOPE__BODY_TASK: return "Task";
    case FEDPEFT__ENVELOPE__BODY_PULL: return "Pull";
    default: return "this message";
    }
}

/* CURVE: the key decides who a peer is. Its ZAP User-Id is the one worker id
 * its allowlist line grants; a message under another id is an impostor or a
 * Sybil, and a key removed from the allowlist since it connected is out. The
 * Reject goes to the sender's own session (routing ids carry a random part,
 * so it cannot be another worker's). 0 when the message may go on. */
static int identity_refused(server *srv, const char *rid, const char *id, const char *user,
                            const wire_msg *msg)
{
    if (!srv->zap)
        return 0;   /* --insecure: ids are unauthenticated (said at start) */
    if (!fp_zap_lookup(srv->zap, user, NULL)) {
        server_reject(srv, -1, rid, REJ_IDENTITY, FEDPEFT__REJECT__CODE__IDENTITY,
                      "the key of worker '%s' is no longer in the allowlist", user);
        return 1;
    }
    if (strcmp(id, user) == 0)
        return 0;
    server_reject(srv, -1, rid, REJ_IDENTITY, FEDPEFT__REJECT__CODE__IDENTITY,
                  "the key allowlisted as '%s' may only use the id '%s', not '%s' (%s)", user,
                  user, id, msg->body_case == FEDPEFT__ENVELOPE__BODY_HELLO ? "Hello"
                                                                            : "a message");
    return 1;
}

/* After a SIGHUP reload: a registered worker whose id left the allowlist is
 * told and dropped (its rounds count it as dead). */
static void recheck_registry(server *srv)
{
    uint64_t g = fp_zap_generation(srv->zap);
    if (!srv->zap || g == srv->zap_generation)
        return;
    srv->zap_generation = g;
    for (int i = 0; i < srv->n_workers; i++) {
        worker_info *wi = &srv->workers[i];
        if (wi->banned || fp_zap_lookup(srv->zap, wi->id, NULL))
            continue;
        server_reject(srv, i, NULL, REJ_IDENTITY, FEDPEFT__REJECT__CODE__IDENTITY,
                      "the key of worker '%s' was removed from the allowlist: session ended",
                      wi->id);
        wi->banned = 1;
        if (wi->alive) {
            wi->alive = 0;
            if (srv->hooks.on_dead)
                srv->hooks.on_dead(srv->hooks.ctx, i);
        }
    }
}

static void handle_msg(server *srv, const char *rid, const char *id, const char *user,
                       const wire_msg *msg, int64_t now)
{
    srv->bytes_up += fedpeft__envelope__get_packed_size(msg);
    if (identity_refused(srv, rid, id, user, msg))
        return;
    if (msg->body_case == FEDPEFT__ENVELOPE__BODY_HELLO) {
        handle_hello(srv, rid, id, msg->hello, now);
        return;
    }
    int w = find_worker(srv, id);
    if (w >= 0 && strcmp(srv->workers[w].route, rid) != 0) {
        server_reject(srv, -1, rid, REJ_IDENTITY, FEDPEFT__REJECT__CODE__IDENTITY,
                      "worker '%s' has a newer session: this one was replaced (one live "
                      "session per worker; is a second worker running with this id?)", id);
        return;
    }
    if (w < 0) {
        server_reject(srv, -1, rid, REJ_UNKNOWN_WORKER, FEDPEFT__REJECT__CODE__UNKNOWN_WORKER,
                      "unknown worker '%s': say Hello (the coordinator may have restarted)",
                      id);
        return;
    }
    touch(srv, w, now);
    switch (msg->body_case) {
    case FEDPEFT__ENVELOPE__BODY_HEARTBEAT: {
        Fedpeft__Heartbeat hb = FEDPEFT__HEARTBEAT__INIT;
        hb.round = srv->round;
        wire_msg env = FEDPEFT__ENVELOPE__INIT;
        env.body_case = FEDPEFT__ENVELOPE__BODY_HEARTBEAT;
        env.heartbeat = &hb;
        (void)server_send(srv, w, &env);
        break;
    }
    case FEDPEFT__ENVELOPE__BODY_UPDATE_READY:
    case FEDPEFT__ENVELOPE__BODY_CHUNK:
    case FEDPEFT__ENVELOPE__BODY_EVAL_RESULT:
    case FEDPEFT__ENVELOPE__BODY_SEALED_CHUNK:
    case FEDPEFT__ENVELOPE__BODY_ADVERTISE_KEYS:
    case FEDPEFT__ENVELOPE__BODY_SHARE_KEYS:
    case FEDPEFT__ENVELOPE__BODY_CONSISTENCY_SIG:
    case FEDPEFT__ENVELOPE__BODY_UNMASK_RESPONSE:
    case FEDPEFT__ENVELOPE__BODY_REFUSAL:
        if (srv->hooks.on_task_msg)
            srv->hooks.on_task_msg(srv->hooks.ctx, w, msg);
        break;
    default:
        server_reject(srv, w, NULL, REJ_INVALID, FEDPEFT__REJECT__CODE__BAD_MESSAGE,
                      "a worker does not send %s", body_name(msg->body_case));
        break;
    }
}

/* The worker id of routing id rid: the part before '#' ("id#random"; a
 * peer of ours always sends one). -1 for an id that was truncated (longer
 * than any of ours: two such would collide) or empty. */
static int route_identity(const char *rid, char id[WIRE_MAX_ID])
{
    size_t n = strlen(rid), k = strcspn(rid, "#");
    if (n + 1 >= WIRE_MAX_ROUTE)
        return fp_error_set("its routing id is longer than %d bytes", WIRE_MAX_ROUTE - 2);
    if (k == 0 || k >= WIRE_MAX_ID)
        return fp_error_set("its routing id '%.40s' has no worker id of 1..%d bytes before "
                            "'#'", rid, WIRE_MAX_ID - 1);
    memcpy(id, rid, k);
    id[k] = '\0';
    return 0;
}

/* Handles what is waiting. -1 only when the socket itself fails. */
static int drain(server *srv)
{
    for (int k = 0; k < SERVER_DRAIN_MAX; k++) {
        char rid[WIRE_MAX_ROUTE] = "", user[WIRE_MAX_ID] = "", id[WIRE_MAX_ID] = "";
        wire_msg *msg = NULL;
        wire_err why = WIRE_OK;
        int rc = wire_recv_user(srv->sock, ZMQ_DONTWAIT, rid, sizeof rid, user, sizeof user,
                                &msg, &why);
        if (rc == 0)
            return 0;
        if (route_identity(rid, id) < 0) {
            srv->rejected[REJ_INVALID]++;
            if (gate_pass(srv, user[0] ? user : "a peer with a bad routing id", clog_now_ms()))
                clog_info("dropped a message from %s: %s", user[0] ? user : "a peer",
                          fp_error_get());
            wire_msg_free(&msg);
            continue;
        }
        srv->cur_user = user;
        if (rc < 0)
            handle_bad_frame(srv, rid, id, user, why);
        else
            handle_msg(srv, rid, id, user, msg, clog_now_ms());
        srv->cur_user = NULL;
        wire_msg_free(&msg);
    }
    return 0;
}

int server_run(server *srv, volatile sig_atomic_t *stop)
{
    int liveness_ms = srv->cfg.heartbeat_ms / 2 > 0 ? srv->cfg.heartbeat_ms / 2 : 1;
    while (!*stop) {
        int64_t now = clog_now_ms();
        recheck_registry(srv);
        check_liveness(srv, now);
        int done = 0, wait = -1;
        if (srv->hooks.tick)
            wait = srv->hooks.tick(srv->hooks.ctx, now, &done);
        if (srv->observer)
            srv->observer(srv->observer_ctx);
        if (done)
            return 0;
        if (wait < 0 || wait > liveness_ms)
            wait = liveness_ms;
        zmq_pollitem_t item = {srv->sock, 0, ZMQ_POLLIN, 0};
        int rc = zmq_poll(&item, 1, wait);
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            return fp_error_set("zmq_poll: %s", zmq_strerror(errno));
        }
        if ((item.revents & ZMQ_POLLIN) && drain(srv) < 0)
            return -1;
    }
    return 1;
}
