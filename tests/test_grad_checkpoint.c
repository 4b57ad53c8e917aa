/* test_grad_checkpoint.c - activation checkpointing (fp_train_new_ckpt): the
 * loss and every LoRA gradient are bitwise those without it, on stories260K and
 * on a random GQA model with biases, LoRA dropout and LoRA on q, v and down,
 * masked targets, and the engine's count of saved activation bytes falls as stated. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lora.h"
#include "model.h"
#include "rng.h"
#include "test_util.h"
#include "train.h"

static fp_model *gqa(void)
{
    fp_model *m = tu_gqa_model("Qwen2ForCausalLM", 64, 4, 160, 96, 1, 11);
    assert_non_null(m);
    return m;
}

/* One step with and without checkpointing; returns the saved-bytes ratio. */
static double compare(const fp_model *m, const fp_lora_config *lc, int B, int T)
{
    fp_lora *lo = fp_lora_new(&m->cfg, lc);
    assert_non_null(lo);
    fp_rng r;
    fp_rng_seed(&r, 5);
    for (size_t i = 0; i < lo->n_params; i++)
        lo->params[i] = 0.2f * (2.0f * fp_rng_float(&r) - 1.0f);
    size_t NT = (size_t)B * (size_t)T, n = lo->n_params;
    int32_t *in = malloc(NT * sizeof *in), *tg = malloc(NT * sizeof *tg);
    float *g0 = calloc(n, sizeof *g0), *g1 = calloc(n, sizeof *g1);
    assert_true(in && tg && g0 && g1);
    for (size_t i = 0; i < NT; i++) {
        in[i] = (int32_t)fp_rng_below(&r, (uint32_t)m->cfg.vocab_size);
        tg[i] = i % 7 == 3 ? -1 : (int32_t)fp_rng_below(&r, (uint32_t)m->cfg.vocab_size);
    }
    fp_train *plain = fp_train_new_ckpt(m, lo, B, T, 0), *ck = fp_train_new_ckpt(m, lo, B, T, 1);
    assert_non_null(plain);
    assert_non_null(ck);
    float l0 = fp_train_step(plain, in, tg, g0, 1.0f, 9, NULL);
    float l1 = fp_train_step(ck, in, tg, g1, 1.0f, 9, NULL);
    assert_true(isfinite(l0));
    size_t diff = 0;
    for (size_t i = 0; i < n; i++)
        diff += memcmp(&g0[i], &g1[i], sizeof g0[i]) != 0;
    double ratio = (double)fp_train_saved_bytes(ck) / (double)fp_train_saved_bytes(plain);
    printf("# loss %.7f / %.7f, %zu of %zu gradient entries differ; saved activations %zu -> "
           "%zu bytes (%.2fx)\n", l0, l1, diff, n, fp_train_saved_bytes(plain),
           fp_train_saved_bytes(ck), ratio);
    assert_memory_equal(&l0, &l1, sizeof l0);
    assert_int_equal(diff, 0);
    fp_train_free(&plain);
    fp_train_free(&ck);
    fp_lora_free(&lo);
    free(in), free(tg), free(g0), free(g1);
    return ratio;
}

static void test_stories260k(void **state)
{
    (void)state;
    fp_model *m = fp_llama2c_load(FP_SOURCE_DIR "/data/stories260K/stories260K.bin");
    assert_non_null(m);
    fp_lora_config lc;
    fp_lora_config_default(&lc);
    lc.rank = 4;
    lc.targets = (1u << FP_T_COUNT) - 1;
    double ratio = compare(m, &lc, 2, 64);
    /* 5 layers: res (L + 1) plus one layer of the rest, against all L. */
    assert_true(ratio < 0.45);
    fp_model_free(&m);
}

static void test_gqa_dropout(void **state)
{
    (void)state;
    fp_model *m = gqa();
    fp_lora_config lc;
    fp_lora_config_default(&lc);
    lc.rank = 3;
    lc.dropout = 0.1f;
    lc.targets = (1u << FP_T_Q) | (1u << FP_T_V) | (1u << FP_T_DOWN);
    assert_true(compare(m, &lc, 2, 70) < 0.5);   /* T not a multiple of the attention block */
    fp_model_free(&m);
}

/* Without a lora (evaluation) there is nothing to checkpoint. */
static void test_no_lora(void **state)
{
    (void)state;
    fp_model *m = gqa();
    fp_train *a = fp_train_new_ckpt(m, NULL, 1, 8, 0), *b = fp_train_new_ckpt(m, NULL, 1, 8, 1);
    assert_non_null(a);
    assert_non_null(b);
    assert_int_equal(fp_train_saved_bytes(a), fp_train_saved_bytes(b));
    fp_train_free(&a);
    fp_train_free(&b);
    fp_model_free(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stories260k),
        cmocka_unit_test(test_gqa_dropout),
        cmocka_unit_test(test_no_lora),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
