/* test_federation.c - acceptance tests of a whole federation: the real
 * fedpeft-coordinator and fedpeft-worker processes on loopback (free ports),
 * the bundled stories260K model and a few thousand lines of Shakespeare.
 *
 * 1. 4 workers, 3 rounds: the federated validation loss falls every round.
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
#include <sys/wait.h>
#include <netinet/in.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <cjson/cJSON.h>
#include <zmq.h>

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
} fed;

/* Writes DIR/fed.ini: the whole federation in one file. `extra` is appended
 * (sections the test needs to change). */
static void fed_init(fed *f, const char *tag, const char *run_section, const char *extra)
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
             "[train]\nlocal_steps = 8\nbatch = 4\nseq = 32\nlr = 5e-3\n"
             "[network]\nendpoint = %s\nheartbeat_ms = 500\n"
             "[worker]\nendpoint = %s\nconnect_retries = 30\nretry_backoff_ms = 200\n"
             "val_fraction = 0.1\n%s",
             run_section, f->state, f->adapter, base_dir, f->endpoint, f->endpoint,
             extra ? extra : "");
    assert_int_equal(tu_write_file(f->cfg, ini, strlen(ini)), 0);
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
    char log[4300];
    snprintf(log, sizeof log, "%s/coordinator-%d.log", f->dir, ++f->coord_runs);
    char *argv[] = {FP_COORDINATOR, "--config", f->cfg, NULL};
    f->coord = spawn(argv, log);
}

static void start_worker(fed *f, int k)
{
    char log[4300], id[64], data[4300];
    snprintf(log, sizeof log, "%s/w%d.log", f->dir, k);
    snprintf(id, sizeof id, "--worker.id=w%d", k);
    snprintf(data, sizeof data, "--worker.data=%s/shard-%d.txt", base_dir, k);
    char *argv[] = {FP_WORKER, "--config", f->cfg, id, data, "--worker.threads=1", NULL};
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
