/* test_strategies.c - the aggregation strategies of issue 6 end to end: the
 * real fedpeft-coordinator and fedpeft-worker processes on loopback (all
 * --insecure), the bundled stories260K model, 3 workers, a few local steps.
 *
 * 1. ffa under secure aggregation: the aggregate is exactly the sum of the
 *    workers' weighted B updates (dumped by the test hook), A is unchanged from
 *    the seeded init, and the uplink is about half of fedavg's.
 * 2. svd with worker ranks 4, 8 and 16: rounds complete and the loss falls.
 * 3. svd, flora and robust rules with secure aggregation are refused at start-up.
 * 4. fedavg refuses a rank-4 worker at registration, with the reason.
 * 5. fedadam + FedProx: a SIGKILLed and restarted coordinator ends with the
 *    adapter of an uninterrupted run (the optimizer state is in the checkpoint).
 * 6. median with one poisoned worker stays within the honest updates; fedavg
 *    does not.
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
#include "lora.h"
#include "model.h"

#define N_WORKERS 3
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


static int group_setup(void **state)
{
    (void)state;
    char cmd[8192];
    snprintf(base_dir, sizeof base_dir, "%s", tu_tempdir("strategies"));
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

typedef struct {
    char dir[4096], cfg[4200], state[4200], metrics[4300], adapter[4300], dump[4300];
    char endpoint[64];
    pid_t coord, workers[N_WORKERS];
    int coord_runs;
    int rank[N_WORKERS];        /* --worker.rank (0: none) */
    const char *poison[N_WORKERS]; /* FEDPEFT_TEST_POISON */
} fed;

/* DIR/fed.ini; `extra` appended. Every process dumps its updates to DIR/dump. */
static void fed_init(fed *f, const char *tag, const char *run_section, int rank,
                     const char *extra)
{
    memset(f, 0, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "%s", tu_tempdir(tag));
    snprintf(f->cfg, sizeof f->cfg, "%s/fed.ini", f->dir);
    snprintf(f->state, sizeof f->state, "%s/state", f->dir);
    snprintf(f->metrics, sizeof f->metrics, "%s/metrics.jsonl", f->state);
    snprintf(f->adapter, sizeof f->adapter, "%s/adapter", f->dir);
    snprintf(f->dump, sizeof f->dump, "%s/dump", f->dir);
    assert_int_equal(mkdir(f->dump, 0755), 0);
    snprintf(f->endpoint, sizeof f->endpoint, "tcp://127.0.0.1:%d", free_port());
    char ini[8192];
    snprintf(ini, sizeof ini,
             "[run]\n%s\nstate_dir = %s\nout_dir = %s\n"
             "[model]\npath = %s/model\n"
             "[lora]\nrank = %d\nalpha = 8\ntargets = all\n"
             "[train]\nlocal_steps = 4\nbatch = 4\nseq = 32\nlr = 5e-3\n"
             "[sampling]\nmin_workers = %d\n[round]\nstart_timeout_s = 60\n"
             "[network]\nendpoint = %s\nheartbeat_ms = 500\n"
             "[worker]\nendpoint = %s\nconnect_retries = 30\nretry_backoff_ms = 200\n"
             "val_fraction = 0.1\n%s",
             run_section, f->state, f->adapter, base_dir, rank, N_WORKERS, f->endpoint,
             f->endpoint, extra ? extra : "");
    assert_int_equal(tu_write_file(f->cfg, ini, strlen(ini)), 0);
}

static pid_t spawn(char *const argv[], const char *log, const char *poison, const char *dump)
{
    fflush(stdout);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        FILE *o = freopen(log, "w", stdout);
        if (!o || dup2(fileno(stdout), 2) < 0)
            _exit(126);
        setenv("OPENBLAS_NUM_THREADS", "1", 1);
        if (poison)
            setenv("FEDPEFT_TEST_POISON", poison, 1);
        if (dump)
            setenv("FEDPEFT_TEST_DUMP_DIR", dump, 1);
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

static void start_coordinator(fed *f)
{
    char log[4300];
    snprintf(log, sizeof log, "%s/coordinator-%d.log", f->dir, ++f->coord_runs);
    char *argv[] = {FP_COORDINATOR, "--config", f->cfg, "--insecure", NULL};
    f->coord = spawn(argv, log, NULL, NULL);
}

static void start_worker(fed *f, int k)
{
    char log[4300], id[64], data[4300], rank[64];
    snprintf(log, sizeof log, "%s/w%d.log", f->dir, k);
    snprintf(id, sizeof id, "--worker.id=w%d", k);
    snprintf(data, sizeof data, "--worker.data=%s/shard-%d.txt", base_dir, k);
    snprintf(rank, sizeof rank, "--worker.rank=%d", f->rank[k]);
    char *argv[] = {FP_WORKER, "--config", f->cfg, id, data, "--worker.threads=1",
                    "--insecure", rank, NULL};
    f->workers[k] = spawn(argv, log, f->poison[k], f->dump);
}

static void fed_start(fed *f)
{
    start_coordinator(f);
    for (int k = 0; k < N_WORKERS; k++)
        start_worker(f, k);
}

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

static void print_losses(const char *what, cJSON **rows, int n)
{
    printf("%s: validation loss", what);
    for (int i = 0; i < n; i++)
        printf(" r%d=%.4f", i, field(rows[i], "val_loss"));
    printf("\n");
}

/* ---- reading the results --------------------------------------------------- */

/* The adapter slab of STATE_DIR/checkpoint.bin (checkpoint.h: the floats
 * follow a 192-byte header; n_params at byte 168). Caller frees. */
static float *ckpt_adapter(const fed *f, size_t *n)
{
    size_t len;
    char *b = tu_read_file(tu_path(f->state, "checkpoint.bin"), &len);
    assert_non_null(b);
    uint64_t np;
    memcpy(&np, b + 168, 8);
    assert_true(192 + np * 4 <= len);
    float *x = malloc(np * sizeof *x);
    memcpy(x, b + 192, np * 4);
    free(b);
    *n = (size_t)np;
    return x;
}

static float *read_f32(const char *path, size_t *n)
{
    size_t len;
    char *b = tu_read_file(path, &len);
    if (!b)
        fail_msg("missing %s", path);
    *n = len / 4;
    float *x = malloc(len);
    memcpy(x, b, len);
    free(b);
    return x;
}

/* The run's seeded initial adapter (rank r, alpha 8, all targets). */
static fp_lora *init_adapter(int r, uint64_t seed)
{
    fp_model_config mc;
    char path[4300];
    snprintf(path, sizeof path, "%s/model/config.json", base_dir);
    assert_int_equal(fp_config_load(path, &mc), 0);
    fp_lora_config lc;
    fp_lora_config_default(&lc);
    lc.rank = r;
    lc.alpha = 8;
    assert_int_equal(fp_lora_parse_targets("all", &lc.targets), 0);
    fp_lora *a = fp_lora_new(&mc, &lc);
    assert_non_null(a);
    fp_lora_init(a, seed);
    return a;
}

static double round_field(const fed *f, int round, const char *key)
{
    int n;
    cJSON **rows = read_metrics(f->metrics, &n);
    assert_true(round < n);
    double v = field(rows[round], key);
    free_metrics(rows, n);
    return v;
}

/* B entries of the slab, packed in slab order (the ffa view). */
static size_t gather_b(const fp_lora *l, const float *slab, float *out)
{
    size_t pos = 0;
    for (int layer = 0; layer < l->model.n_layers; layer++)
        for (int t = 0; t < FP_T_COUNT; t++) {
            size_t off = l->off_b[layer * FP_T_COUNT + t];
            if (off == SIZE_MAX)
                continue;
            size_t len = (size_t)fp_lora_out_dim(&l->model, t) * (size_t)l->cfg.rank;
            if (out)
                memcpy(out + pos, slab + off, len * sizeof *out);
            pos += len;
        }
    return pos;
}

/* ---- the tests ------------------------------------------------------------- */

/* 1. ffa under secagg: aggregate == sum of the weighted B updates; A unchanged. */
static void test_ffa_exact_half_bytes(void **state)
{
    (void)state;
    fed_init(&cur, "ffa", "rounds = 1\nseed = 7", 4, "[strategy]\nname = ffa\n");
    fed_start(&cur);
    fed_finish(&cur);
    double up_ffa = round_field(&cur, 1, "bytes_up");
    size_t n;
    float *g = ckpt_adapter(&cur, &n);
    fp_lora *init = init_adapter(4, 7);
    assert_int_equal(n, init->n_params);
    size_t nb = gather_b(init, init->params, NULL);
    float *sum = calloc(nb, sizeof *sum), *gb = malloc(nb * sizeof *gb);
    for (int k = 0; k < N_WORKERS; k++) {
        char p[4400];
        size_t m;
        snprintf(p, sizeof p, "%s/worker-w%d-round-1.f32", cur.dump, k);
        float *d = read_f32(p, &m);
        assert_int_equal(m, nb);   /* the upload is the B view only */
        for (size_t i = 0; i < nb; i++)
            sum[i] += d[i];        /* weighted by n_k / sum n under secagg */
        free(d);
    }
    gather_b(init, g, gb);
    double num = 0, den = 0, worst_a = 0;
    for (size_t i = 0; i < nb; i++) {
        num += ((double)gb[i] - sum[i]) * ((double)gb[i] - sum[i]);
        den += (double)sum[i] * sum[i];
    }
    /* A: put the init's B into g's B positions, then the whole slab must equal init */
    float *ga = malloc(n * sizeof *ga);
    memcpy(ga, g, n * sizeof *ga);
    for (int layer = 0; layer < init->model.n_layers; layer++)
        for (int t = 0; t < FP_T_COUNT; t++) {
            size_t off = init->off_b[layer * FP_T_COUNT + t];
            if (off == SIZE_MAX)
                continue;
            size_t len = (size_t)fp_lora_out_dim(&init->model, t) * 4;
            memset(ga + off, 0, len * sizeof *ga);
        }
    for (size_t i = 0; i < n; i++)
        worst_a = fmax(worst_a, fabs((double)ga[i] - (double)init->params[i]));
    printf("ffa: %zu B floats of %zu, rel err %.3g vs the weighted sum, max |dA| = %g\n", nb, n,
           sqrt(num / den), worst_a);
    assert_true(den > 0);
    assert_true(sqrt(num / den) < 1e-4);
    assert_true(worst_a == 0.0);
    free(sum), free(gb), free(ga), free(g);
    fp_lora_free(&init);

    fed_init(&cur, "ffa-ref", "rounds = 1\nseed = 7", 4, NULL);   /* fedavg */
    fed_start(&cur);
    fed_finish(&cur);
    double up_avg = round_field(&cur, 1, "bytes_up");
    printf("bytes_up: ffa %.0f, fedavg %.0f (%.2f)\n", up_ffa, up_avg, up_ffa / up_avg);
    assert_true(up_ffa < 0.6 * up_avg);
}

/* 2. svd with worker ranks 4, 8, 16 (global 16): rounds complete, loss falls. */
static void test_svd_mixed_ranks(void **state)
{
    (void)state;
    fed_init(&cur, "svd", "rounds = 2\nseed = 5", 16,
             "[strategy]\nname = svd\n[secagg]\nenabled = false\n");
    cur.rank[0] = 4;
    cur.rank[1] = 8;
    cur.rank[2] = 16;
    fed_start(&cur);
    fed_finish(&cur);
    int n;
    cJSON **rows = complete_metrics(&cur, 2, &n);
    print_losses("svd 4/8/16", rows, n);
    assert_true(field(rows[2], "val_loss") < field(rows[0], "val_loss"));
    assert_int_equal((int)field(rows[2], "reported"), 3);
    free_metrics(rows, n);
    assert_true(file_contains(tu_path(cur.dir, "w0.log"), "LoRA rank 4"));
}

/* 3. Strategies that need individual updates refuse secure aggregation. */
static void test_refused_under_secagg(void **state)
{
    (void)state;
    static const char *const cases[][2] = {
        {"name = svd\n", "strategy svd needs each worker's factors"},
        {"name = flora\n", "strategy flora needs each worker's factors"},
        {"robust = median\n", "robust = median needs each worker's update"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char extra[256];
        snprintf(extra, sizeof extra, "[strategy]\n%s", cases[i][0]);
        fed_init(&cur, "refuse", "rounds = 1", 4, extra);
        start_coordinator(&cur);
        int rc = wait_exit(cur.coord, 30, "the coordinator");
        cur.coord = 0;
        char log[4300];
        snprintf(log, sizeof log, "%s/coordinator-1.log", cur.dir);
        assert_true(rc != 0);
        if (!file_contains(log, cases[i][1]) || !file_contains(log, "[secagg] enabled = false"))
            fail_msg("%s: no clear refusal in %s", cases[i][0], log);
    }
}

/* 4. fedavg refuses a worker asking for another rank, with the reason. */
static void test_fedavg_refuses_rank(void **state)
{
    (void)state;
    fed_init(&cur, "rank-refused", "rounds = 1", 8, "[sampling]\nmin_workers = 1\n");
    cur.rank[0] = 4;
    start_coordinator(&cur);
    start_worker(&cur, 0);
    int rc = wait_exit(cur.workers[0], 60, "the refused worker");
    cur.workers[0] = 0;
    assert_true(rc != 0);
    assert_true(file_contains(tu_path(cur.dir, "w0.log"), "needs every worker at the same rank"));
}

/* 5. fedadam + FedProx: kill -9 after round 2 and restart == uninterrupted. */
static void test_fedadam_restart(void **state)
{
    (void)state;
    const char *extra = "[strategy]\nserver_opt = fedadam\nserver_lr = 0.01\n"
                        "[train]\nprox_mu = 0.01\n[secagg]\nenabled = false\n";
    fed_init(&cur, "adam-ref", "rounds = 3\nseed = 11", 4, extra);
    fed_start(&cur);
    fed_finish(&cur);
    size_t n1, n2;
    fed ref_fed = cur;
    float *a = ckpt_adapter(&ref_fed, &n1);

    fed_init(&cur, "adam-restart", "rounds = 3\nseed = 11", 4, extra);
    fed_start(&cur);
    wait_round(&cur, 2, RUN_TIMEOUT_S);
    assert_int_equal(kill(cur.coord, SIGKILL), 0);
    int st;
    waitpid(cur.coord, &st, 0);
    start_coordinator(&cur);
    fed_finish(&cur);
    int n;
    cJSON **rows = complete_metrics(&cur, 3, &n);
    print_losses("fedadam restarted", rows, n);
    free_metrics(rows, n);
    char log2[4300];
    snprintf(log2, sizeof log2, "%s/coordinator-2.log", cur.dir);
    assert_true(file_contains(log2, "round 3: sampled"));
    float *b = ckpt_adapter(&cur, &n2);
    assert_int_equal(n1, n2);
    double worst = 0;
    for (size_t i = 0; i < n1; i++)
        worst = fmax(worst, fabs((double)a[i] - (double)b[i]));
    printf("fedadam restart vs uninterrupted: max |diff| = %.3g\n", worst);
    assert_true(worst <= 1e-6);
    free(a), free(b);
}

/* 6. One worker scales its update by 1e3: median stays between the honest
 * updates coordinate-wise; fedavg moves far outside them. */
static void run_poisoned(const char *tag, const char *strategy_extra, float **g, size_t *n,
                         float **h0, float **h1)
{
    fed_init(&cur, tag, "rounds = 1\nseed = 3", 4, strategy_extra);
    cur.poison[2] = "1e3";
    fed_start(&cur);
    fed_finish(&cur);
    *g = ckpt_adapter(&cur, n);
    size_t m;
    char p[4400];
    snprintf(p, sizeof p, "%s/worker-w0-round-1.f32", cur.dump);
    *h0 = read_f32(p, &m);
    assert_int_equal(m, *n);
    snprintf(p, sizeof p, "%s/worker-w1-round-1.f32", cur.dump);
    *h1 = read_f32(p, &m);
    assert_int_equal(m, *n);
}

static void test_median_poisoned(void **state)
{
    (void)state;
    fp_lora *init = init_adapter(4, 3);
    float *g, *h0, *h1;
    size_t n;
    run_poisoned("median", "[strategy]\nrobust = median\n[secagg]\nenabled = false\n", &g, &n,
                 &h0, &h1);
    assert_int_equal(n, init->n_params);
    double out_med = 0, hnorm = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)g[i] - init->params[i];
        double lo = fmin(h0[i], h1[i]), hi = fmax(h0[i], h1[i]);
        out_med = fmax(out_med, fmax(lo - d, d - hi));
        hnorm = fmax(hnorm, fmax(fabs(h0[i]), fabs(h1[i])));
    }
    free(g), free(h0), free(h1);
    run_poisoned("poison-fedavg", "[secagg]\nenabled = false\n", &g, &n, &h0, &h1);
    double out_avg = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)g[i] - init->params[i];
        double lo = fmin(h0[i], h1[i]), hi = fmax(h0[i], h1[i]);
        out_avg = fmax(out_avg, fmax(lo - d, d - hi));
    }
    printf("poisoned: median leaves the honest range by %.3g, fedavg by %.3g (honest max %.3g)\n",
           out_med, out_avg, hnorm);
    assert_true(out_med <= 1e-6 * fmax(1.0, hnorm) + 1e-7);
    assert_true(out_avg > 10 * hnorm);
    free(g), free(h0), free(h1);
    fp_lora_free(&init);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_refused_under_secagg, teardown),
        cmocka_unit_test_teardown(test_fedavg_refuses_rank, teardown),
        cmocka_unit_test_teardown(test_ffa_exact_half_bytes, teardown),
        cmocka_unit_test_teardown(test_svd_mixed_ranks, teardown),
        cmocka_unit_test_teardown(test_median_poisoned, teardown),
        cmocka_unit_test_teardown(test_fedadam_restart, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
