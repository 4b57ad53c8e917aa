/* test_secagg_adversary.c - secure aggregation against a malicious participant
 * (issue 12): the real fedpeft-coordinator and 4 real fedpeft-workers over
 * CURVE on loopback, one of them (or the coordinator) misbehaving through a
 * test hook (FEDPEFT_TEST_SECAGG=WHAT on a worker, FEDPEFT_TEST_EVIL_UNMASK on
 * the coordinator; compiled only with -DFEDPEFT_TEST_HOOKS=ON). With one
 * allowlisted key a hostile client is one identity (test_adversary.c), so
 * each attack is a member doing something a member can do:
 *
 * a. two members say Hello again mid-round (new sessions): they stay members,
 *    the round completes with all 4, and what the coordinator unmasks is the
 *    exact sum of all 4 quantized updates, never one worker's update;
 * b. one member reveals a corrupted Shamir share with 4 responses for t = 3:
 *    the coordinator names it and completes the round with the exact sum;
 *    with t = 4 (exactly t responses) the round is abandoned, holders named;
 * c. one member's masked input decodes to about +-512 per coordinate: the
 *    unmasked sum is impossible for 4 clipped inputs, the round is refused,
 *    the adapter unchanged;
 * d. one member advertises an all-zero mask key: refused and excluded, the
 *    round completes with the other 3;
 * e. one member seals a broken share for a peer: that peer reports it, the
 *    round completes with all 4;
 * f. a coordinator without secure aggregation: every worker refuses the task
 *    (require_secagg) and says why; no update is computed;
 * g. a coordinator asking for both shares of a member, or naming fewer than t
 *    survivors: every worker refuses and reveals nothing (round abandoned);
 *    two conflicting UnmaskRequests: each worker answers the first only;
 * h. one member advertises keys its signing key did not sign: refused and
 *    named, the round completes with the other 3;
 * i. a coordinator that changes a member's mask key in the PeerKeys it relays
 *    (FEDPEFT_TEST_EVIL_GRAPH=swapkey): the signature no longer verifies, the
 *    lied-to member refuses; one that also signs the key with a signing key of
 *    its own (signkey): a worker with a [privacy] roster refuses; the round
 *    completes with the other 3 either way;
 * j. a coordinator that shows one survivor a different survivor set
 *    (FEDPEFT_TEST_EVIL_CONSIST=split: "the last survivor dropped", to get
 *    that one's mask key share from it): the consistency round catches it,
 *    that survivor refuses the UnmaskRequest and reveals nothing, and the
 *    round completes with the exact sum of all 4 from the others' shares.
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
#include <unistd.h>

#include <cmocka.h>
#include <cjson/cJSON.h>

#include "fed_harness.h"
#include "safetensors.h"
#include "secagg.h"
#include "test_util.h"

#define NW 4
#define CLIP 1.0f
#define FRAC 22

static char base_dir[4096];

static int group_setup(void **state)
{
    (void)state;
    if (fh_base_setup("sa-adv", NW, 400, base_dir, sizeof base_dir) != 0)
        return -1;
    return fh_keygen(base_dir, NW);
}

typedef struct {
    char dir[4096], cfg[4200], state[4200], adapter[4300], dump[4300], clog[4300];
} run;

/* One round of NW workers over CURVE; wenv[k] / cenv: "NAME=VALUE" or NULL.
 * Fails unless the coordinator exits 0. */
static void federate(run *f, const char *tag, const char *extra, const char *const *wenv,
                     const char *cenv)
{
    memset(f, 0, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "%s", tu_tempdir(tag));
    snprintf(f->cfg, sizeof f->cfg, "%s/fed.ini", f->dir);
    snprintf(f->state, sizeof f->state, "%s/state", f->dir);
    snprintf(f->adapter, sizeof f->adapter, "%s/adapter", f->dir);
    snprintf(f->dump, sizeof f->dump, "%s/dump", f->dir);
    snprintf(f->clog, sizeof f->clog, "%s/coordinator.log", f->dir);
    char cmd[4400], ep[64], ini[8192];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", f->dump);
    assert_int_equal(tu_run(cmd, NULL), 0);
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", fh_free_port(NULL));
    snprintf(ini, sizeof ini,
             "[run]\nrounds = 1\nseed = 3\nstate_dir = %s\nout_dir = %s\n"
             "[model]\npath = %s/model\n"
             "[lora]\nrank = 4\nalpha = 8\ntargets = all\n"
             "[train]\nlocal_steps = 2\nbatch = 2\nseq = 32\nlr = 5e-3\n"
             "[sampling]\nmin_workers = %d\n"
             "[round]\ndeadline_s = 40\nstart_timeout_s = 60\nmin_quorum = 1\n"
             "[network]\nendpoint = %s\nheartbeat_ms = 300\n"
             "[worker]\nendpoint = %s\nconnect_retries = 30\nretry_backoff_ms = 200\n"
             "val_fraction = 0.1\n"
             "[security]\nsecret_key = %s/keys/coordinator.key\nallowlist = %s/keys/allowlist\n"
             "coordinator_key = %s/keys/coordinator.pub\n%s",
             f->state, f->adapter, base_dir, NW, ep, ep, base_dir, base_dir, base_dir,
             extra ? extra : "");
    assert_int_equal(tu_write_file(f->cfg, ini, strlen(ini)), 0);
    char *cargv[] = {FP_COORDINATOR, "--config", f->cfg, NULL};
    pid_t coord = fh_spawn_dump(cargv, f->clog, cenv, f->dump);
    pid_t w[NW] = {0};
    for (int k = 0; k < NW; k++) {
        char log[4400], id[64], data[4300], sk[4400];
        snprintf(log, sizeof log, "%s/w%d.log", f->dir, k);
        snprintf(id, sizeof id, "--worker.id=w%d", k);
        snprintf(data, sizeof data, "--worker.data=%s/shard-%d.txt", base_dir, k);
        snprintf(sk, sizeof sk, "--security.secret_key=%s/keys/w%d.key", base_dir, k);
        char *wargv[] = {FP_WORKER, "--config", f->cfg, id, data, "--worker.threads=1", sk, NULL};
        w[k] = fh_spawn_dump(wargv, log, wenv ? wenv[k] : NULL, f->dump);
    }
    int rc = fh_wait_exit(coord, 240, NULL);
    for (int k = 0; k < NW; k++)
        fh_wait_exit(w[k], 20, NULL);
    if (rc != 0)
        fail_msg("the coordinator exited %d; see %s", rc, f->clog);
}

static cJSON *round1(const run *f)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/metrics.jsonl", f->state);
    int n;
    cJSON **rows = fh_metrics_lines(path, &n);
    if (n < 2)
        fail_msg("no metrics line for round 1 in %s", path);
    cJSON *o = cJSON_Duplicate(rows[1], 1);
    fh_metrics_free(rows, n);
    return o;
}

static int abandoned(const cJSON *m)
{
    return cJSON_IsTrue(cJSON_GetObjectItem(m, "abandoned"));
}

static const char *reason(const cJSON *m)
{
    const char *s = cJSON_GetStringValue(cJSON_GetObjectItem(m, "reason"));
    return s ? s : "";
}

static const char *wlog(const run *f, int k)
{
    static char p[4][4400];
    static int i;
    i = (i + 1) % 4;
    snprintf(p[i], sizeof p[i], "%s/w%d.log", f->dir, k);
    return p[i];
}

static int count_in(const char *path, const char *needle)
{
    char *t = tu_read_file(path, NULL);
    int n = 0;
    for (char *p = t; p && (p = strstr(p, needle)); p += strlen(needle))
        n++;
    free(t);
    return n;
}

/* The coordinator's unmasked sum equals the exact sum of the quantized
 * contributions of the workers in ids (and so is no single worker's). */
static void assert_sum_of(const run *f, const int *ids, int k)
{
    char path[4500];
    snprintf(path, sizeof path, "%s/coord-round-1-sum.f32", f->dump);
    size_t n, m;
    float *got = fh_read_f32(path, &n);
    uint32_t *acc = calloc(n, sizeof *acc), *q = calloc(n, sizeof *q);
    for (int i = 0; i < k; i++) {
        snprintf(path, sizeof path, "%s/worker-w%d-round-1.f32", f->dump, ids[i]);
        float *x = fh_read_f32(path, &m);
        assert_int_equal(m, n);
        assert_int_equal(fp_secagg_quantize(q, x, n, CLIP, FRAC, NULL), 0);
        fp_secagg_sum_add(acc, q, n);
        free(x);
    }
    float *want = malloc(n * sizeof *want);
    fp_secagg_dequantize_sum(want, acc, n, FRAC);
    assert_memory_equal(want, got, n * sizeof *got);
    free(want);
    free(acc);
    free(q);
    free(got);
}

static void assert_adapter_unchanged(const run *f)
{
    fp_safetensors *a = fp_st_open(tu_path(f->adapter, "adapter_model.safetensors"));
    if (!a)
        fail_msg("no final adapter in %s: %s", f->adapter, fp_error_get());
    size_t nb = 0;
    for (size_t i = 0; i < fp_st_count(a); i++) {
        const fp_st_tensor *t = fp_st_at(a, i);
        if (!strstr(t->name, "lora_B"))
            continue;
        float *x = malloc(t->numel * sizeof *x);
        assert_int_equal(fp_st_read_f32(a, t, x, t->numel), 0);
        for (size_t j = 0; j < t->numel; j++)
            assert_true(x[j] == 0.0f);      /* still the initial B = 0 */
        nb += t->numel;
        free(x);
    }
    fp_st_close(&a);
    assert_true(nb > 0);
}

static const int ALL[NW] = {0, 1, 2, 3};

/* a. two members re-Hello mid-round. */
static void test_rehello_keeps_members(void **state)
{
    (void)state;
    const char *e = "FEDPEFT_TEST_SECAGG=rehello";
    const char *env[NW] = {NULL, e, e, NULL};
    run f;
    federate(&f, "sa-adv-rehello", NULL, env, NULL);
    cJSON *m = round1(&f);
    printf("# re-Hello of w1, w2: abandoned %d, reported %.0f\n", abandoned(m),
           fh_metric_number(m, "reported"));
    assert_false(abandoned(m));
    assert_int_equal((int)fh_metric_number(m, "reported"), NW);
    cJSON_Delete(m);
    assert_true(fh_log_has(wlog(&f, 1), "saying Hello again"));
    assert_true(count_in(f.clog, "said Hello again during secure aggregation; still a member")
                >= 2);
    assert_sum_of(&f, ALL, NW);
}

/* b. a corrupted revealed share: identified with more than t, abandoned with t. */
static void test_bad_unmask_share(void **state)
{
    (void)state;
    const char *env[NW] = {NULL, NULL, NULL, "FEDPEFT_TEST_SECAGG=badshare"};
    run f;
    federate(&f, "sa-adv-badshare", NULL, env, NULL);
    cJSON *m = round1(&f);
    assert_false(abandoned(m));
    assert_int_equal((int)fh_metric_number(m, "reported"), NW);
    cJSON_Delete(m);
    assert_true(fh_log_has(f.clog, "w3 revealed a bad share of the self-mask seed of w1"));
    assert_sum_of(&f, ALL, NW);

    federate(&f, "sa-adv-badshare-t", "[secagg]\nthreshold = 4\n", env, NULL);
    m = round1(&f);
    printf("# bad share with exactly t: %s\n", reason(m));
    assert_true(abandoned(m));
    assert_non_null(strstr(reason(m), "self-mask seed of w1"));
    assert_non_null(strstr(reason(m), "w3"));
    cJSON_Delete(m);
    assert_adapter_unchanged(&f);
}

/* c. a masked input of about +-512 per coordinate. */
static void test_big_input_refused(void **state)
{
    (void)state;
    const char *env[NW] = {NULL, NULL, "FEDPEFT_TEST_SECAGG=big", NULL};
    run f;
    federate(&f, "sa-adv-big", NULL, env, NULL);
    cJSON *m = round1(&f);
    printf("# +-512 input: %s\n", reason(m));
    assert_true(abandoned(m));
    assert_non_null(strstr(reason(m), "impossible for 4 honest inputs"));
    cJSON_Delete(m);
    assert_adapter_unchanged(&f);
}

/* d. an all-zero mask key. */
static void test_zero_keys_refused(void **state)
{
    (void)state;
    const char *env[NW] = {NULL, NULL, NULL, "FEDPEFT_TEST_SECAGG=zerokeys"};
    run f;
    federate(&f, "sa-adv-zero", NULL, env, NULL);
    cJSON *m = round1(&f);
    assert_false(abandoned(m));
    assert_int_equal((int)fh_metric_number(m, "reported"), NW - 1);
    cJSON_Delete(m);
    assert_true(fh_log_has(f.clog, "refused the keys of w3: its mask_pk is an all-zero or "
                           "low-order X25519 public key"));
    assert_sum_of(&f, ALL, NW - 1);
}

/* e. a share that does not open, reported by its recipient. */
static void test_bad_sealed_share_reported(void **state)
{
    (void)state;
    const char *env[NW] = {NULL, "FEDPEFT_TEST_SECAGG=badseal", NULL, NULL};
    run f;
    federate(&f, "sa-adv-badseal", NULL, env, NULL);
    cJSON *m = round1(&f);
    assert_false(abandoned(m));
    assert_int_equal((int)fh_metric_number(m, "reported"), NW);
    cJSON_Delete(m);
    assert_true(fh_log_has(f.clog, "w0 reports a bad share from w1"));
    assert_true(fh_log_has(wlog(&f, 0), "the share sealed by w1 for this worker does not open"));
    assert_sum_of(&f, ALL, NW);
}

/* f. a coordinator without secure aggregation. */
static void test_task_without_secagg_refused(void **state)
{
    (void)state;
    run f;
    federate(&f, "sa-adv-plain", "[secagg]\nenabled = false\n", NULL, NULL);
    cJSON *m = round1(&f);
    assert_true(abandoned(m));
    assert_int_equal((int)fh_metric_number(m, "reported"), 0);
    cJSON_Delete(m);
    for (int k = 0; k < NW; k++) {
        assert_true(fh_log_has(wlog(&f, k), "refused task"));
        assert_false(fh_log_has(wlog(&f, k), "update ready"));
        char path[4500];
        snprintf(path, sizeof path, "%s/worker-w%d-round-1.f32", f.dump, k);
        assert_int_equal(access(path, F_OK), -1);   /* not even computed */
    }
    assert_true(count_in(f.clog, "refused its task: the task has no secure aggregation") == NW);
}

/* g. UnmaskRequests that ask too much. */
static void test_bad_unmask_requests_refused(void **state)
{
    (void)state;
    const char *evil[] = {"both", "few"};
    for (int i = 0; i < 2; i++) {
        char tag[64], env[64];
        snprintf(tag, sizeof tag, "sa-adv-evil-%s", evil[i]);
        snprintf(env, sizeof env, "FEDPEFT_TEST_EVIL_UNMASK=%s", evil[i]);
        run f;
        federate(&f, tag, NULL, NULL, env);
        cJSON *m = round1(&f);
        printf("# UnmaskRequest '%s': %s\n", evil[i], reason(m));
        assert_true(abandoned(m));
        cJSON_Delete(m);
        for (int k = 0; k < NW; k++) {
            assert_true(fh_log_has(wlog(&f, k), "refused the UnmaskRequest, revealed nothing"));
            assert_false(fh_log_has(wlog(&f, k), "mask-key shares"));
        }
        assert_true(fh_log_has(f.clog, i == 0 ? "both survivor and dropped"
                                              : "below the threshold t = 3"));
        assert_adapter_unchanged(&f);
    }
    run f;
    federate(&f, "sa-adv-evil-twice", NULL, NULL, "FEDPEFT_TEST_EVIL_UNMASK=twice");
    cJSON *m = round1(&f);
    assert_false(abandoned(m));
    cJSON_Delete(m);
    for (int k = 0; k < NW; k++) {
        assert_int_equal(count_in(wlog(&f, k), "mask-key shares"), 1);
        assert_true(fh_log_has(wlog(&f, k), "a second UnmaskRequest for round 1: refused"));
    }
}

/* h. keys without their owner's signature. */
static void test_bad_signature_refused(void **state)
{
    (void)state;
    const char *env[NW] = {NULL, NULL, NULL, "FEDPEFT_TEST_SECAGG=badsig"};
    run f;
    federate(&f, "sa-adv-badsig", NULL, env, NULL);
    cJSON *m = round1(&f);
    assert_false(abandoned(m));
    assert_int_equal((int)fh_metric_number(m, "reported"), NW - 1);
    cJSON_Delete(m);
    assert_true(fh_log_has(f.clog, "refused the keys of w3: its keys do not carry a valid "
                           "signature of its allowlisted signing key"));
    assert_sum_of(&f, ALL, NW - 1);
}

/* i. a substituted mask key, relayed with its old signature or re-signed. */
static void test_key_substitution_refused(void **state)
{
    (void)state;
    static const char *const cases[][3] = {
        {"FEDPEFT_TEST_EVIL_GRAPH=swapkey", "", "do not carry its signature"},
        {"FEDPEFT_TEST_EVIL_GRAPH=signkey", "roster", "is not the one in [privacy] roster"},
    };
    static const int others[] = {1, 2, 3};
    for (int i = 0; i < 2; i++) {
        char extra[4400] = "";
        if (cases[i][1][0])
            snprintf(extra, sizeof extra, "[privacy]\nroster = %s/keys/allowlist\n", base_dir);
        run f;
        federate(&f, i ? "sa-adv-signkey" : "sa-adv-swapkey", extra, NULL, cases[i][0]);
        cJSON *m = round1(&f);
        assert_false(abandoned(m));
        assert_int_equal((int)fh_metric_number(m, "reported"), NW - 1);
        cJSON_Delete(m);
        if (!fh_log_has(wlog(&f, 0), cases[i][2]))
            fail_msg("%s: w0 did not refuse PeerKeys with '%s'; see %s", cases[i][0],
                     cases[i][2], f.dir);
        assert_false(fh_log_has(wlog(&f, 0), "shares sealed"));
        assert_true(fh_log_has(wlog(&f, 1), "shares sealed for 3 peers"));
        assert_sum_of(&f, others, NW - 1);
        printf("# %s%s: w0 refused ('%s')\n", cases[i][0], i ? " with a roster" : "",
               cases[i][2]);
    }
}

/* j. two survivor sets: the consistency round. */
static void test_split_survivor_sets_refused(void **state)
{
    (void)state;
    run f;
    federate(&f, "sa-adv-split", NULL, NULL, "FEDPEFT_TEST_EVIL_CONSIST=split");
    cJSON *m = round1(&f);
    assert_false(abandoned(m));
    cJSON_Delete(m);
    assert_true(fh_log_has(wlog(&f, 0), "signed the survivor set (3 survivors)"));
    if (!fh_log_has(wlog(&f, 0), "refused the UnmaskRequest, revealed nothing"))
        fail_msg("w0 answered an UnmaskRequest over a survivor set the others did not sign; "
                 "see %s", f.dir);
    assert_true(fh_log_has(wlog(&f, 0), "valid consistency signatures"));
    assert_false(fh_log_has(wlog(&f, 0), "mask-key shares"));
    for (int k = 1; k < NW; k++)
        assert_true(fh_log_has(wlog(&f, k), "signed the survivor set (4 survivors)"));
    assert_sum_of(&f, ALL, NW);     /* w3's input is in; nothing of w3 was revealed twice */
}

int main(void)
{
#ifndef FEDPEFT_TEST_HOOKS
    fprintf(stderr, "test_secagg_adversary needs -DFEDPEFT_TEST_HOOKS=ON\n");
    return 1;
#endif
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rehello_keeps_members),
        cmocka_unit_test(test_bad_unmask_share),
        cmocka_unit_test(test_big_input_refused),
        cmocka_unit_test(test_zero_keys_refused),
        cmocka_unit_test(test_bad_sealed_share_reported),
        cmocka_unit_test(test_task_without_secagg_refused),
        cmocka_unit_test(test_bad_unmask_requests_refused),
        cmocka_unit_test(test_bad_signature_refused),
        cmocka_unit_test(test_key_substitution_refused),
        cmocka_unit_test(test_split_survivor_sets_refused),
    };
    if (getenv("FP_TEST_FILTER"))
        cmocka_set_test_filter(getenv("FP_TEST_FILTER"));
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
