/* test_stories260k.c - acceptance on a real pretrained model: stories260K
 * converted by `fedpeft convert` reproduces llama2.c's reference greedy text
 * and first logits; finetune + eval + generate with an adapter work end to end. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "infer.h"
#include "model.h"
#include "test_util.h"

static char model_dir[4096];

/* Converts the bundled checkpoint once for all tests in this file. */
static int setup(void **state)
{
    (void)state;
    const char *tmp = tu_tempdir("stories260k");
    snprintf(model_dir, sizeof model_dir, "%s/model", tmp);
    char cmd[16384];
    snprintf(cmd, sizeof cmd,
             FP_TOOL " convert --llama2c %s/data/stories260K/stories260K.bin "
                     "--tokenizer %s/data/stories260K/tok512.bin --out %s",
             FP_SOURCE_DIR, FP_SOURCE_DIR, model_dir);
    char *out = NULL;
    int rc = tu_run(cmd, &out);
    printf("# %s", out);
    free(out);
    return rc == 0 ? 0 : -1;
}

static void test_greedy_text_matches_llama2c(void **state)
{
    (void)state;
    char cmd[8192], *out = NULL;
    snprintf(cmd, sizeof cmd, FP_TOOL " generate --model %s --temperature 0 -n 256 2>/dev/null",
             model_dir);
    int rc = tu_run(cmd, &out);
    assert_int_equal(rc, 0);
    char *want = tu_read_file(tu_fixture("stories260K/expected_greedy_t0_n256.txt"), NULL);
    assert_non_null(want);
    if (strcmp(out, want) != 0) {
        size_t i = 0;
        while (out[i] && out[i] == want[i])
            i++;
        printf("# first difference at byte %zu\n# got:  %.80s\n# want: %.80s\n", i, out + i, want + i);
    }
    assert_string_equal(out, want);
    free(out);
    free(want);
}

static void test_first_logits_match_reference(void **state)
{
    (void)state;
    char *json = tu_read_file(tu_fixture("stories260K/reference_bos.json"), NULL);
    assert_non_null(json);
    cJSON *ref = cJSON_Parse(json);
    assert_non_null(ref);
    cJSON *logits = cJSON_GetObjectItem(ref, "logits_pos0_input_bos");
    assert_true(cJSON_IsArray(logits));

    fp_model *m = fp_model_load(model_dir);
    assert_non_null(m);
    assert_int_equal(cJSON_GetArraySize(logits), m->cfg.vocab_size);
    fp_infer *inf = fp_infer_new(m, NULL, 8);
    assert_non_null(inf);
    const float *got = fp_infer_step(inf, 1, 0);
    double worst = 0.0;
    int i = 0;
    cJSON *v;
    cJSON_ArrayForEach(v, logits) {
        double d = fabs(got[i++] - v->valuedouble);
        if (d > worst)
            worst = d;
    }
    printf("# position-0 logits: largest difference from reference %.3g\n", worst);
    assert_true(worst < 1e-4);
    fp_infer_free(&inf);
    fp_model_free(&m);
    cJSON_Delete(ref);
    free(json);
}

/* Double-valued field of the one-line JSON printed by `fedpeft eval`. */
static double eval_loss(const char *adapter_dir, const char *data)
{
    char cmd[16384], *out = NULL;
    snprintf(cmd, sizeof cmd, FP_TOOL " eval --model %s %s%s --data %s --seq 64 2>/dev/null",
             model_dir, adapter_dir ? "--adapter " : "", adapter_dir ? adapter_dir : "", data);
    int rc = tu_run(cmd, &out);
    assert_int_equal(rc, 0);
    cJSON *j = cJSON_Parse(out);
    assert_non_null(j);
    double loss = cJSON_GetObjectItem(j, "loss")->valuedouble;
    assert_true(cJSON_GetObjectItem(j, "tokens")->valuedouble > 1000);
    cJSON_Delete(j);
    free(out);
    return loss;
}

static void test_finetune_lowers_heldout_loss(void **state)
{
    (void)state;
    const char *tmp = tu_tempdir("stories260k-ft");
    char train[4096], valid[4096], adapter[4096], cmd[16384], *out = NULL;
    snprintf(train, sizeof train, "%s/train.txt", tmp);
    snprintf(valid, sizeof valid, "%s/valid.txt", tmp);
    snprintf(adapter, sizeof adapter, "%s/adapter", tmp);
    snprintf(cmd, sizeof cmd, "head -n 20000 %s/data/tinyshakespeare/input.txt > %s && "
             "tail -n 2000 %s/data/tinyshakespeare/input.txt > %s",
             FP_SOURCE_DIR, train, FP_SOURCE_DIR, valid);
    assert_int_equal(tu_run(cmd, NULL), 0);

    double before = eval_loss(NULL, valid);
    snprintf(cmd, sizeof cmd, FP_TOOL " finetune --model %s --data %s --out %s --targets all-linear "
             "--steps 60 --batch 4 --seq 64 --lr 5e-3 --seed 1", model_dir, train, adapter);
    int rc = tu_run(cmd, &out);
    printf("# %s", strstr(out, "final loss") ? strstr(out, "final loss") : out);
    assert_int_equal(rc, 0);
    free(out);
    char *cfg = tu_read_file(tu_path(adapter, "adapter_config.json"), NULL);
    assert_non_null(cfg);
    assert_non_null(strstr(cfg, "\"LORA\""));
    free(cfg);
    double after = eval_loss(adapter, valid);
    printf("# held-out loss before %.4f, after %.4f\n", before, after);
    assert_true(after < before - 0.2);

    /* The adapter changes what the model generates. */
    snprintf(cmd, sizeof cmd, FP_TOOL " generate --model %s --adapter %s --prompt 'ROMEO:' "
             "-n 40 --temperature 0", model_dir, adapter);
    rc = tu_run(cmd, &out);
    assert_int_equal(rc, 0);
    assert_int_equal(strncmp(out, "ROMEO:", 6), 0);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_text_matches_llama2c),
        cmocka_unit_test(test_first_logits_match_reference),
        cmocka_unit_test(test_finetune_lowers_heldout_loss),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
