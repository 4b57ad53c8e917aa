/* test_wire.c - envelopes, validation, chunks and real ZeroMQ sockets (common/wire.c).
 *
 * Sockets are real: a ROUTER bound to tcp://127.0.0.1:* (a free port) and
 * DEALERs connected to it, as the coordinator and workers use them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <zmq.h>

#include "test_util.h"
#include "wire.h"

#define RCV_MS 5000
#define HASH "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static void *ctx;

static int setup(void **state)
{
    (void)state;
    ctx = zmq_ctx_new();
    return ctx ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    zmq_ctx_term(ctx);
    return 0;
}

static void assert_contains(const char *hay, const char *needle)
{
    if (!strstr(hay, needle))
        fail_msg("expected '%s' in: %s", needle, hay);
}

static void set_rcvtimeo(void *s, int ms)
{
    assert_int_equal(zmq_setsockopt(s, ZMQ_RCVTIMEO, &ms, sizeof ms), 0);
}

/* A ROUTER on a free port; its endpoint goes to ep. */
static void *router(char *ep, size_t cap)
{
    void *r = wire_router_bind(ctx, "tcp://127.0.0.1:*");
    if (!r)
        fail_msg("bind: %s", fp_error_get());
    size_t len = cap;
    assert_int_equal(zmq_getsockopt(r, ZMQ_LAST_ENDPOINT, ep, &len), 0);
    set_rcvtimeo(r, RCV_MS);
    return r;
}

static void *dealer(const char *ep, const char *id)
{
    void *d = wire_dealer_connect(ctx, ep, id);
    if (!d)
        fail_msg("connect: %s", fp_error_get());
    set_rcvtimeo(d, RCV_MS);
    return d;
}

/* A DEALER without any of wire's options: a misbehaving peer. */
static void *raw_dealer(const char *ep, const char *id)
{
    void *d = zmq_socket(ctx, ZMQ_DEALER);
    assert_non_null(d);
    int zero = 0;
    assert_int_equal(zmq_setsockopt(d, ZMQ_LINGER, &zero, sizeof zero), 0);
    assert_int_equal(zmq_setsockopt(d, ZMQ_ROUTING_ID, id, strlen(id)), 0);
    assert_int_equal(zmq_connect(d, ep), 0);
    return d;
}

static wire_msg *recv_ok(void *s, char *rid, Fedpeft__Envelope__BodyCase expect)
{
    wire_msg *m = NULL;
    wire_err why;
    int rc = wire_recv(s, 0, rid, rid ? WIRE_MAX_ID : 0, &m, &why);
    if (rc != 1)
        fail_msg("wire_recv returned %d (%s): %s", rc, wire_err_name(why), fp_error_get());
    assert_non_null(m);
    assert_int_equal(m->version, WIRE_PROTOCOL_VERSION);
    assert_int_equal(m->body_case, expect);
    return m;
}

static void send_ok(int rc)
{
    if (rc != 0)
        fail_msg("send failed: %s", fp_error_get());
}

/* Packs env as a peer would (no validation); caller frees. */
static uint8_t *pack(wire_msg *env, size_t *len)
{
    *len = fedpeft__envelope__get_packed_size(env);
    uint8_t *buf = malloc(*len ? *len : 1);
    assert_non_null(buf);
    assert_int_equal(fedpeft__envelope__pack(env, buf), *len);
    return buf;
}

static void expect_decode_error(wire_msg *env, wire_err want, const char *needle)
{
    size_t len;
    uint8_t *buf = pack(env, &len);
    wire_err why = WIRE_OK;
    wire_msg *m = wire_decode(buf, len, &why);
    free(buf);
    if (m) {
        wire_msg_free(&m);
        fail_msg("decoded a message that should fail (%s)", needle);
    }
    if (why != want)
        fail_msg("expected %s, got %s: %s", wire_err_name(want), wire_err_name(why),
                 fp_error_get());
    assert_contains(fp_error_get(), needle);
}

/* ---- round trips ------------------------------------------------------------ */

static void test_round_trips(void **state)
{
    (void)state;
    char ep[256], rid[WIRE_MAX_ID];
    void *r = router(ep, sizeof ep);
    void *d = dealer(ep, "worker-1");
    wire_msg *m;

    send_ok(wire_send_hello(d, "worker-1", HASH, 1234, 56789));
    m = recv_ok(r, rid, FEDPEFT__ENVELOPE__BODY_HELLO);
    assert_string_equal(rid, "worker-1");
    assert_string_equal(m->hello->worker_id, "worker-1");
    assert_string_equal(m->hello->model_hash, HASH);
    assert_true(m->hello->n_train_examples == 1234 && m->hello->n_train_tokens == 56789);
    wire_msg_free(&m);
    assert_null(m);

    Fedpeft__Envelope env = FEDPEFT__ENVELOPE__INIT;
    Fedpeft__Welcome w = FEDPEFT__WELCOME__INIT;
    Fedpeft__LoraSpec ls = FEDPEFT__LORA_SPEC__INIT;
    ls.rank = 8;
    ls.alpha = 16;
    ls.targets = 0x5;
    ls.use_rslora = 1;
    ls.n_params = 600000;
    w.run_id = "run-7";
    w.lora = &ls;
    w.heartbeat_ms = 1000;
    env.body_case = FEDPEFT__ENVELOPE__BODY_WELCOME;
    env.welcome = &w;
    send_ok(wire_send(r, "worker-1", &env));
    m = recv_ok(d, NULL, FEDPEFT__ENVELOPE__BODY_WELCOME);
    assert_string_equal(m->welcome->run_id, "run-7");
    assert_non_null(m->welcome->lora);
    assert_int_equal(m->welcome->lora->rank, 8);
    assert_true(m->welcome->lora->alpha == 16.0f);
    assert_int_equal(m->welcome->lora->targets, 5);
    assert_int_equal(m->welcome->lora->use_rslora, 1);
    assert_true(m->welcome->lora->n_params == 600000);
    assert_int_equal(m->welcome->heartbeat_ms, 1000);
    wire_msg_free(&m);

    send_ok(wire_send_reject(r, "worker-1", FEDPEFT__REJECT__CODE__MODEL, "wrong\nmodel"));
    m = recv_ok(d, NULL, FEDPEFT__ENVELOPE__BODY_REJECT);
    assert_int_equal(m->reject->code, FEDPEFT__REJECT__CODE__MODEL);
    assert_string_equal(m->reject->reason, "wrong?model"); /* control bytes sanitized */
    wire_msg_free(&m);

    send_ok(wire_send_heartbeat(d, NULL, 3, 1));
    m = recv_ok(r, rid, FEDPEFT__ENVELOPE__BODY_HEARTBEAT);
    assert_string_equal(rid, "worker-1");
    assert_true(m->heartbeat->round == 3 && m->heartbeat->busy);
    wire_msg_free(&m);
    send_ok(wire_send_heartbeat(r, "worker-1", 4, 0));
    m = recv_ok(d, NULL, FEDPEFT__ENVELOPE__BODY_HEARTBEAT);
    assert_true(m->heartbeat->round == 4 && !m->heartbeat->busy);
    wire_msg_free(&m);

    send_ok(wire_send_pull(r, "worker-1", 17));
    m = recv_ok(d, NULL, FEDPEFT__ENVELOPE__BODY_PULL);
    assert_true(m->pull->task_id == 17);
    wire_msg_free(&m);

    Fedpeft__Task t = FEDPEFT__TASK__INIT;
    Fedpeft__TrainParams p = FEDPEFT__TRAIN_PARAMS__INIT;
    p.local_steps = 20;
    p.batch = 4;
    p.seq = 128;
    p.lr = 2e-4f;
    p.optimizer = 1;
    p.weight_decay = 0.01f;
    p.max_grad_norm = 1.0f;
    p.seed = UINT64_MAX;
    t.kind = FEDPEFT__TASK__KIND__TRAIN;
    t.round = 5;
    t.task_id = 99;
    t.params = &p;
    t.n_chunks = 3;
    t.deadline_unix_ms = 1700000000000ull;
    env = (Fedpeft__Envelope)FEDPEFT__ENVELOPE__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_TASK;
    env.task = &t;
    send_ok(wire_send(r, "worker-1", &env));
    m = recv_ok(d, NULL, FEDPEFT__ENVELOPE__BODY_TASK);
    assert_int_equal(m->task->kind, FEDPEFT__TASK__KIND__TRAIN);
    assert_true(m->task->round == 5 && m->task->task_id == 99 && m->task->n_chunks == 3);
    assert_true(m->task->deadline_unix_ms == 1700000000000ull);
    assert_non_null(m->task->params);
    assert_int_equal(m->task->params->local_steps, 20);
    assert_int_equal(m->task->params->batch, 4);
    assert_int_equal(m->task->params->seq, 128);
    assert_true(m->task->params->lr == 2e-4f);
    assert_int_equal(m->task->params->optimizer, 1);
    assert_true(m->task->params->weight_decay == 0.01f);
    assert_true(m->task->params->max_grad_norm == 1.0f);
    assert_true(m->task->params->seed == UINT64_MAX);
    wire_msg_free(&m);

    Fedpeft__UpdateReady u = FEDPEFT__UPDATE_READY__INIT;
    u.task_id = 99;
    u.round = 5;
    u.n_examples = 80;
    u.n_tokens = 10240;
    u.train_loss = 2.5f;
    u.n_chunks = 3;
    env = (Fedpeft__Envelope)FEDPEFT__ENVELOPE__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_UPDATE_READY;
    env.update_ready = &u;
    send_ok(wire_send(d, NULL, &env));
    m = recv_ok(r, rid, FEDPEFT__ENVELOPE__BODY_UPDATE_READY);
    assert_string_equal(rid, "worker-1");
    assert_true(m->update_ready->task_id == 99 && m->update_ready->round == 5);
    assert_true(m->update_ready->n_examples == 80 && m->update_ready->n_tokens == 10240);
    assert_true(m->update_ready->train_loss == 2.5f && m->update_ready->n_chunks == 3);
    wire_msg_free(&m);

    Fedpeft__EvalResult e = FEDPEFT__EVAL_RESULT__INIT;
    e.task_id = 100;
    e.round = 5;
    e.loss = 1.8125;
    e.n_tokens = 4096;
    env = (Fedpeft__Envelope)FEDPEFT__ENVELOPE__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_EVAL_RESULT;
    env.eval_result = &e;
    send_ok(wire_send(d, NULL, &env));
    m = recv_ok(r, rid, FEDPEFT__ENVELOPE__BODY_EVAL_RESULT);
    assert_true(m->eval_result->task_id == 100 && m->eval_result->round == 5);
    assert_true(m->eval_result->loss == 1.8125 && m->eval_result->n_tokens == 4096);
    wire_msg_free(&m);

    /* Nothing waiting: 0, not an error. */
    wire_err why = WIRE_INVALID_SENTINEL_UNUSED;
    (void)why;
    zmq_close(d);
    zmq_close(r);
}
