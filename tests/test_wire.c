/* test_wire.c - envelopes, validation, chunks and real ZeroMQ sockets (common/wire/wire.c).
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

/* A DEALER's routing id is "ID#" + 16 random hex digits (wire.h). */
static void assert_route(const char *rid, const char *id)
{
    size_t n = strlen(id);
    if (strncmp(rid, id, n) != 0 || rid[n] != '#' || strlen(rid + n + 1) != 16 ||
        strspn(rid + n + 1, "0123456789abcdef") != 16)
        fail_msg("routing id '%s' is not '%s#<16 hex>'", rid, id);
}

static wire_msg *recv_ok(void *s, char *rid, Fedpeft__Envelope__BodyCase expect)
{
    wire_msg *m = NULL;
    wire_err why;
    int rc = wire_recv(s, 0, rid, rid ? WIRE_MAX_ROUTE : 0, &m, &why);
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
    char ep[256], rid[WIRE_MAX_ROUTE];
    void *r = router(ep, sizeof ep);
    void *d = dealer(ep, "worker-1");
    wire_msg *m;

    send_ok(wire_send_hello(d, "worker-1", HASH, 1234, 56789));
    m = recv_ok(r, rid, FEDPEFT__ENVELOPE__BODY_HELLO);
    assert_route(rid, "worker-1");
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
    send_ok(wire_send(r, rid, &env));
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

    send_ok(wire_send_reject(r, rid, FEDPEFT__REJECT__CODE__MODEL, "wrong\nmodel"));
    m = recv_ok(d, NULL, FEDPEFT__ENVELOPE__BODY_REJECT);
    assert_int_equal(m->reject->code, FEDPEFT__REJECT__CODE__MODEL);
    assert_string_equal(m->reject->reason, "wrong?model"); /* control bytes sanitized */
    wire_msg_free(&m);

    send_ok(wire_send_heartbeat(d, NULL, 3, 1));
    m = recv_ok(r, rid, FEDPEFT__ENVELOPE__BODY_HEARTBEAT);
    assert_route(rid, "worker-1");
    assert_true(m->heartbeat->round == 3 && m->heartbeat->busy);
    wire_msg_free(&m);
    send_ok(wire_send_heartbeat(r, rid, 4, 0));
    m = recv_ok(d, NULL, FEDPEFT__ENVELOPE__BODY_HEARTBEAT);
    assert_true(m->heartbeat->round == 4 && !m->heartbeat->busy);
    wire_msg_free(&m);

    send_ok(wire_send_pull(r, rid, 17));
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
    send_ok(wire_send(r, rid, &env));
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
    assert_route(rid, "worker-1");
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
    wire_err why = WIRE_ERR_INVALID;
    assert_int_equal(wire_recv(r, ZMQ_DONTWAIT, rid, sizeof rid, &m, &why), 0);
    assert_null(m);
    assert_int_equal(why, WIRE_OK);
    zmq_close(d);
    zmq_close(r);
}

static void test_socket_errors(void **state)
{
    (void)state;
    char ep[256];
    void *r = router(ep, sizeof ep);
    /* Unknown peer: ROUTER_MANDATORY makes it an error, never a silent drop. */
    assert_int_equal(wire_send_heartbeat(r, "nobody", 1, 0), -1);
    assert_contains(fp_error_get(), "worker nobody is not connected");
    /* Port in use. */
    void *r2 = wire_router_bind(ctx, ep);
    assert_null(r2);
    assert_contains(fp_error_get(), "port in use");
    assert_contains(fp_error_get(), ep);
    /* Bad ids and endpoints. */
    assert_null(wire_dealer_connect(ctx, ep, ""));
    assert_null(wire_dealer_connect(ctx, ep, "has space"));
    assert_contains(fp_error_get(), "printable");
    assert_null(wire_dealer_connect(ctx, "nonsense", "w"));
    assert_contains(fp_error_get(), "nonsense");
    /* An invalid message is refused before it is sent. */
    void *d = dealer(ep, "w");
    assert_int_equal(wire_send_hello(d, "w", "not-a-hash", 1, 1), -1);
    assert_contains(fp_error_get(), "refusing to send an invalid hello");
    assert_contains(fp_error_get(), "model_hash");
    zmq_close(d);
    zmq_close(r);
}

/* ---- slabs and the assembler ------------------------------------------------- */

static void fill(float *x, size_t n, float base)
{
    for (size_t i = 0; i < n; i++)
        x[i] = base + (float)i * 0.001f - (float)(i % 7);
}

static void receive_slab(void *s, char *rid, uint64_t task, float *dst, size_t n)
{
    wire_assembler a;
    uint32_t nc = wire_n_chunks(n);
    wire_asm_begin(&a, dst, n, nc, task);
    for (uint32_t i = 0; i < nc; i++) {
        assert_false(wire_asm_complete(&a));
        wire_msg *m = recv_ok(s, rid, FEDPEFT__ENVELOPE__BODY_CHUNK);
        if (wire_asm_add(&a, m->chunk) != 0)
            fail_msg("chunk %u: %s", i, fp_error_get());
        wire_msg_free(&m);
    }
    assert_true(wire_asm_complete(&a));
}

static void test_slab(void **state)
{
    (void)state;
    const size_t n = 600000;
    assert_int_equal(wire_n_chunks(0), 0);
    assert_int_equal(wire_n_chunks(1), 1);
    assert_int_equal(wire_n_chunks(WIRE_CHUNK_FLOATS), 1);
    assert_int_equal(wire_n_chunks(WIRE_CHUNK_FLOATS + 1), 2);
    assert_int_equal(wire_n_chunks(n), 3);

    char ep[256], rid[WIRE_MAX_ROUTE];
    void *r = router(ep, sizeof ep);
    void *d = dealer(ep, "w-slab");
    float *src = malloc(n * sizeof *src), *dst = calloc(n, sizeof *dst);
    assert_non_null(src);
    assert_non_null(dst);
    fill(src, n, 0.5f);

    send_ok(wire_send_heartbeat(d, NULL, 0, 0));
    wire_msg *m = recv_ok(r, rid, FEDPEFT__ENVELOPE__BODY_HEARTBEAT);
    wire_msg_free(&m);

    /* coordinator -> worker (the global adapter) */
    send_ok(wire_send_slab(r, rid, 41, src, n));
    receive_slab(d, NULL, 41, dst, n);
    assert_memory_equal(src, dst, n * sizeof *src);

    /* worker -> coordinator (an update) */
    fill(src, n, -3.0f);
    memset(dst, 0, n * sizeof *dst);
    send_ok(wire_send_slab(d, NULL, 42, src, n));
    receive_slab(r, rid, 42, dst, n);
    assert_route(rid, "w-slab");
    assert_memory_equal(src, dst, n * sizeof *src);

    /* n == 0: nothing is sent. */
    send_ok(wire_send_slab(d, NULL, 43, src, 0));
    assert_int_equal(wire_recv(r, ZMQ_DONTWAIT, rid, sizeof rid, &m, NULL), 0);
    free(src);
    free(dst);
    zmq_close(d);
    zmq_close(r);
}

/* A chunk of a slab, as wire_send_slab makes it. */
static Fedpeft__TensorChunk chunk_of(float *slab, size_t n, uint64_t task, uint32_t index)
{
    Fedpeft__TensorChunk c = FEDPEFT__TENSOR_CHUNK__INIT;
    size_t off = (size_t)index * WIRE_CHUNK_FLOATS;
    c.task_id = task;
    c.index = index;
    c.offset = off;
    c.n_data = off >= n ? 0 : (n - off < WIRE_CHUNK_FLOATS ? n - off : WIRE_CHUNK_FLOATS);
    c.data = slab + (off < n ? off : 0);
    return c;
}

static void expect_asm_error(wire_assembler *a, const Fedpeft__TensorChunk *c,
                             const char *needle)
{
    if (wire_asm_add(a, c) != -1)
        fail_msg("the assembler accepted a bad chunk (%s)", needle);
    assert_contains(fp_error_get(), needle);
    assert_false(wire_asm_complete(a));
    /* Unusable afterwards, even for a good chunk. */
    assert_int_equal(wire_asm_add(a, c), -1);
}

static void test_assembler(void **state)
{
    (void)state;
    const size_t n = 600000;
    float *src = malloc(n * sizeof *src), *dst = malloc(n * sizeof *dst);
    assert_non_null(src);
    assert_non_null(dst);
    fill(src, n, 1.0f);
    wire_assembler a;
    Fedpeft__TensorChunk c0 = chunk_of(src, n, 17, 0), c1 = chunk_of(src, n, 17, 1),
                         c2 = chunk_of(src, n, 17, 2);

    /* in order: fine */
    wire_asm_begin(&a, dst, n, 3, 17);
    assert_int_equal(wire_asm_add(&a, &c0), 0);
    assert_int_equal(wire_asm_add(&a, &c1), 0);
    assert_int_equal(wire_asm_add(&a, &c2), 0);
    assert_true(wire_asm_complete(&a));
    assert_memory_equal(src, dst, n * sizeof *src);
    /* too many chunks */
    expect_asm_error(&a, &c2, "one too many");

    /* out of order */
    wire_asm_begin(&a, dst, n, 3, 17);
    expect_asm_error(&a, &c1, "chunk 1 of task 17 arrived when chunk 0 was expected");
    wire_asm_begin(&a, dst, n, 3, 17);
    assert_int_equal(wire_asm_add(&a, &c0), 0);
    expect_asm_error(&a, &c0, "arrived when chunk 1 was expected");

    /* wrong offset */
    wire_asm_begin(&a, dst, n, 3, 17);
    assert_int_equal(wire_asm_add(&a, &c0), 0);
    Fedpeft__TensorChunk bad = c1;
    bad.offset = 1000;
    expect_asm_error(&a, &bad, "chunk 1 of task 17 has offset 1000 but 262144 floats have "
                               "arrived; chunks must come in order");

    /* wrong task */
    wire_asm_begin(&a, dst, n, 3, 18);
    expect_asm_error(&a, &c0, "belongs to task 17, not the current task 18");

    /* too long: a last chunk with more floats than remain */
    wire_asm_begin(&a, dst, n, 3, 17);
    assert_int_equal(wire_asm_add(&a, &c0), 0);
    assert_int_equal(wire_asm_add(&a, &c1), 0);
    bad = c2;
    bad.n_data = c2.n_data + 1;
    expect_asm_error(&a, &bad, "expected 75712");
    /* too short: a middle chunk that is not full */
    wire_asm_begin(&a, dst, n, 3, 17);
    bad = c0;
    bad.n_data = 10;
    expect_asm_error(&a, &bad, "has 10 floats; expected 262144");

    /* non-finite values */
    float saved = src[300000];
    src[300000] = NAN;
    wire_asm_begin(&a, dst, n, 3, 17);
    assert_int_equal(wire_asm_add(&a, &c0), 0);
    expect_asm_error(&a, &c1, "non-finite value (nan) at float 300000");
    src[300000] = INFINITY;
    wire_asm_begin(&a, dst, n, 3, 17);
    assert_int_equal(wire_asm_add(&a, &c0), 0);
    expect_asm_error(&a, &c1, "non-finite");
    src[300000] = -INFINITY;
    wire_asm_begin(&a, dst, n, 3, 17);
    assert_int_equal(wire_asm_add(&a, &c0), 0);
    expect_asm_error(&a, &c1, "non-finite");
    src[300000] = saved;

    /* a task that announces the wrong number of chunks */
    wire_asm_begin(&a, dst, n, 4, 17);
    expect_asm_error(&a, &c0, "announced 4 chunks");
    wire_asm_begin(&a, dst, n, 2, 17);
    expect_asm_error(&a, &c0, "announced 2 chunks");
    /* an empty slab takes no chunks */
    wire_asm_begin(&a, dst, 0, 0, 17);
    assert_true(wire_asm_complete(&a));
    expect_asm_error(&a, &c0, "one too many");
    free(src);
    free(dst);
}

/* ---- decoding hostile bytes ----------------------------------------------------- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rng_next(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Either refused with a reason, or decoded and valid. */
static int check_any(const uint8_t *buf, size_t len)
{
    wire_err why = WIRE_OK;
    wire_msg *m = wire_decode(buf, len, &why);
    if (!m) {
        assert_true(why > WIRE_OK && why < WIRE_ERR_COUNT);
        assert_true(fp_error_get()[0] != '\0');
        return 0;
    }
    assert_int_equal(why, WIRE_OK);
    assert_int_equal(m->version, WIRE_PROTOCOL_VERSION);
    assert_true(m->body_case != FEDPEFT__ENVELOPE__BODY__NOT_SET);
    wire_msg_free(&m);
    return 1;
}

static uint8_t *packed_task(size_t *len, Fedpeft__TrainParams *p, Fedpeft__Task *t)
{
    Fedpeft__Envelope env = FEDPEFT__ENVELOPE__INIT;
    *p = (Fedpeft__TrainParams)FEDPEFT__TRAIN_PARAMS__INIT;
    *t = (Fedpeft__Task)FEDPEFT__TASK__INIT;
    p->local_steps = 10;
    p->batch = 2;
    p->seq = 64;
    p->lr = 1e-3f;
    p->seed = 12345;
    t->round = 3;
    t->task_id = 77;
    t->params = p;
    t->n_chunks = 2;
    t->deadline_unix_ms = 1700000000000ull;
    env.version = WIRE_PROTOCOL_VERSION;
    env.body_case = FEDPEFT__ENVELOPE__BODY_TASK;
    env.task = t;
    return pack(&env, len);
}

static void test_decode_garbage(void **state)
{
    (void)state;
    uint8_t buf[4096];
    int decoded = 0;
    for (int i = 0; i < 1000; i++) {
        size_t len = rng_next() % sizeof buf;
        for (size_t j = 0; j < len; j++)
            buf[j] = (uint8_t)rng_next();
        decoded += check_any(buf, len);
    }
    /* Mutations of a valid message reach much deeper into the decoder. */
    Fedpeft__TrainParams p;
    Fedpeft__Task t;
    size_t len;
    uint8_t *good = packed_task(&len, &p, &t);
    for (int i = 0; i < 2000; i++) {
        memcpy(buf, good, len);
        int flips = 1 + (int)(rng_next() % 4);
        for (int k = 0; k < flips; k++)
            buf[rng_next() % len] = (uint8_t)rng_next();
        decoded += check_any(buf, len);
    }
    print_message("garbage: %d of 3000 buffers decoded (and were valid)\n", decoded);
    free(good);
}

static void test_decode_truncated(void **state)
{
    (void)state;
    Fedpeft__TrainParams p;
    Fedpeft__Task t;
    size_t len;
    uint8_t *good = packed_task(&len, &p, &t);
    wire_err why;
    wire_msg *m = wire_decode(good, len, &why);
    assert_non_null(m);
    assert_true(m->task->task_id == 77 && m->task->params->seq == 64);
    wire_msg_free(&m);
    for (size_t cut = 0; cut < len; cut++) {
        /* A copy of exactly cut bytes, so ASan sees any read past the end. */
        uint8_t *part = malloc(cut ? cut : 1);
        assert_non_null(part);
        memcpy(part, good, cut);
        why = WIRE_OK;
        m = wire_decode(part, cut, &why);
        free(part);
        if (m) {
            wire_msg_free(&m);
            fail_msg("a Task cut to %zu of %zu bytes decoded", cut, len);
        }
        assert_true(why == WIRE_ERR_UNDECODABLE || why == WIRE_ERR_INVALID);
    }
    free(good);
}

static void test_decode_rejects(void **state)
{
    (void)state;
    Fedpeft__Envelope env = FEDPEFT__ENVELOPE__INIT;
    Fedpeft__Heartbeat hb = FEDPEFT__HEARTBEAT__INIT;

    /* wrong version (and a missing one) */
    env.version = 2;
    env.body_case = FEDPEFT__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    expect_decode_error(&env, WIRE_ERR_VERSION, "protocol version 2");
    env.version = 0;
    expect_decode_error(&env, WIRE_ERR_VERSION, "protocol version 0");
    /* no body */
    env = (Fedpeft__Envelope)FEDPEFT__ENVELOPE__INIT;
    env.version = WIRE_PROTOCOL_VERSION;
    expect_decode_error(&env, WIRE_ERR_INVALID, "no body");

    /* oversized, decoded directly: refused before protobuf sees it */
    size_t big = (size_t)WIRE_MAX_MSG_BYTES + 1;
    uint8_t *buf = calloc(big, 1);
    assert_non_null(buf);
    wire_err why = WIRE_OK;
    assert_null(wire_decode(buf, big, &why));
    assert_int_equal(why, WIRE_ERR_OVERSIZED);
    assert_contains(fp_error_get(), "larger than the limit");
    free(buf);
    assert_null(wire_decode("", 0, &why));
    assert_int_equal(why, WIRE_ERR_UNDECODABLE);
    assert_null(wire_decode("\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 11, &why));
    assert_int_equal(why, WIRE_ERR_UNDECODABLE);

    /* Hello */
    Fedpeft__Hello h = FEDPEFT__HELLO__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_HELLO;
    env.hello = &h;
    h.model_hash = HASH;
    expect_decode_error(&env, WIRE_ERR_INVALID, "worker_id is empty");
    char longid[WIRE_MAX_ID + 1];
    memset(longid, 'a', WIRE_MAX_ID);
    longid[WIRE_MAX_ID] = '\0';
    h.worker_id = longid;
    expect_decode_error(&env, WIRE_ERR_INVALID, "longer than 63");
    longid[WIRE_MAX_ID - 1] = '\0';
    h.worker_id = longid;
    size_t len;
    buf = pack(&env, &len);
    wire_msg *m = wire_decode(buf, len, &why);
    assert_non_null(m); /* 63 bytes: the longest id */
    wire_msg_free(&m);
    free(buf);
    h.worker_id = "w\x01x";
    expect_decode_error(&env, WIRE_ERR_INVALID, "printable");
    h.worker_id = "w1";
    h.model_hash = "0123";
    expect_decode_error(&env, WIRE_ERR_INVALID, "64 lowercase hex");
    h.model_hash = "0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef";
    expect_decode_error(&env, WIRE_ERR_INVALID, "64 lowercase hex");

    /* Welcome */
    Fedpeft__Welcome w = FEDPEFT__WELCOME__INIT;
    Fedpeft__LoraSpec ls = FEDPEFT__LORA_SPEC__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_WELCOME;
    env.welcome = &w;
    w.run_id = "run";
    w.heartbeat_ms = 500;
    expect_decode_error(&env, WIRE_ERR_INVALID, "no lora spec");
    w.lora = &ls;
    ls.rank = 0;
    ls.alpha = 8;
    ls.targets = 1;
    ls.n_params = 100;
    expect_decode_error(&env, WIRE_ERR_INVALID, "rank is 0");
    ls.rank = 4097;
    expect_decode_error(&env, WIRE_ERR_INVALID, "rank is 4097");
    ls.rank = 4;
    ls.n_params = WIRE_MAX_ADAPTER_FLOATS + 1;
    expect_decode_error(&env, WIRE_ERR_INVALID, "n_params");
    ls.n_params = 100;
    ls.alpha = NAN;
    expect_decode_error(&env, WIRE_ERR_INVALID, "alpha");

    /* Reject */
    Fedpeft__Reject rj = FEDPEFT__REJECT__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_REJECT;
    env.reject = &rj;
    rj.code = (Fedpeft__Reject__Code)42;
    expect_decode_error(&env, WIRE_ERR_INVALID, "Reject.code 42");

    /* Task */
    Fedpeft__Task t = FEDPEFT__TASK__INIT;
    Fedpeft__TrainParams p = FEDPEFT__TRAIN_PARAMS__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_TASK;
    env.task = &t;
    expect_decode_error(&env, WIRE_ERR_INVALID, "has no params");
    t.params = &p;
    expect_decode_error(&env, WIRE_ERR_INVALID, "local_steps is 0");
    p.local_steps = 1;
    p.batch = 1;
    p.seq = 1;
    p.lr = INFINITY;
    expect_decode_error(&env, WIRE_ERR_INVALID, "lr is inf");
    p.lr = 1e-3f;
    t.n_chunks = (uint32_t)(WIRE_MAX_ADAPTER_FLOATS / WIRE_CHUNK_FLOATS + 2);
    expect_decode_error(&env, WIRE_ERR_INVALID, "n_chunks is 8194");
    t.n_chunks = (uint32_t)(WIRE_MAX_ADAPTER_FLOATS / WIRE_CHUNK_FLOATS + 1);
    buf = pack(&env, &len);
    m = wire_decode(buf, len, &why);
    assert_non_null(m);
    wire_msg_free(&m);
    free(buf);
    t.kind = FEDPEFT__TASK__KIND__EVAL; /* EVAL: params optional */
    t.params = NULL;
    buf = pack(&env, &len);
    m = wire_decode(buf, len, &why);
    assert_non_null(m);
    wire_msg_free(&m);
    free(buf);

    /* TensorChunk */
    size_t nf = WIRE_CHUNK_FLOATS + 1;
    float *data = calloc(nf, sizeof *data);
    assert_non_null(data);
    Fedpeft__TensorChunk c = FEDPEFT__TENSOR_CHUNK__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_CHUNK;
    env.chunk = &c;
    c.data = data;
    c.n_data = nf;
    expect_decode_error(&env, WIRE_ERR_INVALID, "262145 floats");
    c.n_data = 0;
    expect_decode_error(&env, WIRE_ERR_INVALID, "0 floats");
    c.n_data = 5;
    c.index = 9000;
    expect_decode_error(&env, WIRE_ERR_INVALID, "beyond any adapter");
    free(data);

    /* UpdateReady and EvalResult */
    Fedpeft__UpdateReady u = FEDPEFT__UPDATE_READY__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_UPDATE_READY;
    env.update_ready = &u;
    u.train_loss = NAN;
    expect_decode_error(&env, WIRE_ERR_INVALID, "train_loss");
    u.train_loss = 1;
    u.n_chunks = 100000;
    expect_decode_error(&env, WIRE_ERR_INVALID, "UpdateReady.n_chunks");
    Fedpeft__EvalResult e = FEDPEFT__EVAL_RESULT__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_EVAL_RESULT;
    env.eval_result = &e;
    e.loss = -INFINITY;
    expect_decode_error(&env, WIRE_ERR_INVALID, "EvalResult.loss");
    assert_string_equal(wire_err_name(WIRE_ERR_OVERSIZED), "oversized");
    assert_string_equal(wire_err_name(WIRE_ERR_UNDECODABLE), "undecodable");
}

/* ---- misbehaving peers on real sockets ------------------------------------------ */

static void expect_recv_error(void *s, char *rid, wire_err want)
{
    wire_msg *m = (wire_msg *)1;
    wire_err why = WIRE_OK;
    int rc = wire_recv(s, 0, rid, rid ? WIRE_MAX_ROUTE : 0, &m, &why);
    if (rc != -1)
        fail_msg("wire_recv returned %d, expected -1 (%s)", rc, wire_err_name(want));
    assert_null(m);
    assert_int_equal(why, want);
}

static void test_bad_frames(void **state)
{
    (void)state;
    char ep[256], rid[WIRE_MAX_ROUTE];
    void *r = router(ep, sizeof ep);
    void *raw = raw_dealer(ep, "raw1");
    void *good = dealer(ep, "good1");

    /* three frames */
    assert_int_equal(zmq_send(raw, "a", 1, ZMQ_SNDMORE), 1);
    assert_int_equal(zmq_send(raw, "b", 1, ZMQ_SNDMORE), 1);
    assert_int_equal(zmq_send(raw, "c", 1, 0), 1);
    expect_recv_error(r, rid, WIRE_ERR_UNDECODABLE);
    assert_string_equal(rid, "raw1");
    assert_contains(fp_error_get(), "raw1 has 3 frames");
    /* garbage */
    assert_int_equal(zmq_send(raw, "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 11, 0), 11);
    expect_recv_error(r, rid, WIRE_ERR_UNDECODABLE);
    assert_string_equal(rid, "raw1");
    assert_contains(fp_error_get(), "from raw1");
    /* wrong version */
    Fedpeft__Envelope env = FEDPEFT__ENVELOPE__INIT;
    Fedpeft__Heartbeat hb = FEDPEFT__HEARTBEAT__INIT;
    env.version = 9;
    env.body_case = FEDPEFT__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    size_t len;
    uint8_t *buf = pack(&env, &len);
    assert_int_equal(zmq_send(raw, buf, len, 0), (int)len);
    free(buf);
    expect_recv_error(r, rid, WIRE_ERR_VERSION);
    assert_string_equal(rid, "raw1");

    /* the ROUTER is still in step: the next messages arrive whole */
    send_ok(wire_send_heartbeat(good, NULL, 8, 0));
    wire_msg *m = recv_ok(r, rid, FEDPEFT__ENVELOPE__BODY_HEARTBEAT);
    assert_route(rid, "good1");
    char good_rid[WIRE_MAX_ROUTE];
    snprintf(good_rid, sizeof good_rid, "%s", rid);
    assert_true(m->heartbeat->round == 8);
    wire_msg_free(&m);
    env.version = WIRE_PROTOCOL_VERSION;
    hb.round = 9;
    buf = pack(&env, &len);
    assert_int_equal(zmq_send(raw, buf, len, 0), (int)len);
    free(buf);
    m = recv_ok(r, rid, FEDPEFT__ENVELOPE__BODY_HEARTBEAT);
    assert_string_equal(rid, "raw1");
    assert_true(m->heartbeat->round == 9);
    wire_msg_free(&m);

    /* and the DEALER side: two frames from the ROUTER are refused, then in step */
    assert_int_equal(zmq_send(r, good_rid, strlen(good_rid), ZMQ_SNDMORE), (int)strlen(good_rid));
    assert_int_equal(zmq_send(r, "x", 1, ZMQ_SNDMORE), 1);
    assert_int_equal(zmq_send(r, "y", 1, 0), 1);
    expect_recv_error(good, NULL, WIRE_ERR_UNDECODABLE);
    assert_contains(fp_error_get(), "2 frames");
    send_ok(wire_send_pull(r, good_rid, 5));
    m = recv_ok(good, NULL, FEDPEFT__ENVELOPE__BODY_PULL);
    assert_true(m->pull->task_id == 5);
    wire_msg_free(&m);

    /* a peer without a printable id is named in hex */
    void *anon = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0;
    assert_int_equal(zmq_setsockopt(anon, ZMQ_LINGER, &zero, sizeof zero), 0);
    assert_int_equal(zmq_connect(anon, ep), 0);
    assert_int_equal(zmq_send(anon, "zz", 2, 0), 2);
    expect_recv_error(r, rid, WIRE_ERR_UNDECODABLE);
    assert_true(strncmp(rid, "0x", 2) == 0);
    zmq_close(anon);
    zmq_close(raw);
    zmq_close(good);
    zmq_close(r);
}

/* Waits for a monitor event; 1 if it came within ms. */
static int wait_event(void *mon, int event, int ms)
{
    zmq_pollitem_t it = {mon, 0, ZMQ_POLLIN, 0};
    for (int waited = 0; waited < ms; waited += 50) {
        if (zmq_poll(&it, 1, 50) <= 0)
            continue;
        zmq_msg_t f;
        zmq_msg_init(&f);
        assert_true(zmq_msg_recv(&f, mon, 0) >= 6);
        uint16_t ev;
        memcpy(&ev, zmq_msg_data(&f), sizeof ev);
        zmq_msg_close(&f);
        zmq_msg_init(&f);
        assert_true(zmq_msg_recv(&f, mon, 0) >= 0); /* endpoint */
        zmq_msg_close(&f);
        if (ev == event)
            return 1;
    }
    return 0;
}

static void test_oversized_peer(void **state)
{
    (void)state;
    char ep[256], rid[WIRE_MAX_ROUTE];
    void *r = router(ep, sizeof ep);
    assert_int_equal(zmq_socket_monitor(r, "inproc://wire-mon", ZMQ_EVENT_DISCONNECTED), 0);
    void *mon = zmq_socket(ctx, ZMQ_PAIR);
    assert_non_null(mon);
    assert_int_equal(zmq_connect(mon, "inproc://wire-mon"), 0);

    void *good = dealer(ep, "good2");
    void *big = raw_dealer(ep, "big");
    send_ok(wire_send_heartbeat(good, NULL, 1, 0));
    wire_msg *m = recv_ok(r, rid, FEDPEFT__ENVELOPE__BODY_HEARTBEAT);
    assert_route(rid, "good2");
    wire_msg_free(&m);

    size_t n = (size_t)WIRE_MAX_MSG_BYTES + 1;
    uint8_t *buf = calloc(n, 1);
    assert_non_null(buf);
    assert_int_equal(zmq_send(big, buf, n, 0), (int)n);
    free(buf);
    /* libzmq drops the connection; nothing of it reaches wire_recv */
    if (!wait_event(mon, ZMQ_EVENT_DISCONNECTED, 10000))
        fail_msg("the oversized peer was not disconnected");
    wire_err why = WIRE_OK;
    assert_int_equal(wire_recv(r, ZMQ_DONTWAIT, rid, sizeof rid, &m, &why), 0);

    /* the ROUTER keeps serving the other worker, both ways */
    send_ok(wire_send_heartbeat(good, NULL, 2, 1));
    m = recv_ok(r, rid, FEDPEFT__ENVELOPE__BODY_HEARTBEAT);
    assert_route(rid, "good2");
    assert_true(m->heartbeat->round == 2);
    wire_msg_free(&m);
    send_ok(wire_send_heartbeat(r, rid, 3, 0));
    m = recv_ok(good, NULL, FEDPEFT__ENVELOPE__BODY_HEARTBEAT);
    assert_true(m->heartbeat->round == 3);
    wire_msg_free(&m);

    assert_int_equal(zmq_socket_monitor(r, NULL, 0), 0);
    zmq_close(mon);
    zmq_close(big);
    zmq_close(good);
    zmq_close(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trips),     cmocka_unit_test(test_socket_errors),
        cmocka_unit_test(test_slab),            cmocka_unit_test(test_assembler),
        cmocka_unit_test(test_decode_garbage),  cmocka_unit_test(test_decode_truncated),
        cmocka_unit_test(test_decode_rejects),  cmocka_unit_test(test_bad_frames),
        cmocka_unit_test(test_oversized_peer),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
