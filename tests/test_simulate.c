/* test_simulate.c - `fedpeft simulate` end to end with the shipped config
 * (smaller: 3 workers, 2 rounds), and the worker's errors a user meets first.
 * Real processes: the fedpeft tool, fedpeft-coordinator, fedpeft-worker.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <dirent.h>
#include <sys/types.h>
#include <unistd.h>

#include <cmocka.h>
#include <cjson/cJSON.h>

#include "model.h"
#include "fed_harness.h"
#include "test_util.h"

static char sim_dir[4096];      /* the simulate run's OUT, reused by later tests */

static void assert_contains(const char *hay, const char *needle)
{
    if (!hay || !strstr(hay, needle))
        fail_msg("expected '%s' in:\n%s", needle, hay ? hay : "(nothing)");
}

static double num(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v))
        fail_msg("metrics line without a number '%s'", key);
    return v->valuedouble;
}

/* The shipped demo, smaller: table, metrics, adapter, logs. */
static void test_simulate_small(void **state)
{
    (void)state;
    char cmd[8192], *out = NULL;
    snprintf(sim_dir, sizeof sim_dir, "%s", tu_tempdir("simulate"));
    /* From the build dir: the config's relative data paths resolve against
     * the project root (the config file's parent directory). */
    snprintf(cmd, sizeof cmd, "cd '%s' && '%s' simulate --config '%s/configs/simulate-shakespeare.ini' "
             "--simulate.workers=3 --run.rounds=2 --train.local_steps=10 --train.seq=64 "
             "--run.save_every=1 --run.seed 77 --simulate.out_dir='%s'", FP_BINARY_DIR, FP_TOOL,
             FP_SOURCE_DIR, sim_dir);
    int rc = tu_run(cmd, &out);
    printf("%s", out);
    if (rc != 0)
        fail_msg("simulate exited %d", rc);
    assert_contains(out, "train loss");
    assert_contains(out, "val loss");
    assert_contains(out, "0/2");
    assert_contains(out, "1/2");
    assert_contains(out, "2/2");
    assert_contains(out, "3 workers");
    assert_contains(out, "2 rounds in");
    free(out);

    char *text = tu_read_file(tu_path(sim_dir, "state/metrics.jsonl"), NULL);
    assert_non_null(text);
    cJSON *rows[3] = {0};
    int n = 0;
    char *save = NULL;
    for (char *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        assert_true(n < 3);
        assert_non_null(rows[n] = cJSON_Parse(l));
        assert_int_equal((int)num(rows[n], "round"), n);
        n++;
    }
    free(text);
    assert_int_equal(n, 3);
    assert_int_equal((int)num(rows[1], "sampled"), 3);
    assert_int_equal((int)num(rows[2], "reported"), 3);
    double v0 = num(rows[0], "val_loss"), v2 = num(rows[2], "val_loss");
    printf("simulate: validation loss %.4f -> %.4f\n", v0, v2);
    assert_true(v2 < v0 - 0.1);
    for (int i = 0; i < 3; i++)
        cJSON_Delete(rows[i]);

    /* the shards are `fedpeft partition --seed [run] seed` (77, not a default: every
     * [run] key, save_every too, leaves the seed alone) */
    char *mine = tu_read_file(tu_path(sim_dir, "shards/shard-000.txt"), NULL);
    assert_non_null(mine);
    for (int seed = 77; seed >= 0; seed -= 77) {
        char part[4200];
        snprintf(part, sizeof part, "%s/part-%d", sim_dir, seed);
        snprintf(cmd, sizeof cmd, "'%s' partition --data '%s/data/tinyshakespeare/input.txt' "
                 "--workers 3 --by speaker --out '%s' --seed %d > /dev/null", FP_TOOL,
                 FP_SOURCE_DIR, part, seed);
        assert_int_equal(tu_run(cmd, NULL), 0);
        char *ref = tu_read_file(tu_path(part, "shard-000.txt"), NULL);
        assert_non_null(ref);
        printf("shard-000 %s `fedpeft partition --seed %d`\n",
               strcmp(ref, mine) == 0 ? "==" : "!=", seed);
        assert_int_equal(strcmp(ref, mine) == 0, seed == 77);
        free(ref);
    }
    free(mine);

    const char *files[] = {"adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                           "state/adapters/round-1/adapter_model.safetensors",
                           "state/adapters/round-2/adapter_config.json",
                           "logs/coordinator.log", "logs/w01.log", "logs/w03.log",
                           "model/config.json", "shards/shard-000.txt", "shards/shard-002.txt"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char *f = tu_read_file(tu_path(sim_dir, files[i]), NULL);
        if (!f)
            fail_msg("simulate left no %s/%s", sim_dir, files[i]);
        free(f);
    }
}

/* [simulate] model: an existing model directory is used in place (nothing is
 * converted into OUT/model) and trains; a directory without config.json is
 * refused before anything starts, naming the file. */
static void test_simulate_model_in_place(void **state)
{
    (void)state;
    char cmd[8192], model[4200], *out = NULL;
    snprintf(model, sizeof model, "%s/model", sim_dir);
    const char *dir = tu_tempdir("simulate-model");
    snprintf(cmd, sizeof cmd, "'%s' simulate --config '%s/configs/simulate-shakespeare.ini' "
             "--simulate.workers=3 --run.rounds=1 --train.local_steps=10 --train.seq=64 "
             "--simulate.model='%s' --simulate.out_dir='%s'", FP_TOOL, FP_SOURCE_DIR, model, dir);
    int rc = tu_run(cmd, &out);
    printf("%s", out);
    if (rc != 0)
        fail_msg("simulate with [simulate] model exited %d", rc);
    free(out);
    assert_int_not_equal(access(tu_path(dir, "model"), F_OK), 0);
    char *log = tu_read_file(tu_path(dir, "logs/w01.log"), NULL);
    assert_contains(log, model);
    free(log);
    int n;
    cJSON **rows = fh_metrics_lines(tu_path(dir, "state/metrics.jsonl"), &n);
    assert_int_equal(n, 2);
    assert_true(num(rows[1], "val_loss") < num(rows[0], "val_loss") - 0.05);
    fh_metrics_free(rows, n);

    snprintf(cmd, sizeof cmd, "'%s' simulate --config '%s/configs/simulate-shakespeare.ini' "
             "--simulate.model='%s/shards' --simulate.out_dir='%s'", FP_TOOL, FP_SOURCE_DIR,
             sim_dir, dir);
    assert_int_equal(tu_run(cmd, &out), 1);
    assert_contains(out, "/shards has no readable config.json");
    free(out);
}

/* Two workers under secure aggregation: each refuses (its [privacy] min_peers =
 * 3), every round is abandoned; the table says why under the row and simulate
 * fails instead of reporting a run that trained nothing. */
static void test_simulate_all_abandoned(void **state)
{
    (void)state;
    char cmd[8192], *out = NULL;
    const char *dir = tu_tempdir("simulate-abandoned");
    snprintf(cmd, sizeof cmd, "'%s' simulate --config '%s/configs/simulate-shakespeare.ini' "
             "--simulate.workers=2 --run.rounds=1 --train.local_steps=2 --simulate.out_dir='%s'",
             FP_TOOL, FP_SOURCE_DIR, dir);
    assert_int_equal(tu_run(cmd, &out), 1);
    printf("%s", out);
    assert_contains(out, "abandoned: secure aggregation");
    assert_contains(out, "2 sampled workers refused the task; w0");
    assert_contains(out, "below [privacy] min_peers = 3");
    assert_contains(out, "every round was abandoned");
    free(out);
}

/* Every worker failing (bad data form): simulate names them and their logs. */
static void test_simulate_dead_workers(void **state)
{
    (void)state;
    char cmd[8192], *out = NULL;
    const char *dir = tu_tempdir("simulate-dead");
    snprintf(cmd, sizeof cmd, "'%s' simulate --config '%s/configs/simulate-shakespeare.ini' "
             "--simulate.workers=2 --run.rounds=1 --worker.format=alpaca "
             "--round.start_timeout_s=60 --simulate.out_dir='%s'", FP_TOOL, FP_SOURCE_DIR, dir);
    int rc = tu_run(cmd, &out);
    printf("%s", out);
    assert_int_equal(rc, 1);
    assert_contains(out, "worker w01 (pid");
    assert_contains(out, "exited with status 1");
    assert_contains(out, "logs/w01.log");
    assert_contains(out, "every worker has died");
    free(out);
}

/* Overrides naming no program are refused before anything starts. */
static void test_simulate_bad_override(void **state)
{
    (void)state;
    char cmd[8192], *out = NULL;
    snprintf(cmd, sizeof cmd, "'%s' simulate --config '%s/configs/simulate-shakespeare.ini' "
             "--bogus.key=1", FP_TOOL, FP_SOURCE_DIR);
    assert_int_equal(tu_run(cmd, &out), 2);
    assert_contains(out, "unknown section in '--bogus.key=1'");
    free(out);
}

/* A bad [simulate] slow_workers is refused before anything starts, naming the entry. */
static void test_simulate_bad_slow_workers(void **state)
{
    (void)state;
    const char *bad[][2] = {
        {"w09:4", "names w09, which is not one of the workers w01 .. w02"},
        {"w01:0.5", "the factor of \"w01:0.5\" must be a number >= 1"},
        {"w01", "\"w01\" is not ID:FACTOR"},
        {"w01:4,w01:2", "w01 is listed twice"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char cmd[8192], *out = NULL;
        snprintf(cmd, sizeof cmd, "'%s' simulate --config '%s/configs/simulate-shakespeare.ini' "
                 "--simulate.workers=2 --simulate.slow_workers=%s --simulate.out_dir='%s'",
                 FP_TOOL, FP_SOURCE_DIR, bad[i][0], tu_tempdir("simulate-badslow"));
        assert_int_not_equal(tu_run(cmd, &out), 0);
        assert_contains(out, bad[i][1]);
        free(out);
    }
}

/* The pid of the fedpeft-worker whose command line names dir, or 0. */
static pid_t worker_pid(const char *dir)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    pid_t found = 0;
    while (d && !found && (e = readdir(d))) {
        char path[300], cmd[8192];
        if (e->d_name[0] < '1' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof path, "/proc/%s/cmdline", e->d_name);
        FILE *f = fopen(path, "rb");
        if (!f)
            continue;
        size_t n = fread(cmd, 1, sizeof cmd - 1, f);
        fclose(f);
        for (size_t i = 0; i < n; i++)      /* NULs between the arguments */
            if (!cmd[i])
                cmd[i] = ' ';
        cmd[n] = '\0';
        if (strstr(cmd, "fedpeft-worker") && strstr(cmd, dir))
            found = (pid_t)atoi(e->d_name);
    }
    if (d)
        closedir(d);
    return found;
}

/* One worker trains 200 steps alone, throttled by `slow` ("" = not); its
 * state in /proc/PID/stat is sampled every 5 ms while it trains. The share
 * of samples in which it was stopped (state T): what a throttle does, not
 * how long the machine took (a loaded machine slows both runs alike). */
static double stopped_share(const char *tag, const char *slow)
{
    const char *dir = tu_tempdir(tag);
    char cfg[4200], out[4300], steps[] = "--train.local_steps=200", log[4300], sw[128];
    snprintf(cfg, sizeof cfg, "%s/configs/simulate-shakespeare.ini", FP_SOURCE_DIR);
    snprintf(out, sizeof out, "--simulate.out_dir=%s", dir);
    snprintf(log, sizeof log, "%s.log", dir);
    snprintf(sw, sizeof sw, "--simulate.slow_workers=%s", slow);
    char *argv[] = {FP_TOOL, "simulate", "--config", cfg, "--simulate.workers=1",
                    "--run.rounds=1", steps, "--train.seq=64", "--secagg.enabled=false",
                    "--privacy.require_secagg=false", sw, out, NULL};
    pid_t sim = fh_spawn(argv, log, NULL);
    pid_t w = 0;
    for (int i = 0; i < 600 && !w; i++, usleep(100000))
        w = worker_pid(dir);
    assert_true(w > 0);
    int stopped = 0, seen = 0;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)w);
    while (seen < 4000) {
        FILE *f = fopen(path, "r");
        if (!f)
            break;      /* it exited: the run is over */
        char st = 0;
        int ok = fscanf(f, "%*d %*s %c", &st) == 1;
        fclose(f);
        if (!ok || st == 'Z')
            break;
        stopped += st == 'T' || st == 't';
        seen++;
        usleep(5000);
    }
    assert_int_equal(fh_wait_exit(sim, 600, "fedpeft simulate"), 0);
    assert_true(seen >= 100);   /* it trained for at least half a second */
    return (double)stopped / seen;
}

/* w01:4 is a real throttle: the worker is stopped about 3/4 of the time
 * (SIGSTOP 75 ms of every 100); without it, never. */
static void test_simulate_slow_worker(void **state)
{
    (void)state;
    double fast = stopped_share("simulate-fast", "");
    double slow = stopped_share("simulate-slow", "w01:4");
    printf("slow_workers: the worker was stopped in %.0f%% of the samples at full speed, "
           "%.0f%% at w01:4 (75%% expected)\n", 100 * fast, 100 * slow);
    assert_true(fast == 0.0);
    assert_true(slow >= 0.55 && slow <= 0.9);
}

/* No coordinator: retries with backoff, then exit 1 naming the endpoint. */
static void test_worker_no_coordinator(void **state)
{
    (void)state;
    char cmd[8192], *out = NULL, ep[64], line[128];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", fh_free_port(NULL));
    snprintf(cmd, sizeof cmd, "'%s' --worker.id=w1 --model.path='%s/model' "
             "--worker.data='%s/shards/shard-000.txt' --worker.endpoint=%s "
             "--worker.connect_retries=3 --worker.retry_backoff_ms=50 --insecure", FP_WORKER, sim_dir,
             sim_dir, ep);
    int rc = tu_run(cmd, &out);
    printf("%s", out);
    assert_int_equal(rc, 1);
    for (int k = 1; k <= 3; k++) {
        snprintf(line, sizeof line, "no coordinator at %s, retry %d/3", ep, k);
        assert_contains(out, line);
    }
    snprintf(line, sizeof line, "error: no coordinator at %s after 3 retries", ep);
    assert_contains(out, line);
    free(out);
}

/* A worker on a different base model is refused (Reject MODEL): exit 1 with
 * the coordinator's reason; SIGTERM-free, no retries. */
static void test_worker_wrong_model(void **state)
{
    (void)state;
    const char *dir = tu_tempdir("wrong-model");
    fp_model *m = fp_model_load(tu_path(sim_dir, "model"));
    assert_non_null(m);
    m->slab[0] += 0.5f;     /* one weight differs: another base model */
    assert_int_equal(fp_model_save(m, tu_path(dir, "other")), 0);
    fp_model_free(&m);
    char cmd[16384], *out = NULL, ep[64];
    snprintf(cmd, sizeof cmd, "cp '%s/model/tokenizer.json' '%s/other/'", sim_dir, dir);
    assert_int_equal(tu_run(cmd, NULL), 0);
    const char *ini = "[run]\nrounds = 1\n";
    assert_int_equal(tu_write_file(tu_path(dir, "c.ini"), ini, strlen(ini)), 0);
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", fh_free_port(NULL));
    snprintf(cmd, sizeof cmd,
             "'%s' --config '%s/c.ini' --model.path='%s/model' --run.state_dir='%s/state' --network.endpoint=%s "
             "--network.heartbeat_ms=200 --insecure > '%s/coord.log' 2>&1 & c=$!; "
             "'%s' --worker.id=w1 --model.path='%s/other' --worker.data='%s/shards/shard-000.txt' "
             "--worker.endpoint=%s --worker.retry_backoff_ms=200 --insecure; rc=$?; kill $c; "
             "wait $c; exit $rc",
             FP_COORDINATOR, dir, sim_dir, dir, ep, dir, FP_WORKER, dir, sim_dir, ep);
    int rc = tu_run(cmd, &out);
    printf("%s", out);
    assert_int_equal(rc, 1);
    assert_contains(out, "refused this worker: wrong base model");
    free(out);
}

/* Ctrl-C: simulate stops every process (workers abandon their round and exit
 * 0 on SIGTERM) and exits 130. */
static void test_simulate_interrupt(void **state)
{
    (void)state;
    char cmd[8192], *out = NULL;
    const char *dir = tu_tempdir("simulate-int");
    snprintf(cmd, sizeof cmd, "'%s' simulate --config '%s/configs/simulate-shakespeare.ini' "
             "--simulate.workers=2 --run.rounds=500 --train.seq=64 --simulate.out_dir='%s/out' "
             "> '%s/sim.txt' 2>&1 & p=$!; i=0; "
             "while ! grep -q ' 1/500 ' '%s/sim.txt' && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done; "
             "kill -INT $p; wait $p; echo \"rc=$?\"; cat '%s/sim.txt'",
             FP_TOOL, FP_SOURCE_DIR, dir, dir, dir, dir);
    tu_run(cmd, &out);
    printf("%s", out);
    assert_contains(out, "rc=130");
    assert_contains(out, "interrupted: stopping the coordinator and 2 workers");
    free(out);
    char *log = tu_read_file(tu_path(dir, "out/logs/w01.log"), NULL);
    assert_contains(log, "stopped by signal 15");
    free(log);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_simulate_small),    /* first: the others use its OUT */
        cmocka_unit_test(test_simulate_model_in_place),
        cmocka_unit_test(test_simulate_all_abandoned),
        cmocka_unit_test(test_simulate_bad_override),
        cmocka_unit_test(test_simulate_bad_slow_workers),
        cmocka_unit_test(test_simulate_slow_worker),
        cmocka_unit_test(test_worker_no_coordinator),
        cmocka_unit_test(test_worker_wrong_model),
        cmocka_unit_test(test_simulate_dead_workers),
        cmocka_unit_test(test_simulate_interrupt),
    };
    if (getenv("FP_TEST_FILTER"))
        cmocka_set_test_filter(getenv("FP_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
