/* test_cli_errors.c - bad input to the fedpeft tool gives a clear error that
 * names the problem, and a non-zero exit, never a crash. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lora.h"
#include "model.h"
#include "test_util.h"

static char tmp[4096], model_dir[4096], text_path[4096];

static fp_model_config tiny_config(void)
{
    fp_model_config c = {.arch = "LlamaForCausalLM", .dim = 16, .hidden_dim = 24, .n_layers = 2,
                         .n_heads = 4, .n_kv_heads = 2, .vocab_size = 40, .max_seq_len = 64,
                         .rms_eps = 1e-5f, .rope_theta = 10000.0f, .bos_id = -1, .eos_id = -1};
    return c;
}

/* A small random model plus a JSONL input_ids data file. */
static int setup(void **state)
{
    (void)state;
    snprintf(tmp, sizeof tmp, "%s", tu_tempdir("cli-errors"));
    snprintf(model_dir, sizeof model_dir, "%s/model", tmp);
    snprintf(text_path, sizeof text_path, "%s/ids.jsonl", tmp);
    fp_model_config c = tiny_config();
    fp_model *m = fp_model_new(&c);
    if (!m)
        return -1;
    fp_model_randomize(m, 5, 0.1f);
    int rc = fp_model_save(m, model_dir);
    fp_model_free(&m);
    FILE *f = fopen(text_path, "w");
    if (!f)
        return -1;
    for (int line = 0; line < 20; line++) {
        fprintf(f, "{\"input_ids\": [");
        for (int i = 0; i < 30; i++)
            fprintf(f, "%s%d", i ? ", " : "", (line * 7 + i * 3) % 40);
        fprintf(f, "]}\n");
    }
    fclose(f);
    return rc;
}

/* Runs the command; asserts a non-zero exit without a crash (no signal) and
 * that the output mentions every given fragment. */
static void expect_error(const char *cmd, const char *frag1, const char *frag2)
{
    char *out = NULL;
    int rc = tu_run(cmd, &out);
    printf("# $ %s\n#   -> exit %d: %s", cmd, rc, out);
    assert_true(rc > 0 && rc < 128);
    assert_non_null(strstr(out, "error"));
    if (frag1)
        assert_non_null(strstr(out, frag1));
    if (frag2)
        assert_non_null(strstr(out, frag2));
    free(out);
}

static void test_missing_model_dir(void **state)
{
    (void)state;
    char cmd[8192];
    snprintf(cmd, sizeof cmd, FP_TOOL " eval --model %s/nowhere --data %s", tmp, text_path);
    expect_error(cmd, "nowhere", "config.json");
}

static void test_missing_data_file(void **state)
{
    (void)state;
    char cmd[8192];
    snprintf(cmd, sizeof cmd, FP_TOOL " finetune --model %s --data %s/absent.txt --out %s/a",
             model_dir, tmp, tmp);
    expect_error(cmd, "absent.txt", NULL);
}

static void test_bad_numbers_and_targets(void **state)
{
    (void)state;
    char cmd[8192];
    snprintf(cmd, sizeof cmd, FP_TOOL " finetune --model %s --data %s --out %s/a --steps abc",
             model_dir, text_path, tmp);
    expect_error(cmd, "--steps", "abc");
    snprintf(cmd, sizeof cmd, FP_TOOL " finetune --model %s --data %s --out %s/a --targets q_proj,foo_proj",
             model_dir, text_path, tmp);
    expect_error(cmd, "foo_proj", "v_proj");
    expect_error(FP_TOOL " frobnicate", "frobnicate", NULL);
}

static void test_lying_safetensors_header(void **state)
{
    (void)state;
    char dir[4096], cmd[16384];
    snprintf(dir, sizeof dir, "%s/liar", tmp);
    snprintf(cmd, sizeof cmd, "mkdir -p %s && cp %s/config.json %s/", dir, model_dir, dir);
    assert_int_equal(tu_run(cmd, NULL), 0);
    /* A header claiming a tensor far past the end of a short file. */
    const char *hdr = "{\"model.embed_tokens.weight\":{\"dtype\":\"F32\",\"shape\":[40,16],"
                      "\"data_offsets\":[0,99999999]}}";
    uint64_t n = strlen(hdr);
    char buf[512];
    memcpy(buf, &n, 8);
    memcpy(buf + 8, hdr, n);
    assert_int_equal(tu_write_file(tu_path(dir, "model.safetensors"), buf, 8 + n + 16), 0);
    snprintf(cmd, sizeof cmd, FP_TOOL " eval --model %s --data %s", dir, text_path);
    expect_error(cmd, "model.safetensors", "model.embed_tokens.weight");

    /* Truncated to fewer bytes than the length field itself. */
    assert_int_equal(tu_write_file(tu_path(dir, "model.safetensors"), "abc", 3), 0);
    expect_error(cmd, "model.safetensors", NULL);
}

static void test_truncated_llama2c_checkpoint(void **state)
{
    (void)state;
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "head -c 5000 %s/data/stories260K/stories260K.bin > %s/short.bin",
             FP_SOURCE_DIR, tmp);
    assert_int_equal(tu_run(cmd, NULL), 0);
    snprintf(cmd, sizeof cmd, FP_TOOL " convert --llama2c %s/short.bin --tokenizer "
             "%s/data/stories260K/tok512.bin --out %s/conv", tmp, FP_SOURCE_DIR, tmp);
    expect_error(cmd, "short.bin", NULL);
}

static void test_adapter_for_another_model(void **state)
{
    (void)state;
    fp_model_config other = tiny_config();
    other.dim = 32;                         /* same names, different shapes */
    fp_lora_config lc;
    fp_lora_config_default(&lc);
    fp_lora *l = fp_lora_new(&other, &lc);
    assert_non_null(l);
    char dir[4096], cmd[16384];
    snprintf(dir, sizeof dir, "%s/foreign-adapter", tmp);
    assert_int_equal(fp_lora_save(l, dir), 0);
    fp_lora_free(&l);
    snprintf(cmd, sizeof cmd, FP_TOOL " eval --model %s --adapter %s --data %s --seq 8",
             model_dir, dir, text_path);
    expect_error(cmd, "lora_A", "wrong base model");
}

static void test_nan_loss_is_reported(void **state)
{
    (void)state;
    fp_model_config c = tiny_config();
    fp_model *m = fp_model_new(&c);
    assert_non_null(m);
    fp_model_randomize(m, 6, 0.1f);
    m->w.rms_final[3] = NAN;                /* poisons every logit */
    char dir[4096], cmd[16384];
    snprintf(dir, sizeof dir, "%s/nan-model", tmp);
    assert_int_equal(fp_model_save(m, dir), 0);
    fp_model_free(&m);
    snprintf(cmd, sizeof cmd, FP_TOOL " finetune --model %s --data %s --out %s/nan-adapter "
             "--steps 3 --batch 2 --seq 8", dir, text_path, tmp);
    expect_error(cmd, "not finite", "step 1");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_missing_model_dir),
        cmocka_unit_test(test_missing_data_file),
        cmocka_unit_test(test_bad_numbers_and_targets),
        cmocka_unit_test(test_lying_safetensors_header),
        cmocka_unit_test(test_truncated_llama2c_checkpoint),
        cmocka_unit_test(test_adapter_for_another_model),
        cmocka_unit_test(test_nan_loss_is_reported),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
