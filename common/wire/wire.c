/* wire.c - messages on the wire: sockets, envelopes, validation, chunks (wire.h).
 *
 * Nothing a peer sends is used before it is bounded: libzmq drops a peer that
 * sends more than WIRE_MAX_MSG_BYTES (ZMQ_MAXMSGSIZE), wire_decode checks the
 * size again before protobuf-c allocates anything (whose allocations are then
 * bounded by the frame), and every body's fields are checked against the
 * protocol's limits before the message is handed out.
 */
#include "wire.h"
#include "wire_secagg.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <zmq.h>

#include "lora.h"
#include "optim.h"

#define WIRE_MAX_CHUNKS ((uint32_t)(WIRE_MAX_ADAPTER_FLOATS / WIRE_CHUNK_FLOATS + 1))
#define WIRE_MAX_REASON 1024        /* Reject.reason bytes */
#define WIRE_HWM 10000              /* messages queued per peer */
#define WIRE_DEALER_SNDTIMEO 5000   /* ms a worker's send may wait */

static const char *const wire_err_names[WIRE_ERR_COUNT] = {
    "ok", "oversized", "undecodable", "version", "invalid",
};

const char *wire_err_name(wire_err e)
{
    return (unsigned)e < WIRE_ERR_COUNT ? wire_err_names[e] : "unknown";
}

/* ---- validation ----------------------------------------------------------- */

static const char *wire_str(const char *s) { return s ? s : ""; }

/* A worker or run id: 1..WIRE_MAX_ID-1 bytes of printable ASCII, no spaces. */
static int wire_check_id(const char *what, const char *s)
{
    s = wire_str(s);
    size_t len = strnlen(s, WIRE_MAX_ID);
    if (len == 0)
        return fp_error_set("%s is empty", what);
    if (len >= WIRE_MAX_ID)
        return fp_error_set("%s is longer than %d bytes", what, WIRE_MAX_ID - 1);
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
            return fp_error_set("%s has a byte 0x%02x at %zu; ids are printable ASCII "
                                "without spaces", what, (unsigned char)s[i], i);
    return 0;
}

static int wire_check_hash(const char *s)
{
    s = wire_str(s);
    size_t len = strnlen(s, 65);
    int ok = len == 64;
    for (size_t i = 0; ok && i < len; i++)
        ok = (s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f');
    if (!ok)
        return fp_error_set("model_hash is not 64 lowercase hex digits (a SHA-256)");
    return 0;
}

static int wire_check_hello(const Fedpeft__Hello *h)
{
    if (wire_check_id("Hello.worker_id", h->worker_id) < 0)
        return -1;
    if (strchr(h->worker_id, WIRE_ROUTE_SEP))
        return fp_error_set("Hello.worker_id has a '%c'", WIRE_ROUTE_SEP);
    if (wire_check_hash(h->model_hash) < 0)
        return fp_error_prefix("Hello: ");
    if (h->n_folds > WIRE_MAX_FOLDS)
        return fp_error_set("Hello.n_folds is %" PRIu32 "; expected 0..%d", h->n_folds,
                            WIRE_MAX_FOLDS);
    if (h->n_folds > 0 && wire_check_id("Hello.fold_run_id", h->fold_run_id) < 0)
        return -1;
    if (h->sign_pk.len != 0 && (h->sign_pk.len != 32 || !h->sign_pk.data))
        return fp_error_set("Hello.sign_pk is %zu bytes; expected 32 (or none)", h->sign_pk.len);
    return 0;
}

static int wire_check_welcome(const Fedpeft__Welcome *w)
{
    if (wire_check_id("Welcome.run_id", w->run_id) < 0)
        return -1;
    const Fedpeft__LoraSpec *l = w->lora;
    if (!l)
        return fp_error_set("Welcome has no lora spec");
    if (l->rank < 1 || l->rank > 4096)
        return fp_error_set("Welcome.lora.rank is %" PRIu32 "; expected 1..4096", l->rank);
    if (!isfinite(l->alpha) || l->alpha <= 0)
        return fp_error_set("Welcome.lora.alpha is %g; expected a positive number",
                            (double)l->alpha);
    if (l->targets == 0 || l->targets >= (1u << FP_T_COUNT))
        return fp_error_set("Welcome.lora.targets is 0x%" PRIx32 "; expected 1..0x%x",
                            l->targets, (1u << FP_T_COUNT) - 1);
    if (l->n_params < 1 || l->n_params > WIRE_MAX_ADAPTER_FLOATS)
        return fp_error_set("Welcome.lora.n_params is %" PRIu64 "; expected 1..%" PRIu64,
                            l->n_params, WIRE_MAX_ADAPTER_FLOATS);
    if (w->heartbeat_ms < 1 || w->heartbeat_ms > 3600000)
        return fp_error_set("Welcome.heartbeat_ms is %" PRIu32 "; expected 1..3600000",
                            w->heartbeat_ms);
    return 0;
}

/* Replaces control bytes in a peer's text (it ends up in logs) with '?'. */
static void wire_sanitize(char *s)
{
    for (; s && *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            *s = '?';
}

static int wire_check_reject(Fedpeft__Reject *r)
{
    if ((unsigned)r->code > FEDPEFT__REJECT__CODE__RANK)
        return fp_error_set("Reject.code %d is not a known code", (int)r->code);
    if (strnlen(wire_str(r->reason), WIRE_MAX_REASON) >= WIRE_MAX_REASON)
        return fp_error_set("Reject.reason is longer than %d bytes", WIRE_MAX_REASON - 1);
    wire_sanitize(r->reason);
    return 0;
}

/* A worker's Refusal: a one-line reason (sanitized) and an optional peer id. */
static int wire_check_refusal(Fedpeft__Refusal *r)
{
    if (strnlen(wire_str(r->reason), WIRE_MAX_REASON) >= WIRE_MAX_REASON)
        return fp_error_set("Refusal.reason is longer than %d bytes", WIRE_MAX_REASON - 1);
    if (strnlen(wire_str(r->about), WIRE_MAX_ID) >= WIRE_MAX_ID)
        return fp_error_set("Refusal.about is longer than %d bytes", WIRE_MAX_ID - 1);
    wire_sanitize(r->reason);
    wire_sanitize(r->about);
    return 0;
}

static int wire_check_params(const Fedpeft__TrainParams *p)
{
    if (p->local_steps < 1 || p->local_steps > 10000000)
        return fp_error_set("Task.params.local_steps is %" PRIu32 "; expected 1..10000000",
                            p->local_steps);
    if (p->batch < 1 || p->batch > 65536)
        return fp_error_set("Task.params.batch is %" PRIu32 "; expected 1..65536", p->batch);
    if (p->seq < 1 || p->seq > 1048576)
        return fp_error_set("Task.params.seq is %" PRIu32 "; expected 1..1048576", p->seq);
    if (!isfinite(p->lr) || p->lr < 0)
        return fp_error_set("Task.params.lr is %g; expected a finite number >= 0",
                            (double)p->lr);
    if (p->optimizer > FP_OPT_SGD)
        return fp_error_set("Task.params.optimizer %" PRIu32 " is not a known optimizer",
                            p->optimizer);
    if (!isfinite(p->weight_decay) || p->weight_decay < 0)
        return fp_error_set("Task.params.weight_decay is %g; expected a finite number >= 0",
                            (double)p->weight_decay);
    if (!isfinite(p->max_grad_norm) || p->max_grad_norm < 0)
        return fp_error_set("Task.params.max_grad_norm is %g; expected a finite number >= 0",
                            (double)p->max_grad_norm);
    return 0;
}

static int wire_check_n_chunks(const char *what, uint32_t n)
{
    if (n > WIRE_MAX_CHUNKS)
        return fp_error_set("%s.n_chunks is %" PRIu32 "; at most %" PRIu32 " chunks exist",
                            what, n, WIRE_MAX_CHUNKS);
    return 0;
}

static int wire_check_task(const Fedpeft__Task *t)
{
    if ((unsigned)t->kind > FEDPEFT__TASK__KIND__EVAL)
        return fp_error_set("Task.kind %d is not TRAIN or EVAL", (int)t->kind);
    if (t->kind == FEDPEFT__TASK__KIND__TRAIN && !t->params)
        return fp_error_set("TRAIN Task %" PRIu64 " has no params", t->task_id);
    if (t->params && wire_check_params(t->params) < 0)
        return -1;
    if (t->n_fold_ranks > WIRE_MAX_FOLDS || t->fold_base > WIRE_MAX_FOLDS - t->n_fold_ranks)
        return fp_error_set("Task carries folds %" PRIu32 "..+%zu; at most %d folds in a run",
                            t->fold_base, t->n_fold_ranks, WIRE_MAX_FOLDS);
    for (size_t i = 0; i < t->n_fold_ranks; i++)
        if (t->fold_ranks[i] < 1 || t->fold_ranks[i] > WIRE_MAX_FOLD_RANK)
            return fp_error_set("Task.fold_ranks[%zu] is %" PRIu32 "; expected 1..%d", i,
                                t->fold_ranks[i], WIRE_MAX_FOLD_RANK);
    if (t->fold_reset && t->fold_base != 0)
        return fp_error_set("Task.fold_reset with fold_base %" PRIu32 " (expected 0)",
                            t->fold_base);
    if ((t->hold || t->from_update) && t->kind != FEDPEFT__TASK__KIND__TRAIN)
        return fp_error_set("EVAL Task %" PRIu64 " with hold or from_update (TRAIN only)",
                            t->task_id);
    if (t->from_update && (t->hold || t->n_chunks != 0 || t->scaffold || t->n_fold_ranks))
        return fp_error_set("Task %" PRIu64 " uploads held update %" PRIu64 " but also carries "
                            "an adapter, hold, folds or a control variate", t->task_id,
                            t->from_update);
    return wire_check_n_chunks("Task", t->n_chunks);
}

static int wire_check_chunk(const Fedpeft__TensorChunk *c)
{
    if (c->n_data < 1 || c->n_data > WIRE_CHUNK_FLOATS)
        return fp_error_set("chunk %" PRIu32 " of task %" PRIu64 " has %zu floats; "
                            "expected 1..%zu", c->index, c->task_id, c->n_data,
                            WIRE_CHUNK_FLOATS);
    if (c->n_data && !c->data)
        return fp_error_set("chunk %" PRIu32 " has no data", c->index);
    if (c->index >= WIRE_MAX_CHUNKS || c->offset >= WIRE_MAX_ADAPTER_FLOATS)
        return fp_error_set("chunk %" PRIu32 " of task %" PRIu64 " has offset %" PRIu64
                            "; beyond any adapter", c->index, c->task_id, c->offset);
    return 0;
}

static int wire_check_update_ready(const Fedpeft__UpdateReady *u)
{
    if (!isfinite(u->train_loss) || u->train_loss < 0)
        return fp_error_set("UpdateReady.train_loss is %g; expected a finite number >= 0",
                            (double)u->train_loss);
    return wire_check_n_chunks("UpdateReady", u->n_chunks);
}

static int wire_check_eval(const Fedpeft__EvalResult *e)
{
    if (!isfinite(e->loss) || e->loss < 0)
        return fp_error_set("EvalResult.loss is %g; expected a finite number >= 0", e->loss);
    return 0;
}

/* Checks the body of a decoded (or about to be sent) envelope. */
static int wire_validate(wire_msg *m)
{
    switch (m->body_case) {
    case FEDPEFT__ENVELOPE__BODY__NOT_SET:
        return fp_error_set("message has no body (none of hello, task, chunk, ... is set)");
    case FEDPEFT__ENVELOPE__BODY_HELLO: return m->hello ? wire_check_hello(m->hello) : -1;
    case FEDPEFT__ENVELOPE__BODY_WELCOME: return m->welcome ? wire_check_welcome(m->welcome) : -1;
    case FEDPEFT__ENVELOPE__BODY_REJECT: return m->reject ? wire_check_reject(m->reject) : -1;
    case FEDPEFT__ENVELOPE__BODY_TASK: return m->task ? wire_check_task(m->task) : -1;
    case FEDPEFT__ENVELOPE__BODY_CHUNK: return m->chunk ? wire_check_chunk(m->chunk) : -1;
    case FEDPEFT__ENVELOPE__BODY_UPDATE_READY:
        return m->update_ready ? wire_check_update_ready(m->update_ready) : -1;
    case FEDPEFT__ENVELOPE__BODY_PULL: return m->pull ? 0 : -1;
    case FEDPEFT__ENVELOPE__BODY_EVAL_RESULT:
        return m->eval_result ? wire_check_eval(m->eval_result) : -1;
    case FEDPEFT__ENVELOPE__BODY_HEARTBEAT: return m->heartbeat ? 0 : -1;
    case FEDPEFT__ENVELOPE__BODY_REFUSAL: return m->refusal ? wire_check_refusal(m->refusal) : -1;
    default: break;
    }
    return wire_check_secagg_body(m);   /* secagg / sealed bodies, or unknown */
}

wire_msg *wire_decode(const void *data, size_t len, wire_err *why)
{
    wire_err dummy;
    if (!why)
        why = &dummy;
    *why = WIRE_OK;
    if (len > (size_t)WIRE_MAX_MSG_BYTES) {
        *why = WIRE_ERR_OVERSIZED;
        fp_error_set("message of %zu bytes is larger than the limit of %" PRId64 " bytes",
                     len, WIRE_MAX_MSG_BYTES);
        return NULL;
    }
    if (len == 0) {
        *why = WIRE_ERR_UNDECODABLE;
        fp_error_set("empty message; expected a fedpeft Envelope");
        return NULL;
    }
    wire_msg *m = fedpeft__envelope__unpack(NULL, len, data);
    if (!m) {
        *why = WIRE_ERR_UNDECODABLE;
        fp_error_set("message of %zu bytes is not a valid fedpeft Envelope (protobuf)", len);
        return NULL;
    }
    if (m->version != WIRE_PROTOCOL_VERSION) {
        *why = WIRE_ERR_VERSION;
        fp_error_set("peer speaks protocol version %" PRIu32 ", we speak %u; run the same "
                     "fedpeft release on both sides", m->version, WIRE_PROTOCOL_VERSION);
        goto err;
    }
    if (wire_validate(m) < 0) {
        *why = WIRE_ERR_INVALID;
        fp_error_prefix("invalid message: ");
        goto err;
    }
    return m;
err:
    fedpeft__envelope__free_unpacked(m, NULL);
    return NULL;
}

void wire_msg_free(wire_msg **msg_p)
{
    if (!msg_p || !*msg_p)
        return;
    fedpeft__envelope__free_unpacked(*msg_p, NULL);
    *msg_p = NULL;
}

/* ---- sockets ---------------------------------------------------------------- */

static int wire_setopt_int(void *s, int opt, int v, const char *name)
{
    if (zmq_setsockopt(s, opt, &v, sizeof v) != 0)
        return fp_error_set("zmq_setsockopt(%s): %s", name, zmq_strerror(zmq_errno()));
    return 0;
}

static int wire_common_opts(void *s)
{
    int64_t max = WIRE_MAX_MSG_BYTES;
    if (zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &max, sizeof max) != 0)
        return fp_error_set("zmq_setsockopt(ZMQ_MAXMSGSIZE): %s", zmq_strerror(zmq_errno()));
    if (wire_setopt_int(s, ZMQ_LINGER, 0, "ZMQ_LINGER") < 0 ||
        wire_setopt_int(s, ZMQ_TCP_KEEPALIVE, 1, "ZMQ_TCP_KEEPALIVE") < 0 ||
        wire_setopt_int(s, ZMQ_SNDHWM, WIRE_HWM, "ZMQ_SNDHWM") < 0 ||
        wire_setopt_int(s, ZMQ_RCVHWM, WIRE_HWM, "ZMQ_RCVHWM") < 0)
        return -1;
    return 0;
}

/* CURVE server options; before bind (libzmq reads them per connection). */
static int wire_curve_server_opts(void *s, const fp_keypair *server)
{
    if (wire_setopt_int(s, ZMQ_CURVE_SERVER, 1, "ZMQ_CURVE_SERVER") < 0)
        return -1;
    if (zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, server->secret_key, FP_KEY_BYTES) != 0 ||
        zmq_setsockopt(s, ZMQ_ZAP_DOMAIN, ZAP_DOMAIN, strlen(ZAP_DOMAIN)) != 0)
        return fp_error_set("cannot enable CURVE on the ROUTER: %s (is libzmq built with "
                            "libsodium/CURVE support?)", zmq_strerror(zmq_errno()));
    return 0;
}

static void *wire_router_new(void *zctx, const char *endpoint, const fp_keypair *server)
{
    void *s = zmq_socket(zctx, ZMQ_ROUTER);
    if (!s) {
        fp_error_set("cannot create a ZeroMQ ROUTER socket: %s", zmq_strerror(zmq_errno()));
        return NULL;
    }
    if (wire_common_opts(s) < 0 ||
        wire_setopt_int(s, ZMQ_ROUTER_HANDOVER, 1, "ZMQ_ROUTER_HANDOVER") < 0 ||
        wire_setopt_int(s, ZMQ_ROUTER_MANDATORY, 1, "ZMQ_ROUTER_MANDATORY") < 0)
        goto err;
    if (server && wire_curve_server_opts(s, server) < 0)
        goto err;
    if (zmq_bind(s, endpoint) != 0) {
        int e = zmq_errno();
        if (e == EADDRINUSE)
            fp_error_set("port in use: %s: %s; is another coordinator running?", endpoint,
                         zmq_strerror(e));
        else
            fp_error_set("cannot bind %s: %s; expected e.g. tcp://0.0.0.0:5555", endpoint,
                         zmq_strerror(e));
        goto err;
    }
    return s;
err:
    zmq_close(s);
    return NULL;
}

void *wire_router_bind(void *zctx, const char *endpoint)
{
    return wire_router_new(zctx, endpoint, NULL);
}

void *wire_router_bind_curve(void *zctx, const char *endpoint, const fp_keypair *server)
{
    if (!server || !server->secret_key) {
        fp_error_set("wire_router_bind_curve: no server key pair");
        return NULL;
    }
    return wire_router_new(zctx, endpoint, server);
}

/* CURVE client options: our pair, and the one server key we trust. */
static int wire_curve_client_opts(void *s, const fp_keypair *client, const uint8_t *server_pub)
{
    if (zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, server_pub, FP_KEY_BYTES) != 0 ||
        zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, client->public_key, FP_KEY_BYTES) != 0 ||
        zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, client->secret_key, FP_KEY_BYTES) != 0)
        return fp_error_set("cannot enable CURVE on the DEALER: %s (is libzmq built with "
                            "libsodium/CURVE support?)", zmq_strerror(zmq_errno()));
    return 0;
}

static void *wire_dealer_new(void *zctx, const char *endpoint, const char *worker_id,
                             const fp_keypair *client, const uint8_t *server_pub)
{
    if (wire_check_id("worker id", worker_id) < 0)
        return NULL;
    if (strchr(worker_id, WIRE_ROUTE_SEP)) {
        fp_error_set("worker id '%s' has a '%c': it separates the id from the routing id's "
                     "random part", worker_id, WIRE_ROUTE_SEP);
        return NULL;
    }
    void *s = zmq_socket(zctx, ZMQ_DEALER);
    if (!s) {
        fp_error_set("cannot create a ZeroMQ DEALER socket: %s", zmq_strerror(zmq_errno()));
        return NULL;
    }
    if (wire_common_opts(s) < 0 ||
        wire_setopt_int(s, ZMQ_SNDTIMEO, WIRE_DEALER_SNDTIMEO, "ZMQ_SNDTIMEO") < 0)
        goto err;
    char route[WIRE_MAX_ROUTE];
    uint8_t nonce[8];
    if (getrandom(nonce, sizeof nonce, 0) != (ssize_t)sizeof nonce) {
        fp_error_set("getrandom: %s", strerror(errno));
        goto err;
    }
    int o = snprintf(route, sizeof route, "%s%c", worker_id, WIRE_ROUTE_SEP);
    for (size_t i = 0; i < sizeof nonce; i++)
        o += snprintf(route + o, sizeof route - (size_t)o, "%02x", nonce[i]);
    if (zmq_setsockopt(s, ZMQ_ROUTING_ID, route, strlen(route)) != 0) {
        fp_error_set("zmq_setsockopt(ZMQ_ROUTING_ID): %s", zmq_strerror(zmq_errno()));
        goto err;
    }
    if (client && wire_curve_client_opts(s, client, server_pub) < 0)
        goto err;
    if (zmq_connect(s, endpoint) != 0) {
        fp_error_set("cannot connect to %s: %s; expected e.g. tcp://coordinator:5555",
                     endpoint, zmq_strerror(zmq_errno()));
        goto err;
    }
    return s;
err:
    zmq_close(s);
    return NULL;
}

void *wire_dealer_connect(void *zctx, const char *endpoint, const char *worker_id)
{
    return wire_dealer_new(zctx, endpoint, worker_id, NULL, NULL);
}

void *wire_dealer_connect_curve(void *zctx, const char *endpoint, const char *worker_id,
                                const fp_keypair *client, const uint8_t server_pub[FP_KEY_BYTES])
{
    if (!client || !client->secret_key || !server_pub) {
        fp_error_set("wire_dealer_connect_curve: no client key pair or server key");
        return NULL;
    }
    return wire_dealer_new(zctx, endpoint, worker_id, client, server_pub);
}

static const char *wire_body_name(const wire_msg *m)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field(&fedpeft__envelope__descriptor,
                                                (unsigned)m->body_case);
    return f ? f->name : "message";
}

int wire_send(void *sock, const char *routing_id, wire_msg *env)
{
    zmq_msg_t msg;
    env->version = WIRE_PROTOCOL_VERSION;
    if (wire_validate(env) < 0)
        return fp_error_prefix("refusing to send an invalid %s: ", wire_body_name(env));
    size_t size = fedpeft__envelope__get_packed_size(env);
    if (size > (size_t)WIRE_MAX_MSG_BYTES)
        return fp_error_set("%s of %zu bytes exceeds the %" PRId64 "-byte message limit",
                            wire_body_name(env), size, WIRE_MAX_MSG_BYTES);
    if (zmq_msg_init_size(&msg, size) != 0)
        return fp_error_set("out of memory for a %zu-byte message", size);
    fedpeft__envelope__pack(env, zmq_msg_data(&msg));
    if (routing_id) {
        /* ROUTER: never block; MANDATORY makes an unknown peer EHOSTUNREACH. */
        if (zmq_send(sock, routing_id, strlen(routing_id), ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
            goto err;
        if (zmq_msg_send(&msg, sock, ZMQ_DONTWAIT) < 0)
            goto err;
    } else if (zmq_msg_send(&msg, sock, 0) < 0) {  /* DEALER: waits at most SNDTIMEO */
        goto err;
    }
    return 0;
err:;
    int e = zmq_errno();
    zmq_msg_close(&msg);
    if (routing_id && e == EHOSTUNREACH)
        return fp_error_set("worker %s is not connected", routing_id);
    if (e == EAGAIN)
        return fp_error_set("cannot send %s to %s: its queue is full or it is unreachable",
                            wire_body_name(env), routing_id ? routing_id : "the coordinator");
    return fp_error_set("sending %s: %s", wire_body_name(env), zmq_strerror(e));
}

/* A routing id as text: printable ids as they are, others as 0x + hex. */
static void wire_id_text(const zmq_msg_t *f, char *out, size_t cap)
{
    if (!out || cap == 0)
        return;
    const unsigned char *p = zmq_msg_data((zmq_msg_t *)f);
    size_t n = zmq_msg_size((zmq_msg_t *)f), o = 0;
    int printable = n > 0;
    for (size_t i = 0; i < n; i++)
        printable &= p[i] >= 0x21 && p[i] <= 0x7e;
    if (printable) {
        o = n < cap - 1 ? n : cap - 1;
        memcpy(out, p, o);
    } else {
        o = (size_t)snprintf(out, cap, "0x");
        for (size_t i = 0; i < n && o + 3 <= cap; i++)
            o += (size_t)snprintf(out + o, cap - o, "%02x", p[i]);
        if (o >= cap)
            o = cap - 1;
    }
    out[o] = '\0';
}

/* Reads and drops the rest of a multipart message; returns frames dropped. */
static int wire_drain(void *sock)
{
    int more = 0, n = 0;
    size_t sz = sizeof more;
    while (zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &sz) == 0 && more) {
        zmq_msg_t f;
        zmq_msg_init(&f);
        if (zmq_msg_recv(&f, sock, 0) < 0) {
            zmq_msg_close(&f);
            break;
        }
        zmq_msg_close(&f);
        n++;
        sz = sizeof more;
    }
    return n;
}

static int wire_more(void *sock)
{
    int more = 0;
    size_t sz = sizeof more;
    return zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &sz) == 0 && more;
}

int wire_recv(void *sock, int flags, char *routing_id, size_t cap, wire_msg **out,
              wire_err *why)
{
    return wire_recv_user(sock, flags, routing_id, cap, NULL, 0, out, why);
}

int wire_recv_user(void *sock, int flags, char *routing_id, size_t cap, char *user, size_t ucap,
                   wire_msg **out, wire_err *why)
{
    wire_err dummy;
    if (!why)
        why = &dummy;
    *out = NULL;
    *why = WIRE_OK;
    if (routing_id && cap)
        routing_id[0] = '\0';
    if (user && ucap)
        user[0] = '\0';
    int type = 0;
    size_t tsz = sizeof type;
    if (zmq_getsockopt(sock, ZMQ_TYPE, &type, &tsz) != 0)
        return fp_error_set("wire_recv: not a socket: %s", zmq_strerror(zmq_errno()));
    zmq_msg_t first, body;
    zmq_msg_init(&first);
    zmq_msg_init(&body);
    int rc = -1;
    if (zmq_msg_recv(&first, sock, flags) < 0) {
        int e = zmq_errno();
        if (e == EAGAIN || e == EINTR)
            rc = 0;
        else
            fp_error_set("receiving: %s", zmq_strerror(e));
        goto out;
    }
    const char *from = "the coordinator";
    char idbuf[2 * WIRE_MAX_ID + 4];
    zmq_msg_t *payload = &first;
    int frames = 1;
    if (type == ZMQ_ROUTER) {
        wire_id_text(&first, idbuf, sizeof idbuf);
        wire_id_text(&first, routing_id, cap);
        from = idbuf;
        if (wire_more(sock)) {
            zmq_msg_recv(&body, sock, 0);
            frames++;
            const char *u = zmq_msg_gets(&body, "User-Id");   /* set by our ZAP handler */
            if (user && ucap && u)
                snprintf(user, ucap, "%s", u);
        }
        payload = &body;
        if (frames < 2) {
            *why = WIRE_ERR_UNDECODABLE;
            fp_error_set("message from %s has no body frame", from);
            goto out;
        }
    }
    frames += wire_drain(sock);
    if (frames != (type == ZMQ_ROUTER ? 2 : 1)) {
        *why = WIRE_ERR_UNDECODABLE;
        fp_error_set("message from %s has %d frames; expected one frame holding an Envelope",
                     from, frames - (type == ZMQ_ROUTER));
        goto out;
    }
    *out = wire_decode(zmq_msg_data(payload), zmq_msg_size(payload), why);
    if (!*out) {
        fp_error_prefix("from %s: ", from);
        goto out;
    }
    rc = 1;
out:
    zmq_msg_close(&first);
    zmq_msg_close(&body);
    return rc;
}

/* ---- builders ---------------------------------------------------------------- */

int wire_send_hello(void *sock, const char *worker_id, const char *model_hash,
                    uint64_t n_examples, uint64_t n_tokens)
{
    Fedpeft__Envelope env = FEDPEFT__ENVELOPE__INIT;
    Fedpeft__Hello h = FEDPEFT__HELLO__INIT;
    h.worker_id = (char *)worker_id;
    h.model_hash = (char *)model_hash;
    h.n_train_examples = n_examples;
    h.n_train_tokens = n_tokens;
    env.body_case = FEDPEFT__ENVELOPE__BODY_HELLO;
    env.hello = &h;
    return wire_send(sock, NULL, &env);
}

int wire_send_reject(void *sock, const char *rid, Fedpeft__Reject__Code code,
                     const char *reason)
{
    Fedpeft__Envelope env = FEDPEFT__ENVELOPE__INIT;
    Fedpeft__Reject r = FEDPEFT__REJECT__INIT;
    char buf[WIRE_MAX_REASON];
    snprintf(buf, sizeof buf, "%s", reason ? reason : "");   /* truncates, never refuses */
    r.code = code;
    r.reason = buf;
    env.body_case = FEDPEFT__ENVELOPE__BODY_REJECT;
    env.reject = &r;
    return wire_send(sock, rid, &env);
}

int wire_send_heartbeat(void *sock, const char *rid, uint64_t round, int busy)
{
    Fedpeft__Envelope env = FEDPEFT__ENVELOPE__INIT;
    Fedpeft__Heartbeat hb = FEDPEFT__HEARTBEAT__INIT;
    hb.round = round;
    hb.busy = busy != 0;
    env.body_case = FEDPEFT__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    return wire_send(sock, rid, &env);
}

int wire_send_pull(void *sock, const char *rid, uint64_t task_id)
{
    Fedpeft__Envelope env = FEDPEFT__ENVELOPE__INIT;
    Fedpeft__Pull p = FEDPEFT__PULL__INIT;
    p.task_id = task_id;
    env.body_case = FEDPEFT__ENVELOPE__BODY_PULL;
    env.pull = &p;
    return wire_send(sock, rid, &env);
}

/* ---- chunks ------------------------------------------------------------------- */

uint32_t wire_n_chunks(size_t n)
{
    return (uint32_t)((n + WIRE_CHUNK_FLOATS - 1) / WIRE_CHUNK_FLOATS);
}

int wire_send_slab(void *sock, const char *rid, uint64_t task_id, const float *slab, size_t n)
{
    if (n > WIRE_MAX_ADAPTER_FLOATS)
        return fp_error_set("slab of %zu floats is larger than any adapter", n);
    uint32_t nc = wire_n_chunks(n);
    for (uint32_t i = 0; i < nc; i++) {
        Fedpeft__Envelope env = FEDPEFT__ENVELOPE__INIT;
        Fedpeft__TensorChunk c = FEDPEFT__TENSOR_CHUNK__INIT;
        size_t off = (size_t)i * WIRE_CHUNK_FLOATS;
        c.task_id = task_id;
        c.index = i;
        c.offset = off;
        c.n_data = n - off < WIRE_CHUNK_FLOATS ? n - off : WIRE_CHUNK_FLOATS;
        c.data = (float *)slab + off;   /* packed straight from the slab */
        env.body_case = FEDPEFT__ENVELOPE__BODY_CHUNK;
        env.chunk = &c;
        if (wire_send(sock, rid, &env) < 0)
            return fp_error_prefix("chunk %" PRIu32 " of %" PRIu32 " of task %" PRIu64 ": ",
                                   i, nc, task_id);
    }
    return 0;
}

void wire_asm_begin(wire_assembler *a, float *dst, size_t n, uint32_t n_chunks, uint64_t task_id)
{
    a->dst = dst;
    a->n = n;
    a->n_chunks = n_chunks;
    a->next = 0;
    a->task_id = task_id;
    a->filled = 0;
}

#define WIRE_ASM_BROKEN UINT32_MAX

static int wire_asm_fail(wire_assembler *a)
{
    a->next = WIRE_ASM_BROKEN;
    return -1;
}

int wire_asm_add(wire_assembler *a, const Fedpeft__TensorChunk *c)
{
    if (a->next == WIRE_ASM_BROKEN)
        return fp_error_set("chunk %" PRIu32 " of task %" PRIu64 ": an earlier chunk was "
                            "refused; the transfer must start again", c->index, c->task_id);
    if (a->n_chunks != wire_n_chunks(a->n)) {
        fp_error_set("task %" PRIu64 " announced %" PRIu32 " chunks, but %zu floats travel "
                     "in %" PRIu32, a->task_id, a->n_chunks, a->n, wire_n_chunks(a->n));
        return wire_asm_fail(a);
    }
    if (c->task_id != a->task_id) {
        fp_error_set("chunk %" PRIu32 " belongs to task %" PRIu64 ", not the current task %"
                     PRIu64, c->index, c->task_id, a->task_id);
        return wire_asm_fail(a);
    }
    if (a->next >= a->n_chunks || c->index >= a->n_chunks) {
        fp_error_set("chunk %" PRIu32 " of task %" PRIu64 " is one too many: the task has %"
                     PRIu32 " chunks", c->index, c->task_id, a->n_chunks);
        return wire_asm_fail(a);
    }
    if (c->index != a->next) {
        fp_error_set("chunk %" PRIu32 " of task %" PRIu64 " arrived when chunk %" PRIu32
                     " was expected; chunks must come in order", c->index, c->task_id, a->next);
        return wire_asm_fail(a);
    }
    if (c->offset != a->filled) {
        fp_error_set("chunk %" PRIu32 " of task %" PRIu64 " has offset %" PRIu64 " but %zu "
                     "floats have arrived; chunks must come in order", c->index, c->task_id,
                     c->offset, a->filled);
        return wire_asm_fail(a);
    }
    size_t want = a->n - a->filled < WIRE_CHUNK_FLOATS ? a->n - a->filled : WIRE_CHUNK_FLOATS;
    if (c->n_data != want) {
        fp_error_set("chunk %" PRIu32 " of task %" PRIu64 " has %zu floats; expected %zu "
                     "(%zu of %zu floats have arrived)", c->index, c->task_id, c->n_data, want,
                     a->filled, a->n);
        return wire_asm_fail(a);
    }
    for (size_t i = 0; i < want; i++) {
        if (!isfinite(c->data[i])) {
            fp_error_set("chunk %" PRIu32 " of task %" PRIu64 " has a non-finite value (%g) "
                         "at float %zu", c->index, c->task_id, (double)c->data[i],
                         a->filled + i);
            return wire_asm_fail(a);
        }
    }
    memcpy(a->dst + a->filled, c->data, want * sizeof(float));
    a->filled += want;
    a->next++;
    return 0;
}

int wire_asm_complete(const wire_assembler *a)
{
    return a->next != WIRE_ASM_BROKEN && a->next == a->n_chunks && a->filled == a->n;
}
