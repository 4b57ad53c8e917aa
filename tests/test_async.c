/* test_async.c - [round] mode = async (FedBuff, coordinator/rounds_async.h) end
 * to end: the real fedpeft-coordinator and fedpeft-worker processes on
 * loopback, the bundled stories260K model, Shakespeare shards.
 *
 * 1. CURVE + secure aggregation, 5 workers, buffer 3, w4 throttled to a
 *    quarter of its speed (SIGSTOP/SIGCONT, 75 ms of every 100), the
 *    coordinator SIGKILLed after round 2 and restarted, w1 SIGKILLed after
 *    round 4 and restarted: rounds 0..6 once each (at most one abandoned, by
 *    w1's kill), each a secure sum of 3 with its staleness in the metrics line; each
 *    round's unmasked sum is word for word the sum of its members' quantized
 *    inputs; each round starts from the previous global + sum / W, and the
 *    final adapter is the last one; every member's weight is p / sum p x
 *    (1 + s)^-1/2 with s its staleness, computed here from the logs; w4 is in
 *    fewer buffers than the busiest fast worker and some buffer holds a stale
 *    update (nobody waited for w4); the status page shows the buffer.
 * 2. Plain mode (no secure aggregation), 4 workers, buffer 2: each new global
 *    is the previous one + sum p w(s) Delta / sum p over the members' dumped
 *    updates, computed here.
 * 3. Strategies that need one version per round, [dp] and Poisson sampling
 *    are refused with async at start-up, with the reason.
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
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <cjson/cJSON.h>

#include "fed_harness.h"
#include "secagg.h"
#include "test_util.h"

#define MAXW 5
#define ROUNDS 6
#define RUN_TIMEOUT_S 400
#define CLIP 8.0f       /* [secagg] clip and frac_bits defaults */
#define FRAC 22

static char base_dir[4096];

static int group_setup(void **state)
{
    (void)state;
    return fh_base_setup("async", MAXW, 600, base_dir, sizeof base_dir);
}

static fh_fed cur;
static pid_t throttler;

static int teardown(void **state)
{
    (void)state;
    if (throttler > 0) {
        kill(throttler, SIGKILL);
        waitpid(throttler, NULL, 0);
        throttler = 0;
    }
    fh_fed_reap(&cur);
    return 0;
}

/* A real throttle: pid runs 25 ms of every 100 until it exits. */
static pid_t throttle(pid_t pid)
{
    pid_t t = fork();
    assert_true(t >= 0);
    if (t == 0) {
        struct timespec on = {0, 25000000}, off = {0, 75000000};
        while (kill(pid, 0) == 0) {
            nanosleep(&on, NULL);
            kill(pid, SIGSTOP);
            nanosleep(&off, NULL);
            kill(pid, SIGCONT);
        }
        _exit(0);
    }
    return t;
}

static const char *dump_path(const fh_fed *f, const char *what, int round)
{
    static char p[4500];
    snprintf(p, sizeof p, "%s/coord-round-%d-%s", f->dump, round, what);
    return p;
}

/* members.txt of a round: "W <weight>" then one id a line. Returns k. */
static int members(const fh_fed *f, int round, int ids[MAXW], double *W)
{
    size_t len;
    char *t = tu_read_file(dump_path(f, "members.txt", round), &len);
    if (!t)
        fail_msg("round %d: no members.txt in %s", round, f->dump);
    int k = 0;
    char *save = NULL;
    for (char *line = strtok_r(t, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (sscanf(line, "W %lf", W) == 1)
            continue;
        int id;
        assert_int_equal(sscanf(line, "w%d", &id), 1);
        assert_true(k < MAXW);
        ids[k++] = id;
    }
    free(t);
    return k;
}

static float *worker_dump(const fh_fed *f, int id, int round, size_t *n)
{
    char p[4500];
    snprintf(p, sizeof p, "%s/worker-w%d-round-%d.f32", f->dump, id, round);
    return fh_read_f32(p, n);
}

/* The last number after `key` on the log line that starts with `prefix`
 * (the line's last occurrence in the file); fails when there is none. */
static double log_number(const char *log, const char *prefix, const char *key)
{
    size_t len;
    char *t = tu_read_file(log, &len);
    if (!t)
        fail_msg("no log %s", log);
    double v = NAN;
    for (char *p = t; (p = strstr(p, prefix)); p++) {
        char *eol = strchr(p, '\n'), *k = strstr(p, key);
        if (k && (!eol || k < eol))
            v = strtod(k + strlen(key), NULL);
    }
    free(t);
    if (isnan(v))
        fail_msg("%s: no line with \"%s\" ... \"%s\"", log, prefix, key);
    return v;
}

/* Searches every coordinator-N.log of f, newest first. */
static double coord_number(const fh_fed *f, const char *prefix, const char *key)
{
    for (int run = f->coord_runs; run >= 1; run--) {
        char log[4400], *body;
        size_t len;
        snprintf(log, sizeof log, "%s/coordinator-%d.log", f->dir, run);
        if (!(body = tu_read_file(log, &len)))
            continue;
        int has = strstr(body, prefix) != NULL;
        free(body);
        if (has)
            return log_number(log, prefix, key);
    }
    fail_msg("no coordinator log has \"%s\"", prefix);
    return NAN;
}

/* Member k's weight as the coordinator must compute it: its registered
 * weight over the buffer's, x (1 + s)^-1/2 with s from the coordinator's log. */
static double expected_weight(const fh_fed *f, int round, const int *ids, int k, int i)
{
    char pre[64];
    double sum = 0, p_i = 0;
    for (int j = 0; j < k; j++) {
        snprintf(pre, sizeof pre, "worker w%d registered: ", ids[j]);
        double p = coord_number(f, pre, "(weight ");
        sum += p;
        if (j == i)
            p_i = p;
    }
    snprintf(pre, sizeof pre, "round %d: w%d trained from version ", round, ids[i]);
    double v = coord_number(f, pre, "trained from version ");
    double s = coord_number(f, pre, "staleness ");
    double w = coord_number(f, pre, "weight w = ");
    assert_true(fabs(s - ((double)round - 1 - v)) < 1e-9);
    assert_true(fabs(w - 1.0 / sqrt(1.0 + s)) < 1e-6);
    return p_i / sum * w;
}

/* ---- 1. secure aggregation, a slow worker, a coordinator kill -9 -------------------- */

static void test_async_secagg_resume(void **state)
{
    (void)state;
    fh_fed_init(&cur, "async-secagg", base_dir, MAXW);
    assert_int_equal(fh_keygen(cur.dir, MAXW), 0);
    cur.curve = 1;
    fh_fed_use_dump(&cur);
    char extra[1024];
    int http_port = fh_free_port(NULL);
    snprintf(extra, sizeof extra, "[sampling]\nmin_workers = %d\n[round]\nmode = async\n"
             "buffer = 3\nstart_timeout_s = 60\n[http]\nport = %d\n", MAXW, http_port);
    fh_fed_write_ini(&cur, "rounds = 6\nseed = 5", 4, 40, extra);
    fh_fed_start(&cur);
    throttler = throttle(cur.workers[4]);
    fh_fed_wait_round(&cur, 1, RUN_TIMEOUT_S);
    char *body = NULL;
    assert_int_equal(fh_http_get(http_port, "/status", &body), 200);
    cJSON *st = cJSON_Parse(body);
    assert_non_null(st);
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(st, "mode")), "async");
    cJSON *bu = cJSON_GetObjectItem(st, "buffer");
    assert_non_null(bu);
    assert_int_equal((int)fh_metric_number(bu, "size"), 3);
    cJSON *w0 = cJSON_GetArrayItem(cJSON_GetObjectItem(st, "workers"), 0);
    assert_non_null(cJSON_GetStringValue(cJSON_GetObjectItem(w0, "task")));
    printf("status during round %d: buffer %d of 3 held, %d training\n",
           (int)fh_metric_number(st, "round"), (int)fh_metric_number(bu, "held"),
           (int)fh_metric_number(bu, "training"));
    cJSON_Delete(st);
    free(body);
    fh_fed_wait_round(&cur, 2, RUN_TIMEOUT_S);
    int ws;
    assert_int_equal(kill(cur.coord, SIGKILL), 0);
    waitpid(cur.coord, &ws, 0);
    fh_coordinator_start(&cur);
    /* and a worker, mid-run: its held update is gone; it gets a new task */
    fh_fed_wait_round(&cur, 4, RUN_TIMEOUT_S);
    assert_int_equal(kill(cur.workers[1], SIGKILL), 0);
    waitpid(cur.workers[1], &ws, 0);
    char l1[4400], l2[4400];
    snprintf(l1, sizeof l1, "%s/w1.log", cur.dir);
    snprintf(l2, sizeof l2, "%s/w1-life1.log", cur.dir);
    assert_int_equal(rename(l1, l2), 0);    /* the restart truncates w1.log */
    fh_worker_start(&cur, 1);
    fh_fed_finish(&cur, RUN_TIMEOUT_S);

    int n;
    cJSON **rows = fh_fed_metrics(&cur, ROUNDS, &n);
    fh_print_losses("async, secure aggregation, w4 at 1/4 speed", rows, n);
    int in_buffers[MAXW] = {0}, stale = 0, abandoned = 0;
    for (int R = 1; R <= ROUNDS; R++) {
        cJSON *m = rows[R];
        if (cJSON_IsTrue(cJSON_GetObjectItem(m, "abandoned"))) {
            /* w1's kill can take its buffer below min_peers: that round only */
            printf("round %d abandoned: %s\n", R,
                   cJSON_GetStringValue(cJSON_GetObjectItem(m, "reason")));
            assert_int_equal(++abandoned, 1);
            continue;
        }
        assert_true(cJSON_IsTrue(cJSON_GetObjectItem(m, "async")));
        assert_true(cJSON_IsTrue(cJSON_GetObjectItem(m, "secagg")));
        assert_int_equal((int)fh_metric_number(m, "reported"), 3);
        cJSON *sj = cJSON_GetObjectItem(m, "staleness");
        assert_non_null(sj);
        stale |= fh_metric_number(sj, "max") >= 1;
        assert_true(fh_metric_number(m, "unix_s") > 1.7e9);

        int ids[MAXW];
        double W = 0;
        int k = members(&cur, R, ids, &W);
        assert_int_equal(k, 3);
        /* divided by sum p over the survivors (all 3: shares of 1), not sum p w */
        assert_true(fabs(W - 1.0) < 1e-9);
        /* the unmasked sum == the members' quantized inputs, word for word */
        size_t np = 0, ns;
        uint32_t *acc = NULL, *q = NULL;
        for (int i = 0; i < k; i++) {
            size_t m_n;
            float *x = worker_dump(&cur, ids[i], R, &m_n);
            if (!acc) {
                np = m_n;
                acc = calloc(np, sizeof *acc);
                q = calloc(np, sizeof *q);
            }
            assert_int_equal(m_n, np);
            assert_int_equal(fp_secagg_quantize(q, x, np, CLIP, FRAC, NULL), 0);
            fp_secagg_sum_add(acc, q, np);
            free(x);
            in_buffers[ids[i]]++;
            /* the weight the worker applied is the one computed here */
            char wlog[4400], pre[64];
            snprintf(pre, sizeof pre, "round %d: held update of task ", R);
            snprintf(wlog, sizeof wlog, "%s/w%d.log", cur.dir, ids[i]);
            if (!fh_log_has(wlog, pre))
                snprintf(wlog, sizeof wlog, "%s/w%d-life1.log", cur.dir, ids[i]);
            double got = log_number(wlog, pre, "weight ");
            double want = expected_weight(&cur, R, ids, k, i);
            assert_true(fabs(got - want) <= 1e-7 * fmax(1.0, want));
        }
        float *want = malloc(np * sizeof *want), *got = fh_read_f32(dump_path(&cur, "sum.f32", R), &ns);
        fp_secagg_dequantize_sum(want, acc, np, FRAC);
        assert_int_equal(ns, np);
        assert_memory_equal(want, got, np * sizeof *got);
        /* the next global = this one + sum / W (fedavg, no server optimizer) */
        size_t ng, nn;
        float *g = fh_read_f32(dump_path(&cur, "global.f32", R), &ng);
        float *next = R < ROUNDS && !cJSON_IsTrue(cJSON_GetObjectItem(rows[R + 1], "abandoned"))
                          ? fh_read_f32(dump_path(&cur, "global.f32", R + 1), &nn) : NULL;
        if (next) {
            assert_int_equal(ng, nn);
            assert_int_equal(ng, np);
            double worst = 0;
            for (size_t i = 0; i < ng; i++)
                worst = fmax(worst, fabs((double)next[i] - ((double)g[i] + (double)got[i] / W)));
            assert_true(worst <= 1e-6);
        }
        free(g);
        free(next);
        free(want);
        free(got);
        free(acc);
        free(q);
    }
    printf("buffers per worker: w0 %d, w1 %d, w2 %d, w3 %d, w4 (slow) %d; a stale update "
           "aggregated: %s\n", in_buffers[0], in_buffers[1], in_buffers[2], in_buffers[3],
           in_buffers[4], stale ? "yes" : "no");
    int busiest = 0;
    for (int i = 0; i < 4; i++)
        busiest = in_buffers[i] > busiest ? in_buffers[i] : busiest;
    assert_true(in_buffers[4] < busiest);
    assert_true(stale);
    char clog[4400];
    snprintf(clog, sizeof clog, "%s/coordinator-2.log", cur.dir);
    assert_true(fh_log_has(clog, "resuming run "));
    fh_metrics_free(rows, n);
}

/* ---- 2. plain mode: the staleness-weighted mean, computed here ------------------- */

static void test_async_plain_weights(void **state)
{
    (void)state;
    fh_fed_init(&cur, "async-plain", base_dir, 4);
    fh_fed_use_dump(&cur);
    fh_fed_write_ini(&cur, "rounds = 5\nseed = 3", 4, 4,
                     "[sampling]\nmin_workers = 4\n[round]\nmode = async\nbuffer = 2\n"
                     "start_timeout_s = 60\n[secagg]\nenabled = false\n[privacy]\n"
                     "require_secagg = false\n");
    fh_fed_start(&cur);
    fh_fed_finish(&cur, RUN_TIMEOUT_S);
    int n;
    cJSON **rows = fh_fed_metrics(&cur, 5, &n);
    fh_metrics_free(rows, n);
    double worst = 0, moved = 0;
    for (int R = 1; R < 5; R++) {
        char clog[4400];
        snprintf(clog, sizeof clog, "%s/coordinator-1.log", cur.dir);
        /* the round's members, from "round R: buffer of 2 held updates (wA wB)" */
        char pre[64], *t;
        size_t len;
        snprintf(pre, sizeof pre, "round %d: buffer of 2 held updates (", R);
        t = tu_read_file(clog, &len);
        assert_non_null(t);
        char *p = strstr(t, pre);
        assert_non_null(p);
        int ids[2];
        assert_int_equal(sscanf(p + strlen(pre), "w%d w%d", &ids[0], &ids[1]), 2);
        free(t);
        size_t ng, nn, nd;
        float *g = fh_read_f32(dump_path(&cur, "global.f32", R), &ng);
        float *next = fh_read_f32(dump_path(&cur, "global.f32", R + 1), &nn);
        assert_int_equal(ng, nn);
        double psum = 0, pw[2];
        for (int i = 0; i < 2; i++) {
            char rp[64];
            snprintf(rp, sizeof rp, "worker w%d registered: ", ids[i]);
            double p = coord_number(&cur, rp, "(weight ");
            snprintf(rp, sizeof rp, "round %d: w%d trained from version ", R, ids[i]);
            double s = coord_number(&cur, rp, "staleness ");
            pw[i] = p / sqrt(1.0 + s);
            psum += p;
        }
        float *d[2];
        for (int i = 0; i < 2; i++) {
            d[i] = worker_dump(&cur, ids[i], R, &nd);
            assert_int_equal(nd, ng);
        }
        for (size_t i = 0; i < ng; i++) {
            double want = (double)g[i] + (pw[0] * d[0][i] + pw[1] * d[1][i]) / psum;
            worst = fmax(worst, fabs((double)next[i] - want));
            moved = fmax(moved, fabs((double)next[i] - (double)g[i]));
        }
        free(d[0]);
        free(d[1]);
        free(g);
        free(next);
    }
    printf("plain async: new global vs g + sum p w(s) Delta / sum p: max |diff| %.3g "
           "(the globals moved by up to %.3g)\n", worst, moved);
    assert_true(worst <= 1e-6 && moved > 1e-4);
}

/* ---- 3. refused combinations --------------------------------------------------- */

static void test_async_refusals(void **state)
{
    (void)state;
    static const char *const bad[][2] = {
        {"--strategy.name=scaffold", "strategy scaffold needs every update"},
        {"--strategy.name=rolora", "strategy rolora needs every update"},
        {"--dp.enabled=true", "mode = async with [dp] is not supported"},
        {"--sampling.mode=poisson", "mode = async does not sample"},
        {"--round.min_quorum=5", "min_quorum = 5 can never be met"},
    };
    const char *dir = tu_tempdir("async-refused"), *ini = tu_path(dir, "empty.ini");
    char ini_path[4096];
    snprintf(ini_path, sizeof ini_path, "%s", ini);
    assert_int_equal(tu_write_file(ini_path, "", 0), 0);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char cmd[8192], *out = NULL;
        snprintf(cmd, sizeof cmd, "%s --config %s --insecure --model.path=%s/model "
                 "--run.state_dir=%s/state --round.mode=async --round.buffer=4 "
                 "--sampling.fraction=0.5 %s 2>&1", FP_COORDINATOR, ini_path, base_dir, dir,
                 bad[i][0]);
        int rc = tu_run(cmd, &out);
        printf("%s -> exit %d: %s", bad[i][0], rc, out ? out : "");
        assert_int_not_equal(rc, 0);
        assert_non_null(out);
        assert_non_null(strstr(out, bad[i][1]));
        free(out);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_async_refusals, teardown),
        cmocka_unit_test_teardown(test_async_plain_weights, teardown),
        cmocka_unit_test_teardown(test_async_secagg_resume, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
