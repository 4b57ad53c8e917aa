/* test_flora.c - FLoRA stacking (issue 6) end to end: the real
 * fedpeft-coordinator and fedpeft-worker processes on loopback (--insecure,
 * no secure aggregation), the bundled stories260K model, workers of LoRA rank
 * 4, 8 and 16 (the run's [lora] rank is 16), 3 rounds.
 *
 * 1. Every round completes with all 3 updates and the validation loss falls.
 *    The final PEFT adapter has rank 3 x (4 + 8 + 16) = 84, and the base
 *    model + that adapter evaluates, on each worker's validation split, to the
 *    loss the workers reported on their base with every fold added (1e-4).
 * 2. The coordinator SIGKILLed after round 2 and restarted resumes with its
 *    folds: its final adapter equals the uninterrupted run's (1e-6).
 * (flora + secure aggregation is refused: test_strategies.c.)
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
#include "data.h"
#include "finetune.h"
#include "tokenizer.h"

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
    snprintf(base_dir, sizeof base_dir, "%s", tu_tempdir("flora-base"));
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

/* ---- the tests ------------------------------------------------------------ */

#define ROUNDS 3
static const char *const FLORA_CFG = "[strategy]\nname = flora\n[secagg]\nenabled = false\n";
static fp_lora *reference;      /* test 1's final adapter, for test 2 */

static void mixed_ranks(fed *f)
{
    f->rank[0] = 4;
    f->rank[1] = 8;
    f->rank[2] = 16;
}

static fp_model_config model_config(void)
{
    fp_model_config mc;
    char path[4300];
    snprintf(path, sizeof path, "%s/model/config.json", base_dir);
    assert_int_equal(fp_config_load(path, &mc), 0);
    return mc;
}

/* Base model + adapter on worker k's validation split (split as the worker does). */
static void eval_split(const fp_model *m, const fp_lora *a, int k, double *loss, size_t *ntok)
{
    char path[4300];
    snprintf(path, sizeof path, "%s/model/tokenizer.json", base_dir);
    fp_tokenizer *tok = fp_tokenizer_load(path);
    assert_non_null(tok);
    fp_data_options opt;
    fp_data_options_default(&opt);
    opt.val_fraction = 0.1;
    opt.split_seed = 0;     /* [worker] split_seed's default */
    fp_dataset d = {0};
    snprintf(path, sizeof path, "%s/shard-%d.txt", base_dir, k);
    assert_int_equal(fp_dataset_load(path, tok, m->cfg.vocab_size, &opt, &d), 0);
    assert_int_equal(fp_evaluate(m, a, &d.valid, 32, 4, loss, ntok), 0);
    fp_dataset_free(&d);
    fp_tokenizer_free(&tok);
}

/* 1. ranks 4/8/16: loss falls; base + final adapter == base + folds. */
static void test_flora_mixed_ranks(void **state)
{
    (void)state;
    fed_init(&cur, "flora", "rounds = 3\nseed = 5", 16, FLORA_CFG);
    mixed_ranks(&cur);
    fed_start(&cur);
    fed_finish(&cur);
    int n;
    cJSON **rows = complete_metrics(&cur, ROUNDS, &n);
    print_losses("flora 4/8/16", rows, n);
    for (int i = 1; i <= ROUNDS; i++)
        assert_int_equal((int)field(rows[i], "reported"), N_WORKERS);
    double last = field(rows[ROUNDS], "val_loss");
    assert_true(last < field(rows[0], "val_loss"));
    printf("flora: bytes down per round:");
    for (int i = 1; i <= ROUNDS; i++)
        printf(" r%d=%.0f", i, field(rows[i], "bytes_down"));
    printf("\n");
    free_metrics(rows, n);
    assert_true(file_contains(tu_path(cur.dir, "w0.log"), "LoRA rank 4"));

    fp_model_config mc = model_config();
    fp_lora *a = fp_lora_load(cur.adapter, &mc);
    if (!a)
        fail_msg("final adapter %s: %s", cur.adapter, fp_error_get());
    assert_int_equal(a->cfg.rank, ROUNDS * (4 + 8 + 16));
    assert_true(fp_lora_scale(&a->cfg) == 1.0f);
    char path[4300];
    snprintf(path, sizeof path, "%s/model", base_dir);
    fp_model *m = fp_model_load(path);
    assert_non_null(m);
    double sum = 0, sum_base = 0;
    size_t tokens = 0;
    for (int k = 0; k < N_WORKERS; k++) {
        double loss, lb;
        size_t nt, nb;
        eval_split(m, a, k, &loss, &nt);
        eval_split(m, NULL, k, &lb, &nb);
        sum += loss * (double)nt;
        sum_base += lb * (double)nb;
        tokens += nt;
    }
    double mine = sum / (double)tokens, base = sum_base / (double)tokens;
    printf("flora: base %.6f, base + final adapter %.6f, workers' base + folds %.6f\n", base,
           mine, last);
    assert_true(fabs(mine - last) < 1e-4);
    assert_true(mine < base - 1e-3);
    fp_model_free(&m);
    reference = a;
}

/* 2. kill -9 after round 2, restart: the same final adapter. */
static void test_flora_restart(void **state)
{
    (void)state;
    if (!reference)
        skip();
    fed_init(&cur, "flora-restart", "rounds = 3\nseed = 5", 16, FLORA_CFG);
    mixed_ranks(&cur);
    fed_start(&cur);
    wait_round(&cur, 2, RUN_TIMEOUT_S);
    assert_int_equal(kill(cur.coord, SIGKILL), 0);
    int st;
    waitpid(cur.coord, &st, 0);
    start_coordinator(&cur);
    fed_finish(&cur);
    int n;
    cJSON **rows = complete_metrics(&cur, ROUNDS, &n);
    print_losses("flora restarted", rows, n);
    free_metrics(rows, n);
    char log2[4300];
    snprintf(log2, sizeof log2, "%s/coordinator-2.log", cur.dir);
    assert_true(file_contains(log2, "round 3: sampled"));
    fp_model_config mc = model_config();
    fp_lora *b = fp_lora_load(cur.adapter, &mc);
    assert_non_null(b);
    assert_int_equal(b->n_params, reference->n_params);
    double worst = 0;
    for (size_t i = 0; i < b->n_params; i++)
        worst = fmax(worst, fabs((double)b->params[i] - (double)reference->params[i]));
    printf("flora restart vs uninterrupted: max |diff| = %.3g\n", worst);
    assert_true(worst <= 1e-6);
    fp_lora_free(&b);
}

static int group_teardown(void **state)
{
    (void)state;
    fp_lora_free(&reference);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_flora_mixed_ranks, teardown),
        cmocka_unit_test_teardown(test_flora_restart, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
