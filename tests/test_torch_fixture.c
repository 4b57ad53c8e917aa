/* test_torch_fixture.c - one LoRA training step against an independent PyTorch reference.
 *
 * tests/make_torch_fixture.py (run by hand with Debian's python3-torch) wrote
 * tests/fixtures/lora_step/: a small random Qwen2 model, a PEFT adapter with A
 * and B both random, a batch, and expected.safetensors holding the loss, the
 * gradient of every LoRA factor ("grad.<peft name>") and every factor after one
 * torch.optim.AdamW step ("after.<peft name>"), computed in float64.
 *
 * Here the same step runs through fp_train_step and fp_optim_step; each tensor
 * is compared and its largest difference printed. Any tensor above tolerance
 * fails the test, naming the tensor.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <cjson/cJSON.h>

#include "lora.h"
#include "model.h"
#include "optim.h"
#include "safetensors.h"
#include "test_util.h"
#include "train.h"

#define FIX_DIR FP_SOURCE_DIR "/tests/fixtures/lora_step"
#define FIX_B 2
#define FIX_T 8
#define FIX_MASKED 3                /* targets set to -1 by the script */

#define TOL_LOSS 1e-5               /* absolute */
#define TOL_GRAD 1e-4               /* max |diff| / max |expected| per tensor */
#define TOL_AFTER 1e-5              /* absolute */

/* Independent of fp_target_names: the PEFT module path of each target. */
static const char *const peft_module[FP_T_COUNT] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj",
};

typedef struct {
    fp_model *model;
    fp_lora *lora;
    fp_safetensors *expected;
    int32_t inputs[FIX_B * FIX_T];
    int32_t targets[FIX_B * FIX_T];
} fixture;

/* ---------------------------------------------------------------- loading */

static void load_batch(fixture *f) {
    char *text = tu_read_file(FIX_DIR "/batch.json", NULL);
    assert_non_null(text);
    cJSON *root = cJSON_Parse(text);
    free(text);
    assert_non_null(root);
    const char *keys[2] = {"inputs", "targets"};
    int32_t *dst[2] = {f->inputs, f->targets};
    for (int k = 0; k < 2; k++) {
        cJSON *rows = cJSON_GetObjectItemCaseSensitive(root, keys[k]);
        assert_true(cJSON_IsArray(rows));
        assert_int_equal(cJSON_GetArraySize(rows), FIX_B);
        for (int b = 0; b < FIX_B; b++) {
            cJSON *row = cJSON_GetArrayItem(rows, b);
            assert_true(cJSON_IsArray(row));
            assert_int_equal(cJSON_GetArraySize(row), FIX_T);
            for (int t = 0; t < FIX_T; t++) {
                cJSON *v = cJSON_GetArrayItem(row, t);
                assert_true(cJSON_IsNumber(v));
                dst[k][b * FIX_T + t] = (int32_t)v->valueint;
            }
        }
    }
    cJSON_Delete(root);
}

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->model = fp_model_load(FIX_DIR "/model");
    if (!f->model) fprintf(stderr, "fp_model_load: %s\n", fp_error_get());
    assert_non_null(f->model);
    f->lora = fp_lora_load(FIX_DIR "/adapter_before", &f->model->cfg);
    if (!f->lora) fprintf(stderr, "fp_lora_load: %s\n", fp_error_get());
    assert_non_null(f->lora);
    f->expected = fp_st_open(FIX_DIR "/expected.safetensors");
    if (!f->expected) fprintf(stderr, "fp_st_open: %s\n", fp_error_get());
    assert_non_null(f->expected);
    load_batch(f);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    fp_st_close(&f->expected);
    fp_lora_free(&f->lora);
    fp_model_free(&f->model);
    free(f);
    return 0;
}

/* ---------------------------------------------------------------- comparing */

static void peft_name(char *buf, size_t cap, const char *prefix, int layer, int t, char ab) {
    snprintf(buf, cap, "%sbase_model.model.model.layers.%d.%s.lora_%c.weight", prefix, layer,
             peft_module[t], ab);
}

/* Reads expected tensor `name` (must hold n floats) into a malloc'd array. */
static float *read_expected(const fixture *f, const char *name, size_t n) {
    const fp_st_tensor *t = fp_st_find(f->expected, name);
    if (!t) fprintf(stderr, "expected.safetensors has no tensor %s\n", name);
    assert_non_null(t);
    if (t->numel != n)
        fprintf(stderr, "%s: expected %zu floats, C side has %zu\n", name, t->numel, n);
    assert_int_equal(t->numel, n);
    float *dst = malloc(n * sizeof *dst);
    assert_non_null(dst);
    int rc = fp_st_read_f32(f->expected, t, dst, n);
    if (rc != 0) fprintf(stderr, "%s\n", fp_error_get());
    assert_int_equal(rc, 0);
    return dst;
}

/* Compares got[n] with expected tensor `name`. rel: tolerance is on
 * max|diff| / max|expected|, else on max|diff|. Prints one line; returns 1 if
 * within tolerance. */
static int compare(const fixture *f, const char *name, const float *got, size_t n, double tol,
                   int rel) {
    float *want = read_expected(f, name, n);
    double max_diff = 0, max_ref = 0;
    size_t at = 0;
    int finite = 1;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        if (!isfinite(got[i])) finite = 0;
        if (d > max_diff) max_diff = d, at = i;
        if (fabs(want[i]) > max_ref) max_ref = fabs(want[i]);
    }
    double err = rel ? max_diff / (max_ref > 0 ? max_ref : 1) : max_diff;
    int ok = finite && err <= tol;
    printf("%-4s %-72s max|diff| %.3e at [%zu] (C %.7g, torch %.7g), max|ref| %.3e%s\n",
           ok ? "ok" : "FAIL", name, max_diff, at, got[at], want[at], max_ref,
           finite ? "" : ", NOT FINITE");
    free(want);
    return ok;
}

/* Runs forward + backward on the fixture batch; returns the loss, fills grad
 * (zeroed first, lora->n_params floats). */
static float run_step(const fixture *f, float *grad, size_t *n_tokens) {
    fp_train *tr = fp_train_new(f->model, f->lora, FIX_B, FIX_T);
    if (!tr) fprintf(stderr, "fp_train_new: %s\n", fp_error_get());
    assert_non_null(tr);
    memset(grad, 0, f->lora->n_params * sizeof *grad);
    float loss = fp_train_step(tr, f->inputs, f->targets, grad, 1.0f, 0, n_tokens);
    fp_train_free(&tr);
    assert_null(tr);
    return loss;
}

/* Compares every A and B of `src` (slab layout) with "<prefix><peft name>";
 * returns the number compared, adds failures to *failed. */
static int compare_slab(const fixture *f, const float *src, const char *prefix, double tol,
                        int rel, int *failed) {
    const fp_lora *lo = f->lora;
    const fp_model_config *mc = &f->model->cfg;
    int compared = 0;
    char name[256];
    for (int l = 0; l < mc->n_layers; l++) {
        for (int t = 0; t < FP_T_COUNT; t++) {
            size_t i = (size_t)l * FP_T_COUNT + t;
            assert_true(lo->off_a[i] != SIZE_MAX);  /* the fixture targets all seven */
            assert_true(lo->off_b[i] != SIZE_MAX);
            size_t na = (size_t)lo->cfg.rank * fp_lora_in_dim(mc, t);
            size_t nb = (size_t)fp_lora_out_dim(mc, t) * lo->cfg.rank;
            assert_true(lo->off_a[i] + na <= lo->n_params);
            assert_true(lo->off_b[i] + nb <= lo->n_params);
            peft_name(name, sizeof name, prefix, l, t, 'A');
            *failed += !compare(f, name, src + lo->off_a[i], na, tol, rel);
            peft_name(name, sizeof name, prefix, l, t, 'B');
            *failed += !compare(f, name, src + lo->off_b[i], nb, tol, rel);
            compared += 2;
        }
    }
    return compared;
}

/* ---------------------------------------------------------------- tests */

/* The fixture is what the script says it is: guards against comparing nothing. */
static void test_fixture_loaded(void **state) {
    const fixture *f = *state;
    const fp_model_config *c = &f->model->cfg;
    assert_string_equal(c->arch, "Qwen2ForCausalLM");
    assert_int_equal(c->dim, 32);
    assert_int_equal(c->hidden_dim, 48);
    assert_int_equal(c->n_layers, 2);
    assert_int_equal(c->n_heads, 4);
    assert_int_equal(c->n_kv_heads, 2);
    assert_int_equal(c->vocab_size, 64);
    assert_int_equal(c->qkv_bias, 1);
    assert_int_equal(c->tie_embeddings, 0);
    assert_true(f->model->w.lm_head != f->model->w.tok_emb);
    assert_int_equal(f->lora->cfg.rank, 4);
    assert_true(fabsf(fp_lora_scale(&f->lora->cfg) - 2.0f) < 1e-6f);
    assert_int_equal(f->lora->cfg.targets, (1u << FP_T_COUNT) - 1);
    assert_int_equal(fp_st_count(f->expected), 1 + 2 * 2 * 2 * FP_T_COUNT);
    int masked = 0;
    for (int i = 0; i < FIX_B * FIX_T; i++) masked += f->targets[i] < 0;
    assert_int_equal(masked, FIX_MASKED);
    /* The adapter as loaded equals the one the reference started from (B nonzero). */
    for (int l = 0; l < c->n_layers; l++) {
        float *b = fp_lora_b(f->lora, l, FP_T_Q);
        assert_non_null(b);
        double s = 0;
        for (int i = 0; i < c->dim * f->lora->cfg.rank; i++) s += fabs(b[i]);
        assert_true(s > 0);
    }
}

static void test_loss_and_grads(void **state) {
    const fixture *f = *state;
    float *grad = calloc(f->lora->n_params, sizeof *grad);
    assert_non_null(grad);
    size_t n_tokens = 0;
    float loss = run_step(f, grad, &n_tokens);

    float *want = read_expected(f, "loss", 1);
    printf("loss: C %.8f, torch %.8f, diff %.3e\n", loss, want[0], fabs(loss - want[0]));
    int loss_ok = isfinite(loss) && fabs((double)loss - want[0]) <= TOL_LOSS;
    free(want);
    assert_int_equal(n_tokens, FIX_B * FIX_T - FIX_MASKED);

    int failed = 0;
    int compared = compare_slab(f, grad, "grad.", TOL_GRAD, 1, &failed);
    free(grad);
    printf("gradients: %d compared, %d above tolerance (relative %.0e)\n", compared, failed,
           TOL_GRAD);
    if (!loss_ok) fail_msg("loss differs from torch by more than %g", TOL_LOSS);
    assert_int_equal(compared, 2 * 2 * FP_T_COUNT);
    if (failed) fail_msg("%d gradient tensors differ from torch (see FAIL lines)", failed);
}

static void test_adamw_after(void **state) {
    fixture *f = *state;
    float *grad = calloc(f->lora->n_params, sizeof *grad);
    assert_non_null(grad);
    (void)run_step(f, grad, NULL);

    fp_optim_config oc;
    fp_optim_config_default(&oc);
    oc.kind = FP_OPT_ADAMW;
    oc.lr = 1e-2f;
    oc.beta1 = 0.9f;
    oc.beta2 = 0.999f;
    oc.eps = 1e-8f;
    oc.weight_decay = 0.01f;
    oc.max_grad_norm = 0;
    oc.schedule = FP_SCHED_CONSTANT;
    oc.warmup_steps = 0;
    fp_optim *opt = fp_optim_new(&oc, f->lora->n_params);
    assert_non_null(opt);
    (void)fp_optim_step(opt, f->lora->params, grad);
    assert_int_equal(fp_optim_steps_done(opt), 1);
    fp_optim_free(&opt);
    free(grad);

    int failed = 0;
    int compared = compare_slab(f, f->lora->params, "after.", TOL_AFTER, 0, &failed);
    printf("adapter after AdamW: %d compared, %d above tolerance (absolute %.0e)\n", compared,
           failed, TOL_AFTER);
    assert_int_equal(compared, 2 * 2 * FP_T_COUNT);
    if (failed) fail_msg("%d adapter tensors differ from torch after AdamW (see FAIL lines)",
                         failed);
}

/* The comparison itself catches an error of the size it should: one gradient
 * entry off by 1e-3 of the tensor's scale must fail. */
static void test_compare_detects_error(void **state) {
    const fixture *f = *state;
    const char *name = "grad.base_model.model.model.layers.1.mlp.down_proj.lora_A.weight";
    const fp_st_tensor *t = fp_st_find(f->expected, name);
    assert_non_null(t);
    float *g = read_expected(f, name, t->numel);
    assert_int_equal(compare(f, name, g, t->numel, TOL_GRAD, 1), 1);
    double max_ref = 0;
    for (size_t i = 0; i < t->numel; i++)
        if (fabs(g[i]) > max_ref) max_ref = fabs(g[i]);
    g[t->numel / 2] += (float)(1e-3 * max_ref);
    assert_int_equal(compare(f, name, g, t->numel, TOL_GRAD, 1), 0);
    free(g);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_fixture_loaded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_compare_detects_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_loss_and_grads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_adamw_after, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
