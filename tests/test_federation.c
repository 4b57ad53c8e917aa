/* test_federation.c - acceptance tests of a whole federation: the real
 * fedpeft-coordinator and fedpeft-worker processes on loopback (free ports),
 * the bundled stories260K model and a few thousand lines of Shakespeare.
 *
 * 1. 4 workers, 3 rounds: the federated validation loss falls every round,
 *    over CURVE with keys made here (the other scenarios run --insecure).
 * 2. a worker SIGKILLed mid-round: the round closes on quorum at the deadline
 *    and the next round samples only the living.
 * 3. the coordinator SIGKILLed after round 2 and restarted: it resumes at
 *    round 3 and ends with the adapter of an uninterrupted run.
 * 4. garbage, truncated, multi-frame and oversized frames from a raw DEALER:
 *    the run completes and the rejections are counted.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <cjson/cJSON.h>
#include <zmq.h>

#include "keys.h"
#include "safetensors.h"
#include "test_util.h"
#include "wire.h"

#define N_WORKERS 4
#define RUN_TIMEOUT_S 300

static char base_dir[4096];     /* model/ and shard-K.txt, shared by every test */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* Converts the model and cuts 4 shards of 1000 lines each. */
static int group_setup(void **state)
{
    (void)state;
    char cmd[8192];
    snprintf(base_dir, sizeof base_dir, "%s", tu_tempdir("federation"));
    snprintf(cmd, sizeof cmd, "'%s' convert --llama2c '%s/data/stories260K/stories260K.bin' "
             "--tokenizer '%s/data/stories260K/tok512.bin' --out '%s/model' >/dev/null",
             FP_TOOL, FP_SOURCE_DIR, FP_SOURCE_DIR, base_dir);
    if (tu_run(cmd, NULL) != 0)
        return -1;
    for (int k = 0; k < N_WORKERS; k++) {
        snprintf(cmd, sizeof cmd, "sed -n '%d,%dp' '%s/data/tinyshakespeare/input.txt' > "
                 "'%s/shard-%d.txt'", 1 + k * 1000, (k + 1) * 1000, FP_SOURCE_DIR, base_dir, k);
        if (tu_run(cmd, NULL) != 0)
            return -1;
    }
    return 0;
}

/* ---- a federation ---------------------------------------------------------- */

typedef struct {
    char dir[4096], cfg[4200], state[4200], metrics[4300], adapter[4300];
    char endpoint[64];
    pid_t coord, workers[N_WORKERS];
    int coord_runs;     /* coordinator-N.log */
    int curve;          /* keys in DIR/keys; else every process runs --insecure */
} fed;

/* Writes DIR/fed.ini: the whole federation in one file. `extra` is appended
 * (sections the test needs to change). */
static void fed_init(fed *f, const char *tag, const char *run_section, int local_steps,
                     const char *extra)
{
    memset(f, 0, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "%s", tu_tempdir(tag));
    snprintf(f->cfg, sizeof f->cfg, "%s/fed.ini", f->dir);
    snprintf(f->state, sizeof f->state, "%s/state", f->dir);
    snprintf(f->metrics, sizeof f->metrics, "%s/metrics.jsonl", f->state);
    snprintf(f->adapter, sizeof f->adapter, "%s/adapter", f->dir);
    snprintf(f->endpoint, sizeof f->endpoint, "tcp://127.0.0.1:%d", free_port());
    char ini[8192];
    snprintf(ini, sizeof ini,
             "[run]\n%s\nstate_dir = %s\nout_dir = %s\n"
             "[model]\npath = %s/model\n"
             "[lora]\nrank = 4\nalpha = 8\ntargets = all\n"
             "[train]\nlocal_steps = %d\nbatch = 4\nseq = 32\nlr = 5e-3\n"
             "[network]\nendpoint = %s\nheartbeat_ms = 500\n"
             "[worker]\nendpoint = %s\nconnect_retries = 30\nretry_backoff_ms = 200\n"
             "val_fraction = 0.1\n%s",
             run_section, f->state, f->adapter, base_dir, local_steps, f->endpoint, f->endpoint,
             extra ? extra : "");
    assert_int_equal(tu_write_file(f->cfg, ini, strlen(ini)), 0);
}

/* CURVE for this federation: key pairs for the coordinator and every worker
 * in DIR/keys, and DIR/keys/allowlist admitting the workers. */
static void fed_use_curve(fed *f)
{
    char dir[4300], allow[8192] = "# test_federation\n", name[16];
    snprintf(dir, sizeof dir, "%s/keys", f->dir);
    assert_int_equal(mkdir(dir, 0700), 0);
    for (int k = -1; k < N_WORKERS; k++) {
        snprintf(name, sizeof name, k < 0 ? "coordinator" : "w%d", k);
        fp_keypair *kp = fp_keypair_generate(name);
        assert_non_null(kp);
        assert_int_equal(fp_keypair_save(kp, dir, 0), 0);
        if (k >= 0)
            snprintf(allow + strlen(allow), sizeof allow - strlen(allow), "%s %s\n",
                     kp->public_z85, name);
        fp_keypair_free(&kp);
    }
    assert_int_equal(tu_write_file(tu_path(dir, "allowlist"), allow, strlen(allow)), 0);
    f->curve = 1;
}

static pid_t spawn(char *const argv[], const char *log)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        FILE *o = freopen(log, "w", stdout);
        if (!o || dup2(fileno(stdout), 2) < 0)
            _exit(126);
        setenv("OPENBLAS_NUM_THREADS", "1", 1);
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

static void start_coordinator(fed *f)
{
    char log[4300], sk[4400], al[4400];
    snprintf(log, sizeof log, "%s/coordinator-%d.log", f->dir, ++f->coord_runs);
    snprintf(sk, sizeof sk, "--security.secret_key=%s/keys/coordinator.key", f->dir);
    snprintf(al, sizeof al, "--security.allowlist=%s/keys/allowlist", f->dir);
    char *argv[] = {FP_COORDINATOR, "--config", f->cfg, f->curve ? sk : "--insecure",
                    f->curve ? al : NULL, NULL};
    f->coord = spawn(argv, log);
}

static void start_worker(fed *f, int k)
{
    char log[4300], id[64], data[4300], sk[4400], ck[4400];
    snprintf(log, sizeof log, "%s/w%d.log", f->dir, k);
    snprintf(id, sizeof id, "--worker.id=w%d", k);
    snprintf(data, sizeof data, "--worker.data=%s/shard-%d.txt", base_dir, k);
    snprintf(sk, sizeof sk, "--security.secret_key=%s/keys/w%d.key", f->dir, k);
    snprintf(ck, sizeof ck, "--security.coordinator_key=%s/keys/coordinator.pub", f->dir);
    char *argv[] = {FP_WORKER, "--config", f->cfg, id, data, "--worker.threads=1",
                    f->curve ? sk : "--insecure", f->curve ? ck : NULL, NULL};
    f->workers[k] = spawn(argv, log);
}

static void fed_start(fed *f)
{
    start_coordinator(f);
    for (int k = 0; k < N_WORKERS; k++)
        start_worker(f, k);
}

/* Exit status of pid within timeout_s; SIGKILLs it and fails otherwise. */
static int wait_exit(pid_t pid, double timeout_s, const char *what)
{
    timeout_s *= tu_slow();     /* sanitizer builds, FP_TEST_SLOW */
    double end = now_s() + timeout_s;
    int st;
    while (now_s() < end) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        usleep(50000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    fail_msg("%s (pid %d) still running after %.0f s", what, (int)pid, timeout_s);
    return -1;
}

/* Kills whatever is left (test failure paths) and reaps everything. */
static void fed_reap(fed *f)
{
    pid_t all[N_WORKERS + 1] = {f->coord};
    memcpy(all + 1, f->workers, sizeof f->workers);
    for (int i = 0; i <= N_WORKERS; i++)
        if (all[i] > 0) {
            kill(all[i], SIGTERM);
            double end = now_s() + 5;
            int st;
            while (waitpid(all[i], &st, WNOHANG) == 0 && now_s() < end)
                usleep(20000);
            kill(all[i], SIGKILL);
            waitpid(all[i], &st, 0);
        }
}

/* The coordinator ends the run (exit 0) and the workers leave on SHUTDOWN (exit 0). */
static void fed_finish(fed *f)
{
    int rc = wait_exit(f->coord, RUN_TIMEOUT_S, "the coordinator");
    if (rc != 0)
        fail_msg("the coordinator exited %d; see %s/coordinator-%d.log", rc, f->dir, f->coord_runs);
    f->coord = 0;
    for (int k = 0; k < N_WORKERS; k++) {
        if (f->workers[k] <= 0)
            continue;
        rc = wait_exit(f->workers[k], 30, "a worker after SHUTDOWN");
        if (rc != 0)
            fail_msg("worker w%d exited %d after the run; see %s/w%d.log", k, rc, f->dir, k);
        f->workers[k] = 0;
    }
}

/* ---- metrics --------------------------------------------------------------- */

/* metrics.jsonl as an array of objects (index = line). Caller frees. */
static cJSON **read_metrics(const char *path, int *n)
{
    *n = 0;
    char *text = tu_read_file(path, NULL);
    if (!text)
        return NULL;
    cJSON **rows = calloc(1024, sizeof *rows);
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line && *n < 1024;
         line = strtok_r(NULL, "\n", &save)) {
        cJSON *o = cJSON_Parse(line);
        if (!o)
            fail_msg("%s: line %d is not JSON: %s", path, *n + 1, line);
        rows[(*n)++] = o;
    }
    free(text);
    return rows;
}

static void free_metrics(cJSON **rows, int n)
{
    for (int i = 0; i < n; i++)
        cJSON_Delete(rows[i]);
    free(rows);
}

static double field(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v))
        fail_msg("metrics line has no number '%s'", key);
    return v->valuedouble;
}

/* Waits until metrics.jsonl has a line for round r. */
static void wait_round(fed *f, int r, double timeout_s)
{
    double end = now_s() + timeout_s;
    while (now_s() < end) {
        int n;
        cJSON **rows = read_metrics(f->metrics, &n);
        int seen = 0;
        for (int i = 0; i < n; i++)
            seen |= (int)field(rows[i], "round") == r;
        free_metrics(rows, n);
        if (seen)
            return;
        int st;
        if (waitpid(f->coord, &st, WNOHANG) == f->coord) {
            f->coord = 0;
            fail_msg("the coordinator ended before round %d; see %s", r, f->dir);
        }
        usleep(50000);
    }
    fail_msg("no metrics line for round %d within %.0f s (%s)", r, timeout_s, f->metrics);
}

/* Checks rounds 0..R appear once each, in order; returns the rows. */
static cJSON **complete_metrics(const fed *f, int R, int *n)
{
    cJSON **rows = read_metrics(f->metrics, n);
    if (!rows)
        fail_msg("no %s", f->metrics);
    assert_int_equal(*n, R + 1);
    for (int i = 0; i <= R; i++)
        assert_int_equal((int)field(rows[i], "round"), i);
    return rows;
}

static int file_contains(const char *path, const char *needle)
{
    char *t = tu_read_file(path, NULL);
    int yes = t && strstr(t, needle);
    free(t);
    return yes;
}

/* ---- the tests ------------------------------------------------------------- */

static fed cur;     /* the federation of the running test: the teardown reaps it */

static int teardown(void **state)
{
    (void)state;
    fed_reap(&cur);
    memset(&cur, 0, sizeof cur);
    return 0;
}

/* Prints every round's validation loss; fails naming the round (and why it was
 * abandoned) when one has none. */
static void print_losses(const char *what, cJSON **rows, int n)
{
    printf("%s: validation loss", what);
    for (int i = 0; i < n; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(rows[i], "val_loss");
        if (!cJSON_IsNumber(v)) {
            char *line = cJSON_PrintUnformatted(rows[i]);
            printf("\n");
            fail_msg("round %d has no val_loss (abandoned, or no evaluation answer before "
                     "eval_deadline_s): %s", i, line ? line : "?");
        }
        printf(" r%d=%.4f", i, v->valuedouble);
    }
    printf("\n");
}

/* 1. The federated validation loss falls every round. */
static void test_loss_falls(void **state)
{
    (void)state;
    fed_init(&cur, "fed-basic", "rounds = 3\nseed = 7", 8,
             "[sampling]\nmin_workers = 4\n[round]\nstart_timeout_s = 60\n");
    fed_use_curve(&cur);
    fed_start(&cur);
    fed_finish(&cur);
    int n;
    cJSON **rows = complete_metrics(&cur, 3, &n);
    print_losses("4 workers over CURVE", rows, n);
    char clog[4300];
    snprintf(clog, sizeof clog, "%s/coordinator-1.log", cur.dir);
    assert_true(file_contains(clog, "CURVE on: coordinator public key"));
    assert_int_equal((int)field(rows[0], "sampled"), 0);
    assert_true(field(rows[0], "val_tokens") > 0);
    for (int r = 1; r <= 3; r++) {
        assert_int_equal((int)field(rows[r], "sampled"), N_WORKERS);
        assert_int_equal((int)field(rows[r], "reported"), N_WORKERS);
        assert_true(field(rows[r], "bytes_up") > 0);
        if (!(field(rows[r], "val_loss") < field(rows[r - 1], "val_loss")))
            fail_msg("validation loss did not fall in round %d: %.5f -> %.5f", r,
                     field(rows[r - 1], "val_loss"), field(rows[r], "val_loss"));
    }
    assert_true(field(rows[3], "val_loss") < field(rows[0], "val_loss") - 0.05);
    free_metrics(rows, n);
    char *cfg = tu_read_file(tu_path(cur.adapter, "adapter_config.json"), NULL);
    assert_non_null(cfg);
    free(cfg);
}

/* 2. A worker SIGKILLed while training round 2: the round closes on quorum
 * at the deadline; round 3 samples the 3 living workers. */
static void test_worker_killed(void **state)
{
    (void)state;
    /* The deadlines only bound the rounds: the killed worker is found dead after
     * 3 heartbeats and round 2 closes as soon as the living have reported. They
     * must hold 120 steps of 4 workers on a loaded 2-core machine (about 11 s
     * under ASan with 2 busy cores): scaled by tu_slow(). start_timeout_s is
     * how long round 3 waits for the 4th worker before starting with 3. */
    char extra[512];
    double slow = tu_slow();
    snprintf(extra, sizeof extra, "[sampling]\nmin_workers = 4\n"
             "[round]\ndeadline_s = %.0f\nmin_quorum = 2\nstart_timeout_s = %.0f\n"
             "eval_deadline_s = %.0f\n", 40 * slow, 8 * slow, 30 * slow);
    fed_init(&cur, "fed-kill", "rounds = 3\nseed = 11", 120, extra); /* the kill lands mid-round */
    fed_start(&cur);

    char log[4300];
    int st;
    snprintf(log, sizeof log, "%s/w3.log", cur.dir);
    double end = now_s() + RUN_TIMEOUT_S;
    while (!file_contains(log, "round 2: training") && now_s() < end) {
        if (waitpid(cur.coord, &st, WNOHANG) == cur.coord) {
            cur.coord = 0;
            fail_msg("the coordinator ended early; see %s/coordinator-1.log", cur.dir);
        }
        usleep(20000);
    }
    assert_true(file_contains(log, "round 2: training"));
    assert_int_equal(kill(cur.workers[3], SIGKILL), 0);
    waitpid(cur.workers[3], &st, 0);
    cur.workers[3] = 0;
    double killed_at = now_s();

    fed_finish(&cur);
    int n;
    cJSON **rows = complete_metrics(&cur, 3, &n);
    print_losses("worker killed", rows, n);
    assert_int_equal((int)field(rows[1], "reported"), N_WORKERS);
    assert_int_equal((int)field(rows[2], "sampled"), N_WORKERS);
    assert_int_equal((int)field(rows[2], "reported"), N_WORKERS - 1);
    assert_int_equal((int)field(rows[3], "sampled"), N_WORKERS - 1);
    assert_int_equal((int)field(rows[3], "reported"), N_WORKERS - 1);
    assert_true(now_s() - killed_at > 1.0);
    /* The coordinator names the living in round 3's sample, and not w3. */
    char clog[4300];
    snprintf(clog, sizeof clog, "%s/coordinator-1.log", cur.dir);
    assert_true(file_contains(clog, "round 3: sampled 3 of 3 workers (w0 w1 w2)"));
    free_metrics(rows, n);
}

/* Every tensor of two adapters; returns the largest absolute difference. */
static double adapter_diff(const char *a_dir, const char *b_dir, size_t *n_tensors)
{
    fp_safetensors *a = fp_st_open(tu_path(a_dir, "adapter_model.safetensors"));
    fp_safetensors *b = fp_st_open(tu_path(b_dir, "adapter_model.safetensors"));
    if (!a || !b)
        fail_msg("cannot open the adapters: %s", fp_error_get());
    assert_int_equal(fp_st_count(a), fp_st_count(b));
    double worst = 0;
    for (size_t i = 0; i < fp_st_count(a); i++) {
        const fp_st_tensor *ta = fp_st_at(a, i), *tb = fp_st_find(b, ta->name);
        if (!tb)
            fail_msg("tensor %s missing from %s", ta->name, b_dir);
        assert_int_equal(ta->numel, tb->numel);
        float *x = malloc(ta->numel * sizeof *x), *y = malloc(ta->numel * sizeof *y);
        assert_int_equal(fp_st_read_f32(a, ta, x, ta->numel), 0);
        assert_int_equal(fp_st_read_f32(b, tb, y, tb->numel), 0);
        for (size_t j = 0; j < ta->numel; j++)
            worst = fmax(worst, fabs((double)x[j] - (double)y[j]));
        free(x);
        free(y);
    }
    *n_tensors = fp_st_count(a);
    fp_st_close(&a);
    fp_st_close(&b);
    return worst;
}

/* 3. The coordinator SIGKILLed after round 2 and restarted resumes at round 3
 * and ends with the adapter of an uninterrupted run.
 *
 * Bit-exactness: each worker's round is a pure function of (global adapter,
 * round, seed, its data), so a replayed round 3 reproduces every delta
 * exactly. FedAvg accumulates n_k * delta_k in double in arrival order, which
 * differs between runs; double addition is not associative, so the sum can
 * differ in its last double bits, and the float it is rounded to differs in
 * the rare case where that lands on a rounding boundary. Hence a tight
 * tolerance (1e-6 absolute on values of order 1e-2) rather than equality;
 * the test prints whether the adapters were bit-identical. */
static void test_coordinator_restart(void **state)
{
    (void)state;
    const char *extra = "[sampling]\nmin_workers = 4\n[round]\nstart_timeout_s = 60\n";
    static char ref_adapter[4300];
    fed_init(&cur, "fed-ref", "rounds = 4\nseed = 99", 8, extra);
    fed_start(&cur);
    fed_finish(&cur);
    snprintf(ref_adapter, sizeof ref_adapter, "%s", cur.adapter);
    int n;
    cJSON **rows = complete_metrics(&cur, 4, &n);
    free_metrics(rows, n);

    fed_init(&cur, "fed-restart", "rounds = 4\nseed = 99", 8, extra);
    fed_start(&cur);
    wait_round(&cur, 2, RUN_TIMEOUT_S);
    assert_int_equal(kill(cur.coord, SIGKILL), 0);
    int st;
    waitpid(cur.coord, &st, 0);
    start_coordinator(&cur);
    fed_finish(&cur);

    rows = complete_metrics(&cur, 4, &n);
    print_losses("restarted", rows, n);
    free_metrics(rows, n);
    char log2[4300];
    snprintf(log2, sizeof log2, "%s/coordinator-2.log", cur.dir);
    if (file_contains(log2, "round 1: sampled") || file_contains(log2, "round 2: sampled"))
        fail_msg("the restarted coordinator replayed rounds 1-2 (see %s)", log2);
    assert_true(file_contains(log2, "round 3: sampled"));
    size_t nt;
    double d = adapter_diff(ref_adapter, cur.adapter, &nt);
    printf("restart vs uninterrupted: %zu tensors, max |diff| = %.3g%s\n", nt, d,
           d == 0 ? " (bit-identical)" : "");
    assert_true(nt > 0);
    assert_true(d <= 1e-6);
}

/* Sends one frame (or two) from the raw socket. */
static void raw_send(void *s, const void *buf, size_t len, int more)
{
    assert_true(zmq_send(s, buf, len, more ? ZMQ_SNDMORE : 0) == (int)len);
}

static double total_rejected(cJSON **rows, int n)
{
    double sum = 0;
    for (int i = 0; i < n; i++) {
        const cJSON *rej = cJSON_GetObjectItemCaseSensitive(rows[i], "rejected"), *e;
        cJSON_ArrayForEach(e, rej) if (cJSON_IsNumber(e)) sum += e->valuedouble;
    }
    return sum;
}

/* 4. Bad frames from a raw DEALER during the run. */
static void test_garbage_frames(void **state)
{
    (void)state;
    fed_init(&cur, "fed-garbage", "rounds = 3\nseed = 5", 8,
             "[sampling]\nmin_workers = 4\n[round]\nstart_timeout_s = 60\n");
    fed_start(&cur);
    wait_round(&cur, 1, RUN_TIMEOUT_S);

    void *zctx = zmq_ctx_new();
    void *s = zmq_socket(zctx, ZMQ_DEALER);
    int linger = 2000;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_ROUTING_ID, "intruder", 8);
    assert_int_equal(zmq_connect(s, cur.endpoint), 0);
    int sent = 0;
    unsigned char junk[300];
    memset(junk, 0xFF, sizeof junk);
    for (size_t len = 1; len <= 300; len *= 4, sent++)     /* 1, 4, 16, 64, 256 */
        raw_send(s, junk, len, 0);
    /* A valid Hello, truncated at several points. */
    Fedpeft__Hello h = FEDPEFT__HELLO__INIT;
    h.worker_id = "intruder";
    h.model_hash = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    h.n_train_examples = 10;
    Fedpeft__Envelope env = FEDPEFT__ENVELOPE__INIT;
    env.version = WIRE_PROTOCOL_VERSION;
    env.body_case = FEDPEFT__ENVELOPE__BODY_HELLO;
    env.hello = &h;
    size_t len = fedpeft__envelope__get_packed_size(&env);
    uint8_t *buf = malloc(len);
    fedpeft__envelope__pack(&env, buf);
    size_t cuts[] = {len - 1, len / 2, len / 3, 3};
    for (size_t i = 0; i < 4; i++, sent++)
        raw_send(s, buf, cuts[i], 0);
    raw_send(s, buf, len, 1);           /* two frames in one message */
    raw_send(s, buf, len, 0);
    sent++;
    env.version = WIRE_PROTOCOL_VERSION + 41;   /* a version from the future */
    fedpeft__envelope__pack(&env, buf);
    raw_send(s, buf, len, 0);
    sent++;
    free(buf);
    usleep(500000);
    /* Last, as the ROUTER drops the connection of an oversized frame. */
    size_t big = (size_t)WIRE_MAX_MSG_BYTES + 4096;
    uint8_t *huge = calloc(1, big);
    raw_send(s, huge, big, 0);
    free(huge);
    usleep(500000);
    zmq_close(s);
    zmq_ctx_term(zctx);

    fed_finish(&cur);
    int n;
    cJSON **rows = complete_metrics(&cur, 3, &n);
    print_losses("under garbage", rows, n);
    for (int r = 1; r <= 3; r++)
        assert_int_equal((int)field(rows[r], "reported"), N_WORKERS);
    double rej = total_rejected(rows, n);
    printf("rejected frames counted: %.0f (sent %d bad + 1 oversized)\n", rej, sent);
    if (rej < sent)
        fail_msg("the coordinator counted %.0f rejections for %d bad frames", rej, sent);
    free_metrics(rows, n);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_loss_falls, teardown),
        cmocka_unit_test_teardown(test_worker_killed, teardown),
        cmocka_unit_test_teardown(test_coordinator_restart, teardown),
        cmocka_unit_test_teardown(test_garbage_frames, teardown),
    };
    if (getenv("FP_TEST_FILTER"))     /* e.g. FP_TEST_FILTER=test_worker_killed */
        cmocka_set_test_filter(getenv("FP_TEST_FILTER"));
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
