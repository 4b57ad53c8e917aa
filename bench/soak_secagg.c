/* soak_secagg.c - the SecAgg+ soak (issue 12): a real fedpeft-coordinator and
 * WORKERS real fedpeft-workers (CURVE keys, secure aggregation on, half the
 * live workers sampled a round) for ROUNDS rounds on loopback, while a worker
 * chosen at random is `kill -9`ed every KILL_S seconds (and started again two
 * seconds later, as a supervisor would), and the coordinator is `kill -9`ed
 * once, mid-round, after half the rounds, and started again on its state
 * directory. It asserts, and exits non-zero when one fails:
 *   - the run ends (the coordinator exits 0) and metrics.jsonl has rounds
 *     0..ROUNDS once each, every one complete or abandoned with its reason;
 *   - memory is flat: in each of the coordinator's two lives its RSS at the
 *     end is within max(4 MiB, 10%) of its RSS after the first rounds;
 *   - the final adapter is what the surviving rounds determine: for every
 *     complete round the unmasked sum equals, word for word, the sum of the
 *     quantized updates of the members it names (their own dumps), the next
 *     round starts from the global plus sum / W, an abandoned round leaves the
 *     global as it was, the restarted coordinator resumes from the last
 *     complete round, and the adapter written at the end is the last global.
 * Needs a build with -DFEDPEFT_TEST_HOOKS=ON (the dumps). A soak, run by hand:
 *     build/soak_secagg [WORKERS=100] [ROUNDS=50] [KILL_S=4]
 * It prints the kills, the rounds, the coordinator's RSS and the wall time. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <cjson/cJSON.h>

#include "fed_harness.h"
#include "lora.h"
#include "model.h"
#include "secagg.h"
#include "test_util.h"

#define MAX_SOAK_WORKERS 1000
#define CLIP 1.0f       /* [secagg] clip and frac_bits: the defaults */
#define FRAC 22

static int n_workers = 100, n_rounds = 50;
static double kill_every_s = 4.0;

typedef struct {
    char dir[4096], base[4096], cfg[4200], state[4200], adapter[4300], dump[4300];
    pid_t coord, w[MAX_SOAK_WORKERS];
    double restart_at[MAX_SOAK_WORKERS];        /* 0: running */
    int starts[MAX_SOAK_WORKERS], coord_starts, kills;
} soak;

typedef struct {
    int life, round;
    long rss_kib;
} rss_sample;

static void start_coordinator(soak *s)
{
    char log[4400];
    snprintf(log, sizeof log, "%s/coordinator-%d.log", s->dir, ++s->coord_starts);
    char *argv[] = {FP_COORDINATOR, "--config", s->cfg, NULL};
    s->coord = fh_spawn_dump(argv, log, NULL, s->dump);
}

/* Worker k again (its n-th start: DIR/wK-N.log), niced as `fedpeft simulate`
 * does, so that the coordinator gets the CPU when it needs it. */
static void start_worker(soak *s, int k)
{
    char log[4400], id[64], data[4300], sk[4400];
    snprintf(log, sizeof log, "%s/w%d-%d.log", s->dir, k, ++s->starts[k]);
    snprintf(id, sizeof id, "--worker.id=w%d", k);
    snprintf(data, sizeof data, "--worker.data=%s/shard-%d.txt", s->base, k);
    snprintf(sk, sizeof sk, "--security.secret_key=%s/keys/w%d.key", s->base, k);
    char *argv[] = {FP_WORKER, "--config", s->cfg, id, data, "--worker.threads=1", sk, NULL};
    s->w[k] = fh_spawn_dump(argv, log, NULL, s->dump);
    setpriority(PRIO_PROCESS, (id_t)s->w[k], 19);
    s->restart_at[k] = 0;
}

static void write_config(soak *s)
{
    snprintf(s->cfg, sizeof s->cfg, "%s/soak.ini", s->dir);
    snprintf(s->state, sizeof s->state, "%s/state", s->dir);
    snprintf(s->adapter, sizeof s->adapter, "%s/adapter", s->dir);
    snprintf(s->dump, sizeof s->dump, "%s/dump", s->dir);
    char cmd[4400], ep[64];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", s->dump);
    assert_int_equal(tu_run(cmd, NULL), 0);
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", fh_free_port(NULL));
    char ini[8192];
    snprintf(ini, sizeof ini,
             "[run]\nrounds = %d\nseed = 11\nstate_dir = %s\nout_dir = %s\n"
             "[model]\npath = %s/model\n"
             "[lora]\nrank = 4\nalpha = 8\ntargets = all\n"
             "[train]\nlocal_steps = 1\nbatch = 2\nseq = 32\nlr = 5e-3\n"
             "[sampling]\nfraction = 0.5\nmin_workers = %d\n"
             "[round]\ndeadline_s = 120\nstart_timeout_s = 20\nmin_quorum = 4\n"
             "eval_deadline_s = 60\n"
             "[network]\nendpoint = %s\nheartbeat_ms = 1000\n"
             "[worker]\nendpoint = %s\nconnect_retries = 1000\nretry_backoff_ms = 200\n"
             "val_fraction = 0.1\n"
             "[security]\nsecret_key = %s/keys/coordinator.key\nallowlist = %s/keys/allowlist\n"
             "coordinator_key = %s/keys/coordinator.pub\n",
             n_rounds, s->state, s->adapter, s->base, n_workers / 2, ep, ep, s->base,
             s->base, s->base);
    assert_int_equal(tu_write_file(s->cfg, ini, strlen(ini)), 0);
}

static int metrics_count(const soak *s)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/metrics.jsonl", s->state);
    char *t = tu_read_file(path, NULL);
    int n = 0;
    for (char *p = t; p && *p; p++)
        n += *p == '\n';
    free(t);
    return n;
}

/* Runs the federation with the kills until the coordinator exits; its
 * RSS after each metrics line in samples (*n). */
static void run_with_kills(soak *s, rss_sample *samples, int cap, int *n)
{
    start_coordinator(s);
    for (int k = 0; k < n_workers; k++)
        start_worker(s, k);
    double t0 = fh_now(), next_kill = t0 + kill_every_s, coord_kill_at = 0;
    double end = t0 + 120.0 * n_rounds;
    int seen = 0, life = 1, coord_killed = 0, st = 0;
    *n = 0;
    srand(12345);
    while (fh_now() < end) {
        pid_t p = waitpid(s->coord, &st, WNOHANG);
        if (p == s->coord) {
            if (coord_killed == 1) {            /* ours: start it again */
                printf("soak: %.0f s: coordinator killed (-9) mid-round; restarting it\n",
                       fh_now() - t0);
                sleep(2);
                start_coordinator(s);
                coord_killed = 2;
                life = 2;
                continue;
            }
            break;
        }
        int m = metrics_count(s);
        if (m > seen && *n < cap) {
            seen = m;
            samples[*n].life = life;
            samples[*n].round = m - 1;
            samples[(*n)++].rss_kib = fh_rss_kib(s->coord);
            printf("soak: %.0f s: round %d in metrics.jsonl, coordinator RSS %ld KiB, %d kills\n",
                   fh_now() - t0, m - 1, samples[*n - 1].rss_kib, s->kills);
            fflush(stdout);
            if (!coord_killed && m - 1 == n_rounds / 2)
                coord_kill_at = fh_now() + 0.5 + 3.5 * rand() / (double)RAND_MAX;
        }
        if (coord_kill_at > 0 && fh_now() >= coord_kill_at) {
            kill(s->coord, SIGKILL);
            coord_killed = 1;
            coord_kill_at = 0;
        }
        double now = fh_now();
        for (int k = 0; k < n_workers; k++) {
            int ws;
            if (s->restart_at[k] == 0 && waitpid(s->w[k], &ws, WNOHANG) == s->w[k])
                s->restart_at[k] = -1;          /* left by itself: the run is over */
            if (s->restart_at[k] > 0 && now >= s->restart_at[k])
                start_worker(s, k);
        }
        if (now >= next_kill) {
            next_kill = now + kill_every_s;
            int k = rand() % n_workers;
            if (s->restart_at[k] == 0) {
                kill(s->w[k], SIGKILL);
                waitpid(s->w[k], NULL, 0);
                s->restart_at[k] = now + 2.0;
                s->kills++;
            }
        }
        usleep(100000);
    }
    if (fh_now() >= end) {
        kill(s->coord, SIGKILL);
        waitpid(s->coord, &st, 0);
    }
    for (int k = 0; k < n_workers; k++)
        if (s->restart_at[k] == 0)
            fh_kill(s->w[k]);
    printf("soak: %d workers, %d rounds, %d worker kills, 1 coordinator kill, %.0f s\n",
           n_workers, n_rounds, s->kills, fh_now() - t0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail_msg("the coordinator did not end the run with 0; see %s/coordinator-*.log", s->dir);
}

static void check_rounds(const soak *s, int *complete)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/metrics.jsonl", s->state);
    int n;
    cJSON **rows = fh_metrics_lines(path, &n);
    assert_int_equal(n, n_rounds + 1);
    *complete = 0;
    for (int r = 0; r <= n_rounds; r++) {
        assert_int_equal((int)fh_metric_number(rows[r], "round"), r);
        const cJSON *ab = cJSON_GetObjectItem(rows[r], "abandoned");
        const cJSON *why = cJSON_GetObjectItem(rows[r], "reason");
        if (cJSON_IsTrue(ab)) {
            if (!cJSON_IsString(why) || !why->valuestring[0])
                fail_msg("round %d was abandoned without a reason", r);
            printf("soak: round %d abandoned: %s\n", r, why->valuestring);
        } else if (r > 0) {
            (*complete)++;
        }
    }
    fh_metrics_free(rows, n);
    printf("soak: %d of %d rounds complete\n", *complete, n_rounds);
}

/* Flat: the mean of a life's last 5 samples is within max(4 MiB, 10%) of the
 * mean of its samples 5..9 (after the first rounds' allocations); the peak
 * is printed, not judged (the unmasking buffers come and go). */
static void check_memory(const rss_sample *x, int n)
{
    for (int life = 1; life <= 2; life++) {
        long v[1100], top = 0;
        int k = 0;
        for (int i = 0; i < n && k < 1100; i++)
            if (x[i].life == life && x[i].rss_kib > 0)
                v[k++] = x[i].rss_kib;
        if (k < 15) {
            printf("soak: coordinator life %d: %d rounds, too few for a memory figure\n", life, k);
            continue;
        }
        double early = 0, late = 0;
        for (int i = 4; i < 9; i++)
            early += v[i] / 5.0;
        for (int i = k - 5; i < k; i++)
            late += v[i] / 5.0;
        for (int i = 0; i < k; i++)
            top = v[i] > top ? v[i] : top;
        printf("soak: coordinator life %d (%d rounds): RSS %.1f MiB early, %.1f MiB at the end "
               "(means of 5), peak %.1f MiB\n", life, k, early / 1024, late / 1024, top / 1024.0);
        if (late - early > fmax(4096.0, 0.1 * early))
            fail_msg("the coordinator's RSS grew from %.0f to %.0f KiB in life %d", early, late,
                     life);
    }
}

static char *dump_path(const soak *s, int round, const char *what)
{
    static char p[4600];
    snprintf(p, sizeof p, "%s/coord-round-%d-%s", s->dump, round, what);
    return p;
}

/* The unmasked sum of round r equals the members' quantized updates word for
 * word; returns the sum / W (malloc'd). */
static float *check_sum(const soak *s, int r, size_t n)
{
    size_t ns;
    float *sum = fh_read_f32(dump_path(s, r, "sum.f32"), &ns);
    assert_int_equal(ns, n);
    char *text = tu_read_file(dump_path(s, r, "members.txt"), NULL);
    assert_non_null(text);
    double W = 0;
    assert_int_equal(sscanf(text, "W %lf", &W), 1);
    assert_true(W > 0);
    uint32_t *acc = calloc(n, sizeof *acc), *q = calloc(n, sizeof *q);
    int members = 0;
    for (char *line = strtok(strchr(text, '\n') + 1, "\n"); line; line = strtok(NULL, "\n")) {
        char path[4700];
        snprintf(path, sizeof path, "%s/worker-%s-round-%d.f32", s->dump, line, r);
        size_t m;
        float *x = fh_read_f32(path, &m);
        assert_int_equal(m, n);
        assert_int_equal(fp_secagg_quantize(q, x, n, CLIP, FRAC, NULL), 0);
        fp_secagg_sum_add(acc, q, n);
        free(x);
        members++;
    }
    float *want = malloc(n * sizeof *want);
    fp_secagg_dequantize_sum(want, acc, n, FRAC);
    if (memcmp(want, sum, n * sizeof *sum) != 0)
        fail_msg("round %d: the unmasked sum is not the sum of its %d members' updates", r,
                 members);
    for (size_t i = 0; i < n; i++)
        sum[i] = (float)((double)sum[i] / W);
    free(want);
    free(acc);
    free(q);
    free(text);
    return sum;
}

static void expect_close(const float *got, const float *want, size_t n, const char *what, int r)
{
    double worst = 0;
    for (size_t i = 0; i < n; i++)
        worst = fmax(worst, fabs((double)got[i] - want[i]) / (1e-6 + fabs((double)want[i])));
    if (worst > 1e-5)
        fail_msg("round %d: %s differs by %.3g (relative)", r, what, worst);
}

static void check_chain(const soak *s)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/metrics.jsonl", s->state);
    int nl;
    cJSON **rows = fh_metrics_lines(path, &nl);
    assert_int_equal(nl, n_rounds + 1);
    size_t n, m;
    float *g = fh_read_f32(dump_path(s, 1, "global.f32"), &n);
    for (int r = 1; r <= n_rounds; r++) {
        float *start = fh_read_f32(dump_path(s, r, "global.f32"), &m);
        assert_int_equal(m, n);
        expect_close(start, g, n, "the global the round started from", r);
        free(g);
        g = start;
        if (cJSON_IsTrue(cJSON_GetObjectItem(rows[r], "abandoned")))
            continue;   /* the next round must start from g as it is */
        float *mean = check_sum(s, r, n);
        for (size_t i = 0; i < n; i++)
            g[i] += mean[i];
        free(mean);
    }
    fh_metrics_free(rows, nl);
    fp_model *model = fp_model_load(tu_path(s->base, "model"));
    assert_non_null(model);
    fp_lora *fin = fp_lora_load(s->adapter, &model->cfg);
    if (!fin)
        fail_msg("cannot read the final adapter: %s", fp_error_get());
    assert_int_equal(fin->n_params, n);
    expect_close(fin->params, g, n, "the final adapter", n_rounds);
    printf("soak: every complete round's sum is exact, the chain of globals holds across the "
           "restart, and the final adapter is the last global (%zu values)\n", n);
    fp_lora_free(&fin);
    fp_model_free(&model);
    free(g);
}

static void test_soak(void **state)
{
    (void)state;
    soak *s = calloc(1, sizeof *s);
    assert_non_null(s);
    snprintf(s->dir, sizeof s->dir, "%s", tu_tempdir("soak"));
    int lines = 40000 / n_workers;
    assert_int_equal(fh_base_setup("soak-base", n_workers, lines, s->base, sizeof s->base), 0);
    assert_int_equal(fh_keygen(s->base, n_workers), 0);
    write_config(s);
    rss_sample *samples = calloc((size_t)n_rounds + 8, sizeof *samples);
    int n_samples = 0, complete = 0;
    run_with_kills(s, samples, n_rounds + 8, &n_samples);
    check_rounds(s, &complete);
    check_memory(samples, n_samples);
    check_chain(s);
    if (complete < n_rounds / 2)
        fail_msg("only %d of %d rounds completed", complete, n_rounds);
    free(samples);
    free(s);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        n_workers = atoi(argv[1]);
    if (argc > 2)
        n_rounds = atoi(argv[2]);
    if (argc > 3)
        kill_every_s = atof(argv[3]);
    if (n_workers < 4 || n_workers > MAX_SOAK_WORKERS || n_rounds < 2 || kill_every_s <= 0) {
        fprintf(stderr, "usage: soak_secagg [WORKERS 4..%d] [ROUNDS >= 2] [KILL_S > 0]\n",
                MAX_SOAK_WORKERS);
        return 2;
    }
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_soak)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
