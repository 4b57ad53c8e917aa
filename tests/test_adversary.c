/* test_adversary.c - one allowlisted key against the coordinator (issue "A
 * worker is its key"). Real coordinator and worker processes over CURVE on
 * loopback, plus mallory: a hostile client in this process, built on the
 * project's own wire layer and raw ZeroMQ sockets, holding one allowlisted
 * key ("mallory"). Every case asserts the honest workers' rounds complete.
 *
 * 1. Impostor and Sybil ids: Hellos as "w0" (with w0's exact routing id, so
 *    ZMQ_ROUTER_HANDOVER would hand it w0's connection were ids not random)
 *    and as 50 made-up ids get Reject(IDENTITY); none is registered, w0 is not
 *    cut off. n_train_examples = 2^64-1 is capped (4x the median). A flood of
 *    Hellos is refused (REJ_FLOOD) and the coordinator's log stays short. A
 *    fake evaluation (loss 0 over 2^63 tokens) neither stops the run early
 *    (target_loss) nor moves the token count. The coordinator's RSS growth
 *    over the whole attack is printed and bounded.
 * 2. A plain update scaled by 1e30 (secure aggregation off) is refused by the
 *    default update bound; the adapter keeps improving.
 * 3. 10 stalling uploaders (UpdateReady, then nothing after Pull) and 20 peers
 *    that never read, each with its own allowlisted key: the honest workers'
 *    rounds complete (several upload slots, the chunk timeout frees a stalled
 *    one, a peer that stalled is pulled last), and the coordinator's memory
 *    growth is printed and bounded.
 * 4. The sample is not predictable from what a worker sees: every Task carries
 *    [run] seed, from which the sample used to be drawn; with CURVE it comes
 *    from the coordinator's secret key, and the seed-based prediction of who
 *    is sampled fails in some of 8 rounds (chance of a false alarm 3^-8).
 * 5. [round] mode = async: mallory claims every hold task at once (a bad shape,
 *    a NaN loss, duplicates, a task it was never given: each refused) and then
 *    goes silent in each buffer it gets into; the backoff keeps it out of all
 *    but 3 of 7 buffers, and the honest workers' rounds complete.
 * 6. The Hello of a socket the same worker process abandoned (connection
 *    attempt 1) arriving after its live socket's (attempt 2) is refused as
 *    stale and the live session stays; attempt 3 replaces it as usual.
 */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <cjson/cJSON.h>
#include <sodium.h>
#include <zmq.h>

#include "fed_harness.h"
#include "keys.h"
#include "model.h"
#include "rng.h"
#include "test_util.h"
#include "wire.h"

#define N_WORKERS 3
#define N_SYBILS 50
#define N_FLOOD 200
#define RUN_TIMEOUT_S 300
#define SERVER_HELLO_BURST_TEST 5   /* coordinator/server.h SERVER_HELLO_BURST */
#define N_STALL 10                  /* case 3: stalling uploaders */
#define N_SILENT 20                 /* case 3: peers that never read */
#define N_HOSTILE (N_STALL + N_SILENT)

static char base_dir[4096];
static fh_fed cur;

static int group_setup(void **state)
{
    (void)state;
    return fh_base_setup("adversary", N_WORKERS, 1000, base_dir, sizeof base_dir);
}

static int teardown(void **state)
{
    (void)state;
    fh_fed_reap(&cur);
    return 0;
}

/* Keys for the coordinator, w0..w2, mallory and the hostile peers h0..h29 of
 * case 3; the allowlist admits all but the coordinator. */
static void use_curve(fh_fed *f)
{
    char dir[4300], allow[8192] = "# test_adversary\n", name[16];
    snprintf(dir, sizeof dir, "%s/keys", f->dir);
    assert_int_equal(mkdir(dir, 0700), 0);
    for (int k = -2; k < N_WORKERS + N_HOSTILE; k++) {
        if (k >= N_WORKERS)
            snprintf(name, sizeof name, "h%d", k - N_WORKERS);
        else
            snprintf(name, sizeof name, k == -2 ? "coordinator" : k == -1 ? "mallory" : "w%d", k);
        fp_keypair *kp = fp_keypair_generate(name);
        assert_non_null(kp);
        assert_int_equal(fp_keypair_save(kp, dir, 0), 0);
        if (k >= -1)
            snprintf(allow + strlen(allow), sizeof allow - strlen(allow), "%s %s\n",
                     kp->public_z85, name);
        fp_keypair_free(&kp);
    }
    assert_int_equal(tu_write_file(tu_path(dir, "allowlist"), allow, strlen(allow)), 0);
    f->curve = 1;
}

static double tu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int count_lines(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    char line[4096];
    int n = 0;
    while (f && fgets(line, sizeof line, f))
        n += strstr(line, needle) != NULL;
    if (f)
        fclose(f);
    return n;
}

/* ---- mallory ----------------------------------------------------------------- */

typedef struct {
    void *zctx;
    fp_keypair *kp;
    uint8_t server_pub[FP_KEY_BYTES];
    const char *endpoint;
    char model_hash[65];
} mallory;

/* A raw CURVE DEALER with mallory's key and a routing id of its choosing. */
static void *m_socket(mallory *m, const char *route)
{
    void *s = zmq_socket(m->zctx, ZMQ_DEALER);
    /* SNDTIMEO: with ZMQ_IMMEDIATE a send once the coordinator is gone would
     * block for good (the liar's heartbeat then never let its thread see stop). */
    int one = 1, linger = 0, rcvtimeo = 3000, sndtimeo = 200;
    assert_non_null(s);
    assert_int_equal(zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, m->server_pub, FP_KEY_BYTES), 0);
    assert_int_equal(zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, m->kp->public_key, FP_KEY_BYTES), 0);
    assert_int_equal(zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, m->kp->secret_key, FP_KEY_BYTES), 0);
    assert_int_equal(zmq_setsockopt(s, ZMQ_ROUTING_ID, route, strlen(route)), 0);
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &rcvtimeo, sizeof rcvtimeo);
    zmq_setsockopt(s, ZMQ_SNDTIMEO, &sndtimeo, sizeof sndtimeo);
    zmq_setsockopt(s, ZMQ_IMMEDIATE, &one, sizeof one);
    assert_int_equal(zmq_connect(s, m->endpoint), 0);
    return s;
}

static void m_hello(mallory *m, void *s, const char *id, uint64_t n_examples)
{
    assert_int_equal(wire_send_hello(s, id, m->model_hash, n_examples, 1000), 0);
}

/* The next message of a kind (others skipped) within timeout_s, or NULL. */
static wire_msg *m_expect(void *s, Fedpeft__Envelope__BodyCase kind, double timeout_s)
{
    double end = tu_now() + timeout_s;
    while (tu_now() < end) {
        wire_msg *msg = NULL;
        int rc = wire_recv(s, 0, NULL, 0, &msg, NULL);
        if (rc == 1 && msg->body_case == kind)
            return msg;
        wire_msg_free(&msg);
    }
    return NULL;
}

static void expect_identity_reject(void *s, const char *what)
{
    wire_msg *msg = m_expect(s, FEDPEFT__ENVELOPE__BODY_REJECT, 10);
    if (!msg)
        fail_msg("%s: no Reject", what);
    printf("# %s: Reject code %d: %s\n", what, (int)msg->reject->code, msg->reject->reason);
    assert_int_equal(msg->reject->code, FEDPEFT__REJECT__CODE__IDENTITY);
    wire_msg_free(&msg);
}

static void send_heartbeat(void *s)
{
    Fedpeft__Heartbeat hb = FEDPEFT__HEARTBEAT__INIT;
    wire_msg env = FEDPEFT__ENVELOPE__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    if (wire_send(s, NULL, &env) != 0)
        return;     /* a missed heartbeat shows as a dead peer */
}

/* Registered as itself: answers every evaluation with loss 0 over 2^63
 * tokens, ignores training, heartbeats, until the run ends. */
typedef struct {
    mallory *m;
    void *s;
    volatile int stop;
    int fake_evals;
} liar;

static void *liar_main(void *arg)
{
    liar *l = arg;
    double hb = 0;
    while (!l->stop) {
        if (tu_now() - hb > 0.3) {
            send_heartbeat(l->s);
            hb = tu_now();
        }
        zmq_pollitem_t it = {l->s, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 100) <= 0)
            continue;
        wire_msg *msg = NULL;
        if (wire_recv(l->s, ZMQ_DONTWAIT, NULL, 0, &msg, NULL) != 1)
            continue;
        if (msg->body_case == FEDPEFT__ENVELOPE__BODY_TASK &&
            msg->task->kind == FEDPEFT__TASK__KIND__EVAL) {
            Fedpeft__EvalResult e = FEDPEFT__EVAL_RESULT__INIT;
            e.task_id = msg->task->task_id;
            e.round = msg->task->round;
            e.loss = 0;
            e.n_tokens = (uint64_t)1 << 63;
            wire_msg env = FEDPEFT__ENVELOPE__INIT;
            env.body_case = FEDPEFT__ENVELOPE__BODY_EVAL_RESULT;
            env.eval_result = &e;
            if (wire_send(l->s, NULL, &env) == 0)
                l->fake_evals++;
        }
        if (msg->body_case == FEDPEFT__ENVELOPE__BODY_REJECT &&
            msg->reject->code == FEDPEFT__REJECT__CODE__SHUTDOWN)
            l->stop = 1;
        wire_msg_free(&msg);
    }
    return NULL;
}

static void mallory_init_as(mallory *m, const fh_fed *f, const char *name)
{
    char path[4400];
    m->zctx = zmq_ctx_new();
    snprintf(path, sizeof path, "%s/keys/%s.key", f->dir, name);
    m->kp = fp_keypair_load(path);
    assert_non_null(m->kp);
    snprintf(path, sizeof path, "%s/keys/coordinator.pub", f->dir);
    assert_int_equal(fp_pubkey_parse(path, m->server_pub), 0);
    m->endpoint = f->endpoint;
    snprintf(path, sizeof path, "%s/model", f->base);
    fp_model *model = fp_model_load(path);
    assert_non_null(model);
    fp_model_hash(model, m->model_hash);
    fp_model_free(&model);
}

static void mallory_init(mallory *m, const fh_fed *f) { mallory_init_as(m, f, "mallory"); }

static void mallory_free(mallory *m)
{
    fp_keypair_free(&m->kp);
    zmq_ctx_term(m->zctx);
}

/* ---- 1. identity, weights, floods, fake evaluation --------------------------- */

static void test_one_key(void **state)
{
    (void)state;
    fh_fed_init(&cur, "adv-key", base_dir, N_WORKERS);
    fh_fed_write_ini(&cur, "rounds = 3\nseed = 5\ntarget_loss = 0.5", 4, 8,
                     "[sampling]\nmin_workers = 4\n[round]\nstart_timeout_s = 60\n"
                     "deadline_s = 60\nmin_quorum = 3\n");
    use_curve(&cur);
    fh_coordinator_start(&cur);
    mallory m;
    mallory_init(&m, &cur);
    for (int k = 0; k < N_WORKERS; k++)
        fh_worker_start(&cur, k);
    char clog[4300];
    snprintf(clog, sizeof clog, "%s/coordinator-1.log", cur.dir);
    assert_true(fh_log_wait(clog, "worker w0 registered", 60));
    long rss0 = fh_rss_kib(cur.coord);

    /* Impostor: w0's id, with the routing id a worker had before ids carried a
     * random part, and with a guessed one. */
    void *imp = m_socket(&m, "w0");
    m_hello(&m, imp, "w0", 1000);
    expect_identity_reject(imp, "Hello as w0 (routing id w0)");
    zmq_close(imp);
    imp = m_socket(&m, "w0#0000000000000000");
    m_hello(&m, imp, "w0", 1000);
    expect_identity_reject(imp, "Hello as w0 (routing id w0#0...)");
    zmq_close(imp);

    /* Sybils: made-up ids from the one key. */
    for (int i = 0; i < N_SYBILS; i++) {
        char id[32], route[64];
        snprintf(id, sizeof id, "sybil-%d", i);
        snprintf(route, sizeof route, "%s#%016x", id, i);
        void *s = m_socket(&m, route);
        m_hello(&m, s, id, 1000);
        if (i == 0)
            expect_identity_reject(s, "Hello as sybil-0");
        zmq_close(s);
    }

    /* Itself, declaring 2^64-1 examples; then a Hello flood. */
    char route[64];
    snprintf(route, sizeof route, "mallory#%016llx", (unsigned long long)getpid());
    liar l = {&m, m_socket(&m, route), 0, 0};
    m_hello(&m, l.s, "mallory", UINT64_MAX);
    assert_true(fh_log_wait(clog, "worker mallory registered", 20));
    for (int i = 0; i < N_FLOOD; i++)
        m_hello(&m, l.s, "mallory", UINT64_MAX);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, liar_main, &l), 0);

    sleep(3);
    long rss1 = fh_rss_kib(cur.coord);   /* after the flood, mid-run */
    fh_fed_finish(&cur, RUN_TIMEOUT_S);
    l.stop = 1;
    pthread_join(th, NULL);
    zmq_close(l.s);
    mallory_free(&m);

    int n;
    cJSON **rows = fh_fed_metrics(&cur, 3, &n);     /* rounds 0..3: no early stop */
    fh_print_losses("honest workers with mallory", rows, n);
    for (int r = 1; r <= 3; r++) {
        assert_true(fh_metric_number(rows[r], "reported") >= N_WORKERS);
        assert_true(fh_metric_number(rows[r], "val_loss") > 1.0);   /* not mallory's 0 */
        assert_true(fh_metric_number(rows[r], "val_tokens") < 1e12);
    }
    assert_true(fh_metric_number(rows[3], "val_loss") <
                fh_metric_number(rows[0], "val_loss") - 0.05);
    fh_metrics_free(rows, n);
    printf("# mallory sent %d fake evaluations\n", l.fake_evals);
    assert_true(l.fake_evals >= 1);
    assert_int_equal(count_lines(clog, "worker sybil-"), 0);
    assert_int_equal(count_lines(clog, "worker w0: a new session"), 0);
    assert_true(fh_log_has(clog, "may only use the id 'mallory', not 'w0'"));
    int lines = count_lines(clog, "mallory");
    printf("# coordinator log lines naming mallory: %d (for %d Hellos, %d Sybil ids)\n", lines,
           N_FLOOD + 1, N_SYBILS);
    assert_true(lines < 150);
    /* Refused, counted, and mostly not logged: the gate held the log to 20 lines.
     * Counted in the metrics line of the round they arrived in: round 0, or round 1
     * when round 0's evaluation ended before the coordinator read the flood. */
    cJSON **r0 = fh_fed_metrics(&cur, 3, &n);
    double flood = 0, ident = 0;
    for (int r = 0; r < n; r++) {
        const cJSON *rej = cJSON_GetObjectItem(r0[r], "rejected");
        flood += fh_metric_number(rej, "flood");
        ident += fh_metric_number(rej, "identity");
    }
    printf("# refusals in rounds 0..3: identity %.0f, flood %.0f\n", ident, flood);
    assert_true(ident >= N_SYBILS + 2);
    assert_true(flood >= N_FLOOD - SERVER_HELLO_BURST_TEST);
    fh_metrics_free(r0, n);
    assert_true(fh_log_has(clog, "worker mallory registered: 18446744073709551615 examples"));
    printf("# coordinator RSS before the attack %ld KiB, after it %ld KiB\n", rss0, rss1);
    assert_true(rss0 > 0 && rss1 - rss0 < 64 * 1024);
    /* w0 was never cut off: it reported in every round (reported >= 3 above)
     * and the registry never held a Sybil. */
    char w0log[4300];
    snprintf(w0log, sizeof w0log, "%s/w0.log", cur.dir);
    assert_false(fh_log_has(w0log, "refused this worker"));
}

/* ---- 2. a 1e30 plain update ---------------------------------------------------- */

static void test_huge_plain_update(void **state)
{
    (void)state;
    fh_fed_init(&cur, "adv-huge", base_dir, N_WORKERS);
    fh_fed_write_ini(&cur, "rounds = 2\nseed = 5", 4, 8,
                     "[sampling]\nmin_workers = 3\n[round]\nstart_timeout_s = 60\n"
                     "[secagg]\nenabled = false\n[privacy]\nrequire_secagg = false\n");
    use_curve(&cur);
    cur.poison[2] = "1e30";
    fh_fed_start(&cur);
    fh_fed_finish(&cur, RUN_TIMEOUT_S);
    int n;
    cJSON **rows = fh_fed_metrics(&cur, 2, &n);
    fh_print_losses("1e30 update from w2", rows, n);
    for (int r = 1; r <= 2; r++) {
        assert_int_equal((int)fh_metric_number(rows[r], "reported"), N_WORKERS - 1);
        assert_true(isfinite(fh_metric_number(rows[r], "val_loss")));
    }
    assert_true(fh_metric_number(rows[2], "val_loss") < fh_metric_number(rows[0], "val_loss"));
    fh_metrics_free(rows, n);
    char clog[4300];
    snprintf(clog, sizeof clog, "%s/coordinator-1.log", cur.dir);
    assert_true(fh_log_has(clog, "exceeds the bound"));
}

/* ---- 3. stalling uploaders and peers that never read ----------------------------- */

typedef struct {
    mallory m;
    void *s;
    char id[16];
    int silent;         /* never reads */
    int pulls, stalled;
} hostile;

/* A staller answers a training Task with a well-formed UpdateReady (sealed,
 * the right chunk count) and then sends nothing after Pull. */
static void staller_on_msg(hostile *h, wire_msg *msg)
{
    if (msg->body_case == FEDPEFT__ENVELOPE__BODY_PULL)
        h->pulls++;
    if (msg->body_case == FEDPEFT__ENVELOPE__BODY_REJECT &&
        msg->reject->code == FEDPEFT__REJECT__CODE__STALE && strstr(msg->reject->reason, "stalled"))
        h->stalled++;
    if (msg->body_case != FEDPEFT__ENVELOPE__BODY_TASK ||
        msg->task->kind != FEDPEFT__TASK__KIND__TRAIN)
        return;
    uint8_t pk[32], sk[32];
    crypto_box_keypair(pk, sk);
    Fedpeft__UpdateReady u = FEDPEFT__UPDATE_READY__INIT;
    u.task_id = msg->task->task_id;
    u.round = msg->task->round;
    u.n_examples = 1000;
    u.n_tokens = 1000;
    u.train_loss = 3.0f;
    u.n_chunks = msg->task->n_chunks;
    u.seal_pk.data = pk;
    u.seal_pk.len = 32;
    wire_msg env = FEDPEFT__ENVELOPE__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_UPDATE_READY;
    env.update_ready = &u;
    if (wire_send(h->s, NULL, &env) != 0)
        printf("# %s: UpdateReady not sent: %s\n", h->id, fp_error_get());
}

typedef struct {
    hostile *h;
    volatile int stop;
} hostile_crew;

static void *crew_main(void *arg)
{
    hostile_crew *c = arg;
    double hb = 0;
    while (!c->stop) {
        int beat = tu_now() - hb > 0.2;
        if (beat)
            hb = tu_now();
        zmq_pollitem_t it[N_HOSTILE];
        int n = 0;
        for (int i = 0; i < N_HOSTILE; i++) {
            if (beat)
                send_heartbeat(c->h[i].s);
            if (!c->h[i].silent)
                it[n++] = (zmq_pollitem_t){c->h[i].s, 0, ZMQ_POLLIN, 0};
        }
        if (zmq_poll(it, n, 50) <= 0)
            continue;
        for (int i = 0; i < N_STALL; i++) {
            wire_msg *msg = NULL;
            while (wire_recv(c->h[i].s, ZMQ_DONTWAIT, NULL, 0, &msg, NULL) == 1) {
                staller_on_msg(&c->h[i], msg);
                wire_msg_free(&msg);
            }
        }
    }
    return NULL;
}

static void hostile_start(hostile *h, int i, const fh_fed *f)
{
    snprintf(h->id, sizeof h->id, "h%d", i);
    mallory_init_as(&h->m, f, h->id);
    char route[64];
    snprintf(route, sizeof route, "%s#%016x", h->id, 0x51a11 + i);
    h->s = m_socket(&h->m, route);
    h->silent = i >= N_STALL;
    if (h->silent) {    /* reads nothing: what it is sent queues up at the coordinator */
        int one = 1, small = 4096;
        zmq_setsockopt(h->s, ZMQ_RCVHWM, &one, sizeof one);
        zmq_setsockopt(h->s, ZMQ_RCVBUF, &small, sizeof small);
    }
    m_hello(&h->m, h->s, h->id, 1000);
}

static void test_stalling_and_silent_peers(void **state)
{
    (void)state;
    fh_fed_init(&cur, "adv-stall", base_dir, N_WORKERS);
    /* A single upload slot spends 10 x 1.5 s (3 heartbeats) on the stallers,
     * longer than deadline_s: the honest updates were never pulled. */
    fh_fed_write_ini(&cur, "rounds = 2\nseed = 5", 4, 8,
                     "[sampling]\nmin_workers = 33\n[round]\nstart_timeout_s = 60\n"
                     "deadline_s = 12\neval_deadline_s = 5\nmin_quorum = 3\n"
                     "[secagg]\nenabled = false\n[privacy]\nrequire_secagg = false\n");
    use_curve(&cur);
    fh_coordinator_start(&cur);
    static hostile h[N_HOSTILE];
    memset(h, 0, sizeof h);
    for (int i = 0; i < N_HOSTILE; i++)
        hostile_start(&h[i], i, &cur);
    char clog[4300];
    snprintf(clog, sizeof clog, "%s/coordinator-1.log", cur.dir);
    assert_true(fh_log_wait(clog, "worker h29 registered", 30));
    long rss0 = fh_rss_kib(cur.coord);
    hostile_crew crew = {h, 0};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, crew_main, &crew), 0);
    for (int k = 0; k < N_WORKERS; k++)
        fh_worker_start(&cur, k);
    long rss_max = rss0;
    long v;   /* a zombie has no VmRSS: sampled until the coordinator exits */
    for (int i = 0; i < 1800 && (v = fh_rss_kib(cur.coord)) > 0; i++) {
        rss_max = v > rss_max ? v : rss_max;
        usleep(100000);
    }
    fh_fed_finish(&cur, RUN_TIMEOUT_S);
    crew.stop = 1;
    pthread_join(th, NULL);
    int pulls = 0, stalled = 0;
    for (int i = 0; i < N_HOSTILE; i++) {
        pulls += h[i].pulls;
        stalled += h[i].stalled;
        zmq_close(h[i].s);
        mallory_free(&h[i].m);
    }
    int n;
    cJSON **rows = fh_fed_metrics(&cur, 2, &n);
    fh_print_losses("honest workers with 10 stallers and 20 silent peers", rows, n);
    for (int r = 1; r <= 2; r++)
        assert_int_equal((int)fh_metric_number(rows[r], "reported"), N_WORKERS);
    assert_true(fh_metric_number(rows[2], "val_loss") < fh_metric_number(rows[0], "val_loss"));
    fh_metrics_free(rows, n);
    printf("# stallers: %d Pulls, %d stall refusals; coordinator log 'stalled' lines: %d\n",
           pulls, stalled, count_lines(clog, "stalled"));
    assert_true(pulls >= N_STALL && stalled >= N_STALL);
    printf("# coordinator RSS: %ld KiB with 30 hostile peers registered, at most %ld KiB "
           "during the run (+%ld KiB)\n", rss0, rss_max, rss_max - rss0);
    assert_true(rss_max - rss0 < 64 * 1024);
}

/* ---- 4. an unpredictable sample ---------------------------------------------------- */

/* The sample a worker could compute from [run] seed (the pre-fix rule of
 * coordinator/rounds_phase.c): ids sorted, partial Fisher-Yates, k = 1. */
static int predicted_index(uint64_t seed, uint64_t round, int n)
{
    fp_rng rng;
    fp_rng_seed(&rng, seed * 1000003u + round);
    return (int)fp_rng_below(&rng, (uint64_t)n);
}

static void test_sample_unpredictable(void **state)
{
    (void)state;
    enum { ROUNDS = 8 };
    fh_fed_init(&cur, "adv-sample", base_dir, N_WORKERS);
    fh_fed_write_ini(&cur, "rounds = 8\nseed = 5", 4, 2,
                     "[sampling]\nfraction = 0.34\nmin_workers = 1\n[round]\n"
                     "start_timeout_s = 60\n[secagg]\nenabled = false\n[privacy]\n"
                     "require_secagg = false\n");
    use_curve(&cur);
    fh_fed_start(&cur);
    fh_fed_finish(&cur, RUN_TIMEOUT_S);
    char clog[4300], needle[64], line[4096];
    snprintf(clog, sizeof clog, "%s/coordinator-1.log", cur.dir);
    int hits = 0, seen = 0;
    for (int r = 1; r <= ROUNDS; r++) {
        snprintf(needle, sizeof needle, "round %d: sampled 1 of ", r);
        FILE *f = fopen(clog, "r");
        assert_non_null(f);
        int got = -1, live = 0;
        while (fgets(line, sizeof line, f)) {
            const char *p = strstr(line, needle);
            if (p && sscanf(p + strlen(needle), "%d workers (w%d)", &live, &got) != 2)
                got = -1;
        }
        fclose(f);
        if (got < 0 || live < 1)
            fail_msg("no 'sampled' line for round %d in %s", r, clog);
        seen++;
        hits += got == predicted_index(5, (uint64_t)r, live);
    }
    printf("# the seed-based prediction named the sampled worker in %d of %d rounds\n", hits,
           seen);
    assert_int_equal(seen, ROUNDS);
    assert_true(hits < ROUNDS);
}

/* ---- 6. a late Hello of the same process's abandoned socket --------------------- */

static void hello_attempt(mallory *m, void *s, uint64_t session, uint32_t attempt)
{
    Fedpeft__Hello h = FEDPEFT__HELLO__INIT;
    h.worker_id = "mallory";
    h.model_hash = m->model_hash;
    h.n_train_examples = 100;
    h.n_train_tokens = 1000;
    h.session = session;
    h.attempt = attempt;
    wire_msg env = FEDPEFT__ENVELOPE__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_HELLO;
    env.hello = &h;
    assert_int_equal(wire_send(s, NULL, &env), 0);
}

/* A worker that timed out on its first socket opens another; the first one's
 * Hello can still reach the coordinator after the second's. It must not take
 * the session from the live socket (seen: a worker told "replaced" exited). */
static void test_stale_hello(void **state)
{
    (void)state;
    fh_fed_init(&cur, "adv-stale", base_dir, 1);
    fh_fed_write_ini(&cur, "rounds = 1\nseed = 5", 4, 8,
                     "[sampling]\nmin_workers = 8\n[round]\nstart_timeout_s = 600\n");
    use_curve(&cur);
    fh_coordinator_start(&cur);
    mallory m;
    mallory_init(&m, &cur);
    void *live = m_socket(&m, "mallory#000000000000000b");
    hello_attempt(&m, live, 0x5e55, 2);
    wire_msg *msg = m_expect(live, FEDPEFT__ENVELOPE__BODY_WELCOME, 30);
    assert_non_null(msg);
    wire_msg_free(&msg);
    void *old = m_socket(&m, "mallory#000000000000000a");
    hello_attempt(&m, old, 0x5e55, 1);     /* attempt 1, delivered late */
    msg = m_expect(old, FEDPEFT__ENVELOPE__BODY_REJECT, 10);
    assert_non_null(msg);
    printf("# late Hello of attempt 1: Reject code %d: %s\n", (int)msg->reject->code,
           msg->reject->reason);
    assert_int_equal(msg->reject->code, FEDPEFT__REJECT__CODE__STALE);
    wire_msg_free(&msg);
    /* the live socket keeps the session: a heartbeat draws no Reject */
    send_heartbeat(live);
    msg = m_expect(live, FEDPEFT__ENVELOPE__BODY_REJECT, 2);
    assert_null(msg);
    /* a later attempt, or another process (session), does replace it */
    void *next = m_socket(&m, "mallory#000000000000000c");
    hello_attempt(&m, next, 0x5e55, 3);
    msg = m_expect(next, FEDPEFT__ENVELOPE__BODY_WELCOME, 10);
    assert_non_null(msg);
    wire_msg_free(&msg);
    send_heartbeat(live);
    msg = m_expect(live, FEDPEFT__ENVELOPE__BODY_REJECT, 10);
    assert_non_null(msg);
    assert_int_equal(msg->reject->code, FEDPEFT__REJECT__CODE__IDENTITY);
    wire_msg_free(&msg);
    zmq_close(live);
    zmq_close(old);
    zmq_close(next);
    mallory_free(&m);
}

/* ---- 5. async: a key that claims to be done at once, then goes silent ---------- */

/* In [round] mode = async, mallory answers every hold task at once, as if it
 * had trained: first with a shape of its own, then with the right shape twice
 * (a duplicate), once for a hold task it was never given and once with a NaN
 * loss; it never uploads a held update (silent in every buffer it gets into). */
typedef struct {
    void *s;
    volatile int stop;
    int holds, uploads_asked;
} claimer;

static void claim(void *s, const Fedpeft__Task *t, uint64_t task_id, uint32_t n_chunks,
                  float loss)
{
    Fedpeft__UpdateReady u = FEDPEFT__UPDATE_READY__INIT;
    u.task_id = task_id;
    u.round = t->round;
    u.n_examples = 1000;
    u.n_tokens = 1000;
    u.train_loss = loss;
    u.n_chunks = n_chunks;
    wire_msg env = FEDPEFT__ENVELOPE__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_UPDATE_READY;
    env.update_ready = &u;
    if (isfinite(loss)) {
        if (wire_send(s, NULL, &env) != 0)
            printf("# claimer: UpdateReady not sent: %s\n", fp_error_get());
        return;
    }
    /* wire_send refuses a NaN loss: packed by hand, as a hostile client can */
    env.version = WIRE_PROTOCOL_VERSION;
    size_t len = fedpeft__envelope__get_packed_size(&env);
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    fedpeft__envelope__pack(&env, buf);
    if (zmq_send(s, buf, len, 0) != (int)len)
        printf("# claimer: raw UpdateReady not sent\n");
    free(buf);
}

static void *claimer_main(void *arg)
{
    claimer *c = arg;
    double hb = 0;
    while (!c->stop) {
        if (tu_now() - hb > 0.3) {
            send_heartbeat(c->s);
            hb = tu_now();
        }
        zmq_pollitem_t it = {c->s, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 100) <= 0)
            continue;
        wire_msg *msg = NULL;
        if (wire_recv(c->s, ZMQ_DONTWAIT, NULL, 0, &msg, NULL) != 1)
            continue;
        const Fedpeft__Task *t = msg->body_case == FEDPEFT__ENVELOPE__BODY_TASK ? msg->task : NULL;
        if (t && t->hold) {
            int k = c->holds++;
            if (k == 0) {
                claim(c->s, t, t->task_id, t->n_chunks + 1, 3.0f);
            } else {
                claim(c->s, t, t->task_id, t->n_chunks, 3.0f);
                claim(c->s, t, t->task_id, t->n_chunks, 3.0f);
                claim(c->s, t, t->task_id ^ ((uint64_t)1 << 40), t->n_chunks, 3.0f);
                if (k == 1)
                    claim(c->s, t, t->task_id, t->n_chunks, NAN);
            }
        }
        if (t && t->from_update)
            c->uploads_asked++;     /* and says nothing */
        if (msg->body_case == FEDPEFT__ENVELOPE__BODY_REJECT &&
            msg->reject->code == FEDPEFT__REJECT__CODE__SHUTDOWN)
            c->stop = 1;
        wire_msg_free(&msg);
    }
    return NULL;
}

static void test_async_claimer(void **state)
{
    (void)state;
    enum { R = 7 };
    fh_fed_init(&cur, "adv-async", base_dir, N_WORKERS);
    fh_fed_write_ini(&cur, "rounds = 7\nseed = 5", 4, 8,
                     "[sampling]\nmin_workers = 4\n[round]\nmode = async\nbuffer = 3\n"
                     "start_timeout_s = 60\ndeadline_s = 5\neval_deadline_s = 5\n");
    use_curve(&cur);
    fh_coordinator_start(&cur);
    mallory m;
    mallory_init(&m, &cur);
    claimer c = {m_socket(&m, "mallory#00000000000000aa"), 0, 0, 0};
    m_hello(&m, c.s, "mallory", 1000);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, claimer_main, &c), 0);
    for (int k = 0; k < N_WORKERS; k++)
        fh_worker_start(&cur, k);
    fh_fed_finish(&cur, RUN_TIMEOUT_S);
    c.stop = 1;
    pthread_join(th, NULL);
    zmq_close(c.s);
    mallory_free(&m);

    int n, done = 0;
    double last = NAN;
    cJSON **rows = fh_fed_metrics(&cur, R, &n);
    uint64_t rej[4] = {0};
    static const char *const kinds[] = {"shape", "invalid", "duplicate", "wrong_round"};
    for (int r = 0; r <= R; r++) {
        done += r > 0 && !cJSON_IsTrue(cJSON_GetObjectItem(rows[r], "abandoned"));
        cJSON *rj = cJSON_GetObjectItem(rows[r], "rejected");
        for (int i = 0; i < 4; i++)
            rej[i] += (uint64_t)fh_metric_number(rj, kinds[i]);
        rej[1] += (uint64_t)fh_metric_number(rj, "nonfinite");
        cJSON *v = cJSON_GetObjectItem(rows[r], "val_loss");
        if (cJSON_IsNumber(v))
            last = v->valuedouble;
        printf("# round %d: %s\n", r, cJSON_IsNumber(v) ? "complete" :
               cJSON_GetStringValue(cJSON_GetObjectItem(rows[r], "reason")));
    }
    char clog[4300];
    snprintf(clog, sizeof clog, "%s/coordinator-1.log", cur.dir);
    int silent = count_lines(clog, "mallory went silent in its buffer");
    printf("# claimer: %d hold tasks, in %d buffers, silent %d times; %d of %d rounds complete; "
           "refused: shape %llu, invalid/nonfinite %llu, duplicate %llu, unknown task %llu\n",
           c.holds, c.uploads_asked, silent, done, R, (unsigned long long)rej[0],
           (unsigned long long)rej[1], (unsigned long long)rej[2], (unsigned long long)rej[3]);
    /* in buffers 1, 3 and 6 at most (it waits 1, 2, then 4 rounds) */
    assert_true(c.uploads_asked >= 1 && c.uploads_asked <= 3);
    assert_int_equal(silent, c.uploads_asked);
    assert_true(done >= R - 3);
    assert_true(rej[0] >= 1 && rej[1] >= 1 && rej[2] >= 1 && rej[3] >= 1);
    printf("# validation loss %.4f -> %.4f\n", fh_metric_number(rows[0], "val_loss"), last);
    assert_true(last < fh_metric_number(rows[0], "val_loss"));
    fh_metrics_free(rows, n);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_one_key, teardown),
        cmocka_unit_test_teardown(test_huge_plain_update, teardown),
        cmocka_unit_test_teardown(test_stalling_and_silent_peers, teardown),
        cmocka_unit_test_teardown(test_sample_unpredictable, teardown),
        cmocka_unit_test_teardown(test_async_claimer, teardown),
        cmocka_unit_test_teardown(test_stale_hello, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
