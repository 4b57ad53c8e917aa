/* test_secagg.c - secure aggregation, sealed uploads and DP with real
 * processes and real keys: fedpeft-coordinator and up to 6 fedpeft-workers on
 * loopback (the bundled stories260K model, Shakespeare shards).
 *
 * a. the secure aggregate equals the plain aggregate within the quantization bound;
 * b. every buffer the coordinator decrypted is unrelated to every worker's
 *    delta, while the unmasked sum equals the exact sum of the quantized deltas;
 * c. 6 workers, 2 drop after masking: the round completes with the exact sum of the other 4;
 *    one that is started again at once is out of the round at once (not at the deadline);
 * d. 3 drop with threshold 4: the round is abandoned cleanly (adapter unchanged);
 * e. tampered / truncated / round-spliced / replayed chunks are rejected and
 *    counted by reason; the round completes with the honest ones;
 * f. DP: the measured central noise std is sigma * C; epsilon is in every
 *    metrics line and the budget stops the run;
 * g. SecAgg+: 8 workers on a Harary graph of degree 4 (each masks with and
 *    shares among 4 neighbours only), 2 drop after masking: the exact sum of
 *    the other 6; a coordinator that lies about the graph (another nonce,
 *    other neighbours) is refused by the worker it lies to;
 * h. DP's fixed denominator: 3 sampled, 1 drops (after masking under secure
 *    aggregation with distributed DP; a refused upload in plain mode with
 *    central DP): the released mean is the sum / 3, not / 2;
 * i. [sampling] mode = poisson with distributed DP under SecAgg+: every round
 *    runs (or is abandoned for a draw below min_quorum), the adapter moved by
 *    sum_r (unmasked sum_r) x k_r / (q n), and epsilon is the accountant's at
 *    q = fraction for the rounds released.
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

#include "dp.h"
#include "safetensors.h"
#include "secagg.h"
#include "fed_harness.h"
#include "test_util.h"

#define MAXW 8
#define CLIP 1.0f
#define FRAC 22

static char base_dir[4096];
static const char *g_lr = "5e-3";   /* [train] lr of the next federation */
static const char *g_coord_env;     /* "NAME=VALUE" for the next coordinator, or NULL */
static int g_restart = -1;          /* worker started again (without env) when it exits */

static int group_setup(void **state)
{
    (void)state;
    if (fh_base_setup("secagg", MAXW, 500, base_dir, sizeof base_dir) != 0)
        return -1;
    return fh_keygen(base_dir, MAXW);
}

typedef struct {
    char dir[4096], cfg[4200], state[4200], adapter[4300], dump[4300];
} run;

/* A whole federation of n workers; env[k] ("NAME=VALUE" or NULL) for worker k.
 * Waits for the coordinator to exit 0, then reaps the workers. */
static void federate(run *f, const char *tag, int n, int rounds, const char *extra,
                     const char *const *env)
{
    memset(f, 0, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "%s", tu_tempdir(tag));
    snprintf(f->cfg, sizeof f->cfg, "%s/fed.ini", f->dir);
    snprintf(f->state, sizeof f->state, "%s/state", f->dir);
    snprintf(f->adapter, sizeof f->adapter, "%s/adapter", f->dir);
    snprintf(f->dump, sizeof f->dump, "%s/dump", f->dir);
    char cmd[4400], ep[64];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", f->dump);
    assert_int_equal(tu_run(cmd, NULL), 0);
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", fh_free_port(NULL));
    char ini[8192];
    snprintf(ini, sizeof ini,
             "[run]\nrounds = %d\nseed = 11\nstate_dir = %s\nout_dir = %s\n"
             "[model]\npath = %s/model\n"
             "[lora]\nrank = 4\nalpha = 8\ntargets = all\n"
             "[train]\nlocal_steps = 3\nbatch = 2\nseq = 32\nlr = %s\n"
             "[sampling]\nmin_workers = %d\n"
             "[round]\ndeadline_s = 60\nstart_timeout_s = 60\n"
             "[network]\nendpoint = %s\nheartbeat_ms = 300\n"
             "[worker]\nendpoint = %s\nconnect_retries = 30\nretry_backoff_ms = 200\n"
             "val_fraction = 0.1\n"
             "[security]\nsecret_key = %s/keys/coordinator.key\nallowlist = %s/keys/allowlist\n"
             "coordinator_key = %s/keys/coordinator.pub\n%s",
             rounds, f->state, f->adapter, base_dir, g_lr, n, ep, ep, base_dir, base_dir, base_dir,
             extra ? extra : "");
    assert_int_equal(tu_write_file(f->cfg, ini, strlen(ini)), 0);
    char log[4400];
    snprintf(log, sizeof log, "%s/coordinator.log", f->dir);
    char *cargv[] = {FP_COORDINATOR, "--config", f->cfg, NULL};
    pid_t coord = fh_spawn_dump(cargv, log, g_coord_env, f->dump);
    pid_t w[MAXW] = {0};
    for (int k = 0; k < n; k++) {
        char id[64], data[4300], sk[4400];
        snprintf(log, sizeof log, "%s/w%d.log", f->dir, k);
        snprintf(id, sizeof id, "--worker.id=w%d", k);
        snprintf(data, sizeof data, "--worker.data=%s/shard-%d.txt", base_dir, k);
        snprintf(sk, sizeof sk, "--security.secret_key=%s/keys/w%d.key", base_dir, k);
        char *wargv[] = {FP_WORKER, "--config", f->cfg, id, data, "--worker.threads=1", sk, NULL};
        w[k] = fh_spawn_dump(wargv, log, env ? env[k] : NULL, f->dump);
    }
    double end = fh_now() + 240;
    int st = -1, done = 0;
    while (fh_now() < end && !done) {
        done = waitpid(coord, &st, WNOHANG) == coord;
        if (g_restart >= 0 && waitpid(w[g_restart], NULL, WNOHANG) == w[g_restart]) {
            char id[64], data[4300], sk[4400];      /* as a supervisor would, at once */
            snprintf(log, sizeof log, "%s/w%d-restarted.log", f->dir, g_restart);
            snprintf(id, sizeof id, "--worker.id=w%d", g_restart);
            snprintf(data, sizeof data, "--worker.data=%s/shard-%d.txt", base_dir, g_restart);
            snprintf(sk, sizeof sk, "--security.secret_key=%s/keys/w%d.key", base_dir, g_restart);
            char *wargv[] = {FP_WORKER, "--config", f->cfg, id, data, "--worker.threads=1", sk,
                             NULL};
            w[g_restart] = fh_spawn_dump(wargv, log, NULL, f->dump);
            g_restart = -1;
        }
        usleep(50000);
    }
    if (!done) {
        kill(coord, SIGKILL);
        waitpid(coord, &st, 0);
    }
    for (int k = 0; k < n; k++) {
        int ws;
        double e2 = fh_now() + 20;
        while (waitpid(w[k], &ws, WNOHANG) == 0 && fh_now() < e2)
            usleep(20000);
        kill(w[k], SIGKILL);
        waitpid(w[k], &ws, 0);
    }
    if (!done || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail_msg("the coordinator did not finish cleanly; see %s/coordinator.log", f->dir);
}

static cJSON *metrics_line(const run *f, int round)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/metrics.jsonl", f->state);
    char *text = tu_read_file(path, NULL);
    assert_non_null(text);
    cJSON *found = NULL;
    for (char *line = strtok(text, "\n"); line && !found; line = strtok(NULL, "\n")) {
        cJSON *o = cJSON_Parse(line);
        cJSON *r = o ? cJSON_GetObjectItem(o, "round") : NULL;
        if (r && (int)r->valuedouble == round)
            found = o;
        else
            cJSON_Delete(o);
    }
    free(text);
    return found;
}

static double num(const cJSON *o, const char *a, const char *b)
{
    const cJSON *x = cJSON_GetObjectItem(o, a);
    if (b && x)
        x = cJSON_GetObjectItem(x, b);
    assert_non_null(x);
    return cJSON_IsNumber(x) ? x->valuedouble : NAN;
}

/* All values of the tensors whose name contains `part` (e.g. "lora_B"). */
static float *adapter_values(const char *dir, const char *part, size_t *n)
{
    fp_safetensors *a = fp_st_open(tu_path(dir, "adapter_model.safetensors"));
    if (!a)
        fail_msg("cannot open %s: %s", dir, fp_error_get());
    float *out = NULL;
    *n = 0;
    for (size_t i = 0; i < fp_st_count(a); i++) {
        const fp_st_tensor *t = fp_st_at(a, i);
        if (!strstr(t->name, part))
            continue;
        out = realloc(out, (*n + t->numel) * sizeof *out);
        assert_int_equal(fp_st_read_f32(a, t, out + *n, t->numel), 0);
        *n += t->numel;
    }
    fp_st_close(&a);
    return out;
}

/* Sum mod 2^32 of the quantized dumps of the given workers, dequantized. */
static float *quantized_sum(const run *f, const int *ids, int k, int round, size_t *n)
{
    uint32_t *acc = NULL, *q = NULL;
    for (int i = 0; i < k; i++) {
        char path[4500];
        snprintf(path, sizeof path, "%s/worker-w%d-round-%d.f32", f->dump, ids[i], round);
        size_t m;
        float *x = fh_read_f32(path, &m);
        if (!acc) {
            *n = m;
            acc = calloc(m, sizeof *acc);
            q = calloc(m, sizeof *q);
        }
        assert_int_equal(m, *n);
        assert_int_equal(fp_secagg_quantize(q, x, m, CLIP, FRAC, NULL), 0);
        fp_secagg_sum_add(acc, q, m);
        free(x);
    }
    float *out = malloc(*n * sizeof *out);
    fp_secagg_dequantize_sum(out, acc, *n, FRAC);
    free(acc);
    free(q);
    return out;
}

static float *coord_sum(const run *f, int round, size_t *n)
{
    char path[4500];
    snprintf(path, sizeof path, "%s/coord-round-%d-sum.f32", f->dump, round);
    return fh_read_f32(path, n);
}

/* The coordinator's unmasked sum of `round` is, word for word, the sum of the
 * quantized dumps of workers ids[0..k). */
static void assert_exact_sum(const run *f, const int *ids, int k, int round)
{
    size_t n, ns;
    float *want = quantized_sum(f, ids, k, round, &n), *got = coord_sum(f, round, &ns);
    assert_int_equal(n, ns);
    assert_memory_equal(want, got, n * sizeof *got);
    free(want);
    free(got);
}

/* a + b: secure aggregate == plain aggregate; the coordinator's decrypted buffers. */
static void test_secure_equals_plain_and_inspection(void **state)
{
    (void)state;
    run s, p;
    federate(&s, "sa-on", 4, 1, "[secagg]\nenabled = true\n", NULL);
    federate(&p, "sa-off", 4, 1, "[secagg]\nenabled = false\n[privacy]\nrequire_secagg = false\n",
             NULL);
    size_t na, nb;
    float *a = adapter_values(s.adapter, "lora_", &na), *b = adapter_values(p.adapter, "lora_", &nb);
    assert_int_equal(na, nb);
    double worst = 0;
    for (size_t i = 0; i < na; i++)
        worst = fmax(worst, fabs((double)a[i] - (double)b[i]));
    /* 4 quantization errors of 2^-23 each, plus float rounding of the average. */
    printf("secure vs plain aggregate: max |diff| = %.3g over %zu values\n", worst, na);
    assert_true(worst <= 4 * ldexp(1, -(FRAC + 1)) + 1e-6);
    free(a);
    free(b);
    /* b. every decrypted buffer vs every worker's quantized contribution. */
    size_t n = 0;
    int all[4] = {0, 1, 2, 3};
    for (int v = 0; v < 4; v++) {
        char path[4500];
        snprintf(path, sizeof path, "%s/coord-round-1-w%d-chunk-0.bin", s.dump, v);
        size_t nw;
        uint32_t *y = (uint32_t *)(void *)fh_read_f32(path, &nw);
        for (int u = 0; u < 4; u++) {
            snprintf(path, sizeof path, "%s/worker-w%d-round-1.f32", s.dump, u);
            float *x = fh_read_f32(path, &n);
            assert_int_equal(n, nw);
            uint32_t *q = calloc(n, sizeof *q);
            assert_int_equal(fp_secagg_quantize(q, x, n, CLIP, FRAC, NULL), 0);
            size_t same = 0;
            double maxerr = 0;
            for (size_t i = 0; i < n; i++) {
                same += q[i] == y[i];
                maxerr = fmax(maxerr, fabs((double)(int32_t)y[i] / ldexp(1, FRAC) - x[i]));
            }
            assert_true(same * 100 < n);        /* < 1% of words coincide */
            assert_true(maxerr > 100.0);        /* looks like noise, not a delta */
            free(q);
            free(x);
        }
        free(y);
    }
    size_t ns;
    float *want = quantized_sum(&s, all, 4, 1, &n), *got = coord_sum(&s, 1, &ns);
    assert_int_equal(n, ns);
    assert_memory_equal(want, got, n * sizeof *got);     /* exactly the sum */
    free(want);
    free(got);
}

/* c. 6 workers, 2 drop after masking: the exact sum of the other 4. */
static void test_two_drop_after_masking(void **state)
{
    (void)state;
    const char *env[MAXW] = {NULL, NULL, NULL, NULL, "FEDPEFT_TEST_DROP_AFTER=masking",
                             "FEDPEFT_TEST_DROP_AFTER=masking"};
    run f;
    federate(&f, "sa-drop2", 6, 1, "[secagg]\nthreshold = 4\n", env);
    cJSON *m = metrics_line(&f, 1);
    assert_non_null(m);
    assert_false(cJSON_IsTrue(cJSON_GetObjectItem(m, "abandoned")));
    assert_int_equal((int)num(m, "reported", NULL), 4);
    cJSON_Delete(m);
    int alive[4] = {0, 1, 2, 3};
    assert_exact_sum(&f, alive, 4, 1);
}

/* c2. A member that crashes after sharing and is started again at once, long
 * before it misses 3 heartbeats, says Hello without the round's state: it is
 * out at once, and the round completes with the exact sum of the other 4
 * instead of waiting for it to the 120 s deadline. */
static void test_restarted_member_out_at_once(void **state)
{
    (void)state;
    const char *env[MAXW] = {NULL, NULL, NULL, NULL, "FEDPEFT_TEST_DROP_AFTER=masking"};
    run f;
    g_restart = 4;
    double t0 = fh_now();
    federate(&f, "sa-restart", 5, 1, "[round]\ndeadline_s = 120\n[network]\nheartbeat_ms = 5000\n",
             env);
    double took = fh_now() - t0;
    g_restart = -1;
    cJSON *m = metrics_line(&f, 1);
    assert_non_null(m);
    assert_false(cJSON_IsTrue(cJSON_GetObjectItem(m, "abandoned")));
    assert_int_equal((int)num(m, "reported", NULL), 4);
    printf("restarted member: the whole run took %.1f s (deadline 120 s)\n", took);
    assert_true(took < 60);
    assert_true(fh_log_has(tu_path(f.dir, "coordinator.log"),
                           "w4 said Hello without this round's secure-aggregation state"));
    cJSON_Delete(m);
    int others[4] = {0, 1, 2, 3};
    assert_exact_sum(&f, others, 4, 1);
}

/* d. 3 drop with threshold 4: abandoned cleanly, adapter unchanged, next round runs. */
static void test_three_drop_abandons(void **state)
{
    (void)state;
    const char *d = "FEDPEFT_TEST_DROP_AFTER=masking";
    const char *env[MAXW] = {NULL, NULL, NULL, d, d, d};
    run f;
    federate(&f, "sa-drop3", 6, 2, "[secagg]\nthreshold = 4\n[round]\nmin_quorum = 1\n", env);
    cJSON *m = metrics_line(&f, 1);
    assert_non_null(m);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(m, "abandoned")));
    const char *why = cJSON_GetStringValue(cJSON_GetObjectItem(m, "reason"));
    assert_non_null(why);
    assert_non_null(strstr(why, "threshold"));
    cJSON_Delete(m);
    m = metrics_line(&f, 2);
    assert_non_null(m);     /* the next round went on */
    cJSON_Delete(m);
    size_t n;
    float *B = adapter_values(f.adapter, "lora_B", &n);
    assert_true(n > 0);
    for (size_t i = 0; i < n; i++)
        assert_true(B[i] == 0.0f);      /* still the initial B = 0 */
    free(B);
}

/* e. tampered, truncated, spliced and replayed chunks. */
static void test_tampered_chunks(void **state)
{
    (void)state;
    const char *env[MAXW] = {NULL, NULL, "FEDPEFT_TEST_TAMPER=flip",
                             "FEDPEFT_TEST_TAMPER=truncate", "FEDPEFT_TEST_TAMPER=splice",
                             "FEDPEFT_TEST_TAMPER=replay"};
    run f;
    /* t = 3 of 6 is below a majority: the workers accept it only when told to. */
    federate(&f, "sa-tamper", 6, 2, "[secagg]\nthreshold = 3\n[privacy]\nmin_threshold = 3\n",
             env);
    cJSON *m = metrics_line(&f, 2);
    assert_non_null(m);
    assert_false(cJSON_IsTrue(cJSON_GetObjectItem(m, "abandoned")));
    assert_int_equal((int)num(m, "reported", NULL), 3);       /* w0, w1, w5 */
    assert_true(num(m, "rejected", "tampered") >= 1);
    assert_true(num(m, "rejected", "truncated") >= 1);
    assert_true(num(m, "rejected", "spliced") >= 1);
    assert_true(num(m, "rejected", "replayed") >= 1);
    cJSON_Delete(m);
    int honest[3] = {0, 1, 5};
    assert_exact_sum(&f, honest, 3, 2);
}

/* f. central DP noise std = sigma * C (lr = 1e-12: the quantized deltas are exactly 0, so
 * the new lora_B = 0 + noise); epsilon in the metrics; the budget stops the run. */
static void test_dp_noise_and_budget(void **state)
{
    (void)state;
    const double sigma = 2.0, C = 0.01, delta = 1e-5;
    fp_dp_accountant acc;
    fp_dp_accountant_init(&acc);
    double e1, e2;
    assert_int_equal(fp_dp_accountant_add(&acc, 1.0, sigma, 1), 0);
    assert_int_equal(fp_dp_accountant_epsilon(&acc, delta, &e1, NULL), 0);
    assert_int_equal(fp_dp_accountant_add(&acc, 1.0, sigma, 1), 0);
    assert_int_equal(fp_dp_accountant_epsilon(&acc, delta, &e2, NULL), 0);
    char extra[512];
    snprintf(extra, sizeof extra,
             "[dp]\nenabled = true\nclip_norm = %g\nnoise_multiplier = %g\nmode = central\n"
             "delta = %g\nepsilon_budget = %.6f\n", C, sigma, delta, (e1 + e2) / 2);
    run f;
    g_lr = "1e-12";   /* deltas far below the 2^-22 quantization step: exactly 0 */
    federate(&f, "sa-dp", 4, 5, extra, NULL);
    g_lr = "5e-3";
    /* Round 1 ran (epsilon = e1), round 2 would exceed the budget: the run stopped. */
    cJSON *m = metrics_line(&f, 1);
    assert_non_null(m);
    assert_false(cJSON_IsTrue(cJSON_GetObjectItem(m, "abandoned")));
    assert_true(fabs(num(m, "epsilon", NULL) - e1) < 1e-9 * (1 + e1));
    cJSON_Delete(m);
    assert_null(metrics_line(&f, 2));
    char log[4400];
    snprintf(log, sizeof log, "%s/coordinator.log", f.dir);
    char *text = tu_read_file(log, NULL);
    assert_non_null(text);
    assert_non_null(strstr(text, "privacy budget spent"));
    free(text);
    size_t n;
    float *B = adapter_values(f.adapter, "lora_B", &n);
    double ss = 0, mean = 0;
    for (size_t i = 0; i < n; i++)
        mean += B[i];
    mean /= (double)n;
    for (size_t i = 0; i < n; i++)
        ss += (B[i] - mean) * (B[i] - mean);
    double sd = sqrt(ss / (double)(n - 1));
    /* the release is the clipped sum over D = 4 sampled: one worker moves it by
     * C / 4, and the noise is sigma times that */
    const double want = sigma * C / 4;
    printf("DP: measured noise std %.5f over %zu values, configured sigma*C/D = %.5f\n", sd, n,
           want);
    assert_true(fabs(sd - want) < 0.05 * want);
    assert_true(fabs(mean) < 5 * want / sqrt((double)n));
    free(B);
}

static char *file_text(const run *f, const char *name)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/%s", f->dir, name);
    char *text = tu_read_file(path, NULL);
    assert_non_null(text);
    return text;
}

/* g. SecAgg+ on a Harary graph: neighbours only, dropouts exact. */
static void test_harary_graph_drop(void **state)
{
    (void)state;
    const char *d = "FEDPEFT_TEST_DROP_AFTER=masking";
    const char *env[MAXW] = {NULL, NULL, NULL, NULL, NULL, NULL, d, d};
    run f;
    federate(&f, "sa-harary", 8, 1, "[secagg]\nneighbours = 4\n", env);
    cJSON *m = metrics_line(&f, 1);
    assert_non_null(m);
    assert_false(cJSON_IsTrue(cJSON_GetObjectItem(m, "abandoned")));
    assert_int_equal((int)num(m, "reported", NULL), 6);
    cJSON_Delete(m);
    char *log = file_text(&f, "coordinator.log");
    assert_non_null(strstr(log, "a SecAgg+ graph, 5 holders of each secret, t = 3"));
    free(log);
    for (int k = 0; k < 8; k++) {
        char name[32];
        snprintf(name, sizeof name, "w%d.log", k);
        log = file_text(&f, name);
        assert_non_null(strstr(log, "shares sealed for 4 peers (4 neighbours of 8 members)"));
        free(log);
    }
    int alive[6] = {0, 1, 2, 3, 4, 5};
    assert_exact_sum(&f, alive, 6, 1);
}

/* g. A coordinator that lies about the graph to its first member: refused. */
static void test_lying_graph_refused(void **state)
{
    (void)state;
    static const char *const lies[][2] = {
        {"FEDPEFT_TEST_EVIL_GRAPH=nonce", "graph nonce does not match the Task's commitment"},
        {"FEDPEFT_TEST_EVIL_GRAPH=neighbours", "where the graph puts"},
    };
    for (size_t i = 0; i < 2; i++) {
        run f;
        g_coord_env = lies[i][0];
        federate(&f, i ? "sa-lie-nb" : "sa-lie-nonce", 8, 1, "[secagg]\nneighbours = 4\n", NULL);
        g_coord_env = NULL;
        char *log = file_text(&f, "w0.log");
        if (!strstr(log, lies[i][1]))
            fail_msg("%s: w0 did not refuse PeerKeys with '%s'; see %s", lies[i][0], lies[i][1],
                     f.dir);
        assert_null(strstr(log, "shares sealed"));
        free(log);
        log = file_text(&f, "w1.log");
        assert_non_null(strstr(log, "shares sealed for 4 peers"));   /* only w0 was lied to */
        free(log);
        printf("# %s: w0 refused ('%s')\n", lies[i][0], lies[i][1]);
    }
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* got and want hold the same n values up to order (the adapter file and the
 * trainable view order tensors differently), each within tol: sorting is
 * 1-Lipschitz in the max norm, so the sorted vectors are compared. */
static void assert_same_values(float *got, float *want, size_t n, double tol, const char *what)
{
    qsort(got, n, sizeof *got, cmp_float);
    qsort(want, n, sizeof *want, cmp_float);
    double worst = 0, norm = 0;
    for (size_t i = 0; i < n; i++) {
        worst = fmax(worst, fabs((double)got[i] - (double)want[i]));
        norm += (double)want[i] * want[i];
    }
    printf("%s: max |diff| %.3g over %zu values (expected norm %.4g)\n", what, worst, n,
           sqrt(norm));
    if (!(sqrt(norm) > 1e-4))
        fail_msg("%s: the expected change is ~0 (norm %g): the test has no power", what,
                 sqrt(norm));
    if (worst > tol)
        fail_msg("%s: max |diff| %.3g > %.3g", what, worst, tol);
}

/* h. The released mean divides by the number sampled, not by the reporters. */
static void test_dp_fixed_denominator(void **state)
{
    (void)state;
    const char *dp = "[strategy]\nname = ffa\n"
                     "[dp]\nenabled = true\nclip_norm = 1.0\nnoise_multiplier = 1e-6\n";
    char extra[512];
    /* Secure aggregation, distributed DP: w2 leaves after masking; its mask key is
     * reconstructed and the unmasked sum S holds w0 and w1, each weighted 1/3. */
    const char *d = "FEDPEFT_TEST_DROP_AFTER=masking";
    const char *env[MAXW] = {NULL, NULL, d};
    run f;
    snprintf(extra, sizeof extra, "%smode = distributed\n", dp);
    federate(&f, "sa-dp-denom", 3, 1, extra, env);
    cJSON *m = metrics_line(&f, 1);
    assert_non_null(m);
    assert_false(cJSON_IsTrue(cJSON_GetObjectItem(m, "abandoned")));
    assert_int_equal((int)num(m, "sampled", NULL), 3);
    assert_int_equal((int)num(m, "reported", NULL), 2);
    cJSON_Delete(m);
    int alive[2] = {0, 1};
    size_t n, ns, nb;
    float *want = quantized_sum(&f, alive, 2, 1, &n), *S = coord_sum(&f, 1, &ns);
    assert_int_equal(n, ns);
    assert_memory_equal(want, S, n * sizeof *S);
    free(want);
    /* ffa: A frozen, B from 0, so B = S x 3 / 3 (it was S x 3 / 2 by the reporters) */
    float *B = adapter_values(f.adapter, "lora_B", &nb);
    assert_int_equal(nb, ns);
    assert_same_values(B, S, n, 1e-7, "secagg + distributed DP, 1 of 3 dropped: B vs S / (3/3)");
    free(B);
    free(S);
    char *log = file_text(&f, "coordinator.log");
    assert_non_null(strstr(log, "DP mean = sum of 2 clipped updates / 3 (the number sampled"));
    free(log);

    /* Plain mode, central DP: w2's upload is refused (tampered); B = (d0 + d1) / 3. */
    const char *env2[MAXW] = {NULL, NULL, "FEDPEFT_TEST_TAMPER=flip"};
    run p;
    snprintf(extra, sizeof extra, "%smode = central\n[secagg]\nenabled = false\n"
             "[privacy]\nrequire_secagg = false\n", dp);
    federate(&p, "plain-dp-denom", 3, 1, extra, env2);
    m = metrics_line(&p, 1);
    assert_non_null(m);
    assert_false(cJSON_IsTrue(cJSON_GetObjectItem(m, "abandoned")));
    assert_int_equal((int)num(m, "reported", NULL), 2);
    assert_true(num(m, "rejected", "tampered") >= 1);
    cJSON_Delete(m);
    float *mean = NULL;
    for (int k = 0; k < 2; k++) {
        char path[4500];
        snprintf(path, sizeof path, "%s/worker-w%d-round-1.f32", p.dump, k);
        float *x = fh_read_f32(path, &n);       /* the clipped delta (weight 1) */
        if (!mean)
            mean = calloc(n, sizeof *mean);
        for (size_t i = 0; i < n; i++)
            mean[i] += x[i] / 3.0f;
        free(x);
    }
    B = adapter_values(p.adapter, "lora_B", &nb);
    assert_int_equal(nb, n);
    /* noise sigma C / 3 = 3.3e-7 per value */
    assert_same_values(B, mean, n, 5e-6, "plain + central DP, 1 of 3 refused: B vs (d0+d1)/3");
    free(B);
    free(mean);
}

/* i. Poisson sampling, distributed DP, secure aggregation: 6 workers, q = 0.8. */
static void test_poisson_dp_secagg(void **state)
{
    (void)state;
    const double q = 0.8, sigma = 1.0, delta = 1e-5;
    enum { R = 3, N = 6 };
    char extra[512];
    snprintf(extra, sizeof extra,
             "[sampling]\nmode = poisson\nfraction = %g\n[round]\nmin_quorum = 3\n"
             "[strategy]\nname = ffa\n[dp]\nenabled = true\nmode = distributed\n"
             "clip_norm = 0.05\nnoise_multiplier = %g\ndelta = %g\n", q, sigma, delta);
    run f;
    federate(&f, "sa-poisson", N, R, extra, NULL);
    float *want = NULL;
    size_t n = 0;
    int released = 0;
    for (int r = 1; r <= R; r++) {
        cJSON *m = metrics_line(&f, r);
        if (!m)
            fail_msg("round %d has no metrics line; see %s", r, f.dir);
        int k = (int)num(m, "sampled", NULL);
        if (cJSON_IsTrue(cJSON_GetObjectItem(m, "abandoned"))) {
            const cJSON *why = cJSON_GetObjectItem(m, "reason");
            assert_true(cJSON_IsString(why));
            if (k >= 3 || !strstr(why->valuestring, "Poisson draw"))
                fail_msg("round %d (%d drawn) abandoned: %s", r, k, why->valuestring);
            printf("round %d: a draw of %d, abandoned (below min_quorum)\n", r, k);
            cJSON_Delete(m);
            continue;
        }
        assert_int_equal((int)num(m, "reported", NULL), k);
        printf("round %d: a Poisson draw of %d of %d\n", r, k, N);
        cJSON_Delete(m);
        size_t ns;
        float *S = coord_sum(&f, r, &ns);
        if (!want)
            want = calloc(n = ns, sizeof *want);
        assert_int_equal(ns, n);
        for (size_t i = 0; i < n; i++)      /* S = sum / k: the mean is S k / (q N) */
            want[i] += (float)((double)S[i] * k / (q * N));
        free(S);
        released++;
    }
    if (!released)
        fail_msg("no round was released (P ~ 5e-6); see %s", f.dir);
    size_t nb;
    float *B = adapter_values(f.adapter, "lora_B", &nb);
    assert_int_equal(nb, n);
    assert_same_values(B, want, n, 1e-6, "poisson + distributed DP: B vs sum S_r k_r / (q n)");
    free(B);
    free(want);
    fp_dp_accountant acc;
    fp_dp_accountant_init(&acc);
    double eps;
    assert_int_equal(fp_dp_accountant_add(&acc, q, sigma, (uint64_t)released), 0);
    assert_int_equal(fp_dp_accountant_epsilon(&acc, delta, &eps, NULL), 0);
    cJSON *m = metrics_line(&f, R);
    double got = num(m, "epsilon", NULL);
    cJSON_Delete(m);
    printf("epsilon after %d released rounds at q = %g: %.6f (accountant %.6f)\n", released, q,
           got, eps);
    assert_true(fabs(got - eps) < 1e-9 * (1 + eps));
    char *log = file_text(&f, "coordinator.log");
    assert_non_null(strstr(log, "by Poisson sampling"));
    assert_non_null(strstr(log, "/ 4.8 (fraction x registered"));
    free(log);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_secure_equals_plain_and_inspection),
        cmocka_unit_test(test_two_drop_after_masking),
        cmocka_unit_test(test_restarted_member_out_at_once),
        cmocka_unit_test(test_three_drop_abandons),
        cmocka_unit_test(test_tampered_chunks),
        cmocka_unit_test(test_dp_noise_and_budget),
        cmocka_unit_test(test_harary_graph_drop),
        cmocka_unit_test(test_lying_graph_refused),
        cmocka_unit_test(test_dp_fixed_denominator),
        cmocka_unit_test(test_poisson_dp_secagg),
    };
    if (getenv("FP_TEST_FILTER"))
        cmocka_set_test_filter(getenv("FP_TEST_FILTER"));
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
