/* test_transport.c - CURVE and the allowlist with the real programs, real keys
 * and real sockets on loopback (free ports), the bundled stories260K model.
 *
 * 1. a worker whose key is not in the allowlist is refused: it retries, says
 *    "the coordinator refused this worker's key (not in its allowlist)" and
 *    exits 1; the coordinator logs the refusal with the key's Z85.
 * 2. a worker that trusts the wrong coordinator key cannot connect: the
 *    handshake fails, it says so and exits 1 after its retries.
 * 3. SIGHUP re-reads the allowlist: a bad file keeps the old list (logged),
 *    then the refused worker's key is added and it is admitted without a
 *    restart; the CURVE run completes (coordinator and worker exit 0).
 * 4. --insecure logs its warning on both programs; without keys or
 *    --insecure each program says to run `fedpeft keygen`.
 * The 4-worker run over CURVE is test_federation's first scenario.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "keys.h"
#include "fed_harness.h"
#include "test_util.h"

static char base[4096];         /* model/, shard.txt, keys/ */
static char coord_pub_z85[FP_KEY_Z85_LEN + 1];

/* Makes BASE/keys/NAME.{key,pub}; returns the public key's Z85 (static slot). */
static const char *make_key(const char *name)
{
    static char z85[8][FP_KEY_Z85_LEN + 1];
    static int slot;
    fp_keypair *kp = fp_keypair_generate(name);
    assert_non_null(kp);
    if (fp_keypair_save(kp, tu_path(base, "keys"), 0) != 0)
        fail_msg("saving key %s: %s", name, fp_error_get());
    char *out = z85[slot++ % 8];
    snprintf(out, FP_KEY_Z85_LEN + 1, "%s", kp->public_z85);
    fp_keypair_free(&kp);
    return out;
}

/* The model, one small shard, and keys: coordinator, w-ok (allowlisted),
 * w-late (not, at first). */
static int group_setup(void **state)
{
    (void)state;
    char cmd[8192];
    snprintf(base, sizeof base, "%s", tu_tempdir("transport"));
    snprintf(cmd, sizeof cmd, "sed -n '1,300p' '%s/data/tinyshakespeare/input.txt' > "
             "'%s/shard.txt' && mkdir -m 700 '%s/keys'", FP_SOURCE_DIR, base, base);
    if (fh_model_convert(base) != 0 || tu_run(cmd, NULL) != 0)
        return -1;
    snprintf(coord_pub_z85, sizeof coord_pub_z85, "%s", make_key("coordinator"));
    return 0;
}

/* ---- processes -------------------------------------------------------------- */

typedef struct {
    char dir[4200], ini[4300], log[4300], allow[4300], endpoint[64];
    pid_t coord;
} coord_run;

static coord_run cur;

/* A CURVE coordinator for one round, admitting the keys in `allow` (text). */
static void coord_start(const char *tag, const char *allow)
{
    memset(&cur, 0, sizeof cur);
    snprintf(cur.dir, sizeof cur.dir, "%s", tu_tempdir(tag));
    snprintf(cur.ini, sizeof cur.ini, "%s/c.ini", cur.dir);
    snprintf(cur.log, sizeof cur.log, "%s/coordinator.log", cur.dir);
    snprintf(cur.allow, sizeof cur.allow, "%s/allowlist", cur.dir);
    snprintf(cur.endpoint, sizeof cur.endpoint, "tcp://127.0.0.1:%d", fh_free_port(NULL));
    assert_int_equal(tu_write_file(cur.allow, allow, strlen(allow)), 0);
    char ini[16384];
    snprintf(ini, sizeof ini,
             "[run]\nrounds = 1\nstate_dir = %s/state\n"
             "[model]\npath = %s/model\n"
             "[lora]\nrank = 2\n"
             "[train]\nlocal_steps = 2\nbatch = 2\nseq = 32\n"
             "[round]\nstart_timeout_s = 60\n"
             "[network]\nendpoint = %s\nheartbeat_ms = 300\n"
             "[security]\nsecret_key = %s/keys/coordinator.key\nallowlist = %s\n",
             cur.dir, base, cur.endpoint, base, cur.allow);
    assert_int_equal(tu_write_file(cur.ini, ini, strlen(ini)), 0);
    char *argv[] = {FP_COORDINATOR, "--config", cur.ini, NULL};
    cur.coord = fh_spawn(argv, cur.log, NULL);
    if (!fh_log_wait(cur.log, "listening on", 20)) {
        fh_log_print(cur.log);
        fail_msg("the coordinator did not start");
    }
}

static int teardown(void **state)
{
    (void)state;
    if (cur.coord > 0) {
        kill(cur.coord, SIGTERM);
        fh_wait_exit(cur.coord, 10, NULL);
    }
    cur.coord = 0;
    return 0;
}

/* Runs a worker to its end; returns its exit status, *out its log (caller frees). */
static pid_t worker_spawn(const char *id, const char *server_key, int retries, const char *log)
{
    static char a[6][4400];
    snprintf(a[0], sizeof a[0], "--worker.id=%s", id);
    snprintf(a[1], sizeof a[1], "--model.path=%s/model", base);
    snprintf(a[2], sizeof a[2], "--worker.data=%s/shard.txt", base);
    snprintf(a[3], sizeof a[3], "--worker.endpoint=%s", cur.endpoint);
    snprintf(a[4], sizeof a[4], "--security.secret_key=%s/keys/%s.key", base, id);
    snprintf(a[5], sizeof a[5], "--security.coordinator_key=%s", server_key);
    char r[64];
    snprintf(r, sizeof r, "--worker.connect_retries=%d", retries);
    char *argv[] = {FP_WORKER, a[0], a[1], a[2], a[3], a[4], a[5], r,
                    "--worker.retry_backoff_ms=200", "--worker.threads=1", NULL};
    return fh_spawn(argv, log, NULL);
}

static int worker_run(const char *id, const char *server_key, int retries, char **out)
{
    char log[4400];
    snprintf(log, sizeof log, "%s/%s.log", cur.dir, id);
    int rc = fh_wait_exit(worker_spawn(id, server_key, retries, log), 60, NULL);
    *out = tu_read_file(log, NULL);
    printf("# worker %s exited %d:\n%s", id, rc, *out ? *out : "(no log)");
    return rc;
}

#define assert_contains(text, frag)                                                     \
    do {                                                                                \
        if (!(text) || !strstr((text), (frag)))                                         \
            fail_msg("expected '%s' in:\n%s", (frag), (text) ? (text) : "(null)");      \
    } while (0)

/* ---- the tests --------------------------------------------------------------------- */

/* 1. Not in the allowlist: refused, logged on both sides, worker exits 1. */
static void test_unlisted_worker_refused(void **state)
{
    (void)state;
    const char *ok = make_key("w-ok1"), *stranger = make_key("w-stranger");
    char allow[256], *out = NULL;
    snprintf(allow, sizeof allow, "# only w-ok1\n%s w-ok1\n", ok);
    coord_start("transport-refused", allow);
    int rc = worker_run("w-stranger", coord_pub_z85, 2, &out);
    assert_int_equal(rc, 1);
    assert_contains(out, "the coordinator refused this worker's key (not in its allowlist)");
    assert_contains(out, stranger);     /* the error names the key to add */
    free(out);
    char line[256];
    snprintf(line, sizeof line, "refused worker key %s", stranger);
    if (!fh_log_wait(cur.log, line, 2)) {
        fh_log_print(cur.log);
        fail_msg("the coordinator did not log the refusal of %s", stranger);
    }
    if (fh_log_wait(cur.log, "w-stranger registered", 0))
        fail_msg("the refused worker registered");
}

/* 2. The wrong coordinator key: no handshake, a clear message, exit 1. */
static void test_wrong_coordinator_key(void **state)
{
    (void)state;
    const char *ok = make_key("w-ok2"), *other = make_key("not-the-coordinator");
    char allow[256], *out = NULL;
    snprintf(allow, sizeof allow, "%s w-ok2\n", ok);
    coord_start("transport-wrongkey", allow);
    int rc = worker_run("w-ok2", other, 2, &out);
    assert_int_equal(rc, 1);
    assert_contains(out, "CURVE handshake with");
    assert_contains(out, "error: cannot connect to the coordinator");
    assert_contains(out, "[security] coordinator_key");
    free(out);
    if (fh_log_wait(cur.log, "w-ok2 registered", 0))
        fail_msg("a worker with the wrong coordinator key registered");
    /* The same worker with the right key (Z85 text this time) gets in. */
    rc = worker_run("w-ok2", coord_pub_z85, 10, &out);
    assert_int_equal(rc, 0);
    assert_contains(out, "registered with");
    free(out);
    assert_int_equal(fh_wait_exit(cur.coord, 30, NULL), 0);
    cur.coord = 0;
}

/* 3. SIGHUP: a broken file keeps the old list; the fixed one admits w-late. */
static void test_sighup_admits(void **state)
{
    (void)state;
    const char *other = make_key("w-other"), *late = make_key("w-late");
    char allow[512], wlog[4400], pub[4400];
    snprintf(allow, sizeof allow, "%s w-other\n", other);
    coord_start("transport-sighup", allow);
    snprintf(wlog, sizeof wlog, "%s/w-late.log", cur.dir);
    snprintf(pub, sizeof pub, "%s/keys/coordinator.pub", base);
    pid_t w = worker_spawn("w-late", pub, 40, wlog);
    if (!fh_log_wait(cur.log, late, 20)) {
        fh_log_print(wlog);
        fh_log_print(cur.log);
        fail_msg("the coordinator never refused w-late");
    }
    assert_true(fh_log_wait(wlog, "refused this worker's key", 5));

    const char *bad = "not a key at all\n";
    assert_int_equal(tu_write_file(cur.allow, bad, strlen(bad)), 0);
    assert_int_equal(kill(cur.coord, SIGHUP), 0);
    assert_true(fh_log_wait(cur.log, "allowlist not reloaded, keeping the 1 keys", 5));
    assert_true(fh_log_wait(cur.log, "allowlist:1:", 0));   /* says where */

    snprintf(allow, sizeof allow, "%s w-other\n%s w-late\n", other, late);
    assert_int_equal(tu_write_file(cur.allow, allow, strlen(allow)), 0);
    assert_int_equal(kill(cur.coord, SIGHUP), 0);
    assert_true(fh_log_wait(cur.log, "reloaded: 2 worker keys", 5));
    int rc = fh_wait_exit(w, 60, NULL);
    if (rc != 0) {
        fh_log_print(wlog);
        fh_log_print(cur.log);
    }
    assert_int_equal(rc, 0);
    assert_true(fh_log_wait(wlog, "registered with", 0));
    assert_true(fh_log_wait(cur.log, "worker w-late registered", 0));
    /* the CURVE run completed: round 1 and the final adapter */
    assert_int_equal(fh_wait_exit(cur.coord, 30, NULL), 0);
    cur.coord = 0;
    assert_true(fh_log_wait(cur.log, "complete: final adapter written", 0));
}

/* 4. --insecure warns at every start; no keys and no --insecure: keygen hint. */
static void test_insecure_warning_and_missing_keys(void **state)
{
    (void)state;
    const char *dir = tu_tempdir("transport-insecure");
    const char *warning = "WARNING: --insecure: traffic is plain TCP, unauthenticated; use only "
                          "for local tests";
    char cmd[16384], *out = NULL, ini[4300];
    int port = fh_free_port(NULL);
    snprintf(ini, sizeof ini, "%s/c.ini", dir);
    assert_int_equal(tu_write_file(ini, "[run]\nrounds = 1\n", 17), 0);
    snprintf(cmd, sizeof cmd,
             "'%s' --config '%s' --model.path='%s/model' --run.state_dir='%s/state' "
             "--network.endpoint=tcp://127.0.0.1:%d --insecure > '%s/c.log' 2>&1 & c=$!; "
             "'%s' --worker.id=w1 --model.path='%s/model' --worker.data='%s/shard.txt' "
             "--worker.endpoint=tcp://127.0.0.1:%d --worker.threads=1 --insecure; rc=$?; "
             "wait $c; echo \"worker=$rc coordinator=$?\"; cat '%s/c.log'",
             FP_COORDINATOR, ini, base, dir, port, dir, FP_WORKER, base, base, port, dir);
    tu_run(cmd, &out);
    printf("%s", out);
    assert_contains(out, "worker=0 coordinator=0");
    assert_contains(out, "coordinator: WARNING: --insecure");
    assert_contains(out, "worker w1: WARNING: --insecure");
    assert_contains(out, warning);
    free(out);

    /* No [security] at all. */
    snprintf(cmd, sizeof cmd, "'%s' --config '%s' --model.path='%s/model' "
             "--run.state_dir='%s/state2'", FP_COORDINATOR, ini, base, dir);
    int rc = tu_run(cmd, &out);
    printf("# coordinator without keys: exit %d: %s", rc, out);
    assert_int_equal(rc, 2);
    assert_contains(out, "fedpeft keygen");
    assert_contains(out, "[security] secret_key");
    free(out);
    snprintf(cmd, sizeof cmd, "'%s' --config '%s' --model.path='%s/model' "
             "--run.state_dir='%s/state2' --security.secret_key='%s/missing.key' "
             "--security.allowlist=x", FP_COORDINATOR, ini, base, dir, dir);
    rc = tu_run(cmd, &out);
    printf("# coordinator, missing key file: exit %d: %s", rc, out);
    assert_int_equal(rc, 2);
    assert_contains(out, "missing.key");
    assert_contains(out, "fedpeft keygen");
    free(out);
    snprintf(cmd, sizeof cmd, "'%s' --worker.id=w1 --model.path='%s/model' "
             "--worker.data='%s/shard.txt'", FP_WORKER, base, base);
    rc = tu_run(cmd, &out);
    printf("# worker without keys: exit %d: %s", rc, out);
    assert_int_equal(rc, 1);
    assert_contains(out, "fedpeft keygen");
    assert_contains(out, "[security] secret_key");
    free(out);
    /* A coordinator whose allowlist does not parse does not start. */
    const char *bad = "garbage\n";
    assert_int_equal(tu_write_file(tu_path(dir, "bad-allow"), bad, strlen(bad)), 0);
    snprintf(cmd, sizeof cmd, "'%s' --config '%s' --model.path='%s/model' "
             "--run.state_dir='%s/state3' --security.secret_key='%s/keys/coordinator.key' "
             "--security.allowlist='%s/bad-allow'", FP_COORDINATOR, ini, base, dir, base, dir);
    rc = tu_run(cmd, &out);
    printf("# coordinator, bad allowlist: exit %d: %s", rc, out);
    assert_int_equal(rc, 1);
    assert_contains(out, "bad-allow:1");
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_unlisted_worker_refused, teardown),
        cmocka_unit_test_teardown(test_wrong_coordinator_key, teardown),
        cmocka_unit_test_teardown(test_sighup_admits, teardown),
        cmocka_unit_test(test_insecure_warning_and_missing_keys),
    };
    if (getenv("FP_TEST_FILTER"))
        cmocka_set_test_filter(getenv("FP_TEST_FILTER"));
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
