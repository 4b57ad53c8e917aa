/* test_coordinator.c - the coordinator: its checkpoint format (round trip,
 * every corruption refused with a clear error), the FedAvg strategy against a
 * dense weighted mean, config errors through the real binary, and the real
 * binary against a scripted peer speaking the wire protocol (wrong model,
 * wrong version, garbage frames, then two full rounds with a NaN update, a
 * duplicate, an abandoned round, the final adapter and a restart). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "lora.h"
#include "model.h"
#include "rng.h"
#include "test_util.h"
#include "wire.h"

/* The modules under test are the coordinator's own sources (its folder is a
 * program, not a library): compile them in. */
#include "../coordinator/checkpoint.c"
#include "../coordinator/strategy_fedavg.c"

static char tmp[4096], model_dir[4096], model_hash[65];
static fp_model_config model_cfg;
static int port_base;

static int setup(void **state)
{
    (void)state;
    if (sodium_init() < 0)
        return -1;
    snprintf(tmp, sizeof tmp, "%s", tu_tempdir("coordinator"));
    snprintf(model_dir, sizeof model_dir, "%s/model", tmp);
    char cmd[8192], *out = NULL;
    snprintf(cmd, sizeof cmd,
             FP_TOOL " convert --llama2c " FP_SOURCE_DIR "/data/stories260K/stories260K.bin "
                     "--tokenizer " FP_SOURCE_DIR "/data/stories260K/tok512.bin --out %s",
             model_dir);
    int rc = tu_run(cmd, &out);
    if (rc != 0) {
        fprintf(stderr, "convert failed: %s\n", out);
        free(out);
        return -1;
    }
    free(out);
    fp_model *m = fp_model_load(model_dir);
    if (!m)
        return -1;
    model_cfg = m->cfg;
    fp_model_hash(m, model_hash);
    fp_model_free(&m);
    port_base = 21000 + (int)(getpid() % 20000);
    return 0;
}

/* ---- checkpoint ------------------------------------------------------------------ */

static void make_checkpoint(checkpoint *ck, size_t n)
{
    memset(ck, 0, sizeof *ck);
    snprintf(ck->run_id, sizeof ck->run_id, "run-abc");
    snprintf(ck->model_hash, sizeof ck->model_hash, "%s", model_hash);
    snprintf(ck->strategy, sizeof ck->strategy, "fedavg");
    ck->round = 7;
    ck->flags = CKPT_FLAG_FINISHED;
    ck->n_params = n;
    ck->adapter = malloc(n * sizeof(float));
    assert_non_null(ck->adapter);
    fp_rng rng;
    fp_rng_seed(&rng, 9);
    for (size_t i = 0; i < n; i++)
        ck->adapter[i] = fp_rng_float(&rng) - 0.5f;
    ck->strategy_len = 4;
    ck->strategy_state = malloc(4);
    memcpy(ck->strategy_state, "FAV1", 4);
    assert_int_equal(checkpoint_add_metrics(ck, "{\"round\":0}"), 0);
    assert_int_equal(checkpoint_add_metrics(ck, "{\"round\":1,\"val_loss\":3.5}"), 0);
    assert_int_equal(checkpoint_add_metrics(ck, ""), 0);
}

static void test_checkpoint_round_trip(void **state)
{
    (void)state;
    const char *path = tu_path(tmp, "ck-rt.bin");
    checkpoint a, b;
    make_checkpoint(&a, 1000);
    assert_int_equal(checkpoint_save(&a, path), 0);
    assert_int_equal(checkpoint_load(&b, path), 0);
    assert_string_equal(b.run_id, a.run_id);
    assert_string_equal(b.model_hash, a.model_hash);
    assert_string_equal(b.strategy, "fedavg");
    assert_int_equal(b.round, 7);
    assert_int_equal(b.flags, CKPT_FLAG_FINISHED);
    assert_int_equal(b.n_params, 1000);
    assert_memory_equal(b.adapter, a.adapter, 1000 * sizeof(float));
    assert_int_equal(b.strategy_len, 4);
    assert_memory_equal(b.strategy_state, "FAV1", 4);
    assert_int_equal(b.n_metrics, 3);
    assert_string_equal(b.metrics[1], "{\"round\":1,\"val_loss\":3.5}");
    assert_string_equal(b.metrics[2], "");
    checkpoint_clear(&b);
    /* A missing file is "no checkpoint", not an error. */
    assert_int_equal(checkpoint_load(&b, tu_path(tmp, "nothing-here.bin")), 1);
    checkpoint_clear(&a);
}

/* Loads bytes as a checkpoint; it must fail with an error naming the file and
 * containing `frag`. */
static void expect_refused(const char *what, const void *data, size_t len, const char *frag)
{
    const char *path = tu_path(tmp, "ck-bad.bin");
    assert_int_equal(tu_write_file(path, data, len), 0);
    checkpoint ck;
    fp_error_clear();
    int rc = checkpoint_load(&ck, path);
    printf("# %s: rc %d: %s\n", what, rc, fp_error_get());
    assert_int_equal(rc, -1);
    assert_non_null(strstr(fp_error_get(), "ck-bad.bin"));
    if (frag)
        assert_non_null(strstr(fp_error_get(), frag));
    assert_null(ck.adapter);
    assert_int_equal(ck.n_metrics, 0);
}

static void test_checkpoint_corruption(void **state)
{
    (void)state;
    const char *path = tu_path(tmp, "ck-good.bin");
    checkpoint a;
    make_checkpoint(&a, 300);
    assert_int_equal(checkpoint_save(&a, path), 0);
    checkpoint_clear(&a);
    size_t len;
    uint8_t *good = (uint8_t *)tu_read_file(path, &len);
    assert_non_null(good);
    uint8_t *bad = malloc(len + 64);
    assert_non_null(bad);

    /* Truncation anywhere. */
    size_t cuts[] = {0, 1, 7, 8, 20, CKPT_HEAD - 1, CKPT_HEAD, CKPT_HEAD + 40, len / 2,
                     len - 33, len - 32, len - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        char what[64];
        snprintf(what, sizeof what, "truncated to %zu of %zu bytes", cuts[i], len);
        expect_refused(what, good, cuts[i], NULL);
    }
    /* Trailing bytes. */
    memcpy(bad, good, len);
    memset(bad + len, 0x5a, 64);
    expect_refused("64 bytes appended", bad, len + 64, "checksum");
    /* Magic and version. */
    memcpy(bad, good, len);
    bad[0] ^= 0xff;
    expect_refused("bad magic", bad, len, "magic");
    memcpy(bad, good, len);
    bad[8] = 9;
    expect_refused("version 9", bad, len, "version");
    /* Each region's bytes, flipped one at a time: the checksum catches them. */
    size_t offs[] = {16, 60, 130, CKPT_HEAD + 5, CKPT_HEAD + 300 * 4 + 1, len - 10, len - 1};
    for (size_t i = 0; i < sizeof offs / sizeof *offs; i++) {
        memcpy(bad, good, len);
        bad[offs[i]] ^= 0x01;
        char what[64];
        snprintf(what, sizeof what, "bit flipped at byte %zu", offs[i]);
        expect_refused(what, bad, len, "checksum");
    }
    /* Lying sizes: refused before anything is allocated from them. */
    size_t n_params_at = 8 + 4 + 4 + 40 + 72 + 32 + 8;
    uint64_t huge = (uint64_t)1 << 60;
    memcpy(bad, good, len);
    memcpy(bad + n_params_at, &huge, 8);
    expect_refused("n_params 2^60", bad, len, "does not fit");
    memcpy(bad, good, len);
    memcpy(bad + n_params_at + 8, &huge, 8);
    expect_refused("strategy_len 2^60", bad, len, "does not fit");
    memcpy(bad, good, len);
    memcpy(bad + n_params_at + 16, &huge, 8);
    expect_refused("n_metrics 2^60", bad, len, "do not fit");
    /* Unterminated names. */
    memcpy(bad, good, len);
    memset(bad + 16, 'x', 40);
    expect_refused("unterminated run id", bad, len, "corrupt");
    free(bad);
    free(good);
}

/* ---- FedAvg ---------------------------------------------------------------------- */

#define FA_N 777
#define FA_K 6

static void run_fedavg(const float *global0, float deltas[FA_K][FA_N], const double *w,
                       const int *order, float *out)
{
    strategy *s = strategy_new("fedavg", FA_N);
    assert_non_null(s);
    memcpy(out, global0, FA_N * sizeof(float));
    assert_int_equal(strategy_begin(s, 1), 0);
    for (int k = 0; k < FA_K; k++)
        assert_int_equal(strategy_add(s, deltas[order[k]], w[order[k]]), 0);
    assert_int_equal(strategy_finish(s, out), 0);
    strategy_destroy(&s);
    assert_null(s);
}

static void test_fedavg_matches_dense_mean(void **state)
{
    (void)state;
    static float global0[FA_N], deltas[FA_K][FA_N], a[FA_N], b[FA_N];
    double w[FA_K];
    fp_rng rng;
    fp_rng_seed(&rng, 42);
    for (size_t i = 0; i < FA_N; i++)
        global0[i] = fp_rng_float(&rng) - 0.5f;
    for (int k = 0; k < FA_K; k++) {
        w[k] = (double)(1 + fp_rng_below(&rng, 5000));
        for (size_t i = 0; i < FA_N; i++)
            deltas[k][i] = (fp_rng_float(&rng) - 0.5f) * 0.1f;
    }
    int fwd[FA_K] = {0, 1, 2, 3, 4, 5}, rev[FA_K] = {5, 3, 1, 0, 2, 4};
    run_fedavg(global0, deltas, w, fwd, a);
    run_fedavg(global0, deltas, w, rev, b);
    double max_dense = 0, max_order = 0;
    for (size_t i = 0; i < FA_N; i++) {
        double num = 0, den = 0;
        for (int k = 0; k < FA_K; k++) {
            num += w[k] * deltas[k][i];
            den += w[k];
        }
        double want = (double)global0[i] + num / den;
        max_dense = fmax(max_dense, fabs((double)a[i] - want));
        max_order = fmax(max_order, fabs((double)a[i] - (double)b[i]));
    }
    printf("# fedavg: max |streamed - dense| = %.3g, max |order A - order B| = %.3g\n",
           max_dense, max_order);
    assert_true(max_dense <= 1e-7);
    assert_true(max_order <= 1e-7);

    /* One update of weight w is just global + delta. */
    strategy *s = strategy_fedavg_new(FA_N);
    assert_non_null(s);
    memcpy(a, global0, sizeof a);
    assert_int_equal(strategy_begin(s, 2), 0);
    assert_int_equal(strategy_finish(s, a), -1); /* nothing added */
    assert_memory_equal(a, global0, sizeof a);
    assert_int_equal(strategy_add(s, deltas[0], 0.0), -1);
    assert_int_equal(strategy_add(s, deltas[0], NAN), -1);
    assert_int_equal(strategy_add(s, deltas[0], 17.0), 0);
    assert_int_equal(strategy_finish(s, a), 0);
    for (size_t i = 0; i < FA_N; i++)
        assert_true(fabsf(a[i] - (global0[i] + deltas[0][i])) <= 1e-7f);
    /* begin() forgets the previous round. */
    assert_int_equal(strategy_begin(s, 3), 0);
    assert_int_equal(strategy_add(s, deltas[1], 1.0), 0);
    memcpy(a, global0, sizeof a);
    assert_int_equal(strategy_finish(s, a), 0);
    for (size_t i = 0; i < FA_N; i++)
        assert_true(fabsf(a[i] - (global0[i] + deltas[1][i])) <= 1e-7f);
    /* State round trip; foreign state refused. */
    uint8_t st[16];
    size_t sl = strategy_state_size(s);
    assert_true(sl <= sizeof st);
    assert_int_equal(strategy_state_save(s, st, sl), 0);
    assert_int_equal(strategy_state_load(s, st, sl), 0);
    st[0] ^= 1;
    assert_int_equal(strategy_state_load(s, st, sl), -1);
    assert_int_equal(strategy_state_load(s, st, 0), -1);
    assert_non_null(strstr(fp_error_get(), "strategy"));
    strategy_destroy(&s);
    assert_null(strategy_new("fedprox-nope", 10));
    assert_non_null(strstr(fp_error_get(), "fedavg"));
}

/* ---- the real binary -------------------------------------------------------------- */

static void write_ini(const char *path, int port, const char *state, int rounds)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f,
            "# one file for a whole simulation: the coordinator skips [worker] [simulate]\n"
            "[run]\nrounds = %d\nseed = 7\nstate_dir = %s\n"
            "[model]\npath = %s\n"
            "[lora]\nrank = 4\n"
            "[train]\nlocal_steps = 2\nseq = 32\n"
            "[round]\ndeadline_s = 20\nmin_quorum = 1\neval_deadline_s = 20\n"
            "start_timeout_s = 30\n"
            "[network]\nendpoint = tcp://127.0.0.1:%d\nheartbeat_ms = 500\n"
            "[worker]\nid = w01\ndata = nowhere.txt\n"
            "[simulate]\nworkers = 3\n"
            "[security]\ninsecure = true\n"  /* plain TCP for the scripted peers */
            "[secagg]\nenabled = false\n",  /* they upload plain TensorChunks */
            rounds, state, model_dir, port);
    fclose(f);
}

static pid_t spawn_coord(const char *ini, const char *log, const char *extra)
{
    fflush(stdout);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (!freopen(log, "w", stderr))
            _exit(127);
        dup2(fileno(stderr), 1);
        execl(FP_COORDINATOR, "fedpeft-coordinator", "--config", ini, extra, (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* Exit status (128 + signal if killed); -1 after timeout_ms (then killed). */
static int wait_exit(pid_t pid, int timeout_ms)
{
    for (int t = 0; t < timeout_ms; t += 20) {
        int st;
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        usleep(20000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

static int still_running(pid_t pid) { return waitpid(pid, NULL, WNOHANG) == 0; }

static int log_has(const char *log, const char *frag, int timeout_ms)
{
    for (int t = 0; t <= timeout_ms; t += 50) {
        char *text = tu_read_file(log, NULL);
        int found = text && strstr(text, frag);
        free(text);
        if (found)
            return 1;
        usleep(50000);
    }
    return 0;
}

static void dump_log(const char *log)
{
    char *text = tu_read_file(log, NULL);
    printf("# ---- %s ----\n%s# ----\n", log, text ? text : "(missing)");
    free(text);
}

static void test_config_errors(void **state)
{
    (void)state;
    char ini[4200], cmd[8192], *out = NULL;
    snprintf(ini, sizeof ini, "%s/unknown-key.ini", tmp);
    FILE *f = fopen(ini, "w");
    fprintf(f, "[model]\npath = %s\n[train]\nlr = 0.001\nsteps = 5\n", model_dir);
    fclose(f);
    snprintf(cmd, sizeof cmd, FP_COORDINATOR " --config %s", ini);
    int rc = tu_run(cmd, &out);
    printf("# unknown key: exit %d: %s", rc, out);
    assert_true(rc > 0 && rc < 128);
    assert_non_null(strstr(out, "unknown-key.ini:5"));
    assert_non_null(strstr(out, "steps"));
    assert_non_null(strstr(out, "error"));
    free(out);

    snprintf(ini, sizeof ini, "%s/no-model.ini", tmp);
    f = fopen(ini, "w");
    fprintf(f, "[run]\nrounds = 2\n[worker]\nid = w1\n");
    fclose(f);
    snprintf(cmd, sizeof cmd, FP_COORDINATOR " --config %s", ini);
    rc = tu_run(cmd, &out);
    printf("# no model: exit %d: %s", rc, out);
    assert_true(rc > 0 && rc < 128);
    assert_non_null(strstr(out, "[model] path"));
    free(out);

    snprintf(cmd, sizeof cmd, FP_COORDINATOR " --config %s --model.path=%s/nowhere --insecure",
             ini, tmp);
    rc = tu_run(cmd, &out);
    printf("# model dir missing: exit %d: %s", rc, out);
    assert_true(rc > 0 && rc < 128);
    assert_non_null(strstr(out, "nowhere"));
    free(out);

    snprintf(cmd, sizeof cmd, FP_COORDINATOR " --config %s --round.min_quorum=0", ini);
    rc = tu_run(cmd, &out);
    printf("# bad value: exit %d: %s", rc, out);
    assert_true(rc > 0 && rc < 128);
    assert_non_null(strstr(out, "min_quorum"));
    free(out);
}

static void test_port_in_use(void **state)
{
    (void)state;
    int port = port_base + 1;
    char ini[4200], log[4200], st[4200], cmd[8192], *out = NULL;
    snprintf(ini, sizeof ini, "%s/port.ini", tmp);
    snprintf(log, sizeof log, "%s/port-a.log", tmp);
    snprintf(st, sizeof st, "%s/port-state-a", tmp);
    write_ini(ini, port, st, 3);
    pid_t a = spawn_coord(ini, log, NULL);
    if (!log_has(log, "listening on", 20000))
        dump_log(log);
    assert_true(log_has(log, "listening on", 0));
    /* Another state directory, the same port. */
    snprintf(cmd, sizeof cmd, FP_COORDINATOR " --config %s --run.state_dir=%s/port-state-b", ini,
             tmp);
    int rc = tu_run(cmd, &out);
    printf("# second coordinator: exit %d: %s", rc, out);
    assert_true(rc > 0 && rc < 128);
    assert_true(strstr(out, "port in use") || strstr(out, "already in use"));
    int error_lines = 0;
    for (const char *p = out; (p = strstr(p, "error")); p++)
        error_lines++;
    assert_int_equal(error_lines, 1);
    free(out);
    /* The same state directory, another port: refused too. */
    snprintf(cmd, sizeof cmd, FP_COORDINATOR " --config %s --network.endpoint=tcp://127.0.0.1:%d",
             ini, port + 1);
    rc = tu_run(cmd, &out);
    printf("# same state dir: exit %d: %s", rc, out);
    assert_true(rc > 0 && rc < 128);
    assert_non_null(strstr(out, "in use by another coordinator"));
    free(out);
    assert_true(still_running(a));
    kill(a, SIGTERM);
    assert_int_equal(wait_exit(a, 10000), 128 + SIGTERM);
    assert_true(log_has(log, "stopped by signal", 0));
}

/* ---- a scripted peer ---------------------------------------------------------------- */

static int hb_replies;

/* Next message other than a Heartbeat (those are counted); sends our own
 * heartbeat every 150 ms while waiting when `beat`. NULL on timeout. */
static double mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static wire_msg *next_msg(void *sock, int timeout_ms, int beat)
{
    double start = mono_ms(), last_beat = -1e9;
    while (mono_ms() - start < timeout_ms) {
        if (beat && mono_ms() - last_beat >= 150) {
            assert_int_equal(wire_send_heartbeat(sock, NULL, 0, 1), 0);
            last_beat = mono_ms();
        }
        zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 50) <= 0)
            continue;
        wire_msg *m = NULL;
        wire_err why;
        int rc = wire_recv(sock, ZMQ_DONTWAIT, NULL, 0, &m, &why);
        assert_true(rc >= 0);
        if (rc == 0)
            continue;
        if (m->body_case == FEDPEFT__ENVELOPE__BODY_HEARTBEAT) {
            hb_replies++;
            wire_msg_free(&m);
            continue;
        }
        return m;
    }
    return NULL;
}

static wire_msg *expect(void *sock, Fedpeft__Envelope__BodyCase body, int beat)
{
    wire_msg *m = next_msg(sock, 15000, beat);
    assert_non_null(m);
    if (m->body_case != body)
        printf("# expected body %d, got %d%s%s\n", body, m->body_case,
               m->body_case == FEDPEFT__ENVELOPE__BODY_REJECT ? ": " : "",
               m->body_case == FEDPEFT__ENVELOPE__BODY_REJECT ? m->reject->reason : "");
    assert_int_equal(m->body_case, body);
    return m;
}

static wire_msg *expect_reject(void *sock, Fedpeft__Reject__Code code, const char *frag, int beat)
{
    wire_msg *m = expect(sock, FEDPEFT__ENVELOPE__BODY_REJECT, beat);
    printf("# reject %d: %s\n", m->reject->code, m->reject->reason);
    assert_int_equal(m->reject->code, code);
    if (frag)
        assert_non_null(strstr(m->reject->reason, frag));
    return m;
}

/* Task of this kind and round, then its chunks into dst (n floats). */
static uint64_t expect_task(void *sock, int kind, uint64_t round, float *dst, size_t n)
{
    wire_msg *m = expect(sock, FEDPEFT__ENVELOPE__BODY_TASK, 1);
    assert_int_equal(m->task->kind, kind);
    assert_int_equal(m->task->round, round);
    assert_non_null(m->task->params);
    assert_int_equal(m->task->params->local_steps, 2);
    assert_int_equal(m->task->n_chunks, wire_n_chunks(n));
    uint64_t tid = m->task->task_id;
    wire_assembler as;
    wire_asm_begin(&as, dst, n, m->task->n_chunks, tid);
    wire_msg_free(&m);
    while (!wire_asm_complete(&as)) {
        m = expect(sock, FEDPEFT__ENVELOPE__BODY_CHUNK, 1);
        assert_int_equal(wire_asm_add(&as, m->chunk), 0);
        wire_msg_free(&m);
    }
    return tid;
}

static void send_env(void *sock, wire_msg *env)
{
    assert_int_equal(wire_send(sock, NULL, env), 0);
}

static void send_eval_tokens(void *sock, uint64_t tid, uint64_t round, double loss,
                             uint64_t n_tokens)
{
    Fedpeft__EvalResult e = FEDPEFT__EVAL_RESULT__INIT;
    e.task_id = tid;
    e.round = round;
    e.loss = loss;
    e.n_tokens = n_tokens;
    wire_msg env = FEDPEFT__ENVELOPE__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_EVAL_RESULT;
    env.eval_result = &e;
    send_env(sock, &env);
}

static void send_eval(void *sock, uint64_t tid, uint64_t round, double loss)
{
    send_eval_tokens(sock, tid, round, loss, 1000);
}

static void send_ready(void *sock, uint64_t tid, uint64_t round, uint32_t n_chunks)
{
    Fedpeft__UpdateReady u = FEDPEFT__UPDATE_READY__INIT;
    u.task_id = tid;
    u.round = round;
    u.n_examples = 100;
    u.n_tokens = 3200;
    u.train_loss = 4.5f;
    u.n_chunks = n_chunks;
    wire_msg env = FEDPEFT__ENVELOPE__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_UPDATE_READY;
    env.update_ready = &u;
    send_env(sock, &env);
}

/* Sends one raw frame (no validation, no version fix-up). */
static void send_raw(void *sock, const void *data, size_t len, int more)
{
    assert_true(zmq_send(sock, data, len, more ? ZMQ_SNDMORE : 0) >= 0);
}

static void *peer_new(void *zctx, int port, const char *id)
{
    char ep[64];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", port);
    void *s = wire_dealer_connect(zctx, ep, id);
    assert_non_null(s);
    return s;
}

/* Hello from peers that must be refused, and frames that must not hurt. */
static void bad_peers(void *zctx, int port, pid_t coord)
{
    void *bad = peer_new(zctx, port, "badmodel");
    char other[65];
    memset(other, 'a', 64);
    other[64] = '\0';
    assert_int_equal(wire_send_hello(bad, "badmodel", other, 10, 10), 0);
    wire_msg *m = expect_reject(bad, FEDPEFT__REJECT__CODE__MODEL, "different base model", 0);
    assert_non_null(strstr(m->reject->reason, "aaaaaaaaaaaa"));
    wire_msg_free(&m);
    zmq_close(bad);

    void *old = peer_new(zctx, port, "oldpeer");
    Fedpeft__Hello h = FEDPEFT__HELLO__INIT;
    h.worker_id = "oldpeer";
    h.model_hash = model_hash;
    wire_msg env = FEDPEFT__ENVELOPE__INIT;
    env.body_case = FEDPEFT__ENVELOPE__BODY_HELLO;
    env.hello = &h;
    env.version = WIRE_PROTOCOL_VERSION + 1;
    uint8_t buf[512];
    size_t len = fedpeft__envelope__pack(&env, buf);
    send_raw(old, buf, len, 0);
    m = expect_reject(old, FEDPEFT__REJECT__CODE__VERSION, "version", 0);
    wire_msg_free(&m);

    /* Garbage from the same peer: random bytes, a truncated Hello, an empty
     * frame, two frames, and a valid message before saying Hello. */
    env.version = WIRE_PROTOCOL_VERSION;
    len = fedpeft__envelope__pack(&env, buf);
    uint8_t junk[300];
    fp_rng rng;
    fp_rng_seed(&rng, 3);
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (uint8_t)fp_rng_next(&rng);
    send_raw(old, junk, sizeof junk, 0);
    send_raw(old, buf, len / 2, 0);
    send_raw(old, "", 0, 0);
    send_raw(old, buf, len, 1);
    send_raw(old, buf, len, 0);
    for (int i = 0; i < 3; i++) {
        m = expect_reject(old, FEDPEFT__REJECT__CODE__BAD_MESSAGE, NULL, 0);
        wire_msg_free(&m);
    }
    assert_int_equal(wire_send_heartbeat(old, NULL, 0, 0), 0);
    for (;;) { /* the multipart frame's answer (if any) comes first */
        m = next_msg(old, 15000, 0);
        assert_non_null(m);
        assert_int_equal(m->body_case, FEDPEFT__ENVELOPE__BODY_REJECT);
        int code = m->reject->code;
        wire_msg_free(&m);
        if (code == FEDPEFT__REJECT__CODE__UNKNOWN_WORKER)
            break;
        assert_int_equal(code, FEDPEFT__REJECT__CODE__BAD_MESSAGE);
    }
    zmq_close(old);

    /* More than WIRE_MAX_MSG_BYTES: libzmq drops that connection. */
    void *big = peer_new(zctx, port, "bigpeer");
    size_t big_len = (size_t)WIRE_MAX_MSG_BYTES + 1000;
    uint8_t *huge = calloc(1, big_len);
    assert_non_null(huge);
    send_raw(big, huge, big_len, 0);
    free(huge);
    usleep(200000);
    zmq_close(big);
    assert_true(still_running(coord));
}

static void test_scripted_peer(void **state)
{
    (void)state;
    int port = port_base + 3;
    char ini[4200], log[4200], st[4200], out_dir[4200];
    snprintf(ini, sizeof ini, "%s/peer.ini", tmp);
    snprintf(log, sizeof log, "%s/peer.log", tmp);
    snprintf(st, sizeof st, "%s/peer-state", tmp);
    snprintf(out_dir, sizeof out_dir, "%s/adapter", st);
    write_ini(ini, port, st, 2);
    pid_t coord = spawn_coord(ini, log, NULL);
    if (!log_has(log, "listening on", 20000))
        dump_log(log);
    assert_true(log_has(log, "listening on", 0));

    void *zctx = zmq_ctx_new();
    bad_peers(zctx, port, coord);

    /* The shape the coordinator must announce. */
    fp_lora_config lc;
    fp_lora_config_default(&lc);
    lc.rank = 4;
    fp_lora *expect_lora = fp_lora_new(&model_cfg, &lc);
    assert_non_null(expect_lora);
    size_t n = expect_lora->n_params;
    fp_lora_free(&expect_lora);
    float *adapter = malloc(n * sizeof(float)), *again = malloc(n * sizeof(float));
    float *delta = malloc(n * sizeof(float));
    assert_true(adapter && again && delta);
    for (size_t i = 0; i < n; i++)
        delta[i] = 0.001f * (float)((int)(i % 7) - 3);

    void *w = peer_new(zctx, port, "w01");
    assert_int_equal(wire_send_hello(w, "w01", model_hash, 100, 3200), 0);
    wire_msg *m = expect(w, FEDPEFT__ENVELOPE__BODY_WELCOME, 0);
    assert_true(strlen(m->welcome->run_id) > 0);
    assert_int_equal(m->welcome->lora->n_params, n);
    assert_int_equal(m->welcome->lora->rank, 4);
    assert_int_equal(m->welcome->heartbeat_ms, 500);
    wire_msg_free(&m);

    /* Round 0: evaluate the initial adapter. */
    uint64_t eval0 = expect_task(w, FEDPEFT__TASK__KIND__EVAL, 0, adapter, n);
    send_eval(w, eval0, 0, 5.0);
    /* Round 1: an update with a NaN is refused; the round is abandoned. */
    uint64_t t1 = expect_task(w, FEDPEFT__TASK__KIND__TRAIN, 1, again, n);
    assert_memory_equal(again, adapter, n * sizeof(float));
    send_ready(w, t1, 1, wire_n_chunks(n));
    m = expect(w, FEDPEFT__ENVELOPE__BODY_PULL, 1);
    assert_int_equal(m->pull->task_id, t1);
    wire_msg_free(&m);
    delta[5] = NAN;
    assert_int_equal(wire_send_slab(w, NULL, t1, delta, n), 0);
    delta[5] = 0.001f * (float)((5 % 7) - 3);
    m = expect_reject(w, FEDPEFT__REJECT__CODE__BAD_MESSAGE, NULL, 1);
    wire_msg_free(&m);
    /* Round 2: the global is unchanged; a duplicate and a late message are
     * refused; the update is accepted. */
    uint64_t t2 = expect_task(w, FEDPEFT__TASK__KIND__TRAIN, 2, again, n);
    assert_true(t2 != t1);
    assert_memory_equal(again, adapter, n * sizeof(float));
    send_ready(w, t2, 2, wire_n_chunks(n));
    m = expect(w, FEDPEFT__ENVELOPE__BODY_PULL, 1);
    wire_msg_free(&m);
    send_ready(w, t2, 2, wire_n_chunks(n));
    m = expect_reject(w, FEDPEFT__REJECT__CODE__STALE, "duplicate", 1);
    wire_msg_free(&m);
    send_eval(w, eval0, 0, 4.0);
    m = expect_reject(w, FEDPEFT__REJECT__CODE__STALE, "late", 1);
    wire_msg_free(&m);
    assert_int_equal(wire_send_slab(w, NULL, t2, delta, n), 0);
    uint64_t eval2 = expect_task(w, FEDPEFT__TASK__KIND__EVAL, 2, again, n);
    for (size_t i = 0; i < n; i++)
        assert_true(fabsf(again[i] - (adapter[i] + delta[i])) <= 1e-7f);
    send_eval(w, eval2, 2, 4.25);
    m = expect_reject(w, FEDPEFT__REJECT__CODE__SHUTDOWN, "run complete", 1);
    wire_msg_free(&m);
    int rc = wait_exit(coord, 15000);
    if (rc != 0)
        dump_log(log);
    assert_int_equal(rc, 0);
    assert_true(hb_replies > 0);

    /* The final adapter is a PEFT directory holding the global adapter. */
    fp_lora *fin = fp_lora_load(out_dir, &model_cfg);
    if (!fin)
        printf("# %s\n", fp_error_get());
    assert_non_null(fin);
    assert_int_equal(fin->n_params, n);
    for (size_t i = 0; i < n; i++)
        assert_true(fabsf(fin->params[i] - again[i]) <= 1e-7f);
    fp_lora_free(&fin);

    /* Metrics: rounds 0..2, the abandoned one, the rejections by reason. */
    char *metrics = tu_read_file(tu_path(st, "metrics.jsonl"), NULL);
    assert_non_null(metrics);
    printf("# metrics.jsonl:\n%s", metrics);
    char *l1 = strchr(metrics, '\n');
    assert_non_null(l1);
    char *l2 = strchr(l1 + 1, '\n');
    assert_non_null(l2);
    assert_non_null(strstr(metrics, "\"round\":0"));
    assert_non_null(strstr(metrics, "\"val_loss\":5"));
    *l2 = '\0';
    assert_non_null(strstr(l1, "\"round\":1"));
    assert_non_null(strstr(l1, "\"abandoned\":true"));
    assert_non_null(strstr(l1, "\"nonfinite\":1"));
    assert_non_null(strstr(l2 + 1, "\"round\":2"));
    assert_non_null(strstr(l2 + 1, "\"duplicate\":1"));
    assert_non_null(strstr(l2 + 1, "\"late\":1"));
    assert_non_null(strstr(l2 + 1, "\"val_loss\":4.25"));
    assert_null(strchr(strchr(l2 + 1, '\n') + 1, '\n'));
    free(metrics);
    assert_true(log_has(log, "rejected (model)", 0));
    assert_true(log_has(log, "rejected (version)", 0));
    assert_true(log_has(log, "rejected (undecodable)", 0));
    assert_true(log_has(log, "round 1 abandoned", 0));

    /* A restart after the end: the checkpoint says the run is over; a worker
     * that says Hello is told to shut down, and the coordinator exits 0. */
    snprintf(log, sizeof log, "%s/peer-restart.log", tmp);
    coord = spawn_coord(ini, log, NULL);
    assert_true(log_has(log, "listening on", 20000));
    assert_int_equal(wire_send_hello(w, "w01", model_hash, 100, 3200), 0);
    m = expect(w, FEDPEFT__ENVELOPE__BODY_WELCOME, 0);
    wire_msg_free(&m);
    m = expect_reject(w, FEDPEFT__REJECT__CODE__SHUTDOWN, NULL, 0);
    wire_msg_free(&m);
    rc = wait_exit(coord, 15000);
    if (rc != 0)
        dump_log(log);
    assert_int_equal(rc, 0);
    metrics = tu_read_file(tu_path(st, "metrics.jsonl"), NULL);
    assert_non_null(metrics);
    int lines = 0;
    for (char *p = metrics; *p; p++)
        lines += *p == '\n';
    assert_int_equal(lines, 3);
    free(metrics);

    zmq_close(w);
    zmq_ctx_term(zctx);
    free(adapter);
    free(again);
    free(delta);
}

/* Two peers: one stalls its upload after Pull, the other sends an unknown task
 * id and a wrong chunk count. Both are refused and counted, the round is
 * abandoned (below quorum), and the run still ends cleanly. */
static void test_stall_and_shape(void **state)
{
    (void)state;
    int port = port_base + 5;
    char ini[4200], log[4200], st[4200];
    snprintf(ini, sizeof ini, "%s/stall.ini", tmp);
    snprintf(log, sizeof log, "%s/stall.log", tmp);
    snprintf(st, sizeof st, "%s/stall-state", tmp);
    write_ini(ini, port, st, 1);
    pid_t coord = spawn_coord(ini, log, "--sampling.min_workers=2");
    if (!log_has(log, "listening on", 20000))
        dump_log(log);
    assert_true(log_has(log, "listening on", 0));
    void *zctx = zmq_ctx_new();
    void *a = peer_new(zctx, port, "w01"), *b = peer_new(zctx, port, "w02");
    assert_int_equal(wire_send_hello(a, "w01", model_hash, 10, 320), 0);
    wire_msg *m = expect(a, FEDPEFT__ENVELOPE__BODY_WELCOME, 0);
    size_t n = m->welcome->lora->n_params;
    wire_msg_free(&m);
    assert_int_equal(wire_send_hello(b, "w02", model_hash, 10, 320), 0);
    m = expect(b, FEDPEFT__ENVELOPE__BODY_WELCOME, 0);
    wire_msg_free(&m);
    float *adapter = malloc(n * sizeof(float));
    assert_non_null(adapter);
    uint64_t e0 = expect_task(a, FEDPEFT__TASK__KIND__EVAL, 0, adapter, n);
    send_eval(a, e0, 0, 5.0);
    assert_int_equal(expect_task(b, FEDPEFT__TASK__KIND__EVAL, 0, adapter, n), e0);
    /* No validation rows (a split shorter than one row): reported, no weight, no Reject. */
    send_eval_tokens(b, e0, 0, 0.0, 0);
    uint64_t t1 = expect_task(a, FEDPEFT__TASK__KIND__TRAIN, 1, adapter, n);
    assert_int_equal(expect_task(b, FEDPEFT__TASK__KIND__TRAIN, 1, adapter, n), t1);
    send_ready(b, t1 + 1000, 1, wire_n_chunks(n));
    m = expect_reject(b, FEDPEFT__REJECT__CODE__STALE, "unknown task", 1);
    wire_msg_free(&m);
    send_ready(b, t1, 1, wire_n_chunks(n) + 6);
    m = expect_reject(b, FEDPEFT__REJECT__CODE__BAD_MESSAGE, "chunks", 1);
    wire_msg_free(&m);
    send_ready(a, t1, 1, wire_n_chunks(n));
    m = expect(a, FEDPEFT__ENVELOPE__BODY_PULL, 1);
    wire_msg_free(&m);
    /* ... and never send the chunks: 3 x 500 ms later the upload is dropped. */
    m = expect_reject(a, FEDPEFT__REJECT__CODE__STALE, "stalled", 1);
    wire_msg_free(&m);
    m = expect_reject(a, FEDPEFT__REJECT__CODE__SHUTDOWN, "run complete", 1);
    wire_msg_free(&m);
    int rc = wait_exit(coord, 15000);
    if (rc != 0)
        dump_log(log);
    assert_true(log_has(log, "round 0: eval from w02: no validation rows", 0));
    assert_int_equal(rc, 0);
    char *metrics = tu_read_file(tu_path(st, "metrics.jsonl"), NULL);
    assert_non_null(metrics);
    printf("# metrics.jsonl:\n%s", metrics);
    char *l1 = strchr(metrics, '\n');
    assert_non_null(l1);
    /* w02's evaluation has no weight: the mean is w01's alone, over its tokens */
    assert_non_null(strstr(metrics, "\"val_loss\":5,\"val_tokens\":320"));
    assert_non_null(strstr(l1, "\"round\":1"));
    assert_non_null(strstr(l1, "\"abandoned\":true"));
    assert_non_null(strstr(l1, "\"stalled\":1"));
    assert_non_null(strstr(l1, "\"shape\":1"));
    assert_non_null(strstr(l1, "\"wrong_round\":1"));
    free(metrics);
    assert_true(log_has(log, "round 1 abandoned", 0));
    free(adapter);
    zmq_close(a);
    zmq_close(b);
    zmq_ctx_term(zctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checkpoint_round_trip),
        cmocka_unit_test(test_checkpoint_corruption),
        cmocka_unit_test(test_fedavg_matches_dense_mean),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_port_in_use),
        cmocka_unit_test(test_scripted_peer),
        cmocka_unit_test(test_stall_and_shape),
    };
    if (getenv("TEST_FILTER"))
        cmocka_set_test_filter(getenv("TEST_FILTER"));
    return cmocka_run_group_tests(tests, setup, NULL);
}
