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
#include "fed_harness.h"
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

static int group_setup(void **state)
{
    (void)state;
    return fh_base_setup("flora-base", N_WORKERS, 1000, base_dir, sizeof base_dir);
}

/* DIR/fed.ini with min_workers = N_WORKERS and start_timeout_s = 60, then
 * `extra`. Every worker dumps its updates to DIR/dump and gets
 * --worker.rank=f->rank[k] (0: none) and f->poison[k]. */
static void fed_init(fh_fed *f, const char *tag, const char *run_section, int rank,
                     const char *extra)
{
    fh_fed_init(f, tag, base_dir, N_WORKERS);
    fh_fed_use_dump(f);
    f->pass_rank = 1;
    char more[2048];
    snprintf(more, sizeof more, "[sampling]\nmin_workers = %d\n[round]\nstart_timeout_s = 60\n%s",
             N_WORKERS, extra ? extra : "");
    fh_fed_write_ini(f, run_section, rank, 4, more);
}

/* ---- the tests ------------------------------------------------------------- */

static fh_fed cur;     /* the federation of the running test: the teardown reaps it */

static int teardown(void **state)
{
    (void)state;
    fh_fed_reap(&cur);
    return 0;
}

#define ROUNDS 3
static const char *const FLORA_CFG = "[strategy]\nname = flora\n[secagg]\nenabled = false\n";
static fp_lora *reference;      /* test 1's final adapter, for test 2 */

static void mixed_ranks(fh_fed *f)
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
    fh_fed_start(&cur);
    fh_fed_finish(&cur, RUN_TIMEOUT_S);
    int n;
    cJSON **rows = fh_fed_metrics(&cur, ROUNDS, &n);
    fh_print_losses("flora 4/8/16", rows, n);
    for (int i = 1; i <= ROUNDS; i++)
        assert_int_equal((int)fh_metric_number(rows[i], "reported"), N_WORKERS);
    double last = fh_metric_number(rows[ROUNDS], "val_loss");
    assert_true(last < fh_metric_number(rows[0], "val_loss"));
    printf("flora: bytes down per round:");
    for (int i = 1; i <= ROUNDS; i++)
        printf(" r%d=%.0f", i, fh_metric_number(rows[i], "bytes_down"));
    printf("\n");
    fh_metrics_free(rows, n);
    assert_true(fh_log_has(tu_path(cur.dir, "w0.log"), "LoRA rank 4"));

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
    fh_fed_start(&cur);
    fh_fed_wait_round(&cur, 2, RUN_TIMEOUT_S);
    assert_int_equal(kill(cur.coord, SIGKILL), 0);
    int st;
    waitpid(cur.coord, &st, 0);
    fh_coordinator_start(&cur);
    fh_fed_finish(&cur, RUN_TIMEOUT_S);
    int n;
    cJSON **rows = fh_fed_metrics(&cur, ROUNDS, &n);
    fh_print_losses("flora restarted", rows, n);
    fh_metrics_free(rows, n);
    char log2[4300];
    snprintf(log2, sizeof log2, "%s/coordinator-2.log", cur.dir);
    assert_true(fh_log_has(log2, "round 3: sampled"));
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
